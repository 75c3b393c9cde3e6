//! Trust bundles: the set of trust anchors (several at once while anchors rotate), as rustls
//! root stores and verifiers, and a shared, swappable bundle for files that change.

use std::sync::{Arc, RwLock};

use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        WebPkiClientVerifier,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use x509_parser::{certificate::X509Certificate, prelude::FromDer};

use crate::pki::{PkiError, parse_certs_pem};

/// One or more trust anchors. Anchors must be CA certificates.
#[derive(Clone, Debug)]
pub struct TrustBundle {
    anchors: Arc<[CertificateDer<'static>]>,
    roots: Arc<RootCertStore>,
}

impl TrustBundle {
    /// Parses a PEM bundle; `what` names its source (a path) in errors.
    pub fn from_pem(what: &str, pem: &[u8]) -> Result<Self, PkiError> {
        Self::from_der(what, parse_certs_pem(what, pem)?)
    }

    pub fn from_der(what: &str, anchors: Vec<CertificateDer<'static>>) -> Result<Self, PkiError> {
        let bad = |reason: String| PkiError::BadCertificate { what: what.to_owned(), reason };
        if anchors.is_empty() {
            return Err(PkiError::NoPem { what: what.to_owned(), expected: "CERTIFICATE" });
        }
        let mut roots = RootCertStore::empty();
        for (i, der) in anchors.iter().enumerate() {
            let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
            if !cert.is_ca() {
                return Err(bad(format!(
                    "anchor #{} ({}) is not a CA certificate",
                    i + 1,
                    cert.subject()
                )));
            }
            roots
                .add(der.clone())
                .map_err(|e| bad(format!("anchor #{} ({}): {e}", i + 1, cert.subject())))?;
        }
        Ok(Self { anchors: anchors.into(), roots: Arc::new(roots) })
    }

    pub fn anchors(&self) -> &[CertificateDer<'static>] {
        &self.anchors
    }

    pub fn root_store(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// Verifies servers (by their DNS SAN, i.e. the identity name) against these anchors.
    pub fn server_verifier(&self) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        WebPkiServerVerifier::builder_with_provider(self.roots.clone(), crate::provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))
    }

    /// Verifies (required) client certificates against these anchors.
    pub fn client_verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        WebPkiClientVerifier::builder_with_provider(self.roots.clone(), crate::provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))
    }
}

/// A bundle that can be replaced while connections use it (a re-read trust-anchor file).
/// It is itself a server and client certificate verifier that always uses the latest bundle,
/// so a rustls config built once keeps working across rotations.
#[derive(Debug)]
pub struct SharedTrust {
    current: RwLock<Verifiers>,
}

#[derive(Clone, Debug)]
struct Verifiers {
    bundle: TrustBundle,
    server: Arc<WebPkiServerVerifier>,
    client: Arc<dyn ClientCertVerifier>,
}

impl Verifiers {
    fn new(bundle: TrustBundle) -> Result<Self, rustls::Error> {
        Ok(Self { server: bundle.server_verifier()?, client: bundle.client_verifier()?, bundle })
    }
}

impl SharedTrust {
    pub fn new(bundle: TrustBundle) -> Result<Arc<Self>, rustls::Error> {
        Ok(Arc::new(Self { current: RwLock::new(Verifiers::new(bundle)?) }))
    }

    pub fn bundle(&self) -> TrustBundle {
        self.get().bundle
    }

    /// Replaces the bundle; handshakes already past verification are unaffected.
    pub fn replace(&self, bundle: TrustBundle) -> Result<(), rustls::Error> {
        let v = Verifiers::new(bundle)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = v;
        Ok(())
    }

    fn get(&self) -> Verifiers {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl ServerCertVerifier for SharedTrust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.get().server.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().server.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.get().server.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.get().server.supported_verify_schemes()
    }
}

/// Client certificates checked against the current anchors of a [`SharedTrust`]. Servers
/// of meshed traffic require one; control-plane servers (Linkerd's policy, rustls'
/// `AllowAnyAnonymousOrAuthenticatedClient`) ask every client for one and verify what is
/// presented, but let a client without one in, so that a workload still waiting for its
/// first certificate can already reach them.
#[derive(Debug)]
pub struct ClientAuth {
    trust: Arc<SharedTrust>,
    mandatory: bool,
}

impl ClientAuth {
    pub fn required(trust: Arc<SharedTrust>) -> Self {
        ClientAuth { trust, mandatory: true }
    }

    pub fn optional(trust: Arc<SharedTrust>) -> Self {
        ClientAuth { trust, mandatory: false }
    }
}

impl ClientCertVerifier for ClientAuth {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; an empty list keeps them out of the way of rotation.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.trust.get().client.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust.get().client.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust.get().client.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.get().client.supported_verify_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pki::{PkiParams, generate_pki};

    #[test]
    fn several_anchors_at_once() {
        let a = generate_pki(&PkiParams::for_trust_domain("cluster.local")).unwrap();
        let b = generate_pki(&PkiParams::for_trust_domain("cluster.local")).unwrap();
        let pem = format!("{}{}", a.anchor_pem, b.anchor_pem);
        let bundle = TrustBundle::from_pem("bundle", pem.as_bytes()).unwrap();
        assert_eq!(bundle.anchors().len(), 2);
        assert_eq!(bundle.root_store().len(), 2);
        bundle.server_verifier().unwrap();
        bundle.client_verifier().unwrap();
    }

    #[test]
    fn refuses_empty_and_non_ca() {
        assert!(TrustBundle::from_pem("b", b"").is_err());
        // A leaf is not an anchor.
        let key = crate::pki::generate_key().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["x.example".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let err = TrustBundle::from_pem("b", leaf.pem().as_bytes()).unwrap_err();
        assert!(err.to_string().contains("not a CA"), "{err}");
    }
}
