//! The settings of the proxy that a config reload may change.

use ebbtide_config::HashKey;
use std::time::Duration;

/// The settings a config reload may change.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// How long a backend has to send response headers.
    pub response_timeout: Duration,
    /// Where the hash key comes from, when the policy uses one.
    pub hash_key: Option<HashKey>,
    /// Retry rules.
    pub retries: ebbtide_config::Retries,
    /// At-most-once rules.
    pub idempotency: ebbtide_config::Idempotency,
    /// Passive outlier detection.
    pub outlier: ebbtide_config::Outlier,
}

impl ProxySettings {
    /// Settings with every default, for tests and embedding.
    pub fn defaults() -> Self {
        ProxySettings {
            response_timeout: Duration::from_secs(30),
            hash_key: None,
            retries: Default::default(),
            idempotency: Default::default(),
            outlier: Default::default(),
        }
    }
}
