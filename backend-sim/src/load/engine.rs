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
    /// How connections reach the target (TCP, or TCP and TLS).
    pub(crate) dial: Dial,
    pub(crate) keepalive: bool,
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
        dial: Dial,
        keepalive: bool,
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
            dial,
            keepalive,
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
    },
    /// Back to back until this instant.
    Closed(Instant),
}

/// The arrivals waiting in one worker and its idle connections.
struct Local {
    queue: RefCell<VecDeque<Instant>>,
    /// Idle connection loops, most recently idle last.
    idle: RefCell<Vec<Rc<Notify>>>,
    closed: Cell<bool>,
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
        let mut loops = Vec::with_capacity(conns.len() + 1);
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
            } => {
                let state = Rc::new(Local {
                    queue: RefCell::new(VecDeque::new()),
                    idle: RefCell::new(Vec::new()),
                    closed: Cell::new(false),
                });
                for conn in conns {
                    loops.push(tokio::task::spawn_local(open_loop(
                        shared.clone(),
                        index,
                        conn,
                        state.clone(),
                    )));
                }
                let start = shared.start;
                let mine = arrivals
                    .skip(first)
                    .step_by(step.max(1))
                    .map(move |offset| start + Duration::from_secs_f64(offset));
                loops.push(tokio::task::spawn_local(dispatch(
                    shared.clone(),
                    index,
                    mine,
                    state,
                )));
            }
        }
        for l in loops {
            let _ = l.await;
        }
    });
}

/// The open loop's dispatcher of one worker: sleeps to the next of its arrivals, then queues all
/// that are due (a burst, or a backlog after the thread was busy, in one wake), waking one idle
/// connection per arrival. Each keeps its scheduled time, which its latency is measured from, so
/// waking late delays requests but does not hide the delay.
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
        if due > now {
            // Long gaps (traces) in slices, so that ctrl-c is noticed.
            timer
                .sleep_until(due.min(now + Duration::from_millis(100)))
                .await;
            continue;
        }
        while let Some(at) = next.filter(|at| *at <= now) {
            state.queue.borrow_mut().push_back(at);
            shared.outstanding[index].fetch_add(1, Ordering::Relaxed);
            shared.dispatched.fetch_add(1, Ordering::Relaxed);
            let idle = state.idle.borrow_mut().pop();
            if let Some(n) = idle {
                n.notify_one();
            }
            next = arrivals.next();
        }
    }
    state.closed.set(true);
    for n in state.idle.borrow_mut().drain(..) {
        n.notify_one();
    }
}

/// One connection of the open loop: takes the oldest waiting arrival whenever it is idle.
async fn open_loop(shared: Arc<Shared>, index: usize, mut conn: Conn, state: Rc<Local>) {
    let wake = Rc::new(Notify::new());
    loop {
        let next = state.queue.borrow_mut().pop_front();
        match next {
            Some(at) => {
                exchange(&shared, index, &mut conn, at, true).await;
                shared.outstanding[index].fetch_sub(1, Ordering::Relaxed);
            }
            None if state.closed.get() => return,
            None => {
                state.idle.borrow_mut().push(wake.clone());
                wake.notified().await;
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

/// One request due at `at` on `conn`, recorded with its latency from `at`.
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
                latency_us: Instant::now().saturating_duration_since(at).as_micros() as u64,
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
