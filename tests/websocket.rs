//! WebSockets through `ebbtide serve`: HTTP/1.1 `Upgrade: websocket` and HTTP/2 extended
//! CONNECT (RFC 8441) tunnelled to `ebbtide backend --websocket` (an echo server), a backend
//! drained with a socket open, the idle timeout, and the upgrades that are not tunnelled. The
//! client is tokio-tungstenite, an implementation independent of ebbtide's.

mod common;

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// A WebSocket to ebbtide at `addr`, and the backend that took it (`x-backend-id`).
async fn connect(addr: SocketAddr) -> (Ws, String) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
    let (ws, resp) =
        tokio_tungstenite::client_async_with_config(format!("ws://{addr}/chat"), tcp, Some(config))
            .await
            .expect("websocket handshake through ebbtide");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let id = resp.headers()["x-backend-id"].to_str().unwrap().to_string();
    (ws, id)
}

/// Sends `msg` and returns the next data message.
async fn echo<S>(ws: &mut WebSocketStream<S>, msg: Message) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(msg).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))) => return m,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no echo: {other:?}"),
        }
    }
}

/// The value of an unlabelled (or fully labelled) metric line `name` in ebbtide's `/metrics`.
async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let (_, _, text) = get(&url(admin, "/metrics")).await;
    let text = String::from_utf8(text.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

async fn in_flight(admin: SocketAddr, backend: SocketAddr) -> u32 {
    admin_backends(admin)
        .await
        .iter()
        .find(|b| b.address == backend.to_string())
        .map_or(0, |b| b.in_flight)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_both_ways_with_a_10_mb_message_and_a_close_handshake() {
    let b = sim_backend(&["--websocket", "--id", "ws1"]).await;
    let lb = start_ebbtide(&base_config(&backends_toml(&[b.addr], None)));
    let (mut ws, id) = connect(lb.addr).await;
    assert_eq!(id, "ws1");

    assert_eq!(
        echo(&mut ws, Message::text("hello")).await,
        Message::text("hello")
    );
    let big: Vec<u8> = (0..10_000_000u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let back = echo(&mut ws, Message::binary(big.clone())).await;
    assert!(
        back == Message::binary(big),
        "the 10 MB message came back different"
    );
    // Several messages in flight at once, in order.
    for i in 0..20 {
        ws.feed(Message::text(format!("m{i}"))).await.unwrap();
    }
    ws.flush().await.unwrap();
    for i in 0..20 {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap();
        assert_eq!(m.unwrap().unwrap(), Message::text(format!("m{i}")));
    }

    // The open socket is a request in flight on its backend, and a tunnel.
    assert_eq!(in_flight(lb.admin, b.addr).await, 1);
    assert_eq!(metric(lb.admin, "ebbtide_tunnels_open").await, 1.0);
    let line = format!("ebbtide_backend_in_flight{{backend=\"{}\"}}", b.addr);
    assert_eq!(metric(lb.admin, &line).await, 1.0);

    // Close handshake: the backend's close comes back, then the connection ends.
    ws.close(None).await.unwrap();
    let mut got_close = false;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
        match m {
            Ok(Message::Close(_)) => got_close = true,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(got_close, "the backend's close frame came back");
    eventually("the tunnel to end", Duration::from_secs(10), || async {
        (metric(lb.admin, "ebbtide_tunnels_open").await == 0.0).then_some(())
    })
    .await;
    assert_eq!(in_flight(lb.admin, b.addr).await, 0);
    assert_eq!(
        metric(lb.admin, "ebbtide_tunnels_closed_total{reason=\"closed\"}").await,
        1.0
    );
    // The handshake was a request answered with 101, counted as such.
    let line = format!(
        "ebbtide_requests_total{{backend=\"{}\",code=\"101\"}}",
        b.addr
    );
    assert_eq!(metric(lb.admin, &line).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extended_connect_from_an_http2_client_reaches_the_echo_backend() {
    let b = sim_backend(&["--websocket", "--id", "ws1"]).await;
    let lb = start_ebbtide(&base_config(&backends_toml(&[b.addr], None)));
    let tcp = TcpStream::connect(lb.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, http_body_util::Empty<bytes::Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    // One plain request first: by its answer the server's SETTINGS (with
    // SETTINGS_ENABLE_CONNECT_PROTOCOL) are in.
    let resp = sender
        .send_request(
            Request::get(url(lb.addr, "/healthz"))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);

    let mut req = Request::builder()
        .method(Method::CONNECT)
        .version(Version::HTTP_2)
        .uri(url(lb.addr, "/chat"))
        .header("sec-websocket-version", "13")
        .body(Default::default())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = sender.send_request(req).await.expect("extended CONNECT");
    assert_eq!(resp.status(), StatusCode::OK, "{resp:?}");
    assert_eq!(resp.headers()["x-backend-id"], "ws1");
    assert!(
        resp.headers().get("sec-websocket-accept").is_none(),
        "no Sec-WebSocket-Accept on HTTP/2 (RFC 8441 5)"
    );
    let upgraded = hyper::upgrade::on(resp)
        .await
        .expect("the stream is a tunnel");
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    assert_eq!(
        echo(&mut ws, Message::text("over h2")).await,
        Message::text("over h2")
    );
    let big = vec![0xa5u8; 1 << 20];
    assert!(echo(&mut ws, Message::binary(big.clone())).await == Message::binary(big));
    assert_eq!(in_flight(lb.admin, b.addr).await, 1);
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await {}
    eventually("the tunnel to end", Duration::from_secs(10), || async {
        (in_flight(lb.admin, b.addr).await == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_backend_keeps_its_socket_until_the_deadline_then_closes_it_going_away() {
    let b1 = sim_backend(&["--websocket", "--id", "b1"]).await;
    let b2 = sim_backend(&["--websocket", "--id", "b2"]).await;
    let drain = Duration::from_secs(2);
    let lb = start_ebbtide(&base_config(&format!(
        "[balancer]\npolicy = \"round_robin\"\n[lifecycle]\ndrain_timeout = \"2s\"\n{}",
        backends_toml(&[b1.addr, b2.addr], None)
    )));
    let (mut ws, first) = connect(lb.addr).await;
    let (gone, stays) = if first == "b1" {
        (b1.addr, "b2")
    } else {
        (b2.addr, "b1")
    };
    let id = admin_backends(lb.admin)
        .await
        .into_iter()
        .find(|b| b.address == gone.to_string())
        .unwrap()
        .id;
    let deleted_at = Instant::now();
    let info = admin_client()
        .delete(&lb.admin.to_string(), id)
        .await
        .unwrap();
    assert_eq!(info.state.name(), "draining");

    // New sockets go to the other backend; the open one still works meanwhile.
    for _ in 0..4 {
        let (mut other, took) = connect(lb.addr).await;
        assert_eq!(took, stays);
        other.close(None).await.unwrap();
    }
    assert_eq!(
        echo(&mut ws, Message::text("still here")).await,
        Message::text("still here")
    );
    assert_eq!(
        in_flight(lb.admin, gone).await,
        1,
        "the socket holds its slot"
    );

    // At the drain deadline: a close frame 1001 "going away", then the end of the connection.
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    let closed_after = deleted_at.elapsed();
    let frame = close.expect("a close frame with a code");
    assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
    assert!(
        closed_after >= drain - Duration::from_millis(100),
        "closed {closed_after:?} after the DELETE, before the {drain:?} drain deadline"
    );
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}

    // The backend leaves the fleet; its slot is free again.
    eventually(
        "the drained backend to leave",
        Duration::from_secs(10),
        || async {
            let list = admin_backends(lb.admin).await;
            (!list.iter().any(|b| b.address == gone.to_string())).then_some(())
        },
    )
    .await;
    eventually("the tunnel to end", Duration::from_secs(10), || async {
        (metric(lb.admin, "ebbtide_tunnels_open").await == 0.0).then_some(())
    })
    .await;
    assert_eq!(
        metric(
            lb.admin,
            "ebbtide_tunnels_closed_total{reason=\"going_away\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_after_tunnel_idle_timeout() {
    let b = sim_backend(&["--websocket"]).await;
    let lb = start_ebbtide(&base_config(&format!(
        "[upstream]\ntunnel_idle_timeout = \"1s\"\nresponse_timeout = \"500ms\"\n{}",
        backends_toml(&[b.addr], None)
    )));
    let (mut ws, _) = connect(lb.addr).await;
    // Traffic keeps it open past the response timeout and past the idle timeout.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        assert_eq!(echo(&mut ws, Message::text("x")).await, Message::text("x"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let quiet = Instant::now();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    // The last byte went by at most one pause (100 ms) before `quiet`.
    assert!(quiet.elapsed() >= Duration::from_millis(800));
    assert_eq!(close.unwrap().code, CloseCode::Away);
    eventually("the tunnel to end", Duration::from_secs(10), || async {
        (metric(lb.admin, "ebbtide_tunnels_closed_total{reason=\"idle\"}").await == 1.0)
            .then_some(())
    })
    .await;
    // The socket lived over 2 s; none of that is latency: only its handshake was a request,
    // and the backend's latency estimate took nothing from it.
    let lived = start.elapsed();
    let signals = admin_signals(lb.admin).await;
    assert_eq!(signals.completions, 1, "{signals:?}");
    assert!(
        signals.latency_ms.p99 < lived.as_millis() as f64 / 2.0,
        "the tunnel's {lived:?} counted as latency: {signals:?}"
    );
    let backend = admin_backends(lb.admin).await;
    assert!(
        backend[0].ewma_latency_ms < lived.as_millis() as f64 / 2.0,
        "{backend:?}"
    );
}

/// Sends `raw` on a new connection and returns the response head.
async fn raw_head(addr: SocketAddr, raw: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed before a response: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_is_not_tunnelled_other_protocols_get_501_and_a_refusing_backend_is_passed_through() {
    let ws = sim_backend(&["--websocket"]).await;
    let lb = start_ebbtide(&base_config(&backends_toml(&[ws.addr], None)));
    // h2c: served as plain HTTP/1.1, the upgrade headers not passed on.
    let head = raw_head(
        lb.addr,
        "GET /echo HTTP/1.1\r\nHost: lb.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
         Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("upgrade"), "{head}");
    // Another protocol: 501, naming what is tunnelled.
    let head = raw_head(
        lb.addr,
        "GET /x HTTP/1.1\r\nHost: lb.test\r\nConnection: upgrade\r\nUpgrade: irc/6.9\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 501"), "{head}");
    // A WebSocket upgrade must be a GET.
    let head = raw_head(
        lb.addr,
        "POST /x HTTP/1.1\r\nHost: lb.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Content-Length: 0\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // No tunnel was opened by any of these.
    assert_eq!(metric(lb.admin, "ebbtide_tunnels_open").await, 0.0);

    // A backend that does not speak WebSocket answers the handshake as a plain GET: its
    // answer goes to the client as it is, and nothing is tunnelled.
    let plain = sim_backend(&[]).await;
    let lb = start_ebbtide(&base_config(&backends_toml(&[plain.addr], None)));
    let handshake = "GET /echo HTTP/1.1\r\nHost: lb.test\r\nConnection: Upgrade\r\n\
                     Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let head = raw_head(lb.addr, handshake).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(in_flight(lb.admin, plain.addr).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_open_sockets_going_away_and_exits_0() {
    let b = sim_backend(&["--websocket"]).await;
    let mut lb = start_ebbtide(&base_config(&backends_toml(&[b.addr], None)));
    let (mut ws, _) = connect(lb.addr).await;
    assert_eq!(echo(&mut ws, Message::text("x")).await, Message::text("x"));
    sigterm(lb.child.id());
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close.unwrap().code, CloseCode::Away);
    drop(ws);
    let exit = lb.child.wait().unwrap();
    assert!(exit.success(), "exit status {exit}");
}
