//! Upstream HTTP/2 on the h2 crate, without hyper's client between: hyper's HTTP/2
//! client passes each request through a channel to its connection task and spawns a task
//! per request to wait for the response — work the proxy's own request future can do. A
//! request's future here sends the headers and waits for the response itself; only a
//! request body that is still streaming gets a task of its own, to pipe it while the
//! response flows back. A connection with no stream in flight for the pool's idle timeout
//! is closed, and one whose peer stops answering pings is closed too.

use std::{
    future::poll_fn,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{
    H2_KEEP_ALIVE_TIMEOUT,
    pool::{BodyError, ReqBody, SendError},
};
use crate::idle::{Activity, InFlight};

/// Receive windows and limits as hyper's HTTP/2 client sets them, so replacing it
/// changes no behaviour on the wire.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// One upstream HTTP/2 connection's request side.
#[derive(Clone, Debug)]
pub struct Sender {
    tx: h2::client::SendRequest<Bytes>,
    /// Set when the connection's task ended, or it is closing (idle): the connection
    /// takes no more requests.
    closed: Arc<AtomicBool>,
    /// Streams in flight: each from its request until its response body ends.
    activity: Arc<Activity>,
    /// Set when the peer's first bytes were not HTTP/2's SETTINGS frame (an HTTP/1
    /// server's error page, say): it does not speak HTTP/2, which is worth saying when
    /// requests fail.
    not_http2: Arc<AtomicBool>,
}

/// Handshakes HTTP/2 over `io` and drives the connection on a task of its own, until the
/// peer closes it, it has had no stream in flight for `idle_timeout` (it is then no longer
/// handed out, and closed once nothing is in flight), or the peer does not answer a ping
/// within `H2_KEEP_ALIVE_TIMEOUT` (sent every `H2_KEEP_ALIVE_INTERVAL`): a peer that
/// vanished is found out, not waited for.
pub async fn handshake<I>(
    io: I,
    max_header_bytes: u32,
    idle_timeout: Duration,
) -> Result<Sender, h2::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let not_http2 = Arc::new(AtomicBool::new(false));
    let io = FirstBytes { io, read: 0, not_http2: not_http2.clone() };
    let (tx, mut conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .max_header_list_size(max_header_bytes)
        .enable_push(false)
        .handshake(io)
        .await?;
    let closed = Arc::new(AtomicBool::new(false));
    let activity = Activity::new();
    let (done, act) = (closed.clone(), activity.clone());
    let pings = conn.ping_pong();
    tokio::spawn(async move {
        tokio::pin!(conn);
        // Closing an idle connection: no more requests; `watch` drops it once nothing is
        // in flight. Nothing else stops it (the pool goes away with the proxy).
        let never = CancellationToken::new();
        let closing = |_: Pin<&mut _>| done.store(true, Ordering::Release);
        let watched = crate::idle::watch(conn.as_mut(), closing, &act, idle_timeout, &never);
        tokio::select! {
            ended = watched => match ended {
                Some(Err(e)) => debug!(error = %e, "upstream HTTP/2 connection failed"),
                Some(Ok(())) => {}
                None => debug!(?idle_timeout, "upstream HTTP/2 connection idle; closed"),
            },
            () = super::h2_keep_alive(pings) => {
                debug!(timeout = ?H2_KEEP_ALIVE_TIMEOUT, "upstream HTTP/2 peer did not answer a ping in time; closed");
            }
        }
        done.store(true, Ordering::Release);
    });
    Ok(Sender { tx, closed, activity, not_http2 })
}

impl Sender {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the peer's first bytes showed that it does not speak HTTP/2.
    pub fn not_http2(&self) -> bool {
        self.not_http2.load(Ordering::Acquire)
    }

    /// Waits until the connection can open a stream; `Err`: it cannot (closed, or going
    /// away), and a request not yet sent may go on another. Takes the handle the pool
    /// lent (one clone per request, not two).
    pub async fn ready(self) -> Result<Ready, h2::Error> {
        let in_flight = self.activity.begin();
        let tx = self.tx.ready().await?;
        Ok(Ready { tx, in_flight })
    }
}

/// An upstream connection that notes whether the first frame it reads is not of type
/// SETTINGS (the fourth byte of its header), which a server's connection preface must
/// start with (RFC 9113 §3.4).
struct FirstBytes<I> {
    io: I,
    /// Bytes read so far, counted until the type byte went by.
    read: usize,
    not_http2: Arc<AtomicBool>,
}

/// Where a frame header's type is.
const FRAME_TYPE_AT: usize = 3;
const SETTINGS: u8 = 0x4;

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstBytes<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if this.read <= FRAME_TYPE_AT {
            let got = &buf.filled()[before..];
            if got.get(FRAME_TYPE_AT - this.read).is_some_and(|&t| t != SETTINGS) {
                this.not_http2.store(true, Ordering::Release);
            }
            this.read += got.len();
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstBytes<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A connection ready to open a stream for one request.
#[derive(Debug)]
pub struct Ready {
    tx: h2::client::SendRequest<Bytes>,
    in_flight: InFlight,
}

impl Ready {
    /// Sends `req`'s head; a streaming body goes on being sent on a task of its own while
    /// the response flows. Not `async`: the caller's future holds the request, no other.
    pub fn send(mut self, req: Request<ReqBody>) -> Result<Sent, h2::Error> {
        let (parts, body) = req.into_parts();
        let eos = body.is_end_stream();
        let (response, stream) = self.tx.send_request(Request::from_parts(parts, ()), eos)?;
        let (cancel, request) = if eos {
            (None, RequestEnd::Sent)
        } else {
            let (cancel, cancelled) = oneshot::channel();
            let piped = Arc::new(Piped::default());
            tokio::spawn(pipe(body, stream, cancelled, piped.clone()));
            (Some(CancelOnDrop(Some(cancel))), RequestEnd::Streaming(piped))
        };
        Ok(Sent { response, cancel, request, in_flight: self.in_flight })
    }
}

/// A request sent, its response to come.
#[derive(Debug)]
pub struct Sent {
    response: h2::client::ResponseFuture,
    cancel: Option<CancelOnDrop>,
    request: RequestEnd,
    in_flight: InFlight,
}

impl Sent {
    /// Waits for the response head; dropping this future before it came resets the
    /// stream (and stops the body's pipe). A request whose own body failed, which reset
    /// the stream, fails with [`SendError::RequestBody`], not with that reset.
    pub async fn response(self) -> Result<Response<H2Body>, SendError> {
        let Sent { response, cancel, request, in_flight } = self;
        let rsp = match response.await {
            Ok(rsp) => rsp,
            Err(e) => return Err(request.failure(e)),
        };
        // The response came: the body pipe goes on on its own.
        if let Some(mut c) = cancel {
            c.0.take();
        }
        Ok(rsp.map(|recv| H2Body::response(recv, request, in_flight)))
    }
}

/// Resets the request's stream when the request is given up before its response (a
/// timeout, or the client went away), so the body pipe stops.
#[derive(Debug)]
struct CancelOnDrop(Option<oneshot::Sender<()>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            let _ = c.send(());
        }
    }
}

/// Sends a request body on its stream until it ends, fails or the upstream resets the
/// stream; stops early when the request is given up before its response (dropping the
/// stream's last handle resets it).
async fn pipe(
    body: ReqBody,
    tx: h2::SendStream<Bytes>,
    cancelled: oneshot::Receiver<()>,
    piped: Arc<Piped>,
) {
    let failed = |e: &BodyError| {
        let _ = piped.failed.set((e.to_string(), matches!(e, BodyError::StreamIdle(_))));
        h2::Reason::CANCEL
    };
    let pump = pump(body, tx, failed);
    tokio::pin!(pump);
    tokio::select! {
        biased;
        ended = &mut pump => piped.sent.store(ended, Ordering::Release),
        // `Err`: the response came and the sender was dropped; the pump goes on.
        Ok(()) = cancelled => debug!("request given up; resetting its stream"),
    }
}

/// Sends `body` on its stream until it ends (`true`: its end was sent), fails (the stream
/// is then reset with `reason(error)`) or the peer resets the stream. Request bodies here;
/// response bodies for the proxy's own HTTP/2 server (`h2_server`).
pub(super) async fn pump<B>(
    mut body: B,
    mut tx: h2::SendStream<Bytes>,
    reason: impl Fn(&B::Error) -> h2::Reason,
) -> bool
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    loop {
        // The body first: a frame at hand is sent without asking the stream whether the
        // peer reset it (sending would say so); only a body that must be waited for has
        // the reset watched meanwhile (a client that went away ends the wait).
        let next = poll_fn(|cx| {
            if let Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
                return Poll::Ready(Ok(frame));
            }
            tx.poll_reset(cx).map(Err)
        });
        let frame = match next.await {
            Ok(frame) => frame,
            Err(reason) => {
                debug!(?reason, "the peer reset the stream");
                return false;
            }
        };
        let sent = match frame {
            None => tx.send_data(Bytes::new(), true).map(|()| false),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let eos = body.is_end_stream();
                    send_data(&mut tx, data, eos).await.map(|()| !eos)
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => tx.send_trailers(trailers).map(|()| false),
                    Err(_) => Ok(true),
                },
            },
            Some(Err(e)) => {
                debug!(error = %e, "the body failed; resetting the stream");
                tx.send_reset(reason(&e));
                return false;
            }
        };
        match sent {
            Ok(true) => {}
            Ok(false) => return true,
            Err(e) => {
                debug!(error = %e, "sending the body failed");
                return false;
            }
        }
    }
}

/// Sends `data` as the window allows; capacity is asked for only once the data is in
/// hand, so a body that never produces data holds none of the connection's window.
async fn send_data(
    tx: &mut h2::SendStream<Bytes>,
    mut data: Bytes,
    eos: bool,
) -> Result<(), h2::Error> {
    if !data.has_remaining() {
        return tx.send_data(data, eos);
    }
    while data.has_remaining() {
        let granted = poll_fn(|cx| poll_send_capacity(tx, data.len(), cx)).await?;
        let chunk = data.split_to(granted);
        tx.send_data(chunk, eos && !data.has_remaining())?;
    }
    Ok(())
}

/// Capacity to send up to `len` (> 0) bytes on `tx`: asked for, then granted (at least one
/// byte, at most `len`); an error once the stream can send no more (reset, or closed).
pub(super) fn poll_send_capacity(
    tx: &mut h2::SendStream<Bytes>,
    len: usize,
    cx: &mut Context<'_>,
) -> Poll<Result<usize, h2::Error>> {
    tx.reserve_capacity(len);
    loop {
        match ready!(tx.poll_capacity(cx)) {
            Some(Ok(0)) => continue,
            Some(Ok(n)) => return Poll::Ready(Ok(n.min(len))),
            Some(Err(e)) => return Poll::Ready(Err(e)),
            None => return Poll::Ready(Err(h2::Reason::CANCEL.into())),
        }
    }
}

/// A body read from an HTTP/2 stream, trailers included: an upstream's response, or a
/// client's request to the proxy's HTTP/2 server. The stream's window is given back as
/// the data is taken.
#[derive(Debug)]
pub struct H2Body {
    recv: h2::RecvStream,
    data_done: bool,
    /// A response's request, whose state tells a `NO_ERROR` reset's meaning; `None` for a
    /// client's request, which such a reset cuts short.
    request: Option<RequestEnd>,
    /// An upstream stream is in flight until its response body is dropped.
    _in_flight: Option<InFlight>,
}

/// How far a request whose response is being read was sent.
#[derive(Debug)]
enum RequestEnd {
    /// Whole (its end went with its head).
    Sent,
    /// Its body streams on a pipe task.
    Streaming(Arc<Piped>),
}

/// What the pipe task of a request body tells the request.
#[derive(Debug, Default)]
struct Piped {
    /// Set once the body's end is sent.
    sent: AtomicBool,
    /// Set when the body failed (the stream is then reset): why, and whether it stalled
    /// past the stream idle timeout.
    failed: OnceLock<(String, bool)>,
}

impl RequestEnd {
    /// What failed a request whose response ended in `e`: its own body when that failed
    /// (which reset the stream), else `e`.
    fn failure(&self, e: h2::Error) -> SendError {
        match self {
            RequestEnd::Streaming(piped) => match piped.failed.get() {
                Some((why, stalled)) => {
                    SendError::RequestBody { why: why.clone(), stalled: *stalled }
                }
                None => SendError::H2(e),
            },
            RequestEnd::Sent => SendError::H2(e),
        }
    }
}

impl H2Body {
    /// A client's request body, read by the proxy's HTTP/2 server.
    pub(super) fn request(recv: h2::RecvStream) -> Self {
        H2Body { recv, data_done: false, request: None, _in_flight: None }
    }

    fn response(recv: h2::RecvStream, request: RequestEnd, in_flight: InFlight) -> Self {
        H2Body { recv, data_done: false, request: Some(request), _in_flight: Some(in_flight) }
    }

    /// What a reset that ended the stream's data early means: `None`, the body ended
    /// complete; else the error that cuts it short. A `NO_ERROR` reset ends a response
    /// complete only while its request is still being sent: that is the server saying it
    /// needs no more of the request after a complete response (RFC 9113 §8.1; h2 reports
    /// the reset even when the response's end came first). Any other time the body was
    /// cut: a response reset after its whole request was sent, or a client's request.
    fn early_end(&self, e: h2::Error) -> Option<Result<Frame<Bytes>, h2::Error>> {
        let request_open = match &self.request {
            Some(RequestEnd::Streaming(piped)) => !piped.sent.load(Ordering::Acquire),
            Some(RequestEnd::Sent) | None => false,
        };
        if e.reason() == Some(h2::Reason::NO_ERROR) && request_open { None } else { Some(Err(e)) }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(this.early_end(e)),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|t: HeaderMap| Ok(Frame::trailers(t)))),
            Err(e) => Poll::Ready(this.early_end(e)),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.recv.is_end_stream() { SizeHint::with_exact(0) } else { SizeHint::default() }
    }
}

#[cfg(test)]
mod tests {
    //! Against the h2 crate's server over loopback TCP: the client's stream handling —
    //! body piping while the response flows, flow control, cancellation, early ends.

    use std::time::Duration;

    use http::{HeaderValue, Method, StatusCode};
    use http_body_util::BodyExt;
    use http_body_util::channel::{Channel, Sender as BodyTx};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    type Server = h2::server::Connection<TcpStream, Bytes>;

    /// A connected client and the server side of its connection, driven by the test.
    async fn pair() -> (Sender, Server) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("the test's h2 exchange");
        let addr = listener.local_addr().expect("the test's h2 exchange");
        let (client, server) = tokio::join!(
            async {
                handshake(
                    TcpStream::connect(addr).await.expect("the test's h2 exchange"),
                    16 * 1024,
                    Duration::from_secs(60),
                )
                .await
            },
            async {
                h2::server::handshake(listener.accept().await.expect("the test's h2 exchange").0)
                    .await
            }
        );
        (client.expect("the test's h2 exchange"), server.expect("the test's h2 exchange"))
    }

    /// A request with a body the test writes as it goes.
    fn streaming_request() -> (BodyTx<Bytes>, Request<ReqBody>) {
        let (tx, body) = Channel::<Bytes>::new(4);
        let req = Request::builder()
            .method(Method::POST)
            .uri("http://svc.test/echo")
            .body(body.map_err(|never| match never {}).boxed_unsync())
            .expect("the test's h2 exchange");
        (tx, req)
    }

    /// Sends `req` on `client` and waits for the response head: the pool's steps in one.
    pub(super) async fn send(
        client: Sender,
        req: Request<ReqBody>,
    ) -> Result<Response<H2Body>, SendError> {
        client.ready().await?.send(req)?.response().await
    }

    /// The type of the peer's first frame decides, however the bytes are split across
    /// reads: SETTINGS is HTTP/2; an HTTP/1 server's answer to the preface is not.
    #[tokio::test]
    async fn a_peer_whose_first_frame_is_not_settings_does_not_speak_http2() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00";
        for (first, not_http2) in [(&settings[..], false), (b"HTTP/1.1 400 Bad Request", true)] {
            for split in [1, 3, 4, first.len()] {
                let (mut peer, io) = tokio::io::duplex(64);
                let flag = Arc::new(AtomicBool::new(false));
                let mut io = FirstBytes { io, read: 0, not_http2: flag.clone() };
                let mut buf = [0u8; 64];
                for part in [&first[..split], &first[split..]] {
                    if part.is_empty() {
                        continue;
                    }
                    peer.write_all(part).await.expect("write");
                    let n = io.read(&mut buf).await.expect("read");
                    assert_eq!(n, part.len());
                }
                let got = flag.load(Ordering::Acquire);
                assert_eq!(got, not_http2, "{:?} split at {split}", String::from_utf8_lossy(first));
            }
        }
    }

    /// Accepts one stream and answers 200 at once; the connection goes on being driven in
    /// the background.
    async fn accept(
        mut server: Server,
    ) -> (Request<h2::RecvStream>, h2::server::SendResponse<Bytes>) {
        let (req, respond) =
            server.accept().await.expect("the test's h2 exchange").expect("the test's h2 exchange");
        tokio::spawn(async move { while server.accept().await.is_some() {} });
        (req, respond)
    }

    async fn next_data(recv: &mut h2::RecvStream) -> Option<Bytes> {
        let data = recv.data().await?.expect("the test's h2 exchange");
        recv.flow_control().release_capacity(data.len()).expect("the test's h2 exchange");
        Some(data)
    }

    #[tokio::test]
    async fn a_streaming_body_is_piped_while_the_response_flows_back() {
        let (client, server) = pair().await;
        let echo = tokio::spawn(async move {
            let (req, mut respond) = accept(server).await;
            let mut recv = req.into_body();
            let mut send =
                respond.send_response(Response::new(()), false).expect("the test's h2 exchange");
            while let Some(data) = next_data(&mut recv).await {
                send.send_data(data, false).expect("the test's h2 exchange");
            }
            let trailers = recv
                .trailers()
                .await
                .expect("the test's h2 exchange")
                .expect("the test's h2 exchange");
            send.send_trailers(trailers).expect("the test's h2 exchange");
        });
        let (mut tx, req) = streaming_request();
        let rsp = tokio::time::timeout(Duration::from_secs(5), send(client, req))
            .await
            .expect("the test's h2 exchange");
        let mut body = rsp.expect("response head before the request body ended").into_body();
        // Each chunk comes back before the next is sent: both directions stream at once.
        for chunk in ["one", "two", "three"] {
            tx.send_data(Bytes::from(chunk)).await.expect("the test's h2 exchange");
            let frame = body
                .frame()
                .await
                .expect("the test's h2 exchange")
                .expect("the test's h2 exchange");
            assert_eq!(frame.into_data().expect("the test's h2 exchange"), chunk);
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        tx.send_trailers(trailers).await.expect("the test's h2 exchange");
        drop(tx);
        let frame =
            body.frame().await.expect("the test's h2 exchange").expect("the test's h2 exchange");
        assert_eq!(frame.trailers_ref().expect("the test's h2 exchange")["grpc-status"], "0");
        assert!(body.frame().await.is_none());
        echo.await.expect("the test's h2 exchange");
    }

    #[tokio::test]
    async fn a_body_larger_than_the_windows_passes_within_flow_control() {
        let (client, server) = pair().await;
        let sink = tokio::spawn(async move {
            let (req, mut respond) = accept(server).await;
            let mut recv = req.into_body();
            let mut total = 0usize;
            while let Some(data) = next_data(&mut recv).await {
                total += data.len();
            }
            let rsp = Response::builder()
                .status(StatusCode::OK)
                .body(())
                .expect("the test's h2 exchange");
            let mut send = respond.send_response(rsp, false).expect("the test's h2 exchange");
            send.send_data(Bytes::from(total.to_string()), true).expect("the test's h2 exchange");
        });
        let (mut tx, req) = streaming_request();
        let writer = tokio::spawn(async move {
            // 8 MiB: beyond the server's default 64 KiB stream and connection windows.
            for _ in 0..128 {
                tx.send_data(Bytes::from(vec![7u8; 64 * 1024]))
                    .await
                    .expect("the test's h2 exchange");
            }
        });
        let rsp = tokio::time::timeout(Duration::from_secs(20), send(client, req))
            .await
            .expect("no deadlock on flow control")
            .expect("the test's h2 exchange");
        let body = rsp.into_body().collect().await.expect("the test's h2 exchange").to_bytes();
        assert_eq!(body, (8 * 1024 * 1024).to_string());
        writer.await.expect("the test's h2 exchange");
        sink.await.expect("the test's h2 exchange");
    }

    #[tokio::test]
    async fn giving_up_before_the_response_resets_the_stream() {
        let (client, server) = pair().await;
        let (mut tx, req) = streaming_request();
        let (got, got_rx) = oneshot::channel();
        let upstream = tokio::spawn(async move {
            let (req, _respond) = accept(server).await;
            let mut recv = req.into_body();
            got.send(()).expect("the test's h2 exchange");
            // The request body never ends; the stream must end in a reset, not hang.
            loop {
                match recv.data().await {
                    Some(Ok(d)) => recv
                        .flow_control()
                        .release_capacity(d.len())
                        .expect("the test's h2 exchange"),
                    Some(Err(e)) => return e.reason(),
                    None => return None,
                }
            }
        });
        tx.send_data(Bytes::from_static(b"partial")).await.expect("the test's h2 exchange");
        let send = send(client, req);
        tokio::select! {
            _ = send => panic!("the upstream never answers"),
            _ = got_rx => {}
        }
        // `send` is dropped here, as a response timeout drops it.
        let reason = tokio::time::timeout(Duration::from_secs(5), upstream)
            .await
            .expect("the test's h2 exchange")
            .expect("the test's h2 exchange");
        assert_eq!(reason, Some(h2::Reason::CANCEL));
        drop(tx);
    }

    /// Answers the one stream `server` gets with a head and `data`, no END_STREAM, and a
    /// `NO_ERROR` reset once the returned sender says the data was read (a reset drops what
    /// is still queued).
    fn answer_then_reset(server: Server, data: &'static [u8]) -> oneshot::Sender<()> {
        let (read, read_rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let (_req, mut respond) = accept(server).await;
            let mut send =
                respond.send_response(Response::new(()), false).expect("the test's h2 exchange");
            send.send_data(Bytes::from_static(data), false).expect("the test's h2 exchange");
            read_rx.await.expect("the test's h2 exchange");
            send.send_reset(h2::Reason::NO_ERROR);
        });
        read
    }

    #[tokio::test]
    async fn a_no_error_reset_after_the_response_ends_the_body_complete() {
        let (client, server) = pair().await;
        // RFC 9113 §8.1: the server needs no more of the request, still streaming.
        let read = answer_then_reset(server, b"early answer");
        let (tx, req) = streaming_request();
        let mut body = send(client, req).await.expect("the test's h2 exchange").into_body();
        let frame =
            body.frame().await.expect("the test's h2 exchange").expect("the test's h2 exchange");
        assert_eq!(frame.into_data().expect("the test's h2 exchange"), "early answer");
        read.send(()).expect("the test's h2 exchange");
        assert!(body.frame().await.is_none(), "a complete body, not an error");
        drop(tx);
    }

    #[tokio::test]
    async fn a_no_error_reset_after_the_whole_request_cuts_the_response_short() {
        let (client, server) = pair().await;
        // The whole request went with its head: no END_STREAM means a cut response,
        // whatever the reset's code.
        let read = answer_then_reset(server, b"{\"items\":[1,2,");
        let get = Request::get("http://svc.test/items")
            .body(ReqBody::default())
            .expect("the test's h2 exchange");
        let mut body = send(client, get).await.expect("the test's h2 exchange").into_body();
        let frame =
            body.frame().await.expect("the test's h2 exchange").expect("the test's h2 exchange");
        assert_eq!(frame.into_data().expect("the test's h2 exchange"), "{\"items\":[1,2,");
        read.send(()).expect("the test's h2 exchange");
        let reason = match body.frame().await {
            Some(Err(e)) => e.reason(),
            other => panic!("a cut response read as {other:?}"),
        };
        assert_eq!(reason, Some(h2::Reason::NO_ERROR));
    }

    #[tokio::test]
    async fn a_closed_connection_is_not_ready_so_the_request_is_kept() {
        let (client, server) = pair().await;
        drop(server);
        // The connection task sees the close, then the sender reports it.
        for _ in 0..100 {
            if client.is_closed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(client.is_closed());
        // The pool sends a request only once the connection is ready: here it never is,
        // so the request stays with the pool, to go on another connection.
        let ready = client.ready().await;
        assert!(ready.is_err(), "a closed connection took a stream: {ready:?}");
    }
}

#[cfg(test)]
mod idle_tests {
    //! Closing: idle connections, and peers that stop answering pings.

    use std::{net::SocketAddr, sync::atomic::AtomicUsize};

    use http_body_util::{BodyExt, Empty, Full};
    use hyper::{server::conn::http2, service::service_fn};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::{
        io::AsyncReadExt,
        net::{TcpListener, TcpStream},
        time::Instant,
    };

    use super::*;
    use crate::http::H2_KEEP_ALIVE_INTERVAL;

    /// An HTTP/2 server that answers `ok`; counts its connections still open.
    async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(AtomicUsize::new(0));
        let count = open.clone();
        tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                let svc = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("ok"))))
                });
                let c = http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), svc);
                let count = count.clone();
                count.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(async move {
                    let _ = c.await;
                    count.fetch_sub(1, Ordering::AcqRel);
                });
            }
        });
        (addr, open)
    }

    fn get() -> Request<ReqBody> {
        let body = Empty::new().map_err(|never| match never {}).boxed_unsync();
        Request::get("http://web/").version(http::Version::HTTP_2).body(body).expect("request")
    }

    /// Polls `done` every 20 ms until it holds; panics past `limit`.
    async fn until(limit: Duration, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + limit;
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A connection is kept while a response body is being read, however long; once it
    /// has had no stream for the idle timeout it is no longer handed out, and its socket
    /// is closed.
    #[tokio::test]
    async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
        let (addr, open) = server().await;
        let idle = Duration::from_millis(300);
        let io = TcpStream::connect(addr).await.expect("connect");
        let sender = handshake(io, 65536, idle).await.expect("handshake");
        let rsp = super::tests::send(sender.clone(), get()).await.expect("response");
        // The response body not read yet: a stream in flight, for several idle timeouts.
        tokio::time::sleep(idle * 4).await;
        assert!(!sender.is_closed(), "closed with a stream in flight");
        let body = rsp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, "ok");

        let idle_since = Instant::now();
        until(Duration::from_secs(3), "no longer handed out", || sender.is_closed()).await;
        assert!(idle_since.elapsed() >= idle, "closed before it was idle");
        let grace = crate::idle::CLOSE_GRACE + Duration::from_secs(3);
        until(grace, "the upstream saw the close", || open.load(Ordering::Acquire) == 0).await;
    }

    /// A peer that takes the connection and then never answers (a vanished host, a hung
    /// process) is found out by the pings: the connection is closed well before the idle
    /// timeout.
    #[tokio::test(start_paused = true)]
    async fn a_peer_that_does_not_answer_pings_is_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut io, _) = listener.accept().await.expect("accept");
            // Reads (so the client's writes go through) and never answers.
            let mut sink = [0u8; 1024];
            while io.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        });
        let io = TcpStream::connect(addr).await.expect("connect");
        let started = Instant::now();
        let sender = handshake(io, 65536, Duration::from_secs(3600)).await.expect("handshake");
        let limit = H2_KEEP_ALIVE_INTERVAL + H2_KEEP_ALIVE_TIMEOUT + Duration::from_secs(5);
        until(limit, "closed after an unanswered ping", || sender.is_closed()).await;
        let took = started.elapsed();
        assert!(took >= H2_KEEP_ALIVE_INTERVAL + H2_KEEP_ALIVE_TIMEOUT, "{took:?}");
    }
}
