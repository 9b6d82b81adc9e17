//! Passive outlier detection: a backend that fails several requests in a row is taken out of
//! rotation for a while, longer each time it happens again (the consecutive-errors detector of
//! Envoy's outlier detection).
//!
//! # Rules
//!
//! One [`OutlierDetector`] per backend:
//!
//! - The caller reports each try that got no usable response ([`OutlierDetector::record_failure`]:
//!   connect failure, reset, timeout, and a 5xx when it is configured to count) and each one that
//!   did ([`OutlierDetector::record_success`]). A success resets the consecutive count to 0.
//! - The failure that brings the consecutive count to `consecutive_failures` (default 5; 0 turns
//!   detection off) ejects the backend: `record_failure` returns an [`Ejection`] ending at
//!   `now + min(base_ejection x count, max_ejection)`, where `count` is the number of times it
//!   has been ejected, this one included (so 5 s, 10 s, 15 s, ... up to 5 min by default).
//!   Exactly one failure per run of failures returns it, however many threads report at once.
//! - While ejected (until `until`), failures are not counted: requests already in flight when it
//!   was ejected must not extend or repeat the ejection. After `until` it counts again, whether or
//!   not the caller has called [`OutlierDetector::reinstate`].
//! - The ejection count decays: each full `decay` (default 60 s) between the end of the last
//!   ejection and the next ejection forgives one earlier ejection. A backend that behaves for
//!   a long time is back to `base_ejection`; one that flaps keeps getting longer ejections.
//! - The fleet guard [`may_eject`] caps how many backends may be ejected at once. When it refuses,
//!   the caller calls [`OutlierDetector::cancel_ejection`]: the ejection is forgotten (the count
//!   goes back), the backend stays in rotation, and another `consecutive_failures` failures in a
//!   row are needed before it is proposed again.
//!
//! - A config reload changes the settings in place ([`OutlierDetector::set_config`]): the new
//!   ejection lengths apply to the next ejection; a new threshold starts the run from 0.
//!
//! The detector only proposes: the caller moves the backend to `ejected`, and back to `active`
//! (directly, or after health checks pass) once `until` is over, then calls `reinstate`.
//!
//! # Concurrency
//!
//! Sans-IO, with time passed in. The per-request paths are lock-free: a success is one load
//! (and a store only when the count was not already 0), a failure one load and one `fetch_add`.
//! Only the failure that crosses the threshold takes a mutex, for a few instructions, to update
//! the ejection history. Nothing allocates.

use ebbtide_config::time::{Nanos, NANOS_PER_SEC};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

/// The thresholds and durations of passive outlier detection; the defaults are
/// `[outlier]`'s, the lead maps the config section onto this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Failures in a row that eject a backend (default 5). 0 turns detection off.
    pub consecutive_failures: u32,
    /// How long the first ejection lasts; the n-th lasts n times as long (default 5 s).
    pub base_ejection: Nanos,
    /// No ejection lasts longer (default 5 min).
    pub max_ejection: Nanos,
    /// Each full period this long without an ejection forgives one earlier ejection, so a
    /// backend that recovered for good starts again from `base_ejection` (default 60 s).
    /// 0: ejections are never forgiven.
    pub decay: Nanos,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: 5 * NANOS_PER_SEC,
            max_ejection: 300 * NANOS_PER_SEC,
            decay: 60 * NANOS_PER_SEC,
        }
    }
}

/// An ejection proposed by [`OutlierDetector::record_failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// When the ejection ends and the backend may come back.
    pub until: Nanos,
    /// How many times it has been ejected, this one included, after decay (>= 1).
    pub count: u32,
}

/// The ejection history, touched only when an ejection starts or is cancelled.
#[derive(Debug)]
struct History {
    /// Ejections not yet forgiven, as of `last_end`.
    count: u32,
    /// When the last ejection ended (or ends); decay runs from here.
    last_end: Nanos,
    /// `count` and `last_end` before the last ejection, so it can be cancelled.
    previous: (u32, Nanos),
    /// The settings in force (a config reload may change them).
    cfg: OutlierConfig,
}

/// One backend's passive outlier detector (see the module docs for the rules).
#[derive(Debug)]
pub struct OutlierDetector {
    /// `cfg.consecutive_failures`, read by every failure without the lock.
    threshold: AtomicU32,
    /// Failures in a row since the last success, ejection or reinstatement.
    consecutive: AtomicU32,
    /// End of the current ejection; 0: not ejected.
    ejected_until: AtomicU64,
    history: Mutex<History>,
}

impl OutlierDetector {
    /// A detector for a backend that has never failed.
    pub fn new(cfg: OutlierConfig) -> Self {
        OutlierDetector {
            threshold: AtomicU32::new(cfg.consecutive_failures),
            consecutive: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            history: Mutex::new(History {
                count: 0,
                last_end: 0,
                previous: (0, 0),
                cfg,
            }),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> OutlierConfig {
        self.history.lock().unwrap_or_else(|e| e.into_inner()).cfg
    }

    /// Changes the settings from now on (config reload). The ejection history and a running
    /// ejection are kept; the new ejection lengths apply to the next ejection. A new threshold
    /// starts the run of failures from 0 (a run already past a lowered threshold would
    /// otherwise never equal it).
    pub fn set_config(&self, cfg: OutlierConfig) {
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.cfg = cfg;
        if self
            .threshold
            .swap(cfg.consecutive_failures, Ordering::AcqRel)
            != cfg.consecutive_failures
        {
            self.consecutive.store(0, Ordering::Release);
        }
    }

    /// A try that got a usable response: the run of failures is over. `now` is not used by the
    /// consecutive-failures rule; it is taken so that rate-based rules can be added without
    /// changing callers.
    #[inline]
    pub fn record_success(&self, _now: Nanos) {
        // Most responses find the count at 0 already: a load keeps the cache line shared.
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// A try that failed. Returns the ejection when this failure is the one that reaches
    /// `consecutive_failures`; None otherwise, when detection is off, and while ejected.
    pub fn record_failure(&self, now: Nanos) -> Option<Ejection> {
        let threshold = self.threshold.load(Ordering::Acquire);
        if threshold == 0 {
            return None;
        }
        let until = self.ejected_until.load(Ordering::Acquire);
        if until != 0 && now < until {
            return None;
        }
        let n = self
            .consecutive
            .fetch_add(1, Ordering::AcqRel)
            .wrapping_add(1);
        if n != threshold {
            return None;
        }
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        h.previous = (h.count, h.last_end);
        let cfg = h.cfg;
        let count = decayed(&cfg, h.count, h.last_end, now).saturating_add(1);
        let length = cfg
            .base_ejection
            .saturating_mul(count as u64)
            .min(cfg.max_ejection)
            .max(1);
        let until = now.saturating_add(length);
        h.count = count;
        h.last_end = until;
        self.ejected_until.store(until, Ordering::Release);
        self.consecutive.store(0, Ordering::Release);
        Some(Ejection { until, count })
    }

    /// When the current ejection ends (possibly already in the past); None when it is not
    /// ejected or has been reinstated.
    pub fn ejected_until(&self) -> Option<Nanos> {
        match self.ejected_until.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }

    /// Whether an ejection is running at `now`.
    pub fn is_ejected(&self, now: Nanos) -> bool {
        self.ejected_until().is_some_and(|t| now < t)
    }

    /// The backend is back in rotation: the ejection is over and failures count from 0. The
    /// ejection count is kept (it decays with time).
    pub fn reinstate(&self) {
        self.ejected_until.store(0, Ordering::Release);
        self.consecutive.store(0, Ordering::Release);
    }

    /// The ejection just proposed was not carried out (the fleet guard refused): forget it, so
    /// it neither lengthens later ejections nor stops failures from counting. Failures count
    /// from 0 again. Does nothing when `ejection` is not the current one.
    pub fn cancel_ejection(&self, ejection: Ejection) {
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if self.ejected_until.load(Ordering::Acquire) != ejection.until || h.count != ejection.count
        {
            return;
        }
        (h.count, h.last_end) = h.previous;
        self.ejected_until.store(0, Ordering::Release);
        self.consecutive.store(0, Ordering::Release);
    }

    /// Failures in a row so far (0 after a success, an ejection or a reinstatement).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive.load(Ordering::Acquire)
    }

    /// Ejections not yet forgiven at `now`: the next ejection will be this plus one.
    pub fn ejection_count(&self, now: Nanos) -> u32 {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        decayed(&h.cfg, h.count, h.last_end, now)
    }
}

/// `count` less one for each full `decay` from `last_end` to `now`.
fn decayed(cfg: &OutlierConfig, count: u32, last_end: Nanos, now: Nanos) -> u32 {
    if cfg.decay == 0 || count == 0 {
        return count;
    }
    let periods = now.saturating_sub(last_end) / cfg.decay;
    count.saturating_sub(periods.min(u32::MAX as u64) as u32)
}

/// How many backends of a fleet of `fleet` may be ejected at once with `max_share`:
/// `floor(max_share x fleet)`, but at least 1 and at most `fleet - 1` (one backend always stays
/// in rotation; ejecting the last one would turn "some requests fail" into "all do"). So a fleet
/// of 1 never ejects, a fleet of 2 or 3 ejects at most 1 with the default 0.5, a fleet of 10 at
/// most 5. A share <= 0 (or NaN) turns ejection off.
pub fn max_ejected(fleet: usize, max_share: f64) -> usize {
    // NaN is not greater than zero either.
    let share_positive = max_share > 0.0;
    if fleet < 2 || !share_positive {
        return 0;
    }
    // The epsilon keeps 0.3 x 10 at 3 despite binary fractions.
    let by_share = (max_share.min(1.0) * fleet as f64 + 1e-9).floor() as usize;
    by_share.clamp(1, fleet - 1)
}

/// The fleet guard: whether one more backend may be ejected when `ejected` of `fleet` backends
/// (the candidate not among them) are ejected already; see [`max_ejected`] for the rule.
pub fn may_eject(ejected: usize, fleet: usize, max_share: f64) -> bool {
    ejected < max_ejected(fleet, max_share)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const S: Nanos = NANOS_PER_SEC;

    fn detector() -> OutlierDetector {
        OutlierDetector::new(OutlierConfig::default())
    }

    /// Fails `n` times at `now`; returns what the last failure returned.
    fn fail(d: &OutlierDetector, n: u32, now: Nanos) -> Option<Ejection> {
        let mut last = None;
        for i in 0..n {
            last = d.record_failure(now);
            if i + 1 < n {
                assert_eq!(last, None, "ejected after {} failures", i + 1);
            }
        }
        last
    }

    #[test]
    fn five_failures_in_a_row_eject_for_the_base_time() {
        let d = detector();
        let now = 100 * S;
        assert_eq!(fail(&d, 4, now), None);
        assert_eq!(d.consecutive_failures(), 4);
        assert!(!d.is_ejected(now));
        let e = d.record_failure(now).expect("the fifth failure ejects");
        assert_eq!(
            e,
            Ejection {
                until: now + 5 * S,
                count: 1
            }
        );
        assert_eq!(d.ejected_until(), Some(now + 5 * S));
        assert!(d.is_ejected(now + 5 * S - 1));
        assert!(!d.is_ejected(now + 5 * S));
    }

    #[test]
    fn a_reload_changes_the_threshold_and_lengths_from_the_next_failure() {
        let d = detector();
        assert_eq!(fail(&d, 4, S), None);
        // Lowered below the run so far: the run starts again under the new threshold.
        d.set_config(OutlierConfig {
            consecutive_failures: 2,
            base_ejection: 7 * S,
            max_ejection: 100 * S,
            ..OutlierConfig::default()
        });
        assert_eq!(d.config().consecutive_failures, 2);
        assert_eq!(d.consecutive_failures(), 0);
        let e = fail(&d, 2, 10 * S).expect("the second failure ejects");
        assert_eq!(e.until, 17 * S);
        // The same threshold again keeps the run.
        d.reinstate();
        assert_eq!(fail(&d, 1, 20 * S), None);
        d.set_config(d.config());
        assert_eq!(d.consecutive_failures(), 1);
        // 0 turns detection off at once.
        d.set_config(OutlierConfig {
            consecutive_failures: 0,
            ..d.config()
        });
        assert_eq!(fail(&d, 10, 30 * S), None);
    }

    #[test]
    fn a_success_resets_the_run() {
        let d = detector();
        assert_eq!(fail(&d, 4, S), None);
        d.record_success(S);
        assert_eq!(d.consecutive_failures(), 0);
        assert_eq!(fail(&d, 4, 2 * S), None);
        assert!(d.record_failure(2 * S).is_some());
    }

    #[test]
    fn each_ejection_lasts_longer_up_to_the_cap() {
        let d = OutlierDetector::new(OutlierConfig {
            decay: 0,
            ..Default::default()
        });
        let mut now = S;
        for n in 1..=70u64 {
            let e = fail(&d, 5, now).expect("ejects");
            assert_eq!(e.count, n as u32);
            assert_eq!(e.until - now, (5 * n).min(300) * S, "ejection {n}");
            now = e.until;
            d.reinstate();
        }
    }

    #[test]
    fn failures_while_ejected_neither_count_nor_extend() {
        let d = detector();
        let e = fail(&d, 5, S).unwrap();
        // Requests that were in flight fail after the ejection: ignored.
        assert_eq!(fail(&d, 20, 2 * S), None);
        assert_eq!(d.consecutive_failures(), 0);
        assert_eq!(d.ejected_until(), Some(e.until));
    }

    #[test]
    fn after_the_ejection_ends_failures_count_again_even_without_reinstate() {
        let d = detector();
        let first = fail(&d, 5, S).unwrap();
        let second = fail(&d, 5, first.until).expect("counts once the time is over");
        assert_eq!(second.count, 2);
        assert_eq!(second.until, first.until + 10 * S);
    }

    #[test]
    fn reinstate_clears_the_ejection_and_the_run_but_not_the_history() {
        let d = detector();
        let e = fail(&d, 5, S).unwrap();
        d.reinstate();
        assert_eq!(d.ejected_until(), None);
        assert!(!d.is_ejected(S));
        assert_eq!(d.ejection_count(e.until), 1);
        let again = fail(&d, 5, e.until).unwrap();
        assert_eq!(again.count, 2);
    }

    #[test]
    fn the_ejection_count_decays_after_healthy_periods() {
        let d = detector(); // decay 60 s
        let mut now = S;
        for _ in 0..3 {
            let e = fail(&d, 5, now).unwrap();
            d.reinstate();
            now = e.until;
        }
        assert_eq!(d.ejection_count(now), 3);
        // 59 s after the last ejection ended: nothing forgiven yet.
        assert_eq!(d.ejection_count(now + 59 * S), 3);
        // Two full periods: two forgiven, so the next ejection is the second, 10 s.
        let e = fail(&d, 5, now + 120 * S).unwrap();
        assert_eq!(e.count, 2);
        assert_eq!(e.until - (now + 120 * S), 10 * S);
        d.reinstate();
        // A long healthy period: back to the base ejection.
        let later = e.until + 3600 * S;
        assert_eq!(d.ejection_count(later), 0);
        assert_eq!(fail(&d, 5, later).unwrap().until - later, 5 * S);
    }

    #[test]
    fn zero_consecutive_failures_turns_detection_off() {
        let d = OutlierDetector::new(OutlierConfig {
            consecutive_failures: 0,
            ..Default::default()
        });
        for i in 0..1000 {
            assert_eq!(d.record_failure(i), None);
        }
        assert_eq!(d.ejected_until(), None);
    }

    #[test]
    fn a_cancelled_ejection_is_forgotten() {
        let d = detector();
        let first = fail(&d, 5, S).unwrap();
        d.reinstate();
        let now = first.until;
        let refused = fail(&d, 5, now).unwrap();
        assert_eq!(refused.count, 2);
        d.cancel_ejection(refused);
        assert_eq!(d.ejected_until(), None);
        assert_eq!(d.consecutive_failures(), 0);
        assert_eq!(d.ejection_count(now), 1);
        // Failures count from zero again; the next ejection is the second, not the third.
        let next = fail(&d, 5, now + S).unwrap();
        assert_eq!(next.count, 2);
        assert_eq!(next.until, now + S + 10 * S);
        // Cancelling something that is not the current ejection does nothing.
        d.cancel_ejection(refused);
        assert_eq!(d.ejected_until(), Some(next.until));
    }

    #[test]
    fn one_ejection_per_run_however_many_threads_fail_at_once() {
        let d = Arc::new(detector());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || (0..10_000).filter_map(|_| d.record_failure(S)).count())
            })
            .collect();
        let ejections: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(ejections, 1);
        assert_eq!(d.ejected_until(), Some(6 * S));
    }

    #[test]
    fn the_fleet_guard_keeps_one_backend_and_the_share() {
        // A lone backend is never ejected.
        assert_eq!(max_ejected(1, 0.5), 0);
        assert!(!may_eject(0, 1, 0.5));
        assert!(!may_eject(0, 1, 1.0));
        assert!(!may_eject(0, 0, 0.5));
        // Two or three: at least one may go, never the last.
        assert!(may_eject(0, 2, 0.5));
        assert!(!may_eject(1, 2, 0.5));
        assert!(may_eject(0, 2, 0.1));
        assert_eq!(max_ejected(3, 0.5), 1);
        assert_eq!(max_ejected(3, 1.0), 2);
        // Larger fleets: floor(share x fleet).
        assert_eq!(max_ejected(10, 0.5), 5);
        assert!(may_eject(4, 10, 0.5));
        assert!(!may_eject(5, 10, 0.5));
        assert_eq!(max_ejected(10, 0.3), 3);
        assert_eq!(max_ejected(100, 0.29), 29);
        assert_eq!(max_ejected(7, 0.5), 3);
        assert_eq!(max_ejected(10, 2.0), 9);
        // Share 0 or nonsense: never.
        assert_eq!(max_ejected(10, 0.0), 0);
        assert_eq!(max_ejected(10, -1.0), 0);
        assert_eq!(max_ejected(10, f64::NAN), 0);
    }
}
