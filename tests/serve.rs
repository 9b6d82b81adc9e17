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
