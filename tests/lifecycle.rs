//! End-to-end tests of the backend lifecycle: a backend killed under load, draining, resets,
//! at-most-once with `Idempotency-Key`, and the retry budget. Real processes on 127.0.0.1.

mod common;

use common::*;
use ebbtide_balancer::api::BackendState;
use http::{Request, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

async fn backend_states(admin: SocketAddr) -> Vec<(String, BackendState)> {
    admin_backends(admin)
        .await
        .into_iter()
        .map(|b| (b.address, b.state))
        .collect()
}

async fn metric(admin: SocketAddr, line_prefix: &str) -> f64 {
    let (_, _, body) = get(&url(admin, "/metrics")).await;
    let text = String::from_utf8_lossy(&body).into_owned();
    text.lines()
        .find_map(|l| {
            l.strip_prefix(line_prefix)
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no `{line_prefix}` in\n{text}"))
}

#[tokio::test]
async fn kill_9_of_one_backend_under_load_fails_no_request() {
    let mut bs = Vec::new();
    for _ in 0..3 {
        bs.push(sim_backend(&["--service-time", "const:2ms", "--workers", "64"]).await);
    }
    let addrs: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let cfg = base_config(&format!(
        "[balancer]\npolicy = \"round_robin\"\n[health]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\nfall = 2\n{}",
        backends_toml(&addrs, None)
    ));
    let lb = start_ebbtide(&cfg);
    eventually("all three active", Duration::from_secs(10), || async {
        (backend_states(lb.admin)
            .await
            .iter()
            .filter(|(_, s)| *s == BackendState::Active)
            .count()
            == 3)
            .then_some(())
    })
    .await;

    // Steady GET load: 8 clients in closed loops for 6 s (bounded in time and count).
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop_at = Instant::now() + Duration::from_secs(6);
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (sent, failed, addr) = (sent.clone(), failed.clone(), lb.addr);
        clients.push(tokio::spawn(async move {
            let c = client();
            let mut n = 0;
            while Instant::now() < stop_at && n < 20_000 {
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                let ok = match c
                    .request(Request::get(url(addr, "/")).body(empty()).unwrap())
                    .await
                {
                    Ok(r) => {
                        r.status() == StatusCode::OK
                            && http_body_util::BodyExt::collect(r.into_body())
                                .await
                                .is_ok()
                    }
                    Err(_) => false,
                };
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = bs.remove(1);
    let victim_addr = victim.addr.to_string();
    let killed_at = Instant::now();
    unsafe {
        libc::kill(victim.child.id() as i32, libc::SIGKILL);
    }
    let ejected_after = eventually(
        "the killed backend to be ejected",
        Duration::from_secs(5),
        || async {
            backend_states(lb.admin)
                .await
                .iter()
                .any(|(a, s)| *a == victim_addr && *s == BackendState::Ejected)
                .then(|| killed_at.elapsed())
        },
    )
    .await;
    for c in clients {
        c.await.unwrap();
    }
    drop(victim);
    let sent = sent.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    let retries = metric(lb.admin, "ebbtide_retries_total ").await;
    eprintln!(
        "kill -9: sent {sent}, failed {failed}, retries {retries}, ejected after {ejected_after:?}"
    );
    assert!(sent > 1000, "too little load to mean anything: {sent}");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    // Health checks every 200 ms with fall = 2 (plus passive detection): well within 2 s.
    assert!(
        ejected_after < Duration::from_secs(2),
        "ejected after {ejected_after:?}"
    );
}

#[tokio::test]
async fn draining_lets_slow_requests_finish_and_sends_no_new_ones() {
    let a = test_backend("a").await;
    let b = test_backend("b").await;
    let cfg = base_config(&format!(
        "[balancer]\npolicy = \"round_robin\"\n{}",
        backends_toml(&[a.addr, b.addr], None)
    ));
    let lb = start_ebbtide(&cfg);
    let addr = lb.addr;
    let slow: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { get(&url(addr, "/sleep?ms=1500")).await.0 }))
        .collect();
    eventually("slow requests on a", Duration::from_secs(5), || async {
        (a.stats.in_flight.load(Ordering::SeqCst) == 3).then_some(())
    })
    .await;
    let id = admin_backends(lb.admin)
        .await
        .iter()
        .find(|b| b.address == a.addr.to_string())
        .unwrap()
        .id;
    let (status, _, _) = send(
        Request::delete(url(lb.admin, &format!("/api/v1/backends/{id}")))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let a_before = a.stats.requests.load(Ordering::SeqCst);
    for _ in 0..20 {
        assert_eq!(get(&url(addr, "/")).await.0, StatusCode::OK);
    }
    assert_eq!(
        a.stats.requests.load(Ordering::SeqCst),
        a_before,
        "a got a request after DELETE"
    );
    assert!(backend_states(lb.admin)
        .await
        .iter()
        .any(|(ad, s)| *ad == a.addr.to_string() && *s == BackendState::Draining));
    for t in slow {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    eventually(
        "a to disappear once idle",
        Duration::from_secs(5),
        || async {
            (!backend_states(lb.admin)
                .await
                .iter()
                .any(|(ad, _)| *ad == a.addr.to_string()))
            .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_post_whose_backend_resets_gets_502_and_runs_once() {
    let (addr, executed) = reset_backend().await;
    let lb = start_ebbtide(&base_config(&backends_toml(&[addr], None)));
    let (status, _, body) = send(
        Request::post(url(lb.addr, "/orders"))
            .header("content-type", "application/json")
            .body(body(r#"{"item": 1}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body:?}");
    assert_eq!(
        executed.load(Ordering::SeqCst),
        1,
        "a POST must not be retried once sent"
    );
    // A GET (idempotent) to the same backend is retried up to max_attempts (3).
    let (status, _, _) = get(&url(lb.addr, "/items")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(executed.load(Ordering::SeqCst), 1 + 3);
}

#[tokio::test]
async fn an_idempotency_key_executes_once_and_every_copy_gets_the_same_answer() {
    let (b, lb) = serve_one("pay").await;
    let post = |addr: SocketAddr| async move {
        send(
            Request::post(url(addr, "/count?ms=300"))
                .header("idempotency-key", "order-42")
                .body(body("amount=10"))
                .unwrap(),
        )
        .await
    };
    let (first, second) = tokio::join!(post(lb.addr), post(lb.addr));
    let third = post(lb.addr).await;
    assert_eq!(b.stats.requests.load(Ordering::SeqCst), 1, "executed once");
    for r in [&second, &third] {
        assert_eq!(r.0, first.0);
        assert_eq!(r.2, first.2);
        assert_eq!(r.1["x-backend-id"], first.1["x-backend-id"]);
    }
    assert_eq!(first.0, StatusCode::CREATED);
    assert_eq!(first.2, "pay execution 1");
    // The same key for another request is refused.
    let (status, _, _) = send(
        Request::post(url(lb.addr, "/other"))
            .header("idempotency-key", "order-42")
            .body(body("x"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        metric(lb.admin, "ebbtide_idempotent_replays_total ").await,
        2.0
    );
}

#[tokio::test]
async fn retries_against_an_all_503_fleet_stay_within_the_budget() {
    let bs = [test_backend("a").await, test_backend("b").await];
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let cfg = base_config(&format!(
        "[retries]\nmax_attempts = 3\nbudget_ratio = 0.2\nmin_per_second = 10\n{}",
        backends_toml(&addrs, None)
    ));
    let lb = start_ebbtide(&cfg);
    let start = Instant::now();
    let n = 2000u64;
    for _ in 0..n {
        let status = get(&url(lb.addr, "/unavailable")).await.0;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let reached: u64 = bs
        .iter()
        .map(|b| b.stats.requests.load(Ordering::SeqCst))
        .sum();
    let retries = reached - n;
    let counted = metric(lb.admin, "ebbtide_retries_total ").await as u64;
    // The budget: 20% of requests plus 10 per second of elapsed time, plus what a fresh budget
    // starts with (the floor times its 10 s window = 100). Without a budget there would be two
    // retries per request (max_attempts = 3).
    let allowed = 0.2 * n as f64 + 10.0 * elapsed + 100.0;
    eprintln!(
        "all-503: {n} requests, {retries} retries ({:.3} per request) in {elapsed:.2}s (budget {allowed:.0})",
        retries as f64 / n as f64
    );
    assert_eq!(
        retries, counted,
        "the backends and ebbtide count the same retries"
    );
    assert!(retries > 0, "503s of idempotent requests are retried");
    assert!(
        (retries as f64) <= allowed,
        "{retries} retries > budget {allowed}"
    );
    assert!(
        retries < n / 2,
        "the budget, not max_attempts, bounded the retries"
    );
}
