//! The Gateway API's routes in the index: HTTPRoutes with Server parents as inbound HTTP
//! routes beside `policy.weft.dev`'s, and GRPCRoutes as a gRPC Server's routes, each with
//! the authorizations that target it (by group and kind) and its Server's.

use linkerd2_proxy_api::{grpc_route::GrpcRpcMatch, inbound as pb};

use super::*;
use crate::policy::route::{GrpcRoute, HttpRoute};

const GATEWAY: &str = "gateway.networking.k8s.io";

fn gateway_route(name: &str, created: &str, spec: Value) -> HttpRoute {
    let created = serde_json::from_value(json!(created)).unwrap();
    HttpRoute::parse_gateway(key(name), Some(created), &spec).unwrap()
}

fn grpc_route(name: &str, created: &str, spec: Value) -> GrpcRoute {
    let created = serde_json::from_value(json!(created)).unwrap();
    GrpcRoute::parse(key(name), Some(created), &spec).unwrap()
}

fn to(group: &str, kind: &str, name: &str) -> Value {
    json!({"group": group, "kind": kind, "name": name})
}

/// (group/kind/name or default:name, authorization names) of a message's routes.
fn route_names<'a>(
    metas: impl Iterator<Item = (&'a Option<linkerd2_proxy_api::meta::Metadata>, &'a [pb::Authz])>,
) -> Vec<(String, Vec<String>)> {
    metas
        .map(|(m, authz)| {
            let name = match m.as_ref().and_then(|m| m.kind.as_ref()) {
                Some(metadata::Kind::Default(n)) => format!("default:{n}"),
                Some(metadata::Kind::Resource(r)) => format!("{}/{}/{}", r.group, r.kind, r.name),
                None => panic!("a route without metadata"),
            };
            (name, authz.iter().map(|a| authz_name(a).1).collect())
        })
        .collect()
}

fn http(s: &pb::Server) -> Vec<(String, Vec<String>)> {
    let Some(Kind::Http1(h)) = s.protocol.as_ref().and_then(|p| p.kind.as_ref()) else {
        panic!("not HTTP/1: {s:?}")
    };
    route_names(h.routes.iter().map(|r| (&r.metadata, r.authorizations.as_slice())))
}

fn grpc(s: &pb::Server) -> &[pb::GrpcRoute] {
    let Some(Kind::Grpc(g)) = s.protocol.as_ref().and_then(|p| p.kind.as_ref()) else {
        panic!("not gRPC: {s:?}")
    };
    &g.routes
}

fn grpc_names(s: &pb::Server) -> Vec<(String, Vec<String>)> {
    route_names(grpc(s).iter().map(|r| (&r.metadata, r.authorizations.as_slice())))
}

fn named(v: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    v.iter().map(|(n, a)| (n.to_string(), s(a))).collect()
}

#[test]
fn gateway_http_routes_with_server_parents_are_inbound_routes() {
    let (mut idx, _) = index(DefaultPolicy::AllUnauthenticated);
    idx.apply_pod(&web());
    idx.apply(server("web-http", json!(8080), "HTTP/1"));
    idx.apply(policy("everyone", to_server("web-http"), json!([])));
    // Mixed parents: the Service is for splits, the Server for policy.
    let mixed = gateway_route(
        "web-api",
        "2025-01-04T00:00:00Z",
        json!({
            "parentRefs": [
                {"group": "core", "kind": "Service", "name": "web", "port": 80},
                {"group": "policy.weft.dev", "kind": "Server", "name": "web-http"}
            ],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}]}]
        }),
    );
    assert_eq!(mixed.servers, ["web-http".to_string()].into());
    idx.apply_gateway_route(&key("web-api"), Some(mixed));
    // A policy.weft.dev route of the same name is another route.
    idx.apply(obj(
        PolicyKind::HttpRoute,
        "web-api",
        "2025-01-03T00:00:00Z",
        json!({"parentRefs": [to_server("web-http")],
               "rules": [{"matches": [{"path": {"type": "Exact", "value": "/metrics"}}]}]}),
    ));
    idx.apply(policy("gw-only", to(GATEWAY, "HTTPRoute", "web-api"), json!([])));
    let s = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(
        http(&s),
        named(&[
            ("policy.weft.dev/HTTPRoute/web-api", &["everyone"]),
            ("gateway.networking.k8s.io/HTTPRoute/web-api", &["gw-only", "everyone"]),
            ("default:probe", &["probe"]),
        ])
    );

    // A route with Service parents only is not the index's: it attaches to nothing.
    let split_only = gateway_route(
        "web-split",
        "2025-01-01T00:00:00Z",
        json!({"parentRefs": [{"group": "core", "kind": "Service", "name": "web", "port": 80}]}),
    );
    idx.apply_gateway_route(&key("web-split"), Some(split_only));
    assert_eq!(idx.get(&key("web-1"), 8080).unwrap(), s);

    // An unusable one still claims the Server: alone, its requests get 404.
    idx.delete(PolicyKind::HttpRoute, &key("web-api"));
    let filtered = gateway_route(
        "web-api",
        "2025-01-04T00:00:00Z",
        json!({"parentRefs": [to_server("web-http")],
               "rules": [{"filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "x"}}]}]}),
    );
    assert!(filtered.unusable.is_some());
    idx.apply_gateway_route(&key("web-api"), Some(filtered));
    let s = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(
        http(&s),
        named(&[
            ("gateway.networking.k8s.io/HTTPRoute/web-api", &[]),
            ("default:probe", &["probe"])
        ])
    );
    // Gone (deleted, or its Server parent dropped): the default route is back.
    idx.apply_gateway_route(&key("web-api"), None);
    let s = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(http(&s)[0], ("default:default".to_string(), s_(&["everyone"])));
    idx.reset_gateway_routes(Vec::new());
}

fn s_(v: &[&str]) -> Vec<String> {
    s(v)
}

fn echo_route() -> GrpcRoute {
    grpc_route(
        "web-echo",
        "2025-01-04T00:00:00Z",
        json!({
            "parentRefs": [to_server("web-grpc")],
            "rules": [{"matches": [
                {"method": {"type": "Exact", "service": "weft.test.Echo", "method": "Say"},
                 "headers": [{"name": "x-tenant", "value": "a"}]},
                {"method": {"service": "grpc.health.v1.Health"}}
            ]}]
        }),
    )
}

#[test]
fn grpc_routes_are_a_grpc_servers_routes() {
    let (mut idx, _) = index(DefaultPolicy::AllUnauthenticated);
    idx.apply_pod(&web());
    idx.apply(server("web-grpc", json!(8080), "gRPC"));
    idx.apply(policy("everyone", to_server("web-grpc"), json!([])));
    let before = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(grpc_names(&before), named(&[("default:default", &["everyone"])]));

    idx.apply_grpc_route(&key("web-echo"), Some(echo_route()));
    idx.apply(policy("echoers", to(GATEWAY, "GRPCRoute", "web-echo"), json!([])));
    // A policy for an HTTPRoute of that name is not one for the GRPCRoute.
    idx.apply(policy("not-this", to(GATEWAY, "HTTPRoute", "web-echo"), json!([])));
    let s = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(
        grpc_names(&s),
        named(&[("gateway.networking.k8s.io/GRPCRoute/web-echo", &["echoers", "everyone"])])
    );
    // Route-scoped policies are not the Server's.
    assert_eq!(names(&s), [("authorizationpolicy".to_string(), "everyone".to_string())]);
    let rule = &grpc(&s)[0].rules[0];
    assert_eq!(
        rule.matches[0].rpc,
        Some(GrpcRpcMatch { service: "weft.test.Echo".into(), method: "Say".into() })
    );
    assert_eq!(rule.matches[0].headers[0].name, "x-tenant");
    assert_eq!(
        rule.matches[1].rpc,
        Some(GrpcRpcMatch { service: "grpc.health.v1.Health".into(), method: String::new() })
    );
    assert!(rule.filters.is_empty());

    // HTTPRoutes are not a gRPC Server's; GRPCRoutes are not an HTTP Server's.
    idx.apply(obj(
        PolicyKind::HttpRoute,
        "web-http-route",
        "2025-01-01T00:00:00Z",
        json!({"parentRefs": [to_server("web-grpc")]}),
    ));
    assert_eq!(idx.get(&key("web-1"), 8080).unwrap(), s);
    idx.apply(server("web-grpc", json!(8080), "HTTP/1"));
    let http_server = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(http(&http_server)[0].0, "policy.weft.dev/HTTPRoute/web-http-route");
    idx.apply(server("web-grpc", json!(8080), "gRPC"));

    // An unsupported route (a regex method) still claims the Server: alone, it matches
    // nothing, so calls are refused rather than let through by the default route.
    let regex = grpc_route(
        "web-echo",
        "2025-01-04T00:00:00Z",
        json!({"parentRefs": [to_server("web-grpc")],
               "rules": [{"matches": [{"method": {"type": "RegularExpression", "method": "S.*"}}]}]}),
    );
    assert_eq!(regex.unusable.as_ref().map(|u| u.reason), Some("unsupported_match"));
    idx.apply_grpc_route(&key("web-echo"), Some(regex));
    let s = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(grpc_names(&s), named(&[("gateway.networking.k8s.io/GRPCRoute/web-echo", &[])]));
    assert!(grpc(&s)[0].rules.is_empty());

    // Followers see the route go; a reset (the CRD went) brings the default route back.
    let mut rx = idx.watch(&key("web-1"), 8080).unwrap();
    idx.apply_grpc_route(&key("web-echo"), Some(echo_route()));
    assert!(rx.has_changed().unwrap());
    rx.borrow_and_update();
    idx.reset_grpc_routes(Vec::new());
    assert!(rx.has_changed().unwrap());
    assert_eq!(grpc_names(&rx.borrow()), named(&[("default:default", &["everyone"])]));
}

#[test]
fn authorization_policies_name_the_route_group_and_kind() {
    let target = |t: Value| match policy("p", t, json!([])) {
        PolicyObject::AuthorizationPolicy(p) => p.target,
        other => panic!("{other:?}"),
    };
    let route =
        |group, kind, name: &str| AuthzTarget::Route(RouteRef { group, kind, name: name.into() });
    assert_eq!(
        target(to("policy.weft.dev", "HTTPRoute", "a")),
        route("policy.weft.dev", "HTTPRoute", "a")
    );
    assert_eq!(target(to(GATEWAY, "HTTPRoute", "a")), route(GATEWAY, "HTTPRoute", "a"));
    assert_eq!(target(to(GATEWAY, "GRPCRoute", "a")), route(GATEWAY, "GRPCRoute", "a"));
    let meta = serde_json::from_value(json!({"name": "p", "namespace": "prod"})).unwrap();
    let e = PolicyObject::parse(
        PolicyKind::AuthorizationPolicy,
        &meta,
        &json!({"targetRef": to("policy.weft.dev", "GRPCRoute", "a")}),
    );
    assert!(e.unwrap_err().detail.contains("not supported"));
}
