//! Certificates and PEM from peers and from files users write (trust anchors, issuer
//! certificates and keys): parsing never panics, and what parses is consistent with itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_identity::{
    TrustBundle,
    pki::{CertSummary, parse_certs_pem, parse_key_pem, peer_identity},
};

fuzz_target!(|data: &[u8]| {
    if let Ok(summary) = CertSummary::parse(data) {
        if let Some(id) = peer_identity(data) {
            assert!(summary.dns_names.iter().any(|d| d == id.as_str()));
        }
    } else {
        assert!(peer_identity(data).is_none());
    }
    if let Ok(certs) = parse_certs_pem("fuzz", data) {
        assert!(!certs.is_empty());
        if let Ok(bundle) = TrustBundle::from_pem("fuzz", data) {
            assert!(!bundle.anchors().is_empty());
            let _ = bundle.server_verifier();
            let _ = bundle.client_verifier();
        }
    }
    let _ = parse_key_pem("fuzz", data);
});
