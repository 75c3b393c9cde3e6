//! Upstream HTTP connections per target: a keep-alive pool of HTTP/1 connections with an
//! idle timeout, and one multiplexed HTTP/2 connection.

use std::{
    collections::HashMap,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::{
    h2_upstream::{self, H2Body},
    rewake::Rewake,
};
use crate::{
    detect::Protocol,
    io::MeteredIo,
    metrics::{Direction, DstLabels, Metrics, Peer},
    transport::{self, ConnError},
};

/// A request body as the proxy forwards it: the client's, from hyper (HTTP/1) or an
/// HTTP/2 stream.
pub type ReqBody = UnsyncBoxBody<Bytes, BodyError>;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connect(#[from] ConnError),
    #[error("HTTP/1 handshake with the upstream failed: {0}")]
    H1Handshake(hyper::Error),
    #[error("HTTP/2 handshake with the upstream failed: {0}")]
    H2Handshake(h2::Error),
    #[error("the upstream failed the request: {0}")]
    Http(#[from] hyper::Error),
    #[error("the upstream failed the request: {0}")]
    H2(#[from] h2::Error),
    /// The client's request body failed as it went to an HTTP/2 upstream (its stream
    /// was reset for it); `stalled`: it stopped past the stream idle timeout. Over
    /// HTTP/1, hyper reports it as a user error (`Http`).
    #[error("the request body failed: {why}")]
    RequestBody { why: String, stalled: bool },
    /// The upstream did not open its side of the connection with HTTP/2's SETTINGS frame
    /// (an HTTP/1 server answers the preface with an error of its own).
    #[error(
        "the upstream does not speak HTTP/2, which the request came in: its first bytes were not HTTP/2's ({0})"
    )]
    NotHttp2(h2::Error),
}

/// An upstream response's body: hyper's for HTTP/1, the stream's for HTTP/2.
#[derive(Debug)]
pub enum UpstreamBody {
    H1(H1Body),
    H2(H2Body),
}

/// An HTTP/1 upstream connection with no task of its own: the request that has it drives
/// it, from sending the request to the end of the response's body (one task per request,
/// where hyper's spawned connection made two, and a wake-up between them each way).
struct H1Conn {
    sender: http1::SendRequest<ReqBody>,
    /// None once the connection finished (closed, failed, or upgraded unasked): dropped
    /// at once, which fails a request still waiting on it.
    conn: Option<H1Connection>,
    /// What the request driving the connection polls it with.
    rewake: Rewake,
}

type H1Connection = http1::Connection<TokioIo<Box<dyn Io>>, ReqBody>;
/// An HTTP/1 connection's two halves: what sends requests on it, and what drives it.
type H1Parts = (http1::SendRequest<ReqBody>, H1Connection);

impl std::fmt::Debug for H1Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Conn").field("done", &self.done()).finish_non_exhaustive()
    }
}

impl H1Conn {
    /// Moves the connection on as far as it can go now: writes what it has, reads what
    /// came, notices a close.
    fn drive(&mut self, cx: &mut std::task::Context<'_>) {
        drive(&mut self.conn, cx);
    }

    fn done(&self) -> bool {
        self.conn.is_none()
    }

    /// Drives the connection with no one to wake: what is ready now, or a close that
    /// came while it was idle.
    fn drive_now(&mut self) {
        self.drive(&mut std::task::Context::from_waker(std::task::Waker::noop()));
    }

    /// Ready for another request.
    fn is_ready(&self) -> bool {
        !self.done() && self.sender.is_ready()
    }

    /// Sends `req`, driving the connection until the response's head comes. The request
    /// comes back unsent if the connection closed before taking it.
    async fn send(
        &mut self,
        req: Request<ReqBody>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ReqBody>>> {
        // Queued, the request wakes the connection, which the first poll below drives.
        let rsp = self.rewake.quietly(|| self.sender.try_send_request(req));
        let mut rsp = std::pin::pin!(rsp);
        std::future::poll_fn(|cx| self.poll_driving(cx, |cx| rsp.as_mut().poll(cx))).await
    }

    /// Drives the connection, then polls `then` (what the connection feeds: a response's
    /// head or body), with the waker that takes the connection's own wake-ups within this
    /// poll (`Rewake`).
    fn poll_driving<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        mut then: impl FnMut(&mut std::task::Context<'_>) -> std::task::Poll<T>,
    ) -> std::task::Poll<T> {
        let H1Conn { conn, rewake, .. } = self;
        rewake.poll(cx, |cx| {
            drive(conn, cx);
            then(cx)
        })
    }
}

/// Drives `conn` (`H1Conn::drive`); a finished connection is dropped.
fn drive(conn: &mut Option<H1Connection>, cx: &mut std::task::Context<'_>) {
    if let Some(c) = conn
        && let std::task::Poll::Ready(r) = c.poll_without_shutdown(cx)
    {
        if let Err(e) = r {
            debug!(error = %e, "upstream HTTP/1 connection failed");
        }
        *conn = None;
    }
}

/// An HTTP/1 response body that drives its connection and returns it to the pool once
/// the body has been read to the end.
#[derive(Debug)]
pub struct H1Body {
    body: Incoming,
    checkin: Option<Checkin>,
}

impl H1Body {
    fn pooled(body: Incoming, pool: &Arc<Pool>, key: Key, conn: Box<H1Conn>) -> Self {
        let checkin = Checkin { pool: Arc::downgrade(pool), key, conn };
        H1Body { body, checkin: Some(checkin) }
    }

    fn ended(&mut self) {
        if let Some(c) = self.checkin.take() {
            c.run();
        }
    }
}

impl Drop for H1Body {
    fn drop(&mut self) {
        // A body dropped before its end leaves its connection mid-response: it is closed,
        // not pooled.
        if self.body.is_end_stream() {
            self.ended();
        }
    }
}

/// What returns a connection to the pool.
#[derive(Debug)]
struct Checkin {
    pool: std::sync::Weak<Pool>,
    key: Key,
    conn: Box<H1Conn>,
}

impl Checkin {
    fn run(mut self) {
        let Some(pool) = self.pool.upgrade() else { return };
        // The response's end read, the connection turns idle (or closes) once driven,
        // unless the body's last read already got it there.
        if !self.conn.is_ready() {
            self.conn.drive_now();
        }
        if self.conn.is_ready() {
            pool.checkin(self.key, self.conn);
        } else if !self.conn.done() {
            // The request's body is still on its way (the upstream answered before it
            // ended): the connection goes on in a task of its own until it is idle.
            pool.checkin_when_ready(self.key, self.conn);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    H1(#[from] hyper::Error),
    #[error(transparent)]
    H2(#[from] h2::Error),
    /// The upstream sent nothing more of its response for the stream idle timeout.
    #[error("nothing more of the body came for {0:?} (stream idle timeout)")]
    StreamIdle(std::time::Duration),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => {
                let body = &mut b.body;
                let frame = match &mut b.checkin {
                    Some(c) => {
                        c.conn.poll_driving(cx, |cx| std::pin::Pin::new(&mut *body).poll_frame(cx))
                    }
                    None => std::pin::Pin::new(body).poll_frame(cx),
                };
                if matches!(frame, std::task::Poll::Ready(None)) || b.body.is_end_stream() {
                    b.ended();
                }
                frame.map_err(BodyError::H1)
            }
            UpstreamBody::H2(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(BodyError::H2),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.body.is_end_stream(),
            UpstreamBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.body.size_hint(),
            UpstreamBody::H2(b) => b.size_hint(),
        }
    }
}

/// A failed try; `unsent` gives the request back when it never left the proxy (the
/// connection failed first), so it can be sent elsewhere even with a streaming body.
#[derive(Debug)]
pub struct Failed {
    pub error: SendError,
    pub unsent: Option<Request<ReqBody>>,
}

impl Failed {
    fn sent(error: impl Into<SendError>) -> Self {
        Failed { error: error.into(), unsent: None }
    }

    fn unsent(error: impl Into<SendError>, req: Request<ReqBody>) -> Self {
        Failed { error: error.into(), unsent: Some(req) }
    }
}

/// Most times a request without a body is sent to an HTTP/2 upstream that keeps refusing
/// it unprocessed. Resending an unprocessed request is always safe (RFC 9113 §8.7); the
/// bound only stops a loop. 3 was too few for an upstream that recycles its connections
/// under load (a refused stream resent onto a connection that then goes away, and again).
const MAX_H2_SENDS: u32 = 5;

/// How an HTTP/2 upstream failed a stream without processing it (RFC 9113 §8.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `REFUSED_STREAM`: the connection stays usable.
    Stream,
    /// Above the last stream id of a graceful GOAWAY: the connection is going away.
    GoingAway,
}

/// Whether an HTTP/2 upstream failed a stream without processing it; such a request may
/// be sent again whatever its method.
pub fn refused_unprocessed(h2: &h2::Error) -> Option<Refused> {
    if h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR) {
        Some(Refused::GoingAway)
    } else if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
        Some(Refused::Stream)
    } else {
        None
    }
}

/// A request's head, to send it again.
fn copy_head<B>(req: &Request<B>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

pub(crate) fn empty_body() -> ReqBody {
    use http_body_util::BodyExt as _;
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A request on its way to an upstream (`Pool::send`).
pub type Sending<'a> =
    Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, Failed>> + Send + 'a>>;

/// Settings of the upstream connections.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub connect: crate::transport::ConnectOpts,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
}

/// A pool key: the endpoint, and the identity its proxy must prove when the connection is
/// mTLS (a plaintext and an mTLS connection to one address never mix).
#[derive(Debug, Clone)]
pub struct Key {
    pub addr: SocketAddr,
    pub server_id: Option<Arc<str>>,
    /// The endpoint's `dst_*` labels, which a new connection's TCP metrics carry; not part
    /// of what the key is (one address is one endpoint).
    pub labels: DstLabels,
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.addr == other.addr && self.server_id == other.server_id
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.addr.hash(state);
        self.server_id.hash(state);
    }
}

impl Key {
    pub fn plain(addr: SocketAddr) -> Self {
        Key { addr, server_id: None, labels: DstLabels::default() }
    }
}

/// Any upstream connection: plaintext or mTLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A target's HTTP/2 connection; the generation tells a replaced connection from its
/// successor.
#[derive(Debug, Default)]
struct H2Conn {
    sender: Option<h2_upstream::Sender>,
    generation: u64,
}

type H2Slot = Arc<tokio::sync::Mutex<H2Conn>>;
/// Hashed with foldhash, not SipHash: every request looks its endpoint up (two lookups for
/// HTTP/1), keys are endpoints that discovery or the connection's own destination gave, not
/// what a client chose, and SipHash was 2 % of a proxied request's instructions.
type Keyed<V> = HashMap<Key, V, foldhash::fast::RandomState>;
/// Idle HTTP/1 connections of a target, with the time each became idle.
type H1Idle = Vec<(Box<H1Conn>, Instant)>;

#[derive(Debug)]
pub struct Pool {
    direction: Direction,
    metrics: Arc<Metrics>,
    config: PoolConfig,
    h1: Mutex<Keyed<H1Idle>>,
    h2: Mutex<Keyed<H2Slot>>,
    identity: Option<Arc<crate::identity::Identity>>,
}

impl Pool {
    pub fn new(
        direction: Direction,
        metrics: Arc<Metrics>,
        config: PoolConfig,
        identity: Option<Arc<crate::identity::Identity>>,
    ) -> Arc<Self> {
        let pool = Arc::new(Pool {
            direction,
            metrics,
            config,
            h1: Mutex::default(),
            h2: Mutex::default(),
            identity,
        });
        // Closes idle HTTP/1 connections; holds only a weak reference so that the pool
        // (and this task) go away with the proxy.
        let weak = Arc::downgrade(&pool);
        let period = (pool.config.idle_timeout / 2).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                pool.expire_idle();
            }
        });
        pool
    }

    fn expire_idle(&self) {
        let idle = self.config.idle_timeout;
        let mut h1 = self.h1.lock().unwrap_or_else(|e| e.into_inner());
        h1.retain(|_, conns| {
            conns.retain_mut(|(c, since)| {
                c.drive_now();
                since.elapsed() < idle && c.is_ready()
            });
            !conns.is_empty()
        });
        let mut h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        h2.retain(|_, slot| {
            slot.try_lock().map_or(true, |s| s.sender.as_ref().is_some_and(|s| !s.is_closed()))
        });
    }

    /// Sends `req` to `target` over a connection of `version` (HTTP/2, or else HTTP/1).
    /// Boxed, each version's future alone: one allocation per request of its own size
    /// (HTTP/2's under 1 KiB, HTTP/1's larger), where the caller's future would otherwise
    /// be as large as the larger of the two, and moved.
    pub fn send(
        self: &Arc<Self>,
        target: Key,
        version: Version,
        req: Request<ReqBody>,
    ) -> Sending<'_> {
        if version == Version::HTTP_2 {
            Box::pin(self.send_h2(target, req))
        } else {
            Box::pin(self.send_h1(target, req))
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        target: Key,
        mut req: Request<ReqBody>,
    ) -> Result<Response<UpstreamBody>, Failed> {
        // A pooled connection the server closed meanwhile gives the request back
        // unsent: it is then safe to try again on a fresh connection.
        while let Some(mut conn) = self.checkout_h1(&target) {
            match conn.send(req).await {
                Ok(rsp) => return Ok(self.pooled(rsp, target, conn)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(Failed::sent(e.into_error())),
                },
            }
        }
        // Boxed: connecting (TLS included) is rare, and its future large.
        let mut conn = match Box::pin(self.connect_h1_inline(&target)).await {
            Ok(c) => c,
            Err(error) => return Err(Failed { error, unsent: Some(req) }),
        };
        let rsp = conn.send(req).await.map_err(|e| Failed::sent(e.into_error()))?;
        Ok(self.pooled(rsp, target, conn))
    }

    /// The response, its body holding (and driving) the connection until read to the
    /// end.
    fn pooled(
        self: &Arc<Self>,
        rsp: Response<Incoming>,
        target: Key,
        conn: Box<H1Conn>,
    ) -> Response<UpstreamBody> {
        rsp.map(|body| UpstreamBody::H1(H1Body::pooled(body, self, target, conn)))
    }

    fn checkin(&self, target: Key, conn: Box<H1Conn>) {
        conn.rewake.forget();
        let mut h1 = self.h1.lock().unwrap_or_else(|e| e.into_inner());
        h1.entry(target).or_default().push((conn, Instant::now()));
    }

    fn checkout_h1(&self, target: &Key) -> Option<Box<H1Conn>> {
        let mut h1 = self.h1.lock().unwrap_or_else(|e| e.into_inner());
        let conns = h1.get_mut(target)?;
        // A close that came while the connection sat idle is read by its first drive,
        // which gives the request back unsent (`send_h1`).
        while let Some((c, since)) = conns.pop() {
            if c.is_ready() && since.elapsed() < self.config.idle_timeout {
                return Some(c);
            }
        }
        None
    }

    /// Drives the connection in a task of its own and returns it to the pool once it is
    /// ready for another request (an upgraded or closed one never comes back).
    fn checkin_when_ready(self: &Arc<Self>, target: Key, mut conn: Box<H1Conn>) {
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let ready = std::future::poll_fn(|cx| {
                conn.drive(cx);
                if conn.done() {
                    return std::task::Poll::Ready(false);
                }
                conn.sender.poll_ready(cx).map(|r| r.is_ok())
            })
            .await;
            if ready && let Some(pool) = pool.upgrade() {
                pool.checkin(target, conn);
            }
        });
    }

    /// A new HTTP/1 connection for one request after another, driven by the requests
    /// themselves; not pooled until its first response is read.
    async fn connect_h1_inline(&self, target: &Key) -> Result<Box<H1Conn>, SendError> {
        let (sender, conn) = self.handshake_h1(target).await?;
        Ok(Box::new(H1Conn { sender, conn: Some(conn), rewake: Rewake::default() }))
    }

    /// A new HTTP/1 connection for an upgrade (WebSocket, CONNECT), in a task of its own
    /// that hands the connection over after the 101 or 2xx.
    pub async fn connect_h1(&self, target: &Key) -> Result<http1::SendRequest<ReqBody>, SendError> {
        let (sender, conn) = self.handshake_h1(target).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                debug!(error = %e, "upstream HTTP/1 connection failed");
            }
        });
        Ok(sender)
    }

    async fn handshake_h1(&self, target: &Key) -> Result<H1Parts, SendError> {
        let io = self.connect(target, Protocol::Http1).await?;
        http1::Builder::new()
            .max_buf_size(self.config.max_header_bytes.max(8192))
            .handshake(TokioIo::new(io))
            .await
            .map_err(SendError::H1Handshake)
    }

    async fn send_h2(
        &self,
        target: Key,
        mut req: Request<ReqBody>,
    ) -> Result<Response<UpstreamBody>, Failed> {
        // A request without a body can be sent again as it is when the upstream refused
        // its stream unprocessed: a server closing its connection gracefully (nginx after
        // `keepalive_requests`, a restarting app) refuses the streams it will not serve.
        let head = http_body::Body::is_end_stream(req.body()).then(|| copy_head(&req));
        let mut sends = 0;
        loop {
            sends += 1;
            let (generation, sender) = match self.h2_sender(&target).await {
                Ok(s) => s,
                Err(error) => return Err(Failed { error, unsent: Some(req) }),
            };
            let ready = match sender.ready().await {
                Ok(ready) => ready,
                // The connection closed (a GOAWAY) before the request left: it goes on a
                // new connection, body and all.
                Err(e) if sends < MAX_H2_SENDS => {
                    debug!(upstream = %target.addr, error = %e, sends, generation, "the connection closed before the request was sent; sending it on a new one");
                    self.forget_h2(&target, generation);
                    continue;
                }
                Err(e) => {
                    debug!(upstream = %target.addr, error = %e, sends, generation, "the connection closed before the request was sent; giving up");
                    return Err(Failed::unsent(e, req));
                }
            };
            // The request goes into the stream, and this future holds no other copy of it.
            let error = match ready.send(req) {
                Ok(sent) => match sent.response().await {
                    Ok(rsp) => return Ok(rsp.map(UpstreamBody::H2)),
                    Err(e) => e,
                },
                Err(e) => SendError::H2(e),
            };
            let error = match error {
                SendError::H2(e) if self.not_http2(&target, generation) => SendError::NotHttp2(e),
                e => e,
            };
            let refused = match &error {
                SendError::H2(h2) => refused_unprocessed(h2),
                _ => None,
            };
            let Some(head) = head.as_ref().filter(|_| refused.is_some() && sends < MAX_H2_SENDS)
            else {
                if refused.is_some() {
                    debug!(upstream = %target.addr, %error, sends, generation, has_body = head.is_none(), "the upstream refused the stream unprocessed; giving up");
                }
                return Err(Failed::sent(error));
            };
            debug!(upstream = %target.addr, %error, sends, generation, "the upstream refused the stream unprocessed; sending it again");
            if refused == Some(Refused::GoingAway) {
                self.forget_h2(&target, generation);
            }
            req = copy_head(head).map(|()| empty_body());
        }
    }

    /// The target's HTTP/2 connection and its generation, made if there is none (or it
    /// closed).
    async fn h2_sender(&self, target: &Key) -> Result<(u64, h2_upstream::Sender), SendError> {
        match self.live_h2_sender(target) {
            Ok(live) => Ok(live),
            // Connecting is rare, and its future (TLS included) large: boxed, so that the
            // future of every request stays small.
            Err(slot) => Box::pin(self.connect_h2(slot, target)).await,
        }
    }

    /// The target's live HTTP/2 connection, which most requests find; else its slot.
    fn live_h2_sender(&self, target: &Key) -> Result<(u64, h2_upstream::Sender), H2Slot> {
        let mut h2 = self.h2.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match h2.get(target) {
            Some(slot) => slot,
            None => h2.entry(target.clone()).or_default(),
        };
        // Nobody is replacing it.
        if let Ok(s) = slot.try_lock()
            && let Some(sender) = s.sender.as_ref().filter(|s| !s.is_closed())
        {
            return Ok((s.generation, sender.clone()));
        }
        Err(slot.clone())
    }

    async fn connect_h2(
        &self,
        slot: H2Slot,
        target: &Key,
    ) -> Result<(u64, h2_upstream::Sender), SendError> {
        // Held while connecting, so concurrent first requests share one connection.
        let mut slot = slot.lock().await;
        if let Some(s) = &slot.sender
            && !s.is_closed()
        {
            return Ok((slot.generation, s.clone()));
        }
        let io = self.connect(target, Protocol::Http2).await?;
        let max_header_bytes = self.config.max_header_bytes as u32;
        let sender = h2_upstream::handshake(io, max_header_bytes, self.config.idle_timeout)
            .await
            .map_err(SendError::H2Handshake)?;
        slot.generation += 1;
        slot.sender = Some(sender.clone());
        Ok((slot.generation, sender))
    }

    /// Whether the target's connection of `generation` found that the upstream does not
    /// speak HTTP/2 (on the failure path only: the pool is locked for it).
    fn not_http2(&self, target: &Key, generation: u64) -> bool {
        let slot = self.h2.lock().unwrap_or_else(|e| e.into_inner()).get(target).cloned();
        slot.is_some_and(|slot| {
            slot.try_lock().is_ok_and(|s| {
                s.generation == generation
                    && s.sender.as_ref().is_some_and(h2_upstream::Sender::not_http2)
            })
        })
    }

    /// Stops giving out the target's connection of `generation` (it is going away); a
    /// newer one is kept.
    fn forget_h2(&self, target: &Key, generation: u64) {
        let slot = self.h2.lock().unwrap_or_else(|e| e.into_inner()).get(target).cloned();
        if let Some(slot) = slot
            && let Ok(mut slot) = slot.try_lock()
            && slot.generation == generation
        {
            slot.sender = None;
        }
    }

    async fn connect(&self, target: &Key, protocol: Protocol) -> Result<Box<dyn Io>, ConnError> {
        if let (Some(id), Some(server_id)) = (&self.identity, &target.server_id) {
            let alpn = match protocol {
                Protocol::Http2 => crate::identity::Alpn::H2,
                _ => crate::identity::Alpn::None,
            };
            let t = crate::mtls::TlsTarget {
                addr: target.addr,
                server_id: server_id.to_string(),
                alpn,
                opaque_port: None,
                protocol: None,
                labels: target.labels.clone(),
            };
            let tls = crate::mtls::connect(
                id,
                &t,
                &self.metrics,
                self.direction,
                self.config.connect,
                &protocol,
            )
            .await?;
            return Ok(Box::new(tls));
        }
        let stream = transport::connect(target.addr, self.config.connect).await?;
        let tls = crate::metrics::TlsLabels::plaintext(if self.identity.is_some() {
            "not_provided_by_service_discovery"
        } else {
            "disabled"
        });
        let metrics = self.metrics.open_endpoint(
            self.direction,
            Peer::Dst,
            &target.addr,
            &protocol,
            tls,
            &target.labels,
        );
        Ok(Box::new(MeteredIo::new(stream, bytes::BytesMut::new(), metrics)))
    }
}
