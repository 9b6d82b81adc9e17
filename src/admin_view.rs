//! The autoscaler as the balancer's admin API shows it: its recent decisions at
//! `/api/v1/events`, its gauges and counters in `/metrics`, and its summary in the dashboard's
//! stream, read from the control step the driver shares.

use ebbtide_autoscaler::control::Shared;
use ebbtide_autoscaler::Direction;
use ebbtide_balancer::admin::EventSource;
use ebbtide_balancer::api::AutoscalerSummary;
use ebbtide_balancer::metrics::{self, DescriptorEncoder, MetricsSource};
use std::sync::Arc;

/// How many decisions `/api/v1/events` lists.
pub(crate) const EVENTS_SHOWN: usize = 200;

/// The driver's shared state, as the admin API reads it.
pub(crate) struct AutoscalerView(pub(crate) Arc<Shared>);

impl EventSource for AutoscalerView {
    fn events(&self) -> Vec<serde_json::Value> {
        let step = self.0.lock();
        match step.events().map(|log| log.to_json(EVENTS_SHOWN)) {
            Some(serde_json::Value::Array(v)) => v,
            Some(other) => vec![other],
            None => Vec::new(),
        }
    }

    /// Only the entries after `after` are serialized: the log is in `last_at` order (only its
    /// newest entry, a run of holds, ever changes).
    fn events_after(&self, after: Option<u64>) -> (Vec<serde_json::Value>, u64) {
        let step = self.0.lock();
        let Some(log) = step.events() else {
            return (Vec::new(), 0);
        };
        let recent = log.recent(EVENTS_SHOWN);
        let newest = recent.first().map_or(0, |e| e.at);
        let fresh = recent
            .into_iter()
            .take_while(|e| after.is_none_or(|c| e.last_at > c))
            .filter_map(|e| serde_json::to_value(e).ok())
            .collect();
        (fresh, newest)
    }

    fn summary(&self) -> Option<AutoscalerSummary> {
        let now = self.0.now();
        let step = self.0.lock();
        let last = step
            .events()
            .and_then(|log| log.recent(1).first().map(|e| e.decision.clone()));
        Some(AutoscalerSummary {
            decider: step.decider_name().map(str::to_string),
            mode: if last.as_ref().is_some_and(|d| d.panic) {
                "panic"
            } else {
                "stable"
            }
            .into(),
            desired: step.desired(),
            cost_total: step.meter().cost(now),
            cost_per_hour: 0.0,
            backend_seconds: step.meter().backend_seconds(now),
            slo_p99_ms: last.and_then(|d| d.inputs.get("slo_p99_ms").copied()),
            now_ns: now,
        })
    }
}

impl MetricsSource for AutoscalerView {
    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let now = self.0.now();
        let step = self.0.lock();
        metrics::single_gauge(
            e,
            "ebbtide_autoscaler_desired_backends",
            "Backends the autoscaler wants now.",
            u64::from(step.desired()),
        )?;
        let mut f = metrics::counter(
            e,
            "ebbtide_autoscaler_decisions_total",
            "Decisions taken, by direction.",
        )?;
        for d in [Direction::Up, Direction::Down, Direction::Hold] {
            let n = step.events().map_or(0, |log| log.decisions_total(d));
            metrics::sample(&mut f, &[("direction", d.name())], n)?;
        }
        if let Some(planner) = step.kind_planner() {
            let mut f = metrics::gauge(
                e,
                "ebbtide_autoscaler_backends",
                "Backends the autoscaler manages, by instance kind and state.",
            )?;
            let members = step.members().kinded();
            for k in planner.kinds() {
                for state in [
                    ebbtide_autoscaler::BackendState::Starting,
                    ebbtide_autoscaler::BackendState::Active,
                    ebbtide_autoscaler::BackendState::Draining,
                ] {
                    let n = members
                        .iter()
                        .filter(|m| m.kind == Some(k.name.as_str()) && m.state == state)
                        .count();
                    metrics::gauge_sample(
                        &mut f,
                        &[("kind", k.name.as_str()), ("state", state.name())],
                        n as u64,
                    )?;
                }
            }
        }
        metrics::single_counter(
            e,
            "ebbtide_autoscaler_backend_seconds_total",
            "Backend-seconds run so far.",
            step.meter().backend_seconds(now),
        )?;
        metrics::single_counter(
            e,
            "ebbtide_autoscaler_cost_total",
            "Accumulated cost of the backends (whole billing periods, in the price's currency).",
            step.meter().cost(now),
        )
    }
}
