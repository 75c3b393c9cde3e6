//! The injector's TLS in the chart. Without `injector.webhook.*PEM` (DESIGN.md's install
//! command gives only the identity PKI) the chart generates a CA and a serving certificate
//! with Helm's `genCA`/`genSignedCert`, once per render, into both the Secret the injector
//! mounts and the webhook's caBundle; an upgrade finds the Secret (`lookup`) and keeps them;
//! given values win and are used byte for byte, all three or none. And the renderer's
//! `genCA`/`genSignedCert` make the certificates sprig's do.

use std::{path::Path, process::Command};

use gtmpl::Value as Tmpl;
use k8s_openapi::api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret};
use serde_json::{Value, json};
use x509_parser::{
    certificate::X509Certificate,
    extensions::{GeneralName, ParsedExtension},
};

use super::{
    Dir, NS, Objects, certs, chart, pki, read, release, render::Rendered, required_values, with,
};
use crate::support::run;

/// The injector's TLS as the chart rendered it: the Secret's files (PEM) and where they
/// came from (its `weft.dev/webhook-tls` annotation).
pub(super) struct Tls {
    pub(super) crt: String,
    pub(super) key: String,
    pub(super) ca: String,
    pub(super) source: String,
}

/// The Secret the injector mounts; the webhook is registered with the same CA.
pub(super) fn secret(objects: &Objects) -> Tls {
    let secret: Secret = objects.get("Secret", "weft-injector-tls");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let data = secret.data.unwrap_or_default();
    let file = |k: &str| {
        let bytes = data.get(k).unwrap_or_else(|| panic!("weft-injector-tls has no {k}"));
        String::from_utf8(bytes.0.clone()).expect("PEM text")
    };
    let annotations = secret.metadata.annotations.unwrap_or_default();
    let tls = Tls {
        crt: file("tls.crt"),
        key: file("tls.key"),
        ca: file("ca.crt"),
        source: annotations.get("weft.dev/webhook-tls").cloned().unwrap_or_default(),
    };
    let mwc: MutatingWebhookConfiguration =
        objects.get("MutatingWebhookConfiguration", "weft-proxy-injector-webhook-config");
    let hook = &mwc.webhooks.as_ref().expect("webhooks")[0];
    let ca_bundle = hook.client_config.ca_bundle.as_ref().expect("a caBundle");
    assert_eq!(ca_bundle.0, tls.ca.as_bytes(), "the caBundle is the Secret's ca.crt");
    tls
}

fn pem_der(pem: &str) -> Vec<u8> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("a PEM block");
    p.contents
}

fn dns_names(c: &X509Certificate<'_>) -> Vec<String> {
    let san = c.subject_alternative_name().expect("one SAN extension");
    let names = san.map(|s| s.value.general_names.clone()).unwrap_or_default();
    names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => (*d).to_owned(),
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect()
}

fn validity_days(c: &X509Certificate<'_>) -> i64 {
    let v = c.validity();
    (v.not_after.timestamp() - v.not_before.timestamp()) / 86_400
}

/// The Secret holds a pair the chart generated for this namespace: a 10-year CA, and a
/// certificate it signed for the injector Service's DNS names, with an RSA key as Helm
/// writes it.
pub(super) fn generated(objects: &Objects) -> Tls {
    let tls = secret(objects);
    assert_eq!(tls.source, "generated");
    let (ca_der, crt_der) = (pem_der(&tls.ca), pem_der(&tls.crt));
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("ca.crt");
    let (_, crt) = x509_parser::parse_x509_certificate(&crt_der).expect("tls.crt");
    assert!(ca.is_ca(), "ca.crt is a CA");
    assert_eq!(ca.subject().to_string(), format!("CN=weft-injector-ca.{NS}"));
    assert_eq!(validity_days(&ca), 3650, "the CA is valid 10 years");
    ca.verify_signature(None).expect("the CA is self-signed");
    assert!(!crt.is_ca());
    crt.verify_signature(Some(ca.public_key())).expect("tls.crt is signed by ca.crt");
    assert_eq!(crt.subject().to_string(), format!("CN=weft-injector.{NS}.svc"));
    assert_eq!(
        dns_names(&crt),
        [
            "weft-injector".to_owned(),
            format!("weft-injector.{NS}"),
            format!("weft-injector.{NS}.svc"),
            format!("weft-injector.{NS}.svc.cluster.local"),
        ],
        "the names the API server and in-cluster clients call the injector by"
    );
    assert_eq!(validity_days(&crt), 3650);
    assert!(tls.key.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"), "{}", tls.key);
    tls
}

/// The chart README's openssl recipe, for users who manage their own webhook certificate.
struct Given {
    ca: String,
    crt: String,
    key: String,
}

fn given(dir: &Path) -> Given {
    let openssl = |args: &[&str]| {
        let (ok, _, err) = run(Command::new("openssl").args(args).current_dir(dir));
        assert!(
            ok,
            "openssl {args:?} (the chart README's commands; .ci/run installs openssl): {err}"
        );
    };
    let host = format!("weft-injector.{NS}.svc");
    let subj = format!("/CN={host}");
    let ec = "ec_paramgen_curve:prime256v1";
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        ec,
        "-nodes",
        "-days",
        "365",
        "-subj",
        "/CN=weft-injector-ca",
        "-keyout",
        "webhook-ca.key",
        "-out",
        "webhook-ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        ec,
        "-nodes",
        "-subj",
        &subj,
        "-keyout",
        "webhook.key",
        "-out",
        "webhook.csr",
    ]);
    let ext = format!(
        "subjectAltName=DNS:{host}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
    );
    std::fs::write(dir.join("webhook.ext"), ext).expect("write webhook.ext");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "webhook.csr",
        "-CA",
        "webhook-ca.crt",
        "-CAkey",
        "webhook-ca.key",
        "-CAcreateserial",
        "-days",
        "365",
        "-extfile",
        "webhook.ext",
        "-out",
        "webhook.crt",
    ]);
    Given {
        ca: read(&dir.join("webhook-ca.crt")),
        crt: read(&dir.join("webhook.crt")),
        key: read(&dir.join("webhook.key")),
    }
}

fn secret_doc(rendered: &Rendered) -> Value {
    let mut docs = rendered.documents().into_iter().map(|(_, d)| d);
    docs.find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "weft-injector-tls")
        .expect("the Secret weft-injector-tls")
}

#[test]
fn chart_webhook_tls_given_values_are_used_verbatim() {
    let dir = Dir::new("webhook-given");
    let pki = pki(&dir.0);
    let mine = given(&dir.0);
    let webhook = |crt: &str, key: &str, ca: &str| json!({"injector": {"webhook": {"crtPEM": crt, "keyPEM": key, "caBundlePEM": ca}}});
    let values = with(required_values(&pki), webhook(&mine.crt, &mine.key, &mine.ca));
    let rendered = chart().render(&release(), &values).expect("renders");
    let tls = secret(&Objects::new(&rendered));
    assert!(!rendered.notes.contains("generated"), "{}", rendered.notes);
    assert_eq!(tls.source, "values");
    assert_eq!((tls.crt, tls.key, tls.ca), (mine.crt.clone(), mine.key.clone(), mine.ca.clone()));
    // Given values win over a pair the chart generated before.
    let generated = chart().render(&release(), &required_values(&pki)).expect("renders");
    let upgrade = chart().render_in(&release(), &values, &[secret_doc(&generated)]);
    let tls = secret(&Objects::new(&upgrade.expect("renders")));
    assert_eq!((tls.crt, tls.source), (mine.crt.clone(), "values".to_owned()));

    // All three or none: a certificate without its key or CA cannot work.
    for (missing, values) in [
        ("crtPEM", webhook("", &mine.key, &mine.ca)),
        ("keyPEM", webhook(&mine.crt, "", &mine.ca)),
        ("caBundlePEM", webhook(&mine.crt, &mine.key, "")),
        ("keyPEM", webhook(&mine.crt, "", "")),
    ] {
        let e = chart().render(&release(), &with(required_values(&pki), values)).err();
        let e = e.unwrap_or_else(|| panic!("renders without injector.webhook.{missing}"));
        assert!(e.contains(&format!("injector.webhook.{missing} is required")), "{e}");
        assert!(e.contains("give all three, or none"), "says what to do: {e}");
    }
}

#[test]
fn chart_webhook_tls_generated_once_per_render_and_kept_by_upgrades() {
    let dir = Dir::new("webhook-generated");
    let pki = pki(&dir.0);
    let values = required_values(&pki);
    let install = chart().render(&release(), &values).expect("renders");
    let first = generated(&Objects::new(&install));
    assert!(
        install.notes.contains("generated by the chart") && install.notes.contains("README"),
        "the notes say where the certificate came from and how to give one:\n{}",
        install.notes
    );
    // Where nothing is found (`helm template`, a first install), every render generates.
    let again = generated(&Objects::new(&chart().render(&release(), &values).expect("renders")));
    assert_ne!(first.ca, again.ca, "a new CA per render when the cluster has none");

    // An upgrade finds the Secret the install created and keeps the CA the API server
    // trusts and the certificate the injector serves.
    let mut stored = secret_doc(&install);
    stored["metadata"]["resourceVersion"] = json!("4711");
    stored["metadata"]["uid"] = json!("9f3c1c2e-4c1b-4b7e-9d1e-0c8a3c7e2f10");
    let upgrade = chart().render_in(&release(), &values, std::slice::from_ref(&stored));
    let kept = generated(&Objects::new(&upgrade.expect("renders")));
    assert_eq!((kept.crt, kept.key, kept.ca), (first.crt, first.key, first.ca.clone()));

    // Not one the chart generated (given values before, or someone else's): replaced.
    let mut foreign = stored.clone();
    foreign["metadata"]["annotations"]["weft.dev/webhook-tls"] = json!("values");
    let upgrade = chart().render_in(&release(), &values, &[foreign]);
    assert_ne!(generated(&Objects::new(&upgrade.expect("renders"))).ca, first.ca);
    // Another release namespace's Secret is not this one's.
    let mut elsewhere = stored;
    elsewhere["metadata"]["namespace"] = json!("other");
    let upgrade = chart().render_in(&release(), &values, &[elsewhere]);
    assert_ne!(generated(&Objects::new(&upgrade.expect("renders"))).ca, first.ca);
}

/// The renderer's `genCA`/`genSignedCert`, read back as sprig's Go code builds them.
#[test]
fn chart_renderer_gen_ca_and_signed_cert_are_sprigs() {
    let field = |v: &Tmpl, f: &str| match v {
        Tmpl::Object(o) => match &o[f] {
            Tmpl::String(s) => s.clone(),
            other => panic!("{f}: {other}"),
        },
        other => panic!("not a certificate struct: {other}"),
    };
    let ca = certs::gen_ca(&["my-ca".into(), 365.into()]).expect("genCA");
    let list = |v: &[&str]| Tmpl::Array(v.iter().map(|s| (*s).into()).collect());
    let leaf = certs::gen_signed_cert(&[
        "my-host".into(),
        list(&["10.0.0.1"]),
        list(&["a.example", "b.example"]),
        30.into(),
        ca.clone(),
    ])
    .expect("genSignedCert");
    for key in [field(&ca, "Key"), field(&leaf, "Key")] {
        assert!(key.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"), "PKCS#1, as Go: {key}");
    }
    let ca_der = pem_der(&field(&ca, "Cert"));
    let leaf_der = pem_der(&field(&leaf, "Cert"));
    let (_, ca_x) = x509_parser::parse_x509_certificate(&ca_der).expect("CA");
    let (_, leaf_x) = x509_parser::parse_x509_certificate(&leaf_der).expect("leaf");
    for (c, cn, days) in [(&ca_x, "CN=my-ca", 365), (&leaf_x, "CN=my-host", 30)] {
        assert_eq!(c.version().0, 2, "v3");
        assert_eq!(c.subject().to_string(), cn);
        assert_eq!(validity_days(c), days);
        assert!(c.serial.bits() <= 128, "a serial below 2^128");
        assert_eq!(c.signature_algorithm.algorithm.to_id_string(), "1.2.840.113549.1.1.11");
        let rsa = match c.public_key().parsed().expect("key") {
            x509_parser::public_key::PublicKey::RSA(rsa) => rsa.key_size(),
            other => panic!("{other:?}"),
        };
        assert_eq!(rsa, 2048);
        let eku = c.extended_key_usage().expect("eku").expect("an EKU").value;
        assert!(eku.server_auth && eku.client_auth, "getBaseCertTemplate's EKU, the CA's too");
        let ku = c.key_usage().expect("ku").expect("a key usage");
        assert!(ku.critical);
        assert!(ku.value.digital_signature() && ku.value.key_encipherment());
        let bc = c.basic_constraints().expect("bc").expect("basic constraints");
        assert!(bc.critical);
        assert_eq!(bc.value.path_len_constraint, None);
    }
    assert_eq!(leaf_x.issuer(), ca_x.subject());
    leaf_x.verify_signature(Some(ca_x.public_key())).expect("signed by the CA");
    assert!(ca_x.key_usage().ok().flatten().expect("ku").value.key_cert_sign());
    assert!(!leaf_x.key_usage().ok().flatten().expect("ku").value.key_cert_sign());
    assert!(ca_x.is_ca() && !leaf_x.is_ca());
    assert!(ca_x.subject_alternative_name().expect("san").is_none(), "Go adds no SAN");
    let sans = leaf_x.subject_alternative_name().expect("san").expect("SANs").value;
    assert_eq!(
        format!("{:?}", sans.general_names),
        r#"[DNSName("a.example"), DNSName("b.example"), IPAddress([10, 0, 0, 1])]"#
    );
    let ext = |c: &X509Certificate<'_>| -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let mut ids = (None, None);
        for e in c.extensions() {
            match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(k) => ids.0 = Some(k.0.to_vec()),
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    ids.1 = a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => {}
            }
        }
        ids
    };
    let (ca_ski, ca_aki) = ext(&ca_x);
    let (leaf_ski, leaf_aki) = ext(&leaf_x);
    assert!(ca_ski.is_some() && ca_aki.is_none(), "Go: a CA gets a subject key id");
    assert!(leaf_ski.is_none(), "Go: no subject key id on a leaf");
    assert_eq!(leaf_aki, ca_ski, "the authority key id is the CA's subject key id");
    // Two calls, two keys.
    let other = certs::gen_ca(&["my-ca".into(), 365.into()]).expect("genCA");
    assert_ne!(field(&other, "Key"), field(&ca, "Key"));

    // Go's types: the CA is the certificate struct, not any map with Cert and Key.
    let map = Tmpl::Map(
        [
            ("Cert".to_owned(), field(&ca, "Cert").into()),
            ("Key".to_owned(), field(&ca, "Key").into()),
        ]
        .into(),
    );
    let args = ["h".into(), list(&[]), list(&[]), 1.into(), map];
    assert!(certs::gen_signed_cert(&args).is_err(), "a map is not a certificate");
    assert!(certs::gen_ca(&["c".into(), "365".into()]).is_err(), "days is an int");
    let bad_ip = ["h".into(), list(&["nope"]), list(&[]), 1.into(), ca.clone()];
    assert!(certs::gen_signed_cert(&bad_ip).is_err(), "error parsing ip");
}
