//! The kind planner: scale up vs scale out over the instance kinds of `[[provider.kinds]]`.
//!
//! The decider says how much capacity is needed, in reference backends of `[autoscaler]
//! workers` workers; the control step turns that into workers and asks [`KindPlanner::plan`]
//! which backends of which kind to launch and which to retire. Sans-IO, time passed in, so the
//! live loop and the simulator run the same plan. The rules, as cloud cluster autoscalers apply
//! them (Karpenter's consolidation: replace nodes by a cheaper set that still fits; the seed's
//! scale-up vs scale-out notes: big instances are cheaper per unit of work, small ones boot
//! sooner):
//!
//! 1. **Base**: the demand sustained over the base window (the lowest need of the last
//!    max(`stable_window`, 2 x the slowest kind's boot time)) is covered by the kind cheapest per
//!    worker, whatever its boot time (one more of it for the remainder when that is cheaper than
//!    the remainder in burst backends): it has lasted, so it is worth the wait. Demand that
//!    lasted twice a boot time is taken to last about one more, which is when a slow kind starts
//!    paying off.
//! 2. **Burst**: what the backends ready now, or ready no later than a fast one launched now,
//!    cannot serve is covered at once by the fastest-booting kind (the cheapest per worker among
//!    equally fast ones). Backends of slow kinds still booting do not count: the burst cannot
//!    wait for them.
//! 3. **Scale-in, dear first**: capacity beyond the need is released by price per worker, the
//!    dearest first (the balancer's `cost_aware` policy fills the cheap ones first, so these are
//!    the idle ones), never below the base, never leaving fewer workers ready (or about to be)
//!    than needed, and nothing cheaper while a dearer one stays because it is needed. Once the slow kind bought for a lasting rise is ready, the burst backends
//!    it replaces are the dear ones, and go: consolidation.
//! 4. **Billing**: a backend is released only within `release_margin` of the end of its paid
//!    billing period. When the dearest one to go is still inside its period, it is kept, and no
//!    cheaper one is released in its place: the paid one is free until its period ends, and the
//!    cheaper one is the one worth keeping should the load stay (it goes later, if the load
//!    stays low).

use crate::billing::paid_until;
use crate::fleet::BackendState;
use ebbtide_config::autoscaler::Autoscaler;
use ebbtide_config::time::Nanos;
use std::collections::VecDeque;

/// One kind as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct KindSpec {
    /// Its config name.
    pub name: String,
    /// Workers (requests served at once) per backend.
    pub workers: u32,
    /// Price of one backend per hour.
    pub price_per_hour: f64,
    /// Launch to ready.
    pub boot: Nanos,
}

impl KindSpec {
    fn price_per_worker(&self) -> f64 {
        self.price_per_hour / self.workers.max(1) as f64
    }
}

/// One backend of the fleet, as the planner needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedBackend<'a> {
    /// The member's id (what a retirement names).
    pub id: &'a str,
    /// Index of its kind in the planner's kinds.
    pub kind: usize,
    /// Its state; draining ones are ignored.
    pub state: BackendState,
    /// When it was launched: billing periods count from here.
    pub launched_at: Nanos,
}

/// What one plan asks for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindPlan {
    /// Kinds to launch, one entry per backend.
    pub launch: Vec<usize>,
    /// Members to retire (drain, then stop).
    pub retire: Vec<String>,
    /// Why, in words, for the decision's reason.
    pub notes: Vec<String>,
    /// The sustained need the base mix covers, in workers.
    pub base: u32,
}

/// Chooses the mix of kinds; see the module notes.
#[derive(Debug, Clone)]
pub struct KindPlanner {
    kinds: Vec<KindSpec>,
    base_window: Nanos,
    billing_period: Nanos,
    release_margin: Nanos,
    /// (time, workers needed) over the base window.
    history: VecDeque<(Nanos, u32)>,
}

impl KindPlanner {
    /// A planner over `kinds` (at least one), with the base window and billing rules given.
    pub fn new(
        kinds: Vec<KindSpec>,
        stable_window: Nanos,
        billing_period: Nanos,
        release_margin: Nanos,
    ) -> KindPlanner {
        assert!(!kinds.is_empty(), "a kind planner needs kinds");
        let slowest = kinds.iter().map(|k| k.boot).max().unwrap_or(0);
        KindPlanner {
            kinds,
            base_window: stable_window.max(slowest.saturating_mul(2)),
            billing_period,
            release_margin,
            history: VecDeque::new(),
        }
    }

    /// The planner for `[[provider.kinds]]`, with `[autoscaler]`'s stable window, boot time
    /// (for kinds without their own) and billing; `None` without kinds.
    pub fn from_config(provider: &ebbtide_config::Provider, cfg: &Autoscaler) -> Option<Self> {
        if provider.kinds.is_empty() {
            return None;
        }
        let kinds = provider
            .kinds
            .iter()
            .map(|k| KindSpec {
                name: k.name.clone(),
                workers: k.workers.max(1),
                price_per_hour: k.cost_per_hour,
                boot: k.boot(cfg.boot_time).as_nanos(),
            })
            .collect();
        Some(KindPlanner::new(
            kinds,
            cfg.stable_window.as_nanos(),
            cfg.cost.billing_period.as_nanos(),
            cfg.release_margin().as_nanos(),
        ))
    }

    /// The kinds, in config order.
    pub fn kinds(&self) -> &[KindSpec] {
        &self.kinds
    }

    /// The index of the kind called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.kinds.iter().position(|k| k.name == name)
    }

    /// The fastest-booting kind, the cheapest per worker among equally fast ones.
    pub fn burst_kind(&self) -> usize {
        (0..self.kinds.len())
            .min_by(|&a, &b| {
                let (ka, kb) = (&self.kinds[a], &self.kinds[b]);
                ka.boot.cmp(&kb.boot).then(
                    ka.price_per_worker()
                        .total_cmp(&kb.price_per_worker())
                        .then(a.cmp(&b)),
                )
            })
            .unwrap_or(0)
    }

    /// The kind cheapest per worker (the larger among equally cheap ones): the base's.
    pub fn base_kind(&self) -> usize {
        (0..self.kinds.len())
            .min_by(|&a, &b| {
                let (ka, kb) = (&self.kinds[a], &self.kinds[b]);
                ka.price_per_worker()
                    .total_cmp(&kb.price_per_worker())
                    .then(kb.workers.cmp(&ka.workers))
                    .then(a.cmp(&b))
            })
            .unwrap_or(0)
    }

    /// Backends of the base kind for a base of `workers`: as many as it fills, plus one for
    /// the remainder when that is cheaper than covering the remainder with the burst kind.
    pub fn base_count(&self, workers: u32) -> u32 {
        let base = &self.kinds[self.base_kind()];
        let burst = &self.kinds[self.burst_kind()];
        let (full, rest) = (workers / base.workers, workers % base.workers);
        let rest_by_burst = rest.div_ceil(burst.workers) as f64 * burst.price_per_hour;
        if rest > 0 && base.price_per_hour <= rest_by_burst {
            full + 1
        } else {
            full
        }
    }

    /// The mix the planner settles on for a steady need of `workers`: the base kind's
    /// [`KindPlanner::base_count`], the remainder in the burst kind. Counts by kind index.
    pub fn steady_mix(&self, workers: u32) -> Vec<u32> {
        let mut counts = vec![0u32; self.kinds.len()];
        let (b, f) = (self.base_kind(), self.burst_kind());
        counts[b] = self.base_count(workers);
        let covered = counts[b] * self.kinds[b].workers;
        counts[f] += workers
            .saturating_sub(covered)
            .div_ceil(self.kinds[f].workers);
        counts
    }

    /// The plan for a need of `needed` workers at `now` over `fleet`.
    pub fn plan(&mut self, needed: u32, fleet: &[PlannedBackend<'_>], now: Nanos) -> KindPlan {
        let horizon = now.saturating_sub(self.base_window);
        self.history.push_back((now, needed));
        while self.history.len() > 1 && self.history.front().is_some_and(|(at, _)| *at < horizon) {
            self.history.pop_front();
        }
        let base = self.history.iter().map(|(_, n)| *n).min().unwrap_or(needed);
        let base_kind = self.base_kind();
        let mut cover = vec![0u32; self.kinds.len()];
        cover[base_kind] = self.base_count(base);
        let live: Vec<&PlannedBackend> = fleet
            .iter()
            .filter(|b| b.state != BackendState::Draining && b.kind < self.kinds.len())
            .collect();
        let mut have = vec![0u32; self.kinds.len()];
        for b in &live {
            have[b.kind] += 1;
        }
        let mut plan = KindPlan {
            base,
            ..KindPlan::default()
        };

        // 1. The base mix.
        for (k, (&want, &has)) in cover.iter().zip(&have).enumerate() {
            if want > has {
                plan.launch
                    .extend(std::iter::repeat_n(k, (want - has) as usize));
                plan.notes.push(format!(
                    "base of {base} workers (the least needed over {:.0}s) takes {want} {} \
                     (the cheapest per worker): launching {}",
                    self.base_window as f64 / 1e9,
                    self.kinds[k].name,
                    want - has,
                ));
            }
        }

        // 2. The burst: what cannot wait for a slow kind's boot.
        let f = self.burst_kind();
        let fast = &self.kinds[f];
        let soon_by = now.saturating_add(fast.boot);
        let ready_soon = |b: &PlannedBackend| {
            b.state == BackendState::Active
                || b.launched_at.saturating_add(self.kinds[b.kind].boot) <= soon_by
        };
        let workers = |k: usize| self.kinds[k].workers;
        let mut soon: u32 = live
            .iter()
            .filter(|b| ready_soon(b))
            .map(|b| workers(b.kind))
            .sum::<u32>()
            + plan
                .launch
                .iter()
                .filter(|&&k| self.kinds[k].boot <= fast.boot)
                .map(|&k| workers(k))
                .sum::<u32>();
        if needed > soon {
            let n = (needed - soon).div_ceil(fast.workers);
            plan.notes.push(format!(
                "{needed} workers needed, {soon} ready within a {} boot ({:.0}s): launching {n} {}",
                fast.name,
                fast.boot as f64 / 1e9,
                fast.name
            ));
            plan.launch.extend(std::iter::repeat_n(f, n as usize));
            soon += n * fast.workers;
        }

        // 3 and 4. Scale-in, dear first, within paid periods.
        let mut total: u32 = live.iter().map(|b| workers(b.kind)).sum::<u32>()
            + plan.launch.iter().map(|&k| workers(k)).sum::<u32>();
        let left = |b: &PlannedBackend| {
            let k = &self.kinds[b.kind];
            if k.price_per_hour > 0.0 && self.billing_period > 0 {
                paid_until(b.launched_at, now, self.billing_period) - now
            } else {
                0
            }
        };
        let mut candidates = live.clone();
        candidates.sort_by(|a, b| {
            let (ka, kb) = (&self.kinds[a.kind], &self.kinds[b.kind]);
            kb.price_per_worker()
                .total_cmp(&ka.price_per_worker())
                .then(left(a).cmp(&left(b)))
                .then((a.state != BackendState::Starting).cmp(&(b.state != BackendState::Starting)))
                .then(b.launched_at.cmp(&a.launched_at))
                .then(a.id.cmp(b.id))
        });
        let mut removed = vec![0u32; self.kinds.len()];
        for b in candidates {
            let w = workers(b.kind);
            let counts_soon = ready_soon(b);
            if have[b.kind] - removed[b.kind] <= cover[b.kind] {
                // Part of the base (the cheapest kind, last in this order).
                continue;
            }
            if total - w < needed || (counts_soon && soon - w < needed) {
                // Needed now: nothing cheaper goes while it stays (dear first, strictly).
                break;
            }
            let paid = left(b);
            if paid > self.release_margin {
                plan.notes.push(format!(
                    "keeping {} {} (the dearest per worker to go): paid for {:.0}s more; \
                     nothing cheaper goes in its place",
                    self.kinds[b.kind].name,
                    b.id,
                    paid as f64 / 1e9
                ));
                break;
            }
            removed[b.kind] += 1;
            total -= w;
            if counts_soon {
                soon -= w;
            }
            plan.retire.push(b.id.to_string());
        }
        if !plan.retire.is_empty() {
            plan.notes.push(format!(
                "{total} workers left for {needed} needed: retiring the dearest per worker first \
                 ({})",
                plan.retire.join(", ")
            ));
        }
        plan
    }
}

#[cfg(test)]
mod tests;
