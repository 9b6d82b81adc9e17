//! Backend faults under steady load, end to end: real `ebbtide backend` processes behind the
//! real `ebbtide serve`, on 127.0.0.1. Under every policy, a backend killed with SIGKILL mid-load
//! costs no idempotent request: each try that fails on it is retried on a backend the request
//! has not been sent to yet.
//!
//! Each run prints one row of the fault table (fault, policy, sent, failed, retried); run with
//! `--nocapture` to see it.

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

/// Three backends behind `policy`; steady load; `kill -9` of one; more load.
async fn kill_one_under_load(policy: PolicyKind) -> Tally {
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(sim_backend(&["--service-time", "const:2ms", "--workers", "64"]).await);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    // central_queue needs capacities; the others run on the adaptive limit, as by default.
    let capacity = (policy == PolicyKind::CentralQueue).then_some(32);
    let config = base_config(&format!(
        "[balancer]\npolicy = \"{}\"\n{}",
        policy.name(),
        backends_toml(&addrs, capacity)
    ));
    let lb = start_ebbtide(&config);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let tasks = load(lb.addr, stop.clone(), sent.clone());
    tokio::time::sleep(BEFORE).await;
    // The first backend, which the first requests' keys and ties favour: SIGKILL, no goodbye.
    let mut victim = backends.remove(0);
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    tokio::time::sleep(AFTER).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    let sent = sent.load(Ordering::Relaxed).min(MAX_REQUESTS);
    Tally {
        sent,
        failed: failures.len() as u64,
        retried: retries_total(lb.admin).await,
        failures,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_backend_fails_no_idempotent_request_under_any_policy() {
    let mut bad = Vec::new();
    for policy in PolicyKind::ALL {
        let t = kill_one_under_load(policy).await;
        println!(
            "fault=kill-9 policy={:<20} sent={:>6} failed={:>3} retried={:>4}",
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
                "{}: {} of {} failed, e.g. {:?}",
                policy.name(),
                t.failed,
                t.sent,
                &t.failures[..t.failures.len().min(3)]
            ));
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
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

/// 300 clients uploading a small body a byte a second, for up to 10 s: normal requests are
/// still answered (the bodies are read before a backend slot is taken, so no backend waits on
/// them, and the limiter never sees their time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_uploads_leave_normal_requests_answered() {
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
    for _ in 0..SLOW {
        let stop = stop.clone();
        let lb = lb.addr;
        slow.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(lb).await else {
                return;
            };
            let head = "POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 100\r\n\r\n";
            if s.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            for _ in 0..10 {
                if stop.load(Ordering::Relaxed) || s.write_all(b"x").await.is_err() {
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
