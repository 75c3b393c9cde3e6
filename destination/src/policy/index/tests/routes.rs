//! HTTPRoutes in the index: they replace their Servers' default route, carry the
//! authorizations that target them plus their Server's, and reach only the ports they touch.

use linkerd2_proxy_api::http_route::path_match;

use super::*;

fn route(name: &str, created: &str, spec: Value) -> PolicyObject {
    obj(PolicyKind::HttpRoute, name, created, spec)
}

fn metrics_route() -> PolicyObject {
    route(
        "web-metrics",
        "2025-01-03T00:00:00Z",
        json!({
            "parentRefs": [{"group": "policy.weft.dev", "kind": "Server", "name": "web-http"}],
            "hostnames": ["web.prod.svc.cluster.local"],
            "rules": [{"matches": [{"path": {"type": "Exact", "value": "/metrics"}, "method": "GET"}]}]
        }),
    )
}

fn api_route() -> PolicyObject {
    route(
        "web-api",
        "2025-01-04T00:00:00Z",
        json!({
            "parentRefs": [{"group": "policy.weft.dev", "kind": "Server", "name": "web-http"}],
            "rules": [{"matches": [
                {"path": {"type": "PathPrefix", "value": "/api"},
                 "headers": [{"name": "x-tenant", "value": "a"}],
                 "queryParams": [{"type": "RegularExpression", "name": "v", "value": "[0-9]+"}]}
            ]}]
        }),
    )
}

fn to_route(name: &str) -> Value {
    json!({"group": "policy.weft.dev", "kind": "HTTPRoute", "name": name})
}

/// The HTTP routes of a message: (name, authorization names).
fn routes(s: &pb::Server) -> Vec<(String, Vec<String>)> {
    let routes = match s.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Detect(d)) => &d.http_routes,
        Some(Kind::Http1(h)) => &h.routes,
        Some(Kind::Http2(h)) => &h.routes,
        other => panic!("not HTTP: {other:?}"),
    };
    routes
        .iter()
        .map(|r| {
            let name = match r.metadata.as_ref().and_then(|m| m.kind.as_ref()) {
                Some(metadata::Kind::Default(n)) => format!("default:{n}"),
                Some(metadata::Kind::Resource(res)) => {
                    assert_eq!(
                        (res.group.as_str(), res.kind.as_str()),
                        ("policy.weft.dev", "HTTPRoute")
                    );
                    res.name.clone()
                }
                None => panic!("a route without metadata"),
            };
            (name, r.authorizations.iter().map(|a| authz_name(a).1).collect())
        })
        .collect()
}

fn named(v: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    v.iter().map(|(n, a)| (n.to_string(), s(a))).collect()
}

#[test]
fn routes_replace_the_default_route_and_carry_their_own_authorizations() {
    let (mut idx, _) = index(DefaultPolicy::AllUnauthenticated);
    idx.apply_pod(&web());
    idx.apply(server("web-http", json!("http"), "HTTP/1"));
    idx.apply(policy("everyone", to_server("web-http"), json!([])));
    let before = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(
        routes(&before),
        named(&[("default:default", &["everyone"]), ("default:probe", &["probe"])])
    );

    idx.apply(api_route());
    idx.apply(metrics_route());
    idx.apply(policy("prometheus", to_route("web-metrics"), json!([])));
    let s = idx.get(&key("web-1"), 8080).unwrap();
    // Oldest route first; the Server's authorization applies to every route, after the
    // route's own; the kubelet's probes keep their route.
    assert_eq!(
        routes(&s),
        named(&[
            ("web-metrics", &["prometheus", "everyone"]),
            ("web-api", &["everyone"]),
            ("default:probe", &["probe"]),
        ])
    );
    // A route-scoped policy is not one of the Server's.
    assert_eq!(names(&s), [("authorizationpolicy".to_string(), "everyone".to_string())]);

    // The matches, as the proxy reads them.
    let Some(Kind::Http1(h)) = s.protocol.as_ref().and_then(|p| p.kind.as_ref()) else { panic!() };
    let metrics = &h.routes[0];
    let host = metrics.hosts[0].r#match.as_ref().unwrap();
    assert_eq!(
        *host,
        linkerd2_proxy_api::http_route::host_match::Match::Exact(
            "web.prod.svc.cluster.local".into()
        )
    );
    let m = &metrics.rules[0].matches[0];
    assert_eq!(m.path.as_ref().unwrap().kind, Some(path_match::Kind::Exact("/metrics".into())));
    use linkerd2_proxy_api::http_types::http_method::{Registered, Type};
    let get = Type::Registered(Registered::Get.into());
    assert_eq!(m.method.as_ref().and_then(|m| m.r#type.clone()), Some(get));
    let api = &h.routes[1].rules[0].matches[0];
    assert_eq!(api.path.as_ref().unwrap().kind, Some(path_match::Kind::Prefix("/api".into())));
    assert_eq!(api.headers[0].name, "x-tenant");
    assert_eq!(api.query_params[0].name, "v");
    assert!(h.routes.iter().all(|r| r.rules.iter().all(|r| r.filters.is_empty())));

    // A route of another Server, or of a Server of the same name in another namespace,
    // changes nothing here.
    let mut other = route(
        "other",
        "2025-01-01T00:00:00Z",
        json!({"parentRefs": [{"group": "policy.weft.dev", "kind": "Server", "name": "web-admin"}]}),
    );
    idx.apply(other.clone());
    if let PolicyObject::HttpRoute(r) = &mut other {
        r.key = ObjKey::new("other", "other");
        r.servers = ["web-http".to_string()].into();
    }
    idx.apply(other);
    assert_eq!(idx.get(&key("web-1"), 8080).unwrap(), s);
    // The default policy of ports no Server selects has no routes to replace.
    assert_eq!(
        routes(&idx.get(&key("web-1"), 9090).unwrap()),
        named(&[("default:default", &["all-unauthenticated"])])
    );

    // The routes go: the default route is back.
    idx.delete(PolicyKind::HttpRoute, &key("web-metrics"));
    idx.delete(PolicyKind::HttpRoute, &key("web-api"));
    assert_eq!(idx.get(&key("web-1"), 8080).unwrap(), before);
}

#[test]
fn routes_that_cannot_be_served_keep_the_default_route_away() {
    let (mut idx, _) = index(DefaultPolicy::AllUnauthenticated);
    idx.apply_pod(&web());
    idx.apply(server("web-http", json!(8080), "HTTP/1"));
    idx.apply(policy("everyone", to_server("web-http"), json!([])));
    let meta = serde_json::from_value(json!({"name": "filtered", "namespace": "prod"})).unwrap();
    let spec = json!({
        "parentRefs": [{"group": "policy.weft.dev", "kind": "Server", "name": "web-http"}],
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
            "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "audit", "port": 80}}}]
        }]
    });
    let (filtered, problems) = PolicyObject::convert(PolicyKind::HttpRoute, &meta, &spec).unwrap();
    assert_eq!(problems.len(), 1);
    assert_eq!((problems[0].kind, problems[0].reason), ("httproute", "unsupported_filter"));
    assert!(
        PolicyObject::parse(PolicyKind::HttpRoute, &meta, &spec).is_err(),
        "strict parsing refuses it"
    );
    idx.apply(filtered);
    // Alone: a route that matches nothing stands for it (an empty list would mean the
    // default route), and the probes keep theirs.
    let s = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(routes(&s), named(&[("filtered", &[]), ("default:probe", &["probe"])]));
    let Some(Kind::Http1(h)) = s.protocol.as_ref().and_then(|p| p.kind.as_ref()) else { panic!() };
    assert!(h.routes[0].rules.is_empty());
    // With a usable route: that one only.
    idx.apply(metrics_route());
    assert_eq!(
        routes(&idx.get(&key("web-1"), 8080).unwrap()),
        named(&[("web-metrics", &["everyone"]), ("default:probe", &["probe"])])
    );
}

#[test]
fn grpc_and_opaque_servers_keep_their_protocol_s_routes() {
    let (mut idx, _) = index(DefaultPolicy::AllUnauthenticated);
    idx.apply_pod(&web());
    idx.apply(server("web-http", json!(8080), "gRPC"));
    idx.apply(policy("everyone", to_server("web-http"), json!([])));
    let before = idx.get(&key("web-1"), 8080).unwrap();
    idx.apply(metrics_route());
    // Linkerd gives gRPC servers GRPCRoutes, not HTTPRoutes: the default gRPC route stays.
    let s = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(s, before);
    let Some(Kind::Grpc(g)) = s.protocol.as_ref().and_then(|p| p.kind.as_ref()) else {
        panic!("{s:?}")
    };
    assert_eq!(g.routes.len(), 1);
    assert_eq!(names(&s), [("authorizationpolicy".to_string(), "everyone".to_string())]);
    idx.apply(server("web-http", json!(8080), "opaque"));
    assert_eq!(protocol(&idx.get(&key("web-1"), 8080).unwrap()), "opaque");
}

#[test]
fn route_changes_reach_only_the_ports_they_touch() {
    let (mut idx, _) = index(DefaultPolicy::AllUnauthenticated);
    idx.apply_pod(&web());
    idx.apply_pod(&pod("db-1", json!({"app": "db"}), json!({})));
    idx.apply(server("web-http", json!(8080), "HTTP/1"));
    let mut web = idx.watch(&key("web-1"), 8080).unwrap();
    let mut web_metrics = idx.watch(&key("web-1"), 9090).unwrap();
    let mut db = idx.watch(&key("db-1"), 8080).unwrap();
    web.borrow_and_update();
    let untouched = |rxs: &mut [&mut watch::Receiver<Arc<pb::Server>>]| {
        rxs.iter_mut().all(|rx| !rx.has_changed().unwrap())
    };

    idx.apply(metrics_route());
    assert!(web.has_changed().unwrap());
    assert_eq!(routes(&web.borrow_and_update())[0].0, "web-metrics");
    assert!(untouched(&mut [&mut web_metrics, &mut db]));
    // Its policy arrives, then changes, then goes.
    idx.apply(policy("prometheus", to_route("web-metrics"), json!([])));
    assert_eq!(routes(&web.borrow_and_update())[0].1, s(&["prometheus"]));
    let net = obj(
        PolicyKind::Network,
        "office",
        "2025-01-02T00:00:00Z",
        json!({"networks": [{"cidr": "192.168.0.0/16"}]}),
    );
    idx.apply(net);
    idx.apply(policy(
        "prometheus",
        to_route("web-metrics"),
        json!([{"group": "policy.weft.dev", "kind": "NetworkAuthentication", "name": "office"}]),
    ));
    assert!(web.has_changed().unwrap());
    let msg = web.borrow_and_update().clone();
    let Some(Kind::Http1(h)) = msg.protocol.as_ref().and_then(|p| p.kind.as_ref()) else {
        panic!()
    };
    assert_eq!(nets(&h.routes[0].authorizations[0]), ["192.168.0.0/16"]);
    // The same route again, or a route-scoped policy for another route: nothing to send.
    idx.apply(metrics_route());
    idx.apply(policy("api-users", to_route("web-api"), json!([])));
    assert!(untouched(&mut [&mut web, &mut web_metrics, &mut db]));
    // The route changes: a new path.
    let mut changed = metrics_route();
    if let PolicyObject::HttpRoute(r) = &mut changed {
        r.rules[0].matches[0].path = Some(crate::policy::route::PathMatch::Exact("/stats".into()));
    }
    idx.apply(changed);
    assert!(web.has_changed().unwrap());
    web.borrow_and_update();
    idx.delete(PolicyKind::AuthorizationPolicy, &key("prometheus"));
    assert_eq!(routes(&web.borrow_and_update())[0].1, Vec::<String>::new());
    // A relist without the route: the default route again.
    idx.reset(PolicyKind::HttpRoute, vec![]);
    assert_eq!(routes(&web.borrow_and_update())[0].0, "default:default");
    assert!(untouched(&mut [&mut web_metrics, &mut db]));
}
