//! Transparent interception for real: two "pods" (network namespaces joined by a veth
//! pair), each with the rules of `weft-proxy init` and a `weft-proxy` running as uid 2102;
//! apps and real clients (curl, openssl) in them; the proxies' own metrics show what
//! went through them.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    netns::{Netns, proxy_bin, require_root, veth_pair_with},
    support::*,
};

const CLIENT_IP: &str = "10.77.0.1";
const SERVER_IP: &str = "10.77.0.2";
const SERVER_IP6: &str = "fd77::2";

/// App ports in the server pod.
const HTTP: u16 = 8080;
const ECHO: u16 = 7000;
const HALF_CLOSE: u16 = 7001;
const MYSQL: u16 = 3306; // in the default opaque list
const SMTP: u16 = 2525; // speaks first, not in the opaque list
const TLS: u16 = 8443;
const SKIPPED: u16 = 9000; // skipped by both pods' init rules

const BANNER: &[u8] = b"220 mail.test ESMTP\r\n";

/// Two meshed pods; fields drop in reverse order: proxies, then namespaces.
struct Mesh {
    client_proxy: Proxy,
    server_proxy: Proxy,
    client: Netns,
    server: Netns,
    _tls_server: TlsServer,
}

/// `openssl s_server` in the server pod, and its key and certificate.
struct TlsServer {
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_proxy(ns: &Netns) -> Proxy {
    start_proxy_with(ns, &[])
}

/// A proxy in `ns` as uid 2102, with `envs` (e.g. its identity settings; they may change
/// the silent window of 200 ms and the detect timeout of 30 s).
fn start_proxy_with(ns: &Netns, envs: &[(String, String)]) -> Proxy {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.name,
        "setpriv",
        "--reuid",
        "2102",
        "--regid",
        "2102",
        "--clear-groups",
        "--",
    ])
    .arg(proxy_bin())
    .env("WEFT_PROXY_DETECT_SILENT_WINDOW", "200ms")
    .env("WEFT_PROXY_DETECT_TIMEOUT", "30s")
    .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Proxy::start_cmd(cmd)
}

fn listen(ns: &Netns, port: u16) -> TcpListener {
    // `[::]` takes IPv4 too (bindv6only is off by default).
    ns.run_in(|| listener((std::net::Ipv6Addr::UNSPECIFIED, port).into()))
}

impl Mesh {
    fn new() -> Mesh {
        require_root();
        let client = Netns::new("weft-client");
        let server = Netns::new("weft-server");
        veth_pair_with(
            &client,
            &[&format!("{CLIENT_IP}/24"), "fd77::1/64"],
            &server,
            &[&format!("{SERVER_IP}/24"), &format!("{SERVER_IP6}/64")],
        );
        let bin = proxy_bin();
        let bin = bin.to_str().expect("utf-8 path");
        let skip = SKIPPED.to_string();
        client.exec_ok(bin, &["init", "--skip-outbound-ports", &skip]);
        server.exec_ok(bin, &["init", "--skip-inbound-ports", &skip]);

        http_server(listen(&server, HTTP));
        serve(listen(&server, ECHO), echo);
        serve(listen(&server, HALF_CLOSE), count_then_reply);
        serve(listen(&server, MYSQL), echo);
        serve(listen(&server, SMTP), banner(BANNER));
        serve(listen(&server, SKIPPED), echo);
        let tls_server = start_tls_server(&server);

        // The veth link and IPv6 neighbour discovery take a moment after setup; wait until
        // the server pod answers on the port no proxy touches, over both families.
        for ip in [SERVER_IP, SERVER_IP6] {
            let addr = SocketAddr::new(ip.parse().expect("ip"), SKIPPED);
            let up = eventually(Duration::from_secs(10), || {
                client.run_in(|| {
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                })
            });
            assert!(up, "the server pod is unreachable at {addr}");
        }
        let server_proxy = start_proxy(&server);
        let client_proxy = start_proxy(&client);
        Mesh { client_proxy, server_proxy, client, server, _tls_server: tls_server }
    }

    fn client_metrics(&self) -> String {
        self.client.run_in(|| scrape(self.client_proxy.admin))
    }

    fn server_metrics(&self) -> String {
        self.server.run_in(|| scrape(self.server_proxy.admin))
    }

    /// A TCP connection from an app in the client pod.
    fn connect(&self, addr: SocketAddr) -> TcpStream {
        let s = self.client.run_in(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)));
        let s = s.unwrap_or_else(|e| panic!("connect to {addr}: {e}\n{}", self.logs()));
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        s
    }

    fn logs(&self) -> String {
        format!(
            "client proxy:\n{}\nserver proxy:\n{}\n{}",
            self.client_proxy.logs(),
            self.server_proxy.logs(),
            self.server.logs()
        )
    }

    /// Both proxies opened a connection to `target` with `protocol` (client side: outbound,
    /// server side: inbound).
    fn went_through_both(&self, target: &str, protocol: &str) -> bool {
        eventually(Duration::from_secs(5), || {
            let labels = |d| {
                [("direction", d), ("peer", "src"), ("target_addr", target), ("protocol", protocol)]
            };
            metric(&self.client_metrics(), "tcp_open_total", &labels("outbound")) >= 1.0
                && metric(&self.server_metrics(), "tcp_open_total", &labels("inbound")) >= 1.0
        })
    }
}

/// Two IPv4-only pods joined by a veth pair, the server pod with `weft-proxy init`'s rules
/// (plus `server_init` flags), the client pod too when `client_init`; returns the pods and
/// the server pod's interface.
fn ipv4_pods(prefix: &str, client_init: bool, server_init: &[&str]) -> (Netns, Netns, String) {
    require_root();
    let client = Netns::new(&format!("{prefix}c"));
    let server = Netns::new(&format!("{prefix}s"));
    let (_, server_if) = veth_pair_with(
        &client,
        &[&format!("{CLIENT_IP}/24")],
        &server,
        &[&format!("{SERVER_IP}/24")],
    );
    let bin = proxy_bin();
    let bin = bin.to_str().expect("utf-8 path");
    if client_init {
        client.exec_ok(bin, &["init", "--ipv6", "false"]);
    }
    server.exec_ok(bin, &[&["init", "--ipv6", "false"][..], server_init].concat());
    (client, server, server_if)
}

fn start_tls_server(ns: &Netns) -> TlsServer {
    let dir = std::env::temp_dir().join(format!("weft-e2e-ns-tls-{}", ns.name));
    let (key, cert) = app_tls_cert(&dir);
    let port = TLS.to_string();
    let child = ns.spawn(
        "openssl",
        &[
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            &port,
            "-key",
            key.to_str().expect("utf8"),
            "-cert",
            cert.to_str().expect("utf8"),
        ],
        &[],
        None,
    );
    let addr: SocketAddr = ([127, 0, 0, 1], TLS).into();
    assert!(
        eventually(Duration::from_secs(10), || ns.run_in(|| TcpStream::connect(addr).is_ok())),
        "openssl s_server did not start: {}",
        ns.logs()
    );
    TlsServer { dir, child }
}

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn http1_h2_and_tls_are_intercepted_and_detected_on_both_sides() {
    let mesh = Mesh::new();
    let url = format!("http://{SERVER_IP}:{HTTP}/");
    let out = mesh.client.exec_ok("curl", &["-sS", "--max-time", "10", "--http1.1", &url]);
    assert_eq!(out, "hello HTTP/1.1\n");
    let out =
        mesh.client.exec_ok("curl", &["-sS", "--max-time", "10", "--http2-prior-knowledge", &url]);
    assert_eq!(out, "hello HTTP/2.0\n");
    let tls = format!("{SERVER_IP}:{TLS}");
    let out = mesh
        .client
        .exec("openssl", &["s_client", "-connect", &tls, "-servername", "app.test", "-brief"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CONNECTION ESTABLISHED"),
        "openssl s_client: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let http = format!("{SERVER_IP}:{HTTP}");
    assert!(
        mesh.went_through_both(&http, "http/1"),
        "http/1:\n{}\n{}",
        mesh.client_metrics(),
        mesh.server_metrics()
    );
    assert!(
        mesh.went_through_both(&http, "h2"),
        "h2:\n{}\n{}",
        mesh.client_metrics(),
        mesh.server_metrics()
    );
    assert!(
        mesh.went_through_both(&tls, "tls"),
        "tls:\n{}\n{}",
        mesh.client_metrics(),
        mesh.server_metrics()
    );
    assert!(
        mesh.client_proxy.logs().contains("app.test"),
        "SNI logged: {}",
        mesh.client_proxy.logs()
    );

    // The proxies' own upstream connections (uid 2102) were not redirected back into
    // them: no loops, and the server proxy's upstream went to the app directly.
    for m in [mesh.client_metrics(), mesh.server_metrics()] {
        assert_eq!(metric(&m, "outbound_tcp_errors_total", &[("error", "loop")]), 0.0, "{m}");
        assert_eq!(metric(&m, "inbound_tcp_errors_total", &[("error", "loop")]), 0.0, "{m}");
    }
    let s = mesh.server_metrics();
    assert_eq!(metric(&s, "tcp_open_total", &[("direction", "outbound")]), 0.0, "{s}");
    assert!(
        metric(
            &s,
            "tcp_open_total",
            &[("direction", "inbound"), ("peer", "dst"), ("target_addr", &http)]
        ) >= 2.0,
        "{s}"
    );
}

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn opaque_ports_server_first_protocols_and_half_close() {
    let mesh = Mesh::new();
    let server: std::net::IpAddr = SERVER_IP.parse().expect("ip");

    // An opaque port skips detection, though the bytes look like HTTP.
    let mut s = mesh.connect((server, MYSQL).into());
    let req = b"GET / HTTP/1.1\r\n\r\n";
    s.write_all(req).expect("write");
    let mut back = vec![0; req.len()];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(back, req);
    let mysql = format!("{SERVER_IP}:{MYSQL}");
    assert!(mesh.went_through_both(&mysql, "opaque"), "{}", mesh.client_metrics());
    assert_eq!(
        metric(
            &mesh.client_metrics(),
            "tcp_open_total",
            &[("target_addr", &mysql), ("protocol", "http/1")]
        ),
        0.0
    );

    // A server that speaks first, on a port nobody marked opaque: the banner arrives
    // after the silent windows (200 ms per proxy), far before the 30 s detect timeout.
    let started = Instant::now();
    let mut s = mesh.connect((server, SMTP).into());
    let mut got = vec![0; BANNER.len()];
    s.read_exact(&mut got).unwrap_or_else(|e| panic!("banner: {e}\n{}", mesh.logs()));
    let waited = started.elapsed();
    assert_eq!(got, BANNER);
    assert!(waited < Duration::from_secs(3), "the banner took {waited:?}");
    assert!(mesh.went_through_both(&format!("{SERVER_IP}:{SMTP}"), "opaque"));

    // Half-close: the client shuts its write side and still reads the answer.
    let mut s = mesh.connect((server, HALF_CLOSE).into());
    s.write_all(&[0u8; 100_000]).expect("write");
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut rsp = String::new();
    s.read_to_string(&mut rsp).expect("read after half-close");
    assert_eq!(rsp, "got 100000 bytes");
}

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn skipped_ports_bypass_both_proxies() {
    let mesh = Mesh::new();
    let server: std::net::IpAddr = SERVER_IP.parse().expect("ip");
    let mut s = mesh.connect((server, SKIPPED).into());
    s.write_all(b"\x00direct").expect("write");
    let mut back = [0u8; 7];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"\x00direct");
    // A connection that did go through, so that "not counted" is not "not scraped yet".
    let mut s = mesh.connect((server, ECHO).into());
    s.write_all(b"\x00meshed").expect("write");
    s.read_exact(&mut back).expect("echo");
    assert!(mesh.went_through_both(&format!("{SERVER_IP}:{ECHO}"), "opaque"));
    let skipped = format!("{SERVER_IP}:{SKIPPED}");
    for m in [mesh.client_metrics(), mesh.server_metrics()] {
        assert_eq!(metric(&m, "tcp_open_total", &[("target_addr", &skipped)]), 0.0, "{m}");
    }
}

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn ipv6_is_intercepted_with_its_original_destination() {
    let mesh = Mesh::new();
    let url = format!("http://[{SERVER_IP6}]:{HTTP}/");
    let out = mesh.client.exec("curl", &["-sS", "-g", "--max-time", "10", &url]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello HTTP/1.1\n",
        "curl: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        mesh.logs()
    );
    let target = format!("[{SERVER_IP6}]:{HTTP}");
    assert!(
        mesh.went_through_both(&target, "http/1"),
        "{}\n{}",
        mesh.client_metrics(),
        mesh.server_metrics()
    );
}

/// Control-plane ports in the server pod, left out of its redirect so the mesh's own
/// bootstrap does not depend on its proxy.
const IDENTITY_PORT: u16 = 18080;
const DESTINATION_PORT: u16 = 18086;
const DESTINATION_ADMIN_PORT: u16 = 18087;
const DOMAIN: &str = "serviceaccount.identity.weft.cluster.local";

#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn meshed_pods_talk_mtls_through_iptables_and_the_apps_own_tls_passes_through() {
    let skip = format!("{IDENTITY_PORT},{DESTINATION_PORT}");
    let (client, server, _) = ipv4_pods("weft-m", true, &["--skip-inbound-ports", &skip]);
    http_server(listen(&server, HTTP));
    serve(listen(&server, SMTP), banner(BANNER));
    let tls_server = start_tls_server(&server);

    // The control plane, in the server pod: a fresh PKI, static tokens, static endpoints.
    let dir = std::env::temp_dir().join(format!("weft-e2e-nsmtls-{}", server.name));
    std::fs::create_dir_all(&dir).expect("dir");
    let d = dir.display().to_string();
    let weft = env!("CARGO_BIN_EXE_weft");
    let (ok, _, err) = run(Command::new(weft).args(["certs", "generate", "--out-dir", &d]));
    assert!(ok, "{err}");
    std::fs::write(
        dir.join("tokens.yaml"),
        "c-token: prod/client\nw-token: prod/web\nd-token: weft/weft-destination\n",
    )
    .expect("tokens");
    std::fs::write(dir.join("client.token"), "c-token").expect("token");
    std::fs::write(dir.join("web.token"), "w-token").expect("token");
    std::fs::write(dir.join("destination.token"), "d-token").expect("token");
    let web = format!("web.prod.{DOMAIN}");
    let client_id = format!("client.prod.{DOMAIN}");
    std::fs::write(
        dir.join("endpoints.yaml"),
        format!(
            "services:\n  - name: web\n    namespace: prod\n    ports:\n      - port: {HTTP}\n        endpoints:\n          - address: {SERVER_IP}:{HTTP}\n            identity: {web}\n            protocolHint: h2\n      - port: {SMTP}\n        endpoints:\n          - address: {SERVER_IP}:{SMTP}\n            identity: {web}\n"
        ),
    )
    .expect("endpoints");
    let identity_listen = format!("0.0.0.0:{IDENTITY_PORT}");
    let destination_listen = format!("0.0.0.0:{DESTINATION_PORT}");
    let destination_admin: SocketAddr = ([127, 0, 0, 1], DESTINATION_ADMIN_PORT).into();
    // The client proxy reaches it across the pods' network: with an identity of its own it
    // serves TLS, as the proxy requires off loopback.
    let destination_svc = format!("weft-destination.weft.{DOMAIN}");
    let mut control_plane = [
        server.spawn(
            weft,
            &[
                "identity",
                "--listen-addr",
                &identity_listen,
                "--admin-addr",
                "127.0.0.1:0",
                "--issuer-cert",
                &format!("{d}/issuer.crt"),
                "--issuer-key",
                &format!("{d}/issuer.key"),
                "--trust-bundle",
                &format!("{d}/ca.crt"),
                "--token-validator",
                "static",
                "--static-tokens",
                &format!("{d}/tokens.yaml"),
            ],
            &[],
            None,
        ),
        server.spawn(
            weft,
            &[
                "destination",
                "--source",
                "static",
                "--static-file",
                &format!("{d}/endpoints.yaml"),
                "--listen-addr",
                &destination_listen,
                "--admin-addr",
                &destination_admin.to_string(),
                "--identity-name",
                &destination_svc,
                "--identity-addr",
                &format!("127.0.0.1:{IDENTITY_PORT}"),
                "--identity-svc-name",
                &format!("identity.weft.{DOMAIN}"),
                "--identity-token-file",
                &format!("{d}/destination.token"),
                "--identity-trust-anchors-file",
                &format!("{d}/ca.crt"),
            ],
            &[],
            None,
        ),
    ];
    for port in [IDENTITY_PORT, DESTINATION_PORT] {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        assert!(
            eventually(Duration::from_secs(20), || server
                .run_in(|| TcpStream::connect(addr).is_ok())),
            "control plane port {port} never opened:\n{}",
            server.logs()
        );
    }
    assert!(
        eventually(Duration::from_secs(20), || server.run_in(|| admin_request(
            destination_admin,
            "GET",
            "/ready",
            ""
        )
        .0 == 200)),
        "the destination service never got its certificate:\n{}",
        server.logs()
    );
    let identity_env = |name: &str, token: &str, identity_addr: String| {
        vec![
            ("WEFT_PROXY_IDENTITY_NAME".to_string(), name.to_string()),
            ("WEFT_PROXY_IDENTITY_ADDR".to_string(), identity_addr),
            ("WEFT_PROXY_IDENTITY_SVC_NAME".to_string(), format!("identity.weft.{DOMAIN}")),
            ("WEFT_PROXY_IDENTITY_TOKEN_FILE".to_string(), format!("{d}/{token}")),
            ("WEFT_PROXY_IDENTITY_TRUST_ANCHORS_FILE".to_string(), format!("{d}/ca.crt")),
        ]
    };
    // The server proxy's own silent window is long: a meshed client that is silent (its
    // proxy waited its 200 ms for a silent client) must not wait it too.
    let mut server_env = identity_env(&web, "web.token", format!("127.0.0.1:{IDENTITY_PORT}"));
    server_env.push(("WEFT_PROXY_DETECT_SILENT_WINDOW".to_string(), "10s".to_string()));
    let server_proxy = start_proxy_with(&server, &server_env);
    let mut client_env =
        identity_env(&client_id, "client.token", format!("{SERVER_IP}:{IDENTITY_PORT}"));
    client_env.push((
        "WEFT_PROXY_DESTINATION_ADDR".to_string(),
        format!("{SERVER_IP}:{DESTINATION_PORT}"),
    ));
    client_env.push(("WEFT_PROXY_DESTINATION_SVC_NAME".to_string(), destination_svc.clone()));
    let client_proxy = start_proxy_with(&client, &client_env);
    for (ns, p) in [(&client, &client_proxy), (&server, &server_proxy)] {
        assert!(
            eventually(Duration::from_secs(30), || ns
                .run_in(|| admin_request(p.admin, "GET", "/ready", "").0 == 200)),
            "a proxy never got its certificate:\n{}",
            p.logs()
        );
    }

    // The app's plain HTTP/1.1 leaves as mTLS and arrives as HTTP/1.1 with the identity.
    let url = format!("http://{SERVER_IP}:{HTTP}/echo");
    let out = client.exec_ok("curl", &["-sS", "--max-time", "10", "--http1.1", &url]);
    assert!(out.starts_with("HTTP/1.1 GET /echo"), "{out}");
    assert!(
        out.contains(&format!("l5d-client-id: {client_id}\n")),
        "{out}\n{}\n{}",
        client_proxy.logs(),
        server_proxy.logs()
    );
    let c = client.run_in(|| scrape(client_proxy.admin));
    let s = server.run_in(|| scrape(server_proxy.admin));
    assert!(
        metric(
            &c,
            "request_total",
            &[("direction", "outbound"), ("tls", "true"), ("server_id", &web)]
        ) >= 1.0,
        "{c}"
    );
    assert!(
        metric(
            &s,
            "tcp_open_total",
            &[
                ("direction", "inbound"),
                ("peer", "src"),
                ("tls", "true"),
                ("client_id", &client_id)
            ]
        ) >= 1.0,
        "{s}"
    );
    assert!(
        metric(&s, "request_total", &[("direction", "inbound"), ("client_id", &client_id)]) >= 1.0,
        "{s}"
    );
    // A server that speaks first, on a port nobody marked opaque, behind the meshed
    // endpoint (no opaque transport port): the banner crosses as mTLS after the client
    // proxy's silent window, not after the server proxy's 10 s too.
    let started = Instant::now();
    let banner_heard = client.run_in(|| {
        let mut s = TcpStream::connect((SERVER_IP, SMTP)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let mut got = vec![0; BANNER.len()];
        s.read_exact(&mut got).map(|()| got)
    });
    let waited = started.elapsed();
    let got = banner_heard.unwrap_or_else(|e| {
        panic!("banner: {e}\n{}\n{}", client_proxy.logs(), server_proxy.logs())
    });
    assert_eq!(got, BANNER);
    assert!(waited < Duration::from_secs(5), "the banner took {waited:?}");
    let smtp = format!("{SERVER_IP}:{SMTP}");
    let s = server.run_in(|| scrape(server_proxy.admin));
    let meshed_opaque = [
        ("direction", "inbound"),
        ("peer", "src"),
        ("tls", "true"),
        ("client_id", &client_id),
        ("protocol", "opaque"),
        ("target_addr", &smtp),
    ];
    assert_eq!(metric(&s, "tcp_open_total", &meshed_opaque), 1.0, "{s}");

    // Discovery crossed the pods' network as mTLS, with the client's identity.
    let dm = server.run_in(|| scrape(destination_admin));
    assert!(
        metric(&dm, "destination_tls_connections_total", &[("client_id", &client_id)]) >= 1.0,
        "{dm}"
    );

    // The app's own TLS (SNI app.test, not the proxy's identity) passes through untouched.
    let tls = format!("{SERVER_IP}:{TLS}");
    let out = client
        .exec("openssl", &["s_client", "-connect", &tls, "-servername", "app.test", "-brief"]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("CONNECTION ESTABLISHED")
            && (text.contains("CN=app.test") || text.contains("CN = app.test")),
        "{text}"
    );
    let s = server.run_in(|| scrape(server_proxy.admin));
    assert!(
        metric(
            &s,
            "tcp_open_total",
            &[("direction", "inbound"), ("protocol", "tls"), ("target_addr", &tls)]
        ) >= 1.0,
        "{s}"
    );
    drop(tls_server);
    for c in &mut control_plane {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The inbound policy with real redirection: the client's address the proxy judges is the
/// real one (not the proxy's own), and an unmeshed "kubelet" in another pod still gets the
/// pod's probe through a `deny` policy.
#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn the_inbound_policy_judges_the_real_client_address_and_lets_probes_through() {
    // The client pod has no proxy (like the kubelet, or a pod outside the mesh).
    let (client, server, _) = ipv4_pods("weft-p", false, &[]);
    http_server(listen(&server, HTTP));
    serve(listen(&server, ECHO), echo);
    let curl = |path: &str| -> String {
        let url = format!("http://{SERVER_IP}:{HTTP}{path}");
        let out = client.exec(
            "curl",
            &["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", &url],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let env = |policy: &str, networks: &str| {
        vec![
            ("WEFT_PROXY_INBOUND_DEFAULT_POLICY".to_string(), policy.to_string()),
            ("WEFT_PROXY_CLUSTER_NETWORKS".to_string(), networks.to_string()),
            ("WEFT_PROXY_INBOUND_PROBE_ROUTES".to_string(), format!("{HTTP}:/")),
        ]
    };

    let proxy = start_proxy_with(&server, &env("deny", "10.0.0.0/8"));
    assert_eq!(curl("/"), "200", "the probe\n{}", proxy.logs());
    assert_eq!(curl("/echo"), "403", "{}", proxy.logs());
    let echo_addr: SocketAddr = format!("{SERVER_IP}:{ECHO}").parse().expect("addr");
    let mut s = client
        .run_in(|| TcpStream::connect_timeout(&echo_addr, Duration::from_secs(5)))
        .expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let _ = s.write_all(b"hello?");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "a denied connection reached the app: {got:?}");
    let m = server.run_in(|| scrape(proxy.admin));
    let target = format!("{SERVER_IP}:{HTTP}");
    let deny = [("srv_name", "deny"), ("target_addr", target.as_str())];
    assert_eq!(metric(&m, "inbound_http_authz_deny_total", &deny), 1.0, "{m}");
    assert_eq!(metric(&m, "inbound_tcp_authz_deny_total", &[("srv_name", "deny")]), 1.0, "{m}");
    drop(proxy);

    // cluster-unauthenticated: the client's real address decides.
    for (networks, want) in [("10.77.0.0/24", "200"), ("10.78.0.0/24", "403")] {
        let proxy = start_proxy_with(&server, &env("cluster-unauthenticated", networks));
        assert_eq!(curl("/echo"), want, "cluster networks {networks}\n{}", proxy.logs());
    }
}

/// A peer pod that vanishes without a word (its node lost: no FIN, no RST) does not leave
/// connections open forever: TCP keepalive on the inbound side's accepted connections and
/// the outbound side's upstream ones finds it dead, and both proxies close their ends.
#[test]
#[ignore = "needs root: creates network namespaces and iptables rules"]
fn keepalive_closes_connections_to_a_peer_that_vanished() {
    let (client, server, server_if) = ipv4_pods("weft-k", true, &[]);
    serve(listen(&server, ECHO), echo);
    let ka = |side: &str| (format!("WEFT_PROXY_{side}_KEEPALIVE"), "1s".to_string());
    let server_proxy = start_proxy_with(&server, &[ka("INBOUND_ACCEPT")]);
    let client_proxy = start_proxy_with(&client, &[ka("OUTBOUND_CONNECT")]);

    let addr: SocketAddr = format!("{SERVER_IP}:{ECHO}").parse().expect("addr");
    let mut s = client
        .run_in(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
        .expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    s.write_all(b"ping").expect("write");
    let mut back = [0u8; 4];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"ping");

    // The server pod drops off the network silently.
    for chain in [["-I", "INPUT", "-i"], ["-I", "OUTPUT", "-o"]] {
        server.exec_ok("iptables", &[&chain[..], &[&server_if, "-j", "DROP"]].concat());
    }
    let cut = Instant::now();
    // The client proxy finds its upstream dead (1 s idle + 3 unanswered probes) and
    // closes the app's connection: the app's read ends instead of hanging.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let waited = cut.elapsed();
    assert!(waited < Duration::from_secs(25), "the app waited {waited:?}");
    let open = |m: &str, direction: &str, peer: &str| {
        metric(m, "tcp_open_connections", &[("direction", direction), ("peer", peer)])
    };
    let timed_out = |m: &str, direction: &str, peer: &str| {
        let labels = [("direction", direction), ("peer", peer), ("errno", "ETIMEDOUT")];
        metric(m, "tcp_close_total", &labels)
    };
    let m = client.run_in(|| scrape(client_proxy.admin));
    assert_eq!(timed_out(&m, "outbound", "dst"), 1.0, "{m}");
    assert_eq!(open(&m, "outbound", "dst"), 0.0, "{m}");
    // And the server proxy finds its client dead the same way.
    let server_done = eventually(Duration::from_secs(15), || {
        let m = server.run_in(|| scrape(server_proxy.admin));
        timed_out(&m, "inbound", "src") == 1.0 && open(&m, "inbound", "src") == 0.0
    });
    assert!(server_done, "{}", server.run_in(|| scrape(server_proxy.admin)));
}
