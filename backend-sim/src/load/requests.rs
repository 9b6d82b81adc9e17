//! What each request of a run looks like: one request from the options, or a weighted mix from a
//! `--requests` file, with per-request variables.
//!
//! A mix file is TOML (`[[request]]` tables) or JSON lines (one object per line), each request
//! with `url` (absolute, to the same host and port as every other, or a path against `--target`),
//! and optionally `method` (GET), `headers` (a table of name = value), `body` (a string) and
//! `weight` (1). In the url, header values and body, `{{counter}}` becomes the request's number in
//! the run (1, 2, 3, ... across all connections) and `{{random_id}}` 16 hex digits that differ per
//! request (for cache-busting and `Idempotency-Key`); both are fixed by `--seed` and the number.

use super::client::{RequestTemplate, Target};
use super::raw::serialize;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// Help text for `--requests`.
pub(crate) const REQUESTS_HELP: &str = r#"A weighted mix of requests from a file, TOML:
  [[request]]
  url = "/items/{{counter}}"       # a path against --target, or http://host:port/...
  weight = 9                       # default 1
  [[request]]
  url = "/orders"
  method = "POST"                  # default GET
  headers = { content-type = "application/json", idempotency-key = "{{random_id}}" }
  body = '{"n": {{counter}}}'
  weight = 1
or JSON lines, one request per line:
  {"url": "/orders", "method": "POST", "headers": {"idempotency-key": "{{random_id}}"}, "body": "x"}
Every url goes to one host:port (--target's, or the first url's). In urls, header values and
bodies, {{counter}} is the request's number in the run (1, 2, ...) and {{random_id}} 16 hex digits
that differ per request."#;

/// One request of a mix file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    request: Vec<Spec>,
}

/// A piece of a string with variables.
#[derive(Debug, Clone, PartialEq)]
enum Part {
    Lit(String),
    Counter,
    RandomId,
}

/// A string as written, split at its variables.
#[derive(Debug, Clone, PartialEq)]
struct Text(Vec<Part>);

impl Text {
    fn parse(s: &str) -> Result<Text, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(i) = rest.find("{{") {
            if i > 0 {
                parts.push(Part::Lit(rest[..i].to_string()));
            }
            let after = &rest[i + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("`{s}`: `{{{{` without `}}}}`"))?;
            parts.push(match after[..end].trim() {
                "counter" => Part::Counter,
                "random_id" => Part::RandomId,
                other => {
                    return Err(format!(
                        "`{s}`: unknown variable `{other}` (counter, random_id)"
                    ))
                }
            });
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Text(parts))
    }

    fn is_static(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    fn render(&self, n: u64, id: u64) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Counter => out.push_str(&n.to_string()),
                Part::RandomId => out.push_str(&format!("{id:016x}")),
            }
        }
        out
    }
}

/// A value built once when it has no variables, else per request.
#[derive(Debug)]
enum Field<T> {
    Fixed(T),
    Varying(Text),
}

/// One request of the mix, ready to build.
#[derive(Debug)]
struct Entry {
    method: Method,
    path: Field<Uri>,
    headers: Vec<(HeaderName, Field<HeaderValue>)>,
    body: Field<Bytes>,
}

/// One request, ready to send.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) method: Method,
    /// Origin form: path and query.
    pub(crate) uri: Uri,
    /// With `host`.
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The HTTP/1.1 bytes of a keep-alive request, when made once for every request.
    pub(crate) wire: Option<Bytes>,
}

impl Outgoing {
    /// As a hyper request (for HTTP/2).
    pub(crate) fn to_request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// The requests of a run: built fresh for each send.
pub(crate) struct Requests {
    host: HeaderValue,
    /// Headers of every request (`--header`).
    common: HeaderMap,
    entries: Vec<Entry>,
    /// Cumulative weights, for the pick.
    cumulative: Vec<u64>,
    counter: AtomicU64,
    seed: u64,
    /// The request, made once, when every request is the same.
    fixed: Option<Outgoing>,
}

/// splitmix64: a well-mixed 64-bit function of a number.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Requests {
    /// Every request the same: `template` sent to `target`.
    pub(crate) fn single(target: Target, template: RequestTemplate) -> Requests {
        Requests {
            host: target.host,
            common: template.headers,
            entries: vec![Entry {
                method: template.method,
                path: Field::Fixed(target.path),
                headers: Vec::new(),
                body: Field::Fixed(template.body),
            }],
            cumulative: vec![1],
            counter: AtomicU64::new(0),
            seed: 0,
            fixed: None,
        }
        .with_fixed()
    }

    /// `http[s]://host:port/` of the first request of the mix in `text`, when its url is
    /// absolute.
    pub(crate) fn first_origin(text: &str, name: &str) -> Result<Option<String>, String> {
        let specs = parse_file(text, name)?;
        Ok(specs.first().and_then(|s| {
            let (scheme, rest) = split_scheme(&s.url)?;
            let authority = rest.split('/').next()?;
            Some(format!("{scheme}://{authority}/"))
        }))
    }

    /// A mix from the text of a `--requests` file; every request goes to `target`'s host, with
    /// `common` headers added and `seed` fixing the random ids and the pick.
    pub(crate) fn mix(
        text: &str,
        name: &str,
        target: &Target,
        common: HeaderMap,
        seed: u64,
    ) -> Result<Requests, String> {
        let specs = parse_file(text, name)?;
        if specs.is_empty() {
            return Err(format!("{name}: no requests"));
        }
        let mut entries = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0u64;
        for (i, spec) in specs.into_iter().enumerate() {
            let what = format!("{name}: request {}", i + 1);
            let path = path_of(&spec.url, target).map_err(|e| format!("{what}: {e}"))?;
            let path_text = Text::parse(&path).map_err(|e| format!("{what}: url {e}"))?;
            let path = if path_text.is_static() {
                Field::Fixed(
                    path.parse::<Uri>()
                        .map_err(|e| format!("{what}: url `{path}`: {e}"))?,
                )
            } else {
                // Check that it renders to a valid path.
                path_text
                    .render(1, 0)
                    .parse::<Uri>()
                    .map_err(|e| format!("{what}: url `{path}`: {e}"))?;
                Field::Varying(path_text)
            };
            let method: Method = spec
                .method
                .as_deref()
                .unwrap_or("GET")
                .to_ascii_uppercase()
                .parse()
                .map_err(|_| format!("{what}: bad method"))?;
            let mut headers = Vec::new();
            for (k, v) in &spec.headers {
                let name: HeaderName = k
                    .parse()
                    .map_err(|_| format!("{what}: bad header name `{k}`"))?;
                let text = Text::parse(v).map_err(|e| format!("{what}: header {k}: {e}"))?;
                let value = if text.is_static() {
                    Field::Fixed(
                        HeaderValue::from_str(v)
                            .map_err(|_| format!("{what}: bad header value for {k}"))?,
                    )
                } else {
                    Field::Varying(text)
                };
                headers.push((name, value));
            }
            let body = match &spec.body {
                None => Field::Fixed(Bytes::new()),
                Some(b) => {
                    let text = Text::parse(b).map_err(|e| format!("{what}: body {e}"))?;
                    if text.is_static() {
                        Field::Fixed(Bytes::from(b.clone()))
                    } else {
                        Field::Varying(text)
                    }
                }
            };
            if spec.weight == 0 {
                continue;
            }
            total += u64::from(spec.weight);
            cumulative.push(total);
            entries.push(Entry {
                method,
                path,
                headers,
                body,
            });
        }
        if entries.is_empty() {
            return Err(format!("{name}: every weight is 0"));
        }
        Ok(Requests {
            host: target.host.clone(),
            common,
            entries,
            cumulative,
            counter: AtomicU64::new(0),
            seed,
            fixed: None,
        }
        .with_fixed())
    }

    /// Makes the request once when there is one kind and it has no variables: no counter, no
    /// header map and no serializing per request.
    fn with_fixed(mut self) -> Requests {
        let fixed = self.entries.len() == 1 && {
            let e = &self.entries[0];
            matches!(e.path, Field::Fixed(_))
                && matches!(e.body, Field::Fixed(_))
                && e.headers.iter().all(|(_, v)| matches!(v, Field::Fixed(_)))
        };
        if fixed {
            let mut req = self.make(0);
            let mut wire = Vec::new();
            serialize(&req, true, &mut wire);
            req.wire = Some(Bytes::from(wire));
            self.fixed = Some(req);
        }
        self
    }

    /// How many kinds of request there are.
    pub(crate) fn kinds(&self) -> usize {
        self.entries.len()
    }

    /// The next request to send.
    pub(crate) fn next(&self) -> Cow<'_, Outgoing> {
        match &self.fixed {
            Some(req) => Cow::Borrowed(req),
            None => Cow::Owned(self.make(self.counter.fetch_add(1, Ordering::Relaxed) + 1)),
        }
    }

    /// Request number `n` (from 1).
    fn make(&self, n: u64) -> Outgoing {
        let id = mix(self.seed ^ mix(n));
        let entry = if self.entries.len() == 1 {
            &self.entries[0]
        } else {
            let total = *self.cumulative.last().expect("non-empty");
            let r = mix(id) % total;
            let i = self.cumulative.partition_point(|c| *c <= r);
            &self.entries[i]
        };
        let body = match &entry.body {
            Field::Fixed(b) => b.clone(),
            Field::Varying(t) => Bytes::from(t.render(n, id)),
        };
        let mut req = Outgoing {
            method: entry.method.clone(),
            uri: match &entry.path {
                Field::Fixed(u) => u.clone(),
                Field::Varying(t) => t
                    .render(n, id)
                    .parse()
                    .unwrap_or_else(|_| Uri::from_static("/")),
            },
            headers: HeaderMap::new(),
            body,
            wire: None,
        };
        let headers = &mut req.headers;
        headers.insert(http::header::HOST, self.host.clone());
        for (k, v) in &self.common {
            headers.insert(k.clone(), v.clone());
        }
        for (k, v) in &entry.headers {
            let value = match v {
                Field::Fixed(v) => v.clone(),
                Field::Varying(t) => match HeaderValue::from_str(&t.render(n, id)) {
                    Ok(v) => v,
                    Err(_) => continue,
                },
            };
            headers.insert(k.clone(), value);
        }
        req
    }
}

/// The specs of a TOML (`[[request]]`) or JSON-lines file.
fn parse_file(text: &str, name: &str) -> Result<Vec<Spec>, String> {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    if first.starts_with('{') {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.push(serde_json::from_str(line).map_err(|e| format!("{name}:{}: {e}", i + 1))?);
        }
        Ok(out)
    } else {
        let file: TomlFile = toml::from_str(text).map_err(|e| format!("{name}: {e}"))?;
        Ok(file.request)
    }
}

/// `("http", rest)` or `("https", rest)` of an absolute URL.
fn split_scheme(url: &str) -> Option<(&'static str, &str)> {
    match url.strip_prefix("https://") {
        Some(rest) => Some(("https", rest)),
        None => Some(("http", url.strip_prefix("http://")?)),
    }
}

/// The origin-form path of `url` on `target`: `url` is a path, or an absolute URL to the same
/// host and port.
fn path_of(url: &str, target: &Target) -> Result<String, String> {
    if url.starts_with('/') {
        return Ok(url.to_string());
    }
    let (_, rest) = split_scheme(url)
        .ok_or_else(|| format!("url `{url}`: give a path (/x) or an http:// or https:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority != target.host.to_str().unwrap_or("") {
        return Err(format!(
            "url `{url}`: every request goes to one host, {} (connections are per host)",
            target.host.to_str().unwrap_or("?")
        ));
    }
    Ok(path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            url: "http://127.0.0.1:9/".into(),
            addr: "127.0.0.1:9".parse().unwrap(),
            tls_name: None,
            host: HeaderValue::from_static("127.0.0.1:9"),
            path: Uri::from_static("/"),
        }
    }

    #[test]
    fn variables_render_per_request() {
        let t = Text::parse("/a/{{counter}}/{{ random_id }}x").unwrap();
        assert!(!t.is_static());
        assert_eq!(t.render(7, 255), "/a/7/00000000000000ffx");
        assert!(Text::parse("/{{nope}}").is_err());
        assert!(Text::parse("/{{counter").is_err());
        assert!(Text::parse("/plain").unwrap().is_static());
    }

    #[test]
    fn toml_and_json_lines_give_the_same_mix() {
        let toml = r#"
[[request]]
url = "/items/{{counter}}"
weight = 3

[[request]]
url = "http://127.0.0.1:9/orders"
method = "post"
headers = { idempotency-key = "{{random_id}}", content-type = "application/json" }
body = '{"n": {{counter}}}'
"#;
        let jsonl = r#"{"url": "/items/{{counter}}", "weight": 3}
{"url": "http://127.0.0.1:9/orders", "method": "post", "headers": {"idempotency-key": "{{random_id}}", "content-type": "application/json"}, "body": "{\"n\": {{counter}}}"}
"#;
        for text in [toml, jsonl] {
            let r = Requests::mix(text, "t", &target(), HeaderMap::new(), 5).unwrap();
            assert_eq!(r.kinds(), 2);
            let (mut items, mut orders) = (0, 0);
            let mut keys = std::collections::HashSet::new();
            for i in 1..=4000u64 {
                let req = r.next();
                assert_eq!(req.headers["host"], "127.0.0.1:9");
                if req.uri.path().starts_with("/items/") {
                    assert_eq!(req.uri.path(), format!("/items/{i}"));
                    assert_eq!(req.method, Method::GET);
                    items += 1;
                } else {
                    assert_eq!(req.uri.path(), "/orders");
                    assert_eq!(req.method, Method::POST);
                    let key = req.headers["idempotency-key"].to_str().unwrap().to_string();
                    assert_eq!(key.len(), 16);
                    assert!(keys.insert(key), "random ids differ");
                    orders += 1;
                }
            }
            // Weights 3:1.
            assert!((2800..3200).contains(&items), "{items} {orders}");
        }
    }

    #[test]
    fn a_request_without_variables_is_made_once() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        let template = RequestTemplate {
            method: Method::GET,
            headers,
            body: Bytes::new(),
        };
        let r = Requests::single(target(), template);
        let (a, b) = (r.next(), r.next());
        assert!(matches!((&a, &b), (Cow::Borrowed(_), Cow::Borrowed(_))));
        let wire = a.wire.as_ref().expect("serialized once");
        assert_eq!(
            &wire[..],
            b"GET / HTTP/1.1\r\nhost: 127.0.0.1:9\r\nx-a: 1\r\n\r\n"
        );
        // With variables, each request is made afresh.
        let mix = Requests::mix(
            "{\"url\": \"/{{counter}}\"}",
            "t",
            &target(),
            HeaderMap::new(),
            1,
        )
        .unwrap();
        assert_eq!(mix.next().uri.path(), "/1");
        assert_eq!(mix.next().uri.path(), "/2");
    }

    #[test]
    fn another_host_is_refused() {
        let text = "{\"url\": \"http://10.0.0.1/\"}\n";
        let e = Requests::mix(text, "t", &target(), HeaderMap::new(), 1)
            .err()
            .unwrap();
        assert!(e.contains("one host"), "{e}");
    }
}
