//! The differential oracle for `core::h1`: one HTTP/1.1 connection's bytes through today's path
//! (hyper's server as `ebbtide serve` sets it up, then the proxy's checks and head rewriting,
//! [`super::fuzz_forwarded_head`]) and through the new one (`core::h1::request` and
//! `core::h1::edit`), and the comparison of the two verdicts. The fuzz targets in fuzz/
//! (`request` drives [`serve_h1`], `h1` drives [`compare`]) and the corpus test in
//! `h1_differential` share it. Built only for tests and with the `fuzzing` feature.

use super::Peer;
use crate::core::h1::{self, request::RequestBody, HeadError, Limits, Parsed};
use bytes::Bytes;
use http::{Request, Response};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::convert::Infallible;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `[listener]` defaults: max_header_bytes, max_uri_bytes (max_headers is hyper's 100).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// `[listener] max_uri_bytes`'s default.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The client address the oracle's requests come from.
pub const PEER: &str = "127.0.0.1:40000";

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

/// Serves `data` as one HTTP/1.1 connection with hyper's server configured as `ebbtide serve`
/// configures it (head buffer `MAX_HEADER_BYTES`, 100 headers, no header timeout), calling
/// `on_request` with each request head it parses (and whether it is the connection's first),
/// answering each with an empty 200. Returns the bytes hyper wrote back.
pub fn serve_h1(data: &[u8], on_request: impl FnMut(Request<()>, bool)) -> Vec<u8> {
    let on_request = RefCell::new(on_request);
    let first = std::cell::Cell::new(true);
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let (server, mut client) = tokio::io::duplex(64 * 1024);
            let service = service_fn(|req: Request<hyper::body::Incoming>| {
                let is_first = first.replace(false);
                (on_request.borrow_mut())(req.map(|_| ()), is_first);
                async { Ok::<_, Infallible>(Response::new(http_body_util::Empty::<Bytes>::new())) }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .header_read_timeout(None)
                .max_buf_size(MAX_HEADER_BYTES);
            let conn = builder.serve_connection(TokioIo::new(server), service);
            let mut sink = Vec::new();
            let talk = async {
                let _ = client.write_all(data).await;
                let _ = client.shutdown().await;
                let _ = client.read_to_end(&mut sink).await;
            };
            let _ = tokio::join!(conn, talk);
            sink
        })
    })
}

/// A chunked request body as hyper's server decodes it today: `body` after a valid head with
/// `Transfer-Encoding: chunked`; the data, or None if hyper refused it or it ended early.
pub fn today_chunked(body: &[u8]) -> Option<Vec<u8>> {
    use http_body_util::BodyExt;
    let mut data = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    data.extend_from_slice(body);
    let got = RefCell::new(None);
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let (server, mut client) = tokio::io::duplex(64 * 1024);
            let first = std::cell::Cell::new(true);
            let service = service_fn(|req: Request<hyper::body::Incoming>| {
                let got = &got;
                // Only the first request's body: one pipelined after it has its own.
                let is_first = first.replace(false);
                async move {
                    let body = req.into_body().collect().await;
                    if is_first {
                        *got.borrow_mut() = Some(body.ok().map(|b| b.to_bytes().to_vec()));
                    }
                    Ok::<_, Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            // The client's end of the input must not end the exchange before the body is read.
            builder
                .header_read_timeout(None)
                .half_close(true)
                .max_buf_size(MAX_HEADER_BYTES);
            let conn = builder.serve_connection(TokioIo::new(server), service);
            let talk = async {
                let _ = client.write_all(&data).await;
                let _ = client.shutdown().await;
                let mut sink = Vec::new();
                let _ = client.read_to_end(&mut sink).await;
            };
            let _ = tokio::join!(conn, talk);
        })
    });
    got.into_inner().flatten()
}

/// How a forwarded request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// `Content-Length`.
    Length(u64),
    /// Chunked.
    Chunked,
}

/// The head sent to a backend, as a set: method, target, header (name, value) pairs sorted
/// (names lowercased; `Content-Length` and `Transfer-Encoding` left out: see `framing`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The method.
    pub method: String,
    /// The origin-form target.
    pub target: String,
    /// The fields, sorted.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body's framing.
    pub framing: Framing,
}

/// A path's verdict on the first request of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forwarded, with this head.
    Forwarded(Forwarded),
    /// Answered with this status and not forwarded.
    Refused(u16),
    /// Closed without an answer (an incomplete head, or hyper closing on an error it does
    /// not answer, such as an HTTP/2 preface).
    Closed,
}

/// Today's verdict on `data`'s first request.
pub fn today(data: &[u8]) -> Verdict {
    let peer = Peer::new(PEER.parse().expect("the oracle's peer"));
    let mut verdict = None;
    let wrote = serve_h1(data, |req, first| {
        if !first {
            return;
        }
        let framing = if req.headers().contains_key(http::header::TRANSFER_ENCODING) {
            Framing::Chunked
        } else if let Some(n) = super::headers::content_length(req.headers()) {
            Framing::Length(n)
        } else {
            Framing::None
        };
        verdict = Some(
            match super::fuzz_forwarded_head(req, &peer, MAX_URI_BYTES) {
                Ok((method, uri, headers)) => {
                    let mut h: Vec<(String, Vec<u8>)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                        .filter(|(k, _)| k != "content-length" && k != "transfer-encoding")
                        .collect();
                    h.sort();
                    Verdict::Forwarded(Forwarded {
                        method: method.to_string(),
                        target: uri.to_string(),
                        headers: h,
                        framing,
                    })
                }
                Err(status) => Verdict::Refused(status.as_u16()),
            },
        );
    });
    verdict.unwrap_or_else(|| match status_of(&wrote) {
        Some(s) => Verdict::Refused(s),
        None => Verdict::Closed,
    })
}

fn status_of(buf: &[u8]) -> Option<u16> {
    std::str::from_utf8(buf.strip_prefix(b"HTTP/1.1 ")?.get(..3)?)
        .ok()?
        .parse()
        .ok()
}

/// The new path's verdict on `data`'s first request, and its error if it refused it. The
/// forwarded head is the editor's output read back by httparse.
pub fn new_path(data: &[u8]) -> (Verdict, Option<String>) {
    let (v, e) = new_path_detail(data);
    (v, e.map(|e| format!("{e:?}")))
}

fn new_path_detail(data: &[u8]) -> (Verdict, Option<HeadError>) {
    let limits = Limits {
        max_head_bytes: MAX_HEADER_BYTES,
        max_fields: 100,
        max_target_bytes: MAX_URI_BYTES,
    };
    let mut fields = Vec::new();
    let (head, _) = match h1::request::parse_request(data, &limits, &mut fields) {
        Ok(Parsed::Complete(head, len)) => (head, len),
        Ok(Parsed::Partial) => return (Verdict::Closed, None),
        Err(e) => return (Verdict::Refused(e.status()), Some(e)),
    };
    let mut out = Vec::new();
    let fwd = h1::edit::Forwarding {
        client_ip: b"127.0.0.1",
        tls: false,
    };
    h1::edit::write_request(data, &head, &fields, fwd, &mut out);
    let mut parsed = [httparse::EMPTY_HEADER; 256];
    let mut back = httparse::Request::new(&mut parsed);
    match back.parse(&out) {
        Ok(httparse::Status::Complete(n)) if n == out.len() => {}
        other => panic!(
            "the new path's forwarded head does not parse back ({other:?}):\n{}",
            String::from_utf8_lossy(&out)
        ),
    }
    // What the new path forwards, it would forward again with the same target and framing.
    // (With room for the fields the editor adds: a head at the limits grows by them.)
    let roomy = Limits {
        max_head_bytes: usize::MAX,
        max_fields: 1000,
        max_target_bytes: usize::MAX,
    };
    let mut again = Vec::new();
    match h1::request::parse_request(&out, &roomy, &mut again) {
        Ok(Parsed::Complete(h, n)) => {
            assert_eq!(n, out.len(), "trailing bytes");
            assert_eq!(h.body, head.body, "framing changed");
            assert_eq!(h.target.of(&out), back.path.unwrap_or_default().as_bytes());
        }
        other => panic!(
            "the new path refuses its own forwarded head ({other:?}):\n{}",
            String::from_utf8_lossy(&out)
        ),
    }
    let mut h: Vec<(String, Vec<u8>)> = back
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .filter(|(k, _)| k != "content-length" && k != "transfer-encoding")
        .collect();
    h.sort();
    let framing = match head.body {
        RequestBody::None => Framing::None,
        RequestBody::Length(n) => Framing::Length(n),
        RequestBody::Chunked => Framing::Chunked,
    };
    (
        Verdict::Forwarded(Forwarded {
            method: back.method.unwrap_or_default().to_string(),
            target: back.path.unwrap_or_default().to_string(),
            headers: h,
            framing,
        }),
        None,
    )
}

/// How the two paths' verdicts on one input compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// The same verdict (and, forwarded, the same head and framing).
    Same,
    /// Both refuse; hyper closes without an answer where the new path answers 400.
    BothRefuse,
    /// The new path refuses on purpose what today's forwards (the error's name).
    Stricter(String),
    /// A difference that is not allowed.
    Diverge(String),
}

/// How many `X-Forwarded-For` field lines `data`'s first request has.
fn xff_lines(data: &[u8]) -> usize {
    let mut parsed = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Request::new(&mut parsed);
    let _ = r.parse(data);
    r.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
        .count()
}

/// Runs `data` through both paths and compares.
pub fn compare(data: &[u8]) -> Comparison {
    let old = today(data);
    let (new, err) = new_path_detail(data);
    compare_verdicts(data, &old, &new, err)
}

/// [`compare`] on verdicts already made.
fn compare_verdicts(
    data: &[u8],
    old: &Verdict,
    new: &Verdict,
    err: Option<HeadError>,
) -> Comparison {
    use Verdict::*;
    match (old, new) {
        (Forwarded(a), Forwarded(b)) => {
            let (mut a, mut b) = (a.clone(), b.clone());
            if xff_lines(data) > 1 {
                // Deliberate: all the client's lines joined, where today keeps the first.
                let xff = |f: &mut self::Forwarded| {
                    let v = f
                        .headers
                        .iter()
                        .find(|(k, _)| k == "x-forwarded-for")
                        .cloned();
                    f.headers.retain(|(k, _)| k != "x-forwarded-for");
                    v
                };
                let (va, vb) = (xff(&mut a), xff(&mut b));
                let ends = |v: &Option<(String, Vec<u8>)>| {
                    v.as_ref().is_some_and(|(_, v)| v.ends_with(b"127.0.0.1"))
                };
                if !ends(&va) || !ends(&vb) {
                    return Comparison::Diverge(format!("X-Forwarded-For: {va:?} vs {vb:?}"));
                }
            }
            if a == b {
                Comparison::Same
            } else {
                Comparison::Diverge(format!(
                    "forwarded heads differ:\n today {a:?}\n new   {b:?}"
                ))
            }
        }
        (Forwarded(_), Refused(_)) => match err {
            Some(e) if e.stricter_than_today() => Comparison::Stricter(format!("{e:?}")),
            e => Comparison::Diverge(format!("today forwards, new refuses with {e:?}")),
        },
        (Refused(a), Refused(b)) if a == b => Comparison::Same,
        (Closed, Closed) => Comparison::Same,
        (Closed, Refused(400)) => Comparison::BothRefuse,
        // Past the head limit, where hyper stops reading depends on how its buffer grew: it
        // may see a syntax error the new parser, exact at the limit, never reaches, or not.
        (Refused(400 | 431), Refused(400 | 431)) if data.len() > MAX_HEADER_BYTES => {
            Comparison::BothRefuse
        }
        (old, new) => Comparison::Diverge(format!("today {old:?}, new {new:?} ({err:?})")),
    }
}

/// A chunked body through hyper's decoder ([`today_chunked`]) and the new one: the same data
/// where both take it, and the new one refusing nothing hyper takes but what it refuses on
/// purpose: control bytes in a chunk extension (RFC 9112 7.1.1: tokens and quoted strings;
/// hyper skips extensions unread) and bare LFs or malformed lines in the trailer section
/// (hyper reads trailers loosely).
pub fn compare_chunked(body: &[u8]) -> Comparison {
    use h1::chunked::ChunkError::*;
    let old = today_chunked(body);
    let new = h1::chunked::decode_all(body, 7);
    match (old, new) {
        (Some(a), Ok((b, Some(_)))) if a == b => Comparison::Same,
        (None, Ok((_, None))) | (None, Err(_)) => Comparison::Same,
        (Some(_), Err(BadExtension)) => Comparison::Stricter("chunked: BadExtension".into()),
        (Some(_), Err(BadLineEnd)) if trailers_start(body) => {
            Comparison::Stricter("chunked: BadLineEnd in trailers".into())
        }
        (Some(_), Err(BadTrailer)) => Comparison::Stricter("chunked: BadTrailer".into()),
        (old, new) => Comparison::Diverge(format!(
            "chunked body: today {:?}, new {new:?}",
            old.map(|v| String::from_utf8_lossy(&v).into_owned())
        )),
    }
}

/// Whether the new decoder got to the trailer section of `body` (its last-chunk line read).
fn trailers_start(body: &[u8]) -> bool {
    let mut d = h1::chunked::ChunkedDecoder::new();
    let mut pos = 0;
    while pos < body.len() {
        match d.feed(&body[pos..]) {
            Ok(s) if s.consumed > 0 && !s.done => pos += s.consumed,
            _ => break,
        }
    }
    d.in_trailers()
}

/// The chunked decoder on `data` fed in pieces of `piece` bytes, checked against the same
/// decoder fed all at once and one byte at a time: the same data, end and error whatever the
/// pieces. Returns the decoded data and where the body ended, or the error's name.
pub fn chunked(data: &[u8], piece: usize) -> Result<(Vec<u8>, Option<usize>), String> {
    let whole = h1::chunked::decode_all(data, data.len().max(1));
    let pieces = h1::chunked::decode_all(data, piece);
    let bytes = h1::chunked::decode_all(data, 1);
    assert_eq!(whole, pieces, "fed whole vs in pieces of {piece}");
    assert_eq!(whole, bytes, "fed whole vs byte by byte");
    if let Ok((out, end)) = &whole {
        assert!(
            out.len() <= end.unwrap_or(data.len()),
            "more data than input"
        );
    }
    whole.map_err(|e| format!("{e:?}"))
}

/// The response parser and editor on `data` (the answer to a HEAD if `to_head`): no panic, and
/// a parsed head written back out reads again (httparse and the new parser) with the same
/// status and framing. Returns the status, or None if refused or incomplete.
pub fn response(data: &[u8], to_head: bool) -> Option<u16> {
    let limits = Limits {
        max_head_bytes: MAX_HEADER_BYTES,
        max_fields: 100,
        max_target_bytes: MAX_URI_BYTES,
    };
    let mut fields = Vec::new();
    let Ok(Parsed::Complete(head, len)) =
        h1::response::parse_response(data, &limits, to_head, &mut fields)
    else {
        return None;
    };
    assert!(len <= data.len());
    for rechunk in [false, true] {
        let mut out = Vec::new();
        h1::edit::write_response(data, &head, &fields, rechunk, &mut out);
        let mut parsed = [httparse::EMPTY_HEADER; 256];
        let mut back = httparse::Response::new(&mut parsed);
        match back.parse(&out) {
            Ok(httparse::Status::Complete(n)) if n == out.len() => {}
            other => panic!(
                "the edited response does not parse back ({other:?}):\n{}",
                String::from_utf8_lossy(&out)
            ),
        }
        assert_eq!(back.code, Some(head.status));
        let mut again = Vec::new();
        match h1::response::parse_response(&out, &limits, to_head, &mut again) {
            Ok(Parsed::Complete(h, _)) => {
                use h1::response::ResponseBody::*;
                let same = match (head.body, h.body) {
                    // A body until close goes out chunked (rechunk) or until close.
                    (Close, Chunked) => rechunk,
                    (a, b) => a == b,
                };
                assert!(same, "framing {:?} became {:?}", head.body, h.body);
            }
            other => panic!(
                "the new parser refuses its own edited response ({other:?}):\n{}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    Some(head.status)
}
