//! Hostile and malformed input on raw TCP sockets, end to end: the real `ebbtide serve` in front
//! of an in-process backend on 127.0.0.1. Timeouts from accept, size limits, the per-client
//! connection limit, and a corpus of malformed HTTP/1.1 requests, each with its verdict.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A config with `listener` keys added to `[listener]` and one backend.
fn config(listener: &str, backend: SocketAddr) -> String {
    format!(
        "[listener]\naddress = \"127.0.0.1:0\"\n{listener}\n[admin]\naddress = \"127.0.0.1:0\"\n{}",
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
