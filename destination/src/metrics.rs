//! The destination service's metric families, registered on the registry passed in.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateLabels {
    pub rpc: &'static str,
    pub update: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub rpc: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    pub kind: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// Why a connection was refused (`weft_identity::incoming::Refused`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientIdLabels {
    /// The identity the client's certificate proves; empty without a certificate.
    pub client_id: String,
}

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Open `Get` / `GetProfile` / `WatchPort` streams.
    pub subscribers: Family<RpcLabels, Gauge>,
    /// Messages sent on those streams, by kind (`add`, `remove`, `no_endpoints`, `profile`,
    /// `server`).
    pub updates: Family<UpdateLabels, Counter>,
    /// Lookups by what they resolved to (`service`, `pod`, `not_found`, `invalid`; for
    /// `get_port` / `watch_port`: `server`, `default`, `not_found`, `invalid`).
    pub lookups: Family<LookupLabels, Counter>,
    /// Objects, or parts of them, not used (bad IPs, missing names, invalid annotations).
    pub skipped: Family<SkipLabels, Counter>,
    /// Kubernetes watch errors (each is retried with backoff).
    pub watch_errors: Family<KindLabels, Counter>,
    /// Static file loads, `ok` or `error`.
    pub static_loads: Family<ResultLabels, Counter>,
    /// TLS connections accepted (with TLS on), by the client's identity.
    pub tls_connections: Family<ClientIdLabels, Counter>,
    /// TLS handshakes that failed (with TLS on): plaintext clients, untrusted certificates.
    pub tls_handshake_errors: Counter,
    /// Inbound policy computations in which more than one Server selected a pod port (the
    /// oldest won).
    pub server_conflicts: Counter,
    /// Route status writes (`/status` patches), by result: `ok`, `conflict` (the route
    /// changed meanwhile), `not_found` (it went away), `error`.
    pub status_patches: Family<ResultLabels, Counter>,
    /// 1 while this replica holds the route status lease (and so writes statuses).
    pub status_leader: Gauge,
    /// Lease requests that failed (`conflict`: another replica wrote it first; `error`).
    pub status_lease_errors: Family<ResultLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("destination");
        r.register(
            "subscribers",
            "Open Get, GetProfile and WatchPort streams",
            m.subscribers.clone(),
        );
        r.register(
            "updates",
            "Messages sent on Get, GetProfile and WatchPort streams",
            m.updates.clone(),
        );
        r.register("lookups", "Lookups by what they resolved to", m.lookups.clone());
        r.register(
            "objects_skipped",
            "Objects or parts of objects not used, by reason",
            m.skipped.clone(),
        );
        r.register(
            "watch_errors",
            "Kubernetes watch errors (retried with backoff)",
            m.watch_errors.clone(),
        );
        r.register("static_loads", "Static file loads by result", m.static_loads.clone());
        r.register(
            "tls_connections",
            "TLS connections accepted, by the identity the client's certificate proves (empty: none)",
            m.tls_connections.clone(),
        );
        r.register(
            "tls_handshake_errors",
            "TLS handshakes that failed (plaintext clients, certificates from other anchors)",
            m.tls_handshake_errors.clone(),
        );
        r.register(
            "policy_server_conflicts",
            "Inbound policy computations in which more than one Server selected a pod port (the oldest won)",
            m.server_conflicts.clone(),
        );
        r.register(
            "route_status_patches",
            "Route status writes by result (ok, conflict, not_found, error)",
            m.status_patches.clone(),
        );
        r.register(
            "route_status_leader",
            "Whether this replica holds the route status lease and writes route statuses (1) or not (0)",
            m.status_leader.clone(),
        );
        r.register(
            "route_status_lease_errors",
            "Route status lease requests that failed, by result (conflict, error)",
            m.status_lease_errors.clone(),
        );
        m
    }

    pub fn skip(&self, problem: &crate::model::Problem) {
        tracing::warn!(%problem, "skipped");
        self.skipped
            .get_or_create(&SkipLabels { kind: problem.kind, reason: problem.reason })
            .inc();
    }
}
