//! ebbtide's own answers: every response the balancer makes up instead of passing a backend's
//! through. Each one's status and text are given once, in the table below; its metric label is
//! its status (`ebbtide_requests_total{backend="none",code}`), and the codes `/metrics` lists are
//! worked out from the table at compile time ([`CODES`]), so they cannot drift apart.

use crate::body::{OnEnd, ProxyBody};
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};

/// Declares [`LocalAnswer`] from one table (variant, status, text), so that `ALL` lists every
/// variant in declaration order (the counters index by `answer as usize`).
macro_rules! local_answers {
    ($($(#[$doc:meta])* $name:ident => $status:ident, $text:literal;)*) => {
        /// An answer of ebbtide's own.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum LocalAnswer {
            $($(#[$doc])* $name,)*
        }

        impl LocalAnswer {
            /// Every answer, in declaration order.
            pub(crate) const ALL: [LocalAnswer; [$(LocalAnswer::$name),*].len()] =
                [$(LocalAnswer::$name),*];

            /// Its status and text, from the table.
            const fn row(self) -> (StatusCode, &'static str) {
                match self {
                    $(LocalAnswer::$name => (StatusCode::$status, $text),)*
                }
            }
        }
    };
}

local_answers! {
    /// `CONNECT`: ebbtide does not tunnel (but for HTTP/2's extended CONNECT of a WebSocket).
    ConnectNotSupported => METHOD_NOT_ALLOWED,
        "405 Method Not Allowed: CONNECT is not supported\n";
    /// An upgrade to a protocol other than `websocket` (`h2c` is ignored instead: the request
    /// is served as plain HTTP/1.1), or an extended CONNECT with another `:protocol`.
    UpgradeNotSupported => NOT_IMPLEMENTED,
        "501 Not Implemented: only the websocket protocol is tunnelled\n";
    /// A WebSocket upgrade that is not a GET, or has a body (RFC 6455 4.1).
    BadUpgrade => BAD_REQUEST,
        "400 Bad Request: a WebSocket upgrade must be a GET without a body\n";
    /// The backend answered a WebSocket upgrade with a success other than `101` (or a 101 to
    /// another protocol): passed on to an HTTP/2 client, it would read as an open tunnel.
    UpgradeRefused => BAD_GATEWAY,
        "502 Bad Gateway: the backend did not accept the WebSocket upgrade\n";
    /// An `Idempotency-Key` that is empty, too long or not visible ASCII.
    BadIdempotencyKey => BAD_REQUEST,
        "400 Bad Request: Idempotency-Key must be 1 to 255 visible ASCII characters\n";
    /// A request target longer than `[listener] max_uri_bytes`.
    UriTooLong => URI_TOO_LONG, "414 URI Too Long: the request target is too long\n";
    /// No `Host` header and no authority in the target.
    NoHost => BAD_REQUEST, "400 Bad Request: the request has no Host\n";
    /// Two `Host` headers, or an invalid one (a list, a path, userinfo, empty), or an invalid
    /// authority in the target.
    BadHost => BAD_REQUEST, "400 Bad Request: the Host is repeated or invalid\n";
    /// A request target in a form its method does not allow (`*` but for OPTIONS, an
    /// authority alone but for CONNECT).
    BadTarget => BAD_REQUEST, "400 Bad Request: invalid request target\n";
    /// `Content-Length` and `Transfer-Encoding` together, or `Transfer-Encoding` in HTTP/1.0:
    /// framing that two hops could read differently (request smuggling).
    AmbiguousFraming => BAD_REQUEST,
        "400 Bad Request: ambiguous request framing (Content-Length with Transfer-Encoding)\n";
    /// A `Transfer-Encoding` other than `chunked` alone.
    TransferCodingNotImplemented => NOT_IMPLEMENTED,
        "501 Not Implemented: only Transfer-Encoding: chunked is supported\n";
    /// A body to be kept for retries ended early or ran past its `Content-Length`.
    BodyCutOff => BAD_REQUEST,
        "400 Bad Request: the request body was cut off or longer than its Content-Length\n";
    /// The client's body broke off or was badly framed (an invalid chunk size, a reset): the
    /// client's fault, not the backend's.
    BadBody => BAD_REQUEST,
        "400 Bad Request: the request body was cut off or badly framed\n";
    /// The client's body stalled past `body_read_timeout` or fell below `min_body_rate`.
    BodyTimeout => REQUEST_TIMEOUT,
        "408 Request Timeout: the request body did not arrive in time\n";
    /// Every backend busy and the wait queue full (sent with `Retry-After`).
    QueueFull => SERVICE_UNAVAILABLE,
        "503 Service Unavailable: every backend is busy and the queue is full\n";
    /// No backend slot freed within the queue timeout (sent with `Retry-After`).
    QueueTimeout => SERVICE_UNAVAILABLE,
        "503 Service Unavailable: no backend became free in time\n";
    /// No connection could be made to the backend.
    NoConnection => BAD_GATEWAY, "502 Bad Gateway: could not connect to a backend\n";
    /// The connection was unusable and the request was handed back unsent.
    NotSent => BAD_GATEWAY, "502 Bad Gateway: could not send the request to a backend\n";
    /// The backend closed the connection after the request was sent, before response headers.
    ClosedWithoutResponse => BAD_GATEWAY,
        "502 Bad Gateway: the backend closed the connection without a response\n";
    /// No response headers within the per-try timeout (or what was left of the deadline).
    Timeout => GATEWAY_TIMEOUT, "504 Gateway Timeout: the backend did not answer in time\n";
    /// An `Idempotency-Key` seen before with another method or path.
    IdempotencyMismatch => UNPROCESSABLE_ENTITY,
        "422 Unprocessable Content: this Idempotency-Key was used for a different request\n";
    /// The idempotency cache is full of keys still executing.
    IdempotencyFull => SERVICE_UNAVAILABLE,
        "503 Service Unavailable: too many Idempotency-Keys in flight\n";
    /// A duplicate of a keyed request whose response was larger than `idempotency.max_body`.
    TooLargeToReplay => CONFLICT,
        "409 Conflict: this Idempotency-Key was executed but its response was too large to keep\n";
    /// A keyed request was executed but its response broke off: stored for duplicates (which
    /// replay it), and given to the first client without being counted as a local answer.
    ResponseBrokeOff => BAD_GATEWAY, "502 Bad Gateway: the backend's response broke off\n";
    /// The task that executed a keyed request failed (panicked).
    Internal => BAD_GATEWAY, "502 Bad Gateway: the request failed inside the balancer\n";
}

impl LocalAnswer {
    /// Its status, which is also its `code` label in `/metrics`.
    pub(crate) const fn status(self) -> StatusCode {
        self.row().0
    }

    /// Whether the connection must close after it: the request's body was not read, or its
    /// framing cannot be trusted, so the next bytes on the connection are not a request.
    pub(crate) const fn closes_connection(self) -> bool {
        matches!(
            self,
            LocalAnswer::AmbiguousFraming
                | LocalAnswer::TransferCodingNotImplemented
                | LocalAnswer::BadUpgrade
                | LocalAnswer::BadBody
                | LocalAnswer::BodyTimeout
                | LocalAnswer::BodyCutOff
        )
    }

    /// Whether it answers something the client did wrong with its body: such requests are
    /// left out of the signals' latency (a slow upload is not a slow fleet).
    pub(crate) const fn is_client_fault(self) -> bool {
        matches!(
            self,
            LocalAnswer::BadBody | LocalAnswer::BodyTimeout | LocalAnswer::BodyCutOff
        )
    }

    /// Its body: the status line's words, then why, on one line.
    pub(crate) const fn text(self) -> &'static str {
        self.row().1
    }

    /// The response: the text as `text/plain`, with `guard` told when it has gone.
    pub(crate) fn response<G: OnEnd>(self, guard: Option<G>) -> Response<ProxyBody<G>> {
        let mut resp = Response::new(ProxyBody::full(self.text(), guard));
        *resp.status_mut() = self.status();
        if self.closes_connection() {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        resp
    }
}

/// Codes reported at 0 although no answer uses them: 413 was listed from the first release on,
/// and dropping it would remove a series from `/metrics`.
const ALSO_REPORTED: [u16; 1] = [413];

/// Every answer's status and [`ALSO_REPORTED`], ascending, without repeats; and how many.
const fn collect_codes() -> ([u16; LocalAnswer::ALL.len() + ALSO_REPORTED.len()], usize) {
    let all = LocalAnswer::ALL;
    let mut out = [0u16; LocalAnswer::ALL.len() + ALSO_REPORTED.len()];
    let mut n = 0;
    let mut i = 0;
    while i < out.len() {
        let code = if i < all.len() {
            all[i].status().as_u16()
        } else {
            ALSO_REPORTED[i - all.len()]
        };
        let mut at = 0;
        while at < n && out[at] < code {
            at += 1;
        }
        if at == n || out[at] != code {
            let mut k = n;
            while k > at {
                out[k] = out[k - 1];
                k -= 1;
            }
            out[at] = code;
            n += 1;
        }
        i += 1;
    }
    (out, n)
}

/// The codes of `ebbtide_requests_total{backend="none"}`, ascending.
pub(crate) const CODES: [u16; collect_codes().1] = {
    let (all, _) = collect_codes();
    let mut out = [0u16; collect_codes().1];
    let mut i = 0;
    while i < out.len() {
        out[i] = all[i];
        i += 1;
    }
    out
};

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn codes_are_those_metrics_always_listed() {
        assert_eq!(
            CODES,
            [400, 405, 408, 409, 413, 414, 422, 501, 502, 503, 504]
        );
    }

    #[test]
    fn all_is_in_declaration_order() {
        for (i, a) in LocalAnswer::ALL.iter().enumerate() {
            assert_eq!(*a as usize, i, "{a:?}");
        }
    }

    #[test]
    fn each_text_starts_with_its_status_and_is_one_line() {
        for a in LocalAnswer::ALL {
            let code = format!("{} ", a.status().as_u16());
            assert!(a.text().starts_with(&code), "{a:?}: {:?}", a.text());
            assert!(a.text().contains(": "), "{a:?}: {:?}", a.text());
            assert!(a.text().ends_with('\n'), "{a:?}");
            assert_eq!(a.text().lines().count(), 1, "{a:?}");
        }
    }

    #[tokio::test]
    async fn the_response_is_plain_text_with_the_status() {
        let resp = LocalAnswer::Timeout.response::<()>(None);
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, LocalAnswer::Timeout.text());
    }
}
