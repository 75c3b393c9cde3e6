//! The cross-check of the generator: `h2load` (nghttp2) at max throughput with the
//! closed loop's connections and concurrency, one thread like our client.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::http_load::{H1_CONNS, H2_CONNS, H2_STREAMS, Proto};

/// What one h2load run reported.
#[derive(Debug, Clone)]
pub struct Run {
    pub rps: f64,
    pub succeeded: u64,
    pub failed: u64,
    /// Mean time per request (µs).
    pub mean_us: f64,
}

pub fn installed() -> bool {
    crate::procs::installed("h2load", "--version")
}

/// Runs h2load against `entry`: GETs, or POSTs of the bytes of `data`.
pub fn run(
    entry: SocketAddr,
    proto: Proto,
    data: Option<&Path>,
    warmup: Duration,
    secs: f64,
) -> anyhow::Result<Run> {
    let (conns, streams) = match proto {
        Proto::H1 => (H1_CONNS, 1),
        Proto::H2 => (H2_CONNS, H2_STREAMS),
    };
    let mut cmd = Command::new("h2load");
    cmd.args(["-t", "1", "-c", &conns.to_string(), "-m", &streams.to_string()])
        .arg("-D")
        .arg(format!("{}ms", (secs * 1000.0) as u64))
        .arg("--warm-up-time")
        .arg(format!("{}ms", warmup.as_millis().max(1)));
    if proto == Proto::H1 {
        cmd.arg("--h1");
    }
    if let Some(data) = data {
        cmd.arg("-d").arg(data);
    }
    cmd.arg(format!("http://{entry}/")).stdin(Stdio::null()).stderr(Stdio::null());
    let out = cmd.stdout(Stdio::piped()).spawn().context("starting h2load")?;
    // h2load can hang after its measurement when the server closes connections: bound it.
    let limit = Duration::from_secs_f64(secs) + warmup + Duration::from_secs(10);
    let started = Instant::now();
    let mut child = out;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("h2load did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().context("reading h2load's output")?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse(&text).with_context(|| format!("h2load's output:\n{text}"))
}

fn parse(text: &str) -> anyhow::Result<Run> {
    let line = |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix));
    // "finished in 5.00s, 12345.67 req/s, 1.23MB/s"
    let rps = line("finished in ")
        .and_then(|l| l.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok())
        .context("no `finished in` line")?;
    // "requests: 100 total, 100 started, 100 done, 99 succeeded, 1 failed, ..."
    let requests = line("requests:").context("no `requests:` line")?;
    let count = |what: &str| {
        requests.split(", ").find_map(|f| f.trim().strip_suffix(what)?.trim().parse().ok())
    };
    // "time for request:    96us     12.50ms    345us    123us    90.00%"
    let mean_us = line("time for request:")
        .and_then(|l| l.split_whitespace().nth(2).and_then(micros))
        .unwrap_or(f64::NAN);
    Ok(Run {
        rps,
        succeeded: count(" succeeded").unwrap_or(0),
        failed: count(" failed").unwrap_or(0),
        mean_us,
    })
}

fn micros(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else {
        (v.strip_suffix('s')?, 1e6)
    };
    Some(num.parse::<f64>().ok()? * scale)
}
