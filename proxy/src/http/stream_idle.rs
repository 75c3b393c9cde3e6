//! The stream idle timeout: an upstream that sent its response headers and then nothing
//! more (no data, no end) for this long has its response cut, as Envoy's
//! `stream_idle_timeout` does; so has a client's request whose body stops coming. Without
//! it, a backend that stalls mid-body while it still answers pings holds the client's
//! stream, and everything the proxy keeps for it, until the client gives up (and a client
//! that stalls its upload, the upstream's).
//!
//! Cheap for the bodies that never wait: the timer is made the first time the body has
//! nothing to give, and then moved on only when it fires (the time of the last frame is
//! noted, and the deadline is taken from it), so a streaming body costs a clock read per
//! frame, not a timer per frame.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tracing::debug;

use super::pool::{BodyError, UpstreamBody};
use crate::metrics::{Direction, Metrics};

/// The `error` label of `{inbound,outbound}_http_errors_total` for a response cut by it.
pub const ERROR_LABEL: &str = "stream_idle_timeout";

/// A body (an upstream's response's, or a client's request's), cut with
/// `BodyError::StreamIdle` after `timeout` without a frame. Small, as it is part of every proxied response: the timer and the time of the
/// last frame are allocated on the first wait.
pub struct StreamIdle<B = UpstreamBody> {
    inner: B,
    /// `None`: no limit (the default), and nothing kept for one.
    limit: Option<Limit>,
}

struct Limit {
    timeout: Duration,
    metrics: Arc<Metrics>,
    direction: Direction,
    /// Made on the first wait.
    armed: Option<Box<Armed>>,
}

/// The timer of a body that has waited.
struct Armed {
    timer: Pin<Box<Sleep>>,
    /// When the body last gave a frame (or began to wait).
    progress: Instant,
}

impl<B> StreamIdle<B> {
    /// `timeout` zero: no limit.
    pub fn new(inner: B, timeout: Duration, metrics: &Arc<Metrics>, direction: Direction) -> Self {
        let limit = (!timeout.is_zero()).then(|| Limit {
            timeout,
            metrics: metrics.clone(),
            direction,
            armed: None,
        });
        StreamIdle { inner, limit }
    }
}

impl Limit {
    /// Ready once the body has waited `timeout` since its last frame.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let timeout = self.timeout;
        let armed = self.armed.get_or_insert_with(|| {
            let timer = Box::pin(tokio::time::sleep(timeout));
            Box::new(Armed { timer, progress: Instant::now() })
        });
        loop {
            ready!(armed.timer.as_mut().poll(cx));
            let due = armed.progress + timeout;
            if due <= Instant::now() {
                return Poll::Ready(());
            }
            // Frames came since it was set: it moves to the last one's deadline.
            armed.timer.as_mut().reset(due);
        }
    }
}

impl<B: Body<Data = Bytes, Error = BodyError> + Unpin> Body for StreamIdle<B> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let Some(limit) = &mut this.limit else { return polled };
        if polled.is_ready() {
            if let Some(armed) = &mut limit.armed {
                armed.progress = Instant::now();
            }
            return polled;
        }
        ready!(limit.poll_expired(cx));
        let timeout = limit.timeout;
        debug!(?timeout, "a body sent nothing more for the stream idle timeout; cut");
        limit.metrics.http.error(limit.direction, ERROR_LABEL);
        // Once: the body is done.
        this.limit = None;
        Poll::Ready(Some(Err(BodyError::StreamIdle(timeout))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use tokio::sync::mpsc;

    use super::*;

    type Sent = Result<Frame<Bytes>, BodyError>;

    /// A body fed by hand through a channel.
    struct Fed(mpsc::Receiver<Sent>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = BodyError;

        fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Sent>> {
            self.get_mut().0.poll_recv(cx)
        }
    }

    /// A fed body limited to `timeout`, and the metrics it counts in.
    fn body(timeout: Duration) -> (mpsc::Sender<Sent>, StreamIdle<Fed>, Arc<Metrics>) {
        let (tx, rx) = mpsc::channel(4);
        let metrics = Metrics::new(100);
        (tx, StreamIdle::new(Fed(rx), timeout, &metrics, Direction::Outbound), metrics)
    }

    fn data() -> Sent {
        Ok(Frame::data(Bytes::from_static(b"a")))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_silent_for_the_timeout_is_cut_and_counted() {
        let (tx, mut body, metrics) = body(Duration::from_secs(10));
        tx.send(data()).await.expect("send");
        assert!(body.frame().await.expect("frame").is_ok());
        let started = Instant::now();
        let cut = body.frame().await.expect("an error");
        assert!(matches!(cut, Err(BodyError::StreamIdle(t)) if t == Duration::from_secs(10)));
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        let text = metrics.render();
        let series = "outbound_http_errors_total{error=\"stream_idle_timeout\"} 1\n";
        assert!(text.contains(series), "{text}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn frames_closer_than_the_timeout_keep_the_body_going() {
        let (tx, mut body, _) = body(Duration::from_secs(10));
        let feed = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(6)).await;
                tx.send(data()).await.expect("send");
            }
        });
        let started = Instant::now();
        for _ in 0..10 {
            assert!(body.frame().await.expect("frame").is_ok());
        }
        // Six times the timeout, and nothing cut; then the sender is gone: the end.
        assert_eq!(started.elapsed(), Duration::from_secs(60));
        feed.await.expect("fed");
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_timeout_is_no_limit() {
        let (_tx, mut body, _) = body(Duration::ZERO);
        let waited = tokio::time::timeout(Duration::from_secs(3600), body.frame()).await;
        assert!(waited.is_err(), "the body ended or was cut");
    }
}
