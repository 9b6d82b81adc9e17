//! deploy/ checked by the tools that read it: the systemd unit by `systemd-analyze verify`, the
//! compose file by `docker-compose config`. (tests/docker.rs runs the compose file for real.)

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/ebbtide.service")).unwrap();
    for hardening in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(hardening), "the unit lacks {hardening:?}");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("NOT CHECKED: systemd-analyze is not installed here (apt-get install systemd)");
        return;
    }
    // The unit names the installed binary; verify it against the one just built.
    let dir = std::env::temp_dir().join(format!("ebbtide-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ebbtide.service");
    std::fs::write(
        &file,
        unit.replace("/usr/local/bin/ebbtide", env!("CARGO_BIN_EXE_ebbtide")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !said.contains("ebbtide.service:"),
        "systemd-analyze verify: {said}"
    );
}

#[test]
fn compose_file_is_valid_for_docker_compose() {
    let out = Command::new("docker-compose")
        .args(["-f"])
        .arg(repo().join("deploy/docker-compose.yml"))
        .args(["config", "-q"])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run docker-compose ({e}): install it (Debian: apt-get install docker-compose)")
        });
    assert!(
        out.status.success(),
        "docker-compose config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The network ebbtide's config attaches backends to is the one compose creates.
    let compose = std::fs::read_to_string(repo().join("deploy/docker-compose.yml")).unwrap();
    let config = std::fs::read_to_string(repo().join("deploy/ebbtide.toml")).unwrap();
    assert!(compose.contains("name: ${EBBTIDE_NETWORK:-ebbtide}"));
    assert!(config.contains("network = \"ebbtide\""));
    let cfg = ebbtide_config::Config::from_toml(&config, "deploy/ebbtide.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.provider.unwrap().kind,
        ebbtide_config::ProviderKind::Docker
    );
}
