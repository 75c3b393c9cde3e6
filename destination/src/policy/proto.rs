//! The `io.linkerd.proxy.inbound` messages, built as Linkerd's policy controller builds them
//! so that proxies label their authorization metrics the same way (`srv_kind`, `srv_name`,
//! `authz_kind`, `authz_name`, `route_name`).

use std::{collections::BTreeSet, time::Duration};

use ipnet::IpNet;
use linkerd2_proxy_api::{
    grpc_route as grpc, http_route as http,
    http_types::{Headers, HttpMethod, Scheme, headers, http_method},
    inbound as pb,
    meta::{Metadata, Resource, metadata},
};

use super::{
    model::{Network, ProxyProtocol},
    rate_limit::{RATE_LIMIT_KIND, RateLimitPolicy},
    route::{self, GrpcRoute, HttpRoute, grpc::GRPC_ROUTE_KIND},
};
use crate::split::GATEWAY_GROUP;

/// How long a proxy reads a connection's first bytes to tell HTTP from the rest (Linkerd's).
pub const DETECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Who an authorization lets in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authentication {
    /// Anyone, TLS or not.
    Unauthenticated,
    /// Meshed clients with one of these identities (exact names, and DNS suffixes; an empty
    /// suffix is any identity).
    MeshTls { identities: BTreeSet<String>, suffixes: BTreeSet<Vec<String>> },
}

/// Where an authorization (or a server) comes from: a resource, or a default by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin<'a> {
    Default(&'a str),
    Resource { kind: &'a str, name: &'a str },
}

fn labels(origin: &Origin<'_>, group: &str) -> std::collections::HashMap<String, String> {
    let (group, kind, name) = match origin {
        Origin::Default(name) => ("", "default", *name),
        Origin::Resource { kind, name } => (group, *kind, *name),
    };
    [("group", group), ("kind", kind), ("name", name)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// 0.0.0.0/0 and ::/0.
pub fn all_networks() -> Vec<Network> {
    ["0.0.0.0/0", "::/0"]
        .into_iter()
        .filter_map(|n| n.parse::<IpNet>().ok())
        .map(|net| Network { net, except: Vec::new() })
        .collect()
}

pub fn networks(nets: &[IpNet]) -> Vec<Network> {
    nets.iter().map(|net| Network { net: *net, except: Vec::new() }).collect()
}

/// An authorization. A resource's metadata kind is lowercase, as Linkerd's controller sends
/// it: the proxy copies it into its `authz_kind` metric label.
pub fn authz(
    origin: &Origin<'_>,
    group: &str,
    nets: &[Network],
    authn: &Authentication,
) -> pb::Authz {
    let kind = match origin {
        Origin::Default(name) => metadata::Kind::Default(name.to_string()),
        Origin::Resource { kind, name } => metadata::Kind::Resource(Resource {
            group: group.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
            ..Default::default()
        }),
    };
    let permit = match authn {
        Authentication::Unauthenticated => {
            pb::authn::Permit::Unauthenticated(pb::authn::PermitUnauthenticated {})
        }
        Authentication::MeshTls { identities, suffixes } => {
            use pb::authn::permit_mesh_tls::{Clients, PermitClientIdentities};
            pb::authn::Permit::MeshTls(pb::authn::PermitMeshTls {
                clients: Some(Clients::Identities(PermitClientIdentities {
                    identities: identities
                        .iter()
                        .map(|name| pb::Identity { name: name.clone() })
                        .collect(),
                    suffixes: suffixes
                        .iter()
                        .map(|parts| pb::IdentitySuffix { parts: parts.clone() })
                        .collect(),
                })),
            })
        }
    };
    pb::Authz {
        networks: nets
            .iter()
            .map(|n| pb::Network {
                net: Some(n.net.into()),
                except: n.except.iter().map(|e| (*e).into()).collect(),
            })
            .collect(),
        authentication: Some(pb::Authn { permit: Some(permit) }),
        labels: labels(origin, group),
        metadata: Some(Metadata { kind: Some(kind) }),
    }
}

fn default_meta(name: &str) -> Option<Metadata> {
    Some(Metadata { kind: Some(metadata::Kind::Default(name.to_string())) })
}

/// The kubelet's probes: `GET` on the probe paths of this port, from anywhere.
fn probe_authz() -> pb::Authz {
    authz(&Origin::Default("probe"), "", &all_networks(), &Authentication::Unauthenticated)
}

/// The HTTP routes of a port: its HTTPRoutes when it has any, else `default` (every
/// request, the server's authorizations); and, when the pod has HTTP probes on the port,
/// `probe`.
fn http_routes(
    authorizations: &[pb::Authz],
    probes: &BTreeSet<String>,
    attached: Option<&[pb::HttpRoute]>,
) -> Vec<pb::HttpRoute> {
    let prefix = |p: &str| http::PathMatch { kind: Some(http::path_match::Kind::Prefix(p.into())) };
    let mut routes = match attached {
        Some(routes) => routes.to_vec(),
        None => vec![pb::HttpRoute {
            metadata: default_meta("default"),
            hosts: Vec::new(),
            authorizations: authorizations.to_vec(),
            rules: vec![pb::http_route::Rule {
                matches: vec![http::HttpRouteMatch {
                    path: Some(prefix("/")),
                    ..Default::default()
                }],
                filters: Vec::new(),
            }],
        }],
    };
    if !probes.is_empty() {
        let get = HttpMethod {
            r#type: Some(http_method::Type::Registered(http_method::Registered::Get.into())),
        };
        let matches = probes
            .iter()
            .map(|path| http::HttpRouteMatch {
                path: Some(http::PathMatch {
                    kind: Some(http::path_match::Kind::Exact(path.clone())),
                }),
                method: Some(get.clone()),
                ..Default::default()
            })
            .collect();
        routes.push(pb::HttpRoute {
            metadata: default_meta("probe"),
            hosts: Vec::new(),
            authorizations: vec![probe_authz()],
            rules: vec![pb::http_route::Rule { matches, filters: Vec::new() }],
        });
    }
    routes
}

/// The gRPC counterpart of `http_routes`: the port's GRPCRoutes when it has any, else
/// `default`, every call.
fn grpc_routes(
    authorizations: &[pb::Authz],
    attached: Option<&[pb::GrpcRoute]>,
) -> Vec<pb::GrpcRoute> {
    if let Some(routes) = attached {
        return routes.to_vec();
    }
    vec![pb::GrpcRoute {
        metadata: default_meta("default"),
        hosts: Vec::new(),
        authorizations: authorizations.to_vec(),
        rules: vec![pb::grpc_route::Rule {
            matches: vec![grpc::GrpcRouteMatch::default()],
            filters: Vec::new(),
        }],
    }]
}

fn route_meta(group: &str, kind: &str, name: &str) -> Option<Metadata> {
    Some(Metadata {
        kind: Some(metadata::Kind::Resource(Resource {
            group: group.to_string(),
            kind: kind.to_string(),
            name: name.to_string(),
            ..Default::default()
        })),
    })
}

/// An HTTPRoute as the proxy takes it, with the authorizations that apply to it.
pub fn http_route(r: &HttpRoute, group: &str, authorizations: Vec<pb::Authz>) -> pb::HttpRoute {
    use http::{path_match, query_param_match};
    let hosts = host_matches(&r.hosts);
    let one = |m: &route::RouteMatch| http::HttpRouteMatch {
        path: m.path.as_ref().map(|p| http::PathMatch {
            kind: Some(match p {
                route::PathMatch::Exact(p) => path_match::Kind::Exact(p.clone()),
                route::PathMatch::Prefix(p) => path_match::Kind::Prefix(p.clone()),
                route::PathMatch::Regex(r) => path_match::Kind::Regex(r.clone()),
            }),
        }),
        headers: header_matches(&m.headers),
        query_params: m
            .query
            .iter()
            .map(|(name, v)| http::QueryParamMatch {
                name: name.clone(),
                value: Some(match v {
                    route::ValueMatch::Exact(s) => query_param_match::Value::Exact(s.clone()),
                    route::ValueMatch::Regex(r) => query_param_match::Value::Regex(r.clone()),
                }),
            })
            .collect(),
        method: m
            .method
            .as_deref()
            .and_then(http_method::Registered::from_str_name)
            .map(|r| HttpMethod { r#type: Some(http_method::Type::Registered(r.into())) }),
    };
    pb::HttpRoute {
        metadata: route_meta(group, "HTTPRoute", &r.key.name),
        hosts,
        authorizations,
        rules: r
            .rules
            .iter()
            .map(|rule| pb::http_route::Rule {
                matches: rule.matches.iter().map(one).collect(),
                filters: rule.filters.iter().map(filter).collect(),
            })
            .collect(),
    }
}

fn host_matches(hosts: &[route::HostMatch]) -> Vec<http::HostMatch> {
    use http::host_match;
    hosts
        .iter()
        .map(|h| http::HostMatch {
            r#match: Some(match h {
                route::HostMatch::Exact(name) => host_match::Match::Exact(name.clone()),
                route::HostMatch::Suffix(labels) => host_match::Match::Suffix(host_match::Suffix {
                    reverse_labels: labels.iter().rev().cloned().collect(),
                }),
            }),
        })
        .collect()
}

fn header_matches(headers: &[(String, route::ValueMatch)]) -> Vec<http::HeaderMatch> {
    use http::header_match;
    headers
        .iter()
        .map(|(name, v)| http::HeaderMatch {
            name: name.clone(),
            value: Some(match v {
                route::ValueMatch::Exact(s) => header_match::Value::Exact(s.clone().into()),
                route::ValueMatch::Regex(r) => header_match::Value::Regex(r.clone()),
            }),
        })
        .collect()
}

/// A GRPCRoute as the proxy takes it, with the authorizations that apply to it. An RPC
/// match names a service, a method or both; the API reads an empty string as any.
pub fn grpc_route(r: &GrpcRoute, authorizations: Vec<pb::Authz>) -> pb::GrpcRoute {
    let one = |m: &route::grpc::GrpcMatch| grpc::GrpcRouteMatch {
        rpc: (m.service.is_some() || m.method.is_some()).then(|| grpc::GrpcRpcMatch {
            service: m.service.clone().unwrap_or_default(),
            method: m.method.clone().unwrap_or_default(),
        }),
        headers: header_matches(&m.headers),
    };
    pb::GrpcRoute {
        metadata: route_meta(GATEWAY_GROUP, GRPC_ROUTE_KIND, &r.key.name),
        hosts: host_matches(&r.hosts),
        authorizations,
        rules: r
            .rules
            .iter()
            .map(|rule| pb::grpc_route::Rule {
                matches: rule.matches.iter().map(one).collect(),
                filters: rule
                    .filters
                    .iter()
                    .map(|m| pb::grpc_route::Filter {
                        kind: Some(pb::grpc_route::filter::Kind::RequestHeaderModifier(
                            header_modifier(m),
                        )),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The gRPC counterpart of [`no_route`], named after a GRPCRoute that cannot be served.
pub fn no_grpc_route(name: &str) -> pb::GrpcRoute {
    pb::GrpcRoute {
        metadata: route_meta(GATEWAY_GROUP, GRPC_ROUTE_KIND, name),
        hosts: Vec::new(),
        authorizations: Vec::new(),
        rules: Vec::new(),
    }
}

/// A rule's filter as Linkerd's inbound API carries it.
fn filter(f: &route::Filter) -> pb::http_route::Filter {
    use pb::http_route::filter::Kind;
    let kind = match f {
        route::Filter::RequestHeaders(m) => Kind::RequestHeaderModifier(header_modifier(m)),
        route::Filter::Redirect(r) => Kind::Redirect(http::RequestRedirect {
            scheme: r.scheme.as_deref().map(Scheme::from),
            host: r.hostname.clone().unwrap_or_default(),
            path: r.path.as_ref().map(|p| http::PathModifier {
                replace: Some(match p {
                    route::PathModifier::Full(p) => http::path_modifier::Replace::Full(p.clone()),
                    route::PathModifier::Prefix(p) => {
                        http::path_modifier::Replace::Prefix(p.clone())
                    }
                }),
            }),
            port: r.port.map_or(0, u32::from),
            // Always sent: the API's default (301) is not Gateway API's (302).
            status: u32::from(r.status),
        }),
    };
    pb::http_route::Filter { kind: Some(kind) }
}

/// A request header modifier, HTTP's and gRPC's alike.
fn header_modifier(m: &route::HeaderModifier) -> http::RequestHeaderModifier {
    let headers = |pairs: &[(String, String)]| {
        (!pairs.is_empty()).then(|| Headers {
            headers: pairs
                .iter()
                .map(|(name, value)| headers::Header {
                    name: name.clone(),
                    value: value.clone().into_bytes(),
                })
                .collect(),
        })
    };
    http::RequestHeaderModifier {
        add: headers(&m.add),
        set: headers(&m.set),
        remove: m.remove.clone(),
    }
}

/// A route that matches no request, named after an HTTPRoute that cannot be served: it
/// keeps the port's route list from being empty, which proxies read as "the default
/// route" (what controllers older than routes send).
pub fn no_route(group: &str, name: &str) -> pb::HttpRoute {
    pb::HttpRoute {
        metadata: route_meta(group, "HTTPRoute", name),
        hosts: Vec::new(),
        authorizations: Vec::new(),
        rules: Vec::new(),
    }
}

/// A Server's local rate limit, the override clients' identities already named (by
/// `identity`, from a service account's namespace and name).
pub fn rate_limit(
    p: &RateLimitPolicy,
    group: &str,
    identity: impl Fn(&str, &str) -> String,
) -> pb::HttpLocalRateLimit {
    use pb::http_local_rate_limit::{Limit, Override, r#override::ClientIdentities};
    let limit = |requests_per_second| Limit { requests_per_second };
    pb::HttpLocalRateLimit {
        metadata: Some(Metadata {
            kind: Some(metadata::Kind::Resource(Resource {
                group: group.to_string(),
                kind: RATE_LIMIT_KIND.to_string(),
                name: p.key.name.clone(),
                ..Default::default()
            })),
        }),
        total: p.total.map(limit),
        identity: p.identity.map(limit),
        overrides: p
            .overrides
            .iter()
            .map(|o| Override {
                limit: Some(limit(o.requests_per_second)),
                clients: Some(ClientIdentities {
                    identities: (o.service_accounts.iter())
                        .map(|sa| pb::Identity { name: identity(&sa.namespace, &sa.name) })
                        .collect(),
                }),
            })
            .collect(),
    }
}

/// The routes that attach to a port's Server, which replace its default route (`None`:
/// none do).
#[derive(Clone, Copy, Debug, Default)]
pub struct Attached<'a> {
    /// HTTPRoutes, of either group.
    pub http: Option<&'a [pb::HttpRoute]>,
    pub grpc: Option<&'a [pb::GrpcRoute]>,
}

/// A whole `Server` message. A gRPC server gets its GRPCRoutes only (as in Linkerd), and
/// keeps its default gRPC route whatever HTTP routes it has; the others their HTTPRoutes
/// only. `rate_limit` goes on the HTTP protocols (detected, HTTP/1, HTTP/2); the API has no place
/// for it on gRPC, opaque or TLS servers, so those are not limited.
pub fn server(
    origin: &Origin<'_>,
    group: &str,
    protocol: ProxyProtocol,
    authorizations: Vec<pb::Authz>,
    probes: &BTreeSet<String>,
    attached: Attached<'_>,
    rate_limit: Option<pb::HttpLocalRateLimit>,
) -> pb::Server {
    let routes = attached.http;
    use pb::proxy_protocol::{Detect, Grpc, Http1, Http2, Kind, Opaque, Tls};
    let kind = match protocol {
        ProxyProtocol::Unknown => Kind::Detect(Detect {
            timeout: prost_types::Duration::try_from(DETECT_TIMEOUT).ok(),
            http_routes: http_routes(&authorizations, probes, routes),
            http_local_rate_limit: rate_limit,
        }),
        ProxyProtocol::Http1 => Kind::Http1(Http1 {
            routes: http_routes(&authorizations, probes, routes),
            local_rate_limit: rate_limit,
        }),
        ProxyProtocol::Http2 => Kind::Http2(Http2 {
            routes: http_routes(&authorizations, probes, routes),
            local_rate_limit: rate_limit,
        }),
        ProxyProtocol::Grpc => {
            Kind::Grpc(Grpc { routes: grpc_routes(&authorizations, attached.grpc) })
        }
        ProxyProtocol::Opaque => Kind::Opaque(Opaque {}),
        ProxyProtocol::Tls => Kind::Tls(Tls {}),
    };
    pb::Server {
        protocol: Some(pb::ProxyProtocol { kind: Some(kind) }),
        server_ips: Vec::new(),
        authorizations,
        labels: labels(origin, group),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_as_the_inbound_api_carries_them() {
        use pb::http_route::filter::Kind;
        let f = filter(&route::Filter::RequestHeaders(route::HeaderModifier {
            add: Vec::new(),
            set: vec![("x-a".into(), "1".into())],
            remove: vec!["x-b".into()],
        }));
        let Some(Kind::RequestHeaderModifier(m)) = f.kind else { panic!("{f:?}") };
        assert_eq!(m.add, None, "nothing to add: no list");
        let set = m.set.expect("set");
        assert_eq!(
            (set.headers[0].name.as_str(), set.headers[0].value.as_slice()),
            ("x-a", &b"1"[..])
        );
        assert_eq!(m.remove, ["x-b"]);

        let f = filter(&route::Filter::Redirect(route::Redirect {
            scheme: Some("https".into()),
            hostname: Some("example.com".into()),
            path: Some(route::PathModifier::Prefix("/new".into())),
            port: Some(8443),
            status: 302,
        }));
        let Some(Kind::Redirect(r)) = f.kind else { panic!("{f:?}") };
        assert_eq!(r.scheme, Some(Scheme::from("https")));
        assert_eq!((r.host.as_str(), r.port, r.status), ("example.com", 8443, 302));
        assert_eq!(
            r.path.and_then(|p| p.replace),
            Some(http::path_modifier::Replace::Prefix("/new".into()))
        );
        // Left out: empty, which the API reads as "the request's".
        let f = filter(&route::Filter::Redirect(route::Redirect {
            scheme: None,
            hostname: None,
            path: None,
            port: None,
            status: 301,
        }));
        let Some(Kind::Redirect(r)) = f.kind else { panic!("{f:?}") };
        assert_eq!((r.scheme, r.host.as_str(), r.path, r.port), (None, "", None, 0));
    }

    #[test]
    fn grpc_route_filters_as_the_inbound_api_carries_them() {
        use pb::grpc_route::filter::Kind;
        let spec = serde_json::json!({
            "parentRefs": [{"group": "policy.weft.dev", "kind": "Server", "name": "web-grpc"}],
            "rules": [
                {"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "add": [{"name": "x-a", "value": "1"}], "remove": ["x-b"]
                }}]},
                {"matches": [{"method": {"method": "Ping"}}]}
            ]
        });
        let r =
            GrpcRoute::parse(crate::model::ObjKey::new("prod", "r"), None, &spec).expect("a route");
        let r = grpc_route(&r, Vec::new());
        let f = &r.rules[0].filters;
        assert_eq!(f.len(), 1, "{f:?}");
        let Some(Kind::RequestHeaderModifier(m)) = &f[0].kind else { panic!("{f:?}") };
        assert_eq!(m.set, None);
        let add = m.add.as_ref().expect("add");
        assert_eq!(
            (add.headers[0].name.as_str(), add.headers[0].value.as_slice()),
            ("x-a", &b"1"[..])
        );
        assert_eq!(m.remove, ["x-b"]);
        assert!(r.rules[1].filters.is_empty());
    }
}
