//! `ebbtide load`: a load generator, open loop by default, to see how the balancer and its
//! backends behave under a given arrival pattern rather than under whatever a fixed set of clients
//! can push; closed loop (`--closed`) for wrk-style maximum throughput.
//!
//! Open loop: requests are due at times fixed in advance by the rate profile (or trace) and the
//! arrival process, whatever the server does. Latency is measured from each request's *scheduled*
//! time, so a server that stalls shows the stall in every request that was due meanwhile (no
//! coordinated omission). A request that could not start on time, e.g. because all
//! `--connections` were busy, waits for a connection and is counted as `late`; it is never skipped.
//! The engine (the `engine` module): a fixed set of connections, each driven by its own loop, on
//! `--threads` worker threads, each of which keeps its share of the schedule itself.
//!
//! Reports: a table, JSON, CSV, SVG, HTML (`html`), an HdrHistogram interval log that
//! `ebbtide load merge` adds up across generators (`hdrlog`); thresholds set the exit code.

pub mod client;
mod engine;
mod hdrlog;
mod html;
pub mod plot;
mod raw;
pub mod report;
mod requests;
pub mod schedule;
mod tls;

use bytes::Bytes;
use client::{RequestTemplate, Target};
use ebbtide_config::time::parse_duration;
use engine::{Feed, Shared};
use hdrlog::{HdrLog, Summary};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use report::{new_histogram, Recorder, Report, RunInfo, Threshold};
use requests::Requests;
use schedule::{ArrivalProcess, Arrivals, Profile, Source, Trace, PROFILE_HELP};
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Options of `ebbtide load`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = PROFILE_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct LoadArgs {
    /// URL to send requests to, http:// or https://, e.g. http://127.0.0.1:8080/.
    #[arg(long, required_unless_present = "requests")]
    pub target: Option<String>,

    /// A weighted mix of requests (urls, methods, headers, bodies, with {{counter}} and
    /// {{random_id}}) from a TOML or JSON-lines file; see --help.
    #[arg(long, long_help = requests::REQUESTS_HELP)]
    pub requests: Option<PathBuf>,

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

    /// Connections, so most requests in flight at once. Open loop: a request due when all are
    /// busy waits for one and counts as late; given, all are opened before the schedule starts;
    /// by default up to 512, each opened on first use (one at a time per thread), so that a run
    /// opens only as many as it needs. Closed loop: exactly this many, back to back; default 64.
    #[arg(long)]
    pub connections: Option<usize>,

    /// Closed loop, as wrk: every connection sends its next request as soon as the last answer
    /// is read, for --duration (no --rate, profile or trace). Latency is then from each send.
    #[arg(long)]
    pub closed: bool,

    /// Worker threads, each driving its share of the connections; default: one per core.
    #[arg(long)]
    pub threads: Option<usize>,

    /// A new connection for every request (`Connection: close`), to load-test connection setup.
    #[arg(long, conflicts_with = "h2")]
    pub no_keepalive: bool,

    /// Workers poll their sockets and timers instead of sleeping between events: each takes a
    /// whole core, and no latency includes the wake of an idle core (100-150 us on a VM). For
    /// a generator on cores of its own.
    #[arg(long)]
    pub busy_poll: bool,

    /// HTTP/2 (h2c with prior knowledge over http://, ALPN h2 over https://), --streams
    /// requests at once on each of the --connections (default with --h2: one per thread).
    #[arg(long)]
    pub h2: bool,

    /// https: trust the CA certificates in this PEM file (default: the system's bundle,
    /// /etc/ssl/certs/ca-certificates.crt or $SSL_CERT_FILE).
    #[arg(long, conflicts_with = "insecure")]
    pub cacert: Option<PathBuf>,

    /// https: accept any server certificate (encryption without authentication, for tests
    /// against self-signed certificates).
    #[arg(long)]
    pub insecure: bool,

    /// With --h2: concurrent streams per connection.
    #[arg(long, default_value_t = 100, requires = "h2")]
    pub streams: usize,

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

    /// ebbtide admin API base URL (e.g. http://127.0.0.1:9901): poll the active backend count
    /// every second for the series and the plot.
    #[arg(long)]
    pub admin: Option<String>,

    /// Bearer token for the admin API.
    #[arg(long)]
    pub admin_token: Option<String>,

    /// A request that starts this long after its scheduled time counts as late.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub late_after: Duration,

    /// Open loop: each wake of a worker's dispatcher also sends the arrivals due within this
    /// much of now, so that arrivals closer together than a timer wake costs share one wake.
    /// Such a request leaves up to this early and its latency is then counted from its actual
    /// send (never less than the exchange took); 0 wakes for every arrival on its own.
    #[arg(long, default_value = "50us", value_parser = parse_duration)]
    pub dispatch_slack: Duration,

    /// Write an HdrHistogram interval log (one latency histogram per second, readable by
    /// HdrHistogram's tools) to this file, for `ebbtide load merge`.
    #[arg(long)]
    pub hdr_log: Option<PathBuf>,

    /// Reports and thresholds.
    #[command(flatten)]
    pub out: Outputs,

    /// `merge`: add up the --hdr-log files of several runs.
    #[command(subcommand)]
    pub command: Option<LoadCommand>,
}

/// Subcommands of `ebbtide load`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum LoadCommand {
    /// Add up the --hdr-log files of several generator runs (processes or machines) into one
    /// exact report: the percentiles of the union of their requests.
    Merge(MergeArgs),
}

/// Options of `ebbtide load merge`.
#[derive(Debug, Clone, clap::Args)]
pub struct MergeArgs {
    /// HdrHistogram interval logs written by `ebbtide load --hdr-log`.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,

    /// Reports and thresholds.
    #[command(flatten)]
    pub out: Outputs,
}

/// Where the report goes and the thresholds that set the exit code.
#[derive(Debug, Clone, clap::Args)]
pub struct Outputs {
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write the per-second series as CSV to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,

    /// Write an SVG plot of rate and latency over time to this file.
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// Write the report as one self-contained HTML page (summary, thresholds, percentiles,
    /// plots, errors by class) to this file.
    #[arg(long)]
    pub html: Option<PathBuf>,

    /// Threshold: exit with code 1 when errors / scheduled requests exceeds this. The default,
    /// 1.0, never fails: a failing target is often what an experiment is about; set e.g. 0.001
    /// in CI.
    #[arg(long, default_value_t = 1.0)]
    pub max_error_ratio: f64,

    /// Threshold: exit with code 1 when the p99 latency exceeds this, e.g. 200ms.
    #[arg(long, value_parser = parse_duration)]
    pub max_p99: Option<Duration>,

    /// Threshold: exit with code 1 when late / scheduled requests exceeds this (open loop), e.g.
    /// 0.01: above it the generator, not the target, limited the run.
    #[arg(long)]
    pub max_late_ratio: Option<f64>,

    /// Do not print the summary table.
    #[arg(long)]
    pub quiet: bool,
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

/// Connections when `--connections` is not given: open loop, as many as may be needed (each is
/// opened on first use, so a light run opens few); closed loop, wrk-style 64.
const OPEN_CONNECTIONS: usize = 512;
const CLOSED_CONNECTIONS: usize = 64;

/// How long before the schedule starts, so that its first arrivals are not late because threads
/// are still starting and connections opening: 200 ms (over TLS with certificate checks the
/// first few took more than 50 ms on a busy machine), and where every connection is opened
/// first (`each` of them per worker) the time of that: a worker opens its connections
/// concurrently, so the wait is the CPU of each (a TLS 1.3 handshake with a P-256 certificate
/// took about a millisecond of the generator's core on this project's VM; a TCP connect and
/// its accept tens of microseconds).
fn lead(each: usize, all_opened: bool, tls: bool) -> Duration {
    let per = match (all_opened, tls) {
        (false, _) => Duration::ZERO,
        (true, true) => Duration::from_micros(1500),
        (true, false) => Duration::from_micros(50),
    };
    Duration::from_millis(200) + per * each as u32
}

/// Runs the load and prints the report; the exit code says whether the thresholds held.
pub async fn run(args: LoadArgs) -> Result<i32, String> {
    if let Some(LoadCommand::Merge(m)) = &args.command {
        return merge(m);
    }
    let mix = match &args.requests {
        Some(path) => {
            let name = path.display().to_string();
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("cannot read {name}: {e}"))?;
            Some((text, name))
        }
        None => None,
    };
    let url = match (&args.target, &mix) {
        (Some(t), _) => t.clone(),
        (None, Some((text, name))) => Requests::first_origin(text, name)?.ok_or_else(|| {
            format!("{name}: the first url is a path; give --target for its host")
        })?,
        (None, None) => return Err("give --target URL".into()),
    };
    let (source, duration, what, arrivals_name) = if args.closed {
        if args.rate.is_some() || args.profile.is_some() || args.trace.is_some() {
            return Err(
                "--closed sends as fast as answers come: drop --rate, --profile and --trace".into(),
            );
        }
        let d = args
            .duration
            .ok_or("--closed needs --duration (e.g. 10s)")?
            .as_secs_f64();
        (None, d, "closed loop".to_string(), "closed".to_string())
    } else {
        let (source, duration, what) = plan(&args)?;
        let name = match (&source, args.arrivals) {
            (Source::Times(_), _) => "trace",
            (_, ArrivalProcess::Poisson) => "poisson",
            (_, ArrivalProcess::Uniform) => "uniform",
        };
        (Some(source), duration, what, name.to_string())
    };
    let template = template(&args)?;
    let target = Target::resolve(&url).await?;
    let (requests, method) = match &mix {
        Some((text, name)) => {
            let r = Requests::mix(text, name, &target, template.headers, args.seed)?;
            let what = format!("mix of {} from {name}", r.kinds());
            (r, what)
        }
        None => (
            Requests::single(target.clone(), template),
            args.method.to_ascii_uppercase(),
        ),
    };
    let hdr_file = match &args.hdr_log {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        )),
        None => None,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let connections = args
        .connections
        .unwrap_or(if args.h2 {
            args.threads.unwrap_or(cores)
        } else if args.closed {
            CLOSED_CONNECTIONS
        } else {
            OPEN_CONNECTIONS
        })
        .max(1);
    let threads = args.threads.unwrap_or(cores).clamp(1, connections);
    // An open loop given `--connections` opens them all before its schedule starts, as the
    // closed loop does: the fixed set the user chose, not grown on first use.
    let preopen = args.connections.is_some() && !args.no_keepalive;
    let start = Instant::now()
        + lead(
            connections.div_ceil(threads),
            args.closed || preopen,
            target.tls_name.is_some(),
        );
    let shared = Arc::new(Shared::new(
        threads,
        start,
        args.timeout,
        args.late_after,
        args.dispatch_slack,
        tls::Dial {
            addr: target.addr,
            tls: match &target.tls_name {
                Some(host) => Some(Arc::new(tls::Tls::new(
                    host,
                    args.cacert.as_deref(),
                    args.insecure,
                    args.h2,
                )?)),
                None => None,
            },
        },
        !args.no_keepalive,
        args.busy_poll,
        args.h2.then_some(args.streams.max(1)),
        requests,
    ));
    let finished = Arc::new(AtomicBool::new(false));
    let (hdr_done, hdr_wait) = tokio::sync::oneshot::channel::<()>();
    let hdr_task = hdr_file.map(|file| {
        let base = SystemTime::now() + start.saturating_duration_since(Instant::now());
        tokio::spawn(hdr_logger(
            shared.clone(),
            HdrLog::new(file, base),
            hdr_wait,
        ))
    });

    let mut workers = Vec::new();
    for i in 0..threads {
        // Connections spread evenly, the first workers taking the remainder.
        let n = connections / threads + usize::from(i < connections % threads);
        let feed = match &source {
            None => Feed::Closed(start + Duration::from_secs_f64(duration)),
            Some(source) => Feed::Open {
                arrivals: Arrivals::new(source.clone(), duration, args.seed),
                first: i,
                step: threads,
                preopen,
            },
        };
        let shared = shared.clone();
        workers.push(
            std::thread::Builder::new()
                .name(format!("load-worker-{i}"))
                .spawn(move || engine::worker(shared, i, n, feed))
                .map_err(|e| format!("cannot start a worker thread: {e}"))?,
        );
    }

    if let Some(admin) = args.admin.clone() {
        tokio::spawn(poll_admin(
            shared.clone(),
            admin,
            args.admin_token.clone(),
            finished.clone(),
        ));
    }
    let tty = std::io::stdout().is_terminal();
    let progress = (!args.out.quiet)
        .then(|| tokio::spawn(progress_line(shared.clone(), finished.clone(), tty)));
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                shared.stop.store(true, Ordering::SeqCst);
            }
        });
    }

    // The workers end when their feed has ended and every request they took is finished.
    let _ = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
    })
    .await;
    finished.store(true, Ordering::SeqCst);
    if let Some(p) = progress {
        let _ = p.await;
    }
    let _ = hdr_done.send(());
    let log = match hdr_task {
        Some(t) => Some(t.await.map_err(|e| e.to_string())??),
        None => None,
    };

    let rec = shared.merged();
    if let Some(log) = log {
        let mut summary = Summary::of(&rec);
        summary.target = url.clone();
        summary.method = method.clone();
        summary.mode = if args.closed { "closed" } else { "open" }.to_string();
        summary.duration_s = duration;
        summary.late_after_ms = args.late_after.as_secs_f64() * 1e3;
        log.finish(&summary)?;
    }
    let mut report = Report::build(
        &rec,
        RunInfo {
            target: url,
            method,
            schedule: what,
            arrivals: arrivals_name,
            duration_s: duration,
            elapsed_s: rec.last_done_s,
            late_after_ms: args.late_after.as_secs_f64() * 1e3,
        },
    );
    report.mode = if args.closed { "closed" } else { "open" }.to_string();
    report.connections = connections;
    report.threads = threads;
    report.protocol = match (args.h2, target.tls_name.is_some()) {
        (true, true) => "h2",
        (true, false) => "h2c",
        (false, true) => "http/1.1 (TLS)",
        (false, false) => "http/1.1",
    }
    .to_string();
    report.streams = if args.h2 { args.streams.max(1) } else { 1 };
    report.thresholds = thresholds(&args.out, &report);
    write_outputs(&report, &args.out)
}

/// Writes one interval to the log at every whole second of the run, and the last one when told
/// the run is over.
async fn hdr_logger(
    shared: Arc<Shared>,
    mut log: HdrLog<std::io::BufWriter<std::fs::File>>,
    mut done: tokio::sync::oneshot::Receiver<()>,
) -> Result<HdrLog<std::io::BufWriter<std::fs::File>>, String> {
    let collect = |shared: &Shared| {
        let mut h = new_histogram(3);
        for r in &shared.recorders {
            let mut r = r.lock().expect("recorder lock");
            let _ = h.add(&r.interval);
            r.interval.reset();
        }
        h
    };
    let mut tick = tokio::time::interval_at(
        (shared.start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let h = collect(&shared);
                log.interval(&h, shared.start.elapsed())?;
            }
            _ = &mut done => {
                let h = collect(&shared);
                log.interval(&h, shared.start.elapsed())?;
                return Ok(log);
            }
        }
    }
}

/// `ebbtide load merge`: one report from the interval logs of several runs.
fn merge(args: &MergeArgs) -> Result<i32, String> {
    let mut logs = Vec::new();
    for path in &args.files {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {name}: {e}"))?;
        logs.push(hdrlog::read(&text, &name)?);
    }
    let (rec, all) = hdrlog::merge(&logs);
    let mut report = Report::build(
        &rec,
        RunInfo {
            target: all.target,
            method: all.method,
            schedule: format!("merge of {} logs", logs.len()),
            arrivals: "merged".into(),
            duration_s: all.duration_s,
            elapsed_s: rec.last_done_s,
            late_after_ms: all.late_after_ms,
        },
    );
    report.mode = all.mode;
    report.thresholds = thresholds(&args.out, &report);
    write_outputs(&report, &args.out)
}

/// Writes the report where the options say, prints its table, and checks the thresholds: the
/// exit code.
fn write_outputs(report: &Report, out: &Outputs) -> Result<i32, String> {
    let write = |path: &PathBuf, text: String| {
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    if let Some(path) = &out.json {
        write(
            path,
            serde_json::to_string_pretty(report).expect("report serializes") + "\n",
        )?;
    }
    if let Some(path) = &out.csv {
        write(path, report.series_csv())?;
    }
    if let Some(path) = &out.plot {
        write(path, plot::svg(report))?;
    }
    if let Some(path) = &out.html {
        write(path, html::html(report))?;
    }
    if !out.quiet {
        print!("{}", report.table());
    }
    Ok(exit_code(report))
}

/// The thresholds the options set, checked against a report (also written into it).
fn thresholds(args: &Outputs, report: &Report) -> Vec<Threshold> {
    let mut out = vec![Threshold::check(
        "max-error-ratio",
        args.max_error_ratio,
        report.error_ratio,
    )];
    if let Some(d) = args.max_p99 {
        out.push(Threshold::check(
            "max-p99",
            d.as_secs_f64() * 1e3,
            report.latency_ms.p99,
        ));
    }
    if let Some(r) = args.max_late_ratio {
        let ratio = report.late as f64 / (report.scheduled.max(1)) as f64;
        out.push(Threshold::check("max-late-ratio", r, ratio));
    }
    out
}

/// 1 when a threshold was breached (each one named on stderr), else 0.
fn exit_code(report: &Report) -> i32 {
    let mut code = 0;
    for t in report.thresholds.iter().filter(|t| !t.ok) {
        let what = match t.name.as_str() {
            "max-p99" => format!("{}ms: p99 was {:.3} ms", t.limit, t.value),
            "max-error-ratio" => format!("{}: error ratio was {:.6}", t.limit, t.value),
            _ => format!("{}: late ratio was {:.6}", t.limit, t.value),
        };
        eprintln!("ebbtide load: threshold breached: --{} {what}", t.name);
        code = 1;
    }
    code
}

/// The live view, once a second: on a terminal three lines redrawn in place (elapsed, offered and
/// achieved rate, in flight, waiting, late; p50 and p99 of the last second, errors by class; a
/// sparkline of the achieved rate), otherwise one plain line every 5 seconds.
async fn progress_line(shared: Arc<Shared>, finished: Arc<AtomicBool>, tty: bool) {
    const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let (mut last_sched, mut last_ok) = (0u64, 0u64);
    let mut history: Vec<f64> = Vec::new();
    let mut printed = false;
    let mut secs = 0u64;
    while !finished.load(Ordering::SeqCst) {
        tick.tick().await;
        secs += 1;
        let mut now = Recorder::new();
        for r in &shared.recorders {
            let mut r = r.lock().expect("recorder lock");
            now.scheduled += r.scheduled;
            now.ok += r.ok;
            now.late += r.late;
            for (k, v) in &r.errors {
                *now.errors.entry(*k).or_default() += v;
            }
            let _ = now.recent.add(&r.recent);
            r.recent.reset();
        }
        let q = |q: f64| {
            if now.recent.is_empty() {
                0.0
            } else {
                now.recent.value_at_quantile(q) as f64 / 1000.0
            }
        };
        let dispatched = shared.dispatched.load(Ordering::Relaxed);
        let offered_total = if dispatched > 0 {
            dispatched
        } else {
            now.scheduled
        };
        let offered = offered_total.saturating_sub(last_sched) as f64;
        let achieved = (now.ok - last_ok) as f64;
        last_sched = offered_total;
        last_ok = now.ok;
        history.push(achieved);
        let in_flight = shared.in_flight();
        let waiting = shared.outstanding().saturating_sub(in_flight);
        let classes: Vec<String> = now
            .errors
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let errors = if classes.is_empty() {
            "0".to_string()
        } else {
            format!("{} ({})", now.error_count(), classes.join(", "))
        };
        let head = format!(
            "[{secs:>5}s] offered {:>9.1}/s  achieved {:>9.1}/s  in flight {:>5}  waiting {:>5}  late {}",
            offered,
            achieved,
            in_flight,
            waiting,
            now.late
        );
        let mut out = std::io::stdout().lock();
        if tty {
            let top = history
                .iter()
                .rev()
                .take(60)
                .fold(0.0, |a: f64, b| a.max(*b));
            let spark: String = history
                .iter()
                .rev()
                .take(60)
                .rev()
                .map(|v| {
                    let i = if top > 0.0 {
                        (v / top * 7.0).round() as usize
                    } else {
                        0
                    };
                    SPARKS[i.min(7)]
                })
                .collect();
            let text = format!(
                "{}\x1b[2K{head}\n\x1b[2K         p50 {:>9.3} ms  p99 {:>9.3} ms  errors {errors}\n\x1b[2K         achieved {spark}\n",
                if printed { "\x1b[3A" } else { "" },
                q(0.5),
                q(0.99),
            );
            let _ = out.write_all(text.as_bytes());
        } else if secs.is_multiple_of(5) {
            let _ = writeln!(
                out,
                "{head}  p50 {:.3} ms  p99 {:.3} ms  errors {errors}",
                q(0.5),
                q(0.99)
            );
        }
        let _ = out.flush();
        printed = true;
    }
}

/// Polls `GET {admin}/api/v1/backends` once a second and records how many are active. A failing
/// poll leaves that second without a count.
async fn poll_admin(
    shared: Arc<Shared>,
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
        let s = shared.second_of(Instant::now());
        shared.recorders[0]
            .lock()
            .expect("recorder lock")
            .second(s)
            .backends = Some(active);
    }
}
