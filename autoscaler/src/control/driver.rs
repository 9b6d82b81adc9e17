//! The async driver around the [`ControlStep`]: every interval it notices lost backends, renews
//! registrations, reads the signals, ticks the step, and carries out its commands through a
//! [`Provider`] (start and stop backends) and a [`Membership`] (tell the balancers). Each command
//! runs in its own task and reports back through a channel, so a slow boot or drain never holds
//! up a decision; the step itself sits behind a mutex that is never held across an await.

use super::members::{Change, Command, Report};
use super::step::ControlStep;
use crate::decision::{Direction, OverloadAction};
use crate::providers::{Instance, Provider, ProviderFuture};
use crate::signals::SignalSource;
use ebbtide_config::time::Nanos;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};

/// How the autoscaler tells balancers about its backends: the balancer in this process, or
/// balancers elsewhere through their admin APIs.
pub trait Membership: Send + Sync {
    /// A launched instance (of instance kind `kind`, `None` without kinds) is booting: not to
    /// be sent traffic yet, but worth listing. The kind chooses its registered capacity and
    /// price (`[[provider.kinds]]`). Its launch was decided at `decided_at` (the driver's
    /// clock): the balancers measure its cold start from then to its first served request.
    fn starting(&self, instance: &Instance, kind: Option<&str>, decided_at: Nanos);
    /// It passed its health check: send it traffic.
    fn ready<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, ()>;
    /// No new requests for it; resolves once its in-flight requests finished (or the drain
    /// timeout passed) and the balancers forgot it.
    fn drain<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, ()>;
    /// Forget it now: it is gone (crashed, or never became healthy).
    fn remove<'a>(&'a self, instance: &'a Instance) -> ProviderFuture<'a, ()>;
    /// Called every control interval with the serving instances, for registrations that must
    /// be renewed (leases at remote balancers, a balancer that restarted and forgot them).
    fn refresh<'a>(&'a self, _serving: &'a [Instance]) -> ProviderFuture<'a, ()> {
        Box::pin(async {})
    }
    /// Applies a changed overload action to the balancers' queues (see
    /// [`OverloadAction::queue_limit`]).
    fn set_overload(&self, action: OverloadAction);
}

/// The clock the driver reads: core time, as the balancer's signals are stamped.
pub type Now = Arc<dyn Fn() -> Nanos + Send + Sync>;

/// What the driver shares with the admin API: the step (its events, cost and fleet) and the
/// clock.
pub struct Shared {
    step: Mutex<ControlStep>,
    now: Now,
}

impl Shared {
    /// The step, locked. Never hold it across an await.
    pub fn lock(&self) -> MutexGuard<'_, ControlStep> {
        self.step.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The time now.
    pub fn now(&self) -> Nanos {
        (self.now)()
    }
}

/// Runs a [`ControlStep`] against the real world.
pub struct Driver {
    shared: Arc<Shared>,
    provider: Arc<dyn Provider>,
    membership: Arc<dyn Membership>,
    interval: Duration,
    reports: mpsc::UnboundedSender<Report>,
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Report>>>,
    /// Woken by the provider when it has lost instances to report.
    lost: Arc<Notify>,
}

impl Driver {
    /// A driver ticking `step` every `interval`.
    pub fn new(
        step: ControlStep,
        provider: Box<dyn Provider>,
        membership: Arc<dyn Membership>,
        now: Now,
        interval: Duration,
    ) -> Arc<Driver> {
        let (reports, inbox) = mpsc::unbounded_channel();
        let lost = Arc::new(Notify::new());
        provider.wake_on_lost(lost.clone());
        Arc::new(Driver {
            shared: Arc::new(Shared {
                step: Mutex::new(step),
                now,
            }),
            provider: provider.into(),
            membership,
            interval,
            reports,
            inbox: Mutex::new(Some(inbox)),
            lost,
        })
    }

    /// What the admin API reads.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Runs the loop until `stop` turns true (or its sender goes). Signals come from `source`
    /// (none for a fixed fleet). Returns without stopping any backend: see
    /// [`Driver::shutdown`].
    pub async fn run(
        self: &Arc<Self>,
        mut source: Option<Box<dyn SignalSource>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let Some(mut inbox) = self.inbox.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            tracing::error!("the control loop runs once");
            return;
        };
        if let Some(src) = source.as_mut() {
            if let Ok(readings) = src.read().await {
                let now = self.shared.now();
                self.shared.lock().prime(now, &readings);
            }
        }
        let start = {
            let now = self.shared.now();
            self.shared.lock().start(now)
        };
        self.execute(start);
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick(source.as_mut()).await,
                Some(report) = inbox.recv() => self.report(report),
                // A lost backend is taken out and replaced now, not at the next interval.
                _ = self.lost.notified() => self.tick(source.as_mut()).await,
                _ = stop.changed() => return,
            }
        }
    }

    /// Takes the instances the provider lost out of the fleet (and the balancers).
    fn collect_lost(self: &Arc<Self>) {
        for (id, why) in self.provider.lost() {
            self.report(Report::Lost { id, why });
        }
    }

    async fn tick(self: &Arc<Self>, source: Option<&mut Box<dyn SignalSource>>) {
        self.collect_lost();
        let boots = self.provider.boot_times();
        if !boots.is_empty() {
            self.shared.lock().set_boot_times(&boots);
        }
        // Renewed before this tick's decision, so no renewal can follow a drain it starts.
        let serving = self.shared.lock().members().serving();
        self.membership.refresh(&serving).await;
        if let Some(src) = source {
            match src.read().await {
                Ok(readings) => {
                    let now = self.shared.now();
                    self.shared.lock().observe(now, &readings);
                }
                Err(e) => tracing::warn!(error = %e, "no signals this interval"),
            }
        }
        let now = self.shared.now();
        let tick = self.shared.lock().tick(now);
        if let Some(d) = &tick.decision {
            if tick.direction != Direction::Hold {
                tracing::info!(from = tick.from, to = d.desired, reason = %d.reason, "autoscaler decision");
            }
        }
        if let Some(action) = tick.overload {
            tracing::info!(?action, "overload action");
            self.membership.set_overload(action);
        }
        self.execute(tick.commands);
    }

    fn report(self: &Arc<Self>, report: Report) {
        let now = self.shared.now();
        let (next, change) = self.shared.lock().report(report, now);
        if let Change::Failed(why) = change {
            tracing::warn!(%why, "backend lost; it will be replaced");
        }
        self.execute(next);
    }

    fn execute(self: &Arc<Self>, commands: impl IntoIterator<Item = Command>) {
        for command in commands {
            let d = self.clone();
            match command {
                Command::Launch { ticket, kind } => {
                    tokio::spawn(async move {
                        let launched = match &kind {
                            Some(k) => d.provider.launch_kind(k).await,
                            None => d.provider.launch().await,
                        };
                        let report = match launched {
                            Ok(instance) => Report::Launched { ticket, instance },
                            Err(why) => {
                                tracing::error!(error = %why, "could not start a backend");
                                Report::LaunchFailed { ticket, why }
                            }
                        };
                        let _ = d.reports.send(report);
                    });
                }
                Command::Boot(instance) => {
                    let (kind, decided_at) = {
                        let step = d.shared.lock();
                        let members = step.members();
                        (
                            members.kind_of(&instance.id).map(str::to_string),
                            members.launched_at_of(&instance.id),
                        )
                    };
                    let decided_at = decided_at.unwrap_or_else(|| d.shared.now());
                    d.membership
                        .starting(&instance, kind.as_deref(), decided_at);
                    tokio::spawn(async move {
                        let report = match d.provider.wait_ready(&instance).await {
                            Ok(()) => Report::Ready { id: instance.id },
                            Err(why) => {
                                tracing::error!(id = %instance.id, error = %why, "backend did not become healthy");
                                Report::NeverReady {
                                    id: instance.id,
                                    why,
                                }
                            }
                        };
                        let _ = d.reports.send(report);
                    });
                }
                Command::Admit(instance) => {
                    tokio::spawn(async move {
                        d.membership.ready(&instance).await;
                        tracing::info!(backend = %instance.address, id = %instance.id, "backend is healthy and active");
                    });
                }
                Command::Retire(instance) => {
                    tokio::spawn(async move {
                        d.membership.drain(&instance).await;
                        if let Err(e) = d.provider.terminate(&instance.id).await {
                            tracing::error!(id = %instance.id, error = %e, "could not stop a drained backend; will try again at shutdown");
                        }
                        let _ = d.reports.send(Report::Retired { id: instance.id });
                    });
                }
                Command::Forget(instance) => {
                    tokio::spawn(async move { d.membership.remove(&instance).await });
                }
                Command::Terminate(instance) => {
                    tokio::spawn(async move {
                        let _ = d.provider.terminate(&instance.id).await;
                    });
                }
            }
        }
    }

    /// Takes every backend out of the balancers (draining them first when `drain`, bounded by
    /// the drain timeout), then stops every backend the provider started.
    pub async fn shutdown(&self, drain: bool) {
        let instances = self.shared.lock().members().instances();
        if drain {
            let drains: Vec<_> = instances
                .into_iter()
                .map(|i| {
                    let m = self.membership.clone();
                    tokio::spawn(async move { m.drain(&i).await })
                })
                .collect();
            for d in drains {
                let _ = d.await;
            }
        } else {
            for i in &instances {
                self.membership.remove(i).await;
            }
        }
        self.provider.shutdown().await;
    }
}
