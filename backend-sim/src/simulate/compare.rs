//! `--compare` (every decider on one scenario, with an oracle lower bound on cost) and
//! `--compare-policies` (every balancing policy on one fleet at several utilisations). Each run
//! is an ordinary simulation with one setting changed; runs go in parallel on separate threads
//! and are each deterministic, so the tables are too.

use super::engine::{self, RunResult};
use super::scenario::Scenario;
use ebbtide_autoscaler::deciders::queueing_model::SLO_QUANTILE;
use ebbtide_autoscaler::erlang::FleetModel;
use ebbtide_config::autoscaler::{Autoscaler, DeciderKind};
use ebbtide_config::time::{Nanos, NANOS_PER_SEC};
use ebbtide_config::PolicyKind;
use serde::Serialize;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Runs every scenario, `threads` at a time, and returns the results in the same order.
pub fn run_all(scenarios: &[Scenario], threads: usize) -> Vec<RunResult> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<RunResult>>> = Mutex::new(vec![None; scenarios.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, scenarios.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(sc) = scenarios.get(i) else {
                    return;
                };
                let r = engine::run(sc);
                results.lock().expect("results lock")[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .expect("results lock")
        .into_iter()
        .map(|r| r.expect("every scenario ran"))
        .collect()
}

/// One row of the decider comparison.
#[derive(Debug, Clone, Serialize)]
pub struct DeciderRow {
    /// The decider, or `oracle`.
    pub decider: String,
    /// Backend-hours x price.
    pub cost: f64,
    /// Cost as billed in whole billing periods (the oracle: by the second).
    pub billed: f64,
    /// Backend-hours paid for.
    pub backend_hours: f64,
    /// Share of answered requests slower than the SLO (`None` for the oracle).
    pub over_slo_share: Option<f64>,
    /// Seconds whose windowed p99 was over the SLO (`None` for the oracle).
    pub seconds_p99_over_slo: Option<u64>,
    /// Requests shed (`None` for the oracle).
    pub shed: Option<u64>,
    /// Decisions that changed the fleet: up plus down (the oracle: interval-to-interval changes).
    pub scaling_actions: u64,
    /// Most backends at once.
    pub peak_backends: u32,
    /// Requests simulated.
    pub simulated_requests: u64,
}

/// The decider comparison of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct DeciderComparison {
    /// The scenario's schedule.
    pub schedule: String,
    /// The SLO, ms.
    pub slo_ms: f64,
    /// One row per decider, then the oracle.
    pub rows: Vec<DeciderRow>,
}

/// Runs every decider on the scenario (its `[autoscaler]`, or the default one) and computes
/// the oracle.
pub fn compare_deciders(sc: &Scenario, threads: usize) -> DeciderComparison {
    let base = sc.config.autoscaler.clone().unwrap_or_default();
    let scenarios: Vec<Scenario> = DeciderKind::ALL
        .iter()
        .map(|&kind| {
            let mut s = sc.clone();
            s.config.autoscaler = Some(Autoscaler {
                decider: kind,
                ..base.clone()
            });
            s
        })
        .collect();
    let results = run_all(&scenarios, threads);
    let mut rows: Vec<DeciderRow> = DeciderKind::ALL
        .iter()
        .zip(&results)
        .map(|(kind, r)| DeciderRow {
            decider: kind.name().to_string(),
            cost: r.usage_cost,
            billed: r.cost,
            backend_hours: r.backend_seconds / 3600.0,
            over_slo_share: Some(if r.exact.served == 0 {
                0.0
            } else {
                r.exact.over_slo as f64 / r.exact.served as f64
            }),
            seconds_p99_over_slo: Some(r.seconds_p99_over_slo),
            shed: Some(r.shed.values().sum()),
            scaling_actions: r.scaling.up + r.scaling.down,
            peak_backends: r.scaling.peak_backends,
            simulated_requests: r.simulated_requests,
        })
        .collect();
    rows.push(oracle(sc, &base));
    rows.push(oracle_boot(sc, &base));
    DeciderComparison {
        schedule: sc.schedule.clone(),
        slo_ms: sc.slo() as f64 / 1e6,
        rows,
    }
}

/// The fleet the oracles run in each autoscaler interval: the smallest whose Erlang C
/// (M/M/(n x workers), the pooled fleet a central queue makes) p99 meets the SLO at that
/// interval's arrival rate, within `min` and the cap (`max` and the budget).
pub fn oracle_fleet(sc: &Scenario, a: &Autoscaler) -> Vec<u32> {
    let interval = a.interval.as_nanos().max(1);
    let cap = a
        .cost
        .budget_cap()
        .map_or(a.max.max(a.min), |b| b.min(a.max.max(a.min)));
    let lower = a.min.min(cap);
    sc.rates_per_interval(interval)
        .iter()
        .map(|&rate| {
            let model = FleetModel {
                arrival_rate: rate,
                service_rate_per_backend: sc.service_rate_per_backend(),
                workers: sc.sim.workers,
                slo: sc.slo() as f64 / NANOS_PER_SEC as f64,
                quantile: SLO_QUANTILE,
            };
            model
                .smallest_meeting_slo()
                .map_or(cap, |p| p.backends)
                .clamp(lower, cap)
        })
        .collect()
}

/// A lower bound on cost: perfect knowledge of the arrival rate in every autoscaler interval and
/// zero boot time, so each interval runs [`oracle_fleet`], billed by the second.
pub fn oracle(sc: &Scenario, a: &Autoscaler) -> DeciderRow {
    let interval = a.interval.as_nanos().max(1);
    let interval_s = interval as f64 / NANOS_PER_SEC as f64;
    let mut backend_seconds = 0.0;
    let mut peak = 0;
    let mut changes = 0;
    let mut last: Option<u32> = None;
    for (k, &n) in oracle_fleet(sc, a).iter().enumerate() {
        let len = (sc.duration_s - k as f64 * interval_s).clamp(0.0, interval_s);
        backend_seconds += n as f64 * len;
        peak = peak.max(n);
        if last.is_some_and(|l| l != n) {
            changes += 1;
        }
        last = Some(n);
    }
    let cost = backend_seconds / 3600.0 * a.cost.backend_per_hour;
    DeciderRow {
        decider: "oracle".into(),
        cost,
        billed: cost,
        backend_hours: backend_seconds / 3600.0,
        over_slo_share: None,
        seconds_p99_over_slo: None,
        shed: None,
        scaling_actions: changes,
        peak_backends: peak,
        simulated_requests: 0,
    }
}

/// The boot-aware oracle: the same fleet per interval as [`oracle`] (perfect knowledge of the
/// future), but every added backend is launched one boot time before it must serve and is paid
/// from launch, and billing periods are paid whole (see [`boot_aware_plan`]).
pub fn oracle_boot(sc: &Scenario, a: &Autoscaler) -> DeciderRow {
    let plan = boot_aware_plan(
        &oracle_fleet(sc, a),
        a.interval.as_nanos().max(1),
        sc.duration_ns(),
        sc.boot,
        a.cost.billing_period.as_nanos(),
        sc.sim.backends,
    );
    let hours = |ns: u128| ns as f64 / NANOS_PER_SEC as f64 / 3600.0;
    DeciderRow {
        decider: "oracle_boot".into(),
        cost: hours(plan.backend_nanos) * a.cost.backend_per_hour,
        billed: hours(plan.billed_nanos) * a.cost.backend_per_hour,
        backend_hours: hours(plan.backend_nanos),
        over_slo_share: None,
        seconds_p99_over_slo: None,
        shed: None,
        scaling_actions: plan.actions,
        peak_backends: plan.peak,
        simulated_requests: 0,
    }
}

/// What the boot-aware oracle's plan costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BootAwarePlan {
    /// Backend-nanoseconds paid for, from each launch (boot included) to its end.
    pub backend_nanos: u128,
    /// The same in whole billing periods per backend (at least one each).
    pub billed_nanos: u128,
    /// Launches plus removals before the end.
    pub actions: u64,
    /// Most backends paid for at once (booting ones included).
    pub peak: u32,
}

/// The cheapest plan (in billed time) that has `fleet[k]` backends serving throughout interval
/// k, when an added backend serves only `boot` after its launch and is paid from launch, in
/// whole `period`s (0: by the second). The `initial` backends serve from time 0 without a boot
/// (the simulator starts with them ready).
///
/// The demand is cut into levels: level j is wanted while the fleet is at least j. Each level is
/// served by its own backends, and for each level a dynamic programme over its busy spans picks
/// which consecutive spans one backend covers (kept through the gaps between them) and where to
/// stop it and launch another (paying the boot again, and a part-used billing period). Billed
/// by the second this is the exact optimum (any plan can be rearranged into levels without
/// costing more); with whole billing periods it is the best plan that keeps to the levels, a
/// near-optimum that an online decider cannot beat without luck.
pub fn boot_aware_plan(
    fleet: &[u32],
    interval: Nanos,
    duration: Nanos,
    boot: Nanos,
    period: Nanos,
    initial: u32,
) -> BootAwarePlan {
    let billed = |life: u128| -> u128 {
        if period == 0 {
            life
        } else {
            let p = period as u128;
            life.div_ceil(p).max(1) * p
        }
    };
    let span_of = |k: usize| -> (u128, u128) {
        let from = (k as u128 * interval as u128).min(duration as u128);
        let to = ((k as u128 + 1) * interval as u128).min(duration as u128);
        (from, to)
    };
    let top = fleet.iter().copied().max().unwrap_or(0);
    let mut plan = BootAwarePlan::default();
    // Lives as (start, end) in "nanoseconds + boot", so a launch before time 0 stays unsigned.
    let shift = boot as u128;
    let mut lives: Vec<(u128, u128, bool)> = Vec::new();
    for level in 1..=top {
        // Busy spans of this level: maximal runs of intervals where the fleet reaches it.
        let mut spans: Vec<(u128, u128)> = Vec::new();
        for (k, &n) in fleet.iter().enumerate() {
            let (from, to) = span_of(k);
            if n < level || to <= from {
                continue;
            }
            match spans.last_mut() {
                Some(last) if last.1 == from => last.1 = to,
                _ => spans.push((from, to)),
            }
        }
        if spans.is_empty() {
            continue;
        }
        // A backend covering spans i..=m lives from its launch to the end of span m.
        let launch = |i: usize| -> u128 {
            if level <= initial && spans[i].0 == 0 {
                shift
            } else {
                spans[i].0 // (start + boot) - boot
            }
        };
        // best[m + 1]: the cheapest billed time covering spans 0..=m; first[m + 1]: where the
        // last backend's spans start.
        let mut best: Vec<u128> = vec![0; spans.len() + 1];
        let mut first: Vec<usize> = vec![0; spans.len() + 1];
        for m in 0..spans.len() {
            let end = spans[m].1 + shift;
            let mut b = u128::MAX;
            for i in (0..=m).rev() {
                let group = billed(end - launch(i));
                if group >= b {
                    break; // earlier starts only cost more for this backend
                }
                let total = best[i] + group;
                if total < b {
                    b = total;
                    first[m + 1] = i;
                }
            }
            best[m + 1] = b;
        }
        let mut m = spans.len();
        while m > 0 {
            let i = first[m];
            lives.push((
                launch(i),
                spans[m - 1].1 + shift,
                level <= initial && spans[i].0 == 0,
            ));
            m = i;
        }
        plan.billed_nanos += best[spans.len()];
    }
    let end = duration as u128 + shift;
    let mut edges: Vec<(u128, i64)> = Vec::new();
    for &(start, stop, was_initial) in &lives {
        plan.backend_nanos += stop - start;
        if !was_initial {
            plan.actions += 1;
        }
        if stop < end {
            plan.actions += 1;
        }
        edges.push((start, 1));
        edges.push((stop, -1));
    }
    edges.sort();
    let mut now = 0i64;
    for (_, d) in edges {
        now += d;
        plan.peak = plan.peak.max(now.max(0) as u32);
    }
    plan
}

impl DeciderComparison {
    /// The table `--compare` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario: {}; SLO p99 {:.0} ms",
            self.schedule, self.slo_ms
        );
        let _ = writeln!(
            out,
            "{:<16} {:>10} {:>10} {:>10} {:>9} {:>10} {:>9} {:>8} {:>6}",
            "decider",
            "cost",
            "billed",
            "backend-h",
            ">SLO %",
            "s p99>SLO",
            "shed",
            "actions",
            "peak"
        );
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<16} {:>10.4} {:>10.4} {:>10.2} {:>9} {:>10} {:>9} {:>8} {:>6}",
                r.decider,
                r.cost,
                r.billed,
                r.backend_hours,
                dash(r.over_slo_share.map(|s| format!("{:.3}", s * 100.0))),
                dash(r.seconds_p99_over_slo.map(|s| s.to_string())),
                dash(r.shed.map(|s| s.to_string())),
                r.scaling_actions,
                r.peak_backends
            );
        }
        let _ = writeln!(
            out,
            "cost = backend-hours x price; billed = whole billing periods; oracle = perfect \
             knowledge of the rate per interval, zero boot time, Erlang C fleet per interval; \
             oracle_boot = the same fleet, each backend launched a boot time ahead and paid \
             from launch in whole billing periods"
        );
        out
    }
}

/// A run whose last answer comes this long after its last arrival is flagged: a stable queue
/// drains within a few service times, one that could not keep up takes as long as its backlog.
const SATURATED_TAIL_S: f64 = 1.0;

/// One row of the policy comparison: a policy at one utilisation.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyRow {
    /// The policy's config name.
    pub policy: String,
    /// Offered load over the fleet's capacity.
    pub utilisation: f64,
    /// The arrival rate that makes it, requests per second.
    pub rate: f64,
    /// Exact mean sojourn, ms.
    pub mean_ms: f64,
    /// p99 sojourn, ms.
    pub p99_ms: f64,
    /// p99.9 sojourn, ms.
    pub p999_ms: f64,
    /// Requests shed by the balancer.
    pub shed: u64,
    /// Seconds from the end of the arrivals to the last answer: near one service time for a
    /// stable system, the backlog's drain time for one that could not keep up.
    pub tail_s: f64,
    /// The busiest backend's offered load: its requests x mean service time / (speed x workers)
    /// over the run. At 1 or more that backend cannot keep up and its queue grows with the run.
    pub max_backend_load: f64,
    /// Whether the backlog left when the arrivals stopped took over a second to drain: some
    /// queue could not keep up, and the figures grow with the run's length.
    pub saturated: bool,
    /// Requests simulated.
    pub simulated_requests: u64,
}

/// The policy comparison of one fleet.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyComparison {
    /// The fleet: backends, speeds, workers, service time, capacity.
    pub fleet: String,
    /// One row per (utilisation, policy).
    pub rows: Vec<PolicyRow>,
}

/// Runs every policy on the scenario's starting fleet (no autoscaler) at each utilisation: the
/// arrival rate is that share of the fleet's capacity (sum of speeds x workers / mean service
/// time), with the scenario's arrival process.
pub fn compare_policies(sc: &Scenario, utilisations: &[f64], threads: usize) -> PolicyComparison {
    let capacity = sc.fleet_capacity_rps();
    let mut scenarios = Vec::new();
    let mut keys = Vec::new();
    for &u in utilisations {
        for kind in PolicyKind::ALL {
            let mut s = sc.clone();
            s.config.autoscaler = None;
            s.config.balancer.policy = kind;
            s.source = crate::load::schedule::Source::Rate(
                crate::load::schedule::Profile::Constant(u * capacity),
                match sc.sim.arrivals {
                    ebbtide_config::simulation::SimArrivals::Poisson => {
                        crate::load::schedule::ArrivalProcess::Poisson
                    }
                    ebbtide_config::simulation::SimArrivals::Uniform => {
                        crate::load::schedule::ArrivalProcess::Uniform
                    }
                },
            );
            s.schedule = format!("const:{}", u * capacity);
            scenarios.push(s);
            keys.push((kind, u));
        }
    }
    let results = run_all(&scenarios, threads);
    let rows = keys
        .into_iter()
        .zip(&results)
        .map(|((kind, u), r)| PolicyRow {
            policy: kind.name().to_string(),
            utilisation: u,
            rate: u * capacity,
            mean_ms: r.exact.mean_sojourn_s() * 1e3,
            p99_ms: r.report.latency_ms.p99,
            p999_ms: r.report.latency_ms.p999,
            shed: r.shed.values().sum(),
            tail_s: (r.report.elapsed_s - r.report.duration_s).max(0.0),
            max_backend_load: max_backend_load(sc, r),
            saturated: r.report.elapsed_s - r.report.duration_s > SATURATED_TAIL_S,
            simulated_requests: r.simulated_requests,
        })
        .collect();
    PolicyComparison {
        fleet: format!(
            "{} backends, speeds {:?}, {} worker(s) each, service {}, capacity {}, {:.0}s per run",
            sc.sim.backends,
            sc.sim.speeds,
            sc.sim.workers,
            sc.service_time,
            sc.capacity_setting().name(),
            sc.duration_s
        ),
        rows,
    }
}

/// The busiest backend's offered load over a run (see [`PolicyRow::max_backend_load`]).
fn max_backend_load(sc: &Scenario, r: &RunResult) -> f64 {
    let speeds = &sc.sim.speeds;
    let mean = sc.service_time.mean_secs();
    let span = (sc.duration_s - sc.sim.warmup.0.as_secs_f64()).max(1e-9);
    r.exact
        .per_backend
        .iter()
        .enumerate()
        .map(|(id, (served, _))| {
            let speed = speeds[id % speeds.len()];
            *served as f64 / span * mean / (speed * sc.sim.workers as f64)
        })
        .fold(0.0, f64::max)
}

impl PolicyComparison {
    /// The table `--compare-policies` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "fleet: {}", self.fleet);
        let _ = writeln!(
            out,
            "{:<22} {:>5} {:>9} {:>10} {:>10} {:>10} {:>6} {:>9} {:>8}",
            "policy",
            "util",
            "rate/s",
            "mean ms",
            "p99 ms",
            "p99.9 ms",
            "shed",
            "max load",
            "tail s"
        );
        let mut last_u = None;
        for r in &self.rows {
            if last_u.is_some_and(|u| u != r.utilisation) {
                out.push('\n');
            }
            last_u = Some(r.utilisation);
            let _ = writeln!(
                out,
                "{:<22} {:>4.0}% {:>9.1} {:>10.3} {:>10.3} {:>10.3} {:>6} {:>9.3} {:>8.1}{}",
                r.policy,
                r.utilisation * 100.0,
                r.rate,
                r.mean_ms,
                r.p99_ms,
                r.p999_ms,
                r.shed,
                r.max_backend_load,
                r.tail_s,
                if r.saturated {
                    "  saturated: grows with the run"
                } else {
                    ""
                }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = NANOS_PER_SEC;

    /// 10 s in 1 s intervals: one backend throughout (the initial one), two more in seconds
    /// 2-3 and in second 8; boots take 2 s.
    const FLEET: [u32; 10] = [1, 1, 3, 3, 1, 1, 1, 1, 3, 1];

    #[test]
    fn boot_aware_oracle_by_the_second_launches_a_boot_ahead_and_stops_in_long_gaps() {
        let plan = boot_aware_plan(&FLEET, S, 10 * S, 2 * S, 0, 1);
        // Level 1: the initial backend, 10 s. Levels 2 and 3, each: launched at 0 for [2, 4)
        // (4 s paid), stopped, launched at 6 for [8, 9) (3 s): 7 s; keeping it through the
        // 4 s gap would pay 9 s. 10 + 7 + 7 = 24 backend-seconds.
        assert_eq!(plan.backend_nanos, 24 * S as u128);
        assert_eq!(plan.billed_nanos, 24 * S as u128);
        // Two levels x (launch, stop, launch, stop): 8 actions; the initial backend runs on.
        assert_eq!(plan.actions, 8);
        // Second 6-7: the initial backend and two booting.
        assert_eq!(plan.peak, 3);
    }

    #[test]
    fn boot_aware_oracle_keeps_a_backend_through_a_gap_its_billing_period_already_paid() {
        // Billed in 10 s periods: stopping and relaunching pays two periods per level, keeping
        // the backend from 0 to 9 pays one.
        let plan = boot_aware_plan(&FLEET, S, 10 * S, 2 * S, 10 * S, 1);
        assert_eq!(plan.billed_nanos, 30 * S as u128);
        assert_eq!(plan.backend_nanos, (10 + 9 + 9) * S as u128);
        assert_eq!(plan.actions, 4);
        // In 4 s periods stopping wins again: apart 4 s + 3 s bill 4 + 4, together 9 s bills
        // 12; the initial backend's 10 s bill 12.
        let plan = boot_aware_plan(&FLEET, S, 10 * S, 2 * S, 4 * S, 1);
        assert_eq!(plan.billed_nanos, (12 + 8 + 8) * S as u128);
        assert_eq!(plan.backend_nanos, 24 * S as u128);
    }

    #[test]
    fn boot_aware_oracle_costs_at_least_the_instant_one() {
        let instant: u32 = FLEET.iter().sum();
        for boot in [0, S, 5 * S] {
            for period in [0, S, 60 * S] {
                let plan = boot_aware_plan(&FLEET, S, 10 * S, boot, period, 1);
                assert!(plan.billed_nanos >= plan.backend_nanos);
                assert!(
                    plan.backend_nanos >= instant as u128 * S as u128,
                    "{plan:?}"
                );
            }
        }
        // Zero boot, by the second: exactly the instant oracle.
        let plan = boot_aware_plan(&FLEET, S, 10 * S, 0, 0, 1);
        assert_eq!(plan.backend_nanos, instant as u128 * S as u128);
    }
}
