//! Faults under steady load, end to end, on 127.0.0.1, with the real `ebbtide serve`.
//!
//! Backend faults (real `ebbtide backend` processes killed with SIGKILL or stopped with SIGSTOP;
//! in-process backends switched to answering only 503 or to closing connections without a
//! response; a backend removed by scale-in), under every policy: no idempotent request fails,
//! since each try that fails is retried on a backend the request has not been sent to yet, and
//! the retry budget holds. Each run prints one row of the fault table (fault, policy, sent,
//! failed, retried); run with `--nocapture` to see it.
//!
//! Client faults (aborted, reset, malformed and slow uploads) cost the backends nothing.

mod common;

use common::*;
use ebbtide_config::PolicyKind;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Concurrent client loops.
const CLIENTS: usize = 8;
/// Load before the fault, and after it.
const BEFORE: Duration = Duration::from_millis(800);
const AFTER: Duration = Duration::from_millis(1500);
/// Most requests one run sends, whatever the machine's speed.
const MAX_REQUESTS: u64 = 20_000;

/// What one run measured.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    failed: u64,
    retried: u64,
    failures: Vec<String>,
}

/// `ebbtide_retries_total` from the admin API.
async fn retries_total(admin: SocketAddr) -> u64 {
    let (_, _, body) = get(&format!("http://{admin}/metrics")).await;
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .find_map(|l| l.strip_prefix("ebbtide_retries_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

/// Steady GET load through `lb` from [`CLIENTS`] loops until `stop`; the paths vary so that a
/// hash policy spreads them over the fleet.
fn load(
    lb: SocketAddr,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..CLIENTS)
        .map(|c| {
            let stop = stop.clone();
            let sent = sent.clone();
            tokio::spawn(async move {
                let client = client();
                let mut failures = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed)
                    && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
                {
                    i += 1;
                    let path = format!("/k{}", (i * CLIENTS as u64 + c as u64) % 64);
                    let req = Request::get(format!("http://{lb}{path}"))
                        .body(empty())
                        .unwrap();
                    match client.request(req).await {
                        Ok(resp) => {
                            let status = resp.status();
                            let body = resp.into_body().collect().await;
                            if status != StatusCode::OK || body.is_err() {
                                failures.push(format!("{path}: {status} {:?}", body.err()));
                            }
                        }
                        Err(e) => failures.push(format!("{path}: {e}")),
                    }
                }
                failures
            })
        })
        .collect()
}

/// A backend fault, injected into one of three backends under steady load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// `kill -9` of an `ebbtide backend` process.
    Kill9,
    /// `SIGSTOP`: the process hangs, its sockets still accept.
    Stop,
    /// Every answer is 503 from then on.
    Only503,
    /// Every request from then on gets its connection closed without a response.
    Reset,
    /// Removed by scale-in: `DELETE /api/v1/backends/{id}` (drain, then remove).
    ScaleIn,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill -9",
            Fault::Stop => "SIGSTOP",
            Fault::Only503 => "503 only",
            Fault::Reset => "reset",
            Fault::ScaleIn => "scale-in",
        }
    }
}

/// How an in-process backend answers.
const NORMAL: u8 = 0;
const UNAVAILABLE: u8 = 1;
const RESET: u8 = 2;

/// An in-process HTTP/1.1 backend whose behaviour can be switched: 200 after 2 ms, 503, or the
/// connection closed without a response.
async fn switchable_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicU8>) {
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mode = Arc::new(std::sync::atomic::AtomicU8::new(NORMAL));
    let m = mode.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let m = m.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let m = m.clone();
                    async move {
                        match m.load(Ordering::SeqCst) {
                            UNAVAILABLE => Ok(http::Response::builder()
                                .status(503)
                                .body(http_body_util::Full::new(bytes::Bytes::from("busy")))
                                .unwrap()),
                            RESET => Err("reset"),
                            _ => {
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                Ok(http::Response::new(http_body_util::Full::new(
                                    bytes::Bytes::from("ok"),
                                )))
                            }
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, mode)
}

/// Runs one heavy test at a time: the fault runs measure retries under steady load, and two at
/// once on two shared cores would measure each other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three backends behind `policy`; steady load; `fault` injected into one; more load.
async fn fault_under_load(fault: Fault, policy: PolicyKind) -> Tally {
    let mut procs = Vec::new();
    let mut modes = Vec::new();
    let addrs: Vec<SocketAddr> = if matches!(fault, Fault::Only503 | Fault::Reset) {
        let mut v = Vec::new();
        for _ in 0..3 {
            let (a, m) = switchable_backend().await;
            v.push(a);
            modes.push(m);
        }
        v
    } else {
        for _ in 0..3 {
            procs.push(sim_backend(&["--service-time", "const:2ms", "--workers", "64"]).await);
        }
        procs.iter().map(|b| b.addr).collect()
    };
    // central_queue needs capacities; the others run on the adaptive limit, as by default.
    let capacity = (policy == PolicyKind::CentralQueue).then_some(32);
    // A hung backend is given up on after 500 ms (the default is 30 s); a backend that answers
    // only 503 is ejected like one that fails (count_5xx), or every third request would need a
    // retry for ever, past any retry budget.
    let config = base_config(&format!(
        "[balancer]\npolicy = \"{}\"\n[retries]\nper_try_timeout = \"500ms\"\n[outlier]\ncount_5xx = {}\n{}",
        policy.name(),
        fault == Fault::Only503,
        backends_toml(&addrs, capacity)
    ));
    let lb = start_ebbtide(&config);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let started = std::time::Instant::now();
    let tasks = load(lb.addr, stop.clone(), sent.clone());
    tokio::time::sleep(BEFORE).await;
    // The first backend, which the first requests' keys and ties favour.
    match fault {
        Fault::Kill9 => {
            let victim = &mut procs[0];
            victim.child.kill().unwrap();
            victim.child.wait().unwrap();
        }
        Fault::Stop => unsafe {
            libc::kill(procs[0].child.id() as i32, libc::SIGSTOP);
        },
        Fault::Only503 => modes[0].store(UNAVAILABLE, Ordering::SeqCst),
        Fault::Reset => modes[0].store(RESET, Ordering::SeqCst),
        Fault::ScaleIn => {
            let (_, _, body) = get(&format!("http://{}/api/v1/backends", lb.admin)).await;
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let id = v
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["address"] == addrs[0].to_string())
                .unwrap()["id"]
                .as_u64()
                .unwrap();
            let req = Request::delete(format!("http://{}/api/v1/backends/{id}", lb.admin))
                .body(empty())
                .unwrap();
            let (status, _, _) = send(req).await;
            assert!(status.is_success(), "DELETE: {status}");
        }
    }
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    let secs = started.elapsed().as_secs_f64();
    if fault == Fault::Stop {
        unsafe {
            libc::kill(procs[0].child.id() as i32, libc::SIGCONT);
        }
    }
    let sent = sent.load(Ordering::Relaxed).min(MAX_REQUESTS);
    let retried = retries_total(lb.admin).await;
    // The retry budget: 20% of requests plus 10 a second (the defaults).
    let budget = (0.2 * sent as f64 + 10.0 * secs.ceil()) as u64;
    assert!(
        retried <= budget,
        "{} {}: {retried} retries past the budget of {budget}",
        fault.name(),
        policy.name()
    );
    Tally {
        sent,
        failed: failures.len() as u64,
        retried,
        failures,
    }
}

/// `fault` under every policy: no idempotent request fails; prints the fault table's rows.
async fn no_failures_under_any_policy(fault: Fault) {
    let _one_at_a_time = SERIAL.lock().await;
    let mut bad = Vec::new();
    for policy in PolicyKind::ALL {
        let t = fault_under_load(fault, policy).await;
        println!(
            "| {:<9} | {:<20} | {:>6} | {:>3} | {:>4} |",
            fault.name(),
            policy.name(),
            t.sent,
            t.failed,
            t.retried
        );
        assert!(
            t.sent > 200,
            "{}: too little load to mean anything",
            policy.name()
        );
        if t.failed > 0 {
            bad.push(format!(
                "{} {}: {} of {} failed, e.g. {:?}",
                fault.name(),
                policy.name(),
                t.failed,
                t.sent,
                &t.failures[..t.failures.len().min(3)]
            ));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_backend_fails_no_idempotent_request_under_any_policy() {
    no_failures_under_any_policy(Fault::Kill9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backend_fails_no_idempotent_request_under_any_policy() {
    no_failures_under_any_policy(Fault::Stop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_answering_only_503_fails_no_idempotent_request_under_any_policy() {
    no_failures_under_any_policy(Fault::Only503).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_resetting_connections_fails_no_idempotent_request_under_any_policy() {
    no_failures_under_any_policy(Fault::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_under_load_fails_no_request_under_any_policy() {
    no_failures_under_any_policy(Fault::ScaleIn).await;
}

// ---------------------------------------------------------------------------------------------
// Client faults are not backend faults.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// [`base_config`] with `listener` added to the `[listener]` section.
fn listener_config(listener: &str, extra: &str) -> String {
    format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n{listener}\n[admin]\naddress = \"127.0.0.1:0\"\n{extra}\n"
    )
}

/// (state, failures, learnt_limit) of every backend, by address.
async fn backend_health(admin: SocketAddr) -> Vec<(String, String, u64, Option<u64>)> {
    let (_, _, body) = get(&format!("http://{admin}/api/v1/backends")).await;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
                b["failures"].as_u64().unwrap(),
                b["learnt_limit"].as_u64(),
            )
        })
        .collect()
}

/// What a raw client got: the status of the first response line, or `None` when the
/// connection closed without one. Waits at most `limit`.
async fn read_status(s: &mut TcpStream, limit: Duration) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = async {
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.windows(2).any(|w| w == b"\r\n") {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(limit, read).await;
    let line = String::from_utf8_lossy(&buf);
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// How a hostile upload ends.
#[derive(Debug, Clone, Copy)]
enum Abort {
    /// Closes the connection mid-body.
    Close,
    /// Resets it (RST) mid-body.
    Reset,
    /// Sends the chunk size `G`.
    BadChunk,
}

/// One hostile upload to `lb`; returns the status it got, if any.
async fn hostile_upload(lb: SocketAddr, method: &str, chunked: bool, abort: Abort) -> Option<u16> {
    let mut s = TcpStream::connect(lb).await.unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        // Larger than [listener] request_buffer, so the body streams to a backend.
        "Content-Length: 1000000".to_string()
    };
    let head = format!("{method} /upload HTTP/1.1\r\nHost: lb.test\r\n{framing}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let part: &[u8] = if chunked {
        b"10\r\n0123456789abcdef\r\n"
    } else {
        &[b'x'; 4096]
    };
    s.write_all(part).await.unwrap();
    // Let the request reach a backend and the first bytes go through.
    tokio::time::sleep(Duration::from_millis(100)).await;
    match abort {
        Abort::Close => {
            drop(s);
            None
        }
        Abort::Reset => {
            #[allow(deprecated)]
            s.set_linger(Some(Duration::ZERO)).unwrap();
            drop(s);
            None
        }
        Abort::BadChunk => {
            s.write_all(b"G\r\nzzz\r\n").await.unwrap();
            read_status(&mut s, Duration::from_secs(5)).await
        }
    }
}

/// Twelve requests that stop mid-body and close, reset, or send an invalid chunk size leave
/// every backend active, with its failure count and learnt limit unchanged; the invalid chunk
/// gets 400 (the client's fault), not 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_reset_and_malformed_uploads_cost_the_backends_nothing() {
    let _one_at_a_time = SERIAL.lock().await;
    let b1 = test_backend("b1").await;
    let b2 = test_backend("b2").await;
    let lb = start_ebbtide(&base_config(&format!(
        "[balancer]\npolicy = \"round_robin\"\n{}",
        backends_toml(&[b1.addr, b2.addr], None)
    )));
    for _ in 0..4 {
        assert_eq!(get(&format!("http://{}/", lb.addr)).await.0, StatusCode::OK);
    }
    let before = backend_health(lb.admin).await;
    let mut bad_chunk_statuses = Vec::new();
    let mut n = 0;
    for abort in [Abort::Close, Abort::Reset, Abort::BadChunk] {
        for (method, chunked) in [
            ("POST", false),
            ("POST", true),
            ("PUT", true),
            ("PUT", false),
        ] {
            if matches!(abort, Abort::BadChunk) && !chunked {
                // A Content-Length body has no chunk sizes: close it instead.
                hostile_upload(lb.addr, method, false, Abort::Close).await;
            } else {
                let status = hostile_upload(lb.addr, method, chunked, abort).await;
                if matches!(abort, Abort::BadChunk) {
                    bad_chunk_statuses.push(status);
                }
            }
            n += 1;
        }
    }
    assert_eq!(n, 12);
    // Let ebbtide see every abort (the backends' in-flight counts fall back to 0).
    eventually(
        "the aborted requests to end",
        Duration::from_secs(10),
        || async {
            (b1.stats.in_flight.load(Ordering::SeqCst) == 0
                && b2.stats.in_flight.load(Ordering::SeqCst) == 0)
                .then_some(())
        },
    )
    .await;
    // Normal requests still go through.
    for _ in 0..4 {
        assert_eq!(get(&format!("http://{}/", lb.addr)).await.0, StatusCode::OK);
    }
    let after = backend_health(lb.admin).await;
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(a.1, "active", "{a:?} (before: {b:?})");
        assert_eq!(a.2, b.2, "failure count changed: {a:?} (before: {b:?})");
        assert_eq!(a.3, b.3, "learnt limit changed: {a:?} (before: {b:?})");
    }
    assert!(
        bad_chunk_statuses.iter().all(|s| *s == Some(400)),
        "an invalid chunk size is the client's fault: {bad_chunk_statuses:?}"
    );
}

/// 300 clients uploading a small body a byte a second (half of them chunked), for up to 10 s: normal requests are
/// still answered (the bodies are read before a backend slot is taken, so no backend waits on
/// them, and the limiter never sees their time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_leave_normal_requests_answered() {
    let _one_at_a_time = SERIAL.lock().await;
    const SLOW: usize = 300;
    let b1 = test_backend("b1").await;
    let b2 = test_backend("b2").await;
    // Every client here is 127.0.0.1: no per-client connection limit.
    let lb = start_ebbtide(&listener_config(
        "max_connections_per_client = 0",
        &format!(
            "[balancer]\npolicy = \"p2c\"\n{}",
            backends_toml(&[b1.addr, b2.addr], None)
        ),
    ));
    let probe_url = format!("http://{}/sleep?ms=5", lb.addr);
    // The usual latency, before.
    let mut usual = Duration::ZERO;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        assert_eq!(get(&probe_url).await.0, StatusCode::OK);
        usual = usual.max(t.elapsed());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut slow = Vec::new();
    for i in 0..SLOW {
        let stop = stop.clone();
        let lb = lb.addr;
        // Half with a Content-Length, half chunked.
        let chunked = i % 2 == 1;
        slow.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(lb).await else {
                return;
            };
            let head = if chunked {
                "POST /upload HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\n\r\n"
            } else {
                "POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 100\r\n\r\n"
            };
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let drip: &[u8] = if chunked { b"1\r\nx\r\n" } else { b"x" };
            for _ in 0..10 {
                if stop.load(Ordering::Relaxed) || s.write_all(drip).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }
    // Probes while the uploads crawl.
    let mut answered = 0;
    let mut worst = Duration::ZERO;
    let probes = 20;
    for _ in 0..probes {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = std::time::Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(5), get(&probe_url)).await;
        if matches!(r, Ok((StatusCode::OK, _, _))) {
            answered += 1;
            worst = worst.max(t.elapsed());
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in slow {
        let _ = t.await;
    }
    println!(
        "slow uploads: {SLOW} clients; probes answered {answered}/{probes}; worst probe {worst:?} (usual {usual:?})"
    );
    assert_eq!(answered, probes, "normal requests must be answered");
    let backend_requests =
        b1.stats.requests.load(Ordering::SeqCst) + b2.stats.requests.load(Ordering::SeqCst);
    assert!(
        backend_requests <= 5 + probes as u64,
        "no incomplete slow upload reached a backend ({backend_requests} requests)"
    );
}

/// Streamed bodies (`request_buffer = 0`): one that stalls gets 408 at `body_read_timeout`; one
/// that crawls but keeps within the limits reaches the backend whole. Neither counts against
/// the backend: failures, state and learnt limit unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_slow_streamed_bodies_are_the_clients_time() {
    let _one_at_a_time = SERIAL.lock().await;
    let b1 = test_backend("b1").await;
    let lb = start_ebbtide(&listener_config(
        "request_buffer = 0\nbody_read_timeout = \"1s\"\nmin_body_rate = 0",
        &backends_toml(&[b1.addr], None),
    ));
    assert_eq!(get(&format!("http://{}/", lb.addr)).await.0, StatusCode::OK);
    let before = backend_health(lb.admin).await;
    let upload = |stall: bool| async move {
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(b"PUT /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 6\r\n\r\nab")
            .await
            .unwrap();
        if !stall {
            for part in [b"cd", b"ef"] {
                tokio::time::sleep(Duration::from_millis(600)).await;
                s.write_all(part).await.unwrap();
            }
        }
        let status = read_status(&mut s, Duration::from_secs(5)).await;
        (status, s)
    };
    let (stalled, slow) = tokio::join!(upload(true), upload(false));
    assert_eq!(stalled.0, Some(408), "a stalled body times out");
    assert_eq!(
        slow.0,
        Some(200),
        "a slow body within the limits goes through"
    );
    let after = backend_health(lb.admin).await;
    assert_eq!(after[0].1, "active");
    assert_eq!(after[0].2, before[0].2, "failures: {after:?} vs {before:?}");
    assert_eq!(after[0].3, before[0].3, "limit: {after:?} vs {before:?}");
}

/// A chunked body longer than `request_buffer` is read ahead up to the buffer, then streamed
/// with the rest: the backend gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_longer_than_the_buffer_reach_the_backend_whole() {
    let b1 = test_backend("b1").await;
    let lb = start_ebbtide(&listener_config(
        "request_buffer = 65536",
        &backends_toml(&[b1.addr], None),
    ));
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let chunk = vec![b'x'; 50_000];
    for _ in 0..5 {
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(&chunk).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("250000"), "{text}");
    assert_eq!(b1.stats.body_bytes.load(Ordering::SeqCst), 250_000);
}
