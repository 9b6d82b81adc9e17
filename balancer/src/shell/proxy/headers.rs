//! Header hygiene: hop-by-hop headers removed both ways (RFC 9110 7.6.1), `X-Forwarded-*` set,
//! the head kept across tries, and the hash key a request is balanced by.

use super::local::LocalAnswer;
use crate::core::h1::{FieldKind, HOP_BY_HOP};
use crate::policies::hash_key;
use bytes::Bytes;
use ebbtide_config::HashKey;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use std::net::SocketAddr;

/// The client end of a connection, worked out once per connection instead of once per request:
/// its address and the `X-Forwarded-For` element that names it.
#[derive(Debug, Clone)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    forwarded_for: HeaderValue,
    /// The connection came over TLS: `X-Forwarded-Proto: https`.
    tls: bool,
}

impl Peer {
    /// The peer at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = addr.ip().to_string();
        Peer {
            addr,
            forwarded_for: HeaderValue::from_maybe_shared(Bytes::from(ip))
                .expect("an IP address is a valid header value"),
            tls: false,
        }
    }

    /// The client's IP address as text: what `X-Forwarded-For` gets.
    pub(crate) fn ip_text(&self) -> &[u8] {
        self.forwarded_for.as_bytes()
    }

    /// The same peer, connected over TLS.
    pub fn over_tls(self) -> Self {
        Peer { tls: true, ..self }
    }
}

impl From<SocketAddr> for Peer {
    fn from(addr: SocketAddr) -> Self {
        Peer::new(addr)
    }
}

/// The request line and headers, kept across tries.
pub(super) struct Head {
    pub(super) method: Method,
    pub(super) uri: Uri,
    pub(super) headers: HeaderMap,
    /// The client sent `TE: trailers`: it accepts trailers. TE is hop-by-hop (RFC 9110
    /// §10.1.4), so it is removed with the others, and sent again to HTTP/2 backends, where
    /// `TE: trailers` is the one value allowed (RFC 9113 §8.2.2) and gRPC servers require it.
    pub(super) te_trailers: bool,
}

pub(super) fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A flat copy of `h`, every value in order, to rebuild it with [`rebuild_headers`].
pub(super) fn keep_headers(h: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut v = Vec::with_capacity(h.len());
    v.extend(h.iter().map(|(k, val)| (k.clone(), val.clone())));
    v
}

/// The map [`keep_headers`] copied, with the same names and values in the same order.
pub(super) fn rebuild_headers(kept: Vec<(HeaderName, HeaderValue)>) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(kept.len());
    for (k, v) in kept {
        h.append(k, v);
    }
    h
}

/// The hash key of a request, for `consistent_hash`.
pub(crate) fn request_key<B>(key: &HashKey, req: &Request<B>) -> Option<u64> {
    match key {
        HashKey::Path => Some(hash_key(req.uri().path().as_bytes())),
        HashKey::Header(name) => req
            .headers()
            .get(name.as_str())
            .map(|v| hash_key(v.as_bytes())),
        HashKey::Cookie(name) => req
            .headers()
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| hash_key(v.as_bytes()))
            }),
    }
}

/// Whether `name` is hop-by-hop: the raw path's classification ([`FieldKind::of`], a length
/// dispatch and at most one compare), so that the two paths cannot disagree.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    FieldKind::of(name.as_str().as_bytes()).hop_by_hop()
}

/// Removes hop-by-hop headers (RFC 9110 7.6.1): the fixed list and every header a `Connection`
/// header names. Most messages carry none: one pass over the names (no hashing) finds that out
/// before any removal is tried.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Drops headers whose names hold `_` (NGINX's `underscores_in_headers off`): CGI and WSGI
/// backends read `X_Forwarded_For` and `X-Forwarded-For` as the same variable, so a client
/// could pass one beside ebbtide's own. Most requests have none: one pass over the names finds
/// that out first.
fn drop_underscored(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| k.as_str().contains('_')) {
        return;
    }
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    for name in names {
        headers.remove(name);
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Turns a client request head into the head sent to backends: origin-form target, hop-by-hop
/// headers removed, `Host` kept (or made from an HTTP/2 `:authority`), `X-Forwarded-For`
/// appended, `X-Forwarded-Proto` and `-Host` set.
/// The origin-form target for `uri` (RFC 9112 3.2.1: an absolute path, and the query). An
/// absolute-form target may have no path (`http://a`, `http://a?q`, or only a fragment, which
/// `http::Uri` drops: `http://a#f`); forwarded as it is, the request line would have an empty
/// target or one starting with `?`, which no server accepts. Found by fuzz/ (target `request`).
fn origin_form(uri: &Uri) -> http::uri::PathAndQuery {
    use http::uri::PathAndQuery;
    let Some(p) = uri.path_and_query() else {
        return PathAndQuery::from_static("/");
    };
    match p.as_str() {
        // An empty one reads as "/" here but is written as "" in the request line.
        "/" => PathAndQuery::from_static("/"),
        s if s.starts_with('/') || s == "*" => p.clone(),
        s => format!("/{s}")
            .parse()
            .unwrap_or_else(|_| PathAndQuery::from_static("/")),
    }
}

pub(super) fn prepare_head(parts: http::request::Parts, peer: &Peer) -> Result<Head, LocalAnswer> {
    let http::request::Parts {
        method,
        uri,
        mut headers,
        ..
    } = parts;
    let target = Uri::from(origin_form(&uri));
    let te_trailers = headers.get(header::TE).is_some_and(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().split(';').next() == Some("trailers"))
        })
    });
    strip_hop_by_hop(&mut headers);
    drop_underscored(&mut headers);
    // The target's authority (absolute-form, or HTTP/2's `:authority`) is the request's host:
    // it replaces `Host` (RFC 9112 3.2.2, RFC 9113 8.3.1).
    if let Some(a) = uri.authority() {
        match HeaderValue::from_str(a.as_str()) {
            Ok(v) => {
                headers.insert(header::HOST, v);
            }
            Err(_) => return Err(LocalAnswer::BadHost),
        }
    } else if !headers.contains_key(header::HOST) {
        return Err(LocalAnswer::NoHost);
    }
    let host = headers.get(header::HOST).cloned();
    let xff = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            HeaderValue::from_str(&format!("{prev}, {}", peer.addr.ip())).ok()
        }
        _ => Some(peer.forwarded_for.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    let proto = if peer.tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST.clone(), h);
    }
    Ok(Head {
        method,
        uri: target,
        headers,
        te_trailers,
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_fixed_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("close, x-secret, Keep-Alive"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn messages_without_hop_by_hop_headers_are_left_alone() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("1"));
        h.append("x-multi", HeaderValue::from_static("2"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        // A single non-standard hop-by-hop name is still found.
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn kept_headers_rebuild_the_same_map() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("example"));
        h.append("accept", HeaderValue::from_static("a"));
        h.append("x-b", HeaderValue::from_static("1"));
        h.append("accept", HeaderValue::from_static("b"));
        h.append("x-b", HeaderValue::from_static("2"));
        let rebuilt = rebuild_headers(keep_headers(&h));
        assert_eq!(rebuilt, h);
        let order = |m: &HeaderMap| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.to_str().unwrap()))
                .collect::<Vec<_>>()
        };
        assert_eq!(order(&rebuilt), order(&h));
    }

    #[test]
    fn forwarded_for_is_the_peer_or_appended_to_the_clients() {
        let peer = Peer::new("192.0.2.7:5555".parse().unwrap());
        let head = |xff: Option<&'static str>| {
            let mut b = Request::builder().uri("/x?y=1").header("host", "h");
            if let Some(v) = xff {
                b = b.header("x-forwarded-for", v);
            }
            prepare_head(b.body(()).unwrap().into_parts().0, &peer).unwrap()
        };
        assert_eq!(head(None).headers["x-forwarded-for"], "192.0.2.7");
        assert_eq!(
            head(Some("10.0.0.1")).headers["x-forwarded-for"],
            "10.0.0.1, 192.0.2.7"
        );
        assert_eq!(head(Some(" ")).headers["x-forwarded-for"], "192.0.2.7");
        let v6 = Peer::new("[2001:db8::1]:80".parse().unwrap());
        assert_eq!(v6.forwarded_for, "2001:db8::1");
        assert_eq!(head(None).uri, "/x?y=1");
        assert_eq!(head(None).headers["x-forwarded-host"], "h");
        assert_eq!(head(None).headers["x-forwarded-proto"], "http");
        let tls = Peer::new("192.0.2.7:5555".parse().unwrap()).over_tls();
        let req = Request::builder().uri("/").header("host", "h");
        let head = prepare_head(req.body(()).unwrap().into_parts().0, &tls).unwrap();
        assert_eq!(head.headers["x-forwarded-proto"], "https");
    }

    #[test]
    fn trace_context_and_request_id_pass_untouched() {
        // W3C Trace Context: a proxy that is not a tracer passes both headers on as they are.
        let peer = Peer::new("127.0.0.1:5555".parse().unwrap());
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ts = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
        let req = Request::builder()
            .uri("/")
            .header("host", "h")
            .header("traceparent", tp)
            .header("tracestate", ts)
            .header("x-request-id", "r-1")
            .body(())
            .unwrap();
        let head = prepare_head(req.into_parts().0, &peer).unwrap();
        assert_eq!(head.headers["traceparent"], tp);
        assert_eq!(head.headers["tracestate"], ts);
        assert_eq!(head.headers["x-request-id"], "r-1");
    }

    #[test]
    fn te_trailers_is_noted_and_te_removed() {
        let peer = Peer::new("192.0.2.7:5555".parse().unwrap());
        let head = |te: &'static str| {
            let b = Request::builder()
                .uri("/")
                .header("host", "h")
                .header("te", te);
            prepare_head(b.body(()).unwrap().into_parts().0, &peer).unwrap()
        };
        for (te, wanted) in [
            ("trailers", true),
            ("gzip, trailers", true),
            ("trailers;q=1", true),
            ("gzip", false),
            ("trailersx", false),
        ] {
            let h = head(te);
            assert_eq!(h.te_trailers, wanted, "{te}");
            assert!(!h.headers.contains_key("te"), "{te}");
        }
    }

    #[test]
    fn an_absolute_target_without_a_path_is_forwarded_as_slash() {
        let peer = Peer::new("192.0.2.7:5555".parse().unwrap());
        let target = |uri: &str| {
            let req = Request::builder().uri(uri).header("host", "h");
            prepare_head(req.body(()).unwrap().into_parts().0, &peer)
                .unwrap()
                .uri
        };
        // What fuzz/ found: `Ttp://b#test:81/p?q` was forwarded with an empty request target.
        assert_eq!(target("Ttp://b#test:81/p?q"), "/");
        assert_eq!(target("http://b"), "/");
        assert_eq!(target("http://b?q=1"), "/?q=1");
        assert_eq!(target("http://b/p?q"), "/p?q");
        assert_eq!(target("/p#f"), "/p");
        assert_eq!(target("*"), "*");
    }

    #[test]
    fn cookie_and_header_keys() {
        let req = Request::builder()
            .uri("/a/b?x=1")
            .header("cookie", "a=1; session=abc; z=2")
            .header("x-user", "u7")
            .body(())
            .unwrap();
        assert_eq!(request_key(&HashKey::Path, &req), Some(hash_key(b"/a/b")));
        assert_eq!(
            request_key(&HashKey::Cookie("session".into()), &req),
            Some(hash_key(b"abc"))
        );
        assert_eq!(
            request_key(&HashKey::Header("x-user".into()), &req),
            Some(hash_key(b"u7"))
        );
        assert_eq!(request_key(&HashKey::Header("x-none".into()), &req), None);
        assert_eq!(request_key(&HashKey::Cookie("nope".into()), &req), None);
    }
}
