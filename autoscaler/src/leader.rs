//! Leader election on a `coordination.k8s.io/v1` Lease, for `ebbtide autoscale` with several
//! replicas: only the holder acts. The rules are client-go's (tools/leaderelection), which are
//! the seed's lease semantics:
//!
//! - A Lease names its holder, how long it holds (`leaseDurationSeconds`) and when it was last
//!   renewed. A candidate takes it when it does not exist, names nobody, or has not **changed**
//!   for `lease_duration` as this replica observed it (judged by the local clock from when the
//!   record last changed, not by the timestamps in it: clocks of two nodes differ).
//! - Every write carries the resourceVersion that was read, so two candidates cannot both win:
//!   the second gets `409 Conflict`.
//! - The holder renews every `retry_period`. When it has not renewed successfully for
//!   `renew_deadline` (shorter than `lease_duration`), it gives up leadership at once, before
//!   any other replica may take the Lease: [`Elector::hold`] returns, and the caller stops every
//!   write (`ebbtide autoscale` exits).

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use std::time::{Duration, Instant};

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
    /// The record last read and when it was first seen so (local clock).
    observed: Option<(Observed, Instant)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    holder: String,
    renew: Option<String>,
    version: Option<String>,
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    /// An elector for `[leader_election]`, on `client`'s default namespace.
    pub fn new(client: Client, cfg: &ebbtide_config::LeaderElection) -> Elector {
        let identity = cfg.identity.clone().unwrap_or_else(default_identity);
        Elector {
            api: Api::default_namespaced(client),
            name: cfg.lease.clone(),
            identity,
            lease_duration: cfg.lease_duration.0,
            renew_deadline: cfg.renew_deadline.0,
            retry_period: cfg.retry_period.0,
            observed: None,
        }
    }

    /// This replica's name in the Lease.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&mut self) {
        let mut logged = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(lease = %self.name, identity = %self.identity, "leader: acquired the lease");
                    return;
                }
                Ok(false) => {
                    if !logged {
                        let holder = self.observed.as_ref().map(|(o, _)| o.holder.clone());
                        tracing::info!(lease = %self.name, holder = ?holder, "leader election: another replica holds the lease; waiting");
                        logged = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: cannot read or write the lease")
                }
            }
            tokio::time::sleep(self.retry_period).await;
        }
    }

    /// Renews every `retry_period` while this replica holds the Lease; returns why it stopped
    /// holding it (not renewed within `renew_deadline`, or taken by another).
    pub async fn hold(&mut self) -> String {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.retry_period).await;
            match tokio::time::timeout(
                self.renew_deadline.saturating_sub(renewed.elapsed()),
                self.try_acquire_or_renew(),
            )
            .await
            {
                Ok(Ok(true)) => renewed = Instant::now(),
                Ok(Ok(false)) => {
                    let holder = self.observed.as_ref().map(|(o, _)| o.holder.clone());
                    return format!("the lease is held by {holder:?} now");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "leader: could not renew the lease"),
                Err(_) => {}
            }
            if renewed.elapsed() >= self.renew_deadline {
                return format!(
                    "the lease was not renewed within renew_deadline ({:?})",
                    self.renew_deadline
                );
            }
        }
    }

    /// Gives the Lease up (holder emptied), so another replica takes it without waiting for it
    /// to run out. Best effort, at shutdown.
    pub async fn release(&mut self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = Some(now_micro());
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }

    /// One round of client-go's tryAcquireOrRenew: Ok(true) while this replica holds it.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, String> {
        let now = now_micro();
        let seconds = i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| format!("cannot read lease {}: {e}", self.name))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(l) => {
                    self.observe(&l);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(format!("cannot create lease {}: {e}", self.name)),
            };
        };
        self.observe(&lease);
        let (observed, since) = self.observed.clone().expect("observed");
        let mine = observed.holder == self.identity;
        if !mine && !observed.holder.is_empty() && since.elapsed() < self.lease_duration {
            return Ok(false);
        }
        let spec = lease.spec.get_or_insert_with(Default::default);
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => {
                self.observe(&l);
                Ok(true)
            }
            // Someone wrote in between: they hold it, or renewed it.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(format!("cannot update lease {}: {e}", self.name)),
        }
    }

    /// Notes the record read, restarting the clock when it changed.
    fn observe(&mut self, lease: &Lease) {
        let spec = lease.spec.clone().unwrap_or_default();
        let record = Observed {
            holder: spec.holder_identity.unwrap_or_default(),
            renew: spec.renew_time.map(|t| t.0.to_string()),
            version: lease.metadata.resource_version.clone(),
        };
        match &self.observed {
            Some((o, _)) if *o == record => {}
            _ => self.observed = Some((record, Instant::now())),
        }
    }
}

/// `$POD_NAME` (the Downward API, see deploy/kubernetes/autoscaler.yaml), else the host name
/// and this process's id.
fn default_identity() -> String {
    if let Ok(p) = std::env::var("POD_NAME") {
        if !p.is_empty() {
            return p;
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "ebbtide".into());
    format!("{host}-{}", std::process::id())
}
