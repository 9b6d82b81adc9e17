//! Uniformly random choice: the baseline that behaves like an M/M/1 queue per backend.
//!
//! Slow start: a probe that lands on a ramping backend keeps it with probability equal to its
//! factor and probes again otherwise, which is a weighted random choice with its weight scaled
//! by the factor (Envoy's random balancer with slow-start weights).

use crate::policy::{Candidates, Policy};
use ebbtide_config::rng::SharedRng;
use ebbtide_config::time::Nanos;

/// How many random probes a pick makes before scanning for a free backend: enough that a fleet
/// with a few full backends keeps picks uniform over the rest, bounded so a nearly full fleet
/// costs one scan rather than many misses.
const PROBES: usize = 4;

/// A uniformly random backend among those with a free slot, from a seeded lock-free generator
/// (`[balancer] seed`). Up to [`PROBES`] random probes; if all hit full or non-accepting backends,
/// a scan from a random start takes the first free one.
#[derive(Debug)]
pub struct Random {
    rng: SharedRng,
}

impl Random {
    /// A random policy whose choices are fixed by `seed` (the interleaving of threads is not).
    pub fn new(seed: u64) -> Self {
        Random {
            rng: SharedRng::new(seed),
        }
    }
}

impl Policy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn pick(&self, backends: &dyn Candidates, _key: Option<u64>, _now: Nanos) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        for _ in 0..PROBES {
            let i = self.rng.below(n);
            let view = backends.view(i);
            if view.has_free_slot()
                && (view.ramp.is_full() || view.ramp.admits(self.rng.next_u64()))
            {
                return Some(i);
            }
        }
        let start = self.rng.below(n);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| backends.view(i).has_free_slot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::fleet;

    #[test]
    fn is_roughly_uniform() {
        let r = Random::new(42);
        let f = fleet(5);
        let mut counts = [0u32; 5];
        for _ in 0..50_000 {
            counts[r.pick(&f, None, 0).unwrap()] += 1;
        }
        // 10,000 expected each; the standard deviation is about 90.
        for c in counts {
            assert!((9_600..=10_400).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_picks() {
        let f = fleet(7);
        let a = Random::new(9);
        let b = Random::new(9);
        for _ in 0..100 {
            assert_eq!(a.pick(&f, None, 0), b.pick(&f, None, 0));
        }
    }

    #[test]
    fn a_ramping_backend_is_picked_as_if_weighted_by_its_factor() {
        use crate::slow_start::Ramp;
        for f in [0.1, 0.5, 1.0] {
            let r = Random::new(3);
            let mut fleet = fleet(4);
            fleet[2].ramp = Ramp::from_f64(f);
            let picks = 40_000;
            let got = (0..picks)
                .filter(|_| r.pick(&fleet, None, 0) == Some(2))
                .count() as f64
                / picks as f64;
            // Weighted: f / (3 + f); the fallback scan after 4 misses adds a little.
            let want = f / (3.0 + f);
            assert!((got - want).abs() < 0.015, "f={f}: {got} vs {want}");
        }
    }

    #[test]
    fn finds_the_one_free_backend_in_a_full_fleet() {
        let r = Random::new(1);
        let mut f = fleet(50);
        for b in &mut f {
            b.accepting = false;
        }
        f[37].accepting = true;
        for _ in 0..100 {
            assert_eq!(r.pick(&f, None, 0), Some(37));
        }
    }
}
