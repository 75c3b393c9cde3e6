//! Inbound authorization by the default policy, as Linkerd's `default-inbound-policy`: who
//! may reach the app behind this proxy — any client, meshed (mTLS) clients only, clients
//! from the cluster's networks, or nobody. The pod's kubelet probes (`GET` on the paths the
//! injector lists, and the gRPC health check on the ports of gRPC probes) are allowed from
//! anywhere, so a locked-down pod still becomes ready.
//!
//! The decision is made once per connection (the client's address and identity cannot
//! change on it). HTTP is then enforced per request, so a denied client gets a 403 (gRPC:
//! `grpc-status: 7`) that says why, and probes still pass; other protocols are refused by
//! closing the connection. Every decision is counted with Linkerd's metric names
//! (`inbound_{http,tcp}_authz_{allow,deny}_total`, `srv_kind="default"`).

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

pub mod discover;
pub mod filter;
pub mod rate_limit;
pub mod server;

use self::{
    discover::PortPolicy,
    server::{Authz, Route, ServerPolicy},
};
use crate::{init::Subnets, metrics::TlsLabels};

pub use weft_identity::policy::{DEFAULT_CLUSTER_NETWORKS, DefaultPolicy};

/// The pod's HTTP probes (`PORT:PATH,...`): `GET` requests on them are always allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeRoutes(BTreeSet<(u16, String)>);

impl ProbeRoutes {
    pub fn contains(&self, port: u16, path: &str) -> bool {
        // No allocation per request: the set is small and ordered by port.
        self.0
            .range((port, String::new())..)
            .take_while(|(p, _)| *p == port)
            .any(|(_, r)| r == path)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromStr for ProbeRoutes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut routes = BTreeSet::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = |why: &str| {
                format!("probe route {item:?} {why}; expected PORT:PATH, e.g. 8080:/healthz")
            };
            let (port, path) = item.split_once(':').ok_or_else(|| bad("has no port"))?;
            let port: u16 =
                port.parse().ok().filter(|p| *p != 0).ok_or_else(|| bad("has a bad port"))?;
            if !path.starts_with('/')
                || path.contains(['?', '#'])
                || path.contains(char::is_whitespace)
            {
                return Err(bad("has a bad path (it must start with / and carry no query)"));
            }
            routes.insert((port, path.to_string()));
        }
        Ok(ProbeRoutes(routes))
    }
}

impl fmt::Display for ProbeRoutes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (port, path)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{port}:{path}")?;
        }
        Ok(())
    }
}

/// What the kubelet may always send: `GET` on the probe routes, and the gRPC health check
/// on the ports of gRPC probes.
#[derive(Debug, Clone, Default)]
pub struct Probes {
    pub routes: ProbeRoutes,
    pub grpc_ports: crate::config::PortSet,
}

/// The path of the kubelet's gRPC probes (the standard health-checking service).
pub const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

/// The inbound side's authorization: the policies of the ports the control plane
/// describes, the default policy for the others, the probes, and the decision counters.
#[derive(Debug)]
pub struct Policy {
    pub default: DefaultPolicy,
    default_server: Arc<ServerPolicy>,
    /// Stands in for a watched port's policy until the control plane first answers:
    /// nobody is authorized but the kubelet's probes (fail closed).
    unavailable: Arc<ServerPolicy>,
    probes: Probes,
    /// The ports whose policies the control plane sends.
    ports: HashMap<u16, PortPolicy>,
    /// How long a connection to a watched port waits for its first policy.
    first_update_timeout: Duration,
    metrics: AuthzMetrics,
    /// Refusals are logged at info at most once a second, the others at debug: a client
    /// that is refused in a loop must not flood the logs (the counters keep every one).
    loud: crate::logging::Loud,
}

/// One connection's authorization. HTTP requests are decided one by one against the
/// port's latest policy, so a policy change applies to open connections too.
#[derive(Debug)]
pub struct ConnAuthz {
    policy: Arc<Policy>,
    /// The port's watched policy; `None`: the default policy.
    port: Option<PortPolicy>,
    client: IpAddr,
    target: SocketAddr,
    /// The `target_addr` label (capped).
    target_addr: String,
    tls: TlsLabels,
    /// The counter of the last allowed request's route and authorization: most
    /// connections take one route, and then count with no lookup.
    last_allow: Mutex<Option<AllowCache>>,
}

#[derive(Debug)]
struct AllowCache {
    /// Held so that the route and authorization addresses below stay its own.
    server: Arc<ServerPolicy>,
    /// Addresses of the route and authorization within `server`: compared, never followed.
    route: usize,
    authz: usize,
    counter: Counter,
}

/// The error a forwarded connection ends with when the policy revokes its client.
pub fn revoked_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "the inbound policy no longer authorizes the client",
    )
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No authorization of its route lets the client in (403).
    Unauthorized,
    /// The port's policy has routes and none matches the request (404).
    NoRoute,
    /// Authorized, but past the server's rate limit (429).
    RateLimited,
}

/// The filters of the rule an admitted request matched, to apply before it is forwarded.
#[derive(Debug, Clone)]
pub struct Filtering {
    pub filters: Arc<filter::Filters>,
    /// How much of the path the rule's prefix match matched (`None`: not a prefix match).
    pub prefix_len: Option<usize>,
}

impl Filtering {
    pub fn apply<B>(&self, req: &mut http::Request<B>) -> Result<(), filter::Answer> {
        self.filters.apply(req, self.prefix_len)
    }
}

impl Refusal {
    /// The `error` label of the refused request.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::NoRoute => "no_route",
            Refusal::RateLimited => "rate_limited",
        }
    }

    /// The gRPC status a gRPC client gets.
    pub fn grpc_status(self) -> u32 {
        match self {
            Refusal::Unauthorized => 7,
            Refusal::NoRoute => 12,
            Refusal::RateLimited => 8,
        }
    }

    pub fn status(self) -> http::StatusCode {
        match self {
            Refusal::Unauthorized => http::StatusCode::FORBIDDEN,
            Refusal::NoRoute => http::StatusCode::NOT_FOUND,
            Refusal::RateLimited => http::StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// What the client is told (body and `l5d-proxy-error`).
    pub fn why(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized: the inbound policy does not allow this client",
            Refusal::NoRoute => "no route: the inbound policy has no route for this request",
            Refusal::RateLimited => "rate limited: the server's local rate limit is exhausted",
        }
    }
}

impl Policy {
    pub fn new(
        default: DefaultPolicy,
        cluster_networks: Subnets,
        probes: Probes,
        metrics: AuthzMetrics,
    ) -> Self {
        let deny = ServerPolicy::from_default(DefaultPolicy::Deny, &cluster_networks);
        Policy {
            default,
            default_server: Arc::new(ServerPolicy::from_default(default, &cluster_networks)),
            unavailable: Arc::new(deny.renamed("unavailable")),
            probes,
            ports: HashMap::new(),
            first_update_timeout: Duration::ZERO,
            metrics,
            loud: crate::logging::Loud::new(),
        }
    }

    /// Takes the policies of `ports` from the control plane (`discover::start`); a
    /// connection to one of them waits up to `first_update_timeout` for its first.
    pub fn with_discovered(
        mut self,
        ports: HashMap<u16, PortPolicy>,
        first_update_timeout: Duration,
    ) -> Self {
        self.ports = ports;
        self.first_update_timeout = first_update_timeout;
        self
    }

    /// Whether this refusal may be logged at info: the first in a second is.
    fn take_loud(&self) -> bool {
        self.loud.take().is_some()
    }

    /// The policy of `port` as it is now (a watched port's, or the default).
    pub fn current(&self, port: u16) -> Arc<ServerPolicy> {
        self.resolve(self.ports.get(&port))
    }

    /// A watched port's latest policy (the stand-in until the first), or the default.
    fn resolve(&self, port: Option<&PortPolicy>) -> Arc<ServerPolicy> {
        match port {
            None => self.default_server.clone(),
            Some(rx) => rx.borrow().clone().unwrap_or_else(|| self.unavailable.clone()),
        }
    }

    /// Decides for a connection from `ip` to `target` (`target_addr`: its metric label);
    /// `tls`: the connection's TLS labels, with the client's proven identity if any. A
    /// watched port's first policy is waited for (bounded).
    pub async fn authorize(
        self: &Arc<Self>,
        ip: IpAddr,
        target: SocketAddr,
        target_addr: String,
        tls: TlsLabels,
    ) -> ConnAuthz {
        let port = self.ports.get(&target.port()).cloned();
        if let Some(rx) = &port
            && rx.borrow().is_none()
        {
            let mut rx = rx.clone();
            let known =
                tokio::time::timeout(self.first_update_timeout, rx.wait_for(Option::is_some));
            if !matches!(known.await, Ok(Ok(_))) && self.take_loud() {
                tracing::warn!(
                    port = target.port(),
                    "no inbound policy from the control plane yet: the port refuses clients (probes excepted)"
                );
            }
        }
        if port.is_none() && self.default == DefaultPolicy::Audit {
            let client_id = tls.client_id.as_deref().unwrap_or("");
            tracing::info!(%ip, client.id = client_id, authz.name = "audit", "connection allowed by the audit policy");
        }
        ConnAuthz {
            policy: self.clone(),
            port,
            client: ip,
            target,
            target_addr,
            tls,
            last_allow: Mutex::new(None),
        }
    }

    /// Whether a request is one of the pod's probes on `port`.
    pub fn is_probe(&self, port: u16, method: &http::Method, path: &str) -> bool {
        match *method {
            http::Method::GET => self.probes.routes.contains(port, path),
            http::Method::POST => {
                path == GRPC_HEALTH_CHECK && self.probes.grpc_ports.contains(port)
            }
            _ => false,
        }
    }
}

impl ConnAuthz {
    fn server(&self) -> Arc<ServerPolicy> {
        self.policy.resolve(self.port.as_ref())
    }

    fn target(&self, server: &ServerPolicy) -> TargetLabels {
        TargetLabels {
            target_addr: self.target_addr.clone(),
            srv_kind: server.meta.kind.clone(),
            srv_name: server.meta.name.clone(),
            tls: self.tls.clone(),
        }
    }

    fn metrics(&self) -> &AuthzMetrics {
        &self.policy.metrics
    }

    fn client_id(&self) -> Option<&str> {
        self.tls.client_id.as_deref()
    }

    /// A connection that is not HTTP: decides it, counts the decision and logs a refusal;
    /// whether the connection may be forwarded.
    pub fn admit_tcp(&self) -> bool {
        let server = self.server();
        let target = self.target(&server);
        match server.authorize_tcp(self.client, self.client_id()) {
            Some(authz) => {
                let labels = TcpAllowLabels {
                    target,
                    authz_kind: authz.meta.kind.clone(),
                    authz_name: authz.meta.name.clone(),
                };
                self.metrics().tcp_allow.get_or_create(&labels).inc();
                true
            }
            None => {
                self.metrics().tcp_deny.get_or_create(&target).inc();
                self.log_refusal(
                    &server,
                    "connection refused: the client is not authorized by the inbound policy",
                );
                false
            }
        }
    }

    /// Completes when the port's policy changes so that this (TCP) connection's client is
    /// no longer authorized: the connection is then closed, as Linkerd does. Never for the
    /// default policy, which does not change.
    pub async fn revoked(&self) {
        let Some(rx) = &self.port else { return std::future::pending().await };
        let mut rx = rx.clone();
        while rx.changed().await.is_ok() {
            let server = self.server();
            if server.authorize_tcp(self.client, self.client_id()).is_none() {
                self.metrics().tcp_deny.get_or_create(&self.target(&server)).inc();
                self.log_refusal(
                    &server,
                    "connection closed: the inbound policy no longer authorizes the client",
                );
                return;
            }
        }
        std::future::pending().await
    }

    /// An HTTP connection: says so when its requests will be refused (each is then decided
    /// and counted by `check_request`).
    pub fn note_http(&self) {
        let server = self.server();
        if !server.may_admit(self.client, self.client_id()) {
            self.log_refusal(
                &server,
                "client not authorized by the inbound policy: its requests get 403, probes excepted",
            );
        }
    }

    /// Logs a refusal: at info at most once a second per policy, else at debug.
    fn log_refusal(&self, server: &ServerPolicy, what: &'static str) {
        let (client_id, target) = (self.client_id().unwrap_or(""), self.target);
        let (kind, name) = (&*server.meta.kind, &*server.meta.name);
        if self.policy.take_loud() {
            tracing::info!(client.addr = %self.client, client.id = client_id, server.addr = %target, server.kind = kind, server.name = name, "{what} (more within a second are logged at debug)");
        } else {
            tracing::debug!(client.addr = %self.client, client.id = client_id, server.addr = %target, server.kind = kind, server.name = name, "{what}");
        }
    }

    /// Decides one HTTP request on this connection against the port's latest policy, and
    /// counts it: the request's route, then the first of the route's authorizations that
    /// lets the client in. The pod's own probes (from its spec, through the injector)
    /// always pass, whatever the policy: the kubelet is not meshed, and a gRPC probe has
    /// no probe route in the control plane's answers. `Ok`: admitted, with the filters of
    /// its route's rule if it has any.
    pub fn check_request<B>(&self, req: &http::Request<B>) -> Result<Option<Filtering>, Refusal> {
        let server = self.server();
        let selected = server.select(req);
        let route = selected.as_ref().map(|s| s.route);
        if let Some(selected) = &selected
            && let Some(authz) = (selected.route.authorizations.iter())
                .find(|a| a.allows(self.client, self.client_id()))
        {
            self.count_allow(&server, selected.route, authz);
            self.check_rate(&server)?;
            // An Arc clone, and only for rules that have filters.
            let filtering = selected.filters.map(|filters| Filtering {
                filters: filters.clone(),
                prefix_len: selected.prefix_len,
            });
            return Ok(filtering);
        }
        let target = self.target(&server);
        if self.policy.is_probe(self.target.port(), req.method(), req.uri().path()) {
            let labels = HttpAllowLabels {
                target,
                route_kind: "default".into(),
                route_name: "probe".into(),
                authz_kind: "default".into(),
                authz_name: "probe".into(),
            };
            self.metrics().http_allow.get_or_create(&labels).inc();
            return Ok(None);
        }
        let Some(route) = route else {
            return Err(Refusal::NoRoute);
        };
        let labels = HttpDenyLabels {
            target,
            route_kind: route.meta.kind.clone(),
            route_name: route.meta.name.clone(),
        };
        self.metrics().http_deny.get_or_create(&labels).inc();
        Err(Refusal::Unauthorized)
    }

    /// The server's rate limit, past the authorizations (the probes never meet it).
    fn check_rate(&self, server: &ServerPolicy) -> Result<(), Refusal> {
        let Some(limit) = &server.rate_limit else { return Ok(()) };
        let Err(scope) = limit.check(self.client_id(), std::time::Instant::now()) else {
            return Ok(());
        };
        let labels = RateLimitLabels {
            target: self.target(server),
            ratelimit_kind: limit.meta.kind.clone(),
            ratelimit_name: limit.meta.name.clone(),
            ratelimit_scope: scope.as_str(),
        };
        self.metrics().http_rate_limited.get_or_create(&labels).inc();
        Err(Refusal::RateLimited)
    }

    fn count_allow(&self, server: &Arc<ServerPolicy>, route: &Route, authz: &Authz) {
        let mut last = self.last_allow.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = last.as_ref()
            && Arc::ptr_eq(&c.server, server)
            && c.route == std::ptr::from_ref(route) as usize
            && c.authz == std::ptr::from_ref(authz) as usize
        {
            c.counter.inc();
            return;
        }
        let labels = HttpAllowLabels {
            target: self.target(server),
            route_kind: route.meta.kind.clone(),
            route_name: route.meta.name.clone(),
            authz_kind: authz.meta.kind.clone(),
            authz_name: authz.meta.name.clone(),
        };
        let counter = self.metrics().http_allow.get_or_create(&labels).clone();
        counter.inc();
        let (route, authz) =
            (std::ptr::from_ref(route) as usize, std::ptr::from_ref(authz) as usize);
        *last = Some(AllowCache { server: server.clone(), route, authz, counter });
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TargetLabels {
    target_addr: String,
    srv_kind: Arc<str>,
    srv_name: Arc<str>,
    #[prometheus(flatten)]
    tls: TlsLabels,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpAllowLabels {
    #[prometheus(flatten)]
    target: TargetLabels,
    authz_kind: Arc<str>,
    authz_name: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpAllowLabels {
    #[prometheus(flatten)]
    target: TargetLabels,
    route_kind: Arc<str>,
    route_name: Arc<str>,
    authz_kind: Arc<str>,
    authz_name: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RateLimitLabels {
    #[prometheus(flatten)]
    target: TargetLabels,
    ratelimit_kind: Arc<str>,
    ratelimit_name: Arc<str>,
    ratelimit_scope: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpDenyLabels {
    #[prometheus(flatten)]
    target: TargetLabels,
    route_kind: Arc<str>,
    route_name: Arc<str>,
}

/// `inbound_{http,tcp}_authz_{allow,deny}_total`, with Linkerd's names and labels.
#[derive(Debug, Clone, Default)]
pub struct AuthzMetrics {
    http_allow: Family<HttpAllowLabels, Counter>,
    http_deny: Family<HttpDenyLabels, Counter>,
    http_rate_limited: Family<RateLimitLabels, Counter>,
    tcp_allow: Family<TcpAllowLabels, Counter>,
    tcp_deny: Family<TargetLabels, Counter>,
}

impl AuthzMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = AuthzMetrics::default();
        registry.register(
            "inbound_http_authz_allow",
            "HTTP requests the inbound policy allowed",
            m.http_allow.clone(),
        );
        registry.register(
            "inbound_http_authz_deny",
            "HTTP requests the inbound policy denied (answered 403)",
            m.http_deny.clone(),
        );
        registry.register(
            "inbound_http_local_ratelimit",
            "HTTP requests refused by the server's local rate limit (answered 429)",
            m.http_rate_limited.clone(),
        );
        registry.register(
            "inbound_tcp_authz_allow",
            "Non-HTTP connections the inbound policy allowed",
            m.tcp_allow.clone(),
        );
        registry.register(
            "inbound_tcp_authz_deny",
            "Connections the inbound policy refused",
            m.tcp_deny.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(default: &str, probes: &str) -> Policy {
        let probes = Probes {
            routes: probes.parse().expect("probes"),
            grpc_ports: "9090".parse().expect("ports"),
        };
        Policy::new(
            default.parse().expect("policy"),
            DEFAULT_CLUSTER_NETWORKS.parse().expect("networks"),
            probes,
            AuthzMetrics::default(),
        )
    }

    /// Whether the default policy lets in a client from `ip`, meshed or not.
    fn allows(p: &Policy, ip: IpAddr, authenticated: bool) -> bool {
        p.current(1).authorize_tcp(ip, authenticated.then_some("client")).is_some()
    }

    #[test]
    fn each_default_policy_allows_whom_linkerds_does() {
        let pod: IpAddr = "10.1.2.3".parse().expect("ip");
        let outside: IpAddr = "203.0.113.9".parse().expect("ip");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        let ula: IpAddr = "fd00::5".parse().expect("ip");
        // (policy, [in-cluster plaintext, in-cluster mTLS, outside plaintext, outside mTLS])
        let table = [
            ("all-unauthenticated", [true, true, true, true]),
            ("audit", [true, true, true, true]),
            ("all-authenticated", [false, true, false, true]),
            ("cluster-unauthenticated", [true, true, false, false]),
            ("cluster-authenticated", [false, true, false, false]),
            ("deny", [false, false, false, false]),
        ];
        for (name, want) in table {
            let p = policy(name, "");
            let got = [
                allows(&p, pod, false),
                allows(&p, pod, true),
                allows(&p, outside, false),
                allows(&p, outside, true),
            ];
            assert_eq!(got, want, "{name}");
            // An IPv4 client seen on a dual-stack socket is still in the cluster.
            assert_eq!(allows(&p, mapped, true), want[1], "{name} (IPv4-mapped)");
            assert_eq!(allows(&p, ula, true), want[1], "{name} (IPv6)");
            assert_eq!(p.default.to_string(), name);
        }
    }

    #[test]
    fn bad_policy_names_and_probe_routes_are_refused_with_what_was_expected() {
        let e = "allow-all".parse::<DefaultPolicy>().expect_err("not a policy");
        assert!(e.contains("\"allow-all\"") && e.contains("cluster-authenticated"), "{e}");
        for bad in
            ["8080", ":/x", "0:/x", "70000:/x", "x:/y", "8080:healthz", "8080:/a?b=1", "8080:/a b"]
        {
            let e = bad.parse::<ProbeRoutes>().expect_err(bad);
            assert!(e.contains("PORT:PATH"), "{bad}: {e}");
        }
    }

    #[test]
    fn refusals_are_logged_loud_at_most_once_a_second() {
        let p = policy("deny", "");
        assert!(p.take_loud(), "the first refusal");
        assert!((0..1000).all(|_| !p.take_loud()), "a flood within the second");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(p.take_loud(), "the first refusal of the next second");
        assert!(!p.take_loud());
    }

    #[test]
    fn only_get_on_a_listed_route_or_the_grpc_health_check_on_its_port_is_a_probe() {
        let p = policy("deny", "8080:/ready, 8080:/healthz,9090:/live,");
        assert_eq!(p.probes.routes.to_string(), "8080:/healthz,8080:/ready,9090:/live");
        let get = http::Method::GET;
        assert!(p.is_probe(8080, &get, "/ready"));
        assert!(p.is_probe(8080, &get, "/healthz"));
        assert!(p.is_probe(9090, &get, "/live"));
        assert!(!p.is_probe(8080, &http::Method::POST, "/ready"));
        assert!(!p.is_probe(8080, &get, "/live"));
        assert!(!p.is_probe(8080, &get, "/ready/x"));
        assert!(!p.is_probe(8081, &get, "/ready"));
        // The gRPC health check, on a gRPC probe's port only.
        let post = http::Method::POST;
        assert!(p.is_probe(9090, &post, GRPC_HEALTH_CHECK));
        assert!(!p.is_probe(8080, &post, GRPC_HEALTH_CHECK));
        assert!(!p.is_probe(9090, &post, "/grpc.health.v1.Health/Watch"));
        assert!(!p.is_probe(9090, &get, GRPC_HEALTH_CHECK));
    }
}
