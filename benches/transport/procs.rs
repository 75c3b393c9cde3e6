//! The processes under test: `weft-proxy` and haproxy pairs, each process behind a guard
//! that kills it on drop (and, through PR_SET_PDEATHSIG, when the bench dies without
//! unwinding), plus what /proc says about a process: CPU time and memory.

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

/// A child process that is killed when this is dropped.
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

    /// CPU time (user + system, all threads) in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid())
    }

    pub fn rss_bytes(&self) -> u64 {
        status_kib(self.pid(), "VmRSS:") * 1024
    }

    /// Peak resident set size since the process started.
    pub fn peak_rss_bytes(&self) -> u64 {
        status_kib(self.pid(), "VmHWM:") * 1024
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds of a process, or of one thread with `/proc/<pid>/task/<tid>`. Sums the
/// nanosecond run time of each thread from `schedstat` when the kernel has it (utime +
/// stime in `stat` only tick every 10 ms, too coarse for a 10 s point at 200 req/s),
/// else utime + stime from `stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
    let mut ns = 0u64;
    let mut ok = false;
    for task in tasks {
        if let Some(v) = schedstat_ns(&task.path()) {
            ns += v;
            ok = true;
        }
    }
    if ok { ns as f64 / 1e9 } else { stat_cpu_seconds(&format!("/proc/{pid}")) }
}

/// CPU seconds of one thread of this process.
pub fn thread_cpu_seconds(tid: i32) -> f64 {
    let dir = format!("/proc/self/task/{tid}");
    match schedstat_ns(Path::new(&dir)) {
        Some(ns) => ns as f64 / 1e9,
        None => stat_cpu_seconds(&dir),
    }
}

fn schedstat_ns(dir: &Path) -> Option<u64> {
    fs::read_to_string(dir.join("schedstat")).ok()?.split_whitespace().next()?.parse().ok()
}

/// utime + stime (fields 14 and 15 of `stat`).
fn stat_cpu_seconds(dir: &str) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("{dir}/stat")) else {
        return f64::NAN;
    };
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return f64::NAN;
    };
    let f: Vec<u64> =
        rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    if f.len() == 2 { (f[0] + f[1]) as f64 / hz } else { f64::NAN }
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
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
    retry(|| {
        let [a_in, b_in] = free_addrs()?;
        let haproxy = |name: &str, listen: SocketAddr, to: SocketAddr| {
            let cfg = dir.join(format!("{}-{name}.cfg", tag.replace(' ', "-")));
            fs::write(&cfg, config(listen, to))?;
            let mut cmd = Command::new("haproxy");
            cmd.arg("-db").arg("-f").arg(&cfg);
            let mut p = Proc::spawn(&mut cmd, format!("{tag} {name}"), dir)?;
            p.admin = Some(listen);
            Ok::<_, anyhow::Error>(p)
        };
        let b = haproxy("B", b_in, backend)?;
        let a = haproxy("A", a_in, b_in)?;
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
    Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn free_addrs<const N: usize>() -> anyhow::Result<[SocketAddr; N]> {
    // Hold every listener until all are picked, so the N ports differ.
    let listeners = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free ports")?;
    let addrs: Vec<SocketAddr> =
        listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
    addrs.try_into().map_err(|_| anyhow::anyhow!("port count"))
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

/// The `protocol` labels of a weft proxy's `tcp_open_total` series (what detection decided).
pub fn detected_protocols(p: &Proc) -> Vec<String> {
    let Some(text) = p.admin.and_then(|a| http_get(a, "/metrics").ok()) else {
        return Vec::new();
    };
    let mut seen: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("tcp_open_total{"))
        .filter_map(|l| {
            let i = l.find("protocol=\"")? + "protocol=\"".len();
            Some(l[i..].split('"').next()?.to_string())
        })
        .collect();
    seen.sort();
    seen.dedup();
    seen
}
