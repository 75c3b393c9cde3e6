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
    metrics: ConnMetrics,
}

impl MeteredIo {
    /// `prefix` was read from `stream` already (and is counted as read here).
    pub fn new(stream: TcpStream, prefix: BytesMut, metrics: ConnMetrics) -> Self {
        metrics.read_bytes.inc_by(prefix.len() as u64);
        MeteredIo { stream, prefix, metrics }
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
            this.metrics.read_bytes.inc_by((buf.filled().len() - before) as u64);
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
            this.metrics.write_bytes.inc_by(n as u64);
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
            this.metrics.write_bytes.inc_by(n as u64);
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
