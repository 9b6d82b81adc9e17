//! Slow start end to end: `ebbtide serve` with two static `ebbtide backend` processes (present at
//! startup: no ramp) and a third registered through the admin API under steady load. Its share
//! of the requests, counted by the balancer per backend (`requests` in `/api/v1/backends`), is
//! well below a fair third early in its ramp and about a third once the ramp is over.
//!
//! The windows are bounded by the ramp the balancer reports (`ramp` in the same JSON as the
//! counts), not by the test's wall clock, so a slow or busy machine stretches the windows but
//! cannot move them along the ramp.

mod common;

use common::*;
use ebbtide_balancer::api::{BackendInfo, Register};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Requests answered by the backend at `address`, and the total over all three, and the new
/// backend's ramp, from one listing.
fn counts(list: &[BackendInfo], address: &str) -> (u64, u64, f64) {
    let total = list.iter().map(|b| b.requests).sum();
    let new = list.iter().find(|b| b.address == address);
    (
        new.map_or(0, |b| b.requests),
        total,
        new.map_or(0.0, |b| b.ramp),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registered_backend_gets_a_growing_share_over_its_ramp() {
    let args = ["--service-time", "const:2ms", "--workers", "32"];
    let a = sim_backend(&args).await;
    let b = sim_backend(&args).await;
    let c = sim_backend(&args).await;
    let lb = start_ebbtide(&base_config(&format!(
        "[balancer]\npolicy = \"round_robin\"\nslow_start = \"12s\"\n{}",
        backends_toml(&[a.addr, b.addr], None)
    )));
    let admin = lb.admin;
    let static_ramps: Vec<f64> = admin_backends(admin).await.iter().map(|b| b.ramp).collect();
    assert_eq!(static_ramps, [1.0, 1.0], "static backends do not ramp");

    // Steady closed-loop load: 6 clients, bounded in count and time.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (stop, failed, url) = (stop.clone(), failed.clone(), format!("http://{}/", lb.addr));
        clients.push(tokio::spawn(async move {
            let http = client();
            for _ in 0..200_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let req = http::Request::get(&url).body(empty()).unwrap();
                match http.request(req).await {
                    Ok(r) if r.status().is_success() => {
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let new_addr = c.addr.to_string();
    eventually(
        "load through the balancer",
        Duration::from_secs(10),
        || async {
            let (_, total, _) = counts(&admin_backends(admin).await, &new_addr);
            (total > 100).then_some(())
        },
    )
    .await;

    admin_client()
        .register(
            &admin.to_string(),
            &Register {
                address: new_addr.clone(),
                capacity: None,
                weight: 1,
                lease_seconds: None,
                cost_per_hour: 0.0,
                protocol: None,
                server_name: None,
                launched: None,
            },
        )
        .await
        .expect("register the third backend");

    // Share in each stretch between two listings, with the ramp at the end of the stretch.
    let mut points: Vec<(f64, f64)> = Vec::new();
    let mut last = counts(&admin_backends(admin).await, &new_addr);
    let first = last;
    let mut early: Option<(u64, u64)> = None;
    let mut full_at: Option<(u64, u64)> = None;
    let late = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = counts(&admin_backends(admin).await, &new_addr);
        assert!(
            Instant::now() < deadline,
            "the ramp did not end in time: {points:?}"
        );
        let (dn, dt) = (now.0 - last.0, now.1 - last.1);
        if dt > 0 {
            points.push((now.2, dn as f64 / dt as f64));
        }
        last = now;
        if early.is_none() && now.2 >= 0.3 {
            // Early window: from registration until the ramp reads 0.3 (at most).
            early = Some((now.0 - first.0, now.1 - first.1));
        }
        match full_at {
            None if now.2 >= 1.0 => full_at = Some((now.0, now.1)),
            // Late window: after the ramp, until 1,500 more requests.
            Some((n0, t0)) if now.1 - t0 >= 1_500 => break (now.0 - n0, now.1 - t0),
            _ => {}
        }
    };
    stop.store(true, Ordering::Relaxed);
    for t in clients {
        t.await.unwrap();
    }
    eprintln!("(ramp, share of the new backend) every 500 ms: {points:.3?}");
    let (early_new, early_total) = early.expect("an early window");
    let early_share = early_new as f64 / early_total as f64;
    let late_share = late.0 as f64 / late.1 as f64;
    eprintln!(
        "early: {early_new}/{early_total} = {early_share:.3}; late: {}/{} = {late_share:.3}",
        late.0, late.1
    );
    assert!(
        early_total >= 200,
        "too little load in the early window: {early_total}"
    );
    // Round robin at ramp f gives f / (2 + f): 0.05 to 0.13 up to f = 0.3; fair is 1/3.
    assert!(early_share < 0.2, "early share {early_share}, fair 0.333");
    assert!(
        (late_share - 1.0 / 3.0).abs() < 0.07,
        "late share {late_share}"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests failed");
    drop((lb, a, b, c));
}
