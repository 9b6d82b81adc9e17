//! The autoscaler's control loop inside `ebbtide serve`: every interval it reads the balancer's
//! signals, feeds the windows, asks the decider (wrapped in the cost rules), launches or drains
//! backends through the fleet, applies the overload action to the balancer's queue, and records
//! the decision for `/api/v1/events` and `/metrics`.

use crate::fleet::Fleet;
use ebbtide_autoscaler::{
    CostMeter, Decision, Direction, EventLog, FleetView, Observation, OverloadAction, Windows,
};
use ebbtide_balancer::admin::EventSource;
use ebbtide_balancer::metrics::MetricsSource;
use ebbtide_balancer::proxy::Proxy;
use ebbtide_balancer::registry::BackendState;
use ebbtide_config::autoscaler::Autoscaler;
use ebbtide_config::time::Nanos;
use std::fmt::Write;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What the loop shares with the admin API.
pub struct AutoscalerState {
    events: Mutex<EventLog>,
    meter: Mutex<CostMeter>,
    desired: AtomicU32,
    clock: ebbtide_balancer::clock::Clock,
}

impl AutoscalerState {
    /// Fresh state for `cfg`.
    pub fn new(cfg: &Autoscaler, clock: ebbtide_balancer::clock::Clock) -> Self {
        AutoscalerState {
            events: Mutex::new(EventLog::new(200)),
            meter: Mutex::new(CostMeter::from_config(cfg)),
            desired: AtomicU32::new(cfg.min),
            clock,
        }
    }
}

impl EventSource for AutoscalerState {
    fn events(&self) -> Vec<serde_json::Value> {
        let log = self.events.lock().unwrap_or_else(|e| e.into_inner());
        match log.to_json(200) {
            serde_json::Value::Array(v) => v,
            other => vec![other],
        }
    }
}

impl MetricsSource for AutoscalerState {
    fn render(&self, out: &mut String) {
        let now = self.clock.now();
        let log = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let meter = self.meter.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str(
            "# HELP ebbtide_autoscaler_desired_backends Backends the autoscaler wants now.\n",
        );
        out.push_str("# TYPE ebbtide_autoscaler_desired_backends gauge\n");
        let _ = writeln!(
            out,
            "ebbtide_autoscaler_desired_backends {}",
            self.desired.load(Ordering::Relaxed)
        );
        out.push_str("# HELP ebbtide_autoscaler_decisions_total Decisions taken, by direction.\n");
        out.push_str("# TYPE ebbtide_autoscaler_decisions_total counter\n");
        for d in [Direction::Up, Direction::Down, Direction::Hold] {
            let _ = writeln!(
                out,
                "ebbtide_autoscaler_decisions_total{{direction=\"{}\"}} {}",
                d.name(),
                log.decisions_total(d)
            );
        }
        out.push_str(
            "# HELP ebbtide_autoscaler_backend_seconds_total Backend-seconds run so far.\n",
        );
        out.push_str("# TYPE ebbtide_autoscaler_backend_seconds_total counter\n");
        let _ = writeln!(
            out,
            "ebbtide_autoscaler_backend_seconds_total {:.3}",
            meter.backend_seconds(now)
        );
        out.push_str("# HELP ebbtide_autoscaler_cost_total Accumulated cost of the backends (whole billing periods, in the price's currency).\n");
        out.push_str("# TYPE ebbtide_autoscaler_cost_total counter\n");
        let _ = writeln!(out, "ebbtide_autoscaler_cost_total {:.6}", meter.cost(now));
    }
}

/// Cumulative counters at the previous observation, for rates over one interval.
struct Previous {
    at: Nanos,
    arrivals: u64,
    completions: u64,
}

/// One sample of the balancer, whole fleet.
fn observe(proxy: &Proxy, fleet: &Fleet, workers: u32, prev: &mut Previous) -> Observation {
    let now = proxy.clock.now();
    let arrivals = proxy.counters.arrivals.load(Ordering::Relaxed);
    let completions = proxy.counters.completions.load(Ordering::Relaxed);
    let dt = (now.saturating_sub(prev.at) as f64 / 1e9).max(1e-3);
    let arrival_rate = arrivals.saturating_sub(prev.arrivals) as f64 / dt;
    let completion_rate = completions.saturating_sub(prev.completions) as f64 / dt;
    *prev = Previous {
        at: now,
        arrivals,
        completions,
    };
    let snap = proxy.registry.snapshot();
    let in_flight: u64 = snap.backends.iter().map(|b| b.in_flight() as u64).sum();
    let queue_depth = proxy.dispatcher.queue_depth() as f64;
    let window = proxy.signals.snapshot(now);
    let have_latency = window.completions > 0;
    let members = fleet.members();
    let ready = snap
        .backends
        .iter()
        .filter(|b| b.state() == BackendState::Active)
        .count() as u32;
    let starting = members
        .iter()
        .filter(|m| m.state == ebbtide_autoscaler::MemberState::Starting)
        .count() as u32;
    // Service rate per backend: its workers over the mean time a request spends, measured only
    // while nothing waits in the balancer (then that time is service plus the backend's own
    // queueing, so this errs low, which errs towards more backends).
    let service_rate_per_backend =
        (have_latency && queue_depth == 0.0 && window.latency_ms.mean > 0.0)
            .then(|| workers as f64 / (window.latency_ms.mean / 1e3));
    Observation {
        at: now,
        concurrency: in_flight as f64 + queue_depth,
        arrival_rate,
        completion_rate,
        queue_depth,
        p99_ms: have_latency.then_some(window.latency_ms.p99),
        service_rate_per_backend,
        ready,
        starting,
    }
}

/// Runs the control loop until `stop`. `base_queue` is the `[overload]` queue the balancer
/// returns to when the decision carries no overload action.
pub async fn run(
    cfg: Autoscaler,
    fleet: Arc<Fleet>,
    proxy: Arc<Proxy>,
    state: Arc<AutoscalerState>,
    base_queue: (usize, Duration),
    mut stop: watch::Receiver<bool>,
) {
    let mut windows = Windows::from_config(&cfg);
    let mut decider = ebbtide_autoscaler::build(&cfg);
    let mut prev = Previous {
        at: proxy.clock.now(),
        arrivals: 0,
        completions: 0,
    };
    for _ in 0..cfg.min {
        fleet.launch();
    }
    let mut tick = tokio::time::interval(cfg.interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut overload = OverloadAction::None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        fleet.reap();
        let obs = observe(&proxy, &fleet, cfg.workers, &mut prev);
        windows.observe(obs);
        let view = FleetView::from_members(fleet.members(), cfg.min, cfg.max);
        let now = proxy.clock.now();
        let decision = decider.decide(&windows, &view, now);
        let from = view.current();
        let direction = state
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(now, decider.name(), from, &decision);
        state.desired.store(decision.desired, Ordering::Relaxed);
        if direction != Direction::Hold {
            tracing::info!(from, to = decision.desired, reason = %decision.reason, "autoscaler decision");
        }
        apply(&fleet, &decision, from);
        if decision.overload != overload {
            overload = decision.overload;
            let (max_queue, timeout) = match overload {
                OverloadAction::None | OverloadAction::Queue => base_queue,
                OverloadAction::Shed => (0, base_queue.1),
                OverloadAction::QueueThenShed { max_queue } => (max_queue as usize, base_queue.1),
            };
            tracing::info!(?overload, max_queue, "overload action");
            proxy.dispatcher.set_queue_limits(max_queue, timeout);
        }
        state
            .meter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .on_fleet_change(now, fleet.count());
    }
}

/// Launches what the decision adds; drains what it names for removal. Scale-in removes only the
/// backends the cost rules chose (a backend paid to the end of its billing period is kept).
fn apply(fleet: &Arc<Fleet>, decision: &Decision, current: u32) {
    for _ in current..decision.desired {
        fleet.launch();
    }
    for id in &decision.remove {
        fleet.retire(id);
    }
}
