//! The certificate checks of `weft check`: the identity PKI (trust anchors and issuer, judged
//! by the same code `weft identity` loads them with) and the injector's webhook TLS (its
//! serving certificate verified with the registered caBundle for the Service's DNS name, as
//! the API server verifies it).

use std::time::{Duration, UNIX_EPOCH};

use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration},
    core::v1::{ConfigMap, Secret, Service},
};
use kube::Api;
use rustls::{
    client::danger::ServerCertVerifier as _,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use weft_identity::{
    TrustBundle,
    ca::{Issuer, IssuerError},
    pki::{self, CertSummary, format_time},
};
use weft_injector::spec::{TRUST_ROOTS_CONFIGMAP, TRUST_ROOTS_KEY};

use super::{Kube, Report, human};

/// Names of the chart's objects (charts/weft/templates: identity.yaml, injector.yaml,
/// injector-webhook.yaml).
const ISSUER_SECRET: &str = "weft-identity-issuer";
const INJECTOR_SERVICE: &str = "weft-injector";
const INJECTOR_TLS_SECRET: &str = "weft-injector-tls";
const WEBHOOK_CONFIG: &str = "weft-proxy-injector-webhook-config";
const WEBHOOK: &str = "weft-proxy-injector.weft.dev";
/// The port a webhook's service reference means when it names none.
const WEBHOOK_DEFAULT_PORT: i32 = 443;

const ROTATE_ISSUER: &str = "make a new issuer with the trust anchor (weft certs generate --anchor-cert ca.crt --anchor-key ca.key --out-dir new) and helm upgrade … --set-file identity.issuer.crtPEM=new/issuer.crt --set-file identity.issuer.keyPEM=new/issuer.key";
const ROTATE_ANCHOR: &str = "make a new trust anchor and issuer (weft certs generate) and roll them out: the new anchor joins identity.trustAnchorsPEM first, the issuer changes once every proxy has it, the old anchor goes last";
const RENEW_WEBHOOK_TLS: &str = "delete the Secret and helm upgrade (the chart generates a new certificate and registers its CA), or give injector.webhook.crtPEM, keyPEM and caBundlePEM together";

fn days(secs: i64) -> i64 {
    secs.max(0) / 86_400
}

/// A Secret's key as bytes, or why it cannot be had.
fn secret_key<'a>(secret: &'a Secret, object: &str, key: &str) -> Result<&'a [u8], String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
        .filter(|b| !b.is_empty())
        .ok_or_else(|| format!("{object} has no {key}"))
}

/// Trust anchors: the ConfigMap parses as PEM CA certificates, each within its validity,
/// and none expiring within the warning window. Returns the bundle when it is usable.
async fn trust_anchors(
    k: &Kube,
    r: &mut Report,
    now: i64,
    window: Duration,
) -> Option<TrustBundle> {
    const VALID: &str = "trust anchors are valid";
    const CURRENT: &str = "trust anchors are within their validity period";
    let soon = format!("trust anchors are valid for at least {}", human(window));
    let object = format!("configmap {}/{TRUST_ROOTS_CONFIGMAP}", k.ns);
    let set = "helm upgrade … --set-file identity.trustAnchorsPEM=ca.crt (the ca.crt of weft certs generate)";
    let api: Api<ConfigMap> = k.api();
    let pem = match k.get(&api, TRUST_ROOTS_CONFIGMAP).await {
        Ok(Some(cm)) => cm.data.and_then(|mut d| d.remove(TRUST_ROOTS_KEY)),
        Ok(None) => {
            r.fail(VALID, format!("{object} not found"), set);
            return None;
        }
        Err(e) => {
            r.fail(VALID, format!("cannot read {object}: {e}"), "check your access to it");
            return None;
        }
    };
    let Some(pem) = pem.filter(|p| !p.trim().is_empty()) else {
        r.fail(VALID, format!("{object} has no {TRUST_ROOTS_KEY}"), set);
        return None;
    };
    let bundle =
        match TrustBundle::from_pem(&format!("{object} ({TRUST_ROOTS_KEY})"), pem.as_bytes()) {
            Ok(b) => b,
            Err(e) => {
                r.fail(VALID, e, format!("it must hold PEM CA certificates: {set}"));
                return None;
            }
        };
    r.ok(VALID);

    let mut bad = Vec::new();
    let mut ending = Vec::new();
    for (i, der) in bundle.anchors().iter().enumerate() {
        let s = match CertSummary::parse(der) {
            Ok(s) => s,
            Err(e) => {
                bad.push(format!("anchor #{}: {e}", i + 1));
                continue;
            }
        };
        if s.not_after <= now {
            bad.push(format!("anchor {} expired at {}", s.subject, format_time(s.not_after)));
        } else if s.not_before > now {
            bad.push(format!(
                "anchor {} is not valid before {}",
                s.subject,
                format_time(s.not_before)
            ));
        } else if s.not_after - now < window.as_secs() as i64 {
            ending.push(format!(
                "anchor {} expires at {} (in {} days)",
                s.subject,
                format_time(s.not_after),
                days(s.not_after - now)
            ));
        }
    }
    if bad.is_empty() {
        r.ok(CURRENT);
    } else {
        r.fail(CURRENT, format!("{object}: {}", bad.join("; ")), ROTATE_ANCHOR);
    }
    if ending.is_empty() {
        r.ok(&soon);
    } else {
        r.warn(&soon, format!("{object}: {}", ending.join("; ")), ROTATE_ANCHOR);
    }
    Some(bundle)
}

/// The identity group: trust anchors, then the issuer as `weft identity` would load it.
pub(super) async fn identity(k: &Kube, r: &mut Report, now: i64, window: Duration) {
    const VALID: &str = "issuer certificate is valid";
    let soon = format!("issuer certificate is valid for at least {}", human(window));
    let bundle = trust_anchors(k, r, now, window).await;
    let object = format!("secret {}/{ISSUER_SECRET}", k.ns);
    let set = "helm upgrade … --set-file identity.issuer.crtPEM=issuer.crt --set-file identity.issuer.keyPEM=issuer.key (from weft certs generate)";
    let api: Api<Secret> = k.api();
    let secret = match k.get(&api, ISSUER_SECRET).await {
        Ok(Some(s)) => s,
        Ok(None) => return r.fail(VALID, format!("{object} not found"), set),
        Err(e) => {
            return r.fail(VALID, format!("cannot read {object}: {e}"), "check your access to it");
        }
    };
    let (crt, key) =
        match (secret_key(&secret, &object, "tls.crt"), secret_key(&secret, &object, "tls.key")) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => return r.fail(VALID, e, set),
        };
    let Some(bundle) = bundle else {
        return r.fail(
            VALID,
            format!(
                "not checked: the issuer must chain to the trust anchors in configmap {}/{TRUST_ROOTS_CONFIGMAP}, which are not usable",
                k.ns
            ),
            "fix the trust anchors first (above)",
        );
    };
    let at = UNIX_EPOCH + Duration::from_secs(now.max(0) as u64);
    let issuer = match Issuer::from_pem(crt, key, &bundle, at) {
        Ok(i) => i,
        Err(e) => {
            let (what, hint) = issuer_problem(&e, set);
            return r.fail(VALID, format!("{object}: {what}"), hint);
        }
    };
    r.ok(VALID);
    let left = issuer.not_after() - now;
    if left < window.as_secs() as i64 {
        r.warn(
            &soon,
            format!(
                "{object}: the issuer {} expires at {} (in {} days); proxies get no new certificates after that",
                issuer.subject(),
                format_time(issuer.not_after()),
                days(left)
            ),
            ROTATE_ISSUER,
        );
    } else {
        r.ok(&soon);
    }
}

/// What is wrong with an issuer `weft identity` would refuse, and what to do about it.
fn issuer_problem(e: &IssuerError, set: &str) -> (String, String) {
    match e {
        IssuerError::Pki(_) => (e.to_string(), format!("give a PEM certificate and key: {set}")),
        IssuerError::NotACa { .. } | IssuerError::NoCertSign { .. } => (
            e.to_string(),
            format!("the issuer must be an intermediate CA, as weft certs generate makes: {set}"),
        ),
        IssuerError::KeyMismatch { .. } => (
            e.to_string(),
            format!("give the certificate and key weft certs generate wrote together: {set}"),
        ),
        IssuerError::Expired { subject, not_after } => (
            format!(
                "the issuer certificate ({subject}) expired at {}; proxies cannot renew their certificates",
                format_time(*not_after)
            ),
            ROTATE_ISSUER.to_owned(),
        ),
        IssuerError::NotYetValid { subject, not_before } => (
            format!(
                "the issuer certificate ({subject}) is not valid before {}",
                format_time(*not_before)
            ),
            "check the clocks of this machine and the nodes, or wait".to_owned(),
        ),
        IssuerError::Unchained { .. } => (
            e.to_string(),
            format!(
                "proxies trust only the anchors of configmap {TRUST_ROOTS_CONFIGMAP}: sign the issuer with one of them (weft certs generate --anchor-cert ca.crt --anchor-key ca.key), or add its anchor to identity.trustAnchorsPEM"
            ),
        ),
    }
}

/// The webhook registration the chart makes, found by name.
async fn webhook(k: &Kube, r: &mut Report) -> Option<MutatingWebhook> {
    const REGISTERED: &str = "injector webhook is registered";
    let object = format!("mutatingwebhookconfiguration {WEBHOOK_CONFIG}");
    let api: Api<MutatingWebhookConfiguration> = Api::all(k.client.clone());
    let mwc = match k.get(&api, WEBHOOK_CONFIG).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            r.fail(
                REGISTERED,
                format!("{object} not found: the API server sends no pod to the injector, so none gets the proxy"),
                format!("the chart registers it: helm upgrade --install weft charts/weft -n {} …", k.ns),
            );
            return None;
        }
        Err(e) => {
            r.fail(REGISTERED, format!("cannot read {object}: {e}"), "check your access to it");
            return None;
        }
    };
    match mwc.webhooks.into_iter().flatten().find(|w| w.name == WEBHOOK) {
        Some(w) => {
            r.ok(REGISTERED);
            Some(w)
        }
        None => {
            r.fail(
                REGISTERED,
                format!("{object} has no webhook {WEBHOOK}"),
                format!("helm upgrade weft charts/weft -n {} … restores it", k.ns),
            );
            None
        }
    }
}

/// The webhook calls the injector's Service in the control-plane namespace, on a port the
/// Service has.
async fn webhook_service(k: &Kube, r: &mut Report, hook: &MutatingWebhook) {
    const SERVICE: &str = "webhook points at the injector Service";
    let fix = format!("helm upgrade weft charts/weft -n {} … re-registers it", k.ns);
    let Some(to) = hook.client_config.service.as_ref() else {
        let url = hook.client_config.url.as_deref().unwrap_or("nothing");
        return r.fail(
            SERVICE,
            format!("webhook {WEBHOOK} calls {url}, not service {}/{INJECTOR_SERVICE}", k.ns),
            fix,
        );
    };
    if to.name != INJECTOR_SERVICE || to.namespace != k.ns {
        return r.fail(
            SERVICE,
            format!(
                "webhook {WEBHOOK} calls service {}/{}, not {}/{INJECTOR_SERVICE}",
                to.namespace, to.name, k.ns
            ),
            format!(
                "another installation may own it (check it with --namespace {}); else {fix}",
                to.namespace
            ),
        );
    }
    let object = format!("service {}/{INJECTOR_SERVICE}", k.ns);
    let api: Api<Service> = k.api();
    let svc = match k.get(&api, INJECTOR_SERVICE).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return r.fail(
                SERVICE,
                format!("{object}, which webhook {WEBHOOK} calls, not found"),
                format!("helm upgrade weft charts/weft -n {} … creates it", k.ns),
            );
        }
        Err(e) => {
            return r.fail(
                SERVICE,
                format!("cannot read {object}: {e}"),
                "check your access to it",
            );
        }
    };
    let port = to.port.unwrap_or(WEBHOOK_DEFAULT_PORT);
    let ports = svc.spec.and_then(|s| s.ports).unwrap_or_default();
    if ports.iter().any(|p| p.port == port) {
        r.ok(SERVICE);
    } else {
        r.fail(
            SERVICE,
            format!("webhook {WEBHOOK} calls port {port}, which {object} does not have"),
            fix,
        );
    }
}

/// The injector group: the registration, its Service, the serving certificate, and that the
/// registered caBundle verifies it for the Service's DNS name.
pub(super) async fn injector(k: &Kube, r: &mut Report, now: i64, window: Duration) {
    const CERT: &str = "injector certificate is valid";
    const CA_BUNDLE: &str = "webhook caBundle verifies the injector certificate";
    let soon = format!("injector certificate is valid for at least {}", human(window));
    let hook = webhook(k, r).await;
    if let Some(hook) = &hook {
        webhook_service(k, r, hook).await;
    }

    // The name the API server calls the webhook by.
    let host = format!("{INJECTOR_SERVICE}.{}.svc", k.ns);
    let object = format!("secret {}/{INJECTOR_TLS_SECRET}", k.ns);
    let api: Api<Secret> = k.api();
    let secret = match k.get(&api, INJECTOR_TLS_SECRET).await {
        Ok(Some(s)) => s,
        Ok(None) => return r.fail(CERT, format!("{object} not found"), RENEW_WEBHOOK_TLS),
        Err(e) => {
            return r.fail(CERT, format!("cannot read {object}: {e}"), "check your access to it");
        }
    };
    let chain = match secret_key(&secret, &object, "tls.crt").and_then(|pem| {
        pki::parse_certs_pem(&format!("{object} tls.crt"), pem).map_err(|e| e.to_string())
    }) {
        Ok(c) => c,
        Err(e) => return r.fail(CERT, e, RENEW_WEBHOOK_TLS),
    };
    let leaf = match CertSummary::parse(&chain[0]) {
        Ok(s) => s,
        Err(e) => return r.fail(CERT, format!("{object} tls.crt: {e}"), RENEW_WEBHOOK_TLS),
    };
    let cert = format!("the certificate ({}) in {object}", leaf.subject);
    if leaf.not_after <= now {
        r.fail(
            CERT,
            format!("{cert} expired at {}", format_time(leaf.not_after)),
            RENEW_WEBHOOK_TLS,
        );
    } else if leaf.not_before > now {
        r.fail(
            CERT,
            format!("{cert} is not valid before {}", format_time(leaf.not_before)),
            RENEW_WEBHOOK_TLS,
        );
    } else if !leaf.dns_names.iter().any(|n| n.eq_ignore_ascii_case(&host)) {
        r.fail(
            CERT,
            format!(
                "{cert} is for [{}], not {host}, the name the API server calls",
                leaf.dns_names.join(", ")
            ),
            RENEW_WEBHOOK_TLS,
        );
    } else {
        r.ok(CERT);
        if leaf.not_after - now < window.as_secs() as i64 {
            r.warn(
                &soon,
                format!(
                    "{cert} expires at {} (in {} days)",
                    format_time(leaf.not_after),
                    days(leaf.not_after - now)
                ),
                RENEW_WEBHOOK_TLS,
            );
        } else {
            r.ok(&soon);
        }
    }

    let Some(hook) = hook else { return };
    ca_bundle(r, &hook, &chain, &host, &object, now, CA_BUNDLE);
}

/// Verifies the serving chain with the registered caBundle, for `host`, at `now`: what the
/// API server does before it sends a pod.
fn ca_bundle(
    r: &mut Report,
    hook: &MutatingWebhook,
    chain: &[CertificateDer<'static>],
    host: &str,
    secret: &str,
    now: i64,
    check: &str,
) {
    let registered = format!(
        "the caBundle of mutatingwebhookconfiguration {WEBHOOK_CONFIG} (webhook {WEBHOOK})"
    );
    let Some(pem) = hook.client_config.ca_bundle.as_ref().filter(|b| !b.0.is_empty()) else {
        return r.fail(
            check,
            format!("{registered} is empty: the API server cannot verify the injector"),
            RENEW_WEBHOOK_TLS,
        );
    };
    let verified = TrustBundle::from_pem(&registered, &pem.0)
        .map_err(|e| e.to_string())
        .and_then(|b| b.server_verifier().map_err(|e| e.to_string()))
        .and_then(|v| {
            let name = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
            let at = UnixTime::since_unix_epoch(Duration::from_secs(now.max(0) as u64));
            v.verify_server_cert(&chain[0], &chain[1..], &name, &[], at).map_err(|e| {
                format!("{registered} does not verify the certificate in {secret} for {host}: {e}")
            })
        });
    // What the API server does when it cannot call the webhook (the chart's default: Ignore).
    let consequence = match hook.failure_policy.as_deref() {
        Some("Fail") => "so it refuses to create pods",
        _ => "so pods start without the proxy",
    };
    match verified {
        Ok(_) => r.ok(check),
        Err(e) => r.fail(
            check,
            format!("{e}; the API server cannot call the injector, {consequence}"),
            format!("register the CA that signed the Secret's certificate: {RENEW_WEBHOOK_TLS}"),
        ),
    }
}
