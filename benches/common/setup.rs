//! What a load bench does around its measurement: find the target directory, get the
//! `weft-proxy` to measure (`WEFT_BENCH_PROXY_BIN`, or a release build) and, if asked, note
//! which one it is, make a scratch directory, lower its priority (`WEFT_BENCH_NICE`), note
//! the machine's load at start and at end, and write its report to `target/bench-<name>.md`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A load bench's run, from `Bench::start` to its report.
#[derive(Debug)]
pub struct Bench {
    /// `transport`, `http`, `mtls`: names the scratch directory and the report.
    bench: &'static str,
    pub target_dir: PathBuf,
    /// The `weft-proxy` binary to measure.
    pub proxy: PathBuf,
    /// Configs, PKI and process logs; removed when this is dropped.
    scratch: ScratchDir,
    /// Notes for the report, gathered while running.
    pub notes: Vec<String>,
    started: Instant,
    load_start: String,
}

/// Facts about a run that its report prints.
#[derive(Debug)]
pub struct Facts {
    pub cpus: usize,
    pub load_start: String,
    pub load_end: String,
    pub elapsed: Duration,
    pub notes: Vec<String>,
}

impl Bench {
    /// Gets the proxy (a build can take minutes; with `note_source`, the first note says
    /// which proxy is measured), then starts the clock, makes the scratch directory and sets
    /// the nice value: after the build, before any thread or process of the measurement is
    /// started, so that they inherit it.
    pub fn start(bench: &'static str, nice: i32, note_source: bool) -> anyhow::Result<Bench> {
        let target_dir = target_dir()?;
        let mut notes = Vec::new();
        let proxy = match std::env::var_os("WEFT_BENCH_PROXY_BIN") {
            Some(bin) => {
                if note_source {
                    notes.push(format!(
                        "weft-proxy: {} (`WEFT_BENCH_PROXY_BIN`).",
                        bin.to_string_lossy()
                    ));
                }
                PathBuf::from(bin)
            }
            None => {
                let bin = build_proxy(&target_dir)?;
                if note_source {
                    notes = source_state();
                }
                bin
            }
        };
        let started = Instant::now();
        let scratch = ScratchDir(
            std::env::temp_dir().join(format!("weft-bench-{bench}-{}", std::process::id())),
        );
        std::fs::create_dir_all(&scratch.0)?;
        notes.extend(renice(nice));
        Ok(Bench { bench, target_dir, proxy, scratch, notes, started, load_start: loadavg() })
    }

    /// The scratch directory.
    pub fn dir(&self) -> &Path {
        &self.scratch.0
    }

    /// The run's facts, now that the measuring is done; takes the notes.
    pub fn facts(&mut self) -> Facts {
        Facts {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_start: self.load_start.clone(),
            load_end: loadavg(),
            elapsed: self.started.elapsed(),
            notes: std::mem::take(&mut self.notes),
        }
    }

    /// Prints the report and writes it to `<target>/bench-<name>.md`.
    pub fn write_report(&self, md: &str) -> anyhow::Result<()> {
        println!("\n{md}");
        let out = self.target_dir.join(format!("bench-{}.md", self.bench));
        std::fs::write(&out, md).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("written to {}", out.display());
        Ok(())
    }
}

/// Removes the bench's scratch directory when dropped.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `<target>` from the bench's own path, `<target>/release/deps/<bench>-<hash>`.
fn target_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .context("the bench binary is not under <target>/<profile>/deps")
}

fn build_proxy(target: &Path) -> anyhow::Result<PathBuf> {
    eprintln!("building weft-proxy (release)…");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "weft-proxy", "--bin", "weft-proxy"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building weft-proxy failed ({status})");
    }
    let bin = target.join("release").join("weft-proxy");
    if !bin.exists() {
        bail!("{} is missing after the build", bin.display());
    }
    Ok(bin)
}

/// Notes on what was measured: the commit, and uncommitted changes in the crates the
/// binaries are built from (someone may be editing the proxy while this runs).
fn source_state() -> Vec<String> {
    let out = Command::new("git")
        .args(["status", "--porcelain", "--", "proxy", "identity", "destination", "src"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    match out {
        Ok(o) if o.status.success() => {
            let dirty: Vec<String> = String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| format!("`{}`", l.get(3..).unwrap_or(l)))
                .collect();
            if dirty.is_empty() {
                vec![format!("binaries built from commit {commit}, no uncommitted changes.")]
            } else {
                vec![format!(
                    "binaries built from commit {commit} plus uncommitted changes in {}.",
                    dirty.join(", ")
                )]
            }
        }
        _ => Vec::new(),
    }
}

/// Sets this process's nice value (0 leaves it); a note for the report when it cannot.
fn renice(nice: i32) -> Option<String> {
    if nice == 0 {
        return None;
    }
    // SAFETY: setpriority of the calling thread, no pointers.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } == 0 {
        return None;
    }
    let e = std::io::Error::last_os_error();
    eprintln!("note: cannot set nice {nice}: {e}; running at the default priority");
    Some(format!("could not run at nice {nice} ({e}): other work on the machine weighs more."))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
