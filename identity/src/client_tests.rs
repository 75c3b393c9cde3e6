//! The client against the real server in-process (real sockets, real TLS): a certificate
//! obtained and served, refusals carried as gRPC statuses, the service verified by name and
//! anchor, renewal before expiry, issuer reload through a kubelet-style `..data` swap.
#![allow(clippy::unwrap_used)]

use std::{path::Path, sync::atomic::AtomicUsize};

use tokio::net::TcpListener;

use super::*;
use crate::{
    IdentityDomain, TrustBundle,
    ca::CaConfig,
    pki::{CertSummary, PkiParams, generate_pki},
    server::{Config, IdentityService, TokenSource},
};

pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("weft-identity-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn domain() -> IdentityDomain {
    IdentityDomain::new("weft", "cluster.local").unwrap()
}

/// Lays out files the way the kubelet does (see `reload`), generation `gen`.
fn kubelet_write(dir: &Path, generation: &str, files: &[(&str, &[u8])]) {
    let gen_dir = dir.join(format!("..{generation}"));
    std::fs::create_dir_all(&gen_dir).unwrap();
    for (name, data) in files {
        std::fs::write(gen_dir.join(name), data).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        if dir.join(name).symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
    }
}

struct Harness {
    dir: TempDir,
    anchor_pem: String,
    addr: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start(lifetime: Duration) -> Harness {
    let dir = TempDir::new("client");
    let pki = generate_pki(&PkiParams::for_trust_domain("cluster.local")).unwrap();
    kubelet_write(
        &dir.0,
        "2026_01_01",
        &[
            ("ca.crt", pki.anchor_pem.as_bytes()),
            ("issuer.crt", pki.issuer_pem.as_bytes()),
            ("issuer.key", pki.issuer_key_pem.as_bytes()),
        ],
    );
    std::fs::write(dir.0.join("tokens.yaml"), "web-token: prod/web\ndb-token: prod/db\n").unwrap();
    std::fs::write(dir.0.join("web.token"), "web-token\n").unwrap();
    std::fs::write(dir.0.join("db.token"), "db-token").unwrap();
    std::fs::write(dir.0.join("bad.token"), "nope").unwrap();
    let mut ca = CaConfig::new(domain());
    ca.lifetime = lifetime;
    ca.clock_skew = Duration::ZERO;
    let svc = IdentityService::load(Config {
        ca,
        issuer_cert: dir.0.join("issuer.crt"),
        issuer_key: dir.0.join("issuer.key"),
        trust_bundle: dir.0.join("ca.crt"),
        tokens: TokenSource::Static(dir.0.join("tokens.yaml")),
        reload_interval: Duration::from_millis(100),
    })
    .unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        svc.serve(grpc, admin, std::future::pending()).await.unwrap();
    });
    Harness { dir, anchor_pem: pki.anchor_pem, addr, server }
}

fn trust(pem: &str) -> Arc<SharedTrust> {
    SharedTrust::new(TrustBundle::from_pem("anchors", pem.as_bytes()).unwrap()).unwrap()
}

fn config(h: &Harness, sa: &str, token: &str) -> ClientConfig {
    let d = domain();
    ClientConfig::new(
        trust(&h.anchor_pem),
        h.addr.clone(),
        d.identity_service_name().clone(),
        d.identity("prod", sa).unwrap(),
        h.dir.0.join(token),
    )
}

fn leaf_of(ck: &CertifiedKey) -> CertSummary {
    CertSummary::parse(&ck.cert[0]).unwrap()
}

#[tokio::test]
async fn obtains_and_serves_a_certificate() {
    let h = start(Duration::from_secs(3600)).await;
    let metrics = IdentityMetrics::default();
    let client = Client::new(config(&h, "web", "web.token"), metrics.clone()).unwrap();
    let creds = client.credentials();
    assert!(!creds.is_ready());
    assert!(!rustls::client::ResolvesClientCert::has_certs(&*creds.resolver()));
    let valid_until = client.certify_once().await.unwrap();
    assert!(creds.is_ready());
    let ck = creds.current().unwrap();
    let leaf = leaf_of(&ck);
    assert_eq!(leaf.dns_names, vec!["web.prod.serviceaccount.identity.weft.cluster.local"]);
    assert_eq!(leaf.not_after, crate::pki::unix_secs(valid_until));
    assert_eq!(ck.cert.len(), 2, "leaf and issuer");
    assert!(rustls::client::ResolvesClientCert::has_certs(&*creds.resolver()));
    assert_eq!(metrics.refreshes.get(), 1);
    assert_eq!(metrics.expiration.get(), crate::pki::unix_secs(valid_until) as f64);
    let mut reg = Registry::default();
    metrics.register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(text.contains("identity_cert_refreshes_total 1"), "{text}");
    assert!(text.contains("identity_cert_expiration_timestamp_seconds "), "{text}");
}

#[tokio::test]
async fn refusals_carry_their_status() {
    let h = start(Duration::from_secs(3600)).await;
    let status = |e: CertifyError| e.status().map(tonic::Status::code);
    let client = Client::new(config(&h, "web", "db.token"), IdentityMetrics::default()).unwrap();
    let err = client.certify_once().await.unwrap_err();
    assert!(err.to_string().contains("prod/db"), "{err}");
    assert_eq!(status(err), Some(tonic::Code::PermissionDenied));
    let client = Client::new(config(&h, "web", "bad.token"), IdentityMetrics::default()).unwrap();
    assert_eq!(
        status(client.certify_once().await.unwrap_err()),
        Some(tonic::Code::Unauthenticated)
    );
    assert!(client.credentials().current().is_none());
    let client =
        Client::new(config(&h, "web", "missing.token"), IdentityMetrics::default()).unwrap();
    assert!(matches!(client.certify_once().await, Err(CertifyError::Token { .. })));
}

#[tokio::test]
async fn verifies_the_service_by_anchor_and_name() {
    let h = start(Duration::from_secs(3600)).await;
    // Another name than the service's.
    let mut cfg = config(&h, "web", "web.token");
    cfg.server_name = domain().identity("weft", "destination").unwrap();
    let err =
        Client::new(cfg, IdentityMetrics::default()).unwrap().certify_once().await.unwrap_err();
    assert!(matches!(err, CertifyError::Connect { .. }), "{err}");
    assert!(
        err.to_string().contains("NotValidForName") || err.to_string().contains("name"),
        "{err}"
    );
    // Other anchors.
    let other = generate_pki(&PkiParams::for_trust_domain("cluster.local")).unwrap();
    let mut cfg = config(&h, "web", "web.token");
    cfg.trust = trust(&other.anchor_pem);
    let err =
        Client::new(cfg, IdentityMetrics::default()).unwrap().certify_once().await.unwrap_err();
    assert!(matches!(err, CertifyError::Connect { .. }), "{err}");
    // Same subject as our anchor but another key: BadSignature; else UnknownIssuer.
    assert!(err.to_string().contains("invalid peer certificate"), "{err}");
}

#[tokio::test]
async fn renews_before_expiry() {
    let h = start(Duration::from_secs(3)).await;
    let mut cfg = config(&h, "web", "web.token");
    cfg.min_refresh = Duration::from_millis(500);
    let metrics = IdentityMetrics::default();
    let client = Client::new(cfg, metrics.clone()).unwrap();
    let mut creds = client.credentials();
    let task = client.spawn();
    creds.ready().await;
    let first = leaf_of(&creds.current().unwrap());
    let mut rx = creds.watch();
    tokio::time::timeout(Duration::from_secs(4), rx.changed()).await.unwrap().unwrap();
    let second = leaf_of(&creds.current().unwrap());
    assert_ne!(first.serial, second.serial);
    // Renewed at ~70 % of 3 s, i.e. before the first one expired.
    assert!(second.not_before < first.not_after, "{first:?} {second:?}");
    assert_eq!(metrics.refreshes.get(), 2);
    task.abort();
}

#[tokio::test]
async fn server_picks_up_a_kubelet_issuer_swap() {
    let h = start(Duration::from_secs(3600)).await;
    let client = Client::new(config(&h, "web", "web.token"), IdentityMetrics::default()).unwrap();
    client.certify_once().await.unwrap();
    let before = leaf_of(&client.credentials().current().unwrap());
    // A new issuer from a new anchor; the bundle holds both anchors (rotation).
    let next = generate_pki(&PkiParams {
        issuer_name: "identity-2.cluster.local".into(),
        ..PkiParams::for_trust_domain("cluster.local")
    })
    .unwrap();
    let bundle = format!("{}{}", h.anchor_pem, next.anchor_pem);
    kubelet_write(
        &h.dir.0,
        "2026_01_02",
        &[
            ("ca.crt", bundle.as_bytes()),
            ("issuer.crt", next.issuer_pem.as_bytes()),
            ("issuer.key", next.issuer_key_pem.as_bytes()),
        ],
    );
    let mut cfg = config(&h, "web", "web.token");
    cfg.trust = trust(&bundle);
    let client = Client::new(cfg, IdentityMetrics::default()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        // The service's own certificate is re-issued too, so the old-anchor-only client may
        // be refused mid-swap; the client trusting both always gets through.
        if client.certify_once().await.is_ok() {
            let after = leaf_of(&client.credentials().current().unwrap());
            if after.issuer != before.issuer {
                assert_eq!(after.issuer, "CN=identity-2.cluster.local");
                break;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the server kept the old issuer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn backoff_grows_with_jitter_and_stays_before_expiry() {
    let h = ClientConfig::new(
        trust(&generate_pki(&PkiParams::for_trust_domain("x.y")).unwrap().anchor_pem),
        "127.0.0.1:1",
        domain().identity_service_name().clone(),
        domain().identity("a", "b").unwrap(),
        "/dev/null",
    );
    let secs = |d: Duration| d.as_secs_f64();
    for n in 1..10 {
        let d = secs(backoff(&h, n, None));
        let full = (2f64.powi(i32::try_from(n).unwrap() - 1)).min(60.0);
        assert!(d >= full / 2.0 && d <= full, "{n}: {d}");
    }
    // With 30 s of certificate left, retries come at most every 10 s.
    assert!(backoff(&h, 9, Some(Duration::from_secs(30))) <= Duration::from_secs(10));
    // Never below half the minimum.
    assert!(backoff(&h, 9, Some(Duration::from_millis(10))) >= Duration::from_millis(500));
}

#[test]
fn refuses_a_bad_address() {
    let h = ClientConfig::new(
        trust(&generate_pki(&PkiParams::for_trust_domain("x.y")).unwrap().anchor_pem),
        "no port here",
        domain().identity_service_name().clone(),
        domain().identity("a", "b").unwrap(),
        "/dev/null",
    );
    assert!(matches!(Client::new(h, IdentityMetrics::default()), Err(ClientError::Addr(_))));
}

/// Found by the `certify_response` fuzzer: a Certify answer whose `valid_until` is far in
/// the future (here `i64::MAX` seconds) made the renewal delay overflow (`remaining * 7`)
/// and panic the client task, so the proxy never renewed. The leaf's own end now bounds
/// `valid_until`, and the delay cannot overflow.
#[test]
fn a_far_future_valid_until_is_bounded_by_the_leaf() {
    let pki = generate_pki(&PkiParams::for_trust_domain("cluster.local")).unwrap();
    let bundle = TrustBundle::from_pem("anchors", pki.anchor_pem.as_bytes()).unwrap();
    let now = SystemTime::now();
    let issuer = crate::ca::Issuer::from_pem(
        pki.issuer_pem.as_bytes(),
        pki.issuer_key_pem.as_bytes(),
        &bundle,
        now,
    )
    .unwrap();
    let ca = crate::ca::Ca::new(CaConfig::new(domain()), issuer);
    let name = domain().identity("prod", "web").unwrap();
    let key = generate_key().unwrap();
    let csr = crate::ca::check_csr(&build_csr(&key, &name).unwrap(), &name).unwrap();
    let issued = ca.issue(&name, &csr, now).unwrap();
    let rsp = CertifyResponse {
        leaf_certificate: issued.leaf.to_vec(),
        intermediate_certificates: issued.chain.iter().map(|c| c.to_vec()).collect(),
        valid_until: Some(prost_types::Timestamp { seconds: i64::MAX, nanos: 0 }),
    };
    let trust = SharedTrust::new(bundle).unwrap();
    let (_, valid_until) = accept_response(rsp, &key, &name, &trust, now).unwrap();
    assert!(valid_until <= issued.valid_until);
    let delay = refresh_delay(valid_until, now, Duration::from_secs(10));
    assert!(delay < Duration::from_secs(24 * 3600), "{delay:?}");
    // And the delay alone, for any end: no overflow.
    let far = SystemTime::UNIX_EPOCH + Duration::from_secs(i64::MAX as u64);
    assert!(refresh_delay(far, now, Duration::from_secs(10)) < far.duration_since(now).unwrap());
}
