//! What a request must be to be forwarded at all, beyond what hyper's parser already refuses
//! (obs-fold, bare CR, NUL, whitespace before a colon, invalid tokens, conflicting
//! `Content-Length`s, a `Transfer-Encoding` that does not end in `chunked`):
//! - the request target in a form its method allows (RFC 9112 3.2): origin-form or absolute-form,
//!   `*` only for OPTIONS, authority-form only for CONNECT (which is refused anyway);
//! - one `Host`, and a valid one: a host name or IP literal and an optional port, no list, no
//!   path, no userinfo, not empty (RFC 9112 3.2, RFC 9110 4.2.4 and 7.2). A target with an
//!   authority (absolute-form, or HTTP/2's `:authority`) must have a valid one too, and its
//!   authority replaces `Host` (see `headers::prepare_head`);
//! - request framing that every hop reads the same way (RFC 9112 6.1 and 6.3): `Content-Length`
//!   and `Transfer-Encoding` together get 400; a `Transfer-Encoding` other than exactly
//!   `chunked` gets 501 (ebbtide would otherwise forward `gzip, chunked` as plain chunked, and
//!   the backend would read gzip bytes as the body); `Transfer-Encoding` in HTTP/1.0 gets 400.
//!
//! Pure functions of the request head: no I/O, no allocation.

use super::local::LocalAnswer;
use http::header::{self, HeaderMap};
use http::{Method, Uri, Version};

/// Checks a request head; the answer to give when it must not be forwarded.
pub(crate) fn check(
    method: &Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
) -> Result<(), LocalAnswer> {
    check_target(method, uri)?;
    check_host(uri, headers)?;
    check_framing(version, headers)
}

fn check_target(method: &Method, uri: &Uri) -> Result<(), LocalAnswer> {
    let path = uri.path();
    let ok = match (uri.scheme(), uri.authority()) {
        // Authority-form: for CONNECT only.
        (None, Some(_)) => false,
        _ => path.starts_with('/') || (path == "*" && *method == Method::OPTIONS),
    };
    if ok {
        Ok(())
    } else {
        Err(LocalAnswer::BadTarget)
    }
}

fn check_host(uri: &Uri, headers: &HeaderMap) -> Result<(), LocalAnswer> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(LocalAnswer::BadHost);
    }
    if let Some(a) = uri.authority() {
        // The target's authority is the one used; it must be valid, and so must any Host sent
        // beside it (an invalid one is a sign of a confused or hostile client).
        if !valid_host(a.as_str().as_bytes()) {
            return Err(LocalAnswer::BadHost);
        }
    } else if host.is_none() {
        return Err(LocalAnswer::NoHost);
    }
    match host {
        Some(h) if !valid_host(h.as_bytes()) => Err(LocalAnswer::BadHost),
        _ => Ok(()),
    }
}

pub(crate) use crate::core::h1::valid_host;

fn check_framing(version: Version, headers: &HeaderMap) -> Result<(), LocalAnswer> {
    if !headers.contains_key(header::TRANSFER_ENCODING) {
        return Ok(());
    }
    if headers.contains_key(header::CONTENT_LENGTH) || version == Version::HTTP_10 {
        return Err(LocalAnswer::AmbiguousFraming);
    }
    // Exactly one coding, `chunked`, over all the Transfer-Encoding fields.
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&c| c == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    let only_chunked = codings
        .next()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
        && codings.next().is_none();
    if only_chunked {
        Ok(())
    } else {
        Err(LocalAnswer::TransferCodingNotImplemented)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn head(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn framing() {
        let v11 = Version::HTTP_11;
        assert_eq!(
            check_framing(v11, &head(&[("content-length", "5")])),
            Ok(())
        );
        assert_eq!(
            check_framing(v11, &head(&[("transfer-encoding", "Chunked")])),
            Ok(())
        );
        assert_eq!(
            check_framing(
                v11,
                &head(&[("transfer-encoding", "chunked"), ("content-length", "5")])
            ),
            Err(LocalAnswer::AmbiguousFraming)
        );
        assert_eq!(
            check_framing(Version::HTTP_10, &head(&[("transfer-encoding", "chunked")])),
            Err(LocalAnswer::AmbiguousFraming)
        );
        for te in [
            &[("transfer-encoding", "gzip, chunked")][..],
            &[("transfer-encoding", "identity, chunked")],
            &[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "chunked, chunked")],
        ] {
            assert_eq!(
                check_framing(v11, &head(te)),
                Err(LocalAnswer::TransferCodingNotImplemented),
                "{te:?}"
            );
        }
    }

    #[test]
    fn targets_and_hosts() {
        let get = Method::GET;
        let host = head(&[("host", "a.test")]);
        let ok = |m: &Method, u: &str, h: &HeaderMap| {
            check(m, &u.parse::<Uri>().unwrap(), Version::HTTP_11, h)
        };
        assert_eq!(ok(&get, "/x", &host), Ok(()));
        assert_eq!(ok(&get, "http://b.test/x", &host), Ok(()));
        assert_eq!(ok(&Method::OPTIONS, "*", &host), Ok(()));
        assert_eq!(ok(&get, "*", &host), Err(LocalAnswer::BadTarget));
        assert_eq!(ok(&get, "b.test:80", &host), Err(LocalAnswer::BadTarget));
        assert_eq!(ok(&get, "/x", &HeaderMap::new()), Err(LocalAnswer::NoHost));
        assert_eq!(ok(&get, "http://b.test/x", &HeaderMap::new()), Ok(()));
        assert_eq!(
            ok(&get, "http://u@b.test/x", &host),
            Err(LocalAnswer::BadHost)
        );
        assert_eq!(
            ok(&get, "/x", &head(&[("host", "a.test"), ("host", "a.test")])),
            Err(LocalAnswer::BadHost)
        );
    }
}
