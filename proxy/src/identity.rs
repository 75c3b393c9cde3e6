//! The proxy's identity: its certificate and trust anchors (`weft-identity`'s workload:
//! the key in memory only, the anchors re-read when their file changes), and the rustls
//! configurations of the data path — TLS 1.3 only, client certificates required inbound,
//! the exact peer identity required outbound — of the admin port (a client certificate
//! verified when one is sent, as linkerd2-proxy's server does, so that a scraper without
//! an identity can still use TLS) and of control-plane connections.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use rustls::{ClientConfig, ServerConfig, pki_types::CertificateDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use weft_identity::{
    ClientAuth, IdentityName, SharedTrust,
    client::Credentials,
    control::ServiceTls,
    workload::{Workload, WorkloadConfig, WorkloadError},
};

use crate::transport_header;

/// ALPN protocols the inbound side offers, best first.
const SERVER_ALPN: [&[u8]; 3] = [transport_header::ALPN, b"h2", b"http/1.1"];

/// ALPN protocols the admin port offers: HTTP only, no opaque transport.
const ADMIN_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

pub struct Identity {
    pub local: IdentityName,
    trust: Arc<SharedTrust>,
    credentials: Credentials,
    acceptor: TlsAcceptor,
    /// The admin port's: a client certificate optional (verified when sent).
    admin_acceptor: TlsAcceptor,
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
    pub fn start(
        config: WorkloadConfig,
        registry: &mut Registry,
    ) -> Result<Arc<Self>, WorkloadError> {
        let Workload { local, trust, credentials } = Workload::start(config, registry)?;
        let provider = weft_identity::provider();
        let resolver = credentials.resolver();
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(ClientAuth::required(trust.clone())))
            .with_cert_resolver(resolver.clone());
        server.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
        let mut admin = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(ClientAuth::optional(trust.clone())))
            .with_cert_resolver(resolver.clone());
        admin.alpn_protocols = ADMIN_ALPN.iter().map(|p| p.to_vec()).collect();
        let client_config = |alpn: &[&[u8]]| -> Result<TlsConnector, WorkloadError> {
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
        let (h2, transport, plain) = (
            client_config(&[b"h2"])?,
            client_config(&[transport_header::ALPN])?,
            client_config(&[])?,
        );
        Ok(Arc::new(Identity {
            local,
            trust,
            credentials,
            acceptor: TlsAcceptor::from(Arc::new(server)),
            admin_acceptor: TlsAcceptor::from(Arc::new(admin)),
            h2,
            transport,
            plain,
        }))
    }

    /// TLS to a control-plane service that must prove `svc`: verified against the anchors,
    /// with this proxy's certificate as client certificate once it has one (mTLS).
    pub fn control_plane_tls(&self, svc: IdentityName) -> Result<ServiceTls, rustls::Error> {
        ServiceTls::new(self.trust.clone(), svc, Some(self.credentials.resolver()))
    }

    /// A certificate is installed: the proxy can take meshed traffic.
    pub fn is_ready(&self) -> bool {
        self.credentials.is_ready()
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    pub fn admin_acceptor(&self) -> &TlsAcceptor {
        &self.admin_acceptor
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
