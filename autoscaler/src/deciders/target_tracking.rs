//! `target_tracking`: the Kubernetes Horizontal Pod Autoscaler's rule on one signal, with HPA's
//! defaults (each overridable in `[autoscaler]`).
//!
//! **1. Recommendation** (HPA's replica calculator). The signal is averaged over
//! `metric_window`: for concurrency, arrival_rate and queue_depth as a value per ready backend,
//! for p99 as the fleet value (every ready backend is taken to report it). With r backends
//! reporting, m ready ones missing from the samples and u starting:
//!
//! ```text
//! ratio = metric / target
//! m = 0 and (u = 0 or ratio < 1):
//!     |ratio - 1| <= tolerance  -> no change
//!     otherwise                 -> ceil(ratio x r)
//! else HPA's rebalancing:
//!     scale-down: missing count as 100% of target
//!         ratio' = (r x metric + m x target) / ((r + m) x target),  count = r + m
//!     scale-up: missing and starting count as 0%
//!         ratio' = r x metric / ((r + m + u) x target),              count = r + m + u
//!     |ratio' - 1| <= tolerance, or ratio' on the other side of 1 -> no change
//!     otherwise -> ceil(ratio' x count) (no change if that goes the wrong way)
//! ```
//!
//! A metric missing altogether counts as 100% on the way down and 0% on the way up, so it never
//! moves the fleet.
//!
//! **2. Stabilisation.** Recommendations of the last `scale_down_stabilisation` (300s) are kept;
//! a scale-down goes only to the highest of them, so a dip inside the window removes nothing.
//! Likewise a scale-up goes only to the lowest of the last `scale_up_stabilisation` (0s).
//!
//! **3. Rate limits**, over the fleet changes seen in the last period, start being the fleet at
//! the period's start: a scale-up reaches at most max(start + 4, ceil(start x (1 + 100%))) per
//! 15s, a scale-down no lower than floor(start x (1 - 100%)) per 15s. HPA counts the changes it
//! ordered; here the changes are seen in the fleet (ready + starting) between calls, so a change
//! trimmed by the cost rules or refused by the provider is not counted against the limit.
//!
//! **4.** The result is clamped to [min, max].

use super::{ceil_count, secs, Decider};
use crate::decision::Decision;
use crate::fleet::FleetView;
use crate::windows::{Observation, Windows};
use ebbtide_config::autoscaler::{Autoscaler, ScalingSignal};
use ebbtide_config::time::Nanos;
use std::collections::VecDeque;

/// HPA's rule; see the module notes.
#[derive(Debug, Clone)]
pub struct TargetTracking {
    signal: ScalingSignal,
    target: f64,
    metric_window: Nanos,
    tolerance: f64,
    up_stabilisation: Nanos,
    down_stabilisation: Nanos,
    up_period: Nanos,
    up_max_backends: u32,
    up_max_percent: f64,
    down_period: Nanos,
    down_max_percent: f64,
    /// (time, recommendation) of recent calls, for stabilisation.
    recommendations: VecDeque<(Nanos, u32)>,
    /// (time, change of the fleet size seen then), for the rate limits.
    changes: VecDeque<(Nanos, i64)>,
    last_current: Option<u32>,
}

impl TargetTracking {
    /// The rule as `[autoscaler]` configures it; for the p99 signal the target is `slo_p99`.
    pub fn new(cfg: &Autoscaler) -> TargetTracking {
        let target = match cfg.signal {
            ScalingSignal::P99 => cfg.slo_p99.0.as_secs_f64() * 1000.0,
            _ => cfg.target,
        };
        TargetTracking {
            signal: cfg.signal,
            target,
            metric_window: cfg.metric_window.as_nanos(),
            tolerance: cfg.tolerance,
            up_stabilisation: cfg.scale_up_stabilisation.as_nanos(),
            down_stabilisation: cfg.scale_down_stabilisation.as_nanos(),
            up_period: cfg.scale_up_period.as_nanos(),
            up_max_backends: cfg.scale_up_max_backends,
            up_max_percent: cfg.scale_up_max_percent,
            down_period: cfg.scale_down_period.as_nanos(),
            down_max_percent: cfg.scale_down_max_percent,
            recommendations: VecDeque::new(),
            changes: VecDeque::new(),
            last_current: None,
        }
    }

    /// The signal as a per-backend value (or the fleet value for p99) from one sample.
    fn per_backend(&self, o: &Observation) -> Option<f64> {
        let per = |total: f64| (o.ready > 0).then(|| total / o.ready as f64);
        match self.signal {
            ScalingSignal::Concurrency => per(o.concurrency),
            ScalingSignal::ArrivalRate => per(o.arrival_rate),
            ScalingSignal::QueueDepth => per(o.queue_depth),
            ScalingSignal::P99 => o.p99_ms,
        }
    }

    fn unit(&self) -> &'static str {
        match self.signal {
            ScalingSignal::Concurrency => " requests per backend",
            ScalingSignal::ArrivalRate => "/s per backend",
            ScalingSignal::QueueDepth => " queued per backend",
            ScalingSignal::P99 => "ms",
        }
    }

    /// Step 1: HPA's replica calculator. Returns the recommendation and why.
    fn recommend(&self, windows: &Windows, fleet: &FleetView, now: Nanos) -> (u32, String) {
        let current = fleet.current();
        let name = self.signal.name();
        let window = secs(self.metric_window);
        let Some(metric) = windows.average_by(self.metric_window, now, |o| self.per_backend(o))
        else {
            return (
                current,
                format!(
                    "no {name} in the last {window}s: a missing metric counts as 100% of target \
                     on scale-down and 0% on scale-up, so no change from {current}"
                ),
            );
        };
        let reporting = match self.signal {
            ScalingSignal::P99 => fleet.ready,
            _ => windows.latest().map_or(0, |o| o.ready).min(fleet.ready),
        };
        let missing = fleet.ready - reporting;
        let unready = fleet.starting;
        let t = self.target;
        let ratio = metric / t;
        let said = format!(
            "{name} {metric:.2}{} over {window}s vs target {t}{} (ratio {ratio:.2})",
            self.unit(),
            self.unit()
        );
        if reporting == 0 {
            let n = if current == 0 && metric > 0.0 {
                1
            } else {
                current
            };
            return (n, format!("{said}: no ready backend reports; {n}"));
        }
        // A hair of slack: 11 / 10 is 1.1000000000000001 in floating point.
        let within = |r: f64| (r - 1.0).abs() <= self.tolerance + 1e-9;
        let scale_up = ratio > 1.0;
        if missing == 0 && (unready == 0 || !scale_up) {
            if within(ratio) {
                return (
                    current,
                    format!(
                        "{said}: within tolerance {}, no change from {current}",
                        self.tolerance
                    ),
                );
            }
            let n = ceil_count(ratio * reporting as f64);
            return (n, format!("{said}: ceil({ratio:.2} x {reporting}) = {n}"));
        }
        // HPA's rebalancing of missing and unready backends.
        let sum = metric * reporting as f64;
        let (sum, count, how) = if scale_up {
            (
                sum,
                reporting + missing + unready,
                format!("{missing} missing and {unready} starting counted at 0%"),
            )
        } else {
            (
                sum + missing as f64 * t,
                reporting + missing,
                format!("{missing} missing counted at 100% of target"),
            )
        };
        let new_ratio = sum / (count as f64 * t);
        let flipped = (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0);
        if within(new_ratio) || flipped {
            return (
                current,
                format!("{said}; with {how} the ratio is {new_ratio:.2}: no change from {current}"),
            );
        }
        let n = ceil_count(new_ratio * count as f64);
        if (new_ratio < 1.0 && n > current) || (new_ratio > 1.0 && n < current) {
            return (
                current,
                format!("{said}; with {how} ceil({new_ratio:.2} x {count}) = {n} goes the wrong way: no change from {current}"),
            );
        }
        (
            n,
            format!("{said}; with {how}: ceil({new_ratio:.2} x {count}) = {n}"),
        )
    }

    /// Step 3: the fleet at the start of the last `period`, from the changes seen in it.
    fn period_start(&self, current: u32, period: Nanos, now: Nanos) -> i64 {
        let cutoff = now.saturating_sub(period);
        let changed: i64 = self
            .changes
            .iter()
            .filter(|(at, _)| *at > cutoff)
            .map(|(_, c)| c)
            .sum();
        current as i64 - changed
    }
}

impl Decider for TargetTracking {
    fn name(&self) -> &'static str {
        "target_tracking"
    }

    fn decide(&mut self, windows: &Windows, fleet: &FleetView, now: Nanos) -> Decision {
        let current = fleet.current();
        // Fleet changes since the last call feed the rate limits.
        if let Some(prev) = self.last_current {
            if prev != current {
                self.changes.push_back((now, current as i64 - prev as i64));
            }
        }
        self.last_current = Some(current);
        let keep = self.up_period.max(self.down_period);
        while self.changes.front().is_some_and(|(at, _)| *at + keep < now) {
            self.changes.pop_front();
        }

        let (recommendation, mut reason) = self.recommend(windows, fleet, now);

        // Step 2: stabilisation over past recommendations (HPA keeps the current one too).
        let up_cut = now.saturating_sub(self.up_stabilisation);
        let down_cut = now.saturating_sub(self.down_stabilisation);
        let mut up_rec = recommendation;
        let mut down_rec = recommendation;
        for &(at, r) in &self.recommendations {
            if at > up_cut {
                up_rec = up_rec.min(r);
            }
            if at > down_cut {
                down_rec = down_rec.max(r);
            }
        }
        self.recommendations.push_back((now, recommendation));
        let keep = self.up_stabilisation.max(self.down_stabilisation);
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| *at + keep < now)
        {
            self.recommendations.pop_front();
        }
        let stabilised = current.max(up_rec).min(down_rec);
        if stabilised > recommendation && stabilised <= current {
            reason.push_str(&format!(
                "; scale-down stabilisation: the highest recommendation of the last {}s is {down_rec}",
                secs(self.down_stabilisation)
            ));
        } else if stabilised < recommendation && stabilised >= current {
            reason.push_str(&format!(
                "; scale-up stabilisation: the lowest recommendation of the last {}s is {up_rec}",
                secs(self.up_stabilisation)
            ));
        }

        // Step 3: rate limits, then min and max.
        let mut desired = stabilised;
        let mut up_limit = None;
        let mut down_limit = None;
        if stabilised > current {
            let start = self.period_start(current, self.up_period, now);
            let by_count = start + self.up_max_backends as i64;
            let by_percent = (start as f64 * (1.0 + self.up_max_percent / 100.0)).ceil() as i64;
            let limit = by_count.max(by_percent).max(current as i64);
            up_limit = Some(limit);
            if (desired as i64) > limit {
                desired = limit as u32;
                reason.push_str(&format!(
                    "; scale-up limit max({} + {}, {}% more) in {}s = {limit}",
                    start,
                    self.up_max_backends,
                    self.up_max_percent,
                    secs(self.up_period)
                ));
            }
        } else if stabilised < current {
            let start = self.period_start(current, self.down_period, now);
            let limit = ((start as f64 * (1.0 - self.down_max_percent / 100.0)).floor() as i64)
                .min(current as i64);
            down_limit = Some(limit);
            if (desired as i64) < limit {
                desired = limit.max(0) as u32;
                reason.push_str(&format!(
                    "; scale-down limit {}% of {start} in {}s: no fewer than {limit}",
                    self.down_max_percent,
                    secs(self.down_period)
                ));
            }
        }
        let clamped = fleet.clamp(desired);
        if clamped != desired {
            reason.push_str(&format!(
                "; clamped to [{}, {}]: {clamped}",
                fleet.min, fleet.max
            ));
        }
        reason.push_str(&format!("; desired {clamped}"));

        let mut d = Decision::new(clamped, recommendation, reason)
            .input("target", self.target)
            .input("recommendation", recommendation as f64)
            .input("stabilised", stabilised as f64)
            .input("ready", fleet.ready as f64)
            .input("starting", fleet.starting as f64);
        if let Some(m) = windows.average_by(self.metric_window, now, |o| self.per_backend(o)) {
            d = d
                .input(self.signal.name(), m)
                .input("ratio", m / self.target);
        }
        if let Some(l) = up_limit {
            d = d.input("scale_up_limit", l as f64);
        }
        if let Some(l) = down_limit {
            d = d.input("scale_down_limit", l as f64);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{observation, S};
    use ebbtide_config::time::HumanDuration;

    fn cfg() -> Autoscaler {
        Autoscaler {
            decider: ebbtide_config::autoscaler::DeciderKind::TargetTracking,
            signal: ScalingSignal::Concurrency,
            target: 10.0,
            min: 1,
            max: 100,
            ..Default::default()
        }
    }

    /// Feeds `per_backend` concurrency for `ready` backends every second from `from` to `to`
    /// (inclusive), so the metric window holds only that value at `to`.
    fn feed(w: &mut Windows, from: u64, to: u64, per_backend: f64, ready: u32) {
        for t in from..=to {
            w.observe(observation(t * S, per_backend * ready as f64, 0.0, ready));
        }
    }

    /// One decision at `t` seconds on a fleet of `ready` (+ `starting`).
    fn decide_at(
        d: &mut TargetTracking,
        w: &Windows,
        t: u64,
        ready: u32,
        starting: u32,
    ) -> Decision {
        d.decide(w, &FleetView::counts(ready, starting, 1, 100), t * S)
    }

    #[test]
    fn tolerance_band_holds_and_outside_scales() {
        let mut d = TargetTracking::new(&cfg());
        let mut w = Windows::from_config(&cfg());
        // 10% over target: inside the band.
        feed(&mut w, 0, 20, 11.0, 4);
        let dec = decide_at(&mut d, &w, 20, 4, 0);
        assert_eq!(dec.desired, 4, "{}", dec.reason);
        assert!(dec.reason.contains("within tolerance"), "{}", dec.reason);
        // 12% over: ceil(1.12 x 4) = 5.
        feed(&mut w, 21, 40, 11.2, 4);
        let dec = decide_at(&mut d, &w, 40, 4, 0);
        assert_eq!(dec.desired, 5, "{}", dec.reason);
        // 9% under: hold (and the stabilisation keeps 5 anyway, but on 5 backends now).
        feed(&mut w, 41, 60, 9.1, 5);
        let dec = decide_at(&mut d, &w, 60, 5, 0);
        assert_eq!(dec.desired, 5, "{}", dec.reason);
        assert!(dec.reason.contains("within tolerance"), "{}", dec.reason);
        assert!((dec.inputs["ratio"] - 0.91).abs() < 1e-9);
    }

    #[test]
    fn a_dip_inside_the_stabilisation_window_does_not_scale_down() {
        let mut d = TargetTracking::new(&cfg());
        let mut w = Windows::from_config(&cfg());
        feed(&mut w, 0, 20, 10.0, 8);
        assert_eq!(decide_at(&mut d, &w, 20, 8, 0).desired, 8);
        // Load halves for two minutes: recommendation 4, but 8 was recommended within 300s.
        for t in 21..=140 {
            feed(&mut w, t, t, 5.0, 8);
            let dec = decide_at(&mut d, &w, t, 8, 0);
            assert_eq!(dec.desired, 8, "t={t}: {}", dec.reason);
        }
        let dec = decide_at(&mut d, &w, 140, 8, 0);
        assert_eq!(dec.wanted, 4);
        assert!(dec.reason.contains("stabilisation"), "{}", dec.reason);
        // Load back: the dip never cost a backend.
        feed(&mut w, 141, 160, 10.0, 8);
        assert_eq!(decide_at(&mut d, &w, 160, 8, 0).desired, 8);
        // A sustained drop scales down once 300s have passed since the last 8.
        feed(&mut w, 161, 470, 5.0, 8);
        let dec = decide_at(&mut d, &w, 455, 8, 0);
        assert_eq!(dec.desired, 8, "{}", dec.reason);
        let mut last = 8;
        for t in 456..=470 {
            last = decide_at(&mut d, &w, t, 8, 0).desired;
            if last < 8 {
                break;
            }
        }
        assert_eq!(last, 4);
    }

    #[test]
    fn scale_down_stabilisation_is_configurable() {
        let c = Autoscaler {
            scale_down_stabilisation: HumanDuration::from_secs(10),
            ..cfg()
        };
        let mut d = TargetTracking::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut w, 0, 20, 10.0, 8);
        decide_at(&mut d, &w, 20, 8, 0);
        feed(&mut w, 21, 40, 5.0, 8);
        assert_eq!(decide_at(&mut d, &w, 40, 8, 0).desired, 4);
    }

    #[test]
    fn scale_up_is_limited_to_four_or_double_per_period() {
        let c = cfg();
        let mut d = TargetTracking::new(&c);
        let mut w = Windows::from_config(&c);
        // Demand for 40 backends on 2: first step max(2 + 4, 2 x 2) = 6.
        feed(&mut w, 0, 20, 200.0, 2);
        let dec = decide_at(&mut d, &w, 20, 2, 0);
        assert_eq!(dec.wanted, 40);
        assert_eq!(dec.desired, 6, "{}", dec.reason);
        assert!(dec.reason.contains("scale-up limit"), "{}", dec.reason);
        // The fleet went to 6 (4 starting); within the same 15s nothing more.
        for t in 21..=35 {
            let dec = decide_at(&mut d, &w, t, 2, 4);
            assert_eq!(dec.desired, 6, "t={t}: {}", dec.reason);
        }
        // The change was seen at t=21; at t=36 it is out of the period: max(6 + 4, 12) = 12.
        let dec = decide_at(&mut d, &w, 36, 2, 4);
        assert_eq!(dec.desired, 12, "{}", dec.reason);
        // From 12 on: doubling beats +4, so 24, then 40 (the demand).
        decide_at(&mut d, &w, 37, 2, 10);
        assert_eq!(decide_at(&mut d, &w, 52, 2, 10).desired, 24);
        decide_at(&mut d, &w, 53, 2, 22);
        assert_eq!(decide_at(&mut d, &w, 68, 2, 22).desired, 40);
    }

    #[test]
    fn scale_up_limit_by_count_wins_for_small_fleets() {
        let c = cfg();
        let mut d = TargetTracking::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut w, 0, 20, 100.0, 1);
        // 1 backend: max(1 + 4, 2) = 5.
        assert_eq!(decide_at(&mut d, &w, 20, 1, 0).desired, 5);
    }

    #[test]
    fn scale_down_is_limited_per_period() {
        let c = Autoscaler {
            scale_down_stabilisation: HumanDuration::from_secs(1),
            scale_down_max_percent: 50.0,
            ..cfg()
        };
        let mut d = TargetTracking::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut w, 0, 20, 1.0, 20);
        // Wants ceil(0.1 x 20) = 2; at most 50% of 20 may go: 10.
        let dec = decide_at(&mut d, &w, 20, 20, 0);
        assert_eq!(dec.wanted, 2);
        assert_eq!(dec.desired, 10, "{}", dec.reason);
        // Applied (seen at t=21): the period started at 20 backends, floor(20 x 0.5) = 10 is
        // the floor until the change leaves the 15s period.
        feed(&mut w, 21, 30, 2.0, 10);
        assert_eq!(decide_at(&mut d, &w, 21, 10, 0).desired, 10);
        assert_eq!(decide_at(&mut d, &w, 35, 10, 0).desired, 10);
        // At 36 the change is 15s old: half of 10 may go; wants ceil(0.2 x 10) = 2, gets 5.
        let dec = decide_at(&mut d, &w, 36, 10, 0);
        assert_eq!((dec.wanted, dec.desired), (2, 5), "{}", dec.reason);
        // The default (100% per 15s) allows going straight to the recommendation.
        let c = Autoscaler {
            scale_down_stabilisation: HumanDuration::from_secs(1),
            ..cfg()
        };
        let mut d = TargetTracking::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut w, 0, 20, 1.0, 20);
        assert_eq!(decide_at(&mut d, &w, 20, 20, 0).desired, 2);
    }

    #[test]
    fn missing_backends_count_as_full_on_scale_down() {
        let c = Autoscaler {
            scale_down_stabilisation: HumanDuration::from_secs(1),
            ..cfg()
        };
        let mut d = TargetTracking::new(&c);
        let mut w = Windows::from_config(&c);
        // 4 ready, only 2 report, each at 40% of target.
        feed(&mut w, 0, 20, 4.0, 2);
        let dec = decide_at(&mut d, &w, 20, 4, 0);
        // (2 x 4 + 2 x 10) / (4 x 10) = 0.7 -> ceil(0.7 x 4) = 3, not ceil(0.4 x 2) = 1.
        assert_eq!(dec.desired, 3, "{}", dec.reason);
        assert!(
            dec.reason.contains("missing counted at 100%"),
            "{}",
            dec.reason
        );
    }

    #[test]
    fn missing_and_starting_backends_count_as_zero_on_scale_up() {
        let c = cfg();
        let mut d = TargetTracking::new(&c);
        let mut w = Windows::from_config(&c);
        // 2 ready at 150% with 2 starting: counting those at 0% gives 0.75: direction flips,
        // no change (a naive ceil(1.5 x 2) = 3 would even cut a starting backend).
        feed(&mut w, 0, 20, 15.0, 2);
        let dec = decide_at(&mut d, &w, 20, 2, 2);
        assert_eq!(dec.desired, 4, "{}", dec.reason);
        assert!(dec.reason.contains("no change"), "{}", dec.reason);
        // 2 ready at 400% with 2 starting: 8 / 4 = 2.0 -> ceil(2 x 4) = 8.
        feed(&mut w, 21, 40, 40.0, 2);
        let dec = decide_at(&mut d, &w, 40, 2, 2);
        assert_eq!(dec.desired, 8, "{}", dec.reason);
        // 4 ready, 2 reporting at 300%: the 2 missing count as 0%: 6 / 4 = 1.5 -> 6.
        let mut d = TargetTracking::new(&c);
        feed(&mut w, 41, 60, 30.0, 2);
        let dec = decide_at(&mut d, &w, 60, 4, 0);
        assert_eq!(dec.desired, 6, "{}", dec.reason);
    }

    #[test]
    fn a_missing_metric_never_moves_the_fleet() {
        let c = Autoscaler {
            signal: ScalingSignal::P99,
            ..cfg()
        };
        let mut d = TargetTracking::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut w, 0, 20, 100.0, 4); // no p99 in these samples
        let dec = decide_at(&mut d, &w, 20, 4, 0);
        assert_eq!(dec.desired, 4);
        assert!(dec.reason.contains("no p99"), "{}", dec.reason);
    }

    #[test]
    fn p99_signal_aims_at_the_slo() {
        let c = Autoscaler {
            signal: ScalingSignal::P99,
            ..cfg()
        };
        let mut d = TargetTracking::new(&c);
        let mut w = Windows::from_config(&c);
        for t in 0..=20 {
            let mut o = observation(t * S, 10.0, 100.0, 3);
            o.p99_ms = Some(500.0); // SLO 200ms: ratio 2.5
            w.observe(o);
        }
        let dec = decide_at(&mut d, &w, 20, 3, 0);
        assert_eq!(dec.wanted, 8, "{}", dec.reason); // ceil(2.5 x 3)
        assert_eq!(dec.desired, 7, "{}", dec.reason); // max(3 + 4, 3 x 2)
        assert_eq!(dec.inputs["target"], 200.0);
    }

    #[test]
    fn other_signals_use_their_own_numbers() {
        for (signal, o) in [
            (ScalingSignal::ArrivalRate, {
                let mut o = observation(0, 0.0, 300.0, 3);
                o.queue_depth = 0.0;
                o
            }),
            (ScalingSignal::QueueDepth, {
                let mut o = observation(0, 0.0, 0.0, 3);
                o.queue_depth = 300.0;
                o
            }),
        ] {
            let c = Autoscaler { signal, ..cfg() };
            let mut d = TargetTracking::new(&c);
            let mut w = Windows::from_config(&c);
            for t in 0..=20 {
                w.observe(Observation { at: t * S, ..o });
            }
            // 100 per backend vs target 10: 10x, ceil(10 x 3) = 30; limited to 3 + 4 = 7.
            let dec = decide_at(&mut d, &w, 20, 3, 0);
            assert_eq!(dec.wanted, 30, "{signal:?}: {}", dec.reason);
            assert_eq!(dec.desired, 7, "{signal:?}: {}", dec.reason);
        }
    }

    #[test]
    fn min_and_max_bound_the_result() {
        let c = cfg();
        let mut d = TargetTracking::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut w, 0, 20, 100.0, 4);
        let dec = d.decide(&w, &FleetView::counts(4, 0, 1, 6), 20 * S);
        assert_eq!(dec.desired, 6);
        assert_eq!(dec.wanted, 40);
        // Below min, a hold still rises to min.
        let mut d = TargetTracking::new(&c);
        feed(&mut w, 21, 40, 10.0, 1);
        let dec = d.decide(&w, &FleetView::counts(1, 0, 3, 6), 40 * S);
        assert_eq!(dec.desired, 3);
    }
}
