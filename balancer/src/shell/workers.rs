//! `[runtime] accept = "per_worker"`: thread per core, as HAProxy's threads and NGINX's workers
//! run. Each worker thread has its own single-thread tokio runtime and its own listener on the
//! client address (`SO_REUSEPORT`: the kernel spreads new connections over the listeners by a
//! hash of the connection's addresses), and serves every connection it accepted to the end, so
//! no connection's tasks are stolen by, or woken across, another thread. The proxy's shared
//! state (registry, dispatcher, signals) is behind `Arc`s and atomics and is used from every
//! worker; the background work (health checks, housekeeping, the admin API, the autoscaler)
//! stays on the runtime that called [`crate::serve::Server::run`].

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch};

/// The kernel's accept queue per listener, as `tokio::net::TcpListener::bind` asks for.
const BACKLOG: u32 = 1024;

thread_local! {
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The worker thread running this code with `accept = "per_worker"`; `None` on any other thread
/// (the shared runtime's workers included). The upstream pool keeps each worker's connections
/// for that worker: a socket is registered with the IO driver of the runtime that opened it, and
/// another worker using it would be woken through that runtime's thread.
pub(crate) fn current() -> Option<usize> {
    WORKER.with(|w| w.get())
}

/// Makes this thread worker `worker`, as a worker thread is, for tests of what depends on it.
#[cfg(test)]
pub(crate) fn set_current(worker: Option<usize>) {
    WORKER.with(|w| w.set(worker));
}

/// `n` listeners on `address`, all with `SO_REUSEPORT` (port 0: one free port for all of them).
/// A plain bind is tried first and let go, so an address another process listens on is refused
/// with "address in use" even when that process set `SO_REUSEPORT` too (the same user's second
/// ebbtide would otherwise silently take a share of the connections). Needs a runtime (to
/// `listen`); the listeners are returned deregistered, for the workers' own runtimes.
pub(crate) async fn bind(address: &str, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let addr = tokio::net::lookup_host(address)
        .await?
        .next()
        .ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "resolves to no address")
        })?;
    let addr = std::net::TcpListener::bind(addr)?.local_addr()?;
    (0..n.max(1))
        .map(|_| {
            let socket = match addr {
                SocketAddr::V4(_) => TcpSocket::new_v4()?,
                SocketAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(addr)?;
            socket.listen(BACKLOG)?.into_std()
        })
        .collect()
}

/// The running worker threads.
pub(crate) struct Workers {
    threads: Vec<JoinHandle<()>>,
    /// Each closes when its worker's accept loop has returned.
    accepting: Vec<oneshot::Receiver<()>>,
    /// Set once the drain is over: the workers then drop their runtimes (and whatever is left
    /// on them) and end. Dropped unsent, it ends them too.
    release: watch::Sender<bool>,
}

/// Starts a worker thread per listener; worker `i` runs `serve(i)(its listener)` (an accept
/// loop that returns on stop) on its own runtime, then keeps the runtime, and so its
/// connections, running until [`Workers::finish`].
pub(crate) fn spawn<F, Fut>(
    listeners: Vec<std::net::TcpListener>,
    serve: impl Fn(usize) -> F,
) -> Result<Workers, String>
where
    F: FnOnce(TcpListener) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (release, _) = watch::channel(false);
    let mut workers = Workers {
        threads: Vec::new(),
        accepting: Vec::new(),
        release,
    };
    for (i, listener) in listeners.into_iter().enumerate() {
        let serve = serve(i);
        let (accepting, accept_done) = oneshot::channel::<()>();
        let mut release = workers.release.subscribe();
        let thread = std::thread::Builder::new()
            .name(format!("ebbtide-worker-{i}"))
            .spawn(move || {
                WORKER.with(|w| w.set(Some(i)));
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(worker = i, error = %e, "cannot start the worker's runtime");
                        return;
                    }
                };
                rt.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => serve(l).await,
                        Err(e) => tracing::error!(worker = i, error = %e, "cannot use the listener"),
                    }
                    drop(accepting);
                    let _ = release.wait_for(|done| *done).await;
                });
            })
            .map_err(|e| format!("cannot start worker thread {i}: {e}"))?;
        workers.threads.push(thread);
        workers.accepting.push(accept_done);
    }
    Ok(workers)
}

impl Workers {
    /// Resolves once every worker's accept loop has returned (after the stop signal).
    pub(crate) async fn stopped_accepting(&mut self) {
        for a in self.accepting.drain(..) {
            let _ = a.await;
        }
    }

    /// Lets the workers drop their runtimes, and waits for their threads to end.
    pub(crate) async fn finish(self) {
        let _ = self.release.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listeners_share_one_port_and_a_taken_address_is_refused() {
        let ls = bind("127.0.0.1:0", 3).await.unwrap();
        let addrs: Vec<_> = ls.iter().map(|l| l.local_addr().unwrap()).collect();
        assert_eq!(addrs.len(), 3);
        assert!(addrs.iter().all(|a| *a == addrs[0] && a.port() != 0));
        // Another group with SO_REUSEPORT on the same address: refused, not joined.
        let err = bind(&addrs[0].to_string(), 2).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }

    #[tokio::test]
    async fn each_worker_runs_on_its_own_thread_until_finished() {
        let ls = bind("127.0.0.1:0", 2).await.unwrap();
        let addr = ls[0].local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut workers = spawn(ls, |i| {
            let tx = tx.clone();
            move |l: TcpListener| async move {
                assert_eq!(l.local_addr().unwrap(), addr);
                tx.send((i, current(), std::thread::current().id()))
                    .unwrap();
            }
        })
        .unwrap();
        workers.stopped_accepting().await;
        drop(tx);
        let mut seen = Vec::new();
        while let Some(s) = rx.recv().await {
            seen.push(s);
        }
        seen.sort_by_key(|s| s.0);
        assert_eq!(
            seen.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
            [(0, Some(0)), (1, Some(1))]
        );
        assert_ne!(seen[0].2, seen[1].2);
        assert_ne!(seen[0].2, std::thread::current().id());
        assert_eq!(current(), None);
        workers.finish().await;
    }
}
