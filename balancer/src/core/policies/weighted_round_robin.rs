//! Smooth weighted round robin, exactly as nginx does it: every pick adds each eligible backend's
//! weight to its running score, takes the highest score and subtracts the total weight from it.
//! Weights 5, 1, 1 give a a b a c a a: the shares are exact over each cycle and a heavy backend's
//! turns are interleaved with the others rather than bunched.
//!
//! Slow start scales each weight by the backend's factor (HAProxy's and Envoy's way: a
//! ramping server's effective weight is its weight x the ramp), kept in fixed point so the
//! shares stay exact: a full backend of weight w counts w x 65536.

use crate::policy::{Candidates, Policy};
use ebbtide_config::time::Nanos;
use std::sync::Mutex;

/// Smooth weighted round robin (nginx's algorithm). Eligible backends are those with a free slot
/// and a non-zero weight; a full or non-accepting backend sits the round out without gaining
/// score, as in nginx. Weight 0 takes a backend out of rotation entirely, so when only weight-0
/// backends have free slots the pick is `None`. The scores are reset whenever the fleet's
/// generation changes. One mutex, held only for the O(n) scan inside `pick`.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    state: Mutex<Scores>,
}

/// The running scores, valid for one fleet generation.
#[derive(Debug, Default)]
struct Scores {
    generation: Option<u64>,
    current: Vec<i64>,
}

impl WeightedRoundRobin {
    /// A weighted round robin with every score at zero.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Policy for WeightedRoundRobin {
    fn name(&self) -> &'static str {
        "weighted_round_robin"
    }

    fn pick(&self, backends: &dyn Candidates, _key: Option<u64>, _now: Nanos) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let generation = backends.generation();
        let mut scores = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if scores.generation != Some(generation) || scores.current.len() != n {
            scores.generation = Some(generation);
            scores.current.clear();
            scores.current.resize(n, 0);
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for i in 0..n {
            let view = backends.view(i);
            if view.weight == 0 || !view.has_free_slot() {
                continue;
            }
            let weight = view.ramp.weight_units(view.weight) as i64;
            scores.current[i] += weight;
            total += weight;
            // Strictly greater: the first of equal scores wins, as in nginx.
            if best.is_none_or(|b| scores.current[i] > scores.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        scores.current[best] -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::fleet;

    fn weighted(weights: &[u32]) -> Vec<crate::BackendView> {
        let mut f = fleet(weights.len());
        for (b, &w) in f.iter_mut().zip(weights) {
            b.weight = w;
        }
        f
    }

    #[test]
    fn gives_the_nginx_sequence_for_5_1_1() {
        let wrr = WeightedRoundRobin::new();
        let f = weighted(&[5, 1, 1]);
        let seq: String = (0..14)
            .map(|_| (b'a' + wrr.pick(&f, None, 0).unwrap() as u8) as char)
            .collect();
        assert_eq!(seq, "aabacaaaabacaa");
    }

    #[test]
    fn shares_are_exact_over_whole_cycles() {
        let wrr = WeightedRoundRobin::new();
        let f = weighted(&[3, 2, 7, 0, 1]);
        let mut counts = [0u32; 5];
        for _ in 0..13 * 100 {
            counts[wrr.pick(&f, None, 0).unwrap()] += 1;
        }
        assert_eq!(counts, [300, 200, 700, 0, 100]);
    }

    #[test]
    fn a_full_backend_sits_out_and_the_others_keep_their_ratio() {
        let wrr = WeightedRoundRobin::new();
        let mut f = weighted(&[4, 2, 1]);
        f[0].capacity = Some(1);
        f[0].in_flight = 1;
        let mut counts = [0u32; 3];
        for _ in 0..300 {
            counts[wrr.pick(&f, None, 0).unwrap()] += 1;
        }
        assert_eq!(counts, [0, 200, 100]);
    }

    #[test]
    fn a_ramping_backends_weight_is_scaled_by_its_factor() {
        use crate::slow_start::Ramp;
        for (f, want) in [(0.1, 100u32), (0.5, 500), (1.0, 1_000)] {
            let wrr = WeightedRoundRobin::new();
            let mut f2 = weighted(&[2, 1]);
            f2[1].ramp = Ramp::from_f64(f);
            // Weights 2 and 1 x f: over 1000 x (2 + f) picks the ramping one gets 1000 x f.
            let picks = (1_000.0 * (2.0 + f)).round() as usize;
            let mut counts = [0u32; 2];
            for _ in 0..picks {
                counts[wrr.pick(&f2, None, 0).unwrap()] += 1;
            }
            assert!(counts[1].abs_diff(want) <= 1, "f={f}: {counts:?}");
        }
    }

    #[test]
    fn only_weight_zero_backends_free_means_none() {
        let wrr = WeightedRoundRobin::new();
        let mut f = weighted(&[1, 0]);
        f[0].accepting = false;
        assert_eq!(wrr.pick(&f, None, 0), None);
    }

    #[test]
    fn scores_reset_when_the_fleet_changes() {
        let wrr = WeightedRoundRobin::new();
        let f = weighted(&[5, 1, 1]);
        wrr.pick(&f, None, 0);
        wrr.pick(&f, None, 0);
        let mut g = weighted(&[1, 5]);
        g[1].id = 999;
        // Fresh scores: the heavy backend (index 1) goes first.
        assert_eq!(wrr.pick(&g, None, 0), Some(1));
    }
}
