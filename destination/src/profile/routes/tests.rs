use std::collections::HashMap;

use serde_json::json;

use super::*;
use crate::profile::{
    REQUEST_TIMEOUT_ANNOTATION, RETRY_HTTP_ANNOTATION, RETRY_LIMIT_ANNOTATION, RETRY_LIMIT_LABEL,
    RETRY_TIMEOUT_ANNOTATION, RETRY_TIMEOUT_LABEL,
};

fn key() -> ObjKey {
    ObjKey::new("prod", "web-routes")
}

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn convert(rules: Value) -> (RouteProfile, Vec<Problem>) {
    let rules = rules.as_array().unwrap().clone();
    RouteProfile::from_k8s(&key(), &BTreeMap::new(), Some(&rules))
}

fn reasons(problems: &[Problem]) -> Vec<&'static str> {
    problems.iter().map(|p| p.reason).collect()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The route's path regex and method, as the proxy gets them.
fn condition(r: &pb::Route) -> (String, Option<i32>) {
    use pb::request_match::Match;
    let path = |m: &pb::RequestMatch| match &m.r#match {
        Some(Match::Path(p)) => p.regex.clone(),
        other => panic!("not a path: {other:?}"),
    };
    match r.condition.as_ref().and_then(|c| c.r#match.as_ref()) {
        Some(Match::Path(p)) => (p.regex.clone(), None),
        Some(Match::All(seq)) => {
            let method = match &seq.matches[1].r#match {
                Some(Match::Method(http_types::HttpMethod {
                    r#type: Some(http_types::http_method::Type::Registered(m)),
                })) => *m,
                other => panic!("not a method: {other:?}"),
            };
            (path(&seq.matches[0]), Some(method))
        }
        other => panic!("unexpected condition {other:?}"),
    }
}

/// Whether `path` matches the regex as the proxy anchors it.
fn matches(regex: &str, path: &str) -> bool {
    regex_lite::Regex::new(&format!("^(?:{regex})$")).unwrap().is_match(path)
}

fn label<'a>(r: &'a pb::Route, k: &str) -> Option<&'a str> {
    r.metrics_labels.get(k).map(String::as_str)
}

fn secs(d: Duration) -> Option<prost_types::Duration> {
    Some(super::super::proto_duration(d))
}

#[test]
fn every_match_kind_becomes_a_condition() {
    let (p, problems) = convert(json!([{"matches": [
        {"path": {"type": "Exact", "value": "/api/v1.0/users"}},
        {"path": {"type": "PathPrefix", "value": "/static/"}},
        {"path": {"type": "RegularExpression", "value": "/items/[0-9]+"}},
        {"method": "POST"},
        {"path": {"type": "PathPrefix", "value": "/"}},
    ]}]));
    assert!(problems.is_empty(), "{problems:?}");
    let routes = p.routes(&ProfilePolicy::default());
    let conds: Vec<_> = routes.iter().map(condition).collect();
    let post = http_types::http_method::Registered::Post as i32;
    assert_eq!(
        conds,
        [
            (r"/api/v1\.0/users".to_string(), None),
            (r"/static(?:/.*)?".to_string(), None),
            (".*".to_string(), Some(post)),
            (".*".to_string(), None),
            ("/items/[0-9]+".to_string(), None),
        ]
    );
    // Exact is exact, with its dots literal.
    assert!(matches(&conds[0].0, "/api/v1.0/users"));
    assert!(!matches(&conds[0].0, "/api/v1x0/users"));
    assert!(!matches(&conds[0].0, "/api/v1.0/users/7"));
    // A prefix matches whole path elements, its trailing slash aside.
    for path in ["/static", "/static/", "/static/app.js"] {
        assert!(matches(&conds[1].0, path), "{path}");
    }
    assert!(!matches(&conds[1].0, "/staticfoo"));
    assert!(matches(&conds[4].0, "/items/42") && !matches(&conds[4].0, "/items/x"));
    // Every route names the HTTPRoute; no retries, no timeouts asked for.
    for r in &routes {
        assert_eq!(label(r, ROUTE_LABEL), Some("web-routes"));
        assert_eq!((r.is_retryable, r.timeout), (false, None));
        assert!(r.response_classes.is_empty());
    }
}

#[test]
fn precedence_is_exact_then_longest_prefix_then_regex_then_method() {
    let (p, problems) = convert(json!([
        {"matches": [{"path": {"type": "RegularExpression", "value": "/a.*"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a/b"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}, "method": "GET"}]},
        {"matches": [{"path": {"type": "Exact", "value": "/a/b/c"}}]},
        {},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/a/"}}]},
    ]));
    assert!(problems.is_empty(), "{problems:?}");
    let paths: Vec<_> =
        p.rules.iter().map(|r| (format!("{:?}", r.path), r.method.clone())).collect();
    let get = Some("GET".to_string());
    assert_eq!(
        paths,
        [
            ("Exact(\"/a/b/c\")".into(), None),
            ("Prefix(\"/a/b\")".into(), None),
            ("Prefix(\"/a\")".into(), get),
            // Equal: the rules' order.
            ("Prefix(\"/a\")".into(), None),
            ("Prefix(\"/a/\")".into(), None),
            ("Prefix(\"/\")".into(), None),
            ("Regex(\"/a.*\")".into(), None),
        ]
    );
}

#[test]
fn rules_a_profile_cannot_express_are_skipped_whole() {
    let (p, problems) = convert(json!([
        {"matches": [
            {"path": {"type": "Exact", "value": "/ok-but-with-a-header-sibling"}},
            {"path": {"type": "Exact", "value": "/h"}, "headers": [{"name": "x-canary", "value": "1"}]},
        ]},
        {"matches": [{"queryParams": [{"name": "q", "value": "1"}]}]},
        {"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}]},
        {"matches": [{"path": {"type": "RegularExpression", "value": "/(unclosed"}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "no-slash"}}]},
        {"matches": [{"method": "BREW"}]},
        {"matches": "not a list"},
        {"matches": [{"path": {"type": "Exact", "value": "/kept"}}]},
    ]));
    assert_eq!(
        reasons(&problems),
        [
            "unsupported_rule",
            "unsupported_rule",
            "unsupported_rule",
            "invalid_route",
            "invalid_route",
            "invalid_route",
            "invalid_route"
        ]
    );
    assert!(problems[0].detail.contains("rules[0]"), "{problems:?}");
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].path, PathMatch::Exact("/kept".into()));
}

#[test]
fn gateway_durations() {
    use Limit::*;
    assert_eq!(gateway_duration("200ms"), Ok(After(ms(200))));
    assert_eq!(gateway_duration("10s"), Ok(After(ms(10_000))));
    assert_eq!(gateway_duration("1h30m"), Ok(After(Duration::from_secs(5400))));
    assert_eq!(gateway_duration("1m1s1ms"), Ok(After(ms(61_001))));
    assert_eq!(gateway_duration("0s"), Ok(Off));
    assert_eq!(gateway_duration("0ms"), Ok(Off));
    for bad in ["", "1", "1.5s", "-1s", "1d", "100000s", "1h1m1s1ms1h", "s", " 1s", "1S", "2us"] {
        assert!(gateway_duration(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn invalid_timeouts_skip_their_rule() {
    let (p, problems) = convert(json!([
        {"matches": [{"path": {"value": "/a"}}], "timeouts": {"request": "soon"}},
        {"matches": [{"path": {"value": "/b"}}], "timeouts": {"backendRequest": "1.5s"}},
        {"matches": [{"path": {"value": "/c"}}], "timeouts": {"request": "1s", "backendRequest": "2s"}},
        {"matches": [{"path": {"value": "/d"}}], "timeouts": {"request": "2s", "backendRequest": "1s"}},
    ]));
    assert_eq!(reasons(&problems), ["invalid_timeout"; 3]);
    assert!(problems[2].detail.contains("longer than"), "{problems:?}");
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].request_timeout, Some(Limit::After(ms(2000))));
    assert_eq!(p.rules[0].backend_timeout, Some(Limit::After(ms(1000))));
}

/// The Service: retries of 5xx, 3 times, 100 ms per try; 5 s per request.
fn service() -> ProfilePolicy {
    ProfilePolicy {
        retry: Some(RetryPolicy {
            statuses: vec![500..=599],
            limit: 3,
            per_try_timeout: Some(ms(100)),
        }),
        request_timeout: Some(ms(5000)),
    }
}

#[test]
fn timeouts_rule_then_route_annotation_then_service() {
    let rules = json!([
        {"matches": [{"path": {"type": "Exact", "value": "/rule"}}], "timeouts": {"request": "200ms", "backendRequest": "50ms"}},
        {"matches": [{"path": {"type": "Exact", "value": "/off"}}], "timeouts": {"request": "0s", "backendRequest": "0s"}},
        {"matches": [{"path": {"type": "Exact", "value": "/annotated"}}]},
    ]);
    let rules = rules.as_array().unwrap().clone();
    let bare = RouteProfile::from_k8s(&key(), &BTreeMap::new(), Some(&rules)).0.routes(&service());
    let with = annotations(&[(REQUEST_TIMEOUT_ANNOTATION, "750ms")]);
    let (annotated, problems) = RouteProfile::from_k8s(&key(), &with, Some(&rules));
    assert!(problems.is_empty());
    let annotated = annotated.routes(&service());
    for routes in [&bare, &annotated] {
        // The rule's own timeouts win; 0s turns them off.
        assert_eq!(routes[0].timeout, secs(ms(200)));
        assert_eq!(label(&routes[0], RETRY_TIMEOUT_LABEL), Some("50"));
        assert_eq!(routes[1].timeout, None);
        assert_eq!(label(&routes[1], RETRY_TIMEOUT_LABEL), None);
    }
    // Else the route's annotation, else the Service's; the per-try timeout of its retries.
    assert_eq!(annotated[2].timeout, secs(ms(750)));
    assert_eq!(bare[2].timeout, secs(ms(5000)));
    assert_eq!(label(&bare[2], RETRY_TIMEOUT_LABEL), Some("100"));
    // The Service's retries apply to every route that says nothing of its own.
    for r in &bare {
        assert!(r.is_retryable);
        assert_eq!(label(r, RETRY_LIMIT_LABEL), Some("3"));
        assert_eq!(r.response_classes.len(), 1);
    }
}

#[test]
fn route_retry_annotations_replace_the_services_as_a_whole() {
    let rules = [json!({"matches": [{"path": {"value": "/a"}}]})];
    let convert =
        |pairs: &[(&str, &str)]| RouteProfile::from_k8s(&key(), &annotations(pairs), Some(&rules));
    let (p, problems) =
        convert(&[(RETRY_HTTP_ANNOTATION, "gateway-error"), (RETRY_LIMIT_ANNOTATION, "1")]);
    assert!(problems.is_empty());
    let r = &p.routes(&service())[0];
    assert!(r.is_retryable);
    assert_eq!(label(r, RETRY_LIMIT_LABEL), Some("1"));
    // Not the Service's per-try timeout: the route's retry policy has none.
    assert_eq!(label(r, RETRY_TIMEOUT_LABEL), None);
    let class = r.response_classes[0].condition.as_ref().and_then(|c| c.r#match.as_ref());
    assert_eq!(
        class,
        Some(&pb::response_match::Match::Status(pb::HttpStatusRange { min: 502, max: 504 }))
    );
    // A limit alone on the route is a retry policy of its own, without retryable statuses:
    // no retries there, as in Linkerd.
    let (p, _) = convert(&[(RETRY_LIMIT_ANNOTATION, "4")]);
    let r = &p.routes(&service())[0];
    assert!(!r.is_retryable && r.response_classes.is_empty());
    assert_eq!(r.timeout, secs(ms(5000)), "the Service's timeout still applies");
    // Invalid values are counted and ignored, as on a Service: nothing valid, nothing replaced.
    let (p, problems) = convert(&[
        (RETRY_HTTP_ANNOTATION, "teapot"),
        (RETRY_TIMEOUT_ANNOTATION, "soon"),
        (REQUEST_TIMEOUT_ANNOTATION, "-1s"),
    ]);
    assert_eq!(reasons(&problems), ["invalid_annotation"; 3]);
    assert_eq!((p.retry.clone(), p.request_timeout), (None, None));
    let r = &p.routes(&service())[0];
    assert!(r.is_retryable);
    assert_eq!(label(r, RETRY_LIMIT_LABEL), Some("3"));
    assert_eq!(r.timeout, secs(ms(5000)));
    // A Service without a policy, a route without annotations: plain routes.
    let (p, _) = convert(&[]);
    let r = &p.routes(&ProfilePolicy::default())[0];
    assert_eq!(
        r.metrics_labels,
        HashMap::from([(ROUTE_LABEL.to_string(), "web-routes".to_string())])
    );
}

#[test]
fn no_rules_is_one_catch_all_and_routes_are_bounded() {
    let (p, problems) = RouteProfile::from_k8s(&key(), &BTreeMap::new(), None);
    assert!(problems.is_empty());
    assert_eq!(p.rules, [RuleRoute::catch_all()]);

    let many: Vec<Value> = (0..MAX_ROUTES + 5)
        .map(|i| json!({"matches": [{"path": {"type": "Exact", "value": format!("/p{i}")}}]}))
        .collect();
    let (p, problems) = RouteProfile::from_k8s(&key(), &BTreeMap::new(), Some(&many));
    assert_eq!(p.rules.len(), MAX_ROUTES);
    assert_eq!(reasons(&problems), ["too_many_routes"]);
    assert_eq!(p.rules[0].path, PathMatch::Exact("/p0".into()));
}

#[test]
fn the_profile_has_the_routes_then_the_services_catch_all() {
    let rules = [json!({"matches": [{"path": {"value": "/a"}}], "timeouts": {"request": "1s"}})];
    let (p, _) = RouteProfile::from_k8s(&key(), &BTreeMap::new(), Some(&rules));
    let profile =
        crate::profile::build("web.prod.svc.cluster.local", &service(), Some(&p), false, &[], None);
    let conds: Vec<_> = profile.routes.iter().map(|r| condition(r).0).collect();
    assert_eq!(conds, ["/a(?:/.*)?", ".*"]);
    assert_eq!(label(&profile.routes[1], ROUTE_LABEL), None);
    assert_eq!(profile.routes[1].timeout, secs(ms(5000)));
}
