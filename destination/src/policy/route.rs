//! `HTTPRoute` (`policy.weft.dev/v1beta3`, the schema of Linkerd's `policy.linkerd.io`
//! HTTPRoute, and the Gateway API's `gateway.networking.k8s.io/v1` HTTPRoute, whose schema
//! is a superset of it for these fields) reduced to what inbound policy needs: the Servers
//! it attaches to, its host names and its rules' matches and filters (request header
//! modifiers and redirects, `filter`). Pure. `GRPCRoute`s, in [`grpc`], share its parents,
//! host names, header matches and filter checks.
//!
//! A route that names its parents but cannot be enforced as written (a filter the proxy
//! does not apply, a path or regex that is not valid) is kept as *unusable* with the reason:
//! it still claims its Servers, so their default route does not come back and what the
//! route would have served gets 404 instead of being served without its filter. Backend
//! references and timeouts are about forwarding, which an inbound proxy does not choose;
//! they are ignored, as Linkerd's inbound policy ignores them.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Deserialize;
use serde_json::Value;

use super::model::GROUP;
use crate::{model::ObjKey, split::GATEWAY_GROUP};

mod filter;
pub mod grpc;

pub use filter::{Filter, HeaderModifier, PathModifier, Redirect};
pub use grpc::GrpcRoute;

/// The version HTTPRoutes are served in (Linkerd's newest).
pub const ROUTE_VERSION: &str = "v1beta3";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    /// Matches the whole path.
    Regex(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueMatch {
    Exact(String),
    /// Matches the whole value.
    Regex(String),
}

/// All of which must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteMatch {
    pub path: Option<PathMatch>,
    pub headers: Vec<(String, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
    /// Upper case, one of Gateway API's nine.
    pub method: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com`: the labels after the wildcard, `[example, com]`.
    Suffix(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRoute {
    pub key: ObjKey,
    /// Its API group: [`GROUP`] or the Gateway API's ([`GATEWAY_GROUP`]). Two routes of one
    /// name in the two groups are two routes, and an AuthorizationPolicy names the group.
    pub group: &'static str,
    /// Routes are listed oldest first, as Gateway API orders ties.
    pub created: Option<Time>,
    /// The Servers (of the route's namespace) it attaches to.
    pub servers: BTreeSet<String>,
    pub hosts: Vec<HostMatch>,
    pub rules: Vec<Rule>,
    /// Why the route cannot be enforced as written; `None`: it can.
    pub unusable: Option<Unusable>,
}

/// Requests that any of `matches` selects, and the filters applied to them in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<RouteMatch>,
    pub filters: Vec<Filter>,
}

/// Why a route is claimed by its Servers but not sent to proxies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unusable {
    /// A metric label: `unsupported_filter` or `invalid_spec`.
    pub reason: &'static str,
    pub detail: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    parent_refs: Vec<ParentRef>,
    #[serde(default)]
    hostnames: Vec<String>,
    /// Absent: the CRD's default, one rule matching every request.
    #[serde(default)]
    rules: Option<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParentRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

/// A rule as written (outbound profile routes read it too, with its `timeouts`:
/// [`crate::profile::routes`]).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RuleSpec {
    #[serde(default)]
    pub matches: Option<Vec<MatchSpec>>,
    #[serde(default)]
    pub filters: Vec<Value>,
    #[serde(default)]
    pub timeouts: Option<TimeoutsSpec>,
}

/// A rule's `timeouts`, as written.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TimeoutsSpec {
    pub request: Option<String>,
    pub backend_request: Option<String>,
}

/// A rule's match as written (outbound profile routes read them too: [`crate::profile::routes`]).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MatchSpec {
    #[serde(default)]
    path: Option<TypedValue>,
    #[serde(default)]
    headers: Vec<NamedValue>,
    #[serde(default)]
    query_params: Vec<NamedValue>,
    #[serde(default)]
    method: Option<String>,
}

#[derive(Deserialize)]
struct TypedValue {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
struct NamedValue {
    name: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    value: String,
}

const METHODS: [&str; 9] =
    ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// The Servers (of the route's namespace) among a route's parents. Parents that are not
/// Servers (Services, Gateways) are other controllers' business; a Server of another
/// namespace cannot be attached to. `group`: the route's own group, which a parent without
/// one is in: a Gateway API route must name [`GROUP`] to attach to a Server.
fn servers(parents: &[ParentRef], group: &str, namespace: &str) -> BTreeSet<String> {
    parents
        .iter()
        .filter(|p| {
            p.kind.as_deref().is_some_and(|k| k.eq_ignore_ascii_case("Server"))
                && p.group.as_deref().unwrap_or(group) == GROUP
                && p.namespace.as_deref().is_none_or(|ns| ns.is_empty() || ns == namespace)
        })
        .map(|p| p.name.clone())
        .collect()
}

impl HttpRoute {
    /// Converts a `policy.weft.dev` route from its `spec`. `Err`: even its parents cannot be
    /// read, so it claims nothing. A route whose rules cannot be enforced is `Ok` with
    /// `unusable` set.
    pub fn parse(key: ObjKey, created: Option<Time>, value: &Value) -> Result<Self, String> {
        Self::parse_in(GROUP, key, created, value)
    }

    /// Converts a Gateway API HTTPRoute: as [`HttpRoute::parse`], with the Gateway API's
    /// defaults for parents (`group` `gateway.networking.k8s.io`, so a Server parent names
    /// its group).
    pub fn parse_gateway(
        key: ObjKey,
        created: Option<Time>,
        value: &Value,
    ) -> Result<Self, String> {
        Self::parse_in(GATEWAY_GROUP, key, created, value)
    }

    fn parse_in(
        group: &'static str,
        key: ObjKey,
        created: Option<Time>,
        value: &Value,
    ) -> Result<Self, String> {
        let spec: Spec = Spec::deserialize(value).map_err(|e| format!("spec: {e}"))?;
        let servers = servers(&spec.parent_refs, group, &key.namespace);
        let mut route = HttpRoute {
            key,
            group,
            created,
            servers,
            hosts: Vec::new(),
            rules: Vec::new(),
            unusable: None,
        };
        match convert(&spec) {
            Ok((hosts, rules)) => {
                route.hosts = hosts;
                route.rules = rules;
            }
            Err(unusable) => route.unusable = Some(unusable),
        }
        Ok(route)
    }
}

fn invalid(detail: String) -> Unusable {
    Unusable { reason: "invalid_spec", detail }
}

/// A route's host matches and rules.
type Matches = (Vec<HostMatch>, Vec<Rule>);

fn convert(spec: &Spec) -> Result<Matches, Unusable> {
    let hosts = hosts(&spec.hostnames)?;
    let Some(rules) = &spec.rules else {
        return Ok((hosts, vec![Rule { matches: vec![match_all()], filters: Vec::new() }]));
    };
    let mut converted = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let rule = RuleSpec::deserialize(rule).map_err(|e| invalid(format!("rules[{i}]: {e}")))?;
        let matches = match rule.matches {
            None => vec![match_all()],
            Some(ms) if ms.is_empty() => vec![match_all()],
            Some(ms) => ms
                .iter()
                .map(route_match)
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("rules[{i}]: {e}")))?,
        };
        let filters = filter::convert(i, &rule.filters, &matches)?;
        converted.push(Rule { matches, filters });
    }
    Ok((hosts, converted))
}

/// The CRD's default match: every request.
fn match_all() -> RouteMatch {
    RouteMatch { path: Some(PathMatch::Prefix("/".into())), ..Default::default() }
}

fn hosts(names: &[String]) -> Result<Vec<HostMatch>, Unusable> {
    names.iter().map(|h| host(h).map_err(invalid)).collect()
}

fn host(h: &str) -> Result<HostMatch, String> {
    let bad = || format!("hostname {h:?} is not a host name or *.suffix");
    let (wildcard, name) = match h.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, h),
    };
    let labels: Vec<&str> = name.split('.').collect();
    let valid =
        |l: &&str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if name.is_empty() || !labels.iter().all(valid) {
        return Err(bad());
    }
    let lower = name.to_ascii_lowercase();
    Ok(if wildcard {
        HostMatch::Suffix(lower.split('.').map(String::from).collect())
    } else {
        HostMatch::Exact(lower)
    })
}

/// A regex the proxy can compile (anchored, as Gateway API means a whole-value match).
fn regex(pattern: &str) -> Result<(), String> {
    regex_lite::Regex::new(&format!("^(?:{pattern})$"))
        .map(drop)
        .map_err(|e| format!("regex {pattern:?} does not compile: {e}"))
}

fn value_match(what: &str, v: &NamedValue) -> Result<(String, ValueMatch), String> {
    match v.kind.as_deref().unwrap_or("Exact") {
        "Exact" => Ok((v.name.clone(), ValueMatch::Exact(v.value.clone()))),
        "RegularExpression" => {
            regex(&v.value)?;
            Ok((v.name.clone(), ValueMatch::Regex(v.value.clone())))
        }
        other => {
            Err(format!("{what} {:?}: type {other:?} is not Exact or RegularExpression", v.name))
        }
    }
}

/// Header matches, names lowercased.
fn header_matches(specs: &[NamedValue]) -> Result<Vec<(String, ValueMatch)>, String> {
    let mut headers = Vec::new();
    for h in specs {
        filter::header_name(&h.name)?;
        let (name, value) = value_match("header", h)?;
        headers.push((name.to_ascii_lowercase(), value));
    }
    Ok(headers)
}

pub(crate) fn route_match(m: &MatchSpec) -> Result<RouteMatch, String> {
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" | "PathPrefix" if !value.starts_with('/') => {
                    return Err(format!("path {value:?} does not start with /"));
                }
                "Exact" => PathMatch::Exact(value),
                "PathPrefix" => PathMatch::Prefix(value),
                "RegularExpression" => {
                    regex(&value)?;
                    PathMatch::Regex(value)
                }
                other => {
                    return Err(format!(
                        "path type {other:?} is not Exact, PathPrefix or RegularExpression"
                    ));
                }
            }
        }
    };
    let headers = header_matches(&m.headers)?;
    let query = m
        .query_params
        .iter()
        .map(|q| value_match("query parameter", q))
        .collect::<Result<_, _>>()?;
    let method = match &m.method {
        None => None,
        Some(method) if METHODS.contains(&method.as_str()) => Some(method.clone()),
        Some(other) => {
            return Err(format!("method {other:?} is not one of {}", METHODS.join(", ")));
        }
    };
    Ok(RouteMatch { path: Some(path), headers, query, method })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(spec: Value) -> HttpRoute {
        HttpRoute::parse(ObjKey::new("prod", "r"), None, &spec).unwrap()
    }

    fn server_ref(name: &str) -> Value {
        json!({"group": "policy.weft.dev", "kind": "Server", "name": name})
    }

    #[test]
    fn parents_are_servers_of_the_route_namespace() {
        let r = parse(json!({"parentRefs": [
            server_ref("a"),
            {"kind": "Server", "name": "b"},
            {"group": "policy.linkerd.io", "kind": "Server", "name": "c"},
            {"group": "core", "kind": "Service", "name": "d", "port": 80},
            {"group": "policy.weft.dev", "kind": "Server", "name": "e", "namespace": "other"},
            {"group": "policy.weft.dev", "kind": "Server", "name": "f", "namespace": "prod"},
            {"name": "gateway"},
        ]}));
        assert_eq!(r.servers, ["a", "b", "f"].into_iter().map(String::from).collect());
        // No rules: the CRD's default, every request.
        assert_eq!(r.rules, vec![Rule { matches: vec![match_all()], filters: Vec::new() }]);
        assert_eq!(r.unusable, None);
    }

    #[test]
    fn matches_hosts_and_their_defaults() {
        let r = parse(json!({
            "parentRefs": [server_ref("a")],
            "hostnames": ["Web.Example.com", "*.example.com"],
            "rules": [
                {"matches": [
                    {"path": {"type": "Exact", "value": "/metrics"}, "method": "GET"},
                    {"path": {"type": "RegularExpression", "value": "/v[0-9]+/.*"},
                     "headers": [{"name": "X-Tenant", "value": "a"}, {"type": "RegularExpression", "name": "x-b", "value": "b+"}],
                     "queryParams": [{"name": "q", "value": "1"}]}
                ]},
                {"matches": [{"method": "POST"}]},
                {"backendRefs": [{"name": "web", "port": 80}], "timeouts": {"request": "1s"}}
            ]
        }));
        assert_eq!(
            r.hosts,
            [
                HostMatch::Exact("web.example.com".into()),
                HostMatch::Suffix(vec!["example".into(), "com".into()])
            ]
        );
        assert_eq!(r.rules.len(), 3);
        assert_eq!(r.rules[0].matches[0].path, Some(PathMatch::Exact("/metrics".into())));
        assert_eq!(r.rules[0].matches[0].method.as_deref(), Some("GET"));
        let m = &r.rules[0].matches[1];
        assert_eq!(m.path, Some(PathMatch::Regex("/v[0-9]+/.*".into())));
        assert_eq!(
            m.headers,
            [
                ("x-tenant".to_string(), ValueMatch::Exact("a".into())),
                ("x-b".to_string(), ValueMatch::Regex("b+".into()))
            ]
        );
        assert_eq!(m.query, [("q".to_string(), ValueMatch::Exact("1".into()))]);
        // A match without a path is a prefix match on /; a rule without matches, every request.
        assert_eq!(r.rules[1].matches[0].path, Some(PathMatch::Prefix("/".into())));
        assert_eq!(r.rules[2].matches, vec![match_all()]);
    }

    #[test]
    fn rules_keep_their_filters_in_order() {
        let r = parse(json!({
            "parentRefs": [server_ref("a")],
            "rules": [
                {"filters": [
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-a", "value": "1"}]}},
                    {"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}
                ]},
                {"matches": [{"path": {"type": "Exact", "value": "/x"}}]}
            ]
        }));
        assert_eq!(r.unusable, None);
        // A rule without matches is a PathPrefix `/` match, so the prefix can be replaced.
        assert_eq!(r.rules[0].matches, vec![match_all()]);
        assert!(matches!(
            r.rules[0].filters.as_slice(),
            [Filter::RequestHeaders(_), Filter::Redirect(Redirect { status: 302, .. })]
        ));
        assert!(r.rules[1].filters.is_empty());
    }

    #[test]
    fn routes_that_cannot_be_enforced_are_unusable_but_keep_their_parents() {
        for (rules, reason, detail) in [
            (
                json!([{"filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "a"}}]}]),
                "unsupported_filter",
                "URLRewrite",
            ),
            (
                json!([{"matches": [{"path": {"type": "Exact", "value": "/a"}}], "filters": [
                    {"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}
                ]}]),
                "invalid_spec",
                "rules[0].filters",
            ),
            (
                json!([{"matches": [{"path": {"type": "Exact", "value": "metrics"}}]}]),
                "invalid_spec",
                "start with /",
            ),
            (
                json!([{"matches": [{"path": {"type": "RegularExpression", "value": "("}}]}]),
                "invalid_spec",
                "does not compile",
            ),
            (
                json!([{"matches": [{"headers": [{"type": "RegularExpression", "name": "a", "value": "["}]}]}]),
                "invalid_spec",
                "does not compile",
            ),
            (
                json!([{"matches": [{"headers": [{"name": "a b", "value": "c"}]}]}]),
                "invalid_spec",
                "not a token",
            ),
            (json!([{"matches": [{"method": "BREW"}]}]), "invalid_spec", "method"),
            (
                json!([{"matches": [{"path": {"type": "Glob", "value": "/*"}}]}]),
                "invalid_spec",
                "Glob",
            ),
            (json!([{"matches": "all"}]), "invalid_spec", "rules[0]"),
        ] {
            let r = parse(json!({"parentRefs": [server_ref("a")], "rules": rules}));
            let u = r.unusable.unwrap_or_else(|| panic!("{rules} was usable"));
            assert_eq!(u.reason, reason, "{rules}");
            assert!(u.detail.contains(detail), "{rules}: {}", u.detail);
            assert_eq!(r.servers.len(), 1, "{rules}: the parents are kept");
        }
        let r = parse(json!({"parentRefs": [server_ref("a")], "hostnames": ["*"]}));
        assert_eq!(r.unusable.unwrap().reason, "invalid_spec");
        let r = parse(json!({"parentRefs": [server_ref("a")], "rules": [{"filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "a b", "value": "x"}]}}
        ]}]}));
        assert_eq!(r.unusable.unwrap().reason, "invalid_spec");
        // Parents that cannot be read: no route at all.
        let e = HttpRoute::parse(ObjKey::new("prod", "r"), None, &json!({"parentRefs": [{}]}));
        assert!(e.is_err());
    }
}
