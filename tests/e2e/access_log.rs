//! The inbound HTTP access log (`--access-log`): what curl and h2load sent, as the proxy
//! wrote it on stdout; and a stdout that nobody reads costs dropped, counted lines, never
//! a stalled proxy.

use std::{
    io::{BufRead, BufReader},
    process::{ChildStdout, Command},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;

use crate::support::*;

/// Lines of the proxy's stdout, read on a thread of their own.
fn lines(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_line(rx: &mpsc::Receiver<String>) -> String {
    rx.recv_timeout(Duration::from_secs(10)).expect("an access log line within 10 s")
}

/// curl's status code, the local port it used and the body bytes it received.
fn curl(args: &[&str]) -> (String, u16, u64) {
    let (ok, out, err) = run(Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code} %{local_port} %{size_download}"])
        .args(args));
    assert!(ok, "curl {args:?}: {err}");
    let f: Vec<&str> = out.split(' ').collect();
    assert_eq!(f.len(), 3, "curl -w: {out}");
    (f[0].to_string(), f[1].parse().expect("port"), f[2].parse().expect("size"))
}

#[test]
fn json_lines_say_who_asked_what_and_how_it_went() {
    let app = http_server(local_listener());
    let (proxy, stdout) =
        Proxy::start_piped(&["--inbound-orig-dst-addr", &app.to_string(), "--access-log", "json"]);
    let rx = lines(stdout);
    let base = format!("http://{}", proxy.inbound);

    // HTTP/1.1 upload, with a W3C trace context.
    let (code, port, size) = curl(&[
        "--http1.1",
        "-A",
        "weft-test/1",
        "-H",
        "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "--data-binary",
        "0123456789",
        &format!("{base}/upload?x=1"),
    ]);
    assert_eq!(code, "200");
    let line = next_line(&rx);
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["client.addr"], format!("127.0.0.1:{port}"), "{line}");
    assert_eq!(v["client.id"], "-", "{line}");
    assert_eq!(v["method"], "POST", "{line}");
    assert_eq!(v["uri"], "/upload?x=1", "{line}");
    assert_eq!(v["version"], "HTTP/1.1", "{line}");
    assert_eq!(v["status"], 200, "{line}");
    assert_eq!(v["host"], proxy.inbound.to_string(), "{line}");
    assert_eq!(v["user_agent"], "weft-test/1", "{line}");
    assert_eq!(v["trace_id"], "0af7651916cd43dd8448eb211c80319c", "{line}");
    assert_eq!(v["request_bytes"], "10", "{line}");
    assert_eq!(v["response_bytes"], size.to_string(), "{line}");
    let ns = |k: &str| v[k].as_str().and_then(|s| s.parse::<u64>().ok()).expect(k);
    assert!(ns("processing_ns") > 0 && ns("processing_ns") <= ns("total_ns"), "{line}");
    assert!(v["timestamp"].as_str().is_some_and(|t| t.len() == 30 && t.ends_with('Z')), "{line}");

    // HTTP/2: one line per stream, in the client's version.
    let (code, _, size) = curl(&["--http2-prior-knowledge", &format!("{base}/")]);
    assert_eq!(code, "200");
    let v: Value = serde_json::from_str(&next_line(&rx)).expect("JSON");
    assert_eq!(v["version"], "HTTP/2.0", "{v}");
    assert_eq!(v["method"], "GET", "{v}");
    assert_eq!(v["response_bytes"], size.to_string(), "{v}");

    let m = proxy.metrics();
    assert_eq!(metric(&m, "access_log_lines_total", &[("result", "written")]), 2.0, "{m}");
    assert_eq!(metric(&m, "access_log_lines_total", &[("result", "dropped")]), 0.0, "{m}");
}

#[test]
fn apache_lines_include_the_proxys_own_refusals() {
    let app = http_server(local_listener());
    let (proxy, stdout) = Proxy::start_piped(&[
        "--inbound-orig-dst-addr",
        &app.to_string(),
        "--access-log",
        "apache",
        "--inbound-default-policy",
        "deny",
    ]);
    let rx = lines(stdout);
    let (code, port, size) = curl(&["--http1.1", &format!("http://{}/private", proxy.inbound)]);
    assert_eq!(code, "403");
    let line = next_line(&rx);
    let prefix = format!("127.0.0.1:{port} - - [");
    assert!(line.starts_with(&prefix), "{line}");
    let tail = line.split_once("] ").map(|(_, t)| t).unwrap_or_default();
    assert_eq!(tail, format!("\"GET /private HTTP/1.1\" 403 {size}"), "{line}");
    // Nothing else is written to stdout: the proxy's own log is on stderr.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    assert!(proxy.logs().contains("\"message\":\"serving\""));
}

#[test]
fn a_stdout_nobody_reads_drops_counted_lines_and_never_stalls_the_proxy() {
    let app = http_server(local_listener());
    // The pipe is kept open and never read: once its 64 KiB and the proxy's backlog are
    // full, lines must be dropped, not waited for.
    let (proxy, _stdout) =
        Proxy::start_piped(&["--inbound-orig-dst-addr", &app.to_string(), "--access-log", "json"]);
    let n = 20_000;
    let url = format!("http://{}/", proxy.inbound);
    let (ok, out, err) = run(Command::new("h2load")
        .args(["-n", &n.to_string(), "-c", "4", "-m", "10", "-H", "user-agent: h2load-long-enough"])
        .arg(&url));
    assert!(ok, "h2load: {out}{err}");
    assert!(out.contains(&format!("{n} succeeded, 0 failed, 0 errored")), "h2load: {out}");
    let m = proxy.metrics();
    let written = metric(&m, "access_log_lines_total", &[("result", "written")]);
    let dropped = metric(&m, "access_log_lines_total", &[("result", "dropped")]);
    // ~300 bytes a line: 20 000 lines are 6 MB, past the pipe and the 1 MiB backlog.
    assert!(dropped > 0.0, "written {written}, dropped {dropped}");
    assert!(written + dropped <= n as f64, "written {written}, dropped {dropped}");
    assert!(proxy.rss_bytes() < 64 << 20, "RSS {} bytes", proxy.rss_bytes());
    // Still serving, and the log still counts.
    let (code, _, _) = curl(&["--http1.1", &url]);
    assert_eq!(code, "200");
}
