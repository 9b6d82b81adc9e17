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

#[test]
fn the_kustomization_builds_and_passes_the_schema_check() {
    let yaml = built();
    let file = tempfile_path::TempPath::with_contents("yaml", &yaml);
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
    let docs = yaml_docs(&yaml);
    let passed = text.matches(" passed for resource ").count();
    assert_eq!(passed, docs.len(), "{text}");
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
