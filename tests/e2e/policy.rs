//! The inbound proxy's default policy, seen from real clients (curl over HTTP/1.1 and
//! HTTP/2, a gRPC-shaped request, raw TCP) and from the proxy's own metrics. The meshed
//! (mTLS) side of it is in `mtls.rs`, where the PKI lives.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{netns::proxy_bin, support::*};

/// A proxy whose inbound side forwards to `app`, with `extra` flags.
fn inbound_proxy(app: SocketAddr, extra: &[&str]) -> Proxy {
    let app = app.to_string();
    Proxy::start(&[&["--inbound-orig-dst-addr", app.as_str()], extra].concat())
}

/// `curl -si` through the proxy's inbound port: (status line and headers, body).
fn curl(proxy: &Proxy, args: &[&str], path: &str) -> (String, String) {
    let url = format!("http://{}{path}", proxy.inbound);
    let (ok, out, err) =
        run(Command::new("curl").args(["-sSi", "--max-time", "10"]).args(args).arg(&url));
    assert!(ok, "curl {args:?} {url}: {err}\n{}", proxy.logs());
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_string(), body.to_string())
}

/// Accepts connections and counts them; writes a banner first (a server that speaks first).
fn counting_banner_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let addr = serve(local_listener(), move |s| {
        counter.fetch_add(1, Ordering::SeqCst);
        banner(b"220 banner from the app\r\n")(s)
    });
    (addr, accepted)
}

#[test]
fn deny_refuses_everything_but_the_pods_probes_and_counts_each_decision() {
    let app = http_server(local_listener());
    let probes = format!("{}:/", app.port());
    let grpc_probes = app.port().to_string();
    let proxy = inbound_proxy(
        app,
        &[
            "--inbound-default-policy",
            "deny",
            "--inbound-probe-routes",
            &probes,
            "--inbound-grpc-probe-ports",
            &grpc_probes,
        ],
    );

    // The kubelet's probe passes, over either HTTP version (its query is not the path).
    let (head, body) = curl(&proxy, &["--http1.1"], "/?verbose=1");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "hello HTTP/1.1\n");
    let (head, _) = curl(&proxy, &["--http2-prior-knowledge"], "/");
    assert!(head.starts_with("HTTP/2 200"), "{head}");

    // Anything else gets a 403 that says why: another path, another method, HTTP/2.
    for (args, path) in [
        (&["--http1.1"][..], "/echo"),
        (&["--http1.1", "-X", "POST", "-d", "x"][..], "/"),
        (&["--http2-prior-knowledge"][..], "/echo"),
    ] {
        let (head, body) = curl(&proxy, args, path);
        let status = if args[0] == "--http1.1" { "HTTP/1.1 403" } else { "HTTP/2 403" };
        assert!(head.starts_with(status), "{args:?} {path}: {head}");
        assert!(head.contains("l5d-proxy-error: unauthorized"), "{head}");
        assert!(body.contains("inbound policy"), "{body}");
    }
    // gRPC learns it in gRPC's terms: PERMISSION_DENIED.
    let grpc = &[
        "--http2-prior-knowledge",
        "-X",
        "POST",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
    ][..];
    let (head, _) = curl(&proxy, grpc, "/weft.test.Echo/Say");
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(head.contains("grpc-status: 7"), "{head}");
    // The kubelet's gRPC probe (the health check) reaches the app.
    let (head, body) = curl(&proxy, grpc, "/grpc.health.v1.Health/Check");
    assert!(head.starts_with("HTTP/2 200") && !head.contains("grpc-status"), "{head}");
    assert_eq!(body, "hello HTTP/2.0\n");

    let m = proxy.metrics();
    let probe = [
        ("srv_kind", "default"),
        ("srv_name", "deny"),
        ("route_name", "probe"),
        ("authz_name", "probe"),
    ];
    assert_eq!(metric(&m, "inbound_http_authz_allow_total", &probe), 3.0, "{m}");
    assert_eq!(metric(&m, "inbound_http_authz_allow_total", &[("authz_name", "deny")]), 0.0, "{m}");
    let denied = [
        ("srv_kind", "default"),
        ("srv_name", "deny"),
        ("route_name", "default"),
        ("tls", "no_identity"),
        ("no_tls_reason", "disabled"),
    ];
    assert_eq!(metric(&m, "inbound_http_authz_deny_total", &denied), 4.0, "{m}");
    assert_eq!(metric(&m, "inbound_http_errors_total", &[("error", "unauthorized")]), 4.0, "{m}");
    assert_eq!(metric(&m, "response_total", &[("status_code", "403")]), 3.0, "{m}");
    assert_eq!(
        metric(&m, "response_total", &[("grpc_status", "7"), ("classification", "failure")]),
        1.0,
        "{m}"
    );
}

#[test]
fn deny_closes_other_protocols_and_never_lets_the_app_speak_first() {
    let (app, accepted) = counting_banner_server();
    let echo = serve(local_listener(), crate::support::echo);
    let quick = ["--detect-silent-window", "100ms", "--detect-timeout", "1s"];
    let banner_proxy =
        inbound_proxy(app, &[&["--inbound-default-policy", "deny"][..], &quick].concat());

    // A silent client of a server-speaks-first app: without the policy the proxy would
    // open the app's connection after 100 ms and relay its banner. Denied, it never does.
    let mut s = TcpStream::connect(banner_proxy.inbound).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let started = Instant::now();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "the app's banner reached a denied client: {got:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "held for {:?}", started.elapsed());
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the app was connected to");

    // Opaque TCP (an opaque port, so no detection) is refused before it reaches the app.
    let port = echo.port().to_string();
    let echo_proxy =
        inbound_proxy(echo, &["--inbound-default-policy", "deny", "--opaque-ports", &port]);
    let mut s = TcpStream::connect(echo_proxy.inbound).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let _ = s.write_all(b"let me in");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "a denied connection was forwarded: {got:?}");

    for (proxy, protocol) in [(&banner_proxy, "opaque"), (&echo_proxy, "opaque")] {
        let m = proxy.metrics();
        let labels = [("srv_kind", "default"), ("srv_name", "deny")];
        assert_eq!(metric(&m, "inbound_tcp_authz_deny_total", &labels), 1.0, "{protocol}: {m}");
        assert_eq!(metric(&m, "inbound_tcp_authz_allow_total", &[]), 0.0, "{m}");
        assert!(proxy.logs().contains("not authorized by the inbound policy"), "{}", proxy.logs());
    }
}

#[test]
fn cluster_policies_trust_the_cluster_networks_and_audit_lets_everyone_in_on_record() {
    let app = http_server(local_listener());
    // Loopback clients are in the cluster only when the cluster networks say so.
    let inside = inbound_proxy(
        app,
        &[
            "--inbound-default-policy",
            "cluster-unauthenticated",
            "--cluster-networks",
            "10.0.0.0/8,127.0.0.0/8",
        ],
    );
    let outside = inbound_proxy(app, &["--inbound-default-policy", "cluster-unauthenticated"]);
    let audit = inbound_proxy(app, &["--inbound-default-policy", "audit"]);
    let default = inbound_proxy(app, &[]);
    for (proxy, want) in [(&inside, "200"), (&outside, "403"), (&audit, "200"), (&default, "200")] {
        let (head, _) = curl(proxy, &["--http1.1"], "/echo");
        assert!(head.starts_with(&format!("HTTP/1.1 {want}")), "{head}\n{}", proxy.logs());
    }
    let allowed = |p: &Proxy, name: &str| {
        metric(
            &p.metrics(),
            "inbound_http_authz_allow_total",
            &[
                ("srv_name", name),
                ("authz_kind", "default"),
                ("authz_name", name),
                ("route_name", "default"),
            ],
        )
    };
    assert_eq!(allowed(&inside, "cluster-unauthenticated"), 1.0);
    assert_eq!(allowed(&audit, "audit"), 1.0);
    assert_eq!(allowed(&default, "all-unauthenticated"), 1.0);
    assert_eq!(metric(&outside.metrics(), "inbound_http_authz_deny_total", &[]), 1.0);
    assert!(audit.logs().contains("allowed by the audit policy"), "{}", audit.logs());
}

#[test]
fn bad_policy_settings_stop_the_proxy_with_a_clear_error() {
    let bin = proxy_bin();
    for (args, want) in [
        (&["--inbound-default-policy", "allow-all"][..], "expected one of all-unauthenticated"),
        (&["--cluster-networks", "10.0.0.1/8"][..], "did you mean 10.0.0.0/8"),
        (&["--inbound-probe-routes", "8080:healthz"][..], "PORT:PATH"),
        (
            &["--inbound-default-policy", "cluster-authenticated", "--cluster-networks", ""][..],
            "cluster networks",
        ),
        (&["--inbound-default-policy", "all-authenticated"][..], "identity is off"),
    ] {
        let (ok, _, err) = run(Command::new(&bin)
            .args(["--inbound-listen-addr", "127.0.0.1:0", "--outbound-listen-addr", "127.0.0.1:0"])
            .args(["--admin-listen-addr", "127.0.0.1:0"])
            .args(args));
        assert!(!ok, "{args:?} was accepted");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
