//! `ebbtide simulate`: a discrete-event simulator (virtual clock, event heap, seeded random
//! streams) that drives the very same balancing policies, overload rules, signal window and
//! autoscaler deciders as `ebbtide serve`, over backends modelled as `ebbtide backend` runs them,
//! with arrivals made as `ebbtide load` makes them. Its report has `ebbtide load`'s format, so a
//! live run and its simulation can be laid side by side; an hour at 10,000 requests per second
//! takes seconds. See [`engine`] for what is driven and how, and [`fleet`] for the backend model.
//!
//! Modes: one run (report, series CSV, SVG plot, decision log); `--compare` (every decider on the
//! scenario, plus an oracle lower bound on cost); `--compare-policies` (every policy on the
//! scenario's fleet at several utilisations).

pub mod compare;
pub mod engine;
pub mod fleet;
pub mod report;
pub mod scenario;
pub mod tune;

pub use engine::{run as simulate, ExactStats, RunResult};
pub use report::SimReport;
pub use scenario::Scenario;

use ebbtide_config::autoscaler::DeciderKind;
use ebbtide_config::simulation::SimCapacity;
use ebbtide_config::time::{parse_duration, HumanDuration};
use ebbtide_config::PolicyKind;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options of `ebbtide simulate`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
The config is the file `ebbtide serve` reads plus a [simulation] section (see
config/examples/reference.toml): duration, seed, rate or profile or trace (as `ebbtide load`),
backends, service_time, workers, boot, speeds (as `ebbtide backend`), capacity, warmup.
Scenarios to start from: bench/scenarios/*.toml.

The JSON report has the keys of `ebbtide load --json` plus simulated_requests, backend_seconds,
cost, usage_cost, over_slo_share, seconds_p99_over_slo, shed, scaling and wall_seconds. With the
same seed two runs write byte-identical reports apart from the wall-clock fields (wall_seconds,
simulated_requests_per_wall_second).")]
pub struct SimulateArgs {
    /// The config file: the same file `ebbtide serve` reads, plus a `[simulation]` section.
    #[arg(long)]
    pub config: PathBuf,

    /// Write the report as JSON (with --compare or --compare-policies: the table as JSON).
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write the per-second series as CSV (the format of `ebbtide load --csv`).
    #[arg(long)]
    pub csv: Option<PathBuf>,

    /// Write an SVG plot of rate, backends and latency over time (as `ebbtide load --plot`).
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// Write the autoscaler's decisions, newest first, as JSON (the `/api/v1/events` format).
    #[arg(long)]
    pub events: Option<PathBuf>,

    /// Override `simulation.seed`.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Override `simulation.duration`, e.g. 10m.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Override `balancer.policy` (round_robin, p2c, central_queue, ...).
    #[arg(long, value_parser = parse_policy)]
    pub policy: Option<PolicyKind>,

    /// Override `autoscaler.decider` (target_tracking, concurrency, queueing_model).
    #[arg(long, value_parser = parse_decider)]
    pub decider: Option<DeciderKind>,

    /// Override `simulation.capacity`: workers, unbounded, adaptive or a number.
    #[arg(long, value_parser = SimCapacity::parse)]
    pub capacity: Option<SimCapacity>,

    /// Run every decider on the scenario and print one table (cost, SLO misses, shed, scaling
    /// actions) with an oracle row: the cost lower bound with perfect knowledge of the rate.
    #[arg(long, conflicts_with = "compare_policies")]
    pub compare: bool,

    /// Run every balancing policy on the scenario's fleet (without the autoscaler) at each of
    /// `--utilisations` and print mean, p99 and p99.9 sojourn per policy.
    #[arg(long)]
    pub compare_policies: bool,

    /// Utilisations for --compare-policies (offered load over the fleet's capacity).
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.7,0.9,0.95")]
    pub utilisations: Vec<f64>,

    /// Simulations run in parallel by the compare modes; default: the number of cores.
    #[arg(long)]
    pub threads: Option<usize>,

    /// Do not print the summary table.
    #[arg(long)]
    pub quiet: bool,
}

/// Parses a policy's config name.
pub fn parse_policy(text: &str) -> Result<PolicyKind, String> {
    PolicyKind::ALL
        .into_iter()
        .find(|p| p.name() == text.trim())
        .ok_or_else(|| {
            let names: Vec<&str> = PolicyKind::ALL.iter().map(|p| p.name()).collect();
            format!("unknown policy `{text}`; use one of {}", names.join(", "))
        })
}

/// Parses a decider's config name.
pub fn parse_decider(text: &str) -> Result<DeciderKind, String> {
    DeciderKind::ALL
        .into_iter()
        .find(|d| d.name() == text.trim())
        .ok_or_else(|| {
            let names: Vec<&str> = DeciderKind::ALL.iter().map(|d| d.name()).collect();
            format!("unknown decider `{text}`; use one of {}", names.join(", "))
        })
}

/// The scenario of the config file with the command line's overrides applied.
pub fn scenario_from_args(args: &SimulateArgs) -> Result<Scenario, String> {
    let mut cfg = ebbtide_config::Config::from_file(&args.config).map_err(|e| e.to_string())?;
    let sim = cfg.simulation.get_or_insert_with(Default::default);
    if let Some(seed) = args.seed {
        sim.seed = seed;
    }
    if let Some(d) = args.duration {
        sim.duration = HumanDuration(d);
    }
    if let Some(c) = args.capacity {
        sim.capacity = Some(c);
    }
    if let Some(p) = args.policy {
        cfg.balancer.policy = p;
    }
    if let Some(d) = args.decider {
        cfg.autoscaler.get_or_insert_with(Default::default).decider = d;
    }
    Scenario::from_config(cfg, args.config.parent())
}

fn write(path: &PathBuf, text: String) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn threads(args: &SimulateArgs) -> usize {
    args.threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1)
}

/// Runs the simulation (or a comparison) and prints its report; returns the exit code.
pub fn run(args: SimulateArgs) -> Result<i32, String> {
    let sc = scenario_from_args(&args)?;
    if args.compare {
        let started = Instant::now();
        let cmp = compare::compare_deciders(&sc, threads(&args));
        if let Some(path) = &args.json {
            write(path, to_json(&cmp))?;
        }
        if !args.quiet {
            print!("{}", cmp.table());
            let total: u64 = cmp.rows.iter().map(|r| r.simulated_requests).sum();
            print_speed(total, started.elapsed().as_secs_f64());
        }
        return Ok(0);
    }
    if args.compare_policies {
        if args
            .utilisations
            .iter()
            .any(|u| !(*u > 0.0 && u.is_finite()))
        {
            return Err("--utilisations must be positive numbers, e.g. 0.5,0.9".into());
        }
        let started = Instant::now();
        let cmp = compare::compare_policies(&sc, &args.utilisations, threads(&args));
        if let Some(path) = &args.json {
            write(path, to_json(&cmp))?;
        }
        if !args.quiet {
            print!("{}", cmp.table());
            let total: u64 = cmp.rows.iter().map(|r| r.simulated_requests).sum();
            print_speed(total, started.elapsed().as_secs_f64());
        }
        return Ok(0);
    }
    // Wall time is read only here, to report the simulator's speed; the run never sees it.
    let started = Instant::now();
    let result = engine::run(&sc);
    let wall = started.elapsed().as_secs_f64();
    let report = SimReport::new(&result, sc.config.balancer.policy.name(), sc.sim.seed, wall);
    if let Some(path) = &args.json {
        write(path, to_json(&report))?;
    }
    if let Some(path) = &args.csv {
        write(path, report.load.series_csv())?;
    }
    if let Some(path) = &args.plot {
        write(path, crate::load::plot::svg(&report.load))?;
    }
    if let Some(path) = &args.events {
        write(
            path,
            serde_json::to_string_pretty(&result.events).expect("events serialize") + "\n",
        )?;
    }
    if !args.quiet {
        print!("{}", report.table());
    }
    Ok(0)
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("reports serialize") + "\n"
}

fn print_speed(requests: u64, wall: f64) {
    println!(
        "simulated {requests} requests in {wall:.2} s wall: {:.0} simulated requests per wall second",
        requests as f64 / wall.max(1e-9)
    );
}
