//! The scans and the random sampling that several policies share: "the cheapest backend with a
//! free slot", over the whole fleet or over d distinct random samples of it. Cheapest is whatever
//! key the caller computes from a view (in-flight count, latency cost, utilisation).

use crate::policy::{BackendView, Candidates};
use ebbtide_config::rng::SharedRng;

/// The most samples a power-of-choices pick takes. The samples live in a fixed array so a pick
/// never allocates; beyond a handful of samples p2c is already as good as a full scan.
pub const MAX_CHOICES: usize = 16;

/// A configured number of choices made usable: 0 means 1 (a plain random pick) and anything
/// above [`MAX_CHOICES`] is capped.
pub(super) fn clamp_choices(choices: usize) -> usize {
    choices.clamp(1, MAX_CHOICES)
}

/// The load a least-loaded pick compares: (requests in flight + 1) divided by the backend's
/// slow-start factor, as HAProxy's leastconn key `(served + 1) x SRV_EWGHT_MAX / eweight` and
/// Envoy's least-request weight `weight / (active + 1)`. At a full share the order is the
/// in-flight order; a ramping backend at factor f looks as loaded as a full one with about
/// 1/f times its requests, so it holds about f times as many. Under light load (everyone idle)
/// it gets requests only once the others are busier, which is when a cold backend needs
/// sparing.
#[inline]
pub(super) fn ramped_load(view: &BackendView) -> u128 {
    // In units of 1/65536 request, so the division by the factor keeps its precision.
    view.ramp.inflate((u128::from(view.in_flight) + 1) << 16)
}

/// [`ramped_load`] of an idle backend at a full share: nothing is lower.
pub(super) const IDLE_LOAD: u128 = 1 << 16;

/// The index with the lowest `cost` among backends with a free slot, scanning all `n` from
/// `start` and wrapping; on a tie the first one met wins, so a moving `start` spreads ties.
/// `lowest_possible`, when given, is a cost nothing can beat (0 requests in flight): the scan
/// stops at the first backend that has it, which returns the same index as the full scan would.
#[inline]
pub(super) fn cheapest_free_from<K: Ord>(
    backends: &dyn Candidates,
    start: usize,
    cost: impl Fn(&BackendView) -> K,
    lowest_possible: Option<K>,
) -> Option<usize> {
    cheapest_from(
        backends,
        start,
        |v| v.has_free_slot().then(|| cost(v)),
        lowest_possible,
    )
}

/// [`cheapest_free_from`] where `cost` also says which backends may be taken at all (`None`:
/// skip it), for policies with a stricter rule than a free slot.
#[inline]
pub(super) fn cheapest_from<K: Ord>(
    backends: &dyn Candidates,
    start: usize,
    cost: impl Fn(&BackendView) -> Option<K>,
    lowest_possible: Option<K>,
) -> Option<usize> {
    let n = backends.len();
    let mut best: Option<(usize, K)> = None;
    for k in 0..n {
        let i = (start + k) % n;
        let view = backends.view(i);
        let Some(c) = cost(&view) else {
            continue;
        };
        if lowest_possible.as_ref().is_some_and(|low| c <= *low) {
            return Some(i);
        }
        if best.as_ref().is_none_or(|(_, b)| c < *b) {
            best = Some((i, c));
        }
    }
    best.map(|(i, _)| i)
}

/// Power of d choices: samples `choices` distinct backends at random (all of them, scanned,
/// when `choices >= n`) and returns the sample with the lowest `cost` among those with a free
/// slot. When no sample has one, falls back to [`cheapest_free_from`] over the whole fleet, so
/// the pick is `None` only when no backend at all has a free slot. `choices` must be at most
/// [`MAX_CHOICES`] (see [`clamp_choices`]); `lowest_possible` shortens the scans as in
/// [`cheapest_free_from`].
pub(super) fn best_of_random_sample<K: Ord + Copy>(
    backends: &dyn Candidates,
    rng: &SharedRng,
    choices: usize,
    cost: impl Fn(&BackendView) -> K,
    lowest_possible: Option<K>,
) -> Option<usize> {
    debug_assert!((1..=MAX_CHOICES).contains(&choices));
    let n = backends.len();
    if n == 0 {
        return None;
    }
    if choices >= n {
        return cheapest_free_from(backends, rng.below(n), cost, lowest_possible);
    }
    let mut sampled = [0usize; MAX_CHOICES];
    let mut best: Option<(usize, K)> = None;
    for k in 0..choices {
        // Rejection keeps the samples distinct; with choices < n a retry is rare and bounded
        // in expectation by n / (n - choices).
        let i = loop {
            let i = rng.below(n);
            if !sampled[..k].contains(&i) {
                break i;
            }
        };
        sampled[k] = i;
        let view = backends.view(i);
        if !view.has_free_slot() {
            continue;
        }
        let c = cost(&view);
        if best.as_ref().is_none_or(|(_, b)| c < *b) {
            best = Some((i, c));
        }
    }
    match best {
        Some((i, _)) => Some(i),
        None => cheapest_free_from(backends, rng.below(n), cost, lowest_possible),
    }
}
