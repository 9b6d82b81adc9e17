//! The engine: a fixed set of connections, each driven by its own loop, spread over `--threads`
//! worker threads (one single-threaded tokio runtime each, like wrk's threads), so that the cost
//! of a request is one exchange on a connection that already exists, not a task and a pool
//! checkout.
//!
//! Open loop: every worker keeps its own share of the schedule (arrivals i, i + W, i + 2W, ... of
//! W workers: together exactly the run's arrivals) with a dispatcher task that sleeps on a
//! high-resolution timer ([`TaskTimer`]) to the next arrival and, when it wakes, queues every
//! arrival already due at once, each with its own scheduled time; idle connections of that worker
//! take them in order (the most recently idle first, so that a run that needs few connections
//! opens few). No thread or channel stands between the schedule and the connections. A request that
//! starts more than `--late-after` after its scheduled time is counted late, and its latency is
//! measured from the scheduled time whatever happened meanwhile: no coordinated omission.
//!
//! Closed loop (`--closed`): every connection sends its next request as soon as the previous
//! answer is read, for the duration, as wrk does; latency is then from the actual send.

use super::client::{Conn, H2Conn};
use super::report::{ErrorKind, Outcome, Recorder};
use super::requests::Requests;
use super::schedule::Arrivals;
use super::tls::Dial;
use crate::timer::TaskTimer;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What the workers share with each other and the reporting side.
pub(crate) struct Shared {
    /// One recorder per worker (each locked by its own worker, so uncontended but for the
    /// once-a-second progress line); merged into one at the end.
    pub(crate) recorders: Vec<Mutex<Recorder>>,
    /// Requests handed to each worker and not finished yet.
    outstanding: Vec<AtomicUsize>,
    /// Requests being sent or awaiting their answer, per worker.
    in_flight: Vec<AtomicUsize>,
    /// Arrivals the workers' dispatchers have queued (open loop).
    pub(crate) dispatched: AtomicU64,
    /// The time the schedule counts from.
    pub(crate) start: Instant,
    /// Set by ctrl-c: stop scheduling (open) or sending (closed).
    pub(crate) stop: AtomicBool,
    pub(crate) timeout: Duration,
    pub(crate) late_after: Duration,
    /// Open loop: arrivals due within this much of a dispatcher's wake go out with it.
    pub(crate) dispatch_slack: Duration,
    /// How connections reach the target (TCP, or TCP and TLS).
    pub(crate) dial: Dial,
    pub(crate) keepalive: bool,
    /// `--busy-poll`: workers poll instead of sleeping (see [`busy_poll`]).
    pub(crate) busy_poll: bool,
    /// HTTP/2 (h2c, or h2 by ALPN over TLS) with this many streams per connection; HTTP/1.1
    /// when None.
    pub(crate) h2_streams: Option<usize>,
    pub(crate) requests: Requests,
}

impl Shared {
    // One call site, each argument named there; a builder would only add lines.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        workers: usize,
        start: Instant,
        timeout: Duration,
        late_after: Duration,
        dispatch_slack: Duration,
        dial: Dial,
        keepalive: bool,
        busy_poll: bool,
        h2_streams: Option<usize>,
        requests: Requests,
    ) -> Shared {
        Shared {
            recorders: (0..workers).map(|_| Mutex::new(Recorder::new())).collect(),
            outstanding: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            in_flight: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            dispatched: AtomicU64::new(0),
            start,
            stop: AtomicBool::new(false),
            timeout,
            late_after,
            dispatch_slack,
            dial,
            keepalive,
            busy_poll,
            h2_streams,
            requests,
        }
    }

    pub(crate) fn second_of(&self, t: Instant) -> usize {
        t.saturating_duration_since(self.start).as_secs() as usize
    }

    /// Requests in flight now, over all workers.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// Requests handed to the workers and not finished (waiting for a connection or in flight).
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum()
    }

    /// All recorders merged into one.
    pub(crate) fn merged(&self) -> Recorder {
        let mut all = Recorder::new();
        for r in &self.recorders {
            all.merge(&r.lock().expect("recorder lock"));
        }
        all
    }
}

/// How the connections of a worker are fed.
pub(crate) enum Feed {
    /// The run's arrivals, of which this worker takes every `step`-th from the `first`.
    Open {
        arrivals: Arrivals,
        first: usize,
        step: usize,
        /// Open every connection before the schedule starts (`--connections` given: the fixed
        /// set the user chose), instead of a few and the rest on first use.
        preopen: bool,
    },
    /// Back to back until this instant.
    Closed(Instant),
}

/// The arrivals waiting in one worker and its idle connections.
struct Local {
    queue: RefCell<VecDeque<Instant>>,
    /// Idle connection loops with an open connection (or, without keep-alive, any), most
    /// recently idle last.
    idle: RefCell<Vec<Rc<Notify>>>,
    /// Idle loops whose (keep-alive) connection is not open: woken only when no open one is
    /// idle, and only so many at once (see [`Local::may_open`]).
    cold: RefCell<Vec<Rc<Notify>>>,
    /// Cold loops woken and still deciding to open or opening their connection.
    opening: Cell<usize>,
    /// Of those, the ones opening their connection.
    connecting: Cell<usize>,
    closed: Cell<bool>,
}

/// Connections a worker opens at once while the run is under way (see [`Local::may_open`]).
const OPENING_AT_ONCE: usize = 1;

impl Local {
    fn new() -> Local {
        Local {
            queue: RefCell::new(VecDeque::new()),
            idle: RefCell::new(Vec::new()),
            cold: RefCell::new(Vec::new()),
            opening: Cell::new(0),
            connecting: Cell::new(0),
            closed: Cell::new(false),
        }
    }

    /// Whether another connection may start opening: one at a time per worker. Every arrival
    /// that finds the open connections busy is a reason to open one, and a target that stalls
    /// for a millisecond gives dozens; opened at once they stay open, and a target that answers
    /// many connections worse than few (`ebbtide backend`'s closed-loop p99 is 0.3 ms on 16
    /// connections, 68 ms on 512) then stalls more, and more open. With openings at once bounded
    /// by the number already open instead (doubling while arrivals waited), an open loop against
    /// nginx (one worker, `return 200`) at 70,000 req/s was 0.94-2.11% late with all 512
    /// connections open; one at a time, 0.00-0.03% late with 182-230 open (2026-12-01, the
    /// layout of bench/loadgen-engine.sh, which has the figures against `ebbtide backend`).
    /// On loopback an opening takes tens of microseconds, so a run that needs hundreds still
    /// has them within tens of milliseconds; a distant or TLS target that needs many at once is
    /// given them with `--connections`, all opened before the schedule starts.
    fn may_open(&self) -> bool {
        self.opening.get() < OPENING_AT_ONCE
    }

    /// After a connection opened (so that another may open): wakes cold loops for the queued
    /// arrivals that no opening loop will take (the one that opened takes the first), as many
    /// as [`Local::may_open`] allows.
    fn ramp(&self) {
        while self.queue.borrow().len() > self.opening.get() + 1 && self.may_open() {
            let cold = self.cold.borrow_mut().pop();
            let Some(n) = cold else { break };
            self.opening.set(self.opening.get() + 1);
            n.notify_one();
        }
    }

    /// Whether a woken cold loop should open its connection: asked after the worker has read
    /// the IO that became ready meanwhile (`yield_now` resumes only after tokio's driver was
    /// polled), an arrival still waits that no connection being opened will take. Without this
    /// check arrivals that queued only because the thread was busy (opening connections, or
    /// descheduled by the hypervisor) each opened one more: at 20,000 req/s against `ebbtide
    /// backend --service-time const:0ms` (0.25 ms exchanges) all 512 connections were open
    /// 150 ms into the run, where about 10 are busy at a time, and each opening (a connect and
    /// an accept, tens of microseconds on each side) made the worker later still. With it, the
    /// same runs ended with 96-279 open.
    async fn still_needed(&self) -> bool {
        tokio::task::yield_now().await;
        self.queue.borrow().len() > self.connecting.get()
    }

    /// Wakes an idle loop for a queued arrival: one with an open connection, else a cold one
    /// if [`Local::may_open`].
    fn wake_one(&self) {
        let idle = self.idle.borrow_mut().pop();
        if let Some(n) = idle {
            n.notify_one();
            return;
        }
        if self.may_open() {
            let cold = self.cold.borrow_mut().pop();
            if let Some(n) = cold {
                self.opening.set(self.opening.get() + 1);
                n.notify_one();
            }
        }
    }
}

/// The ways to the target of one worker's loops: one HTTP/1.1 connection per loop, or `streams`
/// loops per shared HTTP/2 connection.
fn links(shared: &Shared, connections: usize) -> Vec<Conn> {
    match shared.h2_streams {
        None => (0..connections)
            .map(|_| Conn::h1(shared.dial.clone(), shared.keepalive))
            .collect(),
        Some(streams) => (0..connections)
            .flat_map(|_| {
                let h2 = Rc::new(H2Conn::new(shared.dial.clone()));
                (0..streams.max(1)).map(move |_| Conn::h2(h2.clone()))
            })
            .collect(),
    }
}

/// Runs worker `index` with `connections` connections (HTTP/1.1: one loop each; HTTP/2: one loop
/// per stream) on the calling thread until its feed ends and every request it took is finished.
pub(crate) fn worker(shared: Arc<Shared>, index: usize, connections: usize, feed: Feed) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ebbtide load: cannot start worker {index}: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let conns = links(&shared, connections);
        let mut loops = Vec::with_capacity(conns.len());
        let mut dispatcher = None;
        match feed {
            Feed::Closed(until) => {
                for conn in conns {
                    loops.push(tokio::task::spawn_local(closed_loop(
                        shared.clone(),
                        index,
                        conn,
                        until,
                    )));
                }
            }
            Feed::Open {
                arrivals,
                first,
                step,
                preopen,
            } => {
                let state = Rc::new(Local::new());
                // The last loops go idle last, so they are the first taken: their connections
                // are opened now, before the schedule starts.
                let warm_from = match (shared.keepalive, preopen) {
                    (false, _) => conns.len(),
                    (true, true) => 0,
                    (true, false) => conns.len().saturating_sub(WARM_CONNECTIONS),
                };
                for (i, conn) in conns.into_iter().enumerate() {
                    loops.push(tokio::task::spawn_local(open_loop(
                        shared.clone(),
                        index,
                        conn,
                        state.clone(),
                        i >= warm_from,
                    )));
                }
                let start = shared.start;
                let mine = arrivals
                    .skip(first)
                    .step_by(step.max(1))
                    .map(move |offset| start + Duration::from_secs_f64(offset));
                dispatcher = Some(tokio::task::spawn_local(dispatch(
                    shared.clone(),
                    index,
                    mine,
                    state,
                )));
            }
        }
        // Spawned last, so that the loops and the dispatcher run first at the start.
        let armed = tokio::task::spawn_local(keep_a_timer_armed());
        // With --busy-poll an open loop's dispatcher polls while it runs; the poller keeps the
        // rest from sleeping: a closed loop's whole run, an open loop's last answers.
        if let Some(d) = dispatcher {
            let _ = d.await;
        }
        let poll = shared
            .busy_poll
            .then(|| tokio::task::spawn_local(busy_poll()));
        for l in loops {
            let _ = l.await;
        }
        armed.abort();
        if let Some(p) = poll {
            p.abort();
        }
    });
}

/// How often [`keep_a_timer_armed`] wakes: far shorter than any sensible `--timeout`.
const TIMER_HEARTBEAT: Duration = Duration::from_millis(50);

/// Keeps one tokio timer pending for as long as the worker runs. Every exchange registers its
/// timeout with tokio's timer; when the driver parked with no timer pending (no promised wake,
/// as between requests of a light or an open-loop run), registering one unparks the driver,
/// which is a write to its eventfd and one more `epoll_wait` return (tokio 1.54,
/// `runtime/time/mod.rs`, `reregister`: unpark unless the new deadline is after the promised
/// wake). `perf record -e raw_syscalls:sys_enter` counted 0.89 such writes per request at
/// 30,000 req/s on 8 connections. With a timer always due within 50 ms, a request's later
/// deadline needs no unpark: 20 wakes a second instead of one per request.
async fn keep_a_timer_armed() {
    loop {
        tokio::time::sleep(TIMER_HEARTBEAT).await;
    }
}

/// `--busy-poll`: keeps the worker's thread from sleeping. Each turn yields, and tokio polls its
/// IO driver without waiting before it runs this task again (a deferred yield, tokio 1.54
/// `task::yield_now`), so an answer or a due arrival is taken as soon as the kernel has it,
/// never after the wake of an idle core, which on this project's VM was most of a trivial
/// exchange (figures in the README, from bench/loadgen-engine.sh). The price is the whole core.
/// An open loop's dispatcher polls its clock the same way while it runs; this task keeps a
/// closed loop, and an open loop's last answers after its last arrival, from sleeping.
async fn busy_poll() {
    loop {
        tokio::task::yield_now().await;
    }
}

/// The open loop's dispatcher of one worker: sleeps to the next of its arrivals, then queues all
/// that are due (a burst, or a backlog after the thread was busy, in one wake) and those due
/// within `--dispatch-slack` of now, waking one idle connection per arrival. A wake (arming the
/// timer, the thread sleeping and being woken, reading the timer) costs about as much as the
/// request itself, so at tens of thousands of arrivals a second, when gaps are tens of
/// microseconds, sharing wakes is what keeps the worker on schedule (counted with `perf stat`:
/// see bench/loadgen-engine.sh). Each arrival keeps its scheduled time, which its latency is
/// measured from, so waking late delays requests but does not hide the delay.
async fn dispatch(
    shared: Arc<Shared>,
    index: usize,
    mut arrivals: impl Iterator<Item = Instant>,
    state: Rc<Local>,
) {
    // The timer's deadline as the kernel's: no timer slack added to this thread's sleeps.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_TIMERSLACK) only changes the calling thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
    let timer = TaskTimer::new();
    let mut next = arrivals.next();
    while let Some(due) = next {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        let horizon = now + shared.dispatch_slack;
        if due > horizon {
            if shared.busy_poll {
                // Checks the clock between polls instead of arming the timer, whose interrupt
                // and wake are what busy polling is there to avoid.
                tokio::task::yield_now().await;
                continue;
            }
            // Long gaps (traces) in slices, so that ctrl-c is noticed.
            timer
                .sleep_until(due.min(now + Duration::from_millis(100)))
                .await;
            continue;
        }
        while let Some(at) = next.filter(|at| *at <= horizon) {
            state.queue.borrow_mut().push_back(at);
            shared.outstanding[index].fetch_add(1, Ordering::Relaxed);
            shared.dispatched.fetch_add(1, Ordering::Relaxed);
            state.wake_one();
            next = arrivals.next();
        }
    }
    state.closed.set(true);
    for n in state.idle.borrow_mut().drain(..) {
        n.notify_one();
    }
    for n in state.cold.borrow_mut().drain(..) {
        n.notify_one();
    }
}

/// Connections of each open-loop worker opened before the schedule starts (with keep-alive).
/// Otherwise the first arrivals of a fast run open connections one after another while more
/// arrive: over TLS, where a handshake costs a millisecond of CPU, the run's first
/// tens of milliseconds were all handshakes and 3% of a 5-second run at 27,000 req/s was late
/// (bench/loadgen-engine.sh). Few enough that a light run still opens few.
const WARM_CONNECTIONS: usize = 8;

/// One connection of the open loop: takes the oldest waiting arrival whenever it is idle;
/// `warm`: opens its connection first.
async fn open_loop(
    shared: Arc<Shared>,
    index: usize,
    mut conn: Conn,
    state: Rc<Local>,
    warm: bool,
) {
    if warm {
        // A failure here is met again, and counted, by the first request.
        let _ = conn.open().await;
    }
    let wake = Rc::new(Notify::new());
    loop {
        let next = state.queue.borrow_mut().pop_front();
        match next {
            Some(at) => {
                exchange(&shared, index, &mut conn, at, true).await;
                shared.outstanding[index].fetch_sub(1, Ordering::Relaxed);
            }
            None if state.closed.get() => return,
            None if !shared.keepalive || conn.is_open() => {
                state.idle.borrow_mut().push(wake.clone());
                wake.notified().await;
            }
            None => {
                state.cold.borrow_mut().push(wake.clone());
                wake.notified().await;
                if state.closed.get() && state.queue.borrow().is_empty() {
                    return;
                }
                // Woken to open (counted in `opening` by the waker; after the end, anyway); but
                // first the worker catches up with its IO, so that an arrival that only queued
                // while the thread was busy is taken by a connection that is already open.
                if !state.closed.get() && !state.still_needed().await {
                    state.opening.set(state.opening.get().saturating_sub(1));
                    continue;
                }
                state.connecting.set(state.connecting.get() + 1);
                // As above: a failure is met again by the request this loop takes next.
                let _ = conn.open().await;
                state.connecting.set(state.connecting.get() - 1);
                state.opening.set(state.opening.get().saturating_sub(1));
                state.ramp();
            }
        }
    }
}

/// One connection of the closed loop: the next request as soon as the last answer is read.
async fn closed_loop(shared: Arc<Shared>, index: usize, mut conn: Conn, until: Instant) {
    // Connect before the start, as wrk does, so that the run measures requests, not handshakes.
    let _ = conn.open().await;
    tokio::time::sleep_until(shared.start.into()).await;
    loop {
        let at = Instant::now();
        if at >= until || shared.stop.load(Ordering::Relaxed) {
            return;
        }
        exchange(&shared, index, &mut conn, at, false).await;
    }
}

/// One request due at `at` on `conn`, recorded with its latency from `at`, or from its actual
/// start if that was earlier (sent within `--dispatch-slack` ahead of its time): a late start
/// counts its lateness, an early one never shortens the exchange.
async fn exchange(shared: &Shared, index: usize, conn: &mut Conn, at: Instant, open: bool) {
    let deadline = at + shared.timeout;
    let began = Instant::now();
    let sent = began < deadline;
    let late = open && (!sent || began.saturating_duration_since(at) > shared.late_after);
    let outcome = if sent {
        let req = shared.requests.next();
        shared.in_flight[index].fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout_at(deadline.into(), conn.send(&req)).await;
        shared.in_flight[index].fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok(Ok(answer)) => Outcome::Answered {
                status: answer.status,
                latency_us: Instant::now()
                    .saturating_duration_since(at.min(began))
                    .as_micros() as u64,
                bytes: answer.bytes,
            },
            Ok(Err(kind)) => Outcome::Failed(kind),
            Err(_) => {
                conn.reset();
                Outcome::Failed(ErrorKind::Timeout)
            }
        }
    } else {
        Outcome::Failed(ErrorKind::Timeout)
    };
    let now = Instant::now();
    let mut rec = shared.recorders[index].lock().expect("recorder lock");
    rec.on_scheduled(shared.second_of(at));
    rec.sent += u64::from(sent);
    rec.late += u64::from(late);
    rec.on_outcome(shared.second_of(at), shared.second_of(now), outcome);
    let done_s = now.saturating_duration_since(shared.start).as_secs_f64();
    rec.last_done_s = rec.last_done_s.max(done_s);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a worker-like thread: a current-thread runtime and a local set.
    fn on_a_worker(f: impl std::future::Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tokio::task::LocalSet::new().block_on(&rt, f);
    }

    /// However many arrivals wait, a worker opens one connection at a time, and the next only
    /// once that one opened (see `Local::may_open`).
    #[test]
    fn connections_open_one_at_a_time() {
        let state = Local::new();
        let cold: Vec<Rc<Notify>> = (0..3).map(|_| Rc::new(Notify::new())).collect();
        state.cold.borrow_mut().extend(cold.iter().cloned());
        for _ in 0..3 {
            state.queue.borrow_mut().push_back(Instant::now());
            state.wake_one();
        }
        assert_eq!(state.opening.get(), 1, "three waiting, one opening");
        assert_eq!(state.cold.borrow().len(), 2);
        // That one opened and takes an arrival: the next may open for the two still waiting.
        state.opening.set(0);
        state.queue.borrow_mut().pop_front();
        state.ramp();
        assert_eq!(state.opening.get(), 1, "again one at a time");
        assert_eq!(state.cold.borrow().len(), 1);
    }

    /// A cold loop woken for a queued arrival opens its connection only if the arrival is still
    /// waiting once the loops that were ready meanwhile have run: an open connection whose answer
    /// came in takes it first. Checked at once, the first case would open a connection for an
    /// arrival that did not need one.
    #[test]
    fn a_connection_opens_only_for_an_arrival_still_waiting() {
        on_a_worker(async {
            let state = Rc::new(Local::new());
            state.queue.borrow_mut().push_back(Instant::now());
            let ready = state.clone();
            let open_loop_with_its_answer_in = tokio::task::spawn_local(async move {
                ready.queue.borrow_mut().pop_front();
            });
            assert!(!state.still_needed().await, "taken by the open connection");
            open_loop_with_its_answer_in.await.expect("loop");

            state.queue.borrow_mut().push_back(Instant::now());
            assert!(state.still_needed().await, "nobody else takes it");
            state.connecting.set(1);
            assert!(
                !state.still_needed().await,
                "a connection being opened takes it"
            );
            state.queue.borrow_mut().push_back(Instant::now());
            assert!(state.still_needed().await, "two waiting, one opening");
        });
    }
}
