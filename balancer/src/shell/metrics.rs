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

/// Starts a metric family: its `# HELP` and `# TYPE` lines (`kind`: counter, gauge, histogram).
pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

impl MetricsSource for Proxy {
    /// Every metric of the proxy.
    fn render(&self, out: &mut String) {
        render_proxy(self, out)
    }
}

fn render_proxy(proxy: &Proxy, out: &mut String) {
    let snap = proxy.registry.snapshot();

    family(out, "ebbtide_requests_total", "counter", "Responses sent to clients, by backend and status code (backend=\"none\": answered by ebbtide itself).");
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
        out,
    );

    family(
        out,
        "ebbtide_queue_depth",
        "gauge",
        "Requests waiting in the balancer for a backend slot.",
    );
    let _ = writeln!(
        out,
        "ebbtide_queue_depth {}",
        proxy.dispatcher.queue_depth()
    );

    family(
        out,
        "ebbtide_backend_in_flight",
        "gauge",
        "Requests sent to a backend and not yet finished.",
    );
    for b in &snap.backends {
        let _ = writeln!(
            out,
            "ebbtide_backend_in_flight{{backend=\"{}\"}} {}",
            b.address,
            b.in_flight()
        );
    }

    family(
        out,
        "ebbtide_tunnels_open",
        "gauge",
        "Upgraded connections (WebSockets) open now; each also counts in its backend's in-flight requests.",
    );
    let c = &proxy.counters;
    let _ = writeln!(
        out,
        "ebbtide_tunnels_open {}",
        c.tunnels_open.load(Ordering::Relaxed)
    );
    family(
        out,
        "ebbtide_tunnels_closed_total",
        "counter",
        "Tunnels ended, by reason: closed by both sides, error, idle timeout, going_away (backend drained or ebbtide stopping).",
    );
    for (reason, n) in c.tunnels_closed() {
        let _ = writeln!(
            out,
            "ebbtide_tunnels_closed_total{{reason=\"{reason}\"}} {n}"
        );
    }

    family(out, "ebbtide_backends", "gauge", "Backends by state.");
    let counts = proxy.registry.count_by_state();
    for s in BackendState::ALL {
        let _ = writeln!(
            out,
            "ebbtide_backends{{state=\"{}\"}} {}",
            s.name(),
            counts[s as usize]
        );
    }

    family(
        out,
        "ebbtide_shed_total",
        "counter",
        "Requests refused with 503 without reaching a backend, by reason.",
    );
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

    family(
        out,
        "ebbtide_retries_total",
        "counter",
        "Requests sent again to another backend.",
    );
    let _ = writeln!(
        out,
        "ebbtide_retries_total {}",
        c.retries.load(Ordering::Relaxed)
    );

    family(
        out,
        "ebbtide_retries_refused_total",
        "counter",
        "Retries the retry budget did not allow.",
    );
    let _ = writeln!(
        out,
        "ebbtide_retries_refused_total {}",
        c.retries_refused.load(Ordering::Relaxed)
    );

    family(
        out,
        "ebbtide_idempotent_replays_total",
        "counter",
        "Responses replayed for a duplicate Idempotency-Key.",
    );
    let _ = writeln!(
        out,
        "ebbtide_idempotent_replays_total {}",
        c.idempotent_replays.load(Ordering::Relaxed)
    );

    family(
        out,
        "ebbtide_backend_concurrency_limit",
        "gauge",
        "Concurrency a backend may be given: its capacity, or the limit learnt from latency.",
    );
    for b in &snap.backends {
        if let Some(l) = b.effective_capacity() {
            let _ = writeln!(
                out,
                "ebbtide_backend_concurrency_limit{{backend=\"{}\"}} {l}",
                b.address
            );
        }
    }

    family(
        out,
        "ebbtide_config_reloads_total",
        "counter",
        "Config reloads (SIGHUP), applied or refused.",
    );
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
}
