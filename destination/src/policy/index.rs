//! The policy index: pods, namespaces and the six policy kinds as the watches (or the
//! static file) report them, the `Server` message of each pod port, and the watch channels of
//! the ports that proxies follow. Pure: fed by the sources, read by the gRPC service.
//!
//! A change recomputes the followed ports it can touch (those of its namespace; every port
//! for an authentication, which other namespaces may reference) and sends only the ones whose
//! message changed. Recomputing is cheap next to the API traffic that caused it, and keeps
//! one code path for the first answer and for every later one.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::{Arc, Mutex},
};

use ipnet::IpNet;
use linkerd2_proxy_api::inbound as pb;
use prometheus_client::metrics::{counter::Counter, family::Family};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::{
    model::{
        AuthorizationPolicy, AuthzTarget, DEFAULT_CLUSTER_NETWORKS, DefaultPolicy, GROUP,
        IdentityMatch, MeshTls, NetworkAuthn, PodInbound, PolicyKind, PolicyObject, ProxyProtocol,
        RouteRef, Server, parse_networks,
    },
    proto::{self, Authentication, Origin},
    rate_limit::RateLimitPolicy,
    route::{GrpcRoute, HttpRoute, grpc::GRPC_ROUTE_KIND},
};
use crate::{
    index::IndexConfig,
    metrics::SkipLabels,
    model::{Namespace, ObjKey, Pod},
    split::GATEWAY_GROUP,
};

/// The cluster-wide defaults of inbound policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// For ports that no `Server` selects, when neither the pod nor its namespace says.
    pub default_policy: DefaultPolicy,
    /// Where `cluster-*` policies admit clients from.
    pub cluster_networks: Vec<IpNet>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            default_policy: DefaultPolicy::AllUnauthenticated,
            cluster_networks: parse_networks(DEFAULT_CLUSTER_NETWORKS).unwrap_or_default(),
        }
    }
}

/// Which followed ports a change can touch.
enum Scope {
    /// One pod's ports: its labels, ports, probes or annotation changed, which no other
    /// pod's answer depends on.
    Pod(ObjKey),
    Namespace(String),
    All,
}

static NO_PROBES: BTreeSet<String> = BTreeSet::new();

#[derive(Debug, Default)]
pub struct PolicyIndex {
    config: PolicyConfig,
    ids: IndexConfig,
    namespaces: HashMap<String, Option<DefaultPolicy>>,
    pods: HashMap<ObjKey, PodInbound>,
    servers: HashMap<ObjKey, Server>,
    authorizations: HashMap<ObjKey, AuthorizationPolicy>,
    mesh_tls: HashMap<ObjKey, MeshTls>,
    networks: HashMap<ObjKey, NetworkAuthn>,
    routes: HashMap<ObjKey, HttpRoute>,
    /// The Gateway API's HTTPRoutes that attach to Servers (those that attach to none are
    /// left to traffic splits), and its GRPCRoutes.
    gateway_routes: HashMap<ObjKey, HttpRoute>,
    grpc_routes: HashMap<ObjKey, GrpcRoute>,
    rate_limits: HashMap<ObjKey, RateLimitPolicy>,
    /// Rate-limit policies not applied because an older one limits their Server (counted
    /// when they become so).
    rate_limit_conflicts: HashSet<ObjKey>,
    subs: HashMap<(ObjKey, u16), watch::Sender<Arc<pb::Server>>>,
    /// Computations in which more than one Server selected the port.
    conflicts: Counter,
    /// `destination_objects_skipped_total`: objects skipped for what the index alone knows
    /// (a conflict between objects that are each valid).
    skipped: Family<SkipLabels, Counter>,
}

/// The index shared by the sources (writers) and the gRPC streams (readers).
#[derive(Clone, Debug, Default)]
pub struct SharedPolicyIndex(Arc<Mutex<PolicyIndex>>);

impl SharedPolicyIndex {
    pub fn new(
        config: PolicyConfig,
        ids: IndexConfig,
        conflicts: Counter,
        skipped: Family<SkipLabels, Counter>,
    ) -> Self {
        Self(Arc::new(Mutex::new(PolicyIndex::new(config, ids, conflicts, skipped))))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, PolicyIndex> {
        // As the discovery index: a panic under the lock is no reason to stop serving.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PolicyIndex {
    pub fn new(
        config: PolicyConfig,
        ids: IndexConfig,
        conflicts: Counter,
        skipped: Family<SkipLabels, Counter>,
    ) -> Self {
        Self { config, ids, conflicts, skipped, ..Default::default() }
    }

    /// The current message of a pod port; `None` when the pod is unknown.
    pub fn get(&self, pod: &ObjKey, port: u16) -> Option<pb::Server> {
        self.compute(pod, port)
    }

    /// Follows a pod port; `None` when the pod is unknown. The channel holds the current
    /// message and changes only when the message does. If the pod goes away, followers keep
    /// the last message (their proxy is going away too) until the pod comes back.
    pub fn watch(&mut self, pod: &ObjKey, port: u16) -> Option<watch::Receiver<Arc<pb::Server>>> {
        let key = (pod.clone(), port);
        if let Some(tx) = self.subs.get(&key)
            && self.pods.contains_key(pod)
        {
            return Some(tx.subscribe());
        }
        let server = self.compute(pod, port)?;
        let tx = self.subs.entry(key).or_insert_with(|| watch::Sender::new(Arc::new(server)));
        Some(tx.subscribe())
    }

    /// A Server's protocol; `None`: no such Server (route statuses ask).
    pub fn server_protocol(&self, key: &ObjKey) -> Option<ProxyProtocol> {
        self.servers.get(key).map(|s| s.protocol)
    }

    /// Ports followed by at least one stream.
    pub fn subscriptions(&self) -> usize {
        self.subs.values().filter(|tx| tx.receiver_count() > 0).count()
    }

    pub fn apply_pod(&mut self, pod: &Pod) {
        if self.pods.get(&pod.key) == Some(&pod.inbound) {
            return;
        }
        self.pods.insert(pod.key.clone(), pod.inbound.clone());
        self.refresh(Scope::Pod(pod.key.clone()));
    }

    pub fn delete_pod(&mut self, key: &ObjKey) {
        // Followers keep their last message (see `watch`): nothing to refresh.
        self.pods.remove(key);
    }

    pub fn reset_pods(&mut self, all: &[Pod]) {
        self.set_pods(all.iter().map(|p| (p.key.clone(), p.inbound.clone())).collect());
    }

    /// Replaces all pods (the static file's, which are not whole pods).
    pub fn set_pods(&mut self, new: HashMap<ObjKey, PodInbound>) {
        if new != self.pods {
            self.pods = new;
            self.refresh(Scope::All);
        }
    }

    pub fn apply_namespace(&mut self, ns: &Namespace) {
        let old = self.namespaces.insert(ns.name.clone(), ns.default_policy);
        if old != Some(ns.default_policy) {
            self.refresh(Scope::Namespace(ns.name.clone()));
        }
    }

    pub fn delete_namespace(&mut self, name: &str) {
        if self.namespaces.remove(name).is_some() {
            self.refresh(Scope::Namespace(name.to_string()));
        }
    }

    pub fn reset_namespaces(&mut self, all: &[Namespace]) {
        self.set_namespaces(all.iter().map(|n| (n.name.clone(), n.default_policy)).collect());
    }

    /// Replaces all namespaces' default policies.
    pub fn set_namespaces(&mut self, new: HashMap<String, Option<DefaultPolicy>>) {
        if new != self.namespaces {
            self.namespaces = new;
            self.refresh(Scope::All);
        }
    }

    pub fn apply(&mut self, obj: PolicyObject) {
        let (key, kind) = (obj.key().clone(), obj.kind());
        let changed = match obj {
            PolicyObject::Server(s) => insert(&mut self.servers, key.clone(), s),
            PolicyObject::AuthorizationPolicy(a) => {
                insert(&mut self.authorizations, key.clone(), a)
            }
            PolicyObject::MeshTls(m) => insert(&mut self.mesh_tls, key.clone(), m),
            PolicyObject::Network(n) => insert(&mut self.networks, key.clone(), n),
            PolicyObject::HttpRoute(r) => insert(&mut self.routes, key.clone(), r),
            PolicyObject::RateLimit(r) => insert(&mut self.rate_limits, key.clone(), r),
        };
        if changed && kind == PolicyKind::RateLimit {
            self.note_rate_limit_conflicts();
        }
        if changed {
            self.refresh(kind_scope(kind, &key));
        }
    }

    pub fn delete(&mut self, kind: PolicyKind, key: &ObjKey) {
        let removed = match kind {
            PolicyKind::Server => self.servers.remove(key).is_some(),
            PolicyKind::AuthorizationPolicy => self.authorizations.remove(key).is_some(),
            PolicyKind::MeshTls => self.mesh_tls.remove(key).is_some(),
            PolicyKind::Network => self.networks.remove(key).is_some(),
            PolicyKind::HttpRoute => self.routes.remove(key).is_some(),
            PolicyKind::RateLimit => self.rate_limits.remove(key).is_some(),
        };
        if removed && kind == PolicyKind::RateLimit {
            self.note_rate_limit_conflicts();
        }
        if removed {
            self.refresh(kind_scope(kind, key));
        }
    }

    /// Replaces all objects of a kind (a watch listed them all, or the file was re-read).
    pub fn reset(&mut self, kind: PolicyKind, all: Vec<PolicyObject>) {
        let objects = all.into_iter().filter(|o| o.kind() == kind);
        let changed = match kind {
            PolicyKind::Server => replace(&mut self.servers, objects, |o| match o {
                PolicyObject::Server(s) => Some(s),
                _ => None,
            }),
            PolicyKind::AuthorizationPolicy => {
                replace(&mut self.authorizations, objects, |o| match o {
                    PolicyObject::AuthorizationPolicy(a) => Some(a),
                    _ => None,
                })
            }
            PolicyKind::MeshTls => replace(&mut self.mesh_tls, objects, |o| match o {
                PolicyObject::MeshTls(m) => Some(m),
                _ => None,
            }),
            PolicyKind::Network => replace(&mut self.networks, objects, |o| match o {
                PolicyObject::Network(n) => Some(n),
                _ => None,
            }),
            PolicyKind::HttpRoute => replace(&mut self.routes, objects, |o| match o {
                PolicyObject::HttpRoute(r) => Some(r),
                _ => None,
            }),
            PolicyKind::RateLimit => replace(&mut self.rate_limits, objects, |o| match o {
                PolicyObject::RateLimit(r) => Some(r),
                _ => None,
            }),
        };
        if changed && kind == PolicyKind::RateLimit {
            self.note_rate_limit_conflicts();
        }
        if changed {
            self.refresh(Scope::All);
        }
    }

    /// A Gateway API HTTPRoute, or `None` when it attaches to no Server (any more).
    pub fn apply_gateway_route(&mut self, key: &ObjKey, route: Option<HttpRoute>) {
        if set(&mut self.gateway_routes, key, route.filter(|r| !r.servers.is_empty())) {
            self.refresh(Scope::Namespace(key.namespace.clone()));
        }
    }

    /// Replaces all Gateway API HTTPRoutes (a watch listed them all).
    pub fn reset_gateway_routes(&mut self, all: Vec<HttpRoute>) {
        let new = all.into_iter().filter(|r| !r.servers.is_empty()).map(|r| (r.key.clone(), r));
        if replace_all(&mut self.gateway_routes, new.collect()) {
            self.refresh(Scope::All);
        }
    }

    /// A GRPCRoute, or `None` once it is deleted.
    pub fn apply_grpc_route(&mut self, key: &ObjKey, route: Option<GrpcRoute>) {
        if set(&mut self.grpc_routes, key, route) {
            self.refresh(Scope::Namespace(key.namespace.clone()));
        }
    }

    /// Replaces all GRPCRoutes (a watch listed them all, or their CRD is missing).
    pub fn reset_grpc_routes(&mut self, all: Vec<GrpcRoute>) {
        if replace_all(&mut self.grpc_routes, all.into_iter().map(|r| (r.key.clone(), r)).collect())
        {
            self.refresh(Scope::All);
        }
    }

    /// Recomputes the followed ports in `scope` and sends those that changed; forgets the
    /// ports nobody follows any more.
    fn refresh(&mut self, scope: Scope) {
        let mut subs = std::mem::take(&mut self.subs);
        subs.retain(|(pod, port), tx| {
            if tx.receiver_count() == 0 {
                return false;
            }
            let touched = match &scope {
                Scope::Pod(key) => pod == key,
                Scope::Namespace(ns) => pod.namespace == *ns,
                Scope::All => true,
            };
            if let Some(new) = touched.then(|| self.compute(pod, *port)).flatten() {
                tx.send_if_modified(|current| {
                    if **current == new {
                        return false;
                    }
                    *current = Arc::new(new);
                    true
                });
            }
            true
        });
        self.subs = subs;
    }

    fn compute(&self, key: &ObjKey, port: u16) -> Option<pb::Server> {
        let pod = self.pods.get(key)?;
        let probes = pod.probes.get(&port).unwrap_or(&NO_PROBES);
        let mut selecting: Vec<&Server> = self
            .servers
            .values()
            .filter(|s| s.key.namespace == key.namespace && s.selects(pod, port))
            .collect();
        // The oldest wins, as in Linkerd; the name settles equal ages (and the static
        // file's, which have none) so that the answer never depends on map order.
        selecting.sort_by(|a, b| by_age(&a.created, &a.key, &b.created, &b.key));
        let Some(server) = selecting.first() else {
            let policy = pod
                .default_policy
                .or_else(|| self.namespaces.get(&key.namespace).copied().flatten())
                .unwrap_or(self.config.default_policy);
            let authorizations = self.default_authorizations(policy);
            return Some(proto::server(
                &Origin::Default(policy.as_str()),
                GROUP,
                ProxyProtocol::Unknown,
                authorizations,
                probes,
                proto::Attached::default(),
                None,
            ));
        };
        if selecting.len() > 1 {
            let others: Vec<&str> = selecting[1..].iter().map(|s| s.key.name.as_str()).collect();
            warn!(pod = %key, port, server = %server.key.name, ?others, "more than one Server selects the port; the oldest wins");
            self.conflicts.inc();
        }
        let mut policies: Vec<&AuthorizationPolicy> = self
            .authorizations
            .values()
            .filter(|a| {
                a.key.namespace == server.key.namespace
                    && match &a.target {
                        AuthzTarget::Server(name) => *name == server.key.name,
                        AuthzTarget::Namespace => true,
                        // Its route's requests only (see `routes`).
                        AuthzTarget::Route(_) => false,
                    }
            })
            .collect();
        policies.sort_by(|a, b| a.key.name.cmp(&b.key.name));
        let mut authorizations: Vec<pb::Authz> =
            policies.into_iter().filter_map(|p| self.policy_authorization(p)).collect();
        authorizations.extend(self.default_authorizations(server.access_policy));
        // A gRPC Server gets GRPCRoutes only, the others HTTPRoutes only, as in Linkerd.
        let (routes, grpc_routes) = match server.protocol {
            ProxyProtocol::Grpc => (None, self.grpc_routes(server, &authorizations)),
            _ => (self.routes(server, &authorizations), None),
        };
        let rate_limit = self
            .rate_limit(server)
            .map(|p| proto::rate_limit(p, GROUP, |ns, sa| self.ids.identity(ns, sa)));
        Some(proto::server(
            &Origin::Resource { kind: "server", name: &server.key.name },
            GROUP,
            server.protocol,
            authorizations,
            probes,
            proto::Attached { http: routes.as_deref(), grpc: grpc_routes.as_deref() },
            rate_limit,
        ))
    }

    /// The rate-limit policies of each Server (by namespace and name), oldest first.
    fn rate_limits_by_server(&self) -> HashMap<(&str, &str), Vec<&RateLimitPolicy>> {
        let mut by_server: HashMap<(&str, &str), Vec<&RateLimitPolicy>> = HashMap::new();
        for p in self.rate_limits.values() {
            by_server.entry((&p.key.namespace, &p.server)).or_default().push(p);
        }
        for policies in by_server.values_mut() {
            policies.sort_by(|a, b| by_age(&a.created, &a.key, &b.created, &b.key));
        }
        by_server
    }

    /// A Server's rate-limit policy: Linkerd allows one, so with several the oldest (the
    /// name settling equal ages) applies and the others are skipped.
    fn rate_limit(&self, server: &Server) -> Option<&RateLimitPolicy> {
        (self.rate_limits.values())
            .filter(|p| p.key.namespace == server.key.namespace && p.server == server.key.name)
            .min_by(|a, b| by_age(&a.created, &a.key, &b.created, &b.key))
    }

    /// Logs and counts the rate-limit policies that an older one has just displaced (each
    /// once, until it applies again or goes away).
    fn note_rate_limit_conflicts(&mut self) {
        let mut skipped = HashSet::new();
        for ((_, server), policies) in self.rate_limits_by_server() {
            let Some((winner, others)) = policies.split_first() else { continue };
            for p in others {
                if !self.rate_limit_conflicts.contains(&p.key) {
                    warn!(policy = %p.key, server, applied = %winner.key.name, "more than one HTTPLocalRateLimitPolicy targets the Server; the oldest applies, this one is skipped");
                    let labels =
                        SkipLabels { kind: PolicyKind::RateLimit.metric(), reason: "conflict" };
                    self.skipped.get_or_create(&labels).inc();
                }
                skipped.insert(p.key.clone());
            }
        }
        self.rate_limit_conflicts = skipped;
    }

    /// The HTTP routes of a Server that HTTPRoutes (of either group) attach to (`None`: none
    /// do, it keeps the default route). As in Linkerd, each route admits the clients of the
    /// AuthorizationPolicies that target it, and those of the Server's own authorizations,
    /// which apply to every route.
    fn routes(&self, server: &Server, server_authz: &[pb::Authz]) -> Option<Vec<pb::HttpRoute>> {
        let mut attached: Vec<&HttpRoute> = (self.routes.values())
            .chain(self.gateway_routes.values())
            .filter(|r| {
                r.key.namespace == server.key.namespace && r.servers.contains(&server.key.name)
            })
            .collect();
        // Oldest first, as Gateway API breaks ties between routes.
        attached.sort_by(|a, b| {
            by_age(&a.created, &a.key, &b.created, &b.key).then(a.group.cmp(b.group))
        });
        let first = attached.first()?;
        let mut routes = Vec::new();
        for route in &attached {
            if let Some(u) = &route.unusable {
                // Counted and logged when the route arrived; it still keeps the default
                // route away, so its requests get 404 rather than being served unfiltered.
                debug!(route = %route.key, group = route.group, server = %server.key, reason = u.reason, "route not served");
                continue;
            }
            let target =
                RouteRef { group: route.group, kind: "HTTPRoute", name: route.key.name.clone() };
            let authorizations = self.route_authorizations(&route.key, &target, server_authz);
            routes.push(proto::http_route(route, route.group, authorizations));
        }
        if routes.is_empty() {
            routes.push(proto::no_route(first.group, &first.key.name));
        }
        Some(routes)
    }

    /// The gRPC routes of a gRPC Server that GRPCRoutes attach to (`None`: none do, it keeps
    /// the default route); authorized as [`Self::routes`] authorizes HTTP routes.
    fn grpc_routes(
        &self,
        server: &Server,
        server_authz: &[pb::Authz],
    ) -> Option<Vec<pb::GrpcRoute>> {
        let mut attached: Vec<&GrpcRoute> = (self.grpc_routes.values())
            .filter(|r| {
                r.key.namespace == server.key.namespace && r.servers.contains(&server.key.name)
            })
            .collect();
        attached.sort_by(|a, b| by_age(&a.created, &a.key, &b.created, &b.key));
        let first = attached.first()?;
        let mut routes = Vec::new();
        for route in &attached {
            if let Some(u) = &route.unusable {
                debug!(route = %route.key, server = %server.key, reason = u.reason, "gRPC route not served");
                continue;
            }
            let target = RouteRef {
                group: GATEWAY_GROUP,
                kind: GRPC_ROUTE_KIND,
                name: route.key.name.clone(),
            };
            let authorizations = self.route_authorizations(&route.key, &target, server_authz);
            routes.push(proto::grpc_route(route, authorizations));
        }
        if routes.is_empty() {
            routes.push(proto::no_grpc_route(&first.key.name));
        }
        Some(routes)
    }

    /// A route's authorizations: its AuthorizationPolicies', then the Server's.
    fn route_authorizations(
        &self,
        route: &ObjKey,
        target: &RouteRef,
        server_authz: &[pb::Authz],
    ) -> Vec<pb::Authz> {
        let mut policies: Vec<&AuthorizationPolicy> = self
            .authorizations
            .values()
            .filter(|a| {
                a.key.namespace == route.namespace
                    && matches!(&a.target, AuthzTarget::Route(t) if t == target)
            })
            .collect();
        policies.sort_by(|a, b| a.key.name.cmp(&b.key.name));
        let mut authorizations: Vec<pb::Authz> =
            policies.into_iter().filter_map(|p| self.policy_authorization(p)).collect();
        authorizations.extend_from_slice(server_authz);
        authorizations
    }

    /// An AuthorizationPolicy's authorization; `None` while an authentication it requires
    /// does not exist (a requirement that cannot be checked admits nobody).
    fn policy_authorization(&self, p: &AuthorizationPolicy) -> Option<pb::Authz> {
        let missing = |kind: &str, k: &ObjKey| {
            debug!(policy = %p.key, %kind, authentication = %k, "required authentication does not exist; the policy admits nobody");
        };
        let networks = match &p.network {
            None => proto::all_networks(),
            Some(k) => match self.networks.get(k) {
                Some(n) => n.networks.clone(),
                None => {
                    missing("NetworkAuthentication", k);
                    return None;
                }
            },
        };
        let authn = if let Some(k) = &p.mesh_tls {
            let Some(m) = self.mesh_tls.get(k) else {
                missing("MeshTLSAuthentication", k);
                return None;
            };
            self.mesh_authentication(&m.identities)
        } else if !p.service_accounts.is_empty() {
            let ids: Vec<IdentityMatch> =
                p.service_accounts.iter().cloned().map(IdentityMatch::ServiceAccount).collect();
            self.mesh_authentication(&ids)
        } else {
            Authentication::Unauthenticated
        };
        Some(proto::authz(
            &Origin::Resource { kind: "authorizationpolicy", name: &p.key.name },
            GROUP,
            &networks,
            &authn,
        ))
    }

    fn mesh_authentication(&self, matches: &[IdentityMatch]) -> Authentication {
        let (mut identities, mut suffixes) = (BTreeSet::new(), BTreeSet::new());
        for m in matches {
            match m {
                IdentityMatch::Exact(name) => {
                    identities.insert(name.clone());
                }
                IdentityMatch::Suffix(parts) => {
                    suffixes.insert(parts.clone());
                }
                IdentityMatch::ServiceAccount(sa) => {
                    identities.insert(self.ids.identity(&sa.namespace, &sa.name));
                }
                IdentityMatch::Namespace(ns) => {
                    // `<sa>.<ns>.serviceaccount.identity.<cp-ns>.<trust-domain>` for any sa.
                    let any = self.ids.identity(ns, "x");
                    let parts = any.split('.').skip(1).map(String::from).collect();
                    suffixes.insert(parts);
                }
            }
        }
        Authentication::MeshTls { identities, suffixes }
    }

    /// The authorizations of a default policy, named after it.
    fn default_authorizations(&self, policy: DefaultPolicy) -> Vec<pb::Authz> {
        let any_identity = || Authentication::MeshTls {
            identities: BTreeSet::new(),
            suffixes: [Vec::new()].into(),
        };
        let cluster = proto::networks(&self.config.cluster_networks);
        let (networks, authn) = match policy {
            DefaultPolicy::Deny => return Vec::new(),
            DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit => {
                (proto::all_networks(), Authentication::Unauthenticated)
            }
            DefaultPolicy::AllAuthenticated => (proto::all_networks(), any_identity()),
            DefaultPolicy::ClusterUnauthenticated => (cluster, Authentication::Unauthenticated),
            DefaultPolicy::ClusterAuthenticated => (cluster, any_identity()),
        };
        vec![proto::authz(&Origin::Default(policy.as_str()), "", &networks, &authn)]
    }
}

/// Oldest first; no age after any age; the name settles ties.
fn by_age(
    a_created: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    a: &ObjKey,
    b_created: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    b: &ObjKey,
) -> std::cmp::Ordering {
    (a_created.is_none(), a_created, &a.name).cmp(&(b_created.is_none(), b_created, &b.name))
}

fn insert<V: PartialEq>(map: &mut HashMap<ObjKey, V>, key: ObjKey, value: V) -> bool {
    map.get(&key) != Some(&value) && {
        map.insert(key, value);
        true
    }
}

/// Sets (`Some`) or removes (`None`) one entry; whether that changed anything.
fn set<V: PartialEq>(map: &mut HashMap<ObjKey, V>, key: &ObjKey, value: Option<V>) -> bool {
    match value {
        Some(v) => insert(map, key.clone(), v),
        None => map.remove(key).is_some(),
    }
}

/// Replaces a whole map; whether that changed anything.
fn replace_all<V: PartialEq>(map: &mut HashMap<ObjKey, V>, new: HashMap<ObjKey, V>) -> bool {
    let changed = *map != new;
    if changed {
        *map = new;
    }
    changed
}

fn replace<V: PartialEq>(
    map: &mut HashMap<ObjKey, V>,
    objects: impl Iterator<Item = PolicyObject>,
    take: impl Fn(PolicyObject) -> Option<V>,
) -> bool {
    let new: HashMap<ObjKey, V> =
        objects.filter_map(|o| Some((o.key().clone(), take(o)?))).collect();
    let keys: HashSet<&ObjKey> = new.keys().collect();
    let changed = new.len() != map.len()
        || map.keys().any(|k| !keys.contains(k))
        || new.iter().any(|(k, v)| map.get(k) != Some(v));
    if changed {
        *map = new;
    }
    changed
}

/// Servers, AuthorizationPolicies, HTTPRoutes and rate-limit policies touch their namespace's ports only;
/// authentications can be referenced from any namespace.
fn kind_scope(kind: PolicyKind, key: &ObjKey) -> Scope {
    match kind {
        PolicyKind::Server
        | PolicyKind::AuthorizationPolicy
        | PolicyKind::HttpRoute
        | PolicyKind::RateLimit => Scope::Namespace(key.namespace.clone()),
        PolicyKind::MeshTls | PolicyKind::Network => Scope::All,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
