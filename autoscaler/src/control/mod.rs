//! The control plane: the autoscaler's loop as a sans-IO step ([`ControlStep`], with the fleet it
//! manages in [`Members`]) and the async driver around it ([`driver`]) that talks to traits for
//! signals ([`crate::SignalSource`]), membership ([`Membership`]: registering with balancers)
//! and providers ([`crate::Provider`]). The simulator runs the same step in virtual time.

pub mod driver;
pub mod kinds;
mod members;
mod step;

pub use driver::{Driver, Membership, Shared};
pub use kinds::{KindPlan, KindPlanner, KindSpec, PlannedBackend};
pub use members::{Change, Command, KindedMember, Members, Report};
pub use step::{ControlStep, Tick};
