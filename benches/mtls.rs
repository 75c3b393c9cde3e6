//! mTLS benchmark (issue 5's figures): what transparent mTLS between two `weft-proxy`
//! processes costs on loopback — latency, CPU and memory of HTTP through the meshed pair,
//! and new mTLS connections (handshakes) per second per proxy core — against a direct
//! connection and the plaintext pair in the same run, so noise of the shared machine hits
//! every path alike.
//!
//! Run: `cargo bench --bench mtls` (builds `weft-proxy` in release first; cargo builds the
//! `weft` binary for the control plane). It prints Markdown tables and writes them to
//! `target/bench-mtls.md`.
//!
//! The mesh is set up as `tests/e2e/mtls.rs` does: a fresh PKI (`weft certs generate`),
//! `weft identity` with static tokens, `weft destination` with a static endpoints file,
//! and proxies that obtain their certificates before they are used (`/ready`).
//!
//! HTTP, the client speaking HTTP/1.1 over 16 keep-alive connections to a hyper backend
//! that answers 1 KiB bodies (the HTTP bench's generator and backend), on three paths:
//! - `direct`: client → backend;
//! - `weft pair, plaintext, HTTP/2 between`: A's outbound → B's inbound with
//!   `--outbound-http2-upgrade-targets '*'` (the HTTP bench's weft-upgrade);
//! - `weft mTLS pair`: A (identity `client`) resolves the service through the destination
//!   service, whose endpoint is B's inbound with B's identity (`web`) and the `h2` protocol
//!   hint, so A speaks HTTP/2 to B over mTLS. The bench fails unless both proxies' metrics
//!   show every request as `tls="true"` with the right `server_id` / `client_id`.
//!
//! Points: open loop at 200 and 2 000 req/s (timerfd-paced, latency from each request's
//! intended send time, HDR histograms) and the closed loop (max req/s). Per path: p50, p99,
//! p99.9, added p50 / p99 against direct, CPU seconds per 10 000 requests per proxy (from
//! /proc, inside the window), RSS per proxy at the end of the window, idle and peak RSS.
//!
//! Handshakes: a closed loop of 16 tasks, each opening a fresh TCP connection for one
//! 64-byte request and answer and closing it, against a server that answers and closes;
//! through the mTLS pair (an opaque service whose endpoint names B's inbound port as its
//! opaque transport port, so A originates and B terminates one TLS 1.3 handshake with
//! client certificates per connection, then a transport header), through the plaintext
//! pair (opaque ports, no detection) and direct. Reported: connections/s, CPU seconds per
//! 1 000 connections of A and B and hence connections per CPU-second (= per core, the
//! proxies run one thread), the TLS share (mTLS minus plaintext), and a cross-check
//! against A's and B's `tcp_open_total{tls="true"}`. A resumes sessions (rustls session
//! tickets) where it can, so the pair's loop is a mix of full and resumed handshakes: the
//! bytes A reads from B per connection, against those of the pair's first connection (a
//! full handshake) and of sequential ones after it (resumed), give the mix. One more path
//! makes every handshake a full one for B: the bench dials a lone B itself as a meshed
//! client (a certificate signed with the issuer, resumption off, a transport header).
//!
//! Each point runs after an unrecorded warm-up; points are repeated, the reps of all paths
//! interleaved, and every figure is the median over the reps. Targets are shown next to
//! the figures, not asserted.
//!
//! Env knobs:
//! - `WEFT_BENCH_QUICK=1`: smoke run, 2 s per point and 1 rep (the knobs below still win);
//! - `WEFT_BENCH_SECS` (default 10): measured seconds of an open-loop point; closed-loop
//!   and handshake points measure half of it;
//! - `WEFT_BENCH_REPS` (default 3): repetitions of every point;
//! - `WEFT_BENCH_WARMUP_MS` (default 500): unrecorded warm-up before each point;
//! - `WEFT_BENCH_RATES` (default `200,2000`): open-loop rates in req/s;
//! - `WEFT_BENCH_BODY` (default 1024): bytes of the backend's responses;
//! - `WEFT_BENCH_CONN_CONCURRENCY` (default 16): concurrent connections of the handshake loop;
//! - `WEFT_BENCH_HANDSHAKES=0`: skip the handshake points;
//! - `WEFT_BENCH_ONLY`: comma-separated paths besides direct (`weft`, `mtls`); all by default;
//! - `WEFT_BENCH_PROXY_BIN`: a `weft-proxy` binary to measure instead of building one;
//! - `WEFT_BENCH_NICE` (default -10): nice value of the bench and everything it starts
//!   (needs root to go below 0; 0 leaves it).
//!
//! A default run takes about 5 minutes on 2 CPUs.

#[path = "mtls/conns.rs"]
mod conns;
// Shared with the HTTP bench, which uses the 64-byte defaults.
#[allow(dead_code)]
#[path = "http/load.rs"]
mod http_load;
// Shared with the transport bench, which uses the parts this one does not.
#[allow(dead_code)]
#[path = "transport/load.rs"]
mod load;
#[path = "mtls/mesh.rs"]
mod mesh;
#[allow(dead_code)]
#[path = "transport/procs.rs"]
mod procs;
#[path = "mtls/report.rs"]
mod report;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    http_load::Proto,
    load::Kind,
    mesh::TlsCounts,
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
    pub body: usize,
    pub concurrency: usize,
    pub handshakes: bool,
    pub only: Option<Vec<String>>,
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
        let only = list("WEFT_BENCH_ONLY")?;
        if let Some(bad) = only.iter().flatten().find(|o| !matches!(o.as_str(), "weft" | "mtls")) {
            bail!("WEFT_BENCH_ONLY: {bad:?} is neither weft nor mtls");
        }
        Ok(Config {
            open_secs,
            closed_secs: open_secs / 2.0,
            warmup: Duration::from_millis(var("WEFT_BENCH_WARMUP_MS")?.unwrap_or(500)),
            reps: var::<usize>("WEFT_BENCH_REPS")?.unwrap_or(if quick { 1 } else { 3 }).max(1),
            rates,
            body: var("WEFT_BENCH_BODY")?.unwrap_or(1024),
            concurrency: var::<usize>("WEFT_BENCH_CONN_CONCURRENCY")?.unwrap_or(16).max(1),
            handshakes: var::<String>("WEFT_BENCH_HANDSHAKES")?.is_none_or(|v| v != "0"),
            only,
            nice: var("WEFT_BENCH_NICE")?.unwrap_or(-10),
        })
    }

    fn wants(&self, key: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|o| o == key))
    }
}

/// One HTTP load point: a rate or the closed loop.
#[derive(Debug, Clone)]
pub struct Point {
    pub label: String,
    pub kind: Kind,
    pub measure: Duration,
}

/// What one run of one HTTP point measured.
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

/// An HTTP path from the client to the backend, and what was measured on it.
#[derive(Debug)]
pub struct Scenario {
    /// `direct`, `weft`, `mtls`.
    pub key: &'static str,
    pub name: &'static str,
    pub entry: SocketAddr,
    pub pair: Option<Pair>,
    /// Per point, per rep.
    pub runs: Vec<Vec<PointRun>>,
    pub idle_rss: Vec<u64>,
    pub peak_rss: Vec<u64>,
    /// What the proxies' metrics said about the protocol and TLS between them.
    pub between: String,
    pub first_error: Option<String>,
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
            between: String::new(),
            first_error: None,
        }
    }

    fn procs(&self) -> &[Proc] {
        self.pair.as_ref().map_or(&[], |p| &p.procs[..])
    }
}

/// What one run of the handshake loop measured on one path.
#[derive(Debug, Clone, Default)]
pub struct ConnRun {
    /// `Dial::Mtls`: connections with a full handshake, warm-up and tail included.
    pub full_handshakes: u64,
    /// Connections completed per second of the window.
    pub cps: f64,
    /// µs from the connect to the answer.
    pub p50: f64,
    pub p99: f64,
    /// CPU seconds per 1 000 connections, per proxy (A, B; NaN for one not on the path).
    pub cpu_per_1k: Vec<f64>,
    pub gen_busy: f64,
    pub server_busy: f64,
    pub errors: u64,
    /// Connections that went through, warm-up and tail included.
    pub made: u64,
    /// mTLS: the proxies' counters over the whole point (NaN for one not on the path).
    pub tls: Option<TlsCounts>,
}

/// A path of the handshake loop, and what was measured on it.
pub struct ConnScenario {
    /// `direct`, `weft`, `mtls`, `lone-b`.
    pub key: &'static str,
    pub name: &'static str,
    pub entry: SocketAddr,
    pub dial: conns::Dial,
    /// The client-side and the server-side proxy, those on the path.
    pub a: Option<Proc>,
    pub b: Option<Proc>,
    pub runs: Vec<ConnRun>,
    pub first_error: Option<String>,
}

impl ConnScenario {
    fn new(key: &'static str, name: &'static str, entry: SocketAddr) -> Self {
        ConnScenario {
            key,
            name,
            entry,
            dial: conns::Dial::Tcp,
            a: None,
            b: None,
            runs: Vec::new(),
            first_error: None,
        }
    }

    fn with_pair(mut self, pair: Pair) -> Self {
        let [a, b] = pair.procs;
        (self.a, self.b) = (Some(a), Some(b));
        self
    }

    /// CPU seconds of A and B (NaN for one not on the path); empty without proxies.
    fn cpu(&self) -> Vec<f64> {
        if self.a.is_none() && self.b.is_none() {
            return Vec::new();
        }
        [&self.a, &self.b].iter().map(|p| p.as_ref().map_or(f64::NAN, Proc::cpu_seconds)).collect()
    }

    /// The proxies' mTLS counters: A's and B's on the pair, B's alone when dialed directly.
    fn tls_counts(&self) -> Option<TlsCounts> {
        match (self.key, &self.a, &self.b) {
            ("mtls", Some(a), Some(b)) => Some(TlsCounts::read(a, b)),
            ("lone-b", None, Some(b)) => Some(TlsCounts {
                a_opened: f64::NAN,
                b_accepted: mesh::accepted_from(b, "bench"),
                a_read_bytes: f64::NAN,
                a_write_bytes: f64::NAN,
            }),
            _ => None,
        }
    }
}

/// Removes the bench's scratch directory (PKI, configs, process logs) when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> anyhow::Result<()> {
    let cfg = Config::from_env()?;
    let target_dir = target_dir()?;
    let (bin, mut notes) = match std::env::var_os("WEFT_BENCH_PROXY_BIN") {
        Some(bin) => {
            let note = format!("weft-proxy: {} (`WEFT_BENCH_PROXY_BIN`).", bin.to_string_lossy());
            (PathBuf::from(bin), vec![note])
        }
        None => (build_proxy(&target_dir)?, source_state()),
    };
    let weft = PathBuf::from(env!("CARGO_BIN_EXE_weft"));
    let started = Instant::now();
    let scratch =
        ScratchDir(std::env::temp_dir().join(format!("weft-bench-mtls-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0)?;
    let dir = &scratch.0;
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

    let (backend, backend_tid) = http_load::spawn_backend_sized(cfg.body)?;
    let (close_server, close_tid) = conns::spawn_close_server()?;
    let mut scenarios = vec![Scenario::new("direct", "direct", backend, None)];
    let mut conn_scenarios = Vec::new();
    if cfg.handshakes {
        conn_scenarios.push(ConnScenario::new("direct", "direct", close_server));
    }
    if cfg.wants("weft") {
        let upgrade =
            |_: SocketAddr| vec!["--outbound-http2-upgrade-targets".to_string(), "*".to_string()];
        let pair = procs::weft_pair_with(&bin, backend, dir, "http weft", upgrade)?;
        scenarios.push(Scenario::new(
            "weft",
            "weft pair, plaintext, HTTP/2 between",
            pair.entry,
            Some(pair),
        ));
        if cfg.handshakes {
            let pair = procs::weft_pair(&bin, close_server, true, dir, "tcp weft")?;
            let entry = pair.entry;
            conn_scenarios
                .push(ConnScenario::new("weft", "weft pair, plaintext", entry).with_pair(pair));
        }
    }
    let mut control_plane = Vec::new();
    let mut handshake_bytes = None;
    if cfg.wants("mtls") {
        let mesh::Mesh { identity, destination, http, tcp, lone_b, lone_b_inbound, pki } =
            mesh::start(&weft, &bin, backend, close_server, dir).context("starting the mesh")?;
        control_plane = vec![identity, destination];
        scenarios.push(Scenario::new("mtls", "weft mTLS pair", http.entry, Some(http)));
        if cfg.handshakes {
            handshake_bytes = Some(calibrate(&tcp)?);
            let entry = tcp.entry;
            conn_scenarios.push(ConnScenario::new("mtls", "weft mTLS pair", entry).with_pair(tcp));
            let dial = mesh::bench_dial(&pki, close_server.port())?;
            let name = "bench (full handshakes) → lone B";
            let mut lone = ConnScenario::new("lone-b", name, lone_b_inbound);
            lone.dial = conns::Dial::Mtls(Arc::new(dial));
            lone.b = Some(lone_b);
            conn_scenarios.push(lone);
        }
    }

    // Idle memory, before any load; one request through each path first, so a broken
    // path fails here with a clear message rather than in the load.
    std::thread::sleep(Duration::from_millis(300));
    for s in &mut scenarios {
        s.idle_rss = s.procs().iter().map(Proc::rss_bytes).collect();
        http_load::check_sized(s.entry, Proto::H1, cfg.body)
            .with_context(|| format!("a first request through {}", s.name))?;
    }
    for s in &conn_scenarios {
        conns::check(s.entry, &s.dial, 1)
            .with_context(|| format!("a first connection through {}", s.name))?;
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
        "mtls bench: {} HTTP paths × {} points + {} handshake paths, × {} reps (~{:.0} s)",
        scenarios.len(),
        points.len(),
        conn_scenarios.len(),
        cfg.reps,
        estimate_secs(&cfg, &points, scenarios.len(), conn_scenarios.len())
    );

    // Reps outermost and paths innermost: a noisy minute hits every path.
    for rep in 0..cfg.reps {
        for (i, point) in points.iter().enumerate() {
            for s in &mut scenarios {
                let run = run_point(s, point, &cfg, backend_tid)
                    .with_context(|| format!("{} at {} (rep {})", s.name, point.label, rep + 1))?;
                eprintln!(
                    "  rep {} {:<38} {:<18} {:>8.0} req/s  p50 {:>7.1} µs  p99 {:>8.1} µs  p99.9 {:>8.1} µs  CPU/10k {}{}",
                    rep + 1,
                    s.name,
                    point.label,
                    run.rps,
                    run.p50,
                    run.p99,
                    run.p999,
                    cpu_text(&run.cpu_per_10k),
                    if run.errors > 0 { format!("  {} errors", run.errors) } else { String::new() }
                );
                s.runs[i].push(run);
            }
        }
        for s in &mut conn_scenarios {
            let run = run_conns(s, &cfg, close_tid)
                .with_context(|| format!("handshakes through {} (rep {})", s.name, rep + 1))?;
            eprintln!(
                "  rep {} {:<38} {:<18} {:>8.0} conn/s p50 {:>7.1} µs  p99 {:>8.1} µs  CPU/1k conn {}{}",
                rep + 1,
                s.name,
                "new connections",
                run.cps,
                run.p50,
                run.p99,
                cpu_text(&run.cpu_per_1k),
                if run.errors > 0 { format!("  {} errors", run.errors) } else { String::new() }
            );
            s.runs.push(run);
        }
    }

    for s in &mut scenarios {
        s.peak_rss = s.procs().iter().map(Proc::peak_rss_bytes).collect();
        match s.key {
            "mtls" => {
                let pair = s.pair.as_ref().context("the mTLS pair")?;
                // Fails the bench: figures of a pair that was not mTLS would be a lie.
                s.between = mesh::verify_http(pair)?;
            }
            "weft" => {
                let pair = s.pair.as_ref().context("the plaintext pair")?;
                pair.procs.iter().try_for_each(mesh::verify_plaintext)?;
                let a = mesh::scrape(&pair.procs[0]);
                let h2 = mesh::metric(&a, "tcp_open_total", &[("peer", "dst"), ("protocol", "h2")]);
                s.between = format!("A opened {h2} `h2` connection(s) to B, no TLS");
            }
            _ => {}
        }
    }
    for s in conn_scenarios.iter().filter(|s| s.key == "weft") {
        for p in s.a.iter().chain(&s.b) {
            mesh::verify_plaintext(p)?;
        }
    }
    let all_procs = scenarios
        .iter_mut()
        .flat_map(|s| s.pair.iter_mut())
        .flat_map(|p| p.procs.iter_mut())
        .chain(conn_scenarios.iter_mut().flat_map(|s| s.a.iter_mut().chain(s.b.iter_mut())))
        .chain(control_plane.iter_mut());
    for p in all_procs {
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

    let info = report::RunInfo {
        cfg: cfg.clone(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_start,
        load_end: loadavg(),
        elapsed: started.elapsed(),
        handshake_bytes,
        notes,
    };
    let md = report::render(&scenarios, &points, &conn_scenarios, &info);
    println!("\n{md}");
    let out = target_dir.join("bench-mtls.md");
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
    let (window, handle) = http_load::start_sized(
        s.entry,
        Proto::H1,
        point.kind,
        cfg.warmup,
        point.measure,
        cfg.body,
    )?;
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

/// One handshake point on one path; on mTLS paths, checks that every connection the
/// client made was counted as mTLS by the proxies.
fn run_conns(s: &mut ConnScenario, cfg: &Config, close_tid: i32) -> anyhow::Result<ConnRun> {
    let tls_before = s.tls_counts();
    let measure = Duration::from_secs_f64(cfg.closed_secs);
    let (window, handle) =
        conns::start(s.entry, s.dial.clone(), cfg.concurrency, cfg.warmup, measure)?;
    let sample = |s: &ConnScenario| {
        (s.cpu(), procs::thread_cpu_seconds(window.tid), procs::thread_cpu_seconds(close_tid))
    };
    load::sleep_until_ns(window.start_ns);
    let (cpu0, gen0, srv0) = sample(s);
    load::sleep_until_ns(window.end_ns);
    let (cpu1, gen1, srv1) = sample(s);
    let result = match handle.join() {
        Ok(r) => r?,
        Err(_) => bail!("the load thread panicked"),
    };
    if s.first_error.is_none() {
        s.first_error = result.first_error.clone();
    }
    let tls = match tls_before {
        Some(before) => {
            // Counted at open, before the client got its answer; a short wait covers a
            // scrape that raced the last close. A NaN count is a proxy not on the path.
            let deadline = Instant::now() + Duration::from_secs(2);
            let made = result.made as f64;
            let short = |n: f64| n < made;
            let counts = loop {
                let c = s.tls_counts().context("the proxies' counters")?.minus(before);
                if !(short(c.a_opened) || short(c.b_accepted)) || Instant::now() > deadline {
                    break c;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if short(counts.a_opened) || short(counts.b_accepted) {
                bail!(
                    "the client made {} connections through {}, but A counted only {} mTLS \
                     connections to B and B only {} mTLS connections from its client: some \
                     were not mTLS",
                    result.made,
                    s.name,
                    counts.a_opened,
                    counts.b_accepted
                );
            }
            Some(counts)
        }
        None => None,
    };
    let secs = (window.end_ns - window.start_ns) as f64 / 1e9;
    let n = result.completed.max(1) as f64;
    Ok(ConnRun {
        cps: result.completed as f64 / secs,
        p50: result.latency.value_at_quantile(0.5) as f64,
        p99: result.latency.value_at_quantile(0.99) as f64,
        cpu_per_1k: cpu0.iter().zip(&cpu1).map(|(a, b)| (b - a) / n * 1000.0).collect(),
        gen_busy: (gen1 - gen0) / secs,
        server_busy: (srv1 - srv0) / secs,
        errors: result.errors,
        made: result.made,
        full_handshakes: result.full_handshakes,
        tls,
    })
}

/// Bytes A reads from B on a full handshake and on a resumed one: the pair's first
/// connection (no session ticket yet) and then sequential ones (each resuming with a
/// ticket from the one before). Also proves that the pair is mTLS before any load.
fn calibrate(tcp: &Pair) -> anyhow::Result<report::HandshakeBytes> {
    const SEQUENTIAL: usize = 20;
    let dial = conns::Dial::Tcp;
    conns::check(tcp.entry, &dial, 1).context("a first connection through the mTLS TCP pair")?;
    let [a, b] = &tcp.procs;
    let first = TlsCounts::read(a, b);
    if first.a_opened != 1.0 || first.b_accepted != 1.0 {
        bail!(
            "the first connection through the mTLS TCP pair was not mTLS: A opened {} mTLS \
             connections to {}, B accepted {} from {}",
            first.a_opened,
            mesh::id("echo"),
            first.b_accepted,
            mesh::id("tcp")
        );
    }
    conns::check(tcp.entry, &dial, SEQUENTIAL).context("sequential connections")?;
    let then = TlsCounts::read(a, b).minus(first);
    Ok(report::HandshakeBytes {
        full: first.a_read_bytes,
        resumed: then.a_read_bytes / then.a_opened.max(1.0),
    })
}

fn cpu_text(cpu: &[f64]) -> String {
    let each = cpu.iter().map(|c| if c.is_nan() { "—".into() } else { format!("{c:.3}") });
    each.collect::<Vec<String>>().join(" / ")
}

fn estimate_secs(cfg: &Config, points: &[Point], http: usize, handshake: usize) -> f64 {
    let warmup = cfg.warmup.as_secs_f64() + 0.1;
    let per_rep: f64 = points.iter().map(|p| p.measure.as_secs_f64() + warmup).sum::<f64>()
        * http as f64
        + (cfg.closed_secs + warmup) * handshake as f64;
    per_rep * cfg.reps as f64
}

/// Notes on what was measured: the commit, and uncommitted changes in the crates the
/// binaries are built from (someone may be editing the proxy while this runs).
fn source_state() -> Vec<String> {
    let out = Command::new("git")
        .args(["status", "--porcelain", "--", "proxy", "identity", "destination", "src"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    match out {
        Ok(o) if o.status.success() => {
            let dirty: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| format!("`{}`", l.get(3..).unwrap_or(l)))
                .collect();
            if dirty.is_empty() {
                vec![format!("binaries built from commit {commit}, no uncommitted changes.")]
            } else {
                vec![format!(
                    "binaries built from commit {commit} plus uncommitted changes in {}.",
                    dirty.join(", ")
                )]
            }
        }
        _ => Vec::new(),
    }
}

/// `<target>` from the bench's own path, `<target>/release/deps/mtls-<hash>`.
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
