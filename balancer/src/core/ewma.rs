//! Peak-EWMA latency estimate, one per backend: the signal behind the `peak_ewma` policy.
//!
//! The estimate jumps up to any sample above it at once (the "peak": a backend that just got slow
//! is avoided immediately) and otherwise moves toward new samples as an exponentially weighted
//! moving average whose weights depend on elapsed time, not on the number of samples: a sample
//! `elapsed` after the previous one gets weight `1 - e^(-elapsed/decay)`. Between samples the
//! estimate decays toward zero in the same way, so a backend that was slow once is tried again
//! after a while instead of being shunned forever. Same idea as Finagle's and tower's PeakEwma.
//!
//! Sans-IO: time is passed in as [`Nanos`]. Lock-free: the estimate (f64 bits) and the time of the
//! last update are two atomics, read and written with plain loads and stores rather than a
//! compare-and-swap loop. Two samples observed at the same moment on two threads can therefore
//! lose one of them, and a reader can pair a new estimate with the previous timestamp (which only
//! decays it slightly more). An estimate is a heuristic and the next sample corrects it, so a rare
//! lost update is cheaper than a lock or a retry loop on every response.

use ebbtide_config::time::Nanos;
use std::sync::atomic::{AtomicU64, Ordering};

/// A backend's peak-EWMA round-trip-time estimate, updated on every response and read on every
/// pick (see the module docs for the rule and the concurrency trade-off).
#[derive(Debug)]
pub struct PeakEwma {
    /// Decay time in ns, as f64 bits: a value `decay` old weighs e^-1 (about 37%). An atomic
    /// so that a config reload can change it ([`PeakEwma::set_decay`]).
    decay_ns: AtomicU64,
    /// The estimate at `updated_at`, in ns, as f64 bits.
    estimate_bits: AtomicU64,
    /// When the estimate was last set.
    updated_at: AtomicU64,
}

impl PeakEwma {
    /// A fresh estimate with no samples (it reads 0) whose old samples weigh e^(-age/decay).
    /// A zero `decay` is taken as 1ns: every sample then replaces the estimate.
    pub fn new(decay: Nanos) -> Self {
        PeakEwma {
            decay_ns: AtomicU64::new((decay.max(1) as f64).to_bits()),
            estimate_bits: AtomicU64::new(0f64.to_bits()),
            updated_at: AtomicU64::new(0),
        }
    }

    /// Changes the decay time from now on (config reload); the estimate is kept.
    pub fn set_decay(&self, decay: Nanos) {
        self.decay_ns
            .store((decay.max(1) as f64).to_bits(), Ordering::Relaxed);
    }

    /// The decay time in ns.
    pub fn decay(&self) -> Nanos {
        f64::from_bits(self.decay_ns.load(Ordering::Relaxed)) as Nanos
    }

    /// Folds in one round-trip time observed at `now`: a sample above the current estimate
    /// replaces it; a lower one is blended in with weight `1 - e^(-elapsed/decay)`.
    pub fn observe(&self, rtt_ns: u64, now: Nanos) {
        let current = f64::from_bits(self.estimate_bits.load(Ordering::Relaxed));
        let updated_at = self.updated_at.load(Ordering::Relaxed);
        let rtt = rtt_ns as f64;
        let next = if rtt > current {
            rtt
        } else {
            let keep = self.weight_kept(now.saturating_sub(updated_at));
            current * keep + rtt * (1.0 - keep)
        };
        self.estimate_bits.store(next.to_bits(), Ordering::Relaxed);
        // A thread whose clock reading lags another's must not move the stamp backwards.
        self.updated_at.fetch_max(now, Ordering::Relaxed);
    }

    /// The estimate at `now` in ns: the last value decayed toward zero for the time since.
    /// 0 means no samples yet (or none for many decay times); the policy then uses a default.
    pub fn estimate(&self, now: Nanos) -> u64 {
        let current = f64::from_bits(self.estimate_bits.load(Ordering::Relaxed));
        if current <= 0.0 {
            return 0;
        }
        let updated_at = self.updated_at.load(Ordering::Relaxed);
        (current * self.weight_kept(now.saturating_sub(updated_at))).round() as u64
    }

    /// e^(-elapsed/decay): the weight the old estimate keeps after `elapsed` ns.
    #[inline]
    fn weight_kept(&self, elapsed: Nanos) -> f64 {
        if elapsed == 0 {
            1.0
        } else {
            let decay = f64::from_bits(self.decay_ns.load(Ordering::Relaxed));
            (-(elapsed as f64) / decay).exp()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const SEC: u64 = 1_000_000_000;

    #[test]
    fn starts_at_zero_meaning_no_samples() {
        let e = PeakEwma::new(10 * SEC);
        assert_eq!(e.estimate(0), 0);
        assert_eq!(e.estimate(100 * SEC), 0);
    }

    #[test]
    fn a_sample_above_the_estimate_replaces_it_at_once() {
        let e = PeakEwma::new(10 * SEC);
        e.observe(10 * MS, SEC);
        assert_eq!(e.estimate(SEC), 10 * MS);
        e.observe(200 * MS, SEC + 1);
        assert_eq!(e.estimate(SEC + 1), 200 * MS);
    }

    #[test]
    fn a_lower_sample_is_blended_with_time_based_weight() {
        let decay = 10 * SEC;
        let e = PeakEwma::new(decay);
        e.observe(100 * MS, 0);
        // One decay time later the old value keeps e^-1 of its weight.
        e.observe(0, decay);
        let want = 100.0 * MS as f64 * (-1.0f64).exp();
        let got = e.estimate(decay) as f64;
        assert!((got - want).abs() < 2.0, "got {got}, want {want}");
        // A lower sample right after the last one barely moves it.
        let before = e.estimate(decay);
        e.observe(MS, decay);
        assert_eq!(e.estimate(decay), before);
    }

    #[test]
    fn a_new_decay_applies_from_then_on_and_keeps_the_estimate() {
        let e = PeakEwma::new(10 * SEC);
        e.observe(100 * MS, 0);
        e.set_decay(SEC);
        assert_eq!(e.decay(), SEC);
        assert_eq!(e.estimate(0), 100 * MS);
        // One second is now one decay time: e^-1 is kept, not e^-0.1.
        let want = 100.0 * MS as f64 * (-1.0f64).exp();
        let got = e.estimate(SEC) as f64;
        assert!((got - want).abs() < 2.0, "got {got}, want {want}");
    }

    #[test]
    fn many_low_samples_pull_the_estimate_down_to_them() {
        let e = PeakEwma::new(SEC);
        e.observe(500 * MS, 0);
        for k in 1..=200u64 {
            e.observe(5 * MS, k * 100 * MS);
        }
        let got = e.estimate(200 * 100 * MS);
        assert!((5 * MS - 10_000..=5 * MS + 10_000).contains(&got), "{got}");
    }

    #[test]
    fn the_estimate_decays_toward_zero_without_samples() {
        let e = PeakEwma::new(SEC);
        e.observe(100 * MS, 0);
        let a = e.estimate(SEC);
        let b = e.estimate(5 * SEC);
        assert!(a < 100 * MS && b < a, "{a} {b}");
        assert_eq!(e.estimate(100 * SEC), 0);
    }

    #[test]
    fn a_clock_reading_from_the_past_does_not_move_time_backwards() {
        let e = PeakEwma::new(SEC);
        e.observe(100 * MS, 10 * SEC);
        e.observe(50 * MS, 9 * SEC); // elapsed saturates to 0: no weight for the new sample
        assert_eq!(e.estimate(10 * SEC), 100 * MS);
    }

    #[test]
    fn concurrent_observers_leave_a_sane_estimate() {
        let e = std::sync::Arc::new(PeakEwma::new(SEC));
        let threads: Vec<_> = (0..2)
            .map(|t| {
                let e = e.clone();
                std::thread::spawn(move || {
                    for k in 0..10_000u64 {
                        e.observe(MS + t * MS, k * 1_000);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Read at the last samples' time: the blend of 1 ms and 2 ms samples, not yet decayed
        // (read 1 us later, a 1 ms estimate decays to 999,999 ns).
        let got = e.estimate(9_999 * 1_000);
        assert!((MS..=2 * MS).contains(&got), "{got}");
    }
}
