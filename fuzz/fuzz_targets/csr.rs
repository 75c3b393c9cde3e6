//! The identity service's CSR checks, on arbitrary DER and on a valid CSR with bytes
//! changed: never a panic; a CSR that passes can be issued, and the certificate proves
//! the identity that was asked for.
#![no_main]

use std::{sync::LazyLock, time::SystemTime};

use libfuzzer_sys::fuzz_target;
use weft_identity::{
    IdentityDomain, IdentityName, TrustBundle,
    ca::{Ca, CaConfig, Issuer, check_csr},
    pki::{PkiParams, build_csr, generate_key, generate_pki, peer_identity},
};

struct Fixture {
    ca: Ca,
    name: IdentityName,
    csr: Vec<u8>,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let domain = IdentityDomain::new("weft", "cluster.local").expect("domain");
    let pki = generate_pki(&PkiParams::for_trust_domain("cluster.local")).expect("pki");
    let bundle = TrustBundle::from_pem("anchors", pki.anchor_pem.as_bytes()).expect("anchors");
    let issuer = Issuer::from_pem(
        pki.issuer_pem.as_bytes(),
        pki.issuer_key_pem.as_bytes(),
        &bundle,
        SystemTime::now(),
    )
    .expect("issuer");
    let name = domain.identity("prod", "web").expect("name");
    let csr = build_csr(&generate_key().expect("key"), &name).expect("csr");
    check_csr(&csr, &name).expect("a CSR we build passes");
    Fixture { ca: Ca::new(CaConfig::new(domain), issuer), name, csr }
});

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    let Some((&mode, rest)) = data.split_first() else { return };
    let der = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        // A valid CSR with some bytes changed: (position, xor) pairs.
        let mut der = f.csr.clone();
        for edit in rest.chunks_exact(3) {
            let pos = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % der.len();
            der[pos] ^= edit[2];
        }
        der
    };
    let Ok(checked) = check_csr(&der, &f.name) else { return };
    let issued = f.ca.issue(&f.name, &checked, SystemTime::now()).expect("a checked CSR issues");
    assert_eq!(peer_identity(&issued.leaf).as_ref(), Some(&f.name));
});
