//! The gRPC `io.linkerd.proxy.destination.Destination` service. `Get` sends the current
//! endpoint set (or `NoEndpoints`), then the differences as they happen; `GetProfile` sends the
//! profile, then each changed profile. Streams are pulled by the HTTP/2 flow control: a slow
//! proxy holds no queue here, it gets the difference to the newest set when it reads again.

use std::{collections::VecDeque, pin::Pin, sync::Arc};

use futures_util::{Stream, StreamExt as _, stream};
use linkerd2_proxy_api::destination::{
    self as pb,
    destination_server::{Destination, DestinationServer},
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::{
    metrics::{LookupLabels, Metrics, RpcLabels, UpdateLabels},
    resolve::{Discover, Resolution, Target, parse_path},
};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub struct DestinationService {
    discover: Arc<dyn Discover>,
    cluster_domain: Arc<str>,
    metrics: Metrics,
    /// Lookups wait until the source has its first complete view.
    synced: watch::Receiver<bool>,
}

impl DestinationService {
    pub fn new(
        discover: Arc<dyn Discover>,
        cluster_domain: &str,
        metrics: Metrics,
        synced: watch::Receiver<bool>,
    ) -> Self {
        Self { discover, cluster_domain: cluster_domain.into(), metrics, synced }
    }

    pub fn into_server(self) -> DestinationServer<Self> {
        DestinationServer::new(self)
    }

    async fn lookup(
        &self,
        rpc: &'static str,
        req: &pb::GetDestination,
    ) -> Result<Option<watch::Receiver<Arc<Resolution>>>, Status> {
        let count =
            |result| self.metrics.lookups.get_or_create(&LookupLabels { rpc, result }).inc();
        let target = parse_path(&req.path, &self.cluster_domain).map_err(|e| {
            count("invalid");
            Status::invalid_argument(e.to_string())
        })?;
        let mut synced = self.synced.clone();
        synced
            .wait_for(|s| *s)
            .await
            .map_err(|_| Status::unavailable("discovery is shutting down"))?;
        let rx = self.discover.resolve(&target);
        let result = match (&target, &rx) {
            (_, None) => "not_found",
            (_, Some(rx)) if !rx.borrow().exists => "not_found",
            (Target::Service { .. }, _) => "service",
            (Target::Addr(_), Some(rx)) if rx.borrow().profile.endpoint.is_some() => "pod",
            (Target::Addr(_), _) => "service",
            (Target::External(_), _) => "not_found",
        };
        count(result);
        debug!(rpc, path = %req.path, result, "lookup");
        Ok(rx)
    }
}

/// Decrements the subscriber gauge when a stream is dropped.
pub(crate) struct Subscriber {
    metrics: Metrics,
    rpc: &'static str,
}

impl Subscriber {
    pub(crate) fn new(metrics: &Metrics, rpc: &'static str) -> Self {
        metrics.subscribers.get_or_create(&RpcLabels { rpc }).inc();
        Self { metrics: metrics.clone(), rpc }
    }

    pub(crate) fn sent(&self, update: &'static str) {
        self.metrics.updates.get_or_create(&UpdateLabels { rpc: self.rpc, update }).inc();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.metrics.subscribers.get_or_create(&RpcLabels { rpc: self.rpc }).dec();
    }
}

fn update_kind(u: &pb::Update) -> &'static str {
    match u.update {
        Some(pb::update::Update::Add(_)) => "add",
        Some(pb::update::Update::Remove(_)) => "remove",
        Some(pb::update::Update::NoEndpoints(_)) => "no_endpoints",
        None => "none",
    }
}

/// The updates that take a proxy that saw `old` (nothing yet: `None`) to `new`.
pub fn diff(old: Option<&Resolution>, new: &Resolution) -> Vec<pb::Update> {
    use pb::update::Update;
    let no_endpoints =
        |exists| pb::Update { update: Some(Update::NoEndpoints(pb::NoEndpoints { exists })) };
    if new.endpoints.is_empty() {
        // An empty set is always said with `NoEndpoints`, which also clears the proxy's set.
        return match old {
            Some(o) if o.endpoints.is_empty() && o.exists == new.exists => Vec::new(),
            _ => vec![no_endpoints(new.exists)],
        };
    }
    let old_endpoints = old.map(|o| &o.endpoints).filter(|e| !e.is_empty());
    let labels_changed = old.is_none_or(|o| o.labels != new.labels);
    let mut out = Vec::new();
    if let Some(old_eps) = old_endpoints {
        let removed: Vec<_> = old_eps
            .keys()
            .filter(|a| !new.endpoints.contains_key(a))
            .map(|a| (*a).into())
            .collect();
        if !removed.is_empty() {
            out.push(pb::Update { update: Some(Update::Remove(pb::AddrSet { addrs: removed })) });
        }
    }
    let added: Vec<_> = new
        .endpoints
        .iter()
        .filter(|(addr, ep)| {
            labels_changed || old_endpoints.and_then(|o| o.get(*addr)) != Some(*ep)
        })
        .map(|(_, ep)| ep.to_proto())
        .collect();
    if !added.is_empty() {
        let metric_labels = new.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        out.push(pb::Update {
            update: Some(Update::Add(pb::WeightedAddrSet { addrs: added, metric_labels })),
        });
    }
    out
}

struct GetState {
    rx: watch::Receiver<Arc<Resolution>>,
    sent: Arc<Resolution>,
    pending: VecDeque<pb::Update>,
    subscriber: Subscriber,
}

fn get_stream(
    mut rx: watch::Receiver<Arc<Resolution>>,
    subscriber: Subscriber,
) -> BoxStream<pb::Update> {
    let first = rx.borrow_and_update().clone();
    let pending = diff(None, &first).into();
    let state = GetState { rx, sent: first, pending, subscriber };
    Box::pin(stream::unfold(state, |mut st| async move {
        loop {
            if let Some(update) = st.pending.pop_front() {
                st.subscriber.sent(update_kind(&update));
                return Some((Ok(update), st));
            }
            // The sender lives as long as anyone follows the target; if it is gone, ending
            // the stream makes the proxy ask again.
            st.rx.changed().await.ok()?;
            let new = st.rx.borrow_and_update().clone();
            st.pending.extend(diff(Some(&st.sent), &new));
            st.sent = new;
        }
    }))
}

fn profile_stream(
    mut rx: watch::Receiver<Arc<Resolution>>,
    subscriber: Subscriber,
) -> BoxStream<pb::DestinationProfile> {
    let first = rx.borrow_and_update().profile();
    let state = (rx, Some(first.clone()), first, subscriber);
    Box::pin(stream::unfold(state, |(mut rx, mut next, mut sent, subscriber)| async move {
        loop {
            if let Some(profile) = next.take() {
                subscriber.sent("profile");
                return Some((Ok(profile), (rx, None, sent, subscriber)));
            }
            rx.changed().await.ok()?;
            let profile = rx.borrow_and_update().profile();
            if profile != sent {
                sent = profile.clone();
                next = Some(profile);
            }
        }
    }))
}

/// One message, then an open stream that sends nothing more.
fn once_then_pending<T: Send + 'static>(item: T, subscriber: Subscriber) -> BoxStream<T> {
    let rest = stream::once(async move {
        let _subscriber = subscriber;
        std::future::pending::<Result<T, Status>>().await
    });
    Box::pin(stream::once(async move { Ok(item) }).chain(rest))
}

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = BoxStream<pb::Update>;
    type GetProfileStream = BoxStream<pb::DestinationProfile>;

    async fn get(
        &self,
        req: Request<pb::GetDestination>,
    ) -> Result<Response<Self::GetStream>, Status> {
        let req = req.into_inner();
        let subscriber = Subscriber::new(&self.metrics, "get");
        let stream = match self.lookup("get", &req).await? {
            Some(rx) => get_stream(rx, subscriber),
            // Never resolvable: say so once and keep the stream open, so that the proxy does
            // not ask again and again.
            None => {
                subscriber.sent("no_endpoints");
                let update = pb::NoEndpoints { exists: false };
                once_then_pending(
                    pb::Update { update: Some(pb::update::Update::NoEndpoints(update)) },
                    subscriber,
                )
            }
        };
        Ok(Response::new(stream))
    }

    async fn get_profile(
        &self,
        req: Request<pb::GetDestination>,
    ) -> Result<Response<Self::GetProfileStream>, Status> {
        let req = req.into_inner();
        let subscriber = Subscriber::new(&self.metrics, "get_profile");
        let stream = match self.lookup("get_profile", &req).await? {
            Some(rx) => profile_stream(rx, subscriber),
            None => {
                subscriber.sent("profile");
                once_then_pending(Resolution::not_found().profile(), subscriber)
            }
        };
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::{collections::BTreeMap, net::SocketAddr};

    use super::*;
    use crate::resolve::{Endpoint, Hint};

    fn ep(addr: &str, identity: Option<&str>) -> (SocketAddr, Arc<Endpoint>) {
        let addr: SocketAddr = addr.parse().unwrap();
        let e = Endpoint {
            addr,
            weight: 10_000,
            labels: BTreeMap::new(),
            identity: identity.map(Into::into),
            hint: if identity.is_some() {
                Hint::H2 { opaque_transport: None }
            } else {
                Hint::Unknown
            },
        };
        (addr, Arc::new(e))
    }

    fn set(eps: &[(SocketAddr, Arc<Endpoint>)]) -> Resolution {
        Resolution {
            exists: true,
            labels: [("service".to_string(), "web".to_string())].into(),
            endpoints: eps.iter().cloned().collect(),
            ..Default::default()
        }
    }

    fn kinds(us: &[pb::Update]) -> Vec<(&'static str, usize)> {
        us.iter()
            .map(|u| match &u.update {
                Some(pb::update::Update::Add(s)) => ("add", s.addrs.len()),
                Some(pb::update::Update::Remove(s)) => ("remove", s.addrs.len()),
                Some(pb::update::Update::NoEndpoints(n)) => {
                    (if n.exists { "empty" } else { "missing" }, 0)
                }
                None => ("none", 0),
            })
            .collect()
    }

    #[test]
    fn diffs() {
        let (a, b, c) = (ep("10.0.0.1:80", None), ep("10.0.0.2:80", None), ep("10.0.0.3:80", None));
        let missing = Resolution::not_found();
        let empty = set(&[]);
        assert_eq!(kinds(&diff(None, &missing)), [("missing", 0)]);
        assert_eq!(kinds(&diff(None, &empty)), [("empty", 0)]);
        assert_eq!(kinds(&diff(Some(&missing), &empty)), [("empty", 0)]);
        assert_eq!(kinds(&diff(Some(&empty), &empty)), []);
        let ab = set(&[a.clone(), b.clone()]);
        assert_eq!(kinds(&diff(None, &ab)), [("add", 2)]);
        assert_eq!(kinds(&diff(Some(&empty), &ab)), [("add", 2)]);
        assert_eq!(kinds(&diff(Some(&ab), &ab)), []);
        let abc = set(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(kinds(&diff(Some(&ab), &abc)), [("add", 1)]);
        let bc = set(&[b.clone(), c.clone()]);
        assert_eq!(kinds(&diff(Some(&abc), &bc)), [("remove", 1)]);
        assert_eq!(kinds(&diff(Some(&ab), &bc)), [("remove", 1), ("add", 1)]);
        assert_eq!(kinds(&diff(Some(&bc), &missing)), [("missing", 0)]);
        assert_eq!(kinds(&diff(Some(&bc), &empty)), [("empty", 0)]);
        // An endpoint that changed (its pod became meshed) is added again.
        let b_meshed = ep("10.0.0.2:80", Some("b.ns.serviceaccount.identity.weft.cluster.local"));
        assert_eq!(kinds(&diff(Some(&bc), &set(&[b_meshed, c.clone()]))), [("add", 1)]);
        // New set labels resend the whole set.
        let mut relabeled = bc.clone();
        relabeled.labels.insert("namespace".into(), "x".into());
        assert_eq!(kinds(&diff(Some(&bc), &relabeled)), [("add", 2)]);
    }
}
