//! The cost of a `/metrics` scrape with 50 backends: the exposition as `prometheus-client`
//! writes it from the proxy's atomics (`metrics::encode`), beside the hand-written writer it
//! replaced (kept here, reading the same numbers through the public API, as the baseline).
//! Scrape time only: the request path records into the same atomics either way.

use criterion::{criterion_group, criterion_main, Criterion};
use ebbtide_balancer::clock::Clock;
use ebbtide_balancer::dispatch::Dispatcher;
use ebbtide_balancer::metrics::{self, MetricsSource};
use ebbtide_balancer::proxy::{Proxy, ProxySettings};
use ebbtide_balancer::registry::{BackendSpec, BackendState, Origin, Registry, RegistryConfig};
use ebbtide_balancer::signals::{SignalWindow, DEFAULT_WINDOW_NS};
use std::fmt::Write;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

fn proxy(backends: usize) -> Arc<Proxy> {
    let clock = Clock::new();
    let registry = Arc::new(Registry::new(RegistryConfig::defaults(), clock));
    for i in 0..backends {
        let (b, _) = registry
            .add_or_renew(
                BackendSpec {
                    address: format!("127.0.0.1:{}", 9000 + i),
                    capacity: Some(8),
                    weight: 1,
                    cost_per_hour: 0.05,
                    origin: Origin::Static,
                    lease_until: None,
                    slow_start: None,
                    transport: Default::default(),
                },
                BackendState::Active,
            )
            .unwrap();
        for (code, n) in [(200, 1000 + i), (404, 3), (503, 1)] {
            for _ in 0..n.min(5) {
                b.count_response(code);
            }
        }
    }
    let policy = ebbtide_balancer::policies::build(&Default::default()).into();
    let dispatcher = Arc::new(Dispatcher::new(
        registry.clone(),
        policy,
        1024,
        Duration::from_secs(5),
        clock,
    ));
    Arc::new(Proxy::new(
        registry,
        dispatcher,
        SignalWindow::new(DEFAULT_WINDOW_NS, clock.now()),
        ProxySettings::defaults(),
        clock,
    ))
}

/// The writer `/metrics` had before `prometheus-client` (same families, same lines).
fn hand_written(p: &Proxy, out: &mut String) {
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    let snap = p.registry().snapshot();
    family(out, "ebbtide_requests_total", "counter", "Responses.");
    for b in &snap.backends {
        for (code, n) in b.response_counts() {
            let _ = writeln!(
                out,
                "ebbtide_requests_total{{backend=\"{}\",code=\"{code}\"}} {n}",
                b.address
            );
        }
    }
    for code in [400, 405, 408, 409, 413, 414, 422, 501, 502, 503, 504] {
        let _ = writeln!(
            out,
            "ebbtide_requests_total{{backend=\"none\",code=\"{code}\"}} 0"
        );
    }
    family(
        out,
        "ebbtide_request_duration_seconds",
        "histogram",
        "Latency.",
    );
    for le in [
        "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
        "2.5", "5", "10", "30", "+Inf",
    ] {
        let _ = writeln!(
            out,
            "ebbtide_request_duration_seconds_bucket{{le=\"{le}\"}} 0"
        );
    }
    let _ = writeln!(out, "ebbtide_request_duration_seconds_sum 0");
    let _ = writeln!(out, "ebbtide_request_duration_seconds_count 0");
    family(out, "ebbtide_queue_depth", "gauge", "Queue.");
    let _ = writeln!(out, "ebbtide_queue_depth {}", p.dispatcher().queue_depth());
    family(out, "ebbtide_backend_in_flight", "gauge", "In flight.");
    for b in &snap.backends {
        let _ = writeln!(
            out,
            "ebbtide_backend_in_flight{{backend=\"{}\"}} {}",
            b.address,
            b.in_flight()
        );
    }
    family(out, "ebbtide_backends", "gauge", "Backends by state.");
    let counts = p.registry().count_by_state();
    for s in BackendState::ALL {
        let _ = writeln!(
            out,
            "ebbtide_backends{{state=\"{}\"}} {}",
            s.name(),
            counts[s as usize]
        );
    }
    for name in [
        "ebbtide_shed_total",
        "ebbtide_retries_total",
        "ebbtide_retries_refused_total",
        "ebbtide_idempotent_replays_total",
        "ebbtide_config_reloads_total",
    ] {
        family(out, name, "counter", "A counter.");
        let _ = writeln!(out, "{name} 0");
    }
    family(out, "ebbtide_backend_concurrency_limit", "gauge", "Limit.");
    for b in &snap.backends {
        if let Some(l) = b.effective_capacity() {
            let _ = writeln!(
                out,
                "ebbtide_backend_concurrency_limit{{backend=\"{}\"}} {l}",
                b.address
            );
        }
    }
}

fn bench_scrape(c: &mut Criterion) {
    let p = proxy(50);
    let sources: Vec<Arc<dyn MetricsSource>> = vec![p.clone()];
    let new = metrics::encode(&sources);
    let mut old = String::new();
    hand_written(&p, &mut old);
    eprintln!(
        "50 backends: prometheus-client {} lines, hand-written {} lines",
        new.lines().count(),
        old.lines().count()
    );
    let mut group = c.benchmark_group("scrape_50_backends");
    group.bench_function("prometheus_client", |b| {
        b.iter(|| black_box(metrics::encode(black_box(&sources))))
    });
    group.bench_function("hand_written", |b| {
        b.iter(|| {
            let mut out = String::with_capacity(4096);
            hand_written(black_box(&p), &mut out);
            black_box(out)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_scrape);
criterion_main!(benches);
