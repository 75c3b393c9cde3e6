//! Transparent mTLS end to end on loopback: a fresh PKI from `weft certs generate`, the real
//! `weft identity` (static tokens) and `weft destination` (static file, serving over TLS
//! with a certificate of its own), a client-side and a server-side `weft-proxy` that obtain
//! their certificates; discovery is mTLS to the destination service's identity, app traffic
//! is mTLS between the proxies, checked from the app (`l5d-client-id`), the proxies' and the
//! destination service's metrics, and openssl.

use std::{
    io::{BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::support::*;

const DOMAIN: &str = "serviceaccount.identity.weft.cluster.local";
const SVC_NAME: &str = "identity.weft.serviceaccount.identity.weft.cluster.local";
/// The destination service's own identity (service account `weft-destination`, as the
/// injector's `WEFT_PROXY_DESTINATION_SVC_NAME` expects).
pub(crate) const DST_SVC_NAME: &str =
    "weft-destination.weft.serviceaccount.identity.weft.cluster.local";

pub(crate) fn id(sa: &str) -> String {
    format!("{sa}.prod.{DOMAIN}")
}

/// A control-plane process of ours, killed on drop.
pub(crate) struct Child_(Child);

impl Drop for Child_ {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `weft <args>` and returns it with the address its JSON "serving" line gives
/// under `field`.
fn start_weft(args: &[&str], envs: &[(&str, &str)], field: &'static str) -> (Child_, SocketAddr) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.args(args).envs(envs.iter().copied());
    let serving = Serving::start(cmd, &format!("weft {args:?}"), Duration::from_secs(30));
    let addr = serving.addr(field);
    (Child_(serving.child), addr)
}

/// `weft destination` over plaintext (no identity) serving the static `file`.
fn start_plain_destination(file: &str) -> (Child_, SocketAddr) {
    let args = ["destination", "--source", "static", "--static-file", file];
    let addrs = ["--listen-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"];
    start_weft(&[&args[..], &addrs, &["--log-format", "json"]].concat(), &[], "grpc")
}

pub(crate) struct Mesh {
    pub(crate) dir: PathBuf,
    identity: Child_,
    pub(crate) identity_addr: SocketAddr,
    _destination: Child_,
    pub(crate) destination: SocketAddr,
    destination_admin: SocketAddr,
    http_client: Proxy,
    tcp_client: Proxy,
    server: Proxy,
    echo: SocketAddr,
    /// An app that speaks first: says `BANNER`, then echoes.
    banner: SocketAddr,
}

const BANNER: &[u8] = b"220 ready\r\n";

/// Flags of a client-side proxy with `sa`'s identity, whose outbound target is `target`.
fn client_args(
    dir: &Path,
    destination: &str,
    identity: &str,
    target: &str,
    sa: &str,
    token: &str,
) -> Vec<String> {
    [
        vec![
            "--outbound-orig-dst-addr".to_string(),
            target.to_string(),
            "--destination-addr".to_string(),
            destination.to_string(),
            "--destination-svc-name".to_string(),
            DST_SVC_NAME.to_string(),
        ],
        identity_args(dir, &id(sa), token, identity),
    ]
    .concat()
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `weft identity` signing with `pki/issuer.{crt,key}`, trusting `bundle`.
pub(crate) fn start_identity(
    pki: &Path,
    bundle: &Path,
    tokens: &Path,
    extra: &[&str],
) -> (Child_, SocketAddr) {
    start_identity_on("127.0.0.1:0", pki, bundle, tokens, extra)
}

/// Like `start_identity`, listening on `listen`.
pub(crate) fn start_identity_on(
    listen: &str,
    pki: &Path,
    bundle: &Path,
    tokens: &Path,
    extra: &[&str],
) -> (Child_, SocketAddr) {
    let p = |f: &str| pki.join(f).display().to_string();
    let (bundle, tokens) = (bundle.display().to_string(), tokens.display().to_string());
    let (cert, key) = (p("issuer.crt"), p("issuer.key"));
    let mut args = vec![
        "identity",
        "--listen-addr",
        listen,
        "--admin-addr",
        "127.0.0.1:0",
        "--token-validator",
        "static",
        "--static-tokens",
        &tokens,
        "--trust-bundle",
        &bundle,
        "--issuer-cert",
        &cert,
        "--issuer-key",
        &key,
    ];
    args.extend(extra);
    start_weft(&args, &[("WEFT_IDENTITY_LOG_FORMAT", "json")], "grpc")
}

pub(crate) fn identity_args<'a>(
    dir: &'a Path,
    name: &'a str,
    token: &'a str,
    identity: &'a str,
) -> Vec<String> {
    vec![
        "--identity-name".into(),
        name.into(),
        "--identity-addr".into(),
        identity.into(),
        "--identity-svc-name".into(),
        SVC_NAME.into(),
        "--identity-token-file".into(),
        dir.join(token).display().to_string(),
        "--identity-trust-anchors-file".into(),
        dir.join("ca.crt").display().to_string(),
    ]
}

pub(crate) fn start_proxy(args: Vec<String>) -> Proxy {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proxy::start(&args);
    assert!(
        eventually(Duration::from_secs(20), || admin_request(p.admin, "GET", "/ready", "").0
            == 200),
        "the proxy never became ready (no certificate?):\n{}",
        p.logs()
    );
    p
}

impl Mesh {
    pub(crate) fn new() -> Mesh {
        Mesh::with(&[])
    }

    /// `identity_extra`: more flags for `weft identity` (e.g. a short `--lifetime`).
    fn with(identity_extra: &[&str]) -> Mesh {
        Mesh::with_server(identity_extra, &[])
    }

    /// `server_extra`: more flags for the server-side proxy.
    fn with_server(identity_extra: &[&str], server_extra: &[&str]) -> Mesh {
        let dir = std::env::temp_dir().join(format!(
            "weft-e2e-mtls-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        let d = dir.display().to_string();
        let (ok, _, err) = run(Command::new(env!("CARGO_BIN_EXE_weft")).args([
            "certs",
            "generate",
            "--out-dir",
            &d,
        ]));
        assert!(ok, "weft certs generate: {err}");
        std::fs::write(
            dir.join("tokens.yaml"),
            "client-token: prod/client\ntcp-token: prod/tcp\nweb-token: prod/web\ndestination-token: weft/weft-destination\n",
        )
        .expect("tokens");
        for t in ["client", "tcp", "web", "destination"] {
            std::fs::write(dir.join(format!("{t}.token")), format!("{t}-token")).expect("token");
        }
        let (identity, identity_addr) =
            start_identity(&dir, &dir.join("ca.crt"), &dir.join("tokens.yaml"), identity_extra);
        let identity_addr = identity_addr.to_string();

        let app = http_server(local_listener());
        let echo = serve(local_listener(), crate::support::echo);
        let banner = serve(local_listener(), crate::support::banner(BANNER));
        let server = start_proxy(
            [
                vec!["--inbound-orig-dst-addr".to_string(), app.to_string()],
                identity_args(&dir, &id("web"), "web.token", &identity_addr),
                server_extra.iter().map(ToString::to_string).collect(),
            ]
            .concat(),
        );
        // web: HTTP, the endpoint is the server proxy's inbound (there are no iptables
        // here to redirect to it). db: opaque, reached through the opaque transport port.
        // smtp: a server that speaks first, on a port nobody marked opaque.
        let yaml = format!(
            "services:\n  - name: web\n    namespace: prod\n    clusterIPs: [10.96.0.40]\n    ports:\n      - port: 80\n        endpoints:\n          - address: {}\n            identity: {}\n            protocolHint: h2\n  - name: db\n    namespace: prod\n    clusterIPs: [10.96.0.41]\n    ports:\n      - port: 5432\n        endpoints:\n          - address: {}\n            identity: {}\n            opaqueTransportPort: {}\n            labels: {{pod: db-0}}\n  - name: smtp\n    namespace: prod\n    clusterIPs: [10.96.0.43]\n    ports:\n      - port: 2525\n        endpoints:\n          - address: {}\n            identity: {}\n            opaqueTransportPort: {}\n",
            server.inbound,
            id("web"),
            echo,
            id("web"),
            server.inbound.port(),
            banner,
            id("web"),
            server.inbound.port()
        );
        std::fs::write(dir.join("endpoints.yaml"), yaml).expect("endpoints");
        let (destination_child, dst_addr, destination_admin) =
            start_tls_destination(&dir, &format!("{d}/endpoints.yaml"), &identity_addr);
        let dst_addr = dst_addr.to_string();
        let client_args = |target: &str, sa: &str, token: &str| {
            client_args(&dir, &dst_addr, &identity_addr, target, sa, token)
        };
        let http_client = start_proxy(client_args("10.96.0.40:80", "client", "client.token"));
        let tcp_client = start_proxy(client_args("10.96.0.41:5432", "tcp", "tcp.token"));
        let identity_addr = identity_addr.parse().expect("identity address");
        let destination = dst_addr.parse().expect("destination address");
        Mesh {
            dir,
            identity,
            identity_addr,
            _destination: destination_child,
            destination,
            destination_admin,
            http_client,
            tcp_client,
            server,
            echo,
            banner,
        }
    }

    /// A client-side proxy with the `tcp` identity, whose outbound target is `target`.
    fn tcp_client_to(&self, target: &str) -> Proxy {
        let (dst, id) = (self.destination.to_string(), self.identity_addr.to_string());
        start_proxy(client_args(&self.dir, &dst, &id, target, "tcp", "tcp.token"))
    }
}

/// `weft destination` with an identity of its own (so serving over TLS), ready: its
/// certificate obtained. Returns it, its gRPC and its admin address.
fn start_tls_destination(
    dir: &Path,
    static_file: &str,
    identity_addr: &str,
) -> (Child_, SocketAddr, SocketAddr) {
    let (token, anchors) = (
        dir.join("destination.token").display().to_string(),
        dir.join("ca.crt").display().to_string(),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.args(["destination", "--source", "static", "--static-file", static_file])
        .args(["--listen-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args(["--log-format", "json", "--log", "info,weft_destination=debug"])
        .args(["--identity-name", DST_SVC_NAME, "--identity-addr", identity_addr])
        .args(["--identity-svc-name", SVC_NAME, "--identity-token-file", &token])
        .args(["--identity-trust-anchors-file", &anchors]);
    let serving = Serving::start(cmd, "weft destination (TLS)", Duration::from_secs(30));
    assert_eq!(serving.fields["tls"], true, "{}", serving.fields);
    let (grpc, admin) = (serving.addr("grpc"), serving.addr("admin"));
    assert!(
        eventually(Duration::from_secs(20), || admin_request(admin, "GET", "/ready", "").0 == 200),
        "the destination service never got its certificate:\n{}",
        serving.logs.lock().unwrap_or_else(|e| e.into_inner())
    );
    (Child_(serving.child), grpc, admin)
}

/// Sends `msg` to the echo app through `proxy` and reads as many bytes back.
fn echo_through(proxy: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("echo");
    back
}

pub(crate) fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64)
}

#[test]
fn http_between_meshed_proxies_is_mtls_and_the_app_learns_the_client_identity() {
    let mesh = Mesh::new();
    let url = format!("http://{}/echo", mesh.http_client.outbound);
    let (ok, out, err) = run(Command::new("curl").args([
        "-sS",
        "--http1.1",
        "-H",
        "l5d-client-id: spoofed.by.the.app",
        &url,
    ]));
    assert!(ok, "{err}\n{}\n{}", mesh.http_client.logs(), mesh.server.logs());
    // The app behind the server proxy sees HTTP/1.1, the proven client identity, and not
    // the header the client tried to send.
    assert!(out.starts_with("HTTP/1.1 GET /echo"), "{out}");
    assert!(out.contains(&format!("l5d-client-id: {}\n", id("client"))), "{out}");
    assert!(!out.contains("spoofed"), "{out}");

    let c = mesh.http_client.metrics();
    let web = id("web");
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
            &c,
            "tcp_open_total",
            &[("peer", "dst"), ("tls", "true"), ("server_id", &web), ("protocol", "h2")]
        ) >= 1.0,
        "{c}"
    );
    let s = mesh.server.metrics();
    let client = id("client");
    assert!(
        metric(
            &s,
            "tcp_open_total",
            &[("direction", "inbound"), ("peer", "src"), ("tls", "true"), ("client_id", &client)]
        ) >= 1.0,
        "{s}"
    );
    assert!(
        metric(&s, "request_total", &[("direction", "inbound"), ("client_id", &client)]) >= 1.0,
        "{s}"
    );
    assert!(metric(&s, "identity_cert_refreshes_total", &[]) >= 1.0, "{s}");
    assert!(metric(&s, "identity_cert_expiration_timestamp_seconds", &[]) > 1.7e9, "{s}");

    // Plaintext from outside the mesh straight to the app's proxy: served, not as mTLS,
    // and a forged client identity is stripped.
    let mut t = TcpStream::connect(mesh.server.inbound).expect("connect");
    t.write_all(
        b"GET /echo HTTP/1.1\r\nHost: web\r\nl5d-client-id: forged\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    let mut rsp = String::new();
    t.read_to_string(&mut rsp).expect("response");
    assert!(rsp.starts_with("HTTP/1.1 200") && !rsp.contains("forged"), "{rsp}");
}

#[test]
fn all_authenticated_lets_in_meshed_clients_only() {
    let mesh = Mesh::with_server(&[], &["--inbound-default-policy", "all-authenticated"]);
    // Meshed HTTP (HTTP/2 between the proxies) and meshed opaque TCP (transport header).
    let url = format!("http://{}/echo", mesh.http_client.outbound);
    let (ok, out, err) = run(Command::new("curl").args(["-sS", "--http1.1", &url]));
    assert!(ok && out.contains(&format!("l5d-client-id: {}\n", id("client"))), "{out}{err}");
    assert_eq!(echo_through(mesh.tcp_client.outbound, b"meshed"), b"meshed");
    // Plaintext from outside the mesh: 403.
    let url = format!("http://{}/echo", mesh.server.inbound);
    let (ok, out, err) = run(Command::new("curl").args(["-sSi", "--http1.1", &url]));
    assert!(ok && out.starts_with("HTTP/1.1 403"), "{out}{err}");

    let m = mesh.server.metrics();
    let (client, tcp) = (id("client"), id("tcp"));
    let policy = [("srv_kind", "default"), ("srv_name", "all-authenticated")];
    let allowed = [&policy[..], &[("authz_name", "all-authenticated"), ("tls", "true")]].concat();
    let http = [&allowed[..], &[("client_id", client.as_str())]].concat();
    assert_eq!(metric(&m, "inbound_http_authz_allow_total", &http), 1.0, "{m}");
    let opaque = [&allowed[..], &[("client_id", tcp.as_str())]].concat();
    assert_eq!(metric(&m, "inbound_tcp_authz_allow_total", &opaque), 1.0, "{m}");
    // An opaque connection leaves no HTTP series behind.
    let tcp_label = format!("client_id=\"{tcp}\"");
    let http_series = |l: &str| l.starts_with("inbound_http_authz_allow_total");
    assert!(!m.lines().any(|l| http_series(l) && l.contains(&tcp_label)), "{m}");
    let plaintext = [&policy[..], &[("no_tls_reason", "not_provided_by_remote")]].concat();
    assert_eq!(metric(&m, "inbound_http_authz_deny_total", &plaintext), 1.0, "{m}");
}

/// Only the `client` service account may call `web2`: a Server and an AuthorizationPolicy
/// requiring a MeshTLSAuthentication, from the destination's static file, enforced by
/// web2's proxy on the identities its mTLS clients prove.
#[test]
fn an_authorization_policy_admits_the_meshed_identities_it_names() {
    let Web2 { mesh: _mesh, web2, client, other } = web2_under(
        "  - apiVersion: policy.weft.dev/v1beta1\n    kind: Server\n    metadata: {name: web2-http, namespace: prod}\n    spec: {podSelector: {matchLabels: {app: web2}}, port: http}\n  - apiVersion: policy.weft.dev/v1beta1\n    kind: MeshTLSAuthentication\n    metadata: {name: clients, namespace: prod}\n    spec: {identityRefs: [{kind: ServiceAccount, name: client}]}\n  - apiVersion: policy.weft.dev/v1beta1\n    kind: AuthorizationPolicy\n    metadata: {name: web2-from-client, namespace: prod}\n    spec:\n      targetRef: {group: policy.weft.dev, kind: Server, name: web2-http}\n      requiredAuthenticationRefs: [{group: policy.weft.dev, kind: MeshTLSAuthentication, name: clients}]\n",
    );
    let get = |proxy: &Proxy| {
        let url = format!("http://{}/echo", proxy.outbound);
        let (ok, out, err) = run(Command::new("curl").args(["-sSi", "--http1.1", &url]));
        assert!(ok, "curl: {err}");
        out
    };
    // Until the file is re-read, web2 is unknown to discovery: wait for the meshed path.
    let allowed = eventually(Duration::from_secs(15), || {
        let out = get(&client);
        out.starts_with("HTTP/1.1 200") && out.contains(&id("client"))
    });
    assert!(allowed, "{}\n{}\n{}", get(&client), client.logs(), web2.logs());
    let out = get(&other);
    assert!(out.starts_with("HTTP/1.1 403"), "another service account got in: {out}");

    let m = web2.metrics();
    let (client_id, other_id) = (id("client"), id("tcp"));
    let server = [("srv_kind", "server"), ("srv_name", "web2-http"), ("tls", "true")];
    let allow = [
        &server[..],
        &[
            ("authz_kind", "authorizationpolicy"),
            ("authz_name", "web2-from-client"),
            ("client_id", client_id.as_str()),
        ],
    ]
    .concat();
    assert!(metric(&m, "inbound_http_authz_allow_total", &allow) >= 1.0, "{m}");
    let deny = [&server[..], &[("client_id", other_id.as_str())]].concat();
    assert_eq!(metric(&m, "inbound_http_authz_deny_total", &deny), 1.0, "{m}");
}

#[test]
fn opaque_tcp_goes_over_the_peers_inbound_port_with_a_transport_header() {
    let mesh = Mesh::new();
    let msg = b"\x00opaque through mTLS";
    assert_eq!(echo_through(mesh.tcp_client.outbound, msg), msg);
    let srv = mesh.server.metrics();
    let tcp = id("tcp");
    let echo = mesh.echo.to_string();
    assert!(
        metric(
            &srv,
            "tcp_open_total",
            &[
                ("direction", "inbound"),
                ("tls", "true"),
                ("client_id", &tcp),
                ("target_addr", &echo),
                ("protocol", "opaque")
            ]
        ) >= 1.0,
        "{srv}"
    );
    // The client's proxy counts its connection to the endpoint with the `dst_*` labels
    // discovery gave the endpoint (the service's and the static file's), as Linkerd does.
    let web = id("web");
    let endpoint = [
        ("direction", "outbound"),
        ("peer", "dst"),
        ("target_addr", &echo),
        ("protocol", "opaque"),
        ("tls", "true"),
        ("server_id", &web),
        ("dst_namespace", "prod"),
        ("dst_pod", "db-0"),
        ("dst_service", "db"),
    ];
    let closed = || metric(&mesh.tcp_client.metrics(), "tcp_close_total", &endpoint) == 1.0;
    assert!(eventually(Duration::from_secs(5), closed), "{}", mesh.tcp_client.metrics());
    let c = mesh.tcp_client.metrics();
    assert_eq!(metric(&c, "tcp_open_total", &endpoint), 1.0, "{c}");
    assert!(metric(&c, "tcp_write_bytes_total", &endpoint) > msg.len() as f64, "{c}");
    // The app's side of the connection is not the endpoint's.
    let app_side = |l: &&str| l.starts_with("tcp_") && l.contains("peer=\"src\"");
    assert!(!c.lines().filter(app_side).any(|l| l.contains("dst_")), "{c}");
}

/// A server that speaks first, on a port nobody marked opaque, behind a meshed endpoint:
/// the client's proxy opens its speculative connection (the client is silent) to the
/// endpoint over mTLS, as any opaque connection to it, so the banner reaches the client
/// and neither it nor what follows ever crosses in plaintext.
#[test]
fn a_server_that_speaks_first_is_reached_over_mtls() {
    let mesh = Mesh::new();
    let client = mesh.tcp_client_to("10.96.0.43:2525");
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut said = [0u8; BANNER.len()];
    s.read_exact(&mut said).unwrap_or_else(|e| panic!("no banner: {e}\n{}", client.logs()));
    assert_eq!(said, BANNER);
    let msg = b"EHLO client\r\n";
    s.write_all(msg).expect("write");
    let mut back = [0u8; 13];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(&back, msg);
    drop(s);

    let (banner, tcp, web) = (mesh.banner.to_string(), id("tcp"), id("web"));
    let inbound = [
        ("direction", "inbound"),
        ("tls", "true"),
        ("client_id", &tcp),
        ("target_addr", &banner),
        ("protocol", "opaque"),
    ];
    let srv = mesh.server.metrics();
    assert_eq!(metric(&srv, "tcp_open_total", &inbound), 1.0, "{srv}");
    let outbound = [
        ("direction", "outbound"),
        ("peer", "dst"),
        ("tls", "true"),
        ("server_id", &web),
        ("dst_service", "smtp"),
    ];
    let closed = || metric(&client.metrics(), "tcp_close_total", &outbound) == 1.0;
    assert!(eventually(Duration::from_secs(5), closed), "{}", client.metrics());
    let c = client.metrics();
    assert!(metric(&c, "tcp_read_bytes_total", &outbound) > 0.0, "{c}");
    let plaintext = [("direction", "outbound"), ("peer", "dst"), ("tls", "no_identity")];
    assert_eq!(metric(&c, "tcp_open_total", &plaintext), 0.0, "{c}");
}

/// Dials `to` (a proxy's inbound port) as a meshed peer with `sa`'s certificate (made by
/// openssl) and Linkerd's transport header naming `port`, sends `bytes`, and returns what
/// came back before the connection ended (or 5 s passed).
fn through_transport_header(
    mesh: &Mesh,
    sa: &str,
    to: SocketAddr,
    port: u16,
    bytes: &[u8],
) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    use weft_proxy::transport_header::{ALPN, TransportHeader};
    let (chain, _, key) = crate::admin::issue(&mesh.dir, sa);
    let chain = CertificateDer::pem_file_iter(&chain)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .expect("the chain");
    let key = PrivateKeyDer::from_pem_file(&key).expect("the key");
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(mesh.dir.join("ca.crt")).expect("anchors") {
        roots.add(ca.expect("anchor")).expect("anchor");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    config.alpn_protocols = vec![ALPN.to_vec()];
    let name = ServerName::try_from(id("web")).expect("name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
    let tcp = TcpStream::connect(to).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let header = TransportHeader { port, name: None, protocol: None }.encode();
    let mut got = Vec::new();
    if tls.write_all(&[&header[..], bytes].concat()).is_ok() {
        let mut buf = [0u8; 4096];
        while let Ok(n) = tls.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.len() >= bytes.len() && got.starts_with(bytes) {
                break;
            }
        }
    }
    got
}

#[test]
fn a_transport_header_cannot_name_the_proxys_own_listeners() {
    let mesh = Mesh::new();
    let server = &mesh.server;
    // The way in works: to the app's port, the bytes come back from the echo server.
    let ping = b"\x00ping";
    let echoed = through_transport_header(&mesh, "tcp", server.inbound, mesh.echo.port(), ping);
    assert_eq!(echoed, ping);
    // To the proxy's own admin port (here on the target's loopback IP, where the admin
    // server would take it for a local caller), and to its inbound and outbound ports:
    // closed without a word, counted.
    let get = b"GET /live HTTP/1.1\r\nhost: x\r\n\r\n";
    for port in [server.admin.port(), server.inbound.port(), server.outbound.port()] {
        let got = through_transport_header(&mesh, "tcp", server.inbound, port, get);
        assert!(got.is_empty(), "port {port}: {}", String::from_utf8_lossy(&got));
    }
    let m = server.metrics();
    assert_eq!(metric(&m, "inbound_tcp_errors_total", &[("error", "loop")]), 3.0, "{m}");
}

#[test]
fn openssl_sees_the_documented_chain_and_is_refused_without_a_client_certificate() {
    let mesh = Mesh::new();
    let connect = mesh.server.inbound.to_string();
    let ca = mesh.dir.join("ca.crt");
    let web = id("web");
    // No client certificate: the server's chain verifies to the anchor with the right
    // names, but the connection is refused.
    let out = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &connect,
            "-servername",
            &web,
            "-showcerts",
            "-verify_return_error",
            "-CAfile",
        ])
        .arg(&ca)
        .stdin(Stdio::piped())
        .output()
        .expect("openssl");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    let leaf = text
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|c| c.split("-----END CERTIFICATE-----").next())
        .expect("a certificate");
    let pem = format!("-----BEGIN CERTIFICATE-----{leaf}-----END CERTIFICATE-----\n");
    let leaf_file = mesh.dir.join("leaf.pem");
    std::fs::write(&leaf_file, pem).expect("write leaf");
    let (ok, san, err) = run(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName,extendedKeyUsage", "-in"])
        .arg(&leaf_file));
    assert!(ok, "{err}");
    assert!(san.contains(&format!("DNS:{web}")), "{san}");
    assert!(san.contains("URI:spiffe://cluster.local/ns/prod/sa/web"), "{san}");
    assert!(
        san.contains("TLS Web Server Authentication")
            && san.contains("TLS Web Client Authentication"),
        "{san}"
    );
    assert!(
        eventually(Duration::from_secs(5), || metric(
            &mesh.server.metrics(),
            "inbound_tcp_errors_total",
            &[("error", "tls_handshake")]
        ) >= 1.0),
        "a handshake without a client certificate was not refused:\n{text}\n{}",
        mesh.server.metrics()
    );

    // A client certificate from another trust anchor: refused too.
    let (other_key, other_cert) = self_signed_cert(
        &mesh.dir.join("other"),
        "intruder",
        "intruder",
        "DNS:intruder.prod.serviceaccount.identity.weft.cluster.local",
    );
    let before =
        metric(&mesh.server.metrics(), "inbound_tcp_errors_total", &[("error", "tls_handshake")]);
    let _ = Command::new("openssl")
        .args(["s_client", "-connect", &connect, "-servername", &web, "-cert"])
        .arg(&other_cert)
        .arg("-key")
        .arg(&other_key)
        .stdin(Stdio::piped())
        .output()
        .expect("openssl");
    assert!(
        eventually(Duration::from_secs(5), || metric(
            &mesh.server.metrics(),
            "inbound_tcp_errors_total",
            &[("error", "tls_handshake")]
        ) > before),
        "a client certificate from another anchor was accepted"
    );
}

#[test]
fn certificates_renew_before_expiry_and_traffic_outlives_the_identity_service() {
    // Fifteen-second certificates: renewed at 70 % of their life.
    let mut mesh = Mesh::with(&["--lifetime", "15s"]);
    let mut s = TcpStream::connect(mesh.http_client.outbound).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut request = |n: usize| {
        for _ in 0..n {
            s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").expect("write");
            assert_eq!(read_response(&mut r), 200);
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    // One client connection and one mTLS connection between the proxies, across the
    // first certificates' whole life.
    request(40);
    for p in [&mesh.http_client, &mesh.server] {
        let m = p.metrics();
        assert!(metric(&m, "identity_cert_refreshes_total", &[]) >= 2.0, "no renewal:\n{m}");
    }
    let c = mesh.http_client.metrics();
    assert_eq!(
        metric(&c, "tcp_open_total", &[("peer", "dst"), ("tls", "true")]),
        1.0,
        "the mTLS connection was re-made:\n{c}"
    );
    // The identity service goes away: traffic goes on with the current certificates.
    let _ = mesh.identity.0.kill();
    let _ = mesh.identity.0.wait();
    request(10);
    assert!(
        metric(&mesh.http_client.metrics(), "identity_cert_expiration_timestamp_seconds", &[])
            > 1.7e9
    );
}

#[test]
fn during_trust_anchor_rotation_proxies_with_either_anchor_talk() {
    // Two PKIs — the old anchor and the new — and a bundle that trusts both, as during a
    // rotation. The server proxy's certificate comes from the old issuer, the client's
    // from the new one.
    let dir = std::env::temp_dir().join(format!(
        "weft-e2e-rotation-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    let (old, new) = (dir.join("old"), dir.join("new"));
    for pki in [&old, &new] {
        let (ok, _, err) = run(Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["certs", "generate", "--out-dir"])
            .arg(pki));
        assert!(ok, "{err}");
    }
    let bundle = dir.join("bundle.crt");
    let both = [
        std::fs::read(old.join("ca.crt")).expect("old"),
        std::fs::read(new.join("ca.crt")).expect("new"),
    ]
    .concat();
    std::fs::write(&bundle, both).expect("bundle");
    std::fs::copy(&bundle, dir.join("ca.crt")).expect("anchors for the proxies");
    let tokens = dir.join("tokens.yaml");
    std::fs::write(&tokens, "client-token: prod/client\nweb-token: prod/web\n").expect("tokens");
    for t in ["client", "web"] {
        std::fs::write(dir.join(format!("{t}.token")), format!("{t}-token")).expect("token");
    }
    let (_old_identity, old_addr) = start_identity(&old, &bundle, &tokens, &[]);
    let (_new_identity, new_addr) = start_identity(&new, &bundle, &tokens, &[]);

    let app = http_server(local_listener());
    let (old_addr, new_addr) = (old_addr.to_string(), new_addr.to_string());
    let server = start_proxy(
        [
            vec!["--inbound-orig-dst-addr".to_string(), app.to_string()],
            identity_args(&dir, &id("web"), "web.token", &old_addr),
        ]
        .concat(),
    );
    let yaml = format!(
        "services:\n  - name: web\n    namespace: prod\n    clusterIPs: [10.96.0.40]\n    ports:\n      - port: 80\n        endpoints:\n          - address: {}\n            identity: {}\n            protocolHint: h2\n",
        server.inbound,
        id("web")
    );
    std::fs::write(dir.join("endpoints.yaml"), yaml).expect("endpoints");
    let file = dir.join("endpoints.yaml").display().to_string();
    let (_destination, dst) = start_plain_destination(&file);
    let client = start_proxy(
        [
            vec![
                "--outbound-orig-dst-addr".into(),
                "10.96.0.40:80".into(),
                "--destination-addr".into(),
                dst.to_string(),
            ],
            identity_args(&dir, &id("client"), "client.token", &new_addr),
        ]
        .concat(),
    );
    let (ok, out, err) =
        run(Command::new("curl").args(["-sS", &format!("http://{}/echo", client.outbound)]));
    assert!(ok, "{err}\n{}\n{}", client.logs(), server.logs());
    assert!(out.contains(&format!("l5d-client-id: {}\n", id("client"))), "{out}");
    let m = client.metrics();
    assert!(
        metric(&m, "request_total", &[("tls", "true"), ("server_id", &id("web"))]) >= 1.0,
        "{m}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn discovery_is_mtls_to_the_destination_services_own_identity() {
    let mesh = Mesh::new();
    // The service address is reachable only through discovery.
    let url = format!("http://{}/echo", mesh.http_client.outbound);
    let (ok, out, err) = run(Command::new("curl").args(["-sS", "--http1.1", &url]));
    assert!(ok && out.starts_with("HTTP/1.1 GET /echo"), "{out}{err}\n{}", mesh.http_client.logs());
    // The destination service saw the proxy's certificate on its TLS connection.
    let m = scrape(mesh.destination_admin);
    assert!(
        metric(&m, "destination_tls_connections_total", &[("client_id", &id("client"))]) >= 1.0,
        "no TLS connection with the client's identity:\n{m}"
    );
    assert_eq!(metric(&m, "destination_tls_handshake_errors_total", &[]), 0.0, "{m}");

    // openssl: TLS 1.3, a chain to the anchor, the destination service's own identity; a
    // client without a certificate is let in (client certificates are optional, verified
    // when presented).
    let connect = mesh.destination.to_string();
    let ca = mesh.dir.join("ca.crt");
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &connect, "-servername", DST_SVC_NAME])
        .args(["-verify_hostname", DST_SVC_NAME, "-alpn", "h2", "-showcerts"])
        .args(["-verify_return_error", "-CAfile"])
        .arg(&ca)
        .stdin(Stdio::piped())
        .output()
        .expect("openssl");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("TLSv1.3") && text.contains("ALPN protocol: h2"), "{text}");
    let leaf = text
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|c| c.split("-----END CERTIFICATE-----").next())
        .expect("a certificate");
    let leaf_file = mesh.dir.join("destination-leaf.pem");
    std::fs::write(
        &leaf_file,
        format!("-----BEGIN CERTIFICATE-----{leaf}-----END CERTIFICATE-----\n"),
    )
    .expect("write leaf");
    let (ok, san, err) = run(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&leaf_file));
    assert!(ok, "{err}");
    assert!(san.contains(&format!("DNS:{DST_SVC_NAME}")), "{san}");
    assert!(
        eventually(Duration::from_secs(5), || metric(
            &scrape(mesh.destination_admin),
            "destination_tls_connections_total",
            &[("client_id", "")]
        ) >= 1.0),
        "openssl's connection without a certificate was not accepted"
    );

    // A proxy that expects TLS refuses a plaintext destination service, says why, and
    // forwards to the original destination meanwhile.
    let d = mesh.dir.display().to_string();
    let (_plain, plain_addr) = start_plain_destination(&format!("{d}/endpoints.yaml"));
    let identity_addr = mesh.identity_addr.to_string();
    let refusing = |dst: &str, svc: &str| {
        start_proxy(
            [
                vec![
                    "--outbound-orig-dst-addr".to_string(),
                    mesh.echo.to_string(),
                    "--destination-addr".into(),
                    dst.to_string(),
                    "--destination-svc-name".into(),
                    svc.to_string(),
                    "--destination-first-update-timeout".into(),
                    "500ms".into(),
                ],
                identity_args(&mesh.dir, &id("tcp"), "tcp.token", &identity_addr),
            ]
            .concat(),
        )
    };
    let echo_once = |p: &Proxy| {
        let mut s = TcpStream::connect(p.outbound).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.write_all(b"\x00falls back").expect("write");
        let mut back = [0u8; 11];
        s.read_exact(&mut back).expect("echo");
        assert_eq!(&back, b"\x00falls back");
    };
    let p = refusing(&plain_addr.to_string(), DST_SVC_NAME);
    echo_once(&p);
    let refused = |p: &Proxy, why: &str| {
        eventually(Duration::from_secs(10), || {
            let logs = p.logs();
            logs.contains("TLS with the destination service at")
                && logs.to_ascii_lowercase().contains(why)
        })
    };
    assert!(refused(&p, "corrupt message"), "{}", p.logs());
    assert!(
        metric(&p.metrics(), "outbound_discovery_lookups_total", &[("result", "unavailable")])
            >= 1.0
    );
    // The real destination service, but another identity expected: refused too.
    let p = refusing(&mesh.destination.to_string(), &id("web"));
    echo_once(&p);
    assert!(refused(&p, "not valid for name"), "{}", p.logs());
}

/// `web2`: an app behind a meshed proxy whose inbound policy comes from the destination's
/// static file, and two meshed clients of it, `client` and `tcp` (their outbound proxies
/// resolve web2's ClusterIP 10.96.0.42:80). `policies`: the file's `policies:` items.
pub(crate) struct Web2 {
    pub(crate) mesh: Mesh,
    pub(crate) web2: Proxy,
    pub(crate) client: Proxy,
    pub(crate) other: Proxy,
}

pub(crate) fn web2_under(policies: &str) -> Web2 {
    let mesh = Mesh::new();
    let app = http_server(local_listener());
    let identity_addr = mesh.identity_addr.to_string();
    let web2 = start_proxy(
        [
            vec![
                "--inbound-orig-dst-addr".to_string(),
                app.to_string(),
                "--policy-addr".to_string(),
                mesh.destination.to_string(),
                "--policy-svc-name".to_string(),
                DST_SVC_NAME.to_string(),
                "--policy-workload".to_string(),
                "prod:web-2".to_string(),
                "--inbound-ports".to_string(),
                app.port().to_string(),
            ],
            identity_args(&mesh.dir, &id("web"), "web.token", &identity_addr),
        ]
        .concat(),
    );
    // The destination re-reads its file: web2's endpoint, its pod and the policies. Its
    // admin address resolves to the meshed pod too (as a pod's IP:4191 does in a
    // cluster), and the pod names the admin port `weft-admin` (as the injector does).
    let file = mesh.dir.join("endpoints.yaml");
    let mut yaml = std::fs::read_to_string(&file).expect("endpoints");
    yaml.push_str(&format!(
        "  - name: web2\n    namespace: prod\n    clusterIPs: [10.96.0.42]\n    ports:\n      - port: 80\n        endpoints:\n          - address: {}\n            identity: {}\n            protocolHint: h2\n",
        web2.inbound,
        id("web")
    ));
    yaml.push_str(&format!(
        "  - name: web2-admin\n    namespace: prod\n    ports:\n      - port: {}\n        endpoints:\n          - address: {}\n            identity: {}\n            protocolHint: h2\n",
        web2.admin.port(),
        web2.admin,
        id("web")
    ));
    yaml.push_str(&format!(
        "pods:\n  - name: web-2\n    namespace: prod\n    labels: {{app: web2}}\n    ports:\n      - {{name: http, containerPort: {}}}\n      - {{name: weft-admin, containerPort: {}}}\npolicies:\n{policies}",
        app.port(),
        web2.admin.port()
    ));
    std::fs::write(&file, yaml).expect("endpoints");

    let dst = mesh.destination.to_string();
    let client_of = |sa: &str, token: &str| {
        start_proxy(client_args(&mesh.dir, &dst, &identity_addr, "10.96.0.42:80", sa, token))
    };
    let (client, other) = (client_of("client", "client.token"), client_of("tcp", "tcp.token"));
    Web2 { mesh, web2, client, other }
}
