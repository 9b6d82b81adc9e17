//! What backends cost: when a backend is paid until (whole billing periods from launch), and a
//! meter of backend-seconds and billed cost as the fleet changes. Shared by the cost rules
//! ([`crate::deciders::CostRules`]), the live control loop and the simulator, so all three bill
//! the same way.

use ebbtide_config::autoscaler::Autoscaler;
use ebbtide_config::time::Nanos;

/// When a backend launched at `launched_at` is paid until, seen at `now`: billing counts whole
/// periods from launch, at least one. With `period` 0 (billing by the second) it is `now`.
pub(crate) fn paid_until(launched_at: Nanos, now: Nanos, period: Nanos) -> Nanos {
    if period == 0 {
        return now.max(launched_at);
    }
    let age = now.saturating_sub(launched_at);
    let periods = age.div_ceil(period).max(1);
    launched_at.saturating_add(periods.saturating_mul(period))
}

/// Billed time of a backend that ran `lifetime`: whole periods, at least one.
fn billed(lifetime: Nanos, period: Nanos) -> Nanos {
    if period == 0 {
        lifetime
    } else {
        lifetime.div_ceil(period).max(1) * period
    }
}

/// Accumulates what the fleet costs as it changes: backend-seconds, the cost by the second and
/// the billed cost (whole billing periods per backend). Sans-IO: the caller reports each change
/// of the fleet size with its time. Backends removed are taken to be the ones with the least
/// paid time left, as the cost rules pick them. With instance kinds, each kind is a class of
/// its own with its own price ([`CostMeter::with_prices`], [`CostMeter::on_kind_change`]).
#[derive(Debug, Clone)]
pub struct CostMeter {
    billing_period: Nanos,
    classes: Vec<Class>,
}

/// The backends of one price.
#[derive(Debug, Clone)]
struct Class {
    price_per_hour: f64,
    last_change: Nanos,
    /// Launch times of the running backends.
    running: Vec<Nanos>,
    /// Backend-nanoseconds up to `last_change`.
    backend_nanos: u128,
    /// Billed backend-nanoseconds of backends already removed.
    billed_removed: u128,
}

impl Class {
    fn new(price_per_hour: f64) -> Class {
        Class {
            price_per_hour,
            last_change: 0,
            running: Vec::new(),
            backend_nanos: 0,
            billed_removed: 0,
        }
    }

    fn change(&mut self, now: Nanos, count: u32, period: Nanos) {
        let now = now.max(self.last_change);
        self.backend_nanos += self.running.len() as u128 * (now - self.last_change) as u128;
        self.last_change = now;
        let count = count as usize;
        if count > self.running.len() {
            self.running.resize(count, now);
        } else if count < self.running.len() {
            self.running
                .sort_by_key(|&at| (paid_until(at, now, period) - now, u64::MAX - at));
            for at in self.running.drain(..self.running.len() - count) {
                self.billed_removed += billed(now - at, period) as u128;
            }
        }
    }

    fn backend_nanos(&self, now: Nanos) -> u128 {
        let since = now.saturating_sub(self.last_change) as u128;
        self.backend_nanos + self.running.len() as u128 * since
    }

    fn cost(&self, now: Nanos, period: Nanos) -> f64 {
        let running: u128 = self
            .running
            .iter()
            .map(|&at| billed(now.saturating_sub(at), period) as u128)
            .sum();
        (self.billed_removed + running) as f64 / 1e9 / 3600.0 * self.price_per_hour
    }
}

impl CostMeter {
    /// A meter for backends at `price_per_hour`, billed in `billing_period`s (0 = by the
    /// second), with no backend yet.
    pub fn new(price_per_hour: f64, billing_period: Nanos) -> CostMeter {
        CostMeter::with_prices(&[price_per_hour], billing_period)
    }

    /// A meter for several kinds of backend, one price each (index = kind).
    pub fn with_prices(prices_per_hour: &[f64], billing_period: Nanos) -> CostMeter {
        CostMeter {
            billing_period,
            classes: prices_per_hour.iter().map(|&p| Class::new(p)).collect(),
        }
    }

    /// A meter with the prices of `[autoscaler.cost]`.
    pub fn from_config(cfg: &Autoscaler) -> CostMeter {
        CostMeter::new(
            cfg.cost.backend_per_hour,
            cfg.cost.billing_period.as_nanos(),
        )
    }

    /// The fleet is `count` backends from `now` on (count every backend that is paid for:
    /// starting, ready and draining).
    pub fn on_fleet_change(&mut self, now: Nanos, count: u32) {
        self.on_kind_change(now, 0, count);
    }

    /// The backends of kind `kind` are `count` from `now` on.
    pub fn on_kind_change(&mut self, now: Nanos, kind: usize, count: u32) {
        let period = self.billing_period;
        if let Some(c) = self.classes.get_mut(kind) {
            c.change(now, count, period);
        }
    }

    /// Backends running since the last change.
    pub fn count(&self) -> u32 {
        self.classes.iter().map(|c| c.running.len() as u32).sum()
    }

    /// Backends of kind `kind` running since its last change.
    pub fn kind_count(&self, kind: usize) -> u32 {
        self.classes.get(kind).map_or(0, |c| c.running.len() as u32)
    }

    /// Backend-seconds used up to `now`.
    pub fn backend_seconds(&self, now: Nanos) -> f64 {
        let nanos: u128 = self.classes.iter().map(|c| c.backend_nanos(now)).sum();
        nanos as f64 / 1e9
    }

    /// Cost by the second up to `now`: backend-seconds x price.
    pub fn usage_cost(&self, now: Nanos) -> f64 {
        self.classes
            .iter()
            .map(|c| c.backend_nanos(now) as f64 / 1e9 / 3600.0 * c.price_per_hour)
            .sum()
    }

    /// Cost as billed up to `now`: every backend's whole periods so far, the current one
    /// included (it is paid when it starts).
    pub fn cost(&self, now: Nanos) -> f64 {
        self.classes
            .iter()
            .map(|c| c.cost(now, self.billing_period))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::S;

    #[test]
    fn paid_until_counts_whole_periods_from_launch() {
        assert_eq!(paid_until(0, 0, 60 * S), 60 * S);
        assert_eq!(paid_until(0, 59 * S, 60 * S), 60 * S);
        assert_eq!(paid_until(0, 60 * S, 60 * S), 60 * S);
        assert_eq!(paid_until(0, 61 * S, 60 * S), 120 * S);
        assert_eq!(paid_until(10 * S, 75 * S, 60 * S), 130 * S);
        assert_eq!(paid_until(10 * S, 75 * S, 0), 75 * S);
    }
    #[test]
    fn cost_meter_counts_backend_seconds_and_billed_periods() {
        let mut m = CostMeter::new(3.6, 60 * S); // 0.001 per backend-second
        m.on_fleet_change(0, 2);
        m.on_fleet_change(30 * S, 3);
        assert!((m.backend_seconds(30 * S) - 60.0).abs() < 1e-9);
        assert!((m.backend_seconds(40 * S) - 90.0).abs() < 1e-9);
        assert!((m.usage_cost(40 * S) - 0.09).abs() < 1e-9);
        // Billed: three backends, each a whole first minute paid at launch.
        assert!((m.cost(40 * S) - 0.18).abs() < 1e-9);
        // Down to 1 at 70s: the one launched at 30 (paid to 90) has the least paid time left
        // and goes first; the two launched at 0 (paid to 120 now) tie; one of them stays.
        m.on_fleet_change(70 * S, 1);
        assert_eq!(m.count(), 1);
        // Removed: one launched at 0 (2 periods) and the one at 30 (1 period): 180 backend-s;
        // the one still running: 2 periods, 120s.
        assert!((m.cost(70 * S) - 0.3).abs() < 1e-9, "{}", m.cost(70 * S));
        assert!((m.backend_seconds(70 * S) - (60.0 + 3.0 * 40.0)).abs() < 1e-9);
        // By the second, billed equals usage.
        let mut m = CostMeter::new(3.6, 0);
        m.on_fleet_change(0, 4);
        m.on_fleet_change(10 * S, 1);
        assert!((m.cost(20 * S) - m.usage_cost(20 * S)).abs() < 1e-12);
        assert!((m.usage_cost(20 * S) - 0.05).abs() < 1e-9);
    }

    #[test]
    fn each_kind_is_billed_at_its_own_price() {
        let mut m = CostMeter::with_prices(&[3.6, 36.0], 60 * S);
        m.on_kind_change(0, 0, 2);
        m.on_kind_change(0, 1, 1);
        m.on_kind_change(30 * S, 1, 0);
        assert_eq!((m.count(), m.kind_count(0), m.kind_count(1)), (2, 2, 0));
        // Kind 0: 2 x 40 s at 0.001/s; kind 1: 30 s at 0.01/s.
        assert!((m.usage_cost(40 * S) - (0.08 + 0.3)).abs() < 1e-9);
        // Billed: kind 0 two whole minutes (0.12), kind 1 one minute (0.6).
        assert!((m.cost(40 * S) - 0.72).abs() < 1e-9, "{}", m.cost(40 * S));
        assert!((m.backend_seconds(40 * S) - 110.0).abs() < 1e-9);
    }
}
