//! End-to-end tests of `ebbtide serve` as a process: the embedded default, graceful shutdown,
//! and config reload on SIGHUP.

mod common;

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// Whether anything accepts connections at `addr`.
fn listening(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(200)).is_ok()
}

#[tokio::test]
async fn the_embedded_default_answers_on_8080_and_stops_its_backends() {
    assert!(
        !listening("127.0.0.1:8080") && !listening("127.0.0.1:9901"),
        "127.0.0.1:8080 or :9901 is already in use; this test runs the embedded default there"
    );
    let mut child = Command::new(ebbtide_bin())
        .env("EBBTIDE_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let lb: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let admin: SocketAddr = "127.0.0.1:9901".parse().unwrap();
    let status = eventually(
        "the default to answer 200",
        Duration::from_secs(30),
        || async {
            let resp = client()
                .request(http::Request::get(url(lb, "/")).body(empty()).unwrap())
                .await
                .ok()?;
            (resp.status() == StatusCode::OK).then_some(resp.status())
        },
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let list = admin_backends(admin).await;
    let addrs: Vec<String> = list.iter().map(|b| b.address.clone()).collect();
    assert_eq!(addrs.len(), 2, "{list:?}");
    assert!(addrs.iter().all(|a| listening(a)));

    sigterm(child.id());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "exit status {exit}");
    for a in &addrs {
        assert!(
            !listening(a),
            "backend {a} still runs after ebbtide stopped"
        );
    }
    assert!(!listening("127.0.0.1:8080"));
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_exits_0() {
    let b = test_backend("slow").await;
    let mut lb = start_ebbtide(&base_config(&backends_toml(&[b.addr], None)));
    let addr = lb.addr;
    let slow = tokio::spawn(async move { get(&url(addr, "/sleep?ms=1000")).await });
    eventually(
        "the slow request to reach the backend",
        Duration::from_secs(5),
        || async { (b.stats.in_flight.load(Ordering::SeqCst) == 1).then_some(()) },
    )
    .await;
    sigterm(lb.child.id());
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "slow");
    let exit = lb.child.wait().unwrap();
    assert!(exit.success(), "exit status {exit}");
    assert!(!listening(&addr.to_string()), "stopped accepting");
}

#[tokio::test]
async fn sighup_swaps_the_policy_without_dropping_connections() {
    let bs = [test_backend("a").await, test_backend("b").await];
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let before = base_config(&format!(
        "[balancer]\npolicy = \"round_robin\"\n{}",
        backends_toml(&addrs, None)
    ));
    let lb = start_ebbtide(&before);

    // One keep-alive connection, held across the reload.
    let stream = tokio::net::TcpStream::connect(lb.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut ask = || {
        let req = http::Request::get("/echo")
            .header("host", lb.addr.to_string())
            .header("x-user", "alice")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        sender.send_request(req)
    };
    let resp = ask().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();

    let policy = |admin| async move { admin_signals(admin).await.policy };
    assert_eq!(policy(lb.admin).await, "round_robin");
    let after = before.replace(
        "\"round_robin\"",
        "\"consistent_hash\"\nhash_key = \"header:x-user\"",
    );
    std::fs::write(lb.config.path(), after).unwrap();
    sighup(lb.child.id());
    eventually("the new policy", Duration::from_secs(5), || async {
        (policy(lb.admin).await == "consistent_hash").then_some(())
    })
    .await;

    // The same connection still works, and alice now always lands on one backend.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..10 {
        let resp = ask().await.expect("the connection survived the reload");
        assert_eq!(resp.status(), StatusCode::OK);
        seen.insert(resp.headers()["x-backend-id"].to_str().unwrap().to_string());
        resp.into_body().collect().await.unwrap();
    }
    assert_eq!(seen.len(), 1, "consistent_hash sent one key to {seen:?}");

    // A broken config is refused and the running one kept.
    std::fs::write(lb.config.path(), "[balancer]\npolicy = \"bogus\"\n").unwrap();
    sighup(lb.child.id());
    eventually(
        "the refused reload to be counted",
        Duration::from_secs(5),
        || async {
            let (_, _, m) = get(&url(lb.admin, "/metrics")).await;
            String::from_utf8_lossy(&m)
                .contains("ebbtide_config_reloads_total{result=\"error\"} 1")
                .then_some(())
        },
    )
    .await;
    assert_eq!(policy(lb.admin).await, "consistent_hash");
    assert_eq!(get(&url(lb.addr, "/")).await.0, StatusCode::OK);
}

/// (state, failures) of the backend at `address`, from the admin API.
async fn backend_info(admin: SocketAddr, address: &str) -> (String, u64) {
    let (_, _, body) = get(&url(admin, "/api/v1/backends")).await;
    let list: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
    let b = list
        .iter()
        .find(|b| b["address"] == address)
        .unwrap_or_else(|| panic!("no backend {address} in {list:?}"));
    (
        b["state"].as_str().unwrap().to_string(),
        b["failures"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn sighup_applies_a_new_health_check_path() {
    let b = test_backend("a").await;
    let address = b.addr.to_string();
    // `/unavailable` answers 503: the backend never passes a probe and stays starting.
    let before = base_config(&format!(
        "[health]\npath = \"/unavailable\"\ninterval = \"50ms\"\n{}",
        backends_toml(&[b.addr], None)
    ));
    let lb = start_ebbtide(&before);
    wait_for_sighup_handler(lb.child.id()).await;
    eventually("three failed probes", Duration::from_secs(10), || async {
        (b.stats.requests.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    assert_eq!(backend_info(lb.admin, &address).await.0, "starting");

    std::fs::write(
        lb.config.path(),
        before.replace("\"/unavailable\"", "\"/echo\""),
    )
    .unwrap();
    sighup(lb.child.id());
    eventually(
        "the backend to pass the new probe and become active",
        Duration::from_secs(10),
        || async { (backend_info(lb.admin, &address).await.0 == "active").then_some(()) },
    )
    .await;
    assert_eq!(get(&url(lb.addr, "/")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn sighup_applies_new_outlier_thresholds_to_running_backends() {
    let good = test_backend("good").await;
    // Nothing listens here: every try to it is a connection failure.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead_address = dead.to_string();
    let before = base_config(&format!(
        "[balancer]\npolicy = \"round_robin\"\n[outlier]\nconsecutive_failures = 0\n{}",
        backends_toml(&[good.addr, dead], None)
    ));
    let lb = start_ebbtide(&before);
    wait_for_sighup_handler(lb.child.id()).await;
    // Detection off: failures are counted, the dead backend stays in rotation.
    // (Answers are not checked: the retry budget may refuse some of the retries.)
    let failures = eventually(
        "failed tries to pile up",
        Duration::from_secs(10),
        || async {
            get(&url(lb.addr, "/")).await;
            let (state, failures) = backend_info(lb.admin, &dead_address).await;
            assert_eq!(state, "active", "ejected with detection off");
            (failures >= 4).then_some(failures)
        },
    )
    .await;

    std::fs::write(
        lb.config.path(),
        before.replace("consecutive_failures = 0", "consecutive_failures = 2"),
    )
    .unwrap();
    sighup(lb.child.id());
    eventually(
        "the dead backend to be ejected under the reloaded threshold",
        Duration::from_secs(10),
        || async {
            get(&url(lb.addr, "/")).await;
            (backend_info(lb.admin, &dead_address).await.0 == "ejected").then_some(())
        },
    )
    .await;
    assert!(backend_info(lb.admin, &dead_address).await.1 > failures);
}

#[tokio::test]
async fn sighup_warns_about_each_setting_that_needs_a_restart() {
    let before = base_config("[signals]\nwindow = \"10s\"\n[outlier]\nbase_ejection = \"5s\"\n");
    let file = common::tempfile_path::TempPath::with_contents("toml", &before);
    let mut child = Command::new(ebbtide_bin())
        .args(["serve", "--config"])
        .arg(file.path())
        .env("EBBTIDE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(parse_listening(&line).is_some(), "{line:?}");
    let logged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().unwrap();
    let sink = logged.clone();
    std::thread::spawn(move || {
        for l in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(l) = l else { return };
            eprintln!("ebbtide: {l}");
            sink.lock().unwrap().push(l);
        }
    });
    wait_for_sighup_handler(child.id()).await;

    let after = before
        .replace("\"10s\"", "\"3s\"")
        .replace("\"5s\"", "\"2s\"");
    std::fs::write(file.path(), after).unwrap();
    sighup(child.id());
    let lines = eventually("the restart warning", Duration::from_secs(10), || async {
        let lines = logged.lock().unwrap().clone();
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("[signals] changed"))
            .then_some(lines)
    })
    .await;
    assert!(
        lines
            .iter()
            .any(|l| l.contains("takes effect only after a restart")),
        "{lines:?}"
    );
    // [outlier] applied live: no warning names it.
    assert!(!lines.iter().any(|l| l.contains("[outlier]")), "{lines:?}");
    let _ = child.kill();
    let _ = child.wait();
}
