//! The balancing policies, one file each, all behind [`crate::policy::Policy`].

mod round_robin;

pub use round_robin::RoundRobin;

use crate::policy::Policy;
use ebbtide_config::{Balancer, PolicyKind};

/// Builds the policy that `[balancer]` names.
pub fn build(cfg: &Balancer) -> Box<dyn Policy> {
    match cfg.policy {
        PolicyKind::RoundRobin => Box::new(RoundRobin::new()),
        _ => Box::new(RoundRobin::new()),
    }
}
