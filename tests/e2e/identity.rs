//! The identity service end to end: the real `weft` binary (`weft certs generate`, then
//! `weft identity` with a static token file or TokenReview against the fake API server), the
//! proxy's client module, and `openssl` as an independent TLS peer and certificate checker.
//! Issuer rotation is done as the kubelet does it (a fresh `..<timestamp>` directory, then a
//! new `..data` symlink renamed over the old one).

use crate::support::Serving;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use weft_identity::{
    IdentityDomain, IdentityName, SharedTrust, TrustBundle,
    client::{CertifyError, Client, ClientConfig, Credentials, IdentityMetrics},
    pki::{self, CertSummary},
};

use crate::{kubeapi::FakeApi, support};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn domain() -> IdentityDomain {
    IdentityDomain::new("weft", "cluster.local").expect("domain")
}

fn web() -> IdentityName {
    domain().identity("prod", "web").expect("name")
}

/// A temporary directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir()
            .join(format!("weft-e2e-identity-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn weft(args: &[&str]) -> (bool, String, String) {
    support::run(Command::new(WEFT).args(args))
}

/// `weft certs generate` into `dir/gen-<tag>`; returns that directory.
fn generate(dir: &Path, tag: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(format!("gen-{tag}"));
    let out_s = out.display().to_string();
    let mut args = vec!["certs", "generate", "--out-dir", &out_s];
    args.extend(extra);
    let (ok, stdout, stderr) = weft(&args);
    assert!(ok, "weft certs generate failed: {stdout}{stderr}");
    out
}

/// Publishes files as the kubelet updates a mounted Secret: a fresh `..<generation>` directory,
/// a new `..data` symlink renamed over the old one, and stable `name -> ..data/name` links.
pub(crate) fn kubelet_publish(mount: &Path, generation: &str, files: &[(&str, Vec<u8>)]) {
    let gen_dir = mount.join(format!("..{generation}"));
    std::fs::create_dir_all(&gen_dir).expect("generation dir");
    for (name, data) in files {
        std::fs::write(gen_dir.join(name), data).expect("write");
    }
    let tmp = mount.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..{generation}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, mount.join("..data")).expect("swap ..data");
    for (name, _) in files {
        if mount.join(name).symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), mount.join(name)).expect("link");
        }
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// A running `weft identity`, killed on drop.
struct IdentityServer {
    child: Child,
    grpc: SocketAddr,
    admin: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl IdentityServer {
    /// Starts `weft identity` serving `mount/{ca.crt,issuer.crt,issuer.key}` with `extra` flags.
    fn start(mount: &Path, grpc: &str, extra: &[&str], env: &[(&str, &Path)]) -> IdentityServer {
        let mut cmd = Command::new(WEFT);
        cmd.arg("identity")
            .args(["--listen-addr", grpc, "--admin-addr", "127.0.0.1:0"])
            .arg("--issuer-cert")
            .arg(mount.join("issuer.crt"))
            .arg("--issuer-key")
            .arg(mount.join("issuer.key"))
            .arg("--trust-bundle")
            .arg(mount.join("ca.crt"))
            .args(extra)
            .env("WEFT_IDENTITY_LOG_FORMAT", "json")
            .env("WEFT_IDENTITY_RELOAD_INTERVAL", "200ms")
            .env_remove("KUBECONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let serving = Serving::start(cmd, "weft identity", Duration::from_secs(20));
        let (grpc, admin) = (serving.addr("grpc"), serving.addr("admin"));
        let Serving { child, logs, .. } = serving;
        IdentityServer { child, grpc, admin, logs }
    }

    fn start_static(mount: &Path, tokens: &Path, extra: &[&str]) -> IdentityServer {
        let tokens = tokens.display().to_string();
        let mut args = vec!["--token-validator", "static", "--static-tokens", &tokens];
        args.extend(extra);
        IdentityServer::start(mount, "127.0.0.1:0", &args, &[])
    }

    fn metrics(&self) -> String {
        support::scrape(self.admin)
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for IdentityServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PKI from `weft certs generate` published in `mount` the kubelet's way, and a token file.
struct Setup {
    dir: Dir,
    mount: PathBuf,
    tokens: PathBuf,
}

fn setup(tag: &str) -> Setup {
    let dir = Dir::new(tag);
    let generated = generate(&dir.0, "1", &["--write-anchor-key"]);
    let mount = dir.0.join("mount");
    std::fs::create_dir_all(&mount).expect("mount");
    kubelet_publish(
        &mount,
        "2026_01_01_00_00_00.000000001",
        &[
            ("ca.crt", read(&generated.join("ca.crt"))),
            ("issuer.crt", read(&generated.join("issuer.crt"))),
            ("issuer.key", read(&generated.join("issuer.key"))),
        ],
    );
    let tokens = dir.0.join("tokens.yaml");
    std::fs::write(&tokens, "web-token: prod/web\ndb-token: prod/db\n").expect("tokens");
    for (name, token) in
        [("web.token", "web-token\n"), ("db.token", "db-token"), ("bad.token", "nope")]
    {
        std::fs::write(dir.0.join(name), token).expect("token file");
    }
    Setup { dir, mount, tokens }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn client(s: &Setup, addr: SocketAddr, token: &str) -> Client {
    let bundle = TrustBundle::from_pem("ca.crt", &read(&s.mount.join("ca.crt"))).expect("bundle");
    let cfg = ClientConfig::new(
        SharedTrust::new(bundle).expect("trust"),
        addr.to_string(),
        domain().identity_service_name().clone(),
        web(),
        s.dir.0.join(token),
    );
    Client::new(cfg, IdentityMetrics::default()).expect("client")
}

fn leaf(creds: &Credentials) -> (CertSummary, Vec<Vec<u8>>) {
    let ck = creds.current().expect("a certificate");
    let chain = ck.cert.iter().map(|c| c.to_vec()).collect::<Vec<_>>();
    (CertSummary::parse(&chain[0]).expect("leaf parses"), chain)
}

fn openssl(args: &[&str], stdin: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl is needed for these tests (apt-get install openssl)");
    let _ = child.stdin.take().expect("stdin").write_all(stdin.as_bytes());
    let out = child.wait_with_output().expect("openssl output");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn identity_certs_generate_and_inspect() {
    let dir = Dir::new("gen");
    let out = generate(&dir.0, "a", &[]);
    for f in ["ca.crt", "issuer.crt", "issuer.key"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    assert!(!out.join("ca.key").exists(), "the anchor key is written only when asked");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(out.join("issuer.key")).expect("meta").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // No overwrite without --force.
    let out_s = out.display().to_string();
    let (ok, _, stderr) = weft(&["certs", "generate", "--out-dir", &out_s]);
    assert!(!ok && stderr.contains("refusing to overwrite"), "{stderr}");
    let before = read(&out.join("ca.crt"));
    let (ok, _, stderr) = weft(&["certs", "generate", "--out-dir", &out_s, "--force"]);
    assert!(ok, "{stderr}");
    assert_ne!(before, read(&out.join("ca.crt")));

    // openssl agrees: the issuer chains to the anchor, is a CA with pathlen 0, ECDSA P-256.
    let ca = out.join("ca.crt").display().to_string();
    let issuer = out.join("issuer.crt").display().to_string();
    let (ok, text) = openssl(&["verify", "-CAfile", &ca, &issuer], "");
    assert!(ok, "{text}");
    let (_, text) = openssl(&["x509", "-in", &issuer, "-noout", "-text"], "");
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign") && text.contains("prime256v1"), "{text}");
    let (_, text) = openssl(&["x509", "-in", &ca, "-noout", "-enddate", "-startdate"], "");
    assert!(text.contains("notAfter"), "{text}");

    // inspect prints the chain in order.
    let bundle = dir.0.join("chain.pem");
    std::fs::write(&bundle, [read(&out.join("issuer.crt")), read(&out.join("ca.crt"))].concat())
        .expect("write");
    let (ok, stdout, stderr) = weft(&["certs", "inspect", &bundle.display().to_string()]);
    assert!(ok, "{stderr}");
    for want in [
        "2 certificate(s)",
        "subject:   CN=identity.cluster.local",
        "CA:        yes (path length 0)",
        "#1 CN=identity.cluster.local -> signed by #2",
        "#2 CN=root.cluster.local -> self-signed root",
        "ECDSA P-256",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    let (ok, _, stderr) =
        weft(&["certs", "inspect", &out.join("issuer.key").display().to_string()]);
    assert!(!ok && stderr.contains("CERTIFICATE"), "{stderr}");
}

#[test]
fn identity_server_refuses_a_bad_issuer_at_start() {
    let s = setup("bad-issuer");
    // An issuer from another anchor does not chain to the bundle.
    let other = generate(&s.dir.0, "other", &[]);
    let bad = s.dir.0.join("bad");
    std::fs::create_dir_all(&bad).expect("dir");
    std::fs::copy(s.mount.join("ca.crt"), bad.join("ca.crt")).expect("copy");
    std::fs::copy(other.join("issuer.crt"), bad.join("issuer.crt")).expect("copy");
    std::fs::copy(other.join("issuer.key"), bad.join("issuer.key")).expect("copy");
    let b = |f: &str| bad.join(f).display().to_string();
    let tokens = s.tokens.display().to_string();
    let (ok, _, stderr) = weft(&[
        "identity",
        "--listen-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--issuer-cert",
        &b("issuer.crt"),
        "--issuer-key",
        &b("issuer.key"),
        "--trust-bundle",
        &b("ca.crt"),
        "--token-validator",
        "static",
        "--static-tokens",
        &tokens,
    ]);
    assert!(!ok, "started with an unchained issuer");
    assert!(stderr.contains("does not chain to any trust anchor"), "{stderr}");
    // A key that is not the issuer's.
    let (ok, _, stderr) = weft(&[
        "identity",
        "--listen-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
        "--issuer-cert",
        &b("issuer.crt"),
        "--issuer-key",
        &b("ca.crt"),
        "--trust-bundle",
        &b("ca.crt"),
        "--token-validator",
        "static",
        "--static-tokens",
        &tokens,
    ]);
    assert!(!ok && stderr.contains("issuer key"), "{stderr}");
}

#[test]
fn identity_certify_with_static_tokens() {
    let s = setup("certify");
    let server = IdentityServer::start_static(&s.mount, &s.tokens, &[]);
    let rt = rt();

    // Our client module gets a certificate.
    let c = client(&s, server.grpc, "web.token");
    let creds = c.credentials();
    rt.block_on(c.certify_once()).unwrap_or_else(|e| panic!("certify: {e}\n{}", server.logs()));
    let (leaf, chain) = leaf(&creds);
    assert_eq!(leaf.dns_names, vec![web().to_string()]);
    assert_eq!(leaf.uris, vec!["spiffe://cluster.local/ns/prod/sa/web".to_owned()]);
    assert!(leaf.server_auth && leaf.client_auth && !leaf.is_ca);
    assert_eq!(leaf.not_after - leaf.not_before, 24 * 3600 + 20);
    assert_eq!(chain.len(), 2);

    // openssl verifies the leaf it received to the anchor, and sees the documented SANs/EKU.
    let leaf_pem = s.dir.0.join("leaf.pem");
    let chain_pem = s.dir.0.join("chain.pem");
    std::fs::write(&leaf_pem, pki::cert_pem(&chain[0])).expect("write");
    std::fs::write(&chain_pem, pki::cert_pem(&chain[1])).expect("write");
    let ca = s.mount.join("ca.crt").display().to_string();
    let (ok, text) = openssl(
        &[
            "verify",
            "-CAfile",
            &ca,
            "-untrusted",
            &chain_pem.display().to_string(),
            "-purpose",
            "sslserver",
            &leaf_pem.display().to_string(),
        ],
        "",
    );
    assert!(ok, "{text}");
    let (_, text) =
        openssl(&["x509", "-in", &leaf_pem.display().to_string(), "-noout", "-text"], "");
    assert!(text.contains(&format!("DNS:{}", web())), "{text}");
    assert!(text.contains("URI:spiffe://cluster.local/ns/prod/sa/web"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(text.contains("CA:FALSE"), "{text}");

    // openssl s_client against the Certify port: TLS 1.3, h2, a chain to the anchor for the
    // identity service's own name.
    let name = domain().identity_service_name().to_string();
    let (_, text) = openssl(
        &[
            "s_client",
            "-connect",
            &server.grpc.to_string(),
            "-servername",
            &name,
            "-CAfile",
            &ca,
            "-verify_hostname",
            &name,
            "-verify_return_error",
            "-alpn",
            "h2",
            "-showcerts",
        ],
        "",
    );
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(
        text.contains(&format!("CN = {name}")) || text.contains(&format!("CN={name}")),
        "{text}"
    );
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    assert_eq!(text.matches("-----BEGIN CERTIFICATE-----").count(), 2, "leaf + issuer:\n{text}");
    // ...and a wrong expected name is refused by openssl.
    let (_, text) = openssl(
        &[
            "s_client",
            "-connect",
            &server.grpc.to_string(),
            "-CAfile",
            &ca,
            "-verify_hostname",
            "web.example.com",
            "-verify_return_error",
        ],
        "",
    );
    assert!(!text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("verify error:num=62:hostname mismatch"), "{text}");

    let m = server.metrics();
    assert_eq!(support::metric(&m, "identity_certificates_issued_total", &[]), 1.0, "{m}");
    assert!(support::metric(&m, "identity_issuer_expiry_timestamp_seconds", &[]) > 1.7e9, "{m}");
    let (code, _) = support::admin_request(server.admin, "GET", "/ready", "");
    assert_eq!(code, 200);
    let (code, _) = support::admin_request(server.admin, "GET", "/live", "");
    assert_eq!(code, 200);
}

#[test]
fn identity_refusals_over_the_wire() {
    let s = setup("refusals");
    let server = IdentityServer::start_static(&s.mount, &s.tokens, &[]);
    let rt = rt();
    let code = |token: &str| {
        let c = client(&s, server.grpc, token);
        let err = rt.block_on(c.certify_once()).expect_err("refused");
        assert!(c.credentials().current().is_none());
        (err.status().map(tonic::Status::code), err.to_string())
    };
    let (c, msg) = code("db.token");
    assert_eq!(c, Some(tonic::Code::PermissionDenied), "{msg}");
    assert!(msg.contains("prod/db") && msg.contains(web().as_str()), "{msg}");
    let (c, msg) = code("bad.token");
    assert_eq!(c, Some(tonic::Code::Unauthenticated), "{msg}");
    let (c, msg) = code("missing.token");
    assert_eq!(c, None, "{msg}");
    let m = server.metrics();
    assert_eq!(
        support::metric(&m, "identity_certificate_refusals_total", &[("reason", "wrong_identity")]),
        1.0,
        "{m}"
    );
    assert_eq!(
        support::metric(&m, "identity_certificate_refusals_total", &[("reason", "invalid_token")]),
        1.0,
        "{m}"
    );
    assert_eq!(support::metric(&m, "identity_certificates_issued_total", &[]), 0.0, "{m}");
    assert!(server.logs().contains("\"reason\":\"wrong_identity\""), "{}", server.logs());
}

#[test]
fn identity_issuer_rotation_like_the_kubelet() {
    let s = setup("rotation");
    let server = IdentityServer::start_static(&s.mount, &s.tokens, &[]);
    let rt = rt();
    let c = client(&s, server.grpc, "web.token");
    let creds = c.credentials();
    rt.block_on(c.certify_once()).expect("certify");
    let (_, first) = leaf(&creds);
    let gen1 = s.dir.0.join("gen-1");

    // A broken rotation (an issuer from another root) is refused; the old issuer keeps signing.
    let other = generate(&s.dir.0, "other", &[]);
    kubelet_publish(
        &s.mount,
        "2026_02_01_00_00_00.000000001",
        &[
            ("ca.crt", read(&gen1.join("ca.crt"))),
            ("issuer.crt", read(&other.join("issuer.crt"))),
            ("issuer.key", read(&other.join("issuer.key"))),
        ],
    );
    assert!(
        support::eventually(Duration::from_secs(5), || {
            support::metric(
                &server.metrics(),
                "identity_issuer_reloads_total",
                &[("result", "error")],
            ) >= 1.0
        }),
        "the bad issuer was not noticed:\n{}",
        server.logs()
    );
    rt.block_on(c.certify_once()).expect("still certifies");
    let (_, still) = leaf(&creds);
    assert!(pki::is_signed_by(&still[0], &first[1]), "signed by the old issuer");

    // A good rotation: a new issuer under the same anchor (`weft certs generate --anchor-*`).
    let anchor = gen1.join("ca.crt").display().to_string();
    let anchor_key = gen1.join("ca.key").display().to_string();
    let next = generate(&s.dir.0, "2", &["--anchor-cert", &anchor, "--anchor-key", &anchor_key]);
    let swapped = Instant::now();
    kubelet_publish(
        &s.mount,
        "2026_03_01_00_00_00.000000001",
        &[
            ("ca.crt", read(&next.join("ca.crt"))),
            ("issuer.crt", read(&next.join("issuer.crt"))),
            ("issuer.key", read(&next.join("issuer.key"))),
        ],
    );
    let new_issuer =
        pki::parse_certs_pem("issuer", &read(&next.join("issuer.crt"))).expect("pem").remove(0);
    let rotated = support::eventually(Duration::from_secs(5), || {
        rt.block_on(c.certify_once()).is_ok() && pki::is_signed_by(&leaf(&creds).1[0], &new_issuer)
    });
    assert!(rotated, "still signing with the old issuer:\n{}", server.logs());
    eprintln!("identity: new issuer in use {:?} after the ..data swap", swapped.elapsed());
    assert_eq!(leaf(&creds).1[1], new_issuer.to_vec(), "the response carries the new issuer");
    let m = server.metrics();
    assert!(
        support::metric(&m, "identity_issuer_reloads_total", &[("result", "ok")]) >= 1.0,
        "{m}"
    );
    let expiry = support::metric(&m, "identity_issuer_expiry_timestamp_seconds", &[]);
    let new_expiry = CertSummary::parse(&new_issuer).expect("parse").not_after as f64;
    assert_eq!(expiry, new_expiry, "{m}");
    // The server's own certificate is re-issued by the new issuer too.
    let ca = s.mount.join("ca.crt").display().to_string();
    let (_, text) = openssl(
        &["s_client", "-connect", &server.grpc.to_string(), "-CAfile", &ca, "-showcerts"],
        "",
    );
    let served = text.split("-----BEGIN CERTIFICATE-----").nth(2).unwrap_or("");
    let new_pem = pki::cert_pem(&new_issuer);
    let new_body: String = new_pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let served_body: String = served.lines().take_while(|l| !l.starts_with("-----")).collect();
    assert_eq!(served_body, new_body, "{text}");
}

#[test]
fn identity_short_lifetime_renewal_and_outage() {
    let s = setup("lifetime");
    let server = IdentityServer::start_static(
        &s.mount,
        &s.tokens,
        &["--lifetime", "15s", "--clock-skew", "0s"],
    );
    let grpc = server.grpc;
    let rt = rt();
    let metrics = IdentityMetrics::default();
    let bundle = TrustBundle::from_pem("ca.crt", &read(&s.mount.join("ca.crt"))).expect("bundle");
    let mut cfg = ClientConfig::new(
        SharedTrust::new(bundle).expect("trust"),
        grpc.to_string(),
        domain().identity_service_name().clone(),
        web(),
        s.dir.0.join("web.token"),
    );
    cfg.min_backoff = Duration::from_millis(500);
    let c = Client::new(cfg, metrics.clone()).expect("client");
    let mut creds = c.credentials();
    let _task = rt.spawn(c.run());
    rt.block_on(creds.ready());
    let (first, _) = leaf(&creds);
    assert_eq!(first.not_after - first.not_before, 15);

    // Renewed at ~70 % of 15 s (10.5 s), before the first one expires.
    let mut rx = creds.watch();
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(14), rx.changed()).await })
        .expect("renewed within 14 s")
        .expect("watch");
    let (second, _) = leaf(&creds);
    assert_ne!(first.serial, second.serial);
    assert!(second.not_before < first.not_after, "renewed after expiry: {first:?} {second:?}");
    assert_eq!(metrics.refreshes.get(), 2);
    assert_eq!(metrics.expiration.get(), second.not_after as f64);

    // The service goes away for longer than a renewal period: the client keeps its certificate.
    drop(server);
    std::thread::sleep(Duration::from_secs(12));
    let (kept, _) = leaf(&creds);
    assert_eq!(kept.serial, second.serial, "the certificate changed while the service was down");
    assert_eq!(metrics.refreshes.get(), 2);

    // Back on the same port: the client recovers by itself.
    let back = IdentityServer::start(
        &s.mount,
        &grpc.to_string(),
        &[
            "--token-validator",
            "static",
            "--static-tokens",
            &s.tokens.display().to_string(),
            "--lifetime",
            "15s",
        ],
        &[],
    );
    let recovered =
        support::eventually(Duration::from_secs(10), || leaf(&creds).0.serial != second.serial);
    assert!(recovered, "no new certificate after the service came back:\n{}", back.logs());
    assert_eq!(metrics.refreshes.get(), 3);
}

#[test]
fn identity_token_review_through_the_fake_api() {
    let s = setup("tokenreview");
    let api = FakeApi::start();
    api.on_post("/apis/authentication.k8s.io/v1/tokenreviews", |review| {
        let token = review["spec"]["token"].as_str().unwrap_or_default().to_owned();
        let audiences = review["spec"]["audiences"].clone();
        let status = match token.as_str() {
            "projected-web" => serde_json::json!({
                "authenticated": true,
                "user": {
                    "username": "system:serviceaccount:prod:web",
                    "uid": "6b2a1e3c-0000-4000-8000-000000000001",
                    "groups": ["system:serviceaccounts", "system:serviceaccounts:prod", "system:authenticated"],
                    "extra": {"authentication.kubernetes.io/pod-name": ["web-7d4b9c6f5-abcde"]}
                },
                "audiences": audiences,
            }),
            "projected-db" => serde_json::json!({
                "authenticated": true,
                "user": {"username": "system:serviceaccount:prod:db", "groups": ["system:serviceaccounts"]},
                "audiences": audiences,
            }),
            _ => serde_json::json!({"authenticated": false, "error": "[invalid bearer token, token has expired]"}),
        };
        let mut answer = review.clone();
        answer["status"] = status;
        (201, answer)
    });
    std::fs::write(s.dir.0.join("web.token"), "projected-web").expect("token");
    std::fs::write(s.dir.0.join("db.token"), "projected-db").expect("token");
    let kubeconfig = api.kubeconfig();
    let server = IdentityServer::start(
        &s.mount,
        "127.0.0.1:0",
        &[],
        &[("KUBECONFIG", kubeconfig.as_path())],
    );
    let rt = rt();

    let c = client(&s, server.grpc, "web.token");
    rt.block_on(c.certify_once()).unwrap_or_else(|e| panic!("certify: {e}\n{}", server.logs()));
    assert_eq!(leaf(&c.credentials()).0.dns_names, vec![web().to_string()]);
    let status = |token: &str| -> Option<tonic::Code> {
        let c = client(&s, server.grpc, token);
        rt.block_on(c.certify_once())
            .err()
            .as_ref()
            .and_then(CertifyError::status)
            .map(tonic::Status::code)
    };
    assert_eq!(status("db.token"), Some(tonic::Code::PermissionDenied));
    assert_eq!(status("bad.token"), Some(tonic::Code::Unauthenticated));
    let posts: Vec<_> = api.requests().into_iter().filter(|r| r.starts_with("POST")).collect();
    assert_eq!(posts.len(), 3, "{posts:?}");
    assert!(posts[0].contains("/apis/authentication.k8s.io/v1/tokenreviews"), "{posts:?}");
}

/// A TLS connector to `server` as a proxy's client makes it (no client certificate).
fn connector(s: &Setup, server: &IdentityServer) -> weft_identity::control::Connector {
    let bundle = TrustBundle::from_pem("ca.crt", &read(&s.mount.join("ca.crt"))).expect("bundle");
    let trust = SharedTrust::new(bundle).expect("trust");
    let tls = weft_identity::control::ServiceTls::new(
        trust,
        domain().identity_service_name().clone(),
        None,
    )
    .expect("tls");
    weft_identity::control::Connector::new(
        "identity",
        server.grpc.into(),
        None,
        Some(tls),
        Duration::from_secs(5),
    )
}

/// A Certify above the decoding limit is refused with `OUT_OF_RANGE` and a message that
/// says so; one of ordinary size on the same server is still served.
#[test]
fn identity_oversized_certify_is_refused() {
    use linkerd2_proxy_api::identity::{CertifyRequest, identity_client::IdentityClient};
    let s = setup("oversized");
    let server = IdentityServer::start_static(&s.mount, &s.tokens, &[]);
    let rt = rt();
    let status = rt.block_on(async {
        let c = connector(&s, &server);
        let channel = c.endpoint().connect_with_connector(c).await.expect("connect");
        let req = CertifyRequest {
            identity: web().to_string(),
            token: vec![b'x'; 256 * 1024],
            certificate_signing_request: vec![0; 512],
        };
        IdentityClient::new(channel).certify(req).await.expect_err("refused")
    });
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{status:?}");
    let c = client(&s, server.grpc, "web.token");
    rt.block_on(c.certify_once()).expect("an ordinary Certify is still served");
    // Counted with the other refusals, under a reason of its own.
    let m = server.metrics();
    let refusals = "identity_certificate_refusals_total";
    assert_eq!(support::metric(&m, refusals, &[("reason", "message_too_large")]), 1.0, "{m}");
    assert_eq!(support::metric(&m, refusals, &[]), 1.0, "{m}");
    assert_eq!(support::metric(&m, "identity_certificates_issued_total", &[]), 1.0, "{m}");
}

/// One connection gets at most 16 Certify streams at once: with 16 stalled (headers, no
/// body), a 17th is not answered until one of them goes; a stalled one is ended by the
/// request timeout (CANCELLED) instead of being held for ever.
#[test]
fn identity_streams_per_connection_are_capped_and_timed_out() {
    let s = setup("streams");
    let server = IdentityServer::start_static(&s.mount, &s.tokens, &[]);
    let rt = rt();
    rt.block_on(async {
        let io = connector(&s, &server).connect().await.expect("connect");
        let (h2, conn) = h2::client::handshake(io).await.expect("h2 handshake");
        tokio::spawn(conn);
        let request = || {
            http::Request::builder()
                .method("POST")
                .uri("http://identity/io.linkerd.proxy.identity.Identity/Certify")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request")
        };
        // One whole request first: once it is answered the client has the server's
        // SETTINGS (sent first), so the cap below is the one the server announced. (Before
        // that, a 17th stream is refused by the server with REFUSED_STREAM.)
        let mut warm = h2.clone().ready().await.expect("ready");
        let (warm_rsp, mut warm_body) = warm.send_request(request(), false).expect("send");
        warm_body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).expect("body");
        let warm_rsp = tokio::time::timeout(Duration::from_secs(5), warm_rsp)
            .await
            .expect("no answer to a whole request")
            .expect("response");
        assert_eq!(warm_rsp.status(), 200);
        let mut stalled = Vec::new();
        for _ in 0..16 {
            let mut h2 = h2.clone().ready().await.expect("ready");
            let (rsp, body) = h2.send_request(request(), false).expect("send");
            stalled.push((rsp, body));
        }
        // The 17th: a whole (empty) request, answered at once when there is room.
        let mut h2 = h2.clone().ready().await.expect("ready");
        let (mut rsp17, mut body17) = h2.send_request(request(), false).expect("send");
        body17.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).expect("body");
        let early = tokio::time::timeout(Duration::from_millis(500), &mut rsp17).await;
        assert!(early.is_err(), "a 17th stream was served: {early:?}");
        // Dropping a stalled stream resets it, which frees a slot.
        let (first_rsp, _first_body) = stalled.remove(0);
        let (second_rsp, mut second_body) = stalled.remove(0);
        drop(second_rsp);
        second_body.send_reset(h2::Reason::CANCEL);
        let rsp = tokio::time::timeout(Duration::from_secs(5), rsp17)
            .await
            .expect("the 17th stream was not served once a slot was free")
            .expect("response");
        assert_eq!(rsp.status(), 200);
        // The stalled stream is ended by the server's request timeout (10 s).
        let rsp = tokio::time::timeout(Duration::from_secs(20), first_rsp)
            .await
            .expect("a stalled Certify was held past the request timeout")
            .expect("response");
        let grpc_status = rsp.headers().get("grpc-status").map(|v| v.as_bytes().to_vec());
        assert_eq!(grpc_status.as_deref(), Some(&b"1"[..]), "{rsp:?}");
    });
}

/// A client that does not speak TLS (here plain HTTP/1) fails its handshake, and the
/// failure is counted; the service keeps serving.
#[test]
fn identity_counts_failed_tls_handshakes() {
    use std::io::{Read, Write};
    let s = setup("handshakes");
    let server = IdentityServer::start_static(&s.mount, &s.tokens, &[]);
    let m = server.metrics();
    assert_eq!(support::metric(&m, "identity_tls_handshake_errors_total", &[]), 0.0, "{m}");
    let mut plain = std::net::TcpStream::connect(server.grpc).expect("connect");
    plain.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    plain.write_all(b"GET / HTTP/1.1\r\nHost: identity\r\n\r\n").expect("write");
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf);
    let counted = support::eventually(Duration::from_secs(10), || {
        support::metric(&server.metrics(), "identity_tls_handshake_errors_total", &[]) == 1.0
    });
    assert!(counted, "{}", server.metrics());
    let c = client(&s, server.grpc, "web.token");
    rt().block_on(c.certify_once()).expect("still served");
}
