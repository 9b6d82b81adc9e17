//! At-most-once execution for requests with an `Idempotency-Key`: the first is executed (to the
//! end, even if its client leaves), duplicates wait for it or replay its stored response.

use super::completion::{Body, Completion};
use super::forward::Forwarded;
use super::local::LocalAnswer;
use super::{Live, Peer, Proxy};
use crate::body::{OnEnd, ProxyBody};
use crate::idempotency::{Claim, Outcome, StoredResponse};
use crate::policies::hash_key;
use bytes::{Bytes, BytesMut};
use ebbtide_config::time::Nanos;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub(super) static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

impl Proxy {
    /// A request with `Idempotency-Key`: executed once, in a task of its own so that it finishes
    /// even if its client leaves; duplicates wait for it or replay its stored response.
    pub(super) async fn handle_idempotent(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
        start: Nanos,
        live: Arc<Live>,
        key: String,
    ) -> Response<Body> {
        let mut fp = hash_key(req.method().as_str().as_bytes());
        fp ^= hash_key(req.uri().path().as_bytes()).rotate_left(1);
        let mut req = Some(req);
        loop {
            let claim = self.idempotency.claim(&key, fp, self.clock.now());
            let mut rx = match claim {
                Claim::Execute(tx) => {
                    let proxy = self.clone();
                    let req = req.take().expect("executed once");
                    let task = tokio::spawn(async move {
                        let fwd = proxy.forward(req, &peer, start, &live).await;
                        let max_body = live.settings.idempotency.max_body;
                        proxy.keep_for_replay(&key, tx, fwd, max_body).await
                    });
                    return match task.await {
                        Ok(resp) => resp,
                        Err(_) => self.local(start, None, LocalAnswer::Internal),
                    };
                }
                Claim::Wait(rx) => rx,
                Claim::Done(outcome) => return self.replay(start, outcome),
                Claim::Mismatch => {
                    return self.local(start, None, LocalAnswer::IdempotencyMismatch)
                }
                Claim::Full => return self.local(start, None, LocalAnswer::IdempotencyFull),
            };
            let outcome = match rx.wait_for(|o| o.is_some()).await {
                Ok(o) => o.clone().expect("waited for Some"),
                Err(_) => Outcome::NotExecuted,
            };
            match outcome {
                // The first try never reached a backend: this duplicate may execute it.
                Outcome::NotExecuted => continue,
                other => return self.replay(start, other),
            }
        }
    }

    /// Reads the response of an executed keyed request (up to `max_body`), stores it for
    /// duplicates, and gives it to the first client.
    async fn keep_for_replay(
        self: &Arc<Self>,
        key: &str,
        tx: tokio::sync::watch::Sender<Option<Outcome>>,
        fwd: Forwarded,
        max_body: usize,
    ) -> Response<Body> {
        let now = self.clock.now();
        if !fwd.reached_backend {
            self.idempotency.finish(key, tx, Outcome::NotExecuted, now);
            return fwd.response;
        }
        let (parts, mut body) = fwd.response.into_parts();
        let mut kept = BytesMut::new();
        loop {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        kept.extend_from_slice(d);
                    }
                    if kept.len() > max_body {
                        self.idempotency
                            .finish(key, tx, Outcome::TooLarge, self.clock.now());
                        return Response::from_parts(
                            parts,
                            ProxyBody::prefixed(kept.freeze(), body),
                        );
                    }
                }
                Some(Err(e)) => {
                    // Executed, but the answer broke off: duplicates must not execute it again.
                    tracing::warn!(error = %e, "response to a keyed request broke off");
                    let stored = StoredResponse {
                        status: LocalAnswer::ResponseBrokeOff.status(),
                        headers: HeaderMap::new(),
                        body: Bytes::from_static(LocalAnswer::ResponseBrokeOff.text().as_bytes()),
                    };
                    let resp = stored_response::<Completion>(&stored, None);
                    self.idempotency.finish(
                        key,
                        tx,
                        Outcome::Stored(Arc::new(stored)),
                        self.clock.now(),
                    );
                    return resp;
                }
                None => break,
            }
        }
        let stored = Arc::new(StoredResponse::detached(
            parts.status,
            &parts.headers,
            kept.freeze(),
        ));
        self.idempotency
            .finish(key, tx, Outcome::Stored(stored.clone()), self.clock.now());
        // `body` (with its completion guard) is dropped here: the slot is freed and the latency
        // recorded now that the whole response has been read.
        drop(body);
        Response::from_parts(parts, ProxyBody::full(stored.body.clone(), None))
    }

    fn replay(self: &Arc<Self>, start: Nanos, outcome: Outcome) -> Response<Body> {
        match outcome {
            Outcome::Stored(stored) => {
                self.counters
                    .idempotent_replays
                    .fetch_add(1, Ordering::Relaxed);
                let guard = self.guard(start, None);
                stored_response(&stored, Some(guard))
            }
            _ => self.local(start, None, LocalAnswer::TooLargeToReplay),
        }
    }
}

/// A stored response as a duplicate gets it: same status, headers and body, marked
/// `idempotent-replayed: true`, its length left to the body (which may have been cut).
fn stored_response<G: OnEnd>(stored: &StoredResponse, guard: Option<G>) -> Response<ProxyBody<G>> {
    let mut resp = Response::new(ProxyBody::full(stored.body.clone(), guard));
    *resp.status_mut() = stored.status;
    *resp.headers_mut() = stored.headers.clone();
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    resp.headers_mut().insert(
        HeaderName::from_static("idempotent-replayed"),
        HeaderValue::from_static("true"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_replay_is_the_stored_response_marked_replayed() {
        let mut headers = HeaderMap::new();
        headers.insert("x-order", HeaderValue::from_static("17"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        let stored = StoredResponse {
            status: http::StatusCode::CREATED,
            headers,
            body: Bytes::from_static(b"made"),
        };
        let resp = stored_response::<()>(&stored, None);
        assert_eq!(resp.status(), http::StatusCode::CREATED);
        assert_eq!(resp.headers()["x-order"], "17");
        assert_eq!(resp.headers()["idempotent-replayed"], "true");
        assert!(resp.headers().get(header::CONTENT_LENGTH).is_none());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "made");
    }
}
