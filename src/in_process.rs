//! The balancer in this process, as the fleet and the autoscaler see it: backends go straight
//! into its registry (listed as `starting` while they boot), drains use its own drain, and
//! signals are read from its counters without a round trip.

use ebbtide_autoscaler::providers::{Instance, ProviderFuture};
use ebbtide_autoscaler::{Membership, OverloadAction, Reading, SignalSource};
use ebbtide_balancer::lifecycle::Event;
use ebbtide_balancer::proxy::Proxy;
use ebbtide_balancer::registry::{Backend, BackendSpec, BackendState, Origin, Transport};
use ebbtide_config::time::Nanos;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The capacity and price a provider's backend is registered with: `[provider]`'s, or its
/// instance kind's (`[[provider.kinds]]`), so `cost_aware` fills the cheap kind first.
pub(crate) struct Terms {
    base: (Option<u32>, f64),
    kinds: HashMap<String, (Option<u32>, f64)>,
}

impl Terms {
    pub(crate) fn new(provider: &ebbtide_config::Provider) -> Terms {
        Terms {
            base: (provider.capacity, provider.cost_per_hour),
            kinds: provider
                .kinds
                .iter()
                .map(|k| {
                    let p = provider.for_kind(k);
                    (k.name.clone(), (p.capacity, p.cost_per_hour))
                })
                .collect(),
        }
    }

    /// (capacity, cost per hour) of a backend of `kind`.
    pub(crate) fn of(&self, kind: Option<&str>) -> (Option<u32>, f64) {
        kind.and_then(|k| self.kinds.get(k).copied())
            .unwrap_or(self.base)
    }
}

/// The balancer of `ebbtide serve`.
pub(crate) struct InProcess {
    proxy: Arc<Proxy>,
    terms: Terms,
    /// `[provider] protocol`.
    protocol: ebbtide_config::Protocol,
    /// `[provider] kind`, the `provider` label of its backends' cold starts.
    provider: &'static str,
    drain_timeout: Duration,
    /// `[overload]` `max_queue` and `queue_timeout`: the queue an overload action bounds.
    queue: (usize, Duration),
    backends: Mutex<HashMap<String, Arc<Backend>>>,
}

impl InProcess {
    /// Registers the provider's backends (`[provider]` capacity and price) with `proxy`, drains
    /// them for up to `lifecycle.drain_timeout`, and bounds its queue by `[overload]`.
    pub(crate) fn new(
        proxy: Arc<Proxy>,
        cfg: &ebbtide_config::Config,
        provider: &ebbtide_config::Provider,
    ) -> Self {
        InProcess {
            proxy,
            terms: Terms::new(provider),
            protocol: provider.protocol,
            provider: provider.kind.name(),
            drain_timeout: cfg.lifecycle.drain_timeout.0,
            queue: (cfg.overload.max_queue, cfg.overload.queue_timeout.0),
            backends: Mutex::new(HashMap::new()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Backend>>> {
        self.backends.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Membership for InProcess {
    fn starting(&self, instance: &Instance, kind: Option<&str>, decided_at: Nanos) {
        let (capacity, cost_per_hour) = self.terms.of(kind);
        let spec = BackendSpec {
            address: instance.address.clone(),
            capacity,
            weight: 1,
            cost_per_hour,
            origin: Origin::Provider,
            lease_until: None,
            slow_start: None,
            transport: Transport::protocol(self.protocol),
        };
        match self
            .proxy
            .registry()
            .add_or_renew(spec, BackendState::Starting)
        {
            Ok((b, _)) => {
                b.expect_first_request(self.provider, decided_at);
                self.table().insert(instance.id.clone(), b);
            }
            Err(e) => {
                tracing::error!(error = %e, address = %instance.address, "could not register a backend")
            }
        }
    }

    fn ready<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, ()> {
        if let Some(b) = self.table().get(&instance.id) {
            b.apply(Event::ProviderReady);
        }
        self.proxy.dispatcher().dispatch();
        Box::pin(async {})
    }

    fn drain<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, ()> {
        let backend = self.table().remove(&instance.id);
        Box::pin(async move {
            if let Some(b) = backend {
                b.apply(Event::ProviderDrain);
                ebbtide_balancer::health::drain(self.proxy.clone(), b, self.drain_timeout).await;
            }
        })
    }

    fn remove<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, ()> {
        if let Some(b) = self.table().remove(&instance.id) {
            self.proxy.registry().remove(b.id);
        }
        Box::pin(async {})
    }

    fn set_overload(&self, action: OverloadAction) {
        let (configured, timeout) = self.queue;
        let max_queue = action.queue_limit(configured);
        tracing::info!(?action, max_queue, "queue bound for the overload action");
        self.proxy.dispatcher().set_queue_limits(max_queue, timeout);
    }
}

/// The in-process balancer as a signal source.
pub(crate) struct Signals(pub(crate) Arc<Proxy>);

impl SignalSource for Signals {
    fn read(&mut self) -> ProviderFuture<'_, Result<Vec<Option<Reading>>, String>> {
        let reading = read(&self.0);
        Box::pin(async move { Ok(vec![Some(reading)]) })
    }
}

/// The in-process balancer's signals: the snapshot `/api/v1/signals` gives, without the round trip.
pub(crate) fn read(proxy: &Proxy) -> Reading {
    let snapshot = ebbtide_balancer::admin::signals_snapshot(proxy, proxy.clock().now());
    crate::reading::from_signals(&snapshot)
}
