//! `MeteredIo`: a TCP stream that first replays the bytes protocol detection already
//! read, and counts what passes through it in the connection's transport metrics (the
//! close is recorded when it is dropped).

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
}

impl MeteredIo {
    /// `prefix` was read from `stream` already (and is counted as read here).
    pub fn new(stream: TcpStream, prefix: BytesMut, metrics: ConnMetrics) -> Self {
        metrics.read_bytes.inc_by(prefix.len() as u64);
        MeteredIo { stream, prefix, metrics: Some(metrics), pending: (0, 0) }
    }

    /// For a connection whose labels are known only later (after a TLS handshake):
    /// bytes are counted once `set_metrics` is called.
    pub fn deferred(stream: TcpStream, prefix: BytesMut) -> Self {
        let pending = (prefix.len() as u64, 0);
        MeteredIo { stream, prefix, metrics: None, pending }
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
        r
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
        r
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
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
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
}
