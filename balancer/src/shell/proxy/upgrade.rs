//! Upgrades: a WebSocket asked for with `Upgrade: websocket` over HTTP/1.1 (RFC 6455 4.1) or
//! with an extended CONNECT over HTTP/2 (`:protocol websocket`, RFC 8441 4 and 5), tunnelled to
//! a backend over HTTP/1.1 as an `Upgrade: websocket` handshake. The backend's `101` goes back
//! as `101` to an HTTP/1.1 client and as `200` to an HTTP/2 one (RFC 8441 5: there is no
//! `Sec-WebSocket-Key`/`-Accept` on HTTP/2, so ebbtide makes up the key the backend wants and
//! drops its accept); then [`super::tunnel`] copies the bytes.
//!
//! - Only `websocket` is tunnelled. `Upgrade: h2c` is ignored (the request is served as plain
//!   HTTP/1.1, which RFC 9110 7.8 allows): an h2c connection to a backend would carry requests
//!   that ebbtide never sees, past its rules. Any other protocol gets `501`.
//! - The handshake is a request like any other until the backend answers: a backend slot, the
//!   response timeout for the backend's answer, and another backend only if the handshake never
//!   reached this one (no connection, or handed back unsent); once sent it is never retried, as
//!   the backend may have acted on it.
//! - A backend that answers anything but `101` has its response passed on as an ordinary one
//!   (a `403`, a `404`, a `426`), but for an HTTP/2 client a success other than `101`, which it
//!   would take for an open tunnel: that gets `502`.
//! - The handshake's own time goes to the signals and `ebbtide_request_duration_seconds` (it
//!   is a request answered); the tunnel that follows feeds no latency anywhere, and holds its
//!   backend slot until it closes.

use super::completion::{Body, Completion};
use super::headers::{prepare_head, request_key, strip_hop_by_hop};
use super::local::LocalAnswer;
use super::retry::{self, Attempt, TryOutcome, Verdict};
use super::tunnel::Tunnel;
use super::{Live, Peer, Proxy};
use crate::body::ProxyBody;
use crate::dispatch::Tried;
use crate::registry::Backend;
use bytes::Bytes;
use ebbtide_config::time::Nanos;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

/// What a request asks for in the way of a protocol switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ask {
    /// Nothing (or an `h2c` upgrade, which is ignored): an ordinary request.
    Plain,
    /// A WebSocket, over HTTP/1.1 (`Upgrade`) or HTTP/2 (extended CONNECT).
    WebSocket {
        /// Asked with an HTTP/2 extended CONNECT.
        h2: bool,
    },
    /// Refused with this answer.
    Refuse(LocalAnswer),
}

static SEC_WEBSOCKET_KEY: HeaderName = HeaderName::from_static("sec-websocket-key");
static SEC_WEBSOCKET_ACCEPT: HeaderName = HeaderName::from_static("sec-websocket-accept");
static SEC_WEBSOCKET_VERSION: HeaderName = HeaderName::from_static("sec-websocket-version");

/// Whether the comma-separated lists of the `name` fields of `h` hold `token` (case-insensitive).
fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// What `req` asks for. Cheap for ordinary requests: a method compare and one header lookup.
pub(super) fn classify<B>(req: &Request<B>) -> Ask {
    if req.method() == Method::CONNECT {
        return match req.extensions().get::<hyper::ext::Protocol>() {
            Some(p) if p.as_str().eq_ignore_ascii_case("websocket") => Ask::WebSocket { h2: true },
            Some(_) => Ask::Refuse(LocalAnswer::UpgradeNotSupported),
            None => Ask::Refuse(LocalAnswer::ConnectNotSupported),
        };
    }
    let h = req.headers();
    // An Upgrade not named in Connection is not one (RFC 9110 7.8), nor one in HTTP/1.0
    // (RFC 9110 7.8: "MUST ignore"); either way `prepare_head` strips it as hop-by-hop.
    if !h.contains_key(header::UPGRADE)
        || req.version() != Version::HTTP_11
        || !has_token(h, header::CONNECTION, "upgrade")
    {
        return Ask::Plain;
    }
    if has_token(h, header::UPGRADE, "websocket") {
        return Ask::WebSocket { h2: false };
    }
    let only_h2c = h
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&c| c == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .all(|t| t.eq_ignore_ascii_case(b"h2c"));
    if only_h2c {
        Ask::Plain
    } else {
        Ask::Refuse(LocalAnswer::UpgradeNotSupported)
    }
}

/// A `Sec-WebSocket-Key` for a handshake ebbtide makes on an HTTP/2 client's behalf: 16 bytes,
/// base64 (RFC 6455 4.1), from std's per-process random hash keys and a counter.
fn new_key() -> HeaderValue {
    use std::hash::BuildHasher;
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let state = std::collections::hash_map::RandomState::new();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&state.hash_one(n).to_le_bytes());
    bytes[8..].copy_from_slice(&state.hash_one(!n).to_le_bytes());
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(24);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let v = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(v >> (18 - 6 * i) & 63) as usize]);
        }
    }
    while out.len() % 4 != 0 {
        out.push(b'=');
    }
    HeaderValue::from_bytes(&out).expect("base64 is a valid header value")
}

/// How a handshake try went: its outcome for the retry rule, and the backend's answer if any.
type Handshake = (TryOutcome, Option<Response<Incoming>>);

impl Proxy {
    /// Tunnels a WebSocket (see the module doc).
    pub(super) async fn tunnel(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        peer: &Peer,
        start: Nanos,
        live: &Live,
        h2: bool,
    ) -> Response<Body> {
        // HTTP/2's CONNECT has no body (hyper resets one that says it has); its stream is the
        // tunnel.
        if !h2 && (req.method() != Method::GET || !req.body().is_end_stream()) {
            return self.local(start, None, LocalAnswer::BadUpgrade);
        }
        let settings = &live.settings;
        let key = settings
            .hash_key
            .as_ref()
            .and_then(|k| request_key(k, &req));
        let client_upgrade = hyper::upgrade::on(&mut req);
        let (parts, _) = req.into_parts();
        let mut head = match prepare_head(parts, peer) {
            Ok(h) => h,
            Err(answer) => return self.local(start, None, answer),
        };
        let h = &mut head.headers;
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if h2 {
            head.method = Method::GET;
            h.insert(SEC_WEBSOCKET_KEY.clone(), new_key());
            h.entry(SEC_WEBSOCKET_VERSION.clone())
                .or_insert(HeaderValue::from_static("13"));
        }
        let max_attempts = settings.retries.max_attempts.max(1);
        let limit = settings.response_timeout;
        let mut tried = Tried::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let slot = match self.dispatcher.acquire(key, tried).await {
                Ok(s) => s,
                Err(shed) => return self.shed(start, shed),
            };
            let backend = slot.backend().clone();
            let mut up = Request::new(Empty::<Bytes>::new());
            *up.method_mut() = head.method.clone();
            *up.uri_mut() = head.uri.clone();
            *up.headers_mut() = head.headers.clone();
            let sent_at = self.clock.now();
            let in_flight = backend.in_flight();
            let (outcome, answered) = self
                .handshake(&backend, up, limit, sent_at, in_flight)
                .await;
            let now = self.clock.now();
            // Sent once, never again: only a handshake that reached no backend goes elsewhere.
            let facts = Attempt {
                idempotent: false,
                replayable: true,
                number: attempt,
                max_attempts,
                deadline_passed: false,
            };
            let verdict = match retry::verdict(outcome, facts) {
                Verdict::Retry if self.budget_allows(&live.budget, now) => {
                    tried.insert(backend.id);
                    continue;
                }
                Verdict::Retry => retry::without_retry(outcome),
                v => v,
            };
            let mut resp = match (verdict, answered) {
                (Verdict::PassThrough, Some(resp)) => resp,
                (Verdict::Answer(answer), _) => return self.local(start, Some(slot), answer),
                (v, _) => unreachable!("{v:?} after {outcome:?}"),
            };
            let status = resp.status();
            backend.count_response(status.as_u16());
            let switched = status == StatusCode::SWITCHING_PROTOCOLS
                && has_token(resp.headers(), header::UPGRADE, "websocket");
            if !switched {
                if status.is_server_error() && settings.outlier.count_5xx {
                    self.on_failure(&backend, None);
                } else {
                    backend.on_success(now.saturating_sub(sent_at), in_flight, now);
                }
                if h2 && (status.is_success() || status.is_informational()) {
                    return self.local(start, Some(slot), LocalAnswer::UpgradeRefused);
                }
                strip_hop_by_hop(resp.headers_mut());
                *resp.version_mut() = Version::default();
                let guard = Completion::new(self.clone(), start, Some(slot), None);
                return resp.map(|b| ProxyBody::upstream(b, guard));
            }
            // Switched: the handshake is answered; the slot goes with the tunnel.
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            let mut headers = std::mem::take(resp.headers_mut());
            strip_hop_by_hop(&mut headers);
            let mut out = Response::new(ProxyBody::full(
                Bytes::new(),
                Some(Completion::new(self.clone(), start, None, None)),
            ));
            if h2 {
                headers.remove(&SEC_WEBSOCKET_ACCEPT);
            } else {
                *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            *out.headers_mut() = headers;
            let tunnel = Tunnel::open(self.clone(), slot);
            tokio::spawn(tunnel.run(
                client_upgrade,
                backend_upgrade,
                limit,
                settings.tunnel_idle_timeout,
            ));
            return out;
        }
    }

    /// One handshake try on a new connection to `backend` (an upgraded connection is never
    /// pooled), driven by a task of its own that completes the backend's side of the upgrade.
    async fn handshake(
        &self,
        backend: &Arc<Backend>,
        req: Request<Empty<Bytes>>,
        limit: std::time::Duration,
        sent_at: Nanos,
        in_flight: u32,
    ) -> Handshake {
        let stream = match backend.pool.connect_tunnel().await {
            Ok(s) => s,
            Err(e) => {
                if !e.is_local() {
                    self.on_failure(backend, None);
                }
                tracing::warn!(backend = %backend.address, error = %e, "no connection to the backend for an upgrade");
                return (TryOutcome::NoConnection, None);
            }
        };
        let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
        {
            Ok(x) => x,
            Err(e) => {
                self.on_failure(backend, None);
                tracing::warn!(backend = %backend.address, error = %e, "HTTP/1 handshake with the backend failed");
                return (TryOutcome::NoConnection, None);
            }
        };
        let address = backend.address.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(backend = %address, error = %e, "upgrade connection to the backend ended with an error");
            }
        });
        match tokio::time::timeout(limit, sender.try_send_request(req)).await {
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                (TryOutcome::Answered { status }, Some(resp))
            }
            Ok(Err(mut e)) => {
                if e.take_message().is_some() {
                    self.on_failure(backend, None);
                    (TryOutcome::ConnectionUnusableUnsent, None)
                } else {
                    self.on_failure(backend, Some((sent_at, in_flight)));
                    tracing::warn!(backend = %backend.address, error = %e.error(), "backend closed the connection without answering an upgrade");
                    (TryOutcome::ClosedBeforeHeaders, None)
                }
            }
            Err(_) => {
                self.on_failure(backend, Some((sent_at, in_flight)));
                tracing::warn!(backend = %backend.address, timeout = ?limit, "backend did not answer an upgrade in time");
                (TryOutcome::TryTimedOut, None)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/ws").version(version);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn websocket_is_tunnelled_h2c_ignored_and_other_protocols_refused() {
        let v11 = Version::HTTP_11;
        let ws = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ];
        assert_eq!(classify(&req(v11, &ws)), Ask::WebSocket { h2: false });
        let h2c = [
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
        ];
        assert_eq!(classify(&req(v11, &h2c)), Ask::Plain);
        let other = [("connection", "upgrade"), ("upgrade", "foo/2, h2c")];
        assert_eq!(
            classify(&req(v11, &other)),
            Ask::Refuse(LocalAnswer::UpgradeNotSupported)
        );
        // Not named in Connection, or in HTTP/1.0: not an upgrade at all.
        assert_eq!(classify(&req(v11, &[("upgrade", "websocket")])), Ask::Plain);
        assert_eq!(classify(&req(Version::HTTP_10, &ws)), Ask::Plain);
        assert_eq!(classify(&req(v11, &[])), Ask::Plain);
    }

    #[test]
    fn connect_is_refused_unless_an_extended_connect_of_a_websocket() {
        let connect = |protocol: Option<&str>| {
            let mut r = Request::builder()
                .method(Method::CONNECT)
                .uri("https://example/chat")
                .version(Version::HTTP_2)
                .body(())
                .unwrap();
            if let Some(p) = protocol {
                r.extensions_mut().insert(hyper::ext::Protocol::from(p));
            }
            classify(&r)
        };
        assert_eq!(connect(Some("websocket")), Ask::WebSocket { h2: true });
        assert_eq!(
            connect(Some("connect-udp")),
            Ask::Refuse(LocalAnswer::UpgradeNotSupported)
        );
        assert_eq!(connect(None), Ask::Refuse(LocalAnswer::ConnectNotSupported));
    }

    #[test]
    fn made_up_keys_are_16_bytes_of_base64_and_differ() {
        let a = new_key();
        let b = new_key();
        assert_ne!(a, b);
        for k in [a, b] {
            let s = k.to_str().unwrap();
            assert_eq!(s.len(), 24, "{s}");
            assert!(s.ends_with("=="), "16 bytes leave two pad characters: {s}");
            assert!(s[..22]
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/'));
        }
    }
}
