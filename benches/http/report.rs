//! The HTTP bench's report: medians over the reps, comparisons with direct and with the
//! baseline pairs, the targets next to the figures, as Markdown.

use std::fmt::Write as _;

use crate::{
    Config, Scenario,
    http_load::{H1_CONNS, H2_CONNS, H2_STREAMS, Proto},
    load::Kind,
    measure::{Med, Point, at_rate, closed, med},
    setup::Facts,
    table::{busy, errors, figures, joined, late, mark, measured, mib, thousands, us},
};

/// Issue 3's figures to reach.
const LATENCY_TARGET_RATE: u64 = 2000;
const ADDED_P50_TARGET: f64 = 200.0;
const ADDED_P99_TARGET: f64 = 600.0;
const H2_THROUGHPUT_TARGET: f64 = 0.35;
const RSS_TARGET: u64 = 20 << 20;

pub fn render(scenarios: &[Scenario], points: &[Point], cfg: &Config, facts: &Facts) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## HTTP benchmark (`cargo bench --bench http`)\n");
    let _ = writeln!(
        md,
        "Loopback; {} from a hyper backend. HTTP/1.1: {H1_CONNS} keep-alive \
         connections, never pipelined (open loop: due requests queue for a free connection). HTTP/2 \
         (prior knowledge): {H2_CONNS} connections, a stream per request (closed loop: {H2_STREAMS} \
         streams per connection). {}",
        cfg.bodies.describe(),
        measured(&cfg.knobs, facts, "closed loop", "paths")
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
        let group: Vec<&Scenario> = scenarios.iter().filter(|s| s.extra.proto == proto).collect();
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
                let target = if s.is_weft() {
                    targets(proto, point, &m, &d, &baselines)
                } else {
                    String::new()
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    proto.label(),
                    s.name,
                    point.label,
                    figures(s.key, point.kind, &m, &d, false),
                    errors(&m),
                    late(point.kind, &m),
                    target
                );
            }
        }
    }

    // Memory.
    let rate_point = at_rate(points, LATENCY_TARGET_RATE);
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
            s.extra.proto.label(),
            s.name,
            joined(&s.idle_rss, |&b| mib(b as f64)),
            joined(&at_rate, |&b| mib(b)),
            joined(&s.peak_rss, |&b| mib(b as f64)),
            target
        );
    }

    // The generator against h2load.
    if scenarios.iter().any(|s| s.extra.h2load.is_some()) {
        let closed = closed(points);
        let _ = writeln!(
            md,
            "\n| client | path | h2load req/s | h2load mean µs | ours req/s (median) | ours / h2load |"
        );
        let _ = writeln!(md, "|---|---|--:|--:|--:|--:|");
        for s in scenarios {
            let ours = closed.map_or(f64::NAN, |i| med(&s.runs[i]).rps);
            let (rps, mean, ratio) = match &s.extra.h2load {
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
                s.extra.proto.label(),
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
                .map(|s| busy(&format!("{} {}", s.extra.proto.label(), s.name), &med(&s.runs[i])))
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
            s.extra.proto.label(),
            s.name,
            joined(&s.extra.requests_counted, |n| thousands(*n as f64)),
            if s.extra.between.is_empty() { "—".into() } else { s.extra.between.join(", ") }
        );
    }
    for s in scenarios {
        if let Some(e) = &s.first_error {
            let _ =
                writeln!(md, "- {} {}: first failed request: {e}", s.extra.proto.label(), s.name);
        }
    }
    for n in &facts.notes {
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
