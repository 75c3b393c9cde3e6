//! `weft demo`: a mesh on loopback, no root needed — sample backends, a server-side and a
//! client-side proxy wired with the fixed orig-dst overrides, a burst of traffic in
//! several protocols, and a table of what the proxies report on their admin ports.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use weft_proxy::{BoundProxy, config::RunArgs};

mod balancing;
mod mtls;

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Opaque TCP connections in the burst.
    #[arg(long, env = "WEFT_DEMO_CONNECTIONS", default_value_t = 200)]
    connections: usize,
    /// How long HTTP clients send requests (seconds).
    #[arg(long, env = "WEFT_DEMO_SECONDS", default_value_t = 3)]
    seconds: u64,
    /// Requests sent to each discovered service in the balancing part.
    #[arg(long, env = "WEFT_DEMO_REQUESTS", default_value_t = 3000)]
    requests: u64,
}

const BANNER: &[u8] = b"220 smtp.demo ESMTP ready\r\n";

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    tracing_subscriber_init();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(demo(args))
}

fn tracing_subscriber_init() {
    // The proxies log through tracing; the demo shows only their warnings.
    let _ = weft_proxy::logging::init("warn", weft_proxy::config::LogFormat::Plain);
}

/// A proxy pair: `client` is the app-side proxy's outbound, `server` the backend's inbound.
struct Pair {
    outbound: SocketAddr,
    client_admin: SocketAddr,
    server_admin: SocketAddr,
}

async fn start_pair(backend: SocketAddr, h2_between_proxies: bool) -> anyhow::Result<Pair> {
    let server = BoundProxy::bind(proxy_args(None, Some(backend)))?;
    let mut client_args = proxy_args(Some(server.inbound_addrs()[0]), None);
    if h2_between_proxies {
        client_args.outbound_http2_upgrade_targets = "*".parse().map_err(anyhow::Error::msg)?;
    }
    let client = BoundProxy::bind(client_args)?;
    let pair = Pair {
        outbound: client.outbound_addrs()[0],
        client_admin: client.admin_addrs()[0],
        server_admin: server.admin_addrs()[0],
    };
    for proxy in [server, client] {
        tokio::spawn(proxy.serve(None, std::future::pending()));
    }
    Ok(pair)
}

pub(crate) fn proxy_args(
    outbound_target: Option<SocketAddr>,
    inbound_target: Option<SocketAddr>,
) -> RunArgs {
    use clap::Parser;
    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        run: RunArgs,
    }
    // Defaults come from the same clap definitions as the real binary.
    let mut args = P::parse_from(["weft-proxy"]).run;
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    args.inbound_listen_addr = vec![loopback];
    args.outbound_listen_addr = vec![loopback];
    args.admin_listen_addr = vec![loopback];
    args.outbound_orig_dst_addr = outbound_target;
    args.inbound_orig_dst_addr = inbound_target;
    args
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    println!("weft demo: a mesh on loopback\n");
    let web_backend = spawn_http_backend().await?;
    let echo = spawn_backend(Backend::Echo).await?;
    let smtp = spawn_backend(Backend::Banner).await?;
    let web = start_pair(web_backend, true).await?;
    let db = start_pair(echo, false).await?;
    let mail = start_pair(smtp, false).await?;
    println!(
        "  web:  app --HTTP/1.1 and HTTP/2--> client proxy {} ==HTTP/2==> server proxy --> HTTP backend {web_backend}",
        web.outbound
    );
    println!(
        "  db:   app --opaque TCP--> client proxy {} --> server proxy --> echo backend {echo}",
        db.outbound
    );
    println!(
        "  mail: app --silent--> client proxy {} --> server proxy --> SMTP-like backend {smtp} (speaks first)\n",
        mail.outbound
    );

    // HTTP: keep-alive HTTP/1.1 clients and multiplexed HTTP/2 clients for a few seconds.
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let mut clients = Vec::new();
    for i in 0..8 {
        clients.push(tokio::spawn(http_client(web.outbound, i % 4 == 3, until)));
    }
    let mut opaque = Vec::new();
    for _ in 0..args.connections {
        opaque.push(tokio::spawn(echo_once(db.outbound, b"\x00\x01binary-protocol-frame")));
    }
    let t = Instant::now();
    let mut s = TcpStream::connect(mail.outbound).await?;
    let mut banner = vec![0; BANNER.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut banner))
        .await
        .context("the banner of a server-speaks-first backend did not arrive")??;
    let banner_after = t.elapsed();
    drop(s);
    let (mut sent, mut failed) = (0u64, 0u64);
    for c in clients {
        let (ok, bad) = c.await??;
        sent += ok + bad;
        failed += bad;
    }
    let mut opaque_failed = 0;
    for t in opaque {
        if !matches!(t.await, Ok(Ok(()))) {
            opaque_failed += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!(
        "HTTP clients sent {sent} requests in {}s ({failed} failed at the client); {} opaque connections ({opaque_failed} failed)",
        args.seconds, args.connections
    );
    println!(
        "a server-speaks-first backend's banner reached a silent client in {banner_after:.0?} (Linkerd waits 10 s here unless the port is marked opaque)\n"
    );

    println!("HTTP, as the proxies report it on their admin ports (/metrics):");
    println!(
        "{:<12} {:<9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "proxy", "direction", "requests", "req/s", "success", "p50 ms", "p99 ms"
    );
    for (name, admin) in [("web client", web.client_admin), ("web server", web.server_admin)] {
        let text = scrape(admin).await?;
        for (direction, h) in http_summary(&text) {
            println!(
                "{name:<12} {direction:<9} {:>9} {:>9.0} {:>8.2}% {:>9.1} {:>9.1}",
                h.requests,
                h.requests as f64 / args.seconds as f64,
                100.0 * h.successes as f64 / h.responses.max(1) as f64,
                h.quantile(0.5),
                h.quantile(0.99),
            );
        }
    }
    println!("\nconnections (client side of each proxy):");
    println!(
        "{:<12} {:<9} {:<9} {:>11} {:>8} {:>12} {:>12}",
        "proxy", "direction", "protocol", "connections", "open", "bytes read", "bytes written"
    );
    for (name, admin) in [
        ("web client", web.client_admin),
        ("web server", web.server_admin),
        ("db client", db.client_admin),
        ("db server", db.server_admin),
        ("mail client", mail.client_admin),
        ("mail server", mail.server_admin),
    ] {
        let text = scrape(admin).await?;
        for ((direction, protocol), row) in summarize(&text) {
            println!(
                "{name:<12} {direction:<9} {protocol:<9} {:>11} {:>8} {:>12} {:>12}",
                row.opened, row.open, row.read, row.written
            );
        }
    }
    println!(
        "\n(HTTP/1.1 from the app crosses between the proxies as HTTP/2: the web server proxy's inbound side sees h2.)"
    );
    if failed > 0 || opaque_failed > 0 {
        anyhow::bail!("{failed} HTTP requests and {opaque_failed} opaque connections failed");
    }
    balancing::run(args.requests).await?;
    mtls::run().await
}

/// Sends GET requests on one connection until `until`; returns (ok, failed).
async fn http_client(proxy: SocketAddr, h2: bool, until: Instant) -> anyhow::Result<(u64, u64)> {
    use http_body_util::Empty;
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(proxy).await?);
    let (mut ok, mut bad) = (0, 0);
    let request = || http::Request::get("http://web.demo/hello").body(Empty::<bytes::Bytes>::new());
    if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        while Instant::now() < until {
            // Eight streams at a time on the one connection.
            let batch: Vec<_> =
                (0..8).map(|_| sender.send_request(request().expect("valid request"))).collect();
            for rsp in batch {
                match rsp.await {
                    Ok(r) if r.status().is_success() => {
                        ok += 1;
                        let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                    }
                    _ => bad += 1,
                }
            }
        }
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        while Instant::now() < until {
            sender.ready().await?;
            let mut req = request()?;
            *req.uri_mut() = "/hello".parse()?;
            req.headers_mut()
                .insert(http::header::HOST, http::HeaderValue::from_static("web.demo"));
            match sender.send_request(req).await {
                Ok(r) if r.status().is_success() => {
                    ok += 1;
                    let _ = http_body_util::BodyExt::collect(r.into_body()).await;
                }
                _ => bad += 1,
            }
        }
    }
    Ok((ok, bad))
}

async fn spawn_http_backend() -> anyhow::Result<SocketAddr> {
    let listener = weft_proxy::listen(([127, 0, 0, 1], 0).into())?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"hello from web\n")),
                    ))
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

async fn echo_once(addr: SocketAddr, payload: &'static [u8]) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(payload).await?;
    s.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back)).await??;
    anyhow::ensure!(back == payload, "echo mismatch");
    Ok(())
}

#[derive(Clone, Copy)]
enum Backend {
    Echo,
    Banner,
}

async fn spawn_backend(kind: Backend) -> anyhow::Result<SocketAddr> {
    let listener = weft_proxy::listen(([127, 0, 0, 1], 0).into())?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Backend::Banner = kind {
                    let _ = s.write_all(BANNER).await;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// Fetches `/metrics` with a minimal HTTP/1.0 request (the demo needs no HTTP client).
pub(crate) async fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(admin).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: admin\r\n\r\n").await?;
    let mut rsp = String::new();
    s.read_to_string(&mut rsp).await?;
    let body = rsp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    Ok(body.to_string())
}

/// HTTP figures of one direction, from `request_total`, `response_total` and the
/// `response_latency_ms` histogram.
#[derive(Default)]
struct HttpRow {
    requests: u64,
    responses: u64,
    successes: u64,
    /// (upper bound in ms, cumulative count), summed over label sets.
    buckets: BTreeMap<u64, u64>,
}

impl HttpRow {
    /// The q-quantile in ms, interpolated within its bucket as Prometheus does.
    fn quantile(&self, q: f64) -> f64 {
        let total = self.buckets.values().copied().max().unwrap_or(0);
        if total == 0 {
            return 0.0;
        }
        let rank = q * total as f64;
        let mut prev = (0u64, 0u64);
        for (&le, &count) in &self.buckets {
            if count as f64 >= rank {
                let (lo, below) = prev;
                let in_bucket = (count - below).max(1) as f64;
                return lo as f64 + (le - lo) as f64 * (rank - below as f64) / in_bucket;
            }
            prev = (le, count);
        }
        prev.0 as f64
    }
}

fn http_summary(text: &str) -> BTreeMap<String, HttpRow> {
    let mut rows: BTreeMap<String, HttpRow> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Some((name, labels)) = series.split_once('{') else { continue };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches(['"', '}']).to_string())
                .unwrap_or_default()
        };
        let v = value.parse::<f64>().unwrap_or(0.0) as u64;
        let direction = label("direction");
        if direction.is_empty() {
            continue;
        }
        match name {
            "request_total" => rows.entry(direction).or_default().requests += v,
            "response_total" => {
                let row = rows.entry(direction).or_default();
                row.responses += v;
                if label("classification") == "success" {
                    row.successes += v;
                }
            }
            "response_latency_ms_bucket" => {
                if let Ok(le) = label("le").parse::<f64>() {
                    *rows.entry(direction).or_default().buckets.entry(le as u64).or_default() += v;
                }
            }
            _ => {}
        }
    }
    rows
}

#[derive(Default)]
struct Row {
    opened: u64,
    open: u64,
    read: u64,
    written: u64,
}

/// Sums the client-side (`peer="src"`) transport metrics by direction and protocol.
fn summarize(text: &str) -> BTreeMap<(String, String), Row> {
    let mut rows: BTreeMap<(String, String), Row> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches(['"', '}']).to_string())
                .unwrap_or_default()
        };
        if label("peer") != "src" {
            continue;
        }
        let v = value.parse::<f64>().unwrap_or(0.0) as u64;
        let row = rows.entry((label("direction"), label("protocol"))).or_default();
        match name {
            "tcp_open_total" => row.opened += v,
            "tcp_open_connections" => row.open += v,
            "tcp_read_bytes_total" => row.read += v,
            "tcp_write_bytes_total" => row.written += v,
            _ => {}
        }
    }
    rows
}
