use super::*;
use crate::testkit::S;

/// large: 8 workers at 0.24/h (0.03 per worker), 60 s boot; small: 2 workers at 0.10/h (0.05
/// per worker), 2 s boot. Stable window 60 s, so the base window is 2 x 60 s = 120 s.
fn planner(billing_period: Nanos) -> KindPlanner {
    KindPlanner::new(
        vec![
            KindSpec {
                name: "large".into(),
                workers: 8,
                price_per_hour: 0.24,
                boot: 60 * S,
            },
            KindSpec {
                name: "small".into(),
                workers: 2,
                price_per_hour: 0.10,
                boot: 2 * S,
            },
        ],
        60 * S,
        billing_period,
        5 * S,
    )
}

const LARGE: usize = 0;
const SMALL: usize = 1;

/// A scripted fleet on a fake clock: launches boot for their kind's boot time, retirements go
/// at once.
struct Fleet {
    members: Vec<(String, usize, BackendState, Nanos)>,
    next: u32,
}

impl Fleet {
    fn new() -> Fleet {
        Fleet {
            members: Vec::new(),
            next: 0,
        }
    }

    fn add(&mut self, kind: usize, state: BackendState, at: Nanos) -> String {
        self.next += 1;
        let id = format!("{}{}", ["L", "S"][kind], self.next);
        self.members.push((id.clone(), kind, state, at));
        id
    }

    fn view(&self) -> Vec<PlannedBackend<'_>> {
        self.members
            .iter()
            .map(|(id, kind, state, at)| PlannedBackend {
                id,
                kind: *kind,
                state: *state,
                launched_at: *at,
            })
            .collect()
    }

    /// Plans at `now` (after booting what is due) and applies the plan.
    fn step(&mut self, p: &mut KindPlanner, needed: u32, now: Nanos) -> KindPlan {
        for m in &mut self.members {
            if m.2 == BackendState::Starting && m.3 + p.kinds()[m.1].boot <= now {
                m.2 = BackendState::Active;
            }
        }
        let plan = p.plan(needed, &self.view(), now);
        for &k in &plan.launch {
            self.add(k, BackendState::Starting, now);
        }
        self.members.retain(|m| !plan.retire.contains(&m.0));
        plan
    }

    fn count(&self, kind: usize) -> usize {
        self.members.iter().filter(|m| m.1 == kind).count()
    }
}

#[test]
fn the_base_is_the_cheap_kind_the_remainder_the_fast_one() {
    let p = planner(0);
    assert_eq!((p.base_kind(), p.burst_kind()), (LARGE, SMALL));
    // 16 workers: 2 large (0.48) rather than 8 small (0.80).
    assert_eq!(p.steady_mix(16), vec![2, 0]);
    // 20: 2 large + 2 small (0.68) rather than 3 large (0.72).
    assert_eq!(p.steady_mix(20), vec![2, 2]);
    // 6: 1 large (0.24) rather than 3 small (0.30); 4: 2 small (0.20) rather than 1 large.
    assert_eq!(p.steady_mix(6), vec![1, 0]);
    assert_eq!(p.steady_mix(4), vec![0, 2]);
    assert_eq!(p.steady_mix(0), vec![0, 0]);
    assert_eq!(p.base_count(20), 2);
}

#[test]
fn large_for_the_base_small_for_a_burst_then_consolidated() {
    let mut p = planner(60 * S);
    let mut f = Fleet::new();
    f.add(LARGE, BackendState::Active, 0);
    f.add(LARGE, BackendState::Active, 0);
    for t in 0..10 {
        let plan = f.step(&mut p, 16, t * 10 * S);
        assert_eq!(plan.launch, Vec::<usize>::new(), "steady base: {plan:?}");
        assert!(plan.retire.is_empty());
    }
    // A step to 40 workers at 100 s: the base is still 16, so the 24 more are a burst that
    // cannot wait 60 s for a large one: 12 small.
    let plan = f.step(&mut p, 40, 100 * S);
    assert_eq!(plan.launch, vec![SMALL; 12], "{plan:?}");
    assert!(
        plan.notes[0].contains("launching 12 small"),
        "{:?}",
        plan.notes
    );
    // While the step lasts less than the base window, nothing changes.
    for t in 11..22 {
        let plan = f.step(&mut p, 40, t * 10 * S);
        assert!(
            plan.launch.is_empty() && plan.retire.is_empty(),
            "{t}: {plan:?}"
        );
    }
    // 120 s into the step the need has lasted the base window: the base is 40 = 5 large.
    // 3 large are launched; the smalls stay while they boot.
    let plan = f.step(&mut p, 40, 220 * S);
    assert_eq!(plan.base, 40);
    assert_eq!(plan.launch, vec![LARGE; 3], "{plan:?}");
    assert!(
        plan.retire.is_empty(),
        "the smalls serve while the larges boot"
    );
    for t in 23..28 {
        let plan = f.step(&mut p, 40, t * 10 * S);
        assert!(
            plan.retire.is_empty(),
            "{t}: larges still booting: {plan:?}"
        );
    }
    // Ready at 280 s: the 12 smalls (dear per worker, at the end of their paid periods) go.
    let plan = f.step(&mut p, 40, 280 * S);
    assert_eq!(plan.retire.len(), 12, "{plan:?}");
    assert!(plan.retire.iter().all(|id| id.starts_with('S')));
    assert_eq!((f.count(LARGE), f.count(SMALL)), (5, 0));
}

#[test]
fn a_large_about_to_be_ready_counts_toward_a_burst_one_just_launched_does_not() {
    let mut p = planner(0);
    let mut f = Fleet::new();
    f.add(LARGE, BackendState::Active, 0);
    f.add(LARGE, BackendState::Active, 0);
    f.add(LARGE, BackendState::Starting, 41 * S); // ready at 101 s
    f.add(LARGE, BackendState::Starting, 90 * S); // ready at 150 s
    p.plan(16, &f.view(), 0);
    // At 100 s the first is ready within the small kind's 2 s boot; the second is not.
    let plan = p.plan(32, &f.view(), 100 * S);
    assert_eq!(plan.launch, vec![SMALL; 4], "{plan:?}");
}

#[test]
fn scale_in_drains_the_dear_kind_first() {
    let mut p = planner(0);
    let mut f = Fleet::new();
    for _ in 0..5 {
        f.add(LARGE, BackendState::Active, 0);
    }
    for _ in 0..4 {
        f.add(SMALL, BackendState::Active, 0);
    }
    // 48 workers, 30 needed: the 4 small go first, then one large (32 left >= 30).
    let plan = f.step(&mut p, 30, 10 * S);
    assert!(plan.launch.is_empty(), "{plan:?}");
    let kinds: Vec<char> = plan
        .retire
        .iter()
        .map(|id| id.chars().next().unwrap())
        .collect();
    assert_eq!(kinds, vec!['S', 'S', 'S', 'S', 'L'], "{plan:?}");
    assert_eq!((f.count(LARGE), f.count(SMALL)), (4, 0));
    // Never below what is needed: 32 workers for 30, and one more large would leave 24.
    let plan = f.step(&mut p, 30, 20 * S);
    assert!(plan.retire.is_empty(), "{plan:?}");
}

#[test]
fn a_paid_dear_backend_is_kept_and_no_cheaper_one_goes_in_its_place() {
    // Billed per minute from launch, released within 5 s of a period's end.
    let mut p = planner(60 * S);
    let mut f = Fleet::new();
    for _ in 0..3 {
        f.add(LARGE, BackendState::Active, 0); // paid to 60 s, then 120 s
    }
    f.add(SMALL, BackendState::Active, 30 * S); // paid to 90 s
    f.add(SMALL, BackendState::Active, 30 * S);
    // At 57 s only 16 workers are needed. The larges are within 5 s of their period's end (the
    // cheapest to release by billing alone), but the smalls are the dear kind and are paid
    // for 33 s more: keep them, and keep the cheaper larges too.
    let plan = f.step(&mut p, 16, 57 * S);
    assert!(plan.retire.is_empty(), "{plan:?}");
    assert!(
        plan.notes.iter().any(|n| n.contains("keeping small")),
        "{:?}",
        plan.notes
    );
    // At 87 s the smalls' periods end: they go; the larges are paid to 120 s now, so the
    // surplus large waits.
    let plan = f.step(&mut p, 16, 87 * S);
    assert_eq!(plan.retire.len(), 2, "{plan:?}");
    assert!(plan.retire.iter().all(|id| id.starts_with('S')));
    assert!(plan.notes.iter().any(|n| n.contains("keeping large")));
    // At 117 s, the end of the larges' second period: one large goes (the base is 2 large).
    let plan = f.step(&mut p, 16, 117 * S);
    assert_eq!(plan.retire.len(), 1, "{plan:?}");
    assert_eq!((f.count(LARGE), f.count(SMALL)), (2, 0));
}

#[test]
fn no_cheaper_backend_goes_while_a_dearer_one_is_needed() {
    let mut p = planner(0);
    let mut f = Fleet::new();
    f.add(LARGE, BackendState::Active, 0);
    for _ in 0..4 {
        f.add(LARGE, BackendState::Starting, 95 * S); // ready at 155 s
    }
    for _ in 0..12 {
        f.add(SMALL, BackendState::Active, 90 * S);
    }
    p.plan(8, &[], 0); // 8 workers needed 100 s ago: the base (over 120 s) is 1 large
                       // 32 workers needed now; 4 large are beyond the base, but the 24 small
                       // workers serve what the booting larges cannot yet: none of them goes, so neither does a
                       // large (the cheaper kind goes only once no dearer backend is left to go).
    let plan = f.step(&mut p, 32, 100 * S);
    assert!(plan.launch.is_empty() && plan.retire.is_empty(), "{plan:?}");
}
