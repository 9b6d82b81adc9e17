//! The record of decisions: each with its reason and inputs, serde-serialisable, so the admin
//! API can show the recent ones at `/api/v1/events` and the metrics can count them by
//! direction. Bounded: the oldest go first, and a run of identical holds is kept as one entry
//! with a repeat count (a steady fleet would otherwise push every change out within minutes).

use crate::decision::{Decision, Direction};
use ebbtide_config::time::Nanos;
use serde::Serialize;
use std::collections::VecDeque;

/// One decision as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScalingEvent {
    /// When it was decided (core time, nanoseconds since the clock's origin).
    pub at: Nanos,
    /// For a run of identical holds, when the last of them was decided; else `at`.
    pub last_at: Nanos,
    /// How many decisions this entry stands for (1, or more for a run of holds).
    pub repeats: u32,
    /// The decider's config name.
    pub decider: String,
    /// Backends (ready + starting) before the decision.
    pub from: u32,
    /// Backends desired.
    pub to: u32,
    /// Up, down or hold.
    pub direction: Direction,
    /// The decision itself: reason, inputs, overload action, backends removed (the latest one
    /// for a run of holds).
    pub decision: Decision,
}

/// The most recent decisions, and counts of all decisions by direction.
#[derive(Debug, Clone)]
pub struct EventLog {
    capacity: usize,
    events: VecDeque<ScalingEvent>,
    up: u64,
    down: u64,
    hold: u64,
}

impl EventLog {
    /// A log keeping at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> EventLog {
        EventLog {
            capacity: capacity.max(1),
            events: VecDeque::new(),
            up: 0,
            down: 0,
            hold: 0,
        }
    }

    /// Records a decision taken at `at` on a fleet of `from` backends (ready + starting);
    /// returns its direction.
    pub fn record(
        &mut self,
        at: Nanos,
        decider: &str,
        from: u32,
        decision: &Decision,
    ) -> Direction {
        let direction = decision.direction(from);
        match direction {
            Direction::Up => self.up += 1,
            Direction::Down => self.down += 1,
            Direction::Hold => self.hold += 1,
        }
        if let Some(last) = self.events.back_mut() {
            // A hold that launches or removes (the kind planner replacing small backends by a
            // large one) is an entry of its own.
            let changes = !decision.remove.is_empty() || !decision.launch_kinds.is_empty();
            let same_hold = direction == Direction::Hold
                && !changes
                && last.direction == Direction::Hold
                && last.to == decision.desired
                && last.decider == decider
                && last.decision.panic == decision.panic
                && last.decision.overload == decision.overload;
            if same_hold {
                last.last_at = at;
                last.repeats += 1;
                last.decision = decision.clone();
                return direction;
            }
        }
        self.events.push_back(ScalingEvent {
            at,
            last_at: at,
            repeats: 1,
            decider: decider.to_string(),
            from,
            to: decision.desired,
            direction,
            decision: decision.clone(),
        });
        while self.events.len() > self.capacity {
            self.events.pop_front();
        }
        direction
    }

    /// Up to `n` most recent entries, newest first.
    pub fn recent(&self, n: usize) -> Vec<&ScalingEvent> {
        self.events.iter().rev().take(n).collect()
    }

    /// Entries kept.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// All decisions ever recorded in one direction, for `decisions_total{direction}`.
    pub fn decisions_total(&self, direction: Direction) -> u64 {
        match direction {
            Direction::Up => self.up,
            Direction::Down => self.down,
            Direction::Hold => self.hold,
        }
    }

    /// The `n` most recent entries as JSON, newest first: the body of `/api/v1/events`.
    pub fn to_json(&self, n: usize) -> serde_json::Value {
        serde_json::to_value(self.recent(n)).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::OverloadAction;

    fn dec(desired: u32, reason: &str) -> Decision {
        Decision::new(desired, desired, reason).input("concurrency", 3.5)
    }

    #[test]
    fn records_changes_and_merges_runs_of_holds() {
        let mut log = EventLog::new(10);
        assert_eq!(
            log.record(1, "concurrency", 2, &dec(4, "up")),
            Direction::Up
        );
        log.record(2, "concurrency", 4, &dec(4, "hold a"));
        log.record(3, "concurrency", 4, &dec(4, "hold b"));
        log.record(4, "concurrency", 4, &dec(4, "hold c"));
        assert_eq!(
            log.record(5, "concurrency", 4, &dec(3, "down")),
            Direction::Down
        );
        assert_eq!(log.len(), 3);
        let recent = log.recent(10);
        assert_eq!(recent[0].direction, Direction::Down);
        let hold = recent[1];
        assert_eq!((hold.at, hold.last_at, hold.repeats), (2, 4, 3));
        assert_eq!(hold.decision.reason, "hold c");
        assert_eq!(log.decisions_total(Direction::Hold), 3);
        assert_eq!(log.decisions_total(Direction::Up), 1);
        assert_eq!(log.decisions_total(Direction::Down), 1);
        // A hold with a different overload action is a new entry.
        let mut d = dec(3, "shedding");
        d.overload = OverloadAction::Shed;
        log.record(6, "concurrency", 3, &d);
        log.record(7, "concurrency", 3, &dec(3, "calm"));
        assert_eq!(log.len(), 5);
    }

    #[test]
    fn keeps_only_the_most_recent() {
        let mut log = EventLog::new(3);
        for i in 0..10u32 {
            log.record(i as u64, "x", i, &dec(i + 1, "up"));
        }
        assert_eq!(log.len(), 3);
        assert_eq!(log.recent(1)[0].to, 10);
        assert_eq!(log.recent(100).len(), 3);
        assert_eq!(log.decisions_total(Direction::Up), 10);
    }

    #[test]
    fn serialises_for_the_admin_api() {
        let mut log = EventLog::new(10);
        log.record(5_000_000_000, "target_tracking", 2, &dec(3, "ratio 1.4"));
        let v = log.to_json(10);
        let e = &v[0];
        assert_eq!(e["at"], 5_000_000_000u64);
        assert_eq!(e["decider"], "target_tracking");
        assert_eq!(e["direction"], "up");
        assert_eq!(e["from"], 2);
        assert_eq!(e["to"], 3);
        assert_eq!(e["decision"]["reason"], "ratio 1.4");
        assert_eq!(e["decision"]["inputs"]["concurrency"], 3.5);
        assert_eq!(e["decision"]["overload"]["action"], "none");
    }
}
