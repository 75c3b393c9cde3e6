//! The CA's every refusal, and what a good request gets: a chain that verifies to the anchor
//! (through rustls' webpki verifiers, as a peer would check it), the right names, key usages
//! and validity window.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SanType};
use rustls::{
    client::danger::ServerCertVerifier,
    pki_types::{CertificateDer, ServerName, UnixTime},
};

use super::*;
use crate::{
    pki::{CertSummary, GeneratedPki, PkiParams, build_csr, generate_key, generate_pki},
    token::StaticTokens,
};

struct Fixture {
    pki: GeneratedPki,
    bundle: TrustBundle,
    ca: Ca,
    tokens: StaticTokens,
}

fn domain() -> IdentityDomain {
    IdentityDomain::new("weft", "cluster.local").unwrap()
}

fn web() -> IdentityName {
    domain().identity("prod", "web").unwrap()
}

fn fixture() -> Fixture {
    let pki = generate_pki(&PkiParams::for_trust_domain("cluster.local")).unwrap();
    let bundle = TrustBundle::from_pem("ca.crt", pki.anchor_pem.as_bytes()).unwrap();
    let issuer = Issuer::from_pem(
        pki.issuer_pem.as_bytes(),
        pki.issuer_key_pem.as_bytes(),
        &bundle,
        SystemTime::now(),
    )
    .unwrap();
    let ca = Ca::new(CaConfig::new(domain()), issuer);
    let tokens =
        StaticTokens::parse("tokens", b"web-token: prod/web\ndb-token: prod/db\n", &domain())
            .unwrap();
    Fixture { pki, bundle, ca, tokens }
}

fn csr_for(name: &IdentityName) -> (KeyPair, Vec<u8>) {
    let key = generate_key().unwrap();
    let csr = build_csr(&key, name).unwrap();
    (key, csr)
}

fn csr_with(key: &KeyPair, sans: Vec<SanType>, cn: Option<&str>) -> Vec<u8> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    }
    params.subject_alt_names = sans;
    params.serialize_request(key).unwrap().der().to_vec()
}

async fn certify(f: &Fixture, identity: &str, token: &[u8], csr: &[u8]) -> Result<Issued, Refusal> {
    f.ca.certify(identity, token, csr, &f.tokens).await
}

#[tokio::test]
async fn good_request_gets_a_verifiable_leaf() {
    let f = fixture();
    let (key, csr) = csr_for(&web());
    let before = unix_secs(SystemTime::now());
    let issued = certify(&f, web().as_str(), b"web-token", &csr).await.unwrap();
    let after = unix_secs(SystemTime::now());

    // The chain is the issuer, and the leaf verifies to the anchor as server and as client.
    let issuer_der = pki::parse_certs_pem("i", f.pki.issuer_pem.as_bytes()).unwrap().remove(0);
    assert_eq!(issued.chain, vec![issuer_der]);
    let now = UnixTime::now();
    f.bundle
        .server_verifier()
        .unwrap()
        .verify_server_cert(
            &issued.leaf,
            &issued.chain,
            &ServerName::try_from(web().to_string()).unwrap(),
            &[],
            now,
        )
        .unwrap();
    f.bundle
        .client_verifier()
        .unwrap()
        .verify_client_cert(&issued.leaf, &issued.chain, now)
        .unwrap();
    // ...but not for another name, and not without the issuer.
    let other = ServerName::try_from("db.prod.serviceaccount.identity.weft.cluster.local").unwrap();
    assert!(
        f.bundle
            .server_verifier()
            .unwrap()
            .verify_server_cert(&issued.leaf, &issued.chain, &other, &[], now)
            .is_err()
    );
    assert!(
        f.bundle.client_verifier().unwrap().verify_client_cert(&issued.leaf, &[], now).is_err()
    );

    let s = CertSummary::parse(&issued.leaf).unwrap();
    assert_eq!(s.dns_names, vec![web().to_string()]);
    assert_eq!(s.uris, vec!["spiffe://cluster.local/ns/prod/sa/web".to_owned()]);
    assert_eq!(s.subject, format!("CN={}", web()));
    assert!(!s.is_ca);
    assert!(s.server_auth && s.client_auth);
    assert!(!s.key_cert_sign);
    assert_eq!(s.key_algorithm, "ECDSA P-256");
    // 24 h, backdated by 20 s.
    assert!(s.not_before >= before - 20 && s.not_before <= after - 20, "{s:?}");
    assert_eq!(s.not_after - s.not_before, 24 * 3600 + 20);
    assert_eq!(unix_secs(issued.valid_until), s.not_after);
    // The leaf certifies the CSR's key.
    let (_, leaf) = X509Certificate::from_der(&issued.leaf).unwrap();
    assert_eq!(leaf.public_key().raw, rcgen::PublicKeyData::subject_public_key_info(&key));
}

#[tokio::test]
async fn csr_without_names_or_with_matching_names_is_fine() {
    let f = fixture();
    let key = generate_key().unwrap();
    let spiffe = web().spiffe_id().to_string();
    for csr in [
        csr_with(&key, vec![], None),
        csr_with(&key, vec![], Some(web().as_str())),
        csr_with(
            &key,
            vec![
                SanType::DnsName(web().as_str().try_into().unwrap()),
                SanType::URI(spiffe.as_str().try_into().unwrap()),
            ],
            Some(web().as_str()),
        ),
    ] {
        certify(&f, web().as_str(), b"web-token", &csr).await.unwrap();
    }
}

#[tokio::test]
async fn lifetime_and_skew_are_configurable_and_capped_by_the_issuer() {
    let f = fixture();
    let mut config = CaConfig::new(domain());
    config.lifetime = Duration::from_secs(15);
    config.clock_skew = Duration::from_secs(0);
    let issuer = f.ca.issuer();
    let ca = Ca::new(
        config,
        Issuer::from_pem(
            f.pki.issuer_pem.as_bytes(),
            f.pki.issuer_key_pem.as_bytes(),
            &f.bundle,
            SystemTime::now(),
        )
        .unwrap(),
    );
    let (_, csr) = csr_for(&web());
    let csr = check_csr(&csr, &web()).unwrap();
    let s = CertSummary::parse(&ca.issue(&web(), &csr, SystemTime::now()).unwrap().leaf).unwrap();
    assert_eq!(s.not_after - s.not_before, 15);
    // Issued a day before the issuer expires, a 24 h leaf ends with the issuer.
    let late = UNIX_EPOCH + Duration::from_secs(u64::try_from(issuer.not_after() - 3600).unwrap());
    let s = CertSummary::parse(&f.ca.issue(&web(), &csr, late).unwrap().leaf).unwrap();
    assert_eq!(s.not_after, issuer.not_after());
    // After the issuer expired, nothing is issued.
    let past = UNIX_EPOCH + Duration::from_secs(u64::try_from(issuer.not_after() + 1).unwrap());
    let r = f.ca.issue(&web(), &csr, past).unwrap_err();
    assert_eq!((r.code(), r.reason()), (tonic::Code::Unavailable, "issuer_expired"));
}

async fn refusal(f: &Fixture, identity: &str, token: &[u8], csr: &[u8]) -> Refusal {
    certify(f, identity, token, csr).await.unwrap_err()
}

#[tokio::test]
async fn token_refusals() {
    let f = fixture();
    let (_, csr) = csr_for(&web());
    // A token for another service account.
    let r = refusal(&f, web().as_str(), b"db-token", &csr).await;
    assert_eq!((r.code(), r.reason()), (tonic::Code::PermissionDenied, "wrong_identity"));
    assert!(r.to_string().contains("prod/db") && r.to_string().contains(web().as_str()), "{r}");
    // An unknown token.
    let r = refusal(&f, web().as_str(), b"nope", &csr).await;
    assert_eq!((r.code(), r.reason()), (tonic::Code::Unauthenticated, "invalid_token"));
    // A validator that cannot answer now.
    struct Down;
    impl TokenValidator for Down {
        fn validate<'a>(&'a self, _: &'a [u8]) -> crate::token::ValidateFuture<'a> {
            Box::pin(async { Err(TokenError::Unavailable("API server down".into())) })
        }
    }
    let r = f.ca.certify(web().as_str(), b"web-token", &csr, &Down).await.unwrap_err();
    assert_eq!((r.code(), r.reason()), (tonic::Code::Unavailable, "token_unavailable"));
}

#[tokio::test]
async fn request_refusals() {
    let f = fixture();
    let (_, csr) = csr_for(&web());
    let web = web();
    let web = web.as_str();
    let cases: Vec<(&str, &[u8], Vec<u8>, &str)> = vec![
        ("", b"web-token", csr.clone(), "missing_field"),
        (web, b"", csr.clone(), "missing_field"),
        (web, b"web-token", vec![], "missing_field"),
        ("web.prod", b"web-token", csr.clone(), "invalid_identity"),
        (
            "web.prod.serviceaccount.identity.other.cluster.local",
            b"web-token",
            csr.clone(),
            "invalid_identity",
        ),
        (
            "Web.prod.serviceaccount.identity.weft.cluster.local",
            b"web-token",
            csr.clone(),
            "invalid_identity",
        ),
        (web, b"web-token", b"not a csr".to_vec(), "malformed_csr"),
        (web, b"web-token", [csr.as_slice(), b"x"].concat(), "malformed_csr"),
    ];
    for (identity, token, csr, reason) in cases {
        let r = refusal(&f, identity, token, &csr).await;
        assert_eq!(
            (r.code(), r.reason()),
            (tonic::Code::InvalidArgument, reason),
            "{identity}: {r}"
        );
    }
}

#[tokio::test]
async fn pem_csr_is_malformed() {
    // DER on the wire, as linkerd2-proxy sends; PEM is refused with a clear reason.
    let f = fixture();
    let key = generate_key().unwrap();
    let pem = CertificateParams::new(vec![web().to_string()])
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let r = refusal(&f, web().as_str(), b"web-token", pem.as_bytes()).await;
    assert_eq!(r.reason(), "malformed_csr");
}

#[tokio::test]
async fn bad_signature_is_refused() {
    let f = fixture();
    let (_, mut csr) = csr_for(&web());
    // Flip a bit in the signature (the last bytes of the DER).
    let n = csr.len();
    csr[n - 3] ^= 0x01;
    let r = refusal(&f, web().as_str(), b"web-token", &csr).await;
    assert_eq!((r.code(), r.reason()), (tonic::Code::InvalidArgument, "bad_csr_signature"), "{r}");
    // A CSR whose signed content was altered (a name changed after signing).
    let (_, csr) = csr_for(&web());
    let pos = csr.windows(3).position(|w| w == b"web").unwrap();
    let mut tampered = csr.clone();
    tampered[pos] = b'x';
    let r = refusal(&f, web().as_str(), b"web-token", &tampered).await;
    assert_eq!(r.reason(), "bad_csr_signature", "{r}");
}

/// A P-256 CSR signed with ECDSA-SHA512 (what `openssl req -sha512` or Python's
/// `cryptography` make) is refused for its algorithm, not as a bad signature. ring cannot
/// sign with that pair, so the test relabels a SHA-256 signature: the algorithm is refused
/// before any verification, so the signature bytes do not matter.
#[tokio::test]
async fn unsupported_signature_algorithms_are_named() {
    let f = fixture();
    let (_, csr) = csr_for(&web());
    let sha256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    let pos = csr.windows(sha256.len()).rposition(|w| w == sha256).unwrap();
    let mut sha512 = csr.clone();
    sha512[pos + sha256.len() - 1] = 0x04;
    let r = refusal(&f, web().as_str(), b"web-token", &sha512).await;
    assert_eq!(
        (r.code(), r.reason()),
        (tonic::Code::InvalidArgument, "unsupported_csr_signature"),
        "{r}"
    );
    assert!(r.to_string().contains("SHA-512") && r.to_string().contains("SHA-256"), "{r}");
}

#[tokio::test]
async fn other_key_types_are_refused() {
    let f = fixture();
    for (alg, shows) in [(&PKCS_ECDSA_P384_SHA384, "1.3.132.0.34"), (&PKCS_ED25519, "Ed25519")] {
        let key = KeyPair::generate_for(alg).unwrap();
        let csr = build_csr(&key, &web()).unwrap();
        let r = refusal(&f, web().as_str(), b"web-token", &csr).await;
        assert_eq!(
            (r.code(), r.reason()),
            (tonic::Code::InvalidArgument, "unsupported_key"),
            "{r}"
        );
        assert!(r.to_string().contains(shows) && r.to_string().contains("P-256"), "{r}");
    }
}

#[tokio::test]
async fn contradicting_names_are_refused() {
    let f = fixture();
    let key = generate_key().unwrap();
    let db = domain().identity("prod", "db").unwrap();
    let cases = vec![
        csr_with(&key, vec![SanType::DnsName(db.as_str().try_into().unwrap())], None),
        csr_with(
            &key,
            vec![
                SanType::DnsName(web().as_str().try_into().unwrap()),
                SanType::DnsName("evil.example.com".try_into().unwrap()),
            ],
            None,
        ),
        csr_with(&key, vec![], Some(db.as_str())),
        csr_with(
            &key,
            vec![SanType::URI("spiffe://cluster.local/ns/prod/sa/db".try_into().unwrap())],
            None,
        ),
        csr_with(&key, vec![SanType::IpAddress([10, 0, 0, 1].into())], None),
        csr_with(&key, vec![SanType::Rfc822Name("a@example.com".try_into().unwrap())], None),
    ];
    for csr in cases {
        let r = refusal(&f, web().as_str(), b"web-token", &csr).await;
        assert_eq!((r.code(), r.reason()), (tonic::Code::InvalidArgument, "csr_names"), "{r}");
        assert!(r.to_string().contains(web().as_str()), "{r}");
    }
    // Asking for a CA certificate.
    let mut params = CertificateParams::new(vec![web().to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    assert_eq!(refusal(&f, web().as_str(), b"web-token", &csr).await.reason(), "csr_names");
}

#[test]
fn every_reason_is_listed() {
    let all = [
        Refusal::Missing("x"),
        Refusal::BadIdentity(NameError::Empty { what: "x" }),
        Refusal::MalformedCsr(String::new()),
        Refusal::BadCsrSignature,
        Refusal::UnsupportedCsrSignature(String::new()),
        Refusal::UnsupportedKey(String::new()),
        Refusal::CsrNames { found: String::new(), expected: String::new() },
        Refusal::InvalidToken(String::new()),
        Refusal::TokenUnavailable(String::new()),
        Refusal::WrongIdentity { requested: String::new(), token: String::new() },
        Refusal::IssuerExpired,
        Refusal::Internal(String::new()),
        Refusal::TooLarge { limit: 1 },
        Refusal::MalformedRequest(String::new()),
    ];
    let reasons: Vec<_> = all.iter().map(Refusal::reason).collect();
    assert_eq!(reasons, Refusal::REASONS);
}

// === issuer checks ===

fn leaf_cert(issuer_pki: &GeneratedPki) -> (String, String) {
    let f_bundle = TrustBundle::from_pem("ca", issuer_pki.anchor_pem.as_bytes()).unwrap();
    let issuer = Issuer::from_pem(
        issuer_pki.issuer_pem.as_bytes(),
        issuer_pki.issuer_key_pem.as_bytes(),
        &f_bundle,
        SystemTime::now(),
    )
    .unwrap();
    let ca = Ca::new(CaConfig::new(domain()), issuer);
    let key = generate_key().unwrap();
    let csr = check_csr(&build_csr(&key, &web()).unwrap(), &web()).unwrap();
    let leaf = ca.issue(&web(), &csr, SystemTime::now()).unwrap();
    (pki::cert_pem(&leaf.leaf), key.serialize_pem())
}

#[test]
fn issuer_must_chain_to_the_bundle() {
    let f = fixture();
    let other = generate_pki(&PkiParams::for_trust_domain("cluster.local")).unwrap();
    let err = Issuer::from_pem(
        other.issuer_pem.as_bytes(),
        other.issuer_key_pem.as_bytes(),
        &f.bundle,
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(matches!(err, IssuerError::Unchained { .. }), "{err}");
    assert!(err.to_string().contains("does not chain"), "{err}");
    // With both anchors in the bundle (rotation), both issuers are fine.
    let both = format!("{}{}", f.pki.anchor_pem, other.anchor_pem);
    let bundle = TrustBundle::from_pem("ca", both.as_bytes()).unwrap();
    Issuer::from_pem(
        other.issuer_pem.as_bytes(),
        other.issuer_key_pem.as_bytes(),
        &bundle,
        SystemTime::now(),
    )
    .unwrap();
    Issuer::from_pem(
        f.pki.issuer_pem.as_bytes(),
        f.pki.issuer_key_pem.as_bytes(),
        &bundle,
        SystemTime::now(),
    )
    .unwrap();
}

#[test]
fn issuer_must_be_a_ca_match_its_key_and_be_valid() {
    let f = fixture();
    let (leaf, leaf_key) = leaf_cert(&f.pki);
    let err = Issuer::from_pem(leaf.as_bytes(), leaf_key.as_bytes(), &f.bundle, SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, IssuerError::NotACa { .. }), "{err}");

    let err = Issuer::from_pem(
        f.pki.issuer_pem.as_bytes(),
        f.pki.anchor_key_pem.as_bytes(),
        &f.bundle,
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(matches!(err, IssuerError::KeyMismatch { .. }), "{err}");

    let in_two_years = SystemTime::now() + Duration::from_secs(2 * 365 * 24 * 3600);
    let err = Issuer::from_pem(
        f.pki.issuer_pem.as_bytes(),
        f.pki.issuer_key_pem.as_bytes(),
        &f.bundle,
        in_two_years,
    )
    .unwrap_err();
    assert!(matches!(err, IssuerError::Expired { .. }), "{err}");

    let last_year = SystemTime::now() - Duration::from_secs(365 * 24 * 3600);
    let err = Issuer::from_pem(
        f.pki.issuer_pem.as_bytes(),
        f.pki.issuer_key_pem.as_bytes(),
        &f.bundle,
        last_year,
    )
    .unwrap_err();
    assert!(matches!(err, IssuerError::NotYetValid { .. }), "{err}");

    let err = Issuer::from_pem(b"", f.pki.issuer_key_pem.as_bytes(), &f.bundle, SystemTime::now())
        .unwrap_err();
    assert!(err.to_string().contains("issuer certificate"), "{err}");
    let err = Issuer::from_pem(f.pki.issuer_pem.as_bytes(), b"junk", &f.bundle, SystemTime::now())
        .unwrap_err();
    assert!(err.to_string().contains("issuer key"), "{err}");
}

#[test]
fn issuer_chain_through_an_intermediate() {
    // anchor -> mid (CA) -> issuer; issuer.crt holds issuer + mid; the response carries both.
    let pki = generate_pki(&PkiParams::for_trust_domain("cluster.local")).unwrap();
    let mid_key = pki::parse_key_pem("k", pki.issuer_key_pem.as_bytes()).unwrap();
    let mid_der = pki::parse_certs_pem("c", pki.issuer_pem.as_bytes()).unwrap().remove(0);
    let mid = rcgen::Issuer::from_ca_cert_der(&mid_der, mid_key).unwrap();
    let key = generate_key().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, "issuer-2");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let issuer = params.signed_by(&key, &mid).unwrap();
    let bundle = TrustBundle::from_pem("ca", pki.anchor_pem.as_bytes()).unwrap();
    let chain_pem = format!("{}{}", issuer.pem(), pki.issuer_pem);
    let loaded = Issuer::from_pem(
        chain_pem.as_bytes(),
        key.serialize_pem().as_bytes(),
        &bundle,
        SystemTime::now(),
    )
    .unwrap();
    assert_eq!(loaded.chain().len(), 2);
    // Without the middle certificate it does not chain.
    let err = Issuer::from_pem(
        issuer.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        &bundle,
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(matches!(err, IssuerError::Unchained { .. }), "{err}");
    let _: &[CertificateDer<'_>] = loaded.chain();
}

/// A refusal's gRPC status echoes input cut short, whatever the size of the request.
#[tokio::test]
async fn refusal_status_messages_are_bounded() {
    let f = fixture();
    let (_, csr) = csr_for(&web());
    let huge = format!("{}.prod.serviceaccount.identity.weft.cluster.local", "w".repeat(60_000));
    let r = refusal(&f, &huge, b"web-token", &csr).await;
    assert_eq!(r.reason(), "invalid_identity");
    let status = tonic::Status::from(r);
    assert!(status.message().len() < 600, "{} bytes: {}", status.message().len(), status.message());
    assert!(status.message().contains("bytes)"), "{}", status.message());
}
