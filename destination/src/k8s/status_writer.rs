//! The route status writer: while this replica holds the lease ([`super::lease`]), patches
//! the `/status` of each route whose status differs from what it should be
//! ([`crate::status`]), once the caches have synced (before, a parent not listed yet would
//! look missing).
//!
//! A write is a JSON merge patch of `status.parents` (an atomic list: the whole of it, other
//! controllers' entries included) with the `resourceVersion` it was computed from, so that a
//! route changed meanwhile (by its owner or another controller) is answered 409 rather than
//! overwritten; the watch then brings the new version and the status is computed again. What
//! a write leaves is noted at once, so the watch event it causes finds nothing to do. Failed
//! writes are logged, counted and retried per route with a bounded exponential backoff.

use std::{collections::HashMap, time::Duration};

use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
};
use serde_json::{Value, json};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use super::{GatewayGrpcRoute, GatewayHttpRoute, HttpRouteKind, PolicyCrd, lease::Leadership};
use crate::{
    index::SharedIndex,
    metrics::{Metrics, ResultLabels},
    model::ObjKey,
    policy::{SharedPolicyIndex, model::ProxyProtocol},
    split::Apex,
    status::{Cluster, Pending, RouteId, RouteKind, SharedStatuses},
};

/// The field manager of our writes.
pub const FIELD_MANAGER: &str = "weft-destination";
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// Longest wait for one write.
const PATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The indexes, as far as statuses look at them.
struct Indexes<'a> {
    policy: &'a SharedPolicyIndex,
    discovery: &'a SharedIndex,
}

impl Cluster for Indexes<'_> {
    fn server(&self, key: &ObjKey) -> Option<ProxyProtocol> {
        self.policy.lock().server_protocol(key)
    }
    fn service_exists(&self, key: &ObjKey) -> bool {
        self.discovery.lock().has_service(key)
    }
    fn split_rival(&self, route: &ObjKey, apex: &Apex) -> Option<ObjKey> {
        self.discovery.lock().split_rival(route, apex)
    }
}

/// Runs the writer until the process ends. `synced`: discovery's and policy's first lists.
pub async fn run(
    client: Client,
    statuses: SharedStatuses,
    policy: SharedPolicyIndex,
    discovery: SharedIndex,
    mut leadership: Leadership,
    mut synced: [watch::Receiver<bool>; 2],
    metrics: Metrics,
) {
    for s in &mut synced {
        if s.wait_for(|s| *s).await.is_err() {
            return;
        }
    }
    let apis = [RouteKind::PolicyHttp, RouteKind::GatewayHttp, RouteKind::GatewayGrpc]
        .map(|k| (k, api_resource(k)));
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
    // Per route: failed attempts so far and when to try again.
    let mut retries: HashMap<RouteId, (u32, Instant)> = HashMap::new();
    loop {
        let mut next_retry: Option<Instant> = None;
        if leadership.is_leading() {
            let now = k8s_openapi::jiff::Timestamp::now();
            let now = k8s_openapi::jiff::Timestamp::from_second(now.as_second())
                .unwrap_or(now)
                .to_string();
            let cluster = Indexes { policy: &policy, discovery: &discovery };
            let pending = statuses.lock().pending(&cluster, &now);
            retries.retain(|id, _| pending.iter().any(|p| &p.id == id));
            for p in pending {
                if let Some((_, at)) = retries.get(&p.id)
                    && *at > Instant::now()
                {
                    next_retry = Some(next_retry.map_or(*at, |n| n.min(*at)));
                    continue;
                }
                // A replica that has lost the lease stops at once, even mid-way.
                if !leadership.is_leading() {
                    break;
                }
                let Some((_, ar)) = apis.iter().find(|(k, _)| *k == p.id.kind) else { continue };
                let result = match write(&client, ar, &params, &p).await {
                    Ok(obj) => {
                        let parents = match obj.data.pointer("/status/parents") {
                            Some(Value::Array(list)) => list.clone(),
                            _ => Vec::new(),
                        };
                        statuses.lock().observe(&p.id, obj.metadata.resource_version, parents);
                        debug!(route = %p.id, "route status written");
                        retries.remove(&p.id);
                        "ok"
                    }
                    Err(e) => {
                        let (tries, _) = retries.get(&p.id).copied().unwrap_or((0, Instant::now()));
                        let delay = FIRST_RETRY.saturating_mul(1 << tries.min(6)).min(MAX_RETRY);
                        let at = Instant::now() + delay;
                        retries.insert(p.id.clone(), (tries.saturating_add(1), at));
                        next_retry = Some(next_retry.map_or(at, |n| n.min(at)));
                        match e {
                            WriteError::Conflict => {
                                debug!(route = %p.id, "the route changed while its status was written; computing it again");
                                "conflict"
                            }
                            WriteError::NotFound => {
                                debug!(route = %p.id, "the route is gone");
                                "not_found"
                            }
                            WriteError::Other(error) => {
                                warn!(route = %p.id, %error, retry_in = ?delay, "writing the route status failed");
                                "error"
                            }
                        }
                    }
                };
                metrics.status_patches.get_or_create(&ResultLabels { result }).inc();
            }
        } else if !retries.is_empty() {
            info!(
                "not holding the route status lease: pending status writes are left to the holder"
            );
            retries.clear();
        }
        let retry = async {
            match next_retry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = statuses.wait_changed() => {}
            () = leadership.changed() => {}
            () = retry => {}
        }
    }
}

fn api_resource(kind: RouteKind) -> ApiResource {
    match kind {
        RouteKind::PolicyHttp => ApiResource::erase::<PolicyCrd<HttpRouteKind>>(&()),
        RouteKind::GatewayHttp => ApiResource::erase::<GatewayHttpRoute>(&()),
        RouteKind::GatewayGrpc => ApiResource::erase::<GatewayGrpcRoute>(&()),
    }
}

#[derive(Debug)]
enum WriteError {
    Conflict,
    NotFound,
    Other(String),
}

async fn write(
    client: &Client,
    ar: &ApiResource,
    params: &PatchParams,
    p: &Pending,
) -> Result<DynamicObject, WriteError> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &p.id.key.namespace, ar);
    let mut body = json!({"status": {"parents": p.parents}});
    if let Some(rv) = &p.resource_version {
        body["metadata"] = json!({"resourceVersion": rv});
    }
    let patch = Patch::Merge(&body);
    let patch = api.patch_status(&p.id.key.name, params, &patch);
    match tokio::time::timeout(PATCH_TIMEOUT, patch).await {
        Ok(Ok(obj)) => Ok(obj),
        Ok(Err(kube::Error::Api(s))) if s.code == 409 => Err(WriteError::Conflict),
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => Err(WriteError::NotFound),
        Ok(Err(e)) => Err(WriteError::Other(e.to_string())),
        Err(_) => Err(WriteError::Other(format!("no answer within {PATCH_TIMEOUT:?}"))),
    }
}
