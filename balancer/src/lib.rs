//! ebbtide's balancer: the reverse proxy, the balancing policies, the backend registry and its
//! lifecycle, the signals and the admin API.
//!
//! Two halves, as the folders show: [`core`] is sans-IO (policies, the wait queue and its
//! dispatch rule, signal windows, EWMA, the adaptive limit, outlier detection, the retry budget,
//! the lifecycle's transitions), so the simulator drives it in virtual time; [`shell`] is the IO
//! around it (the proxy, pools, the registry's atomics, the dispatcher's async wait, health
//! probes, listeners, the admin API). Each module is also re-exported at the crate root.

#![warn(missing_docs, unreachable_pub)]

pub mod api;
pub mod core;
pub mod shell;

pub use crate::core::{
    cold_start, ewma, histogram, lifecycle, limit, outlier, policies, policy, queue, retry_budget,
    signals, slow_start,
};
pub use shell::{
    access_log, admin, body, clock, discovery, dispatch, health, idempotency, metrics, pool, proxy,
    registry, serve, tls, upstream_tls,
};

pub use policy::{BackendView, Candidates, Policy};
