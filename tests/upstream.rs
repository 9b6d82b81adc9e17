//! End-to-end tests of the upstream protocols (`protocol = "h2c" | "h2" | "https"`): the real
//! `ebbtide` binary between a real client and real HTTP/2, TLS and gRPC-shaped backends, all on
//! 127.0.0.1.

mod common;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::body::{Body, Frame};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// A body fed frame by frame through a channel: a stream that is sent as it is written.
struct ChanBody(mpsc::Receiver<Frame<Bytes>>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

fn chan_body() -> (mpsc::Sender<Frame<Bytes>>, ChanBody) {
    let (tx, rx) = mpsc::channel(8);
    (tx, ChanBody(rx))
}

fn trailers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

/// What a test backend counts: TCP connections accepted, requests in flight and the most seen.
#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

/// The gRPC-shaped handler: answers each request body frame at once with `echo:` and the frame,
/// then ends with trailers `grpc-status: 0`, `x-custom` and the client's own trailer. `/hold`
/// waits (up to 5 s) until `hold` requests are in flight together; `/never` never answers.
async fn grpc_shaped(
    req: Request<Incoming>,
    counts: Arc<Counts>,
    hold: u64,
) -> Result<Response<ChanBody>, Infallible> {
    let n = counts.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    counts.max_in_flight.fetch_max(n, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    if path == "/never" {
        std::future::pending::<()>().await;
    }
    if path == "/hold" {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while counts.max_in_flight.load(Ordering::SeqCst) < hold
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let te = req.headers().get("te").cloned();
    let timeout = req.headers().get("grpc-timeout").cloned();
    let authority = req.uri().authority().map(|a| a.to_string());
    let (tx, body) = chan_body();
    let mut incoming = req.into_body();
    let counts2 = counts.clone();
    tokio::spawn(async move {
        let mut client_trailer = String::new();
        while let Some(Ok(frame)) = incoming.frame().await {
            match frame.into_data() {
                Ok(d) => {
                    let mut echo = b"echo:".to_vec();
                    echo.extend_from_slice(&d);
                    let _ = tx.send(Frame::data(Bytes::from(echo))).await;
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        client_trailer = t
                            .get("x-client-trailer")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                    }
                }
            }
        }
        counts2.in_flight.fetch_sub(1, Ordering::SeqCst);
        let _ = tx
            .send(Frame::trailers(trailers(&[
                ("grpc-status", "0"),
                ("x-custom", "yes"),
                ("x-request-trailer", &client_trailer),
            ])))
            .await;
    });
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h.insert(
        "x-saw-te",
        te.unwrap_or_else(|| HeaderValue::from_static("none")),
    );
    h.insert(
        "x-saw-timeout",
        timeout.unwrap_or_else(|| HeaderValue::from_static("none")),
    );
    h.insert(
        "x-authority",
        HeaderValue::from_str(&authority.unwrap_or_default()).unwrap(),
    );
    Ok(resp)
}

/// A backend on 127.0.0.1: each connection it accepts is counted, then handed to `serve` on a
/// task of its own.
async fn counted_backend<F, Fut>(serve: F) -> (SocketAddr, Arc<Counts>)
where
    F: Fn(TcpStream, Arc<Counts>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            c.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(s, c.clone()));
        }
    });
    (addr, counts)
}

/// An h2c (prior knowledge) backend running [`grpc_shaped`].
async fn h2c_backend(hold: u64) -> (SocketAddr, Arc<Counts>) {
    counted_backend(move |s, c| async move {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(
                TokioIo::new(s),
                service_fn(move |req| grpc_shaped(req, c.clone(), hold)),
            )
            .await;
    })
    .await
}

/// A certificate for `localhost` and 127.0.0.1, its key, and the PEM file of it (the CA a
/// backend is verified with).
struct TestCert {
    cert: rustls_pki_types::CertificateDer<'static>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    ca_file: tempfile_path::TempPath,
}

fn test_cert() -> TestCert {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    TestCert {
        cert: ck.cert.der().clone(),
        key: rustls_pki_types::PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()).into(),
        ca_file: tempfile_path::TempPath::with_contents("pem", &ck.cert.pem()),
    }
}

/// A TLS backend offering `alpn`, serving HTTP/2 when `h2`, else HTTP/1.1; answers with its
/// protocol version and the SNI it was given.
async fn tls_backend(cert: &TestCert, alpn: &[u8], h2: bool) -> (SocketAddr, Arc<Counts>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.clone()], cert.key.clone_key())
        .unwrap();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    counted_backend(move |s, c| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(s).await else {
                return;
            };
            let sni = tls.get_ref().1.server_name().unwrap_or("").to_string();
            let svc = service_fn(move |req: Request<Incoming>| {
                c.in_flight.fetch_add(1, Ordering::SeqCst);
                let body = format!("{:?} sni={sni}", req.version());
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
            });
            if h2 {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            }
        }
    })
    .await
}

/// An HTTP/2 client connection to ebbtide with prior knowledge (h2c).
async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<ChanBody> {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

fn grpc_request(lb: SocketAddr, path: &str, body: ChanBody) -> Request<ChanBody> {
    Request::post(format!("http://{lb}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap()
}

async fn next_frame(body: &mut Incoming) -> Frame<Bytes> {
    tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("a frame within 5 s")
        .expect("a frame, not the end")
        .expect("no error")
}

/// gRPC-shaped traffic over h2c both ways: each request message is answered before the next is
/// sent (so neither direction is buffered), the client's trailers reach the backend, and the
/// backend's trailers (`grpc-status`, a custom one) reach the client.
#[tokio::test]
async fn grpc_streams_both_ways_with_trailers_over_h2c() {
    let (b, counts) = h2c_backend(0).await;
    let lb = start_ebbtide(&base_config(&format!(
        "[[backends]]\naddress = \"{b}\"\nprotocol = \"h2c\"\n"
    )));
    let mut client = h2_client(lb.addr).await;
    let (tx, body) = chan_body();
    let mut req = grpc_request(lb.addr, "/pkg.Echo/Chat", body);
    req.headers_mut()
        .insert("grpc-timeout", HeaderValue::from_static("10S"));
    let resp = tokio::time::timeout(Duration::from_secs(5), client.send_request(req));
    let tx2 = tx.clone();
    // The first message goes before the response headers are awaited: gRPC servers may wait
    // for it before answering.
    tx2.send(Frame::data(Bytes::from_static(b"one")))
        .await
        .unwrap();
    let resp = resp.await.expect("response headers in time").unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["x-saw-te"],
        "trailers",
        "TE: trailers passed on"
    );
    assert_eq!(resp.headers()["x-authority"], lb.addr.to_string());
    // The backend is told what is left of the deadline, in milliseconds.
    let left = resp.headers()["x-saw-timeout"].to_str().unwrap();
    let ms: u64 = left.strip_suffix('m').unwrap().parse().unwrap();
    assert!((1..=10_000).contains(&ms), "{left}");
    let mut body = resp.into_body();
    assert_eq!(next_frame(&mut body).await.into_data().unwrap(), "echo:one");
    tx.send(Frame::data(Bytes::from_static(b"two")))
        .await
        .unwrap();
    assert_eq!(next_frame(&mut body).await.into_data().unwrap(), "echo:two");
    tx.send(Frame::trailers(trailers(&[("x-client-trailer", "bye")])))
        .await
        .unwrap();
    drop((tx, tx2));
    let t = next_frame(&mut body).await.into_trailers().unwrap();
    assert_eq!(t["grpc-status"], "0");
    assert_eq!(t["x-custom"], "yes");
    assert_eq!(
        t["x-request-trailer"], "bye",
        "the client's trailers reached the backend"
    );
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
}

/// `grpc-timeout` is the call's deadline: a backend that does not answer in time gets the
/// client a trailers-only DEADLINE_EXCEEDED, and is not held at fault for the client's short
/// deadline.
#[tokio::test]
async fn a_passed_grpc_deadline_is_deadline_exceeded() {
    let (b, _) = h2c_backend(0).await;
    let lb = start_ebbtide(&base_config(&format!(
        "[[backends]]\naddress = \"{b}\"\nprotocol = \"h2c\"\n"
    )));
    let mut client = h2_client(lb.addr).await;
    let (tx, body) = chan_body();
    drop(tx);
    let mut req = grpc_request(lb.addr, "/never", body);
    req.headers_mut()
        .insert("grpc-timeout", HeaderValue::from_static("300m"));
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(5), client.send_request(req))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["grpc-status"], "4");
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let backends = admin_backends(lb.admin).await;
    assert_eq!(
        backends[0].failures, 0,
        "the client's deadline is not the backend's failure"
    );
}

/// Many requests at once travel as streams of one upstream connection, and `capacity` bounds
/// the streams in flight at the backend as it bounds HTTP/1 requests.
#[tokio::test]
async fn concurrent_requests_share_one_connection_within_capacity() {
    let (b, counts) = h2c_backend(4).await;
    let lb = start_ebbtide(&base_config(&format!(
        "[[backends]]\naddress = \"{b}\"\nprotocol = \"h2c\"\ncapacity = 4\n"
    )));
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let url = format!("http://{}/hold", lb.addr);
        tasks.push(tokio::spawn(async move { get(&url).await }));
    }
    for t in tasks {
        let (status, _, _) = tokio::time::timeout(Duration::from_secs(20), t)
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1, "one connection");
    assert_eq!(
        counts.max_in_flight.load(Ordering::SeqCst),
        4,
        "capacity reached and never exceeded"
    );
}

/// A backend that cannot be connected to is "never reached": even a POST goes to another one.
#[tokio::test]
async fn a_connect_failure_is_retried_on_another_backend() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (b, counts) = h2c_backend(0).await;
    let lb = start_ebbtide(&base_config(&format!(
        "[balancer]\npolicy = \"round_robin\"\n\
         [[backends]]\naddress = \"{dead}\"\nprotocol = \"h2c\"\n\
         [[backends]]\naddress = \"{b}\"\nprotocol = \"h2c\"\n"
    )));
    for i in 0..6 {
        let req = Request::post(format!("http://{}/once", lb.addr))
            .body(body(format!("request {i}")))
            .unwrap();
        let (status, _, got) = send(req).await;
        assert_eq!(status, StatusCode::OK, "request {i}");
        assert_eq!(got, format!("echo:request {i}"));
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
}

/// `protocol = "h2"`: HTTP/2 over TLS, ALPN h2, the certificate verified with `tls_ca` against
/// `server_name`; a wrong name fails verification (502) and sends the backend no request.
#[tokio::test]
async fn h2_over_tls_with_alpn_and_verification() {
    let cert = test_cert();
    let (b, counts) = tls_backend(&cert, b"h2", true).await;
    let ca = cert.ca_file.path().display();
    let lb = start_ebbtide(&base_config(&format!(
        "[[backends]]\naddress = \"{b}\"\nprotocol = \"h2\"\ntls_ca = \"{ca}\"\n\
         server_name = \"localhost\"\n"
    )));
    let (status, _, got) = get(&format!("http://{}/", lb.addr)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, "HTTP/2.0 sni=localhost");

    let wrong = start_ebbtide(&base_config(&format!(
        "[[backends]]\naddress = \"{b}\"\nprotocol = \"h2\"\ntls_ca = \"{ca}\"\n\
         server_name = \"wrong.example\"\n"
    )));
    let before = counts.in_flight.load(Ordering::SeqCst);
    let (status, _, _) = get(&format!("http://{}/", wrong.addr)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(counts.in_flight.load(Ordering::SeqCst), before);

    // An HTTP/1.1-only TLS server behind protocol = "h2": refused at connect (ALPN).
    let (h1, _) = tls_backend(&cert, b"http/1.1", false).await;
    let no_alpn = start_ebbtide(&base_config(&format!(
        "[[backends]]\naddress = \"{h1}\"\nprotocol = \"h2\"\ntls_ca = \"{ca}\"\n"
    )));
    let (status, _, _) = get(&format!("http://{}/", no_alpn.addr)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
}

/// `protocol = "https"`: HTTP/1.1 over TLS through the keep-alive pool, verified against the
/// address's IP (no `server_name`), with `[upstream] ca`.
#[tokio::test]
async fn https_backend() {
    let cert = test_cert();
    let (b, counts) = tls_backend(&cert, b"http/1.1", false).await;
    let lb = start_ebbtide(&base_config(&format!(
        "[upstream]\nca = \"{}\"\n[[backends]]\naddress = \"{b}\"\nprotocol = \"https\"\n",
        cert.ca_file.path().display()
    )));
    for _ in 0..3 {
        let (status, _, got) = get(&format!("http://{}/", lb.addr)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got, "HTTP/1.1 sni=");
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1, "kept alive");
}

/// A raw HTTP/2 backend whose response carries a connection-specific header, which HTTP/2
/// forbids (RFC 9113 §8.2.2): a malformed response.
async fn malformed_h2_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                // Our SETTINGS (empty), then wait for the request's HEADERS on stream 1.
                let _ = s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                let mut at = 24; // past the client's connection preface
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                    let mut headers = false;
                    while got.len() >= at + 9 {
                        let len =
                            u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
                        if got.len() < at + 9 + len {
                            break;
                        }
                        headers |= got[at + 3] == 1;
                        at += 9 + len;
                    }
                    if headers {
                        break;
                    }
                }
                // SETTINGS ACK, then HEADERS (END_STREAM | END_HEADERS) on stream 1:
                // `:status: 200` (static index 8) and `connection: close` (literal).
                let mut block = vec![0x88, 0x00, 10];
                block.extend_from_slice(b"connection");
                block.push(5);
                block.extend_from_slice(b"close");
                let mut out = vec![0, 0, 0, 4, 1, 0, 0, 0, 0];
                out.extend_from_slice(&[0, 0, block.len() as u8, 1, 0x5, 0, 0, 0, 1]);
                out.extend_from_slice(&block);
                let _ = s.write_all(&out).await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_malformed_h2_response_is_a_502_against_the_backend() {
    let b = malformed_h2_backend().await;
    let lb = start_ebbtide(&base_config(&format!(
        "[[backends]]\naddress = \"{b}\"\nprotocol = \"h2c\"\n"
    )));
    let req = Request::post(format!("http://{}/", lb.addr))
        .body(body("x"))
        .unwrap();
    let (status, _, _) = send(req).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let backends = admin_backends(lb.admin).await;
    assert_eq!(backends[0].failures, 1, "counted against the backend");
    assert_eq!(backends[0].protocol, ebbtide_balancer::api::Protocol::H2c);
}

/// `POST /api/v1/backends` with `"protocol": "h2c"`: the health probe and the requests speak
/// HTTP/2 to it (the backend serves HTTP/2 only).
#[tokio::test]
async fn a_backend_registered_as_h2c_is_probed_and_used_over_http2() {
    let (b, counts) = h2c_backend(0).await;
    let lb = start_ebbtide(&base_config(
        "[health]\npath = \"/healthz\"\ninterval = \"100ms\"\n",
    ));
    let reg = ebbtide_balancer::api::Register {
        address: b.to_string(),
        capacity: Some(8),
        weight: 1,
        lease_seconds: None,
        cost_per_hour: 0.0,
        protocol: Some(ebbtide_balancer::api::Protocol::H2c),
        server_name: None,
        launched: None,
    };
    let info = admin_client()
        .register(&lb.admin.to_string(), &reg)
        .await
        .expect("registered");
    assert_eq!(info.protocol, ebbtide_balancer::api::Protocol::H2c);
    eventually(
        "the h2c backend to pass its probe",
        Duration::from_secs(5),
        || async {
            let b = admin_backends(lb.admin).await;
            (b[0].state == ebbtide_balancer::api::BackendState::Active).then_some(())
        },
    )
    .await;
    let req = Request::post(format!("http://{}/x", lb.addr))
        .body(body("hi"))
        .unwrap();
    let (status, _, got) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, "echo:hi");
    assert!(
        counts.accepted.load(Ordering::SeqCst) >= 2,
        "probe and pool"
    );
}
