//! The per-request cost of the backend-lifecycle building blocks on the proxy's hot path:
//! `AdaptiveLimit::on_sample` (one response), `RetryBudget::deposit` (one request) and
//! `OutlierDetector::record_success` (one response), alone and with two threads contending on
//! the same instance. Time advances 1 µs per call, so the limiter closes a window every 100 000
//! samples and the budget applies its floor and leak once per 1 000 calls, as at 1 M requests/s;
//! those costs are included, amortized.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ebbtide_balancer::limit::{AdaptiveLimit, LimitConfig};
use ebbtide_balancer::outlier::{OutlierConfig, OutlierDetector};
use ebbtide_balancer::retry_budget::RetryBudget;

/// Latencies around 10 ms with some spread, so windows see varied samples.
fn rtt(i: u64) -> u64 {
    9_000_000 + (i.wrapping_mul(0x9E37_79B9) & 0x1F_FFFF)
}

/// `iters` samples at times base, base + 1 µs, ..., the backend at its limit.
fn samples(l: &AdaptiveLimit, base: u64, iters: u64) {
    for i in 0..iters {
        let now = base + i * 1_000;
        l.on_sample(
            black_box(rtt(i)),
            black_box(l.limit()),
            false,
            black_box(now),
        );
    }
}

fn deposits(b: &RetryBudget, base: u64, iters: u64) {
    for i in 0..iters {
        b.deposit(black_box(base + i * 1_000));
    }
}

fn successes(d: &OutlierDetector, base: u64, iters: u64) {
    for i in 0..iters {
        d.record_success(black_box(base + i * 1_000));
    }
}

/// Benchmarks `run` on one thread and on two threads sharing one instance (reported time is
/// wall time per call per thread). `make` builds a fresh instance per benchmark.
fn one_and_two<T: Sync>(
    c: &mut Criterion,
    name: &str,
    make: impl Fn() -> T,
    run: impl Fn(&T, u64, u64) + Sync,
) {
    let mut group = c.benchmark_group(name);
    group.bench_function("1_thread", |b| {
        let x = make();
        let mut base = 1_000_000_000u64;
        b.iter_custom(|iters| {
            let start = Instant::now();
            run(&x, base, iters);
            base += iters * 1_000;
            start.elapsed()
        });
    });
    group.bench_function("2_threads_contended", |b| {
        let x = make();
        let mut base = 1_000_000_000u64;
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| run(&x, base, iters));
                }
            });
            base += iters * 1_000;
            start.elapsed()
        });
    });
    group.finish();
}

fn bench_lifecycle(c: &mut Criterion) {
    one_and_two(
        c,
        "adaptive_limit_on_sample",
        || AdaptiveLimit::new(LimitConfig::default()),
        samples,
    );
    one_and_two(
        c,
        "retry_budget_deposit",
        || RetryBudget::new(0.2, 10.0, 0),
        deposits,
    );
    one_and_two(
        c,
        "outlier_record_success",
        || OutlierDetector::new(OutlierConfig::default()),
        successes,
    );
    let budget = RetryBudget::new(0.2, 10.0, 0);
    let mut now = 0u64;
    c.bench_function("retry_budget_deposit_and_withdraw", |b| {
        b.iter(|| {
            now += 1_000;
            budget.deposit(black_box(now));
            black_box(budget.try_withdraw(black_box(now)))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2));
    targets = bench_lifecycle
}
criterion_main!(benches);
