//! Hostile and malformed input on raw TCP sockets, end to end: the real `ebbtide serve` in front
//! of an in-process backend on 127.0.0.1. Timeouts from accept, size limits, the per-client
//! connection limit, and a corpus of malformed HTTP/1.1 requests, each with its verdict.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A config with `listener` keys added to `[listener]` and one backend (on the HTTP/1.1 engine
/// `EBBTIDE_TEST_HTTP1` names, as `base_config`).
fn config(listener: &str, backend: SocketAddr) -> String {
    format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n{}{listener}\n[admin]\naddress = \"127.0.0.1:0\"\n{}",
        http1_key(),
        backends_toml(&[backend], None)
    )
}

/// Reads until the peer closes or `limit` passes; returns what was read and whether it closed.
async fn read_all(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (buf, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return (buf, false),
        }
    }
}

/// The status of the first response in `buf`.
fn status_of(buf: &[u8]) -> Option<u16> {
    let s = String::from_utf8_lossy(buf);
    s.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// Sends `req` (with `Connection: close` semantics left to the request) and returns the first
/// response's status (None: closed without one) and whether the connection closed within 5 s.
async fn exchange(lb: SocketAddr, req: &[u8]) -> (Option<u16>, Vec<u8>) {
    let mut s = TcpStream::connect(lb).await.unwrap();
    let _ = s.write_all(req).await;
    let (buf, _) = read_all(&mut s, Duration::from_secs(5)).await;
    (status_of(&buf), buf)
}

/// A connection that sends nothing, one that sends part of the HTTP/2 preface, and one that
/// sends its headers a byte every 200 ms are all closed at `header_read_timeout`, counted from
/// accept (hyper's own timer starts only with the first byte of a request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_send_nothing_or_crawl_are_closed_at_the_header_timeout() {
    let b = test_backend("b1").await;
    let lb = start_ebbtide(&config("header_read_timeout = \"1s\"", b.addr));
    let lb_addr = lb.addr;
    let case = |what: &'static str, first: &'static [u8], drip: &'static [u8]| async move {
        let t = Instant::now();
        let mut s = TcpStream::connect(lb_addr).await.unwrap();
        s.write_all(first).await.unwrap();
        let mut closed = false;
        for &byte in drip {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if s.write_all(&[byte]).await.is_err() {
                closed = true;
                break;
            }
        }
        if !closed {
            closed = read_all(&mut s, Duration::from_secs(5)).await.1;
        }
        let took = t.elapsed();
        assert!(closed, "{what}: still open after {took:?}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{what}: closed after {took:?}, not at the 1 s header timeout"
        );
        took
    };
    let (a, b2, c) = tokio::join!(
        case("nothing", b"", b""),
        case("part of the HTTP/2 preface", b"PRI * HTTP/2.0\r\n", b""),
        case(
            "headers a byte at a time",
            b"G",
            b"ET / HTTP/1.1\r\nHost: lb.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
        ),
    );
    println!("closed after: nothing {a:?}, preface {b2:?}, byte-a-time {c:?}");
    // A normal request is unaffected.
    let (status, _) = exchange(
        lb.addr,
        b"GET / HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, Some(200));
}

/// A client that sends part of its first request head and then stalls gets `408 Request
/// Timeout` at `header_read_timeout` (from accept), then the close, as from HAProxy; one that
/// sent nothing, or part of the HTTP/2 preface (an HTTP/1.1 answer would be noise to it), is
/// closed without an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_stalled_midway_gets_408_then_the_close() {
    let b = test_backend("b1").await;
    let lb = start_ebbtide(&config("header_read_timeout = \"1s\"", b.addr));
    let cases: [(&str, &[u8], Option<u16>); 5] = [
        ("a request line", b"GET / HTTP/1.1\r\n", Some(408)),
        (
            "a header cut short",
            b"POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Le",
            Some(408),
        ),
        ("one byte", b"G", Some(408)),
        ("nothing", b"", None),
        ("part of the HTTP/2 preface", b"PRI * HTTP/2.0\r\n", None),
    ];
    let tasks: Vec<_> = cases
        .into_iter()
        .map(|(what, sent, want)| {
            let addr = lb.addr;
            tokio::spawn(async move {
                let t = Instant::now();
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(sent).await.unwrap();
                let (buf, closed) = read_all(&mut s, Duration::from_secs(5)).await;
                let took = t.elapsed();
                assert!(closed, "{what}: still open after {took:?}");
                assert!(
                    took >= Duration::from_millis(900),
                    "{what}: answered after {took:?}, before the 1 s header timeout"
                );
                assert_eq!(
                    status_of(&buf),
                    want,
                    "{what}: got {:?}",
                    String::from_utf8_lossy(&buf)
                );
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // The backend saw none of them.
    assert_eq!(
        b.stats.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// Header block over `max_header_bytes` -> 431; more than `max_headers` fields -> 431; a
/// target over `max_uri_bytes` -> 414; just under each limit passes.
#[tokio::test]
async fn header_size_count_and_uri_length_are_limited() {
    let b = test_backend("b1").await;
    let lb = start_ebbtide(&config(
        "max_header_bytes = 16384\nmax_headers = 50\nmax_uri_bytes = 2048",
        b.addr,
    ));
    let req = |path: &str, headers: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: lb.test\r\n{headers}Connection: close\r\n\r\n")
    };
    let big = |n: usize| format!("X-Big: {}\r\n", "a".repeat(n));
    let many = |n: usize| (0..n).map(|i| format!("X-H{i}: v\r\n")).collect::<String>();
    let cases = [
        ("a 10 KB header", req("/", &big(10_000)), 200),
        ("a 20 KB header", req("/", &big(20_000)), 431),
        ("a 400 KB header", req("/", &big(400_000)), 431),
        ("45 headers", req("/", &many(45)), 200),
        ("60 headers", req("/", &many(60)), 431),
        (
            "a 2000-byte target",
            req(&format!("/{}", "p".repeat(1999)), ""),
            200,
        ),
        (
            "a 3000-byte target",
            req(&format!("/{}", "p".repeat(3000)), ""),
            414,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, r, want) in cases {
        let (status, _) = exchange(lb.addr, r.as_bytes()).await;
        if status != Some(want) {
            wrong.push(format!("{what}: got {status:?}, want {want}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// `max_connections_per_client`: one more connection from the same address is closed at once;
/// once one closes, a new one is served.
#[tokio::test]
async fn connections_per_client_are_limited() {
    let b = test_backend("b1").await;
    let lb = start_ebbtide(&config("max_connections_per_client = 4", b.addr));
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        // A request on each, so they are surely accepted and counted.
        s.write_all(b"GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    let mut fifth = TcpStream::connect(lb.addr).await.unwrap();
    let _ = fifth
        .write_all(b"GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n")
        .await;
    let (buf, closed) = read_all(&mut fifth, Duration::from_secs(5)).await;
    assert!(closed && buf.is_empty(), "the fifth connection was served");
    drop(held.pop());
    eventually(
        "a connection slot to free",
        Duration::from_secs(5),
        || async {
            let (status, _) = exchange(
                lb.addr,
                b"GET / HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n",
            )
            .await;
            (status == Some(200)).then_some(())
        },
    )
    .await;
}

/// What ebbtide must do with a request of the corpus.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    /// Answer with this status (and then maybe close).
    Status(u16),
    /// Close without a response, or answer 400: either refuses the request.
    Refuse,
    /// Forward it: 200 from the backend, whose echo of the request must contain every `+`
    /// string and none of the `-` ones.
    Forward(&'static [&'static str], &'static [&'static str]),
    /// As `Forward` on hyper's HTTP/1.1 server; `Status(400)` on the native lane, which
    /// refuses it deliberately (`HeadError::stricter_than_today`).
    ForwardOrNative400(&'static [&'static str], &'static [&'static str]),
}

use Verdict::*;

/// The malformed-request corpus: (name, raw request, verdict). Each request ends with
/// `Connection: close` where it gets that far, so one response is read per connection.
const CORPUS: &[(&str, &str, Verdict)] = &[
    ("valid GET", "GET /echo HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n",
        Forward(&["\"host\":\"lb.test\""], &[])),
    // Host (RFC 9112 3.2)
    ("no Host", "GET /echo HTTP/1.1\r\nConnection: close\r\n\r\n", Status(400)),
    ("two Host headers", "GET /echo HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nConnection: close\r\n\r\n", Status(400)),
    ("Host list", "GET /echo HTTP/1.1\r\nHost: a, b\r\nConnection: close\r\n\r\n", Status(400)),
    ("Host with path and query", "GET /echo HTTP/1.1\r\nHost: a/b?c\r\nConnection: close\r\n\r\n", Status(400)),
    ("empty Host", "GET /echo HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n", Status(400)),
    ("Host with userinfo", "GET /echo HTTP/1.1\r\nHost: user@a.test\r\nConnection: close\r\n\r\n", Status(400)),
    ("Host with a bad port", "GET /echo HTTP/1.1\r\nHost: a.test:8x\r\nConnection: close\r\n\r\n", Status(400)),
    ("Host with a port", "GET /echo HTTP/1.1\r\nHost: a.test:8080\r\nConnection: close\r\n\r\n",
        Forward(&["\"host\":\"a.test:8080\""], &[])),
    ("Host IPv6 literal", "GET /echo HTTP/1.1\r\nHost: [2001:db8::1]:80\r\nConnection: close\r\n\r\n",
        Forward(&["\"host\":\"[2001:db8::1]:80\""], &[])),
    // Targets
    ("absolute-form target replaces Host", "GET http://target.test/echo HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
        Forward(&["\"host\":\"target.test\"", "\"path\":\"/echo\""], &["other.test"])),
    ("CONNECT", "CONNECT target.test:443 HTTP/1.1\r\nHost: target.test:443\r\nConnection: close\r\n\r\n", Status(405)),
    ("target without a slash", "GET echo HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n", Refuse),
    ("asterisk-form GET", "GET * HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n", Refuse),
    // Framing and smuggling (RFC 9112 6)
    // hyper drops the Content-Length, reads the body as chunked and closes the connection
    // after the response (RFC 9112 6.1; as HAProxy does); the native lane answers 400 and
    // closes (RFC 9112 6.1 allows either): a request smuggled behind the body is never read.
    ("Content-Length and Transfer-Encoding", "POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /echo HTTP/1.1\r\nHost: smuggled.test\r\n\r\n",
        ForwardOrNative400(&["5"], &["smuggled"])),
    ("two different Content-Lengths", "POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 5\r\nContent-Length: 6\r\nConnection: close\r\n\r\nhello!", Refuse),
    ("Content-Length list", "POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: 5, 6\r\nConnection: close\r\n\r\nhello!", Refuse),
    ("negative Content-Length", "POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: -1\r\nConnection: close\r\n\r\n", Refuse),
    ("Content-Length with a sign", "POST /upload HTTP/1.1\r\nHost: lb.test\r\nContent-Length: +5\r\nConnection: close\r\n\r\nhello", Refuse),
    ("Transfer-Encoding gzip, chunked", "POST /upload HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Status(501)),
    ("Transfer-Encoding identity, chunked", "POST /upload HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: identity, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Status(501)),
    ("Transfer-Encoding split over two headers", "POST /upload HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Status(501)),
    ("Transfer-Encoding not ending in chunked", "POST /upload HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked, gzip\r\nConnection: close\r\n\r\n", Refuse),
    ("Transfer-Encoding chunked (valid)", "POST /upload HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Forward(&["5"], &[])),
    ("invalid chunk size", "POST /upload HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nG\r\nhello\r\n0\r\n\r\n", Status(400)),
    ("chunk size overflow", "POST /upload HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nFFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n", Status(400)),
    ("chunk without its CRLF", "POST /upload HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhelloXX0\r\n\r\n", Status(400)),
    ("chunk size ended by a bare LF", "POST /upload HTTP/1.1\r\nHost: lb.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\nhello\r\n0\r\n\r\n", Status(400)),
    // Header syntax (RFC 9110 5, RFC 9112 5)
    ("obs-fold", "GET /echo HTTP/1.1\r\nHost: lb.test\r\nX-A: b\r\n c\r\nConnection: close\r\n\r\n", Refuse),
    ("whitespace before the colon", "GET /echo HTTP/1.1\r\nHost : lb.test\r\nConnection: close\r\n\r\n", Refuse),
    ("invalid header name", "GET /echo HTTP/1.1\r\nHost: lb.test\r\nX@A: b\r\nConnection: close\r\n\r\n", Refuse),
    ("invalid method", "G@T /echo HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n", Refuse),
    ("bare CR in a value", "GET /echo HTTP/1.1\r\nHost: lb.test\r\nX-A: b\rc\r\nConnection: close\r\n\r\n", Refuse),
    ("NUL in a value", "GET /echo HTTP/1.1\r\nHost: lb.test\r\nX-A: b\0c\r\nConnection: close\r\n\r\n", Refuse),
    ("bare CR as a line end", "GET /echo HTTP/1.1\rHost: lb.test\r\nConnection: close\r\n\r\n", Refuse),
    ("header name with an underscore is dropped", "GET /echo HTTP/1.1\r\nHost: lb.test\r\nX_Forwarded_For: 6.6.6.6\r\nX_Custom: 1\r\nConnection: close\r\n\r\n",
        Forward(&["\"x-forwarded-for\":\"127.0.0.1\""], &["6.6.6.6", "x_custom"])),
    ("unknown HTTP version", "GET /echo HTTP/1.2\r\nHost: lb.test\r\nConnection: close\r\n\r\n", Refuse),
    ("HTTP/2 version on HTTP/1", "GET /echo HTTP/2.0\r\nHost: lb.test\r\nConnection: close\r\n\r\n", Refuse),
    // Hop-by-hop and upgrades
    ("h2c upgrade is not tunnelled", "GET /echo HTTP/1.1\r\nHost: lb.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        Forward(&[], &["upgrade", "http2-settings"])),
    ("Connection-named header stripped", "GET /echo HTTP/1.1\r\nHost: lb.test\r\nConnection: close, X-Secret\r\nX-Secret: s\r\n\r\n",
        Forward(&[], &["x-secret"])),
    ("oversized header", "", Status(431)),
];

/// The corpus, each request on its own connection, with its verdict; prints the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_corpus() {
    let b = test_backend("b1").await;
    let lb = start_ebbtide(&config("", b.addr));
    let oversized = format!(
        "GET /echo HTTP/1.1\r\nHost: lb.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let mut wrong = Vec::new();
    for &(name, raw, want) in CORPUS {
        let raw = if raw.is_empty() {
            oversized.as_str()
        } else {
            raw
        };
        let (status, buf) = exchange(lb.addr, raw.as_bytes()).await;
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        let want = match want {
            ForwardOrNative400(..) if on_native_lane() => Status(400),
            ForwardOrNative400(has, hasnt) => Forward(has, hasnt),
            w => w,
        };
        let ok = match want {
            ForwardOrNative400(..) => unreachable!(),
            Status(s) => status == Some(s),
            Refuse => status.is_none() || status == Some(400),
            Forward(has, hasnt) => {
                status == Some(200)
                    && has.iter().all(|h| body.contains(&h.to_ascii_lowercase()))
                    && hasnt
                        .iter()
                        .all(|h| !body.contains(&h.to_ascii_lowercase()))
            }
        };
        println!(
            "{:<42} want {:<12} got {:<6} {}",
            name,
            match want {
                Status(s) => s.to_string(),
                Refuse => "400/close".into(),
                Forward(..) | ForwardOrNative400(..) => "forward".into(),
            },
            status.map_or("close".into(), |s| s.to_string()),
            if ok { "ok" } else { "WRONG" }
        );
        if !ok {
            wrong.push(format!(
                "{name}: got {status:?}, want {want:?}; body {body:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Over HTTP/2 a `host` header that differs from `:authority` loses: `:authority` is the
/// request's host (RFC 9113 8.3.1), and header names with `_` are dropped there too.
#[tokio::test]
async fn http2_authority_wins_over_a_host_header() {
    let b = test_backend("b1").await;
    let lb = start_ebbtide(&config("", b.addr));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    // :authority is the balancer's address (hyper's client sends the URI's authority there).
    let req = http::Request::get(format!("http://{}/echo", lb.addr))
        .header("host", "evil.test")
        .header("x_forwarded_for", "6.6.6.6")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["headers"]["host"], lb.addr.to_string(), "{v}");
    assert!(v["headers"].get("x_forwarded_for").is_none(), "{v}");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1", "{v}");
}
