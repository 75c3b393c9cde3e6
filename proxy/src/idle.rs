//! Idle client connections: what a served HTTP connection has in flight and since when it
//! has had nothing, and the watch that closes an idle one gracefully, so that a client that
//! connects and then says nothing cannot hold a connection slot for ever. Shared by the
//! admin port and the proxy's HTTP/2 server connections. For HTTP/1, whose idle limit is
//! hyper's header-read timeout, what the connection has read tells an idle keep-alive
//! connection (a normal close) from a client that sent part of a request head and stalled.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, sleep_until},
};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How long a connection asked to close may then sit with nothing in flight before it is
/// dropped: an HTTP/2 client that never acknowledges the GOAWAY's ping, or never closes.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// When the connection began; `last_end_ms` counts from it.
    began: Instant,
    /// When the last request ended, in ms since `began` (an atomic: set once per request,
    /// on HTTP/1 and HTTP/2 alike, without a lock).
    last_end_ms: AtomicU64,
    /// Bytes read from the client, when its reads are counted (`CountReads`).
    read: AtomicU64,
    /// `read` when the last request ended; `NONE_ENDED` before the first.
    read_at_last_end: AtomicU64,
}

const NONE_ENDED: u64 = u64::MAX;

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            began: Instant::now(),
            last_end_ms: AtomicU64::new(0),
            read: AtomicU64::new(0),
            read_at_last_end: AtomicU64::new(NONE_ENDED),
        })
    }

    /// Whether the connection is only idle between requests: a request has ended, none
    /// is in flight, and not a byte of another has been read since (its reads counted by
    /// `CountReads`). A timeout then closes a keep-alive connection, which is normal, rather
    /// than cutting off a client that is slow to send a request. (A pipelined request that
    /// arrived, in part, before the one ahead of it ended is not told apart.)
    pub fn between_requests(&self) -> bool {
        let at_end = self.read_at_last_end.load(Ordering::Acquire);
        !self.busy() && at_end != NONE_ENDED && at_end == self.read.load(Ordering::Acquire)
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// How long nothing has been in flight (zero while something is).
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let last_end = Duration::from_millis(self.last_end_ms.load(Ordering::Acquire));
        self.began.elapsed().saturating_sub(last_end)
    }

    fn note_end(&self) {
        let since_began = self.began.elapsed().as_millis() as u64;
        self.last_end_ms.store(since_began, Ordering::Release);
        let read = self.read.load(Ordering::Acquire);
        self.read_at_last_end.store(read, Ordering::Release);
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
}

/// Ends a request's activity when dropped (the request answered, or given up).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        // The end that matters is the last one, when nothing is left in flight: only then
        // is the clock read (a busy HTTP/2 connection ends many streams without it). It
        // is noted before the count drops, so `idle_for` never pairs zero in flight with
        // an older end; two ends racing at a count of two may both skip it, and the last
        // of them notes it after.
        let last = a.in_flight.load(Ordering::Acquire) == 1;
        if last {
            a.note_end();
        }
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 && !last {
            a.note_end();
        }
    }
}

/// A client connection whose reads are counted in its `Activity`.
#[derive(Debug)]
pub struct CountReads<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> CountReads<I> {
    pub fn new(io: I, activity: Arc<Activity>) -> Self {
        CountReads { io, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for CountReads<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.activity.read.fetch_add(n, Ordering::AcqRel);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for CountReads<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Drives a served connection to its end. Once nothing has been in flight for
/// `idle_timeout`, or `stop` is cancelled, asks it to close with `shutdown` (HTTP/2: GOAWAY,
/// the streams in flight finish); if it has not closed and has nothing in flight
/// `CLOSE_GRACE` later, gives up on it: `None` (dropping it closes the socket). One timer
/// per connection, which wakes about once per `idle_timeout`.
pub async fn watch<C: Future>(
    mut conn: Pin<&mut C>,
    shutdown: impl Fn(Pin<&mut C>),
    activity: &Activity,
    idle_timeout: Duration,
    stop: &CancellationToken,
) -> Option<C::Output> {
    let mut closing = false;
    let deadline = sleep_until(Instant::now() + idle_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = conn.as_mut() => return Some(r),
            _ = stop.cancelled(), if !closing => {
                closing = true;
                shutdown(conn.as_mut());
                deadline.as_mut().reset(Instant::now() + CLOSE_GRACE);
            }
            _ = &mut deadline => {
                let idle = activity.idle_for();
                if closing {
                    if !activity.busy() {
                        debug!("connection did not close in time; dropping it");
                        return None;
                    }
                    deadline.as_mut().reset(Instant::now() + CLOSE_GRACE);
                } else if idle >= idle_timeout {
                    debug!(?idle_timeout, "connection idle; closing");
                    closing = true;
                    shutdown(conn.as_mut());
                    deadline.as_mut().reset(Instant::now() + CLOSE_GRACE);
                } else {
                    deadline.as_mut().reset(Instant::now() + (idle_timeout - idle));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn only_a_connection_with_nothing_read_since_its_last_request_is_between_requests() {
        let activity = Activity::new();
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = CountReads::new(server, activity.clone());
        let mut buf = [0u8; 64];
        // Nothing has ended yet: a client slow with its first request is not idle.
        assert!(!activity.between_requests(), "before any request");
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        let n = io.read(&mut buf).await.expect("read");
        assert!(n > 0);
        let request = activity.begin();
        assert!(!activity.between_requests(), "a request in flight");
        drop(request);
        assert!(activity.between_requests(), "its response ended, nothing read since");
        // Part of the next request head: a client that stalls now is not just idle.
        client.write_all(b"GE").await.expect("write");
        assert_eq!(io.read(&mut buf).await.expect("read"), 2);
        assert!(!activity.between_requests(), "part of a request was read");
        drop(activity.begin());
        assert!(activity.between_requests(), "that request ended too");
    }
}
