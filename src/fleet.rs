//! The backends ebbtide runs itself: started through the provider, registered with the balancer
//! (`starting`, then `active` once healthy), drained before they are stopped, and replaced when
//! they crash. The autoscaler's control loop and the fixed-count supervisor both act through it.

use ebbtide_autoscaler::providers::{Instance, LocalProvider};
use ebbtide_autoscaler::{Member, MemberState};
use ebbtide_balancer::proxy::Proxy;
use ebbtide_balancer::registry::{Backend, BackendSpec, BackendState, Origin};
use ebbtide_config::time::Nanos;
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Managed {
    instance: Instance,
    backend: Arc<Backend>,
    launched_at: Nanos,
    retiring: bool,
}

/// The provider's backends.
pub struct Fleet {
    provider: LocalProvider,
    proxy: Arc<Proxy>,
    capacity: Option<u32>,
    cost_per_hour: f64,
    drain_timeout: Duration,
    members: Mutex<Vec<Managed>>,
}

impl Fleet {
    /// A fleet started by `provider`, registered with `proxy`.
    pub fn new(
        provider: LocalProvider,
        proxy: Arc<Proxy>,
        cfg: &ebbtide_config::Provider,
        drain_timeout: Duration,
    ) -> Self {
        Fleet {
            provider,
            proxy,
            capacity: cfg.capacity,
            cost_per_hour: cfg.cost_per_hour,
            drain_timeout,
            members: Mutex::new(Vec::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Managed>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts one backend: registered as `starting` at once, `active` once its health check
    /// passes, removed (and stopped) if it never does.
    pub fn launch(self: &Arc<Self>) {
        let instance = match self.provider.launch() {
            Ok(i) => i,
            Err(e) => {
                tracing::error!(error = %e, "could not start a backend");
                return;
            }
        };
        let spec = BackendSpec {
            address: instance.address.clone(),
            capacity: self.capacity,
            weight: 1,
            cost_per_hour: self.cost_per_hour,
            origin: Origin::Provider,
            lease_until: None,
        };
        let backend = match self
            .proxy
            .registry
            .add_or_renew(spec, BackendState::Starting)
        {
            Ok((b, _)) => b,
            Err(e) => {
                tracing::error!(error = %e, "could not register a backend");
                return;
            }
        };
        self.lock().push(Managed {
            instance: instance.clone(),
            backend: backend.clone(),
            launched_at: self.proxy.clock.now(),
            retiring: false,
        });
        let fleet = self.clone();
        tokio::spawn(async move {
            match fleet.provider.wait_ready(&instance).await {
                Ok(()) => {
                    if backend.state() == BackendState::Starting {
                        backend.set_state(BackendState::Active);
                    }
                    fleet.proxy.dispatcher.dispatch();
                    tracing::info!(backend = %instance.address, id = %instance.id, "backend is healthy and active");
                }
                Err(e) => {
                    tracing::error!(error = %e, "backend did not become healthy");
                    fleet.forget(&instance.id);
                    fleet.proxy.registry.remove(backend.id);
                }
            }
        });
    }

    fn forget(&self, id: &str) {
        self.lock().retain(|m| m.instance.id != id);
    }

    /// Drains one backend (no new requests; in-flight ones finish up to the drain timeout),
    /// then stops its process.
    pub fn retire(self: &Arc<Self>, id: &str) {
        let backend = {
            let mut members = self.lock();
            let Some(m) = members
                .iter_mut()
                .find(|m| m.instance.id == id && !m.retiring)
            else {
                return;
            };
            m.retiring = true;
            m.backend.clone()
        };
        let (fleet, id) = (self.clone(), id.to_string());
        tokio::spawn(async move {
            backend.set_state(BackendState::Draining);
            ebbtide_balancer::health::drain(fleet.proxy.clone(), backend, fleet.drain_timeout)
                .await;
            fleet.provider.terminate(&id).await;
            fleet.forget(&id);
        });
    }

    /// Notices backends whose process exited without being asked to, and takes them out of the
    /// balancer; returns how many crashed.
    pub fn reap(&self) -> usize {
        let exited = self.provider.reap();
        let mut crashed = 0;
        for (id, status) in exited {
            let gone = {
                let mut members = self.lock();
                let pos = members.iter().position(|m| m.instance.id == id);
                pos.map(|p| members.remove(p))
            };
            if let Some(m) = gone {
                if !m.retiring {
                    crashed += 1;
                    tracing::warn!(backend = %m.instance.address, id = %id, %status, "backend process exited; removing it");
                }
                self.proxy.registry.remove(m.backend.id);
            }
        }
        crashed
    }

    /// The members, as the deciders see them (retiring ones as draining).
    pub fn members(&self) -> Vec<Member> {
        self.lock()
            .iter()
            .map(|m| Member {
                id: m.instance.id.clone(),
                launched_at: m.launched_at,
                state: if m.retiring {
                    MemberState::Draining
                } else {
                    match m.backend.state() {
                        BackendState::Starting => MemberState::Starting,
                        BackendState::Draining => MemberState::Draining,
                        BackendState::Active | BackendState::Ejected => MemberState::Ready,
                    }
                },
            })
            .collect()
    }

    /// Backends launched and not retiring (ready or starting): what is paid for.
    pub fn count(&self) -> u32 {
        self.lock().iter().filter(|m| !m.retiring).count() as u32
    }

    /// Keeps `count` backends running, replacing crashed ones, until `stop` (no autoscaler).
    pub async fn supervise(
        self: Arc<Self>,
        count: u32,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            self.reap();
            for _ in self.count()..count {
                self.launch();
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Stops every backend process.
    pub async fn shutdown(&self) {
        self.provider.shutdown().await;
    }
}
