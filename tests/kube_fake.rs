//! The protocol fake of the Kubernetes API server (tests/common/kube_fake.rs) checked on its own:
//! by kubectl, an independent client, and by raw HTTP for what kubectl cannot show (conflicts,
//! the watch stream, 410 Gone, the ReplicaSet's victim order). The fake is a stand-in: no
//! kube-apiserver can run here.

mod common;
#[path = "common/kube_fake.rs"]
mod kube_fake;

use common::*;
use kube_fake::{KubeFake, Options, DELETION_COST};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// `kubectl --server URL get --raw PATH`, on a blocking thread (the fake serves on this one).
async fn kubectl_raw(fake: &KubeFake, path: &str) -> Value {
    let (url, p) = (fake.url(), path.to_string());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("kubectl")
            .args(["--server", &url, "get", "--raw", &p])
            .env("KUBECONFIG", "/dev/null")
            .output()
            .expect("kubectl is needed by this test (scripts/test.sh installs it)")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "kubectl get --raw {path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("kubectl printed JSON")
}

/// A request with a JSON body; (status, body).
async fn call(fake: &KubeFake, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let ct = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("{}{path}", fake.url()))
        .header("content-type", ct)
        .body(common::body(
            body.map(|b| b.to_string()).unwrap_or_default(),
        ))
        .unwrap();
    let (status, _, bytes) = send(req).await;
    (
        status.as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

const SCALE: &str = "/apis/apps/v1/namespaces/default/deployments/web/scale";
const SLICES: &str =
    "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dweb";

async fn ready_count(fake: &KubeFake, n: usize) {
    eventually("the pods to be ready", Duration::from_secs(20), || async {
        (fake.ready_pods().len() == n && fake.pods().len() == n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn kubectl_reads_what_the_fake_serves() {
    let mut opts = Options::new(ebbtide_bin());
    opts.replicas = 3;
    let fake = KubeFake::start(opts).await;
    ready_count(&fake, 3).await;
    let scale = kubectl_raw(&fake, SCALE).await;
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);
    assert_eq!(scale["status"]["selector"], "app=web");
    let deploy = kubectl_raw(&fake, "/apis/apps/v1/namespaces/default/deployments/web").await;
    assert_eq!(deploy["status"]["readyReplicas"], 3);
    let pods = kubectl_raw(
        &fake,
        "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb",
    )
    .await;
    assert_eq!(pods["items"].as_array().unwrap().len(), 3);
    // Three endpoints over two slices (at most two per slice), all ready, each a pod's IP.
    let slices = kubectl_raw(&fake, SLICES).await;
    let items = slices["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{slices}");
    let mut ips: Vec<String> = items
        .iter()
        .flat_map(|s| s["endpoints"].as_array().unwrap().clone())
        .map(|e| {
            assert_eq!(e["conditions"]["ready"], true);
            assert_eq!(e["conditions"]["terminating"], false);
            e["addresses"][0].as_str().unwrap().to_string()
        })
        .collect();
    ips.sort();
    let mut want: Vec<String> = fake
        .ready_pods()
        .values()
        .map(|a| a.rsplit_once(':').unwrap().0.to_string())
        .collect();
    want.sort();
    assert_eq!(ips, want);
    let hpas = kubectl_raw(
        &fake,
        "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers",
    )
    .await;
    assert_eq!(hpas["items"], json!([]));
    // Each pod answers on its address, as a pod IP would.
    for addr in fake.ready_pods().values() {
        let (s, _, _) = get(&format!("http://{addr}/healthz")).await;
        assert_eq!(s, 200);
    }
}

#[tokio::test]
async fn a_stale_resource_version_gets_409_and_the_replicaset_follows_replicas() {
    let mut opts = Options::new(ebbtide_bin());
    opts.replicas = 1;
    let fake = KubeFake::start(opts).await;
    let (s, scale) = call(&fake, "GET", SCALE, None).await;
    assert_eq!(s, 200);
    let rv = scale["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let put = |replicas: u32, rv: &str| {
        json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
               "metadata": {"name": "web", "namespace": "default", "resourceVersion": rv},
               "spec": {"replicas": replicas}})
    };
    let (s, _) = call(&fake, "PUT", SCALE, Some(put(2, &rv))).await;
    assert_eq!(s, 200);
    let (s, body) = call(&fake, "PUT", SCALE, Some(put(3, &rv))).await;
    assert_eq!(s, 409, "{body}");
    assert_eq!(body["reason"], "Conflict");
    assert_eq!(fake.replicas(), 2);
    ready_count(&fake, 2).await;
    // A Lease: create, conflict on a stale update.
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}});
    let leases = "/apis/coordination.k8s.io/v1/namespaces/default/leases";
    let (s, created) = call(&fake, "POST", leases, Some(lease.clone())).await;
    assert_eq!(s, 201);
    let (s, _) = call(&fake, "POST", leases, Some(lease)).await;
    assert_eq!(s, 409);
    let mut upd = created.clone();
    upd["spec"]["holderIdentity"] = json!("b");
    let (s, _) = call(&fake, "PUT", &format!("{leases}/l"), Some(upd.clone())).await;
    assert_eq!(s, 200);
    let (s, _) = call(&fake, "PUT", &format!("{leases}/l"), Some(upd)).await;
    assert_eq!(s, 409);
    // KEDA is not installed: its list is 404, as on a cluster without the CRD.
    let (s, _) = call(
        &fake,
        "GET",
        "/apis/keda.sh/v1alpha1/namespaces/default/scaledobjects",
        None,
    )
    .await;
    assert_eq!(s, 404);
}

/// Reads one JSON line of a watch stream, within 10 s.
async fn next_event<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Value {
    let mut line = String::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
            .await
            .expect("a watch event within 10 s")
            .unwrap();
        assert!(n > 0, "the watch stream ended");
        let t = line.trim();
        // Chunk sizes of the chunked encoding are lines too: skip those.
        if t.starts_with('{') {
            return serde_json::from_str(t).unwrap();
        }
    }
}

async fn open_watch(fake: &KubeFake, rv: &str) -> (BufReader<tokio::net::TcpStream>, String) {
    let mut c = tokio::net::TcpStream::connect(fake.addr).await.unwrap();
    let path = format!("{SLICES}&watch=true&allowWatchBookmarks=true&resourceVersion={rv}");
    c.write_all(format!("GET {path} HTTP/1.1\r\nHost: fake\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut r = BufReader::new(c);
    let mut head = String::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).await.unwrap();
        if l == "\r\n" {
            break;
        }
        head.push_str(&l);
    }
    (r, head)
}

#[tokio::test]
async fn the_watch_streams_changes_bookmarks_and_410_for_a_compacted_version() {
    let mut opts = Options::new(ebbtide_bin());
    opts.replicas = 1;
    opts.bookmark_every = Duration::from_millis(200);
    let fake = KubeFake::start(opts).await;
    ready_count(&fake, 1).await;
    let (_, list) = call(&fake, "GET", SLICES, None).await;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut w, head) = open_watch(&fake, &rv).await;
    assert!(
        head.to_lowercase().contains("transfer-encoding: chunked"),
        "{head}"
    );
    fake.set_replicas(2, "test");
    // A new endpoint appears (first not ready, then ready); bookmarks come between.
    let mut saw_ready = 0;
    let mut bookmarks = 0;
    while saw_ready < 2 || bookmarks == 0 {
        let e = next_event(&mut w).await;
        match e["type"].as_str().unwrap() {
            "BOOKMARK" => bookmarks += 1,
            "ADDED" | "MODIFIED" => {
                saw_ready = e["object"]["endpoints"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| e["conditions"]["ready"] == true)
                    .count()
            }
            other => panic!("unexpected {other}: {e}"),
        }
    }
    // A dropped stream ends; a compacted history answers 410 Expired to the old version.
    fake.drop_watches();
    let mut rest = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            rest.clear();
            if w.read_line(&mut rest).await.unwrap() == 0 || rest == "0\r\n" {
                return;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the dropped stream did not end");
    fake.compact();
    let (mut w, _) = open_watch(&fake, &rv).await;
    let e = next_event(&mut w).await;
    assert_eq!(e["type"], "ERROR", "{e}");
    assert_eq!(e["object"]["code"], 410);
    assert_eq!(e["object"]["reason"], "Expired");
}

#[tokio::test]
async fn scale_down_takes_the_cheapest_pod_once_the_controller_sees_the_mark() {
    let mut opts = Options::new(ebbtide_bin());
    opts.replicas = 3;
    opts.annotation_lag = Duration::from_millis(400);
    let fake = KubeFake::start(opts).await;
    ready_count(&fake, 3).await;
    let pods: Vec<String> = fake.ready_pods().keys().cloned().collect();
    // Without a mark, the newest goes (all ready, equal cost and ready time order aside).
    // Mark the oldest-ready pod... any pod: the first by name.
    let chosen = pods[0].clone();
    let patch = json!({"metadata": {"annotations": {DELETION_COST: "-100"}}});
    let (s, body) = call(
        &fake,
        "PATCH",
        &format!("/api/v1/namespaces/default/pods/{chosen}"),
        Some(patch),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(body["metadata"]["annotations"][DELETION_COST], "-100");
    // The cache (resourceVersion=0) shows it only after the lag.
    let cached = format!("/api/v1/namespaces/default/pods/{chosen}?resourceVersion=0");
    let (_, c) = call(&fake, "GET", &cached, None).await;
    assert!(
        c["metadata"]["annotations"].get(DELETION_COST).is_none(),
        "{c}"
    );
    eventually("the mark in the cache", Duration::from_secs(5), || async {
        let (_, c) = call(&fake, "GET", &cached, None).await;
        (c["metadata"]["annotations"][DELETION_COST] == "-100").then_some(())
    })
    .await;
    fake.set_replicas(2, "test");
    eventually("a pod deleted", Duration::from_secs(5), || async {
        (!fake.deleted().is_empty()).then_some(())
    })
    .await;
    assert_eq!(fake.deleted(), vec![chosen.clone()]);
    // Its endpoint turns terminating, then goes with the pod.
    eventually("the pod gone", Duration::from_secs(15), || async {
        (!fake.pods().contains_key(&chosen)).then_some(())
    })
    .await;
    assert_eq!(fake.pods().len(), 2);
}

#[tokio::test]
async fn a_not_ready_pod_goes_first_whatever_the_cost() {
    let mut opts = Options::new(ebbtide_bin());
    opts.replicas = 2;
    opts.annotation_lag = Duration::ZERO;
    let fake = KubeFake::start(opts).await;
    ready_count(&fake, 2).await;
    let pods: Vec<String> = fake.ready_pods().keys().cloned().collect();
    for p in &pods {
        let patch = json!({"metadata": {"annotations": {DELETION_COST: if *p == pods[0] { "-5" } else { "1000" }}}});
        call(
            &fake,
            "PATCH",
            &format!("/api/v1/namespaces/default/pods/{p}"),
            Some(patch),
        )
        .await;
    }
    // The expensive pod crashes: until its restart is ready, it is not ready, and goes first.
    fake.crash(&pods[1]);
    eventually(
        "the crashed pod not ready",
        Duration::from_secs(5),
        || async { (!fake.ready_pods().contains_key(&pods[1])).then_some(()) },
    )
    .await;
    fake.set_replicas(1, "test");
    eventually("a pod deleted", Duration::from_secs(5), || async {
        (!fake.deleted().is_empty()).then_some(())
    })
    .await;
    assert_eq!(fake.deleted(), vec![pods[1].clone()]);
}
