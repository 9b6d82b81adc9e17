//! `ebbtide serve`: binds the balancer, starts the provider's backends and registers them,
//! reloads config on SIGHUP, and on SIGTERM or ctrl-c drains and stops everything it started.

use ebbtide_autoscaler::providers::LocalProvider;
use ebbtide_balancer::proxy::Proxy;
use ebbtide_balancer::registry::{BackendSpec, BackendState, Origin};
use ebbtide_balancer::serve::Server;
use ebbtide_config::Config;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(30);

/// Runs the balancer until a shutdown signal.
pub async fn run(cfg: Config, path: Option<PathBuf>) -> Result<(), String> {
    let server = Arc::new(Server::bind(&cfg).await?);
    // Tests and scripts read the bound addresses from this line (ports may be 0 in config).
    println!(
        "ebbtide listening on http://{} (admin http://{})",
        server.local_addr(),
        server.admin_addr()
    );
    let provider = match &cfg.provider {
        Some(p) => {
            let provider = Arc::new(LocalProvider::new(&p.command, p.boot_timeout.0)?);
            for _ in 0..p.count {
                start_backend(
                    provider.clone(),
                    server.proxy.clone(),
                    p.capacity,
                    p.cost_per_hour,
                );
            }
            Some(provider)
        }
        None => None,
    };
    if let Some(path) = path {
        tokio::spawn(reload_on_sighup(server.clone(), path));
    }
    server.run(shutdown_signal(), DRAIN).await?;
    if let Some(p) = provider {
        p.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Starts one backend: registered as `starting` at once, `active` once healthy.
fn start_backend(
    provider: Arc<LocalProvider>,
    proxy: Arc<Proxy>,
    capacity: Option<u32>,
    cost: f64,
) {
    tokio::spawn(async move {
        let instance = match provider.launch() {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "could not start a backend");
                return;
            }
        };
        let spec = BackendSpec {
            address: instance.address.clone(),
            capacity,
            weight: 1,
            cost_per_hour: cost,
            origin: Origin::Provider,
            lease_until: None,
        };
        let backend = match proxy.registry.add_or_renew(spec, BackendState::Starting) {
            Ok((b, _)) => b,
            Err(e) => {
                tracing::error!(error = %e, "could not register a backend");
                provider.terminate(&instance.id).await;
                return;
            }
        };
        match provider.wait_ready(&instance).await {
            Ok(()) => {
                backend.set_state(BackendState::Active);
                proxy.dispatcher.dispatch();
                tracing::info!(backend = %instance.address, "backend is healthy and active");
            }
            Err(e) => {
                tracing::error!(error = %e, "backend did not become healthy");
                proxy.registry.remove(backend.id);
            }
        }
    });
}

async fn reload_on_sighup(server: Arc<Server>, path: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match Config::from_file(&path) {
            Ok(cfg) => server.reload(&cfg),
            Err(errors) => {
                server
                    .proxy
                    .counters
                    .reloads_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!("config reload refused; keeping the running config:\n{errors}")
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("cannot listen for SIGTERM");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
