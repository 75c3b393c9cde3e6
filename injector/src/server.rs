//! The webhook server: `POST /inject` over HTTPS (the certificate re-read when it changes),
//! and a plain-HTTP admin port with `/live`, `/ready` and `/metrics`.
//!
//! Bounded throughout: at most `MAX_CONNECTIONS` webhook connections (more are closed at
//! once), at most `MAX_STREAMS_PER_CONNECTION` HTTP/2 streams each, at most
//! `MAX_REVIEWS_IN_FLIGHT` reviews being read and decided (a review that finds no slot
//! within `REVIEW_SLOT_WAIT` is answered 503 at once), and each review read and answered
//! within the request timeout (408 past it). A refusal is an HTTP error, not an
//! AdmissionReview (the uid may not be read yet): the API server then applies the
//! webhook's `failurePolicy` (the chart's `Ignore` admits the pod uninjected, as when the
//! injector is down). Every refusal is counted in `weft_injector_requests_refused_total`.

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

/// Most webhook connections at once. The clients are the API servers, each keeping a few
/// pooled connections: far below this, while a flood of connections costs bounded memory.
pub const MAX_CONNECTIONS: usize = 1024;

/// Most HTTP/2 streams at once on one connection (hyper's default is 200). The API server
/// opens another connection when it needs more.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 32;

/// Most reviews being read and decided at once. A review takes about a millisecond of CPU;
/// the bound is on the bodies buffered (up to `max_body_bytes` each).
pub const MAX_REVIEWS_IN_FLIGHT: usize = 128;

/// The caps a server enforces: `MAX_CONNECTIONS` and `MAX_REVIEWS_IN_FLIGHT` unless told
/// otherwise (tests lower them rather than open a thousand connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub connections: usize,
    pub reviews_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { connections: MAX_CONNECTIONS, reviews_in_flight: MAX_REVIEWS_IN_FLIGHT }
    }
}

/// How long a review waits for a slot before it is answered 503.
const REVIEW_SLOT_WAIT: Duration = Duration::from_secs(1);

/// HTTP/2 pings: a peer that vanished (a lost node) is noticed and its connection closed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

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
    /// How long one review may take from its headers to its answer (body read included);
    /// below the webhook's `timeoutSeconds`, so that the API server gets our answer.
    pub request_timeout: Duration,
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
    limits: Limits,
}

struct Shared {
    config: InjectorConfig,
    namespaces: Namespaces,
    metrics: Metrics,
    max_body_bytes: usize,
    request_timeout: Duration,
    reviews: tokio::sync::Semaphore,
    /// What `reviews` started with (told to a refused client).
    max_reviews: usize,
}

impl Bound {
    pub async fn bind(config: ServerConfig) -> Result<Bound, ServerError> {
        let certs = Reloading::new(config.cert.clone(), config.key.clone())?;
        let listen = |addr: SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })
        };
        let webhook = listen(config.listen).await?;
        let admin = listen(config.admin_listen).await?;
        Ok(Bound { config, webhook, admin, certs, limits: Limits::default() })
    }

    /// Other caps than the defaults.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
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
        let Bound { config, webhook, admin, certs, limits } = self;
        let metrics = Metrics::register(&mut registry, namespaces.watch_errors());
        let tls = TlsAcceptor::from(certs.server_config()?);
        let reloads = metrics.certificate_reloads.clone();
        tokio::spawn(certs.clone().watch(config.cert_reload_interval, move |ok| {
            let result = if ok { "ok" } else { "rejected" };
            reloads.get_or_create(&ReloadLabels { result }).inc();
        }));
        let shared = Arc::new(Shared {
            config: config.injector.clone(),
            namespaces: namespaces.clone(),
            metrics: metrics.clone(),
            max_body_bytes: config.max_body_bytes,
            request_timeout: config.request_timeout,
            reviews: tokio::sync::Semaphore::new(limits.reviews_in_flight),
            max_reviews: limits.reviews_in_flight,
        });
        let app = Router::new().route("/inject", post(inject)).with_state(shared);
        let admin_app = admin_router(namespaces, Arc::new(registry));
        tracing::info!(
            webhook = %webhook.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            admin = %admin.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "serving"
        );
        let admin_task = tokio::spawn(serve_admin(admin, admin_app));

        let (stop_tx, stop_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
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
                            metrics.accept_errors.inc();
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // Closed at once rather than queued: the API server retries or applies
                    // the failurePolicy, and a queued connection costs what the cap saves.
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        tracing::debug!(client.addr = %peer, "connection refused: too many connections");
                        metrics.refused("connections");
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let span = tracing::debug_span!("conn", client.addr = %peer);
                    let handshake_errors = metrics.tls_handshake_errors.clone();
                    let conn = serve_conn(tcp, tls.clone(), app.clone(), stop_rx.clone(), handshake_errors);
                    let conn = async move {
                        conn.await;
                        drop(slot);
                    };
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
    handshake_errors: prometheus_client::metrics::counter::Counter,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            handshake_errors.inc();
            return tracing::debug!(error = %e, "TLS handshake failed");
        }
        Err(_) => {
            handshake_errors.inc();
            return tracing::debug!("TLS handshake timed out");
        }
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
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
/// AdmissionReview with status 200: the API server reads the reason from it. Past the
/// limits (no slot, no answer in time) it is an HTTP error that says which limit.
async fn inject(State(s): State<Arc<Shared>>, body: Body) -> Response {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + s.request_timeout;
    let review = async {
        let Ok(Ok(_slot)) = tokio::time::timeout(REVIEW_SLOT_WAIT, s.reviews.acquire()).await
        else {
            let message = format!(
                "the injector is busy ({} reviews in flight); \
                 the API server applies the webhook's failurePolicy",
                s.max_reviews
            );
            return refuse(&s, "overloaded", StatusCode::SERVICE_UNAVAILABLE, message);
        };
        review(&s, body, start).await
    };
    match tokio::time::timeout_at(deadline, review).await {
        Ok(response) => response,
        Err(_) => {
            let message = format!(
                "the review was not read and answered within {:?}, the injector's request timeout",
                s.request_timeout
            );
            refuse(&s, "deadline", StatusCode::REQUEST_TIMEOUT, message)
        }
    }
}

/// An HTTP error with a message that says which limit, counted and logged.
fn refuse(s: &Shared, reason: &'static str, status: StatusCode, message: String) -> Response {
    s.metrics.refused(reason);
    tracing::warn!(reason, "{message}");
    let mut response = (status, format!("{message}\n")).into_response();
    // The connection may hold an unread body: do not reuse it.
    if status == StatusCode::REQUEST_TIMEOUT {
        response
            .headers_mut()
            .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    }
    response
}

async fn review(s: &Shared, body: Body, start: Instant) -> Response {
    let body = match read_body(body, s.max_body_bytes).await {
        Ok(b) => b,
        Err(message) => {
            let answer = admission::reject("", "too-large", 413, message);
            return finish(s, answer, false, "", start);
        }
    };
    let req = match admission::parse(&body) {
        Ok(r) => r,
        Err(answer) => return finish(s, *answer, false, "", start),
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
    finish(s, answer, req.dry_run, &pod, start)
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

/// Header read (also idle) timeout of the admin port, and its connection cap: what
/// `axum::serve` has not. (The same as `weft_identity::admin_http`, which this crate does
/// not depend on.)
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const ADMIN_MAX_CONNECTIONS: usize = 64;

async fn serve_admin(listener: TcpListener, app: Router) {
    let slots = Arc::new(tokio::sync::Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(client.addr = %peer, "admin connection refused: too many connections");
                    continue;
                };
                let svc = TowerToHyperService::new(app.clone());
                conns.spawn(async move {
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    // Without a timer hyper ignores header_read_timeout; it also runs while
                    // a kept-alive connection waits for its next request (idle timeout).
                    builder.timer(TokioTimer::new()).header_read_timeout(ADMIN_HEADER_READ_TIMEOUT);
                    if let Err(e) = builder.serve_connection(TokioIo::new(tcp), svc).await {
                        tracing::debug!(error = %e, client.addr = %peer, "admin connection failed");
                    }
                    drop(slot);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
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

#[cfg(test)]
mod tests;
