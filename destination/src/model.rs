//! What discovery needs to know about Namespaces, Services, EndpointSlices and Pods, and the
//! conversion from the Kubernetes objects. Pure: no I/O. A conversion never panics: an object
//! that cannot be used is refused with a [`Problem`], and a usable object with a bad part
//! (one bad IP, one bad annotation) keeps the rest and reports the part.

use std::{collections::BTreeMap, fmt, net::IpAddr, ops::RangeInclusive};

use k8s_openapi::{
    api::{core::v1 as core, discovery::v1::EndpointSlice},
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use crate::{
    policy::model::{DEFAULT_INBOUND_POLICY_ANNOTATION, DefaultPolicy, PodInbound},
    profile::{self, ProfilePolicy},
};

/// Annotation (on a pod or its namespace) listing the ports that skip protocol detection.
pub const OPAQUE_PORTS_ANNOTATION: &str = "config.weft.dev/opaque-ports";
/// Annotation (on a pod; the injector writes the effective list) naming the ports whose
/// inbound connections bypass the proxy: no mTLS is offered to them.
pub const SKIP_INBOUND_PORTS_ANNOTATION: &str = "config.weft.dev/skip-inbound-ports";
/// Annotation that the injector puts on meshed pods.
pub const PROXY_VERSION_ANNOTATION: &str = "weft.dev/proxy-version";
/// Name of the injected proxy container (a native sidecar or a plain container).
pub const PROXY_CONTAINER: &str = "weft-proxy";
/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// Namespace and name of an object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjKey {
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { namespace: namespace.into(), name: name.into() }
    }
}

impl fmt::Display for ObjKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why (part of) an object was not used. Logged and counted by the caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {object}: {reason}: {detail}")]
pub struct Problem {
    pub kind: &'static str,
    pub object: String,
    /// A short, fixed reason: a metric label.
    pub reason: &'static str,
    pub detail: String,
}

impl Problem {
    fn new(
        kind: &'static str,
        object: impl fmt::Display,
        reason: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self { kind, object: object.to_string(), reason, detail: detail.into() }
    }
}

/// A set of ports, from a list like `3306,5432,8000-8010`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet(Vec<RangeInclusive<u16>>);

impl PortSet {
    /// Parses a comma list of ports and ranges; bad items are returned, the rest kept.
    pub fn parse(list: &str) -> (PortSet, Vec<String>) {
        let mut ranges = Vec::new();
        let mut bad = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let parsed = match item.split_once('-') {
                Some((lo, hi)) => lo.trim().parse::<u16>().ok().zip(hi.trim().parse::<u16>().ok()),
                None => item.parse::<u16>().ok().map(|p| (p, p)),
            };
            match parsed {
                Some((lo, hi)) if lo != 0 && lo <= hi => ranges.push(lo..=hi),
                _ => bad.push(item.to_string()),
            }
        }
        (PortSet(ranges), bad)
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(&port))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub opaque_ports: Option<PortSet>,
    /// `config.weft.dev/default-inbound-policy`: for the pods that do not say.
    pub default_policy: Option<DefaultPolicy>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub key: ObjKey,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub opaque_ports: Option<PortSet>,
    pub policy: ProfilePolicy,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Empty for the single unnamed port of a Service.
    pub name: String,
    pub port: u16,
    pub target_port: TargetPort,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// A container port name, resolved per pod by the EndpointSlice controller.
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    pub key: ObjKey,
    /// The Service this slice belongs to (its `kubernetes.io/service-name` label).
    pub service: Option<ObjKey>,
    /// Port name → the resolved target port of the endpoints in this slice.
    pub ports: BTreeMap<String, u16>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    /// The pod behind the addresses (`targetRef` of kind Pod).
    pub pod: Option<ObjKey>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub key: ObjKey,
    pub ips: Vec<IpAddr>,
    pub service_account: String,
    /// Metric label name (`deployment`, `statefulset`, ...) and the owner's name.
    pub owner: Option<(String, String)>,
    pub meshed: bool,
    pub opaque_ports: Option<PortSet>,
    /// Ports its proxy does not intercept (`config.weft.dev/skip-inbound-ports`): an
    /// endpoint on one is not meshed, whatever the pod is.
    pub skip_inbound_ports: PortSet,
    /// Succeeded/Failed pods and host-network pods do not own their IP.
    pub owns_ip: bool,
    pub inbound: PodInbound,
}

fn key_of(kind: &'static str, meta: &ObjectMeta) -> Result<ObjKey, Problem> {
    let name = meta.name.as_deref().filter(|n| !n.is_empty());
    let ns = meta.namespace.as_deref().filter(|n| !n.is_empty());
    match (ns, name) {
        (Some(ns), Some(name)) => Ok(ObjKey::new(ns, name)),
        _ => Err(Problem::new(
            kind,
            format!("{ns:?}/{name:?}"),
            "missing_name",
            "no namespace or name",
        )),
    }
}

fn opaque_ports(
    kind: &'static str,
    object: &dyn fmt::Display,
    annotations: Option<&BTreeMap<String, String>>,
    problems: &mut Vec<Problem>,
) -> Option<PortSet> {
    let value = annotations?.get(OPAQUE_PORTS_ANNOTATION)?;
    let (set, bad) = PortSet::parse(value);
    if !bad.is_empty() {
        problems.push(Problem::new(
            kind,
            object,
            "invalid_annotation",
            format!("{OPAQUE_PORTS_ANNOTATION}: ignoring {bad:?}"),
        ));
    }
    Some(set)
}

fn default_policy(
    kind: &'static str,
    object: &dyn fmt::Display,
    annotations: Option<&BTreeMap<String, String>>,
    problems: &mut Vec<Problem>,
) -> Option<DefaultPolicy> {
    let value = annotations?.get(DEFAULT_INBOUND_POLICY_ANNOTATION)?;
    value
        .parse()
        .map_err(|e| {
            problems.push(Problem::new(
                kind,
                object,
                "invalid_annotation",
                format!("{DEFAULT_INBOUND_POLICY_ANNOTATION}: {e}"),
            ))
        })
        .ok()
}

/// Labels, named container ports, HTTP probe paths and the default policy of a pod. Only
/// the app's probes count: the injected proxy's own are served by the proxy itself.
fn pod_inbound(
    key: &ObjKey,
    meta: &ObjectMeta,
    spec: Option<&core::PodSpec>,
    problems: &mut Vec<Problem>,
) -> PodInbound {
    let containers: Vec<&core::Container> = spec
        .map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()).collect())
        .unwrap_or_default();
    let containers = containers.into_iter().filter(|c| c.name != PROXY_CONTAINER);
    let mut named_ports = BTreeMap::new();
    let mut probes: BTreeMap<u16, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut http_gets = Vec::new();
    for c in containers {
        for p in c.ports.iter().flatten() {
            let name = p.name.as_deref().filter(|n| !n.is_empty());
            if let (Some(name), Ok(port)) = (name, u16::try_from(p.container_port)) {
                named_ports.entry(name.to_string()).or_insert(port);
            }
        }
        for probe in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe].into_iter().flatten()
        {
            if let Some(get) = &probe.http_get {
                http_gets.push(get);
            }
        }
    }
    for get in http_gets {
        if get.scheme.as_deref().is_some_and(|s| !s.eq_ignore_ascii_case("HTTP")) {
            continue;
        }
        let port = match &get.port {
            IntOrString::Int(n) => u16::try_from(*n).ok().filter(|n| *n != 0),
            IntOrString::String(name) => named_ports.get(name).copied(),
        };
        let Some(port) = port else {
            problems.push(Problem::new(
                "pod",
                key,
                "invalid_probe",
                format!("httpGet port {:?}", get.port),
            ));
            continue;
        };
        // The kubelet sends the path as it is, query included; routes match the path only.
        let path = get.path.as_deref().unwrap_or("/");
        let path = path.split(['?', '#']).next().unwrap_or_default();
        let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
        probes.entry(port).or_default().insert(path);
    }
    PodInbound {
        labels: meta.labels.clone().unwrap_or_default(),
        named_ports,
        probes,
        default_policy: default_policy("pod", key, meta.annotations.as_ref(), problems),
    }
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    s.trim().parse().ok()
}

impl Namespace {
    pub fn from_k8s(ns: &core::Namespace) -> Result<(Namespace, Vec<Problem>), Problem> {
        let Some(name) = ns.metadata.name.clone().filter(|n| !n.is_empty()) else {
            return Err(Problem::new("namespace", "?", "missing_name", "no name"));
        };
        let mut problems = Vec::new();
        let annotations = ns.metadata.annotations.as_ref();
        let opaque_ports = opaque_ports("namespace", &name, annotations, &mut problems);
        let default_policy = default_policy("namespace", &name, annotations, &mut problems);
        Ok((Namespace { name, opaque_ports, default_policy }, problems))
    }
}

impl Service {
    pub fn from_k8s(svc: &core::Service) -> Result<(Service, Vec<Problem>), Problem> {
        const KIND: &str = "service";
        let key = key_of(KIND, &svc.metadata)?;
        let mut problems = Vec::new();
        let spec = svc.spec.as_ref();
        let mut cluster_ips = Vec::new();
        let listed = spec.and_then(|s| s.cluster_ips.clone()).unwrap_or_default();
        let single = spec.and_then(|s| s.cluster_ip.clone());
        for ip in listed.iter().chain(single.iter()) {
            // "None" marks a headless service; "" one not allocated yet.
            if ip.is_empty() || ip == "None" {
                continue;
            }
            match parse_ip(ip) {
                Some(ip) if !cluster_ips.contains(&ip) => cluster_ips.push(ip),
                Some(_) => {}
                None => problems.push(Problem::new(
                    KIND,
                    &key,
                    "invalid_ip",
                    format!("clusterIP {ip:?}"),
                )),
            }
        }
        let mut ports = Vec::new();
        for p in spec.and_then(|s| s.ports.as_ref()).into_iter().flatten() {
            if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
                continue;
            }
            let port = match u16::try_from(p.port) {
                Ok(port) if port != 0 => port,
                _ => {
                    problems.push(Problem::new(
                        KIND,
                        &key,
                        "invalid_port",
                        format!("port {}", p.port),
                    ));
                    continue;
                }
            };
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => match u16::try_from(*n) {
                    Ok(n) if n != 0 => TargetPort::Number(n),
                    _ => {
                        problems.push(Problem::new(
                            KIND,
                            &key,
                            "invalid_port",
                            format!("targetPort {n}"),
                        ));
                        continue;
                    }
                },
                Some(IntOrString::String(name)) => match name.parse::<u16>() {
                    Ok(n) if n != 0 => TargetPort::Number(n),
                    _ => TargetPort::Name(name.clone()),
                },
            };
            ports.push(ServicePort { name: p.name.clone().unwrap_or_default(), port, target_port });
        }
        let annotations = svc.metadata.annotations.clone().unwrap_or_default();
        let opaque_ports = opaque_ports(KIND, &key, Some(&annotations), &mut problems);
        let (policy, bad) = profile::parse_annotations(&annotations);
        problems.extend(
            bad.into_iter().map(|e| Problem::new(KIND, &key, "invalid_annotation", e.to_string())),
        );
        Ok((Service { key, cluster_ips, ports, opaque_ports, policy }, problems))
    }

    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }
}

impl Slice {
    pub fn from_k8s(slice: &EndpointSlice) -> Result<(Slice, Vec<Problem>), Problem> {
        const KIND: &str = "endpointslice";
        let key = key_of(KIND, &slice.metadata)?;
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            return Err(Problem::new(
                KIND,
                &key,
                "unsupported_address_type",
                format!("addressType {:?}", slice.address_type),
            ));
        }
        let mut problems = Vec::new();
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .filter(|n| !n.is_empty())
            .map(|n| ObjKey::new(key.namespace.clone(), n.clone()));
        let mut ports = BTreeMap::new();
        for p in slice.ports.iter().flatten() {
            if p.protocol.as_deref().is_some_and(|proto| proto != "TCP") {
                continue;
            }
            match p.port.map(u16::try_from) {
                Some(Ok(n)) if n != 0 => {
                    ports.insert(p.name.clone().unwrap_or_default(), n);
                }
                other => problems.push(Problem::new(
                    KIND,
                    &key,
                    "invalid_port",
                    format!("port {other:?}"),
                )),
            }
        }
        let mut endpoints = Vec::new();
        for ep in &slice.endpoints {
            let mut addresses = Vec::new();
            for a in &ep.addresses {
                match parse_ip(a) {
                    Some(ip) => addresses.push(ip),
                    None => problems.push(Problem::new(
                        KIND,
                        &key,
                        "invalid_ip",
                        format!("address {a:?}"),
                    )),
                }
            }
            // A nil `ready` is an unknown state, which consumers should treat as ready.
            let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
            let pod =
                ep.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod")).and_then(|r| {
                    let name = r.name.clone().filter(|n| !n.is_empty())?;
                    let ns = r
                        .namespace
                        .clone()
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| key.namespace.clone());
                    Some(ObjKey::new(ns, name))
                });
            endpoints.push(SliceEndpoint { addresses, ready, pod });
        }
        Ok((Slice { key, service, ports, endpoints }, problems))
    }
}

impl Pod {
    pub fn from_k8s(pod: &core::Pod) -> Result<(Pod, Vec<Problem>), Problem> {
        const KIND: &str = "pod";
        let key = key_of(KIND, &pod.metadata)?;
        let mut problems = Vec::new();
        let status = pod.status.as_ref();
        let mut ips = Vec::new();
        let listed = status.and_then(|s| s.pod_ips.as_ref()).into_iter().flatten().map(|p| &p.ip);
        for ip in listed.chain(status.and_then(|s| s.pod_ip.as_ref())) {
            if ip.is_empty() {
                continue;
            }
            match parse_ip(ip) {
                Some(ip) if !ips.contains(&ip) => ips.push(ip),
                Some(_) => {}
                None => {
                    problems.push(Problem::new(KIND, &key, "invalid_ip", format!("podIP {ip:?}")))
                }
            }
        }
        let spec = pod.spec.as_ref();
        let service_account = spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let has_proxy = spec.is_some_and(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .any(|c| c.name == PROXY_CONTAINER)
        });
        let annotations = pod.metadata.annotations.as_ref();
        let meshed =
            has_proxy || annotations.is_some_and(|a| a.contains_key(PROXY_VERSION_ANNOTATION));
        let opaque_ports = opaque_ports(KIND, &key, annotations, &mut problems);
        let skip_inbound_ports =
            match annotations.and_then(|a| a.get(SKIP_INBOUND_PORTS_ANNOTATION)) {
                Some(value) => {
                    let (set, bad) = PortSet::parse(value);
                    if !bad.is_empty() {
                        let what = format!("{SKIP_INBOUND_PORTS_ANNOTATION}: ignoring {bad:?}");
                        problems.push(Problem::new(KIND, &key, "invalid_annotation", what));
                    }
                    set
                }
                None => PortSet::default(),
            };
        let terminated = status
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let inbound = pod_inbound(&key, &pod.metadata, spec, &mut problems);
        Ok((
            Pod {
                owner: owner(&pod.metadata),
                key,
                ips,
                service_account,
                meshed,
                opaque_ports,
                skip_inbound_ports,
                owns_ip: !terminated && !host_network,
                inbound,
            },
            problems,
        ))
    }
}

/// The workload that owns a pod, as a metric label: the controller owner reference, with a
/// ReplicaSet named `<deployment>-<pod-template-hash>` mapped to its Deployment.
fn owner(meta: &ObjectMeta) -> Option<(String, String)> {
    let refs = meta.owner_references.as_ref()?;
    let r = refs.iter().find(|r| r.controller == Some(true)).or_else(|| refs.first())?;
    let label = match r.kind.as_str() {
        "ReplicaSet" => {
            let hash = meta.labels.as_ref().and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL));
            if let Some(deployment) =
                hash.and_then(|h| r.name.strip_suffix(h.as_str())?.strip_suffix('-'))
            {
                return Some(("deployment".into(), deployment.into()));
            }
            "replicaset".to_string()
        }
        kind => kind
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .collect(),
    };
    if label.is_empty() {
        return None;
    }
    Some((label, r.name.clone()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
