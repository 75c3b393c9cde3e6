//! The identity service's answer to Certify, as the proxy's identity client takes it: a
//! real answer with parts replaced by the fuzzer (validity, leaf, chain) or arbitrary
//! protobuf. Never a panic; an accepted answer is unexpired, and the renewal it schedules
//! comes before the expiry (and no sooner than the minimum).
#![no_main]

use std::{
    sync::{Arc, LazyLock},
    time::{Duration, SystemTime},
};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use linkerd2_proxy_api::identity::CertifyResponse;
use prost::Message;
use weft_identity::{
    IdentityDomain, IdentityName, SharedTrust, TrustBundle,
    ca::{Ca, CaConfig, Issued, Issuer, check_csr},
    client::{accept_response, refresh_delay},
    pki::{PkiParams, build_csr, generate_key, generate_pki},
    rcgen::KeyPair,
};

struct Fixture {
    key: KeyPair,
    name: IdentityName,
    trust: Arc<SharedTrust>,
    issued: Issued,
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
    let ca = Ca::new(CaConfig::new(domain.clone()), issuer);
    let name = domain.identity("prod", "web").expect("name");
    let key = generate_key().expect("key");
    let csr = check_csr(&build_csr(&key, &name).expect("csr"), &name).expect("checked");
    let issued = ca.issue(&name, &csr, SystemTime::now()).expect("issued");
    Fixture { key, name, trust: SharedTrust::new(bundle).expect("trust"), issued }
});

#[derive(Arbitrary, Debug)]
enum Part {
    Real,
    Bytes(Vec<u8>),
    /// The real one with (position, xor) edits.
    Edited(Vec<(u16, u8)>),
}

fn part(real: &[u8], p: Part) -> Vec<u8> {
    match p {
        Part::Real => real.to_vec(),
        Part::Bytes(b) => b,
        Part::Edited(edits) => {
            let mut b = real.to_vec();
            for (pos, x) in edits {
                let i = usize::from(pos) % b.len();
                b[i] ^= x;
            }
            b
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Input {
    Proto(Vec<u8>),
    Parts { valid_until: Option<(i64, i32)>, leaf: Part, chain: Vec<Part>, real_chain: bool },
}

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let rsp = match input {
        Input::Proto(bytes) => match CertifyResponse::decode(bytes.as_slice()) {
            Ok(r) => r,
            Err(_) => return,
        },
        Input::Parts { valid_until, leaf, chain, real_chain } => {
            let mut intermediates: Vec<Vec<u8>> = if real_chain {
                f.issued.chain.iter().map(|c| c.to_vec()).collect()
            } else {
                Vec::new()
            };
            let issuer = f.issued.chain.first().map(|c| c.to_vec()).unwrap_or_default();
            intermediates.extend(chain.into_iter().take(4).map(|p| part(&issuer, p)));
            CertifyResponse {
                leaf_certificate: part(&f.issued.leaf, leaf),
                intermediate_certificates: intermediates,
                valid_until: valid_until
                    .map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
            }
        }
    };
    let now = SystemTime::now();
    let Ok((_, valid_until)) = accept_response(rsp, &f.key, &f.name, &f.trust, now) else {
        return;
    };
    assert!(valid_until > now);
    let min = Duration::from_secs(10);
    let delay = refresh_delay(valid_until, now, min);
    assert!(delay >= min);
    let remaining = valid_until.duration_since(now).expect("unexpired");
    assert!(delay <= remaining.max(min));
});
