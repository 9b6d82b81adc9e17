//! Instance kinds in the simulator: the same kind planner as the live control step, with each
//! kind's workers, boot time and price, and spot-like preemption.

use ebbtide_config::Config;
use ebbtide_sim::simulate::{simulate, RunResult, Scenario};

/// A step from 200/s to 1,000/s (exp 20 ms: 4 then 20 busy workers) over a large kind (8
/// workers, 20 s boot, 0.6x the small one's price per worker) and a small one (2 workers, 1 s
/// boot); `extra` is appended to the small kind.
fn config(kinds: &[&str], small_extra: &str) -> String {
    let large = "[[provider.kinds]]\nname = \"large\"\nworkers = 8\ncost_per_hour = 0.06\n\
                 boot_time = \"20s\"\n";
    let small = format!(
        "[[provider.kinds]]\nname = \"small\"\nworkers = 2\ncost_per_hour = 0.025\n\
         boot_time = \"1s\"\n{small_extra}"
    );
    let mut text = String::from(
        "[overload]\nmax_queue = 100000\nqueue_timeout = \"5s\"\n[provider]\ncapacity = 4\n",
    );
    if kinds.contains(&"large") {
        text.push_str(large);
    }
    if kinds.contains(&"small") {
        text.push_str(&small);
    }
    text.push_str(
        "[autoscaler]\ndecider = \"concurrency\"\nmin = 2\nmax = 100\nworkers = 4\n\
         boot_time = \"1s\"\nstable_window = \"30s\"\n[autoscaler.cost]\n\
         backend_per_hour = 0.05\nbilling_period = \"60s\"\n[simulation]\nseed = 3\n\
         backends = 2\nservice_time = \"exp:20ms\"\nworkers = 4\n\
         profile = \"steps:200@60s,1000@240s\"\n",
    );
    text
}

fn run(text: &str) -> RunResult {
    let cfg = Config::from_toml(text, "kinds.toml").unwrap_or_else(|e| panic!("{e}"));
    simulate(&Scenario::from_config(cfg, None).unwrap_or_else(|e| panic!("{e}")))
}

/// The kinds each decision launched, in order.
fn launched(r: &RunResult) -> Vec<String> {
    let mut events: Vec<&serde_json::Value> = r.events.as_array().unwrap().iter().collect();
    events.sort_by_key(|e| e["at"].as_u64());
    events
        .iter()
        .flat_map(|e| {
            e["decision"]["launch_kinds"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect()
}

#[test]
fn the_step_gets_small_first_then_large_and_costs_less_than_small_alone() {
    let two = run(&config(&["large", "small"], ""));
    let kinds = launched(&two);
    let first_small = kinds.iter().position(|k| k == "small");
    let first_large = kinds.iter().position(|k| k == "large");
    assert!(
        matches!((first_small, first_large), (Some(s), Some(l)) if s < l),
        "the burst is small, the lasting rise large: {kinds:?}"
    );
    let small = run(&config(&["small"], ""));
    assert!(launched(&small).iter().all(|k| k == "small"));
    let share = |r: &RunResult| r.exact.over_slo as f64 / r.exact.served.max(1) as f64;
    eprintln!(
        "two kinds: billed {:.4}, {:.3}% over SLO; small only: billed {:.4}, {:.3}%",
        two.cost,
        share(&two) * 100.0,
        small.cost,
        share(&small) * 100.0
    );
    assert!(
        two.cost < small.cost,
        "the large kind is cheaper per worker for the lasting load"
    );
    assert!(
        share(&two) <= share(&small) + 0.01,
        "and serves about as well"
    );
}

#[test]
fn preempted_spot_backends_are_replaced() {
    // The small kind as spot: 60 preemptions per backend-hour (one a minute on average).
    let r = run(&config(&["small"], "preemption_rate = 60.0\n"));
    assert!(r.scaling.preempted > 0, "{:?}", r.scaling);
    // Each one lost is replaced at the next tick: every request is still served, and few late.
    let late = r.exact.over_slo as f64 / r.exact.served.max(1) as f64;
    eprintln!("{:?}, {:.3}% over SLO", r.scaling, late * 100.0);
    assert_eq!(r.shed.values().sum::<u64>(), 0);
    assert!(late < 0.05, "{:.3}% over the SLO", late * 100.0);
    let again = run(&config(&["small"], "preemption_rate = 60.0\n"));
    assert_eq!(
        again.scaling.preempted, r.scaling.preempted,
        "deterministic for a seed"
    );
}
