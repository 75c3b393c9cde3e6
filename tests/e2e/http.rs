//! The HTTP layer through a proxy pair on loopback, with independent clients and servers:
//! curl, h2load, Python grpcio and websockets; what happened is checked in the proxies'
//! own metrics.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::support::*;

/// A pair in which HTTP/1 travels as HTTP/2 between the proxies.
fn upgraded_pair(backend: SocketAddr, extra: &[&str]) -> (Proxy, Proxy) {
    let mut args = vec!["--outbound-http2-upgrade-targets", "*"];
    args.extend(extra);
    pair(backend, &args)
}

/// A Python peer (tests/e2e/py/peers.py); servers are waited for until they print "ready".
pub(crate) struct Py(Child);

impl Py {
    pub(crate) fn server(cmd: &str, port: u16) -> Py {
        let mut child = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/py/peers.py"))
            .args([cmd, &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 (CI installs grpcio and websockets)");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout).read_line(&mut line).expect("read the server's first line");
        assert_eq!(
            line.trim(),
            "ready",
            "{cmd} did not start (is `pip install grpcio websockets` done?)"
        );
        Py(child)
    }

    fn client(cmd: &str, arg: &str) -> (bool, String, String) {
        run(Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/py/peers.py"))
            .args([cmd, arg]))
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn requests(p: &Proxy, direction: &str) -> f64 {
    metric(&p.metrics(), "request_total", &[("direction", direction)])
}

#[test]
fn h2load_over_http2_and_http1_through_the_pair() {
    let backend = http_server(local_listener());
    let (client, server) = upgraded_pair(backend, &[]);
    let url = format!("http://{}/", client.outbound);
    for (flags, n) in [(&["-c", "4", "-m", "10"][..], 2000), (&["--h1", "-c", "4"][..], 1000)] {
        let (ok, out, err) =
            run(Command::new("h2load").args(["-n", &n.to_string()]).args(flags).arg(&url));
        assert!(ok, "h2load {flags:?}: {out}{err}");
        assert!(
            out.contains(&format!("{n} succeeded, 0 failed, 0 errored")),
            "h2load {flags:?}: {out}"
        );
    }
    assert!(eventually(Duration::from_secs(5), || requests(&client, "outbound") == 3000.0));
    assert_eq!(requests(&server, "inbound"), 3000.0);
    let m = client.metrics();
    assert_eq!(
        metric(&m, "response_total", &[("status_code", "200"), ("classification", "success")]),
        3000.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "response_latency_ms_count", &[("direction", "outbound")]),
        3000.0,
        "{m}"
    );
    // HTTP/1 crossed between the proxies as HTTP/2 on few multiplexed connections.
    let s = server.metrics();
    assert_eq!(
        metric(&s, "tcp_open_total", &[("peer", "src"), ("protocol", "http/1")]),
        0.0,
        "{s}"
    );
    let h2 = metric(&s, "tcp_open_total", &[("peer", "src"), ("protocol", "h2")]);
    assert!((1.0..=2.0).contains(&h2), "{h2} HTTP/2 connections:\n{s}");
}

#[test]
fn curl_http1_and_http2_with_the_app_seeing_the_original_request() {
    let backend = http_server(local_listener());
    let (client, server) = upgraded_pair(backend, &[]);
    let url = format!("http://{}/echo?q=1", client.outbound);
    let (ok, out, err) = run(Command::new("curl").args([
        "-sS",
        "--http1.1",
        "-H",
        "X-Custom: kept",
        "-H",
        "Host: web.test:8080",
        "-H",
        "Keep-Alive: timeout=5",
        &url,
    ]));
    assert!(ok, "{err}");
    // The app behind the inbound proxy sees HTTP/1.1 with the original headers, and
    // nothing of the HTTP/2 hop.
    assert!(out.starts_with("HTTP/1.1 GET /echo?q=1\n"), "{out}");
    assert!(out.contains("x-custom: kept\n"), "{out}");
    assert!(out.contains("host: web.test:8080\n"), "{out}");
    assert!(!out.contains("l5d-orig-proto"), "{out}");
    assert!(!out.contains("keep-alive"), "hop-by-hop header forwarded: {out}");

    // Absolute-form keeps its form to the app.
    let (ok, out, err) = run(Command::new("curl").args([
        "-sS",
        "--http1.1",
        "--proxy",
        &format!("http://{}", client.outbound),
        "http://web.test/echo",
    ]));
    assert!(ok, "{err}");
    assert!(out.starts_with("HTTP/1.1 GET http://web.test/echo\n"), "{out}");

    let (ok, out, err) = run(Command::new("curl").args(["-sS", "--http2-prior-knowledge", &url]));
    assert!(ok, "{err}");
    assert!(out.starts_with("HTTP/2.0 GET"), "{out}");
    let m = server.metrics();
    assert_eq!(metric(&m, "request_total", &[("authority", "web.test:8080")]), 1.0, "{m}");
}

#[test]
fn grpc_unary_and_bidirectional_streaming() {
    let port = free_port();
    let _server = Py::server("grpc-server", port);
    let (client, server) = pair(([127, 0, 0, 1], port).into(), &[]);
    let (ok, out, err) = Py::client("grpc-client", &client.outbound.to_string());
    assert!(ok && out.trim() == "ok", "grpc through the pair: {out}{err}\n{}", client.logs());
    assert!(eventually(Duration::from_secs(5), || requests(&server, "inbound") == 3.0));
    let m = client.metrics();
    assert_eq!(
        metric(&m, "response_total", &[("grpc_status", "0"), ("classification", "success")]),
        2.0,
        "{m}"
    );
    // A gRPC error travels in a 200 response's trailers, and is a failure.
    assert_eq!(
        metric(&m, "response_total", &[("grpc_status", "14"), ("classification", "failure")]),
        1.0,
        "{m}"
    );
}

#[test]
fn websocket_echo_through_the_pair() {
    let port = free_port();
    let _server = Py::server("ws-server", port);
    let (client, _server) = upgraded_pair(([127, 0, 0, 1], port).into(), &[]);
    let (ok, out, err) = Py::client("ws-client", &format!("ws://{}/", client.outbound));
    assert!(ok && out.trim() == "ok", "websocket through the pair: {out}{err}\n{}", client.logs());
    let m = client.metrics();
    assert_eq!(metric(&m, "response_total", &[("status_code", "101")]), 1.0, "{m}");
}

#[test]
fn a_100_mib_chunked_upload_streams_without_buffering() {
    let backend = http_server(local_listener());
    let (client, server) = upgraded_pair(backend, &[]);
    let url = format!("http://{}/upload", client.outbound);
    let cmd = format!(
        "head -c 104857600 /dev/zero | curl -sS --http1.1 -H 'Transfer-Encoding: chunked' -T - {url}"
    );
    let (ok, out, err) = run(Command::new("sh").args(["-c", &cmd]));
    assert!(ok, "{err}");
    assert_eq!(out, "got 104857600 bytes");
    for p in [&client, &server] {
        let peak = peak_rss_bytes(p);
        assert!(peak < 64 << 20, "peak RSS {} MiB while streaming 100 MiB", peak >> 20);
    }
}

fn peak_rss_bytes(p: &Proxy) -> u64 {
    status_bytes(p.pid(), "VmHWM")
}

#[test]
fn an_http2_upload_answered_early_is_read_not_reset() {
    // The proxy answers 502 before reading a word of the upload. curl takes a reset of the
    // stream (even NO_ERROR) while it is still sending as a failure of the request, which
    // before the proxy read the rest most such uploads were.
    let (_reserved, dead) = crate::loopback::refusing_addr();
    let refused = Proxy::start(&["--outbound-orig-dst-addr", &dead.to_string()]);
    let body = std::env::temp_dir().join(format!("weft-early-answer-{}", std::process::id()));
    std::fs::write(&body, vec![7u8; 100 * 1024]).expect("write the upload");
    for _ in 0..20 {
        let (ok, out, err) = run(Command::new("curl")
            .args(["-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg(format!("http://{}/upload", refused.outbound)));
        assert!(ok && out == "502", "{out} {err}");
    }
    let _ = std::fs::remove_file(&body);
}

#[test]
fn failures_become_statuses_with_l5d_proxy_error_and_metrics() {
    // Refused.
    let (_reserved, dead) = crate::loopback::refusing_addr();
    let refused = Proxy::start(&["--outbound-orig-dst-addr", &dead.to_string()]);
    for h2 in [false, true] {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-D", "-", "-o", "/dev/null"]);
        cmd.arg(if h2 { "--http2-prior-knowledge" } else { "--http1.1" });
        let (ok, out, err) = run(cmd.arg(format!("http://{}/", refused.outbound)));
        assert!(ok, "{err}");
        assert!(out.contains(" 502"), "{out}");
        assert!(out.to_ascii_lowercase().contains("l5d-proxy-error: connection refused"), "{out}");
    }
    let m = refused.metrics();
    assert_eq!(
        metric(&m, "outbound_http_errors_total", &[("error", "connect_refused")]),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "response_total", &[("status_code", "502"), ("classification", "failure")]),
        2.0,
        "{m}"
    );

    // No response headers in time. Only the client-side proxy has the short timeout: with
    // it on both, the server side's 504 could reach the client side just as its own timer
    // fires, and which proxy counted the timeout was a race (it failed once in CI).
    let backend = http_server(local_listener());
    let backend = backend.to_string();
    let _server = Proxy::start(&["--inbound-orig-dst-addr", &backend]);
    let inbound = _server.inbound.to_string();
    let client = Proxy::start(&[
        "--outbound-orig-dst-addr",
        &inbound,
        "--http-response-header-timeout",
        "500ms",
    ]);
    let (ok, out, err) = run(Command::new("curl").args([
        "-sS",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("http://{}/slow", client.outbound),
    ]));
    assert!(ok, "{err}");
    assert!(out.contains(" 504"), "{out}");
    assert!(out.to_ascii_lowercase().contains("l5d-proxy-error: response timeout"), "{out}");
    let m = client.metrics();
    assert_eq!(
        metric(&m, "outbound_http_errors_total", &[("error", "response_timeout")]),
        1.0,
        "{m}"
    );

    // Reset mid-body: the client sees the failure (not a clean, short body), and the
    // response is counted as a failure.
    let (ok, _, err) = run(Command::new("curl").args([
        "-sS",
        "--http1.1",
        &format!("http://{}/reset", client.outbound),
    ]));
    assert!(!ok, "curl must see the broken body: {err}");
    let (ok, _, err) = run(Command::new("curl").args([
        "-sS",
        "--http2-prior-knowledge",
        &format!("http://{}/reset", client.outbound),
    ]));
    assert!(!ok, "curl must see the reset stream: {err}");
    assert!(
        eventually(Duration::from_secs(5), || {
            metric(
                &client.metrics(),
                "response_total",
                &[("status_code", "200"), ("classification", "failure")],
            ) == 2.0
        }),
        "{}",
        client.metrics()
    );
}

#[test]
fn the_authority_label_is_capped_under_100_000_distinct_hosts() {
    let backend = http_server(local_listener());
    let (client, _server) = pair(backend, &["--metrics-max-label-values", "100"]);
    let rss_before = client.rss_bytes();
    // Four keep-alive connections, requests pipelined in batches.
    let mut threads = Vec::new();
    for t in 0..4 {
        let addr = client.outbound;
        threads.push(std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
            let mut reader = BufReader::new(s.try_clone().expect("clone"));
            for batch in 0..250 {
                let mut out = String::new();
                for i in 0..100 {
                    out.push_str(&format!("GET / HTTP/1.1\r\nHost: h{t}-{batch}-{i}.test\r\n\r\n"));
                }
                s.write_all(out.as_bytes()).expect("write");
                for _ in 0..100 {
                    read_response(&mut reader);
                }
            }
        }));
    }
    for t in threads {
        t.join().expect("client thread");
    }
    let m = client.metrics();
    let series = m.lines().filter(|l| l.starts_with("request_total{")).count();
    assert!(series <= 101, "{series} request_total series");
    assert_eq!(metric(&m, "request_total", &[]), 100_000.0);
    assert!(metric(&m, "request_total", &[("authority", "overflow")]) >= 99_900.0);
    let rss = client.rss_bytes();
    assert!(
        rss < rss_before + (16 << 20),
        "RSS grew from {} to {} KiB",
        rss_before >> 10,
        rss >> 10
    );
}

#[test]
fn limits_hostile_clients_cannot_pass() {
    let backend = http_server(local_listener());
    let (client, _server) = pair(
        backend,
        &[
            "--http2-max-concurrent-streams",
            "50",
            "--http-max-header-bytes",
            "16384",
            "--http-max-in-flight",
            "2",
        ],
    );
    let addr = client.outbound.to_string();

    // The stream limit is advertised.
    let (ok, out, err) = Py::client("h2-settings", &addr);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l == "3=50"), "SETTINGS_MAX_CONCURRENT_STREAMS: {out}");

    // An HTTP/1 header block past the limit gets 431.
    let big = format!("X-Big: {}", "a".repeat(40_000));
    let (ok, out, err) = run(Command::new("curl").args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--http1.1",
        "-H",
        &big,
        &format!("http://{addr}/"),
    ]));
    assert!(ok, "{err}");
    assert_eq!(out, "431");

    // Rapid reset: the connection is closed long before the client's 5000 streams.
    let (ok, out, err) = Py::client("h2-rapid-reset", &addr);
    assert!(ok, "{err}");
    let goaway = out.split_whitespace().find_map(|kv| kv.strip_prefix("goaway=")).unwrap_or("");
    // ENHANCE_YOUR_CALM (11) is what hyper answers; a plain close also stops it.
    assert!(goaway == "11" || goaway == "None", "{out}");
    let sent: usize = out
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("sent="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(sent < 5000 || goaway == "11", "{out}");

    // CONTINUATION flood: the header block is cut off at the limit, not buffered.
    let (ok, out, err) = Py::client("h2-continuation-flood", &addr);
    assert!(ok, "{err}");
    let sent: usize =
        out.trim().strip_prefix("sent=").and_then(|v| v.parse().ok()).unwrap_or(usize::MAX);
    assert!(sent < 16 << 20, "{out}");
    assert!(client.rss_bytes() < 48 << 20, "RSS {} MiB after the flood", client.rss_bytes() >> 20);

    // In-flight limit: past two slow requests, the rest are shed with 503.
    let url = format!("http://{addr}/slow");
    let curls: Vec<_> = (0..5)
        .map(|_| {
            Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-D", "-", "--http1.1", &url])
                .stdout(Stdio::piped())
                .spawn()
                .expect("curl")
        })
        .collect();
    let outs: Vec<String> = curls
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.wait_with_output().expect("curl").stdout).into_owned())
        .collect();
    let shed = outs
        .iter()
        .filter(|o| {
            o.contains(" 503")
                && o.to_ascii_lowercase()
                    .contains("l5d-proxy-error: in-flight request limit reached")
        })
        .count();
    let served = outs.iter().filter(|o| o.contains(" 200")).count();
    assert_eq!((served, shed), (2, 3), "{outs:?}");

    // Every protection was counted, and the proxy still serves.
    let m = client.metrics();
    assert_eq!(metric(&m, "outbound_http_errors_total", &[("error", "load_shed")]), 3.0, "{m}");
    assert!(
        metric(&m, "outbound_http_errors_total", &[("error", "connection_error")]) >= 2.0,
        "{m}"
    );
    let (ok, out, _) = run(Command::new("curl").args(["-sS", &format!("http://{addr}/")]));
    assert!(ok && out == "hello HTTP/1.1\n", "{out}");
}

#[test]
fn pooled_upstream_connections_are_reused_then_closed_when_idle() {
    let backend = http_server(local_listener());
    let (client, server) = pair(backend, &["--http-pool-idle-timeout", "1s"]);
    let url = format!("http://{}/", client.outbound);
    for _ in 0..20 {
        let (ok, out, err) = run(Command::new("curl").args(["-sS", "--http1.1", &url]));
        assert!(ok && out == "hello HTTP/1.1\n", "{out}{err}");
    }
    // Twenty client connections, one upstream connection on each hop.
    let upstream = |p: &Proxy| {
        metric(&p.metrics(), "tcp_open_total", &[("peer", "dst"), ("protocol", "http/1")])
    };
    assert_eq!(upstream(&client), 1.0, "{}", client.metrics());
    assert_eq!(upstream(&server), 1.0, "{}", server.metrics());
    assert!(
        eventually(Duration::from_secs(10), || {
            metric(&client.metrics(), "tcp_open_connections", &[("peer", "dst")]) == 0.0
                && metric(&server.metrics(), "tcp_open_connections", &[("peer", "dst")]) == 0.0
        }),
        "idle upstream connections were not closed:\n{}",
        client.metrics()
    );
}

#[test]
fn sigterm_closes_idle_keep_alive_connections_without_waiting_for_the_grace_period() {
    let backend = http_server(local_listener());
    let (mut client, _server) = pair(backend, &["--shutdown-grace-period", "60s"]);
    // An HTTP/1.1 keep-alive connection left idle after one request.
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    read_response(&mut reader);
    client.signal(libc::SIGTERM);
    // The proxy closes the idle connection itself (HTTP/1: after the response in
    // flight, here none) instead of holding the drain for the 60 s grace period.
    let status = client.wait_exit(Duration::from_secs(20)).expect("exits once drained");
    assert!(status.success(), "{status:?}");
    let mut rest = Vec::new();
    assert!(matches!(reader.read_to_end(&mut rest), Ok(0) | Err(_)));
}

#[test]
fn connect_switches_to_a_tunnel_after_the_2xx() {
    let backend = http_server(local_listener());
    let (client, _server) = upgraded_pair(backend, &[]);
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    s.write_all(b"CONNECT db.test:5432 HTTP/1.1\r\nHost: db.test:5432\r\n\r\n").expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header");
        if line == "\r\n" {
            break;
        }
    }
    // Bytes that are no HTTP at all go through the tunnel and come back.
    s.write_all(b"\x00\x01tunnelled\xff").expect("write through the tunnel");
    let mut back = [0u8; 12];
    reader.read_exact(&mut back).expect("echo through the tunnel");
    assert_eq!(&back, b"\x00\x01tunnelled\xff");
    let m = client.metrics();
    assert_eq!(metric(&m, "response_total", &[("status_code", "200")]), 1.0, "{m}");
}

#[test]
fn an_http2_connect_tunnels_over_its_stream() {
    let backend = http_server(local_listener());
    let (client, _server) = upgraded_pair(backend, &[]);
    // An independent HTTP/2 client (Python's h2): CONNECT on a stream, then bytes that
    // are no HTTP through it; the upstream leg is an HTTP/1.1 CONNECT.
    let (ok, out, err) = run(Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/py/peers.py"))
        .args(["h2-tunnel", &client.outbound.to_string(), "db.test:5432"]));
    assert!(ok, "{err}");
    // The echo came back whole, and ending the client's side ended the tunnel's.
    assert_eq!(out.trim(), "status=200 echo=000174756e6e656c6c6564ff sent=1 ended=1", "{err}");
    let m = client.metrics();
    assert_eq!(metric(&m, "response_total", &[("status_code", "200")]), 1.0, "{m}");
}

/// What the closing HTTP/2 server saw.
#[derive(Default)]
struct ClosingCounts {
    connections: std::sync::atomic::AtomicU64,
    served: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
}

/// An HTTP/2 server (the h2 crate's, not ours) that refuses with `REFUSED_STREAM` the first
/// request for each path `/r/N` with N a multiple of 7 (each only once, so the outcome does
/// not depend on timing), and closes each connection gracefully (GOAWAY) after
/// `per_connection` streams, as nginx does after `keepalive_requests`.
fn closing_h2_server(per_connection: u64) -> (SocketAddr, std::sync::Arc<ClosingCounts>) {
    use std::sync::{Arc, Mutex, atomic::Ordering::Relaxed};
    let listener = local_listener();
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new(ClosingCounts::default());
    let refused_paths = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    let c = counts.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((io, _)) = listener.accept().await {
                let (c, refused_paths) = (c.clone(), refused_paths.clone());
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(io).await else { return };
                    c.connections.fetch_add(1, Relaxed);
                    let mut streams = 0;
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        streams += 1;
                        let path = req.uri().path().to_string();
                        let n: u64 = path.trim_start_matches("/r/").parse().unwrap_or(1);
                        if n.is_multiple_of(7) && refused_paths.lock().expect("lock").insert(path) {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            c.refused.fetch_add(1, Relaxed);
                        } else if let Ok(mut body) =
                            respond.send_response(Default::default(), false)
                            && body.send_data(bytes::Bytes::from_static(b"ok\n"), true).is_ok()
                        {
                            c.served.fetch_add(1, Relaxed);
                        }
                        if streams == per_connection {
                            conn.graceful_shutdown();
                        }
                    }
                });
            }
        });
    });
    (addr, counts)
}

#[test]
fn a_malformed_request_body_is_the_clients_error_not_the_upstreams() {
    let backend = http_server(local_listener());
    // HTTP/1.1 between the proxies, then HTTP/2 between them.
    for upgrade in [false, true] {
        let extra: &[&str] = if upgrade { &["--outbound-http2-upgrade-targets", "*"] } else { &[] };
        let (client, server) = pair(backend, extra);
        let s = TcpStream::connect(client.outbound).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        // A chunk size with a 0x prefix: hyper's parser refuses it mid-body.
        (&s).write_all(
            b"POST /echo HTTP/1.1\r\nhost: svc.test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0x5\r\nworld\r\n0\r\n\r\n",
        )
        .expect("write");
        let status = read_response(&mut BufReader::new(s));
        assert_eq!(status, 400, "upgrade {upgrade}");
        let m = client.metrics();
        let errors = |e: &str| metric(&m, "outbound_http_errors_total", &[("error", e)]);
        assert_eq!((errors("bad_request"), errors("upstream_error")), (1.0, 0.0), "{m}");
        drop(server);
    }
}

/// An HTTP/2 backend on its own thread that answers every stream with a head (200) and
/// hands the stream's request and body to `then`, which sends the rest on a task of its own.
fn h2_backend(
    then: impl Fn(http::Request<h2::RecvStream>, h2::SendStream<bytes::Bytes>) + Copy + Send + 'static,
) -> SocketAddr {
    let listener = local_listener();
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            while let Ok((io, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(io).await else { return };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        if let Ok(body) = respond.send_response(Default::default(), false) {
                            then(req, body);
                        }
                    }
                });
            }
        });
    });
    addr
}

/// An HTTP/2 backend that answers every stream with a head, half a JSON body, and then
/// RST_STREAM(NO_ERROR) instead of END_STREAM.
fn cutting_h2_server() -> SocketAddr {
    h2_backend(|_, mut body| {
        let _ = body.send_data(bytes::Bytes::from_static(b"{\"items\":[1,2,"), false);
        tokio::spawn(async move {
            // Once the data is out: a reset drops what is still queued.
            tokio::time::sleep(Duration::from_millis(100)).await;
            body.send_reset(h2::Reason::NO_ERROR);
        });
    })
}

#[test]
fn a_response_cut_by_a_no_error_reset_reaches_the_client_as_cut() {
    let backend = cutting_h2_server();
    let (client, server) = pair(backend, &[]);
    // HTTP/2 through the pair: curl sees the stream end without END_STREAM.
    let url = format!("http://{}/items", client.outbound);
    let (ok, out, err) =
        run(Command::new("curl").args(["-sS", "--http2-prior-knowledge", "-m", "10", &url]));
    assert!(!ok, "curl took a cut body as whole: {out:?}");
    assert!(err.contains("stream") || err.contains("HTTP/2"), "{err}");
    for (p, direction) in [(&client, "outbound"), (&server, "inbound")] {
        let m = p.metrics();
        let labels = [("direction", direction), ("classification", "success")];
        assert_eq!(metric(&m, "response_total", &labels), 0.0, "{m}");
    }
}

/// The proxy's log lines about resending refused streams, and its warnings: each give-up
/// with the ten resends before it, which is what a failure of the test below needs to be
/// understood (it failed twice in CI, never locally).
fn resend_log(logs: &str) -> String {
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("giving up") || l.contains("sending it"))
        .collect();
    let mut shown = std::collections::BTreeSet::new();
    for (i, _) in lines.iter().enumerate().filter(|(_, l)| !l.contains("sending it")) {
        shown.extend(i.saturating_sub(10)..=i);
    }
    shown.into_iter().take(200).map(|i| lines[i]).collect::<Vec<_>>().join("\n")
}

#[test]
fn streams_an_http2_upstream_refused_unprocessed_are_sent_again() {
    use std::sync::atomic::Ordering::Relaxed;
    let (upstream, counts) = closing_h2_server(500);
    let upstream = upstream.to_string();
    let proxy = Proxy::start(&["--outbound-orig-dst-addr", &upstream]);
    let n = 4000;
    let uris = std::env::temp_dir().join(format!("weft-e2e-uris-{}", std::process::id()));
    let list: String = (0..n).map(|i| format!("http://{}/r/{i}\n", proxy.outbound)).collect();
    std::fs::write(&uris, list).expect("uri list");
    let (ok, out, err) = run(Command::new("h2load")
        .args(["-n", &n.to_string(), "-c", "4", "-m", "16", "-i"])
        .arg(&uris));
    let _ = std::fs::remove_file(&uris);
    assert!(ok, "h2load: {out}{err}");
    // Every request succeeded although the upstream refused streams and closed its
    // connections every 500 streams with requests in flight.
    assert!(
        out.contains(&format!("{n} succeeded, 0 failed, 0 errored")),
        "h2load: {out}\nproxy: {}",
        resend_log(&proxy.logs())
    );
    assert_eq!(counts.served.load(Relaxed), n, "each request was served once");
    // Each of h2load's 4 clients walks the list from its start: paths /r/0 to /r/999.
    assert_eq!(counts.refused.load(Relaxed), (n / 4).div_ceil(7), "every 7th path refused once");
    assert!(counts.connections.load(Relaxed) >= n / 500, "the upstream closed its connections");
    let m = proxy.metrics();
    assert_eq!(
        metric(&m, "response_total", &[("status_code", "200"), ("classification", "success")]),
        n as f64,
        "{m}"
    );
}

/// How the stalling backends below answer: a head and a first piece of the body; then,
/// for `/stall`, nothing more (the connection stays up, and an HTTP/2 one answers pings),
/// for `/drip`, ten more pieces 400 ms apart and the end.
const PIECE: &[u8] = b"piece\n";
const DRIPS: usize = 10;
const DRIP_EVERY: Duration = Duration::from_millis(400);

/// The stalling backend in HTTP/1.1 (chunked), a thread per connection.
fn stalling_h1_server() -> SocketAddr {
    let listener = local_listener();
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let drip = line.starts_with("GET /drip ");
                    // The rest of the head.
                    while reader.read_line(&mut line).unwrap_or(0) > 2 {}
                    let chunk = |data: &[u8]| {
                        let mut c = format!("{:x}\r\n", data.len()).into_bytes();
                        c.extend_from_slice(data);
                        c.extend_from_slice(b"\r\n");
                        c
                    };
                    let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
                    let _ = conn.write_all(&[&head[..], &chunk(PIECE)].concat());
                    if !drip {
                        // Held, never ended, until the client goes.
                        let _ = reader.read_to_end(&mut Vec::new());
                        return;
                    }
                    for _ in 0..DRIPS {
                        std::thread::sleep(DRIP_EVERY);
                        let _ = conn.write_all(&chunk(PIECE));
                    }
                    let _ = conn.write_all(b"0\r\n\r\n");
                }
            });
        }
    });
    addr
}

/// The stalling backend in HTTP/2.
fn stalling_h2_server() -> SocketAddr {
    h2_backend(|req, mut body| {
        let piece = bytes::Bytes::from_static(PIECE);
        let _ = body.send_data(piece.clone(), false);
        let drip = req.uri().path() == "/drip";
        tokio::spawn(async move {
            if !drip {
                // Held, never ended, until the client goes.
                let _ = std::future::poll_fn(|cx| body.poll_reset(cx)).await;
                return;
            }
            for _ in 0..DRIPS {
                tokio::time::sleep(DRIP_EVERY).await;
                let _ = body.send_data(piece.clone(), false);
            }
            let _ = body.send_data(bytes::Bytes::new(), true);
        });
    })
}

#[test]
fn a_response_body_the_upstream_stalls_is_cut_after_the_stream_idle_timeout() {
    for h2 in [false, true] {
        let backend = if h2 { stalling_h2_server() } else { stalling_h1_server() };
        let backend = backend.to_string();
        // Only the client-side proxy has the short timeout, so that it is the one that cuts.
        let server = Proxy::start(&["--inbound-orig-dst-addr", &backend]);
        let inbound = server.inbound.to_string();
        let client = Proxy::start(&[
            "--outbound-orig-dst-addr",
            &inbound,
            "--http-stream-idle-timeout",
            "1s",
        ]);
        let curl = |path: &str| {
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "-m", "30"]);
            cmd.arg(if h2 { "--http2-prior-knowledge" } else { "--http1.1" });
            let out = cmd.arg(format!("http://{}{path}", client.outbound)).output().expect("curl");
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), err)
        };
        // A body whose pieces come more often than the timeout, for longer, is whole.
        let (code, body, err) = curl("/drip");
        assert_eq!(code, Some(0), "h2 {h2}: {err}");
        assert_eq!(body, "piece\n".repeat(DRIPS + 1), "h2 {h2}");
        // A stalled one is cut: curl fails, and not on its own 30 s limit (28).
        let (code, body, err) = curl("/stall");
        assert!(!matches!(code, Some(0) | Some(28)), "h2 {h2}: {code:?} {err}");
        assert_eq!(body, "piece\n", "h2 {h2}: what came before the stall is passed on");
        let m = client.metrics();
        let errors = |e: &str| metric(&m, "outbound_http_errors_total", &[("error", e)]);
        assert_eq!(errors("stream_idle_timeout"), 1.0, "h2 {h2}: {m}");
        for (class, n) in [("success", 1.0), ("failure", 1.0)] {
            let labels = [("direction", "outbound"), ("classification", class)];
            assert_eq!(metric(&m, "response_total", &labels), n, "h2 {h2}: {m}");
        }
    }
}

/// A client that stops sending its request's body is cut by the same limit: the upstream
/// sees its request end unfinished instead of holding its stream forever, and the client
/// gets a 408, counted once — whether the upstream is HTTP/1 or, between proxies, HTTP/2
/// (whose stream the proxy resets).
#[test]
fn a_request_body_the_client_stalls_is_cut_after_the_stream_idle_timeout() {
    use std::io::{Read, Write};
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let backend = serve(local_listener(), move |mut s: std::net::TcpStream| {
        let (mut got, mut buf) = (Vec::new(), [0u8; 4096]);
        while let Ok(n @ 1..) = s.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
            if got.ends_with(b"0\r\n\r\n") {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
                break;
            }
        }
        let _ = tx.send(got);
    });
    let idle = ["--http-stream-idle-timeout", "1s"];
    let backend = backend.to_string();
    let alone = Proxy::start(&[&["--outbound-orig-dst-addr", &backend][..], &idle].concat());
    let (client, _server) = pair(
        backend.parse().expect("addr"),
        &[&idle[..], &["--outbound-http2-upgrade-targets", "*"]].concat(),
    );
    for (p, between) in [(&alone, "HTTP/1"), (&client, "HTTP/2")] {
        let mut client = std::net::TcpStream::connect(p.outbound).expect("connect");
        let head = b"POST /upload HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n";
        client.write_all(&[&head[..], b"5\r\nhello\r\n"].concat()).expect("write");
        // The client now sends nothing more, and keeps its connection open.
        let got = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{between}: the upstream's request never ended"));
        let got = String::from_utf8_lossy(&got);
        assert!(got.contains("hello") && !got.ends_with("0\r\n\r\n"), "{between}: {got:?}");
        client.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let mut answer = Vec::new();
        let _ = client.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{between}: {answer:?}\n{}", p.logs());
        let m = p.metrics();
        let errors = |e: &str| metric(&m, "outbound_http_errors_total", &[("error", e)]);
        let counted = (errors("stream_idle_timeout"), errors("bad_request"));
        assert_eq!(counted, (1.0, 0.0), "{between}: {m}");
    }
}

/// The proxy keeps the client's protocol: an HTTP/2 request to an app that speaks only
/// HTTP/1 (Python's http.server, which answers the preface with a bare error page) fails,
/// as it would without the proxy, with a 502 that says why rather than h2's "frame with
/// invalid size"; HTTP/1.1 to it is served.
#[test]
fn an_http2_request_to_an_app_that_speaks_only_http1_gets_a_502_that_says_so() {
    let port = free_port();
    let _app = Py::server("http1-server", port);
    let app = format!("127.0.0.1:{port}");
    let p = Proxy::start(&["--outbound-orig-dst-addr", &app]);
    let url = format!("http://{}/", p.outbound);
    let (ok, out, err) =
        run(Command::new("curl").args(["-sS", "-i", "--http2-prior-knowledge", &url]));
    assert!(ok, "{err}");
    assert!(out.starts_with("HTTP/2 502"), "{out}\n{}", p.logs());
    assert!(
        out.contains("l5d-proxy-error: the upstream does not speak HTTP/2, which the request came in: its first bytes were not HTTP/2's"),
        "{out}\n{}",
        p.logs()
    );
    let (ok, out, err) = run(Command::new("curl").args(["-sS", "--http1.1", &url]));
    assert!(ok && out == "http/1 only\n", "{out}{err}");
    let m = p.metrics();
    let errors = metric(&m, "outbound_http_errors_total", &[("error", "upstream_error")]);
    assert_eq!(errors, 1.0, "{m}");
}

#[test]
fn an_http2_header_value_padded_with_whitespace_is_a_bad_request() {
    let backend = http_server(local_listener());
    let (client, server) = pair(backend, &[]);
    // Python's h2, told not to check or trim what it sends.
    let (ok, out, err) = Py::client("h2-padded-header", &client.outbound.to_string());
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "status=400", "{err}");
    let m = client.metrics();
    let errors = |e: &str| metric(&m, "outbound_http_errors_total", &[("error", e)]);
    assert_eq!(errors("bad_request"), 1.0, "{m}");
    // Not forwarded.
    let m = server.metrics();
    assert_eq!(metric(&m, "request_total", &[("direction", "inbound")]), 0.0, "{m}");
}
