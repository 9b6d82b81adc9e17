//! Counters of what happened to requests beyond a backend's answer, read by `/metrics`, the
//! signals API and the admin API.

use http::StatusCode;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of what happened to requests beyond a backend's answer.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    /// Requests received (cumulative, for rates over any interval).
    pub arrivals: AtomicU64,
    /// Responses finished (cumulative).
    pub completions: AtomicU64,
    /// Shed because the queue was full.
    pub shed_queue_full: AtomicU64,
    /// Shed after waiting the queue timeout.
    pub shed_queue_timeout: AtomicU64,
    /// Tries after the first.
    pub retries: AtomicU64,
    /// Retries refused by the budget.
    pub retries_refused: AtomicU64,
    /// Responses replayed for a duplicate `Idempotency-Key`.
    pub idempotent_replays: AtomicU64,
    /// Config reloads applied.
    pub reloads_ok: AtomicU64,
    /// Config reloads refused because the new file was invalid.
    pub reloads_failed: AtomicU64,
    /// Answered by ebbtide itself, by status.
    pub local_responses: [AtomicU64; LOCAL_CODES.len()],
}

const LOCAL_CODES: [u16; 8] = [400, 405, 409, 413, 422, 502, 503, 504];

impl ProxyCounters {
    pub(super) fn count_local(&self, status: StatusCode) {
        if let Some(i) = LOCAL_CODES.iter().position(|&c| c == status.as_u16()) {
            self.local_responses[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (status, count) of ebbtide's own answers.
    pub fn local_counts(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        LOCAL_CODES
            .iter()
            .zip(&self.local_responses)
            .map(|(&c, n)| (c, n.load(Ordering::Relaxed)))
    }
}
