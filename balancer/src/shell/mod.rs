//! The IO shell around the core: the reverse proxy, connection pools, the backend registry with
//! its atomics, the dispatcher's async wait, health probes, listeners and the admin API.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod clock;
pub mod dashboard;
pub mod discovery;
pub mod dispatch;
pub(crate) mod head_deadline;
pub mod health;
pub mod idempotency;
pub mod metrics;
pub(crate) mod per_client;
pub mod pool;
pub mod proxy;
pub mod registry;
pub mod serve;
pub mod tls;
pub mod upstream_tls;
