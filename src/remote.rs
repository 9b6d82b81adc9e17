//! Balancers in other processes, reached through their admin APIs: `ebbtide autoscale` reads
//! their signals (`GET /api/v1/signals`, summed by the sampler), registers its backends with
//! every one of them (`POST /api/v1/backends`, with a lease renewed every interval so that a
//! dead autoscaler's backends expire), and drains before it stops one (`DELETE`, then waiting
//! until no balancer lists it).

use bytes::Bytes;
use ebbtide_autoscaler::providers::{Instance, ProviderFuture};
use ebbtide_autoscaler::{Membership, OverloadAction, Reading, SignalSource};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest an admin call may take; a balancer slower than this is counted as not answering.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest admin answer read (the backend list of a big fleet fits easily).
const MAX_ANSWER: usize = 4 << 20;

/// The balancers `[autoscaler] balancers` names.
pub(crate) struct Balancers {
    admins: Vec<String>,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
    capacity: Option<u32>,
    cost_per_hour: f64,
    lease_seconds: f64,
    drain_timeout: Duration,
    /// The id each balancer gave each instance (by balancer index and instance id).
    ids: Mutex<HashMap<(usize, String), u64>>,
}

impl Balancers {
    /// Clients for the admin APIs at `admins` (`host:port`), registering backends with the
    /// provider's capacity and price.
    pub(crate) fn new(
        admins: Vec<String>,
        token: Option<String>,
        provider: &ebbtide_config::Provider,
        lease: Duration,
        drain_timeout: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CALL_TIMEOUT));
        Balancers {
            admins,
            token,
            client: Client::builder(TokioExecutor::new()).build(connector),
            capacity: provider.capacity,
            cost_per_hour: provider.cost_per_hour,
            lease_seconds: lease.as_secs_f64(),
            drain_timeout,
            ids: Mutex::new(HashMap::new()),
        }
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, HashMap<(usize, String), u64>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One admin call; the status and body, or why there is none.
    async fn call(
        &self,
        balancer: usize,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), String> {
        let admin = &self.admins[balancer];
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("http://{admin}{path}"));
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| e.to_string())?;
        let call = async {
            let resp = self.client.request(req).await.map_err(|e| {
                let mut msg = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg = format!("{msg}: {s}");
                    src = s.source();
                }
                msg
            })?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(format!("{method} http://{admin}{path}: {e}")),
            Err(_) => Err(format!(
                "{method} http://{admin}{path}: no answer within {CALL_TIMEOUT:?}"
            )),
        }
    }

    /// Registers (or renews) `instance` with one balancer and remembers the id it got there.
    async fn register(&self, balancer: usize, instance: &Instance) -> Result<(), String> {
        let mut body = serde_json::json!({
            "address": instance.address,
            "cost_per_hour": self.cost_per_hour,
            "lease_seconds": self.lease_seconds,
        });
        if let Some(c) = self.capacity {
            body["capacity"] = c.into();
        }
        let (status, answer) = self
            .call(balancer, Method::POST, "/api/v1/backends", Some(body))
            .await?;
        if !status.is_success() {
            return Err(format!(
                "http://{}/api/v1/backends refused {}: {status} {}",
                self.admins[balancer],
                instance.address,
                String::from_utf8_lossy(&answer).trim()
            ));
        }
        let info: serde_json::Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
        if let Some(id) = info["id"].as_u64() {
            self.ids().insert((balancer, instance.id.clone()), id);
        }
        Ok(())
    }

    /// Registers `instance` with every balancer, logging the ones that refuse.
    async fn register_everywhere(&self, instance: &Instance) {
        for b in 0..self.admins.len() {
            if let Err(e) = self.register(b, instance).await {
                tracing::warn!(error = %e, "could not register a backend");
            }
        }
    }

    /// The addresses one balancer lists, or None when it does not answer.
    async fn listed(&self, balancer: usize) -> Option<Vec<String>> {
        let (status, body) = self
            .call(balancer, Method::GET, "/api/v1/backends", None)
            .await
            .ok()?;
        if !status.is_success() {
            return None;
        }
        let list: Vec<serde_json::Value> = serde_json::from_slice(&body).ok()?;
        Some(
            list.iter()
                .filter_map(|b| b["address"].as_str().map(str::to_string))
                .collect(),
        )
    }

    /// Asks one balancer to drain `instance` (DELETE by the id it gave it).
    async fn delete(&self, balancer: usize, instance: &Instance) {
        let id = self.ids().remove(&(balancer, instance.id.clone()));
        let Some(id) = id else { return };
        match self
            .call(
                balancer,
                Method::DELETE,
                &format!("/api/v1/backends/{id}"),
                None,
            )
            .await
        {
            Ok((s, _)) if s.is_success() || s == StatusCode::NOT_FOUND => {}
            Ok((s, body)) => tracing::warn!(
                balancer = %self.admins[balancer], status = %s,
                answer = %String::from_utf8_lossy(&body).trim(),
                "could not drain a backend"
            ),
            Err(e) => tracing::warn!(error = %e, "could not drain a backend"),
        }
    }

    /// Reads one balancer's signals.
    async fn signals(&self, balancer: usize) -> Result<Reading, String> {
        let (status, body) = self
            .call(balancer, Method::GET, "/api/v1/signals", None)
            .await?;
        if !status.is_success() {
            return Err(format!(
                "http://{}/api/v1/signals answered {status}: {}",
                self.admins[balancer],
                String::from_utf8_lossy(&body).trim()
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("http://{}/api/v1/signals: {e}", self.admins[balancer]))?;
        parse_signals(&v)
            .map_err(|e| format!("http://{}/api/v1/signals: {e}", self.admins[balancer]))
    }
}

/// A [`Reading`] from the JSON of `GET /api/v1/signals`.
pub fn parse_signals(v: &serde_json::Value) -> Result<Reading, String> {
    let count = |key: &str| {
        v[key]
            .as_u64()
            .ok_or_else(|| format!("no `{key}` count (is it an ebbtide balancer of this version?)"))
    };
    Ok(Reading {
        arrivals_total: count("arrivals_total")?,
        completions_total: count("completions_total")?,
        in_flight: count("in_flight")?,
        queue_depth: count("queue_depth")?,
        window_completions: count("completions")?,
        p99_ms: v["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
        mean_ms: v["latency_ms"]["mean"].as_f64().unwrap_or(0.0),
        active_backends: v["backends"]["active"].as_u64().unwrap_or(0) as u32,
    })
}

impl Membership for Balancers {
    /// Remote balancers hear of a backend only once it is healthy.
    fn starting(&self, _instance: &Instance) {}

    fn ready<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, ()> {
        Box::pin(self.register_everywhere(instance))
    }

    /// DELETE at every balancer, then wait until none lists it (each drains it and removes it
    /// once its in-flight requests finished), bounded by the drain timeout plus a margin.
    fn drain<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, ()> {
        Box::pin(async move {
            for b in 0..self.admins.len() {
                self.delete(b, instance).await;
            }
            let deadline = tokio::time::Instant::now() + self.drain_timeout + CALL_TIMEOUT;
            for b in 0..self.admins.len() {
                loop {
                    match self.listed(b).await {
                        Some(list) if list.contains(&instance.address) => {}
                        _ => break,
                    }
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!(balancer = %self.admins[b], backend = %instance.address, "still listed after the drain timeout; stopping it anyway");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    }

    fn remove<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, ()> {
        // Nothing in flight at a dead backend is worth waiting for: DELETE, and no wait.
        Box::pin(async move {
            for b in 0..self.admins.len() {
                self.delete(b, instance).await;
            }
        })
    }

    /// Re-registers every ready backend everywhere: renews its lease, and puts it back at a
    /// balancer that restarted and forgot it.
    fn refresh<'a>(&'a self, ready: &'a [Instance]) -> ProviderFuture<'a, ()> {
        Box::pin(async move {
            for i in ready {
                self.register_everywhere(i).await;
            }
        })
    }

    /// Remote balancers' queues keep their own `[overload]` settings: there is no admin call to
    /// change them, so the action is logged (once per change) for the operator.
    fn set_overload(&self, action: OverloadAction) {
        if !matches!(action, OverloadAction::None | OverloadAction::Queue) {
            tracing::warn!(
                ?action,
                "overload action not applied: remote balancers keep their own [overload] queue"
            );
        }
    }
}

/// The remote balancers as a signal source.
pub(crate) struct RemoteSignals(pub(crate) Arc<Balancers>);

impl SignalSource for RemoteSignals {
    fn read(&mut self) -> ProviderFuture<'_, Result<Vec<Option<Reading>>, String>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(self.0.admins.len());
            let mut errors = Vec::new();
            for b in 0..self.0.admins.len() {
                match self.0.signals(b).await {
                    Ok(r) => out.push(Some(r)),
                    Err(e) => {
                        out.push(None);
                        errors.push(e);
                    }
                }
            }
            if errors.len() == out.len() {
                return Err(errors.join("; "));
            }
            for e in errors {
                tracing::warn!(error = %e, "a balancer did not answer; its signals are left out");
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_json_becomes_a_reading() {
        let v = serde_json::json!({
            "arrivals_total": 120, "completions_total": 110, "in_flight": 7, "queue_depth": 3,
            "completions": 50, "latency_ms": {"p99": 80.5, "mean": 21.0, "p50": 18.0},
            "backends": {"active": 4, "starting": 1},
        });
        let r = parse_signals(&v).unwrap();
        assert_eq!(
            r,
            Reading {
                arrivals_total: 120,
                completions_total: 110,
                in_flight: 7,
                queue_depth: 3,
                window_completions: 50,
                p99_ms: 80.5,
                mean_ms: 21.0,
                active_backends: 4,
            }
        );
        let old = serde_json::json!({"in_flight": 1});
        let e = parse_signals(&old).unwrap_err();
        assert!(e.contains("arrivals_total"), "{e}");
    }
}
