//! The Weft destination service: tells proxies where a destination's endpoints are, who they
//! are (TLS identities), how to talk to them (protocol hints), and how to retry
//! (`io.linkerd.proxy.destination.Destination`, gRPC on 8086).
//!
//! Layers, each depending only on the ones above it:
//! - [`model`]: Kubernetes objects reduced to what discovery needs (pure);
//! - [`profile`]: Service annotations → retry/timeout policy → `DestinationProfile` (pure);
//! - [`split`]: traffic splits (Gateway API HTTPRoutes, the static file's `splits:`) → the
//!   profile's `dst_overrides` (pure);
//! - [`resolve`]: lookup targets, resolutions and the watch channels that followers hold;
//! - [`index`]: the Kubernetes index (pure), fed by [`k8s`] watches; [`static_source`]: a
//!   YAML file instead;
//! - [`server`]: the gRPC streams; [`connections`]: the listener's HTTP/2 connections
//!   (closed once idle); [`admin`]: `/metrics`, `/ready`, `/live`; [`run`] ties them
//!   together, over TLS with a certificate of the service's own when it has an identity
//!   (obtained and renewed from the identity service, like a proxy's).
//!
//! [`status`] computes the status of the routes it serves, which the replica holding a Lease
//! writes ([`k8s::lease`], [`k8s::status_writer`]).
//!
//! [`policy`] serves inbound authorization policy
//! (`io.linkerd.proxy.inbound.InboundServerPolicies`) on the same port, from the same
//! sources: proxies find both APIs behind one address and one TLS identity, as Linkerd's
//! proxies find its destination and policy controllers.

pub mod admin;
pub mod connections;
pub mod index;
pub mod k8s;
pub mod metrics;
pub mod model;
pub mod outbound;
pub mod policy;
pub mod profile;
pub mod resolve;
pub mod server;
pub mod split;
pub mod static_source;
pub mod status;

use std::{future::Future, net::SocketAddr, path::PathBuf, pin::Pin, sync::Arc, time::Duration};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch};
use tracing::{debug, info};
use weft_identity::{
    ClientAuth, admin_http,
    incoming::{Handshake, PlainIncoming, Refused, TlsIncoming},
    workload::{Workload, WorkloadConfig},
};

pub use crate::{
    connections::ConnectionLimits, index::IndexConfig, k8s::lease::LeaseConfig,
    policy::PolicyConfig,
};
use crate::{
    index::SharedIndex,
    metrics::Metrics,
    policy::{SharedPolicyIndex, server::InboundPolicyService},
    resolve::Discover,
    server::DestinationService,
    static_source::StaticIndex,
};

/// Where endpoints come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Kubernetes,
    Static(PathBuf),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub source: Source,
    pub index: IndexConfig,
    pub policy: PolicyConfig,
    /// The service's own identity: with it, gRPC is served over TLS 1.3 only.
    pub identity: Option<WorkloadConfig>,
    /// Route status writing (Kubernetes only) and its leader election; `None`: off.
    pub route_status: Option<LeaseConfig>,
    /// The gRPC listener's caps, handshake deadlines and idle timeout.
    pub connections: ConnectionLimits,
}

/// Largest request decoded: lookups carry a name, a port and a context token of a few
/// hundred bytes; 64 KiB is ample and bounds what one stream can make the server buffer.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Most streams at once on one connection. A proxy holds two (Get and GetProfile) per
/// service it talks to, plus inbound and outbound policy watches per port: even a gateway
/// talking to a few thousand services stays well below this, while a connection cannot
/// open streams without end (hyper's default with tonic is no limit).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 10_000;

/// How long open streams get after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Loads the source (a bad static file or no Kubernetes configuration fails here, before
/// anything is bound), binds both ports, logs `serving`, and serves until `shutdown`.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // The one crypto provider of the workspace, for the kube client's TLS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Config {
        listen_addr,
        admin_addr,
        source,
        index,
        policy,
        identity,
        route_status,
        connections,
    } = config;
    connections.incoming.check()?;
    anyhow::ensure!(
        !connections.max_connection_idle.is_zero(),
        "max_connection_idle must be more than 0"
    );
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    // Here rather than in `Metrics`: it belongs to the listener, which this module owns.
    let connections_refused = ConnectionsRefused::default();
    registry.register(
        "destination_connections_refused",
        "Connections closed unserved, by reason: a cap reached (max_connections, \
         max_client_connections, max_handshakes, max_client_handshakes), a deadline missed \
         (client_hello_timeout, preface_timeout), or not an HTTP/2 client (not_http2)",
        connections_refused.clone(),
    );
    // Every series exists from the start, so that rate() and alerts see zeros.
    for r in Refused::ALL {
        let _ = connections_refused.get_or_create(&metrics::ReasonLabels { reason: r.reason() });
    }
    let connections_idle_closed = prometheus_client::metrics::counter::Counter::default();
    registry.register(
        "destination_connections_idle_closed",
        "Connections closed (gracefully, with a GOAWAY) after max_connection_idle without an \
         open stream",
        connections_idle_closed.clone(),
    );
    let (synced_tx, synced) = watch::channel(false);
    let (policy_synced_tx, policy_synced) = watch::channel(false);
    let policy_index = SharedPolicyIndex::new(
        policy,
        index.clone(),
        metrics.server_conflicts.clone(),
        metrics.skipped.clone(),
    );
    let workload = identity
        .map(|c| Workload::start(c, &mut registry))
        .transpose()
        .context("the destination service's identity")?;

    let (stop_tx, stop) = watch::channel(false);
    let stopped = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    // The route status lease's holder hands it over at shutdown: waited for before exiting.
    let mut elector = None;
    let (discover, source_task): (Arc<dyn Discover>, Task) = match &source {
        Source::Static(path) => {
            let catalog = static_source::load(path, &metrics)?;
            let idx = StaticIndex::new(catalog, &index.cluster_domain, policy_index.clone());
            synced_tx.send_replace(true);
            policy_synced_tx.send_replace(true);
            let task = static_source::watch_file(path.clone(), idx.clone(), metrics.clone());
            (
                Arc::new(idx),
                Box::pin(async move {
                    let _synced = (synced_tx, policy_synced_tx);
                    task.await
                }),
            )
        }
        Source::Kubernetes => {
            let client = kube::Client::try_default().await.context(
                "no Kubernetes client configuration (KUBECONFIG, ~/.kube/config or in-cluster)",
            )?;
            let idx = SharedIndex::new(index.clone());
            let statuses = status::SharedStatuses::default();
            if let Some(lease) = route_status {
                let (leadership, elect) =
                    k8s::lease::elect(client.clone(), lease, metrics.clone(), stopped());
                elector = Some(tokio::spawn(elect));
                tokio::spawn(k8s::status_writer::run(
                    client.clone(),
                    statuses.clone(),
                    policy_index.clone(),
                    idx.clone(),
                    leadership,
                    [synced_tx.subscribe(), policy_synced_tx.subscribe()],
                    metrics.clone(),
                ));
            }
            let indexes = k8s::Indexes {
                discovery: idx.clone(),
                policy: policy_index.clone(),
                status: statuses,
            };
            let synced = k8s::SyncedTx { discovery: synced_tx, policy: policy_synced_tx };
            (Arc::new(idx), Box::pin(k8s::run(client, indexes, metrics.clone(), synced)))
        }
    };

    let grpc =
        TcpListener::bind(listen_addr).await.with_context(|| format!("binding {listen_addr}"))?;
    let admin =
        TcpListener::bind(admin_addr).await.with_context(|| format!("binding {admin_addr}"))?;
    info!(
        grpc = %grpc.local_addr()?,
        admin = %admin.local_addr()?,
        source = ?source,
        tls = workload.is_some(),
        identity = workload.as_ref().map(|w| w.local.to_string()),
        "serving"
    );

    tokio::spawn(source_task);
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    let router = admin::router(Arc::new(registry), ready(synced.clone(), workload.as_ref()));
    // Header read and idle timeouts and a connection cap, which `axum::serve` has not.
    let admin_task = tokio::spawn(admin_http::serve(
        admin,
        admin_http::Limits::default(),
        admin_http::TowerToHyperService::new(router),
    ));

    let service = DestinationService::new(discover, &index.cluster_domain, metrics.clone(), synced);
    let policy_service = InboundPolicyService::new(policy_index, metrics.clone(), policy_synced);
    let outbound_service = outbound::OutboundPolicyService::new(metrics.clone());
    let routes = tonic::service::Routes::new(
        service.into_server().max_decoding_message_size(MAX_REQUEST_BYTES),
    )
    .add_service(policy_service.into_server().max_decoding_message_size(MAX_REQUEST_BYTES))
    .add_service(outbound_service.into_server().max_decoding_message_size(MAX_REQUEST_BYTES));
    let idle = connections.max_connection_idle;
    let closed = connections_idle_closed;
    let server: Task = match &workload {
        None => {
            let refused = connections_refused.clone();
            // The same caps and deadlines as TLS (per client, the preface in time);
            // refusals are logged where they happen.
            let incoming = PlainIncoming::new(
                grpc,
                Arc::new(move |h| {
                    if let Handshake::Refused { reason, .. } = h {
                        refused
                            .get_or_create(&metrics::ReasonLabels { reason: reason.reason() })
                            .inc();
                    }
                }),
                connections.incoming,
            );
            Box::pin(connections::serve(incoming, routes, idle, closed, stopped()))
        }
        Some(w) => {
            let on = on_handshake(metrics, connections_refused);
            let incoming = TlsIncoming::new(grpc, tls_acceptor(w)?, on, connections.incoming);
            Box::pin(connections::serve(incoming, routes, idle, closed, stopped()))
        }
    };
    // Streams never end by themselves: after the shutdown signal, give proxies a moment to
    // see the GOAWAY, then close what is left.
    let grace = stopped();
    tokio::select! {
        () = server => {}
        () = async move {
            grace.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {}
    }
    info!("stopped");
    admin_task.abort();
    if let Some(elector) = elector {
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, elector).await;
    }
    Ok(())
}

/// TLS 1.3 with ALPN h2 and the service's current certificate. Client certificates are asked
/// for and verified when presented, but not required — Linkerd's policy: a proxy still
/// waiting for its first certificate can already discover.
fn tls_acceptor(w: &Workload) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let mut tls = rustls::ServerConfig::builder_with_provider(weft_identity::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(ClientAuth::optional(w.trust.clone())))
        .with_cert_resolver(w.credentials.resolver());
    tls.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
}

type ConnectionsRefused = prometheus_client::metrics::family::Family<
    metrics::ReasonLabels,
    prometheus_client::metrics::counter::Counter,
>;

/// Counts TLS connections by client identity, failed handshakes and refused connections (by
/// reason; logged where they happen).
fn on_handshake(
    metrics: Metrics,
    refused: ConnectionsRefused,
) -> weft_identity::incoming::OnHandshake {
    Arc::new(move |h| match h {
        Handshake::Done(info) => {
            let client_id = info.client_id.as_ref().map(ToString::to_string).unwrap_or_default();
            debug!(client.addr = %info.peer, client.id = %client_id, "TLS connection");
            metrics.tls_connections.get_or_create(&metrics::ClientIdLabels { client_id }).inc();
        }
        Handshake::Failed { .. } => {
            metrics.tls_handshake_errors.inc();
        }
        Handshake::Refused { reason, .. } => {
            refused.get_or_create(&metrics::ReasonLabels { reason: reason.reason() }).inc();
        }
        // Logged where it happens.
        Handshake::AcceptFailed { .. } => {}
    })
}

/// Ready once the source is synced and, with TLS on, the certificate is installed.
fn ready(synced: watch::Receiver<bool>, workload: Option<&Workload>) -> watch::Receiver<bool> {
    let Some(w) = workload else { return synced };
    let (tx, rx) = watch::channel(false);
    let (mut synced, mut credentials) = (synced, w.credentials.clone());
    tokio::spawn(async move {
        credentials.ready().await;
        loop {
            tx.send_replace(*synced.borrow_and_update());
            if synced.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}
