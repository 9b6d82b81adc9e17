//! A tunnel: the bytes of an upgraded connection (a WebSocket) copied both ways between the
//! client and a backend, through one bounded buffer per direction, until either side closes.
//!
//! A tunnel holds its backend slot from the handshake to its close, so it counts in the
//! backend's in-flight requests (what `least_outstanding`, `p2c` and the drain see), but it is
//! no latency sample: a socket open for an hour says nothing about how fast the backend answers.
//!
//! It ends when one side has closed (its close is passed on as a half close, and the other side
//! gets a few seconds to close too), on an I/O error, after `[upstream] tunnel_idle_timeout` with no byte either way (HAProxy's
//! `timeout tunnel`), or when its backend leaves (the drain deadline passed) or ebbtide shuts
//! down. In the last three cases ebbtide ends it the WebSocket way where it can: the frames of
//! each direction are followed ([`super::ws_frame`]), and when a direction is at a frame
//! boundary a close frame 1001 "going away" is put in (masked towards the backend, as a client
//! would send it); then the TCP connection is closed. A direction caught in the middle of a frame
//! (a large message on its way) gets only the TCP close: a close frame cut into a frame would be
//! read as payload.

use super::ws_frame::{close_frame, FrameTracker, GOING_AWAY};
use super::Proxy;
use crate::clock::Clock;
use crate::dispatch::Slot;
use ebbtide_config::time::Nanos;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// Bytes read at once from either side: the most a tunnel holds in each direction.
const BUFFER: usize = 16 * 1024;

/// How long a close frame may take to go out, and how long the client then has to close its
/// end, when ebbtide ends a tunnel.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// The open tunnels of one backend, and the signal that ends them when the backend leaves.
#[derive(Debug)]
pub struct Tunnels {
    open: AtomicU32,
    closing: watch::Sender<bool>,
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            open: AtomicU32::new(0),
            closing: watch::Sender::new(false),
        }
    }
}

impl Tunnels {
    /// Tunnels open to the backend now.
    pub fn open(&self) -> u32 {
        self.open.load(Ordering::Acquire)
    }

    /// Ends every tunnel to the backend, now and from now on (it is leaving).
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }

    /// Counts a tunnel opened.
    pub(crate) fn enter(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts a tunnel ended.
    pub(crate) fn leave(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a tunnel ended: the `reason` label of `ebbtide_tunnels_closed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Both sides closed.
    Closed,
    /// A read or write failed (a reset), or an upgrade never completed.
    Error,
    /// No byte either way for `tunnel_idle_timeout`.
    Idle,
    /// Its backend left (drained past the deadline) or ebbtide is shutting down.
    GoingAway,
}

impl End {
    /// Every reason, in the order of [`crate::proxy::ProxyCounters`]' array.
    pub(crate) const ALL: [End; 4] = [End::Closed, End::Error, End::Idle, End::GoingAway];

    /// The metric label.
    pub(crate) const fn label(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Error => "error",
            End::Idle => "idle",
            End::GoingAway => "going_away",
        }
    }
}

/// One open tunnel, counted on its backend and in `ebbtide_tunnels_open` while it lives.
pub(super) struct Tunnel {
    proxy: Arc<Proxy>,
    slot: Slot,
}

impl Tunnel {
    /// Counts a tunnel on the backend of `slot`, which it holds until it ends.
    pub(super) fn open(proxy: Arc<Proxy>, slot: Slot) -> Self {
        slot.backend().tunnels.enter();
        proxy.counters.tunnels_open.fetch_add(1, Ordering::Relaxed);
        Tunnel { proxy, slot }
    }

    /// Waits for both upgrades, then copies bytes both ways until the tunnel ends.
    pub(super) async fn run(
        self,
        client: hyper::upgrade::OnUpgrade,
        backend: hyper::upgrade::OnUpgrade,
        upgrade_within: Duration,
        idle: Duration,
    ) {
        let backend_addr = self.slot.backend().address.clone();
        let closing = self.slot.backend().tunnels.closing.subscribe();
        let end = match tokio::time::timeout(upgrade_within, async {
            tokio::try_join!(client, backend)
        })
        .await
        {
            Ok(Ok((client, backend))) => {
                pump(client, backend, closing, idle, self.proxy.clock).await
            }
            Ok(Err(e)) => {
                tracing::debug!(backend = %backend_addr, error = %e, "upgrade did not complete");
                End::Error
            }
            Err(_) => {
                tracing::debug!(backend = %backend_addr, "upgrade did not complete in time");
                End::Error
            }
        };
        tracing::debug!(backend = %backend_addr, reason = end.label(), "tunnel ended");
        self.proxy.counters.count_tunnel_end(end);
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.slot.backend().tunnels.leave();
        self.proxy
            .counters
            .tunnels_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// One direction of a tunnel: where its frames are, and whether a write is under way.
#[derive(Default)]
struct Direction {
    frames: FrameTracker,
    /// Bytes were read and not all written yet: the receiver may hold part of a frame.
    writing: bool,
    /// The sender closed; its close was passed on.
    ended: bool,
}

impl Direction {
    /// Whether a frame of ebbtide's own may go out now.
    fn may_insert(&self) -> bool {
        !self.ended && !self.writing && self.frames.at_boundary()
    }
}

/// Copies `r` to `w` until `r` ends (then half-closes `w`), noting each byte's passage in
/// `activity`.
async fn copy<R, W>(
    r: &mut R,
    w: &mut W,
    dir: &mut Direction,
    activity: &AtomicU64,
    clock: Clock,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            dir.ended = true;
            return w.shutdown().await;
        }
        activity.store(clock.now(), Ordering::Relaxed);
        dir.writing = true;
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        dir.writing = false;
        dir.frames.feed(&buf[..n]);
        activity.store(clock.now(), Ordering::Relaxed);
    }
}

/// Runs both directions until one ends, then gives the other [`CLOSE_GRACE`] to end too (its
/// peer got the half close): a WebSocket is over once either side has closed its connection
/// (RFC 6455 7.1.1), and a peer that keeps its end open must not hold the tunnel and its
/// backend slot (HAProxy's `timeout client-fin` and `server-fin`; NGINX ends an upgraded
/// connection at the first close too).
async fn both_ways(
    a: impl std::future::Future<Output = std::io::Result<()>>,
    b: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    tokio::pin!(a, b);
    let (first, a_ended) = tokio::select! {
        r = &mut a => (r, true),
        r = &mut b => (r, false),
    };
    first?;
    let rest = if a_ended {
        tokio::time::timeout(CLOSE_GRACE, b).await
    } else {
        tokio::time::timeout(CLOSE_GRACE, a).await
    };
    rest.unwrap_or(Ok(()))
}

/// Completes once `limit` has passed with no byte either way.
async fn idle_for(limit: Duration, activity: &AtomicU64, clock: Clock) {
    let limit = limit.as_nanos() as Nanos;
    loop {
        let due = activity.load(Ordering::Relaxed).saturating_add(limit);
        let now = clock.now();
        if now >= due {
            return;
        }
        tokio::time::sleep(Duration::from_nanos(due - now)).await;
    }
}

/// A mask key for the close frame ebbtide sends to a backend on the client's behalf. RFC 6455
/// 10.3 wants it unpredictable so that a script cannot choose the bytes on the wire; nothing
/// here is chosen by a script, so the clock's low bits do.
fn mask_key(clock: Clock) -> [u8; 4] {
    (clock.now() as u32).to_be_bytes()
}

/// The copying of a tunnel between the client's connection and the backend's.
async fn pump(
    client: Upgraded,
    backend: Upgraded,
    mut closing: watch::Receiver<bool>,
    idle: Duration,
    clock: Clock,
) -> End {
    let (mut cr, mut cw) = tokio::io::split(TokioIo::new(client));
    let (mut br, mut bw) = tokio::io::split(TokioIo::new(backend));
    let (mut up, mut down) = (Direction::default(), Direction::default());
    let activity = AtomicU64::new(clock.now());
    let end = {
        let to_backend = copy(&mut cr, &mut bw, &mut up, &activity, clock);
        let to_client = copy(&mut br, &mut cw, &mut down, &activity, clock);
        tokio::select! {
            r = both_ways(to_backend, to_client) => match r {
                Ok(()) => End::Closed,
                Err(_) => End::Error,
            },
            _ = async { let _ = closing.wait_for(|c| *c).await; } => End::GoingAway,
            () = idle_for(idle, &activity, clock) => End::Idle,
        }
    };
    if matches!(end, End::GoingAway | End::Idle) {
        let reason = match end {
            End::Idle => "idle timeout",
            _ => "backend going away",
        };
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            if up.may_insert() {
                let frame = close_frame(GOING_AWAY, reason, Some(mask_key(clock)));
                let _ = bw.write_all(&frame).await;
            }
            let _ = bw.shutdown().await;
            if down.may_insert() {
                let _ = cw.write_all(&close_frame(GOING_AWAY, reason, None)).await;
            }
            let _ = cw.shutdown().await;
        })
        .await;
        drop((br, bw));
        // The client answers with its own close frame and closes its end; closing ours with
        // its bytes unread would reset the connection, and a reset may drop our close frame
        // before the client reads it.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            let mut sink = [0u8; 1024];
            while matches!(cr.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_goes_in_only_at_a_boundary_of_an_open_direction_with_nothing_half_written() {
        let mut d = Direction::default();
        assert!(d.may_insert());
        d.frames.feed(&[0x82, 10, 1, 2]);
        assert!(!d.may_insert(), "inside a payload");
        d.frames.feed(&[0; 8]);
        assert!(d.may_insert());
        d.writing = true;
        assert!(!d.may_insert(), "a write under way");
        d.writing = false;
        d.ended = true;
        assert!(!d.may_insert(), "the sender closed");
    }

    #[test]
    fn end_labels_are_distinct() {
        let labels: std::collections::BTreeSet<_> = End::ALL.iter().map(|e| e.label()).collect();
        assert_eq!(labels.len(), End::ALL.len());
    }
}
