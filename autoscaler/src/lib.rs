//! ebbtide's autoscaler: signal windows, deciders, the cost model and providers. The autoscaler
//! issue builds it; until then the balancer runs a fixed local fleet.
