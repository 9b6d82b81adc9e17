//! Live vs simulated: one scenario file (bench/scenarios/live-step.toml), a 60-second step, run
//! live (`ebbtide serve` starting real `ebbtide backend` processes, `ebbtide load` offering the
//! same arrivals) and through `ebbtide simulate`. The two must agree on the scale-out decisions,
//! within one backend and a few seconds, and on the median latency within 20%.
//!
//! What is compared, on the decisions of the autoscaler (`/api/v1/events` live, `--events` of
//! the simulator: the same format), with times taken from the start of the arrivals:
//! - the time of the first scale-out after the step: within [`MAX_TIME_DIFF_S`];
//! - the largest fleet decided during the arrivals (the peak `to`): within one backend;
//!
//! and, on the two reports (`ebbtide load --json` and `ebbtide simulate --json`, one format):
//! - p50 over the whole run, within 20% of the simulated one. The whole run, because both
//!   reports cover exactly the same arrivals (same profile, same seed, so the same arrival
//!   times), and the part where the fleet is too small is where the two models could differ.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Heavy live tests take turns (as in tests/autoscale.rs); tests in other binaries run after.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How far apart the first scale-out after the step may be, live and simulated, in seconds.
const MAX_TIME_DIFF_S: f64 = 3.0;
/// How far apart the peak fleet sizes may be, in backends.
const MAX_FLEET_DIFF: i64 = 1;
/// How far the live p50 may be from the simulated one, as a share of the simulated one.
const MAX_P50_DIFF: f64 = 0.20;

fn scenario_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/scenarios/live-step.toml")
}

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

async fn active_backends(admin: SocketAddr) -> usize {
    admin_backends(admin)
        .await
        .iter()
        .filter(|b| b.state == ebbtide_balancer::api::BackendState::Active)
        .count()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The decisions that changed the fleet, oldest first, as (seconds since the arrivals began,
/// from, to). `origin_s` is where the arrivals began on the decisions' clock.
fn changes(events: &serde_json::Value, origin_s: f64) -> Vec<(f64, u64, u64)> {
    let mut out: Vec<(f64, u64, u64)> = events
        .as_array()
        .expect("events are a list")
        .iter()
        .filter(|e| e["direction"] != "hold")
        .map(|e| {
            (
                e["at"].as_u64().unwrap() as f64 / 1e9 - origin_s,
                e["from"].as_u64().unwrap(),
                e["to"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// What is compared of one run.
#[derive(Debug)]
struct Figures {
    /// Seconds from the step to the first scale-out decided after it.
    first_out_after_step_s: f64,
    /// The fleet that decision asked for.
    first_out_to: u64,
    /// The largest fleet decided while the arrivals lasted.
    peak: u64,
    /// Whole-run p50, ms.
    p50_ms: f64,
    /// Active backends at each second (the reports' series), for the log.
    active: Vec<u64>,
}

fn figures(
    changes: &[(f64, u64, u64)],
    report: &serde_json::Value,
    min: u64,
    step_s: f64,
    duration_s: f64,
) -> Figures {
    let (t, _, to) = *changes
        .iter()
        .find(|c| c.0 > step_s && c.2 > c.1)
        .unwrap_or_else(|| panic!("no scale-out after the step at {step_s}s: {changes:?}"));
    let peak = changes
        .iter()
        .filter(|c| c.0 <= duration_s)
        .map(|c| c.2)
        .chain([min])
        .max()
        .unwrap();
    Figures {
        first_out_after_step_s: t - step_s,
        first_out_to: to,
        peak,
        p50_ms: report["latency_ms"]["p50"].as_f64().unwrap(),
        active: report["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["backends"].as_u64().unwrap_or(0))
            .collect(),
    }
}

#[tokio::test]
async fn a_live_step_and_its_simulation_agree_on_scale_out_and_p50() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let path = scenario_path();
    let cfg = ebbtide_config::Config::from_file(&path).expect("the scenario loads");
    let sim = cfg.simulation.clone().expect("a [simulation] section");
    let auto = cfg.autoscaler.clone().expect("an [autoscaler] section");
    let profile = sim.profile.clone();
    // steps:...: the step is at the start of the last phase; the arrivals end with it.
    let phases: Vec<f64> = profile
        .strip_prefix("steps:")
        .expect("a steps profile")
        .split(',')
        .map(|p| {
            let d = p.split('@').nth(1).expect("R@T");
            ebbtide_config::time::parse_duration(d)
                .unwrap()
                .as_secs_f64()
        })
        .collect();
    let duration_s: f64 = phases.iter().sum();
    let step_s = duration_s - phases.last().expect("a phase");
    let min = u64::from(auto.min);

    // Simulated: milliseconds.
    let sim_json = tempfile_path::TempPath::with_contents("json", "");
    let sim_events = tempfile_path::TempPath::with_contents("json", "");
    let status = Command::new(ebbtide_bin())
        .args(["simulate", "--quiet", "--config"])
        .arg(&path)
        .arg("--json")
        .arg(sim_json.path())
        .arg("--events")
        .arg(sim_events.path())
        .status()
        .unwrap();
    assert!(status.success(), "ebbtide simulate failed: {status}");
    let sim_report = read_json(sim_json.path());
    // Virtual time 0 is the first arrival's second.
    let sim_changes = changes(&read_json(sim_events.path()), 0.0);
    let simulated = figures(&sim_changes, &sim_report, min, step_s, duration_s);

    // Live: the same file with the listener and admin API on free ports.
    let text = std::fs::read_to_string(&path).unwrap();
    let spawned = Instant::now();
    let lb = start_ebbtide(&base_config(&text));
    // The proxy's clock (the decisions' `at`) starts between these two instants.
    let listening = spawned.elapsed().as_secs_f64();
    eventually("the minimum fleet", Duration::from_secs(20), || async {
        (active_backends(lb.admin).await == min as usize).then_some(())
    })
    .await;
    let out = tempfile_path::TempPath::with_contents("json", "");
    let load_started = spawned.elapsed().as_secs_f64();
    let (addr, admin, out_path) = (lb.addr, lb.admin, out.path().to_path_buf());
    let (seed, load_profile) = (sim.seed.to_string(), profile.clone());
    let arrivals = match sim.arrivals {
        ebbtide_config::simulation::SimArrivals::Poisson => "poisson",
        ebbtide_config::simulation::SimArrivals::Uniform => "uniform",
    };
    let status = tokio::task::spawn_blocking(move || {
        Command::new(ebbtide_bin())
            .args(["load", "--quiet", "--target", &url(addr, "/")])
            .args([
                "--profile",
                &load_profile,
                "--seed",
                &seed,
                "--arrivals",
                arrivals,
            ])
            .args(["--admin", &format!("http://{admin}"), "--json"])
            .arg(&out_path)
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "ebbtide load failed: {status}");
    let live_report = read_json(out.path());
    let (_, _, events) = get(&url(lb.admin, "/api/v1/events")).await;
    let events: serde_json::Value = serde_json::from_slice(&events).unwrap();
    // `ebbtide load` sends its first request 50 ms after it starts.
    let live_changes = changes(&events, load_started + 0.05);
    let live = figures(&live_changes, &live_report, min, step_s, duration_s);

    let fmt = |c: &[(f64, u64, u64)]| {
        c.iter()
            .map(|(t, f, to)| format!("{t:.1}s {f}->{to}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    eprintln!(
        "live vs simulated, {} ({profile}, seed {seed})",
        path.display(),
        seed = sim.seed
    );
    eprintln!(
        "  clock alignment: proxy clock started within {listening:.3}s of the spawn; load at {load_started:.3}s"
    );
    eprintln!("  live decisions:      {}", fmt(&live_changes));
    eprintln!("  simulated decisions: {}", fmt(&sim_changes));
    eprintln!("  live active/s:      {:?}", live.active);
    eprintln!("  simulated active/s: {:?}", simulated.active);
    eprintln!(
        "  first scale-out after the step: live +{:.2}s to {}, simulated +{:.2}s to {}",
        live.first_out_after_step_s,
        live.first_out_to,
        simulated.first_out_after_step_s,
        simulated.first_out_to
    );
    eprintln!(
        "  peak fleet decided: live {}, simulated {}",
        live.peak, simulated.peak
    );
    eprintln!(
        "  p50 (whole run): live {:.2} ms, simulated {:.2} ms ({:+.1}%); live errors {}",
        live.p50_ms,
        simulated.p50_ms,
        (live.p50_ms / simulated.p50_ms - 1.0) * 100.0,
        live_report["errors"]
    );

    assert_eq!(
        live_report["errors"], 0,
        "the live run failed requests: {} {}",
        live_report["errors_by_kind"], live_report["status_codes"]
    );
    let dt = (live.first_out_after_step_s - simulated.first_out_after_step_s).abs();
    assert!(
        dt <= MAX_TIME_DIFF_S,
        "first scale-out after the step: live +{:.2}s, simulated +{:.2}s: {dt:.2}s apart",
        live.first_out_after_step_s,
        simulated.first_out_after_step_s
    );
    let dn = (live.peak as i64 - simulated.peak as i64).abs();
    assert!(
        dn <= MAX_FLEET_DIFF,
        "peak fleet: live {}, simulated {}",
        live.peak,
        simulated.peak
    );
    let dp = (live.p50_ms / simulated.p50_ms - 1.0).abs();
    assert!(
        dp <= MAX_P50_DIFF,
        "p50: live {:.2} ms, simulated {:.2} ms: {:.1}% apart",
        live.p50_ms,
        simulated.p50_ms,
        dp * 100.0
    );
}
