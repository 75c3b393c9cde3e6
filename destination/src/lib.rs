//! The Weft destination service: tells proxies where a destination's endpoints are, who they
//! are (TLS identities), how to talk to them (protocol hints), and how to retry
//! (`io.linkerd.proxy.destination.Destination`, gRPC on 8086).
//!
//! Layers, each depending only on the ones above it:
//! - [`model`]: Kubernetes objects reduced to what discovery needs (pure);
//! - [`profile`]: Service annotations → retry/timeout policy → `DestinationProfile` (pure);
//! - [`resolve`]: lookup targets, resolutions and the watch channels that followers hold;
//! - [`index`]: the Kubernetes index (pure), fed by [`k8s`] watches; [`static_source`]: a
//!   YAML file instead;
//! - [`server`]: the gRPC streams; [`admin`]: `/metrics`, `/ready`, `/live`; [`run`] ties
//!   them together.

pub mod admin;
pub mod index;
pub mod k8s;
pub mod metrics;
pub mod model;
pub mod profile;
pub mod resolve;
pub mod server;
pub mod static_source;

use std::{
    future::{Future, IntoFuture as _},
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch};
use tracing::info;

pub use crate::index::IndexConfig;
use crate::{
    index::SharedIndex, metrics::Metrics, resolve::Discover, server::DestinationService,
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
}

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
    let Config { listen_addr, admin_addr, source, index } = config;
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let (synced_tx, synced) = watch::channel(false);

    let (discover, source_task): (Arc<dyn Discover>, Task) = match &source {
        Source::Static(path) => {
            let catalog = static_source::load(path, &metrics)?;
            let idx = StaticIndex::new(catalog, &index.cluster_domain);
            synced_tx.send_replace(true);
            let task = static_source::watch_file(path.clone(), idx.clone(), metrics.clone());
            (
                Arc::new(idx),
                Box::pin(async move {
                    let _synced = synced_tx;
                    task.await
                }),
            )
        }
        Source::Kubernetes => {
            let client = kube::Client::try_default().await.context(
                "no Kubernetes client configuration (KUBECONFIG, ~/.kube/config or in-cluster)",
            )?;
            let idx = SharedIndex::new(index.clone());
            (Arc::new(idx.clone()), Box::pin(k8s::run(client, idx, metrics.clone(), synced_tx)))
        }
    };

    let grpc =
        TcpListener::bind(listen_addr).await.with_context(|| format!("binding {listen_addr}"))?;
    let admin =
        TcpListener::bind(admin_addr).await.with_context(|| format!("binding {admin_addr}"))?;
    info!(grpc = %grpc.local_addr()?, admin = %admin.local_addr()?, source = ?source, "serving");

    tokio::spawn(source_task);
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    let stopped = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let router = admin::router(Arc::new(registry), synced.clone());
    let admin_task =
        tokio::spawn(axum::serve(admin, router).with_graceful_shutdown(stopped()).into_future());

    let service = DestinationService::new(discover, &index.cluster_domain, metrics, synced);
    let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
    let server = tonic::transport::Server::builder()
        // Proxies hold their streams for hours: notice the ones that vanished.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming, stopped());
    // Streams never end by themselves: after the shutdown signal, give proxies a moment to
    // see the GOAWAY, then close what is left.
    let grace = stopped();
    let served = tokio::select! {
        r = server => r,
        () = async move {
            grace.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    };
    info!("stopped");
    admin_task.abort();
    served.context("gRPC server failed")
}
