//! The proxy's side of identity, with the real `weft identity` and a PKI from `weft certs
//! generate`: `/ready` waits for a certificate (a pod without one must not get traffic),
//! and the trust anchors are re-read when the kubelet publishes a new bundle (a trust
//! anchor rotation needs no restart), checked with openssl as the meshed peer.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    identity::kubelet_publish,
    mtls::{id, identity_args, rand_suffix, start_identity, start_identity_on, start_proxy},
    support::*,
};

/// A temporary directory with a PKI from `weft certs generate` in each of `pkis`, the
/// static tokens of `web` and `client`, and their token files; removed on drop.
struct Pki(PathBuf);

impl Pki {
    fn new(tag: &str, pkis: &[&str]) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "weft-e2e-proxy-identity-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        for pki in pkis {
            let (ok, _, err) = run(Command::new(env!("CARGO_BIN_EXE_weft"))
                .args(["certs", "generate", "--out-dir"])
                .arg(dir.join(pki)));
            assert!(ok, "weft certs generate: {err}");
        }
        std::fs::write(dir.join("tokens.yaml"), "web-token: prod/web\nclient-token: prod/client\n")
            .expect("tokens");
        Pki(dir)
    }

    /// `sa`'s token file in `dir`, as a projected token would be mounted there.
    fn token(&self, dir: &Path, sa: &str) {
        std::fs::write(dir.join(format!("{sa}.token")), format!("{sa}-token")).expect("token");
    }
}

/// One PKI, `web`'s token, and `weft identity` signing from it.
struct Signing {
    pki: Pki,
    _identity: crate::mtls::Child_,
    identity: String,
}

impl Signing {
    fn new(tag: &str) -> Signing {
        let pki = Pki::new(tag, &["pki"]);
        pki.token(&pki.0.join("pki"), "web");
        let dir = pki.0.join("pki");
        let (child, identity) =
            start_identity(&dir, &dir.join("ca.crt"), &pki.0.join("tokens.yaml"), &[]);
        Signing { pki, _identity: child, identity: identity.to_string() }
    }

    fn dir(&self) -> PathBuf {
        self.pki.0.join("pki")
    }

    /// A proxy with `web`'s identity in front of `app`, with `extra` flags; once ready.
    fn web_proxy(&self, app: std::net::SocketAddr, extra: &[String]) -> Proxy {
        let args = [
            vec!["--inbound-orig-dst-addr".to_string(), app.to_string()],
            identity_args(&self.dir(), &id("web"), "web.token", &self.identity),
            extra.to_vec(),
        ];
        start_proxy(args.concat())
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn ready_only_once_the_proxy_has_a_certificate() {
    let pki = Pki::new("ready", &["pki"]);
    let dir = pki.0.join("pki");
    pki.token(&dir, "web");
    // The identity service's address, where nothing listens yet.
    let identity = local_listener().local_addr().expect("addr").to_string();
    let app = http_server(local_listener());
    let args = [
        vec!["--inbound-orig-dst-addr".to_string(), app.to_string()],
        identity_args(&dir, &id("web"), "web.token", &identity),
    ]
    .concat();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proxy = Proxy::start(&args);

    // Serving, live, and having tried for a certificate and failed: not ready.
    let tried = || proxy.logs().contains("could not obtain an identity certificate");
    assert!(eventually(Duration::from_secs(20), tried), "no attempt:\n{}", proxy.logs());
    assert_eq!(admin_request(proxy.admin, "GET", "/live", "").0, 200);
    let (code, body) = admin_request(proxy.admin, "GET", "/ready", "");
    assert_eq!((code, body.as_str()), (503, "not ready\n"), "{}", proxy.logs());
    let m = proxy.metrics();
    assert_eq!(metric(&m, "identity_cert_refreshes_total", &[]), 0.0, "{m}");

    // The identity service comes up on that address: the proxy's next attempt gets a
    // certificate, and it is ready.
    let (_identity, at) =
        start_identity_on(&identity, &dir, &dir.join("ca.crt"), &pki.0.join("tokens.yaml"), &[]);
    assert_eq!(at.to_string(), identity);
    let ready = || admin_request(proxy.admin, "GET", "/ready", "") == (200, "ready\n".into());
    assert!(eventually(Duration::from_secs(30), ready), "never ready:\n{}", proxy.logs());
    let m = proxy.metrics();
    assert_eq!(metric(&m, "identity_cert_refreshes_total", &[]), 1.0, "{m}");
    assert!(metric(&m, "identity_cert_expiration_timestamp_seconds", &[]) > 1.7e9, "{m}");
}

/// openssl as a meshed client of `proxy`'s inbound port (`server_ca`: what verifies the
/// proxy), presenting `sa`'s certificate from `pki`'s issuer, offering `alpn` (none when
/// `None`, as linkerd2-proxy's clients send HTTP); stdin and stdout piped.
fn s_client(proxy: &Proxy, server_ca: &Path, pki: &Path, sa: &str, alpn: Option<&str>) -> Command {
    let (_, leaf, key) = crate::admin::issue(pki, sa);
    let chain = pki.join("issuer.crt");
    let mut cmd = meshed_s_client(proxy.inbound, &id("web"), server_ca, (&leaf, &chain, &key));
    cmd.args(alpn.map(|a| ["-alpn", a]).into_iter().flatten());
    cmd
}

/// `request` sent by [`s_client`], and everything openssl printed: the app's answer
/// included when the proxy took the certificate.
fn meshed_request(client: Command, request: &[u8]) -> String {
    s_client_exchange(client, Duration::ZERO, request)
}

/// `GET /echo` from `sa` over HTTP/1.1 by ALPN, so that the proxy serves it as HTTP and
/// tells the app who called.
fn meshed_get(proxy: &Proxy, server_ca: &Path, pki: &Path, sa: &str) -> String {
    let client = s_client(proxy, server_ca, pki, sa, Some("http/1.1"));
    meshed_request(client, b"GET /echo HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
}

/// A meshed client that names no protocol by ALPN — linkerd2-proxy sends HTTP that way —
/// gets its HTTP detected inside the TLS: served as HTTP, counted, and the app told the
/// real caller (a forged `l5d-client-id` is replaced, not passed on as bytes), even when it
/// waited past the silent window first. A meshed client that stays silent is opaque once
/// the app speaks first, so a server that speaks first is heard.
#[test]
fn meshed_http_without_alpn_is_detected_and_a_silent_meshed_client_is_opaque() {
    let signing = Signing::new("no-alpn");
    let dir = signing.dir();
    let proxy_to = |app: std::net::SocketAddr| signing.web_proxy(app, &[]);
    let proxy = proxy_to(http_server(local_listener()));
    let ca = dir.join("ca.crt");
    let forged = b"GET /echo HTTP/1.1\r\nHost: web\r\nl5d-client-id: admin.prod.forged\r\nConnection: close\r\n\r\n";
    let out = meshed_request(s_client(&proxy, &ca, &dir, "client", None), forged);
    let client = id("client");
    assert!(out.contains("HTTP/1.1 200"), "{out}\n{}", proxy.logs());
    assert!(out.contains(&format!("l5d-client-id: {client}\n")), "{out}");
    assert!(!out.contains("forged"), "the client's own l5d-client-id reached the app:\n{out}");
    let m = proxy.metrics();
    let meshed = [("direction", "inbound"), ("tls", "true"), ("client_id", client.as_str())];
    assert_eq!(metric(&m, "request_total", &meshed), 1.0, "{m}");
    let http = [meshed.as_slice(), &[("peer", "src"), ("protocol", "http/1")]].concat();
    assert_eq!(metric(&m, "tcp_open_total", &http), 1.0, "{m}");
    // Waiting past the silent window changes nothing: the client spoke before the app,
    // so its HTTP is still detected, and its forged header still replaced.
    let client_cmd = s_client(&proxy, &ca, &dir, "client", None);
    let out = s_client_exchange(client_cmd, Duration::from_millis(1500), forged);
    assert!(out.contains("HTTP/1.1 200"), "{out}\n{}", proxy.logs());
    assert!(out.contains(&format!("l5d-client-id: {client}\n")), "{out}");
    assert!(!out.contains("forged"), "a slow client's own l5d-client-id reached the app:\n{out}");
    let m = proxy.metrics();
    assert_eq!(metric(&m, "request_total", &meshed), 2.0, "{m}");

    // A server that speaks first, and a meshed client that waits for it.
    let banner_app = serve(local_listener(), banner(b"220 ready\r\n"));
    let proxy = proxy_to(banner_app);
    let mut child = s_client(&proxy, &ca, &dir, "client", None).spawn().expect("openssl");
    let _stdin = child.stdin.take();
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = std::io::Read::read(&mut stdout, &mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(9).any(|w| w == b"220 ready") {
                let _ = tx.send(());
                break;
            }
        }
    });
    let heard = rx.recv_timeout(Duration::from_secs(15)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    assert!(heard, "the server's banner never reached the silent meshed client:\n{}", proxy.logs());
    let m = proxy.metrics();
    let opaque = [meshed.as_slice(), &[("peer", "src"), ("protocol", "opaque")]].concat();
    assert_eq!(metric(&m, "tcp_open_total", &opaque), 1.0, "{m}");
}

/// Inside the mTLS of a port whose server declares HTTP/1, a meshed client that names no
/// protocol is served as HTTP/1 unread: bytes that are not HTTP get the proxy's 400 and
/// never reach the app as opaque TCP.
#[test]
fn meshed_bytes_on_a_port_declared_http_are_served_as_http() {
    use crate::policy_grpc_filters::{FakePolicy, PolicyServer, server_policy};
    use linkerd2_proxy_api::inbound as pb;
    let signing = Signing::new("declared");
    let dir = signing.dir();
    let app = http_server(local_listener());
    let http1 = pb::proxy_protocol::Http1 { routes: Vec::new(), local_rate_limit: None };
    let server = server_policy("web-http", pb::proxy_protocol::Kind::Http1(http1));
    let policy = PolicyServer::start(FakePolicy { port: app.port().into(), server });
    let (policy_addr, port) = (policy.addr.to_string(), app.port().to_string());
    let extra = ["--policy-addr", &policy_addr, "--policy-workload", crate::policy_api::POD];
    let extra = [&extra[..], &["--inbound-ports", &port]].concat();
    let extra: Vec<String> = extra.into_iter().map(String::from).collect();
    let proxy = signing.web_proxy(app, &extra);
    let updated = [("port", port.as_str()), ("result", "ok")];
    let arrived = eventually(Duration::from_secs(20), || {
        metric(&proxy.metrics(), "inbound_policy_updates_total", &updated) >= 1.0
    });
    assert!(arrived, "no policy reached the proxy:\n{}", proxy.logs());

    let ca = dir.join("ca.crt");
    let out = meshed_request(s_client(&proxy, &ca, &dir, "client", None), b"\x00 not http\r\n\r\n");
    assert!(out.contains("HTTP/1.1 400"), "{out}\n{}", proxy.logs());
    let m = proxy.metrics();
    let opaque = [("direction", "inbound"), ("tls", "true"), ("protocol", "opaque")];
    assert_eq!(metric(&m, "tcp_open_total", &opaque), 0.0, "{m}");
}

#[test]
fn the_proxy_rereads_its_trust_anchors_when_the_kubelet_publishes_new_ones() {
    // Two PKIs: `a`, which the proxy's own certificate comes from, and `b`, a new anchor.
    let pki = Pki::new("anchors", &["a", "b"]);
    let (a, b) = (pki.0.join("a"), pki.0.join("b"));
    let (_identity, identity) =
        start_identity(&a, &a.join("ca.crt"), &pki.0.join("tokens.yaml"), &[]);
    // The proxy's anchors are a mounted ConfigMap holding A only.
    let mount = pki.0.join("mount");
    std::fs::create_dir_all(&mount).expect("mount");
    let anchor = |p: &Path| std::fs::read(p.join("ca.crt")).expect("anchor");
    kubelet_publish(&mount, "2026_01_01_00_00_00.000000001", &[("ca.crt", anchor(&a))]);
    pki.token(&mount, "web");
    let app = http_server(local_listener());
    let proxy = start_proxy(
        [
            vec!["--inbound-orig-dst-addr".to_string(), app.to_string()],
            identity_args(&mount, &id("web"), "web.token", &identity.to_string()),
        ]
        .concat(),
    );
    let client = id("client");
    let told = format!("l5d-client-id: {client}\n");
    let served = |out: &str| out.contains("HTTP/1.1 200") && out.contains(&told);
    let refused =
        || metric(&proxy.metrics(), "inbound_tcp_errors_total", &[("error", "tls_handshake")]);

    // Before: a client certificate under A is taken; one under B is refused in the handshake.
    let out = meshed_get(&proxy, &a.join("ca.crt"), &a, "client");
    assert!(served(&out), "a peer under the proxy's own anchor was refused:\n{out}");
    let out = meshed_get(&proxy, &a.join("ca.crt"), &b, "client");
    assert!(!out.contains("HTTP/1.1"), "a peer under an unknown anchor got in:\n{out}");
    assert!(eventually(Duration::from_secs(5), || refused() == 1.0), "{}", proxy.metrics());

    // The kubelet publishes the bundle A+B (a new `..data`, as for any ConfigMap update).
    let both = [anchor(&a), anchor(&b)].concat();
    kubelet_publish(&mount, "2026_02_01_00_00_00.000000001", &[("ca.crt", both)]);
    let reloaded = || proxy.logs().contains("trust anchors reloaded");
    assert!(eventually(Duration::from_secs(20), reloaded), "not re-read:\n{}", proxy.logs());

    // After: the peer under B is taken, with its identity; A's still is; no restart.
    let out = meshed_get(&proxy, &a.join("ca.crt"), &b, "client");
    assert!(served(&out), "a peer under the new anchor was refused:\n{out}\n{}", proxy.logs());
    let out = meshed_get(&proxy, &a.join("ca.crt"), &a, "client");
    assert!(served(&out), "a peer under the old anchor was refused:\n{out}");
    assert_eq!(refused(), 1.0, "{}", proxy.metrics());
    let m = proxy.metrics();
    let from_client = [("direction", "inbound"), ("tls", "true"), ("client_id", client.as_str())];
    assert_eq!(metric(&m, "request_total", &from_client), 3.0, "{m}");
}
