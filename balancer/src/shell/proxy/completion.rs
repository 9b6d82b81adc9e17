//! The completion guard: what ends a request once its response has gone to the client.

use super::Proxy;
use crate::access_log::{AccessRecord, Tries};
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
    /// When the request was whole in the balancer (its body read, when it was buffered): the
    /// signals' latency counts from here, so a slow upload is not read as a slow fleet. `None`:
    /// a client fault, left out of the signals.
    ready: Option<Nanos>,
    /// When the backend that answered had the whole request: the signals' time at backends
    /// (the autoscaler's service time) counts from here. `None`: no backend answered.
    sent: Option<Nanos>,
    slot: Option<Slot>,
    conn: Option<Conn>,
    /// What the try loop learnt, for the access log.
    pub(super) tries: Tries,
    /// Body bytes sent so far.
    bytes: u64,
    /// The access log's record, when the log is on; written when the response ends.
    pub(super) log: Option<Box<AccessRecord>>,
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
            ready: Some(start),
            sent: None,
            slot,
            conn,
            tries: Tries::default(),
            bytes: 0,
            log: None,
        }
    }

    /// Counts the signals' latency from `ready` (the request's body was read by then).
    pub(super) fn ready_at(mut self, ready: Nanos) -> Self {
        self.ready = Some(ready);
        self
    }

    /// Counts the signals' time at the backend from `sent`.
    pub(super) fn sent_at(mut self, sent: Nanos) -> Self {
        self.sent = Some(sent);
        self
    }

    /// Returns the native lane's socket, its response read to the end, to the backend's pool.
    pub(super) fn check_in_raw(&mut self, s: tokio::net::TcpStream) {
        if let Some(slot) = self.slot.as_ref() {
            slot.backend().pool.checkin_raw(s);
        }
    }

    /// Leaves the request out of the signals: the client's doing, not the fleet's.
    pub(super) fn client_fault(mut self) -> Self {
        self.ready = None;
        self
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

    #[inline]
    fn on_data(&mut self, len: usize) {
        self.bytes += len as u64;
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let now = self.proxy.clock.now();
        let latency = now.saturating_sub(self.start);
        if let Some(ready) = self.ready {
            let at_backend = self.sent.map(|s| now.saturating_sub(s));
            self.proxy
                .signals
                .record_completion(now.saturating_sub(ready), at_backend, now);
        }
        self.proxy
            .counters
            .completions
            .fetch_add(1, Ordering::Relaxed);
        self.proxy.duration.observe(latency);
        if let Some(mut r) = self.log.take() {
            if let Some(log) = self.proxy.access_log() {
                r.duration_ns = latency;
                r.bytes = self.bytes;
                r.tries = self.tries;
                if let Some(slot) = self.slot.as_ref() {
                    r.backend = Some(slot.backend().clone());
                }
                log.submit(r);
            }
        }
    }
}
