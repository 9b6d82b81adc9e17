//! At-most-once execution for requests that carry `Idempotency-Key`: the first request with a key
//! is executed; a duplicate that arrives while it runs waits for its response; one that arrives
//! within the TTL after it completed gets the stored response without reaching a backend.
//!
//! Sans-IO apart from the wake-up channel: time is passed in, the proxy does the sending.

use bytes::Bytes;
use ebbtide_config::time::Nanos;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A response kept for replay.
#[derive(Debug, Clone)]
pub struct StoredResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers (hop-by-hop ones already removed).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl StoredResponse {
    /// A response to keep, with copies of `headers` (names and values) that own their bytes.
    /// hyper parses a response's header values as slices of its connection's read buffer: a
    /// clone of them would keep that whole buffer (8 KiB or more) allocated for as long as the
    /// response is kept (the TTL, up to `max_entries` responses), for a few hundred bytes.
    pub fn detached(status: StatusCode, headers: &HeaderMap, body: Bytes) -> Self {
        let mut owned = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers {
            // Both were valid once parsed, so the copies are too (the clone is never used).
            let mut copy =
                HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
            copy.set_sensitive(value.is_sensitive());
            let name =
                HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or_else(|_| name.clone());
            owned.append(name, copy);
        }
        StoredResponse {
            status,
            headers: owned,
            body,
        }
    }
}

/// How the first execution ended, as duplicates see it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Executed; here is the response to replay.
    Stored(Arc<StoredResponse>),
    /// Executed, but the response was too large to keep.
    TooLarge,
    /// Never reached a backend (shed, or no connection): a duplicate may execute it.
    NotExecuted,
}

enum Entry {
    Running {
        fingerprint: u64,
        rx: watch::Receiver<Option<Outcome>>,
    },
    Done {
        fingerprint: u64,
        outcome: Outcome,
        expires: Nanos,
    },
}

/// What a request with a key should do.
pub enum Claim {
    /// Execute it, then call [`IdempotencyCache::finish`] with the outcome.
    Execute(watch::Sender<Option<Outcome>>),
    /// Wait on this channel for the running execution's outcome.
    Wait(watch::Receiver<Option<Outcome>>),
    /// Answer from this outcome.
    Done(Outcome),
    /// The key was used with a different method or path.
    Mismatch,
    /// Too many keys are running to remember another.
    Full,
}

/// The keys seen recently.
pub struct IdempotencyCache {
    entries: Mutex<HashMap<String, Entry>>,
    ttl: Nanos,
    max_entries: usize,
}

impl IdempotencyCache {
    /// A cache remembering completed keys for `ttl`, at most `max_entries` keys.
    pub fn new(ttl: Nanos, max_entries: usize) -> Self {
        IdempotencyCache {
            entries: Mutex::new(HashMap::new()),
            ttl,
            max_entries: max_entries.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides what a request with `key` (and `fingerprint` of its method and path) does.
    pub fn claim(&self, key: &str, fingerprint: u64, now: Nanos) -> Claim {
        let mut map = self.lock();
        match map.get(key) {
            // An execution whose task died without finishing (its sender is gone) is not
            // running any more: fall through and execute again.
            Some(Entry::Running { rx, .. }) if rx.has_changed().is_err() => {}
            Some(Entry::Running { fingerprint: f, rx }) => {
                return if *f == fingerprint {
                    Claim::Wait(rx.clone())
                } else {
                    Claim::Mismatch
                };
            }
            Some(Entry::Done {
                fingerprint: f,
                outcome,
                expires,
            }) if *expires > now => {
                return if *f == fingerprint {
                    Claim::Done(outcome.clone())
                } else {
                    Claim::Mismatch
                };
            }
            _ => {}
        }
        if map.len() >= self.max_entries && !map.contains_key(key) {
            Self::evict(&mut map, self.max_entries, now);
            if map.len() >= self.max_entries {
                return Claim::Full;
            }
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.to_string(), Entry::Running { fingerprint, rx });
        Claim::Execute(tx)
    }

    /// Records how the execution of `key` ended and wakes the duplicates waiting for it.
    pub fn finish(
        &self,
        key: &str,
        tx: watch::Sender<Option<Outcome>>,
        outcome: Outcome,
        now: Nanos,
    ) {
        let mut map = self.lock();
        match outcome {
            Outcome::NotExecuted => {
                map.remove(key);
            }
            _ => {
                let fingerprint = match map.get(key) {
                    Some(Entry::Running { fingerprint, .. }) => *fingerprint,
                    _ => 0,
                };
                map.insert(
                    key.to_string(),
                    Entry::Done {
                        fingerprint,
                        outcome: outcome.clone(),
                        expires: now + self.ttl,
                    },
                );
            }
        }
        drop(map);
        let _ = tx.send(Some(outcome));
    }

    /// Forgets completed keys whose TTL has run out.
    pub fn sweep(&self, now: Nanos) {
        let mut map = self.lock();
        map.retain(|_, e| !matches!(e, Entry::Done { expires, .. } if *expires <= now));
    }

    /// Makes room for one key when the map is full: forgets the expired keys, and if that is not
    /// enough, the completed key that expires first. This runs for every new key while the cache
    /// is full (10,000 keys by default): it copies no key but the one it removes.
    fn evict(map: &mut HashMap<String, Entry>, max_entries: usize, now: Nanos) {
        map.retain(|_, e| !matches!(e, Entry::Done { expires, .. } if *expires <= now));
        if map.len() < max_entries {
            return;
        }
        let oldest = map
            .iter()
            .filter_map(|(k, e)| match e {
                Entry::Done { expires, .. } => Some((*expires, k)),
                Entry::Running { .. } => None,
            })
            .min_by_key(|(expires, _)| *expires)
            .map(|(_, k)| k.clone());
        if let Some(k) = oldest {
            map.remove(&k);
        }
    }

    /// Keys remembered (running or done).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(body: &'static str) -> Outcome {
        Outcome::Stored(Arc::new(StoredResponse {
            status: StatusCode::CREATED,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        }))
    }

    #[test]
    fn first_executes_duplicates_wait_then_replay() {
        let c = IdempotencyCache::new(1_000, 10);
        let Claim::Execute(tx) = c.claim("k", 1, 0) else {
            panic!()
        };
        let Claim::Wait(mut rx) = c.claim("k", 1, 5) else {
            panic!("a running key makes duplicates wait")
        };
        c.finish("k", tx, stored("once"), 10);
        // The sender is gone now, but the outcome it sent stays readable.
        assert!(matches!(&*rx.borrow_and_update(), Some(Outcome::Stored(r)) if r.body == "once"));
        match c.claim("k", 1, 500) {
            Claim::Done(Outcome::Stored(r)) => assert_eq!(r.body, "once"),
            _ => panic!("a completed key replays"),
        }
        assert!(
            matches!(c.claim("k", 1, 1_011), Claim::Execute(_)),
            "after the TTL it runs again"
        );
    }

    #[test]
    fn a_key_reused_for_another_request_is_refused() {
        let c = IdempotencyCache::new(1_000, 10);
        let Claim::Execute(tx) = c.claim("k", 1, 0) else {
            panic!()
        };
        assert!(matches!(c.claim("k", 2, 0), Claim::Mismatch));
        c.finish("k", tx, stored("x"), 0);
        assert!(matches!(c.claim("k", 2, 1), Claim::Mismatch));
    }

    #[test]
    fn not_executed_lets_the_next_duplicate_execute() {
        let c = IdempotencyCache::new(1_000, 10);
        let Claim::Execute(tx) = c.claim("k", 1, 0) else {
            panic!()
        };
        c.finish("k", tx, Outcome::NotExecuted, 1);
        assert!(matches!(c.claim("k", 1, 2), Claim::Execute(_)));
    }

    #[test]
    fn an_execution_that_died_unfinished_is_run_again() {
        let c = IdempotencyCache::new(1_000, 10);
        let Claim::Execute(tx) = c.claim("k", 1, 0) else {
            panic!()
        };
        let Claim::Wait(rx) = c.claim("k", 1, 0) else {
            panic!()
        };
        drop(tx); // the executing task panicked
        assert!(rx.has_changed().is_err(), "waiters see the sender gone");
        assert!(
            matches!(c.claim("k", 1, 1), Claim::Execute(_)),
            "and the next claim executes"
        );
    }

    /// hyper parses header values as slices of the connection's read buffer; a kept response
    /// that cloned them would keep that whole buffer allocated for its TTL (10,000 keys of
    /// 8 KiB buffers: 80 MB in bench/soak.sh). Its headers are copies that share nothing.
    #[test]
    fn a_kept_response_holds_no_part_of_the_buffer_its_headers_came_from() {
        let buffer = Bytes::from(vec![b'a'; 8192]);
        let within = buffer.as_ptr_range();
        let in_buffer = |v: &HeaderValue| within.contains(&v.as_bytes().as_ptr());
        let mut headers = HeaderMap::new();
        for (name, at) in [("content-type", 0..16), ("x-order", 16..20)] {
            let value = HeaderValue::from_maybe_shared(buffer.slice(at)).unwrap();
            headers.append(name, value);
        }
        assert!(headers.values().all(in_buffer), "parsed as hyper does");
        let kept = StoredResponse::detached(StatusCode::CREATED, &headers, Bytes::new());
        assert_eq!(kept.headers, headers);
        assert!(!kept.headers.values().any(in_buffer));
    }

    #[test]
    fn expired_keys_make_room_before_a_live_one_is_evicted() {
        let c = IdempotencyCache::new(1_000, 2);
        for (key, at) in [("a", 0), ("b", 500)] {
            let Claim::Execute(tx) = c.claim(key, 1, at) else {
                panic!()
            };
            c.finish(key, tx, stored(key), at);
        }
        // At 1,200 "a" has expired: forgetting it is enough room for "c".
        assert!(matches!(c.claim("c", 1, 1_200), Claim::Execute(_)));
        assert!(
            matches!(c.claim("b", 1, 1_201), Claim::Done(_)),
            "b is still replayed"
        );
    }

    #[test]
    fn bounded_by_evicting_the_oldest_completed_key() {
        let c = IdempotencyCache::new(1_000, 2);
        let Claim::Execute(a) = c.claim("a", 1, 0) else {
            panic!()
        };
        c.finish("a", a, stored("a"), 0);
        let Claim::Execute(_b) = c.claim("b", 1, 1) else {
            panic!()
        };
        assert!(
            matches!(c.claim("c", 1, 2), Claim::Execute(_)),
            "a was evicted"
        );
        assert_eq!(c.len(), 2);
        assert!(
            matches!(c.claim("d", 1, 3), Claim::Full),
            "b and c still run"
        );
    }
}
