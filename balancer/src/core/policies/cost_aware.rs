//! Cost-aware packing: fill the cheapest backends first, up to a utilisation target, and use a
//! dearer one only when every cheaper one is at its target. Dear backends then sit idle when load
//! drops, and the autoscaler can drain and stop them first.
//!
//! Slow start scales a ramping backend's capacity by its factor (at least 1 slot, as HAProxy's
//! maxconn during `slowstart`) both for its target and for the fill once every backend is at
//! target; a ramping backend of unknown capacity compares (in flight + 1) / factor. It is
//! filled past its scaled capacity only when no other backend has a free slot.

use super::choices::ramped_load;
use crate::policy::{BackendView, Candidates, Policy};
use ebbtide_config::time::Nanos;
use std::sync::RwLock;

/// Packs requests onto the cheapest backends. Backends are ordered by `cost_per_hour`, then id
/// (cached per fleet generation: price and id do not change while a backend is in the fleet);
/// backends with the same price form a tier.
///
/// The pick, in that order:
/// 1. Walking tiers from the cheapest: the first backend of the tier (by id) with a known
///    capacity and fewer than `floor(target x capacity)` requests in flight (at least 1), so one
///    more keeps it at or below the target. Packing by id, not spreading, leaves the
///    highest ids of a tier idle too.
/// 2. If none in the tier, a backend of the tier with unknown capacity (`None`): its load cannot
///    be measured against a target, so it is never "at target"; the one with the fewest requests
///    in flight takes the request (least outstanding within the cheapest tier that has one). A
///    tier with such a backend therefore absorbs all load, and dearer tiers get none.
/// 3. When every backend is at its target: the cheapest backend with a free slot, filling up to
///    full capacity before a dearer one (the autoscaler should be adding capacity by then).
///
/// `None` only when no backend has a free slot.
#[derive(Debug)]
pub struct CostAware {
    utilisation_target: f64,
    order: RwLock<CostOrder>,
}

/// Backend indices from cheapest to dearest, with their price tier, for one generation.
#[derive(Debug, Default)]
struct CostOrder {
    generation: Option<u64>,
    /// (index into the fleet, tier number), sorted by (cost_per_hour, id).
    entries: Vec<(u32, u32)>,
}

impl CostOrder {
    fn rebuild(&mut self, backends: &dyn Candidates, generation: u64) {
        let mut by_cost: Vec<(f64, u64, u32)> = (0..backends.len())
            .map(|i| {
                let v = backends.view(i);
                (v.cost_per_hour, v.id, i as u32)
            })
            .collect();
        by_cost.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        self.entries.clear();
        let mut tier = 0u32;
        for (k, &(cost, _, index)) in by_cost.iter().enumerate() {
            if k > 0 && by_cost[k - 1].0.total_cmp(&cost).is_ne() {
                tier += 1;
            }
            self.entries.push((index, tier));
        }
        self.generation = Some(generation);
    }

    /// Whether the order was built for this fleet (a fleet of another size is another fleet,
    /// whatever its generation says).
    fn is_for(&self, generation: u64, backend_count: usize) -> bool {
        self.generation == Some(generation) && self.entries.len() == backend_count
    }
}

impl CostAware {
    /// Packs each backend up to `utilisation_target` of its capacity (clamped to 0..=1; NaN
    /// counts as 1) before a dearer one is used.
    pub fn new(utilisation_target: f64) -> Self {
        let utilisation_target = if utilisation_target.is_nan() {
            1.0
        } else {
            utilisation_target.clamp(0.0, 1.0)
        };
        CostAware {
            utilisation_target,
            order: RwLock::new(CostOrder::default()),
        }
    }

    /// Requests a backend of `capacity` may have in flight before it counts as at target.
    #[inline]
    fn target_in_flight(&self, capacity: u32) -> u32 {
        // The epsilon keeps 0.7 x 10 at 7 despite binary floating point.
        let slots = (f64::from(capacity) * self.utilisation_target + 1e-9).floor() as u32;
        slots.clamp(1, capacity.max(1))
    }

    fn pick_in_order(&self, backends: &dyn Candidates, entries: &[(u32, u32)]) -> Option<usize> {
        // The cheapest backend with a free slot within its slow-start share, and at all.
        let mut first_free: Option<usize> = None;
        let mut any_free: Option<usize> = None;
        // The least loaded backend of unknown capacity in the current tier.
        let mut unbounded: Option<(usize, u128)> = None;
        let mut current_tier = 0u32;
        for &(index, tier) in entries {
            if tier != current_tier {
                if let Some((i, _)) = unbounded {
                    return Some(i);
                }
                current_tier = tier;
            }
            let index = index as usize;
            let view: BackendView = backends.view(index);
            if !view.has_free_slot() {
                continue;
            }
            any_free.get_or_insert(index);
            match view.capacity {
                Some(capacity) => {
                    let capacity = view.ramp.slots(capacity);
                    if view.in_flight < capacity {
                        first_free.get_or_insert(index);
                    }
                    if view.in_flight < self.target_in_flight(capacity) {
                        return Some(index);
                    }
                }
                None => {
                    first_free.get_or_insert(index);
                    let load = ramped_load(&view);
                    if unbounded.is_none_or(|(_, least)| load < least) {
                        unbounded = Some((index, load));
                    }
                }
            }
        }
        unbounded.map(|(i, _)| i).or(first_free).or(any_free)
    }
}

impl Policy for CostAware {
    fn name(&self) -> &'static str {
        "cost_aware"
    }

    fn pick(&self, backends: &dyn Candidates, _key: Option<u64>, _now: Nanos) -> Option<usize> {
        if backends.is_empty() {
            return None;
        }
        let generation = backends.generation();
        {
            let order = self.order.read().unwrap_or_else(|e| e.into_inner());
            if order.is_for(generation, backends.len()) {
                return self.pick_in_order(backends, &order.entries);
            }
        }
        let mut order = self.order.write().unwrap_or_else(|e| e.into_inner());
        if !order.is_for(generation, backends.len()) {
            order.rebuild(backends, generation);
        }
        self.pick_in_order(backends, &order.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::{fleet, fleet_with_capacity};

    /// Picks `count` times, each pick taking a slot; returns the indices picked.
    fn fill(p: &CostAware, f: &mut [BackendView], count: usize) -> Vec<Option<usize>> {
        (0..count)
            .map(|_| {
                let i = p.pick(&&*f, None, 0);
                if let Some(i) = i {
                    f[i].in_flight += 1;
                }
                i
            })
            .collect()
    }

    #[test]
    fn fills_the_cheap_backend_to_target_before_touching_the_dear_one() {
        let p = CostAware::new(0.8);
        let mut f = fleet_with_capacity(2, 10);
        f[0].cost_per_hour = 0.10; // dear, listed first
        f[1].cost_per_hour = 0.01;
        let picks = fill(&p, &mut f, 8);
        assert!(picks.iter().all(|&i| i == Some(1)), "{picks:?}");
        assert_eq!((f[0].in_flight, f[1].in_flight), (0, 8));
        // Cheap at target: the dear one fills to its target next.
        let picks = fill(&p, &mut f, 8);
        assert!(picks.iter().all(|&i| i == Some(0)), "{picks:?}");
        // Both at target: cheapest first up to capacity, then nothing.
        assert_eq!(fill(&p, &mut f, 2), [Some(1), Some(1)]);
        assert_eq!(fill(&p, &mut f, 2), [Some(0), Some(0)]);
        assert_eq!(p.pick(&f, None, 0), None);
        // When load drops, new requests go back to the cheap backend and the dear one drains.
        f[1].in_flight = 3;
        assert_eq!(fill(&p, &mut f, 5), [Some(1); 5]);
    }

    #[test]
    fn packs_by_id_within_a_price_tier() {
        let p = CostAware::new(0.5);
        let mut f = fleet_with_capacity(3, 4);
        f[0].id = 30;
        f[1].id = 10;
        f[2].id = 20;
        assert_eq!(
            fill(&p, &mut f, 6),
            [Some(1), Some(1), Some(2), Some(2), Some(0), Some(0)]
        );
    }

    #[test]
    fn unknown_capacity_is_least_outstanding_within_the_cheapest_tier() {
        let p = CostAware::new(0.8);
        let mut f = fleet(3);
        f[0].cost_per_hour = 0.5;
        f[0].capacity = Some(100);
        f[1].cost_per_hour = 0.1;
        f[2].cost_per_hour = 0.1;
        fill(&p, &mut f, 40);
        assert_eq!(f[0].in_flight, 0, "the dear backend got traffic: {f:?}");
        assert_eq!((f[1].in_flight, f[2].in_flight), (20, 20));
        // Take the cheap tier out: the dear one is used.
        f[1].accepting = false;
        f[2].accepting = false;
        assert_eq!(p.pick(&f, None, 0), Some(0));
    }

    #[test]
    fn a_small_backend_takes_at_least_one_request_before_a_dearer_one() {
        let p = CostAware::new(0.5);
        let mut f = fleet_with_capacity(2, 1);
        f[1].cost_per_hour = 1.0;
        assert_eq!(fill(&p, &mut f, 3), [Some(0), Some(1), None]);
    }

    /// A cheap backend that is ramping is packed to its target of capacity x factor before
    /// the dearer one is used, then to capacity x factor, and past it only when nothing else
    /// is free.
    #[test]
    fn a_ramping_backends_capacity_is_scaled() {
        use crate::slow_start::Ramp;
        for (f, target, scaled) in [(0.1, 1usize, 1usize), (0.5, 4, 5), (1.0, 8, 10)] {
            let p = CostAware::new(0.8);
            let mut fleet = fleet_with_capacity(2, 10);
            fleet[0].cost_per_hour = 0.01;
            fleet[0].ramp = Ramp::from_f64(f);
            fleet[1].cost_per_hour = 0.10;
            let picks = fill(&p, &mut fleet, 20);
            let on_cheap =
                |picks: &[Option<usize>]| picks.iter().filter(|&&i| i == Some(0)).count();
            assert!(
                picks[..target].iter().all(|&i| i == Some(0)),
                "f={f}: {picks:?}"
            );
            assert_eq!(picks[target], Some(1), "f={f}: {picks:?}");
            // 8 on the dear one to its target, then the cheap one to its scaled capacity, then
            // the dear one to its capacity, then the cheap one's remaining slots.
            assert_eq!(
                on_cheap(&picks[..target + 8 + (scaled - target)]),
                scaled,
                "f={f}: {picks:?}"
            );
            assert_eq!(fleet[0].in_flight + fleet[1].in_flight, 20);
        }
    }

    #[test]
    fn target_slots_round_down_and_stay_at_least_one() {
        let p = CostAware::new(0.7);
        assert_eq!(p.target_in_flight(10), 7);
        assert_eq!(p.target_in_flight(3), 2);
        assert_eq!(p.target_in_flight(1), 1);
        assert_eq!(CostAware::new(2.0).target_in_flight(5), 5);
        assert_eq!(CostAware::new(f64::NAN).target_in_flight(5), 5);
    }
}
