//! The processes under test: `weft-proxy` and haproxy pairs, each process behind a guard
//! that stops it on drop (and kills it, through PR_SET_PDEATHSIG, when the bench dies
//! without unwinding), what /proc says about a process (CPU time and memory, from
//! `procfs`) and what a weft proxy's metrics say.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::procfs;

/// A child process that is stopped when this is dropped: SIGTERM, then SIGKILL if it has
/// not exited within [`STOP_GRACE`]. A proxy that exits on its own runs its exit handlers,
/// which is how an instrumented build writes its profile (`scripts/pgo-train`).
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    /// Where readiness is probed: a weft proxy's admin port, a haproxy's listener.
    pub admin: Option<SocketAddr>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, name: String, dir: &Path) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{}.log", name.replace(' ', "-")));
        let stderr =
            fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc { name, child, log, admin: None })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the process's log when it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); its log:\n{}", self.name, self.log_text());
        }
        Ok(())
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails with the process's log when it has exited; else, if it logged anything, a note
    /// for the report with its first line.
    pub fn log_note(&mut self) -> anyhow::Result<Option<String>> {
        self.check_alive()?;
        let log = self.log_text();
        if log.trim().is_empty() {
            return Ok(None);
        }
        let lines: Vec<&str> = log.lines().collect();
        Ok(Some(format!(
            "{} logged {} lines, e.g.: `{}`",
            self.name,
            lines.len(),
            lines[0].chars().take(200).collect::<String>()
        )))
    }

    /// CPU time (user + system, all threads) in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        procfs::cpu_seconds(self.pid())
    }

    pub fn rss_bytes(&self) -> u64 {
        procfs::rss_kib(self.pid()) * 1024
    }

    /// Peak resident set size since the process started.
    pub fn peak_rss_bytes(&self) -> u64 {
        procfs::peak_rss_kib(self.pid()) * 1024
    }
}

/// How long a dropped [`Proc`] may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Drop for Proc {
    fn drop(&mut self) {
        // Only a child not yet reaped still owns its pid: signal nothing else.
        let running = matches!(self.child.try_wait(), Ok(None));
        if let (true, Ok(pid)) = (running, libc::pid_t::try_from(self.child.id())) {
            // SAFETY: kill only sends a signal, to our unreaped child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two proxies chained: the client connects to `entry` on the first (the client's
/// side); the second (the server's side) forwards to the echo server.
#[derive(Debug)]
pub struct Pair {
    pub entry: SocketAddr,
    /// The client-side proxy, then the server-side one.
    pub procs: [Proc; 2],
}

/// A `weft-proxy` pair: A's outbound listener → B's inbound listener → `echo`. With
/// `opaque`, the ports A and B see as targets (B's inbound, the echo's) are opaque
/// ports, so neither proxy runs protocol detection; without, both detect.
pub fn weft_pair(
    bin: &Path,
    echo: SocketAddr,
    opaque: bool,
    dir: &Path,
    tag: &str,
) -> anyhow::Result<Pair> {
    weft_pair_with(bin, echo, dir, tag, |b_in| {
        if opaque {
            vec!["--opaque-ports".into(), format!("{},{}", echo.port(), b_in.port())]
        } else {
            Vec::new()
        }
    })
}

/// A `weft-proxy` pair: A's outbound listener → B's inbound listener → `backend`; both
/// proxies also get the flags `extra` returns for B's inbound address.
pub fn weft_pair_with(
    bin: &Path,
    backend: SocketAddr,
    dir: &Path,
    tag: &str,
    extra: impl Fn(SocketAddr) -> Vec<String>,
) -> anyhow::Result<Pair> {
    retry(|| {
        let [a_in, a_out, a_admin, b_in, b_out, b_admin] = free_addrs()?;
        let extra = extra(b_in);
        let proxy = |name: String,
                     inbound: SocketAddr,
                     outbound: SocketAddr,
                     admin: SocketAddr,
                     orig_dst: (&str, SocketAddr)| {
            let mut cmd = Command::new(bin);
            cmd.env_clear()
                .arg("--inbound-listen-addr")
                .arg(inbound.to_string())
                .arg("--outbound-listen-addr")
                .arg(outbound.to_string())
                .arg("--admin-listen-addr")
                .arg(admin.to_string())
                .arg(orig_dst.0)
                .arg(orig_dst.1.to_string())
                .args(["--log", "warn", "--cores", "1", "--detect-silent-window", "300ms"])
                .args(&extra);
            let mut p = Proc::spawn(&mut cmd, name, dir)?;
            p.admin = Some(admin);
            Ok::<_, anyhow::Error>(p)
        };
        let b =
            proxy(format!("{tag} B"), b_in, b_out, b_admin, ("--inbound-orig-dst-addr", backend))?;
        let a =
            proxy(format!("{tag} A"), a_in, a_out, a_admin, ("--outbound-orig-dst-addr", b_in))?;
        let mut procs = [a, b];
        for p in &mut procs {
            wait_ready(p, |admin| {
                http_get(admin, "/ready").is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
            })?;
        }
        Ok(Pair { entry: a_out, procs })
    })
}

/// A haproxy pair in TCP mode, one thread each, chained like the weft pair.
pub fn haproxy_pair(echo: SocketAddr, dir: &Path) -> anyhow::Result<Pair> {
    haproxy_pair_with(echo, dir, "haproxy", haproxy_config)
}

/// A haproxy pair chained like the weft pair, each with the configuration `config`
/// makes of its listen and upstream addresses; `tag` names the processes and files.
pub fn haproxy_pair_with(
    backend: SocketAddr,
    dir: &Path,
    tag: &str,
    config: impl Fn(SocketAddr, SocketAddr) -> String,
) -> anyhow::Result<Pair> {
    listening_pair(backend, |name, listen, to| {
        let cfg = dir.join(format!("{}-{name}.cfg", tag.replace(' ', "-")));
        fs::write(&cfg, config(listen, to))?;
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&cfg);
        Proc::spawn(&mut cmd, format!("{tag} {name}"), dir)
    })
}

/// A pair of baseline proxies chained like the weft pair: `spawn(name, listen, upstream)`
/// starts `B` (to `backend`), then `A` (to B); each is ready once it accepts connections.
pub fn listening_pair(
    backend: SocketAddr,
    spawn: impl Fn(&str, SocketAddr, SocketAddr) -> anyhow::Result<Proc>,
) -> anyhow::Result<Pair> {
    retry(|| {
        let [a_in, b_in] = free_addrs()?;
        let start = |name: &str, listen: SocketAddr, to: SocketAddr| {
            let mut p = spawn(name, listen, to)?;
            p.admin = Some(listen);
            Ok::<_, anyhow::Error>(p)
        };
        let b = start("B", b_in, backend)?;
        let a = start("A", a_in, b_in)?;
        let mut procs = [a, b];
        for p in &mut procs {
            wait_ready(p, |listen| {
                TcpStream::connect_timeout(&listen, Duration::from_secs(1)).is_ok()
            })?;
        }
        Ok(Pair { entry: a_in, procs })
    })
}

fn haproxy_config(listen: SocketAddr, to: SocketAddr) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 4000\n\ndefaults\n  mode tcp\n  timeout connect 1s\n  \
         timeout client 300s\n  timeout server 300s\n\nfrontend fe\n  bind {listen}\n  \
         default_backend be\n\nbackend be\n  server upstream {to}\n"
    )
}

pub fn haproxy_installed() -> bool {
    installed("haproxy", "-v")
}

/// Whether `program` runs (and succeeds) with `arg`, such as its version flag.
pub fn installed(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `N` distinct loopback addresses, free when picked, for the processes a bench starts
/// (below the ephemeral range: `ports::unused`).
pub fn free_addrs<const N: usize>() -> anyhow::Result<[SocketAddr; N]> {
    let ports = crate::ports::unused::<N>().context("finding free ports")?;
    Ok(ports.map(|p| SocketAddr::from(([127, 0, 0, 1], p))))
}

pub fn retry<T>(mut f: impl FnMut() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let mut last = None;
    for _ in 0..3 {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt")))
}

pub fn wait_ready(p: &mut Proc, ready: impl Fn(SocketAddr) -> bool) -> anyhow::Result<()> {
    let addr = p.admin.context("no address to probe")?;
    let started = Instant::now();
    loop {
        p.check_alive()?;
        if ready(addr) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("{} not ready after 10 s; its log:\n{}", p.name, p.log_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A plain HTTP/1.1 GET; returns the whole response (status line, headers, body).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut rsp = String::new();
    s.read_to_string(&mut rsp)?;
    Ok(rsp)
}

/// A weft proxy's `/metrics` text (empty when it cannot be read).
pub fn scrape(p: &Proc) -> String {
    p.admin
        .and_then(|a| http_get(a, "/metrics").ok())
        .and_then(|r| r.split_once("\r\n\r\n").map(|(_, body)| body.to_string()))
        .unwrap_or_default()
}

/// The sum of the samples of `name` whose labels include every `(key, value)` given
/// (a value of `"*"` only asks for the label to be there).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            if n != name {
                return None;
            }
            let ok = labels.iter().all(|(k, v)| {
                if *v == "*" {
                    rest.contains(&format!("{k}=\""))
                } else {
                    rest.contains(&format!("{k}=\"{v}\""))
                }
            });
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The `protocol` labels of a weft proxy's `tcp_open_total` series (what detection decided),
/// of those with `peer` (`src`, `dst`) or all.
pub fn tcp_open_protocols(p: &Proc, peer: Option<&str>) -> Vec<String> {
    let text = scrape(p);
    let peer = peer.map(|peer| format!("peer=\"{peer}\""));
    let mut seen: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("tcp_open_total{"))
        .filter(|l| peer.as_ref().is_none_or(|peer| l.contains(peer.as_str())))
        .filter_map(|l| {
            let i = l.find("protocol=\"")? + "protocol=\"".len();
            Some(l[i..].split('"').next()?.to_string())
        })
        .collect();
    seen.sort();
    seen.dedup();
    seen
}
