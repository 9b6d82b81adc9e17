//! A sans-IO HTTP/1.1 head codec: the foundation of a forwarding path that parses a head once
//! and writes it through (as HAProxy's HTX, Envoy and Pingora do) instead of parsing it into a
//! `HeaderMap` and encoding it again on each leg (issue 18).
//!
//! - [`request`]: a request head parsed from a byte buffer (zero-copy: [`Span`]s into it), with
//!   the framing decision of RFC 9112 6.3 and every check that keeps two hops reading the same
//!   message (request smuggling), each refusal a [`HeadError`] with the status ebbtide answers;
//! - [`response`]: a response head and its framing (none, length, chunked, until close);
//! - [`edit`]: the outgoing head written into a `Vec<u8>` by copying the lines that do not
//!   change, without hop-by-hop fields, with `X-Forwarded-*` and `Host` as the proxy sets them;
//! - [`chunked`]: a chunked-body decoder fed byte slices, for a relay with bounded buffers.
//!
//! httparse (hyper's own tokeniser) splits the head; the checks on top are those of hyper's
//! server and of the proxy (`shell::proxy::strict`, `upgrade::classify`), in the same order so
//! that the status is the same, plus a few deliberate strictnesses listed at
//! [`HeadError::stricter_than_today`]. The differential test in `shell::proxy::h1_differential`
//! and the fuzz target `h1` hold it to today's path.
//!
//! No tokio, no hyper, no `http` types: byte slices in, spans and enums out.

/// Binds `$slots` to httparse's field array for `$max` fields, uninitialised: the default 100
/// on the stack, more on the heap (as hyper does). A macro because the array lives in the
/// caller's frame.
macro_rules! header_slots {
    ($slots:ident, $max:expr) => {
        let mut stack = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 100];
        let mut heap;
        let $slots: &mut [std::mem::MaybeUninit<httparse::Header<'_>>] = if $max <= stack.len() {
            &mut stack[..$max]
        } else {
            heap = Vec::with_capacity($max);
            heap.resize_with($max, std::mem::MaybeUninit::uninit);
            &mut heap[..]
        };
    };
}

pub(crate) mod chunked;
pub(crate) mod edit;
pub(crate) mod request;
pub(crate) mod response;

/// A byte range `[start, end)` of the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Self {
        debug_assert!(start <= end && end <= u32::MAX as usize);
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The bytes of `buf` it covers.
    pub(crate) fn of(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize..self.end as usize]
    }

    pub(crate) fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    pub(crate) fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// The span of `part`, a sub-slice of `buf` (httparse hands out sub-slices).
fn span_in(buf: &[u8], part: &[u8]) -> Span {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    Span::new(start, start + part.len())
}

/// Size limits on a head: `[listener] max_header_bytes`, `max_headers`, `max_uri_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The whole head, request line to the empty line; past it, 431.
    pub(crate) max_head_bytes: usize,
    /// Field lines; past it, 431.
    pub(crate) max_fields: usize,
    /// The request target as sent; past it, 414.
    pub(crate) max_target_bytes: usize,
}

impl Default for Limits {
    /// The `[listener]` defaults.
    fn default() -> Self {
        Limits {
            max_head_bytes: 32 * 1024,
            max_fields: 100,
            max_target_bytes: 8 * 1024,
        }
    }
}

/// What a parse made of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed<H> {
    /// The head is not complete yet: read more (the buffer is under the size limit).
    Partial,
    /// The head, and its length in bytes (the body, or the next message, starts there).
    Complete(H, usize),
}

/// HTTP/1.0 or HTTP/1.1 (httparse refuses any other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    Http10,
    Http11,
}

/// Why a head is refused. For a request, [`HeadError::status`] is ebbtide's answer; a backend's
/// response refused for any reason gets 502.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Not HTTP/1.x syntax: a bad method or field token, a control byte, whitespace before a
    /// colon, an obs-fold, a bare CR (httparse's refusals).
    Syntax,
    /// A line ended by a bare LF. RFC 9112 2.2 lets a recipient accept it; httparse and hyper
    /// do, ebbtide's new path does not (a backend that does not would read another message).
    BareLf,
    /// A version other than HTTP/1.0 and HTTP/1.1.
    Version,
    /// A status code that is not three digits (responses).
    Status,
    /// The head is longer than `max_head_bytes`.
    HeadTooLarge,
    /// More field lines than `max_fields`.
    TooManyFields,
    /// The request target is longer than `max_target_bytes`.
    UriTooLong,
    /// A target with bytes a URI cannot hold, or in a form its method does not allow.
    BadTarget,
    /// An absolute-form target whose scheme is not `http` or `https`.
    BadScheme,
    /// A `Content-Length` that is not a decimal number.
    BadContentLength,
    /// `Content-Length` more than once (even with the same number).
    RepeatedContentLength,
    /// A `Content-Length` over hyper's largest (`u64::MAX - 2`): hyper answers 431.
    ContentLengthTooLarge,
    /// `Content-Length` and `Transfer-Encoding` together.
    ContentLengthWithTransferEncoding,
    /// A `Transfer-Encoding` whose last coding is not `chunked`.
    TransferEncodingNotChunked,
    /// `Transfer-Encoding` in an HTTP/1.0 message.
    TransferEncodingInHttp10,
    /// Codings other than one `chunked` (`gzip, chunked`): ebbtide does not decode them.
    TransferCodingNotImplemented,
    /// CONNECT: ebbtide does not tunnel it.
    Connect,
    /// An `Upgrade` to a protocol other than `websocket` or `h2c`.
    UpgradeNotSupported,
    /// No `Host` and no authority in the target.
    NoHost,
    /// Two `Host` fields, an invalid one, an invalid target authority, or `Host` named in
    /// `Connection` (it would be removed as hop-by-hop).
    BadHost,
}

impl HeadError {
    /// The status ebbtide answers a request refused with this error: hyper's for what hyper
    /// refuses today (400, 414, 431), the proxy's for the rest (`LocalAnswer`: 400, 405, 501).
    pub(crate) const fn status(self) -> u16 {
        use HeadError::*;
        match self {
            HeadTooLarge | TooManyFields | ContentLengthTooLarge => 431,
            UriTooLong => 414,
            Connect => 405,
            UpgradeNotSupported | TransferCodingNotImplemented => 501,
            Syntax
            | BareLf
            | Version
            | Status
            | BadTarget
            | BadScheme
            | BadContentLength
            | RepeatedContentLength
            | ContentLengthWithTransferEncoding
            | TransferEncodingNotChunked
            | TransferEncodingInHttp10
            | NoHost
            | BadHost => 400,
        }
    }

    /// Whether this refuses requests that today's path (hyper's server and the proxy's checks)
    /// forwards, on purpose; the differential test and the fuzz target allow exactly these:
    /// - `BareLf`: RFC 9112 2.2 "MAY" accept a bare LF; a backend that does not would split
    ///   the head elsewhere.
    /// - `RepeatedContentLength`: hyper keeps one of equal values (RFC 9110 8.6 allows either);
    ///   refusing is simpler than rewriting the field and is what the issue asks.
    /// - `ContentLengthWithTransferEncoding`: hyper drops the length, reads chunked and closes
    ///   after the response (RFC 9112 6.1 allows that or a 400); refusing leaves no framing
    ///   for a later hop to reinterpret.
    /// - `BadScheme`: an absolute-form target with a scheme other than http(s) (http::Uri takes
    ///   any scheme, `Ttp://b/`); such a target is not for this server.
    /// - `UriTooLong`: counted on the target as sent; today counts the authority and the path
    ///   and query only (not the scheme, `://` or a fragment), so a target a few bytes under the
    ///   limit may differ.
    /// - `HeadTooLarge` when hyper forwards: hyper's `max_buf_size` bounds its read buffer,
    ///   not the head, and its buffer grows in steps that can take a head well past the limit
    ///   when the bytes arrive together (a 40 KB head passes the default 32 KiB); the new
    ///   parser's limit is exact.
    /// - `BadHost` for `Connection: host`: today's path strips `Host` and answers "no Host";
    ///   the same 400, so not a difference in verdict.
    ///
    /// The first four are checked last, so that a request today's path refuses as well gets
    /// today's status.
    pub(crate) const fn stricter_than_today(self) -> bool {
        matches!(
            self,
            HeadError::BareLf
                | HeadError::RepeatedContentLength
                | HeadError::ContentLengthWithTransferEncoding
                | HeadError::BadScheme
                | HeadError::UriTooLong
                | HeadError::HeadTooLarge
        )
    }

    /// httparse's refusal, as hyper maps it (`TooManyHeaders` is 431).
    fn from_httparse(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => HeadError::TooManyFields,
            httparse::Error::Version => HeadError::Version,
            httparse::Error::Status => HeadError::Status,
            _ => HeadError::Syntax,
        }
    }
}

/// How a field's name matters to the proxy, worked out once while parsing so that the editor
/// compares no strings for the common fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldKind {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    /// `TE`: hop-by-hop; `trailers` in it is noted.
    Te,
    /// `Keep-Alive`, `Proxy-Connection`, `Trailer`: hop-by-hop (RFC 9110 7.6.1).
    HopByHop,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    Expect,
    /// A name with `_`: dropped (see `headers::drop_underscored`).
    Underscored,
    Other,
}

/// The hop-by-hop field names (RFC 9110 7.6.1, with `Keep-Alive` and `Proxy-Connection` as
/// RFC 7230 and every proxy treat them): removed at every hop by both forwarding paths. The
/// one list: [`FieldKind::hop_by_hop`] is true of exactly these (a unit test holds them to
/// each other), and the `HeaderMap` path removes them by name.
pub(crate) const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl FieldKind {
    pub(crate) fn of(name: &[u8]) -> Self {
        // Dispatch on the length first: one compare for most names.
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match name.len() {
            4 if is(b"host") => FieldKind::Host,
            2 if is(b"te") => FieldKind::Te,
            6 if is(b"expect") => FieldKind::Expect,
            7 if is(b"upgrade") => FieldKind::Upgrade,
            7 if is(b"trailer") => FieldKind::HopByHop,
            10 if is(b"connection") => FieldKind::Connection,
            10 if is(b"keep-alive") => FieldKind::HopByHop,
            14 if is(b"content-length") => FieldKind::ContentLength,
            15 if is(b"x-forwarded-for") => FieldKind::XForwardedFor,
            16 if is(b"x-forwarded-host") => FieldKind::XForwardedHost,
            16 if is(b"proxy-connection") => FieldKind::HopByHop,
            17 if is(b"transfer-encoding") => FieldKind::TransferEncoding,
            17 if is(b"x-forwarded-proto") => FieldKind::XForwardedProto,
            _ if name.contains(&b'_') => FieldKind::Underscored,
            _ => FieldKind::Other,
        }
    }

    /// Removed at every hop (RFC 9110 7.6.1), framing included: the editor writes the
    /// outgoing framing itself.
    pub(crate) const fn hop_by_hop(self) -> bool {
        matches!(
            self,
            FieldKind::Connection
                | FieldKind::Upgrade
                | FieldKind::Te
                | FieldKind::HopByHop
                | FieldKind::TransferEncoding
        )
    }
}

/// One field line of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) name: Span,
    /// Without the whitespace around it.
    pub(crate) value: Span,
    /// The whole line, name to CRLF: what the editor copies.
    pub(crate) line: Span,
    pub(crate) kind: FieldKind,
}

/// `HeaderValue::to_str`'s set (HTAB, SP and visible ASCII): today's path reads the lists in
/// `Connection`, `Transfer-Encoding`, `Upgrade`, `TE` and `X-Forwarded-For` only from values
/// of these bytes and skips the others (obs-text), so the new path does too.
pub(crate) fn visible(v: &[u8]) -> bool {
    v.iter().all(|&c| c == b'\t' || (0x20..0x7f).contains(&c))
}

/// The elements of a comma-separated list, trimmed, empty ones skipped (RFC 9110 5.6.1).
pub(crate) fn list(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    v.split(|&c| c == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether the list `v` holds `token` (case-insensitive).
fn has_token(v: &[u8], token: &[u8]) -> bool {
    list(v).any(|t| t.eq_ignore_ascii_case(token))
}

/// Splits a head's field lines out of httparse's result into `fields` (cleared first), with
/// their spans and kinds; `end` is the offset of the empty line that ends the head.
fn collect_fields(
    buf: &[u8],
    parsed: &[httparse::Header<'_>],
    end: usize,
    fields: &mut Vec<Field>,
) {
    fields.clear();
    fields.reserve(parsed.len());
    for h in parsed {
        let name = span_in(buf, h.name.as_bytes());
        let value = if h.value.is_empty() {
            // httparse gives an empty value that may not point into the buffer.
            Span::new(name.end as usize + 1, name.end as usize + 1)
        } else {
            span_in(buf, h.value)
        };
        fields.push(Field {
            name,
            value,
            line: Span::default(),
            kind: FieldKind::of(h.name.as_bytes()),
        });
    }
    // Lines are contiguous: each runs to the next one's name; the last to the empty line.
    for i in 0..fields.len() {
        let next = fields.get(i + 1).map_or(end, |f| f.name.start as usize);
        fields[i].line = Span::new(fields[i].name.start as usize, next);
    }
}

/// Whether `head` (the bytes httparse accepted) ends any line with a bare LF.
fn has_bare_lf(head: &[u8]) -> bool {
    let mut prev = 0u8;
    for &c in head {
        if c == b'\n' && prev != b'\r' {
            return true;
        }
        prev = c;
    }
    false
}

/// A `Content-Length` value: decimal digits only (RFC 9110 8.6; hyper's `from_digits`).
fn content_length(v: &[u8]) -> Result<u64, HeadError> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::BadContentLength);
    }
    let mut n: u64 = 0;
    for &c in v {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(c - b'0')))
            .ok_or(HeadError::BadContentLength)?;
    }
    Ok(n)
}

/// hyper's largest body length (`u64::MAX - 2`); past it, hyper answers 431 (it checks the
/// first `Content-Length` only: a second one is compared with it first).
fn check_length(n: u64) -> Result<u64, HeadError> {
    if n > u64::MAX - 2 {
        return Err(HeadError::ContentLengthTooLarge);
    }
    Ok(n)
}

/// `uri-host [ ":" port ]`: an IP literal in brackets, or a name or IPv4 address of letters,
/// digits, `-`, `.`, `_`, `~` and `%` escapes; then an optional port of 1 to 5 digits. No
/// userinfo, no list, no path, not empty (RFC 9112 3.2, RFC 9110 4.2.4 and 7.2).
pub(crate) fn valid_host(h: &[u8]) -> bool {
    let (host, port) = if h.first() == Some(&b'[') {
        let Some(close) = h.iter().position(|&c| c == b']') else {
            return false;
        };
        let inside = &h[1..close];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|&c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        {
            return false;
        }
        match &h[close + 1..] {
            [] => (&h[..=close], None),
            [b':', port @ ..] => (&h[..=close], Some(port)),
            _ => return false,
        }
    } else {
        match h.iter().position(|&c| c == b':') {
            Some(i) => (&h[..i], Some(&h[i + 1..])),
            None => (h, None),
        }
    };
    let name_ok = !host.is_empty()
        && (host[0] == b'['
            || host.iter().all(|&c| {
                c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'%')
            }));
    let port_ok =
        port.is_none_or(|p| (1..=5).contains(&p.len()) && p.iter().all(u8::is_ascii_digit));
    name_ok && port_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "a.test",
            "a.test:8080",
            "127.0.0.1",
            "127.0.0.1:1",
            "[::1]",
            "[2001:db8::1]:443",
            "xn--d1acufc.test",
            "under_score.test",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "a, b",
            "a,b",
            "a/b?c",
            "a b",
            "user@a.test",
            "a.test:",
            "a.test:8x",
            "a.test:123456",
            "[::1",
            "[]",
            "[::1]x",
            "a.test:80:80",
            "a\"b",
            "a;b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }

    #[test]
    fn content_lengths() {
        assert_eq!(content_length(b"0"), Ok(0));
        assert_eq!(content_length(b"0005"), Ok(5));
        assert_eq!(content_length(b"18446744073709551613"), Ok(u64::MAX - 2));
        assert_eq!(check_length(u64::MAX - 2), Ok(u64::MAX - 2));
        assert_eq!(
            content_length(b"18446744073709551614").and_then(check_length),
            Err(HeadError::ContentLengthTooLarge)
        );
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"5 5",
            b"5,5",
            b"0x5",
            b"18446744073709551616",
        ] {
            assert_eq!(
                content_length(bad),
                Err(HeadError::BadContentLength),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn field_kinds() {
        assert_eq!(FieldKind::of(b"HOST"), FieldKind::Host);
        assert_eq!(FieldKind::of(b"Content-Length"), FieldKind::ContentLength);
        assert_eq!(FieldKind::of(b"x_forwarded_for"), FieldKind::Underscored);
        assert_eq!(FieldKind::of(b"Proxy-Connection"), FieldKind::HopByHop);
        assert_eq!(
            FieldKind::of(b"X-Forwarded-Host"),
            FieldKind::XForwardedHost
        );
        assert_eq!(FieldKind::of(b"hosts"), FieldKind::Other);
        assert!(FieldKind::TransferEncoding.hop_by_hop());
        assert!(!FieldKind::ContentLength.hop_by_hop());
    }

    /// The list the `HeaderMap` path removes and the classification the raw path edits by are
    /// the same set: every name the classifier knows is hop-by-hop exactly when it is listed.
    #[test]
    fn hop_by_hop_list_and_classification_agree() {
        let known = [
            "host",
            "te",
            "expect",
            "upgrade",
            "trailer",
            "connection",
            "keep-alive",
            "content-length",
            "x-forwarded-for",
            "x-forwarded-host",
            "proxy-connection",
            "transfer-encoding",
            "x-forwarded-proto",
            "x_under",
            "accept",
        ];
        for name in known {
            assert_eq!(
                FieldKind::of(name.as_bytes()).hop_by_hop(),
                HOP_BY_HOP.contains(&name),
                "{name}"
            );
            let upper = name.to_ascii_uppercase();
            assert_eq!(
                FieldKind::of(upper.as_bytes()).hop_by_hop(),
                HOP_BY_HOP.contains(&name),
                "{upper}"
            );
        }
        for name in HOP_BY_HOP {
            assert!(
                known.contains(&name),
                "{name} is listed but not tried above"
            );
        }
    }

    #[test]
    fn bare_lf() {
        assert!(!has_bare_lf(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(b"GET / HTTP/1.1\nHost: a\r\n\r\n"));
        assert!(has_bare_lf(b"\n"));
    }
}
