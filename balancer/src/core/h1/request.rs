//! A request head: parsed, checked, and its body's framing decided (RFC 9112 6.3 and 6.1).
//!
//! The checks come in today's order so that a request refused for two reasons gets the same
//! status as from hyper and the proxy: first what hyper's server refuses (syntax, 431 sizes,
//! `Content-Length` and `Transfer-Encoding` 400s, a target `http::Uri` cannot hold), then the
//! proxy's `admit` (target length 414, CONNECT 405, upgrades 501, `strict::check`: target form,
//! `Host`, codings 501), then `prepare_head`'s (no `Host`).

use super::{
    check_length, collect_fields, content_length, has_bare_lf, has_token, list, span_in,
    valid_host, visible, Field, FieldKind, HeadError, Limits, Parsed, Span, Version,
};

/// How a request's body is framed (RFC 9112 6.3, points 4 to 6 and 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestBody {
    /// No body: neither `Content-Length` nor `Transfer-Encoding`.
    None,
    /// `Content-Length` bytes (zero included).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The request target's form (RFC 9112 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Target {
    /// `/path?query`.
    Origin,
    /// `*` (OPTIONS only).
    Asterisk,
    /// `http://authority/path?query`: the authority replaces `Host`.
    Absolute {
        https: bool,
        authority: Span,
        /// Path and query, maybe empty (`http://a`), maybe only a query (`http://a?q`).
        path: Span,
    },
}

/// What a request asks for in the way of a protocol switch (`shell::proxy::upgrade::classify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upgrade {
    None,
    /// `Upgrade: websocket` named in `Connection`, HTTP/1.1: for the tunnel path.
    WebSocket,
}

/// A parsed request head: spans into the buffer it came from, and what the proxy needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestHead {
    pub(crate) method: Span,
    pub(crate) is_head: bool,
    /// The target as sent, without a fragment (`http::Uri` drops it too).
    pub(crate) target: Span,
    pub(crate) form: Target,
    pub(crate) version: Version,
    /// The `Host` field's value, if any (the authority of an absolute-form target wins).
    pub(crate) host: Option<Span>,
    pub(crate) body: RequestBody,
    /// The connection may carry another request after this one (RFC 9112 9.3).
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue`.
    pub(crate) expect_continue: bool,
    /// `TE: trailers`: the client accepts trailers (see `headers::Head::te_trailers`).
    pub(crate) te_trailers: bool,
    pub(crate) upgrade: Upgrade,
    /// Some field is named in `Connection` and must be removed (the editor looks them up only
    /// then).
    pub(crate) connection_names: bool,
}

/// Parses the request head at the start of `buf`; its field lines go to `fields` (cleared
/// first, reused across requests so that parsing allocates nothing once it has grown).
pub(crate) fn parse_request(
    buf: &[u8],
    limits: &Limits,
    fields: &mut Vec<Field>,
) -> Result<Parsed<RequestHead>, HeadError> {
    header_slots!(slots, limits.max_fields);
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head_bytes => {
            return Err(HeadError::HeadTooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        // A syntax error past the size limit is still a head too large to read (hyper reads
        // at most that much before it gives up).
        Err(_) if buf.len() > limits.max_head_bytes && first_error_past(buf, limits) => {
            return Err(HeadError::HeadTooLarge)
        }
        Err(e) => return Err(HeadError::from_httparse(e)),
    };
    if len > limits.max_head_bytes {
        return Err(HeadError::HeadTooLarge);
    }
    // The refusals today's path does not make wait until every check it makes has passed, so
    // that a request both refuse gets today's status.
    let mut deferred = None;
    if has_bare_lf(&buf[..len]) {
        deferred = Some(HeadError::BareLf);
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Syntax);
    };
    let version = if version == 1 {
        Version::Http11
    } else {
        Version::Http10
    };
    let method = span_in(buf, method.as_bytes());
    let method_bytes = method.of(buf);
    let target_full = span_in(buf, target.as_bytes());
    // The empty line that ends the head: CRLF (with a bare LF, the spans are off by one, and
    // the head is refused below).
    collect_fields(buf, req.headers, len - 2, fields);

    // hyper: the target must be one `http::Uri` takes.
    let (target, form, bad_scheme) = parse_target(buf, target_full)?;
    if bad_scheme {
        deferred.get_or_insert(HeadError::BadScheme);
    }
    let is_connect = method_bytes == b"CONNECT";
    let form = match form {
        Form::Known(f) => Some(f),
        Form::Authority => None,
    };

    // hyper, then ebbtide: framing and the rest, over the fields in order.
    let mut body = RequestBody::None;
    let mut cl = false;
    let mut te_lines = 0u32;
    let mut last_te_chunked = false;
    let mut codings = 0u32;
    let mut host: Option<Span> = None;
    let mut hosts = 0u32;
    let mut keep_alive = version == Version::Http11;
    let mut saw_close = false;
    let mut expect_continue = false;
    let mut te_trailers = false;
    let mut connection_names = false;
    let mut upgrade_field = false;
    let mut connection_upgrade = false;
    let mut connection_host = false;
    for f in fields.iter() {
        let v = f.value.of(buf);
        match f.kind {
            FieldKind::ContentLength => {
                if te_lines > 0 {
                    // hyper skips a Content-Length after Transfer-Encoding unread.
                    cl = true;
                    continue;
                }
                let n = content_length(v)?;
                if cl {
                    // hyper refuses different numbers and keeps one of equal ones.
                    if body != RequestBody::Length(n) {
                        return Err(HeadError::BadContentLength);
                    }
                    deferred.get_or_insert(HeadError::RepeatedContentLength);
                } else {
                    body = RequestBody::Length(check_length(n)?);
                }
                cl = true;
            }
            FieldKind::TransferEncoding => {
                if version == Version::Http10 {
                    return Err(HeadError::TransferEncodingInHttp10);
                }
                te_lines += 1;
                // hyper: `chunked` must be the last coding of the last line.
                last_te_chunked = visible(v)
                    && v.rsplit(|&c| c == b',')
                        .next()
                        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                codings += list(v).count() as u32;
            }
            FieldKind::Connection if !visible(v) => {}
            FieldKind::Connection => {
                // Once any line asks to close, a later `keep-alive` does not undo it (hyper).
                if has_token(v, b"close") {
                    saw_close = true;
                    keep_alive = false;
                } else if !saw_close && version == Version::Http10 && has_token(v, b"keep-alive") {
                    keep_alive = true;
                }
                for t in list(v) {
                    if t.eq_ignore_ascii_case(b"upgrade") {
                        connection_upgrade = true;
                    } else if t.eq_ignore_ascii_case(b"host") {
                        connection_host = true;
                    }
                    if !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive") {
                        connection_names = true;
                    }
                }
            }
            FieldKind::Expect => {
                expect_continue = v.eq_ignore_ascii_case(b"100-continue");
            }
            FieldKind::Te if visible(v) => {
                te_trailers |= list(v).any(|t| t.split(|&c| c == b';').next() == Some(b"trailers"));
            }
            FieldKind::Host => {
                hosts += 1;
                host.get_or_insert(f.value);
            }
            FieldKind::Upgrade => upgrade_field = true,
            _ => {}
        }
    }
    if te_lines > 0 {
        if !last_te_chunked {
            return Err(HeadError::TransferEncodingNotChunked);
        }
        if cl {
            deferred.get_or_insert(HeadError::ContentLengthWithTransferEncoding);
        }
        body = RequestBody::Chunked;
    }

    // The proxy's `admit`: the target's length, CONNECT, upgrades.
    if target_full.len() > limits.max_target_bytes {
        return Err(HeadError::UriTooLong);
    }
    if is_connect {
        return Err(HeadError::Connect);
    }
    let mut upgrade = Upgrade::None;
    if upgrade_field && version == Version::Http11 && connection_upgrade {
        let protocols = || {
            fields
                .iter()
                .filter(|f| f.kind == FieldKind::Upgrade)
                .flat_map(|f| list(f.value.of(buf)))
        };
        let websocket = fields
            .iter()
            .filter(|f| f.kind == FieldKind::Upgrade && visible(f.value.of(buf)))
            .any(|f| has_token(f.value.of(buf), b"websocket"));
        if websocket {
            upgrade = Upgrade::WebSocket;
        } else if !protocols().all(|p| p.eq_ignore_ascii_case(b"h2c")) {
            return Err(HeadError::UpgradeNotSupported);
        }
    }

    // `strict::check`: the target's form, `Host`, the codings.
    let form = match form {
        Some(Target::Asterisk) if method_bytes != b"OPTIONS" => return Err(HeadError::BadTarget),
        Some(f) => f,
        None => return Err(HeadError::BadTarget),
    };
    if hosts > 1 {
        return Err(HeadError::BadHost);
    }
    match form {
        Target::Absolute { authority, .. } if !valid_host(authority.of(buf)) => {
            return Err(HeadError::BadHost)
        }
        Target::Absolute { .. } => {}
        _ if host.is_none() => return Err(HeadError::NoHost),
        _ => {}
    }
    if host.is_some_and(|h| !valid_host(h.of(buf))) {
        return Err(HeadError::BadHost);
    }
    if te_lines > 0 && codings != 1 {
        return Err(HeadError::TransferCodingNotImplemented);
    }
    // `prepare_head`: a `Host` named in `Connection` would be stripped, leaving none.
    if connection_host && !matches!(form, Target::Absolute { .. }) {
        return Err(HeadError::BadHost);
    }
    if let Some(e) = deferred {
        return Err(e);
    }

    Ok(Parsed::Complete(
        RequestHead {
            method,
            is_head: method_bytes == b"HEAD",
            target,
            form,
            version,
            host,
            body,
            keep_alive,
            expect_continue,
            te_trailers,
            upgrade,
            connection_names,
        },
        len,
    ))
}

/// Whether httparse's first error in `buf` lies past the size limit: hyper would have stopped
/// reading there with 431 before it saw the error.
fn first_error_past(buf: &[u8], limits: &Limits) -> bool {
    header_slots!(slots, limits.max_fields);
    let mut req = httparse::Request::new(&mut []);
    matches!(
        httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            &buf[..limits.max_head_bytes],
            slots
        ),
        Ok(httparse::Status::Partial)
    )
}

/// A target's form before the method is known: authority-form is for CONNECT only.
enum Form {
    Known(Target),
    Authority,
}

/// Path bytes `http::Uri` takes (its `PATH_MAP`: the WHATWG path set, plus `"`, `{`, `}`);
/// `?` starts the query and `#` the fragment. Bytes over 0x7F must be UTF-8.
fn path_byte(c: u8) -> bool {
    matches!(c, 0x21..=0x22 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7E) || c >= 0x80
}

/// Query bytes `http::Uri` takes (its `QUERY_MAP`).
fn query_byte(c: u8) -> bool {
    matches!(c, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E) || c >= 0x80
}

/// Authority bytes `http::Uri` takes (its `URI_CHARS`, less the delimiters of what follows
/// and the bytes [`authority_len`] looks at).
fn authority_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'-'
                | b'.'
                | b':'
                | b';'
                | b'='
                | b'@'
                | b'['
                | b']'
                | b'_'
                | b'~'
                | b'%'
        )
}

/// A path and query starting at `s` (`/...`, `?...`, or empty): its length without a
/// fragment, or None if `http::Uri` would refuse a byte.
fn scan_path_query(s: &[u8]) -> Option<usize> {
    let mut in_query = false;
    let mut end = s.len();
    for (i, &c) in s.iter().enumerate() {
        if c == b'#' {
            end = i;
            break;
        }
        if in_query {
            if !query_byte(c) {
                return None;
            }
        } else if c == b'?' {
            in_query = true;
        } else if !path_byte(c) {
            return None;
        }
    }
    if s[..end].iter().any(|&c| c >= 0x80) && std::str::from_utf8(&s[..end]).is_err() {
        return None;
    }
    Some(end)
}

/// The target's span without a fragment, its form, and whether it is absolute with a scheme
/// other than http(s) (refused, but after today's checks).
fn parse_target(buf: &[u8], t: Span) -> Result<(Span, Form, bool), HeadError> {
    let s = t.of(buf);
    let start = t.start as usize;
    if s == b"*" {
        return Ok((t, Form::Known(Target::Asterisk), false));
    }
    if s.first() == Some(&b'/') {
        let end = scan_path_query(s).ok_or(HeadError::BadTarget)?;
        return Ok((
            Span::new(start, start + end),
            Form::Known(Target::Origin),
            false,
        ));
    }
    if let Some(colon) = scheme_end(s)? {
        let scheme = &s[..colon];
        let rest = colon + 3;
        let auth_len = authority_len(&s[rest..]).ok_or(HeadError::BadTarget)?;
        if auth_len == 0 {
            return Err(HeadError::BadTarget);
        }
        let path_at = rest + auth_len;
        let path_len = scan_path_query(&s[path_at..]).ok_or(HeadError::BadTarget)?;
        let https = scheme.eq_ignore_ascii_case(b"https");
        let bad_scheme = !https && !scheme.eq_ignore_ascii_case(b"http");
        return Ok((
            Span::new(start, start + path_at + path_len),
            Form::Known(Target::Absolute {
                https,
                authority: Span::new(start + rest, start + path_at),
                path: Span::new(start + path_at, start + path_at + path_len),
            }),
            bad_scheme,
        ));
    }
    if !s.is_empty() && authority_len(s) == Some(s.len()) {
        return Ok((t, Form::Authority, false));
    }
    Err(HeadError::BadTarget)
}

/// Where an absolute-form target's scheme ends (the `:` of `://`), as `http::Uri` finds it:
/// `http://` and `https://` in any case, or any run of scheme bytes (letters, digits, `+-.~`,
/// even none) followed by `://` in a target longer than 3 bytes; None for another form.
fn scheme_end(s: &[u8]) -> Result<Option<usize>, HeadError> {
    if s.len() >= 7 && s[..7].eq_ignore_ascii_case(b"http://") {
        return Ok(Some(4));
    }
    if s.len() >= 8 && s[..8].eq_ignore_ascii_case(b"https://") {
        return Ok(Some(5));
    }
    if s.len() <= 3 {
        return Ok(None);
    }
    for (i, &c) in s.iter().enumerate() {
        match c {
            b':' if s.len() >= i + 3 && &s[i + 1..i + 3] == b"//" => {
                // http's MAX_SCHEME_LEN.
                return if i > 64 {
                    Err(HeadError::BadTarget)
                } else {
                    Ok(Some(i))
                };
            }
            b':' => return Ok(None),
            _ if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.' | b'~') => {}
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// The length of the authority at the start of `s` (up to `/`, `?` or `#`), or None where
/// `http::Uri` refuses it: its `validate_authority_bytes`, byte for byte (bytes of its
/// `URI_CHARS`; `%` only in userinfo or an IPv6 zone; one pair of brackets; at most one port
/// colon after the brackets or the userinfo; not ending in `@`).
fn authority_len(s: &[u8]) -> Option<usize> {
    if s.is_empty() {
        return None;
    }
    let (mut colons, mut open, mut close, mut percent) = (0u32, false, false, false);
    let mut end = s.len();
    let mut at = s.len();
    for (i, &c) in s.iter().enumerate() {
        match c {
            b'/' | b'?' | b'#' => {
                end = i;
                break;
            }
            b'%' => percent = true,
            b':' => {
                if colons >= 8 {
                    return None;
                }
                colons += 1;
            }
            b'[' => {
                if percent || open {
                    return None;
                }
                open = true;
            }
            b']' => {
                if !open || close {
                    return None;
                }
                close = true;
                colons = 0;
                percent = false;
            }
            b'@' => {
                at = i;
                colons = 0;
                percent = false;
            }
            _ if authority_byte(c) => {}
            _ => return None,
        }
    }
    if open != close || colons > 1 || (end > 0 && at == end - 1) || percent {
        return None;
    }
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<(RequestHead, usize, Vec<Field>), HeadError> {
        let mut fields = Vec::new();
        match parse_request(raw.as_bytes(), &Limits::default(), &mut fields)? {
            Parsed::Complete(h, n) => Ok((h, n, fields)),
            Parsed::Partial => panic!("partial: {raw:?}"),
        }
    }

    fn err(raw: &str) -> HeadError {
        parse(raw).expect_err(raw)
    }

    #[test]
    fn a_plain_get() {
        let raw = "GET /a?b HTTP/1.1\r\nHost: h.test\r\nX-A:  1 \r\n\r\nbody";
        let (h, n, fields) = parse(raw).unwrap();
        let b = raw.as_bytes();
        assert_eq!(n, raw.len() - 4);
        assert_eq!(h.method.of(b), b"GET");
        assert_eq!(h.target.of(b), b"/a?b");
        assert_eq!(h.form, Target::Origin);
        assert_eq!(h.host.unwrap().of(b), b"h.test");
        assert_eq!(h.body, RequestBody::None);
        assert!(h.keep_alive);
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[1].value.of(b), b"1");
        assert_eq!(fields[0].line.of(b), b"Host: h.test\r\n");
        assert_eq!(fields[1].line.of(b), b"X-A:  1 \r\n");
    }

    #[test]
    fn partial_until_the_empty_line_then_too_large() {
        let mut fields = Vec::new();
        let l = Limits::default();
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n", &l, &mut fields),
            Ok(Parsed::Partial)
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(40_000));
        assert_eq!(
            parse_request(big.as_bytes(), &l, &mut fields),
            Err(HeadError::HeadTooLarge)
        );
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert_eq!(
            parse_request(raw.as_bytes(), &l, &mut fields),
            Err(HeadError::TooManyFields)
        );
    }

    #[test]
    fn framing() {
        let p = |extra: &str| parse(&format!("POST / HTTP/1.1\r\nHost: a\r\n{extra}\r\n"));
        assert_eq!(
            p("Content-Length: 0005\r\n").unwrap().0.body,
            RequestBody::Length(5)
        );
        assert_eq!(
            p("Transfer-Encoding: Chunked\r\n").unwrap().0.body,
            RequestBody::Chunked
        );
        for (extra, want) in [
            (
                "Content-Length: 5\r\nContent-Length: 5\r\n",
                HeadError::RepeatedContentLength,
            ),
            (
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                HeadError::BadContentLength,
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: x\r\n",
                HeadError::ContentLengthWithTransferEncoding,
            ),
            ("Content-Length: 5, 5\r\n", HeadError::BadContentLength),
            ("Content-Length: +5\r\n", HeadError::BadContentLength),
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                HeadError::ContentLengthWithTransferEncoding,
            ),
            (
                "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
                HeadError::ContentLengthWithTransferEncoding,
            ),
            (
                "Transfer-Encoding: chunked, gzip\r\n",
                HeadError::TransferEncodingNotChunked,
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
                HeadError::TransferEncodingNotChunked,
            ),
            (
                "Transfer-Encoding: gzip, chunked\r\n",
                HeadError::TransferCodingNotImplemented,
            ),
            (
                "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                HeadError::TransferCodingNotImplemented,
            ),
            (
                "Transfer-Encoding: chunked, chunked\r\n",
                HeadError::TransferCodingNotImplemented,
            ),
        ] {
            assert_eq!(p(extra).unwrap_err(), want, "{extra:?}");
        }
        assert_eq!(
            err("POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            HeadError::TransferEncodingInHttp10
        );
    }

    #[test]
    fn syntax_and_line_ends() {
        for (raw, want) in [
            ("GET / HTTP/1.1\nHost: a\r\n\r\n", HeadError::BareLf),
            ("GET / HTTP/1.1\r\nHost: a\n\n", HeadError::BareLf),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX: b\rc\r\n\r\n",
                HeadError::Syntax,
            ),
            ("GET / HTTP/1.1\r\nHost : a\r\n\r\n", HeadError::Syntax),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n",
                HeadError::Syntax,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nX: b\0c\r\n\r\n",
                HeadError::Syntax,
            ),
            ("G@T / HTTP/1.1\r\nHost: a\r\n\r\n", HeadError::Syntax),
            ("GET / HTTP/1.2\r\nHost: a\r\n\r\n", HeadError::Version),
            ("GET /a<b HTTP/1.1\r\nHost: a\r\n\r\n", HeadError::BadTarget),
            ("GET echo HTTP/1.1\r\nHost: a\r\n\r\n", HeadError::BadTarget),
            ("GET * HTTP/1.1\r\nHost: a\r\n\r\n", HeadError::BadTarget),
            (
                "GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
                HeadError::BadScheme,
            ),
            (
                "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
                HeadError::Connect,
            ),
        ] {
            assert_eq!(err(raw), want, "{raw:?}");
        }
        // Empty lines before the request line are skipped (RFC 9112 2.2).
        assert!(parse("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
        assert!(parse("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
    }

    #[test]
    fn hosts_and_targets() {
        for (raw, want) in [
            ("GET / HTTP/1.1\r\n\r\n", HeadError::NoHost),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                HeadError::BadHost,
            ),
            ("GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", HeadError::BadHost),
            ("GET / HTTP/1.1\r\nHost: a/b?c\r\n\r\n", HeadError::BadHost),
            ("GET / HTTP/1.1\r\nHost: \r\n\r\n", HeadError::BadHost),
            (
                "GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n",
                HeadError::BadHost,
            ),
            (
                "GET http://a/ HTTP/1.1\r\nHost: a b\r\n\r\n",
                HeadError::BadHost,
            ),
            (
                "GET / HTTP/1.1\r\nHost: a\r\nConnection: host\r\n\r\n",
                HeadError::BadHost,
            ),
        ] {
            assert_eq!(err(raw), want, "{raw:?}");
        }
        let raw = "GET http://t.test?q HTTP/1.1\r\nHost: o.test\r\n\r\n";
        let (h, _, _) = parse(raw).unwrap();
        let Target::Absolute {
            https,
            authority,
            path,
        } = h.form
        else {
            panic!("{:?}", h.form)
        };
        assert!(!https);
        assert_eq!(authority.of(raw.as_bytes()), b"t.test");
        assert_eq!(path.of(raw.as_bytes()), b"?q");
        let raw = "GET /p#frag HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(parse(raw).unwrap().0.target.of(raw.as_bytes()), b"/p");
    }

    #[test]
    fn connection_upgrade_and_flags() {
        let (h, ..) =
            parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .unwrap();
        assert_eq!(h.upgrade, Upgrade::WebSocket);
        let (h, ..) =
            parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n")
                .unwrap();
        assert_eq!(h.upgrade, Upgrade::None);
        assert_eq!(
            err("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n"),
            HeadError::UpgradeNotSupported
        );
        // Not named in Connection: not an upgrade.
        assert_eq!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: foo\r\n\r\n")
                .unwrap()
                .0
                .upgrade,
            Upgrade::None
        );
        let (h, ..) = parse(
            "GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\nTE: trailers\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
        assert!(h.keep_alive && h.te_trailers && h.expect_continue && !h.connection_names);
        let (h, ..) = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: close, x-a\r\n\r\n").unwrap();
        assert!(!h.keep_alive && h.connection_names);
    }
}
