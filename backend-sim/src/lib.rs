//! ebbtide's simulated backend (`ebbtide backend`), open-loop load generator (`ebbtide load`) and,
//! later, the discrete-event simulator (`ebbtide simulate`).

pub mod backend;
pub mod load;
pub mod simulate;
pub mod timer;
