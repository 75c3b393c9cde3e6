//! The demo's second part: discovery, balancing and retries. One service, three
//! endpoints — fast, slow (+50 ms), flaky (every 5th request 503) — resolved through a real
//! destination service (static source), once without and once with
//! `retry.weft.dev/http: 5xx`; then a canary release: `api-split` sends 10 % of its
//! requests to `api-canary` (a traffic split, as an HTTPRoute with weights makes one).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::net::TcpStream;
use weft_proxy::BoundProxy;

use super::proxy_args;

pub async fn run(requests: u64) -> anyhow::Result<()> {
    let kinds = [
        ("fast", Duration::ZERO, 0u64),
        ("slow", Duration::from_millis(50), 0),
        ("flaky", Duration::ZERO, 5),
    ];
    let mut backends = Vec::new();
    for (name, delay, fail_every) in kinds {
        let hits = Arc::new(AtomicU64::new(0));
        let addr = spawn_backend(delay, fail_every, hits.clone())?;
        backends.push((name, addr, hits));
    }
    let stable = Arc::new(AtomicU64::new(0));
    let canary = Arc::new(AtomicU64::new(0));
    let split = [
        ("stable", spawn_backend(Duration::ZERO, 0, stable.clone())?),
        ("canary", spawn_backend(Duration::ZERO, 0, canary.clone())?),
    ];
    let (dst_addr, dst_admin) = start_destination(&backends, split)?;
    // Listening and indexed before the first proxy asks.
    wait_ready(dst_admin).await?;

    println!(
        "\ndiscovery, balancing and retries: a destination service ({dst_addr}) knows `api` (10.96.0.20:80 — nothing listens there)"
    );
    println!(
        "and `api-retry` (10.96.0.21:80: the same endpoints, annotated retry.weft.dev/http: 5xx);"
    );
    println!("three endpoints: fast, slow (+50 ms), flaky (every 5th request 503)\n");
    println!("{:<14} {:>8} {:>8} {:>8} {:>18}", "", "fast", "slow", "flaky", "success at client");
    for (label, ip) in [("no retries", "10.96.0.20"), ("with retries", "10.96.0.21")] {
        let outbound = start_proxy(ip, dst_addr)?;
        // Warm up (the profile arrives, latency estimates settle), then measure.
        drive(outbound, 4, 200).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before: Vec<u64> = backends.iter().map(|(_, _, h)| h.load(Ordering::SeqCst)).collect();
        let ok = drive(outbound, 8, requests).await?;
        let got: Vec<u64> = backends
            .iter()
            .zip(&before)
            .map(|((_, _, h), b)| h.load(Ordering::SeqCst) - b)
            .collect();
        let total = got.iter().sum::<u64>().max(1) as f64;
        let pct = |n: u64| 100.0 * n as f64 / total;
        println!(
            "{label:<14} {:>7.1}% {:>7.1}% {:>7.1}% {:>17.2}%",
            pct(got[0]),
            pct(got[1]),
            pct(got[2]),
            100.0 * ok as f64 / requests as f64
        );
    }
    println!(
        "\n(shares are of what the endpoints received, retries included. Peak-EWMA keeps traffic off the slow one; retries,"
    );
    println!("bounded by a budget of 20 % of requests + 10/s, hide the flaky one.)");

    // The canary: the app calls api-split's ClusterIP; the split sends a tenth elsewhere.
    let outbound = start_proxy("10.96.0.22", dst_addr)?;
    drive(outbound, 4, 100).await?;
    let before = (stable.load(Ordering::SeqCst), canary.load(Ordering::SeqCst));
    let ok = drive(outbound, 8, requests).await?;
    let got = (stable.load(Ordering::SeqCst) - before.0, canary.load(Ordering::SeqCst) - before.1);
    let total = (got.0 + got.1).max(1) as f64;
    println!(
        "\ncanary release: `api-split` (10.96.0.22:80) split 90/10 between itself and `api-canary`:"
    );
    println!(
        "stable {:.1} %, canary {:.1} % of {} requests ({ok} succeeded)",
        100.0 * got.0 as f64 / total,
        100.0 * got.1 as f64 / total,
        got.0 + got.1
    );
    println!(
        "(in a cluster an HTTPRoute with the Service as parent and weighted backends says this; Flagger and Argo Rollouts"
    );
    println!("move the weights step by step)");
    Ok(())
}

/// A proxy in this process whose outbound target is `ip:80`, discovered through `dst`.
fn start_proxy(ip: &str, dst: SocketAddr) -> anyhow::Result<SocketAddr> {
    let mut args = proxy_args(Some(format!("{ip}:80").parse()?), None);
    args.destination_addr = Some(dst.into());
    args.destination_first_update_timeout = Duration::from_secs(3);
    let proxy = BoundProxy::bind(args)?;
    let outbound = proxy.outbound_addrs()[0];
    tokio::spawn(proxy.serve(None, std::future::pending()));
    Ok(outbound)
}

/// The destination service's gRPC and admin addresses.
fn start_destination(
    backends: &[(&str, SocketAddr, Arc<AtomicU64>)],
    split: [(&str, SocketAddr); 2],
) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let (addr, admin, _) = serve_destination(&services_yaml(backends, split), None)?;
    Ok((addr, admin))
}

fn services_yaml(
    backends: &[(&str, SocketAddr, Arc<AtomicU64>)],
    [(_, stable), (_, canary)]: [(&str, SocketAddr); 2],
) -> String {
    let endpoints: String = backends
        .iter()
        .map(|(name, addr, _)| {
            format!("          - address: {addr}\n            labels: {{pod: api-{name}}}\n")
        })
        .collect();
    let service = |name: &str, ip: &str, annotations: &str| {
        format!(
            "  - name: {name}\n    namespace: demo\n    clusterIPs: [{ip}]\n{annotations}    ports:\n      - port: 80\n        endpoints:\n{endpoints}"
        )
    };
    let one = |name: &str, ip: Option<&str>, addr: SocketAddr| {
        let ips = ip.map(|ip| format!("    clusterIPs: [{ip}]\n")).unwrap_or_default();
        format!(
            "  - name: {name}\n    namespace: demo\n{ips}    ports:\n      - port: 80\n        endpoints:\n          - address: {addr}\n            labels: {{pod: {name}-0}}\n"
        )
    };
    format!(
        "services:\n{}{}{}{}splits:\n  - name: api-split\n    namespace: demo\n    port: 80\n    backends:\n      - {{name: api-split, weight: 90}}\n      - {{name: api-canary, weight: 10}}\n",
        service("api", "10.96.0.20", ""),
        service("api-retry", "10.96.0.21", "    annotations:\n      retry.weft.dev/http: 5xx\n"),
        one("api-split", Some("10.96.0.22"), stable),
        one("api-canary", None, canary),
    )
}

/// Runs a destination service (static source) in this process, over TLS with `identity`;
/// returns its gRPC and admin addresses, and its file (re-read when it changes).
pub fn serve_destination(
    yaml: &str,
    identity: Option<weft_identity::workload::WorkloadConfig>,
) -> anyhow::Result<(SocketAddr, SocketAddr, std::path::PathBuf)> {
    let dir = std::env::temp_dir().join(format!("weft-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    static FILES: AtomicU64 = AtomicU64::new(0);
    let file = dir.join(format!("endpoints-{}.yaml", FILES.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&file, yaml)?;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let config = weft_destination::Config {
        listen_addr: addr,
        admin_addr: admin,
        source: weft_destination::Source::Static(file.clone()),
        index: weft_destination::IndexConfig {
            cluster_domain: "cluster.local".into(),
            control_plane_namespace: "weft".into(),
            trust_domain: "cluster.local".into(),
            proxy_inbound_port: 4143,
            ..Default::default()
        },
        policy: Default::default(),
        identity,
        route_status: None,
        connections: Default::default(),
    };
    tokio::spawn(async move {
        if let Err(e) = weft_destination::run(config, std::future::pending()).await {
            eprintln!("the demo's destination service failed: {e:#}");
        }
    });
    Ok((addr, admin, file))
}

/// `n` GETs over `connections` keep-alive HTTP/1.1 connections; returns how many got 2xx.
/// Exactly `n`: the success rates printed are of `n`, so none may be left unsent.
pub async fn drive(proxy: SocketAddr, connections: u64, n: u64) -> anyhow::Result<u64> {
    let mut tasks = Vec::new();
    for i in 0..connections {
        let share = n / connections + u64::from(i < n % connections);
        tasks.push(tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(TcpStream::connect(proxy).await?);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            let mut ok = 0u64;
            for _ in 0..share {
                sender.ready().await?;
                let req = http::Request::get("/")
                    .header(http::header::HOST, "api.demo.svc.cluster.local")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())?;
                let rsp = sender.send_request(req).await?;
                ok += u64::from(rsp.status().is_success());
                let _ = http_body_util::BodyExt::collect(rsp.into_body()).await;
            }
            anyhow::Ok(ok)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await??;
    }
    Ok(ok)
}

/// An HTTP backend that answers after `delay`, 503 on every `fail_every`-th request.
fn spawn_backend(
    delay: Duration,
    fail_every: u64,
    hits: Arc<AtomicU64>,
) -> anyhow::Result<SocketAddr> {
    let listener = weft_proxy::listen(([127, 0, 0, 1], 0).into())?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let hits = hits.clone();
                    async move {
                        let n = hits.fetch_add(1, Ordering::SeqCst) + 1;
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        let mut rsp = hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok\n"),
                        ));
                        if fail_every > 0 && n.is_multiple_of(fail_every) {
                            *rsp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, std::convert::Infallible>(rsp)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                .await;
            });
        }
    });
    Ok(addr)
}

/// Waits until the server whose admin port is `admin` says `/ready` (in-process servers
/// start on tasks of their own).
pub async fn wait_ready(admin: SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for _ in 0..200 {
        // Not listening yet (an in-process server still starting): try again.
        let Ok(mut s) = TcpStream::connect(admin).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        s.write_all(b"GET /ready HTTP/1.0\r\n\r\n").await?;
        let mut rsp = String::new();
        s.read_to_string(&mut rsp).await?;
        if rsp.split(' ').nth(1) == Some("200") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!(
        "{admin}: not ready in time (a proxy or the destination service without its certificate or its first data)"
    )
}
