//! TLS connections for the control plane's tonic servers (identity, destination): accepted
//! and handshaken concurrently so that a slow client cannot hold up the others, each
//! handed to tonic with its peer's address and, when it presented a certificate, identity.
//! At most `MAX_HANDSHAKES` are in progress at once; beyond that, new connections wait in
//! the listen backlog, so a flood of silent clients costs bounded memory.

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
    sync::{Semaphore, mpsc},
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
    Failed { peer: SocketAddr, error: &'a io::Error },
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
        Self::with_max_handshakes(listener, acceptor, on_handshake, MAX_HANDSHAKES)
    }

    /// As `new`, with at most `max` handshakes in progress.
    pub fn with_max_handshakes(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        on_handshake: OnHandshake,
        max: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(128);
        let handshakes = Arc::new(Semaphore::new(max.max(1)));
        let task = tokio::spawn(accept(listener, acceptor, tx, on_handshake, handshakes));
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

async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<io::Result<TlsConn>>,
    on_handshake: OnHandshake,
    handshakes: Arc<Semaphore>,
) {
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
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
                    let _ = tx.send(Ok(TlsConn { inner: tls, info })).await;
                }
                Err(error) => {
                    tracing::debug!(%error, client.addr = %peer, "TLS handshake failed");
                    on_handshake(Handshake::Failed { peer, error: &error });
                }
            }
        });
    }
}

/// A TLS connection as tonic wants it.
pub struct TlsConn {
    inner: TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> TlsConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
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

    /// With every handshake slot held by a silent client, a new client gets no answer to its
    /// ClientHello; once the silent one leaves, it does.
    #[tokio::test]
    async fn handshakes_in_progress_are_bounded() {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![key.cert.der().clone()], der)
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let _incoming = TlsIncoming::with_max_handshakes(listener, acceptor, Arc::new(|_| {}), 1);

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
