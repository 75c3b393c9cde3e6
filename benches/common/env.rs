//! The benches' env knobs: strict parsing for the load benches (transport, HTTP, mTLS: a value
//! that does not parse stops the run) and the knobs they share (`Knobs`), lenient parsing for
//! the others (a value that does not parse is the default).

use std::{str::FromStr, time::Duration};

use anyhow::{Context as _, bail};

/// `name`'s value, trimmed, parsed as `T`; `None` when unset or blank.
pub fn var<T: FromStr>(name: &str) -> anyhow::Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse() {
            Ok(v) => Ok(Some(v)),
            Err(_) => bail!("{name}={v:?} is not a valid value"),
        },
        _ => Ok(None),
    }
}

/// `name`'s comma-separated items, each trimmed; `None` when unset or blank.
pub fn list(name: &str) -> anyhow::Result<Option<Vec<String>>> {
    Ok(var::<String>(name)?.map(|v| v.split(',').map(|s| s.trim().to_string()).collect()))
}

/// An on/off knob: `0` is off, any other value on, unset or blank is `default`.
pub fn switch(name: &str, default: bool) -> anyhow::Result<bool> {
    Ok(var::<String>(name)?.map_or(default, |v| v != "0"))
}

/// `name`'s value parsed as `T` (untrimmed), or `default` when unset or not a `T`: the knobs
/// of the identity, injector and destination benches.
pub fn var_or<T: FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The knobs every load bench has (see each bench's module doc).
#[derive(Debug, Clone)]
pub struct Knobs {
    /// `WEFT_BENCH_SECS`: measured seconds of an open-loop point.
    pub open_secs: f64,
    /// Closed-loop points measure half of it: a mean throughput settles faster than a tail
    /// latency.
    pub closed_secs: f64,
    /// `WEFT_BENCH_WARMUP_MS`: unrecorded warm-up before each point.
    pub warmup: Duration,
    /// `WEFT_BENCH_REPS`: repetitions of every point.
    pub reps: usize,
    /// `WEFT_BENCH_RATES`: open-loop rates in req/s.
    pub rates: Vec<u64>,
    /// `WEFT_BENCH_ONLY`: the paths to measure besides direct; all when `None`.
    pub only: Option<Vec<String>>,
    /// `WEFT_BENCH_NICE`: nice value of the bench and everything it starts.
    pub nice: i32,
}

impl Knobs {
    /// `WEFT_BENCH_QUICK=1` (2 s per point, 1 rep) and the knobs above, which win over it.
    pub fn from_env() -> anyhow::Result<Knobs> {
        let quick = switch("WEFT_BENCH_QUICK", false)?;
        let open_secs: f64 = var("WEFT_BENCH_SECS")?.unwrap_or(if quick { 2.0 } else { 10.0 });
        if open_secs.is_nan() || open_secs <= 0.0 {
            bail!("WEFT_BENCH_SECS must be positive");
        }
        let rates = match list("WEFT_BENCH_RATES")? {
            None => vec![200, 2000],
            Some(v) => v
                .iter()
                .map(|r| r.parse::<u64>().ok().filter(|&r| r > 0))
                .collect::<Option<Vec<_>>>()
                .context("WEFT_BENCH_RATES must be a comma-separated list of positive req/s")?,
        };
        Ok(Knobs {
            open_secs,
            closed_secs: open_secs / 2.0,
            warmup: Duration::from_millis(var("WEFT_BENCH_WARMUP_MS")?.unwrap_or(500)),
            reps: var::<usize>("WEFT_BENCH_REPS")?.unwrap_or(if quick { 1 } else { 3 }).max(1),
            rates,
            only: list("WEFT_BENCH_ONLY")?,
            nice: var("WEFT_BENCH_NICE")?.unwrap_or(-10),
        })
    }

    /// Whether `WEFT_BENCH_ONLY` leaves the path `key` in.
    pub fn wants(&self, key: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|o| o == key))
    }
}
