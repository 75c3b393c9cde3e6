//! The `io.linkerd.proxy.inbound` messages, built as Linkerd's policy controller builds them
//! so that proxies label their authorization metrics the same way (`srv_kind`, `srv_name`,
//! `authz_kind`, `authz_name`, `route_name`).

use std::{collections::BTreeSet, time::Duration};

use ipnet::IpNet;
use linkerd2_proxy_api::{
    grpc_route as grpc, http_route as http,
    http_types::{HttpMethod, http_method},
    inbound as pb,
    meta::{Metadata, Resource, metadata},
};

use super::model::{Network, ProxyProtocol};

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

/// The HTTP routes of a port with no HTTPRoutes: `default` (every request, the server's
/// authorizations) and, when the pod has HTTP probes on the port, `probe`.
fn http_routes(authorizations: &[pb::Authz], probes: &BTreeSet<String>) -> Vec<pb::HttpRoute> {
    let prefix = |p: &str| http::PathMatch { kind: Some(http::path_match::Kind::Prefix(p.into())) };
    let mut routes = vec![pb::HttpRoute {
        metadata: default_meta("default"),
        hosts: Vec::new(),
        authorizations: authorizations.to_vec(),
        rules: vec![pb::http_route::Rule {
            matches: vec![http::HttpRouteMatch { path: Some(prefix("/")), ..Default::default() }],
            filters: Vec::new(),
        }],
    }];
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

/// The gRPC counterpart of the `default` route: every call.
fn grpc_routes(authorizations: &[pb::Authz]) -> Vec<pb::GrpcRoute> {
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

/// A whole `Server` message.
pub fn server(
    origin: &Origin<'_>,
    group: &str,
    protocol: ProxyProtocol,
    authorizations: Vec<pb::Authz>,
    probes: &BTreeSet<String>,
) -> pb::Server {
    use pb::proxy_protocol::{Detect, Grpc, Http1, Http2, Kind, Opaque, Tls};
    let kind = match protocol {
        ProxyProtocol::Unknown => Kind::Detect(Detect {
            timeout: prost_types::Duration::try_from(DETECT_TIMEOUT).ok(),
            http_routes: http_routes(&authorizations, probes),
            http_local_rate_limit: None,
        }),
        ProxyProtocol::Http1 => Kind::Http1(Http1 {
            routes: http_routes(&authorizations, probes),
            local_rate_limit: None,
        }),
        ProxyProtocol::Http2 => Kind::Http2(Http2 {
            routes: http_routes(&authorizations, probes),
            local_rate_limit: None,
        }),
        ProxyProtocol::Grpc => Kind::Grpc(Grpc { routes: grpc_routes(&authorizations) }),
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
