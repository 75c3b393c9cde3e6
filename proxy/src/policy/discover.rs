//! The inbound policies of the pod's ports, watched from the control plane
//! (`io.linkerd.proxy.inbound.InboundServerPolicies/WatchPort`, one stream per port, as
//! linkerd2-proxy does): each port's latest valid policy is in a `watch` channel that
//! connections read. A stream that fails is opened again with backoff, and the port keeps
//! its last policy meanwhile; an update the proxy cannot enforce is refused whole (logged
//! and counted) and the port keeps its last policy.

use std::{collections::HashMap, sync::Arc, time::Duration};

use linkerd2_proxy_api::inbound::{
    PortSpec, inbound_server_policies_client::InboundServerPoliciesClient,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{debug, info, warn};
use weft_identity::control::Connector;

use super::server::ServerPolicy;

/// At most this many ports are watched: each is a stream on the control plane.
pub const MAX_PORTS: usize = 256;

/// A port's policy: `None` until the control plane first answers.
pub type PortPolicy = watch::Receiver<Option<Arc<ServerPolicy>>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpdateLabels {
    port: u16,
    result: &'static str,
}

/// `inbound_policy_updates_total{port, result}`.
#[derive(Debug, Clone, Default)]
pub struct PolicyMetrics {
    updates: Family<UpdateLabels, Counter>,
}

impl PolicyMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = PolicyMetrics::default();
        registry.register(
            "inbound_policy_updates",
            "Inbound policy updates from the control plane, by port and result (ok, invalid, stream_ended, unavailable)",
            m.updates.clone(),
        );
        m
    }

    fn count(&self, port: u16, result: &'static str) {
        self.updates.get_or_create(&UpdateLabels { port, result }).inc();
    }
}

/// Starts one watch per port; returns each port's channel.
pub fn start(
    connector: Connector,
    workload: String,
    ports: impl IntoIterator<Item = u16>,
    metrics: PolicyMetrics,
) -> HashMap<u16, PortPolicy> {
    let channel = connector
        .endpoint()
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(3))
        .connect_with_connector_lazy(connector);
    let client = InboundServerPoliciesClient::new(channel);
    let workload: Arc<str> = workload.into();
    ports
        .into_iter()
        .map(|port| {
            let (tx, rx) = watch::channel(None);
            tokio::spawn(follow(client.clone(), workload.clone(), port, tx, metrics.clone()));
            (port, rx)
        })
        .collect()
}

async fn follow(
    client: InboundServerPoliciesClient<Channel>,
    workload: Arc<str>,
    port: u16,
    tx: watch::Sender<Option<Arc<ServerPolicy>>>,
    metrics: PolicyMetrics,
) {
    let mut attempt = 0;
    loop {
        let spec = PortSpec { workload: workload.to_string(), port: u32::from(port) };
        match client.clone().watch_port(spec).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(server)) => {
                            attempt = 0;
                            match ServerPolicy::from_api(server) {
                                Ok(policy) => {
                                    metrics.count(port, "ok");
                                    info!(port, server.kind = %policy.meta.kind, server.name = %policy.meta.name, authorizations = policy.authorizations.len(), routes = policy.routes.len(), "inbound policy updated");
                                    tx.send_replace(Some(Arc::new(policy)));
                                }
                                Err(e) => {
                                    metrics.count(port, "invalid");
                                    warn!(port, error = %e, "inbound policy update refused; the port keeps its last policy");
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            debug!(port, error = %e, "inbound policy stream failed");
                            break;
                        }
                    }
                }
                metrics.count(port, "stream_ended");
            }
            Err(e) => {
                metrics.count(port, "unavailable");
                if attempt == 0 {
                    let state = if tx.borrow().is_some() {
                        "keeps its last policy"
                    } else {
                        "has no policy yet"
                    };
                    warn!(port, error = %e, "the policy service is unavailable; the port {state}");
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(crate::discovery::backoff(attempt)).await;
        attempt += 1;
    }
}
