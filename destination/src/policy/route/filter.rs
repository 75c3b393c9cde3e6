//! The filters of a route rule (Gateway API's `filters`, as Linkerd's HTTPRoute schema and
//! the Gateway API's GRPCRoute take them) that inbound proxies apply: `RequestHeaderModifier`
//! and, on HTTPRoutes, `RequestRedirect` — what Linkerd's inbound policy API can carry for
//! each route kind. Pure.
//!
//! Any other type (`ResponseHeaderModifier`, which that API has no place for,
//! `URLRewrite`, `RequestMirror`, `ExtensionRef`, newer ones) is unsupported; a supported
//! one written wrong (a bad header name, a relative path, a status that is not a redirect)
//! is invalid. Either way the route is not served. Both route kinds share these checks.

use serde::Deserialize;
use serde_json::Value;

use super::{PathMatch, RouteMatch, Unusable, invalid};

/// A filter the proxies apply to the requests of its rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    RequestHeaders(HeaderModifier),
    Redirect(Redirect),
}

/// Headers added to (appended), set on (replacing) and removed from requests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HeaderModifier {
    pub add: Vec<(String, String)>,
    pub set: Vec<(String, String)>,
    pub remove: Vec<String>,
}

/// An answer by the proxy that sends the client elsewhere; each `None` keeps the
/// request's own part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// `http` or `https`.
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    /// Gateway API's default when the spec has none: 302.
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathModifier {
    /// `ReplaceFullPath`.
    Full(String),
    /// `ReplacePrefixMatch`: the part of the path the rule's `PathPrefix` match matched.
    Prefix(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeaderFilterSpec {
    #[serde(default)]
    set: Vec<HeaderSpec>,
    #[serde(default)]
    add: Vec<HeaderSpec>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
struct HeaderSpec {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RedirectSpec {
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    path: Option<PathModifierSpec>,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    status_code: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathModifierSpec {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    replace_full_path: Option<String>,
    #[serde(default)]
    replace_prefix_match: Option<String>,
}

/// Redirect statuses Gateway API allows (301 and 302 in its standard channel).
const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// The filter types that proxies apply on one kind of route (the rest are unsupported).
struct Applied {
    /// What the route kind's messages call it (`HTTPRoute`, `GRPCRoute`).
    route: &'static str,
    types: &'static [&'static str],
}

/// What Linkerd's inbound API carries for HTTP routes.
const HTTP_ROUTE: Applied =
    Applied { route: "HTTPRoute", types: &["RequestHeaderModifier", "RequestRedirect"] };

/// What it carries for gRPC routes that a GRPCRoute can say (its other filter, a failure
/// injector, has no Gateway API counterpart).
const GRPC_ROUTE: Applied = Applied { route: "GRPCRoute", types: &["RequestHeaderModifier"] };

/// Rule `i`'s filters, checked against its (already converted) matches.
pub(super) fn convert(
    i: usize,
    filters: &[Value],
    matches: &[RouteMatch],
) -> Result<Vec<Filter>, Unusable> {
    each(i, filters, &HTTP_ROUTE, |kind, spec| match kind {
        "RequestHeaderModifier" => header_modifier(spec).map(Filter::RequestHeaders),
        _ => redirect(spec, matches).map(Filter::Redirect),
    })
}

/// Rule `i`'s filters of a GRPCRoute: request header modifiers, the only kind it applies.
pub(super) fn convert_grpc(i: usize, filters: &[Value]) -> Result<Vec<HeaderModifier>, Unusable> {
    each(i, filters, &GRPC_ROUTE, |_, spec| header_modifier(spec))
}

/// Converts each filter of rule `i` with `one` (given its type and its spec), once the
/// checks every route kind shares have passed: a type `applied` lists (else the route is
/// unsupported), at most once, with its spec.
fn each<T>(
    i: usize,
    filters: &[Value],
    applied: &Applied,
    mut one: impl FnMut(&str, &Value) -> Result<T, String>,
) -> Result<Vec<T>, Unusable> {
    let bad = |e: String| invalid(format!("rules[{i}].filters: {e}"));
    let mut converted = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for f in filters {
        let kind = f.get("type").and_then(Value::as_str).unwrap_or("");
        if !applied.types.contains(&kind) {
            let kinds: Vec<&str> = filters.iter().filter_map(|f| f.get("type")?.as_str()).collect();
            let why = match kind {
                "ResponseHeaderModifier" => {
                    "Linkerd's inbound policy API has no response header modifier".to_string()
                }
                _ => format!(
                    "only {} {} applied on {}s",
                    applied.types.join(" and "),
                    if applied.types.len() == 1 { "is" } else { "are" },
                    applied.route
                ),
            };
            return Err(Unusable {
                reason: "unsupported_filter",
                detail: format!(
                    "rules[{i}] has filters ({}): {kind:?} is not supported ({why}), so the route is not served",
                    kinds.join(", ")
                ),
            });
        }
        // Gateway API allows each of these once per rule.
        if seen.contains(&kind) {
            return Err(bad(format!("{kind} appears more than once")));
        }
        seen.push(kind);
        // The spec's field is the type's name, lower camel case.
        let field = kind.get(..1).unwrap_or("").to_ascii_lowercase() + kind.get(1..).unwrap_or("");
        let spec = f.get(&field).ok_or_else(|| bad(format!("{kind} without {field}")))?;
        converted.push(one(kind, spec).map_err(bad)?);
    }
    Ok(converted)
}

/// A header name: an HTTP token.
pub(super) fn header_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok { Ok(()) } else { Err(format!("header name {name:?} is not a token")) }
}

/// A header value as the proxy takes one: no control characters (so no line breaks)
/// but tabs.
fn header_value(name: &str, value: &str) -> Result<(), String> {
    let ok = value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    if ok { Ok(()) } else { Err(format!("header {name:?}: value {value:?} is not a header value")) }
}

fn header_modifier(spec: &Value) -> Result<HeaderModifier, String> {
    let spec =
        HeaderFilterSpec::deserialize(spec).map_err(|e| format!("requestHeaderModifier: {e}"))?;
    let pairs = |what: &str, headers: Vec<HeaderSpec>| {
        let mut names: Vec<String> = Vec::new();
        headers
            .into_iter()
            .map(|h| {
                header_name(&h.name)?;
                header_value(&h.name, &h.value)?;
                let lower = h.name.to_ascii_lowercase();
                if names.contains(&lower) {
                    return Err(format!("{what}: header {:?} is listed twice", h.name));
                }
                names.push(lower.clone());
                Ok((lower, h.value))
            })
            .collect::<Result<Vec<_>, String>>()
    };
    let set = pairs("set", spec.set)?;
    let add = pairs("add", spec.add)?;
    let mut remove: Vec<String> = Vec::new();
    for name in spec.remove {
        header_name(&name)?;
        let lower = name.to_ascii_lowercase();
        if remove.contains(&lower) {
            return Err(format!("remove: header {name:?} is listed twice"));
        }
        remove.push(lower);
    }
    Ok(HeaderModifier { add, set, remove })
}

fn redirect(spec: &Value, matches: &[RouteMatch]) -> Result<Redirect, String> {
    let spec = RedirectSpec::deserialize(spec).map_err(|e| format!("requestRedirect: {e}"))?;
    let scheme = match spec.scheme.as_deref() {
        None => None,
        Some(s @ ("http" | "https")) => Some(s.to_string()),
        Some(other) => return Err(format!("scheme {other:?} is not http or https")),
    };
    let hostname = match spec.hostname {
        None => None,
        Some(h) => match super::host(&h) {
            Ok(super::HostMatch::Exact(h)) => Some(h),
            _ => return Err(format!("hostname {h:?} is not a host name")),
        },
    };
    let path = match spec.path {
        None => None,
        Some(p) => {
            let (value, modifier): (_, fn(String) -> PathModifier) = match p.kind.as_str() {
                "ReplaceFullPath" => (p.replace_full_path, PathModifier::Full),
                "ReplacePrefixMatch" => (p.replace_prefix_match, PathModifier::Prefix),
                other => {
                    return Err(format!(
                        "path type {other:?} is not ReplaceFullPath or ReplacePrefixMatch"
                    ));
                }
            };
            let value =
                value.ok_or_else(|| format!("path of type {} without its value", p.kind))?;
            let ok = value.starts_with('/')
                && value.bytes().all(|b| b.is_ascii_graphic() && b != b'#' && b != b'?');
            if !ok {
                return Err(format!("path {value:?} is not an absolute path"));
            }
            Some(modifier(value))
        }
    };
    // The proxy replaces what the match matched: only a prefix match says what that is.
    if matches!(path, Some(PathModifier::Prefix(_)))
        && matches.iter().any(|m| !matches!(m.path, Some(PathMatch::Prefix(_))))
    {
        return Err(
            "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match".into()
        );
    }
    let port = match spec.port {
        None => None,
        Some(p) => Some(
            u16::try_from(p)
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("port {p} is not 1-65535"))?,
        ),
    };
    let status = match spec.status_code {
        None => 302,
        Some(s) => u16::try_from(s)
            .ok()
            .filter(|s| REDIRECT_STATUSES.contains(s))
            .ok_or_else(|| format!("statusCode {s} is not one of 301, 302, 303, 307, 308"))?,
    };
    Ok(Redirect { scheme, hostname, path, port, status })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn prefix_match() -> Vec<RouteMatch> {
        vec![RouteMatch { path: Some(PathMatch::Prefix("/foo".into())), ..Default::default() }]
    }

    fn one(filter: Value) -> Result<Filter, Unusable> {
        convert(0, &[filter], &prefix_match()).map(|mut f| f.remove(0))
    }

    #[test]
    fn header_modifiers_and_redirects_convert() {
        let f = one(json!({"type": "RequestHeaderModifier", "requestHeaderModifier": {
            "set": [{"name": "X-Set", "value": "a b"}],
            "add": [{"name": "x-add", "value": "1"}, {"name": "x-other", "value": ""}],
            "remove": ["X-Gone"]
        }}))
        .unwrap();
        assert_eq!(
            f,
            Filter::RequestHeaders(HeaderModifier {
                set: vec![("x-set".into(), "a b".into())],
                add: vec![("x-add".into(), "1".into()), ("x-other".into(), String::new())],
                remove: vec!["x-gone".into()],
            })
        );
        // Everything left out: the request's own parts, Gateway API's 302.
        let f = one(json!({"type": "RequestRedirect", "requestRedirect": {}})).unwrap();
        assert_eq!(
            f,
            Filter::Redirect(Redirect {
                scheme: None,
                hostname: None,
                path: None,
                port: None,
                status: 302
            })
        );
        let f = one(json!({"type": "RequestRedirect", "requestRedirect": {
            "scheme": "https", "hostname": "Example.com", "port": 8443, "statusCode": 301,
            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/bar"}
        }}))
        .unwrap();
        assert_eq!(
            f,
            Filter::Redirect(Redirect {
                scheme: Some("https".into()),
                hostname: Some("example.com".into()),
                path: Some(PathModifier::Prefix("/bar".into())),
                port: Some(8443),
                status: 301
            })
        );
        let f = one(json!({"type": "RequestRedirect", "requestRedirect": {
            "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}
        }}))
        .unwrap();
        assert!(matches!(f, Filter::Redirect(Redirect { path: Some(PathModifier::Full(_)), .. })));
    }

    #[test]
    fn bad_filters_are_invalid_and_other_kinds_unsupported() {
        let exact =
            vec![RouteMatch { path: Some(PathMatch::Exact("/foo".into())), ..Default::default() }];
        let hm = |m: Value| json!({"type": "RequestHeaderModifier", "requestHeaderModifier": m});
        let rd = |r: Value| json!({"type": "RequestRedirect", "requestRedirect": r});
        let prefix =
            rd(json!({"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}));
        for (filters, matches, reason, detail) in [
            (
                vec![hm(json!({"set": [{"name": "a b", "value": "c"}]}))],
                &prefix_match(),
                "invalid_spec",
                "not a token",
            ),
            (
                vec![hm(json!({"add": [{"name": "a", "value": "c\r\nd"}]}))],
                &prefix_match(),
                "invalid_spec",
                "not a header value",
            ),
            (
                vec![hm(
                    json!({"set": [{"name": "a", "value": "1"}, {"name": "A", "value": "2"}]}),
                )],
                &prefix_match(),
                "invalid_spec",
                "twice",
            ),
            (vec![hm(json!({"remove": ["a:b"]}))], &prefix_match(), "invalid_spec", "not a token"),
            (
                vec![hm(json!({"set": "x"}))],
                &prefix_match(),
                "invalid_spec",
                "requestHeaderModifier",
            ),
            (
                vec![json!({"type": "RequestHeaderModifier"})],
                &prefix_match(),
                "invalid_spec",
                "without requestHeaderModifier",
            ),
            (vec![hm(json!({})), hm(json!({}))], &prefix_match(), "invalid_spec", "more than once"),
            (vec![rd(json!({"scheme": "ftp"}))], &prefix_match(), "invalid_spec", "scheme"),
            (
                vec![rd(json!({"hostname": "*.example.com"}))],
                &prefix_match(),
                "invalid_spec",
                "hostname",
            ),
            (vec![rd(json!({"port": 70000}))], &prefix_match(), "invalid_spec", "port"),
            (vec![rd(json!({"port": 0}))], &prefix_match(), "invalid_spec", "port"),
            (vec![rd(json!({"statusCode": 200}))], &prefix_match(), "invalid_spec", "statusCode"),
            (
                vec![rd(json!({"path": {"type": "ReplaceFullPath", "replaceFullPath": "rel"}}))],
                &prefix_match(),
                "invalid_spec",
                "absolute",
            ),
            (
                vec![rd(json!({"path": {"type": "ReplaceFullPath"}}))],
                &prefix_match(),
                "invalid_spec",
                "without its value",
            ),
            (
                vec![rd(json!({"path": {"type": "Rewrite", "value": "/x"}}))],
                &prefix_match(),
                "invalid_spec",
                "Rewrite",
            ),
            (vec![prefix.clone()], &exact, "invalid_spec", "PathPrefix"),
            (
                vec![
                    json!({"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}),
                ],
                &prefix_match(),
                "unsupported_filter",
                "no response header modifier",
            ),
            (
                vec![json!({"type": "URLRewrite", "urlRewrite": {"hostname": "a"}})],
                &prefix_match(),
                "unsupported_filter",
                "URLRewrite",
            ),
            (
                vec![
                    json!({"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "a"}}}),
                ],
                &prefix_match(),
                "unsupported_filter",
                "RequestMirror",
            ),
            (
                vec![
                    json!({"type": "ExtensionRef", "extensionRef": {"group": "a", "kind": "b", "name": "c"}}),
                ],
                &prefix_match(),
                "unsupported_filter",
                "ExtensionRef",
            ),
            (
                vec![hm(json!({})), json!({"type": "Teleport"})],
                &prefix_match(),
                "unsupported_filter",
                "Teleport",
            ),
            (vec![json!({})], &prefix_match(), "unsupported_filter", "\"\""),
        ] {
            let u = convert(0, &filters, matches).expect_err(&format!("{filters:?}"));
            assert_eq!(u.reason, reason, "{filters:?}: {}", u.detail);
            assert!(u.detail.contains(detail), "{filters:?}: {}", u.detail);
        }
        // A prefix replacement on a prefix match is fine.
        assert!(convert(0, &[prefix], &prefix_match()).is_ok());
    }
}
