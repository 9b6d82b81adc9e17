//! `ebbtide simulate`, end to end: the real binary on small scenarios. Same seed, same files
//! (byte for byte, apart from the two wall-clock fields of the JSON); the JSON has the keys of
//! `ebbtide load`'s report; the compare modes print their tables.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory in the temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("ebbtide-simulate-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn config(&self, text: &str) -> PathBuf {
        let path = self.file("scenario.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn simulate(config: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ebbtide"))
        .arg("simulate")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run ebbtide simulate");
    assert!(
        out.status.success(),
        "ebbtide simulate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A short step with the autoscaler and slow-ish boots: 40 s of virtual time, ~80k requests.
const STEP: &str = r#"
[overload]
max_queue = 2000
queue_timeout = "2s"

[provider]
command = ["ebbtide", "backend", "--listen", "127.0.0.1:{port}", "--service-time", "exp:20ms", "--workers", "4", "--boot", "2s"]
capacity = 4

[autoscaler]
decider = "concurrency"
min = 2
max = 50
boot_time = "2s"

[simulation]
profile = "steps:500@10s,2500@30s"
seed = 3
backends = 3
service_time = "exp:20ms"
workers = 4
boot = "2s"
"#;

/// The JSON without its wall-clock lines (pretty-printed: one key per line).
fn without_wall_clock(json: &str) -> String {
    json.lines()
        .filter(|l| {
            !l.contains("\"wall_seconds\"") && !l.contains("\"simulated_requests_per_wall_second\"")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_same_seed_writes_the_same_files() {
    let dir = Scratch::new("determinism");
    let config = dir.config(STEP);
    let mut runs = Vec::new();
    for (name, seed) in [("a", "3"), ("b", "3"), ("c", "4")] {
        let json = dir.file(&format!("{name}.json"));
        let csv = dir.file(&format!("{name}.csv"));
        let svg = dir.file(&format!("{name}.svg"));
        let events = dir.file(&format!("{name}.events.json"));
        simulate(
            &config,
            &[
                "--seed",
                seed,
                "--quiet",
                "--json",
                json.to_str().unwrap(),
                "--csv",
                csv.to_str().unwrap(),
                "--plot",
                svg.to_str().unwrap(),
                "--events",
                events.to_str().unwrap(),
            ],
        );
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        runs.push((read(&json), read(&csv), read(&svg), read(&events)));
    }
    let (a, b, c) = (&runs[0], &runs[1], &runs[2]);
    assert_eq!(without_wall_clock(&a.0), without_wall_clock(&b.0), "JSON");
    assert!(a.1 == b.1, "the CSV series differ");
    assert!(a.2 == b.2, "the plots differ");
    assert!(a.3 == b.3, "the decision logs differ");
    assert_ne!(without_wall_clock(&a.0), without_wall_clock(&c.0));
    // Only the wall-clock lines were left out.
    assert_eq!(
        a.0.lines().count(),
        without_wall_clock(&a.0).lines().count() + 2
    );
}

#[test]
fn the_json_report_has_the_load_reports_keys() {
    let dir = Scratch::new("json");
    let config = dir.config(STEP);
    let json = dir.file("r.json");
    let out = simulate(&config, &["--json", json.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("simulated requests per wall second"),
        "{stdout}"
    );
    assert!(stdout.contains("latency ms"), "load's table: {stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).expect("valid JSON");
    for key in ["mean", "p50", "p90", "p99", "p999", "max"] {
        assert!(v["latency_ms"][key].is_number(), "latency_ms.{key}: {v}");
    }
    for key in [
        "scheduled",
        "ok",
        "errors",
        "series",
        "simulated_requests",
        "wall_seconds",
        "backend_seconds",
        "cost",
    ] {
        assert!(!v[key].is_null(), "{key} missing");
    }
    let requests = v["simulated_requests"].as_u64().unwrap();
    assert!((76_000..84_000).contains(&requests), "{requests}");
    assert_eq!(v["scheduled"].as_u64().unwrap(), requests);
    assert!(v["cost"].as_f64().unwrap() > 0.0);
    assert!(
        v["scaling"]["up"].as_u64().unwrap() > 0,
        "the step scales out"
    );
    let series = v["series"].as_array().unwrap();
    assert!(series.len() >= 40);
    assert!(series[35]["backends"].as_u64().unwrap() > 3);
}

#[test]
fn compare_prints_every_decider_and_the_oracle() {
    let dir = Scratch::new("compare");
    let config = dir.config(STEP);
    let json = dir.file("cmp.json");
    let out = simulate(&config, &["--compare", "--json", json.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in [
        "target_tracking",
        "concurrency",
        "queueing_model",
        "oracle",
        "oracle_boot",
    ] {
        assert!(stdout.contains(name), "{name} missing:\n{stdout}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let deciders = rows.len() - 2;
    assert!(deciders >= 3);
    assert_eq!(rows[deciders]["decider"], "oracle");
    assert_eq!(rows[deciders + 1]["decider"], "oracle_boot");
    let instant = rows[deciders]["cost"].as_f64().unwrap();
    assert!(instant > 0.0);
    // Boots and whole billing periods only add to what perfect foresight pays.
    assert!(rows[deciders + 1]["billed"].as_f64().unwrap() >= instant);
    for r in &rows[..deciders] {
        // Every decider really ran the scenario (the oracle only sizes it).
        assert!(r["simulated_requests"].as_u64().unwrap() > 70_000, "{r}");
        assert!(r["cost"].as_f64().unwrap() > 0.0, "{r}");
    }
}

#[test]
fn compare_policies_prints_every_policy() {
    let dir = Scratch::new("policies");
    let config = dir.config(
        r#"
[simulation]
duration = "20s"
backends = 4
speeds = [1.0, 1.0, 2.0, 4.0]
service_time = "exp:10ms"
"#,
    );
    let out = simulate(
        &config,
        &["--compare-policies", "--utilisations", "0.5,0.9"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in [
        "round_robin",
        "p2c",
        "peak_ewma",
        "central_queue",
        "cost_aware",
    ] {
        assert_eq!(
            stdout.lines().filter(|l| l.starts_with(name)).count(),
            2,
            "{name} at each utilisation:\n{stdout}"
        );
    }
}

#[test]
fn a_bad_simulation_section_names_the_key() {
    let dir = Scratch::new("bad");
    let config = dir.config("[simulation]\nservice_time = \"gamma:1ms\"\n");
    let out = Command::new(env!("CARGO_BIN_EXE_ebbtide"))
        .args(["simulate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(":2:") && stderr.contains("simulation.service_time"),
        "{stderr}"
    );
}

#[test]
fn tune_is_deterministic_for_a_seed_and_no_worse_than_the_config() {
    let dir = Scratch::new("tune");
    let config = dir.config(&STEP.replace(
        "profile = \"steps:500@10s,2500@30s\"",
        "profile = \"steps:200@10s,1000@20s\"",
    ));
    let tune = |name: &str| -> (serde_json::Value, String) {
        let json = dir.file(&format!("{name}.json"));
        let out_toml = dir.file(&format!("{name}.toml"));
        let out = Command::new(env!("CARGO_BIN_EXE_ebbtide"))
            .arg("tune")
            .arg("--config")
            .arg(&config)
            .args(["--seed", "5", "--budget", "30m", "--max-slo-miss", "1%"])
            .arg("--json")
            .arg(&json)
            .arg("--out")
            .arg(&out_toml)
            .output()
            .expect("run ebbtide tune");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(stdout.contains("winner:"), "{stdout}");
        // Progress into a pipe is plain lines, not a terminal's `\r` redraws.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(" candidates run, "), "{stderr}");
        assert!(!stderr.contains('\r'), "{stderr:?}");
        let text = std::fs::read_to_string(&json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        (v, std::fs::read_to_string(&out_toml).unwrap())
    };
    let (a, section_a) = tune("a");
    let (b, section_b) = tune("b");
    // Every candidate ran, so the ranking is the seed's, not the wall clock's.
    assert_eq!(a["tried"], a["candidates"]);
    assert_eq!(a["ranking"], b["ranking"]);
    assert_eq!(a["winner"], b["winner"]);
    assert_eq!(section_a, section_b);
    // The written section is a valid [autoscaler] a config can take as it is.
    let with_winner = dir.file("winner.toml");
    let rest = STEP.split("[autoscaler]").next().unwrap();
    let sim = &STEP[STEP.find("[simulation]").unwrap()..];
    std::fs::write(&with_winner, format!("{rest}{section_a}\n{sim}")).unwrap();
    simulate(&with_winner, &["--quiet"]);
    // No worse than the config on the tuning traffic: within the limit and no dearer, or, when
    // the config misses it, with fewer misses.
    let limit = 0.01;
    let best = &a["ranking"][0]["tuning"];
    let base = &a["baseline_tuning"];
    let miss = |o: &serde_json::Value| o["miss_share"].as_f64().unwrap();
    let cost = |o: &serde_json::Value| o["cost"].as_f64().unwrap();
    if miss(base) <= limit {
        assert!(
            miss(best) <= limit && cost(best) <= cost(base),
            "{best} vs {base}"
        );
    } else {
        assert!(miss(best) <= miss(base), "{best} vs {base}");
    }
}
