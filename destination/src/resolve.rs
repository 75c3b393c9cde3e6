//! What a lookup resolves to, shared by both sources: the target named in a request
//! (`name.ns.svc.<cluster-domain>:port` or `IP:port`), the endpoint set it resolves to, and
//! the subscriptions through which a source pushes new sets to the streams following them.
//!
//! Each followed target owns one `tokio::sync::watch` channel holding its latest
//! [`Resolution`]: a slow subscriber never queues updates, it diffs against the newest set when
//! it catches up.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use linkerd2_proxy_api::destination as pb;
use tokio::sync::watch;

use crate::{
    model::ObjKey,
    profile::{ProfilePolicy, RouteProfile},
    split::WeightedDst,
};

/// Endpoint weight sent to proxies (all endpoints are equal; the proxy balances by latency).
pub const DEFAULT_WEIGHT: u32 = 10_000;

/// One endpoint as proxies see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
    /// The identity the endpoint's proxy presents; set only for meshed endpoints.
    pub identity: Option<String>,
    pub hint: Hint,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Hint {
    #[default]
    Unknown,
    /// A meshed endpoint: HTTP may be sent as HTTP/2; an opaque port is reached through the
    /// peer proxy's inbound port.
    H2 { opaque_transport: Option<u16> },
}

impl Endpoint {
    pub fn to_proto(&self) -> pb::WeightedAddr {
        use pb::{protocol_hint, tls_identity};
        pb::WeightedAddr {
            addr: Some(self.addr.into()),
            weight: self.weight,
            metric_labels: self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            tls_identity: self.identity.as_ref().map(|name| pb::TlsIdentity {
                strategy: Some(tls_identity::Strategy::DnsLikeIdentity(
                    tls_identity::DnsLikeIdentity { name: name.clone() },
                )),
                server_name: None,
            }),
            protocol_hint: match self.hint {
                Hint::Unknown => None,
                Hint::H2 { opaque_transport } => Some(pb::ProtocolHint {
                    protocol: Some(protocol_hint::Protocol::H2(protocol_hint::H2 {})),
                    opaque_transport: opaque_transport
                        .map(|p| protocol_hint::OpaqueTransport { inbound_port: u32::from(p) }),
                }),
            },
            authority_override: None,
            http2: None,
            resource_ref: None,
        }
    }
}

/// What a target resolves to now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// False when nothing by that name or address is known.
    pub exists: bool,
    /// Set-level metric labels (`namespace`, `service`).
    pub labels: BTreeMap<String, String>,
    pub endpoints: BTreeMap<SocketAddr, Arc<Endpoint>>,
    pub profile: ProfileSource,
}

/// What a profile is built from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileSource {
    /// `name.ns.svc.<cluster-domain>` of a service; empty otherwise.
    pub fqn: String,
    pub policy: ProfilePolicy,
    /// The routes of the HTTPRoute that claims the service port, if any
    /// ([`crate::profile::routes`]).
    pub route_profile: Option<Arc<RouteProfile>>,
    pub opaque: bool,
    /// The services that a service's requests are split across ([`crate::split`]).
    pub dst_overrides: Vec<WeightedDst>,
    /// For a pod looked up by IP: the pod itself, so the proxy can reach it directly.
    pub endpoint: Option<Arc<Endpoint>>,
}

impl Resolution {
    pub fn not_found() -> Resolution {
        Resolution::default()
    }

    pub fn profile(&self) -> pb::DestinationProfile {
        let p = &self.profile;
        crate::profile::build(
            &p.fqn,
            &p.policy,
            p.route_profile.as_deref(),
            p.opaque,
            &p.dst_overrides,
            p.endpoint.as_ref().map(|e| e.to_proto()),
        )
    }
}

/// What a request names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A service in the cluster: `name.ns.svc.<cluster-domain>:port`.
    Service {
        key: ObjKey,
        port: u16,
    },
    Addr(SocketAddr),
    /// A name outside the cluster domain (or not a service name): never resolvable here.
    External(String),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid destination path {0:?}: expected host:port")]
pub struct InvalidPath(pub String);

/// Parses the `path` of a `GetDestination`. A name without a port gets port 80, as an HTTP
/// authority would.
pub fn parse_path(path: &str, cluster_domain: &str) -> Result<Target, InvalidPath> {
    let invalid = || InvalidPath(path.to_string());
    if let Ok(addr) = path.parse::<SocketAddr>() {
        return Ok(Target::Addr(addr));
    }
    if let Ok(ip) = path.parse::<IpAddr>() {
        return Ok(Target::Addr(SocketAddr::new(ip, 80)));
    }
    let (host, port) = match path.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| invalid())?),
        None => (path, 80),
    };
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.is_empty()
        || port == 0
        || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        || host.split('.').any(str::is_empty)
    {
        return Err(invalid());
    }
    let domain = cluster_domain.trim_matches('.').to_ascii_lowercase();
    let local =
        host.strip_suffix(domain.as_str()).and_then(|h| h.strip_suffix('.')).unwrap_or(&host);
    let labels: Vec<&str> = local.split('.').collect();
    match labels.as_slice() {
        [name, ns, "svc"] => Ok(Target::Service { key: ObjKey::new(*ns, *name), port }),
        _ => Ok(Target::External(format!("{host}:{port}"))),
    }
}

/// Follows changes of what targets resolve to.
pub trait Discover: Send + Sync + 'static {
    /// A receiver holding the target's current resolution and every later one; `None` for a
    /// target this source can never resolve (an external name).
    fn resolve(&self, target: &Target) -> Option<watch::Receiver<Arc<Resolution>>>;
}

type Channels = HashMap<u16, watch::Sender<Arc<Resolution>>>;

/// The watch channels of the targets being followed, by service and by IP.
#[derive(Debug, Default)]
pub struct Subscriptions {
    services: HashMap<ObjKey, Channels>,
    addrs: HashMap<IpAddr, Channels>,
    since_sweep: usize,
}

/// Subscribe calls between two sweeps of channels nobody follows any more.
const SWEEP_EVERY: usize = 256;

impl Subscriptions {
    /// Follows `target`; `compute` gives its resolution when it is not followed yet.
    pub fn subscribe(
        &mut self,
        target: &Target,
        compute: impl FnOnce() -> Resolution,
    ) -> Option<watch::Receiver<Arc<Resolution>>> {
        self.since_sweep += 1;
        if self.since_sweep >= SWEEP_EVERY {
            self.sweep();
        }
        let (channels, port) = match target {
            Target::Service { key, port } => (self.services.entry(key.clone()).or_default(), *port),
            Target::Addr(addr) => (self.addrs.entry(addr.ip()).or_default(), addr.port()),
            Target::External(_) => return None,
        };
        let tx = channels.entry(port).or_insert_with(|| watch::Sender::new(Arc::new(compute())));
        Some(tx.subscribe())
    }

    /// Recomputes the followed ports of a service.
    pub fn refresh_service(&mut self, key: &ObjKey, compute: impl Fn(u16) -> Resolution) {
        if let Some(channels) = self.services.get_mut(key) {
            refresh(channels, compute);
            if channels.is_empty() {
                self.services.remove(key);
            }
        }
    }

    /// Recomputes the followed ports of an IP.
    pub fn refresh_addr(&mut self, ip: IpAddr, compute: impl Fn(u16) -> Resolution) {
        if let Some(channels) = self.addrs.get_mut(&ip) {
            refresh(channels, compute);
            if channels.is_empty() {
                self.addrs.remove(&ip);
            }
        }
    }

    /// Recomputes every followed target.
    pub fn refresh_all(&mut self, compute: impl Fn(&Target) -> Resolution) {
        for (key, channels) in &mut self.services {
            refresh(channels, |port| compute(&Target::Service { key: key.clone(), port }));
        }
        for (ip, channels) in &mut self.addrs {
            refresh(channels, |port| compute(&Target::Addr(SocketAddr::new(*ip, port))));
        }
        self.services.retain(|_, c| !c.is_empty());
        self.addrs.retain(|_, c| !c.is_empty());
    }

    /// Drops the channels that nobody follows.
    pub fn sweep(&mut self) {
        self.since_sweep = 0;
        for channels in self.services.values_mut().chain(self.addrs.values_mut()) {
            channels.retain(|_, tx| tx.receiver_count() > 0);
        }
        self.services.retain(|_, c| !c.is_empty());
        self.addrs.retain(|_, c| !c.is_empty());
    }

    /// Targets followed (channels with at least one receiver).
    pub fn len(&self) -> usize {
        self.services
            .values()
            .chain(self.addrs.values())
            .flat_map(|c| c.values())
            .filter(|tx| tx.receiver_count() > 0)
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn refresh(channels: &mut Channels, compute: impl Fn(u16) -> Resolution) {
    channels.retain(|_, tx| tx.receiver_count() > 0);
    for (port, tx) in channels.iter() {
        let new = compute(*port);
        tx.send_if_modified(|current| {
            if **current == new {
                return false;
            }
            *current = Arc::new(new);
            true
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let d = "cluster.local";
        let svc =
            |ns: &str, name: &str, port| Ok(Target::Service { key: ObjKey::new(ns, name), port });
        assert_eq!(parse_path("web.prod.svc.cluster.local:8080", d), svc("prod", "web", 8080));
        assert_eq!(parse_path("web.prod.svc.cluster.local.:8080", d), svc("prod", "web", 8080));
        assert_eq!(parse_path("Web.Prod.svc.cluster.local:80", d), svc("prod", "web", 80));
        assert_eq!(parse_path("web.prod.svc.cluster.local", d), svc("prod", "web", 80));
        assert_eq!(parse_path("web.prod.svc:81", d), svc("prod", "web", 81));
        assert_eq!(
            parse_path("web.prod.svc.example.org:80", "example.org."),
            svc("prod", "web", 80)
        );
        assert_eq!(parse_path("10.1.2.3:80", d), Ok(Target::Addr("10.1.2.3:80".parse().unwrap())));
        assert_eq!(
            parse_path("[fd00::1]:443", d),
            Ok(Target::Addr("[fd00::1]:443".parse().unwrap()))
        );
        assert_eq!(parse_path("10.1.2.3", d), Ok(Target::Addr("10.1.2.3:80".parse().unwrap())));
        assert_eq!(
            parse_path("example.com:443", d),
            Ok(Target::External("example.com:443".into()))
        );
        // Another cluster's domain, and a pod's DNS name under a headless service.
        assert!(matches!(parse_path("web.prod.svc.other.local:80", d), Ok(Target::External(_))));
        assert!(matches!(
            parse_path("web-0.web.prod.svc.cluster.local:80", d),
            Ok(Target::External(_))
        ));
        for bad in [
            "",
            ":80",
            "web.prod.svc.cluster.local:",
            "a:b",
            "a:0",
            "a..b:80",
            "a b:80",
            "a:99999",
            "/x:80",
        ] {
            assert!(parse_path(bad, d).is_err(), "{bad:?} accepted");
        }
    }

    fn res(n: u16) -> Resolution {
        Resolution { exists: n > 0, ..Default::default() }
    }

    #[test]
    fn subscriptions_follow_and_sweep() {
        let mut subs = Subscriptions::default();
        let key = ObjKey::new("ns", "a");
        let t = Target::Service { key: key.clone(), port: 80 };
        let mut rx = subs.subscribe(&t, || res(0)).expect("followed");
        assert!(!rx.borrow_and_update().exists);
        // A second subscriber shares the channel: `compute` is not called.
        let rx2 = subs.subscribe(&t, || panic!("computed twice")).expect("followed");
        assert_eq!(subs.len(), 1);

        subs.refresh_service(&key, res);
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().exists);
        // The same value again wakes nobody.
        subs.refresh_service(&key, res);
        assert!(!rx.has_changed().unwrap());

        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let mut by_ip = subs.subscribe(&Target::Addr(SocketAddr::new(ip, 9)), || res(0)).unwrap();
        subs.refresh_addr(ip, res);
        assert!(by_ip.borrow_and_update().exists);
        subs.refresh_all(|_| res(0));
        assert!(!by_ip.borrow_and_update().exists);
        assert!(!rx.borrow_and_update().exists);

        drop((rx, rx2, by_ip));
        subs.sweep();
        assert!(subs.is_empty());
        assert!(subs.services.is_empty() && subs.addrs.is_empty());
        assert!(subs.subscribe(&Target::External("x:1".into()), || res(0)).is_none());
    }

    #[test]
    fn endpoint_proto() {
        let ep = Endpoint {
            addr: "10.0.0.7:8080".parse().unwrap(),
            weight: DEFAULT_WEIGHT,
            labels: [("pod".to_string(), "web-1".to_string())].into(),
            identity: Some("web.prod.serviceaccount.identity.weft.cluster.local".into()),
            hint: Hint::H2 { opaque_transport: Some(4143) },
        };
        let pb = ep.to_proto();
        assert_eq!(pb.weight, 10_000);
        assert_eq!(pb.metric_labels.get("pod").map(String::as_str), Some("web-1"));
        let Some(pb::tls_identity::Strategy::DnsLikeIdentity(id)) =
            pb.tls_identity.and_then(|t| t.strategy)
        else {
            panic!("no identity")
        };
        assert_eq!(id.name, "web.prod.serviceaccount.identity.weft.cluster.local");
        let hint = pb.protocol_hint.expect("hint");
        assert!(matches!(hint.protocol, Some(pb::protocol_hint::Protocol::H2(_))));
        assert_eq!(hint.opaque_transport.map(|o| o.inbound_port), Some(4143));
        let plain = Endpoint { identity: None, hint: Hint::Unknown, ..ep }.to_proto();
        assert!(plain.tls_identity.is_none() && plain.protocol_hint.is_none());
    }
}
