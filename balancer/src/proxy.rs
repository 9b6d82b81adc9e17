//! The reverse proxy: one request in, one backend slot, one request out, the response streamed
//! back. Header hygiene per RFC 9110 7.6.1, `X-Forwarded-*`, timeouts mapped to 502/503/504.

use crate::body::ProxyBody;
use crate::clock::Clock;
use crate::dispatch::{Dispatcher, Shed, Slot};
use crate::histogram::LatencyHistogram;
use crate::policies::hash_key;
use crate::registry::Registry;
use crate::signals::SignalWindow;
use ebbtide_config::time::Nanos;
use ebbtide_config::HashKey;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
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
}

/// Counters of requests that ended without a backend's response.
#[derive(Debug, Default)]
pub struct ProxyCounters {
    /// Shed because the queue was full.
    pub shed_queue_full: AtomicU64,
    /// Shed after waiting the queue timeout.
    pub shed_queue_timeout: AtomicU64,
    /// Retries (the lifecycle issue adds them).
    pub retries: AtomicU64,
    /// Config reloads applied.
    pub reloads_ok: AtomicU64,
    /// Config reloads refused because the new file was invalid.
    pub reloads_failed: AtomicU64,
    /// Answered by ebbtide itself, by status: 400, 405, 502, 503, 504.
    pub local_responses: [AtomicU64; 5],
}

const LOCAL_CODES: [u16; 5] = [400, 405, 502, 503, 504];

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
    settings: RwLock<Arc<ProxySettings>>,
    client: Client<HttpConnector, Incoming>,
}

/// Builds the pooled keep-alive client that talks to backends.
pub fn upstream_client(cfg: &ebbtide_config::Upstream) -> Client<HttpConnector, Incoming> {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.connect_timeout.0));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(cfg.idle_timeout.0)
        .pool_max_idle_per_host(cfg.max_idle_per_backend)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

/// Drops slot, records latency: lives inside the response body until the response ends.
pub struct Completion {
    proxy: Arc<Proxy>,
    start: Nanos,
    _slot: Option<Slot>,
}

impl Drop for Completion {
    fn drop(&mut self) {
        let now = self.proxy.clock.now();
        let latency = now.saturating_sub(self.start);
        self.proxy.signals.record_completion(latency, now);
        self.proxy.duration.observe(latency);
    }
}

/// The body type of every response the proxy gives.
pub type Body = ProxyBody<Completion>;

impl Proxy {
    /// A proxy over `registry` and `dispatcher`.
    pub fn new(
        registry: Arc<Registry>,
        dispatcher: Arc<Dispatcher>,
        signals: SignalWindow,
        settings: ProxySettings,
        upstream: &ebbtide_config::Upstream,
        clock: Clock,
    ) -> Self {
        Proxy {
            registry,
            dispatcher,
            signals,
            duration: LatencyHistogram::new(),
            counters: ProxyCounters::default(),
            clock,
            settings: RwLock::new(Arc::new(settings)),
            client: upstream_client(upstream),
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> Arc<ProxySettings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the settings (config reload).
    pub fn set_settings(&self, s: ProxySettings) {
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
    }

    /// Handles one client request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<Body> {
        let start = self.clock.now();
        self.signals.record_arrival(start);
        if req.method() == Method::CONNECT {
            return self.local(
                start,
                None,
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported\n",
            );
        }
        let settings = self.settings();
        let key = settings
            .hash_key
            .as_ref()
            .and_then(|k| request_key(k, &req));
        let slot = match self.dispatcher.acquire(key).await {
            Ok(slot) => slot,
            Err(shed) => return self.shed(start, shed),
        };
        let backend = slot.backend().clone();
        let upstream_req = match prepare_upstream(req, &backend.authority, peer) {
            Ok(r) => r,
            Err(why) => return self.local(start, Some(slot), StatusCode::BAD_REQUEST, why),
        };
        let sent = self.clock.now();
        let result =
            tokio::time::timeout(settings.response_timeout, self.client.request(upstream_req))
                .await;
        match result {
            Ok(Ok(mut resp)) => {
                let now = self.clock.now();
                backend.ewma.observe(now.saturating_sub(sent), now);
                backend.count_response(resp.status().as_u16());
                strip_hop_by_hop(resp.headers_mut());
                *resp.version_mut() = Version::default();
                let guard = Completion {
                    proxy: self.clone(),
                    start,
                    _slot: Some(slot),
                };
                resp.map(|b| ProxyBody::upstream(b, guard))
            }
            Ok(Err(e)) => {
                backend.failures.fetch_add(1, Ordering::Relaxed);
                let connect = e.is_connect();
                tracing::warn!(backend = %backend.address, error = %error_chain(&e), "upstream request failed");
                let why = if connect {
                    "502 Bad Gateway: could not connect to the backend\n"
                } else {
                    "502 Bad Gateway: the backend closed the connection without a response\n"
                };
                self.local(start, Some(slot), StatusCode::BAD_GATEWAY, why)
            }
            Err(_) => {
                backend.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(backend = %backend.address, timeout = ?settings.response_timeout, "backend did not answer in time");
                self.local(
                    start,
                    Some(slot),
                    StatusCode::GATEWAY_TIMEOUT,
                    "504 Gateway Timeout: the backend did not answer in time\n",
                )
            }
        }
    }

    fn shed(self: Arc<Self>, start: Nanos, shed: Shed) -> Response<Body> {
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
        self: Arc<Self>,
        start: Nanos,
        slot: Option<Slot>,
        status: StatusCode,
        text: &'static str,
    ) -> Response<Body> {
        self.counters.count_local(status);
        let guard = Completion {
            proxy: self.clone(),
            start,
            _slot: slot,
        };
        let mut resp = Response::new(ProxyBody::full(text, Some(guard)));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
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

/// Removes hop-by-hop headers (RFC 9110 7.6.1): the fixed list and every header a `Connection`
/// header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// Turns a client request into the request to a backend: absolute URI to the backend, HTTP/1.1,
/// hop-by-hop headers removed, `Host` kept (or made from an HTTP/2 `:authority`),
/// `X-Forwarded-For` appended, `X-Forwarded-Proto` and `-Host` set.
pub fn prepare_upstream(
    mut req: Request<Incoming>,
    backend: &http::uri::Authority,
    peer: SocketAddr,
) -> Result<Request<Incoming>, &'static str> {
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let client_authority = req.uri().authority().cloned();
    let uri = Uri::builder()
        .scheme("http")
        .authority(backend.clone())
        .path_and_query(path)
        .build()
        .map_err(|_| "400 Bad Request: the request target cannot be forwarded\n")?;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if !headers.contains_key(header::HOST) {
        if let Some(a) = &client_authority {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                headers.insert(header::HOST, v);
            }
        }
    }
    let host = headers.get(header::HOST).cloned();
    let ip = peer.ip().to_string();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST.clone(), h);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
    Ok(req)
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
}
