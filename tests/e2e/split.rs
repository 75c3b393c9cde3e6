//! Traffic splits end to end: the real `weft destination` fed by the fake Kubernetes API with
//! a recorded Gateway API HTTPRoute (Flagger's shape, fixtures/k8s/httproute-web-canary.json)
//! or by a static file, and a real gRPC client asking `GetProfile` as a proxy would, by name
//! and by ClusterIP; each override's authority is resolved with `Get` as the proxy will.

use std::time::{Duration, Instant};

use linkerd2_proxy_api::destination::{self as pb, destination_client::DestinationClient};
use serde_json::{Value, json};
use tonic::{Streaming, transport::Channel};

use crate::destination::{
    Destination, SERVICES, WEB, cluster, fixture, get, metric, next, no_endpoints, quiet, req, rt,
};

/// The Gateway API's HTTPRoute collection, as the destination lists and watches it.
pub(crate) const HTTPROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const WEB_CLUSTER_IP: &str = "10.96.12.34:80";
const PRIMARY: &str = "web-primary.prod.svc.cluster.local:80";
const CANARY: &str = "web-canary.prod.svc.cluster.local:80";

/// Services `web-primary` and `web-canary` next to `web`, as Flagger creates them.
fn backend_services(api: &crate::kubeapi::FakeApi) {
    for (name, ip) in [("web-primary", "10.96.12.40"), ("web-canary", "10.96.12.41")] {
        let mut svc = fixture("service-web.json");
        svc["metadata"]["name"] = json!(name);
        svc["metadata"]["uid"] = json!(format!("8e6c2f4a-7b1d-4c3e-a5f9-0d2b4e6a8c{}", &ip[10..]));
        svc["spec"]["clusterIP"] = json!(ip);
        svc["spec"]["clusterIPs"] = json!([ip]);
        api.put(SERVICES, svc);
    }
}

fn overrides(p: &pb::DestinationProfile) -> Vec<(&str, u32)> {
    p.dst_overrides.iter().map(|d| (d.authority.as_str(), d.weight)).collect()
}

pub(crate) async fn profiles(
    client: &mut DestinationClient<Channel>,
    path: &str,
) -> Streaming<pb::DestinationProfile> {
    client
        .get_profile(req(path))
        .await
        .unwrap_or_else(|e| panic!("GetProfile {path}: {e}"))
        .into_inner()
}

fn with_weights(primary: u32, canary: u32) -> Value {
    let mut route = fixture("httproute-web-canary.json");
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = json!(primary);
    route["spec"]["rules"][0]["backendRefs"][1]["weight"] = json!(canary);
    route
}

#[test]
fn split_httproute_weights_reach_profile_subscribers() {
    let api = cluster();
    backend_services(&api);
    api.put(HTTPROUTES, fixture("httproute-web-canary.json"));
    let d = Destination::kubernetes(&api);
    rt().block_on(async {
        let mut client = d.client().await;
        let mut by_name = profiles(&mut client, WEB).await;
        let mut by_ip = profiles(&mut client, WEB_CLUSTER_IP).await;
        for s in [&mut by_name, &mut by_ip] {
            let p = next(s).await;
            assert_eq!(p.fully_qualified_name, "web.prod.svc.cluster.local");
            assert_eq!(overrides(&p), [(PRIMARY, 90), (CANARY, 10)]);
        }
        // The authorities are what `Get` resolves by name.
        for authority in [PRIMARY, CANARY] {
            let mut s = get(&mut client, authority).await;
            assert!(no_endpoints(next(&mut s).await), "{authority} is a known service");
        }
        // A backend is not split itself.
        assert!(next(&mut profiles(&mut client, PRIMARY).await).await.dst_overrides.is_empty());
        // Another port of the split service is not split (the route names port 80).
        assert!(
            next(&mut profiles(&mut client, "web.prod.svc.cluster.local:8080").await)
                .await
                .dst_overrides
                .is_empty()
        );

        // Flagger shifts the weights: every subscriber gets the new split.
        api.put(HTTPROUTES, with_weights(50, 50));
        for s in [&mut by_name, &mut by_ip] {
            assert_eq!(overrides(&next(s).await), [(PRIMARY, 50), (CANARY, 50)]);
        }
        // Promotion: the canary's weight goes to 0; it is sent as it is.
        api.put(HTTPROUTES, with_weights(100, 0));
        for s in [&mut by_name, &mut by_ip] {
            assert_eq!(overrides(&next(s).await), [(PRIMARY, 100), (CANARY, 0)]);
        }

        // A younger route on the same Service loses (counted) and changes nothing.
        let mut rival = with_weights(1, 99);
        rival["metadata"]["name"] = json!("web-rival");
        rival["metadata"]["creationTimestamp"] = json!("2025-06-01T00:00:00Z");
        api.put(HTTPROUTES, rival);
        quiet(&mut by_name).await;

        // Edited into something a split cannot say (a header match): refused whole, so the
        // rival, the only route left that applies, takes over.
        let mut headers = with_weights(100, 0);
        headers["spec"]["rules"][0]["matches"][0]["headers"] =
            json!([{"type": "Exact", "name": "x-canary", "value": "insider"}]);
        api.put(HTTPROUTES, headers);
        for s in [&mut by_name, &mut by_ip] {
            assert_eq!(overrides(&next(s).await), [(PRIMARY, 1), (CANARY, 99)]);
        }

        // Both routes go: no split.
        api.delete(HTTPROUTES, "prod", "web-rival");
        api.delete(HTTPROUTES, "prod", "web");
        for s in [&mut by_name, &mut by_ip] {
            assert!(next(s).await.dst_overrides.is_empty());
        }
        quiet(&mut by_name).await;
    });
    let m = d.metrics();
    for reason in ["route_conflict", "unsupported_route"] {
        assert_eq!(
            metric(
                &m,
                "destination_objects_skipped_total",
                &[("kind", "gateway_httproute"), ("reason", reason)]
            ),
            1.0,
            "{reason}: {m}"
        );
    }
    assert!(
        d.logs().contains("x-canary") || d.logs().contains("matches other than"),
        "why is logged"
    );
}

#[test]
fn split_without_gateway_api_crds_discovery_goes_on() {
    let api = cluster();
    backend_services(&api);
    api.set_missing(HTTPROUTES, true);
    // Ready (synced) although the HTTPRoute list fails.
    let d = Destination::kubernetes(&api);
    rt().block_on(async {
        let mut client = d.client().await;
        let mut web = get(&mut client, WEB).await;
        assert!(matches!(
            next(&mut web).await.update,
            Some(pb::update::Update::Add(set)) if set.addrs.len() == 2
        ));
        let mut by_name = profiles(&mut client, WEB).await;
        let p = next(&mut by_name).await;
        assert_eq!(p.fully_qualified_name, "web.prod.svc.cluster.local");
        assert!(p.dst_overrides.is_empty());

        // The watch retries (with backoff) and says so once.
        let lists =
            || api.requests().iter().filter(|r| r.contains(&format!("{HTTPROUTES}?"))).count();
        let deadline = Instant::now() + Duration::from_secs(15);
        while lists() < 3 {
            assert!(Instant::now() < deadline, "not retried: {:?}", api.requests());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logs = d.logs();
        assert_eq!(logs.matches("no Gateway API HTTPRoute CRD").count(), 1, "{logs}");

        // The CRDs are installed and Flagger creates its route: the split arrives.
        api.set_missing(HTTPROUTES, false);
        api.put(HTTPROUTES, fixture("httproute-web-canary.json"));
        let p = tokio::time::timeout(Duration::from_secs(40), by_name.message())
            .await
            .expect("the split within the watch's backoff")
            .expect("stream")
            .expect("a profile");
        assert_eq!(overrides(&p), [(PRIMARY, 90), (CANARY, 10)]);
        let mut by_ip = profiles(&mut client, WEB_CLUSTER_IP).await;
        assert_eq!(overrides(&next(&mut by_ip).await), [(PRIMARY, 90), (CANARY, 10)]);
    });
    assert!(d.logs().contains("the Gateway API HTTPRoute CRD is installed now"));
    assert!(
        metric(&d.metrics(), "destination_watch_errors_total", &[("kind", "gateway_httproute")])
            >= 2.0
    );
}

#[test]
fn split_static_file_section() {
    let dir = std::env::temp_dir().join(format!("weft-e2e-split-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("endpoints.yaml");
    let yaml = |canary: u32| {
        format!(
            "services:
  - {{name: web, namespace: demo, clusterIPs: [10.96.0.10], ports: [{{port: 80, endpoints: [{{address: '127.0.0.1:8081'}}]}}]}}
  - {{name: web-canary, namespace: demo, ports: [{{port: 80, endpoints: [{{address: '127.0.0.1:8082'}}]}}]}}
splits:
  - name: web
    namespace: demo
    port: 80
    backends:
      - {{name: web, weight: {}}}
      - {{name: web-canary, weight: {canary}}}
",
            100 - canary
        )
    };
    std::fs::write(&file, yaml(10)).expect("write");
    let d = Destination::start(
        &["--source", "static", "--static-file", file.to_str().expect("utf-8")],
        &[],
    );
    let web = "web.demo.svc.cluster.local:80";
    let canary = "web-canary.demo.svc.cluster.local:80";
    rt().block_on(async {
        let mut client = d.client().await;
        let mut by_name = profiles(&mut client, "web.demo.svc.cluster.local:80").await;
        let mut by_ip = profiles(&mut client, "10.96.0.10:80").await;
        for s in [&mut by_name, &mut by_ip] {
            assert_eq!(overrides(&next(s).await), [(web, 90), (canary, 10)]);
        }
        std::fs::write(&file, yaml(40)).expect("rewrite");
        for s in [&mut by_name, &mut by_ip] {
            assert_eq!(overrides(&next(s).await), [(web, 60), (canary, 40)]);
        }
        // The canary's endpoints are what `Get` gives for its authority.
        let mut s = get(&mut client, canary).await;
        assert!(matches!(
            next(&mut s).await.update,
            Some(pb::update::Update::Add(set)) if set.addrs.len() == 1
        ));
    });
    let _ = std::fs::remove_dir_all(&dir);
}
