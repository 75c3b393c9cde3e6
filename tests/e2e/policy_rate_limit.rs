//! HTTPLocalRateLimitPolicy end to end: the real `weft destination` against the fake
//! Kubernetes API (recorded objects from fixtures/k8s/), followed by a gRPC client as a proxy
//! would, and enforced by a real proxy in front of a real app, with curl as the client.
//! The per-identity rate and an override at the proxy need meshed clients: that test runs
//! in the mTLS mesh of [`crate::mtls`] (identity service, TLS destination, static file).

use std::time::{Duration, Instant};

use linkerd2_proxy_api::{
    inbound::{
        self as pb, HttpLocalRateLimit,
        inbound_server_policies_client::InboundServerPoliciesClient, proxy_protocol::Kind,
    },
    meta::metadata,
};
use serde_json::{Value, json};

use crate::{
    destination::{Destination, fixture, metric, rt, skipped},
    kubeapi::FakeApi,
    mtls::{Web2, id, web2_under},
    policy_api::{
        NAMESPACES, POD, PODS, SERVERS, cluster_without_crd, next, policy_proxy, watch_web_http,
    },
    support::{Proxy, eventually, http_server, local_listener, run},
};

const RATE_LIMITS: &str = "/apis/policy.weft.dev/v1alpha1/httplocalratelimitpolicies";
const PROMETHEUS_ID: &str = "prometheus.monitoring.serviceaccount.identity.weft.cluster.local";

fn limit_of(s: &pb::Server) -> Option<&HttpLocalRateLimit> {
    match s.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(Kind::Http1(h)) => h.local_rate_limit.as_ref(),
        other => panic!("not HTTP/1: {other:?}"),
    }
}

/// (policy name, total rps) of the answer's limit.
fn limit(s: &pb::Server) -> Option<(String, Option<u32>)> {
    let l = limit_of(s)?;
    let name = match l.metadata.as_ref().and_then(|m| m.kind.as_ref()) {
        Some(metadata::Kind::Resource(r)) => {
            assert_eq!(
                (r.group.as_str(), r.kind.as_str()),
                ("policy.weft.dev", "HTTPLocalRateLimitPolicy")
            );
            r.name.clone()
        }
        other => panic!("not a resource: {other:?}"),
    };
    Some((name, l.total.map(|t| t.requests_per_second)))
}

/// The recorded policy under another name, created later, with another spec.
fn rate_limit(name: &str, created: &str, spec: Value) -> Value {
    let mut p = fixture("httplocalratelimitpolicy-web-http.json");
    p["metadata"]["name"] = json!(name);
    p["metadata"]["creationTimestamp"] = json!(created);
    p["spec"] = spec;
    p
}

fn to_server() -> Value {
    json!({"group": "policy.weft.dev", "kind": "Server", "name": "web-http"})
}

#[test]
fn policy_api_sends_a_servers_rate_limit_and_its_changes() {
    let api = FakeApi::start();
    api.put(NAMESPACES, fixture("namespace-prod.json"));
    api.put(PODS, fixture("pod-web-4xk2p-meshed.json"));
    api.put(SERVERS, fixture("server-web-http.json"));
    api.put(RATE_LIMITS, fixture("httplocalratelimitpolicy-web-http.json"));
    let d = Destination::kubernetes(&api);

    rt().block_on(async {
        let addr = format!("http://{}", d.grpc);
        let mut client = InboundServerPoliciesClient::connect(addr).await.expect("connect");
        let spec = pb::PortSpec { workload: POD.into(), port: 8080 };
        let mut stream = client.watch_port(spec).await.expect("WatchPort").into_inner();
        let first = next(&mut stream, &d).await;
        assert_eq!(limit(&first), Some(("web-http".into(), Some(100))), "{first:#?}");
        let l = limit_of(&first).expect("a limit");
        assert_eq!(l.identity.map(|l| l.requests_per_second), Some(20));
        let [o] = l.overrides.as_slice() else { panic!("one override: {l:#?}") };
        assert_eq!(o.limit.map(|l| l.requests_per_second), Some(50));
        let ids: Vec<&str> =
            o.clients.iter().flat_map(|c| &c.identities).map(|i| i.name.as_str()).collect();
        assert_eq!(ids, [PROMETHEUS_ID]);
        // The port's other parts are the Server's, as without the policy.
        assert_eq!(first.labels["name"], "web-http");

        // Changed: sent again.
        let mut changed = fixture("httplocalratelimitpolicy-web-http.json");
        changed["spec"]["total"]["requestsPerSecond"] = json!(200);
        api.put(RATE_LIMITS, changed);
        let second = next(&mut stream, &d).await;
        assert_eq!(limit(&second), Some(("web-http".into(), Some(200))));

        // A newer policy for the same Server is skipped (one per Server, the oldest
        // applies), an invalid one too: nothing to send.
        api.put(
            RATE_LIMITS,
            rate_limit(
                "web-http-newer",
                "2025-05-21T00:00:00Z",
                json!({"targetRef": to_server(), "total": {"requestsPerSecond": 7}}),
            ),
        );
        api.put(
            RATE_LIMITS,
            rate_limit(
                "web-http-bad",
                "2025-05-19T00:00:00Z",
                json!({"targetRef": to_server(), "total": {"requestsPerSecond": 5},
                       "identity": {"requestsPerSecond": 6}}),
            ),
        );
        let quiet = tokio::time::timeout(Duration::from_millis(700), stream.message()).await;
        assert!(quiet.is_err(), "sent again without a change: {quiet:?}");

        // The applied policy goes: the newer one applies; it goes too: no limit.
        api.delete(RATE_LIMITS, "prod", "web-http");
        let third = next(&mut stream, &d).await;
        assert_eq!(limit(&third), Some(("web-http-newer".into(), Some(7))));
        api.delete(RATE_LIMITS, "prod", "web-http-newer");
        let fourth = next(&mut stream, &d).await;
        assert_eq!(limit(&fourth), None, "{fourth:#?}");
    });
    let m = d.metrics();
    assert_eq!(skipped(&m, "httplocalratelimitpolicy", "conflict"), 1.0, "{m}");
    assert_eq!(skipped(&m, "httplocalratelimitpolicy", "invalid_spec"), 1.0, "{m}");
    let logs = d.logs();
    assert!(logs.contains("prod/web-http-bad") && logs.contains("greater than total"), "{logs}");
}

/// A cluster whose CRDs predate HTTPLocalRateLimitPolicy (helm never upgrades `crds/`):
/// policy is served without limits, and limits apply once the CRD is installed.
#[test]
fn policy_is_served_without_the_rate_limit_crd_and_limits_follow_when_it_comes() {
    let (api, d) = cluster_without_crd(RATE_LIMITS);
    rt().block_on(async {
        let (mut stream, first) = watch_web_http(&d).await;
        assert_eq!(limit(&first), None);

        api.set_missing(RATE_LIMITS, false);
        api.put(RATE_LIMITS, fixture("httplocalratelimitpolicy-web-http.json"));
        // The watch retries with backoff (under a few seconds at first).
        let second = tokio::time::timeout(Duration::from_secs(30), stream.message()).await;
        let second = match second {
            Ok(Ok(Some(s))) => s,
            other => panic!("no update once the CRD came: {other:?}\n{}", d.logs()),
        };
        assert_eq!(limit(&second), Some(("web-http".into(), Some(100))));
    });
    assert!(d.logs().contains("the resource is not installed"), "{}", d.logs());
    let m = d.metrics();
    let errors =
        metric(&m, "destination_watch_errors_total", &[("kind", "httplocalratelimitpolicy")]);
    assert!(errors >= 1.0, "{m}");
}

/// `n` requests back to back on one connection to `addr` (a proxy's listener): their
/// status codes, and how long they took; `proxy`'s log on failure.
fn burst(proxy: &Proxy, addr: std::net::SocketAddr, n: usize) -> (Vec<String>, Duration) {
    let url = format!("http://{addr}/");
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "--max-time", "20", "--http1.1", "-w", "%{http_code}\\n"]);
    for _ in 0..n {
        cmd.args(["-o", "/dev/null", &url]);
    }
    let start = Instant::now();
    let (ok, out, err) = run(&mut cmd);
    let took = start.elapsed();
    assert!(ok, "curl: {err}\n{}", proxy.logs());
    (out.lines().map(String::from).collect(), took)
}

#[test]
fn the_proxy_answers_429_past_a_servers_total_rate_limit() {
    let app = http_server(local_listener());
    let api = FakeApi::start();
    api.put(NAMESPACES, fixture("namespace-prod.json"));
    let mut pod = fixture("pod-web-4xk2p-meshed.json");
    pod["spec"]["containers"][0]["ports"] =
        json!([{"name": "http", "containerPort": app.port(), "protocol": "TCP"}]);
    api.put(PODS, pod);
    // As Linkerd's guide does: a permissive Server, so that only the limit refuses.
    let mut server = fixture("server-web-http.json");
    server["spec"]["port"] = json!("http");
    server["spec"]["accessPolicy"] = json!("all-unauthenticated");
    api.put(SERVERS, server);
    let mut policy = fixture("httplocalratelimitpolicy-web-http.json");
    policy["spec"] = json!({"targetRef": to_server(), "total": {"requestsPerSecond": 5}});
    api.put(RATE_LIMITS, policy);
    let d = Destination::kubernetes(&api);

    let proxy = policy_proxy(&d, app, &app.port().to_string(), &[]);

    let (codes, took) = burst(&proxy, proxy.inbound, 30);
    let passed = codes.iter().filter(|c| *c == "200").count();
    let limited = codes.iter().filter(|c| *c == "429").count();
    assert_eq!(passed + limited, 30, "{codes:?}\n{}", proxy.logs());
    // A second's burst (5) and then one request per 200 ms: however slow this machine, no
    // more than that passes, and at least the first does.
    let most = 6 + (5.0 * took.as_secs_f64()).ceil() as usize;
    assert!(
        (1..=most).contains(&passed),
        "{passed} of 30 passed in {took:?} (at most {most})\n{}",
        proxy.logs()
    );
    // 30 requests in under 5 s exceed 5 rps; one connection on loopback takes far less.
    assert!(took < Duration::from_secs(4), "the burst took {took:?}: too slow to tell");
    assert!(limited >= 1, "{codes:?}");
    let m = proxy.metrics();
    let labels = [
        ("ratelimit_scope", "total"),
        ("ratelimit_kind", "httplocalratelimitpolicy"),
        ("ratelimit_name", "web-http"),
    ];
    assert_eq!(metric(&m, "inbound_http_local_ratelimit_total", &labels), limited as f64, "{m}");
    assert_eq!(
        metric(&m, "inbound_http_local_ratelimit_total", &[("ratelimit_scope", "total")]),
        limited as f64,
        "{m}"
    );

    // The policy goes: the proxy's next policy has no limit, and a burst all passes.
    api.delete(RATE_LIMITS, "prod", "web-http");
    assert!(
        eventually(Duration::from_secs(10), || burst(&proxy, proxy.inbound, 20)
            .0
            .iter()
            .all(|c| c == "200")),
        "still limited after the policy was deleted\n{}",
        proxy.logs()
    );
}

#[test]
fn an_override_gives_a_named_identity_its_own_rate_and_others_get_the_identity_rate() {
    // web2's Server admits meshed clients; its limit: one request per second per
    // identity, twenty for `client`.
    let Web2 { mesh: _mesh, web2, client, other } = web2_under(
        "  - apiVersion: policy.weft.dev/v1beta1\n    kind: Server\n    metadata: {name: web2-http, namespace: prod}\n    spec: {podSelector: {matchLabels: {app: web2}}, port: http, proxyProtocol: HTTP/1, accessPolicy: all-authenticated}\n  - apiVersion: policy.weft.dev/v1alpha1\n    kind: HTTPLocalRateLimitPolicy\n    metadata: {name: web2-rl, namespace: prod}\n    spec:\n      targetRef: {group: policy.weft.dev, kind: Server, name: web2-http}\n      identity: {requestsPerSecond: 1}\n      overrides: [{requestsPerSecond: 20, clientRefs: [{kind: ServiceAccount, name: client}]}]\n",
    );
    // Until the file is re-read, web2 is unknown to discovery: wait for the meshed path
    // (each success takes one of `client`'s twenty a second).
    let ready =
        eventually(Duration::from_secs(15), || burst(&client, client.outbound, 1).0 == ["200"]);
    assert!(ready, "{}\n{}", client.logs(), web2.logs());
    std::thread::sleep(Duration::from_secs(1));

    // Ten at once: within `client`'s override, all pass.
    let (codes, _) = burst(&client, client.outbound, 10);
    assert!(codes.iter().all(|c| c == "200"), "{codes:?}\n{}", web2.logs());
    // `tcp` has the per-identity rate: a second's burst of one, then one a second.
    let (codes, took) = burst(&other, other.outbound, 10);
    let passed = codes.iter().filter(|c| *c == "200").count();
    let limited = codes.iter().filter(|c| *c == "429").count();
    assert_eq!(passed + limited, 10, "{codes:?}\n{}", web2.logs());
    let most = 2 + took.as_secs_f64().ceil() as usize;
    assert!((1..=most).contains(&passed), "{passed} of 10 passed in {took:?}: {codes:?}");
    assert!(took < Duration::from_secs(5), "the burst took {took:?}: too slow to tell");

    let m = web2.metrics();
    let (client_id, other_id) = (id("client"), id("tcp"));
    let limited_of = |scope: &str, client: &str| {
        let labels = [
            ("ratelimit_kind", "httplocalratelimitpolicy"),
            ("ratelimit_name", "web2-rl"),
            ("ratelimit_scope", scope),
            ("client_id", client),
        ];
        metric(&m, "inbound_http_local_ratelimit_total", &labels)
    };
    assert_eq!(limited_of("identity", &other_id), limited as f64, "{m}");
    assert_eq!(limited_of("override", &client_id), 0.0, "{m}");
    assert_eq!(limited_of("identity", &client_id), 0.0, "{m}");
}
