//! What the load benches measure on a path: the points of a run (each open-loop rate, then
//! the closed loop), one run of a point (the load's result, plus the proxies' CPU seconds and
//! the load and backend threads' CPU share from /proc inside the window, and the proxies' RSS
//! at its end), and the medians over the reps.

use std::{net::SocketAddr, time::Duration};

use crate::{
    env::Knobs,
    load::{self, Kind, LoadResult, Started},
    procfs,
    procs::{Pair, Proc},
    table::thousands,
};

/// One load point: a rate or the closed loop.
#[derive(Debug, Clone)]
pub struct Point {
    pub label: String,
    pub kind: Kind,
    pub measure: Duration,
}

/// The run's points: every rate of `WEFT_BENCH_RATES`, then the closed loop.
pub fn points(knobs: &Knobs) -> Vec<Point> {
    let mut points: Vec<Point> = knobs
        .rates
        .iter()
        .map(|&rate| Point {
            label: format!("{} req/s", thousands(rate as f64)),
            kind: Kind::Open { rate },
            measure: Duration::from_secs_f64(knobs.open_secs),
        })
        .collect();
    points.push(Point {
        label: "max (closed loop)".into(),
        kind: Kind::Closed,
        measure: Duration::from_secs_f64(knobs.closed_secs),
    });
    points
}

/// The index of the open-loop point at `rate`.
pub fn at_rate(points: &[Point], rate: u64) -> Option<usize> {
    points.iter().position(|p| matches!(p.kind, Kind::Open { rate: r } if r == rate))
}

/// `items` from the one at `by` (modulo their number) around to the one before it: each
/// rep and point measures the paths in another order, so that no path always runs right
/// after the same one (after direct, say) and takes whatever that leaves behind.
pub fn rotated<T>(items: &mut [T], by: usize) -> impl Iterator<Item = &mut T> {
    let at = by % items.len().max(1);
    let (before, from) = items.split_at_mut(at);
    from.iter_mut().chain(before.iter_mut())
}

/// The index of the closed-loop point.
pub fn closed(points: &[Point]) -> Option<usize> {
    points.iter().position(|p| matches!(p.kind, Kind::Closed))
}

/// What one run of one point measured.
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
    /// Share of the window the load thread and the backend (or echo) thread were on a CPU.
    pub gen_busy: f64,
    pub backend_busy: f64,
    /// Open loop: p99 of how late the generator queued or sent (µs).
    pub send_late_p99: f64,
    pub missing: u64,
    pub errors: u64,
}

impl PointRun {
    /// For the progress lines: p50, p99 and p99.9.
    pub fn latencies(&self) -> String {
        format!("p50 {:>7.1} µs  p99 {:>8.1} µs  p99.9 {:>8.1} µs", self.p50, self.p99, self.p999)
    }

    /// For the progress lines: the errors, if any.
    pub fn errors_note(&self) -> String {
        if self.errors > 0 { format!("  {} errors", self.errors) } else { String::new() }
    }
}

/// A way from the client to the backend, direct or through a pair of proxies, and what was
/// measured on it; `X` is what a bench measures on it besides.
#[derive(Debug)]
pub struct Scenario<X> {
    pub key: &'static str,
    pub name: &'static str,
    pub entry: SocketAddr,
    pub pair: Option<Pair>,
    /// Per point, per rep (as `measure` records them).
    pub runs: Vec<Vec<PointRun>>,
    pub idle_rss: Vec<u64>,
    pub peak_rss: Vec<u64>,
    pub first_error: Option<String>,
    pub extra: X,
}

impl<X> Scenario<X> {
    /// The client straight to `backend`.
    pub fn direct(key: &'static str, name: &'static str, backend: SocketAddr, extra: X) -> Self {
        Self::new(key, name, backend, None, extra)
    }

    /// The client to `pair`'s entry.
    pub fn through(key: &'static str, name: &'static str, pair: Pair, extra: X) -> Self {
        Self::new(key, name, pair.entry, Some(pair), extra)
    }

    fn new(
        key: &'static str,
        name: &'static str,
        entry: SocketAddr,
        pair: Option<Pair>,
        extra: X,
    ) -> Self {
        Scenario {
            key,
            name,
            entry,
            pair,
            runs: Vec::new(),
            idle_rss: Vec::new(),
            peak_rss: Vec::new(),
            first_error: None,
            extra,
        }
    }

    pub fn procs(&self) -> &[Proc] {
        self.pair.as_ref().map_or(&[], |p| &p.procs[..])
    }

    /// Measures one run of point `point`: starts its load at the entry with `start`,
    /// samples the proxies and the load and backend threads at the window's start and end,
    /// the RSS at its end, then joins the load. Records the run and returns it.
    pub fn measure(
        &mut self,
        point: usize,
        backend_tid: i32,
        start: impl FnOnce(SocketAddr) -> anyhow::Result<Started<LoadResult>>,
    ) -> anyhow::Result<PointRun> {
        let (window, load) = start(self.entry)?;
        let sample = |s: &Self| {
            let cpu: Vec<f64> = s.procs().iter().map(Proc::cpu_seconds).collect();
            (cpu, procfs::thread_cpu_seconds(window.tid), procfs::thread_cpu_seconds(backend_tid))
        };
        load::sleep_until_ns(window.start_ns);
        let (cpu0, gen0, back0) = sample(self);
        load::sleep_until_ns(window.end_ns);
        let (cpu1, gen1, back1) = sample(self);
        let rss = self.procs().iter().map(Proc::rss_bytes).collect();
        let result = load::join(load)?;
        let t = &result.tally;
        if self.first_error.is_none() {
            self.first_error = t.first_error.clone();
        }
        let secs = (window.end_ns - window.start_ns) as f64 / 1e9;
        let n = t.completed.max(1) as f64;
        let h = &t.latency;
        let run = PointRun {
            rps: t.completed as f64 / secs,
            p50: h.value_at_quantile(0.5) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            p999: h.value_at_quantile(0.999) as f64,
            cpu_per_10k: cpu0.iter().zip(&cpu1).map(|(a, b)| (b - a) / n * 10_000.0).collect(),
            rss,
            gen_busy: (gen1 - gen0) / secs,
            backend_busy: (back1 - back0) / secs,
            send_late_p99: result.send_lateness.value_at_quantile(0.99) as f64,
            missing: result.missing,
            errors: t.errors,
        };
        if self.runs.len() <= point {
            self.runs.resize(point + 1, Vec::new());
        }
        self.runs[point].push(run.clone());
        Ok(run)
    }
}

/// The median of the values that are not NaN; NaN when none is.
pub fn median(mut v: Vec<f64>) -> f64 {
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
pub struct Med {
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub cpu: Vec<f64>,
    pub rss: Vec<f64>,
    pub gen_busy: f64,
    pub backend_busy: f64,
    pub send_late_p99: f64,
    /// Sums over the reps.
    pub missing: u64,
    pub errors: u64,
}

pub fn med(runs: &[PointRun]) -> Med {
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
