//! Deciders: the rules that turn signal windows into a desired backend count. One trait, one
//! file per rule, chosen by `autoscaler.decider`; [`build`] wraps the chosen one in the cost
//! rules, which is what the control loop and the simulator run.

pub mod backlog;
pub mod concurrency;
pub mod cost_rules;
pub mod queueing_model;
pub mod target_tracking;

pub use backlog::Backlog;
pub use concurrency::Concurrency;
pub use cost_rules::CostRules;
pub use queueing_model::QueueingModel;
pub use target_tracking::TargetTracking;

use crate::decision::Decision;
use crate::fleet::FleetView;
use crate::windows::Windows;
use ebbtide_config::autoscaler::{Autoscaler, DeciderKind};
use ebbtide_config::time::Nanos;

/// A scaling rule. Sans-IO: time comes in as `now`, signals as windows, the fleet as a view;
/// it keeps whatever memory it needs (stabilisation, panic state) between calls, so the live
/// loop and the simulator drive the same code and get the same answers.
pub trait Decider: Send {
    /// The config name, for events and metrics.
    fn name(&self) -> &'static str;

    /// The desired fleet size now, with its reason. Called once per `autoscaler.interval`,
    /// after the latest observation went into `windows`.
    fn decide(&mut self, windows: &Windows, fleet: &FleetView, now: Nanos) -> Decision;
}

impl<D: Decider + ?Sized> Decider for Box<D> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn decide(&mut self, windows: &Windows, fleet: &FleetView, now: Nanos) -> Decision {
        (**self).decide(windows, fleet, now)
    }
}

/// The decider `autoscaler.decider` names, without the cost rules (for comparing rules alone).
pub fn build_decider(cfg: &Autoscaler) -> Box<dyn Decider> {
    match cfg.decider {
        DeciderKind::TargetTracking => Box::new(TargetTracking::new(cfg)),
        DeciderKind::Concurrency => Box::new(Concurrency::new(cfg)),
        DeciderKind::QueueingModel => Box::new(QueueingModel::new(cfg)),
        DeciderKind::Backlog => Box::new(Backlog::new(cfg)),
    }
}

/// The decider `autoscaler.decider` names, wrapped in the cost rules of `[autoscaler.cost]`:
/// what `ebbtide serve`, `ebbtide autoscale` and the simulator run.
pub fn build(cfg: &Autoscaler) -> Box<dyn Decider> {
    Box::new(CostRules::new(build_decider(cfg), cfg))
}

/// ceil(x) as a backend count, forgiving float noise (2.0000000001 backends is 2) and clamping
/// nonsense (NaN, negative) to 0.
pub(crate) fn ceil_count(x: f64) -> u32 {
    if x.is_nan() || x <= 0.0 {
        0
    } else {
        (x - 1e-9).ceil().clamp(0.0, u32::MAX as f64) as u32
    }
}

/// Seconds, for reasons and inputs.
pub(crate) fn secs(n: Nanos) -> f64 {
    n as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::windows::Observation;

    #[test]
    fn build_picks_the_configured_decider() {
        for kind in DeciderKind::ALL {
            let cfg = Autoscaler {
                decider: kind,
                ..Default::default()
            };
            assert_eq!(build_decider(&cfg).name(), kind.name());
            // The cost rules keep the inner name.
            assert_eq!(build(&cfg).name(), kind.name());
        }
    }

    #[test]
    fn every_decider_holds_within_bounds_without_signals() {
        for kind in DeciderKind::ALL {
            let cfg = Autoscaler {
                decider: kind,
                ..Default::default()
            };
            let mut d = build(&cfg);
            let w = Windows::from_config(&cfg);
            let fleet = FleetView::counts(3, 0, 2, 8);
            let dec = d.decide(&w, &fleet, 0);
            assert_eq!(dec.desired, 3, "{}: {}", kind.name(), dec.reason);
            let fleet = FleetView::counts(0, 0, 2, 8);
            assert_eq!(
                d.decide(&w, &fleet, 1).desired,
                2,
                "{} raises to min",
                kind.name()
            );
        }
    }

    #[test]
    fn every_decider_scales_up_under_heavy_load() {
        for kind in DeciderKind::ALL {
            let cfg = Autoscaler {
                decider: kind,
                ..Default::default()
            };
            let mut d = build(&cfg);
            let mut w = Windows::from_config(&cfg);
            for t in 0..10u64 {
                w.observe(Observation {
                    at: t * 1_000_000_000,
                    concurrency: 40.0,
                    arrival_rate: 400.0,
                    completion_rate: 100.0,
                    queue_depth: 32.0,
                    p99_ms: Some(2000.0),
                    service_rate_per_backend: Some(50.0),
                    ready: 2,
                    starting: 0,
                });
            }
            let dec = d.decide(&w, &FleetView::counts(2, 0, 2, 8), 9_000_000_000);
            assert!(dec.desired > 2, "{}: {}", kind.name(), dec.reason);
            assert!(dec.desired <= 8);
        }
    }

    #[test]
    fn ceil_count_forgives_float_noise() {
        assert_eq!(ceil_count(2.000_000_000_1), 2);
        assert_eq!(ceil_count(2.01), 3);
        assert_eq!(ceil_count(f64::NAN), 0);
        assert_eq!(ceil_count(-3.0), 0);
        assert_eq!(ceil_count(f64::INFINITY), u32::MAX);
    }
}
