//! ebbtide's balancer: the reverse proxy, the balancing policies, the backend registry, the
//! signals and the admin API.

pub mod policies;
pub mod policy;

pub use policy::{BackendView, Candidates, Policy};
pub mod serve;
