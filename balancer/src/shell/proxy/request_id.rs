//! `X-Request-Id`: the client's own when it sent a usable one, else one made here; sent to the
//! backend, returned on the response and written in the access log (as NGINX's `$request_id`
//! and Envoy's `x-request-id` do).
//!
//! A made id is 32 hex digits: a random prefix drawn once per process, then a counter. Unique
//! within a process and, with 64 random bits, across processes; one atomic add per request and
//! no system call.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// The header.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client id passed through; a longer one is replaced.
const MAX_LEN: usize = 128;

/// Makes request ids.
#[derive(Debug)]
pub(crate) struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    /// A generator with a random prefix (from the standard library's per-process random hash
    /// keys, which the OS seeds).
    pub(crate) fn new() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        RequestIds {
            prefix: h.finish(),
            next: AtomicU64::new(0),
        }
    }

    /// A new id.
    pub(crate) fn make(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut buf = [0u8; 32];
        hex(self.prefix, &mut buf[..16]);
        hex(n, &mut buf[16..]);
        HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
    }

    /// The request's id: the client's `X-Request-Id` when it sent exactly one that is 1 to 128
    /// visible ASCII characters, else a new one, which replaces whatever the client sent.
    pub(crate) fn ensure(&self, headers: &mut HeaderMap) -> HeaderValue {
        let mut sent = headers.get_all(&X_REQUEST_ID).iter();
        if let (Some(v), None) = (sent.next(), sent.next()) {
            if usable(v) {
                return v.clone();
            }
        }
        let id = self.make();
        headers.insert(X_REQUEST_ID.clone(), id.clone());
        id
    }
}

/// 1 to [`MAX_LEN`] visible ASCII characters (no spaces: it goes into log lines as one field).
fn usable(v: &HeaderValue) -> bool {
    usable_bytes(v.as_bytes())
}

/// [`usable`] on a field value's bytes (the native lane has no `HeaderValue`).
pub(crate) fn usable_bytes(b: &[u8]) -> bool {
    !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|c| c.is_ascii_graphic())
}

/// `n` as lowercase hex digits filling `out` (the low digits of `n` when `out` is short).
fn hex(mut n: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = DIGITS[(n & 0xf) as usize];
        n >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_ids_are_unique_hex_with_one_prefix() {
        let ids = RequestIds::new();
        let a = ids.make();
        let b = ids.make();
        assert_ne!(a, b);
        for v in [&a, &b] {
            assert_eq!(v.len(), 32);
            assert!(v.as_bytes().iter().all(u8::is_ascii_hexdigit), "{v:?}");
        }
        assert_eq!(a.as_bytes()[..16], b.as_bytes()[..16]);
        assert!(b.to_str().unwrap().ends_with("0001"), "{b:?}");
        assert_ne!(
            RequestIds::new().prefix,
            ids.prefix,
            "two generators draw two prefixes"
        );
    }

    #[test]
    fn a_usable_client_id_is_kept_and_a_bad_one_replaced() {
        let ids = RequestIds::new();
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("client-id-7"));
        assert_eq!(ids.ensure(&mut h), "client-id-7");
        assert_eq!(h[&X_REQUEST_ID], "client-id-7");

        let long = "x".repeat(MAX_LEN + 1);
        for bad in ["", "has space", "tab\there", long.as_str()] {
            let mut h = HeaderMap::new();
            h.insert(&X_REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = ids.ensure(&mut h);
            assert_eq!(id.len(), 32, "{bad:?} replaced");
            assert_eq!(h[&X_REQUEST_ID], id);
        }
        let mut h = HeaderMap::new();
        h.append(&X_REQUEST_ID, HeaderValue::from_static("a"));
        h.append(&X_REQUEST_ID, HeaderValue::from_static("b"));
        let id = ids.ensure(&mut h);
        assert_eq!(
            h.get_all(&X_REQUEST_ID).iter().count(),
            1,
            "two ids: one made"
        );
        assert_eq!(h[&X_REQUEST_ID], id);
        let mut h = HeaderMap::new();
        let id = ids.ensure(&mut h);
        assert_eq!(h[&X_REQUEST_ID], id, "none: one made and set");
    }

    #[test]
    fn hex_fills_from_the_right() {
        let mut b = [0u8; 4];
        hex(0xab, &mut b);
        assert_eq!(&b, b"00ab");
    }
}
