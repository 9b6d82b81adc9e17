//! Round robin: each accepting backend with a free slot in turn.

use crate::policy::{Candidates, Policy};
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
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
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
