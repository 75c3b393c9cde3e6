//! Namespace annotations for the webhook: a watched cache (a kube reflector over namespace
//! metadata), so that admitting a pod costs no API call. A namespace the cache has not seen
//! yet (created a moment ago) is fetched once directly: at most `FALLBACK_MAX_IN_FLIGHT`
//! such lookups at once, and a namespace found not to exist is remembered for
//! `MISSING_TTL`, so that a flood of reviews naming made-up namespaces is not passed on to
//! the API server. Without Kubernetes (tests, benchmarks) a static file of Namespace objects
//! stands in.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher::{self, watcher},
    },
};

/// How long a direct lookup of an uncached namespace may take: the API server's webhook
/// timeout is at most 10 s and it is spent on our answer.
const FALLBACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Most direct lookups in flight at once; beyond that a lookup waits (within
/// `FALLBACK_TIMEOUT`) for one to finish.
const FALLBACK_MAX_IN_FLIGHT: usize = 8;

/// How long a namespace found not to exist is taken as missing without asking again.
const MISSING_TTL: Duration = Duration::from_secs(5);

/// Most names remembered as missing; past it the oldest are forgotten first.
const MISSING_MAX: usize = 4096;

type Meta = PartialObjectMeta<Namespace>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read namespaces from {path}: {reason}")]
    File { path: String, reason: String },
    #[error("cannot reach the Kubernetes API")]
    Client(#[source] kube::Error),
    #[error("namespace {name} is not in the cache and the API server did not answer: {reason}")]
    Lookup { name: String, reason: String },
}

#[derive(Clone)]
pub struct Namespaces {
    inner: Inner,
    watch_errors: prometheus_client::metrics::counter::Counter,
}

#[derive(Clone)]
enum Inner {
    Cache { store: Store<Meta>, ready: Arc<AtomicBool>, fallback: Option<Arc<Fallback>> },
    Static(Arc<BTreeMap<String, BTreeMap<String, String>>>),
}

impl Namespaces {
    /// Watches namespaces with the default client (KUBECONFIG, else in-cluster config).
    pub async fn kubernetes()
    -> Result<(Namespaces, impl Future<Output = ()> + Send + 'static), Error> {
        let client = Client::try_default().await.map_err(Error::Client)?;
        Ok(Namespaces::watch(client))
    }

    /// Starts watching namespaces through `client`; the returned future drives the watch
    /// and must be spawned. `ready()` turns true once the first list is in.
    pub fn watch(client: Client) -> (Namespaces, impl Future<Output = ()> + Send + 'static) {
        let (store, writer) = reflector::store();
        // Metadata only: annotations are all the injector reads.
        let api: Api<Meta> = Api::all(client.clone());
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            // managedFields can be larger than everything else put together and are never read.
            .modify(|ns: &mut Meta| ns.metadata.managed_fields = None);
        let ready = Arc::new(AtomicBool::new(false));
        let watch_errors = prometheus_client::metrics::counter::Counter::default();
        let driver = {
            let (store, ready, errors) = (store.clone(), ready.clone(), watch_errors.clone());
            async move {
                tokio::spawn(async move {
                    if store.wait_until_ready().await.is_ok() {
                        tracing::info!(namespaces = store.state().len(), "namespace cache synced");
                        ready.store(true, Ordering::Release);
                    }
                });
                reflector::reflector(writer, stream)
                    .for_each(|event| {
                        if let Err(e) = event {
                            tracing::warn!(error = %e, "namespace watch failed; retrying");
                            errors.inc();
                        }
                        async {}
                    })
                    .await;
            }
        };
        let fallback = Some(Arc::new(Fallback::new(client)));
        (Namespaces { inner: Inner::Cache { store, ready, fallback }, watch_errors }, driver)
    }

    /// A cache fed by hand (tests): `writer` takes watcher events.
    pub fn from_store(store: Store<Meta>, ready: bool) -> Namespaces {
        let ready = Arc::new(AtomicBool::new(ready));
        Namespaces {
            inner: Inner::Cache { store, ready, fallback: None },
            watch_errors: Default::default(),
        }
    }

    /// Namespaces from a YAML or JSON file: a Namespace, a List of them, or a
    /// multi-document stream (`kubectl get ns -o yaml` works).
    pub fn from_file(path: &Path) -> Result<Namespaces, Error> {
        let err = |reason: String| Error::File { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut out = BTreeMap::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v: serde_json::Value =
                serde::Deserialize::deserialize(doc).map_err(|e| err(e.to_string()))?;
            let items = match v.get("items").and_then(|i| i.as_array()) {
                Some(items) => items.clone(),
                None if v.is_null() => Vec::new(),
                None => vec![v],
            };
            for item in items {
                let ns: Namespace = serde_json::from_value(item).map_err(|e| err(e.to_string()))?;
                let name =
                    ns.metadata.name.ok_or_else(|| err("a namespace without a name".into()))?;
                out.insert(name, ns.metadata.annotations.unwrap_or_default());
            }
        }
        Ok(Namespaces { inner: Inner::Static(Arc::new(out)), watch_errors: Default::default() })
    }

    /// Watch failures so far (each retried with backoff), for the server's metrics.
    pub fn watch_errors(&self) -> prometheus_client::metrics::counter::Counter {
        self.watch_errors.clone()
    }

    pub fn ready(&self) -> bool {
        match &self.inner {
            Inner::Cache { ready, .. } => ready.load(Ordering::Acquire),
            Inner::Static(_) => true,
        }
    }

    /// The annotations of namespace `name`; `Ok(None)` when it does not exist.
    pub async fn annotations(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, Error> {
        match &self.inner {
            Inner::Static(map) => Ok(map.get(name).cloned()),
            Inner::Cache { store, fallback, .. } => {
                if let Some(ns) = store.get(&ObjectRef::new(name)) {
                    return Ok(Some(ns.metadata.annotations.clone().unwrap_or_default()));
                }
                let Some(fallback) = fallback else { return Ok(None) };
                fallback.lookup(name).await
            }
        }
    }
}

/// Direct lookups of namespaces the cache has not seen: bounded in number, with a short
/// memory of the ones that do not exist.
struct Fallback {
    client: Client,
    slots: tokio::sync::Semaphore,
    missing: std::sync::Mutex<Missing>,
}

impl Fallback {
    fn new(client: Client) -> Self {
        Fallback {
            client,
            slots: tokio::sync::Semaphore::new(FALLBACK_MAX_IN_FLIGHT),
            missing: std::sync::Mutex::new(Missing::default()),
        }
    }

    fn missing(&self) -> std::sync::MutexGuard<'_, Missing> {
        self.missing.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn lookup(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, Error> {
        if self.missing().contains(name, Instant::now()) {
            return Ok(None);
        }
        let fail = |reason: String| Error::Lookup { name: name.to_string(), reason };
        let api: Api<Namespace> = Api::all(self.client.clone());
        let lookup = tokio::time::timeout(FALLBACK_TIMEOUT, async {
            let Ok(_slot) = self.slots.acquire().await else {
                return Err(fail("the lookup slots are closed".into()));
            };
            api.get_metadata_opt(name).await.map_err(|e| fail(e.to_string()))
        });
        match lookup.await {
            Err(_) => Err(fail(format!(
                "no answer within {FALLBACK_TIMEOUT:?} ({FALLBACK_MAX_IN_FLIGHT} lookups at most at once)"
            ))),
            Ok(Err(e)) => Err(e),
            Ok(Ok(None)) => {
                self.missing().insert(name, Instant::now());
                Ok(None)
            }
            Ok(Ok(Some(ns))) => Ok(Some(ns.metadata.annotations.unwrap_or_default())),
        }
    }
}

/// Names found not to exist, each until `MISSING_TTL` after it was found; at most
/// `MISSING_MAX`, the oldest forgotten first.
#[derive(Default)]
struct Missing {
    until: std::collections::HashMap<String, Instant>,
    order: std::collections::VecDeque<(String, Instant)>,
}

impl Missing {
    fn contains(&mut self, name: &str, now: Instant) -> bool {
        self.expire(now);
        self.until.get(name).is_some_and(|until| *until > now)
    }

    fn insert(&mut self, name: &str, now: Instant) {
        self.expire(now);
        while self.order.len() >= MISSING_MAX {
            if let Some((old, until)) = self.order.pop_front()
                && self.until.get(&old) == Some(&until)
            {
                self.until.remove(&old);
            }
        }
        let until = now + MISSING_TTL;
        self.until.insert(name.to_string(), until);
        self.order.push_back((name.to_string(), until));
    }

    fn expire(&mut self, now: Instant) {
        while let Some((name, until)) = self.order.front() {
            if *until > now {
                break;
            }
            if self.until.get(name) == Some(until) {
                self.until.remove(name);
            }
            self.order.pop_front();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use kube::{api::ObjectMeta, core::PartialObjectMetaExt};

    fn meta(name: &str, annotations: &[(&str, &str)]) -> Meta {
        ObjectMeta {
            name: Some(name.into()),
            annotations: Some(
                annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ),
            ..Default::default()
        }
        .into_response_partial()
    }

    #[tokio::test]
    async fn the_cache_follows_watch_events() {
        let (store, mut writer) = reflector::store::<Meta>();
        let ns = Namespaces::from_store(store, true);
        assert_eq!(ns.annotations("prod").await.unwrap(), None);

        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(meta(
            "prod",
            &[("weft.dev/inject", "enabled")],
        )));
        writer.apply_watcher_event(&watcher::Event::InitApply(meta("dev", &[])));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let prod = ns.annotations("prod").await.unwrap().unwrap();
        assert_eq!(prod["weft.dev/inject"], "enabled");
        assert!(ns.annotations("dev").await.unwrap().unwrap().is_empty());

        // An annotation changed, then a namespace deleted: the next pods see it at once.
        writer.apply_watcher_event(&watcher::Event::Apply(meta(
            "prod",
            &[("weft.dev/inject", "disabled")],
        )));
        writer.apply_watcher_event(&watcher::Event::Delete(meta("dev", &[])));
        assert_eq!(ns.annotations("prod").await.unwrap().unwrap()["weft.dev/inject"], "disabled");
        assert_eq!(ns.annotations("dev").await.unwrap(), None);
    }

    #[test]
    fn missing_namespaces_are_remembered_briefly_and_boundedly() {
        let t0 = Instant::now();
        let mut m = Missing::default();
        assert!(!m.contains("ghost", t0));
        m.insert("ghost", t0);
        assert!(m.contains("ghost", t0 + MISSING_TTL / 2));
        assert!(!m.contains("other", t0));
        // Past the TTL it is asked about again.
        assert!(!m.contains("ghost", t0 + MISSING_TTL));
        assert!(m.until.is_empty() && m.order.is_empty());
        // Re-inserted later, the newer deadline counts.
        m.insert("ghost", t0);
        m.insert("ghost", t0 + MISSING_TTL / 2);
        assert!(m.contains("ghost", t0 + MISSING_TTL));
        // Bounded: the oldest names go first.
        let mut m = Missing::default();
        for i in 0..MISSING_MAX + 10 {
            m.insert(&format!("ns-{i}"), t0);
        }
        assert!(m.order.len() <= MISSING_MAX && m.until.len() <= MISSING_MAX);
        assert!(!m.contains("ns-0", t0));
        assert!(m.contains(&format!("ns-{}", MISSING_MAX + 9), t0));
    }

    #[test]
    fn static_file_of_namespaces() {
        let dir = std::env::temp_dir().join(format!("weft-ns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ns.yaml");
        std::fs::write(
            &path,
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata:\n    name: prod\n    annotations:\n      weft.dev/inject: enabled\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: dev\n",
        )
        .unwrap();
        let ns = Namespaces::from_file(&path).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let prod = rt.block_on(ns.annotations("prod")).unwrap().unwrap();
        assert_eq!(prod["weft.dev/inject"], "enabled");
        assert!(rt.block_on(ns.annotations("dev")).unwrap().unwrap().is_empty());
        std::fs::write(&path, "kind: Namespace\nmetadata: 7\n").unwrap();
        assert!(Namespaces::from_file(&path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
