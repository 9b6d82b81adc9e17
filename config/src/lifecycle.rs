//! Config sections of the backend lifecycle: health checks, outlier ejection, draining, retries,
//! and at-most-once handling of `Idempotency-Key`.

use crate::time::HumanDuration;
use serde::{Deserialize, Serialize};

/// `[health]`: active health checks. With no `path`, backends are active as soon as they are
/// registered and only passive outlier detection judges them.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Health {
    /// Path probed with `GET`; a 2xx answer passes. Unset: no active checks.
    pub path: Option<String>,
    /// Time between two probes of one backend.
    pub interval: HumanDuration,
    /// A probe with no answer within this time fails.
    pub timeout: HumanDuration,
    /// Consecutive passes that bring an ejected backend back (a starting one needs one).
    pub rise: u32,
    /// Consecutive failures that eject an active backend.
    pub fall: u32,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            path: None,
            interval: HumanDuration::from_secs(1),
            timeout: HumanDuration::from_millis(500),
            rise: 2,
            fall: 3,
        }
    }
}

/// `[outlier]`: passive outlier detection from real traffic.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Outlier {
    /// Consecutive failures (connect errors, resets, timeouts, and 5xx when `count_5xx`) that
    /// eject a backend. 0 turns passive detection off.
    pub consecutive_failures: u32,
    /// Whether a 5xx answer counts as a failure.
    pub count_5xx: bool,
    /// The first ejection lasts this long; each further one adds as much again.
    pub base_ejection: HumanDuration,
    /// No ejection lasts longer.
    pub max_ejection: HumanDuration,
    /// Never eject more than this share of the fleet.
    pub max_ejected_share: f64,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: 5,
            count_5xx: false,
            base_ejection: HumanDuration::from_secs(5),
            max_ejection: HumanDuration::from_secs(300),
            max_ejected_share: 0.5,
        }
    }
}

/// `[lifecycle]`: how backends leave.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Lifecycle {
    /// A draining backend's in-flight requests get this long to finish before it is removed.
    pub drain_timeout: HumanDuration,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            drain_timeout: HumanDuration::from_secs(30),
        }
    }
}

/// `[retries]`: when a request is sent again to another backend.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Retries {
    /// Tries per request, the first included; 1 turns retries off.
    pub max_attempts: u32,
    /// Retries may be at most this share of requests (a retry budget against retry storms).
    pub budget_ratio: f64,
    /// ...plus this many retries per second regardless of traffic.
    pub min_per_second: f64,
    /// One try's limit for the response headers; 0s: `upstream.response_timeout`.
    pub per_try_timeout: HumanDuration,
    /// All tries of one request together; 0s: no limit beyond the per-try ones.
    pub deadline: HumanDuration,
    /// Request bodies up to this size are kept so that idempotent requests can be replayed.
    pub buffer_limit: usize,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            max_attempts: 3,
            budget_ratio: 0.2,
            min_per_second: 10.0,
            per_try_timeout: HumanDuration::from_secs(0),
            deadline: HumanDuration::from_secs(0),
            buffer_limit: 64 * 1024,
        }
    }
}

/// `[idempotency]`: requests that carry `Idempotency-Key` are executed at most once.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Idempotency {
    /// Whether `Idempotency-Key` is honoured.
    pub enabled: bool,
    /// A completed response is replayed for this long.
    pub ttl: HumanDuration,
    /// Responses with larger bodies are not stored (duplicates then get 409).
    pub max_body: usize,
    /// At most this many keys are remembered; the oldest completed ones go first.
    pub max_entries: usize,
}

impl Default for Idempotency {
    fn default() -> Self {
        Idempotency {
            enabled: true,
            ttl: HumanDuration::from_secs(300),
            max_body: 1024 * 1024,
            max_entries: 10_000,
        }
    }
}
