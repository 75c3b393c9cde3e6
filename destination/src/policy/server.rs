//! The gRPC `io.linkerd.proxy.inbound.InboundServerPolicies` service: `GetPort` answers with
//! a port's current `Server`; `WatchPort` sends it at once and again each time it changes,
//! until the proxy goes away. Like `Get`, a stream holds no queue: a slow reader gets the
//! newest message when it reads again.

use std::{fmt, pin::Pin, str::FromStr, sync::Arc};

use futures_util::{Stream, stream};
use linkerd2_proxy_api::inbound::{
    self as pb,
    inbound_server_policies_server::{InboundServerPolicies, InboundServerPoliciesServer},
};
use serde::Deserialize;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::debug;

use super::index::SharedPolicyIndex;
use crate::{
    metrics::{LookupLabels, Metrics},
    model::ObjKey,
    server::Subscriber,
};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The pod a proxy asks for: `<namespace>:<pod>`, or Linkerd's newer JSON form
/// `{"ns":"<namespace>","pod":"<pod>"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload(pub ObjKey);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonWorkload {
    ns: String,
    pod: Option<String>,
    external_workload: Option<String>,
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("workload {s:?} is not <namespace>:<pod> or {{\"ns\":..,\"pod\":..}}");
        let (ns, pod) = if s.trim_start().starts_with('{') {
            let w: JsonWorkload = serde_json::from_str(s).map_err(|e| format!("{}: {e}", bad()))?;
            match (w.pod, w.external_workload) {
                (Some(pod), None) => (w.ns, pod),
                (None, Some(_)) => {
                    return Err(format!("workload {s:?}: external workloads are not supported"));
                }
                _ => return Err(bad()),
            }
        } else {
            let (ns, pod) = s.split_once(':').ok_or_else(bad)?;
            (ns.to_string(), pod.to_string())
        };
        if ns.is_empty() || pod.is_empty() || ns.contains([':', '/']) || pod.contains([':', '/']) {
            return Err(bad());
        }
        Ok(Workload(ObjKey::new(ns, pod)))
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Clone)]
pub struct InboundPolicyService {
    index: SharedPolicyIndex,
    metrics: Metrics,
    /// Lookups wait until the source has its first complete view of pods and policies.
    synced: watch::Receiver<bool>,
}

/// `server` or `default`: what a lookup resolved to, for the lookup metric.
fn result_of(s: &pb::Server) -> &'static str {
    match s.labels.get("kind").map(String::as_str) {
        Some("default") => "default",
        _ => "server",
    }
}

impl InboundPolicyService {
    pub fn new(index: SharedPolicyIndex, metrics: Metrics, synced: watch::Receiver<bool>) -> Self {
        Self { index, metrics, synced }
    }

    pub fn into_server(self) -> InboundServerPoliciesServer<Self> {
        InboundServerPoliciesServer::new(self)
    }

    fn count(&self, rpc: &'static str, result: &'static str) {
        self.metrics.lookups.get_or_create(&LookupLabels { rpc, result }).inc();
    }

    /// Checks the request and waits for the source.
    async fn target(
        &self,
        rpc: &'static str,
        spec: &pb::PortSpec,
    ) -> Result<(ObjKey, u16), Status> {
        let invalid = |msg: String| {
            self.count(rpc, "invalid");
            Status::invalid_argument(msg)
        };
        let workload: Workload = spec.workload.parse().map_err(invalid)?;
        let port = u16::try_from(spec.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| invalid(format!("port {} is not a port (1-65535)", spec.port)))?;
        let mut synced = self.synced.clone();
        synced
            .wait_for(|s| *s)
            .await
            .map_err(|_| Status::unavailable("policy discovery is shutting down"))?;
        Ok((workload.0, port))
    }

    fn not_found(&self, rpc: &'static str, pod: &ObjKey) -> Status {
        self.count(rpc, "not_found");
        debug!(rpc, %pod, "unknown pod");
        Status::not_found(format!(
            "pod {pod} is not known to the destination service (not created yet, deleted, or in another cluster)"
        ))
    }
}

fn watch_stream(
    mut rx: watch::Receiver<Arc<pb::Server>>,
    subscriber: Subscriber,
) -> BoxStream<pb::Server> {
    let first = rx.borrow_and_update().clone();
    let state = (rx, Some(first.clone()), first, subscriber);
    Box::pin(stream::unfold(state, |(mut rx, mut next, mut sent, subscriber)| async move {
        loop {
            if let Some(server) = next.take() {
                subscriber.sent("server");
                return Some((Ok((*server).clone()), (rx, None, sent, subscriber)));
            }
            // The sender lives as long as anyone follows the port.
            rx.changed().await.ok()?;
            let server = rx.borrow_and_update().clone();
            // A change and its undoing between two reads is no change to this proxy.
            if server != sent {
                sent = server.clone();
                next = Some(server);
            }
        }
    }))
}

#[tonic::async_trait]
impl InboundServerPolicies for InboundPolicyService {
    type WatchPortStream = BoxStream<pb::Server>;

    async fn get_port(&self, req: Request<pb::PortSpec>) -> Result<Response<pb::Server>, Status> {
        let (pod, port) = self.target("get_port", req.get_ref()).await?;
        let server = self.index.lock().get(&pod, port);
        let server = server.ok_or_else(|| self.not_found("get_port", &pod))?;
        self.count("get_port", result_of(&server));
        Ok(Response::new(server))
    }

    async fn watch_port(
        &self,
        req: Request<pb::PortSpec>,
    ) -> Result<Response<Self::WatchPortStream>, Status> {
        let (pod, port) = self.target("watch_port", req.get_ref()).await?;
        let rx = self.index.lock().watch(&pod, port);
        let rx = rx.ok_or_else(|| self.not_found("watch_port", &pod))?;
        self.count("watch_port", result_of(&rx.borrow()));
        debug!(%pod, port, "watching");
        Ok(Response::new(watch_stream(rx, Subscriber::new(&self.metrics, "watch_port"))))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    use futures_util::StreamExt as _;
    use linkerd2_proxy_api::inbound::inbound_server_policies_client::InboundServerPoliciesClient;
    use tonic::Code;

    use super::*;
    use crate::static_source::{Catalog, StaticIndex};

    const FILE: &str = "
pods: [{name: web-1, namespace: prod, labels: {app: web}}]
policies:
  - apiVersion: policy.weft.dev/v1beta1
    kind: Server
    metadata: {name: web-http, namespace: prod}
    spec: {podSelector: {matchLabels: {app: web}}, port: 8080, proxyProtocol: HTTP/2}
";

    /// The service over real HTTP/2 on loopback, as proxies reach it.
    #[tokio::test]
    async fn watch_and_get_over_grpc() {
        let policy = SharedPolicyIndex::default();
        let (catalog, _) = Catalog::parse(Path::new("f"), FILE).unwrap();
        let index = StaticIndex::new(catalog, "cluster.local", policy.clone());
        let metrics = Metrics::default();
        let (_synced_tx, synced) = watch::channel(true);
        let service = InboundPolicyService::new(policy, metrics.clone(), synced);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service.into_server())
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let mut client =
            InboundServerPoliciesClient::connect(format!("http://{addr}")).await.unwrap();
        let spec = |workload: &str, port: u32| pb::PortSpec { workload: workload.into(), port };

        let mut stream = client.watch_port(spec("prod:web-1", 8080)).await.unwrap().into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.labels["name"], "web-http");
        // The Server goes away: the stream sends the default, once.
        let (catalog, _) =
            Catalog::parse(Path::new("f"), "pods: [{name: web-1, namespace: prod}]").unwrap();
        index.replace(catalog);
        let second = stream.next().await.unwrap().unwrap();
        assert_eq!(second.labels["kind"], "default");
        let (catalog, _) = Catalog::parse(
            Path::new("f"),
            "pods: [{name: web-1, namespace: prod, labels: {a: b}}]",
        )
        .unwrap();
        index.replace(catalog);
        let quiet =
            tokio::time::timeout(std::time::Duration::from_millis(200), stream.next()).await;
        assert!(quiet.is_err(), "an unchanged policy was sent again: {quiet:?}");

        let json = spec(r#"{"ns":"prod","pod":"web-1"}"#, 8080);
        assert_eq!(client.get_port(json).await.unwrap().into_inner(), second);
        for (workload, port, code) in [
            ("prod:nope", 8080, Code::NotFound),
            ("prod", 8080, Code::InvalidArgument),
            ("prod:web-1", 0, Code::InvalidArgument),
            ("prod:web-1", 65536, Code::InvalidArgument),
        ] {
            let e = client.get_port(spec(workload, port)).await.unwrap_err();
            assert_eq!(e.code(), code, "{workload} {port}: {e:?}");
            let e = client.watch_port(spec(workload, port)).await.unwrap_err();
            assert_eq!(e.code(), code, "{workload} {port}: {e:?}");
        }
        let e = client.get_port(spec("prod:nope", 80)).await.unwrap_err();
        assert!(e.message().contains("pod prod/nope is not known"), "{}", e.message());
        let count =
            |rpc, result| metrics.lookups.get_or_create(&LookupLabels { rpc, result }).get();
        assert_eq!(count("watch_port", "server"), 1);
        assert_eq!(count("get_port", "default"), 1);
        assert_eq!(count("get_port", "not_found"), 2);
        assert_eq!(count("get_port", "invalid"), 3);
        assert_eq!(count("watch_port", "invalid"), 3);
        let sent = |update| {
            metrics
                .updates
                .get_or_create(&crate::metrics::UpdateLabels { rpc: "watch_port", update })
                .get()
        };
        assert_eq!(sent("server"), 2);
        drop(stream);
    }

    #[test]
    fn workloads() {
        let ok = |s: &str| s.parse::<Workload>().map(|w| w.0);
        assert_eq!(ok("prod:web-1"), Ok(ObjKey::new("prod", "web-1")));
        assert_eq!(ok(r#"{"ns":"prod","pod":"web-1"}"#), Ok(ObjKey::new("prod", "web-1")));
        assert_eq!(ok(r#" {"pod":"web-1", "ns":"prod"}"#), Ok(ObjKey::new("prod", "web-1")));
        let external = ok(r#"{"ns":"prod","external_workload":"vm-1"}"#).unwrap_err();
        assert!(external.contains("external workloads are not supported"), "{external}");
        for bad in [
            "",
            "prod",
            ":web",
            "prod:",
            "prod:web:1",
            "a/b:c",
            "{",
            r#"{"ns":"prod"}"#,
            r#"{"ns":"prod","pod":"a","other":1}"#,
            r#"{"ns":"","pod":"a"}"#,
        ] {
            assert!(ok(bad).is_err(), "{bad:?} accepted");
        }
    }
}
