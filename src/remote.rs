//! Balancers in other processes, reached through their admin APIs: `ebbtide autoscale` reads
//! their signals (`GET /api/v1/signals`, summed by the sampler), registers its backends with
//! every one of them (`POST /api/v1/backends`, with a lease renewed every interval so that a
//! dead autoscaler's backends expire), and drains before it stops one (`DELETE`, then waiting
//! until no balancer lists it).
//!
//! The balancers are a set keyed by admin address (`host:port`), fixed by `[autoscaler]
//! balancers` or followed from a Service's endpoints (`[autoscaler.balancer_discovery]`): one
//! that appears gets every serving backend at once, one that leaves is forgotten with the ids it
//! gave, and drains wait only on the balancers that are still there.

use ebbtide_autoscaler::providers::{Instance, ProviderFuture};
use ebbtide_autoscaler::{Membership, OverloadAction, Reading, SignalSource};
use ebbtide_balancer::api::{self, client::AdminClient};
use ebbtide_balancer::clock::Clock;
use ebbtide_config::time::Nanos;
use http::StatusCode;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest an admin call may take; a balancer slower than this is counted as not answering.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// The balancers' admin APIs, as named by `[autoscaler] balancers` or found by
/// `[autoscaler.balancer_discovery]`.
pub(crate) struct Balancers {
    /// Their admin addresses (`host:port`), as last found.
    admins: Mutex<BTreeSet<String>>,
    client: AdminClient,
    terms: crate::in_process::Terms,
    /// The terms of each instance with a kind, from `starting` on.
    kinds: Mutex<HashMap<String, (Option<u32>, f64)>>,
    /// `[provider] protocol`, sent with each registration.
    protocol: api::Protocol,
    lease_seconds: f64,
    drain_timeout: Duration,
    /// The id each balancer gave each instance (by balancer admin address and instance id).
    ids: Mutex<HashMap<(String, String), u64>>,
    /// The serving instances (the driver's last list, and those ready since), by id: what a
    /// balancer that appears is given at once.
    serving: Mutex<HashMap<String, Instance>>,
    /// `[provider] kind`, sent with first registrations for the cold-start metric.
    provider: &'static str,
    /// When the launch of each booting instance was decided, until its first registration.
    launches: Mutex<HashMap<String, Nanos>>,
    /// The driver's clock, that `launches` is read on.
    clock: Clock,
}

impl Balancers {
    /// Clients for the admin APIs at `admins` (`host:port`; empty until [`Balancers::set`] when
    /// they are discovered), registering backends with the provider's capacity and price.
    pub(crate) fn new(
        admins: BTreeSet<String>,
        token: Option<String>,
        provider: &ebbtide_config::Provider,
        lease: Duration,
        drain_timeout: Duration,
        clock: Clock,
    ) -> Self {
        Balancers {
            admins: Mutex::new(admins),
            client: AdminClient::new(token, CALL_TIMEOUT),
            terms: crate::in_process::Terms::new(provider),
            kinds: Mutex::new(HashMap::new()),
            protocol: provider.protocol,
            lease_seconds: lease.as_secs_f64(),
            drain_timeout,
            ids: Mutex::new(HashMap::new()),
            serving: Mutex::new(HashMap::new()),
            provider: provider.kind.name(),
            launches: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn ids(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), u64>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serving(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instance>> {
        self.serving.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The balancers' admin addresses now.
    pub(crate) fn admins(&self) -> Vec<String> {
        let admins = self.admins.lock().unwrap_or_else(|e| e.into_inner());
        admins.iter().cloned().collect()
    }

    fn is_current(&self, admin: &str) -> bool {
        let admins = self.admins.lock().unwrap_or_else(|e| e.into_inner());
        admins.contains(admin)
    }

    /// Makes `now` the balancers: the ones that left are forgotten (with the ids they gave),
    /// the ones that appeared get every serving backend before this returns.
    pub(crate) async fn set(&self, now: BTreeSet<String>) {
        let change = {
            let mut admins = self.admins.lock().unwrap_or_else(|e| e.into_inner());
            let change = Change::between(&admins, &now);
            *admins = now;
            change
        };
        for gone in &change.removed {
            tracing::info!(balancer = %gone, "balancer gone: no more calls to it");
            self.ids().retain(|(b, _), _| b != gone);
        }
        let serving: Vec<Instance> = self.serving().values().cloned().collect();
        for new in &change.added {
            tracing::info!(balancer = %new, backends = serving.len(), "balancer found: registering every serving backend with it");
            for i in &serving {
                if let Err(e) = self.register(new, i, None).await {
                    tracing::warn!(error = %e, "could not register a backend");
                }
            }
        }
    }

    /// Registers (or renews) `instance` with one balancer and remembers the id it got there.
    /// `decided_at`: when its launch was decided, for its first registration.
    async fn register(
        &self,
        balancer: &str,
        instance: &Instance,
        decided_at: Option<Nanos>,
    ) -> Result<(), String> {
        let terms = self
            .kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&instance.id)
            .copied();
        let (capacity, cost_per_hour) = terms.unwrap_or_else(|| self.terms.of(None));
        let body = api::Register {
            address: instance.address.clone(),
            capacity,
            weight: 1,
            lease_seconds: Some(self.lease_seconds),
            cost_per_hour,
            // Left out for HTTP/1, so that older balancers (which refuse unknown fields)
            // still accept the registration.
            protocol: (self.protocol != api::Protocol::Http1).then_some(self.protocol),
            server_name: None,
            launched: decided_at.map(|at| api::Launched {
                provider: self.provider.to_string(),
                seconds_ago: self.clock.now().saturating_sub(at) as f64 / 1e9,
            }),
        };
        let info = self
            .client
            .register(balancer, &body)
            .await
            .map_err(|e| format!("registering {} at {balancer}: {e}", instance.address))?;
        // A balancer that left meanwhile is not to be called again: its id is not kept.
        if self.is_current(balancer) {
            self.ids()
                .insert((balancer.to_string(), instance.id.clone()), info.id);
        }
        Ok(())
    }

    /// Registers `instance` with every balancer, logging the ones that refuse.
    async fn register_everywhere(&self, instance: &Instance, decided_at: Option<Nanos>) {
        for b in self.admins() {
            if let Err(e) = self.register(&b, instance, decided_at).await {
                tracing::warn!(error = %e, "could not register a backend");
            }
        }
    }

    /// The addresses one balancer lists, or None when it does not answer.
    async fn listed(&self, balancer: &str) -> Option<Vec<String>> {
        let list = self.client.backends(balancer).await.ok()?;
        Some(list.into_iter().map(|b| b.address).collect())
    }

    fn forget_kind(&self, instance: &Instance) {
        self.serving().remove(&instance.id);
        self.launches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&instance.id);
        self.kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&instance.id);
    }

    /// Asks one balancer to drain `instance` (DELETE by the id it gave it).
    async fn delete(&self, balancer: &str, instance: &Instance) {
        let id = self
            .ids()
            .remove(&(balancer.to_string(), instance.id.clone()));
        let Some(id) = id else { return };
        match self.client.delete(balancer, id).await {
            Ok(_) => {}
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {}
            Err(e) => tracing::warn!(error = %e, "could not drain a backend"),
        }
    }

    /// Reads one balancer's signals.
    async fn signals(&self, balancer: &str) -> Result<Reading, String> {
        let signals = self
            .client
            .signals(balancer)
            .await
            .map_err(|e| e.to_string())?;
        Ok(crate::reading::from_signals(&signals))
    }
}

impl Membership for Balancers {
    /// Remote balancers hear of a backend only once it is healthy; its kind's terms are kept
    /// for then.
    fn starting(&self, instance: &Instance, kind: Option<&str>, decided_at: Nanos) {
        self.launches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(instance.id.clone(), decided_at);
        if kind.is_some() {
            let terms = self.terms.of(kind);
            self.kinds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(instance.id.clone(), terms);
        }
    }

    /// The first registration carries the launch decision's age (the cold start's start).
    fn ready<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, ()> {
        let decided_at = self
            .launches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&instance.id);
        self.serving().insert(instance.id.clone(), instance.clone());
        Box::pin(self.register_everywhere(instance, decided_at))
    }

    /// DELETE at every balancer, then wait until none lists it (each drains it and removes it
    /// once its in-flight requests finished), bounded by the drain timeout plus a margin. A
    /// balancer that leaves meanwhile is not waited for.
    fn drain<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, ()> {
        self.forget_kind(instance);
        Box::pin(async move {
            let admins = self.admins();
            for b in &admins {
                self.delete(b, instance).await;
            }
            let deadline = tokio::time::Instant::now() + self.drain_timeout + CALL_TIMEOUT;
            for b in &admins {
                while self.is_current(b) {
                    match self.listed(b).await {
                        Some(list) if list.contains(&instance.address) => {}
                        _ => break,
                    }
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!(balancer = %b, backend = %instance.address, "still listed after the drain timeout; stopping it anyway");
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        })
    }

    fn remove<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, ()> {
        // Nothing in flight at a dead backend is worth waiting for: DELETE, and no wait.
        self.forget_kind(instance);
        Box::pin(async move {
            for b in self.admins() {
                self.delete(&b, instance).await;
            }
        })
    }

    /// Re-registers every ready backend everywhere: renews its lease, and puts it back at a
    /// balancer that restarted and forgot it.
    fn refresh<'a>(&'a self, ready: &'a [Instance]) -> ProviderFuture<'a, ()> {
        *self.serving() = ready.iter().map(|i| (i.id.clone(), i.clone())).collect();
        Box::pin(async move {
            for i in ready {
                self.register_everywhere(i, None).await;
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
            let admins = self.0.admins();
            if admins.is_empty() {
                return Err("no balancer found (yet)".into());
            }
            let mut out = Vec::with_capacity(admins.len());
            let mut errors = Vec::new();
            for b in &admins {
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

/// How the set of balancers changed.
#[derive(Debug, PartialEq, Eq)]
struct Change {
    /// In the new set only: to be given every serving backend.
    added: Vec<String>,
    /// In the old set only: to be forgotten.
    removed: Vec<String>,
}

impl Change {
    fn between(old: &BTreeSet<String>, new: &BTreeSet<String>) -> Change {
        Change {
            added: new.difference(old).cloned().collect(),
            removed: old.difference(new).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_change_of_balancers_is_what_was_added_and_what_was_removed() {
        let none = Change::between(&set(&["a:1", "b:1"]), &set(&["b:1", "a:1"]));
        assert_eq!(
            none,
            Change {
                added: vec![],
                removed: vec![]
            }
        );
        let c = Change::between(&set(&["a:1", "b:1"]), &set(&["b:1", "c:1", "d:1"]));
        assert_eq!(c.added, ["c:1", "d:1"]);
        assert_eq!(c.removed, ["a:1"]);
        let from_nothing = Change::between(&set(&[]), &set(&["a:1"]));
        assert_eq!(from_nothing.added, ["a:1"]);
        assert!(Change::between(&set(&["a:1"]), &set(&[])).added.is_empty());
    }

    /// A balancer that leaves takes the ids it gave with it; one that comes back is given the
    /// serving backends again (here none answers: the registration fails and no id is kept).
    #[tokio::test]
    async fn a_balancer_that_leaves_is_forgotten_with_its_ids() {
        let provider = ebbtide_config::Provider::default();
        let b = Balancers::new(
            set(&["127.0.0.1:1", "127.0.0.1:2"]),
            None,
            &provider,
            Duration::from_secs(15),
            Duration::from_secs(1),
            Clock::new(),
        );
        b.ids().insert(("127.0.0.1:1".into(), "i1".into()), 7);
        b.ids().insert(("127.0.0.1:2".into(), "i1".into()), 9);
        b.set(set(&["127.0.0.1:2"])).await;
        assert_eq!(b.admins(), ["127.0.0.1:2"]);
        let ids: Vec<_> = b.ids().keys().cloned().collect();
        assert_eq!(ids, [("127.0.0.1:2".to_string(), "i1".to_string())]);
    }

    #[test]
    fn signals_json_becomes_a_reading() {
        let v = serde_json::json!({
            "arrivals_total": 120, "completions_total": 110, "in_flight": 7, "queue_depth": 3,
            "arrivals": 60, "completions": 50, "shed": 0, "shed_total": 2,
            "arrival_rate": 6.0, "completion_rate": 5.0, "span_seconds": 10.0, "window_seconds": 10.0,
            "latency_ms": {"p99": 80.5, "mean": 21.0, "p50": 18.0, "p90": 40.0}, "backend_ms": 19.5,
            "backends": {"active": 4, "starting": 1, "draining": 0, "ejected": 0},
            "policy": "least_loaded",
        });
        let signals: api::Signals = serde_json::from_value(v).unwrap();
        assert_eq!(
            crate::reading::from_signals(&signals),
            Reading {
                arrivals_total: 120,
                completions_total: 110,
                in_flight: 7,
                queue_depth: 3,
                window_completions: 50,
                p99_ms: 80.5,
                mean_ms: 21.0,
                backend_ms: 19.5,
                active_backends: 4,
            }
        );
        // An older (or renamed) field is a deserialize error that names the field.
        let old = serde_json::json!({"in_flight": 1});
        let e = serde_json::from_value::<api::Signals>(old)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("missing field `"), "{e}");
        let mut renamed = serde_json::to_value(&signals).unwrap();
        let total = renamed["arrivals_total"].take();
        renamed.as_object_mut().unwrap().remove("arrivals_total");
        renamed["arrivals_count"] = total;
        let e = serde_json::from_value::<api::Signals>(renamed)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `arrivals_total`"), "{e}");
    }
}
