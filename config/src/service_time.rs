//! Service-time distributions, shared by `ebbtide backend` and the simulator (filled in by the
//! backend-sim work).
