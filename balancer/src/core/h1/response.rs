//! A backend's response head and its body's framing (RFC 9112 6.3, points 1 to 3 and 5 to 8).
//! Any refusal is the backend's fault: the proxy answers 502.

use super::{
    check_length, collect_fields, content_length, has_bare_lf, has_token, Field, FieldKind,
    HeadError, Limits, Parsed, Span, Version,
};

/// How a response's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseBody {
    /// No body whatever the fields say: a response to HEAD, 1xx, 204, 304 (RFC 9112 6.3.1).
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding` ending in `chunked`.
    Chunked,
    /// Until the backend closes the connection: neither field, or a `Transfer-Encoding` not
    /// ending in `chunked` (RFC 9112 6.3.4 and 6.3.8).
    Close,
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResponseHead {
    pub(crate) version: Version,
    pub(crate) status: u16,
    /// The status line after the version: `200 OK` (what the editor copies).
    pub(crate) status_rest: Span,
    pub(crate) body: ResponseBody,
    /// The backend's connection may be reused after this response.
    pub(crate) keep_alive: bool,
    /// Some field is named in `Connection` (the editor removes it).
    pub(crate) connection_names: bool,
}

/// Parses the response head at the start of `buf`, the answer to a request whose method was
/// HEAD if `to_head`; its fields go to `fields` (cleared first).
pub(crate) fn parse_response(
    buf: &[u8],
    limits: &Limits,
    to_head: bool,
    fields: &mut Vec<Field>,
) -> Result<Parsed<ResponseHead>, HeadError> {
    header_slots!(slots, limits.max_fields);
    let mut resp = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, slots)
    {
        Ok(httparse::Status::Complete(n)) if n > limits.max_head_bytes => {
            return Err(HeadError::HeadTooLarge)
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head_bytes => {
            return Err(HeadError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(HeadError::from_httparse(e)),
    };
    if has_bare_lf(&buf[..len]) {
        return Err(HeadError::BareLf);
    }
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(HeadError::Syntax);
    };
    let version = if version == 1 {
        Version::Http11
    } else {
        Version::Http10
    };
    // The status line is `HTTP/1.x SP code SP reason CRLF`: the code starts 9 bytes in, after
    // any empty lines httparse skipped, which the status line's own end tells.
    let status_rest = status_line(buf, len).ok_or(HeadError::Syntax)?;
    collect_fields(buf, resp.headers, len - 2, fields);

    let mut length = None;
    let mut te = false;
    let mut last_chunked = false;
    let mut keep_alive = version == Version::Http11;
    let mut connection_names = false;
    for f in fields.iter() {
        let v = f.value.of(buf);
        match f.kind {
            FieldKind::ContentLength => {
                let n = content_length(v).and_then(check_length)?;
                if length.is_some() {
                    return Err(HeadError::RepeatedContentLength);
                }
                length = Some(n);
            }
            FieldKind::TransferEncoding => {
                if version == Version::Http10 {
                    return Err(HeadError::TransferEncodingInHttp10);
                }
                te = true;
                last_chunked = v
                    .rsplit(|&c| c == b',')
                    .next()
                    .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            }
            FieldKind::Connection => {
                if has_token(v, b"close") {
                    keep_alive = false;
                } else if version == Version::Http10 && has_token(v, b"keep-alive") {
                    keep_alive = true;
                }
                connection_names |= super::list(v).any(|t| {
                    !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive")
                });
            }
            _ => {}
        }
    }
    if te && length.is_some() {
        // RFC 9112 6.3.3 lets Transfer-Encoding win; a backend sending both is broken or
        // confused, and its response is refused rather than guessed at.
        return Err(HeadError::ContentLengthWithTransferEncoding);
    }
    let body = if to_head || (100..200).contains(&status) || status == 204 || status == 304 {
        ResponseBody::None
    } else if te && last_chunked {
        ResponseBody::Chunked
    } else if te {
        ResponseBody::Close
    } else if let Some(n) = length {
        ResponseBody::Length(n)
    } else {
        ResponseBody::Close
    };
    if body == ResponseBody::Close {
        keep_alive = false;
    }
    Ok(Parsed::Complete(
        ResponseHead {
            version,
            status,
            status_rest,
            body,
            keep_alive,
            connection_names,
        },
        len,
    ))
}

/// The span of `code SP reason` in the status line (after skipped empty lines).
fn status_line(buf: &[u8], len: usize) -> Option<Span> {
    let mut start = 0;
    while buf[start..len].starts_with(b"\r\n") {
        start += 2;
    }
    let end = start + buf[start..len].windows(2).position(|w| w == b"\r\n")?;
    let code = start + b"HTTP/1.1 ".len();
    (code <= end).then(|| Span::new(code, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str, to_head: bool) -> Result<ResponseHead, HeadError> {
        let mut fields = Vec::new();
        match parse_response(raw.as_bytes(), &Limits::default(), to_head, &mut fields)? {
            Parsed::Complete(h, _) => Ok(h),
            Parsed::Partial => panic!("partial: {raw:?}"),
        }
    }

    #[test]
    fn framing_per_rfc_9112_6_3() {
        let body = |raw: &str, to_head| parse(raw, to_head).unwrap().body;
        let cl = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(body(cl, false), ResponseBody::Length(5));
        assert_eq!(body(cl, true), ResponseBody::None);
        for status in ["100 Continue", "204 No Content", "304 Not Modified"] {
            let raw = format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n");
            assert_eq!(body(&raw, false), ResponseBody::None, "{status}");
        }
        assert_eq!(
            body(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false
            ),
            ResponseBody::Chunked
        );
        assert_eq!(
            body("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            ResponseBody::Close
        );
        let close = parse("HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!(close.body, ResponseBody::Close);
        assert!(!close.keep_alive);
        let raw = "HTTP/1.0 200 Fine\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        let h = parse(raw, false).unwrap();
        assert!(h.keep_alive);
        assert_eq!(h.status_rest.of(raw.as_bytes()), b"200 Fine");
        assert_eq!(h.status, 200);
    }

    #[test]
    fn refusals() {
        for (raw, want) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
                HeadError::RepeatedContentLength,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::ContentLengthWithTransferEncoding,
            ),
            (
                "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                HeadError::TransferEncodingInHttp10,
            ),
            (
                "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
                HeadError::BareLf,
            ),
            ("HTTP/1.1 20 OK\r\n\r\n", HeadError::Status),
            ("HTTP/1.1 200 OK\r\nX : y\r\n\r\n", HeadError::Syntax),
            ("HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n", HeadError::Syntax),
        ] {
            assert_eq!(parse(raw, false), Err(want), "{raw:?}");
        }
    }
}
