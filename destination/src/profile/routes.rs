//! Per-route timeouts and retries from a producer HTTPRoute whose rules send to their parent
//! Service itself (Linkerd 2.16's outbound HTTPRoutes) → profile routes. Pure.
//!
//! Each (rule, match) becomes one profile route, in the Gateway API's precedence order
//! (profile routes are first-match): an `Exact` path, then `PathPrefix` by length (longest
//! first), then `RegularExpression`; among equals a method match first; then the rules' and
//! matches' own order. The condition: `Exact` → the escaped path; `PathPrefix /p` → `/p` and
//! `/p/...` (element-wise, a trailing `/` ignored), `/` → every path; `RegularExpression` → as
//! it is (it must compile for the proxy); a method → a method match too.
//!
//! What a route gets, each from the first that sets it:
//! - whole-request timeout: the rule's `timeouts.request`, the HTTPRoute's
//!   `timeout.weft.dev/request`, the Service's;
//! - per-try timeout: the rule's `timeouts.backendRequest`, the retry timeout of the retry
//!   policy below;
//! - retries (and the failure classes): the HTTPRoute's `retry.weft.dev/*` annotations when
//!   any of them is there (valid), as a whole, as Linkerd does; else the Service's.
//!
//! `0s` in `timeouts` turns that timeout off, as the Gateway API says. A rule that a profile
//! cannot express (header or query-parameter matches, filters), or that is invalid (a bad
//! path, regex, method or duration, `backendRequest` over `request`) is skipped whole, never
//! half-applied, with a [`Problem`]; an invalid annotation is ignored, as on a Service. At
//! most [`MAX_ROUTES`] routes are kept.

use std::{collections::BTreeMap, time::Duration};

use linkerd2_proxy_api::{destination as pb, http_types};
use serde::Deserialize;
use serde_json::Value;

use super::{ProfilePolicy, RetryPolicy};
use crate::{
    model::{ObjKey, Problem},
    policy::route::{PathMatch, RuleSpec, route_match},
    split::problem,
};

/// The most routes one HTTPRoute gives a profile; the rest are skipped (and counted).
pub const MAX_ROUTES: usize = 100;
/// The route metrics label naming the HTTPRoute (as Linkerd's destination service sets it).
pub const ROUTE_LABEL: &str = "route";

/// A timeout of a rule's `timeouts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `0s`: none, whatever the annotations say.
    Off,
    After(Duration),
}

/// One (rule, match) of an HTTPRoute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleRoute {
    pub path: PathMatch,
    /// Upper case.
    pub method: Option<String>,
    pub request_timeout: Option<Limit>,
    pub backend_timeout: Option<Limit>,
}

/// What an HTTPRoute says about its parent Service's requests, before the Service's own
/// policy is folded in ([`RouteProfile::routes`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteProfile {
    /// The HTTPRoute's name.
    pub name: String,
    /// `Some`: the HTTPRoute's retry annotations replace the Service's (`Some(None)`: no
    /// retries on its routes).
    pub retry: Option<Option<RetryPolicy>>,
    /// The HTTPRoute's `timeout.weft.dev/request`.
    pub request_timeout: Option<Duration>,
    /// In precedence order.
    pub rules: Vec<RuleRoute>,
}

impl RouteProfile {
    /// Converts the rules (`spec.rules`, absent: one catch-all rule) and the annotations of
    /// HTTPRoute `key`. The problems say what was skipped and why.
    pub fn from_k8s(
        key: &ObjKey,
        annotations: &BTreeMap<String, String>,
        rules: Option<&[Value]>,
    ) -> (RouteProfile, Vec<Problem>) {
        let mut problems = Vec::new();
        let (retry, request_timeout) = annotation_policy(key, annotations, &mut problems);
        let mut out = Vec::new();
        match rules {
            None => out.push(RuleRoute::catch_all()),
            Some(rules) => {
                for (i, rule) in rules.iter().enumerate() {
                    match rule_routes(rule) {
                        Ok(routes) => out.extend(routes),
                        Err((reason, why)) => problems.push(problem(
                            key,
                            reason,
                            format!("rules[{i}] skipped: {why}"),
                        )),
                    }
                }
            }
        }
        // Stable: equals keep the rules' and matches' order.
        out.sort_by_key(|r| std::cmp::Reverse(r.precedence()));
        if out.len() > MAX_ROUTES {
            let why = format!(
                "{} routes: only the first {MAX_ROUTES} (in precedence order) apply",
                out.len()
            );
            problems.push(problem(key, "too_many_routes", why));
            out.truncate(MAX_ROUTES);
        }
        let name = key.name.clone();
        (RouteProfile { name, retry, request_timeout, rules: out }, problems)
    }

    /// The profile routes, with `service`'s policy where the route says nothing; the
    /// Service's catch-all route goes after them.
    pub fn routes(&self, service: &ProfilePolicy) -> Vec<pb::Route> {
        let retry = self.retry.as_ref().unwrap_or(&service.retry).as_ref();
        let fallback = self.request_timeout.or(service.request_timeout);
        self.rules
            .iter()
            .map(|r| {
                let timeout = pick(r.request_timeout, fallback);
                let per_try = pick(r.backend_timeout, retry.and_then(|r| r.per_try_timeout));
                let labels = [(ROUTE_LABEL.to_string(), self.name.clone())].into();
                super::route(r.condition(), retry, per_try, timeout, labels)
            })
            .collect()
    }
}

fn pick(limit: Option<Limit>, fallback: Option<Duration>) -> Option<Duration> {
    match limit {
        Some(Limit::Off) => None,
        Some(Limit::After(d)) => Some(d),
        None => fallback,
    }
}

/// The HTTPRoute's retry group (when any of its annotations is valid) and request timeout.
fn annotation_policy(
    key: &ObjKey,
    annotations: &BTreeMap<String, String>,
    problems: &mut Vec<Problem>,
) -> (Option<Option<RetryPolicy>>, Option<Duration>) {
    let (policy, errors) = super::parse_annotations(annotations);
    let retry_keys = [
        super::RETRY_HTTP_ANNOTATION,
        super::RETRY_LIMIT_ANNOTATION,
        super::RETRY_TIMEOUT_ANNOTATION,
    ];
    let any_retry = retry_keys
        .iter()
        .any(|k| annotations.contains_key(*k) && !errors.iter().any(|e| e.annotation == *k));
    problems.extend(errors.into_iter().map(|e| problem(key, "invalid_annotation", e.to_string())));
    (any_retry.then_some(policy.retry), policy.request_timeout)
}

impl RuleRoute {
    fn catch_all() -> RuleRoute {
        RuleRoute {
            path: PathMatch::Prefix("/".into()),
            method: None,
            request_timeout: None,
            backend_timeout: None,
        }
    }

    /// Greater first: path kind (Exact, PathPrefix, RegularExpression), a prefix's length,
    /// then whether there is a method match.
    fn precedence(&self) -> (u8, usize, bool) {
        let (kind, len) = match &self.path {
            PathMatch::Exact(_) => (3, 0),
            PathMatch::Prefix(p) => (2, p.trim_end_matches('/').len()),
            PathMatch::Regex(_) => (1, 0),
        };
        (kind, len, self.method.is_some())
    }

    fn condition(&self) -> pb::RequestMatch {
        use pb::request_match::Match;
        let regex = match &self.path {
            PathMatch::Exact(p) => regex_lite::escape(p),
            PathMatch::Prefix(p) => match p.trim_end_matches('/') {
                "" => ".*".to_string(),
                p => format!("{}(?:/.*)?", regex_lite::escape(p)),
            },
            PathMatch::Regex(r) => r.clone(),
        };
        let path = pb::RequestMatch { r#match: Some(Match::Path(pb::PathMatch { regex })) };
        let method =
            self.method.as_deref().and_then(http_types::http_method::Registered::from_str_name);
        match method {
            None => path,
            Some(m) => {
                let method = pb::RequestMatch {
                    r#match: Some(Match::Method(http_types::HttpMethod {
                        r#type: Some(http_types::http_method::Type::Registered(m.into())),
                    })),
                };
                pb::RequestMatch {
                    r#match: Some(Match::All(pb::request_match::Seq {
                        matches: vec![path, method],
                    })),
                }
            }
        }
    }
}

/// One rule's routes, or why the rule is skipped (a metric reason and the detail).
fn rule_routes(rule: &Value) -> Result<Vec<RuleRoute>, (&'static str, String)> {
    let rule = RuleSpec::deserialize(rule).map_err(|e| ("invalid_route", e.to_string()))?;
    if !rule.filters.is_empty() {
        return Err(("unsupported_rule", "filters cannot be expressed in a profile".into()));
    }
    let (request_timeout, backend_timeout) = match &rule.timeouts {
        None => (None, None),
        Some(t) => {
            let parse = |what: &str, v: &Option<String>| {
                v.as_deref()
                    .map(|v| {
                        gateway_duration(v).map_err(|e| ("invalid_timeout", format!("{what}: {e}")))
                    })
                    .transpose()
            };
            let request = parse("timeouts.request", &t.request)?;
            let backend = parse("timeouts.backendRequest", &t.backend_request)?;
            if let (Some(Limit::After(r)), Some(Limit::After(b))) = (request, backend)
                && b > r
            {
                return Err((
                    "invalid_timeout",
                    format!(
                        "timeouts.backendRequest ({b:?}) is longer than timeouts.request ({r:?})"
                    ),
                ));
            }
            (request, backend)
        }
    };
    let matches = rule.matches.unwrap_or_default();
    if matches.is_empty() {
        return Ok(vec![RuleRoute { request_timeout, backend_timeout, ..RuleRoute::catch_all() }]);
    }
    let mut out = Vec::new();
    for m in &matches {
        let m = route_match(m).map_err(|e| ("invalid_route", e))?;
        if !m.headers.is_empty() || !m.query.is_empty() {
            return Err((
                "unsupported_rule",
                "header and query parameter matches cannot be expressed in a profile".into(),
            ));
        }
        let path = m.path.unwrap_or(PathMatch::Prefix("/".into()));
        out.push(RuleRoute { path, method: m.method, request_timeout, backend_timeout });
    }
    Ok(out)
}

/// A Gateway API duration (GEP-2257: 1 to 4 groups of up to 5 digits and `h`, `m`, `s` or
/// `ms`, e.g. `1h30m`, `250ms`); zero is [`Limit::Off`].
pub fn gateway_duration(v: &str) -> Result<Limit, String> {
    let err = || format!("{v:?} is not a Gateway API duration like 250ms, 10s or 1m30s");
    let mut rest = v;
    let mut total = Duration::ZERO;
    let mut groups = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
        if digits == 0 || digits > 5 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        let tail = &rest[digits..];
        let (unit, len) = if tail.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else {
            match tail.as_bytes().first() {
                Some(b'h') => (Duration::from_secs(3600), 1),
                Some(b'm') => (Duration::from_secs(60), 1),
                Some(b's') => (Duration::from_secs(1), 1),
                _ => return Err(err()),
            }
        };
        total += unit * u32::try_from(n).map_err(|_| err())?;
        rest = &tail[len..];
        groups += 1;
    }
    if groups == 0 || groups > 4 {
        return Err(err());
    }
    Ok(if total.is_zero() { Limit::Off } else { Limit::After(total) })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
