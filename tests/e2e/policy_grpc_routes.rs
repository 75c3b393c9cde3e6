//! The Gateway API's routes as inbound policy end to end: GRPCRoutes for a gRPC Server and
//! HTTPRoutes with Server parents, from the real `weft destination` against the fake
//! Kubernetes API (recorded objects from fixtures/k8s/), read by a gRPC client as a proxy
//! would, and GRPCRoutes enforced per method by a real proxy in front of a Python grpcio
//! server.

use std::time::Duration;

use linkerd2_proxy_api::{
    grpc_route::GrpcRpcMatch,
    inbound::{
        self as pb, inbound_server_policies_client::InboundServerPoliciesClient,
        proxy_protocol::Kind,
    },
    meta::metadata,
};
use serde_json::{Value, json};

use crate::{
    destination::{self, Destination, WEB, cluster, fixture, metric, rt, skipped},
    http::Py,
    kubeapi::FakeApi,
    policy_api::{NAMESPACES, NETWORKS, POD, PODS, POLICIES, SERVERS, next, policy_proxy},
    policy_routes::{network, policy},
    support::{free_port, run},
};

pub(crate) const GRPC_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/grpcroutes";
const GATEWAY_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const GATEWAY: &str = "gateway.networking.k8s.io";

/// group/kind/name (or `default:name`) of a route's metadata.
fn meta_name(m: Option<&linkerd2_proxy_api::meta::Metadata>) -> String {
    match m.and_then(|m| m.kind.as_ref()) {
        Some(metadata::Kind::Default(n)) => format!("default:{n}"),
        Some(metadata::Kind::Resource(r)) => format!("{}/{}/{}", r.group, r.kind, r.name),
        None => "none".into(),
    }
}

fn authz_names(authz: &[pb::Authz]) -> Vec<String> {
    authz
        .iter()
        .map(|a| match a.metadata.as_ref().and_then(|m| m.kind.as_ref()) {
            Some(metadata::Kind::Resource(r)) => r.name.clone(),
            Some(metadata::Kind::Default(n)) => format!("default:{n}"),
            None => "none".into(),
        })
        .collect()
}

fn grpc_routes(s: &pb::Server) -> &[pb::GrpcRoute] {
    match s.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Grpc(g)) => &g.routes,
        other => panic!("not gRPC: {other:?}"),
    }
}

/// (route, its authorizations) of a gRPC Server's message.
fn grpc_names(s: &pb::Server) -> Vec<(String, Vec<String>)> {
    let routes = grpc_routes(s).iter();
    routes.map(|r| (meta_name(r.metadata.as_ref()), authz_names(&r.authorizations))).collect()
}

fn named(v: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    v.iter().map(|(n, a)| (n.to_string(), a.iter().map(|s| s.to_string()).collect())).collect()
}

pub(crate) fn to_grpc_route(name: &str) -> Value {
    json!({"group": GATEWAY, "kind": "GRPCRoute", "name": name})
}

/// Flagger's recorded canary route, also attached to the Server `web-http`: a split and an
/// inbound route.
fn canary_on_web_http() -> Value {
    let mut canary = fixture("httproute-web-canary.json");
    canary["spec"]["parentRefs"]
        .as_array_mut()
        .expect("parentRefs")
        .push(json!({"group": "policy.weft.dev", "kind": "Server", "name": "web-http"}));
    canary
}

/// The recorded GRPCRoute under another name, newer, with other rules.
pub(crate) fn grpc_route(name: &str, rules: Value) -> Value {
    let mut r = fixture("grpcroute-web-echo.json");
    r["metadata"]["name"] = json!(name);
    r["metadata"]["creationTimestamp"] = json!("2025-05-22T08:40:00Z");
    r["spec"]["rules"] = rules;
    r
}

async fn watch(d: &Destination, port: u32) -> tonic::Streaming<pb::Server> {
    let addr = format!("http://{}", d.grpc);
    let mut client = InboundServerPoliciesClient::connect(addr).await.expect("connect");
    let spec = pb::PortSpec { workload: POD.into(), port };
    let watch = tokio::time::timeout(Duration::from_secs(15), client.watch_port(spec));
    let Ok(watch) = watch.await else { panic!("no answer\n{}", d.logs()) };
    watch.expect("WatchPort").into_inner()
}

#[test]
fn policy_api_sends_gateway_api_routes_to_their_servers() {
    let api = FakeApi::start();
    api.put(NAMESPACES, fixture("namespace-prod.json"));
    api.put(PODS, fixture("pod-web-4xk2p-meshed.json"));
    api.put(SERVERS, fixture("server-web-http.json"));
    api.put(SERVERS, fixture("server-web-grpc.json"));
    api.put(NETWORKS, network("callers", &["10.244.3.7"]));
    api.put(POLICIES, policy("web-echo-from-callers", to_grpc_route("web-echo"), "callers"));
    api.put(GRPC_ROUTES, fixture("grpcroute-web-echo.json"));
    api.put(GATEWAY_ROUTES, canary_on_web_http());
    let d = Destination::kubernetes(&api);

    rt().block_on(async {
        let mut grpc = watch(&d, 9090).await;
        let first = next(&mut grpc, &d).await;
        assert_eq!(first.labels["name"], "web-grpc");
        assert_eq!(
            grpc_names(&first),
            named(&[("gateway.networking.k8s.io/GRPCRoute/web-echo", &["web-echo-from-callers"])]),
            "{first:#?}"
        );
        let m = &grpc_routes(&first)[0].rules[0].matches[0];
        assert_eq!(
            m.rpc,
            Some(GrpcRpcMatch { service: "weft.Test".into(), method: "Echo".into() })
        );
        assert!(first.authorizations.is_empty(), "accessPolicy deny: {first:#?}");

        // An unsupported route (a regex method) changes nothing beside a usable one...
        api.put(
            GRPC_ROUTES,
            grpc_route(
                "web-regex",
                json!([{"matches": [{"method": {"type": "RegularExpression", "service": "weft\\..*"}}]}]),
            ),
        );
        let quiet = tokio::time::timeout(Duration::from_millis(700), grpc.message()).await;
        assert!(quiet.is_err(), "sent again without a change: {quiet:?}");
        // ...and alone still claims the Server: a route that matches no call.
        api.delete(GRPC_ROUTES, "prod", "web-echo");
        let second = next(&mut grpc, &d).await;
        assert_eq!(
            grpc_names(&second),
            named(&[("gateway.networking.k8s.io/GRPCRoute/web-regex", &[])])
        );
        assert!(grpc_routes(&second)[0].rules.is_empty());
        // All gone: the default route is back.
        api.delete(GRPC_ROUTES, "prod", "web-regex");
        let third = next(&mut grpc, &d).await;
        assert_eq!(grpc_names(&third), named(&[("default:default", &[])]));

        // The HTTP Server has the Gateway API HTTPRoute as its route.
        let mut http = watch(&d, 8080).await;
        let s = next(&mut http, &d).await;
        let Some(Kind::Http1(h)) = s.protocol.as_ref().and_then(|p| p.kind.as_ref()) else {
            panic!("not HTTP/1: {s:#?}")
        };
        let names: Vec<_> = h.routes.iter().map(|r| meta_name(r.metadata.as_ref())).collect();
        assert_eq!(names, ["gateway.networking.k8s.io/HTTPRoute/web"], "{s:#?}");
    });
    let m = d.metrics();
    assert_eq!(skipped(&m, "gateway_grpcroute", "unsupported_match"), 1.0, "{m}");
    assert_eq!(skipped(&m, "gateway_httproute", "unsupported_route"), 0.0, "{m}");
}

/// A unary call through the proxy: the status code name (and details).
fn call(proxy: &crate::support::Proxy, method: &str, header: Option<&str>) -> String {
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/py/peers.py"));
    cmd.args(["grpc-call", &proxy.inbound.to_string(), &format!("/weft.Test/{method}")]);
    cmd.args(header);
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "grpc-call: {out}{err}\n{}", proxy.logs());
    out.trim().to_string()
}

/// The Python gRPC app on a free port, and a cluster where it is web's pod with the gRPC
/// Server `web-grpc` (no route yet) on its port, named `grpc`, and the NetworkAuthentications
/// `local` (which admits the test's client, 127.0.0.1) and `elsewhere` (which does not).
pub(crate) fn grpc_app() -> (Py, std::net::SocketAddr, FakeApi) {
    let port = free_port();
    let py = Py::server("grpc-server", port);
    let api = FakeApi::start();
    api.put(NAMESPACES, fixture("namespace-prod.json"));
    let mut pod = fixture("pod-web-4xk2p-meshed.json");
    pod["spec"]["containers"][0]["ports"] =
        json!([{"name": "grpc", "containerPort": port, "protocol": "TCP"}]);
    api.put(PODS, pod);
    let mut server = fixture("server-web-grpc.json");
    server["spec"]["port"] = json!("grpc");
    api.put(SERVERS, server);
    api.put(NETWORKS, network("local", &["127.0.0.1"]));
    api.put(NETWORKS, network("elsewhere", &["127.0.0.9"]));
    (py, ([127, 0, 0, 1], port).into(), api)
}

#[test]
fn the_proxy_enforces_grpc_routes_per_method() {
    let (_app, app, api) = grpc_app();
    api.put(GRPC_ROUTES, fixture("grpcroute-web-echo.json"));
    api.put(
        GRPC_ROUTES,
        grpc_route(
            "web-fail",
            json!([{"matches": [{"method": {"service": "weft.Test", "method": "Fail"}}]}]),
        ),
    );
    api.put(
        GRPC_ROUTES,
        grpc_route(
            "web-fail-tenant",
            json!([{"matches": [{"method": {"service": "weft.Test", "method": "Fail"},
                                 "headers": [{"name": "x-tenant", "value": "a"}]}]}]),
        ),
    );
    api.put(POLICIES, policy("web-echo-from-local", to_grpc_route("web-echo"), "local"));
    api.put(POLICIES, policy("web-fail-from-elsewhere", to_grpc_route("web-fail"), "elsewhere"));
    api.put(
        POLICIES,
        policy("web-fail-tenant-from-local", to_grpc_route("web-fail-tenant"), "local"),
    );
    let d = Destination::kubernetes(&api);
    let proxy = policy_proxy(&d, app, &app.port().to_string(), &[]);

    // Echo: its route admits the client. Fail: its route does not (7), unless the call
    // carries the header of the more specific route, which does (the app's own 14). Chat:
    // no route (12).
    assert_eq!(call(&proxy, "Echo", None), "OK");
    assert!(call(&proxy, "Fail", None).starts_with("PERMISSION_DENIED"));
    assert!(call(&proxy, "Fail", Some("x-tenant=a")).starts_with("UNAVAILABLE failing on purpose"));
    assert!(call(&proxy, "Chat", None).starts_with("UNIMPLEMENTED"));

    let m = proxy.metrics();
    let allowed = [("route_name", "web-echo"), ("authz_name", "web-echo-from-local")];
    assert_eq!(metric(&m, "inbound_http_authz_allow_total", &allowed), 1.0, "{m}");
    let denied = [("route_name", "web-fail")];
    assert_eq!(metric(&m, "inbound_http_authz_deny_total", &denied), 1.0, "{m}");
}

/// A cluster whose Gateway API CRDs predate GRPCRoute (or has none): discovery and policy
/// are served, a gRPC Server keeps its default route, and GRPCRoutes apply once the CRD is
/// installed.
#[test]
fn discovery_and_policy_are_served_without_the_grpcroute_crd() {
    let api = cluster();
    api.set_missing(GRPC_ROUTES, true);
    api.put(SERVERS, fixture("server-web-grpc.json"));
    let d = Destination::kubernetes(&api);
    rt().block_on(async {
        let mut client = d.client().await;
        let mut web = destination::get(&mut client, WEB).await;
        assert!(matches!(
            destination::next(&mut web).await.update,
            Some(linkerd2_proxy_api::destination::update::Update::Add(set)) if set.addrs.len() == 2
        ));

        let mut grpc = watch(&d, 9090).await;
        let first = next(&mut grpc, &d).await;
        assert_eq!(grpc_names(&first), named(&[("default:default", &[])]));

        api.set_missing(GRPC_ROUTES, false);
        api.put(GRPC_ROUTES, fixture("grpcroute-web-echo.json"));
        // The watch retries with backoff (under a few seconds at first).
        let second = tokio::time::timeout(Duration::from_secs(30), grpc.message()).await;
        let second = match second {
            Ok(Ok(Some(s))) => s,
            other => panic!("no update once the CRD came: {other:?}\n{}", d.logs()),
        };
        assert_eq!(
            grpc_names(&second),
            named(&[("gateway.networking.k8s.io/GRPCRoute/web-echo", &[])])
        );
    });
    let logs = d.logs();
    assert_eq!(logs.matches("no Gateway API GRPCRoute CRD").count(), 1, "{logs}");
    assert!(logs.contains("the Gateway API GRPCRoute CRD is installed now"), "{logs}");
    let m = d.metrics();
    let errors = metric(&m, "destination_watch_errors_total", &[("kind", "gateway_grpcroute")]);
    assert!(errors >= 1.0, "{m}");
}

/// Gateway API HTTPRoutes may restrict a Server's routes, so policy waits for their first
/// list even though discovery does not: a list that fails for another reason than a missing
/// CRD (here, no RBAC for them) must not have policy answer with the default route.
#[test]
fn policy_waits_for_gateway_httproutes_that_cannot_be_listed() {
    let api = cluster();
    api.put(SERVERS, fixture("server-web-http.json"));
    api.put(GATEWAY_ROUTES, canary_on_web_http());
    api.set_forbidden(GATEWAY_ROUTES, true);
    let d = Destination::kubernetes(&api);
    rt().block_on(async {
        // Discovery is served...
        let mut client = d.client().await;
        let mut web = destination::get(&mut client, WEB).await;
        assert!(matches!(
            destination::next(&mut web).await.update,
            Some(linkerd2_proxy_api::destination::update::Update::Add(set)) if set.addrs.len() == 2
        ));
        // ...policy is not, while the routes cannot be listed.
        let addr = format!("http://{}", d.grpc);
        let mut policy = InboundServerPoliciesClient::connect(addr).await.expect("connect");
        let port = pb::PortSpec { workload: POD.into(), port: 8080 };
        let early = async {
            let mut stream = policy.watch_port(port).await?.into_inner();
            stream.message().await
        };
        let early = tokio::time::timeout(Duration::from_secs(3), early).await;
        assert!(early.is_err(), "policy answered without the routes: {early:?}");

        // With RBAC for them, the first answer has the route.
        api.set_forbidden(GATEWAY_ROUTES, false);
        let mut http = watch(&d, 8080).await;
        let first = tokio::time::timeout(Duration::from_secs(40), http.message()).await;
        let Ok(Ok(Some(first))) = first else {
            panic!("no policy once the routes list: {first:?}\n{}", d.logs())
        };
        let Some(Kind::Http1(h)) = first.protocol.as_ref().and_then(|p| p.kind.as_ref()) else {
            panic!("not HTTP/1: {first:#?}")
        };
        let names: Vec<_> = h.routes.iter().map(|r| meta_name(r.metadata.as_ref())).collect();
        assert_eq!(names, ["gateway.networking.k8s.io/HTTPRoute/web"], "{first:#?}");
    });
}
