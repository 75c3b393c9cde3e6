//! The current certificate of a process, as rustls wants it: a `CertifiedKey` published
//! through a `watch` channel, and a resolver that serves whatever is current at each
//! handshake — so a renewal swaps the certificate without touching open connections.

use std::sync::Arc;

use rcgen::KeyPair;
use rustls::{
    SignatureScheme,
    client::ResolvesClientCert,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::sync::watch;

/// Builds a rustls `CertifiedKey` from an in-memory key, its leaf and the issuer chain.
pub fn certified_key(
    key: &KeyPair,
    leaf: CertificateDer<'static>,
    chain: &[CertificateDer<'static>],
) -> Result<Arc<CertifiedKey>, rustls::Error> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = crate::provider().key_provider.load_private_key(der)?;
    let mut certs = Vec::with_capacity(1 + chain.len());
    certs.push(leaf);
    certs.extend(chain.iter().cloned());
    let ck = CertifiedKey::new(certs, signer);
    // Refuses a leaf that does not carry this key's public half.
    ck.keys_match()?;
    Ok(Arc::new(ck))
}

/// Serves the latest certificate published on a `watch` channel to every handshake, as
/// server and as client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CertResolver {
    current: watch::Receiver<Option<Arc<CertifiedKey>>>,
}

impl CertResolver {
    pub fn new(current: watch::Receiver<Option<Arc<CertifiedKey>>>) -> Arc<Self> {
        Arc::new(Self { current })
    }

    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.borrow().clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for CertResolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current.borrow().is_some()
    }
}
