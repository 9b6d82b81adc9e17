//! Cold start: the time from the autoscaler's decision to launch a backend to the first request
//! that backend served, per provider (`ebbtide_cold_start_seconds{provider=...}`). It covers
//! what users wait for after a scale-out (the provider starting the instance, its boot, the
//! health checks, slow start), not only the boot the provider measures.
//!
//! Two parts: [`FirstRequest`], one per backend, armed with the decision time when the
//! autoscaler registers the backend and fired once by its first answered request; and
//! [`ColdStarts`], the cumulative histogram the fired values go to. Time is passed in.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The finite bucket upper bounds (`le`, inclusive), in seconds: 100 ms (a process on this
/// machine) to 10 minutes (a node scale-up in a cluster).
pub const BOUNDS_SECONDS: [f64; 13] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// One provider's observations.
#[derive(Debug, Clone, PartialEq)]
pub struct ColdStartSeries {
    /// The provider's config name (`local`, `command`, `docker`, `kubernetes`).
    pub provider: String,
    /// (upper bound in seconds, observations in this bucket alone): the finite bounds in
    /// order, then `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
    /// Observations in all.
    pub count: u64,
    /// Sum of the observations, in seconds.
    pub sum_seconds: f64,
}

/// Every cold start seen, by provider. Observations are rare (one per launch), so a mutex is
/// cheaper to read than it is worth avoiding.
#[derive(Debug, Default)]
pub struct ColdStarts {
    by_provider: Mutex<BTreeMap<String, ColdStartSeries>>,
}

impl ColdStarts {
    /// An empty histogram.
    pub fn new() -> Self {
        ColdStarts::default()
    }

    /// Records one cold start of `ns` nanoseconds of a backend from `provider`.
    pub fn observe(&self, provider: &str, ns: u64) {
        let seconds = ns as f64 / 1e9;
        let mut all = self.by_provider.lock().unwrap_or_else(|e| e.into_inner());
        let series = all
            .entry(provider.to_string())
            .or_insert_with(|| ColdStartSeries {
                provider: provider.to_string(),
                buckets: BOUNDS_SECONDS
                    .iter()
                    .chain(std::iter::once(&f64::INFINITY))
                    .map(|&b| (b, 0))
                    .collect(),
                count: 0,
                sum_seconds: 0.0,
            });
        let index = BOUNDS_SECONDS.partition_point(|&b| b < seconds);
        series.buckets[index].1 += 1;
        series.count += 1;
        series.sum_seconds += seconds;
    }

    /// Every provider's series, by provider name.
    pub fn snapshot(&self) -> Vec<ColdStartSeries> {
        let all = self.by_provider.lock().unwrap_or_else(|e| e.into_inner());
        all.values().cloned().collect()
    }
}

/// One backend's wait for its first request: armed with the launch decision's time, fired once.
#[derive(Debug, Default)]
pub struct FirstRequest {
    /// When the launch was decided (core time, at least 1); 0: not armed, or fired already.
    since: AtomicU64,
    /// The cold start once measured, in nanoseconds; 0: not yet.
    measured: AtomicU64,
    provider: OnceLock<String>,
}

impl FirstRequest {
    /// Waits for the first request of a backend `provider` was decided to launch at
    /// `decided_at`. Arming twice (a renewed registration) keeps the first.
    pub fn arm(&self, provider: &str, decided_at: u64) {
        if self.measured.load(Ordering::Acquire) != 0 {
            return;
        }
        if self.provider.set(provider.to_string()).is_ok() {
            self.since.store(decided_at.max(1), Ordering::Release);
        }
    }

    /// A request was served at `now()`: the first one since [`FirstRequest::arm`] returns
    /// (provider, cold start in ns), every later one None. One load on the request path when
    /// not armed (the clock is read only when armed).
    #[inline]
    pub fn served(&self, now: impl FnOnce() -> u64) -> Option<(&str, u64)> {
        if self.since.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.fire(now())
    }

    #[cold]
    fn fire(&self, now: u64) -> Option<(&str, u64)> {
        let since = self.since.swap(0, Ordering::AcqRel);
        if since == 0 {
            return None;
        }
        let took = now.saturating_sub(since).max(1);
        self.measured.store(took, Ordering::Release);
        Some((self.provider.get()?.as_str(), took))
    }

    /// The cold start measured, in nanoseconds, once its first request was served.
    pub fn measured(&self) -> Option<u64> {
        match self.measured.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn fires_once_on_the_first_request_after_arming() {
        let f = FirstRequest::default();
        assert_eq!(f.served(|| 5 * S), None, "not armed: a static backend");
        f.arm("docker", 10 * S);
        // A renewed registration does not move the start.
        f.arm("docker", 12 * S);
        assert_eq!(f.measured(), None);
        assert_eq!(f.served(|| 13 * S), Some(("docker", 3 * S)));
        assert_eq!(f.served(|| 14 * S), None);
        assert_eq!(f.measured(), Some(3 * S));
        // Nor does a registration after it fired.
        f.arm("docker", 20 * S);
        assert_eq!(f.served(|| 21 * S), None);
        assert_eq!(f.measured(), Some(3 * S));
    }

    #[test]
    fn the_histogram_keeps_one_series_per_provider_with_inclusive_bounds() {
        let h = ColdStarts::new();
        h.observe("local", S / 4);
        h.observe("local", 3 * S);
        h.observe("kubernetes", 700 * S);
        let snap = h.snapshot();
        assert_eq!(
            snap.iter().map(|s| s.provider.as_str()).collect::<Vec<_>>(),
            ["kubernetes", "local"]
        );
        let local = &snap[1];
        assert_eq!(local.count, 2);
        assert!((local.sum_seconds - 3.25).abs() < 1e-9);
        assert_eq!(local.buckets[1], (0.25, 1), "le is inclusive");
        assert_eq!(local.buckets[5], (5.0, 1));
        let k8s = &snap[0];
        assert_eq!(k8s.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(k8s.buckets.len(), BOUNDS_SECONDS.len() + 1);
    }
}
