//! `ebbtide backend`: a simulated HTTP service, so that the balancer and the autoscaler can be run
//! and tested against backends whose speed, capacity, boot time and failures are known.
//!
//! A request to any path but `/healthz` and `/metrics` is a unit of work: its body is drained
//! (streamed and counted), it waits in a FIFO queue for one of `--workers` slots, holds the slot for
//! a service time drawn from `--service-time` (sleeping, or burning CPU with `--spin`), and is then
//! answered. With `exp:` service and one worker this is an M/M/1 queue. Every answer names the
//! backend (`x-backend-id`) and says how long the request queued (`x-queue-ms`) and was served
//! (`x-service-ms`). `GET /echo` answers with the request as JSON.

mod body;
mod websocket;

pub use body::SimBody;

use crate::timer::PreciseTimer;
use bytes::Bytes;
use ebbtide_config::rng::Rng;
use ebbtide_config::service_time::ServiceTime;
use ebbtide_config::time::parse_duration;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::{BTreeMap, BinaryHeap};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// Exit code of an injected crash, so a supervisor can tell it from a real failure (1).
pub const CRASH_EXIT_CODE: i32 = 3;

/// What the backend looks like from outside while it boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootStyle {
    /// The port is bound but not listening: connections are refused (a VM or container not up).
    Refuse,
    /// The port listens, `/healthz` and every request answer 503 (a process still warming up).
    Unhealthy,
}

/// Options of `ebbtide backend`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
SERVICE TIME SPECS:
  const:10ms                      always 10 ms (a bare 10ms is the same)
  exp:10ms                        exponential, mean 10 ms (one worker: an M/M/1 queue)
  lognormal:10ms,0.5              lognormal, median 10 ms, sigma 0.5
  uniform:5ms,15ms                uniform between 5 and 15 ms
  mix:0.95,const:5ms,const:200ms  95% the first, 5% the second

PATHS:
  /healthz   200 when up; 503 while booting or stopping (not queued)
  /metrics   Prometheus text: requests, in-flight, queue depth, queue/service/sojourn time
  /echo      the request as JSON {method, path, query, headers, body_len, backend}
  any other  the simulated work; query ?size=BYTES sets the response size, ?service=DURATION
             overrides the service time, ?status=CODE forces the status
  With --websocket, a WebSocket handshake (Upgrade: websocket) on any path opens an echo socket.

Prints `listening on ADDR` to stdout as soon as the port is bound (before the boot delay) and
`ready on ADDR` once booted. Every answer carries x-backend-id, x-queue-ms and x-service-ms.")]
pub struct BackendArgs {
    /// Socket address to listen on, e.g. 127.0.0.1:9001; port 0 picks a free port.
    #[arg(long)]
    pub listen: String,

    /// The service-time distribution (see SERVICE TIME SPECS below).
    #[arg(long, default_value = "const:0ms", value_parser = ServiceTime::parse)]
    pub service_time: ServiceTime,

    /// How many requests are served at once; the rest wait in a FIFO queue.
    #[arg(long, default_value_t = 16)]
    pub workers: usize,

    /// Most requests that may wait for a worker; past it requests get 503 at once. Unbounded if unset.
    #[arg(long)]
    pub queue_limit: Option<usize>,

    /// Burn CPU for the service time (thread CPU time) instead of sleeping.
    #[arg(long)]
    pub spin: bool,

    /// Boot delay before serving: `vm` (30s), `container` (1s) or a duration such as 5s.
    #[arg(long, value_parser = ebbtide_config::simulation::parse_boot)]
    pub boot: Option<Duration>,

    /// How booting looks: connections refused, or 503 answers.
    #[arg(long, value_enum, default_value = "refuse")]
    pub boot_style: BootStyle,

    /// Fraction of requests (0..1) answered 500 after their service time.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,

    /// Exit abruptly (code 3) when request N+1 arrives: N requests are served.
    #[arg(long)]
    pub crash_after: Option<u64>,

    /// Exit abruptly (code 3) this long after start, e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    pub crash_after_time: Option<Duration>,

    /// Serve N requests, then accept requests (including /healthz) and never answer them.
    #[arg(long)]
    pub hang_after: Option<u64>,

    /// Stall: hold every answer due in [--stall-at, --stall-at + --stall-for) after start until the
    /// stall ends (a GC pause or a blocked event loop), e.g. --stall-at 2s --stall-for 1s.
    #[arg(long, value_parser = parse_duration, requires = "stall_for")]
    pub stall_at: Option<Duration>,

    /// How long the stall of --stall-at lasts.
    #[arg(long, value_parser = parse_duration, requires = "stall_at")]
    pub stall_for: Option<Duration>,

    /// Slow drip: send the response body in `--drip-bytes` chunks with this pause between them.
    #[arg(long, value_parser = parse_duration)]
    pub drip: Option<Duration>,

    /// Chunk size of a dripped body.
    #[arg(long, default_value_t = 1024)]
    pub drip_bytes: usize,

    /// Response body size in bytes (streamed filler); default: a short `ok` line.
    #[arg(long)]
    pub response_size: Option<u64>,

    /// Name in the x-backend-id header and metrics; default: the bound address.
    #[arg(long)]
    pub id: Option<String>,

    /// Seed of the service-time and error draws, for reproducible runs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Longest wait for in-flight requests after SIGTERM or ctrl-c.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Accept WebSocket upgrades (`Upgrade: websocket`, any path) and echo every message back.
    #[arg(long)]
    pub websocket: bool,

    /// Serve HTTPS with this PEM certificate chain (with --tls-key), offering h2 and http/1.1
    /// by ALPN: a TLS target for `ebbtide load` and benchmarks without a proxy in between.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// The TLS acceptor of `--tls-cert` and `--tls-key`; errors name the file.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("--tls-cert {}: no PEM certificate", cert.display()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves one connection (HTTP/1.1 or h2, plain or TLS) to its end, or, once `shutdown` is
/// set, finishes the requests in flight and closes it.
async fn serve_connection<S>(state: Arc<State>, stream: S, shutdown: &mut watch::Receiver<bool>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = async { let _ = shutdown.wait_for(|&s| s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Shared state of one backend: counters for `/metrics` and the knobs every request reads.
struct State {
    id: String,
    args: BackendArgs,
    started: Instant,
    workers: Semaphore,
    timer: PreciseTimer,
    service_rng: Mutex<Rng>,
    error_rng: Mutex<Rng>,
    booting: AtomicBool,
    draining: AtomicBool,
    hung: AtomicBool,
    /// Service requests seen (not /healthz or /metrics), numbering them for crash/hang.
    arrivals: AtomicU64,
    waiting: AtomicUsize,
    in_service: AtomicUsize,
    rejected: AtomicU64,
    request_body_bytes: AtomicU64,
    response_codes: Mutex<BTreeMap<u16, u64>>,
    queue_ns: AtomicU64,
    service_ns: AtomicU64,
    sojourn_ns: AtomicU64,
    served: AtomicU64,
    /// Sleep mode: when each worker is next free (a min-heap with one entry per worker).
    free_at: Mutex<BinaryHeap<std::cmp::Reverse<Instant>>>,
    /// WebSockets open now (`--websocket`).
    websockets: Arc<AtomicU64>,
}

/// Runs the backend until SIGTERM or ctrl-c.
pub async fn run(args: BackendArgs) -> Result<(), String> {
    if !(0.0..=1.0).contains(&args.error_rate) {
        return Err(format!(
            "--error-rate must be in [0, 1], got {}",
            args.error_rate
        ));
    }
    if args.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(cert, key)?),
        _ => None,
    };
    let addr: SocketAddr = args
        .listen
        .parse()
        .map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {e}"))?;
    socket
        .set_reuseaddr(true)
        .map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(addr)
        .map_err(|e| format!("cannot bind {addr}: {e}"))?;
    let bound = socket.local_addr().map_err(|e| format!("socket: {e}"))?;
    let boot = args.boot.unwrap_or(Duration::ZERO);
    let mut rng = Rng::new(args.seed);
    let state = Arc::new(State {
        id: args.id.clone().unwrap_or_else(|| bound.to_string()),
        started: Instant::now(),
        workers: Semaphore::new(args.workers),
        timer: PreciseTimer::start(),
        service_rng: Mutex::new(rng.fork()),
        error_rng: Mutex::new(rng.fork()),
        booting: AtomicBool::new(!boot.is_zero()),
        draining: AtomicBool::new(false),
        hung: AtomicBool::new(false),
        arrivals: AtomicU64::new(0),
        waiting: AtomicUsize::new(0),
        in_service: AtomicUsize::new(0),
        rejected: AtomicU64::new(0),
        request_body_bytes: AtomicU64::new(0),
        response_codes: Mutex::new(BTreeMap::new()),
        queue_ns: AtomicU64::new(0),
        service_ns: AtomicU64::new(0),
        sojourn_ns: AtomicU64::new(0),
        served: AtomicU64::new(0),
        free_at: Mutex::new(
            (0..args.workers)
                .map(|_| std::cmp::Reverse(Instant::now()))
                .collect(),
        ),
        websockets: Arc::new(AtomicU64::new(0)),
        args,
    });
    if !boot.is_zero() && state.args.boot_style == BootStyle::Refuse {
        // Tell the address at once; with --boot-style refuse the port refuses until `ready on`.
        say(&format!("listening on {bound}"));
    }
    tracing::info!(
        id = %state.id, service_time = %state.args.service_time, workers = state.args.workers,
        boot = ?boot, "backend starting"
    );

    if let Some(after) = state.args.crash_after_time {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            eprintln!("ebbtide backend: crashing after {after:?} (injected)");
            std::process::exit(CRASH_EXIT_CODE);
        });
    }

    let mut stop = Box::pin(stop_signal());
    let listener = match state.args.boot_style {
        BootStyle::Refuse => {
            // Bound but not listening: the kernel refuses connections until we listen.
            tokio::select! {
                _ = tokio::time::sleep(boot) => {}
                _ = &mut stop => return Ok(()),
            }
            state.booting.store(false, Ordering::SeqCst);
            socket.listen(1024).map_err(|e| format!("listen: {e}"))?
        }
        BootStyle::Unhealthy if boot.is_zero() => {
            socket.listen(1024).map_err(|e| format!("listen: {e}"))?
        }
        BootStyle::Unhealthy => {
            let listener = socket.listen(1024).map_err(|e| format!("listen: {e}"))?;
            // Only now: a client that read this line must find the port accepting (answering
            // 503 until booted), not refusing.
            say(&format!("listening on {bound}"));
            let s = state.clone();
            tokio::spawn(async move {
                tokio::time::sleep(boot).await;
                s.booting.store(false, Ordering::SeqCst);
                say(&format!("ready on {bound}"));
            });
            listener
        }
    };
    if boot.is_zero() {
        say(&format!("listening on {bound}"));
    }
    if boot.is_zero() || state.args.boot_style == BootStyle::Refuse {
        say(&format!("ready on {bound}"));
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let open_connections = Arc::new(AtomicUsize::new(0));
    let all_closed = Arc::new(tokio::sync::Notify::new());
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let mut shutdown = shutdown_rx.clone();
        let open = open_connections.clone();
        let closed = all_closed.clone();
        open.fetch_add(1, Ordering::SeqCst);
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(state, stream, &mut shutdown).await,
                // A failed handshake only closes that connection.
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        serve_connection(state, stream, &mut shutdown).await;
                    }
                }
            }
            if open.fetch_sub(1, Ordering::SeqCst) == 1 {
                closed.notify_waiters();
            }
        });
    }
    drop(listener);
    state.draining.store(true, Ordering::SeqCst);
    let _ = shutdown_tx.send(true);
    let drained = async {
        while open_connections.load(Ordering::SeqCst) > 0 {
            let notified = all_closed.notified();
            if open_connections.load(Ordering::SeqCst) == 0 {
                break;
            }
            // Re-check now and then: a notify can race with the count.
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    };
    if tokio::time::timeout(state.args.drain_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            open = open_connections.load(Ordering::SeqCst),
            "drain timeout: exiting with requests in flight"
        );
    }
    tracing::info!(id = %state.id, "backend stopped");
    Ok(())
}

/// Prints a line to stdout and flushes it, for a parent process reading our address.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Completes on SIGTERM or ctrl-c.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<SimBody>, Infallible> {
    if state.hung.load(Ordering::SeqCst) {
        return std::future::pending().await;
    }
    if state.args.websocket && websocket::is_upgrade(&req) {
        return Ok(websocket::accept(&state.id, req, state.websockets.clone()));
    }
    match req.uri().path() {
        "/healthz" => {
            let (status, text) = if state.booting.load(Ordering::SeqCst) {
                (StatusCode::SERVICE_UNAVAILABLE, "booting\n")
            } else if state.draining.load(Ordering::SeqCst) {
                (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else {
                (StatusCode::OK, "ok\n")
            };
            Ok(plain(&state, status, text))
        }
        "/metrics" => {
            let mut resp = plain(&state, StatusCode::OK, "");
            *resp.body_mut() = SimBody::bytes(render_metrics(&state));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Ok(resp)
        }
        _ => Ok(serve(state, req).await),
    }
}

/// A small text answer that names the backend.
fn plain(state: &State, status: StatusCode, text: &'static str) -> Response<SimBody> {
    let mut resp = Response::new(SimBody::bytes(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&state.id) {
        resp.headers_mut().insert("x-backend-id", v);
    }
    resp
}

/// Per-request overrides read from the query string.
#[derive(Default)]
struct Query {
    size: Option<u64>,
    service: Option<Duration>,
    status: Option<StatusCode>,
}

fn parse_query(q: Option<&str>) -> Query {
    let mut out = Query::default();
    for pair in q.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "size" => out.size = v.parse().ok(),
            "service" => out.service = parse_duration(v).ok(),
            "status" => out.status = v.parse().ok().and_then(|c| StatusCode::from_u16(c).ok()),
            _ => {}
        }
    }
    out
}

/// The simulated work: drain the body, queue for a worker, serve, answer.
async fn serve(state: Arc<State>, req: Request<Incoming>) -> Response<SimBody> {
    let number = state.arrivals.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(n) = state.args.crash_after {
        if number > n {
            eprintln!("ebbtide backend: crashing after {n} requests (injected)");
            std::process::exit(CRASH_EXIT_CODE);
        }
    }
    if let Some(n) = state.args.hang_after {
        if number > n {
            if !state.hung.swap(true, Ordering::SeqCst) {
                eprintln!("ebbtide backend: hanging after {n} requests (injected)");
            }
            return std::future::pending().await;
        }
    }
    if state.booting.load(Ordering::SeqCst) {
        return finish(
            &state,
            plain(&state, StatusCode::SERVICE_UNAVAILABLE, "booting\n"),
        );
    }

    let (parts, mut body) = req.into_parts();
    let mut body_len: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    body_len += d.len() as u64;
                }
            }
            Err(_) => {
                return finish(&state, plain(&state, StatusCode::BAD_REQUEST, "bad body\n"));
            }
        }
    }
    state
        .request_body_bytes
        .fetch_add(body_len, Ordering::Relaxed);

    let query = parse_query(parts.uri.query());
    let queued_at = Instant::now();
    let served = if state.args.spin {
        serve_spinning(&state, query.service).await
    } else {
        serve_sleeping(&state, query.service, queued_at).await
    };
    let Some(start) = served else {
        state.rejected.fetch_add(1, Ordering::Relaxed);
        let mut resp = plain(&state, StatusCode::SERVICE_UNAVAILABLE, "queue full\n");
        resp.headers_mut()
            .insert("x-rejected", HeaderValue::from_static("queue-full"));
        return finish(&state, resp);
    };
    if let (Some(at), Some(len)) = (state.args.stall_at, state.args.stall_for) {
        let (from, to) = (state.started + at, state.started + at + len);
        let now = Instant::now();
        if now >= from && now < to {
            state.timer.sleep_until(to).await;
        }
    }
    let done = Instant::now();
    let queue = start.saturating_duration_since(queued_at);
    let served_for = done.saturating_duration_since(start);

    let fail = state.args.error_rate > 0.0
        && state.error_rng.lock().expect("rng lock").next_f64() < state.args.error_rate;
    let status = if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        query.status.unwrap_or(StatusCode::OK)
    };
    let body = if parts.uri.path() == "/echo" {
        SimBody::bytes(echo_json(&state, &parts, body_len))
    } else if fail {
        SimBody::bytes(Bytes::from_static(b"injected error\n"))
    } else {
        match query.size.or(state.args.response_size) {
            Some(size) => SimBody::filler(size),
            None => SimBody::bytes(Bytes::from_static(b"ok\n")),
        }
    };
    let body = match state.args.drip {
        Some(pause) => body.drip(state.args.drip_bytes, pause),
        None => body,
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&state.id) {
        h.insert("x-backend-id", v);
    }
    let ms = |d: Duration| HeaderValue::from_str(&format!("{:.3}", d.as_secs_f64() * 1e3));
    if let Ok(v) = ms(queue) {
        h.insert("x-queue-ms", v);
    }
    if let Ok(v) = ms(served_for) {
        h.insert("x-service-ms", v);
    }
    h.insert("x-request-number", HeaderValue::from(number));
    if parts.uri.path() == "/echo" {
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    state
        .queue_ns
        .fetch_add(queue.as_nanos() as u64, Ordering::Relaxed);
    state
        .service_ns
        .fetch_add(served_for.as_nanos() as u64, Ordering::Relaxed);
    state
        .sojourn_ns
        .fetch_add((done - queued_at).as_nanos() as u64, Ordering::Relaxed);
    state.served.fetch_add(1, Ordering::Relaxed);
    finish(&state, resp)
}

/// Draws the next service time, unless the request set its own.
fn service_time(state: &State, given: Option<Duration>) -> Duration {
    given.unwrap_or_else(|| {
        let mut rng = state.service_rng.lock().expect("rng lock");
        state.args.service_time.sample(&mut rng)
    })
}

/// Sleep mode: the FIFO queue and its workers are kept as a schedule of when each worker is next
/// free, and a request sleeps until its computed start and then until its computed finish. The
/// next request's start is the previous one's *scheduled* finish, not the moment its task happened
/// to wake, so wake-up delays (tens of microseconds) never add to the queue: the backend is an
/// exact real-time FIFO queue with `workers` servers. Returns the service start, or None when the
/// request would have to wait and the queue is full.
async fn serve_sleeping(
    state: &State,
    given: Option<Duration>,
    queued_at: Instant,
) -> Option<Instant> {
    let (start, end, waiting) = {
        let mut free_at = state.free_at.lock().expect("schedule lock");
        let now = Instant::now();
        let earliest = free_at.peek().map(|e| e.0).unwrap_or(now);
        let start = earliest.max(queued_at);
        let waits = start > now;
        if waits {
            if let Some(limit) = state.args.queue_limit {
                if state.waiting.load(Ordering::SeqCst) >= limit {
                    return None;
                }
            }
        }
        // Counted under the schedule lock, so the queue limit holds under concurrency.
        let waiting = waits.then(|| Counted::new(&state.waiting));
        let end = start + service_time(state, given);
        free_at.pop();
        free_at.push(std::cmp::Reverse(end));
        (start, end, waiting)
    };
    // The slot stays booked if the client leaves (a real server does the work it accepted),
    // but the gauges follow the request: the guards put them back when its task is dropped.
    if let Some(waiting) = waiting {
        state.timer.sleep_until(start).await;
        drop(waiting);
    }
    let _serving = Counted::new(&state.in_service);
    state.timer.sleep_until(end).await;
    Some(start)
}

/// One unit of a gauge, held for as long as the guard lives (dropped with a cancelled request).
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(gauge: &'a AtomicUsize) -> Self {
        gauge.fetch_add(1, Ordering::SeqCst);
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Spin mode: a worker is a semaphore permit held while this thread burns the service time in
/// CPU, so contention for cores stretches the work as it would in a real service. Returns the
/// service start, or None when the request would have to wait and the queue is full.
async fn serve_spinning(state: &State, given: Option<Duration>) -> Option<Instant> {
    let permit = match state.workers.try_acquire() {
        Ok(p) => p,
        Err(_) => {
            if let Some(limit) = state.args.queue_limit {
                if state.waiting.load(Ordering::SeqCst) >= limit {
                    return None;
                }
            }
            let _waiting = Counted::new(&state.waiting);
            state.workers.acquire().await.expect("never closed")
        }
    };
    let start = Instant::now();
    let service = service_time(state, given);
    let serving = Counted::new(&state.in_service);
    let _ = tokio::task::spawn_blocking(move || spin_cpu(service)).await;
    drop(serving);
    drop(permit);
    Some(start)
}

/// Counts the answer by status code and hands it back.
fn finish(state: &State, resp: Response<SimBody>) -> Response<SimBody> {
    *state
        .response_codes
        .lock()
        .expect("codes lock")
        .entry(resp.status().as_u16())
        .or_default() += 1;
    resp
}

/// The request as JSON, for proxy tests: what arrived, with which headers.
fn echo_json(state: &State, parts: &http::request::Parts, body_len: u64) -> Vec<u8> {
    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::String(s)) => {
                s.push_str(", ");
                s.push_str(&v);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), serde_json::Value::String(v));
            }
        }
    }
    let json = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_len": body_len,
        "backend": state.id,
    });
    let mut out = serde_json::to_vec_pretty(&json).expect("json");
    out.push(b'\n');
    out
}

/// Burns `cpu` of this thread's CPU time: the work takes longer in wall time when cores are busy.
fn spin_cpu(cpu: Duration) {
    let start = thread_cpu_time();
    let wall = Instant::now();
    loop {
        for _ in 0..256 {
            std::hint::spin_loop();
        }
        match (start, thread_cpu_time()) {
            (Some(a), Some(b)) if b.saturating_sub(a) >= cpu => return,
            (None, _) | (_, None) if wall.elapsed() >= cpu => return,
            _ => {}
        }
    }
}

#[cfg(unix)]
fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Option<Duration> {
    None
}

fn render_metrics(state: &State) -> String {
    let mut out = String::new();
    let id = state.id.replace('\\', "\\\\").replace('"', "\\\"");
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let l = |extra: &str| format!("{{backend=\"{id}\"{extra}}}");
    let codes: Vec<(String, String)> = state
        .response_codes
        .lock()
        .expect("codes lock")
        .iter()
        .map(|(code, n)| (l(&format!(",code=\"{code}\"")), n.to_string()))
        .collect();
    metric(
        "ebbtide_backend_requests_total",
        "counter",
        "Requests answered, by status code.",
        &codes,
    );
    let gauge = |v: usize| vec![(l(""), v.to_string())];
    metric(
        "ebbtide_backend_in_flight",
        "gauge",
        "Requests holding a worker now.",
        &gauge(state.in_service.load(Ordering::SeqCst)),
    );
    metric(
        "ebbtide_backend_websockets_open",
        "gauge",
        "WebSockets open now (--websocket).",
        &gauge(state.websockets.load(Ordering::SeqCst) as usize),
    );
    metric(
        "ebbtide_backend_queue_depth",
        "gauge",
        "Requests waiting for a worker now.",
        &gauge(state.waiting.load(Ordering::SeqCst)),
    );
    metric(
        "ebbtide_backend_workers",
        "gauge",
        "Requests served at once.",
        &gauge(state.args.workers),
    );
    metric(
        "ebbtide_backend_booting",
        "gauge",
        "1 while the boot delay runs.",
        &gauge(state.booting.load(Ordering::SeqCst) as usize),
    );
    metric(
        "ebbtide_backend_rejected_total",
        "counter",
        "Requests answered 503 because the queue was full.",
        &[(l(""), state.rejected.load(Ordering::Relaxed).to_string())],
    );
    metric(
        "ebbtide_backend_request_body_bytes_total",
        "counter",
        "Request body bytes received.",
        &[(
            l(""),
            state.request_body_bytes.load(Ordering::Relaxed).to_string(),
        )],
    );
    let served = state.served.load(Ordering::Relaxed);
    for (name, help, ns) in [
        (
            "ebbtide_backend_queue_seconds",
            "Time served requests waited for a worker.",
            &state.queue_ns,
        ),
        (
            "ebbtide_backend_service_seconds",
            "Time served requests held a worker.",
            &state.service_ns,
        ),
        (
            "ebbtide_backend_sojourn_seconds",
            "Queue plus service time of served requests.",
            &state.sojourn_ns,
        ),
    ] {
        let sum = ns.load(Ordering::Relaxed) as f64 / 1e9;
        metric(
            name,
            "summary",
            help,
            &[
                (format!("_sum{}", l("")), format!("{sum}")),
                (format!("_count{}", l("")), served.to_string()),
            ],
        );
    }
    metric(
        "ebbtide_backend_uptime_seconds",
        "gauge",
        "Seconds since the process started.",
        &[(
            l(""),
            format!("{:.3}", state.started.elapsed().as_secs_f64()),
        )],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_overrides() {
        let q = parse_query(Some("size=100&service=5ms&status=503&x=1"));
        assert_eq!(q.size, Some(100));
        assert_eq!(q.service, Some(Duration::from_millis(5)));
        assert_eq!(q.status, Some(StatusCode::SERVICE_UNAVAILABLE));
    }

    #[test]
    fn spin_burns_at_least_the_cpu_asked() {
        let t = thread_cpu_time().unwrap();
        spin_cpu(Duration::from_millis(5));
        assert!(thread_cpu_time().unwrap() - t >= Duration::from_millis(5));
    }
}
