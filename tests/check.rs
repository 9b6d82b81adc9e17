//! `ebbtide check FILE`, end to end: the real binary on a valid and an invalid config.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn check(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ebbtide"))
        .arg("check")
        .arg(file)
        .output()
        .expect("run ebbtide check")
}

/// A config file in the temp dir, removed when dropped.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(name: &str, text: &str) -> TempConfig {
        let path =
            std::env::temp_dir().join(format!("ebbtide-check-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        TempConfig(path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn valid_config_exits_0_with_a_summary_only() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/static-backends.toml");
    let out = check(&file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(!stdout.trim().is_empty(), "no summary on stdout");
    assert!(stderr.is_empty(), "stderr: {stderr}");
}

#[test]
fn every_example_passes_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = check(&path);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn invalid_config_exits_2_with_file_line_col_key() {
    let file = TempConfig::new(
        "invalid",
        "[listener]\naddress = \"127.0.0.1:8080\"\n\n[balancer]\nchoices = 1\n\n\
         [[backends]]\naddress = \"127.0.0.1:9001\"\nweight = 0\n",
    );
    let out = check(&file.0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    let name = file.0.display().to_string();
    // Both errors, each as file:line:col: key.path: message.
    assert!(
        stderr.contains(&format!("{name}:5:11: balancer.choices: ")),
        "stderr: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{name}:9:10: backends[0].weight: ")),
        "stderr: {stderr}"
    );
    assert!(stdout.is_empty(), "stdout: {stdout}");
}

#[test]
fn syntax_error_exits_2_with_the_key() {
    let file = TempConfig::new("syntax", "[signals]\nwindow = \"10 parsecs\"\n");
    let out = check(&file.0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let name = file.0.display().to_string();
    assert!(
        stderr.contains(&format!("{name}:2:10: signals.window: ")),
        "stderr: {stderr}"
    );
}
