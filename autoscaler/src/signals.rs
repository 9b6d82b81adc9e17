//! Signals into the autoscaler, through one trait and from two sources: the balancer in the same
//! process, and balancers elsewhere polled through `GET /api/v1/signals` (`ebbtide autoscale`).
//! Both hand over [`Reading`]s, one per balancer; a [`Sampler`] (sans-IO, time passed in) turns
//! successive readings into the fleet-wide [`Observation`] the windows average.

use crate::providers::ProviderFuture;
use crate::windows::Observation;
use ebbtide_config::time::Nanos;
use serde::{Deserialize, Serialize};

/// One balancer's numbers at one moment: cumulative counters, so rates can be taken over any
/// interval, and gauges. The fields are those `/api/v1/signals` carries.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Reading {
    /// Requests that have arrived since the balancer started.
    pub arrivals_total: u64,
    /// Requests answered since the balancer started.
    pub completions_total: u64,
    /// Requests at backends now.
    pub in_flight: u64,
    /// Requests waiting in the balancer for a free backend now.
    pub queue_depth: u64,
    /// Completions in the balancer's signal window (0: no latency figures below).
    pub window_completions: u64,
    /// p99 latency over the signal window, milliseconds.
    pub p99_ms: f64,
    /// Mean latency over the signal window, milliseconds.
    pub mean_ms: f64,
    /// Mean time at a backend (request sent to response end) over the window's completions a
    /// backend answered, milliseconds; 0: not measured (none, or an older balancer).
    #[serde(default)]
    pub backend_ms: f64,
    /// Backends taking traffic now.
    pub active_backends: u32,
}

/// Where readings come from.
pub trait SignalSource: Send {
    /// One entry per balancer, in the same order every time, `None` for one that did not
    /// answer; an error when none did (the control loop then skips this sample, and the windows
    /// hold the last one).
    fn read(&mut self) -> ProviderFuture<'_, Result<Vec<Option<Reading>>, String>>;
}

/// Turns readings into observations: rates over the time since the previous reading of the same
/// balancer, sums over balancers.
#[derive(Debug, Clone)]
pub struct Sampler {
    workers: u32,
    previous: Vec<Option<(Nanos, u64, u64)>>,
}

impl Sampler {
    /// A sampler for backends of `workers` servers each (the service rate per backend is
    /// workers / mean latency).
    pub fn new(workers: u32) -> Self {
        Sampler {
            workers: workers.max(1),
            previous: Vec::new(),
        }
    }

    /// The fleet-wide observation at `now` from one reading per balancer (in the same order
    /// every time; `None` for one that did not answer, whose rates are then taken over the
    /// longer gap when it answers again), with `starting` backends booting. A balancer whose
    /// counters went backwards restarted: what it counted since is taken as this interval's.
    pub fn observe(
        &mut self,
        now: Nanos,
        readings: &[Option<Reading>],
        starting: u32,
    ) -> Observation {
        self.previous
            .resize(readings.len().max(self.previous.len()), None);
        let (mut arrival_rate, mut completion_rate) = (0.0, 0.0);
        let (mut in_flight, mut queue_depth, mut ready) = (0u64, 0u64, 0u32);
        let (mut p99, mut completions) = (None::<f64>, 0u64);
        let (mut weighted_mean, mut weighted_backend, mut backend_weight) = (0.0, 0.0, 0u64);
        for (r, prev) in readings.iter().zip(self.previous.iter_mut()) {
            let Some(r) = r else { continue };
            if let Some((at, arrivals, done)) = *prev {
                let dt = (now.saturating_sub(at) as f64 / 1e9).max(1e-3);
                let delta = |total: u64, before: u64| {
                    if total >= before {
                        total - before
                    } else {
                        total
                    }
                };
                arrival_rate += delta(r.arrivals_total, arrivals) as f64 / dt;
                completion_rate += delta(r.completions_total, done) as f64 / dt;
            }
            *prev = Some((now, r.arrivals_total, r.completions_total));
            in_flight += r.in_flight;
            queue_depth += r.queue_depth;
            // The same backends are registered with every balancer: the fleet is the largest
            // count any of them sees, not the sum.
            ready = ready.max(r.active_backends);
            if r.window_completions > 0 {
                // Percentiles do not add up; the worst balancer's p99 is the fleet's bound.
                p99 = Some(p99.map_or(r.p99_ms, |p: f64| p.max(r.p99_ms)));
                weighted_mean += r.mean_ms * r.window_completions as f64;
                if r.backend_ms > 0.0 {
                    weighted_backend += r.backend_ms * r.window_completions as f64;
                    backend_weight += r.window_completions;
                }
                completions += r.window_completions;
            }
        }
        // Service rate per backend: its workers over the mean time a request spends at a
        // backend, not the mean latency, so that a queue in the balancer (a step, boots, a cap)
        // does not read as slower backends. The backend's own queueing is still in it (when a
        // balancer sends a backend more than its workers), which errs low, towards more
        // backends. A balancer that does not measure it: the mean latency, only while nothing
        // waits in the balancer.
        let at_backends = if backend_weight > 0 {
            Some(weighted_backend / backend_weight as f64)
        } else {
            (completions > 0 && queue_depth == 0).then(|| weighted_mean / completions as f64)
        };
        let service_rate_per_backend = at_backends
            .filter(|&m| m > 0.0)
            .map(|m| self.workers as f64 / (m / 1e3));
        Observation {
            at: now,
            concurrency: (in_flight + queue_depth) as f64,
            arrival_rate,
            completion_rate,
            queue_depth: queue_depth as f64,
            p99_ms: p99,
            service_rate_per_backend,
            ready,
            starting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;

    fn reading(arrivals: u64, completions: u64, in_flight: u64, active: u32) -> Reading {
        Reading {
            arrivals_total: arrivals,
            completions_total: completions,
            in_flight,
            active_backends: active,
            ..Reading::default()
        }
    }

    #[test]
    fn rates_are_over_the_interval_and_summed_over_balancers() {
        let mut s = Sampler::new(4);
        let first = s.observe(
            10 * S,
            &[Some(reading(100, 90, 3, 2)), Some(reading(50, 50, 1, 2))],
            0,
        );
        assert_eq!(first.arrival_rate, 0.0, "no interval yet");
        assert_eq!(first.concurrency, 4.0);
        let o = s.observe(
            12 * S,
            &[Some(reading(300, 280, 5, 3)), Some(reading(150, 140, 2, 2))],
            1,
        );
        assert_eq!(o.arrival_rate, (200.0 + 100.0) / 2.0);
        assert_eq!(o.completion_rate, (190.0 + 90.0) / 2.0);
        assert_eq!(o.concurrency, 7.0);
        assert_eq!(
            (o.ready, o.starting),
            (3, 1),
            "ready is the largest count, not the sum"
        );
    }

    #[test]
    fn a_restarted_balancer_counts_from_zero() {
        let mut s = Sampler::new(1);
        s.observe(0, &[Some(reading(1000, 1000, 0, 1))], 0);
        let o = s.observe(S, &[Some(reading(40, 30, 0, 1))], 0);
        assert_eq!(o.arrival_rate, 40.0);
        assert_eq!(o.completion_rate, 30.0);
    }

    #[test]
    fn a_balancer_that_missed_a_reading_is_averaged_over_the_gap() {
        let mut s = Sampler::new(1);
        let both = |a, b| [Some(reading(a, a, 1, 2)), Some(reading(b, b, 1, 2))];
        s.observe(0, &both(0, 0), 0);
        let o = s.observe(S, &[Some(reading(100, 100, 1, 2)), None], 0);
        assert_eq!(o.arrival_rate, 100.0, "only the one that answered");
        assert_eq!(o.concurrency, 1.0);
        let o = s.observe(2 * S, &both(200, 400), 0);
        assert_eq!(
            o.arrival_rate,
            100.0 + 400.0 / 2.0,
            "the second over its 2 s gap"
        );
    }

    #[test]
    fn latency_is_the_worst_p99_and_the_weighted_mean() {
        let mut s = Sampler::new(4);
        let a = Reading {
            window_completions: 300,
            p99_ms: 80.0,
            mean_ms: 20.0,
            ..Reading::default()
        };
        let b = Reading {
            window_completions: 100,
            p99_ms: 120.0,
            mean_ms: 40.0,
            ..Reading::default()
        };
        let idle = Reading {
            p99_ms: 999.0,
            ..Reading::default()
        };
        let o = s.observe(S, &[Some(a), Some(b), Some(idle)], 0);
        assert_eq!(
            o.p99_ms,
            Some(120.0),
            "an idle balancer's stale p99 does not count"
        );
        // mean 25 ms over 400 completions: 4 workers / 25 ms = 160/s.
        assert_eq!(o.service_rate_per_backend, Some(160.0));
        let queued = Reading {
            queue_depth: 5,
            ..a
        };
        let o = s.observe(2 * S, &[Some(queued)], 0);
        assert_eq!(
            o.service_rate_per_backend, None,
            "from the mean latency, not measured while requests queue"
        );
        // A balancer that measures the time at its backends: that, whatever queues in it.
        let measured = Reading {
            backend_ms: 5.0,
            ..queued
        };
        let o = s.observe(2 * S, &[Some(measured)], 0);
        assert_eq!(o.service_rate_per_backend, Some(4.0 / 0.005));
        // Weighted by completions, over the balancers that measure it.
        let b_measured = Reading {
            backend_ms: 25.0,
            ..b
        };
        let o = s.observe(2 * S, &[Some(measured), Some(b_measured), Some(b)], 0);
        assert_eq!(o.service_rate_per_backend, Some(4.0 / 0.010));
        assert_eq!(s.observe(3 * S, &[Some(idle)], 0).p99_ms, None);
    }
}
