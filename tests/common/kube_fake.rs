//! A **protocol fake** of the Kubernetes API server, for the tests of ebbtide's Kubernetes
//! provider, discovery and leader election. It is a stand-in, never the real thing: no
//! kube-apiserver can run on this machine, so this serves, on 127.0.0.1 over plain HTTP, exactly
//! the calls ebbtide makes, with the semantics they rely on, and nothing else:
//!
//! - `apps/v1` Deployment `get`, and its `scale` subresource (`get`, `update` with the
//!   resourceVersion: a stale one answers `409 Conflict` as the real server does; merge `patch`);
//! - `v1` Pods `list`/`get` (with `resourceVersion=0` answered from a lagging cache, as the real
//!   watch cache may be) and `patch` (merge or strategic merge of `metadata.annotations`);
//! - `v1` Service `get`: the Deployment's, and others a test adds ([`KubeFake::add_service`])
//!   whose one EndpointSlice lists what the test sets ([`KubeFake::set_endpoint`]), e.g. the
//!   admin addresses of real `ebbtide serve` processes as the balancers' Service;
//! - `discovery.k8s.io/v1` EndpointSlices `list` and `watch`: a chunked stream of JSON lines,
//!   bookmarks when asked (`allowWatchBookmarks`), `timeoutSeconds`, an `ERROR` event with
//!   `410 Gone`/`Expired` for a resourceVersion older than the kept history (see
//!   [`KubeFake::compact`]), and streams dropped on demand ([`KubeFake::drop_watches`]);
//! - `autoscaling/v2` HorizontalPodAutoscaler and `keda.sh/v1alpha1` ScaledObject `list` (the
//!   latter `404` until [`KubeFake::install_keda`], as on a cluster without KEDA's CRDs);
//! - `coordination.k8s.io/v1` Lease `get`/`create`/`update` with resourceVersion conflicts.
//!
//! Behind the API, a ReplicaSet loop (one Deployment, one ReplicaSet folded into it) starts and
//! stops real `ebbtide backend` processes as "pods", each on its own loopback address
//! (127.X.Y.n, every pod on the same container port, as pod IPs are), probes `/healthz` as a
//! kubelet readiness probe would, publishes endpoints with `ready`/`serving`/`terminating` in
//! slices of at most `max_endpoints_per_slice` (a pod keeps its slice), and on scale-down picks
//! victims in the order of Kubernetes' `ActivePodsWithRanks` (controller.go): not ready before
//! ready, lower `controller.kubernetes.io/pod-deletion-cost` first, less time ready, more
//! restarts, newer first. A deleted pod gets a deletionTimestamp and SIGTERM at once (as the
//! kubelet does, racing the endpoint update), SIGKILL after the grace period, and leaves the API
//! when its process exits.
//!
//! The controller reads annotations from its informer cache: a patch becomes visible to cache
//! reads after `annotation_lag` and to the controller after `annotation_lag +
//! controller_extra_lag`, which lets a test provoke the race the deletion cost is known for.
//!
//! Every request is recorded ([`KubeFake::served`]: verb, group, resource, who), and every write
//! with the Lease holder at the time ([`KubeFake::writes`]), for the RBAC and leader tests.
//! Who: the bearer token's text, or the User-Agent without one.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The annotation a ReplicaSet reads to rank pods on scale-down (Kubernetes 1.22+).
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// How long the kubelet waits before restarting a container that exited.
pub const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// What the fake cluster holds at start.
#[derive(Clone, Debug)]
pub struct Options {
    pub namespace: String,
    pub deployment: String,
    pub service: String,
    /// The Service's port name (its `port` is 80, its target the pods' container port).
    pub port_name: String,
    pub replicas: u32,
    /// The `ebbtide` executable the pods run.
    pub bin: String,
    /// Arguments after `ebbtide backend --listen IP:PORT`.
    pub backend_args: Vec<String>,
    pub annotation_lag: Duration,
    pub controller_extra_lag: Duration,
    pub max_endpoints_per_slice: usize,
    pub bookmark_every: Duration,
    /// terminationGracePeriodSeconds: SIGTERM, then SIGKILL after this.
    pub grace: Duration,
}

impl Options {
    pub fn new(bin: &str) -> Options {
        Options {
            namespace: "default".into(),
            deployment: "web".into(),
            service: "web".into(),
            port_name: "http".into(),
            replicas: 1,
            bin: bin.into(),
            backend_args: ["--service-time", "exp:20ms", "--workers", "8"]
                .map(String::from)
                .to_vec(),
            annotation_lag: Duration::from_millis(300),
            controller_extra_lag: Duration::ZERO,
            max_endpoints_per_slice: 2,
            bookmark_every: Duration::from_millis(500),
            grace: Duration::from_secs(10),
        }
    }
}

/// One request the fake answered.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Served {
    /// RBAC verb: get, list, watch, create, update, patch.
    pub verb: String,
    /// API group ("" for the core group).
    pub group: String,
    /// Resource, with `/scale` for the subresource.
    pub resource: String,
    pub who: String,
    pub status: u16,
}

/// One successful write.
#[derive(Clone, Debug)]
pub struct Write {
    pub at: Instant,
    pub who: String,
    pub verb: String,
    pub resource: String,
    pub name: String,
    /// The holder of every Lease at the time, by lease name (expired or not).
    pub holders: BTreeMap<String, String>,
    pub detail: String,
}

struct Pod {
    name: String,
    uid: String,
    ip: Ipv4Addr,
    created: SystemTime,
    created_at: Instant,
    rv: u64,
    annotations: Map<String, Value>,
    cache_annotations: Map<String, Value>,
    controller_annotations: Map<String, Value>,
    /// (visible to the cache at, visible to the controller at, annotations then).
    pending: Vec<(Instant, Instant, Map<String, Value>)>,
    child: Option<tokio::process::Child>,
    ready: bool,
    ready_since: Option<Instant>,
    restarts: u32,
    /// The container exited: restarted at this time (the kubelet's back-off).
    restart_at: Option<Instant>,
    deleting: Option<(SystemTime, Instant)>,
    slice: usize,
}

struct Sub {
    tx: mpsc::UnboundedSender<Bytes>,
    selector: Vec<(String, String)>,
    bookmarks: bool,
    until: Option<Instant>,
}

struct State {
    opts: Options,
    rv: u64,
    base: [u8; 3],
    next_ip: u8,
    next_pod: u64,
    port: u16,
    replicas: u32,
    generation: u64,
    deploy_rv: u64,
    pods: BTreeMap<String, Pod>,
    slices: BTreeMap<usize, Value>,
    history: VecDeque<(u64, Value)>,
    /// Watches from a resourceVersion below this get 410 Gone.
    floor: u64,
    subs: Vec<Sub>,
    hpas: Vec<Value>,
    scaled_objects: Option<Vec<Value>>,
    leases: BTreeMap<String, Value>,
    served: Vec<Served>,
    writes: Vec<Write>,
    /// Pods deleted by scale-down, in order.
    deleted: Vec<String>,
    last_bookmark: Instant,
    /// Services the test added, by name.
    extra: BTreeMap<String, Extra>,
}

/// A Service the test added, with one port, and the endpoints it set.
struct Extra {
    port_name: String,
    port: u16,
    /// Endpoint IP -> ready.
    endpoints: BTreeMap<Ipv4Addr, bool>,
    /// Its EndpointSlice as last published.
    slice: Option<Value>,
}

/// A running fake API server; stops its pods when dropped.
pub struct KubeFake {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// Parses an equality-based label selector (`a=b,c==d`); None for anything else.
fn parse_selector(s: &str) -> Option<Vec<(String, String)>> {
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(',')
        .map(|term| {
            let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
            (!k.contains('!')).then(|| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

fn matches(labels: &Value, selector: &[(String, String)]) -> bool {
    selector
        .iter()
        .all(|(k, v)| labels.get(k).and_then(Value::as_str) == Some(v.as_str()))
}

fn query(uri: &hyper::Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Merge patch (RFC 7386) of `patch` into `target`.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// The response body: a whole JSON document, or a watch stream.
pub enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::UnboundedReceiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Body::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }
}

fn reply(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Body::Full(Some(Bytes::from(v.to_string()))))
        .expect("response")
}

impl KubeFake {
    /// Starts the server on a free 127.0.0.1 port and the ReplicaSet loop.
    pub async fn start(opts: Options) -> KubeFake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // A /24 of loopback of its own, so that two fakes never share pod addresses.
        let seed = std::process::id() as u64
            ^ SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos() as u64
            ^ u64::from(addr.port()) << 7;
        let base = [127, 100 + (seed % 150) as u8, ((seed >> 8) % 250) as u8 + 1];
        let port = {
            let ip = Ipv4Addr::new(base[0], base[1], base[2], 1);
            std::net::TcpListener::bind((ip, 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let replicas = opts.replicas;
        let state = Arc::new(Mutex::new(State {
            opts,
            rv: 1000,
            base,
            next_ip: 2,
            next_pod: 0,
            port,
            replicas,
            generation: 1,
            deploy_rv: 1000,
            pods: BTreeMap::new(),
            slices: BTreeMap::new(),
            history: VecDeque::new(),
            floor: 0,
            subs: Vec::new(),
            hpas: Vec::new(),
            scaled_objects: None,
            leases: BTreeMap::new(),
            served: Vec::new(),
            writes: Vec::new(),
            deleted: Vec::new(),
            last_bookmark: Instant::now(),
            extra: BTreeMap::new(),
        }));
        let s = state.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, std::convert::Infallible>(handle(&s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let s = state.clone();
        let controller = tokio::spawn(async move {
            loop {
                reconcile(&s).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        KubeFake {
            addr,
            state,
            tasks: vec![server, controller],
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The container port every pod listens on.
    pub fn pod_port(&self) -> u16 {
        lock(&self.state).port
    }

    /// spec.replicas of the Deployment.
    pub fn replicas(&self) -> u32 {
        lock(&self.state).replicas
    }

    /// Sets spec.replicas as another writer would (a GitOps sync, `kubectl scale`).
    pub fn set_replicas(&self, n: u32, who: &str) {
        let mut st = lock(&self.state);
        st.set_replicas(n);
        st.record_write(
            who,
            "update",
            "deployments/scale",
            "",
            format!("replicas={n}"),
        );
    }

    /// Pod names (not deleting) that are ready, with their address.
    pub fn ready_pods(&self) -> BTreeMap<String, String> {
        let st = lock(&self.state);
        st.pods
            .values()
            .filter(|p| p.ready && p.deleting.is_none())
            .map(|p| (p.name.clone(), format!("{}:{}", p.ip, st.port)))
            .collect()
    }

    /// Every pod in the API, with `(address, deleting)`.
    pub fn pods(&self) -> BTreeMap<String, (String, bool)> {
        let st = lock(&self.state);
        st.pods
            .values()
            .map(|p| {
                (
                    p.name.clone(),
                    (format!("{}:{}", p.ip, st.port), p.deleting.is_some()),
                )
            })
            .collect()
    }

    /// Pods the ReplicaSet chose on scale-down, in order.
    pub fn deleted(&self) -> Vec<String> {
        lock(&self.state).deleted.clone()
    }

    pub fn served(&self) -> Vec<Served> {
        lock(&self.state).served.clone()
    }

    pub fn writes(&self) -> Vec<Write> {
        lock(&self.state).writes.clone()
    }

    /// Adds an HPA whose scaleTargetRef is `kind/name` (apps/v1).
    pub fn add_hpa(&self, name: &str, kind: &str, target: &str) {
        let mut st = lock(&self.state);
        let ns = st.opts.namespace.clone();
        let rv = st.bump();
        st.hpas.push(json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": rv.to_string()},
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": kind, "name": target},
                     "minReplicas": 1, "maxReplicas": 10}
        }));
    }

    /// Installs KEDA's CRD (ScaledObject lists answer from now on), with these objects.
    pub fn install_keda(&self, targets: &[(&str, &str)]) {
        let mut st = lock(&self.state);
        let ns = st.opts.namespace.clone();
        let items = targets
            .iter()
            .map(|(name, target)| {
                json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
                       "metadata": {"name": name, "namespace": ns},
                       "spec": {"scaleTargetRef": {"name": target}}})
            })
            .collect();
        st.scaled_objects = Some(items);
    }

    /// Ends every open watch stream, as a restarted API server or a proxy's idle timeout does.
    pub fn drop_watches(&self) {
        lock(&self.state).subs.clear();
    }

    /// Forgets the event history, as etcd's compaction does, after writes to other objects
    /// (resourceVersions are global, so they move on even when the slices do not): a watch
    /// resumed from any version seen so far gets 410 Gone.
    pub fn compact(&self) {
        let mut st = lock(&self.state);
        st.history.clear();
        st.bump();
        st.floor = st.rv + 1;
    }

    /// Open watch streams.
    pub fn watchers(&self) -> usize {
        lock(&self.state).subs.len()
    }

    /// An address of this fake's loopback /24 that no pod gets (pods count up from .2), for
    /// processes the test runs as the endpoints of a Service it adds: `n` from 0 to 50.
    pub fn spare_ip(&self, n: u8) -> Ipv4Addr {
        let b = lock(&self.state).base;
        Ipv4Addr::new(b[0], b[1], b[2], 200 + n.min(50))
    }

    /// Adds a Service `name` with one port `port_name` (`port`, the same as its target), and
    /// its EndpointSlice, empty until [`KubeFake::set_endpoint`].
    pub fn add_service(&self, name: &str, port_name: &str, port: u16) {
        let mut st = lock(&self.state);
        st.extra.insert(
            name.to_string(),
            Extra {
                port_name: port_name.to_string(),
                port,
                endpoints: BTreeMap::new(),
                slice: None,
            },
        );
        st.publish_extra(name);
    }

    /// Sets the endpoint `ip` of the Service `name` (added by [`KubeFake::add_service`]) ready
    /// or not (`Some`), or removes it (`None`), as the EndpointSlice controller would.
    pub fn set_endpoint(&self, name: &str, ip: Ipv4Addr, ready: Option<bool>) {
        let mut st = lock(&self.state);
        let e = st
            .extra
            .get_mut(name)
            .expect("a Service added by add_service");
        match ready {
            Some(r) => e.endpoints.insert(ip, r),
            None => e.endpoints.remove(&ip),
        };
        st.publish_extra(name);
    }

    /// Kills a pod's process without deleting the pod (a crash; the kubelet restarts it).
    pub fn crash(&self, pod: &str) {
        let mut st = lock(&self.state);
        if let Some(c) = st.pods.get_mut(pod).and_then(|p| p.child.as_mut()) {
            let _ = c.start_kill();
        }
    }
}

impl Drop for KubeFake {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let mut st = lock(&self.state);
        st.subs.clear();
        for p in st.pods.values_mut() {
            if let Some(mut c) = p.child.take() {
                let _ = c.start_kill();
                if let Some(pid) = c.id() {
                    // Reap it now: the runtime may be gone before tokio's orphan reaper runs.
                    unsafe {
                        libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
                    }
                }
            }
        }
    }
}

impl State {
    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn set_replicas(&mut self, n: u32) {
        self.replicas = n;
        self.generation += 1;
        self.deploy_rv = self.bump();
    }

    fn holders(&self) -> BTreeMap<String, String> {
        self.leases
            .iter()
            .filter_map(|(n, l)| {
                Some((
                    n.clone(),
                    l.pointer("/spec/holderIdentity")?.as_str()?.to_string(),
                ))
            })
            .collect()
    }

    fn record_write(&mut self, who: &str, verb: &str, resource: &str, name: &str, detail: String) {
        let holders = self.holders();
        self.writes.push(Write {
            at: Instant::now(),
            who: who.into(),
            verb: verb.into(),
            resource: resource.into(),
            name: name.into(),
            holders,
            detail,
        });
    }

    fn selector(&self) -> String {
        format!("app={}", self.opts.deployment)
    }

    fn deployment(&self) -> Value {
        let o = &self.opts;
        let ready = self
            .pods
            .values()
            .filter(|p| p.ready && p.deleting.is_none())
            .count();
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": o.deployment, "namespace": o.namespace, "uid": "uid-deploy",
                         "resourceVersion": self.deploy_rv.to_string(), "generation": self.generation},
            "spec": {"replicas": self.replicas,
                     "selector": {"matchLabels": {"app": o.deployment}},
                     "template": {"metadata": {"labels": {"app": o.deployment}},
                                  "spec": {"containers": [{"name": "backend", "image": "ebbtide-backend:dev",
                                           "ports": [{"name": o.port_name, "containerPort": self.port}]}]}}},
            "status": {"observedGeneration": self.generation, "replicas": self.pods.len(),
                       "readyReplicas": ready, "availableReplicas": ready, "updatedReplicas": self.pods.len()}
        })
    }

    fn scale(&self) -> Value {
        let o = &self.opts;
        json!({
            "apiVersion": "autoscaling/v1", "kind": "Scale",
            "metadata": {"name": o.deployment, "namespace": o.namespace, "uid": "uid-deploy",
                         "resourceVersion": self.deploy_rv.to_string()},
            "spec": {"replicas": self.replicas},
            "status": {"replicas": self.pods.values().filter(|p| p.deleting.is_none()).count(),
                       "selector": self.selector()}
        })
    }

    fn service(&self) -> Value {
        let o = &self.opts;
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": o.service, "namespace": o.namespace, "resourceVersion": "1"},
            "spec": {"selector": {"app": o.deployment}, "type": "ClusterIP",
                     "ports": [{"name": o.port_name, "port": 80, "targetPort": self.port, "protocol": "TCP"}]}
        })
    }

    fn pod(&self, p: &Pod, cached: bool) -> Value {
        let o = &self.opts;
        let annotations = if cached {
            &p.cache_annotations
        } else {
            &p.annotations
        };
        let mut meta = json!({
            "name": p.name, "namespace": o.namespace, "uid": p.uid,
            "resourceVersion": p.rv.to_string(), "creationTimestamp": rfc3339(p.created),
            "labels": {"app": o.deployment},
            "annotations": annotations,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": format!("{}-5d8f7c", o.deployment), "uid": "uid-rs",
                                 "controller": true}]
        });
        if let Some((at, _)) = p.deleting {
            meta["deletionTimestamp"] = json!(rfc3339(at));
            meta["deletionGracePeriodSeconds"] = json!(o.grace.as_secs());
        }
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": "fake-node", "terminationGracePeriodSeconds": o.grace.as_secs(),
                     "containers": [{"name": "backend", "image": "ebbtide-backend:dev",
                                     "ports": [{"name": o.port_name, "containerPort": self.port}]}]},
            "status": {"phase": "Running", "podIP": p.ip.to_string(), "podIPs": [{"ip": p.ip.to_string()}],
                       "conditions": [{"type": "Ready", "status": if p.ready { "True" } else { "False" }}],
                       "containerStatuses": [{"name": "backend", "ready": p.ready, "restartCount": p.restarts}]}
        })
    }

    fn slice(&self, index: usize) -> Option<Value> {
        let o = &self.opts;
        let endpoints: Vec<Value> = self
            .pods
            .values()
            .filter(|p| p.slice == index)
            .map(|p| {
                let terminating = p.deleting.is_some();
                json!({
                    "addresses": [p.ip.to_string()],
                    "conditions": {"ready": p.ready && !terminating, "serving": p.ready,
                                   "terminating": terminating},
                    "nodeName": "fake-node",
                    "targetRef": {"kind": "Pod", "name": p.name, "namespace": o.namespace, "uid": p.uid}
                })
            })
            .collect();
        if endpoints.is_empty() && index > 0 {
            return None;
        }
        Some(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{}-{}", o.service, ["abcde", "fghij", "klmno", "pqrst", "uvwxy"]
                                              .get(index).map_or_else(|| format!("z{index}"), |s| s.to_string())),
                         "namespace": o.namespace,
                         "labels": {"kubernetes.io/service-name": o.service,
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": o.service}]},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": o.port_name, "port": self.port, "protocol": "TCP"}]
        }))
    }

    /// Publishes the slices that changed since the last call.
    fn publish(&mut self) {
        let used: BTreeSet<usize> = self
            .pods
            .values()
            .map(|p| p.slice)
            .chain([0])
            .chain(self.slices.keys().copied())
            .collect();
        for i in used {
            let new = self.slice(i);
            let old = self.slices.get(&i).cloned();
            let strip = |v: &Value| {
                let mut v = v.clone();
                v["metadata"]
                    .as_object_mut()
                    .map(|m| m.remove("resourceVersion"));
                v
            };
            let (kind, obj) = match (&old, new) {
                (None, None) => continue,
                (Some(o), Some(n)) if strip(o) == n => continue,
                (Some(o), None) => {
                    self.slices.remove(&i);
                    ("DELETED", o.clone())
                }
                (old, Some(mut n)) => {
                    let rv = self.bump();
                    n["metadata"]["resourceVersion"] = json!(rv.to_string());
                    self.slices.insert(i, n.clone());
                    (if old.is_some() { "MODIFIED" } else { "ADDED" }, n)
                }
            };
            self.emit(kind, obj);
        }
    }

    /// Records a watch event on a slice (ADDED and MODIFIED with the version it was stored
    /// with, DELETED with a new one) and sends it to the watches it matches.
    fn emit(&mut self, kind: &str, mut obj: Value) {
        let rv = if kind == "DELETED" {
            self.bump()
        } else {
            self.rv
        };
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let event = json!({"type": kind, "object": obj});
        self.history.push_back((rv, event.clone()));
        while self.history.len() > 200 {
            if let Some((rv, _)) = self.history.pop_front() {
                self.floor = rv + 1;
            }
        }
        let line = Bytes::from(format!("{event}\n"));
        let labels = obj["metadata"]["labels"].clone();
        self.subs
            .retain(|s| !matches(&labels, &s.selector) || s.tx.send(line.clone()).is_ok());
    }

    /// The Service `name` the test added.
    fn extra_service(&self, name: &str) -> Option<Value> {
        let e = self.extra.get(name)?;
        Some(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": self.opts.namespace, "resourceVersion": "1"},
            "spec": {"type": "ClusterIP",
                     "ports": [{"name": e.port_name, "port": e.port, "targetPort": e.port, "protocol": "TCP"}]}
        }))
    }

    /// Publishes the slice of the Service `name` the test added, when it changed.
    fn publish_extra(&mut self, name: &str) {
        let ns = self.opts.namespace.clone();
        let Some(e) = self.extra.get(name) else {
            return;
        };
        let endpoints: Vec<Value> = e
            .endpoints
            .iter()
            .map(|(ip, ready)| {
                json!({"addresses": [ip.to_string()],
                       "conditions": {"ready": ready, "serving": ready, "terminating": false},
                       "nodeName": "fake-node"})
            })
            .collect();
        let mut new = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-x7k2q"), "namespace": ns,
                         "labels": {"kubernetes.io/service-name": name,
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name}]},
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": e.port_name, "port": e.port, "protocol": "TCP"}]
        });
        let kind = match &e.slice {
            Some(old) if old["endpoints"] == new["endpoints"] => return,
            Some(_) => "MODIFIED",
            None => "ADDED",
        };
        let rv = self.bump();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        if let Some(e) = self.extra.get_mut(name) {
            e.slice = Some(new.clone());
        }
        self.emit(kind, new);
    }

    fn spawn_pod(&mut self) {
        self.next_pod += 1;
        let ip = Ipv4Addr::new(self.base[0], self.base[1], self.base[2], self.next_ip);
        self.next_ip = self.next_ip.wrapping_add(1).max(2);
        let suffix: String = {
            let mut x = self.next_pod.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(self.port);
            (0..5)
                .map(|_| {
                    let c = b"bcdfghjklmnpqrstvwxz2456789"[(x % 27) as usize] as char;
                    x /= 27;
                    c
                })
                .collect()
        };
        let name = format!("{}-5d8f7c-{suffix}", self.opts.deployment);
        let child = self.start_process(ip);
        let slice = (0..)
            .find(|i| {
                self.pods.values().filter(|p| p.slice == *i).count()
                    < self.opts.max_endpoints_per_slice
            })
            .unwrap_or(0);
        let rv = self.bump();
        self.pods.insert(
            name.clone(),
            Pod {
                name: name.clone(),
                uid: format!("uid-{name}"),
                ip,
                created: SystemTime::now(),
                created_at: Instant::now(),
                rv,
                annotations: Map::new(),
                cache_annotations: Map::new(),
                controller_annotations: Map::new(),
                pending: Vec::new(),
                child,
                ready: false,
                ready_since: None,
                restarts: 0,
                restart_at: None,
                deleting: None,
                slice,
            },
        );
    }

    fn start_process(&self, ip: Ipv4Addr) -> Option<tokio::process::Child> {
        tokio::process::Command::new(&self.opts.bin)
            .arg("backend")
            .args(["--listen", &format!("{ip}:{}", self.port)])
            .args(&self.opts.backend_args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| eprintln!("kube fake: cannot start a pod: {e}"))
            .ok()
    }

    /// Kubernetes' ranking for scale-down (pkg/controller/controller_utils.go
    /// ActivePodsWithRanks.Less), over the controller's cached view: smaller sorts first.
    fn victims(&self, n: usize) -> Vec<String> {
        let cost = |p: &Pod| -> i64 {
            p.controller_annotations
                .get(DELETION_COST)
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<i32>().ok().filter(|v| v.to_string() == s))
                .map_or(0, i64::from)
        };
        let mut live: Vec<&Pod> = self
            .pods
            .values()
            .filter(|p| p.deleting.is_none())
            .collect();
        live.sort_by(|a, b| {
            a.ready
                .cmp(&b.ready)
                .then(cost(a).cmp(&cost(b)))
                // Less time ready first (a later ready_since sorts first).
                .then(b.ready_since.cmp(&a.ready_since))
                .then(b.restarts.cmp(&a.restarts))
                // Newer first.
                .then(b.created_at.cmp(&a.created_at))
        });
        live.iter().take(n).map(|p| p.name.clone()).collect()
    }
}

/// One pass of the ReplicaSet controller, the kubelet and the EndpointSlice controller.
async fn reconcile(s: &Arc<Mutex<State>>) {
    let now = Instant::now();
    let probes: Vec<(String, SocketAddr)> = {
        let mut st = lock(s);
        let port = st.port;
        let grace = st.opts.grace;
        let mut gone = Vec::new();
        let mut restart = Vec::new();
        for p in st.pods.values_mut() {
            // Annotation patches reach the cache, then the controller.
            p.pending.retain(|(cache_at, ctrl_at, a)| {
                if *cache_at <= now {
                    p.cache_annotations = a.clone();
                }
                if *ctrl_at <= now {
                    p.controller_annotations = a.clone();
                    return false;
                }
                true
            });
            let exited = match p.child.as_mut() {
                Some(c) => !matches!(c.try_wait(), Ok(None)),
                None => true,
            };
            match p.deleting {
                Some(_) if exited => gone.push(p.name.clone()),
                Some((_, at)) if now >= at + grace => {
                    if let Some(c) = p.child.as_mut() {
                        let _ = c.start_kill();
                    }
                }
                Some(_) => {}
                None if exited => match p.restart_at {
                    // A container that is not running is not ready, at once.
                    None => {
                        p.restart_at = Some(now + RESTART_BACKOFF);
                        p.ready = false;
                        p.ready_since = None;
                    }
                    Some(at) if now >= at => restart.push(p.name.clone()),
                    Some(_) => {}
                },
                None => {}
            }
        }
        for name in gone {
            st.pods.remove(&name);
        }
        for name in restart {
            let ip = st.pods[&name].ip;
            let child = st.start_process(ip);
            let rv = st.bump();
            let p = st.pods.get_mut(&name).expect("pod");
            p.child = child;
            p.restarts += 1;
            p.restart_at = None;
            p.ready = false;
            p.ready_since = None;
            p.rv = rv;
        }
        // The ReplicaSet.
        let live = st.pods.values().filter(|p| p.deleting.is_none()).count();
        let want = st.replicas as usize;
        if live < want {
            for _ in live..want {
                st.spawn_pod();
            }
        } else if live > want {
            for name in st.victims(live - want) {
                let rv = st.bump();
                let p = st.pods.get_mut(&name).expect("pod");
                p.deleting = Some((SystemTime::now(), now));
                p.rv = rv;
                // The kubelet: SIGTERM at once (no preStop hook).
                if let Some(pid) = p.child.as_ref().and_then(|c| c.id()) {
                    unsafe {
                        libc::kill(pid as i32, libc::SIGTERM);
                    }
                }
                st.deleted.push(name);
            }
        }
        st.pods
            .values()
            .map(|p| (p.name.clone(), SocketAddr::from((p.ip, port))))
            .collect()
    };
    // The kubelet's readiness probes, outside the lock.
    let results = futures_join(probes).await;
    let mut st = lock(s);
    for (name, ok) in results {
        let rv = st.rv + 1;
        if let Some(p) = st.pods.get_mut(&name) {
            if p.ready != ok {
                p.ready = ok;
                p.ready_since = ok.then(Instant::now);
                p.rv = rv;
                st.rv = rv;
            }
        }
    }
    st.publish();
    // Bookmarks and watch timeouts.
    let now = Instant::now();
    let bookmark = now.duration_since(st.last_bookmark) >= st.opts.bookmark_every;
    if bookmark {
        st.last_bookmark = now;
    }
    let line = Bytes::from(format!(
        "{}\n",
        json!({"type": "BOOKMARK", "object": {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"resourceVersion": st.rv.to_string(),
                            "annotations": {"k8s.io/initial-events-end": "true"}}}})
    ));
    st.subs.retain(|sub| {
        if sub.until.is_some_and(|u| now >= u) {
            return false;
        }
        !(bookmark && sub.bookmarks) || sub.tx.send(line.clone()).is_ok()
    });
}

async fn futures_join(probes: Vec<(String, SocketAddr)>) -> Vec<(String, bool)> {
    let tasks: Vec<_> = probes
        .into_iter()
        .map(|(name, addr)| tokio::spawn(async move { (name, probe(addr).await) }))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await {
            out.push(r);
        }
    }
    out
}

/// An HTTP readiness probe: GET /healthz answers 200 within a second.
async fn probe(addr: SocketAddr) -> bool {
    let attempt = async {
        let mut c = tokio::net::TcpStream::connect(addr).await.ok()?;
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut buf = [0u8; 16];
        let mut n = 0;
        while n < 12 {
            let r = c.read(&mut buf[n..]).await.ok()?;
            if r == 0 {
                break;
            }
            n += r;
        }
        Some(buf[..n].starts_with(b"HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

fn who(req: &Request<Incoming>) -> String {
    let h = req.headers();
    if let Some(t) = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return t.to_string();
    }
    h.get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_string()
}

async fn handle(s: &Arc<Mutex<State>>, req: Request<Incoming>) -> Response<Body> {
    let who = who(&req);
    let method = req.method().clone();
    let uri = req.uri().clone();
    let q = query(&uri);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(400, &status(400, "BadRequest", "unreadable body")),
    };
    let path: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    // (group, version, namespace, resource, name, subresource)
    let parsed = match path.as_slice() {
        ["api", "v1", "namespaces", ns, rest @ ..] => Some(("", *ns, rest)),
        ["apis", group, _version, "namespaces", ns, rest @ ..] => Some((*group, *ns, rest)),
        _ => None,
    };
    let Some((group, ns, rest)) = parsed else {
        return reply(
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    };
    let (resource, name, sub) = match rest {
        [r] => (*r, None, None),
        [r, n] => (*r, Some(*n), None),
        [r, n, sr] => (*r, Some(*n), Some(*sr)),
        _ => ("", None, None),
    };
    let verb = match (&method, name, q.get("watch").map(String::as_str)) {
        (&hyper::Method::GET, None, Some("true" | "1")) => "watch",
        (&hyper::Method::GET, None, _) => "list",
        (&hyper::Method::GET, Some(_), _) => "get",
        (&hyper::Method::POST, None, _) => "create",
        (&hyper::Method::PUT, Some(_), _) => "update",
        (&hyper::Method::PATCH, Some(_), _) => "patch",
        (&hyper::Method::DELETE, _, _) => "delete",
        _ => "unknown",
    };
    let full_resource = match sub {
        Some(sr) => format!("{resource}/{sr}"),
        None => resource.to_string(),
    };
    let mut st = lock(s);
    let resp = if ns != st.opts.namespace {
        reply(
            404,
            &status(404, "NotFound", &format!("namespaces \"{ns}\" not found")),
        )
    } else {
        route(&mut st, &who, verb, group, &full_resource, name, &q, &body)
    };
    st.served.push(Served {
        verb: verb.into(),
        group: group.into(),
        resource: full_resource,
        who,
        status: resp.status().as_u16(),
    });
    resp
}

fn not_found(kind: &str, name: &str) -> Response<Body> {
    reply(
        404,
        &status(404, "NotFound", &format!("{kind} \"{name}\" not found")),
    )
}

fn conflict(kind: &str, name: &str) -> Response<Body> {
    reply(
        409,
        &status(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {kind} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again"
            ),
        ),
    )
}

#[allow(clippy::too_many_arguments)]
fn route(
    st: &mut State,
    who: &str,
    verb: &str,
    group: &str,
    resource: &str,
    name: Option<&str>,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Response<Body> {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let deployment = st.opts.deployment.clone();
    let cached = q.get("resourceVersion").is_some_and(|v| v == "0");
    match (group, resource, verb, name) {
        ("apps", "deployments", "get", Some(n)) if n == deployment => reply(200, &st.deployment()),
        ("apps", "deployments" | "deployments/scale", _, Some(n)) if n != deployment => {
            not_found("deployments.apps", n)
        }
        ("apps", "deployments/scale", "get", Some(_)) => reply(200, &st.scale()),
        ("apps", "deployments/scale", verb @ ("update" | "patch"), Some(n)) => {
            let Some(v) = parsed else {
                return reply(400, &status(400, "BadRequest", "body is not JSON"));
            };
            let Some(replicas) = v.pointer("/spec/replicas").and_then(Value::as_u64) else {
                return reply(
                    422,
                    &status(422, "Invalid", "spec.replicas: Required value"),
                );
            };
            // An update (PUT) carries the resourceVersion it read: a stale one conflicts.
            let rv = v
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str);
            if let (Some(rv), "update") = (rv, verb) {
                if !rv.is_empty() && rv != st.deploy_rv.to_string() {
                    return conflict("deployments.apps", n);
                }
            }
            let old = st.replicas;
            st.set_replicas(replicas as u32);
            st.record_write(
                who,
                verb,
                resource,
                n,
                format!("replicas {old}->{replicas}"),
            );
            reply(200, &st.scale())
        }
        ("", "services", "get", Some(n)) if n == st.opts.service => reply(200, &st.service()),
        ("", "services", "get", Some(n)) => match st.extra_service(n) {
            Some(svc) => reply(200, &svc),
            None => not_found("services", n),
        },
        ("", "pods", "list", None) => {
            let Some(sel) = parse_selector(q.get("labelSelector").map_or("", String::as_str))
            else {
                return reply(
                    400,
                    &status(400, "BadRequest", "unsupported label selector"),
                );
            };
            let items: Vec<Value> = st
                .pods
                .values()
                .map(|p| st.pod(p, cached))
                .filter(|p| matches(&p["metadata"]["labels"], &sel))
                .collect();
            reply(
                200,
                &json!({"apiVersion": "v1", "kind": "PodList",
                        "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            )
        }
        ("", "pods", "get", Some(n)) => match st.pods.get(n) {
            Some(p) => reply(200, &st.pod(p, cached)),
            None => not_found("pods", n),
        },
        ("", "pods", "patch", Some(n)) => {
            let Some(v) = parsed else {
                return reply(400, &status(400, "BadRequest", "body is not JSON"));
            };
            let rv = st.rv + 1;
            let (cache_lag, ctrl_lag) = (
                st.opts.annotation_lag,
                st.opts.annotation_lag + st.opts.controller_extra_lag,
            );
            let Some(p) = st.pods.get_mut(n) else {
                return not_found("pods", n);
            };
            if let Some(want) = v
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
            {
                if want != p.rv.to_string() {
                    return conflict("pods", n);
                }
            }
            let only_annotations = v.as_object().is_some_and(|o| {
                o.keys().all(|k| k == "metadata")
                    && v["metadata"].as_object().is_some_and(|m| {
                        m.keys()
                            .all(|k| k == "annotations" || k == "resourceVersion")
                    })
            });
            if !only_annotations {
                return reply(
                    422,
                    &status(
                        422,
                        "Invalid",
                        "the fake API server patches only metadata.annotations",
                    ),
                );
            }
            let mut a = Value::Object(p.annotations.clone());
            merge(&mut a, &v["metadata"]["annotations"]);
            p.annotations = a.as_object().cloned().unwrap_or_default();
            let now = Instant::now();
            p.pending
                .push((now + cache_lag, now + ctrl_lag, p.annotations.clone()));
            p.rv = rv;
            st.rv = rv;
            st.record_write(
                who,
                "patch",
                "pods",
                n,
                v["metadata"]["annotations"].to_string(),
            );
            let p = &st.pods[n];
            reply(200, &st.pod(p, false))
        }
        ("discovery.k8s.io", "endpointslices", "list" | "watch", None) => {
            let Some(sel) = parse_selector(q.get("labelSelector").map_or("", String::as_str))
            else {
                return reply(
                    400,
                    &status(400, "BadRequest", "unsupported label selector"),
                );
            };
            if verb == "list" {
                let items: Vec<Value> = st
                    .slices
                    .values()
                    .chain(st.extra.values().filter_map(|e| e.slice.as_ref()))
                    .filter(|v| matches(&v["metadata"]["labels"], &sel))
                    .cloned()
                    .collect();
                return reply(
                    200,
                    &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
                            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
                );
            }
            let from: u64 = q
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(st.rv);
            let (tx, rx) = mpsc::unbounded_channel();
            if from + 1 < st.floor {
                let e = json!({"type": "ERROR", "object": status(410, "Expired",
                    &format!("too old resource version: {from} ({})", st.floor))});
                let _ = tx.send(Bytes::from(format!("{e}\n")));
            } else {
                for (rv, e) in &st.history {
                    if *rv > from && matches(&e["object"]["metadata"]["labels"], &sel) {
                        let _ = tx.send(Bytes::from(format!("{e}\n")));
                    }
                }
                let until = q
                    .get("timeoutSeconds")
                    .and_then(|t| t.parse::<u64>().ok())
                    .map(|t| Instant::now() + Duration::from_secs(t));
                st.subs.push(Sub {
                    tx,
                    selector: sel,
                    bookmarks: q.get("allowWatchBookmarks").is_some_and(|v| v == "true"),
                    until,
                });
            }
            Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::Stream(rx))
                .expect("response")
        }
        ("autoscaling", "horizontalpodautoscalers", "list", None) => reply(
            200,
            &json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscalerList",
                    "metadata": {"resourceVersion": st.rv.to_string()}, "items": st.hpas}),
        ),
        ("keda.sh", "scaledobjects", "list", None) => match &st.scaled_objects {
            Some(items) => reply(
                200,
                &json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObjectList",
                        "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
            ),
            None => reply(
                404,
                &status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            ),
        },
        ("coordination.k8s.io", "leases", "get", Some(n)) => match st.leases.get(n) {
            Some(l) => reply(200, l),
            None => not_found("leases.coordination.k8s.io", n),
        },
        ("coordination.k8s.io", "leases", "create", None) => {
            let Some(mut v) = parsed else {
                return reply(400, &status(400, "BadRequest", "body is not JSON"));
            };
            let Some(n) = v
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(String::from)
            else {
                return reply(
                    422,
                    &status(422, "Invalid", "metadata.name: Required value"),
                );
            };
            if st.leases.contains_key(&n) {
                return reply(
                    409,
                    &status(
                        409,
                        "AlreadyExists",
                        &format!("leases.coordination.k8s.io \"{n}\" already exists"),
                    ),
                );
            }
            let rv = st.bump();
            v["metadata"]["resourceVersion"] = json!(rv.to_string());
            v["metadata"]["namespace"] = json!(st.opts.namespace);
            st.leases.insert(n.clone(), v.clone());
            st.record_write(who, "create", resource, &n, v["spec"].to_string());
            reply(201, &v)
        }
        ("coordination.k8s.io", "leases", "update", Some(n)) => {
            let Some(mut v) = parsed else {
                return reply(400, &status(400, "BadRequest", "body is not JSON"));
            };
            let Some(cur) = st.leases.get(n) else {
                return not_found("leases.coordination.k8s.io", n);
            };
            let want = v
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str);
            if want
                != cur
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
            {
                return conflict("leases.coordination.k8s.io", n);
            }
            let rv = st.bump();
            v["metadata"]["resourceVersion"] = json!(rv.to_string());
            st.leases.insert(n.to_string(), v.clone());
            st.record_write(who, "update", resource, n, v["spec"].to_string());
            reply(200, &v)
        }
        _ => reply(
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        ),
    }
}
