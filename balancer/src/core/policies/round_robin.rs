//! Round robin: each accepting backend with a free slot in turn.
//!
//! Slow start: a ramping backend takes its turn with probability equal to its factor (a draw
//! hashed from the pick counter and its id, so no random state); a turn it lets pass goes to the
//! next backend and the counter skips one more, so the others keep equal shares and the ramping
//! one gets f / (n - 1 + f) of the picks, what a weight of f among weights of 1 would give it
//! (HAProxy's roundrobin ramps the server's weight during `slowstart` in the same way).

use crate::policy::{Candidates, Policy};
use crate::slow_start::draw;
use ebbtide_config::time::Nanos;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Each backend in turn, with one shared atomic counter (no lock). Full or non-accepting
/// backends are skipped: the pick goes to the next one after them that has a free slot.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    /// A round robin starting at the first backend.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round_robin"
    }

    fn pick(&self, backends: &dyn Candidates, _key: Option<u64>, _now: Nanos) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        let start = ticket % n;
        let mut passed_over: Option<usize> = None;
        let mut skipped = 0;
        for k in 0..n {
            let i = (start + k) % n;
            let view = backends.view(i);
            if !view.has_free_slot() {
                continue;
            }
            if view.ramp.admits(draw(ticket as u64, view.id)) {
                if skipped > 0 {
                    // The turns let pass were given to the next backend: move the rotation on
                    // so that one does not get its own turn twice.
                    self.next.fetch_add(skipped, Ordering::Relaxed);
                }
                return Some(i);
            }
            passed_over.get_or_insert(i);
            skipped += 1;
        }
        // Only ramping backends are free, and none took this turn: one of them does anyway.
        passed_over
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::fleet;

    #[test]
    fn spreads_picks_evenly() {
        let rr = RoundRobin::new();
        let f = fleet(3);
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[rr.pick(&f, None, 0).unwrap()] += 1;
        }
        for c in counts {
            assert!((990..=1010).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn cycles_in_index_order() {
        let rr = RoundRobin::new();
        let f = fleet(4);
        let picks: Vec<_> = (0..8).map(|_| rr.pick(&f, None, 0).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 3, 0, 1, 2, 3]);
    }

    #[test]
    fn a_ramping_backend_gets_a_weight_of_its_factor() {
        use crate::slow_start::Ramp;
        let rr = RoundRobin::new();
        for (f, n) in [(0.1, 4usize), (0.5, 4), (1.0, 4), (0.5, 2)] {
            let mut fleet = fleet(n);
            fleet[1].ramp = Ramp::from_f64(f);
            let mut counts = vec![0u32; n];
            let picks = 40_000;
            for _ in 0..picks {
                counts[rr.pick(&fleet, None, 0).unwrap()] += 1;
            }
            let want = f / (n as f64 - 1.0 + f);
            let got = f64::from(counts[1]) / picks as f64;
            assert!((got - want).abs() < 0.015, "f={f} n={n}: {got} vs {want}");
            // The others share the rest evenly.
            let others: Vec<u32> = (0..n).filter(|&i| i != 1).map(|i| counts[i]).collect();
            let (lo, hi) = (others.iter().min().unwrap(), others.iter().max().unwrap());
            assert!(
                f64::from(hi - lo) < 0.02 * picks as f64,
                "f={f}: {counts:?}"
            );
        }
    }

    #[test]
    fn skips_full_and_non_accepting_backends() {
        let rr = RoundRobin::new();
        let mut f = fleet(4);
        f[1].capacity = Some(2);
        f[1].in_flight = 2;
        f[2].accepting = false;
        for _ in 0..100 {
            let i = rr.pick(&f, None, 0).unwrap();
            assert!(i == 0 || i == 3, "{i}");
        }
    }
}
