//! Slow start: a backend that has just become active (newly launched or registered, or back
//! from an ejection) gets a share of requests that grows over a configured window instead of its
//! full share at once, so a cold backend (empty caches, JIT not warm, connection pools not
//! filled) is not flooded the moment it joins. HAProxy's `slowstart` and Envoy's slow-start mode
//! do the same.
//!
//! Pure data and functions: [`SlowStart::ramp`] turns "active since `t`" and `now` into a
//! [`Ramp`], a factor in (0, 1] that the proxy and the simulator put into each
//! [`crate::policy::BackendView`]. Each policy applies it in the way that fits it (see each
//! policy's docs): weights scaled (weighted round robin), a pick thinned with probability
//! 1 - factor (round robin, random, consistent hashing), the load divided by the factor as
//! HAProxy's leastconn key `(served + 1) / eweight` (least outstanding, p2c, peak-EWMA), slots
//! scaled as HAProxy's maxconn during slowstart (central queue, cost-aware packing).
//!
//! # The curve
//!
//! Envoy's: factor = max(min_weight, (elapsed / window)^(1 / aggression)). `aggression` 1 is
//! HAProxy's linear ramp; above 1 the share grows faster early on, below 1 slower. `min_weight`
//! (Envoy's `min_weight_percent`, 10% by default) keeps a ramping backend from getting nothing
//! at the very start, which would leave it cold for ever under policies that learn from traffic.

use ebbtide_config::time::Nanos;

/// A slow-start factor in (0, 1], in fixed point (units of 1/[`Ramp::FULL`]), so that policies
/// compare and scale integers: exact, and no float in their orderings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ramp(u32);

impl Ramp {
    /// The unit: a full share.
    const ONE: u32 = 1 << 16;

    /// A full share: the backend is not ramping.
    pub const FULL: Ramp = Ramp(Self::ONE);

    /// The factor `f`, clamped to (0, 1] (NaN counts as 1); never 0, so a ramping backend can
    /// always be picked when nothing else can.
    pub fn from_f64(f: f64) -> Ramp {
        if f.is_nan() {
            return Ramp::FULL;
        }
        let units = (f * f64::from(Self::ONE)).round();
        Ramp(units.clamp(1.0, f64::from(Self::ONE)) as u32)
    }

    /// The factor as a float in (0, 1].
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / f64::from(Self::ONE)
    }

    /// Whether this is a full share.
    #[inline]
    pub fn is_full(self) -> bool {
        self.0 >= Self::ONE
    }

    /// `weight` scaled by the factor, in units of 1/65536 (a full-share weight w is w x 65536):
    /// integer weights keep their exact ratios.
    #[inline]
    pub fn weight_units(self, weight: u32) -> u64 {
        u64::from(weight) * u64::from(self.0)
    }

    /// A load (a cost where lower is better) divided by the factor, in units of 1/65536, so that
    /// a backend at factor f looks as loaded with k requests as a full one with k / f.
    #[inline]
    pub fn inflate(self, load: u128) -> u128 {
        (load << 16) / u128::from(self.0.max(1))
    }

    /// The slots a backend of `capacity` may fill while ramping: capacity x factor rounded
    /// down, at least 1 (HAProxy's dynamic maxconn during slowstart: `max(1, maxconn x ratio)`).
    #[inline]
    pub fn slots(self, capacity: u32) -> u32 {
        if self.is_full() {
            return capacity;
        }
        let scaled = (u64::from(capacity) * u64::from(self.0)) >> 16;
        (scaled as u32).max(1).min(capacity)
    }

    /// Whether a pick whose random or hashed 64-bit `draw` is uniform takes this backend: true
    /// with probability equal to the factor (always at a full share).
    #[inline]
    pub fn admits(self, draw: u64) -> bool {
        self.is_full() || (draw >> 48) < u64::from(self.0)
    }
}

impl Default for Ramp {
    fn default() -> Self {
        Ramp::FULL
    }
}

/// A well-mixed 64-bit draw from two numbers (a pick counter or a request key, and a backend
/// id), for the deterministic thinning of [`Ramp::admits`]: the same inputs give the same draw.
#[inline]
pub fn draw(seed: u64, backend_id: u64) -> u64 {
    crate::policies::spread(seed ^ crate::policies::spread(backend_id.wrapping_add(0x9E37_79B9)))
}

/// The slow-start settings: `[balancer] slow_start`, `slow_start_aggression`,
/// `slow_start_min_percent`, with a backend's own `slow_start` window where it has one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    /// How long the ramp lasts; 0 turns slow start off.
    pub window: Nanos,
    /// The curve's exponent is 1 / aggression; 1 is linear.
    pub aggression: f64,
    /// The smallest factor while ramping, in (0, 1].
    pub min_weight: f64,
}

impl Default for SlowStart {
    fn default() -> Self {
        SlowStart::OFF
    }
}

impl SlowStart {
    /// Slow start off.
    pub const OFF: SlowStart = SlowStart {
        window: 0,
        aggression: 1.0,
        min_weight: 0.1,
    };

    /// The settings `[balancer]` gives.
    pub fn from_config(cfg: &ebbtide_config::Balancer) -> SlowStart {
        SlowStart {
            window: cfg.slow_start.as_nanos(),
            aggression: cfg.slow_start_aggression,
            min_weight: cfg.slow_start_min_percent / 100.0,
        }
    }

    /// The same with a backend's own window, where it has one.
    pub fn with_window(self, window: Option<Nanos>) -> SlowStart {
        SlowStart {
            window: window.unwrap_or(self.window),
            ..self
        }
    }

    /// The factor at `now` of a backend that became active at `since` (None: it is not
    /// ramping, e.g. it was there when the balancer started).
    #[inline]
    pub fn ramp(&self, since: Option<Nanos>, now: Nanos) -> Ramp {
        let Some(since) = since else {
            return Ramp::FULL;
        };
        let elapsed = now.saturating_sub(since);
        if self.window == 0 || elapsed >= self.window {
            return Ramp::FULL;
        }
        let t = elapsed as f64 / self.window as f64;
        // Linear for aggression 1, and for a value validation refuses (<= 0, NaN).
        let linear = self.aggression == 1.0 || self.aggression.is_nan() || self.aggression <= 0.0;
        let f = if linear {
            t
        } else {
            t.powf(1.0 / self.aggression)
        };
        Ramp::from_f64(f.max(self.min_weight))
    }
}

/// Whether a backend moving from `from` to `to` starts a slow-start ramp: on every move into
/// `active` (a first activation, or the way back from `ejected`), except a backend's first
/// activation when it was present at startup: HAProxy never applies slowstart when it starts
/// ("otherwise it would cause trouble to running servers"), only to servers seen failed or new.
pub fn starts_ramp(
    from: crate::lifecycle::BackendState,
    to: crate::lifecycle::BackendState,
    present_at_startup: bool,
) -> bool {
    use crate::lifecycle::BackendState::{Active, Starting};
    to == Active && from != Active && !(from == Starting && present_at_startup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::BackendState::*;

    const S: Nanos = 1_000_000_000;

    /// Whether the factor is `want`, to the fixed point's precision.
    fn is(r: Ramp, want: f64) -> bool {
        (r.as_f64() - want).abs() < 1e-4
    }

    fn linear(window_s: u64) -> SlowStart {
        SlowStart {
            window: window_s * S,
            aggression: 1.0,
            min_weight: 0.1,
        }
    }

    #[test]
    fn linear_ramp_grows_from_the_minimum_to_full() {
        let s = linear(100);
        assert_eq!(s.ramp(None, 5 * S), Ramp::FULL);
        assert!(is(s.ramp(Some(10 * S), 10 * S), 0.1), "the minimum");
        assert!(is(s.ramp(Some(0), 50 * S), 0.5));
        assert!(is(s.ramp(Some(0), 90 * S), 0.9));
        assert_eq!(s.ramp(Some(0), 100 * S), Ramp::FULL);
        assert_eq!(s.ramp(Some(0), 1_000 * S), Ramp::FULL);
        // A clock that reads before `since` (it cannot, but) gives the minimum, not a panic.
        assert!(is(s.ramp(Some(20 * S), 10 * S), 0.1));
    }

    #[test]
    fn off_means_full_at_once() {
        assert_eq!(SlowStart::OFF.ramp(Some(0), 0), Ramp::FULL);
        assert_eq!(linear(0).ramp(Some(7), 7), Ramp::FULL);
    }

    #[test]
    fn aggression_bends_the_curve_as_envoys() {
        let mut s = linear(100);
        s.aggression = 2.0; // sqrt: faster early
        assert!(is(s.ramp(Some(0), 25 * S), 0.5));
        s.aggression = 0.5; // square: slower early, floored at the minimum
        assert!(is(s.ramp(Some(0), 50 * S), 0.25));
        assert!(is(s.ramp(Some(0), 10 * S), 0.1));
    }

    #[test]
    fn a_backends_own_window_wins() {
        let s = linear(100).with_window(Some(10 * S));
        assert!(is(s.ramp(Some(0), 5 * S), 0.5));
        assert_eq!(linear(100).with_window(None), linear(100));
    }

    #[test]
    fn fixed_point_helpers() {
        let half = Ramp::from_f64(0.5);
        assert_eq!(half.weight_units(3) * 2, Ramp::FULL.weight_units(3));
        assert_eq!(half.inflate(10), Ramp::FULL.inflate(20));
        assert_eq!(half.slots(10), 5);
        assert_eq!(Ramp::from_f64(0.01).slots(10), 1);
        assert_eq!(Ramp::FULL.slots(0), 0);
        assert_eq!(Ramp::from_f64(0.0), Ramp(1));
        assert_eq!(Ramp::from_f64(f64::NAN), Ramp::FULL);
        assert_eq!(Ramp::from_f64(7.0), Ramp::FULL);
        let admitted = (0..10_000u64).filter(|&k| half.admits(draw(k, 42))).count();
        assert!((4_700..=5_300).contains(&admitted), "{admitted}");
        assert!((0..1_000u64).all(|k| Ramp::FULL.admits(draw(k, 1))));
    }

    #[test]
    fn which_moves_start_a_ramp() {
        assert!(starts_ramp(Starting, Active, false), "a new backend");
        assert!(!starts_ramp(Starting, Active, true), "present at startup");
        assert!(starts_ramp(Ejected, Active, true), "back from an ejection");
        assert!(!starts_ramp(Active, Ejected, false));
        assert!(!starts_ramp(Active, Draining, false));
    }
}
