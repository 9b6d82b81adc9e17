//! Test helpers: a fake clock and a fluid model of a fleet, so decider tests can script load
//! and watch decisions take effect (with boot delays) without sockets, sleeps or wall time.

use crate::deciders::Decider;
use crate::decision::Decision;
use crate::fleet::{BackendState, FleetView, Member};
use crate::windows::{Observation, Windows};
use ebbtide_config::time::Nanos;

/// One second in core time.
pub(crate) const S: Nanos = 1_000_000_000;

/// An observation with the given totals and `ready` backends; the rest default.
pub(crate) fn observation(
    at: Nanos,
    concurrency: f64,
    arrival_rate: f64,
    ready: u32,
) -> Observation {
    Observation {
        at,
        concurrency,
        arrival_rate,
        completion_rate: arrival_rate,
        ready,
        ..Default::default()
    }
}

/// A fleet of backends with `workers` workers each serving in `service_time` seconds, fed as a
/// fluid: what cannot be served queues in the balancer. Decisions launch backends that become
/// ready after `boot`, and remove the ones a decision names (or the newest).
pub(crate) struct FluidFleet {
    /// The fake clock.
    pub(crate) now: Nanos,
    /// Launch to ready.
    pub(crate) boot: Nanos,
    /// Mean service time of one request, seconds.
    pub(crate) service_time: f64,
    /// Workers per backend.
    pub(crate) workers: u32,
    /// Requests waiting in the balancer.
    pub(crate) queue: f64,
    /// `autoscaler.min` / `max` for the fleet view.
    pub(crate) min: u32,
    /// See `min`.
    pub(crate) max: u32,
    members: Vec<(Member, Nanos)>,
    next_id: u64,
}

impl FluidFleet {
    /// A fleet of `ready` backends, ready since time 0.
    pub(crate) fn new(ready: u32, boot: Nanos, service_time: f64, workers: u32) -> FluidFleet {
        let mut f = FluidFleet {
            now: 0,
            boot,
            service_time,
            workers,
            queue: 0.0,
            min: 1,
            max: 1000,
            members: Vec::new(),
            next_id: 0,
        };
        for _ in 0..ready {
            f.launch(0);
        }
        f
    }

    fn launch(&mut self, ready_at: Nanos) {
        self.next_id += 1;
        let state = if ready_at <= self.now {
            BackendState::Active
        } else {
            BackendState::Starting
        };
        self.members.push((
            Member {
                id: format!("b{}", self.next_id),
                launched_at: self.now,
                state,
            },
            ready_at,
        ));
    }

    /// Backends serving.
    pub(crate) fn ready(&self) -> u32 {
        self.view().ready
    }

    /// The fleet as a decider sees it.
    pub(crate) fn view(&self) -> FleetView {
        FleetView::from_members(
            self.members.iter().map(|(m, _)| m.clone()).collect(),
            self.min,
            self.max,
        )
    }

    /// Completions per second of one fully busy backend.
    pub(crate) fn service_rate_per_backend(&self) -> f64 {
        self.workers as f64 / self.service_time
    }

    /// Advances the clock by `dt` with `arrival_rate` requests/s arriving, and returns the
    /// observation the balancer would report at the new time.
    pub(crate) fn step(&mut self, dt: Nanos, arrival_rate: f64) -> Observation {
        self.now += dt;
        for (m, ready_at) in &mut self.members {
            if m.state == BackendState::Starting && *ready_at <= self.now {
                m.state = BackendState::Active;
            }
        }
        let ready = self.ready();
        let capacity = ready as f64 * self.service_rate_per_backend();
        let dt_s = dt as f64 / 1e9;
        let offered = arrival_rate + self.queue / dt_s;
        let served = offered.min(capacity);
        self.queue = (self.queue + (arrival_rate - capacity) * dt_s).max(0.0);
        let in_flight = served.min(capacity) * self.service_time;
        let wait = if capacity > 0.0 {
            self.queue / capacity
        } else {
            0.0
        };
        let view = self.view();
        Observation {
            at: self.now,
            concurrency: in_flight + self.queue,
            arrival_rate,
            completion_rate: served,
            queue_depth: self.queue,
            p99_ms: Some((self.service_time * 100f64.ln() + wait) * 1000.0),
            service_rate_per_backend: Some(self.service_rate_per_backend()),
            ready: view.ready,
            starting: view.starting,
        }
    }

    /// Carries out a decision: launches up to `desired`, or removes the named backends (or the
    /// newest ones) down to it.
    pub(crate) fn apply(&mut self, decision: &Decision) {
        let current = self.view().current();
        if decision.desired > current {
            for _ in current..decision.desired {
                self.launch(self.now + self.boot);
            }
        } else if decision.desired < current {
            let mut excess = (current - decision.desired) as usize;
            if !decision.remove.is_empty() {
                self.members
                    .retain(|(m, _)| !decision.remove.contains(&m.id));
                excess = excess.saturating_sub(decision.remove.len());
            }
            while excess > 0 {
                self.members.pop();
                excess -= 1;
            }
        }
    }
}

/// Runs `decider` for `seconds` one-second ticks: each tick the fleet advances with the arrival
/// rate `load(t)` (t in whole seconds), the observation goes into `windows`, the decider decides
/// and the fleet applies it. Returns every decision with its time in seconds.
pub(crate) fn run(
    decider: &mut dyn Decider,
    windows: &mut Windows,
    fleet: &mut FluidFleet,
    seconds: u64,
    load: impl Fn(u64) -> f64,
) -> Vec<(u64, Decision)> {
    let mut out = Vec::new();
    for _ in 0..seconds {
        let t = fleet.now / S + 1;
        let obs = fleet.step(S, load(t));
        windows.observe(obs);
        let d = decider.decide(windows, &fleet.view(), fleet.now);
        fleet.apply(&d);
        out.push((t, d));
    }
    out
}
