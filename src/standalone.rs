//! `ebbtide autoscale`: the autoscaler alone, for balancers in other processes (or machines).
//! It reads their signals and registers its provider's backends through their admin APIs, and
//! serves its own decisions and cost on `[admin] address` (`/api/v1/events`, `/metrics`,
//! `/healthz`), and the dashboard (`/`, `/api/v1/stream`) for the fleet it manages: the signals
//! summed over its balancers and the union of their backends, read every second. On SIGTERM or
//! ctrl-c it drains its backends from every balancer, stops them, and exits 0.
//!
//! Its balancers are `[autoscaler] balancers` (a fixed list), or the ready endpoints of their
//! admin Service (`[autoscaler.balancer_discovery]`), followed with the same EndpointSlice watch
//! as `[discovery]` so that balancer replicas may come and go.

use crate::admin_view::{AutoscalerView, EVENTS_SHOWN};
use crate::remote::{Balancers, RemoteSignals};
use ebbtide_autoscaler::{ControlStep, Driver};
use ebbtide_balancer::admin::AdminBase;
use ebbtide_balancer::api::{self, client::AdminClient};
use ebbtide_balancer::clock::Clock;
use ebbtide_balancer::discovery;
use ebbtide_balancer::shell::dashboard::FleetSource;
use ebbtide_config::{Config, ConfigError};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Checks what only `ebbtide autoscale` needs, as `file:line:col: key: message`.
pub fn usable(cfg: &Config, path: &Path) -> Result<(), ConfigError> {
    let Some(a) = &cfg.autoscaler else {
        return Err(ConfigError::at_key(
            path,
            "autoscaler",
            "is missing; ebbtide autoscale needs an [autoscaler] section with `balancers` or \
             [autoscaler.balancer_discovery]",
        ));
    };
    // Both set is a config error for every command (see the config crate's checks).
    if a.balancers.is_empty() && a.balancer_discovery.is_none() {
        return Err(ConfigError::at_key(
            path,
            "autoscaler.balancers",
            "is empty; ebbtide autoscale needs the admin URLs of the balancers it scales, e.g. \
             balancers = [\"http://127.0.0.1:9901\"], or their Service in \
             [autoscaler.balancer_discovery]",
        ));
    }
    if cfg.provider.is_none() {
        return Err(ConfigError::at_key(
            path,
            "provider",
            "is missing; the autoscaler scales the provider's backends",
        ));
    }
    Ok(())
}

/// Runs until a shutdown signal.
pub async fn run(cfg: Config) -> Result<(), String> {
    let (Some(a), Some(p)) = (cfg.autoscaler.clone(), cfg.provider.clone()) else {
        return Err("the config needs [autoscaler] and [provider]".into());
    };
    let admins = admins_of(&a)?;
    let listener = tokio::net::TcpListener::bind(&cfg.admin.address)
        .await
        .map_err(|e| format!("cannot listen on admin.address {}: {e}", cfg.admin.address))?;
    let admin_addr = listener.local_addr().map_err(|e| e.to_string())?;
    // Tests and scripts read the bound address from this line (the port may be 0 in config).
    match &a.balancer_discovery {
        Some(d) => println!(
            "ebbtide autoscale on http://{admin_addr}, scaling the balancers of Service {} (port {})",
            d.service.as_deref().unwrap_or_default(),
            port_text(d.port.as_ref()),
        ),
        None => println!(
            "ebbtide autoscale on http://{admin_addr}, scaling {} balancer(s): {}",
            admins.len(),
            admins.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
    // With several replicas, only the Lease holder goes on from here.
    let mut elector = match &cfg.leader_election {
        Some(l) => {
            let (client, _) = ebbtide_autoscaler::providers::kubernetes::connect(
                l.api_server.as_deref(),
                l.namespace.as_deref(),
            )
            .await?;
            Some(ebbtide_autoscaler::leader::Elector::new(client, l))
        }
        None => None,
    };
    if let Some(e) = elector.as_mut() {
        tracing::info!(identity = %e.identity(), "leader election: waiting for the lease");
        tokio::select! {
            _ = e.acquire() => {}
            _ = crate::serve::shutdown_signal() => {
                tracing::info!("stopped while waiting for the lease");
                return Ok(());
            }
        }
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let clock = Clock::new();
    let balancers = Arc::new(Balancers::new(
        admins,
        a.balancer_token.clone(),
        &p,
        a.registration_lease.0,
        cfg.lifecycle.drain_timeout.0,
        clock,
    ));
    // Discovered balancers: found (the first list of the Service's endpoints) before the first
    // decision, so that it reads every balancer's signals.
    // The Lease is handed back when this stops or fails before acting, so that another replica
    // need not wait for it to expire.
    let follower = match &a.balancer_discovery {
        Some(d) => {
            let found = tokio::select! {
                found = discover_balancers(d, stop_rx.clone()) => found.map(Some),
                _ = crate::serve::shutdown_signal() => Ok(None),
            };
            let followed = match found {
                Ok(Some(found)) => tokio::select! {
                    f = follow_balancers(balancers.clone(), found) => Ok(Some(f)),
                    _ = crate::serve::shutdown_signal() => Ok(None),
                },
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            match followed {
                Ok(Some(f)) => Some(f),
                stopped_or_failed => {
                    if let Some(e) = elector.as_mut() {
                        e.release().await;
                    }
                    let _ = stop_tx.send(true);
                    return stopped_or_failed
                        .map(|_| tracing::info!("stopped while finding the balancers"));
                }
            }
        }
        None => None,
    };
    let provider = ebbtide_autoscaler::providers::build(&p, crate::health_probe(&cfg))?;
    provider.prepare().await?;
    let now = Arc::new(move || clock.now());
    let driver = Driver::new(
        ControlStep::new(&a, EVENTS_SHOWN).with_kinds(&p, &a),
        provider,
        balancers.clone(),
        now,
        a.interval.0,
    );
    let view = Arc::new(AutoscalerView(driver.shared()));
    let fleet = Arc::new(RemoteFleet::default());
    let fleet_reader = tokio::spawn(read_fleet(
        fleet.clone(),
        balancers.clone(),
        AdminClient::new(a.balancer_token.clone(), Duration::from_secs(2)),
        stop_rx.clone(),
    ));
    let admin = tokio::spawn(serve_admin(
        listener,
        view,
        fleet,
        cfg.admin.token.clone(),
        stop_rx.clone(),
    ));
    let control = {
        let d = driver.clone();
        tokio::spawn(async move {
            d.run(Some(Box::new(RemoteSignals(balancers))), stop_rx)
                .await
        })
    };
    let lost = async {
        match elector.as_mut() {
            Some(e) => e.hold().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = crate::serve::shutdown_signal() => {}
        why = lost => {
            // Another replica may hold the lease from now on: no write of this one may follow.
            tracing::error!(%why, "leader election: lost the lease; stopping every write at once");
            std::process::exit(3);
        }
    }
    tracing::info!("stopping: draining this autoscaler's backends from the balancers");
    let _ = stop_tx.send(true);
    let _ = control.await;
    driver.shutdown(true).await;
    if let Some(e) = elector.as_mut() {
        e.release().await;
    }
    let _ = admin.await;
    let _ = fleet_reader.await;
    if let Some((watcher, follower)) = follower {
        let _ = watcher.await;
        let _ = follower.await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The admin addresses `[autoscaler] balancers` names (none with balancer discovery).
fn admins_of(a: &ebbtide_config::autoscaler::Autoscaler) -> Result<BTreeSet<String>, String> {
    a.balancers
        .iter()
        .map(|u| ebbtide_config::autoscaler::parse_admin_url(u))
        .collect()
}

fn port_text(port: Option<&ebbtide_config::PortRef>) -> String {
    match port {
        Some(ebbtide_config::PortRef::Name(n)) => n.clone(),
        Some(ebbtide_config::PortRef::Number(n)) => n.to_string(),
        None => "its only one".into(),
    }
}

/// The balancers' admin addresses: the ready endpoints of their Service, sent on the channel
/// after the first list and after every change of the set, until `stop`. Fails at once when the
/// Service or its port is missing. The watch is `[discovery]`'s (relists after `410 Gone`,
/// resumes dropped streams); a balancer whose endpoint is not ready or terminating is not one.
async fn discover_balancers(
    d: &ebbtide_config::autoscaler::BalancerDiscovery,
    stop: watch::Receiver<bool>,
) -> Result<
    (
        tokio::task::JoinHandle<()>,
        watch::Receiver<Option<BTreeSet<String>>>,
    ),
    String,
> {
    const SECTION: &str = "autoscaler.balancer_discovery";
    let service = d
        .service
        .clone()
        .ok_or(format!("{SECTION}.service is required"))?;
    let (client, _) = ebbtide_autoscaler::providers::kubernetes::connect(
        d.api_server.as_deref(),
        d.namespace.as_deref(),
    )
    .await?;
    let port = discovery::service_port(&client, &service, d.port.as_ref(), SECTION).await?;
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(async move {
        let send = |e: &std::collections::BTreeMap<String, discovery::Condition>| {
            let ready = discovery::ready(e);
            tx.send_if_modified(|last| {
                let changed = last.as_ref() != Some(&ready);
                *last = Some(ready);
                changed
            });
        };
        if let Err(e) =
            discovery::watch_endpoints(client, &service, port.as_deref(), stop, send).await
        {
            tracing::error!(error = %e, "balancer discovery stopped");
        }
    });
    Ok((task, rx))
}

/// Waits for the first set of balancers and applies it, then returns the watch task and a task
/// that applies every later set (see [`Balancers::set`]) until the watch ends.
async fn follow_balancers(
    balancers: Arc<Balancers>,
    (watcher, mut found): (
        tokio::task::JoinHandle<()>,
        watch::Receiver<Option<BTreeSet<String>>>,
    ),
) -> (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>) {
    while found.changed().await.is_ok() {
        let first = found.borrow_and_update().clone();
        if let Some(first) = first {
            balancers.set(first).await;
            break;
        }
    }
    let follower = tokio::spawn(async move {
        while found.changed().await.is_ok() {
            let now = found.borrow_and_update().clone();
            if let Some(now) = now {
                balancers.set(now).await;
            }
        }
    });
    (watcher, follower)
}

/// The balancers' fleet as last read, for the dashboard.
#[derive(Default)]
struct RemoteFleet(Mutex<(Option<api::Signals>, Vec<api::BackendInfo>)>);

impl FleetSource for RemoteFleet {
    fn signals(&self) -> Option<api::Signals> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    fn backends(&self) -> Vec<api::BackendInfo> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).1.clone()
    }
}

/// Every second until `stop`: every balancer's signals (summed, see [`api::Signals::merged`])
/// and backends (one row per address: in-flight, requests and failures summed over the
/// balancers, the state of the first that lists it).
async fn read_fleet(
    fleet: Arc<RemoteFleet>,
    balancers: Arc<Balancers>,
    client: AdminClient,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let admins = balancers.admins();
        let mut signals = Vec::new();
        let mut backends: Vec<api::BackendInfo> = Vec::new();
        for admin in &admins {
            if let Ok(s) = client.signals(admin).await {
                signals.push(s);
            }
            for b in client.backends(admin).await.unwrap_or_default() {
                match backends.iter_mut().find(|x| x.address == b.address) {
                    Some(x) => {
                        x.in_flight += b.in_flight;
                        x.requests += b.requests;
                        x.failures += b.failures;
                    }
                    None => backends.push(b),
                }
            }
        }
        *fleet.0.lock().unwrap_or_else(|e| e.into_inner()) =
            (api::Signals::merged(&signals), backends);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The autoscaler's own admin API: events, metrics, a liveness check and the dashboard, on the
/// same skeleton as the balancer's (`AdminBase`: token check, shared routes).
async fn serve_admin(
    listener: tokio::net::TcpListener,
    view: Arc<AutoscalerView>,
    fleet: Arc<RemoteFleet>,
    token: Option<String>,
    stop: watch::Receiver<bool>,
) {
    let base = AdminBase::new(token);
    base.add_metrics(view.clone());
    base.set_events(view);
    base.set_fleet(fleet);
    let base = Arc::new(base);
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
        hyper_util::rt::TokioExecutor::new(),
    ));
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let limits = ebbtide_balancer::serve::ConnLimits::default();
    ebbtide_balancer::serve::accept_loop(listener, builder, graceful, stop, limits, move |_peer| {
        let base = base.clone();
        hyper::service::service_fn(move |req| {
            let resp = base
                .answer(&req, &[])
                .expect("with no routes of its own, every answer is the base's");
            async move { Ok::<_, std::convert::Infallible>(resp) }
        })
    })
    .await;
}
