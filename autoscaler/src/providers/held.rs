//! The table of instances that the docker and kubernetes providers keep: each instance with
//! its launch time, the ones that went away without being asked to (for [`Provider::lost`]),
//! and the launch-to-healthy times of recent launches (for [`Provider::boot_times`]). Both
//! providers answer `list`, `lost` and `boot_times` from it the same way.
//!
//! [`Provider::lost`]: super::Provider::lost
//! [`Provider::boot_times`]: super::Provider::boot_times

use super::Instance;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How many recent boot times are kept.
const BOOT_TIMES_KEPT: usize = 64;

/// One instance a provider holds.
pub(crate) struct Entry {
    pub(crate) instance: Instance,
    /// When its launch began: the boot time counts from it.
    pub(crate) launched: Instant,
    /// Not healthy yet.
    pub(crate) booting: bool,
}

/// The instances a provider started and has not stopped, by id.
#[derive(Default)]
pub(crate) struct Held {
    pub(crate) table: HashMap<String, Entry>,
    /// Instances that went away without being asked to, with why, not yet taken.
    pub(crate) lost: Vec<(String, String)>,
    /// Launch-to-healthy times, oldest first, at most [`BOOT_TIMES_KEPT`].
    boot_times: VecDeque<Duration>,
}

impl Held {
    /// Holds `instance`, booting since `launched`.
    pub(crate) fn insert(&mut self, instance: Instance, launched: Instant) {
        let entry = Entry {
            instance,
            launched,
            booting: true,
        };
        self.table.insert(entry.instance.id.clone(), entry);
    }

    /// Marks `id` healthy and records its launch-to-healthy time, which it returns; `None`
    /// when `id` is no longer held (stopped or lost while it booted).
    pub(crate) fn healthy(&mut self, id: &str) -> Option<Duration> {
        let entry = self.table.get_mut(id)?;
        entry.booting = false;
        let took = entry.launched.elapsed();
        if self.boot_times.len() == BOOT_TIMES_KEPT {
            self.boot_times.pop_front();
        }
        self.boot_times.push_back(took);
        Some(took)
    }

    /// What [`super::Provider::list`] answers.
    pub(crate) fn list(&self) -> Vec<Instance> {
        self.table.values().map(|e| e.instance.clone()).collect()
    }

    /// What [`super::Provider::lost`] answers: takes the lost instances.
    pub(crate) fn take_lost(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.lost)
    }

    /// What [`super::Provider::boot_times`] answers.
    pub(crate) fn boot_times(&self) -> Vec<Duration> {
        self.boot_times.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str) -> Instance {
        Instance {
            id: id.into(),
            address: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn healthy_records_the_boot_time_of_held_instances_only() {
        let mut held = Held::default();
        let launched = Instant::now() - Duration::from_secs(3);
        held.insert(instance("a"), launched);
        assert!(held.table["a"].booting);
        let took = held.healthy("a").unwrap();
        assert!(took >= Duration::from_secs(3));
        assert!(!held.table["a"].booting);
        assert_eq!(held.boot_times(), vec![took]);
        // Stopped while it booted: nothing to record.
        assert_eq!(held.healthy("gone"), None);
        assert_eq!(held.boot_times().len(), 1);
        assert_eq!(held.list(), vec![instance("a")]);
    }

    #[test]
    fn only_the_most_recent_boot_times_are_kept_oldest_first() {
        let mut held = Held::default();
        let now = Instant::now();
        for i in 0..BOOT_TIMES_KEPT + 2 {
            let id = i.to_string();
            // Launches further back in time boot longer: the first two are the longest.
            let ago = Duration::from_secs((BOOT_TIMES_KEPT + 10 - i) as u64);
            held.insert(instance(&id), now - ago);
            held.healthy(&id).unwrap();
        }
        let kept = held.boot_times();
        assert_eq!(kept.len(), BOOT_TIMES_KEPT);
        assert!(kept[0] < Duration::from_secs(BOOT_TIMES_KEPT as u64 + 9));
        assert!(kept.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn lost_instances_are_taken_once() {
        let mut held = Held::default();
        held.lost.push(("a".into(), "exited".into()));
        assert_eq!(held.take_lost(), vec![("a".into(), "exited".into())]);
        assert!(held.take_lost().is_empty());
    }
}
