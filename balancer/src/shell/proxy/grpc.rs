//! gRPC over the proxy (the gRPC over HTTP/2 protocol, PROTOCOL-HTTP2.md in grpc/grpc): how a
//! gRPC call is recognised, its `grpc-timeout` read as the request's deadline, and the answer
//! when that deadline passes before the backend answered.
//!
//! A gRPC call streams both ways and may be quiet for long stretches, so its request body is
//! streamed at once (no read-ahead) and without the listener's body read timeout and minimum
//! rate; its bound is its deadline.
//!
//! A call whose deadline passes before the backend's response headers is answered with a
//! trailers-only response: HTTP 200, `grpc-status: 4` (DEADLINE_EXCEEDED). Not 504: gRPC
//! clients map HTTP 504 to UNAVAILABLE (14), a status they may retry, while a passed deadline
//! must read as DEADLINE_EXCEEDED (as Envoy answers). It is counted as 504 in `/metrics`. Once
//! response headers have gone to the client the stream is the backend's and the client's: both
//! were sent `grpc-timeout` and enforce it themselves.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use std::time::Duration;

/// The header that carries a call's timeout.
pub(super) static TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// Whether a request is a gRPC call: `content-type: application/grpc`, alone or with a suffix
/// (`+proto`, `+json`, `;...`).
pub(super) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_grpc_content_type(v.as_bytes()))
}

pub(super) fn is_grpc_content_type(v: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    v.len() >= GRPC.len()
        && v[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(v.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// The call's `grpc-timeout`: 1 to 8 ASCII digits and a unit (`H` hours, `M` minutes, `S`
/// seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds). None when absent or invalid
/// (an invalid one is passed on untouched and not enforced here).
pub(super) fn timeout(headers: &HeaderMap) -> Option<Duration> {
    parse_timeout(headers.get(&TIMEOUT)?.as_bytes())
}

fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-timeout` sent to the backend: what is left of the deadline (at least 1 ms), so
/// that time spent waiting in the balancer is not granted twice (as Envoy's
/// `grpc_timeout_header_offset` does). Milliseconds while they fit the 8 digits allowed, else
/// seconds.
pub(super) fn timeout_header(left: Duration) -> HeaderValue {
    let ms = left.as_millis().max(1);
    let text = if ms <= 99_999_999 {
        format!("{ms}m")
    } else {
        format!("{}S", left.as_secs().min(99_999_999))
    };
    HeaderValue::try_from(text).expect("digits and a unit are a valid header value")
}

/// A gRPC trailers-only DEADLINE_EXCEEDED (see the module doc) with `body` (empty, carrying
/// the request's completion guard).
pub(super) fn deadline_exceeded<B>(body: B) -> Response<B> {
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static("4"));
    h.insert(
        "grpc-message",
        HeaderValue::from_static("deadline exceeded before the backend answered (ebbtide)"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc;charset=utf-8",
        ] {
            assert!(is_grpc_content_type(yes.as_bytes()), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/json",
            "application/grp",
            "",
        ] {
            assert!(!is_grpc_content_type(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_timeout(b"5u"), Some(Duration::from_micros(5)));
        assert_eq!(
            parse_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(timeout_header(Duration::from_micros(10)), "1m");
        assert_eq!(timeout_header(Duration::from_millis(1500)), "1500m");
        assert_eq!(timeout_header(Duration::from_secs(200_000)), "200000S");
        for bad in [
            &b"123456789m"[..],
            b"m",
            b"10",
            b"10x",
            b"-1S",
            b"1.5S",
            b"",
        ] {
            assert_eq!(
                parse_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
