//! The proxy's identity: its certificate, obtained and renewed by `weft-identity`'s client
//! (the key lives in memory only), the trust anchors (re-read when their file changes), and
//! the rustls configurations of the data path — TLS 1.3 only, client certificates required
//! inbound, the exact peer identity required outbound.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use rustls::{ClientConfig, ServerConfig, pki_types::CertificateDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{info, warn};
use weft_identity::{
    IdentityName, SharedTrust, TrustBundle,
    client::{Client, ClientConfig as CertifyConfig, Credentials, IdentityMetrics},
    reload::FileSet,
};

use crate::transport_header;

/// ALPN protocols the inbound side offers, best first.
const SERVER_ALPN: [&[u8]; 3] = [transport_header::ALPN, b"h2", b"http/1.1"];

/// What `--identity-*` configures.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    pub addr: String,
    pub svc_name: String,
    pub name: String,
    pub token_file: PathBuf,
    pub trust_anchors_file: PathBuf,
}

pub struct Identity {
    pub local: IdentityName,
    credentials: Credentials,
    acceptor: TlsAcceptor,
    /// ALPN `h2`, for HTTP to meshed endpoints.
    h2: TlsConnector,
    /// ALPN `transport.l5d.io/v1`, for opaque transport.
    transport: TlsConnector,
    /// No ALPN: TLS for opaque traffic through the peer's redirect.
    plain: TlsConnector,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("local", &self.local)
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Identity {
    /// Reads the anchors, starts obtaining a certificate (in the background) and builds the
    /// TLS configurations. Fails on bad configuration, never on an unreachable service.
    pub fn start(config: IdentityConfig, registry: &mut Registry) -> anyhow::Result<Arc<Self>> {
        let local: IdentityName = config.name.parse().with_context(|| {
            format!("WEFT_PROXY_IDENTITY_NAME {:?} is not an identity name", config.name)
        })?;
        let svc: IdentityName = config.svc_name.parse().with_context(|| {
            format!("WEFT_PROXY_IDENTITY_SVC_NAME {:?} is not an identity name", config.svc_name)
        })?;
        let mut files = FileSet::new(vec![config.trust_anchors_file.clone()]);
        let snapshot = files.read().with_context(|| {
            format!("cannot read the trust anchors {}", config.trust_anchors_file.display())
        })?;
        let pem = snapshot.contents.first().cloned().unwrap_or_default();
        let bundle = TrustBundle::from_pem("trust anchors", &pem)?;
        let trust = SharedTrust::new(bundle)?;
        files.mark_seen(&snapshot);
        tokio::spawn(watch_anchors(files, trust.clone()));

        let metrics = IdentityMetrics::default();
        metrics.register(registry);
        let client = Client::new(
            CertifyConfig::new(
                trust.clone(),
                config.addr.clone(),
                svc,
                local.clone(),
                config.token_file.clone(),
            ),
            metrics,
        )?;
        let credentials = client.credentials();
        client.spawn();

        let provider = weft_identity::provider();
        let resolver = credentials.resolver();
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(trust.clone())
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
        let client_config = |alpn: &[&[u8]]| -> anyhow::Result<TlsConnector> {
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                // The anchors, and the server name (the peer's identity) as a DNS SAN.
                .with_custom_certificate_verifier(trust.clone())
                .with_client_cert_resolver(resolver.clone());
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            c.resumption = rustls::client::Resumption::default();
            Ok(TlsConnector::from(Arc::new(c)))
        };
        info!(identity = %local, "identity configured; waiting for a certificate");
        Ok(Arc::new(Identity {
            local,
            credentials,
            acceptor: TlsAcceptor::from(Arc::new(server)),
            h2: client_config(&[b"h2"])?,
            transport: client_config(&[transport_header::ALPN])?,
            plain: client_config(&[])?,
        }))
    }

    /// A certificate is installed: the proxy can take meshed traffic.
    pub fn is_ready(&self) -> bool {
        self.credentials.is_ready()
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    pub fn connector(&self, alpn: Alpn) -> &TlsConnector {
        match alpn {
            Alpn::H2 => &self.h2,
            Alpn::Transport => &self.transport,
            Alpn::None => &self.plain,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Transport,
    None,
}

/// The identity a peer's certificate proves: its first DNS SAN.
pub fn peer_identity(certs: Option<&[CertificateDer<'static>]>) -> Option<String> {
    let der = certs?.first()?;
    weft_identity::pki::CertSummary::parse(der).ok()?.dns_names.into_iter().next()
}

/// Re-reads the anchors when their file changes (including the kubelet's `..data` swap).
async fn watch_anchors(mut files: FileSet, trust: Arc<SharedTrust>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        match files.poll() {
            Ok(Some(snapshot)) => {
                let pem = snapshot.contents.first().cloned().unwrap_or_default();
                match TrustBundle::from_pem("trust anchors", &pem)
                    .map_err(anyhow::Error::from)
                    .and_then(|b| trust.replace(b).map_err(anyhow::Error::from))
                {
                    Ok(()) => {
                        files.mark_seen(&snapshot);
                        info!("trust anchors reloaded");
                    }
                    Err(e) => {
                        warn!(error = %e, "ignoring an unusable trust anchor file; keeping the current anchors")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "cannot read the trust anchors; keeping the current ones"),
        }
    }
}
