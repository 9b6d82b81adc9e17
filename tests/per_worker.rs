//! End-to-end tests of `[runtime] accept = "per_worker"`: a listener per worker thread on one
//! address (`SO_REUSEPORT`), each connection served by the worker that accepted it.

mod common;

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Requests without a body.
type Empty = http_body_util::Empty<bytes::Bytes>;

const TWO_WORKERS: &str = "[runtime]\nworker_threads = 2\naccept = \"per_worker\"\n";

/// A connection of its own (not a pooled client's), so that each is accepted anew.
async fn connect(addr: SocketAddr) -> Option<SendRequest<Empty>> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// GET `path` on `sender`'s connection: the status, or `None` when the connection failed.
async fn ask(sender: &mut SendRequest<Empty>, addr: SocketAddr, path: &str) -> Option<u16> {
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

/// `ebbtide_client_connections_accepted_total` by worker label.
async fn accepted(admin: SocketAddr) -> Vec<(String, u64)> {
    let (_, _, m) = get(&url(admin, "/metrics")).await;
    String::from_utf8_lossy(&m)
        .lines()
        .filter_map(|l| l.strip_prefix("ebbtide_client_connections_accepted_total{worker=\""))
        .map(|l| {
            let (worker, rest) = l.split_once("\"} ").unwrap();
            (worker.to_string(), rest.parse().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn many_connections_are_all_served_and_spread_over_both_workers() {
    let b = test_backend("a").await;
    let lb = start_ebbtide(&base_config(&format!(
        "{TWO_WORKERS}{}",
        backends_toml(&[b.addr], None)
    )));
    let mut conns = Vec::new();
    for _ in 0..64 {
        conns.push(connect(lb.addr).await.expect("connected"));
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let addr = lb.addr;
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for _ in 0..3 {
                    statuses.push(ask(&mut c, addr, "/echo").await);
                }
                statuses
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), [Some(200); 3]);
    }
    assert_eq!(b.stats.requests.load(Ordering::SeqCst), 192);
    let per_worker = accepted(lb.admin).await;
    let labels: Vec<&str> = per_worker.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(labels, ["0", "1"]);
    assert_eq!(per_worker.iter().map(|(_, n)| n).sum::<u64>(), 64);
    // The kernel hashes each connection's addresses: all 64 on one listener has odds 2^-63.
    assert!(per_worker.iter().all(|(_, n)| *n > 0), "{per_worker:?}");
}

#[tokio::test]
async fn the_shared_listener_is_counted_as_one() {
    let b = test_backend("a").await;
    let lb = start_ebbtide(&base_config(&backends_toml(&[b.addr], None)));
    assert_eq!(get(&url(lb.addr, "/")).await.0, StatusCode::OK);
    assert_eq!(accepted(lb.admin).await, [("shared".to_string(), 1)]);
}

#[tokio::test]
async fn the_connection_limit_per_client_holds_across_workers() {
    let b = test_backend("a").await;
    let lb = start_ebbtide(&format!(
        "[listener]\naddress = \"127.0.0.1:0\"\nmax_connections_per_client = 4\n\
         [admin]\naddress = \"127.0.0.1:0\"\n{TWO_WORKERS}{}",
        backends_toml(&[b.addr], None)
    ));
    // Each connection is held open (keep-alive) once it has been served.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let Some(mut c) = connect(lb.addr).await else {
            refused += 1;
            continue;
        };
        match ask(&mut c, lb.addr, "/echo").await {
            Some(200) => held.push(c),
            _ => refused += 1,
        }
    }
    // One table for both workers: a table per worker would have let up to 8 through.
    assert_eq!((held.len(), refused), (4, 6));
    let total: u64 = accepted(lb.admin).await.iter().map(|(_, n)| n).sum();
    assert_eq!(total, 4, "refused connections are not counted as accepted");
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_on_every_worker_finish() {
    let b = test_backend("slow").await;
    let mut lb = start_ebbtide(&base_config(&format!(
        "{TWO_WORKERS}{}",
        backends_toml(&[b.addr], None)
    )));
    let addr = lb.addr;
    let mut slow = Vec::new();
    for _ in 0..16 {
        let mut c = connect(addr).await.expect("connected");
        slow.push(tokio::spawn(async move {
            ask(&mut c, addr, "/sleep?ms=1000").await
        }));
    }
    eventually(
        "the slow requests to reach the backend",
        Duration::from_secs(5),
        || async { (b.stats.in_flight.load(Ordering::SeqCst) == 16).then_some(()) },
    )
    .await;
    let per_worker = accepted(lb.admin).await;
    assert!(per_worker.iter().all(|(_, n)| *n > 0), "{per_worker:?}");
    sigterm(lb.child.id());
    for s in slow {
        assert_eq!(s.await.unwrap(), Some(200));
    }
    let exit = lb.child.wait().unwrap();
    assert!(exit.success(), "exit status {exit}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "stopped accepting"
    );
}

#[tokio::test]
async fn sighup_applies_on_a_connection_a_worker_holds() {
    let bs = [test_backend("a").await, test_backend("b").await];
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let before = base_config(&format!(
        "{TWO_WORKERS}[balancer]\npolicy = \"round_robin\"\n{}",
        backends_toml(&addrs, None)
    ));
    let lb = start_ebbtide(&before);
    let mut c = connect(lb.addr).await.expect("connected");
    assert_eq!(ask(&mut c, lb.addr, "/echo").await, Some(200));
    wait_for_sighup_handler(lb.child.id()).await;
    std::fs::write(
        lb.config.path(),
        before.replace("\"round_robin\"", "\"consistent_hash\""),
    )
    .unwrap();
    sighup(lb.child.id());
    eventually("the new policy", Duration::from_secs(5), || async {
        (admin_signals(lb.admin).await.policy == "consistent_hash").then_some(())
    })
    .await;
    // Round robin alternated; one hash key (the path, by default) now always lands on one
    // backend, on the connection accepted before the reload.
    let before_counts: Vec<u64> = bs
        .iter()
        .map(|b| b.stats.requests.load(Ordering::SeqCst))
        .collect();
    for _ in 0..10 {
        assert_eq!(ask(&mut c, lb.addr, "/echo").await, Some(200));
    }
    let grew = bs
        .iter()
        .zip(&before_counts)
        .filter(|(b, n)| b.stats.requests.load(Ordering::SeqCst) > **n)
        .count();
    assert_eq!(grew, 1);
}

#[tokio::test]
async fn an_address_in_use_is_refused_naming_the_key() {
    let lb = start_ebbtide(&base_config(TWO_WORKERS));
    for runtime in [TWO_WORKERS, ""] {
        let config = format!(
            "[listener]\naddress = \"{}\"\n[admin]\naddress = \"127.0.0.1:0\"\n{runtime}",
            lb.addr
        );
        let file = common::tempfile_path::TempPath::with_contents("toml", &config);
        let out = Command::new(ebbtide_bin())
            .args(["serve", "--config"])
            .arg(file.path())
            .env("EBBTIDE_LOG", "warn")
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        let expected = format!(
            "cannot listen for clients on {} ([listener] address)",
            lb.addr
        );
        assert!(err.contains(&expected), "{err}");
        assert!(err.to_lowercase().contains("in use"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_the_first_request_deadline_hold_on_every_worker() {
    use tokio::io::AsyncReadExt;
    let pki = common::pki::Pki::new("per-worker");
    let (cert, key) = pki.issue("site", "site", &["site.test"]);
    let b = test_backend("a").await;
    let lb = start_ebbtide(&format!(
        "[listener]\naddress = \"127.0.0.1:0\"\nheader_read_timeout = \"1s\"\n\
         [[listener.tls]]\ncert = \"{}\"\nkey = \"{}\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\n{TWO_WORKERS}{}",
        cert.display(),
        key.display(),
        backends_toml(&[b.addr], None)
    ));
    let port = lb.addr.port();
    // A new connection (and handshake) per curl run: both workers take some.
    for _ in 0..12 {
        let mut curl = Command::new("curl");
        curl.args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg("--cacert")
        .arg(pki.ca())
        .args(["--resolve", &format!("site.test:{port}:127.0.0.1")])
        .arg(format!("https://site.test:{port}/"));
        // Off the async workers: the test backend runs on them.
        let out = tokio::task::spawn_blocking(move || curl.output())
            .await
            .unwrap()
            .expect("curl runs (scripts/test.sh installs it)");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{out:?}");
    }
    let per_worker = accepted(lb.admin).await;
    assert_eq!(per_worker.iter().map(|(_, n)| n).sum::<u64>(), 12);
    // Connections that never start a handshake are closed at the deadline, whichever worker
    // took them (8 of them: both workers, but for odds of 2^-7).
    let mut silent = Vec::new();
    for _ in 0..8 {
        silent.push(tokio::net::TcpStream::connect(lb.addr).await.unwrap());
    }
    for mut s in silent {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "still open 10 s after accept: {read:?}"
        );
    }
}

/// The native HTTP/1.1 lane on a listener per worker: each worker keeps its own idle upstream
/// sockets (registered with its own runtime), and every request is answered.
#[tokio::test]
async fn the_native_lane_serves_on_every_worker() {
    let b = test_backend("a").await;
    let config = base_config(&format!("{TWO_WORKERS}{}", backends_toml(&[b.addr], None)));
    // base_config's [listener] is the first table: the lane's key goes into it.
    let config = config.replacen("[listener]\n", "[listener]\nhttp1 = \"native\"\n", 1);
    let config = if config.matches("http1 = ").count() > 1 {
        // EBBTIDE_TEST_HTTP1 set it already.
        config.replacen("http1 = \"native\"\n", "", 1)
    } else {
        config
    };
    let lb = start_ebbtide(&config);
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let mut c = connect(lb.addr).await.expect("connected");
        let addr = lb.addr;
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..3 {
                statuses.push(ask(&mut c, addr, "/echo").await);
            }
            statuses
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), [Some(200); 3]);
    }
    assert_eq!(b.stats.requests.load(Ordering::SeqCst), 96);
    let per_worker = accepted(lb.admin).await;
    assert_eq!(per_worker.iter().map(|(_, n)| n).sum::<u64>(), 32);
}
