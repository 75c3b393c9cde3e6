//! The destination service in-process (its `run`, a static file, real sockets) with one
//! HTTP/2 connection per client that the test owns, so that it sees when the server closes
//! it: without open streams past `max_connection_idle` it gets a GOAWAY and is closed and
//! counted; with one open, silent for many times that, it is kept; at shutdown, a GOAWAY.
#![allow(clippy::unwrap_used)]

use std::{
    sync::atomic::{AtomicU32, Ordering},
    task::{Context, Poll},
};

use linkerd2_proxy_api::destination::{self as pb, destination_client::DestinationClient};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    task::JoinHandle,
};
use tonic::codegen::BoxFuture;

use super::*;
use crate::{Config, IndexConfig, Source};

const FILE: &str = "
services:
  - name: web
    namespace: prod
    ports:
      - port: 80
        endpoints:
          - address: 10.0.0.1:8080
";

const WEB: &str = "web.prod.svc.cluster.local:80";

/// A destination service on loopback, stopped (and its file removed) on drop.
struct Served {
    grpc: SocketAddr,
    admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    dir: std::path::PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn config(dir: &std::path::Path, connections: ConnectionLimits) -> Config {
    static N: AtomicU32 = AtomicU32::new(0);
    let file = dir.join(format!("endpoints-{}.yaml", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&file, FILE).unwrap();
    Config {
        listen_addr: free_port(),
        admin_addr: free_port(),
        source: Source::Static(file),
        index: IndexConfig {
            cluster_domain: "cluster.local".into(),
            control_plane_namespace: "weft".into(),
            trust_domain: "cluster.local".into(),
            proxy_inbound_port: 4143,
            ..Default::default()
        },
        policy: Default::default(),
        identity: None,
        route_status: None,
        connections,
    }
}

fn temp_dir() -> std::path::PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "weft-destination-connections-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn serve(max_connection_idle: Duration) -> Served {
    let dir = temp_dir();
    let config = config(&dir, ConnectionLimits { max_connection_idle, ..Default::default() });
    let (grpc, admin) = (config.listen_addr, config.admin_addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(crate::run(config, async move {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(grpc).await.is_err() {
        assert!(!task.is_finished(), "the server stopped");
        assert!(tokio::time::Instant::now() < deadline, "the server never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Served { grpc, admin, stop: Some(stop), task, dir }
}

/// One HTTP/2 connection, as tonic's generated client wants it.
#[derive(Clone)]
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// A client on a connection of its own, and the connection's task: it ends `Ok` when the
/// server closes the connection gracefully (a GOAWAY, then the close).
async fn connect(
    addr: SocketAddr,
) -> (DestinationClient<H2>, JoinHandle<Result<(), hyper::Error>>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let origin = http::Uri::from_static("http://localhost");
    (DestinationClient::with_origin(H2(send), origin), tokio::spawn(conn))
}

fn get(path: &str) -> pb::GetDestination {
    pb::GetDestination { scheme: "k8s".into(), path: path.into(), ..Default::default() }
}

/// The value of `name` in the admin server's `/metrics`.
async fn metric(admin: SocketAddr, name: &str) -> Option<String> {
    let mut tcp = TcpStream::connect(admin).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tcp.read_to_string(&mut text).await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_string))
}

const IDLE_CLOSED: &str = "destination_connections_idle_closed_total";

/// Whether the connection ends, gracefully, within `d`.
async fn closed_within(conn: &mut JoinHandle<Result<(), hyper::Error>>, d: Duration) -> bool {
    match tokio::time::timeout(d, conn).await {
        Err(_) => false,
        Ok(ended) => {
            let ended = ended.unwrap();
            assert!(ended.is_ok(), "closed, but not gracefully: {ended:?}");
            true
        }
    }
}

/// A connection that never opens a stream is closed once idle, and counted.
#[tokio::test]
async fn a_connection_without_streams_is_closed_once_idle() {
    let s = serve(Duration::from_millis(300)).await;
    assert_eq!(metric(s.admin, IDLE_CLOSED).await.as_deref(), Some("0"));
    let (_client, mut conn) = connect(s.grpc).await;
    // 10 s: without an idle limit the server keeps it for ever (its keepalive pings answered).
    assert!(closed_within(&mut conn, Duration::from_secs(10)).await, "idle connection kept");
    assert_eq!(metric(s.admin, IDLE_CLOSED).await.as_deref(), Some("1"));
}

/// A watch that sends nothing for many times the idle timeout keeps its connection (and the
/// connection can still open streams); once the last stream ends, the connection is closed
/// after the timeout, counted from then.
#[tokio::test]
async fn an_open_stream_keeps_its_connection_however_silent() {
    let idle = Duration::from_millis(300);
    let s = serve(idle).await;
    let (mut client, mut conn) = connect(s.grpc).await;
    let mut watch = client.get(get(WEB)).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert!(matches!(first.update, Some(pb::update::Update::Add(_))), "{first:?}");
    // Nothing changes: the watch is silent (bar HTTP/2 pings) for 5 idle timeouts.
    assert!(!closed_within(&mut conn, idle * 5).await, "closed with a stream open");
    let mut profile = client.get_profile(get(WEB)).await.unwrap().into_inner();
    assert!(profile.message().await.unwrap().is_some(), "no profile on the kept connection");
    drop(watch);
    assert!(!closed_within(&mut conn, idle * 2).await, "closed with a stream open");
    // The last stream ends (the client cancels it, as a proxy that no longer needs it).
    let ended = tokio::time::Instant::now();
    drop(profile);
    assert!(closed_within(&mut conn, Duration::from_secs(10)).await, "idle connection kept");
    assert!(ended.elapsed() >= idle - Duration::from_millis(50), "closed before its time");
    assert_eq!(metric(s.admin, IDLE_CLOSED).await.as_deref(), Some("1"));
}

/// At shutdown, connections get a GOAWAY: no new stream, while open ones go on for the
/// grace period; then the server stops and closes them.
#[tokio::test]
async fn shutdown_closes_connections_gracefully() {
    let mut s = serve(MAX_CONNECTION_IDLE).await;
    let (mut client, mut conn) = connect(s.grpc).await;
    let mut watch = client.get(get(WEB)).await.unwrap().into_inner();
    assert!(watch.message().await.unwrap().is_some());
    // Another client: hyper's client drops a connection whose new stream a GOAWAY refused.
    let (mut other, _other_conn) = connect(s.grpc).await;
    let _other_watch = other.get(get(WEB)).await.unwrap();
    s.stop.take().unwrap().send(()).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while other.get(get(WEB)).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "new streams served after the GOAWAY");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!conn.is_finished(), "closed before the grace period");
    let stopped = tokio::time::timeout(Duration::from_secs(10), &mut s.task).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "{stopped:?}");
    let ended = tokio::time::timeout(Duration::from_secs(5), &mut conn).await;
    assert!(ended.is_ok(), "connection kept after the server stopped");
}

/// The caps are checked by the server too, not only by the flags' parser.
#[tokio::test]
async fn bad_caps_stop_the_server_at_start() {
    let dir = temp_dir();
    let mut connections = ConnectionLimits::default();
    connections.incoming.max_client_handshakes = connections.incoming.max_handshakes + 1;
    let e = crate::run(config(&dir, connections), std::future::pending()).await.unwrap_err();
    assert!(e.to_string().starts_with("--max-client-handshakes (513) must not be more"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
