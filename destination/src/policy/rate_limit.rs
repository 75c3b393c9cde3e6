//! `HTTPLocalRateLimitPolicy` (`policy.weft.dev/v1alpha1`, the schema of Linkerd's
//! `policy.linkerd.io` kind) reduced to what inbound policy needs: the Server it limits, its
//! rates, and the service accounts of its overrides. Pure.
//!
//! Validated as Linkerd's admission webhook validates it: the target is a Server of the
//! policy's own namespace; neither the per-identity rate nor an override's may exceed the
//! total rate (when there is one); an override names at least one client, and clients are
//! service accounts. A policy that fails is refused whole: a limit applied differently from
//! what it says is worse than none, and the reason is logged and counted.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::Deserialize;
use serde_json::Value;

use super::model::GROUP;
use crate::model::ObjKey;

/// The version rate-limit policies are served in (Linkerd's).
pub const RATE_LIMIT_VERSION: &str = "v1alpha1";

/// The kind as the proxy API's metadata names it (the proxy lower-cases it for its
/// `ratelimit_kind` label).
pub const RATE_LIMIT_KIND: &str = "HTTPLocalRateLimitPolicy";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitPolicy {
    pub key: ObjKey,
    /// Linkerd allows one policy per Server: the oldest wins.
    pub created: Option<Time>,
    /// The Server (of the policy's namespace) it limits.
    pub server: String,
    /// Requests per second for all clients together.
    pub total: Option<u32>,
    /// Requests per second for each client identity (unmeshed clients together are one).
    pub identity: Option<u32>,
    pub overrides: Vec<Override>,
}

/// A rate of its own for the clients with these service accounts' identities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    pub requests_per_second: u32,
    pub service_accounts: Vec<ObjKey>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    target_ref: TargetRef,
    #[serde(default)]
    total: Option<Limit>,
    #[serde(default)]
    identity: Option<Limit>,
    #[serde(default)]
    overrides: Option<Vec<OverrideSpec>>,
}

#[derive(Deserialize)]
struct TargetRef {
    #[serde(default)]
    group: Option<String>,
    kind: String,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Limit {
    requests_per_second: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OverrideSpec {
    requests_per_second: u32,
    #[serde(default)]
    client_refs: Vec<ClientRef>,
}

#[derive(Deserialize)]
struct ClientRef {
    #[serde(default)]
    group: Option<String>,
    kind: String,
    #[serde(default)]
    namespace: Option<String>,
    name: String,
}

impl RateLimitPolicy {
    /// From the object's `spec`; `Err` says why it cannot be used.
    pub fn parse(key: ObjKey, created: Option<Time>, spec: &Value) -> Result<Self, String> {
        let s = Spec::deserialize(spec).map_err(|e| format!("spec: {e}"))?;
        let t = &s.target_ref;
        let group = t.group.as_deref().unwrap_or_default();
        if !t.kind.eq_ignore_ascii_case("Server") || group != GROUP {
            return Err(format!(
                "targetRef {group}/{} is not supported (only a Server of {GROUP})",
                t.kind
            ));
        }
        if t.name.is_empty() {
            return Err("targetRef names no Server".into());
        }
        let total = s.total.map(|l| l.requests_per_second);
        let identity = s.identity.map(|l| l.requests_per_second);
        if let (Some(total), Some(identity)) = (total, identity)
            && identity > total
        {
            return Err(format!(
                "identity.requestsPerSecond {identity} is greater than total.requestsPerSecond {total}"
            ));
        }
        let mut overrides = Vec::new();
        for (i, o) in s.overrides.into_iter().flatten().enumerate() {
            if let Some(total) = total
                && o.requests_per_second > total
            {
                return Err(format!(
                    "overrides[{i}].requestsPerSecond {} is greater than total.requestsPerSecond {total}",
                    o.requests_per_second
                ));
            }
            if o.client_refs.is_empty() {
                return Err(format!("overrides[{i}].clientRefs is empty"));
            }
            let mut service_accounts = Vec::new();
            for r in &o.client_refs {
                let group = r.group.as_deref().unwrap_or_default();
                if !r.kind.eq_ignore_ascii_case("ServiceAccount") || !group.is_empty() {
                    return Err(format!(
                        "overrides[{i}].clientRefs: {group}/{} is not supported (only ServiceAccount)",
                        r.kind
                    ));
                }
                if r.name.is_empty() {
                    return Err(format!(
                        "overrides[{i}].clientRefs: a ServiceAccount without a name"
                    ));
                }
                let ns = r.namespace.clone().filter(|n| !n.is_empty());
                let ns = ns.unwrap_or_else(|| key.namespace.clone());
                service_accounts.push(ObjKey::new(ns, r.name.clone()));
            }
            overrides
                .push(Override { requests_per_second: o.requests_per_second, service_accounts });
        }
        Ok(RateLimitPolicy { key, created, server: t.name.clone(), total, identity, overrides })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(spec: Value) -> Result<RateLimitPolicy, String> {
        RateLimitPolicy::parse(ObjKey::new("prod", "web-rl"), None, &spec)
    }

    fn server() -> Value {
        json!({"group": "policy.weft.dev", "kind": "Server", "name": "web-http"})
    }

    #[test]
    fn a_full_policy() {
        let p = parse(json!({
            "targetRef": server(),
            "total": {"requestsPerSecond": 100},
            "identity": {"requestsPerSecond": 20},
            "overrides": [{"requestsPerSecond": 50, "clientRefs": [
                {"kind": "ServiceAccount", "name": "batch"},
                {"kind": "ServiceAccount", "namespace": "ops", "name": "backup"},
                {"kind": "ServiceAccount", "namespace": "", "name": "cron"}
            ]}],
            "unknownField": true
        }))
        .unwrap();
        assert_eq!(p.server, "web-http");
        assert_eq!((p.total, p.identity), (Some(100), Some(20)));
        assert_eq!(
            p.overrides,
            [Override {
                requests_per_second: 50,
                service_accounts: vec![
                    ObjKey::new("prod", "batch"),
                    ObjKey::new("ops", "backup"),
                    ObjKey::new("prod", "cron")
                ],
            }]
        );
    }

    #[test]
    fn rates_are_optional_and_limited_by_the_total_only_when_there_is_one() {
        let p = parse(json!({"targetRef": server()})).unwrap();
        assert_eq!((p.total, p.identity, p.overrides.len()), (None, None, 0));
        let p = parse(json!({
            "targetRef": server(),
            "identity": {"requestsPerSecond": 500},
            "overrides": [{"requestsPerSecond": 900, "clientRefs": [{"kind": "ServiceAccount", "name": "a"}]}]
        }))
        .unwrap();
        assert_eq!((p.total, p.identity), (None, Some(500)));
        // Equal to the total is allowed.
        let p = parse(json!({
            "targetRef": server(),
            "total": {"requestsPerSecond": 10},
            "identity": {"requestsPerSecond": 10}
        }))
        .unwrap();
        assert_eq!(p.identity, Some(10));
    }

    #[test]
    fn invalid_policies_say_why() {
        let sa = json!([{"kind": "ServiceAccount", "name": "a"}]);
        for (spec, want) in [
            (
                json!({"targetRef": server(), "total": {"requestsPerSecond": 5}, "identity": {"requestsPerSecond": 6}}),
                "identity.requestsPerSecond 6 is greater than total.requestsPerSecond 5",
            ),
            (
                json!({"targetRef": server(), "total": {"requestsPerSecond": 5},
                       "overrides": [{"requestsPerSecond": 6, "clientRefs": sa}]}),
                "overrides[0].requestsPerSecond 6 is greater",
            ),
            (
                json!({"targetRef": server(), "overrides": [{"requestsPerSecond": 6, "clientRefs": []}]}),
                "overrides[0].clientRefs is empty",
            ),
            (
                json!({"targetRef": server(), "overrides": [{"requestsPerSecond": 6}]}),
                "overrides[0].clientRefs is empty",
            ),
            (
                json!({"targetRef": server(), "overrides": [{"requestsPerSecond": 6,
                       "clientRefs": [{"kind": "Namespace", "name": "ops"}]}]}),
                "/Namespace is not supported",
            ),
            (
                json!({"targetRef": {"group": "apps", "kind": "Deployment", "name": "web"}}),
                "targetRef apps/Deployment is not supported",
            ),
            (
                json!({"targetRef": {"kind": "Server", "name": "web-http"}}),
                "targetRef /Server is not supported",
            ),
            (
                json!({"targetRef": {"group": "policy.weft.dev", "kind": "HTTPRoute", "name": "r"}}),
                "HTTPRoute is not supported",
            ),
            (json!({"targetRef": server(), "total": {"requestsPerSecond": -1}}), "spec:"),
            (json!({"total": {"requestsPerSecond": 1}}), "spec:"),
        ] {
            let err = parse(spec.clone()).unwrap_err();
            assert!(err.contains(want), "{spec}: {err}");
        }
    }
}
