//! `weft-proxy init` against real iptables in fresh network namespaces: what it installs, that
//! re-running and bad input change nothing, and that the rules really redirect TCP.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt,
    process::Output,
    time::Duration,
};

use crate::netns::{
    Netns, accept_within, original_dst, proxy_bin, require_root, veth_pair, veth_pair_with,
};

/// Runs `weft-proxy init args...` in `ns`.
fn init(ns: &Netns, args: &[&str]) -> Output {
    let bin = proxy_bin();
    let mut full = vec!["init"];
    full.extend_from_slice(args);
    ns.exec(bin.to_str().expect("utf-8 path"), &full)
}

/// Like `init`, but panics with its stderr unless it succeeds; returns its stdout.
fn init_ok(ns: &Netns, args: &[&str]) -> String {
    let out = init(ns, args);
    assert!(
        out.status.success(),
        "weft-proxy init {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `<cmd>-<backend>-save [-t nat]` without its `#` lines (which carry a timestamp).
fn save(ns: &Netns, cmd: &str, backend: &str, nat_only: bool) -> String {
    let tool = format!("{cmd}-{backend}-save");
    let args: &[&str] = if nat_only { &["-t", "nat"] } else { &[] };
    let out = ns.exec_ok(&tool, args);
    out.lines().filter(|l| !l.starts_with('#')).map(|l| format!("{l}\n")).collect()
}

fn nat(ns: &Netns, cmd: &str, backend: &str) -> String {
    save(ns, cmd, backend, true)
}

/// Every table of both backends and both families, as far as reading them changes nothing.
fn all_tables(ns: &Netns) -> String {
    let mut out = String::new();
    for cmd in ["iptables", "ip6tables"] {
        for backend in ["nft", "legacy"] {
            out.push_str(&format!("== {cmd}-{backend}\n{}", save(ns, cmd, backend, false)));
        }
    }
    out.push_str(&ns.exec_ok("nft", &["list", "ruleset"]));
    out
}

/// The `-A` lines of `chain` in a saved table, in order.
fn chain(save: &str, chain: &str) -> Vec<String> {
    let prefix = format!("-A {chain} ");
    save.lines().filter(|l| l.starts_with(&prefix)).map(str::to_string).collect()
}

const JUMP_IN: &str = "-A PREROUTING -m comment --comment \"weft/inbound\" -j WEFT_INBOUND";
const JUMP_OUT: &str = "-A OUTPUT -m comment --comment \"weft/outbound\" -j WEFT_OUTBOUND";

fn inbound_chain(skipped: &str) -> Vec<String> {
    vec![
        format!(
            "-A WEFT_INBOUND -p tcp -m multiport --dports {skipped} -m comment --comment \
             \"weft/inbound-skip-ports\" -j RETURN"
        ),
        "-A WEFT_INBOUND -p tcp -m comment --comment \"weft/inbound-redirect\" -j REDIRECT --to-ports 4143"
            .to_string(),
    ]
}

fn outbound_chain(skipped_ports: Option<&str>, subnet: Option<&str>) -> Vec<String> {
    let mut rules = vec![
        "-A WEFT_OUTBOUND -m owner --uid-owner 2102 -m comment --comment \"weft/outbound-skip-proxy-uid\" -j RETURN"
            .to_string(),
        "-A WEFT_OUTBOUND -o lo -m comment --comment \"weft/outbound-skip-loopback\" -j RETURN".to_string(),
    ];
    if let Some(ports) = skipped_ports {
        rules.push(format!(
            "-A WEFT_OUTBOUND -p tcp -m multiport --dports {ports} -m comment --comment \
             \"weft/outbound-skip-ports\" -j RETURN"
        ));
    }
    if let Some(subnet) = subnet {
        rules.push(format!(
            "-A WEFT_OUTBOUND -d {subnet} -m comment --comment \"weft/outbound-skip-subnet\" -j RETURN"
        ));
    }
    rules.push(
        "-A WEFT_OUTBOUND -p tcp -m comment --comment \"weft/outbound-redirect\" -j REDIRECT --to-ports 4140"
            .to_string(),
    );
    rules
}

/// Checks the whole of what init installed in one family's nat table.
fn assert_installed(save: &str, inbound: &[String], outbound: &[String]) {
    assert_eq!(chain(save, "PREROUTING"), [JUMP_IN], "{save}");
    assert_eq!(chain(save, "OUTPUT"), [JUMP_OUT], "{save}");
    assert_eq!(chain(save, "WEFT_INBOUND"), inbound, "{save}");
    assert_eq!(chain(save, "WEFT_OUTBOUND"), outbound, "{save}");
}

const SKIPS: [&str; 6] = [
    "--skip-inbound-ports=22,8000-8100",
    "--skip-outbound-ports=5432",
    "--skip-subnets=10.96.0.0/12,fd00::/8",
    "--ipv6=true",
    "--log=debug",
    "--iptables-mode",
];

fn installs_rules(backend: &str, other: &str) {
    require_root();
    let ns = Netns::new("weft-init");
    let mut args = SKIPS.to_vec();
    args.push(backend);
    init_ok(&ns, &args);

    let inbound = inbound_chain("22,4190:4191,8000:8100");
    let v4 = nat(&ns, "iptables", backend);
    assert_installed(&v4, &inbound, &outbound_chain(Some("5432"), Some("10.96.0.0/12")));
    let v6 = nat(&ns, "ip6tables", backend);
    assert_installed(&v6, &inbound, &outbound_chain(Some("5432"), Some("fd00::/8")));

    for cmd in ["iptables", "ip6tables"] {
        let untouched = nat(&ns, cmd, other);
        assert!(!untouched.contains("WEFT"), "{cmd}-{other} has rules too:\n{untouched}");
    }
}

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn init_installs_the_rules_with_nft() {
    installs_rules("nft", "legacy");
}

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn init_installs_the_rules_with_legacy() {
    installs_rules("legacy", "nft");
}

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn init_twice_keeps_one_copy_of_each_rule_and_jump() {
    require_root();
    for backend in ["nft", "legacy"] {
        let ns = Netns::new("weft-init");
        let mode = format!("--iptables-mode={backend}");
        init_ok(&ns, &[&mode, "--skip-subnets=10.96.0.0/12,fd00::/8"]);
        init_ok(&ns, &[&mode, "--skip-subnets=10.96.0.0/12,fd00::/8"]);
        let inbound = inbound_chain("4190:4191");
        let v4 = nat(&ns, "iptables", backend);
        assert_installed(&v4, &inbound, &outbound_chain(None, Some("10.96.0.0/12")));
        let v6 = nat(&ns, "ip6tables", backend);
        assert_installed(&v6, &inbound, &outbound_chain(None, Some("fd00::/8")));

        // Other settings replace the rules rather than adding to them.
        init_ok(&ns, &[&mode, "--skip-outbound-ports=443"]);
        let v4 = nat(&ns, "iptables", backend);
        assert_installed(&v4, &inbound, &outbound_chain(Some("443"), None));
        let v6 = nat(&ns, "ip6tables", backend);
        assert_installed(&v6, &inbound, &outbound_chain(Some("443"), None));
    }
}

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn init_dry_run_prints_the_rules_and_changes_nothing() {
    require_root();
    let ns = Netns::new("weft-init");
    let before = all_tables(&ns);
    for mode in ["auto", "nft", "legacy"] {
        let out = init_ok(
            &ns,
            &["--dry-run", "--iptables-mode", mode, "--skip-subnets=10.0.0.0/8,fd00::/8"],
        );
        assert_eq!(out.matches("*nat\n").count(), 2, "{out}");
        assert_eq!(out.matches("COMMIT\n").count(), 2, "{out}");
        for line in
            [JUMP_IN, JUMP_OUT, "-A WEFT_OUTBOUND -d 10.0.0.0/8 ", "-A WEFT_OUTBOUND -d fd00::/8 "]
        {
            assert!(out.contains(line), "{line:?} missing from:\n{out}");
        }
        assert!(out.contains(&inbound_chain("4190:4191").join("\n")), "{out}");
    }
    let out = init_ok(&ns, &["--dry-run", "--ipv6=false"]);
    assert_eq!(out.matches("*nat\n").count(), 1, "{out}");
    assert_eq!(all_tables(&ns), before, "--dry-run changed the tables");

    // It needs no privileges at all.
    let bin = proxy_bin();
    let nobody = ns.exec(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            bin.to_str().expect("utf-8"),
            "init",
            "--dry-run",
        ],
    );
    assert!(nobody.status.success(), "{}", String::from_utf8_lossy(&nobody.stderr));
}

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn init_refuses_bad_args_and_changes_nothing() {
    require_root();
    let ns = Netns::new("weft-init");
    // Rules from an earlier run must survive a bad one untouched too.
    init_ok(&ns, &["--iptables-mode=nft", "--skip-outbound-ports=443"]);
    let before = all_tables(&ns);
    let cases: [(&[&str], &str); 10] = [
        (
            &["--inbound-port=0"],
            "invalid value '0' for '--inbound-port <INBOUND_PORT>': 0 is not in 1..=65535",
        ),
        (&["--outbound-port=70000"], "70000 is not in 1..=65535"),
        (&["--skip-inbound-ports=8000-70"], "port range \"8000-70\" is backwards"),
        (&["--skip-outbound-ports=0"], "\"0\" is not a port"),
        (
            &["--skip-subnets=10.0.0.0"],
            "\"10.0.0.0\" is not a subnet: expected an address and a prefix length",
        ),
        (&["--skip-subnets=10.0.0.0/33"], "an IPv4 prefix length is a number from 0 to 32"),
        (
            &["--skip-subnets=10.0.0.1/8"],
            "\"10.0.0.1/8\" has host bits set: did you mean 10.0.0.0/8?",
        ),
        (&["--iptables-mode=iptables"], "invalid value 'iptables' for '--iptables-mode"),
        (&["--ipv6=maybe"], "invalid value 'maybe' for '--ipv6"),
        (&["--inbound-port=4140"], "--inbound-port and --outbound-port are both 4140"),
    ];
    for (args, message) in cases {
        let out = init(&ns, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(message), "{args:?}: expected {message:?} in:\n{stderr}");
    }
    // Through the environment too.
    let bin = proxy_bin();
    let bin = bin.to_str().expect("utf-8");
    let out = ns.exec("env", &["WEFT_PROXY_INIT_SKIP_SUBNETS=fd00::1/8", bin, "init"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("did you mean fd00::/8?"));
    assert_eq!(all_tables(&ns), before, "a refused run changed the tables");
}

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn init_auto_uses_nft_unless_only_legacy_has_rules() {
    require_root();
    let fresh = Netns::new("weft-init");
    let out = init(&fresh, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("using the nft iptables backend"));
    assert!(nat(&fresh, "iptables", "nft").contains("WEFT_INBOUND"));
    assert!(!nat(&fresh, "iptables", "legacy").contains("WEFT"));

    let legacy = Netns::new("weft-init");
    legacy.exec_ok(
        "iptables-legacy",
        &["-w", "10", "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT"],
    );
    let out = init(&legacy, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("using the legacy iptables backend"));
    assert!(nat(&legacy, "iptables", "legacy").contains("WEFT_INBOUND"));
    assert!(nat(&legacy, "ip6tables", "legacy").contains("WEFT_INBOUND"));
    assert!(!nat(&legacy, "iptables", "nft").contains("WEFT"));
    // And keeps using it on a second run, which now finds its own rules there.
    init_ok(&legacy, &[]);
    assert_eq!(chain(&nat(&legacy, "iptables", "legacy"), "PREROUTING"), [JUMP_IN]);
    assert!(!nat(&legacy, "iptables", "nft").contains("WEFT"));
}

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn init_without_ipv6_leaves_ip6tables_alone() {
    require_root();
    let ns = Netns::new("weft-init");
    init_ok(&ns, &["--iptables-mode=nft", "--ipv6=false"]);
    assert!(nat(&ns, "iptables", "nft").contains("WEFT_OUTBOUND"));
    assert!(!nat(&ns, "ip6tables", "nft").contains("WEFT"));
}

/// A directory whose `ip6tables-<backend>-restore` test-loads like the real one but fails
/// to apply, put first in PATH.
struct FailingIp6tables(std::path::PathBuf);

impl FailingIp6tables {
    fn new(backend: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("weft-e2e-fake-{}-{backend}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fake bin dir");
        let name = format!("ip6tables-{backend}-restore");
        let real = ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(&name))
            .find(|p| p.exists())
            .expect("the real ip6tables restore");
        let script = format!(
            "#!/bin/sh\ncase \" $* \" in *' --test '*) exec {} \"$@\";; esac\n\
             echo 'simulated ip6tables failure' >&2\nexit 1\n",
            real.display()
        );
        let path = dir.join(&name);
        std::fs::write(&path, script).expect("write the fake");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        FailingIp6tables(dir)
    }

    fn path_var(&self) -> String {
        format!("PATH={}:/usr/sbin:/usr/bin:/sbin:/bin", self.0.display())
    }
}

impl Drop for FailingIp6tables {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn init_rolls_ipv4_back_when_ipv6_fails() {
    require_root();
    let bin = proxy_bin();
    let bin = bin.to_str().expect("utf-8");
    for backend in ["nft", "legacy"] {
        let fake = FailingIp6tables::new(backend);
        let mode = format!("--iptables-mode={backend}");
        let ns = Netns::new("weft-init");
        // Someone else's rule, and Weft's rules from an earlier run with other settings.
        let iptables = format!("iptables-{backend}");
        ns.exec_ok(
            &iptables,
            &["-w", "10", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "RETURN"],
        );
        init_ok(&ns, &[&mode, "--skip-outbound-ports=443"]);
        let before = (nat(&ns, "iptables", backend), nat(&ns, "ip6tables", backend));

        let out =
            ns.exec("env", &[&fake.path_var(), bin, "init", &mode, "--skip-outbound-ports=80"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{backend}: the failure went unnoticed: {stderr}");
        assert!(
            stderr.contains("applying the IPv6 rules failed after the IPv4 rules were applied; those were rolled back"),
            "{backend}: {stderr}"
        );
        assert!(stderr.contains("simulated ip6tables failure"), "{backend}: {stderr}");
        let after = (nat(&ns, "iptables", backend), nat(&ns, "ip6tables", backend));
        assert_eq!(after, before, "{backend}: the tables are not as they were");
    }
}

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn init_without_iptables_names_the_package() {
    require_root();
    let ns = Netns::new("weft-init");
    let bin = proxy_bin();
    for mode in ["nft", "legacy", "auto"] {
        let out = ns.exec(
            "env",
            &["PATH=/nonexistent", bin.to_str().expect("utf-8"), "init", "--iptables-mode", mode],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{mode}");
        assert!(
            stderr.contains("was not found: install the `iptables` package"),
            "{mode}: {stderr}"
        );
    }
}

/// An app namespace with init's rules and a peer reached over two veth pairs:
/// app 10.77.0.1 and fd77::1, and 10.78.0.1; peer 10.77.0.2 and fd77::2, and 10.78.0.2.
fn app_and_peer(init_args: &[&str]) -> (Netns, Netns) {
    require_root();
    let app = Netns::new("weft-app");
    let peer = Netns::new("weft-peer");
    veth_pair_with(&app, &["10.77.0.1/24", "fd77::1/64"], &peer, &["10.77.0.2/24", "fd77::2/64"]);
    veth_pair(&app, "10.78.0.1/24", &peer, "10.78.0.2/24");
    init_ok(&app, init_args);
    (app, peer)
}

fn listen(ns: &Netns, addr: &str) -> TcpListener {
    ns.run_in(|| TcpListener::bind(addr))
        .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name))
}

fn connect(ns: &Netns, addr: &str) -> TcpStream {
    let addr: SocketAddr = addr.parse().expect("socket address");
    ns.run_in(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("connect to {addr} from {}: {e}", ns.name))
}

const WAIT: Duration = Duration::from_secs(5);
const NOTHING: Duration = Duration::from_millis(200);

/// Sends a line and checks it arrives on `listener` (and nowhere else: `not_on`).
fn reaches(stream: TcpStream, listener: &TcpListener, not_on: &TcpListener) -> TcpStream {
    let mut stream = stream;
    writeln!(stream, "hello").expect("write");
    let (accepted, _) = accept_within(listener, WAIT).expect("the connection arrived");
    let mut line = String::new();
    BufReader::new(&accepted).read_line(&mut line).expect("read");
    assert_eq!(line, "hello\n");
    assert!(accept_within(not_on, NOTHING).is_none(), "the connection also arrived elsewhere");
    accepted
}

/// Connects from a process running as `uid` in `ns` with bash's /dev/tcp, sending a line.
fn connect_as(ns: &Netns, uid: u32, ip: &str, port: u16) -> std::process::Child {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port} && echo from-uid-{uid} >&3 && sleep 5");
    ns.spawn("bash", &["-c", &script], &[], Some(uid))
}

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn outbound_tcp_is_redirected_except_for_the_proxy_uid_loopback_and_skips() {
    let (app, peer) = app_and_peer(&[
        "--iptables-mode=nft",
        "--skip-outbound-ports=9999",
        "--skip-subnets=10.78.0.0/24",
    ]);
    let proxy_v4 = listen(&app, "127.0.0.1:4140");
    let proxy_v6 = listen(&app, "[::1]:4140");
    let server = listen(&peer, "[::]:80");
    let skipped_port = listen(&peer, "0.0.0.0:9999");

    // An app's connections land on the outbound proxy, which can tell where they were going.
    let accepted = reaches(connect(&app, "10.77.0.2:80"), &proxy_v4, &server);
    assert_eq!(
        original_dst(&accepted).expect("SO_ORIGINAL_DST"),
        "10.77.0.2:80".parse().expect("addr")
    );
    let accepted = reaches(connect(&app, "[fd77::2]:80"), &proxy_v6, &server);
    assert_eq!(
        original_dst(&accepted).expect("SO_ORIGINAL_DST"),
        "[fd77::2]:80".parse().expect("addr")
    );

    // ... whichever user they run as,
    let mut other_user = connect_as(&app, 1000, "10.77.0.2", 80);
    let accepted =
        accept_within(&proxy_v4, WAIT).unwrap_or_else(|| panic!("uid 1000: {}", app.logs()));
    assert_eq!(
        original_dst(&accepted.0).expect("SO_ORIGINAL_DST"),
        "10.77.0.2:80".parse().expect("addr")
    );
    let _ = other_user.kill();
    let _ = other_user.wait();

    // ... except the proxy's own,
    let mut proxy_user = connect_as(&app, 2102, "10.77.0.2", 80);
    let (accepted, _) =
        accept_within(&server, WAIT).unwrap_or_else(|| panic!("uid 2102: {}", app.logs()));
    let mut line = String::new();
    BufReader::new(&accepted).read_line(&mut line).expect("read");
    assert_eq!(line, "from-uid-2102\n");
    assert!(accept_within(&proxy_v4, NOTHING).is_none());
    let _ = proxy_user.kill();
    let _ = proxy_user.wait();

    // ... skipped ports and subnets,
    reaches(connect(&app, "10.77.0.2:9999"), &skipped_port, &proxy_v4);
    reaches(connect(&app, "10.78.0.2:80"), &server, &proxy_v4);

    // ... and loopback.
    let local = listen(&app, "127.0.0.1:8080");
    reaches(connect(&app, "127.0.0.1:8080"), &local, &proxy_v4);
}

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn inbound_tcp_is_redirected_except_skipped_ports() {
    let (app, peer) = app_and_peer(&["--iptables-mode=legacy", "--skip-inbound-ports=22"]);
    let proxy = listen(&app, "[::]:4143");
    let admin = listen(&app, "[::]:4191");
    let ssh = listen(&app, "[::]:22");

    for (target, original) in
        [("10.77.0.1:8080", "10.77.0.1:8080"), ("[fd77::1]:8080", "[fd77::1]:8080")]
    {
        let accepted = reaches(connect(&peer, target), &proxy, &admin);
        let dst = original_dst(&accepted).expect("SO_ORIGINAL_DST");
        assert_eq!(dst, original.parse().expect("addr"), "{target}");
    }
    reaches(connect(&peer, "10.77.0.1:4191"), &admin, &proxy);
    reaches(connect(&peer, "[fd77::1]:4191"), &admin, &proxy);
    reaches(connect(&peer, "10.77.0.1:22"), &ssh, &proxy);
}
