//! Fleets and an instrumented [`Candidates`] for the policies' unit tests.

use crate::policy::{BackendView, Candidates};
use std::cell::RefCell;

/// `n` accepting backends with ids 100, 101, ... (ids differ from indices so a test catches
/// a policy that confuses the two), no capacity limit, weight 1.
pub(crate) fn fleet(n: usize) -> Vec<BackendView> {
    (0..n).map(|i| BackendView::new(100 + i as u64)).collect()
}

/// `n` backends as [`fleet`] with the given capacity each.
pub(crate) fn fleet_with_capacity(n: usize, capacity: u32) -> Vec<BackendView> {
    let mut f = fleet(n);
    for b in &mut f {
        b.capacity = Some(capacity);
    }
    f
}

/// A closed loop of 4,000 picks (each request stays in flight) over `fleet`, whose last backend
/// ramps at factor `f`: its requests over the mean of the others, with the fleet at the end.
pub(crate) fn ramped_share(
    policy: &dyn crate::policy::Policy,
    mut fleet: Vec<BackendView>,
    f: f64,
) -> (f64, Vec<BackendView>) {
    let last = fleet.len() - 1;
    fleet[last].ramp = crate::slow_start::Ramp::from_f64(f);
    for _ in 0..4_000 {
        let i = policy.pick(&fleet, None, 0).unwrap();
        fleet[i].in_flight += 1;
    }
    let others: u32 = fleet[..last].iter().map(|b| b.in_flight).sum();
    let ratio = f64::from(fleet[last].in_flight) / (f64::from(others) / last as f64);
    (ratio, fleet)
}

/// Candidates that record which indices a pick looked at.
pub(crate) struct Recording<'a> {
    /// The fleet.
    pub(crate) views: &'a [BackendView],
    /// Every index passed to `view`, in order.
    pub(crate) seen: RefCell<Vec<usize>>,
}

impl<'a> Recording<'a> {
    /// Wraps a fleet.
    pub(crate) fn new(views: &'a [BackendView]) -> Self {
        Recording {
            views,
            seen: RefCell::new(Vec::new()),
        }
    }

    /// The distinct indices seen since the last call, and forgets them.
    pub(crate) fn take_seen(&self) -> Vec<usize> {
        let mut s = std::mem::take(&mut *self.seen.borrow_mut());
        s.sort_unstable();
        s.dedup();
        s
    }
}

impl Candidates for Recording<'_> {
    fn len(&self) -> usize {
        self.views.len()
    }
    fn view(&self, i: usize) -> BackendView {
        self.seen.borrow_mut().push(i);
        self.views[i]
    }
    fn generation(&self) -> u64 {
        self.views.generation()
    }
}
