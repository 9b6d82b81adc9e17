//! ebbtide's balancer: the reverse proxy, the balancing policies, the backend registry, the
//! signals and the admin API.

pub mod ewma;
pub mod histogram;
pub mod policies;
pub mod policy;
pub mod serve;
pub mod signals;

pub use policy::{BackendView, Candidates, Policy};
