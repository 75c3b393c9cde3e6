//! The load benches' Markdown: numbers as their tables print them (thousands apart by a
//! no-break space, µs, MiB, signed differences), a target's ✓ / ✗, the cells every results
//! table has, and the sentence on how the run was measured.

use crate::{env::Knobs, load::Kind, measure::Med, setup::Facts};

/// Whole, with a no-break space between thousands; "—" for NaN.
pub fn thousands(v: f64) -> String {
    if v.is_nan() {
        return "—".into();
    }
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

/// Microseconds, whole.
pub fn us(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else if v < 1000.0 {
        format!("{v:.0}")
    } else {
        thousands(v)
    }
}

/// A difference in µs, with its sign (a true minus).
pub fn signed(v: f64) -> String {
    if v < 0.0 { format!("−{}", us(-v)) } else { format!("+{}", us(v)) }
}

/// Bytes in MiB, one decimal.
pub fn mib(b: f64) -> String {
    format!("{:.1}", b / (1 << 20) as f64)
}

/// One figure per proxy, `A / B`; "—" for none.
pub fn joined<T>(v: &[T], f: impl Fn(&T) -> String) -> String {
    if v.is_empty() { "—".into() } else { v.iter().map(f).collect::<Vec<_>>().join(" / ") }
}

/// A target met or not.
pub fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗" }
}

/// The cells every results table has, `m` against direct's `d` at a point of `kind`: req/s,
/// p50, p99, p99.9 (µs), *vs direct* (see `vs_direct`) and CPU s/10k req (A / B).
pub fn figures(key: &str, kind: Kind, m: &Med, d: &Med, ratio: bool) -> String {
    [
        thousands(m.rps),
        us(m.p50),
        us(m.p99),
        us(m.p999),
        vs_direct(key, kind, m, d, ratio),
        joined(&m.cpu, |c| format!("{c:.3}")),
    ]
    .join(" | ")
}

/// The *vs direct* cell of `m` against direct's `d`: added p50 / added p99 at a rate (with
/// `ratio`, the p50 ratio too), the share of direct's req/s in the closed loop; "—" on direct.
pub fn vs_direct(key: &str, kind: Kind, m: &Med, d: &Med, ratio: bool) -> String {
    if key == "direct" {
        return "—".to_string();
    }
    match kind {
        Kind::Open { .. } => {
            let added = format!("{} / {}", signed(m.p50 - d.p50), signed(m.p99 - d.p99));
            if ratio { format!("{added} (×{:.1})", m.p50 / d.p50) } else { added }
        }
        Kind::Closed => format!("{:.0} %", 100.0 * m.rps / d.rps),
    }
}

/// The *gen. late p99* cell: how late the generator was at a rate; "—" in the closed loop.
pub fn late(kind: Kind, m: &Med) -> String {
    match kind {
        Kind::Open { .. } => us(m.send_late_p99),
        Kind::Closed => "—".into(),
    }
}

/// The *errors* cell: failed requests and, at a rate, responses that never came.
pub fn errors(m: &Med) -> String {
    if m.errors + m.missing == 0 {
        "0".to_string()
    } else {
        format!("{} err, {} lost", m.errors, m.missing)
    }
}

/// How the run was measured: "Open loop: … s per point; `closed`: … s; … measuring took … s."
/// (`paths`: what the reps of all were interleaved of).
pub fn measured(k: &Knobs, f: &Facts, closed: &str, paths: &str) -> String {
    let wakeup = f.wakeup.map_or(String::new(), |w| {
        format!(
            " A wakeup round trip between two threads (pipe ping-pong) costs one of them \
             {:.1} µs of CPU across CPUs, {:.1} µs on one CPU.",
            w.cross_cpu_us, w.same_cpu_us
        )
    });
    format!(
        "Open loop: {} s per point; {closed}: {} s; {} ms unrecorded warm-up; median of {} \
         rep(s), reps of all {paths} interleaved, in an order that rotates; nice {}. {} CPUs; \
         load average {} at start, {} at end; measuring took {:.0} s.{wakeup}",
        k.open_secs,
        k.closed_secs,
        k.warmup.as_millis(),
        k.reps,
        k.nice,
        f.cpus,
        f.load_start,
        f.load_end,
        f.elapsed.as_secs_f64()
    )
}

/// The closed loop's CPU share of the load thread / the backend thread on one path.
pub fn busy(name: &str, m: &Med) -> String {
    format!("{name} {:.0} % / {:.0} %", 100.0 * m.gen_busy, 100.0 * m.backend_busy)
}
