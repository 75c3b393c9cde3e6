//! `weft destination`'s inbound policy API end to end: the real binary against the fake
//! Kubernetes API (recorded pods and namespace, and policy.weft.dev objects from
//! fixtures/k8s/), and a real gRPC client (linkerd2-proxy-api's `InboundServerPolicies`)
//! following a pod port as the pod's proxy would.

use std::time::Duration;

use linkerd2_proxy_api::{
    inbound::{
        self as pb, authn::Permit, inbound_server_policies_client::InboundServerPoliciesClient,
        proxy_protocol::Kind,
    },
    meta::metadata,
};
use serde_json::json;
use tonic::{Code, Streaming};

use crate::{
    destination::{Destination, fixture, metric, rt},
    kubeapi::FakeApi,
};

const PODS: &str = "/api/v1/pods";
const NAMESPACES: &str = "/api/v1/namespaces";
const SERVERS: &str = "/apis/policy.weft.dev/v1beta1/servers";
const POLICIES: &str = "/apis/policy.weft.dev/v1beta1/authorizationpolicies";
const MESH_TLS: &str = "/apis/policy.weft.dev/v1beta1/meshtlsauthentications";
const NETWORKS: &str = "/apis/policy.weft.dev/v1beta1/networkauthentications";
const POD: &str = "prod:web-6d5f8c7b9d-4xk2p";

fn spec(workload: &str, port: u32) -> pb::PortSpec {
    pb::PortSpec { workload: workload.into(), port }
}

async fn next(stream: &mut Streaming<pb::Server>, d: &Destination) -> pb::Server {
    match tokio::time::timeout(Duration::from_secs(10), stream.message()).await {
        Ok(Ok(Some(s))) => s,
        other => panic!("no Server message: {other:?}\nlog:\n{}", d.logs()),
    }
}

/// (kind, name) of an authorization's metadata.
fn authz_names(s: &pb::Server) -> Vec<(String, String)> {
    s.authorizations
        .iter()
        .map(|a| match a.metadata.as_ref().and_then(|m| m.kind.as_ref()) {
            Some(metadata::Kind::Default(n)) => ("default".into(), n.clone()),
            Some(metadata::Kind::Resource(r)) => (r.kind.clone(), r.name.clone()),
            None => ("none".into(), String::new()),
        })
        .collect()
}

#[test]
fn policy_api_watch_port_follows_servers_and_policies() {
    let api = FakeApi::start();
    api.put(NAMESPACES, fixture("namespace-prod.json"));
    api.put(PODS, fixture("pod-web-4xk2p-meshed.json"));
    for (collection, file) in [
        (SERVERS, "server-web-http.json"),
        (POLICIES, "authorizationpolicy-web-from-ops.json"),
        (MESH_TLS, "meshtlsauthentication-ops-clients.json"),
        (NETWORKS, "networkauthentication-cluster-pods.json"),
    ] {
        api.put(collection, fixture(file));
    }
    // A malformed Server (no podSelector) is skipped and counted, and changes nothing.
    let mut broken = fixture("server-web-http.json");
    broken["metadata"]["name"] = json!("broken");
    broken["spec"] = json!({"port": "http", "proxyProtocol": "HTTP/3"});
    api.put(SERVERS, broken);
    let d = Destination::kubernetes(&api);

    rt().block_on(async {
        let addr = format!("http://{}", d.grpc);
        let mut client = InboundServerPoliciesClient::connect(addr).await.expect("connect");
        let mut stream = client.watch_port(spec(POD, 8080)).await.expect("WatchPort").into_inner();
        let first = next(&mut stream, &d).await;
        assert_eq!(
            (
                first.labels["group"].as_str(),
                first.labels["kind"].as_str(),
                first.labels["name"].as_str()
            ),
            ("policy.weft.dev", "server", "web-http")
        );
        let Some(Kind::Http1(http1)) = first.protocol.as_ref().and_then(|p| p.kind.as_ref()) else {
            panic!("not HTTP/1: {first:?}")
        };
        assert_eq!(http1.routes.len(), 1, "the default route (the pod has no HTTP probes)");
        assert_eq!(http1.routes[0].authorizations, first.authorizations);
        assert_eq!(
            authz_names(&first),
            [("authorizationpolicy".to_string(), "web-from-ops".to_string())]
        );
        let authz = &first.authorizations[0];
        assert_eq!(authz.networks.len(), 1);
        assert_eq!(authz.networks[0].except.len(), 1);
        let Some(Permit::MeshTls(mtls)) =
            authz.authentication.as_ref().and_then(|a| a.permit.as_ref())
        else {
            panic!("not mTLS: {authz:?}")
        };
        let Some(pb::authn::permit_mesh_tls::Clients::Identities(ids)) = &mtls.clients else {
            panic!("no identities: {mtls:?}")
        };
        let names: Vec<&str> = ids.identities.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["prometheus.monitoring.serviceaccount.identity.weft.cluster.local"]);
        let suffixes: Vec<String> = ids.suffixes.iter().map(|s| s.parts.join(".")).collect();
        assert_eq!(suffixes, ["ops.serviceaccount.identity.weft.cluster.local"]);

        // The NetworkAuthentication goes away: the policy can no longer be satisfied.
        api.delete(NETWORKS, "prod", "cluster-pods");
        let second = next(&mut stream, &d).await;
        assert!(second.authorizations.is_empty(), "{second:?}");
        // The Server goes away: the default policy (the cluster's: all-unauthenticated).
        api.delete(SERVERS, "prod", "web-http");
        let third = next(&mut stream, &d).await;
        assert_eq!(
            (third.labels["kind"].as_str(), third.labels["name"].as_str()),
            ("default", "all-unauthenticated")
        );
        assert!(matches!(
            third.protocol.as_ref().and_then(|p| p.kind.as_ref()),
            Some(Kind::Detect(_))
        ));
        assert_eq!(
            authz_names(&third),
            [("default".to_string(), "all-unauthenticated".to_string())]
        );
        // The namespace says deny: so does the stream.
        let mut ns = fixture("namespace-prod.json");
        ns["metadata"]["annotations"] = json!({"config.weft.dev/default-inbound-policy": "deny"});
        api.put(NAMESPACES, ns);
        let fourth = next(&mut stream, &d).await;
        assert_eq!(fourth.labels["name"], "deny");
        assert!(fourth.authorizations.is_empty());
        // An unrelated change sends nothing.
        api.put(MESH_TLS, fixture("meshtlsauthentication-ops-clients.json"));
        let quiet = tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
        assert!(quiet.is_err(), "sent again without a change: {quiet:?}");

        // GetPort agrees; errors say what is wrong.
        let got =
            client.get_port(spec(r#"{"ns":"prod","pod":"web-6d5f8c7b9d-4xk2p"}"#, 8080)).await;
        assert_eq!(got.expect("GetPort").into_inner(), fourth);
        let e = client.get_port(spec("prod:nope", 8080)).await.expect_err("unknown pod");
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        assert!(e.message().contains("prod/nope"), "{}", e.message());
        let e = client.watch_port(spec("prod:nope", 8080)).await.expect_err("unknown pod");
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
        for (workload, port) in [("prod/web", 8080), ("prod:web-6d5f8c7b9d-4xk2p", 0), (POD, 70000)]
        {
            let e = client.get_port(spec(workload, port)).await.expect_err("bad PortSpec");
            assert_eq!(e.code(), Code::InvalidArgument, "{workload} {port}: {e:?}");
        }
    });
    let m = d.metrics();
    let lookups = |rpc: &str, result: &str| {
        metric(&m, "destination_lookups_total", &[("rpc", rpc), ("result", result)])
    };
    assert_eq!(lookups("watch_port", "server"), 1.0, "{m}");
    assert_eq!(lookups("get_port", "default"), 1.0, "{m}");
    assert_eq!(lookups("get_port", "not_found"), 1.0, "{m}");
    assert_eq!(lookups("watch_port", "not_found"), 1.0, "{m}");
    assert_eq!(lookups("get_port", "invalid"), 3.0, "{m}");
    let skipped = &[("kind", "server"), ("reason", "invalid_spec")];
    assert_eq!(metric(&m, "destination_objects_skipped_total", skipped), 1.0, "{m}");
    assert!(d.logs().contains("prod/broken"), "the skipped Server is named in the log");
}
