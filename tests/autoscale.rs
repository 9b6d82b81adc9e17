//! End-to-end tests of the autoscaler inside `ebbtide serve`: real backend processes started by
//! the local provider, real load from `ebbtide load`, on 127.0.0.1.

mod common;

use common::*;
use ebbtide_balancer::api::BackendState;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

/// The tests here load the 2-core machine hard; they take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// A config with the local provider starting `ebbtide backend` (exp 20 ms, 4 workers, container
/// boot) and the given `[autoscaler]` lines.
fn scaling_config(autoscaler: &str) -> String {
    base_config(&format!(
        r#"[health]
path = "/healthz"
interval = "500ms"
[provider]
kind = "local"
command = ["ebbtide", "backend", "--listen", "127.0.0.1:{{port}}", "--service-time", "exp:20ms", "--workers", "4", "--boot", "container"]
capacity = 4
[autoscaler]
{autoscaler}
"#
    ))
}

async fn active_backends(admin: SocketAddr) -> usize {
    admin_backends(admin)
        .await
        .iter()
        .filter(|b| b.state == BackendState::Active)
        .count()
}

/// Runs `ebbtide load` against `lb` and returns its JSON report.
fn load(lb: &Ebbtide, profile: &str, extra: &[&str]) -> serde_json::Value {
    load_at(lb.addr, lb.admin, profile, extra)
}

/// [`load`] by addresses, for running on a blocking thread while the test's tasks go on.
fn load_at(
    addr: SocketAddr,
    admin: SocketAddr,
    profile: &str,
    extra: &[&str],
) -> serde_json::Value {
    let out = tempfile_path::TempPath::with_contents("json", "");
    let status = Command::new(ebbtide_bin())
        .args([
            "load",
            "--target",
            &url(addr, "/"),
            "--profile",
            profile,
            "--quiet",
        ])
        .args(["--admin", &format!("http://{admin}"), "--json"])
        .arg(out.path())
        .args(extra)
        .status()
        .unwrap();
    assert!(status.success(), "ebbtide load failed: {status}");
    serde_json::from_str(&std::fs::read_to_string(out.path()).unwrap()).unwrap()
}

#[tokio::test]
async fn scales_out_under_a_step_and_back_in_without_failing_requests() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Two backends serve 2 x 4 workers x 50/s = 400 req/s. The load steps from half of that to
    // three times it (1200/s: 6 backends would be fully busy, 8 run at 75%), then drops. Short windows and per-second billing keep the test short.
    let lb = start_ebbtide(&scaling_config(
        "decider = \"concurrency\"\nmin = 2\nmax = 8\ntarget = 4\nstable_window = \"10s\"\npanic_window = \"3s\"\nmetric_window = \"3s\"\nslo_p99 = \"200ms\"\n[autoscaler.cost]\nbilling_period = \"0s\"",
    ));
    eventually("the minimum fleet", Duration::from_secs(20), || async {
        (active_backends(lb.admin).await == 2).then_some(())
    })
    .await;
    let report = load(&lb, "steps:200@10s,1200@25s,100@20s", &[]);
    let series = report["series"].as_array().unwrap();
    let backends_at = |s: usize| {
        series
            .get(s)
            .and_then(|x| x["backends"].as_u64())
            .unwrap_or(0)
    };
    let step = 10;
    let scaled_out_after = (step..series.len())
        .find(|&s| backends_at(s) >= 5)
        .map(|s| s - step)
        .unwrap_or_else(|| {
            let fleet: Vec<u64> = (0..series.len()).map(backends_at).collect();
            panic!("never scaled out to 5 or more backends; backends per second: {fleet:?}")
        });
    let p99_back_after = (step + 1..step + 25)
        .find(|&s| (s..s + 3).all(|t| series[t]["p99_ms"].as_f64().is_some_and(|p| p <= 200.0)))
        .map(|s| s - step)
        .expect("p99 never came back under the SLO during the step");
    let errors = report["errors"].as_u64().unwrap();
    eprintln!(
        "step: scaled out after {scaled_out_after}s, p99 under 200 ms after {p99_back_after}s, sent {}, errors {errors}",
        report["sent"]
    );
    assert!(
        scaled_out_after <= 12,
        "took {scaled_out_after}s to reach 5 backends"
    );
    assert!(
        p99_back_after <= 20,
        "p99 took {p99_back_after}s to come back under the SLO"
    );
    assert_eq!(errors, 0, "requests failed while the fleet changed");
    // Cold start, decision to first request served: every backend that served has one, none
    // shorter than the 1 s container boot; those launched under the load (at least the 3 of
    // the scale-out) were sent requests as soon as they were healthy.
    let cold = cold_start_metric(lb.admin, "local").await;
    let listed: Vec<f64> = admin_backends(lb.admin)
        .await
        .iter()
        .filter_map(|b| b.cold_start_seconds)
        .collect();
    eprintln!(
        "step: cold starts {} (sum {:.2} s, mean {:.2} s), buckets {:?}; listed now {listed:?}",
        cold.count,
        cold.sum_seconds,
        cold.sum_seconds / cold.count.max(1) as f64,
        cold.buckets
    );
    assert!(cold.count >= 5, "{cold:?}");
    assert_eq!(cold.at_most(0.5), 0, "faster than the boot: {cold:?}");
    assert!(cold.sum_seconds >= cold.count as f64, "{cold:?}");
    assert!(cold.at_most(10.0) >= 3, "{cold:?}");
    assert!(listed.iter().all(|&s| s >= 1.0), "{listed:?}");
    // After the load, back to the minimum.
    let waited = Instant::now();
    eventually(
        "scale-in to the minimum",
        Duration::from_secs(40),
        || async { (active_backends(lb.admin).await == 2).then_some(()) },
    )
    .await;
    eprintln!(
        "step: back to 2 backends {:?} after the load ended",
        waited.elapsed()
    );
    let (_, _, events) = get(&url(lb.admin, "/api/v1/events")).await;
    let events: Vec<serde_json::Value> = serde_json::from_slice(&events).unwrap();
    assert!(events.iter().any(|e| e["direction"] == "up"), "{events:?}");
    assert!(
        events.iter().any(|e| e["direction"] == "down"),
        "{events:?}"
    );
}

#[tokio::test]
async fn the_budget_caps_the_fleet_and_overload_is_shed() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // A budget of 3 backends; demand far beyond it; overload = shed.
    let lb = start_ebbtide(&scaling_config(
        "min = 1\nmax = 10\nstable_window = \"6s\"\npanic_window = \"2s\"\nmetric_window = \"2s\"\noverload = \"shed\"\n[autoscaler.cost]\nbackend_per_hour = 1.0\nbudget_per_hour = 3.0\nbilling_period = \"0s\"",
    ));
    let report = load(&lb, "steps:3000@12s", &["--timeout", "5s"]);
    let most = report["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["backends"].as_u64())
        .max()
        .unwrap();
    let (_, _, metrics) = get(&url(lb.admin, "/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let shed: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("ebbtide_shed_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    eprintln!(
        "budget: at most {most} backends, {shed} requests shed, {} sent",
        report["sent"]
    );
    assert!(
        most <= 3,
        "the fleet reached {most} backends with a budget for 3"
    );
    assert!(most >= 2, "it did scale out within the budget");
    assert!(shed > 0.0, "overload = shed answers 503 beyond the fleet");
    assert!(
        metrics.contains("ebbtide_autoscaler_desired_backends 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn no_backend_outlives_ebbtide_on_sigterm_or_sigkill() {
    let _turn = ONE_AT_A_TIME.lock().await;
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let cfg = base_config(
            "[provider]\nkind = \"local\"\ncommand = [\"ebbtide\", \"backend\", \"--listen\", \"127.0.0.1:{port}\"]\ncount = 3",
        );
        let mut lb = start_ebbtide(&cfg);
        let pid = lb.child.id();
        let kids = eventually("three backends", Duration::from_secs(20), || async {
            let k = children_of(pid);
            (k.len() == 3 && active_backends(lb.admin).await == 3).then_some(k)
        })
        .await;
        unsafe {
            libc::kill(pid as i32, signal);
        }
        let status = lb.child.wait().unwrap();
        if signal == libc::SIGTERM {
            assert!(status.success(), "SIGTERM: exit {status}");
        }
        eventually(
            "every backend to be gone",
            Duration::from_secs(15),
            || async { kids.iter().all(|&k| !alive(k)).then_some(()) },
        )
        .await;
    }
}

/// The decisions that changed the fleet (holds left out), oldest first, each as its direction
/// and a one-line account (time, from -> to, reason, inputs) for the test's output.
async fn changes(admin: SocketAddr) -> Vec<(String, String)> {
    let (_, _, events) = get(&url(admin, "/api/v1/events")).await;
    let mut events: Vec<serde_json::Value> = serde_json::from_slice(&events).unwrap();
    events.sort_by_key(|e| e["at"].as_u64().unwrap_or(0));
    events
        .iter()
        .filter(|e| e["direction"] != "hold")
        .map(|e| {
            let account = format!(
                "{:.1}s {}->{} {} {}",
                e["at"].as_u64().unwrap_or(0) as f64 / 1e9,
                e["from"],
                e["to"],
                e["decision"]["reason"],
                e["decision"]["inputs"]
            );
            (e["direction"].as_str().unwrap_or("?").to_string(), account)
        })
        .collect()
}

#[tokio::test]
async fn a_5x_spike_panics_out_fast_and_a_short_blip_does_not_oscillate() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // 160 req/s is 40% of the two minimum backends; the spike is 5x that for 5 s, far shorter
    // than the 20 s stable window.
    let lb = start_ebbtide(&scaling_config(
        "decider = \"concurrency\"\nmin = 2\nmax = 10\ntarget = 4\nstable_window = \"20s\"\npanic_window = \"3s\"\nmetric_window = \"3s\"\n[autoscaler.cost]\nbilling_period = \"0s\"",
    ));
    eventually("the minimum fleet", Duration::from_secs(20), || async {
        (active_backends(lb.admin).await == 2).then_some(())
    })
    .await;
    let report = load(&lb, "steps:160@8s,800@5s,160@20s", &[]);
    let series = report["series"].as_array().unwrap();
    let spike = 8;
    let out_after = (spike..series.len())
        .find(|&s| series[s]["backends"].as_u64().unwrap_or(0) > 2)
        .map(|s| s - spike)
        .expect("the spike never scaled out");
    let decisions = changes(lb.admin).await;
    let dirs: Vec<&str> = decisions.iter().map(|(d, _)| d.as_str()).collect();
    let changes = dirs.windows(2).filter(|w| w[0] != w[1]).count();
    eprintln!("spike: active backends grew {out_after}s after the spike; decisions {dirs:?}");
    for (_, account) in &decisions {
        eprintln!("  {account}");
    }
    // Panic window 3 s + a container boot of about 1 s + one-second sampling.
    assert!(out_after <= 6, "scaled out {out_after}s after the spike");
    assert_eq!(dirs.first().copied(), Some("up"));
    assert!(
        changes <= 1,
        "the fleet went up and down more than once: {dirs:?}"
    );
    assert_eq!(report["errors"], 0);
}

#[tokio::test]
async fn a_backend_is_kept_until_near_the_end_of_its_paid_period() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let lb = start_ebbtide(&scaling_config(
        "decider = \"concurrency\"\nmin = 1\nmax = 6\ntarget = 4\nstable_window = \"6s\"\npanic_window = \"2s\"\nmetric_window = \"2s\"\ninterval = \"500ms\"\n[autoscaler.cost]\nbilling_period = \"30s\"\nrelease_margin = \"3s\"",
    ));
    // Watch every backend: when it is first seen, and when it is first seen draining or gone
    // (an idle backend drains in milliseconds, so "gone" is what the poll usually sees).
    let admin = lb.admin;
    let watcher = tokio::spawn(async move {
        let start = Instant::now();
        let mut seen: std::collections::HashMap<String, (f64, Option<f64>)> = Default::default();
        while start.elapsed() < Duration::from_secs(60) {
            let t = start.elapsed().as_secs_f64();
            let present: Vec<(String, bool)> = admin_backends(admin)
                .await
                .into_iter()
                .map(|b| (b.address, b.state == BackendState::Draining))
                .collect();
            for (addr, draining) in &present {
                let e = seen.entry(addr.clone()).or_insert((t, None));
                if *draining && e.1.is_none() {
                    e.1 = Some(t);
                }
            }
            for (addr, e) in seen.iter_mut() {
                if e.1.is_none() && !present.iter().any(|(a, _)| a == addr) {
                    e.1 = Some(t);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        seen
    });
    // On a blocking thread: the watcher must keep polling while the load runs.
    let (addr, admin) = (lb.addr, lb.admin);
    tokio::task::spawn_blocking(move || load_at(addr, admin, "steps:600@8s,20@4s", &[]))
        .await
        .unwrap();
    let seen = watcher.await.unwrap();
    let lives: Vec<f64> = seen
        .values()
        .filter_map(|&(first, gone)| gone.map(|g| g - first))
        .collect();
    eprintln!(
        "billing: {} backends seen; lifetimes of those removed: {lives:?} s",
        seen.len()
    );
    assert!(seen.len() >= 3, "the load scaled out");
    assert!(!lives.is_empty(), "scale-in happened within the test");
    for life in &lives {
        // Paid for 30 s; released only within the last 3 s of that. A backend is first seen up
        // to 0.2 s after launch, so a lifetime seen here is at most 0.2 s short.
        assert!(
            *life >= 26.5,
            "a backend was removed after {life:.1}s, inside its paid 30 s"
        );
    }
}
