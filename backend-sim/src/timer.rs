//! Sleeping to a deadline with tens of microseconds of error instead of tokio's millisecond ticks.
//!
//! tokio's timer wheel rounds every sleep up to the next millisecond, which would add about half a
//! millisecond to every simulated service time and every scheduled send: at 80% load an M/M/1 queue
//! fed 10.5 ms services instead of 10 ms ones shows a third more latency than the textbook. So the
//! backend's service sleeps and the load generator's send schedule use a dedicated thread that
//! sleeps with the kernel's high-resolution timers (timer slack set to 1 ns), wakes early by its own
//! measured oversleep and yields the last few microseconds away.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How far before a deadline to stop sleeping and start yielding: a little above the oversleep.
const YIELD_MARGIN: Duration = Duration::from_micros(20);

/// Learns how late the kernel wakes this thread so that sleeps can end that much early.
#[derive(Debug)]
pub struct Oversleep {
    ewma_ns: f64,
}

impl Default for Oversleep {
    fn default() -> Self {
        Self::new()
    }
}

impl Oversleep {
    /// A fresh estimate, starting from a typical virtual machine's 60 us; also asks the kernel to
    /// stop padding this thread's sleeps (timer slack 1 ns; the default is 50 us).
    pub fn new() -> Self {
        // SAFETY: prctl(PR_SET_TIMERSLACK) only changes the calling thread's timer slack.
        #[cfg(target_os = "linux")]
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
        }
        Oversleep { ewma_ns: 60_000.0 }
    }

    /// How long to actually ask the kernel for, to wake close to `deadline`; None when it is time
    /// to yield instead.
    pub fn sleep_for(&self, deadline: Instant, now: Instant) -> Option<Duration> {
        let early = Duration::from_nanos(self.ewma_ns as u64) + YIELD_MARGIN;
        let left = deadline.checked_duration_since(now)?;
        left.checked_sub(early).filter(|d| !d.is_zero())
    }

    /// Records that a sleep asked for `asked` starting at `from` woke at `woke`.
    pub fn observe(&mut self, from: Instant, asked: Duration, woke: Instant) {
        let over = woke.saturating_duration_since(from + asked).as_nanos() as f64;
        self.ewma_ns = (0.9 * self.ewma_ns + 0.1 * over).min(1_000_000.0);
    }

    /// Blocks the calling thread until `deadline`, waking within a few microseconds of it.
    pub fn sleep_until(&mut self, deadline: Instant) {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            match self.sleep_for(deadline, now) {
                Some(d) => {
                    std::thread::sleep(d);
                    self.observe(now, d, Instant::now());
                }
                None => std::thread::yield_now(),
            }
        }
    }
}

struct Entry {
    at: Instant,
    seq: u64,
    wake: tokio::sync::oneshot::Sender<()>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// A timer thread that async tasks hand deadlines to; see the module docs for why.
#[derive(Debug, Clone)]
pub struct PreciseTimer {
    tx: mpsc::Sender<(Instant, tokio::sync::oneshot::Sender<()>)>,
}

impl PreciseTimer {
    /// Starts the timer thread; it ends when every handle is dropped and no sleep is pending.
    pub fn start() -> PreciseTimer {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("precise-timer".into())
            .spawn(move || timer_thread(rx))
            .expect("cannot start the timer thread");
        PreciseTimer { tx }
    }

    /// Completes at `deadline` (within tens of microseconds), or at once if it has passed.
    pub async fn sleep_until(&self, deadline: Instant) {
        if deadline <= Instant::now() {
            return;
        }
        let (wake, woken) = tokio::sync::oneshot::channel();
        if self.tx.send((deadline, wake)).is_err() {
            // The thread is gone (only at exit): fall back to tokio's coarser timer.
            tokio::time::sleep_until(deadline.into()).await;
            return;
        }
        let _ = woken.await;
    }
}

fn timer_thread(rx: mpsc::Receiver<(Instant, tokio::sync::oneshot::Sender<()>)>) {
    let mut oversleep = Oversleep::new();
    let mut heap: BinaryHeap<Reverse<Entry>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |heap: &mut BinaryHeap<Reverse<Entry>>, (at, wake)| {
        seq += 1;
        heap.push(Reverse(Entry { at, seq, wake }));
    };
    loop {
        while let Ok(item) = rx.try_recv() {
            push(&mut heap, item);
        }
        let now = Instant::now();
        while heap.peek().is_some_and(|e| e.0.at <= now) {
            let Reverse(entry) = heap.pop().expect("peeked");
            let _ = entry.wake.send(());
        }
        let Some(next) = heap.peek().map(|e| e.0.at) else {
            match rx.recv() {
                Ok(item) => push(&mut heap, item),
                Err(_) => return,
            }
            continue;
        };
        match oversleep.sleep_for(next, now) {
            Some(d) => match rx.recv_timeout(d) {
                Ok(item) => push(&mut heap, item),
                Err(mpsc::RecvTimeoutError::Timeout) => oversleep.observe(now, d, Instant::now()),
                Err(mpsc::RecvTimeoutError::Disconnected) => oversleep.sleep_until(next),
            },
            None => std::thread::yield_now(),
        }
    }
}

/// A timer for one task, woken through the task's own runtime: on Linux a timerfd on the
/// monotonic clock (the kernel's high-resolution timers, microseconds late at most, no thread
/// between it and the task); elsewhere, or if the kernel refuses one, tokio's own millisecond
/// timer. One armed deadline at a time; the load generator's dispatcher sleeps on one to each
/// next arrival.
#[derive(Debug)]
pub struct TaskTimer {
    #[cfg(target_os = "linux")]
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
}

impl TaskTimer {
    /// A timer of the current runtime (call from within one).
    pub fn new() -> TaskTimer {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::FromRawFd;
            // SAFETY: timerfd_create returns a new descriptor that only this value owns, or -1.
            let fd = unsafe {
                libc::timerfd_create(
                    libc::CLOCK_MONOTONIC,
                    libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
                )
            };
            let fd = (fd >= 0)
                .then(|| {
                    // SAFETY: see above; fd is valid and owned by nobody else.
                    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
                    // SAFETY: an OwnedFd stays open, and is the same descriptor, for as long as
                    // the AsyncFd that owns it.
                    unsafe {
                        tokio::io::unix::AsyncFd::register_with_interest(
                            owned,
                            tokio::io::Interest::READABLE,
                        )
                    }
                    .ok()
                })
                .flatten();
            TaskTimer { fd }
        }
        #[cfg(not(target_os = "linux"))]
        TaskTimer {}
    }

    /// Completes at `deadline` or just after (at once if it has passed, after yielding once to
    /// the runtime so that a caller looping on past deadlines still lets other tasks run).
    pub async fn sleep_until(&self, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tokio::task::yield_now().await;
            return;
        }
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            use std::os::fd::AsRawFd;
            let spec = libc::itimerspec {
                it_interval: libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: libc::timespec {
                    tv_sec: left.as_secs() as libc::time_t,
                    tv_nsec: left.subsec_nanos() as libc::c_long,
                },
            };
            // SAFETY: a valid timerfd and a fully initialized itimerspec; no old value wanted.
            let armed =
                unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
            if armed == 0 {
                loop {
                    let Ok(mut ready) = fd.readable().await else {
                        break;
                    };
                    let mut expirations = [0u8; 8];
                    // SAFETY: reads at most 8 bytes into an 8-byte buffer from a valid fd.
                    let read = ready.try_io(|inner| {
                        let n = unsafe {
                            libc::read(inner.as_raw_fd(), expirations.as_mut_ptr().cast(), 8)
                        };
                        if n < 0 {
                            Err(std::io::Error::last_os_error())
                        } else {
                            Ok(())
                        }
                    });
                    match read {
                        Ok(Ok(())) => {
                            // The read drained the timer and it stays disarmed until the next
                            // settime, so its readiness can go without the read that would
                            // return EAGAIN to clear it: one syscall fewer per wake.
                            ready.clear_ready();
                            return;
                        }
                        // Not expired yet (readiness was stale): wait again.
                        Err(_) => continue,
                        Ok(Err(_)) => break,
                    }
                }
            }
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

impl Default for TaskTimer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_at_the_deadline_not_before() {
        let timer = PreciseTimer::start();
        let start = Instant::now();
        for i in 1..=20u64 {
            let at = start + Duration::from_micros(1_300 * i);
            timer.sleep_until(at).await;
            assert!(Instant::now() >= at);
        }
    }

    #[tokio::test]
    async fn task_timer_wakes_at_the_deadline_not_before() {
        let timer = TaskTimer::new();
        #[cfg(target_os = "linux")]
        assert!(timer.fd.is_some(), "a timerfd, not the fallback");
        let start = Instant::now();
        for i in 1..=20u64 {
            let at = start + Duration::from_micros(700 * i);
            timer.sleep_until(at).await;
            assert!(Instant::now() >= at);
        }
        // A deadline that has passed completes at once.
        timer.sleep_until(start).await;
    }

    #[test]
    fn blocking_sleep_reaches_the_deadline() {
        let mut o = Oversleep::new();
        let at = Instant::now() + Duration::from_millis(3);
        o.sleep_until(at);
        assert!(Instant::now() >= at);
    }
}
