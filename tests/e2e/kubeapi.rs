//! A fake Kubernetes API server for end-to-end tests: plain HTTP on loopback, answering the
//! real kube client (and kube-runtime's watcher) with the JSON objects the test puts in.
//!
//! Serves, for any collection (`/api/v1/pods`, `/apis/discovery.k8s.io/v1/endpointslices`, ...):
//! - LIST: `GET <collection>` and `GET <prefix>/namespaces/{ns}/<resource>`, a `...List` with
//!   `metadata.resourceVersion`, in pages when asked (`limit`, `continue`);
//!   `labelSelector` equality terms (`a=b,c!=d`, `e`) are honoured;
//! - WATCH: the same with `watch=true`: newline-delimited JSON events (chunked) from
//!   `resourceVersion` on (every event is kept, so any version can be resumed), then new ones
//!   until the client goes away or `timeoutSeconds` passes;
//! - GET of one object: `<prefix>/namespaces/{ns}/<resource>/{name}`, `/api/v1/namespaces/{ns}`;
//! - POST to a path registered with [`FakeApi::on_post`] (e.g. a TokenReview); otherwise
//!   POST to a namespaced collection creates the object (409 `AlreadyExists` if it exists);
//! - PUT of one object replaces it, 409 `Conflict` when the body's `resourceVersion` is not
//!   the stored one (optimistic concurrency, as for a Lease);
//! - PATCH of an object's `/status` with a JSON merge patch (`application/merge-patch+json`):
//!   the patch's `status` is merged into the stored object's (the rest of it is ignored, as
//!   the status subresource ignores it), 409 when its `metadata.resourceVersion` is not the
//!   stored one; the object gets a new resourceVersion and watchers a MODIFIED event;
//! - `GET /version`, the server's version as a v1.33 API server gives it.
//!
//! Anything else gets a `Status` 404/405, as the real server would answer; so does a collection
//! marked missing with [`FakeApi::set_missing`] (a CRD that is not installed). One marked
//! with [`FakeApi::set_forbidden`] gets 403 (no RBAC for it).

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

type Handler = Arc<dyn Fn(Value) -> (u16, Value) + Send + Sync>;
type Body = BoxBody<Bytes, Infallible>;

#[derive(Clone)]
struct Event {
    collection: String,
    rv: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// collection → (namespace, name) → object.
    objects: HashMap<String, BTreeMap<(String, String), Value>>,
    events: Vec<Event>,
}

struct Shared {
    store: Mutex<Store>,
    /// The latest resourceVersion, for watchers to wake on.
    latest: watch::Sender<u64>,
    posts: Mutex<HashMap<String, Handler>>,
    requests: Mutex<Vec<String>>,
    /// Collections the server fails every request for, with the status: 404 for a resource
    /// it does not know (a CRD not installed), 403 for one the client may not read.
    failing: Mutex<HashMap<String, u16>>,
}

impl Shared {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake API server; stopped when dropped.
pub struct FakeApi {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    dir: PathBuf,
}

impl FakeApi {
    /// Starts the server on 127.0.0.1 (an ephemeral port), on its own thread and runtime.
    pub fn start() -> FakeApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake API");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            latest: watch::Sender::new(0),
            posts: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            failing: Mutex::new(Default::default()),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let s = shared.clone();
        std::thread::Builder::new()
            .name("fake-kube-api".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    tokio::select! {
                        () = accept_loop(listener, s) => {}
                        _ = stopped => {}
                    }
                });
            })
            .expect("spawn fake API thread");
        let dir = std::env::temp_dir().join(format!(
            "weft-fake-kube-api-{}-{}",
            std::process::id(),
            addr.port()
        ));
        FakeApi { addr, shared, stop: Some(stop), dir }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Writes a kubeconfig pointing at this server (plain HTTP, a dummy token) and returns its
    /// path; give it to a process as `KUBECONFIG`.
    pub fn kubeconfig(&self) -> PathBuf {
        std::fs::create_dir_all(&self.dir).expect("kubeconfig dir");
        let path = self.dir.join("kubeconfig");
        let config = json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url()}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
            "current-context": "fake",
        });
        std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json"))
            .expect("write kubeconfig");
        path
    }

    /// Adds or replaces an object (by namespace and name) in `collection` (an API path like
    /// `/api/v1/pods`), sets its resourceVersion (and uid/creationTimestamp when missing), and
    /// tells the watchers (ADDED or MODIFIED).
    pub fn put(&self, collection: &str, object: Value) {
        self.shared.put(collection, object);
    }

    /// The stored object, if any.
    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let collection = collection.trim_end_matches('/');
        let store = self.shared.store();
        store.objects.get(collection)?.get(&(namespace.to_string(), name.to_string())).cloned()
    }
}

impl Shared {
    /// See [`FakeApi::put`]; returns the object as stored.
    fn put(&self, collection: &str, object: Value) -> Value {
        let mut store = self.store();
        let object = store.put(collection, object);
        let rv = store.rv;
        drop(store);
        self.latest.send_replace(rv);
        object
    }
}

impl Store {
    /// Stores an object (the caller tells the watchers about `self.rv`).
    fn put(&mut self, collection: &str, mut object: Value) -> Value {
        let collection = collection.trim_end_matches('/').to_string();
        let key = object_key(&object);
        let store = self;
        store.rv += 1;
        let rv = store.rv;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("00000000-0000-4000-8000-{rv:012}"));
        }
        if meta.get("creationTimestamp").is_none() {
            meta["creationTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        let old = store.objects.entry(collection.clone()).or_default().insert(key, object.clone());
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        store.events.push(Event { collection, rv, kind, object: object.clone() });
        object
    }
}

impl FakeApi {
    /// Removes an object and tells the watchers (DELETED). Unknown objects are ignored.
    pub fn delete(&self, collection: &str, namespace: &str, name: &str) {
        let collection = collection.trim_end_matches('/').to_string();
        let mut store = self.shared.store();
        let Some(mut object) = store
            .objects
            .get_mut(&collection)
            .and_then(|c| c.remove(&(namespace.to_string(), name.to_string())))
        else {
            return;
        };
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        store.events.push(Event { collection, rv, kind: "DELETED", object });
        drop(store);
        self.shared.latest.send_replace(rv);
    }

    /// Answers POSTs to `path` with `handler(body)` → (status, JSON body).
    pub fn on_post(
        &self,
        path: &str,
        handler: impl Fn(Value) -> (u16, Value) + Send + Sync + 'static,
    ) {
        self.shared
            .posts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_string(), Arc::new(handler));
    }

    /// Makes `collection` unknown to the server (404 for every request, as for a CRD that is
    /// not installed), or known again.
    pub fn set_missing(&self, collection: &str, missing: bool) {
        self.set_failing(collection, missing.then_some(404));
    }

    /// Makes every request for `collection` forbidden (403, as without RBAC for it), or
    /// served again.
    pub fn set_forbidden(&self, collection: &str, forbidden: bool) {
        self.set_failing(collection, forbidden.then_some(403));
    }

    fn set_failing(&self, collection: &str, status: Option<u16>) {
        let collection = collection.trim_end_matches('/').to_string();
        let mut failing = self.shared.failing.lock().unwrap_or_else(|e| e.into_inner());
        match status {
            Some(code) => failing.insert(collection, code),
            None => failing.remove(&collection),
        };
    }

    /// Requests served so far, as `METHOD path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn object_key(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (s(&meta["namespace"]), s(&meta["name"]))
}

async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((io, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&shared, req).await) }
            });
            let _ = http1::Builder::new().serve_connection(TokioIo::new(io), svc).await;
        });
    }
}

/// An API path split into its collection and the namespace/name it names.
#[derive(Debug, PartialEq)]
struct Target {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    /// `status` for `.../{name}/status`.
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let prefix_len = match segs.first() {
        Some(&"api") => 2,
        Some(&"apis") => 3,
        _ => return None,
    };
    if segs.len() <= prefix_len || segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    let prefix = segs[..prefix_len].join("/");
    let collection = |res: &str| format!("/{prefix}/{res}");
    let t = |res: &str, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
        collection: collection(res),
        namespace: ns.map(String::from),
        name: name.map(String::from),
        subresource: sub.map(String::from),
    };
    let t = match &segs[prefix_len..] {
        [res] => t(res, None, None, None),
        // Also `/api/v1/namespaces/{name}`: a cluster-scoped object.
        [res, name] => t(res, None, Some(name), None),
        ["namespaces", ns, res] => t(res, Some(ns), None, None),
        ["namespaces", ns, res, name] => t(res, Some(ns), Some(name), None),
        ["namespaces", ns, res, name, "status"] => t(res, Some(ns), Some(name), Some("status")),
        _ => return None,
    };
    Some(t)
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=b`, `a==b`, `a!=b`, `a`, `!a`, comma separated.
fn selector_matches(selector: &str, object: &Value) -> bool {
    let labels = &object["metadata"]["labels"];
    selector.split(',').map(str::trim).filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k.trim()].as_str() == Some(v.trim_start_matches('=').trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels.get(k).is_none()
        } else {
            labels.get(term).is_some()
        }
    })
}

fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let mut rsp = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    rsp
}

/// What `kubectl version` reads: a v1.33 API server's `/version`.
fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.1",
        "gitCommit": "8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828", "gitTreeState": "clean",
        "buildDate": "2025-05-15T08:19:08Z", "goVersion": "go1.24.2", "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn status(code: u16, reason: &str, message: String) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    full(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &body)
}

fn api_version(collection: &str) -> String {
    let segs: Vec<&str> = collection.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["api", v, _] => v.to_string(),
        ["apis", g, v, _] => format!("{g}/{v}"),
        _ => "v1".into(),
    }
}

fn list_kind(collection: &str, items: &[Value]) -> String {
    if let Some(kind) = items.first().and_then(|i| i["kind"].as_str()) {
        return format!("{kind}List");
    }
    let resource = collection.rsplit('/').next().unwrap_or_default();
    let kind = match resource {
        "endpointslices" => "EndpointSlice".to_string(),
        "tokenreviews" => "TokenReview".to_string(),
        other => {
            let singular = other
                .strip_suffix("es")
                .filter(|s| s.ends_with("ss"))
                .or_else(|| other.strip_suffix('s'))
                .unwrap_or(other);
            let mut c = singular.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        }
    };
    format!("{kind}List")
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    shared.requests.lock().unwrap_or_else(|e| e.into_inner()).push(format!(
        "{} {}",
        req.method(),
        req.uri().path_and_query().map(|p| p.as_str()).unwrap_or_default()
    ));
    if req.method() == Method::POST {
        let handler = shared.posts.lock().unwrap_or_else(|e| e.into_inner()).get(&path).cloned();
        let Some(handler) = handler else {
            return match parse_path(&path) {
                Some(target @ Target { namespace: Some(_), name: None, .. }) => {
                    write(shared, req, target).await
                }
                _ => status(404, "NotFound", format!("no POST handler for {path}")),
            };
        };
        let Ok(body) = req.into_body().collect().await else {
            return status(400, "BadRequest", "unreadable body".into());
        };
        let Ok(body) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
            return status(400, "BadRequest", "body is not JSON".into());
        };
        let (code, rsp) = handler(body);
        return full(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), &rsp);
    }
    if req.method() == Method::PUT || req.method() == Method::PATCH {
        return match parse_path(&path) {
            Some(target @ Target { name: Some(_), .. }) => write(shared, req, target).await,
            _ => status(405, "MethodNotAllowed", format!("{} {path}", req.method())),
        };
    }
    if req.method() != Method::GET {
        return status(405, "MethodNotAllowed", format!("{} is not supported here", req.method()));
    }
    if path == "/version" {
        return full(StatusCode::OK, &version());
    }
    let Some(target) = parse_path(&path) else {
        return status(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        );
    };
    let failing =
        shared.failing.lock().unwrap_or_else(|e| e.into_inner()).get(&target.collection).copied();
    match failing {
        Some(404) => {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
            );
        }
        Some(code) => {
            let why = format!("{} is forbidden: the client may not read it", target.collection);
            return status(code, "Forbidden", why);
        }
        None => {}
    }
    let q = query(&req);
    let selector = q.get("labelSelector").cloned().unwrap_or_default();
    let in_scope = |obj: &Value| {
        target
            .namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
            && selector_matches(&selector, obj)
    };

    if let Some(name) = &target.name {
        let store = shared.store();
        let key = (target.namespace.clone().unwrap_or_default(), name.clone());
        return match store.objects.get(&target.collection).and_then(|c| c.get(&key)) {
            Some(obj) => full(StatusCode::OK, obj),
            None => {
                let resource = target.collection.rsplit('/').next().unwrap_or_default();
                status(404, "NotFound", format!("{resource} \"{name}\" not found"))
            }
        };
    }

    let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    if !watching {
        let store = shared.store();
        // Paging as the real server does it (`limit`, `continue`), so that clients list big
        // collections in pages; the token is the offset (pages see later changes, a
        // simplification of the real snapshot semantics).
        let offset: usize = q.get("continue").and_then(|c| c.parse().ok()).unwrap_or(0);
        let limit: usize =
            q.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
        let matching = || {
            store
                .objects
                .get(&target.collection)
                .into_iter()
                .flat_map(|c| c.values())
                .filter(|o| in_scope(o))
        };
        let total = matching().count();
        let page: Vec<Value> = matching().skip(offset).take(limit).cloned().collect();
        let mut metadata = json!({"resourceVersion": store.rv.to_string()});
        if offset.saturating_add(page.len()) < total {
            metadata["continue"] = json!((offset + page.len()).to_string());
            metadata["remainingItemCount"] = json!(total - offset - page.len());
        }
        let body = json!({
            "kind": list_kind(&target.collection, &page),
            "apiVersion": api_version(&target.collection),
            "metadata": metadata,
            "items": page,
        });
        return full(StatusCode::OK, &body);
    }

    // A watch: replay what happened after `resourceVersion`, then follow. Without one (or "0")
    // the current objects come first as ADDED, as the real server does.
    let from: Option<u64> =
        q.get("resourceVersion").and_then(|v| v.parse().ok()).filter(|v| *v > 0);
    let timeout = q.get("timeoutSeconds").and_then(|v| v.parse().ok()).map(Duration::from_secs);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let shared = shared.clone();
    let collection = target.collection.clone();
    let initial: Vec<Value>;
    let mut cursor;
    {
        let store = shared.store();
        cursor = from.unwrap_or(store.rv);
        initial = if from.is_none() {
            let objects = store.objects.get(&collection);
            objects
                .map(|c| c.values().filter(|o| in_scope(o)).cloned().collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
    }
    let namespace = target.namespace.clone();
    tokio::spawn(async move {
        let in_scope = |obj: &Value| {
            namespace.as_deref().is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
                && selector_matches(&selector, obj)
        };
        let line = |kind: &str, object: &Value| {
            Bytes::from(json!({"type": kind, "object": object}).to_string() + "\n")
        };
        for object in &initial {
            if tx.send(line("ADDED", object)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout.unwrap_or(Duration::from_secs(3600));
        let mut latest = shared.latest.subscribe();
        loop {
            let (batch, newest) = {
                let store = shared.store();
                let batch: Vec<Event> = store
                    .events
                    .iter()
                    .filter(|e| e.rv > cursor && e.collection == collection && in_scope(&e.object))
                    .cloned()
                    .collect();
                (batch, store.rv)
            };
            for e in batch {
                if tx.send(line(e.kind, &e.object)).await.is_err() {
                    return;
                }
            }
            cursor = cursor.max(newest);
            latest.borrow_and_update();
            tokio::select! {
                r = latest.changed() => if r.is_err() { return },
                () = tx.closed() => return,
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    });
    let mut rsp = Response::new(ChannelBody(rx).boxed());
    rsp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    rsp
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// POST (create), PUT (replace) and PATCH of `/status` (merge), with the real server's
/// resourceVersion preconditions.
async fn write(shared: &Arc<Shared>, req: Request<Incoming>, target: Target) -> Response<Body> {
    let method = req.method().clone();
    let merge_patch = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/merge-patch+json"));
    let Ok(body) = req.into_body().collect().await else {
        return status(400, "BadRequest", "unreadable body".into());
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body.to_bytes()) else {
        return status(400, "BadRequest", "body is not JSON".into());
    };
    let ns = target.namespace.clone().unwrap_or_default();
    let name = target.name.clone().or_else(|| body["metadata"]["name"].as_str().map(String::from));
    let Some(name) = name else {
        return status(422, "Invalid", "metadata.name is required".into());
    };
    // Read, check and write under one lock, as the real server's storage does: a write
    // between them would be lost (or a deleted object brought back).
    let mut store = shared.store();
    let stored = store
        .objects
        .get(&target.collection)
        .and_then(|c| c.get(&(ns.clone(), name.clone())))
        .cloned();
    let resource = target.collection.rsplit('/').next().unwrap_or_default().to_string();
    let precondition = body["metadata"]["resourceVersion"].as_str();
    if let (Some(rv), Some(stored)) = (precondition, &stored)
        && method != Method::POST
        && stored["metadata"]["resourceVersion"].as_str() != Some(rv)
    {
        return status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
        );
    }
    let object = match (method.clone(), stored) {
        (Method::POST, Some(_)) => {
            return status(409, "AlreadyExists", format!("{resource} \"{name}\" already exists"));
        }
        (Method::POST, None) => {
            let mut object = body;
            object["metadata"]["namespace"] = json!(ns);
            object
        }
        (_, None) => return status(404, "NotFound", format!("{resource} \"{name}\" not found")),
        (Method::PUT, Some(_)) if target.subresource.is_none() => body,
        (Method::PATCH, Some(mut object)) if target.subresource.as_deref() == Some("status") => {
            if !merge_patch {
                return status(415, "UnsupportedMediaType", "merge patches only".into());
            }
            merge(&mut object["status"], &body["status"]);
            object
        }
        (m, _) => {
            return status(
                405,
                "MethodNotAllowed",
                format!("{m} of {resource} is not supported here"),
            );
        }
    };
    let created = method == Method::POST;
    let object = store.put(&target.collection, object);
    let rv = store.rv;
    drop(store);
    shared.latest.send_replace(rv);
    full(if created { StatusCode::CREATED } else { StatusCode::OK }, &object)
}

/// A streamed body fed by a bounded channel: a watcher that stops reading stops the sender.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
#[path = "kubeapi/tests.rs"]
mod tests;
