//! The kubernetes provider: backends are the pods of a Deployment (or any resource with a
//! scale subresource), and ebbtide changes its `replicas` as HPA and KEDA do, through the scale
//! subresource with read-modify-write: GET the Scale, PUT it back with its resourceVersion, and
//! on `409 Conflict` (someone wrote in between) read again and retry.
//!
//! - **Launch** claims a pod: one that runs and no instance of this provider holds (left over
//!   from a previous run, or a pod the ReplicaSet removed instead of the one asked for, below)
//!   when there are more of those than launches already waiting; otherwise it raises
//!   `replicas` by one and waits for a new pod with an IP. The instance's id is the pod's name,
//!   its address the pod IP and the container port (`[provider] port`, or the pod's first).
//! - **Ready** is the balancer's own probe passing, as for every provider; the time from the
//!   launch to it is measured ([`Provider::boot_times`]).
//! - **Terminate** (the caller has drained the backend): marks the pod cheapest to delete
//!   (`controller.kubernetes.io/pod-deletion-cost` = the lowest int32), waits until the mark
//!   shows in cached reads (`resourceVersion=0`, the watch cache the ReplicaSet controller's
//!   informer also follows) and [`MARK_SETTLE`] more, lowers `replicas` by one, then watches
//!   which pod gets a deletionTimestamp. The cost is best effort (the controller reads its own
//!   cache, and any pod that is not ready goes first regardless), so when another pod was
//!   removed, the provider says so, reports that pod [`Provider::lost`] (the caller takes it
//!   out of the balancers and launches a replacement) and unmarks the drained one, which the
//!   replacement launch then claims back: the fleet and the Deployment agree again.
//! - **Competing autoscalers**: [`Provider::prepare`] refuses to start when an HPA or a KEDA
//!   ScaledObject targets the same resource: two writers of `replicas` fight (keda#5288).
//! - **Replicas reset behind ebbtide's back** (a GitOps sync, `kubectl scale`): every
//!   [`POLL`], `replicas` is compared with what ebbtide last wrote; a difference is logged as a
//!   warning. Pods that disappear or get a deletionTimestamp without ebbtide asking are
//!   reported lost and replaced.
//! - **Shutdown** leaves the Deployment as it is: its pods are the cluster's, not this process's.
//!
//! Credentials: `api_server` (plain HTTP to a `kubectl proxy` or a test server), else
//! kubeconfig, else in-cluster (`kube::Config::infer`). RBAC: `get`, `update` on
//! `deployments/scale` (or the target's `/scale`), `get`, `list`, `patch` on pods, `list` on
//! horizontalpodautoscalers and scaledobjects.keda.sh (see deploy/kubernetes/rbac.yaml).

use super::held::Held;
use super::{Instance, Probe, Provider, ProviderFuture};
use ebbtide_config::ScaleTarget;
use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DynamicObject, GetParams, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::Client;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

/// The annotation a ReplicaSet reads to choose which pods go first on scale-down (lower first;
/// Kubernetes 1.22+, "ReplicaSet: pod deletion cost").
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The cost a drained pod is marked with: the lowest an int32 annotation can say.
pub const CHEAPEST: &str = "-2147483648";

/// Extra wait after the mark shows in cached reads, for the controller's own informer.
pub const MARK_SETTLE: Duration = Duration::from_millis(300);

/// How long to wait for the mark to show, and for a pod to be chosen after lowering replicas.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// How often pods and replicas are checked for changes ebbtide did not make.
pub const POLL: Duration = Duration::from_secs(1);

/// Most read-modify-write attempts of the scale subresource before giving up.
const MAX_CONFLICTS: u32 = 20;

#[derive(Default)]
struct State {
    /// The pods this provider holds.
    held: Held,
    /// Pods being terminated: their deletion is expected.
    leaving: HashSet<String>,
    /// Launches that raised replicas and have not claimed a pod yet.
    raised: usize,
    /// replicas as ebbtide last wrote or saw it; a different value is someone else's write.
    replicas: Option<i32>,
    /// A write of ebbtide's own is under way (the poll must not call it foreign).
    writing: u32,
}

struct Inner {
    client: OnceCell<Client>,
    api_server: Option<String>,
    namespace: Option<String>,
    target: ScaleTarget,
    port: Option<u16>,
    boot_timeout: Duration,
    probe: Probe,
    state: Mutex<State>,
    watcher: Mutex<Option<JoinHandle<()>>>,
    /// Woken when a pod is lost (see [`Provider::wake_on_lost`]).
    wake: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
    /// The target's pod selector (its scale's `status.selector`), read once: a Deployment's
    /// selector cannot change (apps/v1), so the pods are listed without a read of the scale.
    selector: OnceCell<String>,
}

/// Scales a Kubernetes Deployment (or any resource with a scale subresource).
pub struct KubernetesProvider {
    inner: Arc<Inner>,
}

/// A pod as the provider sees it.
#[derive(Debug, Clone)]
struct PodView {
    name: String,
    ip: Option<String>,
    port: Option<u16>,
    deleting: bool,
}

impl PodView {
    fn of(p: &Pod) -> PodView {
        let port = p
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .and_then(|c| c.ports.as_ref()?.first())
            .and_then(|p| u16::try_from(p.container_port).ok());
        PodView {
            name: p.metadata.name.clone().unwrap_or_default(),
            ip: p
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty()),
            port,
            deleting: p.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// The error text of a kube call, with the API's reason when there is one.
fn describe(e: &kube::Error, doing: &str) -> String {
    match e {
        kube::Error::Api(s) => format!("cannot {doing}: {} {} ({})", s.code, s.reason, s.message),
        other => format!("cannot {doing}: {other}"),
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl KubernetesProvider {
    /// A provider for `[provider] kind = "kubernetes"`. Connects lazily: see
    /// [`Provider::prepare`].
    pub fn new(cfg: &ebbtide_config::Provider, probe: Probe) -> Result<Self, String> {
        let target = cfg
            .target
            .as_deref()
            .ok_or_else(|| "provider.target is required with kind = \"kubernetes\"".to_string())
            .and_then(|t| ScaleTarget::parse(t).map_err(|e| format!("provider.target: {e}")))?;
        Ok(KubernetesProvider {
            inner: Arc::new(Inner {
                client: OnceCell::new(),
                api_server: cfg.api_server.clone(),
                namespace: cfg.namespace.clone(),
                target,
                port: cfg.port,
                boot_timeout: cfg.boot_timeout.0,
                probe,
                state: Mutex::new(State::default()),
                watcher: Mutex::new(None),
                selector: OnceCell::new(),
                wake: std::sync::OnceLock::new(),
            }),
        })
    }
}

impl Drop for KubernetesProvider {
    fn drop(&mut self) {
        if let Some(w) = self.inner.watcher().take() {
            w.abort();
        }
    }
}

/// A client from `api_server`, or kubeconfig / in-cluster credentials; and the namespace to
/// use (`namespace`, or the credentials' default). Shared with discovery and leader election.
pub async fn connect(
    api_server: Option<&str>,
    namespace: Option<&str>,
) -> Result<(Client, String), String> {
    let mut config = match api_server {
        Some(url) => kube::Config::new(
            url.parse()
                .map_err(|e| format!("api_server `{url}` is not a URL: {e}"))?,
        ),
        None => kube::Config::infer().await.map_err(|e| {
            format!("no Kubernetes credentials (kubeconfig or in-cluster service account): {e}")
        })?,
    };
    if let Some(ns) = namespace {
        config.default_namespace = ns.to_string();
    }
    config.read_timeout = Some(Duration::from_secs(300));
    let ns = config.default_namespace.clone();
    let client =
        Client::try_from(config).map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;
    Ok((client, ns))
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reports `pod` lost (when this provider holds it), and wakes the caller to act on it now:
    /// the pod has been sent SIGTERM already, its requests must go elsewhere.
    fn lose(&self, pod: &str, why: String) -> bool {
        let held = {
            let mut st = self.state();
            let held = st.held.table.remove(pod).is_some();
            if held {
                st.held.lost.push((pod.to_string(), why));
            }
            held
        };
        if held {
            if let Some(w) = self.wake.get() {
                w.notify_one();
            }
        }
        held
    }

    fn watcher(&self) -> MutexGuard<'_, Option<JoinHandle<()>>> {
        self.watcher.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn client(self: &Arc<Self>) -> Result<&Client, String> {
        self.client
            .get_or_try_init(|| async {
                let (client, _) =
                    connect(self.api_server.as_deref(), self.namespace.as_deref()).await?;
                Ok::<_, String>(client)
            })
            .await
    }

    /// The target as a dynamic object: its scale subresource, whatever its kind.
    fn targets(&self, client: &Client) -> Api<DynamicObject> {
        let t = &self.target;
        let gvk = GroupVersionKind::gvk(&t.group, &t.version, &t.kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, &t.plural);
        Api::default_namespaced_with(client.clone(), &ar)
    }

    fn pods(&self, client: &Client) -> Api<Pod> {
        Api::default_namespaced(client.clone())
    }

    /// Connects, refuses competing autoscalers, reads replicas, starts the watcher.
    async fn prepare(self: &Arc<Self>) -> Result<(), String> {
        let client = self.client().await?.clone();
        let t = &self.target;
        let scale = self
            .targets(&client)
            .get_scale(&t.name)
            .await
            .map_err(|e| describe(&e, &format!("read the scale of {}/{}", t.plural, t.name)))?;
        if let Some(who) = self.competitor(&client).await? {
            return Err(format!(
                "{who} already scales {}/{}: two autoscalers writing `replicas` undo each \
                 other's changes; remove it, or scale something else with ebbtide",
                t.kind.to_lowercase(),
                t.name
            ));
        }
        if let Some(sel) = scale.status.as_ref().and_then(|s| s.selector.clone()) {
            let _ = self.selector.set(sel);
        }
        let replicas = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
        self.state().replicas = Some(replicas);
        tracing::info!(target = %format!("{}/{}", t.plural, t.name), replicas, "kubernetes provider connected");
        let me = self.clone();
        *self.watcher() = Some(tokio::spawn(async move { me.watch(client).await }));
        Ok(())
    }

    /// An HPA or KEDA ScaledObject in the namespace that targets the same resource.
    async fn competitor(&self, client: &Client) -> Result<Option<String>, String> {
        let t = &self.target;
        let hpas: Api<HorizontalPodAutoscaler> = Api::default_namespaced(client.clone());
        let list = hpas
            .list(&ListParams::default())
            .await
            .map_err(|e| describe(&e, "list HorizontalPodAutoscalers"))?;
        for h in list.items {
            let Some(spec) = h.spec else { continue };
            let r = spec.scale_target_ref;
            if r.name == t.name && r.kind.eq_ignore_ascii_case(&t.kind) {
                return Ok(Some(format!(
                    "HorizontalPodAutoscaler `{}`",
                    h.metadata.name.unwrap_or_default()
                )));
            }
        }
        let gvk = GroupVersionKind::gvk("keda.sh", "v1alpha1", "ScaledObject");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "scaledobjects");
        let scaled: Api<DynamicObject> = Api::default_namespaced_with(client.clone(), &ar);
        match scaled.list(&ListParams::default()).await {
            Ok(list) => {
                for o in list.items {
                    let r = o.data.pointer("/spec/scaleTargetRef");
                    let name = r.and_then(|r| r.get("name")).and_then(|n| n.as_str());
                    // KEDA's default kind is Deployment.
                    let kind = r
                        .and_then(|r| r.get("kind"))
                        .and_then(|k| k.as_str())
                        .unwrap_or("Deployment");
                    if name == Some(t.name.as_str()) && kind.eq_ignore_ascii_case(&t.kind) {
                        return Ok(Some(format!(
                            "KEDA ScaledObject `{}`",
                            o.metadata.name.unwrap_or_default()
                        )));
                    }
                }
            }
            // KEDA is not installed (no such resource), or this account may not look.
            Err(e) if is_status(&e, 404) => {}
            Err(e) if is_status(&e, 403) => tracing::warn!(
                error = %describe(&e, "list KEDA ScaledObjects"),
                "cannot check for a competing KEDA ScaledObject"
            ),
            Err(e) => return Err(describe(&e, "list KEDA ScaledObjects")),
        }
        Ok(None)
    }

    /// Read-modify-write of replicas: `change` maps the current value to the new one. Retries
    /// on 409 Conflict with a fresh read, as HPA's scale client does. Returns (old, new).
    async fn rewrite(self: &Arc<Self>, change: impl Fn(i32) -> i32) -> Result<(i32, i32), String> {
        let client = self.client().await?;
        let api = self.targets(client);
        let name = &self.target.name;
        self.state().writing += 1;
        let result = async {
            for attempt in 0..MAX_CONFLICTS {
                let mut scale: Scale = api
                    .get_scale(name)
                    .await
                    .map_err(|e| describe(&e, "read the scale subresource"))?;
                let old = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                let new = change(old);
                self.note_replicas(old);
                scale.spec.get_or_insert_with(Default::default).replicas = Some(new);
                // Only the fields an update takes: the resourceVersion guards the write.
                scale.status = None;
                match api
                    .replace_scale(name, &PostParams::default(), &scale)
                    .await
                {
                    Ok(_) => {
                        self.state().replicas = Some(new);
                        return Ok((old, new));
                    }
                    Err(e) if is_status(&e, 409) => {
                        tracing::debug!(attempt, "scale write conflicted; reading again");
                    }
                    Err(e) => return Err(describe(&e, "write the scale subresource")),
                }
            }
            Err(format!(
                "the scale of {name} changed under every one of {MAX_CONFLICTS} writes"
            ))
        }
        .await;
        self.state().writing -= 1;
        result
    }

    /// Warns when replicas is not what ebbtide last wrote or saw.
    fn note_replicas(&self, now: i32) {
        let mut st = self.state();
        if let Some(was) = st.replicas {
            if was != now {
                tracing::warn!(
                    target_ref = %format!("{}/{}", self.target.plural, self.target.name),
                    was,
                    now,
                    "replicas was changed by another writer (a GitOps sync, kubectl scale, \
                     another autoscaler?); ebbtide goes on from the new value"
                );
            }
        }
        st.replicas = Some(now);
    }

    /// The target's pod selector: read from its scale subresource the first time only.
    async fn selector(self: &Arc<Self>) -> Result<&str, String> {
        let client = self.client().await?;
        self.selector
            .get_or_try_init(|| async {
                let scale = self
                    .targets(client)
                    .get_scale(&self.target.name)
                    .await
                    .map_err(|e| describe(&e, "read the scale subresource"))?;
                scale
                    .status
                    .and_then(|s| s.selector)
                    .ok_or_else(|| "the scale subresource has no status.selector".to_string())
            })
            .await
            .map(String::as_str)
    }

    /// The pods of the target (its scale's selector), from a consistent read.
    async fn list_pods(self: &Arc<Self>, cached: bool) -> Result<Vec<PodView>, String> {
        let client = self.client().await?;
        let selector = self.selector().await?;
        let mut lp = ListParams::default().labels(selector);
        if cached {
            lp = lp.match_any();
        }
        let list = self
            .pods(client)
            .list(&lp)
            .await
            .map_err(|e| describe(&e, "list pods"))?;
        Ok(list.items.iter().map(PodView::of).collect())
    }

    fn instance_of(&self, pod: &PodView) -> Option<Instance> {
        let ip = pod.ip.as_ref()?;
        let port = self.port.or(pod.port)?;
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip.clone()
        };
        Some(Instance {
            id: pod.name.clone(),
            address: format!("{host}:{port}"),
        })
    }

    /// Claims a running pod no instance holds, when `spare` allows: the state's `raised`
    /// launches have first claim on as many of them.
    fn claim(&self, pods: &[PodView], own_raise: bool) -> Option<Instance> {
        let mut st = self.state();
        let free: Vec<&PodView> = pods
            .iter()
            .filter(|p| {
                !p.deleting
                    && p.ip.is_some()
                    && !st.held.table.contains_key(&p.name)
                    && !st.leaving.contains(&p.name)
            })
            .collect();
        let waiting_others = st.raised - usize::from(own_raise);
        if !own_raise && free.len() <= waiting_others {
            return None;
        }
        let pod = free.first()?;
        let instance = self.instance_of(pod)?;
        if own_raise {
            st.raised -= 1;
        }
        st.held.insert(instance.clone(), Instant::now());
        Some(instance)
    }

    async fn launch(self: &Arc<Self>) -> Result<Instance, String> {
        let started = Instant::now();
        let pods = self.list_pods(false).await?;
        if let Some(i) = self.claim(&pods, false) {
            tracing::info!(id = %i.id, address = %i.address, "claimed a running pod");
            return Ok(self.started_at(i, started));
        }
        self.state().raised += 1;
        let (old, new) = match self.rewrite(|r| r + 1).await {
            Ok(v) => v,
            Err(e) => {
                self.state().raised -= 1;
                return Err(e);
            }
        };
        tracing::info!(old, new, "raised replicas");
        let deadline = started + self.boot_timeout;
        loop {
            let pods = self.list_pods(false).await;
            if let Ok(pods) = pods {
                if let Some(i) = self.claim(&pods, true) {
                    tracing::info!(id = %i.id, address = %i.address, took_ms = started.elapsed().as_millis() as u64, "new pod has an address");
                    return Ok(self.started_at(i, started));
                }
            }
            if Instant::now() >= deadline {
                self.state().raised -= 1;
                return Err(format!(
                    "no new pod got an address within the boot timeout ({:?}) after replicas \
                     went to {new}",
                    self.boot_timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sets the entry's launch time to when the launch began (the boot time counts from it).
    fn started_at(&self, i: Instance, started: Instant) -> Instance {
        if let Some(e) = self.state().held.table.get_mut(&i.id) {
            e.launched = started;
        }
        i
    }

    async fn wait_ready(self: &Arc<Self>, instance: &Instance) -> Result<(), String> {
        let deadline = Instant::now() + self.boot_timeout;
        let gone = || {
            let st = self.state();
            (!st.held.table.contains_key(&instance.id)).then(|| "the pod went away".to_string())
        };
        match super::wait_healthy(&self.probe, &instance.address, deadline, gone).await {
            Ok(()) => {
                let Some(took) = self.state().held.healthy(&instance.id) else {
                    return Err(format!("{} went away while it booted", instance.id));
                };
                tracing::info!(id = %instance.id, address = %instance.address, boot_ms = took.as_millis() as u64, "pod healthy");
                Ok(())
            }
            Err(e) => {
                // Not ours any more: a later launch may claim it if it recovers.
                self.state().held.table.remove(&instance.id);
                Err(format!(
                    "{} ({}): {e} (boot timeout {:?})",
                    instance.id, instance.address, self.boot_timeout
                ))
            }
        }
    }

    async fn mark(self: &Arc<Self>, pod: &str, cost: Option<&str>) -> Result<(), String> {
        let client = self.client().await?;
        let patch = serde_json::json!({"metadata": {"annotations": {DELETION_COST: cost}}});
        self.pods(client)
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| describe(&e, &format!("annotate pod {pod}")))?;
        Ok(())
    }

    /// Waits until cached reads show the mark on `pod`.
    async fn mark_visible(self: &Arc<Self>, pod: &str) -> Result<(), String> {
        let client = self.client().await?;
        let api = self.pods(client);
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            match api.get_with(pod, &GetParams::any()).await {
                Ok(p) => {
                    let cost = p
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(DELETION_COST))
                        .map(String::as_str);
                    if cost == Some(CHEAPEST) {
                        return Ok(());
                    }
                }
                Err(e) if is_status(&e, 404) => return Err(format!("pod {pod} is gone")),
                Err(e) => {
                    tracing::warn!(error = %describe(&e, "read a pod"), "waiting for the mark")
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the mark on {pod} did not show within {STEP_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn terminate(self: &Arc<Self>, id: &str) -> Result<(), String> {
        if self.state().held.table.remove(id).is_none() {
            return Ok(());
        }
        self.state().leaving.insert(id.to_string());
        let result = self.remove_pod(id).await;
        self.state().leaving.remove(id);
        result
    }

    async fn remove_pod(self: &Arc<Self>, id: &str) -> Result<(), String> {
        self.mark(id, Some(CHEAPEST)).await?;
        self.mark_visible(id).await?;
        tokio::time::sleep(MARK_SETTLE).await;
        let before: HashSet<String> = self
            .list_pods(false)
            .await?
            .into_iter()
            .filter(|p| !p.deleting)
            .map(|p| p.name)
            .collect();
        let (old, new) = self.rewrite(|r| (r - 1).max(0)).await?;
        tracing::info!(old, new, pod = %id, "lowered replicas");
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Ok(pods) = self.list_pods(false).await {
                let live: HashSet<&str> = pods
                    .iter()
                    .filter(|p| !p.deleting)
                    .map(|p| p.name.as_str())
                    .collect();
                let removed: Vec<&String> = before
                    .iter()
                    .filter(|n| !live.contains(n.as_str()))
                    .collect();
                if removed.iter().any(|n| *n == id) {
                    tracing::info!(pod = %id, "the ReplicaSet removed the drained pod");
                    return Ok(());
                }
                if let Some(other) = removed.first() {
                    let other = other.to_string();
                    tracing::warn!(
                        drained = %id,
                        removed = %other,
                        "the ReplicaSet removed another pod than the drained one (its cache did \
                         not have the deletion cost yet, or that pod was not ready); taking it out \
                         and claiming the drained pod back"
                    );
                    if let Err(e) = self.mark(id, None).await {
                        tracing::warn!(error = %e, "could not unmark the drained pod");
                    }
                    // Free before `lose` wakes the driver: its replacement launch must find the
                    // drained pod claimable, or it raises replicas for a new pod and the drained
                    // one runs on, held by nobody (the Deployment one pod above the fleet).
                    self.state().leaving.remove(id);
                    self.lose(&other, format!("the ReplicaSet removed it instead of {id}"));
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no pod was removed within {STEP_TIMEOUT:?} of lowering replicas to {new}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every [`POLL`]: replicas changed by others, and held pods deleted without ebbtide.
    async fn watch(self: Arc<Self>, client: Client) {
        let api = self.targets(&client);
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.state().writing == 0 {
                match api.get_scale(&self.target.name).await {
                    Ok(s) => {
                        let r = s.spec.and_then(|s| s.replicas).unwrap_or(0);
                        if self.state().writing == 0 {
                            self.note_replicas(r);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %describe(&e, "read the scale"), "kubernetes provider")
                    }
                }
            }
            let held: Vec<String> = self.state().held.table.keys().cloned().collect();
            if held.is_empty() {
                continue;
            }
            let Ok(pods) = self.list_pods(false).await else {
                continue;
            };
            let by_name: HashMap<&str, &PodView> =
                pods.iter().map(|p| (p.name.as_str(), p)).collect();
            for name in held {
                let why = match by_name.get(name.as_str()) {
                    None => "the pod was deleted outside ebbtide",
                    Some(p) if p.deleting => "the pod is being deleted outside ebbtide",
                    Some(_) => continue,
                };
                if self.state().leaving.contains(&name) {
                    continue;
                }
                if self.lose(&name, why.to_string()) {
                    tracing::warn!(pod = %name, why, "pod lost");
                }
            }
        }
    }
}

impl Provider for KubernetesProvider {
    fn kind(&self) -> &'static str {
        "kubernetes"
    }

    fn prepare(&self) -> ProviderFuture<'_, Result<(), String>> {
        Box::pin(self.inner.prepare())
    }

    fn launch(&self) -> ProviderFuture<'_, Result<Instance, String>> {
        Box::pin(self.inner.launch())
    }

    fn wait_ready<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, Result<(), String>> {
        Box::pin(self.inner.wait_ready(instance))
    }

    /// Marks the drained pod cheapest, waits for the mark, lowers replicas, checks the victim.
    fn terminate<'a>(&'a self, id: &'a str) -> ProviderFuture<'a, Result<(), String>> {
        Box::pin(self.inner.terminate(id))
    }

    fn list(&self) -> Vec<Instance> {
        self.inner.state().held.list()
    }

    fn lost(&self) -> Vec<(String, String)> {
        self.inner.state().held.take_lost()
    }

    fn wake_on_lost(&self, wake: Arc<tokio::sync::Notify>) {
        let _ = self.inner.wake.set(wake);
    }

    fn boot_times(&self) -> Vec<Duration> {
        self.inner.state().held.boot_times()
    }

    /// Leaves the Deployment and its pods as they are: they belong to the cluster.
    fn shutdown(&self) -> ProviderFuture<'_, ()> {
        if let Some(w) = self.inner.watcher().take() {
            w.abort();
        }
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: Option<&str>, deleting: bool) -> PodView {
        PodView {
            name: name.into(),
            ip: ip.map(String::from),
            port: Some(8080),
            deleting,
        }
    }

    fn provider() -> KubernetesProvider {
        let text = "[provider]\nkind = \"kubernetes\"\ntarget = \"deployment/web\"\n";
        let cfg = ebbtide_config::Config::from_toml(text, "t.toml")
            .unwrap()
            .provider
            .unwrap();
        let probe: Probe = Arc::new(|_| Box::pin(async { true }));
        KubernetesProvider::new(&cfg, probe).unwrap()
    }

    #[test]
    fn a_launch_that_raised_has_first_claim_on_new_pods() {
        let p = provider();
        let pods = [pod("a", Some("10.0.0.1"), false)];
        // One launch raised replicas and waits: the only free pod is its, not another's.
        p.inner.state().raised = 1;
        assert_eq!(p.inner.claim(&pods, false), None);
        let got = p.inner.claim(&pods, true).unwrap();
        assert_eq!(got.address, "10.0.0.1:8080");
        assert_eq!(p.inner.state().raised, 0);
        // Held now: nobody claims it again.
        assert_eq!(p.inner.claim(&pods, false), None);
    }

    #[test]
    fn pods_without_an_ip_or_being_deleted_are_not_claimed() {
        let p = provider();
        let pods = [
            pod("a", None, false),
            pod("b", Some("10.0.0.2"), true),
            pod("c", Some("fd00::3"), false),
        ];
        let got = p.inner.claim(&pods, false).unwrap();
        assert_eq!(got.id, "c");
        assert_eq!(got.address, "[fd00::3]:8080");
    }
}
