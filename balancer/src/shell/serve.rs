//! The balancer as a running server: binds the listener and the admin API, builds the registry,
//! policy, dispatcher and proxy from config, serves until told to stop, then drains.

use crate::access_log::AccessLog;
use crate::admin::Admin;
use crate::clock::Clock;
use crate::dispatch::Dispatcher;
use crate::lifecycle::Event;
use crate::policies;
use crate::pool::PoolConfig;
use crate::proxy::native::NativeH1;
use crate::proxy::{Peer, Proxy, ProxySettings};
use crate::registry::{BackendSpec, BackendState, Origin, Registry, RegistryConfig};
use crate::shell::head_deadline::HeadDeadline;
use crate::shell::per_client::{ConnService, PerClient};
use crate::shell::workers;
use crate::signals::SignalWindow;
use crate::tls::Tls;
use crate::upstream_tls::UpstreamTls;
use ebbtide_config::{AcceptMode, AccessLogFormat, Config, PolicyKind};
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
    proxy: Arc<Proxy>,
    admin: Arc<Admin>,
    listener: std::sync::Mutex<Option<Listeners>>,
    admin_listener: std::sync::Mutex<Option<TcpListener>>,
    local_addr: SocketAddr,
    admin_addr: SocketAddr,
    /// The config the process started with: what every setting that needs a restart still
    /// runs with (see [`restart_needed`]).
    started: Config,
    /// The health check settings in force; the probe loop starts again when they change.
    health: watch::Sender<ebbtide_config::Health>,
    /// TLS on the client listener, when `[[listener.tls]]` is set.
    tls: Option<Arc<Tls>>,
    /// `[listener] redirect_address`: plain HTTP answered with 308 to https.
    redirect_listener: std::sync::Mutex<Option<TcpListener>>,
    redirect_addr: Option<SocketAddr>,
}

/// Where clients connect, by `[runtime] accept`.
enum Listeners {
    /// One listener, served on the runtime [`Server::run`] runs on.
    Shared(TcpListener),
    /// One per worker thread, all on the same address (see [`workers`]).
    PerWorker(Vec<std::net::TcpListener>),
}

fn settings(cfg: &Config) -> ProxySettings {
    ProxySettings {
        response_timeout: cfg.upstream.response_timeout.0,
        hash_key: (cfg.balancer.policy == PolicyKind::ConsistentHash)
            .then(|| cfg.balancer.hash_key.clone()),
        retries: cfg.retries.clone(),
        idempotency: cfg.idempotency.clone(),
        outlier: cfg.outlier.clone(),
        request_buffer: cfg.listener.request_buffer,
        body_limits: crate::proxy::BodyLimits {
            timeout: cfg.listener.body_read_timeout.0,
            min_rate: cfg.listener.min_body_rate,
        },
        max_uri_bytes: cfg.listener.max_uri_bytes,
        tunnel_idle_timeout: cfg.upstream.tunnel_idle_timeout.0,
        request_id: cfg.log.request_id,
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
            max_streams: cfg.upstream.max_streams_per_connection,
        },
        adaptive_limit: cfg.overload.adaptive_limit,
        outlier: outlier_config(cfg),
        slow_start: crate::slow_start::SlowStart::from_config(&cfg.balancer),
    }
}

/// The per-backend outlier detector settings `cfg` asks for.
fn outlier_config(cfg: &Config) -> crate::outlier::OutlierConfig {
    crate::outlier::OutlierConfig {
        consecutive_failures: cfg.outlier.consecutive_failures,
        base_ejection: cfg.outlier.base_ejection.as_nanos(),
        max_ejection: cfg.outlier.max_ejection.as_nanos(),
        ..Default::default()
    }
}

/// The settings of `new` that differ from `running` and that a reload cannot apply: each
/// needs a restart, and [`Server::reload`] logs a warning naming it. Everything else applies on
/// reload. Every section and every key of a section that is only partly reloadable is named
/// here, so that a new one does not compile until it is sorted into one kind or the other.
///
/// Applies on reload: `[balancer]` (policy, choices, seed, utilisation_target, hash_key,
/// ewma_decay), `[upstream] response_timeout` and tunnel_idle_timeout (for tunnels opened
/// after it), `[overload] max_queue` and `queue_timeout`,
/// `[health]` interval, timeout, rise, fall and path (while checks stay on), `[outlier]`,
/// `[retries]`, `[idempotency] enabled` and `max_body`, `[listener]` request_buffer,
/// body_read_timeout, min_body_rate and max_uri_bytes (read per request from the proxy's
/// settings), `[log]` access (between "combined" and "json"), access_path and request_id (the
/// access log's file is opened again on every reload, for logrotate), `[listener]` tls
/// certificates and keys, client_ca and client_auth (new handshakes use them). `[simulation]`
/// and `[leader_election]` are not used by `ebbtide serve`. The rest needs a restart.
pub fn restart_needed(running: &Config, new: &Config) -> Vec<&'static str> {
    use ebbtide_config::{Health, Idempotency, Listener, Log, Overload, Upstream};
    let Config {
        listener,
        admin,
        runtime,
        balancer: _,
        upstream,
        overload,
        signals,
        health,
        outlier: _,
        lifecycle,
        retries: _,
        idempotency,
        backends,
        provider,
        discovery,
        leader_election: _,
        autoscaler,
        simulation: _,
        log,
    } = new;
    // The listener socket, hyper's connection builder and the accept loop are set up with
    // these once, at start.
    let Listener {
        address,
        header_read_timeout,
        request_buffer: _,
        body_read_timeout: _,
        min_body_rate: _,
        max_header_bytes,
        max_headers,
        max_uri_bytes: _,
        max_connections_per_client,
        max_streams_per_connection,
        tls,
        client_ca: _,
        client_auth: _,
        redirect_address,
        max_streams_per_client,
        http1,
    } = listener;
    let Upstream {
        connect_timeout,
        response_timeout: _,
        idle_timeout,
        max_idle_per_backend,
        tunnel_idle_timeout: _,
        ca,
        max_streams_per_connection: upstream_streams,
    } = upstream;
    let Overload {
        max_queue: _,
        queue_timeout: _,
        adaptive_limit,
    } = overload;
    let Health {
        path,
        interval: _,
        timeout: _,
        rise: _,
        fall: _,
    } = health;
    let Idempotency {
        enabled: _,
        ttl,
        max_body: _,
        max_entries,
    } = idempotency;
    let Log {
        access,
        access_path: _,
        access_buffer,
        request_id: _,
    } = log;
    let (r, rl, ru, ri) = (
        running,
        &running.listener,
        &running.upstream,
        &running.idempotency,
    );
    [
        (*address != rl.address, "[listener] address"),
        (
            *header_read_timeout != rl.header_read_timeout,
            "[listener] header_read_timeout",
        ),
        (
            *max_header_bytes != rl.max_header_bytes,
            "[listener] max_header_bytes",
        ),
        (*max_headers != rl.max_headers, "[listener] max_headers"),
        (
            *max_connections_per_client != rl.max_connections_per_client,
            "[listener] max_connections_per_client",
        ),
        (
            *max_streams_per_connection != rl.max_streams_per_connection,
            "[listener] max_streams_per_connection",
        ),
        (
            tls.is_empty() != rl.tls.is_empty(),
            "[listener] tls (turning TLS on or off)",
        ),
        (
            *redirect_address != rl.redirect_address,
            "[listener] redirect_address",
        ),
        (
            *max_streams_per_client != rl.max_streams_per_client,
            "[listener] max_streams_per_client",
        ),
        (*http1 != rl.http1, "[listener] http1"),
        (*admin != r.admin, "[admin]"),
        (*runtime != r.runtime, "[runtime]"),
        // The connection pool of each backend is built with these.
        (
            *connect_timeout != ru.connect_timeout,
            "[upstream] connect_timeout",
        ),
        (*idle_timeout != ru.idle_timeout, "[upstream] idle_timeout"),
        (
            *max_idle_per_backend != ru.max_idle_per_backend,
            "[upstream] max_idle_per_backend",
        ),
        (*ca != ru.ca, "[upstream] ca"),
        (
            *upstream_streams != ru.max_streams_per_connection,
            "[upstream] max_streams_per_connection",
        ),
        (
            *adaptive_limit != r.overload.adaptive_limit,
            "[overload] adaptive_limit",
        ),
        (*signals != r.signals, "[signals]"),
        (
            path.is_some() != r.health.path.is_some(),
            "[health] path (turning active checks on or off)",
        ),
        (*lifecycle != r.lifecycle, "[lifecycle]"),
        (*ttl != ri.ttl, "[idempotency] ttl"),
        (*max_entries != ri.max_entries, "[idempotency] max_entries"),
        (*backends != r.backends, "[[backends]]"),
        (*provider != r.provider, "[provider]"),
        (*discovery != r.discovery, "[discovery]"),
        (*autoscaler != r.autoscaler, "[autoscaler]"),
        // The writer thread and its channel are made at start; the format, the file and
        // request ids follow a reload.
        (
            (*access == AccessLogFormat::Off) != (r.log.access == AccessLogFormat::Off),
            "[log] access (turning the access log on or off)",
        ),
        (*access_buffer != r.log.access_buffer, "[log] access_buffer"),
    ]
    .into_iter()
    .filter_map(|(changed, key)| changed.then_some(key))
    .collect()
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

/// Binds `address`, the value of `key`; the error names both.
async fn bind(what: &str, key: &str, address: &str) -> Result<TcpListener, String> {
    TcpListener::bind(address)
        .await
        .map_err(|e| listen_error(what, key, address, e))
}

fn listen_error(what: &str, key: &str, address: &str, e: std::io::Error) -> String {
    format!("cannot listen for {what} on {address} ({key}): {e}")
}

/// The client listeners `cfg` asks for, and the address they listen on.
async fn bind_clients(cfg: &Config) -> Result<(Listeners, SocketAddr), String> {
    let (key, address) = ("[listener] address", cfg.listener.address.as_str());
    let listeners = match cfg.runtime.accept {
        AcceptMode::Shared => Listeners::Shared(bind("clients", key, address).await?),
        AcceptMode::PerWorker => {
            let n = cfg
                .runtime
                .worker_threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let ls = workers::bind(address, n)
                .await
                .map_err(|e| listen_error("clients", key, address, e))?;
            Listeners::PerWorker(ls)
        }
    };
    let local = match &listeners {
        Listeners::Shared(l) => l.local_addr(),
        Listeners::PerWorker(ls) => ls[0].local_addr(),
    };
    Ok((listeners, local.map_err(|e| e.to_string())?))
}

impl Server {
    /// The proxy and everything it shares.
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// The admin API, for the sources the wiring adds (the autoscaler's events and metrics).
    pub fn admin(&self) -> &Arc<Admin> {
        &self.admin
    }

    /// Reads `path` and reloads it (see [`Server::reload`]); an invalid file is refused, counted
    /// in `ebbtide_config_reloads_total{result="error"}`, and the running config kept.
    pub fn reload_file(&self, path: &std::path::Path) {
        match Config::from_file(path) {
            Ok(cfg) => self.reload(&cfg),
            Err(errors) => {
                self.proxy
                    .counters
                    .reloads_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!("config reload refused; keeping the running config:\n{errors}");
                // The signal may be logrotate's all the same.
                if let Some(log) = self.proxy.access_log() {
                    log.reopen();
                }
            }
        }
    }

    /// Builds everything from `cfg` and binds both listeners (an address with port 0 gets a free
    /// port; [`Server::local_addr`] tells which).
    pub async fn bind(cfg: &Config) -> Result<Server, String> {
        let clock = Clock::new();
        let registry = Arc::new(
            Registry::new(registry_config(cfg), clock)
                .with_upstream_tls(UpstreamTls::new(cfg.upstream.ca.clone())),
        );
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
                        slow_start: b.slow_start.map(|d| d.as_nanos()),
                        transport: crate::registry::Transport {
                            protocol: b.protocol,
                            tls_ca: b.tls_ca.clone(),
                            server_name: b.server_name.clone(),
                        },
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
        if cfg.log.access != AccessLogFormat::Off {
            proxy.set_access_log(AccessLog::start(
                cfg.log.access,
                cfg.log.access_path.clone(),
                cfg.log.access_buffer,
                clock,
            )?);
        }
        let admin = Arc::new(Admin::new(
            proxy.clone(),
            cfg.admin.token.clone(),
            cfg.lifecycle.drain_timeout.0,
            initial_state(cfg),
        ));
        let tls = match cfg.listener.tls.is_empty() {
            true => None,
            false => Some(Arc::new(Tls::new(&cfg.listener).map_err(|problems| {
                let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
                lines.join("\n")
            })?)),
        };
        let (listener, local_addr) = bind_clients(cfg).await?;
        let admin_listener = bind("the admin API", "[admin] address", &cfg.admin.address).await?;
        let redirect_listener = match &cfg.listener.redirect_address {
            Some(a) => Some(bind("the https redirect", "[listener] redirect_address", a).await?),
            None => None,
        };
        let redirect_addr = redirect_listener
            .as_ref()
            .map(|l| l.local_addr().map_err(|e| e.to_string()))
            .transpose()?;
        let admin_addr = admin_listener.local_addr().map_err(|e| e.to_string())?;
        Ok(Server {
            proxy,
            admin,
            listener: std::sync::Mutex::new(Some(listener)),
            admin_listener: std::sync::Mutex::new(Some(admin_listener)),
            local_addr,
            admin_addr,
            started: cfg.clone(),
            health: watch::Sender::new(cfg.health.clone()),
            tls,
            redirect_listener: std::sync::Mutex::new(redirect_listener),
            redirect_addr,
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

    /// Whether clients connect over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Where the plain-HTTP listener that redirects to https listens, if there is one.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.redirect_addr
    }

    /// Applies a reloaded config: the policy, the proxy settings (response timeout, hash key,
    /// retries, idempotency, outlier share and 5xx rule), queue limits, the latency decay and
    /// outlier thresholds of every backend, and the health check settings (the probe loop
    /// starts again with them). What cannot change live ([`restart_needed`]) keeps running as
    /// it started, and a warning names each such setting that changed.
    pub fn reload(&self, cfg: &Config) {
        let policy: Arc<dyn crate::Policy> = policies::build(&cfg.balancer).into();
        tracing::info!(policy = policy.name(), "config reloaded");
        self.proxy.dispatcher.set_policy(policy);
        self.proxy
            .dispatcher
            .set_queue_limits(cfg.overload.max_queue, cfg.overload.queue_timeout.0);
        self.proxy.set_settings(settings(cfg));
        if let (Some(tls), false) = (&self.tls, cfg.listener.tls.is_empty()) {
            // Problems are logged; the running certificates stay.
            let _ = tls.reload(&cfg.listener);
        }
        if let Some(log) = self.proxy.access_log() {
            log.reload(cfg.log.access, cfg.log.access_path.clone());
        }
        self.proxy.registry.reconfigure(
            cfg.balancer.ewma_decay.as_nanos(),
            outlier_config(cfg),
            crate::slow_start::SlowStart::from_config(&cfg.balancer),
        );
        let mut health = cfg.health.clone();
        if health.path.is_some() != self.started.health.path.is_some() {
            // Turning checks on or off changes the state new backends start in: a restart.
            health.path = self.started.health.path.clone();
        }
        self.health.send_if_modified(|h| {
            let changed = *h != health;
            *h = health;
            changed
        });
        self.proxy
            .counters
            .reloads_ok
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for key in restart_needed(&self.started, cfg) {
            tracing::warn!("config reload: {key} changed; it takes effect only after a restart");
        }
    }

    /// The health check settings in force.
    pub fn health_config(&self) -> ebbtide_config::Health {
        self.health.borrow().clone()
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

        let l = &self.started.listener;
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
            .max_header_list_size(l.max_header_bytes as u32)
            // RFC 8441: WebSockets over HTTP/2 (extended CONNECT).
            .enable_connect_protocol();
        let builder = Arc::new(builder);
        let client_limits = ConnLimits {
            first_request_timeout: Some(l.header_read_timeout.0),
            max_per_client: l.max_connections_per_client,
            tls: self.tls.clone(),
            max_streams_per_client: l.max_streams_per_client,
            // One table for every worker's listener: the limits are per client, not per thread.
            clients: PerClient::new(l.max_connections_per_client, l.max_streams_per_client),
            native: (l.http1 == ebbtide_config::Http1Engine::Native)
                .then(|| Arc::new(NativeH1::new(self.proxy.clone(), l))),
        };
        let admin_limits = ConnLimits {
            first_request_timeout: Some(l.header_read_timeout.0),
            ..ConnLimits::default()
        };
        let mut side_tasks = Vec::new();
        if let Some(tls) = &self.tls {
            let watch = tls
                .clone()
                .watch(crate::tls::WATCH_INTERVAL, stop_rx.clone());
            side_tasks.push(tokio::spawn(watch));
        }
        let redirect_listener = self.redirect_listener.lock().unwrap().take();
        if let Some(redirect_listener) = redirect_listener {
            let port = self.local_addr.port();
            side_tasks.push(tokio::spawn(accept_loop(
                redirect_listener,
                builder.clone(),
                graceful.clone(),
                stop_rx.clone(),
                admin_limits.clone(),
                move |_peer| {
                    service_fn(move |req| async move {
                        Ok::<_, std::convert::Infallible>(crate::tls::redirect(&req, port))
                    })
                },
            )));
        }

        let client_loop = ClientLoop {
            proxy: self.proxy.clone(),
            over_tls: self.tls.is_some(),
            builder: builder.clone(),
            graceful: graceful.clone(),
            stop: stop_rx.clone(),
            limits: client_limits,
        };
        let (clients, mut workers) = match listener {
            Listeners::Shared(l) => {
                self.proxy.counters.set_accepting(["shared".to_string()]);
                (Some(tokio::spawn(client_loop.serve(l, 0))), None)
            }
            Listeners::PerWorker(ls) => {
                self.proxy
                    .counters
                    .set_accepting((0..ls.len()).map(|i| i.to_string()));
                let w = workers::spawn(ls, |i| {
                    let c = client_loop.clone();
                    move |l| c.serve(l, i)
                })?;
                // Its share of `graceful` must go, or the drain below cannot take it.
                drop(client_loop);
                (None, Some(w))
            }
        };
        let admin = self.admin.clone();
        let admin_task = tokio::spawn(accept_loop(
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
            self.started.health.path.is_some(),
            self.started.lifecycle.drain_timeout.0,
            stop_rx.clone(),
        ));
        let health = tokio::spawn(crate::health::run(
            self.proxy.clone(),
            self.health.subscribe(),
            stop_rx,
        ));

        shutdown.await;
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        // Dashboard streams never finish on their own: end them, or they hold the drain up.
        self.admin.close_streams();
        // Tunnels (WebSockets) never finish by themselves either, and hyper's graceful
        // shutdown no longer sees them: they are closed with a close frame "going away".
        self.proxy
            .close_tunnels(drain.min(Duration::from_secs(5)))
            .await;
        let _ = stop_tx.send(true);
        if let Some(clients) = clients {
            let _ = clients.await;
        }
        if let Some(w) = &mut workers {
            w.stopped_accepting().await;
        }
        let _ = admin_task.await;
        let _ = ticker.await;
        let _ = health.await;
        for t in side_tasks {
            let _ = t.await;
        }
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
        if let Some(w) = workers {
            w.finish().await;
        }
        if let Some(log) = self.proxy.access_log() {
            log.finish(Duration::from_secs(2)).await;
        }
        Ok(())
    }
}

/// What a listener allows each connection.
#[derive(Clone)]
pub struct ConnLimits {
    /// A new connection must have sent its first request's headers (and, for HTTP/2, its
    /// preface) this long after accept, or it is closed. hyper's own header timeout starts only
    /// with the first byte; a connection that sends nothing would be kept for ever.
    pub first_request_timeout: Option<Duration>,
    /// Most connections open at once from one client IP address; 0: no limit.
    pub max_per_client: u32,
    /// TLS to terminate: the handshake counts against `first_request_timeout`, and the
    /// protocol ALPN chose (`h2`, else HTTP/1.1) is served.
    pub tls: Option<Arc<Tls>>,
    /// Most HTTP/2 streams in flight at once from one client IP address, across all of its
    /// connections; more are refused with `RST_STREAM(REFUSED_STREAM)`. 0: no limit.
    pub max_streams_per_client: u32,
    /// The per-client table when several accept loops share it (a listener per worker);
    /// `None`: each loop counts its own clients against the two limits above.
    pub(crate) clients: Option<Arc<PerClient>>,
    /// `[listener] http1 = "native"`: plain connections go to the native HTTP/1.1 lane first,
    /// which hands them to hyper for what it does not serve (`proxy::native`).
    pub native: Option<Arc<NativeH1>>,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            first_request_timeout: Some(Duration::from_secs(10)),
            max_per_client: 0,
            tls: None,
            max_streams_per_client: 0,
            clients: None,
            native: None,
        }
    }
}

/// What every client accept loop starts with.
#[derive(Clone)]
struct ClientLoop {
    proxy: Arc<Proxy>,
    over_tls: bool,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: Arc<GracefulShutdown>,
    stop: watch::Receiver<bool>,
    limits: ConnLimits,
}

impl ClientLoop {
    /// Serves clients from `listener` with the proxy, counting each connection as accepted by
    /// `worker` (`ebbtide_client_connections_accepted_total`).
    fn serve(self, listener: TcpListener, worker: usize) -> impl Future<Output = ()> + Send {
        let (proxy, over_tls) = (self.proxy, self.over_tls);
        accept_loop(
            listener,
            self.builder,
            self.graceful,
            self.stop,
            self.limits,
            move |peer| {
                proxy.counters.count_accepted(worker);
                let proxy = proxy.clone();
                let peer = match over_tls {
                    true => Peer::new(peer).over_tls(),
                    false => Peer::new(peer),
                };
                service_fn(move |req| {
                    let proxy = proxy.clone();
                    let peer = peer.clone();
                    async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, peer).await) }
                })
            },
        )
    }
}

/// Accepts connections until `stop`; each is served by `make_service(peer)` within `limits`.
/// Shared by the proxy, its admin API and `ebbtide autoscale`'s admin API, so all back off alike
/// when accept fails (out of file descriptors) instead of spinning.
pub async fn accept_loop<F, S, B>(
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
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let per_client = limits
        .clients
        .clone()
        .or_else(|| PerClient::new(limits.max_per_client, limits.max_streams_per_client));
    let mut last_warning: Option<std::time::Instant> = None;
    // Over TLS, ALPN has already chosen the protocol: no need to sniff for the HTTP/2 preface.
    let by_alpn = limits.tls.as_ref().map(|_| {
        let b = (*builder).clone();
        Arc::new((b.clone().http1_only(), b.http2_only()))
    });
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
        let service = ConnService::new(make_service(peer), seen.clone(), counted.as_ref());
        let accepted_at = tokio::time::Instant::now();
        let first_request_timeout = limits.first_request_timeout;
        let watcher = graceful.watcher();
        let (builder, tls) = (builder.clone(), limits.tls.clone());
        let by_alpn = by_alpn.clone();
        if let (Some(native), None) = (limits.native.clone(), &tls) {
            // A task of its own, so that an idle connection holds the lane's small state and
            // not that of the TLS and hyper branches below. The lane serves what it can;
            // hyper the rest of the connection, from the bytes the lane has read (boxed: only
            // then allocated). `watcher` is held meanwhile: the drain waits for the connection.
            let stop = stop.clone();
            tokio::spawn(async move {
                let _counted = counted;
                let handed = native
                    .serve(stream, peer, first_request_timeout, stop)
                    .await;
                if let Some((io, first_head_left)) = handed {
                    // Handed over before any request was served (part of the HTTP/2 preface,
                    // say): the rest of the first head's deadline still holds.
                    let io = HeadDeadline::new(io, first_head_left, seen);
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                    Box::pin(serve_watched(conn.into_owned(), watcher, peer)).await;
                }
            });
            continue;
        }
        tokio::spawn(async move {
            let _counted = counted;
            let Some(tls) = tls else {
                let io = HeadDeadline::new(stream, first_request_timeout, seen);
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
                return serve_watched(conn.into_owned(), watcher, peer).await;
            };
            // The first request is due this long after accept, the TLS handshake included.
            let deadline = first_request_timeout.map(|t| accepted_at + t);
            let handshake = tls.accept(stream);
            let accepted = match deadline {
                Some(d) => tokio::time::timeout_at(d, handshake).await,
                None => Ok(handshake.await),
            };
            let (stream, h2) = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no TLS handshake within header_read_timeout of accept; closed");
                    return;
                }
            };
            // What is left of the deadline bounds the first head, answered with 408 over TLS.
            let left = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
            let io = HeadDeadline::new(stream, left, seen);
            let builder = match (by_alpn.as_deref(), h2) {
                (Some((_, h2_only)), true) => h2_only,
                (Some((h1_only, _)), false) => h1_only,
                (None, _) => &*builder,
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            serve_watched(conn.into_owned(), watcher, peer).await;
        });
    }
}

/// Serves `conn` under graceful shutdown (the first head's deadline is on its IO, see
/// [`HeadDeadline`]).
async fn serve_watched<C>(conn: C, watcher: hyper_util::server::graceful::Watcher, peer: SocketAddr)
where
    C: hyper_util::server::graceful::GracefulConnection,
    C::Error: std::fmt::Display,
{
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// Twice a second: the drain rate for `Retry-After`, lease expiry, the end of outlier
/// ejections, idle connections and expired idempotency keys; every ten seconds, the heap's
/// free pages back to the kernel.
async fn housekeeping(
    proxy: Arc<Proxy>,
    active_checks: bool,
    drain: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut trim = tokio::time::interval(crate::shell::heap_trim::INTERVAL);
    trim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = trim.tick() => {
                crate::shell::heap_trim::trim_in_background().await;
                continue;
            }
            _ = stop.changed() => return,
        }
        let now = proxy.clock.now();
        let snap = proxy.signals.snapshot(now);
        proxy.dispatcher.set_drain_rate(snap.completion_rate);
        for b in &proxy.registry.snapshot().backends {
            if b.lease_until().is_some_and(|t| t <= now) && b.apply(Event::LeaseExpired).is_some() {
                tracing::info!(backend = %b.address, id = b.id, "lease ran out; draining");
                tokio::spawn(crate::health::drain(proxy.clone(), b.clone(), drain));
            }
            b.pool.sweep();
        }
        crate::health::reinstate_expired(&proxy, active_checks, now);
        proxy.idempotency.sweep(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[listener]\naddress = \"127.0.0.1:0\"\n[admin]\naddress = \"127.0.0.1:0\"\n\
             [[backends]]\naddress = \"127.0.0.1:1\"\n{extra}"
        );
        Config::from_toml(&text, "t.toml").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn what_applies_on_reload_needs_no_restart() {
        let running = config("[health]\npath = \"/healthz\"\n");
        assert_eq!(restart_needed(&running, &running), Vec::<&str>::new());
        let live = config(
            "[balancer]\npolicy = \"consistent_hash\"\nhash_key = \"cookie:s\"\nchoices = 3\n\
             ewma_decay = \"3s\"\nseed = 7\nutilisation_target = 0.5\n\
             [upstream]\nresponse_timeout = \"3s\"\n\
             [overload]\nmax_queue = 3\nqueue_timeout = \"3s\"\n\
             [health]\npath = \"/other\"\ninterval = \"3s\"\ntimeout = \"3s\"\nrise = 3\nfall = 3\n\
             [outlier]\nconsecutive_failures = 3\ncount_5xx = true\nbase_ejection = \"3s\"\n\
             max_ejection = \"3s\"\nmax_ejected_share = 0.3\n\
             [retries]\nmax_attempts = 3\nbudget_ratio = 0.3\nper_try_timeout = \"3s\"\n\
             [idempotency]\nenabled = false\nmax_body = 3\n\
             [simulation]\n",
        );
        let mut live = live;
        // The request-body and URI limits are read per request from the proxy's settings.
        live.listener.request_buffer = 3;
        live.listener.body_read_timeout = ebbtide_config::time::HumanDuration::from_secs(3);
        live.listener.min_body_rate = 3;
        live.listener.max_uri_bytes = 3000;
        assert_eq!(restart_needed(&running, &live), Vec::<&str>::new());
        // New certificates and client CA settings are used by new handshakes.
        let cert = |name: &str| ebbtide_config::TlsCert {
            cert: format!("{name}.pem"),
            key: format!("{name}.key"),
        };
        let mut with_tls = running.clone();
        with_tls.listener.tls = vec![cert("a")];
        let mut rotated = with_tls.clone();
        rotated.listener.tls = vec![cert("b"), cert("c")];
        rotated.listener.client_ca = Some("ca.pem".into());
        rotated.listener.client_auth = Some(ebbtide_config::ClientAuth::Optional);
        assert_eq!(restart_needed(&with_tls, &rotated), Vec::<&str>::new());
    }

    #[test]
    fn each_setting_that_needs_a_restart_is_named() {
        let running = config("");
        let cases = [
            ("[runtime]\nworker_threads = 3\n", "[runtime]"),
            (
                "[upstream]\nconnect_timeout = \"3s\"\n",
                "[upstream] connect_timeout",
            ),
            (
                "[upstream]\nidle_timeout = \"3s\"\n",
                "[upstream] idle_timeout",
            ),
            (
                "[upstream]\nmax_idle_per_backend = 3\n",
                "[upstream] max_idle_per_backend",
            ),
            (
                "[overload]\nadaptive_limit = false\n",
                "[overload] adaptive_limit",
            ),
            ("[signals]\nwindow = \"3s\"\n", "[signals]"),
            (
                "[health]\npath = \"/healthz\"\n",
                "[health] path (turning active checks on or off)",
            ),
            ("[lifecycle]\ndrain_timeout = \"3s\"\n", "[lifecycle]"),
            ("[idempotency]\nttl = \"3s\"\n", "[idempotency] ttl"),
            (
                "[idempotency]\nmax_entries = 3\n",
                "[idempotency] max_entries",
            ),
            ("[[backends]]\naddress = \"127.0.0.1:2\"\n", "[[backends]]"),
            ("[provider]\ncount = 3\n", "[provider]"),
        ];
        for (extra, key) in cases {
            assert_eq!(restart_needed(&running, &config(extra)), [key], "{extra}");
        }
        let mut other = running.clone();
        other.listener.address = "127.0.0.1:3".into();
        assert_eq!(restart_needed(&running, &other), ["[listener] address"]);
        let mut other = running.clone();
        other.listener.tls = vec![ebbtide_config::TlsCert {
            cert: "c.pem".into(),
            key: "k.pem".into(),
        }];
        assert_eq!(
            restart_needed(&running, &other),
            ["[listener] tls (turning TLS on or off)"]
        );
        let mut redirected = other.clone();
        redirected.listener.redirect_address = Some("127.0.0.1:4".into());
        assert_eq!(
            restart_needed(&other, &redirected),
            ["[listener] redirect_address"]
        );
        let mut other = running.clone();
        other.listener.http1 = ebbtide_config::Http1Engine::Hyper;
        assert_eq!(restart_needed(&running, &other), ["[listener] http1"]);
        let mut other = running.clone();
        other.admin.token = Some("t".into());
        assert_eq!(restart_needed(&running, &other), ["[admin]"]);
        let mut scaled = config("[provider]\ncount = 3\n");
        let with_autoscaler = config("[provider]\ncount = 3\n[autoscaler]\n");
        assert_eq!(restart_needed(&scaled, &with_autoscaler), ["[autoscaler]"]);
        // Several at once, in config order.
        scaled.signals.window = ebbtide_config::time::HumanDuration::from_secs(3);
        scaled.listener.header_read_timeout = ebbtide_config::time::HumanDuration::from_secs(3);
        assert_eq!(
            restart_needed(&running, &scaled),
            ["[listener] header_read_timeout", "[signals]", "[provider]"]
        );
    }

    #[tokio::test]
    async fn reload_applies_outlier_ewma_and_health_settings_to_running_backends() {
        let server = Server::bind(&config(
            "[health]\npath = \"/a\"\ninterval = \"1s\"\n[balancer]\newma_decay = \"10s\"\n",
        ))
        .await
        .unwrap();
        let backend = server.proxy.registry.snapshot().backends[0].clone();
        assert_eq!(backend.outlier_config().consecutive_failures, 5);

        server.reload(&config(
            "[health]\npath = \"/b\"\ninterval = \"250ms\"\nrise = 4\n\
             [balancer]\newma_decay = \"2s\"\n\
             [outlier]\nconsecutive_failures = 2\nbase_ejection = \"1s\"\nmax_ejection = \"9s\"\n\
             count_5xx = true\n[upstream]\nresponse_timeout = \"7s\"\n",
        ));
        let o = backend.outlier_config();
        assert_eq!(
            (o.consecutive_failures, o.base_ejection, o.max_ejection),
            (2, 1_000_000_000, 9_000_000_000)
        );
        assert_eq!(backend.ewma.decay(), 2_000_000_000);
        let s = server.proxy.settings();
        assert!(s.outlier.count_5xx);
        assert_eq!(s.response_timeout, Duration::from_secs(7));
        let h = server.health_config();
        assert_eq!(
            (h.path.as_deref(), h.interval.0, h.rise),
            (Some("/b"), Duration::from_millis(250), 4)
        );
        // A backend added after the reload gets the new settings too.
        let (added, _) = server
            .proxy
            .registry
            .add_or_renew(
                BackendSpec::plain("127.0.0.1:2", Origin::Api),
                BackendState::Starting,
            )
            .unwrap();
        assert_eq!(added.outlier_config(), o);
        assert_eq!(added.ewma.decay(), 2_000_000_000);

        // Turning checks off needs a restart: the running path is kept.
        server.reload(&config("[health]\ninterval = \"100ms\"\n"));
        let h = server.health_config();
        assert_eq!(
            (h.path.as_deref(), h.interval.0),
            (Some("/a"), Duration::from_millis(100))
        );
        assert_eq!(server.proxy.counters.reloads_ok.load(Ordering::Relaxed), 2);
    }
}
