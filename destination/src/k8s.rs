//! The Kubernetes source: cluster-wide watches of Namespaces, Services, EndpointSlices and
//! Pods, and of the six policy kinds of `policy.weft.dev` (kube-runtime watchers, with
//! backoff), converted to the model and fed to the indexes; and of the Gateway API's
//! HTTPRoutes, for traffic splits and inbound routes, and GRPCRoutes, for inbound routes
//! ([`gateway`]).
//! Lookups never call the API: the index is the cache. Each watch's (re)list replaces its
//! kind in the index at once, so objects deleted while a watch was down disappear.
//!
//! The route watches also feed the route statuses ([`crate::status`]), which the leader
//! among the replicas ([`lease`]) writes ([`status`]); the routes' parents and backends
//! (Servers, Services) wake the writer when they change.

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt::Debug,
    hash::{Hash as _, Hasher as _},
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use futures_util::StreamExt as _;
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        core::v1::{Namespace as K8sNamespace, Pod as K8sPod, Service as K8sService},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::{Deserialize, de::DeserializeOwned};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    index::SharedIndex,
    metrics::{KindLabels, Metrics},
    model::{Namespace, ObjKey, Pod, Problem, Service, Slice},
    policy::{
        SharedPolicyIndex,
        model::{GROUP, PolicyKind, PolicyObject},
        route::HttpRoute,
    },
    status::{self, Decisions, RouteId, RouteKind, SharedStatuses},
};

pub mod gateway;
pub mod lease;
pub mod status_writer;

use gateway::{GatewayGrpcRoute, GatewayHttpRoute};

/// Where the watches write: the discovery index, and the policy index (which also needs
/// the pods and namespaces).
#[derive(Clone, Debug)]
pub struct Indexes {
    pub discovery: SharedIndex,
    pub policy: SharedPolicyIndex,
    /// The routes whose status is written.
    pub status: SharedStatuses,
}

/// What turns true once the watches have listed: discovery's kinds, and policy's.
#[derive(Debug)]
pub struct SyncedTx {
    pub discovery: watch::Sender<bool>,
    pub policy: watch::Sender<bool>,
}

/// Objects per LIST page. Pages are parsed whole, so a smaller page keeps the peak memory of
/// a (re)list low (a page of 500 pods is several MiB of JSON and objects); 100 costs a few
/// more round trips on a big cluster and nothing on a small one.
const LIST_PAGE_SIZE: u32 = 100;

/// How one kind goes from the API into the index. `apply` and `reset` return the problems
/// they found (counted as skipped objects); most kinds find none.
trait Kind:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
    const NAME: &'static str;
    /// Whether a cluster may lack the kind's CRD (see [`PolicyKind::optional`]): a 404 then
    /// means none of its objects (the kind is listed, empty) and the watch retries.
    const OPTIONAL: bool = false;
    /// Whether the watch's first failure of any sort counts as synced, not only a missing
    /// CRD's 404: for a kind that the others must not wait for, as they may never list it.
    const SYNC_ON_FAILURE: bool = false;
    type Model;
    fn convert(&self) -> Result<(Self::Model, Vec<Problem>), Problem>;
    fn apply(index: &Indexes, model: Self::Model) -> Vec<Problem>;
    fn delete(index: &Indexes, obj: &Self);
    fn reset(index: &Indexes, all: Vec<Self::Model>) -> Vec<Problem>;
    /// For a route kind: the kind its status is written as.
    const ROUTE: Option<RouteKind> = None;
    /// Whether the kind's objects are routes' parents or backends, whose changes may change
    /// route statuses.
    const STATUS_INPUT: bool = false;
    /// A route as its status needs it (route kinds only).
    fn route_status(&self) -> Option<(RouteId, status::Route)> {
        None
    }
    /// What the model is made of (route kinds only), to tell a change the index must see
    /// from one of the status alone (our own writes come back as such).
    fn fingerprint(&self) -> Option<u64> {
        None
    }
    /// Said when an [`OPTIONAL`](Kind::OPTIONAL) kind's CRD is found missing (once, until
    /// the kind lists again).
    fn warn_missing() {
        warn!(
            kind = Self::NAME,
            "the resource is not installed (apply the chart's crds/); none until it is"
        );
    }
    /// Said once when the kind lists after its CRD was missing.
    fn note_installed() {
        info!(kind = Self::NAME, "the resource is installed now: its objects apply");
    }
}

fn obj_key<K: Resource>(obj: &K) -> Option<ObjKey> {
    Some(ObjKey::new(obj.namespace()?, obj.meta().name.clone()?))
}

/// What a route's model is made of: its spec and creation time.
fn fingerprint(meta: &ObjectMeta, spec: &serde_json::Value) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    spec.to_string().hash(&mut h);
    meta.creation_timestamp.as_ref().map(|t| t.0.as_second()).hash(&mut h);
    h.finish()
}

impl Kind for K8sNamespace {
    const NAME: &'static str = "namespace";
    type Model = Namespace;
    fn convert(&self) -> Result<(Namespace, Vec<Problem>), Problem> {
        Namespace::from_k8s(self)
    }
    fn apply(index: &Indexes, model: Namespace) -> Vec<Problem> {
        index.policy.lock().apply_namespace(&model);
        index.discovery.lock().apply_namespace(model);
        Vec::new()
    }
    fn delete(index: &Indexes, obj: &Self) {
        if let Some(name) = &obj.metadata.name {
            index.policy.lock().delete_namespace(name);
            index.discovery.lock().delete_namespace(name)
        }
    }
    fn reset(index: &Indexes, all: Vec<Namespace>) -> Vec<Problem> {
        index.policy.lock().reset_namespaces(&all);
        index.discovery.lock().reset_namespaces(all);
        Vec::new()
    }
}

impl Kind for K8sService {
    const NAME: &'static str = "service";
    const STATUS_INPUT: bool = true;
    type Model = Service;
    fn convert(&self) -> Result<(Service, Vec<Problem>), Problem> {
        Service::from_k8s(self)
    }
    fn apply(index: &Indexes, model: Service) -> Vec<Problem> {
        index.discovery.lock().apply_service(model);
        Vec::new()
    }
    fn delete(index: &Indexes, obj: &Self) {
        if let Some(key) = obj_key(obj) {
            index.discovery.lock().delete_service(&key)
        }
    }
    fn reset(index: &Indexes, all: Vec<Service>) -> Vec<Problem> {
        index.discovery.lock().reset_services(all);
        Vec::new()
    }
}

impl Kind for EndpointSlice {
    const NAME: &'static str = "endpointslice";
    type Model = Slice;
    fn convert(&self) -> Result<(Slice, Vec<Problem>), Problem> {
        Slice::from_k8s(self)
    }
    fn apply(index: &Indexes, model: Slice) -> Vec<Problem> {
        index.discovery.lock().apply_slice(model);
        Vec::new()
    }
    fn delete(index: &Indexes, obj: &Self) {
        if let Some(key) = obj_key(obj) {
            index.discovery.lock().delete_slice(&key)
        }
    }
    fn reset(index: &Indexes, all: Vec<Slice>) -> Vec<Problem> {
        index.discovery.lock().reset_slices(all);
        Vec::new()
    }
}

impl Kind for K8sPod {
    const NAME: &'static str = "pod";
    type Model = Pod;
    fn convert(&self) -> Result<(Pod, Vec<Problem>), Problem> {
        Pod::from_k8s(self)
    }
    fn apply(index: &Indexes, model: Pod) -> Vec<Problem> {
        index.policy.lock().apply_pod(&model);
        index.discovery.lock().apply_pod(model);
        Vec::new()
    }
    fn delete(index: &Indexes, obj: &Self) {
        if let Some(key) = obj_key(obj) {
            index.policy.lock().delete_pod(&key);
            index.discovery.lock().delete_pod(&key)
        }
    }
    fn reset(index: &Indexes, all: Vec<Pod>) -> Vec<Problem> {
        index.policy.lock().reset_pods(&all);
        index.discovery.lock().reset_pods(all);
        Vec::new()
    }
}

/// One of the policy kinds, as a type for [`PolicyCrd`].
pub trait PolicyCrdKind: Clone + Debug + Send + Sync + 'static {
    const KIND: PolicyKind;
}

macro_rules! policy_kinds {
    ($($name:ident => $kind:expr),* $(,)?) => {$(
        #[derive(Clone, Debug)]
        pub struct $name;
        impl PolicyCrdKind for $name {
            const KIND: PolicyKind = $kind;
        }
    )*};
}

policy_kinds! {
    ServerKind => PolicyKind::Server,
    AuthorizationPolicyKind => PolicyKind::AuthorizationPolicy,
    MeshTlsKind => PolicyKind::MeshTls,
    NetworkKind => PolicyKind::Network,
    HttpRouteKind => PolicyKind::HttpRoute,
    RateLimitKind => PolicyKind::RateLimit,
}

/// A policy object as the API gives it. The spec stays JSON until [`PolicyObject::parse`]:
/// an object whose spec we cannot use must cost a warning and a metric, not the watch.
#[derive(Clone, Debug, Deserialize)]
pub struct PolicyCrd<K> {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
    /// Read for the routes' statuses only.
    #[serde(default)]
    pub status: serde_json::Value,
    #[serde(skip)]
    kind: PhantomData<K>,
}

impl<K: PolicyCrdKind> Resource for PolicyCrd<K> {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        K::KIND.kind().into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        K::KIND.version().into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        K::KIND.plural().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<K: PolicyCrdKind> Kind for PolicyCrd<K> {
    const NAME: &'static str = K::KIND.metric();
    const OPTIONAL: bool = K::KIND.optional();
    const ROUTE: Option<RouteKind> =
        if matches!(K::KIND, PolicyKind::HttpRoute) { Some(RouteKind::PolicyHttp) } else { None };
    const STATUS_INPUT: bool = matches!(K::KIND, PolicyKind::Server);
    type Model = PolicyObject;
    fn route_status(&self) -> Option<(RouteId, status::Route)> {
        let kind = Self::ROUTE?;
        let key = obj_key(self)?;
        let route = HttpRoute::parse(key, None, &self.spec).ok()?;
        let decisions = Decisions { unusable: route.unusable.as_ref(), split: None };
        status::Route::read(kind, &self.metadata, &self.spec, &self.status, decisions)
    }
    fn fingerprint(&self) -> Option<u64> {
        Self::ROUTE.map(|_| fingerprint(&self.metadata, &self.spec))
    }
    fn convert(&self) -> Result<(PolicyObject, Vec<Problem>), Problem> {
        PolicyObject::convert(K::KIND, &self.metadata, &self.spec)
    }
    fn apply(index: &Indexes, model: PolicyObject) -> Vec<Problem> {
        index.policy.lock().apply(model);
        Vec::new()
    }
    fn delete(index: &Indexes, obj: &Self) {
        if let Some(key) = obj_key(obj) {
            index.policy.lock().delete(K::KIND, &key)
        }
    }
    fn reset(index: &Indexes, all: Vec<PolicyObject>) -> Vec<Problem> {
        index.policy.lock().reset(K::KIND, all);
        Vec::new()
    }
}

/// Set to true once every watch has listed its kind; gRPC lookups wait for it so that a
/// proxy is never told "does not exist" about a service that is merely not listed yet.
#[derive(Clone, Debug)]
pub struct Synced {
    kinds: usize,
    pending: Arc<AtomicUsize>,
    tx: Arc<watch::Sender<bool>>,
}

impl Synced {
    fn new(kinds: usize, tx: watch::Sender<bool>) -> Self {
        Self { kinds, pending: Arc::new(AtomicUsize::new(kinds)), tx: Arc::new(tx) }
    }

    fn done(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            info!(kinds = self.kinds, "kubernetes caches synced");
            self.tx.send_replace(true);
        }
    }
}

/// Runs the watches until the process ends; `synced` turns true after the first lists.
/// Discovery does not wait for the policy kinds: a cluster without the CRDs (or without the
/// RBAC to read them) still discovers, while policy lookups wait (and the watch errors say
/// why).
pub async fn run(client: Client, index: Indexes, metrics: Metrics, synced: SyncedTx) {
    // Policy needs the pods and namespaces that discovery lists, and its own kinds.
    let mut discovery_synced = synced.discovery.subscribe();
    let (crds_tx, mut crds_synced) = watch::channel(false);
    tokio::spawn(async move {
        if discovery_synced.wait_for(|s| *s).await.is_ok()
            && crds_synced.wait_for(|s| *s).await.is_ok()
        {
            synced.policy.send_replace(true);
        }
    });
    // The policy kinds, the Gateway API's GRPCRoutes, and its HTTPRoutes (which discovery
    // does not wait for, but policy must: they may restrict a Server's routes).
    let crds = Synced::new(PolicyKind::ALL.len() + 2, crds_tx);
    tokio::join!(
        watch_kind::<PolicyCrd<ServerKind>>(
            client.clone(),
            index.clone(),
            metrics.clone(),
            crds.clone()
        ),
        watch_kind::<PolicyCrd<AuthorizationPolicyKind>>(
            client.clone(),
            index.clone(),
            metrics.clone(),
            crds.clone()
        ),
        watch_kind::<PolicyCrd<MeshTlsKind>>(
            client.clone(),
            index.clone(),
            metrics.clone(),
            crds.clone()
        ),
        watch_kind::<PolicyCrd<NetworkKind>>(
            client.clone(),
            index.clone(),
            metrics.clone(),
            crds.clone()
        ),
        watch_kind::<PolicyCrd<HttpRouteKind>>(
            client.clone(),
            index.clone(),
            metrics.clone(),
            crds.clone()
        ),
        watch_kind::<PolicyCrd<RateLimitKind>>(
            client.clone(),
            index.clone(),
            metrics.clone(),
            crds.clone()
        ),
        watch_kind::<GatewayGrpcRoute>(
            client.clone(),
            index.clone(),
            metrics.clone(),
            crds.clone()
        ),
        run_discovery(client, index, metrics, synced.discovery, crds),
    );
}

async fn run_discovery(
    client: Client,
    index: Indexes,
    metrics: Metrics,
    synced: watch::Sender<bool>,
    policy: Synced,
) {
    let synced = Synced::new(5, synced);
    tokio::join!(
        watch_listed::<GatewayHttpRoute>(
            client.clone(),
            index.clone(),
            metrics.clone(),
            synced.clone(),
            Some(policy)
        ),
        watch_kind::<K8sNamespace>(client.clone(), index.clone(), metrics.clone(), synced.clone()),
        watch_kind::<K8sService>(client.clone(), index.clone(), metrics.clone(), synced.clone()),
        watch_kind::<EndpointSlice>(client.clone(), index.clone(), metrics.clone(), synced.clone()),
        watch_kind::<K8sPod>(client, index, metrics, synced),
    );
}

/// The API server's answer when the resource does not exist: no CRD. Any request of the
/// watch can get it (the CRD may go while the watch runs).
fn is_not_found(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 404,
        watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

async fn watch_kind<K: Kind>(client: Client, index: Indexes, metrics: Metrics, synced: Synced) {
    watch_listed::<K>(client, index, metrics, synced, None).await
}

/// [`watch_kind`], also telling `listed` once the kind has really listed (or its CRD is
/// missing) — never at a failure that `SYNC_ON_FAILURE` lets `synced` through: policy must
/// not answer without routes that may restrict a Server while discovery goes on.
async fn watch_listed<K: Kind>(
    client: Client,
    index: Indexes,
    metrics: Metrics,
    synced: Synced,
    listed: Option<Synced>,
) {
    let api: Api<K> = Api::all(client);
    let config = watcher::Config::default().page_size(LIST_PAGE_SIZE);
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut listing: Option<Vec<K::Model>> = None;
    let mut listing_routes: Vec<(RouteId, status::Route)> = Vec::new();
    // Route kinds: each object's fingerprint, so that a change of its status alone (which
    // our own status writes cause) does not convert it again (nor count its problems again).
    let mut fingerprints: HashMap<ObjKey, u64> = HashMap::new();
    let statuses = &index.status;
    let status_changed = || {
        if K::ROUTE.is_some() || K::STATUS_INPUT {
            statuses.changed();
        }
    };
    let mut first_sync = Some(synced);
    let mut first_list = listed;
    // Whether the CRD was missing (an OPTIONAL kind's 404): said once, not at every retry.
    let mut missing = false;
    let skip = |problems: Vec<Problem>| problems.iter().for_each(|p| metrics.skip(p));
    let convert = |obj: &K| match obj.convert() {
        Ok((model, problems)) => {
            skip(problems);
            Some(model)
        }
        Err(problem) => {
            metrics.skip(&problem);
            None
        }
    };
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => {
                debug!(kind = K::NAME, "listing");
                listing = Some(Vec::new());
                listing_routes.clear();
                fingerprints.clear();
            }
            Ok(watcher::Event::InitApply(obj)) => {
                if let (Some(key), Some(f)) = (obj_key(&obj), obj.fingerprint()) {
                    fingerprints.insert(key, f);
                }
                listing_routes.extend(obj.route_status());
                if let (Some(list), Some(model)) = (listing.as_mut(), convert(&obj)) {
                    list.push(model);
                }
            }
            Ok(watcher::Event::InitDone) => {
                let all = listing.take().unwrap_or_default();
                if std::mem::take(&mut missing) {
                    K::note_installed();
                }
                info!(kind = K::NAME, objects = all.len(), "listed");
                skip(K::reset(&index, all));
                if let Some(kind) = K::ROUTE {
                    statuses.lock().reset(kind, std::mem::take(&mut listing_routes));
                }
                status_changed();
                first_sync.take().into_iter().chain(first_list.take()).for_each(|s| s.done());
            }
            Ok(watcher::Event::Apply(obj)) => {
                let key = obj_key(&obj);
                let unchanged = match (&key, obj.fingerprint()) {
                    (Some(key), Some(f)) => fingerprints.insert(key.clone(), f) == Some(f),
                    _ => false,
                };
                if let Some((id, route)) = obj.route_status() {
                    statuses.lock().apply(id, route);
                } else if let (Some(kind), Some(key)) = (K::ROUTE, key) {
                    statuses.lock().delete(&RouteId { kind, key });
                }
                if unchanged {
                    debug!(kind = K::NAME, "only the status changed");
                } else if let Some(model) = convert(&obj) {
                    skip(K::apply(&index, model));
                }
                status_changed();
            }
            Ok(watcher::Event::Delete(obj)) => {
                K::delete(&index, &obj);
                if let Some(key) = obj_key(&obj) {
                    fingerprints.remove(&key);
                    if let Some(kind) = K::ROUTE {
                        statuses.lock().delete(&RouteId { kind, key });
                    }
                }
                status_changed();
            }
            Err(error) => {
                metrics.watch_errors.get_or_create(&KindLabels { kind: K::NAME }).inc();
                let not_installed = K::OPTIONAL && is_not_found(&error);
                if not_installed {
                    if !std::mem::replace(&mut missing, true) {
                        K::warn_missing();
                    } else {
                        debug!(kind = K::NAME, %error, "still not installed");
                    }
                    // Without the CRD there can be no such objects: none of the old ones
                    // applies.
                    skip(K::reset(&index, Vec::new()));
                    fingerprints.clear();
                    if let Some(kind) = K::ROUTE {
                        statuses.lock().reset(kind, Vec::new());
                    }
                    status_changed();
                } else {
                    warn!(kind = K::NAME, %error, "watch failed; retrying");
                }
                if (not_installed || K::SYNC_ON_FAILURE)
                    && let Some(s) = first_sync.take()
                {
                    s.done();
                }
                if not_installed && let Some(s) = first_list.take() {
                    s.done();
                }
            }
        }
    }
}
