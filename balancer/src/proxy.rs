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

use crate::body::{OnEnd, ProxyBody};
use crate::clock::Clock;
use crate::dispatch::{Dispatcher, Shed, Slot};
use crate::histogram::LatencyHistogram;
use crate::idempotency::{Claim, IdempotencyCache, Outcome, StoredResponse};
use crate::policies::hash_key;
use crate::pool::{Conn, UpstreamBody};
use crate::registry::{Backend, Registry};
use crate::retry_budget::RetryBudget;
use crate::signals::SignalWindow;
use bytes::{Bytes, BytesMut};
use ebbtide_config::time::Nanos;
use ebbtide_config::HashKey;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
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
    fn count_local(&self, status: StatusCode) {
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

/// Everything a request needs, shared by all connections.
pub struct Proxy {
    /// The fleet.
    pub registry: Arc<Registry>,
    /// Slots and the wait queue.
    pub dispatcher: Arc<Dispatcher>,
    /// The sliding window behind `/api/v1/signals`.
    pub signals: SignalWindow,
    /// `ebbtide_request_duration_seconds`.
    pub duration: LatencyHistogram,
    /// Counters of requests that ended in the balancer.
    pub counters: ProxyCounters,
    /// The proxy's clock.
    pub clock: Clock,
    /// Keys of `Idempotency-Key` requests.
    pub idempotency: IdempotencyCache,
    live: RwLock<Arc<Live>>,
}

/// The settings in force and the retry budget that goes with them, swapped together on reload
/// so that a request takes one read lock and one reference count for both.
struct Live {
    settings: ProxySettings,
    budget: Arc<RetryBudget>,
}

/// The client end of a connection, worked out once per connection instead of once per request:
/// its address and the `X-Forwarded-For` element that names it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    forwarded_for: HeaderValue,
}

impl Peer {
    /// The peer at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = addr.ip().to_string();
        Peer {
            addr,
            forwarded_for: HeaderValue::from_maybe_shared(Bytes::from(ip))
                .expect("an IP address is a valid header value"),
        }
    }
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Self {
        Peer::new(addr)
    }
}

/// Lives inside the response body until the response ends: then it frees the slot, records the
/// latency, and (on a clean end) returns the connection to the backend's pool.
pub struct Completion {
    proxy: Arc<Proxy>,
    start: Nanos,
    slot: Option<Slot>,
    conn: Option<Conn>,
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

/// The body type of every response the proxy gives.
pub type Body = ProxyBody<Completion>;

/// The request line and headers, kept across tries.
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

/// A response and whether any backend received the request.
struct Forwarded {
    response: Response<Body>,
    reached_backend: bool,
}

/// Whether a method may be sent twice without changing the outcome (RFC 9110 9.2.2).
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

impl Proxy {
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
            live: RwLock::new(Arc::new(Live {
                settings,
                budget: Arc::new(budget),
            })),
        }
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

    /// Handles one client request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: Peer) -> Response<Body> {
        let start = self.clock.now();
        self.signals.record_arrival(start);
        self.counters.arrivals.fetch_add(1, Ordering::Relaxed);
        let live = self.live();
        live.budget.deposit(start);
        if req.method() == Method::CONNECT {
            return self.local(
                start,
                None,
                StatusCode::METHOD_NOT_ALLOWED,
                "405 Method Not Allowed: CONNECT is not supported\n",
            );
        }
        if live.settings.idempotency.enabled {
            if let Some(key) = req.headers().get(&IDEMPOTENCY_KEY) {
                let key = match key.to_str() {
                    Ok(k) if !k.is_empty() && k.len() <= 255 => k.to_string(),
                    _ => {
                        return self.local(start, None, StatusCode::BAD_REQUEST, "400 Bad Request: Idempotency-Key must be 1 to 255 visible ASCII characters\n")
                    }
                };
                return self.handle_idempotent(req, peer, start, live, key).await;
            }
        }
        self.forward(req, &peer, start, &live).await.response
    }

    /// A request with `Idempotency-Key`: executed once, in a task of its own so that it finishes
    /// even if its client leaves; duplicates wait for it or replay its stored response.
    async fn handle_idempotent(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
        start: Nanos,
        live: Arc<Live>,
        key: String,
    ) -> Response<Body> {
        let mut fp = hash_key(req.method().as_str().as_bytes());
        fp ^= hash_key(req.uri().path().as_bytes()).rotate_left(1);
        let mut req = Some(req);
        loop {
            let claim = self.idempotency.claim(&key, fp, self.clock.now());
            let mut rx = match claim {
                Claim::Execute(tx) => {
                    let proxy = self.clone();
                    let req = req.take().expect("executed once");
                    let task = tokio::spawn(async move {
                        let fwd = proxy.forward(req, &peer, start, &live).await;
                        let max_body = live.settings.idempotency.max_body;
                        proxy.keep_for_replay(&key, tx, fwd, max_body).await
                    });
                    return match task.await {
                        Ok(resp) => resp,
                        Err(_) => self.local(start, None, StatusCode::BAD_GATEWAY, "502 Bad Gateway: the request failed inside the balancer\n"),
                    };
                }
                Claim::Wait(rx) => rx,
                Claim::Done(outcome) => return self.replay(start, outcome),
                Claim::Mismatch => {
                    return self.local(start, None, StatusCode::UNPROCESSABLE_ENTITY, "422 Unprocessable Content: this Idempotency-Key was used for a different request\n")
                }
                Claim::Full => {
                    return self.local(start, None, StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable: too many Idempotency-Keys in flight\n")
                }
            };
            let outcome = match rx.wait_for(|o| o.is_some()).await {
                Ok(o) => o.clone().expect("waited for Some"),
                Err(_) => Outcome::NotExecuted,
            };
            match outcome {
                // The first try never reached a backend: this duplicate may execute it.
                Outcome::NotExecuted => continue,
                other => return self.replay(start, other),
            }
        }
    }

    /// Reads the response of an executed keyed request (up to `max_body`), stores it for
    /// duplicates, and gives it to the first client.
    async fn keep_for_replay(
        self: &Arc<Self>,
        key: &str,
        tx: tokio::sync::watch::Sender<Option<Outcome>>,
        fwd: Forwarded,
        max_body: usize,
    ) -> Response<Body> {
        let now = self.clock.now();
        if !fwd.reached_backend {
            self.idempotency.finish(key, tx, Outcome::NotExecuted, now);
            return fwd.response;
        }
        let (parts, mut body) = fwd.response.into_parts();
        let mut kept = BytesMut::new();
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        kept.extend_from_slice(d);
                    }
                    if kept.len() > max_body {
                        self.idempotency
                            .finish(key, tx, Outcome::TooLarge, self.clock.now());
                        return Response::from_parts(
                            parts,
                            ProxyBody::prefixed(kept.freeze(), body),
                        );
                    }
                }
                Some(Err(e)) => {
                    // Executed, but the answer broke off: duplicates must not execute it again.
                    tracing::warn!(error = %e, "response to a keyed request broke off");
                    let stored = StoredResponse {
                        status: StatusCode::BAD_GATEWAY,
                        headers: HeaderMap::new(),
                        body: Bytes::from_static(
                            b"502 Bad Gateway: the backend's response broke off\n",
                        ),
                    };
                    let resp = stored_response::<Completion>(&stored, None);
                    self.idempotency.finish(
                        key,
                        tx,
                        Outcome::Stored(Arc::new(stored)),
                        self.clock.now(),
                    );
                    return resp;
                }
                None => break,
            }
        }
        let stored = Arc::new(StoredResponse {
            status: parts.status,
            headers: parts.headers.clone(),
            body: kept.freeze(),
        });
        self.idempotency
            .finish(key, tx, Outcome::Stored(stored.clone()), self.clock.now());
        // `body` (with its completion guard) is dropped here: the slot is freed and the latency
        // recorded now that the whole response has been read.
        drop(body);
        Response::from_parts(parts, ProxyBody::full(stored.body.clone(), None))
    }

    fn replay(self: &Arc<Self>, start: Nanos, outcome: Outcome) -> Response<Body> {
        match outcome {
            Outcome::Stored(stored) => {
                self.counters.idempotent_replays.fetch_add(1, Ordering::Relaxed);
                let guard = self.guard(start, None);
                stored_response(&stored, Some(guard))
            }
            _ => self.local(start, None, StatusCode::CONFLICT, "409 Conflict: this Idempotency-Key was executed but its response was too large to keep\n"),
        }
    }

    fn guard(self: &Arc<Self>, start: Nanos, slot: Option<Slot>) -> Completion {
        Completion {
            proxy: self.clone(),
            start,
            slot,
            conn: None,
        }
    }

    /// Sends a request to a backend, trying again where that is safe.
    async fn forward(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: &Peer,
        start: Nanos,
        live: &Live,
    ) -> Forwarded {
        let settings = &live.settings;
        let key = settings
            .hash_key
            .as_ref()
            .and_then(|k| request_key(k, &req));
        let (parts, incoming) = req.into_parts();
        let mut head = match prepare_head(parts, peer) {
            Ok(h) => h,
            Err(why) => return self.not_reached(start, StatusCode::BAD_REQUEST, why),
        };
        let retries = &settings.retries;
        let max_attempts = retries.max_attempts.max(1);
        let idempotent = is_idempotent(&head.method);
        let mut body = if incoming.is_end_stream() {
            UpstreamBody::Empty
        } else if idempotent
            && max_attempts > 1
            && content_length(&head.headers).is_some_and(|n| n <= retries.buffer_limit as u64)
        {
            match Limited::new(incoming, retries.buffer_limit).collect().await {
                Ok(c) => UpstreamBody::Full(Some(c.to_bytes())),
                Err(_) => return self.not_reached(start, StatusCode::BAD_REQUEST, "400 Bad Request: the request body was cut off or longer than its Content-Length\n"),
            }
        } else {
            UpstreamBody::Stream(incoming)
        };
        let replayable = body.replay().is_some();
        let per_try = if retries.per_try_timeout.0.is_zero() {
            settings.response_timeout
        } else {
            retries.per_try_timeout.0
        };
        let deadline = (!retries.deadline.0.is_zero()).then(|| start + retries.deadline.as_nanos());
        let budget = &live.budget;
        let mut avoid = None;
        let mut attempt = 0;
        let mut reached = false;
        let mut kept = None;
        loop {
            attempt += 1;
            if let Some(k) = kept.take() {
                head.headers = rebuild_headers(k);
            }
            let may_try_again = |proxy: &Proxy| -> bool {
                let now = proxy.clock.now();
                if attempt >= max_attempts || deadline.is_some_and(|d| now >= d) {
                    return false;
                }
                if budget.try_withdraw(now) {
                    proxy.counters.retries.fetch_add(1, Ordering::Relaxed);
                    true
                } else {
                    proxy
                        .counters
                        .retries_refused
                        .fetch_add(1, Ordering::Relaxed);
                    false
                }
            };
            let slot = match self.dispatcher.acquire(key, avoid).await {
                Ok(s) => s,
                Err(shed) => {
                    let resp = self.shed(start, shed);
                    return Forwarded {
                        response: resp,
                        reached_backend: reached,
                    };
                }
            };
            let backend = slot.backend().clone();
            let mut conn = match backend.pool.checkout().await {
                Ok(c) => c,
                Err(e) => {
                    self.on_failure(&backend, None);
                    tracing::warn!(backend = %backend.address, error = %e, attempt, "no connection to the backend");
                    if may_try_again(self) {
                        avoid = Some(backend.id);
                        continue;
                    }
                    let resp = self.local(
                        start,
                        Some(slot),
                        StatusCode::BAD_GATEWAY,
                        "502 Bad Gateway: could not connect to a backend\n",
                    );
                    return Forwarded {
                        response: resp,
                        reached_backend: reached,
                    };
                }
            };
            let retry_after_send = idempotent && replayable && attempt < max_attempts;
            let this_body = match body.replay() {
                Some(b) => b,
                None => std::mem::replace(&mut body, UpstreamBody::Empty),
            };
            // hyper consumes what it sends. When this try may be followed by another, keep a
            // flat copy of the headers (one allocation, no hashing) to rebuild them from.
            kept = retry_after_send.then(|| keep_headers(&head.headers));
            let mut up = Request::new(this_body);
            *up.method_mut() = head.method.clone();
            *up.uri_mut() = if retry_after_send {
                head.uri.clone()
            } else {
                std::mem::take(&mut head.uri)
            };
            *up.version_mut() = Version::HTTP_11;
            *up.headers_mut() = std::mem::take(&mut head.headers);
            let reused = conn.reused;
            let sent_at = self.clock.now();
            let in_flight = backend.in_flight();
            let limit = match deadline {
                Some(d) => per_try.min(Duration::from_nanos(d.saturating_sub(sent_at))),
                None => per_try,
            };
            let result = tokio::time::timeout(limit, conn.send(up)).await;
            match result {
                Ok(Ok(mut resp)) => {
                    reached = true;
                    let now = self.clock.now();
                    let rtt = now.saturating_sub(sent_at);
                    let status = resp.status();
                    backend.count_response(status.as_u16());
                    let is_5xx = status.is_server_error();
                    if is_5xx && settings.outlier.count_5xx {
                        self.on_failure(&backend, None);
                    } else {
                        backend.on_success(rtt, in_flight, now);
                    }
                    if matches!(status.as_u16(), 502 | 503)
                        && retry_after_send
                        && may_try_again(self)
                    {
                        avoid = Some(backend.id);
                        continue;
                    }
                    strip_hop_by_hop(resp.headers_mut());
                    *resp.version_mut() = Version::default();
                    let guard = Completion {
                        proxy: self.clone(),
                        start,
                        slot: Some(slot),
                        conn: Some(conn),
                    };
                    return Forwarded {
                        response: resp.map(|b| ProxyBody::upstream(b, guard)),
                        reached_backend: true,
                    };
                }
                Ok(Err(mut e)) => {
                    self.on_failure(&backend, Some((sent_at, in_flight)));
                    if let Some(unsent) = e.take_message() {
                        // Handed back unsent: it never reached the backend.
                        let (p, b) = unsent.into_parts();
                        head.uri = p.uri;
                        head.headers = p.headers;
                        kept = None;
                        if !replayable {
                            body = b;
                        }
                        tracing::debug!(backend = %backend.address, reused, "connection not usable; request not sent");
                        if may_try_again(self) {
                            avoid = Some(backend.id);
                            continue;
                        }
                        let resp = self.local(
                            start,
                            Some(slot),
                            StatusCode::BAD_GATEWAY,
                            "502 Bad Gateway: could not send the request to a backend\n",
                        );
                        return Forwarded {
                            response: resp,
                            reached_backend: reached,
                        };
                    }
                    reached = true;
                    tracing::warn!(backend = %backend.address, error = %error_chain(e.error()), reused, "backend closed the connection without a response");
                    if retry_after_send && may_try_again(self) {
                        avoid = Some(backend.id);
                        continue;
                    }
                    let resp = self.local(
                        start,
                        Some(slot),
                        StatusCode::BAD_GATEWAY,
                        "502 Bad Gateway: the backend closed the connection without a response\n",
                    );
                    return Forwarded {
                        response: resp,
                        reached_backend: true,
                    };
                }
                Err(_) => {
                    reached = true;
                    self.on_failure(&backend, Some((sent_at, in_flight)));
                    tracing::warn!(backend = %backend.address, timeout = ?limit, "backend did not answer in time");
                    if retry_after_send && may_try_again(self) {
                        avoid = Some(backend.id);
                        continue;
                    }
                    let resp = self.local(
                        start,
                        Some(slot),
                        StatusCode::GATEWAY_TIMEOUT,
                        "504 Gateway Timeout: the backend did not answer in time\n",
                    );
                    return Forwarded {
                        response: resp,
                        reached_backend: true,
                    };
                }
            }
        }
    }

    /// A failed try: feeds passive outlier detection and, for a sent request, the limiter.
    fn on_failure(&self, backend: &Arc<Backend>, sent: Option<(Nanos, u32)>) {
        backend.failures.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now();
        let live = self.live();
        let outlier = &live.settings.outlier;
        backend.on_failure(sent.map(|(at, n)| (now.saturating_sub(at), n)), now);
        if let Some(ejection) = backend.record_outlier_failure(outlier, now) {
            let snap = self.registry.snapshot();
            let ejected = snap
                .backends
                .iter()
                .filter(|b| b.state() == crate::registry::BackendState::Ejected)
                .count();
            let allowed =
                crate::outlier::may_eject(ejected, snap.backends.len(), outlier.max_ejected_share);
            if allowed && backend.eject(ejection.until) {
                tracing::warn!(
                    backend = %backend.address,
                    ejections = ejection.count,
                    for_ms = ejection.until.saturating_sub(now) / 1_000_000,
                    "backend ejected after consecutive failures"
                );
            } else {
                backend.cancel_ejection(ejection);
            }
        }
    }

    fn not_reached(
        self: &Arc<Self>,
        start: Nanos,
        status: StatusCode,
        why: &'static str,
    ) -> Forwarded {
        Forwarded {
            response: self.local(start, None, status, why),
            reached_backend: false,
        }
    }

    fn shed(self: &Arc<Self>, start: Nanos, shed: Shed) -> Response<Body> {
        let counter = match shed {
            Shed::QueueFull => &self.counters.shed_queue_full,
            Shed::QueueTimeout => &self.counters.shed_queue_timeout,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.signals.record_shed(self.clock.now());
        let retry_after = self.dispatcher.retry_after_secs();
        let why = match shed {
            Shed::QueueFull => {
                "503 Service Unavailable: every backend is busy and the queue is full\n"
            }
            Shed::QueueTimeout => "503 Service Unavailable: no backend became free in time\n",
        };
        let mut resp = self.local(start, None, StatusCode::SERVICE_UNAVAILABLE, why);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        resp
    }

    fn local(
        self: &Arc<Self>,
        start: Nanos,
        slot: Option<Slot>,
        status: StatusCode,
        text: &'static str,
    ) -> Response<Body> {
        self.counters.count_local(status);
        let guard = self.guard(start, slot);
        let mut resp = Response::new(ProxyBody::full(text, Some(guard)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

fn stored_response<G: OnEnd>(stored: &StoredResponse, guard: Option<G>) -> Response<ProxyBody<G>> {
    let mut resp = Response::new(ProxyBody::full(stored.body.clone(), guard));
    *resp.status_mut() = stored.status;
    *resp.headers_mut() = stored.headers.clone();
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    resp.headers_mut().insert(
        HeaderName::from_static("idempotent-replayed"),
        HeaderValue::from_static("true"),
    );
    resp
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A flat copy of `h`, every value in order, to rebuild it with [`rebuild_headers`].
fn keep_headers(h: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut v = Vec::with_capacity(h.len());
    v.extend(h.iter().map(|(k, val)| (k.clone(), val.clone())));
    v
}

/// The map [`keep_headers`] copied, with the same names and values in the same order.
fn rebuild_headers(kept: Vec<(HeaderName, HeaderValue)>) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(kept.len());
    for (k, v) in kept {
        h.append(k, v);
    }
    h
}

/// The full chain of an error's causes, for a log line that says what actually happened.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The hash key of a request, for `consistent_hash`.
pub fn request_key<B>(key: &HashKey, req: &Request<B>) -> Option<u64> {
    match key {
        HashKey::Path => Some(hash_key(req.uri().path().as_bytes())),
        HashKey::Header(name) => req
            .headers()
            .get(name.as_str())
            .map(|v| hash_key(v.as_bytes())),
        HashKey::Cookie(name) => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| hash_key(v.as_bytes()))
            }),
    }
}

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` is one of [`HOP_BY_HOP`]: standard names compare as enum tags, the two
/// others as short strings, with no hashing.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
}

/// Removes hop-by-hop headers (RFC 9110 7.6.1): the fixed list and every header a `Connection`
/// header names. Most messages carry none: one pass over the names (no hashing) finds that out
/// before any removal is tried.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Turns a client request head into the head sent to backends: origin-form target, hop-by-hop
/// headers removed, `Host` kept (or made from an HTTP/2 `:authority`), `X-Forwarded-For`
/// appended, `X-Forwarded-Proto` and `-Host` set.
fn prepare_head(parts: http::request::Parts, peer: &Peer) -> Result<Head, &'static str> {
    let http::request::Parts {
        method,
        uri,
        mut headers,
        ..
    } = parts;
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let target = Uri::from(path);
    strip_hop_by_hop(&mut headers);
    if !headers.contains_key(header::HOST) {
        match uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            Some(v) => {
                headers.insert(header::HOST, v);
            }
            None => return Err("400 Bad Request: the request has no Host\n"),
        }
    }
    let host = headers.get(header::HOST).cloned();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            HeaderValue::from_str(&format!("{prev}, {}", peer.addr.ip())).ok()
        }
        _ => Some(peer.forwarded_for.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST.clone(), h);
    }
    Ok(Head {
        method,
        uri: target,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret, Keep-Alive"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_alone() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("1"));
        h.append("x-multi", HeaderValue::from_static("2"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        // A single non-standard hop-by-hop name is still found.
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn kept_headers_rebuild_the_same_map() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example"));
        h.append("accept", HeaderValue::from_static("a"));
        h.append("x-b", HeaderValue::from_static("1"));
        h.append("accept", HeaderValue::from_static("b"));
        h.append("x-b", HeaderValue::from_static("2"));
        let rebuilt = rebuild_headers(keep_headers(&h));
        assert_eq!(rebuilt, h);
        let order = |m: &HeaderMap| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.to_str().unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(order(&rebuilt), order(&h));
    }

    #[test]
    fn forwarded_for_is_the_peer_or_appended_to_the_clients() {
        let peer = Peer::new("192.0.2.7:5555".parse().unwrap());
        let head = |xff: Option<&'static str>| {
            let mut b = Request::builder().uri("/x?y=1").header("host", "h");
            if let Some(v) = xff {
                b = b.header("x-forwarded-for", v);
            }
            prepare_head(b.body(()).unwrap().into_parts().0, &peer).unwrap()
        };
        assert_eq!(head(None).headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(
            head(Some("10.0.0.1")).headers["x-forwarded-for"],
            "10.0.0.1, 192.0.2.7"
        );
        assert_eq!(head(Some(" ")).headers["x-forwarded-for"], "192.0.2.7");
        let v6 = Peer::new("[2001:db8::1]:80".parse().unwrap());
        assert_eq!(v6.forwarded_for, "2001:db8::1");
        assert_eq!(head(None).uri, "/x?y=1");
        assert_eq!(head(None).headers["x-forwarded-host"], "h");
    }

    #[test]
    fn cookie_and_header_keys() {
        let req = Request::builder()
            .uri("/a/b?x=1")
            .header("cookie", "a=1; session=abc; z=2")
            .header("x-user", "u7")
            .body(())
            .unwrap();
        assert_eq!(request_key(&HashKey::Path, &req), Some(hash_key(b"/a/b")));
        assert_eq!(
            request_key(&HashKey::Cookie("session".into()), &req),
            Some(hash_key(b"abc"))
        );
        assert_eq!(
            request_key(&HashKey::Header("x-user".into()), &req),
            Some(hash_key(b"u7"))
        );
        assert_eq!(request_key(&HashKey::Header("x-none".into()), &req), None);
        assert_eq!(request_key(&HashKey::Cookie("nope".into()), &req), None);
    }

    #[test]
    fn idempotent_methods() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::TRACE,
        ] {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
        }
    }
}
