//! The sans-IO core: plain data structures with time passed in, no sockets, no tokio, no hyper.
//! The proxy drives them per request; the simulator drives the very same code in virtual time;
//! unit tests drive them with a fake clock.

pub mod cold_start;
pub mod ewma;
// Not on the live path yet (issue 18: the next step wires it in); used by tests and fuzz/.
#[allow(dead_code)]
pub(crate) mod h1;
pub mod histogram;
pub mod lifecycle;
pub mod limit;
pub mod outlier;
pub mod policies;
pub mod policy;
pub mod queue;
pub mod retry_budget;
pub mod signals;
pub mod slow_start;
