//! The gRPC listener's connections once admitted (`weft_identity::incoming`): HTTP/2 served
//! by hyper with tonic's routes, each connection closed gracefully (a GOAWAY, then the close)
//! once it has had no open stream for `max_connection_idle`.
//!
//! That is gRPC's MaxConnectionIdle, which Linkerd's Go destination controller has and
//! tonic's server has not. Proxies hold their streams for hours, and a stream may be silent
//! for as long, so "idle" cannot mean "no bytes lately": it must be "no open stream". Only
//! the code that serves the connection sees its streams start and end and can ask hyper for a
//! graceful shutdown, so this loop, rather than tonic's `Server`, serves them; it keeps
//! tonic's routing and what `Server` was set up with here (keepalive pings, the stream cap).

use std::{
    convert::Infallible, future::Future, io, net::SocketAddr, pin::pin, sync::Arc, time::Duration,
};

use futures_util::{Stream, StreamExt as _};
use http_body_util::BodyExt as _;
use hyper::{body::Incoming, server::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
    task::JoinSet,
};
use tonic::{
    codegen::Service as _,
    service::Routes,
    transport::server::{Connected, TcpConnectInfo},
};
use tracing::{Instrument as _, debug};
use weft_identity::incoming::{self, TlsConnectInfo};

/// How long a connection may stay without an open stream. A proxy opens its streams as soon
/// as it connects and keeps them while it runs, so a connection without any for this long
/// belongs to a client that no longer needs it (it reconnects when it does); 10 minutes is
/// long enough that a proxy between two lookups is not made to reconnect.
pub const MAX_CONNECTION_IDLE: Duration = Duration::from_secs(10 * 60);

/// How often a connection is pinged, and how long the answer may take: proxies hold their
/// streams for hours, so a peer that vanished (a node gone, a partition) must be noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The limits on the gRPC listener's connections: the defaults are for production; the
/// caps come from flags, tests shorten the deadlines.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Caps and handshake deadlines (see `weft_identity::incoming`).
    pub incoming: incoming::Limits,
    /// How long a connection may stay without an open stream before it is closed.
    pub max_connection_idle: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            incoming: incoming::Limits::default(),
            max_connection_idle: MAX_CONNECTION_IDLE,
        }
    }
}

/// The client's address, for the connection's span.
pub(crate) trait PeerAddr {
    fn peer_addr(&self) -> Option<SocketAddr>;
}

impl PeerAddr for TlsConnectInfo {
    fn peer_addr(&self) -> Option<SocketAddr> {
        Some(self.peer)
    }
}

impl PeerAddr for TcpConnectInfo {
    fn peer_addr(&self) -> Option<SocketAddr> {
        self.remote_addr()
    }
}

/// Serves the connections of `incoming` with `routes` until `shutdown`; then stops
/// accepting, sends every connection a GOAWAY, and waits for them to close. The caller
/// bounds the wait (streams do not end by themselves): dropped, this closes them all.
/// Connections closed for being idle are counted in `idle_closed`.
pub(crate) async fn serve<I, IO>(
    incoming: I,
    routes: Routes,
    max_connection_idle: Duration,
    idle_closed: Counter,
    shutdown: impl Future<Output = ()>,
) where
    I: Stream<Item = io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IO::ConnectInfo: PeerAddr,
{
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(crate::MAX_STREAMS_PER_CONNECTION);
    let routes = routes.prepare();
    let (stop_tx, stop_rx) = watch::channel(false);
    // Owned here, so that they end when this does.
    let mut conns = JoinSet::new();
    {
        // In a block so that `incoming`, the listener, is dropped as soon as accepting ends.
        let (mut incoming, mut shutdown) = (pin!(incoming), pin!(shutdown));
        loop {
            let io = tokio::select! {
                () = &mut shutdown => break,
                // Reaped as they end, so that the set holds only open connections.
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                io = incoming.next() => match io {
                    Some(Ok(io)) => io,
                    // Refusals and failed handshakes are reported by `incoming` itself.
                    Some(Err(error)) => {
                        debug!(%error, "accept failed");
                        continue;
                    }
                    None => break,
                },
            };
            let info = io.connect_info();
            let span = tracing::debug_span!(
                "conn",
                client.addr = info.peer_addr().map(tracing::field::display)
            );
            let conn = Conn {
                http2: http2.clone(),
                routes: routes.clone(),
                max_idle: max_connection_idle,
                idle_closed: idle_closed.clone(),
                stop: stop_rx.clone(),
            };
            conns.spawn(conn.serve(io, info).instrument(span));
        }
    }
    stop_tx.send_replace(true);
    while conns.join_next().await.is_some() {}
}

/// What one connection is served with.
struct Conn {
    http2: http2::Builder<TokioExecutor>,
    routes: Routes,
    max_idle: Duration,
    idle_closed: Counter,
    stop: watch::Receiver<bool>,
}

impl Conn {
    async fn serve<IO>(self, io: IO, info: IO::ConnectInfo)
    where
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    {
        let Conn { http2, routes, max_idle, idle_closed, mut stop } = self;
        let (open_tx, open_rx) = watch::channel(0usize);
        let open_tx = Arc::new(open_tx);
        // Called by hyper, in this connection's task, as each stream's headers arrive: the
        // stream is counted open before the idle timer can see the count again.
        let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
            // As tonic's server does: what the handlers may ask about the connection.
            req.extensions_mut().insert(info.clone());
            let open = OpenStream::new(&open_tx);
            let mut routes = routes.clone();
            async move {
                let rsp = routes.call(req).await?;
                // The stream is open until hyper drops its response body: sent to its end,
                // or reset by the client.
                Ok::<_, Infallible>(rsp.map(|body| {
                    body.map_frame(move |frame| {
                        let _open = &open;
                        frame
                    })
                }))
            }
        });
        let mut conn = pin!(http2.serve_connection(TokioIo::new(io), svc));
        let mut idle = pin!(idle(open_rx, max_idle));
        let mut closing = false;
        loop {
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(error) = served {
                        debug!(%error, "connection failed");
                    }
                    return;
                }
                () = &mut idle, if !closing => {
                    debug!(idle = ?max_idle, "closing a connection without open streams");
                    idle_closed.inc();
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = stop.wait_for(|s| *s), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// One open stream of a connection, counted while it lives.
struct OpenStream(Arc<watch::Sender<usize>>);

impl OpenStream {
    fn new(open: &Arc<watch::Sender<usize>>) -> Self {
        open.send_modify(|n| *n += 1);
        OpenStream(open.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Ends once the connection has had no open stream for `after` (counted from the end of its
/// last stream, or from its start if it never had one).
async fn idle(mut open: watch::Receiver<usize>, after: Duration) {
    loop {
        if open.wait_for(|n| *n == 0).await.is_err() {
            // The connection's service is gone: the connection is ending anyway.
            return std::future::pending().await;
        }
        tokio::select! {
            // A stream that opened (and perhaps already ended) restarts the wait.
            biased;
            changed = open.changed() => {
                if changed.is_err() {
                    return std::future::pending().await;
                }
            }
            () = tokio::time::sleep(after) => return,
        }
    }
}

#[cfg(test)]
mod tests;
