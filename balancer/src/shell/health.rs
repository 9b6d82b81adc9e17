//! Active health checks and the state changes they drive, plus draining.
//!
//! A slow backend is not a dead one. ebbtide tells them apart like this: a backend is judged dead
//! by failed health probes (`[health] fall` in a row, each with its own short `timeout`) or by
//! consecutive *connection-level* failures of real requests (refused, reset, no response:
//! `[outlier] consecutive_failures`). A request that is merely slow runs into the per-try or
//! response timeout and is answered 504 (or retried if safe), and feeds the outlier count only
//! as a failed try; a slow backend that still answers its probes in time stays in rotation, and
//! latency-aware policies (`peak_ewma`, `least_outstanding`) send it less.

use crate::lifecycle::Event;
use crate::pool::Connector;
use crate::proxy::Proxy;
use crate::registry::{Backend, BackendState};
use bytes::Bytes;
use ebbtide_config::time::Nanos;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Probes `GET path` on a fresh connection made by `connector` (in the backend's protocol:
/// HTTP/1.1 or HTTP/2, over TLS or not); true on a 2xx within `timeout`.
pub async fn probe(connector: &Connector, path: &str, timeout: Duration) -> bool {
    let attempt = async {
        let io = TokioIo::new(connector.connect().await.ok()?);
        let protocol = connector.protocol();
        let address = connector.address();
        let req = http::Request::get(path).header(http::header::USER_AGENT, "ebbtide-health");
        let resp = if protocol.is_h2() {
            let scheme = if protocol.is_tls() { "https" } else { "http" };
            let req = req
                .uri(format!("{scheme}://{address}{path}"))
                .body(Empty::<Bytes>::new())
                .ok()?;
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .ok()?;
            let conn = tokio::spawn(conn);
            let resp = sender.send_request(req).await;
            conn.abort();
            resp.ok()?
        } else {
            let req = req
                .header(http::header::HOST, address)
                .body(Empty::<Bytes>::new())
                .ok()?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.ok()?;
            let conn = tokio::spawn(conn);
            let resp = sender.send_request(req).await;
            conn.abort();
            resp.ok()?
        };
        Some(resp.status().is_success())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Probes every backend each `interval` until `stop`, and applies what the probes say
/// ([`apply_probe`]): starting -> active on the first pass; active -> ejected after `fall`
/// failures in a row; ejected -> active after `rise` passes in a row once any outlier ejection
/// time is over. A change of the settings (config reload) starts the loop again with them.
pub async fn run(
    proxy: Arc<Proxy>,
    mut cfg: watch::Receiver<ebbtide_config::Health>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let health = cfg.borrow_and_update().clone();
        let changed = match health.path.clone() {
            Some(path) => probe_until_changed(&proxy, &health, path, &mut cfg, &mut stop).await,
            None => tokio::select! {
                r = cfg.changed() => r.is_ok(),
                _ = stop.changed() => false,
            },
        };
        if !changed {
            return;
        }
        tracing::info!(path = ?cfg.borrow().path, interval = %cfg.borrow().interval, "health check settings reloaded");
    }
}

/// One run of the probe loop with one set of settings: true when they changed, false on `stop`
/// (or when the settings can no longer change).
async fn probe_until_changed(
    proxy: &Arc<Proxy>,
    cfg: &ebbtide_config::Health,
    path: String,
    changed: &mut watch::Receiver<ebbtide_config::Health>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let mut tick = tokio::time::interval(cfg.interval.0);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (timeout, rise, fall) = (cfg.timeout.0, cfg.rise.max(1), cfg.fall.max(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = changed.changed() => return r.is_ok(),
            _ = stop.changed() => return false,
        }
        for b in proxy.registry.snapshot().backends.iter() {
            if b.state() == BackendState::Draining {
                continue;
            }
            let (b, proxy, path) = (b.clone(), proxy.clone(), path.clone());
            tokio::spawn(async move {
                let ok = probe(b.pool.connector(), &path, timeout).await;
                let now = proxy.clock.now();
                apply_probe(&proxy, &b, ok, rise, fall, now);
            });
        }
    }
}

/// Turns one probe's result into a lifecycle event and applies it (see [`crate::lifecycle`]).
fn apply_probe(proxy: &Proxy, b: &Backend, ok: bool, rise: u32, fall: u32, now: Nanos) {
    let (passes, fails) = b.record_probe(ok);
    let event = if ok {
        // Judged only for a backend seen ejected: a pass counted while it was active must not
        // undo an ejection that lands between here and the compare-and-swap in `apply`.
        let recovered = b.state() == BackendState::Ejected
            && passes >= rise
            && b.ejected_until().is_none_or(|t| t <= now);
        Event::ProbePassed { recovered }
    } else if fails >= fall {
        Event::ProbesFailed
    } else {
        return;
    };
    match b.apply(event) {
        Some((BackendState::Starting, BackendState::Active)) => {
            tracing::info!(backend = %b.address, "first health check passed; backend active");
            proxy.dispatcher.dispatch();
        }
        Some((BackendState::Ejected, BackendState::Active)) => {
            tracing::info!(backend = %b.address, passes, "health checks pass again; backend active");
            proxy.dispatcher.dispatch();
        }
        Some((_, BackendState::Ejected)) => {
            tracing::warn!(backend = %b.address, fails, "health checks failed; backend ejected");
        }
        _ => {}
    }
}

/// Once outlier ejections run out, backends come back: at once without active checks, or on the
/// next passing probes with them (the probe loop does that).
pub fn reinstate_expired(proxy: &Proxy, active_checks: bool, now: Nanos) {
    if active_checks {
        return;
    }
    for b in proxy.registry.snapshot().backends.iter() {
        if b.state() == BackendState::Ejected
            && b.ejected_until().is_some_and(|t| t <= now)
            && b.apply(Event::EjectionOver).is_some()
        {
            tracing::info!(backend = %b.address, "ejection time over; backend active again");
            proxy.dispatcher.dispatch();
        }
    }
}

/// Drains a backend the caller has moved to `draining` (with [`Event::LeaseExpired`],
/// [`Event::AdminDelete`] or [`Event::ProviderDrain`]), so no new request goes to it: in-flight
/// ones get up to `timeout` to finish; then it is removed, its idle connections closed, and its
/// open tunnels (WebSockets, which count as in flight) closed.
/// Returns how many requests were still in flight when it was removed (0 = a clean drain).
pub async fn drain(proxy: Arc<Proxy>, backend: Arc<Backend>, timeout: Duration) -> u32 {
    debug_assert_eq!(backend.state(), BackendState::Draining);
    tracing::info!(backend = %backend.address, id = backend.id, in_flight = backend.in_flight(), "draining");
    let deadline = tokio::time::Instant::now() + timeout;
    while backend.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = backend.in_flight();
    proxy.registry.remove(backend.id);
    backend.pool.close_idle();
    // Tunnels never finish by themselves: they are closed now (with a WebSocket close frame
    // where one can go in).
    backend.tunnels.close_all();
    if left > 0 {
        tracing::warn!(backend = %backend.address, left, "drain timeout: removed with requests in flight");
    } else {
        tracing::info!(backend = %backend.address, "drained and removed");
    }
    left
}
