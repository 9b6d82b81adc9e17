//! ebbtide's autoscaler: signal windows, deciders, the cost rules and billing, the control plane
//! and providers.
//!
//! The brains are sans-IO (time passed in as [`ebbtide_config::time::Nanos`], no tokio, no
//! sockets), so `ebbtide serve`, `ebbtide autoscale` and the discrete-event simulator drive the
//! same code: the [`ControlStep`] samples balancer [`Reading`]s into [`Windows`], asks the
//! decider [`build`] makes from `[autoscaler]` (wrapped in [`CostRules`]), records the
//! [`Decision`] in an [`EventLog`], plans launches and drains over its fleet, and bills it in a
//! [`CostMeter`]. The IO side is the [`Driver`] around the step, [`Provider`]s (which start and
//! stop backends) and [`Membership`] (which tells balancers about them).

#![warn(missing_docs, unreachable_pub)]

mod billing;
pub mod control;
pub mod deciders;
mod decision;
pub mod erlang;
mod events;
mod fleet;
pub mod leader;
pub mod providers;
mod signals;
mod windows;

#[cfg(test)]
mod testkit;

pub use billing::CostMeter;
pub use control::{ControlStep, Driver, Membership};
pub use deciders::CostRules;
pub use deciders::{build, build_decider, Decider};
pub use decision::{Decision, Direction, OverloadAction};
pub use events::{EventLog, ScalingEvent};
pub use fleet::{BackendState, FleetView, Member};
pub use providers::{Instance, Provider};
pub use signals::{Reading, Sampler, SignalSource};
pub use windows::{Observation, WindowAverages, Windows};
