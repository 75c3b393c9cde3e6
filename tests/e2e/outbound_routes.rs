//! Per-route timeouts and retries from an HTTPRoute whose rules send to their parent Service
//! (Linkerd 2.16's outbound HTTPRoutes), end to end: the real `weft destination` fed by the
//! fake Kubernetes API with a recorded route (fixtures/k8s/httproute-web-routes.json), asked
//! for `GetProfile` by a real gRPC client and by a real `weft-proxy` whose requests then
//! time out on one path and not on another.

use std::{
    io::{BufReader, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use linkerd2_proxy_api::destination::{self as pb};
use serde_json::json;

use crate::{
    destination::{Destination, SLICES, WEB, cluster, fixture, next, quiet, rt, skipped},
    split::{HTTPROUTES, profiles},
    support::{Proxy, eventually, http_server, local_listener, metric, read_response},
};

const WEB_CLUSTER_IP: &str = "10.96.12.34:80";

/// A route's path regex, whether it has a method match too, its timeout in ms, its labels.
type RouteSummary = (String, bool, Option<i64>, Vec<(String, String)>);

fn summary(p: &pb::DestinationProfile) -> Vec<RouteSummary> {
    use pb::request_match::Match;
    p.routes
        .iter()
        .map(|r| {
            let (path, method) = match r.condition.as_ref().and_then(|c| c.r#match.as_ref()) {
                Some(Match::Path(p)) => (p.regex.clone(), false),
                Some(Match::All(seq)) => match seq.matches[0].r#match.as_ref() {
                    Some(Match::Path(p)) => (p.regex.clone(), true),
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            };
            let timeout = r.timeout.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
            let mut labels: Vec<_> =
                r.metrics_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            labels.sort();
            (path, method, timeout, labels)
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn outbound_routes_httproute_timeouts_reach_profile_subscribers() {
    let api = cluster();
    let mut svc = fixture("service-web.json");
    svc["metadata"]["annotations"] = json!({"timeout.weft.dev/request": "30s"});
    api.put(crate::destination::SERVICES, svc);
    api.put(HTTPROUTES, fixture("httproute-web-routes.json"));
    let d = Destination::kubernetes(&api);
    let route = |extra: &[(&str, &str)]| {
        let mut l = vec![("route", "web-routes"), ("weft_retry_limit", "1")];
        l.extend(extra);
        labels(&l)
    };
    rt().block_on(async {
        let mut client = d.client().await;
        let mut by_name = profiles(&mut client, WEB).await;
        let mut by_ip = profiles(&mut client, WEB_CLUSTER_IP).await;
        for s in [&mut by_name, &mut by_ip] {
            let p = next(s).await;
            assert!(p.dst_overrides.is_empty(), "not a split");
            assert_eq!(
                summary(&p),
                [
                    // Exact first; the header rule is skipped; then the Service's own route.
                    (
                        r"/echo".into(),
                        true,
                        Some(10_000),
                        route(&[("weft_retry_timeout_ms", "5000")])
                    ),
                    (r"/slow(?:/.*)?".into(), false, Some(200), route(&[])),
                    (".*".into(), false, Some(30_000), vec![]),
                ]
            );
            // Retries from the route's annotations: gateway errors.
            let classes = &p.routes[0].response_classes;
            assert!(p.routes[0].is_retryable && classes.len() == 1, "{classes:?}");
            assert!(!p.routes[2].is_retryable);
        }
        // Another port of the Service: the route names port 80.
        let p = next(&mut profiles(&mut client, "web.prod.svc.cluster.local:8080").await).await;
        assert_eq!(summary(&p).len(), 1);

        // The route is edited: every subscriber gets the new timeouts.
        let mut edited = fixture("httproute-web-routes.json");
        edited["spec"]["rules"][0]["timeouts"]["request"] = json!("1s");
        edited["metadata"]["annotations"] = json!({"timeout.weft.dev/request": "2s"});
        api.put(HTTPROUTES, edited);
        for s in [&mut by_name, &mut by_ip] {
            let p = next(s).await;
            let timeouts: Vec<_> = summary(&p).into_iter().map(|r| r.2).collect();
            assert_eq!(timeouts, [Some(10_000), Some(1000), Some(30_000)]);
            assert!(!p.routes[0].is_retryable, "no retry annotations left on the route");
        }

        // A younger route on the same Service port loses and changes nothing.
        let mut rival = fixture("httproute-web-routes.json");
        rival["metadata"]["name"] = json!("web-rival");
        rival["metadata"]["creationTimestamp"] = json!("2025-07-01T00:00:00Z");
        api.put(HTTPROUTES, rival);
        quiet(&mut by_name).await;

        // Both go: the Service's route alone.
        api.delete(HTTPROUTES, "prod", "web-routes");
        api.delete(HTTPROUTES, "prod", "web-rival");
        loop {
            let p = next(&mut by_name).await;
            if summary(&p).len() == 1 {
                break;
            }
        }
    });
    let m = d.metrics();
    assert!(skipped(&m, "gateway_httproute", "unsupported_rule") >= 1.0, "{m}");
    assert!(skipped(&m, "gateway_httproute", "route_conflict") >= 1.0, "{m}");
    assert!(d.logs().contains("header and query parameter matches"), "why is logged");
}

/// One HTTP/1.1 GET of `path` through the proxy: the status and how long it took.
fn get(proxy: std::net::SocketAddr, path: &str) -> (u16, Duration) {
    let start = Instant::now();
    let mut s = TcpStream::connect(proxy).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: web.prod.svc.cluster.local\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let status = read_response(&mut BufReader::new(s));
    (status, start.elapsed())
}

#[test]
fn outbound_routes_a_route_timeout_applies_to_its_path_only() {
    // The app: `/slow` answers after 5 s, `/echo` and `/` at once.
    let app = http_server(local_listener());
    let api = cluster();
    // The Service's one endpoint is the app (not a meshed pod: plaintext HTTP/1).
    let mut slice = fixture("endpointslice-web.json");
    slice["endpoints"] = json!([{
        "addresses": [app.ip().to_string()],
        "conditions": {"ready": true, "serving": true, "terminating": false},
    }]);
    slice["ports"][0]["port"] = json!(app.port());
    api.put(SLICES, slice);
    api.put(HTTPROUTES, fixture("httproute-web-routes.json"));
    let d = Destination::kubernetes(&api);
    let dst = d.grpc.to_string();
    let p = Proxy::start(&["--outbound-orig-dst-addr", WEB_CLUSTER_IP, "--destination-addr", &dst]);
    // The profile has arrived once `/slow` times out (before it, it takes the app's 5 s).
    assert!(
        eventually(Duration::from_secs(30), || get(p.outbound, "/slow").0 == 504),
        "no 504 on /slow; proxy log:\n{}",
        p.logs()
    );
    let (status, took) = get(p.outbound, "/slow");
    assert_eq!(status, 504);
    assert!(took < Duration::from_secs(3), "the route's 200ms timeout, not the app's 5s: {took:?}");
    // The other paths are not cut short.
    for path in ["/echo", "/", "/slowpoke"] {
        assert_eq!(get(p.outbound, path).0, 200, "{path}");
    }
    assert!(
        metric(&p.metrics(), "outbound_http_errors_total", &[("error", "request_timeout")]) >= 1.0
    );
    // Route metrics: the HTTPRoute's routes are named, so their requests are counted by
    // route; those that fell through to the Service's own route (`/`, `/slowpoke`) are not.
    let route = [
        ("direction", "outbound"),
        ("dst", "web.prod.svc.cluster.local:80"),
        ("rt_route", "web-routes"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut l = route.to_vec();
        l.extend_from_slice(extra);
        l
    };
    let mut m = String::new();
    // A response is counted once its body has ended, just after the client has it.
    let counted = eventually(Duration::from_secs(10), || {
        m = p.metrics();
        metric(&m, "route_request_total", &route) == metric(&m, "route_response_total", &route)
    });
    assert!(counted, "every route request answered:\n{m}");
    let ok = with(&[("status_code", "200"), ("classification", "success")]);
    assert_eq!(metric(&m, "route_response_total", &ok), 1.0, "/echo:\n{m}");
    let timed_out = with(&[("status_code", "504"), ("classification", "failure")]);
    assert!(metric(&m, "route_response_total", &timed_out) >= 2.0, "/slow:\n{m}");
    assert!(metric(&m, "route_response_latency_ms_count", &with(&[("status_code", "504")])) >= 2.0);
    assert_eq!(
        metric(&m, "route_request_total", &[]),
        metric(&m, "route_request_total", &route),
        "no route series but the named route's:\n{m}"
    );
}
