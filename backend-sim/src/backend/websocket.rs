//! `ebbtide backend --websocket`: a WebSocket echo server (RFC 6455), for tests and for trying
//! ebbtide's tunnels. An `Upgrade: websocket` GET on any path is answered `101` (with
//! `x-backend-id`), then every text or binary message comes back as it was sent, pings are
//! answered by tungstenite, and a close from the client is answered with a close.

use super::SimBody;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Largest message echoed: 64 MiB (tungstenite's default), so a 10 MB test message fits.
const MAX_MESSAGE: usize = 64 << 20;

/// Whether `req` asks for a WebSocket (RFC 6455 4.1: `Connection: upgrade`,
/// `Upgrade: websocket`, a `Sec-WebSocket-Key`).
pub(super) fn is_upgrade(req: &Request<Incoming>) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    has(header::CONNECTION, "upgrade")
        && has(header::UPGRADE, "websocket")
        && req.headers().contains_key(header::SEC_WEBSOCKET_KEY)
}

/// Answers the handshake with `101` and echoes messages on the upgraded connection in a task of
/// its own; `open` counts the sockets open.
pub(super) fn accept(
    id: &str,
    mut req: Request<Incoming>,
    open: Arc<AtomicU64>,
) -> Response<SimBody> {
    let key = req.headers()[header::SEC_WEBSOCKET_KEY].as_bytes().to_vec();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!("websocket upgrade failed: {e}");
                return;
            }
        };
        open.fetch_add(1, Ordering::SeqCst);
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        while let Some(msg) = ws.next().await {
            let reply = match msg {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => m,
                // tungstenite queues the pong and the close reply itself; flushing sends them.
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {
                    let _ = ws.flush().await;
                    continue;
                }
                Ok(Message::Close(_)) => {
                    let _ = ws.flush().await;
                    continue;
                }
                Err(_) => break,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
        open.fetch_sub(1, Ordering::SeqCst);
    });
    let mut resp = Response::new(SimBody::bytes(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(&key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("x-backend-id", v);
    }
    resp
}
