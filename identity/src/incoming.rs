//! TLS connections for the control plane's tonic servers (identity, destination): accepted
//! and handshaken concurrently so that a slow client cannot hold up the others, each
//! handed to tonic with its peer's address and, when it presented a certificate, identity.
//! At most `MAX_HANDSHAKES` are in progress at once; beyond that, new connections wait in
//! the listen backlog, so a flood of silent clients costs bounded memory. At most
//! `MAX_CONNECTIONS` are established at once (a permit held for each connection's life);
//! beyond that a new connection is closed as soon as it is accepted, and reported as
//! [`Handshake::Refused`] so that the server counts it. [`PlainIncoming`] applies the same
//! cap to plaintext connections.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tonic::codegen::tokio_stream::Stream;

use crate::{IdentityName, pki::peer_identity};

/// How long a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes in progress at once: each takes a millisecond or so of CPU, so this is
/// far above what thousands of proxies reconnecting together need.
pub const MAX_HANDSHAKES: usize = 512;

/// Most connections established at once, per listener. Each costs a socket, a TLS session
/// and an HTTP/2 connection's buffers (tens of KiB); a proxy holds one to each control-plane
/// service, so this is several thousand proxies per replica, well below the usual file
/// descriptor limit (65 536 in the chart's pods).
pub const MAX_CONNECTIONS: usize = 8192;

/// What tonic puts in each request's extensions.
#[derive(Clone, Debug)]
pub struct TlsConnectInfo {
    pub peer: SocketAddr,
    /// The identity the client's certificate proves (verified); `None` without one.
    pub client_id: Option<IdentityName>,
}

/// The outcome of one handshake, for the server's logs and metrics.
#[derive(Debug)]
pub enum Handshake<'a> {
    Done(&'a TlsConnectInfo),
    Failed {
        peer: SocketAddr,
        error: &'a io::Error,
    },
    /// Closed unhandshaken: `MAX_CONNECTIONS` (or the configured cap) were established.
    Refused {
        peer: SocketAddr,
    },
    /// `accept` itself failed (out of file descriptors and the like); retried shortly.
    AcceptFailed {
        error: &'a io::Error,
    },
}

/// Called once per handshake.
pub type OnHandshake = Arc<dyn Fn(Handshake<'_>) + Send + Sync>;

/// The stream of TLS connections of one listener; the accept task ends when it is dropped.
pub struct TlsIncoming {
    rx: mpsc::Receiver<io::Result<TlsConn>>,
    task: JoinHandle<()>,
}

impl TlsIncoming {
    /// Accepts on `listener` (on the current tokio runtime) with `acceptor`.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, on_handshake: OnHandshake) -> Self {
        Self::with_limits(listener, acceptor, on_handshake, MAX_HANDSHAKES, MAX_CONNECTIONS)
    }

    /// As `new`, with at most `max_handshakes` handshakes in progress and at most
    /// `max_connections` connections established.
    pub fn with_limits(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        on_handshake: OnHandshake,
        max_handshakes: usize,
        max_connections: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(128);
        let limits = Limits {
            handshakes: Arc::new(Semaphore::new(max_handshakes.max(1))),
            connections: Arc::new(Semaphore::new(max_connections.max(1))),
        };
        let task = tokio::spawn(accept(listener, acceptor, tx, on_handshake, limits));
        TlsIncoming { rx, task }
    }
}

impl Drop for TlsIncoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for TlsIncoming {
    type Item = io::Result<TlsConn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

struct Limits {
    handshakes: Arc<Semaphore>,
    connections: Arc<Semaphore>,
}

async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<io::Result<TlsConn>>,
    on_handshake: OnHandshake,
    limits: Limits,
) {
    loop {
        let Ok(permit) = limits.handshakes.clone().acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                on_handshake(Handshake::AcceptFailed { error: &error });
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Closed at once rather than left waiting: the client sees the refusal and retries
        // (another replica, later), and a waiting connection would cost what the cap saves.
        let Ok(conn_permit) = limits.connections.clone().try_acquire_owned() else {
            tracing::debug!(client.addr = %peer, "connection refused: too many connections");
            on_handshake(Handshake::Refused { peer });
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, tx, on_handshake) = (acceptor.clone(), tx.clone(), on_handshake.clone());
        tokio::spawn(async move {
            let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(r) => r,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "handshake timed out")),
            };
            drop(permit);
            match result {
                Ok(tls) => {
                    let client_id = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|der| peer_identity(der.as_ref()));
                    let info = TlsConnectInfo { peer, client_id };
                    on_handshake(Handshake::Done(&info));
                    let conn = Held { inner: tls, info, _permit: conn_permit };
                    let _ = tx.send(Ok(conn)).await;
                }
                Err(error) => {
                    tracing::debug!(%error, client.addr = %peer, "TLS handshake failed");
                    on_handshake(Handshake::Failed { peer, error: &error });
                }
            }
        });
    }
}

/// A connection as tonic wants it, holding its place under the cap while it lives: `T`
/// is the stream, `I` what tonic puts in each request's extensions.
pub struct Held<T, I> {
    inner: T,
    info: I,
    _permit: OwnedSemaphorePermit,
}

/// A TLS connection, with its peer's address and identity.
pub type TlsConn = Held<TlsStream<TcpStream>, TlsConnectInfo>;

/// A plaintext connection.
pub type PlainConn = Held<TcpStream, tonic::transport::server::TcpConnectInfo>;

impl<T, I: Clone + Send + Sync + 'static> tonic::transport::server::Connected for Held<T, I> {
    type ConnectInfo = I;

    fn connect_info(&self) -> I {
        self.info.clone()
    }
}

impl<T: AsyncRead + Unpin, I: Unpin> AsyncRead for Held<T, I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin, I: Unpin> AsyncWrite for Held<T, I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The stream of plaintext TCP connections of one listener, at most `max` established at
/// once (beyond that a new connection is closed at once and `on_refused` called); the accept
/// task ends when it is dropped.
pub struct PlainIncoming {
    rx: mpsc::Receiver<io::Result<PlainConn>>,
    task: JoinHandle<()>,
}

impl PlainIncoming {
    pub fn new(
        listener: TcpListener,
        max: usize,
        on_refused: Arc<dyn Fn(SocketAddr) + Send + Sync>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(128);
        let connections = Arc::new(Semaphore::new(max.max(1)));
        let task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    tracing::debug!(client.addr = %peer, "connection refused: too many connections");
                    on_refused(peer);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let info = tonic::transport::server::Connected::connect_info(&tcp);
                if tx.send(Ok(Held { inner: tcp, info, _permit: permit })).await.is_err() {
                    return;
                }
            }
        });
        PlainIncoming { rx, task }
    }
}

impl Drop for PlainIncoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for PlainIncoming {
    type Item = io::Result<PlainConn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A ClientHello for `localhost`, as rustls sends it.
    fn client_hello() -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        hello
    }

    fn acceptor() -> TlsAcceptor {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![key.cert.der().clone()], der)
            .unwrap();
        TlsAcceptor::from(Arc::new(config))
    }

    /// Reads until the server closes; an error (a reset) counts as closed too.
    async fn closed_within(mut c: TcpStream, d: Duration) -> bool {
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(d, c.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// With every connection slot held (here by a client still in its handshake), a new
    /// connection is closed at once and reported; once the slot is free, one is served.
    #[tokio::test]
    async fn tls_connections_are_capped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r = refused.clone();
        let on: OnHandshake = Arc::new(move |h| {
            if let Handshake::Refused { .. } = h {
                r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        let _incoming = TlsIncoming::with_limits(listener, acceptor(), on, 16, 1);

        let holder = TcpStream::connect(addr).await.unwrap();
        let mut refused_conn = TcpStream::connect(addr).await.unwrap();
        let _ = refused_conn.write_all(&client_hello()).await;
        assert!(closed_within(refused_conn, Duration::from_secs(5)).await, "not closed");
        assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 1);

        drop(holder);
        // The slot comes back when the holder's handshake ends (at its EOF).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut client = TcpStream::connect(addr).await.unwrap();
            client.write_all(&client_hello()).await.unwrap();
            let mut buf = [0u8; 5];
            let read = tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf));
            if let Ok(Ok(_)) = read.await {
                assert_eq!(buf[0], 22, "a TLS handshake record");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the slot never came back");
        }
    }

    /// Plaintext: the permit is held by the connection handed out; a new connection beyond
    /// the cap is closed and reported until that one is dropped.
    #[tokio::test]
    async fn plaintext_connections_are_capped() {
        use tonic::codegen::tokio_stream::StreamExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r = refused.clone();
        let mut incoming = PlainIncoming::new(
            listener,
            1,
            Arc::new(move |_| {
                r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }),
        );
        let _c1 = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        let c2 = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(c2, Duration::from_secs(5)).await, "not closed");
        assert_eq!(refused.load(std::sync::atomic::Ordering::Relaxed), 1);
        drop(first);
        let _c3 = TcpStream::connect(addr).await.unwrap();
        let third = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(matches!(third, Ok(Some(Ok(_)))), "not served once the slot was free");
    }

    /// With every handshake slot held by a silent client, a new client gets no answer to its
    /// ClientHello; once the silent one leaves, it does.
    #[tokio::test]
    async fn handshakes_in_progress_are_bounded() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = acceptor();
        let _incoming =
            TlsIncoming::with_limits(listener, acceptor, Arc::new(|_| {}), 1, MAX_CONNECTIONS);

        let silent = TcpStream::connect(addr).await.unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        client.write_all(&client_hello()).await.unwrap();
        let mut buf = [0u8; 5];
        let early = tokio::time::timeout(Duration::from_millis(300), client.read(&mut buf)).await;
        assert!(early.is_err(), "answered while the only slot was held: {early:?}");
        drop(silent);
        let read = tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf));
        read.await.expect("no ServerHello once the slot was free").unwrap();
        assert_eq!(buf[0], 22, "a TLS handshake record");
    }
}
