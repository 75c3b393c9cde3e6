//! HTTPRoutes end to end: the real `weft destination` against the fake Kubernetes API
//! (recorded objects from fixtures/k8s/), followed by a gRPC client as a proxy would, and
//! enforced by a real proxy in front of a real app, with curl as clients from other
//! loopback addresses.

use std::time::Duration;

use linkerd2_proxy_api::{
    http_route::path_match,
    inbound::{
        self as pb, inbound_server_policies_client::InboundServerPoliciesClient,
        proxy_protocol::Kind,
    },
    meta::metadata,
};
use serde_json::{Value, json};

use crate::{
    destination::{Destination, fixture, metric, rt, skipped},
    kubeapi::FakeApi,
    policy_api::{
        NAMESPACES, NETWORKS, POD, PODS, POLICIES, SERVERS, cluster_without_crd, next,
        policy_proxy, watch_web_http,
    },
    support::{Proxy, eventually, http_server, local_listener, run},
};

const ROUTES: &str = "/apis/policy.weft.dev/v1beta3/httproutes";

fn http1_routes(s: &pb::Server) -> &[pb::HttpRoute] {
    match s.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Http1(h)) => &h.routes,
        other => panic!("not HTTP/1: {other:?}"),
    }
}

/// (kind, name) of a route's or an authorization's metadata.
fn meta_name(m: Option<&linkerd2_proxy_api::meta::Metadata>) -> (String, String) {
    match m.and_then(|m| m.kind.as_ref()) {
        Some(metadata::Kind::Default(n)) => ("default".into(), n.clone()),
        Some(metadata::Kind::Resource(r)) => (r.kind.clone(), r.name.clone()),
        None => ("none".into(), String::new()),
    }
}

/// Route names with their authorizations' names.
fn routes(s: &pb::Server) -> Vec<(String, Vec<String>)> {
    http1_routes(s)
        .iter()
        .map(|r| {
            let authz = r.authorizations.iter().map(|a| meta_name(a.metadata.as_ref()).1);
            (meta_name(r.metadata.as_ref()).1, authz.collect())
        })
        .collect()
}

/// An AuthorizationPolicy (built on the recorded one) for `target` requiring `network`.
pub(crate) fn policy(name: &str, target: Value, network: &str) -> Value {
    let mut p = fixture("authorizationpolicy-web-from-ops.json");
    p["metadata"]["name"] = json!(name);
    p["spec"] = json!({
        "targetRef": target,
        "requiredAuthenticationRefs": [
            {"group": "policy.weft.dev", "kind": "NetworkAuthentication", "name": network}
        ]
    });
    p
}

/// A NetworkAuthentication (built on the recorded one) of these client addresses.
pub(crate) fn network(name: &str, addrs: &[&str]) -> Value {
    let mut n = fixture("networkauthentication-cluster-pods.json");
    n["metadata"]["name"] = json!(name);
    n["spec"] = json!({"networks": addrs.iter().map(|a| json!({"cidr": format!("{a}/32")})).collect::<Vec<_>>()});
    n
}

fn to_route(name: &str) -> Value {
    json!({"group": "policy.weft.dev", "kind": "HTTPRoute", "name": name})
}

fn to_server(name: &str) -> Value {
    json!({"group": "policy.weft.dev", "kind": "Server", "name": name})
}

/// The recorded route under another name, with other rules.
fn recorded_route(name: &str, rules: Value) -> Value {
    let mut r = fixture("httproute-web-metrics.json");
    r["metadata"]["name"] = json!(name);
    r["metadata"]["creationTimestamp"] = json!("2025-05-20T09:16:00Z");
    r["spec"]["rules"] = rules;
    r
}

#[test]
fn policy_api_sends_a_servers_http_routes_with_their_authorizations() {
    let api = FakeApi::start();
    api.put(NAMESPACES, fixture("namespace-prod.json"));
    api.put(PODS, fixture("pod-web-4xk2p-meshed.json"));
    api.put(SERVERS, fixture("server-web-http.json"));
    api.put(NETWORKS, network("prometheus", &["10.244.3.7"]));
    api.put(NETWORKS, network("nodes", &["10.0.0.1"]));
    api.put(POLICIES, policy("web-metrics-from-prometheus", to_route("web-metrics"), "prometheus"));
    api.put(POLICIES, policy("web-from-nodes", to_server("web-http"), "nodes"));
    api.put(ROUTES, fixture("httproute-web-metrics.json"));
    let d = Destination::kubernetes(&api);

    rt().block_on(async {
        let addr = format!("http://{}", d.grpc);
        let mut client = InboundServerPoliciesClient::connect(addr).await.expect("connect");
        let spec = pb::PortSpec { workload: POD.into(), port: 8080 };
        let mut stream = client.watch_port(spec).await.expect("WatchPort").into_inner();
        let first = next(&mut stream, &d).await;
        // The route replaces the default route; it admits its own policy's clients and the
        // Server's, which the Server itself keeps for connections that carry no HTTP.
        assert_eq!(
            routes(&first),
            [(
                "web-metrics".to_string(),
                vec!["web-metrics-from-prometheus".to_string(), "web-from-nodes".to_string()]
            )],
            "{first:#?}"
        );
        let names: Vec<_> =
            first.authorizations.iter().map(|a| meta_name(a.metadata.as_ref()).1).collect();
        assert_eq!(names, ["web-from-nodes"]);
        let route = &http1_routes(&first)[0];
        assert_eq!(
            meta_name(route.metadata.as_ref()),
            ("HTTPRoute".to_string(), "web-metrics".to_string())
        );
        let m = &route.rules[0].matches[0];
        assert_eq!(
            m.path.as_ref().and_then(|p| p.kind.clone()),
            Some(path_match::Kind::Exact("/metrics".into()))
        );
        assert!(m.method.is_some());
        let prometheus = &route.authorizations[0];
        assert_eq!(prometheus.networks.len(), 1);

        // Host names and more matches: the route changes, so does the answer.
        let mut changed = fixture("httproute-web-metrics.json");
        changed["spec"]["hostnames"] = json!(["web.prod.svc.cluster.local"]);
        changed["spec"]["rules"][0]["matches"][0]["headers"] =
            json!([{"type": "Exact", "name": "accept", "value": "text/plain"}]);
        api.put(ROUTES, changed);
        let second = next(&mut stream, &d).await;
        let route = &http1_routes(&second)[0];
        assert_eq!(route.hosts.len(), 1);
        assert_eq!(route.rules[0].matches[0].headers[0].name, "accept");

        // Routes that cannot be enforced are skipped, counted, and (another route being
        // there) change nothing: a filter the proxies do not apply, a regex that does not
        // compile.
        let filtered = recorded_route(
            "web-admin",
            json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                    "filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "admin"}}]}]),
        );
        api.put(ROUTES, filtered);
        api.put(
            ROUTES,
            recorded_route(
                "web-bad",
                json!([{"matches": [{"path": {"type": "RegularExpression", "value": "/v[0-9"}}]}]),
            ),
        );
        let quiet = tokio::time::timeout(Duration::from_millis(700), stream.message()).await;
        assert!(quiet.is_err(), "sent again without a change: {quiet:?}");

        // The route-scoped policy goes: only the Server's clients are left on the route.
        api.delete(POLICIES, "prod", "web-metrics-from-prometheus");
        let third = next(&mut stream, &d).await;
        assert_eq!(routes(&third)[0].1, ["web-from-nodes"]);
        // The usable route goes: the others still claim the Server, so its requests get
        // 404 (a route that matches nothing) rather than the default route.
        api.delete(ROUTES, "prod", "web-metrics");
        let fourth = next(&mut stream, &d).await;
        let r = http1_routes(&fourth);
        assert_eq!(r.len(), 1, "{fourth:#?}");
        assert!(r[0].rules.is_empty(), "{fourth:#?}");
        // All routes go: the default route is back.
        api.delete(ROUTES, "prod", "web-admin");
        api.delete(ROUTES, "prod", "web-bad");
        let fifth = loop {
            let s = next(&mut stream, &d).await;
            if meta_name(http1_routes(&s)[0].metadata.as_ref()).0 == "default" {
                break s;
            }
        };
        assert_eq!(routes(&fifth), [("default".to_string(), vec!["web-from-nodes".to_string()])]);
    });
    let m = d.metrics();
    assert_eq!(skipped(&m, "httproute", "unsupported_filter"), 1.0, "{m}");
    assert_eq!(skipped(&m, "httproute", "invalid_spec"), 1.0, "{m}");
    let logs = d.logs();
    assert!(logs.contains("prod/web-admin") && logs.contains("URLRewrite"), "{logs}");
    assert!(logs.contains("prod/web-bad") && logs.contains("does not compile"), "{logs}");
}

/// `curl` from `source` through the proxy: the status line and headers.
fn curl(source: &str, proxy: &Proxy, args: &[&str], path: &str) -> String {
    fetch(source, proxy, args, path).0
}

/// `curl` from `source` through the proxy: the status line and headers, and the body.
fn fetch(source: &str, proxy: &Proxy, args: &[&str], path: &str) -> (String, String) {
    let url = format!("http://{}{path}", proxy.inbound);
    let (ok, out, err) = run(std::process::Command::new("curl")
        .args(["-sSi", "--max-time", "10", "--http1.1", "--interface", source])
        .args(args)
        .arg(&url));
    assert!(ok, "curl from {source}: {err}\n{}", proxy.logs());
    match out.split_once("\r\n\r\n") {
        Some((head, body)) => (head.to_string(), body.to_string()),
        None => (out, String::new()),
    }
}

/// The fake API with web's pod, whose container port `http` is `app`'s, and its Server
/// `web-http` on that port.
fn cluster_in_front_of(app: std::net::SocketAddr) -> FakeApi {
    let api = FakeApi::start();
    api.put(NAMESPACES, fixture("namespace-prod.json"));
    let mut pod = fixture("pod-web-4xk2p-meshed.json");
    pod["spec"]["containers"][0]["ports"] =
        json!([{"name": "http", "containerPort": app.port(), "protocol": "TCP"}]);
    api.put(PODS, pod);
    let mut server = fixture("server-web-http.json");
    server["spec"]["port"] = json!("http");
    api.put(SERVERS, server);
    api
}

fn status(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or(head)
}

#[test]
fn the_proxy_enforces_http_routes_and_their_policies() {
    let app = http_server(local_listener());
    let api = cluster_in_front_of(app);
    // Only Prometheus (127.0.0.2) may GET /metrics; both clients may call /api; the node
    // (127.0.0.4) may do anything the Server's routes allow.
    api.put(NETWORKS, network("prometheus", &["127.0.0.2"]));
    api.put(NETWORKS, network("clients", &["127.0.0.2", "127.0.0.3"]));
    api.put(NETWORKS, network("node", &["127.0.0.4"]));
    api.put(ROUTES, fixture("httproute-web-metrics.json"));
    api.put(
        ROUTES,
        recorded_route(
            "web-api",
            json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}]}]),
        ),
    );
    api.put(POLICIES, policy("web-metrics-from-prometheus", to_route("web-metrics"), "prometheus"));
    api.put(POLICIES, policy("web-api-from-clients", to_route("web-api"), "clients"));
    api.put(POLICIES, policy("web-from-node", to_server("web-http"), "node"));
    let d = Destination::kubernetes(&api);

    let probes = format!("{}:/healthz", app.port());
    let proxy =
        policy_proxy(&d, app, &app.port().to_string(), &["--inbound-probe-routes", &probes]);
    let get = |source: &str, path: &str| curl(source, &proxy, &[], path);

    for (source, args, path, want) in [
        ("127.0.0.2", &[][..], "/metrics", "200"),
        ("127.0.0.3", &[], "/metrics", "403"),
        ("127.0.0.2", &["-X", "POST", "-d", "x"], "/metrics", "404"),
        ("127.0.0.3", &[], "/api/items", "200"),
        ("127.0.0.2", &[], "/api", "200"),
        ("127.0.0.2", &[], "/other", "404"),
        ("127.0.0.3", &[], "/apix", "404"),
        // The Server's own policy applies to every route, and to no request that has none.
        ("127.0.0.4", &[], "/metrics", "200"),
        ("127.0.0.4", &[], "/other", "404"),
        // The kubelet's probe passes whatever the routes say.
        ("127.0.0.3", &[], "/healthz", "200"),
    ] {
        let head = curl(source, &proxy, args, path);
        assert_eq!(status(&head), want, "{source} {args:?} {path}: {head}\n{}", proxy.logs());
        if want == "404" {
            assert!(head.contains("l5d-proxy-error: no route"), "{head}");
        }
    }
    let m = proxy.metrics();
    let allowed = [
        ("srv_name", "web-http"),
        ("route_kind", "httproute"),
        ("route_name", "web-metrics"),
        ("authz_name", "web-metrics-from-prometheus"),
    ];
    assert_eq!(metric(&m, "inbound_http_authz_allow_total", &allowed), 1.0, "{m}");
    let denied = [("route_kind", "httproute"), ("route_name", "web-metrics")];
    assert_eq!(metric(&m, "inbound_http_authz_deny_total", &denied), 1.0, "{m}");
    assert_eq!(metric(&m, "inbound_http_errors_total", &[("error", "no_route")]), 4.0, "{m}");

    // The metrics route goes: its requests no longer have a route; /api keeps its own.
    api.delete(ROUTES, "prod", "web-metrics");
    assert!(
        eventually(Duration::from_secs(10), || status(&get("127.0.0.2", "/metrics")) == "404"),
        "the deleted route still serves\n{}",
        proxy.logs()
    );
    assert_eq!(status(&get("127.0.0.3", "/api/items")), "200");
    // The last route goes: the default route is back, with the Server's authorizations.
    api.delete(ROUTES, "prod", "web-api");
    assert!(
        eventually(Duration::from_secs(10), || status(&get("127.0.0.4", "/other")) == "200"),
        "the default route did not come back\n{}",
        proxy.logs()
    );
    for (source, path, want) in [
        ("127.0.0.2", "/other", "403"),
        ("127.0.0.3", "/api/items", "403"),
        ("127.0.0.4", "/metrics", "200"),
    ] {
        assert_eq!(status(&get(source, path)), want, "{source} {path}");
    }
    let m = proxy.metrics();
    let default =
        [("route_kind", "default"), ("route_name", "default"), ("authz_name", "web-from-node")];
    assert!(metric(&m, "inbound_http_authz_allow_total", &default) >= 1.0, "{m}");
}

#[test]
fn the_proxy_applies_http_route_filters() {
    let app = http_server(local_listener());
    let api = cluster_in_front_of(app);
    api.put(NETWORKS, network("clients", &["127.0.0.2"]));
    api.put(POLICIES, policy("web-from-clients", to_server("web-http"), "clients"));
    let prefix = |p: &str| json!([{"path": {"type": "PathPrefix", "value": p}}]);
    // The app sees the request's headers changed.
    api.put(
        ROUTES,
        recorded_route(
            "web-echo",
            json!([{"matches": prefix("/echo"), "filters": [{
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {
                    "set": [{"name": "X-Route", "value": "web-echo"}],
                    "add": [{"name": "x-multi", "value": "added"}],
                    "remove": ["x-secret"]
                }
            }]}]),
        ),
    );
    // Old paths are sent to /echo (Gateway API's default status, 302), and /away to
    // another site for good.
    api.put(
        ROUTES,
        recorded_route(
            "web-moved",
            json!([
                {"matches": prefix("/old"), "filters": [{"type": "RequestRedirect", "requestRedirect": {
                    "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/echo"}
                }}]},
                {"matches": [{"path": {"type": "Exact", "value": "/away"}}], "filters": [{"type": "RequestRedirect", "requestRedirect": {
                    "scheme": "https", "hostname": "example.com", "statusCode": 301
                }}]}
            ]),
        ),
    );
    // Linkerd's inbound API cannot carry a response header modifier: not served, so its
    // requests get 404 rather than responses without the header.
    api.put(
        ROUTES,
        recorded_route(
            "web-tagged",
            json!([{"matches": prefix("/tagged"), "filters": [{
                "type": "ResponseHeaderModifier",
                "responseHeaderModifier": {"set": [{"name": "x-tagged", "value": "1"}]}
            }]}]),
        ),
    );
    let d = Destination::kubernetes(&api);
    let proxy = policy_proxy(&d, app, &app.port().to_string(), &[]);
    let from = "127.0.0.2";

    let (head, body) =
        fetch(from, &proxy, &["-H", "x-multi: sent", "-H", "x-secret: s3cr3t"], "/echo");
    assert_eq!(status(&head), "200", "{head}\n{}", proxy.logs());
    assert!(body.contains("x-route: web-echo\n"), "{body}");
    assert!(body.contains("x-multi: sent\n") && body.contains("x-multi: added\n"), "{body}");
    assert!(!body.contains("x-secret"), "{body}");

    let head = curl(from, &proxy, &[], "/old/items?page=2");
    assert_eq!(status(&head), "302", "{head}\n{}", proxy.logs());
    let want = format!("location: http://{}/echo/items?page=2", proxy.inbound);
    assert!(head.to_ascii_lowercase().contains(&want), "{head}");
    // Followed, the redirect reaches the app through the header-modifying route.
    // (curl prints both responses: the second's head is in what follows the first's.)
    let (head, rest) = fetch(from, &proxy, &["-L"], "/old");
    assert!(head.starts_with("HTTP/1.1 302"), "{head}");
    assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    assert!(rest.contains("GET /echo\n") && rest.contains("x-route: web-echo\n"), "{rest}");

    let head = curl(from, &proxy, &[], "/away");
    assert_eq!(status(&head), "301", "{head}");
    assert!(head.to_ascii_lowercase().contains("location: https://example.com/away\r\n"), "{head}");

    let head = curl(from, &proxy, &[], "/tagged");
    assert_eq!(status(&head), "404", "{head}");
    assert!(!head.to_ascii_lowercase().contains("x-tagged"), "{head}");

    let m = proxy.metrics();
    let moved = [("route_name", "web-moved"), ("authz_name", "web-from-clients")];
    assert_eq!(metric(&m, "inbound_http_authz_allow_total", &moved), 3.0, "{m}");
    assert_eq!(skipped(&d.metrics(), "httproute", "unsupported_filter"), 1.0);
    assert!(d.logs().contains("no response header modifier"), "{}", d.logs());
}

/// A cluster whose CRDs predate HTTPRoute (helm never upgrades `crds/`): policy is served
/// as before, without routes, and routes apply once the CRD is installed.
#[test]
fn policy_is_served_without_the_httproute_crd_and_routes_follow_when_it_comes() {
    let (api, d) = cluster_without_crd(ROUTES);
    rt().block_on(async {
        let (mut stream, first) = watch_web_http(&d).await;
        assert_eq!(routes(&first), [("default".to_string(), Vec::<String>::new())]);

        api.set_missing(ROUTES, false);
        api.put(ROUTES, fixture("httproute-web-metrics.json"));
        // The watch retries with backoff (under a few seconds at first).
        let second = tokio::time::timeout(Duration::from_secs(30), stream.message()).await;
        let second = match second {
            Ok(Ok(Some(s))) => s,
            other => panic!("no update once the CRD came: {other:?}\n{}", d.logs()),
        };
        assert_eq!(routes(&second), [("web-metrics".to_string(), Vec::<String>::new())]);
    });
    assert!(d.logs().contains("the resource is not installed"), "{}", d.logs());
    let m = d.metrics();
    assert!(metric(&m, "destination_watch_errors_total", &[("kind", "httproute")]) >= 1.0, "{m}");
}
