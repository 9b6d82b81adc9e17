//! `concurrency`: Knative's KPA rule, with panic made aware of backends already booting.
//!
//! Per decision, with target per backend t = `target` x `utilisation` (4 x 0.7 = 2.8):
//!
//! ```text
//! stable = ceil(stable-window concurrency / t)    (60s)
//! panic  = ceil(panic-window concurrency / t)     (6s)
//! each clamped to [floor(n / max_scale_down_rate), ceil(max_scale_up_rate x max(1, ready))]
//! panic starts (or is extended) when panic / max(1, n) >= panic_threshold   (2)
//! panic ends a full stable window after the last time it was over the threshold
//! panicking: desired = the highest max(stable, panic) since panic began (never scales down)
//! otherwise: desired = stable
//! ```
//!
//! KPA's scale rates are 2 and 1000, and n is the ready count in KPA; here n is ready + starting
//! (see below), so backends still booting are not cut by the halving limit either.
//!
//! KPA's weakness is flooding with slow-booting backends: concurrency counts queued requests,
//! and while the first batch boots the queue grows by design (arrivals beyond the ready fleet
//! wait), so the panic count keeps rising and each decision orders more, for a backlog the
//! batch already ordered will serve. With `boot_aware_panic` (the default):
//!
//! - n counts the starting backends as capacity (KPA counts only ready ones), both for the
//!   panic threshold and for the scale-down limit;
//! - concurrency is the demand, not the backlog. By Little's law on the backends, a request
//!   spends W = in flight / completion rate being served (in flight = concurrency - queue
//!   depth), so the arrival rate needs lambda x W in flight. While backends are starting, the
//!   queue is the backlog they were ordered for and adds nothing. When none is starting, the
//!   recent queue (panic window) adds what the ready fleet (each serving
//!   `service_rate_per_backend`) cannot drain within one boot time, spread over that time.
//!
//! ```text
//! residual    = max(0, queue - max(0, ready x service rate - lambda) x boot_time)
//! concurrency = lambda x W + residual x W / max(boot_time, W)
//! ```
//!
//! With instant boots this is KPA's in flight + queue; with 30s boots a backlog the starting
//! batch will clear does not order another batch, and the backlog left when it is up orders
//! only what drains it within one more boot time. Each window gets its own lambda x W; without
//! an arrival or completion rate the raw concurrency is used.

use super::{ceil_count, secs, Decider};
use crate::decision::Decision;
use crate::fleet::FleetView;
use crate::windows::{WindowAverages, Windows};
use ebbtide_config::autoscaler::Autoscaler;
use ebbtide_config::time::Nanos;

/// KPA's rule; see the module notes.
#[derive(Debug, Clone)]
pub struct Concurrency {
    target_per_backend: f64,
    panic_threshold: f64,
    max_scale_up_rate: f64,
    max_scale_down_rate: f64,
    stable_window: Nanos,
    boot_aware: bool,
    boot_time: f64,
    /// The last time panic demand was over the threshold; `None` when not panicking.
    panic_time: Option<Nanos>,
    /// The highest count of this panic.
    max_panic: u32,
}

impl Concurrency {
    /// The rule as `[autoscaler]` configures it.
    pub fn new(cfg: &Autoscaler) -> Concurrency {
        Concurrency {
            target_per_backend: cfg.target * cfg.utilisation,
            panic_threshold: cfg.panic_threshold,
            max_scale_up_rate: cfg.max_scale_up_rate,
            max_scale_down_rate: cfg.max_scale_down_rate,
            stable_window: cfg.stable_window.as_nanos(),
            boot_aware: cfg.boot_aware_panic,
            boot_time: cfg.boot_time.0.as_secs_f64(),
            panic_time: None,
            max_panic: 0,
        }
    }

    /// Whether the decider is panicking now.
    pub fn panicking(&self) -> bool {
        self.panic_time.is_some()
    }

    /// By Little's law on the backends: (the concurrency the arrival rate needs, the time a
    /// request spends being served); `None` without arrival and completion rates.
    fn littles_law(w: &WindowAverages, raw: f64) -> Option<(f64, f64)> {
        let (lambda, done) = (w.arrival_rate?, w.completion_rate?);
        if done <= 0.0 {
            return None;
        }
        let queue = w.queue_depth.unwrap_or(0.0).max(0.0);
        let service_time = (raw - queue).max(0.0) / done;
        Some((lambda * service_time, service_time))
    }

    /// The concurrency the recent queue (panic window) adds: nothing while backends are
    /// starting (it is the backlog they were ordered for), else what the ready fleet cannot
    /// drain within one boot time, spread over that boot time.
    fn backlog(&self, panic: &WindowAverages, raw: f64, fleet: &FleetView) -> f64 {
        let Some((_, service_time)) = Self::littles_law(panic, raw) else {
            return 0.0;
        };
        if fleet.starting > 0 {
            return 0.0;
        }
        let lambda = panic.arrival_rate.unwrap_or(0.0);
        let queue = panic.queue_depth.unwrap_or(0.0).max(0.0);
        let spare = panic
            .service_rate_per_backend
            .map_or(0.0, |mu| (fleet.ready as f64 * mu - lambda).max(0.0));
        let residual = (queue - spare * self.boot_time).max(0.0);
        let horizon = self.boot_time.max(service_time);
        if horizon > 0.0 {
            residual * service_time / horizon
        } else {
            residual
        }
    }

    /// The concurrency a window asks for: raw (KPA), or boot-aware: the demand by Little's law
    /// plus the backlog term.
    fn demand(&self, w: &WindowAverages, raw: f64, backlog: f64) -> f64 {
        if !self.boot_aware {
            return raw;
        }
        Self::littles_law(w, raw).map_or(raw, |(demand, _)| demand + backlog)
    }
}

impl Decider for Concurrency {
    fn name(&self) -> &'static str {
        "concurrency"
    }

    fn decide(&mut self, windows: &Windows, fleet: &FleetView, now: Nanos) -> Decision {
        let current = fleet.current();
        let stable = windows.stable(now);
        let panic = windows.panic(now);
        let (Some(stable_raw), Some(panic_raw)) = (stable.concurrency, panic.concurrency) else {
            let desired = fleet.clamp(current);
            return Decision::new(
                desired,
                current,
                format!("no concurrency observed yet: no change from {current}; desired {desired}"),
            );
        };
        let t = self.target_per_backend;
        let capacity = if self.boot_aware {
            current
        } else {
            fleet.ready
        };
        let backlog = self.backlog(&panic, panic_raw, fleet);
        let stable_c = self.demand(&stable, stable_raw, backlog);
        let panic_c = self.demand(&panic, panic_raw, backlog);
        let ready_for_rates = fleet.ready.max(1) as f64;
        let max_up = ceil_count(self.max_scale_up_rate * ready_for_rates).max(1);
        let max_down = (capacity as f64 / self.max_scale_down_rate).floor() as u32;
        let stable_n = ceil_count(stable_c / t).clamp(max_down.min(max_up), max_up);
        let panic_n = ceil_count(panic_c / t).clamp(max_down.min(max_up), max_up);

        // Panic state (KPA): enter on crossing, extend while over, leave after a quiet window.
        let ratio = panic_n as f64 / capacity.max(1) as f64;
        let over = ratio >= self.panic_threshold;
        let was_panicking = self.panicking();
        if over {
            self.panic_time = Some(now);
        } else if let Some(since) = self.panic_time {
            if since + self.stable_window <= now {
                self.panic_time = None;
                self.max_panic = 0;
            }
        }
        let counted = if self.boot_aware {
            "ready + starting"
        } else {
            "ready"
        };
        let described = |c: f64, raw: f64| {
            if (c - raw).abs() > 1e-9 {
                format!("{c:.1} (of {raw:.1} in flight + queued; the rest is backlog)")
            } else {
                format!("{c:.1}")
            }
        };
        let mut reason = format!(
            "concurrency {} over {}s -> ceil(/ {t:.2}) = {stable_n}; {} over {}s -> {panic_n}, \
             {ratio:.2}x the {capacity} {counted} (panic at {}x)",
            described(stable_c, stable_raw),
            secs(stable.covered()),
            described(panic_c, panic_raw),
            secs(panic.covered()),
            self.panic_threshold
        );
        let wanted = if self.panicking() {
            let n = stable_n.max(panic_n);
            if !was_panicking {
                reason.push_str("; panic starts");
            }
            if n < self.max_panic {
                reason.push_str(&format!(
                    "; panicking: no scale-down from {} (never while panicking)",
                    self.max_panic
                ));
            }
            self.max_panic = self.max_panic.max(n);
            self.max_panic
        } else {
            if was_panicking {
                reason.push_str(&format!(
                    "; panic ends: a full {}s stable window without crossing",
                    secs(self.stable_window)
                ));
            }
            stable_n
        };
        let desired = fleet.clamp(wanted);
        reason.push_str(&format!("; desired {desired}"));
        if desired != wanted {
            reason.push_str(&format!(" (within [{}, {}])", fleet.min, fleet.max));
        }

        let mut d = Decision::new(desired, wanted, reason)
            .input("stable_concurrency", stable_raw)
            .input("panic_concurrency", panic_raw)
            .input("stable_demand", stable_c)
            .input("panic_demand", panic_c)
            .input("target_per_backend", t)
            .input("stable_desired", stable_n as f64)
            .input("panic_desired", panic_n as f64)
            .input("panic_ratio", ratio)
            .input("ready", fleet.ready as f64)
            .input("starting", fleet.starting as f64)
            .input("max_scale_up", max_up as f64)
            .input("max_scale_down", max_down as f64);
        d.panic = self.panicking();
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{observation, run, FluidFleet, S};

    fn cfg() -> Autoscaler {
        Autoscaler {
            target: 10.0,
            utilisation: 1.0, // target per backend 10: round numbers
            min: 1,
            max: 1000,
            ..Default::default()
        }
    }

    fn feed(w: &mut Windows, from: u64, to: u64, concurrency: f64, rate: f64, ready: u32) {
        for t in from..=to {
            w.observe(observation(t * S, concurrency, rate, ready));
        }
    }

    fn at(d: &mut Concurrency, w: &Windows, t: u64, ready: u32, starting: u32) -> Decision {
        d.decide(w, &FleetView::counts(ready, starting, 1, 1000), t * S)
    }

    #[test]
    fn stable_mode_follows_the_stable_window() {
        let c = cfg();
        let mut d = Concurrency::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut w, 0, 59, 45.0, 100.0, 4);
        let dec = at(&mut d, &w, 59, 4, 0);
        assert_eq!(dec.desired, 5, "{}", dec.reason); // ceil(45 / 10)
        assert!(!dec.panic);
        // The default utilisation 0.7 aims lower: ceil(45 / 2.8) = 17, on a fleet of 17.
        let mut d = Concurrency::new(&Autoscaler::default());
        let dec = d.decide(&w, &FleetView::counts(17, 0, 1, 100), 59 * S);
        assert_eq!(dec.desired, 17, "{}", dec.reason);
    }

    #[test]
    fn a_short_rise_moves_the_stable_count_slowly_without_panic() {
        let c = cfg();
        let mut d = Concurrency::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut w, 0, 59, 40.0, 100.0, 4);
        // 6s at 60: panic window asks 6 on 4 (1.5x, below 2x); stable (54 x 40 + 6 x 60) / 60.
        feed(&mut w, 60, 65, 60.0, 100.0, 4);
        let dec = at(&mut d, &w, 65, 4, 0);
        assert!(!dec.panic, "{}", dec.reason);
        assert_eq!(dec.desired, 5, "{}", dec.reason); // ceil(42 / 10)
    }

    #[test]
    fn panic_starts_at_twice_the_fleet_and_takes_the_panic_count() {
        let c = cfg();
        let mut d = Concurrency::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut w, 0, 59, 40.0, 100.0, 4);
        feed(&mut w, 60, 65, 80.0, 200.0, 4); // panic window: 8 = 2x 4
        let dec = at(&mut d, &w, 65, 4, 0);
        assert!(dec.panic, "{}", dec.reason);
        assert!(dec.reason.contains("panic starts"), "{}", dec.reason);
        assert_eq!(dec.desired, 8, "{}", dec.reason);
        // Just under 2x does not panic.
        let mut d = Concurrency::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut w, 0, 59, 40.0, 100.0, 4);
        feed(&mut w, 60, 65, 70.0, 200.0, 4); // 7 on 4: 1.75x
        assert!(!at(&mut d, &w, 65, 4, 0).panic);
    }

    #[test]
    fn panic_never_scales_down_and_ends_after_a_quiet_stable_window() {
        let c = cfg();
        let mut d = Concurrency::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut w, 0, 59, 20.0, 100.0, 2);
        feed(&mut w, 60, 65, 100.0, 500.0, 2);
        let dec = at(&mut d, &w, 65, 2, 0);
        assert!(dec.panic);
        assert_eq!(dec.desired, 10);
        // Demand falls right back; the fleet got its 10. No scale-down while panicking, which
        // lasts a full stable window (60s) after the last crossing at 65.
        for t in 66..=124 {
            feed(&mut w, t, t, 20.0, 100.0, 10);
            let dec = at(&mut d, &w, t, 10, 0);
            assert!(dec.panic, "t={t}: {}", dec.reason);
            assert_eq!(dec.desired, 10, "t={t}: {}", dec.reason);
        }
        feed(&mut w, 125, 125, 20.0, 100.0, 10);
        let dec = at(&mut d, &w, 125, 10, 0);
        assert!(!dec.panic, "{}", dec.reason);
        assert!(dec.reason.contains("panic ends"), "{}", dec.reason);
        // Back in stable mode: the stable window still remembers the spike (5s of 100 in 60s);
        // ceil((55 x 20 + 5 x 100)/60 / 10) = 3, and no lower than half of 10.
        assert_eq!(dec.desired, 5, "{}", dec.reason);
    }

    #[test]
    fn crossing_again_extends_panic_and_raises_to_the_highest_count() {
        let c = cfg();
        let mut d = Concurrency::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut w, 0, 59, 20.0, 100.0, 2);
        feed(&mut w, 60, 65, 60.0, 300.0, 2);
        assert_eq!(at(&mut d, &w, 65, 2, 0).desired, 6);
        // Higher still at 100: 12 on 6 is 2x: extends panic at 100, raises to 12.
        feed(&mut w, 66, 94, 30.0, 150.0, 6);
        for t in 66..=94 {
            at(&mut d, &w, t, 6, 0);
        }
        feed(&mut w, 95, 100, 120.0, 600.0, 6);
        let dec = at(&mut d, &w, 100, 6, 0);
        assert!(dec.panic);
        assert_eq!(dec.desired, 12);
        // Still panicking at 159 (59s after the last crossing), not at 160.
        feed(&mut w, 101, 160, 10.0, 50.0, 12);
        assert!(at(&mut d, &w, 159, 12, 0).panic);
        assert_eq!(at(&mut d, &w, 159, 12, 0).desired, 12);
        assert!(!at(&mut d, &w, 160, 12, 0).panic);
    }

    #[test]
    fn scale_rates_bound_each_step() {
        let c = Autoscaler {
            max_scale_up_rate: 3.0,
            ..cfg()
        };
        let mut d = Concurrency::new(&c);
        let mut w = Windows::from_config(&c);
        feed(&mut w, 0, 59, 1000.0, 100.0, 2);
        // Wants 100; at most 3 x 2 = 6 in one step.
        assert_eq!(at(&mut d, &w, 59, 2, 0).desired, 6);
        // Scale-down: at most halving per step.
        let mut d = Concurrency::new(&cfg());
        let mut w = Windows::from_config(&c);
        feed(&mut w, 0, 59, 10.0, 100.0, 20);
        assert_eq!(at(&mut d, &w, 59, 20, 0).desired, 10);
    }

    /// A spike from 40/s to 400/s on 2 backends of 4 workers x 100ms (40/s each) whose
    /// replacements take 30s to boot. Returns the desired counts by second.
    fn spike_with_slow_boot(boot_aware: bool) -> Vec<(u64, u32)> {
        let c = Autoscaler {
            target: 4.0,
            utilisation: 0.7,
            boot_aware_panic: boot_aware,
            boot_time: ebbtide_config::time::HumanDuration::from_secs(30),
            min: 1,
            max: 100_000,
            ..Default::default()
        };
        let mut d = Concurrency::new(&c);
        let mut w = Windows::from_config(&c);
        let mut fleet = FluidFleet::new(2, 30 * S, 0.1, 4);
        fleet.max = 100_000;
        let load = |t: u64| if t < 60 { 40.0 } else { 400.0 };
        run(&mut d, &mut w, &mut fleet, 150, load)
            .into_iter()
            .map(|(t, dec)| (t, dec.desired))
            .collect()
    }

    #[test]
    fn boot_aware_panic_does_not_keep_ordering_while_the_first_batch_boots() {
        let desired = spike_with_slow_boot(true);
        let at = |t: u64| desired.iter().find(|(s, _)| *s == t).unwrap().1;
        // The first batch is ordered as the spike fills the panic window (6s)...
        assert!(at(60) > 2, "{desired:?}");
        let first = at(66);
        // ...sized for the demand: 400/s x 0.1s = 40 in flight at 2.8 per backend = 15, not
        // for the thousands of queued requests...
        assert_eq!(first, 15, "{desired:?}");
        // ...and while it boots (until ~90) the queue grows by 320/s but nothing more is ordered.
        for t in 66..=89 {
            assert_eq!(at(t), first, "t={t}: {desired:?}");
        }
        // Once up, at most a few more to drain what is left of the backlog.
        let most = desired.iter().map(|x| x.1).max().unwrap();
        assert!(most <= 25, "{desired:?}");
    }

    #[test]
    fn without_boot_awareness_kpa_floods_while_backends_boot() {
        // The same spike with KPA's plain rule: the growing queue keeps raising the count.
        let desired = spike_with_slow_boot(false);
        let at = |t: u64| desired.iter().find(|(s, _)| *s == t).unwrap().1;
        assert!(at(89) > 2 * at(66), "66: {}, 89: {}", at(66), at(89));
        let aware = spike_with_slow_boot(true);
        let aware_max = aware.iter().map(|x| x.1).max().unwrap();
        let plain_max = desired.iter().map(|x| x.1).max().unwrap();
        assert!(plain_max > 10 * aware_max, "{plain_max} vs {aware_max}");
    }

    #[test]
    fn boot_aware_still_follows_a_rising_arrival_rate() {
        let c = Autoscaler {
            target: 4.0,
            utilisation: 0.7,
            boot_time: ebbtide_config::time::HumanDuration::from_secs(30),
            min: 1,
            max: 1000,
            ..Default::default()
        };
        let mut d = Concurrency::new(&c);
        let mut w = Windows::from_config(&c);
        let mut fleet = FluidFleet::new(2, 30 * S, 0.1, 4);
        // 400/s from 60, doubling to 800/s at 75 while the first batch boots: that is new
        // demand, and the fleet follows it (80 in flight: 29 backends, plus the backlog the
        // first 15 could not drain).
        let load = |t: u64| match t {
            0..=59 => 40.0,
            60..=74 => 400.0,
            _ => 800.0,
        };
        let out = run(&mut d, &mut w, &mut fleet, 89, load);
        let at = |t: u64| out.iter().find(|(s, _)| *s == t).unwrap().1.desired;
        assert_eq!(at(70), 15);
        assert!(at(88) >= 29, "70: {}, 88: {}", at(70), at(88));
        assert!(at(88) <= 45, "70: {}, 88: {}", at(70), at(88));
    }
}
