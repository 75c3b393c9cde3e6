//! The meshed side of the mTLS bench, set up as `tests/e2e/mtls.rs` does: a fresh PKI from
//! `weft certs generate`, `weft identity` with static tokens, `weft destination` with a
//! static endpoints file, and two `weft-proxy` pairs holding certificates — one for HTTP
//! (the endpoint carries an identity and the `h2` protocol hint: HTTP/2 over mTLS between
//! the proxies) and one for opaque TCP (the endpoint also names B's inbound port as its
//! opaque transport port: mTLS with a transport header), a lone server-side proxy that the
//! bench itself dials as a meshed client (with a certificate the bench signs with the
//! issuer), plus reading the proxies' metrics to prove the traffic was mTLS.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use weft_identity::{
    IdentityDomain, SharedTrust, TrustBundle,
    ca::{Ca, CaConfig, Issuer, check_csr},
    pki::{build_csr, cert_pem, generate_key},
};
use weft_proxy::transport_header::{self, TransportHeader};

use crate::{
    baselines,
    conns::MtlsDial,
    procs::{self, Pair, Proc, metric, scrape},
    relay,
};

const DOMAIN: &str = "serviceaccount.identity.weft.cluster.local";
/// The identity the identity service's own certificate proves.
const SVC_NAME: &str = "identity.weft.serviceaccount.identity.weft.cluster.local";
/// The HTTP service's cluster IP and port: A's fixed original destination.
pub const WEB_SERVICE: &str = "10.96.0.40:80";
/// The opaque service's: 5432 is one of the proxy's default opaque ports, so A does not
/// run protocol detection on it (as it would not for a database).
pub const ECHO_SERVICE: &str = "10.96.0.41:5432";

/// The identity name of service account `sa` in namespace `prod`.
pub fn id(sa: &str) -> String {
    format!("{sa}.prod.{DOMAIN}")
}

/// The control plane and the two meshed pairs.
#[derive(Debug)]
pub struct Mesh {
    pub identity: Proc,
    pub destination: Proc,
    /// A (identity `client`) → mTLS, HTTP/2 → B (identity `web`) → the HTTP backend.
    pub http: Pair,
    /// A (identity `tcp`) → mTLS, transport header → B (identity `echo`) → the close server.
    pub tcp: Pair,
    /// A B like `tcp`'s (identity `echo`, → the close server) for the bench to dial itself.
    pub lone_b: Proc,
    pub lone_b_inbound: SocketAddr,
    /// `weft certs generate`'s output.
    pub pki: PathBuf,
}

/// Starts the mesh in `dir`: `weft` is the control-plane binary, `proxy` the proxy's.
pub fn start(
    weft: &Path,
    proxy: &Path,
    backend: SocketAddr,
    close_server: SocketAddr,
    dir: &Path,
) -> anyhow::Result<Mesh> {
    let pki = dir.join("pki");
    let out = Command::new(weft)
        .args(["certs", "generate", "--out-dir"])
        .arg(&pki)
        .output()
        .context("running weft certs generate")?;
    if !out.status.success() {
        bail!("weft certs generate failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut tokens = String::new();
    for sa in ["client", "web", "tcp", "echo"] {
        tokens.push_str(&format!("{sa}-token: prod/{sa}\n"));
        fs::write(dir.join(format!("{sa}.token")), format!("{sa}-token"))?;
    }
    fs::write(dir.join("tokens.yaml"), tokens)?;

    let identity = procs::retry(|| {
        let [grpc, admin] = procs::free_addrs()?;
        let mut cmd = Command::new(weft);
        cmd.arg("identity")
            .args(["--listen-addr", &grpc.to_string(), "--admin-addr", &admin.to_string()])
            .args(["--token-validator", "static", "--static-tokens"])
            .arg(dir.join("tokens.yaml"))
            .arg("--trust-bundle")
            .arg(pki.join("ca.crt"))
            .arg("--issuer-cert")
            .arg(pki.join("issuer.crt"))
            .arg("--issuer-key")
            .arg(pki.join("issuer.key"))
            .args(["--log", "warn"]);
        listening(Proc::spawn(&mut cmd, "weft identity".into(), dir)?, grpc)
    })?;
    let identity_addr = identity.admin.context("identity address")?;

    // B's addresses first: the endpoints file names them.
    let [hb_in, hb_out, hb_admin, tb_in, tb_out, tb_admin] = procs::free_addrs()?;
    let yaml = format!(
        "services:\n  - name: web\n    namespace: prod\n    clusterIPs: [{web_ip}]\n    ports:\n      - port: {web_port}\n        endpoints:\n          - address: {hb_in}\n            identity: {web_id}\n            protocolHint: h2\n  - name: echo\n    namespace: prod\n    clusterIPs: [{echo_ip}]\n    ports:\n      - port: {echo_port}\n        endpoints:\n          - address: {close_server}\n            identity: {echo_id}\n            opaqueTransportPort: {tb_port}\n",
        web_ip = ip(WEB_SERVICE),
        web_port = port(WEB_SERVICE),
        web_id = id("web"),
        echo_ip = ip(ECHO_SERVICE),
        echo_port = port(ECHO_SERVICE),
        echo_id = id("echo"),
        tb_port = tb_in.port(),
    );
    fs::write(dir.join("endpoints.yaml"), yaml)?;
    let destination = procs::retry(|| {
        let [grpc, admin] = procs::free_addrs()?;
        let mut cmd = Command::new(weft);
        cmd.arg("destination")
            .args(["--source", "static", "--static-file"])
            .arg(dir.join("endpoints.yaml"))
            .args(["--listen-addr", &grpc.to_string(), "--admin-addr", &admin.to_string()])
            .args(["--log", "warn"]);
        listening(Proc::spawn(&mut cmd, "weft destination".into(), dir)?, grpc)
    })?;
    let dst_addr = destination.admin.context("destination address")?;

    let proxy = |name: &str, sa: &str, addrs: [SocketAddr; 3], flags: Vec<String>| {
        let [inbound, outbound, admin] = addrs;
        let mut cmd = Command::new(proxy);
        cmd.env_clear()
            .args(["--inbound-listen-addr", &inbound.to_string()])
            .args(["--outbound-listen-addr", &outbound.to_string()])
            .args(["--admin-listen-addr", &admin.to_string()])
            // As the plaintext pairs of `procs::weft_pair_with`.
            .args(["--log", "warn", "--cores", "1", "--detect-silent-window", "300ms"])
            .args(["--identity-name", &id(sa), "--identity-addr", &identity_addr.to_string()])
            .args(["--identity-svc-name", SVC_NAME, "--identity-token-file"])
            .arg(dir.join(format!("{sa}.token")))
            .arg("--identity-trust-anchors-file")
            .arg(pki.join("ca.crt"))
            .args(&flags);
        let mut p = Proc::spawn(&mut cmd, name.into(), dir)?;
        p.admin = Some(admin);
        Ok::<_, anyhow::Error>(p)
    };
    let client = |target: &str| {
        vec![
            "--outbound-orig-dst-addr".to_string(),
            target.to_string(),
            "--destination-addr".to_string(),
            dst_addr.to_string(),
        ]
    };
    let server = |target: SocketAddr| vec!["--inbound-orig-dst-addr".into(), target.to_string()];
    let [ha_in, ha_out, ha_admin, ta_in, ta_out, ta_admin] = procs::free_addrs()?;
    let [lb_in, lb_out, lb_admin] = procs::free_addrs()?;
    let hb = proxy("mtls-http B", "web", [hb_in, hb_out, hb_admin], server(backend))?;
    let tb = proxy("mtls-tcp B", "echo", [tb_in, tb_out, tb_admin], server(close_server))?;
    let ha = proxy("mtls-http A", "client", [ha_in, ha_out, ha_admin], client(WEB_SERVICE))?;
    let ta = proxy("mtls-tcp A", "tcp", [ta_in, ta_out, ta_admin], client(ECHO_SERVICE))?;
    let mut lone_b = proxy("mtls-lone B", "echo", [lb_in, lb_out, lb_admin], server(close_server))?;
    let mut http = Pair { entry: ha_out, procs: [ha, hb] };
    let mut tcp = Pair { entry: ta_out, procs: [ta, tb] };
    for p in http.procs.iter_mut().chain(tcp.procs.iter_mut()).chain([&mut lone_b]) {
        // `/ready` turns 200 once the proxy holds its certificate.
        procs::wait_ready(p, |admin| {
            procs::http_get(admin, "/ready").is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
        })
        .with_context(|| format!("{} never got a certificate", p.name))?;
    }
    Ok(Mesh { identity, destination, http, tcp, lone_b, lone_b_inbound: lb_in, pki })
}

/// The bench as a meshed client with identity `bench`: a leaf signed with the issuer of
/// `pki` (as the identity service would sign it), TLS 1.3 only, session resumption off,
/// ALPN `transport.l5d.io/v1`, server identity `echo`, and a transport header naming
/// `target_port`.
pub fn bench_dial(pki: &Path, target_port: u16) -> anyhow::Result<MtlsDial> {
    let (bundle, chain, key) = issue(pki, "bench")?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let mut config = rustls::ClientConfig::builder_with_provider(weft_identity::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        // As the proxy does: the anchors, and the server name as a DNS SAN.
        .with_custom_certificate_verifier(SharedTrust::new(bundle)?)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![transport_header::ALPN.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    let header = TransportHeader { port: target_port, name: None, protocol: None };
    Ok(MtlsDial {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name: ServerName::try_from(id("echo"))?,
        header: header.encode().to_vec(),
    })
}

/// The trust bundle of `pki`, and a leaf (with its chain) and key for identity `sa`,
/// signed with its issuer as the identity service would sign them.
fn issue(
    pki: &Path,
    sa: &str,
) -> anyhow::Result<(TrustBundle, Vec<CertificateDer<'static>>, rcgen::KeyPair)> {
    let read = |f: &str| fs::read(pki.join(f)).with_context(|| format!("reading {f}"));
    let bundle = TrustBundle::from_pem("ca.crt", &read("ca.crt")?)?;
    let issuer =
        Issuer::from_pem(&read("issuer.crt")?, &read("issuer.key")?, &bundle, SystemTime::now())?;
    let domain = IdentityDomain::new("weft", "cluster.local")?;
    let name = domain.identity("prod", sa)?;
    let key = generate_key()?;
    let csr = check_csr(&build_csr(&key, &name)?, &name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ca = Ca::new(CaConfig::new(domain), issuer);
    let issued = ca.issue(&name, &csr, SystemTime::now()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((bundle, [vec![issued.leaf], issued.chain].concat(), key))
}

/// A haproxy pair (one thread each, HTTP mode) meshed like the weft mTLS pair, as a
/// baseline for it: HTTP/1.1 from the client to A; A → B HTTP/2 over TLS 1.3 with a
/// client certificate (identity `client`), accepting only a server certificate that
/// chains to the anchors and names `web`; B requires a client certificate from the
/// anchors and speaks HTTP/1.1 to `backend`. Leaves are signed with `pki`'s issuer; B's
/// port speaks only TLS, so a request through the pair proves it was mTLS.
pub fn haproxy_pair(pki: &Path, backend: SocketAddr, dir: &Path) -> anyhow::Result<Pair> {
    let ca = pki.join("ca.crt");
    let pems = leaf_pems(pki, dir)?;
    let (a_pem, b_pem, ca, web) = (pems[0].display(), pems[1].display(), ca.display(), id("web"));
    let tls = " alpn h2 ssl-min-ver TLSv1.3";
    let a = format!(
        " ssl crt {a_pem} ca-file {ca} verify required verifyhost {web} sni str({web}){tls}"
    );
    let b = format!(" ssl crt {b_pem} ca-file {ca} verify required{tls}");
    // B is the one whose upstream is the backend.
    let config = move |listen, to| {
        if to == backend {
            baselines::haproxy_http(listen, &b, to, "")
        } else {
            baselines::haproxy_http(listen, "", to, &a)
        }
    };
    procs::haproxy_pair_with(backend, dir, "haproxy mtls", config)
}

/// The bare rustls forwarder pair (`relay.rs`) meshed like the weft mTLS pair: A
/// presents `client`'s certificate and requires `web`'s name of B; B requires a client
/// certificate from the anchors. Bytes only: HTTP/1.1 from the client goes through as it
/// is, one TLS connection per client connection.
pub fn rustls_relay_pair(pki: &Path, backend: SocketAddr, dir: &Path) -> anyhow::Result<Pair> {
    let [a_pem, b_pem] = leaf_pems(pki, dir)?.map(|p| p.display().to_string());
    let ca = pki.join("ca.crt").display().to_string();
    relay::pair(backend, dir, Some(relay::Mtls { a_pem, b_pem, ca, b_name: id("web") }))
}

/// PEM files (chain, then key) of leaves for `client` and `web`, signed by `pki`'s issuer.
fn leaf_pems(pki: &Path, dir: &Path) -> anyhow::Result<[PathBuf; 2]> {
    let write = |sa: &str| -> anyhow::Result<PathBuf> {
        let (_, chain, key) = issue(pki, sa)?;
        let mut pem: String = chain.iter().map(|c| cert_pem(c)).collect();
        pem.push_str(&key.serialize_pem());
        let file = dir.join(format!("mtls-leaf-{sa}.pem"));
        fs::write(&file, pem)?;
        Ok(file)
    };
    Ok([write("client")?, write("web")?])
}

/// mTLS connections `b` accepted from identity `sa` (opaque, through a transport header).
pub fn accepted_from(b: &Proc, sa: &str) -> f64 {
    let labels = [
        ("direction", "inbound"),
        ("peer", "src"),
        ("tls", "true"),
        ("client_id", &id(sa)),
        ("protocol", "opaque"),
    ];
    metric(&scrape(b), "tcp_open_total", &labels)
}

fn ip(addr: &str) -> &str {
    addr.split(':').next().unwrap_or(addr)
}

fn port(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap_or(addr)
}

/// Waits until `p` accepts connections on `addr` (recorded as its probe address).
fn listening(mut p: Proc, addr: SocketAddr) -> anyhow::Result<Proc> {
    p.admin = Some(addr);
    let started = Instant::now();
    loop {
        p.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
            return Ok(p);
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("{} is not listening on {addr} after 20 s; its log:\n{}", p.name, p.log_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Proves from both proxies' metrics that the HTTP pair's traffic was mTLS, HTTP/2
/// between them, with the expected identities; `Err` says what is missing.
pub fn verify_http(pair: &Pair) -> anyhow::Result<String> {
    let (a, b) = (scrape(&pair.procs[0]), scrape(&pair.procs[1]));
    let (web, client) = (id("web"), id("client"));
    let a_all = metric(&a, "request_total", &[("direction", "outbound")]);
    let a_tls = metric(
        &a,
        "request_total",
        &[("direction", "outbound"), ("tls", "true"), ("server_id", &web)],
    );
    let a_conns = metric(
        &a,
        "tcp_open_total",
        &[("peer", "dst"), ("tls", "true"), ("server_id", &web), ("protocol", "h2")],
    );
    let a_plain_up = metric(&a, "tcp_open_total", &[("peer", "dst")]) - a_conns;
    let b_all = metric(&b, "request_total", &[("direction", "inbound")]);
    let b_tls = metric(
        &b,
        "request_total",
        &[("direction", "inbound"), ("tls", "true"), ("client_id", &client)],
    );
    let b_conns = metric(
        &b,
        "tcp_open_total",
        &[("direction", "inbound"), ("peer", "src"), ("tls", "true"), ("client_id", &client)],
    );
    let mut wrong = Vec::new();
    if a_all < 1.0 || a_tls != a_all {
        wrong.push(format!("A: {a_tls} of {a_all} requests with tls=\"true\", server_id={web}"));
    }
    if a_conns < 1.0 || a_plain_up > 0.0 {
        wrong.push(format!(
            "A: {a_conns} upstream connections mTLS + h2 to {web}, {a_plain_up} others"
        ));
    }
    if b_all < 1.0 || b_tls != b_all {
        wrong.push(format!("B: {b_tls} of {b_all} requests with tls=\"true\", client_id={client}"));
    }
    if b_conns < 1.0 {
        wrong.push(format!("B: no inbound connection with tls=\"true\", client_id={client}"));
    }
    if !wrong.is_empty() {
        bail!("the mTLS pair's HTTP traffic was not all mTLS: {}", wrong.join("; "));
    }
    Ok(format!(
        "A: {} requests, all `tls=\"true\"` with `server_id` {web}, over {} `h2` connection(s) to B; \
         B: {} requests, all with `client_id` {client}, over {} mTLS connection(s)",
        a_all as u64, a_conns as u64, b_all as u64, b_conns as u64
    ))
}

/// Counters of the TCP pair that a connection-rate point compares with what the client did.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsCounts {
    /// A: mTLS connections opened to B (`tcp_open_total`, peer dst, tls true, server_id).
    pub a_opened: f64,
    /// B: mTLS connections accepted from A (peer src, tls true, client_id, opaque).
    pub b_accepted: f64,
    /// A: bytes read from B on those connections (the handshake's server flight, the
    /// session tickets, the answer and the close, all encrypted).
    pub a_read_bytes: f64,
    /// A: bytes written to B on them.
    pub a_write_bytes: f64,
}

impl TlsCounts {
    pub fn read(a: &Proc, b: &Proc) -> TlsCounts {
        let (a, b) = (scrape(a), scrape(b));
        let (echo, tcp) = (id("echo"), id("tcp"));
        let a_labels = [("peer", "dst"), ("tls", "true"), ("server_id", echo.as_str())];
        TlsCounts {
            a_opened: metric(&a, "tcp_open_total", &a_labels),
            b_accepted: metric(
                &b,
                "tcp_open_total",
                &[
                    ("direction", "inbound"),
                    ("peer", "src"),
                    ("tls", "true"),
                    ("client_id", &tcp),
                    ("protocol", "opaque"),
                ],
            ),
            a_read_bytes: metric(&a, "tcp_read_bytes_total", &a_labels),
            a_write_bytes: metric(&a, "tcp_write_bytes_total", &a_labels),
        }
    }

    pub fn minus(self, before: TlsCounts) -> TlsCounts {
        TlsCounts {
            a_opened: self.a_opened - before.a_opened,
            b_accepted: self.b_accepted - before.b_accepted,
            a_read_bytes: self.a_read_bytes - before.a_read_bytes,
            a_write_bytes: self.a_write_bytes - before.a_write_bytes,
        }
    }
}

/// A proxy of a plaintext pair must show no TLS at all: the comparison would be meaningless.
pub fn verify_plaintext(p: &Proc) -> anyhow::Result<()> {
    let tls = metric(&scrape(p), "tcp_open_total", &[("tls", "true")]);
    if tls > 0.0 {
        bail!("{} counted {tls} mTLS connections; it should have none", p.name);
    }
    Ok(())
}
