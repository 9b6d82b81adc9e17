//! `GET /metrics`: the Prometheus text exposition of the proxy's counters, gauges and histogram.

use crate::proxy::Proxy;
use crate::registry::BackendState;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Extra lines other parts (the autoscaler) append to `/metrics`.
pub trait MetricsSource: Send + Sync {
    /// Appends complete metric families in text format.
    fn render(&self, out: &mut String);
}

/// Renders every metric of the proxy, then the `extra` sources.
pub fn render(proxy: &Proxy, extra: &[std::sync::Arc<dyn MetricsSource>]) -> String {
    let mut out = String::with_capacity(4096);
    let snap = proxy.registry.snapshot();

    out.push_str("# HELP ebbtide_requests_total Responses sent to clients, by backend and status code (backend=\"none\": answered by ebbtide itself).\n");
    out.push_str("# TYPE ebbtide_requests_total counter\n");
    for b in &snap.backends {
        for (code, n) in b.response_counts() {
            let _ = writeln!(
                out,
                "ebbtide_requests_total{{backend=\"{}\",code=\"{code}\"}} {n}",
                b.address
            );
        }
    }
    for (code, n) in proxy.counters.local_counts() {
        let _ = writeln!(
            out,
            "ebbtide_requests_total{{backend=\"none\",code=\"{code}\"}} {n}"
        );
    }

    proxy.duration.render(
        "ebbtide_request_duration_seconds",
        "Time from a request's arrival to the end of its response, as the client sees it.",
        &mut out,
    );

    out.push_str(
        "# HELP ebbtide_queue_depth Requests waiting in the balancer for a backend slot.\n",
    );
    out.push_str("# TYPE ebbtide_queue_depth gauge\n");
    let _ = writeln!(
        out,
        "ebbtide_queue_depth {}",
        proxy.dispatcher.queue_depth()
    );

    out.push_str(
        "# HELP ebbtide_backend_in_flight Requests sent to a backend and not yet finished.\n",
    );
    out.push_str("# TYPE ebbtide_backend_in_flight gauge\n");
    for b in &snap.backends {
        let _ = writeln!(
            out,
            "ebbtide_backend_in_flight{{backend=\"{}\"}} {}",
            b.address,
            b.in_flight()
        );
    }

    out.push_str("# HELP ebbtide_backends Backends by state.\n");
    out.push_str("# TYPE ebbtide_backends gauge\n");
    let counts = proxy.registry.count_by_state();
    for s in BackendState::ALL {
        let _ = writeln!(
            out,
            "ebbtide_backends{{state=\"{}\"}} {}",
            s.name(),
            counts[s as usize]
        );
    }

    out.push_str("# HELP ebbtide_shed_total Requests refused with 503 without reaching a backend, by reason.\n");
    out.push_str("# TYPE ebbtide_shed_total counter\n");
    let c = &proxy.counters;
    let _ = writeln!(
        out,
        "ebbtide_shed_total{{reason=\"queue_full\"}} {}",
        c.shed_queue_full.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "ebbtide_shed_total{{reason=\"queue_timeout\"}} {}",
        c.shed_queue_timeout.load(Ordering::Relaxed)
    );

    out.push_str("# HELP ebbtide_retries_total Requests sent again to another backend.\n");
    out.push_str("# TYPE ebbtide_retries_total counter\n");
    let _ = writeln!(
        out,
        "ebbtide_retries_total {}",
        c.retries.load(Ordering::Relaxed)
    );

    out.push_str("# HELP ebbtide_retries_refused_total Retries the retry budget did not allow.\n");
    out.push_str("# TYPE ebbtide_retries_refused_total counter\n");
    let _ = writeln!(
        out,
        "ebbtide_retries_refused_total {}",
        c.retries_refused.load(Ordering::Relaxed)
    );

    out.push_str("# HELP ebbtide_idempotent_replays_total Responses replayed for a duplicate Idempotency-Key.\n");
    out.push_str("# TYPE ebbtide_idempotent_replays_total counter\n");
    let _ = writeln!(
        out,
        "ebbtide_idempotent_replays_total {}",
        c.idempotent_replays.load(Ordering::Relaxed)
    );

    out.push_str("# HELP ebbtide_backend_concurrency_limit Concurrency a backend may be given: its capacity, or the limit learnt from latency.\n");
    out.push_str("# TYPE ebbtide_backend_concurrency_limit gauge\n");
    for b in &snap.backends {
        if let Some(l) = b.effective_capacity() {
            let _ = writeln!(
                out,
                "ebbtide_backend_concurrency_limit{{backend=\"{}\"}} {l}",
                b.address
            );
        }
    }

    out.push_str(
        "# HELP ebbtide_config_reloads_total Config reloads (SIGHUP), applied or refused.\n",
    );
    out.push_str("# TYPE ebbtide_config_reloads_total counter\n");
    let _ = writeln!(
        out,
        "ebbtide_config_reloads_total{{result=\"ok\"}} {}",
        c.reloads_ok.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "ebbtide_config_reloads_total{{result=\"error\"}} {}",
        c.reloads_failed.load(Ordering::Relaxed)
    );

    for source in extra {
        source.render(&mut out);
    }
    out
}
