//! The sliding signal window behind `/api/v1/signals` and the autoscaler's inputs.
//!
//! [`SignalWindow`] counts arrivals, completions and sheds, and keeps a latency histogram, over
//! the last `window` of time (10 s by default). It is sans-IO: every call takes `now` in
//! [`Nanos`], so the proxy, the simulator and the tests drive the same code.
//!
//! # Layout
//!
//! The window is a ring of [`SLOTS`] time slots, each `window / SLOTS` wide. Absolute time is cut
//! into *epochs* of one slot width (`epoch = now / slot_width`), and epoch `e` lives in slot
//! `e % SLOTS`. Each slot carries the epoch it currently holds (its *tag*), plain atomic counters
//! and a log-linear latency histogram of `AtomicU32` buckets. A snapshot adds up the slots whose
//! tag lies in the last `SLOTS` epochs, so the window covers the `SLOTS - 1` previous whole slots
//! plus the elapsed part of the current one: between `window - window/SLOTS` and `window` of time.
//! Rates divide by exactly that span, so they are not biased by the slot granularity.
//!
//! # Hot path
//!
//! `record_*` take `&self`, allocate nothing and never wait for another thread: one `Acquire`
//! load of the tag, then one `Relaxed` `fetch_add` per counter touched (1 for an arrival or a
//! shed, 3 for a completion). When a writer finds its slot holding an older epoch, it recycles the
//! slot (the cold path, once per slot width):
//!
//! 1. read the old contents (counters and buckets) into a stack copy;
//! 2. CAS the tag from the old epoch to `new epoch | RESETTING`; only one writer wins, the
//!    losers re-read the tag and carry on;
//! 3. the winner subtracts the copy from every counter (`fetch_sub`, not `store(0)`), then
//!    stores the plain new tag.
//!
//! Because the copy was taken *before* the tag changed, it holds only old-epoch counts, and
//! subtracting it never removes a count that a new-epoch writer added in the meantime: writers of
//! the new epoch count straight away, even while the `RESETTING` bit is set. Tags only grow, so the
//! CAS cannot suffer ABA.
//!
//! # Accepted imprecision
//!
//! Counts are exact for writers whose `now` falls in the slot's current epoch. The races left are
//! all about threads whose `now` is a whole window out of date, or snapshots overlapping a reset:
//!
//! - a writer that read the old tag, was preempted, and increments after the reset began
//!   (between the copy and the subtraction) leaves its count in the new epoch: one old event
//!   counted one window late;
//! - an event whose epoch is older than the slot's tag (its `now` lags by a window or more), or
//!   that meets a reset in progress *for another epoch* (a recycler preempted for a whole
//!   window), is dropped;
//! - a snapshot skips a slot that is being recycled or that changed under it (seqlock-style tag
//!   re-check), so it may under-count the newest slot by the few events of that instant;
//! - counters are read one by one, not as one atomic picture, so a snapshot taken while
//!   completions are being recorded may see a completion's count without its histogram bucket.
//!
//! None of these matter for a signal that feeds rates and percentiles to an autoscaler.

use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use ebbtide_config::time::{Nanos, NANOS_PER_SEC};
use serde::{Deserialize, Serialize};

/// Number of time slots in the ring. 20 slots make the window slide in 5% steps (0.5 s for the
/// default 10 s) while keeping a snapshot cheap (20 x [`BUCKETS`] loads).
pub const SLOTS: usize = 20;

/// The default window width: 10 s, long enough to smooth per-request noise, short enough for an
/// autoscaler to react within seconds.
pub const DEFAULT_WINDOW_NS: Nanos = 10 * NANOS_PER_SEC;

/// The smallest window accepted (20 µs, i.e. 1 µs per slot). Narrower windows are widened to this,
/// which also keeps every epoch below the `RESETTING` bit.
pub const MIN_WINDOW_NS: Nanos = SLOTS as u64 * 1_000;

/// Latencies are bucketed in units of 2^5 = 32 ns, so the linear part of the histogram ends at
/// 1.024 µs, where the log part's 1/16-octave buckets become narrower than 32 ns would be.
const UNIT_SHIFT: u32 = 5;
/// 2^4 = 16 sub-buckets per power of two: buckets at most 1/16 (6.25%) of their lower bound wide.
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// The largest value (in units) with its own bucket; above it values land in the top bucket.
/// 2^32 units of 32 ns = 2^37 ns ≈ 137 s.
const MAX_UNITS: u64 = u32::MAX as u64;

/// Latency histogram buckets per slot: 32 linear ones (0 to 1.024 µs in 32 ns steps), then 16 per
/// octave up to ≈137 s. 464 x 4 bytes ≈ 1.8 KiB per slot, ≈37 KiB per window.
pub const BUCKETS: usize = bucket_index(MAX_UNITS << UNIT_SHIFT) + 1;

/// High bit of a slot's tag: set while the slot is being recycled for the epoch in the low bits.
const RESETTING: u64 = 1 << 63;

/// The bucket a latency in nanoseconds falls in. HDR-style log-linear: values below 2 x [`SUB`]
/// units are their own bucket; above, `e = msb - SUB_BITS` and the bucket is the top
/// `SUB_BITS + 1` bits of the value, offset so that indices are contiguous and monotonic.
#[inline]
const fn bucket_index(latency_ns: u64) -> usize {
    let mut v = latency_ns >> UNIT_SHIFT;
    if v > MAX_UNITS {
        v = MAX_UNITS;
    }
    if v < 2 * SUB {
        v as usize
    } else {
        let msb = 63 - v.leading_zeros();
        let e = msb - SUB_BITS;
        (SUB * e as u64 + (v >> e)) as usize
    }
}

/// The range `[low, high)` in nanoseconds that bucket `index` counts.
fn bucket_bounds_ns(index: usize) -> (u64, u64) {
    let index = index as u64;
    let (low, width) = if index < 2 * SUB {
        (index, 1)
    } else {
        let e = index / SUB - 1;
        ((index % SUB + SUB) << e, 1u64 << e)
    };
    (low << UNIT_SHIFT, (low + width) << UNIT_SHIFT)
}

/// One time slot: its epoch tag, counters and latency histogram. Aligned to a cache line so that
/// writers of adjacent slots (around a slot boundary) do not share one.
#[repr(align(64))]
struct Slot {
    tag: AtomicU64,
    arrivals: AtomicU64,
    completions: AtomicU64,
    shed: AtomicU64,
    latency_sum_ns: AtomicU64,
    buckets: [AtomicU32; BUCKETS],
}

/// A plain copy of one slot's counters, used to recycle a slot and to build a snapshot.
struct Counts {
    arrivals: u64,
    completions: u64,
    shed: u64,
    latency_sum_ns: u64,
    buckets: [u32; BUCKETS],
}

impl Slot {
    fn new() -> Self {
        Slot {
            tag: AtomicU64::new(0),
            arrivals: AtomicU64::new(0),
            completions: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            latency_sum_ns: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    fn read(&self) -> Counts {
        Counts {
            arrivals: self.arrivals.load(Ordering::Relaxed),
            completions: self.completions.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
            latency_sum_ns: self.latency_sum_ns.load(Ordering::Relaxed),
            buckets: std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed)),
        }
    }

    fn subtract(&self, old: &Counts) {
        self.arrivals.fetch_sub(old.arrivals, Ordering::Relaxed);
        self.completions
            .fetch_sub(old.completions, Ordering::Relaxed);
        self.shed.fetch_sub(old.shed, Ordering::Relaxed);
        self.latency_sum_ns
            .fetch_sub(old.latency_sum_ns, Ordering::Relaxed);
        for (bucket, &n) in self.buckets.iter().zip(old.buckets.iter()) {
            if n != 0 {
                bucket.fetch_sub(n, Ordering::Relaxed);
            }
        }
    }
}

/// A sliding window of per-request signals (arrivals, completions, sheds, latency percentiles),
/// shared by every connection task: recording is lock-free and O(1), a snapshot is
/// O([`SLOTS`] x [`BUCKETS`]). See the module docs for the layout and the accepted races.
pub struct SignalWindow {
    slots: Box<[Slot]>,
    window_ns: Nanos,
    slot_ns: Nanos,
    created: Nanos,
}

impl std::fmt::Debug for SignalWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalWindow")
            .field("window_ns", &self.window_ns)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

/// Latency percentiles and mean over the window, in milliseconds. All four are `0.0` when the
/// window holds no completion (check [`WindowSnapshot::completions`]): a plain number keeps the
/// JSON and the deciders simple, and "no traffic" is visible from the counts. Part of the admin
/// API's wire format ([`crate::api::Signals`]); the fields are in alphabetical order, the order
/// they had on the wire when it was assembled as a `serde_json` map.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Exact mean (from the sum of latencies, not from the buckets).
    pub mean: f64,
    /// Median, within the histogram's precision (±3.2% above 1 µs).
    pub p50: f64,
    /// 90th percentile, same precision.
    pub p90: f64,
    /// 99th percentile, same precision.
    pub p99: f64,
}

/// What the window held at one instant: plain data for `/api/v1/signals` and the deciders.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WindowSnapshot {
    /// The configured window width, in seconds.
    pub window_seconds: f64,
    /// The span of time the counts actually cover, in seconds: the window (minus the unelapsed
    /// part of the current slot), or less while the window is younger than that.
    pub span_seconds: f64,
    /// Arrivals per second over `span_seconds` (0 when the span is empty).
    pub arrival_rate: f64,
    /// Completions per second over `span_seconds` (0 when the span is empty).
    pub completion_rate: f64,
    /// Requests that arrived within the window.
    pub arrivals: u64,
    /// Requests that completed within the window (their latencies feed `latency_ms`).
    pub completions: u64,
    /// Requests shed (rejected by overload control) within the window.
    pub shed: u64,
    /// Latency over the window's completions, in milliseconds.
    pub latency_ms: LatencySummary,
}

impl SignalWindow {
    /// A window of `window_ns` (widened to [`MIN_WINDOW_NS`] if narrower; use
    /// [`DEFAULT_WINDOW_NS`] for the default), created at `now`: rates are computed over the time
    /// elapsed since `now` until the window has filled, so the first seconds are not under-reported.
    /// This is the only allocation the window makes.
    pub fn new(window_ns: Nanos, now: Nanos) -> Self {
        let window_ns = window_ns.max(MIN_WINDOW_NS);
        let slot_ns = window_ns / SLOTS as u64;
        SignalWindow {
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
            window_ns: slot_ns * SLOTS as u64,
            slot_ns,
            created: now,
        }
    }

    /// The window width in nanoseconds (the requested width rounded down to a multiple of
    /// [`SLOTS`] ns), for callers that report it.
    pub fn window_ns(&self) -> Nanos {
        self.window_ns
    }

    /// Counts a request arriving at the balancer at `now`.
    #[inline]
    pub fn record_arrival(&self, now: Nanos) {
        if let Some(slot) = self.slot(now) {
            slot.arrivals.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request completing at `now` after `latency_ns` (end to end), and adds its
    /// latency to the window's histogram.
    #[inline]
    pub fn record_completion(&self, latency_ns: u64, now: Nanos) {
        if let Some(slot) = self.slot(now) {
            slot.completions.fetch_add(1, Ordering::Relaxed);
            slot.latency_sum_ns.fetch_add(latency_ns, Ordering::Relaxed);
            slot.buckets[bucket_index(latency_ns)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request shed by overload control at `now`.
    #[inline]
    pub fn record_shed(&self, now: Nanos) {
        if let Some(slot) = self.slot(now) {
            slot.shed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The slot for `now`'s epoch, recycled first if it holds an older epoch; `None` when the
    /// event must be dropped (see the module docs).
    #[inline]
    fn slot(&self, now: Nanos) -> Option<&Slot> {
        let epoch = now / self.slot_ns;
        let slot = &self.slots[(epoch % SLOTS as u64) as usize];
        let tag = slot.tag.load(Ordering::Acquire);
        // A reset in progress *for this epoch* is fine to count into: see the module docs.
        if tag & !RESETTING == epoch {
            return Some(slot);
        }
        self.recycle(slot, tag, epoch)
    }

    #[cold]
    #[inline(never)]
    fn recycle<'a>(&self, slot: &'a Slot, mut tag: u64, epoch: u64) -> Option<&'a Slot> {
        loop {
            if tag & !RESETTING == epoch {
                return Some(slot);
            }
            if tag & RESETTING != 0 || tag > epoch {
                // Recycling for another epoch is under way, or the slot already holds a newer
                // epoch: this event is a window or more out of date. Drop it.
                return None;
            }
            let old = slot.read();
            match slot.tag.compare_exchange(
                tag,
                epoch | RESETTING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // Pairs with the snapshot's Acquire fence: a snapshot that sees any of the
                    // subtractions below also sees the RESETTING tag and skips the slot.
                    fence(Ordering::Release);
                    slot.subtract(&old);
                    // Only the winner changes a RESETTING tag, so a plain store is enough.
                    slot.tag.store(epoch, Ordering::Release);
                    return Some(slot);
                }
                Err(actual) => tag = actual,
            }
        }
    }

    /// The window's contents as seen at `now`: counts, rates over the covered span, and latency
    /// percentiles (from the merged histograms) and mean.
    pub fn snapshot(&self, now: Nanos) -> WindowSnapshot {
        let epoch = now / self.slot_ns;
        let oldest = (epoch + 1).saturating_sub(SLOTS as u64);
        let mut arrivals = 0u64;
        let mut completions = 0u64;
        let mut shed = 0u64;
        let mut latency_sum_ns = 0u64;
        let mut merged = [0u64; BUCKETS];
        for slot in self.slots.iter() {
            let tag = slot.tag.load(Ordering::Acquire);
            if tag & RESETTING != 0 || tag > epoch || tag < oldest {
                continue;
            }
            let counts = slot.read();
            fence(Ordering::Acquire);
            if slot.tag.load(Ordering::Relaxed) != tag {
                continue; // recycled under us: its contents belong to another epoch now
            }
            arrivals += counts.arrivals;
            completions += counts.completions;
            shed += counts.shed;
            latency_sum_ns = latency_sum_ns.wrapping_add(counts.latency_sum_ns);
            for (m, &n) in merged.iter_mut().zip(counts.buckets.iter()) {
                *m += u64::from(n);
            }
        }

        let start = self.created.max(oldest * self.slot_ns);
        let span_ns = now.saturating_sub(start);
        let per_second = |n: u64| {
            if span_ns == 0 {
                0.0
            } else {
                n as f64 * NANOS_PER_SEC as f64 / span_ns as f64
            }
        };
        let mean = if completions == 0 {
            0.0
        } else {
            latency_sum_ns as f64 / completions as f64 / 1e6
        };
        WindowSnapshot {
            window_seconds: self.window_ns as f64 / NANOS_PER_SEC as f64,
            span_seconds: span_ns as f64 / NANOS_PER_SEC as f64,
            arrival_rate: per_second(arrivals),
            completion_rate: per_second(completions),
            arrivals,
            completions,
            shed,
            latency_ms: LatencySummary {
                p50: percentile_ms(&merged, 0.50),
                p90: percentile_ms(&merged, 0.90),
                p99: percentile_ms(&merged, 0.99),
                mean,
            },
        }
    }
}

/// The `q` quantile of merged bucket counts, in milliseconds: the midpoint of the bucket holding
/// the `ceil(q * total)`-th smallest value (0 when empty).
fn percentile_ms(buckets: &[u64; BUCKETS], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    // The epsilon keeps 0.99 * 100 (= 99.00000000000001 in floating point) at rank 99.
    let rank = ((q * total as f64 - 1e-9).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let (low, high) = bucket_bounds_ns(i);
            return (low + high) as f64 / 2.0 / 1e6;
        }
    }
    unreachable!("rank is at most the total")
}

#[cfg(test)]
mod tests {
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
            w.record_completion(2 * MS, now);
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
            w.record_completion(us * 1_000, now);
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
            w.record_completion(300_000, S + i);
        }
        for _ in 0..5 {
            w.record_completion(3 * S, 4 * S);
        }
        let s = w.snapshot(5 * S);
        assert_close(s.latency_ms.p50, 0.3, REL_PRECISION, "p50");
        assert_close(s.latency_ms.p99, 0.3, REL_PRECISION, "p99");
        for _ in 0..10 {
            w.record_completion(3 * S, 4 * S);
        }
        let s = w.snapshot(5 * S);
        assert_close(s.latency_ms.p90, 0.3, REL_PRECISION, "p90 with 15 slow");
        assert_close(s.latency_ms.p99, 3000.0, REL_PRECISION, "p99 with 15 slow");
        // Sub-microsecond latencies are reported within ±16 ns.
        let w = SignalWindow::new(DEFAULT_WINDOW_NS, 0);
        w.record_completion(500, S);
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
            w.record_completion(50 * MS, 5 * S);
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
            w.record_completion(MS, 0);
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
                w.record_completion(10 * MS, i * 100 * MS);
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
            w.record_completion(S, t);
        }
        assert_eq!(w.snapshot(10 * S - 1).arrivals, SLOTS as u64);
        // One hour later, one event: only it is in the window, in every counter.
        let later = 3_600 * S + 123;
        w.record_arrival(later);
        w.record_completion(MS, later);
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
                        w.record_completion((t * PER_THREAD + i) % 1_000 * 1_000 + 1_000, now);
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
            w.record_completion(7 * MS, old);
        }
        let now = old + 10 * S;
        let barrier = Barrier::new(THREADS);
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                scope.spawn(|| {
                    barrier.wait();
                    for _ in 0..PER_THREAD {
                        w.record_arrival(now);
                        w.record_completion(MS, now);
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
        w.record_completion(4 * MS, S);
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
}
