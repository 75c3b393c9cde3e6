//! The Gateway API's `GRPCRoute` (`gateway.networking.k8s.io/v1`) reduced to what inbound
//! policy needs: the Servers it attaches to, its host names and its rules' matches (an RPC's
//! service and method, and headers). Pure.
//!
//! As for HTTPRoutes, a route that names its Servers but cannot be enforced as written is
//! kept as unusable and still claims them: a `RegularExpression` method match (Linkerd's
//! inbound API matches RPCs exactly) and a filter other than `RequestHeaderModifier` (the
//! only one of Gateway API's that the API carries for gRPC routes; checked as HTTPRoutes'
//! are, in [`super::filter`]) are unsupported. Backend references are about forwarding and
//! ignored.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Deserialize;
use serde_json::Value;

use super::{
    HeaderModifier, HostMatch, NamedValue, ParentRef, Unusable, ValueMatch, filter, header_matches,
    hosts, invalid,
};
use crate::{model::ObjKey, split::GATEWAY_GROUP};

/// The kind, as AuthorizationPolicies name it and proxies label their metrics.
pub const GRPC_ROUTE_KIND: &str = "GRPCRoute";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcRoute {
    pub key: ObjKey,
    /// Routes are listed oldest first, as Gateway API orders ties.
    pub created: Option<Time>,
    /// The Servers (of the route's namespace) it attaches to.
    pub servers: BTreeSet<String>,
    pub hosts: Vec<HostMatch>,
    pub rules: Vec<GrpcRule>,
    /// Why the route cannot be enforced as written; `None`: it can.
    pub unusable: Option<Unusable>,
}

/// Calls that any of `matches` selects, and the request header changes applied to them in
/// order (the only filter a GRPCRoute's rule has for inbound proxies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcRule {
    pub matches: Vec<GrpcMatch>,
    pub filters: Vec<HeaderModifier>,
}

/// All of which must hold; `None` service or method: any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrpcMatch {
    pub service: Option<String>,
    pub method: Option<String>,
    pub headers: Vec<(String, ValueMatch)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default)]
    parent_refs: Vec<ParentRef>,
    #[serde(default)]
    hostnames: Vec<String>,
    /// Absent: one rule matching every call.
    #[serde(default)]
    rules: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct RuleSpec {
    #[serde(default)]
    matches: Option<Vec<MatchSpec>>,
    #[serde(default)]
    filters: Vec<Value>,
}

#[derive(Deserialize)]
struct MatchSpec {
    #[serde(default)]
    method: Option<MethodSpec>,
    #[serde(default)]
    headers: Vec<NamedValue>,
}

#[derive(Deserialize)]
struct MethodSpec {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    method: Option<String>,
}

impl GrpcRoute {
    /// Converts a route from its `spec`. `Err`: even its parents cannot be read, so it
    /// claims nothing. A route whose rules cannot be enforced is `Ok` with `unusable` set.
    pub fn parse(key: ObjKey, created: Option<Time>, value: &Value) -> Result<Self, String> {
        let spec: Spec = Spec::deserialize(value).map_err(|e| format!("spec: {e}"))?;
        let servers = super::servers(&spec.parent_refs, GATEWAY_GROUP, &key.namespace);
        let mut route = GrpcRoute {
            key,
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

fn unsupported(reason: &'static str, detail: String) -> Unusable {
    Unusable { reason, detail }
}

fn convert(spec: &Spec) -> Result<(Vec<HostMatch>, Vec<GrpcRule>), Unusable> {
    let hosts = hosts(&spec.hostnames)?;
    let Some(rules) = &spec.rules else {
        return Ok((
            hosts,
            vec![GrpcRule { matches: vec![GrpcMatch::default()], filters: Vec::new() }],
        ));
    };
    let mut converted = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let rule = RuleSpec::deserialize(rule).map_err(|e| invalid(format!("rules[{i}]: {e}")))?;
        let matches = match rule.matches {
            None => vec![GrpcMatch::default()],
            Some(ms) if ms.is_empty() => vec![GrpcMatch::default()],
            Some(ms) => {
                ms.iter().map(|m| grpc_match(i, m)).collect::<Result<Vec<_>, Unusable>>()?
            }
        };
        let filters = filter::convert_grpc(i, &rule.filters)?;
        converted.push(GrpcRule { matches, filters });
    }
    Ok((hosts, converted))
}

/// A service (`pkg.Service`) or method name: what the Gateway API's schema admits, which
/// also keeps `/` out of the path the proxy builds from it.
fn rpc_name(what: &str, name: &str, dots: bool) -> Result<(), String> {
    let valid_part = |p: &str| {
        p.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let ok = if dots {
        name.strip_prefix('.').unwrap_or(name).split('.').all(valid_part)
    } else {
        valid_part(name)
    };
    if ok { Ok(()) } else { Err(format!("{what} {name:?} is not a gRPC {what} name")) }
}

fn grpc_match(i: usize, m: &MatchSpec) -> Result<GrpcMatch, Unusable> {
    let at = |e: String| invalid(format!("rules[{i}]: {e}"));
    let (mut service, mut method) = (None, None);
    if let Some(rpc) = &m.method {
        match rpc.kind.as_deref().unwrap_or("Exact") {
            "Exact" => {}
            "RegularExpression" => {
                return Err(unsupported(
                    "unsupported_match",
                    format!(
                        "rules[{i}]: method type RegularExpression: the proxy matches gRPC methods exactly"
                    ),
                ));
            }
            other => {
                return Err(at(format!("method type {other:?} is not Exact or RegularExpression")));
            }
        }
        service = rpc.service.clone().filter(|s| !s.is_empty());
        method = rpc.method.clone().filter(|s| !s.is_empty());
        if service.is_none() && method.is_none() {
            return Err(at("a method match names neither a service nor a method".into()));
        }
        if let Some(s) = &service {
            rpc_name("service", s, true).map_err(at)?;
        }
        if let Some(m) = &method {
            rpc_name("method", m, false).map_err(at)?;
        }
    }
    let headers = header_matches(&m.headers).map_err(at)?;
    Ok(GrpcMatch { service, method, headers })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(spec: Value) -> GrpcRoute {
        GrpcRoute::parse(ObjKey::new("prod", "r"), None, &spec).unwrap()
    }

    fn server_ref(name: &str) -> Value {
        json!({"group": "policy.weft.dev", "kind": "Server", "name": name})
    }

    #[test]
    fn parents_are_servers_that_name_their_group() {
        let r = parse(json!({"parentRefs": [
            server_ref("a"),
            // The Gateway API's default group is its own: not a Server of ours.
            {"kind": "Server", "name": "b"},
            {"group": "policy.weft.dev", "kind": "Server", "name": "c", "namespace": "other"},
            {"group": "", "kind": "Service", "name": "d", "port": 80},
            {"name": "gateway"},
        ]}));
        assert_eq!(r.servers, ["a"].into_iter().map(String::from).collect());
        // No rules: one rule, every call.
        assert_eq!(
            r.rules,
            vec![GrpcRule { matches: vec![GrpcMatch::default()], filters: Vec::new() }]
        );
        assert_eq!(r.unusable, None);
    }

    #[test]
    fn exact_method_and_header_matches() {
        let r = parse(json!({
            "parentRefs": [server_ref("a")],
            "hostnames": ["Grpc.Example.com"],
            "rules": [
                {"matches": [
                    {"method": {"type": "Exact", "service": "weft.test.Echo", "method": "Say"}},
                    {"method": {"service": "grpc.health.v1.Health"},
                     "headers": [{"name": "X-Tenant", "value": "a"},
                                 {"type": "RegularExpression", "name": "x-b", "value": "b+"}]}
                ]},
                {"matches": [{"method": {"method": "Ping"}}]},
                {"backendRefs": [{"name": "web", "port": 8080}]}
            ]
        }));
        assert_eq!(r.unusable, None);
        assert_eq!(r.hosts, [HostMatch::Exact("grpc.example.com".into())]);
        assert_eq!(
            r.rules[0].matches[0],
            GrpcMatch {
                service: Some("weft.test.Echo".into()),
                method: Some("Say".into()),
                headers: Vec::new()
            }
        );
        let m = &r.rules[0].matches[1];
        assert_eq!(
            (m.service.as_deref(), m.method.as_deref()),
            (Some("grpc.health.v1.Health"), None)
        );
        assert_eq!(
            m.headers,
            [
                ("x-tenant".to_string(), ValueMatch::Exact("a".into())),
                ("x-b".to_string(), ValueMatch::Regex("b+".into()))
            ]
        );
        assert_eq!(r.rules[1].matches[0].method.as_deref(), Some("Ping"));
        assert_eq!(r.rules[2].matches, [GrpcMatch::default()]);
    }

    #[test]
    fn request_header_modifiers_are_the_rules_filters() {
        let r = parse(json!({
            "parentRefs": [server_ref("a")],
            "rules": [
                {"matches": [{"method": {"service": "weft.Test", "method": "Echo"}}],
                 "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
                     "set": [{"name": "X-Tenant", "value": "a"}],
                     "add": [{"name": "x-trace", "value": "1"}],
                     "remove": ["X-Internal"]
                 }}]},
                {"matches": [{"method": {"method": "Ping"}}]}
            ]
        }));
        assert_eq!(r.unusable, None);
        assert_eq!(
            r.rules[0].filters,
            [HeaderModifier {
                set: vec![("x-tenant".into(), "a".into())],
                add: vec![("x-trace".into(), "1".into())],
                remove: vec!["x-internal".into()],
            }]
        );
        assert!(r.rules[1].filters.is_empty());
    }

    #[test]
    fn routes_that_cannot_be_enforced_are_unusable_but_keep_their_parents() {
        for (rules, reason, detail) in [
            (
                json!([{"matches": [{"method": {"type": "RegularExpression", "service": "weft\\..*", "method": "Say"}}]}]),
                "unsupported_match",
                "RegularExpression",
            ),
            (
                json!([{"filters": [{"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x", "value": "1"}]}}]}]),
                "unsupported_filter",
                "no response header modifier",
            ),
            (
                json!([{"filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "a", "port": 9090}}}]}]),
                "unsupported_filter",
                "only RequestHeaderModifier is applied on GRPCRoutes",
            ),
            (
                json!([{"filters": [{"type": "ExtensionRef", "extensionRef": {"group": "a", "kind": "b", "name": "c"}}]}]),
                "unsupported_filter",
                "ExtensionRef",
            ),
            // Not a GRPCRoute filter at all (the schema has none), even if HTTPRoutes apply it.
            (
                json!([{"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}}]}]),
                "unsupported_filter",
                "RequestRedirect",
            ),
            (
                json!([{"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x y", "value": "1"}]}}]}]),
                "invalid_spec",
                "rules[0].filters: header name \"x y\" is not a token",
            ),
            (
                json!([{"filters": [{"type": "RequestHeaderModifier"}]}]),
                "invalid_spec",
                "without requestHeaderModifier",
            ),
            (
                json!([{"filters": [
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {}},
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {}}
                ]}]),
                "invalid_spec",
                "more than once",
            ),
            (json!([{"matches": [{"method": {"type": "Exact"}}]}]), "invalid_spec", "neither"),
            (
                json!([{"matches": [{"method": {"service": "a/b", "method": "c"}}]}]),
                "invalid_spec",
                "service",
            ),
            (json!([{"matches": [{"method": {"method": "a.b"}}]}]), "invalid_spec", "method"),
            (
                json!([{"matches": [{"method": {"type": "Prefix", "service": "a"}}]}]),
                "invalid_spec",
                "Prefix",
            ),
            (
                json!([{"matches": [{"headers": [{"type": "RegularExpression", "name": "a", "value": "["}]}]}]),
                "invalid_spec",
                "does not compile",
            ),
            (json!([{"matches": "all"}]), "invalid_spec", "rules[0]"),
        ] {
            let r = parse(json!({"parentRefs": [server_ref("a")], "rules": rules}));
            let u = r.unusable.unwrap_or_else(|| panic!("{rules} was usable"));
            assert_eq!(u.reason, reason, "{rules}");
            assert!(u.detail.contains(detail), "{rules}: {}", u.detail);
            assert_eq!(r.servers.len(), 1, "{rules}: the parents are kept");
        }
        let e = GrpcRoute::parse(ObjKey::new("prod", "r"), None, &json!({"parentRefs": [{}]}));
        assert!(e.is_err());
    }
}
