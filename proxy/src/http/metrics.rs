//! HTTP metrics with Linkerd's names and labels: `request_total`, `response_total`
//! (`status_code`, `classification`, `grpc_status`), `response_latency_ms` (Linkerd's
//! buckets) and `{inbound,outbound}_http_errors_total{error}`. The `authority` label comes
//! from clients, so only a valid `host[:port]` becomes a value, and their number is capped
//! like `target_addr`'s.

use std::{
    collections::HashSet,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::metrics::{
    Direction, DstLabels, ErrorLabels, FoldLabels, INVALID, LabelCap, OVERFLOW, TlsLabels,
    retention::{Index, Lease},
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
    /// See [`grpc_status_label`].
    pub grpc_status: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LatencyLabels {
    #[prometheus(flatten)]
    pub route: RouteLabels,
    pub status_code: u16,
}

pub(super) fn latency_histogram() -> Histogram {
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
    /// The label sets of routes, for retention.
    routes: Index<RouteLabels>,
    /// `route_*`: the metrics of service profile routes that have names.
    pub profile_routes: super::route_metrics::RouteFamilies,
}

impl HttpMetrics {
    /// `folded`: where authorities not kept apart are counted.
    pub fn register(
        registry: &mut Registry,
        max_label_values: usize,
        folded: &Family<FoldLabels, Counter>,
    ) -> Self {
        let profile_routes = super::route_metrics::RouteFamilies::register(registry);
        let m = HttpMetrics {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            inbound_errors: Family::default(),
            outbound_errors: Family::default(),
            retries: Family::default(),
            authorities: LabelCap::new("authority", max_label_values, folded.clone()),
            routes: Index::default(),
            profile_routes,
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

    /// A route's labels and its metric handles.
    pub fn route(
        &self,
        direction: Direction,
        authority: &str,
        target_addr: String,
        dst: DstLabels,
        tls: TlsLabels,
    ) -> Arc<RouteMetrics> {
        let labels = RouteLabels {
            direction: direction.as_str(),
            authority: self.authority_label(authority),
            target_addr,
            tls,
            dst,
        };
        // Before any handle: see `metrics::retention`.
        let lease = self.routes.lease(&labels);
        let requests = self.requests.get_or_create(&labels).clone();
        Arc::new(RouteMetrics { labels, requests, by_status: Mutex::default(), lease })
    }

    /// Removes the series of route label sets unused for `retain`; returns how many.
    pub fn sweep(&self, now: Instant, retain: Duration) -> u64 {
        self.profile_routes.sweep(now, retain)
            + self.routes.sweep(now, retain, |route, lease| {
                self.requests.remove(route);
                for status_code in lease.statuses() {
                    self.latency.remove(&LatencyLabels { route: route.clone(), status_code });
                    for classification in ["success", "failure"] {
                        for grpc_status in std::iter::once("").chain(GRPC_STATUSES) {
                            self.responses.remove(&ResponseLabels {
                                route: route.clone(),
                                status_code,
                                classification,
                                grpc_status,
                            });
                        }
                    }
                }
            })
    }

    /// Adds the `target_addr` values of the routes that have series to `target_addrs`;
    /// returns their `authority` values.
    pub fn label_values(&self, target_addrs: &mut HashSet<String>) -> HashSet<String> {
        let mut authorities = HashSet::new();
        self.routes.for_each(|r| {
            target_addrs.insert(r.target_addr.clone());
            authorities.insert(r.authority.clone());
        });
        authorities
    }

    /// Gives the room of authorities no route uses back to their cap.
    pub fn release_unused(&self, in_use: impl Fn(&str) -> bool) {
        self.authorities.release_unused(in_use);
    }

    /// The `authority` label of a request's authority (the URI's, or `Host`): itself when it
    /// is a valid `host[:port]`, within the cap; empty when there is none.
    fn authority_label(&self, authority: &str) -> String {
        match authority {
            "" => String::new(),
            // Already a label (a balanced request's): not a value to admit again.
            OVERFLOW | INVALID => authority.to_string(),
            a if is_valid_authority(a) => self.authorities.admit_str(a),
            _ => self.authorities.invalid(),
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

    pub fn request(&self, route: &RouteMetrics) {
        route.requests.inc();
    }

    pub fn error(&self, direction: Direction, error: &'static str) {
        let family = match direction {
            Direction::Inbound => &self.inbound_errors,
            Direction::Outbound => &self.outbound_errors,
        };
        family.get_or_create(&ErrorLabels { error }).inc();
    }

    pub fn latency(&self, route: &RouteMetrics, status_code: u16, started: Instant) {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let latency = |route: &RouteMetrics| {
            let labels = LatencyLabels { route: route.labels.clone(), status_code };
            self.latency.get_or_create(&labels).clone()
        };
        route
            .with_status(status_code, |h| {
                h.latency.get_or_insert_with(|| latency(route)).observe(ms)
            })
            .unwrap_or_else(|| {
                // Past `MAX_STATUSES`: a route answering with that many codes is rare.
                route.lease.note_status(status_code);
                self.latency
                    .get_or_create(&LatencyLabels { route: route.labels.clone(), status_code })
                    .observe(ms);
            });
    }

    /// Counts a complete response; `latency` has been recorded for its status first (which
    /// notes the status, so that retention finds the response series again).
    pub fn response(
        &self,
        route: &RouteMetrics,
        status_code: u16,
        grpc_status: Option<u32>,
        ok: bool,
    ) {
        let counter = |route: &RouteMetrics| {
            let labels = ResponseLabels {
                route: route.labels.clone(),
                status_code,
                classification: if ok { "success" } else { "failure" },
                grpc_status: grpc_status.map_or("", grpc_status_label),
            };
            self.responses.get_or_create(&labels).clone()
        };
        if grpc_status.is_some() {
            // gRPC statuses are not cached: one more dimension, and gRPC responses are
            // few next to the requests of plain HTTP.
            counter(route).inc();
            return;
        }
        route
            .with_status(status_code, |h| {
                let slot = if ok { &mut h.success } else { &mut h.failure };
                slot.get_or_insert_with(|| counter(route)).inc();
            })
            .unwrap_or_else(|| {
                counter(route).inc();
            });
    }
}

/// Longest DNS name (RFC 1035), the host part of a valid authority.
const MAX_HOST_BYTES: usize = 253;

/// Whether a client-given authority is `host[:port]` as `http::uri::Authority` parses it,
/// with a host of at most 253 bytes and a port that fits in 16 bits; no user info.
fn is_valid_authority(authority: &str) -> bool {
    // `:` and a port after the longest host; checked first so nothing long is parsed.
    if authority.len() > MAX_HOST_BYTES + 6 || authority.contains('@') {
        return false;
    }
    let Ok(a) = http::uri::Authority::try_from(authority) else {
        return false;
    };
    let host = a.host();
    let port_ok = a.port_u16().is_some() || host.len() == a.as_str().len();
    !host.is_empty() && host.len() <= MAX_HOST_BYTES && port_ok
}

/// A route's labels with its metric handles, resolved once: a request is then counted
/// without hashing or cloning its labels. Shared by the requests of a client connection
/// that go the same way (see `RouteCache`).
#[derive(Debug)]
pub struct RouteMetrics {
    pub labels: RouteLabels,
    requests: Counter,
    /// The handles of the status codes seen so far (at most `MAX_STATUSES`).
    by_status: Mutex<Vec<StatusHandles>>,
    /// Keeps the labels' series while this route is held (see `metrics::retention`).
    lease: Arc<Lease>,
}

/// Most status codes whose handles a route keeps; others are looked up each time.
const MAX_STATUSES: usize = 16;

#[derive(Debug)]
struct StatusHandles {
    status_code: u16,
    latency: Option<Histogram>,
    success: Option<Counter>,
    failure: Option<Counter>,
}

impl RouteMetrics {
    /// Runs `f` on the handles of `status_code`; `None` when there is no room for them.
    fn with_status<T>(
        &self,
        status_code: u16,
        f: impl FnOnce(&mut StatusHandles) -> T,
    ) -> Option<T> {
        let mut by_status = self.by_status.lock().unwrap_or_else(|e| e.into_inner());
        let i = match by_status.iter().position(|h| h.status_code == status_code) {
            Some(i) => i,
            None if by_status.len() < MAX_STATUSES => {
                self.lease.note_status(status_code);
                by_status.push(StatusHandles {
                    status_code,
                    latency: None,
                    success: None,
                    failure: None,
                });
                by_status.len() - 1
            }
            None => return None,
        };
        Some(f(&mut by_status[i]))
    }
}

/// The routes of one client connection's requests, by authority and endpoint, so that
/// each request finds its labels and handles without building them. Holds a few, keyed by
/// their `authority` label (bounded), never by what the client sent; a client that keeps
/// changing authorities (or sends ones that are folded) just builds them again.
#[derive(Debug, Default)]
pub struct RouteCache(Mutex<Vec<CachedRoute>>);

#[derive(Debug)]
struct CachedRoute {
    endpoint: Option<SocketAddr>,
    route: Arc<RouteMetrics>,
}

/// Routes a connection keeps.
const MAX_CACHED_ROUTES: usize = 8;

impl RouteCache {
    /// The route of requests for `authority` going to `endpoint` (`None`: the original
    /// destination); `make` builds it when no cached route has `authority` as its label.
    /// A cached route whose endpoint labels or identity changed since (discovery updates)
    /// is built again.
    pub fn get(
        &self,
        authority: &str,
        endpoint: Option<SocketAddr>,
        current: impl Fn(&RouteLabels) -> bool,
        make: impl FnOnce() -> Arc<RouteMetrics>,
    ) -> Arc<RouteMetrics> {
        let mut routes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let find = |routes: &[CachedRoute], label: &str| {
            routes.iter().position(|r| r.endpoint == endpoint && r.route.labels.authority == label)
        };
        if let Some(i) = find(&routes, authority) {
            if current(&routes[i].route.labels) {
                return routes[i].route.clone();
            }
            routes.remove(i);
        }
        let route = make();
        // An authority that was folded: the folded route may be cached already.
        if let Some(i) = find(&routes, &route.labels.authority) {
            if current(&routes[i].route.labels) {
                return routes[i].route.clone();
            }
            routes.remove(i);
        }
        if routes.len() == MAX_CACHED_ROUTES {
            routes.remove(0);
        }
        routes.push(CachedRoute { endpoint, route: route.clone() });
        route
    }
}

/// A response body that records `response_total` when the stream ends: its
/// classification needs the gRPC status, which may come in the trailers.
pub struct MeteredBody<B> {
    inner: B,
    done: Option<Done>,
    /// Data bytes so far (for the access log).
    bytes: u64,
    /// Seen to its end: asking the inner body again (which locks an HTTP/2 stream) is
    /// not needed.
    ended: bool,
}

pub struct Done {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub route: Arc<RouteMetrics>,
    pub status_code: u16,
    /// `grpc-status` from the response headers (a trailers-only response).
    pub grpc_status: Option<u32>,
    pub is_grpc: bool,
    /// The request's access log entry, when the access log is on.
    pub access: Option<Box<super::access_log::Entry>>,
    /// Its service route's metrics, when the route has them.
    pub rt: Option<super::route_metrics::RtDone>,
}

impl Done {
    fn finish(self, trailers: Option<&HeaderMap>, failed: bool, body_bytes: u64) {
        if let Some(entry) = self.access {
            entry.finish(self.status_code, body_bytes);
        }
        let grpc_status = trailers.and_then(grpc_status).or(self.grpc_status);
        let grpc_ok = match (self.is_grpc, grpc_status) {
            (true, Some(code)) => code == 0,
            (true, None) => false,
            (false, _) => true,
        };
        let ok = !failed && self.status_code < 500 && grpc_ok;
        self.metrics.http.response(&self.route, self.status_code, grpc_status, ok);
        if let Some(rt) = self.rt {
            let rt_ok = !failed && !rt.status_failure && grpc_ok;
            self.metrics.http.profile_routes.response(&rt.route, self.status_code, rt_ok);
        }
    }
}

/// The `grpc_status` label of a status code: the 17 codes gRPC defines as themselves, and
/// anything else an upstream sends as `other`, so that it cannot make a series per
/// number. (linkerd2-proxy's legacy metrics write any number; its newer ones read it
/// through `tonic::Code`, where an undefined code is `UNKNOWN`: `other` keeps it apart
/// from a real UNKNOWN.) Either way a code other than 0 is a failure.
pub fn grpc_status_label(code: u32) -> &'static str {
    usize::try_from(code).ok().and_then(|i| GRPC_STATUSES.get(i)).copied().unwrap_or("other")
}

/// Every `grpc_status` label value but `""` (not gRPC): the defined codes, then `other`.
const GRPC_STATUSES: [&str; 18] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "other",
];

pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    headers.get(&GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

impl<B: Body> MeteredBody<B> {
    pub fn new(inner: B, done: Done) -> Self {
        if inner.is_end_stream() {
            // An empty body is never polled: the response is complete now.
            done.finish(None, false, 0);
            return MeteredBody { inner, done: None, bytes: 0, ended: true };
        }
        MeteredBody { inner, done: Some(done), bytes: 0, ended: false }
    }
}

impl<B> MeteredBody<B> {
    /// The body ended well (with `trailers`, if any): counted once.
    fn end(&mut self, trailers: Option<&HeaderMap>) {
        self.ended = true;
        if let Some(done) = self.done.take() {
            done.finish(trailers, false, self.bytes);
        }
    }
}

impl<B> MeteredBody<B> {
    /// Ends the response without its body, which it cannot have (to HEAD, a 204, a 304):
    /// counted as complete, not as cut.
    pub fn end_without_content(mut self) {
        if let Some(done) = self.done.take() {
            done.finish(None, false, 0);
        }
    }
}

impl<B> Drop for MeteredBody<B> {
    fn drop(&mut self) {
        // Dropped before its end: the client went away or the stream was reset.
        if let Some(done) = self.done.take() {
            done.finish(None, true, self.bytes);
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
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                let trailers = frame.trailers_ref();
                if trailers.is_some() || this.inner.is_end_stream() {
                    this.end(trailers);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(done) = this.done.take() {
                    done.finish(None, true, this.bytes);
                }
            }
            Poll::Ready(None) => this.end(None),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.ended { SizeHint::with_exact(0) } else { self.inner.size_hint() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn route(m: &Metrics, authority: &str) -> Arc<RouteMetrics> {
        m.http.route(
            Direction::Inbound,
            authority,
            "10.0.0.1:80".into(),
            DstLabels::default(),
            TlsLabels::disabled(),
        )
    }

    #[test]
    fn grpc_status_labels_are_the_defined_codes_or_other() {
        for code in 0..=16u32 {
            assert_eq!(grpc_status_label(code), code.to_string());
        }
        for code in [17, 100, 65_536, u32::MAX] {
            assert_eq!(grpc_status_label(code), "other");
        }
        // Whatever an upstream sends, response_total gets at most 18 gRPC series a route.
        let m = Metrics::new(100);
        let r = route(&m, "web:80");
        for code in 0..10_000u32 {
            m.http.response(&r, 200, Some(code), code == 0);
        }
        let text = m.render();
        let series = text.lines().filter(|l| l.starts_with("response_total{")).count();
        assert_eq!(series, 18, "{text}");
        assert!(text.contains("grpc_status=\"other\"} 9983"), "{text}");
        assert!(text.contains("classification=\"failure\",grpc_status=\"other\""), "{text}");
    }

    #[test]
    fn only_valid_bounded_authorities_become_label_values() {
        for valid in [
            "web.prod.svc.cluster.local:8080",
            "web",
            "10.0.0.1:80",
            "[::1]:4143",
            &format!("{}.com", "a".repeat(MAX_HOST_BYTES - 4)),
        ] {
            assert!(is_valid_authority(valid), "{valid:?}");
        }
        for invalid in [
            &"a".repeat(60 * 1024),
            &format!("{}.com:80", "a".repeat(MAX_HOST_BYTES - 3)),
            "bad host",
            "evil\"} 1\nfake_metric{x=\"",
            "web:99999",
            "web:",
            "user:pw@web",
            ":80",
            "web/path",
        ] {
            assert!(!is_valid_authority(invalid), "{invalid:?}");
        }
    }

    /// A 60 KiB `Host` and one with bytes no authority has are folded into `invalid`,
    /// counted, and appear nowhere in `/metrics`; neither does a connection's route cache
    /// keep them.
    #[test]
    fn hostile_authorities_are_folded_and_never_stored() {
        let m = Metrics::new(100);
        let long = "h".repeat(60 * 1024);
        let cache = RouteCache::default();
        for raw in [long.as_str(), "a b{}\"", long.as_str()] {
            let r = cache.get(raw, None, |_| true, || route(&m, raw));
            assert_eq!(r.labels.authority, INVALID, "{raw:.20?}");
            m.http.request(&r);
        }
        let ok = cache.get("web:80", None, |_| true, || route(&m, "web:80"));
        assert_eq!(ok.labels.authority, "web:80");
        let cached = cache.0.lock().expect("lock");
        assert_eq!(cached.len(), 2, "one route for every invalid authority, one for web:80");
        assert!(cached.iter().all(|r| r.route.labels.authority.len() <= MAX_HOST_BYTES + 6));
        drop(cached);
        let text = m.render();
        assert!(!text.contains("hhhhhhhh") && !text.contains("a b"), "{text:.2000}");
        assert!(text.contains("authority=\"invalid\""), "{text}");
        assert!(
            text.contains(
                "metrics_label_values_folded_total{label=\"authority\",reason=\"invalid\"} 3"
            ),
            "{text}"
        );
    }

    const RETAIN: Duration = Duration::from_secs(600);

    const WEB: &str = "{direction=\"inbound\",authority=\"web:80\",target_addr=\"10.0.0.1:80\",tls=\"no_identity\",no_tls_reason=\"disabled\"";

    fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines().filter(|l| l.starts_with(name)).collect()
    }

    /// Every series of a route no one holds goes: requests, and responses and latencies of
    /// every status (gRPC ones, and past the statuses a route keeps handles for); then its
    /// authority leaves the cap.
    #[test]
    fn idle_route_series_are_evicted_with_every_status_and_free_the_authority_cap() {
        let m = Metrics::new(1);
        let r = route(&m, "web:80");
        let started = Instant::now();
        m.http.request(&r);
        m.http.latency(&r, 200, started);
        m.http.response(&r, 200, None, true);
        m.http.latency(&r, 200, started);
        m.http.response(&r, 200, Some(14), false);
        for status in 500..(500 + 2 * MAX_STATUSES as u16) {
            m.http.latency(&r, status, started);
            m.http.response(&r, status, None, false);
        }
        assert_eq!(route(&m, "api:80").labels.authority, OVERFLOW);
        drop(r);
        let text = m.render();
        assert_eq!(series(&text, "response_total{").len(), 2 + 2 * MAX_STATUSES, "{text}");
        m.sweep_past_retention(Instant::now(), RETAIN);
        let text = m.render();
        for name in ["request_total{", "response_total{", "response_latency_ms_"] {
            assert_eq!(series(&text, name), Vec::<&str>::new(), "{text}");
        }
        assert!(text.contains("metrics_series_evicted_total 2\n"), "{text}");
        assert_eq!(route(&m, "api:80").labels.authority, "api:80");
    }

    /// A connection's cached route holds handles: its series stay however long it is idle,
    /// and nothing counted through it is lost; used again after eviction, it counts anew.
    #[test]
    fn a_cached_route_keeps_its_series_and_nothing_it_counts_is_lost() {
        let m = Metrics::new(10);
        let cache = RouteCache::default();
        let use_route = |cache: &RouteCache| {
            let r = cache.get("web:80", None, |_| true, || route(&m, "web:80"));
            m.http.request(&r);
            m.http.latency(&r, 200, Instant::now());
            m.http.response(&r, 200, None, true);
        };
        use_route(&cache);
        let t0 = Instant::now();
        for hours in [0, 1, 24, 24 * 30] {
            m.sweep(t0 + Duration::from_secs(hours * 3600), RETAIN);
        }
        use_route(&cache);
        let text = m.render();
        for want in [
            format!("request_total{WEB}}} 2\n"),
            format!(
                "response_total{WEB},status_code=\"200\",classification=\"success\",grpc_status=\"\"}} 2\n"
            ),
            format!("response_latency_ms_count{WEB},status_code=\"200\"}} 2\n"),
            "metrics_series_evicted_total 0\n".to_string(),
        ] {
            assert!(text.contains(&want), "missing {want:?} in:\n{text}");
        }
        drop(cache);
        let t = m.sweep_past_retention(t0 + Duration::from_secs(24 * 31 * 3600), RETAIN);
        assert!(series(&m.render(), "request_total{").is_empty());
        let cache = RouteCache::default();
        use_route(&cache);
        m.sweep(t + RETAIN, RETAIN);
        let text = m.render();
        assert!(text.contains(&format!("request_total{WEB}}} 1\n")), "{text}");
        assert!(text.contains("metrics_series_evicted_total 1\n"), "{text}");
    }
}
