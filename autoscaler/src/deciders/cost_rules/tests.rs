//! Tests of the parent module, kept in their own file so the rule reads on one screen.

use super::*;
use crate::billing::CostMeter;
use crate::deciders::QueueingModel;
use crate::erlang::FleetModel;
use crate::fleet::Member;
use crate::testkit::{run, FluidFleet, S};
use crate::windows::Observation;
use ebbtide_config::autoscaler::{Cost, DeciderKind};
use ebbtide_config::time::HumanDuration;

/// An inner decider that wants whatever the test says.
struct Wants(u32);

impl Decider for Wants {
    fn name(&self) -> &'static str {
        "wants"
    }
    fn decide(&mut self, _: &Windows, fleet: &FleetView, _: Nanos) -> Decision {
        Decision::new(fleet.clamp(self.0), self.0, format!("wants {}", self.0))
    }
}

/// One observation per second from 0 to 20 s, at the arrival rate `rate(t)`.
fn observe_rates(w: &mut Windows, rate: impl Fn(u64) -> f64) {
    for t in 0..=20u64 {
        w.observe(Observation {
            at: t * S,
            arrival_rate: rate(t),
            ..Default::default()
        });
    }
}

fn cfg() -> Autoscaler {
    Autoscaler {
        min: 1,
        max: 100,
        boot_time: HumanDuration::from_secs(0),
        cost: Cost {
            backend_per_hour: 0.36, // 0.0001 per second
            billing_period: HumanDuration::from_secs(60),
            release_margin: Some(HumanDuration::from_secs(5)),
            budget_per_hour: 100.0,
            slo_violation_cost: 0.0,
        },
        ..Default::default()
    }
}

fn steady(rate: f64, until: u64) -> Windows {
    let mut w = Windows::new(60 * S, 6 * S);
    for t in 0..=until {
        w.observe(Observation {
            at: t * S,
            arrival_rate: rate,
            completion_rate: rate,
            service_rate_per_backend: Some(200.0), // 4 workers x 20ms
            ready: 4,
            ..Default::default()
        });
    }
    w
}

fn member(id: &str, launched_s: u64) -> Member {
    Member {
        id: id.into(),
        launched_at: launched_s * S,
        state: BackendState::Active,
    }
}

#[test]
fn billing_period_keeps_a_paid_backend_until_near_its_end() {
    let c = cfg();
    let mut d = CostRules::new(Wants(2), &c);
    let w = steady(10.0, 100);
    // At 100s: a paid to 120 (20s left), b to 110 (10s), c to 103 (3s), d to 160.
    let fleet = FleetView::from_members(
        vec![
            member("a", 0),
            member("b", 50),
            member("c", 43),
            member("d", 100),
        ],
        1,
        100,
    );
    let dec = d.decide(&w, &fleet, 100 * S);
    // Wants 2 of 4: only c is within 5s of its period's end; b is kept for now.
    assert_eq!(dec.remove, vec!["c".to_string()], "{}", dec.reason);
    assert_eq!(dec.desired, 3, "{}", dec.reason);
    assert!(dec.reason.contains("keeping 1 backends"), "{}", dec.reason);
    // At 106s b is within its margin (4s left) and goes.
    let fleet = FleetView::from_members(
        vec![member("a", 0), member("b", 50), member("d", 100)],
        1,
        100,
    );
    let dec = d.decide(&w, &fleet, 106 * S);
    assert_eq!(dec.remove, vec!["b".to_string()]);
    assert_eq!(dec.desired, 2);
}

#[test]
fn billing_by_the_second_or_free_backends_release_at_once() {
    for cost in [
        Cost {
            billing_period: HumanDuration::from_secs(0),
            ..cfg().cost
        },
        Cost {
            backend_per_hour: 0.0,
            ..cfg().cost
        },
    ] {
        let c = Autoscaler { cost, ..cfg() };
        let mut d = CostRules::new(Wants(1), &c);
        let fleet = FleetView::from_members(
            vec![member("a", 0), member("b", 50), member("c", 90)],
            1,
            100,
        );
        let dec = d.decide(&steady(10.0, 100), &fleet, 100 * S);
        assert_eq!(dec.desired, 1, "{}", dec.reason);
        // The newest go first when nothing is paid ahead.
        assert_eq!(dec.remove, vec!["c".to_string(), "b".to_string()]);
    }
}

#[test]
fn starting_backends_go_before_serving_ones_with_equal_paid_time() {
    let c = Autoscaler {
        cost: Cost {
            billing_period: HumanDuration::from_secs(0),
            ..cfg().cost
        },
        ..cfg()
    };
    let mut d = CostRules::new(Wants(2), &c);
    let mut s = member("s", 10);
    s.state = BackendState::Starting;
    let fleet = FleetView::from_members(vec![member("a", 0), s, member("n", 20)], 1, 100);
    let dec = d.decide(&steady(10.0, 100), &fleet, 100 * S);
    assert_eq!(dec.remove, vec!["s".to_string()]);
}

#[test]
fn budget_cap_holds_under_unbounded_demand() {
    let c = Autoscaler {
        max: 1000,
        cost: Cost {
            backend_per_hour: 1.0,
            budget_per_hour: 5.5,
            slo_violation_cost: 1.0, // violations are dear: it would buy far more
            ..cfg().cost
        },
        ..cfg()
    };
    let mut d = CostRules::new(Wants(u32::MAX), &c);
    let dec = d.decide(
        &steady(100_000.0, 60),
        &FleetView::counts(2, 0, 1, 1000),
        60 * S,
    );
    assert_eq!(dec.desired, 5, "{}", dec.reason);
    assert!(dec.reason.contains("budget"), "{}", dec.reason);
    assert_eq!(dec.overload, OverloadAction::Queue);
    // A real decider, a fluid fleet and a meter over an hour of overload: never more than 5
    // backends, so never more than 5.5 per hour.
    let c = Autoscaler {
        decider: DeciderKind::Concurrency,
        ..c
    };
    let mut d = crate::deciders::build(&c);
    let mut w = Windows::from_config(&c);
    let mut fleet = FluidFleet::new(2, 10 * S, 0.1, 4);
    let mut meter = CostMeter::from_config(&c);
    meter.on_fleet_change(0, 2);
    for _ in 0..3600 {
        let obs = fleet.step(S, 10_000.0);
        w.observe(obs);
        let dec = d.decide(&w, &fleet.view(), fleet.now);
        assert!(dec.desired <= 5, "{}", dec.reason);
        fleet.apply(&dec);
        meter.on_fleet_change(fleet.now, fleet.view().current());
    }
    assert_eq!(fleet.view().current(), 5);
    assert!(meter.usage_cost(3600 * S) <= 5.0 + 1e-9);
}

#[test]
fn scale_out_looks_ahead_over_the_boot_time() {
    // Arrivals ramp 100/s + 20/s per second; 20ms service, 4 workers: 200/s per backend.
    let ramp = |boot_s: u64| {
        let c = Autoscaler {
            decider: DeciderKind::QueueingModel,
            boot_time: HumanDuration::from_secs(boot_s),
            ..cfg()
        };
        let mut inner_only = QueueingModel::new(&c);
        let mut d = CostRules::new(QueueingModel::new(&c), &c);
        let mut w = Windows::from_config(&c);
        for t in 0..=120u64 {
            w.observe(Observation {
                at: t * S,
                arrival_rate: 100.0 + 20.0 * t as f64,
                service_rate_per_backend: Some(200.0),
                ready: 4,
                ..Default::default()
            });
        }
        let fleet = FleetView::counts(4, 0, 1, 100);
        let inner = inner_only.decide(&w, &fleet, 120 * S);
        let dec = d.decide(&w, &fleet, 120 * S);
        (inner.desired, dec)
    };
    let (inner, dec) = ramp(30);
    let model = |rate: f64| {
        FleetModel {
            arrival_rate: rate,
            service_rate_per_backend: 200.0,
            workers: 4,
            slo: 0.2,
            quantile: 0.99,
        }
        .smallest_meeting_slo()
        .unwrap()
        .backends
    };
    // The rate at 150s is 3100/s: the fleet ordered at 120s is sized for it, not for the
    // 2450/s the panic window averages now (scaled in proportion: a little more than the
    // square-root staffing of 3100/s would need).
    let ahead = dec.inputs["arrival_rate_ahead"];
    assert!((ahead - 3110.0).abs() < 10.0, "{ahead}");
    assert!(dec.desired > inner, "{}", dec.reason);
    assert!(dec.desired >= model(3100.0), "{}", dec.reason);
    assert!(dec.desired <= model(3110.0) + 3, "{}", dec.reason);
    assert!(dec.reason.contains("boot time"), "{}", dec.reason);
    // With instant boots only the panic window's lag (3s) is made up.
    let (inner0, dec0) = ramp(0);
    assert!(dec0.desired < dec.desired);
    assert!(dec0.desired <= inner0 + 1);
}

#[test]
fn the_first_seconds_of_traffic_are_not_a_trend() {
    // Traffic starts: 0/s, then 160/s. Two seconds of history look like a steep ramp, but
    // they are not enough to extrapolate over a 2.5 s horizon.
    let mut d = CostRules::new(Wants(2), &cfg());
    let mut w = Windows::new(20 * S, 3 * S);
    w.observe(Observation {
        at: 0,
        arrival_rate: 0.0,
        ..Default::default()
    });
    w.observe(Observation {
        at: S,
        arrival_rate: 160.0,
        ..Default::default()
    });
    w.observe(Observation {
        at: 2 * S,
        arrival_rate: 160.0,
        ..Default::default()
    });
    let early = d.decide(&w, &FleetView::counts(2, 0, 1, 10), 2 * S);
    assert_eq!(early.desired, 2, "{}", early.reason);
    // A real ramp, seen for long enough, still looks ahead.
    let mut d = CostRules::new(Wants(2), &cfg());
    let mut w = Windows::new(20 * S, 3 * S);
    observe_rates(&mut w, |t| 20.0 * t as f64);
    let late = d.decide(&w, &FleetView::counts(2, 0, 1, 10), 20 * S);
    assert!(late.desired > 2, "{}", late.reason);
}

#[test]
fn noise_and_room_under_min_are_not_a_reason_to_look_ahead() {
    let with_min = |min| Autoscaler {
        min,
        boot_time: HumanDuration::from_secs(1),
        ..cfg()
    };
    // 40/s drifting up 0.3/s: over the 2.5 s horizon +0.75/s, far inside the noise of a
    // Poisson count over a 3 s window (2 sd = 7.3/s).
    let mut d = CostRules::new(Wants(3), &with_min(1));
    let mut w = Windows::new(20 * S, 3 * S);
    observe_rates(&mut w, |t| 40.0 + 0.3 * t as f64);
    let n = d.decide(&w, &FleetView::counts(3, 0, 1, 10), 20 * S);
    assert_eq!(n.desired, 3, "{}", n.reason);
    // A steep rise when the signals want one backend and min holds two: the second has
    // room for it already.
    let mut d = CostRules::new(Wants(1), &with_min(2));
    let mut w = Windows::new(20 * S, 3 * S);
    observe_rates(&mut w, |t| 20.0 * t as f64);
    let held = d.decide(&w, &FleetView::counts(2, 0, 2, 10), 20 * S);
    assert_eq!(held.desired, 2, "{}", held.reason);
    assert!(held.inputs["arrival_rate_ahead"] > 400.0);
}

#[test]
fn a_rising_trend_stops_a_scale_in() {
    let c = Autoscaler {
        boot_time: HumanDuration::from_secs(30),
        ..cfg()
    };
    let mut d = CostRules::new(Wants(4), &c);
    let mut w = Windows::new(60 * S, 6 * S);
    for t in 0..=60u64 {
        w.observe(Observation {
            at: t * S,
            arrival_rate: 100.0 + t as f64,
            ..Default::default()
        });
    }
    let dec = d.decide(&w, &FleetView::counts(6, 0, 1, 100), 60 * S);
    // 157.5/s over the panic window, ~190/s in 3 + 30s: ceil(4 x 1.21) = 5: one of the two
    // a scale-in would remove is kept.
    assert_eq!(dec.desired, 5, "{}", dec.reason);
    // Flat load: the scale-in goes through.
    let mut d = CostRules::new(Wants(4), &c);
    let dec = d.decide(&steady(100.0, 60), &FleetView::counts(6, 0, 1, 100), 60 * S);
    assert_eq!(dec.desired, 4, "{}", dec.reason);
}

#[test]
fn no_scale_in_of_what_was_wanted_within_one_boot_time() {
    let c = Autoscaler {
        boot_time: HumanDuration::from_secs(30),
        ..cfg()
    };
    let w = steady(100.0, 60);
    let fleet = FleetView::counts(6, 0, 1, 100);
    let mut d = CostRules::new(Wants(6), &c);
    assert_eq!(d.decide(&w, &fleet, 60 * S).desired, 6);
    d.inner.0 = 3;
    for t in 61..=90 {
        let dec = d.decide(&w, &fleet, t * S);
        assert_eq!(dec.desired, 6, "t={t}: {}", dec.reason);
    }
    assert_eq!(d.decide(&w, &fleet, 91 * S).desired, 3);
}

#[test]
fn a_measured_boot_time_replaces_the_configured_one() {
    // Configured 30 s, but the provider measured 5 s: a scale-in waits 5 s, not 30.
    let c = Autoscaler {
        boot_time: HumanDuration::from_secs(30),
        ..cfg()
    };
    let w = steady(100.0, 60);
    let mut fleet = FleetView::counts(6, 0, 1, 100);
    fleet.measured_boot = Some(5 * S);
    let mut d = CostRules::new(Wants(6), &c);
    assert_eq!(d.decide(&w, &fleet, 60 * S).desired, 6);
    d.inner.0 = 3;
    for t in 61..=65 {
        assert_eq!(d.decide(&w, &fleet, t * S).desired, 6, "t={t}");
    }
    let dec = d.decide(&w, &fleet, 66 * S);
    assert_eq!(dec.desired, 3, "{}", dec.reason);
}

/// [`Wants`], in panic mode.
struct Panics(u32);

impl Decider for Panics {
    fn name(&self) -> &'static str {
        "panics"
    }
    fn decide(&mut self, w: &Windows, fleet: &FleetView, now: Nanos) -> Decision {
        let mut d = Wants(self.0).decide(w, fleet, now);
        d.panic = true;
        d
    }
}

#[test]
fn no_scale_in_while_the_inner_decider_panics() {
    // The spike test's sequence: the decider panics and wants 4; one second earlier the
    // lookahead made that 6; now the rise is slower and the lookahead adds only 1. The
    // fleet of 6 (4 of them booting) stays.
    let c = Autoscaler {
        boot_time: HumanDuration::from_secs(1),
        ..cfg()
    };
    let mut d = CostRules::new(Panics(4), &c);
    let fleet = FleetView::counts(2, 4, 1, 100);
    let dec = d.decide(&steady(100.0, 60), &fleet, 60 * S);
    assert_eq!(dec.desired, 6, "{}", dec.reason);
    assert!(
        dec.reason.contains("never while panicking"),
        "{}",
        dec.reason
    );
    // The same choice from a decider that does not panic scales in (no boot-time memory:
    // this wrapper has seen no earlier decision).
    let mut d = CostRules::new(Wants(4), &c);
    assert_eq!(d.decide(&steady(100.0, 60), &fleet, 60 * S).desired, 4);
    // Panicking and wanting more: up as usual.
    let mut d = CostRules::new(Panics(8), &c);
    assert_eq!(d.decide(&steady(100.0, 60), &fleet, 60 * S).desired, 8);
}

#[test]
fn slo_violation_price_buys_backends_when_they_are_cheaper() {
    let c = Autoscaler {
        decider: DeciderKind::QueueingModel,
        cost: Cost {
            backend_per_hour: 0.05,
            slo_violation_cost: 0.01,
            ..cfg().cost
        },
        ..cfg()
    };
    let w = steady(1000.0, 60); // 1000/s at 200/s per backend
    let fleet = FleetView::counts(30, 0, 1, 100);
    let inner = QueueingModel::new(&c).decide(&w, &fleet, 60 * S).desired;
    let dec = CostRules::new(QueueingModel::new(&c), &c).decide(&w, &fleet, 60 * S);
    // The p99 fleet (6) has 5.0e-5 of requests late, 4.54e-5 of them from the service time
    // alone (e^-10), which no fleet removes. A 7th backend cuts it to 4.58e-5: 3.6M
    // requests/h x 4.1e-6 x 0.01 = 0.15/h saved for 0.05/h; an 8th saves 0.013/h: no.
    assert_eq!(inner, 6);
    assert_eq!(dec.desired, 7, "{}", dec.reason);
    assert!(dec.reason.contains("SLO violations"), "{}", dec.reason);
    // And the choice minimises the total over [inner, cap] (checked by brute force).
    let model = QueueingModel::model(&w, 60 * S, 4, 0.2).unwrap();
    let total = |n: u32| n as f64 * 0.05 + 1000.0 * 3600.0 * model.predict(n).slo_violation * 0.01;
    let best = (inner..=100)
        .min_by(|a, b| total(*a).total_cmp(&total(*b)))
        .unwrap();
    assert_eq!(dec.desired, best);
    // Without a violation price the inner choice stands.
    let c0 = Autoscaler {
        cost: Cost {
            slo_violation_cost: 0.0,
            ..c.cost.clone()
        },
        ..c.clone()
    };
    let dec0 = CostRules::new(QueueingModel::new(&c0), &c0).decide(&w, &fleet, 60 * S);
    assert_eq!(dec0.desired, inner);
}

#[test]
fn overload_action_at_max_follows_the_config() {
    let w = steady(1000.0, 60);
    let fleet = FleetView::counts(8, 0, 1, 8);
    for (mode, max_queue, expected) in [
        (OverloadMode::Queue, None, OverloadAction::Queue),
        (OverloadMode::Shed, None, OverloadAction::Shed),
        (
            OverloadMode::Both,
            Some(50),
            OverloadAction::QueueThenShed { max_queue: 50 },
        ),
        // Default length: 8 ready x 200/s x 0.2s = 320 served within the SLO.
        (
            OverloadMode::Both,
            None,
            OverloadAction::QueueThenShed { max_queue: 320 },
        ),
    ] {
        let c = Autoscaler {
            overload: mode,
            overload_max_queue: max_queue,
            ..cfg()
        };
        let dec = CostRules::new(Wants(40), &c).decide(&w, &fleet, 60 * S);
        assert_eq!(dec.desired, 8);
        assert_eq!(dec.overload, expected, "{}", dec.reason);
        assert!(dec.reason.contains("capped at 8"), "{}", dec.reason);
    }
    // Enough backends: no overload action.
    let c = Autoscaler {
        overload: OverloadMode::Shed,
        ..cfg()
    };
    let dec = CostRules::new(Wants(8), &c).decide(&w, &fleet, 60 * S);
    assert_eq!(dec.overload, OverloadAction::None);
    // Not at max but booting: the ready part is short, so the action applies meanwhile.
    let booting = FleetView::counts(4, 4, 1, 100);
    let dec = CostRules::new(Wants(8), &c).decide(&w, &booting, 60 * S);
    assert_eq!(dec.overload, OverloadAction::Shed, "{}", dec.reason);
    assert!(dec.reason.contains("4 starting"), "{}", dec.reason);
}

#[test]
fn the_whole_pipeline_scales_out_then_in_on_a_fluid_fleet() {
    let c = Autoscaler {
        decider: DeciderKind::QueueingModel,
        min: 2,
        max: 50,
        ..cfg()
    };
    let mut d = crate::deciders::build(&c);
    let mut w = Windows::from_config(&c);
    let mut fleet = FluidFleet::new(2, 5 * S, 0.02, 4);
    let load = |t: u64| {
        if (60..300).contains(&t) {
            4000.0
        } else {
            400.0
        }
    };
    let out = run(d.as_mut(), &mut w, &mut fleet, 600, load);
    let at = |t: u64| out.iter().find(|(s, _)| *s == t).unwrap().1.desired;
    assert!(at(100) > 20, "{}", at(100));
    assert!(at(599) < at(100));
    assert!(at(599) >= 2);
}
