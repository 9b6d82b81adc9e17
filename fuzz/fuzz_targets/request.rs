//! The request path up to the choice of a backend: the input is the bytes a client sends on one
//! HTTP/1.1 connection, served by hyper's HTTP/1.1 server as `ebbtide serve` sets it up (32 KiB
//! head buffer, 100 headers; `proxy::oracle::serve_h1`), each request head it parses put through the proxy's checks and
//! head rewriting (`proxy::fuzz_forwarded_head`: target length, CONNECT, `strict::check`,
//! hop-by-hop removal, `Host`, `X-Forwarded-*`). Never a panic, and, where a head is forwarded:
//! - differential, input side: the first request as hyper parsed it is what `httparse` alone
//!   reads from the same bytes (method, target, every header name and value, but for the
//!   `Content-Length` hyper drops beside `Transfer-Encoding` or keeps once when repeated with one
//!   number);
//! - differential, output side: the head ebbtide would send, serialized, is read back by
//!   `httparse` as the same head, complete, with one `Host`, no header name with `_`, no
//!   `Content-Length` beside `Transfer-Encoding`, and ebbtide itself would forward it again.
#![no_main]

use ebbtide_balancer::proxy::oracle::{serve_h1, MAX_URI_BYTES};
use ebbtide_balancer::proxy::{fuzz_forwarded_head, Peer};
use http::{HeaderMap, Method, Request, Uri};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The harness is `proxy::oracle::serve_h1`, shared with the `h1` target and the
    // differential corpus test.
    let peer = Peer::new(ebbtide_balancer::proxy::oracle::PEER.parse().unwrap());
    serve_h1(data, |req, first| check(req, &peer, first.then_some(data)));
});

/// The properties above for one parsed request; `raw` is the connection's input when this is
/// its first request.
fn check(req: Request<()>, peer: &Peer, raw: Option<&[u8]>) {
    if let Some(raw) = raw {
        same_as_httparse(&req, raw);
    }
    let (method, uri, headers) = match fuzz_forwarded_head(req, peer, MAX_URI_BYTES) {
        Ok(h) => h,
        Err(status) => {
            assert!(
                status.is_client_error() || status == http::StatusCode::NOT_IMPLEMENTED,
                "a refused head gets a 4xx or 501, not {status}"
            );
            return;
        }
    };
    assert!(uri.authority().is_none(), "forwarded in origin-form: {uri}");
    assert_eq!(
        headers.get_all(http::header::HOST).iter().count(),
        1,
        "one Host"
    );
    assert!(
        !(headers.contains_key(http::header::CONTENT_LENGTH)
            && headers.contains_key(http::header::TRANSFER_ENCODING)),
        "Content-Length beside Transfer-Encoding forwarded"
    );
    assert!(
        headers.keys().all(|k| !k.as_str().contains('_')),
        "a header name with _ forwarded"
    );
    let wire = serialize(&method, &uri, &headers);
    let mut parsed = [httparse::EMPTY_HEADER; 256];
    let mut back = httparse::Request::new(&mut parsed);
    match back.parse(&wire) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, wire.len(), "trailing bytes"),
        other => panic!(
            "the forwarded head does not parse back ({other:?}):\n{}",
            String::from_utf8_lossy(&wire)
        ),
    }
    assert_eq!(back.method, Some(method.as_str()));
    assert_eq!(back.path, Some(uri.to_string().as_str()));
    assert_eq!(sorted_httparse(back.headers), sorted_map(&headers));
    // What ebbtide forwards, it would forward again unchanged in its request line and Host.
    let mut again = Request::builder().method(method.clone()).uri(uri.clone());
    for (k, v) in &headers {
        again = again.header(k, v);
    }
    let (m2, u2, h2) = fuzz_forwarded_head(again.body(()).unwrap(), peer, MAX_URI_BYTES)
        .unwrap_or_else(|s| panic!("ebbtide refuses its own forwarded head with {s}"));
    assert_eq!((&m2, &u2), (&method, &uri));
    assert_eq!(h2.get(http::header::HOST), headers.get(http::header::HOST));
}

/// hyper's reading of the first request is httparse's.
fn same_as_httparse(req: &Request<()>, raw: &[u8]) {
    let mut parsed = [httparse::EMPTY_HEADER; 128];
    let mut alone = httparse::Request::new(&mut parsed);
    match alone.parse(raw) {
        Ok(httparse::Status::Complete(_)) => {}
        other => panic!("hyper took a request head that httparse does not ({other:?})"),
    }
    assert_eq!(alone.method, Some(req.method().as_str()), "method");
    let target = req.uri().to_string();
    if alone.path != Some(target.as_str()) {
        // hyper normalises some targets (an absolute-form URI with an empty path gains "/");
        // the target must still name the same thing.
        let reparsed: Uri = alone.path.unwrap_or("").parse().expect("httparse's target");
        assert_eq!(&reparsed, req.uri(), "target");
    }
    let mut raw_headers = sorted_httparse(alone.headers);
    if req.headers().contains_key(http::header::TRANSFER_ENCODING) {
        // hyper drops Content-Length beside Transfer-Encoding (RFC 9112 6.3: the chunked
        // framing wins; the connection is closed after the response).
        raw_headers.retain(|(k, _)| k != "content-length");
    }
    // ... and keeps one of several Content-Lengths of the same number ("5" and "05": RFC 9110
    // 8.6); unequal ones it refuses. Compared as numbers.
    let number = |h: &mut Vec<(String, Vec<u8>)>| {
        for (k, v) in h.iter_mut() {
            if k == "content-length" {
                if let Some(n) = std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                {
                    *v = n.to_string().into_bytes();
                }
            }
        }
        h.sort();
        h.dedup_by(|a, b| a.0 == "content-length" && a == b);
    };
    let mut hyper_headers = sorted_map(req.headers());
    number(&mut raw_headers);
    number(&mut hyper_headers);
    assert_eq!(raw_headers, hyper_headers, "headers");
}

fn serialize(method: &Method, uri: &Uri, headers: &HeaderMap) -> Vec<u8> {
    let mut w = format!("{method} {uri} HTTP/1.1\r\n").into_bytes();
    for (k, v) in headers {
        w.extend_from_slice(k.as_str().as_bytes());
        w.extend_from_slice(b": ");
        w.extend_from_slice(v.as_bytes());
        w.extend_from_slice(b"\r\n");
    }
    w.extend_from_slice(b"\r\n");
    w
}

fn sorted_httparse(h: &[httparse::Header<'_>]) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = h
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    v.sort();
    v
}

fn sorted_map(h: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = h
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    v.sort();
    v
}
