//! HTTP benchmark: small GETs on loopback through a pair of `weft-proxy` processes
//! (client-side outbound → server-side inbound) against a direct connection to the same
//! backend and against baseline pairs (haproxy in HTTP mode, nginx) — all in one run, so
//! noise of the shared machine hits every path alike.
//!
//! Run: `cargo bench --bench http` (builds the shipped static `weft-proxy` first). It
//! prints a Markdown table and writes it to `target/bench-http.md`.
//!
//! Paths, per client protocol:
//! - HTTP/1.1 (keep-alive): direct; the weft pair (HTTP/1.1 between the proxies); the weft
//!   pair with `--outbound-http2-upgrade-targets '*'` (HTTP/2 with `l5d-orig-proto` between
//!   the proxies, HTTP/1.1 again to the backend); a haproxy pair (`mode http`, `nbthread 1`,
//!   `http-reuse always`); an nginx pair (one process each, keep-alive upstreams);
//! - HTTP/2 (prior knowledge): direct; the weft pair; a haproxy pair with h2 on both sides;
//!   an nginx pair taking HTTP/2 from the client (`listen ... http2`) and, as nginx cannot
//!   proxy HTTP/2 to its upstream, HTTP/1.1 keep-alive from A to B and to the backend;
//! - both: a pair of minimal relays (`common/relay.rs`: accept, connect, copy bytes), the
//!   floor of any userspace hop on this machine; it does not parse HTTP, so each client
//!   connection keeps its own connection to the backend.
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
//! interleaved (in an order that rotates from rep to rep and point to point, so that no
//! path always runs right after the same one), and every figure is the median over the
//! reps. Per proxy: CPU seconds per 10 000 requests (from /proc, inside the window), RSS at
//! the end of each point's window (the table shows it at 2 000 req/s), idle and peak RSS.
//! Once, after the reps, `h2load` (if installed) measures every path's max throughput with
//! the closed loop's connections and concurrency, as a cross-check of the generator.
//!
//! Env knobs:
//! - `WEFT_BENCH_QUICK=1`: smoke run, 2 s per point and 1 rep (the knobs below still win);
//! - `WEFT_BENCH_SECS` (default 10): measured seconds of an open-loop point; closed-loop
//!   points (and h2load) measure half of it;
//! - `WEFT_BENCH_REPS` (default 3): repetitions of every point;
//! - `WEFT_BENCH_WARMUP_MS` (default 500): unrecorded warm-up before each point;
//! - `WEFT_BENCH_RATES` (default `200,2000`): open-loop rates in req/s;
//! - `WEFT_BENCH_PROTOCOLS` (default `h1,h2`): client protocols;
//! - `WEFT_BENCH_REQUEST_BODY` (default 0): bytes each request sends, as a POST (0: a GET
//!   without a body);
//! - `WEFT_BENCH_ONLY`: comma-separated paths besides direct (`weft`, `weft-upgrade`,
//!   `relay`, `haproxy`, `nginx`, `weft-base`); all by default;
//! - `WEFT_BENCH_H2LOAD=0`: skip the h2load cross-check;
//! - `WEFT_BENCH_PROXY_BIN`: a `weft-proxy` binary to measure instead of building one;
//! - `WEFT_BENCH_BASE_BIN`: a second `weft-proxy` binary, measured in the same run as the
//!   path `weft-base` (a plain weft pair of it), for before-and-after comparisons that the
//!   machine's noise between runs would swamp;
//! - `WEFT_BENCH_NICE` (default -10): nice value of the bench and everything it starts
//!   (needs root to go below 0; 0 leaves it).
//!
//! A default run takes about 12 minutes on 2 CPUs. Targets are shown next to the figures,
//! not asserted.

#[path = "http/baselines.rs"]
mod baselines;
#[allow(dead_code)]
#[path = "common/env.rs"]
mod env;
#[path = "http/h2load.rs"]
mod h2load;
#[path = "http/load.rs"]
mod http_load;
// Shared with the transport bench, which uses the parts this one does not.
#[allow(dead_code)]
#[path = "transport/load.rs"]
mod load;
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
#[path = "http/report.rs"]
mod report;
#[path = "common/setup.rs"]
mod setup;
#[path = "common/table.rs"]
mod table;

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, bail};

use crate::{
    env::Knobs,
    http_load::{Bodies, Proto},
    measure::Point,
    procs::{Pair, Proc},
    setup::Bench,
};

/// The run's settings, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub knobs: Knobs,
    pub protocols: Vec<Proto>,
    pub bodies: Bodies,
    pub h2load: bool,
}

impl Config {
    fn from_env() -> anyhow::Result<Config> {
        let knobs = Knobs::from_env()?;
        let protocols = match env::list("WEFT_BENCH_PROTOCOLS")? {
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
        let request = env::var("WEFT_BENCH_REQUEST_BODY")?.unwrap_or(0);
        Ok(Config {
            knobs,
            protocols,
            bodies: Bodies { request, ..Bodies::GET },
            h2load: env::switch("WEFT_BENCH_H2LOAD", true)?,
        })
    }
}

/// What the HTTP bench measures on a path besides the load points.
#[derive(Debug)]
pub struct Extra {
    pub proto: Proto,
    /// Weft: `request_total` per proxy (A, B) after the run.
    pub requests_counted: Vec<u64>,
    /// Weft: the protocols of A's upstream connections (to B), from `tcp_open_total`.
    pub between: Vec<String>,
    pub h2load: Option<anyhow::Result<h2load::Run>>,
}

impl Extra {
    fn new(proto: Proto) -> Self {
        Extra { proto, requests_counted: Vec::new(), between: Vec::new(), h2load: None }
    }
}

/// A way from the client to the backend, in one client protocol: `direct`, `weft`,
/// `weft-upgrade`, `haproxy`, `nginx`.
pub type Scenario = measure::Scenario<Extra>;

impl Scenario {
    pub fn is_weft(&self) -> bool {
        self.key.starts_with("weft")
    }

    pub fn is_baseline(&self) -> bool {
        matches!(self.key, "haproxy" | "nginx")
    }
}

fn main() -> anyhow::Result<()> {
    relay::run_if_asked()?;
    let cfg = Config::from_env()?;
    let mut bench = Bench::start("http", cfg.knobs.nice, false)?;
    let bin = bench.proxy.clone();
    let dir = bench.dir().to_path_buf();
    let dir = &dir;

    let (backend, backend_tid) = http_load::spawn_backend(cfg.bodies.response)?;
    let haproxy = procs::haproxy_installed();
    let nginx = baselines::nginx_installed();
    if cfg.knobs.wants("haproxy") && !haproxy {
        bench.notes.push("haproxy is not on PATH: the haproxy pairs were skipped.".into());
    }
    if cfg.knobs.wants("nginx") && !nginx {
        bench.notes.push("nginx is not installed: the nginx pair was skipped.".into());
    }
    let no_extra = |_: SocketAddr| Vec::new();
    let base_bin = if cfg.knobs.wants("weft-base") { bench.base_proxy("weft-base")? } else { None };
    let mut scenarios = Vec::new();
    for &proto in &cfg.protocols {
        let (h1, tag) = (proto == Proto::H1, if proto == Proto::H1 { "h1" } else { "h2" });
        let through = |key, name, pair: Pair| Scenario::through(key, name, pair, Extra::new(proto));
        scenarios.push(Scenario::direct("direct", "direct", backend, Extra::new(proto)));
        if cfg.knobs.wants("weft") {
            let pair = procs::weft_pair_with(&bin, backend, dir, &format!("{tag} weft"), no_extra)?;
            scenarios.push(through("weft", "weft pair", pair));
        }
        if let Some(base) = &base_bin {
            let pair =
                procs::weft_pair_with(base, backend, dir, &format!("{tag} weft-base"), no_extra)?;
            scenarios.push(through("weft-base", "weft pair, base binary", pair));
        }
        if h1 && cfg.knobs.wants("weft-upgrade") {
            let upgrade = |_: SocketAddr| {
                vec!["--outbound-http2-upgrade-targets".to_string(), "*".to_string()]
            };
            let pair = procs::weft_pair_with(&bin, backend, dir, "h1 weft-upgrade", upgrade)?;
            scenarios.push(through("weft-upgrade", "weft pair, HTTP/2 between", pair));
        }
        if cfg.knobs.wants("relay") {
            let pair = relay::pair(backend, dir, None)?;
            scenarios.push(through("relay", "minimal relay pair (bytes only)", pair));
        }
        if haproxy && cfg.knobs.wants("haproxy") {
            let config = baselines::haproxy_config(proto);
            let pair = procs::haproxy_pair_with(backend, dir, &format!("{tag} haproxy"), config)?;
            scenarios.push(through("haproxy", "haproxy pair", pair));
        }
        if nginx && cfg.knobs.wants("nginx") {
            let pair = baselines::nginx_pair(backend, dir, &format!("{tag} nginx"), proto)?;
            let name = if h1 { "nginx pair" } else { "nginx pair (HTTP/1.1 from A on)" };
            scenarios.push(through("nginx", name, pair));
        }
    }

    // Idle memory, before any load; one request through each path first, so a broken
    // path fails here with a clear message rather than in the load.
    std::thread::sleep(Duration::from_millis(300));
    for s in &mut scenarios {
        s.idle_rss = s.procs().iter().map(Proc::rss_bytes).collect();
        http_load::check(s.entry, s.extra.proto, cfg.bodies).with_context(|| {
            format!("a first request through {} ({})", s.name, s.extra.proto.label())
        })?;
    }

    let points = measure::points(&cfg.knobs);
    let h2load_on = cfg.h2load && h2load::installed();
    if cfg.h2load && !h2load_on {
        bench.notes.push("h2load is not installed: no cross-check of the generator.".into());
    }
    eprintln!(
        "http bench: {} paths × {} points × {} reps (~{:.0} s)",
        scenarios.len(),
        points.len(),
        cfg.knobs.reps,
        estimate_secs(&cfg, &points, scenarios.len(), h2load_on)
    );

    // Reps outermost and paths innermost: a noisy minute hits every path.
    for rep in 0..cfg.knobs.reps {
        for (i, point) in points.iter().enumerate() {
            for s in measure::rotated(&mut scenarios, rep + i) {
                let proto = s.extra.proto;
                let (kind, warmup, span) = (point.kind, cfg.knobs.warmup, point.measure);
                let start = |entry| http_load::start(entry, proto, cfg.bodies, kind, warmup, span);
                let run = s.measure(i, backend_tid, start).with_context(|| {
                    format!("{} {} at {} (rep {})", proto.label(), s.name, point.label, rep + 1)
                })?;
                eprintln!(
                    "  rep {} {:<8} {:<26} {:<18} {:>8.0} req/s  {}{}",
                    rep + 1,
                    proto.label(),
                    s.name,
                    point.label,
                    run.rps,
                    run.latencies(),
                    run.errors_note()
                );
            }
        }
    }

    for s in &mut scenarios {
        s.peak_rss = s.procs().iter().map(Proc::peak_rss_bytes).collect();
        if s.is_weft() {
            s.extra.requests_counted = s.procs().iter().map(requests_counted).collect();
            s.extra.between = procs::tcp_open_protocols(&s.procs()[0], Some("dst"));
        }
    }
    if h2load_on {
        // h2load POSTs a file's bytes: the same request body as the generator's.
        let data = (cfg.bodies.request > 0)
            .then(|| {
                let path = dir.join("h2load-request-body");
                std::fs::write(&path, vec![b'u'; cfg.bodies.request]).map(|()| path)
            })
            .transpose()
            .context("writing h2load's request body")?;
        for s in &mut scenarios {
            let proto = s.extra.proto;
            let (warmup, secs) = (cfg.knobs.warmup, cfg.knobs.closed_secs);
            let run = h2load::run(s.entry, proto, data.as_deref(), warmup, secs);
            match &run {
                Ok(r) => {
                    eprintln!("  h2load {:<8} {:<26} {:>8.0} req/s", proto.label(), s.name, r.rps)
                }
                Err(e) => eprintln!("  h2load {} {}: {e:#}", proto.label(), s.name),
            }
            s.extra.h2load = Some(run);
        }
    }
    for s in &mut scenarios {
        for p in s.pair.iter_mut().flat_map(|p| p.procs.iter_mut()) {
            bench.notes.extend(p.log_note()?);
        }
    }

    let md = report::render(&scenarios, &points, &cfg, &bench.facts());
    bench.write_report(&md)
}

/// The sum of a weft proxy's `request_total` series.
fn requests_counted(p: &Proc) -> u64 {
    procs::metric(&procs::scrape(p), "request_total", &[]) as u64
}

fn estimate_secs(cfg: &Config, points: &[Point], scenarios: usize, h2load: bool) -> f64 {
    let k = &cfg.knobs;
    let per_rep: f64 =
        points.iter().map(|p| p.measure.as_secs_f64() + k.warmup.as_secs_f64() + 0.1).sum();
    let h2load = if h2load { k.closed_secs.ceil() + k.warmup.as_secs_f64().ceil() } else { 0.0 };
    (per_rep * k.reps as f64 + h2load) * scenarios as f64
}
