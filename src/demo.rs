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

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Connections per protocol in the burst.
    #[arg(long, env = "WEFT_DEMO_CONNECTIONS", default_value_t = 200)]
    connections: usize,
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

async fn start_pair(backend: SocketAddr) -> anyhow::Result<Pair> {
    let server = BoundProxy::bind(proxy_args(None, Some(backend)))?;
    let client = BoundProxy::bind(proxy_args(Some(server.inbound_addrs()[0]), None))?;
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

fn proxy_args(outbound_target: Option<SocketAddr>, inbound_target: Option<SocketAddr>) -> RunArgs {
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
    let echo = spawn_backend(Backend::Echo).await?;
    let smtp = spawn_backend(Backend::Banner).await?;
    let web = start_pair(echo).await?;
    let mail = start_pair(smtp).await?;
    println!("  app --> client proxy {} --> server proxy --> echo backend {echo}", web.outbound);
    println!(
        "  app --> client proxy {} --> server proxy --> SMTP-like backend {smtp} (speaks first)\n",
        mail.outbound
    );

    let payloads: [(&str, &[u8]); 3] = [
        ("HTTP/1.1", b"GET /hello HTTP/1.1\r\nHost: web.demo\r\n\r\n"),
        ("HTTP/2", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
        ("opaque", b"\x00\x01binary-protocol-frame"),
    ];
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (_, payload) in payloads {
        for _ in 0..args.connections {
            tasks.push(tokio::spawn(echo_once(web.outbound, payload)));
        }
    }
    let mut failed = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(()))) {
            failed += 1;
        }
    }
    let total = payloads.len() * args.connections;
    println!(
        "sent {total} connections ({} each of HTTP/1.1, HTTP/2, opaque) through the pair in {:.0?}: {} ok, {failed} failed",
        args.connections,
        started.elapsed(),
        total - failed
    );

    let t = Instant::now();
    let mut s = TcpStream::connect(mail.outbound).await?;
    let mut banner = vec![0; BANNER.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut banner))
        .await
        .context("the banner of a server-speaks-first backend did not arrive")??;
    println!(
        "a server-speaks-first backend's banner reached the silent client in {:.0?} (the speculative connect after the silent window; Linkerd waits 10 s here unless the port is marked opaque)\n",
        t.elapsed()
    );
    drop(s);
    tokio::time::sleep(Duration::from_millis(100)).await;

    println!("what the proxies report on their admin ports (/metrics):");
    println!(
        "{:<14} {:<9} {:<9} {:>11} {:>8} {:>12} {:>12}",
        "proxy", "direction", "protocol", "connections", "open", "bytes read", "bytes written"
    );
    for (name, admin) in [
        ("web client", web.client_admin),
        ("web server", web.server_admin),
        ("mail client", mail.client_admin),
        ("mail server", mail.server_admin),
    ] {
        let text = scrape(admin).await?;
        for ((direction, protocol), row) in summarize(&text) {
            println!(
                "{name:<14} {direction:<9} {protocol:<9} {:>11} {:>8} {:>12} {:>12}",
                row.opened, row.open, row.read, row.written
            );
        }
    }
    println!("\nscrape them yourself while it runs: curl http://{}/metrics", web.client_admin);
    if failed > 0 {
        anyhow::bail!("{failed} demo connections failed");
    }
    Ok(())
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
async fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(admin).await?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: admin\r\n\r\n").await?;
    let mut rsp = String::new();
    s.read_to_string(&mut rsp).await?;
    let body = rsp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    Ok(body.to_string())
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
