//! The admin server: `/metrics`, `/live`, `/ready`, `POST /shutdown` (from localhost
//! only) and `/proxy-log-level` (GET reads the filter, PUT from localhost replaces it).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::{logging::LogLevel, metrics::Metrics};

/// State the admin endpoints read and act on.
#[derive(Debug, Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Set once the proxy can serve; cleared when it starts draining.
    pub ready: Arc<AtomicBool>,
    /// Cancelled by `POST /shutdown`.
    pub shutdown: CancellationToken,
    pub log_level: Option<LogLevel>,
    /// With identity on, ready only once a certificate is installed.
    pub identity: Option<Arc<crate::identity::Identity>>,
}

/// Largest request body the admin server reads (a log filter).
const MAX_BODY: usize = 4 * 1024;

pub async fn serve(listener: TcpListener, admin: Admin) {
    loop {
        let (io, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, std::convert::Infallible>(admin.route(req, peer).await) }
            });
            let conn = http1::Builder::new()
                .max_buf_size(16 * 1024)
                .header_read_timeout(std::time::Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(io), svc);
            if let Err(e) = conn.await {
                debug!(error = %e, "admin connection failed");
            }
        });
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

impl Admin {
    async fn route(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let local = peer.ip().is_loopback()
            || matches!(peer.ip(), std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()));
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
                let mut rsp = text(StatusCode::OK, self.metrics.render());
                rsp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
                );
                rsp
            }
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => {
                let certified = self.identity.as_ref().is_none_or(|i| i.is_ready());
                if self.ready.load(Ordering::Acquire) && certified {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            (&Method::POST, "/shutdown") if local => {
                info!("shutdown requested on the admin port");
                self.shutdown.cancel();
                text(StatusCode::OK, "shutdown\n")
            }
            (_, "/shutdown") if !local => {
                text(StatusCode::FORBIDDEN, "shutdown is only accepted from localhost\n")
            }
            (&Method::GET, "/proxy-log-level") => match &self.log_level {
                Some(l) => text(StatusCode::OK, format!("{}\n", l.get())),
                None => text(StatusCode::NOT_FOUND, "logging is not managed by this proxy\n"),
            },
            (&Method::PUT, "/proxy-log-level") if local => {
                let Some(level) = &self.log_level else {
                    return text(StatusCode::NOT_FOUND, "logging is not managed by this proxy\n");
                };
                let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")),
                };
                let Ok(filter) = std::str::from_utf8(&body) else {
                    return text(StatusCode::BAD_REQUEST, "log filter must be UTF-8\n");
                };
                match level.set(filter) {
                    Ok(()) => {
                        info!(filter = filter.trim(), "log level changed");
                        text(StatusCode::OK, format!("{}\n", level.get()))
                    }
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                }
            }
            (&Method::PUT, "/proxy-log-level") => {
                text(StatusCode::FORBIDDEN, "the log level is only set from localhost\n")
            }
            (_, "/metrics" | "/live" | "/ready" | "/shutdown" | "/proxy-log-level") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}
