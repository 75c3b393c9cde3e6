//! HTTP benchmark: small GETs on loopback through a pair of `weft-proxy` processes
//! (client-side outbound → server-side inbound) against a direct connection to the same
//! backend and against baseline pairs (haproxy in HTTP mode, nginx) — all in one run, so
//! noise of the shared machine hits every path alike.
//!
//! Run: `cargo bench --bench http` (builds `weft-proxy` in release first). It prints a
//! Markdown table and writes it to `target/bench-http.md`.
//!
//! Paths, per client protocol:
//! - HTTP/1.1 (keep-alive): direct; the weft pair (HTTP/1.1 between the proxies); the weft
//!   pair with `--outbound-http2-upgrade-targets '*'` (HTTP/2 with `l5d-orig-proto` between
//!   the proxies, HTTP/1.1 again to the backend); a haproxy pair (`mode http`, `nbthread 1`,
//!   `http-reuse always`); an nginx pair (one process each, keep-alive upstreams);
//! - HTTP/2 (prior knowledge): direct; the weft pair; a haproxy pair with h2 on both sides
//!   (nginx cannot proxy HTTP/2 to its upstream, so it has no HTTP/2 pair here).
//!
//! The backend is a hyper server (HTTP/1.1 and h2c on one port, its own thread) answering
//! every request with 64 bytes; the client is hyper's connection API on one thread.
//! Points:
//! - open loop at 200 and 2 000 req/s: constant arrival rate paced by a timerfd, latency
//!   from each request's intended send time (queueing is not hidden), HDR histogram.
//!   HTTP/1.1 is never pipelined (proxies do not take that reliably): due requests queue
//!   for 16 keep-alive connections, each taking the next once its response is in, and a
//!   wait for a free connection counts in the latency. HTTP/2: every request a new stream
//!   at its due time on one of 4 connections;
//! - closed loop (max throughput): 16 HTTP/1.1 connections with one request in flight
//!   each, or 4 HTTP/2 connections × 16 streams.
//!
//! Each point runs after an unrecorded warm-up; points are repeated, the reps of all paths
//! interleaved, and every figure is the median over the reps. Per proxy: CPU seconds per
//! 10 000 requests (from /proc, inside the window), RSS at the end of each point's window
//! (the table shows it at 2 000 req/s), idle and peak RSS. Once, after the reps, `h2load`
//! (if installed) measures every path's max throughput with the closed loop's connections
//! and concurrency, as a cross-check of the generator.
//!
//! Env knobs:
//! - `WEFT_BENCH_QUICK=1`: smoke run, 2 s per point and 1 rep (the knobs below still win);
//! - `WEFT_BENCH_SECS` (default 10): measured seconds of an open-loop point; closed-loop
//!   points (and h2load) measure half of it;
//! - `WEFT_BENCH_REPS` (default 3): repetitions of every point;
//! - `WEFT_BENCH_WARMUP_MS` (default 500): unrecorded warm-up before each point;
//! - `WEFT_BENCH_RATES` (default `200,2000`): open-loop rates in req/s;
//! - `WEFT_BENCH_PROTOCOLS` (default `h1,h2`): client protocols;
//! - `WEFT_BENCH_ONLY`: comma-separated paths besides direct (`weft`, `weft-upgrade`,
//!   `haproxy`, `nginx`); all by default;
//! - `WEFT_BENCH_H2LOAD=0`: skip the h2load cross-check;
//! - `WEFT_BENCH_PROXY_BIN`: a `weft-proxy` binary to measure instead of building one;
//! - `WEFT_BENCH_NICE` (default -10): nice value of the bench and everything it starts
//!   (needs root to go below 0; 0 leaves it).
//!
//! A default run takes about 12 minutes on 2 CPUs. Targets are shown next to the figures,
//! not asserted.

#[path = "http/baselines.rs"]
mod baselines;
#[path = "http/h2load.rs"]
mod h2load;
#[path = "http/load.rs"]
mod http_load;
// Shared with the transport bench, which uses the parts this one does not.
#[allow(dead_code)]
#[path = "transport/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "transport/procs.rs"]
mod procs;
#[path = "http/report.rs"]
mod report;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    http_load::Proto,
    load::Kind,
    procs::{Pair, Proc},
};

/// The run's settings, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub open_secs: f64,
    pub closed_secs: f64,
    pub warmup: Duration,
    pub reps: usize,
    pub rates: Vec<u64>,
    pub protocols: Vec<Proto>,
    pub only: Option<Vec<String>>,
    pub h2load: bool,
    pub nice: i32,
}

impl Config {
    fn from_env() -> anyhow::Result<Config> {
        fn var<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>> {
            match std::env::var(name) {
                Ok(v) if !v.trim().is_empty() => match v.trim().parse() {
                    Ok(v) => Ok(Some(v)),
                    Err(_) => bail!("{name}={v:?} is not a valid value"),
                },
                _ => Ok(None),
            }
        }
        let list = |name: &str| -> anyhow::Result<Option<Vec<String>>> {
            Ok(var::<String>(name)?.map(|v| v.split(',').map(|s| s.trim().to_string()).collect()))
        };
        let quick = var::<String>("WEFT_BENCH_QUICK")?.is_some_and(|v| v != "0");
        let open_secs: f64 = var("WEFT_BENCH_SECS")?.unwrap_or(if quick { 2.0 } else { 10.0 });
        if open_secs.is_nan() || open_secs <= 0.0 {
            bail!("WEFT_BENCH_SECS must be positive");
        }
        let rates = match list("WEFT_BENCH_RATES")? {
            None => vec![200, 2000],
            Some(v) => v
                .iter()
                .map(|r| r.parse::<u64>().ok().filter(|&r| r > 0))
                .collect::<Option<Vec<_>>>()
                .context("WEFT_BENCH_RATES must be a comma-separated list of positive req/s")?,
        };
        let protocols = match list("WEFT_BENCH_PROTOCOLS")? {
            None => vec![Proto::H1, Proto::H2],
            Some(v) => v
                .iter()
                .map(|p| match p.as_str() {
                    "h1" => Ok(Proto::H1),
                    "h2" => Ok(Proto::H2),
                    _ => bail!("WEFT_BENCH_PROTOCOLS: {p:?} is neither h1 nor h2"),
                })
                .collect::<anyhow::Result<_>>()?,
        };
        Ok(Config {
            open_secs,
            closed_secs: open_secs / 2.0,
            warmup: Duration::from_millis(var("WEFT_BENCH_WARMUP_MS")?.unwrap_or(500)),
            reps: var::<usize>("WEFT_BENCH_REPS")?.unwrap_or(if quick { 1 } else { 3 }).max(1),
            rates,
            protocols,
            only: list("WEFT_BENCH_ONLY")?,
            h2load: var::<String>("WEFT_BENCH_H2LOAD")?.is_none_or(|v| v != "0"),
            nice: var("WEFT_BENCH_NICE")?.unwrap_or(-10),
        })
    }

    fn wants(&self, key: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|o| o == key))
    }
}

/// One load point: a rate or the closed loop.
#[derive(Debug, Clone)]
pub struct Point {
    pub label: String,
    pub kind: Kind,
    pub measure: Duration,
}

/// What one run of one point measured.
#[derive(Debug, Clone, Default)]
pub struct PointRun {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    /// CPU seconds per 10 000 requests, per proxy (A, B).
    pub cpu_per_10k: Vec<f64>,
    /// RSS per proxy at the end of the window.
    pub rss: Vec<u64>,
    /// Share of the window the load thread and the backend thread were on a CPU.
    pub gen_busy: f64,
    pub backend_busy: f64,
    /// Open loop: p99 of how late the generator queued or sent (µs).
    pub send_late_p99: f64,
    pub missing: u64,
    pub errors: u64,
}

/// A way from the client to the backend, in one client protocol, and what was measured.
#[derive(Debug)]
pub struct Scenario {
    /// `direct`, `weft`, `weft-upgrade`, `haproxy`, `nginx`.
    pub key: &'static str,
    pub name: &'static str,
    pub proto: Proto,
    pub entry: SocketAddr,
    pub pair: Option<Pair>,
    /// Per point, per rep.
    pub runs: Vec<Vec<PointRun>>,
    pub idle_rss: Vec<u64>,
    pub peak_rss: Vec<u64>,
    /// Weft: `request_total` per proxy (A, B) after the run.
    pub requests_counted: Vec<u64>,
    /// Weft: the protocols of A's upstream connections (to B), from `tcp_open_total`.
    pub between: Vec<String>,
    pub first_error: Option<String>,
    pub h2load: Option<anyhow::Result<h2load::Run>>,
}

impl Scenario {
    fn new(
        key: &'static str,
        name: &'static str,
        proto: Proto,
        pair: Result<Pair, SocketAddr>,
    ) -> Self {
        let (entry, pair) = match pair {
            Ok(p) => (p.entry, Some(p)),
            Err(addr) => (addr, None),
        };
        Scenario {
            key,
            name,
            proto,
            entry,
            pair,
            runs: Vec::new(),
            idle_rss: Vec::new(),
            peak_rss: Vec::new(),
            requests_counted: Vec::new(),
            between: Vec::new(),
            first_error: None,
            h2load: None,
        }
    }

    fn procs(&self) -> &[Proc] {
        self.pair.as_ref().map_or(&[], |p| &p.procs[..])
    }

    pub fn is_weft(&self) -> bool {
        self.key.starts_with("weft")
    }

    pub fn is_baseline(&self) -> bool {
        matches!(self.key, "haproxy" | "nginx")
    }
}

/// Removes the bench's scratch directory (configs, process logs) when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> anyhow::Result<()> {
    let cfg = Config::from_env()?;
    let target_dir = target_dir()?;
    let bin = match std::env::var_os("WEFT_BENCH_PROXY_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => build_proxy(&target_dir)?,
    };
    let started = Instant::now();
    let scratch =
        ScratchDir(std::env::temp_dir().join(format!("weft-bench-http-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)?;
    let dir = &scratch.0;
    let mut notes = Vec::new();
    // After the build, before any thread or process of the measurement is started: they
    // inherit it.
    if cfg.nice != 0 {
        // SAFETY: setpriority of the calling thread, no pointers.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, cfg.nice) } != 0 {
            let e = std::io::Error::last_os_error();
            eprintln!("note: cannot set nice {}: {e}; running at the default priority", cfg.nice);
            notes.push(format!(
                "could not run at nice {} ({e}): other work on the machine weighs more.",
                cfg.nice
            ));
        }
    }
    let load_start = loadavg();

    let (backend, backend_tid) = http_load::spawn_backend()?;
    let haproxy = procs::haproxy_installed();
    let nginx = baselines::nginx_installed();
    if cfg.wants("haproxy") && !haproxy {
        notes.push("haproxy is not on PATH: the haproxy pairs were skipped.".into());
    }
    if cfg.wants("nginx") && !nginx {
        notes.push("nginx is not installed: the nginx pair was skipped.".into());
    }
    let no_extra = |_: SocketAddr| Vec::new();
    let mut scenarios = Vec::new();
    for &proto in &cfg.protocols {
        let (h1, tag) = (proto == Proto::H1, if proto == Proto::H1 { "h1" } else { "h2" });
        scenarios.push(Scenario::new("direct", "direct", proto, Err(backend)));
        if cfg.wants("weft") {
            let pair = procs::weft_pair_with(&bin, backend, dir, &format!("{tag} weft"), no_extra)?;
            scenarios.push(Scenario::new("weft", "weft pair", proto, Ok(pair)));
        }
        if h1 && cfg.wants("weft-upgrade") {
            let upgrade = |_: SocketAddr| {
                vec!["--outbound-http2-upgrade-targets".to_string(), "*".to_string()]
            };
            let pair = procs::weft_pair_with(&bin, backend, dir, "h1 weft-upgrade", upgrade)?;
            scenarios.push(Scenario::new(
                "weft-upgrade",
                "weft pair, HTTP/2 between",
                proto,
                Ok(pair),
            ));
        }
        if haproxy && cfg.wants("haproxy") {
            let config = baselines::haproxy_config(proto);
            let pair = procs::haproxy_pair_with(backend, dir, &format!("{tag} haproxy"), config)?;
            scenarios.push(Scenario::new("haproxy", "haproxy pair", proto, Ok(pair)));
        }
        if h1 && nginx && cfg.wants("nginx") {
            let pair = baselines::nginx_pair(backend, dir, "h1 nginx")?;
            scenarios.push(Scenario::new("nginx", "nginx pair", proto, Ok(pair)));
        }
    }

    // Idle memory, before any load; one request through each path first, so a broken
    // path fails here with a clear message rather than in the load.
    std::thread::sleep(Duration::from_millis(300));
    for s in &mut scenarios {
        s.idle_rss = s.procs().iter().map(Proc::rss_bytes).collect();
        http_load::check(s.entry, s.proto)
            .with_context(|| format!("a first request through {} ({})", s.name, s.proto.label()))?;
    }

    let mut points: Vec<Point> = cfg
        .rates
        .iter()
        .map(|&rate| Point {
            label: format!("{} req/s", report::thousands(rate as f64)),
            kind: Kind::Open { rate },
            measure: Duration::from_secs_f64(cfg.open_secs),
        })
        .collect();
    points.push(Point {
        label: "max (closed loop)".into(),
        kind: Kind::Closed,
        measure: Duration::from_secs_f64(cfg.closed_secs),
    });
    for s in &mut scenarios {
        s.runs = vec![Vec::new(); points.len()];
    }
    let h2load_on = cfg.h2load && h2load::installed();
    if cfg.h2load && !h2load_on {
        notes.push("h2load is not installed: no cross-check of the generator.".into());
    }
    eprintln!(
        "http bench: {} paths × {} points × {} reps (~{:.0} s)",
        scenarios.len(),
        points.len(),
        cfg.reps,
        estimate_secs(&cfg, &points, scenarios.len(), h2load_on)
    );

    // Reps outermost and paths innermost: a noisy minute hits every path.
    for rep in 0..cfg.reps {
        for (i, point) in points.iter().enumerate() {
            for s in &mut scenarios {
                let run = run_point(s, point, &cfg, backend_tid).with_context(|| {
                    format!("{} {} at {} (rep {})", s.proto.label(), s.name, point.label, rep + 1)
                })?;
                eprintln!(
                    "  rep {} {:<8} {:<26} {:<18} {:>8.0} req/s  p50 {:>7.1} µs  p99 {:>8.1} µs  p99.9 {:>8.1} µs{}",
                    rep + 1,
                    s.proto.label(),
                    s.name,
                    point.label,
                    run.rps,
                    run.p50,
                    run.p99,
                    run.p999,
                    if run.errors > 0 { format!("  {} errors", run.errors) } else { String::new() }
                );
                s.runs[i].push(run);
            }
        }
    }

    for s in &mut scenarios {
        s.peak_rss = s.procs().iter().map(Proc::peak_rss_bytes).collect();
        if s.is_weft() {
            s.requests_counted = s.procs().iter().map(requests_counted).collect();
            s.between = upstream_protocols(&s.procs()[0]);
        }
    }
    if h2load_on {
        for s in &mut scenarios {
            let run = h2load::run(s.entry, s.proto, cfg.warmup, cfg.closed_secs);
            match &run {
                Ok(r) => {
                    eprintln!("  h2load {:<8} {:<26} {:>8.0} req/s", s.proto.label(), s.name, r.rps)
                }
                Err(e) => eprintln!("  h2load {} {}: {e:#}", s.proto.label(), s.name),
            }
            s.h2load = Some(run);
        }
    }
    for s in &mut scenarios {
        for p in s.pair.iter_mut().flat_map(|p| p.procs.iter_mut()) {
            p.check_alive()?;
            let log = p.log_text();
            if !log.trim().is_empty() {
                let lines: Vec<&str> = log.lines().collect();
                notes.push(format!(
                    "{} logged {} lines, e.g.: `{}`",
                    p.name,
                    lines.len(),
                    lines[0].chars().take(200).collect::<String>()
                ));
            }
        }
    }

    let info = report::RunInfo {
        cfg: cfg.clone(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_start,
        load_end: loadavg(),
        elapsed: started.elapsed(),
        notes,
    };
    let md = report::render(&scenarios, &points, &info);
    println!("\n{md}");
    let out = target_dir.join("bench-http.md");
    std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("written to {}", out.display());
    Ok(())
}

fn run_point(
    s: &mut Scenario,
    point: &Point,
    cfg: &Config,
    backend_tid: i32,
) -> anyhow::Result<PointRun> {
    let (window, handle) =
        http_load::start(s.entry, s.proto, point.kind, cfg.warmup, point.measure)?;
    let sample = |s: &Scenario| {
        let cpu: Vec<f64> = s.procs().iter().map(Proc::cpu_seconds).collect();
        (cpu, procs::thread_cpu_seconds(window.tid), procs::thread_cpu_seconds(backend_tid))
    };
    load::sleep_until_ns(window.start_ns);
    let (cpu0, gen0, back0) = sample(s);
    load::sleep_until_ns(window.end_ns);
    let (cpu1, gen1, back1) = sample(s);
    let rss = s.procs().iter().map(Proc::rss_bytes).collect();
    let result = match handle.join() {
        Ok(r) => r?,
        Err(_) => bail!("the load thread panicked"),
    };
    if s.first_error.is_none() {
        s.first_error = result.first_error.clone();
    }
    let secs = (window.end_ns - window.start_ns) as f64 / 1e9;
    let n = result.completed.max(1) as f64;
    let h = &result.latency;
    Ok(PointRun {
        rps: result.completed as f64 / secs,
        p50: h.value_at_quantile(0.5) as f64,
        p99: h.value_at_quantile(0.99) as f64,
        p999: h.value_at_quantile(0.999) as f64,
        cpu_per_10k: cpu0.iter().zip(&cpu1).map(|(a, b)| (b - a) / n * 10_000.0).collect(),
        rss,
        gen_busy: (gen1 - gen0) / secs,
        backend_busy: (back1 - back0) / secs,
        send_late_p99: result.send_lateness.value_at_quantile(0.99) as f64,
        missing: result.missing,
        errors: result.errors,
    })
}

/// The `protocol` labels of a weft proxy's upstream connections (`tcp_open_total`,
/// `peer="dst"`).
fn upstream_protocols(p: &Proc) -> Vec<String> {
    let Some(text) = p.admin.and_then(|a| procs::http_get(a, "/metrics").ok()) else {
        return Vec::new();
    };
    let mut seen: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("tcp_open_total{") && l.contains("peer=\"dst\""))
        .filter_map(|l| {
            let i = l.find("protocol=\"")? + "protocol=\"".len();
            Some(l[i..].split('"').next()?.to_string())
        })
        .collect();
    seen.sort();
    seen.dedup();
    seen
}

/// The sum of a weft proxy's `request_total` series.
fn requests_counted(p: &Proc) -> u64 {
    let Some(text) = p.admin.and_then(|a| procs::http_get(a, "/metrics").ok()) else {
        return 0;
    };
    text.lines()
        .filter(|l| l.starts_with("request_total{") || l.starts_with("request_total "))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn estimate_secs(cfg: &Config, points: &[Point], scenarios: usize, h2load: bool) -> f64 {
    let per_rep: f64 =
        points.iter().map(|p| p.measure.as_secs_f64() + cfg.warmup.as_secs_f64() + 0.1).sum();
    let h2load =
        if h2load { cfg.closed_secs.ceil() + cfg.warmup.as_secs_f64().ceil() } else { 0.0 };
    (per_rep * cfg.reps as f64 + h2load) * scenarios as f64
}

/// `<target>` from the bench's own path, `<target>/release/deps/http-<hash>`.
fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .context("the bench binary is not under <target>/<profile>/deps")
}

fn build_proxy(target: &Path) -> anyhow::Result<PathBuf> {
    eprintln!("building weft-proxy (release)…");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "weft-proxy", "--bin", "weft-proxy"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building weft-proxy failed ({status})");
    }
    let bin = target.join("release").join("weft-proxy");
    if !bin.exists() {
        bail!("{} is missing after the build", bin.display());
    }
    Ok(bin)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
