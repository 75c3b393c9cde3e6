//! The transport bench's report: medians over the reps, comparisons with direct and with
//! haproxy, the targets next to the figures, as Markdown.

use std::{fmt::Write as _, time::Duration};

use crate::{Config, Point, PointRun, Scenario, load::Kind};

/// Facts about the run printed with the tables.
#[derive(Debug)]
pub struct RunInfo {
    pub cfg: Config,
    pub cpus: usize,
    pub load_start: String,
    pub load_end: String,
    pub elapsed: Duration,
    pub binary: Vec<(String, Option<u64>)>,
    pub notes: Vec<String>,
}

const ADDED_P50_TARGET: f64 = 150.0;
const ADDED_P99_TARGET: f64 = 500.0;
const LATENCY_TARGET_RATE: u64 = 2000;
const THROUGHPUT_TARGET: f64 = 0.40;
const IDLE_RSS_TARGET: u64 = 8 << 20;
const IDLE_CONNS_RSS_TARGET: u64 = 32 << 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

/// Medians over the reps of one scenario at one point.
#[derive(Debug, Clone, Default)]
struct Med {
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    cpu: Vec<f64>,
    gen_busy: f64,
    echo_busy: f64,
    send_late_p99: f64,
    missing: u64,
}

fn med(runs: &[PointRun]) -> Med {
    let f = |g: fn(&PointRun) -> f64| median(runs.iter().map(g).collect());
    let procs = runs.first().map_or(0, |r| r.cpu_per_10k.len());
    Med {
        rps: f(|r| r.rps),
        p50: f(|r| r.p50),
        p99: f(|r| r.p99),
        p999: f(|r| r.p999),
        cpu: (0..procs).map(|i| median(runs.iter().map(|r| r.cpu_per_10k[i]).collect())).collect(),
        gen_busy: f(|r| r.gen_busy),
        echo_busy: f(|r| r.echo_busy),
        send_late_p99: f(|r| r.send_late_p99),
        missing: runs.iter().map(|r| r.missing).sum(),
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

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1 << 20) as f64)
}

fn pair_of<T>(v: &[T], f: impl Fn(&T) -> String) -> String {
    if v.is_empty() { "—".into() } else { v.iter().map(f).collect::<Vec<_>>().join(" / ") }
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

pub fn render(scenarios: &[Scenario], points: &[Point], info: &RunInfo) -> String {
    let cfg = &info.cfg;
    let mut md = String::new();
    let _ = writeln!(md, "## Transport benchmark (`cargo bench --bench transport`)\n");
    let _ = writeln!(
        md,
        "Loopback, {} connections, {}-byte requests and responses over opaque TCP. Open loop: {} s per \
         point; closed loop: {} s; {} ms unrecorded warm-up; median of {} rep(s), reps of all scenarios \
         interleaved; nice {}. {} CPUs; load average {} at start, {} at end; measuring took {:.0} s.",
        crate::load::CONNS,
        crate::load::FRAME,
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
         *vs direct*: added p50 / added p99 and the p50 ratio (open loop), share of direct's req/s \
         (closed loop). *CPU*: CPU seconds per 10 000 requests of the client-side (A) / server-side (B) \
         proxy. *gen. late p99*: how late the generator itself sent (µs, p99); it is part of the \
         latency, so a large one means the machine, not the proxy, was slow. Targets are shown, \
         not asserted.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | point | req/s | p50 | p99 | p99.9 | vs direct | CPU s/10k req (A / B) | gen. late p99 | target |"
    );
    let _ = writeln!(md, "|---|---|--:|--:|--:|--:|---|---|--:|---|");
    let direct = &scenarios[0];
    let haproxy = scenarios.iter().find(|s| s.key == "haproxy");
    for (i, point) in points.iter().enumerate() {
        let d = med(&direct.runs[i]);
        let h = haproxy.map(|s| med(&s.runs[i]));
        for s in scenarios {
            let m = med(&s.runs[i]);
            let vs = if s.key == "direct" {
                "—".to_string()
            } else {
                match point.kind {
                    Kind::Open { .. } => format!(
                        "{} / {} (×{:.1})",
                        signed(m.p50 - d.p50),
                        signed(m.p99 - d.p99),
                        m.p50 / d.p50
                    ),
                    Kind::Closed => format!("{:.0} %", 100.0 * m.rps / d.rps),
                }
            };
            let cpu = pair_of(&m.cpu, |c| format!("{c:.3}"));
            let target = if s.key.starts_with("weft") {
                targets(point, &m, &d, h.as_ref())
            } else {
                String::new()
            };
            let late = match point.kind {
                Kind::Open { .. } => us(m.send_late_p99),
                Kind::Closed => "—".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                s.name,
                point.label,
                thousands(m.rps),
                us(m.p50),
                us(m.p99),
                us(m.p999),
                vs,
                cpu,
                late,
                target
            );
        }
    }

    let _ = writeln!(
        md,
        "\n| scenario | idle RSS MiB (A / B) | peak RSS under load MiB (A / B) | RSS with {} idle conns MiB (A / B) | target |",
        thousands(cfg.idle_conns as f64)
    );
    let _ = writeln!(md, "|---|--:|--:|--:|---|");
    for s in scenarios.iter().filter(|s| s.pair.is_some()) {
        let target = if s.key.starts_with("weft") {
            let idle = s.idle_rss.iter().all(|&r| r <= IDLE_RSS_TARGET);
            let conns = s.idle_conns_rss.iter().all(|&r| r <= IDLE_CONNS_RSS_TARGET);
            format!(
                "idle ≤ 8 MiB {} · {} conns ≤ 32 MiB {}",
                mark(idle),
                thousands(cfg.idle_conns as f64),
                mark(conns)
            )
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            s.name,
            pair_of(&s.idle_rss, |&b| mib(b)),
            pair_of(&s.peak_rss, |&b| mib(b)),
            pair_of(&s.idle_conns_rss, |&b| mib(b)),
            target
        );
    }

    let _ = writeln!(md);
    let bin: Vec<String> = info
        .binary
        .iter()
        .map(|(name, size)| match size {
            Some(b) => format!("{name} {} MiB", mib(*b)),
            None => format!(
                "{name} not built (`RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --profile \
                 release-static -p weft-proxy --target x86_64-unknown-linux-gnu`)"
            ),
        })
        .collect();
    let _ = writeln!(md, "- weft-proxy binary: {}.", bin.join("; "));
    for (i, point) in points.iter().enumerate() {
        let per: Vec<String> = scenarios
            .iter()
            .map(|s| {
                let m = med(&s.runs[i]);
                format!("{} {:.0} % / {:.0} %", s.name, 100.0 * m.gen_busy, 100.0 * m.echo_busy)
            })
            .collect();
        if let Kind::Closed = point.kind {
            let _ = writeln!(
                md,
                "- closed loop, share of a CPU used by the load thread / the echo thread: {}.",
                per.join(", ")
            );
        }
        let missing: u64 = scenarios.iter().map(|s| med(&s.runs[i]).missing).sum();
        if missing > 0 {
            let _ = writeln!(md, "- {} responses never came at {}.", missing, point.label);
        }
    }
    for s in scenarios.iter().filter(|s| !s.protocols.is_empty()) {
        let _ = writeln!(
            md,
            "- {}: server-side proxy's `tcp_open_total` protocols: {}.",
            s.name,
            s.protocols.join(", ")
        );
    }
    for n in &info.notes {
        let _ = writeln!(md, "- {n}");
    }
    md
}

/// The target column of a weft row.
fn targets(point: &Point, m: &Med, d: &Med, h: Option<&Med>) -> String {
    let mut t = Vec::new();
    match point.kind {
        Kind::Open { rate } => {
            if rate == LATENCY_TARGET_RATE {
                t.push(format!("+p50 ≤ 150 {}", mark(m.p50 - d.p50 <= ADDED_P50_TARGET)));
                t.push(format!("+p99 ≤ 500 {}", mark(m.p99 - d.p99 <= ADDED_P99_TARGET)));
            }
            if let Some(h) = h {
                t.push(format!(
                    "≤ haproxy: p50 {} p99 {}",
                    mark(m.p50 <= h.p50),
                    mark(m.p99 <= h.p99)
                ));
            }
        }
        Kind::Closed => {
            t.push(format!("≥ 40 % of direct {}", mark(m.rps >= THROUGHPUT_TARGET * d.rps)));
        }
    }
    if let Some(h) = h {
        let ok = m.cpu.iter().zip(&h.cpu).all(|(w, h)| w <= h);
        t.push(format!("CPU ≤ haproxy {}", mark(ok)));
    }
    t.join(" · ")
}
