//! deploy/kubernetes: the kustomization builds (`kubectl kustomize`, offline), every manifest
//! passes a schema check against Kubernetes 1.33's OpenAPI schemas (`kubernetes-validate
//! --strict`, from PyPI, which ships the schemas: `kubectl apply --dry-run=client` would need an
//! API server), and the configs in the ConfigMap pass `ebbtide check`. The Role is checked
//! against what ebbtide calls in tests/kubernetes.rs.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// `kubectl kustomize deploy/kubernetes`.
fn built() -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir())
        .output()
        .expect("kubectl (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "kubectl kustomize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The documents of a YAML stream as JSON (PyYAML).
fn yaml_docs(yaml: &str) -> Vec<serde_json::Value> {
    let file = tempfile_path::TempPath::with_contents("yaml", yaml);
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(file.path())
        .output()
        .expect("python3 with PyYAML");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Checks every document of `yaml` against Kubernetes 1.33's schemas (`kubernetes-validate
/// --strict`) and returns the documents.
fn schema_checked(yaml: &str) -> Vec<serde_json::Value> {
    let file = tempfile_path::TempPath::with_contents("yaml", yaml);
    let out = Command::new("kubernetes-validate")
        .args(["--kubernetes-version", "1.33.0", "--strict"])
        .arg(file.path())
        .output()
        .expect("kubernetes-validate (pip install kubernetes-validate; scripts/test.sh does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let docs = yaml_docs(yaml);
    let passed = text.matches(" passed for resource ").count();
    assert_eq!(passed, docs.len(), "{text}");
    docs
}

#[test]
fn the_kustomization_builds_and_passes_the_schema_check() {
    let docs = schema_checked(&built());
    let kinds: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap(),
                d["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    for want in [
        "Namespace/ebbtide",
        "ServiceAccount/ebbtide",
        "Role/ebbtide",
        "RoleBinding/ebbtide",
        "ConfigMap/ebbtide",
        "Deployment/ebbtide",
        "Service/ebbtide",
        "Deployment/ebbtide-autoscaler",
        "Deployment/web",
        "Service/web",
        "PodDisruptionBudget/ebbtide",
    ] {
        assert!(kinds.iter().any(|k| k == want), "{want} missing: {kinds:?}");
    }
    // Everything in the one namespace; the autoscaler runs two replicas.
    for d in &docs {
        if d["kind"] != "Namespace" {
            assert_eq!(
                d["metadata"]["namespace"], "ebbtide",
                "{}",
                d["metadata"]["name"]
            );
        }
    }
    let autoscaler = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "ebbtide-autoscaler")
        .unwrap();
    assert_eq!(autoscaler["spec"]["replicas"], 2);
    let web = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "web")
        .unwrap();
    assert!(!web["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].is_null());
}

#[test]
fn the_configmaps_configs_pass_ebbtide_check() {
    let docs = yaml_docs(&built());
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .expect("the ConfigMap");
    let data = cm["data"].as_object().unwrap();
    assert!(data.contains_key("balancer.toml") && data.contains_key("autoscaler.toml"));
    for (name, text) in data {
        let file = tempfile_path::TempPath::with_contents("toml", text.as_str().unwrap());
        let out = Command::new(ebbtide_bin())
            .arg("check")
            .arg(file.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// load-job.yaml: a valid Job of N indexed generators, each writing its HdrHistogram log to
/// stdout; and its pods' command line, run here as two generators against a local backend (the
/// target and the duration substituted), gives logs that `ebbtide load merge` adds up, as the
/// file's comment tells users to do.
#[test]
fn the_load_job_passes_the_schema_check_and_its_logs_merge() {
    let yaml = std::fs::read_to_string(dir().join("load-job.yaml")).unwrap();
    let docs = schema_checked(&yaml);
    assert_eq!(docs.len(), 1);
    let job = &docs[0];
    assert_eq!(job["kind"], "Job");
    assert_eq!(job["metadata"]["namespace"], "ebbtide");
    let spec = &job["spec"];
    assert!(spec["parallelism"].as_u64().unwrap() > 1, "{spec}");
    assert_eq!(spec["parallelism"], spec["completions"]);
    assert_eq!(spec["completionMode"], "Indexed");
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let args: Vec<String> = pod["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(args[0], "load");
    let after = |flag: &str| {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag}: {args:?}"));
        args[i + 1].clone()
    };
    assert_eq!(after("--hdr-log"), "/dev/stdout");
    assert!(
        args.iter().any(|a| a == "--quiet"),
        "only the log on stdout"
    );
    // Both references are ones Kubernetes expands: the generator's index from the env entry
    // above, the Service's address from the service links.
    assert_eq!(after("--seed"), "$(GENERATOR)");
    assert_eq!(pod["containers"][0]["env"][0]["name"], "GENERATOR");
    assert!(after("--target").contains("$(EBBTIDE_SERVICE_HOST):$(EBBTIDE_SERVICE_PORT)"));

    let (_backend, addr) = common::process::backend(&["--service-time", "const:2ms"]);
    let mut logs = Vec::new();
    for generator in ["0", "1"] {
        let mut argv = args.clone();
        for a in argv.iter_mut() {
            *a = a
                .replace("$(EBBTIDE_SERVICE_HOST)", &addr.ip().to_string())
                .replace("$(EBBTIDE_SERVICE_PORT)", &addr.port().to_string())
                .replace("$(GENERATOR)", generator);
        }
        let d = argv.iter().position(|a| a == "--duration").unwrap();
        argv[d + 1] = "2s".into();
        let out = Command::new(ebbtide_bin())
            .args(&argv)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "generator {generator}");
        let log = common::process::temp_path(&format!("gen-{generator}.hlog"));
        std::fs::write(&log, &out.stdout).unwrap();
        logs.push(log);
    }
    let merged = common::process::temp_path("load-job-merged.json");
    let out = Command::new(ebbtide_bin())
        .args(["load", "merge", "--quiet", "--json"])
        .arg(&merged)
        .args(&logs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "merge: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&merged).unwrap()).unwrap();
    // Two generators at --rate for 2 s each (Poisson counts scatter around the mean).
    let rate: f64 = after("--rate").parse().unwrap();
    let scheduled = report["scheduled"].as_f64().unwrap();
    assert!(
        (scheduled - 2.0 * 2.0 * rate).abs() < 0.2 * 4.0 * rate,
        "{report}"
    );
    assert_eq!(report["errors"], 0, "{report}");
    assert!(
        report["latency_ms"]["p50"].as_f64().unwrap() >= 2.0,
        "{report}"
    );
}
