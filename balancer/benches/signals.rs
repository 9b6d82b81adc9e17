//! The per-request cost of the signals on the proxy's hot path: `SignalWindow::record_arrival` +
//! `record_completion` (one update), alone and with two threads contending on the same slot, and
//! `LatencyHistogram::observe`. Time advances 1 µs per update, so slots rotate (and get recycled)
//! as they would at 1 M requests/s, and the recycling cost is included, amortized.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ebbtide_balancer::histogram::LatencyHistogram;
use ebbtide_balancer::signals::{SignalWindow, DEFAULT_WINDOW_NS};

/// Spread of latencies fed in: 0 to ~65 ms, so updates land in many histogram buckets.
fn latency(i: u64) -> u64 {
    (i.wrapping_mul(0x9E37_79B9) & 0xFFFF) * 1_000
}

/// `iters` updates at times base, base + 1 µs, ... (arrival then completion).
fn updates(w: &SignalWindow, base: u64, iters: u64) {
    for i in 0..iters {
        let now = base + i * 1_000;
        w.record_arrival(black_box(now));
        w.record_completion(black_box(latency(i)), None, black_box(now));
    }
}

fn bench_window(c: &mut Criterion) {
    let mut group = c.benchmark_group("signal_window");

    group.bench_function("update_1_thread", |b| {
        let w = SignalWindow::new(DEFAULT_WINDOW_NS, 0);
        let mut base = 0u64;
        b.iter_custom(|iters| {
            let start = Instant::now();
            updates(&w, base, iters);
            base += iters * 1_000;
            start.elapsed()
        });
    });

    // Two threads run the same timeline at once, so they hit the same slot and the same cache
    // lines. Reported time is wall time per update per thread (throughput is twice the inverse).
    // Each sample spawns the two threads; criterion's large iteration counts amortize that.
    group.bench_function("update_2_threads_contended", |b| {
        let w = SignalWindow::new(DEFAULT_WINDOW_NS, 0);
        let mut base = 0u64;
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| updates(&w, base, iters));
                }
            });
            base += iters * 1_000;
            start.elapsed()
        });
    });

    group.bench_function("snapshot", |b| {
        let w = SignalWindow::new(DEFAULT_WINDOW_NS, 0);
        updates(&w, 0, 20_000_000);
        b.iter(|| black_box(w.snapshot(black_box(19_999_999_000))));
    });

    group.finish();
}

fn bench_histogram(c: &mut Criterion) {
    let h = LatencyHistogram::new();
    let mut i = 0u64;
    c.bench_function("latency_histogram_observe", |b| {
        b.iter(|| {
            i += 1;
            h.observe(black_box(latency(i)));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2));
    targets = bench_window, bench_histogram
}
criterion_main!(benches);
