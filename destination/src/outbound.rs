//! The gRPC `io.linkerd.proxy.outbound.OutboundPolicies` service, for linkerd2-proxy.
//!
//! Weft gives a proxy its outbound routing — routes, retries, timeouts, traffic splits,
//! opaque ports — through `Destination/GetProfile`, which it serves for every address. A
//! linkerd2-proxy (2.13 and later) asks this service first, and treats any answer but a
//! policy or `NotFound` as fatal for the connection: an unknown service (`Unimplemented`)
//! would fail all of its outbound traffic. On `NotFound` it builds its policy from the
//! profile instead. So every well-formed lookup is answered `NotFound`, which is true —
//! Weft has no outbound policy resources — and routes the proxy to the profile that holds
//! the same facts. A malformed one is `InvalidArgument`. Each is counted in `lookups`.

use std::pin::Pin;

use futures_util::Stream;
use linkerd2_proxy_api::outbound::{
    self as pb,
    outbound_policies_server::{OutboundPolicies, OutboundPoliciesServer},
};
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::metrics::{LookupLabels, Metrics};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone, Debug)]
pub struct OutboundPolicyService {
    metrics: Metrics,
}

impl OutboundPolicyService {
    pub fn new(metrics: Metrics) -> Self {
        OutboundPolicyService { metrics }
    }

    pub fn into_server(self) -> OutboundPoliciesServer<Self> {
        OutboundPoliciesServer::new(self)
    }

    /// The answer to a lookup: why there is no policy for a well-formed target.
    fn lookup(&self, rpc: &'static str, spec: &pb::TrafficSpec) -> Status {
        let count =
            |result| self.metrics.lookups.get_or_create(&LookupLabels { rpc, result }).inc();
        match target(spec) {
            Ok(target) => {
                count("not_found");
                debug!(rpc, %target, workload = spec.source_workload, "no outbound policy");
                Status::not_found(format!(
                    "no outbound policy for {target}: Weft serves outbound routing through \
                     Destination/GetProfile"
                ))
            }
            Err(why) => {
                count("invalid");
                Status::invalid_argument(why)
            }
        }
    }
}

/// The target a `TrafficSpec` names, for messages: an IP:port or an authority.
fn target(spec: &pb::TrafficSpec) -> Result<String, String> {
    use pb::traffic_spec::Target;
    match &spec.target {
        Some(Target::Addr(addr)) => std::net::SocketAddr::try_from(*addr)
            .map(|a| a.to_string())
            .map_err(|e| format!("target address: {e}")),
        Some(Target::Authority(a)) if a.parse::<tonic::codegen::http::uri::Authority>().is_ok() => {
            Ok(a.clone())
        }
        Some(Target::Authority(a)) => Err(format!("target authority {a:?} is not host[:port]")),
        None => Err("a TrafficSpec names an address or an authority".into()),
    }
}

#[tonic::async_trait]
impl OutboundPolicies for OutboundPolicyService {
    type WatchStream = BoxStream<pb::OutboundPolicy>;

    async fn get(
        &self,
        req: Request<pb::TrafficSpec>,
    ) -> Result<Response<pb::OutboundPolicy>, Status> {
        Err(self.lookup("outbound_get", req.get_ref()))
    }

    async fn watch(
        &self,
        req: Request<pb::TrafficSpec>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(self.lookup("outbound_watch", req.get_ref()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use linkerd2_proxy_api::{
        net::TcpAddress, outbound::outbound_policies_client::OutboundPoliciesClient,
    };
    use pb::traffic_spec::Target;
    use tonic::Code;

    use super::*;

    /// Over real HTTP/2 on loopback, with the API crate's client, as linkerd2-proxy asks.
    #[tokio::test]
    async fn every_lookup_is_not_found_so_linkerd_proxies_use_the_profile() {
        let metrics = Metrics::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(OutboundPolicyService::new(metrics.clone()).into_server())
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let mut client = OutboundPoliciesClient::connect(format!("http://{addr}")).await.unwrap();
        let spec = |target| pb::TrafficSpec {
            source_workload: r#"{"ns":"prod","pod":"web-1"}"#.into(),
            target,
        };
        let ip = Target::Addr(TcpAddress::from(
            "10.96.0.10:80".parse::<std::net::SocketAddr>().unwrap(),
        ));
        let name = Target::Authority("web.prod.svc.cluster.local:80".into());
        for target in [ip, name] {
            let e = client.get(spec(Some(target.clone()))).await.unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{e:?}");
            assert!(e.message().contains("Destination/GetProfile"), "{}", e.message());
            let e = client.watch(spec(Some(target))).await.unwrap_err();
            assert_eq!(e.code(), Code::NotFound, "{e:?}");
        }
        let e = client.get(spec(None)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let bad = Target::Authority("web prod".into());
        let e = client.watch(spec(Some(bad))).await.unwrap_err();
        assert_eq!(
            (e.code(), e.message()),
            (Code::InvalidArgument, r#"target authority "web prod" is not host[:port]"#)
        );
        let no_ip = Target::Addr(TcpAddress { ip: None, port: 80 });
        let e = client.get(spec(Some(no_ip))).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

        let count =
            |rpc, result| metrics.lookups.get_or_create(&LookupLabels { rpc, result }).get();
        assert_eq!(count("outbound_get", "not_found"), 2);
        assert_eq!(count("outbound_watch", "not_found"), 2);
        assert_eq!(count("outbound_get", "invalid"), 2);
        assert_eq!(count("outbound_watch", "invalid"), 1);
    }
}
