//! `weft destination` end to end: the real binary, fed by the fake Kubernetes API with
//! recorded API objects (fixtures/k8s/, made with `kubectl create ... --dry-run=client -o json`
//! and completed as the API server completes them) or by a static file, and a real gRPC
//! client (tonic, linkerd2-proxy-api) subscribed as a proxy would be.

use crate::support::Serving;
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use linkerd2_proxy_api::destination::{
    self as pb, destination_client::DestinationClient, protocol_hint::Protocol,
    tls_identity::Strategy, update::Update,
};
use serde_json::{Value, json};
use tonic::{Streaming, transport::Channel};

use crate::kubeapi::FakeApi;

const PODS: &str = "/api/v1/pods";
pub(crate) const SERVICES: &str = "/api/v1/services";
pub(crate) const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const NAMESPACES: &str = "/api/v1/namespaces";
pub(crate) const WEB: &str = "web.prod.svc.cluster.local:80";
const WEB_ID: &str = "web.prod.serviceaccount.identity.weft.cluster.local";
const MESHED_IP: &str = "10.244.1.17";
const PLAIN_IP: &str = "10.244.2.23";
const LATE_IP: &str = "10.244.1.31";

pub(crate) fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/fixtures/k8s").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

/// A running `weft destination`, killed on drop.
pub(crate) struct Destination {
    child: Child,
    pub(crate) grpc: SocketAddr,
    pub(crate) admin: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Destination {
    pub(crate) fn start(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Destination {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
        cmd.arg("destination")
            .args([
                "--listen-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ])
            .args(["--log", "info,weft_destination=debug"])
            .args(args)
            .env_remove("KUBECONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let serving = Serving::start(cmd, "weft destination", Duration::from_secs(30));
        let (grpc, admin) = (serving.addr("grpc"), serving.addr("admin"));
        let Serving { child, logs, .. } = serving;
        Destination { child, grpc, admin, logs }
    }

    pub(crate) fn kubernetes(api: &FakeApi) -> Destination {
        Destination::kubernetes_with(api, &[])
    }

    /// [`Destination::kubernetes`] with more flags.
    pub(crate) fn kubernetes_with(api: &FakeApi, args: &[&str]) -> Destination {
        let kubeconfig = api.kubeconfig();
        let args = [&["--source", "kubernetes"], args].concat();
        let d = Destination::start(&args, &[("KUBECONFIG", kubeconfig.as_os_str())]);
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(d.admin, "/ready").0 != 200 {
            assert!(Instant::now() < deadline, "never ready; log:\n{}", d.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub(crate) fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// SIGTERM, as the kubelet stops a pod; waits for the process to end.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid");
        // SAFETY: a signal to our own child, which has not been waited for yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        self.child.wait().expect("wait for weft destination")
    }

    pub(crate) fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").1
    }

    pub(crate) async fn client(&self) -> DestinationClient<Channel> {
        DestinationClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect to weft destination")
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny HTTP/1.0 GET: (status, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return (0, String::new()) };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// How many objects of `kind` the destination service skipped for `reason`.
pub(crate) fn skipped(metrics: &str, kind: &str, reason: &str) -> f64 {
    metric(metrics, "destination_objects_skipped_total", &[("kind", kind), ("reason", reason)])
}

/// The value of a metric line with all the given labels (0 when absent).
pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub(crate) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

pub(crate) fn req(path: &str) -> pb::GetDestination {
    pb::GetDestination { scheme: "k8s".into(), path: path.into(), context_token: String::new() }
}

pub(crate) async fn get(
    client: &mut DestinationClient<Channel>,
    path: &str,
) -> Streaming<pb::Update> {
    client.get(req(path)).await.unwrap_or_else(|e| panic!("Get {path}: {e}")).into_inner()
}

pub(crate) async fn next<T: std::fmt::Debug>(stream: &mut Streaming<T>) -> T {
    match tokio::time::timeout(Duration::from_secs(15), stream.message()).await {
        Ok(Ok(Some(m))) => m,
        other => panic!("no message on the stream: {other:?}"),
    }
}

/// Nothing more within a short while.
pub(crate) async fn quiet<T: std::fmt::Debug>(stream: &mut Streaming<T>) {
    if let Ok(m) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
        panic!("unexpected message {m:?}");
    }
}

fn added(u: pb::Update) -> pb::WeightedAddrSet {
    match u.update {
        Some(Update::Add(set)) => set,
        other => panic!("expected Add, got {other:?}"),
    }
}

fn removed(u: pb::Update) -> Vec<SocketAddr> {
    match u.update {
        Some(Update::Remove(set)) => {
            set.addrs.into_iter().map(|a| SocketAddr::try_from(a).expect("addr")).collect()
        }
        other => panic!("expected Remove, got {other:?}"),
    }
}

pub(crate) fn no_endpoints(u: pb::Update) -> bool {
    match u.update {
        Some(Update::NoEndpoints(n)) => n.exists,
        other => panic!("expected NoEndpoints, got {other:?}"),
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

fn addr_of(a: &pb::WeightedAddr) -> SocketAddr {
    SocketAddr::try_from(a.addr.expect("addr")).expect("addr")
}

fn find<'a>(set: &'a pb::WeightedAddrSet, ip: &str) -> &'a pb::WeightedAddr {
    set.addrs
        .iter()
        .find(|a| addr_of(a).ip().to_string() == ip)
        .unwrap_or_else(|| panic!("{ip} not in {set:?}"))
}

fn identity(a: &pb::WeightedAddr) -> Option<&str> {
    match a.tls_identity.as_ref()?.strategy.as_ref()? {
        Strategy::DnsLikeIdentity(id) => Some(&id.name),
        Strategy::UriLikeIdentity(_) => None,
    }
}

fn is_h2(a: &pb::WeightedAddr) -> bool {
    matches!(a.protocol_hint.as_ref().and_then(|h| h.protocol.as_ref()), Some(Protocol::H2(_)))
}

fn label<'a>(a: &'a pb::WeightedAddr, k: &str) -> Option<&'a str> {
    a.metric_labels.get(k).map(String::as_str)
}

/// The recorded cluster: namespace prod, Service web (ClusterIP 10.96.12.34, 80 → 8080), its
/// Deployment's pods 4xk2p (meshed) and 9hz7m, and their EndpointSlice.
pub(crate) fn cluster() -> FakeApi {
    let api = FakeApi::start();
    api.put(NAMESPACES, fixture("namespace-prod.json"));
    api.put(SERVICES, fixture("service-web.json"));
    api.put(PODS, fixture("pod-web-4xk2p-meshed.json"));
    api.put(PODS, fixture("pod-web-9hz7m.json"));
    api.put(SLICES, fixture("endpointslice-web.json"));
    api
}

/// The recorded slice's endpoint for `pod`, shaped as the EndpointSlice controller writes it.
fn slice_endpoint(pod: &Value) -> Value {
    json!({
        "addresses": [pod["status"]["podIP"]],
        "conditions": {"ready": true, "serving": true, "terminating": false},
        "targetRef": {"kind": "Pod", "namespace": "prod", "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]},
        "nodeName": pod["spec"]["nodeName"],
    })
}

/// The pod as the injector leaves it: the proxy as a native sidecar, and its annotation.
fn meshed(mut pod: Value) -> Value {
    let mut init = fixture("pod-web-4xk2p-meshed.json")["spec"]["initContainers"].clone();
    pod["spec"]["initContainers"] = init.take();
    pod["metadata"]["annotations"] = json!({"weft.dev/proxy-version": "0.1.0"});
    pod
}

#[test]
fn destination_kubernetes_updates_reach_a_subscriber() {
    let api = cluster();
    let d = Destination::kubernetes(&api);
    rt().block_on(async {
        let mut client = d.client().await;
        let mut web = get(&mut client, WEB).await;

        // The initial set: both ready pods, labelled; only the meshed one has an identity.
        let set = added(next(&mut web).await);
        assert_eq!(set.addrs.len(), 2, "{set:?}");
        assert_eq!(set.metric_labels.get("service").map(String::as_str), Some("web"));
        assert_eq!(set.metric_labels.get("namespace").map(String::as_str), Some("prod"));
        let m = find(&set, MESHED_IP);
        assert_eq!(addr_of(m).port(), 8080, "the service's targetPort");
        assert_eq!(m.weight, 10_000);
        assert_eq!(identity(m), Some(WEB_ID));
        assert!(is_h2(m));
        assert_eq!(label(m, "pod"), Some("web-6d5f8c7b9d-4xk2p"));
        assert_eq!(
            label(m, "deployment"),
            Some("web"),
            "ReplicaSet web-6d5f8c7b9d → Deployment web"
        );
        assert_eq!(label(m, "serviceaccount"), Some("web"));
        assert_eq!(label(m, "namespace"), Some("prod"));
        assert_eq!(label(m, "service"), Some("web"));
        let p = find(&set, PLAIN_IP);
        assert_eq!(identity(p), None);
        assert!(p.protocol_hint.is_none());
        assert_eq!(label(p, "pod"), Some("web-6d5f8c7b9d-9hz7m"));
        quiet(&mut web).await;

        // A third pod starts: once the index knows it (its IP resolves), the slice lists it.
        let late = fixture("pod-web-q8w3n.json");
        api.put(PODS, late.clone());
        let mut by_pod = get(&mut client, &format!("{LATE_IP}:8080")).await;
        let mut first = next(&mut by_pod).await;
        while matches!(first.update, Some(Update::NoEndpoints(_))) {
            first = next(&mut by_pod).await;
        }
        assert_eq!(label(find(&added(first), LATE_IP), "pod"), Some("web-6d5f8c7b9d-q8w3n"));
        let mut slice = fixture("endpointslice-web.json");
        slice["endpoints"].as_array_mut().expect("endpoints").push(slice_endpoint(&late));
        api.put(SLICES, slice.clone());
        let set = added(next(&mut web).await);
        assert_eq!(set.addrs.len(), 1, "only the new endpoint: {set:?}");
        assert_eq!(label(find(&set, LATE_IP), "pod"), Some("web-6d5f8c7b9d-q8w3n"));
        assert_eq!(identity(find(&set, LATE_IP)), None);

        // One endpoint goes (its pod stopped being ready).
        slice["endpoints"][1]["conditions"]["ready"] = json!(false);
        api.put(SLICES, slice.clone());
        assert_eq!(removed(next(&mut web).await), [sa(&format!("{PLAIN_IP}:8080"))]);

        // The new pod is restarted with the proxy: its endpoint comes again with an identity.
        api.put(PODS, meshed(late));
        let set = added(next(&mut web).await);
        assert_eq!(set.addrs.len(), 1, "{set:?}");
        let e = find(&set, LATE_IP);
        assert_eq!(identity(e), Some(WEB_ID));
        assert!(is_h2(e));
        // The pod IP subscriber sees it too.
        assert_eq!(identity(find(&added(next(&mut by_pod).await), LATE_IP)), Some(WEB_ID));

        // The slice is deleted: no endpoints, but the service exists; then the service goes.
        api.delete(SLICES, "prod", "web-x7k2m");
        assert!(no_endpoints(next(&mut web).await), "the service still exists");
        api.delete(SERVICES, "prod", "web");
        assert!(!no_endpoints(next(&mut web).await), "the service is gone");
    });
    let m = d.metrics();
    assert!(
        metric(&m, "destination_updates_total", &[("rpc", "get"), ("update", "add")]) >= 5.0,
        "{m}"
    );
    assert!(metric(&m, "destination_updates_total", &[("update", "remove")]) >= 1.0, "{m}");
    // Lookups are answered from the watches' cache, never by asking the API: besides the
    // watches, only the route status lease is read and written (there are no routes, so no
    // status is written).
    let per_object: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| !is_list_or_watch(r) && !is_status_lease(r))
        .collect();
    assert!(per_object.is_empty(), "requests other than list/watch: {per_object:?}");
    assert!(api.requests().iter().any(|r| is_status_lease(r)), "the lease was never asked for");
}

/// The route status Lease: read, created, renewed.
pub(crate) fn is_status_lease(request: &str) -> bool {
    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/weft/leases";
    let lease = format!("{LEASES}/weft-destination-route-status");
    request == format!("GET {lease}")
        || request == format!("PUT {lease}")
        || request == format!("POST {LEASES}")
        || request.starts_with(&format!("POST {LEASES}?"))
        || request.starts_with(&format!("PUT {lease}?"))
}

/// `GET <collection>` with or without `?watch=...`: what the watches ask, never one object.
fn is_list_or_watch(request: &str) -> bool {
    let Some(target) = request.strip_prefix("GET ") else { return false };
    let path = target.split('?').next().unwrap_or_default();
    use weft_destination::policy::model::{GROUP, PolicyKind};
    let policy = PolicyKind::ALL.map(|k| format!("/apis/{GROUP}/{}/{}", k.version(), k.plural()));
    [PODS, SERVICES, SLICES, NAMESPACES].contains(&path)
        || policy.iter().any(|p| p == path)
        || path == crate::split::HTTPROUTES
        || path == crate::policy_grpc_routes::GRPC_ROUTES
}

#[test]
fn destination_kubernetes_lookups_by_name_cluster_ip_and_pod_ip() {
    let api = cluster();
    let d = Destination::kubernetes(&api);
    rt().block_on(async {
        let mut client = d.client().await;
        let by_name = added(next(&mut get(&mut client, WEB).await).await);
        // The ClusterIP resolves to the same set (the service port, its target port).
        let by_cluster_ip = added(next(&mut get(&mut client, "10.96.12.34:80").await).await);
        assert_eq!(by_cluster_ip, by_name);
        // A trailing dot and no cluster domain are the same name.
        assert_eq!(
            added(next(&mut get(&mut client, "web.prod.svc.cluster.local.:80").await).await),
            by_name
        );

        // A pod IP: that pod alone, on the port asked for, with its identity.
        let pod = added(next(&mut get(&mut client, &format!("{MESHED_IP}:9999")).await).await);
        assert_eq!(pod.addrs.len(), 1);
        assert_eq!(addr_of(&pod.addrs[0]), sa(&format!("{MESHED_IP}:9999")));
        assert_eq!(identity(&pod.addrs[0]), Some(WEB_ID));
        assert_eq!(label(&pod.addrs[0], "pod"), Some("web-6d5f8c7b9d-4xk2p"));

        // Unknown: a name, an address, a name outside the cluster.
        for path in [
            "nope.prod.svc.cluster.local:80",
            "web.other.svc.cluster.local:80",
            "10.1.2.3:80",
            "example.com:443",
        ] {
            let mut s = get(&mut client, path).await;
            assert!(!no_endpoints(next(&mut s).await), "{path} should not exist");
        }
        // A path that is no destination at all is refused.
        let err = client.get(req("not a host:port")).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);

        // A service that appears later reaches a subscriber that asked early.
        let mut later = get(&mut client, "api.prod.svc.cluster.local:80").await;
        assert!(!no_endpoints(next(&mut later).await));
        let mut svc = fixture("service-web.json");
        svc["metadata"]["name"] = json!("api");
        svc["spec"]["clusterIP"] = json!("10.96.12.35");
        svc["spec"]["clusterIPs"] = json!(["10.96.12.35"]);
        api.put(SERVICES, svc);
        assert!(no_endpoints(next(&mut later).await), "exists, no endpoints yet");
    });
    let m = d.metrics();
    for (result, at_least) in [("service", 3.0), ("pod", 1.0), ("not_found", 5.0), ("invalid", 1.0)]
    {
        assert!(
            metric(&m, "destination_lookups_total", &[("rpc", "get"), ("result", result)])
                >= at_least,
            "{result}: {m}"
        );
    }
}

fn route_ranges(route: &pb::Route) -> Vec<(u32, u32)> {
    route
        .response_classes
        .iter()
        .map(|c| {
            assert!(c.is_failure);
            match c.condition.as_ref().and_then(|m| m.r#match.as_ref()) {
                Some(pb::response_match::Match::Status(s)) => (s.min, s.max),
                other => panic!("unexpected response match {other:?}"),
            }
        })
        .collect()
}

#[test]
fn destination_kubernetes_profiles_from_service_annotations() {
    let api = cluster();
    let mut svc = fixture("service-web.json");
    svc["metadata"]["annotations"] = json!({
        "retry.weft.dev/http": "gateway-error,429",
        "retry.weft.dev/limit": "3",
        "retry.weft.dev/timeout": "250ms",
        "timeout.weft.dev/request": "2s",
    });
    api.put(SERVICES, svc.clone());
    let d = Destination::kubernetes(&api);
    rt().block_on(async {
        let mut client = d.client().await;
        let mut profiles = client.get_profile(req(WEB)).await.expect("GetProfile").into_inner();
        let p = next(&mut profiles).await;
        assert_eq!(p.fully_qualified_name, "web.prod.svc.cluster.local");
        assert!(!p.opaque_protocol);
        assert_eq!(p.routes.len(), 1);
        let route = &p.routes[0];
        assert!(route.is_retryable);
        assert!(matches!(
            route.condition.as_ref().and_then(|c| c.r#match.as_ref()),
            Some(pb::request_match::Match::Path(m)) if m.regex == ".*"
        ));
        assert_eq!(route_ranges(route), [(502, 504), (429, 429)]);
        assert_eq!(route.timeout.as_ref().map(|d| (d.seconds, d.nanos)), Some((2, 0)));
        assert_eq!(route.metrics_labels.get("weft_retry_limit").map(String::as_str), Some("3"));
        assert_eq!(
            route.metrics_labels.get("weft_retry_timeout_ms").map(String::as_str),
            Some("250")
        );
        let budget = p.retry_budget.expect("a retry budget");
        assert_eq!((budget.retry_ratio, budget.min_retries_per_second), (0.2, 10));
        assert_eq!(budget.ttl.as_ref().map(|d| (d.seconds, d.nanos)), Some((10, 0)));

        // The annotation changes: a new profile. A bad value is ignored (and counted).
        svc["metadata"]["annotations"] =
            json!({"retry.weft.dev/http": "5xx", "timeout.weft.dev/request": "soon"});
        api.put(SERVICES, svc.clone());
        let p = next(&mut profiles).await;
        assert_eq!(route_ranges(&p.routes[0]), [(500, 599)]);
        assert_eq!(p.routes[0].timeout, None, "an invalid timeout is not guessed");
        assert_eq!(
            p.routes[0].metrics_labels.get("weft_retry_limit").map(String::as_str),
            Some("2")
        );

        // Opaque ports: the namespace marks 80 opaque.
        let mut ns = fixture("namespace-prod.json");
        ns["metadata"]["annotations"] = json!({"config.weft.dev/opaque-ports": "80"});
        api.put(NAMESPACES, ns);
        assert!(next(&mut profiles).await.opaque_protocol);

        // A pod IP's profile carries the endpoint itself.
        let mut by_ip = client
            .get_profile(req(&format!("{MESHED_IP}:8080")))
            .await
            .expect("GetProfile")
            .into_inner();
        let p = next(&mut by_ip).await;
        let ep = p.endpoint.expect("the pod's endpoint");
        assert_eq!(identity(&ep), Some(WEB_ID));
        // An unknown name: an empty profile (the budget only).
        let mut unknown = client
            .get_profile(req("nope.prod.svc.cluster.local:80"))
            .await
            .expect("GetProfile")
            .into_inner();
        let p = next(&mut unknown).await;
        assert!(p.routes.is_empty() && p.fully_qualified_name.is_empty());

        // What linkerd2-proxy asks first: NotFound, so it builds its policy from the profile.
        use linkerd2_proxy_api::outbound::{
            TrafficSpec, outbound_policies_client::OutboundPoliciesClient, traffic_spec::Target,
        };
        let mut outbound =
            OutboundPoliciesClient::connect(format!("http://{}", d.grpc)).await.expect("connect");
        let spec = TrafficSpec {
            source_workload: r#"{"ns":"prod","pod":"web-1"}"#.into(),
            target: Some(Target::Authority(WEB.into())),
        };
        let e = outbound.watch(spec).await.expect_err("no outbound policy");
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    });
    let m = d.metrics();
    let lookups = [("rpc", "outbound_watch"), ("result", "not_found")];
    assert_eq!(metric(&m, "destination_lookups_total", &lookups), 1.0, "{m}");
    assert!(
        metric(
            &m,
            "destination_objects_skipped_total",
            &[("kind", "service"), ("reason", "invalid_annotation")]
        ) >= 1.0,
        "{m}"
    );
    assert!(d.logs().contains("timeout.weft.dev/request"), "the bad annotation is logged");
}

#[test]
fn destination_kubernetes_bad_objects_are_skipped() {
    let api = cluster();
    // A pod with a broken IP and a slice with a broken address: used where possible, counted.
    let mut pod = fixture("pod-web-q8w3n.json");
    pod["status"]["podIP"] = json!("10.244.1.999");
    pod["status"]["podIPs"] = json!([{"ip": "10.244.1.999"}]);
    api.put(PODS, pod);
    let mut slice = fixture("endpointslice-web.json");
    slice["endpoints"][0]["addresses"] = json!(["not-an-ip"]);
    api.put(SLICES, slice);
    let d = Destination::kubernetes(&api);
    rt().block_on(async {
        let mut client = d.client().await;
        let set = added(next(&mut get(&mut client, WEB).await).await);
        assert_eq!(set.addrs.len(), 1, "the bad address is left out: {set:?}");
        find(&set, PLAIN_IP);
    });
    let m = d.metrics();
    assert!(
        metric(
            &m,
            "destination_objects_skipped_total",
            &[("kind", "pod"), ("reason", "invalid_ip")]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "destination_objects_skipped_total",
            &[("kind", "endpointslice"), ("reason", "invalid_ip")]
        ) >= 1.0,
        "{m}"
    );
}

#[test]
fn destination_static_file_rewrite_reaches_a_subscriber() {
    let dir =
        std::env::temp_dir().join(format!("weft-e2e-destination-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("endpoints.yaml");
    let yaml = |endpoints: &[&str]| {
        let mut y = String::from(
            "services:\n  - name: web\n    namespace: demo\n    clusterIPs: [10.96.0.10]\n    annotations:\n      retry.weft.dev/http: 5xx\n    ports:\n      - port: 80\n        endpoints:\n",
        );
        for e in endpoints {
            y.push_str(&format!(
                "          - address: {e}\n            identity: web.demo.serviceaccount.identity.weft.cluster.local\n            labels: {{pod: web-{}}}\n",
                e.rsplit(':').next().unwrap_or_default()
            ));
        }
        y
    };
    std::fs::write(&file, yaml(&["127.0.0.1:8081", "127.0.0.1:8082"])).expect("write");
    let d = Destination::start(
        &["--source", "static", "--static-file", file.to_str().expect("utf-8")],
        &[],
    );
    rt().block_on(async {
        let mut client = d.client().await;
        let mut web = get(&mut client, "web.demo.svc.cluster.local:80").await;
        let set = added(next(&mut web).await);
        assert_eq!(set.addrs.len(), 2);
        let e = find(&set, "127.0.0.1");
        assert_eq!(identity(e), Some("web.demo.serviceaccount.identity.weft.cluster.local"));
        assert!(is_h2(e));
        let mut by_ip = get(&mut client, "10.96.0.10:80").await;
        assert_eq!(added(next(&mut by_ip).await).addrs.len(), 2);

        // Rewritten in place: one endpoint replaced.
        std::fs::write(&file, yaml(&["127.0.0.1:8081", "127.0.0.1:8083"])).expect("rewrite");
        let mut got = vec![next(&mut web).await, next(&mut web).await];
        let add = added(got.pop().expect("add"));
        assert_eq!(removed(got.pop().expect("remove")), [sa("127.0.0.1:8082")]);
        assert_eq!(add.addrs.iter().map(addr_of).collect::<Vec<_>>(), [sa("127.0.0.1:8083")]);

        // A broken file is reported and the last good endpoints stay.
        std::fs::write(&file, "services: [{").expect("break");
        quiet(&mut web).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(&d.metrics(), "destination_static_loads_total", &[("result", "error")]) < 1.0 {
            assert!(Instant::now() < deadline, "the bad file was not noticed: {}", d.metrics());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let again = added(next(&mut get(&mut client, "web.demo.svc.cluster.local:80").await).await);
        assert_eq!(again.addrs.len(), 2);

        // Fixed again, with the service gone.
        std::fs::write(&file, "services: []\n").expect("empty");
        assert!(!no_endpoints(next(&mut web).await));
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn destination_bad_configuration_fails_at_start() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .arg("destination")
            .args(["--listen-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .args(args)
            .env_remove("KUBECONFIG")
            .env("HOME", "/nonexistent")
            .output()
            .expect("run weft destination")
    };
    let missing = run(&["--source", "static"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--static-file"));
    let bad_file = run(&["--source", "static", "--static-file", "/nonexistent/endpoints.yaml"]);
    assert!(!bad_file.status.success());
    assert!(String::from_utf8_lossy(&bad_file.stderr).contains("/nonexistent/endpoints.yaml"));
    let bad_domain =
        run(&["--source", "static", "--static-file", "/x", "--trust-domain", "bad..domain"]);
    assert!(!bad_domain.status.success());
    let stderr = String::from_utf8_lossy(&bad_domain.stderr);
    assert!(stderr.contains(r#"--trust-domain "bad..domain" is not a DNS name"#), "{stderr}");
    let bad_lease = run(&[
        "--route-status-lease-duration",
        "10s",
        "--route-status-lease-renew-interval",
        "10s",
    ]);
    assert!(!bad_lease.status.success());
    assert!(
        String::from_utf8_lossy(&bad_lease.stderr).contains("--route-status-lease-renew-interval")
    );
}
