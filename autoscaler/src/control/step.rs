//! One tick of the autoscaler, sans-IO: the balancers' readings and the fleet in, a plan out.
//! `ebbtide serve`, `ebbtide autoscale` and the simulator all run this step, so what the
//! simulator says about scaling is what the live loop does.
//!
//! Each interval: [`ControlStep::observe`] turns the readings into an observation (rates over
//! the interval, the fleet's latency) and feeds the windows; [`ControlStep::tick`] asks the
//! decider (wrapped in the cost rules), records the decision, and plans launches, drains and the
//! overload action. What the provider and the balancers then do comes back through
//! [`ControlStep::report`].

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

/// The autoscaler's state between ticks.
pub struct ControlStep {
    rule: Rule,
    members: Members,
    meter: CostMeter,
    desired: u32,
    overload: OverloadAction,
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
            measured_boot: None,
        }
    }

    /// A fleet of `count` backends kept running, with no decider, costed by `meter`.
    pub fn fixed(count: u32, meter: CostMeter) -> ControlStep {
        ControlStep {
            rule: Rule::Fixed(count),
            members: Members::new(),
            meter,
            desired: count,
            overload: OverloadAction::None,
            measured_boot: None,
        }
    }

    /// The backends to launch at start (`min`, or the fixed count), before any signal.
    pub fn start(&mut self, now: Nanos) -> Vec<Command> {
        let want = match &self.rule {
            Rule::Decider { min, .. } => *min,
            Rule::Fixed(n) => *n,
        };
        let commands = self.launch_up_to(want, now);
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
        if let Rule::Decider { sampler, .. } = &mut self.rule {
            sampler.observe(now, readings, self.members.starting());
        }
    }

    /// One reading per balancer (`None` for one that did not answer) into the windows.
    pub fn observe(&mut self, now: Nanos, readings: &[Option<Reading>]) {
        if let Rule::Decider {
            sampler, windows, ..
        } = &mut self.rule
        {
            windows.observe(sampler.observe(now, readings, self.members.starting()));
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

    /// Launches what `commands` asks for and reports every one launched and ready.
    fn boot_all(step: &mut ControlStep, commands: Vec<Command>, now: Nanos, names: &mut u32) {
        for c in commands {
            if let Command::Launch { ticket } = c {
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
        let retired: Vec<String> = t
            .commands
            .iter()
            .map(|c| match c {
                Command::Retire(i) => i.id.clone(),
                other => panic!("only retirements: {other:?}"),
            })
            .collect();
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
            let Command::Launch { ticket } = c else {
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
}
