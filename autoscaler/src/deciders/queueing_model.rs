//! `queueing_model`: the smallest fleet whose predicted p99 meets `slo_p99`, from the measured
//! arrival rate and per-backend service rate, by Erlang C.
//!
//! Model: the fleet is one M/M/(n x workers) queue. The balancer keeps requests in its own queue
//! while every backend is full and hands each to the first free worker (central_queue does just
//! that; least_outstanding and p2c come close), so the fleet pools its servers.
//! The alternative, n separate M/M/workers queues with an even split, describes random or
//! round-robin dispatch; it needs linearly more backends as load grows, while pooling gives
//! square-root staffing (c ~ a + beta sqrt(a)): capacity grows sub-linearly with load, which is
//! the point of a central balancer. With a non-pooling policy the prediction is optimistic.
//!
//! Per decision:
//!
//! ```text
//! lambda = max(stable-window, panic-window arrival rate)
//!          (up on the short window, down only when the long one agrees)
//! mu     = stable-window service rate per backend / workers
//! n      = the smallest fleet with p99(M/M/(n x workers)) <= slo_p99
//! ```
//!
//! where p99 is the exact sojourn (wait + service) quantile from [`crate::erlang`]. If the
//! service time alone misses the SLO (e^(-mu slo) > 1%), no fleet can meet it; n is then the
//! smallest fleet where at most 1% of requests wait, since more backends would not help.
//! Without a measured service rate or arrival rate, no change.

use super::{secs, Decider};
use crate::decision::Decision;
use crate::erlang::FleetModel;
use crate::fleet::FleetView;
use crate::windows::Windows;
use ebbtide_config::autoscaler::Autoscaler;
use ebbtide_config::time::Nanos;

/// The quantile `slo_p99` is about.
pub const SLO_QUANTILE: f64 = 0.99;

/// The Erlang C sizing rule; see the module notes.
#[derive(Debug, Clone)]
pub struct QueueingModel {
    workers: u32,
    slo: f64,
}

impl QueueingModel {
    /// The rule as `[autoscaler]` configures it.
    pub fn new(cfg: &Autoscaler) -> QueueingModel {
        QueueingModel {
            workers: cfg.workers.max(1),
            slo: cfg.slo_p99.0.as_secs_f64(),
        }
    }

    /// The fleet model at the current windows: arrival rate (max of both windows) and measured
    /// service rate; `None` when either is missing. Shared with the cost rules.
    pub fn model(windows: &Windows, now: Nanos, workers: u32, slo: f64) -> Option<FleetModel> {
        let stable = windows.stable(now);
        let panic = windows.panic(now);
        let arrival_rate = match (stable.arrival_rate, panic.arrival_rate) {
            (Some(s), Some(p)) => s.max(p),
            (s, p) => s.or(p)?,
        };
        let mu = stable
            .service_rate_per_backend
            .or(panic.service_rate_per_backend)
            .filter(|m| m.is_finite() && *m > 0.0)?;
        Some(FleetModel {
            arrival_rate: arrival_rate.max(0.0),
            service_rate_per_backend: mu,
            workers,
            slo,
            quantile: SLO_QUANTILE,
        })
    }
}

impl Decider for QueueingModel {
    fn name(&self) -> &'static str {
        "queueing_model"
    }

    fn decide(&mut self, windows: &Windows, fleet: &FleetView, now: Nanos) -> Decision {
        let current = fleet.current();
        let Some(model) = Self::model(windows, now, self.workers, self.slo) else {
            let desired = fleet.clamp(current);
            return Decision::new(
                desired,
                current,
                format!(
                    "no arrival rate or service rate per backend measured: no change from \
                     {current}; desired {desired}"
                ),
            );
        };
        let stable = windows.stable(now);
        let panic = windows.panic(now);
        let slo_ms = self.slo * 1000.0;
        let (wanted, how) = match model.smallest_meeting_slo() {
            Some(p) if model.slo_reachable() => (
                p.backends,
                format!(
                    "{} backends give predicted p99 {:.1}ms <= SLO {slo_ms:.0}ms",
                    p.backends,
                    p.sojourn_quantile * 1000.0
                ),
            ),
            Some(p) => (
                p.backends,
                format!(
                    "the SLO {slo_ms:.0}ms is out of reach (service alone has p99 {:.1}ms): {} \
                     backends, where at most 1% wait",
                    100f64.ln() / model.service_rate_per_server() * 1000.0,
                    p.backends
                ),
            ),
            None => (
                fleet.max,
                "no fleet size found within the search limit: max".to_string(),
            ),
        };
        let desired = fleet.clamp(wanted);
        let at_desired = model.predict(desired);
        let mut reason = format!(
            "arrival {:.1}/s (stable {:.1}, panic {:.1} over {}s/{}s), {:.1}/s per backend of {} \
             workers: M/M/c with {:.1} erlangs offered; {how}",
            model.arrival_rate,
            stable.arrival_rate.unwrap_or(0.0),
            panic.arrival_rate.unwrap_or(0.0),
            secs(stable.covered()),
            secs(panic.covered()),
            model.service_rate_per_backend,
            self.workers,
            model.arrival_rate / model.service_rate_per_server(),
        );
        if wanted > 1 && model.slo_reachable() && desired == wanted {
            let fewer = model.predict(wanted - 1);
            reason.push_str(&if fewer.sojourn_quantile.is_finite() {
                format!(
                    " ({} would give {:.1}ms)",
                    wanted - 1,
                    fewer.sojourn_quantile * 1000.0
                )
            } else {
                format!(" ({} would not keep up)", wanted - 1)
            });
        }
        reason.push_str(&format!("; desired {desired}"));
        if desired != wanted {
            reason.push_str(&format!(
                " (within [{}, {}]: predicted p99 {:.1}ms)",
                fleet.min,
                fleet.max,
                at_desired.sojourn_quantile * 1000.0
            ));
        }
        Decision::new(desired, wanted, reason)
            .input("arrival_rate", model.arrival_rate)
            .input("service_rate_per_backend", model.service_rate_per_backend)
            .input("workers", self.workers as f64)
            .input(
                "offered_load_erlangs",
                model.arrival_rate / model.service_rate_per_server(),
            )
            .input("slo_p99_ms", slo_ms)
            .input("predicted_p99_ms", at_desired.sojourn_quantile * 1000.0)
            .input("predicted_slo_violation", at_desired.slo_violation)
            .input("ready", fleet.ready as f64)
            .input("starting", fleet.starting as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::S;
    use crate::windows::Observation;
    use ebbtide_config::time::HumanDuration;

    fn cfg() -> Autoscaler {
        Autoscaler {
            decider: ebbtide_config::autoscaler::DeciderKind::QueueingModel,
            workers: 4,
            slo_p99: HumanDuration::from_millis(200),
            min: 1,
            max: 100_000,
            ..Default::default()
        }
    }

    /// Desired fleet at a steady `rate` with 20ms mean service (4 workers: 200/s per backend).
    fn desired_at(rate: f64) -> Decision {
        let c = cfg();
        let mut d = QueueingModel::new(&c);
        let mut w = Windows::from_config(&c);
        for t in 0..60 {
            w.observe(Observation {
                at: t * S,
                arrival_rate: rate,
                service_rate_per_backend: Some(200.0),
                ready: 1,
                ..Default::default()
            });
        }
        d.decide(&w, &FleetView::counts(1, 0, 1, 100_000), 59 * S)
    }

    #[test]
    fn meets_the_slo_by_its_own_formula_with_the_fewest_backends() {
        for rate in [10.0, 100.0, 1000.0, 10_000.0] {
            let dec = desired_at(rate);
            let model = FleetModel {
                arrival_rate: rate,
                service_rate_per_backend: 200.0,
                workers: 4,
                slo: 0.2,
                quantile: 0.99,
            };
            let n = dec.desired;
            assert!(
                model.predict(n).sojourn_quantile <= 0.2,
                "{rate}: {}",
                dec.reason
            );
            assert!(
                n == 1 || model.predict(n - 1).sojourn_quantile > 0.2,
                "{rate}: {n} is not the fewest"
            );
            assert!(dec.inputs["predicted_p99_ms"] <= 200.0);
        }
    }

    #[test]
    fn fleet_grows_sub_linearly_with_load() {
        let small = desired_at(1000.0).desired;
        let big = desired_at(10_000.0).desired;
        // 1000/s is 5 backends' worth of pure capacity, 10,000/s is 50.
        assert!(small > 5, "must keep up: {small}");
        assert!(big > 50, "must keep up: {big}");
        // 10x the load needs clearly less than 10x the backends (square-root staffing).
        assert!(
            (big as f64) < 0.9 * 10.0 * small as f64,
            "1000/s -> {small}, 10000/s -> {big}"
        );
        // And the spare capacity shrinks relative to the load.
        let spare_small = small as f64 - 1000.0 / 200.0;
        let spare_big = big as f64 - 10_000.0 / 200.0;
        assert!(spare_big / 50.0 < spare_small / 5.0);
        // 100x the load: the spare share keeps shrinking.
        let huge = desired_at(100_000.0).desired;
        let spare_huge = huge as f64 - 100_000.0 / 200.0;
        assert!(spare_huge / 500.0 < spare_big / 50.0, "{big} -> {huge}");
    }

    #[test]
    fn scales_up_on_the_panic_window_and_down_on_the_stable_one() {
        let c = cfg();
        let mut d = QueueingModel::new(&c);
        let mut w = Windows::from_config(&c);
        let obs = |t: u64, rate: f64| Observation {
            at: t * S,
            arrival_rate: rate,
            service_rate_per_backend: Some(200.0),
            ready: 4,
            ..Default::default()
        };
        for t in 0..60 {
            w.observe(obs(t, 100.0));
        }
        let base = d
            .decide(&w, &FleetView::counts(4, 0, 1, 100), 59 * S)
            .desired;
        for t in 60..66 {
            w.observe(obs(t, 400.0));
        }
        // The spike fills the panic window: sized for 400/s at once.
        let up = d.decide(&w, &FleetView::counts(4, 0, 1, 100), 65 * S);
        assert!(up.desired > base, "{}", up.reason);
        assert_eq!(up.inputs["arrival_rate"], 400.0);
        // Back to 100/s: the stable window still averages the spike in, so no drop to base yet.
        for t in 66..72 {
            w.observe(obs(t, 100.0));
        }
        let after = d.decide(&w, &FleetView::counts(8, 0, 1, 100), 71 * S);
        assert!(after.inputs["arrival_rate"] > 100.0);
        assert!(after.desired >= base);
    }

    #[test]
    fn holds_without_a_service_rate() {
        let c = cfg();
        let mut d = QueueingModel::new(&c);
        let mut w = Windows::from_config(&c);
        w.observe(Observation {
            at: 0,
            arrival_rate: 1000.0,
            ready: 3,
            ..Default::default()
        });
        let dec = d.decide(&w, &FleetView::counts(3, 0, 1, 10), 0);
        assert_eq!(dec.desired, 3);
        assert!(dec.reason.contains("no arrival rate or service rate"));
    }

    #[test]
    fn an_unreachable_slo_sizes_for_no_waiting() {
        let c = Autoscaler {
            slo_p99: HumanDuration::from_millis(100),
            ..cfg()
        };
        let mut d = QueueingModel::new(&c);
        let mut w = Windows::from_config(&c);
        // 4 workers at 20/s per backend: 200ms mean service, p99 of service alone 921ms.
        w.observe(Observation {
            at: 0,
            arrival_rate: 100.0,
            service_rate_per_backend: Some(20.0),
            ready: 3,
            ..Default::default()
        });
        let dec = d.decide(&w, &FleetView::counts(3, 0, 1, 1000), 0);
        assert!(dec.reason.contains("out of reach"), "{}", dec.reason);
        assert!(dec.desired > 5 && dec.desired < 20, "{}", dec.reason);
    }

    #[test]
    fn the_cap_reports_what_was_wanted() {
        let c = cfg();
        let mut d = QueueingModel::new(&c);
        let mut w = Windows::from_config(&c);
        w.observe(Observation {
            at: 0,
            arrival_rate: 1000.0,
            service_rate_per_backend: Some(200.0),
            ready: 3,
            ..Default::default()
        });
        // 1000/s needs more than 5 backends of 200/s; max is 4, which cannot keep up.
        let dec = d.decide(&w, &FleetView::counts(3, 0, 1, 4), 0);
        assert_eq!(dec.desired, 4);
        assert!(dec.wanted > 5, "{}", dec.reason);
        assert_eq!(dec.inputs["predicted_p99_ms"], f64::INFINITY);
    }
}
