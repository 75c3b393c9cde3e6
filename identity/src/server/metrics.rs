//! The identity service's metrics: certificates issued, refusals by reason, the issuer's
//! expiry and its reloads.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{ca::Refusal, incoming::Refused};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Default)]
pub struct CaMetrics {
    pub issued: Counter,
    pub refusals: Family<ReasonLabels, Counter>,
    pub issuer_expiry: Gauge,
    pub reloads: Family<ResultLabels, Counter>,
    /// Connections closed unserved, by reason (`incoming::Refused`): a cap reached, a
    /// deadline missed, not an HTTP/2 client.
    pub connections_refused: Family<ReasonLabels, Counter>,
    /// TLS handshakes that failed: plaintext clients, clients that do not trust the anchors.
    pub tls_handshake_errors: Counter,
    /// `accept` failures (out of file descriptors and the like).
    pub accept_errors: Counter,
    /// Failures to renew the service's own serving certificate (the old one is kept).
    pub own_certificate_renewal_errors: Counter,
    /// Static token file reloads, by result (a failed reload keeps the old tokens).
    pub static_token_reloads: Family<ResultLabels, Counter>,
}

impl CaMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "identity_certificates_issued",
            "Leaf certificates issued",
            m.issued.clone(),
        );
        registry.register(
            "identity_certificate_refusals",
            "Certify requests refused, by reason",
            m.refusals.clone(),
        );
        registry.register(
            "identity_issuer_expiry_timestamp_seconds",
            "When the current issuer certificate expires (Unix seconds)",
            m.issuer_expiry.clone(),
        );
        registry.register(
            "identity_issuer_reloads",
            "Issuer and trust bundle reloads, by result (a failed reload keeps the old issuer)",
            m.reloads.clone(),
        );
        registry.register(
            "identity_connections_refused",
            "Connections closed unserved, by reason: a cap reached (max_connections, \
             max_client_connections, max_handshakes, max_client_handshakes), a deadline missed \
             (client_hello_timeout, preface_timeout), or not an HTTP/2 client (not_http2)",
            m.connections_refused.clone(),
        );
        registry.register(
            "identity_tls_handshake_errors",
            "TLS handshakes that failed (plaintext clients, clients that do not trust the anchors)",
            m.tls_handshake_errors.clone(),
        );
        registry.register(
            "identity_accept_errors",
            "Failures to accept a connection (out of file descriptors and the like)",
            m.accept_errors.clone(),
        );
        registry.register(
            "identity_own_certificate_renewal_errors",
            "Failures to renew the service's own serving certificate (the current one is kept)",
            m.own_certificate_renewal_errors.clone(),
        );
        registry.register(
            "identity_static_token_reloads",
            "Static token file reloads, by result (a failed reload keeps the previous tokens)",
            m.static_token_reloads.clone(),
        );
        // Every series exists from the start, so that rate() and alerts see zeros.
        for reason in Refusal::REASONS {
            let _ = m.refusals.get_or_create(&ReasonLabels { reason });
        }
        for r in Refused::ALL {
            let _ = m.connections_refused.get_or_create(&ReasonLabels { reason: r.reason() });
        }
        for result in ["ok", "error"] {
            let _ = m.reloads.get_or_create(&ResultLabels { result });
            let _ = m.static_token_reloads.get_or_create(&ResultLabels { result });
        }
        m
    }

    pub fn refused(&self, r: &Refusal) {
        self.refusals.get_or_create(&ReasonLabels { reason: r.reason() }).inc();
    }

    pub fn connection_refused(&self, r: Refused) {
        self.connections_refused.get_or_create(&ReasonLabels { reason: r.reason() }).inc();
    }

    pub fn static_token_reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.static_token_reloads.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }
}
