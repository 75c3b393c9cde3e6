//! HTTPLocalRateLimitPolicies in the index: on which answers the limit goes, one per
//! Server, and which followers hear of a change.

use linkerd2_proxy_api::inbound::HttpLocalRateLimit;

use super::*;

fn rate_limit(name: &str, created: &str, server: &str, spec: Value) -> PolicyObject {
    let mut spec = spec;
    spec["targetRef"] = to_server(server);
    obj(PolicyKind::RateLimit, name, created, spec)
}

fn total(name: &str, created: &str, server: &str, rps: u32) -> PolicyObject {
    rate_limit(name, created, server, json!({"total": {"requestsPerSecond": rps}}))
}

fn limit_of(s: &pb::Server) -> Option<&HttpLocalRateLimit> {
    match s.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Detect(d)) => d.http_local_rate_limit.as_ref(),
        Some(Kind::Http1(h)) => h.local_rate_limit.as_ref(),
        Some(Kind::Http2(h)) => h.local_rate_limit.as_ref(),
        _ => None,
    }
}

/// (name, total rps) of the port's limit.
fn limit(idx: &PolicyIndex, port: u16) -> Option<(String, Option<u32>)> {
    let s = idx.get(&key("web-1"), port).unwrap();
    let l = limit_of(&s)?;
    let name = match l.metadata.as_ref().and_then(|m| m.kind.as_ref()) {
        Some(metadata::Kind::Resource(r)) => {
            assert_eq!((r.group.as_str(), r.kind.as_str()), (GROUP, "HTTPLocalRateLimitPolicy"));
            r.name.clone()
        }
        other => panic!("not a resource: {other:?}"),
    };
    Some((name, l.total.map(|t| t.requests_per_second)))
}

fn conflicts(idx: &PolicyIndex) -> u64 {
    let labels = SkipLabels { kind: "httplocalratelimitpolicy", reason: "conflict" };
    idx.skipped.get_or_create(&labels).get()
}

#[test]
fn a_policy_limits_its_servers_http_answers() {
    let (mut idx, _) = index(DefaultPolicy::AllUnauthenticated);
    idx.apply_pod(&web());
    idx.apply(server("web-http", json!("http"), "HTTP/1"));
    idx.apply(rate_limit(
        "web-rl",
        "2025-01-03T00:00:00Z",
        "web-http",
        json!({
            "total": {"requestsPerSecond": 100},
            "identity": {"requestsPerSecond": 20},
            "overrides": [
                {"requestsPerSecond": 50, "clientRefs": [
                    {"kind": "ServiceAccount", "name": "web"},
                    {"kind": "ServiceAccount", "namespace": "ops", "name": "backup"}
                ]},
                {"requestsPerSecond": 0, "clientRefs": [{"kind": "ServiceAccount", "name": "abuser"}]}
            ]
        }),
    ));
    let s = idx.get(&key("web-1"), 8080).unwrap();
    let l = limit_of(&s).expect("the limit on HTTP/1");
    assert_eq!(l.total.map(|t| t.requests_per_second), Some(100));
    assert_eq!(l.identity.map(|t| t.requests_per_second), Some(20));
    let overrides: Vec<(u32, Vec<&str>)> = l
        .overrides
        .iter()
        .map(|o| {
            let ids = o.clients.iter().flat_map(|c| &c.identities).map(|i| i.name.as_str());
            (o.limit.unwrap().requests_per_second, ids.collect())
        })
        .collect();
    // Named as the MeshTLSAuthentication's service accounts are (the same code).
    assert_eq!(
        overrides,
        [
            (50, vec![WEB_ID, "backup.ops.serviceaccount.identity.weft.cluster.local"]),
            (0, vec!["abuser.prod.serviceaccount.identity.weft.cluster.local"]),
        ]
    );
    assert_eq!(WEB_ID, idx.ids.identity("prod", "web"));
    // The Server's routes and authorizations are what they were without it.
    assert_eq!(label(&s, "name"), "web-http");
    assert_eq!(http_routes(&s).len(), 2, "{s:#?}");

    // Detected HTTP and HTTP/2 carry it too.
    for protocol in ["unknown", "HTTP/2"] {
        idx.apply(server("web-http", json!("http"), protocol));
        assert_eq!(limit(&idx, 8080), Some(("web-rl".into(), Some(100))), "{protocol}");
    }
    // gRPC, opaque and TLS servers have no place for it in the API.
    for protocol in ["gRPC", "opaque", "TLS"] {
        idx.apply(server("web-http", json!("http"), protocol));
        let s = idx.get(&key("web-1"), 8080).unwrap();
        assert_eq!(protocol_name(&s), protocol_for(protocol));
        assert_eq!(limit(&idx, 8080), None, "{protocol}");
    }
    // Another port (no Server: the default policy) and another Server are not limited.
    idx.apply(server("web-http", json!("http"), "HTTP/1"));
    assert_eq!(limit(&idx, 9090), None);
    idx.apply(server("web-metrics", json!(9090), "HTTP/1"));
    assert_eq!(limit(&idx, 9090), None);
    // A policy in another namespace naming the same Server does not reach it.
    let meta = serde_json::from_value(json!({"name": "rl", "namespace": "other"})).unwrap();
    let spec = json!({"targetRef": to_server("web-metrics"), "total": {"requestsPerSecond": 1}});
    idx.apply(PolicyObject::parse(PolicyKind::RateLimit, &meta, &spec).unwrap());
    assert_eq!(limit(&idx, 9090), None);
}

fn protocol_name(s: &pb::Server) -> &'static str {
    protocol(s)
}

fn protocol_for(p: &str) -> &'static str {
    match p {
        "gRPC" => "grpc",
        "opaque" => "opaque",
        _ => "tls",
    }
}

#[test]
fn the_oldest_policy_limits_a_server_and_the_others_are_counted_once() {
    let (mut idx, _) = index(DefaultPolicy::AllUnauthenticated);
    idx.apply_pod(&web());
    idx.apply(server("web-http", json!(8080), "HTTP/1"));
    idx.apply(total("newer", "2025-01-05T00:00:00Z", "web-http", 5));
    assert_eq!(limit(&idx, 8080), Some(("newer".into(), Some(5))));
    assert_eq!(conflicts(&idx), 0);
    idx.apply(total("older", "2025-01-04T00:00:00Z", "web-http", 7));
    assert_eq!(limit(&idx, 8080), Some(("older".into(), Some(7))));
    assert_eq!(conflicts(&idx), 1);
    // Equal ages: the name decides.
    idx.apply(total("a-same-age", "2025-01-04T00:00:00Z", "web-http", 9));
    assert_eq!(limit(&idx, 8080), Some(("a-same-age".into(), Some(9))));
    // `older` is skipped now; `newer` still is (and was counted).
    assert_eq!(conflicts(&idx), 2);
    // A skipped policy that changes is not counted again; a relist with the same objects
    // neither.
    idx.apply(total("newer", "2025-01-05T00:00:00Z", "web-http", 6));
    idx.reset(
        PolicyKind::RateLimit,
        vec![
            total("newer", "2025-01-05T00:00:00Z", "web-http", 6),
            total("older", "2025-01-04T00:00:00Z", "web-http", 7),
            total("a-same-age", "2025-01-04T00:00:00Z", "web-http", 9),
        ],
    );
    assert_eq!(conflicts(&idx), 2);
    // The one that applies goes: the next oldest applies.
    idx.delete(PolicyKind::RateLimit, &key("a-same-age"));
    assert_eq!(limit(&idx, 8080), Some(("older".into(), Some(7))));
    idx.delete(PolicyKind::RateLimit, &key("older"));
    assert_eq!(limit(&idx, 8080), Some(("newer".into(), Some(6))));
    assert_eq!(conflicts(&idx), 2);
    // Policies of other Servers do not conflict.
    idx.apply(total("metrics-rl", "2025-01-01T00:00:00Z", "web-metrics", 1));
    assert_eq!(conflicts(&idx), 2);
}

#[test]
fn invalid_policies_are_refused_with_a_reason() {
    let meta = serde_json::from_value(json!({"name": "bad", "namespace": "prod"})).unwrap();
    for spec in [
        json!({"targetRef": to_server("web-http"), "total": {"requestsPerSecond": 5}, "identity": {"requestsPerSecond": 6}}),
        json!({"targetRef": to_server("web-http"), "overrides": [{"requestsPerSecond": 1, "clientRefs": []}]}),
        json!({"targetRef": {"group": "policy.weft.dev", "kind": "HTTPRoute", "name": "web-metrics"}}),
    ] {
        let problem = PolicyObject::convert(PolicyKind::RateLimit, &meta, &spec).unwrap_err();
        assert_eq!(
            (problem.kind, problem.reason, problem.object.as_str()),
            ("httplocalratelimitpolicy", "invalid_spec", "prod/bad"),
            "{spec}"
        );
    }
}

#[test]
fn followers_of_the_servers_ports_only_hear_of_a_policy() {
    let (mut idx, _) = index(DefaultPolicy::AllUnauthenticated);
    idx.apply_pod(&web());
    idx.apply(server("web-http", json!(8080), "HTTP/1"));
    idx.apply(server("web-metrics", json!(9090), "HTTP/1"));
    let mut http = idx.watch(&key("web-1"), 8080).unwrap();
    let mut metrics = idx.watch(&key("web-1"), 9090).unwrap();
    http.mark_unchanged();
    metrics.mark_unchanged();

    idx.apply(total("web-rl", "2025-01-03T00:00:00Z", "web-http", 5));
    assert!(http.has_changed().unwrap());
    assert_eq!(
        limit_of(&http.borrow_and_update()).and_then(|l| l.total).unwrap().requests_per_second,
        5
    );
    assert!(!metrics.has_changed().unwrap());
    // Changed: sent again. The same again: not.
    idx.apply(total("web-rl", "2025-01-03T00:00:00Z", "web-http", 8));
    assert_eq!(
        limit_of(&http.borrow_and_update()).and_then(|l| l.total).unwrap().requests_per_second,
        8
    );
    idx.apply(total("web-rl", "2025-01-03T00:00:00Z", "web-http", 8));
    assert!(!http.has_changed().unwrap());
    // A skipped (newer) policy changes nothing.
    idx.apply(total("web-rl-2", "2025-01-04T00:00:00Z", "web-http", 1));
    assert!(!http.has_changed().unwrap());
    // Deleted: the limit goes; a relist without any does the same.
    idx.delete(PolicyKind::RateLimit, &key("web-rl"));
    assert!(http.has_changed().unwrap());
    assert_eq!(
        limit_of(&http.borrow_and_update()).and_then(|l| l.total).unwrap().requests_per_second,
        1
    );
    idx.reset(PolicyKind::RateLimit, vec![]);
    assert!(limit_of(&http.borrow_and_update()).is_none());
    assert!(!metrics.has_changed().unwrap());
}
