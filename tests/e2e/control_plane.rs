//! Control-plane addresses as names, end to end: the real `weft-proxy` reaches the real
//! `weft destination` through a DNS name resolved by the proxy itself (a resolv.conf of the
//! test's, pointing at a small DNS server of the test's that answers made-up cluster names,
//! with Kubernetes-like search domains and ndots), follows the service when its address
//! changes, keeps forwarding while the name does not resolve, and refuses bad addresses at
//! start.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use crate::{netns::proxy_bin, support::*};

const DST_NAME: &str = "weft-destination.weft.svc.cluster.local";

/// A DNS server on UDP port 53 of a loopback address of its own (resolv.conf cannot name a
/// port): A records for the names it is told, NXDOMAIN for the others. Records every name
/// it is asked. (Also the chart test's cluster DNS.)
pub(crate) struct Dns {
    pub(crate) ip: Ipv4Addr,
    names: Arc<Mutex<HashMap<String, Ipv4Addr>>>,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Dns {
    pub(crate) fn start() -> Dns {
        static N: AtomicU32 = AtomicU32::new(1);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let ip = Ipv4Addr::new(127, 53, (std::process::id() % 250) as u8, n as u8);
        let socket = UdpSocket::bind((ip, 53)).unwrap_or_else(|e| panic!("bind {ip}:53: {e}"));
        socket.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        let names = Arc::new(Mutex::new(HashMap::new()));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (n2, a2, s2) = (names.clone(), asked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s2.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else { continue };
                let names = n2.lock().expect("names").clone();
                if let Some((name, rsp)) = answer(&buf[..len], &names) {
                    a2.lock().expect("asked").push(name);
                    let _ = socket.send_to(&rsp, from);
                }
            }
        });
        Dns { ip, names, asked, stop }
    }

    pub(crate) fn set(&self, name: &str, ip: Ipv4Addr) {
        self.names.lock().expect("names").insert(name.to_string(), ip);
    }

    pub(crate) fn asked(&self) -> Vec<String> {
        self.asked.lock().expect("asked").clone()
    }

    /// A pod's resolv.conf, as the kubelet writes it for namespace `weft`.
    fn resolv_conf(&self, dir: &Path) -> PathBuf {
        let p = dir.join("resolv.conf");
        std::fs::write(
            &p,
            format!(
                "nameserver {}\nsearch weft.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5 timeout:1 attempts:2\n",
                self.ip
            ),
        )
        .expect("resolv.conf");
        p
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The answer to one query: (the name asked, the response).
fn answer(q: &[u8], names: &HashMap<String, Ipv4Addr>) -> Option<(String, Vec<u8>)> {
    if q.len() < 12 || q[4..6] != [0, 1] {
        return None;
    }
    let mut labels = Vec::new();
    let mut i = 12;
    loop {
        let n = *q.get(i)? as usize;
        i += 1;
        if n == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + n)?).to_ascii_lowercase());
        i += n;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = q.get(12..i + 4)?;
    let name = labels.join(".");
    let ip = names.get(&name);
    let a = if qtype == 1 { ip } else { None };
    let mut rsp = vec![q[0], q[1], 0x81, if ip.is_some() { 0x80 } else { 0x83 }, 0, 1, 0];
    rsp.extend([u8::from(a.is_some()), 0, 0, 0, 0]);
    rsp.extend_from_slice(question);
    if let Some(ip) = a {
        // Pointer to the question's name, A, IN, TTL 5 s, 4 bytes.
        rsp.extend([0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
        rsp.extend(ip.octets());
    }
    Some((name, rsp))
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-e2e-cp-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("dir");
    d
}

/// `weft destination` (static file) listening on `listen`.
fn destination(
    dir: &Path,
    listen: SocketAddr,
    service_port: u16,
    endpoints: &[&Backend],
) -> Serving {
    let mut y = format!(
        "services:\n  - name: web\n    namespace: prod\n    clusterIPs: [127.0.0.1]\n    ports:\n      - port: {service_port}\n        endpoints:\n"
    );
    for b in endpoints {
        y.push_str(&format!("          - address: {}\n", b.addr));
    }
    let file = dir.join(format!("endpoints-{}-{}.yaml", listen.ip(), listen.port()));
    std::fs::write(&file, y).expect("static file");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.args(["destination", "--source", "static", "--static-file"])
        .arg(&file)
        .args(["--listen-addr", &listen.to_string(), "--admin-addr", "127.0.0.1:0"])
        .args(["--log-format", "json"]);
    Serving::start(cmd, "weft destination", Duration::from_secs(20))
}

fn kill(mut s: Serving) {
    let _ = s.child.kill();
    let _ = s.child.wait();
}

fn hits(bs: &[&Backend]) -> u64 {
    bs.iter().map(|b| b.hits()).sum()
}

#[test]
#[ignore = "needs root: the test's DNS server listens on port 53 (resolv.conf has no port)"]
fn the_destination_service_is_found_by_name_and_followed_when_it_moves() {
    let dns = Dns::start();
    let dir = temp_dir("moves");
    let conf = dns.resolv_conf(&dir);
    // The original destination (a real backend, so falling back works) and the endpoints
    // that each destination service knows for it.
    let original = Backend::start(Duration::ZERO, None);
    let first = Backend::start(Duration::ZERO, None);
    let second = Backend::start(Duration::ZERO, None);
    let port = free_port();
    let d1 = destination(&dir, ([127, 0, 0, 1], port).into(), original.addr.port(), &[&first]);
    // A short name, as a pod would write it: found through the search domains.
    let addr = format!("weft-destination.weft.svc:{port}");
    let target = original.addr.to_string();
    let conf_arg = conf.display().to_string();
    let p = Proxy::start(&[
        "--outbound-orig-dst-addr",
        &target,
        "--destination-addr",
        &addr,
        "--dns-resolv-conf",
        &conf_arg,
        "--destination-first-update-timeout",
        "500ms",
    ]);

    // The name does not resolve yet: the proxy runs on, forwards to the original
    // destination, logs and counts.
    let statuses = load(p.outbound, 2, 20);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert!(original.hits() >= 20 && hits(&[&first, &second]) == 0);
    assert!(
        eventually(Duration::from_secs(10), || metric(
            &p.metrics(),
            "control_plane_resolve_errors_total",
            &[("service", "destination")]
        ) >= 1.0),
        "{}",
        p.metrics()
    );
    assert!(
        metric(&p.metrics(), "outbound_discovery_lookups_total", &[("result", "unavailable")])
            >= 1.0
    );
    assert!(p.logs().contains("cannot resolve a control-plane service's name"), "{}", p.logs());

    // The name appears: discovery through it, balancing to the service's endpoint.
    dns.set(DST_NAME, Ipv4Addr::LOCALHOST);
    assert!(
        eventually(Duration::from_secs(20), || {
            let _ = load(p.outbound, 1, 5);
            first.hits() > 0
        }),
        "discovery never came through the name:\n{}\n{}",
        p.logs(),
        p.metrics()
    );
    assert!(p.logs().contains("control-plane name resolves again"), "{}", p.logs());
    let asked = dns.asked();
    // ndots:5 and the search list: the short name was tried with each search domain.
    assert!(
        asked.iter().any(|n| n == "weft-destination.weft.svc.weft.svc.cluster.local"),
        "{asked:?}"
    );
    assert!(asked.iter().any(|n| n == DST_NAME), "{asked:?}");

    // The service moves to another address: the proxy resolves again when it reconnects.
    let d2 = destination(&dir, ([127, 0, 0, 2], port).into(), original.addr.port(), &[&second]);
    dns.set(DST_NAME, Ipv4Addr::new(127, 0, 0, 2));
    kill(d1);
    assert!(
        eventually(Duration::from_secs(30), || {
            let _ = load(p.outbound, 1, 5);
            second.hits() > 0
        }),
        "the proxy did not follow the moved destination service:\n{}",
        p.logs()
    );
    let statuses = load(p.outbound, 2, 40);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    kill(d2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn localhost_as_the_destination_address_discovers_and_balances() {
    let dir = temp_dir("localhost");
    // Nothing answers DNS here: `localhost` is answered by the proxy's resolver itself
    // (RFC 6761), with no C library and no query.
    let conf = dir.join("resolv.conf");
    std::fs::write(&conf, "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n").expect("conf");
    let original = Backend::start(Duration::ZERO, None);
    let endpoints = [Backend::start(Duration::ZERO, None), Backend::start(Duration::ZERO, None)];
    let port = free_port();
    let d = destination(
        &dir,
        ([127, 0, 0, 1], port).into(),
        original.addr.port(),
        &[&endpoints[0], &endpoints[1]],
    );
    let (target, addr, conf) =
        (original.addr.to_string(), format!("localhost:{port}"), conf.display().to_string());
    let p = Proxy::start(&[
        "--outbound-orig-dst-addr",
        &target,
        "--destination-addr",
        &addr,
        "--dns-resolv-conf",
        &conf,
        "--destination-first-update-timeout",
        "3s",
    ]);
    let statuses = load(p.outbound, 4, 400);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let (a, b) = (endpoints[0].hits(), endpoints[1].hits());
    assert!(a > 50 && b > 50, "not balanced over both endpoints: {a} and {b}\n{}", p.logs());
    assert_eq!(original.hits(), 0, "traffic went around discovery");
    assert!(
        metric(&p.metrics(), "outbound_discovery_lookups_total", &[("result", "balanced")]) >= 1.0
    );
    assert_eq!(
        metric(&p.metrics(), "control_plane_resolve_errors_total", &[("service", "destination")]),
        0.0
    );
    kill(d);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_name_that_does_not_resolve_leaves_the_proxy_forwarding() {
    let dir = temp_dir("nxdomain");
    let conf = dir.join("resolv.conf");
    std::fs::write(&conf, "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n").expect("conf");
    let original = Backend::start(Duration::ZERO, None);
    let target = original.addr.to_string();
    let conf = conf.display().to_string();
    // `.invalid` never resolves (RFC 6761), wherever the test runs.
    let p = Proxy::start(&[
        "--outbound-orig-dst-addr",
        &target,
        "--destination-addr",
        "weft-destination.weft.invalid:8086",
        "--dns-resolv-conf",
        &conf,
        "--destination-first-update-timeout",
        "300ms",
    ]);
    for _ in 0..3 {
        let statuses = load(p.outbound, 2, 10);
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    }
    assert!(original.hits() >= 30);
    let m = p.metrics();
    assert!(
        metric(&m, "control_plane_resolve_errors_total", &[("service", "destination")]) >= 1.0,
        "{m}"
    );
    assert!(metric(&m, "outbound_discovery_lookups_total", &[("result", "unavailable")]) >= 1.0);
    let logs = p.logs();
    assert!(
        logs.contains("cannot resolve a control-plane service's name")
            && logs.contains("weft-destination.weft.invalid:8086"),
        "{logs}"
    );
    // Said once, not at every retry.
    assert_eq!(logs.matches("cannot resolve a control-plane service's name").count(), 1, "{logs}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_control_plane_addresses_fail_at_start() {
    for (flag, value, expect) in [
        ("--destination-addr", "weft-destination.weft.svc.cluster.local", "has no port"),
        ("--destination-addr", ":8086", "has no host"),
        ("--destination-addr", "weft destination:8086", "neither an IP address nor a DNS name"),
        ("--identity-addr", "weft-identity.weft.svc.cluster.local:http", "is not a port"),
    ] {
        let out = Command::new(proxy_bin())
            .args([flag, value])
            .env("WEFT_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0")
            .output()
            .expect("weft-proxy");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} was accepted");
        assert!(err.contains(expect) && err.contains(flag), "{flag} {value}: {err}");
    }
    // The env var is checked the same way (the injector sets it).
    let out = Command::new(proxy_bin())
        .env("WEFT_PROXY_DESTINATION_ADDR", "weft-destination")
        .output()
        .expect("weft-proxy");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no port"));
    // A resolv.conf that cannot be read, when a name needs it: a clear error at start.
    let out = Command::new(proxy_bin())
        .args(["--destination-addr", "weft-destination.weft.svc.cluster.local:8086"])
        .args(["--dns-resolv-conf", "/nonexistent/resolv.conf"])
        .args(["--admin-listen-addr", "127.0.0.1:0", "--inbound-listen-addr", "127.0.0.1:0"])
        .args(["--outbound-listen-addr", "127.0.0.1:0"])
        .output()
        .expect("weft-proxy");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("/nonexistent/resolv.conf"), "{err}");
    // The destination service's own identity settings, too.
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["destination", "--identity-addr", "weft-identity.weft.svc.cluster.local"])
        .output()
        .expect("weft destination");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no port"));
}

/// With identity on, discovery and policy traffic leaves the host only over TLS: an address
/// that is not loopback with no service name stops the proxy at start, saying which setting
/// to add; with the name the proxy starts; loopback without one still starts, with a warning
/// (tests and benches run so).
#[test]
fn with_identity_control_plane_addresses_off_loopback_need_the_services_name() {
    let dir = temp_dir("svc-name");
    let d = dir.display().to_string();
    let (ok, _, err) =
        run(Command::new(env!("CARGO_BIN_EXE_weft")).args(["certs", "generate", "--out-dir", &d]));
    assert!(ok, "weft certs generate: {err}");
    std::fs::write(dir.join("web.token"), "web-token").expect("token");
    // Nothing answers there: the proxy starts and waits for its certificate.
    let identity_addr = format!("127.0.0.1:{}", free_port());
    let identity = [
        "--identity-name",
        "web.prod.serviceaccount.identity.weft.cluster.local",
        "--identity-addr",
        &identity_addr,
        "--identity-svc-name",
        "identity.weft.serviceaccount.identity.weft.cluster.local",
        "--identity-token-file",
        &format!("{d}/web.token"),
        "--identity-trust-anchors-file",
        &format!("{d}/ca.crt"),
    ];
    let svc = "weft-destination.weft.serviceaccount.identity.weft.cluster.local";
    let policy = |addr: &'static str| ["--policy-addr", addr, "--policy-workload", "prod:web-1"];
    let refused = [
        (vec!["--destination-addr", "10.0.0.1:8086"], "DESTINATION", "destination"),
        (vec!["--destination-addr", "[fd00::1]:8086"], "DESTINATION", "destination"),
        // A name may resolve anywhere, `localhost` too.
        (
            vec!["--destination-addr", "weft-destination.weft.svc:8086"],
            "DESTINATION",
            "destination",
        ),
        (vec!["--destination-addr", "localhost:8086"], "DESTINATION", "destination"),
        (policy("10.0.0.1:8090").to_vec(), "POLICY", "policy"),
        // The destination named, the policy service (same address) not.
        (
            [
                &["--destination-addr", "10.0.0.1:8086", "--destination-svc-name", svc][..],
                &policy("10.0.0.1:8086"),
            ]
            .concat(),
            "POLICY",
            "policy",
        ),
    ];
    for (flags, var, flag) in refused {
        let out = Command::new(proxy_bin())
            .args(identity)
            .args(&flags)
            .args(["--admin-listen-addr", "127.0.0.1:0", "--inbound-listen-addr", "127.0.0.1:0"])
            .args(["--outbound-listen-addr", "127.0.0.1:0"])
            .output()
            .expect("weft-proxy");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?} was accepted: {err}");
        let want = format!("WEFT_PROXY_{var}_SVC_NAME (--{flag}-svc-name) is not set");
        assert!(err.contains(&want) && err.contains(flags[1]), "{flags:?}: {err}");
    }
    // The same addresses with the names set: past that check, the proxy serves (a lookup
    // would go over TLS; none is made here).
    let named = [
        &["--destination-addr", "10.0.0.1:8086", "--destination-svc-name", svc][..],
        &policy("10.0.0.1:8086"),
        &["--policy-svc-name", svc],
        &identity,
    ]
    .concat();
    let p = Proxy::start(&named);
    assert!(!p.logs().contains("is not set"), "{}", p.logs());
    drop(p);
    // Loopback without a name: plaintext, as before, said at start.
    let loopback =
        [&["--destination-addr", "127.0.0.1:8086"][..], &policy("[::1]:8090"), &identity].concat();
    let p = Proxy::start(&loopback);
    let logs = p.logs();
    for service in ["destination", "policy"] {
        assert!(
            logs.lines().any(|l| l.contains("its connection, on loopback, is plaintext")
                && l.contains(&format!("\"service\":\"{service}\""))),
            "{service}: {logs}"
        );
    }
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}
