//! Service annotations → retry and timeout policy → `DestinationProfile`. Pure.
//!
//! | annotation | value | effect |
//! |---|---|---|
//! | `retry.weft.dev/http` | comma list of `5xx`, `gateway-error` (502–504), codes (`503`), ranges (`500-504`) | a catch-all route, retryable, whose response classes mark those statuses as failures |
//! | `retry.weft.dev/limit` | retries per request, 0–100 (default 2) | route metrics label [`RETRY_LIMIT_LABEL`] |
//! | `retry.weft.dev/timeout` | per-try timeout, e.g. `300ms`, `1.5s`, `1m30s` | route metrics label [`RETRY_TIMEOUT_LABEL`] (milliseconds) |
//! | `timeout.weft.dev/request` | whole-request timeout (retries included) | route `timeout` |
//!
//! The proto has no field for the retry limit or the per-try timeout, so they travel as route
//! metrics labels with the names above; a proxy reads them and does not export them as labels.
//! Every profile carries the retry budget (retries may add 20 % to the request rate plus 10 per
//! second, over a 10 s window). An invalid value is reported and ignored, never guessed at.
//! The same annotations on an HTTPRoute, with its rules' `timeouts`, make per-route routes
//! that go before the Service's catch-all ([`routes`]).

use std::{collections::BTreeMap, ops::RangeInclusive, time::Duration};

use linkerd2_proxy_api::destination as pb;

use crate::split::WeightedDst;

pub mod routes;

pub use routes::RouteProfile;

pub const RETRY_HTTP_ANNOTATION: &str = "retry.weft.dev/http";
pub const RETRY_LIMIT_ANNOTATION: &str = "retry.weft.dev/limit";
pub const RETRY_TIMEOUT_ANNOTATION: &str = "retry.weft.dev/timeout";
pub const REQUEST_TIMEOUT_ANNOTATION: &str = "timeout.weft.dev/request";

/// Route metrics label carrying the maximum number of retries of one request.
pub const RETRY_LIMIT_LABEL: &str = "weft_retry_limit";
/// Route metrics label carrying the per-try timeout, in milliseconds.
pub const RETRY_TIMEOUT_LABEL: &str = "weft_retry_timeout_ms";

pub const DEFAULT_RETRY_LIMIT: u32 = 2;
const MAX_RETRY_LIMIT: u32 = 100;
pub const BUDGET_RETRY_RATIO: f32 = 0.2;
pub const BUDGET_MIN_RETRIES_PER_SECOND: u32 = 10;
pub const BUDGET_TTL: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfilePolicy {
    pub retry: Option<RetryPolicy>,
    pub request_timeout: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Response statuses that count as failures and may be retried.
    pub statuses: Vec<RangeInclusive<u16>>,
    pub limit: u32,
    pub per_try_timeout: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: invalid value {value:?}: {reason}")]
pub struct AnnotationError {
    pub annotation: &'static str,
    pub value: String,
    pub reason: String,
}

/// Reads the retry and timeout annotations. Invalid values are returned as errors and left
/// out of the policy; the valid ones still apply.
pub fn parse_annotations(
    annotations: &BTreeMap<String, String>,
) -> (ProfilePolicy, Vec<AnnotationError>) {
    let mut errors = Vec::new();
    let statuses = field(annotations, RETRY_HTTP_ANNOTATION, parse_statuses, &mut errors);
    let limit = field(annotations, RETRY_LIMIT_ANNOTATION, parse_limit, &mut errors);
    let per_try_timeout = field(annotations, RETRY_TIMEOUT_ANNOTATION, parse_duration, &mut errors);
    let request_timeout =
        field(annotations, REQUEST_TIMEOUT_ANNOTATION, parse_duration, &mut errors);
    let retry = statuses.map(|statuses| RetryPolicy {
        statuses,
        limit: limit.unwrap_or(DEFAULT_RETRY_LIMIT),
        per_try_timeout,
    });
    (ProfilePolicy { retry, request_timeout }, errors)
}

fn field<T>(
    annotations: &BTreeMap<String, String>,
    annotation: &'static str,
    parse: fn(&str) -> Result<T, String>,
    errors: &mut Vec<AnnotationError>,
) -> Option<T> {
    let value = annotations.get(annotation)?;
    parse(value.trim())
        .map_err(|reason| errors.push(AnnotationError { annotation, value: value.clone(), reason }))
        .ok()
}

/// `5xx`, `gateway-error`, `503`, `500-504`, comma separated.
pub fn parse_statuses(list: &str) -> Result<Vec<RangeInclusive<u16>>, String> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        let range = match item.to_ascii_lowercase().as_str() {
            "" => return Err("empty item".into()),
            "5xx" => 500..=599,
            "gateway-error" => 502..=504,
            other => {
                let (lo, hi) = match other.split_once('-') {
                    Some((lo, hi)) => (lo.trim(), hi.trim()),
                    None => (other, other),
                };
                let code = |s: &str| match s.parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => Ok(c),
                    _ => {
                        Err(format!("{s:?} is not an HTTP status (100-599), 5xx or gateway-error"))
                    }
                };
                let (lo, hi) = (code(lo)?, code(hi)?);
                if lo > hi {
                    return Err(format!("range {item:?} is empty"));
                }
                lo..=hi
            }
        };
        if !out.contains(&range) {
            out.push(range);
        }
    }
    Ok(out)
}

fn parse_limit(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if n <= MAX_RETRY_LIMIT => Ok(n),
        _ => Err(format!("expected a number of retries from 0 to {MAX_RETRY_LIMIT}")),
    }
}

/// A positive duration in Go's notation, as Kubernetes users write them: `300ms`, `1.5s`,
/// `1m30s`, `2h` (units `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`).
pub fn parse_duration(v: &str) -> Result<Duration, String> {
    let err = || format!("expected a positive duration like 300ms, 2s or 1m30s, got {v:?}");
    let mut rest = v;
    let mut total = 0f64;
    if rest.is_empty() {
        return Err(err());
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(err)?;
        let (num, tail) = rest.split_at(num_len);
        let num: f64 = num.parse().map_err(|_| err())?;
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        total += num * scale;
        rest = tail;
    }
    // Up to a day: anything longer is a typo, not a timeout.
    if !(total > 0.0 && total <= 86_400.0) {
        return Err(err());
    }
    let d = Duration::from_secs_f64(total);
    if d.is_zero() { Err(err()) } else { Ok(d) }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

pub fn retry_budget() -> pb::RetryBudget {
    pb::RetryBudget {
        retry_ratio: BUDGET_RETRY_RATIO,
        min_retries_per_second: BUDGET_MIN_RETRIES_PER_SECOND,
        ttl: Some(proto_duration(BUDGET_TTL)),
    }
}

/// The catch-all route for a policy, or none when the policy asks for nothing.
pub fn routes(policy: &ProfilePolicy) -> Vec<pb::Route> {
    if policy.retry.is_none() && policy.request_timeout.is_none() {
        return Vec::new();
    }
    let per_try = policy.retry.as_ref().and_then(|r| r.per_try_timeout);
    let all = pb::RequestMatch {
        r#match: Some(pb::request_match::Match::Path(pb::PathMatch { regex: ".*".into() })),
    };
    vec![route(all, policy.retry.as_ref(), per_try, policy.request_timeout, Default::default())]
}

/// One profile route: `retry` makes it retryable with its limit and failure classes;
/// `per_try` bounds each try (the only one, without retries); `timeout` the whole request.
pub(crate) fn route(
    condition: pb::RequestMatch,
    retry: Option<&RetryPolicy>,
    per_try: Option<Duration>,
    timeout: Option<Duration>,
    mut metrics_labels: std::collections::HashMap<String, String>,
) -> pb::Route {
    if let Some(t) = per_try {
        metrics_labels.insert(RETRY_TIMEOUT_LABEL.to_string(), t.as_millis().max(1).to_string());
    }
    let mut response_classes = Vec::new();
    if let Some(retry) = retry {
        metrics_labels.insert(RETRY_LIMIT_LABEL.to_string(), retry.limit.to_string());
        response_classes = retry
            .statuses
            .iter()
            .map(|r| pb::ResponseClass {
                condition: Some(pb::ResponseMatch {
                    r#match: Some(pb::response_match::Match::Status(pb::HttpStatusRange {
                        min: u32::from(*r.start()),
                        max: u32::from(*r.end()),
                    })),
                }),
                is_failure: true,
            })
            .collect();
    }
    pb::Route {
        condition: Some(condition),
        response_classes,
        metrics_labels,
        is_retryable: retry.is_some(),
        timeout: timeout.map(proto_duration),
    }
}

/// The profile of a destination: its name, whether its port is opaque, its routes (an
/// HTTPRoute's, [`routes`], then the Service's catch-all), the retry budget, the services its requests are split across ([`crate::split`]; empty: no split),
/// and for a pod (looked up by IP) the endpoint to use directly.
pub fn build(
    fully_qualified_name: &str,
    policy: &ProfilePolicy,
    route_profile: Option<&RouteProfile>,
    opaque_protocol: bool,
    dst_overrides: &[WeightedDst],
    endpoint: Option<pb::WeightedAddr>,
) -> pb::DestinationProfile {
    pb::DestinationProfile {
        fully_qualified_name: fully_qualified_name.to_string(),
        opaque_protocol,
        routes: route_profile
            .map(|r| r.routes(policy))
            .unwrap_or_default()
            .into_iter()
            .chain(routes(policy))
            .collect(),
        retry_budget: Some(retry_budget()),
        dst_overrides: dst_overrides
            .iter()
            .map(|d| pb::WeightedDst {
                authority: d.authority.clone(),
                weight: d.weight,
                backend_ref: None,
            })
            .collect(),
        endpoint,
        parent_ref: None,
        profile_ref: None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn statuses() {
        assert_eq!(parse_statuses("5xx"), Ok(vec![500..=599]));
        assert_eq!(parse_statuses("gateway-error"), Ok(vec![502..=504]));
        assert_eq!(parse_statuses("Gateway-Error"), Ok(vec![502..=504]));
        assert_eq!(parse_statuses("503"), Ok(vec![503..=503]));
        assert_eq!(parse_statuses("500-504"), Ok(vec![500..=504]));
        assert_eq!(parse_statuses(" 429 , 5xx,5xx "), Ok(vec![429..=429, 500..=599]));
        for bad in ["", "5xx,", "600", "99", "abc", "504-500", "4xx", "500-", "-500", "500-600"] {
            assert!(parse_statuses(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("300ms"), Ok(ms(300)));
        assert_eq!(parse_duration("2s"), Ok(ms(2000)));
        assert_eq!(parse_duration("1.5s"), Ok(ms(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(ms(90_000)));
        assert_eq!(parse_duration("1h"), Ok(ms(3_600_000)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("250µs"), Ok(Duration::from_micros(250)));
        for bad in ["", "0s", "0", "5", "s", "10x", "-1s", "1..5s", "1s2", "2d", "25h", " 1s", "ms"]
        {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn policy_from_annotations() {
        let (p, errs) = parse_annotations(&annotations(&[
            (RETRY_HTTP_ANNOTATION, "5xx"),
            (RETRY_LIMIT_ANNOTATION, "3"),
            (RETRY_TIMEOUT_ANNOTATION, "250ms"),
            (REQUEST_TIMEOUT_ANNOTATION, "2s"),
            ("unrelated.example.com/x", "y"),
        ]));
        assert!(errs.is_empty());
        assert_eq!(
            p,
            ProfilePolicy {
                retry: Some(RetryPolicy {
                    statuses: vec![500..=599],
                    limit: 3,
                    per_try_timeout: Some(Duration::from_millis(250))
                }),
                request_timeout: Some(Duration::from_secs(2)),
            }
        );
    }

    #[test]
    fn default_limit_and_no_annotations() {
        let (p, errs) =
            parse_annotations(&annotations(&[(RETRY_HTTP_ANNOTATION, "gateway-error")]));
        assert!(errs.is_empty());
        assert_eq!(p.retry.as_ref().map(|r| r.limit), Some(DEFAULT_RETRY_LIMIT));
        assert_eq!(parse_annotations(&BTreeMap::new()), (ProfilePolicy::default(), vec![]));
        // A limit without retry classes enables nothing.
        let (p, errs) = parse_annotations(&annotations(&[(RETRY_LIMIT_ANNOTATION, "5")]));
        assert!(errs.is_empty());
        assert_eq!(p, ProfilePolicy::default());
    }

    #[test]
    fn invalid_values_are_reported_and_ignored() {
        let (p, errs) = parse_annotations(&annotations(&[
            (RETRY_HTTP_ANNOTATION, "5xx,teapot"),
            (RETRY_LIMIT_ANNOTATION, "many"),
            (RETRY_TIMEOUT_ANNOTATION, "soon"),
            (REQUEST_TIMEOUT_ANNOTATION, "10s"),
        ]));
        assert_eq!(
            p,
            ProfilePolicy { retry: None, request_timeout: Some(Duration::from_secs(10)) }
        );
        let names: Vec<_> = errs.iter().map(|e| e.annotation).collect();
        assert_eq!(
            names,
            [RETRY_HTTP_ANNOTATION, RETRY_LIMIT_ANNOTATION, RETRY_TIMEOUT_ANNOTATION]
        );

        // A bad limit falls back to nothing guessed: the default, and the error is reported.
        let (p, errs) = parse_annotations(&annotations(&[
            (RETRY_HTTP_ANNOTATION, "503"),
            (RETRY_LIMIT_ANNOTATION, "101"),
        ]));
        assert_eq!(errs.len(), 1);
        assert_eq!(p.retry.map(|r| r.limit), Some(DEFAULT_RETRY_LIMIT));
    }

    #[test]
    fn profile_with_retries_and_timeout() {
        let (policy, _) = parse_annotations(&annotations(&[
            (RETRY_HTTP_ANNOTATION, "gateway-error,429"),
            (RETRY_TIMEOUT_ANNOTATION, "100ms"),
            (REQUEST_TIMEOUT_ANNOTATION, "1.5s"),
        ]));
        let p = build("web.prod.svc.cluster.local", &policy, None, false, &[], None);
        assert_eq!(p.fully_qualified_name, "web.prod.svc.cluster.local");
        assert!(!p.opaque_protocol);
        assert_eq!(p.routes.len(), 1);
        let route = &p.routes[0];
        assert!(route.is_retryable);
        assert_eq!(route.timeout, Some(prost_types::Duration { seconds: 1, nanos: 500_000_000 }));
        assert_eq!(
            route.condition,
            Some(pb::RequestMatch {
                r#match: Some(pb::request_match::Match::Path(pb::PathMatch { regex: ".*".into() }))
            })
        );
        let ranges: Vec<_> = route
            .response_classes
            .iter()
            .map(|c| {
                assert!(c.is_failure);
                match c.condition.as_ref().and_then(|m| m.r#match.as_ref()) {
                    Some(pb::response_match::Match::Status(s)) => (s.min, s.max),
                    other => panic!("unexpected match {other:?}"),
                }
            })
            .collect();
        assert_eq!(ranges, [(502, 504), (429, 429)]);
        assert_eq!(route.metrics_labels.get(RETRY_LIMIT_LABEL).map(String::as_str), Some("2"));
        assert_eq!(route.metrics_labels.get(RETRY_TIMEOUT_LABEL).map(String::as_str), Some("100"));
        let budget = p.retry_budget.expect("budget");
        assert_eq!(budget.retry_ratio, 0.2);
        assert_eq!(budget.min_retries_per_second, 10);
        assert_eq!(budget.ttl, Some(prost_types::Duration { seconds: 10, nanos: 0 }));
    }

    #[test]
    fn profile_timeout_only_and_empty() {
        let (policy, _) = parse_annotations(&annotations(&[(REQUEST_TIMEOUT_ANNOTATION, "3s")]));
        let p = build("a.b.svc.cluster.local", &policy, None, true, &[], None);
        assert!(p.opaque_protocol);
        assert_eq!(p.routes.len(), 1);
        assert!(!p.routes[0].is_retryable);
        assert!(p.routes[0].response_classes.is_empty());
        assert!(p.routes[0].metrics_labels.is_empty());

        let p = build("a.b.svc.cluster.local", &ProfilePolicy::default(), None, false, &[], None);
        assert!(p.routes.is_empty());
        assert!(p.retry_budget.is_some());
    }

    #[test]
    fn profile_with_overrides() {
        let dsts = [
            WeightedDst { authority: "web-stable.prod.svc.cluster.local:80".into(), weight: 90 },
            WeightedDst { authority: "web-canary.prod.svc.cluster.local:80".into(), weight: 0 },
        ];
        let p = build(
            "web.prod.svc.cluster.local",
            &ProfilePolicy::default(),
            None,
            false,
            &dsts,
            None,
        );
        let got: Vec<_> =
            p.dst_overrides.iter().map(|d| (d.authority.as_str(), d.weight)).collect();
        assert_eq!(
            got,
            [
                ("web-stable.prod.svc.cluster.local:80", 90),
                ("web-canary.prod.svc.cluster.local:80", 0)
            ]
        );
    }
}
