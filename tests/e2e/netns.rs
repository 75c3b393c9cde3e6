//! Network namespaces for end-to-end tests: fresh, uniquely named ones per test, removed (with
//! every process left in them) when dropped, even when the test panics.

use std::{
    fs::File,
    io,
    mem::{MaybeUninit, size_of},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Mutex, OnceLock, PoisonError,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// Numbers namespaces and interfaces apart within this process; the pid does across processes.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Panics unless running as root: the tests that call it create namespaces and iptables rules,
/// and must fail loudly rather than pass without having run.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (it creates network namespaces and iptables rules; euid is {euid}): \
         run it as root, e.g. `sudo -E cargo test --test e2e -- --include-ignored`"
    );
}

/// A named network namespace (`ip netns`), with its loopback up.
pub struct Netns {
    pub name: String,
    /// Where `spawn` sends the output of the processes it starts.
    log_dir: PathBuf,
    spawned: Mutex<Vec<(u32, String)>>,
}

impl Netns {
    /// A new namespace named `prefix-<pid>-<n>`.
    pub fn new(prefix: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let log_dir = std::env::temp_dir().join(format!("weft-e2e-{name}"));
        std::fs::create_dir_all(&log_dir).expect("create the namespace's log dir");
        check(Command::new("ip").args(["netns", "add", &name]));
        // From here on Drop removes the namespace, also if bringing lo up fails.
        let ns = Netns { name, log_dir, spawned: Mutex::new(Vec::new()) };
        ns.exec_ok("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `cmd args...` in the namespace and waits for it.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run `ip netns exec {} {cmd}`: {e}", self.name))
    }

    /// Like `exec`, but panics with its stderr unless it succeeds; returns its stdout.
    pub fn exec_ok(&self, cmd: &str, args: &[&str]) -> String {
        let out = self.exec(cmd, args);
        assert!(
            out.status.success(),
            "`{cmd} {}` in netns {} failed ({}): {}",
            args.join(" "),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `cmd args...` in the namespace in the background, with `envs` added to the
    /// environment and, with `uid`, as that user and group (no supplementary groups). Its stdout
    /// and stderr go to files that `logs` reads.
    pub fn spawn(
        &self,
        cmd: &str,
        args: &[&str],
        envs: &[(&str, &str)],
        uid: Option<u32>,
    ) -> Child {
        let mut spawned = self.spawned.lock().unwrap_or_else(PoisonError::into_inner);
        let base = Path::new(cmd).file_name().map_or(cmd.into(), |f| f.to_string_lossy());
        let label = format!("{}-{base}", spawned.len());
        let log = |stream: &str| {
            let path = self.log_dir.join(format!("{label}.{stream}"));
            File::create(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()))
        };

        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]);
        let uid = uid.map(|u| u.to_string());
        if let Some(uid) = &uid {
            command.args(["setpriv", "--reuid", uid, "--regid", uid, "--clear-groups", "--"]);
        }
        let child = command
            .arg(cmd)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(log("stdout"))
            .stderr(log("stderr"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{cmd}` in netns {}: {e}", self.name));
        // `ip netns exec` and `setpriv` exec the command: the child's pid is the command's.
        spawned.push((child.id(), label));
        child
    }

    /// The output of every process `spawn` started, for failure messages.
    pub fn logs(&self) -> String {
        let spawned = self.spawned.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        for (pid, label) in spawned.iter() {
            for stream in ["stdout", "stderr"] {
                let text = std::fs::read_to_string(self.log_dir.join(format!("{label}.{stream}")))
                    .unwrap_or_else(|e| format!("(unreadable: {e})"));
                out.push_str(&format!("--- {label} (pid {pid}) {stream} ---\n{text}"));
                if !text.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        out
    }

    /// Runs `f` on a new thread that first enters the namespace, so that the sockets `f` creates
    /// (directly, or through a current-thread tokio runtime it builds) live in the namespace.
    /// Sockets keep their namespace: they can be returned and used from any thread. Threads
    /// that `f` starts (e.g. a multi-thread runtime's workers) do NOT inherit the namespace.
    pub fn run_in<F: FnOnce() -> R + Send, R: Send>(&self, f: F) -> R {
        let path = self.path();
        std::thread::scope(|scope| {
            let thread = scope.spawn(move || {
                let file = File::open(&path)
                    .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
                // SAFETY: the descriptor is open for the whole call; setns only changes this
                // thread's network namespace.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    panic!("cannot enter {}: {}", path.display(), io::Error::last_os_error());
                }
                f()
            });
            thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// The processes in the namespace: those `spawn` started that are still in it, and any
    /// other `ip netns pids` finds.
    fn processes(&self) -> Vec<u32> {
        let Ok(ns) = std::fs::metadata(self.path()) else {
            return Vec::new();
        };
        let ns_link = format!("net:[{}]", ns.ino());
        let in_ns = |pid: u32| {
            std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|link| link.as_os_str() == ns_link.as_str())
        };
        let listed = Command::new("ip").args(["netns", "pids", &self.name]).output();
        let listed =
            listed.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        let spawned = self.spawned.lock().unwrap_or_else(PoisonError::into_inner);
        let mut pids: Vec<u32> = spawned
            .iter()
            .map(|&(pid, _)| pid)
            .chain(listed.split_whitespace().filter_map(|p| p.parse().ok()))
            .filter(|&pid| pid != std::process::id() && in_ns(pid))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.processes() {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: kill has no memory preconditions; the pid was just seen in this
                // namespace, which only this test's processes enter.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Logs stay behind for a failed test, to read after the fact.
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.log_dir);
        }
    }
}

/// A veth pair from `a` to `b` with the given addresses (e.g. "10.77.0.1/24"), links up.
pub fn veth_pair(a: &Netns, a_ip: &str, b: &Netns, b_ip: &str) {
    veth_pair_with(a, &[a_ip], b, &[b_ip]);
}

/// A veth pair from `a` to `b` with any number of IPv4 and IPv6 addresses on each side (IPv6
/// ones skip duplicate address detection, so they are usable at once); returns the names of
/// the interfaces in `a` and in `b`.
pub fn veth_pair_with(
    a: &Netns,
    a_addrs: &[&str],
    b: &Netns,
    b_addrs: &[&str],
) -> (String, String) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    // Interface names are per namespace, and at most 15 bytes.
    let (a_if, b_if) = (format!("wa{n}"), format!("wb{n}"));
    a.exec_ok(
        "ip",
        &["link", "add", &a_if, "type", "veth", "peer", "name", &b_if, "netns", &b.name],
    );
    for (ns, ifname, addrs) in [(a, &a_if, a_addrs), (b, &b_if, b_addrs)] {
        for addr in addrs {
            let mut args = vec!["addr", "add", addr, "dev", ifname.as_str()];
            if addr.contains(':') {
                args.push("nodad");
            }
            ns.exec_ok("ip", &args);
        }
        ns.exec_ok("ip", &["link", "set", ifname, "up"]);
    }
    (a_if, b_if)
}

/// The `weft-proxy` binary, built once per test process with the test's own profile and
/// target dir (it belongs to another package, so CARGO_BIN_EXE cannot name it).
pub fn proxy_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test executable's path");
        // <target>/<profile>/deps/e2e-<hash>
        let profile_dir =
            exe.parent().and_then(Path::parent).expect("<target>/<profile>/deps/<test>");
        let target_dir = profile_dir.parent().expect("<target>/<profile>");
        let profile = profile_dir.file_name().and_then(|p| p.to_str()).expect("a profile name");
        let mut cargo = Command::new(env!("CARGO"));
        cargo.current_dir(env!("CARGO_MANIFEST_DIR"));
        cargo.args(["build", "-p", "weft-proxy", "--bin", "weft-proxy", "--target-dir"]);
        cargo.arg(target_dir);
        match profile {
            "debug" => {}
            "release" => {
                cargo.arg("--release");
            }
            other => {
                cargo.args(["--profile", other]);
            }
        }
        let out = cargo.output().expect("cannot run cargo");
        assert!(
            out.status.success(),
            "building weft-proxy failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = profile_dir.join("weft-proxy");
        assert!(bin.is_file(), "cargo built weft-proxy but {} is not there", bin.display());
        bin
    })
    .clone()
}

/// Accepts one connection, or gives up after `timeout`.
pub fn accept_within(listener: &TcpListener, timeout: Duration) -> Option<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true).expect("nonblocking listener");
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false).expect("blocking stream");
                return Some((stream, peer));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) => panic!("accept failed: {e}"),
        }
    }
}

/// The destination a redirected connection was made to (SO_ORIGINAL_DST, IPv4 or IPv6).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    // SO_ORIGINAL_DST and IP6T_SO_ORIGINAL_DST are both 80.
    const SO_ORIGINAL_DST: libc::c_int = 80;
    fn get<T: Copy>(stream: &TcpStream, level: libc::c_int) -> io::Result<T> {
        let mut value = MaybeUninit::<T>::zeroed();
        let mut len = libc::socklen_t::try_from(size_of::<T>()).expect("small struct");
        // SAFETY: value points to writable memory of len bytes, and the kernel writes at most
        // len bytes to it; T is a plain C struct, valid when zeroed.
        let rc = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                level,
                SO_ORIGINAL_DST,
                value.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: zero-initialised, then (partly) filled by the kernel.
        Ok(unsafe { value.assume_init() })
    }
    let v4 = match stream.local_addr()? {
        SocketAddr::V4(_) => true,
        // An IPv4 client of a dual-stack listener: conntrack knows it as IPv4.
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
    };
    if v4 {
        let sin: libc::sockaddr_in = get(stream, libc::SOL_IP)?;
        let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
    } else {
        let sin6: libc::sockaddr_in6 = get(stream, libc::SOL_IPV6)?;
        let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
        Ok(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(sin6.sin6_port), 0, 0)))
    }
}

/// Runs `command` and panics with its stderr unless it succeeds.
fn check(command: &mut Command) {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
