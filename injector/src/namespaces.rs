//! Namespace annotations for the webhook: a watched cache (a kube reflector over namespace
//! metadata), so that admitting a pod costs no API call. A namespace the cache has not seen
//! yet (created a moment ago) is fetched once directly. Without Kubernetes (tests,
//! benchmarks) a static file of Namespace objects stands in.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
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
}

#[derive(Clone)]
enum Inner {
    Cache { store: Store<Meta>, ready: Arc<AtomicBool>, fallback: Option<Client> },
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
        let driver = {
            let (store, ready) = (store.clone(), ready.clone());
            async move {
                tokio::spawn(async move {
                    if store.wait_until_ready().await.is_ok() {
                        tracing::info!(namespaces = store.state().len(), "namespace cache synced");
                        ready.store(true, Ordering::Release);
                    }
                });
                reflector::reflector(writer, stream)
                    .for_each(|event| async move {
                        if let Err(e) = event {
                            tracing::warn!(error = %e, "namespace watch failed; retrying");
                        }
                    })
                    .await;
            }
        };
        (Namespaces { inner: Inner::Cache { store, ready, fallback: Some(client) } }, driver)
    }

    /// A cache fed by hand (tests): `writer` takes watcher events.
    pub fn from_store(store: Store<Meta>, ready: bool) -> Namespaces {
        let ready = Arc::new(AtomicBool::new(ready));
        Namespaces { inner: Inner::Cache { store, ready, fallback: None } }
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
        Ok(Namespaces { inner: Inner::Static(Arc::new(out)) })
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
                let Some(client) = fallback else { return Ok(None) };
                let api: Api<Namespace> = Api::all(client.clone());
                let lookup =
                    tokio::time::timeout(FALLBACK_TIMEOUT, api.get_metadata_opt(name)).await;
                let fail = |reason: String| Error::Lookup { name: name.to_string(), reason };
                match lookup {
                    Err(_) => Err(fail(format!("no answer within {FALLBACK_TIMEOUT:?}"))),
                    Ok(Err(e)) => Err(fail(e.to_string())),
                    Ok(Ok(ns)) => Ok(ns.map(|ns| ns.metadata.annotations.unwrap_or_default())),
                }
            }
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
