//! The static file: services, pods, namespaces, policies and routes in; lookups out.

use super::*;

const FILE: &str = r#"
services:
  - name: web
    namespace: prod
    clusterIPs: [10.96.0.10]
    annotations:
      retry.weft.dev/http: 5xx
      config.weft.dev/opaque-ports: "5432"
    ports:
      - port: 80
        endpoints:
          - address: 127.0.0.1:8080
            identity: web.prod.serviceaccount.identity.weft.cluster.local
            labels: {pod: web-1}
          - address: 127.0.0.1:8081
      - port: 5432
        endpoints:
          - address: 127.0.0.1:5432
            identity: db.prod.serviceaccount.identity.weft.cluster.local
            opaqueTransportPort: 4143
  - name: empty
    namespace: prod
"#;

fn catalog() -> Catalog {
    let (c, warnings) = Catalog::parse(Path::new("f.yaml"), FILE).expect("parses");
    assert!(warnings.is_empty(), "{warnings:?}");
    c
}

#[test]
fn lookups() {
    let c = catalog();
    let d = "cluster.local";
    let web = |port| Target::Service { key: ObjKey::new("prod", "web"), port };
    let r = c.resolve(&web(80), d);
    assert!(r.exists);
    assert_eq!(r.endpoints.len(), 2);
    assert_eq!(r.profile.fqn, "web.prod.svc.cluster.local");
    assert!(r.profile.policy.retry.is_some());
    assert!(!r.profile.opaque);
    let ep = &r.endpoints[&"127.0.0.1:8080".parse().unwrap()];
    assert_eq!(ep.identity.as_deref(), Some("web.prod.serviceaccount.identity.weft.cluster.local"));
    assert_eq!(ep.hint, Hint::H2 { opaque_transport: None });
    assert_eq!(ep.labels.get("pod").map(String::as_str), Some("web-1"));
    assert_eq!(ep.labels.get("service").map(String::as_str), Some("web"));
    let plain = &r.endpoints[&"127.0.0.1:8081".parse().unwrap()];
    assert_eq!((plain.identity.as_ref(), &plain.hint), (None, &Hint::Unknown));

    let db = c.resolve(&web(5432), d);
    assert!(db.profile.opaque);
    assert_eq!(
        db.endpoints.values().next().unwrap().hint,
        Hint::H2 { opaque_transport: Some(4143) }
    );

    // By ClusterIP, by an endpoint's address, unknowns.
    assert_eq!(c.resolve(&Target::Addr("10.96.0.10:80".parse().unwrap()), d), r);
    let one = c.resolve(&Target::Addr("127.0.0.1:8081".parse().unwrap()), d);
    assert_eq!(one.endpoints.len(), 1);
    assert!(one.profile.endpoint.is_some());
    assert!(!c.resolve(&Target::Addr("127.0.0.1:9".parse().unwrap()), d).exists);
    let none = c.resolve(&Target::Service { key: ObjKey::new("prod", "nope"), port: 80 }, d);
    assert!(!none.exists);
    // A known service on an unlisted port exists with no endpoints.
    let unlisted = c.resolve(&web(81), d);
    assert!(unlisted.exists && unlisted.endpoints.is_empty());
    let empty = c.resolve(&Target::Service { key: ObjKey::new("prod", "empty"), port: 80 }, d);
    assert!(empty.exists && empty.endpoints.is_empty());
}

#[test]
fn bad_files() {
    let p = Path::new("f.yaml");
    assert_eq!(Catalog::parse(p, "").map(|(c, _)| c.services.len()).ok(), Some(0));
    for bad in [
        "services: [{name: a}]",
        "services: [{name: a, namespace: b, ports: [{port: 80, endpoints: [{address: nope}]}]}]",
        "services: [{name: a, namespace: b, extra: 1}]",
        "services: [{name: a, namespace: b}, {name: a, namespace: b}]",
        "services: [{name: a, namespace: b, ports: [{port: 80}, {port: 80}]}]",
        "services: [{name: a, namespace: b, clusterIPs: [10.0.0.1]}, {name: c, namespace: b, clusterIPs: [10.0.0.1]}]",
        "services: [{name: '', namespace: b}]",
        "services: [{name: a, namespace: b, ports: [{port: 80, endpoints: [{address: '1.2.3.4:1', protocolHint: h3}]}]}]",
        "services: {",
    ] {
        assert!(Catalog::parse(p, bad).is_err(), "{bad:?} accepted");
    }
    // A bad annotation value is a warning; the rest of the file stands.
    let (c, warnings) = Catalog::parse(
            p,
            "services: [{name: a, namespace: b, annotations: {retry.weft.dev/http: often}, ports: [{port: 80}]}]",
        )
        .expect("parses");
    assert_eq!(warnings.len(), 1);
    assert_eq!(c.services.len(), 1);
}

#[test]
fn replace_pushes_changes() {
    let index = StaticIndex::new(catalog(), "cluster.local", SharedPolicyIndex::default());
    let t = Target::Service { key: ObjKey::new("prod", "web"), port: 80 };
    let mut rx = index.resolve(&t).expect("followed");
    assert_eq!(rx.borrow_and_update().endpoints.len(), 2);
    let (c, _) = Catalog::parse(
            Path::new("f"),
            "services: [{name: web, namespace: prod, ports: [{port: 80, endpoints: [{address: '127.0.0.1:9000'}]}]}]",
        )
        .expect("parses");
    index.replace(c);
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().endpoints.len(), 1);
    index.replace(Catalog::default());
    assert!(!rx.borrow_and_update().exists);
}

const POLICY_FILE: &str = r#"
namespaces:
  - name: prod
    annotations: {config.weft.dev/default-inbound-policy: all-authenticated}
pods:
  - name: web-1
    namespace: prod
    labels: {app: web}
    ports: [{name: http, containerPort: 8080}]
    probes: [{port: 8080, path: /ready}]
  - name: db-1
    namespace: prod
    annotations: {config.weft.dev/default-inbound-policy: deny}
policies:
  - apiVersion: policy.weft.dev/v1beta1
    kind: Server
    metadata: {name: web-http, namespace: prod}
    spec:
      podSelector: {matchLabels: {app: web}}
      port: http
      proxyProtocol: HTTP/1
  - apiVersion: policy.weft.dev/v1beta1
    kind: AuthorizationPolicy
    metadata: {name: web-from-office, namespace: prod}
    spec:
      targetRef: {group: policy.weft.dev, kind: Server, name: web-http}
      requiredAuthenticationRefs:
        - {group: policy.weft.dev, kind: NetworkAuthentication, name: office}
  - apiVersion: policy.weft.dev/v1beta1
    kind: NetworkAuthentication
    metadata: {name: office, namespace: prod}
    spec:
      networks: [{cidr: 192.168.0.0/16}]
"#;

#[test]
fn pods_and_policies() {
    let (c, warnings) = Catalog::parse(Path::new("f.yaml"), POLICY_FILE).expect("parses");
    assert!(warnings.is_empty(), "{warnings:?}");
    let policy = SharedPolicyIndex::default();
    let index = StaticIndex::new(c, "cluster.local", policy.clone());
    let web = ObjKey::new("prod", "web-1");
    let srv = policy.lock().get(&web, 8080).expect("web-1 is known");
    assert_eq!(srv.labels["name"], "web-http");
    assert_eq!(srv.authorizations.len(), 1);
    assert_eq!(srv.authorizations[0].networks.len(), 1);
    // Another port: the namespace's default; another pod: its own.
    assert_eq!(policy.lock().get(&web, 9090).unwrap().labels["name"], "all-authenticated");
    let db = policy.lock().get(&ObjKey::new("prod", "db-1"), 5432).unwrap();
    assert_eq!(db.labels["name"], "deny");
    assert!(policy.lock().get(&ObjKey::new("prod", "nope"), 80).is_none());

    // A new file without the Server: followers get the default.
    let mut rx = policy.lock().watch(&web, 8080).unwrap();
    let (c, _) = Catalog::parse(Path::new("f"), "pods: [{name: web-1, namespace: prod}]").unwrap();
    index.replace(c);
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().labels["name"], "all-unauthenticated");
}

#[test]
fn grpc_routes_in_the_routes_section() {
    let file = r#"
pods: [{name: web-1, namespace: prod, labels: {app: web}}]
policies:
  - apiVersion: policy.weft.dev/v1beta1
    kind: Server
    metadata: {name: web-grpc, namespace: prod}
    spec: {podSelector: {matchLabels: {app: web}}, port: 9090, proxyProtocol: gRPC}
routes:
  - apiVersion: gateway.networking.k8s.io/v1
    kind: GRPCRoute
    metadata: {name: web-echo, namespace: prod}
    spec:
      parentRefs: [{group: policy.weft.dev, kind: Server, name: web-grpc}]
      rules: [{matches: [{method: {service: weft.Test, method: Echo}}]}]
"#;
    let (c, _) = Catalog::parse(Path::new("f.yaml"), file).expect("parses");
    let policy = SharedPolicyIndex::default();
    let _index = StaticIndex::new(c, "cluster.local", policy.clone());
    let srv = policy.lock().get(&ObjKey::new("prod", "web-1"), 9090).unwrap();
    let Some(linkerd2_proxy_api::inbound::proxy_protocol::Kind::Grpc(g)) =
        srv.protocol.and_then(|p| p.kind)
    else {
        panic!("not gRPC")
    };
    let rpc = g.routes[0].rules[0].matches[0].rpc.clone().expect("an RPC match");
    assert_eq!((rpc.service.as_str(), rpc.method.as_str()), ("weft.Test", "Echo"));
}

#[test]
fn routes_section() {
    let file = format!(
        "{POLICY_FILE}{}",
        r#"
routes:
  - apiVersion: policy.weft.dev/v1beta3
    kind: HTTPRoute
    metadata: {name: web-metrics, namespace: prod}
    spec:
      parentRefs: [{group: policy.weft.dev, kind: Server, name: web-http}]
      rules:
        - matches: [{path: {type: Exact, value: /metrics}, method: GET}]
          filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {set: [{name: x-scraped, value: "yes"}]}
"#
    );
    let (c, _) = Catalog::parse(Path::new("f.yaml"), &file).expect("parses");
    let policy = SharedPolicyIndex::default();
    let _index = StaticIndex::new(c, "cluster.local", policy.clone());
    let srv = policy.lock().get(&ObjKey::new("prod", "web-1"), 8080).unwrap();
    let Some(linkerd2_proxy_api::inbound::proxy_protocol::Kind::Http1(h)) =
        srv.protocol.and_then(|p| p.kind)
    else {
        panic!("not HTTP/1")
    };
    let names: Vec<String> = h
        .routes
        .iter()
        .map(|r| match r.metadata.as_ref().and_then(|m| m.kind.as_ref()) {
            Some(linkerd2_proxy_api::meta::metadata::Kind::Resource(r)) => r.name.clone(),
            Some(linkerd2_proxy_api::meta::metadata::Kind::Default(n)) => n.clone(),
            None => String::new(),
        })
        .collect();
    assert_eq!(names, ["web-metrics", "probe"]);
    // Its filter goes to the proxies.
    use linkerd2_proxy_api::inbound::http_route::filter::Kind;
    let Some(Kind::RequestHeaderModifier(m)) = &h.routes[0].rules[0].filters[0].kind else {
        panic!("{:?}", h.routes[0].rules[0].filters)
    };
    assert_eq!(m.set.as_ref().map(|s| s.headers[0].name.as_str()), Some("x-scraped"));

    let p = Path::new("f.yaml");
    let route = |api: &str, kind: &str, spec: &str| {
        format!(
            "{{apiVersion: {api}, kind: {kind}, metadata: {{name: r, namespace: prod}}, spec: {spec}}}"
        )
    };
    let ok_spec = "{parentRefs: [{kind: Server, name: web-http}]}";
    let filtered = "{parentRefs: [{kind: Server, name: web-http}], rules: [{filters: [{type: URLRewrite, urlRewrite: {hostname: a}}]}]}";
    let grpc_spec = "{parentRefs: [{group: policy.weft.dev, kind: Server, name: web-http}]}";
    let grpc_regex = "{parentRefs: [{group: policy.weft.dev, kind: Server, name: web-http}], rules: [{matches: [{method: {type: RegularExpression, method: 'S.*'}}]}]}";
    let bad_redirect = "{parentRefs: [{kind: Server, name: web-http}], rules: [{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 200}}]}]}";
    for (bad, want) in [
        (
            format!("policies: [{}]", route("policy.weft.dev/v1beta3", "HTTPRoute", ok_spec)),
            "routes: section",
        ),
        (
            format!("routes: [{}]", route("policy.weft.dev/v1beta1", "HTTPRoute", ok_spec)),
            "apiVersion",
        ),
        (
            format!("routes: [{}]", route("policy.weft.dev/v1beta1", "Server", ok_spec)),
            "not HTTPRoute",
        ),
        (
            format!("routes: [{}]", route("policy.weft.dev/v1beta3", "GRPCRoute", grpc_spec)),
            "apiVersion",
        ),
        (
            format!("routes: [{}]", route("gateway.networking.k8s.io/v1", "GRPCRoute", grpc_regex)),
            "unsupported_match",
        ),
        (
            format!(
                "routes: [{0}, {0}]",
                route("gateway.networking.k8s.io/v1", "GRPCRoute", grpc_spec)
            ),
            "twice",
        ),
        (
            format!("routes: [{}]", route("policy.weft.dev/v1beta3", "HTTPRoute", filtered)),
            "unsupported_filter",
        ),
        (
            format!("routes: [{}]", route("policy.weft.dev/v1beta3", "HTTPRoute", bad_redirect)),
            "statusCode 200",
        ),
        (
            format!("routes: [{0}, {0}]", route("policy.weft.dev/v1beta3", "HTTPRoute", ok_spec)),
            "twice",
        ),
    ] {
        let e = Catalog::parse(p, &bad).expect_err(&bad).to_string();
        assert!(e.contains(want), "{bad}: {e}");
    }
}

#[test]
fn bad_policy_sections() {
    let p = Path::new("f.yaml");
    for bad in [
        "pods: [{name: a}]",
        "pods: [{name: a, namespace: b}, {name: a, namespace: b}]",
        "pods: [{name: a, namespace: b, probes: [{port: 80, path: ready}]}]",
        "pods: [{name: a, namespace: b, ports: [{containerPort: 0}]}]",
        "pods: [{name: a, namespace: b, image: nginx}]",
        "namespaces: [{name: a}, {name: a}]",
        "policies: [{apiVersion: policy.linkerd.io/v1beta1, kind: Server, metadata: {name: a, namespace: b}, spec: {podSelector: {}, port: 80}}]",
        "policies: [{apiVersion: policy.weft.dev/v1beta1, kind: Server, metadata: {name: a, namespace: b}, spec: {port: 80}}]",
        "policies: [{apiVersion: policy.weft.dev/v1beta1, kind: Server, metadata: {name: a}, spec: {podSelector: {}, port: 80}}]",
    ] {
        let e = Catalog::parse(p, bad).expect_err(bad);
        assert!(matches!(e, LoadError::Invalid { .. } | LoadError::Parse { .. }), "{bad}: {e}");
    }
    let (_, warnings) = Catalog::parse(
            p,
            "pods: [{name: a, namespace: b, annotations: {config.weft.dev/default-inbound-policy: allow}}]",
        )
        .expect("a bad annotation is a warning");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

#[test]
fn rate_limits_in_the_policies_section() {
    let rl = |api: &str, spec: &str| {
        format!(
            "\n  - {{apiVersion: {api}, kind: HTTPLocalRateLimitPolicy, metadata: {{name: web-rl, namespace: prod}}, spec: {spec}}}"
        )
    };
    let ok = "{targetRef: {group: policy.weft.dev, kind: Server, name: web-http}, total: {requestsPerSecond: 5}}";
    let file = format!("{POLICY_FILE}{}", rl("policy.weft.dev/v1alpha1", ok));
    let (c, _) = Catalog::parse(Path::new("f.yaml"), &file).expect("parses");
    let policy = SharedPolicyIndex::default();
    let _index = StaticIndex::new(c, "cluster.local", policy.clone());
    let srv = policy.lock().get(&ObjKey::new("prod", "web-1"), 8080).unwrap();
    let Some(linkerd2_proxy_api::inbound::proxy_protocol::Kind::Http1(h)) =
        srv.protocol.and_then(|p| p.kind)
    else {
        panic!("not HTTP/1")
    };
    let total = h.local_rate_limit.and_then(|l| l.total).map(|t| t.requests_per_second);
    assert_eq!(total, Some(5));

    let too_much = "{targetRef: {group: policy.weft.dev, kind: Server, name: web-http}, total: {requestsPerSecond: 5}, identity: {requestsPerSecond: 6}}";
    for (bad, want) in [
        (rl("policy.weft.dev/v1beta1", ok), "apiVersion"),
        (rl("policy.weft.dev/v1alpha1", too_much), "greater than total"),
    ] {
        let bad = format!("{POLICY_FILE}{bad}");
        let e = Catalog::parse(Path::new("f.yaml"), &bad).expect_err(&bad).to_string();
        assert!(e.contains(want), "{bad}: {e}");
    }
}
