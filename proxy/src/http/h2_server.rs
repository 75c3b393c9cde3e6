//! The proxy's HTTP/2 server on the h2 crate, without hyper's server between. Each
//! stream's request runs on a task of its own (so the streams of one connection proceed
//! independently), and that task answers on the stream itself: the response head, then
//! the body through the window, then trailers. What hyper's server did for the proxy is
//! done here too: the `Date` header when a response has none, `Content-Length` from a
//! body of known size, a request given up when the client resets its stream, `CONNECT`
//! tunnels over a stream, pings that find a vanished client, and a graceful close
//! (GOAWAY, the streams in flight finish).

use std::{
    future::{Future, poll_fn},
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, ready},
    time::SystemTime,
};

use bytes::{Buf, Bytes};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::oneshot,
};
use tracing::debug;

use super::{
    H2_KEEP_ALIVE_TIMEOUT, HttpConfig, RspBody, h2_keep_alive,
    h2_upstream::{H2Body, poll_send_capacity, pump},
    pool::{self, BodyError, ReqBody},
};
use crate::idle::Activity;

/// Receive windows and limits as hyper's HTTP/2 server set them, so that serving on h2
/// directly changes nothing on the wire.
const STREAM_WINDOW: u32 = 1024 * 1024;
const CONN_WINDOW: u32 = 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;

/// Why a served HTTP/2 connection ended in failure.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    H2(#[from] h2::Error),
    #[error("the client did not answer a ping within {H2_KEEP_ALIVE_TIMEOUT:?}")]
    KeepAliveTimeout,
}

impl ServeError {
    /// The `{inbound,outbound}_http_errors_total` label.
    pub fn label(&self) -> &'static str {
        match self {
            ServeError::KeepAliveTimeout => "keepalive_timeout",
            ServeError::H2(e) => match e.get_io().map(io::Error::kind) {
                Some(
                    io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe,
                ) => "client_closed",
                // Protocol errors, including the rapid-reset and header-flood limits.
                _ => "connection_error",
            },
        }
    }
}

/// One served HTTP/2 connection: a future that ends when the connection does. `handle`
/// makes each request's response.
pub struct Server<I, S> {
    state: State<I>,
    handle: S,
    activity: Arc<Activity>,
    closing: bool,
    /// `h2_keep_alive` on the connection's pings, once the handshake is done; ready when
    /// the client did not answer one in time.
    keep_alive: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// The connection's state: handshaking (boxed: it is short-lived), then serving.
enum State<I> {
    Handshaking(Pin<Box<h2::server::Handshake<I, Bytes>>>),
    Serving(Box<h2::server::Connection<I, Bytes>>),
}

impl<I, S, F> Server<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Fn(Request<ReqBody>) -> F + Unpin,
    F: Future<Output = Response<RspBody>> + Send + 'static,
{
    /// Serves HTTP/2 on `io` (the client's preface not yet read); `activity` counts the
    /// streams in flight, each until its response body has been sent.
    pub fn new(io: I, config: &HttpConfig, activity: Arc<Activity>, handle: S) -> Self {
        let handshake = h2::server::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_concurrent_streams(config.h2_max_concurrent_streams)
            .max_header_list_size(config.max_header_bytes as u32)
            .max_pending_accept_reset_streams(config.h2_max_pending_reset_streams)
            .max_local_error_reset_streams(Some(config.h2_max_local_error_reset_streams))
            .handshake(io);
        Server {
            state: State::Handshaking(Box::pin(handshake)),
            handle,
            activity,
            closing: false,
            keep_alive: None,
        }
    }

    /// Asks the connection to close: GOAWAY; the streams in flight finish first.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        let this = self.get_mut();
        this.closing = true;
        if let State::Serving(conn) = &mut this.state {
            conn.graceful_shutdown();
        }
    }
}

/// Starts answering a stream the client opened, on a task of its own.
fn accept<S, F>(
    handle: &S,
    activity: &Arc<Activity>,
    req: Request<h2::RecvStream>,
    respond: h2::server::SendResponse<Bytes>,
) where
    S: Fn(Request<ReqBody>) -> F,
    F: Future<Output = Response<RspBody>> + Send + 'static,
{
    let in_flight = activity.begin();
    let (mut parts, recv) = req.into_parts();
    let mut leftover = None;
    let (body, tunnel) = if parts.method == Method::CONNECT {
        // The stream itself is the tunnel, once the upstream has said yes.
        let (tx, rx) = oneshot::channel();
        parts.extensions.insert(ClientTunnel(Arc::new(Mutex::new(Some(rx)))));
        (pool::empty_body(), Some((recv, tx)))
    } else if recv.is_end_stream() {
        (pool::empty_body(), None)
    } else {
        let slot = Leftover::default();
        leftover = Some(slot.clone());
        let body = RequestBody { body: Some(H2Body::request(recv)), leftover: slot };
        (body.map_err(BodyError::H2).boxed_unsync(), None)
    };
    let head_request = parts.method == Method::HEAD;
    let rsp = handle(Request::from_parts(parts, body));
    tokio::spawn(async move {
        answer(respond, rsp, tunnel, head_request).await;
        // The proxy answered without reading the whole request (a refusal, an injected
        // failure, an upstream that answered early): the rest is read, so that a client
        // still sending a short body gets no reset.
        let rest = leftover.and_then(|l| l.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(rest) = rest {
            drain(rest).await;
        }
        drop(in_flight);
    });
}

impl<I, S, F> Future for Server<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Fn(Request<ReqBody>) -> F + Unpin,
    F: Future<Output = Response<RspBody>> + Send + 'static,
{
    type Output = Result<(), ServeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Server { state, handle, activity, closing, keep_alive } = self.get_mut();
        if let State::Handshaking(handshake) = state {
            let mut conn = ready!(handshake.as_mut().poll(cx))?;
            *keep_alive = Some(Box::pin(h2_keep_alive(conn.ping_pong())));
            if *closing {
                conn.graceful_shutdown();
            }
            *state = State::Serving(Box::new(conn));
        }
        let State::Serving(conn) = state else { unreachable!("the handshake is done") };
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => accept(handle, activity, req, respond),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                // Closed, every stream done.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => break,
            }
        }
        match keep_alive.as_mut().map(|k| k.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(ServeError::KeepAliveTimeout)),
            _ => Poll::Pending,
        }
    }
}

/// Answers one stream: waits for the response (giving the request up if the client resets
/// the stream first), sends its head, then its body — none for a response that has no
/// content (RFC 9110 §6.4.1: to HEAD, a 204 or a 304), whatever the upstream sent.
async fn answer(
    mut respond: h2::server::SendResponse<Bytes>,
    rsp: impl Future<Output = Response<RspBody>>,
    tunnel: Option<(h2::RecvStream, oneshot::Sender<H2Io>)>,
    head_request: bool,
) {
    let rsp = tokio::select! {
        biased;
        rsp = rsp => rsp,
        reason = poll_fn(|cx| respond.poll_reset(cx)) => {
            debug!(?reason, "the client reset its stream; request given up");
            return;
        }
    };
    let (mut head, body) = rsp.into_parts();
    if !head.headers.contains_key(header::DATE) {
        head.headers.insert(header::DATE, date());
    }
    if let Some((recv, tx)) = tunnel
        && head.status.is_success()
    {
        // The HTTP/1.1 upstream's answer, as HTTP/2 allows it: no connection-specific
        // headers, and no length for a tunnel.
        super::strip_hop_by_hop(&mut head.headers, super::Hop::Response);
        head.headers.remove(header::CONTENT_LENGTH);
        match respond.send_response(Response::from_parts(head, ()), false) {
            Ok(send) => {
                let _ = tx.send(H2Io { recv, send, read: Bytes::new() });
            }
            Err(e) => debug!(error = %e, "answering CONNECT failed"),
        }
        return;
    }
    let no_content = head_request
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED;
    if head.status == StatusCode::NO_CONTENT {
        // Never sent with a 204 (RFC 9110 §8.6).
        head.headers.remove(header::CONTENT_LENGTH);
    }
    let eos = no_content || body.is_end_stream();
    if !eos
        && !head.headers.contains_key(header::CONTENT_LENGTH)
        && let Some(len) = body.size_hint().exact()
    {
        head.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    match respond.send_response(Response::from_parts(head, ()), eos) {
        Ok(send) if !eos => {
            pump(body, send, reset_reason).await;
        }
        Ok(_) if no_content => body.end_without_content(),
        Ok(_) => {}
        Err(e) => debug!(error = %e, "sending the response head failed"),
    }
}

/// A request body left unread when its response was complete is read (and dropped) up to
/// this much, for this long, before the stream is reset (`NO_ERROR`, RFC 9113 §8.1). Some
/// clients (curl) take even that reset as a failure of the request, so a short body is
/// better taken whole; this much the stream window lets a client send without waiting.
const DRAIN_BYTES: usize = STREAM_WINDOW as usize;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Where a request body dropped before its end leaves its stream.
type Leftover = Arc<Mutex<Option<H2Body>>>;

/// A client's request body, from its stream.
struct RequestBody {
    body: Option<H2Body>,
    leftover: Leftover,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, h2::Error>>> {
        match &mut self.body {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.as_ref().map(Body::size_hint).unwrap_or_default()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let Some(body) = self.body.take().filter(|b| !b.is_end_stream()) {
            *self.leftover.lock().unwrap_or_else(|e| e.into_inner()) = Some(body);
        }
    }
}

/// Reads what is left of a request body, within `DRAIN_BYTES` and `DRAIN_TIME`.
async fn drain(mut rest: H2Body) {
    let read = async {
        let mut left = DRAIN_BYTES;
        while let Some(Ok(frame)) = rest.frame().await {
            let n = frame.data_ref().map_or(0, Bytes::len);
            if n > left {
                return;
            }
            left -= n;
        }
    };
    if tokio::time::timeout(DRAIN_TIME, read).await.is_err() {
        debug!(limit = ?DRAIN_TIME, "the client did not end its unread request body in time; resetting its stream");
    }
}

/// The code a client's stream is reset with when its response body fails: the upstream's
/// own reset code when it reset its stream, else `INTERNAL_ERROR` — also for an upstream's
/// `NO_ERROR`, which cut the body (a complete one would not fail): passed on, it would
/// read as a clean end to a client that takes it the way HTTP/2 allows after a complete
/// response.
fn reset_reason(e: &BodyError) -> h2::Reason {
    match e {
        BodyError::H2(e) => match e.reason() {
            Some(h2::Reason::NO_ERROR) | None => h2::Reason::INTERNAL_ERROR,
            Some(reason) => reason,
        },
        BodyError::H1(_) | BodyError::StreamIdle(_) => h2::Reason::INTERNAL_ERROR,
    }
}

/// The `Date` header a response without one gets (RFC 9110 §6.6.1), formatted once a
/// second per thread.
fn date() -> HeaderValue {
    thread_local! {
        static CACHED: std::cell::RefCell<(u64, Option<HeaderValue>)> =
            const { std::cell::RefCell::new((0, None)) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, value)| match value {
        Some(v) if *at == secs => v.clone(),
        _ => {
            let v = HeaderValue::try_from(httpdate::fmt_http_date(now))
                .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
            *at = secs;
            *value = Some(v.clone());
            v
        }
    })
}

/// On a `CONNECT` request from an HTTP/2 client: its stream, as a byte stream, once the
/// response said yes. (An extension must be `Clone`; only one taker gets it.)
#[derive(Clone)]
pub struct ClientTunnel(Arc<Mutex<Option<oneshot::Receiver<H2Io>>>>);

impl ClientTunnel {
    /// The stream, once the 2xx has been sent; `None` if the stream never got one.
    pub async fn stream(self) -> Option<H2Io> {
        let rx = self.0.lock().unwrap_or_else(|e| e.into_inner()).take()?;
        rx.await.ok()
    }
}

/// A `CONNECT` stream as a byte stream: DATA frames in, DATA frames out (RFC 9113 §8.5);
/// shutting down the write side ends the stream, a reset fails it.
pub struct H2Io {
    recv: h2::RecvStream,
    send: h2::SendStream<Bytes>,
    /// What was received and not yet read.
    read: Bytes,
}

impl AsyncRead for H2Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.read.has_remaining() {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.read = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io_error(e))),
                // The client ended its side: end of file.
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read[..n]);
        self.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = match ready!(poll_send_capacity(&mut self.send, buf.len(), cx)) {
            Ok(n) => n,
            Err(e) => return Poll::Ready(Err(h2_io_error(e))),
        };
        match self.send.send_data(Bytes::copy_from_slice(&buf[..n]), false) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(h2_io_error(e))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Capacity is not needed for an empty frame that ends the stream.
        Poll::Ready(self.send.send_data(Bytes::new(), true).map_err(h2_io_error))
    }
}

fn h2_io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io().unwrap_or_else(|| io::ErrorKind::Other.into())
    } else {
        io::Error::new(io::ErrorKind::ConnectionReset, e)
    }
}

#[cfg(test)]
mod tests {
    //! The server against the h2 crate's client over an in-memory pipe, on paused time:
    //! the pings that find a vanished client, and that they leave a live one alone; a
    //! client's reset ending a response that waits for its body.

    use std::time::Duration;

    use http_body_util::Full;

    use tokio::time::Instant;

    use super::*;
    use crate::http::{H2_KEEP_ALIVE_INTERVAL, TargetSet};

    fn config() -> HttpConfig {
        HttpConfig {
            response_header_timeout: Duration::ZERO,
            stream_idle_timeout: Duration::ZERO,
            idle_timeout: Duration::from_secs(3600),
            max_header_bytes: 16 * 1024,
            h2_max_concurrent_streams: 100,
            h2_max_pending_reset_streams: 20,
            h2_max_local_error_reset_streams: 1024,
            h2_upgrade: TargetSet::default(),
        }
    }

    /// Answers every request with "hello".
    fn server(
        io: tokio::io::DuplexStream,
    ) -> Server<
        tokio::io::DuplexStream,
        impl Fn(Request<ReqBody>) -> std::future::Ready<Response<RspBody>> + Unpin,
    > {
        let hello = |_| {
            let body = Full::new(Bytes::from_static(b"hello")).map_err(|never| match never {});
            std::future::ready(Response::new(RspBody::other(body)))
        };
        Server::new(io, &config(), Activity::new(), hello)
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_answer_pings_is_closed() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        // A client that says hello and is then never polled again: it answers no ping.
        let (_tx, _conn) = h2::client::handshake(client_io).await.expect("handshake");
        let started = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(3600), server(server_io))
            .await
            .expect("the connection was closed");
        assert!(matches!(ended, Err(ServeError::KeepAliveTimeout)), "{ended:?}");
        assert_eq!(ended.expect_err("timed out").label(), "keepalive_timeout");
        assert_eq!(started.elapsed(), H2_KEEP_ALIVE_INTERVAL + H2_KEEP_ALIVE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_answers_pings_is_kept_and_served() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (tx, conn) = h2::client::handshake(client_io).await.expect("handshake");
        tokio::spawn(async move { conn.await.expect("client connection") });
        let served = tokio::spawn(server(server_io));
        // Many ping intervals later, the connection still serves.
        tokio::time::sleep(H2_KEEP_ALIVE_INTERVAL * 10).await;
        assert!(!served.is_finished());
        let mut tx = tx.ready().await.expect("the connection is open");
        let req = Request::get("http://svc.test/").body(()).expect("request");
        let (rsp, _) = tx.send_request(req, true).expect("send");
        let rsp = rsp.await.expect("response");
        assert_eq!(rsp.status(), 200);
        assert!(rsp.headers().contains_key(header::DATE), "{:?}", rsp.headers());
        assert_eq!(rsp.headers()[header::CONTENT_LENGTH], "5");
        let mut body = rsp.into_body();
        assert_eq!(body.data().await.expect("data").expect("data"), "hello");
    }

    /// Answers every request with `status`, a `content-length: 5` and "hello", content or
    /// not; returns the response the h2 client got to `method`, and its body's data.
    async fn no_content(method: Method, status: StatusCode) -> (Response<()>, Option<Bytes>) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let answer = move |_| {
            let body = Full::new(Bytes::from_static(b"hello")).map_err(|never| match never {});
            let mut rsp = Response::new(RspBody::other(body));
            *rsp.status_mut() = status;
            rsp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(5));
            std::future::ready(rsp)
        };
        tokio::spawn(Server::new(server_io, &config(), Activity::new(), answer));
        let (tx, conn) = h2::client::handshake(client_io).await.expect("handshake");
        tokio::spawn(async move { conn.await.expect("client connection") });
        let mut tx = tx.ready().await.expect("the connection is open");
        let req = Request::builder().method(&method).uri("http://svc.test/").body(());
        let req = req.expect("request");
        let (rsp, _) = tx.send_request(req, true).expect("send");
        let rsp = rsp.await.expect("response");
        let (head, mut body) = rsp.into_parts();
        // Without content, the end of the stream came with the head: no DATA frame follows.
        let no_content = method == Method::HEAD || status != StatusCode::OK;
        assert_eq!(body.is_end_stream(), no_content, "{method} {status}");
        let data = body.data().await.transpose().expect("no error");
        (Response::from_parts(head, ()), data)
    }

    #[tokio::test]
    async fn responses_without_content_get_no_body() {
        let (rsp, data) = no_content(Method::HEAD, StatusCode::OK).await;
        assert_eq!((rsp.status(), data), (StatusCode::OK, None));
        // To HEAD, the length of what a GET would get.
        assert_eq!(rsp.headers()[header::CONTENT_LENGTH], "5");
        let (rsp, data) = no_content(Method::GET, StatusCode::NOT_MODIFIED).await;
        assert_eq!((rsp.status(), data), (StatusCode::NOT_MODIFIED, None));
        let (rsp, data) = no_content(Method::GET, StatusCode::NO_CONTENT).await;
        assert_eq!((rsp.status(), data), (StatusCode::NO_CONTENT, None));
        assert!(!rsp.headers().contains_key(header::CONTENT_LENGTH), "{:?}", rsp.headers());
        // Anything else keeps its body.
        let (rsp, data) = no_content(Method::GET, StatusCode::OK).await;
        assert_eq!((rsp.status(), data.as_deref()), (StatusCode::OK, Some(&b"hello"[..])));
    }

    /// A response body that never has data; says when it is dropped.
    struct Stalled(Arc<tokio::sync::Notify>);

    impl Body for Stalled {
        type Data = Bytes;
        type Error = BodyError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Bytes>, BodyError>>> {
            Poll::Pending
        }
    }

    impl Drop for Stalled {
        fn drop(&mut self) {
            self.0.notify_one();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_reset_ends_a_response_whose_body_is_awaited() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let dropped = Arc::new(tokio::sync::Notify::new());
        let stalled = {
            let dropped = dropped.clone();
            move |_| std::future::ready(Response::new(RspBody::other(Stalled(dropped.clone()))))
        };
        tokio::spawn(Server::new(server_io, &config(), Activity::new(), stalled));
        let (tx, conn) = h2::client::handshake(client_io).await.expect("handshake");
        tokio::spawn(async move { conn.await.expect("client connection") });
        let mut tx = tx.ready().await.expect("the connection is open");
        let req = Request::get("http://svc.test/").body(()).expect("request");
        let (rsp, send) = tx.send_request(req, true).expect("send");
        let rsp = rsp.await.expect("response head");
        assert_eq!(rsp.status(), 200);
        // The body waits for data that never comes, until the client gives up.
        let waited = tokio::time::timeout(Duration::from_secs(60), dropped.notified()).await;
        assert!(waited.is_err(), "the body was dropped while the client still wanted it");
        // Dropping its stream's last handles resets it (CANCEL).
        drop((rsp, send));
        tokio::time::timeout(Duration::from_secs(60), dropped.notified())
            .await
            .expect("the server gave the body up once the client reset its stream");
    }
}
