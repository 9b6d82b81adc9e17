//! Tests of the parent module, kept in their own file so the rule reads on one screen.

use super::*;
use ebbtide_config::rng::Rng;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

const MS: Nanos = 1_000_000;
const S: Nanos = 1_000_000_000;

/// A simulated backend: `capacity` workers in front of a FIFO queue, so latency is the
/// service time up to `capacity` concurrent requests and grows linearly with the queue
/// beyond. Service times are jittered (uniform, +-30%) from a seeded generator: no threads,
/// no wall clock, the same run every time.
struct Sim {
    /// When each worker is free, earliest first.
    workers: BinaryHeap<Reverse<Nanos>>,
    service: Nanos,
    jitter: f64,
    rng: Rng,
    now: Nanos,
    in_flight: u32,
    /// (finish, sent, in flight at send), earliest finish first.
    pending: BinaryHeap<Reverse<(Nanos, Nanos, u32)>>,
    /// (time, limit, probing) every 10 ms.
    trace: Vec<(Nanos, u32, bool)>,
    next_mark: Nanos,
    /// Every response is a timeout.
    drop_all: bool,
    /// Exponential service times (mean `service`) instead of uniform jitter.
    exponential: bool,
}

impl Sim {
    fn new(capacity: usize, service: Nanos) -> Self {
        Sim {
            workers: (0..capacity).map(|_| Reverse(0)).collect(),
            service,
            jitter: 0.3,
            rng: Rng::new(7),
            now: 0,
            in_flight: 0,
            pending: BinaryHeap::new(),
            trace: Vec::new(),
            next_mark: 0,
            drop_all: false,
            exponential: false,
        }
    }

    /// Workers come or go (those that go finish what they started).
    fn set_capacity(&mut self, capacity: usize) {
        let mut free: Vec<Nanos> = self.workers.drain().map(|Reverse(t)| t).collect();
        free.sort_unstable();
        free.resize(capacity, self.now);
        self.workers = free.into_iter().map(Reverse).collect();
    }

    fn send(&mut self) {
        self.in_flight += 1;
        let Reverse(free) = self.workers.pop().unwrap();
        let start = self.now.max(free);
        let u = self.rng.next_f64();
        let service = if self.exponential {
            (-(1.0 - u).ln() * self.service as f64) as Nanos
        } else {
            (self.service as f64 * (1.0 + self.jitter * (2.0 * u - 1.0))) as Nanos
        };
        self.workers.push(Reverse(start + service));
        self.pending
            .push(Reverse((start + service, self.now, self.in_flight)));
    }

    /// Completes the earliest request if it finishes by `until`.
    fn complete_one(&mut self, lim: &AdaptiveLimit, until: Nanos) -> bool {
        let Some(&Reverse((finish, sent, n))) = self.pending.peek() else {
            return false;
        };
        if finish > until {
            return false;
        }
        self.pending.pop();
        self.now = finish;
        self.in_flight -= 1;
        lim.on_sample(finish - sent, n, self.drop_all, finish);
        while self.next_mark <= self.now {
            self.trace
                .push((self.next_mark, lim.limit(), lim.probing()));
            self.next_mark += 10 * MS;
        }
        true
    }

    /// Closed loop: as many requests in flight as the limit allows, until `until`.
    fn run_saturated(&mut self, lim: &AdaptiveLimit, until: Nanos) {
        loop {
            while self.in_flight < lim.limit() {
                self.send();
            }
            if !self.complete_one(lim, until) {
                break;
            }
        }
        self.now = until;
    }

    /// Open loop: one request every `gap` until `until`, sent when the limit allows.
    /// Returns how many the limit turned away.
    fn run_open(&mut self, lim: &AdaptiveLimit, gap: Nanos, until: Nanos) -> u32 {
        let mut turned_away = 0;
        let mut next_arrival = self.now;
        while next_arrival <= until {
            if self.complete_one(lim, next_arrival) {
                continue;
            }
            self.now = next_arrival;
            if self.in_flight < lim.limit() {
                self.send();
            } else {
                turned_away += 1;
            }
            next_arrival += gap;
        }
        while self.complete_one(lim, until) {}
        self.now = until;
        turned_away
    }

    /// Lets every request in flight finish (sending nothing new).
    fn drain(&mut self, lim: &AdaptiveLimit) {
        while self.complete_one(lim, Nanos::MAX) {}
    }

    /// Limits seen in `[from, to)` outside probes.
    fn limits(&self, from: Nanos, to: Nanos) -> Vec<u32> {
        self.trace
            .iter()
            .filter(|&&(t, _, probing)| t >= from && t < to && !probing)
            .map(|&(_, l, _)| l)
            .collect()
    }

    /// The first time in `[from, ..)` the limit (outside probes) satisfies `f`.
    fn first_time(&self, from: Nanos, f: impl Fn(u32) -> bool) -> Option<Nanos> {
        self.trace
            .iter()
            .find(|&&(t, l, probing)| t >= from && !probing && f(l))
            .map(|&(t, _, _)| t)
    }
}

fn config(initial: u32) -> LimitConfig {
    LimitConfig {
        initial_limit: initial,
        ..Default::default()
    }
}

/// Outside probes the limit stays within +-30% of `capacity` during `[from, to)`.
fn assert_converged(sim: &Sim, capacity: u32, from: Nanos, to: Nanos) {
    let seen = sim.limits(from, to);
    assert!(seen.len() > 100, "too few samples: {}", seen.len());
    let lo = *seen.iter().min().unwrap() as f64;
    let hi = *seen.iter().max().unwrap() as f64;
    let c = capacity as f64;
    assert!(
        lo >= 0.7 * c && hi <= 1.3 * c,
        "capacity {capacity}: the limit ranged {lo}..={hi}"
    );
}

/// Feeds one window's worth of samples (10, 10 ms apart, all the same) ending after `now`
/// has moved past the window; returns the new `now`.
fn feed_window(lim: &AdaptiveLimit, rtt: Nanos, in_flight: u32, dropped: u32, now: Nanos) -> Nanos {
    let mut t = now;
    for i in 0..10 {
        t += 10 * MS;
        lim.on_sample(rtt, in_flight, i < dropped, t);
    }
    t
}

/// A limiter with a 10 ms baseline taken from 50 light-traffic samples; returns it and the
/// time of the last sample (2.5 s).
fn with_baseline(cfg: LimitConfig) -> (AdaptiveLimit, Nanos) {
    let lim = AdaptiveLimit::new(cfg);
    let mut now = 0;
    for _ in 0..50 {
        now += 50 * MS;
        lim.on_sample(10 * MS, 1, false, now);
    }
    assert_eq!(lim.baseline(), Some(10 * MS));
    (lim, now)
}

#[test]
fn converges_to_the_capacity_from_below() {
    let lim = AdaptiveLimit::new(config(20));
    let mut sim = Sim::new(100, 10 * MS);
    sim.run_saturated(&lim, 30 * S);
    // Growth as documented: from 20 to within 30% of 100 in a few seconds.
    let reached = sim.first_time(0, |l| l >= 70).expect("never grew to 70");
    assert!(reached <= 3 * S, "took {reached} ns");
    assert_converged(&sim, 100, 5 * S, 30 * S);
}

#[test]
fn converges_to_the_capacity_from_above() {
    let lim = AdaptiveLimit::new(config(500));
    let mut sim = Sim::new(50, 10 * MS);
    sim.run_saturated(&lim, 30 * S);
    let reached = sim
        .first_time(0, |l| l <= 65)
        .expect("never came down to 65");
    assert!(reached <= 3 * S, "took {reached} ns");
    assert_converged(&sim, 50, 5 * S, 30 * S);
}

#[test]
fn converges_for_small_and_large_backends() {
    for capacity in [25u32, 300] {
        let lim = AdaptiveLimit::new(config(20));
        let mut sim = Sim::new(capacity as usize, 5 * MS);
        sim.run_saturated(&lim, 40 * S);
        assert_converged(&sim, capacity, 20 * S, 40 * S);
    }
    // Small backends: whole requests are coarse and one growth step is a large share, so
    // the limit sits between C and (1 + tolerance) x C plus a step.
    for (capacity, lo, hi) in [(4usize, 3u32, 6u32), (8, 7, 12)] {
        let lim = AdaptiveLimit::new(config(20));
        let mut sim = Sim::new(capacity, 5 * MS);
        sim.run_saturated(&lim, 20 * S);
        let seen = sim.limits(5 * S, 20 * S);
        assert!(
            seen.iter().all(|&l| (lo..=hi).contains(&l)),
            "{capacity}: {seen:?}"
        );
    }
}

#[test]
fn shrinks_when_latency_rises_sharply_then_remeasures() {
    let lim = AdaptiveLimit::new(config(20));
    let mut sim = Sim::new(50, 10 * MS);
    sim.run_saturated(&lim, 10 * S);
    let before = lim.limit();
    assert!((40..=65).contains(&before), "{before}");
    // Every request becomes five times slower (same number of workers).
    sim.service = 50 * MS;
    sim.run_saturated(&lim, 40 * S);
    let halved = sim
        .first_time(10 * S, |l| l * 2 <= before)
        .expect("did not shrink");
    assert!(
        halved <= 11 * S,
        "took {} ms to halve",
        (halved - 10 * S) / MS
    );
    // The shrink brings it down to unloaded concurrency, which re-measures the baseline,
    // and the limit comes back to the knee, which has not moved.
    assert!(lim.baseline().unwrap() >= 40 * MS, "{:?}", lim.baseline());
    assert_converged(&sim, 50, 30 * S, 40 * S);
}

#[test]
fn follows_a_drop_in_capacity() {
    let lim = AdaptiveLimit::new(config(20));
    let mut sim = Sim::new(100, 10 * MS);
    sim.run_saturated(&lim, 10 * S);
    sim.set_capacity(25);
    sim.run_saturated(&lim, 25 * S);
    let reached = sim.first_time(10 * S, |l| l <= 32).expect("did not follow");
    assert!(reached <= 13 * S, "took {} ms", (reached - 10 * S) / MS);
    assert_converged(&sim, 25, 15 * S, 25 * S);
}

#[test]
fn never_exceeds_the_maximum() {
    let lim = AdaptiveLimit::new(LimitConfig {
        max_limit: 150,
        ..config(20)
    });
    let mut sim = Sim::new(5_000, 10 * MS);
    sim.run_saturated(&lim, 20 * S);
    assert_eq!(lim.limit(), 150);
    assert!(sim.trace.iter().all(|&(_, l, _)| l <= 150));
    // An initial limit above the maximum is pulled down to it.
    let lim = AdaptiveLimit::new(LimitConfig {
        max_limit: 150,
        ..config(400)
    });
    assert_eq!(lim.limit(), 150);
}

#[test]
fn never_goes_below_the_minimum() {
    let lim = AdaptiveLimit::new(LimitConfig {
        min_limit: 3,
        ..config(20)
    });
    let mut sim = Sim::new(50, 10 * MS);
    sim.drop_all = true;
    sim.run_saturated(&lim, 10 * S);
    assert_eq!(lim.limit(), 3);
    assert!(sim.trace.iter().all(|&(_, l, _)| l >= 3));
    // ~0.9 per 100 ms window: from 20 to 3 in about 18 windows.
    let reached = sim.first_time(0, |l| l == 3).unwrap();
    assert!(reached <= 3 * S, "took {reached}");
}

#[test]
fn does_not_grow_when_idle_or_lightly_loaded() {
    let lim = AdaptiveLimit::new(config(20));
    // No samples at all: nothing moves, however long.
    assert_eq!(lim.limit(), 20);
    assert_eq!(lim.baseline(), None);
    // A trickle (at most one request in flight) on a backend that could take 100: the
    // baseline is measured passively, no probe, no growth.
    let mut sim = Sim::new(100, 10 * MS);
    assert_eq!(sim.run_open(&lim, 20 * MS, 60 * S), 0);
    assert!(lim
        .baseline()
        .is_some_and(|b| (8 * MS..12 * MS).contains(&b)));
    assert!(sim.trace.iter().all(|&(_, l, probing)| l == 20 && !probing));
    // Steady traffic at about 10 in flight: still no evidence that more is wanted.
    assert_eq!(sim.run_open(&lim, MS, 120 * S), 0);
    assert!(sim.trace.iter().all(|&(_, l, probing)| l == 20 && !probing));
}

#[test]
fn light_traffic_after_saturation_leaves_the_limit_alone() {
    let lim = AdaptiveLimit::new(config(20));
    let mut sim = Sim::new(100, 10 * MS);
    sim.run_saturated(&lim, 10 * S);
    sim.drain(&lim);
    // About 20 in flight, well under the learnt limit: after the last saturated window has
    // closed, a minute without a single change.
    let t = sim.now;
    assert_eq!(sim.run_open(&lim, MS / 2, t + S), 0);
    let learnt = lim.limit();
    assert!(learnt > 100, "{learnt}");
    assert_eq!(sim.run_open(&lim, MS / 2, t + 61 * S), 0);
    assert!(sim.limits(t + S, t + 61 * S).iter().all(|&l| l == learnt));
}

#[test]
fn grows_by_half_the_square_root_per_window_at_the_limit() {
    let (lim, mut now) = with_baseline(config(20));
    let mut expected = 20.0f64;
    for _ in 0..4 {
        now = feed_window(&lim, 10 * MS, lim.limit(), 0, now);
        expected += 0.5 * expected.sqrt();
        assert_eq!(lim.limit(), expected.round() as u32);
    }
}

#[test]
fn grows_only_with_at_least_80_percent_of_the_limit_in_flight() {
    let (lim, mut now) = with_baseline(config(20));
    for _ in 0..10 {
        now = feed_window(&lim, 10 * MS, 15, 0, now);
    }
    assert_eq!(lim.limit(), 20);
    feed_window(&lim, 10 * MS, 16, 0, now);
    assert_eq!(lim.limit(), 22);
}

#[test]
fn shrinks_halfway_towards_the_gradient() {
    let (lim, now) = with_baseline(config(20));
    // 20 ms against a target of 11.5 ms: gradient 0.575, raw 11.5, smoothed 15.75 -> 16.
    let now = feed_window(&lim, 20 * MS, 20, 0, now);
    assert_eq!(lim.limit(), 16);
    // 100 ms: the gradient is clamped at 0.5, so -25% at most per window.
    let (lim, _) = with_baseline(config(20));
    feed_window(&lim, 100 * MS, 20, 0, now);
    assert_eq!(lim.limit(), 15);
}

#[test]
fn latency_within_tolerance_does_not_shrink() {
    let (lim, mut now) = with_baseline(config(20));
    for _ in 0..5 {
        now = feed_window(&lim, 11 * MS, 5, 0, now);
    }
    assert_eq!(lim.limit(), 20);
}

#[test]
fn a_dropped_request_backs_off_by_ten_percent_per_window() {
    // Even without a baseline (and such a window starts no probe).
    let lim = AdaptiveLimit::new(config(20));
    let now = feed_window(&lim, 10 * MS, 20, 1, 0);
    assert_eq!(lim.limit(), 18);
    assert!(!lim.probing());
    // Several drops in one window still count once.
    let now = feed_window(&lim, 10 * MS, 18, 10, now);
    assert_eq!(lim.limit(), 16); // 20 x 0.9 x 0.9 = 16.2
                                 // Drops while the backend is far from its limit are not the limit's doing.
    feed_window(&lim, 10 * MS, 5, 10, now);
    assert_eq!(lim.limit(), 16);
}

#[test]
fn without_a_baseline_a_window_at_the_limit_starts_a_probe() {
    let lim = AdaptiveLimit::new(config(20));
    let now = feed_window(&lim, 10 * MS, 20, 0, 0);
    assert!(lim.probing());
    assert_eq!(lim.limit(), 2);
    // Samples sent with 3 in flight are not unloaded: the probe goes on.
    let mut t = now;
    for _ in 0..30 {
        t += MS;
        lim.on_sample(10 * MS, 3, false, t);
    }
    assert!(lim.probing());
    // 50 unloaded samples end it at once and restore the limit.
    for i in 0..50 {
        t += MS;
        lim.on_sample(8 * MS, 1 + i % 2, false, t);
    }
    assert!(!lim.probing());
    assert_eq!(lim.baseline(), Some(8 * MS));
    assert_eq!(lim.limit(), 20);
}

#[test]
fn a_probe_that_gets_no_unloaded_samples_gives_up() {
    let lim = AdaptiveLimit::new(config(20));
    let mut t = feed_window(&lim, 10 * MS, 20, 0, 0);
    assert!(lim.probing());
    // Stuck requests finishing with many in flight, for 20 windows: the probe ends.
    while lim.probing() {
        t += 10 * MS;
        lim.on_sample(10 * MS, 30, false, t);
        assert!(t < 3 * S, "the probe never ends");
    }
    assert_eq!(lim.limit(), 20);
    assert_eq!(lim.baseline(), None);
}

#[test]
fn saturated_backends_are_re_probed_on_a_ramp_then_every_interval() {
    let lim = AdaptiveLimit::new(config(20));
    let mut sim = Sim::new(50, 10 * MS);
    sim.run_saturated(&lim, 130 * S);
    // Probe starts: transitions into probing.
    let starts: Vec<Nanos> = sim
        .trace
        .windows(2)
        .filter(|w| !w[0].2 && w[1].2)
        .map(|w| w[1].0)
        .collect();
    // At start-up (no baseline yet), then after 1/8, 1/4, 1/2 and 1 x 60 s, each plus up to
    // 25% jitter and the probe itself.
    assert!(starts[0] <= S, "{starts:?}");
    assert_eq!(starts.len(), 5, "{starts:?}");
    for (k, gap) in starts.windows(2).map(|w| w[1] - w[0]).enumerate() {
        let interval = (60 * S) >> (3 - k);
        assert!(
            (interval..=interval * 5 / 4 + S).contains(&gap),
            "probe gap {k}: {gap}"
        );
    }
    // Each probe holds the limit at 2, is short, and returns to about the same limit.
    for &s in &starts[1..] {
        let i = sim.trace.iter().position(|&(t, _, _)| t == s).unwrap();
        let before = sim.trace[i - 1].1;
        let len = sim.trace[i..].iter().take_while(|x| x.2).count();
        assert!(sim.trace[i..i + len].iter().all(|x| x.1 == 2));
        assert!(len <= 40, "probe lasted {len} x 10 ms");
        let after = sim.trace[i + len].1;
        assert!(after.abs_diff(before) <= 5, "{before} -> {after}");
    }
}

#[test]
fn ten_latency_cuts_in_a_row_re_measure_the_baseline() {
    let (lim, mut now) = with_baseline(config(20));
    // 12.5 ms against a target of 11.5 ms: a small cut each window.
    for _ in 0..9 {
        now = feed_window(&lim, 12_500_000, lim.limit(), 0, now);
        assert!(!lim.probing());
    }
    let before = lim.limit();
    assert!(before < 20);
    now = feed_window(&lim, 12_500_000, lim.limit(), 0, now);
    assert!(lim.probing(), "the tenth cut in a row starts a probe");
    assert_eq!(lim.limit(), 2);
    // The backend really is at 12.5 ms unloaded: the new measurement is averaged in.
    for _ in 0..50 {
        now += MS;
        lim.on_sample(12_500_000, 1, false, now);
    }
    assert!(!lim.probing());
    assert_eq!(lim.baseline(), Some(11_250_000));
    assert!(lim.limit().abs_diff(before) <= 1);
}

#[test]
fn a_close_measurement_is_averaged_and_a_far_one_replaces() {
    let (lim, mut now) = with_baseline(config(20));
    // Light traffic refreshes the baseline passively, at the first window end after 50
    // unloaded samples; returns the new baseline.
    let mut trickle = |rtt: Nanos| {
        let before = lim.baseline();
        for n in 1..=52 {
            now += 50 * MS;
            lim.on_sample(rtt, 1, false, now);
            if lim.baseline() != before {
                assert!(n >= 50, "a baseline from {n} samples");
                return lim.baseline().unwrap();
            }
        }
        panic!("no new baseline");
    };
    assert_eq!(trickle(14 * MS), 12 * MS); // (10 + 14) / 2
    assert_eq!(trickle(30 * MS), 30 * MS); // more than twice 12: the backend changed
    assert_eq!(trickle(14 * MS), 14 * MS); // less than half of 30
    assert_eq!(trickle(20 * MS), 17 * MS);
    assert_eq!(lim.limit(), 20);
}

#[test]
fn holds_up_with_exponential_service_times() {
    // M/M/c-like: service times with a standard deviation as large as their mean make both
    // the baseline and the windows noisy. The limit must neither collapse nor run away.
    for capacity in [16usize, 100] {
        for seed in 1..=3 {
            let lim = AdaptiveLimit::new(config(20));
            let mut sim = Sim::new(capacity, 5 * MS);
            sim.rng = Rng::new(seed);
            sim.exponential = true;
            sim.run_saturated(&lim, 40 * S);
            let seen = sim.limits(15 * S, 40 * S);
            let c = capacity as f64;
            let lo = *seen.iter().min().unwrap() as f64 / c;
            let hi = *seen.iter().max().unwrap() as f64 / c;
            let mean = seen.iter().map(|&l| l as f64).sum::<f64>() / seen.len() as f64 / c;
            assert!(
                lo >= 0.6 && hi <= 1.7 && (0.9..=1.4).contains(&mean),
                "capacity {capacity}, seed {seed}: {lo:.2}..{hi:.2} x C, mean {mean:.2}"
            );
        }
    }
}

#[test]
fn out_of_range_settings_are_pulled_into_range() {
    let lim = AdaptiveLimit::new(LimitConfig {
        min_limit: 0,
        max_limit: 0,
        initial_limit: 0,
        tolerance: f64::NAN,
        smoothing: 0.0,
        backoff: 7.0,
        window: 0,
        min_window_samples: 0,
        probe_interval: 0,
        probe_concurrency: 0,
        probe_samples: 0,
    });
    let c = lim.config();
    assert_eq!((c.min_limit, c.max_limit, c.initial_limit), (1, 1, 1));
    assert_eq!((c.tolerance, c.smoothing, c.backoff), (0.0, 1.0, 0.9));
    assert_eq!(lim.limit(), 1);
    // And it runs: samples of every kind keep it at its only possible value.
    for t in 1..1000 {
        lim.on_sample(t * 1000, (t % 3) as u32, t % 7 == 0, t * MS);
    }
    assert_eq!(lim.limit(), 1);
}

#[test]
fn four_threads_reporting_timeouts_drive_it_to_the_minimum() {
    let (lim, t0) = with_baseline(LimitConfig {
        min_limit: 4,
        ..config(200)
    });
    let lim = Arc::new(lim);
    let threads: Vec<_> = (0..4u64)
        .map(|k| {
            let lim = lim.clone();
            std::thread::spawn(move || {
                for i in 0..50_000u64 {
                    lim.on_sample(S, lim.limit(), true, t0 + i * 100_000 + k);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // 5 s of windows, each x0.9: 200 -> 4 needs 38 of the 50.
    assert_eq!(lim.limit(), 4);
}
