//! Route status: what the destination service says on the routes it serves, as Linkerd's
//! policy controller does — a Gateway API `RouteParentStatus` in `status.parents` for each
//! parent reference it handles (a `policy.weft.dev` Server; a core Service of a Gateway API
//! HTTPRoute, which it splits or gives per-route timeouts and retries), with the conditions
//! `Accepted` and `ResolvedRefs`. Pure: the routes as the watches report them in, the
//! `status.parents` each should have out; the writer ([`crate::k8s::status`]) patches those
//! that differ, when this replica leads.
//!
//! Entries of other controllers (another `controllerName`) are kept as they are and where they
//! are: `status.parents` is an atomic list, so a write carries all of it, and keeping others'
//! order means two controllers never undo each other's writes. A condition keeps its
//! `lastTransitionTime` while its status stays the same, so a route whose status is already
//! right computes to exactly what it has, and is not written again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::{
    model::{ObjKey, Problem},
    policy::{
        model::{GROUP, ProxyProtocol},
        route::{Unusable, grpc::GRPC_ROUTE_KIND},
    },
    split::{Apex, GATEWAY_GROUP, SplitRoute},
};

/// Our `controllerName` in the entries we write.
pub const CONTROLLER_NAME: &str = "weft.dev/policy-controller";
/// The Gateway API's limit on `status.parents`.
const MAX_PARENTS: usize = 32;
/// Messages quote parts of the route (a host name, a regex); the API allows 32768 bytes.
const MAX_MESSAGE: usize = 1024;

/// The route kinds whose status the destination writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    /// `policy.weft.dev` HTTPRoute.
    PolicyHttp,
    /// Gateway API HTTPRoute.
    GatewayHttp,
    /// Gateway API GRPCRoute.
    GatewayGrpc,
}

impl RouteKind {
    pub fn group(self) -> &'static str {
        match self {
            RouteKind::PolicyHttp => GROUP,
            RouteKind::GatewayHttp | RouteKind::GatewayGrpc => GATEWAY_GROUP,
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            RouteKind::PolicyHttp | RouteKind::GatewayHttp => "HTTPRoute",
            RouteKind::GatewayGrpc => GRPC_ROUTE_KIND,
        }
    }

    fn is_grpc(self) -> bool {
        self == RouteKind::GatewayGrpc
    }
}

/// One route object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteId {
    pub kind: RouteKind,
    pub key: ObjKey,
}

impl std::fmt::Display for RouteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{} {}", self.kind.kind(), self.kind.group(), self.key)
    }
}

/// Why a condition is False: a Gateway API reason and a message for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

fn refusal(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { reason, message: message.into() }
}

/// What a handled parent reference names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParentTarget {
    Server(ObjKey),
    /// The Service and port (`None`: every port) the route would split.
    Service(Apex),
}

/// A parent reference the destination handles.
#[derive(Clone, Debug, PartialEq)]
pub struct Parent {
    /// As written in the spec (the API server's defaults included): the entry's `parentRef`.
    pub parent_ref: Value,
    pub target: ParentTarget,
    /// Why this reference cannot be attached to, whether its parent exists or not (another
    /// namespace, `sectionName`, a bad port).
    pub refused: Option<Refusal>,
    /// Why the route cannot be served by this parent once it exists (a filter the proxy
    /// cannot apply; a route that cannot be a split).
    pub unserved: Option<Refusal>,
}

/// A backend reference: a Service of the route's namespace, or one that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Service(ObjKey),
    Refused(Refusal),
}

/// A route as its status needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub generation: Option<i64>,
    pub resource_version: Option<String>,
    pub parents: Vec<Parent>,
    pub backends: Vec<Backend>,
    /// `status.parents` as the object has it.
    pub observed: Vec<Value>,
}

/// What the conditions depend on besides the route: whether its parents and backends exist.
pub trait Cluster {
    /// A Server's protocol; `None`: there is no such Server.
    fn server(&self, key: &ObjKey) -> Option<ProxyProtocol>;
    fn service_exists(&self, key: &ObjKey) -> bool;
    /// The older route that wins over `route` on `apex` (both split it).
    fn split_rival(&self, route: &ObjKey, apex: &Apex) -> Option<ObjKey>;
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    parent_refs: Vec<Value>,
    #[serde(default)]
    rules: Option<Vec<RuleRefs>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleRefs {
    #[serde(default)]
    backend_refs: Vec<RefSpec>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefSpec {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    section_name: Option<String>,
    #[serde(default)]
    port: Option<i64>,
}

/// What the policy and split conversions decided about a route, which its status reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct Decisions<'a> {
    /// Why its Server parents do not serve it (`unsupported_filter`, `invalid_spec`, ...).
    pub unusable: Option<&'a Unusable>,
    /// A Gateway API HTTPRoute's split, and the problems its conversion found.
    pub split: Option<(&'a SplitRoute, &'a [Problem])>,
}

impl Route {
    /// Reads a route object. `None`: no namespace or name, or parent references that cannot
    /// be read (the watches count those as skipped); such a route gets no status.
    pub fn read(
        kind: RouteKind,
        meta: &ObjectMeta,
        spec: &Value,
        status: &Value,
        decisions: Decisions<'_>,
    ) -> Option<(RouteId, Route)> {
        let ns = meta.namespace.as_deref().filter(|n| !n.is_empty())?;
        let name = meta.name.as_deref().filter(|n| !n.is_empty())?;
        let id = RouteId { kind, key: ObjKey::new(ns, name) };
        let spec = Spec::deserialize(spec).ok()?;
        let mut parents = Vec::new();
        for raw in &spec.parent_refs {
            let Ok(p) = RefSpec::deserialize(raw) else { continue };
            if let Some(parent) = parent(kind, ns, raw, &p, decisions) {
                parents.push(parent);
            }
        }
        let backends = (spec.rules.iter().flatten())
            .flat_map(|r| &r.backend_refs)
            .map(|b| backend(ns, b))
            .collect();
        let observed = match status.get("parents") {
            Some(Value::Array(list)) => list.clone(),
            _ => Vec::new(),
        };
        let route = Route {
            generation: meta.generation,
            resource_version: meta.resource_version.clone(),
            parents,
            backends,
            observed,
        };
        Some((id, route))
    }

    /// The `status.parents` the route should have: the others' entries as they are, ours
    /// (one per handled parent reference) where they were, new ones after them.
    pub fn desired(&self, id: &RouteId, cluster: &dyn Cluster, now: &str) -> Vec<Value> {
        let resolved = self.resolved_refs(cluster);
        let mut ours: Vec<Option<Value>> = self
            .parents
            .iter()
            .map(|p| {
                let old =
                    self.observed.iter().find(|e| is_ours(e) && e["parentRef"] == p.parent_ref);
                let accepted = accepted(id, p, cluster);
                let conditions = [("Accepted", accepted), ("ResolvedRefs", resolved.clone())]
                    .map(|(kind, c)| condition(kind, &c, self.generation, old, now));
                Some(json!({
                    "parentRef": p.parent_ref,
                    "controllerName": CONTROLLER_NAME,
                    "conditions": conditions,
                }))
            })
            .collect();
        let mut out = Vec::new();
        for entry in &self.observed {
            if !is_ours(entry) {
                out.push(entry.clone());
                continue;
            }
            // Ours stays where it was (if its parent is still handled); stale ones go.
            let slot = self.parents.iter().position(|p| entry["parentRef"] == p.parent_ref);
            if let Some(new) = slot.and_then(|i| ours[i].take()) {
                out.push(new);
            }
        }
        out.extend(ours.into_iter().flatten());
        out.truncate(MAX_PARENTS);
        out
    }

    fn resolved_refs(&self, cluster: &dyn Cluster) -> Result<(), Refusal> {
        for b in &self.backends {
            match b {
                Backend::Refused(r) => return Err(r.clone()),
                Backend::Service(key) if !cluster.service_exists(key) => {
                    return Err(refusal(
                        "BackendNotFound",
                        format!("backendRef Service {} does not exist", key.name),
                    ));
                }
                Backend::Service(_) => {}
            }
        }
        Ok(())
    }
}

fn is_ours(entry: &Value) -> bool {
    entry["controllerName"] == CONTROLLER_NAME
}

fn parent(
    kind: RouteKind,
    ns: &str,
    raw: &Value,
    p: &RefSpec,
    decisions: Decisions<'_>,
) -> Option<Parent> {
    let group = p.group.as_deref().unwrap_or(kind.group());
    let parent_ns = p.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(ns);
    let key = ObjKey::new(parent_ns, &p.name);
    let is_server =
        p.kind.as_deref().is_some_and(|k| k.eq_ignore_ascii_case("Server")) && group == GROUP;
    // As the split reads them: no group, "" or "core".
    let is_service = kind == RouteKind::GatewayHttp
        && matches!(p.group.as_deref(), None | Some("" | "core"))
        && p.kind.as_deref() == Some("Service");
    if is_server {
        let refused = (parent_ns != ns).then(|| {
            refusal(
                "NotAllowedByListeners",
                format!("Server {key} is in another namespace: a route attaches to the Servers of its own namespace"),
            )
        });
        let unserved = decisions.unusable.map(|u| {
            refusal("UnsupportedValue", format!("{}: {}", u.reason.replace('_', " "), u.detail))
        });
        let target = ParentTarget::Server(key);
        return Some(Parent { parent_ref: raw.clone(), target, refused, unserved });
    }
    if !is_service {
        return None;
    }
    let port = match p.port {
        None => Ok(None),
        Some(v) => u16::try_from(v).ok().filter(|p| *p != 0).map(Some).ok_or(v),
    };
    let refused = if parent_ns != ns {
        Some(refusal(
            "UnsupportedValue",
            format!("Service {key} is in another namespace: consumer routes are not supported"),
        ))
    } else if p.section_name.is_some() {
        Some(refusal("UnsupportedValue", "sectionName is not supported on a Service; use port"))
    } else if let Err(v) = port {
        Some(refusal("UnsupportedValue", format!("port {v} is not a port")))
    } else {
        None
    };
    let apex = Apex { service: key, port: port.unwrap_or_default() };
    let unserved = match (decisions.split, port) {
        (_, Err(_)) | (None, _) => None,
        (Some((split, problems)), Ok(_)) => {
            (!split.apexes.contains(&apex)).then(|| {
                // The route-wide refusal is the last problem its conversion found.
                let why = (problems.iter().rev())
                    .find(|p| matches!(p.reason, "unsupported_route" | "invalid_route"))
                    .map_or_else(
                        || "the route cannot be a traffic split".into(),
                        |p| p.detail.clone(),
                    );
                refusal("UnsupportedValue", why)
            })
        }
    };
    Some(Parent { parent_ref: raw.clone(), target: ParentTarget::Service(apex), refused, unserved })
}

fn backend(ns: &str, b: &RefSpec) -> Backend {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !(matches!(group, "" | "core") && kind == "Service") {
        let g = if group.is_empty() { "core" } else { group };
        return Backend::Refused(refusal(
            "InvalidKind",
            format!("backendRef {g}/{kind} {}: only Services can be backends", b.name),
        ));
    }
    match b.namespace.as_deref().filter(|n| !n.is_empty() && *n != ns) {
        Some(other) => Backend::Refused(refusal(
            "RefNotPermitted",
            format!(
                "backendRef Service {other}/{}: backends in other namespaces are not supported",
                b.name
            ),
        )),
        None => Backend::Service(ObjKey::new(ns, &b.name)),
    }
}

fn accepted(id: &RouteId, p: &Parent, cluster: &dyn Cluster) -> Result<(), Refusal> {
    let kind = id.kind;
    if let Some(r) = &p.refused {
        return Err(r.clone());
    }
    match &p.target {
        ParentTarget::Server(key) => {
            let Some(protocol) = cluster.server(key) else {
                return Err(refusal(
                    "NoMatchingParent",
                    format!("Server {} does not exist", key.name),
                ));
            };
            // A gRPC Server takes GRPCRoutes only, the others HTTPRoutes only, as in Linkerd.
            if (protocol == ProxyProtocol::Grpc) != kind.is_grpc() {
                let takes = if kind.is_grpc() { "HTTPRoutes" } else { "GRPCRoutes" };
                return Err(refusal(
                    "NotAllowedByListeners",
                    format!("Server {} takes {takes} only", key.name),
                ));
            }
        }
        ParentTarget::Service(apex) if !cluster.service_exists(&apex.service) => {
            return Err(refusal(
                "NoMatchingParent",
                format!("Service {} does not exist", apex.service.name),
            ));
        }
        ParentTarget::Service(_) => {}
    }
    if let Some(r) = &p.unserved {
        return Err(r.clone());
    }
    // Of two splits of one Service port the oldest applies (Linkerd's reason for a route
    // that loses a conflict).
    if let ParentTarget::Service(apex) = &p.target
        && let Some(older) = cluster.split_rival(&id.key, apex)
    {
        return Err(refusal(
            "RouteReasonConflicted",
            format!(
                "HTTPRoute {} also splits Service {} and is older (the oldest creationTimestamp, then name, wins)",
                older.name, apex.service.name
            ),
        ));
    }
    Ok(())
}

/// One condition; its `lastTransitionTime` is kept from our old entry while the status is the
/// same.
fn condition(
    kind: &str,
    result: &Result<(), Refusal>,
    generation: Option<i64>,
    old: Option<&Value>,
    now: &str,
) -> Value {
    let (status, reason, message) = match result {
        Ok(()) => ("True", kind, ""),
        Err(r) => ("False", r.reason, r.message.as_str()),
    };
    let mut end = message.len().min(MAX_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message[..end];
    let old = old
        .and_then(|e| e["conditions"].as_array())
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind));
    let since = match old {
        Some(c) if c["status"] == status && c["lastTransitionTime"].is_string() => {
            c["lastTransitionTime"].clone()
        }
        _ => json!(now),
    };
    let mut c = json!({
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    });
    if let Some(g) = generation {
        c["observedGeneration"] = json!(g);
    }
    c
}

/// A write the status needs: the whole `status.parents`, for the version it was computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub id: RouteId,
    pub resource_version: Option<String>,
    pub parents: Vec<Value>,
}

/// The routes whose status is written, fed by the watches; [`SharedStatuses::changed`]
/// wakes the writer.
#[derive(Debug, Default)]
pub struct RouteStatuses {
    routes: HashMap<RouteId, Route>,
}

impl RouteStatuses {
    pub fn apply(&mut self, id: RouteId, route: Route) {
        self.routes.insert(id, route);
    }

    pub fn delete(&mut self, id: &RouteId) {
        self.routes.remove(id);
    }

    /// Replaces all routes of a kind (a watch listed them, or their CRD is missing).
    pub fn reset(&mut self, kind: RouteKind, all: Vec<(RouteId, Route)>) {
        self.routes.retain(|id, _| id.kind != kind);
        self.routes.extend(all.into_iter().filter(|(id, _)| id.kind == kind));
    }

    /// What a successful write left on the object (unless the watch has told of a newer
    /// version already).
    pub fn observe(
        &mut self,
        id: &RouteId,
        resource_version: Option<String>,
        observed: Vec<Value>,
    ) {
        if let Some(r) = self.routes.get_mut(id)
            && version(&r.resource_version) <= version(&resource_version)
        {
            r.resource_version = resource_version;
            r.observed = observed;
        }
    }

    pub fn get(&self, id: &RouteId) -> Option<&Route> {
        self.routes.get(id)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The routes whose status differs from what they should have, in a stable order.
    pub fn pending(&self, cluster: &dyn Cluster, now: &str) -> Vec<Pending> {
        let mut out: Vec<Pending> = (self.routes.iter())
            .filter_map(|(id, r)| {
                let parents = r.desired(id, cluster, now);
                (parents != r.observed).then(|| Pending {
                    id: id.clone(),
                    resource_version: r.resource_version.clone(),
                    parents,
                })
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

/// resourceVersions are opaque; numeric ones (every API server's) order writes, others
/// count as newest.
fn version(rv: &Option<String>) -> u64 {
    rv.as_deref().map_or(0, |v| v.parse().unwrap_or(u64::MAX))
}

/// The route statuses shared by the watches (writers) and the status writer (reader).
#[derive(Clone, Debug, Default)]
pub struct SharedStatuses {
    inner: Arc<Mutex<RouteStatuses>>,
    changed: Arc<Notify>,
}

impl SharedStatuses {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, RouteStatuses> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Something a status depends on changed (a route, a Server, a Service).
    pub fn changed(&self) {
        self.changed.notify_one();
    }

    pub async fn wait_changed(&self) {
        self.changed.notified().await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
