//! The live dashboard of every admin listener: the page (`GET /`, one HTML file compiled into
//! the binary: no build step, no CDN, works offline) and the Server-Sent Events it reads
//! (`GET /api/v1/stream`), each event one [`api::Snapshot`].
//!
//! A stream is its response body, and nothing else: no task is spawned per client. The body
//! wakes on its own timer, takes a snapshot when polled and yields it when something changed, or
//! a keep-alive comment when nothing did for a while; when the client goes away hyper drops the
//! body and the stream is gone with it. [`LiveStreams`] counts the bodies alive
//! (`ebbtide_admin_streams` in `/metrics`), which is how the tests see that none leaks.

use crate::admin::EventSource;
use crate::api;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The page, as served at `GET /`.
pub const PAGE: &str = include_str!("index.html");

/// How often a stream looks for a change (it pushes at most this often).
pub const CHECK_EVERY: Duration = Duration::from_millis(500);

/// How often the history takes a point, and how many it keeps (5 minutes).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
const HISTORY_POINTS: usize = 300;

/// A comment line (`: keep-alive`) after this long without an event, so that proxies and
/// browsers keep an idle stream open. `?keepalive_ms=N` on the stream URL overrides it (100 ms
/// to 60 s), for tests that cannot wait.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// What the stream shows of the fleet: the balancer's own registry and signals (`ebbtide
/// serve`), or the balancers an autoscaler manages (`ebbtide autoscale`).
pub trait FleetSource: Send + Sync {
    /// The signals now; `None` when unknown (no balancer answered).
    fn signals(&self) -> Option<api::Signals>;
    /// The backends now.
    fn backends(&self) -> Vec<api::BackendInfo>;
    /// Retries since start (0 where unknown).
    fn retries_total(&self) -> u64 {
        0
    }
}

/// The number of streams alive, shared by an admin listener and its streams' bodies.
#[derive(Debug, Default, Clone)]
pub struct LiveStreams(Arc<AtomicUsize>);

impl LiveStreams {
    /// Streams open now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn enter(&self) -> LiveGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        LiveGuard(self.0.clone())
    }
}

struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a listener's dashboard reads, set by the wiring and shared by its streams and the
/// sampler that keeps the last minutes (one point a second) for the charts of a page opened
/// later. The sampler is a task that holds this weakly: it ends within a second of the
/// listener's end.
#[derive(Default)]
pub struct Sources {
    fleet: Mutex<Option<Arc<dyn FleetSource>>>,
    events: Mutex<Option<Arc<dyn EventSource>>>,
    history: Mutex<VecDeque<api::HistoryPoint>>,
    sampling: AtomicBool,
    closed: AtomicBool,
}

impl Sources {
    /// Sets the fleet the stream shows, and starts keeping its history (when called within a
    /// tokio runtime).
    pub fn set_fleet(self: &Arc<Self>, source: Arc<dyn FleetSource>) {
        *lock(&self.fleet) = Some(source);
        if !self.sampling.swap(true, Ordering::Relaxed) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let weak = Arc::downgrade(self);
                rt.spawn(async move {
                    let mut tick = tokio::time::interval(SAMPLE_EVERY);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tick.tick().await;
                        match weak.upgrade() {
                            Some(sources) => sources.sample(),
                            None => return,
                        }
                    }
                });
            }
        }
    }

    /// Ends every stream (within [`CHECK_EVERY`]) and every one opened later: on shutdown, so
    /// that an open dashboard does not hold the graceful drain up.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// Sets the autoscaler whose decisions and summary the stream shows.
    pub fn set_events(&self, source: Arc<dyn EventSource>) {
        *lock(&self.events) = Some(source);
    }

    /// The autoscaler, when set.
    pub fn events(&self) -> Option<Arc<dyn EventSource>> {
        lock(&self.events).clone()
    }

    fn fleet(&self) -> Option<Arc<dyn FleetSource>> {
        lock(&self.fleet).clone()
    }

    /// The kept history, oldest first.
    pub fn history(&self) -> Vec<api::HistoryPoint> {
        lock(&self.history).iter().cloned().collect()
    }

    /// Keeps one point of history now.
    fn sample(&self) {
        let Some(signals) = self.fleet().and_then(|f| f.signals()) else {
            return;
        };
        let retries_total = self.fleet().map_or(0, |f| f.retries_total());
        let summary = self.events().and_then(|e| e.summary());
        let seen = signals.completions > 0;
        let point = api::HistoryPoint {
            unix_ms: unix_ms(),
            arrival_rate: signals.arrival_rate,
            completion_rate: signals.completion_rate,
            p50_ms: seen.then_some(signals.latency_ms.p50),
            p99_ms: seen.then_some(signals.latency_ms.p99),
            queue_depth: signals.queue_depth,
            shed_total: signals.shed_total,
            retries_total,
            backends: signals.backends,
            desired: summary.as_ref().map(|s| s.desired),
            slo_p99_ms: summary.and_then(|s| s.slo_p99_ms),
        };
        let mut h = lock(&self.history);
        h.push_back(point);
        while h.len() > HISTORY_POINTS {
            h.pop_front();
        }
    }

    /// The snapshot now, with the events whose `last_at` is after `cursor` (all of them for
    /// `None`); also the new cursor and the newest event's `at` (a new decision, as opposed
    /// to one more hold in a run of them).
    pub fn snapshot(&self, cursor: Option<u64>) -> (api::Snapshot, Option<u64>, u64) {
        let mut cursor = cursor;
        let mut newest = 0;
        let fleet = self.fleet();
        let backends = fleet.as_ref().map(|f| f.backends()).unwrap_or_default();
        let mut events = Vec::new();
        let mut autoscaler = None;
        if let Some(src) = self.events() {
            // Newest first from the source; oldest first on the wire.
            let (fresh, newest_at) = src.events_after(cursor);
            newest = newest_at;
            for e in fresh.into_iter().rev() {
                let last = e.get("last_at").and_then(|v| v.as_u64()).unwrap_or(0);
                cursor = Some(cursor.map_or(last, |c| c.max(last)));
                events.push(e);
            }
            autoscaler = src.summary().map(|mut s| {
                s.cost_per_hour = backends.iter().map(|b| b.cost_per_hour).sum();
                s
            });
        }
        let snapshot = api::Snapshot {
            unix_ms: unix_ms(),
            signals: fleet.as_ref().and_then(|f| f.signals()),
            retries_total: fleet.as_ref().map_or(0, |f| f.retries_total()),
            backends,
            events,
            autoscaler,
            history: Vec::new(),
        };
        (snapshot, cursor.or(Some(0)), newest)
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What changes when something happens (not the clock alone, nor one more hold in a run of
/// them): a push is due when this does.
fn fingerprint(s: &api::Snapshot, newest_event: u64) -> u64 {
    let mut h = DefaultHasher::new();
    if let Some(sig) = &s.signals {
        (
            sig.arrivals_total,
            sig.completions_total,
            sig.arrivals,
            sig.completions,
            sig.in_flight,
            sig.queue_depth,
            sig.shed_total,
            sig.shed,
        )
            .hash(&mut h);
        (
            sig.backends.active,
            sig.backends.starting,
            sig.backends.draining,
            sig.backends.ejected,
        )
            .hash(&mut h);
    }
    s.retries_total.hash(&mut h);
    for b in &s.backends {
        (b.id, &b.address, b.in_flight, b.requests, b.failures).hash(&mut h);
        (b.state as u8, b.capacity, b.learnt_limit).hash(&mut h);
    }
    newest_event.hash(&mut h);
    if let Some(a) = &s.autoscaler {
        (&a.decider, &a.mode, a.desired).hash(&mut h);
    }
    h.finish()
}

/// The body of one `GET /api/v1/stream` response.
pub struct SseBody {
    feed: Arc<Sources>,
    tick: tokio::time::Interval,
    keepalive: Duration,
    last_sent: Instant,
    last_print: Option<u64>,
    cursor: Option<u64>,
    _live: LiveGuard,
}

impl SseBody {
    /// A stream of `feed`'s snapshots, counted in `live` while it exists.
    pub fn new(feed: Arc<Sources>, keepalive: Duration, live: &LiveStreams) -> SseBody {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        SseBody {
            feed,
            tick,
            keepalive,
            last_sent: Instant::now(),
            last_print: None,
            cursor: None,
            _live: live.enter(),
        }
    }

    /// The next thing to send, if any is due now.
    fn due(&mut self) -> Option<Bytes> {
        let (mut snap, cursor, newest) = self.feed.snapshot(self.cursor);
        let print = fingerprint(&snap, newest);
        if self.last_print != Some(print) {
            if self.cursor.is_none() {
                snap.history = self.feed.history();
            }
            self.last_print = Some(print);
            self.cursor = cursor;
            self.last_sent = Instant::now();
            let json = serde_json::to_string(&snap).unwrap_or_default();
            return Some(Bytes::from(format!("event: snapshot\ndata: {json}\n\n")));
        }
        if self.last_sent.elapsed() >= self.keepalive {
            self.last_sent = Instant::now();
            return Some(Bytes::from_static(b": keep-alive\n\n"));
        }
        None
    }
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            if this.feed.closed.load(Ordering::Relaxed) {
                return Poll::Ready(None);
            }
            if this.tick.poll_tick(cx).is_pending() {
                return Poll::Pending;
            }
            if let Some(bytes) = this.due() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.feed.closed.load(Ordering::Relaxed)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The keep-alive interval a stream URL asks for (`keepalive_ms=N`), else [`KEEPALIVE`].
pub fn keepalive_from_query(query: Option<&str>) -> Duration {
    query_param(query, "keepalive_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms.clamp(100, 60_000)))
        .unwrap_or(KEEPALIVE)
}

/// The percent-decoded value of `name` in a query string.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let q = Some("a=1&token=s%3Dx%2By+z&keepalive_ms=250");
        assert_eq!(query_param(q, "token").as_deref(), Some("s=x+y z"));
        assert_eq!(query_param(q, "nope"), None);
        assert_eq!(keepalive_from_query(q), Duration::from_millis(250));
        assert_eq!(
            keepalive_from_query(Some("keepalive_ms=1")),
            Duration::from_millis(100)
        );
        assert_eq!(keepalive_from_query(None), KEEPALIVE);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%41"), "A");
    }

    struct Log(Vec<serde_json::Value>);

    impl EventSource for Log {
        fn events(&self) -> Vec<serde_json::Value> {
            self.0.clone()
        }
    }

    #[test]
    fn a_stream_sends_each_event_once_and_a_grown_run_of_holds_again() {
        let ev = |at: u64, last_at: u64| serde_json::json!({"at": at, "last_at": last_at});
        let sources = Sources::default();
        sources.set_events(Arc::new(Log(vec![ev(30, 50), ev(20, 20), ev(10, 10)])));
        let (first, cursor, newest) = sources.snapshot(None);
        assert_eq!(
            first.events,
            [ev(10, 10), ev(20, 20), ev(30, 50)],
            "oldest first"
        );
        assert_eq!((cursor, newest), (Some(50), 30));
        let (again, cursor, _) = sources.snapshot(cursor);
        assert!(again.events.is_empty());
        sources.set_events(Arc::new(Log(vec![ev(30, 60), ev(20, 20), ev(10, 10)])));
        let (grown, cursor, newest) = sources.snapshot(cursor);
        assert_eq!(grown.events, [ev(30, 60)]);
        assert_eq!((cursor, newest), (Some(60), 30));
    }

    #[test]
    fn the_page_is_small_and_self_contained() {
        assert!(PAGE.len() < 40 * 1024, "{} bytes", PAGE.len());
        for external in ["src=\"http", "href=\"http", "@import", "url(http"] {
            assert!(!PAGE.contains(external), "the page loads {external}");
        }
    }
}
