//! `GET /metrics`: the Prometheus text exposition (format 0.0.4), written by the Prometheus
//! project's Rust client (`prometheus-client`). The request path keeps its own atomics (the
//! registry's per-backend counters, [`crate::proxy::ProxyCounters`], the latency histogram): each
//! part of ebbtide is a [`MetricsSource`], a `prometheus-client` collector that reads them at
//! scrape time, so a request never touches the client's types.

use crate::cold_start::ColdStarts;
use crate::histogram::LatencyHistogram;
use crate::proxy::Proxy;
use crate::registry::BackendState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};

/// The `Content-Type` of what [`encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A part of ebbtide with metric families of its own (the proxy, the autoscaler, the admin
/// API), read at scrape time.
pub trait MetricsSource: Send + Sync {
    /// Encodes its families (see [`counter`], [`gauge`] and [`sample`]).
    fn encode(&self, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result;
}

/// A [`MetricsSource`] as `prometheus-client` collects it.
struct Source(Arc<dyn MetricsSource>);

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MetricsSource")
    }
}

impl Collector for Source {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        self.0.encode(&mut encoder)
    }
}

/// The text exposition of `sources`, in order.
pub fn encode(sources: &[Arc<dyn MetricsSource>]) -> String {
    let mut registry = Registry::default();
    for s in sources {
        registry.register_collector(Box::new(Source(s.clone())));
    }
    let mut out = String::with_capacity(8192);
    // Writing to a String cannot fail, and the sources only read atomics.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// Starts a counter family named `name` (which ends in `_total`, as the naming guide asks;
/// the client adds the suffix itself, so it is taken off here).
pub fn counter<'a>(
    encoder: &'a mut DescriptorEncoder<'_>,
    name: &'a str,
    help: &str,
) -> Result<MetricEncoder<'a>, fmt::Error> {
    let base = name.strip_suffix("_total").ok_or(fmt::Error)?;
    encoder.encode_descriptor(base, help, None, MetricType::Counter)
}

/// Starts a gauge family.
pub fn gauge<'a>(
    encoder: &'a mut DescriptorEncoder<'_>,
    name: &'a str,
    help: &str,
) -> Result<MetricEncoder<'a>, fmt::Error> {
    encoder.encode_descriptor(name, help, None, MetricType::Gauge)
}

/// One sample of a counter family started by [`counter`], with `labels`.
pub fn sample(
    family: &mut MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    value: u64,
) -> fmt::Result {
    family
        .encode_family(labels)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

/// One sample of a gauge family started by [`gauge`], with `labels`.
pub fn gauge_sample(
    family: &mut MetricEncoder<'_>,
    labels: &impl EncodeLabelSet,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    family.encode_family(labels)?.encode_gauge(&value)
}

/// A counter family with one unlabelled sample.
pub fn single_counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl EncodeCounterValue,
) -> fmt::Result {
    counter(encoder, name, help)?.encode_counter::<NoLabelSet, _, u64>(&value, None)
}

/// A gauge family with one unlabelled sample.
pub fn single_gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    gauge(encoder, name, help)?.encode_gauge(&value)
}

/// A histogram family from our own [`LatencyHistogram`] (the request path records into its
/// atomics; the client only writes the buckets out).
pub fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    h: &LatencyHistogram,
) -> fmt::Result {
    let snap = h.snapshot();
    encoder
        .encode_descriptor(name, help, None, MetricType::Histogram)?
        .encode_histogram::<NoLabelSet>(snap.sum_seconds, snap.count, &snap.buckets, None)
}

/// `ebbtide_cold_start_seconds`: one histogram per provider (none before the first cold start).
fn cold_starts(e: &mut DescriptorEncoder<'_>, h: &ColdStarts) -> fmt::Result {
    let mut f = e.encode_descriptor(
        "ebbtide_cold_start_seconds",
        "Time from the autoscaler's decision to launch a backend to the first request it served, by provider.",
        None,
        MetricType::Histogram,
    )?;
    for s in h.snapshot() {
        f.encode_family(&[("provider", s.provider.as_str())])?
            .encode_histogram::<NoLabelSet>(s.sum_seconds, s.count, &s.buckets, None)?;
    }
    Ok(())
}

impl MetricsSource for Proxy {
    /// Every metric of the proxy.
    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
        encode_proxy(self, e)
    }
}

fn encode_proxy(proxy: &Proxy, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
    let snap = proxy.registry.snapshot();

    let mut f = counter(e, "ebbtide_requests_total", "Responses sent to clients, by backend and status code (backend=\"none\": answered by ebbtide itself).")?;
    for b in &snap.backends {
        for (code, n) in b.response_counts() {
            sample(
                &mut f,
                &([("backend", b.address.as_str())], [("code", code)]),
                n,
            )?;
        }
    }
    for (code, n) in proxy.counters.local_counts() {
        sample(&mut f, &([("backend", "none")], [("code", code)]), n)?;
    }

    histogram(
        e,
        "ebbtide_request_duration_seconds",
        "Time from a request's arrival to the end of its response, as the client sees it.",
        &proxy.duration,
    )?;

    cold_starts(e, proxy.registry.cold_starts())?;

    single_gauge(
        e,
        "ebbtide_queue_depth",
        "Requests waiting in the balancer for a backend slot.",
        proxy.dispatcher.queue_depth() as u64,
    )?;

    let mut f = gauge(
        e,
        "ebbtide_backend_in_flight",
        "Requests sent to a backend and not yet finished.",
    )?;
    for b in &snap.backends {
        gauge_sample(&mut f, &[("backend", b.address.as_str())], b.in_flight())?;
    }

    let c = &proxy.counters;
    single_gauge(
        e,
        "ebbtide_tunnels_open",
        "Upgraded connections (WebSockets) open now; each also counts in its backend's in-flight requests.",
        c.tunnels_open.load(Ordering::Relaxed),
    )?;
    let mut f = counter(
        e,
        "ebbtide_tunnels_closed_total",
        "Tunnels ended, by reason: closed by both sides, error, idle timeout, going_away (backend drained or ebbtide stopping).",
    )?;
    for (reason, n) in c.tunnels_closed() {
        sample(&mut f, &[("reason", reason)], n)?;
    }

    let mut f = gauge(e, "ebbtide_backends", "Backends by state.")?;
    let counts = proxy.registry.count_by_state();
    for s in BackendState::ALL {
        gauge_sample(&mut f, &[("state", s.name())], counts[s as usize] as u64)?;
    }

    let mut f = counter(
        e,
        "ebbtide_shed_total",
        "Requests refused with 503 without reaching a backend, by reason.",
    )?;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    sample(
        &mut f,
        &[("reason", "queue_full")],
        load(&c.shed_queue_full),
    )?;
    sample(
        &mut f,
        &[("reason", "queue_timeout")],
        load(&c.shed_queue_timeout),
    )?;

    single_counter(
        e,
        "ebbtide_retries_total",
        "Requests sent again to another backend.",
        load(&c.retries),
    )?;
    single_counter(
        e,
        "ebbtide_retries_refused_total",
        "Retries the retry budget did not allow.",
        load(&c.retries_refused),
    )?;
    single_counter(
        e,
        "ebbtide_idempotent_replays_total",
        "Responses replayed for a duplicate Idempotency-Key.",
        load(&c.idempotent_replays),
    )?;

    let mut f = gauge(
        e,
        "ebbtide_backend_concurrency_limit",
        "Concurrency a backend may be given: its capacity, or the limit learnt from latency.",
    )?;
    for b in &snap.backends {
        if let Some(l) = b.effective_capacity() {
            gauge_sample(&mut f, &[("backend", b.address.as_str())], l)?;
        }
    }

    let mut f = counter(
        e,
        "ebbtide_config_reloads_total",
        "Config reloads (SIGHUP), applied or refused.",
    )?;
    sample(&mut f, &[("result", "ok")], load(&c.reloads_ok))?;
    sample(&mut f, &[("result", "error")], load(&c.reloads_failed))?;

    let mut f = counter(
        e,
        "ebbtide_client_connections_accepted_total",
        "Client connections accepted, by the worker thread that accepted and serves them \
         ([runtime] accept = \"per_worker\"), or \"shared\" (one listener).",
    )?;
    for (worker, n) in c.accepted() {
        sample(&mut f, &[("worker", worker)], n)?;
    }

    if let Some(log) = proxy.access_log() {
        single_counter(
            e,
            "ebbtide_access_log_dropped_total",
            "Access log lines dropped because the writer was behind (or failed to write).",
            log.dropped(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl MetricsSource for Fixed {
        fn encode(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
            let mut f = counter(e, "t_requests_total", "Help with \\ and\nnewline.")?;
            sample(&mut f, &([("backend", "a\"b")], [("code", 200u16)]), 3)?;
            single_gauge(e, "t_depth", "Depth.", 2.5f64)?;
            let h = LatencyHistogram::new();
            h.observe(1_000_000);
            h.observe(45_000_000_000);
            histogram(e, "t_seconds", "Latency.", &h)
        }
    }

    #[test]
    fn writes_the_prometheus_text_format() {
        let out = encode(&[Arc::new(Fixed)]);
        let expected = "# HELP t_requests_total Help with \\\\ and\\nnewline.\n\
            # TYPE t_requests_total counter\n\
            t_requests_total{backend=\"a\\\"b\",code=\"200\"} 3\n\
            # HELP t_depth Depth.\n\
            # TYPE t_depth gauge\n\
            t_depth 2.5\n\
            # HELP t_seconds Latency.\n\
            # TYPE t_seconds histogram\n";
        assert!(out.starts_with(expected), "{out}");
        // `le` labels as client_golang writes them (and as ebbtide always did): no trailing
        // ".0", cumulative counts, `+Inf` last and equal to `_count`.
        for line in [
            "t_seconds_bucket{le=\"0.0005\"} 0\n",
            "t_seconds_bucket{le=\"0.001\"} 1\n",
            "t_seconds_bucket{le=\"1\"} 1\n",
            "t_seconds_bucket{le=\"30\"} 1\n",
            "t_seconds_bucket{le=\"+Inf\"} 2\n",
            "t_seconds_count 2\n",
        ] {
            assert!(out.contains(line), "{line:?} missing from:\n{out}");
        }
        let sum: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("t_seconds_sum "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 45.001).abs() < 1e-9, "{sum}");
        assert_eq!(out.matches("_bucket").count(), 16);
    }

    struct Cold(ColdStarts);

    impl MetricsSource for Cold {
        fn encode(&self, e: &mut DescriptorEncoder<'_>) -> fmt::Result {
            cold_starts(e, &self.0)
        }
    }

    #[test]
    fn cold_starts_are_one_histogram_series_per_provider() {
        let c = Cold(ColdStarts::new());
        let empty = encode(&[Arc::new(Cold(ColdStarts::new()))]);
        assert!(
            empty.contains("# TYPE ebbtide_cold_start_seconds histogram\n")
                && !empty.contains("_count"),
            "{empty}"
        );
        c.0.observe("docker", 1_500_000_000);
        c.0.observe("docker", 4_000_000_000);
        c.0.observe("local", 200_000_000);
        let out = encode(&[Arc::new(c)]);
        for line in [
            "ebbtide_cold_start_seconds_bucket{provider=\"docker\",le=\"1\"} 0\n",
            "ebbtide_cold_start_seconds_bucket{provider=\"docker\",le=\"2.5\"} 1\n",
            "ebbtide_cold_start_seconds_bucket{provider=\"docker\",le=\"5\"} 2\n",
            "ebbtide_cold_start_seconds_bucket{provider=\"docker\",le=\"+Inf\"} 2\n",
            "ebbtide_cold_start_seconds_count{provider=\"docker\"} 2\n",
            "ebbtide_cold_start_seconds_sum{provider=\"docker\"} 5.5\n",
            "ebbtide_cold_start_seconds_count{provider=\"local\"} 1\n",
        ] {
            assert!(out.contains(line), "{line:?} missing from:\n{out}");
        }
    }
}
