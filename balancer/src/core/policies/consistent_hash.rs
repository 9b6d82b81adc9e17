//! Consistent hashing: a request key (header, cookie or path, hashed with [`hash_key`]) maps to
//! a backend through a ring of virtual nodes, so the same key keeps reaching the same backend
//! (cache affinity) and adding or removing one of n backends moves only about 1/n of the keys.
//!
//! Slow start: a key whose owner is ramping stays with it with probability equal to the
//! owner's factor and otherwise falls through to the next backend on the ring, as when the
//! owner is full. The choice is a hash of the key and the owner's id, so it is the same for
//! every request with that key, and as the factor grows the keys that stay are a growing set
//! (a key moves onto the new backend once and stays): its share of the keys ramps from the
//! minimum to all of its own. (Neither HAProxy nor Envoy ramps hashing balancers; this is
//! their weight ramp applied to the keys.)

use super::round_robin::RoundRobin;
use crate::policy::{Candidates, Policy};
use crate::slow_start::draw;
use ebbtide_config::time::Nanos;
use std::sync::RwLock;

/// Points each backend gets on the ring. More points even out the shares (the spread of a
/// share is roughly 1/sqrt(points)); 160 is ketama's choice and keeps a 1024-backend ring at
/// about 2 MiB and 18 comparisons per lookup.
pub const VIRTUAL_NODES: u32 = 160;

/// Ring entries a pick walks past a full owner before giving up on ring order and scanning the
/// fleet. Bounds the cost of a pick when most of the fleet is full.
const MAX_RING_WALK: usize = 4 * VIRTUAL_NODES as usize;

const K0: u64 = 0x9E37_79B9_7F4A_7C15;
const K1: u64 = 0xC2B2_AE3D_27D4_EB4F;
const K2: u64 = 0x1656_67B1_9E37_79F9;

/// The 128-bit product of two words folded to 64 bits: every input bit reaches the middle of
/// the output.
#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

/// A bijective 64-bit finaliser (MurmurHash3's fmix64): spreads keys that differ in few bits,
/// such as small integers, over the whole ring.
#[inline]
pub(crate) fn spread(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The 64-bit hash of a request key (header value, cookie value or path bytes) that the proxy
/// passes to [`ConsistentHash`]. Stable: the same bytes give the same hash on every platform,
/// version and process, so a key keeps its backend across balancer restarts and replicas. Fast
/// (8 bytes per multiply) and well mixed (one flipped input bit flips about half the output
/// bits). Not keyed: it is for spreading keys, not for resisting crafted collisions.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h = K0 ^ (bytes.len() as u64).wrapping_mul(K1);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let w = u64::from_le_bytes(word.try_into().expect("chunks of 8"));
        h = folded_multiply(h ^ w, K1);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut padded = [0u8; 8];
        padded[..tail.len()].copy_from_slice(tail);
        h = folded_multiply(h ^ u64::from_le_bytes(padded), K2);
    }
    spread(h)
}

/// Where a virtual node of a backend sits: a function of the backend's id only, so the ring is
/// the same whatever the order of the fleet.
fn ring_point(backend_id: u64, replica: u32) -> u64 {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&backend_id.to_le_bytes());
    bytes[8..].copy_from_slice(&replica.to_le_bytes());
    hash_key(&bytes)
}

/// The ring for one fleet generation: sorted points and, for each, the index of its backend.
#[derive(Debug, Default)]
struct Ring {
    generation: Option<u64>,
    /// Fleet size it was built for: a fleet of another size is another fleet, whatever its
    /// generation says, and must not be indexed with this ring's owners.
    backend_count: usize,
    points: Vec<u64>,
    owners: Vec<u32>,
}

impl Ring {
    /// Rebuilds the ring for the fleet as it is now (allocates; only on a generation change).
    fn rebuild(&mut self, backends: &dyn Candidates, generation: u64, virtual_nodes: u32) {
        let n = backends.len();
        let mut entries: Vec<(u64, u64, u32)> = Vec::with_capacity(n * virtual_nodes as usize);
        for i in 0..n {
            let id = backends.view(i).id;
            for replica in 0..virtual_nodes {
                entries.push((ring_point(id, replica), id, i as u32));
            }
        }
        // Ties between points (rare) are broken by id, so the ring does not depend on order.
        entries.sort_unstable_by_key(|&(point, id, _)| (point, id));
        self.points.clear();
        self.owners.clear();
        self.points.extend(entries.iter().map(|e| e.0));
        self.owners.extend(entries.iter().map(|e| e.2));
        self.generation = Some(generation);
        self.backend_count = n;
    }

    /// Whether the ring was built for this fleet.
    fn is_for(&self, generation: u64, backend_count: usize) -> bool {
        self.generation == Some(generation) && self.backend_count == backend_count
    }

    /// The owner of `key`, or the next distinct backend clockwise with a free slot (and, when
    /// it is ramping, whose slow-start draw for this key admits it).
    fn lookup(&self, backends: &dyn Candidates, key: u64) -> Option<usize> {
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        let takes = |i: usize| {
            let v = backends.view(i);
            v.has_free_slot() && v.ramp.admits(draw(key, v.id))
        };
        let point = spread(key);
        let start = self.points.partition_point(|&p| p < point) % len;
        let owner = self.owners[start] as usize;
        if takes(owner) {
            return Some(owner);
        }
        let mut last_tried = owner;
        for k in 1..len.min(MAX_RING_WALK) {
            let candidate = self.owners[(start + k) % len] as usize;
            if candidate == last_tried {
                continue;
            }
            last_tried = candidate;
            if takes(candidate) {
                return Some(candidate);
            }
        }
        // Most of the fleet is full: any free backend will do (the owner last: it may be free
        // but ramping, and not taking this key).
        let n = backends.len();
        (1..=n)
            .map(|k| (owner + k) % n)
            .find(|&i| backends.view(i).has_free_slot())
    }
}

/// Consistent hashing on a ring with [`VIRTUAL_NODES`] points per backend, placed by
/// `BackendView::id`. The ring is rebuilt only when the fleet's generation changes. When the
/// owner of a key is full or not accepting, the request goes to the next distinct backend on the
/// ring with a free slot (bounded-load style), which is also where the key would move if the
/// owner left, so overflow keeps affinity as far as it can. A request without a key
/// (`key = None`) is placed round robin.
#[derive(Debug)]
pub struct ConsistentHash {
    ring: RwLock<Ring>,
    keyless: RoundRobin,
    virtual_nodes: u32,
}

impl Default for ConsistentHash {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsistentHash {
    /// A consistent-hash policy with [`VIRTUAL_NODES`] points per backend.
    pub fn new() -> Self {
        Self::with_virtual_nodes(VIRTUAL_NODES)
    }

    /// The same with another number of points per backend (at least 1): fewer build faster and
    /// take less memory, more spread keys more evenly.
    pub fn with_virtual_nodes(virtual_nodes: u32) -> Self {
        ConsistentHash {
            ring: RwLock::new(Ring::default()),
            keyless: RoundRobin::new(),
            virtual_nodes: virtual_nodes.max(1),
        }
    }
}

impl Policy for ConsistentHash {
    fn name(&self) -> &'static str {
        "consistent_hash"
    }

    fn pick(&self, backends: &dyn Candidates, key: Option<u64>, now: Nanos) -> Option<usize> {
        if backends.is_empty() {
            return None;
        }
        let Some(key) = key else {
            return self.keyless.pick(backends, None, now);
        };
        let generation = backends.generation();
        {
            let ring = self.ring.read().unwrap_or_else(|e| e.into_inner());
            if ring.is_for(generation, backends.len()) {
                return ring.lookup(backends, key);
            }
        }
        let mut ring = self.ring.write().unwrap_or_else(|e| e.into_inner());
        if !ring.is_for(generation, backends.len()) {
            ring.rebuild(backends, generation, self.virtual_nodes);
        }
        ring.lookup(backends, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::test_support::fleet;
    use crate::BackendView;
    use std::collections::HashMap;

    const KEYS: u64 = 10_000;

    fn key(k: u64) -> u64 {
        hash_key(format!("/users/{k}/profile").as_bytes())
    }

    /// key -> backend id for keys 0..KEYS.
    fn owners(policy: &ConsistentHash, f: &[BackendView]) -> Vec<u64> {
        (0..KEYS)
            .map(|k| f[policy.pick(&f, Some(key(k)), 0).unwrap()].id)
            .collect()
    }

    #[test]
    fn the_same_key_always_maps_to_the_same_backend() {
        let f = fleet(6);
        let a = ConsistentHash::new();
        let first = owners(&a, &f);
        assert_eq!(owners(&a, &f), first);
        // A fresh instance, and the same fleet in another order, agree by id.
        let mut reversed = f.clone();
        reversed.reverse();
        assert_eq!(owners(&ConsistentHash::new(), &reversed), first);
    }

    #[test]
    fn keys_spread_evenly() {
        let f = fleet(5);
        let mut counts: HashMap<u64, u32> = HashMap::new();
        for id in owners(&ConsistentHash::new(), &f) {
            *counts.entry(id).or_default() += 1;
        }
        for (id, c) in &counts {
            assert!((1_600..=2_400).contains(c), "backend {id}: {counts:?}");
        }
    }

    #[test]
    fn adding_a_fifth_backend_moves_about_a_fifth_of_keys_all_onto_it() {
        let p = ConsistentHash::new();
        let four = fleet(4);
        let five = fleet(5);
        let new_id = five[4].id;
        let before = owners(&p, &four);
        let after = owners(&p, &five);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                moved += 1;
                assert_eq!(*a, new_id, "a key moved between old backends");
            }
        }
        let share = moved as f64 / KEYS as f64;
        assert!((0.15..=0.25).contains(&share), "moved {share}");
    }

    #[test]
    fn removing_a_backend_moves_only_its_keys() {
        let p = ConsistentHash::new();
        let five = fleet(5);
        let mut four = five.clone();
        let removed = four.remove(2).id;
        let before = owners(&p, &five);
        let after = owners(&p, &four);
        let mut moved = 0;
        for (b, a) in before.iter().zip(&after) {
            if b != a {
                moved += 1;
                assert_eq!(*b, removed, "a key of a remaining backend moved");
            }
        }
        assert_eq!(moved, before.iter().filter(|&&b| b == removed).count());
    }

    #[test]
    fn a_full_owner_overflows_to_the_next_backend_on_the_ring() {
        let p = ConsistentHash::new();
        let five = fleet(5);
        let mut without = five.clone();
        let full_id = without.remove(1).id;
        // Where each key would go if the backend were gone = the next distinct one on the ring.
        let next_on_ring = owners(&ConsistentHash::new(), &without);
        let before = owners(&p, &five);
        for (accepting, in_flight) in [(true, 3), (false, 0)] {
            let mut f = five.clone();
            f[1].capacity = Some(3);
            f[1].in_flight = in_flight;
            f[1].accepting = accepting;
            let during = owners(&p, &f);
            for k in 0..KEYS as usize {
                assert_ne!(during[k], full_id);
                if before[k] == full_id {
                    assert_eq!(during[k], next_on_ring[k], "key {k}");
                } else {
                    assert_eq!(during[k], before[k], "key {k} lost its backend");
                }
            }
        }
    }

    /// A new backend at factor f keeps about f of the keys it owns, the same ones on every
    /// pick, and a key it keeps at a lower factor stays with it at a higher one.
    #[test]
    fn a_ramping_owner_keeps_its_factor_of_its_keys() {
        use crate::slow_start::Ramp;
        let p = ConsistentHash::new();
        let mut f = fleet(5);
        let full = owners(&p, &f);
        let new_id = f[4].id;
        let its_keys = full.iter().filter(|&&o| o == new_id).count() as f64;
        let mut kept_before: Vec<bool> = vec![false; KEYS as usize];
        for factor in [0.1, 0.5, 1.0] {
            f[4].ramp = Ramp::from_f64(factor);
            let during = owners(&p, &f);
            assert_eq!(owners(&p, &f), during, "deterministic per key");
            let kept = during.iter().filter(|&&o| o == new_id).count() as f64;
            assert!(
                (kept / its_keys - factor).abs() < 0.05,
                "f={factor}: {kept}/{its_keys}"
            );
            for k in 0..KEYS as usize {
                if during[k] == new_id {
                    assert_eq!(full[k], new_id, "key {k} came from another owner");
                } else {
                    assert!(!kept_before[k], "key {k} left the new backend as it ramped");
                }
                kept_before[k] = during[k] == new_id;
                if full[k] != new_id {
                    assert_eq!(during[k], full[k], "key {k} of another backend moved");
                }
            }
        }
    }

    #[test]
    fn a_nearly_full_fleet_still_finds_its_free_backend() {
        let p = ConsistentHash::with_virtual_nodes(2_000);
        let mut f = fleet(8);
        for b in &mut f {
            b.accepting = false;
        }
        f[6].accepting = true;
        for k in 0..500 {
            assert_eq!(p.pick(&f, Some(key(k)), 0), Some(6));
        }
    }

    #[test]
    fn no_key_falls_back_to_round_robin() {
        let p = ConsistentHash::new();
        let f = fleet(4);
        let mut counts = [0u32; 4];
        for _ in 0..400 {
            counts[p.pick(&f, None, 0).unwrap()] += 1;
        }
        assert_eq!(counts, [100; 4]);
    }

    #[test]
    fn hash_key_is_stable() {
        // Pinned: a change here would remap every key in every deployment.
        let got: Vec<u64> = ["", "a", "/users/42", "a longer key spanning words"]
            .iter()
            .map(|s| hash_key(s.as_bytes()))
            .collect();
        assert_eq!(got, PINNED);
    }

    const PINNED: [u64; 4] = [
        0x9ca0_66f1_a4ab_2eea,
        0x8cc9_d612_7ebe_5f94,
        0x2c34_5134_6d2c_8a0f,
        0x7a28_e13c_4dd4_c3b9,
    ];

    #[test]
    fn hash_key_avalanches() {
        // Flipping any one input bit flips about half of the 64 output bits.
        let mut flipped = 0u64;
        let mut trials = 0u64;
        for len in [1usize, 3, 8, 13, 32] {
            for seed in 0..20u8 {
                let input: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37) ^ seed).collect();
                let base = hash_key(&input);
                for bit in 0..len * 8 {
                    let mut changed = input.clone();
                    changed[bit / 8] ^= 1 << (bit % 8);
                    flipped += u64::from((hash_key(&changed) ^ base).count_ones());
                    trials += 1;
                }
            }
        }
        let mean = flipped as f64 / trials as f64;
        assert!((31.0..=33.0).contains(&mean), "mean flipped bits {mean}");
        // Trailing zero bytes and length matter.
        assert_ne!(hash_key(b"a"), hash_key(b"a\0"));
        assert_ne!(hash_key(b""), hash_key(b"\0"));
    }
}
