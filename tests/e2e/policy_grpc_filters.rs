//! Filters on gRPC routes end to end, through a real proxy in front of the Python grpcio
//! app, called by a Python grpcio client: a GRPCRoute's `RequestHeaderModifier` from the
//! real `weft destination` (against the fake Kubernetes API) changes what the app receives,
//! and the API's gRPC failure injector — which no Gateway API or Weft resource says, so a
//! policy server of the test's own sends it — answers with the configured gRPC status.

use std::{collections::BTreeMap, net::SocketAddr, pin::Pin, process::Command, time::Duration};

use linkerd2_proxy_api::{
    grpc_route as grpc_api, http_route as route_api,
    inbound::{
        self as pb,
        inbound_server_policies_server::{InboundServerPolicies, InboundServerPoliciesServer},
    },
    meta::{Metadata, Resource, metadata},
    net::IpNetwork,
};
use serde_json::{Value, json};
use tonic::codegen::tokio_stream;

use crate::{
    destination::{Destination, metric, skipped},
    http::Py,
    policy_api::{POD, POLICIES, policy_proxy},
    policy_grpc_routes::{GRPC_ROUTES, grpc_app, grpc_route},
    policy_routes::policy,
    support::{Proxy, free_port, run},
};

/// What `peers.py grpc-calls` saw.
#[derive(Debug)]
struct Calls {
    /// "OK", or "CODE details", and how many calls ended so.
    outcomes: BTreeMap<String, u64>,
    /// The last reply, as text.
    reply: Option<String>,
    /// The last error's metadata, initial and trailing together.
    error_metadata: BTreeMap<String, String>,
}

/// `n` unary calls of `/weft.Test/{method}` through the proxy, with `headers` (`name=value`).
fn calls(proxy: &Proxy, method: &str, n: u32, headers: &[&str]) -> Calls {
    let mut cmd = Command::new("python3");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/py/peers.py"));
    cmd.args(["grpc-calls", &proxy.inbound.to_string(), &format!("/weft.Test/{method}")]);
    cmd.arg(n.to_string()).args(headers);
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "grpc-calls: {out}{err}\n{}", proxy.logs());
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let outcomes = serde_json::from_value(v["outcomes"].clone()).expect("outcomes");
    let mut error_metadata = BTreeMap::new();
    for part in ["initial", "trailing"] {
        if let Some(m) = v[part].as_object() {
            for (k, v) in m {
                error_metadata.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
            }
        }
    }
    Calls { outcomes, reply: v["reply"].as_str().map(String::from), error_metadata }
}

/// Calls until they all end as `want` (the policy reaches the proxy a moment after it
/// starts), for at most 20 s; the last calls either way.
fn calls_until(proxy: &Proxy, method: &str, headers: &[&str], want: &str) -> Calls {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let c = calls(proxy, method, 1, headers);
        if c.outcomes.keys().all(|k| k == want) || std::time::Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn outcomes(v: &[(&str, u64)]) -> BTreeMap<String, u64> {
    v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

/// The values of `name` in the metadata the app received (its `Metadata` method's reply).
fn received(reply: &Option<String>, name: &str) -> Vec<String> {
    let reply = reply.as_deref().unwrap_or_else(|| panic!("no reply"));
    let pairs: Vec<(String, String)> =
        serde_json::from_str(reply).unwrap_or_else(|e| panic!("{e}: {reply}"));
    pairs.into_iter().filter(|(k, _)| k == name).map(|(_, v)| v).collect()
}

#[test]
fn grpc_route_header_modifiers_change_what_the_app_receives() {
    let (_app, app, api) = grpc_app();
    api.put(
        GRPC_ROUTES,
        grpc_route(
            "web-metadata",
            json!([{
                "matches": [{"method": {"service": "weft.Test", "method": "Metadata"}}],
                "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "set": [{"name": "X-Tenant", "value": "a"}],
                    "add": [{"name": "x-added", "value": "1"}],
                    "remove": ["x-internal"]
                }}]
            }]),
        ),
    );
    // A filter Linkerd's inbound API cannot carry: the route is not served, and still
    // claims the Server, so its calls match no route.
    api.put(
        GRPC_ROUTES,
        grpc_route(
            "web-echo-mirrored",
            json!([{
                "matches": [{"method": {"service": "weft.Test", "method": "Echo"}}],
                "filters": [{"type": "RequestMirror", "requestMirror": {
                    "backendRef": {"name": "web-shadow", "port": 9090}
                }}]
            }]),
        ),
    );
    let server = json!({"group": "policy.weft.dev", "kind": "Server", "name": "web-grpc"});
    api.put(POLICIES, policy("web-grpc-from-local", server, "local"));
    let d = Destination::kubernetes(&api);
    let proxy = policy_proxy(&d, app, &app.port().to_string(), &[]);

    let headers = ["x-tenant=b", "x-internal=secret", "x-added=0"];
    let first = calls_until(&proxy, "Metadata", &headers, "OK");
    assert_eq!(first.outcomes, outcomes(&[("OK", 1)]), "{}", proxy.logs());
    let c = calls(&proxy, "Metadata", 5, &headers);
    assert_eq!(c.outcomes, outcomes(&[("OK", 5)]));
    assert_eq!(received(&c.reply, "x-tenant"), ["a"], "set replaces: {:?}", c.reply);
    assert_eq!(received(&c.reply, "x-added"), ["0", "1"], "add appends: {:?}", c.reply);
    assert!(received(&c.reply, "x-internal").is_empty(), "removed: {:?}", c.reply);

    let echo = calls(&proxy, "Echo", 2, &[]);
    assert_eq!(echo.outcomes.values().sum::<u64>(), 2);
    assert!(echo.outcomes.keys().all(|k| k.starts_with("UNIMPLEMENTED")), "{echo:?}");
    let m = d.metrics();
    assert_eq!(skipped(&m, "gateway_grpcroute", "unsupported_filter"), 1.0, "{m}");
    assert_eq!(skipped(&m, "gateway_grpcroute", "invalid_spec"), 0.0, "{m}");
    let m = proxy.metrics();
    let invalid = metric(&m, "inbound_policy_updates_total", &[("result", "invalid")]);
    assert_eq!(invalid, 0.0, "{m}");
}

/// An `InboundServerPolicies` server that answers every watch with one fixed policy: for
/// `port`, `server`; for any other port (the admin port), everyone.
pub(crate) struct FakePolicy {
    pub(crate) port: u32,
    pub(crate) server: pb::Server,
}

type Watch = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Server, tonic::Status>> + Send>>;

impl FakePolicy {
    fn answer(&self, port: u32) -> pb::Server {
        if port == self.port {
            return self.server.clone();
        }
        let detect = pb::proxy_protocol::Detect {
            timeout: None,
            http_routes: Vec::new(),
            http_local_rate_limit: None,
        };
        pb::Server {
            protocol: Some(pb::ProxyProtocol {
                kind: Some(pb::proxy_protocol::Kind::Detect(detect)),
            }),
            server_ips: Vec::new(),
            authorizations: vec![everyone()],
            labels: [("kind", "default"), ("name", "all-unauthenticated")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

#[tonic::async_trait]
impl InboundServerPolicies for FakePolicy {
    async fn get_port(
        &self,
        req: tonic::Request<pb::PortSpec>,
    ) -> Result<tonic::Response<pb::Server>, tonic::Status> {
        Ok(tonic::Response::new(self.answer(req.get_ref().port)))
    }

    type WatchPortStream = Watch;

    async fn watch_port(
        &self,
        req: tonic::Request<pb::PortSpec>,
    ) -> Result<tonic::Response<Watch>, tonic::Status> {
        use tokio_stream::StreamExt;
        let first = tokio_stream::once(Ok(self.answer(req.get_ref().port)));
        // Then nothing more, without ending the watch.
        let watch: Watch = Box::pin(first.chain(tokio_stream::pending()));
        Ok(tonic::Response::new(watch))
    }
}

/// A `kind` route's metadata (a Gateway API resource named `name`).
pub(crate) fn gateway_meta(kind: &str, name: &str) -> Option<Metadata> {
    Some(Metadata {
        kind: Some(metadata::Kind::Resource(Resource {
            group: "gateway.networking.k8s.io".into(),
            kind: kind.into(),
            name: name.into(),
            ..Resource::default()
        })),
    })
}

/// A Server named `name` that lets everyone in and speaks `protocol`.
pub(crate) fn server_policy(name: &str, protocol: pb::proxy_protocol::Kind) -> pb::Server {
    pb::Server {
        protocol: Some(pb::ProxyProtocol { kind: Some(protocol) }),
        server_ips: Vec::new(),
        authorizations: vec![everyone()],
        labels: [("kind", "server"), ("name", name)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// A proxy serving `app` inbound with the policy of `policy` for its port, and `extra`
/// flags; returned once the policy has reached it.
pub(crate) fn inbound_proxy(app: SocketAddr, policy: &PolicyServer, extra: &[&str]) -> Proxy {
    let (app_s, policy_s, port_s) =
        (app.to_string(), policy.addr.to_string(), app.port().to_string());
    let mut args = vec![
        "--inbound-orig-dst-addr",
        &app_s,
        "--policy-addr",
        &policy_s,
        "--policy-workload",
        POD,
        "--inbound-ports",
        &port_s,
    ];
    args.extend_from_slice(extra);
    let proxy = Proxy::start(&args);
    let updated = [("port", port_s.as_str()), ("result", "ok")];
    let arrived = crate::support::eventually(Duration::from_secs(20), || {
        metric(&proxy.metrics(), "inbound_policy_updates_total", &updated) >= 1.0
    });
    assert!(arrived, "no policy reached the proxy:\n{}", proxy.logs());
    proxy
}

/// Any client from anywhere, meshed or not.
pub(crate) fn everyone() -> pb::Authz {
    use pb::authn::{Permit, PermitUnauthenticated};
    let net = |ip: std::net::IpAddr| pb::Network {
        net: Some(IpNetwork { ip: Some(ip.into()), prefix_len: 0 }),
        except: Vec::new(),
    };
    pb::Authz {
        networks: vec![net([0, 0, 0, 0].into()), net(std::net::Ipv6Addr::UNSPECIFIED.into())],
        authentication: Some(pb::Authn {
            permit: Some(Permit::Unauthenticated(PermitUnauthenticated {})),
        }),
        labels: Default::default(),
        metadata: Some(Metadata {
            kind: Some(metadata::Kind::Default("all-unauthenticated".into())),
        }),
    }
}

/// The policy server, on a runtime of its own (the test's calls block), until dropped.
pub(crate) struct PolicyServer {
    pub(crate) addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

impl PolicyServer {
    pub(crate) fn start(policy: FakePolicy) -> PolicyServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let incoming = rt.block_on(async {
            tonic::transport::server::TcpIncoming::bind(([127, 0, 0, 1], 0).into()).expect("bind")
        });
        let addr = incoming.local_addr().expect("addr");
        rt.spawn(
            tonic::transport::Server::builder()
                .add_service(InboundServerPoliciesServer::new(policy))
                .serve_with_incoming(incoming),
        );
        PolicyServer { addr, _rt: rt }
    }
}

fn fail_filter(code: u32, message: &str, ratio: (u32, u32)) -> pb::grpc_route::Filter {
    let (numerator, denominator) = ratio;
    pb::grpc_route::Filter {
        kind: Some(pb::grpc_route::filter::Kind::FailureInjector(grpc_api::GrpcFailureInjector {
            code,
            message: message.into(),
            ratio: Some(route_api::Ratio { numerator, denominator }),
        })),
    }
}

fn rule(method: &str, filters: Vec<pb::grpc_route::Filter>) -> pb::grpc_route::Rule {
    pb::grpc_route::Rule {
        matches: vec![grpc_api::GrpcRouteMatch {
            rpc: Some(grpc_api::GrpcRpcMatch {
                service: "weft.Test".into(),
                method: method.into(),
            }),
            headers: Vec::new(),
        }],
        filters,
    }
}

const INJECTED: &str = "injected: 100% of calls fail";

#[test]
fn grpc_failure_injectors_answer_with_the_configured_grpc_status() {
    let port = free_port();
    let _app = Py::server("grpc-server", port);
    let app: SocketAddr = ([127, 0, 0, 1], port).into();
    let route = pb::GrpcRoute {
        metadata: gateway_meta("GRPCRoute", "web-faults"),
        hosts: Vec::new(),
        authorizations: vec![everyone()],
        rules: vec![
            // RESOURCE_EXHAUSTED, every call.
            rule("Echo", vec![fail_filter(8, INJECTED, (1, 1))]),
            // Never.
            rule("Metadata", vec![fail_filter(8, "never", (0, 1))]),
            // The app's own failure.
            rule("Fail", Vec::new()),
        ],
    };
    let grpc = pb::proxy_protocol::Grpc { routes: vec![route] };
    let server = server_policy("web-grpc", pb::proxy_protocol::Kind::Grpc(grpc));
    let policy = PolicyServer::start(FakePolicy { port: port.into(), server });
    let proxy = inbound_proxy(app, &policy, &[]);

    let want = format!("RESOURCE_EXHAUSTED {INJECTED}");
    let first = calls_until(&proxy, "Echo", &[], &want);
    assert_eq!(first.outcomes, outcomes(&[(&want, 1)]), "{}", proxy.logs());
    let injected = [("direction", "inbound"), ("grpc_status", "8"), ("classification", "failure")];
    let injected_before = metric(&proxy.metrics(), "response_total", &injected);
    let c = calls(&proxy, "Echo", 20, &[]);
    assert_eq!(c.outcomes, outcomes(&[(&want, 20)]), "{}", proxy.logs());
    assert_eq!(c.error_metadata.get("l5d-proxy-error").map(String::as_str), Some(INJECTED));
    // Ratio 0: none fails.
    let c = calls(&proxy, "Metadata", 20, &[]);
    assert_eq!(c.outcomes, outcomes(&[("OK", 20)]), "{}", proxy.logs());
    let c = calls(&proxy, "Fail", 2, &[]);
    assert_eq!(c.outcomes, outcomes(&[("UNAVAILABLE failing on purpose", 2)]));
    assert!(!c.error_metadata.contains_key("l5d-proxy-error"), "{c:?}");

    // On the wire: HTTP 200, a gRPC content type, and the status in the headers, which
    // end the stream (trailers-only, no body).
    let body = std::env::temp_dir().join(format!("weft-grpc-call-{port}"));
    std::fs::write(&body, b"\x00\x00\x00\x00\x04ping").expect("write the call's body");
    let (ok, out, err) = run(Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "-D", "-", "-o", "/dev/null"])
        .args(["-w", "size=%{size_download}\n", "-H", "content-type: application/grpc"])
        .args(["-H", "te: trailers", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(format!("http://{}/weft.Test/Echo", proxy.inbound)));
    let _ = std::fs::remove_file(&body);
    assert!(ok, "curl (.ci/run installs it): {err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    for want in [
        "HTTP/2 200",
        "content-type: application/grpc",
        "grpc-status: 8",
        "grpc-message: injected: 100%25 of calls fail",
        "l5d-proxy-error: injected: 100% of calls fail",
        "size=0",
    ] {
        assert!(lines.contains(&want), "{want:?} not in\n{out}");
    }

    // Counted as the HTTP injector's failures are: the responses, classified by their
    // gRPC status (21 more injected, the app's own 2).
    let m = proxy.metrics();
    assert_eq!(metric(&m, "response_total", &injected) - injected_before, 21.0, "{m}");
    let app_failed = [("direction", "inbound"), ("grpc_status", "14")];
    assert_eq!(metric(&m, "response_total", &app_failed), 2.0, "{m}");
    let ok = [("direction", "inbound"), ("grpc_status", "0"), ("classification", "success")];
    assert_eq!(metric(&m, "response_total", &ok), 20.0, "{m}");
}
