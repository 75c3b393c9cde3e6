//! The CA: an issuer (checked against the trust bundle) that signs a leaf only for the
//! identity a token proves. The CSR supplies the public key and nothing else; the CA writes
//! the names, the key usages and the validity window.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use x509_parser::{
    certificate::X509Certificate,
    certification_request::X509CertificationRequest,
    error::X509Error,
    extensions::{GeneralName, ParsedExtension},
    oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION,
        OID_SIG_ECDSA_WITH_SHA224, OID_SIG_ECDSA_WITH_SHA512, OID_SIG_ED25519,
    },
    prelude::FromDer,
};

use crate::{
    bundle::TrustBundle,
    name::{IdentityDomain, IdentityName, NameError},
    pki::{self, PkiError, random_serial, set_validity, unix_secs},
    token::{TokenError, TokenValidator},
};

/// Why an issuer cannot be used; refused at start, and on reload (the old one stays).
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(
        "the issuer certificate ({subject}) is not a CA certificate (basicConstraints CA:TRUE)"
    )]
    NotACa { subject: String },
    #[error(
        "the issuer certificate ({subject}) may not sign certificates (keyUsage lacks keyCertSign)"
    )]
    NoCertSign { subject: String },
    #[error("the issuer certificate ({subject}) expired at {not_after} (Unix time)")]
    Expired { subject: String, not_after: i64 },
    #[error("the issuer certificate ({subject}) is not valid before {not_before} (Unix time)")]
    NotYetValid { subject: String, not_before: i64 },
    #[error("the issuer key does not belong to the issuer certificate ({subject})")]
    KeyMismatch { subject: String },
    #[error(
        "the issuer certificate ({subject}, issued by {issuer}) does not chain to any trust \
         anchor in the bundle ({anchors}); was it signed by another root?"
    )]
    Unchained { subject: String, issuer: String, anchors: String },
}

/// A loaded, checked issuer: its chain (issuer first) and its signing key.
pub struct Issuer {
    chain: Vec<CertificateDer<'static>>,
    signer: rcgen::Issuer<'static, KeyPair>,
    subject: String,
    not_after: i64,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("subject", &self.subject)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl Issuer {
    /// Checks and loads an issuer from PEM: it must be a CA, valid now, hold the key's public
    /// half, and chain (through any further certificates in `cert_pem`) to an anchor.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        bundle: &TrustBundle,
        now: SystemTime,
    ) -> Result<Self, IssuerError> {
        let chain = pki::parse_certs_pem("issuer certificate", cert_pem)?;
        let key = pki::parse_key_pem("issuer key", key_pem)?;
        let bad =
            |e: String| PkiError::BadCertificate { what: "issuer certificate".into(), reason: e };
        let (_, cert) = X509Certificate::from_der(&chain[0]).map_err(|e| bad(e.to_string()))?;
        let subject = cert.subject().to_string();
        if !cert.is_ca() {
            return Err(IssuerError::NotACa { subject });
        }
        if let Ok(Some(ku)) = cert.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(IssuerError::NoCertSign { subject });
        }
        let now = unix_secs(now);
        let (not_before, not_after) =
            (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp());
        if not_after <= now {
            return Err(IssuerError::Expired { subject, not_after });
        }
        if not_before > now {
            return Err(IssuerError::NotYetValid { subject, not_before });
        }
        if rcgen::PublicKeyData::subject_public_key_info(&key) != cert.public_key().raw {
            return Err(IssuerError::KeyMismatch { subject });
        }
        check_chain(&chain, bundle)?;
        let signer =
            rcgen::Issuer::from_ca_cert_der(&chain[0], key).map_err(|e| bad(e.to_string()))?;
        // The response carries the chain up to, not including, the anchors.
        let chain = chain.into_iter().filter(|c| !bundle.anchors().contains(c)).collect();
        Ok(Self { chain, signer, subject, not_after })
    }

    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// When the issuer expires, in Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
}

/// Walks from the issuer up through `chain` until a certificate is signed by an anchor.
fn check_chain(chain: &[CertificateDer<'static>], bundle: &TrustBundle) -> Result<(), IssuerError> {
    fn parse(d: &[u8]) -> Option<X509Certificate<'_>> {
        X509Certificate::from_der(d).ok().map(|(_, c)| c)
    }
    let anchors: Vec<_> = bundle.anchors().iter().filter_map(|a| parse(a)).collect();
    let others: Vec<_> = chain.iter().skip(1).filter_map(|c| parse(c)).collect();
    let Some(mut cur) = parse(&chain[0]) else {
        return Err(PkiError::BadCertificate {
            what: "issuer".into(),
            reason: "unparsable".into(),
        }
        .into());
    };
    if bundle.anchors().contains(&chain[0]) {
        return Ok(());
    }
    let signs = |parent: &X509Certificate<'_>, child: &X509Certificate<'_>| {
        parent.subject().as_raw() == child.issuer().as_raw()
            && child.verify_signature(Some(parent.public_key())).is_ok()
    };
    for _ in 0..=others.len() {
        if anchors.iter().any(|a| signs(a, &cur)) {
            return Ok(());
        }
        match others.iter().find(|p| p.is_ca() && signs(p, &cur)) {
            Some(p) => cur = p.clone(),
            None => break,
        }
    }
    Err(IssuerError::Unchained {
        subject: cur.subject().to_string(),
        issuer: cur.issuer().to_string(),
        anchors: anchors.iter().map(|a| a.subject().to_string()).collect::<Vec<_>>().join("; "),
    })
}

/// Why a request was refused: the gRPC status it maps to and the metric label it counts under.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the request has no {0}")]
    Missing(&'static str),
    #[error("the requested identity is not valid here: {0}")]
    BadIdentity(#[from] NameError),
    #[error("the CSR is not a DER PKCS#10 certification request: {0}")]
    MalformedCsr(String),
    #[error("the CSR's signature does not verify with the public key it carries")]
    BadCsrSignature,
    /// Refused before verifying: ring, which verifies, has no ECDSA P-256 with SHA-512.
    #[error(
        "the CSR is signed with {0}, which is not verified here; sign it with ECDSA and SHA-256 \
         (or SHA-384), as the proxy does"
    )]
    UnsupportedCsrSignature(String),
    #[error("the CSR's key is {0}; only ECDSA P-256 keys are certified")]
    UnsupportedKey(String),
    #[error("the CSR asks for {found}, which contradicts the requested identity {expected}")]
    CsrNames { found: String, expected: String },
    #[error("the token was not accepted: {0}")]
    InvalidToken(String),
    #[error("the token could not be checked now, retry later: {0}")]
    TokenUnavailable(String),
    #[error("the token is for {token}, not for the requested identity {requested}")]
    WrongIdentity { requested: String, token: String },
    #[error("the issuer expired; the identity service needs a new issuer certificate")]
    IssuerExpired,
    #[error("could not sign the certificate: {0}")]
    Internal(String),
    /// Refused by the gRPC decoder before the request reaches the CA.
    #[error("the request is larger than the {limit} bytes a Certify may take")]
    TooLarge { limit: usize },
    /// Refused by the gRPC decoder before the request reaches the CA: not a Certify request
    /// (protobuf garbage, a field of the wrong type, an identity that is not UTF-8), or an
    /// encoding the server does not take. The client was answered by the decoder (`INTERNAL`,
    /// as gRPC specifies for a request that does not parse); this is for the count and the log.
    #[error(
        "the request is not a CertifyRequest the server can decode ({0}); is the client built \
         against linkerd2-proxy-api's identity.proto?"
    )]
    MalformedRequest(String),
}

impl Refusal {
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Refusal::Missing(_)
            | Refusal::BadIdentity(_)
            | Refusal::MalformedCsr(_)
            | Refusal::BadCsrSignature
            | Refusal::UnsupportedCsrSignature(_)
            | Refusal::UnsupportedKey(_)
            | Refusal::CsrNames { .. } => Code::InvalidArgument,
            Refusal::InvalidToken(_) => Code::Unauthenticated,
            Refusal::WrongIdentity { .. } => Code::PermissionDenied,
            Refusal::TokenUnavailable(_) | Refusal::IssuerExpired => Code::Unavailable,
            Refusal::Internal(_) | Refusal::MalformedRequest(_) => Code::Internal,
            Refusal::TooLarge { .. } => Code::OutOfRange,
        }
    }

    /// The `reason` label of `identity_certificate_refusals_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Missing(_) => "missing_field",
            Refusal::BadIdentity(_) => "invalid_identity",
            Refusal::MalformedCsr(_) => "malformed_csr",
            Refusal::BadCsrSignature => "bad_csr_signature",
            Refusal::UnsupportedCsrSignature(_) => "unsupported_csr_signature",
            Refusal::UnsupportedKey(_) => "unsupported_key",
            Refusal::CsrNames { .. } => "csr_names",
            Refusal::InvalidToken(_) => "invalid_token",
            Refusal::TokenUnavailable(_) => "token_unavailable",
            Refusal::WrongIdentity { .. } => "wrong_identity",
            Refusal::IssuerExpired => "issuer_expired",
            Refusal::Internal(_) => "internal",
            Refusal::TooLarge { .. } => "message_too_large",
            Refusal::MalformedRequest(_) => "malformed_request",
        }
    }

    pub const REASONS: [&'static str; 14] = [
        "missing_field",
        "invalid_identity",
        "malformed_csr",
        "bad_csr_signature",
        "unsupported_csr_signature",
        "unsupported_key",
        "csr_names",
        "invalid_token",
        "token_unavailable",
        "wrong_identity",
        "issuer_expired",
        "internal",
        "message_too_large",
        "malformed_request",
    ];
}

/// Most bytes of a refusal's gRPC status message.
pub const MAX_STATUS_BYTES: usize = 1024;

impl From<Refusal> for tonic::Status {
    fn from(r: Refusal) -> Self {
        // A backstop: the parts that echo input are cut already (`name::echo`).
        tonic::Status::new(r.code(), crate::name::truncate(&r.to_string(), MAX_STATUS_BYTES))
    }
}

/// A CSR that passed every check: the public key (SubjectPublicKeyInfo DER) to certify.
#[derive(Debug)]
pub struct CheckedCsr {
    spki: Vec<u8>,
}

impl CheckedCsr {
    /// For a key the CA's own process holds (the identity service's serving certificate).
    pub(crate) fn from_key(key: &KeyPair) -> Self {
        Self { spki: rcgen::PublicKeyData::subject_public_key_info(key) }
    }
}

/// Checks a DER CSR for `identity`: parses, an ECDSA P-256 key, a signature that verifies,
/// and no names other than the identity name (CN, DNS SAN) and its SPIFFE ID (URI SAN).
pub fn check_csr(der: &[u8], identity: &IdentityName) -> Result<CheckedCsr, Refusal> {
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| Refusal::MalformedCsr(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Refusal::MalformedCsr(format!("{} bytes after the request", rest.len())));
    }
    let info = &csr.certification_request_info;
    let alg = &info.subject_pki.algorithm;
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
        if curve.as_ref() != Some(&OID_EC_P256) {
            let curve = curve.map(|c| c.to_id_string()).unwrap_or_else(|| "unnamed".into());
            return Err(Refusal::UnsupportedKey(format!("ECDSA on curve {curve}")));
        }
    } else if alg.algorithm == OID_PKCS1_RSAENCRYPTION {
        return Err(Refusal::UnsupportedKey("RSA".into()));
    } else if alg.algorithm == OID_SIG_ED25519 {
        return Err(Refusal::UnsupportedKey("Ed25519".into()));
    } else {
        return Err(Refusal::UnsupportedKey(format!("of type {}", alg.algorithm.to_id_string())));
    }
    csr.verify_signature().map_err(|e| match e {
        X509Error::SignatureUnsupportedAlgorithm => {
            let alg = &csr.signature_algorithm.algorithm;
            // The ones a P-256 key could sign with; anything else by its OID.
            let name = if *alg == OID_SIG_ECDSA_WITH_SHA512 {
                "ECDSA with SHA-512".to_string()
            } else if *alg == OID_SIG_ECDSA_WITH_SHA224 {
                "ECDSA with SHA-224".to_string()
            } else {
                format!("the algorithm {}", alg.to_id_string())
            };
            Refusal::UnsupportedCsrSignature(name)
        }
        _ => Refusal::BadCsrSignature,
    })?;

    let contradiction = |found: String| Refusal::CsrNames {
        found: crate::name::truncate(&found, crate::name::MAX_ECHO_BYTES),
        expected: identity.to_string(),
    };
    for cn in info.subject.iter_common_name() {
        let cn = cn.as_str().map_err(|e| Refusal::MalformedCsr(e.to_string()))?;
        if cn != identity.as_str() {
            return Err(contradiction(format!("common name {cn:?}")));
        }
    }
    let spiffe = identity.spiffe_id().to_string();
    for ext in csr.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) if *d == identity.as_str() => {}
                        GeneralName::URI(u) if *u == spiffe => {}
                        GeneralName::DNSName(d) => {
                            return Err(contradiction(format!("DNS name {d:?}")));
                        }
                        GeneralName::URI(u) => return Err(contradiction(format!("URI {u:?}"))),
                        other => return Err(contradiction(format!("the name {other}"))),
                    }
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => {
                return Err(contradiction("a CA certificate".into()));
            }
            // Other requested extensions are ignored: the CA writes its own.
            _ => {}
        }
    }
    Ok(CheckedCsr { spki: info.subject_pki.raw.to_vec() })
}

/// How the CA issues.
#[derive(Clone, Debug)]
pub struct CaConfig {
    pub domain: IdentityDomain,
    /// Leaf lifetime (default 24 h).
    pub lifetime: Duration,
    /// Backdating of `notBefore`, for clocks that run behind (default 20 s).
    pub clock_skew: Duration,
}

impl CaConfig {
    pub fn new(domain: IdentityDomain) -> Self {
        Self {
            domain,
            lifetime: Duration::from_secs(24 * 3600),
            clock_skew: Duration::from_secs(20),
        }
    }
}

/// A signed leaf: DER certificate, the issuer chain (DER, issuer first) and its expiry.
#[derive(Clone, Debug)]
pub struct Issued {
    pub leaf: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub valid_until: SystemTime,
}

/// The certificate authority. The issuer can be replaced while it serves.
pub struct Ca {
    config: CaConfig,
    issuer: RwLock<Arc<Issuer>>,
}

impl Ca {
    pub fn new(config: CaConfig, issuer: Issuer) -> Self {
        Self { config, issuer: RwLock::new(Arc::new(issuer)) }
    }

    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    pub fn issuer(&self) -> Arc<Issuer> {
        self.issuer.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_issuer(&self, issuer: Issuer) {
        *self.issuer.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(issuer);
    }

    /// The whole Certify decision: names and CSR first (cheap, local), then the token.
    pub async fn certify(
        &self,
        identity: &str,
        token: &[u8],
        csr_der: &[u8],
        tokens: &dyn TokenValidator,
    ) -> Result<Issued, Refusal> {
        if identity.is_empty() {
            return Err(Refusal::Missing("identity"));
        }
        if token.is_empty() {
            return Err(Refusal::Missing("token"));
        }
        if csr_der.is_empty() {
            return Err(Refusal::Missing("certificate_signing_request"));
        }
        let name = self.config.domain.parse(identity)?;
        let csr = check_csr(csr_der, &name)?;
        let sa = tokens.validate(token).await.map_err(|e| match e {
            TokenError::Invalid(m) => Refusal::InvalidToken(m),
            TokenError::Unavailable(m) => Refusal::TokenUnavailable(m),
        })?;
        if sa.namespace != name.namespace() || sa.name != name.service_account() {
            return Err(Refusal::WrongIdentity {
                requested: name.to_string(),
                token: format!("service account {sa}"),
            });
        }
        self.issue(&name, &csr, SystemTime::now())
    }

    /// Signs a leaf for `name` with the CSR's key; no token check (the caller did it).
    pub fn issue(
        &self,
        name: &IdentityName,
        csr: &CheckedCsr,
        now: SystemTime,
    ) -> Result<Issued, Refusal> {
        let issuer = self.issuer();
        let now_s = unix_secs(now);
        if issuer.not_after <= now_s {
            return Err(Refusal::IssuerExpired);
        }
        let internal = |e: &dyn std::fmt::Display| Refusal::Internal(e.to_string());
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = vec![
            SanType::DnsName(name.as_str().try_into().map_err(|e| internal(&e))?),
            SanType::URI(name.spiffe_id().to_string().try_into().map_err(|e| internal(&e))?),
        ];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial().map_err(|e| internal(&e))?);
        let skew = i64::try_from(self.config.clock_skew.as_secs()).unwrap_or(0);
        let life = i64::try_from(self.config.lifetime.as_secs()).unwrap_or(i64::MAX / 2);
        // Never past the issuer: a leaf outliving its issuer would fail verification anyway.
        let not_after = now_s.saturating_add(life).min(issuer.not_after);
        set_validity(&mut params, now_s - skew, not_after).map_err(|e| internal(&e))?;
        let spki = rcgen::SubjectPublicKeyInfo::from_der(&csr.spki).map_err(|e| internal(&e))?;
        let leaf = params.signed_by(&spki, &issuer.signer).map_err(|e| internal(&e))?;
        Ok(Issued {
            leaf: leaf.der().clone(),
            chain: issuer.chain.clone(),
            valid_until: UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or(0)),
        })
    }
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
