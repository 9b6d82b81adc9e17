//! When a request may be sent again: one pure rule ([`verdict`]) for every way a try can end.
//!
//! The rule says whether a retry would be *safe*; the retry budget, asked afterwards by the try
//! loop, says whether it *may* happen now. The rule (README, "Retries and at-most-once"):
//! - a request that never reached a backend (no connection, or hyper handed it back unsent) is
//!   retried whatever its method: nothing was executed;
//! - a request that was sent (the connection broke before response headers, the try timed out,
//!   or the backend answered 502/503) is retried only if its method is idempotent (RFC 9110
//!   9.2.2: sending it twice has the effect of sending it once) and its body was empty or kept
//!   whole (`retries.buffer_limit`), so that the same request can be sent again. A POST that a
//!   backend read and then reset on gets `502`: it may have run, so it must not run twice;
//! - any other answer from a backend is the client's answer;
//! - never past `retries.max_attempts` tries or the `retries.deadline`;
//! - never once response bytes have gone to the client: the rule is asked only before a
//!   response head is passed on.

use super::local::LocalAnswer;
use http::Method;

/// Whether a method may be sent twice without changing the outcome (RFC 9110 9.2.2).
pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// How one try ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TryOutcome {
    /// No connection to the backend could be had: nothing was sent.
    NoConnection,
    /// The connection turned out to be unusable (a kept-alive connection the backend had just
    /// closed) and hyper handed the request back before writing any of it.
    ConnectionUnusableUnsent,
    /// The request was written, in full or in part, and the connection closed before the
    /// response headers: the backend may have acted on it.
    ClosedBeforeHeaders,
    /// No response headers within the try's time limit: the backend may be acting on it.
    TryTimedOut,
    /// The client's body went wrong while it was being sent (cut off, reset, badly framed, too
    /// slow): the client's doing, never retried, and not the backend's failure.
    ClientBodyFailed {
        /// Too slow (408) rather than broken (400).
        too_slow: bool,
    },
    /// The backend answered with this status.
    Answered {
        /// The response status.
        status: u16,
    },
}

/// What the rule knows of the request and of the tries so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// The method is idempotent ([`is_idempotent`]).
    pub(crate) idempotent: bool,
    /// The body was empty or kept whole, so the same request can be sent again.
    pub(crate) replayable: bool,
    /// This try's number, 1 for the first.
    pub(crate) number: u32,
    /// `retries.max_attempts`, the first try included (at least 1).
    pub(crate) max_attempts: u32,
    /// The request's `retries.deadline` has passed.
    pub(crate) deadline_passed: bool,
}

impl Attempt {
    /// Whether this try, once sent, could be followed by another if it failed: an idempotent
    /// method with a body that can be sent again, and tries left. The try loop asks before
    /// sending, to keep a copy of what hyper consumes only when it may be needed.
    pub(crate) const fn may_retry_if_sent(self) -> bool {
        self.idempotent && self.replayable && self.number < self.max_attempts
    }
}

/// What to do after a try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send the request again, to another backend, if the retry budget allows; otherwise do
    /// what [`without_retry`] says.
    Retry,
    /// Give the client this answer of ebbtide's own.
    Answer(LocalAnswer),
    /// Give the client the backend's response.
    PassThrough,
}

/// The retry rule: what to do after a try that ended with `outcome` (see the module doc).
pub(crate) const fn verdict(outcome: TryOutcome, attempt: Attempt) -> Verdict {
    if would_retry(outcome, attempt) {
        Verdict::Retry
    } else {
        without_retry(outcome)
    }
}

/// What the client gets when `outcome` is not followed by another try.
pub(crate) const fn without_retry(outcome: TryOutcome) -> Verdict {
    match outcome {
        TryOutcome::NoConnection => Verdict::Answer(LocalAnswer::NoConnection),
        TryOutcome::ConnectionUnusableUnsent => Verdict::Answer(LocalAnswer::NotSent),
        TryOutcome::ClosedBeforeHeaders => Verdict::Answer(LocalAnswer::ClosedWithoutResponse),
        TryOutcome::TryTimedOut => Verdict::Answer(LocalAnswer::Timeout),
        TryOutcome::ClientBodyFailed { too_slow: false } => Verdict::Answer(LocalAnswer::BadBody),
        TryOutcome::ClientBodyFailed { too_slow: true } => {
            Verdict::Answer(LocalAnswer::BodyTimeout)
        }
        TryOutcome::Answered { .. } => Verdict::PassThrough,
    }
}

const fn would_retry(outcome: TryOutcome, attempt: Attempt) -> bool {
    if attempt.number >= attempt.max_attempts || attempt.deadline_passed {
        return false;
    }
    match outcome {
        // Never reached a backend: nothing ran, any method may go elsewhere.
        TryOutcome::NoConnection | TryOutcome::ConnectionUnusableUnsent => true,
        // Reached a backend, which may have acted on it: only if running it twice is harmless
        // (RFC 9110 9.2.2) and the same bytes can be sent again.
        TryOutcome::ClosedBeforeHeaders
        | TryOutcome::TryTimedOut
        // 502/503: this backend could not serve it (a gateway or an overloaded backend behind
        // it); another one may.
        | TryOutcome::Answered { status: 502 | 503 } => attempt.may_retry_if_sent(),
        TryOutcome::Answered { .. } | TryOutcome::ClientBodyFailed { .. } => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TryOutcome::*;

    const R: Verdict = Verdict::Retry;
    const P: Verdict = Verdict::PassThrough;
    const NO_CONN: Verdict = Verdict::Answer(LocalAnswer::NoConnection);
    const UNSENT: Verdict = Verdict::Answer(LocalAnswer::NotSent);
    const CLOSED: Verdict = Verdict::Answer(LocalAnswer::ClosedWithoutResponse);
    const TIMEOUT: Verdict = Verdict::Answer(LocalAnswer::Timeout);
    const BAD_BODY: Verdict = Verdict::Answer(LocalAnswer::BadBody);
    const SLOW_BODY: Verdict = Verdict::Answer(LocalAnswer::BodyTimeout);
    const BROKEN: TryOutcome = ClientBodyFailed { too_slow: false };
    const SLOW: TryOutcome = ClientBodyFailed { too_slow: true };
    const fn answered(status: u16) -> TryOutcome {
        Answered { status }
    }

    /// (idempotent, replayable) for the four columns of [`TABLE`].
    const COLUMNS: [(bool, bool); 4] = [(true, true), (true, false), (false, true), (false, false)];

    /// Every outcome, on a try before the last and on the last one, for an idempotent method
    /// with a kept body, one with a streamed body, and a non-idempotent method with a kept
    /// (e.g. empty) body and with a streamed one.
    #[rustfmt::skip]
    const TABLE: &[(TryOutcome, bool, [Verdict; 4])] = &[
        // outcome                 last    idem+kept idem+stream other+kept other+stream
        (NoConnection,             false, [R,        R,          R,         R]),
        (NoConnection,             true,  [NO_CONN,  NO_CONN,    NO_CONN,   NO_CONN]),
        (ConnectionUnusableUnsent, false, [R,        R,          R,         R]),
        (ConnectionUnusableUnsent, true,  [UNSENT,   UNSENT,     UNSENT,    UNSENT]),
        (ClosedBeforeHeaders,      false, [R,        CLOSED,     CLOSED,    CLOSED]),
        (ClosedBeforeHeaders,      true,  [CLOSED,   CLOSED,     CLOSED,    CLOSED]),
        (TryTimedOut,              false, [R,        TIMEOUT,    TIMEOUT,   TIMEOUT]),
        (TryTimedOut,              true,  [TIMEOUT,  TIMEOUT,    TIMEOUT,   TIMEOUT]),
        (BROKEN,                   false, [BAD_BODY, BAD_BODY,   BAD_BODY,  BAD_BODY]),
        (BROKEN,                   true,  [BAD_BODY, BAD_BODY,   BAD_BODY,  BAD_BODY]),
        (SLOW,                     false, [SLOW_BODY, SLOW_BODY, SLOW_BODY, SLOW_BODY]),
        (SLOW,                     true,  [SLOW_BODY, SLOW_BODY, SLOW_BODY, SLOW_BODY]),
        (answered(502),            false, [R,        P,          P,         P]),
        (answered(502),            true,  [P,        P,          P,         P]),
        (answered(503),            false, [R,        P,          P,         P]),
        (answered(503),            true,  [P,        P,          P,         P]),
        (answered(200),            false, [P,        P,          P,         P]),
        (answered(200),            true,  [P,        P,          P,         P]),
        (answered(404),            false, [P,        P,          P,         P]),
        (answered(404),            true,  [P,        P,          P,         P]),
        (answered(500),            false, [P,        P,          P,         P]),
        (answered(500),            true,  [P,        P,          P,         P]),
        (answered(504),            false, [P,        P,          P,         P]),
        (answered(504),            true,  [P,        P,          P,         P]),
    ];

    fn attempt(idempotent: bool, replayable: bool, last: bool, deadline_passed: bool) -> Attempt {
        let max_attempts = 3;
        Attempt {
            idempotent,
            replayable,
            number: if last { max_attempts } else { max_attempts - 1 },
            max_attempts,
            deadline_passed,
        }
    }

    #[test]
    fn the_table() {
        for &(outcome, last, expected) in TABLE {
            for (&(idempotent, replayable), want) in COLUMNS.iter().zip(expected) {
                let at = attempt(idempotent, replayable, last, false);
                assert_eq!(verdict(outcome, at), want, "{outcome:?} {at:?}");
            }
        }
    }

    #[test]
    fn past_the_deadline_nothing_is_retried() {
        for &(outcome, last, _) in TABLE {
            for (idempotent, replayable) in COLUMNS {
                let at = attempt(idempotent, replayable, last, true);
                assert_eq!(verdict(outcome, at), without_retry(outcome), "{at:?}");
            }
        }
    }

    #[test]
    fn one_attempt_means_no_retry() {
        for &(outcome, ..) in TABLE {
            let at = Attempt {
                idempotent: true,
                replayable: true,
                number: 1,
                max_attempts: 1,
                deadline_passed: false,
            };
            assert_eq!(verdict(outcome, at), without_retry(outcome));
        }
    }

    /// The try loop keeps a copy of the headers only when `may_retry_if_sent`: a sent request
    /// the rule retries must have had that copy kept.
    #[test]
    fn a_sent_request_is_retried_only_if_it_was_kept_for_it() {
        for &(outcome, last, _) in TABLE {
            if matches!(outcome, NoConnection | ConnectionUnusableUnsent) {
                continue;
            }
            for (idempotent, replayable) in COLUMNS {
                let at = attempt(idempotent, replayable, last, false);
                if verdict(outcome, at) == R {
                    assert!(at.may_retry_if_sent(), "{outcome:?} {at:?}");
                }
            }
        }
    }

    #[test]
    fn only_a_backend_answer_passes_through() {
        for &(outcome, ..) in TABLE {
            let passes = without_retry(outcome) == P;
            assert_eq!(passes, matches!(outcome, Answered { .. }), "{outcome:?}");
        }
    }

    #[test]
    fn idempotent_methods() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
            Method::TRACE,
        ] {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
        }
    }
}
