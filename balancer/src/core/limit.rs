//! Adaptive concurrency limit: for a backend whose `capacity` is not configured, learn how many
//! concurrent requests it can take from the latency it answers with. A gradient controller in the
//! spirit of Envoy's adaptive concurrency filter (an explicitly measured unloaded latency) and
//! Netflix's concurrency-limits (gradient, square-root growth, no growth while app-limited), with
//! TCP-style multiplicative backoff on timeouts.
//!
//! # Behaviour (defaults in parentheses)
//!
//! Every finished request is one sample: its round-trip time, whether it was dropped (timeout,
//! reset, no answer; its RTT is then ignored), and how many requests were in flight at the backend
//! when it was sent, itself included. Samples are grouped into **windows** of at least `window`
//! (100 ms) and `min_window_samples` (10 samples); the limit changes only when a window closes.
//!
//! - **Only at the limit.** A window changes the limit only if the backend ran at its limit in
//!   it: some request in it was sent with at least 80% of the limit in flight. Otherwise the limit
//!   did not bind, there is no evidence either way, and it stays exactly where it is.
//! - **Baseline.** Latency is judged against the backend's *unloaded* latency: the mean RTT of
//!   `probe_samples` (50) requests sent with at most `probe_concurrency` (2) in flight. Light
//!   traffic provides such samples by itself (a passive measurement, at most one per window). A
//!   new measurement within 2x of the baseline is averaged with it (half and half, to cut noise);
//!   one further away replaces it (the backend changed).
//! - **Probes.** A backend kept busy gives no unloaded samples, so the limiter measures them: the
//!   limit drops to `probe_concurrency` until 50 unloaded samples are in (or 20 windows pass,
//!   then it uses what it has), then returns to its value before the probe. A probe starts in a
//!   window at the limit (without drops) when: there is no baseline yet; or the baseline is due
//!   for renewal, 7.5 s, 15 s and 30 s after the first three measurements and then every
//!   `probe_interval` (60 s), each plus up to 25% jitter so that a fleet does not probe in step;
//!   or 10 windows in a row have cut the limit on latency (the baseline may be stale). A probe
//!   costs that backend a dip of about 25 service times (50 samples, 2 at a time) after the
//!   requests in flight finish; a backend that is not at its limit is never probed.
//! - **Shrink on latency.** With `target = baseline x (1 + tolerance)` (tolerance 0.15) and `rtt`
//!   the window's mean RTT, `gradient = clamp(target / rtt, 0.5, 1)`. Below 1, the limit moves
//!   halfway (`smoothing` 0.5) to `limit x gradient`: at most -25% per window, e.g. 1000 to 20 in
//!   about 1.4 s. Past the knee latency grows in proportion to concurrency, so `limit x gradient`
//!   is where latency meets the target.
//! - **Back off on drops.** A window with a dropped request multiplies the limit by `backoff`
//!   (0.9), unsmoothed, whatever the latency: 1000 to 20 in about 3.7 s of timeouts.
//! - **Grow.** A window within the target grows the limit by `smoothing x sqrt(limit)`: +2.2 per
//!   window at 20, +5 at 100, +16 at 1000; from 20 to 100 in about 2.2 s and to 1000 in about 11 s
//!   of saturating traffic.
//! - **Where it settles.** On a backend whose latency is flat up to C concurrent requests and
//!   then grows linearly with queueing, the limit settles around `(1 + tolerance) x C`: 1.1-1.25 C
//!   with mildly variable service times, 1.0-1.3 C with exponential ones (measured by the tests).
//!   Service times whose spread is far above their mean (bimodal hit/miss mixes) make it noisy:
//!   configure `capacity` for such backends.
//! - **Floor and ceiling.** Always within `[min_limit, max_limit]` (1 and 1000), probes included
//!   (`probe_concurrency` is raised to `min_limit` if below); it starts at `initial_limit` (20).
//!   Without a baseline only drops move it.
//! - **Idle.** No samples, no windows: an idle backend keeps its limit indefinitely, neither
//!   growing nor decaying; light traffic keeps it too (and refreshes the baseline).
//!
//! [`AdaptiveLimit::limit`] is what the proxy enforces as the backend's capacity; during a probe
//! it returns `min(probe_concurrency, limit)`.
//!
//! # Concurrency
//!
//! Sans-IO (time is passed in). [`AdaptiveLimit::on_sample`] is lock-free on the common path: one
//! or two `fetch_add`s into packed (sum, count) accumulators, a load (rarely a `fetch_max`) for the
//! in-flight maximum, and a timestamp check. When a window is due, one caller takes a mutex with
//! `try_lock` (the others go on) and does the few dozen float operations of an update.
//! [`AdaptiveLimit::limit`] is one atomic load. Nothing allocates. A sample racing with a window
//! close may be counted in the next window; a window is an estimate and that does not matter.

use ebbtide_config::time::Nanos;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, TryLockError};

/// The limiter's parameters (see the module docs for what each does); `Default` is the
/// documented behaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitConfig {
    /// The limit never goes below this (default 1; 0 is taken as 1).
    pub min_limit: u32,
    /// The limit never goes above this (default 1000).
    pub max_limit: u32,
    /// The limit before any evidence (default 20).
    pub initial_limit: u32,
    /// Latency inflation over the unloaded baseline accepted before the limit shrinks (default
    /// 0.15: 15%). Larger: more queueing at the backend, less sensitivity to noise.
    pub tolerance: f64,
    /// Share of the computed change applied per window, in (0, 1] (default 0.5).
    pub smoothing: f64,
    /// Factor applied to the limit after a window with a dropped request, in (0, 1] (default 0.9).
    pub backoff: f64,
    /// Minimum length of a window (default 100 ms).
    pub window: Nanos,
    /// Minimum samples in a window; a window is extended until it has them (default 10, at
    /// most 1 000 000).
    pub min_window_samples: u32,
    /// A settled baseline older than this is re-measured by a probe when the backend is at its
    /// limit (default 60 s, plus up to 25% jitter; the first re-measurements come sooner).
    pub probe_interval: Nanos,
    /// Requests sent with at most this many in flight (themselves included) count as unloaded;
    /// also the limit during a probe (default 2; at least `min_limit`).
    pub probe_concurrency: u32,
    /// Unloaded samples averaged into one baseline measurement (default 50, at most 1 000 000).
    pub probe_samples: u32,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            min_limit: 1,
            max_limit: 1000,
            initial_limit: 20,
            tolerance: 0.15,
            smoothing: 0.5,
            backoff: 0.9,
            window: 100_000_000,
            min_window_samples: 10,
            probe_interval: 60_000_000_000,
            probe_concurrency: 2,
            probe_samples: 50,
        }
    }
}

impl LimitConfig {
    /// The same settings with out-of-range values pulled into range, so that the limiter never
    /// divides by zero or runs away.
    fn sanitized(mut self) -> Self {
        self.min_limit = self.min_limit.max(1);
        self.max_limit = self.max_limit.max(self.min_limit);
        self.initial_limit = self.initial_limit.clamp(self.min_limit, self.max_limit);
        if !(self.tolerance.is_finite() && self.tolerance >= 0.0) {
            self.tolerance = 0.0;
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            self.smoothing = 1.0;
        }
        if !(self.backoff > 0.0 && self.backoff <= 1.0) {
            self.backoff = 0.9;
        }
        self.window = self.window.max(1);
        // The packed accumulators count up to 2^24 samples.
        self.min_window_samples = self.min_window_samples.clamp(1, MAX_SAMPLES);
        self.probe_interval = self.probe_interval.max(1);
        // A probe must not break the floor, and samples at the floor must count as unloaded.
        self.probe_concurrency = self.probe_concurrency.max(self.min_limit);
        self.probe_samples = self.probe_samples.clamp(1, MAX_SAMPLES);
        self
    }
}

/// A window whose busiest request was sent with at least this share of the limit in flight
/// found the backend "at its limit".
const AT_LIMIT_SHARE: f64 = 0.8;
/// The gradient never cuts the limit by more than half in one window.
const MIN_GRADIENT: f64 = 0.5;
/// A probe that has not collected its samples after this many windows settles for those it has.
const PROBE_TIMEOUT_WINDOWS: u64 = 20;
/// This many windows in a row that cut the limit on latency make the next window at the limit
/// start a probe, whenever the last one was.
const SHRINK_STREAK_PROBE: u32 = 10;
/// A new baseline measurement within this factor of the old baseline is averaged with it...
const BASELINE_REPLACE_RATIO: f64 = 2.0;
/// ...with this weight; one further away replaces it.
const BASELINE_BLEND: f64 = 0.5;

/// Packed accumulators: count in the low bits, sum of RTTs in microseconds above.
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Sample-count settings are capped well below the accumulators' 2^24.
const MAX_SAMPLES: u32 = 1_000_000;
/// One sample's RTT is capped at ~35 minutes so that 2^24 samples cannot overflow the sum.
const MAX_RTT_US: u64 = (1 << 31) - 1;

#[inline]
fn pack(rtt_ns: u64) -> u64 {
    let us = (rtt_ns.saturating_add(500) / 1000).min(MAX_RTT_US);
    (us << COUNT_BITS) | 1
}

/// (mean RTT in microseconds, count) of a packed accumulator.
#[inline]
fn unpack(v: u64) -> (f64, u64) {
    let count = v & COUNT_MASK;
    let sum = v >> COUNT_BITS;
    if count == 0 {
        (0.0, 0)
    } else {
        (sum as f64 / count as f64, count)
    }
}

/// The SplitMix64 finalizer: turns sample noise into probe jitter.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What only window updates touch, under the mutex.
#[derive(Debug)]
struct State {
    /// The limit with its fraction (the published one is rounded).
    limit: f64,
    /// Unloaded mean RTT in microseconds.
    baseline_us: Option<f64>,
    probing: bool,
    probe_started: Nanos,
    /// The limit to return to when the probe ends.
    saved_limit: f64,
    /// A window at its limit from this time on starts a probe.
    next_probe_at: Nanos,
    /// Windows in a row that cut the limit on latency.
    shrink_streak: u32,
    /// Baseline measurements so far (probes and passive).
    measurements: u32,
    window_start: Nanos,
}

/// A concurrency limit learnt from latency, one per backend (see the module docs).
#[derive(Debug)]
pub struct AdaptiveLimit {
    cfg: LimitConfig,
    /// What [`AdaptiveLimit::limit`] returns.
    published: AtomicU32,
    /// The current window's samples (packed sum and count).
    window_acc: AtomicU64,
    /// The current window's dropped samples.
    drops: AtomicU32,
    /// The current window's largest in-flight-at-start.
    max_in_flight: AtomicU32,
    /// Unloaded samples since the last baseline (packed sum and count).
    unloaded_acc: AtomicU64,
    /// Copy of `State::window_start` for the lock-free "is a window due" check.
    window_start: AtomicU64,
    /// Probing or no baseline yet: finish a baseline as soon as its samples are in.
    baseline_wanted: AtomicBool,
    /// Copy of the baseline in ns (0: none), for readers.
    baseline_ns: AtomicU64,
    /// Copy of `State::probing`, for readers.
    probing: AtomicBool,
    state: Mutex<State>,
}

impl AdaptiveLimit {
    /// A limiter at `cfg.initial_limit` with no baseline yet. Out-of-range settings are pulled
    /// into range (a zero `min_limit` becomes 1, `max_limit` at least `min_limit`, ...).
    pub fn new(cfg: LimitConfig) -> Self {
        let cfg = cfg.sanitized();
        let initial = cfg.initial_limit;
        AdaptiveLimit {
            cfg,
            published: AtomicU32::new(initial),
            window_acc: AtomicU64::new(0),
            drops: AtomicU32::new(0),
            max_in_flight: AtomicU32::new(0),
            unloaded_acc: AtomicU64::new(0),
            window_start: AtomicU64::new(0),
            baseline_wanted: AtomicBool::new(true),
            baseline_ns: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            state: Mutex::new(State {
                limit: initial as f64,
                baseline_us: None,
                probing: false,
                probe_started: 0,
                saved_limit: initial as f64,
                next_probe_at: 0,
                shrink_streak: 0,
                measurements: 0,
                window_start: 0,
            }),
        }
    }

    /// The settings in use (after sanitizing).
    pub fn config(&self) -> &LimitConfig {
        &self.cfg
    }

    /// How many requests the backend may have in flight now.
    #[inline]
    pub fn limit(&self) -> u32 {
        self.published.load(Ordering::Acquire)
    }

    /// The unloaded latency the limiter compares with, in ns; None until measured.
    pub fn baseline(&self) -> Option<Nanos> {
        match self.baseline_ns.load(Ordering::Acquire) {
            0 => None,
            b => Some(b),
        }
    }

    /// Whether a probe is running (the limit is held at `probe_concurrency`).
    pub fn probing(&self) -> bool {
        self.probing.load(Ordering::Acquire)
    }

    /// One finished request: its round-trip time, the backend's in-flight count when it was
    /// sent (itself included), whether it was dropped (timeout, reset, no answer: its RTT is
    /// then ignored), and the time now.
    #[inline]
    pub fn on_sample(&self, rtt_ns: u64, in_flight_at_start: u32, dropped: bool, now: Nanos) {
        let mut baseline_ready = false;
        if dropped {
            self.drops.fetch_add(1, Ordering::AcqRel);
        } else {
            let p = pack(rtt_ns);
            self.window_acc.fetch_add(p, Ordering::AcqRel);
            if in_flight_at_start <= self.cfg.probe_concurrency {
                let before = self.unloaded_acc.fetch_add(p, Ordering::AcqRel);
                baseline_ready = (before & COUNT_MASK) + 1 >= self.cfg.probe_samples as u64
                    && self.baseline_wanted.load(Ordering::Relaxed);
            }
        }
        if in_flight_at_start > self.max_in_flight.load(Ordering::Relaxed) {
            self.max_in_flight
                .fetch_max(in_flight_at_start, Ordering::AcqRel);
        }
        let window_due =
            now.saturating_sub(self.window_start.load(Ordering::Relaxed)) >= self.cfg.window;
        if window_due || baseline_ready {
            let mut st = match self.state.try_lock() {
                Ok(st) => st,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => return,
            };
            self.update(&mut st, now);
        }
    }

    /// Publishes `st`'s limit (or the probe's) for [`AdaptiveLimit::limit`].
    fn publish(&self, st: &State) {
        let (min, max) = (self.cfg.min_limit, self.cfg.max_limit);
        let limit = (st.limit.round() as u32).clamp(min, max);
        let shown = if st.probing {
            limit.min(self.cfg.probe_concurrency)
        } else {
            limit
        };
        self.published.store(shown, Ordering::Release);
        self.probing.store(st.probing, Ordering::Release);
    }

    /// Closes the window and/or takes a baseline when due; under the mutex.
    fn update(&self, st: &mut State, now: Nanos) {
        let cfg = &self.cfg;
        // A probe that collected too little in its time settles for what it has.
        let probe_timed_out = st.probing
            && now.saturating_sub(st.probe_started)
                >= cfg.window.saturating_mul(PROBE_TIMEOUT_WINDOWS);
        let unloaded = self.unloaded_acc.load(Ordering::Acquire);
        if unpack(unloaded).1 >= cfg.probe_samples as u64 || probe_timed_out {
            self.take_baseline(st, now);
            // Outside a probe this was a passive refresh: a window may be due as well.
            if st.probing {
                self.end_probe(st, now);
                return;
            }
        }
        if now.saturating_sub(st.window_start) < cfg.window {
            return;
        }
        let count = unpack(self.window_acc.load(Ordering::Acquire)).1
            + self.drops.load(Ordering::Acquire) as u64;
        if count < cfg.min_window_samples as u64 {
            return;
        }
        let acc = self.window_acc.swap(0, Ordering::AcqRel);
        let drops = self.drops.swap(0, Ordering::AcqRel);
        let max_in_flight = self.max_in_flight.swap(0, Ordering::AcqRel);
        st.window_start = now;
        self.window_start.store(now, Ordering::Release);
        if st.probing {
            // Windows during a probe are not representative; the probe ends on its samples.
            return;
        }

        let limit = st.limit;
        let enforced = (limit.round() as u32).clamp(cfg.min_limit, cfg.max_limit);
        let at_limit = max_in_flight as f64 >= (AT_LIMIT_SHARE * enforced as f64).ceil();
        let mut next = limit;
        if !at_limit {
            // The limit did not bind: no evidence for a change either way.
        } else if drops > 0 {
            next = limit * cfg.backoff;
        } else if let Some(baseline) = st.baseline_us {
            let (rtt, _) = unpack(acc);
            let target = baseline * (1.0 + cfg.tolerance);
            let gradient = (target / rtt.max(1.0)).clamp(MIN_GRADIENT, 1.0);
            let raw = if gradient < 1.0 {
                st.shrink_streak += 1;
                limit * gradient
            } else {
                st.shrink_streak = 0;
                limit + limit.sqrt()
            };
            if st.shrink_streak >= SHRINK_STREAK_PROBE {
                // Cut after cut: the baseline is stale or unlucky; re-measure now.
                st.shrink_streak = 0;
                st.next_probe_at = now;
            }
            next = limit + cfg.smoothing * (raw - limit);
        }
        st.limit = next.clamp(cfg.min_limit as f64, cfg.max_limit as f64);
        let probe_due = now >= st.next_probe_at;
        if at_limit && drops == 0 && probe_due && st.limit.round() > cfg.probe_concurrency as f64 {
            st.probing = true;
            st.probe_started = now;
            st.saved_limit = st.limit;
            self.unloaded_acc.store(0, Ordering::Release);
            self.baseline_wanted.store(true, Ordering::Release);
        }
        self.publish(st);
    }

    /// Turns the unloaded samples collected so far (if any) into the baseline.
    fn take_baseline(&self, st: &mut State, now: Nanos) {
        let v = self.unloaded_acc.swap(0, Ordering::AcqRel);
        let (mean_us, count) = unpack(v);
        if count > 0 {
            let measured = mean_us.max(1.0);
            let b = match st.baseline_us {
                // Close to the old one: noise, so average (halves the variance).
                Some(old)
                    if measured < old * BASELINE_REPLACE_RATIO
                        && measured * BASELINE_REPLACE_RATIO > old =>
                {
                    st.measurements = st.measurements.saturating_add(1);
                    old + BASELINE_BLEND * (measured - old)
                }
                // Far from it (or the first): the backend changed; start over.
                _ => {
                    st.measurements = 1;
                    measured
                }
            };
            st.baseline_us = Some(b);
            self.baseline_ns
                .store((b * 1000.0).round() as u64, Ordering::Release);
            self.baseline_wanted.store(false, Ordering::Release);
        }
        // The first baselines are the least certain (few samples, a backend warming up):
        // re-measure after 1/8, 1/4 and 1/2 of the interval, then every interval.
        let interval = self.cfg.probe_interval >> (4 - st.measurements.min(4));
        let jitter = mix(v ^ now) % (interval / 4 + 1);
        st.next_probe_at = now.saturating_add(interval).saturating_add(jitter);
    }

    /// Back to the limit from before the probe, with a fresh window.
    fn end_probe(&self, st: &mut State, now: Nanos) {
        st.probing = false;
        st.limit = st.saved_limit;
        self.window_acc.store(0, Ordering::Release);
        self.drops.store(0, Ordering::Release);
        self.max_in_flight.store(0, Ordering::Release);
        st.window_start = now;
        self.window_start.store(now, Ordering::Release);
        self.baseline_wanted
            .store(st.baseline_us.is_none(), Ordering::Release);
        self.publish(st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ebbtide_config::rng::Rng;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::sync::Arc;

    const MS: Nanos = 1_000_000;
    const S: Nanos = 1_000_000_000;

    /// A simulated backend: `capacity` workers in front of a FIFO queue, so latency is the
    /// service time up to `capacity` concurrent requests and grows linearly with the queue
    /// beyond. Service times are jittered (uniform, +-30%) from a seeded generator: no threads,
    /// no wall clock, the same run every time.
    struct Sim {
        /// When each worker is free, earliest first.
        workers: BinaryHeap<Reverse<Nanos>>,
        service: Nanos,
        jitter: f64,
        rng: Rng,
        now: Nanos,
        in_flight: u32,
        /// (finish, sent, in flight at send), earliest finish first.
        pending: BinaryHeap<Reverse<(Nanos, Nanos, u32)>>,
        /// (time, limit, probing) every 10 ms.
        trace: Vec<(Nanos, u32, bool)>,
        next_mark: Nanos,
        /// Every response is a timeout.
        drop_all: bool,
        /// Exponential service times (mean `service`) instead of uniform jitter.
        exponential: bool,
    }

    impl Sim {
        fn new(capacity: usize, service: Nanos) -> Self {
            Sim {
                workers: (0..capacity).map(|_| Reverse(0)).collect(),
                service,
                jitter: 0.3,
                rng: Rng::new(7),
                now: 0,
                in_flight: 0,
                pending: BinaryHeap::new(),
                trace: Vec::new(),
                next_mark: 0,
                drop_all: false,
                exponential: false,
            }
        }

        /// Workers come or go (those that go finish what they started).
        fn set_capacity(&mut self, capacity: usize) {
            let mut free: Vec<Nanos> = self.workers.drain().map(|Reverse(t)| t).collect();
            free.sort_unstable();
            free.resize(capacity, self.now);
            self.workers = free.into_iter().map(Reverse).collect();
        }

        fn send(&mut self) {
            self.in_flight += 1;
            let Reverse(free) = self.workers.pop().unwrap();
            let start = self.now.max(free);
            let u = self.rng.next_f64();
            let service = if self.exponential {
                (-(1.0 - u).ln() * self.service as f64) as Nanos
            } else {
                (self.service as f64 * (1.0 + self.jitter * (2.0 * u - 1.0))) as Nanos
            };
            self.workers.push(Reverse(start + service));
            self.pending
                .push(Reverse((start + service, self.now, self.in_flight)));
        }

        /// Completes the earliest request if it finishes by `until`.
        fn complete_one(&mut self, lim: &AdaptiveLimit, until: Nanos) -> bool {
            let Some(&Reverse((finish, sent, n))) = self.pending.peek() else {
                return false;
            };
            if finish > until {
                return false;
            }
            self.pending.pop();
            self.now = finish;
            self.in_flight -= 1;
            lim.on_sample(finish - sent, n, self.drop_all, finish);
            while self.next_mark <= self.now {
                self.trace
                    .push((self.next_mark, lim.limit(), lim.probing()));
                self.next_mark += 10 * MS;
            }
            true
        }

        /// Closed loop: as many requests in flight as the limit allows, until `until`.
        fn run_saturated(&mut self, lim: &AdaptiveLimit, until: Nanos) {
            loop {
                while self.in_flight < lim.limit() {
                    self.send();
                }
                if !self.complete_one(lim, until) {
                    break;
                }
            }
            self.now = until;
        }

        /// Open loop: one request every `gap` until `until`, sent when the limit allows.
        /// Returns how many the limit turned away.
        fn run_open(&mut self, lim: &AdaptiveLimit, gap: Nanos, until: Nanos) -> u32 {
            let mut turned_away = 0;
            let mut next_arrival = self.now;
            while next_arrival <= until {
                if self.complete_one(lim, next_arrival) {
                    continue;
                }
                self.now = next_arrival;
                if self.in_flight < lim.limit() {
                    self.send();
                } else {
                    turned_away += 1;
                }
                next_arrival += gap;
            }
            while self.complete_one(lim, until) {}
            self.now = until;
            turned_away
        }

        /// Lets every request in flight finish (sending nothing new).
        fn drain(&mut self, lim: &AdaptiveLimit) {
            while self.complete_one(lim, Nanos::MAX) {}
        }

        /// Limits seen in `[from, to)` outside probes.
        fn limits(&self, from: Nanos, to: Nanos) -> Vec<u32> {
            self.trace
                .iter()
                .filter(|&&(t, _, probing)| t >= from && t < to && !probing)
                .map(|&(_, l, _)| l)
                .collect()
        }

        /// The first time in `[from, ..)` the limit (outside probes) satisfies `f`.
        fn first_time(&self, from: Nanos, f: impl Fn(u32) -> bool) -> Option<Nanos> {
            self.trace
                .iter()
                .find(|&&(t, l, probing)| t >= from && !probing && f(l))
                .map(|&(t, _, _)| t)
        }
    }

    fn config(initial: u32) -> LimitConfig {
        LimitConfig {
            initial_limit: initial,
            ..Default::default()
        }
    }

    /// Outside probes the limit stays within +-30% of `capacity` during `[from, to)`.
    fn assert_converged(sim: &Sim, capacity: u32, from: Nanos, to: Nanos) {
        let seen = sim.limits(from, to);
        assert!(seen.len() > 100, "too few samples: {}", seen.len());
        let lo = *seen.iter().min().unwrap() as f64;
        let hi = *seen.iter().max().unwrap() as f64;
        let c = capacity as f64;
        assert!(
            lo >= 0.7 * c && hi <= 1.3 * c,
            "capacity {capacity}: the limit ranged {lo}..={hi}"
        );
    }

    /// Feeds one window's worth of samples (10, 10 ms apart, all the same) ending after `now`
    /// has moved past the window; returns the new `now`.
    fn feed_window(
        lim: &AdaptiveLimit,
        rtt: Nanos,
        in_flight: u32,
        dropped: u32,
        now: Nanos,
    ) -> Nanos {
        let mut t = now;
        for i in 0..10 {
            t += 10 * MS;
            lim.on_sample(rtt, in_flight, i < dropped, t);
        }
        t
    }

    /// A limiter with a 10 ms baseline taken from 50 light-traffic samples; returns it and the
    /// time of the last sample (2.5 s).
    fn with_baseline(cfg: LimitConfig) -> (AdaptiveLimit, Nanos) {
        let lim = AdaptiveLimit::new(cfg);
        let mut now = 0;
        for _ in 0..50 {
            now += 50 * MS;
            lim.on_sample(10 * MS, 1, false, now);
        }
        assert_eq!(lim.baseline(), Some(10 * MS));
        (lim, now)
    }

    #[test]
    fn converges_to_the_capacity_from_below() {
        let lim = AdaptiveLimit::new(config(20));
        let mut sim = Sim::new(100, 10 * MS);
        sim.run_saturated(&lim, 30 * S);
        // Growth as documented: from 20 to within 30% of 100 in a few seconds.
        let reached = sim.first_time(0, |l| l >= 70).expect("never grew to 70");
        assert!(reached <= 3 * S, "took {reached} ns");
        assert_converged(&sim, 100, 5 * S, 30 * S);
    }

    #[test]
    fn converges_to_the_capacity_from_above() {
        let lim = AdaptiveLimit::new(config(500));
        let mut sim = Sim::new(50, 10 * MS);
        sim.run_saturated(&lim, 30 * S);
        let reached = sim
            .first_time(0, |l| l <= 65)
            .expect("never came down to 65");
        assert!(reached <= 3 * S, "took {reached} ns");
        assert_converged(&sim, 50, 5 * S, 30 * S);
    }

    #[test]
    fn converges_for_small_and_large_backends() {
        for capacity in [25u32, 300] {
            let lim = AdaptiveLimit::new(config(20));
            let mut sim = Sim::new(capacity as usize, 5 * MS);
            sim.run_saturated(&lim, 40 * S);
            assert_converged(&sim, capacity, 20 * S, 40 * S);
        }
        // Small backends: whole requests are coarse and one growth step is a large share, so
        // the limit sits between C and (1 + tolerance) x C plus a step.
        for (capacity, lo, hi) in [(4usize, 3u32, 6u32), (8, 7, 12)] {
            let lim = AdaptiveLimit::new(config(20));
            let mut sim = Sim::new(capacity, 5 * MS);
            sim.run_saturated(&lim, 20 * S);
            let seen = sim.limits(5 * S, 20 * S);
            assert!(
                seen.iter().all(|&l| (lo..=hi).contains(&l)),
                "{capacity}: {seen:?}"
            );
        }
    }

    #[test]
    fn shrinks_when_latency_rises_sharply_then_remeasures() {
        let lim = AdaptiveLimit::new(config(20));
        let mut sim = Sim::new(50, 10 * MS);
        sim.run_saturated(&lim, 10 * S);
        let before = lim.limit();
        assert!((40..=65).contains(&before), "{before}");
        // Every request becomes five times slower (same number of workers).
        sim.service = 50 * MS;
        sim.run_saturated(&lim, 40 * S);
        let halved = sim
            .first_time(10 * S, |l| l * 2 <= before)
            .expect("did not shrink");
        assert!(
            halved <= 11 * S,
            "took {} ms to halve",
            (halved - 10 * S) / MS
        );
        // The shrink brings it down to unloaded concurrency, which re-measures the baseline,
        // and the limit comes back to the knee, which has not moved.
        assert!(lim.baseline().unwrap() >= 40 * MS, "{:?}", lim.baseline());
        assert_converged(&sim, 50, 30 * S, 40 * S);
    }

    #[test]
    fn follows_a_drop_in_capacity() {
        let lim = AdaptiveLimit::new(config(20));
        let mut sim = Sim::new(100, 10 * MS);
        sim.run_saturated(&lim, 10 * S);
        sim.set_capacity(25);
        sim.run_saturated(&lim, 25 * S);
        let reached = sim.first_time(10 * S, |l| l <= 32).expect("did not follow");
        assert!(reached <= 13 * S, "took {} ms", (reached - 10 * S) / MS);
        assert_converged(&sim, 25, 15 * S, 25 * S);
    }

    #[test]
    fn never_exceeds_the_maximum() {
        let lim = AdaptiveLimit::new(LimitConfig {
            max_limit: 150,
            ..config(20)
        });
        let mut sim = Sim::new(5_000, 10 * MS);
        sim.run_saturated(&lim, 20 * S);
        assert_eq!(lim.limit(), 150);
        assert!(sim.trace.iter().all(|&(_, l, _)| l <= 150));
        // An initial limit above the maximum is pulled down to it.
        let lim = AdaptiveLimit::new(LimitConfig {
            max_limit: 150,
            ..config(400)
        });
        assert_eq!(lim.limit(), 150);
    }

    #[test]
    fn never_goes_below_the_minimum() {
        let lim = AdaptiveLimit::new(LimitConfig {
            min_limit: 3,
            ..config(20)
        });
        let mut sim = Sim::new(50, 10 * MS);
        sim.drop_all = true;
        sim.run_saturated(&lim, 10 * S);
        assert_eq!(lim.limit(), 3);
        assert!(sim.trace.iter().all(|&(_, l, _)| l >= 3));
        // ~0.9 per 100 ms window: from 20 to 3 in about 18 windows.
        let reached = sim.first_time(0, |l| l == 3).unwrap();
        assert!(reached <= 3 * S, "took {reached}");
    }

    #[test]
    fn does_not_grow_when_idle_or_lightly_loaded() {
        let lim = AdaptiveLimit::new(config(20));
        // No samples at all: nothing moves, however long.
        assert_eq!(lim.limit(), 20);
        assert_eq!(lim.baseline(), None);
        // A trickle (at most one request in flight) on a backend that could take 100: the
        // baseline is measured passively, no probe, no growth.
        let mut sim = Sim::new(100, 10 * MS);
        assert_eq!(sim.run_open(&lim, 20 * MS, 60 * S), 0);
        assert!(lim
            .baseline()
            .is_some_and(|b| (8 * MS..12 * MS).contains(&b)));
        assert!(sim.trace.iter().all(|&(_, l, probing)| l == 20 && !probing));
        // Steady traffic at about 10 in flight: still no evidence that more is wanted.
        assert_eq!(sim.run_open(&lim, MS, 120 * S), 0);
        assert!(sim.trace.iter().all(|&(_, l, probing)| l == 20 && !probing));
    }

    #[test]
    fn light_traffic_after_saturation_leaves_the_limit_alone() {
        let lim = AdaptiveLimit::new(config(20));
        let mut sim = Sim::new(100, 10 * MS);
        sim.run_saturated(&lim, 10 * S);
        sim.drain(&lim);
        // About 20 in flight, well under the learnt limit: after the last saturated window has
        // closed, a minute without a single change.
        let t = sim.now;
        assert_eq!(sim.run_open(&lim, MS / 2, t + S), 0);
        let learnt = lim.limit();
        assert!(learnt > 100, "{learnt}");
        assert_eq!(sim.run_open(&lim, MS / 2, t + 61 * S), 0);
        assert!(sim.limits(t + S, t + 61 * S).iter().all(|&l| l == learnt));
    }

    #[test]
    fn grows_by_half_the_square_root_per_window_at_the_limit() {
        let (lim, mut now) = with_baseline(config(20));
        let mut expected = 20.0f64;
        for _ in 0..4 {
            now = feed_window(&lim, 10 * MS, lim.limit(), 0, now);
            expected += 0.5 * expected.sqrt();
            assert_eq!(lim.limit(), expected.round() as u32);
        }
    }

    #[test]
    fn grows_only_with_at_least_80_percent_of_the_limit_in_flight() {
        let (lim, mut now) = with_baseline(config(20));
        for _ in 0..10 {
            now = feed_window(&lim, 10 * MS, 15, 0, now);
        }
        assert_eq!(lim.limit(), 20);
        feed_window(&lim, 10 * MS, 16, 0, now);
        assert_eq!(lim.limit(), 22);
    }

    #[test]
    fn shrinks_halfway_towards_the_gradient() {
        let (lim, now) = with_baseline(config(20));
        // 20 ms against a target of 11.5 ms: gradient 0.575, raw 11.5, smoothed 15.75 -> 16.
        let now = feed_window(&lim, 20 * MS, 20, 0, now);
        assert_eq!(lim.limit(), 16);
        // 100 ms: the gradient is clamped at 0.5, so -25% at most per window.
        let (lim, _) = with_baseline(config(20));
        feed_window(&lim, 100 * MS, 20, 0, now);
        assert_eq!(lim.limit(), 15);
    }

    #[test]
    fn latency_within_tolerance_does_not_shrink() {
        let (lim, mut now) = with_baseline(config(20));
        for _ in 0..5 {
            now = feed_window(&lim, 11 * MS, 5, 0, now);
        }
        assert_eq!(lim.limit(), 20);
    }

    #[test]
    fn a_dropped_request_backs_off_by_ten_percent_per_window() {
        // Even without a baseline (and such a window starts no probe).
        let lim = AdaptiveLimit::new(config(20));
        let now = feed_window(&lim, 10 * MS, 20, 1, 0);
        assert_eq!(lim.limit(), 18);
        assert!(!lim.probing());
        // Several drops in one window still count once.
        let now = feed_window(&lim, 10 * MS, 18, 10, now);
        assert_eq!(lim.limit(), 16); // 20 x 0.9 x 0.9 = 16.2
                                     // Drops while the backend is far from its limit are not the limit's doing.
        feed_window(&lim, 10 * MS, 5, 10, now);
        assert_eq!(lim.limit(), 16);
    }

    #[test]
    fn without_a_baseline_a_window_at_the_limit_starts_a_probe() {
        let lim = AdaptiveLimit::new(config(20));
        let now = feed_window(&lim, 10 * MS, 20, 0, 0);
        assert!(lim.probing());
        assert_eq!(lim.limit(), 2);
        // Samples sent with 3 in flight are not unloaded: the probe goes on.
        let mut t = now;
        for _ in 0..30 {
            t += MS;
            lim.on_sample(10 * MS, 3, false, t);
        }
        assert!(lim.probing());
        // 50 unloaded samples end it at once and restore the limit.
        for i in 0..50 {
            t += MS;
            lim.on_sample(8 * MS, 1 + i % 2, false, t);
        }
        assert!(!lim.probing());
        assert_eq!(lim.baseline(), Some(8 * MS));
        assert_eq!(lim.limit(), 20);
    }

    #[test]
    fn a_probe_that_gets_no_unloaded_samples_gives_up() {
        let lim = AdaptiveLimit::new(config(20));
        let mut t = feed_window(&lim, 10 * MS, 20, 0, 0);
        assert!(lim.probing());
        // Stuck requests finishing with many in flight, for 20 windows: the probe ends.
        while lim.probing() {
            t += 10 * MS;
            lim.on_sample(10 * MS, 30, false, t);
            assert!(t < 3 * S, "the probe never ends");
        }
        assert_eq!(lim.limit(), 20);
        assert_eq!(lim.baseline(), None);
    }

    #[test]
    fn saturated_backends_are_re_probed_on_a_ramp_then_every_interval() {
        let lim = AdaptiveLimit::new(config(20));
        let mut sim = Sim::new(50, 10 * MS);
        sim.run_saturated(&lim, 130 * S);
        // Probe starts: transitions into probing.
        let starts: Vec<Nanos> = sim
            .trace
            .windows(2)
            .filter(|w| !w[0].2 && w[1].2)
            .map(|w| w[1].0)
            .collect();
        // At start-up (no baseline yet), then after 1/8, 1/4, 1/2 and 1 x 60 s, each plus up to
        // 25% jitter and the probe itself.
        assert!(starts[0] <= S, "{starts:?}");
        assert_eq!(starts.len(), 5, "{starts:?}");
        for (k, gap) in starts.windows(2).map(|w| w[1] - w[0]).enumerate() {
            let interval = (60 * S) >> (3 - k);
            assert!(
                (interval..=interval * 5 / 4 + S).contains(&gap),
                "probe gap {k}: {gap}"
            );
        }
        // Each probe holds the limit at 2, is short, and returns to about the same limit.
        for &s in &starts[1..] {
            let i = sim.trace.iter().position(|&(t, _, _)| t == s).unwrap();
            let before = sim.trace[i - 1].1;
            let len = sim.trace[i..].iter().take_while(|x| x.2).count();
            assert!(sim.trace[i..i + len].iter().all(|x| x.1 == 2));
            assert!(len <= 40, "probe lasted {len} x 10 ms");
            let after = sim.trace[i + len].1;
            assert!(after.abs_diff(before) <= 5, "{before} -> {after}");
        }
    }

    #[test]
    fn ten_latency_cuts_in_a_row_re_measure_the_baseline() {
        let (lim, mut now) = with_baseline(config(20));
        // 12.5 ms against a target of 11.5 ms: a small cut each window.
        for _ in 0..9 {
            now = feed_window(&lim, 12_500_000, lim.limit(), 0, now);
            assert!(!lim.probing());
        }
        let before = lim.limit();
        assert!(before < 20);
        now = feed_window(&lim, 12_500_000, lim.limit(), 0, now);
        assert!(lim.probing(), "the tenth cut in a row starts a probe");
        assert_eq!(lim.limit(), 2);
        // The backend really is at 12.5 ms unloaded: the new measurement is averaged in.
        for _ in 0..50 {
            now += MS;
            lim.on_sample(12_500_000, 1, false, now);
        }
        assert!(!lim.probing());
        assert_eq!(lim.baseline(), Some(11_250_000));
        assert!(lim.limit().abs_diff(before) <= 1);
    }

    #[test]
    fn a_close_measurement_is_averaged_and_a_far_one_replaces() {
        let (lim, mut now) = with_baseline(config(20));
        // Light traffic refreshes the baseline passively, at the first window end after 50
        // unloaded samples; returns the new baseline.
        let mut trickle = |rtt: Nanos| {
            let before = lim.baseline();
            for n in 1..=52 {
                now += 50 * MS;
                lim.on_sample(rtt, 1, false, now);
                if lim.baseline() != before {
                    assert!(n >= 50, "a baseline from {n} samples");
                    return lim.baseline().unwrap();
                }
            }
            panic!("no new baseline");
        };
        assert_eq!(trickle(14 * MS), 12 * MS); // (10 + 14) / 2
        assert_eq!(trickle(30 * MS), 30 * MS); // more than twice 12: the backend changed
        assert_eq!(trickle(14 * MS), 14 * MS); // less than half of 30
        assert_eq!(trickle(20 * MS), 17 * MS);
        assert_eq!(lim.limit(), 20);
    }

    #[test]
    fn holds_up_with_exponential_service_times() {
        // M/M/c-like: service times with a standard deviation as large as their mean make both
        // the baseline and the windows noisy. The limit must neither collapse nor run away.
        for capacity in [16usize, 100] {
            for seed in 1..=3 {
                let lim = AdaptiveLimit::new(config(20));
                let mut sim = Sim::new(capacity, 5 * MS);
                sim.rng = Rng::new(seed);
                sim.exponential = true;
                sim.run_saturated(&lim, 40 * S);
                let seen = sim.limits(15 * S, 40 * S);
                let c = capacity as f64;
                let lo = *seen.iter().min().unwrap() as f64 / c;
                let hi = *seen.iter().max().unwrap() as f64 / c;
                let mean = seen.iter().map(|&l| l as f64).sum::<f64>() / seen.len() as f64 / c;
                assert!(
                    lo >= 0.6 && hi <= 1.7 && (0.9..=1.4).contains(&mean),
                    "capacity {capacity}, seed {seed}: {lo:.2}..{hi:.2} x C, mean {mean:.2}"
                );
            }
        }
    }

    #[test]
    fn out_of_range_settings_are_pulled_into_range() {
        let lim = AdaptiveLimit::new(LimitConfig {
            min_limit: 0,
            max_limit: 0,
            initial_limit: 0,
            tolerance: f64::NAN,
            smoothing: 0.0,
            backoff: 7.0,
            window: 0,
            min_window_samples: 0,
            probe_interval: 0,
            probe_concurrency: 0,
            probe_samples: 0,
        });
        let c = lim.config();
        assert_eq!((c.min_limit, c.max_limit, c.initial_limit), (1, 1, 1));
        assert_eq!((c.tolerance, c.smoothing, c.backoff), (0.0, 1.0, 0.9));
        assert_eq!(lim.limit(), 1);
        // And it runs: samples of every kind keep it at its only possible value.
        for t in 1..1000 {
            lim.on_sample(t * 1000, (t % 3) as u32, t % 7 == 0, t * MS);
        }
        assert_eq!(lim.limit(), 1);
    }

    #[test]
    fn four_threads_reporting_timeouts_drive_it_to_the_minimum() {
        let (lim, t0) = with_baseline(LimitConfig {
            min_limit: 4,
            ..config(200)
        });
        let lim = Arc::new(lim);
        let threads: Vec<_> = (0..4u64)
            .map(|k| {
                let lim = lim.clone();
                std::thread::spawn(move || {
                    for i in 0..50_000u64 {
                        lim.on_sample(S, lim.limit(), true, t0 + i * 100_000 + k);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // 5 s of windows, each x0.9: 200 -> 4 needs 38 of the 50.
        assert_eq!(lim.limit(), 4);
    }
}
