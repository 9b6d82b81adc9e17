//! Retry budget: retries may be at most a share of requests plus a small floor per second, so a
//! fleet that answers every request with 503 cannot turn into a retry storm (the idea of
//! Finagle's and linkerd's retry budgets).
//!
//! # Rule
//!
//! The budget is a bucket of tokens:
//!
//! - every request deposits `ratio` tokens ([`RetryBudget::deposit`], default ratio 0.2);
//! - every retry withdraws one whole token ([`RetryBudget::try_withdraw`]) and is refused when
//!   less than one token is left;
//! - the floor adds `min_per_second` tokens per second of elapsed time (default 10/s), so a
//!   quiet service can still retry its rare failures;
//! - the whole balance leaks with time constant `window` (default [`DEFAULT_WINDOW`], 10 s):
//!   after `dt` the balance keeps `e^(-dt/window)` of itself. That is the cap: under steady
//!   traffic of `rate` requests per second with no retries the balance settles at
//!   `(ratio x rate + min_per_second) x window`, i.e. about what the last 10 s deposited, and a
//!   long healthy period cannot bank an unbounded reserve that a later outage would spend.
//! - A fresh budget starts with `min_per_second x window` tokens (100 by default): the balance
//!   an idle budget settles at, so retries work from the first request.
//!
//! Hence, over any interval `[t0, t1]`, retries <= balance(t0) + `ratio` x requests +
//! `min_per_second` x (t1 - t0) in seconds; for a fresh budget balance(t0) = `min_per_second` x
//! `window`. The leak only ever takes tokens away, so the bound holds whatever the timing.
//!
//! # Concurrency
//!
//! Sans-IO (time is passed in as [`Nanos`]) and lock-free: the balance is one atomic counter of
//! micro-tokens, changed by `fetch_add` (deposit) and a compare-and-swap loop that refuses to go
//! below zero (withdraw), so concurrent retries can never overdraw it. The floor and the leak are
//! applied lazily, at most once per millisecond, by whichever caller first moves the
//! "accrued up to" timestamp forward with a compare-and-swap; nothing allocates.

use ebbtide_config::time::{Nanos, NANOS_PER_SEC};
use std::sync::atomic::{AtomicU64, Ordering};

/// The leak time constant of [`RetryBudget::new`]: a deposit older than this weighs e^-1, so the
/// reserve reflects roughly the last 10 s of traffic (Finagle's default TTL).
pub const DEFAULT_WINDOW: Nanos = 10 * NANOS_PER_SEC;

/// Micro-tokens per token: the fixed-point unit of the balance.
const UNIT: f64 = 1_000_000.0;
/// One token in micro-tokens.
const ONE_TOKEN: u64 = 1_000_000;
/// The floor and the leak are brought up to date at most this often (1 ms), so that a busy
/// proxy does not pay for an `exp` and two compare-and-swaps on every request.
const REFILL_GRANULARITY: Nanos = 1_000_000;

/// A retry budget shared by every request of a proxy (see the module docs for the rule).
#[derive(Debug)]
pub struct RetryBudget {
    /// Micro-tokens deposited per request.
    deposit_units: u64,
    /// Floor, in tokens per second.
    floor_per_sec: f64,
    /// Leak time constant in ns (at least 1).
    window_ns: f64,
    /// The balance in micro-tokens; never negative.
    balance: AtomicU64,
    /// The time up to which the floor and the leak have been applied.
    accrued_to: AtomicU64,
}

/// A ratio or rate from config: negative, NaN and infinite values mean 0 (no tokens).
fn sanitize(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        0.0
    }
}

impl RetryBudget {
    /// A budget allowing retries at `ratio` of requests plus `min_per_second`, leaking with
    /// [`DEFAULT_WINDOW`], starting full at `min_per_second x 10 s` tokens at time `now`.
    /// Negative or non-finite parameters are taken as 0.
    pub fn new(ratio: f64, min_per_second: f64, now: Nanos) -> Self {
        Self::with_window(ratio, min_per_second, DEFAULT_WINDOW, now)
    }

    /// Like [`RetryBudget::new`] with a chosen leak time constant `window` (0 is taken as 1 ns);
    /// the initial balance is `min_per_second x window`.
    pub fn with_window(ratio: f64, min_per_second: f64, window: Nanos, now: Nanos) -> Self {
        let ratio = sanitize(ratio);
        let floor_per_sec = sanitize(min_per_second);
        let window_ns = window.max(1) as f64;
        let initial = floor_per_sec * (window_ns / NANOS_PER_SEC as f64) * UNIT;
        RetryBudget {
            deposit_units: (ratio * UNIT).round() as u64,
            floor_per_sec,
            window_ns,
            balance: AtomicU64::new(initial as u64),
            accrued_to: AtomicU64::new(now),
        }
    }

    /// Called once per request (first tries only): adds `ratio` tokens.
    #[inline]
    pub fn deposit(&self, now: Nanos) {
        self.refill(now);
        if self.deposit_units > 0 {
            self.balance.fetch_add(self.deposit_units, Ordering::AcqRel);
        }
    }

    /// Called before each retry: takes one token and returns true, or returns false (and takes
    /// nothing) when less than one token is left. Concurrent callers never overdraw.
    #[inline]
    pub fn try_withdraw(&self, now: Nanos) -> bool {
        self.refill(now);
        self.balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                b.checked_sub(ONE_TOKEN)
            })
            .is_ok()
    }

    /// The tokens available at `now` (fractional), for metrics and tests.
    pub fn available(&self, now: Nanos) -> f64 {
        self.refill(now);
        self.balance.load(Ordering::Acquire) as f64 / UNIT
    }

    /// Applies the floor and the leak for the time since `accrued_to`, at most once per
    /// [`REFILL_GRANULARITY`]; a caller whose `now` lags behind does nothing.
    #[inline]
    fn refill(&self, now: Nanos) {
        let last = self.accrued_to.load(Ordering::Acquire);
        if now < last.saturating_add(REFILL_GRANULARITY) {
            return;
        }
        // Only the caller that moves the stamp credits this interval: no double counting.
        if self
            .accrued_to
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let dt = (now - last) as f64;
        let keep = (-dt / self.window_ns).exp();
        // The floor accrued over dt while leaking: the integral of f x e^(-(dt-s)/w) ds.
        let added =
            self.floor_per_sec * (self.window_ns / NANOS_PER_SEC as f64) * (1.0 - keep) * UNIT;
        let _ = self
            .balance
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                Some((b as f64 * keep + added) as u64)
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;

    const MS: Nanos = 1_000_000;
    const S: Nanos = NANOS_PER_SEC;

    #[test]
    fn a_fresh_budget_holds_ten_seconds_of_floor() {
        let b = RetryBudget::new(0.2, 10.0, 0);
        assert!((b.available(0) - 100.0).abs() < 1e-6);
        let mut n = 0;
        while b.try_withdraw(0) {
            n += 1;
        }
        assert_eq!(n, 100);
    }

    #[test]
    fn a_storm_of_retries_is_bounded_by_ratio_floor_and_initial() {
        // 1000 requests over 1 s, every one failing and wanting a retry.
        let t0 = 5 * S;
        let b = RetryBudget::new(0.2, 10.0, t0);
        let mut retries = 0u32;
        let mut now = t0;
        for _ in 0..1000 {
            now += MS;
            b.deposit(now);
            if b.try_withdraw(now) {
                retries += 1;
            }
        }
        let elapsed_s = (now - t0) as f64 / S as f64;
        let bound = 0.2 * 1000.0 + 10.0 * elapsed_s + 100.0; // ratio + floor + initial
        assert!(retries as f64 <= bound, "{retries} > {bound}");
        // ...and it is a budget, not a ban: nearly all of it is usable (the leak takes a little).
        assert!(
            retries as f64 >= bound - 25.0,
            "{retries} retries, bound {bound}"
        );
        // Once the initial reserve is spent, the steady share is the ratio plus the floor.
        let mut steady = 0u32;
        for _ in 0..1000 {
            now += MS;
            b.deposit(now);
            if b.try_withdraw(now) {
                steady += 1;
            }
        }
        assert!(
            (205..=211).contains(&steady),
            "{steady} retries per 1000 requests"
        );
    }

    #[test]
    fn with_ratio_zero_only_the_floor_is_available() {
        let b = RetryBudget::new(0.0, 10.0, 0);
        while b.try_withdraw(0) {}
        let mut retries = 0u32;
        let mut now = 0;
        // 10 s of heavy traffic, every request wanting a retry.
        for _ in 0..10_000 {
            now += MS;
            b.deposit(now);
            b.deposit(now);
            if b.try_withdraw(now) {
                retries += 1;
            }
        }
        assert!(retries <= 100, "{retries} > floor x 10 s");
        assert!(retries >= 98, "{retries}: the floor should be usable");
    }

    #[test]
    fn no_ratio_and_no_floor_means_no_retries() {
        let b = RetryBudget::new(0.0, 0.0, 0);
        for i in 0..1000 {
            b.deposit(i * MS);
            assert!(!b.try_withdraw(i * MS));
        }
        // Nonsense parameters are taken as 0, not as a licence.
        let b = RetryBudget::new(f64::NAN, -5.0, 0);
        b.deposit(1);
        assert!(!b.try_withdraw(S));
    }

    #[test]
    fn a_long_healthy_period_banks_only_about_one_window_of_deposits() {
        let b = RetryBudget::new(0.2, 10.0, 0);
        let mut now = 0;
        // 100 s at 1000 requests/s, no retries: 20 000 deposited tokens without a leak.
        for _ in 0..100_000 {
            now += MS;
            b.deposit(now);
        }
        // Steady state: (0.2 x 1000/s + 10/s) x 10 s = 2100.
        let avail = b.available(now);
        assert!((2050.0..=2110.0).contains(&avail), "{avail}");
    }

    #[test]
    fn an_idle_budget_refills_to_the_floor_reserve_and_no_further() {
        let b = RetryBudget::new(0.2, 10.0, 0);
        while b.try_withdraw(0) {}
        assert!(b.available(0) < 1.0);
        // After one second, about 10 tokens (slightly fewer: the leak).
        let one = b.available(S);
        assert!((9.4..=10.0).contains(&one), "{one}");
        // After an hour, the reserve, not 36 000 tokens.
        let hour = b.available(3600 * S);
        assert!((99.0..=100.0).contains(&hour), "{hour}");
    }

    #[test]
    fn a_clock_reading_in_the_past_mints_nothing() {
        let b = RetryBudget::new(0.0, 10.0, 10 * S);
        while b.try_withdraw(10 * S) {}
        for t in (0..10).map(|i| i * S) {
            assert!(!b.try_withdraw(t));
        }
        assert!(b.available(10 * S) < 1.0);
    }

    #[test]
    fn four_threads_at_one_instant_never_overdraw() {
        // At a fixed instant there is no floor and no leak, so the books must balance exactly:
        // initial + 0.2 x deposits = withdrawals + what is left, and what is left is >= 0.
        let b = Arc::new(RetryBudget::new(0.2, 10.0, 0));
        let ok = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (b, ok) = (b.clone(), ok.clone());
                std::thread::spawn(move || {
                    for i in 0..50_000u32 {
                        if i % 2 == 0 {
                            b.deposit(0);
                        }
                        if b.try_withdraw(0) {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let withdrawn = ok.load(Ordering::Relaxed) as u64;
        let deposits = 4 * 25_000u64;
        let left = b.balance.load(Ordering::Relaxed);
        assert_eq!(
            100 * ONE_TOKEN + deposits * 200_000,
            withdrawn * ONE_TOKEN + left
        );
        assert!(
            left < ONE_TOKEN,
            "every retry wanted a token, {left} left over"
        );
        assert_eq!(withdrawn, 100 + deposits / 5);
    }

    #[test]
    fn four_threads_with_moving_clocks_stay_within_the_bound() {
        let b = Arc::new(RetryBudget::new(0.2, 10.0, 0));
        let ok = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..4u64)
            .map(|k| {
                let (b, ok) = (b.clone(), ok.clone());
                std::thread::spawn(move || {
                    // Each thread's clock runs on its own, skewed by up to 3 us.
                    for i in 0..20_000u64 {
                        let now = i * 100_000 + k * 1_000;
                        b.deposit(now);
                        for _ in 0..2 {
                            if b.try_withdraw(now) {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let elapsed_s = (19_999 * 100_000 + 3_000) as f64 / S as f64;
        let bound = 100.0 + 0.2 * 80_000.0 + 10.0 * elapsed_s;
        let withdrawn = ok.load(Ordering::Relaxed) as f64;
        assert!(withdrawn <= bound, "{withdrawn} > {bound}");
        assert!(withdrawn >= 0.95 * bound, "{withdrawn} far below {bound}");
    }
}
