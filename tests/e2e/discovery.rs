//! Discovery, balancing, failure accrual and retries end to end: the real `weft destination`
//! (static source) tells a real `weft-proxy` which endpoints stand behind a service
//! address that nothing listens on; real HTTP backends answer; the proxy's metrics and the
//! backends' own counts show where requests went.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::support::*;

/// A ClusterIP-like service address: nothing listens there, so every request that
/// succeeds went through discovery.
const SERVICE: &str = "10.96.0.10:80";

struct Destination {
    child: Child,
    addr: SocketAddr,
    file: PathBuf,
}

impl Destination {
    fn start(file: PathBuf, port: u16) -> Destination {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(["destination", "--source", "static", "--static-file"])
            .arg(&file)
            .args(["--listen-addr", &addr.to_string(), "--admin-addr", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("weft destination");
        assert!(
            eventually(Duration::from_secs(20), || std::net::TcpStream::connect(addr).is_ok()),
            "weft destination did not start on {addr}"
        );
        Destination { child, addr, file }
    }

    fn write(&self, yaml: &str) {
        // Atomic replace, so the server never reads half a file.
        let tmp = self.file.with_extension("tmp");
        std::fs::write(&tmp, yaml).expect("write the static file");
        std::fs::rename(&tmp, &self.file).expect("replace the static file");
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn static_file(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("weft-e2e-discovery-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir.join("endpoints.yaml")
}

fn yaml(endpoints: &[&Backend], annotations: &[(&str, &str)]) -> String {
    let mut y = String::from(
        "services:\n  - name: web\n    namespace: prod\n    clusterIPs: [10.96.0.10]\n",
    );
    if !annotations.is_empty() {
        y.push_str("    annotations:\n");
        for (k, v) in annotations {
            y.push_str(&format!("      {k}: \"{v}\"\n"));
        }
    }
    y.push_str("    ports:\n      - port: 80\n        endpoints:\n");
    for (i, b) in endpoints.iter().enumerate() {
        y.push_str(&format!(
            "          - address: {}\n            labels: {{pod: web-{i}}}\n",
            b.addr
        ));
    }
    y
}

/// A proxy whose outbound target is the service address, with discovery at `dst`.
fn proxy(dst: SocketAddr, extra: &[&str]) -> Proxy {
    let dst = dst.to_string();
    let mut args = vec!["--outbound-orig-dst-addr", SERVICE, "--destination-addr", &dst];
    args.extend(extra);
    Proxy::start(&args)
}

fn with_destination(
    name: &str,
    backends: &[&Backend],
    annotations: &[(&str, &str)],
) -> Destination {
    let file = static_file(name);
    std::fs::write(&file, yaml(backends, annotations)).expect("write");
    Destination::start(file, free_port())
}

#[test]
fn the_balancer_sends_little_to_a_slow_endpoint() {
    let fast = [Backend::start(Duration::ZERO, None), Backend::start(Duration::ZERO, None)];
    let slow = Backend::start(Duration::from_millis(50), None);
    let dst = with_destination("slow", &[&fast[0], &fast[1], &slow], &[]);
    let p = proxy(dst.addr, &[]);
    // Warm up so the latency estimates reflect the endpoints, then measure.
    let statuses = load(p.outbound, 8, 400);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let before = [fast[0].hits(), fast[1].hits(), slow.hits()];
    let statuses = load(p.outbound, 8, 2000);
    assert!(statuses.iter().all(|&s| s == 200));
    let got = [fast[0].hits() - before[0], fast[1].hits() - before[1], slow.hits() - before[2]];
    let share = got[2] as f64 / got.iter().sum::<u64>() as f64;
    eprintln!("slow endpoint share: {:.2} % ({got:?})", share * 100.0);
    assert!(share < 0.10, "the slow endpoint got {:.1} % of requests ({got:?})", share * 100.0);
    let m = p.metrics();
    assert!(
        metric(&m, "request_total", &[("dst_service", "web"), ("dst_namespace", "prod")]) >= 2400.0,
        "{m}"
    );
    assert!(metric(&m, "response_total", &[("dst_pod", "web-2")]) > 0.0, "{m}");
    assert!(
        metric(&m, "outbound_discovery_lookups_total", &[("result", "balanced")]) >= 1.0,
        "{m}"
    );
    // The pooled connections to each endpoint carry its address and its `dst_*` labels.
    for (i, b) in [&fast[0], &fast[1], &slow].iter().enumerate() {
        let pod = format!("web-{i}");
        let labels = [
            ("peer", "dst"),
            ("target_addr", &b.addr.to_string()),
            ("dst_pod", &pod),
            ("dst_service", "web"),
        ];
        assert!(metric(&m, "tcp_open_total", &labels) >= 1.0, "no connection to {pod}:\n{m}");
    }
}

#[test]
fn removing_an_endpoint_under_load_fails_no_request() {
    let backends: Vec<Backend> =
        (0..3).map(|_| Backend::start(Duration::from_millis(2), None)).collect();
    let dst = with_destination("remove", &[&backends[0], &backends[1], &backends[2]], &[]);
    let p = proxy(dst.addr, &[]);
    let outbound = p.outbound;
    let loader = std::thread::spawn(move || load(outbound, 4, 2000));
    std::thread::sleep(Duration::from_millis(500));
    dst.write(&yaml(&[&backends[0], &backends[1]], &[]));
    // Once the removal reached the proxy, the removed endpoint gets nothing more.
    assert!(eventually(Duration::from_secs(10), || {
        metric(&p.metrics(), "outbound_discovery_updates_total", &[("result", "remove")]) >= 1.0
            || metric(&p.metrics(), "outbound_discovery_updates_total", &[("result", "add")]) >= 2.0
    }));
    let after_removal = backends[2].hits();
    let statuses = loader.join().expect("load");
    assert!(
        statuses.iter().all(|&s| s == 200),
        "failed: {:?}",
        statuses.iter().filter(|&&s| s != 200).count()
    );
    assert!(backends[2].hits() <= after_removal + 4, "the removed endpoint kept getting requests");
}

#[test]
fn failure_accrual_ejects_a_failing_endpoint_and_brings_it_back() {
    let good = [Backend::start(Duration::ZERO, None), Backend::start(Duration::ZERO, None)];
    let bad = Backend::start(Duration::ZERO, None);
    bad.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let dst = with_destination("accrual", &[&good[0], &good[1], &bad], &[]);
    let p = proxy(dst.addr, &["--failure-accrual-min-backoff", "1s"]);
    // Seven failures in a row take it out. How soon it gets seven depends on the latencies
    // the balancer sees (a peak on it under a loaded machine keeps it aside for a while):
    // load until it has them.
    let failed_enough = eventually(Duration::from_secs(30), || {
        let _ = load(p.outbound, 1, 50);
        bad.hits() >= 7
    });
    assert!(failed_enough, "the failing endpoint got only {} requests", bad.hits());
    // From then on it sees at most its probes.
    let ejected_at = bad.hits();
    let statuses = load(p.outbound, 1, 300);
    assert!(
        bad.hits() <= ejected_at + 2,
        "an ejected endpoint got {} requests",
        bad.hits() - ejected_at
    );
    assert!(statuses.iter().filter(|&&s| s != 200).count() <= 2, "{statuses:?}");
    // It heals: once its backoff (doubled by every failed probe so far) runs out, a probe
    // succeeds and it is back in rotation.
    bad.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let healed_at = bad.hits();
    assert!(
        eventually(Duration::from_secs(20), || {
            let statuses = load(p.outbound, 1, 50);
            assert!(statuses.iter().all(|&s| s == 200));
            bad.hits() - healed_at > 30
        }),
        "the healed endpoint got only {} requests",
        bad.hits() - healed_at
    );
}

#[test]
fn retries_hide_a_flaky_endpoint() {
    let steady = [Backend::start(Duration::ZERO, None), Backend::start(Duration::ZERO, None)];
    let flaky = Backend::start(Duration::ZERO, Some(5)); // every 5th request: 503
    let dst = with_destination(
        "retry",
        &[&steady[0], &steady[1], &flaky],
        &[("retry.weft.dev/http", "5xx")],
    );
    let p = proxy(dst.addr, &[]);
    // Let the profile arrive before measuring.
    assert!(eventually(Duration::from_secs(10), || {
        let _ = load(p.outbound, 1, 1);
        metric(&p.metrics(), "outbound_discovery_updates_total", &[("result", "profile")]) >= 1.0
    }));
    let statuses = load(p.outbound, 4, 4000);
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    let rate = ok as f64 / statuses.len() as f64;
    assert!(rate >= 0.999, "success rate {:.4} with retries", rate);
    assert!(flaky.hits() > 0);
    let m = p.metrics();
    assert!(
        metric(&m, "outbound_http_retries_total", &[("result", "taken"), ("dst_service", "web")])
            > 0.0,
        "{m}"
    );
}

#[test]
fn a_large_post_is_not_retried_and_retries_stay_within_the_budget() {
    let backends: Vec<Backend> = (0..3).map(|_| Backend::start(Duration::ZERO, None)).collect();
    for b in &backends {
        b.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let dst = with_destination(
        "budget",
        &[&backends[0], &backends[1], &backends[2]],
        &[("retry.weft.dev/http", "5xx"), ("retry.weft.dev/limit", "3")],
    );
    // Failure accrual would take every endpoint out; keep them in to measure the budget.
    let p = proxy(dst.addr, &["--failure-accrual-consecutive-failures", "1000000"]);
    assert!(eventually(Duration::from_secs(10), || {
        let _ = load(p.outbound, 1, 1);
        metric(&p.metrics(), "outbound_discovery_updates_total", &[("result", "profile")]) >= 1.0
    }));
    let hits = || backends.iter().map(Backend::hits).sum::<u64>();

    // A 1 MiB POST goes once, failure and all.
    let before = hits();
    let url = format!("http://{}/upload", p.outbound);
    let cmd = format!(
        "head -c 1048576 /dev/zero | curl -sS -o /dev/null -w '%{{http_code}}' --data-binary @- {url}"
    );
    let (ok, out, err) = run(Command::new("sh").args(["-c", &cmd]));
    assert!(ok, "{err}");
    assert_eq!(out, "503");
    assert_eq!(hits() - before, 1, "a 1 MiB body was retried");

    // Every endpoint fails: retries may add 20 % of the requests plus 10/s over 10 s.
    let m0 = p.metrics();
    let taken0 = metric(&m0, "outbound_http_retries_total", &[("result", "taken")]);
    let before = hits();
    let n = 1000;
    let statuses = load(p.outbound, 4, n);
    assert!(statuses.iter().all(|&s| s == 503));
    let m = p.metrics();
    let taken = metric(&m, "outbound_http_retries_total", &[("result", "taken")]) - taken0;
    let refused = metric(&m, "outbound_http_retries_total", &[("result", "budget_exhausted")]);
    let sent = hits() - before;
    assert_eq!(sent as f64, n as f64 + taken, "backends saw requests + retries");
    // The window holds every request of this test: ≤ 0.2 × (n + the earlier ones) + 100.
    let allowed = 0.2 * (n as f64 + 50.0) + 100.0;
    assert!(taken <= allowed, "{taken} retries taken, budget allows {allowed}");
    assert!(refused > 0.0, "the budget never refused a retry: {m}");
    eprintln!(
        "budget: {n} requests, {taken} retries taken, {refused} refused (ratio {:.3})",
        taken / n as f64
    );
}

#[test]
fn without_the_destination_service_traffic_goes_to_the_original_destination() {
    let backend = Backend::start(Duration::ZERO, None);
    let port = free_port();
    let dst_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // The original destination is a real backend here, so falling back works.
    let target = backend.addr.to_string();
    let p = Proxy::start(&[
        "--outbound-orig-dst-addr",
        &target,
        "--destination-addr",
        &dst_addr.to_string(),
        "--destination-first-update-timeout",
        "500ms",
    ]);
    let statuses = load(p.outbound, 2, 50);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let m = p.metrics();
    assert!(
        metric(&m, "outbound_discovery_lookups_total", &[("result", "unavailable")]) >= 1.0,
        "{m}"
    );
    // Both of its watches say so: the endpoints' and the profile's.
    for result in ["unavailable", "profile_unavailable"] {
        let updates = metric(&m, "outbound_discovery_updates_total", &[("result", result)]);
        assert!(updates >= 1.0, "{result}: {m}");
    }

    // The destination service comes up and knows the target: balancing resumes (to
    // other endpoints than the original destination).
    let others = [Backend::start(Duration::ZERO, None), Backend::start(Duration::ZERO, None)];
    let file = static_file("down");
    let y = format!(
        "services:\n  - name: web\n    namespace: prod\n    ports:\n      - port: {}\n        endpoints:\n          - address: {}\n          - address: {}\n",
        backend.addr.port(),
        others[0].addr,
        others[1].addr
    );
    let y =
        y.replace("    ports:", &format!("    clusterIPs: [{}]\n    ports:", backend.addr.ip()));
    std::fs::write(&file, y).expect("write");
    let dst = Destination::start(file, port);
    assert!(
        eventually(Duration::from_secs(20), || {
            let _ = load(p.outbound, 1, 5);
            others[0].hits() + others[1].hits() > 0
        }),
        "balancing did not resume: {}",
        p.metrics()
    );
    // And while running, the destination service going away leaves the last endpoints
    // in use.
    drop(dst);
    let before = others[0].hits() + others[1].hits();
    let statuses = load(p.outbound, 2, 100);
    assert!(statuses.iter().all(|&s| s == 200));
    assert!(others[0].hits() + others[1].hits() >= before + 90);
}

#[test]
fn only_addresses_in_the_destination_networks_are_looked_up() {
    // The service's address is a real server of its own (the original destination);
    // its endpoint is another.
    let (original, endpoint) =
        (Backend::start(Duration::ZERO, None), Backend::start(Duration::ZERO, None));
    let file = static_file("networks");
    let y = format!(
        "services:\n  - name: web\n    namespace: prod\n    clusterIPs: [{}]\n    ports:\n      - port: {}\n        endpoints:\n          - address: {}\n",
        original.addr.ip(),
        original.addr.port(),
        endpoint.addr
    );
    std::fs::write(&file, y).expect("write");
    let dst = Destination::start(file, free_port());
    let (target, dst) = (original.addr.to_string(), dst.addr.to_string());
    let lookups =
        |m: &str, result| metric(m, "outbound_discovery_lookups_total", &[("result", result)]);
    let start = |networks: &str| {
        let args = ["--outbound-orig-dst-addr", &target, "--destination-addr", &dst];
        Proxy::start(&[&args[..], &["--destination-networks", networks]].concat())
    };

    // Outside the networks: straight to the original destination, no lookup.
    let outside = start("10.0.0.0/8,fd00::/8");
    assert!(load(outside.outbound, 1, 3).iter().all(|&s| s == 200));
    assert_eq!((original.hits(), endpoint.hits()), (3, 0), "looked up although outside");
    let m = outside.metrics();
    assert!(lookups(&m, "not_discoverable") >= 1.0, "{m}");
    assert_eq!(lookups(&m, "balanced"), 0.0, "{m}");
    // Inside: balanced to the endpoint as usual.
    let inside = start("127.0.0.0/8");
    assert!(load(inside.outbound, 1, 3).iter().all(|&s| s == 200));
    assert_eq!((original.hits(), endpoint.hits()), (3, 3));
    assert!(lookups(&inside.metrics(), "balanced") >= 1.0);
}

#[test]
fn request_and_per_try_timeouts_from_the_profile() {
    // Whole-request timeout: a slow service answers 504 with the reason.
    let slow = Backend::start(Duration::from_secs(3), None);
    let dst = with_destination("timeout", &[&slow], &[("timeout.weft.dev/request", "300ms")]);
    let p = proxy(dst.addr, &[]);
    assert!(eventually(Duration::from_secs(10), || {
        metric(&p.metrics(), "outbound_discovery_updates_total", &[("result", "profile")]) >= 1.0
            || load(p.outbound, 1, 1).is_empty()
    }));
    let url = format!("http://{}/", p.outbound);
    let (ok, out, err) =
        run(Command::new("curl").args(["-sS", "-D", "-", "-o", "/dev/null", "-m", "10", &url]));
    assert!(ok, "{err}");
    assert!(out.contains(" 504"), "{out}");
    assert!(out.to_ascii_lowercase().contains("l5d-proxy-error: request timeout"), "{out}");
    // (The wait above may have sent one more request that timed out too.)
    assert!(
        metric(&p.metrics(), "outbound_http_errors_total", &[("error", "request_timeout")]) >= 1.0
    );

    // Per-try timeout with retries: a try stuck on the slow endpoint is abandoned and
    // retried on the fast one.
    let fast = Backend::start(Duration::ZERO, None);
    let slow = Backend::start(Duration::from_secs(3), None);
    let dst = with_destination(
        "try-timeout",
        &[&fast, &slow],
        &[("retry.weft.dev/http", "5xx"), ("retry.weft.dev/timeout", "200ms")],
    );
    let p = proxy(dst.addr, &[]);
    assert!(eventually(Duration::from_secs(10), || {
        let _ = load(p.outbound, 1, 1);
        metric(&p.metrics(), "outbound_discovery_updates_total", &[("result", "profile")]) >= 1.0
    }));
    let statuses = load(p.outbound, 4, 40);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let slow_tries = slow.hits();
    assert!(slow_tries > 0, "the slow endpoint was never tried");
    // The slow endpoint answers 200 too, after 3 s: only a try given up at 200 ms is
    // retried, so every try it got must have been followed by a retry.
    let m = p.metrics();
    let retries =
        metric(&m, "outbound_http_retries_total", &[("result", "taken"), ("dst_service", "web")]);
    assert!(
        retries >= slow_tries as f64,
        "{slow_tries} tries on the slow endpoint, {retries} retries:\n{m}"
    );
}

/// Two services, `web` (the ClusterIP the app calls) and `web-canary`, and a split of
/// `web`'s port 80 with the given weights (none: no split).
fn split_yaml(stable: &Backend, canary: &Backend, weights: Option<(u32, u32)>) -> String {
    let mut y = format!(
        "services:
  - name: web
    namespace: prod
    clusterIPs: [10.96.0.10]
    ports:
      - port: 80
        endpoints:
          - address: {}
            labels: {{pod: web-0}}
  - name: web-canary
    namespace: prod
    ports:
      - port: 80
        endpoints:
          - address: {}
            labels: {{pod: web-canary-0}}
",
        stable.addr, canary.addr
    );
    if let Some((s, c)) = weights {
        y.push_str(&format!(
            "splits:
  - name: web
    namespace: prod
    port: 80
    backends:
      - {{name: web, weight: {s}}}
      - {{name: web-canary, weight: {c}}}
"
        ));
    }
    y
}

#[test]
fn a_traffic_split_moves_requests_to_the_canary_by_weight() {
    let stable = Backend::start(Duration::ZERO, None);
    let canary = Backend::start(Duration::ZERO, None);
    let file = static_file("split");
    std::fs::write(&file, split_yaml(&stable, &canary, Some((0, 100)))).expect("write");
    let dst = Destination::start(file, free_port());
    let p = proxy(dst.addr, &[]);

    // All of it to the canary: the app still calls web's ClusterIP.
    let statuses = load(p.outbound, 4, 200);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert_eq!((stable.hits(), canary.hits()), (0, 200));
    let m = p.metrics();
    assert_eq!(metric(&m, "response_total", &[("dst_service", "web-canary")]), 200.0, "{m}");

    // Half and half, as the rollout goes on: each gets its share (±, the pick is random).
    dst.write(&split_yaml(&stable, &canary, Some((1, 1))));
    let changed = || {
        let before = stable.hits();
        load(p.outbound, 1, 20);
        stable.hits() > before
    };
    assert!(eventually(Duration::from_secs(10), changed), "the new weights never applied");
    let before = (stable.hits(), canary.hits());
    let statuses = load(p.outbound, 4, 1000);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let got = (stable.hits() - before.0, canary.hits() - before.1);
    assert_eq!(got.0 + got.1, 1000);
    // Binomial(1000, 0.5): 400..600 fails with probability below 1e-9.
    assert!((400..=600).contains(&got.1), "canary got {got:?}");

    // The split removed (the rollout promoted): everything back on web's own endpoints.
    dst.write(&split_yaml(&stable, &canary, None));
    let settled = || {
        let before = canary.hits();
        load(p.outbound, 1, 50);
        canary.hits() == before
    };
    assert!(eventually(Duration::from_secs(10), settled), "the split never went away");
    let before = canary.hits();
    load(p.outbound, 4, 200);
    assert_eq!(canary.hits(), before);
}

/// Opaque TCP is balanced per connection: the proxy counts its connection to the endpoint
/// with the endpoint's `dst_*` labels (Linkerd's); a connection that goes to its original
/// destination undiscovered keeps exactly the labels it had.
#[test]
fn opaque_connections_to_an_endpoint_carry_its_dst_labels() {
    use std::io::{Read, Write};
    // Each server names itself, so the client sees where its connection went.
    let named = |name: &'static [u8]| {
        serve(local_listener(), move |mut s: std::net::TcpStream| {
            let _ = s.write_all(name);
        })
    };
    let (original, endpoint) = (named(b"original"), named(b"endpoint"));
    let file = static_file("opaque");
    let y = format!(
        "services:\n  - name: db\n    namespace: prod\n    clusterIPs: [{}]\n    ports:\n      - port: {}\n        endpoints:\n          - address: {}\n            labels: {{pod: db-0}}\n",
        original.ip(),
        original.port(),
        endpoint
    );
    std::fs::write(&file, y).expect("write");
    let dst = Destination::start(file, free_port());
    let (target, dst) = (original.to_string(), dst.addr.to_string());
    let start = |networks: &str| {
        let args = ["--outbound-orig-dst-addr", &target, "--destination-addr", &dst];
        let opaque = ["--opaque-ports", "1-65535", "--destination-networks", networks];
        Proxy::start(&[&args[..], &opaque].concat())
    };
    let through = |p: &Proxy| {
        let mut s = std::net::TcpStream::connect(p.outbound).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        got
    };
    // The address the proxy connected to: the endpoint's when discovery picked it.
    let common = |addr: &str| {
        format!(
            "direction=\"outbound\",peer=\"dst\",target_addr=\"{addr}\",protocol=\"opaque\",tls=\"no_identity\",no_tls_reason=\"disabled\""
        )
    };
    let closed = |p: &Proxy, labels: &str| {
        let series = format!("tcp_close_total{{{labels},errno=\"\"}} 1\n");
        eventually(Duration::from_secs(5), || p.metrics().contains(&series))
    };
    let tcp_lines = |m: &str| -> Vec<String> {
        m.lines().filter(|l| l.starts_with("tcp_")).map(str::to_string).collect()
    };

    // Discovered: to the endpoint, with its labels (the service's and the file's).
    let inside = start("127.0.0.0/8");
    assert_eq!(through(&inside), b"endpoint", "{}", inside.logs());
    let labels = format!(
        "{},dst_namespace=\"prod\",dst_pod=\"db-0\",dst_service=\"db\"",
        common(&endpoint.to_string())
    );
    assert!(closed(&inside, &labels), "{}", inside.metrics());
    let m = inside.metrics();
    for family in ["tcp_open_total", "tcp_read_bytes_total"] {
        let series = format!("{family}{{{labels}}} ");
        assert!(m.contains(&series), "no {series} in:\n{m}");
    }
    // The app's side of the connection is not the endpoint's.
    let src: Vec<String> =
        tcp_lines(&m).into_iter().filter(|l| l.contains("peer=\"src\"")).collect();
    assert!(!src.is_empty() && src.iter().all(|l| !l.contains("dst_")), "{m}");

    // Undiscovered (outside the destination networks): to the original destination, with
    // no `dst_*` label.
    let outside = start("10.0.0.0/8");
    assert_eq!(through(&outside), b"original", "{}", outside.logs());
    let common = common(&target);
    assert!(closed(&outside, &common), "{}", outside.metrics());
    let m = outside.metrics();
    assert!(m.contains(&format!("tcp_open_total{{{common}}} 1\n")), "{m}");
    assert!(tcp_lines(&m).iter().all(|l| !l.contains("dst_")), "{m}");
}

/// An opaque TCP endpoint: echoes, counts the connections it accepted, and can close its
/// listener, after which connections to it are refused.
struct TcpEndpoint {
    addr: SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    closing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepting: Option<std::thread::JoinHandle<()>>,
}

impl TcpEndpoint {
    fn start() -> TcpEndpoint {
        use std::sync::atomic::Ordering;
        let listener = local_listener();
        let addr = listener.local_addr().expect("addr");
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let closing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (count, stop) = (accepted.clone(), closing.clone());
        let accepting = std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                if stop.load(Ordering::SeqCst) {
                    break; // the listener goes with this thread
                }
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || echo(conn));
            }
        });
        TcpEndpoint { addr, accepted, closing, accepting: Some(accepting) }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes the listener: the endpoint refuses connections from now on.
    fn close(&mut self) {
        self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop, which then sees `closing` (this one is not counted).
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.accepting.take() {
            t.join().expect("accept thread");
        }
        assert!(std::net::TcpStream::connect(self.addr).is_err(), "{} still accepts", self.addr);
    }
}

/// One connection through the proxy's outbound port: whether bytes sent came back (the
/// proxy resets it when it could not connect to the endpoint it picked).
fn echoed(outbound: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let msg = b"\x00opaque ping";
    let Ok(mut s) = std::net::TcpStream::connect(outbound) else { return false };
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut back = [0u8; 12];
    s.write_all(msg).is_ok() && s.read_exact(&mut back).is_ok() && &back == msg
}

#[test]
fn opaque_connections_are_balanced_per_connection_and_a_refusing_endpoint_is_ejected() {
    let mut endpoints = [TcpEndpoint::start(), TcpEndpoint::start(), TcpEndpoint::start()];
    let mut y = String::from(
        "services:\n  - name: db\n    namespace: prod\n    clusterIPs: [10.96.0.11]\n    annotations:\n      config.weft.dev/opaque-ports: \"5432\"\n    ports:\n      - port: 5432\n        endpoints:\n",
    );
    for (i, e) in endpoints.iter().enumerate() {
        y.push_str(&format!(
            "          - address: {}\n            labels: {{pod: db-{i}}}\n",
            e.addr
        ));
    }
    let file = static_file("opaque-balance");
    std::fs::write(&file, y).expect("write");
    let dst = Destination::start(file, free_port());
    let dst_addr = dst.addr.to_string();
    // Opaque: no detection, every connection is balanced on its own. The ejection's backoff
    // outlasts the test, so that no probe of the closed endpoint fails a client after it.
    let p = Proxy::start(&[
        "--outbound-orig-dst-addr",
        "10.96.0.11:5432",
        "--destination-addr",
        &dst_addr,
        "--opaque-ports",
        "5432",
        "--failure-accrual-min-backoff",
        "60s",
    ]);
    let counts = |e: &[TcpEndpoint]| e.iter().map(TcpEndpoint::accepted).collect::<Vec<_>>();

    // One connection at a time, so each is a pick of its own: every endpoint gets some.
    // (Not evenly: a connect that stalls on a busy machine is a latency peak that keeps its
    // endpoint aside for a while, as it should.)
    for i in 0..60 {
        assert!(echoed(p.outbound), "connection {i} failed\n{}", p.logs());
    }
    let got = counts(&endpoints);
    eprintln!("opaque connections per endpoint: {got:?}");
    assert_eq!(got.iter().sum::<u64>(), 60, "{got:?}");
    assert!(got.iter().all(|&n| n > 0), "an endpoint was left out: {got:?}");
    let m = p.metrics();
    let opened = [("direction", "outbound"), ("peer", "dst"), ("protocol", "opaque")];
    assert_eq!(metric(&m, "tcp_open_total", &opened), 60.0, "{m}");
    assert!(metric(&m, "outbound_discovery_lookups_total", &[("result", "balanced")]) >= 1.0);

    // db-2 goes away (its listener closed; discovery still lists it). Connections the
    // balancer sends there are refused and the client's is reset, until seven failures in
    // a row take it out.
    endpoints[2].close();
    let refused = |m: &str| metric(m, "outbound_tcp_errors_total", &[("error", "connect_refused")]);
    let mut failed = 0;
    let ejected = eventually(Duration::from_secs(30), || {
        failed += u32::from(!echoed(p.outbound));
        refused(&p.metrics()) >= 7.0
    });
    assert!(ejected, "{failed} failed connections, never seven refusals:\n{}", p.metrics());
    assert_eq!(failed, 7, "clients that failed: one per refused connect");

    // From then on every connection reaches the two others.
    let before = counts(&endpoints);
    for i in 0..30 {
        assert!(echoed(p.outbound), "connection {i} after the ejection failed\n{}", p.logs());
    }
    let after = counts(&endpoints);
    assert_eq!(after[0] + after[1] - before[0] - before[1], 30, "{before:?} → {after:?}");
    let m = p.metrics();
    assert_eq!(refused(&m), 7.0, "connects to the ejected endpoint: {m}");
}

/// A service whose port is marked opaque on the Service (`config.weft.dev/opaque-ports`,
/// which the destination service turns into the profile's `opaque_protocol`) is not
/// detected: the banner of a server that speaks first reaches a client that waits for it
/// at once, though the proxy's silent window and detect timeout (60 s) outlast the client.
/// The same server behind an unmarked service stays unheard for as long.
#[test]
fn a_service_marked_opaque_by_its_profile_is_not_detected() {
    use std::io::Read;
    let banner = serve(local_listener(), banner(b"220 ready\r\n"));
    let service = |name: &str, ip: &str, opaque: bool| {
        let annotation = if opaque {
            "    annotations:\n      config.weft.dev/opaque-ports: \"2525\"\n"
        } else {
            ""
        };
        format!(
            "  - name: {name}\n    namespace: prod\n    clusterIPs: [{ip}]\n{annotation}    ports:\n      - port: 2525\n        endpoints:\n          - address: {banner}\n            labels: {{pod: {name}-0}}\n"
        )
    };
    let file = static_file("opaque-profile");
    let y = format!(
        "services:\n{}{}",
        service("smtp", "10.96.0.12", true),
        service("plain", "10.96.0.13", false)
    );
    std::fs::write(&file, y).expect("write");
    let dst = Destination::start(file, free_port());
    let dst = dst.addr.to_string();
    let start = |target: &str| {
        let args = ["--outbound-orig-dst-addr", target, "--destination-addr", &dst];
        let slow = ["--detect-silent-window", "60s", "--detect-timeout", "60s"];
        Proxy::start(&[&args[..], &slow].concat())
    };
    let heard = |p: &Proxy, wait: Duration| {
        let mut s = std::net::TcpStream::connect(p.outbound).expect("connect");
        s.set_read_timeout(Some(wait)).expect("timeout");
        let mut got = [0u8; 11];
        s.read_exact(&mut got).is_ok_and(|()| &got == b"220 ready\r\n")
    };

    let marked = start("10.96.0.12:2525");
    assert!(heard(&marked, Duration::from_secs(20)), "no banner\n{}", marked.logs());
    let opened = [("direction", "outbound"), ("peer", "dst"), ("protocol", "opaque")];
    let m = marked.metrics();
    assert_eq!(
        metric(&m, "tcp_open_total", &[&opened[..], &[("dst_service", "smtp")]].concat()),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "outbound_discovery_lookups_total", &[("result", "balanced")]),
        1.0,
        "{m}"
    );

    let unmarked = start("10.96.0.13:2525");
    assert!(!heard(&unmarked, Duration::from_secs(3)), "an unmarked port was not detected");
}
