//! Getting a backend slot for a request: ask the policy; when every backend is full, wait in the
//! bounded FIFO [`WaitQueue`] until a slot frees, the queue timeout passes, or the client leaves.
//!
//! Fast path (nobody waiting): a policy pick and a compare-and-swap on the backend's in-flight
//! count, no lock. Slow path: one short `std::sync::Mutex` around the queue, never held across an
//! await. Every slot released, and every fleet change, dispatches queued requests in order.

use crate::clock::Clock;
use crate::policy::{BackendView, Candidates, Policy};
use crate::queue::{Head, WaitQueue};
use crate::registry::{Backend, Registry};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;

/// Why a request was refused without reaching a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The wait queue was full.
    QueueFull,
    /// It waited the whole queue timeout.
    QueueTimeout,
}

impl Shed {
    /// The `reason` label of `ebbtide_shed_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Shed::QueueFull => "queue_full",
            Shed::QueueTimeout => "queue_timeout",
        }
    }
}

struct Waiter {
    key: Option<u64>,
    tried: Tried,
    tx: oneshot::Sender<Grant>,
}

/// Most backends a [`Tried`] set remembers: `retries.max_attempts` is at most 10.
const MAX_TRIED: usize = 10;

/// The backends one request has been sent to already, so that a retry goes to another one
/// (HAProxy's `redispatch`, Envoy's previous-hosts predicate). A fixed array of backend ids: no
/// allocation, and ids (never reused in a process) stay right when the fleet changes between
/// tries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried {
    ids: [u64; MAX_TRIED],
    len: u8,
    /// Never back to a tried backend: wait for another one (see [`Tried::strict`]).
    strict: bool,
}

impl Tried {
    /// No backend tried yet.
    pub const fn new() -> Self {
        Tried {
            ids: [0; MAX_TRIED],
            len: 0,
            strict: false,
        }
    }

    /// The same set, but a request with it never goes back to a tried backend, even when
    /// every accepting backend was tried: it waits in the queue for another one (a backend
    /// that is added or becomes active). For a retry after backends refused the connection:
    /// going straight back to one of them fails again at once.
    pub const fn strict(mut self) -> Self {
        self.strict = true;
        self
    }

    /// Remembers backend `id` (beyond [`MAX_TRIED`] distinct ids, later ones are not kept).
    pub fn insert(&mut self, id: u64) {
        if !self.contains(id) && (self.len as usize) < MAX_TRIED {
            self.ids[self.len as usize] = id;
            self.len += 1;
        }
    }

    /// Whether backend `id` was tried.
    pub fn contains(&self, id: u64) -> bool {
        self.ids[..self.len as usize].contains(&id)
    }

    /// Whether no backend was tried.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The fleet with the backends already tried shown as not accepting, so that every policy
/// passes over them (a consistent-hash key whose owner was tried goes to the next backend on
/// the ring, as when the owner is down).
struct Untried<'a> {
    fleet: &'a dyn Candidates,
    tried: &'a Tried,
}

impl Candidates for Untried<'_> {
    fn len(&self) -> usize {
        self.fleet.len()
    }
    fn view(&self, i: usize) -> BackendView {
        let mut v = self.fleet.view(i);
        if self.tried.contains(v.id) {
            v.accepting = false;
        }
        v
    }
    fn generation(&self) -> u64 {
        self.fleet.generation()
    }
}

/// Where a request may go: the pick over the backends not yet tried while any of them is
/// accepting (it waits for one of them when they are all full, rather than go back to one that
/// just failed it); over every backend once all were tried. `None`: no free slot where it may go.
fn pick_untried(
    policy: &dyn Policy,
    fleet: &dyn Candidates,
    key: Option<u64>,
    tried: &Tried,
    now: ebbtide_config::time::Nanos,
) -> Option<usize> {
    if tried.is_empty() {
        return policy.pick(fleet, key, now);
    }
    let untried = Untried { fleet, tried };
    if let Some(i) = policy.pick(&untried, key, now) {
        return Some(i);
    }
    if tried.strict {
        return None;
    }
    let any_untried = (0..untried.len()).any(|i| untried.view(i).accepting);
    if any_untried {
        None
    } else {
        policy.pick(fleet, key, now)
    }
}

/// A slot handed to a queued request, on its way through the waiter's channel. If the request
/// is gone before it takes the grant (its client left just as the slot freed), dropping the
/// grant gives the slot back; a bare `Arc<Backend>` would keep it booked for ever, and with
/// `capacity = 1` every later request would wait.
struct Grant {
    backend: Option<Arc<Backend>>,
}

impl Grant {
    fn take(mut self) -> Arc<Backend> {
        self.backend.take().expect("a grant is taken once")
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(b) = self.backend.take() {
            b.release();
        }
    }
}

/// Hands out backend slots.
pub struct Dispatcher {
    registry: Arc<Registry>,
    policy: RwLock<Arc<dyn Policy>>,
    queue: Mutex<WaitQueue<Waiter>>,
    queued: AtomicUsize,
    queue_timeout_ns: AtomicU64,
    drain_rate_milli: AtomicU64,
    clock: Clock,
}

/// A backend slot held by one request; dropping it gives the slot back and wakes the next waiter.
pub struct Slot {
    backend: Arc<Backend>,
    dispatcher: Arc<Dispatcher>,
}

impl Slot {
    /// The backend this slot is on.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.backend.release();
        if self.dispatcher.queued.load(Ordering::SeqCst) > 0 {
            self.dispatcher.dispatch();
        }
    }
}

/// Removes a queued request whose future was dropped (client gone) or timed out. If it was
/// dispatched in the meantime, the slot it was granted goes to the next waiter.
struct QueuedTicket<'a> {
    dispatcher: &'a Dispatcher,
    ticket: Option<u64>,
    rx: oneshot::Receiver<Grant>,
}

impl QueuedTicket<'_> {
    /// Leaves the queue. Returns the grant when the request was dispatched before it left:
    /// grants are sent under the queue lock, so once the ticket is not in the queue any more,
    /// its grant (if any) is already in the channel.
    fn leave(&mut self) -> Option<Grant> {
        let t = self.ticket.take()?;
        {
            let mut q = self.dispatcher.lock_queue();
            let removed = q.remove(t).is_some();
            self.dispatcher.queued.store(q.len(), Ordering::SeqCst);
            if removed {
                return None;
            }
        }
        self.rx.try_recv().ok()
    }
}

impl Drop for QueuedTicket<'_> {
    fn drop(&mut self) {
        if let Some(grant) = self.leave() {
            drop(grant);
            // The slot is free again: someone else may be waiting for it.
            self.dispatcher.dispatch();
        }
    }
}

impl Dispatcher {
    /// A dispatcher over `registry` with `policy`, a queue of `max_queue` and `queue_timeout`.
    pub fn new(
        registry: Arc<Registry>,
        policy: Arc<dyn Policy>,
        max_queue: usize,
        queue_timeout: Duration,
        clock: Clock,
    ) -> Self {
        Dispatcher {
            registry,
            policy: RwLock::new(policy),
            queue: Mutex::new(WaitQueue::new(max_queue)),
            queued: AtomicUsize::new(0),
            queue_timeout_ns: AtomicU64::new(queue_timeout.as_nanos() as u64),
            drain_rate_milli: AtomicU64::new(0),
            clock,
        }
    }

    fn lock_queue(&self) -> MutexGuard<'_, WaitQueue<Waiter>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The policy in use.
    pub fn policy(&self) -> Arc<dyn Policy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Swaps the policy (config reload); requests in flight keep their backends.
    pub fn set_policy(&self, policy: Arc<dyn Policy>) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
        self.dispatch();
    }

    /// Changes the queue's bound and timeout (config reload).
    pub fn set_queue_limits(&self, max_queue: usize, queue_timeout: Duration) {
        self.lock_queue().set_max_len(max_queue);
        self.queue_timeout_ns
            .store(queue_timeout.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Requests waiting for a backend.
    pub fn queue_depth(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Records the fleet's recent completion rate, for `Retry-After`.
    pub fn set_drain_rate(&self, per_second: f64) {
        self.drain_rate_milli
            .store((per_second.max(0.0) * 1000.0) as u64, Ordering::Relaxed);
    }

    /// Seconds a shed client should wait before retrying: the time the queue ahead of it would
    /// take to drain at the recent completion rate, between 1 and 60.
    pub fn retry_after_secs(&self) -> u64 {
        let rate = self.drain_rate_milli.load(Ordering::Relaxed) as f64 / 1000.0;
        let ahead = (self.queue_depth() + 1) as f64;
        if rate <= 0.0 {
            return 1;
        }
        ((ahead / rate).ceil() as u64).clamp(1, 60)
    }

    /// A slot for a request with hash `key`, waiting in the queue when every backend it may go
    /// to is full. A retry passes the backends it was sent to already as `tried`: it goes to one
    /// not yet tried while any of those is accepting, and may reuse a tried one only once every
    /// accepting backend was tried.
    pub async fn acquire(self: &Arc<Self>, key: Option<u64>, tried: Tried) -> Result<Slot, Shed> {
        if self.queued.load(Ordering::SeqCst) == 0 {
            if let Some(backend) = self.try_pick(key, &tried) {
                return Ok(self.slot(backend));
            }
        }
        let (tx, rx) = oneshot::channel();
        let ticket = {
            let mut q = self.lock_queue();
            let ticket = q
                .push(Waiter { key, tried, tx }, self.clock.now())
                .map_err(|_| Shed::QueueFull)?;
            self.queued.store(q.len(), Ordering::SeqCst);
            // A slot may have freed between the failed pick and the push; look again now that the
            // request is visible to releasers.
            self.dispatch_locked(&mut q);
            ticket
        };
        let mut guard = QueuedTicket {
            dispatcher: self,
            ticket: Some(ticket),
            rx,
        };
        let timeout = Duration::from_nanos(self.queue_timeout_ns.load(Ordering::Relaxed));
        match tokio::time::timeout(timeout, &mut guard.rx).await {
            Ok(Ok(grant)) => {
                guard.ticket = None;
                Ok(self.slot(grant.take()))
            }
            Ok(Err(_)) => Err(Shed::QueueTimeout),
            // Timed out: leave the queue; if it was dispatched in the meantime, use the slot.
            Err(_) => match guard.leave() {
                Some(grant) => Ok(self.slot(grant.take())),
                None => Err(Shed::QueueTimeout),
            },
        }
    }

    fn slot(self: &Arc<Self>, backend: Arc<Backend>) -> Slot {
        Slot {
            backend,
            dispatcher: self.clone(),
        }
    }

    /// A pick plus a slot, without queueing. A pick can lose a race for a backend's last slot;
    /// then it picks again, a bounded number of times.
    fn try_pick(&self, key: Option<u64>, tried: &Tried) -> Option<Arc<Backend>> {
        let snap = self.registry.snapshot();
        let policy = self.policy();
        let now = self.clock.now();
        for _ in 0..4 {
            let i = pick_untried(&*policy, &snap.at(now), key, tried, now)?;
            let b = &snap.backends[i];
            if b.try_acquire() {
                return Some(b.clone());
            }
        }
        None
    }

    /// Hands free slots to queued requests, oldest first. Called when a slot is released, when the
    /// fleet changes and when the policy changes.
    pub fn dispatch(&self) {
        let mut q = self.lock_queue();
        self.dispatch_locked(&mut q);
    }

    fn dispatch_locked(&self, q: &mut WaitQueue<Waiter>) {
        let snap = self.registry.snapshot();
        let policy = self.policy();
        let now = self.clock.now();
        q.dispatch(
            |w| {
                if w.tx.is_closed() {
                    return Head::Discard;
                }
                let Some(i) = pick_untried(&*policy, &snap.at(now), w.key, &w.tried, now) else {
                    return Head::Stop;
                };
                let b = &snap.backends[i];
                if b.try_acquire() {
                    Head::Serve(b.clone())
                } else {
                    Head::Retry
                }
            },
            // A waiter gone since the check above drops the grant, which gives the slot back.
            |w, backend| {
                let _ = w.tx.send(Grant {
                    backend: Some(backend),
                });
            },
        );
        self.queued.store(q.len(), Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::{CentralQueue, LeastOutstanding};
    use crate::registry::{BackendSpec, BackendState, Origin, RegistryConfig};
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    /// A dispatcher over one backend with `capacity` slots, and that backend.
    fn one_backend(capacity: u32) -> (Arc<Dispatcher>, Arc<Backend>) {
        let clock = Clock::new();
        let registry = Arc::new(Registry::new(RegistryConfig::defaults(), clock));
        let (backend, _) = registry
            .add_or_renew(
                BackendSpec {
                    capacity: Some(capacity),
                    ..BackendSpec::plain("127.0.0.1:9", Origin::Static)
                },
                BackendState::Active,
            )
            .unwrap();
        let d = Dispatcher::new(
            registry,
            Arc::new(CentralQueue::new()),
            16,
            Duration::from_secs(60),
            clock,
        );
        (Arc::new(d), backend)
    }

    /// A dispatcher with `policy` over `n` active backends of `capacity` slots each.
    fn fleet(
        n: usize,
        capacity: Option<u32>,
        policy: Arc<dyn Policy>,
    ) -> (Arc<Dispatcher>, Vec<Arc<Backend>>) {
        let clock = Clock::new();
        let registry = Arc::new(Registry::new(RegistryConfig::defaults(), clock));
        let backends = (0..n)
            .map(|i| {
                registry
                    .add_or_renew(
                        BackendSpec {
                            address: format!("127.0.0.1:{}", 9000 + i),
                            capacity,
                            weight: 1,
                            cost_per_hour: 0.0,
                            origin: Origin::Static,
                            lease_until: None,
                            slow_start: None,
                            transport: Default::default(),
                        },
                        BackendState::Active,
                    )
                    .unwrap()
                    .0
            })
            .collect();
        let d = Dispatcher::new(registry, policy, 16, Duration::from_secs(60), clock);
        (Arc::new(d), backends)
    }

    /// Every policy, as `[balancer] policy` builds it.
    fn every_policy() -> Vec<Arc<dyn Policy>> {
        ebbtide_config::PolicyKind::ALL
            .iter()
            .map(|&policy| {
                let cfg = ebbtide_config::Balancer {
                    policy,
                    ..Default::default()
                };
                Arc::from(crate::policies::build(&cfg))
            })
            .collect()
    }

    /// A retry never goes back to a backend it was sent to while an untried one has a free
    /// slot, whatever the policy, with or without a hash key (the key's owner may be the one
    /// that failed), and even when the tried one looks least loaded (a dead backend has nothing
    /// in flight).
    #[tokio::test]
    async fn a_retry_goes_to_a_backend_not_yet_tried() {
        for policy in every_policy() {
            let name = policy.name();
            let (d, backends) = fleet(3, None, policy);
            for key in [None, Some(1), Some(2), Some(3), Some(0xdead_beef)] {
                for _ in 0..50 {
                    let first = d.acquire(key, Tried::new()).await.unwrap();
                    let mut tried = Tried::new();
                    tried.insert(first.backend().id);
                    // The first backend is idle again, as a dead one would be.
                    drop(first);
                    let second = d.acquire(key, tried).await.unwrap();
                    assert!(!tried.contains(second.backend().id), "{name} {key:?}");
                    tried.insert(second.backend().id);
                    drop(second);
                    let third = d.acquire(key, tried).await.unwrap();
                    assert!(!tried.contains(third.backend().id), "{name} {key:?}");
                    tried.insert(third.backend().id);
                    drop(third);
                    // Every backend tried: one of them is reused rather than nothing.
                    let fourth = d.acquire(key, tried).await.unwrap();
                    assert!(tried.contains(fourth.backend().id), "{name} {key:?}");
                }
            }
            assert!(backends.iter().all(|b| b.in_flight() == 0), "{name}");
        }
    }

    /// When the untried backends are full, a retry waits for one of their slots instead of
    /// going back to the tried one that is free.
    #[tokio::test]
    async fn a_retry_waits_for_an_untried_backend_rather_than_reuse_a_tried_one() {
        let (d, backends) = fleet(2, Some(1), Arc::new(CentralQueue::new()));
        let busy = d.acquire(None, Tried::new()).await.unwrap();
        let mut tried = Tried::new();
        let other = backends.iter().find(|b| b.id != busy.backend().id).unwrap();
        tried.insert(other.id);
        let mut retry = pin!(d.acquire(None, tried));
        assert!(poll_once(retry.as_mut()).is_pending());
        assert_eq!(other.in_flight(), 0, "the tried backend is not reused");
        let busy_id = busy.backend().id;
        drop(busy);
        let Poll::Ready(Ok(slot)) = poll_once(retry.as_mut()) else {
            panic!("the freed slot of the untried backend went to the retry");
        };
        assert_eq!(slot.backend().id, busy_id);
    }

    /// Issue 14, "Defaults that fight the user": `central_queue` over backends without a
    /// `capacity` runs on the adaptive limit's slots, as `ebbtide serve` builds them by default
    /// (`[overload] adaptive_limit = true`): the limit's worth of requests dispatched, the next
    /// one waits in the FIFO until a slot frees.
    #[tokio::test]
    async fn central_queue_without_capacity_fills_the_adaptive_limit() {
        let clock = Clock::new();
        let cfg = RegistryConfig {
            adaptive_limit: true,
            ..RegistryConfig::defaults()
        };
        let registry = Arc::new(Registry::new(cfg, clock));
        let spec = BackendSpec::plain("127.0.0.1:9", Origin::Api);
        let (backend, _) = registry.add_or_renew(spec, BackendState::Active).unwrap();
        let limit = backend
            .effective_capacity()
            .expect("the adaptive limit supplies the slots");
        let policy = Arc::new(CentralQueue::new());
        let d = Arc::new(Dispatcher::new(
            registry,
            policy,
            16,
            Duration::from_secs(60),
            clock,
        ));
        let mut slots = Vec::new();
        for _ in 0..limit {
            slots.push(d.acquire(None, Tried::new()).await.unwrap());
        }
        let mut next = pin!(d.acquire(None, Tried::new()));
        assert!(
            poll_once(next.as_mut()).is_pending(),
            "dispatched past the limit"
        );
        assert_eq!(backend.in_flight(), limit);
        drop(slots.pop());
        assert!(matches!(poll_once(next.as_mut()), Poll::Ready(Ok(_))));
    }

    /// A tried backend that left the fleet does not hold a retry back.
    #[tokio::test]
    async fn tried_backends_that_are_not_accepting_do_not_count() {
        let (d, backends) = fleet(2, None, Arc::new(LeastOutstanding::new()));
        assert!(
            backends[1].eject(u64::MAX),
            "active backends can be ejected"
        );
        let mut tried = Tried::new();
        tried.insert(backends[0].id);
        let slot = d.acquire(None, tried).await.unwrap();
        assert_eq!(slot.backend().id, backends[0].id);
    }

    /// A strict retry (its backends refused the connection) never goes back to them, even
    /// when they are all it could go to: it waits until another backend is active.
    #[tokio::test]
    async fn a_strict_retry_waits_for_another_backend_instead_of_reusing_a_tried_one() {
        let (d, refused) = one_backend(4);
        let mut tried = Tried::new();
        tried.insert(refused.id);
        let mut retry = pin!(d.acquire(None, tried.strict()));
        assert!(poll_once(retry.as_mut()).is_pending());
        assert_eq!(
            refused.in_flight(),
            0,
            "the refusing backend is not tried again"
        );
        let (other, _) = d
            .registry
            .add_or_renew(
                BackendSpec {
                    capacity: Some(4),
                    ..BackendSpec::plain("127.0.0.1:10", Origin::Provider)
                },
                BackendState::Active,
            )
            .unwrap();
        d.dispatch();
        let Poll::Ready(Ok(slot)) = poll_once(retry.as_mut()) else {
            panic!("the new backend did not go to the waiting retry");
        };
        assert_eq!(slot.backend().id, other.id);
    }

    #[test]
    fn tried_keeps_distinct_ids_up_to_its_bound() {
        let mut t = Tried::new();
        assert!(t.is_empty());
        for id in 0..20 {
            t.insert(id);
            t.insert(id);
        }
        assert!((0..MAX_TRIED as u64).all(|id| t.contains(id)));
        assert!(!t.contains(MAX_TRIED as u64));
    }

    /// Polls once, outside any runtime's wake-ups: these tests decide the interleaving.
    fn poll_once<F: Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[tokio::test]
    async fn a_waiter_gets_the_slot_its_predecessor_frees() {
        let (d, backend) = one_backend(1);
        let first = d.acquire(None, Tried::new()).await.unwrap();
        let mut second = pin!(d.acquire(None, Tried::new()));
        assert!(poll_once(second.as_mut()).is_pending());
        assert_eq!(d.queue_depth(), 1);
        drop(first);
        assert_eq!(d.queue_depth(), 0);
        let Poll::Ready(Ok(slot)) = poll_once(second.as_mut()) else {
            panic!("the freed slot went to the waiter");
        };
        assert_eq!(backend.in_flight(), 1);
        drop(slot);
        assert_eq!(backend.in_flight(), 0);
    }

    /// The client leaves after its request was granted a slot but before the request took it:
    /// the slot must come back (it used to stay booked for ever, stalling a `capacity = 1`
    /// backend behind it).
    #[tokio::test]
    async fn a_waiter_that_leaves_after_its_grant_gives_the_slot_back() {
        let (d, backend) = one_backend(1);
        let first = d.acquire(None, Tried::new()).await.unwrap();
        let mut second = Box::pin(d.acquire(None, Tried::new()));
        assert!(poll_once(second.as_mut()).is_pending());
        drop(first);
        assert_eq!(backend.in_flight(), 1, "granted to the waiter");
        drop(second);
        assert_eq!(backend.in_flight(), 0, "given back when the waiter left");
        assert!(d.acquire(None, Tried::new()).await.is_ok());
    }

    /// Same, with a third request queued behind: the slot the leaver was granted goes on to it.
    #[tokio::test]
    async fn a_slot_given_back_by_a_leaver_goes_to_the_next_waiter() {
        let (d, backend) = one_backend(1);
        let first = d.acquire(None, Tried::new()).await.unwrap();
        let mut second = Box::pin(d.acquire(None, Tried::new()));
        let mut third = pin!(d.acquire(None, Tried::new()));
        assert!(poll_once(second.as_mut()).is_pending());
        assert!(poll_once(third.as_mut()).is_pending());
        drop(first);
        drop(second);
        assert_eq!(d.queue_depth(), 0);
        let Poll::Ready(Ok(slot)) = poll_once(third.as_mut()) else {
            panic!("the slot went on to the third request");
        };
        assert_eq!(backend.in_flight(), 1);
        drop(slot);
        assert_eq!(backend.in_flight(), 0);
    }

    /// A waiter that leaves before any slot frees just leaves the queue.
    #[tokio::test]
    async fn a_waiter_that_leaves_before_a_grant_leaves_the_queue() {
        let (d, backend) = one_backend(1);
        let first = d.acquire(None, Tried::new()).await.unwrap();
        let mut second = Box::pin(d.acquire(None, Tried::new()));
        assert!(poll_once(second.as_mut()).is_pending());
        drop(second);
        assert_eq!(d.queue_depth(), 0);
        drop(first);
        assert_eq!(backend.in_flight(), 0);
    }
}
