//! Counters of what happened to requests beyond a backend's answer, read by `/metrics`, the
//! signals API and the admin API.

use super::local::{LocalAnswer, CODES};
use super::tunnel::End;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

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
    /// Answered by ebbtide itself, by answer (index: `LocalAnswer as usize`).
    local_responses: [AtomicU64; LocalAnswer::ALL.len()],
    /// Upgraded connections (WebSockets) open now, on every backend (a gauge).
    pub tunnels_open: AtomicU64,
    /// Tunnels ended, by why (index: the position in `End::ALL`).
    tunnels_closed: [AtomicU64; End::ALL.len()],
    /// Client connections accepted, per accepting listener (label, count): one per worker
    /// thread with `[runtime] accept = "per_worker"`, so an uneven spread is visible.
    accepted: OnceLock<Vec<(String, AtomicU64)>>,
}

impl ProxyCounters {
    /// Names the accepting listeners, once, when the server starts (index = position).
    pub(crate) fn set_accepting(&self, labels: impl IntoIterator<Item = String>) {
        let _ = self
            .accepted
            .set(labels.into_iter().map(|l| (l, AtomicU64::new(0))).collect());
    }

    /// Counts a client connection accepted by listener `listener`.
    pub(crate) fn count_accepted(&self, listener: usize) {
        if let Some((_, n)) = self.accepted.get().and_then(|a| a.get(listener)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (listener, client connections accepted) for every accepting listener.
    pub fn accepted(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.accepted
            .get()
            .into_iter()
            .flatten()
            .map(|(l, n)| (l.as_str(), n.load(Ordering::Relaxed)))
    }

    /// Counts an answer of ebbtide's own.
    pub(super) fn count_local(&self, answer: LocalAnswer) {
        self.local_responses[answer as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a tunnel that ended.
    pub(super) fn count_tunnel_end(&self, end: End) {
        let i = End::ALL.iter().position(|&e| e == end).unwrap_or(0);
        self.tunnels_closed[i].fetch_add(1, Ordering::Relaxed);
    }

    /// (reason, count) of the tunnels ended, for every reason (zeros included).
    pub fn tunnels_closed(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        End::ALL
            .iter()
            .zip(&self.tunnels_closed)
            .map(|(e, n)| (e.label(), n.load(Ordering::Relaxed)))
    }

    /// (status, count) of ebbtide's own answers, for every code of [`CODES`] in order (zeros
    /// included).
    pub fn local_counts(&self) -> impl Iterator<Item = (u16, u64)> + '_ {
        CODES.iter().map(move |&code| {
            let n = LocalAnswer::ALL
                .iter()
                .filter(|a| a.status().as_u16() == code)
                .map(|&a| self.local_responses[a as usize].load(Ordering::Relaxed))
                .sum();
            (code, n)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_counts_are_by_status_in_the_order_metrics_always_had() {
        let c = ProxyCounters::default();
        let zeros: Vec<_> = c.local_counts().collect();
        assert_eq!(
            zeros,
            [400, 405, 408, 409, 413, 414, 422, 501, 502, 503, 504].map(|code| (code, 0))
        );
        c.count_local(LocalAnswer::NoConnection);
        c.count_local(LocalAnswer::ClosedWithoutResponse);
        c.count_local(LocalAnswer::QueueFull);
        c.count_local(LocalAnswer::Timeout);
        c.count_local(LocalAnswer::NoHost);
        c.count_local(LocalAnswer::BodyCutOff);
        c.count_local(LocalAnswer::BodyCutOff);
        let counts: Vec<_> = c.local_counts().collect();
        assert_eq!(
            counts,
            [
                (400, 3),
                (405, 0),
                (408, 0),
                (409, 0),
                (413, 0),
                (414, 0),
                (422, 0),
                (501, 0),
                (502, 2),
                (503, 1),
                (504, 1)
            ]
        );
    }
}
