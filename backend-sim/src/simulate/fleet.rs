//! The simulated backends and the table the balancing policies pick from.
//!
//! Each backend is modelled as `ebbtide backend` runs: `workers` requests in service at once, the
//! rest in its own FIFO, each served for a draw from the service-time distribution divided by the
//! backend's speed. The table lists backends in the order the balancer's registry would (launch
//! order; starting and draining ones included but not accepting) and implements
//! [`Candidates`] with a generation counter bumped on every membership change, so that
//! policies caching structure (hash ring, cost order, weights) rebuild only then, and a pick
//! costs what the policy needs (two views for p2c), not a hash of the whole fleet.

use ebbtide_balancer::ewma::PeakEwma;
use ebbtide_balancer::limit::AdaptiveLimit;
use ebbtide_balancer::policy::{BackendView, Candidates};
use ebbtide_balancer::slow_start::{starts_ramp, SlowStart};
use ebbtide_config::time::Nanos;
use std::collections::VecDeque;

pub use ebbtide_config::BackendState;

/// One request at a backend (in service or in the backend's own queue).
#[derive(Debug, Clone, Copy)]
pub struct Job {
    /// When the client sent it.
    pub arrival: Nanos,
    /// When the balancer sent it to this backend.
    pub dispatched: Nanos,
    /// Requests in flight at the backend when it was sent, itself included (the adaptive
    /// limit's input).
    pub in_flight_at_start: u32,
}

/// One simulated backend.
#[derive(Debug)]
pub struct Backend {
    /// Stable identity: the launch number, never reused.
    pub id: u64,
    /// The identity the autoscaler's fleet view and decisions use.
    pub name: String,
    /// Starting, active or draining.
    pub state: BackendState,
    /// When it was launched: billing counts from here.
    pub launched_at: Nanos,
    /// Relative speed: service times are divided by it.
    pub speed: f64,
    /// Share for the weighted policies: the speed, rounded, at least 1.
    pub weight: u32,
    /// Requests it serves at once.
    pub workers: u32,
    /// Requests in service.
    pub busy: u32,
    /// Requests waiting in its own FIFO for a worker.
    pub queue: VecDeque<Job>,
    /// Requests sent to it and not finished (busy + queued): what policies count.
    pub in_flight: u32,
    /// Configured capacity for the policies; `None` = unknown (unbounded, or the adaptive limit).
    pub capacity: Option<u32>,
    /// Its price per hour, shown to `cost_aware`.
    pub cost_per_hour: f64,
    /// The proxy's learnt concurrency limit, with `capacity = "adaptive"`.
    pub limit: Option<AdaptiveLimit>,
    /// The proxy's latency estimate for `peak_ewma`.
    pub ewma: PeakEwma,
    /// When it became active, if that started a slow-start ramp (the proxy's rule,
    /// [`starts_ramp`]: not for the starting fleet, which is there at startup).
    pub ramp_since: Option<Nanos>,
    /// Whether it is counted in the fleet's backends with a free slot.
    counted_free: bool,
}

impl Backend {
    /// The capacity a policy sees: the configured one, else the learnt limit, else unknown.
    #[inline]
    pub fn effective_capacity(&self) -> Option<u32> {
        self.capacity
            .or_else(|| self.limit.as_ref().map(|l| l.limit()))
    }

    /// Whether a policy may pick it now: active and below its capacity (`has_free_slot`).
    #[inline]
    pub fn has_free_slot(&self) -> bool {
        self.state == BackendState::Active
            && self.effective_capacity().is_none_or(|c| self.in_flight < c)
    }
}

/// What every backend of a fleet shares, for building one.
#[derive(Debug, Clone)]
pub struct BackendTemplate {
    /// Workers per backend.
    pub workers: u32,
    /// Capacity for the policies; `None` = unknown.
    pub capacity: Option<u32>,
    /// Whether an unknown capacity is learnt by the adaptive limit.
    pub adaptive: bool,
    /// Decay of the peak-EWMA estimate (`[balancer] ewma_decay`).
    pub ewma_decay: Nanos,
    /// Speeds handed out in turn.
    pub speeds: Vec<f64>,
    /// Slow start of backends that become active (`[balancer] slow_start`).
    pub slow_start: SlowStart,
}

/// The fleet: backends in stable slots, and the policy-visible order over them.
#[derive(Debug)]
pub struct Fleet {
    slots: Vec<Option<Backend>>,
    free: Vec<u32>,
    /// Slot indices in registry order: what `Candidates` index.
    order: Vec<u32>,
    generation: u64,
    next_id: u64,
    template: BackendTemplate,
    /// Price per backend-hour, shown to `cost_aware`.
    cost_per_hour: f64,
    /// Whether views carry the peak-EWMA estimate (only `peak_ewma` reads it; computing it costs
    /// an exponential per view).
    pub track_ewma: bool,
    starting: u32,
    active: u32,
    draining: u32,
    /// Backends with a free slot, kept up to date by [`Fleet::refresh`].
    free_backends: u32,
}

impl Fleet {
    /// An empty fleet whose backends are built from `template`.
    pub fn new(template: BackendTemplate, cost_per_hour: f64, track_ewma: bool) -> Fleet {
        Fleet {
            slots: Vec::new(),
            free: Vec::new(),
            order: Vec::new(),
            generation: 0,
            next_id: 0,
            template,
            cost_per_hour,
            track_ewma,
            starting: 0,
            active: 0,
            draining: 0,
            free_backends: 0,
        }
    }

    /// Launches a backend at `now`, starting (or active at once when `active`); returns its slot.
    pub fn launch(&mut self, now: Nanos, active: bool) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let t = &self.template;
        let speed = t.speeds[(id % t.speeds.len() as u64) as usize];
        let backend = Backend {
            id,
            name: format!("b{id}"),
            state: if active {
                BackendState::Active
            } else {
                BackendState::Starting
            },
            launched_at: now,
            speed,
            weight: (speed.round() as u32).max(1),
            workers: t.workers,
            busy: 0,
            queue: VecDeque::new(),
            in_flight: 0,
            capacity: t.capacity,
            cost_per_hour: self.cost_per_hour,
            limit: (t.capacity.is_none() && t.adaptive)
                .then(|| AdaptiveLimit::new(Default::default())),
            ewma: PeakEwma::new(t.ewma_decay),
            // Active at launch only for the starting fleet: present at startup, no ramp.
            ramp_since: None,
            counted_free: false,
        };
        if active {
            self.active += 1;
        } else {
            self.starting += 1;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(backend);
                s
            }
            None => {
                self.slots.push(Some(backend));
                (self.slots.len() - 1) as u32
            }
        };
        self.order.push(slot);
        self.generation += 1;
        self.refresh(slot);
        slot
    }

    /// [`Fleet::launch`] of a backend of an instance kind: its own workers, capacity (`None`:
    /// the template's) and price.
    pub fn launch_kind(
        &mut self,
        now: Nanos,
        active: bool,
        workers: u32,
        capacity: Option<u32>,
        cost_per_hour: f64,
    ) -> u32 {
        let slot = self.launch(now, active);
        let b = self.get_mut(slot);
        b.workers = workers;
        b.capacity = capacity.or(b.capacity);
        b.cost_per_hour = cost_per_hour;
        self.refresh(slot);
        slot
    }

    /// Recounts whether the backend in `slot` has a free slot; call after anything that may
    /// change it (requests in flight, state, a learnt limit).
    #[inline]
    pub fn refresh(&mut self, slot: u32) {
        let b = self.slots[slot as usize].as_mut().expect("a live backend");
        let free = b.has_free_slot();
        if free != b.counted_free {
            b.counted_free = free;
            if free {
                self.free_backends += 1;
            } else {
                self.free_backends -= 1;
            }
        }
    }

    /// Books a slot on the backend at policy index `index` for a request sent to it now;
    /// returns its slot and its requests in flight, this one included.
    pub fn book(&mut self, index: usize) -> (u32, u32) {
        let slot = self.slot_at(index);
        let b = self.get_mut(slot);
        b.in_flight += 1;
        let in_flight = b.in_flight;
        self.refresh(slot);
        (slot, in_flight)
    }

    /// Whether any backend has a free slot. When none has, every policy answers `None` (the
    /// `Policy` contract), so the simulator does not ask: under overload that saves the full
    /// scan a policy makes to be sure.
    #[inline]
    pub fn any_free(&self) -> bool {
        self.free_backends > 0
    }

    /// The backend in `slot`; panics on an empty slot (events only name live backends).
    #[inline]
    pub fn get(&self, slot: u32) -> &Backend {
        self.slots[slot as usize].as_ref().expect("a live backend")
    }

    /// The backend in `slot`, mutably.
    #[inline]
    pub fn get_mut(&mut self, slot: u32) -> &mut Backend {
        self.slots[slot as usize].as_mut().expect("a live backend")
    }

    /// The backend in `slot` if it is the one with `id` (a boot event may outlive its backend).
    pub fn get_if(&self, slot: u32, id: u64) -> Option<&Backend> {
        self.slots
            .get(slot as usize)?
            .as_ref()
            .filter(|b| b.id == id)
    }

    /// The slot of the policy's pick `index`.
    #[inline]
    pub fn slot_at(&self, index: usize) -> u32 {
        self.order[index]
    }

    /// A starting backend becomes active at `now`; its slow-start ramp starts.
    pub fn activate(&mut self, slot: u32, now: Nanos) {
        let b = self.get_mut(slot);
        debug_assert_eq!(b.state, BackendState::Starting);
        if starts_ramp(b.state, BackendState::Active, false) {
            b.ramp_since = Some(now);
        }
        b.state = BackendState::Active;
        self.starting -= 1;
        self.active += 1;
        self.refresh(slot);
    }

    /// Takes a backend out: a starting one goes at once, an active one drains (and goes once it
    /// is idle). Returns whether it is gone already.
    pub fn remove(&mut self, slot: u32) -> bool {
        let b = self.get_mut(slot);
        match b.state {
            BackendState::Starting => {
                self.starting -= 1;
                self.free_slot(slot);
                true
            }
            BackendState::Active => {
                b.state = BackendState::Draining;
                let idle = b.in_flight == 0;
                self.active -= 1;
                self.draining += 1;
                self.refresh(slot);
                if idle {
                    self.draining -= 1;
                    self.free_slot(slot);
                }
                idle
            }
            // Ejection is the proxy's (outlier detection); the simulator never ejects.
            BackendState::Draining | BackendState::Ejected => false,
        }
    }

    /// A draining backend that just went idle leaves the fleet; returns whether it did.
    pub fn reap_if_drained(&mut self, slot: u32) -> bool {
        let b = self.get(slot);
        if b.state == BackendState::Draining && b.in_flight == 0 {
            self.draining -= 1;
            self.free_slot(slot);
            true
        } else {
            false
        }
    }

    fn free_slot(&mut self, slot: u32) {
        if self.slots[slot as usize]
            .as_ref()
            .is_some_and(|b| b.counted_free)
        {
            self.free_backends -= 1;
        }
        self.slots[slot as usize] = None;
        self.free.push(slot);
        self.order.retain(|&s| s != slot);
        self.generation += 1;
    }

    /// Backends booting.
    pub fn starting(&self) -> u32 {
        self.starting
    }

    /// Backends serving.
    pub fn active(&self) -> u32 {
        self.active
    }

    /// Backends draining.
    pub fn draining(&self) -> u32 {
        self.draining
    }

    /// Every backend that is paid for: starting, active and draining.
    pub fn paid(&self) -> u32 {
        self.starting + self.active + self.draining
    }

    /// Slots in registry order.
    pub fn order(&self) -> &[u32] {
        &self.order
    }

    /// Every live backend, in registry order.
    pub fn backends(&self) -> impl Iterator<Item = &Backend> + '_ {
        self.order.iter().map(move |&s| self.get(s))
    }

    /// The slow-start settings its backends ramp with.
    pub fn slow_start(&self) -> SlowStart {
        self.template.slow_start
    }

    /// The fleet as a policy sees it at `now`.
    #[inline]
    pub fn at(&self, now: Nanos) -> FleetAt<'_> {
        FleetAt { fleet: self, now }
    }
}

/// The fleet at one instant: the [`Candidates`] a policy picks from.
pub struct FleetAt<'a> {
    fleet: &'a Fleet,
    now: Nanos,
}

impl Candidates for FleetAt<'_> {
    #[inline]
    fn len(&self) -> usize {
        self.fleet.order.len()
    }

    #[inline]
    fn view(&self, i: usize) -> BackendView {
        let b = self.fleet.get(self.fleet.order[i]);
        BackendView {
            id: b.id,
            in_flight: b.in_flight,
            capacity: b.effective_capacity(),
            weight: b.weight,
            ewma_latency_ns: if self.fleet.track_ewma {
                b.ewma.estimate(self.now)
            } else {
                0
            },
            cost_per_hour: b.cost_per_hour,
            accepting: b.state == BackendState::Active,
            ramp: self.fleet.template.slow_start.ramp(b.ramp_since, self.now),
        }
    }

    #[inline]
    fn generation(&self) -> u64 {
        self.fleet.generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet() -> Fleet {
        Fleet::new(
            BackendTemplate {
                workers: 2,
                capacity: Some(2),
                adaptive: false,
                ewma_decay: 1_000_000_000,
                speeds: vec![1.0, 2.0],
                slow_start: SlowStart::OFF,
            },
            0.05,
            false,
        )
    }

    #[test]
    fn membership_changes_move_the_generation_and_the_counts() {
        let mut f = fleet();
        let a = f.launch(0, true);
        let b = f.launch(0, false);
        assert_eq!((f.active(), f.starting(), f.paid()), (1, 1, 2));
        assert!(f.any_free());
        let g = f.at(0).generation();
        let view = f.at(0).view(1);
        assert!(
            !view.accepting,
            "a starting backend is listed but not accepting"
        );
        assert_eq!(f.get(b).speed, 2.0);
        assert_eq!(f.get(b).weight, 2);
        f.activate(b, 0);
        assert_eq!(
            f.at(0).generation(),
            g,
            "a state change is not a membership change"
        );
        for slot in [a, b] {
            f.get_mut(slot).in_flight = 2;
            f.refresh(slot);
        }
        assert!(!f.any_free(), "both at capacity");
        f.get_mut(a).in_flight = 1;
        f.refresh(a);
        assert!(f.any_free());
        assert!(!f.remove(a), "busy: drains");
        assert_eq!((f.active(), f.draining()), (1, 1));
        assert!(!f.at(0).view(0).accepting);
        f.get_mut(a).in_flight = 0;
        assert!(f.reap_if_drained(a));
        assert_eq!(f.at(0).len(), 1);
        assert_ne!(f.at(0).generation(), g);
        assert_eq!(f.paid(), 1);
        // The freed slot is reused, with a new id.
        let c = f.launch(5, true);
        assert_eq!(c, a);
        assert_eq!(f.get(c).id, 2);
        assert!(f.get_if(c, 0).is_none());
    }
}
