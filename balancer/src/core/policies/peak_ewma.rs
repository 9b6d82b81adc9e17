//! Peak-EWMA: power of d choices over expected latency, cost = EWMA latency x (in-flight + 1).
//! Prefers a fast backend, and moves away from it as its queue grows, as Finagle's and
//! tower's PeakEwma balancers do. The estimate itself is [`crate::ewma::PeakEwma`], kept by the
//! proxy per backend and handed in as `BackendView::ewma_latency_ns`.
//!
//! Slow start divides the cost by the backend's factor, as HAProxy's leastconn key divides by
//! the ramping weight: at factor f a backend looks 1/f times slower than it is.

use super::choices::{best_of_random_sample, clamp_choices};
use crate::policy::{BackendView, Candidates, Policy};
use ebbtide_config::rng::SharedRng;
use ebbtide_config::time::Nanos;

/// The latency assumed for a backend with no samples yet (estimate 0): moderate, so a new
/// backend gets traffic soon after joining (and its first response sets a real estimate) but is
/// not flooded because it looks infinitely fast.
pub const DEFAULT_RTT_NS: u64 = 30_000_000;

/// Power of d choices where the cost of a backend is its peak-EWMA latency times (in-flight + 1):
/// the expected wait for a request sent to it. Same sampling and fallback as
/// [`super::PowerOfChoices`]: never the costlier of its samples, `None` only when nothing is free.
#[derive(Debug)]
pub struct PeakEwmaP2c {
    rng: SharedRng,
    choices: usize,
    default_rtt_ns: u64,
}

impl PeakEwmaP2c {
    /// d = `choices` samples per pick (clamped as for `p2c`), seeded with `seed`, with
    /// [`DEFAULT_RTT_NS`] for backends without samples.
    pub fn new(choices: usize, seed: u64) -> Self {
        PeakEwmaP2c {
            rng: SharedRng::new(seed),
            choices: clamp_choices(choices),
            default_rtt_ns: DEFAULT_RTT_NS,
        }
    }

    /// The same with another latency for backends without samples (e.g. the service's known
    /// typical latency); 0 is taken as 1ns.
    pub fn with_default_rtt(mut self, rtt_ns: u64) -> Self {
        self.default_rtt_ns = rtt_ns.max(1);
        self
    }

    /// The expected cost of sending one more request to `view`, in ns x requests.
    #[inline]
    fn cost(&self, view: &BackendView) -> u128 {
        let rtt = if view.ewma_latency_ns == 0 {
            self.default_rtt_ns
        } else {
            view.ewma_latency_ns
        };
        view.ramp
            .inflate(u128::from(rtt) * (u128::from(view.in_flight) + 1))
    }
}

impl Policy for PeakEwmaP2c {
    fn name(&self) -> &'static str {
        "peak_ewma"
    }

    fn pick(&self, backends: &dyn Candidates, _key: Option<u64>, _now: Nanos) -> Option<usize> {
        best_of_random_sample(backends, &self.rng, self.choices, |v| self.cost(v), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::{fleet, Recording};
    use ebbtide_config::rng::Rng;

    const MS: u64 = 1_000_000;

    #[test]
    fn prefers_the_fast_backend_at_equal_in_flight() {
        let p = PeakEwmaP2c::new(2, 4);
        let mut f = fleet(2);
        f[0].ewma_latency_ns = 50 * MS;
        f[1].ewma_latency_ns = 5 * MS;
        for in_flight in 0..20 {
            f[0].in_flight = in_flight;
            f[1].in_flight = in_flight;
            assert_eq!(p.pick(&f, None, 0), Some(1));
        }
    }

    #[test]
    fn shifts_away_from_the_fast_backend_as_its_queue_grows() {
        let p = PeakEwmaP2c::new(2, 4);
        let mut f = fleet(2);
        f[0].ewma_latency_ns = 10 * MS; // slow, idle: cost 10
        f[1].ewma_latency_ns = 2 * MS; // fast: cost 2 x (in_flight + 1)
        f[1].in_flight = 3; // cost 8
        assert_eq!(p.pick(&f, None, 0), Some(1));
        f[1].in_flight = 5; // cost 12
        assert_eq!(p.pick(&f, None, 0), Some(0));
        // Closed loop: requests pile up in proportion to speed, about 5:1.
        f[0].in_flight = 0;
        f[1].in_flight = 0;
        for _ in 0..60 {
            let i = p.pick(&f, None, 0).unwrap();
            f[i].in_flight += 1;
        }
        assert!((48..=52).contains(&f[1].in_flight), "{f:?}");
    }

    #[test]
    fn a_backend_without_samples_costs_the_default_rtt() {
        let p = PeakEwmaP2c::new(2, 4).with_default_rtt(20 * MS);
        let mut f = fleet(2);
        f[0].ewma_latency_ns = 0; // new: counts as 20ms
        f[1].ewma_latency_ns = 15 * MS;
        assert_eq!(p.pick(&f, None, 0), Some(1));
        f[1].ewma_latency_ns = 25 * MS;
        assert_eq!(p.pick(&f, None, 0), Some(0));
    }

    #[test]
    fn never_picks_the_costlier_of_its_samples() {
        let p = PeakEwmaP2c::new(2, 21);
        let mut rng = Rng::new(2);
        let mut f = fleet(12);
        for _ in 0..2_000 {
            for b in &mut f {
                b.in_flight = rng.below(10) as u32;
                b.ewma_latency_ns = rng.below(50) as u64 * MS;
            }
            let rec = Recording::new(&f);
            let i = p.pick(&rec, None, 0).unwrap();
            let seen = rec.take_seen();
            assert_eq!(seen.len(), 2);
            let least = seen.iter().map(|&s| p.cost(&f[s])).min().unwrap();
            assert_eq!(p.cost(&f[i]), least);
        }
    }

    /// Closed loop over equally fast backends: a ramping one at factor f ends with about f
    /// times the requests of each full one.
    #[test]
    fn a_ramping_backend_holds_its_factor_of_the_load() {
        use crate::policies::test_support::ramped_share;
        for f in [0.1, 0.5, 1.0] {
            let p = PeakEwmaP2c::new(2, 9);
            let mut fleet = fleet(4);
            for b in &mut fleet {
                b.ewma_latency_ns = 5 * MS;
            }
            let (ratio, fleet) = ramped_share(&p, fleet, f);
            assert!((ratio - f).abs() < 0.03, "f={f}: {fleet:?}");
        }
    }

    #[test]
    fn huge_latencies_do_not_overflow() {
        let p = PeakEwmaP2c::new(2, 4);
        let mut f = fleet(2);
        f[0].ewma_latency_ns = u64::MAX;
        f[0].in_flight = u32::MAX - 1;
        f[1].ewma_latency_ns = u64::MAX - 1;
        f[1].in_flight = u32::MAX - 1;
        assert_eq!(p.pick(&f, None, 0), Some(1));
    }
}
