//! The static source: endpoints from a YAML file, for the demo, VMs and tests. The file is
//! re-read when its modification time or size changes (polled every second); a file that
//! does not parse is reported and counted, and the previous state is kept.
//!
//! ```yaml
//! services:
//!   - name: web                  # required
//!     namespace: prod            # required
//!     clusterIPs: [10.96.0.10]   # optional: lookups by ClusterIP:port
//!     annotations:               # optional: as on a Service (retries, timeouts, opaque ports)
//!       retry.weft.dev/http: 5xx
//!       timeout.weft.dev/request: 2s
//!       config.weft.dev/opaque-ports: "5432"
//!     ports:
//!       - port: 80               # the port clients use
//!         endpoints:
//!           - address: 127.0.0.1:8080
//!             identity: web.prod.serviceaccount.identity.weft.cluster.local  # optional: meshed
//!             protocolHint: h2   # optional: h2 (default h2 when an identity is set) | none
//!             opaqueTransportPort: 4143  # optional: reach an opaque port through this port
//!             weight: 10000      # optional
//!             labels: {pod: web-1}       # optional, added to namespace/service
//! ```
//!
//! Lookups: `web.prod.svc.<cluster-domain>:80`, a ClusterIP with a listed port, or an
//! endpoint's own address (that endpoint alone).
//!
//! Traffic splits (canary releases; what an HTTPRoute with a Service parent says in a
//! cluster, see [`crate::split`]): a service's profile lists other services, each resolved
//! by name, that proxies spread its requests over by weight (relative; 0 is sent as it is).
//!
//! ```yaml
//! splits:
//!   - name: web                  # the split service: required
//!     namespace: prod            # required
//!     port: 80                   # optional: every port (a split with the port wins on it)
//!     backends:                  # none: no split
//!       - {name: web-stable, weight: 90}            # port: the port asked for
//!       - {name: web-canary, port: 8080, weight: 10} # namespace: optional, the service's
//! ```
//!
//! Inbound policy (`InboundServerPolicies`, asked for by `<namespace>:<pod>` and port) comes
//! from four optional sections: the pods, the namespaces' default policies, and policy
//! objects and HTTP routes written exactly as they would be applied to a cluster:
//!
//! ```yaml
//! namespaces:
//!   - name: prod
//!     annotations: {config.weft.dev/default-inbound-policy: all-authenticated}
//! pods:
//!   - name: web-1                # required
//!     namespace: prod            # required
//!     labels: {app: web}         # optional: what Servers select
//!     annotations:               # optional: the pod's default policy
//!       config.weft.dev/default-inbound-policy: deny
//!     ports:                     # optional: container ports a Server may name
//!       - {name: http, containerPort: 8080}
//!     probes:                    # optional: the kubelet's HTTP GET probes (probe routes)
//!       - {port: 8080, path: /ready}
//! policies:                      # Server, AuthorizationPolicy, MeshTLSAuthentication,
//!   - apiVersion: policy.weft.dev/v1beta1   # NetworkAuthentication (v1beta1),
//!     kind: Server                          # HTTPLocalRateLimitPolicy (v1alpha1)
//!     metadata: {name: web-http, namespace: prod}
//!     spec:
//!       podSelector: {matchLabels: {app: web}}
//!       port: http
//!       proxyProtocol: HTTP/1
//!   - apiVersion: policy.weft.dev/v1alpha1
//!     kind: HTTPLocalRateLimitPolicy
//!     metadata: {name: web-rate-limit, namespace: prod}
//!     spec:
//!       targetRef: {group: policy.weft.dev, kind: Server, name: web-http}
//!       total: {requestsPerSecond: 100}
//! routes:                        # HTTPRoutes of Servers: they replace the default route
//!   - apiVersion: policy.weft.dev/v1beta3
//!     kind: HTTPRoute
//!     metadata: {name: web-metrics, namespace: prod}
//!     spec:
//!       parentRefs: [{group: policy.weft.dev, kind: Server, name: web-http}]
//!       rules: [{matches: [{path: {type: Exact, value: /metrics}, method: GET}]}]
//!   - apiVersion: gateway.networking.k8s.io/v1   # and GRPCRoutes of gRPC Servers
//!     kind: GRPCRoute
//!     metadata: {name: echo-say, namespace: prod}
//!     spec:
//!       parentRefs: [{group: policy.weft.dev, kind: Server, name: echo-grpc}]
//!       rules: [{matches: [{method: {service: weft.test.Echo, method: Say}}]}]
//! ```
//!
//! A policy object or route that does not convert fails the whole file (as a structural
//! error does), and so does a route the proxy could not enforce (a filter other than
//! `RequestHeaderModifier` and `RequestRedirect`, on a GRPCRoute other than
//! `RequestHeaderModifier`): a file is written by hand and checked at
//! once, so it had better say exactly what it means.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    metrics::{Metrics, ResultLabels},
    model::{OPAQUE_PORTS_ANNOTATION, ObjKey, PortSet},
    policy::{
        SharedPolicyIndex,
        model::{
            DEFAULT_INBOUND_POLICY_ANNOTATION, DefaultPolicy, GROUP, PodInbound, PolicyKind,
            PolicyObject,
        },
        route::{GrpcRoute, grpc::GRPC_ROUTE_KIND},
    },
    profile::{self, ProfilePolicy},
    resolve::{
        DEFAULT_WEIGHT, Discover, Endpoint, Hint, ProfileSource, Resolution, Subscriptions, Target,
    },
    split::{self, FileSplit, FileSplits, GATEWAY_GROUP, GATEWAY_VERSION},
};

const POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    services: Vec<FileService>,
    #[serde(default)]
    namespaces: Vec<FileNamespace>,
    #[serde(default)]
    pods: Vec<FilePod>,
    #[serde(default)]
    policies: Vec<serde_json::Value>,
    #[serde(default)]
    routes: Vec<serde_json::Value>,
    #[serde(default)]
    splits: Vec<FileSplit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNamespace {
    name: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePod {
    name: String,
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    ports: Vec<FileContainerPort>,
    #[serde(default)]
    probes: Vec<FileProbe>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileContainerPort {
    name: Option<String>,
    container_port: u16,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProbe {
    port: u16,
    path: String,
}

/// A policy object as `kubectl apply` takes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FilePolicy {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    #[serde(default)]
    spec: serde_json::Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileService {
    name: String,
    namespace: String,
    #[serde(default, rename = "clusterIPs")]
    cluster_ips: Vec<IpAddr>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    ports: Vec<FilePort>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePort {
    port: u16,
    #[serde(default)]
    endpoints: Vec<FileEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileEndpoint {
    address: SocketAddr,
    identity: Option<String>,
    protocol_hint: Option<FileHint>,
    opaque_transport_port: Option<u16>,
    weight: Option<u32>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FileHint {
    H2,
    None,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: serde_yaml_ng::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Default, PartialEq)]
struct StaticService {
    key: ObjKey,
    ports: BTreeMap<u16, BTreeMap<SocketAddr, Arc<Endpoint>>>,
    policy: ProfilePolicy,
    opaque_ports: Option<PortSet>,
}

/// The parsed file.
#[derive(Debug, Default, PartialEq)]
pub struct Catalog {
    services: HashMap<ObjKey, StaticService>,
    cluster_ips: HashMap<IpAddr, ObjKey>,
    endpoints: HashMap<SocketAddr, (ObjKey, u16)>,
    namespaces: HashMap<String, Option<DefaultPolicy>>,
    pods: HashMap<ObjKey, PodInbound>,
    policies: Vec<PolicyObject>,
    grpc_routes: Vec<GrpcRoute>,
    splits: FileSplits,
}

/// The default policy annotation of a pod or namespace; a bad value is a warning.
fn default_policy(
    what: &str,
    annotations: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Option<DefaultPolicy> {
    let value = annotations.get(DEFAULT_INBOUND_POLICY_ANNOTATION)?;
    value
        .parse()
        .map_err(|e| warnings.push(format!("{what}: {DEFAULT_INBOUND_POLICY_ANNOTATION}: {e}")))
        .ok()
}

impl Catalog {
    /// Parses a file's contents. Structural errors fail the whole file; an invalid
    /// annotation value is returned as a warning and ignored.
    pub fn parse(path: &Path, text: &str) -> Result<(Catalog, Vec<String>), LoadError> {
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_yaml_ng::from_str(text)
                .map_err(|source| LoadError::Parse { path: path.to_path_buf(), source })?
        };
        let invalid = |message: String| LoadError::Invalid { path: path.to_path_buf(), message };
        let mut catalog = Catalog::default();
        let mut warnings = Vec::new();
        for s in file.services {
            let key = ObjKey::new(&s.namespace, &s.name);
            if s.name.is_empty() || s.namespace.is_empty() {
                return Err(invalid(format!("service {key}: name and namespace are required")));
            }
            if catalog.services.contains_key(&key) {
                return Err(invalid(format!("service {key} is listed twice")));
            }
            let (policy, errors) = profile::parse_annotations(&s.annotations);
            warnings.extend(errors.iter().map(|e| format!("service {key}: {e}")));
            let opaque_ports = s.annotations.get(OPAQUE_PORTS_ANNOTATION).map(|v| {
                let (set, bad) = PortSet::parse(v);
                if !bad.is_empty() {
                    warnings.push(format!(
                        "service {key}: {OPAQUE_PORTS_ANNOTATION}: ignoring {bad:?}"
                    ));
                }
                set
            });
            for ip in &s.cluster_ips {
                if let Some(other) = catalog.cluster_ips.insert(*ip, key.clone()) {
                    return Err(invalid(format!("clusterIP {ip} belongs to {other} and {key}")));
                }
            }
            let mut ports = BTreeMap::new();
            for p in s.ports {
                if p.port == 0 || ports.contains_key(&p.port) {
                    return Err(invalid(format!(
                        "service {key}: port {} is zero or listed twice",
                        p.port
                    )));
                }
                let mut endpoints = BTreeMap::new();
                for e in p.endpoints {
                    let mut labels = e.labels;
                    labels.insert("namespace".into(), key.namespace.clone());
                    labels.insert("service".into(), key.name.clone());
                    let hint = match (e.protocol_hint, &e.identity) {
                        (Some(FileHint::H2), _) | (None, Some(_)) => {
                            Hint::H2 { opaque_transport: e.opaque_transport_port }
                        }
                        (Some(FileHint::None), _) | (None, None) => Hint::Unknown,
                    };
                    let endpoint = Endpoint {
                        addr: e.address,
                        weight: e.weight.unwrap_or(DEFAULT_WEIGHT),
                        labels,
                        identity: e.identity.filter(|i| !i.is_empty()),
                        hint,
                    };
                    catalog.endpoints.entry(e.address).or_insert((key.clone(), p.port));
                    endpoints.insert(e.address, Arc::new(endpoint));
                }
                ports.insert(p.port, endpoints);
            }
            catalog
                .services
                .insert(key.clone(), StaticService { key, ports, policy, opaque_ports });
        }
        for ns in file.namespaces {
            if ns.name.is_empty() {
                return Err(invalid("namespace: name is required".into()));
            }
            let policy =
                default_policy(&format!("namespace {}", ns.name), &ns.annotations, &mut warnings);
            if catalog.namespaces.insert(ns.name.clone(), policy).is_some() {
                return Err(invalid(format!("namespace {} is listed twice", ns.name)));
            }
        }
        for p in file.pods {
            let key = ObjKey::new(&p.namespace, &p.name);
            if p.name.is_empty() || p.namespace.is_empty() {
                return Err(invalid(format!("pod {key}: name and namespace are required")));
            }
            let mut inbound = PodInbound {
                labels: p.labels,
                default_policy: default_policy(
                    &format!("pod {key}"),
                    &p.annotations,
                    &mut warnings,
                ),
                ..Default::default()
            };
            for port in p.ports {
                if port.container_port == 0 {
                    return Err(invalid(format!("pod {key}: containerPort 0")));
                }
                if let Some(name) = port.name.filter(|n| !n.is_empty()) {
                    inbound.named_ports.insert(name, port.container_port);
                }
            }
            for probe in p.probes {
                if probe.port == 0 || !probe.path.starts_with('/') {
                    return Err(invalid(format!(
                        "pod {key}: probe {}:{:?} needs a port and a path starting with /",
                        probe.port, probe.path
                    )));
                }
                inbound.probes.entry(probe.port).or_default().insert(probe.path);
            }
            if catalog.pods.insert(key.clone(), inbound).is_some() {
                return Err(invalid(format!("pod {key} is listed twice")));
            }
        }
        let mut seen = std::collections::HashSet::new();
        let routes = file.routes.into_iter().enumerate().map(|(i, v)| ("routes", i, v, true));
        let policies =
            file.policies.into_iter().enumerate().map(|(i, v)| ("policies", i, v, false));
        for (section, i, value, route) in policies.chain(routes) {
            if route && value.get("kind").and_then(|k| k.as_str()) == Some(GRPC_ROUTE_KIND) {
                let r =
                    parse_grpc_route(value).map_err(|e| invalid(format!("{section}[{i}]: {e}")))?;
                if catalog.grpc_routes.iter().any(|o| o.key == r.key) {
                    return Err(invalid(format!(
                        "{section}[{i}]: {GRPC_ROUTE_KIND} {} is listed twice",
                        r.key
                    )));
                }
                catalog.grpc_routes.push(r);
                continue;
            }
            let object =
                parse_policy(value, route).map_err(|e| invalid(format!("{section}[{i}]: {e}")))?;
            if !seen.insert((object.kind(), object.key().clone())) {
                return Err(invalid(format!(
                    "{section}[{i}]: {} {} is listed twice",
                    object.kind().kind(),
                    object.key()
                )));
            }
            catalog.policies.push(object);
        }
        catalog.splits = FileSplits::parse(file.splits).map_err(invalid)?;
        Ok((catalog, warnings))
    }

    pub fn resolve(&self, target: &Target, cluster_domain: &str) -> Resolution {
        match target {
            Target::Service { key, port } => self.resolve_service(key, *port, cluster_domain),
            Target::Addr(addr) => {
                if let Some(key) = self.cluster_ips.get(&addr.ip()) {
                    return self.resolve_service(key, addr.port(), cluster_domain);
                }
                let Some((key, port)) = self.endpoints.get(addr) else {
                    return Resolution::not_found();
                };
                let Some(ep) = self.services.get(key).and_then(|s| s.ports.get(port)?.get(addr))
                else {
                    return Resolution::not_found();
                };
                Resolution {
                    exists: true,
                    labels: [("namespace".to_string(), key.namespace.clone())].into(),
                    endpoints: [(*addr, ep.clone())].into(),
                    profile: ProfileSource { endpoint: Some(ep.clone()), ..Default::default() },
                }
            }
            Target::External(_) => Resolution::not_found(),
        }
    }

    fn resolve_service(&self, key: &ObjKey, port: u16, cluster_domain: &str) -> Resolution {
        let Some(svc) = self.services.get(key) else { return Resolution::not_found() };
        Resolution {
            exists: true,
            labels: [
                ("namespace".to_string(), key.namespace.clone()),
                ("service".to_string(), key.name.clone()),
            ]
            .into(),
            endpoints: svc.ports.get(&port).cloned().unwrap_or_default(),
            profile: ProfileSource {
                fqn: format!(
                    "{}.{}.svc.{}",
                    key.name,
                    key.namespace,
                    cluster_domain.trim_matches('.')
                ),
                policy: svc.policy.clone(),
                route_profile: None,
                opaque: svc.opaque_ports.as_ref().is_some_and(|p| p.contains(port)),
                dst_overrides: split::overrides(
                    self.splits.backends(key, port),
                    port,
                    cluster_domain,
                ),
                endpoint: None,
            },
        }
    }
}

/// An object of the `routes:` section (`route`: HTTPRoutes only) or of `policies:` (the
/// other kinds).
fn parse_policy(value: serde_json::Value, route: bool) -> Result<PolicyObject, String> {
    let p: FilePolicy = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let kind = match PolicyKind::from_kind(&p.kind) {
        Some(PolicyKind::HttpRoute) if route => PolicyKind::HttpRoute,
        Some(PolicyKind::HttpRoute) => return Err("HTTPRoutes go in the routes: section".into()),
        Some(kind) if !route => kind,
        _ if route => return Err(format!("kind {:?} is not HTTPRoute or GRPCRoute", p.kind)),
        _ => {
            return Err(format!(
                "kind {:?} is not one of Server, AuthorizationPolicy, MeshTLSAuthentication, NetworkAuthentication, HTTPLocalRateLimitPolicy",
                p.kind
            ));
        }
    };
    let want = format!("{GROUP}/{}", kind.version());
    if p.api_version != want {
        return Err(format!("apiVersion {:?} is not {want}", p.api_version));
    }
    PolicyObject::parse(kind, &p.metadata, &p.spec).map_err(|e| e.to_string())
}

/// A GRPCRoute of the `routes:` section, strictly: one the proxy could not enforce as
/// written is refused, as an HTTPRoute is.
fn parse_grpc_route(value: serde_json::Value) -> Result<GrpcRoute, String> {
    let p: FilePolicy = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let want = format!("{GATEWAY_GROUP}/{GATEWAY_VERSION}");
    if p.api_version != want {
        return Err(format!("apiVersion {:?} is not {want}", p.api_version));
    }
    let name = p.metadata.name.clone().filter(|n| !n.is_empty());
    let ns = p.metadata.namespace.clone().filter(|n| !n.is_empty());
    let (Some(ns), Some(name)) = (ns, name) else {
        return Err("metadata: no namespace or name".into());
    };
    let route = GrpcRoute::parse(ObjKey::new(ns, name), None, &p.spec)?;
    match &route.unusable {
        Some(u) => Err(format!("{}: {}", u.reason, u.detail)),
        None => Ok(route),
    }
}

#[derive(Debug)]
struct Inner {
    catalog: Catalog,
    subs: Subscriptions,
}

/// The static source: the current catalog and the streams following it.
#[derive(Clone, Debug)]
pub struct StaticIndex {
    inner: Arc<Mutex<Inner>>,
    cluster_domain: Arc<str>,
    policy: SharedPolicyIndex,
}

impl StaticIndex {
    /// Serves `catalog`, and gives its pods and policies to `policy`.
    pub fn new(catalog: Catalog, cluster_domain: &str, policy: SharedPolicyIndex) -> Self {
        set_policy(&policy, &catalog);
        Self {
            inner: Arc::new(Mutex::new(Inner { catalog, subs: Subscriptions::default() })),
            cluster_domain: cluster_domain.into(),
            policy,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Swaps in a new catalog and pushes what changed to the followed targets.
    pub fn replace(&self, catalog: Catalog) {
        let mut inner = self.lock();
        set_policy(&self.policy, &catalog);
        let Inner { catalog: current, subs } = &mut *inner;
        *current = catalog;
        subs.refresh_all(|t| current.resolve(t, &self.cluster_domain));
    }
}

fn set_policy(policy: &SharedPolicyIndex, catalog: &Catalog) {
    let mut policy = policy.lock();
    policy.set_namespaces(catalog.namespaces.clone());
    policy.set_pods(catalog.pods.clone());
    for kind in PolicyKind::ALL {
        policy.reset(kind, catalog.policies.clone());
    }
    policy.reset_grpc_routes(catalog.grpc_routes.clone());
}

impl Discover for StaticIndex {
    fn resolve(&self, target: &Target) -> Option<watch::Receiver<Arc<Resolution>>> {
        let mut inner = self.lock();
        let Inner { catalog, subs } = &mut *inner;
        subs.subscribe(target, || catalog.resolve(target, &self.cluster_domain))
    }
}

/// The file's identity for change detection.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Reads and parses the file, logging warnings and counting the result.
pub fn load(path: &Path, metrics: &Metrics) -> Result<Catalog, LoadError> {
    let result = std::fs::read_to_string(path)
        .map_err(|source| LoadError::Read { path: path.to_path_buf(), source })
        .and_then(|text| Catalog::parse(path, &text));
    let label = if result.is_ok() { "ok" } else { "error" };
    metrics.static_loads.get_or_create(&ResultLabels { result: label }).inc();
    let (catalog, warnings) = result?;
    for w in warnings {
        warn!(path = %path.display(), "{w}");
        metrics.skip(&crate::model::Problem {
            kind: "static",
            object: path.display().to_string(),
            reason: "invalid_annotation",
            detail: w,
        });
    }
    Ok(catalog)
}

/// Re-reads the file whenever it changes; keeps the old catalog when the new one is bad.
pub async fn watch_file(path: PathBuf, index: StaticIndex, metrics: Metrics) {
    let mut last = stamp(&path);
    let mut interval = tokio::time::interval(POLL_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        let (p, m) = (path.clone(), metrics.clone());
        let loaded = tokio::task::spawn_blocking(move || load(&p, &m)).await;
        match loaded {
            Ok(Ok(catalog)) => {
                info!(
                    path = %path.display(),
                    services = catalog.services.len(),
                    pods = catalog.pods.len(),
                    policies = catalog.policies.len(),
                    "static file reloaded"
                );
                index.replace(catalog);
            }
            Ok(Err(error)) => {
                warn!(%error, "static file not reloaded; keeping the previous endpoints")
            }
            Err(error) => warn!(%error, "static file reload failed"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
