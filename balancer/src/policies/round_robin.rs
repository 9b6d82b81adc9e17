//! Round robin: each accepting backend with a free slot in turn.

use crate::policy::{Candidates, Policy};
use ebbtide_config::time::Nanos;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Each backend in turn; full or non-accepting ones are skipped.
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
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| backends.view(i).has_free_slot())
    }
}
