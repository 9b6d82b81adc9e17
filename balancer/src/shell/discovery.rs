//! `[discovery] kind = "kubernetes"`: backends from the EndpointSlices of a Service, kept up to
//! date by a watch (kube's `watcher`: list, then watch from the list's resourceVersion with
//! bookmarks; it lists again after `410 Gone` and resumes after a dropped stream, with
//! back-off on errors).
//!
//! A Service may have several slices (at most 100 endpoints each by default, and an endpoint
//! may sit in two while it moves): they are keyed by name and their union is the fleet. Each
//! endpoint's conditions map onto the lifecycle (KEP-1672, "terminating endpoints"):
//!
//! | endpoint                          | backend                                              |
//! |-----------------------------------|------------------------------------------------------|
//! | `ready`                           | `active` (added when new)                            |
//! | not ready, not terminating        | `ejected` while it stays so (a failing readiness probe) |
//! | `terminating` (serving or not)    | `draining` at once: no new request, in-flight ones finish |
//! | gone from every slice             | `draining` too, then removed                          |
//!
//! So a pod that Kubernetes deletes stops getting requests as soon as its endpoint says
//! terminating, without a preStop sleep (the complaint in ingress-nginx#3639, kubernetes#67592).
//!
//! Backends that something else registered at the same address (the provider of the same
//! `ebbtide serve`, the admin API) are left to it until the address leaves the endpoints, so a
//! drain the autoscaler ordered is not undone by an endpoint that still reads ready; but one
//! whose endpoint turns terminating is drained at once, as discovery's own are (the ReplicaSet
//! may delete another pod than the one the provider drained).

use crate::health;
use crate::lifecycle::Event;
use crate::proxy::Proxy;
use crate::registry::{Backend, BackendSpec, BackendState, Origin};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What one address is, over the union of the slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Condition {
    /// Terminating: no new requests.
    Terminating,
    /// Not ready and not terminating.
    NotReady,
    /// Ready for requests.
    Ready,
}

/// The addresses (`ip:port`) of the endpoints in `slices` on the port named `port` (None: the
/// slice's only port), each with its condition; an address in several slices takes its best.
pub fn endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port: Option<&str>,
) -> BTreeMap<String, Condition> {
    let mut out = BTreeMap::new();
    for s in slices {
        let ports = s.ports.as_deref().unwrap_or_default();
        let number = match port {
            Some(name) => ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or("") == name)
                .and_then(|p| p.port),
            None if ports.len() == 1 => ports[0].port,
            None => None,
        };
        let Some(number) = number else { continue };
        for e in &s.endpoints {
            let c = e.conditions.as_ref();
            // Per the API, a nil `ready` means ready, a nil `terminating` not terminating.
            let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
            let ready = c.and_then(|c| c.ready).unwrap_or(true);
            let cond = if terminating {
                Condition::Terminating
            } else if ready {
                Condition::Ready
            } else {
                Condition::NotReady
            };
            for a in &e.addresses {
                let host = if a.contains(':') {
                    format!("[{a}]")
                } else {
                    a.clone()
                };
                let slot = out.entry(format!("{host}:{number}")).or_insert(cond);
                *slot = (*slot).max(cond);
            }
        }
    }
    out
}

/// The Service port's name that `want` names (a number or a name), checked against the Service;
/// None for an unnamed single port. `key`: the config key `want` came from, for the message.
pub fn resolve_port(
    service: &Service,
    want: Option<&ebbtide_config::PortRef>,
    key: &str,
) -> Result<Option<String>, String> {
    let name = service.metadata.name.clone().unwrap_or_default();
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let found = match want {
        Some(ebbtide_config::PortRef::Number(n)) => ports.iter().find(|p| p.port == i32::from(*n)),
        Some(ebbtide_config::PortRef::Name(n)) => {
            ports.iter().find(|p| p.name.as_deref() == Some(n.as_str()))
        }
        None if ports.len() == 1 => ports.first(),
        None => {
            return Err(format!(
                "Service {name} has {} ports; set {key} to the name or number of one",
                ports.len()
            ))
        }
    };
    let listed: Vec<String> = ports
        .iter()
        .map(|p| format!("{} ({})", p.name.as_deref().unwrap_or("unnamed"), p.port))
        .collect();
    match found {
        Some(p) => Ok(p.name.clone().filter(|n| !n.is_empty())),
        None => Err(format!(
            "Service {name} has no port {}; it has: {}",
            match want {
                Some(ebbtide_config::PortRef::Number(n)) => n.to_string(),
                Some(ebbtide_config::PortRef::Name(n)) => format!("named `{n}`"),
                None => String::new(),
            },
            listed.join(", ")
        )),
    }
}

/// Keeps the registry in step with the endpoints.
struct Sync {
    proxy: Arc<Proxy>,
    spec: BackendSpec,
    drain_timeout: Duration,
    /// Backends this discovery added, by address.
    tracked: HashMap<String, Arc<Backend>>,
    /// Addresses something else registered (the provider): left to it until they leave the
    /// endpoints, so that a pod the provider drained is not added back while it still reads
    /// ready.
    foreign: HashSet<String>,
}

impl Sync {
    fn apply(&mut self, want: &BTreeMap<String, Condition>) {
        let mut changed = false;
        for (address, cond) in want {
            match (self.tracked.get(address), cond) {
                (Some(b), Condition::Ready) => {
                    if b.state() == BackendState::Ejected {
                        b.apply(Event::ProbePassed { recovered: true });
                        changed = true;
                    }
                }
                (Some(b), Condition::NotReady) => {
                    if b.state() == BackendState::Active {
                        b.apply(Event::ProbesFailed);
                    }
                }
                (Some(_), Condition::Terminating) => {
                    self.drain(address);
                }
                (None, Condition::Ready) => {
                    if self.foreign.contains(address) {
                        continue;
                    }
                    let snapshot = self.proxy.registry().snapshot();
                    if snapshot.backends.iter().any(|b| b.address == *address) {
                        // Someone else's (the provider's, the admin API's).
                        self.foreign.insert(address.clone());
                        continue;
                    }
                    let spec = BackendSpec {
                        address: address.clone(),
                        ..self.spec.clone()
                    };
                    match self
                        .proxy
                        .registry()
                        .add_or_renew(spec, BackendState::Active)
                    {
                        Ok((b, _)) => {
                            tracing::info!(backend = %address, "endpoint ready: backend added");
                            self.tracked.insert(address.clone(), b);
                            changed = true;
                        }
                        Err(e) => {
                            tracing::warn!(backend = %address, error = %e, "cannot add an endpoint")
                        }
                    }
                }
                (None, Condition::Terminating) => {
                    // Someone else's backend (the provider's) on a pod Kubernetes is deleting:
                    // a pod other than the one the provider drained (the ReplicaSet's choice),
                    // or any pod `kubectl` deleted. No new request for it from now on.
                    self.drain_foreign(address);
                }
                (None, Condition::NotReady) => {}
            }
        }
        let gone: Vec<String> = self
            .tracked
            .keys()
            .filter(|a| !want.contains_key(*a))
            .cloned()
            .collect();
        for a in gone {
            self.drain(&a);
        }
        self.foreign.retain(|a| want.contains_key(a));
        if changed {
            self.proxy.dispatcher().dispatch();
        }
    }

    /// Drains the backend something else registered at `address`, if it is still taking
    /// requests; its owner removes it when it learns the pod is gone.
    fn drain_foreign(&mut self, address: &str) {
        let snapshot = self.proxy.registry().snapshot();
        let Some(b) = snapshot
            .backends
            .iter()
            .find(|b| b.address == address && b.state() != BackendState::Draining)
        else {
            return;
        };
        if b.apply(Event::ProviderDrain).is_some() {
            tracing::info!(backend = %address, origin = ?b.origin, "endpoint terminating: draining");
            tokio::spawn(health::drain(
                self.proxy.clone(),
                b.clone(),
                self.drain_timeout,
            ));
        }
    }

    /// No new requests for it at once; removed once its in-flight ones finish.
    fn drain(&mut self, address: &str) {
        let Some(b) = self.tracked.remove(address) else {
            return;
        };
        if b.state() == BackendState::Draining {
            return;
        }
        b.apply(Event::ProviderDrain);
        tracing::info!(backend = %address, "endpoint terminating or gone: draining");
        tokio::spawn(health::drain(self.proxy.clone(), b, self.drain_timeout));
    }
}

/// A Service's endpoints, checked and ready to watch: see [`Watch::run`].
pub struct Watch {
    client: Client,
    service: String,
    port: Option<String>,
    sync: Sync,
}

impl Watch {
    /// Reads the Service and resolves `discovery.port` against it: fails at once, with what to
    /// fix, when either is missing.
    pub async fn new(
        proxy: Arc<Proxy>,
        client: Client,
        cfg: &ebbtide_config::Discovery,
        drain_timeout: Duration,
    ) -> Result<Watch, String> {
        let service = cfg.service.clone().ok_or("discovery.service is required")?;
        let port = service_port(&client, &service, cfg.port.as_ref(), "discovery").await?;
        Ok(Watch {
            client,
            service,
            port,
            sync: Sync {
                proxy,
                spec: BackendSpec {
                    address: String::new(),
                    capacity: cfg.capacity,
                    weight: cfg.weight,
                    cost_per_hour: cfg.cost_per_hour,
                    origin: Origin::Discovery,
                    lease_until: None,
                    slow_start: None,
                    transport: Default::default(),
                },
                drain_timeout,
                tracked: HashMap::new(),
                foreign: HashSet::new(),
            },
        })
    }

    /// Watches the Service's EndpointSlices and keeps the registry in step until `stop`.
    pub async fn run(self, stop: watch::Receiver<bool>) -> Result<(), String> {
        let Watch {
            client,
            service,
            port,
            mut sync,
        } = self;
        watch_endpoints(client, &service, port.as_deref(), stop, |e| sync.apply(e)).await
    }
}

/// Reads the Service `service` (in the client's default namespace) and resolves `port` against
/// it: the port name to read its EndpointSlices on. Fails at once, with what to fix, when either
/// is missing; `section` is the config section they came from (`discovery`), for the message.
pub async fn service_port(
    client: &Client,
    service: &str,
    port: Option<&ebbtide_config::PortRef>,
    section: &str,
) -> Result<Option<String>, String> {
    let svc: Service = Api::default_namespaced(client.clone())
        .get(service)
        .await
        .map_err(|e| format!("{section}: cannot read Service `{service}`: {e}"))?;
    resolve_port(&svc, port, &format!("{section}.port")).map_err(|e| format!("{section}: {e}"))
}

/// Watches the EndpointSlices of `service` (in the client's default namespace) until `stop`,
/// calling `on_change` with the endpoints on `port` (see [`endpoints`]) after the first list and
/// after every change. kube's `watcher` lists again after `410 Gone` and resumes a dropped
/// stream; a relist replaces the slices only once it is complete, so a slice deleted while the
/// watch was down is forgotten and one listed halfway is never taken for the whole.
pub async fn watch_endpoints(
    client: Client,
    service: &str,
    port: Option<&str>,
    mut stop: watch::Receiver<bool>,
    mut on_change: impl FnMut(&BTreeMap<String, Condition>),
) -> Result<(), String> {
    let api: Api<EndpointSlice> = Api::default_namespaced(client);
    let config =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, EndpointSlice>> = None;
    tracing::info!(%service, port = port.unwrap_or("(the only one)"), "watching endpoints");
    loop {
        let event = tokio::select! {
            e = stream.next() => e,
            _ = stop.changed() => return Ok(()),
        };
        let name = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
        match event {
            None => return Err("the endpoint watch ended".into()),
            Some(Err(e)) => {
                tracing::warn!(%service, error = %e, "endpoint watch failed; retrying with back-off");
                continue;
            }
            Some(Ok(WatchEvent::Init)) => {
                relist = Some(BTreeMap::new());
                continue;
            }
            Some(Ok(WatchEvent::InitApply(s))) => {
                relist.get_or_insert_with(BTreeMap::new).insert(name(&s), s);
                continue;
            }
            Some(Ok(WatchEvent::InitDone)) => {
                slices = relist.take().unwrap_or_default();
                tracing::info!(%service, slices = slices.len(), "endpoints listed");
            }
            Some(Ok(WatchEvent::Apply(s))) => {
                slices.insert(name(&s), s);
            }
            Some(Ok(WatchEvent::Delete(s))) => {
                slices.remove(&name(&s));
            }
        }
        on_change(&endpoints(slices.values(), port));
    }
}

/// The addresses among `endpoints` that are ready for requests: a not-ready or terminating
/// endpoint gets none (KEP-1672: `ready` is false while terminating).
pub fn ready(endpoints: &BTreeMap<String, Condition>) -> std::collections::BTreeSet<String> {
    endpoints
        .iter()
        .filter(|(_, c)| **c == Condition::Ready)
        .map(|(a, _)| a.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn slice(port: (&str, i32), eps: &[(&str, Option<bool>, Option<bool>)]) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: eps
                .iter()
                .map(|(ip, ready, terminating)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        serving: *ready,
                        terminating: *terminating,
                    }),
                    ..Default::default()
                })
                .collect(),
            ports: Some(vec![EndpointPort {
                name: Some(port.0.into()),
                port: Some(port.1),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn conditions_map_over_the_union_of_slices() {
        let a = slice(
            ("http", 8080),
            &[
                ("10.0.0.1", Some(true), Some(false)),
                ("10.0.0.2", Some(false), Some(false)),
                ("10.0.0.3", Some(false), Some(true)),
                // Nil conditions: ready, not terminating (the API's rule).
                ("10.0.0.4", None, None),
            ],
        );
        // The same endpoint moving between slices: its best condition counts.
        let b = slice(("http", 8080), &[("10.0.0.2", Some(true), Some(false))]);
        let other_port = slice(("metrics", 9090), &[("10.0.0.9", Some(true), None)]);
        let got = endpoints([&a, &b, &other_port], Some("http"));
        let want: BTreeMap<String, Condition> = [
            ("10.0.0.1:8080", Condition::Ready),
            ("10.0.0.2:8080", Condition::Ready),
            ("10.0.0.3:8080", Condition::Terminating),
            ("10.0.0.4:8080", Condition::Ready),
        ]
        .into_iter()
        .map(|(a, c)| (a.to_string(), c))
        .collect();
        assert_eq!(got, want);
        // Only ready ones are ready: not the terminating one.
        let ready: Vec<String> = ready(&got).into_iter().collect();
        assert_eq!(ready, ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.4:8080"]);
        // No port name: only slices with a single port count.
        assert_eq!(endpoints([&other_port], None).len(), 1);
    }

    #[test]
    fn a_port_number_resolves_to_the_services_port_name() {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080},
                               {"name": "admin", "port": 9901}]}
        }))
        .unwrap();
        let n = ebbtide_config::PortRef::Number(80);
        assert_eq!(
            resolve_port(&svc, Some(&n), "discovery.port")
                .unwrap()
                .as_deref(),
            Some("http")
        );
        let named = ebbtide_config::PortRef::Name("admin".into());
        assert_eq!(
            resolve_port(&svc, Some(&named), "discovery.port")
                .unwrap()
                .as_deref(),
            Some("admin")
        );
        let e = resolve_port(
            &svc,
            Some(&ebbtide_config::PortRef::Number(81)),
            "discovery.port",
        )
        .unwrap_err();
        assert!(e.contains("http (80)"), "{e}");
        let e = resolve_port(&svc, None, "autoscaler.balancer_discovery.port").unwrap_err();
        assert!(
            e.contains("2 ports; set autoscaler.balancer_discovery.port"),
            "{e}"
        );
    }
}
