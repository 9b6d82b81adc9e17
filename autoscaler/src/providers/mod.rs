//! Where backends come from. A provider starts and stops instances and reports their addresses;
//! the caller (the fleet) waits for their health, registers them with the balancer, drains them
//! before it asks the provider to stop them, and replaces the ones the provider reports lost.
//!
//! The trait is shaped so that a Kubernetes provider fits without changing the callers: `launch`
//! raises the Deployment's `replicas` through the scale subresource and returns the new pod's
//! endpoint once endpoint discovery shows it; `terminate` marks that pod cheapest to delete
//! (`controller.kubernetes.io/pod-deletion-cost`) and lowers `replicas`; `lost` reports
//! endpoints that vanished without being asked to; `list` is the endpoints.

pub mod command;
pub mod docker;
mod held;
pub mod kinds;
pub mod kubernetes;
pub mod local;

pub use command::CommandProvider;
pub use docker::DockerProvider;
pub use kubernetes::KubernetesProvider;
pub use local::LocalProvider;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One backend instance a provider started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The provider's name for it.
    pub id: String,
    /// host:port it serves on.
    pub address: String,
}

/// The future a provider's async operations return: boxed so that providers can sit behind
/// `dyn Provider` (the config picks one at run time).
pub type ProviderFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Starts and stops backends. Implementations keep their own table of what they started.
pub trait Provider: Send + Sync {
    /// The config name of this kind (`local`, `command`, `docker`, `kubernetes`), for logs.
    fn kind(&self) -> &'static str;

    /// Connects and checks what must hold before the first launch (for `kubernetes`: no other
    /// autoscaler scales the same resource); an error stops ebbtide from starting.
    fn prepare(&self) -> ProviderFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Starts one backend and returns once it has an address; it may still be booting.
    fn launch(&self) -> ProviderFuture<'_, Result<Instance, String>>;

    /// Starts one backend of instance kind `kind` (`[[provider.kinds]]`). Providers built
    /// with kinds route it (see [`kinds::KindedProvider`]); the others refuse.
    fn launch_kind<'a>(&'a self, kind: &'a str) -> ProviderFuture<'a, Result<Instance, String>> {
        let why = format!("the {} provider has no instance kind `{kind}`", self.kind());
        Box::pin(async move { Err(why) })
    }

    /// Waits until the instance answers its health check, or fails (and stops it) when it
    /// cannot within the provider's boot timeout.
    fn wait_ready<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, Result<(), String>>;

    /// Stops one instance; the caller has drained it first.
    fn terminate<'a>(&'a self, id: &'a str) -> ProviderFuture<'a, Result<(), String>>;

    /// The instances this provider started and has not stopped.
    fn list(&self) -> Vec<Instance>;

    /// Takes the instances that went away without being asked to (a crashed process) out of
    /// the table, with why; the caller replaces them. Providers that cannot tell return none.
    fn lost(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Hands over what to wake when [`Provider::lost`] has something new, so that the caller
    /// takes a backend that is going away out of the balancers at once instead of at its next
    /// interval (a pod Kubernetes deletes is sent SIGTERM as it is marked). Providers that
    /// only poll leave it unused.
    fn wake_on_lost(&self, _wake: Arc<tokio::sync::Notify>) {}

    /// Stops every instance, for the end of the run.
    fn shutdown(&self) -> ProviderFuture<'_, ()>;

    /// Measured launch-to-healthy times of recent launches, oldest first, for the cost rules'
    /// look-ahead in place of a configured guess. Providers that do not measure return none.
    fn boot_times(&self) -> Vec<Duration> {
        Vec::new()
    }
}

/// Whether the backend at an address answers its health check now. The wiring hands in the
/// balancer's own probe, so a backend is judged ready by the same check before it takes traffic
/// as after (health and provisioning as separate concerns, as Pingora keeps them).
pub type Probe = Arc<dyn Fn(String) -> ProviderFuture<'static, bool> + Send + Sync>;

/// Builds the provider `[provider]` names; its backends are ready once `probe` passes.
/// With `[[provider.kinds]]`, one provider per kind behind a [`kinds::KindedProvider`].
pub fn build(cfg: &ebbtide_config::Provider, probe: Probe) -> Result<Box<dyn Provider>, String> {
    if !cfg.kinds.is_empty() {
        return kinds::KindedProvider::build(cfg, probe).map(|p| Box::new(p) as _);
    }
    Ok(match cfg.kind {
        ebbtide_config::ProviderKind::Local => {
            Box::new(LocalProvider::new(&cfg.command, cfg.boot_timeout.0, probe)?)
        }
        ebbtide_config::ProviderKind::Command => Box::new(CommandProvider::new(cfg, probe)?),
        ebbtide_config::ProviderKind::Docker => Box::new(DockerProvider::new(cfg, probe)?),
        ebbtide_config::ProviderKind::Kubernetes => Box::new(KubernetesProvider::new(cfg, probe)?),
    })
}

/// Probes `address` every 50 ms until `probe` passes, `gone` reports the instance dead (its
/// reason is returned), or `deadline` passes.
pub(crate) async fn wait_healthy(
    probe: &Probe,
    address: &str,
    deadline: Instant,
    gone: impl Fn() -> Option<String>,
) -> Result<(), String> {
    loop {
        if let Some(why) = gone() {
            return Err(why);
        }
        if probe(address.to_string()).await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err("not healthy in time".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
