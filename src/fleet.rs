//! The backends ebbtide runs itself: started through the provider, registered with the
//! balancer once healthy, drained before they are stopped, and replaced when they are lost. The
//! autoscaler's control loop and the fixed-count supervisor both act through it; the balancer
//! is reached through a [`Registrar`], in this process or through remote admin APIs.

use ebbtide_autoscaler::providers::{Instance, Provider, ProviderFuture};
use ebbtide_autoscaler::{Member, MemberState};
use ebbtide_balancer::clock::Clock;
use ebbtide_config::time::Nanos;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How the fleet tells balancers about its backends. One implementation talks to the balancer
/// in this process, another to balancers elsewhere through their admin APIs.
pub trait Registrar: Send + Sync {
    /// A launched instance is booting: not to be sent traffic yet, but worth listing.
    fn starting(&self, instance: &Instance);
    /// It passed its health check: send it traffic.
    fn ready<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, ()>;
    /// No new requests for it; resolves once its in-flight requests finished (or the drain
    /// timeout passed) and the balancers forgot it.
    fn drain<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, ()>;
    /// Forget it now: it is gone (crashed, or never became healthy).
    fn remove<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, ()>;
    /// Called every control interval with the ready instances, for registrations that must be
    /// renewed (leases at remote balancers, a balancer that restarted and forgot them).
    fn refresh<'a>(&'a self, _ready: &'a [Instance]) -> ProviderFuture<'a, ()> {
        Box::pin(async {})
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    Retiring,
}

struct Managed {
    instance: Instance,
    launched_at: Nanos,
    phase: Phase,
}

/// The provider's backends.
pub struct Fleet {
    provider: Box<dyn Provider>,
    balancer: Arc<dyn Registrar>,
    clock: Clock,
    members: Mutex<Vec<Managed>>,
    launches: AtomicU64,
}

impl Fleet {
    /// A fleet started by `provider`, registered through `balancer`.
    pub fn new(provider: Box<dyn Provider>, balancer: Arc<dyn Registrar>, clock: Clock) -> Self {
        Fleet {
            provider,
            balancer,
            clock,
            members: Mutex::new(Vec::new()),
            launches: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Managed>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts one backend in the background: counted (as starting) at once, registered once its
    /// health check passes, forgotten (and stopped by the provider) if it never does.
    pub fn launch(self: &Arc<Self>) {
        // Counted before the provider answers, so the next decision does not launch it again.
        let placeholder = Instance {
            id: format!(
                "launching-{}",
                self.launches.fetch_add(1, Ordering::Relaxed)
            ),
            address: String::new(),
        };
        self.lock().push(Managed {
            instance: placeholder.clone(),
            launched_at: self.clock.now(),
            phase: Phase::Starting,
        });
        let fleet = self.clone();
        tokio::spawn(async move {
            let instance = match fleet.provider.launch().await {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!(error = %e, "could not start a backend");
                    fleet.forget(&placeholder.id);
                    return;
                }
            };
            let known = {
                let mut members = fleet.lock();
                let slot = members.iter_mut().find(|m| m.instance.id == placeholder.id);
                slot.map(|m| m.instance = instance.clone()).is_some()
            };
            if !known {
                // Retired, or shut down, while the provider was launching it.
                let _ = fleet.provider.terminate(&instance.id).await;
                return;
            }
            fleet.balancer.starting(&instance);
            match fleet.provider.wait_ready(&instance).await {
                Ok(()) => {
                    let still_wanted = {
                        let mut members = fleet.lock();
                        match members.iter_mut().find(|m| m.instance.id == instance.id) {
                            Some(m) if m.phase == Phase::Starting => {
                                m.phase = Phase::Ready;
                                true
                            }
                            _ => false,
                        }
                    };
                    if still_wanted {
                        fleet.balancer.ready(&instance).await;
                        tracing::info!(backend = %instance.address, id = %instance.id, "backend is healthy and active");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "backend did not become healthy");
                    fleet.forget(&instance.id);
                    fleet.balancer.remove(&instance).await;
                }
            }
        });
    }

    fn forget(&self, id: &str) {
        self.lock().retain(|m| m.instance.id != id);
    }

    /// Drains one backend (no new requests; in-flight ones finish up to the drain timeout),
    /// then has the provider stop it.
    pub fn retire(self: &Arc<Self>, id: &str) {
        let instance = {
            let mut members = self.lock();
            let Some(m) = members
                .iter_mut()
                .find(|m| m.instance.id == id && m.phase != Phase::Retiring)
            else {
                return;
            };
            m.phase = Phase::Retiring;
            m.instance.clone()
        };
        let fleet = self.clone();
        tokio::spawn(async move {
            fleet.balancer.drain(&instance).await;
            if let Err(e) = fleet.provider.terminate(&instance.id).await {
                tracing::error!(id = %instance.id, error = %e, "could not stop a drained backend; will try again at shutdown");
            }
            fleet.forget(&instance.id);
        });
    }

    /// Notices backends the provider lost (a process that exited without being asked to) and
    /// takes them out of the balancer; returns how many were lost. The next decision (or the
    /// supervisor) replaces them.
    pub fn reap(&self) -> usize {
        let lost = self.provider.lost();
        let mut crashed = 0;
        for (id, why) in lost {
            let gone = {
                let mut members = self.lock();
                let pos = members.iter().position(|m| m.instance.id == id);
                pos.map(|p| members.remove(p))
            };
            if let Some(m) = gone {
                if m.phase != Phase::Retiring {
                    crashed += 1;
                    tracing::warn!(backend = %m.instance.address, id = %id, %why, "backend lost; removing it");
                }
                let balancer = self.balancer.clone();
                tokio::spawn(async move { balancer.remove(&m.instance).await });
            }
        }
        crashed
    }

    /// The members, as the deciders see them.
    pub fn members(&self) -> Vec<Member> {
        self.lock()
            .iter()
            .map(|m| Member {
                id: m.instance.id.clone(),
                launched_at: m.launched_at,
                state: match m.phase {
                    Phase::Starting => MemberState::Starting,
                    Phase::Ready => MemberState::Ready,
                    Phase::Retiring => MemberState::Draining,
                },
            })
            .collect()
    }

    /// Backends launched and not retiring (ready or starting): what is paid for.
    pub fn count(&self) -> u32 {
        self.lock()
            .iter()
            .filter(|m| m.phase != Phase::Retiring)
            .count() as u32
    }

    /// Backends launched and not yet ready.
    pub fn starting(&self) -> u32 {
        self.lock()
            .iter()
            .filter(|m| m.phase == Phase::Starting)
            .count() as u32
    }

    /// Renews the registrations of the ready backends (see [`Registrar::refresh`]).
    pub async fn refresh(&self) {
        let ready: Vec<Instance> = self
            .lock()
            .iter()
            .filter(|m| m.phase == Phase::Ready)
            .map(|m| m.instance.clone())
            .collect();
        self.balancer.refresh(&ready).await;
    }

    /// Keeps `count` backends running, replacing lost ones, until `stop` (no autoscaler).
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
            self.refresh().await;
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Drains every ready backend from the balancers (bounded by the drain timeout), then stops
    /// every backend the provider started.
    pub async fn shutdown(&self, drain: bool) {
        let members: Vec<Instance> = self.lock().drain(..).map(|m| m.instance).collect();
        if drain {
            let drains: Vec<_> = members
                .into_iter()
                .map(|i| {
                    let balancer = self.balancer.clone();
                    tokio::spawn(async move { balancer.drain(&i).await })
                })
                .collect();
            for d in drains {
                let _ = d.await;
            }
        } else {
            for i in &members {
                self.balancer.remove(i).await;
            }
        }
        self.provider.shutdown().await;
    }
}
