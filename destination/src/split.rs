//! Traffic splits (canary releases): a service whose requests proxies spread over other
//! services by weight, sent to them as the `dst_overrides` of the service's profile. Pure.
//!
//! Where splits come from:
//! - Kubernetes: Gateway API `HTTPRoute`s (`gateway.networking.k8s.io/v1`) whose `parentRefs`
//!   name a Service (GAMMA, the shape Flagger's `gatewayapi` provider and Argo Rollouts
//!   write): the parent Service (its `port`, else all its ports) is split across the
//!   Service `backendRefs` of the route's one rule ([`SplitRoute::from_k8s`]);
//! - the static file: its `splits:` section ([`FileSplit`]).
//!
//! A route whose rules all send to the parent Service itself (no backendRefs, or only the
//! parent on the parent's port) is no split: its rules become the profile's per-route
//! timeouts and retries ([`crate::profile::routes`]), and it claims the service ports as a
//! split would (conflicts settle the same way).
//!
//! A profile is per service and port, not per request, so only routes that send *every*
//! request of the service the same way can be splits: one rule, no matches or only
//! `PathPrefix /`, no hostnames, no filters. Anything else is skipped whole, logged and
//! counted (`destination_objects_skipped_total{kind="gateway_httproute",reason}`), never
//! half-applied; a backendRef that cannot be used (not a Service, another namespace without
//! the ReferenceGrant check that the Gateway API requires, filters) is skipped alone and the
//! others share its traffic. Only *producer* routes (in the Service's own namespace) apply:
//! a consumer route (another namespace's) applies to that namespace's clients only, which a
//! per-service profile cannot say. Several routes on one Service port: the oldest
//! (`creationTimestamp`, then name) wins, as the Gateway API settles conflicts.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Deserialize;
use serde_json::Value;

use crate::{
    model::{ObjKey, Problem},
    profile::RouteProfile,
};

/// The Gateway API's group, and the version whose HTTPRoutes are watched (objects written
/// as `v1beta1` are read through it: the CRDs serve both with one schema).
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
pub const GATEWAY_VERSION: &str = "v1";
/// The kind label of skipped routes and of the watch's errors.
pub const ROUTE_KIND: &str = "gateway_httproute";
/// The Gateway API's largest backend weight.
const MAX_WEIGHT: i64 = 1_000_000;

/// One backend of a split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub service: ObjKey,
    /// `None`: the port the split service was asked for.
    pub port: Option<u16>,
    /// Relative to the other backends' weights; 0 is sent as it is (the proxy skips it).
    pub weight: u32,
}

/// The service port a split applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Apex {
    pub service: ObjKey,
    /// `None`: every port of the service.
    pub port: Option<u16>,
}

impl Apex {
    fn covers(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    fn overlaps(&self, other: &Apex) -> bool {
        self.service == other.service
            && (self.port.is_none() || other.port.is_none() || self.port == other.port)
    }
}

/// A route as far as splitting goes: the service ports it splits and the backends. A route
/// with no apexes (attached to Gateways only, or refused) splits nothing; one with apexes
/// and no backends claims them and sends their requests to the service itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitRoute {
    pub key: ObjKey,
    /// Conflicts are settled by age.
    pub created: Option<Time>,
    pub apexes: Vec<Apex>,
    pub backends: Vec<Backend>,
    /// Per-route timeouts and retries: set when every rule sends to the parent Service
    /// itself ([`crate::profile::routes`]); such a route has no backends.
    pub profile: Option<Arc<RouteProfile>>,
}

/// What the proxy gets: `name.ns.svc.<cluster-domain>:port` and its weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightedDst {
    pub authority: String,
    pub weight: u32,
}

/// The overrides of a service asked for on `port`, in the backends' order.
pub fn overrides(backends: &[Backend], port: u16, cluster_domain: &str) -> Vec<WeightedDst> {
    let domain = cluster_domain.trim_matches('.');
    backends
        .iter()
        .map(|b| WeightedDst {
            authority: format!(
                "{}.{}.svc.{domain}:{}",
                b.service.name,
                b.service.namespace,
                b.port.unwrap_or(port)
            ),
            weight: b.weight,
        })
        .collect()
}

// The HTTPRoute spec, leniently: unknown fields are ignored, so a newer schema still reads.

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RouteSpec {
    #[serde(default)]
    parent_refs: Vec<ParentRef>,
    #[serde(default)]
    hostnames: Vec<String>,
    /// The API server defaults a missing list to one catch-all rule.
    rules: Option<Vec<Rule>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParentRef {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    section_name: Option<String>,
    port: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    matches: Vec<Match>,
    #[serde(default)]
    filters: Vec<Value>,
    #[serde(default)]
    backend_refs: Vec<BackendRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Match {
    path: Option<PathMatch>,
    #[serde(default)]
    headers: Vec<Value>,
    #[serde(default)]
    query_params: Vec<Value>,
    method: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct PathMatch {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BackendRef {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<i64>,
    weight: Option<i64>,
    #[serde(default)]
    filters: Vec<Value>,
}

/// The core group's Service (`group` `""` or `core`; absent counts as core too).
fn is_service(group: Option<&str>, kind: Option<&str>) -> bool {
    matches!(group, None | Some("" | "core")) && kind == Some("Service")
}

fn port(value: i64) -> Option<u16> {
    u16::try_from(value).ok().filter(|p| *p != 0)
}

impl Match {
    /// Every request: no conditions but a `PathPrefix /` path (the default).
    fn is_catch_all(&self) -> bool {
        let path_all = self.path.as_ref().is_none_or(|p| {
            p.kind.as_deref().is_none_or(|k| k == "PathPrefix")
                && p.value.as_deref().is_none_or(|v| v == "/")
        });
        path_all && self.headers.is_empty() && self.query_params.is_empty() && self.method.is_none()
    }
}

impl Rule {
    /// Whether every request the rule matches goes to the parent Service itself: no
    /// backendRefs, or only the parent (on the parent's port) with no filters and a weight.
    fn sends_to(&self, apexes: &BTreeSet<Apex>) -> bool {
        self.backend_refs.iter().all(|b| {
            is_service(
                Some(b.group.as_deref().unwrap_or("")),
                Some(b.kind.as_deref().unwrap_or("Service")),
            ) && b.filters.is_empty()
                && b.weight != Some(0)
                && apexes.iter().all(|a| {
                    a.service.name == b.name
                        && b.namespace.as_deref().is_none_or(|ns| ns == a.service.namespace)
                        && b.port.is_none_or(|p| a.port.is_some_and(|ap| i64::from(ap) == p))
                })
        })
    }
}

impl SplitRoute {
    /// Converts an HTTPRoute. `Err` only for an object without a namespace or name; a route
    /// that cannot be served comes back with no apexes and the problem that says why, so
    /// that it replaces (and removes) what an earlier version of it split.
    pub fn from_k8s(
        meta: &ObjectMeta,
        spec: &Value,
    ) -> Result<(SplitRoute, Vec<Problem>), Problem> {
        let name = meta.name.as_deref().filter(|n| !n.is_empty());
        let ns = meta.namespace.as_deref().filter(|n| !n.is_empty());
        let (Some(ns), Some(name)) = (ns, name) else {
            return Err(problem(
                format!("{ns:?}/{name:?}"),
                "missing_name",
                "no namespace or name",
            ));
        };
        let key = ObjKey::new(ns, name);
        let mut route = SplitRoute {
            key: key.clone(),
            created: meta.creation_timestamp.clone(),
            apexes: Vec::new(),
            backends: Vec::new(),
            profile: None,
        };
        let mut problems = Vec::new();
        let raw = spec;
        let spec: RouteSpec = match serde_json::from_value(spec.clone()) {
            Ok(s) => s,
            Err(e) => {
                problems.push(problem(&key, "invalid_route", format!("spec: {e}")));
                return Ok((route, problems));
            }
        };
        let mut apexes = BTreeSet::new();
        for p in
            spec.parent_refs.iter().filter(|p| is_service(p.group.as_deref(), p.kind.as_deref()))
        {
            let parent = ObjKey::new(p.namespace.as_deref().unwrap_or(ns), &p.name);
            if parent.namespace != ns {
                problems.push(problem(
                    &key,
                    "consumer_route",
                    format!(
                        "parent Service {parent} is in another namespace: a consumer route applies to its own namespace's clients only, which a service's profile cannot express"
                    ),
                ));
                continue;
            }
            if p.section_name.is_some() {
                problems.push(problem(
                    &key,
                    "unsupported_route",
                    format!("parent Service {parent}: sectionName is not supported; use port"),
                ));
                continue;
            }
            let port = match p.port.map(port) {
                None => None,
                Some(Some(port)) => Some(port),
                Some(None) => {
                    problems.push(problem(
                        &key,
                        "invalid_route",
                        format!("parent Service {parent}: port {:?}", p.port),
                    ));
                    continue;
                }
            };
            apexes.insert(Apex { service: parent, port });
        }
        if apexes.is_empty() {
            // Attached to Gateways only (not a mesh route), or every Service parent refused.
            return Ok((route, problems));
        }
        let refuse = |why: String, mut problems: Vec<Problem>| {
            problems.push(problem(&key, "unsupported_route", why));
            problems
        };
        if !spec.hostnames.is_empty() {
            let why = "hostnames match requests by Host: a profile applies to every request".into();
            return Ok((route, refuse(why, problems)));
        }
        if spec.rules.iter().flatten().all(|r| r.sends_to(&apexes)) {
            // Not a split: per-route timeouts and retries for the parent itself.
            let annotations = meta.annotations.clone().unwrap_or_default();
            let rules = raw.get("rules").and_then(Value::as_array).map(Vec::as_slice);
            let (profile, more) = RouteProfile::from_k8s(&key, &annotations, rules);
            problems.extend(more);
            route.profile = Some(Arc::new(profile));
            route.apexes = apexes.into_iter().collect();
            return Ok((route, problems));
        }
        let rules = spec.rules.unwrap_or_else(|| vec![Rule::default()]);
        if rules.len() > 1 {
            let why = format!(
                "{} rules: only one rule (every request split the same way) can be a split",
                rules.len()
            );
            return Ok((route, refuse(why, problems)));
        }
        let rule = rules.into_iter().next().unwrap_or_default();
        if !rule.matches.iter().all(Match::is_catch_all) {
            let why = "matches other than PathPrefix /: a split applies to every request".into();
            return Ok((route, refuse(why, problems)));
        }
        if !rule.filters.is_empty() {
            let why = "filters are not supported".into();
            return Ok((route, refuse(why, problems)));
        }
        for b in rule.backend_refs {
            let group = b.group.as_deref().unwrap_or("");
            let kind = b.kind.as_deref().unwrap_or("Service");
            let backend = ObjKey::new(b.namespace.as_deref().unwrap_or(ns), &b.name);
            let skip = |reason, detail: String| problem(&key, reason, detail);
            if !is_service(Some(group), Some(kind)) {
                let g = if group.is_empty() { "core" } else { group };
                problems.push(skip(
                    "unsupported_backend",
                    format!("backendRef {g}/{kind} {}: only Services can be backends", b.name),
                ));
                continue;
            }
            // The name goes into the authority the proxy resolves: the API server only
            // admits valid ones, but nothing checks a backendRef's name against a Service.
            if let Err(e) = weft_identity::name::check_label("backendRef name", &b.name) {
                problems.push(skip("invalid_route", format!("backendRef Service {backend}: {e}")));
                continue;
            }
            if backend.namespace != ns {
                problems.push(skip(
                    "cross_namespace_backend",
                    format!(
                        "backendRef Service {backend}: backends in other namespaces (which need a ReferenceGrant) are not supported"
                    ),
                ));
                continue;
            }
            if !b.filters.is_empty() {
                problems.push(skip(
                    "unsupported_backend",
                    format!("backendRef Service {backend}: filters are not supported"),
                ));
                continue;
            }
            let port = match b.port.map(port) {
                None => None,
                Some(Some(p)) => Some(p),
                Some(None) => {
                    problems.push(skip(
                        "invalid_route",
                        format!("backendRef Service {backend}: port {:?}", b.port),
                    ));
                    continue;
                }
            };
            let weight = match b.weight.unwrap_or(1) {
                w @ 0..=MAX_WEIGHT => w as u32,
                w => {
                    problems.push(skip(
                        "invalid_route",
                        format!("backendRef Service {backend}: weight {w} (0 to {MAX_WEIGHT})"),
                    ));
                    continue;
                }
            };
            route.backends.push(Backend { service: backend, port, weight });
        }
        route.apexes = apexes.into_iter().collect();
        Ok((route, problems))
    }

    /// Older first; the name settles equal ages (and routes without a timestamp go last).
    fn age(&self) -> (bool, Option<&Time>, &str) {
        (self.created.is_none(), self.created.as_ref(), &self.key.name)
    }
}

pub(crate) fn problem(
    object: impl std::fmt::Display,
    reason: &'static str,
    detail: impl Into<String>,
) -> Problem {
    Problem { kind: ROUTE_KIND, object: object.to_string(), reason, detail: detail.into() }
}

/// The routes by key and by the services they split, and which of them lose a conflict.
#[derive(Debug, Default)]
pub struct Splits {
    routes: HashMap<ObjKey, SplitRoute>,
    by_service: HashMap<ObjKey, BTreeSet<ObjKey>>,
    /// Routes that some older route overrides on one of their service ports: reported once
    /// when they start losing.
    losing: HashSet<ObjKey>,
}

impl Splits {
    /// Adds or replaces a route. Returns the services whose splits may have changed, and
    /// the routes that have just started to lose a conflict.
    pub fn apply(&mut self, route: SplitRoute) -> (BTreeSet<ObjKey>, Vec<Problem>) {
        let mut touched = self.remove(&route.key);
        if route.apexes.is_empty() {
            // It splits nothing, so it loses nowhere (one that does is rechecked below).
            self.losing.remove(&route.key);
        }
        for apex in &route.apexes {
            self.by_service.entry(apex.service.clone()).or_default().insert(route.key.clone());
            touched.insert(apex.service.clone());
        }
        self.routes.insert(route.key.clone(), route);
        let conflicts = self.check_conflicts(&touched);
        (touched, conflicts)
    }

    pub fn delete(&mut self, key: &ObjKey) -> BTreeSet<ObjKey> {
        self.losing.remove(key);
        let touched = self.remove(key);
        self.check_conflicts(&touched);
        touched
    }

    /// Replaces every route at once (a watch (re)listed them, or a file was reloaded).
    pub fn reset(&mut self, all: Vec<SplitRoute>) -> (BTreeSet<ObjKey>, Vec<Problem>) {
        let keep: HashSet<ObjKey> = all.iter().map(|r| r.key.clone()).collect();
        let gone: Vec<ObjKey> =
            self.routes.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        let mut touched = BTreeSet::new();
        for key in gone {
            self.losing.remove(&key);
            touched.extend(self.remove(&key));
        }
        let mut conflicts = Vec::new();
        for route in all {
            let (t, c) = self.apply(route);
            touched.extend(t);
            conflicts.extend(c);
        }
        (touched, conflicts)
    }

    fn remove(&mut self, key: &ObjKey) -> BTreeSet<ObjKey> {
        let mut touched = BTreeSet::new();
        let Some(old) = self.routes.remove(key) else { return touched };
        for apex in old.apexes {
            if let Some(set) = self.by_service.get_mut(&apex.service) {
                set.remove(key);
                if set.is_empty() {
                    self.by_service.remove(&apex.service);
                }
            }
            touched.insert(apex.service);
        }
        touched
    }

    /// The route that splits `service` on `port`: the oldest of those that cover it.
    pub fn winner(&self, service: &ObjKey, port: u16) -> Option<&SplitRoute> {
        self.by_service
            .get(service)?
            .iter()
            .filter_map(|k| self.routes.get(k))
            .filter(|r| r.apexes.iter().any(|a| &a.service == service && a.covers(port)))
            .min_by(|a, b| a.age().cmp(&b.age()))
    }

    /// The backends `service` is split across on `port` (empty: no split).
    pub fn backends(&self, service: &ObjKey, port: u16) -> &[Backend] {
        self.winner(service, port).map(|r| r.backends.as_slice()).unwrap_or_default()
    }

    /// Recomputes which routes of the touched services lose to an older route on a common
    /// service port; returns those that just started to.
    fn check_conflicts(&mut self, touched: &BTreeSet<ObjKey>) -> Vec<Problem> {
        let keys: BTreeSet<ObjKey> =
            touched.iter().filter_map(|s| self.by_service.get(s)).flatten().cloned().collect();
        let mut problems = Vec::new();
        for key in keys {
            let Some(route) = self.routes.get(&key) else { continue };
            match self.older_rival(route) {
                Some((service, older)) if !self.losing.contains(&key) => {
                    problems.push(problem(
                        &key,
                        "route_conflict",
                        format!(
                            "Service {service}: route {} is older and wins (oldest creationTimestamp, then name)",
                            older.name
                        ),
                    ));
                    self.losing.insert(key);
                }
                Some(_) => {}
                None => {
                    self.losing.remove(&key);
                }
            }
        }
        problems
    }

    /// An older route that also splits `apex` (which `route` splits or would split): the
    /// one `route` loses to there.
    pub fn rival_for(&self, route: &ObjKey, apex: &Apex) -> Option<ObjKey> {
        let route = self.routes.get(route)?;
        self.by_service
            .get(&apex.service)?
            .iter()
            .filter_map(|k| self.routes.get(k))
            .filter(|o| o.age() < route.age() && o.apexes.iter().any(|oa| oa.overlaps(apex)))
            .min_by(|a, b| a.age().cmp(&b.age()))
            .map(|o| o.key.clone())
    }

    /// A service port of `route` that an older route also splits, and that route.
    fn older_rival(&self, route: &SplitRoute) -> Option<(ObjKey, ObjKey)> {
        route.apexes.iter().find_map(|apex| {
            self.by_service
                .get(&apex.service)?
                .iter()
                .filter_map(|k| self.routes.get(k))
                .find(|o| o.age() < route.age() && o.apexes.iter().any(|oa| oa.overlaps(apex)))
                .map(|o| (apex.service.clone(), o.key.clone()))
        })
    }
}

/// A split in the static file's `splits:` section (its format: [`crate::static_source`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSplit {
    name: String,
    namespace: String,
    port: Option<u16>,
    #[serde(default)]
    backends: Vec<FileBackend>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBackend {
    name: String,
    namespace: Option<String>,
    port: Option<u16>,
    weight: u32,
}

/// The file's splits by service and port. A split with a port wins over one without on
/// that port; the same service and port twice is an error.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileSplits(BTreeMap<Apex, Vec<Backend>>);

impl FileSplits {
    pub fn parse(splits: Vec<FileSplit>) -> Result<FileSplits, String> {
        let mut out = BTreeMap::new();
        for s in splits {
            let service = ObjKey::new(&s.namespace, &s.name);
            let labels = |name: &str, ns: &str| {
                use weft_identity::name::check_label;
                check_label("name", name).and_then(|()| check_label("namespace", ns))
            };
            if let Err(e) = labels(&s.name, &s.namespace) {
                return Err(format!("split {service}: {e}"));
            }
            if s.port == Some(0) {
                return Err(format!("split {service}: port 0"));
            }
            let mut backends = Vec::new();
            for b in s.backends {
                let ns = b.namespace.unwrap_or_else(|| s.namespace.clone());
                // Names go into the authorities the proxies resolve.
                if let Err(e) = labels(&b.name, &ns) {
                    return Err(format!("split {service}: backend {ns}/{}: {e}", b.name));
                }
                if b.port == Some(0) {
                    return Err(format!("split {service}: backend {ns}/{}: port 0", b.name));
                }
                if i64::from(b.weight) > MAX_WEIGHT {
                    return Err(format!("split {service}: weight {} over {MAX_WEIGHT}", b.weight));
                }
                backends.push(Backend {
                    service: ObjKey::new(ns, b.name),
                    port: b.port,
                    weight: b.weight,
                });
            }
            let apex = Apex { service, port: s.port };
            if out.contains_key(&apex) {
                let port = s.port.map_or("every port".to_string(), |p| format!("port {p}"));
                return Err(format!("split {} ({port}) is listed twice", apex.service));
            }
            out.insert(apex, backends);
        }
        Ok(FileSplits(out))
    }

    pub fn backends(&self, service: &ObjKey, port: u16) -> &[Backend] {
        let exact = Apex { service: service.clone(), port: Some(port) };
        let any = Apex { service: service.clone(), port: None };
        self.0.get(&exact).or_else(|| self.0.get(&any)).map(Vec::as_slice).unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
