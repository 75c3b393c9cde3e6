//! Route metrics with Linkerd's names: `route_request_total`, `route_response_total`
//! (`status_code`, `classification` as the route's response classes say) and
//! `route_response_latency_ms`, labelled `direction`, `dst` (the service's `name:port`, from
//! its profile) and the route's own labels as `rt_*` (`rt_route`: its name) — what
//! `linkerd viz routes` and per-route dashboards read. Only routes that carry labels have
//! them: an HTTPRoute's routes (the destination service names them), a Linkerd
//! ServiceProfile's; a service's catch-all route from its annotations does not, so a
//! request costs nothing more unless its service has named routes.
//!
//! The values come from the control plane, not from clients: the profile bounds a
//! service's routes (`profile::MAX_ROUTES`) and their labels, and discovery the services.
//! Idle series are evicted like the other per-target series (`metrics::retention`): a
//! route's metrics hold the lease of their labels for as long as its profile holds them.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, LabelSetEncoder},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use super::metrics::latency_histogram;
use crate::{
    metrics::retention::{Index, Lease},
    profile::{ResponseMatch, is_failure},
};

/// A route's `rt_*` labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RtPairs(pub Arc<Vec<(String, String)>>);

impl EncodeLabelSet for RtPairs {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.0.as_slice().encode(encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RtLabels {
    pub direction: &'static str,
    /// The service's `name:port`.
    pub dst: String,
    #[prometheus(flatten)]
    pub rt: RtPairs,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RtResponseLabels {
    #[prometheus(flatten)]
    route: RtLabels,
    status_code: u16,
    classification: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RtLatencyLabels {
    #[prometheus(flatten)]
    route: RtLabels,
    status_code: u16,
}

/// The route metric families.
#[derive(Debug)]
pub struct RouteFamilies {
    requests: Family<RtLabels, Counter>,
    responses: Family<RtResponseLabels, Counter>,
    latency: Family<RtLatencyLabels, Histogram, fn() -> Histogram>,
    /// The label sets that have series, for retention.
    index: Index<RtLabels>,
}

/// One route's labels and request counter, made once per route (and profile update).
#[derive(Debug)]
pub struct RtRoute {
    labels: RtLabels,
    requests: Counter,
    /// Keeps the labels' series while the route is held (see `metrics::retention`).
    lease: Arc<Lease>,
    /// The route's response classes: which statuses are failures.
    failures: Vec<ResponseMatch>,
}

impl RtRoute {
    pub fn request(&self) {
        self.requests.inc();
    }

    /// Whether the route's response classes call `status` a failure.
    pub fn is_failure(&self, status: u16) -> bool {
        http::StatusCode::from_u16(status).is_ok_and(|s| is_failure(&self.failures, s))
    }
}

impl RouteFamilies {
    pub fn register(registry: &mut Registry) -> Self {
        let m = RouteFamilies {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            index: Index::default(),
        };
        registry.register("route_request", "HTTP requests by service route", m.requests.clone());
        registry.register(
            "route_response",
            "HTTP responses by service route, once complete, classified by the route",
            m.responses.clone(),
        );
        registry.register(
            "route_response_latency_ms",
            "Time from a request's arrival to its response's headers by service route, in \
             milliseconds",
            m.latency.clone(),
        );
        m
    }

    /// The metrics of a route with these labels and response classes.
    pub fn route(&self, labels: RtLabels, failures: Vec<ResponseMatch>) -> Arc<RtRoute> {
        // Before any handle: see `metrics::retention`.
        let lease = self.index.lease(&labels);
        let requests = self.requests.get_or_create(&labels).clone();
        Arc::new(RtRoute { labels, requests, lease, failures })
    }

    /// Records the time to the response headers, in the series of its status code.
    pub fn latency(&self, route: &RtRoute, status_code: u16, started: Instant) {
        // Noted before the series exists, so that retention finds it.
        route.lease.note_status(status_code);
        let labels = RtLatencyLabels { route: route.labels.clone(), status_code };
        self.latency.get_or_create(&labels).observe(started.elapsed().as_secs_f64() * 1000.0);
    }

    /// Counts a complete response (its status noted by `latency` first).
    pub fn response(&self, route: &RtRoute, status_code: u16, ok: bool) {
        let classification = if ok { "success" } else { "failure" };
        let labels = RtResponseLabels { route: route.labels.clone(), status_code, classification };
        self.responses.get_or_create(&labels).inc();
    }

    /// Removes the series of route label sets unused for `retain`; returns how many.
    pub fn sweep(&self, now: Instant, retain: Duration) -> u64 {
        self.index.sweep(now, retain, |route, lease| {
            self.requests.remove(route);
            for status_code in lease.statuses() {
                self.latency.remove(&RtLatencyLabels { route: route.clone(), status_code });
                for classification in ["success", "failure"] {
                    self.responses.remove(&RtResponseLabels {
                        route: route.clone(),
                        status_code,
                        classification,
                    });
                }
            }
        })
    }
}

/// What a response counts in its route's metrics when it completes: the route, and whether
/// the route's response classes call its status a failure.
#[derive(Debug)]
pub struct RtDone {
    pub route: Arc<RtRoute>,
    pub status_failure: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn labels(route: &str) -> RtLabels {
        RtLabels {
            direction: "outbound",
            dst: "web.prod.svc.cluster.local:80".into(),
            rt: RtPairs(Arc::new(vec![("rt_route".into(), route.into())])),
        }
    }

    #[test]
    fn route_series_carry_the_dst_and_rt_labels_and_are_evicted_when_idle() {
        let m = Metrics::new(100);
        let r = m.http.profile_routes.route(labels("books"), Vec::new());
        let started = Instant::now();
        r.request();
        m.http.profile_routes.latency(&r, 200, started);
        m.http.profile_routes.response(&r, 200, true);
        m.http.profile_routes.latency(&r, 503, started);
        m.http.profile_routes.response(&r, 503, false);
        let text = m.render();
        let rl = r#"direction="outbound",dst="web.prod.svc.cluster.local:80",rt_route="books""#;
        assert!(text.contains(&format!("route_request_total{{{rl}}} 1")), "{text}");
        for line in [
            format!(r#"route_response_total{{{rl},status_code="200",classification="success"}} 1"#),
            format!(r#"route_response_total{{{rl},status_code="503",classification="failure"}} 1"#),
            format!(r#"route_response_latency_ms_count{{{rl},status_code="200"}} 1"#),
        ] {
            assert!(text.contains(&line), "no {line} in\n{text}");
        }
        // Held (by its profile): kept however long it is idle.
        m.sweep_past_retention(Instant::now(), Duration::from_secs(600));
        assert!(m.render().contains("route_request_total{"), "a held route is kept");
        drop(r);
        m.sweep_past_retention(Instant::now(), Duration::from_secs(600));
        let text = m.render();
        assert!(!text.contains("rt_route=\"books\""), "idle route series are evicted:\n{text}");
    }
}
