//! Discovery: asks the destination service (`Destination/Get`, `GetProfile`) which
//! endpoints stand behind an outbound target and how to treat its requests, follows the
//! update streams, and keeps one balancer per target. Availability first: while the
//! destination service is unreachable, or does not know the target, traffic goes to the
//! original destination as it is (and is counted); a stream that breaks keeps the last
//! endpoints and reconnects with backoff.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use linkerd2_proxy_api::destination::{
    self as api, destination_client::DestinationClient, update::Update,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, info, warn};
use weft_identity::control::Connector;

use crate::{
    balance::{BalanceConfig, Balancer},
    http::retry::RetryBudget,
    metrics::DstLabels,
    profile::{self, Profile},
};

/// What discovery says about one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointMeta {
    /// `dst_*` metric labels (set-level and endpoint-level).
    pub labels: DstLabels,
    /// The identity its proxy proves, when it is meshed.
    pub identity: Option<String>,
    /// Its proxy takes HTTP/1 as HTTP/2.
    pub h2: bool,
    /// Its proxy's inbound port for opaque transport.
    pub opaque_transport_port: Option<u16>,
}

#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// How long the first lookup of a target waits for the destination service.
    pub first_update_timeout: Duration,
    /// A target not used for this long is forgotten (its streams closed).
    pub idle_timeout: Duration,
    pub context_token: String,
    /// Only addresses in these are looked up (empty: all).
    pub networks: crate::init::Subnets,
    pub balance: BalanceConfig,
}

/// Most targets followed at once (each holds two streams to the destination service).
/// Beyond it a new address goes to its original destination, counted as
/// `outbound_discovery_lookups_total{result="too_many_targets"}`, until idle ones are
/// forgotten: an app that talks to countless addresses cannot grow the proxy, or the
/// destination service, without bound.
pub const MAX_TARGETS: usize = 10_000;

/// The state of a target's resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No answer yet.
    Pending,
    /// The destination service knows the target (with or without endpoints now).
    Known,
    /// The destination service does not know it: traffic goes to the target as it is.
    Unknown,
    /// The destination service cannot be reached and has never answered.
    Unavailable,
}

/// What is looked up: an original destination, or a service by name (a backend of a
/// traffic split).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Addr(SocketAddr),
    /// `name.ns.svc.cluster.local:port`.
    Name(Arc<str>),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Addr(a) => a.fmt(f),
            Target::Name(n) => f.write_str(n),
        }
    }
}

#[derive(Debug)]
pub struct Resolution {
    pub target: Target,
    pub balancer: Balancer<EndpointMeta>,
    /// Bounds the retries of every request to this service.
    pub budget: RetryBudget,
    state: watch::Sender<State>,
    profile: RwLock<Arc<Profile>>,
    /// True once the first profile arrived, or the profile cannot be had (a split's
    /// backend, which follows none; a destination service that failed the call).
    profiled: watch::Sender<bool>,
    started: Instant,
    last_used: Mutex<Instant>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Resolution {
    pub fn profile(&self) -> Arc<Profile> {
        self.profile.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn state(&self) -> State {
        *self.state.borrow()
    }
}

impl Drop for Resolution {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            t.abort();
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Discovery's metric families, registered with the proxy's registry at start.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryMetrics {
    lookups: Family<ResultLabels, Counter>,
    updates: Family<ResultLabels, Counter>,
    resolutions: Gauge,
}

impl DiscoveryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = DiscoveryMetrics::default();
        registry.register(
            "outbound_discovery_lookups",
            "Outbound connections by what discovery said of their target (`balanced`; or forwarded to the original destination: `unknown`, `unavailable`, `pending`, `not_discoverable` (outside the destination networks), `too_many_targets`)",
            m.lookups.clone(),
        );
        registry.register(
            "outbound_discovery_updates",
            "Updates from the destination service, by kind",
            m.updates.clone(),
        );
        registry.register(
            "outbound_discovery_targets",
            "Targets being resolved",
            m.resolutions.clone(),
        );
        m
    }
}

#[derive(Debug)]
pub struct Discovery {
    client: DestinationClient<Channel>,
    config: DiscoveryConfig,
    cache: Mutex<HashMap<Target, Arc<Resolution>>>,
    metrics: DiscoveryMetrics,
}

impl Discovery {
    /// A client of the destination service that `connector` reaches (its name resolved
    /// again, and TLS when configured, at each connect; connections are made lazily and
    /// re-made as needed).
    pub fn new(
        connector: Connector,
        config: DiscoveryConfig,
        metrics: DiscoveryMetrics,
    ) -> anyhow::Result<Arc<Self>> {
        let channel = connector
            .endpoint()
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(3))
            .connect_with_connector_lazy(connector);
        let d = Arc::new(Discovery {
            client: DestinationClient::new(channel),
            config,
            cache: Mutex::default(),
            metrics,
        });
        let weak = Arc::downgrade(&d);
        let period = (d.config.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(d) = weak.upgrade() else { return };
                d.evict_idle();
            }
        });
        Ok(d)
    }

    fn evict_idle(&self) {
        let idle = self.config.idle_timeout;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|target, r| {
            let keep = r.last_used.lock().unwrap_or_else(|e| e.into_inner()).elapsed() < idle;
            if !keep {
                debug!(%target, "forgetting an idle target");
            }
            keep
        });
        self.metrics.resolutions.set(cache.len() as i64);
    }

    /// The resolution of `target` when the destination service knows it; `None` means
    /// "forward to the target as it is".
    pub async fn resolve(self: &Arc<Self>, target: SocketAddr) -> Option<Arc<Resolution>> {
        let networks = &self.config.networks;
        if !networks.is_empty() && !networks.contains(target.ip()) {
            self.metrics.lookups.get_or_create(&ResultLabels { result: "not_discoverable" }).inc();
            return None;
        }
        self.lookup(Target::Addr(target)).await
    }

    /// With a traffic split in `profile` (that of `res`): the resolution of the backend that
    /// gets this request (or connection), picked by weight. `None` without a split, or
    /// when the destination service does not know the backend (the target's own
    /// endpoints serve it then; counted as `split_fallback`).
    pub async fn split(
        self: &Arc<Self>,
        res: &Resolution,
        profile: &Profile,
    ) -> Option<Arc<Resolution>> {
        if profile.backends.is_empty() {
            return None;
        }
        let backend = profile.backend(res.balancer.random())?;
        let r = self.lookup(Target::Name(backend.authority.clone())).await;
        if r.is_none() {
            debug!(target = %res.target, backend = %backend.authority, "split backend unknown; using the target's endpoints");
            self.metrics.lookups.get_or_create(&ResultLabels { result: "split_fallback" }).inc();
        }
        r
    }

    async fn lookup(self: &Arc<Self>, target: Target) -> Option<Arc<Resolution>> {
        let (res, fresh) = {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&target) {
                Some(r) => (r.clone(), false),
                None if cache.len() >= MAX_TARGETS => {
                    drop(cache);
                    let result = "too_many_targets";
                    self.metrics.lookups.get_or_create(&ResultLabels { result }).inc();
                    debug!(?target, "too many targets followed; not looking this one up");
                    return None;
                }
                None => {
                    let r = self.start(target.clone());
                    cache.insert(target, r.clone());
                    self.metrics.resolutions.set(cache.len() as i64);
                    (r, true)
                }
            }
        };
        *res.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        // The endpoints, and then the profile: the first requests of a service must
        // already follow its routes and its split (a canary must not get the first ones by
        // chance); both within one bound from the first lookup.
        let deadline = res.started + self.config.first_update_timeout;
        if fresh
            || res.state() == State::Pending
            || (!*res.profiled.borrow() && Instant::now() < deadline)
        {
            let (mut state, mut profiled) = (res.state.subscribe(), res.profiled.subscribe());
            let _ = tokio::time::timeout_at(deadline.into(), async {
                let _ = state.wait_for(|s| *s != State::Pending).await;
                if *state.borrow() == State::Known {
                    let _ = profiled.wait_for(|p| *p).await;
                }
            })
            .await;
        }
        let result = match res.state() {
            State::Known => "balanced",
            State::Unknown => "unknown",
            State::Unavailable => "unavailable",
            State::Pending => "pending",
        };
        self.metrics.lookups.get_or_create(&ResultLabels { result }).inc();
        (res.state() == State::Known).then_some(res)
    }

    fn start(self: &Arc<Self>, target: Target) -> Arc<Resolution> {
        // A split's backend takes the routes and the budget of the service it stands in
        // for: its own profile is not followed (nor could a split nest).
        let has_profile = matches!(target, Target::Addr(_));
        let (state, _) = watch::channel(State::Pending);
        let res = Arc::new(Resolution {
            target,
            balancer: Balancer::new(self.config.balance.clone()),
            budget: RetryBudget::new(profile::Budget::default()),
            state,
            profile: RwLock::new(Arc::new(Profile::default())),
            profiled: watch::Sender::new(!has_profile),
            started: Instant::now(),
            last_used: Mutex::new(Instant::now()),
            tasks: Mutex::default(),
        });
        // The tasks hold weak references: dropping the resolution (eviction) ends them.
        let mut tasks = res.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.push(tokio::spawn(follow_endpoints(self.clone(), Arc::downgrade(&res))));
        if has_profile {
            tasks.push(tokio::spawn(follow_profile(self.clone(), Arc::downgrade(&res))));
        }
        drop(tasks);
        res
    }

    fn request(&self, target: &Target) -> api::GetDestination {
        api::GetDestination {
            scheme: "k8s".into(),
            path: target.to_string(),
            context_token: self.config.context_token.clone(),
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics.updates.get_or_create(&ResultLabels { result }).inc();
    }
}

/// Backoff between reconnects: 100 ms doubling to 10 s, jittered.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << attempt.min(7));
    let base = base.min(Duration::from_secs(10));
    base.mul_f64(0.5 + jitter())
}

/// A random number in [0, 1), so that proxies that lost the control plane together do not
/// come back in lockstep (std's `RandomState` is randomly keyed, and each one differs).
fn jitter() -> f64 {
    use std::hash::BuildHasher;
    (std::collections::hash_map::RandomState::new().hash_one(0u8) % 1000) as f64 / 1000.0
}

async fn follow_endpoints(d: Arc<Discovery>, res: std::sync::Weak<Resolution>) {
    let mut attempt = 0;
    loop {
        let Some(target) = res.upgrade().map(|r| r.target.clone()) else { return };
        let mut client = d.client.clone();
        match client.get(d.request(&target)).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                let mut endpoints: HashMap<SocketAddr, EndpointMeta> = HashMap::new();
                loop {
                    match stream.message().await {
                        Ok(Some(update)) => {
                            attempt = 0;
                            let Some(r) = res.upgrade() else { return };
                            apply(&d, &r, &mut endpoints, update);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            debug!(%target, error = %e, "destination stream failed");
                            break;
                        }
                    }
                }
                d.count("stream_ended");
            }
            Err(e) => {
                let Some(r) = res.upgrade() else { return };
                if r.state() == State::Pending {
                    // Never answered: let lookups fall back to the original destination.
                    r.state.send_replace(State::Unavailable);
                }
                if attempt == 0 {
                    warn!(%target, error = %e, "the destination service is unavailable; forwarding to the original destination meanwhile");
                }
                d.count("unavailable");
            }
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

fn apply(
    d: &Discovery,
    r: &Resolution,
    endpoints: &mut HashMap<SocketAddr, EndpointMeta>,
    update: api::Update,
) {
    // The balancer gets the endpoints before the state says the target is known: a
    // request that sees `Known` must find them (else its first try is a 503).
    let state = match update.update {
        Some(Update::Add(set)) => {
            d.count("add");
            for addr in &set.addrs {
                match endpoint(&set.metric_labels, addr) {
                    Some((a, meta, labels_fixed)) => {
                        if labels_fixed {
                            d.count("bad_labels");
                        }
                        endpoints.insert(a, meta);
                    }
                    None => d.count("bad_endpoint"),
                }
            }
            Some(State::Known)
        }
        Some(Update::Remove(set)) => {
            d.count("remove");
            for a in &set.addrs {
                match socket_addr(a) {
                    Some(a) => {
                        endpoints.remove(&a);
                    }
                    None => d.count("bad_endpoint"),
                }
            }
            None
        }
        Some(Update::NoEndpoints(none)) => {
            d.count("no_endpoints");
            endpoints.clear();
            Some(if none.exists { State::Known } else { State::Unknown })
        }
        None => {
            d.count("empty");
            return;
        }
    };
    info!(target = %r.target, endpoints = endpoints.len(), "endpoints updated");
    r.balancer.update(endpoints.iter().map(|(a, m)| (*a, m.clone())).collect());
    if let Some(state) = state {
        r.state.send_replace(state);
    }
}

fn socket_addr(a: &linkerd2_proxy_api::net::TcpAddress) -> Option<SocketAddr> {
    let ip: std::net::IpAddr = a.ip?.try_into().ok()?;
    Some(SocketAddr::new(ip, u16::try_from(a.port).ok()?))
}

/// Most `dst_*` labels an endpoint's series carry (Linkerd's destination sends about ten).
pub const MAX_DST_LABELS: usize = 16;

/// One endpoint of a destination service's `Add` (with the set's `metric_labels`); `None`
/// when it has no usable address. Public for the fuzzer: the update comes from the network.
/// Its labels become `dst_<key>`: the endpoint's own over the set's of the same key, keys
/// made valid Prometheus label names (any other character `_`; an empty key dropped), at
/// most [`MAX_DST_LABELS`] of them (the first by key), so that no update can make
/// `/metrics` unparsable or grow every series without bound. The `bool` says whether any of
/// that changed what was sent (counted as `outbound_discovery_updates{result="bad_labels"}`).
pub fn endpoint(
    set_labels: &HashMap<String, String>,
    a: &api::WeightedAddr,
) -> Option<(SocketAddr, EndpointMeta, bool)> {
    let addr = socket_addr(a.addr.as_ref()?)?;
    let mut fixed = false;
    let mut labels = std::collections::BTreeMap::new();
    // The endpoint's own last: they replace the set's.
    for (k, v) in set_labels.iter().chain(a.metric_labels.iter()) {
        if k.is_empty() {
            fixed = true;
            continue;
        }
        let name: String = k
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
            .collect();
        fixed |= name != *k;
        labels.insert(format!("dst_{name}"), v.clone());
    }
    fixed |= labels.len() > MAX_DST_LABELS;
    let labels: Vec<(String, String)> = labels.into_iter().take(MAX_DST_LABELS).collect();
    let identity = a.tls_identity.as_ref().and_then(|t| match &t.strategy {
        Some(api::tls_identity::Strategy::DnsLikeIdentity(id)) => Some(id.name.clone()),
        _ => None,
    });
    let hint = a.protocol_hint.as_ref();
    let h2 =
        matches!(hint.and_then(|h| h.protocol.as_ref()), Some(api::protocol_hint::Protocol::H2(_)));
    let opaque_transport_port = hint
        .and_then(|h| h.opaque_transport.as_ref())
        .and_then(|o| u16::try_from(o.inbound_port).ok());
    let meta =
        EndpointMeta { labels: DstLabels(Arc::new(labels)), identity, h2, opaque_transport_port };
    Some((addr, meta, fixed))
}

async fn follow_profile(d: Arc<Discovery>, res: std::sync::Weak<Resolution>) {
    let mut attempt = 0;
    loop {
        let Some(target) = res.upgrade().map(|r| r.target.clone()) else { return };
        let mut client = d.client.clone();
        match client.get_profile(d.request(&target)).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    let p = match stream.message().await {
                        Ok(Some(p)) => p,
                        Ok(None) => break,
                        Err(e) => {
                            debug!(%target, error = %e, "profile stream failed");
                            break;
                        }
                    };
                    attempt = 0;
                    let Some(r) = res.upgrade() else { return };
                    let (profile, errors) = profile::from_api(&p);
                    for e in errors {
                        warn!(%target, error = %e, "ignoring part of the service profile");
                        d.count("profile_error");
                    }
                    d.count("profile");
                    r.budget.set(profile.budget);
                    *r.profile.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(profile);
                    r.profiled.send_replace(true);
                }
                d.count("profile_stream_ended");
            }
            Err(e) => {
                if attempt == 0 {
                    warn!(%target, error = %e, "no profile from the destination service; routing without one meanwhile");
                }
                d.count("profile_unavailable");
            }
        }
        // No profile now: lookups stop waiting for one (the next one still applies).
        if let Some(r) = res.upgrade() {
            r.profiled.send_replace(true);
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// An endpoint at 10.0.0.1:8080 with `own` labels.
    fn weighted(own: &[(&str, &str)]) -> api::WeightedAddr {
        api::WeightedAddr {
            addr: Some(std::net::SocketAddr::from(([10, 0, 0, 1], 8080)).into()),
            metric_labels: labels(own),
            ..Default::default()
        }
    }

    fn dst(set: &[(&str, &str)], own: &[(&str, &str)]) -> (Vec<(String, String)>, bool) {
        let (_, meta, fixed) = endpoint(&labels(set), &weighted(own)).expect("an endpoint");
        (meta.labels.0.as_ref().clone(), fixed)
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn endpoint_labels_are_prefixed_and_the_endpoints_own_win() {
        let (got, fixed) = dst(&[("service", "web"), ("pod", "set")], &[("pod", "web-1")]);
        assert_eq!(got, pairs(&[("dst_pod", "web-1"), ("dst_service", "web")]));
        assert!(!fixed, "valid labels are taken as sent");
    }

    #[test]
    fn endpoint_label_keys_become_valid_prometheus_names() {
        let (got, fixed) =
            dst(&[("app.kubernetes.io/name", "web"), ("", "dropped")], &[("zone\"}", "a")]);
        assert_eq!(got, pairs(&[("dst_app_kubernetes_io_name", "web"), ("dst_zone__", "a")]));
        assert!(fixed);
        // Values keep what they are: the encoder escapes them.
        let (got, _) = dst(&[], &[("pod", "a\"b\\c\nd")]);
        assert_eq!(got, pairs(&[("dst_pod", "a\"b\\c\nd")]));
        // A page with such labels still parses: every key is a valid label name.
        let name_ok = |k: &str| {
            k.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        assert!(got.iter().all(|(k, _)| name_ok(k)));
    }

    #[test]
    fn endpoint_labels_are_capped() {
        let keys: Vec<String> = (0..40).map(|i| format!("k{i:02}")).collect();
        let many: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "v")).collect();
        let (got, fixed) = dst(&many, &[]);
        assert_eq!(got.len(), MAX_DST_LABELS);
        assert_eq!(got.first().map(|(k, _)| k.as_str()), Some("dst_k00"));
        assert!(fixed);
    }

    #[test]
    fn reconnect_backoffs_are_spread() {
        let waits: Vec<Duration> = (0..200).map(|_| backoff(7)).collect();
        let (min, max) = (waits.iter().min().copied(), waits.iter().max().copied());
        let (Some(min), Some(max)) = (min, max) else { panic!("no waits") };
        // 10 s × [0.5, 1.5): spread over most of that range, not stuck in one spot.
        assert!(min >= Duration::from_secs(5) && max < Duration::from_secs(15), "{min:?} {max:?}");
        assert!(max - min > Duration::from_secs(6), "jitter too narrow: {min:?}..{max:?}");
    }
}
