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
pub mod local;

pub use command::CommandProvider;
pub use local::LocalProvider;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
    /// The config name of this kind (`local`, `command`), for logs.
    fn kind(&self) -> &'static str;

    /// Starts one backend and returns once it has an address; it may still be booting.
    fn launch(&self) -> ProviderFuture<'_, Result<Instance, String>>;

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

    /// Stops every instance, for the end of the run.
    fn shutdown(&self) -> ProviderFuture<'_, ()>;
}

/// Builds the provider `[provider]` names.
pub fn build(cfg: &ebbtide_config::Provider) -> Result<Box<dyn Provider>, String> {
    Ok(match cfg.kind {
        ebbtide_config::ProviderKind::Local => {
            Box::new(LocalProvider::new(&cfg.command, cfg.boot_timeout.0)?)
        }
        ebbtide_config::ProviderKind::Command => Box::new(CommandProvider::new(cfg)?),
    })
}

/// Polls `GET /healthz` on `address` every 50 ms until it answers 200, `gone` reports the
/// instance dead (its reason is returned), or `deadline` passes.
pub(crate) async fn wait_healthy(
    address: &str,
    deadline: Instant,
    gone: impl Fn() -> Option<String>,
) -> Result<(), String> {
    let addr = resolve(address).await?;
    loop {
        if let Some(why) = gone() {
            return Err(why);
        }
        if health_status(addr).await == Some(200) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err("not healthy in time".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first socket address `host:port` names.
async fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = address.parse() {
        return Ok(a);
    }
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| format!("cannot resolve {address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address} resolves to no address"))
}

/// The status code of `GET /healthz`, or None when it cannot be had within half a second.
pub async fn health_status(addr: SocketAddr) -> Option<u16> {
    let probe = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: ebbtide\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 32];
        let mut n = 0;
        while n < 12 {
            let k = s.read(&mut buf[n..]).await.ok()?;
            if k == 0 {
                break;
            }
            n += k;
        }
        let line = std::str::from_utf8(&buf[..n]).ok()?;
        line.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_millis(500), probe)
        .await
        .ok()
        .flatten()
}
