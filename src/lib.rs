//! ebbtide's wiring: the balancer, the autoscaler's control plane and the simulator put together
//! into the commands `ebbtide` runs. The adapters between the balancer and the autoscaler live
//! here, since those two crates never import each other:
//!
//! - [`in_process`]: the balancer of this process as the autoscaler's membership and signal
//!   source (`ebbtide serve`);
//! - [`remote`]: balancers elsewhere, through their admin APIs (`ebbtide autoscale`);
//! - [`admin_view`]: the autoscaler's decisions and cost as the admin API shows them.
//!
//! `main.rs` only parses arguments and calls [`serve`], [`autoscale`] or the crates' own
//! commands, so end-to-end behaviour can be driven in-process as well as through the binary.

#![warn(missing_docs, unreachable_pub)]

mod admin_view;
mod in_process;
mod reading;
mod remote;
mod serve;
mod standalone;

pub use serve::run as serve;
pub use standalone::{run as autoscale, usable as autoscale_usable};

/// The readiness check of provider backends: the balancer's own health probe (`GET` of
/// `[health] path`, or `/healthz` without one, passing on a 2xx within `[health] timeout`), so a
/// backend is judged ready before it takes traffic by the check that judges it afterwards. It
/// speaks `[provider] protocol` (TLS verified with `[upstream] ca`, else the system's bundle).
pub fn health_probe(cfg: &ebbtide_config::Config) -> ebbtide_autoscaler::providers::Probe {
    let health = &cfg.health;
    let path = health.path.clone().unwrap_or_else(|| "/healthz".into());
    let timeout = health.timeout.0;
    let protocol = cfg
        .provider
        .as_ref()
        .map(|p| p.protocol)
        .unwrap_or_default();
    let tls = std::sync::Arc::new(ebbtide_balancer::upstream_tls::UpstreamTls::new(
        cfg.upstream.ca.clone(),
    ));
    std::sync::Arc::new(move |address: String| {
        let path = path.clone();
        let tls = tls.clone();
        Box::pin(async move {
            let target = match tls.target(protocol, &address, None, None) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(backend = %address, error = %e, "cannot probe the backend");
                    return false;
                }
            };
            let connector =
                ebbtide_balancer::pool::Connector::new(address, protocol, target, timeout);
            ebbtide_balancer::health::probe(&connector, &path, timeout).await
        })
    })
}

/// Reads the TLS files `cfg` names (certificates, keys, client CA) as `ebbtide serve` would,
/// for `ebbtide check` and before start: each problem at its key and line in `path`.
pub fn tls_usable(
    cfg: &ebbtide_config::Config,
    path: &std::path::Path,
) -> Result<(), ebbtide_config::ConfigErrors> {
    let problems = ebbtide_balancer::tls::Tls::check(&cfg.listener);
    if problems.is_empty() {
        return Ok(());
    }
    Err(ebbtide_config::ConfigErrors(
        problems
            .into_iter()
            .map(|p| ebbtide_config::ConfigError::at_key(path, &p.key, p.message))
            .collect(),
    ))
}

/// A tokio runtime with `threads` workers (default: the number of cores). One worker means the
/// current-thread runtime: no work-stealing queues or cross-thread wake-ups to pay for when
/// there is no other thread to share with.
pub fn runtime(threads: Option<usize>) -> tokio::runtime::Runtime {
    let mut b = match threads {
        Some(n) if n <= 1 => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    b.enable_all()
        .build()
        .expect("cannot start the tokio runtime")
}

/// The runtime `ebbtide serve` runs on for `[runtime]`: with `accept = "shared"` the one that
/// serves clients too ([`runtime`]); with `accept = "per_worker"` the worker threads bring their
/// own runtimes, and this one, a single thread, runs only the background work (health checks,
/// the autoscaler, discovery, the admin API).
pub fn serve_runtime(cfg: &ebbtide_config::Runtime) -> tokio::runtime::Runtime {
    match cfg.accept {
        ebbtide_config::AcceptMode::Shared => runtime(cfg.worker_threads),
        ebbtide_config::AcceptMode::PerWorker => runtime(Some(1)),
    }
}

/// Logs to stderr; the level comes from `EBBTIDE_LOG` (error, warn, info, debug, trace).
pub fn init_logging() {
    let level = std::env::var("EBBTIDE_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}
