//! ebbtide's autoscaler: signal windows, deciders, the cost model and providers. For now it holds
//! the local provider, which starts backend processes on this machine; the autoscaler issue adds
//! the deciders that choose how many.

pub mod providers;
