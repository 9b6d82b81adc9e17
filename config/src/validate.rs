//! Parsing and validation. Every error carries file, line, column and the dotted key path, so a
//! user can jump straight to the mistake.
//!
//! Two classes of error reach the user:
//! - serde and syntax errors from `toml` (only the first one: serde stops there). `toml` gives a
//!   byte span; the key path is found by looking the span up in a `toml_edit` parse of the same
//!   text, or, when the text is not even valid TOML, guessed from the nearest table header.
//! - semantic errors, found on the deserialised [`Config`] by the checks in [`CHECKS`] (all of
//!   them, not just the first). Each names a key path; its position is found by looking the path
//!   up in the `toml_edit` parse, falling back to the enclosing table's header, then to 1:1.

use crate::schema::*;
use crate::time::parse_duration;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as the user named it.
    pub file: String,
    /// 1-based line; 0 when the error is not about a place in the file.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// Dotted key path, e.g. `backends[1].capacity`.
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.col, self.message
            )
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.col, self.key, self.message
            )
        }
    }
}

impl ConfigError {
    /// An error about `key` in the file at `path`, placed where the key (or the nearest
    /// enclosing section) is written, for checks that only one command makes (e.g.
    /// `ebbtide autoscale` needs `autoscaler.balancers`, which `ebbtide serve` ignores).
    pub fn at_key(path: &std::path::Path, key: &str, message: impl Into<String>) -> ConfigError {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let index = SpanIndex::parse(&text);
        let (line, col) = index
            .position_of(key)
            .map_or((1, 1), |offset| line_col(&text, offset));
        ConfigError {
            file: path.display().to_string(),
            line,
            col,
            key: key.to_string(),
            message: message.into(),
        }
    }
}

/// All the errors found in one file, one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Runs the semantic checks on a config built in code (the simulator, tests), where there is
    /// no file: errors name the key path, with file `<config>` and line and column 0.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let problems = problems(self);
        if problems.is_empty() {
            return Ok(());
        }
        Err(ConfigErrors(
            problems
                .into_iter()
                .map(|p| ConfigError {
                    file: "<config>".into(),
                    line: 0,
                    col: 0,
                    key: p.key,
                    message: p.message,
                })
                .collect(),
        ))
    }
}

/// Parses then validates: the first serde/syntax error, or else every semantic error, in file
/// order.
pub(crate) fn load(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    let cfg: Config = match toml::from_str(text) {
        Ok(cfg) => cfg,
        Err(e) => return Err(ConfigErrors(vec![serde_error(text, file, &e)])),
    };
    let problems = problems(&cfg);
    if problems.is_empty() {
        return Ok(cfg);
    }
    let index = SpanIndex::parse(text);
    let mut errors: Vec<ConfigError> = problems
        .into_iter()
        .map(|p| {
            let (line, col) = index
                .position_of(&p.key)
                .map_or((1, 1), |offset| line_col(text, offset));
            ConfigError {
                file: file.to_string(),
                line,
                col,
                key: p.key,
                message: p.message,
            }
        })
        .collect();
    // Stable: problems at the same place keep the order of the checks.
    errors.sort_by_key(|e| (e.line, e.col));
    Err(ConfigErrors(errors))
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

// ---------------------------------------------------------------------------------------------
// serde and syntax errors

/// Turns `toml`'s error into one located, key-pathed, user-worded error.
fn serde_error(text: &str, file: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    let (line, col) = span.as_ref().map_or((1, 1), |s| line_col(text, s.start));
    let doc = toml_edit::ImDocument::parse(text);
    let key = match (&span, &doc) {
        (Some(span), Ok(doc)) => SpanIndex::from_doc(doc)
            .path_at(span.clone())
            .unwrap_or_default(),
        (Some(span), Err(_)) => guess_path(text, span.start),
        (None, _) => String::new(),
    };
    let mut message = reword(e.message(), &key);
    if doc.is_err() {
        message.insert_str(0, "invalid TOML: ");
    }
    ConfigError {
        file: file.to_string(),
        line,
        col,
        key,
        message,
    }
}

/// Says serde's and toml's messages in the config's own words: keys rather than fields, tables
/// and arrays rather than maps and sequences, ranges rather than Rust integer types; one line.
fn reword(message: &str, key: &str) -> String {
    let mut m = message.trim().replace('\n', "; ");
    const REWRITES: [(&str, &str); 13] = [
        ("unknown field", "unknown key"),
        ("missing field", "missing required key"),
        ("unknown variant", "unknown value"),
        ("invalid type: map", "invalid type: table"),
        ("invalid type: sequence", "invalid type: array"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a table"),
        ("expected u32", "expected an integer from 0 to 4294967295"),
        (
            "expected u64",
            "expected an integer from 0 to 9223372036854775807",
        ),
        ("expected usize", "expected a non-negative integer"),
        ("expected u16", "expected an integer from 0 to 65535"),
        ("expected f64", "expected a number"),
        ("there are no fields", "this table has no keys"),
    ];
    for (from, to) in REWRITES {
        m = m.replace(from, to);
    }
    if let Some(p) = m.find("expected struct ") {
        m.truncate(p);
        m.push_str("expected a table");
    }
    if is_duration_key(key) && m.ends_with("expected a string") {
        m.truncate(m.len() - "a string".len());
        m.push_str("a duration string such as \"250ms\", \"2s\" or \"5m\"");
    }
    m
}

/// Whether the key at `path` is a duration, found from the defaults so that no list needs
/// keeping in step with the schema: a default string value that parses as a duration.
fn is_duration_key(path: &str) -> bool {
    let full = Config {
        provider: Some(Provider::default()),
        ..Config::default()
    };
    let Ok(mut value) = toml::Value::try_from(full) else {
        return false;
    };
    for segment in path.split('.') {
        let name = segment.split('[').next().unwrap_or(segment);
        value = match value.get(name) {
            Some(toml::Value::Array(a)) if segment.contains('[') => match a.first() {
                Some(v) => v.clone(),
                None => return false,
            },
            Some(v) => v.clone(),
            None => return false,
        };
    }
    matches!(&value, toml::Value::String(s) if parse_duration(s).is_ok())
}

/// The key path of the place at `offset` in text that is not valid TOML: the last table header
/// above it, plus the key on its own line when there is one.
fn guess_path(text: &str, offset: usize) -> String {
    let (err_line, _) = line_col(text, offset);
    let mut table = String::new();
    let mut aot_counts: Vec<(String, usize)> = Vec::new();
    for (i, raw) in text.lines().enumerate().take(err_line) {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix("[[") {
            let name = header_name(rest.split("]]").next().unwrap_or(rest));
            let n = match aot_counts.iter_mut().find(|(k, _)| *k == name) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    aot_counts.push((name.clone(), 0));
                    0
                }
            };
            table = format!("{name}[{n}]");
        } else if let Some(rest) = line.strip_prefix('[') {
            table = header_name(rest.split(']').next().unwrap_or(rest));
        } else if i + 1 == err_line {
            if let Some((k, _)) = line.split_once('=') {
                let k = header_name(k);
                if !k.is_empty() && !k.starts_with('#') {
                    return join(&table, &k);
                }
            }
        }
    }
    table
}

/// A header or dotted key as written, without the blanks around its dots.
fn header_name(s: &str) -> String {
    s.split('.').map(|p| p.trim()).collect::<Vec<_>>().join(".")
}

// ---------------------------------------------------------------------------------------------
// Where key paths are in the text

/// One key, table or array element of the parsed text.
struct Node {
    /// Dotted key path, as in error messages.
    path: String,
    /// The whole of it: key through value, or header through the table's last line.
    span: Range<usize>,
    /// Where an error about it points: the value, or the table header.
    point: usize,
}

/// Key paths and spans of every key, table and array element of a TOML text.
struct SpanIndex {
    nodes: Vec<Node>,
}

impl SpanIndex {
    /// Indexes `text`; empty when it is not valid TOML.
    fn parse(text: &str) -> SpanIndex {
        match toml_edit::ImDocument::parse(text) {
            Ok(doc) => SpanIndex::from_doc(&doc),
            Err(_) => SpanIndex { nodes: Vec::new() },
        }
    }

    fn from_doc(doc: &toml_edit::ImDocument<&str>) -> SpanIndex {
        let mut index = SpanIndex { nodes: Vec::new() };
        index.table(doc.as_table(), "");
        index
    }

    fn push(&mut self, path: &str, key: Option<Range<usize>>, value: Option<Range<usize>>) {
        let span = match (&key, &value) {
            (Some(k), Some(v)) => k.start.min(v.start)..k.end.max(v.end),
            (Some(s), None) | (None, Some(s)) => s.clone(),
            (None, None) => return,
        };
        let point = value.map_or(span.start, |v| v.start);
        self.nodes.push(Node {
            path: path.to_string(),
            span,
            point,
        });
    }

    fn table(&mut self, t: &toml_edit::Table, prefix: &str) {
        for (name, _) in t.iter() {
            if let Some((key, item)) = t.get_key_value(name) {
                self.entry(key, item, &join(prefix, name));
            }
        }
    }

    fn inline_table(&mut self, t: &toml_edit::InlineTable, prefix: &str) {
        for (name, _) in t.iter() {
            if let Some((key, item)) = t.get_key_value(name) {
                self.entry(key, item, &join(prefix, name));
            }
        }
    }

    fn entry(&mut self, key: &toml_edit::Key, item: &toml_edit::Item, path: &str) {
        self.push(path, key.span(), item.span());
        match item {
            toml_edit::Item::Table(t) => self.table(t, path),
            toml_edit::Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.push(&p, None, t.span());
                    self.table(t, &p);
                }
            }
            toml_edit::Item::Value(v) => self.value(v, path),
            toml_edit::Item::None => {}
        }
    }

    fn value(&mut self, v: &toml_edit::Value, path: &str) {
        match v {
            toml_edit::Value::Array(a) => {
                for (i, e) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.push(&p, None, e.span());
                    self.value(e, &p);
                }
            }
            toml_edit::Value::InlineTable(t) => self.inline_table(t, path),
            _ => {}
        }
    }

    /// The key path of the smallest node that holds all of `span`.
    fn path_at(&self, span: Range<usize>) -> Option<String> {
        self.nodes
            .iter()
            .filter(|n| n.span.start <= span.start && span.end <= n.span.end)
            .min_by_key(|n| (n.span.len(), usize::MAX - n.path.len()))
            .map(|n| n.path.clone())
    }

    /// Byte offset to report for `path`: its value, else its nearest written ancestor's.
    fn position_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(n) = self.nodes.iter().find(|n| n.path == path) {
                return Some(n.point);
            }
            path = parent(path)?;
        }
    }
}

/// `prefix.name`, quoting `name` when it is not a bare TOML key.
fn join(prefix: &str, name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let name = if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}.{name}")
    }
}

/// `backends[1].capacity` -> `backends[1]` -> `backends` -> none.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    Some(path.rfind(['.', '[']).map_or("", |p| &path[..p]))
}

// ---------------------------------------------------------------------------------------------
// Semantic checks

/// A semantic error before it is located in the text.
#[derive(Debug)]
struct Problem {
    key: String,
    message: String,
}

/// Collects what a check finds.
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// One semantic check: looks at the whole config, adds what it finds.
type Check = fn(&Config, &mut Problems);

/// Every semantic check, in the order their errors are listed for one place. To add one, write a
/// small function and list it here.
const CHECKS: &[Check] = &[
    check_log,
    check_listener_address,
    check_admin_address,
    check_listener_admin_differ,
    check_admin_token,
    check_listener_timeouts,
    check_listener_tls,
    check_runtime_worker_threads,
    check_balancer_choices,
    check_balancer_ewma_decay,
    check_balancer_utilisation_target,
    check_balancer_slow_start,
    check_upstream_timeouts,
    check_overload_queue_timeout,
    check_signals_window,
    check_backend_addresses,
    check_backend_duplicates,
    check_backend_capacity,
    check_backend_weight,
    check_backend_cost,
    check_backend_tls,
    check_upstream_tls,
    check_provider_command,
    check_provider_scripts,
    check_provider_count,
    check_provider_capacity,
    check_provider_cost,
    check_provider_boot_timeout,
    check_provider_docker,
    check_provider_kinds,
    check_provider_kubernetes,
    check_discovery,
    check_balancer_discovery,
    check_leader_election,
    check_central_queue_capacities,
    check_health,
    check_outlier,
    check_lifecycle,
    check_retries,
    check_idempotency,
    check_autoscaler,
    check_simulation,
];

fn check_simulation(cfg: &Config, out: &mut Problems) {
    if let Some(s) = &cfg.simulation {
        for (key, message) in s.validate() {
            out.add(key, message);
        }
    }
}

fn check_autoscaler(cfg: &Config, out: &mut Problems) {
    if let Some(a) = &cfg.autoscaler {
        for (key, message) in a.validate() {
            out.add(key, message);
        }
        if cfg.provider.is_none() {
            out.add(
                "autoscaler",
                "needs a [provider] section: the autoscaler scales the provider's backends",
            );
        }
    }
}

fn check_health(cfg: &Config, out: &mut Problems) {
    let h = &cfg.health;
    if let Some(p) = &h.path {
        if !p.starts_with('/')
            || p.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            out.add(
                "health.path",
                format!("`{p}` must be an absolute path such as \"/healthz\""),
            );
        }
    }
    positive("health.interval", h.interval.0, out);
    positive("health.timeout", h.timeout.0, out);
    if h.rise == 0 {
        out.add("health.rise", "is 0; must be at least 1 (passes in a row)");
    }
    if h.fall == 0 {
        out.add(
            "health.fall",
            "is 0; must be at least 1 (failures in a row)",
        );
    }
}

fn check_outlier(cfg: &Config, out: &mut Problems) {
    let o = &cfg.outlier;
    positive("outlier.base_ejection", o.base_ejection.0, out);
    if o.max_ejection < o.base_ejection {
        out.add(
            "outlier.max_ejection",
            format!(
                "is {}; must be at least outlier.base_ejection ({})",
                o.max_ejection, o.base_ejection
            ),
        );
    }
    let s = o.max_ejected_share;
    if !(0.0..=1.0).contains(&s) {
        out.add(
            "outlier.max_ejected_share",
            format!("is {s}; must be from 0 to 1 (a share of the fleet)"),
        );
    }
}

fn check_lifecycle(cfg: &Config, out: &mut Problems) {
    positive(
        "lifecycle.drain_timeout",
        cfg.lifecycle.drain_timeout.0,
        out,
    );
}

fn check_retries(cfg: &Config, out: &mut Problems) {
    let r = &cfg.retries;
    if !(1..=10).contains(&r.max_attempts) {
        out.add(
            "retries.max_attempts",
            format!("is {}; must be from 1 (no retries) to 10", r.max_attempts),
        );
    }
    if !(r.budget_ratio.is_finite() && (0.0..=1.0).contains(&r.budget_ratio)) {
        out.add(
            "retries.budget_ratio",
            format!(
                "is {}; must be from 0 to 1 (retries per request)",
                r.budget_ratio
            ),
        );
    }
    if !(r.min_per_second.is_finite() && r.min_per_second >= 0.0) {
        out.add(
            "retries.min_per_second",
            format!("is {}; must be a number >= 0", r.min_per_second),
        );
    }
    if r.buffer_limit > 64 * 1024 * 1024 {
        out.add(
            "retries.buffer_limit",
            format!(
                "is {}; must be at most 67108864 (64 MiB) per request",
                r.buffer_limit
            ),
        );
    }
}

fn check_log(cfg: &Config, out: &mut Problems) {
    if cfg.log.access_buffer == 0 {
        out.add("log.access_buffer", "is 0; must be at least 1");
    }
    if cfg
        .log
        .access_path
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        out.add(
            "log.access_path",
            "is empty; name a file, or leave the key out for standard output",
        );
    }
}

fn check_idempotency(cfg: &Config, out: &mut Problems) {
    let i = &cfg.idempotency;
    positive("idempotency.ttl", i.ttl.0, out);
    if i.max_entries == 0 {
        out.add("idempotency.max_entries", "is 0; must be at least 1");
    }
}

fn problems(cfg: &Config) -> Vec<Problem> {
    let mut out = Problems(Vec::new());
    for check in CHECKS {
        check(cfg, &mut out);
    }
    out.0
}

/// `ip:port` for a socket ebbtide binds; port 0 (any free port) is allowed.
fn socket_address(key: &str, value: &str, out: &mut Problems) {
    if value.trim().parse::<SocketAddr>().is_err() {
        out.add(
            key,
            format!(
                "`{value}` is not an ip:port address; use e.g. \"127.0.0.1:8080\", \
                 \"0.0.0.0:8080\" or \"[::1]:8080\" (a hostname is not allowed here)"
            ),
        );
    }
}

fn check_listener_address(cfg: &Config, out: &mut Problems) {
    socket_address("listener.address", &cfg.listener.address, out);
}

fn check_admin_address(cfg: &Config, out: &mut Problems) {
    socket_address("admin.address", &cfg.admin.address, out);
}

/// Whether two socket addresses ebbtide binds would take the same port. Port 0 means "any free
/// port": two of those never clash. A wildcard address clashes with any address on the same port.
fn addresses_clash(a: &str, b: &str) -> bool {
    let (Ok(a), Ok(b)) = (
        a.trim().parse::<SocketAddr>(),
        b.trim().parse::<SocketAddr>(),
    ) else {
        return false;
    };
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn check_listener_admin_differ(cfg: &Config, out: &mut Problems) {
    if addresses_clash(&cfg.listener.address, &cfg.admin.address) {
        out.add(
            "admin.address",
            format!(
                "`{}` clashes with listener.address `{}`; the admin API needs a port of its own",
                cfg.admin.address, cfg.listener.address
            ),
        );
    }
}

/// 127.0.0.0/8, ::1, or ::ffff:127.x.y.z.
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

fn check_admin_token(cfg: &Config, out: &mut Problems) {
    match &cfg.admin.token {
        Some(t) if t.trim().is_empty() => out.add(
            "admin.token",
            "is empty; set a secret that clients send as `Authorization: Bearer TOKEN`, or \
             remove the key (allowed only when admin.address is loopback)",
        ),
        Some(_) => {}
        None => {
            let Ok(a) = cfg.admin.address.trim().parse::<SocketAddr>() else {
                return;
            };
            if !is_loopback(a.ip()) {
                out.add(
                    "admin.token",
                    format!(
                        "is required because admin.address `{}` is not loopback \
                         (127.0.0.0/8 or ::1); set token = \"...\" or bind the admin API to \
                         127.0.0.1",
                        cfg.admin.address
                    ),
                );
            }
        }
    }
}

/// A duration that must be greater than zero.
fn positive(key: &str, d: Duration, out: &mut Problems) {
    if d.is_zero() {
        out.add(key, "is 0; must be greater than zero, e.g. \"1s\"");
    }
}

/// `[[listener.tls]]`, `client_ca`, `client_auth` and `redirect_address`. The files themselves
/// are read by the balancer's TLS module (`ebbtide check` and start both run it), which also
/// checks that each key matches its certificate.
fn check_listener_tls(cfg: &Config, out: &mut Problems) {
    let l = &cfg.listener;
    for (i, t) in l.tls.iter().enumerate() {
        for (name, value, what) in [
            ("cert", &t.cert, "certificate chain"),
            ("key", &t.key, "private key"),
        ] {
            if value.trim().is_empty() {
                out.add(
                    format!("listener.tls[{i}].{name}"),
                    format!("is empty; give the PEM file of the {what}"),
                );
            }
        }
    }
    let needs_tls = |key: &str, out: &mut Problems| {
        out.add(
            key,
            "needs TLS on the listener: add a [[listener.tls]] entry with cert and key",
        )
    };
    match &l.client_ca {
        Some(ca) if ca.trim().is_empty() => out.add(
            "listener.client_ca",
            "is empty; give the PEM file of the CA certificates that sign client certificates",
        ),
        Some(_) if l.tls.is_empty() => needs_tls("listener.client_ca", out),
        _ => {}
    }
    if l.client_auth.is_some() && l.client_ca.is_none() {
        out.add(
            "listener.client_auth",
            "needs listener.client_ca, the CA certificates that client certificates are checked against",
        );
    }
    if let Some(r) = &l.redirect_address {
        socket_address("listener.redirect_address", r, out);
        if l.tls.is_empty() {
            needs_tls("listener.redirect_address", out);
        }
        for (other, key) in [
            (&l.address, "listener.address"),
            (&cfg.admin.address, "admin.address"),
        ] {
            if addresses_clash(r, other) {
                out.add(
                    "listener.redirect_address",
                    format!("`{r}` clashes with {key} `{other}`; the redirect listener needs a port of its own"),
                );
            }
        }
    }
}

fn check_listener_timeouts(cfg: &Config, out: &mut Problems) {
    let l = &cfg.listener;
    positive("listener.header_read_timeout", l.header_read_timeout.0, out);
    positive("listener.body_read_timeout", l.body_read_timeout.0, out);
    if l.request_buffer > 64 * 1024 * 1024 {
        out.add(
            "listener.request_buffer",
            format!(
                "is {}; must be at most 67108864 (64 MiB): a buffered body is held in memory",
                l.request_buffer
            ),
        );
    }
    // hyper refuses a read buffer under 8 KiB.
    if !(8192..=1024 * 1024).contains(&l.max_header_bytes) {
        out.add(
            "listener.max_header_bytes",
            format!(
                "is {}; must be from 8192 to 1048576 (request line and headers, in bytes)",
                l.max_header_bytes
            ),
        );
    }
    if !(1..=1000).contains(&l.max_headers) {
        out.add(
            "listener.max_headers",
            format!("is {}; must be from 1 to 1000", l.max_headers),
        );
    }
    if !(64..=65534).contains(&l.max_uri_bytes) {
        out.add(
            "listener.max_uri_bytes",
            format!("is {}; must be from 64 to 65534", l.max_uri_bytes),
        );
    }
    if l.max_streams_per_connection == 0 {
        out.add(
            "listener.max_streams_per_connection",
            "is 0; must be at least 1",
        );
    }
}

fn check_runtime_worker_threads(cfg: &Config, out: &mut Problems) {
    if cfg.runtime.worker_threads == Some(0) {
        out.add(
            "runtime.worker_threads",
            "is 0; must be at least 1 (leave it out for one per core)",
        );
    }
}

fn check_balancer_choices(cfg: &Config, out: &mut Problems) {
    let c = cfg.balancer.choices;
    if !(2..=16).contains(&c) {
        out.add(
            "balancer.choices",
            format!("is {c}; must be from 2 to 16 (backends sampled per pick)"),
        );
    }
}

fn check_balancer_ewma_decay(cfg: &Config, out: &mut Problems) {
    positive("balancer.ewma_decay", cfg.balancer.ewma_decay.0, out);
}

fn check_balancer_utilisation_target(cfg: &Config, out: &mut Problems) {
    let u = cfg.balancer.utilisation_target;
    if !(u > 0.0 && u <= 1.0) {
        out.add(
            "balancer.utilisation_target",
            format!("is {u}; must be greater than 0 and at most 1 (a share of capacity, e.g. 0.8)"),
        );
    }
}

fn check_balancer_slow_start(cfg: &Config, out: &mut Problems) {
    let b = &cfg.balancer;
    let a = b.slow_start_aggression;
    if !(a.is_finite() && a > 0.0) {
        out.add(
            "balancer.slow_start_aggression",
            format!("is {a}; must be a finite number greater than 0 (1 is a linear ramp)"),
        );
    }
    let m = b.slow_start_min_percent;
    if !(m > 0.0 && m <= 100.0) {
        out.add(
            "balancer.slow_start_min_percent",
            format!("is {m}; must be greater than 0 and at most 100 (percent of the weight)"),
        );
    }
}

fn check_upstream_timeouts(cfg: &Config, out: &mut Problems) {
    let u = &cfg.upstream;
    positive("upstream.connect_timeout", u.connect_timeout.0, out);
    positive("upstream.response_timeout", u.response_timeout.0, out);
    positive("upstream.idle_timeout", u.idle_timeout.0, out);
    positive("upstream.tunnel_idle_timeout", u.tunnel_idle_timeout.0, out);
}

/// The system's bundles of trusted certificate authorities, looked for in this order when no
/// `ca` is configured (Debian and Ubuntu, Fedora and RHEL, openSUSE, Alpine and macOS), as Go's
/// crypto/x509 looks for them.
pub const SYSTEM_CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The first system bundle present, for TLS backends without a configured `ca`.
pub fn system_ca_bundle() -> Option<&'static str> {
    SYSTEM_CA_BUNDLES
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
}

/// What is wrong with a CA file, if anything: it must be readable and hold a PEM certificate.
fn ca_file_error(path: &str) -> Option<String> {
    match std::fs::read_to_string(path) {
        Err(e) => Some(format!("cannot read `{path}`: {e}")),
        Ok(text) if !text.contains("-----BEGIN CERTIFICATE-----") => Some(format!(
            "`{path}` holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )),
        Ok(_) => None,
    }
}

/// A TLS backend needs authorities to verify it with: its own, `upstream.ca`, or the system's.
fn missing_ca(cfg: &Config, own: Option<&String>) -> bool {
    own.is_none() && cfg.upstream.ca.is_none() && system_ca_bundle().is_none()
}

fn check_upstream_tls(cfg: &Config, out: &mut Problems) {
    let u = &cfg.upstream;
    if let Some(e) = u.ca.as_deref().and_then(ca_file_error) {
        out.add("upstream.ca", e);
    }
    if u.max_streams_per_connection == 0 {
        out.add(
            "upstream.max_streams_per_connection",
            "is 0; must be at least 1 (HTTP/2 streams on one backend connection)",
        );
    }
    if let Some(p) = &cfg.provider {
        if p.protocol.is_tls() && missing_ca(cfg, None) {
            out.add(
                "provider.protocol",
                format!(
                    "is \"{}\" (TLS) but no certificate authorities are known: set upstream.ca \
                     (no system bundle at {})",
                    p.protocol.name(),
                    SYSTEM_CA_BUNDLES.join(", ")
                ),
            );
        }
    }
}

fn check_backend_tls(cfg: &Config, out: &mut Problems) {
    for (i, b) in cfg.backends.iter().enumerate() {
        let tls = b.protocol.is_tls();
        for (key, set) in [
            ("tls_ca", b.tls_ca.is_some()),
            ("server_name", b.server_name.is_some()),
        ] {
            if set && !tls {
                out.add(
                    format!("backends[{i}].{key}"),
                    format!(
                        "applies to TLS backends only; protocol is \"{}\" (use \"h2\" or \"https\")",
                        b.protocol.name()
                    ),
                );
            }
        }
        if let Some(e) = b.tls_ca.as_deref().filter(|_| tls).and_then(ca_file_error) {
            out.add(format!("backends[{i}].tls_ca"), e);
        }
        if let Some(n) = b.server_name.as_deref().filter(|_| tls) {
            let ip = n.parse::<IpAddr>().is_ok();
            if !ip && !is_hostname(n) {
                out.add(
                    format!("backends[{i}].server_name"),
                    format!("`{n}` is neither a DNS name nor an IP address"),
                );
            }
        }
        if tls && missing_ca(cfg, b.tls_ca.as_ref()) {
            out.add(
                format!("backends[{i}].protocol"),
                format!(
                    "is \"{}\" (TLS) but no certificate authorities are known: set tls_ca or \
                     upstream.ca (no system bundle at {})",
                    b.protocol.name(),
                    SYSTEM_CA_BUNDLES.join(", ")
                ),
            );
        }
    }
}

fn check_overload_queue_timeout(cfg: &Config, out: &mut Problems) {
    positive("overload.queue_timeout", cfg.overload.queue_timeout.0, out);
}

fn check_signals_window(cfg: &Config, out: &mut Problems) {
    let w = cfg.signals.window;
    if w.0 < Duration::from_secs(1) || w.0 > Duration::from_secs(3600) {
        out.add("signals.window", format!("is {w}; must be from 1s to 1h"));
    }
}

/// Why `s` is not `host:port` with an IP or hostname and a port from 1 to 65535.
pub(crate) fn host_port_error(s: &str) -> Option<String> {
    let example = "use host:port, e.g. \"127.0.0.1:9001\", \"[::1]:9001\" or \"backend-1:9001\"";
    if s.contains("://") {
        return Some(format!("`{s}` has a scheme; {example}"));
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return (sa.port() == 0)
            .then(|| format!("`{s}` has port 0; the port must be from 1 to 65535"));
    }
    let port = match s.strip_prefix('[') {
        Some(rest) => match rest.split_once("]:") {
            Some((ip, port)) if ip.parse::<std::net::Ipv6Addr>().is_ok() => port,
            Some((ip, _)) => return Some(format!("`[{ip}]` is not an IPv6 address; {example}")),
            None => return Some(format!("`{s}` has no port; {example}")),
        },
        None => match s.rsplit_once(':') {
            Some((host, port)) => {
                let looks_ipv4 = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
                let host_ok = if looks_ipv4 {
                    host.parse::<std::net::Ipv4Addr>().is_ok()
                } else {
                    is_hostname(host)
                };
                if !host_ok {
                    return Some(format!(
                        "`{host}` is neither an IP address nor a hostname; {example}"
                    ));
                }
                port
            }
            None => return Some(format!("`{s}` has no port; {example}")),
        },
    };
    match port.parse::<u16>() {
        Ok(1..) => None,
        _ => Some(format!(
            "`{s}` has port `{port}`; the port must be from 1 to 65535"
        )),
    }
}

/// RFC 1123 hostname: dot-separated labels of letters, digits and inner hyphens.
fn is_hostname(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn check_backend_addresses(cfg: &Config, out: &mut Problems) {
    for (i, b) in cfg.backends.iter().enumerate() {
        if let Some(e) = host_port_error(&b.address) {
            out.add(format!("backends[{i}].address"), e);
        }
    }
}

/// The form two addresses are compared in: `[::1]:80` and `[0::1]:80` are one backend.
fn normal_address(s: &str) -> String {
    match s.parse::<SocketAddr>() {
        Ok(sa) => sa.to_string(),
        Err(_) => s.to_ascii_lowercase(),
    }
}

fn check_backend_duplicates(cfg: &Config, out: &mut Problems) {
    let normal: Vec<String> = cfg
        .backends
        .iter()
        .map(|b| normal_address(&b.address))
        .collect();
    for (j, a) in normal.iter().enumerate() {
        if let Some(i) = normal[..j].iter().position(|b| b == a) {
            out.add(
                format!("backends[{j}].address"),
                format!(
                    "`{}` is also backends[{i}].address; each static backend needs an address \
                     of its own",
                    cfg.backends[j].address
                ),
            );
        }
    }
}

fn check_backend_capacity(cfg: &Config, out: &mut Problems) {
    for (i, b) in cfg.backends.iter().enumerate() {
        if b.capacity == Some(0) {
            out.add(
                format!("backends[{i}].capacity"),
                "is 0; must be at least 1 (requests served at once), or left out for no limit",
            );
        }
    }
}

fn check_backend_weight(cfg: &Config, out: &mut Problems) {
    for (i, b) in cfg.backends.iter().enumerate() {
        if b.weight == 0 {
            out.add(format!("backends[{i}].weight"), "is 0; must be at least 1");
        }
    }
}

/// A price: finite and not negative.
fn price(key: &str, p: f64, out: &mut Problems) {
    if !p.is_finite() || p < 0.0 {
        out.add(
            key,
            format!("is {p}; must be a finite number >= 0 (price per hour, e.g. 0.05)"),
        );
    }
}

fn check_backend_cost(cfg: &Config, out: &mut Problems) {
    for (i, b) in cfg.backends.iter().enumerate() {
        price(
            &format!("backends[{i}].cost_per_hour"),
            b.cost_per_hour,
            out,
        );
    }
}

fn check_provider_scripts(cfg: &Config, out: &mut Problems) {
    let Some(p) = &cfg.provider else { return };
    match p.kind {
        ProviderKind::Local | ProviderKind::Docker | ProviderKind::Kubernetes => {
            let runs = match p.kind {
                ProviderKind::Local => "\"local\", which runs provider.command",
                ProviderKind::Docker => "\"docker\", which runs provider.image",
                _ => "\"kubernetes\", which scales provider.target",
            };
            for (key, words) in [
                ("provider.launch", &p.launch),
                ("provider.terminate", &p.terminate),
            ] {
                if !words.is_empty() {
                    out.add(
                        key,
                        format!(
                            "is only used with provider.kind = \"command\"; this provider is {runs}"
                        ),
                    );
                }
            }
        }
        ProviderKind::Command => {
            for (key, words, what) in [
                (
                    "provider.launch",
                    &p.launch,
                    "the command line of a script that starts one backend and prints \
                     {\"id\": \"...\", \"address\": \"host:port\"}, e.g. [\"./launch.sh\"]",
                ),
                (
                    "provider.terminate",
                    &p.terminate,
                    "the command line of a script that stops one backend, e.g. \
                     [\"./terminate.sh\", \"{id}\"]",
                ),
            ] {
                match words.first() {
                    None => out.add(
                        key,
                        format!("is required because provider.kind is \"command\"; give {what}"),
                    ),
                    Some(w) if w.trim().is_empty() => out.add(
                        key,
                        "starts with an empty word; the first word must name the program to run",
                    ),
                    Some(_) => {}
                }
            }
            positive("provider.terminate_timeout", p.terminate_timeout.0, out);
        }
    }
}

fn check_provider_command(cfg: &Config, out: &mut Problems) {
    let Some(p) = &cfg.provider else { return };
    if p.kind != ProviderKind::Local {
        return;
    }
    let key = "provider.command";
    match p.command.first() {
        None => out.add(
            key,
            "is empty; give the command line of one backend as an array of words, e.g. \
             [\"ebbtide\", \"backend\", \"--listen\", \"127.0.0.1:{port}\"]",
        ),
        Some(program) if program.trim().is_empty() => out.add(
            key,
            "starts with an empty word; the first word must name the program to run",
        ),
        Some(_) => {
            if !p.command.iter().any(|w| w.contains("{port}")) {
                out.add(
                    key,
                    "has no word containing `{port}`; ebbtide puts a free port there so it \
                     knows where the backend listens, e.g. \"127.0.0.1:{port}\"",
                );
            }
        }
    }
}

fn check_provider_count(cfg: &Config, out: &mut Problems) {
    let Some(p) = &cfg.provider else { return };
    if p.count > 1000 {
        out.add(
            "provider.count",
            format!("is {}; must be from 0 to 1000", p.count),
        );
    }
}

fn check_provider_capacity(cfg: &Config, out: &mut Problems) {
    let Some(p) = &cfg.provider else { return };
    if p.capacity == Some(0) {
        out.add(
            "provider.capacity",
            "is 0; must be at least 1 (requests one backend serves at once), or left out for \
             no limit",
        );
    }
}

fn check_provider_cost(cfg: &Config, out: &mut Problems) {
    let Some(p) = &cfg.provider else { return };
    price("provider.cost_per_hour", p.cost_per_hour, out);
}

fn check_provider_kinds(cfg: &Config, out: &mut Problems) {
    let Some(p) = &cfg.provider else { return };
    for (key, message) in crate::kinds::validate(p, cfg.autoscaler.is_some()) {
        out.add(key, message);
    }
}

fn check_provider_boot_timeout(cfg: &Config, out: &mut Problems) {
    let Some(p) = &cfg.provider else { return };
    positive("provider.boot_timeout", p.boot_timeout.0, out);
}

/// An API server URL: http:// or https:// and a host.
fn api_server(key: &str, url: &Option<String>, out: &mut Problems) {
    if let Some(u) = url {
        let ok = u
            .strip_prefix("http://")
            .or_else(|| u.strip_prefix("https://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
        if !ok {
            out.add(
                key,
                format!("`{u}` is not a URL such as \"https://10.0.0.1:6443\" or \"http://127.0.0.1:8001\""),
            );
        }
    }
}

/// A namespace: a DNS label (RFC 1123), as Kubernetes requires.
fn namespace(key: &str, ns: &Option<String>, out: &mut Problems) {
    if let Some(n) = ns {
        let ok = !n.is_empty()
            && n.len() <= 63
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !n.starts_with('-')
            && !n.ends_with('-');
        if !ok {
            out.add(
                key,
                format!(
                    "`{n}` is not a namespace name (lowercase letters, digits and `-`, at most 63)"
                ),
            );
        }
    }
}

fn check_provider_kubernetes(cfg: &Config, out: &mut Problems) {
    let Some(p) = &cfg.provider else { return };
    if p.kind != ProviderKind::Kubernetes {
        for (key, is_set) in [
            ("provider.namespace", p.namespace.is_some()),
            ("provider.target", p.target.is_some()),
            ("provider.api_server", p.api_server.is_some()),
        ] {
            if is_set {
                out.add(
                    key,
                    format!(
                        "is only used with provider.kind = \"kubernetes\"; this provider is \"{}\"",
                        p.kind.name()
                    ),
                );
            }
        }
        return;
    }
    match &p.target {
        None => out.add(
            "provider.target",
            "is required because provider.kind is \"kubernetes\"; give the resource to scale, \
             e.g. \"deployment/web\"",
        ),
        Some(t) => {
            if let Err(e) = crate::ScaleTarget::parse(t) {
                out.add("provider.target", e);
            }
        }
    }
    if p.port == Some(0) {
        out.add("provider.port", "is 0; must be from 1 to 65535");
    }
    namespace("provider.namespace", &p.namespace, out);
    api_server("provider.api_server", &p.api_server, out);
}

fn check_discovery(cfg: &Config, out: &mut Problems) {
    let Some(d) = &cfg.discovery else { return };
    let keys = (&d.service, &d.port, &d.namespace, &d.api_server);
    let what = "the Service whose endpoints are the backends, e.g. \"web\"";
    service_ref("discovery", what, keys, out);
    if d.capacity == Some(0) {
        out.add(
            "discovery.capacity",
            "is 0; must be at least 1, or left out for no limit",
        );
    }
    if d.weight == 0 {
        out.add("discovery.weight", "is 0; must be at least 1");
    }
    price("discovery.cost_per_hour", d.cost_per_hour, out);
}

/// `[autoscaler.balancer_discovery]`, and that it is not given with `autoscaler.balancers`
/// (which of the two lists would be the balancers?).
fn check_balancer_discovery(cfg: &Config, out: &mut Problems) {
    let Some(a) = &cfg.autoscaler else { return };
    let Some(d) = &a.balancer_discovery else {
        return;
    };
    if !a.balancers.is_empty() {
        out.add(
            "autoscaler.balancer_discovery",
            "is set together with autoscaler.balancers; keep one: the static list of admin URLs, \
             or the Service whose endpoints are the balancers",
        );
    }
    let keys = (&d.service, &d.port, &d.namespace, &d.api_server);
    let what = "the balancers' Service, e.g. \"ebbtide-admin\"";
    service_ref("autoscaler.balancer_discovery", what, keys, out);
}

/// The keys that name a Kubernetes Service and one of its ports: `service`, `port`,
/// `namespace`, `api_server`.
type ServiceKeys<'a> = (
    &'a Option<String>,
    &'a Option<crate::PortRef>,
    &'a Option<String>,
    &'a Option<String>,
);

/// Checks the Service keys under `section`; `what` says which Service is meant when it is missing.
fn service_ref(section: &str, what: &str, keys: ServiceKeys<'_>, out: &mut Problems) {
    let (service, port, ns, server) = keys;
    let key = |k: &str| format!("{section}.{k}");
    match service {
        None => out.add(key("service"), format!("is required; give {what}")),
        Some(s)
            if s.is_empty()
                || s.chars()
                    .any(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')) =>
        {
            out.add(
                key("service"),
                format!("`{s}` is not a Service name (lowercase letters, digits and `-`)"),
            )
        }
        Some(_) => {}
    }
    match port {
        Some(crate::PortRef::Number(0)) => out.add(key("port"), "is 0; must be from 1 to 65535"),
        Some(crate::PortRef::Name(n)) if n.is_empty() => out.add(
            key("port"),
            "is empty; give the Service port's name or number",
        ),
        _ => {}
    }
    namespace(&key("namespace"), ns, out);
    api_server(&key("api_server"), server, out);
}

fn check_leader_election(cfg: &Config, out: &mut Problems) {
    let Some(l) = &cfg.leader_election else {
        return;
    };
    if l.lease.is_empty()
        || l.lease.len() > 253
        || !l
            .lease
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        out.add(
            "leader_election.lease",
            format!(
                "`{}` is not a Lease name (lowercase letters, digits, `-`, `.`)",
                l.lease
            ),
        );
    }
    positive("leader_election.retry_period", l.retry_period.0, out);
    if l.renew_deadline.0 >= l.lease_duration.0 {
        out.add(
            "leader_election.renew_deadline",
            format!(
                "is {}; must be shorter than lease_duration ({}), so that a holder stops before \
                 another may take the Lease",
                l.renew_deadline, l.lease_duration
            ),
        );
    }
    if l.retry_period.0 >= l.renew_deadline.0 {
        out.add(
            "leader_election.retry_period",
            format!(
                "is {}; must be shorter than renew_deadline ({}), to renew more than once in it",
                l.retry_period, l.renew_deadline
            ),
        );
    }
    namespace("leader_election.namespace", &l.namespace, out);
    api_server("leader_election.api_server", &l.api_server, out);
}

/// The smallest memory limit the Docker Engine accepts.
const DOCKER_MIN_MEMORY: u64 = 6 * 1024 * 1024;

fn check_provider_docker(cfg: &Config, out: &mut Problems) {
    let Some(p) = &cfg.provider else { return };
    if p.kind != ProviderKind::Docker {
        let set = [
            ("provider.image", p.image.is_some()),
            (
                "provider.port",
                p.port.is_some() && p.kind != ProviderKind::Kubernetes,
            ),
            ("provider.network", p.network.is_some()),
            ("provider.cpus", p.cpus.is_some()),
            ("provider.memory", p.memory.is_some()),
            ("provider.env", !p.env.is_empty()),
            ("provider.labels", !p.labels.is_empty()),
            ("provider.owner", p.owner.is_some()),
        ];
        for (key, is_set) in set {
            if is_set {
                out.add(
                    key,
                    format!(
                        "is only used with provider.kind = \"docker\"; this provider is \"{}\"",
                        p.kind.name()
                    ),
                );
            }
        }
        return;
    }
    match &p.image {
        None => out.add(
            "provider.image",
            "is required because provider.kind is \"docker\"; give the image each backend runs, \
             e.g. \"ebbtide-backend:dev\" (it must be on the Docker host: nothing is pulled)",
        ),
        Some(i) if i.trim().is_empty() || i.chars().any(char::is_whitespace) => out.add(
            "provider.image",
            format!("`{i}` is not an image name such as \"ebbtide-backend:dev\""),
        ),
        Some(_) => {}
    }
    match p.port {
        None => out.add(
            "provider.port",
            "is required because provider.kind is \"docker\"; give the container port the \
             backend listens on, e.g. 8080",
        ),
        Some(0) => out.add("provider.port", "is 0; must be from 1 to 65535"),
        Some(_) => {}
    }
    if let Some(n) = &p.network {
        if n.trim().is_empty() || n.chars().any(char::is_whitespace) {
            out.add(
                "provider.network",
                format!("`{n}` is not a Docker network name; leave it out to publish on 127.0.0.1"),
            );
        } else if matches!(n.as_str(), "host" | "none") {
            out.add(
                "provider.network",
                format!(
                    "is \"{n}\"; give a user-defined network (docker network create NAME), or \
                     leave it out to publish on 127.0.0.1"
                ),
            );
        }
    }
    if let Some(c) = p.cpus {
        if !c.is_finite() || c < 0.01 {
            out.add(
                "provider.cpus",
                format!("is {c}; must be at least 0.01 (CPUs per container, e.g. 0.5)"),
            );
        }
    }
    if let Some(m) = p.memory {
        if m.0 < DOCKER_MIN_MEMORY {
            out.add(
                "provider.memory",
                format!("is {m}; Docker's smallest memory limit is 6MiB (e.g. \"64MiB\")"),
            );
        }
    }
    for name in p.env.0.keys() {
        if name.is_empty() || name.contains('=') || name.chars().any(char::is_whitespace) {
            out.add(
                "provider.env",
                format!(
                    "has a variable named `{name}`; names are non-empty, without `=` or spaces"
                ),
            );
        }
    }
    for name in p.labels.keys() {
        if name.starts_with("ebbtide.") {
            out.add(
                "provider.labels",
                format!(
                    "has `{name}`, a label ebbtide sets itself (ebbtide.managed, ebbtide.owner, \
                     ebbtide.instance); choose another name"
                ),
            );
        }
    }
    if p.owner.is_none() && cfg.admin.address.ends_with(":0") {
        out.add(
            "provider.owner",
            "is required when admin.address has port 0: the default owner is the admin address, \
             which would not tell two such ebbtide processes (and their containers) apart",
        );
    }
    if let Some(o) = &p.owner {
        if o.trim().is_empty() {
            out.add(
                "provider.owner",
                "is empty; leave it out (the admin address is used) or give a name",
            );
        }
    }
    if let Some(w) = p.command.first() {
        if w.trim().is_empty() {
            out.add(
                "provider.command",
                "starts with an empty word; the first word must name the program to run",
            );
        }
    }
}

/// `central_queue` dispatches only to free slots below a backend's capacity; without a
/// configured `capacity` the adaptive limit (`[overload] adaptive_limit`, on by default)
/// supplies it, so a capacity is needed only when the limit is off.
fn check_central_queue_capacities(cfg: &Config, out: &mut Problems) {
    if cfg.balancer.policy != PolicyKind::CentralQueue || cfg.overload.adaptive_limit {
        return;
    }
    let why = "is required because balancer.policy is \"central_queue\", which dispatches only to \
               free slots below a backend's capacity, and overload.adaptive_limit = false, so none \
               is learnt; set e.g. capacity = 8, or leave adaptive_limit on";
    for (i, b) in cfg.backends.iter().enumerate() {
        if b.capacity.is_none() {
            out.add(format!("backends[{i}].capacity"), why);
        }
    }
    if let Some(p) = &cfg.provider {
        if p.capacity.is_none() {
            out.add("provider.capacity", why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one_in_characters() {
        let t = "ab\nçd=1\n";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 5), (2, 2)); // after the two-byte ç
        assert_eq!(line_col(t, 999), (3, 1));
    }

    #[test]
    fn parent_walks_up_key_paths() {
        assert_eq!(parent("backends[1].capacity"), Some("backends[1]"));
        assert_eq!(parent("backends[1]"), Some("backends"));
        assert_eq!(parent("backends"), Some(""));
        assert_eq!(parent(""), None);
    }

    #[test]
    fn index_finds_values_tables_and_elements() {
        let t = "[listener]\naddress = \"x\"\n\n[[backends]]\naddress = \"a:1\"\n\
                 [[backends]]\naddress = \"b:1\"\n[provider]\ncommand = [\"a\", \"b\"]\n";
        let ix = SpanIndex::parse(t);
        let at = |p: &str| line_col(t, ix.position_of(p).unwrap());
        assert_eq!(at("listener.address"), (2, 11));
        assert_eq!(at("backends[1].address"), (7, 11));
        // A missing key falls back to its table's header.
        assert_eq!(at("backends[1].capacity"), (6, 1));
        assert_eq!(at("provider.count"), (8, 1));
        assert_eq!(at("provider.command[1]"), (9, 17));
        // Nothing written at all: no position (the caller reports 1:1).
        assert_eq!(ix.position_of("admin.token"), None);
    }

    #[test]
    fn index_handles_dotted_keys_and_inline_tables() {
        let t = "listener.address = \"x\"\nbackends = [{address = \"a:1\"}, {address = \"b:1\"}]\n";
        let ix = SpanIndex::parse(t);
        let at = |p: &str| line_col(t, ix.position_of(p).unwrap());
        assert_eq!(at("listener.address"), (1, 20));
        assert_eq!(at("backends[1].address"), (2, 43));
        assert_eq!(at("backends[1].weight"), (2, 32));
        let span = t.find("\"b:1\"").unwrap();
        assert_eq!(
            ix.path_at(span..span + 5).as_deref(),
            Some("backends[1].address")
        );
    }

    #[test]
    fn guesses_the_path_in_broken_toml() {
        let t = "[listener]\naddress = \"x\n";
        assert_eq!(guess_path(t, t.len() - 1), "listener.address");
        let t = "[[backends]]\naddress = \"a:1\"\n[[ backends ]]\nweight = = 2\n";
        assert_eq!(guess_path(t, t.len() - 3), "backends[1].weight");
        let t = "[listener\n";
        assert_eq!(guess_path(t, 9), "listener");
    }

    #[test]
    fn duration_keys_are_found_from_the_defaults() {
        assert!(is_duration_key("signals.window"));
        assert!(is_duration_key("provider.boot_timeout"));
        assert!(is_duration_key("upstream.connect_timeout"));
        assert!(!is_duration_key("listener.address"));
        assert!(!is_duration_key("balancer.hash_key"));
        assert!(!is_duration_key("nonsense.key"));
    }

    #[test]
    fn host_port_accepts_ips_and_hostnames() {
        for ok in [
            "127.0.0.1:9001",
            "[::1]:9001",
            "localhost:1",
            "backend-1.svc.cluster.local:65535",
        ] {
            assert_eq!(host_port_error(ok), None, "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "http://a:80",
            "-a:80",
            "999.1.1.1:80",
            "[::1]",
            "[zz]:80",
            "[::1]:0",
            "a_b:80",
            ":80",
            "::1:80",
            "a..b:80",
        ] {
            assert!(host_port_error(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn every_check_passes_on_the_defaults() {
        let cfg = Config {
            provider: Some(Provider {
                capacity: Some(4),
                ..Provider::default()
            }),
            ..Config::default()
        };
        assert_eq!(cfg.validate(), Ok(()));
    }

    #[test]
    fn validate_reports_key_paths_without_a_file() {
        let mut cfg = Config::default();
        cfg.balancer.choices = 1;
        cfg.runtime.worker_threads = Some(0);
        let errs = cfg.validate().unwrap_err().0;
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["runtime.worker_threads", "balancer.choices"]);
        assert!(errs[0]
            .to_string()
            .starts_with("<config>:0:0: runtime.worker_threads: "));
    }
}
