//! What a load bench does around its measurement: find the target directory, get the
//! `weft-proxy` to measure (`WEFT_BENCH_PROXY_BIN`, or the shipped static build) and, if
//! asked, note which one it is, make a scratch directory, lower its priority
//! (`WEFT_BENCH_NICE`), note the machine's load at start and at end, and write its report
//! to `target/bench-<name>.md`.

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
    wakeup: Option<WakeupCost>,
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
    /// What waking another thread costs here: see [`WakeupCost`].
    pub wakeup: Option<WakeupCost>,
}

impl Bench {
    /// `WEFT_BENCH_BASE_BIN`: a second `weft-proxy` to measure in the same run as the path
    /// `path`, noted with what it says it was built from.
    pub fn base_proxy(&mut self, path: &str) -> anyhow::Result<Option<PathBuf>> {
        let Some(base) = std::env::var_os("WEFT_BENCH_BASE_BIN").map(PathBuf::from) else {
            return Ok(None);
        };
        let version = Command::new(&base)
            .arg("--version")
            .output()
            .with_context(|| format!("WEFT_BENCH_BASE_BIN: running {}", base.display()))?;
        let version = String::from_utf8_lossy(&version.stdout);
        self.notes.push(format!("{path}: {} ({}).", base.display(), version.trim()));
        Ok(Some(base))
    }

    /// Gets the proxy (a build can take minutes; with `note_source`, the first note says
    /// which proxy is measured; a given binary's provenance is always noted), then starts
    /// the clock, makes the scratch directory and sets the nice value: after the build,
    /// before any thread or process of the measurement is started, so that they inherit it.
    pub fn start(bench: &'static str, nice: i32, note_source: bool) -> anyhow::Result<Bench> {
        let target_dir = target_dir()?;
        let mut notes = Vec::new();
        let proxy = match std::env::var_os("WEFT_BENCH_PROXY_BIN") {
            Some(bin) => {
                let bin = PathBuf::from(bin);
                if note_source {
                    notes.push(format!("weft-proxy: {} (`WEFT_BENCH_PROXY_BIN`).", bin.display()));
                }
                // Every report says whether a given binary is this checkout's.
                notes.extend(provenance(&bin));
                bin
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
        let wakeup = WakeupCost::measure();
        let load_start = loadavg();
        Ok(Bench { bench, target_dir, proxy, scratch, notes, started, load_start, wakeup })
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
            wakeup: self.wakeup,
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

/// The target triple the shipped static binary is built for (README, "Static binary").
const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

/// The profile the shipped proxy is optimized with (README, "The static proxy binary";
/// `scripts/pgo-train` regenerates it), relative to the checkout.
const PGO_PROFILE: &str = "proxy/pgo/weft-proxy.profdata";

/// Builds the binary users run: the `release-static` profile (fat LTO, one codegen unit)
/// with `crt-static`, optimized with the committed PGO profile, as the README builds it.
/// Fat LTO makes it some 8 % cheaper per request than a plain `--release` build, and the
/// profile a further 20–30 %, so measuring either of those would understate the proxy.
fn build_proxy(target: &Path) -> anyhow::Result<PathBuf> {
    eprintln!("building weft-proxy (release-static, as shipped; fat LTO takes a few minutes)…");
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join(PGO_PROFILE);
    if !profile.exists() {
        bail!("{} is missing: the shipped proxy is built with it", profile.display());
    }
    // The README's RUSTFLAGS, one flag per 0x1f-separated field (the path may hold
    // spaces), so that a build made by hand from the README is the one measured, and is
    // not rebuilt.
    let flags = format!(
        "-C\u{1f}target-feature=+crt-static\u{1f}-C\u{1f}profile-use={}",
        profile.display()
    );
    let status = Command::new(env!("CARGO"))
        .args(["build", "--profile", "release-static", "--target", STATIC_TARGET])
        .args(["-p", "weft-proxy", "--bin", "weft-proxy"])
        .env_remove("RUSTFLAGS")
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        // As the README's release build: `proxy_build_info` names the commit.
        .env("WEFT_BUILD_GIT_SHA", checkout_version())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building weft-proxy failed ({status})");
    }
    let bin = target.join(STATIC_TARGET).join("release-static").join("weft-proxy");
    if !bin.exists() {
        bail!("{} is missing after the build", bin.display());
    }
    Ok(bin)
}

/// `git ARGS` in the checkout: its standard output, if it succeeded.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output();
    out.ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into())
}

/// The checkout as a build names it (`WEFT_BUILD_GIT_SHA`, README "The static proxy
/// binary"): the commit, `-dirty` with uncommitted changes; `unknown` outside git.
fn checkout_version() -> String {
    git(&["describe", "--always", "--dirty", "--abbrev=12"])
        .map_or_else(|| "unknown".into(), |v| v.trim().to_string())
}

/// What a given proxy binary was built from (its `--version`), against the checkout: a
/// binary left over from another build must not pass for this checkout's.
fn provenance(bin: &Path) -> Vec<String> {
    let version = Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let built = version.split_once("(git ").and_then(|(_, rest)| rest.split_once(','));
    let checkout = checkout_version();
    let warn = match built.map(|(sha, _)| sha) {
        None => {
            format!(
                "**{} has no build info** (`{version}`): not this checkout's proxy?",
                bin.display()
            )
        }
        Some("unknown") => format!(
            "**the measured proxy does not say what it was built from** (built without `WEFT_BUILD_GIT_SHA`); the checkout is {checkout}."
        ),
        Some(sha) if sha.ends_with("-dirty") => format!(
            "**the measured proxy was built from uncommitted changes** ({sha}); the checkout is {checkout}."
        ),
        Some(sha) if sha != checkout => {
            format!(
                "**the measured proxy was built from {sha}, not from this checkout** ({checkout})."
            )
        }
        Some(sha) => format!("weft-proxy built from {sha}, this checkout."),
    };
    let mut notes = vec![warn];
    // The shipped proxy is optimized with the committed profile; one built without it
    // (a plain README build of an older checkout, a training build) costs 20–30 % more.
    if built.is_some() && !version.ends_with(", PGO)") {
        notes.push(format!(
            "**the measured proxy was not optimized with the PGO profile** (`{version}`), as the shipped one is."
        ));
    }
    // The warnings (in bold) go to the terminal too.
    for note in notes.iter().filter(|n| n.starts_with("**")) {
        eprintln!("note: {note}");
    }
    notes
}

/// Notes on what was measured: the commit, and uncommitted changes in the crates the
/// binaries are built from (someone may be editing the proxy while this runs).
fn source_state() -> Vec<String> {
    let status = git(&["status", "--porcelain", "--", "proxy", "identity", "destination", "src"]);
    let Some(status) = status else { return Vec::new() };
    // The name the proxy carries (`-dirty` for a change anywhere in the tree), then what
    // changed in the binaries' own crates.
    let version = checkout_version();
    let dirty: Vec<String> =
        status.lines().map(|l| format!("`{}`", l.get(3..).unwrap_or(l))).collect();
    if dirty.is_empty() {
        vec![format!("binaries built from {version}; no uncommitted changes in their crates.")]
    } else {
        vec![format!(
            "binaries built from {version}, with uncommitted changes in {}.",
            dirty.join(", ")
        )]
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

/// CPU time one thread spends per round trip of a one-byte ping-pong over pipes with another
/// thread: on the other CPU, and on the same CPU. A proxy in a request's path wakes a peer
/// and is woken twice per request, so where waking another CPU is dear (in a VM, an IPI
/// and a halted vCPU's wake-up are exits to the hypervisor) this floor, more than the
/// proxy's own work, sets its CPU per request at a fixed rate: the reports show it so that
/// the figures can be read against the machine.
#[derive(Debug, Clone, Copy)]
pub struct WakeupCost {
    pub cross_cpu_us: f64,
    pub same_cpu_us: f64,
}

impl WakeupCost {
    const ROUND_TRIPS: u32 = 5_000;

    /// `None` on a single CPU or when pinning is not allowed.
    fn measure() -> Option<WakeupCost> {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            return None;
        }
        Some(WakeupCost { cross_cpu_us: ping_pong(0, 1)?, same_cpu_us: ping_pong(0, 0)? })
    }
}

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Microseconds of this thread's CPU per round trip with a peer thread pinned to `peer`,
/// this one pinned to `me` (a scoped thread, so the bench's own affinity is left alone).
fn ping_pong(me: usize, peer: usize) -> Option<f64> {
    use std::io::{Read, Write};
    let (mut ping_rx, mut ping_tx) = std::io::pipe().ok()?;
    let (mut pong_rx, mut pong_tx) = std::io::pipe().ok()?;
    std::thread::scope(|s| {
        let echo = s.spawn(move || {
            if !pin(peer) {
                return;
            }
            let mut b = [0u8];
            while ping_rx.read_exact(&mut b).is_ok() && b[0] == 1 {
                if pong_tx.write_all(&b).is_err() {
                    return;
                }
            }
        });
        let timed = s
            .spawn(move || {
                let pinned = pin(me);
                let mut b = [1u8];
                let start = thread_cpu();
                let mut ok = pinned;
                for _ in 0..WakeupCost::ROUND_TRIPS {
                    if !ok {
                        break;
                    }
                    ok = ping_tx.write_all(&[1]).is_ok() && pong_rx.read_exact(&mut b).is_ok();
                }
                let cpu = thread_cpu() - start;
                let _ = ping_tx.write_all(&[0]);
                ok.then(|| cpu.as_secs_f64() * 1e6 / f64::from(WakeupCost::ROUND_TRIPS))
            })
            .join()
            .ok()?;
        let _ = echo.join();
        timed
    })
}
