//! ebbtide's simulated backend (`ebbtide backend`), open-loop load generator (`ebbtide load`) and
//! discrete-event simulator (`ebbtide simulate`), which runs the balancer's policies and dispatch
//! rule and the autoscaler's control step in virtual time.

#![warn(missing_docs, unreachable_pub)]

pub mod backend;
pub mod load;
pub mod simulate;
pub mod timer;
