//! The one trait every balancing policy implements, and what a policy sees of a backend.
//!
//! Policies are sans-IO: no sockets, no tokio, no hyper, time passed in. The proxy, the
//! discrete-event simulator and the unit tests all drive the same code.

use crate::slow_start::Ramp;
use ebbtide_config::time::Nanos;

/// What a policy sees of one backend at the moment of a pick. The proxy builds it from atomics,
/// the simulator from plain fields.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendView {
    /// Stable identity while the backend is in the fleet (consistent hashing places it by this).
    pub id: u64,
    /// Requests sent to it and not yet finished.
    pub in_flight: u32,
    /// Requests it serves at once; `None` when unknown (never full).
    pub capacity: Option<u32>,
    /// Share for the weighted policies; 0 takes it out of weighted rotation.
    pub weight: u32,
    /// Peak-EWMA latency estimate at the time of the pick, in ns; 0 when it has no samples yet.
    pub ewma_latency_ns: u64,
    /// Price per hour, for cost-aware packing.
    pub cost_per_hour: f64,
    /// False while starting, draining or ejected: it must not be picked.
    pub accepting: bool,
    /// Slow start: the share of its full weight or slots it gets now ([`Ramp::FULL`] when it
    /// is not ramping). Each policy applies it in the way that fits it (see its docs).
    pub ramp: Ramp,
}

impl BackendView {
    /// A view with the given id and otherwise neutral values, handy in tests and the simulator.
    pub fn new(id: u64) -> Self {
        BackendView {
            id,
            in_flight: 0,
            capacity: None,
            weight: 1,
            ewma_latency_ns: 0,
            cost_per_hour: 0.0,
            accepting: true,
            ramp: Ramp::FULL,
        }
    }

    /// Whether a request sent now would find a free slot: accepting and below capacity.
    #[inline]
    pub fn has_free_slot(&self) -> bool {
        self.accepting && self.capacity.is_none_or(|c| self.in_flight < c)
    }
}

/// The fleet as a policy sees it: indexable views. A trait rather than a slice so the proxy can
/// build each view lazily from its atomics (p2c looks at 2 of 1024 backends, not all of them).
pub trait Candidates {
    /// How many backends there are (including those not accepting).
    fn len(&self) -> usize;
    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The view of backend `i`, `i < len()`.
    fn view(&self, i: usize) -> BackendView;
    /// Changes whenever the set of backend ids or their order changes, so a policy can cache
    /// structure built from membership (a hash ring, weights). The slice implementation hashes
    /// the ids (O(n)); the proxy's registry keeps a counter.
    fn generation(&self) -> u64;
}

impl Candidates for [BackendView] {
    fn len(&self) -> usize {
        <[BackendView]>::len(self)
    }
    fn view(&self, i: usize) -> BackendView {
        self[i]
    }
    fn generation(&self) -> u64 {
        // FNV-1a over the ids: cheap, and only membership and order matter.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self {
            for byte in b.id.to_le_bytes() {
                h ^= byte as u64;
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        h ^ self.len() as u64
    }
}

/// `&[BackendView]` cannot be passed as `&dyn Candidates` (a slice is unsized), so a `Vec` and a
/// slice reference are candidates too: `policy.pick(&fleet, ..)` for a `Vec`, `&slice` for a slice.
impl Candidates for Vec<BackendView> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }
    fn view(&self, i: usize) -> BackendView {
        self[i]
    }
    fn generation(&self) -> u64 {
        self.as_slice().generation()
    }
}

/// See the `Vec` implementation: lets a `&[BackendView]` be passed as `&dyn Candidates`.
impl Candidates for &[BackendView] {
    fn len(&self) -> usize {
        <[BackendView]>::len(self)
    }
    fn view(&self, i: usize) -> BackendView {
        self[i]
    }
    fn generation(&self) -> u64 {
        (**self).generation()
    }
}

/// A balancing policy: picks the backend for the next request.
pub trait Policy: Send + Sync {
    /// The config name of the policy.
    fn name(&self) -> &'static str;

    /// The index of the backend to use, or `None` when no candidate has a free slot (every one is
    /// full or not accepting); the request then waits in the balancer's queue. A policy never
    /// returns a backend that is not accepting or is at capacity. The one other `None`: the
    /// slot-filling policies (`central_queue`, `cost_aware` at full load) count a ramping
    /// backend's slots scaled by its [`BackendView::ramp`], so they wait rather than fill it. `key` is the request's hash key
    /// where one was configured and present.
    fn pick(&self, backends: &dyn Candidates, key: Option<u64>, now: Nanos) -> Option<usize>;
}
