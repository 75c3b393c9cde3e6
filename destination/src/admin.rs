//! The admin server: `/metrics` (Prometheus text), `/live`, and `/ready` (200 once the source
//! has its first complete view — Kubernetes caches synced or the static file loaded — and,
//! with TLS on, the service's own certificate is installed).

use std::sync::Arc;

use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};
use prometheus_client::{encoding::prometheus_text, registry::Registry};
use tokio::sync::watch;

#[derive(Clone)]
struct Admin {
    registry: Arc<Registry>,
    ready: watch::Receiver<bool>,
}

pub fn router(registry: Arc<Registry>, ready: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready_handler))
        .with_state(Admin { registry, ready })
}

async fn metrics(State(admin): State<Admin>) -> impl IntoResponse {
    let mut out = String::new();
    match prometheus_text::encode(&mut out, &admin.registry) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], out),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics: {e}\n"),
        ),
    }
}

async fn ready_handler(State(admin): State<Admin>) -> (StatusCode, &'static str) {
    if *admin.ready.borrow() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: discovery source not synced, or no certificate yet\n",
        )
    }
}
