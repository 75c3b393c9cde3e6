//! The mTLS bench's report: medians over the reps, the added cost against direct and the
//! TLS share against the plaintext pair, issue 5's targets next to the figures, as Markdown.

use std::fmt::Write as _;

use crate::{
    Config, ConnRun, ConnScenario, Scenario, conns,
    http_load::H1_CONNS,
    load::Kind,
    measure::{Med, Point, at_rate, closed, med, median},
    mesh::TlsCounts,
    setup::Facts,
    table::{busy, errors, figures, joined, late, mark, measured, mib, thousands, us},
};

/// Bytes A reads from B per connection of the mTLS TCP pair (handshake, session tickets,
/// answer, close), measured before the load.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeBytes {
    /// The pair's first connection: a full handshake (B's certificate chain).
    pub full: f64,
    /// Sequential connections after it: each resumes the session of the one before.
    pub resumed: f64,
}

impl HandshakeBytes {
    /// The share of full handshakes among connections that read `per_conn` bytes each.
    fn full_share(&self, per_conn: f64) -> f64 {
        ((per_conn - self.resumed) / (self.full - self.resumed)).clamp(0.0, 1.0)
    }
}

/// Issue 5's figures to reach.
const LATENCY_TARGET_RATE: u64 = 2000;
const ADDED_P50_TARGET: f64 = 220.0;
const ADDED_P99_TARGET: f64 = 500.0;
const CPU_PER_10K_TARGET: f64 = 0.5;
const RSS_TARGET: f64 = (12 << 20) as f64;
const HANDSHAKES_PER_CORE_TARGET: f64 = 1500.0;
/// rustls' `ClientSessionMemoryCache` keeps this many TLS 1.3 tickets per server name.
const RUSTLS_TICKETS_PER_SERVER: usize = 8;

/// Medians over the reps of one handshake path.
#[derive(Debug, Clone, Default)]
struct ConnMed {
    cps: f64,
    p50: f64,
    p99: f64,
    cpu: Vec<f64>,
    gen_busy: f64,
    server_busy: f64,
    errors: u64,
    made: u64,
    full_handshakes: u64,
    /// Sums over the reps of the mTLS counters.
    tls: Option<TlsCounts>,
    /// Median over the reps of the bytes A read from B per mTLS connection.
    read_per_conn: f64,
}

fn conn_med(runs: &[ConnRun]) -> ConnMed {
    let f = |g: fn(&ConnRun) -> f64| median(runs.iter().map(g).collect());
    let procs = runs.first().map_or(0, |r| r.cpu_per_1k.len());
    let tls = runs.iter().filter_map(|r| r.tls).reduce(|a, b| TlsCounts {
        a_opened: a.a_opened + b.a_opened,
        b_accepted: a.b_accepted + b.b_accepted,
        a_read_bytes: a.a_read_bytes + b.a_read_bytes,
        a_write_bytes: a.a_write_bytes + b.a_write_bytes,
    });
    ConnMed {
        cps: f(|r| r.cps),
        p50: f(|r| r.p50),
        p99: f(|r| r.p99),
        cpu: (0..procs).map(|i| median(runs.iter().map(|r| r.cpu_per_1k[i]).collect())).collect(),
        gen_busy: f(|r| r.gen_busy),
        server_busy: f(|r| r.server_busy),
        errors: runs.iter().map(|r| r.errors).sum(),
        made: runs.iter().map(|r| r.made).sum(),
        full_handshakes: runs.iter().map(|r| r.full_handshakes).sum(),
        tls,
        read_per_conn: median(
            runs.iter()
                .filter_map(|r| r.tls)
                .map(|t| t.a_read_bytes / t.a_opened.max(1.0))
                .collect(),
        ),
    }
}

fn secs3(v: f64) -> String {
    if v.is_nan() { "—".into() } else { format!("{v:.3}") }
}

pub fn render(
    scenarios: &[Scenario],
    points: &[Point],
    conn_scenarios: &[ConnScenario],
    cfg: &Config,
    facts: &Facts,
    handshake_bytes: Option<HandshakeBytes>,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## mTLS benchmark (`cargo bench --bench mtls`)\n");
    let _ = writeln!(
        md,
        "Loopback; HTTP/1.1 over {H1_CONNS} keep-alive connections (never pipelined; open loop: due \
         requests queue for a free connection), each request a {} from a hyper backend. \
         Paths: direct; a weft pair in plaintext with HTTP/2 between the proxies \
         (`--outbound-http2-upgrade-targets '*'`); a weft pair with identities from `weft \
         identity` and the backend's endpoint from `weft destination` (identity + `h2` hint): \
         HTTP/2 over mTLS between the proxies; a haproxy pair meshed the same way (HTTP/2 over TLS \
         1.3 with client certificates from the same issuer). Each proxy runs one thread \
         (`--cores 1`, `nbthread 1`). {}",
        cfg.bodies.describe(),
        measured(&cfg.knobs, facts, "closed loop and handshakes", "paths")
    );
    let _ = writeln!(
        md,
        "Latency in µs, from each request's intended send time (open loop) or its send (closed \
         loop). *vs direct*: added p50 / added p99 (open loop), share of direct's req/s (closed \
         loop). *CPU*: CPU seconds per 10 000 requests of the client-side (A) / server-side (B) \
         proxy. *RSS*: at the end of the point's window. *gen. late*: how late the generator \
         itself queued or sent (µs, p99), part of the latency. Targets are issue 5's, shown, not \
         asserted.\n"
    );
    let _ = writeln!(
        md,
        "| path | point | req/s | p50 | p99 | p99.9 | vs direct | CPU s/10k req (A / B) | RSS MiB (A / B) | errors | gen. late p99 | target |"
    );
    let _ = writeln!(md, "|---|---|--:|--:|--:|--:|---|---|---|--:|--:|---|");
    let direct = scenarios.iter().find(|s| s.key == "direct");
    for (i, point) in points.iter().enumerate() {
        let d = direct.map(|s| med(&s.runs[i])).unwrap_or_default();
        for s in scenarios {
            let m = med(&s.runs[i]);
            let target = if s.key == "mtls" { http_targets(point, &m, &d) } else { String::new() };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                s.name,
                point.label,
                figures(s.key, point.kind, &m, &d, false),
                joined(&m.rss, |&b| mib(b)),
                errors(&m),
                late(point.kind, &m),
                target
            );
        }
    }

    // Memory.
    let (at_rate, closed) = (at_rate(points, LATENCY_TARGET_RATE), closed(points));
    let _ = writeln!(
        md,
        "\n| path | idle RSS MiB (A / B) | RSS at 2 000 req/s MiB (A / B) | RSS at max MiB (A / B) | peak RSS MiB (A / B) | target |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|---|");
    for s in scenarios.iter().filter(|s| s.pair.is_some()) {
        let rss_at = |i: Option<usize>| i.map(|i| med(&s.runs[i]).rss).unwrap_or_default();
        let under_load = rss_at(at_rate);
        let target = if s.key == "mtls" && !under_load.is_empty() {
            format!("≤ 12 MiB {}", mark(under_load.iter().all(|&r| r <= RSS_TARGET)))
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            s.name,
            joined(&s.idle_rss, |&b| mib(b as f64)),
            joined(&under_load, |&b| mib(b)),
            joined(&rss_at(closed), |&b| mib(b)),
            joined(&s.peak_rss, |&b| mib(b as f64)),
            target
        );
    }

    if !conn_scenarios.is_empty() {
        render_handshakes(&mut md, conn_scenarios, cfg, handshake_bytes);
    }

    let _ = writeln!(md);
    if let Some(i) = closed {
        let per: Vec<String> = scenarios.iter().map(|s| busy(s.name, &med(&s.runs[i]))).collect();
        let _ = writeln!(
            md,
            "- HTTP closed loop, share of a CPU used by the load thread / the backend thread: {}.",
            per.join(", ")
        );
    }
    if !conn_scenarios.is_empty() {
        let per: Vec<String> = conn_scenarios
            .iter()
            .map(|s| {
                let m = conn_med(&s.runs);
                format!("{} {:.0} % / {:.0} %", s.name, 100.0 * m.gen_busy, 100.0 * m.server_busy)
            })
            .collect();
        let _ = writeln!(
            md,
            "- handshake loop, share of a CPU used by the load thread / the server thread: {}.",
            per.join(", ")
        );
    }
    for s in scenarios.iter().filter(|s| !s.extra.is_empty()) {
        let _ = writeln!(md, "- {}: {}.", s.name, s.extra);
    }
    for s in scenarios {
        if let Some(e) = &s.first_error {
            let _ = writeln!(md, "- {}: first failed request: {e}", s.name);
        }
    }
    for s in conn_scenarios {
        if let Some(e) = &s.first_error {
            let _ = writeln!(md, "- {} (handshake loop): first failed connection: {e}", s.name);
        }
    }
    for n in &facts.notes {
        let _ = writeln!(md, "- {n}");
    }
    md
}

fn render_handshakes(
    md: &mut String,
    conn_scenarios: &[ConnScenario],
    cfg: &Config,
    handshake_bytes: Option<HandshakeBytes>,
) {
    let _ = writeln!(
        md,
        "\nNew connections: a closed loop of {} tasks, each opening a fresh TCP connection for one \
         {}-byte request and answer, then waiting for the server's close. Through the mTLS pair \
         (an opaque service whose endpoint has B's identity and B's inbound port as its opaque \
         transport port) every connection is one TLS 1.3 handshake with client certificates, \
         originated by A and terminated by B, plus a transport header; through the plaintext \
         pair (opaque ports, no detection) it is plain TCP. *latency*: connect to answer, µs. \
         *per CPU-s*: connections per CPU-second of the proxy, i.e. per core (one thread each). \
         *counted*: mTLS connections in A's / B's `tcp_open_total{{tls=\"true\"}}` over all reps \
         (warm-up included) against the connections the client completed. *full*: the share of \
         full handshakes (the rest resumed a session): on the pair estimated from the bytes A \
         read from B per connection; on the last row the bench is B's client, with resumption \
         off, and counts them.\n",
        cfg.concurrency,
        conns::FRAME
    );
    let _ = writeln!(
        md,
        "| path | conn/s | latency p50 | latency p99 | CPU s/1k conn (A / B) | conn per CPU-s (A / B) | counted A / B / client | full | errors | target |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|---|---|---|--:|--:|---|");
    for s in conn_scenarios {
        let m = conn_med(&s.runs);
        let per_core: Vec<f64> = m.cpu.iter().map(|c| 1000.0 / c).collect();
        let counted = match &m.tls {
            Some(t) => format!(
                "{} / {} / {}",
                thousands(t.a_opened),
                thousands(t.b_accepted),
                thousands(m.made as f64)
            ),
            None => "—".into(),
        };
        let target = if matches!(s.key, "mtls" | "lone-b") {
            let ok: Vec<String> = ["A", "B"]
                .iter()
                .zip(&per_core)
                .filter(|(_, v)| !v.is_nan())
                .map(|(p, &v)| format!("{p} {}", mark(v >= HANDSHAKES_PER_CORE_TARGET)))
                .collect();
            format!("≥ 1 500/s per core: {}", ok.join(" "))
        } else {
            String::new()
        };
        let full = match (s.key, &handshake_bytes) {
            ("mtls", Some(b)) => format!("≈ {:.0} %", 100.0 * b.full_share(m.read_per_conn)),
            ("lone-b", _) => {
                format!("{:.0} %", 100.0 * m.full_handshakes as f64 / m.made.max(1) as f64)
            }
            _ => "—".into(),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.name,
            thousands(m.cps),
            us(m.p50),
            us(m.p99),
            joined(&m.cpu, |&c| secs3(c)),
            joined(&per_core, |&v| thousands(v)),
            counted,
            full,
            m.errors,
            target
        );
    }
    let _ = writeln!(md);
    let find = |key: &str| conn_scenarios.iter().find(|s| s.key == key).map(|s| conn_med(&s.runs));
    let (plain, mtls, lone) = (find("weft"), find("mtls"), find("lone-b"));
    if let (Some(p), Some(t)) = (&plain, &mtls) {
        let extra: Vec<f64> = t.cpu.iter().zip(&p.cpu).map(|(t, p)| t - p).collect();
        let share: Vec<String> =
            t.cpu.iter().zip(&extra).map(|(t, e)| format!("{:.0} %", 100.0 * e / t)).collect();
        let _ = writeln!(
            md,
            "- TLS share: the mTLS pair spends {} CPU-s more per 1 000 connections than the \
             plaintext pair (A / B), {} of its CPU per connection; the TLS work alone would allow \
             {} handshakes per CPU-second (A / B).",
            joined(&extra, |e| format!("{e:+.3}")),
            share.join(" / "),
            joined(&extra, |&e| thousands(1000.0 / e))
        );
    }
    if let (Some(p), Some(l)) = (&plain, &lone) {
        let (extra, b) = (l.cpu[1] - p.cpu[1], l.cpu[1]);
        let _ = writeln!(
            md,
            "- Full handshakes on B: dialed by the bench with resumption off, B spends {extra:+.3} \
             CPU-s more per 1 000 connections than the plaintext pair's B ({:.0} % of its CPU per \
             connection); the full handshake alone would allow {} per CPU-second.",
            100.0 * extra / b,
            thousands(1000.0 / extra)
        );
    }
    if let (Some(bytes), Some(t)) = (&handshake_bytes, &mtls) {
        // A full TLS 1.3 server flight carries B's certificate chain and CertificateVerify;
        // a resumed one (PSK) neither.
        let _ = writeln!(
            md,
            "- Full or resumed on the pair: A read {} bytes from B on the pair's first connection \
             (a full handshake, session tickets, the answer, the close), {} per connection on 20 \
             sequential ones after it (each resuming the previous session), and {} per connection \
             in the loop (median over reps): about {:.0} % of the loop's handshakes were full, the \
             rest resumed (TLS 1.3 PSK with ECDHE: no certificates, no signatures).{}",
            thousands(bytes.full),
            thousands(bytes.resumed),
            thousands(t.read_per_conn),
            100.0 * bytes.full_share(t.read_per_conn),
            if cfg.concurrency > RUSTLS_TICKETS_PER_SERVER {
                format!(
                    " A keeps at most {RUSTLS_TICKETS_PER_SERVER} session tickets per server \
                     (rustls' client cache), fewer than the loop's {} connections opening at \
                     once; with {RUSTLS_TICKETS_PER_SERVER} or fewer, nearly all resume.",
                    cfg.concurrency
                )
            } else {
                String::new()
            }
        );
    }
}

/// The target column of the mTLS row: issue 5's figures, at 2 000 req/s.
fn http_targets(point: &Point, m: &Med, d: &Med) -> String {
    match point.kind {
        Kind::Open { rate } if rate == LATENCY_TARGET_RATE => {
            let cpu_ok = m.cpu.iter().all(|&c| c <= CPU_PER_10K_TARGET);
            let rss_ok = m.rss.iter().all(|&r| r <= RSS_TARGET);
            [
                format!("+p50 ≤ 220 {}", mark(m.p50 - d.p50 <= ADDED_P50_TARGET)),
                format!("+p99 ≤ 500 {}", mark(m.p99 - d.p99 <= ADDED_P99_TARGET)),
                format!("CPU ≤ 0.5 {}", mark(cpu_ok)),
                format!("RSS ≤ 12 MiB {}", mark(rss_ok)),
            ]
            .join(" · ")
        }
        _ => String::new(),
    }
}
