//! The one conversion from the admin API's signals snapshot to the autoscaler's [`Reading`],
//! shared by the in-process balancer and the remote ones (the autoscaler crate knows nothing of
//! the balancer's wire format, and the balancer nothing of the autoscaler).

use ebbtide_autoscaler::Reading;
use ebbtide_balancer::api;

/// What the autoscaler reads from one balancer's `GET /api/v1/signals`.
pub(crate) fn from_signals(s: &api::Signals) -> Reading {
    Reading {
        arrivals_total: s.arrivals_total,
        completions_total: s.completions_total,
        in_flight: s.in_flight,
        queue_depth: s.queue_depth,
        window_completions: s.completions,
        p99_ms: s.latency_ms.p99,
        mean_ms: s.latency_ms.mean,
        backend_ms: s.backend_ms,
        active_backends: s.backends.active,
    }
}
