//! The try loop: a backend slot, a connection, the request sent, and another try where the
//! retry rule and the retry budget allow.

use super::client_body::{BodyWatch, ClientBody, ClientBodyError, ClientFault};
use super::completion::{Body, Completion};
use super::grpc;
use super::headers::{
    content_length, keep_headers, prepare_head, rebuild_headers, request_key, strip_hop_by_hop,
};
use super::local::LocalAnswer;
use super::retry::{self, is_idempotent, Attempt, TryOutcome, Verdict};
use super::{Live, Peer, Proxy};
use crate::access_log::Tries;
use crate::body::ProxyBody;
use crate::dispatch::{Shed, Tried};
use crate::pool::UpstreamBody;
use crate::registry::Backend;
use crate::retry_budget::RetryBudget;
use ebbtide_config::time::Nanos;
use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A response and whether any backend received the request.
pub(super) struct Forwarded {
    pub(super) response: Response<Body>,
    pub(super) reached_backend: bool,
}

impl Proxy {
    /// Sends a request to a backend, trying again where that is safe.
    pub(super) async fn forward(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: &Peer,
        start: Nanos,
        live: &Live,
    ) -> Forwarded {
        let settings = &live.settings;
        let key = settings
            .hash_key
            .as_ref()
            .and_then(|k| request_key(k, &req));
        let (parts, incoming) = req.into_parts();
        let mut head = match prepare_head(parts, peer) {
            Ok(h) => h,
            Err(answer) => return self.not_reached(start, answer),
        };
        let grpc = grpc::is_grpc(&head.headers);
        let grpc_deadline = grpc
            .then(|| grpc::timeout(&head.headers))
            .flatten()
            .map(|t| start.saturating_add(t.as_nanos() as Nanos));
        let retries = &settings.retries;
        let max_attempts = retries.max_attempts.max(1);
        let idempotent = is_idempotent(&head.method);
        // A small body (or one kept for retries) is read whole before a backend slot is taken,
        // so a slow upload holds no backend; a larger one streams, watched so that what the
        // client does to it is not blamed on the backend.
        let length = content_length(&head.headers);
        let read_whole = !grpc && length.is_some_and(|n| reads_whole(settings, idempotent, n));
        let mut watch = None;
        let mut body = if incoming.is_end_stream() {
            UpstreamBody::Empty
        } else if read_whole {
            let limit = settings.request_buffer.max(retries.buffer_limit);
            let client = ClientBody::new(incoming, settings.body_limits, None, self.clock);
            match Limited::new(client, limit).collect().await {
                Ok(c) => UpstreamBody::Full(Some(c.to_bytes())),
                Err(e) => {
                    let answer = match e.downcast_ref::<ClientBodyError>() {
                        Some(ClientBodyError::TooSlow) => LocalAnswer::BodyTimeout,
                        _ => LocalAnswer::BodyCutOff,
                    };
                    return self.not_reached(start, answer);
                }
            }
        } else {
            let w = Arc::new(BodyWatch::default());
            let mut client =
                ClientBody::new(incoming, settings.body_limits, Some(w.clone()), self.clock);
            if grpc {
                client = client.untimed();
            }
            // No Content-Length (chunked, or HTTP/2 without one): read up to request_buffer
            // before taking a slot; a body that ends within it is sent whole, a longer one is
            // streamed after what was read. Not a gRPC call's: it streams at once.
            if length.is_none() && settings.request_buffer > 0 && !grpc {
                match client.read_prefix(settings.request_buffer).await {
                    Ok(true) => UpstreamBody::Full(Some(client.take_prefix())),
                    Ok(false) => {
                        watch = Some(w);
                        UpstreamBody::Stream(client)
                    }
                    Err(e) => {
                        let answer = match e {
                            ClientBodyError::TooSlow => LocalAnswer::BodyTimeout,
                            ClientBodyError::Read(_) => LocalAnswer::BadBody,
                        };
                        return self.not_reached(start, answer);
                    }
                }
            } else {
                watch = Some(w);
                UpstreamBody::Stream(client)
            }
        };
        let ready = self.clock.now();
        let watch = watch.as_deref();
        let replayable = body.replay().is_some();
        let per_try = if retries.per_try_timeout.0.is_zero() {
            settings.response_timeout
        } else {
            retries.per_try_timeout.0
        };
        let deadline = (!retries.deadline.0.is_zero()).then(|| start + retries.deadline.as_nanos());
        // A gRPC call's deadline bounds its wait for a slot and every try.
        let deadline = match (deadline, grpc_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let budget = &live.budget;
        let mut tried = Tried::new();
        let mut attempt = 0;
        let mut reached = false;
        let mut kept = None;
        // For the access log: the queue time needs one more clock read per try, made only
        // when the log is on.
        let logging = self.access.get().is_some();
        let mut tries = Tries::default();
        let mut acquire_from = ready;
        let mut refused = RefusedWait::default();
        loop {
            attempt += 1;
            if let Some(k) = kept.take() {
                head.headers = rebuild_headers(k);
            }
            let facts = |deadline_passed| Attempt {
                idempotent,
                replayable,
                number: attempt,
                max_attempts,
                deadline_passed,
            };
            let acquired = match grpc_deadline {
                None => Ok(self.acquire_slot(key, tried, refused.next.take()).await),
                Some(d) => {
                    let left = Duration::from_nanos(d.saturating_sub(self.clock.now()));
                    tokio::time::timeout(left, self.dispatcher.acquire(key, tried)).await
                }
            };
            if logging {
                tries.queue_ns += self.clock.now().saturating_sub(acquire_from);
            }
            let Ok(acquired) = acquired else {
                return self.deadline_passed(start, None, reached);
            };
            let slot = match acquired {
                Ok(s) => s,
                Err(shed) => {
                    return Forwarded {
                        response: with_tries(self.shed(start, shed), tries),
                        reached_backend: reached,
                    };
                }
            };
            tries.attempts = attempt;
            if grpc_deadline.is_some_and(|d| self.clock.now() >= d) {
                // Passed while it waited: no try, and nothing held against a backend.
                return self.deadline_passed(start, Some(slot), reached);
            }
            let backend = slot.backend().clone();
            // One try: how it ended, when, and the backend's response if it answered.
            let (outcome, now, answered) = match backend.pool.checkout().await {
                Err(e) => {
                    // Out of file descriptors or ports here is ebbtide's trouble, not the
                    // backend's: no ejection for it.
                    if !e.is_local() {
                        self.on_failure(&backend, None);
                    }
                    tracing::warn!(backend = %backend.address, error = %e, attempt, "no connection to the backend");
                    (TryOutcome::NoConnection, self.clock.now(), None)
                }
                Ok(mut conn) => {
                    let retry_after_send = facts(false).may_retry_if_sent();
                    let this_body = match body.replay() {
                        Some(b) => b,
                        None => std::mem::replace(&mut body, UpstreamBody::Empty),
                    };
                    // hyper consumes what it sends. When this try may be followed by another,
                    // keep a flat copy of the headers (one allocation, no hashing) to rebuild
                    // them from.
                    kept = retry_after_send.then(|| keep_headers(&head.headers));
                    let mut up = Request::new(this_body);
                    *up.method_mut() = head.method.clone();
                    *up.uri_mut() = if retry_after_send {
                        head.uri.clone()
                    } else {
                        std::mem::take(&mut head.uri)
                    };
                    *up.version_mut() = Version::HTTP_11;
                    *up.headers_mut() = std::mem::take(&mut head.headers);
                    if head.te_trailers && conn.is_h2() {
                        up.headers_mut()
                            .insert(header::TE, HeaderValue::from_static("trailers"));
                    }
                    if let Some(d) = grpc_deadline {
                        let left = Duration::from_nanos(d.saturating_sub(self.clock.now()));
                        up.headers_mut()
                            .insert(&grpc::TIMEOUT, grpc::timeout_header(left));
                    }
                    let reused = conn.reused;
                    let sent_at = self.clock.now();
                    let in_flight = backend.in_flight();
                    let limit = match deadline {
                        Some(d) => per_try.min(Duration::from_nanos(d.saturating_sub(sent_at))),
                        None => per_try,
                    };
                    let tried_once = match send_within(limit, watch, self.clock, conn.send(up))
                        .await
                    {
                        Ok(Ok(resp)) => {
                            reached = true;
                            let now = self.clock.now();
                            // The backend's time: from when it had the whole request.
                            let rtt = now.saturating_sub(backend_start(sent_at, watch));
                            let status = resp.status();
                            backend.count_response(status.as_u16());
                            if status.is_server_error() && settings.outlier.count_5xx {
                                self.on_failure(&backend, None);
                            } else {
                                backend.on_success(rtt, in_flight, now);
                            }
                            let outcome = TryOutcome::Answered {
                                status: status.as_u16(),
                            };
                            (
                                outcome,
                                now,
                                Some((resp, conn, backend_start(sent_at, watch))),
                            )
                        }
                        Ok(Err(e)) if watch.and_then(BodyWatch::fault).is_some() => {
                            // The client's body broke off or stalled: its doing, not the
                            // backend's (no failure, no latency sample, no retry).
                            reached = true;
                            let too_slow =
                                watch.and_then(BodyWatch::fault) == Some(ClientFault::TooSlow);
                            tracing::debug!(backend = %backend.address, error = %error_chain(e.error()), "client request body failed");
                            (
                                TryOutcome::ClientBodyFailed { too_slow },
                                self.clock.now(),
                                None,
                            )
                        }
                        Ok(Err(mut e)) => {
                            self.on_failure(
                                &backend,
                                Some((backend_start(sent_at, watch), in_flight)),
                            );
                            if let Some(unsent) = e.take_message() {
                                // Handed back unsent: it never reached the backend.
                                let (p, b) = unsent.into_parts();
                                head.uri = p.uri;
                                head.headers = p.headers;
                                kept = None;
                                if !replayable {
                                    body = b;
                                }
                                tracing::debug!(backend = %backend.address, reused, "connection not usable; request not sent");
                                (TryOutcome::ConnectionUnusableUnsent, self.clock.now(), None)
                            } else {
                                reached = true;
                                tracing::warn!(backend = %backend.address, error = %error_chain(e.error()), reused, "backend closed the connection without a response");
                                (TryOutcome::ClosedBeforeHeaders, self.clock.now(), None)
                            }
                        }
                        Err(_) => {
                            reached = true;
                            // A gRPC deadline shorter than the per-try timeout is the client's
                            // choice, not a sign of a failing backend.
                            let client_deadline = grpc_deadline.is_some_and(|d| {
                                d < sent_at.saturating_add(per_try.as_nanos() as Nanos)
                            });
                            if !client_deadline {
                                self.on_failure(
                                    &backend,
                                    Some((backend_start(sent_at, watch), in_flight)),
                                );
                            }
                            tracing::warn!(backend = %backend.address, timeout = ?limit, "backend did not answer in time");
                            (TryOutcome::TryTimedOut, self.clock.now(), None)
                        }
                    };
                    tries.upstream_ns = Some(tried_once.1.saturating_sub(sent_at));
                    tried_once
                }
            };
            acquire_from = now;
            let deadline_passed = deadline.is_some_and(|d| now >= d);
            let Some(verdict) = self.after_try(
                outcome,
                facts(deadline_passed),
                budget,
                now,
                &mut tried,
                &backend,
                &mut refused,
            ) else {
                continue;
            };
            let response = match (verdict, answered) {
                (Verdict::PassThrough, Some((mut resp, conn, sent))) => {
                    strip_hop_by_hop(resp.headers_mut());
                    *resp.version_mut() = Version::default();
                    let guard = Completion::new(self.clone(), start, Some(slot), Some(conn))
                        .ready_at(ready)
                        .sent_at(sent);
                    resp.map(|b| ProxyBody::upstream(b, guard))
                }
                (Verdict::Answer(LocalAnswer::Timeout), _)
                    if grpc_deadline.is_some_and(|d| now >= d) =>
                {
                    return self.deadline_passed(start, Some(slot), reached);
                }
                (Verdict::Answer(answer), _) => self.local(start, Some(slot), answer),
                (v, _) => {
                    unreachable!("{v:?} after {outcome:?}: only a backend's answer passes through")
                }
            };
            return Forwarded {
                response: with_tries(response, tries),
                reached_backend: reached,
            };
        }
    }

    /// A gRPC call whose deadline passed before a backend answered: DEADLINE_EXCEEDED (see
    /// `grpc`), counted as ebbtide's 504.
    fn deadline_passed(
        self: &Arc<Self>,
        start: Nanos,
        slot: Option<crate::dispatch::Slot>,
        reached: bool,
    ) -> Forwarded {
        self.counters.count_local(LocalAnswer::Timeout);
        let guard = Completion::new(self.clone(), start, slot, None);
        Forwarded {
            response: grpc::deadline_exceeded(ProxyBody::full(bytes::Bytes::new(), Some(guard))),
            reached_backend: reached,
        }
    }

    /// What follows a try: `None` to try again (the rule allows it and the budget has it; the
    /// backend is marked tried), else the verdict.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn after_try(
        &self,
        outcome: TryOutcome,
        facts: Attempt,
        budget: &RetryBudget,
        now: Nanos,
        tried: &mut Tried,
        backend: &Backend,
        refused: &mut RefusedWait,
    ) -> Option<Verdict> {
        // The rule says whether another try would be safe; the budget whether it may be had.
        match retry::verdict(outcome, facts) {
            Verdict::Retry if self.budget_allows(budget, now) => {
                tried.insert(backend.id);
                if outcome == TryOutcome::NoConnection && !refused.waited {
                    refused.waited = true;
                    refused.next = Some(self.registry.config().pool.connect_timeout);
                }
                tracing::debug!(backend = %backend.address, attempt = facts.number, ?outcome, "retrying on another backend");
                None
            }
            Verdict::Retry => Some(retry::without_retry(outcome)),
            v => Some(v),
        }
    }

    /// A backend slot. After a try that found no connection, `refused_wait` is set: first wait
    /// up to that long for a backend that did not refuse (see the try loop).
    pub(super) async fn acquire_slot(
        self: &Arc<Self>,
        key: Option<u64>,
        tried: Tried,
        refused_wait: Option<Duration>,
    ) -> Result<crate::dispatch::Slot, Shed> {
        if let Some(wait) = refused_wait {
            if let Ok(slot) =
                tokio::time::timeout(wait, self.dispatcher.acquire(key, tried.strict())).await
            {
                return slot;
            }
        }
        self.dispatcher.acquire(key, tried).await
    }

    /// Asks the retry budget for a retry the rule allows, and counts what it said.
    pub(super) fn budget_allows(&self, budget: &RetryBudget, now: Nanos) -> bool {
        if budget.try_withdraw(now) {
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.counters
                .retries_refused
                .fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// A failed try: feeds passive outlier detection and, for a sent request, the limiter.
    pub(super) fn on_failure(&self, backend: &Arc<Backend>, sent: Option<(Nanos, u32)>) {
        backend.failures.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now();
        let live = self.live();
        let outlier = &live.settings.outlier;
        backend.on_failure(sent.map(|(at, n)| (now.saturating_sub(at), n)), now);
        if let Some(ejection) = backend.record_outlier_failure(outlier, now) {
            let snap = self.registry.snapshot();
            let ejected = snap
                .backends
                .iter()
                .filter(|b| b.state() == crate::registry::BackendState::Ejected)
                .count();
            let allowed =
                crate::outlier::may_eject(ejected, snap.backends.len(), outlier.max_ejected_share);
            if allowed && backend.eject(ejection.until) {
                tracing::warn!(
                    backend = %backend.address,
                    ejections = ejection.count,
                    for_ms = ejection.until.saturating_sub(now) / 1_000_000,
                    "backend ejected after consecutive failures"
                );
            } else {
                backend.cancel_ejection(ejection);
            }
        }
    }

    /// An answer of ebbtide's own to a request that reached no backend.
    fn not_reached(self: &Arc<Self>, start: Nanos, answer: LocalAnswer) -> Forwarded {
        Forwarded {
            response: self.local(start, None, answer),
            reached_backend: false,
        }
    }

    pub(super) fn shed(self: &Arc<Self>, start: Nanos, shed: Shed) -> Response<Body> {
        let counter = match shed {
            Shed::QueueFull => &self.counters.shed_queue_full,
            Shed::QueueTimeout => &self.counters.shed_queue_timeout,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.signals.record_shed(self.clock.now());
        let retry_after = self.dispatcher.retry_after_secs();
        let answer = match shed {
            Shed::QueueFull => LocalAnswer::QueueFull,
            Shed::QueueTimeout => LocalAnswer::QueueTimeout,
        };
        let mut resp = self.local(start, None, answer);
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        resp
    }
}

/// Set after a try found no connection: the next one waits (once per request, at most the
/// connect timeout) for a backend that did not refuse, rather than go straight back to one
/// that did (a pod Kubernetes just sent SIGTERM, while its replacement is being admitted).
#[derive(Default)]
pub(super) struct RefusedWait {
    pub(super) next: Option<Duration>,
    waited: bool,
}

/// Hands what the try loop learnt to the response's completion guard, for the access log.
pub(super) fn with_tries(mut resp: Response<Body>, tries: Tries) -> Response<Body> {
    if let Some(g) = resp.body_mut().guard_mut() {
        g.tries = tries;
    }
    resp
}

/// When the backend had the whole request: when it was sent, or, for a streamed body, when the
/// client's last byte was read (a slow upload is the client's time, not the backend's).
fn backend_start(sent_at: Nanos, watch: Option<&BodyWatch>) -> Nanos {
    watch
        .and_then(BodyWatch::ended_at)
        .map_or(sent_at, |t| t.max(sent_at))
}

/// Whether a request body of `n` bytes (by its `Content-Length`) is read whole before a
/// backend slot is taken, so that a slow upload holds no backend (NGINX's request buffering):
/// up to `request_buffer`, or `retries.buffer_limit` when it is kept to be sent again (an
/// idempotent request that may be retried). Both HTTP/1.1 engines go by it.
pub(super) fn reads_whole(s: &super::ProxySettings, idempotent: bool, n: u64) -> bool {
    let retries = &s.retries;
    let keep_for_retry = idempotent && retries.max_attempts > 1 && retries.buffer_limit > 0;
    n <= s.request_buffer as u64 || (keep_for_retry && n <= retries.buffer_limit as u64)
}

/// `send` within `limit` of the backend having the whole request. With a streamed body the
/// limit counts from the body's end: while the client is still sending (its pace bounded by
/// `body_read_timeout` and `min_body_rate`), the backend is not late. `Err(())`: timed out.
async fn send_within<F: std::future::Future>(
    limit: Duration,
    watch: Option<&BodyWatch>,
    clock: crate::clock::Clock,
    send: F,
) -> Result<F::Output, ()> {
    let Some(watch) = watch else {
        return tokio::time::timeout(limit, send).await.map_err(|_| ());
    };
    let mut send = std::pin::pin!(send);
    let sleep = tokio::time::sleep(limit);
    let mut sleep = std::pin::pin!(sleep);
    loop {
        tokio::select! {
            biased;
            out = &mut send => return Ok(out),
            () = &mut sleep => {
                let now = clock.now();
                let next = match (watch.fault(), watch.ended_at()) {
                    // Still coming, or broken (hyper is failing the send): not the backend's time.
                    (Some(_), _) | (None, None) => limit,
                    (None, Some(ended)) => {
                        let due = ended.saturating_add(limit.as_nanos() as u64);
                        if due <= now {
                            return Err(());
                        }
                        Duration::from_nanos(due - now)
                    }
                };
                sleep.as_mut().reset(tokio::time::Instant::now() + next);
            }
        }
    }
}

/// The full chain of an error's causes, for a log line that says what actually happened.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
