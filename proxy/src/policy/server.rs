//! A port's server policy, as Linkerd's policy API describes it
//! (`io.linkerd.proxy.inbound.Server`): the authorizations that admit a connection (a
//! client network and, optionally, a meshed identity), and for HTTP the routes a request
//! is matched to, each with authorizations of its own. The local default policy is
//! expressed in the same terms, so one decision path serves both.
//!
//! What the control plane sends is checked when it arrives: an update that this proxy
//! cannot enforce faithfully (a network without an address, a regex that does not
//! compile, a route filter it does not implement or that is malformed) is refused whole,
//! so that a policy is never half applied.

use std::{collections::HashMap, net::IpAddr, sync::Arc, time::Duration};

use http::{HeaderName, Method, Request};
use linkerd2_proxy_api::{
    grpc_route as grpc_api, http_route as route_api, inbound as api, meta, net as net_api,
};

use super::{DefaultPolicy, filter::Filters};
use crate::init::{Cidr, Subnets};

/// What metrics call a policy object: its kind and name (`srv_kind`/`srv_name`,
/// `authz_kind`/`authz_name`, `route_kind`/`route_name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Meta {
    pub kind: Arc<str>,
    pub name: Arc<str>,
}

impl Meta {
    pub fn new(kind: &str, name: &str) -> Self {
        Meta { kind: kind.into(), name: name.into() }
    }

    pub(super) fn from_metadata(m: meta::Metadata) -> Self {
        match m.kind {
            Some(meta::metadata::Kind::Resource(r)) => {
                // Linkerd labels resources by their lower-case kind (`server`, `httproute`).
                Meta::new(&r.kind.to_ascii_lowercase(), &r.name)
            }
            Some(meta::metadata::Kind::Default(name)) => Meta::new("default", &name),
            None => Meta::new("default", ""),
        }
    }

    /// From the API's metadata, else from the older `labels` (`kind`, `name`) that
    /// controllers still send.
    fn from_api(
        metadata: Option<meta::Metadata>,
        labels: &HashMap<String, String>,
        what: &str,
    ) -> Result<Self, Invalid> {
        match metadata.filter(|m| m.kind.is_some()) {
            Some(m) => Ok(Meta::from_metadata(m)),
            None => match (labels.get("kind"), labels.get("name")) {
                (Some(kind), Some(name)) => Ok(Meta::new(kind, name)),
                (None, Some(name)) => Ok(Meta::new("default", name)),
                _ => Err(Invalid(format!("{what} has neither metadata nor a name label"))),
            },
        }
    }
}

/// An update the proxy cannot enforce as sent; the text says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid inbound policy: {0}")]
pub struct Invalid(pub String);

/// How the server's traffic is to be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerProtocol {
    Detect,
    Http1,
    Http2,
    Grpc,
    /// No detection: forwarded as TCP.
    Opaque,
    Tls,
}

/// One port's policy.
#[derive(Debug)]
pub struct ServerPolicy {
    pub meta: Meta,
    pub protocol: ServerProtocol,
    /// Decide connections that carry no HTTP.
    pub authorizations: Vec<Authz>,
    /// Decide HTTP requests. Empty: one default route with the server's authorizations
    /// (what controllers older than routes mean).
    pub routes: Vec<Route>,
    /// The route that stands in when `routes` is empty.
    default_route: Route,
    /// HTTP requests past the authorizations still have to pass this (429 when not).
    pub rate_limit: Option<super::rate_limit::RateLimit>,
    /// How long protocol detection waits on this port, when the policy says (`Detect`'s
    /// `timeout`); `None`: the proxy's own `--detect-timeout`.
    pub detect_timeout: Option<Duration>,
}

/// Who may pass: clients in one of the networks, authenticated as it says.
#[derive(Debug, Clone)]
pub struct Authz {
    pub meta: Meta,
    networks: Vec<Network>,
    authn: Authn,
}

#[derive(Debug, Clone)]
struct Network {
    net: Cidr,
    except: Vec<Cidr>,
}

#[derive(Debug, Clone)]
enum Authn {
    /// Any client, meshed or not.
    Unauthenticated,
    /// Meshed (mTLS) clients with any identity.
    AnyIdentity,
    /// Meshed clients with one of these identities, or one ending in one of the suffixes
    /// (each stored with its leading dot: `.prod.serviceaccount...`).
    Identities { names: Vec<String>, suffixes: Vec<String> },
}

/// An HTTP route: the requests it matches and who may send them.
#[derive(Debug, Clone)]
pub struct Route {
    pub meta: Meta,
    hosts: Vec<HostMatch>,
    rules: Vec<Rule>,
    pub authorizations: Vec<Authz>,
}

/// Requests that any of `matches` selects, and what is done to them.
#[derive(Debug, Clone)]
struct Rule {
    matches: Vec<RouteMatch>,
    /// `None`: forwarded as they are (shared: a request takes a reference, not a copy).
    filters: Option<Arc<Filters>>,
}

/// The route a request takes and what its rule does to it.
#[derive(Debug)]
pub struct Selected<'a> {
    pub route: &'a Route,
    pub filters: Option<&'a Arc<Filters>>,
    /// How much of the path the rule's match matched as a prefix (`None`: not a prefix
    /// match): what a redirect that replaces the prefix replaces.
    pub prefix_len: Option<usize>,
}

#[derive(Debug, Clone)]
enum HostMatch {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, Default)]
struct RouteMatch {
    path: Option<PathMatch>,
    headers: Vec<(HeaderName, ValueMatch)>,
    query: Vec<(String, ValueMatch)>,
    method: Option<Method>,
}

#[derive(Debug, Clone)]
enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(regex_lite::Regex),
}

#[derive(Debug, Clone)]
enum ValueMatch {
    Exact(Vec<u8>),
    Regex(regex_lite::Regex),
}

/// How specific a match is, Gateway API's way: the most specific matching route wins
/// (exact path, then the longest prefix, then regex; then a method; then more headers,
/// then more query parameters).
type Specificity = (u8, usize, bool, usize, usize);

impl Authz {
    /// Whether a client from `ip`, with the proven identity `client_id` if it is meshed,
    /// is authorized.
    pub fn allows(&self, ip: IpAddr, client_id: Option<&str>) -> bool {
        let in_networks = self
            .networks
            .iter()
            .any(|n| n.net.contains(ip) && !n.except.iter().any(|e| e.contains(ip)));
        in_networks
            && match &self.authn {
                Authn::Unauthenticated => true,
                Authn::AnyIdentity => client_id.is_some(),
                Authn::Identities { names, suffixes } => client_id.is_some_and(|id| {
                    names.iter().any(|n| n == id)
                        || suffixes.iter().any(|s| id.ends_with(s.as_str()))
                }),
            }
    }

    /// Everyone from `networks`, meshed or not (`authenticated`: meshed only).
    fn local(meta: Meta, networks: &[Cidr], authenticated: bool) -> Self {
        Authz {
            meta,
            networks: networks.iter().map(|&net| Network { net, except: Vec::new() }).collect(),
            authn: if authenticated { Authn::AnyIdentity } else { Authn::Unauthenticated },
        }
    }

    fn from_api(a: api::Authz) -> Result<Self, Invalid> {
        let meta = Meta::from_api(a.metadata, &a.labels, "an authorization")?;
        let bad = |why: String| Invalid(format!("authorization {}: {why}", meta.name));
        let networks = a
            .networks
            .into_iter()
            .map(|n| {
                let net = cidr(n.net).map_err(&bad)?;
                let except = n.except.into_iter().map(|e| cidr(Some(e))).collect::<Result<_, _>>();
                Ok(Network { net, except: except.map_err(&bad)? })
            })
            .collect::<Result<Vec<_>, Invalid>>()?;
        use api::authn::{Permit, permit_mesh_tls::Clients};
        let authn = match a.authentication.and_then(|a| a.permit) {
            Some(Permit::Unauthenticated(_)) => Authn::Unauthenticated,
            Some(Permit::MeshTls(m)) => match m.clients {
                // Meshed TLS always carries a client certificate here: "any meshed client".
                Some(Clients::Unauthenticated(_)) => Authn::AnyIdentity,
                Some(Clients::Identities(ids)) => {
                    let names: Vec<String> = ids.identities.into_iter().map(|i| i.name).collect();
                    let suffixes: Vec<Vec<String>> =
                        ids.suffixes.into_iter().map(|s| s.parts).collect();
                    if suffixes.iter().any(Vec::is_empty) {
                        Authn::AnyIdentity
                    } else {
                        let suffixes =
                            suffixes.iter().map(|p| format!(".{}", p.join("."))).collect();
                        Authn::Identities { names, suffixes }
                    }
                }
                None => return Err(bad("meshTLS authentication without clients".into())),
            },
            None => return Err(bad("no authentication".into())),
        };
        // An authorization without networks authorizes nobody (the API says to ignore it).
        Ok(Authz { meta, networks, authn })
    }
}

fn cidr(net: Option<net_api::IpNetwork>) -> Result<Cidr, String> {
    let net = net.ok_or("a network without an address")?;
    let ip: IpAddr = net
        .ip
        .ok_or("a network without an address")?
        .try_into()
        .map_err(|_| "a network with a malformed address".to_string())?;
    let prefix =
        u8::try_from(net.prefix_len).map_err(|_| format!("prefix /{} too long", net.prefix_len))?;
    Cidr::masked(ip, prefix).ok_or_else(|| format!("{ip}/{prefix}: prefix too long"))
}

impl Route {
    /// The default route: every request, with `authorizations`.
    fn default_with(authorizations: Vec<Authz>) -> Self {
        Route {
            meta: Meta::new("default", "default"),
            hosts: Vec::new(),
            rules: vec![Rule { matches: vec![RouteMatch::default()], filters: None }],
            authorizations,
        }
    }

    /// How specifically this route matches the request, if it does, with the rule and
    /// the match that matched it.
    fn matches<B>(&self, req: &Request<B>) -> Option<(Specificity, &Rule, &RouteMatch)> {
        if !self.hosts.is_empty() {
            let host = request_host(req)?;
            let ok = self.hosts.iter().any(|h| match h {
                HostMatch::Exact(name) => host.eq_ignore_ascii_case(name),
                HostMatch::Suffix(s) => {
                    host.len() > s.len() && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
                }
            });
            if !ok {
                return None;
            }
        }
        let matched = self.rules.iter().flat_map(|r| r.matches.iter().map(move |m| (r, m)));
        matched.filter_map(|(r, m)| Some((m.matches(req)?, r, m))).max_by_key(|(s, _, _)| *s)
    }

    fn from_api(r: api::HttpRoute) -> Result<Self, Invalid> {
        let rules = r.rules.into_iter().map(|rule| (Filters::from_api(rule.filters), rule.matches));
        Route::assemble(
            r.metadata,
            r.hosts,
            rules,
            route_match,
            RouteMatch::default,
            r.authorizations,
        )
    }

    fn from_grpc_api(r: api::GrpcRoute) -> Result<Self, Invalid> {
        let rules =
            r.rules.into_iter().map(|rule| (Filters::from_grpc_api(rule.filters), rule.matches));
        // A rule without matches takes every call: every POST.
        let any_call = || RouteMatch { method: Some(Method::POST), ..RouteMatch::default() };
        Route::assemble(r.metadata, r.hosts, rules, grpc_match, any_call, r.authorizations)
    }

    /// A route from the API's parts: `rules` as (filters, matches), each match
    /// converted by `convert`; a rule without matches gets `match_all`.
    fn assemble<M>(
        metadata: Option<meta::Metadata>,
        hosts: Vec<route_api::HostMatch>,
        rules: impl Iterator<Item = (Result<Option<Filters>, String>, Vec<M>)>,
        convert: fn(M) -> Result<RouteMatch, String>,
        match_all: impl Fn() -> RouteMatch,
        authorizations: Vec<api::Authz>,
    ) -> Result<Self, Invalid> {
        let meta = Meta::from_api(metadata, &HashMap::new(), "a route")?;
        let bad = |why: String| Invalid(format!("route {}: {why}", meta.name));
        let hosts =
            hosts.into_iter().map(|h| host_match(h).map_err(&bad)).collect::<Result<_, _>>()?;
        let mut converted = Vec::new();
        for (i, (filters, matches)) in rules.enumerate() {
            // Ignoring a filter (a header it removes, a failure it injects) would enforce
            // less than the policy says: one this proxy cannot apply refuses the update.
            let filters = filters.map_err(|e| bad(format!("rule {i}: {e}")))?;
            let matches = matches.into_iter().map(|m| convert(m).map_err(&bad));
            let mut matches: Vec<RouteMatch> = matches.collect::<Result<_, _>>()?;
            if matches.is_empty() {
                matches.push(match_all());
            }
            if filters.as_ref().is_some_and(Filters::replaces_prefix)
                && matches.iter().any(|m| m.prefix_len().is_none())
            {
                return Err(bad(format!(
                    "rule {i}: a redirect replaces the path prefix, but not every match of the rule is a path prefix match"
                )));
            }
            converted.push(Rule { matches, filters: filters.map(Arc::new) });
        }
        let authorizations =
            authorizations.into_iter().map(Authz::from_api).collect::<Result<_, _>>()?;
        Ok(Route { meta, hosts, rules: converted, authorizations })
    }
}

impl RouteMatch {
    /// How much of a path this match matches when it matches: a prefix's length without
    /// its trailing `/` (no path match: the empty prefix); `None` for exact and regex.
    fn prefix_len(&self) -> Option<usize> {
        match &self.path {
            None => Some(0),
            Some(PathMatch::Prefix(p)) => Some(p.trim_end_matches('/').len()),
            Some(PathMatch::Exact(_) | PathMatch::Regex(_)) => None,
        }
    }

    fn matches<B>(&self, req: &Request<B>) -> Option<Specificity> {
        let path = req.uri().path();
        let path_score = match &self.path {
            None => (0, 0),
            Some(PathMatch::Exact(p)) => (p == path).then_some((3, p.len()))?,
            Some(PathMatch::Prefix(p)) => prefix_matches(p, path).then_some((2, p.len()))?,
            Some(PathMatch::Regex(r)) => r.is_match(path).then_some((1, r.as_str().len()))?,
        };
        if self.method.as_ref().is_some_and(|m| m != req.method()) {
            return None;
        }
        for (name, value) in &self.headers {
            if !req.headers().get_all(name).iter().any(|v| value.matches(v.as_bytes())) {
                return None;
            }
        }
        if !self.query.is_empty() {
            let query = req.uri().query().unwrap_or("");
            for (name, value) in &self.query {
                let found = query
                    .split('&')
                    .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                    .any(|(k, v)| k == name && value.matches(v.as_bytes()));
                if !found {
                    return None;
                }
            }
        }
        Some((
            path_score.0,
            path_score.1,
            self.method.is_some(),
            self.headers.len(),
            self.query.len(),
        ))
    }
}

impl ValueMatch {
    fn matches(&self, v: &[u8]) -> bool {
        match self {
            ValueMatch::Exact(want) => v == want.as_slice(),
            ValueMatch::Regex(r) => std::str::from_utf8(v).is_ok_and(|s| r.is_match(s)),
        }
    }
}

/// Gateway API's path prefix: whole path segments (`/api` matches `/api` and `/api/x`,
/// not `/apix`).
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The request's host name, without a port: from the URI (HTTP/2, absolute-form) or `Host`.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    let host = match req.uri().host() {
        Some(h) => h,
        None => {
            let h = req.headers().get(http::header::HOST)?.to_str().ok()?;
            h.rsplit_once(':')
                .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                .map_or(h, |(h, _)| h)
        }
    };
    Some(host.trim_end_matches('.'))
}

/// A regex that must match the whole value, as Gateway API means it.
fn regex(pattern: &str) -> Result<regex_lite::Regex, String> {
    regex_lite::Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("regex {pattern:?} does not compile: {e}"))
}

fn host_match(h: route_api::HostMatch) -> Result<HostMatch, String> {
    use route_api::host_match::Match;
    match h.r#match {
        Some(Match::Exact(name)) => Ok(HostMatch::Exact(name.trim_end_matches('.').to_string())),
        Some(Match::Suffix(s)) => {
            let mut labels = s.reverse_labels;
            labels.reverse();
            Ok(HostMatch::Suffix(format!(".{}", labels.join("."))))
        }
        None => Err("a host match without a host".into()),
    }
}

fn value_match(v: Option<route_api::header_match::Value>) -> Result<ValueMatch, String> {
    use route_api::header_match::Value;
    match v {
        Some(Value::Exact(bytes)) => Ok(ValueMatch::Exact(bytes)),
        Some(Value::Regex(r)) => Ok(ValueMatch::Regex(regex(&r)?)),
        None => Err("a header match without a value".into()),
    }
}

fn header_matches(
    headers: Vec<route_api::HeaderMatch>,
) -> Result<Vec<(HeaderName, ValueMatch)>, String> {
    headers
        .into_iter()
        .map(|h| {
            let name = HeaderName::try_from(h.name.as_str())
                .map_err(|_| format!("{:?} is not a header name", h.name))?;
            Ok((name, value_match(h.value)?))
        })
        .collect()
}

fn route_match(m: route_api::HttpRouteMatch) -> Result<RouteMatch, String> {
    use route_api::{path_match::Kind, query_param_match::Value};
    let path = match m.path.and_then(|p| p.kind) {
        None => None,
        Some(Kind::Exact(p)) => Some(PathMatch::Exact(p)),
        Some(Kind::Prefix(p)) => Some(PathMatch::Prefix(p)),
        Some(Kind::Regex(r)) => Some(PathMatch::Regex(regex(&r)?)),
    };
    let query = m
        .query_params
        .into_iter()
        .map(|q| {
            let v = match q.value {
                Some(Value::Exact(s)) => ValueMatch::Exact(s.into_bytes()),
                Some(Value::Regex(r)) => ValueMatch::Regex(regex(&r)?),
                None => return Err("a query parameter match without a value".to_string()),
            };
            Ok((q.name, v))
        })
        .collect::<Result<_, String>>()?;
    let method = m
        .method
        .map(|m| Method::try_from(m).map_err(|e| format!("bad method: {e}")))
        .transpose()?;
    Ok(RouteMatch { path, headers: header_matches(m.headers)?, query, method })
}

/// gRPC is `POST /service/method`: an RPC match is a path match.
fn grpc_match(m: grpc_api::GrpcRouteMatch) -> Result<RouteMatch, String> {
    let path = match m.rpc {
        None => None,
        Some(rpc) => match (rpc.service.as_str(), rpc.method.as_str()) {
            ("", "") => None,
            (service, "") => Some(PathMatch::Prefix(format!("/{service}"))),
            ("", method) => {
                Some(PathMatch::Regex(regex(&format!("/[^/]+/{}", regex_lite::escape(method)))?))
            }
            (service, method) => Some(PathMatch::Exact(format!("/{service}/{method}"))),
        },
    };
    Ok(RouteMatch {
        path,
        headers: header_matches(m.headers)?,
        query: Vec::new(),
        method: Some(Method::POST),
    })
}

impl ServerPolicy {
    /// The route a request takes: the most specific match; `None`: no route matches.
    pub fn route<B>(&self, req: &Request<B>) -> Option<&Route> {
        self.select(req).map(|s| s.route)
    }

    /// The route a request takes, with its rule's filters.
    pub fn select<B>(&self, req: &Request<B>) -> Option<Selected<'_>> {
        if self.routes.is_empty() {
            let route = &self.default_route;
            return Some(Selected { route, filters: None, prefix_len: None });
        }
        let mut best: Option<(Specificity, Selected<'_>)> = None;
        for route in &self.routes {
            if let Some((s, rule, m)) = route.matches(req)
                && best.as_ref().is_none_or(|(b, _)| s > *b)
            {
                let filters = rule.filters.as_ref();
                best = Some((s, Selected { route, filters, prefix_len: m.prefix_len() }));
            }
        }
        best.map(|(_, s)| s)
    }

    /// The first of the server's authorizations that lets the client in.
    pub fn authorize_tcp(&self, ip: IpAddr, client_id: Option<&str>) -> Option<&Authz> {
        self.authorizations.iter().find(|a| a.allows(ip, client_id))
    }

    /// Whether some authorization (of the server, or of any route) could let the client
    /// in: a plaintext client that none could gets no speculative upstream connection.
    pub fn may_admit(&self, ip: IpAddr, client_id: Option<&str>) -> bool {
        let routes = self.routes.iter().flat_map(|r| r.authorizations.iter());
        self.authorizations.iter().chain(routes).any(|a| a.allows(ip, client_id))
    }

    /// The same policy under another name.
    pub fn renamed(mut self, name: &str) -> Self {
        self.meta = Meta::new(&self.meta.kind, name);
        self
    }

    /// The local default policy as a server: one authorization, named after the policy
    /// (`deny`: none).
    pub fn from_default(policy: DefaultPolicy, cluster: &Subnets) -> Self {
        let all: [Cidr; 2] = [Cidr::ALL_V4, Cidr::ALL_V6];
        let cluster: Vec<Cidr> = cluster.iter().copied().collect();
        let meta = Meta::new("default", policy.as_str());
        let authz = |networks: &[Cidr], authenticated| {
            vec![Authz::local(meta.clone(), networks, authenticated)]
        };
        let authorizations = match policy {
            DefaultPolicy::AllUnauthenticated | DefaultPolicy::Audit => authz(&all, false),
            DefaultPolicy::AllAuthenticated => authz(&all, true),
            DefaultPolicy::ClusterUnauthenticated => authz(&cluster, false),
            DefaultPolicy::ClusterAuthenticated => authz(&cluster, true),
            DefaultPolicy::Deny => Vec::new(),
        };
        ServerPolicy {
            meta: meta.clone(),
            protocol: ServerProtocol::Detect,
            default_route: Route::default_with(authorizations.clone()),
            authorizations,
            routes: Vec::new(),
            rate_limit: None,
            detect_timeout: None,
        }
    }

    /// A policy the control plane sent.
    pub fn from_api(s: api::Server) -> Result<Self, Invalid> {
        use api::proxy_protocol::Kind;
        let meta = Meta::from_api(None, &s.labels, "a server")?;
        let authorizations: Vec<Authz> =
            s.authorizations.into_iter().map(Authz::from_api).collect::<Result<_, _>>()?;
        let http = |routes: Vec<api::HttpRoute>| -> Result<Vec<Route>, Invalid> {
            routes.into_iter().map(Route::from_api).collect()
        };
        let mut detect_timeout = None;
        let (protocol, routes, rate_limit) = match s.protocol.and_then(|p| p.kind) {
            Some(Kind::Detect(d)) => {
                detect_timeout =
                    d.timeout.map(|t| detect_timeout_from_api(t, &meta)).transpose()?;
                (ServerProtocol::Detect, http(d.http_routes)?, d.http_local_rate_limit)
            }
            Some(Kind::Http1(h)) => (ServerProtocol::Http1, http(h.routes)?, h.local_rate_limit),
            Some(Kind::Http2(h)) => (ServerProtocol::Http2, http(h.routes)?, h.local_rate_limit),
            Some(Kind::Grpc(g)) => (
                ServerProtocol::Grpc,
                g.routes.into_iter().map(Route::from_grpc_api).collect::<Result<_, _>>()?,
                None,
            ),
            Some(Kind::Opaque(_)) => (ServerProtocol::Opaque, Vec::new(), None),
            Some(Kind::Tls(_)) => (ServerProtocol::Tls, Vec::new(), None),
            None => return Err(Invalid(format!("server {} has no protocol", meta.name))),
        };
        let rate_limit = match rate_limit {
            Some(r) => super::rate_limit::RateLimit::from_api(r)?,
            None => None,
        };
        Ok(ServerPolicy {
            meta,
            protocol,
            default_route: Route::default_with(authorizations.clone()),
            authorizations,
            routes,
            rate_limit,
            detect_timeout,
        })
    }
}

/// A detect timeout the proxy can keep: more than zero (zero would close every client
/// before it could speak) and no longer than the longest duration a setting takes (a
/// deadline past it could overflow the clock). Anything else refuses the update.
fn detect_timeout_from_api(t: prost_types::Duration, meta: &Meta) -> Result<Duration, Invalid> {
    let bad = |why: &str| Invalid(format!("server {}: detect timeout {t:?} {why}", meta.name));
    let d = Duration::try_from(t).map_err(|_| bad("is negative"))?;
    if d.is_zero() {
        return Err(bad("is zero"));
    }
    if d > crate::config::MAX_DURATION {
        return Err(bad("is longer than a year"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests;
