//! Route status end to end: the real `weft destination` against the fake Kubernetes API
//! (recorded objects from fixtures/k8s/), writing the `status.parents` of the routes it
//! serves through the `/status` subresource, and electing one writer among replicas with a
//! Lease.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    destination::{Destination, SERVICES, fixture, metric},
    kubeapi::FakeApi,
    policy_api::{NAMESPACES, SERVERS},
    policy_grpc_routes::GRPC_ROUTES,
    split::HTTPROUTES,
    support::eventually,
};

const ROUTES: &str = "/apis/policy.weft.dev/v1beta3/httproutes";
const LEASES: &str = "/apis/coordination.k8s.io/v1/leases";
const CONTROLLER: &str = "weft.dev/policy-controller";
const WAIT: Duration = Duration::from_secs(20);

/// (type, status, reason) of a condition.
type Condition = (String, String, String);
/// Our entries: (parent name, its conditions).
type Entries = Vec<(String, Vec<Condition>)>;

/// Our entries' conditions.
fn ours(route: &Value) -> Entries {
    let parents = route["status"]["parents"].as_array().cloned().unwrap_or_default();
    parents
        .iter()
        .filter(|e| e["controllerName"] == CONTROLLER)
        .map(|e| {
            let conditions = e["conditions"].as_array().cloned().unwrap_or_default();
            let s = |c: &Value, k: &str| c[k].as_str().unwrap_or_default().to_string();
            let conditions =
                conditions.iter().map(|c| (s(c, "type"), s(c, "status"), s(c, "reason")));
            (e["parentRef"]["name"].as_str().unwrap_or_default().to_string(), conditions.collect())
        })
        .collect()
}

fn accepted(parent: &str, accepted: (&str, &str), resolved: (&str, &str)) -> Entries {
    let c = |t: &str, (s, r): (&str, &str)| (t.to_string(), s.to_string(), r.to_string());
    vec![(parent.to_string(), vec![c("Accepted", accepted), c("ResolvedRefs", resolved)])]
}

/// Waits until `collection`'s `name` has our status `want`; panics with what it has.
fn wait_status(
    api: &FakeApi,
    d: &Destination,
    collection: &str,
    name: &str,
    want: &[(String, Vec<Condition>)],
) -> Value {
    let get = || api.get(collection, "prod", name).unwrap_or(Value::Null);
    let ok = eventually(WAIT, || ours(&get()) == want);
    assert!(ok, "{name}: status {:#?}, want {want:?}\nlog:\n{}", get()["status"], d.logs());
    get()
}

/// PATCHes of one route's status so far.
fn patches(api: &FakeApi, plural: &str, name: &str) -> usize {
    let path = format!("/namespaces/prod/{plural}/{name}/status");
    api.requests().iter().filter(|r| r.starts_with("PATCH ") && r.contains(&path)).count()
}

fn service(name: &str) -> Value {
    let mut svc = fixture("service-web.json");
    svc["metadata"]["name"] = json!(name);
    svc["spec"]["clusterIP"] = Value::Null;
    svc["spec"]["clusterIPs"] = Value::Null;
    svc
}

fn cluster() -> FakeApi {
    let api = FakeApi::start();
    api.put(NAMESPACES, fixture("namespace-prod.json"));
    api.put(SERVICES, fixture("service-web.json"));
    api.put(SERVERS, fixture("server-web-http.json"));
    api.put(SERVERS, fixture("server-web-grpc.json"));
    api
}

#[test]
fn route_status_says_whether_each_parent_accepted_the_route() {
    let api = cluster();
    // Served by an existing Server; a Server that does not exist; a GRPCRoute.
    api.put(ROUTES, fixture("httproute-web-metrics.json"));
    let mut orphan = fixture("httproute-web-metrics.json");
    orphan["metadata"]["name"] = json!("orphan");
    orphan["spec"]["parentRefs"][0]["name"] = json!("nope");
    api.put(ROUTES, orphan);
    api.put(GRPC_ROUTES, fixture("grpcroute-web-echo.json"));
    // A split whose backends do not exist yet, which another controller has a say on too.
    let theirs = json!({
        "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"},
        "controllerName": "example.com/gateway-controller",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2025-05-21T10:03:00Z", "observedGeneration": 3}]
    });
    let mut canary = fixture("httproute-web-canary.json");
    canary["spec"]["parentRefs"]
        .as_array_mut()
        .expect("parentRefs")
        .push(json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}));
    canary["status"] = json!({"parents": [theirs.clone()]});
    api.put(HTTPROUTES, canary);
    let d = Destination::kubernetes(&api);

    let metrics_route = wait_status(
        &api,
        &d,
        ROUTES,
        "web-metrics",
        &accepted("web-http", ("True", "Accepted"), ("True", "ResolvedRefs")),
    );
    let entry = &metrics_route["status"]["parents"][0];
    assert_eq!(
        entry["parentRef"],
        json!({"group": "policy.weft.dev", "kind": "Server", "name": "web-http"}),
        "as written"
    );
    assert_eq!(entry["conditions"][0]["observedGeneration"], 1);
    assert!(
        entry["conditions"][0]["lastTransitionTime"].as_str().is_some_and(|t| t.ends_with('Z'))
    );
    wait_status(
        &api,
        &d,
        ROUTES,
        "orphan",
        &accepted("nope", ("False", "NoMatchingParent"), ("True", "ResolvedRefs")),
    );
    wait_status(
        &api,
        &d,
        GRPC_ROUTES,
        "web-echo",
        &accepted("web-grpc", ("True", "Accepted"), ("True", "ResolvedRefs")),
    );
    let canary = wait_status(
        &api,
        &d,
        HTTPROUTES,
        "web",
        &accepted("web", ("True", "Accepted"), ("False", "BackendNotFound")),
    );
    assert_eq!(
        canary["status"]["parents"][0], theirs,
        "the other controller's entry, untouched and first"
    );
    assert_eq!(canary["status"]["parents"].as_array().map(Vec::len), Some(2));
    let since = canary["status"]["parents"][1]["conditions"][0]["lastTransitionTime"].clone();

    // Each was written once; their own writes (watch events) and unrelated changes write
    // nothing more. A change that wakes the writer, then a route written after it, shows
    // that the writer has looked at everything again.
    // (Both HTTPRoute groups' plural is `httproutes`: the canary `web` is the only one of
    // its name.)
    let count = |api: &FakeApi| {
        let names = ["web-metrics", "orphan", "web"];
        let http = names.map(|n| patches(api, "httproutes", n));
        (http, patches(api, "grpcroutes", "web-echo"))
    };
    assert_eq!(count(&api), ([1, 1, 1], 1), "{:?}", api.requests());
    api.put(SERVICES, service("unrelated"));
    let mut sentinel = fixture("httproute-web-metrics.json");
    sentinel["metadata"]["name"] = json!("sentinel");
    api.put(ROUTES, sentinel);
    wait_status(
        &api,
        &d,
        ROUTES,
        "sentinel",
        &accepted("web-http", ("True", "Accepted"), ("True", "ResolvedRefs")),
    );
    assert_eq!(count(&api), ([1, 1, 1], 1), "no write without a change: {:?}", api.requests());

    // The backends appear: ResolvedRefs turns True; Accepted keeps its transition time.
    api.put(SERVICES, service("web-primary"));
    api.put(SERVICES, service("web-canary"));
    let canary = wait_status(
        &api,
        &d,
        HTTPROUTES,
        "web",
        &accepted("web", ("True", "Accepted"), ("True", "ResolvedRefs")),
    );
    assert_eq!(canary["status"]["parents"][1]["conditions"][0]["lastTransitionTime"], since);
    assert_eq!(canary["status"]["parents"][0], theirs);

    // The missing Server is created: the orphan is accepted.
    let mut nope = fixture("server-web-http.json");
    nope["metadata"]["name"] = json!("nope");
    api.put(SERVERS, nope);
    wait_status(
        &api,
        &d,
        ROUTES,
        "orphan",
        &accepted("nope", ("True", "Accepted"), ("True", "ResolvedRefs")),
    );

    // A younger split of the same Service port loses to it, and says so.
    let mut rival = fixture("httproute-web-canary.json");
    rival["metadata"]["name"] = json!("web-rival");
    rival["metadata"]["creationTimestamp"] = json!("2025-06-01T00:00:00Z");
    rival["status"] = json!({});
    api.put(HTTPROUTES, rival);
    let conflicted = ("False", "RouteReasonConflicted");
    wait_status(
        &api,
        &d,
        HTTPROUTES,
        "web-rival",
        &accepted("web", conflicted, ("True", "ResolvedRefs")),
    );

    let m = d.metrics();
    assert!(
        metric(&m, "destination_route_status_patches_total", &[("result", "ok")]) >= 7.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "destination_route_status_patches_total", &[("result", "error")]),
        0.0,
        "{m}"
    );
    assert_eq!(metric(&m, "destination_route_status_leader", &[]), 1.0, "{m}");
}

#[test]
fn route_status_is_written_by_the_lease_holder_only_and_another_takes_over() {
    let api = cluster();
    api.put(ROUTES, fixture("httproute-web-metrics.json"));
    let (a, b) = two_replicas(&api, "2s");
    let holder = || holder(&api);
    let leader = |d: &Destination| metric(&d.metrics(), "destination_route_status_leader", &[]);
    let ok = eventually(WAIT, || !holder().is_empty() && leader(&a) + leader(&b) == 1.0);
    assert!(ok, "no single leader: holder {:?}\na:\n{}\nb:\n{}", holder(), a.logs(), b.logs());
    let (first, second, next) =
        if holder() == "destination-a" { (a, b, "destination-b") } else { (b, a, "destination-a") };
    assert_eq!(leader(&first), 1.0);
    wait_status(
        &api,
        &first,
        ROUTES,
        "web-metrics",
        &accepted("web-http", ("True", "Accepted"), ("True", "ResolvedRefs")),
    );
    let patched =
        |d: &Destination| metric(&d.metrics(), "destination_route_status_patches_total", &[]);
    assert!(patched(&first) >= 1.0);
    assert_eq!(patched(&second), 0.0, "the follower writes nothing");
    assert_eq!(leader(&second), 0.0);

    // The holder stops: the other takes the lease over once it has not been renewed for
    // its duration, and writes what has changed since.
    let old = first.logs();
    drop(first);
    let mut late = fixture("httproute-web-metrics.json");
    late["metadata"]["name"] = json!("late");
    late["spec"]["parentRefs"][0]["name"] = json!("nope");
    api.put(ROUTES, late);
    wait_status(
        &api,
        &second,
        ROUTES,
        "late",
        &accepted("nope", ("False", "NoMatchingParent"), ("True", "ResolvedRefs")),
    );
    assert_eq!(leader(&second), 1.0, "{old}");
    assert_eq!(holder(), next);
    let lease = api.get(LEASES, "weft", "weft-destination-route-status").expect("lease");
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 2);
    assert!(patched(&second) >= 1.0);
}

#[test]
fn route_status_lease_is_handed_over_at_shutdown() {
    let api = cluster();
    // A lease far longer than the wait below: only a hand-over lets the other take over.
    let (a, b) = two_replicas(&api, "120s");
    let holder = || holder(&api);
    assert!(eventually(WAIT, || !holder().is_empty()), "{}", a.logs());
    let (mut first, second, next) =
        if holder() == "destination-a" { (a, b, "destination-b") } else { (b, a, "destination-a") };
    assert!(first.terminate().success(), "{}", first.logs());
    let handed = eventually(WAIT, || first.logs().contains("handed the route status lease over"));
    assert!(handed, "{}", first.logs());
    let ok = eventually(WAIT, || {
        holder() == next && metric(&second.metrics(), "destination_route_status_leader", &[]) == 1.0
    });
    assert!(ok, "holder {:?}\n{}", holder(), second.logs());
    // And it writes.
    api.put(ROUTES, fixture("httproute-web-metrics.json"));
    wait_status(
        &api,
        &second,
        ROUTES,
        "web-metrics",
        &accepted("web-http", ("True", "Accepted"), ("True", "ResolvedRefs")),
    );
}

#[test]
fn route_status_writing_can_be_switched_off() {
    let api = cluster();
    api.put(ROUTES, fixture("httproute-web-metrics.json"));
    let writes = || -> Vec<String> {
        let all = api.requests().into_iter();
        all.filter(|r| !r.starts_with("GET ") || r.contains("leases")).collect()
    };
    let d = Destination::kubernetes_with(&api, &["--route-status=false"]);
    // Longer than a replica with status writing on takes to ask for the lease once ready
    // (checked below).
    const WINDOW: Duration = Duration::from_secs(2);
    std::thread::sleep(WINDOW);
    let m = d.metrics();
    assert_eq!(metric(&m, "destination_route_status_leader", &[]), 0.0, "{m}");
    assert!(writes().is_empty(), "{:?}", writes());
    let route = api.get(ROUTES, "prod", "web-metrics").expect("route");
    assert!(route["status"].is_null(), "{route}");
    drop(d);
    // The same API with status writing on: the lease is asked for within the window, so
    // the silence above was the flag's doing.
    let _on = Destination::kubernetes_with(&api, &[]);
    assert!(eventually(WINDOW, || !writes().is_empty()), "no lease request with status on");
}

/// Destination replicas `destination-a` and `destination-b` electing a route status writer
/// with a lease of `duration`, renewed every 200 ms.
fn two_replicas(api: &FakeApi, duration: &str) -> (Destination, Destination) {
    let start = |pod| {
        Destination::kubernetes_with(
            api,
            &[
                "--pod-name",
                pod,
                "--route-status-lease-duration",
                duration,
                "--route-status-lease-renew-interval",
                "200ms",
            ],
        )
    };
    (start("destination-a"), start("destination-b"))
}

/// The lease's holder, or "" when it has none (or there is no lease).
fn holder(api: &FakeApi) -> String {
    let lease = api.get(LEASES, "weft", "weft-destination-route-status").unwrap_or_default();
    lease["spec"]["holderIdentity"].as_str().unwrap_or_default().to_string()
}
