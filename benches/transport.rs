//! Transport benchmark: small request/response over opaque TCP on loopback, through a
//! pair of `weft-proxy` processes (client-side outbound → server-side inbound) against a
//! direct connection, a pair of minimal relays (the floor of any userspace proxy) and,
//! when `haproxy` is on PATH, a pair of haproxy in TCP mode — all in one run, so noise of
//! the shared machine hits every scenario alike.
//!
//! Run: `cargo bench --bench transport` (builds the shipped static `weft-proxy` first). It
//! prints a Markdown table and writes it to `target/bench-transport.md`.
//!
//! Scenarios: "direct" (client → echo), "weft" (both proxies detect the protocol; every
//! request starts with 0x00, which detection calls opaque on the first read), "weft
//! (opaque port)" (the targets are opaque ports: no detection), "minimal relay pair" (two
//! 50-line tokio relays, `common/relay.rs`: accept, connect, `copy_bidirectional`),
//! "haproxy pair".
//! Points, each over 16 connections with 64-byte requests and responses:
//! - open loop at 200 and 2 000 req/s: constant arrival rate, requests pipelined, latency
//!   from each request's intended send time (so queueing is not hidden), HDR histogram;
//! - closed loop: each connection sends its next request on the previous response; max req/s.
//!
//! Each point runs after a warm-up that is not recorded; points are repeated, the reps of
//! all scenarios interleaved (in an order that rotates from rep to rep and point to point,
//! so that no scenario always runs right after the same one), and every figure is the
//! median over the reps. Per proxy: CPU seconds per 10 000 requests (from /proc, inside the
//! measured window), idle RSS, peak RSS (VmHWM) after the load, RSS with 1 000 idle
//! connections open through the pair.
//!
//! Env knobs:
//! - `WEFT_BENCH_QUICK=1`: smoke run, 2 s per point and 1 rep (the knobs below still win);
//! - `WEFT_BENCH_SECS` (default 10): measured seconds of an open-loop point; closed-loop
//!   points measure half of it (a mean throughput settles faster than a tail latency);
//! - `WEFT_BENCH_REPS` (default 3): repetitions of every point;
//! - `WEFT_BENCH_WARMUP_MS` (default 500): unrecorded warm-up before each point;
//! - `WEFT_BENCH_RATES` (default `200,2000`): open-loop rates in req/s;
//! - `WEFT_BENCH_ONLY`: comma-separated scenarios besides direct (`weft`, `weft-opaque`,
//!   `relay`, `haproxy`, `weft-base`); all by default;
//! - `WEFT_BENCH_IDLE_CONNS` (default 1000): idle connections of the memory point;
//! - `WEFT_BENCH_PROXY_BIN`: a `weft-proxy` binary to measure instead of building one;
//! - `WEFT_BENCH_BASE_BIN`: a second `weft-proxy` binary, measured in the same run as the
//!   scenario `weft-base` (the detecting pair of it), for before-and-after comparisons
//!   that the machine's noise between runs would swamp;
//! - `WEFT_BENCH_NICE` (default -10): nice value of the bench and everything it starts
//!   (needs root to go below 0; 0 leaves it), so other work on the machine disturbs less.
//!
//! A default run takes about 5½ minutes on 2 CPUs. Targets are shown next to the figures,
//! not asserted.

// Shared with the HTTP and mTLS benches, which use the parts this one does not.
#[allow(dead_code)]
#[path = "common/env.rs"]
mod env;
#[path = "transport/load.rs"]
mod load;
#[allow(dead_code)]
#[path = "common/measure.rs"]
mod measure;
#[path = "common/ports.rs"]
mod ports;
#[allow(dead_code)]
#[path = "common/procfs.rs"]
mod procfs;
#[allow(dead_code)]
#[path = "transport/procs.rs"]
mod procs;
#[path = "common/relay.rs"]
mod relay;
#[path = "transport/report.rs"]
mod report;
#[path = "common/setup.rs"]
mod setup;
#[allow(dead_code)]
#[path = "common/table.rs"]
mod table;

use std::{path::Path, time::Duration};

use anyhow::Context as _;

use crate::{env::Knobs, measure::Point, procs::Proc, setup::Bench};

/// The run's settings, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub knobs: Knobs,
    pub idle_conns: usize,
}

impl Config {
    fn from_env() -> anyhow::Result<Config> {
        Ok(Config {
            knobs: Knobs::from_env()?,
            idle_conns: env::var("WEFT_BENCH_IDLE_CONNS")?.unwrap_or(1000),
        })
    }
}

/// What the transport bench measures on a path besides the load points.
#[derive(Debug, Default)]
pub struct Extra {
    pub idle_conns_rss: Vec<u64>,
    /// The server-side proxy's `tcp_open_total` protocols (what detection decided).
    pub protocols: Vec<String>,
}

pub type Scenario = measure::Scenario<Extra>;

fn main() -> anyhow::Result<()> {
    relay::run_if_asked()?;
    let cfg = Config::from_env()?;
    raise_fd_limit();
    let mut bench = Bench::start("transport", cfg.knobs.nice, false)?;
    let bin = bench.proxy.clone();
    let dir = bench.dir().to_path_buf();

    let (echo, echo_tid) = load::spawn_echo()?;
    let mut scenarios = vec![Scenario::direct("direct", "direct", echo, Extra::default())];
    if cfg.knobs.wants("weft") {
        let pair = procs::weft_pair(&bin, echo, false, &dir, "weft")?;
        scenarios.push(Scenario::through("weft", "weft", pair, Extra::default()));
    }
    let base_bin = if cfg.knobs.wants("weft-base") { bench.base_proxy("weft-base")? } else { None };
    if let Some(base) = &base_bin {
        let pair = procs::weft_pair(base, echo, false, &dir, "weft-base")?;
        let name = "weft, base binary";
        scenarios.push(Scenario::through("weft-base", name, pair, Extra::default()));
    }
    if cfg.knobs.wants("weft-opaque") {
        let pair = procs::weft_pair(&bin, echo, true, &dir, "weft-opaque")?;
        scenarios.push(Scenario::through(
            "weft-opaque",
            "weft (opaque port)",
            pair,
            Extra::default(),
        ));
    }
    if cfg.knobs.wants("relay") {
        let pair = relay::pair(echo, &dir, None)?;
        scenarios.push(Scenario::through("relay", "minimal relay pair", pair, Extra::default()));
    }
    if cfg.knobs.wants("haproxy") {
        if procs::haproxy_installed() {
            let pair = procs::haproxy_pair(echo, &dir)?;
            scenarios.push(Scenario::through("haproxy", "haproxy pair", pair, Extra::default()));
        } else {
            println!("note: haproxy is not on PATH; skipping the haproxy pair");
            bench.notes.push("haproxy is not on PATH: the haproxy pair was skipped.".to_string());
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

    let points = measure::points(&cfg.knobs);
    eprintln!(
        "transport bench: {} scenarios × {} points × {} reps (~{:.0} s)",
        scenarios.len(),
        points.len(),
        cfg.knobs.reps,
        estimate_secs(&cfg.knobs, &points, scenarios.len())
    );

    // Reps outermost and scenarios innermost: a noisy minute hits every scenario.
    for rep in 0..cfg.knobs.reps {
        for (i, point) in points.iter().enumerate() {
            for s in measure::rotated(&mut scenarios, rep + i) {
                let start = |entry| load::start(entry, point.kind, cfg.knobs.warmup, point.measure);
                let run = s
                    .measure(i, echo_tid, start)
                    .with_context(|| format!("{} at {} (rep {})", s.name, point.label, rep + 1))?;
                eprintln!(
                    "  rep {} {:<20} {:<18} {:>9.0} req/s  {}",
                    rep + 1,
                    s.name,
                    point.label,
                    run.rps,
                    run.latencies()
                );
            }
        }
    }

    for s in &mut scenarios {
        s.peak_rss = s.procs().iter().map(Proc::peak_rss_bytes).collect();
        if s.key.starts_with("weft") {
            s.extra.protocols = procs::tcp_open_protocols(&s.procs()[1], None);
        }
    }
    // Last, as it raises the proxies' peak RSS: memory with many idle connections.
    for s in scenarios.iter_mut().filter(|s| s.pair.is_some()) {
        let conns = load::hold_idle(s.entry, cfg.idle_conns).with_context(|| {
            format!("opening {} idle connections through {}", cfg.idle_conns, s.name)
        })?;
        std::thread::sleep(Duration::from_millis(300));
        s.extra.idle_conns_rss = s.procs().iter().map(Proc::rss_bytes).collect();
        drop(conns);
    }
    for s in &mut scenarios {
        for p in s.pair.iter_mut().flat_map(|p| p.procs.iter_mut()) {
            bench.notes.extend(p.log_note()?);
        }
    }

    let binary = binary_sizes(&bench.target_dir, &bin);
    let md = report::render(&scenarios, &points, &cfg, &bench.facts(), &binary);
    bench.write_report(&md)
}

fn estimate_secs(knobs: &Knobs, points: &[Point], scenarios: usize) -> f64 {
    let per_rep: f64 =
        points.iter().map(|p| p.measure.as_secs_f64() + knobs.warmup.as_secs_f64() + 0.05).sum();
    per_rep * knobs.reps as f64 * scenarios as f64
}

/// Sizes of the measured binary and of the shipped static one (the same file unless
/// `WEFT_BENCH_PROXY_BIN` named another).
fn binary_sizes(target: &Path, measured: &Path) -> Vec<(String, Option<u64>)> {
    let size = |p: &Path| std::fs::metadata(p).ok().map(|m| m.len());
    let static_bin = target.join("x86_64-unknown-linux-gnu/release-static/weft-proxy");
    vec![
        (format!("measured ({})", measured.display()), size(measured)),
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
