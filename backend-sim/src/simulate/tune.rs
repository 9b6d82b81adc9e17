//! `ebbtide tune`: searches the decider and its parameters in the simulator for the cheapest
//! `[autoscaler]` whose share of requests over the SLO (shed requests count as misses) stays
//! within `--max-slo-miss`, and says how well the winner generalises.
//!
//! - **Candidates**: the config's own `[autoscaler]` first (the baseline), then a grid per
//!   decider over the parameters that matter most for it (targets and utilisation for the
//!   threshold rules, windows for `queueing_model`, drain time, burst quantile, interval and the
//!   price of an SLO miss for `backlog`), in a fixed order shuffled by the seed. Every other key (min, max, SLO, workers,
//!   boot time, cost) is the config's.
//! - **Tuning and held-back traffic**: a trace is cut in two, the first two thirds to tune on and
//!   the last third held back; a rate profile is tuned on the scenario's seed and held back on
//!   another seed (the same profile, different arrivals and service times).
//! - **Search**: candidates run on every core (`std::thread::scope`, each run deterministic for
//!   its seed) until all have run or the budget is spent; a progress line goes to stderr. The
//!   ranking is deterministic for a seed whenever the budget lets every candidate run (the report
//!   says how many did).
//! - **Choice**: the cheapest (billed) candidate within the miss limit; when none is, the one with
//!   the fewest misses. Then the winner and the baseline run on the held-back traffic.

use super::engine::{self, RunResult};
use super::scenario::Scenario;
use crate::load::schedule::Source;
use ebbtide_config::autoscaler::{Autoscaler, DeciderKind};
use ebbtide_config::rng::Rng;
use ebbtide_config::time::{parse_duration, HumanDuration};
use serde::Serialize;
use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Options of `ebbtide tune`.
#[derive(Debug, Clone, clap::Args)]
pub struct TuneArgs {
    /// The config file with `[simulation]` traffic (as `ebbtide simulate`).
    #[arg(long)]
    pub config: PathBuf,

    /// The most requests allowed over the SLO (or shed), e.g. `1%` or `0.01`.
    #[arg(long, default_value = "1%", value_parser = parse_share)]
    pub max_slo_miss: f64,

    /// Wall time to search for, e.g. `5m`; candidates not started by then are skipped.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub budget: Duration,

    /// Write the winning `[autoscaler]` section (TOML) here.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Seed of the tuning traffic and of the candidates' order (default: the config's).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Worker threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Write the whole report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Print no table and no progress.
    #[arg(long)]
    pub quiet: bool,
}

/// Parses `1%` or `0.01` as a share.
pub fn parse_share(text: &str) -> Result<f64, String> {
    let t = text.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("`{text}` is not a share; write e.g. 1% or 0.01"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("`{text}` must be between 0% and 100%"));
    }
    Ok(v)
}

/// One candidate's result on one traffic.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Cost as billed (whole billing periods).
    pub cost: f64,
    /// Requests answered slower than the SLO, over requests arrived.
    pub over_slo_share: f64,
    /// Requests shed.
    pub shed: u64,
    /// (over SLO + shed) / arrived: what the limit applies to.
    pub miss_share: f64,
    /// Decisions that changed the fleet.
    pub actions: u64,
}

impl Outcome {
    fn of(r: &RunResult) -> Outcome {
        let shed: u64 = r.shed.values().sum();
        let arrived = (r.exact.served + shed).max(1) as f64;
        Outcome {
            cost: r.cost,
            over_slo_share: r.exact.over_slo as f64 / r.exact.served.max(1) as f64,
            shed,
            miss_share: (r.exact.over_slo + shed) as f64 / arrived,
            actions: r.scaling.up + r.scaling.down,
        }
    }
}

/// A candidate configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// The decider and the parameters changed from the config.
    pub label: String,
    /// The whole `[autoscaler]` section it runs.
    #[serde(skip)]
    pub autoscaler: Autoscaler,
}

/// A candidate with its result on the tuning traffic.
#[derive(Debug, Clone, Serialize)]
pub struct Ranked {
    /// The candidate.
    pub label: String,
    /// Its result on the tuning traffic.
    pub tuning: Outcome,
    /// Whether it keeps within the miss limit.
    pub feasible: bool,
}

/// What `ebbtide tune` found.
#[derive(Debug, Clone, Serialize)]
pub struct TuneReport {
    /// The tuning traffic.
    pub tuning_traffic: String,
    /// The held-back traffic.
    pub held_back_traffic: String,
    /// The miss limit.
    pub max_slo_miss: f64,
    /// Candidates in the grid.
    pub candidates: usize,
    /// Candidates run within the budget.
    pub tried: usize,
    /// Wall seconds of the search.
    pub wall_seconds: f64,
    /// Every candidate run, best first.
    pub ranking: Vec<Ranked>,
    /// The winner's label.
    pub winner: String,
    /// The winner on the held-back traffic.
    pub winner_held_back: Outcome,
    /// The config's own `[autoscaler]` on the tuning traffic.
    pub baseline_tuning: Outcome,
    /// The config's own `[autoscaler]` on the held-back traffic.
    pub baseline_held_back: Outcome,
    /// The winning `[autoscaler]` section, TOML.
    pub section: String,
}

/// The grid of candidates: the baseline first, then the rest in a seeded order.
pub fn candidates(base: &Autoscaler, seed: u64) -> Vec<Candidate> {
    let mut grid: Vec<Candidate> = Vec::new();
    let with = |label: String, f: &dyn Fn(&mut Autoscaler)| {
        let mut a = base.clone();
        f(&mut a);
        Candidate {
            label,
            autoscaler: a,
        }
    };
    let s = |secs: f64| HumanDuration(Duration::from_secs_f64(secs));
    for target in [2.0, 4.0, 8.0] {
        grid.push(with(
            format!("target_tracking target={target}"),
            &|a: &mut Autoscaler| {
                a.decider = DeciderKind::TargetTracking;
                a.target = target;
            },
        ));
    }
    for target in [2.0, 4.0, 8.0] {
        for utilisation in [0.5, 0.7, 0.9] {
            grid.push(with(
                format!("concurrency target={target} utilisation={utilisation}"),
                &|a: &mut Autoscaler| {
                    a.decider = DeciderKind::Concurrency;
                    a.target = target;
                    a.utilisation = utilisation;
                },
            ));
        }
    }
    for panic in [3.0, 6.0, 12.0] {
        for stable in [30.0, 60.0] {
            grid.push(with(
                format!("queueing_model panic_window={panic}s stable_window={stable}s"),
                &|a: &mut Autoscaler| {
                    a.decider = DeciderKind::QueueingModel;
                    a.panic_window = s(panic);
                    a.stable_window = s(stable);
                },
            ));
        }
    }
    for drain in [0.25, 0.5, 1.0, 2.0, 5.0] {
        for quantile in [0.0, 0.99, 0.999] {
            for interval in [0.5, 1.0] {
                for violation in [base.cost.slo_violation_cost, 0.0] {
                    if violation == 0.0 && base.cost.slo_violation_cost == 0.0 {
                        continue;
                    }
                    let priced = if violation == base.cost.slo_violation_cost {
                        String::new()
                    } else {
                        format!(" slo_violation_cost={violation}")
                    };
                    grid.push(with(
                        format!(
                            "backlog drain_time={drain}s burst_quantile={quantile} \
                             interval={interval}s{priced}"
                        ),
                        &|a: &mut Autoscaler| {
                            a.decider = DeciderKind::Backlog;
                            a.drain_time = s(drain);
                            a.burst_quantile = quantile;
                            a.interval = s(interval);
                            a.cost.slo_violation_cost = violation;
                        },
                    ));
                }
            }
        }
    }
    // Keep only what the config check accepts (e.g. a panic window shorter than the stable one).
    grid.retain(|c| c.autoscaler.validate().is_empty());
    // Fisher-Yates with the seed: a budget that runs out samples every decider, not the first.
    let mut rng = Rng::new(seed ^ 0x7u64.rotate_left(60));
    for i in (1..grid.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        grid.swap(i, j);
    }
    let mut all = vec![Candidate {
        label: format!("config ({})", base.decider.name()),
        autoscaler: base.clone(),
    }];
    all.extend(grid);
    all
}

/// The tuning and held-back scenarios, and their descriptions.
pub fn split(sc: &Scenario) -> (Scenario, Scenario, String, String) {
    match &sc.source {
        Source::Times(times) => {
            let cut = sc.duration_s * 2.0 / 3.0;
            let mut tune = sc.clone();
            tune.source = Source::Times(times.iter().copied().filter(|&t| t < cut).collect());
            tune.duration_s = cut;
            let mut held = sc.clone();
            held.source = Source::Times(
                times
                    .iter()
                    .filter(|&&t| t >= cut)
                    .map(|&t| t - cut)
                    .collect(),
            );
            held.duration_s = sc.duration_s - cut;
            (
                tune,
                held,
                format!("{}: the first {cut:.0} s", sc.schedule),
                format!("{}: the last {:.0} s", sc.schedule, sc.duration_s - cut),
            )
        }
        Source::Rate(..) => {
            let mut held = sc.clone();
            held.sim.seed = sc.sim.seed.wrapping_add(1_000_003);
            (
                sc.clone(),
                held.clone(),
                format!("{} (seed {})", sc.schedule, sc.sim.seed),
                format!("{} (seed {})", sc.schedule, held.sim.seed),
            )
        }
    }
}

fn with_autoscaler(sc: &Scenario, a: &Autoscaler) -> Scenario {
    let mut s = sc.clone();
    s.config.autoscaler = Some(a.clone());
    s
}

/// Ranks outcomes: within the limit by cost, then the rest by misses.
fn rank_key(o: &Outcome, limit: f64) -> (bool, f64, f64) {
    let feasible = o.miss_share <= limit;
    if feasible {
        (false, o.cost, o.miss_share)
    } else {
        (true, o.miss_share, o.cost)
    }
}

/// Runs the search.
pub fn tune(
    sc: &Scenario,
    max_slo_miss: f64,
    budget: Duration,
    threads: usize,
    progress: bool,
) -> TuneReport {
    let started = Instant::now();
    let base = sc.config.autoscaler.clone().unwrap_or_default();
    let grid = candidates(&base, sc.sim.seed);
    let (tuning, held, tuning_name, held_name) = split(sc);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new(vec![None; grid.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, grid.len()) {
            scope.spawn(|| loop {
                if started.elapsed() >= budget {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(c) = grid.get(i) else {
                    return;
                };
                let r = engine::run(&with_autoscaler(&tuning, &c.autoscaler));
                results.lock().expect("results lock")[i] = Some(Outcome::of(&r));
                done.fetch_add(1, Ordering::Relaxed);
            });
        }
        if progress {
            scope.spawn(|| {
                // On a terminal one line redrawn twice a second; into a file or a CI log a
                // plain line every 10 s (a `\r` redraw there is one endless line).
                let tty = std::io::stderr().is_terminal();
                let mut printed: Option<Instant> = None;
                let total = grid.len();
                loop {
                    let d = done.load(Ordering::Relaxed);
                    let started_n = next.load(Ordering::Relaxed).min(total);
                    let best = {
                        let r = results.lock().expect("results lock");
                        r.iter()
                            .flatten()
                            .filter(|o| o.miss_share <= max_slo_miss)
                            .map(|o| o.cost)
                            .fold(f64::INFINITY, f64::min)
                    };
                    let over = started.elapsed() >= budget;
                    let last = d >= total || (over && d >= started_n);
                    let line = format!(
                        "tune: {d}/{total} candidates run, {:.0}s of {:.0}s budget, cheapest \
                         within {:.2}%: {}",
                        started.elapsed().as_secs_f64(),
                        budget.as_secs_f64(),
                        max_slo_miss * 100.0,
                        if best.is_finite() {
                            format!("{best:.4}")
                        } else {
                            "none yet".into()
                        }
                    );
                    if tty {
                        eprint!("\r{line}   ");
                        if last {
                            eprintln!();
                        }
                        let _ = std::io::stderr().flush();
                    } else if last || printed.is_none_or(|t| t.elapsed() >= Duration::from_secs(10))
                    {
                        eprintln!("{line}");
                        printed = Some(Instant::now());
                    }
                    if last {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            });
        }
    });
    let wall = started.elapsed().as_secs_f64();
    let outcomes = results.into_inner().expect("results lock");
    let mut ranked: Vec<(usize, Outcome)> = outcomes
        .into_iter()
        .enumerate()
        .filter_map(|(i, o)| o.map(|o| (i, o)))
        .collect();
    let tried = ranked.len();
    ranked.sort_by(|(ia, a), (ib, b)| {
        let (ka, kb) = (rank_key(a, max_slo_miss), rank_key(b, max_slo_miss));
        ka.0.cmp(&kb.0)
            .then(ka.1.total_cmp(&kb.1))
            .then(ka.2.total_cmp(&kb.2))
            .then(ia.cmp(ib))
    });
    // The baseline (index 0) runs first, so it is there unless the budget was 0: run it then.
    let baseline_tuning = ranked
        .iter()
        .find(|(i, _)| *i == 0)
        .map(|(_, o)| o.clone())
        .unwrap_or_else(|| Outcome::of(&engine::run(&with_autoscaler(&tuning, &base))));
    let winner_index = ranked.first().map_or(0, |(i, _)| *i);
    let winner = &grid[winner_index];
    let held_runs = super::compare::run_all(
        &[
            with_autoscaler(&held, &winner.autoscaler),
            with_autoscaler(&held, &base),
        ],
        threads,
    );
    TuneReport {
        tuning_traffic: tuning_name,
        held_back_traffic: held_name,
        max_slo_miss,
        candidates: grid.len(),
        tried,
        wall_seconds: wall,
        ranking: ranked
            .iter()
            .map(|(i, o)| Ranked {
                label: grid[*i].label.clone(),
                tuning: o.clone(),
                feasible: o.miss_share <= max_slo_miss,
            })
            .collect(),
        winner: winner.label.clone(),
        winner_held_back: Outcome::of(&held_runs[0]),
        baseline_tuning,
        baseline_held_back: Outcome::of(&held_runs[1]),
        section: winner.autoscaler.to_toml_section(),
    }
}

impl TuneReport {
    /// The report `ebbtide tune` prints: the ranking (top 20), then winner vs config.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "tuning on {}; held back: {}\n{} of {} candidates run in {:.0} s; limit {:.2}% of \
             requests over the SLO or shed",
            self.tuning_traffic,
            self.held_back_traffic,
            self.tried,
            self.candidates,
            self.wall_seconds,
            self.max_slo_miss * 100.0
        );
        let _ = writeln!(
            out,
            "{:>4}  {:<84} {:>9} {:>8} {:>8} {:>8}",
            "rank", "candidate", "billed", ">SLO %", "shed", "actions"
        );
        for (k, r) in self.ranking.iter().enumerate().take(20) {
            let _ = writeln!(
                out,
                "{:>4}  {:<84} {:>9.4} {:>8.3} {:>8} {:>8}{}",
                k + 1,
                r.label,
                r.tuning.cost,
                r.tuning.over_slo_share * 100.0,
                r.tuning.shed,
                r.tuning.actions,
                if r.feasible { "" } else { "  over the limit" }
            );
        }
        if self.ranking.len() > 20 {
            let _ = writeln!(out, "  ... {} more", self.ranking.len() - 20);
        }
        let row = |out: &mut String, name: &str, o: &Outcome| {
            let _ = writeln!(
                out,
                "  {:<32} {:>9.4} {:>8.3} {:>8} {:>8}",
                name,
                o.cost,
                o.over_slo_share * 100.0,
                o.shed,
                o.actions
            );
        };
        let winner_tuning = self
            .ranking
            .first()
            .map(|r| r.tuning.clone())
            .unwrap_or_else(|| self.baseline_tuning.clone());
        let _ = writeln!(out, "\nwinner: {}", self.winner);
        let _ = writeln!(
            out,
            "  {:<32} {:>9} {:>8} {:>8} {:>8}",
            "", "billed", ">SLO %", "shed", "actions"
        );
        row(&mut out, "winner, tuning traffic", &winner_tuning);
        row(&mut out, "config, tuning traffic", &self.baseline_tuning);
        row(
            &mut out,
            "winner, held-back traffic",
            &self.winner_held_back,
        );
        row(
            &mut out,
            "config, held-back traffic",
            &self.baseline_held_back,
        );
        let _ = writeln!(out, "\n{}", self.section);
        out
    }
}

/// Runs `ebbtide tune`; returns the exit code.
pub fn run(args: TuneArgs) -> Result<i32, String> {
    let mut cfg = ebbtide_config::Config::from_file(&args.config).map_err(|e| e.to_string())?;
    let sim = cfg.simulation.get_or_insert_with(Default::default);
    if let Some(seed) = args.seed {
        sim.seed = seed;
    }
    let sc = Scenario::from_config(cfg, args.config.parent())?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let report = tune(&sc, args.max_slo_miss, args.budget, threads, !args.quiet);
    if let Some(path) = &args.out {
        std::fs::write(path, &report.section)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.json {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&report).expect("report serializes") + "\n",
        )
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if !args.quiet {
        print!("{}", report.table());
    }
    Ok(0)
}
