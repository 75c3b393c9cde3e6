//! Gateway API HTTPRoutes (`gateway.networking.k8s.io/v1`) as a watched kind: their Service
//! parents are split across their backends ([`crate::split`]).
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

use super::{Indexes, Kind, obj_key};
use crate::{
    model::Problem,
    split::{GATEWAY_GROUP, GATEWAY_VERSION, ROUTE_KIND, SplitRoute},
};

/// An HTTPRoute as the API gives it; the spec stays JSON until [`SplitRoute::from_k8s`], so
/// that a route we cannot use costs a warning and a metric, not the watch.
#[derive(Clone, Debug, Deserialize)]
pub struct GatewayHttpRoute {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
}

impl Resource for GatewayHttpRoute {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "HTTPRoute".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GATEWAY_GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        GATEWAY_VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "httproutes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Kind for GatewayHttpRoute {
    const NAME: &'static str = ROUTE_KIND;
    const OPTIONAL: bool = true;
    const SYNC_ON_FAILURE: bool = true;
    type Model = SplitRoute;
    fn convert(&self) -> Result<(SplitRoute, Vec<Problem>), Problem> {
        SplitRoute::from_k8s(&self.metadata, &self.spec)
    }
    fn apply(index: &Indexes, model: SplitRoute) -> Vec<Problem> {
        index.discovery.lock().apply_route(model)
    }
    fn delete(index: &Indexes, obj: &Self) {
        if let Some(key) = obj_key(obj) {
            index.discovery.lock().delete_route(&key)
        }
    }
    fn reset(index: &Indexes, all: Vec<SplitRoute>) -> Vec<Problem> {
        index.discovery.lock().reset_routes(all)
    }
    fn warn_missing() {
        warn!(
            kind = Self::NAME,
            "no Gateway API HTTPRoute CRD (httproutes.{GATEWAY_GROUP}, version {GATEWAY_VERSION}) in the cluster: no traffic splits until the Gateway API CRDs are installed; everything else is served, and the watch retries"
        );
    }
    fn note_installed() {
        info!(
            kind = Self::NAME,
            "the Gateway API HTTPRoute CRD is installed now: traffic splits apply"
        );
    }
}
