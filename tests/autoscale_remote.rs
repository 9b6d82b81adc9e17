//! End-to-end tests of `ebbtide autoscale`, the autoscaler in its own process beside a balancer
//! (`ebbtide serve` with no provider): signals read through the balancer's admin API, backends
//! started by the command provider's scripts (or the local provider) and registered with leases,
//! drained before they are stopped. Real processes and sockets on 127.0.0.1.

mod common;

use common::*;
use ebbtide_balancer::api::BackendState;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The load test here works the 2-core machine hard; the tests take turns.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The balancer: no provider of its own, health checks on, both listeners on free ports.
fn start_balancer() -> Ebbtide {
    start_ebbtide(&base_config(
        "[health]\npath = \"/healthz\"\ninterval = \"500ms\"\n[lifecycle]\ndrain_timeout = \"5s\"",
    ))
}

/// The balancer's backends as (address, state).
async fn listed(admin: SocketAddr) -> Vec<(String, BackendState)> {
    admin_backends(admin)
        .await
        .into_iter()
        .map(|b| (b.address, b.state))
        .collect()
}

async fn active(admin: SocketAddr) -> usize {
    listed(admin)
        .await
        .iter()
        .filter(|(_, s)| *s == BackendState::Active)
        .count()
}

/// Waits (up to 30 s) until the balancer has the minimum fleet of 2 active backends.
async fn min_fleet_at(admin: SocketAddr) {
    eventually(
        "the minimum fleet at the balancer",
        Duration::from_secs(30),
        || async { (active(admin).await == 2).then_some(()) },
    )
    .await;
}

/// Launch and terminate scripts for the command provider: each launch starts an
/// `ebbtide backend` on a free port in the background, notes its pid in `pids`, and prints the
/// JSON; terminate sends SIGTERM to the pid in the id.
fn scripts(dir: &Path) -> (String, String, std::path::PathBuf) {
    let pids = dir.join("pids");
    let launch = dir.join("launch.sh");
    let terminate = dir.join("terminate.sh");
    std::fs::write(
        &launch,
        format!(
            r#"set -e
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"{bin}" backend --listen "127.0.0.1:$port" --service-time exp:20ms --workers 4 --boot container </dev/null >/dev/null 2>&1 &
echo $! >> "{pids}"
echo "launching backend $EBBTIDE_LAUNCH_SEQ" >&2
echo "{{\"id\": \"pid-$!\", \"address\": \"127.0.0.1:$port\"}}"
"#,
            bin = ebbtide_bin(),
            pids = pids.display()
        ),
    )
    .unwrap();
    std::fs::write(&terminate, "kill -TERM \"${1#pid-}\"\n").unwrap();
    (
        launch.display().to_string(),
        terminate.display().to_string(),
        pids,
    )
}

fn pids_in(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

#[tokio::test]
async fn scales_a_remote_balancer_with_scripted_backends_and_cleans_up() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let lb = start_balancer();
    let dir = std::env::temp_dir().join(format!("ebbtide-remote-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (launch, terminate, pids) = scripts(&dir);
    let mut autoscale = start_autoscale(&format!(
        r#"[admin]
address = "127.0.0.1:0"
[lifecycle]
drain_timeout = "5s"
[provider]
kind = "command"
launch = ["sh", "{launch}"]
terminate = ["sh", "{terminate}", "{{id}}"]
capacity = 4
boot_timeout = "20s"
[autoscaler]
balancers = ["http://{admin}"]
min = 2
max = 6
target = 4
stable_window = "10s"
panic_window = "3s"
metric_window = "3s"
registration_lease = "5s"
[autoscaler.cost]
billing_period = "0s"
"#,
        admin = lb.admin
    ));

    min_fleet_at(lb.admin).await;
    let (status, _, _) = get(&format!("http://{}/", lb.addr)).await;
    assert_eq!(
        status, 200,
        "the balancer serves through the scripted backends"
    );

    // Two backends serve 2 x 4 workers / 20 ms = 400 req/s; offer twice that for 12 s.
    let (addr, admin) = (lb.addr, lb.admin);
    let load = tokio::task::spawn_blocking(move || {
        let out = tempfile_path::TempPath::with_contents("json", "");
        let status = Command::new(ebbtide_bin())
            .args(["load", "--target", &format!("http://{addr}/")])
            .args(["--rate", "800", "--duration", "12s", "--quiet", "--json"])
            .arg(out.path())
            .status()
            .unwrap();
        assert!(status.success());
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(out.path()).unwrap())
            .unwrap()
    });
    let peak = eventually(
        "scale-out seen at the balancer",
        Duration::from_secs(20),
        || async {
            let n = active(admin).await;
            (n >= 4).then_some(n)
        },
    )
    .await;
    let report = load.await.unwrap();
    let ok = report["ok"].as_u64().unwrap();
    println!(
        "remote scale-out: {peak} active backends during the load; load report: sent {} ok {ok}",
        report["sent"]
    );
    // The first registration carried the launch decision's age: the balancer measured each
    // backend's cold start, decision to first request served, on its own clock.
    let cold = cold_start_metric(lb.admin, "command").await;
    println!(
        "remote cold starts: {} (sum {:.2} s), buckets {:?}",
        cold.count, cold.sum_seconds, cold.buckets
    );
    assert!(cold.count >= 4, "{cold:?}");
    assert!(cold.sum_seconds > 0.0, "{cold:?}");

    // The autoscaler's own admin API shows the decisions and the metrics.
    let (_, _, events) = get(&format!("http://{}/api/v1/events", autoscale.admin)).await;
    let events: Vec<serde_json::Value> = serde_json::from_slice(&events).unwrap();
    let up = events
        .iter()
        .find(|e| e["direction"] == "up")
        .unwrap_or_else(|| panic!("no scale-up event in {events:?}"));
    assert!(
        up["decision"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{up}"
    );
    let (_, _, metrics) = get(&format!("http://{}/metrics", autoscale.admin)).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("ebbtide_autoscaler_decisions_total{direction=\"up\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ebbtide_autoscaler_cost_total"),
        "{metrics}"
    );

    // SIGTERM: every backend drained from the balancer, stopped by the terminate script, and
    // the autoscaler exits 0.
    let launched = pids_in(&pids);
    assert!(launched.len() >= 4, "launched {launched:?}");
    sigterm(autoscale.child.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = autoscale.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ebbtide autoscale did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
    assert!(
        listed(lb.admin).await.is_empty(),
        "{:?}",
        listed(lb.admin).await
    );
    eventually(
        "every scripted backend to stop",
        Duration::from_secs(10),
        || async { launched.iter().all(|&p| !alive(p)).then_some(()) },
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_killed_autoscaler_leaves_no_backend_behind() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let lb = start_balancer();
    let mut autoscale = start_autoscale(&format!(
        r#"[admin]
address = "127.0.0.1:0"
[provider]
kind = "local"
command = ["ebbtide", "backend", "--listen", "127.0.0.1:{{port}}", "--service-time", "exp:20ms", "--workers", "4", "--boot", "container"]
[autoscaler]
balancers = ["http://{admin}"]
min = 2
registration_lease = "3s"
"#,
        admin = lb.admin
    ));
    min_fleet_at(lb.admin).await;
    let kids = children_of(autoscale.child.id());
    assert_eq!(kids.len(), 2, "{kids:?}");

    // SIGKILL: no chance to drain. The children get SIGTERM from the kernel (PR_SET_PDEATHSIG)
    // and the balancer drops the registrations when their 3 s lease runs out.
    autoscale.child.kill().unwrap();
    autoscale.child.wait().unwrap();
    eventually("the children to exit", Duration::from_secs(10), || async {
        kids.iter().all(|&k| !alive(k)).then_some(())
    })
    .await;
    eventually("the leases to expire", Duration::from_secs(10), || async {
        listed(lb.admin).await.is_empty().then_some(())
    })
    .await;
}

#[test]
fn autoscale_without_balancers_names_the_key() {
    let file = tempfile_path::TempPath::with_contents(
        "toml",
        "[provider]\ncount = 1\n\n[autoscaler]\nmin = 1\n",
    );
    let out = Command::new(ebbtide_bin())
        .args(["autoscale", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "{}:4:1: autoscaler.balancers: is empty",
        file.path().display()
    );
    assert!(err.starts_with(&expected), "{err}");
}
