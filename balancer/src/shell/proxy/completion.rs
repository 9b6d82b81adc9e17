//! The completion guard: what ends a request once its response has gone to the client.

use super::Proxy;
use crate::body::{OnEnd, ProxyBody};
use crate::dispatch::Slot;
use crate::pool::Conn;
use ebbtide_config::time::Nanos;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Lives inside the response body until the response ends: then it frees the slot, records the
/// latency, and (on a clean end) returns the connection to the backend's pool.
pub struct Completion {
    proxy: Arc<Proxy>,
    start: Nanos,
    slot: Option<Slot>,
    conn: Option<Conn>,
}

/// The body type of every response the proxy gives.
pub type Body = ProxyBody<Completion>;

impl Completion {
    /// The guard of a request that arrived at `start`, holding its backend slot and connection
    /// (none for an answer of ebbtide's own or a replay).
    pub(super) fn new(
        proxy: Arc<Proxy>,
        start: Nanos,
        slot: Option<Slot>,
        conn: Option<Conn>,
    ) -> Self {
        Completion {
            proxy,
            start,
            slot,
            conn,
        }
    }
}

impl OnEnd for Completion {
    fn on_end(&mut self) {
        if let (Some(conn), Some(slot)) = (self.conn.take(), self.slot.as_ref()) {
            slot.backend().pool.checkin(conn);
        }
    }

    fn poll_upstream(&mut self, cx: &mut std::task::Context<'_>) {
        if let Some(conn) = self.conn.as_mut() {
            conn.poll_drive(cx);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let now = self.proxy.clock.now();
        let latency = now.saturating_sub(self.start);
        self.proxy.signals.record_completion(latency, now);
        self.proxy
            .counters
            .completions
            .fetch_add(1, Ordering::Relaxed);
        self.proxy.duration.observe(latency);
    }
}
