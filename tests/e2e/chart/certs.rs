//! Helm's `genCA` and `genSignedCert` for the renderer, after sprig's `crypto.go`: each makes
//! an RSA 2048 key and returns Go's `certificate` struct — `.Cert` (PEM certificate) and
//! `.Key` (PEM PKCS#1, "RSA PRIVATE KEY") — with the x509 template `getBaseCertTemplate`
//! builds: subject CN only, a random serial below 2^128, valid from now for `days` × 24 h,
//! key usage digitalSignature + keyEncipherment (+ certSign for the CA), extended key usage
//! serverAuth + clientAuth (the CA's too), critical basic constraints (CA without a path
//! length, or CA:FALSE), SANs only from the arguments (Go never adds the CN), a subject key
//! id on the CA and an authority key id on what it signs; SHA256-with-RSA signatures.
//!
//! rcgen writes and signs the certificates. ring, the workspace's only crypto provider,
//! cannot generate RSA keys, so openssl makes them, as the chart README's recipe does.

use std::{
    net::IpAddr,
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use gtmpl::{FuncError, Value};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use x509_parser::{extensions::ParsedExtension, time::ASN1Time};

fn err(what: &str, e: impl std::fmt::Display) -> FuncError {
    FuncError::Generic(format!("{what}: {e}"))
}

/// `genCA CN DAYS`: a self-signed CA.
pub fn gen_ca(args: &[Value]) -> Result<Value, FuncError> {
    let [cn, days] = args else { return Err(FuncError::ExactlyXArgs("genCA".into(), 2)) };
    let mut params = base_template("genCA", cn, &Value::Nil, &Value::Nil, days)?;
    params.key_usages.push(KeyUsagePurpose::KeyCertSign);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let (key_pem, key) = rsa_key()?;
    let cert = params.self_signed(&key).map_err(|e| err("genCA", e))?;
    Ok(certificate(cert.pem(), key_pem))
}

/// `genSignedCert CN IPS ALTERNATE_DNS DAYS CA`: a certificate signed by CA, which must be
/// what `genCA` (or `buildCustomCert`) returned: Go's function takes its struct, not a map.
pub fn gen_signed_cert(args: &[Value]) -> Result<Value, FuncError> {
    let [cn, ips, dns, days, ca] = args else {
        return Err(FuncError::ExactlyXArgs("genSignedCert".into(), 5));
    };
    let Value::Object(ca) = ca else {
        return Err(FuncError::Generic(format!(
            "genSignedCert: wrong type for value; expected sprig.certificate; got {ca}"
        )));
    };
    let field = |name: &str| match ca.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(FuncError::Generic(format!("genSignedCert: the CA has no {name}"))),
    };
    let (ca_cert, ca_key) = (field("Cert")?, field("Key")?);
    let signer = signing_key(&ca_key)?;
    let ca_der =
        CertificateDer::from_pem_slice(ca_cert.as_bytes()).map_err(|e| err("genSignedCert", e))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&ca_der).map_err(|e| err("genSignedCert", e))?;
    // Go writes an authority key id only when the signer has a subject key id.
    let signer_has_key_id = parsed
        .extensions()
        .iter()
        .any(|e| matches!(e.parsed_extension(), ParsedExtension::SubjectKeyIdentifier(_)));
    let issuer = Issuer::from_ca_cert_der(&ca_der, signer).map_err(|e| err("genSignedCert", e))?;
    let mut params = base_template("genSignedCert", cn, ips, dns, days)?;
    params.use_authority_key_identifier_extension = signer_has_key_id;
    // Go's BasicConstraintsValid with IsCA false: a critical, empty basicConstraints, and no
    // subject key id (which rcgen's ExplicitNoCa would add).
    params.is_ca = IsCa::NoCa;
    let mut bc = CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x00]);
    bc.set_criticality(true);
    params.custom_extensions.push(bc);
    let (key_pem, key) = rsa_key()?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| err("genSignedCert", e))?;
    Ok(certificate(cert.pem(), key_pem))
}

/// Go's `certificate` struct: fields `.Cert` and `.Key`, and nothing else (a struct, so a
/// missing field is an error, unlike a map's).
fn certificate(cert: String, key: String) -> Value {
    Value::Object([("Cert".to_owned(), cert.into()), ("Key".to_owned(), key.into())].into())
}

/// sprig's `getBaseCertTemplate`.
fn base_template(
    func: &str,
    cn: &Value,
    ips: &Value,
    dns: &Value,
    days: &Value,
) -> Result<CertificateParams, FuncError> {
    let Value::String(cn) = cn else {
        return Err(FuncError::Generic(format!("{func}: the CN must be a string, not {cn}")));
    };
    let Value::Number(days) = days else {
        return Err(FuncError::Generic(format!("{func}: the days must be an int, not {days}")));
    };
    let days = days.as_i64().ok_or_else(|| err(func, format!("{days:?} days")))?;
    let strings = |what: &str, v: &Value| -> Result<Vec<String>, FuncError> {
        match v {
            Value::Nil | Value::NoValue => Ok(Vec::new()),
            Value::Array(a) => a
                .iter()
                .map(|s| match s {
                    Value::String(s) => Ok(s.clone()),
                    other => {
                        Err(err(func, format!("error parsing {what}: {other} is not a string")))
                    }
                })
                .collect(),
            other => Err(err(func, format!("the {what} must be a list, not {other}"))),
        }
    };
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, cn.as_str());
    params.distinguished_name = name;
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
        .map_err(|_| err(func, "no randomness"))?;
    params.serial_number = Some(SerialNumber::from(serial.to_vec()));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| err(func, e))?;
    let now = i64::try_from(now.as_secs()).map_err(|e| err(func, e))?;
    let time = |t: i64| ASN1Time::from_timestamp(t).map(|t| t.to_datetime());
    params.not_before = time(now).map_err(|e| err(func, e))?;
    params.not_after = time(now + days * 86_400).map_err(|e| err(func, e))?;
    // Go's order: DNS names, then IP addresses.
    for d in strings("alternate dns name", dns)? {
        let d = d.clone().try_into().map_err(|e| err(func, format!("{d}: {e}")))?;
        params.subject_alt_names.push(SanType::DnsName(d));
    }
    for ip in strings("ip", ips)? {
        let ip: IpAddr = ip.parse().map_err(|_| err(func, format!("error parsing ip: {ip}")))?;
        params.subject_alt_names.push(SanType::IpAddress(ip));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// A new RSA 2048 key: its PEM as Go writes it (PKCS#1), and the pair rcgen signs with.
fn rsa_key() -> Result<(String, KeyPair), FuncError> {
    let out = Command::new("openssl")
        .args(["genrsa", "-traditional", "2048"])
        .output()
        .map_err(|e| err("openssl genrsa (RSA keys for genCA/genSignedCert)", e))?;
    if !out.status.success() {
        return Err(err("openssl genrsa", String::from_utf8_lossy(&out.stderr)));
    }
    let pem = String::from_utf8(out.stdout).map_err(|e| err("openssl genrsa", e))?;
    let key = signing_key(&pem)?;
    Ok((pem, key))
}

/// A PEM private key as rcgen (on ring, PKCS#8 only) signs with. Go's `parsePrivateKeyPEM`
/// also reads SEC1 EC keys, which no template here passes.
fn signing_key(pem: &str) -> Result<KeyPair, FuncError> {
    let pkcs8 = match PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| err("key", e))? {
        PrivateKeyDer::Pkcs8(k) => k,
        PrivateKeyDer::Pkcs1(k) => PrivatePkcs8KeyDer::from(pkcs8_of_rsa(k.secret_pkcs1_der())),
        other => return Err(err("key", format!("{other:?}: not an RSA or PKCS#8 key"))),
    };
    KeyPair::try_from(&PrivateKeyDer::Pkcs8(pkcs8)).map_err(|e| err("key", e))
}

/// PKCS#8 `PrivateKeyInfo` around a PKCS#1 RSA key: version 0, rsaEncryption with NULL
/// parameters, the key as an OCTET STRING.
fn pkcs8_of_rsa(pkcs1: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = body.len().to_be_bytes();
        let skip = len.iter().take_while(|b| **b == 0).count();
        match body.len() {
            n @ 0..0x80 => out.push(n as u8),
            _ => {
                out.push(0x80 | (len.len() - skip) as u8);
                out.extend_from_slice(&len[skip..]);
            }
        }
        out.extend_from_slice(body);
        out
    }
    const VERSION_0: &[u8] = &[0x02, 0x01, 0x00];
    const RSA_ENCRYPTION: &[u8] =
        &[0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
    tlv(0x30, &[VERSION_0, RSA_ENCRYPTION, &tlv(0x04, pkcs1)].concat())
}
