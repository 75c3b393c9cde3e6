//! mTLS benchmark (issue 5's figures): what transparent mTLS between two `weft-proxy`
//! processes costs on loopback — latency, CPU and memory of HTTP through the meshed pair,
//! and new mTLS connections (handshakes) per second per proxy core — against a direct
//! connection and the plaintext pair in the same run, so noise of the shared machine hits
//! every path alike.
//!
//! Run: `cargo bench --bench mtls` (builds the shipped static `weft-proxy` first; cargo
//! builds the `weft` binary for the control plane). It prints Markdown tables and writes
//! them to `target/bench-mtls.md`.
//!
//! The mesh is set up as `tests/e2e/mtls.rs` does: a fresh PKI (`weft certs generate`),
//! `weft identity` with static tokens, `weft destination` with a static endpoints file,
//! and proxies that obtain their certificates before they are used (`/ready`).
//!
//! HTTP, the client speaking HTTP/1.1 over 16 keep-alive connections to a hyper backend
//! that answers 1 KiB bodies (the HTTP bench's generator and backend), on these paths:
//! - `direct`: client → backend;
//! - `weft pair, plaintext, HTTP/2 between`: A's outbound → B's inbound with
//!   `--outbound-http2-upgrade-targets '*'` (the HTTP bench's weft-upgrade);
//! - `weft mTLS pair`: A (identity `client`) resolves the service through the destination
//!   service, whose endpoint is B's inbound with B's identity (`web`) and the `h2` protocol
//!   hint, so A speaks HTTP/2 to B over mTLS. The bench fails unless both proxies' metrics
//!   show every request as `tls="true"` with the right `server_id` / `client_id`;
//! - `bare rustls relay pair (mTLS, bytes only)`: the floor of an mTLS hop on this
//!   machine, the "bare rustls forwarder pair" (`common/relay.rs`): A originates
//!   TLS 1.3 with `client`'s certificate and requires `web`'s name of B, B requires a client
//!   certificate from the anchors; they copy bytes — no HTTP, no HTTP/2 between them (one
//!   TLS connection per client connection), no discovery, no metrics;
//! - `haproxy mTLS pair` (if haproxy is installed): the same shape in haproxy, one thread
//!   each — HTTP/2 over TLS 1.3 between A and B, client certificates required, leaves for
//!   `client` and `web` signed by the same issuer, B's name checked — so the CPU figure has
//!   a mature proxy beside it on the same machine.
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
//! interleaved (in an order that rotates from rep to rep and point to point, so that no
//! path always runs right after the same one), and every figure is the median over the
//! reps. Targets are shown next to the figures, not asserted.
//!
//! Env knobs:
//! - `WEFT_BENCH_QUICK=1`: smoke run, 2 s per point and 1 rep (the knobs below still win);
//! - `WEFT_BENCH_SECS` (default 10): measured seconds of an open-loop point; closed-loop
//!   and handshake points measure half of it;
//! - `WEFT_BENCH_REPS` (default 3): repetitions of every point;
//! - `WEFT_BENCH_WARMUP_MS` (default 500): unrecorded warm-up before each point;
//! - `WEFT_BENCH_RATES` (default `200,2000`): open-loop rates in req/s;
//! - `WEFT_BENCH_BODY` (default 1024): bytes of the backend's responses;
//! - `WEFT_BENCH_REQUEST_BODY` (default 0): bytes each request sends, as a POST (0: a GET
//!   without a body);
//! - `WEFT_BENCH_CONN_CONCURRENCY` (default 16): concurrent connections of the handshake loop;
//! - `WEFT_BENCH_HANDSHAKES=0`: skip the handshake points;
//! - `WEFT_BENCH_ONLY`: comma-separated paths besides direct (`weft`, `mtls`, `relay`,
//!   `haproxy`, `mtls-base`);
//!   all by default;
//! - `WEFT_BENCH_PROXY_BIN`: a `weft-proxy` binary to measure instead of building one;
//! - `WEFT_BENCH_BASE_BIN`: a second `weft-proxy` binary, measured in the same run as the
//!   path `mtls-base` (an mTLS pair of it, in a mesh of its own), for before-and-after
//!   comparisons that the machine's noise between runs would swamp;
//! - `WEFT_BENCH_NICE` (default -10): nice value of the bench and everything it starts
//!   (needs root to go below 0; 0 leaves it).
//!
//! A default run takes about 5 minutes on 2 CPUs.

// Its haproxy configuration; the nginx pair is the HTTP bench's alone.
#[allow(dead_code)]
#[path = "http/baselines.rs"]
mod baselines;
#[path = "mtls/conns.rs"]
mod conns;
#[allow(dead_code)]
#[path = "common/env.rs"]
mod env;
// Shared with the HTTP bench, which uses the 64-byte defaults.
#[allow(dead_code)]
#[path = "http/load.rs"]
mod http_load;
// Shared with the transport bench, which uses the parts this one does not.
#[allow(dead_code)]
#[path = "transport/load.rs"]
mod load;
#[path = "common/measure.rs"]
mod measure;
#[path = "mtls/mesh.rs"]
mod mesh;
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
#[path = "mtls/report.rs"]
mod report;
#[path = "common/setup.rs"]
mod setup;
#[path = "common/table.rs"]
mod table;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    env::Knobs,
    http_load::{Bodies, Proto},
    measure::Point,
    mesh::TlsCounts,
    procs::{Pair, Proc},
    setup::Bench,
};

/// The run's settings, from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub knobs: Knobs,
    pub bodies: Bodies,
    pub concurrency: usize,
    pub handshakes: bool,
}

impl Config {
    fn from_env() -> anyhow::Result<Config> {
        let knobs = Knobs::from_env()?;
        if let Some(bad) =
            knobs.only.iter().flatten().find(|o| {
                !matches!(o.as_str(), "weft" | "mtls" | "relay" | "haproxy" | "mtls-base")
            })
        {
            bail!("WEFT_BENCH_ONLY: {bad:?} is none of weft, mtls, relay, haproxy, mtls-base");
        }
        Ok(Config {
            knobs,
            bodies: Bodies {
                request: env::var("WEFT_BENCH_REQUEST_BODY")?.unwrap_or(0),
                response: env::var("WEFT_BENCH_BODY")?.unwrap_or(1024),
            },
            concurrency: env::var::<usize>("WEFT_BENCH_CONN_CONCURRENCY")?.unwrap_or(16).max(1),
            handshakes: env::switch("WEFT_BENCH_HANDSHAKES", true)?,
        })
    }
}

/// An HTTP path from the client to the backend (`direct`, `weft`, `mtls`), and what was
/// measured on it; besides the points, what the proxies' metrics said about the protocol
/// and TLS between them.
pub type Scenario = measure::Scenario<String>;

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

fn main() -> anyhow::Result<()> {
    relay::run_if_asked()?;
    let cfg = Config::from_env()?;
    let mut bench = Bench::start("mtls", cfg.knobs.nice, true)?;
    let bin = bench.proxy.clone();
    let weft = PathBuf::from(env!("CARGO_BIN_EXE_weft"));
    let dir = bench.dir().to_path_buf();
    let dir = &dir;

    let (backend, backend_tid) = http_load::spawn_backend(cfg.bodies.response)?;
    let (close_server, close_tid) = conns::spawn_close_server()?;
    let mut scenarios = vec![Scenario::direct("direct", "direct", backend, String::new())];
    let mut conn_scenarios = Vec::new();
    if cfg.handshakes {
        conn_scenarios.push(ConnScenario::new("direct", "direct", close_server));
    }
    if cfg.knobs.wants("weft") {
        let upgrade =
            |_: SocketAddr| vec!["--outbound-http2-upgrade-targets".to_string(), "*".to_string()];
        let pair = procs::weft_pair_with(&bin, backend, dir, "http weft", upgrade)?;
        let name = "weft pair, plaintext, HTTP/2 between";
        scenarios.push(Scenario::through("weft", name, pair, String::new()));
        if cfg.handshakes {
            let pair = procs::weft_pair(&bin, close_server, true, dir, "tcp weft")?;
            let entry = pair.entry;
            conn_scenarios
                .push(ConnScenario::new("weft", "weft pair, plaintext", entry).with_pair(pair));
        }
    }
    let mut control_plane = Vec::new();
    let mut handshake_bytes = None;
    if cfg.knobs.wants("mtls") || cfg.knobs.wants("relay") || cfg.knobs.wants("haproxy") {
        let mesh::Mesh { identity, destination, http, tcp, lone_b, lone_b_inbound, pki } =
            mesh::start(&weft, &bin, backend, close_server, dir).context("starting the mesh")?;
        control_plane = vec![identity, destination];
        if cfg.knobs.wants("mtls") {
            scenarios.push(Scenario::through("mtls", "weft mTLS pair", http, String::new()));
        }
        if cfg.knobs.wants("relay") {
            let pair =
                mesh::rustls_relay_pair(&pki, backend, dir).context("the rustls relay pair")?;
            let name = "bare rustls relay pair (mTLS, bytes only)";
            scenarios.push(Scenario::through("relay", name, pair, String::new()));
        }
        if cfg.knobs.wants("haproxy") && procs::haproxy_installed() {
            let pair = mesh::haproxy_pair(&pki, backend, dir).context("the haproxy mTLS pair")?;
            scenarios.push(Scenario::through("haproxy", "haproxy mTLS pair", pair, String::new()));
        }
        let base_bin =
            if cfg.knobs.wants("mtls-base") { bench.base_proxy("mtls-base")? } else { None };
        if let Some(base) = &base_bin {
            let base_dir = dir.join("base");
            std::fs::create_dir_all(&base_dir)?;
            let m = mesh::start(&weft, base, backend, close_server, &base_dir)
                .context("starting the base binary's mesh")?;
            control_plane.extend([m.identity, m.destination]);
            let name = "weft mTLS pair, base binary";
            scenarios.push(Scenario::through("mtls-base", name, m.http, String::new()));
        }
        if cfg.handshakes && cfg.knobs.wants("mtls") {
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
        http_load::check(s.entry, Proto::H1, cfg.bodies)
            .with_context(|| format!("a first request through {}", s.name))?;
    }
    for s in &conn_scenarios {
        conns::check(s.entry, &s.dial, 1)
            .with_context(|| format!("a first connection through {}", s.name))?;
    }

    let points = measure::points(&cfg.knobs);
    eprintln!(
        "mtls bench: {} HTTP paths × {} points + {} handshake paths, × {} reps (~{:.0} s)",
        scenarios.len(),
        points.len(),
        conn_scenarios.len(),
        cfg.knobs.reps,
        estimate_secs(&cfg.knobs, &points, scenarios.len(), conn_scenarios.len())
    );

    // Reps outermost and paths innermost: a noisy minute hits every path.
    for rep in 0..cfg.knobs.reps {
        for (i, point) in points.iter().enumerate() {
            for s in measure::rotated(&mut scenarios, rep + i) {
                let (kind, span) = (point.kind, point.measure);
                let (warmup, bodies) = (cfg.knobs.warmup, cfg.bodies);
                let start = |to| http_load::start(to, Proto::H1, bodies, kind, warmup, span);
                let run = s
                    .measure(i, backend_tid, start)
                    .with_context(|| format!("{} at {} (rep {})", s.name, point.label, rep + 1))?;
                eprintln!(
                    "  rep {} {:<38} {:<18} {:>8.0} req/s  {}  CPU/10k {}{}",
                    rep + 1,
                    s.name,
                    point.label,
                    run.rps,
                    run.latencies(),
                    cpu_text(&run.cpu_per_10k),
                    run.errors_note()
                );
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
            "mtls" | "mtls-base" => {
                let pair = s.pair.as_ref().context("the mTLS pair")?;
                // Fails the bench: figures of a pair that was not mTLS would be a lie.
                s.extra = mesh::verify_http(pair)?;
            }
            "weft" => {
                let pair = s.pair.as_ref().context("the plaintext pair")?;
                pair.procs.iter().try_for_each(mesh::verify_plaintext)?;
                let a = procs::scrape(&pair.procs[0]);
                let h2 =
                    procs::metric(&a, "tcp_open_total", &[("peer", "dst"), ("protocol", "h2")]);
                s.extra = format!("A opened {h2} `h2` connection(s) to B, no TLS");
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
        bench.notes.extend(p.log_note()?);
    }

    let md =
        report::render(&scenarios, &points, &conn_scenarios, &cfg, &bench.facts(), handshake_bytes);
    bench.write_report(&md)
}

/// One handshake point on one path; on mTLS paths, checks that every connection the
/// client made was counted as mTLS by the proxies.
fn run_conns(s: &mut ConnScenario, cfg: &Config, close_tid: i32) -> anyhow::Result<ConnRun> {
    let tls_before = s.tls_counts();
    let measure = Duration::from_secs_f64(cfg.knobs.closed_secs);
    let (window, handle) =
        conns::start(s.entry, s.dial.clone(), cfg.concurrency, cfg.knobs.warmup, measure)?;
    let sample = |s: &ConnScenario| {
        (s.cpu(), procfs::thread_cpu_seconds(window.tid), procfs::thread_cpu_seconds(close_tid))
    };
    load::sleep_until_ns(window.start_ns);
    let (cpu0, gen0, srv0) = sample(s);
    load::sleep_until_ns(window.end_ns);
    let (cpu1, gen1, srv1) = sample(s);
    let result = load::join(handle)?;
    let t = &result.tally;
    if s.first_error.is_none() {
        s.first_error = t.first_error.clone();
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
    let n = t.completed.max(1) as f64;
    Ok(ConnRun {
        cps: t.completed as f64 / secs,
        p50: t.latency.value_at_quantile(0.5) as f64,
        p99: t.latency.value_at_quantile(0.99) as f64,
        cpu_per_1k: cpu0.iter().zip(&cpu1).map(|(a, b)| (b - a) / n * 1000.0).collect(),
        gen_busy: (gen1 - gen0) / secs,
        server_busy: (srv1 - srv0) / secs,
        errors: t.errors,
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

fn estimate_secs(k: &Knobs, points: &[Point], http: usize, handshake: usize) -> f64 {
    let warmup = k.warmup.as_secs_f64() + 0.1;
    let per_rep: f64 = points.iter().map(|p| p.measure.as_secs_f64() + warmup).sum::<f64>()
        * http as f64
        + (k.closed_secs + warmup) * handshake as f64;
    per_rep * k.reps as f64
}
