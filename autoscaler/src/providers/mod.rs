//! Where backends come from. Each provider starts and stops instances and reports their
//! addresses; the caller registers them with the balancer.

pub mod local;

pub use local::LocalProvider;

/// One backend instance a provider started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The provider's name for it.
    pub id: String,
    /// host:port it serves on.
    pub address: String,
}
