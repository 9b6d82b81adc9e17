//! The reverse proxy: one request in, a backend slot, one or more tries, the response streamed
//! back. Header hygiene per RFC 9110 7.6.1, `X-Forwarded-*`, timeouts mapped to 502/503/504,
//! retries only where they are safe, and at-most-once execution for `Idempotency-Key`.
//!
//! When a retry is safe:
//! - the request never reached a backend (no connection could be made, or hyper handed the
//!   request back unsent): any method;
//! - the backend answered 502/503, or the connection broke before response headers, or a try
//!   timed out: only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) whose body was
//!   empty or small enough to be kept (`retries.buffer_limit`);
//! - never once response bytes have gone to the client;
//! - and only while the retry budget (a share of requests plus a floor per second) allows.
//!
//! The first three are one pure rule, `retry::verdict`, that the try loop asks after every try;
//! the budget is asked only when the rule says a retry would be safe.
//!
//! One concern per file:
//! - `settings`: what a config reload may change;
//! - `counters`: what `/metrics` and the signals count beyond a backend's answer;
//! - `client_body`: the client's request body, bounded in time, its faults told from a backend's;
//! - `completion`: the guard that ends a request when its response ends;
//! - `headers`: header hygiene, `X-Forwarded-*`, the hash key;
//! - `forward`: the try loop;
//! - `grpc`: gRPC calls: recognised, streamed, their `grpc-timeout` as the deadline;
//! - `retry`: when a request may be sent again (pure: no I/O, no clock);
//! - `strict`: what a request head must be to be forwarded (target, Host, framing);
//! - `local`: ebbtide's own answers, each with its status and text;
//! - `idempotent`: at-most-once execution for `Idempotency-Key`;
//! - `upgrade`: WebSocket handshakes (HTTP/1.1 `Upgrade`, HTTP/2 extended CONNECT) to a backend;
//! - `tunnel`: an upgraded connection's bytes copied both ways, and how it ends;
//! - `ws_frame`: WebSocket frame boundaries, so that a close frame can be put in (pure).
//! - `request_id`: `X-Request-Id`, kept or made.
//! - `native`: the parse-once HTTP/1.1 lane (`[listener] http1 = "native"`): its connection
//!   driver and its try loop, on the same slots, retry rule, guard and counters as `forward`.
//! - `oracle` (tests and fuzz/ only): today's path and `core::h1`'s side by side, compared;
//!   `h1_differential` runs it on a corpus.

mod client_body;
mod completion;
mod counters;
mod forward;
mod grpc;
#[cfg(test)]
mod h1_differential;
mod headers;
mod idempotent;
mod local;
pub mod native;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod oracle;
mod request_id;
mod retry;
mod settings;
mod strict;
mod tunnel;
mod upgrade;
mod ws_frame;

pub use client_body::{BodyLimits, BodyWatch, ClientBody, ClientBodyError, ClientFault};
pub use completion::{Body, Completion};
pub use counters::ProxyCounters;
pub use headers::Peer;
pub use settings::ProxySettings;
pub use tunnel::Tunnels;

use crate::access_log::{AccessLog, AccessRecord};
use crate::clock::Clock;
use crate::dispatch::{Dispatcher, Slot};
use crate::histogram::LatencyHistogram;
use crate::idempotency::IdempotencyCache;
use crate::registry::Registry;
use crate::retry_budget::RetryBudget;
use crate::signals::SignalWindow;
use ebbtide_config::time::Nanos;
use http::{Request, Response};
use hyper::body::Incoming;
use idempotent::IDEMPOTENCY_KEY;
use local::LocalAnswer;
use request_id::{RequestIds, X_REQUEST_ID};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, RwLock};

/// Everything a request needs, shared by all connections.
pub struct Proxy {
    /// The fleet.
    pub(crate) registry: Arc<Registry>,
    /// Slots and the wait queue.
    pub(crate) dispatcher: Arc<Dispatcher>,
    /// The sliding window behind `/api/v1/signals`.
    pub(crate) signals: SignalWindow,
    /// `ebbtide_request_duration_seconds`.
    pub(crate) duration: LatencyHistogram,
    /// Counters of requests that ended in the balancer.
    pub(crate) counters: ProxyCounters,
    /// The proxy's clock.
    pub(crate) clock: Clock,
    /// Keys of `Idempotency-Key` requests.
    pub(crate) idempotency: IdempotencyCache,
    /// The access log, when `[log] access` is on.
    access: OnceLock<AccessLog>,
    /// `X-Request-Id`s.
    ids: RequestIds,
    live: RwLock<Arc<Live>>,
}

/// The settings in force and the retry budget that goes with them, swapped together on reload
/// so that a request takes one read lock and one reference count for both.
struct Live {
    settings: ProxySettings,
    budget: Arc<RetryBudget>,
}

impl Proxy {
    /// The fleet.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Slots and the wait queue.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// The proxy's clock: core time, as its signals are stamped.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// A proxy over `registry` and `dispatcher`.
    pub fn new(
        registry: Arc<Registry>,
        dispatcher: Arc<Dispatcher>,
        signals: SignalWindow,
        settings: ProxySettings,
        clock: Clock,
    ) -> Self {
        let now = clock.now();
        let budget = RetryBudget::new(
            settings.retries.budget_ratio,
            settings.retries.min_per_second,
            now,
        );
        Proxy {
            registry,
            dispatcher,
            signals,
            duration: LatencyHistogram::new(),
            counters: ProxyCounters::default(),
            clock,
            idempotency: IdempotencyCache::new(
                settings.idempotency.ttl.as_nanos(),
                settings.idempotency.max_entries,
            ),
            access: OnceLock::new(),
            ids: RequestIds::new(),
            live: RwLock::new(Arc::new(Live {
                settings,
                budget: Arc::new(budget),
            })),
        }
    }

    /// Turns the access log on (once; later calls are ignored).
    pub fn set_access_log(&self, log: AccessLog) {
        let _ = self.access.set(log);
    }

    /// The access log, when it is on.
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access.get()
    }

    /// A copy of the settings in force (for reports; requests read them without copying).
    pub fn settings(&self) -> ProxySettings {
        self.live().settings.clone()
    }

    /// Replaces the settings (config reload). The retry budget is kept, balance and all, unless
    /// its ratio or floor changed.
    pub fn set_settings(&self, s: ProxySettings) {
        let mut live = self.live.write().unwrap_or_else(|e| e.into_inner());
        let budget = if live.settings.retries.budget_ratio != s.retries.budget_ratio
            || live.settings.retries.min_per_second != s.retries.min_per_second
        {
            Arc::new(RetryBudget::new(
                s.retries.budget_ratio,
                s.retries.min_per_second,
                self.clock.now(),
            ))
        } else {
            live.budget.clone()
        };
        *live = Arc::new(Live {
            settings: s,
            budget,
        });
    }

    fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What every request does on arrival, whichever lane serves it: counted in the signals
    /// and the counters, a deposit in the retry budget; and the settings in force.
    fn arrive(&self) -> (Nanos, Arc<Live>) {
        let start = self.clock.now();
        self.signals.record_arrival(start);
        self.counters.arrivals.fetch_add(1, Ordering::Relaxed);
        let live = self.live();
        live.budget.deposit(start);
        (start, live)
    }

    /// Handles one client request.
    pub async fn handle(self: Arc<Self>, mut req: Request<Incoming>, peer: Peer) -> Response<Body> {
        let (start, live) = self.arrive();
        let id = live
            .settings
            .request_id
            .then(|| self.ids.ensure(req.headers_mut()));
        let record = self
            .access
            .get()
            .map(|_| AccessRecord::begin(start, &peer, &req, id.clone()));
        let mut resp = self.clone().respond(req, peer, start, live).await;
        if let Some(id) = id {
            resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
        }
        if let (Some(mut r), Some(log)) = (record, self.access.get()) {
            r.status = resp.status().as_u16();
            match resp.body_mut().guard_mut() {
                Some(guard) => guard.log = Some(r),
                None => log.submit(r),
            }
        }
        resp
    }

    async fn respond(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
        start: Nanos,
        live: Arc<Live>,
    ) -> Response<Body> {
        let h2 = match admit(&req, live.settings.max_uri_bytes) {
            Ok(upgrade::Ask::WebSocket { h2 }) => Some(h2),
            Ok(_) => None,
            Err(answer) => return self.local(start, None, answer),
        };
        if let Some(h2) = h2 {
            return self.tunnel(req, &peer, start, &live, h2).await;
        }
        if live.settings.idempotency.enabled {
            if let Some(key) = req.headers().get(&IDEMPOTENCY_KEY) {
                let key = match key.to_str() {
                    Ok(k) if !k.is_empty() && k.len() <= 255 => k.to_string(),
                    _ => return self.local(start, None, LocalAnswer::BadIdempotencyKey),
                };
                return self.handle_idempotent(req, peer, start, live, key).await;
            }
        }
        self.forward(req, &peer, start, &live).await.response
    }

    /// Ends every open tunnel (ebbtide is shutting down; see `tunnel`), and waits up to
    /// `within` for them to close.
    pub async fn close_tunnels(&self, within: std::time::Duration) {
        for b in &self.registry.snapshot().backends {
            b.tunnels.close_all();
        }
        let deadline = tokio::time::Instant::now() + within;
        while self.counters.tunnels_open.load(Ordering::Relaxed) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The completion guard of a request that arrived at `start`, with no connection.
    fn guard(self: &Arc<Self>, start: Nanos, slot: Option<Slot>) -> Completion {
        Completion::new(self.clone(), start, slot, None)
    }

    /// An answer of ebbtide's own, counted.
    fn local(
        self: &Arc<Self>,
        start: Nanos,
        slot: Option<Slot>,
        answer: LocalAnswer,
    ) -> Response<Body> {
        self.counters.count_local(answer);
        let guard = self.guard(start, slot);
        let guard = if answer.is_client_fault() {
            guard.client_fault()
        } else {
            guard
        };
        answer.response(Some(guard))
    }
}

/// Whether a request head may be forwarded at all: its target's length, its method (CONNECT is
/// not proxied) and [`strict::check`]; the answer to give when not.
fn admit<B>(req: &Request<B>, max_uri_bytes: usize) -> Result<upgrade::Ask, LocalAnswer> {
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len());
    if target_len > max_uri_bytes {
        return Err(LocalAnswer::UriTooLong);
    }
    // CONNECT is refused here but for HTTP/2's extended CONNECT of a WebSocket.
    let ask = upgrade::classify(req);
    if let upgrade::Ask::Refuse(answer) = ask {
        return Err(answer);
    }
    // WebSocket handshakes too: their Host and target are forwarded like any request's.
    strict::check(req.method(), req.uri(), req.version(), req.headers())?;
    Ok(ask)
}

/// The proxy's verdict on a request head, for the fuzz targets in fuzz/ (built only with the
/// `fuzzing` feature): the head as it would be sent to a backend (method, origin-form target,
/// headers after hop-by-hop removal, `Host` and `X-Forwarded-*`), or the status of ebbtide's
/// own answer. The same functions, in the same order, as [`Proxy::handle`] before a backend is
/// chosen.
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_forwarded_head<B>(
    req: Request<B>,
    peer: &Peer,
    max_uri_bytes: usize,
) -> Result<(http::Method, http::Uri, http::HeaderMap), http::StatusCode> {
    admit(&req, max_uri_bytes).map_err(LocalAnswer::status)?;
    let (parts, _) = req.into_parts();
    let head = headers::prepare_head(parts, peer).map_err(LocalAnswer::status)?;
    Ok((head.method, head.uri, head.headers))
}
