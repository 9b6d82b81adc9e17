//! The autoscaler's control loop inside `ebbtide serve`: every interval it reads the balancer's
//! signals, feeds the windows, asks the decider (wrapped in the cost rules), launches or drains
//! backends through the fleet, applies the overload action to the balancer's queue, and records
//! the decision for `/api/v1/events` and `/metrics`.

use crate::fleet::Fleet;
use ebbtide_autoscaler::{
    CostMeter, Decision, Direction, EventLog, FleetView, OverloadAction, Sampler, SignalSource,
    Windows,
};
use ebbtide_balancer::admin::EventSource;
use ebbtide_balancer::metrics::{family, MetricsSource};
use ebbtide_balancer::proxy::Proxy;
use ebbtide_config::autoscaler::Autoscaler;
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
        family(
            out,
            "ebbtide_autoscaler_desired_backends",
            "gauge",
            "Backends the autoscaler wants now.",
        );
        let _ = writeln!(
            out,
            "ebbtide_autoscaler_desired_backends {}",
            self.desired.load(Ordering::Relaxed)
        );
        family(
            out,
            "ebbtide_autoscaler_decisions_total",
            "counter",
            "Decisions taken, by direction.",
        );
        for d in [Direction::Up, Direction::Down, Direction::Hold] {
            let _ = writeln!(
                out,
                "ebbtide_autoscaler_decisions_total{{direction=\"{}\"}} {}",
                d.name(),
                log.decisions_total(d)
            );
        }
        family(
            out,
            "ebbtide_autoscaler_backend_seconds_total",
            "counter",
            "Backend-seconds run so far.",
        );
        let _ = writeln!(
            out,
            "ebbtide_autoscaler_backend_seconds_total {:.3}",
            meter.backend_seconds(now)
        );
        family(
            out,
            "ebbtide_autoscaler_cost_total",
            "counter",
            "Accumulated cost of the backends (whole billing periods, in the price's currency).",
        );
        let _ = writeln!(out, "ebbtide_autoscaler_cost_total {:.6}", meter.cost(now));
    }
}

/// Applies a decision's overload action to a balancer's queue.
pub type OverloadControl = Box<dyn FnMut(OverloadAction) + Send>;

/// The overload control of the balancer in this process: `base_queue` is the `[overload]`
/// queue it returns to when the decision carries no overload action.
pub fn in_process_overload(proxy: Arc<Proxy>, base_queue: (usize, Duration)) -> OverloadControl {
    Box::new(move |action| {
        let (max_queue, timeout) = match action {
            OverloadAction::None | OverloadAction::Queue => base_queue,
            OverloadAction::Shed => (0, base_queue.1),
            OverloadAction::QueueThenShed { max_queue } => (max_queue as usize, base_queue.1),
        };
        tracing::info!(?action, max_queue, "overload action");
        proxy.dispatcher.set_queue_limits(max_queue, timeout);
    })
}

/// Runs the control loop until `stop`: every interval one sample from `source`, one decision,
/// launches and drains through `fleet`, and the overload action handed to `overload`.
pub async fn run(
    cfg: Autoscaler,
    fleet: Arc<Fleet>,
    mut source: Box<dyn SignalSource>,
    mut overload_control: OverloadControl,
    state: Arc<AutoscalerState>,
    mut stop: watch::Receiver<bool>,
) {
    let clock = state.clock;
    let mut windows = Windows::from_config(&cfg);
    let mut decider = ebbtide_autoscaler::build(&cfg);
    let mut sampler = Sampler::new(cfg.workers);
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
        // Renewed before this tick's decision, so no renewal can follow a drain it starts.
        fleet.refresh().await;
        match source.read().await {
            Ok(readings) => {
                let obs = sampler.observe(clock.now(), &readings, fleet.starting());
                windows.observe(obs);
            }
            Err(e) => tracing::warn!(error = %e, "no signals this interval"),
        }
        let view = FleetView::from_members(fleet.members(), cfg.min, cfg.max);
        let now = clock.now();
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
            overload_control(overload);
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
