//! ebbtide's balancer: the reverse proxy, the balancing policies, the backend registry, the
//! signals and the admin API.

pub mod admin;
pub mod body;
pub mod clock;
pub mod dispatch;
pub mod ewma;
pub mod histogram;
pub mod metrics;
pub mod policies;
pub mod policy;
pub mod proxy;
pub mod queue;
pub mod registry;
pub mod serve;
pub mod signals;

pub use policy::{BackendView, Candidates, Policy};
