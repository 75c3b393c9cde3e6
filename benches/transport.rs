//! Transport benchmark: small request/response over opaque TCP on loopback, through a
//! pair of `weft-proxy` processes (client-side outbound → server-side inbound) against a
//! direct connection and, when `haproxy` is on PATH, a pair of haproxy in TCP mode — all
//! in one run, so noise of the shared machine hits every scenario alike.
//!
//! Run: `cargo bench --bench transport` (builds `weft-proxy` in release first). It prints
//! a Markdown table and writes it to `target/bench-transport.md`.
//!
//! Scenarios: "direct" (client → echo), "weft" (both proxies detect the protocol; every
//! request starts with 0x00, which detection calls opaque on the first read), "weft
//! (opaque port)" (the targets are opaque ports: no detection), "haproxy pair".
//! Points, each over 16 connections with 64-byte requests and responses:
//! - open loop at 200 and 2 000 req/s: constant arrival rate, requests pipelined, latency
//!   from each request's intended send time (so queueing is not hidden), HDR histogram;
//! - closed loop: each connection sends its next request on the previous response; max req/s.
//!
//! Each point runs after a warm-up that is not recorded; points are repeated, the reps of
//! all scenarios interleaved, and every figure is the median over the reps. Per proxy:
//! CPU seconds per 10 000 requests (from /proc, inside the measured window), idle RSS,
//! peak RSS (VmHWM) after the load, RSS with 1 000 idle connections open through the pair.
//!
//! Env knobs:
//! - `WEFT_BENCH_QUICK=1`: smoke run, 2 s per point and 1 rep (the knobs below still win);
//! - `WEFT_BENCH_SECS` (default 10): measured seconds of an open-loop point; closed-loop
//!   points measure half of it (a mean throughput settles faster than a tail latency);
//! - `WEFT_BENCH_REPS` (default 3): repetitions of every point;
//! - `WEFT_BENCH_WARMUP_MS` (default 500): unrecorded warm-up before each point;
//! - `WEFT_BENCH_RATES` (default `200,2000`): open-loop rates in req/s;
//! - `WEFT_BENCH_ONLY`: comma-separated scenarios besides direct (`weft`, `weft-opaque`,
//!   `haproxy`); all by default;
//! - `WEFT_BENCH_IDLE_CONNS` (default 1000): idle connections of the memory point;
//! - `WEFT_BENCH_PROXY_BIN`: a `weft-proxy` binary to measure instead of building one;
//! - `WEFT_BENCH_NICE` (default -10): nice value of the bench and everything it starts
//!   (needs root to go below 0; 0 leaves it), so other work on the machine disturbs less.
//!
//! A default run takes about 5½ minutes on 2 CPUs. Targets are shown next to the figures,
//! not asserted.

#[path = "transport/load.rs"]
mod load;
#[path = "transport/procs.rs"]
mod procs;
#[path = "transport/report.rs"]
mod report;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
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
    pub only: Option<Vec<String>>,
    pub idle_conns: usize,
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
        let quick = var::<String>("WEFT_BENCH_QUICK")?.is_some_and(|v| v != "0");
        let open_secs: f64 = var("WEFT_BENCH_SECS")?.unwrap_or(if quick { 2.0 } else { 10.0 });
        if open_secs.is_nan() || open_secs <= 0.0 {
            bail!("WEFT_BENCH_SECS must be positive");
        }
        let rates = match var::<String>("WEFT_BENCH_RATES")? {
            None => vec![200, 2000],
            Some(v) => v
                .split(',')
                .map(|r| r.trim().parse::<u64>().ok().filter(|&r| r > 0))
                .collect::<Option<Vec<_>>>()
                .context("WEFT_BENCH_RATES must be a comma-separated list of positive req/s")?,
        };
        Ok(Config {
            open_secs,
            closed_secs: open_secs / 2.0,
            warmup: Duration::from_millis(var("WEFT_BENCH_WARMUP_MS")?.unwrap_or(500)),
            reps: var::<usize>("WEFT_BENCH_REPS")?.unwrap_or(if quick { 1 } else { 3 }).max(1),
            rates,
            only: var::<String>("WEFT_BENCH_ONLY")?
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect()),
            idle_conns: var("WEFT_BENCH_IDLE_CONNS")?.unwrap_or(1000),
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
    pub max: f64,
    /// CPU seconds per 10 000 requests, per proxy (A, B).
    pub cpu_per_10k: Vec<f64>,
    /// Share of the window the load thread and the echo thread were on a CPU.
    pub gen_busy: f64,
    pub echo_busy: f64,
    /// Open loop: p99 of how late the generator sent (µs).
    pub send_late_p99: f64,
    pub missing: u64,
}

/// A way from the client to the echo server and what was measured on it.
#[derive(Debug)]
pub struct Scenario {
    pub key: &'static str,
    pub name: &'static str,
    pub entry: SocketAddr,
    pub pair: Option<Pair>,
    /// Per point, per rep.
    pub runs: Vec<Vec<PointRun>>,
    pub idle_rss: Vec<u64>,
    pub peak_rss: Vec<u64>,
    pub idle_conns_rss: Vec<u64>,
    pub protocols: Vec<String>,
}

impl Scenario {
    fn new(key: &'static str, name: &'static str, entry: SocketAddr, pair: Option<Pair>) -> Self {
        Scenario {
            key,
            name,
            entry,
            pair,
            runs: Vec::new(),
            idle_rss: Vec::new(),
            peak_rss: Vec::new(),
            idle_conns_rss: Vec::new(),
            protocols: Vec::new(),
        }
    }

    fn procs(&self) -> &[Proc] {
        self.pair.as_ref().map_or(&[], |p| &p.procs[..])
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
    raise_fd_limit();
    let target_dir = target_dir()?;
    let bin = match std::env::var_os("WEFT_BENCH_PROXY_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => build_proxy(&target_dir)?,
    };
    let started = Instant::now();
    let scratch = ScratchDir(
        std::env::temp_dir().join(format!("weft-bench-transport-{}", std::process::id())),
    );
    std::fs::create_dir_all(&scratch.0)?;
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

    let (echo, echo_tid) = load::spawn_echo()?;
    let mut scenarios = vec![Scenario::new("direct", "direct", echo, None)];
    if cfg.wants("weft") {
        let pair = procs::weft_pair(&bin, echo, false, &scratch.0, "weft")?;
        scenarios.push(Scenario::new("weft", "weft", pair.entry, Some(pair)));
    }
    if cfg.wants("weft-opaque") {
        let pair = procs::weft_pair(&bin, echo, true, &scratch.0, "weft-opaque")?;
        scenarios.push(Scenario::new("weft-opaque", "weft (opaque port)", pair.entry, Some(pair)));
    }
    if cfg.wants("haproxy") {
        if procs::haproxy_installed() {
            let pair = procs::haproxy_pair(echo, &scratch.0)?;
            scenarios.push(Scenario::new("haproxy", "haproxy pair", pair.entry, Some(pair)));
        } else {
            println!("note: haproxy is not on PATH; skipping the haproxy pair");
            notes.push("haproxy is not on PATH: the haproxy pair was skipped.".to_string());
        }
    }

    // Idle memory, before any load: one request through each path first, so a broken
    // path fails here with a clear message rather than as a timeout in the load.
    std::thread::sleep(Duration::from_millis(300));
    for s in &mut scenarios {
        s.idle_rss = s.procs().iter().map(Proc::rss_bytes).collect();
        load::hold_idle(s.entry, 1)
            .with_context(|| format!("a first request through {}", s.name))?;
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
    eprintln!(
        "transport bench: {} scenarios × {} points × {} reps (~{:.0} s)",
        scenarios.len(),
        points.len(),
        cfg.reps,
        estimate_secs(&cfg, &points, scenarios.len())
    );

    // Reps outermost and scenarios innermost: a noisy minute hits every scenario.
    for rep in 0..cfg.reps {
        for (i, point) in points.iter().enumerate() {
            for s in &mut scenarios {
                let run = run_point(s, point, &cfg, echo_tid)
                    .with_context(|| format!("{} at {} (rep {})", s.name, point.label, rep + 1))?;
                eprintln!(
                    "  rep {} {:<20} {:<18} {:>9.0} req/s  p50 {:>7.1} µs  p99 {:>8.1} µs  p99.9 {:>8.1} µs",
                    rep + 1,
                    s.name,
                    point.label,
                    run.rps,
                    run.p50,
                    run.p99,
                    run.p999
                );
                s.runs[i].push(run);
            }
        }
    }

    for s in &mut scenarios {
        s.peak_rss = s.procs().iter().map(Proc::peak_rss_bytes).collect();
        if s.key.starts_with("weft") {
            s.protocols = procs::detected_protocols(&s.procs()[1]);
        }
    }
    // Last, as it raises the proxies' peak RSS: memory with many idle connections.
    for s in scenarios.iter_mut().filter(|s| s.pair.is_some()) {
        let conns = load::hold_idle(s.entry, cfg.idle_conns).with_context(|| {
            format!("opening {} idle connections through {}", cfg.idle_conns, s.name)
        })?;
        std::thread::sleep(Duration::from_millis(300));
        s.idle_conns_rss = s.procs().iter().map(Proc::rss_bytes).collect();
        drop(conns);
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

    let env = report::RunInfo {
        cfg: cfg.clone(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_start,
        load_end: loadavg(),
        elapsed: started.elapsed(),
        binary: binary_sizes(&target_dir, &bin),
        notes,
    };
    let md = report::render(&scenarios, &points, &env);
    println!("\n{md}");
    let out = target_dir.join("bench-transport.md");
    std::fs::write(&out, &md).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("written to {}", out.display());
    Ok(())
}

fn run_point(s: &Scenario, point: &Point, cfg: &Config, echo_tid: i32) -> anyhow::Result<PointRun> {
    let (window, handle) = load::start(s.entry, point.kind, cfg.warmup, point.measure)?;
    let sample = || {
        let cpu: Vec<f64> = s.procs().iter().map(Proc::cpu_seconds).collect();
        (cpu, procs::thread_cpu_seconds(window.tid), procs::thread_cpu_seconds(echo_tid))
    };
    load::sleep_until_ns(window.start_ns);
    let (cpu0, gen0, echo0) = sample();
    load::sleep_until_ns(window.end_ns);
    let (cpu1, gen1, echo1) = sample();
    let result = match handle.join() {
        Ok(r) => r?,
        Err(_) => bail!("the load thread panicked"),
    };
    let secs = (window.end_ns - window.start_ns) as f64 / 1e9;
    let n = result.completed.max(1) as f64;
    let h = &result.latency;
    Ok(PointRun {
        rps: result.completed as f64 / secs,
        p50: h.value_at_quantile(0.5) as f64,
        p99: h.value_at_quantile(0.99) as f64,
        p999: h.value_at_quantile(0.999) as f64,
        max: h.max() as f64,
        cpu_per_10k: cpu0.iter().zip(&cpu1).map(|(a, b)| (b - a) / n * 10_000.0).collect(),
        gen_busy: (gen1 - gen0) / secs,
        echo_busy: (echo1 - echo0) / secs,
        send_late_p99: result.send_lateness.value_at_quantile(0.99) as f64,
        missing: result.missing,
    })
}

fn estimate_secs(cfg: &Config, points: &[Point], scenarios: usize) -> f64 {
    let per_rep: f64 =
        points.iter().map(|p| p.measure.as_secs_f64() + cfg.warmup.as_secs_f64() + 0.05).sum();
    per_rep * cfg.reps as f64 * scenarios as f64
}

/// `<target>` from the bench's own path, `<target>/release/deps/transport-<hash>`.
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

/// Sizes of the release binary and, if built, the static one.
fn binary_sizes(target: &Path, release: &Path) -> Vec<(String, Option<u64>)> {
    let size = |p: &Path| std::fs::metadata(p).ok().map(|m| m.len());
    let static_bin = target.join("x86_64-unknown-linux-gnu/release-static/weft-proxy");
    vec![
        ("release (dynamic, not stripped)".to_string(), size(release)),
        ("release-static (stripped, static)".to_string(), size(&static_bin)),
    ]
}

/// The idle-connection point needs two descriptors per connection in this process.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
