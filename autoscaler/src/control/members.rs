//! The backends the autoscaler runs, as a plain table with time passed in: launched (a ticket
//! until the provider names the instance), booting, serving, draining, gone. What happens
//! outside (the provider answered, a health check passed, a process died, a drain finished)
//! comes in as a [`Report`]; what the IO around it must do next goes out as [`Command`]s. The
//! live driver and the simulator both keep their fleet here, so they agree on who is paid for,
//! who is booting and which backend a scale-in removes.

use crate::fleet::{BackendState, Member};
use crate::providers::Instance;
use ebbtide_config::time::Nanos;

/// What the IO around the control step must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start one backend; answer with [`Report::Launched`] or [`Report::LaunchFailed`] for this
    /// ticket.
    Launch {
        /// Names the backend until the provider gives it an id.
        ticket: String,
        /// The instance kind to launch (`[[provider.kinds]]`); `None` without kinds.
        kind: Option<String>,
    },
    /// A launched backend is booting: list it with the balancers as starting (no traffic yet)
    /// and wait for its health; answer [`Report::Ready`] or [`Report::NeverReady`].
    Boot(Instance),
    /// It is healthy and still wanted: send it traffic.
    Admit(Instance),
    /// Drain it from the balancers (no new requests, in-flight ones finish), then have the
    /// provider stop it; answer [`Report::Retired`].
    Retire(Instance),
    /// Take it out of the balancers at once: it is gone (crashed, or never became healthy, and
    /// the provider has stopped it already). No answer.
    Forget(Instance),
    /// Have the provider stop it without a drain: it was no longer wanted by the time its launch
    /// finished, so no balancer ever heard of it. No answer.
    Terminate(Instance),
}

/// What happened outside, for [`Members::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The provider started the backend of `ticket`; it may still be booting.
    Launched {
        /// The ticket of the [`Command::Launch`].
        ticket: String,
        /// What the provider started.
        instance: Instance,
    },
    /// The provider could not start the backend of `ticket`.
    LaunchFailed {
        /// The ticket of the [`Command::Launch`].
        ticket: String,
        /// The provider's words.
        why: String,
    },
    /// Its health check passed.
    Ready {
        /// The instance id.
        id: String,
    },
    /// It did not become healthy within the boot timeout (the provider stopped it).
    NeverReady {
        /// The instance id.
        id: String,
        /// Why.
        why: String,
    },
    /// It went away without being asked to (a process exited, a container died).
    Lost {
        /// The instance id.
        id: String,
        /// Why.
        why: String,
    },
    /// A [`Command::Retire`] finished: drained and stopped.
    Retired {
        /// The instance id.
        id: String,
    },
}

/// What a report changed, for logs and counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing the table knew of (a late or repeated report).
    None,
    /// A backend joined or moved within the table.
    Moved,
    /// A backend left the table.
    Left,
    /// A backend that was wanted left without being asked to: a crash, a failed launch or boot.
    /// The next decision replaces it.
    Failed(String),
}

#[derive(Debug, Clone)]
struct Managed {
    /// The ticket while launching, then the provider's id.
    id: String,
    /// Known once the provider answered.
    instance: Option<Instance>,
    launched_at: Nanos,
    state: BackendState,
    /// Its instance kind; `None` without kinds.
    kind: Option<String>,
}

/// One member with its kind, for the kind planner and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindedMember<'a> {
    /// The ticket while launching, then the provider's id.
    pub id: &'a str,
    /// Its instance kind (`None` without kinds).
    pub kind: Option<&'a str>,
    /// Its state.
    pub state: BackendState,
    /// When it was launched.
    pub launched_at: Nanos,
}

/// The fleet the autoscaler manages.
#[derive(Debug, Clone, Default)]
pub struct Members {
    members: Vec<Managed>,
    launches: u64,
}

impl Members {
    /// An empty fleet.
    pub fn new() -> Members {
        Members::default()
    }

    /// Takes in a backend that runs already (the simulator's starting fleet; a provider's
    /// instances from a previous run).
    pub fn adopt(&mut self, instance: Instance, state: BackendState, launched_at: Nanos) {
        self.members.push(Managed {
            id: instance.id.clone(),
            instance: Some(instance),
            launched_at,
            state,
            kind: None,
        });
    }

    /// [`Members::adopt`] for a backend of instance kind `kind`.
    pub fn adopt_kind(
        &mut self,
        instance: Instance,
        state: BackendState,
        launched_at: Nanos,
        kind: &str,
    ) {
        self.adopt(instance, state, launched_at);
        if let Some(m) = self.members.last_mut() {
            m.kind = Some(kind.to_string());
        }
    }

    /// Orders one backend: counted (as starting, and paid) at once, so the next decision does
    /// not order it again.
    pub fn launch(&mut self, now: Nanos) -> Command {
        self.launch_kind(now, None)
    }

    /// [`Members::launch`] of a backend of instance kind `kind`.
    pub fn launch_kind(&mut self, now: Nanos, kind: Option<&str>) -> Command {
        let ticket = format!("launching-{}", self.launches);
        self.launches += 1;
        let kind = kind.map(str::to_string);
        self.members.push(Managed {
            id: ticket.clone(),
            instance: None,
            launched_at: now,
            state: BackendState::Starting,
            kind: kind.clone(),
        });
        Command::Launch { ticket, kind }
    }

    /// Every member with its kind.
    pub fn kinded(&self) -> Vec<KindedMember<'_>> {
        self.members
            .iter()
            .map(|m| KindedMember {
                id: &m.id,
                kind: m.kind.as_deref(),
                state: m.state,
                launched_at: m.launched_at,
            })
            .collect()
    }

    /// The instance kind of member `id` (`None` when unknown or without kinds).
    pub fn kind_of(&self, id: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.kind.as_deref())
    }

    /// When the launch of member `id` was decided (None when unknown).
    pub fn launched_at_of(&self, id: &str) -> Option<Nanos> {
        self.members
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.launched_at)
    }

    /// Starts removing `id` (starting or serving). A backend still launching has no instance to
    /// drain yet: it is stopped when its launch finishes.
    pub fn retire(&mut self, id: &str) -> Option<Command> {
        let m = self
            .members
            .iter_mut()
            .find(|m| m.id == id && m.state != BackendState::Draining)?;
        m.state = BackendState::Draining;
        m.instance.clone().map(Command::Retire)
    }

    fn position(&self, id: &str) -> Option<usize> {
        self.members.iter().position(|m| m.id == id)
    }

    /// Takes in what happened outside; returns what to do next and what changed.
    pub fn apply(&mut self, report: Report) -> (Option<Command>, Change) {
        match report {
            Report::Launched { ticket, instance } => {
                let Some(i) = self.position(&ticket) else {
                    // Unknown ticket (shut down meanwhile): stop what was started.
                    return (Some(Command::Terminate(instance)), Change::None);
                };
                if self.members[i].state == BackendState::Draining {
                    // Retired while the provider was launching it: no balancer heard of it.
                    self.members.remove(i);
                    return (Some(Command::Terminate(instance)), Change::Left);
                }
                let m = &mut self.members[i];
                m.id = instance.id.clone();
                m.instance = Some(instance.clone());
                (Some(Command::Boot(instance)), Change::Moved)
            }
            Report::LaunchFailed { ticket, why } => match self.position(&ticket) {
                Some(i) => {
                    let m = self.members.remove(i);
                    let change = if m.state == BackendState::Draining {
                        Change::Left
                    } else {
                        Change::Failed(format!("could not start a backend: {why}"))
                    };
                    (None, change)
                }
                None => (None, Change::None),
            },
            Report::Ready { id } => {
                let Some(m) = self.members.iter_mut().find(|m| m.id == id) else {
                    return (None, Change::None);
                };
                if m.state != BackendState::Starting {
                    // Retired while booting: its drain is under way.
                    return (None, Change::None);
                }
                m.state = BackendState::Active;
                (m.instance.clone().map(Command::Admit), Change::Moved)
            }
            Report::NeverReady { id, why } | Report::Lost { id, why } => {
                let Some(i) = self.position(&id) else {
                    return (None, Change::None);
                };
                let m = self.members.remove(i);
                let change = if m.state == BackendState::Draining {
                    Change::Left
                } else {
                    Change::Failed(why)
                };
                (m.instance.map(Command::Forget), change)
            }
            Report::Retired { id } => match self.position(&id) {
                Some(i) => {
                    self.members.remove(i);
                    (None, Change::Left)
                }
                None => (None, Change::None),
            },
        }
    }

    /// The members as the deciders see them.
    pub fn view(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|m| Member {
                id: m.id.clone(),
                launched_at: m.launched_at,
                state: m.state,
            })
            .collect()
    }

    /// Backends paid for: every one launched and not yet gone, draining ones included (they
    /// run until their in-flight requests finish).
    pub fn paid(&self) -> u32 {
        self.members.len() as u32
    }

    /// Backends counted toward the fleet size: starting and serving, not draining.
    pub fn current(&self) -> u32 {
        self.count(|s| s != BackendState::Draining)
    }

    /// Backends launched and not yet serving.
    pub fn starting(&self) -> u32 {
        self.count(|s| s == BackendState::Starting)
    }

    fn count(&self, f: impl Fn(BackendState) -> bool) -> u32 {
        self.members.iter().filter(|m| f(m.state)).count() as u32
    }

    /// The serving backends, whose registrations the driver renews.
    pub fn serving(&self) -> Vec<Instance> {
        self.members
            .iter()
            .filter(|m| m.state == BackendState::Active)
            .filter_map(|m| m.instance.clone())
            .collect()
    }

    /// Every backend whose instance is known, for the end of the run.
    pub fn instances(&self) -> Vec<Instance> {
        self.members
            .iter()
            .filter_map(|m| m.instance.clone())
            .collect()
    }

    /// Which backends to remove to go from `current` to `desired`: those `named` first (the cost
    /// rules name them by billing), then the newest, starting ones before serving ones (they
    /// serve nobody yet).
    pub fn choose_removals(&self, named: &[String], excess: usize) -> Vec<String> {
        let removable = |m: &&Managed| m.state != BackendState::Draining;
        let mut chosen: Vec<String> = named
            .iter()
            .filter(|id| self.members.iter().filter(removable).any(|m| &m.id == *id))
            .take(excess)
            .cloned()
            .collect();
        chosen.dedup();
        if chosen.len() < excess {
            let mut rest: Vec<&Managed> = self
                .members
                .iter()
                .filter(removable)
                .filter(|m| !chosen.contains(&m.id))
                .collect();
            rest.sort_by_key(|m| {
                (
                    m.state != BackendState::Starting,
                    u64::MAX - m.launched_at,
                    std::cmp::Reverse(m.id.clone()),
                )
            });
            let more = excess - chosen.len();
            chosen.extend(rest.into_iter().take(more).map(|m| m.id.clone()));
        }
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str) -> Instance {
        Instance {
            id: id.into(),
            address: format!("127.0.0.1:{}", 9000 + id.len()),
        }
    }

    fn launched(m: &mut Members, now: Nanos, id: &str) -> Instance {
        let Command::Launch { ticket, .. } = m.launch(now) else {
            panic!("a launch")
        };
        let i = instance(id);
        let (cmd, _) = m.apply(Report::Launched {
            ticket,
            instance: i.clone(),
        });
        assert_eq!(cmd, Some(Command::Boot(i.clone())));
        i
    }

    #[test]
    fn launch_boot_ready_retire() {
        let mut m = Members::new();
        let a = launched(&mut m, 5, "a");
        assert_eq!((m.paid(), m.current(), m.starting()), (1, 1, 1));
        let (cmd, change) = m.apply(Report::Ready { id: "a".into() });
        assert_eq!(cmd, Some(Command::Admit(a.clone())));
        assert_eq!(change, Change::Moved);
        assert_eq!(m.serving(), vec![a.clone()]);
        assert_eq!(m.retire("a"), Some(Command::Retire(a.clone())));
        assert_eq!(m.retire("a"), None, "retired once");
        assert_eq!((m.paid(), m.current()), (1, 0), "paid until it is gone");
        assert_eq!(m.apply(Report::Retired { id: "a".into() }).1, Change::Left);
        assert_eq!(m.paid(), 0);
    }

    #[test]
    fn a_backend_retired_while_launching_is_stopped_without_a_drain() {
        let mut m = Members::new();
        let Command::Launch { ticket, .. } = m.launch(0) else {
            panic!()
        };
        assert_eq!(m.retire(&ticket), None, "nothing to drain yet");
        let (cmd, change) = m.apply(Report::Launched {
            ticket,
            instance: instance("a"),
        });
        assert_eq!(cmd, Some(Command::Terminate(instance("a"))));
        assert_eq!(change, Change::Left);
        assert_eq!(m.paid(), 0);
    }

    #[test]
    fn a_backend_retired_while_booting_is_not_admitted() {
        let mut m = Members::new();
        let a = launched(&mut m, 0, "a");
        assert_eq!(m.retire("a"), Some(Command::Retire(a)));
        assert_eq!(
            m.apply(Report::Ready { id: "a".into() }),
            (None, Change::None)
        );
    }

    #[test]
    fn failures_leave_the_table_and_say_so() {
        let mut m = Members::new();
        let Command::Launch { ticket, .. } = m.launch(0) else {
            panic!()
        };
        let (cmd, change) = m.apply(Report::LaunchFailed {
            ticket,
            why: "no image".into(),
        });
        assert_eq!(cmd, None);
        assert!(matches!(change, Change::Failed(w) if w.contains("no image")));
        let a = launched(&mut m, 0, "a");
        let (cmd, change) = m.apply(Report::NeverReady {
            id: "a".into(),
            why: "not healthy in time".into(),
        });
        assert_eq!(cmd, Some(Command::Forget(a)));
        assert!(matches!(change, Change::Failed(_)));
        let b = launched(&mut m, 0, "b");
        m.apply(Report::Ready { id: "b".into() });
        let (cmd, change) = m.apply(Report::Lost {
            id: "b".into(),
            why: "exited".into(),
        });
        assert_eq!(cmd, Some(Command::Forget(b)));
        assert_eq!(change, Change::Failed("exited".into()));
        assert_eq!(m.paid(), 0);
        // A report about someone gone is ignored.
        assert_eq!(m.apply(Report::Retired { id: "b".into() }).1, Change::None);
    }

    #[test]
    fn removals_take_the_named_then_the_newest_starting_first() {
        let mut m = Members::new();
        for (id, at) in [("old", 0), ("mid", 10), ("new", 20)] {
            m.adopt(instance(id), BackendState::Active, at);
        }
        let booting = launched(&mut m, 5, "booting");
        assert_eq!(m.choose_removals(&["mid".into()], 1), vec!["mid"]);
        assert_eq!(
            m.choose_removals(&[], 2),
            vec![booting.id.clone(), "new".to_string()]
        );
        assert_eq!(
            m.choose_removals(&["old".into(), "gone".into()], 2),
            vec!["old".to_string(), booting.id]
        );
        m.retire("new");
        assert_eq!(m.choose_removals(&["new".into()], 1), vec!["booting"]);
    }

    #[test]
    fn members_keep_their_kind_from_launch_to_id() {
        let mut m = Members::new();
        let Command::Launch { ticket, kind } = m.launch_kind(0, Some("large")) else {
            panic!("a launch")
        };
        assert_eq!(kind.as_deref(), Some("large"));
        assert_eq!(m.kind_of(&ticket), Some("large"));
        m.apply(Report::Launched {
            ticket,
            instance: instance("a"),
        });
        assert_eq!(
            m.kind_of("a"),
            Some("large"),
            "the id takes over the ticket's kind"
        );
        m.adopt_kind(instance("b"), BackendState::Active, 0, "small");
        let kinds: Vec<_> = m.kinded().iter().map(|k| (k.id, k.kind)).collect();
        assert_eq!(kinds, vec![("a", Some("large")), ("b", Some("small"))]);
        assert_eq!(m.kind_of("gone"), None);
    }
}
