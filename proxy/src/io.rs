//! `MeteredIo`: a TCP stream that first replays the bytes protocol detection already
//! read, and counts what passes through it in the connection's transport metrics (the
//! close is recorded when it is dropped, with the errno of the first I/O error it saw, or
//! of the one its owner reports with `fail`).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::metrics::ConnMetrics;

#[derive(Debug)]
pub struct MeteredIo {
    stream: TcpStream,
    prefix: BytesMut,
    metrics: Option<ConnMetrics>,
    /// Bytes (read, written) before the metrics were known (a TLS handshake).
    pending: (u64, u64),
    /// The first error of the connection, recorded at its close.
    error: Option<io::Error>,
}

impl MeteredIo {
    /// `prefix` was read from `stream` already (and is counted as read here).
    pub fn new(stream: TcpStream, prefix: BytesMut, metrics: ConnMetrics) -> Self {
        metrics.read_bytes.inc_by(prefix.len() as u64);
        MeteredIo { stream, prefix, metrics: Some(metrics), pending: (0, 0), error: None }
    }

    /// For a connection whose labels are known only later (after a TLS handshake):
    /// bytes are counted once `set_metrics` is called.
    pub fn deferred(stream: TcpStream, prefix: BytesMut) -> Self {
        let pending = (prefix.len() as u64, 0);
        MeteredIo { stream, prefix, metrics: None, pending, error: None }
    }

    pub fn set_metrics(&mut self, metrics: ConnMetrics) {
        metrics.read_bytes.inc_by(self.pending.0);
        metrics.write_bytes.inc_by(self.pending.1);
        self.pending = (0, 0);
        self.metrics = Some(metrics);
    }

    fn count_read(&mut self, n: usize) {
        match &self.metrics {
            Some(m) => {
                m.read_bytes.inc_by(n as u64);
            }
            None => self.pending.0 += n as u64,
        }
    }

    fn count_write(&mut self, n: usize) {
        match &self.metrics {
            Some(m) => {
                m.write_bytes.inc_by(n as u64);
            }
            None => self.pending.1 += n as u64,
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The connection failed (here or on the side it was forwarded to): its close is
    /// recorded with this error, unless it saw one itself first, and it is reset when
    /// dropped so that the peer sees the failure too.
    pub fn fail(&mut self, e: &io::Error) {
        self.error.get_or_insert_with(|| copy_error(e));
        crate::forward::reset_on_drop(&self.stream);
    }

    /// Keeps the first error a poll returned.
    fn note<T>(&mut self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &r {
            self.error.get_or_insert_with(|| copy_error(e));
        }
        r
    }
}

/// A stream over a `MeteredIo` (TLS over it, or a prefix before it), so that a failure
/// seen above it can be recorded on the connection's metrics.
pub trait Metered {
    fn metered(&mut self) -> &mut MeteredIo;
}

impl Metered for MeteredIo {
    fn metered(&mut self) -> &mut MeteredIo {
        self
    }
}

impl<T: Metered> Metered for Prefixed<T> {
    fn metered(&mut self) -> &mut MeteredIo {
        self.inner.metered()
    }
}

impl Metered for tokio_rustls::client::TlsStream<MeteredIo> {
    fn metered(&mut self) -> &mut MeteredIo {
        self.get_mut().0
    }
}

impl Metered for tokio_rustls::server::TlsStream<MeteredIo> {
    fn metered(&mut self) -> &mut MeteredIo {
        self.get_mut().0
    }
}

/// What the close needs of an error (its errno), kept apart from the error returned.
fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

impl Drop for MeteredIo {
    fn drop(&mut self) {
        if let Some(m) = self.metrics.take() {
            m.close(self.error.as_ref());
        }
    }
}

impl AsyncRead for MeteredIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Free the detection buffer: the connection may live long.
                this.prefix = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            this.count_read(buf.filled().len() - before);
        }
        this.note(r)
    }
}

impl AsyncWrite for MeteredIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            this.count_write(n);
        }
        this.note(r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            this.count_write(n);
        }
        this.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_flush(cx);
        this.note(r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.stream).poll_shutdown(cx);
        this.note(r)
    }
}

/// A stream that first yields `prefix` (bytes already read from it, e.g. past a transport
/// header), then reads from `inner`.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: BytesMut,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: BytesMut, inner: T) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                this.prefix = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    // Forwarded, or h2 would write a frame's head and its payload in separate calls: over
    // TLS each call is a record and a system call of its own, and the peer wakes twice.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// The inbound mTLS path serves HTTP/2 over a `Prefixed` stream: h2 writes a frame's
    /// head and payload as one vectored write only when the stream says it can.
    #[tokio::test]
    async fn prefixed_keeps_vectored_writes_whole() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut server, _) = listener.accept().await.expect("accept");
        let mut client = Prefixed::new(BytesMut::from(&b"before"[..]), client);
        assert!(client.is_write_vectored());
        let (head, payload) = (b"frame head;".as_slice(), b"frame payload".as_slice());
        let n = client
            .write_vectored(&[IoSlice::new(head), IoSlice::new(payload)])
            .await
            .expect("write");
        assert_eq!(n, head.len() + payload.len(), "both slices in one write");
        client.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"frame head;frame payload");
    }

    /// A connection's close carries the errno of its first error: one it saw (the peer
    /// reset it), or one its owner reports (the other side of a splice failed), in which
    /// case it is reset too.
    #[tokio::test]
    async fn the_close_carries_the_first_error() {
        use crate::metrics::{Direction, Metrics, Peer, TlsLabels};
        let metrics = Metrics::new(100);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = |port| {
            let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let p = crate::detect::Protocol::Opaque;
            metrics.open(Direction::Inbound, Peer::Src, &target, &p, TlsLabels::disabled())
        };
        let closed = |port: u16, errno: &str| {
            let m = metrics.render();
            m.lines().any(|l| {
                l.starts_with("tcp_close_total{")
                    && l.contains(&format!(":{port}\""))
                    && l.contains(&format!("errno=\"{errno}\""))
                    && l.ends_with(" 1")
            })
        };

        // The peer resets: the read fails with ECONNRESET.
        let peer = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let mut io = MeteredIo::new(server, BytesMut::new(), open(1));
        crate::forward::reset_on_drop(&peer);
        drop(peer);
        let mut buf = [0u8; 8];
        let e = io.read(&mut buf).await.expect_err("reset");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
        drop(io);
        assert!(closed(1, "ECONNRESET"), "{}", metrics.render());

        // A failure elsewhere, reported: recorded, and this side is reset.
        let mut peer = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let mut io = MeteredIo::new(server, BytesMut::new(), open(2));
        io.fail(&io::Error::from_raw_os_error(libc::ETIMEDOUT));
        drop(io);
        assert!(closed(2, "ETIMEDOUT"), "{}", metrics.render());
        let e = peer.read(&mut buf).await.expect_err("the peer sees a reset");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    }
}
