//! The HTTP bench's report: medians over the reps, comparisons with direct and with the
//! baseline pairs, the targets next to the figures, as Markdown.

use std::{fmt::Write as _, time::Duration};

use crate::{
    Config, Point, PointRun, Scenario,
    http_load::{BODY, H1_CONNS, H2_CONNS, H2_STREAMS, Proto},
    load::Kind,
};

/// Facts about the run printed with the tables.
#[derive(Debug)]
pub struct RunInfo {
    pub cfg: Config,
    pub cpus: usize,
    pub load_start: String,
    pub load_end: String,
    pub elapsed: Duration,
    pub notes: Vec<String>,
}

/// Issue 3's figures to reach.
const LATENCY_TARGET_RATE: u64 = 2000;
const ADDED_P50_TARGET: f64 = 200.0;
const ADDED_P99_TARGET: f64 = 600.0;
const H2_THROUGHPUT_TARGET: f64 = 0.35;
const RSS_TARGET: u64 = 20 << 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

/// Medians over the reps of one path at one point.
#[derive(Debug, Clone, Default)]
struct Med {
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    cpu: Vec<f64>,
    rss: Vec<f64>,
    gen_busy: f64,
    backend_busy: f64,
    send_late_p99: f64,
    missing: u64,
    errors: u64,
}

fn med(runs: &[PointRun]) -> Med {
    let f = |g: fn(&PointRun) -> f64| median(runs.iter().map(g).collect());
    let procs = runs.first().map_or(0, |r| r.cpu_per_10k.len());
    let per = |g: fn(&PointRun, usize) -> f64| -> Vec<f64> {
        (0..procs).map(|i| median(runs.iter().map(|r| g(r, i)).collect())).collect()
    };
    Med {
        rps: f(|r| r.rps),
        p50: f(|r| r.p50),
        p99: f(|r| r.p99),
        p999: f(|r| r.p999),
        cpu: per(|r, i| r.cpu_per_10k[i]),
        rss: per(|r, i| r.rss[i] as f64),
        gen_busy: f(|r| r.gen_busy),
        backend_busy: f(|r| r.backend_busy),
        send_late_p99: f(|r| r.send_late_p99),
        missing: runs.iter().map(|r| r.missing).sum(),
        errors: runs.iter().map(|r| r.errors).sum(),
    }
}

pub fn thousands(v: f64) -> String {
    let s = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push('\u{a0}');
        }
        out.push(c);
    }
    out
}

fn us(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else if v < 1000.0 {
        format!("{v:.0}")
    } else {
        thousands(v)
    }
}

fn signed(v: f64) -> String {
    if v < 0.0 { format!("−{}", us(-v)) } else { format!("+{}", us(v)) }
}

fn mib(b: f64) -> String {
    format!("{:.1}", b / (1 << 20) as f64)
}

fn joined<T>(v: &[T], f: impl Fn(&T) -> String) -> String {
    if v.is_empty() { "—".into() } else { v.iter().map(f).collect::<Vec<_>>().join(" / ") }
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

pub fn render(scenarios: &[Scenario], points: &[Point], info: &RunInfo) -> String {
    let cfg = &info.cfg;
    let mut md = String::new();
    let _ = writeln!(md, "## HTTP benchmark (`cargo bench --bench http`)\n");
    let _ = writeln!(
        md,
        "Loopback; GET with a {BODY}-byte response from a hyper backend. HTTP/1.1: {H1_CONNS} keep-alive \
         connections, never pipelined (open loop: due requests queue for a free connection). HTTP/2 \
         (prior knowledge): {H2_CONNS} connections, a stream per request (closed loop: {H2_STREAMS} \
         streams per connection). Open loop: {} s per point; closed loop: {} s; {} ms unrecorded \
         warm-up; median of {} rep(s), reps of all paths interleaved; nice {}. {} CPUs; load \
         average {} at start, {} at end; measuring took {:.0} s.",
        cfg.open_secs,
        cfg.closed_secs,
        cfg.warmup.as_millis(),
        cfg.reps,
        cfg.nice,
        info.cpus,
        info.load_start,
        info.load_end,
        info.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "Latency in µs, from each request's intended send time (open loop) or its send (closed loop). \
         *vs direct*: added p50 / added p99 (open loop), share of direct's req/s (closed loop), against \
         direct in the same client protocol. *CPU*: CPU seconds per 10 000 requests of the client-side \
         (A) / server-side (B) proxy. *gen. late*: how late the generator itself queued or sent (µs, \
         p99), part of the latency. Targets are shown, not asserted.\n"
    );
    let _ = writeln!(
        md,
        "| client | path | point | req/s | p50 | p99 | p99.9 | vs direct | CPU s/10k req (A / B) | errors | gen. late p99 | target |"
    );
    let _ = writeln!(md, "|---|---|---|--:|--:|--:|--:|---|---|--:|--:|---|");
    for proto in [Proto::H1, Proto::H2] {
        let group: Vec<&Scenario> = scenarios.iter().filter(|s| s.proto == proto).collect();
        let Some(direct) = group.iter().find(|s| s.key == "direct") else { continue };
        for (i, point) in points.iter().enumerate() {
            let d = med(&direct.runs[i]);
            let baselines: Vec<(&str, Med)> = group
                .iter()
                .filter(|s| s.is_baseline())
                .map(|s| (s.key, med(&s.runs[i])))
                .collect();
            for s in &group {
                let m = med(&s.runs[i]);
                let vs = if s.key == "direct" {
                    "—".to_string()
                } else {
                    match point.kind {
                        Kind::Open { .. } => {
                            format!("{} / {}", signed(m.p50 - d.p50), signed(m.p99 - d.p99))
                        }
                        Kind::Closed => format!("{:.0} %", 100.0 * m.rps / d.rps),
                    }
                };
                let target = if s.is_weft() {
                    targets(proto, point, &m, &d, &baselines)
                } else {
                    String::new()
                };
                let late = match point.kind {
                    Kind::Open { .. } => us(m.send_late_p99),
                    Kind::Closed => "—".into(),
                };
                let errors = if m.errors + m.missing == 0 {
                    "0".to_string()
                } else {
                    format!("{} err, {} lost", m.errors, m.missing)
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    proto.label(),
                    s.name,
                    point.label,
                    thousands(m.rps),
                    us(m.p50),
                    us(m.p99),
                    us(m.p999),
                    vs,
                    joined(&m.cpu, |c| format!("{c:.3}")),
                    errors,
                    late,
                    target
                );
            }
        }
    }

    // Memory.
    let rate_point = points
        .iter()
        .position(|p| matches!(p.kind, Kind::Open { rate } if rate == LATENCY_TARGET_RATE));
    let _ = writeln!(
        md,
        "\n| client | path | idle RSS MiB (A / B) | RSS at 2 000 req/s MiB (A / B) | peak RSS MiB (A / B) | target |"
    );
    let _ = writeln!(md, "|---|---|--:|--:|--:|---|");
    for s in scenarios.iter().filter(|s| s.pair.is_some()) {
        let at_rate = rate_point.map(|i| med(&s.runs[i]).rss).unwrap_or_default();
        let target = if s.is_weft() && !at_rate.is_empty() {
            format!("≤ 20 MiB {}", mark(at_rate.iter().all(|&r| r <= RSS_TARGET as f64)))
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            s.proto.label(),
            s.name,
            joined(&s.idle_rss, |&b| mib(b as f64)),
            joined(&at_rate, |&b| mib(b)),
            joined(&s.peak_rss, |&b| mib(b as f64)),
            target
        );
    }

    // The generator against h2load.
    if scenarios.iter().any(|s| s.h2load.is_some()) {
        let closed = points.iter().position(|p| matches!(p.kind, Kind::Closed));
        let _ = writeln!(
            md,
            "\n| client | path | h2load req/s | h2load mean µs | ours req/s (median) | ours / h2load |"
        );
        let _ = writeln!(md, "|---|---|--:|--:|--:|--:|");
        for s in scenarios {
            let ours = closed.map_or(f64::NAN, |i| med(&s.runs[i]).rps);
            let (rps, mean, ratio) = match &s.h2load {
                Some(Ok(r)) => {
                    let failed = if r.failed > 0 {
                        format!(" ({} of {} failed)", r.failed, r.failed + r.succeeded)
                    } else {
                        String::new()
                    };
                    (
                        format!("{}{failed}", thousands(r.rps)),
                        us(r.mean_us),
                        format!("{:.2}", ours / r.rps),
                    )
                }
                Some(Err(e)) => (format!("failed: {e}"), "—".into(), "—".into()),
                None => continue,
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} |",
                s.proto.label(),
                s.name,
                rps,
                mean,
                thousands(ours),
                ratio
            );
        }
    }

    let _ = writeln!(md);
    for (i, point) in points.iter().enumerate() {
        if let Kind::Closed = point.kind {
            let per: Vec<String> = scenarios
                .iter()
                .map(|s| {
                    let m = med(&s.runs[i]);
                    format!(
                        "{} {} {:.0} % / {:.0} %",
                        s.proto.label(),
                        s.name,
                        100.0 * m.gen_busy,
                        100.0 * m.backend_busy
                    )
                })
                .collect();
            let _ = writeln!(
                md,
                "- closed loop, share of a CPU used by the load thread / the backend thread: {}.",
                per.join(", ")
            );
        }
    }
    for s in scenarios.iter().filter(|s| s.is_weft()) {
        let _ = writeln!(
            md,
            "- {} {}: `request_total` A / B: {}; protocol from A to B (A's `tcp_open_total`): {}.",
            s.proto.label(),
            s.name,
            joined(&s.requests_counted, |n| thousands(*n as f64)),
            if s.between.is_empty() { "—".into() } else { s.between.join(", ") }
        );
    }
    for s in scenarios {
        if let Some(e) = &s.first_error {
            let _ = writeln!(md, "- {} {}: first failed request: {e}", s.proto.label(), s.name);
        }
    }
    for n in &info.notes {
        let _ = writeln!(md, "- {n}");
    }
    md
}

/// The target column of a weft row: issue 3's figures against direct and the baselines.
fn targets(proto: Proto, point: &Point, m: &Med, d: &Med, baselines: &[(&str, Med)]) -> String {
    let mut t = Vec::new();
    match point.kind {
        Kind::Open { rate } => {
            if proto == Proto::H1 && rate == LATENCY_TARGET_RATE {
                t.push(format!("+p50 ≤ 200 {}", mark(m.p50 - d.p50 <= ADDED_P50_TARGET)));
                t.push(format!("+p99 ≤ 600 {}", mark(m.p99 - d.p99 <= ADDED_P99_TARGET)));
                for (name, b) in baselines {
                    t.push(format!(
                        "≤ {name} p50 {} p99 {}",
                        mark(m.p50 <= b.p50),
                        mark(m.p99 <= b.p99)
                    ));
                }
            }
        }
        Kind::Closed => {
            if proto == Proto::H2 {
                t.push(format!("≥ 35 % of direct {}", mark(m.rps >= H2_THROUGHPUT_TARGET * d.rps)));
            }
        }
    }
    for (name, b) in baselines {
        let ok = m.cpu.iter().zip(&b.cpu).all(|(w, b)| w <= b);
        t.push(format!("CPU ≤ {name} {}", mark(ok)));
    }
    t.join(" · ")
}
