//! Gateway API HTTPRoutes and GRPCRoutes (`gateway.networking.k8s.io/v1`) as watched kinds.
//! An HTTPRoute's Service parents are split across its backends ([`crate::split`]); its
//! `policy.weft.dev` Server parents get it as an inbound route, as a `policy.weft.dev`
//! HTTPRoute ([`crate::policy::route`]); one route may have both sorts of parents. A
//! GRPCRoute's Server parents get it as an inbound gRPC route; it is a policy kind, which
//! policy lookups wait for (a missing CRD aside).
//!
//! The Gateway API CRDs belong to the cluster (our chart does not install them) and may be
//! missing: the kind is `Kind::OPTIONAL`, so a 404 is said once (a warning), retried with the
//! watcher's backoff, and noticed when the CRDs appear. Discovery never waits for this watch
//! beyond its first attempt: its first list, or its first failure of any sort, counts as
//! synced (`Kind::SYNC_ON_FAILURE`).

use std::borrow::Cow;

use k8s_openapi::{NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::Resource;
use serde::Deserialize;
use tracing::{info, warn};

use super::{Indexes, Kind, fingerprint, obj_key};
use crate::{
    model::{ObjKey, Problem},
    policy::route::{GrpcRoute, HttpRoute, Unusable, grpc::GRPC_ROUTE_KIND},
    split::{GATEWAY_GROUP, GATEWAY_VERSION, ROUTE_KIND, SplitRoute},
    status::{self, Decisions, RouteId, RouteKind},
};

/// The kind label of skipped GRPCRoutes and of the watch's errors.
pub const GRPC_ROUTE_METRIC: &str = "gateway_grpcroute";

/// What one HTTPRoute is to each index: a split (of its Service parents, if any) and an
/// inbound route (`None`: it has no Server parents).
#[derive(Debug)]
pub struct GatewayRoutes {
    pub split: SplitRoute,
    pub policy: Option<HttpRoute>,
}

fn unusable(kind: &'static str, key: &ObjKey, u: &Unusable) -> Problem {
    Problem { kind, object: key.to_string(), reason: u.reason, detail: u.detail.clone() }
}

/// A Gateway API route kind as the API gives it: its spec stays JSON until converted, so
/// that a route we cannot use costs a warning and a metric, not the watch.
macro_rules! gateway_route {
    ($(#[$doc:meta])* $name:ident, $kind:expr, $plural:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Deserialize)]
        pub struct $name {
            pub metadata: ObjectMeta,
            #[serde(default)]
            pub spec: serde_json::Value,
            /// Read for the route's status only.
            #[serde(default)]
            pub status: serde_json::Value,
        }

        impl Resource for $name {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }
            fn group(_: &()) -> Cow<'_, str> {
                GATEWAY_GROUP.into()
            }
            fn version(_: &()) -> Cow<'_, str> {
                GATEWAY_VERSION.into()
            }
            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

gateway_route!(
    /// An HTTPRoute: a split and/or inbound routes ([`SplitRoute::from_k8s`],
    /// [`HttpRoute::parse_gateway`]).
    GatewayHttpRoute,
    "HTTPRoute",
    "httproutes"
);

gateway_route!(
    /// A GRPCRoute: inbound gRPC routes ([`GrpcRoute::parse`]).
    GatewayGrpcRoute,
    GRPC_ROUTE_KIND,
    "grpcroutes"
);

impl Kind for GatewayHttpRoute {
    const NAME: &'static str = ROUTE_KIND;
    const OPTIONAL: bool = true;
    const SYNC_ON_FAILURE: bool = true;
    const ROUTE: Option<RouteKind> = Some(RouteKind::GatewayHttp);
    type Model = GatewayRoutes;
    fn route_status(&self) -> Option<(RouteId, status::Route)> {
        let (split, problems) = SplitRoute::from_k8s(&self.metadata, &self.spec).ok()?;
        let created = self.metadata.creation_timestamp.clone();
        let policy = HttpRoute::parse_gateway(split.key.clone(), created, &self.spec).ok()?;
        let decisions =
            Decisions { unusable: policy.unusable.as_ref(), split: Some((&split, &problems)) };
        let kind = RouteKind::GatewayHttp;
        status::Route::read(kind, &self.metadata, &self.spec, &self.status, decisions)
    }
    fn fingerprint(&self) -> Option<u64> {
        Some(fingerprint(&self.metadata, &self.spec))
    }
    fn convert(&self) -> Result<(GatewayRoutes, Vec<Problem>), Problem> {
        let (split, mut problems) = SplitRoute::from_k8s(&self.metadata, &self.spec)?;
        let created = self.metadata.creation_timestamp.clone();
        let policy = match HttpRoute::parse_gateway(split.key.clone(), created, &self.spec) {
            Ok(route) if route.servers.is_empty() => None,
            Ok(route) => {
                problems.extend(route.unusable.iter().map(|u| unusable(ROUTE_KIND, &route.key, u)));
                Some(route)
            }
            // Parents that cannot be read: the split's conversion said so already.
            Err(_) => None,
        };
        Ok((GatewayRoutes { split, policy }, problems))
    }
    fn apply(index: &Indexes, model: GatewayRoutes) -> Vec<Problem> {
        let key = model.split.key.clone();
        index.policy.lock().apply_gateway_route(&key, model.policy);
        index.discovery.lock().apply_route(model.split)
    }
    fn delete(index: &Indexes, obj: &Self) {
        if let Some(key) = obj_key(obj) {
            index.policy.lock().apply_gateway_route(&key, None);
            index.discovery.lock().delete_route(&key)
        }
    }
    fn reset(index: &Indexes, all: Vec<GatewayRoutes>) -> Vec<Problem> {
        let (splits, policies): (Vec<_>, Vec<_>) =
            all.into_iter().map(|r| (r.split, r.policy)).unzip();
        index.policy.lock().reset_gateway_routes(policies.into_iter().flatten().collect());
        index.discovery.lock().reset_routes(splits)
    }
    fn warn_missing() {
        warn!(
            kind = Self::NAME,
            "no Gateway API HTTPRoute CRD (httproutes.{GATEWAY_GROUP}, version {GATEWAY_VERSION}) in the cluster: no traffic splits and no Gateway API inbound routes until the Gateway API CRDs are installed; everything else is served, and the watch retries"
        );
    }
    fn note_installed() {
        info!(
            kind = Self::NAME,
            "the Gateway API HTTPRoute CRD is installed now: traffic splits and its inbound routes apply"
        );
    }
}

impl Kind for GatewayGrpcRoute {
    const NAME: &'static str = GRPC_ROUTE_METRIC;
    // GRPCRoute reached the Gateway API's standard channel (v1) in v1.1: a cluster may have
    // older CRDs, or none.
    const OPTIONAL: bool = true;
    const ROUTE: Option<RouteKind> = Some(RouteKind::GatewayGrpc);
    type Model = GrpcRoute;
    fn route_status(&self) -> Option<(RouteId, status::Route)> {
        let route = GrpcRoute::parse(obj_key(self)?, None, &self.spec).ok()?;
        let decisions = Decisions { unusable: route.unusable.as_ref(), split: None };
        let kind = RouteKind::GatewayGrpc;
        status::Route::read(kind, &self.metadata, &self.spec, &self.status, decisions)
    }
    fn fingerprint(&self) -> Option<u64> {
        Some(fingerprint(&self.metadata, &self.spec))
    }
    fn convert(&self) -> Result<(GrpcRoute, Vec<Problem>), Problem> {
        let problem = |object: String, reason, detail| Problem {
            kind: GRPC_ROUTE_METRIC,
            object,
            reason,
            detail,
        };
        let Some(key) = obj_key(self) else {
            return Err(problem(
                format!("{:?}/{:?}", self.metadata.namespace, self.metadata.name),
                "missing_name",
                "no namespace or name".into(),
            ));
        };
        let created = self.metadata.creation_timestamp.clone();
        let route = GrpcRoute::parse(key.clone(), created, &self.spec)
            .map_err(|e| problem(key.to_string(), "invalid_spec", e))?;
        let problems = route.unusable.iter().map(|u| unusable(GRPC_ROUTE_METRIC, &key, u));
        let problems = problems.collect();
        Ok((route, problems))
    }
    fn apply(index: &Indexes, model: GrpcRoute) -> Vec<Problem> {
        let key = model.key.clone();
        index.policy.lock().apply_grpc_route(&key, Some(model));
        Vec::new()
    }
    fn delete(index: &Indexes, obj: &Self) {
        if let Some(key) = obj_key(obj) {
            index.policy.lock().apply_grpc_route(&key, None)
        }
    }
    fn reset(index: &Indexes, all: Vec<GrpcRoute>) -> Vec<Problem> {
        index.policy.lock().reset_grpc_routes(all);
        Vec::new()
    }
    fn warn_missing() {
        warn!(
            kind = Self::NAME,
            "no Gateway API GRPCRoute CRD (grpcroutes.{GATEWAY_GROUP}, version {GATEWAY_VERSION}) in the cluster: gRPC Servers keep their default route until the Gateway API CRDs (v1.1 or later) are installed; the watch retries"
        );
    }
    fn note_installed() {
        info!(
            kind = Self::NAME,
            "the Gateway API GRPCRoute CRD is installed now: GRPCRoutes apply"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn http_route(parents: serde_json::Value, rules: serde_json::Value) -> GatewayHttpRoute {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "prod", "creationTimestamp": "2025-05-21T10:02:41Z"},
            "spec": {"parentRefs": parents, "rules": rules}
        }))
        .unwrap()
    }

    #[test]
    fn one_http_route_splits_its_services_and_routes_its_servers() {
        let service = json!({"group": "core", "kind": "Service", "name": "web", "port": 80});
        let server = json!({"group": "policy.weft.dev", "kind": "Server", "name": "web-http"});
        let rules = json!([{"backendRefs": [{"name": "web-canary", "port": 80}]}]);
        let (mixed, problems) =
            http_route(json!([service.clone(), server.clone()]), rules.clone()).convert().unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(mixed.split.apexes.len(), 1);
        let policy = mixed.policy.unwrap();
        assert_eq!(policy.group, GATEWAY_GROUP);
        assert_eq!(policy.servers, ["web-http".to_string()].into());

        let (split_only, _) = http_route(json!([service]), rules).convert().unwrap();
        assert_eq!((split_only.split.apexes.len(), split_only.policy), (1, None));

        // A Server's route with a filter the proxy cannot apply: counted as this kind's.
        let filtered =
            json!([{"filters": [{"type": "URLRewrite", "urlRewrite": {"hostname": "a"}}]}]);
        let (route, problems) = http_route(json!([server]), filtered).convert().unwrap();
        assert!(route.split.apexes.is_empty());
        assert!(route.policy.unwrap().unusable.is_some());
        assert_eq!(
            problems.iter().map(|p| (p.kind, p.reason)).collect::<Vec<_>>(),
            [(ROUTE_KIND, "unsupported_filter")]
        );
    }

    #[test]
    fn grpc_routes_convert_with_their_problems() {
        let route: GatewayGrpcRoute = serde_json::from_value(json!({
            "metadata": {"name": "echo", "namespace": "prod"},
            "spec": {
                "parentRefs": [{"group": "policy.weft.dev", "kind": "Server", "name": "web-grpc"}],
                "rules": [{"matches": [{"method": {"type": "RegularExpression", "service": "a.*"}}]}]
            }
        }))
        .unwrap();
        let (route, problems) = route.convert().unwrap();
        assert_eq!(route.servers, ["web-grpc".to_string()].into());
        assert_eq!(
            problems.iter().map(|p| (p.kind, p.reason)).collect::<Vec<_>>(),
            [(GRPC_ROUTE_METRIC, "unsupported_match")]
        );
        let nameless: GatewayGrpcRoute = serde_json::from_value(json!({"metadata": {}})).unwrap();
        assert_eq!(nameless.convert().unwrap_err().reason, "missing_name");
    }
}
