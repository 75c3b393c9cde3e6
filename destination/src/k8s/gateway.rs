//! The watch of Gateway API HTTPRoutes (`gateway.networking.k8s.io/v1`), whose Service
//! parents are split across their backends ([`crate::split`]).
//!
//! The Gateway API CRDs belong to the cluster (our chart does not install them) and may be
//! missing: then the list fails with 404, which is said once (a warning), retried with the
//! watcher's backoff, and noticed when the CRDs appear. Discovery never waits for this watch
//! beyond its first attempt: its first list, or its first failure, counts as synced.

use std::borrow::Cow;

use futures_util::StreamExt as _;
use k8s_openapi::{NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::{LIST_PAGE_SIZE, Synced, obj_key};
use crate::{
    index::SharedIndex,
    metrics::{KindLabels, Metrics},
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

/// The API server's answer when the resource does not exist: no CRD.
fn is_not_found(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

pub(super) async fn watch_routes(
    client: Client,
    index: SharedIndex,
    metrics: Metrics,
    synced: Synced,
) {
    let api: Api<GatewayHttpRoute> = Api::all(client);
    let config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut listing: Option<Vec<SplitRoute>> = None;
    let mut first_sync = Some(synced);
    let mut missing = false;
    let skip = |problems: &[crate::model::Problem]| problems.iter().for_each(|p| metrics.skip(p));
    let convert = |obj: &GatewayHttpRoute| match SplitRoute::from_k8s(&obj.metadata, &obj.spec) {
        Ok((route, problems)) => {
            skip(&problems);
            Some(route)
        }
        Err(problem) => {
            metrics.skip(&problem);
            None
        }
    };
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => {
                debug!(kind = ROUTE_KIND, "listing");
                listing = Some(Vec::new());
            }
            Ok(watcher::Event::InitApply(obj)) => {
                if let (Some(list), Some(route)) = (listing.as_mut(), convert(&obj)) {
                    list.push(route);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let all = listing.take().unwrap_or_default();
                if std::mem::take(&mut missing) {
                    info!("the Gateway API HTTPRoute CRD is installed now: traffic splits apply");
                }
                info!(kind = ROUTE_KIND, objects = all.len(), "listed");
                skip(&index.lock().reset_routes(all));
                if let Some(s) = first_sync.take() {
                    s.done();
                }
            }
            Ok(watcher::Event::Apply(obj)) => {
                if let Some(route) = convert(&obj) {
                    skip(&index.lock().apply_route(route));
                }
            }
            Ok(watcher::Event::Delete(obj)) => {
                if let Some(key) = obj_key(&obj) {
                    index.lock().delete_route(&key);
                }
            }
            Err(error) => {
                metrics.watch_errors.get_or_create(&KindLabels { kind: ROUTE_KIND }).inc();
                if is_not_found(&error) {
                    if !std::mem::replace(&mut missing, true) {
                        warn!(
                            "no Gateway API HTTPRoute CRD (httproutes.{GATEWAY_GROUP}, version {GATEWAY_VERSION}) in the cluster: no traffic splits until the Gateway API CRDs are installed; everything else is served, and the watch retries"
                        );
                    } else {
                        debug!(%error, "still no HTTPRoute CRD");
                    }
                    // Without the CRD there are no routes: none of the old ones applies.
                    skip(&index.lock().reset_routes(Vec::new()));
                } else {
                    warn!(kind = ROUTE_KIND, %error, "watch failed; retrying");
                }
                // Discovery does not wait for a kind it may never be able to list.
                if let Some(s) = first_sync.take() {
                    s.done();
                }
            }
        }
    }
}
