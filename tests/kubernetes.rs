//! The kubernetes provider and discovery end to end, against the protocol fake of the API
//! server in tests/common/kube_fake.rs (a stand-in: no kube-apiserver can run on this machine;
//! tests/kube_fake.rs checks the fake itself with kubectl). The pods are real `ebbtide backend`
//! processes on loopback addresses; the balancer is the freshly built `ebbtide serve`; load comes
//! from `ebbtide load`.
//!
//! `real_cluster_scale_out_and_in` runs the same scenario against `$KUBECONFIG` (ignored here).

mod common;
#[path = "common/kube_fake.rs"]
mod kube_fake;

use common::*;
use kube_fake::{KubeFake, Options};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tests take turns: each runs a fleet of processes and a load on two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The lowest int32, the cost ebbtide marks a drained pod with.
const CHEAPEST: &str = "-2147483648";

fn fake_options(replicas: u32) -> Options {
    let mut o = Options::new(ebbtide_bin());
    o.replicas = replicas;
    o.backend_args = ["--service-time", "exp:20ms", "--workers", "4"]
        .map(String::from)
        .to_vec();
    o
}

/// `ebbtide serve` scaling the fake's Deployment, plus `rest`.
fn provider_config(fake: &KubeFake, rest: &str) -> String {
    base_config(&format!(
        r#"[health]
path = "/healthz"
interval = "500ms"
[lifecycle]
drain_timeout = "5s"
[provider]
kind = "kubernetes"
api_server = "{}"
namespace = "default"
target = "deployment/web"
boot_timeout = "30s"
{rest}
"#,
        fake.url()
    ))
}

/// Scales on concurrency (4 in flight per backend at 70%), 1 to 4 backends; the cost rules
/// bill by the hour and may release any backend at once, so a scale-in removes the backend
/// with the least paid time left: the **oldest**, where the ReplicaSet left alone would delete
/// the newest. The deletion cost is what makes the two agree.
const AUTOSCALER: &str = "[autoscaler]\ndecider = \"concurrency\"\nmin = 1\nmax = 4\ntarget = 4\n\
     stable_window = \"10s\"\npanic_window = \"3s\"\nmetric_window = \"3s\"\n\
     [autoscaler.cost]\nbackend_per_hour = 0.05\nbilling_period = \"1h\"\nrelease_margin = \"1h\"";

/// Samples the fake's spec.replicas every 250 ms until `stop`.
fn sample_replicas(
    fake: Arc<KubeFake>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u32>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            seen.push(fake.replicas());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        seen
    })
}

/// The pods ebbtide marked cheapest to delete.
fn marked(fake: &KubeFake) -> BTreeSet<String> {
    fake.writes()
        .iter()
        .filter(|w| w.resource == "pods" && w.detail.contains(CHEAPEST))
        .map(|w| w.name.clone())
        .collect()
}

/// Runs the load step against `lb`; (report, replicas seen each 250 ms).
async fn load_step(fake: &Arc<KubeFake>, lb: &Serve) -> (serde_json::Value, Vec<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_replicas(fake.clone(), stop.clone());
    let (addr, admin) = (lb.addr, lb.admin);
    let report = tokio::task::spawn_blocking(move || {
        load(&url(addr, "/"), Some(admin), "steps:100@8s,500@20s,40@12s")
    })
    .await
    .unwrap();
    eventually("scale-in to one pod", Duration::from_secs(90), || async {
        let pods = fake.pods();
        (fake.replicas() == 1 && pods.len() == 1 && active(lb.admin).await.len() == 1).then_some(())
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    (report, sampler.await.unwrap())
}

/// The balancer's active backends are the fake's ready pods.
async fn agrees(fake: &KubeFake, admin: SocketAddr) {
    eventually(
        "the balancer's backends to be the ready pods",
        Duration::from_secs(30),
        || async {
            let pods: Vec<String> = fake.ready_pods().values().cloned().collect();
            let mut pods = pods;
            pods.sort();
            (active(admin).await == pods).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_step_scales_the_deployment_out_and_in_removing_the_drained_pods() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let fake = Arc::new(KubeFake::start(fake_options(1)).await);
    let lb = Serve::start(&provider_config(&fake, AUTOSCALER));
    eventually("the first pod active", Duration::from_secs(30), || async {
        (active(lb.admin).await.len() == 1).then_some(())
    })
    .await;
    let (report, replicas) = load_step(&fake, &lb).await;
    let errors = report["errors"].as_u64().unwrap();
    let most = replicas.iter().max().copied().unwrap_or(0);
    let deleted: BTreeSet<String> = fake.deleted().into_iter().collect();
    let marked = marked(&fake);
    let boots = lb.boot_times_ms();
    let cold = cold_start_metric(lb.admin, "kubernetes").await;
    eprintln!(
        "kube scale: sent {}, ok {}, errors {errors} ({:?}), status {:?}, p99 {} ms",
        report["sent"],
        report["ok"],
        report["errors_by_kind"],
        report["status_codes"],
        report["latency_ms"]["p99"]
    );
    eprintln!("kube scale: replicas every 250 ms: {replicas:?}");
    eprintln!("kube scale: deleted {deleted:?}, marked {marked:?}, boot ms {boots:?}");
    eprintln!(
        "kube scale: cold starts {}, sum {:.2} s, buckets {:?}",
        cold.count, cold.sum_seconds, cold.buckets
    );
    assert_eq!(errors, 0, "requests failed while the Deployment scaled");
    assert!(most >= 3, "never scaled out to 3 replicas: {replicas:?}");
    assert!(!deleted.is_empty());
    assert!(
        deleted.is_subset(&marked),
        "the ReplicaSet deleted pods ebbtide had not drained: deleted {deleted:?}, marked {marked:?}"
    );
    assert!(
        !lb.log_has("another pod than the drained one"),
        "a scale-in removed the wrong pod although the controller saw the mark"
    );
    agrees(&fake, lb.admin).await;
    // Every replicas write was a read-modify-write of the scale subresource.
    let writes = fake.writes();
    assert!(writes
        .iter()
        .filter(|w| w.resource.ends_with("/scale"))
        .all(|w| w.verb == "update"));
    assert!(
        boots.len() >= 3,
        "every launch logs its boot time: {boots:?}"
    );
    // Each pod that served has its cold start (decision to first request).
    assert!(cold.count >= 3, "{cold:?}");
    // The pod selector is read once: listing pods does not read the scale each time.
    let served = fake.served();
    let count = |verb: &str, resource: &str| {
        served
            .iter()
            .filter(|s| s.verb == verb && s.resource == resource)
            .count()
    };
    let (scale_gets, pod_lists) = (count("get", "deployments/scale"), count("list", "pods"));
    eprintln!("kube scale: {scale_gets} scale reads, {pod_lists} pod lists");
    assert!(
        pod_lists > scale_gets,
        "{scale_gets} scale reads for {pod_lists} pod lists"
    );
    check_rbac(&fake, "provider");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_replicaset_removes_another_pod_ebbtide_reconciles() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut opts = fake_options(1);
    // The controller never sees the deletion cost: it deletes the newest pod, while ebbtide
    // drains the oldest (see AUTOSCALER).
    opts.controller_extra_lag = Duration::from_secs(3600);
    let fake = Arc::new(KubeFake::start(opts).await);
    let lb = Serve::start(&provider_config(&fake, AUTOSCALER));
    eventually("the first pod active", Duration::from_secs(30), || async {
        (active(lb.admin).await.len() == 1).then_some(())
    })
    .await;
    let (report, replicas) = load_step(&fake, &lb).await;
    eprintln!(
        "kube race: sent {}, errors {} ({:?}); replicas {replicas:?}; deleted {:?}, marked {:?}",
        report["sent"],
        report["errors"],
        report["errors_by_kind"],
        fake.deleted(),
        marked(&fake)
    );
    assert!(
        lb.log_has("another pod than the drained one"),
        "the wrong victim was never noticed"
    );
    // Requests sent to the pod the ReplicaSet removed (SIGTERM at once, its endpoint refusing)
    // went elsewhere, or waited for the drained pod to be claimed back when it was the last.
    assert_eq!(
        report["errors"].as_u64(),
        Some(0),
        "requests failed in the scale-in race: {}",
        report["errors_by_kind"]
    );
    // The drained pod was claimed back: the balancer serves exactly the pods that exist, and
    // the Deployment has as many pods as replicas.
    agrees(&fake, lb.admin).await;
    assert_eq!(fake.pods().len() as u32, fake.replicas());
}

/// The full elastic system in one `ebbtide serve`: the kubernetes provider scales the
/// Deployment while `[discovery]` follows the Service's EndpointSlices. Both name the same pods:
/// each is one backend, and a pod the ReplicaSet deletes is drained as soon as its endpoint says
/// terminating, whoever registered it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_and_discovery_in_one_serve_scale_out_and_in_without_failed_requests() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let fake = Arc::new(KubeFake::start(fake_options(1)).await);
    let discovery = format!(
        "[discovery]\nkind = \"kubernetes\"\napi_server = \"{}\"\nnamespace = \"default\"\n\
         service = \"web\"\nport = \"http\"\n",
        fake.url()
    );
    let lb = Serve::start(&provider_config(
        &fake,
        &format!("{AUTOSCALER}\n{discovery}"),
    ));
    eventually("the first pod active", Duration::from_secs(30), || async {
        (active(lb.admin).await.len() == 1).then_some(())
    })
    .await;
    let (report, replicas) = load_step(&fake, &lb).await;
    let errors = report["errors"].as_u64().unwrap();
    let cold = cold_start_metric(lb.admin, "kubernetes").await;
    eprintln!(
        "kube provider+discovery: sent {}, ok {}, errors {errors} ({:?}), status {:?}; \
         replicas {replicas:?}; deleted {:?}, marked {:?}; cold starts {} (sum {:.2} s)",
        report["sent"],
        report["ok"],
        report["errors_by_kind"],
        report["status_codes"],
        fake.deleted(),
        marked(&fake),
        cold.count,
        cold.sum_seconds
    );
    assert_eq!(errors, 0, "requests failed while the Deployment scaled");
    assert!(
        replicas.iter().max().copied().unwrap_or(0) >= 3,
        "{replicas:?}"
    );
    agrees(&fake, lb.admin).await;
    // One backend per pod address, whoever saw it first.
    let listed = backends(lb.admin).await;
    let addresses: BTreeSet<&String> = listed.iter().map(|(a, _)| a).collect();
    assert_eq!(addresses.len(), listed.len(), "{listed:?}");
    assert!(lb.log_has("watching endpoints"));
    assert!(cold.count >= 3, "{cold:?}");
}

/// `ebbtide serve` with `config`; (exit success, stderr), within 30 s.
fn serve_exit(config: &str) -> (bool, String) {
    exit_of("serve", config, None)
}

/// `ebbtide COMMAND` with `config` (and `$KUBECONFIG`); (exit success, stderr), within 30 s.
fn exit_of(command: &str, config: &str, kubeconfig: Option<&std::path::Path>) -> (bool, String) {
    let file = tempfile_path::TempPath::with_contents("toml", config);
    let mut cmd = Command::new(ebbtide_bin());
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    let mut child = cmd
        .args([command, "--config"])
        .arg(file.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.success(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ebbtide {command} kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_competing_hpa_or_scaledobject_makes_ebbtide_refuse_to_start() {
    let fake = KubeFake::start(fake_options(1)).await;
    fake.add_hpa("web-hpa", "Deployment", "web");
    let config = provider_config(&fake, AUTOSCALER);
    let (ok, err) = tokio::task::spawn_blocking({
        let c = config.clone();
        move || serve_exit(&c)
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(
        err.contains("HorizontalPodAutoscaler `web-hpa` already scales deployment/web"),
        "{err}"
    );
    assert!(!fake.writes().iter().any(|w| w.resource.ends_with("/scale")));

    let fake = KubeFake::start(fake_options(1)).await;
    fake.add_hpa("other", "Deployment", "api");
    fake.install_keda(&[("web-so", "web")]);
    let config = provider_config(&fake, AUTOSCALER);
    let (ok, err) = tokio::task::spawn_blocking(move || serve_exit(&config))
        .await
        .unwrap();
    assert!(!ok);
    assert!(err.contains("KEDA ScaledObject `web-so`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_reset_behind_ebbtides_back_is_warned_about_and_lost_pods_replaced() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let fake = Arc::new(KubeFake::start(fake_options(1)).await);
    let lb = Serve::start(&provider_config(
        &fake,
        "[autoscaler]\ndecider = \"concurrency\"\nmin = 2\nmax = 4\ntarget = 4",
    ));
    eventually("two pods active", Duration::from_secs(30), || async {
        (active(lb.admin).await.len() == 2).then_some(())
    })
    .await;
    // A GitOps sync puts replicas back to what the manifest says.
    fake.set_replicas(1, "argocd");
    eventually("the warning", Duration::from_secs(10), || async {
        lb.log_has("replicas was changed by another writer")
            .then_some(())
    })
    .await;
    // The pod the ReplicaSet removed is reported lost and replaced: two again.
    eventually("two ready pods again", Duration::from_secs(30), || async {
        (fake.replicas() == 2 && fake.ready_pods().len() == 2).then_some(())
    })
    .await;
    assert!(lb.log_has("pod lost"));
    agrees(&fake, lb.admin).await;
}

/// `ebbtide serve` with `[discovery]` on the fake's Service and no provider: a plain
/// Kubernetes-aware balancer.
fn discovery_config(fake: &KubeFake, port: &str) -> String {
    base_config(&format!(
        "[lifecycle]\ndrain_timeout = \"5s\"\n[discovery]\nkind = \"kubernetes\"\n\
         api_server = \"{}\"\nnamespace = \"default\"\nservice = \"web\"\nport = {port}\n",
        fake.url()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_follows_endpoint_slices_through_410_and_dropped_watches() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let fake = Arc::new(KubeFake::start(fake_options(3)).await);
    eventually("three ready pods", Duration::from_secs(30), || async {
        (fake.ready_pods().len() == 3).then_some(())
    })
    .await;
    let lb = Serve::start(&discovery_config(&fake, "80"));
    // Three endpoints over two slices (two per slice): the union.
    agrees(&fake, lb.admin).await;
    assert_eq!(active(lb.admin).await.len(), 3);
    // Scale in under load: the removed pod's endpoint turns terminating, the balancer stops
    // sending to it at once; no request fails.
    let (addr, admin) = (lb.addr, lb.admin);
    let load_task =
        tokio::task::spawn_blocking(move || load(&url(addr, "/"), Some(admin), "steps:150@12s"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    fake.set_replicas(2, "test");
    eventually("two pods", Duration::from_secs(20), || async {
        (fake.pods().len() == 2).then_some(())
    })
    .await;
    agrees(&fake, lb.admin).await;
    // The watch is dropped and the history compacted: kube's watcher relists after 410 Gone.
    fake.compact();
    fake.drop_watches();
    fake.set_replicas(3, "test");
    eventually("three pods", Duration::from_secs(20), || async {
        (fake.ready_pods().len() == 3).then_some(())
    })
    .await;
    agrees(&fake, lb.admin).await;
    let report = load_task.await.unwrap();
    eprintln!(
        "kube discovery: sent {}, errors {} ({:?}), status {:?}",
        report["sent"], report["errors"], report["errors_by_kind"], report["status_codes"]
    );
    assert_eq!(report["errors"].as_u64(), Some(0));
    assert!(fake.watchers() >= 1, "the watch was not resumed");
    let lists = lb
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("endpoints listed"))
        .count();
    assert!(lists >= 2, "no relist after 410 Gone ({lists} lists)");
    // By name too; a port the Service does not have is refused at start.
    let by_name = Serve::start(&discovery_config(&fake, "\"http\""));
    agrees(&fake, by_name.admin).await;
    let (ok, err) = tokio::task::spawn_blocking({
        let c = discovery_config(&fake, "81");
        move || serve_exit(&c)
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(
        err.contains("Service web has no port 81; it has: http (80)"),
        "{err}"
    );
    check_rbac(&fake, "discovery");
}

/// The same scale-out and scale-in against a real cluster: `$KUBECONFIG`'s context, a
/// Deployment `$EBBTIDE_K8S_TARGET` (default deployment/web) in `$EBBTIDE_K8S_NAMESPACE`
/// (default "default") whose pods serve `ebbtide backend` on `$EBBTIDE_K8S_PORT` (8080) and are
/// reachable from this machine (pod IPs routed, e.g. kind with its network, or run in-cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: KUBECONFIG and a Deployment of ebbtide backends"]
async fn real_cluster_scale_out_and_in() {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "set KUBECONFIG to a cluster's config"
    );
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let config = base_config(&format!(
        "[health]\npath = \"/healthz\"\ninterval = \"500ms\"\n[lifecycle]\ndrain_timeout = \"5s\"\n\
         [provider]\nkind = \"kubernetes\"\nnamespace = \"{}\"\ntarget = \"{}\"\nport = {}\n\
         boot_timeout = \"120s\"\n{AUTOSCALER}\n",
        env("EBBTIDE_K8S_NAMESPACE", "default"),
        env("EBBTIDE_K8S_TARGET", "deployment/web"),
        env("EBBTIDE_K8S_PORT", "8080"),
    ));
    let lb = Serve::start(&config);
    eventually("the first pod active", Duration::from_secs(120), || async {
        (!active(lb.admin).await.is_empty()).then_some(())
    })
    .await;
    let (addr, admin) = (lb.addr, lb.admin);
    let report = tokio::task::spawn_blocking(move || {
        load(&url(addr, "/"), Some(admin), "steps:100@8s,500@30s,40@20s")
    })
    .await
    .unwrap();
    assert_eq!(report["errors"].as_u64(), Some(0), "{report}");
    assert!(!lb.log_has("another pod than the drained one"));
}

/// The Role's rules in deploy/kubernetes/rbac.yaml as (group, resource, verb), read with
/// Python's YAML parser (PyYAML comes with kubernetes-validate, see scripts/test.sh).
fn role_rules() -> BTreeSet<(String, String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/rbac.yaml");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            path,
        ])
        .output()
        .expect("python3 with PyYAML (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role")
        .expect("a Role in rbac.yaml");
    let mut rules = BTreeSet::new();
    for r in role["rules"].as_array().unwrap() {
        for g in r["apiGroups"].as_array().unwrap() {
            for res in r["resources"].as_array().unwrap() {
                for v in r["verbs"].as_array().unwrap() {
                    rules.insert((
                        g.as_str().unwrap().to_string(),
                        res.as_str().unwrap().to_string(),
                        v.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    rules
}

/// What each part of ebbtide calls; their union must be the Role exactly.
fn part(name: &str) -> BTreeSet<(String, String, String)> {
    let rules: &[(&str, &str, &str)] = match name {
        "provider" => &[
            ("apps", "deployments/scale", "get"),
            ("apps", "deployments/scale", "update"),
            ("", "pods", "get"),
            ("", "pods", "list"),
            ("", "pods", "patch"),
            ("autoscaling", "horizontalpodautoscalers", "list"),
            ("keda.sh", "scaledobjects", "list"),
        ],
        "discovery" => &[
            ("", "services", "get"),
            ("discovery.k8s.io", "endpointslices", "list"),
            ("discovery.k8s.io", "endpointslices", "watch"),
        ],
        "leader" => &[
            ("coordination.k8s.io", "leases", "get"),
            ("coordination.k8s.io", "leases", "create"),
            ("coordination.k8s.io", "leases", "update"),
        ],
        other => panic!("no part {other}"),
    };
    rules
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect()
}

/// Every request made to the fake (only ebbtide's: the tests change it directly) is granted by the Role, and it used every rule of
/// `part`.
fn check_rbac(fake: &KubeFake, name: &str) {
    let used: BTreeSet<(String, String, String)> = fake
        .served()
        .into_iter()
        .map(|s| (s.group, s.resource, s.verb))
        .collect();
    let role = role_rules();
    let extra: Vec<_> = used.difference(&role).collect();
    assert!(
        extra.is_empty(),
        "used but not granted by the Role: {extra:?}"
    );
    let unused: Vec<_> = part(name).difference(&used).cloned().collect();
    assert!(unused.is_empty(), "the {name} never used: {unused:?}");
    eprintln!("rbac {name}: used {used:?}");
}

#[test]
fn the_role_grants_exactly_what_the_provider_discovery_and_leader_election_use() {
    let mut all = part("provider");
    all.extend(part("discovery"));
    all.extend(part("leader"));
    assert_eq!(role_rules(), all);
}

/// A kubeconfig for the fake whose bearer token is `user` (the fake records it as the writer).
fn kubeconfig(fake: &KubeFake, user: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with_contents(
        "yaml",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: {user}\n  user:\n    token: {user}\ncontexts:\n- name: fake\n  \
             context:\n    cluster: fake\n    user: {user}\n    namespace: default\n\
             current-context: fake\n",
            fake.url()
        ),
    )
}

/// A running `ebbtide autoscale`; killed when dropped.
struct Autoscale {
    child: std::process::Child,
    logs: Arc<std::sync::Mutex<Vec<String>>>,
    _files: (tempfile_path::TempPath, tempfile_path::TempPath),
}

impl Autoscale {
    /// `balancers`: the `[autoscaler]` keys (or tables) that name the balancers.
    fn start(fake: &KubeFake, who: &str, balancers: &str, min: u32) -> Autoscale {
        use std::io::{BufRead, BufReader};
        let kc = kubeconfig(fake, who);
        let config = tempfile_path::TempPath::with_contents(
            "toml",
            &format!(
                "[admin]\naddress = \"127.0.0.1:0\"\n[health]\npath = \"/healthz\"\n\
                 [provider]\nkind = \"kubernetes\"\ntarget = \"deployment/web\"\nboot_timeout = \"30s\"\n\
                 [autoscaler]\ndecider = \"concurrency\"\nmin = {min}\nmax = 4\ninterval = \"1s\"\n\
                 {balancers}\n\
                 [leader_election]\nlease = \"ebbtide-autoscaler\"\nidentity = \"{who}\"\n\
                 lease_duration = \"3s\"\nrenew_deadline = \"2s\"\nretry_period = \"500ms\"\n"
            ),
        );
        let mut child = Command::new(ebbtide_bin())
            .args(["autoscale", "--config"])
            .arg(config.path())
            .env("KUBECONFIG", kc.path())
            .env("EBBTIDE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = logs.clone();
        let stderr = child.stderr.take().unwrap();
        let name = who.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("leader")
                    || line.contains("balancer")
                    || line.contains("WARN")
                    || line.contains("ERROR")
                {
                    eprintln!("{name}: {line}");
                }
                keep.lock().unwrap().push(line);
            }
        });
        Autoscale {
            child,
            logs,
            _files: (kc, config),
        }
    }

    fn log_has(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

impl Drop for Autoscale {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_hands_over_when_the_leader_is_killed_with_no_double_write() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let fake = Arc::new(KubeFake::start(fake_options(1)).await);
    let lb = Serve::start(&base_config(
        "[health]\npath = \"/healthz\"\ninterval = \"500ms\"\n",
    ));
    let static_list = format!("balancers = [\"http://{}\"]", lb.admin);
    let mut alice = Autoscale::start(&fake, "alice", &static_list, 2);
    eventually(
        "alice to lead and scale to 2",
        Duration::from_secs(30),
        || async { (alice.log_has("acquired the lease") && fake.replicas() == 2).then_some(()) },
    )
    .await;
    let bob = Autoscale::start(&fake, "bob", &static_list, 3);
    eventually("bob to wait", Duration::from_secs(10), || async {
        bob.log_has("another replica holds the lease").then_some(())
    })
    .await;
    // Bob wants 3 but may not act: replicas stays 2 while alice holds the lease.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fake.replicas(), 2);
    let killed = Instant::now();
    alice.child.kill().unwrap();
    alice.child.wait().unwrap();
    eventually(
        "bob to take over and scale to 3",
        Duration::from_secs(30),
        || async { (bob.log_has("acquired the lease") && fake.replicas() == 3).then_some(()) },
    )
    .await;
    eprintln!(
        "leader: bob took over and wrote {:?} after alice was killed",
        killed.elapsed()
    );
    let writes = fake.writes();
    let mut by = BTreeSet::new();
    for w in &writes {
        if w.resource == "leases" {
            continue;
        }
        by.insert(w.who.clone());
        assert_eq!(
            w.holders.get("ebbtide-autoscaler"),
            Some(&w.who),
            "{} wrote {} {} ({}) while the lease was held by {:?}",
            w.who,
            w.verb,
            w.resource,
            w.detail,
            w.holders
        );
    }
    assert_eq!(by, ["alice", "bob"].map(String::from).into_iter().collect());
    // Bob's first write came after alice's lease had run out.
    let last_alice = writes
        .iter()
        .filter(|w| w.who == "alice")
        .map(|w| w.at)
        .max()
        .unwrap();
    let first_bob = writes
        .iter()
        .filter(|w| w.who == "bob" && w.resource != "leases")
        .map(|w| w.at)
        .min()
        .unwrap();
    assert!(first_bob > last_alice + Duration::from_secs(3));
    check_rbac(&fake, "leader");
}

/// The addresses a balancer lists (any state), sorted.
async fn listed(admin: SocketAddr) -> Vec<String> {
    let mut a: Vec<String> = backends(admin).await.into_iter().map(|(a, _)| a).collect();
    a.sort();
    a
}

/// The fake's ready pods' addresses, sorted.
fn ready_pods(fake: &KubeFake) -> Vec<String> {
    let mut pods: Vec<String> = fake.ready_pods().values().cloned().collect();
    pods.sort();
    pods
}

/// `ebbtide autoscale` with `[autoscaler.balancer_discovery]`: its balancers are the ready
/// endpoints of their admin Service (real `ebbtide serve` processes, each on its own address
/// and the same admin port, as pods are). Both get its backends; a third that turns ready in
/// the slice gets them too, without a restart; one removed from the slice is no longer called,
/// so its registrations (3 s leases, renewed every second at the others) run out; it comes back
/// through a dropped watch and a 410 Gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscale_follows_its_balancers_from_their_services_endpoints() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let fake = Arc::new(KubeFake::start(fake_options(1)).await);
    let ips: Vec<std::net::Ipv4Addr> = (0..3).map(|n| fake.spare_ip(n)).collect();
    let port = std::net::TcpListener::bind((ips[0], 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lbs: Vec<Serve> = ips
        .iter()
        .map(|ip| {
            Serve::start(&format!(
                "[listener]\naddress = \"{ip}:0\"\n[admin]\naddress = \"{ip}:{port}\"\n\
                 [health]\npath = \"/healthz\"\ninterval = \"500ms\"\n"
            ))
        })
        .collect();
    let admins: Vec<SocketAddr> = lbs.iter().map(|l| l.admin).collect();
    fake.add_service("ebbtide-admin", "admin", port);
    fake.set_endpoint("ebbtide-admin", ips[0], Some(true));
    fake.set_endpoint("ebbtide-admin", ips[1], Some(true));
    // Not ready (a failing readiness probe): not a balancer yet.
    fake.set_endpoint("ebbtide-admin", ips[2], Some(false));
    let scaler = Autoscale::start(
        &fake,
        "alice",
        "registration_lease = \"3s\"\n[autoscaler.balancer_discovery]\nkind = \"kubernetes\"\n\
         service = \"ebbtide-admin\"\nport = \"admin\"",
        2,
    );
    eventually(
        "both balancers to list the two pods",
        Duration::from_secs(60),
        || async {
            let pods = ready_pods(&fake);
            (pods.len() == 2 && listed(admins[0]).await == pods && listed(admins[1]).await == pods)
                .then_some(())
        },
    )
    .await;
    assert!(listed(admins[2]).await.is_empty());
    // The third turns ready: it gets the backends without a restart of the autoscaler.
    fake.set_endpoint("ebbtide-admin", ips[2], Some(true));
    eventually(
        "the third balancer to list the two pods",
        Duration::from_secs(30),
        || async { (listed(admins[2]).await == ready_pods(&fake)).then_some(()) },
    )
    .await;
    assert!(scaler.log_has("balancer found"));
    // The first leaves the slice: no more renewals there, so its registrations run out.
    fake.set_endpoint("ebbtide-admin", ips[0], None);
    eventually(
        "the removed balancer to forget the backends",
        Duration::from_secs(30),
        || async { listed(admins[0]).await.is_empty().then_some(()) },
    )
    .await;
    assert!(scaler.log_has("balancer gone"));
    // The others keep them: their leases are renewed.
    let pods = ready_pods(&fake);
    assert_eq!(pods.len(), 2);
    assert_eq!(listed(admins[1]).await, pods);
    assert_eq!(listed(admins[2]).await, pods);
    // Through a dropped watch and a compacted history (410 Gone, a relist): the first comes
    // back and is given the backends again.
    fake.compact();
    fake.drop_watches();
    fake.set_endpoint("ebbtide-admin", ips[0], Some(true));
    eventually(
        "the balancer back in the slice to list the pods again",
        Duration::from_secs(30),
        || async { (listed(admins[0]).await == ready_pods(&fake)).then_some(()) },
    )
    .await;
    check_rbac(&fake, "discovery");
    // A Service that is not there: refused at start, naming the section.
    let kc = kubeconfig(&fake, "carol");
    let (ok, err) = tokio::task::spawn_blocking(move || {
        exit_of(
            "autoscale",
            "[admin]\naddress = \"127.0.0.1:0\"\n[provider]\nkind = \"kubernetes\"\n\
             target = \"deployment/web\"\n[autoscaler]\n[autoscaler.balancer_discovery]\n\
             service = \"nope\"\n",
            Some(kc.path()),
        )
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(
        err.contains("autoscaler.balancer_discovery: cannot read Service `nope`"),
        "{err}"
    );
}
