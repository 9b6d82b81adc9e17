//! One tick of the autoscaler, sans-IO: the balancers' readings and the fleet in, a plan out.
//! `ebbtide serve`, `ebbtide autoscale` and the simulator all run this step, so what the
//! simulator says about scaling is what the live loop does.
//!
//! Each interval: [`ControlStep::observe`] turns the readings into an observation (rates over
//! the interval, the fleet's latency) and feeds the windows; [`ControlStep::tick`] asks the
//! decider (wrapped in the cost rules), records the decision, and plans launches, drains and the
//! overload action. What the provider and the balancers then do comes back through
//! [`ControlStep::report`].

use super::kinds::{KindPlanner, PlannedBackend};
use super::members::{Change, Command, Members, Report};
use crate::billing::CostMeter;
use crate::deciders::Decider;
use crate::decision::{Decision, Direction, OverloadAction};
use crate::events::EventLog;
use crate::fleet::{BackendState, FleetView};
use crate::providers::Instance;
use crate::signals::{Reading, Sampler};
use crate::windows::Windows;
use ebbtide_config::autoscaler::Autoscaler;
use ebbtide_config::time::Nanos;

/// How the fleet size is chosen.
enum Rule {
    /// By a decider on the signals, within `min` and `max`.
    Decider {
        decider: Box<dyn Decider>,
        windows: Windows,
        sampler: Sampler,
        events: EventLog,
        min: u32,
        max: u32,
    },
    /// A fixed count, lost backends replaced (a `[provider]` without `[autoscaler]`).
    Fixed(u32),
}

/// What one tick decided.
#[derive(Debug, Clone)]
pub struct Tick {
    /// What the IO must do now.
    pub commands: Vec<Command>,
    /// The decision, with its reason; `None` for a fixed fleet.
    pub decision: Option<Decision>,
    /// Which way it moved the fleet.
    pub direction: Direction,
    /// Backends (starting + serving) before it.
    pub from: u32,
    /// The new overload action, when it changed at this tick.
    pub overload: Option<OverloadAction>,
}

/// Instance kinds: the decider counts reference backends of `[autoscaler] workers` workers;
/// the planner turns that many workers into backends of each kind.
struct Kinds {
    planner: KindPlanner,
    /// Workers of one reference backend.
    reference: u32,
}

/// The autoscaler's state between ticks.
pub struct ControlStep {
    rule: Rule,
    members: Members,
    meter: CostMeter,
    desired: u32,
    overload: OverloadAction,
    kinds: Option<Kinds>,
    measured_boot: Option<Nanos>,
}

impl ControlStep {
    /// The step `[autoscaler]` describes; the event log keeps `event_capacity` entries.
    pub fn new(cfg: &Autoscaler, event_capacity: usize) -> ControlStep {
        ControlStep {
            rule: Rule::Decider {
                decider: crate::deciders::build(cfg),
                windows: Windows::from_config(cfg),
                sampler: Sampler::new(cfg.workers),
                events: EventLog::new(event_capacity),
                min: cfg.min,
                max: cfg.max,
            },
            members: Members::new(),
            meter: CostMeter::from_config(cfg),
            desired: cfg.min,
            overload: OverloadAction::None,
            kinds: None,
            measured_boot: None,
        }
    }

    /// This step over the instance kinds of `[[provider.kinds]]` (unchanged without kinds): the
    /// decider's count (and `min`, `max`) is then in reference backends of `[autoscaler]
    /// workers` workers, the kind planner chooses the mix, and each kind is billed at its own
    /// price.
    pub fn with_kinds(mut self, provider: &ebbtide_config::Provider, cfg: &Autoscaler) -> Self {
        if let Some(planner) = KindPlanner::from_config(provider, cfg) {
            let prices: Vec<f64> = planner.kinds().iter().map(|k| k.price_per_hour).collect();
            self.meter = CostMeter::with_prices(&prices, cfg.cost.billing_period.as_nanos());
            self.kinds = Some(Kinds {
                planner,
                reference: cfg.workers.max(1),
            });
        }
        self
    }

    /// The kind planner, when the provider has instance kinds.
    pub fn kind_planner(&self) -> Option<&KindPlanner> {
        self.kinds.as_ref().map(|k| &k.planner)
    }

    /// The index of a member's kind (the first kind when it has none).
    fn kind_index(kinds: &Kinds, kind: Option<&str>) -> usize {
        kind.and_then(|k| kinds.planner.index_of(k)).unwrap_or(0)
    }

    /// (ready, starting) in reference backends at `now`: workers / reference workers, rounded
    /// down. Starting backends count only when they will be ready no later than one of the
    /// fastest kind launched now: a slow kind bought for the base is not capacity the decider
    /// may wait for (its boot-aware rules would hold back the burst backends meanwhile).
    fn units(&self, now: Nanos) -> Option<(u32, u32)> {
        let kinds = self.kinds.as_ref()?;
        let planner = &kinds.planner;
        let soon_by = now.saturating_add(planner.kinds()[planner.burst_kind()].boot);
        let (mut ready, mut all) = (0u32, 0u32);
        for m in self.members.kinded() {
            let kind = &planner.kinds()[Self::kind_index(kinds, m.kind)];
            match m.state {
                BackendState::Active => {
                    ready += kind.workers;
                    all += kind.workers;
                }
                BackendState::Starting if m.launched_at.saturating_add(kind.boot) <= soon_by => {
                    all += kind.workers
                }
                _ => {}
            }
        }
        let (ready, all) = (ready / kinds.reference, all / kinds.reference);
        Some((ready, all - ready))
    }

    /// Takes in a running backend of instance kind `kind` (the simulator's starting fleet).
    pub fn adopt_kind(
        &mut self,
        instance: Instance,
        state: BackendState,
        launched_at: Nanos,
        kind: &str,
    ) {
        self.members.adopt_kind(instance, state, launched_at, kind);
        self.fleet_changed(launched_at);
    }

    /// Plans `units` reference backends over the kinds: the commands, and the plan's notes.
    fn plan_kinds(&mut self, units: u32, now: Nanos) -> (Vec<Command>, Vec<String>, u32) {
        let Some(kinds) = self.kinds.as_mut() else {
            return (Vec::new(), Vec::new(), 0);
        };
        let needed = units.saturating_mul(kinds.reference);
        let members = self.members.kinded();
        let fleet: Vec<PlannedBackend> = members
            .iter()
            .map(|m| PlannedBackend {
                id: m.id,
                kind: Self::kind_index(kinds, m.kind),
                state: m.state,
                launched_at: m.launched_at,
            })
            .collect();
        let plan = kinds.planner.plan(needed, &fleet, now);
        let mut commands = Vec::new();
        for k in &plan.launch {
            let name = kinds.planner.kinds()[*k].name.clone();
            commands.push(self.members.launch_kind(now, Some(&name)));
        }
        for id in &plan.retire {
            commands.extend(self.members.retire(id));
        }
        (commands, plan.notes, plan.base)
    }
    /// A fleet of `count` backends kept running, with no decider, costed by `meter`.
    pub fn fixed(count: u32, meter: CostMeter) -> ControlStep {
        ControlStep {
            rule: Rule::Fixed(count),
            members: Members::new(),
            meter,
            desired: count,
            overload: OverloadAction::None,
            kinds: None,
            measured_boot: None,
        }
    }

    /// The backends to launch at start (`min`, or the fixed count), before any signal.
    pub fn start(&mut self, now: Nanos) -> Vec<Command> {
        let want = match &self.rule {
            Rule::Decider { min, .. } => *min,
            Rule::Fixed(n) => *n,
        };
        let commands = if let Some((ready, starting)) = self.units(now) {
            // Never less than what runs already (the simulator's starting fleet).
            self.plan_kinds(want.max(ready + starting), now).0
        } else {
            self.launch_up_to(want, now)
        };
        self.fleet_changed(now);
        commands
    }

    /// Takes in a backend that runs already (see [`Members::adopt`]).
    pub fn adopt(&mut self, instance: Instance, state: BackendState, launched_at: Nanos) {
        self.members.adopt(instance, state, launched_at);
        self.fleet_changed(launched_at);
    }

    /// Records the balancers' counters without an observation, so that the first tick has an
    /// interval to take rates over.
    pub fn prime(&mut self, now: Nanos, readings: &[Option<Reading>]) {
        let starting = self.units(now).map_or(self.members.starting(), |u| u.1);
        if let Rule::Decider { sampler, .. } = &mut self.rule {
            sampler.observe(now, readings, starting);
        }
    }

    /// One reading per balancer (`None` for one that did not answer) into the windows.
    pub fn observe(&mut self, now: Nanos, readings: &[Option<Reading>]) {
        let units = self.units(now);
        let starting = units.map_or(self.members.starting(), |u| u.1);
        if let Rule::Decider {
            sampler, windows, ..
        } = &mut self.rule
        {
            let mut o = sampler.observe(now, readings, starting);
            if let Some((ready, _)) = units {
                // The balancers count backends; the deciders count reference backends.
                o.ready = ready;
            }
            windows.observe(o);
        }
    }

    /// Feeds the provider's measured launch-to-ready times (recent launches) to the cost rules:
    /// their median replaces the configured `boot_time` from the next tick on.
    pub fn set_boot_times(&mut self, times: &[std::time::Duration]) {
        let mut t: Vec<Nanos> = times.iter().map(|d| d.as_nanos() as Nanos).collect();
        t.sort_unstable();
        self.measured_boot = t.get(t.len() / 2).copied();
    }

    /// Decides the fleet size at `now` and plans how to get there.
    pub fn tick(&mut self, now: Nanos) -> Tick {
        if self.kinds.is_some() {
            return self.tick_kinds(now);
        }
        let from = self.members.current();
        let (desired, decision, direction) = match &mut self.rule {
            Rule::Decider {
                decider,
                windows,
                events,
                min,
                max,
                ..
            } => {
                let mut view = FleetView::from_members(self.members.view(), *min, *max);
                view.measured_boot = self.measured_boot;
                let decision = decider.decide(windows, &view, now);
                let direction = events.record(now, decider.name(), from, &decision);
                (decision.desired, Some(decision), direction)
            }
            Rule::Fixed(n) => (*n, None, Direction::between(from, *n)),
        };
        self.desired = desired;
        let mut commands = self.launch_up_to(desired, now);
        if desired < from {
            let named = decision.as_ref().map_or(&[][..], |d| &d.remove[..]);
            let excess = (from - desired) as usize;
            for id in self.members.choose_removals(named, excess) {
                commands.extend(self.members.retire(&id));
            }
        }
        let action = decision
            .as_ref()
            .map_or(OverloadAction::None, |d| d.overload);
        let overload = (action != self.overload).then(|| {
            self.overload = action;
            action
        });
        self.fleet_changed(now);
        Tick {
            commands,
            decision,
            direction,
            from,
            overload,
        }
    }

    /// [`ControlStep::tick`] over instance kinds: the decider sees the fleet in reference
    /// backends (with no member list, so the cost rules name no removals), and the kind planner
    /// turns its count into launches and retirements by kind.
    fn tick_kinds(&mut self, now: Nanos) -> Tick {
        let (ready, starting) = self.units(now).unwrap_or_default();
        let from = ready + starting;
        let Rule::Decider {
            decider,
            windows,
            min,
            max,
            ..
        } = &mut self.rule
        else {
            unreachable!("kinds come with a decider (checked by the config)")
        };
        let view = FleetView::counts(ready, starting, *min, *max);
        let mut decision = decider.decide(windows, &view, now);
        let desired = decision.desired;
        let (commands, notes, base) = self.plan_kinds(desired, now);
        let Some(kinds) = self.kinds.as_ref() else {
            unreachable!("checked by the caller")
        };
        if !notes.is_empty() {
            decision.reason = format!("{}; kinds: {}", decision.reason, notes.join("; "));
        }
        decision
            .inputs
            .insert("needed_workers".into(), (desired * kinds.reference) as f64);
        decision.inputs.insert("base_workers".into(), base as f64);
        for (i, k) in kinds.planner.kinds().iter().enumerate() {
            let n = self
                .members
                .kinded()
                .iter()
                .filter(|m| m.state != BackendState::Draining)
                .filter(|m| Self::kind_index(kinds, m.kind) == i)
                .count();
            decision.inputs.insert(format!("kind_{}", k.name), n as f64);
        }
        decision.remove = commands
            .iter()
            .filter_map(|c| match c {
                Command::Retire(i) => Some(i.id.clone()),
                _ => None,
            })
            .collect();
        decision.launch_kinds = commands
            .iter()
            .filter_map(|c| match c {
                Command::Launch { kind, .. } => kind.clone(),
                _ => None,
            })
            .collect();
        let Rule::Decider {
            decider, events, ..
        } = &mut self.rule
        else {
            unreachable!("matched above")
        };
        let direction = events.record(now, decider.name(), from, &decision);
        self.desired = desired;
        let action = decision.overload;
        let overload = (action != self.overload).then(|| {
            self.overload = action;
            action
        });
        self.fleet_changed(now);
        Tick {
            commands,
            decision: Some(decision),
            direction,
            from,
            overload,
        }
    }

    /// Takes in what happened outside; returns what to do next and what changed.
    pub fn report(&mut self, report: Report, now: Nanos) -> (Option<Command>, Change) {
        let out = self.members.apply(report);
        self.fleet_changed(now);
        out
    }

    fn launch_up_to(&mut self, want: u32, now: Nanos) -> Vec<Command> {
        let have = self.members.current();
        (have..want).map(|_| self.members.launch(now)).collect()
    }

    fn fleet_changed(&mut self, now: Nanos) {
        if let Some(kinds) = &self.kinds {
            let mut paid = vec![0u32; kinds.planner.kinds().len()];
            for m in self.members.kinded() {
                paid[Self::kind_index(kinds, m.kind)] += 1;
            }
            for (k, n) in paid.into_iter().enumerate() {
                if n != self.meter.kind_count(k) {
                    self.meter.on_kind_change(now, k, n);
                }
            }
            return;
        }
        let paid = self.members.paid();
        if paid != self.meter.count() {
            self.meter.on_fleet_change(now, paid);
        }
    }

    /// The fleet.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// What the fleet has cost so far.
    pub fn meter(&self) -> &CostMeter {
        &self.meter
    }

    /// The recent decisions (none for a fixed fleet).
    pub fn events(&self) -> Option<&EventLog> {
        match &self.rule {
            Rule::Decider { events, .. } => Some(events),
            Rule::Fixed(_) => None,
        }
    }

    /// The decider's name (none for a fixed fleet).
    pub fn decider_name(&self) -> Option<&'static str> {
        match &self.rule {
            Rule::Decider { decider, .. } => Some(decider.name()),
            Rule::Fixed(_) => None,
        }
    }

    /// The last decision's fleet size.
    pub fn desired(&self) -> u32 {
        self.desired
    }

    /// The overload action in force.
    pub fn overload(&self) -> OverloadAction {
        self.overload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::S;
    use ebbtide_config::autoscaler::{DeciderKind, OverloadMode};
    use ebbtide_config::time::HumanDuration;
    use std::time::Duration;

    /// The target-tracking decider on concurrency (target 4 per backend), 2..6 backends, no
    /// stabilisation to wait out, free backends (none kept to the end of a billing period):
    /// decisions follow the load at once.
    fn cfg(overload: OverloadMode) -> Autoscaler {
        let mut c = Autoscaler {
            decider: DeciderKind::TargetTracking,
            min: 2,
            max: 6,
            overload,
            overload_max_queue: Some(7),
            ..Default::default()
        };
        c.target = 4.0;
        c.scale_down_stabilisation = HumanDuration(Duration::ZERO);
        c.scale_up_stabilisation = HumanDuration(Duration::ZERO);
        c.boot_time = HumanDuration(Duration::ZERO);
        c.metric_window = HumanDuration(Duration::from_secs(1));
        c.cost.backend_per_hour = 0.0;
        c
    }

    /// One balancer's reading with `concurrency` requests in flight, `active` backends.
    fn reading(concurrency: u64, active: u32) -> [Option<Reading>; 1] {
        [Some(Reading {
            in_flight: concurrency,
            active_backends: active,
            ..Reading::default()
        })]
    }

    /// The ids `commands` retires; panics on any other command.
    fn retirements(commands: &[Command]) -> Vec<String> {
        commands
            .iter()
            .map(|c| match c {
                Command::Retire(i) => i.id.clone(),
                other => panic!("only retirements: {other:?}"),
            })
            .collect()
    }

    /// Launches what `commands` asks for and reports every one launched and ready.
    fn boot_all(step: &mut ControlStep, commands: Vec<Command>, now: Nanos, names: &mut u32) {
        for c in commands {
            if let Command::Launch { ticket, .. } = c {
                *names += 1;
                let instance = Instance {
                    id: format!("i{names}"),
                    address: format!("127.0.0.1:{}", 9000 + *names),
                };
                let (next, _) = step.report(
                    Report::Launched {
                        ticket,
                        instance: instance.clone(),
                    },
                    now,
                );
                assert_eq!(next, Some(Command::Boot(instance.clone())));
                let (next, _) = step.report(Report::Ready { id: instance.id }, now);
                assert!(matches!(next, Some(Command::Admit(_))));
            }
        }
    }

    #[test]
    fn the_median_of_measured_boot_times_reaches_the_decider() {
        let mut step = ControlStep::fixed(1, CostMeter::new(0.0, 0));
        assert_eq!(step.measured_boot, None);
        step.set_boot_times(&[
            Duration::from_secs(9),
            Duration::from_secs(1),
            Duration::from_secs(2),
        ]);
        assert_eq!(step.measured_boot, Some(2_000_000_000));
        step.set_boot_times(&[]);
        assert_eq!(step.measured_boot, None);
    }

    #[test]
    fn launch_boot_ready_then_scale_in_and_retire() {
        let mut step = ControlStep::new(&cfg(OverloadMode::Queue), 10);
        let mut names = 0;
        let start = step.start(0);
        assert_eq!(start.len(), 2, "min at start");
        assert_eq!(step.members().starting(), 2);
        boot_all(&mut step, start, 0, &mut names);
        assert_eq!(step.members().serving().len(), 2);
        // 20 in flight at 4 per backend: 5 backends.
        step.observe(10 * S, &reading(20, 2));
        let t = step.tick(10 * S);
        assert_eq!(t.direction, Direction::Up, "{:?}", t.decision);
        assert_eq!(t.commands.len(), 3);
        assert_eq!(step.members().current(), 5);
        boot_all(&mut step, t.commands, 10 * S, &mut names);
        // Load falls to 8: 2 backends; the newest go first.
        step.observe(20 * S, &reading(8, 5));
        let t = step.tick(20 * S);
        assert_eq!(t.direction, Direction::Down, "{:?}", t.decision);
        let retired = retirements(&t.commands);
        let mut newest = retired.clone();
        newest.sort();
        assert_eq!(newest, vec!["i3", "i4", "i5"], "the three launched last");
        assert_eq!(step.members().current(), 2);
        assert_eq!(
            step.members().paid(),
            5,
            "draining ones are paid until gone"
        );
        for id in retired {
            step.report(Report::Retired { id }, 30 * S);
        }
        assert_eq!(step.members().paid(), 2);
        assert_eq!(step.meter().count(), 2);
        assert_eq!(step.events().unwrap().decisions_total(Direction::Up), 1);
    }

    #[test]
    fn a_crashed_backend_is_forgotten_and_replaced() {
        let mut step = ControlStep::new(&cfg(OverloadMode::Queue), 10);
        let mut names = 0;
        let start = step.start(0);
        boot_all(&mut step, start, 0, &mut names);
        let (next, change) = step.report(
            Report::Lost {
                id: "i1".into(),
                why: "process exited (signal 9)".into(),
            },
            S,
        );
        assert!(matches!(next, Some(Command::Forget(i)) if i.id == "i1"));
        assert!(matches!(change, Change::Failed(_)));
        step.observe(S, &reading(0, 1));
        let t = step.tick(S);
        assert_eq!(
            t.commands
                .iter()
                .filter(|c| matches!(c, Command::Launch { .. }))
                .count(),
            1,
            "raised back to min: {:?}",
            t.decision
        );
    }

    #[test]
    fn a_failed_launch_is_tried_again_at_the_next_tick() {
        let mut step = ControlStep::new(&cfg(OverloadMode::Queue), 10);
        let start = step.start(0);
        for c in start {
            let Command::Launch { ticket, .. } = c else {
                panic!()
            };
            let (next, change) = step.report(
                Report::LaunchFailed {
                    ticket,
                    why: "no such image".into(),
                },
                0,
            );
            assert_eq!(next, None);
            assert!(matches!(change, Change::Failed(w) if w.contains("no such image")));
        }
        assert_eq!(step.members().paid(), 0);
        step.observe(S, &reading(0, 0));
        assert_eq!(step.tick(S).commands.len(), 2);
    }

    /// Overload beyond the cap: the action follows `[autoscaler] overload`, and is reported only
    /// when it changes.
    #[test]
    fn the_overload_action_for_queue_shed_and_both() {
        for (mode, expected) in [
            (OverloadMode::Queue, OverloadAction::Queue),
            (OverloadMode::Shed, OverloadAction::Shed),
            (
                OverloadMode::Both,
                OverloadAction::QueueThenShed { max_queue: 7 },
            ),
        ] {
            let mut step = ControlStep::new(&cfg(mode), 10);
            let mut names = 0;
            let start = step.start(0);
            boot_all(&mut step, start, 0, &mut names);
            step.observe(10 * S, &reading(100, 2));
            let t = step.tick(10 * S);
            assert_eq!(t.overload, Some(expected), "{mode:?}: {:?}", t.decision);
            assert_eq!(step.overload(), expected);
            boot_all(&mut step, t.commands, 10 * S, &mut names);
            step.observe(20 * S, &reading(100, 6));
            assert_eq!(
                step.tick(20 * S).overload,
                None,
                "unchanged: not reported again"
            );
            step.observe(30 * S, &reading(4, 6));
            let calm = step.tick(30 * S);
            assert_eq!(calm.overload, Some(OverloadAction::None), "{mode:?}");
        }
    }

    #[test]
    fn the_queue_limit_of_each_action_stays_within_the_balancers_bound() {
        assert_eq!(OverloadAction::None.queue_limit(100), 100);
        assert_eq!(OverloadAction::Queue.queue_limit(100), 100);
        assert_eq!(OverloadAction::Shed.queue_limit(100), 0);
        let both = |n| OverloadAction::QueueThenShed { max_queue: n };
        assert_eq!(both(7).queue_limit(100), 7);
        assert_eq!(
            both(500).queue_limit(100),
            100,
            "never above [overload] max_queue"
        );
    }

    #[test]
    fn a_fixed_fleet_replaces_what_it_loses_and_never_decides() {
        let mut step = ControlStep::fixed(3, CostMeter::new(0.0, 0));
        let mut names = 0;
        let start = step.start(0);
        assert_eq!(start.len(), 3);
        boot_all(&mut step, start, 0, &mut names);
        assert_eq!(step.tick(S).commands, vec![]);
        step.report(
            Report::Lost {
                id: "i2".into(),
                why: "gone".into(),
            },
            S,
        );
        let t = step.tick(2 * S);
        assert_eq!(t.commands.len(), 1);
        assert!(t.decision.is_none() && step.events().is_none());
    }

    /// Two kinds (large: 8 workers, 60 s boot, 0.03 per worker-hour; small: 2 workers, 2 s
    /// boot, 0.05), reference backends of 4 workers, billed by the second.
    fn kinds_step() -> ControlStep {
        let mut c = cfg(OverloadMode::Queue);
        c.cost.billing_period = HumanDuration(Duration::ZERO);
        c.stable_window = HumanDuration(Duration::from_secs(10));
        let text = "[provider]\n[[provider.kinds]]\nname = \"large\"\nworkers = 8\n\
                    cost_per_hour = 0.24\nboot_time = \"60s\"\n[[provider.kinds]]\n\
                    name = \"small\"\nworkers = 2\ncost_per_hour = 0.1\nboot_time = \"2s\"\n\
                    [autoscaler]\n";
        let provider = ebbtide_config::Config::from_toml(text, "k.toml")
            .unwrap()
            .provider
            .unwrap();
        ControlStep::new(&c, 10).with_kinds(&provider, &c)
    }

    /// Launches what `commands` asks for, named `{kind}-{n}`; returns their ids.
    fn launch_kinds(step: &mut ControlStep, commands: Vec<Command>, now: Nanos) -> Vec<String> {
        let mut ids = Vec::new();
        for c in commands {
            if let Command::Launch { ticket, kind } = c {
                let kind = kind.expect("every launch names its kind");
                let id = format!("{kind}-{}", ids.len() + now as usize);
                let instance = Instance {
                    id: id.clone(),
                    address: String::new(),
                };
                step.report(Report::Launched { ticket, instance }, now);
                ids.push(id);
            }
        }
        ids
    }

    #[test]
    fn with_kinds_the_base_is_large_the_rest_small_and_the_small_go_first() {
        let mut step = kinds_step();
        // min 2 reference backends = 8 workers: one large for the base; it boots for 60 s, so
        // 4 small cover the start meanwhile.
        let start = step.start(0);
        let ids = launch_kinds(&mut step, start, 0);
        let large: Vec<&String> = ids.iter().filter(|i| i.starts_with("large")).collect();
        assert_eq!((large.len(), ids.len()), (1, 5), "{ids:?}");
        for id in ids.iter().filter(|i| i.starts_with("small")) {
            step.report(Report::Ready { id: id.clone() }, 2 * S);
        }
        // Loaded at 16 in flight (4 reference backends): the planner adds 4 small at once.
        step.observe(10 * S, &reading(16, 5));
        let t = step.tick(10 * S);
        let more = launch_kinds(&mut step, t.commands, 10 * S);
        assert_eq!(more.len(), 4, "{:?}", t.decision);
        assert!(more.iter().all(|i| i.starts_with("small")));
        for id in &more {
            step.report(Report::Ready { id: id.clone() }, 12 * S);
        }
        step.report(
            Report::Ready {
                id: large[0].clone(),
            },
            60 * S,
        );
        // Load back to 4 in flight (min): the 16 workers beyond the large one's 8 are small,
        // the dear kind, and go; the large one stays.
        step.observe(70 * S, &reading(4, 9));
        let t = step.tick(70 * S);
        let retired = retirements(&t.commands);
        assert_eq!(retired.len(), 8, "{:?}", t.decision);
        assert!(
            retired.iter().all(|i| i.starts_with("small")),
            "{retired:?}"
        );
        let d = t.decision.unwrap();
        assert_eq!(d.inputs["kind_large"], 1.0);
        assert_eq!(d.inputs["kind_small"], 0.0);
        assert!(
            d.reason.contains("retiring the dearest per worker first"),
            "{}",
            d.reason
        );
        // Billed per kind: the retired ones are paid until they are gone.
        assert_eq!(step.meter().kind_count(1), 8);
        for id in retired {
            step.report(Report::Retired { id }, 71 * S);
        }
        assert_eq!(
            (step.meter().kind_count(0), step.meter().kind_count(1)),
            (1, 0)
        );
    }
}
