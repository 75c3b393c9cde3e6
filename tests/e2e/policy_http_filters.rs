//! The HTTP failure injector of an HTTPRoute rule end to end, through a real proxy, called
//! by curl: the policy server of the test's own sends the rule (as the gRPC one's test
//! does), and the proxy answers with the configured status instead of calling the app.

use std::process::Command;

use linkerd2_proxy_api::{http_route as route_api, inbound as pb};

use crate::{
    policy_grpc_filters::{
        FakePolicy, PolicyServer, everyone, gateway_meta, inbound_proxy, server_policy,
    },
    support::{Backend, Proxy, metric, run},
};

const INJECTED: &str = "injected: 100% of requests fail";

fn fail_filter(status: u32, message: &str, ratio: (u32, u32)) -> pb::http_route::Filter {
    let (numerator, denominator) = ratio;
    pb::http_route::Filter {
        kind: Some(pb::http_route::filter::Kind::FailureInjector(route_api::HttpFailureInjector {
            status,
            message: message.into(),
            ratio: Some(route_api::Ratio { numerator, denominator }),
        })),
    }
}

/// A rule for the requests under `prefix`.
fn rule(prefix: &str, filters: Vec<pb::http_route::Filter>) -> pb::http_route::Rule {
    let path =
        route_api::PathMatch { kind: Some(route_api::path_match::Kind::Prefix(prefix.into())) };
    pb::http_route::Rule {
        matches: vec![route_api::HttpRouteMatch {
            path: Some(path),
            ..route_api::HttpRouteMatch::default()
        }],
        filters,
    }
}

/// `curl -i` of `path` through the proxy: the status line, the headers and the body.
fn curl(proxy: &Proxy, path: &str) -> String {
    let (ok, out, err) = run(Command::new("curl")
        .args(["-sS", "-i"])
        .arg(format!("http://{}{path}", proxy.inbound)));
    assert!(ok, "curl (.ci/run installs it): {err}\n{}", proxy.logs());
    out
}

#[test]
fn http_failure_injectors_answer_with_the_configured_status_without_calling_the_app() {
    let app = Backend::start(std::time::Duration::ZERO, None);
    let port = app.addr.port();
    let route = pb::HttpRoute {
        metadata: gateway_meta("HTTPRoute", "web-faults"),
        hosts: Vec::new(),
        authorizations: vec![everyone()],
        rules: vec![
            // Every request.
            rule("/fail", vec![fail_filter(500, INJECTED, (1, 1))]),
            // None.
            rule("/never", vec![fail_filter(500, "never", (0, 1))]),
        ],
    };
    let detect = pb::proxy_protocol::Detect {
        timeout: None,
        http_routes: vec![route],
        http_local_rate_limit: None,
    };
    let server = server_policy("web-http", pb::proxy_protocol::Kind::Detect(detect));
    let policy = PolicyServer::start(FakePolicy { port: port.into(), server });
    let proxy = inbound_proxy(app.addr, &policy, &[]);
    let port_s = port.to_string();

    // Ratio 1: the configured status, the message in `l5d-proxy-error` (as linkerd2-proxy
    // sends it) and in the body; the app never sees the request.
    for _ in 0..5 {
        let out = curl(&proxy, "/fail/x");
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert!(lines[0].starts_with("HTTP/1.1 500"), "{out}");
        let header = format!("l5d-proxy-error: {INJECTED}");
        assert!(lines.contains(&header.as_str()), "{header:?} not in\n{out}");
        assert_eq!(lines.last().copied(), Some(INJECTED), "the body:\n{out}");
    }
    assert_eq!(app.hits(), 0, "an injected failure reached the app");

    // Ratio 0: every request passes through to the app, untouched.
    for _ in 0..5 {
        let out = curl(&proxy, "/never");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(!out.to_ascii_lowercase().contains("l5d-proxy-error"), "{out}");
        assert_eq!(out.lines().last(), Some(port_s.as_str()), "the app's answer:\n{out}");
    }
    assert_eq!(app.hits(), 5);

    // Counted as responses the proxy gave, classified by their status; and as requests
    // the route's authorization allowed.
    let m = proxy.metrics();
    let inbound = ("direction", "inbound");
    let injected = [inbound, ("status_code", "500"), ("classification", "failure")];
    assert_eq!(metric(&m, "response_total", &injected), 5.0, "{m}");
    let passed = [inbound, ("status_code", "200"), ("classification", "success")];
    assert_eq!(metric(&m, "response_total", &passed), 5.0, "{m}");
    assert_eq!(metric(&m, "request_total", &[inbound]), 10.0, "{m}");
    let allowed = [("route_name", "web-faults"), ("srv_name", "web-http")];
    assert_eq!(metric(&m, "inbound_http_authz_allow_total", &allowed), 10.0, "{m}");
}
