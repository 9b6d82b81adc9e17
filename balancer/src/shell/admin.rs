//! The admin API: metrics, signals, the backend registry, events, health, and the live
//! dashboard (`GET /`, fed by the Server-Sent Events of `GET /api/v1/stream`). Loopback by
//! default; with a token configured every endpoint but `/healthz` and the page itself needs
//! `Authorization: Bearer TOKEN` (the stream, which browsers open with `EventSource` and so
//! without headers, also takes `?token=TOKEN`; compared in constant time like the header).
//!
//! [`AdminBase`] is what every admin listener of ebbtide answers, whoever serves it (the
//! balancer of `ebbtide serve`, `ebbtide autoscale`): one skeleton, so the two cannot drift
//! apart on authentication or on the shared routes.

use crate::api;
use crate::metrics::{DescriptorEncoder, MetricsSource};
use crate::proxy::Proxy;
use crate::registry::{BackendSpec, BackendState, Origin};
use crate::shell::dashboard::{self, FleetSource, LiveStreams, Sources, SseBody};
use bytes::Bytes;
use ebbtide_config::time::Nanos;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// The largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;

/// Something that reports recent decisions for `GET /api/v1/events` (the autoscaler).
pub trait EventSource: Send + Sync {
    /// The recent events, newest first, as JSON values (each with `at` and `last_at`).
    fn events(&self) -> Vec<serde_json::Value>;

    /// The events whose `last_at` is after `after` (all of them for `None`), newest first,
    /// and the newest event's `at` (0 for none): what the dashboard's stream sends each push.
    /// Sources that can stop early, without serializing every event, override it.
    fn events_after(&self, after: Option<u64>) -> (Vec<serde_json::Value>, u64) {
        let all = self.events();
        let field = |e: &serde_json::Value, k: &str| e.get(k).and_then(|v| v.as_u64());
        let newest = all.iter().filter_map(|e| field(e, "at")).max().unwrap_or(0);
        let fresh = all
            .into_iter()
            .filter(|e| after.is_none_or(|c| field(e, "last_at").unwrap_or(0) > c))
            .collect();
        (fresh, newest)
    }

    /// The autoscaler at a glance, for the dashboard (`cost_per_hour` is filled in from the
    /// backends listed).
    fn summary(&self) -> Option<api::AutoscalerSummary> {
        None
    }
}

/// The admin API's state.
pub struct Admin {
    proxy: Arc<Proxy>,
    base: AdminBase,
    drain_timeout: std::time::Duration,
    initial_state: BackendState,
}

/// `ebbtide_admin_streams`: the base's own family, after every source's.
struct StreamsGauge(LiveStreams);

impl MetricsSource for StreamsGauge {
    fn encode(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        crate::metrics::single_gauge(
            e,
            "ebbtide_admin_streams",
            "Dashboard streams (GET /api/v1/stream) open now.",
            self.0.get() as u64,
        )
    }
}

/// An admin API answer.
pub type AdminResponse = Response<UnsyncBoxBody<Bytes, Infallible>>;

/// What every admin listener answers: `/healthz` without a token; with a token configured, 401
/// for anything else that does not carry it (compared in constant time); `GET /metrics` from
/// its sources; `GET /api/v1/events`; the dashboard (`GET /`, without a token: it holds no
/// data) and its stream (`GET /api/v1/stream`); 405 on those paths for other methods.
pub struct AdminBase {
    token: Option<String>,
    metrics: Mutex<Vec<Arc<dyn MetricsSource>>>,
    sources: Arc<Sources>,
    streams: LiveStreams,
}

impl AdminBase {
    /// A base requiring `token` (when set) on every route but `/healthz`.
    pub fn new(token: Option<String>) -> AdminBase {
        AdminBase {
            token,
            metrics: Mutex::new(Vec::new()),
            sources: Arc::new(Sources::default()),
            streams: LiveStreams::default(),
        }
    }

    /// Sets the fleet the dashboard's stream shows, and starts keeping the last minutes of
    /// it for the charts (when called within a tokio runtime).
    pub fn set_fleet(&self, source: Arc<dyn FleetSource>) {
        self.sources.set_fleet(source);
    }

    /// The dashboard streams open now (also `ebbtide_admin_streams` in `/metrics`).
    pub fn live_streams(&self) -> usize {
        self.streams.get()
    }

    /// Ends the dashboard's streams (within half a second), which would otherwise never
    /// finish: call it when shutting down, before waiting for connections to drain.
    pub fn close_streams(&self) {
        self.sources.close();
    }

    /// Adds lines to `/metrics`, after the sources added before.
    pub fn add_metrics(&self, source: Arc<dyn MetricsSource>) {
        self.metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(source);
    }

    /// Sets what `/api/v1/events` shows.
    pub fn set_events(&self, source: Arc<dyn EventSource>) {
        self.sources.set_events(source);
    }

    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let header_ok = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|t| same_secret(t.trim().as_bytes(), token.as_bytes()));
        // EventSource cannot send headers: the stream alone also takes the token in its URL.
        header_ok
            || (req.uri().path() == api::paths::STREAM
                && dashboard::query_param(req.uri().query(), "token")
                    .is_some_and(|t| same_secret(t.as_bytes(), token.as_bytes())))
    }

    fn stream(&self, req_query: Option<&str>) -> AdminResponse {
        let body = SseBody::new(
            self.sources.clone(),
            dashboard::keepalive_from_query(req_query),
            &self.streams,
        );
        let mut r = Response::new(body.boxed_unsync());
        let h = r.headers_mut();
        h.insert(header::CONTENT_TYPE, "text/event-stream".parse().unwrap());
        h.insert(header::CACHE_CONTROL, "no-cache".parse().unwrap());
        r
    }

    /// The answer to `req` when it is a shared route or not authorized; `None` when it is the
    /// caller's own route to answer (authorized already). `own` lists the caller's own paths,
    /// for 405 on a wrong method.
    pub fn answer<B>(&self, req: &Request<B>, own: &[&str]) -> Option<AdminResponse> {
        let path = req.uri().path();
        if path == "/healthz" {
            return Some(match *req.method() {
                Method::GET | Method::HEAD => text(StatusCode::OK, "ok\n"),
                _ => text(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n"),
            });
        }
        if path == "/" {
            return Some(match *req.method() {
                Method::GET | Method::HEAD => page(self.token.is_some()),
                _ => text(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n"),
            });
        }
        if !self.authorized(req) {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "401 Unauthorized: send Authorization: Bearer TOKEN\n",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
            return Some(r);
        }
        match (req.method(), path) {
            (&Method::GET, "/metrics") => {
                let mut sources = self
                    .metrics
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                sources.push(Arc::new(StreamsGauge(self.streams.clone())));
                let mut r = text(StatusCode::OK, crate::metrics::encode(&sources));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    crate::metrics::CONTENT_TYPE.parse().unwrap(),
                );
                Some(r)
            }
            (&Method::GET, "/api/v1/events") => {
                let events = self
                    .sources
                    .events()
                    .map(|s| s.events())
                    .unwrap_or_default();
                Some(json(StatusCode::OK, &events))
            }
            (&Method::GET, api::paths::STREAM) => Some(self.stream(req.uri().query())),
            (_, "/metrics" | "/api/v1/events" | api::paths::STREAM) => Some(text(
                StatusCode::METHOD_NOT_ALLOWED,
                "405 Method Not Allowed\n",
            )),
            (_, p)
                if own
                    .iter()
                    .any(|o| p == *o || p.starts_with(&format!("{o}/"))) =>
            {
                None
            }
            _ => Some(text(StatusCode::NOT_FOUND, "404 Not Found\n")),
        }
    }
}

fn full(body: impl Into<Bytes>) -> UnsyncBoxBody<Bytes, Infallible> {
    Full::new(body.into()).boxed_unsync()
}

/// The dashboard page; told whether to ask for the token. Its script and style are inline, and
/// the policy allows nothing else (no other origin, no plugin, no frame).
fn page(token_required: bool) -> AdminResponse {
    let body = if token_required {
        Bytes::from(dashboard::PAGE.replacen(
            "<body data-auth=\"\">",
            "<body data-auth=\"required\">",
            1,
        ))
    } else {
        Bytes::from_static(dashboard::PAGE.as_bytes())
    };
    let mut r = Response::new(full(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        "text/html; charset=utf-8".parse().unwrap(),
    );
    h.insert(header::CACHE_CONTROL, "no-cache".parse().unwrap());
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'"
            .parse()
            .unwrap(),
    );
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> AdminResponse {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().unwrap(),
    );
    r
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> AdminResponse {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    r
}

/// Compares in time independent of where the first difference is.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Admin {
    /// The admin API over `proxy`; `token` is required on requests when set; deleted backends
    /// drain for up to `drain_timeout`; registered ones start in `initial_state`.
    pub fn new(
        proxy: Arc<Proxy>,
        token: Option<String>,
        drain_timeout: std::time::Duration,
        initial_state: BackendState,
    ) -> Self {
        let base = AdminBase::new(token);
        base.add_metrics(proxy.clone());
        base.set_fleet(Arc::new(ProxyFleet(proxy.clone())));
        Admin {
            proxy,
            base,
            drain_timeout,
            initial_state,
        }
    }

    /// Adds lines to `/metrics`, after the proxy's.
    pub fn add_metrics(&self, source: Arc<dyn MetricsSource>) {
        self.base.add_metrics(source);
    }

    /// Sets what `/api/v1/events` shows.
    pub fn set_events(&self, source: Arc<dyn EventSource>) {
        self.base.set_events(source);
    }

    /// The dashboard streams open now.
    pub fn live_streams(&self) -> usize {
        self.base.live_streams()
    }

    /// Ends the dashboard's streams: see [`AdminBase::close_streams`].
    pub fn close_streams(&self) {
        self.base.close_streams();
    }

    /// Answers one admin request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> AdminResponse {
        const OWN: &[&str] = &[api::paths::SIGNALS, api::paths::BACKENDS];
        if let Some(r) = self.base.answer(&req, OWN) {
            return r;
        }
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        match (method, path.as_str()) {
            (Method::GET, api::paths::SIGNALS) => {
                let now = self.proxy.clock.now();
                json(StatusCode::OK, &signals_snapshot(&self.proxy, now))
            }
            (Method::GET, api::paths::BACKENDS) => {
                let now = self.proxy.clock.now();
                let snap = self.proxy.registry.snapshot();
                let list: Vec<api::BackendInfo> = snap
                    .backends
                    .iter()
                    .map(|b| b.info(now, &snap.slow_start))
                    .collect();
                json(StatusCode::OK, &list)
            }
            (Method::POST, api::paths::BACKENDS) => self.register(req).await,
            (Method::DELETE, p) if p.starts_with("/api/v1/backends/") => {
                let id = &p["/api/v1/backends/".len()..];
                let Ok(id) = id.parse::<u64>() else {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("400 Bad Request: `{id}` is not a backend id\n"),
                    );
                };
                let now = self.proxy.clock.now();
                match self.proxy.registry.get(id) {
                    Some(b) => {
                        // Already draining: that drain is under way; answer the same.
                        if b.apply(crate::lifecycle::Event::AdminDelete).is_some() {
                            tracing::info!(backend = %b.address, id, "backend deleted through the admin API; draining");
                            let drain = crate::health::drain(
                                self.proxy.clone(),
                                b.clone(),
                                self.drain_timeout,
                            );
                            tokio::spawn(drain);
                        }
                        json(
                            StatusCode::ACCEPTED,
                            &b.info(now, &self.proxy.registry.snapshot().slow_start),
                        )
                    }
                    None => text(
                        StatusCode::NOT_FOUND,
                        format!("404 Not Found: no backend {id}\n"),
                    ),
                }
            }
            (_, "/api/v1/signals" | "/api/v1/backends") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "405 Method Not Allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "404 Not Found\n"),
        }
    }

    async fn register(&self, req: Request<Incoming>) -> AdminResponse {
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return text(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "413: the body is larger than 64 KiB or was cut off\n",
                )
            }
        };
        let reg: api::Register = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("400 Bad Request: {e}; expected {{\"address\": \"host:port\", \"capacity\"?: N, \"weight\"?: N, \"lease_seconds\"?: S, \"cost_per_hour\"?: X, \"protocol\"?: \"http1\"|\"h2c\"|\"h2\"|\"https\", \"server_name\"?: NAME}}\n"),
                )
            }
        };
        if reg.capacity == Some(0) {
            return text(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: capacity must be at least 1\n",
            );
        }
        if reg.weight == 0 {
            return text(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: weight must be at least 1\n",
            );
        }
        if !(reg.cost_per_hour.is_finite() && reg.cost_per_hour >= 0.0) {
            return text(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: cost_per_hour must be a number >= 0\n",
            );
        }
        let now = self.proxy.clock.now();
        let lease_until = match reg.lease_seconds {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Some(now + (s * 1e9) as u64),
            Some(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "400 Bad Request: lease_seconds must be in (0, 86400]\n",
                )
            }
        };
        let launched = match reg.launched {
            None => None,
            Some(l)
                if l.seconds_ago.is_finite() && l.seconds_ago >= 0.0 && !l.provider.is_empty() =>
            {
                Some((l.provider, now.saturating_sub((l.seconds_ago * 1e9) as u64)))
            }
            Some(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "400 Bad Request: launched needs a provider and seconds_ago >= 0\n",
                )
            }
        };
        let spec = BackendSpec {
            address: reg.address,
            capacity: reg.capacity,
            weight: reg.weight,
            cost_per_hour: reg.cost_per_hour,
            origin: Origin::Api,
            lease_until,
            slow_start: None,
            transport: crate::registry::Transport {
                protocol: reg.protocol.unwrap_or_default(),
                tls_ca: None,
                server_name: reg.server_name,
            },
        };
        match self.proxy.registry.add_or_renew(spec, self.initial_state) {
            Ok((b, new)) => {
                if let Some((provider, decided_at)) = launched {
                    b.expect_first_request(&provider, decided_at);
                }
                if new {
                    tracing::info!(backend = %b.address, id = b.id, "backend registered through the admin API");
                    self.proxy.dispatcher.dispatch();
                }
                json(
                    if new {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    },
                    &b.info(now, &self.proxy.registry.snapshot().slow_start),
                )
            }
            Err(e) => text(StatusCode::BAD_REQUEST, format!("400 Bad Request: {e}\n")),
        }
    }
}

/// The answer of `GET /api/v1/signals` for `proxy` at `now`: the signal window plus the
/// cumulative counters and current gauges. The in-process autoscaler reads the same snapshot.
pub fn signals_snapshot(proxy: &Proxy, now: Nanos) -> api::Signals {
    let window = proxy.signals.snapshot(now);
    let snap = proxy.registry.snapshot();
    let c = &proxy.counters;
    api::Signals {
        arrival_rate: window.arrival_rate,
        arrivals: window.arrivals,
        arrivals_total: c.arrivals.load(Ordering::Relaxed),
        backend_ms: window.backend_ms,
        backends: api::BackendCounts::from_array(proxy.registry.count_by_state()),
        completion_rate: window.completion_rate,
        completions: window.completions,
        completions_total: c.completions.load(Ordering::Relaxed),
        in_flight: snap.backends.iter().map(|b| b.in_flight() as u64).sum(),
        latency_ms: window.latency_ms,
        policy: proxy.dispatcher.policy().name().to_string(),
        queue_depth: proxy.dispatcher.queue_depth() as u64,
        shed: window.shed,
        shed_total: c.shed_queue_full.load(Ordering::Relaxed)
            + c.shed_queue_timeout.load(Ordering::Relaxed),
        span_seconds: window.span_seconds,
        window_seconds: window.window_seconds,
    }
}

/// The balancer of this process as the dashboard shows it.
struct ProxyFleet(Arc<Proxy>);

impl FleetSource for ProxyFleet {
    fn signals(&self) -> Option<api::Signals> {
        Some(signals_snapshot(&self.0, self.0.clock.now()))
    }

    fn backends(&self) -> Vec<api::BackendInfo> {
        let now = self.0.clock.now();
        let snap = self.0.registry.snapshot();
        snap.backends
            .iter()
            .map(|b| b.info(now, &snap.slow_start))
            .collect()
    }

    fn retries_total(&self) -> u64 {
        self.0.counters.retries.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lines(&'static str);

    impl MetricsSource for Lines {
        fn encode(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
            crate::metrics::single_gauge(e, self.0, "h", 1u64)
        }
    }

    fn get(path: &str, token: Option<&str>) -> Request<()> {
        let mut b = Request::get(path);
        if let Some(t) = token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        b.body(()).unwrap()
    }

    fn status(r: Option<AdminResponse>) -> Option<u16> {
        r.map(|r| r.status().as_u16())
    }

    #[test]
    fn the_base_checks_the_token_on_everything_but_healthz() {
        let base = AdminBase::new(Some("s3cret".into()));
        base.add_metrics(Arc::new(Lines("a")));
        base.add_metrics(Arc::new(Lines("b")));
        let own = &["/api/v1/signals"];
        assert_eq!(status(base.answer(&get("/healthz", None), own)), Some(200));
        assert_eq!(status(base.answer(&get("/metrics", None), own)), Some(401));
        assert_eq!(
            status(base.answer(&get("/metrics", Some("s3cre")), own)),
            Some(401),
            "a prefix of the token is not the token"
        );
        assert_eq!(
            status(base.answer(&get("/api/v1/signals", Some("nope")), own)),
            Some(401),
            "the caller's own routes are behind the token too"
        );
        let r = base.answer(&get("/metrics", Some("s3cret")), own).unwrap();
        assert_eq!(r.status(), 200);
        let body = futures_body(r);
        assert!(
            body.starts_with("# HELP a h\n# TYPE a gauge\na 1\n# HELP b h\n# TYPE b gauge\nb 1\n")
                && body.contains("\nebbtide_admin_streams 0\n"),
            "every source, in the order added, before the base's own: {body}"
        );
        assert!(
            base.answer(&get("/api/v1/signals", Some("s3cret")), own)
                .is_none(),
            "the caller's own route is the caller's to answer"
        );
        assert_eq!(
            status(base.answer(&get("/nowhere", Some("s3cret")), own)),
            Some(404)
        );
        let post = Request::post("/metrics")
            .header(header::AUTHORIZATION, "Bearer s3cret")
            .body(())
            .unwrap();
        assert_eq!(status(base.answer(&post, own)), Some(405));
    }

    #[test]
    fn without_a_token_everything_is_open_and_events_are_empty() {
        let base = AdminBase::new(None);
        let r = base.answer(&get("/api/v1/events", None), &[]).unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(futures_body(r).trim(), "[]");
    }

    fn futures_body(r: AdminResponse) -> String {
        use http_body::Body;
        let mut body = std::pin::pin!(r.into_body());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let mut out = Vec::new();
        while let std::task::Poll::Ready(Some(Ok(frame))) = body.as_mut().poll_frame(&mut cx) {
            if let Ok(data) = frame.into_data() {
                out.extend_from_slice(&data);
            }
        }
        String::from_utf8(out).unwrap()
    }
}
