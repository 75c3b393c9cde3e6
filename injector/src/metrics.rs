//! The injector's metrics, registered in the registry the server is given.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InjectionLabels {
    /// `injected`, `skipped`, `invalid`, `allowed` (not a pod being created), `rejected`
    /// (not a usable AdmissionReview), `error` (namespace unknown).
    pub outcome: &'static str,
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// `connections` (the connection cap), `overloaded` (no review slot), `deadline` (not
    /// answered within the request timeout).
    pub reason: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    pub injections: Family<InjectionLabels, Counter>,
    pub refused: Family<RefusedLabels, Counter>,
    /// TLS handshakes that failed or timed out: the usual symptom of a caBundle that does
    /// not match the serving certificate.
    pub tls_handshake_errors: Counter,
    /// `accept` failures (out of file descriptors and the like).
    pub accept_errors: Counter,
    pub request_duration: Histogram,
    pub certificate_reloads: Family<ReloadLabels, Counter>,
}

impl Metrics {
    /// `namespace_watch_errors` is the namespace cache's counter (`Namespaces::watch_errors`).
    pub fn register(registry: &mut Registry, namespace_watch_errors: Counter) -> Metrics {
        let registry = registry.sub_registry_with_prefix("weft_injector");
        registry.register(
            "namespace_watch_errors",
            "Namespace watch failures (retried with backoff; the cache keeps what it had)",
            namespace_watch_errors,
        );
        let tls_handshake_errors = Counter::default();
        registry.register(
            "tls_handshake_errors",
            "TLS handshakes that failed or timed out (a caBundle that does not match the serving certificate shows here)",
            tls_handshake_errors.clone(),
        );
        let accept_errors = Counter::default();
        registry.register(
            "accept_errors",
            "Failures to accept a webhook connection (out of file descriptors and the like)",
            accept_errors.clone(),
        );
        let injections = Family::<InjectionLabels, Counter>::default();
        registry.register(
            "injections",
            "Admission reviews answered, by outcome and reason (dry runs are not counted)",
            injections.clone(),
        );
        // 0.25 ms to ~4 s: the API server gives a webhook at most 10 s.
        let request_duration = Histogram::new([
            0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 4.0,
        ]);
        registry.register(
            "request_duration_seconds",
            "Time from a review's body read to its answer, namespace lookup included",
            request_duration.clone(),
        );
        let certificate_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Serving certificate changes seen on disk, by result (ok, rejected)",
            certificate_reloads.clone(),
        );
        let refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "requests_refused",
            "Webhook connections and requests refused at a limit, by reason (connections, overloaded, deadline)",
            refused.clone(),
        );
        for reason in ["connections", "overloaded", "deadline"] {
            let _ = refused.get_or_create(&RefusedLabels { reason });
        }
        Metrics {
            injections,
            refused,
            tls_handshake_errors,
            accept_errors,
            request_duration,
            certificate_reloads,
        }
    }

    pub fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&RefusedLabels { reason }).inc();
    }
}
