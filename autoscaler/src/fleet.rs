//! What a decider sees of the fleet: counts by state, the configured bounds, and each member's
//! launch time (which the cost rules need to know who is paid until when).

use ebbtide_config::time::Nanos;
pub use ebbtide_config::BackendState;
use serde::Serialize;

/// One backend of the fleet, for the billing-aware choice of which to remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// The provider's id for it; what a decision's `remove` names.
    pub id: String,
    /// When it was launched: billing periods count from here.
    pub launched_at: Nanos,
    /// Its state.
    pub state: BackendState,
}

/// The fleet as the control loop (or the simulator) knows it at decision time.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct FleetView {
    /// Backends serving.
    pub ready: u32,
    /// Backends launched and not yet ready.
    pub starting: u32,
    /// Backends being removed.
    pub draining: u32,
    /// `autoscaler.min`.
    pub min: u32,
    /// `autoscaler.max`.
    pub max: u32,
    /// Each backend with its launch time, when known; empty means the cost rules cannot choose
    /// which backend to remove and leave that to the caller.
    pub members: Vec<Member>,
    /// Launch-to-ready time the provider measured (the median of its recent launches); the
    /// cost rules use it in place of the configured `boot_time` when present.
    pub measured_boot: Option<Nanos>,
}

impl FleetView {
    /// A fleet known only by its counts.
    pub fn counts(ready: u32, starting: u32, min: u32, max: u32) -> FleetView {
        FleetView {
            ready,
            starting,
            draining: 0,
            min,
            max,
            members: Vec::new(),
            measured_boot: None,
        }
    }

    /// A fleet known backend by backend; the counts are taken from the members.
    pub fn from_members(members: Vec<Member>, min: u32, max: u32) -> FleetView {
        let count = |s| members.iter().filter(|m| m.state == s).count() as u32;
        FleetView {
            ready: count(BackendState::Active),
            starting: count(BackendState::Starting),
            draining: count(BackendState::Draining),
            min,
            max,
            members,
            measured_boot: None,
        }
    }

    /// Backends that count toward the fleet size: ready plus starting. A decision's `desired`
    /// is compared with this.
    pub fn current(&self) -> u32 {
        self.ready + self.starting
    }

    /// `desired` within [min, max].
    pub fn clamp(&self, desired: u32) -> u32 {
        desired.clamp(self.min, self.max.max(self.min))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_come_from_members() {
        let m = |id: &str, state| Member {
            id: id.into(),
            launched_at: 0,
            state,
        };
        let f = FleetView::from_members(
            vec![
                m("a", BackendState::Active),
                m("b", BackendState::Active),
                m("c", BackendState::Starting),
                m("d", BackendState::Draining),
            ],
            1,
            5,
        );
        assert_eq!((f.ready, f.starting, f.draining), (2, 1, 1));
        assert_eq!(f.current(), 3);
        assert_eq!(f.clamp(9), 5);
        assert_eq!(f.clamp(0), 1);
    }
}
