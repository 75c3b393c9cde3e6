//! The policy objects (`Server`, `AuthorizationPolicy`, `MeshTLSAuthentication`,
//! `NetworkAuthentication`, `HTTPRoute`, `HTTPLocalRateLimitPolicy` of `policy.weft.dev`) and the default policies, reduced to what the
//! index needs. Pure. Specs are parsed from JSON leniently: unknown fields are ignored (a newer
//! schema keeps working), and an object that cannot be used is refused whole with a
//! [`Problem`] rather than half-applied — a half-understood authorization is a wrong one.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::{
    apis::meta::v1::{LabelSelector, ObjectMeta, Time},
    util::intstr::IntOrString,
};
use serde::Deserialize;
use serde_json::Value;

use super::{
    rate_limit::{RATE_LIMIT_KIND, RATE_LIMIT_VERSION, RateLimitPolicy},
    route::{HttpRoute, ROUTE_VERSION, grpc::GRPC_ROUTE_KIND},
};
use crate::{
    model::{ObjKey, Problem},
    split::GATEWAY_GROUP,
};

/// The API group of the policy resources.
pub const GROUP: &str = "policy.weft.dev";
/// The version of all but `HTTPRoute` and `HTTPLocalRateLimitPolicy` (see
/// [`PolicyKind::version`]).
pub const VERSION: &str = "v1beta1";
/// Annotation (on a pod or its namespace) naming the default policy of ports no `Server`
/// selects; the injector gives the same value to the proxy.
pub const DEFAULT_INBOUND_POLICY_ANNOTATION: &str = "config.weft.dev/default-inbound-policy";
pub use weft_identity::policy::{DEFAULT_CLUSTER_NETWORKS, DefaultPolicy};

/// Parses a comma list of CIDRs (a bare address is a host network). A network with host
/// bits set (`10.0.0.1/8`) is refused: it is almost always a typo for another network.
pub fn parse_networks(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(parse_cidr).collect()
}

pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => s
            .parse::<std::net::IpAddr>()
            .map(IpNet::from)
            .map_err(|_| format!("{s:?} is not a CIDR (expected e.g. 10.0.0.0/8 or fd00::/8)"))?,
    };
    if net.trunc() != net {
        return Err(format!("{s:?} has host bits set (did you mean {}?)", net.trunc()));
    }
    Ok(net)
}

/// What inbound policy needs of a pod; part of [`crate::model::Pod`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInbound {
    pub labels: BTreeMap<String, String>,
    /// Container port names (of all containers) → numbers: a `Server` may select by name.
    pub named_ports: BTreeMap<String, u16>,
    /// Port → the paths of the pod's HTTP `GET` probes on it (the kubelet's probe routes).
    pub probes: BTreeMap<u16, BTreeSet<String>>,
    /// `config.weft.dev/default-inbound-policy` on the pod.
    pub default_policy: Option<DefaultPolicy>,
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`); empty selects all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    labels: BTreeMap<String, String>,
    expressions: Vec<(String, SelectorOp)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum SelectorOp {
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

impl Selector {
    pub fn from_k8s(s: &LabelSelector) -> Result<Selector, String> {
        let mut expressions = Vec::new();
        for e in s.match_expressions.iter().flatten() {
            let values = || e.values.iter().flatten().cloned().collect::<BTreeSet<_>>();
            let op = match e.operator.as_str() {
                "In" => SelectorOp::In(values()),
                "NotIn" => SelectorOp::NotIn(values()),
                "Exists" => SelectorOp::Exists,
                "DoesNotExist" => SelectorOp::DoesNotExist,
                other => return Err(format!("unknown selector operator {other:?}")),
            };
            expressions.push((e.key.clone(), op));
        }
        Ok(Selector { labels: s.match_labels.clone().unwrap_or_default(), expressions })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|(k, op)| match op {
                SelectorOp::In(vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                SelectorOp::NotIn(vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                SelectorOp::Exists => labels.contains_key(k),
                SelectorOp::DoesNotExist => !labels.contains_key(k),
            })
    }
}

/// A `Server`'s port: a number, or a container port name resolved per pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// Detect HTTP, fall back to opaque TCP.
    #[default]
    Unknown,
    Http1,
    Http2,
    Grpc,
    Opaque,
    Tls,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub key: ObjKey,
    /// Conflicts are settled by age: the oldest Server keeps the port.
    pub created: Option<Time>,
    pub selector: Selector,
    pub port: PortRef,
    pub protocol: ProxyProtocol,
    /// What traffic no AuthorizationPolicy allows gets (Linkerd's `accessPolicy`).
    pub access_policy: DefaultPolicy,
}

impl Server {
    /// Whether this Server selects `port` of a pod with these labels and named ports.
    pub fn selects(&self, pod: &PodInbound, port: u16) -> bool {
        let port_matches = match &self.port {
            PortRef::Number(n) => *n == port,
            PortRef::Name(name) => pod.named_ports.get(name) == Some(&port),
        };
        port_matches && self.selector.matches(&pod.labels)
    }
}

/// What an AuthorizationPolicy applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthzTarget {
    Server(String),
    /// Every Server of the policy's own namespace.
    Namespace,
    /// One route: its requests only.
    Route(RouteRef),
}

/// A route an AuthorizationPolicy targets: `HTTPRoute` of [`GROUP`] or of the Gateway API,
/// or the Gateway API's `GRPCRoute`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRef {
    pub group: &'static str,
    pub kind: &'static str,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationPolicy {
    pub key: ObjKey,
    pub target: AuthzTarget,
    pub network: Option<ObjKey>,
    pub mesh_tls: Option<ObjKey>,
    /// Clients with any of these service accounts' identities.
    pub service_accounts: Vec<ObjKey>,
}

/// A client identity a MeshTLSAuthentication accepts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum IdentityMatch {
    Exact(String),
    /// Any identity ending in these DNS labels; empty: any authenticated client.
    Suffix(Vec<String>),
    /// The identity of a service account (named once the index knows the trust domain).
    ServiceAccount(ObjKey),
    /// Any service account of a namespace.
    Namespace(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshTls {
    pub key: ObjKey,
    pub identities: Vec<IdentityMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Network {
    pub net: IpNet,
    pub except: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkAuthn {
    pub key: ObjKey,
    pub networks: Vec<Network>,
}

/// One policy object of any of the six kinds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyObject {
    Server(Server),
    AuthorizationPolicy(AuthorizationPolicy),
    MeshTls(MeshTls),
    Network(NetworkAuthn),
    HttpRoute(HttpRoute),
    RateLimit(RateLimitPolicy),
}

/// The six kinds, by their Kubernetes names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    Server,
    AuthorizationPolicy,
    MeshTls,
    Network,
    HttpRoute,
    RateLimit,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::Server,
        PolicyKind::AuthorizationPolicy,
        PolicyKind::MeshTls,
        PolicyKind::Network,
        PolicyKind::HttpRoute,
        PolicyKind::RateLimit,
    ];

    /// Whether a cluster may lack the kind's CRD and still be served: HTTPRoute and
    /// HTTPLocalRateLimitPolicy came after the others, and helm never upgrades `crds/`.
    /// Without the CRD there can be no such objects, so policy is the same as with none; the
    /// others' absence makes lookups wait.
    pub const fn optional(self) -> bool {
        matches!(self, PolicyKind::HttpRoute | PolicyKind::RateLimit)
    }

    /// The version it is served in: Linkerd's newest for each kind.
    pub const fn version(self) -> &'static str {
        match self {
            PolicyKind::HttpRoute => ROUTE_VERSION,
            PolicyKind::RateLimit => RATE_LIMIT_VERSION,
            _ => VERSION,
        }
    }

    pub const fn kind(self) -> &'static str {
        match self {
            PolicyKind::Server => "Server",
            PolicyKind::AuthorizationPolicy => "AuthorizationPolicy",
            PolicyKind::MeshTls => "MeshTLSAuthentication",
            PolicyKind::Network => "NetworkAuthentication",
            PolicyKind::HttpRoute => "HTTPRoute",
            PolicyKind::RateLimit => RATE_LIMIT_KIND,
        }
    }

    pub const fn plural(self) -> &'static str {
        match self {
            PolicyKind::Server => "servers",
            PolicyKind::AuthorizationPolicy => "authorizationpolicies",
            PolicyKind::MeshTls => "meshtlsauthentications",
            PolicyKind::Network => "networkauthentications",
            PolicyKind::HttpRoute => "httproutes",
            PolicyKind::RateLimit => "httplocalratelimitpolicies",
        }
    }

    /// The `kind` label of skipped-object metrics.
    pub const fn metric(self) -> &'static str {
        match self {
            PolicyKind::Server => "server",
            PolicyKind::AuthorizationPolicy => "authorizationpolicy",
            PolicyKind::MeshTls => "meshtlsauthentication",
            PolicyKind::Network => "networkauthentication",
            PolicyKind::HttpRoute => "httproute",
            PolicyKind::RateLimit => "httplocalratelimitpolicy",
        }
    }

    pub fn from_kind(kind: &str) -> Option<PolicyKind> {
        PolicyKind::ALL.into_iter().find(|k| k.kind() == kind)
    }
}

impl PolicyObject {
    pub fn key(&self) -> &ObjKey {
        match self {
            PolicyObject::Server(s) => &s.key,
            PolicyObject::AuthorizationPolicy(a) => &a.key,
            PolicyObject::MeshTls(m) => &m.key,
            PolicyObject::Network(n) => &n.key,
            PolicyObject::HttpRoute(r) => &r.key,
            PolicyObject::RateLimit(r) => &r.key,
        }
    }

    pub fn kind(&self) -> PolicyKind {
        match self {
            PolicyObject::Server(_) => PolicyKind::Server,
            PolicyObject::AuthorizationPolicy(_) => PolicyKind::AuthorizationPolicy,
            PolicyObject::MeshTls(_) => PolicyKind::MeshTls,
            PolicyObject::Network(_) => PolicyKind::Network,
            PolicyObject::HttpRoute(_) => PolicyKind::HttpRoute,
            PolicyObject::RateLimit(_) => PolicyKind::RateLimit,
        }
    }

    /// Converts an object of `kind` from its metadata and its `spec` (JSON as the API gives
    /// it), strictly: an HTTPRoute that cannot be enforced as written is refused (the static
    /// file, written by hand, had better say exactly what it means).
    pub fn parse(kind: PolicyKind, meta: &ObjectMeta, spec: &Value) -> Result<Self, Problem> {
        let (obj, problems) = Self::convert(kind, meta, spec)?;
        match problems.into_iter().next() {
            Some(problem) => Err(problem),
            None => Ok(obj),
        }
    }

    /// As [`PolicyObject::parse`], but an HTTPRoute that cannot be enforced is kept (it still
    /// claims its Servers: see [`super::route`]) and its problem returned beside it.
    pub fn convert(
        kind: PolicyKind,
        meta: &ObjectMeta,
        spec: &Value,
    ) -> Result<(Self, Vec<Problem>), Problem> {
        let name = meta.name.as_deref().filter(|n| !n.is_empty());
        let ns = meta.namespace.as_deref().filter(|n| !n.is_empty());
        let (Some(ns), Some(name)) = (ns, name) else {
            return Err(Problem {
                kind: kind.metric(),
                object: format!("{ns:?}/{name:?}"),
                reason: "missing_name",
                detail: "no namespace or name".into(),
            });
        };
        let key = ObjKey::new(ns, name);
        let invalid = |detail: String| Problem {
            kind: kind.metric(),
            object: key.to_string(),
            reason: "invalid_spec",
            detail,
        };
        let obj = match kind {
            PolicyKind::Server => parse_server(key.clone(), meta, spec),
            PolicyKind::AuthorizationPolicy => parse_authz(key.clone(), spec),
            PolicyKind::MeshTls => parse_mesh_tls(key.clone(), spec),
            PolicyKind::Network => parse_network(key.clone(), spec),
            PolicyKind::RateLimit => {
                RateLimitPolicy::parse(key.clone(), meta.creation_timestamp.clone(), spec)
                    .map(PolicyObject::RateLimit)
            }
            PolicyKind::HttpRoute => {
                let route = HttpRoute::parse(key.clone(), meta.creation_timestamp.clone(), spec)
                    .map_err(invalid)?;
                let problems = (route.unusable.iter())
                    .map(|u| Problem {
                        kind: kind.metric(),
                        object: key.to_string(),
                        reason: u.reason,
                        detail: u.detail.clone(),
                    })
                    .collect();
                return Ok((PolicyObject::HttpRoute(route), problems));
            }
        };
        obj.map(|o| (o, Vec::new())).map_err(invalid)
    }
}

fn spec<T: for<'de> Deserialize<'de>>(spec: &Value) -> Result<T, String> {
    T::deserialize(spec).map_err(|e| format!("spec: {e}"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerSpec {
    pod_selector: Option<LabelSelector>,
    external_workload_selector: Option<Value>,
    port: IntOrString,
    proxy_protocol: Option<String>,
    access_policy: Option<String>,
}

fn parse_server(key: ObjKey, meta: &ObjectMeta, value: &Value) -> Result<PolicyObject, String> {
    let s: ServerSpec = spec(value)?;
    let selector = match (&s.pod_selector, &s.external_workload_selector) {
        (Some(sel), _) => Selector::from_k8s(sel)?,
        (None, Some(_)) => return Err("externalWorkloadSelector is not supported".into()),
        (None, None) => return Err("spec.podSelector is required".into()),
    };
    let port = match &s.port {
        IntOrString::Int(n) => match u16::try_from(*n) {
            Ok(n) if n != 0 => PortRef::Number(n),
            _ => return Err(format!("spec.port {n} is not a port")),
        },
        IntOrString::String(name) => match name.parse::<u16>() {
            Ok(n) if n != 0 => PortRef::Number(n),
            _ if !name.is_empty() => PortRef::Name(name.clone()),
            _ => return Err("spec.port is empty".into()),
        },
    };
    let protocol = match s.proxy_protocol.as_deref().unwrap_or("unknown") {
        "unknown" => ProxyProtocol::Unknown,
        "HTTP/1" => ProxyProtocol::Http1,
        "HTTP/2" => ProxyProtocol::Http2,
        "gRPC" => ProxyProtocol::Grpc,
        "opaque" => ProxyProtocol::Opaque,
        "TLS" => ProxyProtocol::Tls,
        other => {
            return Err(format!(
                "spec.proxyProtocol {other:?} is not one of unknown, HTTP/1, HTTP/2, gRPC, opaque, TLS"
            ));
        }
    };
    let access_policy = match &s.access_policy {
        None => DefaultPolicy::Deny,
        Some(p) => p.parse().map_err(|e| format!("spec.accessPolicy: {e}"))?,
    };
    Ok(PolicyObject::Server(Server {
        key,
        created: meta.creation_timestamp.clone(),
        selector,
        port,
        protocol,
        access_policy,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Ref {
    #[serde(default)]
    group: Option<String>,
    kind: String,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthzSpec {
    target_ref: Ref,
    #[serde(default)]
    required_authentication_refs: Vec<Ref>,
}

/// Whether a reference's group is `want` (absent counts as the core group `""`).
fn group_is(r: &Ref, want: &str) -> bool {
    r.group.as_deref().unwrap_or_default() == want
}

fn parse_authz(key: ObjKey, value: &Value) -> Result<PolicyObject, String> {
    let s: AuthzSpec = spec(value)?;
    let t = &s.target_ref;
    let target = if t.kind.eq_ignore_ascii_case("Server") && group_is(t, GROUP) {
        AuthzTarget::Server(t.name.clone())
    } else if t.kind.eq_ignore_ascii_case("Namespace") && group_is(t, "") {
        if t.name != key.namespace {
            return Err(format!(
                "targetRef names namespace {:?}; a policy can only target its own namespace",
                t.name
            ));
        }
        AuthzTarget::Namespace
    } else if let Some((group, kind)) =
        [(GROUP, "HTTPRoute"), (GATEWAY_GROUP, "HTTPRoute"), (GATEWAY_GROUP, GRPC_ROUTE_KIND)]
            .into_iter()
            .find(|(g, k)| t.kind.eq_ignore_ascii_case(k) && group_is(t, g))
    {
        AuthzTarget::Route(RouteRef { group, kind, name: t.name.clone() })
    } else {
        return Err(format!(
            "targetRef {}/{} is not supported (a Server or HTTPRoute of {GROUP}, an HTTPRoute or GRPCRoute of {GATEWAY_GROUP}, or the Namespace)",
            t.group.as_deref().unwrap_or_default(),
            t.kind
        ));
    };
    let (mut network, mut mesh_tls, mut service_accounts) = (None, None, Vec::new());
    for r in &s.required_authentication_refs {
        let ns = r.namespace.clone().filter(|n| !n.is_empty()).unwrap_or(key.namespace.clone());
        let target = ObjKey::new(ns, r.name.clone());
        let slot = if r.kind.eq_ignore_ascii_case("MeshTLSAuthentication") && group_is(r, GROUP) {
            &mut mesh_tls
        } else if r.kind.eq_ignore_ascii_case("NetworkAuthentication") && group_is(r, GROUP) {
            &mut network
        } else if r.kind.eq_ignore_ascii_case("ServiceAccount") && group_is(r, "") {
            service_accounts.push(target);
            continue;
        } else {
            return Err(format!(
                "requiredAuthenticationRefs: {}/{} is not supported",
                r.group.as_deref().unwrap_or_default(),
                r.kind
            ));
        };
        // The proxy API has one network list and one identity list per authorization: two
        // of a kind (which must both hold) cannot be said, so they are refused, as Linkerd
        // does.
        if slot.replace(target).is_some() {
            return Err(format!("requiredAuthenticationRefs: more than one {}", r.kind));
        }
    }
    if mesh_tls.is_some() && !service_accounts.is_empty() {
        return Err(
            "requiredAuthenticationRefs: a MeshTLSAuthentication and ServiceAccounts together"
                .into(),
        );
    }
    Ok(PolicyObject::AuthorizationPolicy(AuthorizationPolicy {
        key,
        target,
        network,
        mesh_tls,
        service_accounts,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshTlsSpec {
    #[serde(default)]
    identities: Option<Vec<String>>,
    #[serde(default)]
    identity_refs: Option<Vec<Ref>>,
}

fn parse_mesh_tls(key: ObjKey, value: &Value) -> Result<PolicyObject, String> {
    let s: MeshTlsSpec = spec(value)?;
    let mut identities = Vec::new();
    for id in s.identities.iter().flatten() {
        let id = id.trim();
        let m = if id == "*" {
            IdentityMatch::Suffix(Vec::new())
        } else if let Some(suffix) = id.strip_prefix("*.") {
            if suffix.is_empty() || suffix.split('.').any(str::is_empty) {
                return Err(format!("identities: {id:?} is not a name or *.suffix"));
            }
            IdentityMatch::Suffix(suffix.split('.').map(String::from).collect())
        } else if id.is_empty() || id.contains('*') {
            return Err(format!("identities: {id:?} is not a name or *.suffix"));
        } else {
            IdentityMatch::Exact(id.to_string())
        };
        identities.push(m);
    }
    for r in s.identity_refs.iter().flatten() {
        let m = if r.kind.eq_ignore_ascii_case("ServiceAccount") && group_is(r, "") {
            let ns = r.namespace.clone().filter(|n| !n.is_empty()).unwrap_or(key.namespace.clone());
            IdentityMatch::ServiceAccount(ObjKey::new(ns, r.name.clone()))
        } else if r.kind.eq_ignore_ascii_case("Namespace") && group_is(r, "") {
            IdentityMatch::Namespace(r.name.clone())
        } else {
            return Err(format!("identityRefs: kind {:?} is not supported", r.kind));
        };
        identities.push(m);
    }
    if identities.is_empty() {
        return Err("one of spec.identities and spec.identityRefs must list something".into());
    }
    identities.sort();
    identities.dedup();
    Ok(PolicyObject::MeshTls(MeshTls { key, identities }))
}

#[derive(Deserialize)]
struct NetworkSpec {
    networks: Vec<NetworkItem>,
}

#[derive(Deserialize)]
struct NetworkItem {
    cidr: String,
    #[serde(default)]
    except: Option<Vec<String>>,
}

fn parse_network(key: ObjKey, value: &Value) -> Result<PolicyObject, String> {
    let s: NetworkSpec = spec(value)?;
    if s.networks.is_empty() {
        return Err("spec.networks is empty".into());
    }
    let mut networks = Vec::new();
    for n in s.networks {
        let net = parse_cidr(&n.cidr).map_err(|e| format!("networks: {e}"))?;
        let except = n
            .except
            .iter()
            .flatten()
            .map(|e| parse_cidr(e).map_err(|e| format!("networks except: {e}")))
            .collect::<Result<_, _>>()?;
        networks.push(Network { net, except });
    }
    Ok(PolicyObject::Network(NetworkAuthn { key, networks }))
}
