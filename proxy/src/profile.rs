//! Service profiles: what the destination service's `GetProfile` says about a service's
//! HTTP routes — which responses are failures, which routes may be retried and how often,
//! timeouts — and the retry budget that bounds all retries. Converted once per update
//! from the protobuf into plain types that the request path can match cheaply.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use http::{Method, StatusCode};
use linkerd2_proxy_api::destination as api;

use crate::http::route_metrics::{RouteFamilies, RtLabels, RtPairs, RtRoute};

/// Retries may add this share of the request rate on top of the floor below.
pub const DEFAULT_RETRY_RATIO: f64 = 0.2;
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;
pub const DEFAULT_BUDGET_TTL: Duration = Duration::from_secs(10);
/// Retries of one request, when the profile does not say.
pub const DEFAULT_RETRY_LIMIT: u32 = 2;

/// Route metric labels by which the destination service carries the settings the
/// profile protobuf has no field for.
pub const LABEL_RETRY_LIMIT: &str = "weft_retry_limit";
pub const LABEL_RETRY_TIMEOUT: &str = "weft_retry_timeout_ms";

/// Backends of a split, at most: a route's backends are a handful in practice, and the
/// list comes from the network.
pub const MAX_BACKENDS: usize = 32;
/// Routes of a profile, at most (the destination service sends at most 100 an HTTPRoute);
/// each named one may get route metrics, so their number is bounded here too.
pub const MAX_ROUTES: usize = 100;
/// `rt_*` labels of a route, at most, and the longest value kept whole.
const MAX_ROUTE_LABELS: usize = 4;
const MAX_ROUTE_LABEL_VALUE: usize = 253;

#[derive(Debug, Clone)]
pub struct Profile {
    /// The service's name (`fully_qualified_name`), for the route metrics' `dst`.
    pub name: Arc<str>,
    pub routes: Vec<Route>,
    pub budget: Budget,
    /// A traffic split (`dst_overrides`): requests (HTTP) and connections (TCP) go to
    /// these services by weight instead of the target's own endpoints. Empty: no split.
    pub backends: Vec<Backend>,
    /// The service's port is opaque (`opaque_protocol`, from its `opaque-ports`
    /// annotation): its connections skip protocol detection.
    pub opaque: bool,
}

impl Default for Profile {
    /// No routes: nothing is retried; 5xx are failures. No split.
    fn default() -> Self {
        Profile {
            name: Arc::from(""),
            routes: Vec::new(),
            budget: Budget::default(),
            backends: Vec::new(),
            opaque: false,
        }
    }
}

/// One service of a split: its name as the destination service resolves it
/// (`name.ns.svc.cluster.local:port`), and its relative weight (never zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub authority: std::sync::Arc<str>,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub ratio: f64,
    pub min_per_second: u32,
    pub ttl: Duration,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            ratio: DEFAULT_RETRY_RATIO,
            min_per_second: DEFAULT_MIN_RETRIES_PER_SECOND,
            ttl: DEFAULT_BUDGET_TTL,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub condition: RequestMatch,
    pub failures: Vec<ResponseMatch>,
    pub retryable: bool,
    pub retry_limit: u32,
    /// Timeout of each try (none when zero).
    pub try_timeout: Duration,
    /// Timeout of the whole request, retries included (none when zero).
    pub timeout: Duration,
    /// The route's own metric labels, as `rt_*` (`rt_route`: its name), when it has any:
    /// then its requests are counted in the route metrics too.
    pub rt_labels: Option<Arc<Vec<(String, String)>>>,
    /// Those route metrics, made at the route's first request.
    pub metrics: OnceLock<Arc<RtRoute>>,
}

#[derive(Debug, Clone)]
pub enum RequestMatch {
    All(Vec<RequestMatch>),
    Any(Vec<RequestMatch>),
    Not(Box<RequestMatch>),
    Path(regex_lite::Regex),
    Method(Method),
}

#[derive(Debug, Clone, PartialEq)]
pub enum ResponseMatch {
    All(Vec<ResponseMatch>),
    Any(Vec<ResponseMatch>),
    Not(Box<ResponseMatch>),
    Status { min: u16, max: u16 },
}

impl RequestMatch {
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        match self {
            RequestMatch::All(m) => m.iter().all(|m| m.matches(method, path)),
            RequestMatch::Any(m) => m.iter().any(|m| m.matches(method, path)),
            RequestMatch::Not(m) => !m.matches(method, path),
            RequestMatch::Path(re) => re.is_match(path),
            RequestMatch::Method(m) => m == method,
        }
    }
}

impl ResponseMatch {
    pub fn matches(&self, status: StatusCode) -> bool {
        match self {
            ResponseMatch::All(m) => m.iter().all(|m| m.matches(status)),
            ResponseMatch::Any(m) => m.iter().any(|m| m.matches(status)),
            ResponseMatch::Not(m) => !m.matches(status),
            ResponseMatch::Status { min, max } => (*min..=*max).contains(&status.as_u16()),
        }
    }
}

impl Route {
    /// Whether `status` is a failure on this route; without classes, 5xx are.
    pub fn is_failure(&self, status: StatusCode) -> bool {
        is_failure(&self.failures, status)
    }

    /// The route's metrics when it has labels of its own (made at its first request):
    /// `service` is the profile's name (the target's address without one), `target` the
    /// address the requests are for.
    pub fn route_metrics(
        &self,
        families: &RouteFamilies,
        direction: crate::metrics::Direction,
        service: &str,
        target: std::net::SocketAddr,
    ) -> Option<Arc<RtRoute>> {
        let rt = self.rt_labels.as_ref()?;
        let made = self.metrics.get_or_init(|| {
            let dst = match service {
                "" => target.to_string(),
                name => format!("{name}:{}", target.port()),
            };
            let labels = RtLabels { direction: direction.as_str(), dst, rt: RtPairs(rt.clone()) };
            families.route(labels, self.failures.clone())
        });
        Some(made.clone())
    }
}

/// Whether `status` is a failure by these response classes; without any, 5xx are.
pub fn is_failure(failures: &[ResponseMatch], status: StatusCode) -> bool {
    if failures.is_empty() {
        status.is_server_error()
    } else {
        failures.iter().any(|m| m.matches(status))
    }
}

impl Profile {
    /// The first route matching the request, as Linkerd orders them.
    pub fn route(&self, method: &Method, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.condition.matches(method, path))
    }
}

/// Why part of a profile was ignored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    #[error("route path regex {0:?} does not compile: {1}")]
    Regex(String, String),
    #[error("route has no condition")]
    NoCondition,
    #[error("invalid method in a route condition")]
    Method,
    #[error("traffic split backend {0:?} is not a host:port authority")]
    Backend(String),
    #[error("traffic split has more than {MAX_BACKENDS} backends; the rest are ignored")]
    TooManyBackends,
    #[error("profile has {0} routes; only the first {MAX_ROUTES} are used")]
    TooManyRoutes(usize),
}

/// Converts a profile update. Routes that cannot be understood are dropped (with the
/// reasons returned) rather than guessed at.
pub fn from_api(p: &api::DestinationProfile) -> (Profile, Vec<ProfileError>) {
    let mut errors = Vec::new();
    if p.routes.len() > MAX_ROUTES {
        errors.push(ProfileError::TooManyRoutes(p.routes.len()));
    }
    let routes = p
        .routes
        .iter()
        .take(MAX_ROUTES)
        .filter_map(|r| match route(r) {
            Ok(r) => Some(r),
            Err(e) => {
                errors.push(e);
                None
            }
        })
        .collect();
    let budget = p.retry_budget.as_ref().map_or_else(Budget::default, |b| Budget {
        // NaN would make every retry comparison false (no retries, not even the floor).
        ratio: match f64::from(b.retry_ratio) {
            r if r.is_nan() => DEFAULT_RETRY_RATIO,
            r => r.clamp(0.0, 1000.0),
        },
        min_per_second: b.min_retries_per_second,
        ttl: b
            .ttl
            .as_ref()
            .and_then(duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_BUDGET_TTL)
            .clamp(Duration::from_secs(1), Duration::from_secs(60)),
    });
    let backends = backends(&p.dst_overrides, &mut errors);
    let name = Arc::from(p.fully_qualified_name.as_str());
    let opaque = p.opaque_protocol;
    (Profile { name, routes, budget, backends, opaque }, errors)
}

/// The split's backends with a weight, each a valid authority; weight 0 means "none of
/// the traffic" and is left out.
fn backends(overrides: &[api::WeightedDst], errors: &mut Vec<ProfileError>) -> Vec<Backend> {
    let mut out = Vec::new();
    for o in overrides.iter().filter(|o| o.weight > 0) {
        if out.len() == MAX_BACKENDS {
            errors.push(ProfileError::TooManyBackends);
            break;
        }
        match o.authority.parse::<http::uri::Authority>() {
            Ok(a) if a.port_u16().is_some_and(|p| p > 0) && !a.host().is_empty() => {
                out.push(Backend { authority: o.authority.as_str().into(), weight: o.weight });
            }
            _ => errors.push(ProfileError::Backend(o.authority.clone())),
        }
    }
    out
}

impl Profile {
    /// The backend of the split that gets the next request, by weight, given a uniform
    /// random `r`; `None` without a split.
    pub fn backend(&self, r: u64) -> Option<&Backend> {
        let total: u64 = self.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut x = r % total;
        for b in &self.backends {
            match x.checked_sub(u64::from(b.weight)) {
                Some(rest) => x = rest,
                None => return Some(b),
            }
        }
        None
    }
}

fn route(r: &api::Route) -> Result<Route, ProfileError> {
    let condition = request_match(r.condition.as_ref().ok_or(ProfileError::NoCondition)?)?;
    let label_ms = |k: &str| r.metrics_labels.get(k).and_then(|v| v.parse::<u64>().ok());
    Ok(Route {
        condition,
        failures: r
            .response_classes
            .iter()
            .filter(|c| c.is_failure)
            .filter_map(|c| c.condition.as_ref().map(response_match))
            .collect(),
        retryable: r.is_retryable,
        retry_limit: label_ms(LABEL_RETRY_LIMIT).map_or(DEFAULT_RETRY_LIMIT, |n| n.min(100) as u32),
        try_timeout: label_ms(LABEL_RETRY_TIMEOUT).map(Duration::from_millis).unwrap_or_default(),
        timeout: r.timeout.as_ref().and_then(duration).unwrap_or_default(),
        rt_labels: rt_labels(&r.metrics_labels),
        metrics: OnceLock::new(),
    })
}

/// A route's metric labels as `rt_*` labels, sorted by name: those that are not settings
/// (`weft_retry_*`), with a name of `[a-zA-Z0-9_]`, at most `MAX_ROUTE_LABELS`, values cut
/// to `MAX_ROUTE_LABEL_VALUE` bytes. `None` when none is left.
fn rt_labels(
    labels: &std::collections::HashMap<String, String>,
) -> Option<Arc<Vec<(String, String)>>> {
    let mut out: Vec<(String, String)> = labels
        .iter()
        .filter(|(k, _)| k.as_str() != LABEL_RETRY_LIMIT && k.as_str() != LABEL_RETRY_TIMEOUT)
        .filter(|(k, _)| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        .map(|(k, v)| {
            let mut end = v.len().min(MAX_ROUTE_LABEL_VALUE);
            while !v.is_char_boundary(end) {
                end -= 1;
            }
            (format!("rt_{k}"), v[..end].to_string())
        })
        .collect();
    out.sort();
    out.truncate(MAX_ROUTE_LABELS);
    (!out.is_empty()).then(|| Arc::new(out))
}

fn duration(d: &prost_types::Duration) -> Option<Duration> {
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    Some(Duration::new(secs, nanos))
}

fn request_match(m: &api::RequestMatch) -> Result<RequestMatch, ProfileError> {
    use api::request_match::Match;
    let seq = |s: &api::request_match::Seq| {
        s.matches.iter().map(request_match).collect::<Result<Vec<_>, _>>()
    };
    match m.r#match.as_ref().ok_or(ProfileError::NoCondition)? {
        Match::All(s) => Ok(RequestMatch::All(seq(s)?)),
        Match::Any(s) => Ok(RequestMatch::Any(seq(s)?)),
        Match::Not(m) => Ok(RequestMatch::Not(Box::new(request_match(m)?))),
        Match::Path(p) => {
            // Linkerd anchors route regexes to the whole path.
            let anchored = format!("^(?:{})$", p.regex);
            regex_lite::Regex::new(&anchored)
                .map(RequestMatch::Path)
                .map_err(|e| ProfileError::Regex(p.regex.clone(), e.to_string()))
        }
        Match::Method(m) => {
            Method::try_from(m.clone()).map(RequestMatch::Method).map_err(|_| ProfileError::Method)
        }
    }
}

fn response_match(m: &api::ResponseMatch) -> ResponseMatch {
    use api::response_match::Match;
    let seq = |s: &api::response_match::Seq| s.matches.iter().map(response_match).collect();
    match m.r#match.as_ref() {
        Some(Match::All(s)) => ResponseMatch::All(seq(s)),
        Some(Match::Any(s)) => ResponseMatch::Any(seq(s)),
        Some(Match::Not(m)) => ResponseMatch::Not(Box::new(response_match(m))),
        Some(Match::Status(r)) => ResponseMatch::Status {
            min: u16::try_from(r.min).unwrap_or(u16::MAX),
            max: u16::try_from(r.max).unwrap_or(u16::MAX),
        },
        // An empty match matches nothing.
        None => ResponseMatch::Any(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_class(min: u32, max: u32) -> api::ResponseClass {
        api::ResponseClass {
            condition: Some(api::ResponseMatch {
                r#match: Some(api::response_match::Match::Status(api::HttpStatusRange {
                    min,
                    max,
                })),
            }),
            is_failure: true,
        }
    }

    fn path(re: &str) -> api::RequestMatch {
        api::RequestMatch {
            r#match: Some(api::request_match::Match::Path(api::PathMatch { regex: re.into() })),
        }
    }

    #[test]
    fn a_catch_all_retry_route() {
        let p = api::DestinationProfile {
            routes: vec![api::Route {
                condition: Some(path(".*")),
                response_classes: vec![status_class(500, 599)],
                metrics_labels: [
                    (LABEL_RETRY_LIMIT.to_string(), "3".to_string()),
                    (LABEL_RETRY_TIMEOUT.to_string(), "250".to_string()),
                ]
                .into(),
                is_retryable: true,
                timeout: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
            }],
            retry_budget: Some(api::RetryBudget {
                retry_ratio: 0.5,
                min_retries_per_second: 3,
                ttl: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
            }),
            ..Default::default()
        };
        let (profile, errors) = from_api(&p);
        assert!(errors.is_empty());
        let r = profile.route(&Method::POST, "/any/path").expect("catch-all");
        assert!(r.retryable);
        assert_eq!(r.retry_limit, 3);
        assert_eq!(r.try_timeout, Duration::from_millis(250));
        assert_eq!(r.timeout, Duration::from_secs(2));
        assert!(r.is_failure(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!r.is_failure(StatusCode::NOT_FOUND));
        assert_eq!(
            profile.budget,
            Budget { ratio: 0.5, min_per_second: 3, ttl: Duration::from_secs(5) }
        );
    }

    #[test]
    fn routes_match_anchored_paths_and_methods_in_order() {
        let get = api::RequestMatch {
            r#match: Some(api::request_match::Match::Method(http::Method::GET.into())),
        };
        let p = api::DestinationProfile {
            routes: vec![
                api::Route {
                    condition: Some(api::RequestMatch {
                        r#match: Some(api::request_match::Match::All(api::request_match::Seq {
                            matches: vec![path("/books/[0-9]+"), get],
                        })),
                    }),
                    is_retryable: true,
                    ..Default::default()
                },
                api::Route { condition: Some(path("/books.*")), ..Default::default() },
            ],
            ..Default::default()
        };
        let (profile, errors) = from_api(&p);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(profile.route(&Method::GET, "/books/12").expect("route").retryable);
        assert!(!profile.route(&Method::POST, "/books/12").expect("route").retryable);
        assert!(!profile.route(&Method::GET, "/books/12/x").expect("second route").retryable);
        assert!(profile.route(&Method::GET, "/authors").is_none());
        // Without classes, 5xx are failures.
        let r = profile.route(&Method::GET, "/books/1").expect("route");
        assert!(r.is_failure(StatusCode::BAD_GATEWAY) && !r.is_failure(StatusCode::OK));
    }

    #[test]
    fn bad_routes_are_dropped_with_a_reason_and_defaults_hold() {
        let p = api::DestinationProfile {
            routes: vec![
                api::Route { condition: Some(path("(")), ..Default::default() },
                api::Route::default(),
            ],
            ..Default::default()
        };
        let (profile, errors) = from_api(&p);
        assert!(profile.routes.is_empty());
        assert_eq!(errors.len(), 2);
        assert!(matches!(errors[0], ProfileError::Regex(..)));
        assert_eq!(errors[1], ProfileError::NoCondition);
        assert_eq!(profile.budget, Budget::default());
    }

    #[test]
    fn a_split_keeps_valid_weighted_backends_and_picks_by_weight() {
        let dst = |authority: &str, weight| api::WeightedDst {
            authority: authority.into(),
            weight,
            ..Default::default()
        };
        let p = api::DestinationProfile {
            dst_overrides: vec![
                dst("web.prod.svc.cluster.local:8080", 3),
                dst("web-canary.prod.svc.cluster.local:8080", 1),
                dst("web-old.prod.svc.cluster.local:8080", 0),
                dst("no-port.prod.svc.cluster.local", 5),
                dst("bad host:80", 5),
            ],
            ..Default::default()
        };
        let (profile, errors) = from_api(&p);
        let names: Vec<&str> = profile.backends.iter().map(|b| &*b.authority).collect();
        assert_eq!(
            names,
            ["web.prod.svc.cluster.local:8080", "web-canary.prod.svc.cluster.local:8080"]
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().all(|e| matches!(e, ProfileError::Backend(_))));
        // r mod 4: 0..3 → web, 3 → canary.
        let pick = |r| profile.backend(r).map(|b| b.weight);
        assert_eq!(
            [pick(0), pick(2), pick(3), pick(4), pick(7)],
            [Some(3), Some(3), Some(1), Some(3), Some(1)]
        );
        assert!(Profile::default().backend(7).is_none());

        let many = api::DestinationProfile {
            dst_overrides: (0..40)
                .map(|i| dst(&format!("s{i}.ns.svc.cluster.local:80"), 1))
                .collect(),
            ..Default::default()
        };
        let (profile, errors) = from_api(&many);
        assert_eq!(profile.backends.len(), MAX_BACKENDS);
        assert_eq!(errors, [ProfileError::TooManyBackends]);
    }

    /// A retry budget with a NaN ratio (f32 bits 0x7fc00000 on the wire) made every
    /// "retries < allowed" comparison false: no retries at all, not even the floor. Found
    /// by review; the `profile` fuzz target checks the ratio is finite and bounded.
    #[test]
    fn a_nan_retry_ratio_takes_the_default() {
        let p = api::DestinationProfile {
            retry_budget: Some(api::RetryBudget {
                retry_ratio: f32::NAN,
                min_retries_per_second: 10,
                ttl: None,
            }),
            ..Default::default()
        };
        assert_eq!(from_api(&p).0.budget.ratio, DEFAULT_RETRY_RATIO);
        let inf = api::DestinationProfile {
            retry_budget: Some(api::RetryBudget {
                retry_ratio: f32::INFINITY,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(from_api(&inf).0.budget.ratio, 1000.0);
    }

    #[test]
    fn route_labels_become_bounded_rt_labels_and_settings_do_not() {
        let route = |labels: &[(&str, &str)]| api::Route {
            condition: Some(path("/books.*")),
            metrics_labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        let long = "x".repeat(300);
        let p = api::DestinationProfile {
            fully_qualified_name: "web.prod.svc.cluster.local".into(),
            routes: vec![
                route(&[
                    ("route", "GET /books/{id}"),
                    (LABEL_RETRY_LIMIT, "2"),
                    ("bad-key", "x"),
                    ("team", &long),
                ]),
                // Only settings: a catch-all from Service annotations gets no route metrics.
                route(&[(LABEL_RETRY_LIMIT, "2"), (LABEL_RETRY_TIMEOUT, "100")]),
            ],
            ..Default::default()
        };
        let (profile, errors) = from_api(&p);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(&*profile.name, "web.prod.svc.cluster.local");
        let rt = profile.routes[0].rt_labels.as_deref().expect("labels");
        assert_eq!(
            rt,
            &[
                ("rt_route".to_string(), "GET /books/{id}".to_string()),
                ("rt_team".to_string(), "x".repeat(MAX_ROUTE_LABEL_VALUE)),
            ]
        );
        assert!(profile.routes[1].rt_labels.is_none());
    }

    #[test]
    fn routes_past_the_bound_are_dropped_and_said() {
        let p = api::DestinationProfile {
            routes: vec![
                api::Route { condition: Some(path("/a")), ..Default::default() };
                MAX_ROUTES + 5
            ],
            ..Default::default()
        };
        let (profile, errors) = from_api(&p);
        assert_eq!(profile.routes.len(), MAX_ROUTES);
        assert_eq!(errors, [ProfileError::TooManyRoutes(MAX_ROUTES + 5)]);
    }
}
