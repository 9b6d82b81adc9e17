//! The balancer as a running server: binds the listener and the admin API, builds the registry,
//! policy, dispatcher and proxy from config, serves until told to stop, then drains.

use crate::admin::Admin;
use crate::clock::Clock;
use crate::dispatch::Dispatcher;
use crate::policies;
use crate::pool::PoolConfig;
use crate::proxy::{Peer, Proxy, ProxySettings};
use crate::registry::{BackendSpec, BackendState, Origin, Registry, RegistryConfig};
use crate::signals::SignalWindow;
use ebbtide_config::{Config, HashKey, PolicyKind};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A bound, ready-to-run balancer.
pub struct Server {
    /// The proxy and everything it shares.
    pub proxy: Arc<Proxy>,
    /// The admin API.
    pub admin: Arc<Admin>,
    listener: std::sync::Mutex<Option<TcpListener>>,
    admin_listener: std::sync::Mutex<Option<TcpListener>>,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    listener_cfg: ebbtide_config::Listener,
    health: ebbtide_config::Health,
    drain_timeout: Duration,
}

fn settings(cfg: &Config) -> ProxySettings {
    ProxySettings {
        response_timeout: cfg.upstream.response_timeout.0,
        hash_key: (cfg.balancer.policy == PolicyKind::ConsistentHash)
            .then(|| HashKey::parse(&cfg.balancer.hash_key).unwrap_or(HashKey::Path)),
        retries: cfg.retries.clone(),
        idempotency: cfg.idempotency.clone(),
        outlier: cfg.outlier.clone(),
        request_buffer: cfg.listener.request_buffer,
        body_limits: crate::proxy::BodyLimits {
            timeout: cfg.listener.body_read_timeout.0,
            min_rate: cfg.listener.min_body_rate,
        },
        max_uri_bytes: cfg.listener.max_uri_bytes,
    }
}

/// The registry settings `cfg` asks for.
pub fn registry_config(cfg: &Config) -> RegistryConfig {
    RegistryConfig {
        ewma_decay: cfg.balancer.ewma_decay.as_nanos(),
        pool: PoolConfig {
            connect_timeout: cfg.upstream.connect_timeout.0,
            idle_timeout: cfg.upstream.idle_timeout.0,
            max_idle: cfg.upstream.max_idle_per_backend,
        },
        adaptive_limit: cfg.overload.adaptive_limit,
        outlier: crate::outlier::OutlierConfig {
            consecutive_failures: cfg.outlier.consecutive_failures,
            base_ejection: cfg.outlier.base_ejection.as_nanos(),
            max_ejection: cfg.outlier.max_ejection.as_nanos(),
            ..Default::default()
        },
    }
}

/// The state in active health checks start in: `starting` until a probe passes, or `active` at
/// once when there are no active checks.
pub fn initial_state(cfg: &Config) -> BackendState {
    if cfg.health.path.is_some() {
        BackendState::Starting
    } else {
        BackendState::Active
    }
}

async fn bind(what: &str, address: &str) -> Result<TcpListener, String> {
    TcpListener::bind(address)
        .await
        .map_err(|e| format!("cannot listen for {what} on {address}: {e}"))
}

impl Server {
    /// Builds everything from `cfg` and binds both listeners (an address with port 0 gets a free
    /// port; [`Server::local_addr`] tells which).
    pub async fn bind(cfg: &Config) -> Result<Server, String> {
        let clock = Clock::new();
        let registry = Arc::new(Registry::new(registry_config(cfg), clock));
        for b in &cfg.backends {
            registry
                .add_or_renew(
                    BackendSpec {
                        address: b.address.clone(),
                        capacity: b.capacity,
                        weight: b.weight,
                        cost_per_hour: b.cost_per_hour,
                        origin: Origin::Static,
                        lease_until: None,
                    },
                    initial_state(cfg),
                )
                .map_err(|e| format!("backend {}: {e}", b.address))?;
        }
        let policy: Arc<dyn crate::Policy> = policies::build(&cfg.balancer).into();
        let dispatcher = Arc::new(Dispatcher::new(
            registry.clone(),
            policy,
            cfg.overload.max_queue,
            cfg.overload.queue_timeout.0,
            clock,
        ));
        let signals = SignalWindow::new(cfg.signals.window.as_nanos(), clock.now());
        let proxy = Arc::new(Proxy::new(
            registry,
            dispatcher,
            signals,
            settings(cfg),
            clock,
        ));
        let admin = Arc::new(Admin::new(
            proxy.clone(),
            cfg.admin.token.clone(),
            cfg.lifecycle.drain_timeout.0,
            initial_state(cfg),
        ));
        let listener = bind("clients", &cfg.listener.address).await?;
        let admin_listener = bind("the admin API", &cfg.admin.address).await?;
        let local_addr = listener.local_addr().map_err(|e| e.to_string())?;
        let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
        Ok(Server {
            proxy,
            admin,
            listener: std::sync::Mutex::new(Some(listener)),
            admin_listener: std::sync::Mutex::new(Some(admin_listener)),
            local_addr,
            admin_addr,
            listener_cfg: cfg.listener.clone(),
            health: cfg.health.clone(),
            drain_timeout: cfg.lifecycle.drain_timeout.0,
        })
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the admin API listens.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Applies a reloaded config: policy, proxy settings, queue limits. Listener addresses,
    /// runtime and static backends need a restart (a warning says so when they changed).
    pub fn reload(&self, cfg: &Config) {
        let policy: Arc<dyn crate::Policy> = policies::build(&cfg.balancer).into();
        tracing::info!(policy = policy.name(), "config reloaded");
        self.proxy.dispatcher.set_policy(policy);
        self.proxy
            .dispatcher
            .set_queue_limits(cfg.overload.max_queue, cfg.overload.queue_timeout.0);
        self.proxy.set_settings(settings(cfg));
        self.proxy
            .counters
            .reloads_ok
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if cfg.listener != self.listener_cfg {
            tracing::warn!("[listener] changes take effect only after a restart");
        }
    }

    /// Serves clients and the admin API until `shutdown` resolves; then stops accepting and lets
    /// in-flight requests finish for up to `drain` before returning.
    pub async fn run(
        &self,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) -> Result<(), String> {
        let listener = self
            .listener
            .lock()
            .unwrap()
            .take()
            .ok_or("server already ran")?;
        let admin_listener = self
            .admin_listener
            .lock()
            .unwrap()
            .take()
            .ok_or("server already ran")?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let graceful = Arc::new(GracefulShutdown::new());

        let l = &self.listener_cfg;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(l.header_read_timeout.0)
            // The read buffer bounds the request head: a larger one gets 431.
            .max_buf_size(l.max_header_bytes.max(8192));
        if l.max_headers != 100 {
            // hyper's default is 100 on the stack; any other number costs a heap allocation
            // per request, so it is set only when asked for.
            builder.http1().max_headers(l.max_headers);
        }
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .max_concurrent_streams(l.max_streams_per_connection)
            .max_header_list_size(l.max_header_bytes as u32);
        let builder = Arc::new(builder);
        let client_limits = ConnLimits {
            first_request_timeout: Some(l.header_read_timeout.0),
            max_per_client: l.max_connections_per_client,
        };
        let admin_limits = ConnLimits {
            first_request_timeout: Some(l.header_read_timeout.0),
            max_per_client: 0,
        };

        let proxy = self.proxy.clone();
        let clients = tokio::spawn(accept_loop_with(
            listener,
            builder.clone(),
            graceful.clone(),
            stop_rx.clone(),
            client_limits,
            move |peer| {
                let proxy = proxy.clone();
                let peer = Peer::new(peer);
                service_fn(move |req| {
                    let proxy = proxy.clone();
                    let peer = peer.clone();
                    async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, peer).await) }
                })
            },
        ));
        let admin = self.admin.clone();
        let admin_task = tokio::spawn(accept_loop_with(
            admin_listener,
            builder,
            graceful.clone(),
            stop_rx.clone(),
            admin_limits,
            move |_peer| {
                let admin = admin.clone();
                service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, std::convert::Infallible>(admin.handle(req).await) }
                })
            },
        ));
        let ticker = tokio::spawn(housekeeping(
            self.proxy.clone(),
            self.health.path.is_some(),
            self.drain_timeout,
            stop_rx.clone(),
        ));
        let health = tokio::spawn(crate::health::run(
            self.proxy.clone(),
            self.health.clone(),
            stop_rx,
        ));

        shutdown.await;
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        let _ = stop_tx.send(true);
        let _ = clients.await;
        let _ = admin_task.await;
        let _ = ticker.await;
        let _ = health.await;
        let graceful = Arc::try_unwrap(graceful).map_err(|_| "connections still shared")?;
        if tokio::time::timeout(drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                ?drain,
                "some requests were still in flight after the drain timeout"
            );
        }
        Ok(())
    }
}

/// What a listener allows each connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// A new connection must have sent its first request's headers (and, for HTTP/2, its
    /// preface) this long after accept, or it is closed. hyper's own header timeout starts only
    /// with the first byte; a connection that sends nothing would be kept for ever.
    pub first_request_timeout: Option<Duration>,
    /// Most connections open at once from one client IP address; 0: no limit.
    pub max_per_client: u32,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            first_request_timeout: Some(Duration::from_secs(10)),
            max_per_client: 0,
        }
    }
}

/// Connections open per client IP address, for [`ConnLimits::max_per_client`].
struct PerClient {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>,
    max: u32,
}

/// One connection counted in [`PerClient`]; uncounted when dropped.
struct ClientConn {
    table: Arc<PerClient>,
    ip: std::net::IpAddr,
}

impl PerClient {
    /// Counts a connection from `ip`, or `None` when `ip` has `max` open already.
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<ClientConn> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientConn {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientConn {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A service that notes its first call: the connection has sent a whole request head.
struct NoteFirst<S> {
    inner: S,
    seen: Arc<std::sync::atomic::AtomicBool>,
}

impl<S, R> hyper::service::Service<R> for NoteFirst<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: R) -> Self::Future {
        self.seen.store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.call(req)
    }
}

/// [`accept_loop_with`] with the default [`ConnLimits`].
pub async fn accept_loop<F, S, B>(
    listener: TcpListener,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Arc<GracefulShutdown>,
    stop: watch::Receiver<bool>,
    make_service: F,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    accept_loop_with(
        listener,
        builder,
        graceful,
        stop,
        ConnLimits::default(),
        make_service,
    )
    .await
}

/// Accepts connections until `stop`; each is served by `make_service(peer)` within `limits`.
/// Shared by the proxy, its admin API and `ebbtide autoscale`'s admin API, so all back off alike
/// when accept fails (out of file descriptors) instead of spinning.
pub async fn accept_loop_with<F, S, B>(
    listener: TcpListener,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Arc<GracefulShutdown>,
    mut stop: watch::Receiver<bool>,
    limits: ConnLimits,
    make_service: F,
) where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let per_client = (limits.max_per_client > 0).then(|| {
        Arc::new(PerClient {
            open: Default::default(),
            max: limits.max_per_client,
        })
    });
    let mut last_warning: Option<std::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning, and
                    // say so once a second, not at every try.
                    if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accept failed");
                        last_warning = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let counted = match &per_client {
            Some(table) => match table.enter(peer.ip()) {
                Some(c) => Some(c),
                None => {
                    tracing::debug!(%peer, "too many connections from this client; closed");
                    continue;
                }
            },
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let service = NoteFirst {
            inner: make_service(peer),
            seen: seen.clone(),
        };
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let first_request_timeout = limits.first_request_timeout;
        tokio::spawn(async move {
            let _counted = counted;
            let mut conn = std::pin::pin!(conn);
            let result = match first_request_timeout {
                None => conn.await,
                Some(limit) => {
                    let ended = tokio::select! {
                        r = conn.as_mut() => Some(r),
                        () = tokio::time::sleep(limit) => None,
                    };
                    match ended {
                        Some(r) => r,
                        // A request arrived in time: hyper's own timeouts take over.
                        None if seen.load(std::sync::atomic::Ordering::Relaxed) => conn.await,
                        None => {
                            tracing::debug!(%peer, "no request within header_read_timeout of accept; closed");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
}

/// Twice a second: the drain rate for `Retry-After`, lease expiry, the end of outlier
/// ejections, idle connections and expired idempotency keys.
async fn housekeeping(
    proxy: Arc<Proxy>,
    active_checks: bool,
    drain: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = proxy.clock.now();
        let snap = proxy.signals.snapshot(now);
        proxy.dispatcher.set_drain_rate(snap.completion_rate);
        for b in &proxy.registry.snapshot().backends {
            if b.lease_until().is_some_and(|t| t <= now) && b.state() != BackendState::Draining {
                tracing::info!(backend = %b.address, id = b.id, "lease ran out; draining");
                b.set_state(BackendState::Draining);
                tokio::spawn(crate::health::drain(proxy.clone(), b.clone(), drain));
            }
            b.pool.sweep();
        }
        crate::health::reinstate_expired(&proxy, active_checks, now);
        proxy.idempotency.sweep(now);
    }
}
