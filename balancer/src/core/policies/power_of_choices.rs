//! Power of d choices (`p2c`): the least loaded of d random samples. Most of join-shortest-queue's
//! gain at O(d) per pick and without looking at the whole fleet.
//!
//! Slow start: the load compared is [`super::choices::ramped_load`], (in flight + 1) / factor,
//! HAProxy's leastconn key during `slowstart`.

use super::choices::{best_of_random_sample, clamp_choices, ramped_load, IDLE_LOAD};
use crate::policy::{Candidates, Policy};
use ebbtide_config::rng::SharedRng;
use ebbtide_config::time::Nanos;

/// Samples `choices` distinct backends (all of them when the fleet is that small) and takes the
/// one with the fewest requests in flight among the samples with a free slot; it never takes the
/// busier of its samples. When no sample has a free slot it scans the fleet for the least loaded
/// free backend, so it returns `None` only when every backend is full or not accepting.
#[derive(Debug)]
pub struct PowerOfChoices {
    rng: SharedRng,
    choices: usize,
}

impl PowerOfChoices {
    /// d = `choices` samples per pick (0 is taken as 1, more than
    /// [`super::choices::MAX_CHOICES`] as that many), drawn from a generator seeded with `seed`.
    pub fn new(choices: usize, seed: u64) -> Self {
        PowerOfChoices {
            rng: SharedRng::new(seed),
            choices: clamp_choices(choices),
        }
    }
}

impl Policy for PowerOfChoices {
    fn name(&self) -> &'static str {
        "p2c"
    }

    fn pick(&self, backends: &dyn Candidates, _key: Option<u64>, _now: Nanos) -> Option<usize> {
        best_of_random_sample(
            backends,
            &self.rng,
            self.choices,
            ramped_load,
            Some(IDLE_LOAD),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::{fleet, Recording};
    use ebbtide_config::rng::Rng;

    #[test]
    fn with_two_backends_always_picks_the_less_loaded() {
        let p = PowerOfChoices::new(2, 3);
        let mut f = fleet(2);
        let mut rng = Rng::new(8);
        for _ in 0..1_000 {
            f[0].in_flight = rng.below(10) as u32;
            f[1].in_flight = f[0].in_flight + 1 + rng.below(10) as u32;
            if rng.below(2) == 0 {
                f.swap(0, 1);
            }
            let i = p.pick(&f, None, 0).unwrap();
            assert_eq!(f[i].in_flight, f[0].in_flight.min(f[1].in_flight));
        }
    }

    #[test]
    fn looks_at_exactly_d_distinct_samples_and_takes_the_least_loaded() {
        let mut rng = Rng::new(11);
        for d in [2usize, 3, 5] {
            let p = PowerOfChoices::new(d, 17 + d as u64);
            let mut f = fleet(10);
            for _ in 0..2_000 {
                for b in &mut f {
                    b.in_flight = rng.below(20) as u32;
                }
                let rec = Recording::new(&f);
                let i = p.pick(&rec, None, 0).unwrap();
                let seen = rec.take_seen();
                assert_eq!(seen.len(), d, "{seen:?}");
                assert!(seen.contains(&i));
                let least = seen.iter().map(|&s| f[s].in_flight).min().unwrap();
                assert_eq!(f[i].in_flight, least, "d={d} samples {seen:?}");
            }
        }
    }

    #[test]
    fn samples_every_backend_about_equally() {
        let p = PowerOfChoices::new(2, 5);
        let f = fleet(8);
        let mut counts = [0u32; 8];
        for _ in 0..16_000 {
            counts[p.pick(&f, None, 0).unwrap()] += 1;
        }
        for c in counts {
            assert!((1_800..=2_200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn skips_a_full_sample_and_scans_when_both_are_full() {
        let p = PowerOfChoices::new(2, 1);
        let mut f = fleet(6);
        for b in &mut f {
            b.capacity = Some(4);
            b.in_flight = 4;
        }
        f[4].in_flight = 3; // the only free slot, busier than nothing else free
        for _ in 0..200 {
            assert_eq!(p.pick(&f, None, 0), Some(4));
        }
        // A full idle-looking sample is never preferred to a free busier one.
        let mut g = fleet(2);
        g[0].capacity = Some(0);
        g[1].in_flight = 50;
        for _ in 0..50 {
            assert_eq!(p.pick(&g, None, 0), Some(1));
        }
    }

    /// Closed loop: a ramping backend at factor f ends with about f times the requests of each
    /// full one.
    #[test]
    fn a_ramping_backend_holds_its_factor_of_the_load() {
        use crate::policies::test_support::ramped_share;
        for f in [0.1, 0.5, 1.0] {
            let p = PowerOfChoices::new(2, 7);
            let (ratio, fleet) = ramped_share(&p, fleet(4), f);
            assert!((ratio - f).abs() < 0.03, "f={f}: {fleet:?}");
        }
    }

    #[test]
    fn keeps_a_closed_loop_nearly_balanced() {
        let p = PowerOfChoices::new(2, 99);
        let mut f = fleet(10);
        for _ in 0..1_000 {
            let i = p.pick(&f, None, 0).unwrap();
            f[i].in_flight += 1;
        }
        // Power of two choices keeps the spread to a few requests (random would be ~±30).
        let max = f.iter().map(|b| b.in_flight).max().unwrap();
        let min = f.iter().map(|b| b.in_flight).min().unwrap();
        assert!(max - min <= 4, "{f:?}");
    }
}
