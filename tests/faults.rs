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
