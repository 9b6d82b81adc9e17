//! The discrete-event core: a virtual clock, a heap of timed events and seeded random streams.
//! No tokio, no sockets, no wall clock: a run is a function of the scenario and its seed.
//!
//! What is driven, and from where:
//!
//! - **Balancing**: the policy `[balancer]` names, built by `ebbtide_balancer::policies::build`,
//!   picking from the simulated fleet ([`super::fleet::Fleet`] implements `Candidates`).
//! - **Waiting and shedding**: the balancer's own FIFO, `ebbtide_balancer::queue::WaitQueue`,
//!   bounded by `[overload] max_queue` and `queue_timeout`, with the small rule of the proxy's
//!   dispatcher (`balancer/src/dispatch.rs`, tokio-based, so mirrored here rather than called): a
//!   request arriving while nobody waits asks the policy; when it answers none (every backend full
//!   or not accepting) the request joins the queue, or is shed with 503 when the queue is full.
//!   Every completion and every fleet change dispatches the queue from its head until a pick
//!   fails. A request waiting `queue_timeout` is shed with 503. The policy is not asked when no
//!   backend has a free slot (it would answer none, by the `Policy` contract, after a full scan).
//! - **Signals**: `ebbtide_balancer::signals::SignalWindow`, the proxy's sliding window, fed with
//!   every arrival, completion and shed; its p99 is the autoscaler's latency input and the
//!   "windowed p99" checked against the SLO each second.
//! - **Latency estimates and learnt limits**: `ebbtide_balancer::ewma::PeakEwma` (for
//!   `peak_ewma`) and `ebbtide_balancer::limit::AdaptiveLimit` (with `capacity = "adaptive"`),
//!   fed with each request's time at the backend as the proxy feeds them.
//! - **Backends**: `workers` in service, the rest in the backend's own FIFO, each served for a
//!   draw of `ebbtide_config::service_time::ServiceTime` divided by the backend's speed.
//! - **Autoscaling** (with `[autoscaler]`): the live control step,
//!   `ebbtide_autoscaler::ControlStep`, ticked every `interval` with a `Reading` of the
//!   simulated balancer (the counters and window `/api/v1/signals` carries), so sampling, the
//!   decider and its cost rules, the event log, the choice of backends to remove and the cost
//!   meter are the live loop's own. Its commands are carried out in virtual time: a launched
//!   backend boots for the boot delay, then serves; a retired one takes no new requests and
//!   leaves when idle (a starting one at once). A changed overload action bounds the queue by
//!   `OverloadAction::queue_limit`, as `ebbtide serve` does.
//! - **Instance kinds** (`[[provider.kinds]]` with `[autoscaler]`): the same step with its kind
//!   planner (`ControlStep::with_kinds`); a backend of a kind has that kind's workers, capacity
//!   (its workers with `capacity = "workers"`), price (shown to `cost_aware`) and boot time, and
//!   a kind with a `preemption_rate` is preempted at exponential times from when it is ready
//!   (drained at once, reported lost, so the step replaces it, as a spot instance's notice).
//!   The starting fleet is the planner's steady mix for `backends` reference backends.

use super::fleet::{BackendState, BackendTemplate, Fleet, Job};
use super::scenario::Scenario;
use crate::load::report::{ErrorKind, Outcome, Recorder, Report, RunInfo};
use crate::load::schedule::Arrivals;
use ebbtide_autoscaler::control::{Command, Report as Happened};
use ebbtide_autoscaler::{ControlStep, CostMeter, Direction, Instance, Reading};
use ebbtide_balancer::dispatch::Shed;
use ebbtide_balancer::policies::hash_key;
use ebbtide_balancer::policy::Policy;
use ebbtide_balancer::queue::{Admission, Head, WaitQueue};
use ebbtide_balancer::signals::SignalWindow;
use ebbtide_config::rng::Rng;
use ebbtide_config::time::{Nanos, NANOS_PER_SEC};
use ebbtide_config::PolicyKind;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

/// Body bytes of a simulated answer: `ebbtide backend`'s default `ok` line.
const ANSWER_BYTES: u64 = 3;
/// Scaling decisions kept in the event log of a run.
const EVENT_LOG_CAPACITY: usize = 1000;

/// A request waiting in the balancer's queue.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    arrival: Nanos,
    key: Option<u64>,
}

/// What happens at an event's time.
#[derive(Debug, Clone, Copy)]
enum EventKind {
    /// A worker of the backend in `slot` finishes `job`.
    Complete { slot: u32, job: Job },
    /// The backend launched as `id` in `slot` has booted.
    Ready { slot: u32, id: u64 },
    /// The head of the balancer's queue may have waited its whole timeout.
    Expire,
    /// The autoscaler's control loop runs.
    Control,
    /// The spot-like backend launched as `id` in `slot` is preempted.
    Preempt { slot: u32, id: u64 },
    /// A whole second of virtual time has passed: the series' bookkeeping.
    Second,
}

#[derive(Debug, Clone, Copy)]
struct Event {
    at: Nanos,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Event {}

impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Event {
    /// Reversed, so the max-heap pops the earliest event; ties go in scheduling order.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// What the autoscaler did over a run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ScalingSummary {
    /// The decider's name; `None` without `[autoscaler]` (a fixed fleet).
    pub decider: Option<String>,
    /// Decisions that grew the fleet.
    pub up: u64,
    /// Decisions that shrank it.
    pub down: u64,
    /// Decisions that kept it.
    pub hold: u64,
    /// Backends launched after the start.
    pub launched: u64,
    /// Backends removed (cancelled while starting, or drained).
    pub removed: u64,
    /// Most backends paid for at once.
    pub peak_backends: u32,
    /// Backends of spot-like kinds preempted.
    pub preempted: u64,
}

/// Exact statistics of the reported requests (those arriving after the warm-up), kept beside
/// the report's histograms: sums in nanoseconds, so theory checks do not meet bucket rounding.
#[derive(Debug, Clone, Default)]
pub struct ExactStats {
    /// Requests that arrived after the warm-up.
    pub arrived: u64,
    /// Of those, answered by a backend (any latency).
    pub served: u64,
    /// Sum of sojourn times (arrival to answer) of served requests, ns.
    pub sojourn_sum_ns: f64,
    /// Sum of waits (arrival to the start of service, in the balancer's and the backend's
    /// queues) of served requests, ns.
    pub wait_sum_ns: f64,
    /// Served requests slower than the SLO.
    pub over_slo: u64,
    /// Indexed by backend id (launch number): served requests and their sojourn sum in ns.
    pub per_backend: Vec<(u64, f64)>,
}

impl ExactStats {
    /// Mean sojourn, seconds.
    pub fn mean_sojourn_s(&self) -> f64 {
        self.sojourn_sum_ns / self.served.max(1) as f64 / 1e9
    }

    /// Mean wait before service, seconds.
    pub fn mean_wait_s(&self) -> f64 {
        self.wait_sum_ns / self.served.max(1) as f64 / 1e9
    }
}

/// Everything one run produced.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The report in `ebbtide load`'s format.
    pub report: Report,
    /// Every request simulated, warm-up included.
    pub simulated_requests: u64,
    /// Exact statistics of the reported requests.
    pub exact: ExactStats,
    /// Requests shed by the balancer, by reason (`queue_full`, `queue_timeout`).
    pub shed: BTreeMap<String, u64>,
    /// Seconds after the warm-up whose windowed p99 (the signal window's) was over the SLO.
    pub seconds_p99_over_slo: u64,
    /// The SLO the run was measured against, ns.
    pub slo_ns: Nanos,
    /// Backend-seconds paid for.
    pub backend_seconds: f64,
    /// Cost as billed (whole billing periods), as the autoscaler's `CostMeter` accounts it.
    pub cost: f64,
    /// Backend-hours x price.
    pub usage_cost: f64,
    /// Scaling activity.
    pub scaling: ScalingSummary,
    /// The decider's recent decisions, newest first (empty without `[autoscaler]`).
    pub events: serde_json::Value,
    /// Virtual time at the last event, ns.
    pub end_ns: Nanos,
    /// Slow start (`[balancer] slow_start`): each backend that ramped, with the requests sent
    /// to it and to the whole fleet in each second of its ramp and of as long again after it.
    pub ramps: Vec<RampSeries>,
}

/// What one ramping backend got, second by second from its activation.
#[derive(Debug, Clone, PartialEq)]
pub struct RampSeries {
    /// The backend's name.
    pub backend: String,
    /// When it became active, ns.
    pub active_at: Nanos,
    /// Requests sent to it in each second since `active_at`.
    pub own: Vec<u32>,
    /// Requests sent to any backend in the same seconds.
    pub fleet: Vec<u32>,
}

impl RampSeries {
    /// Its share of the fleet's requests over seconds `from..to` since its activation.
    pub fn share(&self, from: usize, to: usize) -> f64 {
        let to = to.min(self.own.len());
        let own: u64 = self.own[from.min(to)..to]
            .iter()
            .map(|&n| u64::from(n))
            .sum();
        let all: u64 = self.fleet[from.min(to)..to]
            .iter()
            .map(|&n| u64::from(n))
            .sum();
        if all == 0 {
            0.0
        } else {
            own as f64 / all as f64
        }
    }
}

/// One instance kind as the simulator runs it.
#[derive(Debug, Clone)]
struct SimKind {
    name: String,
    workers: u32,
    capacity: Option<u32>,
    cost_per_hour: f64,
    boot: Nanos,
    /// Mean time to preemption, ns; `None` = never preempted.
    mean_life: Option<f64>,
}

/// The kinds of `[[provider.kinds]]` with `[autoscaler]`; none otherwise.
fn sim_kinds(sc: &Scenario) -> Vec<SimKind> {
    let (Some(a), Some(p)) = (&sc.config.autoscaler, &sc.config.provider) else {
        return Vec::new();
    };
    p.kinds
        .iter()
        .map(|k| SimKind {
            name: k.name.clone(),
            workers: k.workers,
            // As `ebbtide serve` registers a backend of this kind (`Provider::for_kind`),
            // unless the simulation asks for slots = workers.
            capacity: match sc.capacity_setting() {
                ebbtide_config::simulation::SimCapacity::Workers => Some(k.workers),
                _ => p.for_kind(k).capacity,
            },
            cost_per_hour: k.cost_per_hour,
            boot: k.boot(a.boot_time).as_nanos(),
            mean_life: (k.preemption_rate > 0.0)
                .then(|| 3600.0 * NANOS_PER_SEC as f64 / k.preemption_rate),
        })
        .collect()
}

/// The autoscaler's part of a run: the live control step and its interval.
struct Control {
    step: ControlStep,
    interval: Nanos,
    /// The simulated backend each of the step's members is, by name.
    slots: BTreeMap<String, u32>,
}

/// The simulation state.
struct Sim<'a> {
    sc: &'a Scenario,
    now: Nanos,
    seq: u64,
    heap: BinaryHeap<Event>,
    policy: Box<dyn Policy>,
    fleet: Fleet,
    queue: WaitQueue<Waiting>,
    queue_timeout: Nanos,
    configured_max_queue: usize,
    expiry_pending: bool,
    signals: SignalWindow,
    service_rng: Rng,
    key_rng: Rng,
    keys: u64,
    in_flight_total: u64,
    warmup: Nanos,
    timeout: Nanos,
    slo: Nanos,
    duration: Nanos,
    rec: Recorder,
    exact: ExactStats,
    shed: BTreeMap<String, u64>,
    /// Requests of each recorded second still unanswered, from `first_open_second` on.
    open_seconds: VecDeque<u32>,
    first_open_second: usize,
    /// (p50, p99) of seconds whose requests are all answered (their histograms are dropped).
    closed_seconds: BTreeMap<usize, (Option<f64>, Option<f64>)>,
    seconds_p99_over_slo: u64,
    last_done: Nanos,
    simulated: u64,
    /// Cumulative counts, as the balancer's `/api/v1/signals` has them.
    arrivals_total: u64,
    completions_total: u64,
    control: Option<Control>,
    meter: CostMeter,
    scaling: ScalingSummary,
    /// Every ramp recorded, and which of them are still being recorded: (backend id, index).
    ramps: Vec<RampSeries>,
    live_ramps: Vec<(u64, usize)>,
    kinds: Vec<SimKind>,
    preempt_rng: Rng,
    /// Backends ready at time 0.
    initial_backends: u64,
}

/// Runs a scenario to the end (every request answered or shed) and returns what it measured.
pub fn run(sc: &Scenario) -> RunResult {
    let cfg = &sc.config;
    let (capacity, adaptive) = sc.capacity();
    let template = BackendTemplate {
        workers: sc.sim.workers,
        capacity,
        adaptive,
        ewma_decay: cfg.balancer.ewma_decay.as_nanos(),
        speeds: sc.sim.speeds.clone(),
        slow_start: ebbtide_balancer::slow_start::SlowStart::from_config(&cfg.balancer),
    };
    let price = sc.price_per_hour();
    let track_ewma = cfg.balancer.policy == PolicyKind::PeakEwma;
    let meter = match &cfg.autoscaler {
        Some(a) => CostMeter::from_config(a),
        None => CostMeter::new(price, 0),
    };
    let control = cfg.autoscaler.as_ref().map(|a| Control {
        step: match &cfg.provider {
            Some(p) => ControlStep::new(a, EVENT_LOG_CAPACITY).with_kinds(p, a),
            None => ControlStep::new(a, EVENT_LOG_CAPACITY),
        },
        interval: a.interval.as_nanos().max(1),
        slots: BTreeMap::new(),
    });
    let mut seeds = Rng::new(sc.sim.seed ^ 0x5eed_5111_u64);
    let mut sim = Sim {
        sc,
        now: 0,
        seq: 0,
        heap: BinaryHeap::new(),
        policy: ebbtide_balancer::policies::build(&cfg.balancer),
        fleet: Fleet::new(template, price, track_ewma),
        queue: WaitQueue::new(cfg.overload.max_queue),
        queue_timeout: cfg.overload.queue_timeout.as_nanos(),
        configured_max_queue: cfg.overload.max_queue,
        expiry_pending: false,
        signals: SignalWindow::new(cfg.signals.window.as_nanos(), 0),
        service_rng: seeds.fork(),
        key_rng: seeds.fork(),
        keys: sc.sim.keys,
        in_flight_total: 0,
        warmup: sc.sim.warmup.as_nanos(),
        timeout: sc.sim.timeout.as_nanos(),
        slo: sc.slo(),
        duration: sc.duration_ns(),
        rec: Recorder::new(),
        exact: ExactStats::default(),
        shed: [Shed::QueueFull, Shed::QueueTimeout]
            .iter()
            .map(|s| (s.reason().to_string(), 0))
            .collect(),
        open_seconds: VecDeque::new(),
        first_open_second: 0,
        closed_seconds: BTreeMap::new(),
        seconds_p99_over_slo: 0,
        last_done: 0,
        simulated: 0,
        arrivals_total: 0,
        completions_total: 0,
        control,
        meter,
        scaling: ScalingSummary::default(),
        ramps: Vec::new(),
        live_ramps: Vec::new(),
        kinds: sim_kinds(sc),
        preempt_rng: seeds.fork(),
        initial_backends: 0,
    };
    sim.start();
    // The arrivals are `ebbtide load`'s for the same profile or trace and seed.
    let mut arrivals = Arrivals::new(sc.source.clone(), sc.duration_s, sc.sim.seed);
    let to_nanos = |t: f64| (t * NANOS_PER_SEC as f64).round() as Nanos;
    let mut next_arrival = arrivals.next().map(to_nanos);
    loop {
        let take_arrival = match (next_arrival, sim.heap.peek()) {
            (Some(a), Some(e)) => a < e.at,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        if take_arrival {
            sim.now = sim.now.max(next_arrival.expect("checked"));
            sim.arrive();
            next_arrival = arrivals.next().map(to_nanos);
        } else {
            let e = sim.heap.pop().expect("checked");
            sim.now = e.at;
            sim.handle(e.kind);
        }
    }
    sim.finish()
}

impl Sim<'_> {
    fn schedule(&mut self, at: Nanos, kind: EventKind) {
        self.seq += 1;
        self.heap.push(Event {
            at,
            seq: self.seq,
            kind,
        });
    }

    /// The starting fleet (ready at once), the autoscaler's first launches (up to `min`, as
    /// the live loop starts), the first ticks.
    fn start(&mut self) {
        if !self.kinds.is_empty() {
            self.start_kinds();
        }
        let plain = if self.kinds.is_empty() {
            self.sc.sim.backends
        } else {
            0
        };
        for _ in 0..plain {
            self.initial_backends += 1;
            let slot = self.fleet.launch(0, true);
            if let Some(c) = self.control.as_mut() {
                let name = self.fleet.get(slot).name.clone();
                c.slots.insert(name.clone(), slot);
                let instance = Instance {
                    id: name,
                    address: String::new(),
                };
                c.step.adopt(instance, BackendState::Active, 0);
            }
        }
        if let Some(c) = self.control.as_mut() {
            c.step.prime(0, &[Some(Reading::default())]);
            let launches = c.step.start(0);
            self.execute(launches);
        }
        self.fleet_changed();
        self.rec.second(0).backends = Some(self.fleet.active());
        self.schedule(NANOS_PER_SEC, EventKind::Second);
        if let Some(c) = &self.control {
            let at = c.interval;
            self.schedule(at, EventKind::Control);
        }
    }

    /// The starting fleet with instance kinds: the planner's steady mix for `backends`
    /// reference backends, ready at once.
    fn start_kinds(&mut self) {
        let Some(c) = self.control.as_ref() else {
            return;
        };
        let Some(planner) = c.step.kind_planner() else {
            return;
        };
        let reference = self
            .sc
            .config
            .autoscaler
            .as_ref()
            .map_or(1, |a| a.workers.max(1));
        let cover = planner.steady_mix(self.sc.sim.backends * reference);
        for (k, n) in cover.into_iter().enumerate() {
            for _ in 0..n {
                self.initial_backends += 1;
                let kind = self.kinds[k].clone();
                let slot = self.fleet.launch_kind(
                    0,
                    true,
                    kind.workers,
                    kind.capacity,
                    kind.cost_per_hour,
                );
                let name = self.fleet.get(slot).name.clone();
                self.schedule_preemption(slot, k);
                if let Some(c) = self.control.as_mut() {
                    c.slots.insert(name.clone(), slot);
                    let instance = Instance {
                        id: name,
                        address: String::new(),
                    };
                    c.step
                        .adopt_kind(instance, BackendState::Active, 0, &kind.name);
                }
            }
        }
    }

    /// The kind index of step member `id`.
    fn kind_of(&self, id: &str) -> Option<usize> {
        let name = self.control.as_ref()?.step.members().kind_of(id)?;
        self.kinds.iter().position(|k| k.name == name)
    }

    /// A ready backend of a spot-like kind gets its preemption time.
    fn schedule_preemption(&mut self, slot: u32, kind: usize) {
        if let Some(mean) = self.kinds.get(kind).and_then(|k| k.mean_life) {
            let after = self.preempt_rng.exp(mean).round() as Nanos;
            let id = self.fleet.get(slot).id;
            self.schedule(
                self.now.saturating_add(after.max(1)),
                EventKind::Preempt { slot, id },
            );
        }
    }

    /// Whether periodic ticks should go on: during the arrivals, and while requests remain.
    fn ticking(&self) -> bool {
        self.now < self.duration || self.in_flight_total > 0 || !self.queue.is_empty()
    }

    fn handle(&mut self, kind: EventKind) {
        match kind {
            EventKind::Complete { slot, job } => self.complete(slot, job),
            EventKind::Ready { slot, id } => {
                if let Some(b) = self
                    .fleet
                    .get_if(slot, id)
                    .filter(|b| b.state == BackendState::Starting)
                {
                    let id = b.name.clone();
                    self.report(Happened::Ready { id });
                }
            }
            EventKind::Preempt { slot, id } => {
                let live = self
                    .fleet
                    .get_if(slot, id)
                    .filter(|b| b.state == BackendState::Active)
                    .map(|b| b.name.clone());
                if let Some(name) = live {
                    // Drained at once (a spot notice), and lost to the step, which replaces it.
                    self.scaling.preempted += 1;
                    if let Some(c) = self.control.as_mut() {
                        c.slots.remove(&name);
                    }
                    self.fleet.remove(slot);
                    self.report(Happened::Lost {
                        id: name,
                        why: "preempted".into(),
                    });
                    self.fleet_changed();
                    self.dispatch_queue();
                }
            }
            EventKind::Expire => {
                self.expiry_pending = false;
                if let Some(deadline) = self.now.checked_sub(self.queue_timeout) {
                    let expired: Vec<Waiting> =
                        self.queue.expire(deadline).map(|d| d.item).collect();
                    for w in expired {
                        self.shed(w, Shed::QueueTimeout);
                    }
                }
                self.ensure_expiry();
            }
            EventKind::Control => {
                self.control_tick();
                if self.ticking() {
                    let interval = self.control.as_ref().map_or(NANOS_PER_SEC, |c| c.interval);
                    self.schedule(self.now + interval, EventKind::Control);
                }
            }
            EventKind::Second => {
                self.second_tick();
                if self.ticking() {
                    self.schedule(self.now + NANOS_PER_SEC, EventKind::Second);
                }
            }
        }
    }

    fn second_of(t: Nanos) -> usize {
        (t / NANOS_PER_SEC) as usize
    }

    // -----------------------------------------------------------------------------------------
    // Requests

    fn arrive(&mut self) {
        let now = self.now;
        self.simulated += 1;
        self.arrivals_total += 1;
        self.signals.record_arrival(now);
        if now >= self.warmup {
            let s = Self::second_of(now);
            self.rec.on_scheduled(s);
            self.rec.sent += 1;
            self.exact.arrived += 1;
            let i = s - self.first_open_second;
            if self.open_seconds.len() <= i {
                self.open_seconds.resize(i + 1, 0);
            }
            self.open_seconds[i] += 1;
        }
        let key = (self.keys > 0).then(|| {
            let k = self.key_rng.below(self.keys as usize) as u64;
            hash_key(&k.to_le_bytes())
        });
        let w = Waiting { arrival: now, key };
        // The proxy's own arrival rule (`WaitQueue::admit`). The policy is not asked when no
        // backend has a free slot: it would answer none, by the `Policy` contract, after a scan.
        let (policy, fleet) = (&self.policy, &self.fleet);
        let admission = self.queue.admit(w, now, |w| {
            fleet
                .any_free()
                .then(|| policy.pick(&fleet.at(now), w.key, now))
                .flatten()
        });
        match admission {
            Admission::Served(i) => self.send(i, w),
            Admission::Queued(_) => self.ensure_expiry(),
            Admission::Shed(w) => self.shed(w, Shed::QueueFull),
        }
    }

    /// Sends a request to the backend at policy index `index`.
    fn send(&mut self, index: usize, w: Waiting) {
        let booked = self.fleet.book(index);
        self.start_booked(booked, w);
    }

    /// A request whose slot is booked (`Fleet::book`) starts service, or waits in the
    /// backend's own queue.
    fn start_booked(&mut self, (slot, in_flight): (u32, u32), w: Waiting) {
        let job = Job {
            arrival: w.arrival,
            dispatched: self.now,
            in_flight_at_start: in_flight,
        };
        self.in_flight_total += 1;
        self.record_ramps(slot);
        let b = self.fleet.get(slot);
        if b.busy < b.workers {
            self.start_service(slot, job);
        } else {
            self.fleet.get_mut(slot).queue.push_back(job);
        }
    }

    /// Counts a request sent now to the backend in `slot` in the series of every backend whose
    /// ramp (and as long again after it) is under way.
    fn record_ramps(&mut self, slot: u32) {
        let window = self.fleet.slow_start().window;
        if window == 0 {
            return;
        }
        let now = self.now;
        let b = self.fleet.get(slot);
        if let Some(since) = b.ramp_since {
            if now - since < 2 * window && !self.live_ramps.iter().any(|&(id, _)| id == b.id) {
                self.live_ramps.push((b.id, self.ramps.len()));
                self.ramps.push(RampSeries {
                    backend: b.name.clone(),
                    active_at: since,
                    own: Vec::new(),
                    fleet: Vec::new(),
                });
            }
        }
        let id = b.id;
        let ramps = &mut self.ramps;
        self.live_ramps.retain(|&(ramp_id, i)| {
            let r = &mut ramps[i];
            let age = now - r.active_at;
            if age >= 2 * window {
                return false;
            }
            let s = (age / NANOS_PER_SEC) as usize;
            if r.own.len() <= s {
                r.own.resize(s + 1, 0);
                r.fleet.resize(s + 1, 0);
            }
            r.fleet[s] += 1;
            if ramp_id == id {
                r.own[s] += 1;
            }
            true
        });
    }

    fn start_service(&mut self, slot: u32, job: Job) {
        let now = self.now;
        let b = self.fleet.get_mut(slot);
        b.busy += 1;
        let speed = b.speed;
        let raw = self.sc.service_time.sample_nanos(&mut self.service_rng);
        let service = if speed == 1.0 {
            raw
        } else {
            (raw as f64 / speed).round() as Nanos
        };
        if job.arrival >= self.warmup {
            self.exact.wait_sum_ns += (now - job.arrival) as f64;
        }
        self.schedule(now + service, EventKind::Complete { slot, job });
    }

    fn complete(&mut self, slot: u32, job: Job) {
        let now = self.now;
        let b = self.fleet.get_mut(slot);
        b.busy -= 1;
        b.in_flight -= 1;
        let id = b.id;
        let next = b.queue.pop_front();
        let rtt = now - job.dispatched;
        if self.fleet.track_ewma {
            self.fleet.get(slot).ewma.observe(rtt, now);
        }
        if let Some(l) = &self.fleet.get(slot).limit {
            l.on_sample(rtt, job.in_flight_at_start, false, now);
        }
        if let Some(next) = next {
            self.start_service(slot, next);
        }
        self.fleet.refresh(slot);
        self.in_flight_total -= 1;
        self.completions_total += 1;
        let latency = now - job.arrival;
        self.signals
            .record_completion(latency, Some(now - job.dispatched), now);
        if job.arrival >= self.warmup {
            let e = &mut self.exact;
            e.served += 1;
            e.sojourn_sum_ns += latency as f64;
            e.over_slo += u64::from(latency > self.slo);
            let i = id as usize;
            if e.per_backend.len() <= i {
                e.per_backend.resize(i + 1, (0, 0.0));
            }
            let per = &mut e.per_backend[i];
            per.0 += 1;
            per.1 += latency as f64;
            let outcome = if latency > self.timeout {
                Outcome::Failed(ErrorKind::Timeout)
            } else {
                Outcome::Answered {
                    status: 200,
                    latency_us: latency / 1000,
                    bytes: ANSWER_BYTES,
                }
            };
            self.record(job.arrival, outcome);
        }
        let name = (self.fleet.get(slot).state == BackendState::Draining)
            .then(|| self.fleet.get(slot).name.clone());
        if self.fleet.reap_if_drained(slot) {
            if let Some(id) = name {
                self.report(Happened::Retired { id });
            }
            self.fleet_changed();
        }
        self.dispatch_queue();
    }

    /// Answers a request 503 without a backend.
    fn shed(&mut self, w: Waiting, why: Shed) {
        let now = self.now;
        self.signals.record_shed(now);
        // The proxy counts its own 503s among the responses it finished.
        self.completions_total += 1;
        if w.arrival >= self.warmup {
            *self.shed.entry(why.reason().to_string()).or_default() += 1;
            self.record(
                w.arrival,
                Outcome::Answered {
                    status: 503,
                    latency_us: (now - w.arrival) / 1000,
                    bytes: 0,
                },
            );
        }
    }

    fn record(&mut self, arrival: Nanos, outcome: Outcome) {
        let s = Self::second_of(arrival);
        self.rec.on_outcome(s, Self::second_of(self.now), outcome);
        self.last_done = self.last_done.max(self.now);
        if let Some(open) = self.open_seconds.get_mut(s - self.first_open_second) {
            *open -= 1;
        }
    }

    /// Hands free slots to queued requests from the head until a pick fails: the proxy's own
    /// dispatch rule (`WaitQueue::dispatch`).
    fn dispatch_queue(&mut self) {
        let now = self.now;
        let mut taken = Vec::new();
        let (policy, fleet) = (&self.policy, &mut self.fleet);
        self.queue.dispatch(
            |w| {
                let pick = fleet
                    .any_free()
                    .then(|| policy.pick(&fleet.at(now), w.key, now))
                    .flatten();
                match pick {
                    // Booked now, so the next head sees this backend's slot taken.
                    Some(i) => Head::Serve(fleet.book(i)),
                    None => Head::Stop,
                }
            },
            |w, slot| taken.push((w, slot)),
        );
        let dispatched = !taken.is_empty();
        for (w, slot) in taken {
            self.start_booked(slot, w);
        }
        if dispatched {
            self.ensure_expiry();
        }
    }

    /// Makes sure an expiry event is pending for the queue's head.
    fn ensure_expiry(&mut self) {
        if self.expiry_pending {
            return;
        }
        if let Some(waited) = self.queue.oldest_wait(self.now) {
            let enqueued = self.now - waited;
            self.expiry_pending = true;
            self.schedule(
                enqueued.saturating_add(self.queue_timeout),
                EventKind::Expire,
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // Periodic work

    fn second_tick(&mut self) {
        let now = self.now;
        if !self.ticking() {
            // The run is over: no new second for the series.
            return;
        }
        let s = Self::second_of(now);
        self.rec.second(s).backends = Some(self.fleet.active());
        if now > self.warmup {
            let snap = self.signals.snapshot(now);
            if snap.completions > 0 && snap.latency_ms.p99 * 1e6 > self.slo as f64 {
                self.seconds_p99_over_slo += 1;
            }
        }
        // Seconds whose requests are all answered keep only their two percentiles.
        let arrivals_second = Self::second_of(now.min(self.duration));
        while self.first_open_second < arrivals_second
            && self.open_seconds.front().is_none_or(|&n| n == 0)
        {
            let s = self.first_open_second;
            if let Some(h) = self.rec.seconds.get_mut(s).and_then(|x| x.latency.take()) {
                let q = |q: f64| Some(h.value_at_quantile(q) as f64 / 1000.0);
                self.closed_seconds.insert(s, (q(0.5), q(0.99)));
            }
            self.open_seconds.pop_front();
            self.first_open_second += 1;
        }
    }

    fn control_tick(&mut self) {
        let now = self.now;
        let snap = self.signals.snapshot(now);
        // What `/api/v1/signals` of a live balancer would say now.
        let reading = Reading {
            arrivals_total: self.arrivals_total,
            completions_total: self.completions_total,
            in_flight: self.in_flight_total,
            queue_depth: self.queue.len() as u64,
            window_completions: snap.completions,
            p99_ms: snap.latency_ms.p99,
            mean_ms: snap.latency_ms.mean,
            backend_ms: snap.backend_ms,
            active_backends: self.fleet.active(),
        };
        let Some(c) = self.control.as_mut() else {
            return;
        };
        c.step.observe(now, &[Some(reading)]);
        let tick = c.step.tick(now);
        match tick.direction {
            Direction::Up => self.scaling.up += 1,
            Direction::Down => self.scaling.down += 1,
            Direction::Hold => self.scaling.hold += 1,
        }
        if let Some(action) = tick.overload {
            // What the balancer does meanwhile with what the ready fleet cannot serve.
            self.queue
                .set_max_len(action.queue_limit(self.configured_max_queue));
        }
        if !tick.commands.is_empty() {
            self.execute(tick.commands);
            self.fleet_changed();
            self.dispatch_queue();
        }
    }

    /// Tells the control step what happened, and carries out what it answers.
    fn report(&mut self, report: Happened) {
        let now = self.now;
        let Some(c) = self.control.as_mut() else {
            return;
        };
        let (next, _) = c.step.report(report, now);
        self.execute(next);
    }

    /// Carries out the control step's commands in virtual time.
    fn execute(&mut self, commands: impl IntoIterator<Item = Command>) {
        for command in commands {
            let now = self.now;
            let slot_of =
                |sim: &Self, id: &str| sim.control.as_ref().and_then(|c| c.slots.get(id).copied());
            match command {
                Command::Launch { ticket, kind } => {
                    let kind = kind.and_then(|k| self.kinds.iter().find(|s| s.name == k).cloned());
                    let slot = match kind {
                        Some(k) => self.fleet.launch_kind(
                            now,
                            false,
                            k.workers,
                            k.capacity,
                            k.cost_per_hour,
                        ),
                        None => self.fleet.launch(now, false),
                    };
                    self.scaling.launched += 1;
                    let name = self.fleet.get(slot).name.clone();
                    if let Some(c) = self.control.as_mut() {
                        c.slots.insert(name.clone(), slot);
                    }
                    let instance = Instance {
                        id: name,
                        address: String::new(),
                    };
                    self.report(Happened::Launched { ticket, instance });
                }
                Command::Boot(instance) => {
                    let Some(slot) = slot_of(self, &instance.id) else {
                        continue;
                    };
                    let boot = self
                        .kind_of(&instance.id)
                        .map_or(self.sc.boot, |k| self.kinds[k].boot);
                    if boot == 0 {
                        self.report(Happened::Ready { id: instance.id });
                    } else {
                        let id = self.fleet.get(slot).id;
                        self.schedule(now + boot, EventKind::Ready { slot, id });
                    }
                }
                Command::Admit(instance) => {
                    if let Some(slot) = slot_of(self, &instance.id) {
                        if self.fleet.get(slot).state == BackendState::Starting {
                            self.fleet.activate(slot, now);
                            if let Some(k) = self.kind_of(&instance.id) {
                                self.schedule_preemption(slot, k);
                            }
                            self.dispatch_queue();
                        }
                    }
                }
                Command::Retire(instance)
                | Command::Forget(instance)
                | Command::Terminate(instance) => {
                    let Some(slot) = slot_of(self, &instance.id) else {
                        continue;
                    };
                    if self.fleet.remove(slot) {
                        if let Some(c) = self.control.as_mut() {
                            c.slots.remove(&instance.id);
                        }
                        self.report(Happened::Retired { id: instance.id });
                    }
                }
            }
        }
    }

    /// Reports the paid fleet to the cost meter after any change.
    fn fleet_changed(&mut self) {
        let paid = self.fleet.paid();
        if self.control.is_none() {
            self.meter.on_fleet_change(self.now, paid);
        }
        self.scaling.peak_backends = self.scaling.peak_backends.max(paid);
    }

    fn finish(mut self) -> RunResult {
        let end = self.now;
        let sc = self.sc;
        let cfg = &sc.config;
        let info = RunInfo {
            target: format!(
                "simulated balancer ({}, {} backends)",
                cfg.balancer.policy.name(),
                sc.sim.backends
            ),
            method: "GET".into(),
            schedule: sc.schedule.clone(),
            arrivals: sc.arrivals_name.clone(),
            duration_s: sc.duration_s,
            elapsed_s: self.last_done as f64 / NANOS_PER_SEC as f64,
            late_after_ms: 5.0,
        };
        let mut report = Report::build(&self.rec, info);
        for (s, (p50, p99)) in std::mem::take(&mut self.closed_seconds) {
            if let Some(p) = report.series.get_mut(s) {
                p.p50_ms = p50;
                p.p99_ms = p99;
            }
        }
        self.scaling.decider = self
            .control
            .as_ref()
            .and_then(|c| c.step.decider_name())
            .map(str::to_string);
        let events = self
            .control
            .as_ref()
            .and_then(|c| c.step.events())
            .map_or(serde_json::Value::Array(Vec::new()), |log| {
                log.to_json(EVENT_LOG_CAPACITY)
            });
        let meter = self
            .control
            .as_ref()
            .map_or(&self.meter, |c| c.step.meter());
        // Every backend launched and no longer paid for was removed.
        let launched_total = self.initial_backends + self.scaling.launched;
        self.scaling.removed = launched_total - self.fleet.paid() as u64;
        RunResult {
            report,
            simulated_requests: self.simulated,
            exact: self.exact,
            shed: self.shed,
            seconds_p99_over_slo: self.seconds_p99_over_slo,
            slo_ns: self.slo,
            backend_seconds: meter.backend_seconds(end),
            cost: meter.cost(end),
            usage_cost: meter.usage_cost(end),
            scaling: self.scaling,
            events,
            end_ns: end,
            ramps: self.ramps,
        }
    }
}
