//! The identity service: `io.linkerd.proxy.identity.Identity/Certify` over gRPC with TLS
//! (its own certificate issued by its own CA), the issuer/bundle/token files re-read as they
//! change, and the admin port.

use std::{
    future::Future,
    io,
    path::PathBuf,
    sync::{Arc, atomic::AtomicBool},
    time::{Duration, SystemTime},
};

use linkerd2_proxy_api::identity::{
    CertifyRequest, CertifyResponse,
    identity_server::{Identity, IdentityServer},
};
use prometheus_client::registry::Registry;
use rcgen::KeyPair;
use rustls::sign::CertifiedKey;
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;
use tonic::{
    codegen::{BoxFuture, Context, Poll, Service},
    server::NamedService,
};

use crate::{
    TrustBundle,
    ca::{Ca, CaConfig, CheckedCsr, Issuer, IssuerError, Refusal},
    credentials::{CertResolver, certified_key},
    incoming::{self, Handshake, OnHandshake, TlsConnectInfo, TlsIncoming},
    loud::LoudEvery,
    name::{IdentityName, echo},
    pki::{PkiError, generate_key, unix_secs},
    reload::{FileSet, Snapshot},
    token::{StaticTokens, StaticTokensError, TokenValidator},
};

pub mod admin;
pub mod metrics;

pub use metrics::CaMetrics;

/// Largest Certify request decoded: a token (a projected service account token is ~1 KiB,
/// a static one smaller) and a CSR (~0.5 KiB for a P-256 key), with ample margin. Larger
/// requests are refused with `OUT_OF_RANGE` before they are buffered whole.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Most Certify streams at once on one connection. A proxy sends one at a time; the cap
/// bounds what a single connection can make the service buffer.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// How long one Certify may take: above the TokenReview's own limit (5 s, see
/// `token::kubernetes`) with margin, so a review that times out is still answered.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection is served: then it gets a GOAWAY, its Certify calls in flight
/// finish (each within `REQUEST_TIMEOUT`), and it closes. A proxy opens a connection per
/// renewal and drops it after its one Certify, so no real client holds one for minutes; one
/// that does (a leak, or a client that completed TLS and the preface and then went quiet)
/// gives its place back. This stands in for gRPC's MaxConnectionIdle, which tonic has not:
/// on this service the two differ only for a connection making Certify calls for minutes.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(5 * 60);

/// The limits on the gRPC listener's connections: the defaults are for production; tests
/// shorten the deadlines.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Caps and handshake deadlines (see `incoming`).
    pub incoming: incoming::Limits,
    pub max_connection_age: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            incoming: incoming::Limits::default(),
            max_connection_age: MAX_CONNECTION_AGE,
        }
    }
}

/// Where tokens are checked.
pub enum TokenSource {
    /// A static token file, re-read when it changes.
    Static(PathBuf),
    /// Any validator, e.g. `token::kubernetes::TokenReviewValidator`.
    Validator(Arc<dyn TokenValidator>),
}

pub struct Config {
    pub ca: CaConfig,
    pub issuer_cert: PathBuf,
    pub issuer_key: PathBuf,
    pub trust_bundle: PathBuf,
    pub tokens: TokenSource,
    /// How often the files are polled for changes.
    pub reload_interval: Duration,
}

/// Why the service cannot start; each names the file or setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    // The underlying errors are in the messages, not chained as sources, so that a report
    // of the chain does not print them twice.
    #[error("cannot read {what}: {error}")]
    Read { what: &'static str, error: io::Error },
    #[error("trust bundle {path}: {error}")]
    Bundle { path: String, error: PkiError },
    #[error("issuer {path}: {error}")]
    Issuer { path: String, error: IssuerError },
    #[error(transparent)]
    Tokens(#[from] StaticTokensError),
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the identity service's own certificate: {0}")]
    OwnCert(String),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// A loaded identity service, ready to serve.
pub struct IdentityService {
    ca: Arc<Ca>,
    tokens: Arc<dyn TokenValidator>,
    static_tokens: Option<(Arc<StaticTokens>, FileSet)>,
    pki_files: FileSet,
    metrics: CaMetrics,
    registry: Registry,
    own: OwnCert,
    reload_interval: Duration,
    limits: ConnectionLimits,
}

impl IdentityService {
    /// Reads and checks the issuer, the trust bundle and the tokens; refuses to start with an
    /// issuer that does not chain to the bundle, is not a CA, or is expired.
    pub fn load(config: Config) -> Result<Self, ServerError> {
        let mut pki_files = FileSet::new(vec![
            config.issuer_cert.clone(),
            config.issuer_key.clone(),
            config.trust_bundle.clone(),
        ]);
        let snapshot = pki_files.read().map_err(|error| ServerError::Read {
            what: "the issuer and trust bundle files",
            error,
        })?;
        pki_files.mark_seen(&snapshot);
        let issuer = load_issuer(pki_files.paths(), &snapshot)?;
        let issuer_not_after = issuer.not_after();
        let domain = config.ca.domain.clone();
        let ca = Arc::new(Ca::new(config.ca, issuer));

        let (tokens, static_tokens): (Arc<dyn TokenValidator>, _) = match config.tokens {
            TokenSource::Validator(v) => (v, None),
            TokenSource::Static(path) => {
                let mut files = FileSet::new(vec![path.clone()]);
                let s = files
                    .read()
                    .map_err(|error| ServerError::Read { what: "the static token file", error })?;
                files.mark_seen(&s);
                let st = Arc::new(StaticTokens::parse(
                    &path.display().to_string(),
                    &s.contents[0],
                    &domain,
                )?);
                (st.clone() as Arc<dyn TokenValidator>, Some((st, files)))
            }
        };

        let mut registry = Registry::default();
        let metrics = CaMetrics::register(&mut registry);
        metrics.issuer_expiry.set(issuer_not_after);
        let own = OwnCert::new(&ca)?;
        Ok(Self {
            ca,
            tokens,
            static_tokens,
            pki_files,
            metrics,
            registry,
            own,
            reload_interval: config.reload_interval,
            limits: ConnectionLimits::default(),
        })
    }

    /// Replaces the default connection limits.
    pub fn with_connection_limits(mut self, limits: ConnectionLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// The name the service's own certificate carries (what clients verify).
    pub fn service_name(&self) -> &IdentityName {
        self.ca.config().domain.identity_service_name()
    }

    /// Registers more metrics next to the service's own (e.g. process metrics).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Serves Certify on `grpc` and the admin endpoints on `admin` until `shutdown`.
    pub async fn serve(
        self,
        grpc: TcpListener,
        admin: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError> {
        let IdentityService {
            ca,
            tokens,
            static_tokens,
            pki_files,
            metrics,
            registry,
            own,
            reload_interval,
            limits,
        } = self;
        let tls = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(CertResolver::new(own.rx.clone()));
        let mut tls = tls;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let ready = Arc::new(AtomicBool::new(true));
        let admin_task = tokio::spawn(admin::serve(admin, Arc::new(registry), ready));
        let reload_task = tokio::spawn(
            Reloader {
                ca: ca.clone(),
                pki_files,
                static_tokens,
                metrics: metrics.clone(),
                own,
                interval: reload_interval,
            }
            .run(),
        );
        let incoming =
            TlsIncoming::new(grpc, acceptor, on_handshake(metrics.clone()), limits.incoming);

        let loud = Arc::new(LoudEvery::new(Duration::from_secs(1)));
        let certifier = Certifier { ca, tokens, metrics: metrics.clone(), loud: loud.clone() };
        let svc = IdentityServer::new(certifier).max_decoding_message_size(MAX_REQUEST_BYTES);
        let svc = CountDecoderRefusals { inner: svc, metrics, loud };
        let result = tonic::transport::Server::builder()
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .timeout(REQUEST_TIMEOUT)
            // Connections are short (one Certify per renewal): notice the vanished ones.
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            // Graceful (GOAWAY). No `max_connection_age_grace`: tonic would then skip the
            // GOAWAY and close abruptly; `timeout` already bounds what is in flight.
            .max_connection_age(limits.max_connection_age)
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        reload_task.abort();
        admin_task.abort();
        Ok(result?)
    }
}

/// Counts the Certify requests that tonic's decoder refuses before `Certifier` sees them:
/// too large (`OUT_OF_RANGE`), or undecodable (`INTERNAL`: protobuf garbage, a string that is
/// not UTF-8, an unsupported compression). Every refusal is counted under a reason, these too.
#[derive(Clone)]
struct CountDecoderRefusals<S> {
    inner: S,
    metrics: CaMetrics,
    loud: Arc<LoudEvery>,
}

/// Put in each request's extensions; `Certifier` sets it, so that a failed response
/// without it came from the decoder.
#[derive(Clone, Default)]
struct Reached(Arc<AtomicBool>);

impl<S: NamedService> NamedService for CountDecoderRefusals<S> {
    const NAME: &'static str = S::NAME;
}

type HttpRequest = http::Request<tonic::body::Body>;
type HttpResponse = http::Response<tonic::body::Body>;

impl<S> Service<HttpRequest> for CountDecoderRefusals<S>
where
    S: Service<HttpRequest, Response = HttpResponse, Error = std::convert::Infallible>
        + NamedService,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<HttpResponse, std::convert::Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: HttpRequest) -> Self::Future {
        // Other paths are answered UNIMPLEMENTED by tonic: not Certify requests.
        let certify = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(S::NAME))
            .is_some_and(|m| m == "/Certify");
        let reached = Reached::default();
        req.extensions_mut().insert(reached.clone());
        let peer = req.extensions().get::<TlsConnectInfo>().map(|i| i.peer);
        let rsp = self.inner.call(req);
        let (metrics, loud) = (self.metrics.clone(), self.loud.clone());
        // Boxed: one Certify per proxy per renewal, not a hot path.
        Box::pin(async move {
            let rsp = rsp.await?;
            let from_decoder = certify && !reached.0.load(std::sync::atomic::Ordering::Relaxed);
            if let Some(refusal) = from_decoder.then(|| decoder_refusal(rsp.headers())).flatten() {
                metrics.refused(&refusal);
                // As `Certifier` logs its refusals: loud at most once a second.
                if loud.take() {
                    tracing::info!(client.addr = ?peer, reason = refusal.reason(), error = %refusal, "refused");
                } else {
                    tracing::debug!(client.addr = ?peer, reason = refusal.reason(), error = %refusal, "refused");
                }
            }
            Ok(rsp)
        })
    }
}

/// The refusal a response of the decoder's stands for, when it is one: its status in the
/// headers (a trailers-only response) and not OK. `OUT_OF_RANGE` is the size limit; any
/// other is a request that could not be decoded.
fn decoder_refusal(headers: &http::HeaderMap) -> Option<Refusal> {
    let status = tonic::Status::from_header_map(headers)?;
    match status.code() {
        tonic::Code::Ok => None,
        tonic::Code::OutOfRange => Some(Refusal::TooLarge { limit: MAX_REQUEST_BYTES }),
        _ => Some(Refusal::MalformedRequest(crate::name::truncate(
            status.message(),
            crate::name::MAX_ECHO_BYTES,
        ))),
    }
}

/// Counts failed handshakes, connections refused (by reason) and accept errors; the
/// refusals are logged in `incoming`.
fn on_handshake(metrics: CaMetrics) -> OnHandshake {
    Arc::new(move |h| match h {
        Handshake::Done(_) => {}
        Handshake::Failed { .. } => {
            metrics.tls_handshake_errors.inc();
        }
        Handshake::Refused { reason, .. } => {
            metrics.connection_refused(reason);
        }
        Handshake::AcceptFailed { .. } => {
            metrics.accept_errors.inc();
        }
    })
}

fn load_issuer(paths: &[PathBuf], s: &Snapshot) -> Result<Issuer, ServerError> {
    let bundle_path = paths[2].display().to_string();
    let bundle = TrustBundle::from_pem(&bundle_path, &s.contents[2])
        .map_err(|error| ServerError::Bundle { path: bundle_path, error })?;
    Issuer::from_pem(&s.contents[0], &s.contents[1], &bundle, SystemTime::now()).map_err(|error| {
        ServerError::Issuer {
            path: format!("{} + {}", paths[0].display(), paths[1].display()),
            error,
        }
    })
}

/// The service's own certificate: key in memory, issued by its own CA for its own name,
/// renewed at 70 % of its lifetime and whenever the issuer changes.
struct OwnCert {
    key: KeyPair,
    tx: watch::Sender<Option<Arc<CertifiedKey>>>,
    rx: watch::Receiver<Option<Arc<CertifiedKey>>>,
    renew_at: i64,
}

impl OwnCert {
    fn new(ca: &Ca) -> Result<Self, ServerError> {
        let key = generate_key().map_err(|e| ServerError::OwnCert(e.to_string()))?;
        let (tx, rx) = watch::channel(None);
        let mut own = Self { key, tx, rx, renew_at: 0 };
        own.renew(ca)?;
        Ok(own)
    }

    fn renew(&mut self, ca: &Ca) -> Result<(), ServerError> {
        let name = ca.config().domain.identity_service_name().clone();
        let now = SystemTime::now();
        let issued = ca
            .issue(&name, &CheckedCsr::from_key(&self.key), now)
            .map_err(|e| ServerError::OwnCert(e.to_string()))?;
        let ck = certified_key(&self.key, issued.leaf, &issued.chain)?;
        let now = unix_secs(now);
        self.renew_at = now + (unix_secs(issued.valid_until) - now) * 7 / 10;
        self.tx.send_replace(Some(ck));
        Ok(())
    }
}

struct Reloader {
    ca: Arc<Ca>,
    pki_files: FileSet,
    static_tokens: Option<(Arc<StaticTokens>, FileSet)>,
    metrics: CaMetrics,
    own: OwnCert,
    interval: Duration,
}

impl Reloader {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut renew = unix_secs(SystemTime::now()) >= self.own.renew_at;
            match self.pki_files.poll() {
                Ok(None) => {}
                Ok(Some(s)) => match load_issuer(self.pki_files.paths(), &s) {
                    Ok(issuer) => {
                        tracing::info!(
                            issuer.subject = issuer.subject(),
                            issuer.not_after = issuer.not_after(),
                            "issuer reloaded"
                        );
                        self.metrics.issuer_expiry.set(issuer.not_after());
                        self.metrics.reloaded(true);
                        self.ca.set_issuer(issuer);
                        renew = true;
                    }
                    Err(error) => {
                        tracing::error!(%error, "issuer reload refused; still signing with the previous issuer");
                        self.metrics.reloaded(false);
                    }
                },
                Err(error) => {
                    tracing::error!(%error, "issuer files unreadable; still signing with the previous issuer");
                    self.metrics.reloaded(false);
                }
            }
            if let Some((tokens, files)) = &mut self.static_tokens {
                let path = files.paths()[0].display().to_string();
                match files.poll() {
                    Ok(None) => {}
                    Ok(Some(s)) => {
                        match tokens.reload(&path, &s.contents[0], &self.ca.config().domain) {
                            Ok(n) => {
                                tracing::info!(tokens = n, "static tokens reloaded");
                                self.metrics.static_token_reloaded(true);
                            }
                            Err(error) => {
                                tracing::error!(%error, "static token reload refused; keeping the previous tokens");
                                self.metrics.static_token_reloaded(false);
                            }
                        }
                    }
                    Err(error) => {
                        tracing::error!(%error, "static token file unreadable; keeping the previous tokens");
                        self.metrics.static_token_reloaded(false);
                    }
                }
            }
            if renew && let Err(error) = self.own.renew(&self.ca) {
                tracing::error!(%error, "could not renew the identity service's own certificate");
                self.metrics.own_certificate_renewal_errors.inc();
            }
        }
    }
}

/// The Certify handler.
struct Certifier {
    ca: Arc<Ca>,
    tokens: Arc<dyn TokenValidator>,
    metrics: CaMetrics,
    loud: Arc<LoudEvery>,
}

#[tonic::async_trait]
impl Identity for Certifier {
    async fn certify(
        &self,
        req: tonic::Request<CertifyRequest>,
    ) -> Result<tonic::Response<CertifyResponse>, tonic::Status> {
        if let Some(reached) = req.extensions().get::<Reached>() {
            reached.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let peer = req.extensions().get::<TlsConnectInfo>().map(|i| i.peer);
        let CertifyRequest { identity, token, certificate_signing_request } = req.into_inner();
        // The requested name is input: echoed cut (it may be as long as the request).
        let shown = echo(&identity);
        match self.ca.certify(&identity, &token, &certificate_signing_request, &*self.tokens).await
        {
            Ok(issued) => {
                self.metrics.issued.inc();
                tracing::info!(
                    identity = %shown,
                    client.addr = ?peer,
                    valid_until = unix_secs(issued.valid_until),
                    "certified"
                );
                Ok(tonic::Response::new(CertifyResponse {
                    leaf_certificate: issued.leaf.to_vec(),
                    intermediate_certificates: issued.chain.iter().map(|c| c.to_vec()).collect(),
                    valid_until: Some(issued.valid_until.into()),
                }))
            }
            Err(refusal) => {
                self.metrics.refused(&refusal);
                // At info at most once a second (a flood of bad requests must not flood the
                // log); the rest at debug. Every refusal is counted.
                if self.loud.take() {
                    tracing::info!(
                        identity = %shown,
                        client.addr = ?peer,
                        reason = refusal.reason(),
                        error = %refusal,
                        "refused"
                    );
                } else {
                    tracing::debug!(
                        identity = %shown,
                        client.addr = ?peer,
                        reason = refusal.reason(),
                        error = %refusal,
                        "refused"
                    );
                }
                Err(refusal.into())
            }
        }
    }
}

#[cfg(test)]
mod tests;
