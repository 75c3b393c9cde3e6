//! TLS connections for the control plane's tonic servers (identity, destination): accepted
//! and handshaken concurrently so that a slow client cannot hold up the others, each
//! handed to tonic with its peer's address and, when it presented a certificate, identity.

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
    sync::mpsc,
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tonic::codegen::tokio_stream::Stream;

use crate::{IdentityName, pki::peer_identity};

/// How long a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
        let (tx, rx) = mpsc::channel(128);
        let task = tokio::spawn(accept(listener, acceptor, tx, on_handshake));
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
) {
    loop {
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
