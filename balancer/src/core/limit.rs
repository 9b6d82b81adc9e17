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
mod tests;
