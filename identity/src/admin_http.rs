//! The HTTP/1 server of the control plane's admin ports (`/metrics`, `/ready`, `/live`):
//! bounded like everything that faces the network. A request's headers must arrive within
//! the header read timeout, which hyper also starts while a kept-alive connection waits for
//! its next request, so it is the idle timeout too; at most `max_connections` are open at
//! once, and a connection beyond that is closed as soon as it is accepted. Dropping the
//! server future closes its connections.

use std::{error::Error as StdError, sync::Arc, time::Duration};

use http::{Request, Response};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};

pub use hyper_util::service::TowerToHyperService;

/// How long a client may take to send a request's headers, and how long a connection may
/// sit idle between requests. Prometheus and the kubelet send theirs at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Most admin connections at once: a scraper or two and the kubelet's probes need a few.
pub const MAX_CONNECTIONS: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { header_read_timeout: HEADER_READ_TIMEOUT, max_connections: MAX_CONNECTIONS }
    }
}

/// Serves `service` on `listener` until the future is dropped.
pub async fn serve<S, B>(listener: TcpListener, limits: Limits, service: S)
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::warn!(%error, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::debug!(client.addr = %peer, "admin connection refused: too many connections");
                    continue;
                };
                let service = service.clone();
                conns.spawn(async move {
                    let mut builder = http1::Builder::new();
                    // Without a timer hyper ignores header_read_timeout.
                    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(error) = conn.await {
                        tracing::debug!(%error, client.addr = %peer, "admin connection failed");
                    }
                    drop(slot);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;

    async fn start(limits: Limits) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
        });
        (addr, tokio::spawn(serve(listener, limits, svc)))
    }

    /// Reads until the server closes (EOF or reset); `None` if it did not within `d`.
    async fn closed_within(c: &mut TcpStream, d: Duration) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, c.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => return Some(got),
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            }
        }
    }

    const GET: &[u8] = b"GET /live HTTP/1.1\r\nHost: admin\r\n\r\n";

    /// A client that sends half a request head, one that says nothing, and one that stays
    /// idle after a request are all closed within the header read timeout.
    #[tokio::test]
    async fn slow_silent_and_idle_clients_are_closed() {
        let limits = Limits { header_read_timeout: Duration::from_millis(300), max_connections: 8 };
        let (addr, _server) = start(limits).await;
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial.write_all(b"GET /live HTTP/1.1\r\nHost: ").await.unwrap();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(GET).await.unwrap();
        for c in [&mut partial, &mut silent, &mut idle] {
            let got = closed_within(c, Duration::from_secs(5)).await;
            assert!(got.is_some(), "a connection outlived the header read timeout");
        }
        // The idle one was answered before it was closed.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(GET).await.unwrap();
        let got = closed_within(&mut idle, Duration::from_secs(5)).await.unwrap();
        assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    }

    /// Beyond the cap a connection is closed at once, unanswered; once a slot is free, a new
    /// one is served.
    #[tokio::test]
    async fn connections_are_capped() {
        let limits = Limits { header_read_timeout: Duration::from_secs(30), max_connections: 1 };
        let (addr, _server) = start(limits).await;
        let holder = TcpStream::connect(addr).await.unwrap();
        let mut over = TcpStream::connect(addr).await.unwrap();
        let _ = over.write_all(GET).await;
        let got = closed_within(&mut over, Duration::from_secs(5)).await;
        assert_eq!(got.as_deref(), Some(&b""[..]), "not closed unanswered");
        drop(holder);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /live HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let got = closed_within(&mut c, Duration::from_secs(5)).await.unwrap_or_default();
            if got.starts_with(b"HTTP/1.1 200") {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the slot never came back");
        }
    }
}
