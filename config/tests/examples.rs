//! Every example config loads, the embedded default is default.toml, and reference.toml really
//! lists every key with its default.

use ebbtide_config::{
    Config, HashKey, PolicyKind, Provider, ProviderKind, StaticBackend, EMBEDDED_DEFAULT,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

fn example(name: &str) -> Config {
    Config::from_file(&examples_dir().join(name)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_example_loads_without_error() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = Config::from_file(&path) {
                panic!("{} does not load:\n{e}", path.display());
            }
            names.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    names.sort();
    // The ones the docs point at are there (so the loop above did check something).
    for name in [
        "central-queue.toml",
        "consistent-hash.toml",
        "default.toml",
        "docker.toml",
        "reference.toml",
        "static-backends.toml",
        "tls.toml",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }
}

#[test]
fn embedded_default_is_default_toml() {
    let text = std::fs::read_to_string(examples_dir().join("default.toml")).unwrap();
    assert_eq!(text, EMBEDDED_DEFAULT);
    assert_eq!(
        Config::embedded_default(),
        Config::from_toml(&text, "default.toml").unwrap()
    );
}

#[test]
fn embedded_default_means_what_the_design_says() {
    let cfg = Config::embedded_default();
    assert_eq!(cfg.listener.address, "127.0.0.1:8080");
    assert_eq!(cfg.admin.address, "127.0.0.1:9901");
    assert_eq!(cfg.balancer.policy, PolicyKind::P2c);
    assert!(cfg.backends.is_empty());
    let p = cfg.provider.expect("the default starts its own backends");
    assert_eq!(p.command[..2], ["ebbtide", "backend"]);
    assert!(p.command.iter().any(|w| w.contains("{port}")));
    assert_eq!((p.count, p.capacity), (2, Some(4)));
}

#[test]
fn examples_mean_what_their_names_say() {
    let g = example("grpc.toml");
    assert!(g
        .backends
        .iter()
        .all(|b| b.protocol == ebbtide_config::Protocol::H2c));

    let s = example("static-backends.toml");
    assert_eq!(s.balancer.policy, PolicyKind::LeastOutstanding);
    assert_eq!(s.backends.len(), 3);
    assert!(s.provider.is_none());

    let c = example("central-queue.toml");
    assert_eq!(c.balancer.policy, PolicyKind::CentralQueue);
    assert!(c.backends.iter().all(|b| b.capacity.is_some()));
    assert!(c.provider.unwrap().capacity.is_some());

    let r = example("autoscale-remote.toml");
    let p = r.provider.as_ref().unwrap();
    assert_eq!(p.kind, ProviderKind::Command);
    assert_eq!(p.terminate.last().map(String::as_str), Some("{id}"));
    for script in [&p.launch[1], &p.terminate[1]] {
        let path = examples_dir().join("..").join("..").join(script);
        assert!(path.exists(), "{script} is not in the repository");
    }
    assert_eq!(
        r.autoscaler.as_ref().unwrap().balancers,
        vec!["http://127.0.0.1:9901".to_string()]
    );
    let d = example("docker.toml");
    let p = d.provider.as_ref().unwrap();
    assert_eq!(p.kind, ProviderKind::Docker);
    assert_eq!(p.image.as_deref(), Some("ebbtide-backend:dev"));
    assert_eq!((p.port, p.cpus), (Some(8080), Some(0.5)));
    assert_eq!(p.memory.map(|m| m.0), Some(64 << 20));
    assert_eq!(p.container_command()[0], "backend");
    assert_eq!(p.env.to_list(), ["RUST_LOG=info"]);
    // No owner written: the admin address names this ebbtide's containers.
    assert_eq!(p.owner.as_deref(), Some("admin-127.0.0.1:9901"));

    let t = example("tls.toml");
    assert_eq!(t.listener.tls.len(), 1);
    // Relative to the example's own directory, wherever the test runs from.
    assert_eq!(
        t.listener.tls[0].cert,
        examples_dir()
            .join("tls/localhost.pem")
            .display()
            .to_string()
    );
    assert_eq!(
        t.listener.redirect_address.as_deref(),
        Some("127.0.0.1:8081")
    );

    let h = example("consistent-hash.toml");
    assert_eq!(h.balancer.policy, PolicyKind::ConsistentHash);
    assert_eq!(h.balancer.hash_key, HashKey::Header("x-user".into()));
}

/// What reference.toml must parse to: every default, plus the one sample backend and the
/// default provider it shows.
fn reference_expected() -> Config {
    Config {
        backends: vec![StaticBackend {
            address: "127.0.0.1:9001".into(),
            capacity: None,
            weight: 1,
            cost_per_hour: 0.0,
            slow_start: None,
            protocol: Default::default(),
            tls_ca: None,
            server_name: None,
        }],
        provider: Some(Provider::default()),
        autoscaler: Some(Default::default()),
        simulation: Some(Default::default()),
        ..Config::default()
    }
}

#[test]
fn reference_shows_the_defaults() {
    assert_eq!(example("reference.toml"), reference_expected());
}

/// Dotted key paths of every leaf, array elements not descended into.
fn leaf_keys(prefix: &str, v: &toml::Value, out: &mut BTreeSet<String>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_keys(&p, v, out);
            }
        }
        toml::Value::Array(a) if a.iter().all(|e| e.is_table()) && !a.is_empty() => {
            for e in a {
                leaf_keys(prefix, e, out);
            }
        }
        _ => {
            out.insert(prefix.to_string());
        }
    }
}

#[test]
fn reference_lists_every_key() {
    // Every optional key set, so the serialised form has all of them.
    let mut full = reference_expected();
    full.admin.token = Some("t".into());
    full.log.access_path = Some("/l".into());
    full.listener.tls = vec![ebbtide_config::TlsCert {
        cert: "c".into(),
        key: "k".into(),
    }];
    full.listener.client_ca = Some("ca".into());
    full.listener.client_auth = Some(ebbtide_config::ClientAuth::Optional);
    full.listener.redirect_address = Some("127.0.0.1:1".into());
    full.runtime.worker_threads = Some(1);
    full.health.path = Some("/healthz".into());
    full.autoscaler.as_mut().unwrap().overload_max_queue = Some(100);
    full.autoscaler.as_mut().unwrap().cost.release_margin =
        Some(ebbtide_config::time::HumanDuration::from_secs(5));
    full.simulation.as_mut().unwrap().capacity =
        Some(ebbtide_config::simulation::SimCapacity::Workers);
    full.backends[0].slow_start = Some(ebbtide_config::time::HumanDuration::from_secs(30));
    full.backends[0].capacity = Some(1);
    full.backends[0].tls_ca = Some("ca.pem".into());
    full.backends[0].server_name = Some("api.internal".into());
    full.upstream.ca = Some("ca.pem".into());
    {
        let p = full.provider.as_mut().unwrap();
        p.capacity = Some(1);
        p.image = Some("i".into());
        p.port = Some(1);
        p.network = Some("n".into());
        p.cpus = Some(1.0);
        p.memory = Some(ebbtide_config::container::ByteSize(1 << 20));
        p.env.0.insert("RUST_LOG".into(), "info".into());
        p.labels.insert("team".into(), "web".into());
        p.owner = Some("o".into());
        p.namespace = Some("n".into());
        p.target = Some("deployment/web".into());
        p.api_server = Some("http://127.0.0.1:1".into());
        p.kinds.push(ebbtide_config::kinds::InstanceKind {
            name: "k".into(),
            workers: 1,
            cost_per_hour: 0.0,
            boot_time: Some(Default::default()),
            preemption_rate: 0.0,
            capacity: Some(1),
            command: Some(vec!["c".into()]),
            launch: Some(vec!["l".into()]),
            image: Some("i".into()),
            cpus: Some(1.0),
            memory: Some(ebbtide_config::container::ByteSize(1 << 20)),
        });
    }
    full.autoscaler.as_mut().unwrap().balancer_token = Some("t".into());
    full.autoscaler.as_mut().unwrap().balancer_discovery =
        Some(ebbtide_config::autoscaler::BalancerDiscovery {
            namespace: Some("n".into()),
            service: Some("a".into()),
            port: Some(ebbtide_config::PortRef::Name("admin".into())),
            api_server: Some("http://127.0.0.1:1".into()),
            ..Default::default()
        });
    full.discovery = Some(ebbtide_config::Discovery {
        namespace: Some("n".into()),
        service: Some("web".into()),
        port: Some(ebbtide_config::PortRef::Name("http".into())),
        api_server: Some("http://127.0.0.1:1".into()),
        capacity: Some(1),
        ..Default::default()
    });
    full.leader_election = Some(ebbtide_config::LeaderElection {
        namespace: Some("n".into()),
        identity: Some("a".into()),
        api_server: Some("http://127.0.0.1:1".into()),
        ..Default::default()
    });
    let mut schema = BTreeSet::new();
    leaf_keys("", &toml::Value::try_from(&full).unwrap(), &mut schema);

    // reference.toml with its commented-out keys (`# key = value`) brought back.
    let text = std::fs::read_to_string(examples_dir().join("reference.toml")).unwrap();
    let uncommented: String = text
        .lines()
        .map(|l| {
            let rest = l.strip_prefix("# ").unwrap_or(l);
            if rest.starts_with('[') {
                // A commented-out table (`# [discovery]`, `# [[provider.kinds]]`).
                return rest;
            }
            let is_key = rest
                .split_once(" = ")
                .is_some_and(|(k, _)| k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            if is_key {
                rest
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut listed = BTreeSet::new();
    leaf_keys(
        "",
        &uncommented.parse::<toml::Value>().unwrap(),
        &mut listed,
    );
    assert_eq!(listed, schema, "reference.toml and the schema differ");
    // And every line that sets a key says what it is for.
    for line in text.lines() {
        let l = line.trim_start_matches("# ");
        if l.contains(" = ") && !l.starts_with('#') && !l.starts_with("command") {
            assert!(l.contains(" # "), "no comment on `{line}`");
        }
    }
}

#[test]
fn summary_is_one_line_about_what_runs() {
    assert_eq!(
        Config::embedded_default().summary(),
        "listener 127.0.0.1:8080, admin 127.0.0.1:9901, policy p2c, no static backends, \
         local provider x2"
    );
    assert_eq!(
        example("static-backends.toml").summary(),
        "listener 127.0.0.1:8080, admin 127.0.0.1:9901, policy least_outstanding, \
         3 static backends, no provider"
    );
    assert_eq!(
        example("consistent-hash.toml").summary(),
        "listener 127.0.0.1:8080, admin 127.0.0.1:9901, policy consistent_hash on \
         header:x-user, 3 static backends, no provider"
    );
    let cfg = Config::from_toml(
        "[admin]\naddress = \"0.0.0.0:9901\"\ntoken = \"s\"\n[balancer]\nchoices = 3\n\
         [[backends]]\naddress = \"a:1\"\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        cfg.summary(),
        "listener 127.0.0.1:8080, admin 0.0.0.0:9901 (token), policy p2c (choices 3), \
         1 static backend, no provider"
    );
    assert!(!cfg.summary().contains('\n'));
}
