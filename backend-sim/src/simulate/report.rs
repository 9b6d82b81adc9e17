//! The simulation's report: `ebbtide load`'s report (same JSON keys, series, CSV and plot, so a
//! live run and its simulation can be laid side by side) plus what only a simulation knows:
//! requests simulated, backend-seconds and cost, SLO misses, scaling activity, and the speed of
//! the simulator itself.

use super::engine::{RunResult, ScalingSummary};
use crate::load::report::Report;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The JSON `ebbtide simulate --json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct SimReport {
    /// `ebbtide load`'s report, its keys at the top level.
    #[serde(flatten)]
    pub load: Report,
    /// Requests simulated, warm-up included.
    pub simulated_requests: u64,
    /// Backend-seconds paid for (starting, serving and draining).
    pub backend_seconds: f64,
    /// Cost as the autoscaler's `CostMeter` bills it (whole billing periods per backend).
    pub cost: f64,
    /// Backend-hours x price (billing by the second).
    pub usage_cost: f64,
    /// The balancing policy.
    pub policy: String,
    /// The seed of arrivals, service times and keys.
    pub seed: u64,
    /// The latency objective the SLO figures are about, ms (the autoscaler's `slo_p99`).
    pub slo_ms: f64,
    /// Answered requests slower than the SLO.
    pub over_slo: u64,
    /// `over_slo` over requests answered by a backend.
    pub over_slo_share: f64,
    /// Seconds whose windowed p99 (the balancer's signal window) was over the SLO.
    pub seconds_p99_over_slo: u64,
    /// Requests the balancer shed with 503.
    pub shed: u64,
    /// Of those, by reason: `queue_full`, `queue_timeout`.
    pub shed_by_reason: BTreeMap<String, u64>,
    /// Exact mean wait before service (balancer queue plus backend queue), ms.
    pub mean_wait_ms: f64,
    /// Exact mean sojourn (arrival to answer), ms.
    pub mean_sojourn_ms: f64,
    /// What the autoscaler did.
    pub scaling: ScalingSummary,
    /// Wall-clock seconds the simulation took: the only field that differs between two runs
    /// with the same seed.
    pub wall_seconds: f64,
    /// Simulated requests per wall-clock second (also wall-clock dependent).
    pub simulated_requests_per_wall_second: f64,
}

impl SimReport {
    /// The report of one run that took `wall_seconds`.
    pub fn new(result: &RunResult, policy: &str, seed: u64, wall_seconds: f64) -> SimReport {
        let e = &result.exact;
        let shed: u64 = result.shed.values().sum();
        SimReport {
            load: result.report.clone(),
            simulated_requests: result.simulated_requests,
            backend_seconds: result.backend_seconds,
            cost: result.cost,
            usage_cost: result.usage_cost,
            policy: policy.to_string(),
            seed,
            slo_ms: result.slo_ns as f64 / 1e6,
            over_slo: e.over_slo,
            over_slo_share: if e.served == 0 {
                0.0
            } else {
                e.over_slo as f64 / e.served as f64
            },
            seconds_p99_over_slo: result.seconds_p99_over_slo,
            shed,
            shed_by_reason: result.shed.clone(),
            mean_wait_ms: e.mean_wait_s() * 1e3,
            mean_sojourn_ms: e.mean_sojourn_s() * 1e3,
            scaling: result.scaling.clone(),
            wall_seconds,
            simulated_requests_per_wall_second: result.simulated_requests as f64
                / wall_seconds.max(1e-9),
        }
    }

    /// `ebbtide load`'s summary table followed by the simulation's own lines.
    pub fn table(&self) -> String {
        let mut out = self.load.table();
        let s = &self.scaling;
        let _ = writeln!(
            out,
            "slo           {:.1} ms: {} answers over it ({:.3}%), {} s with windowed p99 over it, {} shed",
            self.slo_ms,
            self.over_slo,
            self.over_slo_share * 100.0,
            self.seconds_p99_over_slo,
            self.shed
        );
        let _ = writeln!(
            out,
            "fleet         {:.1} backend-hours, cost {:.4} (billed {:.4}), peak {} backends",
            self.backend_seconds / 3600.0,
            self.usage_cost,
            self.cost,
            s.peak_backends
        );
        if let Some(d) = &s.decider {
            let _ = writeln!(
                out,
                "autoscaler    {d}: {} up, {} down, {} hold; {} launched, {} removed",
                s.up, s.down, s.hold, s.launched, s.removed
            );
        }
        let _ = writeln!(
            out,
            "simulated     {} requests in {:.2} s wall: {:.0} simulated requests per wall second",
            self.simulated_requests, self.wall_seconds, self.simulated_requests_per_wall_second
        );
        out
    }
}
