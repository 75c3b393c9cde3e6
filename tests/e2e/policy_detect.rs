//! The detect timeout of a port's inbound policy (`Detect { timeout }` of the policy API)
//! through a real proxy, served by a policy server of the test's own: it wins over the
//! proxy's `--detect-timeout`, and a server that speaks first is still reached when the
//! policy's timeout is shorter than the silent window.

use std::{
    io::Read,
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use linkerd2_proxy_api::inbound as pb;

use crate::{
    policy_grpc_filters::{FakePolicy, PolicyServer, inbound_proxy, server_policy},
    support::{Proxy, banner, eventually, local_listener, metric, serve},
};

/// A Detect server that everyone may reach, with the policy's detect timeout `timeout`.
fn detect_server(timeout: Duration) -> pb::Server {
    let detect = pb::proxy_protocol::Detect {
        timeout: Some(timeout.try_into().expect("a protobuf duration")),
        http_routes: Vec::new(),
        http_local_rate_limit: None,
    };
    server_policy("web-short-detect", pb::proxy_protocol::Kind::Detect(detect))
}

/// A proxy in front of `app` whose port's policy says a detect timeout of `timeout`, while
/// its own flag says 30 s (and the silent window is the default, 300 ms); once the policy
/// has arrived.
fn proxy_with_policy(app: SocketAddr, timeout: Duration) -> (Proxy, PolicyServer) {
    let server = detect_server(timeout);
    let policy = PolicyServer::start(FakePolicy { port: app.port().into(), server });
    let proxy = inbound_proxy(app, &policy, &["--detect-timeout", "30s"]);
    (proxy, policy)
}

#[test]
fn a_silent_client_is_closed_at_the_policys_detect_timeout_not_the_flags() {
    let app = serve(local_listener(), |s: TcpStream| {
        // Says nothing, reads until the proxy gives up.
        let mut buf = [0u8; 64];
        let _ = (&s).read(&mut buf);
    });
    let (proxy, _policy) = proxy_with_policy(app, Duration::from_millis(200));

    let started = Instant::now();
    let mut s = TcpStream::connect(proxy.inbound).expect("connect");
    // Longer than the test's bound, shorter than the flag's 30 s: a read that times out
    // fails the test below rather than passing as a close.
    s.set_read_timeout(Some(Duration::from_secs(25))).expect("timeout");
    let r = s.read(&mut [0u8; 1]);
    let waited = started.elapsed();
    let timed_out = matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    assert!(matches!(r, Ok(0) | Err(_)) && !timed_out, "closed: {r:?}");
    // Generous: the policy's 200 ms, far from the flag's 30 s.
    assert!(waited < Duration::from_secs(10), "closed after {waited:?}\n{}", proxy.logs());
    assert!(waited >= Duration::from_millis(100), "closed after {waited:?}");
    let errors = [("error", "detect_timeout")];
    let counted = eventually(Duration::from_secs(5), || {
        metric(&proxy.metrics(), "inbound_tcp_errors_total", &errors) == 1.0
    });
    assert!(counted, "{}", proxy.metrics());
}

#[test]
fn a_server_that_speaks_first_is_reached_within_a_policys_short_detect_timeout() {
    // The policy's 200 ms is shorter than the 300 ms silent window: the speculative
    // connection must still be opened in time for the server's greeting.
    let app = serve(local_listener(), banner(b"220 ready\r\n"));
    let (proxy, _policy) = proxy_with_policy(app, Duration::from_millis(200));

    let mut s = TcpStream::connect(proxy.inbound).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut greeting = [0u8; 11];
    s.read_exact(&mut greeting).unwrap_or_else(|e| panic!("the greeting: {e}\n{}", proxy.logs()));
    assert_eq!(&greeting, b"220 ready\r\n");
    let m = proxy.metrics();
    assert_eq!(metric(&m, "inbound_tcp_errors_total", &[("error", "detect_timeout")]), 0.0, "{m}");
}

/// A port whose server declares HTTP/1 is served as HTTP/1, as Linkerd does: bytes that
/// are not HTTP get the proxy's 400 and never reach the app (detected, they would have
/// gone to it as opaque TCP, past the port's HTTP routes); a silent client opens no
/// speculative connection to it, and is served once it sends its request, its silence
/// no detection failure.
#[test]
fn a_port_whose_server_declares_http_is_served_as_http_whatever_comes() {
    use std::{
        io::Write,
        sync::{
            Arc,
            atomic::{AtomicU64, Ordering},
        },
    };
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    let app = serve(local_listener(), move |mut s: TcpStream| {
        count.fetch_add(1, Ordering::SeqCst);
        let _ = s.read(&mut [0u8; 4096]);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
    });
    let http1 = pb::proxy_protocol::Http1 { routes: Vec::new(), local_rate_limit: None };
    let server = server_policy("web-http", pb::proxy_protocol::Kind::Http1(http1));
    let policy = PolicyServer::start(FakePolicy { port: app.port().into(), server });
    // A detect timeout shorter than the client's silence below: only TLS is detected on
    // such a port, so it passes unremarked.
    let proxy = inbound_proxy(app, &policy, &["--detect-timeout", "500ms"]);
    let answer = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got);
        String::from_utf8_lossy(&got).into_owned()
    };

    let mut s = TcpStream::connect(proxy.inbound).expect("connect");
    s.write_all(b"\x00\x01 not http at all\r\n\r\n").expect("write");
    let got = answer(&mut s);
    assert!(got.starts_with("HTTP/1.1 400"), "{got:?}\n{}", proxy.logs());
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the app got bytes that are not HTTP");

    let mut s = TcpStream::connect(proxy.inbound).expect("connect");
    std::thread::sleep(Duration::from_secs(1)); // past the 300 ms silent window
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "a speculative connection to the app");
    s.write_all(b"GET / HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n").expect("write");
    let got = answer(&mut s);
    assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("ok"), "{got:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let m = proxy.metrics();
    assert_eq!(metric(&m, "request_total", &[("direction", "inbound")]), 1.0, "{m}");
    assert_eq!(metric(&m, "inbound_tcp_errors_total", &[("error", "detect_timeout")]), 0.0, "{m}");
}
