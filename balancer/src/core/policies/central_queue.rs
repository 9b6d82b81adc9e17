//! Central queue: dispatch only into a free slot. With the proxy's single FIFO in front, the fleet
//! behaves like one M/M/c queue (Erlang C) rather than c separate M/M/1 queues: a request waits in
//! one line for the first free slot anywhere instead of behind a slow request on one backend.
//!
//! Slow start scales a ramping backend's slots: capacity x factor, at least 1, as HAProxy
//! raises a server's maxconn gradually during `slowstart` (`srv_dynamic_maxconn`). Requests
//! beyond wait in the FIFO for a slot, here or anywhere, rather than pile onto a cold backend.
//! A backend of unknown capacity counts its requests as 1 / factor times as many.

use super::choices::cheapest_from;
use crate::policy::{BackendView, Candidates, Policy};
use ebbtide_config::time::Nanos;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Among backends with a free slot, the least utilised (in-flight / capacity), then the one with
/// the most free slots; `None` when every slot is taken, so the request waits in the proxy's FIFO
/// until a completion frees one. A backend with unknown capacity is never full; it counts as
/// having exactly one free slot (utilisation in-flight / (in-flight + 1)), so it takes its share
/// without swallowing all traffic. Ties rotate like [`super::LeastOutstanding`]'s.
#[derive(Debug, Default)]
pub struct CentralQueue {
    next_start: AtomicUsize,
}

impl CentralQueue {
    /// A central-queue dispatcher.
    pub fn new() -> Self {
        Self::default()
    }
}

/// How full a backend is, ordered by utilisation (in-flight / capacity) and then by more free
/// slots first. Compared by cross-multiplication: exact, and no division per backend scanned.
#[derive(Debug, Clone, Copy)]
struct Fullness {
    in_flight: u64,
    /// The capacity, or in-flight + 1 when unknown (one free slot).
    capacity: u64,
}

impl Fullness {
    /// How full `view` is, or `None` when it has no slot free for this policy: none at all, or
    /// none within its slow-start share.
    #[inline]
    fn of(view: &BackendView) -> Option<Self> {
        if !view.has_free_slot() {
            return None;
        }
        let in_flight = match view.capacity {
            Some(c) => {
                let slots = u64::from(view.ramp.slots(c));
                let in_flight = u64::from(view.in_flight);
                return (in_flight < slots).then_some(Fullness {
                    in_flight,
                    capacity: slots,
                });
            }
            // Requests count 1 / factor times (as many as a full backend would hold).
            None => {
                let load = view.ramp.inflate(u128::from(view.in_flight) + 1);
                (load.min(u128::from(u32::MAX)) as u64).saturating_sub(1)
            }
        };
        Some(Fullness {
            in_flight,
            capacity: in_flight + 1,
        })
    }
}

impl Ord for Fullness {
    #[inline]
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Both fit in u64: u32 x (u32 + 1).
        (self.in_flight * other.capacity)
            .cmp(&(other.in_flight * self.capacity))
            .then_with(|| (other.capacity - other.in_flight).cmp(&(self.capacity - self.in_flight)))
    }
}

impl PartialOrd for Fullness {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Fullness {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Fullness {}

impl Policy for CentralQueue {
    fn name(&self) -> &'static str {
        "central_queue"
    }

    fn pick(&self, backends: &dyn Candidates, _key: Option<u64>, _now: Nanos) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        let start = self.next_start.fetch_add(1, Ordering::Relaxed) % n;
        cheapest_from(backends, start, Fullness::of, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::{fleet, fleet_with_capacity};
    use ebbtide_config::rng::Rng;

    /// Ten times more requests than slots: picks and completions in random order over plain
    /// views, with the proxy's FIFO modelled as a counter of waiting requests.
    #[test]
    fn never_exceeds_capacity_under_ten_times_oversubscription() {
        let cq = CentralQueue::new();
        let mut f = fleet_with_capacity(4, 5);
        f[2].capacity = Some(1);
        f[3].capacity = Some(9);
        let slots: u32 = f.iter().map(|b| b.capacity.unwrap()).sum();
        let mut rng = Rng::new(77);
        let mut to_send = 10 * slots;
        let mut waiting = 0u32;
        let mut completed = 0u32;
        let mut nones = 0u32;
        while completed < 10 * slots {
            let all_full = f.iter().all(|b| !b.has_free_slot());
            let idle = f.iter().all(|b| b.in_flight == 0);
            // Two arrivals for every completion on average, until all have been sent.
            if to_send > 0 && (rng.below(3) != 0 || idle) {
                to_send -= 1;
                match cq.pick(&f, None, 0) {
                    Some(i) => f[i].in_flight += 1,
                    None => {
                        assert!(all_full, "None with a free slot: {f:?}");
                        nones += 1;
                        waiting += 1;
                    }
                }
            } else if f.iter().any(|b| b.in_flight > 0) {
                let busy: Vec<usize> = (0..f.len()).filter(|&i| f[i].in_flight > 0).collect();
                f[busy[rng.below(busy.len())]].in_flight -= 1;
                completed += 1;
                if waiting > 0 {
                    let i = cq.pick(&f, None, 0).expect("a slot was just freed");
                    f[i].in_flight += 1;
                    waiting -= 1;
                }
            }
            for b in &f {
                assert!(b.in_flight <= b.capacity.unwrap(), "{f:?}");
            }
        }
        assert!(nones > 0, "the test never filled the fleet");
        assert_eq!(waiting, 0);
    }

    #[test]
    fn picks_the_least_utilised_free_backend() {
        let cq = CentralQueue::new();
        let mut f = fleet_with_capacity(3, 10);
        f[0].in_flight = 5; // 50%
        f[1].capacity = Some(2);
        f[1].in_flight = 1; // 50%, fewer free slots
        f[2].in_flight = 6; // 60%
        assert_eq!(cq.pick(&f, None, 0), Some(0));
        f[0].in_flight = 7;
        assert_eq!(cq.pick(&f, None, 0), Some(1));
    }

    #[test]
    fn returns_none_when_every_slot_is_taken() {
        let cq = CentralQueue::new();
        let mut f = fleet_with_capacity(3, 2);
        for b in &mut f {
            b.in_flight = 2;
        }
        assert_eq!(cq.pick(&f, None, 0), None);
        f[1].in_flight = 1;
        assert_eq!(cq.pick(&f, None, 0), Some(1));
    }

    /// A ramping backend fills capacity x factor slots (at least one) and no more; the fleet
    /// then waits, although the ramping backend has slots beyond its share.
    #[test]
    fn a_ramping_backends_slots_are_scaled() {
        use crate::slow_start::Ramp;
        for (f, want) in [(0.1, 1u32), (0.5, 5), (1.0, 10)] {
            let cq = CentralQueue::new();
            let mut fleet = fleet_with_capacity(3, 10);
            fleet[2].ramp = Ramp::from_f64(f);
            while let Some(i) = cq.pick(&fleet, None, 0) {
                fleet[i].in_flight += 1;
            }
            assert_eq!(
                fleet.iter().map(|b| b.in_flight).collect::<Vec<_>>(),
                [10, 10, want],
                "f={f}"
            );
        }
    }

    #[test]
    fn unknown_capacity_takes_a_share_but_not_everything() {
        let cq = CentralQueue::new();
        let mut f = fleet(2);
        f[0].capacity = Some(4);
        let mut counts = [0u32; 2];
        for _ in 0..4 {
            let i = cq.pick(&f, None, 0).unwrap();
            f[i].in_flight += 1;
            counts[i] += 1;
        }
        assert!(counts[0] >= 2 && counts[1] >= 1, "{counts:?}");
    }
}
