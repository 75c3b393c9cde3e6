//! The transport bench's report: medians over the reps, comparisons with direct and with
//! haproxy, the targets next to the figures, as Markdown.

use std::fmt::Write as _;

use crate::{
    Config, Scenario,
    load::Kind,
    measure::{Med, Point, med},
    setup::Facts,
    table::{busy, figures, joined, late, mark, measured, mib, thousands},
};

const ADDED_P50_TARGET: f64 = 150.0;
const ADDED_P99_TARGET: f64 = 500.0;
const LATENCY_TARGET_RATE: u64 = 2000;
const THROUGHPUT_TARGET: f64 = 0.40;
const IDLE_RSS_TARGET: u64 = 8 << 20;
const IDLE_CONNS_RSS_TARGET: u64 = 32 << 20;

/// Sizes of the `weft-proxy` binaries, by build.
pub type Binaries = [(String, Option<u64>)];

pub fn render(
    scenarios: &[Scenario],
    points: &[Point],
    cfg: &Config,
    facts: &Facts,
    binary: &Binaries,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Transport benchmark (`cargo bench --bench transport`)\n");
    let _ = writeln!(
        md,
        "Loopback, {} connections, {}-byte requests and responses over opaque TCP. {}",
        crate::load::CONNS,
        crate::load::FRAME,
        measured(&cfg.knobs, facts, "closed loop", "scenarios")
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
            let target = if s.key.starts_with("weft") {
                targets(point, &m, &d, h.as_ref())
            } else {
                String::new()
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                s.name,
                point.label,
                figures(s.key, point.kind, &m, &d, true),
                late(point.kind, &m),
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
    let in_mib = |b: &u64| mib(*b as f64);
    for s in scenarios.iter().filter(|s| s.pair.is_some()) {
        let target = if s.key.starts_with("weft") {
            let idle = s.idle_rss.iter().all(|&r| r <= IDLE_RSS_TARGET);
            let conns = s.extra.idle_conns_rss.iter().all(|&r| r <= IDLE_CONNS_RSS_TARGET);
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
            joined(&s.idle_rss, in_mib),
            joined(&s.peak_rss, in_mib),
            joined(&s.extra.idle_conns_rss, in_mib),
            target
        );
    }

    let _ = writeln!(md);
    let bin: Vec<String> = binary
        .iter()
        .map(|(name, size)| match size {
            Some(b) => format!("{name} {} MiB", in_mib(b)),
            None => {
                format!("{name} not built (README, \"The static proxy binary\", gives the command)")
            }
        })
        .collect();
    let _ = writeln!(md, "- weft-proxy binary: {}.", bin.join("; "));
    for (i, point) in points.iter().enumerate() {
        let per: Vec<String> = scenarios.iter().map(|s| busy(s.name, &med(&s.runs[i]))).collect();
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
    for s in scenarios.iter().filter(|s| !s.extra.protocols.is_empty()) {
        let _ = writeln!(
            md,
            "- {}: server-side proxy's `tcp_open_total` protocols: {}.",
            s.name,
            s.extra.protocols.join(", ")
        );
    }
    for n in &facts.notes {
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
