//! The proxy's identity client: a key generated in memory (never written anywhere), a CSR
//! sent with the workload's token to the identity service (verified against the trust
//! anchors and its expected name), the certificate published for rustls, renewed at 70 % of
//! its lifetime, and kept while the service is down. The service is reached through
//! [`crate::control`] (its name resolved at every request). No Kubernetes client in here.

use std::{
    io,
    path::PathBuf,
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, SystemTime},
};

use linkerd2_proxy_api::identity::{
    CertifyRequest, CertifyResponse, identity_client::IdentityClient,
};
use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use rcgen::KeyPair;
use rustls::{
    client::danger::ServerCertVerifier,
    pki_types::{CertificateDer, ServerName, UnixTime},
    sign::CertifiedKey,
};
use tokio::sync::watch;

use crate::{
    SharedTrust,
    control::{self, Connector, ControlAddr, Resolver, ServiceTls},
    credentials::{CertResolver, certified_key},
    name::IdentityName,
    pki::{build_csr, generate_key},
};

/// What the client needs; see `ClientConfig::new` for the defaults.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Trust anchors the identity service's certificate must chain to (and ours too).
    pub trust: Arc<SharedTrust>,
    /// The identity service's address, `host:port` (an IP literal or a DNS name).
    pub addr: String,
    /// Resolves `addr` when it is a name; `None`: a resolver reading /etc/resolv.conf is
    /// made when one is needed.
    pub resolver: Option<Arc<Resolver>>,
    /// The name the identity service's certificate must carry, e.g.
    /// `identity.weft.serviceaccount.identity.weft.cluster.local`.
    pub server_name: IdentityName,
    /// This workload's identity, the name it asks a certificate for.
    pub local_name: IdentityName,
    /// The token proving `local_name`; re-read at every request (projected tokens rotate).
    pub token_file: PathBuf,
    /// Renewals are never closer together than this (10 s).
    pub min_refresh: Duration,
    /// First retry delay after a failure (1 s); doubles, with jitter, up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest retry delay (60 s); never past a third of the current certificate's remaining
    /// life, so a renewal is tried several times before it expires.
    pub max_backoff: Duration,
    /// Connect + request deadline (10 s).
    pub request_timeout: Duration,
}

impl ClientConfig {
    pub fn new(
        trust: Arc<SharedTrust>,
        addr: impl Into<String>,
        server_name: IdentityName,
        local_name: IdentityName,
        token_file: impl Into<PathBuf>,
    ) -> Self {
        Self {
            trust,
            addr: addr.into(),
            resolver: None,
            server_name,
            local_name,
            token_file: token_file.into(),
            min_refresh: Duration::from_secs(10),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The proxy's identity metrics, with Linkerd's names. Register them in the proxy's registry.
#[derive(Clone, Debug, Default)]
pub struct IdentityMetrics {
    /// `identity_cert_expiration_timestamp_seconds`: when the current certificate expires.
    pub expiration: Gauge<f64, AtomicU64>,
    /// `identity_cert_refreshes_total`: certificates obtained.
    pub refreshes: Counter,
}

impl IdentityMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "identity_cert_expiration_timestamp_seconds",
            "Time when this proxy's current mTLS identity certificate expires (Unix seconds)",
            self.expiration.clone(),
        );
        registry.register(
            "identity_cert_refreshes",
            "Times this proxy's mTLS identity certificate has been obtained",
            self.refreshes.clone(),
        );
    }
}

/// Why one Certify attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("cannot read the token file {path}: {source}")]
    Token { path: String, source: io::Error },
    #[error("cannot reach the identity service at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// A gRPC status: a refusal (with the service's reason), or a connection lost mid-call.
    #[error("Certify failed: {:?}: {}", .0.code(), .0.message())]
    Refused(tonic::Status),
    #[error("the identity service did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the identity service's answer is unusable: {0}")]
    BadResponse(String),
}

impl CertifyError {
    /// The gRPC status of a refusal, if the service answered with one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            CertifyError::Refused(s) => Some(s),
            _ => None,
        }
    }
}

/// Why the client cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error("invalid identity service address: {0}")]
    Addr(#[from] control::AddrError),
    #[error("the identity service's address is a name: {0}")]
    Resolver(#[from] control::ResolverError),
}

/// Read side of the current certificate: what the proxy's TLS configs use.
#[derive(Clone, Debug)]
pub struct Credentials {
    local_name: IdentityName,
    rx: watch::Receiver<Option<Arc<CertifiedKey>>>,
}

impl Credentials {
    pub fn local_name(&self) -> &IdentityName {
        &self.local_name
    }

    /// The current certificate; `None` until the first one is obtained.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.rx.borrow().clone()
    }

    pub fn is_ready(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// Waits until a certificate is installed (for `/ready`).
    pub async fn ready(&mut self) {
        let _ = self.rx.wait_for(Option::is_some).await;
    }

    pub fn watch(&self) -> watch::Receiver<Option<Arc<CertifiedKey>>> {
        self.rx.clone()
    }

    /// A rustls server and client certificate resolver that serves the latest certificate
    /// at every handshake.
    pub fn resolver(&self) -> Arc<CertResolver> {
        CertResolver::new(self.rx.clone())
    }
}

/// The certificate lifecycle of one workload.
pub struct Client {
    config: ClientConfig,
    addr: ControlAddr,
    key: KeyPair,
    csr: Vec<u8>,
    tx: watch::Sender<Option<Arc<CertifiedKey>>>,
    metrics: IdentityMetrics,
}

impl Client {
    /// Generates the key (in memory only) and the CSR.
    pub fn new(config: ClientConfig, metrics: IdentityMetrics) -> Result<Self, ClientError> {
        let addr: ControlAddr = config.addr.parse()?;
        let mut config = config;
        if addr.is_name() && config.resolver.is_none() {
            config.resolver = Some(Resolver::from_resolv_conf(
                control::RESOLV_CONF,
                control::DEFAULT_RESOLVE_TIMEOUT,
            )?);
        }
        let key = generate_key()?;
        let csr = build_csr(&key, &config.local_name)?;
        let (tx, _) = watch::channel(None);
        Ok(Self { config, addr, key, csr, tx, metrics })
    }

    pub fn credentials(&self) -> Credentials {
        Credentials { local_name: self.config.local_name.clone(), rx: self.tx.subscribe() }
    }

    /// Runs the lifecycle on a task of its own.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    /// Certifies, then renews forever: at 70 % of the remaining lifetime (never sooner than
    /// `min_refresh`), and after a failure with jittered exponential backoff while the
    /// current certificate keeps being served.
    pub async fn run(self) {
        let mut failures = 0u32;
        let mut expiry: Option<SystemTime> = None;
        loop {
            let delay = match self.certify_once().await {
                Ok(valid_until) => {
                    failures = 0;
                    expiry = Some(valid_until);
                    let now = SystemTime::now();
                    tracing::info!(
                        identity = %self.config.local_name,
                        valid_for = ?valid_until.duration_since(now).unwrap_or_default(),
                        "identity certificate installed"
                    );
                    refresh_delay(valid_until, now, self.config.min_refresh)
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let remaining =
                        expiry.map(|e| e.duration_since(SystemTime::now()).unwrap_or_default());
                    let delay = backoff(&self.config, failures, remaining);
                    tracing::warn!(
                        identity = %self.config.local_name,
                        %error,
                        retry_in = ?delay,
                        has_certificate = self.tx.borrow().is_some(),
                        "could not obtain an identity certificate"
                    );
                    delay
                }
            };
            tokio::time::sleep(delay).await;
        }
    }

    /// One Certify round trip; on success the new certificate is installed and its expiry
    /// returned. On failure nothing changes: the current certificate stays.
    pub async fn certify_once(&self) -> Result<SystemTime, CertifyError> {
        let cfg = &self.config;
        // A small local file, read rarely: not worth a blocking-pool hop.
        let token = std::fs::read(&cfg.token_file).map_err(|source| CertifyError::Token {
            path: cfg.token_file.display().to_string(),
            source,
        })?;
        let req = CertifyRequest {
            identity: cfg.local_name.to_string(),
            token,
            certificate_signing_request: self.csr.clone(),
        };
        let rsp = tokio::time::timeout(cfg.request_timeout, self.request(req))
            .await
            .map_err(|_| CertifyError::Timeout(cfg.request_timeout))??;

        let (ck, valid_until) =
            accept_response(rsp, &self.key, &cfg.local_name, &cfg.trust, SystemTime::now())?;

        // Metrics first, so that whoever sees the new certificate sees them updated too.
        self.metrics.refreshes.inc();
        let secs =
            valid_until.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        self.metrics.expiration.set(secs);
        self.tx.send_replace(Some(ck));
        Ok(valid_until)
    }

    async fn request(
        &self,
        req: CertifyRequest,
    ) -> Result<linkerd2_proxy_api::identity::CertifyResponse, CertifyError> {
        let cfg = &self.config;
        let connect_err = |reason: String| CertifyError::Connect { addr: cfg.addr.clone(), reason };
        // Built per request: renewals are rare, and each one resolves the name again and
        // verifies the service against the current anchors. No client certificate: the
        // workload asks for its first one here.
        let tls = ServiceTls::new(cfg.trust.clone(), cfg.server_name.clone(), None)
            .map_err(|e| connect_err(e.to_string()))?;
        let connector = Connector::new(
            "identity",
            self.addr.clone(),
            cfg.resolver.clone(),
            Some(tls),
            cfg.request_timeout,
        );
        let channel = connector
            .endpoint()
            .connect_with_connector(connector)
            .await
            .map_err(|e| connect_err(error_chain(&e)))?;
        let rsp = IdentityClient::new(channel).certify(req).await.map_err(CertifyError::Refused)?;
        Ok(rsp.into_inner())
    }
}

/// Checks the identity service's answer to a Certify for `key` and `name`, as of `now`: a
/// validity that has not ended, and a leaf that carries `key` and verifies for `name`
/// against `trust`. Returns the certificate to install and the end of its validity. On its
/// own (no I/O) because the answer comes from the network: tests and fuzzers call it.
pub fn accept_response(
    rsp: CertifyResponse,
    key: &KeyPair,
    name: &IdentityName,
    trust: &SharedTrust,
    now: SystemTime,
) -> Result<(Arc<CertifiedKey>, SystemTime), CertifyError> {
    let bad = |m: String| CertifyError::BadResponse(m);
    let valid_until: SystemTime = rsp
        .valid_until
        .ok_or_else(|| bad("no valid_until".into()))?
        .try_into()
        .map_err(|e| bad(format!("valid_until: {e}")))?;
    if valid_until <= now {
        return Err(bad("the certificate has already expired".into()));
    }
    let leaf = CertificateDer::from(rsp.leaf_certificate);
    let chain: Vec<_> =
        rsp.intermediate_certificates.into_iter().map(CertificateDer::from).collect();
    // Only a certificate that carries our key and proves our name to a peer is installed.
    let ck = certified_key(key, leaf.clone(), &chain)
        .map_err(|e| bad(format!("the certificate is not for our key: {e}")))?;
    let server_name = ServerName::try_from(name.to_string()).map_err(|e| bad(e.to_string()))?;
    let unix_now =
        UnixTime::since_unix_epoch(now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
    trust
        .bundle()
        .server_verifier()
        .and_then(|v| v.verify_server_cert(&leaf, &chain, &server_name, &[], unix_now))
        .map_err(|e| bad(format!("the certificate does not verify for {name}: {e}")))?;
    // Renewal is planned from `valid_until`: never past the leaf's own end, or a service
    // that says "valid for ever" would have the proxy keep a certificate that expired.
    let not_after = crate::pki::CertSummary::parse(&leaf)
        .ok()
        .and_then(|c| u64::try_from(c.not_after).ok())
        .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)));
    let valid_until = not_after.map_or(valid_until, |n| valid_until.min(n));
    Ok((ck, valid_until))
}

/// When to renew a certificate valid until `valid_until`: at 70 % of its remaining life,
/// never sooner than `min_refresh`.
pub fn refresh_delay(valid_until: SystemTime, now: SystemTime, min_refresh: Duration) -> Duration {
    let remaining = valid_until.duration_since(now).unwrap_or_default();
    // Divided first: `remaining * 7` overflows for a far-future `valid_until`.
    (remaining / 10 * 7).max(min_refresh)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(e) = src {
        s.push_str(": ");
        s.push_str(&e.to_string());
        src = e.source();
    }
    s
}

/// The delay before retry `failures` (1, 2, ...): `min_backoff` doubling up to `max_backoff`,
/// at most a third of the certificate's remaining life, jittered to [d/2, d].
fn backoff(cfg: &ClientConfig, failures: u32, remaining: Option<Duration>) -> Duration {
    let exp = cfg
        .min_backoff
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(cfg.max_backoff);
    let d = match remaining {
        Some(r) if !r.is_zero() => exp.min((r / 3).max(cfg.min_backoff)),
        _ => exp,
    };
    let half = d / 2;
    half + half.mul_f64(jitter())
}

/// A number in [0, 1) from the crypto provider's randomness; jitter needs no better.
fn jitter() -> f64 {
    let mut b = [0u8; 4];
    let _ = crate::provider().secure_random.fill(&mut b);
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
#[path = "client_tests.rs"]
pub(crate) mod tests;
