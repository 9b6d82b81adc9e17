//! The docker provider against the real Docker Engine of this machine: backends are containers
//! of `ebbtide-backend:dev` (the static ebbtide binary in a scratch image), the balancer is the
//! freshly built `ebbtide serve` on 127.0.0.1, load comes from `ebbtide load`.
//!
//! The images are built by deploy/build-images.sh (a static release build into target/static,
//! then `docker build` of deploy/Dockerfile.scratch) when they are missing or a source file is
//! newer than that static binary, and reused otherwise; EBBTIDE_REBUILD_IMAGES=1 forces it. Without a Docker daemon
//! these tests fail, saying so: they never skip.
//!
//! Every container a test makes carries its own `ebbtide.owner`; a guard removes whatever is
//! left with that label (and the test's networks and compose project) even when the test fails.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The tests take turns: they share the daemon and the machine's two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BACKEND_IMAGE: &str = "ebbtide-backend:dev";
const EBBTIDE_IMAGE: &str = "ebbtide:dev";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the docker CLI; (success, stdout, stderr).
fn docker(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run the docker CLI ({e}): these tests need Docker (docker.io) installed with its daemon running")
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The daemon answers, and both images exist (built now if missing). Panics with what to do.
fn ready() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let (ok, out, err) = docker(&["version", "--format", "{{.Server.APIVersion}}"]);
        assert!(
            ok,
            "the Docker daemon does not answer ({}): start it (e.g. `dockerd &` or \
             `service docker start`) before running tests/docker.rs",
            err.trim()
        );
        eprintln!("docker: daemon API {}", out.trim());
        let missing = |image: &str| !docker(&["image", "inspect", image]).0;
        let rebuild = std::env::var_os("EBBTIDE_REBUILD_IMAGES").is_some_and(|v| v == "1");
        let stale = static_binary_is_stale();
        if rebuild || stale || missing(BACKEND_IMAGE) || missing(EBBTIDE_IMAGE) {
            let started = Instant::now();
            let status = Command::new("sh")
                .arg(repo().join("deploy/build-images.sh"))
                .env("TAG", "dev")
                .status()
                .expect("run deploy/build-images.sh");
            assert!(status.success(), "deploy/build-images.sh failed: {status}");
            eprintln!("docker: images built in {:?}", started.elapsed());
        }
        assert!(!missing(BACKEND_IMAGE) && !missing(EBBTIDE_IMAGE));
    });
}

/// Whether the static binary the images hold is missing or older than a source file (so the
/// images would not run the code under test); when fresh, the images are reused as they are.
fn static_binary_is_stale() -> bool {
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let bin = repo().join(format!("target/static/{triple}/release/ebbtide"));
    let Ok(built) = std::fs::metadata(&bin).and_then(|m| m.modified()) else {
        return true;
    };
    fn newer(dir: &Path, than: std::time::SystemTime) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        entries.flatten().any(|e| {
            let p = e.path();
            let name = e.file_name();
            if p.is_dir() {
                name != "target" && name != ".git" && newer(&p, than)
            } else {
                let source = p.extension().is_some_and(|x| x == "rs")
                    || name == "Cargo.toml"
                    || name == "Cargo.lock";
                source
                    && e.metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|m| m > than)
            }
        })
    }
    let root = repo();
    let lock = std::fs::metadata(root.join("Cargo.lock")).and_then(|m| m.modified());
    lock.is_ok_and(|m| m > built)
        || std::fs::metadata(root.join("Cargo.toml"))
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > built)
        || ["src", "config", "balancer", "autoscaler", "backend-sim"]
            .iter()
            .any(|d| newer(&root.join(d), built))
}

/// A name no other test or run uses.
fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("ebbtide-test-{what}-{}-{:x}", std::process::id(), nanos)
}

/// Removes every container labelled with its owner, and its networks, when dropped.
struct Owned {
    owner: String,
    networks: Vec<String>,
}

impl Owned {
    fn new(what: &str) -> Owned {
        Owned {
            owner: unique(what),
            networks: Vec::new(),
        }
    }

    /// This owner's containers (all states), by name.
    fn containers(&self) -> Vec<String> {
        owned_containers(&self.owner, true)
    }

    /// This owner's running containers, by name.
    fn running(&self) -> Vec<String> {
        owned_containers(&self.owner, false)
    }
}

fn owned_containers(owner: &str, all: bool) -> Vec<String> {
    let filter = format!("label=ebbtide.owner={owner}");
    let mut args = vec!["ps", "--filter", &filter];
    if all {
        args.push("-a");
    }
    args.extend(["--format", "{{.Names}}"]);
    let (ok, out, err) = docker(&args);
    assert!(ok, "docker ps failed: {err}");
    let mut names: Vec<String> = out.lines().map(str::to_string).collect();
    names.sort();
    names
}

impl Drop for Owned {
    fn drop(&mut self) {
        let left = self.containers();
        if !left.is_empty() {
            eprintln!("cleanup: removing {left:?}");
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(left.iter().map(String::as_str));
            let _ = docker(&args);
        }
        for n in &self.networks {
            let _ = docker(&["network", "rm", n]);
        }
    }
}

/// `ebbtide serve` with the docker provider (exp 20 ms, 4 workers, half a core, 64 MiB) and
/// `rest` appended (an `[autoscaler]`, or `count`).
fn docker_config(owner: &str, rest: &str) -> String {
    base_config(&format!(
        r#"[health]
path = "/healthz"
interval = "500ms"
[lifecycle]
drain_timeout = "5s"
[provider]
kind = "docker"
image = "{BACKEND_IMAGE}"
command = ["backend", "--listen", "0.0.0.0:{{port}}", "--service-time", "exp:20ms", "--workers", "4"]
port = 8080
cpus = 0.5
memory = "64MiB"
owner = "{owner}"
capacity = 4
boot_timeout = "30s"
{rest}
"#
    ))
}

/// Polls `f` (a blocking check) every 200 ms until it returns Some, or panics after `limit`.
fn eventually_sync<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `docker inspect -f FORMAT NAME`, trimmed.
fn inspect(name: &str, format: &str) -> String {
    let (ok, out, err) = docker(&["inspect", "-f", format, name]);
    assert!(ok, "docker inspect {name}: {err}");
    out.trim().to_string()
}

/// Counts this owner's running containers every second on a thread until `stop` is set.
fn sample_containers(
    owner: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<usize>> {
    std::thread::spawn(move || {
        let mut counts = Vec::new();
        let start = Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            counts.push(owned_containers(&owner, false).len());
            let next = start + Duration::from_secs(counts.len() as u64);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        counts
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_fleet_scales_out_and_in_under_load_without_failed_requests() {
    let _turn = ONE_AT_A_TIME.lock().await;
    ready();
    let owned = Owned::new("scale");
    // One backend serves 4 workers x 50/s = 200 req/s. The load steps from half of that to 600/s
    // (three backends fully busy; the concurrency rule aims at 70% of 4 in flight each), then
    // drops. Short windows and per-second billing keep the test short.
    let mut lb = Serve::start(&docker_config(
        &owned.owner,
        "[autoscaler]\ndecider = \"concurrency\"\nmin = 1\nmax = 5\ntarget = 4\n\
         stable_window = \"10s\"\npanic_window = \"3s\"\nmetric_window = \"3s\"\n\
         [autoscaler.cost]\nbilling_period = \"0s\"",
    ));
    eventually("the minimum fleet", Duration::from_secs(60), || async {
        (active(lb.admin).await.len() == 1).then_some(())
    })
    .await;
    assert_eq!(owned.running().len(), 1, "{:?}", owned.containers());

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_containers(owned.owner.clone(), stop.clone());
    let (addr, admin) = (lb.addr, lb.admin);
    let report = tokio::task::spawn_blocking(move || {
        load(&url(addr, "/"), Some(admin), "steps:100@8s,600@20s,50@15s")
    })
    .await
    .unwrap();
    let errors = report["errors"].as_u64().unwrap();
    let most = report["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["backends"].as_u64())
        .max()
        .unwrap_or(0);
    let waited = Instant::now();
    eventually(
        "scale-in to the minimum",
        Duration::from_secs(60),
        || async { (active(lb.admin).await.len() == 1).then_some(()) },
    )
    .await;
    eventually_sync(
        "the retired containers to be removed",
        Duration::from_secs(30),
        || (owned.containers().len() == 1).then_some(()),
    );
    let back_in = waited.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let counts = sampler.join().unwrap();
    let boots = lb.boot_times_ms();
    let cold = cold_start_metric(lb.admin, "docker").await;
    eprintln!(
        "docker scale: sent {}, ok {}, errors {errors} ({:?}), status {:?}, p99 {} ms",
        report["sent"],
        report["ok"],
        report["errors_by_kind"],
        report["status_codes"],
        report["latency_ms"]["p99"]
    );
    eprintln!("docker scale: running containers each second: {counts:?}");
    eprintln!(
        "docker scale: most active backends {most}; back to 1 container {back_in:?} after the load"
    );
    eprintln!("docker scale: launch-to-healthy per container (ms): {boots:?}");
    eprintln!(
        "docker scale: cold starts (decision to first request) {}, sum {:.2} s, buckets {:?}",
        cold.count, cold.sum_seconds, cold.buckets
    );
    assert_eq!(errors, 0, "requests failed while the fleet changed");
    // Every container that served had its cold start measured; each is at least its boot.
    assert!(cold.count >= 3, "{cold:?}");
    let boot_sum: u64 = boots.iter().sum();
    assert!(
        cold.count != boots.len() as u64 || cold.sum_seconds * 1000.0 >= boot_sum as f64,
        "cold starts {cold:?} shorter than the boots {boots:?}"
    );
    assert!(most >= 3, "never scaled out to 3 backends: {counts:?}");
    assert!(counts.iter().max().copied().unwrap_or(0) >= 3, "{counts:?}");
    assert!(
        boots.len() >= 3,
        "every launch logs its boot time: {boots:?}"
    );
    assert!(boots.iter().all(|&b| b < 30_000), "{boots:?}");
    assert!(
        lb.stop(Duration::from_secs(30)),
        "ebbtide did not exit cleanly"
    );
    assert_eq!(
        owned.containers(),
        Vec::<String>::new(),
        "left after shutdown"
    );
}

/// The cgroup directory of a container, where this machine's layout shows it.
fn cgroup_files(id: &str) -> Vec<(String, String)> {
    let candidates = [
        // cgroup v1, cgroupfs driver
        format!("/sys/fs/cgroup/cpu/docker/{id}/cpu.cfs_quota_us"),
        format!("/sys/fs/cgroup/cpu,cpuacct/docker/{id}/cpu.cfs_quota_us"),
        format!("/sys/fs/cgroup/memory/docker/{id}/memory.limit_in_bytes"),
        // cgroup v1, systemd driver
        format!("/sys/fs/cgroup/cpu,cpuacct/system.slice/docker-{id}.scope/cpu.cfs_quota_us"),
        format!("/sys/fs/cgroup/memory/system.slice/docker-{id}.scope/memory.limit_in_bytes"),
        // cgroup v2
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/cpu.max"),
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope/memory.max"),
        format!("/sys/fs/cgroup/docker/{id}/cpu.max"),
        format!("/sys/fs/cgroup/docker/{id}/memory.max"),
    ];
    candidates
        .iter()
        .filter_map(|p| {
            let v = std::fs::read_to_string(p).ok()?;
            let name = Path::new(p).file_name()?.to_string_lossy().into_owned();
            Some((name, v.trim().to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_containers_get_cpu_and_memory_limits_and_init() {
    let _turn = ONE_AT_A_TIME.lock().await;
    ready();
    let owned = Owned::new("limits");
    let lb = Serve::start(&docker_config(&owned.owner, "count = 2"));
    eventually("two backends", Duration::from_secs(60), || async {
        (active(lb.admin).await.len() == 2).then_some(())
    })
    .await;
    let names = owned.running();
    assert_eq!(names.len(), 2, "{names:?}");
    for name in &names {
        let host = inspect(
            name,
            "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.Init}}",
        );
        eprintln!("{name}: NanoCpus Memory MemorySwap Init = {host}");
        assert_eq!(host, "500000000 67108864 67108864 true");
        let labels = inspect(name, "{{json .Config.Labels}}");
        let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
        assert_eq!(labels["ebbtide.managed"], "true");
        assert_eq!(labels["ebbtide.owner"], owned.owner.as_str());
        assert_eq!(labels["ebbtide.instance"], name.as_str());
        let ports = inspect(name, "{{json .NetworkSettings.Ports}}");
        assert!(ports.contains("\"HostIp\":\"127.0.0.1\""), "{ports}");
        let id = inspect(name, "{{.Id}}");
        let files = cgroup_files(&id);
        eprintln!("{name}: cgroup {files:?}");
        for (file, value) in &files {
            match file.as_str() {
                "cpu.cfs_quota_us" => assert_eq!(value, "50000", "half of a 100 ms period"),
                "cpu.max" => assert_eq!(value, "50000 100000"),
                "memory.limit_in_bytes" | "memory.max" => assert_eq!(value, "67108864"),
                other => panic!("unexpected {other}"),
            }
        }
        if files.is_empty() {
            eprintln!("{name}: its cgroup files are not readable from here; HostConfig checked");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_is_replaced() {
    let _turn = ONE_AT_A_TIME.lock().await;
    ready();
    let owned = Owned::new("kill");
    let lb = Serve::start(&docker_config(&owned.owner, "count = 2"));
    let before = eventually("two backends", Duration::from_secs(60), || async {
        let a = active(lb.admin).await;
        (a.len() == 2).then_some(a)
    })
    .await;
    let names = owned.running();
    assert_eq!(names.len(), 2, "{names:?}");
    let victim = names[0].clone();
    let victim_addr = format!(
        "127.0.0.1:{}",
        inspect(
            &victim,
            "{{(index (index .NetworkSettings.Ports \"8080/tcp\") 0).HostPort}}"
        )
    );
    assert!(before.contains(&victim_addr), "{before:?} {victim_addr}");
    let killed = Instant::now();
    let (ok, _, err) = docker(&["kill", &victim]);
    assert!(ok, "docker kill: {err}");
    let after = eventually("a replacement", Duration::from_secs(60), || async {
        let a = active(lb.admin).await;
        (a.len() == 2 && !a.contains(&victim_addr)).then_some(a)
    })
    .await;
    let replaced = killed.elapsed();
    eventually_sync(
        "the killed container to be removed",
        Duration::from_secs(10),
        || (!owned.containers().contains(&victim)).then_some(()),
    );
    let now = owned.running();
    eprintln!("killed {victim} ({victim_addr}); serving again on {after:?} after {replaced:?}; containers {now:?}");
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(!now.contains(&victim));
    assert!(
        lb.log_has("container died"),
        "the provider says why it replaced one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_the_next_start_leaves_no_stray_container() {
    let _turn = ONE_AT_A_TIME.lock().await;
    ready();
    let owned = Owned::new("sigkill");
    let config = docker_config(&owned.owner, "count = 2");
    let mut first = Serve::start(&config);
    eventually("two backends", Duration::from_secs(60), || async {
        (active(first.admin).await.len() == 2).then_some(())
    })
    .await;
    let orphans = owned.running();
    assert_eq!(orphans.len(), 2, "{orphans:?}");
    // SIGKILL: no shutdown runs, the containers stay.
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        owned.running(),
        orphans,
        "containers outlive a SIGKILLed ebbtide"
    );

    let mut second = Serve::start(&config);
    let fresh = eventually(
        "the next run's own fleet",
        Duration::from_secs(60),
        || async {
            let a = active(second.admin).await;
            let c = owned.containers();
            (a.len() == 2 && c.len() == 2 && c.iter().all(|n| !orphans.contains(n))).then_some(c)
        },
    )
    .await;
    eprintln!("left by the killed run: {orphans:?}; after the next start: {fresh:?}");
    assert!(second.log_has("removing containers a previous run left"));
    // And a clean stop leaves nothing at all.
    assert!(
        second.stop(Duration::from_secs(30)),
        "ebbtide did not exit cleanly"
    );
    assert_eq!(owned.containers(), Vec::<String>::new());
}

/// A port free on 127.0.0.1 now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A GET that reports failure instead of panicking: the status, or None.
async fn try_get(url: &str, token: Option<&str>) -> Option<(u16, bytes::Bytes)> {
    use http_body_util::BodyExt;
    let mut req = hyper::Request::get(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req.body(empty()).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), client().request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

/// `docker-compose down` of a project, then the owner's containers and the network, on drop.
struct Compose {
    project: String,
    env: Vec<(String, String)>,
}

impl Compose {
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("docker-compose")
            .arg("-p")
            .arg(&self.project)
            .arg("-f")
            .arg(repo().join("deploy/docker-compose.yml"))
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run docker-compose ({e}): install it (Debian: apt-get install docker-compose)")
            });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let (ok, out) = self.run(&["down", "-v", "--remove-orphans", "-t", "30"]);
        if !ok {
            eprintln!("cleanup: docker-compose down: {out}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_compose_up_answers_through_the_balancer_and_scales() {
    let _turn = ONE_AT_A_TIME.lock().await;
    ready();
    let mut owned = Owned::new("compose");
    let network = unique("net");
    owned.networks.push(network.clone());
    // deploy/ebbtide.toml as shipped, but with this test's network and owner.
    let shipped = std::fs::read_to_string(repo().join("deploy/ebbtide.toml")).unwrap();
    assert!(shipped.contains("network = \"ebbtide\"") && shipped.contains("owner = \"compose\""));
    let config = shipped
        .replace("network = \"ebbtide\"", &format!("network = \"{network}\""))
        .replace(
            "owner = \"compose\"",
            &format!("owner = \"{}\"", owned.owner),
        );
    let config_file = tempfile_path::TempPath::with_contents("toml", &config);
    let (port, admin_port) = (free_port(), free_port());
    let compose = Compose {
        project: unique("compose").replace('-', ""),
        env: vec![
            ("EBBTIDE_PORT".into(), port.to_string()),
            ("EBBTIDE_ADMIN_PORT".into(), admin_port.to_string()),
            (
                "EBBTIDE_CONFIG".into(),
                config_file.path().display().to_string(),
            ),
            ("EBBTIDE_NETWORK".into(), network.clone()),
        ],
    };
    let started = Instant::now();
    let (ok, out) = compose.run(&["up", "-d"]);
    assert!(ok, "docker-compose up -d failed:\n{out}");
    let lb = format!("http://127.0.0.1:{port}/");
    let admin = format!("http://127.0.0.1:{admin_port}/api/v1/backends");
    let token = Some("change-me");
    let answered = eventually(
        "an answer through the balancer",
        Duration::from_secs(90),
        || async { try_get(&lb, None).await.filter(|(s, _)| *s == 200) },
    )
    .await;
    eprintln!(
        "compose: first 200 through the balancer {:?} after `up -d` ({} bytes)",
        started.elapsed(),
        answered.1.len()
    );
    let active_count = || async {
        let (_, body) = try_get(&admin, token).await?;
        let list: Vec<serde_json::Value> = serde_json::from_slice(&body).ok()?;
        Some(list.iter().filter(|b| b["state"] == "active").count())
    };
    eventually(
        "the minimum fleet of 2",
        Duration::from_secs(60),
        || async { (active_count().await? == 2).then_some(()) },
    )
    .await;
    assert_eq!(owned.running().len(), 2, "{:?}", owned.running());
    // The backends are on the compose network, reached at their addresses there.
    let ips = inspect(
        &owned.running()[0],
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
    );
    assert!(!ips.is_empty(), "the backend is on {network}");

    // A load step well above two backends' capacity makes it scale out.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = sample_containers(owned.owner.clone(), stop.clone());
    let target = lb.clone();
    let report = tokio::task::spawn_blocking(move || load(&target, None, "steps:700@15s"))
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let counts = sampler.join().unwrap();
    eprintln!(
        "compose: sent {}, ok {}, errors {} {:?}; backend containers each second: {counts:?}",
        report["sent"], report["ok"], report["errors"], report["errors_by_kind"]
    );
    assert_eq!(report["errors"].as_u64(), Some(0));
    assert!(
        counts.iter().any(|&c| c > 2),
        "never scaled out: {counts:?}"
    );

    let (ok, out) = compose.run(&["down", "-v", "-t", "30"]);
    assert!(ok, "docker-compose down failed:\n{out}");
    assert_eq!(
        owned.containers(),
        Vec::<String>::new(),
        "ebbtide removed its backends when compose stopped it"
    );
    assert!(
        !docker(&["network", "inspect", &network]).0,
        "the network is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_launches_say_why_and_leave_no_container() {
    let _turn = ONE_AT_A_TIME.lock().await;
    ready();
    let owned = Owned::new("fail");
    // An image that is not on the host: nothing is pulled, and the error says so.
    let config = docker_config(&owned.owner, "count = 1")
        .replace(BACKEND_IMAGE, "ebbtide-no-such-image:none");
    let mut lb = Serve::start(&config);
    eventually_sync(
        "the missing image reported",
        Duration::from_secs(20),
        || lb.log_has("ebbtide does not pull").then_some(()),
    );
    assert!(lb.stop(Duration::from_secs(30)));
    assert_eq!(owned.containers(), Vec::<String>::new());
    // A backend that exits at once (a bad flag): the launch fails fast, well before
    // boot_timeout, and the container is removed.
    let config = docker_config(&owned.owner, "count = 1")
        .replace("\"--workers\", \"4\"", "\"--no-such-flag\"");
    let started = Instant::now();
    let mut lb = Serve::start(&config);
    eventually_sync("the exit reported", Duration::from_secs(20), || {
        lb.logs
            .lock()
            .unwrap()
            .iter()
            .find(|l| {
                (l.contains("could not start a backend") || l.contains("did not become healthy"))
                    && (l.contains("exit") || l.contains("Exited"))
            })
            .cloned()
    });
    let failed_after = started.elapsed();
    eprintln!("a backend that exits at once failed its launch after {failed_after:?}");
    assert!(failed_after < Duration::from_secs(20));
    assert!(lb.stop(Duration::from_secs(30)));
    assert_eq!(owned.containers(), Vec::<String>::new());
}
