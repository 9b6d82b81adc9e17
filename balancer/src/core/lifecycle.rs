//! The backend lifecycle as one pure transition function: which event moves a backend from
//! which state to which. No IO, no atomics, no clock: [`transition`] is a table, and
//! [`crate::registry::Backend::apply`] is the only place that writes a backend's state, with one
//! compare-and-swap that calls it. Probes, lease expiry, the admin API, outlier detection and the
//! provider all say what happened (an [`Event`]); none of them reads the state and then sets it,
//! so a probe that passes cannot undo a drain that started a moment before.
//!
//! # Rules (README, "Backend lifecycle")
//!
//! States: `starting` -> `active` -> `draining` -> removed, plus `ejected`.
//!
//! - **Health** (`[health]`, like HAProxy's `rise`/`fall`): a new backend is `starting` until its
//!   first probe passes ([`Event::ProbePassed`]), then `active`; an active one is `ejected` after
//!   `fall` failed probes in a row ([`Event::ProbesFailed`]) and comes back after `rise` passes in
//!   a row ([`Event::ProbePassed`] with `recovered`). A starting backend that fails its probes
//!   stays `starting`: it is still booting.
//! - **Passive outlier detection** (`[outlier]`, Envoy's consecutive-errors detector): only an
//!   `active` backend is ejected ([`Event::OutlierEjected`]): a starting one gets no traffic, an
//!   ejected one is already out. It comes back when its ejection time is over: at once without
//!   active checks ([`Event::EjectionOver`]; Envoy's "uneject" after `base_ejection_time x n`),
//!   with them only on `rise` passing probes once the time is over (as Envoy, where a host
//!   flagged by both active health checking and outlier detection needs both flags cleared).
//! - **Draining**: lease expiry ([`Event::LeaseExpired`]), `DELETE /api/v1/backends/{id}`
//!   ([`Event::AdminDelete`]) and the provider stopping an instance ([`Event::ProviderDrain`])
//!   move any other state to `draining`. Draining is terminal except for removal: no probe,
//!   readiness or end of ejection brings a draining backend back, and a second drain request
//!   does not apply (one drain is under way already).
//! - **Provider**: a backend ebbtide started is `starting` until the provider says it answers
//!   ([`Event::ProviderReady`]); readiness means nothing in any other state.
//! - **Removal** ([`Event::Removed`]): the registry drops the backend, from any state (a drain
//!   that finished, or an instance that never booted). What is left of it (a probe or a request
//!   still holding it) reads `draining`, so nothing sends to it or brings it back.
//!
//! # The table
//!
//! | from \ event | ProbePassed | ProbePassed (recovered) | ProbesFailed | OutlierEjected | EjectionOver | LeaseExpired, AdminDelete, ProviderDrain | ProviderReady | Removed |
//! |---|---|---|---|---|---|---|---|---|
//! | starting | active | active | - | - | - | draining | active | draining |
//! | active | - | - | ejected | ejected | - | draining | - | draining |
//! | ejected | - | active | - | - | active | draining | - | draining |
//! | draining | - | - | - | - | - | - | - | draining |
//!
//! `-`: the event does not apply ([`transition`] returns None).

/// The one set of state names, shared with the autoscaler and the simulator.
pub use ebbtide_config::BackendState;

/// Something that happened to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A health probe passed. `recovered`: the backend was seen `ejected` when the probe was
    /// judged, this pass completes `[health] rise` passes in a row, and any outlier ejection
    /// time is over. Without it, a pass only activates a `starting` backend (its first pass).
    ProbePassed {
        /// Rise reached and no outlier ejection time left.
        recovered: bool,
    },
    /// `[health] fall` probes failed in a row.
    ProbesFailed,
    /// Passive outlier detection: `[outlier] consecutive_failures` failures in a row, and the
    /// fleet guard (`max_ejected_share`, never the last backend) allowed the ejection.
    OutlierEjected,
    /// An outlier ejection's time is over and there are no active health checks.
    EjectionOver,
    /// A registration lease ran out without a renewal.
    LeaseExpired,
    /// `DELETE /api/v1/backends/{id}`.
    AdminDelete,
    /// The provider's instance answers: a backend ebbtide started is ready.
    ProviderReady,
    /// The provider is stopping the instance (scale-in, shutdown).
    ProviderDrain,
    /// The backend left the registry.
    Removed,
}

impl Event {
    /// Every event (both kinds of passing probe), for tables and tests.
    pub const ALL: [Event; 10] = [
        Event::ProbePassed { recovered: false },
        Event::ProbePassed { recovered: true },
        Event::ProbesFailed,
        Event::OutlierEjected,
        Event::EjectionOver,
        Event::LeaseExpired,
        Event::AdminDelete,
        Event::ProviderReady,
        Event::ProviderDrain,
        Event::Removed,
    ];
}

/// The state `event` moves a backend in state `from` to; None when the event does not apply
/// in that state (the module docs give every rule and the whole table).
pub fn transition(from: BackendState, event: Event) -> Option<BackendState> {
    use BackendState::*;
    match (from, event) {
        // Removal is the one event a draining backend still takes; it reads draining after.
        (_, Event::Removed) => Some(Draining),
        // Draining is terminal.
        (Draining, _) => None,
        (_, Event::LeaseExpired | Event::AdminDelete | Event::ProviderDrain) => Some(Draining),
        // First pass of a new backend (health), or the provider's word that it answers.
        (Starting, Event::ProbePassed { .. } | Event::ProviderReady) => Some(Active),
        (Active, Event::ProbesFailed | Event::OutlierEjected) => Some(Ejected),
        (Ejected, Event::ProbePassed { recovered: true } | Event::EjectionOver) => Some(Active),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::BackendState::{Active, Draining, Ejected, Starting};
    use super::*;
    use crate::clock::Clock;
    use crate::registry::{BackendSpec, Origin, Registry, RegistryConfig};
    use std::sync::{Arc, Barrier};

    /// One state's row: each event and where it leads.
    type Row = [(Event, Option<BackendState>); 10];

    /// The whole table, written out: every state x every event.
    #[test]
    fn transition_table_is_exhaustive() {
        let pass = Event::ProbePassed { recovered: false };
        let recovered = Event::ProbePassed { recovered: true };
        #[rustfmt::skip]
        let table: [(BackendState, Row); 4] = [
            (Starting, [
                (pass, Some(Active)), (recovered, Some(Active)), (Event::ProbesFailed, None),
                (Event::OutlierEjected, None), (Event::EjectionOver, None),
                (Event::LeaseExpired, Some(Draining)), (Event::AdminDelete, Some(Draining)),
                (Event::ProviderReady, Some(Active)), (Event::ProviderDrain, Some(Draining)),
                (Event::Removed, Some(Draining)),
            ]),
            (Active, [
                (pass, None), (recovered, None), (Event::ProbesFailed, Some(Ejected)),
                (Event::OutlierEjected, Some(Ejected)), (Event::EjectionOver, None),
                (Event::LeaseExpired, Some(Draining)), (Event::AdminDelete, Some(Draining)),
                (Event::ProviderReady, None), (Event::ProviderDrain, Some(Draining)),
                (Event::Removed, Some(Draining)),
            ]),
            (Draining, [
                (pass, None), (recovered, None), (Event::ProbesFailed, None),
                (Event::OutlierEjected, None), (Event::EjectionOver, None),
                (Event::LeaseExpired, None), (Event::AdminDelete, None),
                (Event::ProviderReady, None), (Event::ProviderDrain, None),
                (Event::Removed, Some(Draining)),
            ]),
            (Ejected, [
                (pass, None), (recovered, Some(Active)), (Event::ProbesFailed, None),
                (Event::OutlierEjected, None), (Event::EjectionOver, Some(Active)),
                (Event::LeaseExpired, Some(Draining)), (Event::AdminDelete, Some(Draining)),
                (Event::ProviderReady, None), (Event::ProviderDrain, Some(Draining)),
                (Event::Removed, Some(Draining)),
            ]),
        ];
        // The table covers every state and, for each, every event exactly once.
        let states: Vec<_> = table.iter().map(|(s, _)| *s).collect();
        assert_eq!(states, BackendState::ALL);
        for (from, row) in &table {
            let events: Vec<_> = row.iter().map(|(e, _)| *e).collect();
            assert_eq!(events, Event::ALL, "row {from:?}");
            for (event, want) in row {
                assert_eq!(transition(*from, *event), *want, "{from:?} x {event:?}");
            }
        }
    }

    #[test]
    fn nothing_leaves_draining_but_removal() {
        for e in Event::ALL {
            let to = transition(Draining, e);
            assert!(to.is_none() || to == Some(Draining), "{e:?} -> {to:?}");
        }
    }

    #[test]
    fn state_round_trips_through_u8() {
        for s in BackendState::ALL {
            assert_eq!(BackendState::from_u8(s as u8), s);
        }
    }

    fn backend(state: BackendState) -> Arc<crate::registry::Backend> {
        let r = Registry::new(RegistryConfig::defaults(), Clock::new());
        let spec = BackendSpec::plain("127.0.0.1:1", Origin::Api);
        r.add_or_renew(spec, state).unwrap().0
    }

    /// A passing probe and a drain, released together, many times over: whichever lands first,
    /// the backend ends draining. A read-then-set (load the state, decide, store) loses the drain
    /// when the probe's store lands after it.
    #[test]
    fn a_passing_probe_never_undoes_a_drain() {
        const ROUNDS: usize = 20_000;
        let drains = [
            Event::AdminDelete,
            Event::LeaseExpired,
            Event::ProviderDrain,
        ];
        let cases = [
            (Starting, Event::ProbePassed { recovered: false }),
            (Starting, Event::ProviderReady),
            (Ejected, Event::ProbePassed { recovered: true }),
            (Ejected, Event::EjectionOver),
        ];
        let go = Arc::new(Barrier::new(2));
        let (tx, rx) = std::sync::mpsc::channel::<Option<(Arc<crate::registry::Backend>, Event)>>();
        let probe_go = go.clone();
        let prober = std::thread::spawn(move || {
            while let Some((b, e)) = rx.recv().unwrap() {
                probe_go.wait();
                b.apply(e);
                probe_go.wait();
            }
        });
        let mut order = [0usize; 2];
        for round in 0..ROUNDS {
            let (start, probe) = cases[round % cases.len()];
            let b = match start {
                Ejected => {
                    let b = backend(Active);
                    assert_eq!(b.apply(Event::ProbesFailed), Some((Active, Ejected)));
                    b
                }
                s => backend(s),
            };
            tx.send(Some((b.clone(), probe))).unwrap();
            go.wait();
            let drained = b.apply(drains[round % drains.len()]);
            go.wait();
            // Either the drain found the starting/ejected state, or the probe's active one.
            let from = drained
                .expect("a drain applies to every state but draining")
                .0;
            order[usize::from(from == Active)] += 1;
            assert_eq!(b.state(), Draining, "round {round}: {start:?} + {probe:?}");
        }
        tx.send(None).unwrap();
        prober.join().unwrap();
        eprintln!("drain first: {}, probe first: {}", order[0], order[1]);
    }
}
