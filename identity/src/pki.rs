//! Certificate and key helpers: ECDSA P-256 keys in memory, CSRs, PEM in and out, trust
//! anchors and issuers for `weft certs generate`, and a readable summary of a certificate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use x509_parser::{
    certificate::X509Certificate,
    extensions::{GeneralName, ParsedExtension},
    prelude::FromDer,
    time::ASN1Time,
};

use crate::name::IdentityName;

/// A problem with certificate or key material, saying which and why.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what}: no PEM {expected} found")]
    NoPem { what: String, expected: &'static str },
    #[error("{what}: not valid PEM: {reason}")]
    BadPem { what: String, reason: String },
    #[error("{what}: not a valid X.509 certificate: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error("{what}: not a usable private key: {reason}")]
    BadKey { what: String, reason: String },
    #[error("could not build {what}: {reason}")]
    Build { what: &'static str, reason: String },
}

/// Generates a fresh ECDSA P-256 key. It lives only in memory until the caller writes it.
pub fn generate_key() -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| PkiError::Build { what: "an ECDSA P-256 key", reason: e.to_string() })
}

/// A DER CSR for `name` signed by `key`: DNS SAN = the identity name, as linkerd2-proxy sends.
/// The CA takes only the public key from it and writes the names itself.
pub fn build_csr(key: &KeyPair, name: &IdentityName) -> Result<Vec<u8>, PkiError> {
    let build = |e: rcgen::Error| PkiError::Build { what: "a CSR", reason: e.to_string() };
    let mut params = CertificateParams::new(vec![name.to_string()]).map_err(build)?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(key).map_err(build)?;
    Ok(csr.der().to_vec())
}

/// Parses every certificate in a PEM document, in order. `what` names the source in errors.
pub fn parse_certs_pem(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadPem { what: what.to_owned(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(PkiError::NoPem { what: what.to_owned(), expected: "CERTIFICATE" });
    }
    for c in &certs {
        X509Certificate::from_der(c).map_err(|e| PkiError::BadCertificate {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(certs)
}

/// Parses a PEM private key (PKCS#8, SEC1 or PKCS#1).
pub fn parse_key_pem(what: &str, pem: &[u8]) -> Result<KeyPair, PkiError> {
    let text = std::str::from_utf8(pem)
        .map_err(|_| PkiError::BadPem { what: what.to_owned(), reason: "not UTF-8".into() })?;
    KeyPair::from_pem(text)
        .map_err(|e| PkiError::BadKey { what: what.to_owned(), reason: e.to_string() })
}

/// PEM of one DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    rustls_pem("CERTIFICATE", der)
}

fn rustls_pem(label: &str, der: &[u8]) -> String {
    // Base64 by hand: tiny, and keeps an encoding crate out of the proxy's dependencies.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n =
            chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A random, positive 128-bit serial number (RFC 5280 wants them unique per issuer).
pub(crate) fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| PkiError::Build { what: "a serial number", reason: "no randomness".into() })?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // never leading zero bytes, so the DER is always 16 bytes
    Ok(SerialNumber::from_slice(&bytes))
}

pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// Sets the validity window to `[not_before, not_after]` (Unix seconds).
pub(crate) fn set_validity(
    params: &mut CertificateParams,
    not_before: i64,
    not_after: i64,
) -> Result<(), PkiError> {
    let bad = |_| PkiError::Build { what: "a validity window", reason: "date out of range".into() };
    params.not_before = ASN1Time::from_timestamp(not_before).map_err(bad)?.to_datetime();
    params.not_after = ASN1Time::from_timestamp(not_after).map_err(bad)?.to_datetime();
    Ok(())
}

/// A generated trust anchor and issuer, as PEM, ready for `weft identity` and the Helm chart.
pub struct GeneratedPki {
    pub anchor_pem: String,
    pub anchor_key_pem: String,
    pub issuer_pem: String,
    pub issuer_key_pem: String,
}

/// Lifetimes and names of a generated PKI.
#[derive(Clone, Debug)]
pub struct PkiParams {
    pub anchor_name: String,
    pub issuer_name: String,
    pub anchor_lifetime: Duration,
    pub issuer_lifetime: Duration,
    /// Backdating of both certificates, for clocks that run behind.
    pub clock_skew: Duration,
}

impl PkiParams {
    /// A root for 10 years and an issuer for 1 year, named as Linkerd names them.
    pub fn for_trust_domain(trust_domain: &str) -> Self {
        const DAY: u64 = 24 * 3600;
        Self {
            anchor_name: format!("root.{trust_domain}"),
            issuer_name: format!("identity.{trust_domain}"),
            anchor_lifetime: Duration::from_secs(3650 * DAY),
            issuer_lifetime: Duration::from_secs(365 * DAY),
            clock_skew: Duration::from_secs(20),
        }
    }
}

fn ca_params(
    cn: &str,
    path_len: Option<u8>,
    now: i64,
    skew: Duration,
    life: Duration,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    params.use_authority_key_identifier_extension = path_len.is_some();
    let skew = i64::try_from(skew.as_secs()).unwrap_or(0);
    let life = i64::try_from(life.as_secs()).unwrap_or(i64::MAX / 2);
    set_validity(&mut params, now - skew, now.saturating_add(life))?;
    Ok(params)
}

/// Generates a self-signed trust anchor (ECDSA P-256) and an issuer it signs (an intermediate
/// CA with path length 0: it may sign leaves only).
pub fn generate_pki(p: &PkiParams) -> Result<GeneratedPki, PkiError> {
    let now = unix_secs(SystemTime::now());
    let anchor_key = generate_key()?;
    let anchor_params = ca_params(&p.anchor_name, None, now, p.clock_skew, p.anchor_lifetime)?;
    let anchor = anchor_params
        .self_signed(&anchor_key)
        .map_err(|e| PkiError::Build { what: "the trust anchor", reason: e.to_string() })?;
    let (issuer_pem, issuer_key_pem) =
        sign_issuer(rcgen::Issuer::new(anchor_params, &anchor_key), p, now)?;
    Ok(GeneratedPki {
        anchor_pem: anchor.pem(),
        anchor_key_pem: anchor_key.serialize_pem(),
        issuer_pem,
        issuer_key_pem,
    })
}

/// Generates a new issuer signed by an existing anchor (issuer rotation under the same
/// root); returns the issuer certificate and key as PEM.
pub fn generate_issuer(
    anchor_pem: &[u8],
    anchor_key_pem: &[u8],
    p: &PkiParams,
) -> Result<(String, String), PkiError> {
    let anchor = parse_certs_pem("trust anchor", anchor_pem)?.remove(0);
    let key = parse_key_pem("trust anchor key", anchor_key_pem)?;
    if rcgen::PublicKeyData::subject_public_key_info(&key)
        != X509Certificate::from_der(&anchor)
            .map(|(_, c)| c.public_key().raw.to_vec())
            .unwrap_or_default()
    {
        return Err(PkiError::BadKey {
            what: "trust anchor key".into(),
            reason: "it does not belong to the trust anchor certificate".into(),
        });
    }
    let issuer = rcgen::Issuer::from_ca_cert_der(&anchor, key).map_err(|e| {
        PkiError::BadCertificate { what: "trust anchor".into(), reason: e.to_string() }
    })?;
    sign_issuer(issuer, p, unix_secs(SystemTime::now()))
}

fn sign_issuer<K: rcgen::SigningKey>(
    anchor: rcgen::Issuer<'_, K>,
    p: &PkiParams,
    now: i64,
) -> Result<(String, String), PkiError> {
    let issuer_key = generate_key()?;
    let params = ca_params(&p.issuer_name, Some(0), now, p.clock_skew, p.issuer_lifetime)?;
    let issuer = params
        .signed_by(&issuer_key, &anchor)
        .map_err(|e| PkiError::Build { what: "the issuer", reason: e.to_string() })?;
    Ok((issuer.pem(), issuer_key.serialize_pem()))
}

/// Whether `child`'s signature verifies with `parent`'s key and names `parent` as issuer.
pub fn is_signed_by(child: &[u8], parent: &[u8]) -> bool {
    match (X509Certificate::from_der(child), X509Certificate::from_der(parent)) {
        (Ok((_, c)), Ok((_, p))) => {
            c.issuer().as_raw() == p.subject().as_raw()
                && c.verify_signature(Some(p.public_key())).is_ok()
        }
        _ => false,
    }
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_time(unix: i64) -> String {
    match ASN1Time::from_timestamp(unix) {
        Ok(t) => {
            let d = t.to_datetime();
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                d.year(),
                u8::from(d.month()),
                d.day(),
                d.hour(),
                d.minute(),
                d.second()
            )
        }
        Err(_) => unix.to_string(),
    }
}

/// The identity a (verified) peer certificate proves: its first DNS SAN that is an identity
/// name. For `l5d-client-id` and the `client_id`/`server_id` labels; verify the chain first.
pub fn peer_identity(der: &[u8]) -> Option<IdentityName> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => d.parse().ok(),
        _ => None,
    })
}

/// What `weft certs inspect` prints and what tests check about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub dns_names: Vec<String>,
    pub uris: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub is_ca: bool,
    pub path_len: Option<u32>,
    pub server_auth: bool,
    pub client_auth: bool,
    pub key_cert_sign: bool,
    pub key_algorithm: String,
    pub self_signed: bool,
}

impl CertSummary {
    pub fn parse(der: &[u8]) -> Result<Self, PkiError> {
        let bad = |e: String| PkiError::BadCertificate { what: "certificate".into(), reason: e };
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| bad(e.to_string()))?;
        let mut s = CertSummary {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            dns_names: vec![],
            uris: vec![],
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            is_ca: cert.is_ca(),
            path_len: None,
            server_auth: false,
            client_auth: false,
            key_cert_sign: false,
            key_algorithm: key_algorithm(&cert),
            self_signed: cert.subject().as_raw() == cert.issuer().as_raw()
                && cert.verify_signature(None).is_ok(),
        };
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for n in &san.general_names {
                        match n {
                            GeneralName::DNSName(d) => s.dns_names.push((*d).to_owned()),
                            GeneralName::URI(u) => s.uris.push((*u).to_owned()),
                            _ => {}
                        }
                    }
                }
                ParsedExtension::BasicConstraints(bc) => s.path_len = bc.path_len_constraint,
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    s.server_auth = eku.server_auth;
                    s.client_auth = eku.client_auth;
                }
                ParsedExtension::KeyUsage(ku) => s.key_cert_sign = ku.key_cert_sign(),
                _ => {}
            }
        }
        Ok(s)
    }
}

pub(crate) fn key_algorithm(cert: &X509Certificate<'_>) -> String {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION,
    };
    let alg = &cert.public_key().algorithm;
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
        if curve.as_ref() == Some(&OID_EC_P256) {
            return "ECDSA P-256".into();
        }
        return format!("ECDSA ({})", curve.map(|c| c.to_id_string()).unwrap_or_default());
    }
    if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
        return "RSA".into();
    }
    alg.algorithm.to_id_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_pki_has_the_right_constraints() {
        let pki = generate_pki(&PkiParams::for_trust_domain("cluster.local")).unwrap();
        let anchor = &parse_certs_pem("ca", pki.anchor_pem.as_bytes()).unwrap()[0];
        let issuer = &parse_certs_pem("issuer", pki.issuer_pem.as_bytes()).unwrap()[0];
        let a = CertSummary::parse(anchor).unwrap();
        let i = CertSummary::parse(issuer).unwrap();
        assert!(a.is_ca && a.self_signed && a.key_cert_sign);
        assert_eq!(a.path_len, None);
        assert_eq!(a.key_algorithm, "ECDSA P-256");
        assert!(i.is_ca && !i.self_signed && i.key_cert_sign);
        assert_eq!(i.path_len, Some(0));
        assert_eq!(i.issuer, a.subject);
        assert_eq!(a.subject, "CN=root.cluster.local");
        let year = 365 * 24 * 3600;
        assert_eq!(i.not_after - i.not_before, year + 20);
        assert_eq!(a.not_after - a.not_before, 10 * year + 20);
        // The issuer's signature verifies with the anchor's key.
        let (_, ic) = X509Certificate::from_der(issuer).unwrap();
        let (_, ac) = X509Certificate::from_der(anchor).unwrap();
        ic.verify_signature(Some(ac.public_key())).unwrap();
        // The keys parse back.
        parse_key_pem("issuer.key", pki.issuer_key_pem.as_bytes()).unwrap();
        assert!(is_signed_by(issuer, anchor));
        assert!(!is_signed_by(anchor, issuer));
    }

    #[test]
    fn new_issuer_under_the_same_anchor() {
        let p = PkiParams::for_trust_domain("cluster.local");
        let pki = generate_pki(&p).unwrap();
        let (crt, _key) =
            generate_issuer(pki.anchor_pem.as_bytes(), pki.anchor_key_pem.as_bytes(), &p).unwrap();
        let anchor = &parse_certs_pem("ca", pki.anchor_pem.as_bytes()).unwrap()[0];
        let issuer = &parse_certs_pem("issuer", crt.as_bytes()).unwrap()[0];
        assert!(is_signed_by(issuer, anchor));
        // The wrong key for the anchor is refused.
        assert!(
            generate_issuer(pki.anchor_pem.as_bytes(), pki.issuer_key_pem.as_bytes(), &p).is_err()
        );
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_767_225_600), "2026-01-01 00:00:00 UTC");
    }

    #[test]
    fn csr_carries_the_name_and_verifies() {
        use x509_parser::certification_request::X509CertificationRequest;
        let key = generate_key().unwrap();
        let name: IdentityName =
            "web.prod.serviceaccount.identity.weft.cluster.local".parse().unwrap();
        let der = build_csr(&key, &name).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().unwrap();
        let sans: Vec<_> = csr
            .requested_extensions()
            .unwrap()
            .filter_map(|e| match e {
                ParsedExtension::SubjectAlternativeName(s) => Some(s.general_names.clone()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(sans, vec![GeneralName::DNSName(name.as_str())]);
        // A certificate for the name gives it back; one without identity names gives nothing.
        let cert = CertificateParams::new(vec!["x.example".into(), name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(peer_identity(cert.der()), Some(name));
        let cert =
            CertificateParams::new(vec!["x.example".into()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(peer_identity(cert.der()), None);
        assert_eq!(peer_identity(b"junk"), None);
    }

    #[test]
    fn pem_round_trip_and_errors() {
        let pki = generate_pki(&PkiParams::for_trust_domain("example.org")).unwrap();
        let der = parse_certs_pem("x", pki.anchor_pem.as_bytes()).unwrap().remove(0);
        assert_eq!(cert_pem(&der), pki.anchor_pem);
        let both = format!("{}{}", pki.issuer_pem, pki.anchor_pem);
        assert_eq!(parse_certs_pem("x", both.as_bytes()).unwrap().len(), 2);
        assert!(matches!(parse_certs_pem("x", b""), Err(PkiError::NoPem { .. })));
        assert!(parse_certs_pem("x", pki.issuer_key_pem.as_bytes()).is_err());
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(parse_certs_pem("x", garbage.as_bytes()).is_err());
        assert!(parse_key_pem("k", pki.anchor_pem.as_bytes()).is_err());
    }

    #[test]
    fn base64_lengths() {
        for n in 0..8 {
            let der: Vec<u8> = (0..n).collect();
            let pem = rustls_pem("CERTIFICATE", &der);
            let back = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
                .map(|d: CertificateDer<'_>| d.to_vec());
            if n > 0 {
                assert_eq!(back.unwrap(), der);
            }
        }
    }
}
