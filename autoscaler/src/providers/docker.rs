//! The docker provider: each backend is a container on a Docker Engine, created from
//! `[provider] image` with CPU and memory limits enforced by its cgroup (`cpus` becomes
//! `NanoCpus`, `memory` becomes `Memory`, with swap held to the same figure) and `init` so the
//! backend gets SIGTERM from a real init (docker-init) rather than running as PID 1.
//!
//! - **Addresses.** The container port is published on 127.0.0.1 at a free host port (host port
//!   0, read back from inspect). With `network`, the container joins that user-defined network
//!   instead and is reached at its address there (for an ebbtide that runs in a container on the
//!   same network, as deploy/docker-compose.yml does).
//! - **Ownership.** Every container carries `ebbtide.managed=true`, `ebbtide.owner=<owner>` and
//!   `ebbtide.instance=<id>` (the id is also its name). On start, containers with the same owner
//!   that a previous run left (it was killed with SIGKILL, or the machine rebooted) are
//!   **removed**, not adopted: their boot and billing history is gone, their image or limits may
//!   no longer be what the config says, and the balancer that sent them traffic has restarted
//!   with no connection to them; a fresh container is a few hundred milliseconds away. So no
//!   container outlives its ebbtide for longer than the next start.
//! - **Health.** A launched container is ready once the balancer's probe passes within
//!   `boot_timeout`; it fails fast when the container exits first. Either failure removes it.
//!   The time from launch to healthy is measured for each launch ([`Provider::boot_times`]).
//! - **Crashes.** A watcher lists this owner's containers every [`POLL`]; one that exited (or
//!   was removed behind ebbtide's back) is removed and reported by [`Provider::lost`], so the
//!   control step replaces it.
//! - **Stopping.** `terminate` stops exactly that container (SIGTERM, [`STOP_GRACE`], then
//!   SIGKILL) and removes it; `shutdown` does so for all of them at once, then removes any
//!   other container with this owner's label (a launch that was still under way).
//!
//! Nothing is pulled: the image must be on the Docker host (built or loaded there).

use super::held::Held;
use super::{Instance, Probe, Provider, ProviderFuture};
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

/// How long a stopped container gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often the watcher looks for containers that died.
pub const POLL: Duration = Duration::from_millis(500);

/// Label on every container ebbtide starts.
pub const LABEL_MANAGED: &str = "ebbtide.managed";
/// Label naming the ebbtide that owns a container (`[provider] owner`).
pub const LABEL_OWNER: &str = "ebbtide.owner";
/// Label naming the instance (the container's name too).
pub const LABEL_INSTANCE: &str = "ebbtide.instance";

/// What each container is created from.
#[derive(Debug, Clone)]
struct Spec {
    image: String,
    command: Vec<String>,
    env: Vec<String>,
    labels: HashMap<String, String>,
    port: u16,
    network: Option<String>,
    nano_cpus: Option<i64>,
    memory: Option<i64>,
}

impl Spec {
    fn from_config(cfg: &ebbtide_config::Provider) -> Result<Spec, String> {
        let image = cfg
            .image
            .clone()
            .ok_or("provider.image is required with kind = \"docker\"")?;
        let port = cfg
            .port
            .ok_or("provider.port is required with kind = \"docker\"")?;
        let nano_cpus = cfg.cpus.map(|c| (c * 1e9).round() as i64);
        let memory = cfg
            .memory
            .map(|m| i64::try_from(m.0).map_err(|_| "provider.memory is too large"))
            .transpose()?;
        let command = cfg
            .container_command()
            .iter()
            .map(|w| w.replace("{port}", &port.to_string()))
            .collect();
        Ok(Spec {
            image,
            command,
            env: cfg.env.to_list(),
            labels: cfg
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            port,
            network: cfg.network.clone(),
            nano_cpus,
            memory,
        })
    }

    fn port_key(&self) -> String {
        format!("{}/tcp", self.port)
    }

    /// The create request for the container `name` of `owner`.
    fn body(&self, owner: &str, name: &str) -> ContainerCreateBody {
        let mut labels = self.labels.clone();
        labels.insert(LABEL_MANAGED.into(), "true".into());
        labels.insert(LABEL_OWNER.into(), owner.into());
        labels.insert(LABEL_INSTANCE.into(), name.into());
        let port_bindings = match self.network {
            Some(_) => None,
            None => Some(HashMap::from([(
                self.port_key(),
                Some(vec![PortBinding {
                    host_ip: Some("127.0.0.1".into()),
                    host_port: Some("0".into()),
                }]),
            )])),
        };
        ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: (!self.command.is_empty()).then(|| self.command.clone()),
            env: (!self.env.is_empty()).then(|| self.env.clone()),
            labels: Some(labels),
            exposed_ports: Some(vec![self.port_key()]),
            host_config: Some(HostConfig {
                nano_cpus: self.nano_cpus,
                memory: self.memory,
                // No swap beyond the limit: the limit is what the container gets.
                memory_swap: self.memory,
                init: Some(true),
                port_bindings,
                network_mode: self.network.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

#[derive(Default)]
struct State {
    /// The containers this provider started and has not stopped; its `lost` are the serving
    /// containers the watcher found dead.
    held: Held,
    /// Booting containers the watcher found dead, with why: `wait_ready` fails on them.
    died: HashMap<String, String>,
    closed: bool,
}

struct Inner {
    /// Connected, version not negotiated yet.
    unready: Docker,
    /// Negotiated, leftovers removed, watcher started: see [`Inner::client`].
    ready: OnceCell<Docker>,
    spec: Spec,
    owner: String,
    /// Part of every container name, so that names of two runs never clash.
    run: String,
    boot_timeout: Duration,
    probe: Probe,
    state: Mutex<State>,
    next: AtomicU64,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

/// Starts backends as Docker containers.
pub struct DockerProvider {
    inner: Arc<Inner>,
}

impl DockerProvider {
    /// A provider for `[provider] kind = "docker"`, talking to the Engine at `DOCKER_HOST` (or
    /// the local socket). When called inside a tokio runtime it also starts, in the background,
    /// the API version negotiation and the removal of containers a previous run of the same
    /// owner left; the first launch waits for both.
    pub fn new(cfg: &ebbtide_config::Provider, probe: Probe) -> Result<Self, String> {
        let spec = Spec::from_config(cfg)?;
        let unready = Docker::connect_with_defaults()
            .map_err(|e| format!("cannot connect to the Docker daemon: {e}"))?;
        let owner = cfg.owner.clone().unwrap_or_else(|| "ebbtide".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let run = format!("{:x}", (std::process::id() << 12) ^ (nanos >> 8));
        let inner = Arc::new(Inner {
            unready,
            ready: OnceCell::new(),
            spec,
            owner,
            run,
            boot_timeout: cfg.boot_timeout.0,
            probe,
            state: Mutex::new(State::default()),
            next: AtomicU64::new(1),
            watcher: Mutex::new(None),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let i = inner.clone();
            rt.spawn(async move {
                if let Err(e) = i.client().await {
                    tracing::error!(error = %e, "docker provider: cannot use the Docker daemon yet");
                }
            });
        }
        Ok(DockerProvider { inner })
    }

    /// The `ebbtide.owner` label of this provider's containers.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Connects (negotiating the API version) and removes what a previous run left, if not
    /// done yet; for callers that want it done before anything else.
    pub async fn connect(&self) -> Result<(), String> {
        self.inner.client().await.map(|_| ())
    }
}

impl Drop for DockerProvider {
    fn drop(&mut self) {
        if let Some(w) = self.inner.watcher().take() {
            w.abort();
        }
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn watcher(&self) -> MutexGuard<'_, Option<JoinHandle<()>>> {
        self.watcher.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The client, once: negotiates the API version (Debian's daemon speaks 1.41, older than
    /// bollard's default, and would refuse every call), removes leftovers, starts the watcher.
    async fn client(self: &Arc<Self>) -> Result<&Docker, String> {
        self.ready
            .get_or_try_init(|| async {
                let docker = self
                    .unready
                    .clone()
                    .negotiate_version()
                    .await
                    .map_err(|e| format!("cannot reach the Docker daemon: {e}"))?;
                tracing::info!(
                    api = %docker.client_version(),
                    owner = %self.owner,
                    image = %self.spec.image,
                    "docker provider connected"
                );
                self.remove_leftovers(&docker).await?;
                if !self.state().closed {
                    let me = self.clone();
                    let d = docker.clone();
                    *self.watcher() = Some(tokio::spawn(async move { me.watch(d).await }));
                }
                Ok(docker)
            })
            .await
    }

    /// The filters that select this owner's containers.
    fn owner_filter(&self) -> HashMap<String, Vec<String>> {
        HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_MANAGED}=true"),
                format!("{LABEL_OWNER}={}", self.owner),
            ],
        )])
    }

    /// Names of this owner's containers, running or not, with their state and status line.
    async fn owned(
        &self,
        docker: &Docker,
    ) -> Result<Vec<(String, Option<ContainerSummaryStateEnum>, String)>, DockerError> {
        let filters = self.owner_filter();
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = docker.list_containers(Some(options)).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let name = c
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_INSTANCE).cloned())
                    .or_else(|| c.id.clone())?;
                Some((name, c.state, c.status.unwrap_or_default()))
            })
            .collect())
    }

    /// Removes the containers of this owner that a previous run left.
    async fn remove_leftovers(&self, docker: &Docker) -> Result<(), String> {
        let found = self
            .owned(docker)
            .await
            .map_err(|e| format!("cannot list containers: {e}"))?;
        let mine: Vec<String> = self.state().held.table.keys().cloned().collect();
        let left: Vec<String> = found
            .into_iter()
            .map(|(name, _, _)| name)
            .filter(|n| !mine.contains(n))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            owner = %self.owner,
            count = left.len(),
            containers = %left.join(", "),
            "removing containers a previous run left"
        );
        for name in left {
            if let Err(e) = remove(docker, &name).await {
                tracing::error!(container = %name, error = %e, "could not remove a leftover container");
            }
        }
        Ok(())
    }

    async fn launch(self: &Arc<Self>) -> Result<Instance, String> {
        let launched = Instant::now();
        let docker = self.client().await?;
        if self.state().closed {
            return Err("the docker provider is shutting down".into());
        }
        let name = format!(
            "ebbtide-{}-{}",
            self.run,
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        docker
            .create_container(Some(options), self.spec.body(&self.owner, &name))
            .await
            .map_err(|e| self.describe(e, "create a container"))?;
        let started = async {
            docker
                .start_container(&name, None)
                .await
                .map_err(|e| self.describe(e, "start the container"))?;
            let address = self.address(docker, &name).await?;
            // Checked after the container exists, so a shutdown that listed before it existed
            // is made up for here.
            if self.state().closed {
                return Err("the docker provider is shutting down".to_string());
            }
            Ok(address)
        }
        .await;
        let address = match started {
            Ok(a) => a,
            Err(e) => {
                let _ = remove(docker, &name).await;
                return Err(format!("{name}: {e}; removed it"));
            }
        };
        let instance = Instance { id: name, address };
        tracing::info!(
            id = %instance.id,
            address = %instance.address,
            image = %self.spec.image,
            create_ms = launched.elapsed().as_millis() as u64,
            "container started"
        );
        self.state().held.insert(instance.clone(), launched);
        Ok(instance)
    }

    /// Where the started container `name` serves: its published 127.0.0.1 port, or its address
    /// on `network`. Read back from inspect, a few times while the daemon fills it in.
    async fn address(&self, docker: &Docker, name: &str) -> Result<String, String> {
        let mut last = String::new();
        for _ in 0..20 {
            let c = docker
                .inspect_container(name, None)
                .await
                .map_err(|e| self.describe(e, "inspect the container"))?;
            if let Some(s) = c.state.as_ref() {
                if s.running == Some(false) {
                    return Err(format!(
                        "the container exited at once (exit code {})",
                        s.exit_code.unwrap_or(-1)
                    ));
                }
            }
            let net = c.network_settings.unwrap_or_default();
            match &self.spec.network {
                Some(network) => {
                    let ip = net
                        .networks
                        .as_ref()
                        .and_then(|n| n.get(network))
                        .and_then(|e| e.ip_address.clone())
                        .filter(|ip| !ip.is_empty());
                    if let Some(ip) = ip {
                        return Ok(format!("{ip}:{}", self.spec.port));
                    }
                    last = format!("no address on network `{network}` yet");
                }
                None => {
                    let port = net
                        .ports
                        .as_ref()
                        .and_then(|p| p.get(&self.spec.port_key()))
                        .and_then(|b| b.as_ref())
                        .and_then(|b| {
                            b.iter()
                                .find_map(|b| b.host_port.as_ref()?.parse::<u16>().ok())
                        })
                        .filter(|p| *p != 0);
                    if let Some(port) = port {
                        return Ok(format!("127.0.0.1:{port}"));
                    }
                    last = format!("port {} not published yet", self.spec.port_key());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!("no address after 1 s: {last}"))
    }

    /// The Engine's error in ebbtide's words, with a hint for the common mistakes.
    fn describe(&self, e: DockerError, doing: &str) -> String {
        match e {
            DockerError::DockerResponseServerError {
                status_code: 404,
                message,
            } if message.contains("image") => format!(
                "cannot {doing}: {message} (image `{}` must be on the Docker host: build or load \
                 it there; ebbtide does not pull)",
                self.spec.image
            ),
            DockerError::DockerResponseServerError {
                status_code,
                message,
            } => format!("cannot {doing}: the Docker daemon answered {status_code}: {message}"),
            other => format!("cannot {doing}: {other}"),
        }
    }

    async fn wait_ready(self: &Arc<Self>, instance: &Instance) -> Result<(), String> {
        let deadline = Instant::now() + self.boot_timeout;
        let gone = || self.state().died.get(&instance.id).cloned();
        match super::wait_healthy(&self.probe, &instance.address, deadline, gone).await {
            Ok(()) => {
                let Some(took) = self.state().held.healthy(&instance.id) else {
                    return Err(format!("{} was stopped while it booted", instance.id));
                };
                tracing::info!(
                    id = %instance.id,
                    address = %instance.address,
                    boot_ms = took.as_millis() as u64,
                    "container healthy"
                );
                Ok(())
            }
            Err(e) => {
                let removed = self.state().held.table.remove(&instance.id).is_some();
                self.state().died.remove(&instance.id);
                if removed {
                    if let Ok(docker) = self.client().await {
                        let _ = remove(docker, &instance.id).await;
                    }
                }
                Err(format!(
                    "{} ({}): {e} (boot timeout {:?}); removed it",
                    instance.id, instance.address, self.boot_timeout
                ))
            }
        }
    }

    async fn terminate(self: &Arc<Self>, id: &str) -> Result<(), String> {
        if self.state().held.table.remove(id).is_none() {
            return Ok(());
        }
        let docker = self.client().await?;
        stop_and_remove(docker, id).await
    }

    /// Every [`POLL`]: containers in the table that exited or vanished are removed and reported.
    async fn watch(self: Arc<Self>, docker: Docker) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Only containers known before the listing can be judged by it.
            let known: Vec<String> = self.state().held.table.keys().cloned().collect();
            if known.is_empty() {
                continue;
            }
            let listed = match self.owned(&docker).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "docker provider: cannot list containers");
                    continue;
                }
            };
            for id in known {
                let why = match listed.iter().find(|(n, _, _)| *n == id) {
                    None => "the container was removed outside ebbtide".to_string(),
                    Some((_, state, status)) => match state {
                        Some(
                            ContainerSummaryStateEnum::EXITED
                            | ContainerSummaryStateEnum::DEAD
                            | ContainerSummaryStateEnum::REMOVING,
                        ) => self.death(&docker, &id, status).await,
                        _ => continue,
                    },
                };
                let booting = {
                    let mut st = self.state();
                    match st.held.table.remove(&id) {
                        // Terminated meanwhile: not lost.
                        None => continue,
                        Some(e) if e.booting => {
                            st.died.insert(id.clone(), why.clone());
                            true
                        }
                        Some(_) => {
                            st.held.lost.push((id.clone(), why.clone()));
                            false
                        }
                    }
                };
                tracing::warn!(%id, %why, booting, "container died");
                let _ = remove(&docker, &id).await;
            }
        }
    }

    /// Why a container stopped: its status line, and whether the kernel killed it for memory.
    async fn death(&self, docker: &Docker, id: &str, status: &str) -> String {
        let oom = docker
            .inspect_container(id, None)
            .await
            .ok()
            .and_then(|c| c.state)
            .and_then(|s| s.oom_killed)
            .unwrap_or(false);
        let status = if status.is_empty() { "exited" } else { status };
        if oom {
            format!("container {status}, killed for exceeding its memory limit")
        } else {
            format!("container {status}")
        }
    }

    async fn shutdown(self: &Arc<Self>) {
        let entries: Vec<String> = {
            let mut st = self.state();
            st.closed = true;
            st.held.table.drain().map(|(id, _)| id).collect()
        };
        if let Some(w) = self.watcher().take() {
            w.abort();
        }
        let docker = match self.client().await {
            Ok(d) => d.clone(),
            Err(e) => {
                tracing::error!(error = %e, count = entries.len(), "cannot stop containers at shutdown");
                return;
            }
        };
        let stops: Vec<_> = entries
            .into_iter()
            .map(|id| {
                let d = docker.clone();
                tokio::spawn(async move {
                    if let Err(e) = stop_and_remove(&d, &id).await {
                        tracing::error!(%id, error = %e, "could not stop a container at shutdown");
                    }
                })
            })
            .collect();
        for s in stops {
            let _ = s.await;
        }
        // Launches still under way, and anything a failed stop left.
        if let Ok(rest) = self.owned(&docker).await {
            for (name, _, _) in rest {
                let _ = remove(&docker, &name).await;
            }
        }
    }
}

/// SIGTERM, [`STOP_GRACE`], SIGKILL; then removed. Already stopped or gone is fine.
async fn stop_and_remove(docker: &Docker, id: &str) -> Result<(), String> {
    let options = StopContainerOptionsBuilder::default()
        .t(STOP_GRACE.as_secs() as i32)
        .build();
    let started = Instant::now();
    match docker.stop_container(id, Some(options)).await {
        Ok(()) => {}
        Err(DockerError::DockerResponseServerError {
            status_code: 304 | 404,
            ..
        }) => {}
        Err(e) => {
            tracing::warn!(%id, error = %e, "could not stop a container; removing it by force")
        }
    }
    remove(docker, id).await?;
    tracing::info!(
        %id,
        stop_ms = started.elapsed().as_millis() as u64,
        "container stopped and removed"
    );
    Ok(())
}

/// Removes a container by force (killing it if it runs); one already gone is fine.
async fn remove(docker: &Docker, id: &str) -> Result<(), String> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        // Already being removed (by the daemon or another call).
        Err(DockerError::DockerResponseServerError {
            status_code: 409,
            message,
        }) if message.contains("in progress") => Ok(()),
        Err(e) => Err(format!("cannot remove container {id}: {e}")),
    }
}

impl Provider for DockerProvider {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn launch(&self) -> ProviderFuture<'_, Result<Instance, String>> {
        Box::pin(self.inner.launch())
    }

    /// Healthy means the probe passes within the boot timeout; the container exiting first, or
    /// the timeout passing, removes it and fails.
    fn wait_ready<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, Result<(), String>> {
        Box::pin(self.inner.wait_ready(instance))
    }

    /// Stops (SIGTERM, then SIGKILL after [`STOP_GRACE`]) and removes exactly that container.
    fn terminate<'a>(&'a self, id: &'a str) -> ProviderFuture<'a, Result<(), String>> {
        Box::pin(self.inner.terminate(id))
    }

    fn list(&self) -> Vec<Instance> {
        self.inner.state().held.list()
    }

    /// Serving containers that exited or were removed outside ebbtide (already removed).
    fn lost(&self) -> Vec<(String, String)> {
        self.inner.state().held.take_lost()
    }

    /// Launch-to-healthy of the recent launches, oldest first.
    fn boot_times(&self) -> Vec<Duration> {
        self.inner.state().held.boot_times()
    }

    /// Stops and removes every container of this owner, all at once.
    fn shutdown(&self) -> ProviderFuture<'_, ()> {
        Box::pin(self.inner.shutdown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> ebbtide_config::Provider {
        let text = format!(
            "[provider]\nkind = \"docker\"\nimage = \"b:dev\"\nport = 8080\n\
             cpus = 0.5\nmemory = \"64MiB\"\nenv = [\"A=1\"]\nlabels = {{ team = \"web\" }}\n{extra}"
        );
        ebbtide_config::Config::from_toml(&text, "t.toml")
            .unwrap()
            .provider
            .unwrap()
    }

    #[test]
    fn the_create_request_carries_limits_labels_and_a_loopback_port() {
        let spec = Spec::from_config(&cfg(
            "command = [\"backend\", \"--listen\", \"0.0.0.0:{port}\"]\n",
        ))
        .unwrap();
        let body = spec.body("me", "ebbtide-x-1");
        let hc = body.host_config.as_ref().unwrap();
        assert_eq!(hc.nano_cpus, Some(500_000_000));
        assert_eq!(hc.memory, Some(64 << 20));
        assert_eq!(hc.memory_swap, Some(64 << 20));
        assert_eq!(hc.init, Some(true));
        let binding = &hc.port_bindings.as_ref().unwrap()["8080/tcp"]
            .as_ref()
            .unwrap()[0];
        assert_eq!(binding.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(binding.host_port.as_deref(), Some("0"));
        assert_eq!(hc.network_mode, None);
        let labels = body.labels.as_ref().unwrap();
        assert_eq!(labels[LABEL_MANAGED], "true");
        assert_eq!(labels[LABEL_OWNER], "me");
        assert_eq!(labels[LABEL_INSTANCE], "ebbtide-x-1");
        assert_eq!(labels["team"], "web");
        assert_eq!(
            body.cmd.as_deref().unwrap(),
            ["backend", "--listen", "0.0.0.0:8080"]
        );
        assert_eq!(body.env.as_deref().unwrap(), ["A=1"]);
    }

    #[test]
    fn with_a_network_nothing_is_published_and_no_command_means_the_images() {
        let spec = Spec::from_config(&cfg("network = \"ebbtide\"\n")).unwrap();
        let body = spec.body("me", "n");
        let hc = body.host_config.as_ref().unwrap();
        assert_eq!(hc.port_bindings, None);
        assert_eq!(hc.network_mode.as_deref(), Some("ebbtide"));
        assert_eq!(body.cmd, None);
    }
}
