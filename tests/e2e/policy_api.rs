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
    support::Proxy,
};

pub(crate) const PODS: &str = "/api/v1/pods";
pub(crate) const NAMESPACES: &str = "/api/v1/namespaces";
pub(crate) const SERVERS: &str = "/apis/policy.weft.dev/v1beta1/servers";
pub(crate) const POLICIES: &str = "/apis/policy.weft.dev/v1beta1/authorizationpolicies";
pub(crate) const MESH_TLS: &str = "/apis/policy.weft.dev/v1beta1/meshtlsauthentications";
pub(crate) const NETWORKS: &str = "/apis/policy.weft.dev/v1beta1/networkauthentications";
pub(crate) const POD: &str = "prod:web-6d5f8c7b9d-4xk2p";

/// A cluster whose CRDs predate the kind of `missing` (helm never upgrades `crds/`), with
/// web's pod and its Server, and the destination service watching it.
pub(crate) fn cluster_without_crd(missing: &str) -> (FakeApi, Destination) {
    let api = FakeApi::start();
    api.set_missing(missing, true);
    api.put(NAMESPACES, fixture("namespace-prod.json"));
    api.put(PODS, fixture("pod-web-4xk2p-meshed.json"));
    api.put(SERVERS, fixture("server-web-http.json"));
    let d = Destination::kubernetes(&api);
    (api, d)
}

/// The watch of web's port 8080 and its first answer, for its Server: answered at all,
/// since lookups wait only for the kinds that must exist.
pub(crate) async fn watch_web_http(d: &Destination) -> (Streaming<pb::Server>, pb::Server) {
    let addr = format!("http://{}", d.grpc);
    let mut client = InboundServerPoliciesClient::connect(addr).await.expect("connect");
    let watch = tokio::time::timeout(Duration::from_secs(15), client.watch_port(spec(POD, 8080)));
    let Ok(watch) = watch.await else { panic!("no answer without the CRD\n{}", d.logs()) };
    let mut stream = watch.expect("WatchPort").into_inner();
    let first = next(&mut stream, d).await;
    assert_eq!(first.labels["name"], "web-http");
    (stream, first)
}

/// A proxy in front of `target` whose inbound policy for `ports` comes from `d`, for web's
/// pod; `extra`: more flags.
pub(crate) fn policy_proxy(
    d: &Destination,
    target: std::net::SocketAddr,
    ports: &str,
    extra: &[&str],
) -> Proxy {
    let (target, dst) = (target.to_string(), d.grpc.to_string());
    let mut args = vec!["--inbound-orig-dst-addr", &target, "--policy-addr", &dst];
    args.extend(["--policy-workload", POD, "--inbound-ports", ports]);
    args.extend(extra);
    Proxy::start(&args)
}

fn spec(workload: &str, port: u32) -> pb::PortSpec {
    pb::PortSpec { workload: workload.into(), port }
}

/// The next answer of a policy watch, or a failure with the destination's log.
pub(crate) async fn next(stream: &mut Streaming<pb::Server>, d: &Destination) -> pb::Server {
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

/// A TCP connection from `source` (another loopback address) to `to`.
fn connect_from(source: &str, to: std::net::SocketAddr) -> std::net::TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let from: std::net::SocketAddr = format!("{source}:0").parse().expect("source");
    socket.bind(&from.into()).expect("bind the source address");
    socket.connect(&to.into()).expect("connect");
    let s: std::net::TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s
}

/// `curl` from `source` through the proxy's inbound port: the status line and headers.
fn curl_from(source: &str, proxy: &crate::support::Proxy) -> String {
    curl_path_from(source, proxy, "/")
}

fn curl_path_from(source: &str, proxy: &crate::support::Proxy, path: &str) -> String {
    let url = format!("http://{}{path}", proxy.inbound);
    let (ok, out, err) = crate::support::run(
        std::process::Command::new("curl")
            .args(["-sSi", "--max-time", "10", "--http1.1", "--interface", source])
            .arg(&url),
    );
    assert!(ok, "curl from {source}: {err}\n{}", proxy.logs());
    out.split_once("\r\n\r\n").map_or(out.clone(), |(h, _)| h.to_string())
}

/// A NetworkAuthentication of one client address, and an AuthorizationPolicy of `server`
/// that requires it.
fn allow_from(api: &FakeApi, server: &str, source: &str) {
    let name = format!("{server}-from-{}", source.replace('.', "-"));
    let mut net = fixture("networkauthentication-cluster-pods.json");
    net["metadata"]["name"] = json!(name);
    net["spec"] = json!({"networks": [{"cidr": format!("{source}/32")}]});
    api.put(NETWORKS, net);
    let mut policy = fixture("authorizationpolicy-web-from-ops.json");
    policy["metadata"]["name"] = json!(name);
    policy["spec"] = json!({
        "targetRef": {"group": "policy.weft.dev", "kind": "Server", "name": server},
        "requiredAuthenticationRefs": [
            {"group": "policy.weft.dev", "kind": "NetworkAuthentication", "name": name}
        ]
    });
    api.put(POLICIES, policy);
}

#[test]
fn the_proxy_enforces_the_servers_and_policies_it_watches() {
    use crate::support::{echo, eventually, http_server, local_listener, metric, serve};
    use std::io::{Read as _, Write as _};

    // The pod's two ports: HTTP, and TCP the Server marks opaque.
    let app = http_server(local_listener());
    let tcp_app = serve(local_listener(), echo);
    let api = FakeApi::start();
    api.put(NAMESPACES, fixture("namespace-prod.json"));
    let mut pod = fixture("pod-web-4xk2p-meshed.json");
    pod["spec"]["containers"][0]["ports"] = json!([
        {"name": "http", "containerPort": app.port(), "protocol": "TCP"},
        {"name": "tcp", "containerPort": tcp_app.port(), "protocol": "TCP"}
    ]);
    api.put(PODS, pod);
    let mut server = fixture("server-web-http.json");
    server["spec"]["port"] = json!("http");
    api.put(SERVERS, server.clone());
    server["metadata"]["name"] = json!("web-tcp");
    server["spec"]["port"] = json!("tcp");
    server["spec"]["proxyProtocol"] = json!("opaque");
    api.put(SERVERS, server);
    allow_from(&api, "web-http", "127.0.0.2");
    allow_from(&api, "web-tcp", "127.0.0.2");
    let d = Destination::kubernetes(&api);

    let ports = format!("{},{}", app.port(), tcp_app.port());
    let probes = format!("{}:/healthz", app.port());
    let proxy = |target| policy_proxy(&d, target, &ports, &["--inbound-probe-routes", &probes]);
    let http = proxy(app);

    // The Server lets in 127.0.0.2 only; its access policy (deny) refuses the rest.
    let head = curl_from("127.0.0.2", &http);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{}", http.logs());
    let head = curl_from("127.0.0.3", &http);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.contains("l5d-proxy-error: unauthorized"), "{head}");
    // The kubelet's probe (from the pod spec) passes whatever the Server says.
    let head = curl_path_from("127.0.0.3", &http, "/healthz");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let m = http.metrics();
    let server = [("srv_kind", "server"), ("srv_name", "web-http")];
    let allowed = [
        &server[..],
        &[("authz_kind", "authorizationpolicy"), ("authz_name", "web-http-from-127-0-0-2")],
    ]
    .concat();
    assert_eq!(metric(&m, "inbound_http_authz_allow_total", &allowed), 1.0, "{m}");
    assert_eq!(metric(&m, "inbound_http_authz_deny_total", &server), 1.0, "{m}");
    let updates = [("port", app.port().to_string()), ("result", "ok".into())];
    let updates: Vec<(&str, &str)> = updates.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert!(metric(&m, "inbound_policy_updates_total", &updates) >= 1.0, "{m}");

    // The AuthorizationPolicy goes: 127.0.0.2 is refused too (a new connection each time).
    api.delete(POLICIES, "prod", "web-http-from-127-0-0-2");
    assert!(
        eventually(Duration::from_secs(10), || curl_from("127.0.0.2", &http).contains(" 403")),
        "still allowed after the policy went\n{}",
        http.logs()
    );
    // The Server goes: the port falls back to the cluster's default, all-unauthenticated.
    api.delete(SERVERS, "prod", "web-http");
    assert!(
        eventually(Duration::from_secs(10), || curl_from("127.0.0.3", &http).contains(" 200")),
        "the default policy did not come back\n{}",
        http.logs()
    );
    let m = http.metrics();
    let default = [("srv_kind", "default"), ("srv_name", "all-unauthenticated")];
    assert!(metric(&m, "inbound_http_authz_allow_total", &default) >= 1.0, "{m}");

    // Opaque: no detection (the app is reached before the client says anything), and an
    // open connection is closed when its authorization goes.
    let tcp = proxy(tcp_app);
    // Closed by the proxy: EOF or a reset, not a read that timed out.
    let closed = |s: &mut std::net::TcpStream| {
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => Ok(()),
            Err(e)
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    };
    let mut refused = connect_from("127.0.0.3", tcp.inbound);
    let _ = refused.write_all(b"ping");
    assert_eq!(closed(&mut refused), Ok(()), "127.0.0.3 was let in");
    let mut s = connect_from("127.0.0.2", tcp.inbound);
    s.write_all(b"ping").expect("write");
    let mut got = [0u8; 4];
    s.read_exact(&mut got).expect("echo through the opaque Server");
    assert_eq!(&got, b"ping");
    api.delete(POLICIES, "prod", "web-tcp-from-127-0-0-2");
    assert_eq!(closed(&mut s), Ok(()), "still open after the policy went");
    let m = tcp.metrics();
    let tcp_server = [("srv_kind", "server"), ("srv_name", "web-tcp")];
    assert_eq!(metric(&m, "inbound_tcp_authz_allow_total", &tcp_server), 1.0, "{m}");
    assert_eq!(metric(&m, "inbound_tcp_authz_deny_total", &tcp_server), 2.0, "{m}");
    assert_eq!(metric(&m, "inbound_tcp_errors_total", &[("error", "unauthorized")]), 1.0, "{m}");
    assert!(
        metric(&m, "tcp_open_total", &[("direction", "inbound"), ("protocol", "opaque")]) >= 1.0,
        "{m}"
    );
}
