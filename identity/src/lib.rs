//! Weft identity: names, certificate and CSR helpers, trust bundles, the CA and its Certify
//! server, token validators, the workload certificate client, and the one path by which
//! proxies and control-plane servers reach control-plane services (names resolved in Rust,
//! TLS verified for the service's identity). Kubernetes (TokenReview) only with the
//! `kubernetes` feature, so that the proxy links no Kubernetes client.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub mod admin_http;
pub mod bundle;
pub mod ca;
pub mod client;
pub mod control;
pub mod credentials;
pub mod incoming;
pub mod loud;
pub mod name;
pub mod pki;
pub mod policy;
pub mod reload;
pub mod server;
pub mod token;
pub mod workload;

pub use bundle::{ClientAuth, SharedTrust, TrustBundle};
pub use credentials::{CertResolver, certified_key};
pub use name::{IdentityDomain, IdentityName, NameError, SpiffeId};
/// Keys in this crate's API are `rcgen::KeyPair`s; re-exported so users need no own version.
pub use rcgen;

/// The one rustls crypto provider of the workspace (ring). Every TLS config in this crate is
/// built with it explicitly, so nothing depends on a process-wide default being installed.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}
