//! Tests of the parent module, kept in their own file so the rule reads on one screen.

use super::*;
use std::sync::{Arc, Barrier};

const MS: u64 = 1_000_000;
const S: u64 = NANOS_PER_SEC;

/// The stated precision: half a bucket, at most 1/32 of the bucket's lower bound.
const REL_PRECISION: f64 = 1.0 / 32.0;

fn assert_close(actual: f64, expected: f64, rel: f64, what: &str) {
    let err = (actual - expected).abs() / expected.abs().max(f64::MIN_POSITIVE);
    assert!(
        err <= rel,
        "{what}: got {actual}, expected {expected} (relative error {err:.4} > {rel})"
    );
}

#[test]
fn bucket_index_is_contiguous_monotonic_and_bounds_hold() {
    assert_eq!(BUCKETS, 464);
    for i in 0..BUCKETS {
        let (low, high) = bucket_bounds_ns(i);
        assert!(low < high);
        assert_eq!(bucket_index(low), i, "lower bound of bucket {i}");
        assert_eq!(bucket_index(high - 1), i, "upper edge of bucket {i}");
        if i + 1 < BUCKETS {
            assert_eq!(
                bucket_bounds_ns(i + 1).0,
                high,
                "bucket {i} is followed without gap"
            );
        }
        if low >= 1024 {
            // 1/16 of an octave: width / low <= 1/16.
            assert!(
                (high - low) * 16 <= low,
                "bucket {i} [{low}, {high}) too wide"
            );
        }
    }
    assert_eq!(bucket_index(0), 0);
    assert_eq!(bucket_index(u64::MAX), BUCKETS - 1);
    // 100 s still has its own bucket below the clamp.
    assert!(bucket_index(100 * S) < BUCKETS - 1);
}

#[test]
fn midpoints_are_within_stated_precision_across_the_range() {
    // Every value from 1 µs to 100 s (log-spaced) is reported within 1/32 relative error.
    let mut v = 1_000u64;
    while v <= 100 * S {
        let (low, high) = bucket_bounds_ns(bucket_index(v));
        let mid = (low + high) as f64 / 2.0;
        assert_close(mid, v as f64, REL_PRECISION, "midpoint");
        v += v / 37 + 1;
    }
}

#[test]
fn steady_rate_then_silence() {
    // 100 arrivals/s (and as many completions, and 1 shed/s) for 30 virtual seconds.
    let w = SignalWindow::new(DEFAULT_WINDOW_NS, 0);
    let step = S / 100;
    let mut now = 0;
    let mut mid_slot = None;
    while now < 30 * S {
        if now == 30 * S - S / 4 {
            // Mid-slot (29.75 s, before that instant's events): the window covers 9.75 s.
            mid_slot = Some(w.snapshot(now));
        }
        w.record_arrival(now);
        w.record_completion(2 * MS, None, now);
        if now % S == 0 {
            w.record_shed(now);
        }
        now += step;
    }
    let s = w.snapshot(30 * S);
    assert_eq!(s.window_seconds, 10.0);
    // The current slot has just begun: the window covers 19 whole slots = 9.5 s.
    assert_eq!(s.span_seconds, 9.5);
    assert_eq!(s.arrivals, 950);
    assert_close(s.arrival_rate, 100.0, 1e-9, "arrival rate");
    assert_close(s.completion_rate, 100.0, 1e-9, "completion rate");
    assert_eq!(s.shed, 9); // at 21 s .. 29 s
    assert_close(s.latency_ms.mean, 2.0, 1e-9, "mean");
    assert_close(s.latency_ms.p99, 2.0, REL_PRECISION, "p99");

    // Mid-slot, the rate is still exact.
    let m = mid_slot.expect("29.75 s is on the 10 ms grid");
    assert_eq!(m.span_seconds, 9.75);
    assert_eq!(m.arrivals, 975);
    assert_close(m.arrival_rate, 100.0, 1e-9, "mid-slot arrival rate");

    // After 10 s of silence everything has left the window.
    let s = w.snapshot(40 * S);
    assert_eq!((s.arrivals, s.completions, s.shed), (0, 0, 0));
    assert_eq!(s.arrival_rate, 0.0);
    assert_eq!(s.completion_rate, 0.0);
    assert_eq!(s.latency_ms.p50, 0.0);
    assert_eq!(s.latency_ms.mean, 0.0);
}

#[test]
fn young_window_rates_use_elapsed_time() {
    // Created at t = 100 s; 50 arrivals/s for 2 s: the rate is 50/s, not 10/s.
    let t0 = 100 * S;
    let w = SignalWindow::new(DEFAULT_WINDOW_NS, t0);
    for i in 0..100 {
        w.record_arrival(t0 + i * (S / 50));
    }
    let s = w.snapshot(t0 + 2 * S);
    assert_eq!(s.arrivals, 100);
    assert_eq!(s.span_seconds, 2.0);
    assert_close(s.arrival_rate, 50.0, 1e-9, "young rate");
    // At the creation instant there is no span, hence no rate.
    assert_eq!(w.snapshot(t0).arrival_rate, 0.0);
}

#[test]
fn percentiles_of_a_uniform_distribution() {
    let w = SignalWindow::new(DEFAULT_WINDOW_NS, 0);
    let now = 5 * S;
    for us in 1..=10_000u64 {
        w.record_completion(us * 1_000, None, now);
    }
    let s = w.snapshot(now);
    assert_eq!(s.completions, 10_000);
    assert_close(s.latency_ms.p50, 5.0, REL_PRECISION, "p50");
    assert_close(s.latency_ms.p90, 9.0, REL_PRECISION, "p90");
    assert_close(s.latency_ms.p99, 9.9, REL_PRECISION, "p99");
    assert_close(s.latency_ms.mean, 5.0005, 1e-12, "mean");
    assert!(s.latency_ms.p50 < s.latency_ms.p90 && s.latency_ms.p90 < s.latency_ms.p99);
}

#[test]
fn percentiles_merge_slots_and_cover_the_tails() {
    // 995 fast requests (300 µs) in one slot, 5 slow ones (3 s) in another: p50 and p99 are
    // fast; with 10 more slow ones (15 of 1010, more than 1%) p99 is slow and p90 still fast.
    let w = SignalWindow::new(DEFAULT_WINDOW_NS, 0);
    for i in 0..995 {
        w.record_completion(300_000, None, S + i);
    }
    for _ in 0..5 {
        w.record_completion(3 * S, None, 4 * S);
    }
    let s = w.snapshot(5 * S);
    assert_close(s.latency_ms.p50, 0.3, REL_PRECISION, "p50");
    assert_close(s.latency_ms.p99, 0.3, REL_PRECISION, "p99");
    for _ in 0..10 {
        w.record_completion(3 * S, None, 4 * S);
    }
    let s = w.snapshot(5 * S);
    assert_close(s.latency_ms.p90, 0.3, REL_PRECISION, "p90 with 15 slow");
    assert_close(s.latency_ms.p99, 3000.0, REL_PRECISION, "p99 with 15 slow");
    // Sub-microsecond latencies are reported within ±16 ns.
    let w = SignalWindow::new(DEFAULT_WINDOW_NS, 0);
    w.record_completion(500, None, S);
    let p50_ns = w.snapshot(S).latency_ms.p50 * 1e6;
    assert!(
        (p50_ns - 500.0).abs() <= 16.0,
        "p50 of 500 ns was {p50_ns} ns"
    );
}

#[test]
fn old_slots_expire() {
    let w = SignalWindow::new(DEFAULT_WINDOW_NS, 0);
    // A burst at t = 5 s, one arrival at t = 18 s, snapshot at t = 20 s: the burst is 15 s old.
    for _ in 0..1_000 {
        w.record_arrival(5 * S);
        w.record_completion(50 * MS, None, 5 * S);
    }
    w.record_arrival(18 * S);
    let at_14 = w.snapshot(14 * S + S / 10);
    assert_eq!(
        at_14.arrivals, 1_000,
        "the burst is still in the window at 14.1 s"
    );
    let s = w.snapshot(20 * S);
    assert_eq!(s.arrivals, 1);
    assert_eq!(s.completions, 0);
    assert_eq!(s.latency_ms.p99, 0.0);
    // Just inside and just outside the window edge (slot granularity 0.5 s).
    assert_eq!(w.snapshot(15 * S - 1).arrivals, 1_000);
    assert_eq!(w.snapshot(15 * S + S / 2).arrivals, 0);
}

#[test]
fn recycled_slot_starts_from_zero() {
    // Slot 0 holds epoch 0; a window later (epoch 20, same slot) it must not keep old counts.
    let w = SignalWindow::new(DEFAULT_WINDOW_NS, 0);
    for _ in 0..7 {
        w.record_arrival(0);
        w.record_shed(0);
        w.record_completion(MS, None, 0);
    }
    w.record_arrival(10 * S);
    let s = w.snapshot(10 * S);
    assert_eq!((s.arrivals, s.shed, s.completions), (1, 0, 0));
    // An event whose time is a whole window behind the slot's contents is dropped.
    w.record_arrival(0);
    assert_eq!(w.snapshot(10 * S).arrivals, 1);
}

#[test]
fn shed_counting() {
    let w = SignalWindow::new(DEFAULT_WINDOW_NS, 0);
    for i in 0..30 {
        w.record_arrival(i * 100 * MS);
        if i % 3 == 0 {
            w.record_shed(i * 100 * MS);
        } else {
            w.record_completion(10 * MS, None, i * 100 * MS);
        }
    }
    let s = w.snapshot(3 * S);
    assert_eq!(s.arrivals, 30);
    assert_eq!(s.shed, 10);
    assert_eq!(s.completions, 20);
    assert_eq!(w.snapshot(20 * S).shed, 0);
}

#[test]
fn a_gap_longer_than_the_window_resets_everything() {
    let w = SignalWindow::new(DEFAULT_WINDOW_NS, 0);
    for slot in 0..SLOTS as u64 {
        let t = slot * (S / 2);
        w.record_arrival(t);
        w.record_shed(t);
        w.record_completion(S, None, t);
    }
    assert_eq!(w.snapshot(10 * S - 1).arrivals, SLOTS as u64);
    // One hour later, one event: only it is in the window, in every counter.
    let later = 3_600 * S + 123;
    w.record_arrival(later);
    w.record_completion(MS, None, later);
    let s = w.snapshot(later + S);
    assert_eq!((s.arrivals, s.completions, s.shed), (1, 1, 0));
    assert_close(s.latency_ms.p99, 1.0, REL_PRECISION, "p99 after the gap");
    assert_close(s.latency_ms.mean, 1.0, 1e-12, "mean after the gap");
    // 123 ns into a slot: 19 whole slots plus 123 ns.
    assert_close(s.span_seconds, 9.5 + 123e-9, 1e-12, "span after the gap");
}

#[test]
fn custom_window_width() {
    let w = SignalWindow::new(2 * S, 0);
    assert_eq!(w.window_ns(), 2 * S);
    w.record_arrival(S);
    assert_eq!(w.snapshot(2 * S).arrivals, 1);
    assert_eq!(w.snapshot(3 * S + S / 10).arrivals, 0);
    assert_eq!(w.snapshot(3 * S).window_seconds, 2.0);
    // Absurdly small windows are widened, not divided by zero.
    let tiny = SignalWindow::new(0, 0);
    assert_eq!(tiny.window_ns(), MIN_WINDOW_NS);
    tiny.record_arrival(5);
    assert_eq!(tiny.snapshot(5).arrivals, 1);
}

#[test]
fn concurrent_recording_loses_nothing_in_one_slot() {
    const THREADS: usize = 4;
    const PER_THREAD: u64 = 50_000;
    let w = Arc::new(SignalWindow::new(DEFAULT_WINDOW_NS, 0));
    let now = 3 * S + 1;
    std::thread::scope(|scope| {
        for t in 0..THREADS as u64 {
            let w = &w;
            scope.spawn(move || {
                for i in 0..PER_THREAD {
                    w.record_arrival(now);
                    w.record_completion((t * PER_THREAD + i) % 1_000 * 1_000 + 1_000, None, now);
                    if i % 10 == 0 {
                        w.record_shed(now);
                    }
                }
            });
        }
    });
    let s = w.snapshot(now);
    let n = THREADS as u64 * PER_THREAD;
    assert_eq!(s.arrivals, n);
    assert_eq!(s.completions, n);
    assert_eq!(s.shed, n / 10);
    let buckets: u64 = w.slots[6]
        .buckets
        .iter()
        .map(|b| u64::from(b.load(Ordering::Relaxed)))
        .sum();
    assert_eq!(buckets, n, "every completion is in the histogram");
}

#[test]
fn concurrent_recycling_loses_no_new_counts() {
    // Fill epoch 1 (slot 1), then 4 threads start together in epoch 21 (slot 1 again): all of
    // them find the slot stale at once and race to recycle it. Exactly the new counts remain.
    const THREADS: usize = 4;
    const PER_THREAD: u64 = 20_000;
    let w = SignalWindow::new(DEFAULT_WINDOW_NS, 0);
    let old = S / 2 + 7;
    for _ in 0..12_345 {
        w.record_arrival(old);
        w.record_completion(7 * MS, None, old);
    }
    let now = old + 10 * S;
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                barrier.wait();
                for _ in 0..PER_THREAD {
                    w.record_arrival(now);
                    w.record_completion(MS, None, now);
                }
            });
        }
    });
    let s = w.snapshot(now);
    let n = THREADS as u64 * PER_THREAD;
    assert_eq!(s.arrivals, n);
    assert_eq!(s.completions, n);
    assert_close(
        s.latency_ms.mean,
        1.0,
        1e-12,
        "no 7 ms leftovers in the mean",
    );
    assert_close(
        s.latency_ms.p99,
        1.0,
        REL_PRECISION,
        "no 7 ms leftovers in the buckets",
    );
}

#[test]
fn snapshot_serializes_with_the_documented_fields() {
    let w = SignalWindow::new(DEFAULT_WINDOW_NS, 0);
    w.record_arrival(S);
    w.record_completion(4 * MS, None, S);
    let json = serde_json::to_value(w.snapshot(2 * S)).unwrap();
    for key in [
        "window_seconds",
        "span_seconds",
        "arrival_rate",
        "completion_rate",
        "arrivals",
        "completions",
        "shed",
    ] {
        assert!(json.get(key).is_some(), "missing {key} in {json}");
    }
    for key in ["p50", "p90", "p99", "mean"] {
        assert!(
            json["latency_ms"][key].is_f64(),
            "latency_ms.{key} in {json}"
        );
    }
    assert_eq!(json["arrivals"], 1);
    assert_eq!(json["arrival_rate"], 0.5);
}

#[test]
fn the_time_at_backends_is_averaged_over_the_completions_a_backend_answered() {
    let w = SignalWindow::new(DEFAULT_WINDOW_NS, 0);
    // 30 ms at the backend, sent at once; 30 ms at the backend after 100 ms in the queue; and a
    // 503 of the balancer's own after 5 ms, which no backend answered.
    w.record_completion(30 * MS, Some(30 * MS), S);
    w.record_completion(130 * MS, Some(30 * MS), S);
    w.record_completion(5 * MS, None, S);
    let s = w.snapshot(2 * S);
    assert_eq!(s.completions, 3);
    assert_close(s.latency_ms.mean, 55.0, 1e-9, "mean latency, all three");
    assert_close(s.backend_ms, 30.0, 1e-9, "mean time at backends, two");
    // Gone with its slot, like the latency.
    let later = w.snapshot(20 * S);
    assert_eq!((later.completions, later.backend_ms), (0, 0.0));
    w.record_completion(10 * MS, None, 21 * S);
    assert_eq!(
        w.snapshot(21 * S + 1).backend_ms,
        0.0,
        "none answered by a backend"
    );
}
