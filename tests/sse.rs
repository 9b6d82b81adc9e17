//! The dashboard's Server-Sent Events (`GET /api/v1/stream`) from the real binary: snapshots
//! on change, keep-alive comments while idle, no stream left behind by a client that went away,
//! the token (header, or `?token=` on the stream URL only), and the same stream from
//! `ebbtide autoscale` for the balancers it manages, and no stream holding up a shutdown.

mod common;

use common::*;
use ebbtide_balancer::api::Snapshot;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// One stream's body, read as text.
struct Stream {
    body: Incoming,
    buf: String,
}

impl Stream {
    async fn open(url: &str) -> Stream {
        let resp = client()
            .request(http::Request::get(url).body(empty()).unwrap())
            .await
            .expect("the stream request failed");
        assert_eq!(resp.status(), StatusCode::OK, "{url}");
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Stream {
            body: resp.into_body(),
            buf: String::new(),
        }
    }

    /// The next complete message (up to its blank line), or None after `limit`.
    async fn next(&mut self, limit: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let msg = self.buf[..i].to_string();
                self.buf.drain(..i + 2);
                return Some(msg);
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .ok()?
                .expect("the stream ended")
                .expect("the stream failed");
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }
}

/// The snapshot in a message, if it is one.
fn snapshot(msg: &str) -> Option<Snapshot> {
    let mut lines = msg.lines();
    (lines.next()? == "event: snapshot").then_some(())?;
    let data = lines.next()?.strip_prefix("data: ")?;
    Some(serde_json::from_str(data).expect("a snapshot that is not api::Snapshot"))
}

async fn streams_open(admin: SocketAddr) -> u64 {
    let (_, _, body) = get(&format!("http://{admin}/metrics")).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("ebbtide_admin_streams "))
        .expect("no ebbtide_admin_streams in /metrics")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn an_idle_stream_keeps_alive_pushes_changes_and_leaves_nothing_when_dropped() {
    let backend = sim_backend(&["--service-time", "const:1ms", "--workers", "4"]).await;
    let lb = start_ebbtide(&base_config(&backends_toml(&[backend.addr], Some(4))));
    eventually(
        "the backend to be listed",
        Duration::from_secs(10),
        || async { (admin_backends(lb.admin).await.len() == 1).then_some(()) },
    )
    .await;

    let mut stream = Stream::open(&format!(
        "http://{}/api/v1/stream?keepalive_ms=300",
        lb.admin
    ))
    .await;
    let first = stream
        .next(Duration::from_secs(2))
        .await
        .expect("no first event");
    let first = snapshot(&first).unwrap_or_else(|| panic!("first message {first:?}"));
    assert_eq!(first.backends.len(), 1);
    assert_eq!(first.backends[0].address, backend.addr.to_string());
    assert!(first.signals.is_some());
    // The first push carries the last minutes (one point a second since the start).
    assert!(!first.history.is_empty(), "no history in the first push");
    assert_eq!(streams_open(lb.admin).await, 1);

    // Idle: nothing happens, so only comments come, and the stream stays open.
    let (mut keepalives, mut snapshots) = (0, 0);
    let idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(3) {
        let msg = stream
            .next(Duration::from_secs(2))
            .await
            .expect("an idle stream fell silent: no keep-alive within 2 s");
        if msg == ": keep-alive" {
            keepalives += 1;
        } else {
            snapshots += 1;
        }
    }
    assert!(keepalives >= 5, "{keepalives} keep-alives in 3 s at 300 ms");
    assert!(snapshots <= 1, "{snapshots} snapshots while idle");

    // A change is pushed within a second.
    let (status, _, _) = get(&format!("http://{}/", lb.addr)).await;
    assert_eq!(status, StatusCode::OK);
    let changed = Instant::now();
    loop {
        let msg = stream.next(Duration::from_secs(2)).await.expect("no push");
        if let Some(s) = snapshot(&msg) {
            assert!(s.history.is_empty(), "history again after the first push");
            if s.signals.unwrap().completions_total >= 1 {
                break;
            }
        }
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "no push within 1 s of a request"
        );
    }

    // The client goes away: the stream (its body) is gone with it.
    drop(stream);
    eventually("the stream to be gone", Duration::from_secs(5), || async {
        (streams_open(lb.admin).await == 0).then_some(())
    })
    .await;

    // Many clients that open and leave leave none behind.
    for _ in 0..20 {
        let mut s = Stream::open(&format!("http://{}/api/v1/stream", lb.admin)).await;
        s.next(Duration::from_secs(2))
            .await
            .expect("no first event");
    }
    eventually(
        "every stream to be gone",
        Duration::from_secs(5),
        || async { (streams_open(lb.admin).await == 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn the_stream_takes_the_token_in_its_url_and_nothing_else_does() {
    let backend = sim_backend(&["--service-time", "const:1ms"]).await;
    let lb = start_ebbtide(&base_config(&format!(
        "token = \"s3cret/+=\"\n{}",
        backends_toml(&[backend.addr], None)
    )));
    let a = lb.admin;
    let status = |url: String| async move { get(&url).await.0 };
    assert_eq!(
        status(format!("http://{a}/api/v1/stream")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(format!("http://{a}/api/v1/stream?token=s3cret")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(format!("http://{a}/api/v1/backends?token=s3cret%2F%2B%3D")).await,
        StatusCode::UNAUTHORIZED,
        "?token= is for the stream only"
    );
    let mut s = Stream::open(&format!("http://{a}/api/v1/stream?token=s3cret%2F%2B%3D")).await;
    assert!(snapshot(&s.next(Duration::from_secs(2)).await.unwrap()).is_some());
    drop(s);

    // The page itself holds no data: it is served, and told to ask for the token.
    let (st, headers, body) = get(&format!("http://{a}/")).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let page = String::from_utf8(body.to_vec()).unwrap();
    assert!(page.contains("<body data-auth=\"required\">"));
    assert!(
        page.len() < 40 * 1024,
        "the page weighs {} bytes",
        page.len()
    );
}

#[tokio::test]
async fn ebbtide_autoscale_streams_its_balancers_fleet() {
    let lb = start_ebbtide(&base_config(
        "[health]\npath = \"/healthz\"\ninterval = \"500ms\"",
    ));
    let mut autoscale = start_autoscale(&format!(
        r#"[admin]
address = "127.0.0.1:0"
[provider]
kind = "local"
command = ["ebbtide", "backend", "--listen", "127.0.0.1:{{port}}", "--service-time", "exp:5ms", "--workers", "4"]
cost_per_hour = 0.5
[autoscaler]
balancers = ["http://{admin}"]
min = 2
"#,
        admin = lb.admin
    ));
    let admin = autoscale.admin;

    let (st, _, _) = get(&format!("http://{admin}/")).await;
    assert_eq!(st, StatusCode::OK);
    let mut stream = Stream::open(&format!("http://{admin}/api/v1/stream")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let last = loop {
        let msg = stream.next(Duration::from_secs(20)).await.expect("no push");
        if let Some(s) = snapshot(&msg) {
            let active = s.signals.as_ref().map_or(0, |g| g.backends.active);
            if active == 2 && s.backends.len() == 2 {
                break s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the autoscaler's stream never showed 2 active backends"
        );
    };
    let summary = last.autoscaler.expect("no autoscaler summary");
    assert_eq!(summary.desired, 2);
    assert_eq!(
        summary.decider.as_deref(),
        Some("backlog"),
        "the default decider"
    );
    assert!((summary.cost_per_hour - 1.0).abs() < 1e-9, "{summary:?}");
    drop(stream);
    sigterm(autoscale.child.id());
    assert!(autoscale.child.wait().unwrap().success());
}

#[tokio::test]
async fn an_open_stream_does_not_hold_up_shutdown() {
    let backend = sim_backend(&["--service-time", "const:1ms"]).await;
    let mut lb = start_ebbtide(&base_config(&backends_toml(&[backend.addr], None)));
    let mut stream = Stream::open(&format!("http://{}/api/v1/stream", lb.admin)).await;
    assert!(snapshot(&stream.next(Duration::from_secs(2)).await.unwrap()).is_some());
    let start = Instant::now();
    sigterm(lb.child.id());
    // The stream ends (a clean end of body, not a cut connection) ...
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.body.frame().await {
                None => return Ok(()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the stream was still open 5 s after SIGTERM");
    assert_eq!(end, Ok(()));
    // ... and ebbtide exits long before its 30 s drain timeout.
    let exit = lb.child.wait().unwrap();
    assert!(exit.success(), "{exit}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "shutdown took {:?} with a stream open",
        start.elapsed()
    );
}
