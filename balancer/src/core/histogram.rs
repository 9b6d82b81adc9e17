//! A cumulative latency histogram for Prometheus (`ebbtide_request_duration_seconds`).
//!
//! Unlike [`crate::signals::SignalWindow`], which forgets everything older than its window, this
//! one only grows: Prometheus computes rates and quantiles itself from cumulative `le` buckets.
//! Recording is two `Relaxed` atomic adds (one bucket, the sum), lock-free and allocation-free.
//! The `_count` and the `+Inf` bucket are derived from the bucket counters at scrape time (`shell::metrics` writes them
//! out), so they
//! always agree; `_sum` is read separately and may be a few observations ahead or behind under
//! concurrent recording, which Prometheus tolerates.

use std::sync::atomic::{AtomicU64, Ordering};

/// The finite bucket upper bounds (`le`, inclusive) in nanoseconds: 0.5 ms to 30 s, roughly
/// 1-2.5-5 per decade, which suits a web service from cache hits to timeouts.
const BOUNDS: [u64; 15] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// What a scrape reads of a [`LatencyHistogram`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations in this bucket alone): the finite bounds in
    /// order, then `f64::INFINITY`.
    pub buckets: [(f64, u64); BOUNDS.len() + 1],
    /// Observations in all (the sum of the buckets).
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
}

/// A cumulative Prometheus histogram of latencies, safe to share between every connection task.
/// `_sum` is kept in whole microseconds (each observation rounded to the nearest one), so that a
/// `u64` lasts decades even at 10^4 seconds of latency per second.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Per-bucket (non-cumulative) counts; the last one is `+Inf` only.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram; allocate once and share (`Arc` or a `static`).
    pub const fn new() -> Self {
        #[allow(clippy::declare_interior_mutable_const)] // only used to build the array
        const ZERO: AtomicU64 = AtomicU64::new(0);
        LatencyHistogram {
            buckets: [ZERO; BOUNDS.len() + 1],
            sum_us: ZERO,
        }
    }

    /// Records one request's latency. A latency equal to a bound counts in that bound's bucket
    /// (`le` is inclusive).
    #[inline]
    pub fn observe(&self, latency_ns: u64) {
        let index = BOUNDS.partition_point(|&bound| bound < latency_ns);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(latency_ns.saturating_add(500) / 1_000, Ordering::Relaxed);
    }

    /// The buckets, count and sum now. `count` is the sum of the buckets, so it always agrees
    /// with them.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut buckets = [(f64::INFINITY, 0); BOUNDS.len() + 1];
        let mut count = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            count += n;
            let le = BOUNDS.get(i).map_or(f64::INFINITY, |&ns| ns as f64 / 1e9);
            buckets[i] = (le, n);
        }
        HistogramSnapshot {
            buckets,
            count,
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// The cumulative count at `le`, as a scraper reads it.
    fn count_at(s: &HistogramSnapshot, le: f64) -> u64 {
        s.buckets
            .iter()
            .take_while(|(b, _)| *b <= le)
            .map(|(_, n)| n)
            .sum()
    }

    #[test]
    fn buckets_are_inclusive_and_count_agrees() {
        let h = LatencyHistogram::new();
        // 1..=2000 ms, one each: sum = 2001 s, count = 2000.
        for ms in 1..=2_000u64 {
            h.observe(ms * MS);
        }
        h.observe(45_000 * MS); // beyond the last finite bound
        let p = h.snapshot();
        assert_eq!(p.buckets.len(), 16);
        for pair in p.buckets.windows(2) {
            assert!(pair[0].0 < pair[1].0, "le strictly increasing: {pair:?}");
        }
        assert_eq!(p.buckets[15], (f64::INFINITY, 1));
        assert_eq!(p.count, 2_001);
        assert_eq!(count_at(&p, f64::INFINITY), p.count);
        assert!(
            (p.sum_seconds - (2_001.0 + 45.0)).abs() < 1e-9,
            "sum {}",
            p.sum_seconds
        );

        // Bounds are inclusive: 1 ms is in le="0.001", 2 ms is not.
        assert_eq!(count_at(&p, 0.0005), 0);
        assert_eq!(count_at(&p, 0.001), 1);
        assert_eq!(count_at(&p, 0.0025), 2);
        assert_eq!(count_at(&p, 0.1), 100);
        assert_eq!(count_at(&p, 1.0), 1_000);
        assert_eq!(count_at(&p, 2.5), 2_000);
        assert_eq!(count_at(&p, 30.0), 2_000);
    }

    #[test]
    fn empty_histogram_is_zeros() {
        let p = LatencyHistogram::default().snapshot();
        assert!(p.buckets.iter().all(|&(_, n)| n == 0));
        assert_eq!((p.count, p.sum_seconds), (0, 0.0));
    }

    #[test]
    fn sub_millisecond_values_and_sum_rounding() {
        let h = LatencyHistogram::new();
        h.observe(0);
        h.observe(499_999); // 0.5 ms - 1 ns: rounds to 500 µs in the sum
        h.observe(500_000);
        h.observe(500_001);
        let p = h.snapshot();
        assert_eq!(count_at(&p, 0.0005), 3);
        assert_eq!(count_at(&p, 0.001), 4);
        assert!(
            (p.sum_seconds - 0.0015).abs() < 1e-12,
            "sum {}",
            p.sum_seconds
        );
    }

    #[test]
    fn concurrent_observations_are_all_counted() {
        let h = LatencyHistogram::new();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let h = &h;
                s.spawn(move || {
                    for i in 0..25_000u64 {
                        h.observe((t * 25_000 + i) * 1_000); // 0 .. 100 ms in 1 µs steps
                    }
                });
            }
        });
        let p = h.snapshot();
        assert_eq!(p.count, 100_000);
        assert_eq!(count_at(&p, 0.1), 100_000);
        assert_eq!(count_at(&p, 0.05), 50_001);
        // Sum of 0..100_000 µs.
        assert!((p.sum_seconds - 99_999.0 * 100_000.0 / 2.0 / 1e6).abs() < 1e-6);
    }
}
