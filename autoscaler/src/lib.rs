//! ebbtide's autoscaler: signal windows, deciders, the cost model and providers.
//!
//! The brains are sans-IO (time passed in as [`ebbtide_config::time::Nanos`], no tokio, no
//! sockets), so `ebbtide serve`, `ebbtide autoscale` and the discrete-event simulator drive the
//! same code: feed [`Observation`]s into [`Windows`], call [`Decider::decide`] on the decider
//! [`build`] makes from `[autoscaler]`, carry out the [`Decision`], record it in an
//! [`EventLog`], and report fleet changes to a [`CostMeter`]. Providers (which start and stop
//! backends) are the IO side.

pub mod billing;
pub mod control;
pub mod deciders;
pub mod decision;
pub mod erlang;
pub mod events;
pub mod fleet;
pub mod providers;
pub mod signals;
pub mod windows;

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
