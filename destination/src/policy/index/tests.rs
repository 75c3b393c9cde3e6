//! The policy index with no cluster: pods and policy objects in, `Server` messages out.

use linkerd2_proxy_api::{inbound::proxy_protocol::Kind, meta::metadata};
use serde_json::{Value, json};

use super::*;
use crate::model::Namespace;

mod rate_limit;

const WEB_ID: &str = "web.prod.serviceaccount.identity.weft.cluster.local";

fn index(default_policy: DefaultPolicy) -> (PolicyIndex, Counter) {
    let conflicts = Counter::default();
    let config = PolicyConfig { default_policy, ..PolicyConfig::default() };
    let idx =
        PolicyIndex::new(config, IndexConfig::default(), conflicts.clone(), Family::default());
    (idx, conflicts)
}

/// A pod of `prod` as the API server gives it: an `http` port 8080 with probes on it, a
/// metrics port 9090.
fn pod(name: &str, labels: Value, annotations: Value) -> Pod {
    let pod = json!({
        "metadata": {"name": name, "namespace": "prod", "labels": labels, "annotations": annotations},
        "spec": {"containers": [{
            "name": "app", "image": "web",
            "ports": [{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
            "livenessProbe": {"httpGet": {"path": "/live?verbose=1", "port": 8080, "scheme": "HTTP"}},
            "startupProbe": {"httpGet": {"path": "/tls", "port": 8080, "scheme": "HTTPS"}}
        }, {
            "name": "weft-proxy", "image": "weft-proxy",
            "ports": [{"name": "admin", "containerPort": 4191}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 4191}}
        }]},
        "status": {"phase": "Running", "podIP": "10.244.1.5"}
    });
    let (pod, problems) =
        Pod::from_k8s(&serde_json::from_value(pod).unwrap()).expect("a usable pod");
    assert!(problems.is_empty(), "{problems:?}");
    pod
}

fn web() -> Pod {
    pod("web-1", json!({"app": "web"}), json!({}))
}

fn obj(kind: PolicyKind, name: &str, created: &str, spec: Value) -> PolicyObject {
    let meta = serde_json::from_value(json!({
        "name": name, "namespace": "prod", "creationTimestamp": created
    }))
    .unwrap();
    PolicyObject::parse(kind, &meta, &spec).expect("a usable object")
}

fn server(name: &str, port: Value, protocol: &str) -> PolicyObject {
    obj(
        PolicyKind::Server,
        name,
        "2025-01-02T00:00:00Z",
        json!({"podSelector": {"matchLabels": {"app": "web"}}, "port": port, "proxyProtocol": protocol}),
    )
}

fn policy(name: &str, target: Value, refs: Value) -> PolicyObject {
    obj(
        PolicyKind::AuthorizationPolicy,
        name,
        "2025-01-02T00:00:00Z",
        json!({"targetRef": target, "requiredAuthenticationRefs": refs}),
    )
}

fn to_server(name: &str) -> Value {
    json!({"group": "policy.weft.dev", "kind": "Server", "name": name})
}

fn label<'a>(s: &'a pb::Server, k: &str) -> &'a str {
    s.labels.get(k).map(String::as_str).unwrap_or("<none>")
}

/// (kind, name) of an authorization's metadata.
fn authz_name(a: &pb::Authz) -> (String, String) {
    match a.metadata.as_ref().and_then(|m| m.kind.as_ref()) {
        Some(metadata::Kind::Default(n)) => ("default".into(), n.clone()),
        Some(metadata::Kind::Resource(r)) => {
            assert_eq!(r.group, "policy.weft.dev");
            (r.kind.clone(), r.name.clone())
        }
        None => panic!("authorization without metadata: {a:?}"),
    }
}

fn names(s: &pb::Server) -> Vec<(String, String)> {
    s.authorizations.iter().map(authz_name).collect()
}

fn nets(a: &pb::Authz) -> Vec<String> {
    a.networks
        .iter()
        .map(|n| {
            let net = n.net.unwrap();
            let ip: std::net::IpAddr = net.ip.unwrap().try_into().unwrap();
            let except: Vec<String> = n
                .except
                .iter()
                .map(|e| {
                    let ip: std::net::IpAddr = e.ip.unwrap().try_into().unwrap();
                    format!("{ip}/{}", e.prefix_len)
                })
                .collect();
            if except.is_empty() {
                format!("{ip}/{}", net.prefix_len)
            } else {
                format!("{ip}/{} except {}", net.prefix_len, except.join(","))
            }
        })
        .collect()
}

/// "unauthenticated", or the identities and suffixes (`*.a.b`, `*` for any) of mTLS.
fn authn(a: &pb::Authz) -> String {
    use pb::authn::{Permit, permit_mesh_tls::Clients};
    match a.authentication.as_ref().and_then(|a| a.permit.as_ref()) {
        Some(Permit::Unauthenticated(_)) => "unauthenticated".into(),
        Some(Permit::MeshTls(m)) => match &m.clients {
            Some(Clients::Identities(ids)) => {
                let mut out: Vec<String> = ids.identities.iter().map(|i| i.name.clone()).collect();
                out.extend(ids.suffixes.iter().map(|s| {
                    if s.parts.is_empty() {
                        "*".to_string()
                    } else {
                        format!("*.{}", s.parts.join("."))
                    }
                }));
                out.join(" ")
            }
            other => format!("{other:?}"),
        },
        None => "none".into(),
    }
}

/// (route name, its authorization names, its matches as `METHOD path` / `prefix`).
fn http_routes(s: &pb::Server) -> Vec<(String, Vec<String>, Vec<String>)> {
    use linkerd2_proxy_api::http_route::path_match;
    let routes = match s.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Detect(d)) => &d.http_routes,
        Some(Kind::Http1(h)) => &h.routes,
        Some(Kind::Http2(h)) => &h.routes,
        _ => return Vec::new(),
    };
    routes
        .iter()
        .map(|r| {
            let name = match r.metadata.as_ref().and_then(|m| m.kind.as_ref()) {
                Some(metadata::Kind::Default(n)) => n.clone(),
                other => format!("{other:?}"),
            };
            let matches = r
                .rules
                .iter()
                .flat_map(|rule| &rule.matches)
                .map(|m| {
                    let method = if m.method.is_some() { "GET " } else { "" };
                    match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
                        Some(path_match::Kind::Exact(p)) => format!("{method}{p}"),
                        Some(path_match::Kind::Prefix(p)) => format!("{method}prefix {p}"),
                        other => format!("{other:?}"),
                    }
                })
                .collect();
            (name, r.authorizations.iter().map(|a| authz_name(a).1).collect(), matches)
        })
        .collect()
}

fn protocol(s: &pb::Server) -> &'static str {
    match s.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Detect(d)) => {
            assert_eq!(d.timeout, Some(prost_types::Duration { seconds: 10, nanos: 0 }));
            "detect"
        }
        Some(Kind::Http1(_)) => "http1",
        Some(Kind::Http2(_)) => "http2",
        Some(Kind::Grpc(_)) => "grpc",
        Some(Kind::Opaque(_)) => "opaque",
        Some(Kind::Tls(_)) => "tls",
        None => "none",
    }
}

fn key(name: &str) -> ObjKey {
    ObjKey::new("prod", name)
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn unknown_pods_have_no_policy() {
    let (mut idx, _) = index(DefaultPolicy::AllUnauthenticated);
    assert!(idx.get(&key("web-1"), 8080).is_none());
    assert!(idx.watch(&key("web-1"), 8080).is_none());
}

#[test]
fn default_policies_from_pod_namespace_and_cluster() {
    let (mut idx, _) = index(DefaultPolicy::ClusterUnauthenticated);
    idx.apply_pod(&web());
    let srv = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(protocol(&srv), "detect");
    assert_eq!((label(&srv, "kind"), label(&srv, "name")), ("default", "cluster-unauthenticated"));
    assert_eq!(label(&srv, "group"), "");
    assert_eq!(names(&srv), [("default".to_string(), "cluster-unauthenticated".to_string())]);
    let a = &srv.authorizations[0];
    assert_eq!(
        nets(a),
        s(&["10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"])
    );
    assert_eq!(authn(a), "unauthenticated");
    // The default route carries the policy; the probe route the kubelet's probes (the app's
    // HTTP ones on this port: not the HTTPS one, not the proxy's), without the query.
    assert_eq!(
        http_routes(&srv),
        [
            ("default".to_string(), s(&["cluster-unauthenticated"]), s(&["prefix /"])),
            ("probe".to_string(), s(&["probe"]), s(&["GET /live", "GET /ready"])),
        ]
    );
    let probe = &match srv.protocol.as_ref().unwrap().kind.as_ref().unwrap() {
        Kind::Detect(d) => d.http_routes[1].authorizations[0].clone(),
        _ => unreachable!(),
    };
    assert_eq!((nets(probe), authn(probe)), (s(&["0.0.0.0/0", "::/0"]), "unauthenticated".into()));
    // No probes on 9090: the default route only.
    let metrics = idx.get(&key("web-1"), 9090).unwrap();
    assert_eq!(http_routes(&metrics).len(), 1);

    // The namespace's annotation beats the cluster's, the pod's beats the namespace's.
    let ns = |policy: Option<DefaultPolicy>| Namespace {
        name: "prod".into(),
        opaque_ports: None,
        default_policy: policy,
    };
    idx.apply_namespace(&ns(Some(DefaultPolicy::AllAuthenticated)));
    let srv = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(label(&srv, "name"), "all-authenticated");
    assert_eq!(nets(&srv.authorizations[0]), s(&["0.0.0.0/0", "::/0"]));
    assert_eq!(authn(&srv.authorizations[0]), "*");
    idx.apply_pod(&pod(
        "web-1",
        json!({"app": "web"}),
        json!({"config.weft.dev/default-inbound-policy": "deny"}),
    ));
    let srv = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(label(&srv, "name"), "deny");
    assert!(srv.authorizations.is_empty());
    // Deny still lets the kubelet probe.
    assert_eq!(http_routes(&srv)[1].1, s(&["probe"]));
    idx.apply_pod(&pod(
        "web-1",
        json!({}),
        json!({"config.weft.dev/default-inbound-policy": "audit"}),
    ));
    let srv = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(names(&srv), [("default".to_string(), "audit".to_string())]);
    assert_eq!(
        (nets(&srv.authorizations[0]).len(), authn(&srv.authorizations[0])),
        (2, "unauthenticated".into())
    );
    idx.apply_pod(&pod(
        "web-1",
        json!({}),
        json!({"config.weft.dev/default-inbound-policy": "cluster-authenticated"}),
    ));
    let srv = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(
        (nets(&srv.authorizations[0]).len(), authn(&srv.authorizations[0])),
        (5, "*".into())
    );

    // A bad annotation is reported and ignored: the namespace's applies.
    let (bad, problems) = Pod::from_k8s(
        &serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "prod", "annotations": {"config.weft.dev/default-inbound-policy": "allow"}}
        }))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].reason, "invalid_annotation");
    idx.apply_pod(&bad);
    assert_eq!(label(&idx.get(&key("web-1"), 8080).unwrap(), "name"), "all-authenticated");
    idx.delete_namespace("prod");
    assert_eq!(label(&idx.get(&key("web-1"), 8080).unwrap(), "name"), "cluster-unauthenticated");
}

#[test]
fn servers_select_by_labels_and_port_number_or_name() {
    let (mut idx, conflicts) = index(DefaultPolicy::AllUnauthenticated);
    idx.apply_pod(&web());
    idx.apply_pod(&pod("db-1", json!({"app": "db"}), json!({})));
    idx.apply(server("web-http", json!("http"), "HTTP/1"));
    idx.apply(server("web-metrics", json!(9090), "opaque"));

    let http = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(protocol(&http), "http1");
    assert_eq!(
        (label(&http, "group"), label(&http, "kind"), label(&http, "name")),
        ("policy.weft.dev", "server", "web-http")
    );
    // No AuthorizationPolicy and the default access policy (deny): nobody but the kubelet.
    assert!(http.authorizations.is_empty());
    assert_eq!(
        http_routes(&http),
        [
            ("default".to_string(), vec![], s(&["prefix /"])),
            ("probe".to_string(), s(&["probe"]), s(&["GET /live", "GET /ready"])),
        ]
    );
    assert_eq!(protocol(&idx.get(&key("web-1"), 9090).unwrap()), "opaque");
    // Another port, another pod's labels: the default policy.
    assert_eq!(label(&idx.get(&key("web-1"), 7000).unwrap(), "kind"), "default");
    assert_eq!(label(&idx.get(&key("db-1"), 8080).unwrap(), "kind"), "default");
    // A Server of another namespace selects nothing here.
    let meta = serde_json::from_value(json!({"name": "web-http", "namespace": "other"})).unwrap();
    let other =
        PolicyObject::parse(PolicyKind::Server, &meta, &json!({"podSelector": {}, "port": 7000}))
            .unwrap();
    idx.apply(other);
    assert_eq!(label(&idx.get(&key("web-1"), 7000).unwrap(), "kind"), "default");

    // Expressions; an empty selector selects every pod of the namespace.
    idx.apply(obj(
        PolicyKind::Server,
        "not-db",
        "2025-01-02T00:00:00Z",
        json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]},
               "port": 7000, "proxyProtocol": "gRPC", "accessPolicy": "all-authenticated"}),
    ));
    idx.apply(obj(
        PolicyKind::Server,
        "all",
        "2025-01-02T00:00:00Z",
        json!({"podSelector": {}, "port": 7001, "proxyProtocol": "TLS"}),
    ));
    let grpc = idx.get(&key("web-1"), 7000).unwrap();
    assert_eq!((protocol(&grpc), label(&grpc, "name")), ("grpc", "not-db"));
    // The access policy is an authorization named after it.
    assert_eq!(names(&grpc), [("default".to_string(), "all-authenticated".to_string())]);
    assert_eq!(label(&idx.get(&key("db-1"), 7000).unwrap(), "kind"), "default");
    assert_eq!(protocol(&idx.get(&key("db-1"), 7001).unwrap()), "tls");
    assert_eq!(conflicts.get(), 0);
}

#[test]
fn the_oldest_server_wins_a_port() {
    let (mut idx, conflicts) = index(DefaultPolicy::AllUnauthenticated);
    idx.apply_pod(&web());
    let spec = json!({"podSelector": {"matchLabels": {"app": "web"}}, "port": 8080});
    idx.apply(obj(PolicyKind::Server, "b-newer", "2025-03-01T00:00:00Z", spec.clone()));
    idx.apply(obj(PolicyKind::Server, "z-older", "2025-02-01T00:00:00Z", spec.clone()));
    assert_eq!(label(&idx.get(&key("web-1"), 8080).unwrap(), "name"), "z-older");
    assert_eq!(conflicts.get(), 1);
    // Same age: by name.
    idx.apply(obj(PolicyKind::Server, "a-same", "2025-02-01T00:00:00Z", spec));
    assert_eq!(label(&idx.get(&key("web-1"), 8080).unwrap(), "name"), "a-same");
    assert_eq!(conflicts.get(), 2);
    idx.delete(PolicyKind::Server, &key("a-same"));
    idx.delete(PolicyKind::Server, &key("z-older"));
    assert_eq!(label(&idx.get(&key("web-1"), 8080).unwrap(), "name"), "b-newer");
    assert_eq!(conflicts.get(), 2);
}

#[test]
fn authorization_policies_and_their_authentications() {
    let (mut idx, _) = index(DefaultPolicy::AllUnauthenticated);
    idx.apply_pod(&web());
    idx.apply(server("web-http", json!(8080), "HTTP/2"));
    let mtls =
        |name: &str, spec: Value| obj(PolicyKind::MeshTls, name, "2025-01-01T00:00:00Z", spec);
    idx.apply(mtls(
        "exact-and-suffixes",
        json!({"identities": [WEB_ID, "*.ops.serviceaccount.identity.weft.cluster.local"]}),
    ));
    idx.apply(mtls("anyone-meshed", json!({"identities": ["*"]})));
    idx.apply(mtls(
        "refs",
        json!({"identityRefs": [
            {"kind": "ServiceAccount", "name": "api"},
            {"kind": "ServiceAccount", "name": "prom", "namespace": "monitoring"},
            {"kind": "Namespace", "name": "ops"}
        ]}),
    ));
    idx.apply(obj(
        PolicyKind::Network,
        "office",
        "2025-01-01T00:00:00Z",
        json!({"networks": [{"cidr": "192.168.0.0/16", "except": ["192.168.10.0/24"]}, {"cidr": "fd00::1"}]}),
    ));
    let mtls_ref = |name: &str| json!({"group": "policy.weft.dev", "kind": "MeshTLSAuthentication", "name": name});
    let net_ref = |name: &str| json!({"group": "policy.weft.dev", "kind": "NetworkAuthentication", "name": name});
    idx.apply(policy("a-exact", to_server("web-http"), json!([mtls_ref("exact-and-suffixes")])));
    idx.apply(policy(
        "b-any",
        to_server("web-http"),
        json!([mtls_ref("anyone-meshed"), net_ref("office")]),
    ));
    idx.apply(policy("c-refs", to_server("web-http"), json!([mtls_ref("refs")])));
    idx.apply(policy(
        "d-sas",
        to_server("web-http"),
        json!([{"kind": "ServiceAccount", "name": "web"}, {"kind": "ServiceAccount", "name": "job", "namespace": "batch"}]),
    ));
    idx.apply(policy("e-network-only", to_server("web-http"), json!([net_ref("office")])));
    idx.apply(policy("f-namespace", json!({"kind": "Namespace", "name": "prod"}), json!([])));
    idx.apply(policy("g-missing-authn", to_server("web-http"), json!([mtls_ref("nope")])));
    idx.apply(policy("h-other-server", to_server("other"), json!([])));

    let srv = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(protocol(&srv), "http2");
    let got: Vec<(String, Vec<String>, String)> =
        srv.authorizations.iter().map(|a| (authz_name(a).1, nets(a), authn(a))).collect();
    let all = s(&["0.0.0.0/0", "::/0"]);
    let office = s(&["192.168.0.0/16 except 192.168.10.0/24", "fd00::1/128"]);
    assert_eq!(
        got,
        [
            ("a-exact".to_string(), all.clone(), format!("{WEB_ID} *.ops.serviceaccount.identity.weft.cluster.local")),
            ("b-any".to_string(), office.clone(), "*".to_string()),
            (
                "c-refs".to_string(),
                all.clone(),
                "api.prod.serviceaccount.identity.weft.cluster.local prom.monitoring.serviceaccount.identity.weft.cluster.local *.ops.serviceaccount.identity.weft.cluster.local".to_string()
            ),
            (
                "d-sas".to_string(),
                all.clone(),
                format!("job.batch.serviceaccount.identity.weft.cluster.local {WEB_ID}")
            ),
            ("e-network-only".to_string(), office, "unauthenticated".to_string()),
            ("f-namespace".to_string(), all, "unauthenticated".to_string()),
        ]
    );
    assert!(
        srv.authorizations
            .iter()
            .all(|a| a.labels.get("kind").map(String::as_str) == Some("authorizationpolicy"))
    );
    // The default route carries the same authorizations.
    assert_eq!(http_routes(&srv)[0].1.len(), 6);

    // The missing authentication appears: its policy starts to admit.
    idx.apply(mtls("nope", json!({"identities": ["*"]})));
    assert_eq!(idx.get(&key("web-1"), 8080).unwrap().authorizations.len(), 7);
    // An authentication another namespace's policy uses is found there too.
    let meta = serde_json::from_value(json!({"name": "shared", "namespace": "infra"})).unwrap();
    idx.apply(
        PolicyObject::parse(
            PolicyKind::Network,
            &meta,
            &json!({"networks": [{"cidr": "10.1.0.0/16"}]}),
        )
        .unwrap(),
    );
    idx.apply(policy(
        "i-shared",
        to_server("web-http"),
        json!([{"group": "policy.weft.dev", "kind": "NetworkAuthentication", "name": "shared", "namespace": "infra"}]),
    ));
    let srv = idx.get(&key("web-1"), 8080).unwrap();
    assert_eq!(nets(srv.authorizations.last().unwrap()), s(&["10.1.0.0/16"]));
}

#[test]
fn bad_objects_are_refused_with_a_reason() {
    let meta = serde_json::from_value(json!({"name": "x", "namespace": "prod"})).unwrap();
    for (kind, spec) in [
        (PolicyKind::Server, json!({"port": 80})),
        (PolicyKind::Server, json!({"podSelector": {}, "port": 0})),
        (PolicyKind::Server, json!({"podSelector": {}, "port": 70000})),
        (PolicyKind::Server, json!({"podSelector": {}, "port": 80, "proxyProtocol": "HTTP/3"})),
        (PolicyKind::Server, json!({"podSelector": {}, "port": 80, "accessPolicy": "allow"})),
        (
            PolicyKind::Server,
            json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Like"}]}, "port": 80}),
        ),
        (PolicyKind::Server, json!({"externalWorkloadSelector": {}, "port": 80})),
        (PolicyKind::Server, json!("not an object")),
        (
            PolicyKind::AuthorizationPolicy,
            json!({"targetRef": {"kind": "GRPCRoute", "group": "policy.weft.dev", "name": "r"}}),
        ),
        (
            PolicyKind::AuthorizationPolicy,
            json!({"targetRef": {"kind": "Server", "group": "policy.linkerd.io", "name": "s"}}),
        ),
        (
            PolicyKind::AuthorizationPolicy,
            json!({"targetRef": {"kind": "Namespace", "name": "other"}}),
        ),
        (
            PolicyKind::AuthorizationPolicy,
            json!({"targetRef": {"kind": "Server", "group": "policy.weft.dev", "name": "s"},
            "requiredAuthenticationRefs": [{"kind": "NetworkAuthentication", "group": "policy.weft.dev", "name": "a"},
                                           {"kind": "NetworkAuthentication", "group": "policy.weft.dev", "name": "b"}]}),
        ),
        (
            PolicyKind::AuthorizationPolicy,
            json!({"targetRef": {"kind": "Server", "group": "policy.weft.dev", "name": "s"},
            "requiredAuthenticationRefs": [{"kind": "MeshTLSAuthentication", "group": "policy.weft.dev", "name": "a"},
                                           {"kind": "ServiceAccount", "name": "b"}]}),
        ),
        (
            PolicyKind::AuthorizationPolicy,
            json!({"targetRef": {"kind": "Server", "group": "policy.weft.dev", "name": "s"},
            "requiredAuthenticationRefs": [{"kind": "Secret", "name": "a"}]}),
        ),
        (PolicyKind::MeshTls, json!({})),
        (PolicyKind::MeshTls, json!({"identities": ["a*b"]})),
        (PolicyKind::MeshTls, json!({"identities": ["*."]})),
        (PolicyKind::MeshTls, json!({"identityRefs": [{"kind": "Deployment", "name": "web"}]})),
        (PolicyKind::Network, json!({"networks": []})),
        (PolicyKind::Network, json!({"networks": [{"cidr": "10.0.0.1/8"}]})),
        (PolicyKind::Network, json!({"networks": [{"cidr": "10.0.0.0/8", "except": ["nope"]}]})),
    ] {
        let problem =
            PolicyObject::parse(kind, &meta, &spec).expect_err(&format!("{spec} accepted"));
        assert_eq!((problem.kind, problem.reason), (kind.metric(), "invalid_spec"), "{spec}");
        assert_eq!(problem.object, "prod/x");
    }
    let nameless = serde_json::from_value(json!({"namespace": "prod"})).unwrap();
    let p = PolicyObject::parse(
        PolicyKind::Network,
        &nameless,
        &json!({"networks": [{"cidr": "10.0.0.0/8"}]}),
    );
    assert_eq!(p.unwrap_err().reason, "missing_name");
    // Unknown fields are fine (a newer schema).
    let ok = PolicyObject::parse(
        PolicyKind::Network,
        &meta,
        &json!({"networks": [{"cidr": "10.0.0.0/8"}], "future": 1}),
    );
    assert!(ok.is_ok());
}

#[test]
fn followers_get_each_change_once() {
    let (mut idx, _) = index(DefaultPolicy::AllUnauthenticated);
    idx.apply_pod(&web());
    let mut rx = idx.watch(&key("web-1"), 8080).unwrap();
    assert_eq!(label(&rx.borrow_and_update(), "kind"), "default");
    assert_eq!(idx.subscriptions(), 1);

    // A Server added: the follower sees it.
    idx.apply(server("web-http", json!(8080), "HTTP/1"));
    assert!(rx.has_changed().unwrap());
    assert_eq!(label(&rx.borrow_and_update(), "name"), "web-http");
    // The same object again, a Server of another port, another namespace's pod: no change.
    idx.apply(server("web-http", json!(8080), "HTTP/1"));
    idx.apply(server("web-metrics", json!(9090), "opaque"));
    let meta = serde_json::from_value(
        json!({"name": "p", "namespace": "other", "labels": {"app": "web"}}),
    )
    .unwrap();
    let other =
        Pod::from_k8s(&k8s_openapi::api::core::v1::Pod { metadata: meta, ..Default::default() })
            .unwrap()
            .0;
    idx.apply_pod(&other);
    assert!(!rx.has_changed().unwrap());
    // An authorization for it.
    idx.apply(policy("all", to_server("web-http"), json!([])));
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().authorizations.len(), 1);
    // Relabelled pod: the Server no longer selects it.
    idx.apply_pod(&pod("web-1", json!({"app": "web2"}), json!({})));
    assert_eq!(label(&rx.borrow_and_update(), "kind"), "default");
    idx.apply_pod(&web());
    assert_eq!(label(&rx.borrow_and_update(), "name"), "web-http");
    // Removed: back to the default. A relist without it does the same.
    idx.delete(PolicyKind::Server, &key("web-http"));
    assert_eq!(label(&rx.borrow_and_update(), "kind"), "default");
    idx.reset(PolicyKind::Server, vec![server("web-http", json!(8080), "HTTP/1")]);
    assert_eq!(label(&rx.borrow_and_update(), "name"), "web-http");
    idx.reset(PolicyKind::Server, vec![]);
    assert!(rx.has_changed().unwrap());
    assert_eq!(label(&rx.borrow_and_update(), "kind"), "default");
    // A deleted pod keeps its followers' last message; its return refreshes it.
    idx.delete_pod(&key("web-1"));
    assert!(idx.get(&key("web-1"), 8080).is_none());
    idx.apply(server("web-http", json!(8080), "HTTP/1"));
    assert!(!rx.has_changed().unwrap());
    idx.apply_pod(&web());
    assert_eq!(label(&rx.borrow_and_update(), "name"), "web-http");

    // Followers that went away are forgotten at the next change.
    drop(rx);
    assert_eq!(idx.subscriptions(), 0);
    idx.apply(policy("more", to_server("web-http"), json!([])));
    assert!(idx.subs.is_empty());
}

mod gateway;
mod routes;
