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
//! shed, 3 for a completion, 5 for one a backend answered). When a writer finds its slot holding an older epoch, it recycles the
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
    backend_sum_ns: AtomicU64,
    backend_count: AtomicU64,
    buckets: [AtomicU32; BUCKETS],
}

/// A plain copy of one slot's counters, used to recycle a slot and to build a snapshot.
struct Counts {
    arrivals: u64,
    completions: u64,
    shed: u64,
    latency_sum_ns: u64,
    backend_sum_ns: u64,
    backend_count: u64,
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
            backend_sum_ns: AtomicU64::new(0),
            backend_count: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    fn read(&self) -> Counts {
        Counts {
            arrivals: self.arrivals.load(Ordering::Relaxed),
            completions: self.completions.load(Ordering::Relaxed),
            shed: self.shed.load(Ordering::Relaxed),
            latency_sum_ns: self.latency_sum_ns.load(Ordering::Relaxed),
            backend_sum_ns: self.backend_sum_ns.load(Ordering::Relaxed),
            backend_count: self.backend_count.load(Ordering::Relaxed),
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
        self.backend_sum_ns
            .fetch_sub(old.backend_sum_ns, Ordering::Relaxed);
        self.backend_count
            .fetch_sub(old.backend_count, Ordering::Relaxed);
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
    /// The mean time at a backend (from the request sent to the response's end) of the
    /// window's completions that a backend answered, in milliseconds (0 with none): a service
    /// time without the balancer's own queueing in it, unlike `latency_ms.mean`.
    pub backend_ms: f64,
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
    /// latency to the window's histogram; `at_backend_ns` is the part of it from the request
    /// sent to a backend to the response's end (`None`: no backend answered it).
    #[inline]
    pub fn record_completion(&self, latency_ns: u64, at_backend_ns: Option<u64>, now: Nanos) {
        if let Some(slot) = self.slot(now) {
            slot.completions.fetch_add(1, Ordering::Relaxed);
            slot.latency_sum_ns.fetch_add(latency_ns, Ordering::Relaxed);
            if let Some(ns) = at_backend_ns {
                slot.backend_count.fetch_add(1, Ordering::Relaxed);
                slot.backend_sum_ns.fetch_add(ns, Ordering::Relaxed);
            }
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
        let (mut backend_sum_ns, mut backend_count) = (0u64, 0u64);
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
            backend_sum_ns = backend_sum_ns.wrapping_add(counts.backend_sum_ns);
            backend_count += counts.backend_count;
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
        let mean_ms = |sum_ns: u64, n: u64| {
            if n == 0 {
                0.0
            } else {
                sum_ns as f64 / n as f64 / 1e6
            }
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
                mean: mean_ms(latency_sum_ns, completions),
            },
            backend_ms: mean_ms(backend_sum_ns, backend_count),
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
mod tests;
