//! ebbtide's balancer: the reverse proxy, the balancing policies, the backend registry, the
//! signals and the admin API.

pub mod admin;
pub mod api;
pub mod body;
pub mod clock;
pub mod dispatch;
pub mod ewma;
pub mod health;
pub mod histogram;
pub mod idempotency;
pub mod limit;
pub mod metrics;
pub mod outlier;
pub mod policies;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod queue;
pub mod registry;
pub mod retry_budget;
pub mod serve;
pub mod signals;

pub use policy::{BackendView, Candidates, Policy};
