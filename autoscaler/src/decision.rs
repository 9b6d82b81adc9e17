//! What a decider answers: how many backends, why (in words, with the numbers), and what the
//! balancer should do meanwhile with load the fleet cannot serve.

use serde::Serialize;
use std::collections::BTreeMap;

/// How the balancer treats demand beyond the ready fleet while the fleet is at its cap or new
/// backends are still booting (`autoscaler.overload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum OverloadAction {
    /// Not overloaded: the balancer's own `[overload]` settings apply.
    #[default]
    None,
    /// Let requests wait for a backend (bounded by `[overload]`).
    Queue,
    /// Answer 503 to requests no backend can take now: queue nothing.
    Shed,
    /// Queue up to `max_queue` requests, shed beyond.
    QueueThenShed {
        /// Requests allowed to wait.
        max_queue: u32,
    },
}

impl OverloadAction {
    /// The bound the balancer's wait queue should have under this action, given its own
    /// `[overload] max_queue`. Never above that bound: it is the memory the operator allowed
    /// the queue, and an autoscaler (in process or remote) must not raise it.
    pub fn queue_limit(self, configured: usize) -> usize {
        match self {
            OverloadAction::None | OverloadAction::Queue => configured,
            OverloadAction::Shed => 0,
            OverloadAction::QueueThenShed { max_queue } => (max_queue as usize).min(configured),
        }
    }
}

/// Which way a decision moves the fleet, for the `decisions_total{direction}` metric and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// More backends.
    Up,
    /// Fewer backends.
    Down,
    /// No change.
    Hold,
}

impl Direction {
    /// From the current count (ready + starting) to the desired one.
    pub fn between(current: u32, desired: u32) -> Direction {
        match desired.cmp(&current) {
            std::cmp::Ordering::Greater => Direction::Up,
            std::cmp::Ordering::Less => Direction::Down,
            std::cmp::Ordering::Equal => Direction::Hold,
        }
    }

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Hold => "hold",
        }
    }
}

/// One decision of a decider.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Backends to have, ready plus starting, within min, max and the budget.
    pub desired: u32,
    /// What the signals ask for before min, max, the budget and rate limits: above `desired`
    /// means the fleet is capped and the overload action matters.
    pub wanted: u32,
    /// Why, in words, with the numbers that led there.
    pub reason: String,
    /// Whether the decider is in panic mode (reacting to its short window).
    pub panic: bool,
    /// The numbers the decision was made from, by name (window averages, targets, limits).
    pub inputs: BTreeMap<String, f64>,
    /// What the balancer should do with demand the ready fleet cannot serve.
    pub overload: OverloadAction,
    /// When scaling in, which backends to remove now (chosen by the cost rules by billing);
    /// empty when the caller chooses, or nothing is removed.
    pub remove: Vec<String>,
    /// With instance kinds: the kind of each backend this decision launched (the kind
    /// planner's choice); empty without kinds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub launch_kinds: Vec<String>,
}

impl Decision {
    /// A decision with no inputs recorded yet.
    pub fn new(desired: u32, wanted: u32, reason: impl Into<String>) -> Decision {
        Decision {
            desired,
            wanted,
            reason: reason.into(),
            panic: false,
            inputs: BTreeMap::new(),
            overload: OverloadAction::None,
            remove: Vec::new(),
            launch_kinds: Vec::new(),
        }
    }

    /// Records an input number (builder style).
    pub fn input(mut self, name: &str, value: f64) -> Decision {
        self.inputs.insert(name.to_string(), value);
        self
    }

    /// The direction from `current` backends.
    pub fn direction(&self, current: u32) -> Direction {
        Direction::between(current, self.desired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_serialise_with_their_inputs() {
        let d = Decision::new(3, 5, "because")
            .input("stable_concurrency", 12.5)
            .input("target", 4.0);
        let d = Decision {
            overload: OverloadAction::QueueThenShed { max_queue: 7 },
            ..d
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["desired"], 3);
        assert_eq!(v["wanted"], 5);
        assert_eq!(v["inputs"]["stable_concurrency"], 12.5);
        assert_eq!(v["overload"]["action"], "queue_then_shed");
        assert_eq!(v["overload"]["max_queue"], 7);
        assert_eq!(d.direction(2), Direction::Up);
        assert_eq!(d.direction(3), Direction::Hold);
        assert_eq!(Direction::Down.name(), "down");
    }
}
