//! The transport core on loopback, without root: a client-side and a server-side
//! `weft-proxy` wired with the fixed orig-dst overrides, real clients (curl, openssl) and
//! real backends; what happened is read from the proxies' own metrics.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use crate::support::*;

fn opened(p: &Proxy, direction: &str, protocol: &str) -> f64 {
    metric(
        &p.metrics(),
        "tcp_open_total",
        &[("direction", direction), ("peer", "src"), ("protocol", protocol)],
    )
}

#[test]
fn curl_http1_and_http2_are_detected_and_forwarded() {
    let backend = http_server(local_listener());
    let (client, server) = pair(backend, &[]);
    let url = format!("http://{}/", client.outbound);
    let (ok, out, err) = run(Command::new("curl").args(["-sS", "--http1.1", &url]));
    assert!(ok && out == "hello HTTP/1.1\n", "curl --http1.1: {out} {err}");
    let (ok, out, err) = run(Command::new("curl").args(["-sS", "--http2-prior-knowledge", &url]));
    assert!(ok && out == "hello HTTP/2.0\n", "curl --http2-prior-knowledge: {out} {err}");

    let backend_addr = backend.to_string();
    assert!(eventually(Duration::from_secs(5), || {
        opened(&client, "outbound", "http/1") == 1.0
            && opened(&client, "outbound", "h2") == 1.0
            && opened(&server, "inbound", "http/1") == 1.0
            && opened(&server, "inbound", "h2") == 1.0
    }));
    let m = server.metrics();
    assert_eq!(
        metric(&m, "tcp_open_total", &[("direction", "inbound"), ("target_addr", &backend_addr)]),
        4.0,
        "{m}"
    );
    // Bytes were counted both ways, on both the client and the upstream side.
    assert!(metric(&m, "tcp_read_bytes_total", &[("peer", "src")]) > 0.0, "{m}");
    assert!(metric(&m, "tcp_write_bytes_total", &[("peer", "src")]) > 0.0, "{m}");
    assert!(metric(&m, "tcp_read_bytes_total", &[("peer", "dst")]) > 0.0, "{m}");
    // curl's connections are closed; the upstream ones stay pooled for reuse.
    assert!(eventually(Duration::from_secs(5), || {
        metric(&client.metrics(), "tcp_open_connections", &[("peer", "src")]) == 0.0
    }));
}

#[test]
fn openssl_tls_is_detected_and_passed_through_untouched() {
    let dir = std::env::temp_dir().join(format!("weft-e2e-tls-{}", std::process::id()));
    let (key, cert) = app_tls_cert(&dir);
    let port = local_listener().local_addr().expect("addr").port();
    let mut server = Command::new("openssl")
        .args(["s_server", "-quiet", "-accept", &port.to_string(), "-key"])
        .arg(&key)
        .arg("-cert")
        .arg(&cert)
        .args(["-www"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let backend: SocketAddr = ([127, 0, 0, 1], port).into();
    assert!(eventually(Duration::from_secs(10), || TcpStream::connect(backend).is_ok()));
    let (client, proxied) = pair(backend, &[]);
    // The app's own TLS goes end to end: curl verifies the backend's own certificate
    // through the proxies, so nothing in between terminated or altered it.
    let resolve = format!("app.test:{}:127.0.0.1", client.outbound.port());
    let url = format!("https://app.test:{}/", client.outbound.port());
    let (ok, out, err) = run(Command::new("curl").args(["-sS", "--cacert"]).arg(&cert).args([
        "--resolve",
        &resolve,
        &url,
    ]));
    let _ = server.kill();
    let _ = server.wait();
    assert!(ok && out.contains("s_server"), "curl through the pair: {err}\n{}", client.logs());
    assert!(eventually(Duration::from_secs(5), || opened(&client, "outbound", "tls") == 1.0
        && opened(&proxied, "inbound", "tls") == 1.0));
    assert!(client.logs().contains("app.test"), "the SNI is logged: {}", client.logs());
}

#[test]
fn opaque_ports_skip_detection() {
    let backend = serve(local_listener(), echo);
    // Every port is opaque: the client-side proxy's target is the server-side proxy's
    // inbound port, the server-side proxy's the backend's.
    let (client, server) = pair(backend, &["--opaque-ports", "1-65535"]);
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    // Bytes that detection would call HTTP/1.
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(req).expect("write");
    let mut back = vec![0; req.len()];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(&back, req);
    assert!(eventually(Duration::from_secs(5), || opened(&client, "outbound", "opaque") == 1.0
        && opened(&server, "inbound", "opaque") == 1.0));
    assert_eq!(opened(&client, "outbound", "http/1"), 0.0);
}

#[test]
fn a_server_that_speaks_first_is_not_stalled() {
    const BANNER: &[u8] = b"220 mail.test ESMTP\r\n";
    let backend = serve(local_listener(), banner(BANNER));
    // Port not marked opaque; the detect timeout is far longer than what we allow.
    let (client, server) =
        pair(backend, &["--detect-silent-window", "200ms", "--detect-timeout", "30s"]);
    let started = Instant::now();
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut got = vec![0; BANNER.len()];
    s.read_exact(&mut got).expect("the banner arrives");
    let waited = started.elapsed();
    assert_eq!(got, BANNER);
    // Two silent windows (one per proxy) plus a wide margin; without the speculative
    // connect the banner would wait for the 30 s detect timeout.
    assert!(waited < Duration::from_secs(3), "banner took {waited:?}");
    // The client can still talk after the banner.
    s.write_all(b"EHLO client\r\n").expect("write");
    let mut echo = [0u8; 13];
    s.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"EHLO client\r\n");
    assert!(eventually(Duration::from_secs(5), || opened(&server, "inbound", "opaque") == 1.0));
}

#[test]
fn a_slow_http_client_is_still_detected_after_the_silent_window() {
    let backend = http_server(local_listener());
    let (client, _server) = pair(backend, &["--detect-silent-window", "100ms"]);
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    std::thread::sleep(Duration::from_millis(400));
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").expect("write");
    let mut rsp = String::new();
    s.read_to_string(&mut rsp).expect("response");
    assert!(rsp.starts_with("HTTP/1.1 200") && rsp.ends_with("hello HTTP/1.1\n"), "{rsp}");
    assert!(eventually(Duration::from_secs(5), || opened(&client, "outbound", "http/1") == 1.0));
}

#[test]
fn half_close_is_preserved() {
    let backend = serve(local_listener(), count_then_reply);
    let (client, _server) = pair(backend, &[]);
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    let payload = vec![7u8; 300_000];
    s.write_all(&payload).expect("write");
    s.shutdown(Shutdown::Write).expect("shutdown write");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut rsp = String::new();
    s.read_to_string(&mut rsp).expect("read the rest after our half-close");
    assert_eq!(rsp, "got 300000 bytes");
}

#[test]
fn garbage_is_forwarded_as_opaque() {
    let backend = serve(local_listener(), echo);
    let (client, _server) = pair(backend, &[]);
    let mut x: u32 = 12345;
    let garbage: Vec<u8> = (0..5000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    s.write_all(&garbage).expect("write");
    let mut back = vec![0; garbage.len()];
    s.read_exact(&mut back).expect("echo");
    assert_eq!(back, garbage);
}

#[test]
fn slow_truncated_bytes_hit_the_detect_timeout_and_are_not_lost() {
    let backend = serve(local_listener(), echo);
    let (client, _server) = pair(backend, &["--detect-timeout", "1s"]);
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    // A request line that never ends: detection cannot decide.
    s.write_all(b"GET /slo").expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut back = [0u8; 8];
    s.read_exact(&mut back).expect("the bytes come back once forwarded as opaque");
    assert_eq!(&back, b"GET /slo");
    let m = client.metrics();
    assert_eq!(metric(&m, "outbound_tcp_errors_total", &[("error", "detect_timeout")]), 1.0, "{m}");

    // The start of a TLS ClientHello that never comes whole: closed, never forwarded (it
    // might be one for the proxy's own name), as linkerd2-proxy does.
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    s.write_all(&[22, 3, 1]).expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 8];
    let r = s.read(&mut buf);
    assert!(matches!(r, Ok(0) | Err(_)), "closed, not echoed: {r:?} {buf:?}");
    let m = client.metrics();
    assert_eq!(metric(&m, "outbound_tcp_errors_total", &[("error", "detect_timeout")]), 2.0, "{m}");
}

#[test]
fn silent_clients_of_a_silent_server_are_closed_at_the_detect_timeout() {
    let backend = serve(local_listener(), |s: TcpStream| {
        // Says nothing, reads until the proxy gives up.
        let mut buf = [0u8; 64];
        let _ = (&s).read(&mut buf);
    });
    let (client, _server) =
        pair(backend, &["--detect-silent-window", "50ms", "--detect-timeout", "1s"]);
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 1];
    let r = s.read(&mut buf);
    assert!(matches!(r, Ok(0) | Err(_)), "closed: {r:?}");
    let m = client.metrics();
    assert_eq!(metric(&m, "outbound_tcp_errors_total", &[("error", "detect_timeout")]), 1.0, "{m}");
}

#[test]
fn refused_and_reset_upstreams_end_in_a_closed_connection_and_a_metric() {
    // Refused: nothing listens on the target (a bound socket that never listens keeps the
    // port from being reused by a parallel test). Opaque TCP: the client's connection is closed.
    let (_reserved, dead) = refusing_addr();
    let refused = Proxy::start(&["--outbound-orig-dst-addr", &dead.to_string()]);
    let mut s = TcpStream::connect(refused.outbound).expect("connect");
    s.write_all(b"\x00opaque bytes").expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 16];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    let m = refused.metrics();
    assert_eq!(
        metric(&m, "outbound_tcp_errors_total", &[("error", "connect_refused")]),
        1.0,
        "{m}"
    );
    // The log line may land a moment after the metric is counted.
    assert!(
        eventually(Duration::from_secs(5), || refused.logs().contains("refused")),
        "{}",
        refused.logs()
    );
    // HTTP: the client gets a 502 saying why.
    let mut s = TcpStream::connect(refused.outbound).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").expect("write");
    let mut rsp = String::new();
    s.read_to_string(&mut rsp).expect("a response");
    assert!(rsp.starts_with("HTTP/1.1 502"), "{rsp}");
    assert!(rsp.to_ascii_lowercase().contains("l5d-proxy-error: connection refused"), "{rsp}");
    let m = refused.metrics();
    assert_eq!(
        metric(&m, "outbound_http_errors_total", &[("error", "connect_refused")]),
        1.0,
        "{m}"
    );

    // Reset mid-stream: the backend reads a little and resets; the client sees a reset
    // (or at least a close), and the close is counted with its errno.
    let backend = serve(local_listener(), |mut s: TcpStream| {
        let mut buf = [0u8; 4];
        let _ = s.read_exact(&mut buf);
        // Dropped right after: closed with RST, no FIN first.
        let _ = set_reset_on_close(&s);
    });
    let (client, _server) = pair(backend, &["--opaque-ports", "1-65535"]);
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    s.write_all(b"ping").expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    assert!(
        eventually(Duration::from_secs(5), || {
            // A reset read (ECONNRESET), or one hit while writing (EPIPE).
            let m = client.metrics();
            metric(&m, "tcp_close_total", &[("errno", "ECONNRESET")])
                + metric(&m, "tcp_close_total", &[("errno", "EPIPE")])
                >= 1.0
        }),
        "{}",
        client.metrics()
    );
}

/// Makes closing `s` send RST (SO_LINGER 0).
fn set_reset_on_close(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket fd and a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn a_connection_to_the_proxy_itself_is_refused_not_looped() {
    let p = Proxy::start(&["--outbound-orig-dst-addr", "127.0.0.1:1"]);
    // A second proxy whose outbound target is its own outbound listener is impossible to
    // configure before binding, so point the first one's target at itself via a restart:
    let own = p.outbound.to_string();
    drop(p);
    let p = Proxy::start(&["--outbound-listen-addr", &own, "--outbound-orig-dst-addr", &own]);
    let mut s = TcpStream::connect(p.outbound).expect("connect");
    // The proxy may refuse (reset) the connection before these bytes are written.
    let _ = s.write_all(b"hello");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 8];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    let m = p.metrics();
    assert_eq!(metric(&m, "outbound_tcp_errors_total", &[("error", "loop")]), 1.0, "{m}");
    assert_eq!(metric(&m, "tcp_open_total", &[]), 0.0, "{m}");
    // The log is read from the proxy's stderr by another thread: it may trail the metric.
    let logged = eventually(Duration::from_secs(5), || p.logs().contains("own listener"));
    assert!(logged, "{}", p.logs());
}

#[test]
fn an_idle_proxy_holds_little_memory_of_its_own() {
    // Its own memory is the anonymous part of its RSS (this test binary's debug proxy maps
    // a large file besides). The allocator must give it in small pages: an allocator that
    // asks for transparent huge pages rounds an idle heap up to 2 MiB pages, several MiB.
    let backend = http_server(local_listener());
    let (client, server) = pair(backend, &[]);
    let url = format!("http://{}/", client.outbound);
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let (ok, out, err) = run(Command::new("curl").args(["-sS", version, &url]));
        assert!(ok && out.starts_with("hello"), "curl {version}: {out} {err}");
    }
    std::thread::sleep(Duration::from_millis(500));
    for p in [&client, &server] {
        let anon = status_bytes(p.pid(), "RssAnon");
        assert!(anon > 0, "no RssAnon in /proc/{}/status", p.pid());
        assert!(anon < 4 << 20, "an idle proxy holds {} KiB of anonymous memory", anon >> 10);
    }
}

#[test]
fn a_thousand_silent_connections_stay_bounded_and_others_are_served() {
    let backend = serve(local_listener(), echo);
    let (client, server) =
        pair(backend, &["--detect-silent-window", "100ms", "--detect-timeout", "60s"]);
    let idle_rss = client.rss_bytes();
    let silent: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(client.outbound).expect("connect a silent client"))
        .collect();
    // Past the silent window every one has a speculative upstream through the pair, so
    // both proxies hold 1000 connections waiting for someone to speak.
    let detecting = |p: &Proxy| metric(&p.metrics(), "tcp_detecting_connections", &[]);
    assert!(
        eventually(Duration::from_secs(20), || {
            detecting(&client) == 1000.0 && detecting(&server) == 1000.0
        }),
        "client: {}\nserver: {}",
        client.metrics(),
        server.metrics()
    );
    for p in [&client, &server] {
        let rss = p.rss_bytes();
        assert!(rss < 48 << 20, "RSS with 1000 silent connections: {} MiB", rss >> 20);
    }
    eprintln!(
        "client proxy RSS: idle {} KiB, with 1000 silent connections {} KiB",
        idle_rss >> 10,
        client.rss_bytes() >> 10
    );
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    s.write_all(b"\x00still served").expect("write");
    let mut back = [0u8; 13];
    s.read_exact(&mut back).expect("served");
    assert_eq!(&back, b"\x00still served");
    drop(silent);
}

#[test]
fn sigterm_drains_open_connections_then_exits_zero() {
    let backend = serve(local_listener(), echo);
    let (mut client, _server) = pair(backend, &["--shutdown-grace-period", "20s"]);
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    s.write_all(b"\x00before").expect("write");
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).expect("echo");
    client.signal(libc::SIGTERM);
    // New connections are refused once the listener is closed...
    assert!(eventually(Duration::from_secs(5), || TcpStream::connect(client.outbound).is_err()));
    // ...while the open one keeps working until it finishes.
    s.write_all(b"\x00during").expect("write during the drain");
    s.read_exact(&mut buf).expect("echo during the drain");
    assert_eq!(&buf, b"\x00during");
    assert!(
        client.wait_exit(Duration::from_millis(300)).is_none(),
        "exited before the connection closed"
    );
    drop(s);
    let status = client.wait_exit(Duration::from_secs(10)).expect("exits once drained");
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_grace_period_bounds_the_drain() {
    let backend = serve(local_listener(), echo);
    let (mut client, _server) = pair(backend, &["--shutdown-grace-period", "1s"]);
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    s.write_all(b"\x00idle").expect("write");
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).expect("echo");
    client.signal(libc::SIGINT);
    // SIGINT drains as SIGTERM does: the open connection still works for now...
    s.write_all(b"\x00wait").expect("write during the drain");
    s.read_exact(&mut buf).expect("echo during the drain");
    assert_eq!(&buf, b"\x00wait");
    assert!(client.wait_exit(Duration::from_millis(300)).is_none(), "exited without draining");
    // ...but it is still open when the grace period ends, and the proxy exits anyway.
    let status = client.wait_exit(Duration::from_secs(10)).expect("exits after the grace period");
    assert!(status.success(), "{status:?}");
    drop(s);
}

#[test]
fn admin_endpoints() {
    let mut p = Proxy::start(&[]);
    assert_eq!(admin_request(p.admin, "GET", "/live", ""), (200, "live\n".into()));
    assert_eq!(admin_request(p.admin, "GET", "/ready", ""), (200, "ready\n".into()));
    let m = p.metrics();
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            m.contains(&format!("\n{name} ")) || m.starts_with(&format!("{name} ")),
            "{name} in {m}"
        );
    }
    // Linkerd's build info: what this binary was built from, as `--version` says it too.
    let build = weft_proxy::metrics::BUILD_INFO;
    let want = format!(
        "proxy_build_info{{date=\"{}\",git_sha=\"{}\",profile=\"{}\",vendor=\"weft\",version=\"{}\"}} 1\n",
        build.date, build.git_sha, build.profile, build.version
    );
    assert!(m.contains(&want), "{want} in {m}");
    // Gzipped for a scraper that asks, as Prometheus does; curl decodes it (an independent
    // gunzip), and what it decodes is the page, not a fragment.
    let url = format!("http://{}/metrics", p.admin);
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sS", "-D", "-", "--max-time", "10"])
            .args(args)
            .arg(&url)
            .output();
        let out = out.expect("curl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let end = out.stdout.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
        (String::from_utf8_lossy(&out.stdout[..end]).to_lowercase(), out.stdout[end..].to_vec())
    };
    let (head, page) = curl(&["--compressed"]);
    assert!(head.contains("content-encoding: gzip\r\n"), "{head}");
    let page = String::from_utf8(page).expect("text");
    assert!(page.contains(&want) && page.contains("\nprocess_open_fds "), "{page}");
    let (_, raw) = curl(&["-H", "Accept-Encoding: gzip"]);
    assert_eq!(raw.get(..2), Some(&[0x1f, 0x8b][..]), "gzip's magic");
    assert!(raw.len() < page.len(), "{} bytes gzipped, {} plain", raw.len(), page.len());
    for refused in ["gzip;q=0", "identity", "br, *;q=0"] {
        let (head, page) = curl(&["-H", &format!("Accept-Encoding: {refused}")]);
        assert!(!head.contains("content-encoding"), "{refused}: {head}");
        assert!(String::from_utf8_lossy(&page).contains(&want), "{refused}");
    }
    let out = std::process::Command::new(crate::netns::proxy_bin())
        .arg("--version")
        .output()
        .expect("weft-proxy --version");
    let version = String::from_utf8_lossy(&out.stdout);
    assert_eq!(version.trim(), format!("weft-proxy {}", build.long_version()));
    assert!(version.contains(&format!("(git {},", build.git_sha)), "{version}");
    assert_eq!(admin_request(p.admin, "GET", "/nope", "").0, 404);
    assert_eq!(admin_request(p.admin, "GET", "/shutdown", "").0, 405);

    let (code, level) = admin_request(p.admin, "GET", "/proxy-log-level", "");
    assert_eq!(code, 200);
    assert!(level.contains("weft_proxy=debug") && level.contains("info"), "{level}");
    let (code, body) = admin_request(p.admin, "PUT", "/proxy-log-level", "weft_proxy=[[");
    assert_eq!(code, 400, "{body}");
    let (code, _) = admin_request(p.admin, "PUT", "/proxy-log-level", "warn");
    assert_eq!(code, 200);
    assert_eq!(admin_request(p.admin, "GET", "/proxy-log-level", "").1.trim(), "warn");
    let big = "x".repeat(100_000);
    assert_eq!(admin_request(p.admin, "PUT", "/proxy-log-level", &big).0, 413);

    assert_eq!(admin_request(p.admin, "POST", "/shutdown", ""), (200, "shutdown\n".into()));
    let status = p.wait_exit(Duration::from_secs(10)).expect("exits after POST /shutdown");
    assert!(status.success());
}

#[test]
fn bad_flags_are_refused_with_a_clear_message() {
    for (flag, value, want) in [
        ("--opaque-ports", "0", "not a port"),
        ("--opaque-ports", "9-1", "backwards"),
        ("--detect-timeout", "10 parsecs", "duration"),
        ("--inbound-listen-addr", "nowhere", "invalid socket address"),
        ("--log", "weft_proxy=[[", "not a valid filter"),
        ("--detect-timeout", "9000h", "longer than a year"),
        ("--cores", "100000", "not in 0..=1024"),
    ] {
        let (ok, _, err) = run(Command::new(crate::netns::proxy_bin()).args([flag, value]));
        assert!(!ok, "{flag} {value} accepted");
        assert!(err.contains(want), "{flag} {value}: {err}");
    }
    // Settings that contradict each other: refused at start, before anything is bound.
    let (ok, _, err) = run(Command::new(crate::netns::proxy_bin()).args([
        "--failure-accrual-min-backoff",
        "2m",
        "--failure-accrual-max-backoff",
        "1m",
    ]));
    assert!(!ok && err.contains("is longer than WEFT_PROXY_FAILURE_ACCRUAL_MAX_BACKOFF"), "{err}");
    // The same through the environment.
    let (ok, _, err) =
        run(Command::new(crate::netns::proxy_bin()).env("WEFT_PROXY_OPAQUE_PORTS", "http"));
    assert!(!ok && err.contains("not a port"), "{err}");
}

#[test]
fn an_upstream_that_never_answers_hits_the_connect_timeout() {
    // A listener whose accept queue is full and never drained: the kernel drops further
    // SYNs, so a connect to it hangs like one to a host that is down.
    let full = {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
        socket.listen(0).expect("listen");
        std::net::TcpListener::from(socket)
    };
    let target = full.local_addr().expect("addr");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = TcpStream::connect_timeout(&target, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    let p = Proxy::start(&[
        "--outbound-orig-dst-addr",
        &target.to_string(),
        "--connect-timeout",
        "500ms",
    ]);
    let mut s = TcpStream::connect(p.outbound).expect("connect");
    s.write_all(b"\x00hello").expect("write");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 8];
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    assert!(started.elapsed() < Duration::from_secs(8), "closed within its timeout");
    let m = p.metrics();
    assert_eq!(
        metric(&m, "outbound_tcp_errors_total", &[("error", "connect_timeout")]),
        1.0,
        "{m}"
    );
    assert!(p.logs().contains("timed out"), "{}", p.logs());
    drop(fillers);
}

#[test]
fn a_bulk_transfer_to_a_slow_reader_is_intact_and_bounded() {
    fn fnv(hash: &mut u64, bytes: &[u8]) {
        for b in bytes {
            *hash ^= u64::from(*b);
            *hash = hash.wrapping_mul(0x100_0000_01b3);
        }
    }
    // The backend reads slowly at first, so the proxies meet backpressure (partial
    // writes), then hashes everything and answers with the hash.
    let backend = serve(local_listener(), |mut s: TcpStream| {
        let mut hash = 0xcbf2_9ce4_8422_2325u64;
        let mut buf = vec![0u8; 64 * 1024];
        let mut reads = 0;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => fnv(&mut hash, &buf[..n]),
            }
            reads += 1;
            if reads < 50 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = write!(s, "{hash:016x}");
    });
    let (client, server) = pair(backend, &["--opaque-ports", "1-65535"]);
    let mut s = TcpStream::connect(client.outbound).expect("connect");
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut chunk = vec![0u8; 1 << 20];
    for i in 0..64u32 {
        for (j, b) in chunk.iter_mut().enumerate() {
            *b = (i as usize * 31 + j * 7) as u8;
        }
        fnv(&mut hash, &chunk);
        s.write_all(&chunk).expect("write");
    }
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut rsp = String::new();
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    s.read_to_string(&mut rsp).expect("the backend's hash");
    assert_eq!(rsp, format!("{hash:016x}"), "the bytes arrived changed");
    for p in [&client, &server] {
        let m = p.metrics();
        assert_eq!(metric(&m, "tcp_read_bytes_total", &[("peer", "src")]), 64.0 * 1048576.0, "{m}");
        assert!(p.rss_bytes() < 32 << 20, "RSS {} MiB", p.rss_bytes() >> 20);
    }
}

/// An address that refuses connections: a socket bound to it, never listening.
pub fn refusing_addr() -> (socket2::Socket, SocketAddr) {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
    let addr = socket.local_addr().expect("addr").as_socket().expect("inet");
    (socket, addr)
}
