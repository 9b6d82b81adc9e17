//! The access log (`[log] access`): one line per request, in Apache's/NGINX's "combined" format
//! with ebbtide's own fields after it, or as JSON.
//!
//! Off the request path: a finished request hands a small [`AccessRecord`] to a writer thread
//! through a bounded channel and goes on; the thread formats and writes. When the channel is
//! full (the writer is behind, or blocked on a pipe nobody reads), the line is dropped and
//! counted in `ebbtide_access_log_dropped_total`: a request never waits for the log. The writer
//! is a thread of its own, not a tokio task, because writing a file or a pipe blocks.
//!
//! The file is opened for appending, and opened again on SIGHUP (a config reload), so that
//! logrotate can move it away and signal, as with NGINX's `USR1`.

use crate::clock::Clock;
use crate::registry::Backend;
use ebbtide_config::time::Nanos;
use ebbtide_config::AccessLogFormat;
use http::{HeaderValue, Method, Uri, Version};
use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the proxy learnt of a request's tries, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tries {
    /// Tries that got a backend slot (0: answered, or shed, before any backend was asked).
    pub attempts: u32,
    /// Time spent waiting in the balancer for a backend slot, over every try.
    pub queue_ns: u64,
    /// The last try's time from sending the request to the backend's response headers (or
    /// to its failure); `None` when no request was sent.
    pub upstream_ns: Option<u64>,
}

/// One finished request, as the access log writes it.
pub struct AccessRecord {
    /// When the request arrived (the proxy's clock).
    pub start: Nanos,
    /// The client's address.
    pub client: SocketAddr,
    /// The request method.
    pub method: Method,
    /// The request target.
    pub uri: Uri,
    /// The client's HTTP version.
    pub version: Version,
    /// `X-Request-Id`, as sent to the backend.
    pub request_id: Option<HeaderValue>,
    /// `User-Agent`.
    pub user_agent: Option<HeaderValue>,
    /// `Referer`.
    pub referer: Option<HeaderValue>,
    /// The response status.
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes: u64,
    /// From arrival to the end of the response (or the client leaving).
    pub duration_ns: u64,
    /// The backend that answered (or was tried last).
    pub backend: Option<Arc<Backend>>,
    /// Tries, queue and upstream time.
    pub tries: Tries,
}

impl AccessRecord {
    /// The record of a request that arrived at `start`, its response still to come.
    pub fn begin<B>(
        start: Nanos,
        peer: &crate::proxy::Peer,
        req: &http::Request<B>,
        request_id: Option<HeaderValue>,
    ) -> Box<AccessRecord> {
        let h = req.headers();
        Box::new(AccessRecord {
            start,
            client: peer.addr,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            request_id,
            user_agent: h.get(http::header::USER_AGENT).cloned(),
            referer: h.get(http::header::REFERER).cloned(),
            status: 0,
            bytes: 0,
            duration_ns: 0,
            backend: None,
            tries: Tries::default(),
        })
    }
}

/// Where the lines go and how they look; changed by a reload.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    format: AccessLogFormat,
    path: Option<PathBuf>,
}

/// The proxy's end of the access log: the channel to the writer and the drop counter.
#[derive(Debug)]
pub struct AccessLog {
    tx: SyncSender<Box<AccessRecord>>,
    dropped: Arc<AtomicU64>,
    /// Records handed to the writer, and those it has written (or failed to) and flushed.
    sent: AtomicU64,
    done: Arc<AtomicU64>,
    target: Arc<Mutex<Target>>,
    reopen: Arc<AtomicBool>,
}

/// How long the writer sleeps between looks at the reopen flag when no line comes.
const IDLE_TICK: Duration = Duration::from_millis(200);

impl AccessLog {
    /// Starts the writer thread: `format` lines to `path` (standard output when `None`), at
    /// most `buffer` lines waiting. `clock` maps request times to wall-clock time. Fails when
    /// the file cannot be opened.
    pub fn start(
        format: AccessLogFormat,
        path: Option<PathBuf>,
        buffer: usize,
        clock: Clock,
    ) -> Result<AccessLog, String> {
        let target = Target { format, path };
        let out = open(&target.path)?;
        let (tx, rx) = sync_channel(buffer.max(1));
        let log = AccessLog {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            sent: AtomicU64::new(0),
            done: Arc::new(AtomicU64::new(0)),
            target: Arc::new(Mutex::new(target.clone())),
            reopen: Arc::new(AtomicBool::new(false)),
        };
        let writer = Writer {
            rx,
            out,
            target,
            shared: log.target.clone(),
            reopen: log.reopen.clone(),
            dropped: log.dropped.clone(),
            done: log.done.clone(),
            wall: WallClock::new(clock),
            line: String::with_capacity(512),
        };
        std::thread::Builder::new()
            .name("ebbtide-access-log".into())
            .spawn(move || writer.run())
            .map_err(|e| format!("cannot start the access log writer: {e}"))?;
        Ok(log)
    }

    /// Hands a finished request to the writer, or drops and counts it when the writer is
    /// behind. Never blocks.
    pub fn submit(&self, record: Box<AccessRecord>) {
        match self.tx.try_send(record) {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped so far (`ebbtide_access_log_dropped_total`).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// A config reload: the format and file to use from now on. The file is opened again
    /// even when its name did not change (logrotate moved it away).
    pub fn reload(&self, format: AccessLogFormat, path: Option<PathBuf>) {
        if format != AccessLogFormat::Off {
            *self.target.lock().unwrap_or_else(|e| e.into_inner()) = Target { format, path };
        }
        self.reopen();
    }

    /// Waits (up to `limit`) until every line handed over is written and flushed: on
    /// shutdown, after the last requests finished.
    pub async fn finish(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.done.load(Ordering::Acquire) < self.sent.load(Ordering::Relaxed)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Opens the file again (on SIGHUP, for logrotate), before the next line.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }
}

/// The log's destination: standard output or an appended file.
enum Out {
    Stdout(std::io::Stdout),
    File(std::io::BufWriter<std::fs::File>),
}

impl Out {
    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Stdout(s) => s.lock().write_all(b),
            Out::File(f) => f.write_all(b),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Out::Stdout(s) => s.lock().flush(),
            Out::File(f) => f.flush(),
        }
    }
}

fn open(path: &Option<PathBuf>) -> Result<Out, String> {
    match path {
        None => Ok(Out::Stdout(std::io::stdout())),
        Some(p) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map(|f| Out::File(std::io::BufWriter::with_capacity(64 * 1024, f)))
            .map_err(|e| format!("cannot open the access log {}: {e}", p.display())),
    }
}

/// Maps the proxy's clock to wall-clock time: one reading of both, taken at start.
#[derive(Debug, Clone, Copy)]
struct WallClock {
    at: Nanos,
    wall: SystemTime,
}

impl WallClock {
    fn new(clock: Clock) -> Self {
        WallClock {
            at: clock.now(),
            wall: SystemTime::now(),
        }
    }

    fn wall(&self, t: Nanos) -> SystemTime {
        if t >= self.at {
            self.wall + Duration::from_nanos(t - self.at)
        } else {
            self.wall - Duration::from_nanos(self.at - t)
        }
    }
}

struct Writer {
    rx: Receiver<Box<AccessRecord>>,
    out: Out,
    target: Target,
    shared: Arc<Mutex<Target>>,
    reopen: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    wall: WallClock,
    line: String,
}

impl Writer {
    fn run(mut self) {
        loop {
            match self.rx.recv_timeout(IDLE_TICK) {
                Ok(r) => {
                    self.write(&r);
                    let mut n = 1;
                    // Write what else is waiting, then flush once.
                    while let Ok(r) = self.rx.try_recv() {
                        self.write(&r);
                        n += 1;
                    }
                    if self.out.flush().is_err() {
                        self.failed();
                    }
                    self.done.fetch_add(n, Ordering::Release);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.out.flush();
                    return;
                }
            }
            if self.reopen.swap(false, Ordering::AcqRel) {
                let _ = self.out.flush();
                self.target = self
                    .shared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                match open(&self.target.path) {
                    Ok(out) => self.out = out,
                    Err(e) => tracing::error!("{e}; writing on to the old file"),
                }
            }
        }
    }

    fn write(&mut self, r: &AccessRecord) {
        self.line.clear();
        format_line(
            self.target.format,
            r,
            self.wall.wall(r.start),
            &mut self.line,
        );
        if self.out.write_all(self.line.as_bytes()).is_err() {
            self.failed();
        }
    }

    fn failed(&self) {
        if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!("cannot write the access log; lines are dropped and counted");
        }
    }
}

/// Appends one line (with its newline) for `r`, which started at `at`, in `format`.
pub fn format_line(format: AccessLogFormat, r: &AccessRecord, at: SystemTime, out: &mut String) {
    match format {
        AccessLogFormat::Json => json_line(r, at, out),
        _ => combined_line(r, at, out),
    }
    out.push('\n');
}

/// `%h - - [%d/%b/%Y:%H:%M:%S +0000] "%r" %>s %b "%{Referer}i" "%{User-Agent}i"` (NGINX's and
/// Apache's "combined"), then ebbtide's own fields as `key=value`, which the tools that read
/// "combined" ignore.
fn combined_line(r: &AccessRecord, at: SystemTime, out: &mut String) {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = Civil::of(at);
    let _ = write!(
        out,
        "{} - - [{:02}/{}/{}:{:02}:{:02}:{:02} +0000] \"",
        r.client.ip(),
        t.day,
        MONTHS[t.month as usize - 1],
        t.year,
        t.hour,
        t.minute,
        t.second
    );
    quoted(r.method.as_str().as_bytes(), out);
    out.push(' ');
    quoted(target(&r.uri).as_bytes(), out);
    let _ = write!(out, " {:?}\" {} {} \"", r.version, r.status, r.bytes);
    quoted_header(r.referer.as_ref(), out);
    out.push_str("\" \"");
    quoted_header(r.user_agent.as_ref(), out);
    out.push_str("\" request_id=");
    match &r.request_id {
        Some(v) => quoted(v.as_bytes(), out),
        None => out.push('-'),
    }
    out.push_str(" backend=");
    match &r.backend {
        Some(b) => out.push_str(&b.address),
        None => out.push('-'),
    }
    let _ = write!(
        out,
        " attempts={} queue_ms={:.3} upstream_ms=",
        r.tries.attempts,
        ms(r.tries.queue_ns)
    );
    match r.tries.upstream_ns {
        Some(n) => {
            let _ = write!(out, "{:.3}", ms(n));
        }
        None => out.push('-'),
    }
    let _ = write!(out, " duration_ms={:.3}", ms(r.duration_ns));
}

/// One JSON object: every field of the combined line, named.
fn json_line(r: &AccessRecord, at: SystemTime, out: &mut String) {
    let t = Civil::of(at);
    fn header(v: &Option<HeaderValue>) -> Option<Cow<'_, str>> {
        v.as_ref().map(|v| String::from_utf8_lossy(v.as_bytes()))
    }
    let line = serde_json::json!({
        "time": format!(
            "{}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year, t.month, t.day, t.hour, t.minute, t.second, t.millis
        ),
        "client": r.client.to_string(),
        "method": r.method.as_str(),
        "path": target(&r.uri),
        "protocol": format!("{:?}", r.version),
        "status": r.status,
        "bytes": r.bytes,
        "duration_ms": round3(ms(r.duration_ns)),
        "request_id": header(&r.request_id),
        "backend": r.backend.as_ref().map(|b| b.address.as_str()),
        "attempts": r.tries.attempts,
        "queue_ms": round3(ms(r.tries.queue_ns)),
        "upstream_ms": r.tries.upstream_ns.map(|n| round3(ms(n))),
        "user_agent": header(&r.user_agent),
        "referer": header(&r.referer),
    });
    let _ = write!(out, "{line}");
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// The request target as the client sent it: origin-form, or the whole URI otherwise.
fn target(uri: &Uri) -> Cow<'_, str> {
    match (uri.scheme(), uri.path_and_query()) {
        (None, Some(pq)) => Cow::Borrowed(pq.as_str()),
        _ => Cow::Owned(uri.to_string()),
    }
}

/// `v`, or `-` when absent, escaped for a quoted field.
fn quoted_header(v: Option<&HeaderValue>, out: &mut String) {
    match v {
        Some(v) => quoted(v.as_bytes(), out),
        None => out.push('-'),
    }
}

/// Bytes for a quoted field of a combined line: `"`, `\`, controls and non-ASCII as `\xHH`
/// (as NGINX escapes them), so a client cannot forge a line or a field.
fn quoted(b: &[u8], out: &mut String) {
    for &c in b {
        if c == b'"' || c == b'\\' || !(0x20..0x7f).contains(&c) {
            let _ = write!(out, "\\x{c:02X}");
        } else {
            out.push(c as char);
        }
    }
}

/// A UTC calendar time.
#[derive(Debug, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    millis: u32,
}

impl Civil {
    fn of(t: SystemTime) -> Civil {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs() as i64;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        // Civil from days (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: (rem / 3600) as u32,
            minute: (rem % 3600 / 60) as u32,
            second: (rem % 60) as u32,
            millis: d.subsec_millis(),
        }
    }
}

#[cfg(test)]
mod tests;
