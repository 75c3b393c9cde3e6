//! HTTP metrics with Linkerd's names and labels: `request_total`, `response_total`
//! (`status_code`, `classification`, `grpc_status`), `response_latency_ms` (Linkerd's
//! buckets) and `{inbound,outbound}_http_errors_total{error}`. The `authority` label comes
//! from clients, so its values are capped like `target_addr`'s.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::{
    discovery::DstLabels,
    metrics::{Direction, ErrorLabels, LabelCap, TlsLabels},
};

/// Linkerd's `response_latency_ms` buckets.
const LATENCY_BUCKETS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    pub direction: &'static str,
    pub authority: String,
    pub target_addr: String,
    #[prometheus(flatten)]
    pub tls: TlsLabels,
    /// `dst_*` labels of the endpoint, from discovery.
    #[prometheus(flatten)]
    pub dst: DstLabels,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RetryLabels {
    #[prometheus(flatten)]
    pub service: DstLabels,
    /// `taken`, or `budget_exhausted` when the budget refused it.
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResponseLabels {
    #[prometheus(flatten)]
    pub route: RouteLabels,
    pub status_code: u16,
    pub classification: &'static str,
    pub grpc_status: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LatencyLabels {
    #[prometheus(flatten)]
    pub route: RouteLabels,
    pub status_code: u16,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS)
}

#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<RouteLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<LatencyLabels, Histogram, fn() -> Histogram>,
    inbound_errors: Family<ErrorLabels, Counter>,
    outbound_errors: Family<ErrorLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    authorities: LabelCap,
}

impl HttpMetrics {
    pub fn register(registry: &mut Registry, max_label_values: usize) -> Self {
        let m = HttpMetrics {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            inbound_errors: Family::default(),
            outbound_errors: Family::default(),
            retries: Family::default(),
            authorities: LabelCap::new(max_label_values),
        };
        registry.register(
            "outbound_http_retries",
            "Retries of outbound requests by service: taken, or refused by the retry budget",
            m.retries.clone(),
        );
        registry.register("request", "HTTP requests received", m.requests.clone());
        registry.register("response", "HTTP responses sent, once complete", m.responses.clone());
        registry.register(
            "response_latency_ms",
            "Time from a request's arrival to its response's headers, in milliseconds",
            m.latency.clone(),
        );
        registry.register(
            "inbound_http_errors",
            "Inbound HTTP requests the proxy failed, by reason",
            m.inbound_errors.clone(),
        );
        registry.register(
            "outbound_http_errors",
            "Outbound HTTP requests the proxy failed, by reason",
            m.outbound_errors.clone(),
        );
        m
    }

    pub fn route(
        &self,
        direction: Direction,
        authority: &str,
        target_addr: String,
        dst: DstLabels,
        tls: TlsLabels,
    ) -> RouteLabels {
        RouteLabels {
            direction: direction.as_str(),
            authority: self.authorities.admit_str(authority),
            target_addr,
            tls,
            dst,
        }
    }

    /// Counts a retry (or its refusal) for the service of an endpoint.
    pub fn retry(&self, endpoint_labels: &DstLabels, taken: bool) {
        let service: Vec<(String, String)> = endpoint_labels
            .0
            .iter()
            .filter(|(k, _)| k == "dst_namespace" || k == "dst_service")
            .cloned()
            .collect();
        let result = if taken { "taken" } else { "budget_exhausted" };
        self.retries
            .get_or_create(&RetryLabels {
                service: DstLabels(std::sync::Arc::new(service)),
                result,
            })
            .inc();
    }

    pub fn request(&self, route: &RouteLabels) {
        self.requests.get_or_create(route).inc();
    }

    pub fn error(&self, direction: Direction, error: &'static str) {
        let family = match direction {
            Direction::Inbound => &self.inbound_errors,
            Direction::Outbound => &self.outbound_errors,
        };
        family.get_or_create(&ErrorLabels { error }).inc();
    }

    pub fn latency(&self, route: &RouteLabels, status_code: u16, started: Instant) {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        self.latency
            .get_or_create(&LatencyLabels { route: route.clone(), status_code })
            .observe(ms);
    }

    pub fn response(
        &self,
        route: RouteLabels,
        status_code: u16,
        grpc_status: Option<u32>,
        ok: bool,
    ) {
        let classification = if ok { "success" } else { "failure" };
        let grpc_status = grpc_status.map(|g| g.to_string()).unwrap_or_default();
        self.responses
            .get_or_create(&ResponseLabels { route, status_code, classification, grpc_status })
            .inc();
    }
}

/// A response body that records `response_total` when the stream ends: its
/// classification needs the gRPC status, which may come in the trailers.
pub struct MeteredBody<B> {
    inner: B,
    done: Option<Done>,
}

pub struct Done {
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    pub route: RouteLabels,
    pub status_code: u16,
    /// `grpc-status` from the response headers (a trailers-only response).
    pub grpc_status: Option<u32>,
    pub is_grpc: bool,
}

impl Done {
    fn finish(self, trailers: Option<&HeaderMap>, failed: bool) {
        let grpc_status = trailers.and_then(grpc_status).or(self.grpc_status);
        let ok = !failed
            && self.status_code < 500
            && match (self.is_grpc, grpc_status) {
                (true, Some(code)) => code == 0,
                (true, None) => false,
                (false, _) => true,
            };
        self.metrics.http.response(self.route, self.status_code, grpc_status, ok);
    }
}

pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl<B: Body> MeteredBody<B> {
    pub fn new(inner: B, done: Done) -> Self {
        if inner.is_end_stream() {
            // An empty body is never polled: the response is complete now.
            done.finish(None, false);
            return MeteredBody { inner, done: None };
        }
        MeteredBody { inner, done: Some(done) }
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away or the stream was reset.
        if let Some(done) = self.done.take() {
            done.finish(None, true);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(done) = this.done.take()
                {
                    done.finish(Some(trailers), false);
                } else if this.inner.is_end_stream()
                    && let Some(done) = this.done.take()
                {
                    done.finish(None, false);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(done) = this.done.take() {
                    done.finish(None, true);
                }
            }
            Poll::Ready(None) => {
                if let Some(done) = this.done.take() {
                    done.finish(None, false);
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
