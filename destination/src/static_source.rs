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
//!   - apiVersion: policy.weft.dev/v1beta1   # NetworkAuthentication
//!     kind: Server
//!     metadata: {name: web-http, namespace: prod}
//!     spec:
//!       podSelector: {matchLabels: {app: web}}
//!       port: http
//!       proxyProtocol: HTTP/1
//! routes:                        # HTTPRoutes of Servers: they replace the default route
//!   - apiVersion: policy.weft.dev/v1beta3
//!     kind: HTTPRoute
//!     metadata: {name: web-metrics, namespace: prod}
//!     spec:
//!       parentRefs: [{group: policy.weft.dev, kind: Server, name: web-http}]
//!       rules: [{matches: [{path: {type: Exact, value: /metrics}, method: GET}]}]
//! ```
//!
//! A policy object or route that does not convert fails the whole file (as a structural
//! error does), and so does a route the proxy could not enforce (a filter): a file is written
//! by hand and checked at once, so it had better say exactly what it means.

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
    },
    profile::{self, ProfilePolicy},
    resolve::{
        DEFAULT_WEIGHT, Discover, Endpoint, Hint, ProfileSource, Resolution, Subscriptions, Target,
    },
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
                opaque: svc.opaque_ports.as_ref().is_some_and(|p| p.contains(port)),
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
        _ if route => return Err(format!("kind {:?} is not HTTPRoute", p.kind)),
        _ => {
            return Err(format!(
                "kind {:?} is not one of Server, AuthorizationPolicy, MeshTLSAuthentication, NetworkAuthentication",
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
mod tests {
    use super::*;

    const FILE: &str = r#"
services:
  - name: web
    namespace: prod
    clusterIPs: [10.96.0.10]
    annotations:
      retry.weft.dev/http: 5xx
      config.weft.dev/opaque-ports: "5432"
    ports:
      - port: 80
        endpoints:
          - address: 127.0.0.1:8080
            identity: web.prod.serviceaccount.identity.weft.cluster.local
            labels: {pod: web-1}
          - address: 127.0.0.1:8081
      - port: 5432
        endpoints:
          - address: 127.0.0.1:5432
            identity: db.prod.serviceaccount.identity.weft.cluster.local
            opaqueTransportPort: 4143
  - name: empty
    namespace: prod
"#;

    fn catalog() -> Catalog {
        let (c, warnings) = Catalog::parse(Path::new("f.yaml"), FILE).expect("parses");
        assert!(warnings.is_empty(), "{warnings:?}");
        c
    }

    #[test]
    fn lookups() {
        let c = catalog();
        let d = "cluster.local";
        let web = |port| Target::Service { key: ObjKey::new("prod", "web"), port };
        let r = c.resolve(&web(80), d);
        assert!(r.exists);
        assert_eq!(r.endpoints.len(), 2);
        assert_eq!(r.profile.fqn, "web.prod.svc.cluster.local");
        assert!(r.profile.policy.retry.is_some());
        assert!(!r.profile.opaque);
        let ep = &r.endpoints[&"127.0.0.1:8080".parse().unwrap()];
        assert_eq!(
            ep.identity.as_deref(),
            Some("web.prod.serviceaccount.identity.weft.cluster.local")
        );
        assert_eq!(ep.hint, Hint::H2 { opaque_transport: None });
        assert_eq!(ep.labels.get("pod").map(String::as_str), Some("web-1"));
        assert_eq!(ep.labels.get("service").map(String::as_str), Some("web"));
        let plain = &r.endpoints[&"127.0.0.1:8081".parse().unwrap()];
        assert_eq!((plain.identity.as_ref(), &plain.hint), (None, &Hint::Unknown));

        let db = c.resolve(&web(5432), d);
        assert!(db.profile.opaque);
        assert_eq!(
            db.endpoints.values().next().unwrap().hint,
            Hint::H2 { opaque_transport: Some(4143) }
        );

        // By ClusterIP, by an endpoint's address, unknowns.
        assert_eq!(c.resolve(&Target::Addr("10.96.0.10:80".parse().unwrap()), d), r);
        let one = c.resolve(&Target::Addr("127.0.0.1:8081".parse().unwrap()), d);
        assert_eq!(one.endpoints.len(), 1);
        assert!(one.profile.endpoint.is_some());
        assert!(!c.resolve(&Target::Addr("127.0.0.1:9".parse().unwrap()), d).exists);
        let none = c.resolve(&Target::Service { key: ObjKey::new("prod", "nope"), port: 80 }, d);
        assert!(!none.exists);
        // A known service on an unlisted port exists with no endpoints.
        let unlisted = c.resolve(&web(81), d);
        assert!(unlisted.exists && unlisted.endpoints.is_empty());
        let empty = c.resolve(&Target::Service { key: ObjKey::new("prod", "empty"), port: 80 }, d);
        assert!(empty.exists && empty.endpoints.is_empty());
    }

    #[test]
    fn bad_files() {
        let p = Path::new("f.yaml");
        assert_eq!(Catalog::parse(p, "").map(|(c, _)| c.services.len()).ok(), Some(0));
        for bad in [
            "services: [{name: a}]",
            "services: [{name: a, namespace: b, ports: [{port: 80, endpoints: [{address: nope}]}]}]",
            "services: [{name: a, namespace: b, extra: 1}]",
            "services: [{name: a, namespace: b}, {name: a, namespace: b}]",
            "services: [{name: a, namespace: b, ports: [{port: 80}, {port: 80}]}]",
            "services: [{name: a, namespace: b, clusterIPs: [10.0.0.1]}, {name: c, namespace: b, clusterIPs: [10.0.0.1]}]",
            "services: [{name: '', namespace: b}]",
            "services: [{name: a, namespace: b, ports: [{port: 80, endpoints: [{address: '1.2.3.4:1', protocolHint: h3}]}]}]",
            "services: {",
        ] {
            assert!(Catalog::parse(p, bad).is_err(), "{bad:?} accepted");
        }
        // A bad annotation value is a warning; the rest of the file stands.
        let (c, warnings) = Catalog::parse(
            p,
            "services: [{name: a, namespace: b, annotations: {retry.weft.dev/http: often}, ports: [{port: 80}]}]",
        )
        .expect("parses");
        assert_eq!(warnings.len(), 1);
        assert_eq!(c.services.len(), 1);
    }

    #[test]
    fn replace_pushes_changes() {
        let index = StaticIndex::new(catalog(), "cluster.local", SharedPolicyIndex::default());
        let t = Target::Service { key: ObjKey::new("prod", "web"), port: 80 };
        let mut rx = index.resolve(&t).expect("followed");
        assert_eq!(rx.borrow_and_update().endpoints.len(), 2);
        let (c, _) = Catalog::parse(
            Path::new("f"),
            "services: [{name: web, namespace: prod, ports: [{port: 80, endpoints: [{address: '127.0.0.1:9000'}]}]}]",
        )
        .expect("parses");
        index.replace(c);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().endpoints.len(), 1);
        index.replace(Catalog::default());
        assert!(!rx.borrow_and_update().exists);
    }

    const POLICY_FILE: &str = r#"
namespaces:
  - name: prod
    annotations: {config.weft.dev/default-inbound-policy: all-authenticated}
pods:
  - name: web-1
    namespace: prod
    labels: {app: web}
    ports: [{name: http, containerPort: 8080}]
    probes: [{port: 8080, path: /ready}]
  - name: db-1
    namespace: prod
    annotations: {config.weft.dev/default-inbound-policy: deny}
policies:
  - apiVersion: policy.weft.dev/v1beta1
    kind: Server
    metadata: {name: web-http, namespace: prod}
    spec:
      podSelector: {matchLabels: {app: web}}
      port: http
      proxyProtocol: HTTP/1
  - apiVersion: policy.weft.dev/v1beta1
    kind: AuthorizationPolicy
    metadata: {name: web-from-office, namespace: prod}
    spec:
      targetRef: {group: policy.weft.dev, kind: Server, name: web-http}
      requiredAuthenticationRefs:
        - {group: policy.weft.dev, kind: NetworkAuthentication, name: office}
  - apiVersion: policy.weft.dev/v1beta1
    kind: NetworkAuthentication
    metadata: {name: office, namespace: prod}
    spec:
      networks: [{cidr: 192.168.0.0/16}]
"#;

    #[test]
    fn pods_and_policies() {
        let (c, warnings) = Catalog::parse(Path::new("f.yaml"), POLICY_FILE).expect("parses");
        assert!(warnings.is_empty(), "{warnings:?}");
        let policy = SharedPolicyIndex::default();
        let index = StaticIndex::new(c, "cluster.local", policy.clone());
        let web = ObjKey::new("prod", "web-1");
        let srv = policy.lock().get(&web, 8080).expect("web-1 is known");
        assert_eq!(srv.labels["name"], "web-http");
        assert_eq!(srv.authorizations.len(), 1);
        assert_eq!(srv.authorizations[0].networks.len(), 1);
        // Another port: the namespace's default; another pod: its own.
        assert_eq!(policy.lock().get(&web, 9090).unwrap().labels["name"], "all-authenticated");
        let db = policy.lock().get(&ObjKey::new("prod", "db-1"), 5432).unwrap();
        assert_eq!(db.labels["name"], "deny");
        assert!(policy.lock().get(&ObjKey::new("prod", "nope"), 80).is_none());

        // A new file without the Server: followers get the default.
        let mut rx = policy.lock().watch(&web, 8080).unwrap();
        let (c, _) =
            Catalog::parse(Path::new("f"), "pods: [{name: web-1, namespace: prod}]").unwrap();
        index.replace(c);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().labels["name"], "all-unauthenticated");
    }

    #[test]
    fn routes_section() {
        let file = format!(
            "{POLICY_FILE}{}",
            r#"
routes:
  - apiVersion: policy.weft.dev/v1beta3
    kind: HTTPRoute
    metadata: {name: web-metrics, namespace: prod}
    spec:
      parentRefs: [{group: policy.weft.dev, kind: Server, name: web-http}]
      rules: [{matches: [{path: {type: Exact, value: /metrics}, method: GET}]}]
"#
        );
        let (c, _) = Catalog::parse(Path::new("f.yaml"), &file).expect("parses");
        let policy = SharedPolicyIndex::default();
        let _index = StaticIndex::new(c, "cluster.local", policy.clone());
        let srv = policy.lock().get(&ObjKey::new("prod", "web-1"), 8080).unwrap();
        let Some(linkerd2_proxy_api::inbound::proxy_protocol::Kind::Http1(h)) =
            srv.protocol.and_then(|p| p.kind)
        else {
            panic!("not HTTP/1")
        };
        let names: Vec<String> = h
            .routes
            .iter()
            .map(|r| match r.metadata.as_ref().and_then(|m| m.kind.as_ref()) {
                Some(linkerd2_proxy_api::meta::metadata::Kind::Resource(r)) => r.name.clone(),
                Some(linkerd2_proxy_api::meta::metadata::Kind::Default(n)) => n.clone(),
                None => String::new(),
            })
            .collect();
        assert_eq!(names, ["web-metrics", "probe"]);

        let p = Path::new("f.yaml");
        let route = |api: &str, kind: &str, spec: &str| {
            format!(
                "{{apiVersion: {api}, kind: {kind}, metadata: {{name: r, namespace: prod}}, spec: {spec}}}"
            )
        };
        let ok_spec = "{parentRefs: [{kind: Server, name: web-http}]}";
        let filtered = "{parentRefs: [{kind: Server, name: web-http}], rules: [{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 301}}]}]}";
        for (bad, want) in [
            (
                format!("policies: [{}]", route("policy.weft.dev/v1beta3", "HTTPRoute", ok_spec)),
                "routes: section",
            ),
            (
                format!("routes: [{}]", route("policy.weft.dev/v1beta1", "HTTPRoute", ok_spec)),
                "apiVersion",
            ),
            (
                format!("routes: [{}]", route("policy.weft.dev/v1beta1", "Server", ok_spec)),
                "not HTTPRoute",
            ),
            (
                format!("routes: [{}]", route("policy.weft.dev/v1beta3", "HTTPRoute", filtered)),
                "unsupported_filter",
            ),
            (
                format!(
                    "routes: [{0}, {0}]",
                    route("policy.weft.dev/v1beta3", "HTTPRoute", ok_spec)
                ),
                "twice",
            ),
        ] {
            let e = Catalog::parse(p, &bad).expect_err(&bad).to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_policy_sections() {
        let p = Path::new("f.yaml");
        for bad in [
            "pods: [{name: a}]",
            "pods: [{name: a, namespace: b}, {name: a, namespace: b}]",
            "pods: [{name: a, namespace: b, probes: [{port: 80, path: ready}]}]",
            "pods: [{name: a, namespace: b, ports: [{containerPort: 0}]}]",
            "pods: [{name: a, namespace: b, image: nginx}]",
            "namespaces: [{name: a}, {name: a}]",
            "policies: [{apiVersion: policy.linkerd.io/v1beta1, kind: Server, metadata: {name: a, namespace: b}, spec: {podSelector: {}, port: 80}}]",
            "policies: [{apiVersion: policy.weft.dev/v1beta1, kind: Server, metadata: {name: a, namespace: b}, spec: {port: 80}}]",
            "policies: [{apiVersion: policy.weft.dev/v1beta1, kind: Server, metadata: {name: a}, spec: {podSelector: {}, port: 80}}]",
        ] {
            let e = Catalog::parse(p, bad).expect_err(bad);
            assert!(matches!(e, LoadError::Invalid { .. } | LoadError::Parse { .. }), "{bad}: {e}");
        }
        let (_, warnings) = Catalog::parse(
            p,
            "pods: [{name: a, namespace: b, annotations: {config.weft.dev/default-inbound-policy: allow}}]",
        )
        .expect("a bad annotation is a warning");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }
}
