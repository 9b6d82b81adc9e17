//! Shared pieces of the end-to-end tests: start the real `ebbtide` binary with a config, a
//! scriptable HTTP/1.1 backend on 127.0.0.1, and a client.
#![allow(dead_code)]

pub mod process;

use bytes::Bytes;
use ebbtide_balancer::api::client::{AdminClient, CallError};
use ebbtide_balancer::api::{BackendInfo, Signals};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running `ebbtide serve`, killed when dropped.
pub struct Ebbtide {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: tempfile_path::TempPath,
    /// The "listening on" line it printed.
    pub line: String,
}

impl Drop for Ebbtide {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny temp-file helper (no extra dependency).
pub mod tempfile_path {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU64, Ordering};

    static N: AtomicU64 = AtomicU64::new(0);

    /// A file removed when dropped.
    pub struct TempPath(PathBuf);

    impl TempPath {
        pub fn with_contents(ext: &str, contents: &str) -> TempPath {
            let p = std::env::temp_dir().join(format!(
                "ebbtide-test-{}-{}.{ext}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&p, contents).unwrap();
            TempPath(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

pub fn ebbtide_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ebbtide")
}

/// Starts `ebbtide SUBCOMMAND --config F` with `config` written to F (warnings to the test's
/// stderr) and reads the first line it prints, where it says its addresses: the child, F and
/// that line.
fn start_configured(subcommand: &str, config: &str) -> (Child, tempfile_path::TempPath, String) {
    let file = tempfile_path::TempPath::with_contents("toml", config);
    let mut child = Command::new(ebbtide_bin())
        .args([subcommand, "--config"])
        .arg(file.path())
        .env("EBBTIDE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start ebbtide {subcommand}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, file, line)
}

/// Starts `ebbtide serve --config` with `config` (which should use port 0 for the listener and
/// the admin API) and waits for its "listening" line.
pub fn start_ebbtide(config: &str) -> Ebbtide {
    let (child, file, line) = start_configured("serve", config);
    let (addr, admin) = parse_listening(&line)
        .unwrap_or_else(|| panic!("ebbtide did not report its addresses; printed {line:?}"));
    Ebbtide {
        child,
        addr,
        admin,
        config: file,
        line,
    }
}

/// A running `ebbtide autoscale`, killed when dropped.
pub struct Autoscale {
    pub child: Child,
    /// Its admin API (and dashboard).
    pub admin: SocketAddr,
    _config: tempfile_path::TempPath,
}

impl Drop for Autoscale {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ebbtide autoscale --config` and reads its admin address from its first line.
pub fn start_autoscale(config: &str) -> Autoscale {
    let (child, file, line) = start_configured("autoscale", config);
    let admin = line
        .strip_prefix("ebbtide autoscale on http://")
        .and_then(|r| r.split(',').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("ebbtide autoscale printed {line:?}"));
    Autoscale {
        child,
        admin,
        _config: file,
    }
}

/// Parses "ebbtide listening on http://A (admin http://B)" (or https://A, with a
/// "(redirect http://C)" before the admin part).
pub fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.split("listening on http").nth(1)?;
    let rest = rest
        .strip_prefix("s://")
        .or_else(|| rest.strip_prefix("://"))?;
    let (addr, rest) = rest.split_once(' ')?;
    let admin = rest
        .split("admin http://")
        .nth(1)?
        .trim_end()
        .trim_end_matches(')');
    Some((addr.parse().ok()?, admin.parse().ok()?))
}

/// A base config with both listeners on free ports.
///
/// `EBBTIDE_TEST_HTTP1=hyper` sets `[listener] http1` (default: unset, the native lane), so
/// that the tests built on this config run on hyper's HTTP/1.1 server too:
/// `EBBTIDE_TEST_HTTP1=hyper cargo test --test proxy` (scripts/test.sh does, for a few files).
pub fn base_config(extra: &str) -> String {
    let http1 = http1_key();
    format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n{http1}[admin]\naddress = \"127.0.0.1:0\"\n{extra}\n"
    )
}

/// The `[listener] http1` line `EBBTIDE_TEST_HTTP1` asks for (empty: the default engine).
pub fn http1_key() -> String {
    std::env::var("EBBTIDE_TEST_HTTP1")
        .map(|v| format!("http1 = \"{v}\"\n"))
        .unwrap_or_default()
}

/// Whether plain HTTP/1.1 is served by the native lane in these tests (the default, unless
/// `EBBTIDE_TEST_HTTP1` says otherwise).
pub fn on_native_lane() -> bool {
    std::env::var("EBBTIDE_TEST_HTTP1").map_or(true, |v| v == "native")
}

/// A config fragment for static backends.
pub fn backends_toml(addrs: &[SocketAddr], capacity: Option<u32>) -> String {
    let mut s = String::new();
    for a in addrs {
        s.push_str(&format!("[[backends]]\naddress = \"{a}\"\n"));
        if let Some(c) = capacity {
            s.push_str(&format!("capacity = {c}\n"));
        }
    }
    s
}

/// What the test backend counts.
#[derive(Default)]
pub struct BackendStats {
    pub requests: AtomicU64,
    pub in_flight: AtomicU64,
    pub max_in_flight: AtomicU64,
    pub body_bytes: AtomicU64,
    /// `/upload` bodies that ended in an error (the request was aborted, not completed).
    pub body_errors: AtomicU64,
}

/// A scriptable backend on 127.0.0.1:0, served on the test's tokio runtime:
/// - `/echo` (and anything else): JSON of method, path, version and headers;
/// - `/sleep?ms=N`: waits N ms then answers;
/// - `/hang`: never answers;
/// - `/download?bytes=N`: streams N bytes in 64 KiB chunks;
/// - `/upload`: counts the request body and answers with the count;
/// - `/hop`: answers with hop-by-hop headers that a proxy must strip;
/// - `/count?ms=N`: waits N ms, then answers with this backend's request number (so a replayed
///   response is told from a new execution);
/// - `/unavailable`: answers 503.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub stats: Arc<BackendStats>,
    pub name: String,
}

pub async fn test_backend(name: &str) -> TestBackend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(BackendStats::default());
    let st = stats.clone();
    let nm = name.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let st = st.clone();
            let nm = nm.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| backend_handle(req, st.clone(), nm.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    TestBackend {
        addr,
        stats,
        name: name.to_string(),
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

struct InFlight(Arc<BackendStats>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn backend_handle(
    req: Request<Incoming>,
    stats: Arc<BackendStats>,
    name: String,
) -> Result<Response<TestBody>, std::convert::Infallible> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let now = stats.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    stats.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(stats.clone());
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let param = |k: &str| -> Option<u64> {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')?.parse().ok())
    };
    let mut resp = match path.as_str() {
        "/sleep" => {
            tokio::time::sleep(Duration::from_millis(param("ms").unwrap_or(100))).await;
            Response::new(full(name.clone()))
        }
        "/hang" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/download" => {
            let total = param("bytes").unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            Response::new(Download { left: total, chunk }.boxed())
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            n += d.len() as u64;
                        }
                    }
                    Err(_) => {
                        stats.body_errors.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
            }
            stats.body_bytes.fetch_add(n, Ordering::SeqCst);
            Response::new(full(n.to_string()))
        }
        "/count" => {
            let n = stats.requests.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(param("ms").unwrap_or(0))).await;
            let mut r = Response::new(full(format!("{name} execution {n}")));
            *r.status_mut() = StatusCode::CREATED;
            r
        }
        "/unavailable" => {
            let mut r = Response::new(full("busy"));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            r
        }
        "/hop" => {
            let mut r = Response::new(full("hop"));
            let h = r.headers_mut();
            h.insert("connection", "x-internal".parse().unwrap());
            h.insert("x-internal", "secret".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("x-public", "ok".parse().unwrap());
            r
        }
        _ => {
            let headers: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                .collect();
            let v = serde_json::json!({
                "backend": name,
                "method": req.method().as_str(),
                "path": req.uri().path(),
                "version": format!("{:?}", req.version()),
                "headers": headers,
            });
            Response::new(full(v.to_string()))
        }
    };
    resp.headers_mut()
        .insert("x-backend-id", name.parse().unwrap());
    Ok(resp)
}

/// A [`test_backend`] named `name`, and an `ebbtide serve` with it as its only backend.
pub async fn serve_one(name: &str) -> (TestBackend, Ebbtide) {
    let b = test_backend(name).await;
    let lb = start_ebbtide(&base_config(&backends_toml(&[b.addr], None)));
    (b, lb)
}

/// A body of `left` bytes sent in `chunk`-sized frames, generated as it is read.
pub struct Download {
    pub left: u64,
    pub chunk: Bytes,
}

impl hyper::body::Body for Download {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }
    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// A pooled HTTP/1.1 client.
pub fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET and collect the whole body.
pub async fn get(url: &str) -> (StatusCode, http::HeaderMap, Bytes) {
    send(Request::get(url).body(full(Bytes::new())).unwrap()).await
}

pub async fn send(req: Request<TestBody>) -> (StatusCode, http::HeaderMap, Bytes) {
    let resp = client().request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (parts.status, parts.headers, bytes)
}

/// The admin API's typed client, as `ebbtide autoscale` uses it (no token, 5 s per call).
pub fn admin_client() -> AdminClient {
    AdminClient::new(None, Duration::from_secs(5))
}

/// `GET /api/v1/backends` of the balancer at `admin`, typed; empty when it does not answer (yet,
/// or any more). An answer that is not the wire format panics, naming what does not match.
pub async fn admin_backends(admin: SocketAddr) -> Vec<BackendInfo> {
    match admin_client().backends(&admin.to_string()).await {
        Ok(list) => list,
        Err(CallError::Transport(_)) => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

/// One provider's `ebbtide_cold_start_seconds` histogram as `/metrics` shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColdStartMetric {
    pub count: u64,
    pub sum_seconds: f64,
    /// (le, cumulative count), `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
}

impl ColdStartMetric {
    /// Observations of at most `le` seconds (a bound of the histogram).
    pub fn at_most(&self, le: f64) -> u64 {
        self.buckets
            .iter()
            .find(|(b, _)| *b == le)
            .unwrap_or_else(|| panic!("no bucket le={le} in {self:?}"))
            .1
    }
}

/// The cold starts of `provider`'s backends in the `/metrics` of the balancer at `admin`.
pub async fn cold_start_metric(admin: SocketAddr, provider: &str) -> ColdStartMetric {
    let (status, _, body) = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut m = ColdStartMetric::default();
    let label = format!("provider=\"{provider}\"");
    for line in text.lines().filter(|l| l.contains(&label)) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if series.starts_with("ebbtide_cold_start_seconds_count{") {
            m.count = value.parse().unwrap();
        } else if series.starts_with("ebbtide_cold_start_seconds_sum{") {
            m.sum_seconds = value.parse().unwrap();
        } else if series.starts_with("ebbtide_cold_start_seconds_bucket{") {
            let le = series
                .split("le=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            m.buckets.push((le, value.parse().unwrap()));
        }
    }
    m
}

/// `GET /api/v1/signals` of the balancer at `admin`, typed.
pub async fn admin_signals(admin: SocketAddr) -> Signals {
    admin_client()
        .signals(&admin.to_string())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn empty() -> TestBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

pub fn body(b: impl Into<Bytes>) -> TestBody {
    full(b)
}

/// Polls `f` until it returns Some or `limit` passes (for states reached asynchronously, like a
/// backend becoming active); panics with `what` on timeout.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Peak resident memory of a process in KiB (VmHWM).
pub fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The process ids whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The fields after the command name (which may hold spaces) start after the last ')'.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = rest.split(' ').nth(1).unwrap().parse().unwrap();
        if ppid == pid {
            out.push(p);
        }
    }
    out
}

pub fn alive(pid: u32) -> bool {
    // A zombie has exited; only its parent has not reaped it.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'),
        Err(_) => false,
    }
}

/// Sends SIGTERM.
pub fn sigterm(pid: u32) {
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
}

/// Sends SIGHUP.
pub fn sighup(pid: u32) {
    unsafe {
        libc::kill(pid as i32, libc::SIGHUP);
    }
}

/// Whether process `pid` has a handler for SIGHUP (its default action ends the process, so a
/// test must not send it before ebbtide listens for it).
pub fn catches_sighup(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGHUP - 1)) != 0)
}

pub async fn wait_for_sighup_handler(pid: u32) {
    eventually(
        "ebbtide to handle SIGHUP",
        Duration::from_secs(10),
        || async { catches_sighup(pid).then_some(()) },
    )
    .await;
}

/// A backend that reads each request (head and `Content-Length` body), counts it as executed,
/// then resets the connection (RST, no response): what a crash mid-request looks like.
pub async fn reset_backend() -> (SocketAddr, Arc<AtomicU64>) {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let executed = Arc::new(AtomicU64::new(0));
    let count = executed.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                // A zero linger makes the close send RST at once; it does not block (the
                // deprecation is about non-zero lingers).
                #[allow(deprecated)]
                let _ = s.set_linger(Some(Duration::ZERO));
                drop(s);
            });
        }
    });
    (addr, executed)
}

/// A running `ebbtide backend`, killed when dropped.
pub struct SimBackend {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for SimBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ebbtide backend` on a free port with `args` and waits until it answers /healthz.
pub async fn sim_backend(args: &[&str]) -> SimBackend {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(ebbtide_bin())
        .arg("backend")
        .args(["--listen", &addr.to_string()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ebbtide backend");
    let b = SimBackend { child, addr };
    eventually(
        "the backend to be healthy",
        Duration::from_secs(10),
        || async {
            let r = client()
                .request(
                    Request::get(format!("http://{addr}/healthz"))
                        .body(empty())
                        .unwrap(),
                )
                .await
                .ok()?;
            (r.status() == StatusCode::OK).then_some(())
        },
    )
    .await;
    b
}

/// Test certificates, made with rcgen at test time: a CA, and certificates it signs written as
/// PEM files into a directory removed when dropped.
pub mod pki {
    use std::path::{Path, PathBuf};

    pub struct Pki {
        pub dir: PathBuf,
        ca: rcgen::Certificate,
        ca_key: rcgen::KeyPair,
    }

    impl Pki {
        /// A new CA in a fresh directory; its certificate is `ca.pem`.
        pub fn new(name: &str) -> Pki {
            let dir =
                std::env::temp_dir().join(format!("ebbtide-pki-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, format!("ebbtide test CA {name}"));
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::DigitalSignature,
            ];
            let ca = params.self_signed(&ca_key).unwrap();
            std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
            Pki { dir, ca, ca_key }
        }

        pub fn ca(&self) -> PathBuf {
            self.dir.join("ca.pem")
        }

        /// A certificate with common name `cn` for `names` (DNS names or IP addresses) signed by
        /// the CA, as `{stem}.pem` and `{stem}.key`; their paths.
        pub fn issue(&self, stem: &str, cn: &str, names: &[&str]) -> (PathBuf, PathBuf) {
            let key = rcgen::KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut params = rcgen::CertificateParams::new(names).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            params.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
            let (c, k) = (
                self.path(&format!("{stem}.pem")),
                self.path(&format!("{stem}.key")),
            );
            write_replacing(&k, &key.serialize_pem());
            write_replacing(&c, &cert.pem());
            (c, k)
        }

        pub fn path(&self, file: &str) -> PathBuf {
            self.dir.join(file)
        }
    }

    /// Writes `path` whole at once (a temp file renamed over it), as certificate tooling does,
    /// so a reader never sees half a file.
    fn write_replacing(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
/// A running `ebbtide serve` whose log lines are kept; stopped with SIGTERM (then SIGKILL)
/// when dropped.
pub struct Serve {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub logs: Arc<std::sync::Mutex<Vec<String>>>,
    _config: tempfile_path::TempPath,
}

impl Serve {
    pub fn start(config: &str) -> Serve {
        let file = tempfile_path::TempPath::with_contents("toml", config);
        let mut child = Command::new(ebbtide_bin())
            .args(["serve", "--config"])
            .arg(file.path())
            .env("EBBTIDE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ebbtide");
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let keep = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("docker")
                    || line.contains("kube")
                    || line.contains("WARN")
                    || line.contains("ERROR")
                {
                    eprintln!("ebbtide: {line}");
                }
                keep.lock().unwrap().push(line);
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let (addr, admin) = parse_listening(&line)
            .unwrap_or_else(|| panic!("ebbtide did not report its addresses; printed {line:?}"));
        Serve {
            child,
            addr,
            admin,
            logs,
            _config: file,
        }
    }

    /// SIGTERM, and waits for the exit (SIGKILL after `limit`); true when it exited by itself.
    pub fn stop(&mut self, limit: Duration) -> bool {
        if self.child.try_wait().ok().flatten().is_some() {
            return true;
        }
        sigterm(self.child.id());
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// Launch-to-healthy of every backend, from the `boot_ms=` of the providers' log lines.
    pub fn boot_times_ms(&self) -> Vec<u64> {
        self.logs
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(" healthy"))
            .filter_map(|l| {
                l.split("boot_ms=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    pub fn log_has(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(30));
    }
}

pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// The balancer's backends by state.
pub async fn backends(admin: SocketAddr) -> Vec<(String, String)> {
    let (_, _, body) = get(&url(admin, "/api/v1/backends")).await;
    let list: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap_or_default();
    list.iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap_or_default().to_string(),
                b["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

pub async fn active(admin: SocketAddr) -> Vec<String> {
    let mut a: Vec<String> = backends(admin)
        .await
        .into_iter()
        .filter(|(_, s)| s == "active")
        .map(|(a, _)| a)
        .collect();
    a.sort();
    a
}

/// Runs `ebbtide load` against `target` and returns its JSON report.
pub fn load(target: &str, admin: Option<SocketAddr>, profile: &str) -> serde_json::Value {
    let out = tempfile_path::TempPath::with_contents("json", "");
    let mut cmd = Command::new(ebbtide_bin());
    cmd.args(["load", "--target", target, "--profile", profile, "--quiet"])
        .args(["--timeout", "10s", "--json"])
        .arg(out.path());
    if let Some(a) = admin {
        cmd.args(["--admin", &format!("http://{a}")]);
    }
    let status = cmd.status().unwrap();
    assert!(status.success(), "ebbtide load failed: {status}");
    serde_json::from_str(&std::fs::read_to_string(out.path()).unwrap()).unwrap()
}
