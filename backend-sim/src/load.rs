//! `ebbtide load`: an open-loop load generator, to see how the balancer and its backends behave
//! under a given arrival pattern rather than under whatever a fixed set of clients can push.
//!
//! Open loop: requests are due at times fixed in advance by the rate profile (or trace) and the
//! arrival process, whatever the server does. Latency is measured from each request's *scheduled*
//! time, so a server that stalls shows the stall in every request that was due meanwhile (no
//! coordinated omission). A request that could not start on time, e.g. because all
//! `--connections` were busy, waits for a connection and is counted as `late`; it is never skipped.
//! A dedicated thread keeps the schedule with tens of microseconds of error (see [`crate::timer`]).

pub mod client;
pub mod plot;
pub mod report;
pub mod schedule;

use crate::timer::Oversleep;
use bytes::Bytes;
use client::{Pool, RequestTemplate, Target};
use ebbtide_config::time::parse_duration;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use report::{ErrorKind, Outcome, Recorder, Report, RunInfo};
use schedule::{ArrivalProcess, Arrivals, Profile, Source, Trace, PROFILE_HELP};
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Options of `ebbtide load`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = PROFILE_HELP)]
pub struct LoadArgs {
    /// URL to send requests to (http:// only), e.g. http://127.0.0.1:8080/.
    #[arg(long)]
    pub target: String,

    /// Requests per second (the constant profile; not needed with a profile that gives rates).
    #[arg(long)]
    pub rate: Option<f64>,

    /// How long to offer load, e.g. 60s; default: the profile's or trace's own length.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// How arrivals are spaced at a given rate.
    #[arg(long, value_enum, default_value = "poisson")]
    pub arrivals: ArrivalProcess,

    /// Rate profile (see PROFILES below), e.g. steps:10@30s,50@30s.
    #[arg(long, conflicts_with = "trace")]
    pub profile: Option<String>,

    /// Trace CSV to replay: `seconds,rate` rows or one row per request (see TRACES below).
    #[arg(long)]
    pub trace: Option<PathBuf>,

    /// Play a trace this many times faster (every request kept).
    #[arg(long, default_value_t = 1.0)]
    pub speedup: f64,

    /// Multiply every rate of the profile or trace by this.
    #[arg(long, default_value_t = 1.0)]
    pub rate_multiplier: f64,

    /// Most connections (so requests) in flight at once; a request due when all are busy waits
    /// for one and counts as late.
    #[arg(long, default_value_t = 512)]
    pub connections: usize,

    /// Per-request limit, counted from the scheduled send time.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// HTTP method.
    #[arg(long, default_value = "GET")]
    pub method: String,

    /// Request body size in bytes (zeros).
    #[arg(long, default_value_t = 0)]
    pub body_size: usize,

    /// Extra request header, `Name: value`; repeatable.
    #[arg(long = "header", short = 'H')]
    pub headers: Vec<String>,

    /// Seed of the arrival times, for reproducible runs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write the per-second series as CSV to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,

    /// Write an SVG plot of rate and latency over time to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// ebbtide admin API base URL (e.g. http://127.0.0.1:9901): poll the active backend count
    /// every second for the series and the plot.
    #[arg(long)]
    pub admin: Option<String>,

    /// Bearer token for the admin API.
    #[arg(long)]
    pub admin_token: Option<String>,

    /// Exit with code 1 when errors / scheduled requests exceeds this. The default, 1.0, never
    /// fails: a failing target is often what an experiment is about; set e.g. 0.01 in CI.
    #[arg(long, default_value_t = 1.0)]
    pub max_error_ratio: f64,

    /// A request that starts this long after its scheduled time counts as late.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub late_after: Duration,

    /// Do not print the summary table.
    #[arg(long)]
    pub quiet: bool,
}

/// What every request task shares.
struct Run {
    pool: Pool,
    template: RequestTemplate,
    recorder: Mutex<Recorder>,
    start: Instant,
    timeout: Duration,
    late_after: Duration,
}

impl Run {
    fn second_of(&self, t: Instant) -> usize {
        t.saturating_duration_since(self.start).as_secs() as usize
    }
}

/// The arrivals of a run, its length and a description, from the options.
fn plan(args: &LoadArgs) -> Result<(Source, f64, String), String> {
    if !(args.rate_multiplier.is_finite() && args.rate_multiplier >= 0.0) {
        return Err("--rate-multiplier must be zero or more".into());
    }
    if !(args.speedup.is_finite() && args.speedup > 0.0) {
        return Err("--speedup must be positive".into());
    }
    let (source, natural, what) = if let Some(path) = &args.trace {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {name}: {e}"))?;
        match schedule::parse_trace(&text, &name)? {
            Trace::Rates(points) => {
                let scale = args.speedup * args.rate_multiplier;
                let profile = Profile::Series(
                    points
                        .into_iter()
                        .map(|(t, r)| (t / args.speedup, r * scale))
                        .collect(),
                );
                let natural = profile.natural_secs();
                (
                    Source::Rate(profile, args.arrivals),
                    natural,
                    format!("trace {name} (rates)"),
                )
            }
            Trace::Times(times) => {
                let times =
                    schedule::trace_times(&times, args.speedup, args.rate_multiplier, args.seed);
                // Just past the last request, so that it is sent.
                let natural = times.last().map(|t| t + 0.001);
                (
                    Source::Times(times),
                    natural,
                    format!("trace {name} (requests)"),
                )
            }
        }
    } else {
        let profile = match &args.profile {
            Some(spec) => Profile::parse(spec, args.rate)?,
            None => Profile::Constant(
                args.rate
                    .ok_or("give --rate (requests per second), --profile or --trace; see --help")?,
            ),
        }
        .scaled(args.rate_multiplier);
        let natural = profile.natural_secs();
        let what = profile.to_string();
        (Source::Rate(profile, args.arrivals), natural, what)
    };
    let duration = match (args.duration, natural) {
        (Some(d), _) => d.as_secs_f64(),
        (None, Some(n)) => n,
        (None, None) => return Err("give --duration (e.g. 60s)".into()),
    };
    if !(duration > 0.0 && duration.is_finite()) {
        return Err("the run has no length; give --duration".into());
    }
    Ok((source, duration, what))
}

fn template(args: &LoadArgs) -> Result<RequestTemplate, String> {
    let method: Method = args
        .method
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| format!("--method {}: not an HTTP method", args.method))?;
    let mut headers = HeaderMap::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("--header `{h}`: expected `Name: value`"))?;
        let name: HeaderName = k
            .trim()
            .parse()
            .map_err(|_| format!("--header `{h}`: bad name"))?;
        let value =
            HeaderValue::from_str(v.trim()).map_err(|_| format!("--header `{h}`: bad value"))?;
        headers.append(name, value);
    }
    Ok(RequestTemplate {
        method,
        headers,
        body: Bytes::from(vec![0u8; args.body_size]),
    })
}

/// Runs the load and prints the report; the exit code says whether errors stayed under the limit.
pub async fn run(args: LoadArgs) -> Result<i32, String> {
    let (source, duration, what) = plan(&args)?;
    let arrivals_name = match (&source, args.arrivals) {
        (Source::Times(_), _) => "trace",
        (_, ArrivalProcess::Poisson) => "poisson",
        (_, ArrivalProcess::Uniform) => "uniform",
    }
    .to_string();
    let template = template(&args)?;
    let target = Target::resolve(&args.target).await?;
    // A short lead, so that the first arrivals are not late because threads are still starting.
    let start = Instant::now() + Duration::from_millis(50);
    let run = Arc::new(Run {
        pool: Pool::new(target, args.connections),
        template,
        recorder: Mutex::new(Recorder::new()),
        start,
        timeout: args.timeout,
        late_after: args.late_after,
    });
    let stop = Arc::new(AtomicBool::new(false));
    let finished = Arc::new(AtomicBool::new(false));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);

    let scheduler = {
        let run = run.clone();
        let stop = stop.clone();
        let handle = tokio::runtime::Handle::current();
        let arrivals = Arrivals::new(source, duration, args.seed);
        std::thread::Builder::new()
            .name("load-scheduler".into())
            .spawn(move || schedule_loop(run, arrivals, stop, handle, done_tx))
            .map_err(|e| format!("cannot start the scheduler thread: {e}"))?
    };

    if let Some(admin) = args.admin.clone() {
        tokio::spawn(poll_admin(
            run.clone(),
            admin,
            args.admin_token.clone(),
            finished.clone(),
        ));
    }
    let progress = (std::io::stdout().is_terminal() && !args.quiet)
        .then(|| tokio::spawn(progress_line(run.clone(), finished.clone())));
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                stop.store(true, Ordering::SeqCst);
            }
        });
    }

    // Every request task holds a sender; the channel closes when the schedule and all are done.
    let _ = done_rx.recv().await;
    finished.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || scheduler.join()).await;
    if let Some(p) = progress {
        let _ = p.await;
    }

    let report = {
        let rec = run.recorder.lock().expect("recorder lock");
        let elapsed = rec.last_done_s;
        Report::build(
            &rec,
            RunInfo {
                target: args.target.clone(),
                method: args.method.to_ascii_uppercase(),
                schedule: what,
                arrivals: arrivals_name,
                duration_s: duration,
                elapsed_s: elapsed,
                late_after_ms: args.late_after.as_secs_f64() * 1e3,
            },
        )
    };
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    if let Some(path) = &args.json {
        write(
            path,
            serde_json::to_string_pretty(&report).expect("report serializes") + "\n",
        )?;
    }
    if let Some(path) = &args.csv {
        write(path, report.series_csv())?;
    }
    if let Some(path) = &args.plot {
        write(path, plot::svg(&report))?;
    }
    if !args.quiet {
        print!("{}", report.table());
    }
    Ok(if report.error_ratio > args.max_error_ratio {
        1
    } else {
        0
    })
}

/// The scheduler thread: waits for each arrival's time and starts its request task then.
fn schedule_loop(
    run: Arc<Run>,
    arrivals: Arrivals,
    stop: Arc<AtomicBool>,
    handle: tokio::runtime::Handle,
    done: tokio::sync::mpsc::Sender<()>,
) {
    let mut oversleep = Oversleep::new();
    // Scheduled counts are handed to the recorder in batches: one lock per arrival would make the
    // recorder the scheduler's bottleneck at tens of thousands of requests per second.
    let mut pending: Vec<usize> = Vec::with_capacity(64);
    let flush = |pending: &mut Vec<usize>| {
        if !pending.is_empty() {
            let mut rec = run.recorder.lock().expect("recorder lock");
            for s in pending.drain(..) {
                rec.on_scheduled(s);
            }
        }
    };
    for offset in arrivals {
        let at = run.start + Duration::from_secs_f64(offset);
        if pending.len() >= 64
            || at.saturating_duration_since(Instant::now()) > Duration::from_millis(1)
        {
            flush(&mut pending);
        }
        loop {
            if stop.load(Ordering::SeqCst) {
                flush(&mut pending);
                return;
            }
            let left = at.saturating_duration_since(Instant::now());
            if left > Duration::from_millis(150) {
                // Long gaps (traces) in slices, so that ctrl-c is noticed.
                std::thread::sleep(Duration::from_millis(100));
            } else {
                oversleep.sleep_until(at);
                break;
            }
        }
        pending.push(run.second_of(at));
        handle.spawn(one_request(run.clone(), at, done.clone()));
    }
    flush(&mut pending);
}

/// One request, due at `at`: waits for a connection if all are busy, sends, reads the answer, and
/// records the outcome with its latency from `at`.
async fn one_request(run: Arc<Run>, at: Instant, _done: tokio::sync::mpsc::Sender<()>) {
    // Set when sending begins: whether it was late, and that it happened at all.
    let started = AtomicBool::new(false);
    let late = AtomicBool::new(false);
    let exchange = async {
        let slot = match run.pool.try_slot() {
            Some(s) => s,
            None => run.pool.slot().await,
        };
        late.store(
            Instant::now().saturating_duration_since(at) > run.late_after,
            Ordering::Relaxed,
        );
        started.store(true, Ordering::Relaxed);
        let result = run.pool.send(&run.template).await;
        drop(slot);
        result
    };
    let result = tokio::time::timeout_at((at + run.timeout).into(), exchange).await;
    let now = Instant::now();
    let outcome = match result {
        Ok(Ok(answer)) => Outcome::Answered {
            status: answer.status,
            latency_us: now.saturating_duration_since(at).as_micros() as u64,
            bytes: answer.bytes,
        },
        Ok(Err(kind)) => Outcome::Failed(kind),
        Err(_) => Outcome::Failed(ErrorKind::Timeout),
    };
    let sent = started.load(Ordering::Relaxed);
    let mut rec = run.recorder.lock().expect("recorder lock");
    rec.sent += u64::from(sent);
    // A request that timed out waiting for a connection was never sent, so it is late too.
    rec.late += u64::from(!sent || late.load(Ordering::Relaxed));
    rec.on_outcome(run.second_of(at), run.second_of(now), outcome);
    let done_s = now.saturating_duration_since(run.start).as_secs_f64();
    rec.last_done_s = rec.last_done_s.max(done_s);
}

/// Prints `[ 12s] offered .. achieved .. p99 ..` over itself once a second while stdout is a TTY.
async fn progress_line(run: Arc<Run>, finished: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_sched, mut last_ok) = (0u64, 0u64);
    let mut printed = false;
    while !finished.load(Ordering::SeqCst) {
        tick.tick().await;
        let line = {
            let mut rec = run.recorder.lock().expect("recorder lock");
            let p99 = if rec.recent.is_empty() {
                0.0
            } else {
                rec.recent.value_at_quantile(0.99) as f64 / 1000.0
            };
            rec.recent.reset();
            let line = format!(
                "\r[{:>5}s] offered {:>8.1}/s  achieved {:>8.1}/s  p99 {:>9.3} ms  errors {}  late {}   ",
                run.start.elapsed().as_secs(),
                (rec.scheduled - last_sched) as f64,
                (rec.ok - last_ok) as f64,
                p99,
                rec.error_count(),
                rec.late
            );
            last_sched = rec.scheduled;
            last_ok = rec.ok;
            line
        };
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
        printed = true;
    }
    if printed {
        println!();
    }
}

/// Polls `GET {admin}/api/v1/backends` once a second and records how many are active. A failing
/// poll leaves that second without a count.
async fn poll_admin(
    run: Arc<Run>,
    admin: String,
    token: Option<String>,
    finished: Arc<AtomicBool>,
) {
    let client = ebbtide_balancer::api::client::AdminClient::new(token, Duration::from_millis(900));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !finished.load(Ordering::SeqCst) {
        tick.tick().await;
        let Ok(backends) = client.backends(&admin).await else {
            continue;
        };
        let active = backends
            .iter()
            .filter(|b| b.state == ebbtide_balancer::api::BackendState::Active)
            .count() as u32;
        let s = run.second_of(Instant::now());
        run.recorder
            .lock()
            .expect("recorder lock")
            .second(s)
            .backends = Some(active);
    }
}
