//! The balancing policies, one file each, all behind [`crate::policy::Policy`], and [`build`],
//! which makes the one `[balancer] policy` names.

mod central_queue;
mod choices;
mod consistent_hash;
mod cost_aware;
mod least_outstanding;
mod peak_ewma;
mod power_of_choices;
mod random;
mod round_robin;
mod weighted_round_robin;

#[cfg(test)]
mod test_support;

pub use central_queue::CentralQueue;
pub use choices::MAX_CHOICES;
pub(crate) use consistent_hash::spread;
pub use consistent_hash::{hash_key, ConsistentHash, VIRTUAL_NODES};
pub use cost_aware::CostAware;
pub use least_outstanding::LeastOutstanding;
pub use peak_ewma::{PeakEwmaP2c, DEFAULT_RTT_NS};
pub use power_of_choices::PowerOfChoices;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use weighted_round_robin::WeightedRoundRobin;

use crate::policy::Policy;
use ebbtide_config::{Balancer, PolicyKind};

/// Builds the policy that `[balancer]` names, with its knobs (`choices`, `utilisation_target`,
/// `seed`). `hash_key` and `ewma_decay` are the proxy's: it hashes the key with [`hash_key`] and
/// keeps the latency estimates the `peak_ewma` policy reads.
pub fn build(cfg: &Balancer) -> Box<dyn Policy> {
    match cfg.policy {
        PolicyKind::RoundRobin => Box::new(RoundRobin::new()),
        PolicyKind::WeightedRoundRobin => Box::new(WeightedRoundRobin::new()),
        PolicyKind::Random => Box::new(Random::new(cfg.seed)),
        PolicyKind::LeastOutstanding => Box::new(LeastOutstanding::new()),
        PolicyKind::P2c => Box::new(PowerOfChoices::new(cfg.choices, cfg.seed)),
        PolicyKind::PeakEwma => Box::new(PeakEwmaP2c::new(cfg.choices, cfg.seed)),
        PolicyKind::CentralQueue => Box::new(CentralQueue::new()),
        PolicyKind::ConsistentHash => Box::new(ConsistentHash::new()),
        PolicyKind::CostAware => Box::new(CostAware::new(cfg.utilisation_target)),
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::fleet;
    use super::*;
    use crate::slow_start::Ramp;
    use crate::BackendView;
    use ebbtide_config::rng::Rng;

    fn every_policy() -> Vec<(PolicyKind, Box<dyn Policy>)> {
        PolicyKind::ALL
            .iter()
            .map(|&kind| {
                let cfg = Balancer {
                    policy: kind,
                    ..Balancer::default()
                };
                (kind, build(&cfg))
            })
            .collect()
    }

    #[test]
    fn build_maps_every_kind_to_its_policy() {
        for (kind, policy) in every_policy() {
            assert_eq!(policy.name(), kind.name());
        }
    }

    #[test]
    fn every_policy_returns_none_on_an_empty_fleet() {
        let empty: Vec<BackendView> = Vec::new();
        for (kind, policy) in every_policy() {
            assert_eq!(policy.pick(&empty, None, 0), None, "{kind:?}");
            assert_eq!(policy.pick(&empty, Some(7), 0), None, "{kind:?}");
        }
    }

    #[test]
    fn every_policy_returns_none_when_nothing_has_a_free_slot() {
        for n in [1, 2, 3, 17] {
            let mut f = fleet(n);
            for (i, b) in f.iter_mut().enumerate() {
                match i % 3 {
                    0 => {
                        b.capacity = Some(2);
                        b.in_flight = 2;
                    }
                    1 => b.accepting = false,
                    _ => b.capacity = Some(0),
                }
            }
            for (kind, policy) in every_policy() {
                for key in [None, Some(42)] {
                    for _ in 0..20 {
                        assert_eq!(policy.pick(&f, key, 0), None, "{kind:?} n={n}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_policy_picks_only_free_accepting_backends_and_finds_one_if_any_while_some_ramp() {
        let mut rng = Rng::new(2024);
        for (kind, policy) in every_policy() {
            let mut f = fleet(12);
            for round in 0..3_000 {
                if round % 50 == 0 {
                    for b in &mut f {
                        b.capacity = [None, Some(1), Some(4)][rng.below(3)];
                        b.in_flight = rng.below(5) as u32;
                        b.accepting = rng.below(3) != 0;
                        b.weight = rng.below(3) as u32 + 1;
                        b.cost_per_hour = rng.below(3) as f64 * 0.05;
                        b.ewma_latency_ns = rng.below(4) as u64 * 1_000_000;
                        b.ramp = [
                            Ramp::FULL,
                            Ramp::FULL,
                            Ramp::from_f64(0.1),
                            Ramp::from_f64(0.6),
                        ][rng.below(4)];
                    }
                }
                let key = (rng.below(2) == 0).then(|| rng.next_u64());
                // central_queue fills a ramping backend's scaled slots only.
                let any_free = f.iter().any(|b| {
                    b.has_free_slot()
                        && (kind != PolicyKind::CentralQueue
                            || b.capacity.is_none_or(|c| b.in_flight < b.ramp.slots(c)))
                });
                match policy.pick(&f, key, 0) {
                    Some(i) => {
                        assert!(f[i].has_free_slot(), "{kind:?} picked {:?}", f[i]);
                        // Closed loop: the slot is taken until some completion frees it.
                        f[i].in_flight += 1;
                    }
                    None => assert!(!any_free, "{kind:?} returned None with a free slot"),
                }
                if rng.below(2) == 0 {
                    let j = rng.below(f.len());
                    f[j].in_flight = f[j].in_flight.saturating_sub(1);
                }
            }
        }
    }

    #[test]
    fn every_policy_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync + ?Sized>(_: &T) {}
        let f = fleet(8);
        for (_, policy) in every_policy() {
            assert_send_sync(&*policy);
            let policy: std::sync::Arc<dyn Policy> = policy.into();
            let threads: Vec<_> = (0..2)
                .map(|t| {
                    let policy = policy.clone();
                    let f = f.clone();
                    std::thread::spawn(move || {
                        for k in 0..1_000u64 {
                            let i = policy.pick(&f, Some(k * 2 + t), 0).unwrap();
                            assert!(i < f.len());
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
    }
}
