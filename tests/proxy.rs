//! End-to-end tests of the proxy: the real `ebbtide` binary, real backends, real sockets on
//! 127.0.0.1.

mod common;

use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

#[tokio::test]
async fn strips_hop_by_hop_headers_and_sets_forwarded_headers() {
    let (_b, lb) = serve_one("b1").await;
    let req = Request::get(url(lb.addr, "/echo?q=1"))
        .header("host", "shop.example.test")
        .header("connection", "x-secret, keep-alive")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-connection", "keep-alive")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https-spoofed")
        .header("x-end-to-end", "kept")
        .body(empty())
        .unwrap();
    let (status, _, body) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let h = &v["headers"];
    for hop in [
        "x-secret",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(h.get(hop).is_none(), "{hop} reached the backend: {h}");
    }
    // hyper's client may add its own `connection: keep-alive`; never the client's tokens.
    if let Some(c) = h.get("connection") {
        assert!(!c.as_str().unwrap().contains("x-secret"), "{h}");
    }
    assert_eq!(h["host"], "shop.example.test", "Host is kept");
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.test");
    assert_eq!(h["x-end-to-end"], "kept");
    assert_eq!(v["path"], "/echo");
    assert_eq!(v["version"], "HTTP/1.1");
}

#[tokio::test]
async fn strips_hop_by_hop_headers_from_responses() {
    let (_b, lb) = serve_one("b1").await;
    let (status, headers, _) = get(&url(lb.addr, "/hop")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("x-internal").is_none(), "{headers:?}");
    assert!(headers.get("keep-alive").is_none(), "{headers:?}");
    assert_eq!(headers["x-public"], "ok");
    assert_eq!(headers["x-backend-id"], "b1");
}

#[tokio::test]
async fn http2_client_reaches_an_http1_backend() {
    let (_b, lb) = serve_one("b1").await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    for _ in 0..3 {
        let resp = client
            .request(
                Request::get(url(lb.addr, "/echo"))
                    .body(http_body_util::Empty::new())
                    .unwrap(),
            )
            .await
            .expect("h2c request");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["version"], "HTTP/1.1", "the backend speaks HTTP/1.1");
        assert_eq!(
            v["headers"]["host"],
            lb.addr.to_string(),
            "Host made from :authority"
        );
    }
}

#[tokio::test]
async fn refused_backend_gives_502() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let lb = start_ebbtide(&base_config(&backends_toml(&[dead], None)));
    let (status, headers, body) = get(&url(lb.addr, "/")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(
        String::from_utf8_lossy(&body).contains("connect"),
        "{body:?}"
    );
}

#[tokio::test]
async fn silent_backend_gives_504_after_the_configured_timeout() {
    let b = test_backend("b1").await;
    let cfg = base_config(&format!(
        "[upstream]\nresponse_timeout = \"400ms\"\n{}",
        backends_toml(&[b.addr], None)
    ));
    let lb = start_ebbtide(&cfg);
    let start = Instant::now();
    let (status, _, _) = get(&url(lb.addr, "/hang")).await;
    let waited = start.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        waited >= Duration::from_millis(400),
        "answered after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
}

#[tokio::test]
async fn streams_a_gibibyte_both_ways_with_bounded_memory() {
    const GIB: u64 = 1 << 30;
    let (b, lb) = serve_one("b1").await;

    // Download: count bytes as they arrive, never holding more than a frame.
    let resp = client()
        .request(
            Request::get(url(lb.addr, &format!("/download?bytes={GIB}")))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut got = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            got += d.len() as u64;
        }
    }
    assert_eq!(got, GIB);

    // Upload: a generated 1 GiB body, counted by the backend.
    let upload = Download {
        left: GIB,
        chunk: bytes::Bytes::from(vec![b'y'; 64 * 1024]),
    };
    let req = Request::post(url(lb.addr, "/upload"))
        .body(http_body_util::BodyExt::boxed(upload))
        .unwrap();
    let (status, _, reply) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply, GIB.to_string());
    assert_eq!(b.stats.body_bytes.load(Ordering::SeqCst), GIB);

    let peak = peak_rss_kib(lb.child.id());
    assert!(
        peak < 64 * 1024,
        "ebbtide's peak RSS was {peak} KiB while streaming 2 GiB"
    );
}

#[tokio::test]
async fn round_robin_spreads_requests_over_every_backend() {
    let bs = [
        test_backend("a").await,
        test_backend("b").await,
        test_backend("c").await,
    ];
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let cfg = base_config(&format!(
        "[balancer]\npolicy = \"round_robin\"\n{}",
        backends_toml(&addrs, None)
    ));
    let lb = start_ebbtide(&cfg);
    for _ in 0..300 {
        let (status, _, _) = get(&url(lb.addr, "/")).await;
        assert_eq!(status, StatusCode::OK);
    }
    for b in &bs {
        assert_eq!(
            b.stats.requests.load(Ordering::SeqCst),
            100,
            "backend {}",
            b.name
        );
    }
}

#[tokio::test]
async fn central_queue_never_exceeds_capacity_and_sheds_with_retry_after() {
    let bs = [test_backend("a").await, test_backend("b").await];
    let addrs: Vec<_> = bs.iter().map(|b| b.addr).collect();
    let lb = central_queue_lb(&addrs, 2, 100, "10s");
    // 10x oversubscription: 40 concurrent requests onto 4 slots.
    let tasks: Vec<_> = (0..40)
        .map(|_| tokio::spawn(get_owned(url(lb.addr, "/sleep?ms=50"))))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    for b in &bs {
        let max = b.stats.max_in_flight.load(Ordering::SeqCst);
        assert!(
            max <= 2,
            "backend {} saw {max} concurrent requests (capacity 2)",
            b.name
        );
    }
    assert_eq!(
        bs.iter()
            .map(|b| b.stats.requests.load(Ordering::SeqCst))
            .sum::<u64>(),
        40
    );
}

/// ebbtide with `central_queue` over `addrs` (each with `capacity` slots) and the given queue.
fn central_queue_lb(
    addrs: &[SocketAddr],
    capacity: u32,
    max_queue: usize,
    queue_timeout: &str,
) -> Ebbtide {
    start_ebbtide(&base_config(&format!(
        "[balancer]\npolicy = \"central_queue\"\n[overload]\nmax_queue = {max_queue}\nqueue_timeout = \"{queue_timeout}\"\n{}",
        backends_toml(addrs, Some(capacity))
    )))
}

async fn get_owned(u: String) -> StatusCode {
    get(&u).await.0
}

/// Clients that leave while queued, or just as their slot frees, must never leave a slot booked:
/// with `capacity = 1` one leaked slot stalls every later request (this stalled `wrk -c2`
/// through `central_queue` after its first run). The dispatcher's unit tests pin the exact
/// interleaving; this one hammers the real thing with clients that give up at varied moments.
#[tokio::test]
async fn clients_that_leave_while_queued_never_leak_a_slot() {
    let b = test_backend("a").await;
    let lb = central_queue_lb(&[b.addr], 1, 100, "10s");
    for round in 0..40u64 {
        let tasks: Vec<_> = (0..3u64)
            .map(|i| {
                let u = url(lb.addr, "/sleep?ms=2");
                let patience = Duration::from_micros(500 + (round * 3 + i) * 997 % 6000);
                tokio::spawn(async move { tokio::time::timeout(patience, get(&u)).await.is_ok() })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    eventually(
        "every slot to come back",
        Duration::from_secs(5),
        || async { (admin_backends(lb.admin).await[0].in_flight == 0).then_some(()) },
    )
    .await;
    let answered = tokio::time::timeout(Duration::from_secs(5), get(&url(lb.addr, "/")))
        .await
        .expect("a request after the leavers is served, not stuck behind a booked slot");
    assert_eq!(answered.0, StatusCode::OK);
}

/// The seconds a `Retry-After` header says (it must be there, as a number).
fn retry_after_s(headers: &http::HeaderMap) -> u64 {
    headers["retry-after"].to_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_full_queue_and_a_queue_timeout_both_shed_with_retry_after() {
    let b = test_backend("a").await;
    let lb = central_queue_lb(&[b.addr], 1, 1, "300ms");
    let addr = lb.addr;
    // Occupy the only slot.
    let _busy = tokio::spawn(get_owned(url(addr, "/sleep?ms=3000")));
    eventually("the slot to be taken", Duration::from_secs(5), || async {
        (b.stats.in_flight.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // One request waits in the queue...
    let waiter = tokio::spawn(async move {
        let start = Instant::now();
        let r = get(&url(addr, "/")).await;
        (r, start.elapsed())
    });
    eventually("a request to queue", Duration::from_secs(5), || async {
        (admin_signals(lb.admin).await.queue_depth == 1).then_some(())
    })
    .await;
    // ...so the next finds the queue full and is shed at once.
    let (status, headers, body) = get(&url(addr, "/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
    assert!(retry_after_s(&headers) >= 1, "{headers:?}");
    assert!(String::from_utf8_lossy(&body).contains("queue is full"));
    // The waiter gives up after the queue timeout.
    let ((status, headers, _), waited) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        waited >= Duration::from_millis(300),
        "shed after {waited:?}"
    );
    assert!(retry_after_s(&headers) >= 1, "{headers:?}");
    let (_, _, metrics) = get(&url(lb.admin, "/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("ebbtide_shed_total{reason=\"queue_timeout\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ebbtide_shed_total{reason=\"queue_full\"} 1"),
        "{metrics}"
    );
}

/// Sends raw bytes on a new connection and returns what came back (up to the close or 2 s).
/// The write may fail: the proxy can answer (431 to a 1 MiB header) and close before the rest
/// is sent; what it answered is still read.
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_and_the_proxy_keeps_serving() {
    let (b, lb) = serve_one("b1").await;
    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\x16\x03\x01 not http at all\r\n\r\n".to_vec()),
        ("bad request line", b"GET\r\n\r\n".to_vec()),
        (
            "bad header",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(),
        ),
        (
            "bad content-length",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n".to_vec(),
        ),
        ("huge header", huge_header.into_bytes()),
        (
            "connect",
            b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n".to_vec(),
        ),
    ];
    for (what, bytes) in cases {
        let reply = raw_exchange(lb.addr, &bytes).await;
        let status: u16 = reply
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no status line in {reply:?}"));
        assert!((400..500).contains(&status), "{what}: got {status}");
    }
    assert_eq!(
        b.stats.requests.load(Ordering::SeqCst),
        0,
        "nothing malformed reached the backend"
    );
    assert_eq!(
        get(&url(lb.addr, "/")).await.0,
        StatusCode::OK,
        "still serving"
    );
}
