//! `[[provider.kinds]]`: the instance kinds a provider offers (scale up vs scale out), e.g. a
//! large backend cheap per worker but slow to boot, and a small one that boots in seconds. The
//! autoscaler's decider says how much capacity is needed; the kind planner
//! (`ebbtide_autoscaler::control::kinds`) chooses the cheapest mix of kinds that meets it.
//! Each kind may override the provider's own launch keys (`command`, `launch`, `image`, `cpus`,
//! `memory`, `capacity`); `{kind}` in `command` or `launch` is replaced by the kind's name.

use crate::container::ByteSize;
use crate::schema::Provider;
use crate::time::HumanDuration;
use serde::{Deserialize, Serialize};

/// One instance kind.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InstanceKind {
    /// Its name (letters, digits, `-`, `_`), carried to the provider with each launch.
    pub name: String,
    /// Requests one backend of this kind serves at once: its capacity in workers.
    pub workers: u32,
    /// Price of one backend of this kind per hour (billed in `[autoscaler.cost]
    /// billing_period`s from launch).
    pub cost_per_hour: f64,
    /// Launch to ready; unset = `[autoscaler] boot_time`. The planner buys slow kinds only for
    /// demand that lasts, and covers bursts with the fastest kind.
    #[serde(default)]
    pub boot_time: Option<HumanDuration>,
    /// Spot-like kinds: expected preemptions per backend-hour (the simulator preempts them at
    /// this rate; the autoscaler replaces what is lost). 0 = never preempted.
    #[serde(default)]
    pub preemption_rate: f64,
    /// Overrides `[provider] capacity` (default: `workers` when `[provider] capacity` is set).
    #[serde(default)]
    pub capacity: Option<u32>,
    /// Overrides `[provider] command` (local, docker).
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Overrides `[provider] launch` (command).
    #[serde(default)]
    pub launch: Option<Vec<String>>,
    /// Overrides `[provider] image` (docker).
    #[serde(default)]
    pub image: Option<String>,
    /// Overrides `[provider] cpus` (docker).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Overrides `[provider] memory` (docker).
    #[serde(default)]
    pub memory: Option<ByteSize>,
}

impl InstanceKind {
    /// Its boot time, `default` (the autoscaler's `boot_time`) when unset.
    pub fn boot(&self, default: HumanDuration) -> HumanDuration {
        self.boot_time.unwrap_or(default)
    }

    /// Its price per worker-hour: what the planner ranks kinds by.
    pub fn price_per_worker(&self) -> f64 {
        self.cost_per_hour / self.workers.max(1) as f64
    }
}

impl Provider {
    /// The kind called `name`, if configured.
    pub fn kind_named(&self, name: &str) -> Option<&InstanceKind> {
        self.kinds.iter().find(|k| k.name == name)
    }

    /// This provider as it launches backends of `kind`: the kind's overrides applied, `{kind}`
    /// in `command` and `launch` replaced by its name, its price and capacity, no kinds of its
    /// own, and (docker) an owner label of its own, so the kinds' providers never remove each
    /// other's containers as leftovers.
    pub fn for_kind(&self, kind: &InstanceKind) -> Provider {
        let fill = |words: &[String]| -> Vec<String> {
            words
                .iter()
                .map(|w| w.replace("{kind}", &kind.name))
                .collect()
        };
        Provider {
            command: fill(kind.command.as_deref().unwrap_or(&self.command)),
            launch: fill(kind.launch.as_deref().unwrap_or(&self.launch)),
            image: kind.image.clone().or_else(|| self.image.clone()),
            cpus: kind.cpus.or(self.cpus),
            memory: kind.memory.or(self.memory),
            capacity: kind
                .capacity
                .or_else(|| self.capacity.map(|_| kind.workers)),
            cost_per_hour: kind.cost_per_hour,
            owner: self.owner.as_ref().map(|o| format!("{o}-{}", kind.name)),
            kinds: Vec::new(),
            ..self.clone()
        }
    }
}

/// Checks of `[[provider.kinds]]`, as (key path, message) pairs.
pub(crate) fn validate(p: &Provider, has_autoscaler: bool) -> Vec<(String, String)> {
    use crate::schema::ProviderKind;
    let mut out = Vec::new();
    if p.kinds.is_empty() {
        return out;
    }
    if !matches!(
        p.kind,
        ProviderKind::Local | ProviderKind::Command | ProviderKind::Docker
    ) {
        out.push((
            "provider.kinds".into(),
            format!(
                "instance kinds are supported by the local, command and docker providers; this \
                 provider is \"{}\"",
                p.kind.name()
            ),
        ));
    }
    if !has_autoscaler {
        out.push((
            "provider.kinds".into(),
            "needs an [autoscaler] section: the autoscaler's kind planner chooses the mix of \
             kinds (a fixed `count` has no kind to choose)"
                .into(),
        ));
    }
    let docker = p.kind == ProviderKind::Docker;
    for (i, k) in p.kinds.iter().enumerate() {
        let key = |name: &str| format!("provider.kinds[{i}].{name}");
        if k.name.is_empty()
            || !k
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            out.push((
                key("name"),
                format!(
                    "`{}` is not a kind name; use letters, digits, `-` and `_`, e.g. \"large\"",
                    k.name
                ),
            ));
        } else if p.kinds[..i].iter().any(|o| o.name == k.name) {
            out.push((
                key("name"),
                format!(
                    "`{}` is the name of an earlier kind; names must be unique",
                    k.name
                ),
            ));
        }
        if k.workers == 0 {
            out.push((
                key("workers"),
                "is 0; must be at least 1 (requests one backend of this kind serves at once)"
                    .into(),
            ));
        }
        if !k.cost_per_hour.is_finite() || k.cost_per_hour < 0.0 {
            out.push((
                key("cost_per_hour"),
                format!(
                    "is {}; must be a finite number >= 0 (price per hour, e.g. 0.05)",
                    k.cost_per_hour
                ),
            ));
        }
        if !k.preemption_rate.is_finite() || k.preemption_rate < 0.0 {
            out.push((
                key("preemption_rate"),
                format!(
                    "is {}; must be a finite number >= 0 (preemptions per backend-hour)",
                    k.preemption_rate
                ),
            ));
        }
        if k.capacity == Some(0) {
            out.push((
                key("capacity"),
                "is 0; must be at least 1, or left out (its workers)".into(),
            ));
        }
        let only =
            |name: &str, set: bool, used: &[ProviderKind], out: &mut Vec<(String, String)>| {
                if set && !used.contains(&p.kind) {
                    let names: Vec<&str> = used.iter().map(|u| u.name()).collect();
                    out.push((
                        key(name),
                        format!(
                            "is only used with provider.kind = \"{}\"; this provider is \"{}\"",
                            names.join("\" or \""),
                            p.kind.name()
                        ),
                    ));
                }
            };
        only(
            "command",
            k.command.is_some(),
            &[ProviderKind::Local, ProviderKind::Docker],
            &mut out,
        );
        only(
            "launch",
            k.launch.is_some(),
            &[ProviderKind::Command],
            &mut out,
        );
        for (name, set) in [
            ("image", k.image.is_some()),
            ("cpus", k.cpus.is_some()),
            ("memory", k.memory.is_some()),
        ] {
            only(name, set, &[ProviderKind::Docker], &mut out);
        }
        if let Some(c) = &k.command {
            if p.kind == ProviderKind::Local && !c.iter().any(|w| w.contains("{port}")) {
                out.push((
                    key("command"),
                    "has no word containing `{port}`; ebbtide puts a free port there, e.g. \
                     \"127.0.0.1:{port}\""
                        .into(),
                ));
            }
            if c.first().is_none_or(|w| w.trim().is_empty()) && !(docker && c.is_empty()) {
                out.push((
                    key("command"),
                    "is empty or starts with an empty word; the first word must name the \
                     program to run"
                        .into(),
                ));
            }
        }
        if let Some(l) = &k.launch {
            if l.first().is_none_or(|w| w.trim().is_empty()) {
                out.push((
                    key("launch"),
                    "is empty or starts with an empty word; give the launch script's command \
                     line"
                        .into(),
                ));
            }
        }
        if let Some(c) = k.cpus {
            if !c.is_finite() || c <= 0.0 {
                out.push((
                    key("cpus"),
                    format!("is {c}; must be a number > 0 (e.g. 0.5)"),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::Config;

    const BASE: &str = "[provider]\ncapacity = 4\n[autoscaler]\nworkers = 4\n";

    #[test]
    fn kinds_parse_and_apply_their_overrides() {
        let text = format!(
            "{BASE}[[provider.kinds]]\nname = \"large\"\nworkers = 8\ncost_per_hour = 0.24\n\
             boot_time = \"60s\"\ncommand = [\"ebbtide\", \"backend\", \"--listen\", \
             \"127.0.0.1:{{port}}\", \"--name\", \"{{kind}}\"]\n\
             [[provider.kinds]]\nname = \"small\"\nworkers = 2\ncost_per_hour = 0.05\n\
             preemption_rate = 0.5\n"
        );
        let cfg = Config::from_toml(&text, "k.toml").unwrap();
        let p = cfg.provider.unwrap();
        assert_eq!(p.kinds.len(), 2);
        let large = p.for_kind(&p.kinds[0]);
        assert_eq!(large.command.last().unwrap(), "large");
        assert_eq!(
            large.capacity,
            Some(8),
            "capacity follows the kind's workers"
        );
        assert_eq!(large.cost_per_hour, 0.24);
        assert!(large.kinds.is_empty());
        let small = p.for_kind(&p.kinds[1]);
        assert_eq!(
            small.command, p.command,
            "no override: the provider's command"
        );
        assert_eq!(small.capacity, Some(2));
        assert!((p.kinds[0].price_per_worker() - 0.03).abs() < 1e-12);
        assert_eq!(p.kind_named("small").unwrap().preemption_rate, 0.5);
    }

    #[test]
    fn bad_kinds_name_the_key_and_line() {
        let text = format!(
            "{BASE}[[provider.kinds]]\nname = \"large\"\nworkers = 0\ncost_per_hour = -1.0\n\
             image = \"x\"\n[[provider.kinds]]\nname = \"large\"\nworkers = 2\n\
             cost_per_hour = 0.1\ncommand = [\"ebbtide\", \"backend\"]\n"
        );
        let err = Config::from_toml(&text, "k.toml").unwrap_err().to_string();
        for expected in [
            "k.toml:7:11: provider.kinds[0].workers: is 0",
            "k.toml:8:17: provider.kinds[0].cost_per_hour: is -1",
            "k.toml:9:9: provider.kinds[0].image: is only used with provider.kind = \"docker\"",
            "k.toml:11:8: provider.kinds[1].name: `large` is the name of an earlier kind",
            "k.toml:14:11: provider.kinds[1].command: has no word containing `{port}`",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
        let missing = format!("{BASE}[[provider.kinds]]\nname = \"large\"\nworkers = 8\n");
        let err = Config::from_toml(&missing, "k.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cost_per_hour"), "{err}");
        let unknown = format!(
            "{BASE}[[provider.kinds]]\nname = \"a\"\nworkers = 8\ncost_per_hour = 1.0\nprice = 2\n"
        );
        let err = Config::from_toml(&unknown, "k.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("k.toml:9:") && err.contains("price"), "{err}");
        let fixed =
            "[provider]\n[[provider.kinds]]\nname = \"a\"\nworkers = 8\ncost_per_hour = 1.0\n";
        let err = Config::from_toml(fixed, "k.toml").unwrap_err().to_string();
        assert!(
            err.contains("provider.kinds: needs an [autoscaler] section"),
            "{err}"
        );
    }
}
