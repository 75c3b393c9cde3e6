//! The Kubernetes index: Namespaces, Services, EndpointSlices and Pods as the watches report
//! them, and the traffic splits of Gateway API HTTPRoutes ([`crate::split`]); the lookups by
//! service name and by IP, and the refresh of every followed target that a change touches.
//! Pure: the watches feed it, the gRPC streams follow it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

use crate::{
    model::{Namespace, ObjKey, Pod, PortSet, Problem, Service, Slice, TargetPort},
    resolve::{
        DEFAULT_WEIGHT, Discover, Endpoint, Hint, ProfileSource, Resolution, Subscriptions, Target,
    },
    split::{self, SplitRoute, Splits},
};

/// Names that go into endpoint identities and service names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexConfig {
    pub cluster_domain: String,
    pub control_plane_namespace: String,
    pub trust_domain: String,
    /// The inbound port of meshed pods' proxies (opaque transport goes there).
    pub proxy_inbound_port: u16,
    /// Ports that are opaque where neither the pod or service nor its namespace says
    /// (`config.weft.dev/opaque-ports`): the proxies' own default list, so that a meshed
    /// client reaches such a port of a meshed pod through the opaque transport (the server
    /// proxy does not look at the bytes of its opaque ports, mTLS included).
    pub default_opaque_ports: PortSet,
}

/// Linkerd's default opaque ports, which `weft-proxy` and the injector also use: SMTP,
/// MySQL, Galera, PostgreSQL, Redis, Elasticsearch, Memcached.
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
            control_plane_namespace: "weft".into(),
            trust_domain: "cluster.local".into(),
            proxy_inbound_port: 4143,
            default_opaque_ports: PortSet::parse(DEFAULT_OPAQUE_PORTS).0,
        }
    }
}

impl IndexConfig {
    /// `<sa>.<ns>.serviceaccount.identity.<control-plane-ns>.<trust-domain>` (DESIGN.md).
    pub fn identity(&self, namespace: &str, service_account: &str) -> String {
        format!(
            "{service_account}.{namespace}.serviceaccount.identity.{}.{}",
            self.control_plane_namespace,
            self.trust_domain.trim_matches('.')
        )
    }
}

/// The objects, and the reverse maps that lookups and refreshes need.
#[derive(Debug, Default)]
struct State {
    config: IndexConfig,
    namespaces: HashMap<String, Namespace>,
    services: HashMap<ObjKey, Service>,
    cluster_ips: HashMap<IpAddr, ObjKey>,
    slices: HashMap<ObjKey, Slice>,
    service_slices: HashMap<ObjKey, BTreeSet<ObjKey>>,
    pods: HashMap<ObjKey, Pod>,
    pod_ips: HashMap<IpAddr, ObjKey>,
    /// Pod → the slices whose endpoints point at it (the pod may not be known yet).
    pod_slices: HashMap<ObjKey, BTreeSet<ObjKey>>,
    splits: Splits,
}

/// What a change touched: the followed targets to recompute.
#[derive(Debug, Default)]
struct Dirty {
    services: HashSet<ObjKey>,
    ips: HashSet<IpAddr>,
    all: bool,
}

#[derive(Debug, Default)]
pub struct Index {
    state: State,
    subs: Subscriptions,
}

/// The index shared by the watches (writers) and the gRPC streams (readers).
#[derive(Clone, Debug, Default)]
pub struct SharedIndex(Arc<Mutex<Index>>);

impl SharedIndex {
    pub fn new(config: IndexConfig) -> Self {
        Self(Arc::new(Mutex::new(Index::new(config))))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that
        // matters more than stopping discovery would.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Discover for SharedIndex {
    fn resolve(&self, target: &Target) -> Option<watch::Receiver<Arc<Resolution>>> {
        self.lock().subscribe(target)
    }
}

impl Index {
    pub fn new(config: IndexConfig) -> Self {
        Self { state: State { config, ..State::default() }, subs: Subscriptions::default() }
    }

    pub fn subscribe(&mut self, target: &Target) -> Option<watch::Receiver<Arc<Resolution>>> {
        let Self { state, subs } = self;
        subs.subscribe(target, || state.resolve(target))
    }

    /// The current resolution of a target, without following it.
    pub fn lookup(&self, target: &Target) -> Resolution {
        self.state.resolve(target)
    }

    /// The older route that `route` loses to on `apex` (route statuses ask).
    pub fn split_rival(&self, route: &ObjKey, apex: &crate::split::Apex) -> Option<ObjKey> {
        self.state.splits.rival_for(route, apex)
    }

    /// Whether a Service exists (route statuses ask).
    pub fn has_service(&self, key: &ObjKey) -> bool {
        self.state.services.contains_key(key)
    }

    /// Targets followed by at least one stream.
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }

    pub fn apply_namespace(&mut self, ns: Namespace) {
        let mut dirty = Dirty::default();
        self.state.apply_namespace(ns, &mut dirty);
        self.flush(dirty);
    }

    pub fn delete_namespace(&mut self, name: &str) {
        let mut dirty = Dirty::default();
        self.state.delete_namespace(name, &mut dirty);
        self.flush(dirty);
    }

    pub fn apply_service(&mut self, svc: Service) {
        let mut dirty = Dirty::default();
        self.state.apply_service(svc, &mut dirty);
        self.flush(dirty);
    }

    pub fn delete_service(&mut self, key: &ObjKey) {
        let mut dirty = Dirty::default();
        self.state.delete_service(key, &mut dirty);
        self.flush(dirty);
    }

    pub fn apply_slice(&mut self, slice: Slice) {
        let mut dirty = Dirty::default();
        self.state.apply_slice(slice, &mut dirty);
        self.flush(dirty);
    }

    pub fn delete_slice(&mut self, key: &ObjKey) {
        let mut dirty = Dirty::default();
        self.state.delete_slice(key, &mut dirty);
        self.flush(dirty);
    }

    pub fn apply_pod(&mut self, pod: Pod) {
        let mut dirty = Dirty::default();
        self.state.apply_pod(pod, &mut dirty);
        self.flush(dirty);
    }

    pub fn delete_pod(&mut self, key: &ObjKey) {
        let mut dirty = Dirty::default();
        self.state.delete_pod(key, &mut dirty);
        self.flush(dirty);
    }

    /// Replaces all namespaces at once (a watch (re)started and listed them all).
    pub fn reset_namespaces(&mut self, all: Vec<Namespace>) {
        let mut dirty = Dirty::default();
        let keep: HashSet<String> = all.iter().map(|n| n.name.clone()).collect();
        let gone: Vec<String> =
            self.state.namespaces.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        for name in gone {
            self.state.delete_namespace(&name, &mut dirty);
        }
        for ns in all {
            self.state.apply_namespace(ns, &mut dirty);
        }
        self.flush(dirty);
    }

    pub fn reset_services(&mut self, all: Vec<Service>) {
        let mut dirty = Dirty::default();
        let keep: HashSet<ObjKey> = all.iter().map(|s| s.key.clone()).collect();
        let gone: Vec<ObjKey> =
            self.state.services.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        for key in gone {
            self.state.delete_service(&key, &mut dirty);
        }
        for svc in all {
            self.state.apply_service(svc, &mut dirty);
        }
        self.flush(dirty);
    }

    pub fn reset_slices(&mut self, all: Vec<Slice>) {
        let mut dirty = Dirty::default();
        let keep: HashSet<ObjKey> = all.iter().map(|s| s.key.clone()).collect();
        let gone: Vec<ObjKey> =
            self.state.slices.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        for key in gone {
            self.state.delete_slice(&key, &mut dirty);
        }
        for slice in all {
            self.state.apply_slice(slice, &mut dirty);
        }
        self.flush(dirty);
    }

    pub fn reset_pods(&mut self, all: Vec<Pod>) {
        let mut dirty = Dirty::default();
        let keep: HashSet<ObjKey> = all.iter().map(|p| p.key.clone()).collect();
        let gone: Vec<ObjKey> =
            self.state.pods.keys().filter(|k| !keep.contains(*k)).cloned().collect();
        for key in gone {
            self.state.delete_pod(&key, &mut dirty);
        }
        for pod in all {
            self.state.apply_pod(pod, &mut dirty);
        }
        self.flush(dirty);
    }

    /// Adds or replaces an HTTPRoute's split. Returns the routes that just started to lose a
    /// conflict, for the caller to log and count.
    pub fn apply_route(&mut self, route: SplitRoute) -> Vec<Problem> {
        let (services, conflicts) = self.state.splits.apply(route);
        self.flush(Dirty { services: services.into_iter().collect(), ..Dirty::default() });
        conflicts
    }

    pub fn delete_route(&mut self, key: &ObjKey) {
        let services = self.state.splits.delete(key);
        self.flush(Dirty { services: services.into_iter().collect(), ..Dirty::default() });
    }

    /// Replaces every route at once (the HTTPRoute watch (re)listed them).
    pub fn reset_routes(&mut self, all: Vec<SplitRoute>) -> Vec<Problem> {
        let (services, conflicts) = self.state.splits.reset(all);
        self.flush(Dirty { services: services.into_iter().collect(), ..Dirty::default() });
        conflicts
    }

    fn flush(&mut self, dirty: Dirty) {
        let Self { state, subs } = self;
        if dirty.all {
            subs.refresh_all(|t| state.resolve(t));
            return;
        }
        // A touched service's ClusterIPs are followed by IP too.
        let mut ips = dirty.ips;
        for key in &dirty.services {
            if let Some(svc) = state.services.get(key) {
                ips.extend(svc.cluster_ips.iter().copied());
            }
            subs.refresh_service(key, |port| state.resolve_service(key, port));
        }
        for ip in ips {
            subs.refresh_addr(ip, |port| state.resolve_addr(SocketAddr::new(ip, port)));
        }
    }
}

impl State {
    fn apply_namespace(&mut self, ns: Namespace, dirty: &mut Dirty) {
        let old = self.namespaces.insert(ns.name.clone(), ns.clone());
        // Only opaque ports matter, and they can touch any pod or service in the namespace:
        // rare enough to refresh everything.
        if old.is_none_or(|o| o != ns) {
            dirty.all = true;
        }
    }

    fn delete_namespace(&mut self, name: &str, dirty: &mut Dirty) {
        if self.namespaces.remove(name).is_some() {
            dirty.all = true;
        }
    }

    fn apply_service(&mut self, svc: Service, dirty: &mut Dirty) {
        let key = svc.key.clone();
        self.delete_service(&key, dirty);
        for ip in &svc.cluster_ips {
            self.cluster_ips.insert(*ip, key.clone());
            dirty.ips.insert(*ip);
        }
        self.services.insert(key.clone(), svc);
        dirty.services.insert(key);
    }

    fn delete_service(&mut self, key: &ObjKey, dirty: &mut Dirty) {
        dirty.services.insert(key.clone());
        if let Some(old) = self.services.remove(key) {
            for ip in old.cluster_ips {
                if self.cluster_ips.get(&ip) == Some(key) {
                    self.cluster_ips.remove(&ip);
                }
                dirty.ips.insert(ip);
            }
        }
    }

    fn apply_slice(&mut self, slice: Slice, dirty: &mut Dirty) {
        let key = slice.key.clone();
        self.delete_slice(&key, dirty);
        if let Some(svc) = &slice.service {
            self.service_slices.entry(svc.clone()).or_default().insert(key.clone());
            dirty.services.insert(svc.clone());
        }
        for pod in slice.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
            self.pod_slices.entry(pod.clone()).or_default().insert(key.clone());
        }
        self.slices.insert(key, slice);
    }

    fn delete_slice(&mut self, key: &ObjKey, dirty: &mut Dirty) {
        let Some(old) = self.slices.remove(key) else { return };
        if let Some(svc) = &old.service {
            if let Some(set) = self.service_slices.get_mut(svc) {
                set.remove(key);
                if set.is_empty() {
                    self.service_slices.remove(svc);
                }
            }
            dirty.services.insert(svc.clone());
        }
        for pod in old.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
            if let Some(set) = self.pod_slices.get_mut(pod) {
                set.remove(key);
                if set.is_empty() {
                    self.pod_slices.remove(pod);
                }
            }
        }
    }

    fn apply_pod(&mut self, pod: Pod, dirty: &mut Dirty) {
        let key = pod.key.clone();
        if self.pods.get(&key) == Some(&pod) {
            return;
        }
        self.delete_pod(&key, dirty);
        if pod.owns_ip {
            for ip in &pod.ips {
                self.pod_ips.insert(*ip, key.clone());
                dirty.ips.insert(*ip);
            }
        }
        self.pods.insert(key, pod);
    }

    fn delete_pod(&mut self, key: &ObjKey, dirty: &mut Dirty) {
        if let Some(old) = self.pods.remove(key) {
            for ip in old.ips {
                if self.pod_ips.get(&ip) == Some(key) {
                    self.pod_ips.remove(&ip);
                }
                dirty.ips.insert(ip);
            }
        }
        // The services whose endpoints carry this pod's labels and identity.
        for slice in self.pod_slices.get(key).into_iter().flatten() {
            if let Some(svc) = self.slices.get(slice).and_then(|s| s.service.clone()) {
                dirty.services.insert(svc);
            }
        }
    }

    fn resolve(&self, target: &Target) -> Resolution {
        match target {
            Target::Service { key, port } => self.resolve_service(key, *port),
            Target::Addr(addr) => self.resolve_addr(*addr),
            Target::External(_) => Resolution::not_found(),
        }
    }

    fn resolve_addr(&self, addr: SocketAddr) -> Resolution {
        if let Some(key) = self.cluster_ips.get(&addr.ip()) {
            return self.resolve_service(key, addr.port());
        }
        let Some(pod) = self.pod_ips.get(&addr.ip()).and_then(|k| self.pods.get(k)) else {
            return Resolution::not_found();
        };
        let endpoint = Arc::new(self.endpoint(addr, Some(pod), None));
        Resolution {
            exists: true,
            labels: [("namespace".to_string(), pod.key.namespace.clone())].into(),
            endpoints: [(addr, endpoint.clone())].into(),
            profile: ProfileSource {
                fqn: String::new(),
                policy: Default::default(),
                route_profile: None,
                opaque: self.pod_port_opaque(pod, addr.port()),
                dst_overrides: Vec::new(),
                endpoint: Some(endpoint),
            },
        }
    }

    /// The ready endpoints of a service port. The port's target is resolved per slice (the
    /// EndpointSlice controller resolves named target ports per pod); a port the service does
    /// not declare is used as the target port as it is.
    fn resolve_service(&self, key: &ObjKey, port: u16) -> Resolution {
        let Some(svc) = self.services.get(key) else {
            return Resolution::not_found();
        };
        let svc_port = svc.port(port);
        let mut endpoints = BTreeMap::new();
        for slice in
            self.service_slices.get(key).into_iter().flatten().filter_map(|k| self.slices.get(k))
        {
            let target = match svc_port {
                None => Some(port),
                Some(sp) => slice.ports.get(&sp.name).copied().or(match sp.target_port {
                    TargetPort::Number(n) => Some(n),
                    TargetPort::Name(_) => None,
                }),
            };
            let Some(target) = target else { continue };
            for ep in slice.endpoints.iter().filter(|e| e.ready) {
                let pod = ep.pod.as_ref().and_then(|k| self.pods.get(k));
                for ip in &ep.addresses {
                    let addr = SocketAddr::new(*ip, target);
                    endpoints.insert(addr, Arc::new(self.endpoint(addr, pod, Some(svc))));
                }
            }
        }
        let opaque = svc
            .opaque_ports
            .as_ref()
            .unwrap_or_else(|| self.namespace_opaque_ports(&key.namespace))
            .contains(port);
        Resolution {
            exists: true,
            labels: [
                ("namespace".to_string(), key.namespace.clone()),
                ("service".to_string(), key.name.clone()),
            ]
            .into(),
            endpoints,
            profile: ProfileSource {
                fqn: format!(
                    "{}.{}.svc.{}",
                    key.name,
                    key.namespace,
                    self.config.cluster_domain.trim_matches('.')
                ),
                policy: svc.policy.clone(),
                route_profile: self.splits.winner(key, port).and_then(|r| r.profile.clone()),
                opaque,
                dst_overrides: split::overrides(
                    self.splits.backends(key, port),
                    port,
                    &self.config.cluster_domain,
                ),
                endpoint: None,
            },
        }
    }

    /// The namespace's opaque ports, or the default ones when it says none.
    fn namespace_opaque_ports(&self, ns: &str) -> &PortSet {
        self.namespaces
            .get(ns)
            .and_then(|n| n.opaque_ports.as_ref())
            .unwrap_or(&self.config.default_opaque_ports)
    }

    fn pod_port_opaque(&self, pod: &Pod, port: u16) -> bool {
        pod.opaque_ports
            .as_ref()
            .unwrap_or_else(|| self.namespace_opaque_ports(&pod.key.namespace))
            .contains(port)
    }

    fn endpoint(&self, addr: SocketAddr, pod: Option<&Pod>, svc: Option<&Service>) -> Endpoint {
        let mut labels = BTreeMap::new();
        if let Some(svc) = svc {
            labels.insert("namespace".to_string(), svc.key.namespace.clone());
            labels.insert("service".to_string(), svc.key.name.clone());
        }
        let (mut identity, mut hint) = (None, Hint::Unknown);
        if let Some(pod) = pod {
            labels.insert("namespace".to_string(), pod.key.namespace.clone());
            labels.insert("pod".to_string(), pod.key.name.clone());
            labels.insert("serviceaccount".to_string(), pod.service_account.clone());
            if let Some((kind, name)) = &pod.owner {
                labels.insert(kind.clone(), name.clone());
            }
            // A port that bypasses the pod's proxy is reached as an unmeshed one: mTLS
            // (or HTTP/2) offered to it would reach the app itself.
            if pod.meshed && !pod.skip_inbound_ports.contains(addr.port()) {
                identity = Some(self.config.identity(&pod.key.namespace, &pod.service_account));
                let opaque = self.pod_port_opaque(pod, addr.port());
                hint =
                    Hint::H2 { opaque_transport: opaque.then_some(self.config.proxy_inbound_port) };
            }
        }
        Endpoint { addr, weight: DEFAULT_WEIGHT, labels, identity, hint }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
