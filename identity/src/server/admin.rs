//! The identity service's admin port: `/metrics` (Prometheus text), `/ready`, `/live`.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::admin_http;

/// Serves the admin endpoints until the task is dropped, within `admin_http`'s limits.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, ready: Arc<AtomicBool>) {
    let svc = service_fn(move |req| {
        let res = handle(&req, &registry, &ready);
        async move { Ok::<_, Infallible>(res) }
    });
    admin_http::serve(listener, admin_http::Limits::default(), svc).await;
}

fn handle(
    req: &Request<Incoming>,
    registry: &Registry,
    ready: &AtomicBool,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        res.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
        res
    };
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => {
                    let mut res = text(StatusCode::OK, body);
                    res.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
                    );
                    res
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/ready" if ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n".into()),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        _ => text(StatusCode::NOT_FOUND, "not found; try /metrics, /ready or /live\n".into()),
    }
}
