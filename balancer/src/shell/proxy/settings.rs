//! The settings of the proxy that a config reload may change.

use super::client_body::BodyLimits;
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
    /// Bodies with a `Content-Length` up to this many bytes are read whole before a backend
    /// slot is taken (`[listener] request_buffer`).
    pub request_buffer: usize,
    /// How long a request body may take (`[listener] body_read_timeout`, `min_body_rate`).
    pub body_limits: BodyLimits,
    /// Longest request target (`[listener] max_uri_bytes`); longer gets 414.
    pub max_uri_bytes: usize,
    /// A tunnel (WebSocket) with no byte either way for this long is closed
    /// (`[upstream] tunnel_idle_timeout`).
    pub tunnel_idle_timeout: Duration,
    /// Give every request an `X-Request-Id` (`[log] request_id`).
    pub request_id: bool,
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
            request_buffer: 64 * 1024,
            body_limits: BodyLimits {
                timeout: Duration::from_secs(10),
                min_rate: 1024,
            },
            max_uri_bytes: 8 * 1024,
            tunnel_idle_timeout: Duration::from_secs(3600),
            request_id: true,
        }
    }
}
