//! The webhook server: `POST /inject` over HTTPS (the certificate re-read when it changes),
//! and a plain-HTTP admin port with `/live`, `/ready` and `/metrics`.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use futures_util::StreamExt;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::{
    InjectorConfig, admission,
    metrics::{InjectionLabels, Metrics, ReloadLabels},
    namespaces::Namespaces,
    tls::{Reloading, TlsError},
};

/// A TLS handshake or a request header that takes longer than this is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_reload_interval: Duration,
    /// Bodies above this get an AdmissionReview saying so (the API server sends at most ~3 MiB).
    pub max_body_bytes: usize,
    /// How long in-flight reviews may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    pub injector: InjectorConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The server with its sockets bound and its certificate loaded: what can fail at start
/// has failed by now.
pub struct Bound {
    config: ServerConfig,
    webhook: TcpListener,
    admin: TcpListener,
    certs: Arc<Reloading>,
}

struct Shared {
    config: InjectorConfig,
    namespaces: Namespaces,
    metrics: Metrics,
    max_body_bytes: usize,
}

impl Bound {
    pub async fn bind(config: ServerConfig) -> Result<Bound, ServerError> {
        let certs = Reloading::new(config.cert.clone(), config.key.clone())?;
        let listen = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })
        };
        let webhook = listen(config.listen).await?;
        let admin = listen(config.admin_listen).await?;
        Ok(Bound { config, webhook, admin, certs })
    }

    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook.local_addr().ok()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.local_addr().ok()
    }

    /// Serves until `shutdown` resolves, then lets in-flight reviews finish.
    pub async fn run(
        self,
        namespaces: Namespaces,
        mut registry: Registry,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServerError> {
        let Bound { config, webhook, admin, certs } = self;
        let metrics = Metrics::register(&mut registry);
        let tls = TlsAcceptor::from(certs.server_config()?);
        let reloads = metrics.certificate_reloads.clone();
        tokio::spawn(certs.clone().watch(config.cert_reload_interval, move |ok| {
            let result = if ok { "ok" } else { "rejected" };
            reloads.get_or_create(&ReloadLabels { result }).inc();
        }));
        let shared = Arc::new(Shared {
            config: config.injector.clone(),
            namespaces: namespaces.clone(),
            metrics,
            max_body_bytes: config.max_body_bytes,
        });
        let app = Router::new().route("/inject", post(inject)).with_state(shared);
        let admin_app = admin_router(namespaces, Arc::new(registry));
        tracing::info!(
            webhook = %webhook.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            admin = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "serving"
        );
        let admin_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(admin, admin_app).await {
                tracing::warn!(error = %e, "admin server stopped");
            }
        });

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = webhook.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    let span = tracing::debug_span!("conn", client.addr = %peer);
                    let conn = serve_conn(tcp, tls.clone(), app.clone(), stop_rx.clone());
                    conns.spawn(tracing::Instrument::instrument(conn, span));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        tracing::info!(connections = conns.len(), "shutting down");
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(config.shutdown_grace, async {
            while conns.join_next().await.is_some() {}
        });
        if drained.await.is_err() {
            tracing::warn!(connections = conns.len(), "grace period over; closing connections");
        }
        admin_task.abort();
        Ok(())
    }
}

async fn serve_conn(
    tcp: tokio::net::TcpStream,
    tls: TlsAcceptor,
    app: Router,
    mut stop: watch::Receiver<bool>,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
        Err(_) => return tracing::debug!("TLS handshake timed out"),
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection error");
            }
        }
        () = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// `POST /inject`. Every outcome, including a body that is not JSON or too large, is an
/// AdmissionReview with status 200: the API server reads the reason from it.
async fn inject(State(s): State<Arc<Shared>>, body: Body) -> Response {
    let start = Instant::now();
    let body = match read_body(body, s.max_body_bytes).await {
        Ok(b) => b,
        Err(message) => {
            let answer = admission::reject("", "too-large", 413, message);
            return finish(&s, answer, false, "", start);
        }
    };
    let req = match admission::parse(&body) {
        Ok(r) => r,
        Err(answer) => return finish(&s, *answer, false, "", start),
    };
    let (annotations, warning) = match s.namespaces.annotations(&req.namespace).await {
        Ok(Some(a)) => (Some(a), None),
        Ok(None) => (
            None,
            Some(format!("namespace {} is unknown: its annotations were not read", req.namespace)),
        ),
        Err(e) => {
            // Decided on the pod's own annotations; the warning tells the user why a
            // namespace-wide setting may be missing.
            tracing::warn!(error = %e, "namespace lookup failed");
            (None, Some(e.to_string()))
        }
    };
    let answer = admission::decide(&req, annotations.as_ref(), warning, &s.config);
    let pod = format!("{}/{}", req.namespace, req.name);
    finish(&s, answer, req.dry_run, &pod, start)
}

/// Reads up to `limit` bytes. A longer body is read to its end (up to a hard cap) and
/// thrown away, so that the client gets the answer instead of a reset mid-upload.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, String> {
    let hard_cap = limit.saturating_mul(8).max(64 << 20);
    let mut stream = body.into_data_stream();
    let (mut buf, mut total) = (Vec::new(), 0usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("the request body could not be read: {e}"))?;
        total = total.saturating_add(chunk.len());
        if total <= limit {
            buf.extend_from_slice(&chunk);
        } else if total > hard_cap {
            break;
        }
    }
    if total > limit {
        return Err(format!(
            "the request body is over {limit} bytes ({total} read), the injector's limit"
        ));
    }
    Ok(buf)
}

fn finish(
    s: &Shared,
    answer: admission::Answer,
    dry_run: bool,
    pod: &str,
    start: Instant,
) -> Response {
    s.metrics.request_duration.observe(start.elapsed().as_secs_f64());
    if !dry_run {
        let labels = InjectionLabels { outcome: answer.outcome, reason: answer.reason };
        s.metrics.injections.get_or_create(&labels).inc();
    }
    tracing::info!(
        pod,
        dry_run,
        outcome = answer.outcome,
        reason = answer.reason,
        "{}",
        answer.message
    );
    let body = serde_json::to_vec(&answer.review).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn admin_router(namespaces: Namespaces, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route(
            "/ready",
            get(move || {
                let ready = namespaces.ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "namespace cache not synced\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let mut text = String::new();
                let ok = prometheus_client::encoding::text::encode(&mut text, &registry).is_ok();
                async move {
                    if ok {
                        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
                            .into_response()
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR.into_response()
                    }
                }
            }),
        )
}
