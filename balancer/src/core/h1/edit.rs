//! The outgoing head, written by copying the field lines that pass unchanged and writing the
//! few that the proxy sets, instead of building a map and encoding it again.
//!
//! What changes is what `shell::proxy::headers::prepare_head` (requests) and
//! `strip_hop_by_hop` (responses) change today:
//! - the request line: the method as sent, the target in origin-form (an absolute-form
//!   target's path and query, `/` if it has none; a fragment dropped), `HTTP/1.1`;
//! - hop-by-hop fields removed (RFC 9110 7.6.1), and every field `Connection` names, but
//!   `Content-Length`: framing is the editor's to write (`Transfer-Encoding: chunked` again for
//!   a chunked body, as hyper's client does);
//! - request fields whose names hold `_` removed (`headers::drop_underscored`);
//! - `Host` replaced by an absolute-form target's authority;
//! - `X-Forwarded-For` the client's list with the peer appended (all of the client's lines
//!   joined, RFC 9110 5.3; today only the first line is kept: a deliberate difference), or the
//!   peer alone if the client's is empty or not visible ASCII; `X-Forwarded-Proto` and
//!   `X-Forwarded-Host` set (the client's removed).

use super::request::{RequestBody, RequestHead, Target};
use super::response::{ResponseBody, ResponseHead};
use super::{list, visible, Field, FieldKind};

/// Who the client is, for `X-Forwarded-*`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarding<'a> {
    /// The client's address as text (`192.0.2.7`, `2001:db8::1`).
    pub(crate) client_ip: &'a [u8],
    /// The client connection came over TLS.
    pub(crate) tls: bool,
}

/// The names `Connection` lists in `fields`, when the head said there are some.
fn connection_names<'b>(buf: &'b [u8], fields: &[Field], any: bool) -> Vec<&'b [u8]> {
    if !any {
        return Vec::new();
    }
    fields
        .iter()
        .filter(|f| f.kind == FieldKind::Connection && visible(f.value.of(buf)))
        .flat_map(|f| list(f.value.of(buf)))
        .collect()
}

fn named(names: &[&[u8]], name: &[u8]) -> bool {
    names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Whether a field passes to the other side as it is (`Content-Length` always does).
fn passes(buf: &[u8], f: &Field, names: &[&[u8]]) -> bool {
    f.kind == FieldKind::ContentLength
        || !(f.kind.hop_by_hop() || (!names.is_empty() && named(names, f.name.of(buf))))
}

/// Appends to `out` the head to send to a backend for the request `head` parsed from `buf`.
pub(crate) fn write_request(
    buf: &[u8],
    head: &RequestHead,
    fields: &[Field],
    fwd: Forwarding<'_>,
    out: &mut Vec<u8>,
) {
    let names = connection_names(buf, fields, head.connection_names);
    out.extend_from_slice(head.method.of(buf));
    out.push(b' ');
    let host = match head.form {
        Target::Absolute {
            authority, path, ..
        } => {
            let p = path.of(buf);
            if !p.starts_with(b"/") {
                out.push(b'/');
            }
            out.extend_from_slice(p);
            Some(authority)
        }
        Target::Origin | Target::Asterisk => {
            out.extend_from_slice(head.target.of(buf));
            head.host
        }
    };
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let absolute = matches!(head.form, Target::Absolute { .. });
    let mut xff_first = true;
    let mut xff_ok = true;
    let mut xff: Vec<u8> = Vec::new();
    for f in fields {
        if !passes(buf, f, &names) {
            continue;
        }
        match f.kind {
            FieldKind::Underscored | FieldKind::XForwardedProto | FieldKind::XForwardedHost => {}
            FieldKind::Host if absolute => {}
            FieldKind::XForwardedFor => {
                let v = f.value.of(buf);
                xff_ok &= visible(v);
                if !v.trim_ascii().is_empty() {
                    if !xff_first {
                        xff.extend_from_slice(b", ");
                    }
                    xff.extend_from_slice(v);
                    xff_first = false;
                }
            }
            _ => out.extend_from_slice(f.line.of(buf)),
        }
    }
    if let (true, Some(h)) = (absolute, host) {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(h.of(buf));
        out.extend_from_slice(b"\r\n");
    }
    if head.body == RequestBody::Chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if xff_ok && !xff.is_empty() {
        out.extend_from_slice(&xff);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(fwd.client_ip);
    out.extend_from_slice(if fwd.tls {
        b"\r\nX-Forwarded-Proto: https\r\n"
    } else {
        b"\r\nX-Forwarded-Proto: http\r\n"
    });
    if let Some(h) = host {
        out.extend_from_slice(b"X-Forwarded-Host: ");
        out.extend_from_slice(h.of(buf));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends to `out` the head to send to the client for the backend's response `head` parsed
/// from `buf`: `HTTP/1.1`, the backend's status and reason, its fields but hop-by-hop ones.
/// A body until close is sent to the client chunked if `rechunk` (an HTTP/1.1 client), else
/// with `Connection: close`.
pub(crate) fn write_response(
    buf: &[u8],
    head: &ResponseHead,
    fields: &[Field],
    rechunk: bool,
    out: &mut Vec<u8>,
) {
    write_response_without(buf, head, fields, rechunk, None, out);
}

/// [`write_response`], leaving out the fields named `replaced` too (the proxy sets its own
/// `X-Request-Id` on the response: the caller writes it).
pub(crate) fn write_response_without(
    buf: &[u8],
    head: &ResponseHead,
    fields: &[Field],
    rechunk: bool,
    replaced: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    let names = connection_names(buf, fields, head.connection_names);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status_rest.of(buf));
    out.extend_from_slice(b"\r\n");
    for f in fields {
        if passes(buf, f, &names)
            && replaced.is_none_or(|r| !f.name.of(buf).eq_ignore_ascii_case(r))
        {
            out.extend_from_slice(f.line.of(buf));
        }
    }
    match head.body {
        ResponseBody::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ResponseBody::Close if rechunk => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ResponseBody::Close => out.extend_from_slice(b"Connection: close\r\n"),
        ResponseBody::None | ResponseBody::Length(_) => {}
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::super::request::parse_request;
    use super::super::response::parse_response;
    use super::super::{Limits, Parsed};
    use super::*;

    fn forward(raw: &str, tls: bool) -> String {
        let mut fields = Vec::new();
        let Ok(Parsed::Complete(head, _)) =
            parse_request(raw.as_bytes(), &Limits::default(), &mut fields)
        else {
            panic!("{raw:?}");
        };
        let mut out = Vec::new();
        let fwd = Forwarding {
            client_ip: b"192.0.2.7",
            tls,
        };
        write_request(raw.as_bytes(), &head, &fields, fwd, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn unchanged_lines_are_copied_and_forwarded_fields_added() {
        assert_eq!(
            forward(
                "GET /a?b HTTP/1.1\r\nHost: h\r\nAccept:  */*\r\n\r\n",
                false
            ),
            "GET /a?b HTTP/1.1\r\nHost: h\r\nAccept:  */*\r\nX-Forwarded-For: 192.0.2.7\r\n\
             X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n\r\n"
        );
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_are_removed() {
        let out = forward(
            "POST /u HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret, Content-Length\r\n\
             X-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nTrailer: x\r\n\
             Proxy-Connection: k\r\nX_Under: 1\r\nContent-Length: 3\r\nX-Forwarded-Proto: ftp\r\n\
             X-Forwarded-Host: evil\r\nX-Kept: yes\r\n\r\nabc",
            true,
        );
        assert_eq!(
            out,
            "POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nX-Kept: yes\r\n\
             X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: h\r\n\r\n"
        );
    }

    #[test]
    fn absolute_form_chunked_and_forwarded_for() {
        let out = forward(
            "POST http://t.test?q=1#f HTTP/1.1\r\nHost: other\r\nX-Forwarded-For: 10.0.0.1\r\n\
             Transfer-Encoding: chunked\r\nX-Forwarded-For: 10.0.0.2\r\n\r\n",
            false,
        );
        assert_eq!(
            out,
            "POST /?q=1 HTTP/1.1\r\nHost: t.test\r\nTransfer-Encoding: chunked\r\n\
             X-Forwarded-For: 10.0.0.1, 10.0.0.2, 192.0.2.7\r\nX-Forwarded-Proto: http\r\n\
             X-Forwarded-Host: t.test\r\n\r\n"
        );
        // An empty or non-ASCII client list is replaced by the peer.
        let out = forward(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For:  \r\n\r\n",
            false,
        );
        assert!(out.contains("X-Forwarded-For: 192.0.2.7\r\n"), "{out}");
        let out = forward(
            "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: \u{e9}\r\n\r\n",
            false,
        );
        assert!(out.contains("X-Forwarded-For: 192.0.2.7\r\n"), "{out}");
        // A Connection-named X-Forwarded-For is the client's no more.
        let out = forward(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: x-forwarded-for\r\nX-Forwarded-For: 1.1.1.1\r\n\r\n",
            false,
        );
        assert!(out.contains("X-Forwarded-For: 192.0.2.7\r\n"), "{out}");
    }

    fn respond(raw: &str, rechunk: bool) -> String {
        let mut fields = Vec::new();
        let Ok(Parsed::Complete(head, _)) =
            parse_response(raw.as_bytes(), &Limits::default(), false, &mut fields)
        else {
            panic!("{raw:?}")
        };
        let mut out = Vec::new();
        write_response(raw.as_bytes(), &head, &fields, rechunk, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn responses_lose_hop_by_hop_fields_and_keep_their_framing() {
        let raw =
            "HTTP/1.0 201 Made\r\nConnection: x-a, keep-alive\r\nX-A: 1\r\nKeep-Alive: t=5\r\n\
                   Content-Length: 2\r\nX-B: 2\r\n\r\nok";
        assert_eq!(
            respond(raw, true),
            "HTTP/1.1 201 Made\r\nContent-Length: 2\r\nX-B: 2\r\n\r\n"
        );
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(respond(raw, false), raw);
        let raw = "HTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(
            respond(raw, false),
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            respond(raw, true),
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }
}
