//! `ebbtide serve`: binds the balancer, starts the provider's backends (a fixed count, or as
//! many as the autoscaler decides), reloads config on SIGHUP, and on SIGTERM or ctrl-c drains
//! and stops everything it started.

use crate::admin_view::AutoscalerView;
use crate::in_process::{self, InProcess};
use ebbtide_autoscaler::control::driver::Now;
use ebbtide_autoscaler::{ControlStep, CostMeter, Driver, SignalSource};
use ebbtide_balancer::serve::Server;
use ebbtide_config::Config;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(30);

/// Runs the balancer until a shutdown signal.
pub async fn run(cfg: Config, path: Option<PathBuf>) -> Result<(), String> {
    let server = Arc::new(Server::bind(&cfg).await?);
    // Tests and scripts read the bound addresses from this line (ports may be 0 in config).
    let redirect = match server.redirect_addr() {
        Some(a) => format!(" (redirect http://{a})"),
        None => String::new(),
    };
    println!(
        "ebbtide listening on {}://{}{redirect} (admin http://{})",
        if server.is_tls() { "https" } else { "http" },
        server.local_addr(),
        server.admin_addr()
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(d) = &cfg.discovery {
        let (client, _) = ebbtide_autoscaler::providers::kubernetes::connect(
            d.api_server.as_deref(),
            d.namespace.as_deref(),
        )
        .await?;
        let watch = ebbtide_balancer::discovery::Watch::new(
            server.proxy().clone(),
            client,
            d,
            cfg.lifecycle.drain_timeout.0,
        )
        .await?;
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = watch.run(stop).await {
                tracing::error!(error = %e, "discovery stopped");
            }
        }));
    }
    let fleet = match &cfg.provider {
        Some(p) => {
            let provider = ebbtide_autoscaler::providers::build(p, crate::health_probe(&cfg))?;
            provider.prepare().await?;
            let membership = Arc::new(InProcess::new(server.proxy().clone(), &cfg, p));
            let clock = server.proxy().clock();
            let now: Now = Arc::new(move || clock.now());
            let (step, interval, source) = match &cfg.autoscaler {
                Some(a) => {
                    let signals: Box<dyn SignalSource> =
                        Box::new(in_process::Signals(server.proxy().clone()));
                    (
                        ControlStep::new(a, crate::admin_view::EVENTS_SHOWN).with_kinds(p, a),
                        a.interval.0,
                        Some(signals),
                    )
                }
                // No autoscaler: `count` backends, lost ones replaced within a second.
                None => (
                    ControlStep::fixed(p.count, CostMeter::new(p.cost_per_hour, 0)),
                    Duration::from_secs(1),
                    None,
                ),
            };
            let driver = Driver::new(step, provider, membership, now, interval);
            if cfg.autoscaler.is_some() {
                let view = Arc::new(AutoscalerView(driver.shared()));
                server.admin().set_events(view.clone());
                server.admin().add_metrics(view);
            }
            let (d, stop) = (driver.clone(), stop_rx.clone());
            tasks.push(tokio::spawn(async move { d.run(source, stop).await }));
            Some(driver)
        }
        None => None,
    };
    if let Some(path) = path {
        tokio::spawn(reload_on_sighup(server.clone(), path));
    }
    let shutdown = async move {
        shutdown_signal().await;
        // Stop scaling first, so nothing is launched while the balancer drains.
        let _ = stop_tx.send(true);
    };
    server.run(shutdown, DRAIN).await?;
    for t in tasks {
        let _ = t.await;
    }
    if let Some(fleet) = fleet {
        // The balancer has already finished its in-flight requests: nothing left to drain.
        fleet.shutdown(false).await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn reload_on_sighup(server: Arc<Server>, path: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        server.reload_file(&path);
    }
}

/// Resolves on SIGTERM or ctrl-c.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("cannot listen for SIGTERM");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
