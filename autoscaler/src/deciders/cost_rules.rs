//! Cost-aware rules around any decider, and a meter of what the fleet has cost.
//!
//! [`CostRules`] takes the inner decider's choice and, in this order:
//!
//! 1. **Boot-time lookahead.** Backends ordered now serve only after `boot_time`, so the arrival
//!    rate's trend (least-squares slope over the stable window) is extrapolated to
//!    now + boot_time: rate_ahead = panic-window rate + slope x (panic_window / 2 + boot_time),
//!    and what the signals want (before `min`) is scaled by rate_ahead / rate (at most 2x: a
//!    minute of history says little about half a minute ahead). Rises within two standard
//!    deviations of the panic window's Poisson count are ignored as noise. A rising trend also
//!    stops a scale-in.
//! 2. **No scale-in of what would be bought back within one boot time**: a scale-in goes no
//!    lower than the highest choice of the last `boot_time`. And none while the inner decider
//!    panics: a panicking decider never scales down, and the backends the lookahead added to
//!    its choice are part of the same response to the spike (without this, a lookahead that
//!    adds 2 one second and 1 the next removes a backend that is still booting).
//! 3. **SLO-violation price.** With a measured service rate, the fleet n from the choice up to
//!    the cap that minimises instance cost plus expected violation cost per hour (below), with
//!    P from the queueing model (Erlang C, M/M/(n x workers)). It only adds backends: the inner
//!    decider may see what the model does not (measured latency, queue depth), so the cost rules
//!    never cut below it. The scan stops once the violations above the floor the service time
//!    alone sets cost less than one backend (no further backend can pay for itself). Free
//!    backends (price 0) are not priced against violations.
//! 4. **Min, max and the budget**: the fleet never exceeds floor(budget_per_hour /
//!    backend_per_hour), which wins over `min` (the config check keeps them compatible).
//! 5. **Billing-aware scale-in.** Each backend is paid to the end of its current billing period
//!    (periods count from launch). Of the backends a scale-in would remove, only those within
//!    `release_margin` of their period's end go now, least paid time left first; the others are
//!    kept until near their end (later decisions release them). Over the budget cap they go at
//!    once. The decision names the backends to remove in `remove`.
//! 6. **Overload.** When what the signals want is more than the ready fleet (capped at max or
//!    the budget, or new backends still booting), the decision carries the configured overload
//!    action for the balancer: queue, shed, or queue up to a length then shed. The length is
//!    `overload_max_queue`, or by default what the ready fleet serves within the SLO:
//!    ceil(ready x service rate per backend x slo_p99).
//!
//! ```text
//! cost(n) = n x backend_per_hour
//!         + arrival_rate x 3600 x P(sojourn > slo_p99 | n) x slo_violation_cost
//! ```

use super::queueing_model::QueueingModel;
use super::{ceil_count, secs, Decider};
use crate::billing::paid_until;
use crate::decision::{Decision, OverloadAction};
use crate::fleet::{BackendState, FleetView};
use crate::windows::Windows;
use ebbtide_config::autoscaler::{Autoscaler, OverloadMode};
use ebbtide_config::time::Nanos;
use std::collections::VecDeque;

/// The most a lookahead multiplies the fleet by.
pub const MAX_LOOKAHEAD_FACTOR: f64 = 2.0;

/// Any decider with the cost rules around it; see the module notes.
#[derive(Debug, Clone)]
pub struct CostRules<D> {
    inner: D,
    price_per_hour: f64,
    billing_period: Nanos,
    release_margin: Nanos,
    budget_cap: Option<u32>,
    slo_violation_cost: f64,
    slo: f64,
    workers: u32,
    boot_time: Nanos,
    overload: OverloadMode,
    overload_max_queue: Option<u32>,
    /// (time, choice after the lookahead) of recent calls, for the no-buy-back rule.
    recent: VecDeque<(Nanos, u32)>,
}

impl<D: Decider> CostRules<D> {
    /// `inner` with the rules of `[autoscaler]` and `[autoscaler.cost]`.
    pub fn new(inner: D, cfg: &Autoscaler) -> CostRules<D> {
        CostRules {
            inner,
            price_per_hour: cfg.cost.backend_per_hour,
            billing_period: cfg.cost.billing_period.as_nanos(),
            release_margin: cfg.release_margin().as_nanos(),
            budget_cap: cfg.cost.budget_cap(),
            slo_violation_cost: cfg.cost.slo_violation_cost,
            slo: cfg.slo_p99.0.as_secs_f64(),
            workers: cfg.workers.max(1),
            boot_time: cfg.boot_time.as_nanos(),
            overload: cfg.overload,
            overload_max_queue: cfg.overload_max_queue,
            recent: VecDeque::new(),
        }
    }

    /// The wrapped decider.
    pub fn inner(&self) -> &D {
        &self.inner
    }

    /// The most backends allowed: max, and the budget.
    pub fn cap(&self, fleet: &FleetView) -> u32 {
        let max = fleet.max.max(fleet.min);
        self.budget_cap.map_or(max, |b| b.min(max))
    }

    /// (rate now, rate expected once a backend ordered now is ready), from the arrival-rate
    /// trend; `None` without a trend.
    fn lookahead(&self, windows: &Windows, now: Nanos, boot: Nanos) -> Option<(f64, f64)> {
        let panic = windows.panic(now);
        let rate = panic.arrival_rate?;
        let horizon = (panic.to as f64 - panic.centre()) / 1e9 + secs(boot);
        // A trend measured over a span shorter than the one it is stretched over is noise (the
        // first seconds of traffic look like a steep ramp from zero): extrapolate only once the
        // stable window holds at least 4 horizons of history, or half of itself.
        let stable = windows.stable(now);
        let covered = stable.to.saturating_sub(stable.from) as f64 / 1e9;
        let needed = (4.0 * horizon).min(windows.stable_length() as f64 / 2e9);
        if covered < needed {
            return None;
        }
        let slope = windows.trend_by(windows.stable_length(), now, |o| Some(o.arrival_rate))?;
        Some((rate, rate + slope * horizon))
    }

    /// The overload action for the configured mode.
    fn overload_action(&self, windows: &Windows, fleet: &FleetView, now: Nanos) -> OverloadAction {
        match self.overload {
            OverloadMode::Queue => OverloadAction::Queue,
            OverloadMode::Shed => OverloadAction::Shed,
            OverloadMode::Both => {
                let max_queue = self.overload_max_queue.unwrap_or_else(|| {
                    let stable = windows.stable(now);
                    let rate = stable
                        .service_rate_per_backend
                        .map(|mu| mu * fleet.ready as f64)
                        .or(stable.completion_rate)
                        .unwrap_or(0.0);
                    ceil_count(rate * self.slo).max(1)
                });
                OverloadAction::QueueThenShed { max_queue }
            }
        }
    }
}

impl<D: Decider> Decider for CostRules<D> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn decide(&mut self, windows: &Windows, fleet: &FleetView, now: Nanos) -> Decision {
        let mut d = self.inner.decide(windows, fleet, now);
        let current = fleet.current();
        let cap = self.cap(fleet);
        let mut notes: Vec<String> = Vec::new();
        let mut choice = d.desired;
        let mut wanted = d.wanted;
        // The provider's measured boot time, when it measures one.
        let boot = fleet.measured_boot.unwrap_or(self.boot_time);

        // 1. Boot-time lookahead on the arrival-rate trend.
        if let Some((rate, ahead)) = self.lookahead(windows, now, boot) {
            d.inputs.insert("arrival_rate_ahead".into(), ahead);
            // A rise within two standard deviations of a Poisson count over the panic window
            // is noise, not a trend worth a backend.
            let noise = 2.0 * (rate / (windows.panic_length() as f64 / 1e9)).sqrt();
            if rate > 0.0 && ahead > rate + noise {
                let factor = (ahead / rate).min(MAX_LOOKAHEAD_FACTOR);
                // What the signals want, scaled: not the choice after `min` raised it (a fleet
                // held at min for a demand of one backend has room for the rise already).
                let n = choice.max(ceil_count(d.wanted as f64 * factor));
                wanted = wanted.max(n);
                if n > choice {
                    notes.push(format!(
                        "arrival rate rising to {ahead:.1}/s from {rate:.1}/s within the \
                         {}s boot time: {choice} -> {n}",
                        secs(boot)
                    ));
                    choice = n;
                }
            }
        }

        // 2. No scale-in of what would be bought back within one boot time.
        let horizon = now.saturating_sub(boot);
        while self.recent.front().is_some_and(|(at, _)| *at < horizon) {
            self.recent.pop_front();
        }
        let recent_max = self.recent.iter().map(|(_, n)| *n).max();
        self.recent.push_back((now, choice));
        if choice < current && d.panic {
            notes.push(format!(
                "panicking: no scale-in from {current} (never while panicking)"
            ));
            choice = current;
        }
        if choice < current {
            if let Some(m) = recent_max.filter(|m| *m > choice) {
                let keep = m.min(current);
                notes.push(format!(
                    "{m} were wanted within the last {}s (one boot time): scale-in to {keep}, \
                     not {choice}",
                    secs(boot)
                ));
                choice = keep;
            }
        }

        // 3. Price SLO violations against backends.
        let model = QueueingModel::model(windows, now, self.workers, self.slo)
            .filter(|m| m.arrival_rate > 0.0);
        if let Some(model) = model {
            let requests_per_hour = model.arrival_rate * 3600.0;
            let violations = |share: f64| requests_per_hour * share * self.slo_violation_cost;
            if self.price_per_hour > 0.0 && self.slo_violation_cost > 0.0 && choice < cap {
                let total = |n: u32, share: f64| n as f64 * self.price_per_hour + violations(share);
                let floor = violations((-model.service_rate_per_server() * self.slo).exp());
                let mut best: Option<(u32, f64, f64)> = None;
                for p in model.predictions_from(choice) {
                    if p.backends > cap {
                        break;
                    }
                    let cost = total(p.backends, p.slo_violation);
                    if best.is_none_or(|(_, c, _)| cost < c - 1e-12) {
                        best = Some((p.backends, cost, p.slo_violation));
                    }
                    // What more backends could still save: the violations above the floor
                    // the service time alone sets. Below one backend's price, stop.
                    if violations(p.slo_violation) - floor < self.price_per_hour {
                        break;
                    }
                }
                if let Some((n, cost, share)) = best.filter(|b| b.0 > choice) {
                    let before = model.predict(choice);
                    notes.push(format!(
                        "SLO violations at {:.4} per request: {choice} backends would cost \
                         {:.3}/h ({:.2}% over {:.0}ms), {n} cost {cost:.3}/h ({:.2}%)",
                        self.slo_violation_cost,
                        total(choice, before.slo_violation),
                        before.slo_violation * 100.0,
                        self.slo * 1000.0,
                        share * 100.0
                    ));
                    choice = n;
                    wanted = wanted.max(n);
                }
            }
        }

        // 4. Min, max and the budget.
        let lower = fleet.min.min(cap);
        if choice > cap {
            notes.push(match self.budget_cap {
                Some(b) if b <= fleet.max => format!(
                    "budget {:.2}/h at {:.3}/h per backend pays for {b}: capped",
                    b as f64 * self.price_per_hour,
                    self.price_per_hour
                ),
                _ => format!("capped at max {cap}"),
            });
        }
        choice = choice.clamp(lower, cap);

        // 5. Billing-aware scale-in: which backends, and when.
        let mut remove = Vec::new();
        if choice < current && !fleet.members.is_empty() {
            let billed = self.price_per_hour > 0.0 && self.billing_period > 0;
            let mut candidates: Vec<(Nanos, bool, Nanos, &str)> = fleet
                .members
                .iter()
                .filter(|m| m.state != BackendState::Draining)
                .map(|m| {
                    let left = paid_until(m.launched_at, now, self.billing_period) - now;
                    let left = if billed { left } else { 0 };
                    // Least paid time left first; then starting ones (not serving yet); then
                    // the newest; then by id, so the choice is deterministic.
                    (
                        left,
                        m.state != BackendState::Starting,
                        u64::MAX - m.launched_at,
                        m.id.as_str(),
                    )
                })
                .collect();
            candidates.sort();
            let excess = (current - choice) as usize;
            let forced = current.saturating_sub(cap) as usize;
            let mut held = Vec::new();
            for (left, _, _, id) in candidates.into_iter().take(excess) {
                if left <= self.release_margin || remove.len() < forced {
                    remove.push(id.to_string());
                } else {
                    held.push(left);
                }
            }
            if let Some(next) = held.iter().min() {
                notes.push(format!(
                    "keeping {} backends already paid to the end of their {}s billing periods \
                     (the next ends in {:.0}s)",
                    held.len(),
                    secs(self.billing_period),
                    secs(*next)
                ));
                choice = current - remove.len() as u32;
            }
        }

        // 6. What the balancer does meanwhile with what the ready fleet cannot serve.
        let overloaded = wanted > fleet.ready;
        let overload = if overloaded {
            self.overload_action(windows, fleet, now)
        } else {
            OverloadAction::None
        };
        if overloaded {
            notes.push(format!(
                "{wanted} wanted, {} ready{}: overload action {}",
                fleet.ready,
                if wanted > cap {
                    format!(", capped at {cap}")
                } else {
                    format!(", {} starting", fleet.starting)
                },
                self.overload.name()
            ));
        }

        if !notes.is_empty() {
            d.reason.push_str("; cost: ");
            d.reason.push_str(&notes.join("; "));
            d.reason.push_str(&format!("; desired {choice}"));
        }
        d.desired = choice;
        d.wanted = wanted;
        d.overload = overload;
        d.remove = remove;
        d.inputs.insert("cap".into(), cap as f64);
        d.inputs
            .insert("price_per_backend_hour".into(), self.price_per_hour);
        d.inputs
            .insert("cost_per_hour".into(), choice as f64 * self.price_per_hour);
        if let Some(m) = model {
            let p = m.predict(choice);
            d.inputs
                .insert("predicted_slo_violation".into(), p.slo_violation);
            d.inputs.insert(
                "expected_violation_cost_per_hour".into(),
                m.arrival_rate * 3600.0 * p.slo_violation * self.slo_violation_cost,
            );
        }
        d
    }
}

#[cfg(test)]
mod tests;
