//! HTTP/2 clients that take too much or give up: the real `ebbtide serve` in front of in-process
//! backends on 127.0.0.1, driven by the `h2` crate directly so that streams can be opened by
//! the dozen and reset mid-upload.

mod common;

use bytes::Bytes;
use common::*;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpStream;

/// An HTTP/2 (prior knowledge) connection to `addr`, ready for requests.
async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client.ready().await.unwrap()
}

fn request(method: &str, addr: SocketAddr, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(())
        .unwrap()
}

/// (state, failures, learnt limit, in flight, EWMA latency in ms) of the one backend.
async fn backend_view(admin: SocketAddr) -> (String, u64, Option<u32>, u32, f64) {
    let b = admin_backends(admin).await.remove(0);
    (
        b.state.to_string(),
        b.failures,
        b.learnt_limit,
        b.in_flight,
        b.ewma_latency_ms,
    )
}

/// `max_streams_per_client` counts the streams of all of one address's connections: with a
/// limit of 10, 20 streams opened over 4 connections (5 each, well under the per-connection
/// 100) get 10 through and 10 `REFUSED_STREAM`, which never reach the backend; once the 10 are
/// reset, their slots are free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_limited_per_client_address_across_connections() {
    let b = test_backend("b1").await;
    let lb = start_ebbtide(&format!(
        "[listener]\naddress = \"127.0.0.1:0\"\nmax_streams_per_client = 10\n\
         [admin]\naddress = \"127.0.0.1:0\"\n{}",
        backends_toml(&[b.addr], None)
    ));
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(h2_connect(lb.addr).await);
    }
    let mut tasks = Vec::new();
    for c in &conns {
        for _ in 0..5 {
            let mut c = c.clone().ready().await.unwrap();
            let (resp, stream) = c
                .send_request(request("GET", lb.addr, "/hang"), true)
                .unwrap();
            tasks.push(tokio::spawn(async move {
                let r = resp.await;
                drop(stream);
                r.map(|r| r.status())
            }));
        }
    }
    // The refused streams come back at once; the others hang at the backend.
    eventually(
        "10 streams answered and 10 at the backend",
        Duration::from_secs(10),
        || {
            let done = tasks.iter().filter(|t| t.is_finished()).count();
            let at_backend = b.stats.in_flight.load(Ordering::SeqCst);
            async move { (done >= 10 && at_backend >= 10).then_some(()) }
        },
    )
    .await;
    let (finished, open): (Vec<_>, Vec<_>) = tasks.into_iter().partition(|t| t.is_finished());
    for t in finished {
        let e = t
            .await
            .unwrap()
            .expect_err("a stream over the limit answered");
        assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e}");
    }
    assert_eq!(open.len(), 10, "10 streams through, 10 refused");
    assert_eq!(b.stats.requests.load(Ordering::SeqCst), 10);

    // Resetting the 10 (aborting their tasks drops their streams: RST_STREAM CANCEL) frees the
    // address's slots: 10 new streams on a new connection all get through.
    for t in open {
        t.abort();
    }
    drop(conns);
    let fresh = h2_connect(lb.addr).await;
    let addr = lb.addr;
    let ok = eventually(
        "the reset streams' slots to be free",
        Duration::from_secs(10),
        || {
            let fresh = fresh.clone();
            async move {
                let mut answers = Vec::new();
                for _ in 0..10 {
                    let mut c = fresh.clone().ready().await.ok()?;
                    let (resp, _) = c
                        .send_request(request("GET", addr, "/sleep?ms=200"), true)
                        .ok()?;
                    answers.push(resp);
                }
                let mut ok = 0;
                for r in answers {
                    if r.await.ok()?.status() == 200 {
                        ok += 1;
                    }
                }
                (ok == 10).then_some(ok)
            }
        },
    )
    .await;
    assert_eq!(ok, 10);
}

/// An HTTP/2 client that resets its stream in the middle of a streamed upload (six of them,
/// more than `[outlier] consecutive_failures`): the backend's request is aborted, the balancer's
/// in-flight count falls back to 0, and the backend is not blamed: still active, its failure
/// count and learnt limit unchanged, and the second each upload was held open not read as its
/// latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_mid_upload_aborts_the_backend_request_and_blames_no_one() {
    let b = test_backend("b1").await;
    let lb = start_ebbtide(&format!(
        "[listener]\naddress = \"127.0.0.1:0\"\nrequest_buffer = 0\n\
         [admin]\naddress = \"127.0.0.1:0\"\n{}",
        backends_toml(&[b.addr], None)
    ));
    for _ in 0..5 {
        assert_eq!(get(&format!("http://{}/", lb.addr)).await.0, 200);
    }
    let before = backend_view(lb.admin).await;
    assert_eq!(before.0, "active");

    let client = h2_connect(lb.addr).await;
    let mut uploads = Vec::new();
    for _ in 0..6 {
        let mut c = client.clone().ready().await.unwrap();
        let (resp, mut body) = c
            .send_request(request("POST", lb.addr, "/upload"), false)
            .unwrap();
        body.send_data(Bytes::from(vec![b'x'; 16 * 1024]), false)
            .unwrap();
        uploads.push((resp, body));
    }
    // Every upload reaches the backend and streams there...
    eventually(
        "the six uploads to reach the backend",
        Duration::from_secs(10),
        || async { (b.stats.in_flight.load(Ordering::SeqCst) == 6).then_some(()) },
    )
    .await;
    // ... for a second (longer than the backend's usual latency by far), then the client
    // gives up on each.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (_, body) in &mut uploads {
        body.send_reset(h2::Reason::CANCEL);
    }
    eventually(
        "the backend's requests to be aborted",
        Duration::from_secs(10),
        || async { (b.stats.in_flight.load(Ordering::SeqCst) == 0).then_some(()) },
    )
    .await;
    let after = eventually(
        "the balancer's in-flight count to fall to 0",
        Duration::from_secs(10),
        || async {
            let v = backend_view(lb.admin).await;
            (v.3 == 0).then_some(v)
        },
    )
    .await;
    assert_eq!(
        b.stats.body_errors.load(Ordering::SeqCst),
        6,
        "each upload ended at the backend in an error (aborted), not as a shorter whole body"
    );
    assert_eq!(after.0, "active", "{after:?} (before: {before:?})");
    assert_eq!(
        after.1, before.1,
        "failures: {after:?} (before: {before:?})"
    );
    assert_eq!(after.2, before.2, "limit: {after:?} (before: {before:?})");
    assert!(
        after.4 < 500.0,
        "the uploads' second is the client's time, not backend latency: {after:?}"
    );
    // The connection and the backend still serve.
    let mut c = client.ready().await.unwrap();
    let (resp, _) = c.send_request(request("GET", lb.addr, "/"), true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
}
