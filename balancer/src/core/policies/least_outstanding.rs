//! Join the shortest queue: the backend with the fewest requests in flight.
//!
//! Slow start: the load compared is [`super::choices::ramped_load`], (in flight + 1) / factor,
//! HAProxy's leastconn key during `slowstart`.

use super::choices::{cheapest_free_from, ramped_load, IDLE_LOAD};
use crate::policy::{Candidates, Policy};
use ebbtide_config::time::Nanos;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Join-shortest-queue: the backend with a free slot and the fewest requests in flight, by a full
/// scan (O(n) per pick, cut short by an idle backend; `p2c` gets most of the benefit from two
/// samples). The scan starts one
/// further on each pick, so ties (an idle fleet, say) are spread round-robin instead of all
/// landing on the first backend.
#[derive(Debug, Default)]
pub struct LeastOutstanding {
    next_start: AtomicUsize,
}

impl LeastOutstanding {
    /// A least-outstanding policy whose tie-breaking starts at the first backend.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Policy for LeastOutstanding {
    fn name(&self) -> &'static str {
        "least_outstanding"
    }

    fn pick(&self, backends: &dyn Candidates, _key: Option<u64>, _now: Nanos) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next_start.fetch_add(1, Ordering::Relaxed) % n;
        cheapest_free_from(backends, start, ramped_load, Some(IDLE_LOAD))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::fleet;
    use ebbtide_config::rng::Rng;

    #[test]
    fn always_picks_a_minimum_in_flight() {
        let lo = LeastOutstanding::new();
        let mut rng = Rng::new(5);
        let mut f = fleet(9);
        for round in 0..2_000 {
            for b in &mut f {
                b.in_flight = rng.below(6) as u32;
                b.capacity = if rng.below(4) == 0 { Some(3) } else { None };
                b.accepting = rng.below(8) != 0;
            }
            let min = f
                .iter()
                .filter(|b| b.has_free_slot())
                .map(|b| b.in_flight)
                .min();
            let picked = lo.pick(&f, None, 0);
            assert_eq!(picked.map(|i| f[i].in_flight), min, "round {round}: {f:?}");
            if let Some(i) = picked {
                assert!(f[i].has_free_slot());
            }
        }
    }

    #[test]
    fn ties_are_spread() {
        let lo = LeastOutstanding::new();
        let f = fleet(4);
        let mut counts = [0u32; 4];
        for _ in 0..400 {
            counts[lo.pick(&f, None, 0).unwrap()] += 1;
        }
        assert_eq!(counts, [100; 4]);
    }

    /// Closed loop (requests pile up, none finish): a ramping backend at factor f ends with
    /// about f times the requests of each full one.
    #[test]
    fn a_ramping_backend_holds_its_factor_of_the_load() {
        use crate::slow_start::Ramp;
        for (f, want) in [(0.1, 0.1), (0.5, 0.5), (1.0, 1.0)] {
            let lo = LeastOutstanding::new();
            let mut fleet = fleet(4);
            fleet[3].ramp = Ramp::from_f64(f);
            for _ in 0..4_000 {
                let i = lo.pick(&fleet, None, 0).unwrap();
                fleet[i].in_flight += 1;
            }
            let ratio = f64::from(fleet[3].in_flight) / f64::from(fleet[0].in_flight);
            assert!((ratio - want).abs() < 0.02, "f={f}: {fleet:?}");
        }
    }

    #[test]
    fn keeps_a_closed_loop_balanced() {
        // Send 40 requests without completions: every backend ends with 10.
        let lo = LeastOutstanding::new();
        let mut f = fleet(4);
        for _ in 0..40 {
            let i = lo.pick(&f, None, 0).unwrap();
            f[i].in_flight += 1;
        }
        assert!(f.iter().all(|b| b.in_flight == 10), "{f:?}");
    }
}
