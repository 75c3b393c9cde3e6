use linkerd2_proxy_api::{
    http_route::{HttpRouteMatch, PathMatch as ApiPath, path_match},
    inbound::{
        Authn, Identity, IdentitySuffix, Network as ApiNetwork, ProxyProtocol,
        authn::{Permit, PermitMeshTls, PermitUnauthenticated, permit_mesh_tls},
        proxy_protocol,
    },
    meta::{Metadata, Resource, metadata},
};

use super::*;

fn net(s: &str) -> net_api::IpNetwork {
    let (ip, len) = s.split_once('/').expect("cidr");
    let ip: IpAddr = ip.parse().expect("ip");
    net_api::IpNetwork { ip: Some(ip.into()), prefix_len: len.parse().expect("len") }
}

fn resource(kind: &str, name: &str) -> Option<Metadata> {
    Some(Metadata {
        kind: Some(metadata::Kind::Resource(Resource {
            group: "policy.weft.dev".into(),
            kind: kind.into(),
            name: name.into(),
            ..Resource::default()
        })),
    })
}

fn authz(name: &str, nets: &[(&str, &[&str])], permit: Permit) -> api::Authz {
    api::Authz {
        networks: nets
            .iter()
            .map(|(n, except)| ApiNetwork {
                net: Some(net(n)),
                except: except.iter().map(|e| net(e)).collect(),
            })
            .collect(),
        authentication: Some(Authn { permit: Some(permit) }),
        labels: HashMap::new(),
        metadata: resource("AuthorizationPolicy", name),
    }
}

fn mesh(names: &[&str], suffixes: &[&[&str]]) -> Permit {
    Permit::MeshTls(PermitMeshTls {
        clients: Some(permit_mesh_tls::Clients::Identities(
            permit_mesh_tls::PermitClientIdentities {
                identities: names.iter().map(|n| Identity { name: n.to_string() }).collect(),
                suffixes: suffixes
                    .iter()
                    .map(|p| IdentitySuffix { parts: p.iter().map(|s| s.to_string()).collect() })
                    .collect(),
            },
        )),
    })
}

fn path(kind: path_match::Kind) -> Option<ApiPath> {
    Some(ApiPath { kind: Some(kind) })
}

fn route(name: &str, matches: Vec<HttpRouteMatch>) -> api::HttpRoute {
    api::HttpRoute {
        metadata: resource("HTTPRoute", name),
        hosts: Vec::new(),
        authorizations: vec![authz(
            "all",
            &[("0.0.0.0/0", &[])],
            Permit::Unauthenticated(PermitUnauthenticated {}),
        )],
        rules: vec![api::http_route::Rule { matches, filters: Vec::new() }],
    }
}

fn server(authorizations: Vec<api::Authz>, routes: Vec<api::HttpRoute>) -> api::Server {
    api::Server {
        protocol: Some(ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Detect(proxy_protocol::Detect {
                timeout: None,
                http_routes: routes,
                http_local_rate_limit: None,
            })),
        }),
        server_ips: Vec::new(),
        authorizations,
        labels: [("kind", "server"), ("name", "web-http"), ("group", "policy.weft.dev")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

const WEB: &str = "web.prod.serviceaccount.identity.weft.cluster.local";
const BATCH: &str = "batch.jobs.serviceaccount.identity.weft.cluster.local";

#[test]
fn authorizations_admit_by_network_exception_and_identity() {
    let s = ServerPolicy::from_api(server(
        vec![
            authz(
                "pods",
                &[("10.0.0.0/8", &["10.9.0.0/16"])],
                mesh(
                    &[WEB],
                    &[&["jobs", "serviceaccount", "identity", "weft", "cluster", "local"]],
                ),
            ),
            authz("v6", &[("fd00::/8", &[])], Permit::Unauthenticated(PermitUnauthenticated {})),
        ],
        Vec::new(),
    ))
    .expect("valid");
    assert_eq!((&*s.meta.kind, &*s.meta.name), ("server", "web-http"));
    let name = |ip_, id| s.authorize_tcp(ip(ip_), id).map(|a| a.meta.name.to_string());
    assert_eq!(name("10.1.2.3", Some(WEB)).as_deref(), Some("pods"));
    assert_eq!(name("10.1.2.3", Some(BATCH)).as_deref(), Some("pods"), "by suffix");
    assert_eq!(
        name("10.1.2.3", Some("other.prod.serviceaccount.identity.weft.cluster.local")),
        None
    );
    assert_eq!(name("10.1.2.3", None), None, "plaintext");
    assert_eq!(name("10.9.0.1", Some(WEB)), None, "in the exception");
    assert_eq!(name("192.168.1.1", Some(WEB)), None, "outside the networks");
    assert_eq!(name("::ffff:10.1.2.3", Some(WEB)).as_deref(), Some("pods"), "IPv4-mapped");
    assert_eq!(name("fd00::1", None).as_deref(), Some("v6"));
    // A suffix matches whole labels below it, not the name itself.
    let s = ServerPolicy::from_api(server(
        vec![authz("sfx", &[("0.0.0.0/0", &[])], mesh(&[], &[&["cluster", "local"]]))],
        Vec::new(),
    ))
    .expect("valid");
    assert!(s.authorize_tcp(ip("10.0.0.1"), Some(WEB)).is_some());
    assert!(s.authorize_tcp(ip("10.0.0.1"), Some("evilcluster.local")).is_none());
    assert!(s.may_admit(ip("10.0.0.1"), Some(WEB)) && !s.may_admit(ip("10.0.0.1"), None));
}

#[test]
fn requests_take_the_most_specific_route_as_gateway_api_says() {
    use path_match::Kind::{Exact, Prefix, Regex};
    let m = |p| HttpRouteMatch { path: path(p), ..HttpRouteMatch::default() };
    let get = |p| HttpRouteMatch {
        path: path(p),
        method: Some(http::Method::GET.into()),
        ..HttpRouteMatch::default()
    };
    let s = ServerPolicy::from_api(server(
        Vec::new(),
        vec![
            route("root", vec![m(Prefix("/".into()))]),
            route("api", vec![m(Prefix("/api".into()))]),
            route("users", vec![m(Exact("/api/v1/users".into()))]),
            route("versions", vec![m(Regex("/api/v[0-9]+/.*".into()))]),
            route("read-api", vec![get(Prefix("/api".into()))]),
        ],
    ))
    .expect("valid");
    let pick = |method: http::Method, uri: &str| {
        let req = Request::builder().method(method).uri(uri).body(()).expect("request");
        s.route(&req).map(|r| r.meta.name.to_string())
    };
    assert_eq!(pick(http::Method::POST, "/api/v1/users").as_deref(), Some("users"));
    assert_eq!(
        pick(http::Method::POST, "/api/v2/x").as_deref(),
        Some("api"),
        "a prefix beats a regex"
    );
    assert_eq!(
        pick(http::Method::GET, "/api/v2/x").as_deref(),
        Some("read-api"),
        "the method makes it more specific"
    );
    assert_eq!(
        pick(http::Method::POST, "/apix").as_deref(),
        Some("root"),
        "prefixes match whole segments"
    );
    assert_eq!(pick(http::Method::POST, "/").as_deref(), Some("root"));
    // Without a catch-all, a request that matches nothing has no route.
    let s = ServerPolicy::from_api(server(
        Vec::new(),
        vec![route("users", vec![m(Exact("/users".into()))])],
    ))
    .expect("valid");
    let req = Request::builder().uri("/other").body(()).expect("request");
    assert!(s.route(&req).is_none());
    // No routes at all (an older control plane): one default route with the server's
    // authorizations.
    let all =
        authz("all", &[("0.0.0.0/0", &[])], Permit::Unauthenticated(PermitUnauthenticated {}));
    let s = ServerPolicy::from_api(server(vec![all], Vec::new())).expect("valid");
    let r = s.route(&req).expect("default route");
    assert_eq!((&*r.meta.kind, &*r.meta.name, r.authorizations.len()), ("default", "default", 1));
}

#[test]
fn headers_query_hosts_and_grpc_methods_match_as_sent() {
    let mut matched = route(
        "canary",
        vec![HttpRouteMatch {
            headers: vec![route_api::HeaderMatch {
                name: "x-canary".into(),
                value: Some(route_api::header_match::Value::Exact(b"1".to_vec())),
            }],
            query_params: vec![route_api::QueryParamMatch {
                name: "v".into(),
                value: Some(route_api::query_param_match::Value::Regex("[0-9]+".into())),
            }],
            ..HttpRouteMatch::default()
        }],
    );
    matched.hosts = vec![route_api::HostMatch {
        r#match: Some(route_api::host_match::Match::Suffix(route_api::host_match::Suffix {
            reverse_labels: vec!["com".into(), "example".into()],
        })),
    }];
    let s = ServerPolicy::from_api(server(Vec::new(), vec![matched])).expect("valid");
    let req = |host: &str, uri: &str, canary: &str| {
        let r = Request::builder().uri(uri).header("host", host).header("x-canary", canary);
        s.route(&r.body(()).expect("request")).is_some()
    };
    assert!(req("api.example.com:8080", "/x?a=b&v=42", "1"));
    assert!(!req("api.example.com", "/x?v=4a", "1"), "the regex matches the whole value");
    assert!(!req("api.example.com", "/x?v=42", "0"));
    assert!(!req("example.com", "/x?v=42", "1"), "a suffix is for names below it");
    assert!(!req("api.example.org", "/x?v=42", "1"));

    let grpc = |service: &str, method: &str| grpc_api::GrpcRouteMatch {
        rpc: Some(grpc_api::GrpcRpcMatch { service: service.into(), method: method.into() }),
        headers: Vec::new(),
    };
    let s = ServerPolicy::from_api(api::Server {
        protocol: Some(ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Grpc(proxy_protocol::Grpc {
                routes: vec![api::GrpcRoute {
                    metadata: resource("GRPCRoute", "checks"),
                    hosts: Vec::new(),
                    authorizations: Vec::new(),
                    rules: vec![api::grpc_route::Rule {
                        matches: vec![grpc("grpc.health.v1.Health", ""), grpc("", "Watch")],
                        filters: Vec::new(),
                    }],
                }],
            })),
        }),
        ..server(Vec::new(), Vec::new())
    })
    .expect("valid");
    assert_eq!(s.protocol, ServerProtocol::Grpc);
    let call = |path: &str| {
        let r = Request::builder().method(http::Method::POST).uri(path).body(()).expect("request");
        s.route(&r).is_some()
    };
    assert!(call("/grpc.health.v1.Health/Check"));
    assert!(call("/foo.Bar/Watch"));
    assert!(!call("/foo.Bar/Get"));
}

fn prefix_redirect(to: &str) -> api::http_route::Filter {
    use route_api::{PathModifier, RequestRedirect, path_modifier::Replace};
    api::http_route::Filter {
        kind: Some(api::http_route::filter::Kind::Redirect(RequestRedirect {
            path: Some(PathModifier { replace: Some(Replace::Prefix(to.into())) }),
            status: 302,
            ..RequestRedirect::default()
        })),
    }
}

#[test]
fn requests_take_the_filters_of_the_rule_they_matched() {
    use path_match::Kind::{Exact, Prefix};
    let m = |p| HttpRouteMatch { path: path(p), ..HttpRouteMatch::default() };
    let mut r = route("web", vec![m(Prefix("/old/".into()))]);
    r.rules[0].filters.push(prefix_redirect("/new"));
    r.rules.push(api::http_route::Rule {
        matches: vec![m(Exact("/plain".into()))],
        filters: Vec::new(),
    });
    let s = ServerPolicy::from_api(server(Vec::new(), vec![r])).expect("valid");
    let select = |uri: &str| {
        let req = Request::builder().uri(uri).header("host", "web").body(()).expect("request");
        let sel = s.select(&req).expect("a route");
        assert_eq!(&*sel.route.meta.name, "web");
        let answer = sel.filters.map(|f| f.apply(&mut req.clone(), sel.prefix_len));
        (sel.prefix_len, answer)
    };
    // The trailing `/` of the prefix is not part of what it replaces.
    let (len, answer) = select("/old/a?b=c");
    assert_eq!(len, Some(4));
    let Some(Err(super::super::filter::Answer::Redirect { location, .. })) = answer else {
        panic!("not redirected: {answer:?}")
    };
    assert_eq!(location, "http://web/new/a?b=c");
    assert!(matches!(select("/plain"), (None, None)), "a rule without filters has none");
}

fn grpc_server(rules: Vec<api::grpc_route::Rule>) -> api::Server {
    api::Server {
        protocol: Some(ProxyProtocol {
            kind: Some(proxy_protocol::Kind::Grpc(proxy_protocol::Grpc {
                routes: vec![api::GrpcRoute {
                    metadata: resource("GRPCRoute", "echo"),
                    hosts: Vec::new(),
                    authorizations: Vec::new(),
                    rules,
                }],
            })),
        }),
        ..server(Vec::new(), Vec::new())
    }
}

fn grpc_rule(method: &str, filters: Vec<api::grpc_route::filter::Kind>) -> api::grpc_route::Rule {
    api::grpc_route::Rule {
        matches: vec![grpc_api::GrpcRouteMatch {
            rpc: Some(grpc_api::GrpcRpcMatch {
                service: "weft.Test".into(),
                method: method.into(),
            }),
            headers: Vec::new(),
        }],
        filters: filters.into_iter().map(|k| api::grpc_route::Filter { kind: Some(k) }).collect(),
    }
}

fn grpc_failure(code: u32) -> api::grpc_route::filter::Kind {
    api::grpc_route::filter::Kind::FailureInjector(grpc_api::GrpcFailureInjector {
        code,
        message: "injected".into(),
        ratio: None,
    })
}

#[test]
fn grpc_calls_take_the_filters_of_the_rule_they_matched() {
    use super::super::filter::{Answer, Failure};
    let set_tenant =
        api::grpc_route::filter::Kind::RequestHeaderModifier(route_api::RequestHeaderModifier {
            add: None,
            set: Some(linkerd2_proxy_api::http_types::Headers {
                headers: vec![linkerd2_proxy_api::http_types::headers::Header {
                    name: "x-tenant".into(),
                    value: b"a".to_vec(),
                }],
            }),
            remove: Vec::new(),
        });
    let s = ServerPolicy::from_api(grpc_server(vec![
        grpc_rule("Echo", vec![set_tenant]),
        grpc_rule("Fail", vec![grpc_failure(14)]),
        grpc_rule("Plain", Vec::new()),
    ]))
    .expect("valid");
    let apply = |method: &str| {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("/weft.Test/{method}"))
            .body(())
            .expect("request");
        let sel = s.select(&req).expect("a route");
        let answer = sel.filters.map(|f| f.apply(&mut req, sel.prefix_len));
        (answer, req.headers().get("x-tenant").cloned())
    };
    assert_eq!(apply("Echo"), (Some(Ok(())), Some(http::HeaderValue::from_static("a"))));
    assert_eq!(
        apply("Fail").0,
        Some(Err(Answer::Fail { failure: Failure::Grpc(14), message: "injected".into() }))
    );
    assert_eq!(apply("Plain"), (None, None), "a rule without filters has none");

    let e = ServerPolicy::from_api(grpc_server(vec![grpc_rule("Fail", vec![grpc_failure(0)])]))
        .expect_err("code 0");
    assert!(e.to_string().contains("route echo: rule 0: gRPC failure injector: code 0"), "{e}");
}

#[test]
fn updates_the_proxy_cannot_enforce_are_refused_whole() {
    let unauth = || Permit::Unauthenticated(PermitUnauthenticated {});
    let mut filtered = route("f", Vec::new());
    filtered.rules[0].filters.push(api::http_route::Filter { kind: None });
    let mut prefix_on_exact = route(
        "p",
        vec![HttpRouteMatch {
            path: path(path_match::Kind::Exact("/x".into())),
            ..HttpRouteMatch::default()
        }],
    );
    prefix_on_exact.rules[0].filters.push(prefix_redirect("/y"));
    let mut no_addr = authz("x", &[], unauth());
    no_addr.networks.push(ApiNetwork { net: None, except: Vec::new() });
    let mut no_authn = authz("x", &[("0.0.0.0/0", &[])], unauth());
    no_authn.authentication = None;
    let mut anonymous = authz("x", &[("0.0.0.0/0", &[])], unauth());
    anonymous.metadata = None;
    let bad_regex = route(
        "r",
        vec![HttpRouteMatch {
            path: path(path_match::Kind::Regex("(".into())),
            ..HttpRouteMatch::default()
        }],
    );
    let cases = [
        (server(Vec::new(), vec![filtered]), "rule 0: a filter of a kind this proxy does not know"),
        (server(Vec::new(), vec![prefix_on_exact]), "not every match of the rule is a path prefix"),
        (server(vec![no_addr], Vec::new()), "without an address"),
        (server(vec![no_authn], Vec::new()), "no authentication"),
        (server(vec![anonymous], Vec::new()), "neither metadata nor a name"),
        (server(Vec::new(), vec![bad_regex]), "does not compile"),
        (server(vec![authz("x", &[("10.0.0.0/33", &[])], unauth())], Vec::new()), "too long"),
        (api::Server { protocol: None, ..server(Vec::new(), Vec::new()) }, "no protocol"),
    ];
    for (s, why) in cases {
        let e = ServerPolicy::from_api(s).expect_err(why);
        assert!(e.to_string().contains(why), "{why}: {e}");
    }
}

fn with_detect_timeout(timeout: Option<prost_types::Duration>) -> api::Server {
    let mut s = server(Vec::new(), Vec::new());
    if let Some(proxy_protocol::Kind::Detect(d)) = s.protocol.as_mut().and_then(|p| p.kind.as_mut())
    {
        d.timeout = timeout;
    }
    s
}

#[test]
fn a_detect_servers_timeout_is_kept_and_absurd_ones_refuse_the_update() {
    let t = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
    let kept = |timeout| ServerPolicy::from_api(with_detect_timeout(timeout)).expect("valid");
    assert_eq!(kept(None).detect_timeout, None, "none sent: the proxy's own");
    assert_eq!(kept(t(0, 200_000_000)).detect_timeout, Some(Duration::from_millis(200)));
    assert_eq!(kept(t(10, 0)).detect_timeout, Some(Duration::from_secs(10)));
    let year = crate::config::MAX_DURATION.as_secs() as i64;
    assert_eq!(kept(t(year, 0)).detect_timeout, Some(crate::config::MAX_DURATION));
    for (timeout, why) in
        [(t(-1, 0), "is negative"), (t(0, 0), "is zero"), (t(year + 1, 0), "longer than a year")]
    {
        let e = ServerPolicy::from_api(with_detect_timeout(timeout)).expect_err(why);
        assert!(e.to_string().contains(why) && e.to_string().contains("web-http"), "{why}: {e}");
    }
}
