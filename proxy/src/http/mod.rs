//! The HTTP layer: serves HTTP/1 and HTTP/2 connections that the transport core
//! detected, and forwards each request to the target over pooled upstream connections —
//! streaming bodies both ways, keeping trailers, switching upgrades (WebSocket, CONNECT)
//! to opaque forwarding, carrying HTTP/1 as HTTP/2 between proxies, answering failures
//! with statuses a client can act on, and measuring every request.

pub mod access_log;
mod balanced;
mod h2_server;
mod h2_upstream;
pub mod metrics;
pub mod orig_proto;
pub mod pool;
pub mod retry;
mod rewake;
pub mod route_metrics;
#[cfg(test)]
mod socket_tests;
pub mod stream_idle;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header::{self, CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE},
    uri::Authority,
};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, server::conn, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tracing::debug;

use crate::{
    config::PortSet,
    detect::Protocol,
    discovery::Resolution,
    metrics::Direction,
    metrics::{DstLabels, TlsLabels},
    transport::{ConnError, Side},
};

pub use pool::{Pool, PoolConfig};

/// A response body as the proxy sends it to its client.
#[allow(
    clippy::large_enum_variant,
    reason = "the large variant is the common one; boxing it would allocate per request"
)]
pub(crate) enum RspBody {
    /// An upstream's, counted when it ends: every proxied response has one, so it is not
    /// boxed (an allocation per request less).
    Upstream(metrics::MeteredBody<stream_idle::StreamIdle>),
    /// Any other, such as the proxy's own answers (counted too).
    Other(UnsyncBoxBody<Bytes, pool::BodyError>),
}

impl RspBody {
    fn other<B>(body: B) -> Self
    where
        B: Body<Data = Bytes, Error = pool::BodyError> + Send + 'static,
    {
        RspBody::Other(body.boxed_unsync())
    }
}

impl RspBody {
    /// Ends a response that cannot have content (to HEAD, a 204, a 304) without reading
    /// its body; an HTTP/2 upstream's stream is reset (CANCEL) if it had more to send.
    fn end_without_content(self) {
        match self {
            RspBody::Upstream(b) => b.end_without_content(),
            RspBody::Other(_) => {}
        }
    }
}

impl Body for RspBody {
    type Data = Bytes;
    type Error = pool::BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, pool::BodyError>>> {
        match self.get_mut() {
            RspBody::Upstream(b) => std::pin::Pin::new(b).poll_frame(cx),
            RspBody::Other(b) => std::pin::Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RspBody::Upstream(b) => b.is_end_stream(),
            RspBody::Other(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            RspBody::Upstream(b) => b.size_hint(),
            RspBody::Other(b) => b.size_hint(),
        }
    }
}

/// The header that tells the app the identity of a meshed client.
pub const CLIENT_ID: &str = "l5d-client-id";
static CLIENT_ID_HEADER: HeaderName = HeaderName::from_static(CLIENT_ID);

/// The header that tells a client why the proxy, not the upstream, failed its request.
pub const PROXY_ERROR: &str = "l5d-proxy-error";

/// HTTP settings of one side (inbound or outbound).
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Longest wait for an upstream's response headers (none when zero).
    pub response_header_timeout: Duration,
    /// Longest wait for the next frame of an upstream's response body (none when zero).
    pub stream_idle_timeout: Duration,
    /// A client connection with nothing in flight this long is closed (see `serve`).
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_pending_reset_streams: usize,
    pub h2_max_local_error_reset_streams: usize,
    /// Targets whose proxy takes HTTP/1 as HTTP/2 (`l5d-orig-proto`); outbound only.
    pub h2_upgrade: TargetSet,
}

/// A set of targets given as `*` (all), or a list of `ip:port` and ports.
#[derive(Debug, Clone, Default)]
pub struct TargetSet {
    all: bool,
    addrs: Vec<SocketAddr>,
    ports: PortSet,
}

impl TargetSet {
    pub fn contains(&self, target: SocketAddr) -> bool {
        self.all || self.addrs.contains(&target) || self.ports.contains(target.port())
    }
}

impl std::str::FromStr for TargetSet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut set = TargetSet::default();
        let mut ports = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            if item == "*" {
                set.all = true;
            } else if let Ok(addr) = item.parse::<SocketAddr>() {
                set.addrs.push(addr);
            } else {
                ports.push(item);
            }
        }
        set.ports = ports.join(",").parse().map_err(|e| {
            format!("{s:?} is not a target list (`*`, ip:port or ports, comma-separated): {e}")
        })?;
        Ok(set)
    }
}

/// Everything the HTTP layer of one side shares across connections.
#[derive(Debug)]
pub struct Http {
    pub config: HttpConfig,
    pub pool: Arc<Pool>,
    /// Requests in flight on this side; past the limit new ones are shed with 503.
    pub in_flight: Arc<Semaphore>,
    /// Inbound, when `--access-log` is set: a line per request.
    pub access_log: Option<Arc<access_log::AccessLog>>,
}

/// Who the client of an inbound HTTP connection is, as far as the proxy knows.
#[derive(Debug)]
pub struct Caller {
    pub client_addr: SocketAddr,
    /// The client's identity when the connection is mTLS from a meshed client.
    pub client_id: Option<Arc<str>>,
    /// Inbound: the policy's decision for the connection, checked per request.
    pub authz: Option<crate::policy::ConnAuthz>,
    /// Outbound: what discovery said of the target (looked up once per connection,
    /// before detection); `None` forwards to the target as it is.
    pub dst: Option<Arc<crate::discovery::Resolution>>,
}

/// HTTP/2 pings to a peer (a client, or an upstream) every this long...
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// ...and how long it has to answer before its connection is closed: a peer that
/// vanished, or one that will not answer.
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Pings an HTTP/2 peer (a client, or an upstream) every `H2_KEEP_ALIVE_INTERVAL`; ends
/// when one is not answered within `H2_KEEP_ALIVE_TIMEOUT`. (A failed connection ends its
/// own future first.)
pub(super) async fn h2_keep_alive(pings: Option<h2::PingPong>) {
    let Some(mut pings) = pings else { return std::future::pending().await };
    loop {
        tokio::time::sleep(H2_KEEP_ALIVE_INTERVAL).await;
        match tokio::time::timeout(H2_KEEP_ALIVE_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            // The connection failed: its own future says so.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

/// Serves one detected HTTP connection until it closes, or until `side.stop` asks for a
/// graceful close (HTTP/1: after the current response; HTTP/2: GOAWAY). A connection with
/// no request in flight for `idle_timeout` is closed the same way, so idle clients give
/// their slot back: HTTP/1 by hyper's header-read timeout, which runs while it waits for
/// the next request; HTTP/2 by `idle::watch`, a stream being in flight until its response
/// body ends. HTTP/2 clients are also pinged, so one that vanished is found out.
pub async fn serve<I>(
    client: I,
    protocol: Protocol,
    target: SocketAddr,
    side: Arc<Side>,
    caller: Caller,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Caller { client_addr, client_id, authz, dst } = caller;
    let tls = match &client_id {
        Some(_) => TlsLabels::client(client_id.clone()),
        None => side.tls_labels(&protocol),
    };
    let tunnels = tokio_util::task::TaskTracker::new();
    let config = &side.http.config;
    let stop = side.stop.clone();
    let conn = Arc::new(Conn {
        side: side.clone(),
        dst,
        target,
        client_addr,
        tls,
        client_id,
        authz,
        routes: Default::default(),
        tunnels: tunnels.clone(),
    });
    // HTTP/2: what `idle::watch` closes an idle connection by. HTTP/1: what tells an idle
    // keep-alive connection that hyper's header-read timeout closed from a stalled client.
    let activity = crate::idle::Activity::new();
    let h2 = matches!(protocol, Protocol::Http2);
    let failed: Option<(&'static str, String)> = if h2 {
        // Each stream is in flight until its response body has been sent (or given up).
        // Boxed: moving a future copies all of it, and the stream's task moves this one
        // several times before its first poll; a pointer is cheaper to move.
        let handle = move |req| Box::pin(proxy(req, conn.clone()));
        let c = h2_server::Server::new(client, config, activity.clone(), handle);
        tokio::pin!(c);
        let watched = crate::idle::watch(
            c.as_mut(),
            |c| c.graceful_shutdown(),
            &activity,
            config.idle_timeout,
            &stop,
        );
        // `None`: asked to close, it neither did nor had anything in flight; dropped.
        match watched.await {
            Some(Err(e)) => Some((e.label(), e.to_string())),
            _ => None,
        }
    } else {
        let act = activity.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let conn = conn.clone();
            // HTTP/1 reads no next request head before this response is written, so its
            // end is its head's.
            let in_flight = act.begin();
            // Boxed: the request's future is large, and hyper moves it; a pointer is
            // cheaper to move than the state machine.
            async move {
                let rsp = Box::pin(proxy(req.map(h1_body), conn)).await;
                drop(in_flight);
                Ok::<_, Infallible>(rsp)
            }
        });
        let c = conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .max_buf_size(config.max_header_bytes.max(8192))
            .header_read_timeout(config.idle_timeout)
            .serve_connection(
                TokioIo::new(crate::idle::CountReads::new(client, activity.clone())),
                svc,
            )
            .with_upgrades();
        tokio::pin!(c);
        let result = tokio::select! {
            r = c.as_mut() => r,
            _ = stop.cancelled() => {
                c.as_mut().graceful_shutdown();
                c.await
            }
        };
        match result {
            // hyper's header-read timeout on a keep-alive connection that sat idle between
            // requests: the normal end of an idle connection, as HTTP/2's idle close is.
            Err(e) if e.is_timeout() && activity.between_requests() => {
                debug!(idle_timeout = ?config.idle_timeout, "keep-alive connection idle; closed");
                None
            }
            Err(e) => Some((h1_connection_error(&e), e.to_string())),
            Ok(()) => None,
        }
    };
    if let Some((label, error)) = failed {
        side.metrics.http.error(side.direction, label);
        debug!(%error, error.kind = label, "HTTP connection ended with an error");
    }
    // An upgraded connection outlives the HTTP connection: the tunnel still holds the client.
    tunnels.close();
    tunnels.wait().await;
}

/// A request body from hyper's HTTP/1 server as the proxy forwards it; nothing to stream
/// (a GET) is a zero-sized body, which boxing does not allocate.
fn h1_body(body: Incoming) -> pool::ReqBody {
    if body.is_end_stream() {
        pool::empty_body()
    } else {
        body.map_err(pool::BodyError::H1).boxed_unsync()
    }
}

/// The `error` label of a client HTTP/1 connection that failed: what the client did wrong,
/// or which protection closed it.
fn h1_connection_error(e: &hyper::Error) -> &'static str {
    if e.is_parse_too_large() {
        "header_too_large"
    } else if e.is_parse() {
        "bad_request"
    } else if e.is_timeout() {
        "header_timeout"
    } else if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        "client_closed"
    } else {
        "connection_error"
    }
}

/// What every request of a client connection shares.
struct Conn {
    side: Arc<Side>,
    /// The target's service, when discovery knows it: balanced per request.
    dst: Option<Arc<Resolution>>,
    target: SocketAddr,
    client_addr: SocketAddr,
    tls: TlsLabels,
    /// The client's proven identity: sent to the app as `l5d-client-id`.
    client_id: Option<Arc<str>>,
    authz: Option<crate::policy::ConnAuthz>,
    routes: metrics::RouteCache,
    /// Upgraded connections (WebSocket, CONNECT) started on this connection: `serve` waits
    /// for them, so that the connection's slot (`WEFT_PROXY_MAX_CONNECTIONS`) and the
    /// drain's tracking last as long as its tunnels do.
    tunnels: tokio_util::task::TaskTracker,
}

/// Forwards one request; never fails: the proxy's own failures become responses.
async fn proxy(mut req: Request<pool::ReqBody>, conn: Arc<Conn>) -> Response<RspBody> {
    let conn = &*conn;
    let side = &conn.side;
    let target = conn.target;
    // Before anything reads or adds a header: the request's framing and target checked,
    // the hop-by-hop headers dropped.
    let checked_head = check_head(&mut req);
    // A client that stops sending its request's body holds the upstream's stream as a
    // stalled upstream holds the client's: the same limit cuts it (the upstream sees the
    // request fail).
    let idle = side.http.config.stream_idle_timeout;
    if !idle.is_zero() && !req.body().is_end_stream() {
        let (metrics, direction) = (&side.metrics, side.direction);
        req = req.map(|b| stream_idle::StreamIdle::new(b, idle, metrics, direction).boxed_unsync());
    }
    if side.direction == Direction::Inbound {
        // Only this proxy may say who the client is.
        req.headers_mut().remove(&CLIENT_ID_HEADER);
        if let Some(id) = &conn.client_id
            && let Ok(v) = HeaderValue::from_str(id)
        {
            req.headers_mut().insert(CLIENT_ID_HEADER.clone(), v);
        }
    }
    let started = Instant::now();
    let mut access = side
        .http
        .access_log
        .as_ref()
        .map(|log| log.begin(&req, conn.client_addr, conn.client_id.clone()));
    let metrics = &side.metrics;
    let direction = side.direction;
    let direct_route = {
        let authority = authority(&req);
        let make = || {
            let target_addr = side.target_label(target);
            metrics.http.route(
                direction,
                authority,
                target_addr,
                DstLabels::default(),
                conn.tls.clone(),
            )
        };
        conn.routes.get(authority, None, |_| true, make)
    };

    if let Err(bad) = checked_head {
        metrics.http.request(&direct_route);
        metrics.http.error(direction, "bad_request");
        debug!(method = %req.method(), error = %bad, "malformed request");
        let rsp = error_response(bad.status(), &bad.to_string());
        return finish(side, direct_route, started, rsp, access, None);
    }

    let checked = conn.authz.as_ref().map(|authz| authz.check_request(&req));
    if let Some(Err(refusal)) = checked {
        metrics.http.request(&direct_route);
        debug!(method = %req.method(), path = req.uri().path(), ?refusal, "request refused by the inbound policy");
        metrics.http.error(direction, refusal.label());
        let rsp = if is_grpc(req.headers()) {
            grpc_error_response(refusal.grpc_status(), refusal.why())
        } else {
            error_response(refusal.status(), refusal.why())
        };
        return finish(side, direct_route, started, rsp, access, None);
    }
    // The filters of the route rule the request matched: header changes before the app
    // sees it, or the proxy's own answer (a redirect, an injected failure).
    if let Some(Ok(Some(filtering))) = checked
        && let Err(answer) = filtering.apply(&mut req)
    {
        metrics.http.request(&direct_route);
        debug!(method = %req.method(), path = req.uri().path(), ?answer, "request answered by a route filter");
        return finish(side, direct_route, started, filter_answer(answer), access, None);
    }

    let Ok(_permit) = side.http.in_flight.clone().try_acquire_owned() else {
        metrics.http.request(&direct_route);
        metrics.http.error(direction, "load_shed");
        let rsp =
            error_response(StatusCode::SERVICE_UNAVAILABLE, "in-flight request limit reached");
        return finish(side, direct_route, started, rsp, access, None);
    };

    if is_upgrade(&req) {
        metrics.http.request(&direct_route);
        // Boxed, as below: rare, and its future is large.
        let rsp = Box::pin(upgrade::forward(req, target, side, &conn.tunnels)).await;
        return finish(side, direct_route, started, rsp, access, None);
    }

    let client_version = req.version();
    let is_grpc = is_grpc(req.headers());
    let (parts, body) = match normalize(req) {
        Ok(r) => r.into_parts(),
        Err(e) => {
            metrics.http.request(&direct_route);
            metrics.http.error(direction, "bad_request");
            let rsp = error_response(StatusCode::BAD_REQUEST, &e.to_string());
            return finish(side, direct_route, started, rsp, access, None);
        }
    };
    let body = match &access {
        Some(entry) if !body.is_end_stream() => entry.count_request(body).boxed_unsync(),
        _ => body,
    };
    if let Some(entry) = &mut access {
        entry.forwarding();
    }
    let reply =
        Reply { side, started, client_version, is_grpc, access: Mutex::new(access), rt: None };
    match &conn.dst {
        Some(res) => {
            let req = balanced::Request {
                parts,
                body,
                // The label, not the header: authorities past the cap share one route.
                authority: direct_route.labels.authority.clone(),
                target,
                tls: conn.tls.clone(),
                routes: &conn.routes,
            };
            // Boxed: its future (retries, each a send) is large, and would otherwise be
            // part of every request's, which is moved as a whole.
            Box::pin(balanced::forward(req, res, reply)).await
        }
        None => {
            metrics.http.request(&direct_route);
            let h2 =
                direction == Direction::Outbound && side.http.config.h2_upgrade.contains(target);
            // Boxed (`pool::Sending`): the timeout moves only a pointer.
            let send = send(side, pool::Key::plain(target), parts, body, h2);
            let result = with_timeout(side.http.config.response_header_timeout, send).await;
            reply.respond(direct_route, result.map(|r| r.map_err(|f| f.error)), target)
        }
    }
}

/// Makes the request fit to forward: the original HTTP/1 request restored when a peer
/// proxy carried it as HTTP/2 (only HTTP/2 carries it: `check_head` dropped the marker
/// from an HTTP/1 request).
fn normalize(mut req: Request<pool::ReqBody>) -> Result<Request<pool::ReqBody>, orig_proto::Error> {
    if req.version() == Version::HTTP_2 {
        orig_proto::downgrade(&mut req)?;
    }
    Ok(req)
}

/// Why a request was refused before it went anywhere.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum BadHead {
    #[error("an HTTP/1.1 request needs exactly one Host header (RFC 9112 §3.2)")]
    Host,
    #[error("the Host header is not a valid authority")]
    BadHost,
    #[error("the Host header names another authority than :authority (RFC 9113 §8.3.1)")]
    HostMismatch,
    #[error("the request names no authority (neither :authority nor Host)")]
    NoAuthority,
    #[error("the request target carries user information (RFC 9110 §4.2.4)")]
    UserInfo,
    #[error("the request target * is for OPTIONS only (RFC 9112 §3.2.4)")]
    Asterisk,
    #[error("transfer coding {0:?} is not supported: only chunked is (RFC 9112 §6.1)")]
    TransferCoding(String),
    #[error("the value of header {0:?} starts or ends with whitespace (RFC 9113 §8.2.1)")]
    FieldWhitespace(HeaderName),
}

impl BadHead {
    fn status(&self) -> StatusCode {
        match self {
            BadHead::TransferCoding(_) => StatusCode::NOT_IMPLEMENTED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Checks a request's head before anything reads it, and makes it consistent:
/// - the target: HTTP/1.1 has exactly one valid Host, which an absolute-form target's
///   authority replaces (RFC 9112 §3.2.2); HTTP/2 has `:authority`, or gets it from Host,
///   and a Host that names another authority is malformed (RFC 9113 §8.3.1), so the
///   proxy's routing, policy and metrics see what the app will see;
/// - the framing: a transfer coding other than chunked cannot be passed on (501);
/// - the hop-by-hop headers (RFC 9110 §7.6.1) dropped — before the proxy adds its own,
///   so that `Connection` cannot name them — except, on an upgrade, `Upgrade` and
///   `Connection: upgrade`; an `Upgrade` that `Connection` does not name, or to `h2c`
///   (RFC 9113 §3.1), or in HTTP/1.0 (RFC 9110 §7.8: ignored, as hyper does), is no
///   upgrade, and is dropped;
/// - `l5d-orig-proto` dropped from HTTP/1: only a peer proxy's HTTP/2 carries it;
/// - HTTP/2 field values: none starts or ends with whitespace (RFC 9113 §8.2.1 makes such
///   a request malformed, for an intermediary not to forward; the h2 crate lets it by, and
///   HTTP/1 parsers trim it).
fn check_head<B>(req: &mut Request<B>) -> Result<(), BadHead> {
    if req.uri().authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(BadHead::UserInfo);
    }
    if req.uri().path() == "*" && req.method() != Method::OPTIONS {
        return Err(BadHead::Asterisk);
    }
    if req.version() == Version::HTTP_2 {
        let padded = |v: &HeaderValue| {
            let b = v.as_bytes();
            [b.first(), b.last()].into_iter().flatten().any(|&c| c == b' ' || c == b'\t')
        };
        if let Some((name, _)) = req.headers().iter().find(|(_, v)| padded(v)) {
            return Err(BadHead::FieldWhitespace(name.clone()));
        }
        h2_authority(req)?;
    } else {
        h1_host(req)?;
        req.headers_mut().remove(&orig_proto::HEADER);
    }
    if let Some(other) = other_transfer_coding(req.headers()) {
        return Err(BadHead::TransferCoding(other.to_string()));
    }
    let upgrade = req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && !drop_false_upgrade(req.headers_mut());
    strip_hop_by_hop(req.headers_mut(), if upgrade { Hop::Upgrade } else { Hop::Request });
    Ok(())
}

/// HTTP/1: one Host, a valid authority, replaced by an absolute-form target's.
fn h1_host<B>(req: &mut Request<B>) -> Result<(), BadHead> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() || (host.is_none() && req.version() == Version::HTTP_11) {
        return Err(BadHead::Host);
    }
    if host.is_some_and(|h| !host_syntax(h.as_bytes())) {
        return Err(BadHead::BadHost);
    }
    if let Some(authority) = req.uri().authority()
        && req.method() != Method::CONNECT
    {
        let value = HeaderValue::from_str(authority.as_str()).map_err(|_| BadHead::BadHost)?;
        req.headers_mut().insert(HOST, value);
    }
    Ok(())
}

/// Whether `host` is made of what an authority without user information may hold
/// (RFC 3986 §3.2: reg-name or IP literal characters, a port): a byte check, not a parse,
/// as it runs on every HTTP/1 request (a parse into `Authority` copies the value).
fn host_syntax(host: &[u8]) -> bool {
    !host.is_empty() && host.iter().all(|&b| HOST_BYTES[usize::from(b)])
}

/// The bytes `host_syntax` allows, by value: a lookup per byte rather than a search of the
/// punctuation list.
static HOST_BYTES: [bool; 256] = {
    let mut ok = [false; 256];
    let mut b = 0;
    while b < 256 {
        ok[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let punct = b"-._~!$&'()*+,;=:[]%";
    let mut i = 0;
    while i < punct.len() {
        ok[punct[i] as usize] = true;
        i += 1;
    }
    ok
};

/// HTTP/2: `:authority`, from Host when only that came; Host, if any, agrees with it and
/// goes (`:authority` carries it on).
fn h2_authority<B>(req: &mut Request<B>) -> Result<(), BadHead> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let (host, more) = (hosts.next(), hosts.next().is_some());
    match (req.uri().authority(), host) {
        (Some(_), None) => return Ok(()),
        (None, None) => return Err(BadHead::NoAuthority),
        (_, Some(_)) if more => return Err(BadHead::Host),
        (Some(a), Some(h)) => {
            if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) {
                return Err(BadHead::HostMismatch);
            }
        }
        (None, Some(h)) => {
            let authority = h
                .to_str()
                .ok()
                .and_then(|h| h.parse::<Authority>().ok())
                .filter(|a| !a.as_str().contains('@'))
                .ok_or(BadHead::BadHost)?;
            let uri = req.uri();
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let built = Uri::builder()
                .scheme(uri.scheme_str().unwrap_or("http"))
                .authority(authority)
                .path_and_query(path)
                .build()
                .map_err(|_| BadHead::BadHost)?;
            *req.uri_mut() = built;
        }
    }
    req.headers_mut().remove(HOST);
    Ok(())
}

/// The request-head checks, for the fuzz targets (`fuzz/`): not an API.
#[doc(hidden)]
pub mod fuzzing {
    use http::{Request, StatusCode};

    /// `check_head`; a refusal as the status and the message the client gets.
    pub fn check_head<B>(req: &mut Request<B>) -> Result<(), (StatusCode, String)> {
        super::check_head(req).map_err(|e| (e.status(), e.to_string()))
    }

    pub fn h1_host<B>(req: &mut Request<B>) -> Result<(), String> {
        super::h1_host(req).map_err(|e| e.to_string())
    }

    pub fn h2_authority<B>(req: &mut Request<B>) -> Result<(), String> {
        super::h2_authority(req).map_err(|e| e.to_string())
    }

    pub fn host_syntax(host: &[u8]) -> bool {
        super::host_syntax(host)
    }

    /// The authority that routing, policy and metrics see.
    pub fn authority<B>(req: &Request<B>) -> &str {
        super::authority(req)
    }

    /// Whether the request goes on as an upgrade (WebSocket, CONNECT).
    pub fn is_upgrade<B>(req: &Request<B>) -> bool {
        super::is_upgrade(req)
    }
}

/// Drops an `Upgrade` that is no upgrade to forward: one that `Connection` does not name
/// (RFC 9110 §7.8), or to `h2c` (HTTP/2 between the proxies is theirs to choose, and
/// RFC 9113 §3.1 retired it). `true` when dropped.
fn drop_false_upgrade(headers: &mut HeaderMap) -> bool {
    let named = connection_names(headers).any(|n| n == UPGRADE);
    let h2c = headers
        .get_all(UPGRADE)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or_default().split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("h2c"));
    if named && !h2c {
        return false;
    }
    headers.remove(UPGRADE);
    true
}

/// The header names a message's `Connection` lists.
fn connection_names(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
}

/// Sends one try to `target` (an endpoint, and the identity its proxy must prove when it
/// is meshed); `h2`: the peer is a proxy that takes HTTP/1 as HTTP/2. Not `async`:
/// the request is made ready here, so that the pool's future (boxed) is the only one that
/// holds it.
fn send(
    side: &Side,
    target: pool::Key,
    parts: http::request::Parts,
    body: pool::ReqBody,
    h2: bool,
) -> pool::Sending<'_> {
    let mut req = Request::from_parts(parts, body);
    if h2
        && req.version() != Version::HTTP_2
        && let Err(e) = orig_proto::upgrade(&mut req)
    {
        debug!(error = %e, "sending as HTTP/1");
    }
    let version = req.version();
    side.http.pool.send(target, version, req)
}

/// `Err(())` when `limit` (non-zero) passed first.
async fn with_timeout<T>(
    limit: Duration,
    f: impl std::future::Future<Output = T>,
) -> Result<T, ()> {
    if limit.is_zero() { Ok(f.await) } else { tokio::time::timeout(limit, f).await.map_err(|_| ()) }
}

/// What the response to a client needs to know of its request.
struct Reply<'a> {
    side: &'a Arc<Side>,
    started: Instant,
    client_version: Version,
    is_grpc: bool,
    /// Locked only to take it: the reply is shared by the tries of a balanced request.
    access: Mutex<Option<Box<access_log::Entry>>>,
    /// The metrics of the request's service route, when it has them.
    rt: Option<Arc<route_metrics::RtRoute>>,
}

impl Reply<'_> {
    /// The client's response: the upstream's, or the proxy's own failure as a status.
    fn respond(
        &self,
        route: Arc<metrics::RouteMetrics>,
        result: Result<Result<Response<pool::UpstreamBody>, pool::SendError>, ()>,
        upstream: SocketAddr,
    ) -> Response<RspBody> {
        let (metrics, direction) = (&self.side.metrics, self.side.direction);
        let rsp = match result {
            Err(()) => response_timeout(self.side, upstream),
            Ok(Err(e)) => match client_body_error(&e) {
                // The client's own body failed (bad chunking, a client gone mid-upload, one
                // that stalled it past the stream idle timeout, which counted it): its
                // error, not the upstream's.
                Some((why, stalled)) => {
                    if !stalled {
                        metrics.http.error(direction, "bad_request");
                    }
                    debug!(error = %why, "the client's request body failed");
                    let status =
                        if stalled { StatusCode::REQUEST_TIMEOUT } else { StatusCode::BAD_REQUEST };
                    error_response(status, &format!("the request body failed: {why}"))
                }
                None => {
                    let (label, message) = send_error(&e);
                    metrics.http.error(direction, label);
                    crate::throttled!(warn, %upstream, error = %e, "request failed");
                    error_response(StatusCode::BAD_GATEWAY, &message)
                }
            },
            Ok(Ok(rsp)) if let Some(why) = unforwardable(&rsp) => {
                metrics.http.error(direction, "upstream_error");
                crate::throttled!(warn, %upstream, why, "response not forwarded");
                error_response(StatusCode::BAD_GATEWAY, why)
            }
            Ok(Ok(mut rsp)) => {
                strip_hop_by_hop(rsp.headers_mut(), Hop::Response);
                // The client gets the response in its own version.
                *rsp.version_mut() = self.client_version;
                let status = rsp.status().as_u16();
                metrics.http.latency(&route, status, self.started);
                let done = metrics::Done {
                    metrics: metrics.clone(),
                    route,
                    status_code: status,
                    grpc_status: metrics::grpc_status(rsp.headers()),
                    is_grpc: self.is_grpc,
                    access: self.take_access(),
                    rt: self.rt_done(status),
                };
                let timeout = self.side.http.config.stream_idle_timeout;
                let direction = self.side.direction;
                return rsp.map(|b| {
                    let b = stream_idle::StreamIdle::new(b, timeout, metrics, direction);
                    RspBody::Upstream(metrics::MeteredBody::new(b, done))
                });
            }
        };
        self.finish(route, rsp)
    }

    /// The proxy's own answer to the client (a failure, a timeout), counted.
    fn finish(
        &self,
        route: Arc<metrics::RouteMetrics>,
        rsp: Response<RspBody>,
    ) -> Response<RspBody> {
        let rt = self.rt_done(rsp.status().as_u16());
        finish(self.side, route, self.started, rsp, self.take_access(), rt)
    }

    /// Records the latency of a response with `status` in the route metrics, if any, and
    /// what its completion counts there.
    fn rt_done(&self, status: u16) -> Option<route_metrics::RtDone> {
        let route = self.rt.clone()?;
        self.side.metrics.http.profile_routes.latency(&route, status, self.started);
        Some(route_metrics::RtDone { status_failure: route.is_failure(status), route })
    }

    fn take_access(&self) -> Option<Box<access_log::Entry>> {
        self.access.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Why an upstream's response to a plain request cannot be passed on, if it cannot: a
/// `101` nobody asked for (upgrades take their own path), or a transfer coding other than
/// chunked, which the proxy would have to drop while the body stays coded.
fn unforwardable<B>(rsp: &Response<B>) -> Option<&'static str> {
    if rsp.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Some("the upstream switched protocols on a request that asked for no upgrade");
    }
    other_transfer_coding(rsp.headers())
        .map(|_| "the upstream used a transfer coding other than chunked")
}

/// The first transfer coding `headers` name other than chunked (the only one the proxy
/// decodes), if any.
fn other_transfer_coding(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .map(str::trim)
        .find(|c| !c.eq_ignore_ascii_case("chunked"))
}

/// The answer when `upstream` sent no response headers within the response-header timeout:
/// 504, counted.
fn response_timeout(side: &Side, upstream: SocketAddr) -> Response<RspBody> {
    let timeout = side.http.config.response_header_timeout;
    side.metrics.http.error(side.direction, "response_timeout");
    crate::throttled!(warn, %upstream, ?timeout, "no response headers from the upstream in time");
    error_response(
        StatusCode::GATEWAY_TIMEOUT,
        &format!("response timeout: no response headers from {upstream} in time"),
    )
}

/// What failed a try when it was the client's request body, not the upstream: over
/// HTTP/1, hyper reports a user error with the body's error as its source; over HTTP/2,
/// the body's pipe reset the stream and says why. With why, and whether the body stalled
/// past the stream idle timeout.
fn client_body_error(e: &pool::SendError) -> Option<(String, bool)> {
    match e {
        pool::SendError::Http(h) if h.is_user() => {
            let body = std::error::Error::source(h)?.downcast_ref::<pool::BodyError>()?;
            Some((body.to_string(), matches!(body, pool::BodyError::StreamIdle(_))))
        }
        pool::SendError::RequestBody { why, stalled } => Some((why.clone(), *stalled)),
        _ => None,
    }
}

/// The `error` label and the `l5d-proxy-error` text of a failed try.
fn send_error(e: &pool::SendError) -> (&'static str, String) {
    match e {
        pool::SendError::Connect(ConnError::ConnectRefused(_)) => {
            ("connect_refused", "connection refused".into())
        }
        pool::SendError::Connect(ConnError::ConnectTimeout(..)) => {
            ("connect_timeout", "connect timed out".into())
        }
        pool::SendError::Connect(_) => ("connect_error", e.to_string()),
        _ => ("upstream_error", e.to_string()),
    }
}

/// Records latency and the response of a response made by the proxy itself.
fn finish(
    side: &Side,
    route: Arc<metrics::RouteMetrics>,
    started: Instant,
    rsp: Response<RspBody>,
    access: Option<Box<access_log::Entry>>,
    rt: Option<route_metrics::RtDone>,
) -> Response<RspBody> {
    let status = rsp.status().as_u16();
    side.metrics.http.latency(&route, status, started);
    let grpc_status = metrics::grpc_status(rsp.headers());
    let done = metrics::Done {
        metrics: side.metrics.clone(),
        route,
        status_code: status,
        grpc_status,
        is_grpc: grpc_status.is_some(),
        access,
        rt,
    };
    rsp.map(|b| RspBody::other(metrics::MeteredBody::new(b, done)))
}

fn error_response(status: StatusCode, why: &str) -> Response<RspBody> {
    let mut rsp = Response::new(RspBody::other(
        Full::new(Bytes::from(format!("{why}\n"))).map_err(|never| match never {}),
    ));
    *rsp.status_mut() = status;
    let h = rsp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    if let Ok(v) = HeaderValue::from_str(why) {
        h.insert(PROXY_ERROR, v);
    }
    rsp
}

/// The proxy's answer for a route filter: a redirect, or an injected failure (its message
/// in `l5d-proxy-error`, as linkerd2-proxy sends it; a gRPC route's as a gRPC error).
fn filter_answer(answer: crate::policy::filter::Answer) -> Response<RspBody> {
    use crate::policy::filter::{Answer, Failure};
    match answer {
        Answer::Redirect { status, location } => {
            let mut rsp =
                Response::new(RspBody::other(Empty::new().map_err(|never| match never {})));
            *rsp.status_mut() = status;
            rsp.headers_mut().insert(header::LOCATION, location);
            rsp
        }
        Answer::Fail { failure: Failure::Http(status), message } => {
            error_response(status, &message)
        }
        Answer::Fail { failure: Failure::Grpc(code), message } => {
            grpc_error_response(u32::from(code), &message)
        }
        Answer::NoRedirectHost => error_response(
            StatusCode::BAD_REQUEST,
            "bad request: the route redirects, and the request names no host to redirect to",
        ),
    }
}

/// A gRPC error as a trailers-only response: HTTP 200 with `grpc-status` and
/// `grpc-message` in the headers, and no body.
fn grpc_error_response(code: u32, why: &str) -> Response<RspBody> {
    let mut rsp = Response::new(RspBody::other(Empty::new().map_err(|never| match never {})));
    let h = rsp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&grpc_message(why)) {
        h.insert("grpc-message", v);
    }
    if let Ok(v) = HeaderValue::from_str(why) {
        h.insert(PROXY_ERROR, v);
    }
    rsp
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2): bytes outside printable ASCII,
/// and `%` itself, become `%XX`, so a client decodes exactly the message.
fn grpc_message(why: &str) -> std::borrow::Cow<'_, str> {
    let plain = |b: u8| (0x20..=0x7e).contains(&b) && b != b'%';
    if why.bytes().all(plain) {
        return std::borrow::Cow::Borrowed(why);
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(why.len() + 8);
    for b in why.bytes() {
        if plain(b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    std::borrow::Cow::Owned(out)
}

fn authority<B>(req: &Request<B>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
        .unwrap_or_default()
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        || (req.version() == Version::HTTP_11 && req.headers().contains_key(UPGRADE))
}

/// Which message `strip_hop_by_hop` cleans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// A request: it keeps `te: trailers`, which gRPC needs (RFC 9113 §8.2.2 allows it
    /// there only).
    Request,
    /// An upgrade request: it keeps `Upgrade`, and `Connection` is only `upgrade`.
    Upgrade,
    /// A response: it loses any `TE`.
    Response,
}

/// Removes the headers that describe one hop (RFC 9110 §7.6.1): `Connection` and those it
/// names (never `Host`), and the fixed list. A message with `Transfer-Encoding` loses its
/// `Content-Length` too: the coding framed it, and the next hop frames it anew (RFC 9112
/// §6.3: a length kept beside a coding would cut the body short).
fn strip_hop_by_hop(headers: &mut HeaderMap, hop: Hop) {
    // Most messages carry none: one pass over the names is cheaper than the removals.
    let hop_by_hop = |n: &HeaderName| {
        [CONNECTION, TRANSFER_ENCODING, UPGRADE, TE, header::PROXY_AUTHENTICATE].contains(n)
            || n == "keep-alive"
            || n == "proxy-connection"
    };
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = connection_names(headers).filter(|n| n != HOST).collect();
    for name in named {
        if !(hop == Hop::Upgrade && name == UPGRADE) {
            headers.remove(name);
        }
    }
    if headers.remove(TRANSFER_ENCODING).is_some() {
        headers.remove(header::CONTENT_LENGTH);
    }
    for name in [CONNECTION, header::PROXY_AUTHENTICATE] {
        headers.remove(name);
    }
    if hop == Hop::Upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
    let te_trailers =
        headers.get(TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    headers.remove(TE);
    if hop == Hop::Request && te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

mod upgrade {
    //! `Upgrade` (WebSocket) and `CONNECT`: the request goes to the upstream on a
    //! connection of its own; after a 101 (or a 2xx to CONNECT) both connections are
    //! handed over to byte forwarding, on the client connection's `tunnels` (which hold its
    //! connection slot). The upstream's answer is awaited within the response-header
    //! timeout, as for any request.

    use super::*;

    pub async fn forward(
        mut req: Request<pool::ReqBody>,
        target: SocketAddr,
        side: &Arc<Side>,
        tunnels: &tokio_util::task::TaskTracker,
    ) -> Response<RspBody> {
        let direction = side.direction;
        let mut sender = match side.http.pool.connect_h1(&pool::Key::plain(target)).await {
            Ok(s) => s,
            Err(e) => {
                side.metrics.http.error(direction, "connect_error");
                return error_response(StatusCode::BAD_GATEWAY, &e.to_string());
            }
        };
        // An HTTP/2 client's CONNECT tunnels over its stream; HTTP/1's over the connection.
        let client_upgrade = match req.extensions_mut().remove::<h2_server::ClientTunnel>() {
            Some(stream) => Client::H2(stream),
            None => Client::H1(hyper::upgrade::on(&mut req)),
        };
        let is_connect = req.method() == Method::CONNECT;
        if req.version() == Version::HTTP_2 {
            // The tunnel's upstream leg is HTTP/1.1: a CONNECT in authority form, and the
            // Host header an HTTP/2 request carries as `:authority`.
            *req.version_mut() = Version::HTTP_11;
            if let Some(authority) = req.uri().authority().cloned()
                && !req.headers().contains_key(HOST)
                && let Ok(host) = HeaderValue::from_str(authority.as_str())
            {
                req.headers_mut().insert(HOST, host);
            }
        }
        let sent = with_timeout(side.http.config.response_header_timeout, sender.send_request(req));
        let mut rsp = match sent.await {
            Err(()) => return response_timeout(side, target),
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                side.metrics.http.error(direction, "upstream_error");
                return error_response(StatusCode::BAD_GATEWAY, &e.to_string());
            }
        };
        let switched = if is_connect {
            rsp.status().is_success()
        } else {
            rsp.status() == StatusCode::SWITCHING_PROTOCOLS
        };
        if switched {
            let upstream_upgrade = hyper::upgrade::on(&mut rsp);
            tunnels.spawn(async move {
                let upstream = match upstream_upgrade.await {
                    Ok(u) => TokioIo::new(u),
                    Err(e) => return debug!(error = %e, "upgrade failed"),
                };
                let copied = match client_upgrade {
                    Client::H1(client) => match client.await {
                        Ok(client) => tunnel(TokioIo::new(client), upstream).await,
                        Err(e) => return debug!(error = %e, "upgrade failed"),
                    },
                    Client::H2(stream) => match stream.stream().await {
                        Some(client) => tunnel(client, upstream).await,
                        None => return debug!("the CONNECT stream was not answered"),
                    },
                };
                if let Err(e) = copied {
                    debug!(error = %e, "upgraded connection ended with an error");
                }
            });
        }
        rsp.map(|b| RspBody::other(b.map_err(pool::BodyError::H1)))
    }

    /// The client's side of a tunnel, once the upstream has said yes.
    enum Client {
        H1(hyper::upgrade::OnUpgrade),
        H2(h2_server::ClientTunnel),
    }

    async fn tunnel(
        mut client: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        mut upstream: TokioIo<hyper::upgrade::Upgraded>,
    ) -> std::io::Result<(u64, u64)> {
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    }
}

#[cfg(test)]
mod tests {
    use hyper::body::Body as _;

    use super::*;
    use crate::policy::filter::{Answer, Failure};

    fn head(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn http1_targets_are_one_valid_host_which_an_absolute_target_replaces() {
        let h11 = Version::HTTP_11;
        for (uri, headers, want) in [
            ("/a", &[][..], Err(BadHead::Host)),
            ("/a", &[("host", "a.test"), ("host", "b.test")], Err(BadHead::Host)),
            ("/a", &[("host", "a.test, b.test")], Err(BadHead::BadHost)),
            ("/a", &[("host", "user@a.test")], Err(BadHead::BadHost)),
            ("http://user@a.test/a", &[("host", "a.test")], Err(BadHead::UserInfo)),
            ("/a", &[("host", "a.test"), ("transfer-encoding", "gzip, chunked")], {
                Err(BadHead::TransferCoding("gzip".into()))
            }),
            ("/a", &[("host", "a.test:8080")], Ok(Some("a.test:8080"))),
            ("http://uri.test/a", &[("host", "hdr.test")], Ok(Some("uri.test"))),
        ] {
            let mut r = head(h11, uri, headers);
            let got = check_head(&mut r)
                .map(|()| r.headers().get(HOST).map(|h| h.to_str().expect("ascii").to_string()));
            assert_eq!(got, want.map(|h| h.map(str::to_string)), "{uri} {headers:?}");
        }
        // HTTP/1.0 may name no host.
        assert_eq!(check_head(&mut head(Version::HTTP_10, "/a", &[])), Ok(()));
        // A client cannot pass itself off as a peer proxy's HTTP/2.
        let mut r = head(h11, "/a", &[("host", "a.test"), ("l5d-orig-proto", "HTTP/1.0")]);
        assert_eq!(check_head(&mut r), Ok(()));
        assert!(r.headers().get(&orig_proto::HEADER).is_none());
    }

    #[test]
    fn http2_authority_and_host_agree_or_the_request_is_malformed() {
        let h2 = Version::HTTP_2;
        let mut r = head(h2, "http://a.test/x", &[("host", "b.test")]);
        assert_eq!(check_head(&mut r), Err(BadHead::HostMismatch));
        let mut r = head(h2, "http://a.test/x", &[("host", "A.test")]);
        assert_eq!(check_head(&mut r), Ok(()));
        assert!(r.headers().get(HOST).is_none(), ":authority carries it");
        // Host alone gives the authority.
        let mut r = head(h2, "/x?y=1", &[("host", "a.test:81")]);
        assert_eq!(check_head(&mut r), Ok(()));
        assert_eq!(r.uri(), "http://a.test:81/x?y=1");
        assert!(r.headers().get(HOST).is_none());
        assert_eq!(check_head(&mut head(h2, "/x", &[])), Err(BadHead::NoAuthority));
        let mut r = head(h2, "http://a.test/", &[]);
        *r.uri_mut() = Uri::from_parts({
            let mut p = http::uri::Parts::default();
            p.scheme = Some(http::uri::Scheme::HTTP);
            p.authority = Some(Authority::from_static("a.test"));
            p.path_and_query = Some(http::uri::PathAndQuery::from_static("*"));
            p
        })
        .expect("uri");
        assert_eq!(check_head(&mut r), Err(BadHead::Asterisk));
        *r.method_mut() = Method::OPTIONS;
        assert_eq!(check_head(&mut r), Ok(()));
    }

    #[test]
    fn http2_field_values_padded_with_whitespace_are_malformed() {
        let x = HeaderName::from_static("x-a");
        for v in [" v", "v ", "\tv", "v\t", " "] {
            let mut r = head(Version::HTTP_2, "http://a.test/", &[("x-a", v)]);
            assert_eq!(check_head(&mut r), Err(BadHead::FieldWhitespace(x.clone())), "{v:?}");
        }
        for v in ["v", "a b", "", "a\tb"] {
            let mut r = head(Version::HTTP_2, "http://a.test/", &[("x-a", v)]);
            assert_eq!(check_head(&mut r), Ok(()), "{v:?}");
        }
        // HTTP/1 parsers trim it (RFC 9112 §5.1): hyper gives no such value to check.
        let mut r = head(Version::HTTP_11, "/", &[("host", "a.test"), ("x-a", " v")]);
        assert_eq!(check_head(&mut r), Ok(()));
    }

    #[test]
    fn hop_by_hop_headers_go_before_the_proxy_adds_its_own() {
        let mut r = head(
            Version::HTTP_11,
            "/a",
            &[
                ("host", "a.test"),
                ("connection", "close, X-Foo, Host"),
                ("x-foo", "secret"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("te", "trailers"),
                ("transfer-encoding", "chunked"),
                ("content-length", "5"),
            ],
        );
        assert_eq!(check_head(&mut r), Ok(()));
        let left: Vec<_> = r.headers().keys().map(|k| k.as_str()).collect();
        // `Connection` may not take Host; a coding's message loses its length.
        assert_eq!(left, ["host", "te"]);
        assert_eq!(r.headers()[TE], "trailers");
    }

    #[test]
    fn only_a_named_upgrade_other_than_h2c_stays_an_upgrade() {
        let ws = [("host", "a.test"), ("upgrade", "websocket"), ("x-foo", "1")];
        let mut r =
            head(Version::HTTP_11, "/ws", &[&ws[..], &[("connection", "Upgrade, X-Foo")]].concat());
        assert_eq!(check_head(&mut r), Ok(()));
        assert!(is_upgrade(&r));
        assert_eq!(r.headers()[CONNECTION], "upgrade");
        assert_eq!(r.headers()[UPGRADE], "websocket");
        assert!(r.headers().get("x-foo").is_none());
        // Not named by Connection: no upgrade.
        let mut r = head(Version::HTTP_11, "/ws", &ws);
        assert_eq!(check_head(&mut r), Ok(()));
        assert!(!is_upgrade(&r));
        // h2c: no upgrade either, and nothing of it is forwarded.
        let h2c = [
            ("host", "a.test"),
            ("upgrade", "h2c"),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
        ];
        let mut r = head(Version::HTTP_11, "/", &h2c);
        assert_eq!(check_head(&mut r), Ok(()));
        assert!(!is_upgrade(&r));
        let left: Vec<_> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["host"]);
        // HTTP/1.0 has no upgrade: nothing of one is forwarded (found by fuzz/http_head: a
        // kept `Connection: upgrade` failed the request once carried as HTTP/2).
        let mut r =
            head(Version::HTTP_10, "/ws", &[&ws[..], &[("connection", "Upgrade, X-Foo")]].concat());
        assert_eq!(check_head(&mut r), Ok(()));
        assert!(!is_upgrade(&r));
        let left: Vec<_> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["host"]);
    }

    #[test]
    fn a_response_loses_te_and_a_length_beside_a_coding() {
        let mut h = HeaderMap::new();
        h.insert(TE, HeaderValue::from_static("trailers"));
        h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h, Hop::Response);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type"]);
    }

    #[tokio::test]
    async fn an_injected_grpc_failure_is_a_trailers_only_grpc_error() {
        let answer =
            Answer::Fail { failure: Failure::Grpc(14), message: "injected: 100% down".into() };
        let rsp = filter_answer(answer);
        assert_eq!(rsp.status(), StatusCode::OK);
        let h = rsp.headers();
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(h["grpc-status"], "14");
        assert_eq!(h["grpc-message"], "injected: 100%25 down", "percent-encoded");
        assert_eq!(h[PROXY_ERROR], "injected: 100% down");
        assert_eq!(metrics::grpc_status(h), Some(14));
        // Trailers-only: the headers end the stream.
        let body = rsp.into_body();
        assert!(body.is_end_stream());
        let collected = body.collect().await.expect("body");
        assert!(collected.trailers().is_none());
        assert!(collected.to_bytes().is_empty());

        // An HTTP route's failure stays an HTTP status.
        let answer = Answer::Fail {
            failure: Failure::Http(StatusCode::SERVICE_UNAVAILABLE),
            message: "injected".into(),
        };
        let rsp = filter_answer(answer);
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rsp.headers()[PROXY_ERROR], "injected");
        assert!(!rsp.headers().contains_key("grpc-status"));
    }

    /// The table holds exactly RFC 3986's authority bytes: letters, digits, the unreserved
    /// and sub-delimiter marks, `:` (port), `[]` (IP literal) and `%` (escapes); every other
    /// byte, each alone and inside an otherwise valid host, fails.
    #[test]
    fn host_bytes_are_rfc_3986_authority_bytes() {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b);
        for b in 0..=255u8 {
            assert_eq!(host_syntax(&[b]), allowed(b), "byte {b:#04x}");
            assert_eq!(host_syntax(&[b'w', b, b'b']), allowed(b), "byte {b:#04x} inside");
        }
        assert!(host_syntax(b"[::1]:8080") && host_syntax(b"web.prod.svc.cluster.local:80"));
        assert!(!host_syntax(b""));
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(grpc_message("plain text: ok"), "plain text: ok");
        assert_eq!(grpc_message("50%"), "50%25");
        assert_eq!(grpc_message("caf\u{e9}\t!"), "caf%C3%A9%09!");
    }
}
