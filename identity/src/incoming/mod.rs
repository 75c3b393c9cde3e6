//! Connections for the control plane's tonic servers (identity, destination), TLS or
//! plaintext: accepted as fast as they come, each admitted or refused at once, handshaken
//! concurrently so that a slow client cannot hold up the others, and handed to tonic only
//! once it has sent the HTTP/2 client preface, with its peer's address and, when it
//! presented a certificate, identity.
//!
//! What a production CA endpoint must survive is one client (or a few) that opens many
//! sockets and sends nothing, or completes TLS and then sends nothing: each such socket
//! must cost a bounded slot for a bounded time, and never a slot that other clients need.
//! So:
//! - a connection is refused (closed at once, counted with its reason, see [`Refused`])
//!   when the listener has `max_connections` established or `max_handshakes` in progress,
//!   or its client has its own, smaller share of either ([`Limits`]); a client is an IPv4
//!   address or an IPv6 /64, since one IPv6 host picks any address in its /64. Refusing
//!   rather than leaving the connection in the listen backlog is what keeps real clients
//!   from waiting behind silent ones: a refused proxy retries (another replica, later)
//!   within its backoff, a queued one times out;
//! - the ClientHello must arrive within `client_hello_timeout` of the accept (a real client
//!   sends it at once), and the TLS handshake and the HTTP/2 preface within
//!   `handshake_timeout`: the handshake slot is held until then, and nothing else of the
//!   connection's is allocated before it has proved to be an HTTP/2 client. The preface is
//!   read here and replayed to tonic, which has no such deadline of its own.
//!
//! Idle connections past the preface are the server's to close (the identity server's
//! `MAX_CONNECTION_AGE`, the destination server's `--max-connection-idle`); the per-client
//! cap bounds how many one client can hold.

mod admission;
#[cfg(test)]
mod tests;

use std::{
    fmt, io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
    time::{Instant, timeout_at},
};
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor, server::TlsStream};
use tonic::codegen::tokio_stream::Stream;

use self::admission::{Admission, Slot};
use crate::{IdentityName, loud::LoudEvery, pki::peer_identity};

/// How long a client may take, from the accept, to send its ClientHello. A proxy sends it
/// as soon as TCP is up, in one segment; 3 s covers a lost segment retransmitted (Linux's
/// first retransmission timeout is 1 s) and a CPU-throttled client, while a silent socket
/// gives its handshake slot back in under a third of `HANDSHAKE_TIMEOUT`.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a client may take, from the accept, to complete its TLS handshake and send the
/// HTTP/2 preface (plaintext: the preface alone).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes in progress at once: each takes a millisecond or so of CPU, so this is
/// far above what thousands of proxies reconnecting together need.
pub const MAX_HANDSHAKES: usize = 512;

/// Most handshakes in progress at once from one client (an IPv4 address, an IPv6 /64): one
/// client holding silent sockets can take this many of the `MAX_HANDSHAKES` slots, not all
/// of them. Real clients that share an address (a node's proxies behind SNAT reconnecting
/// together after a restart; every client of a test or bench on loopback) hold a slot for
/// milliseconds, so a burst of hundreds rarely has this many in progress; one refused
/// retries within its backoff. The default of `--max-client-handshakes`.
pub const MAX_CLIENT_HANDSHAKES: usize = 128;

/// Most connections established at once, per listener. Each costs a socket, a TLS session
/// and an HTTP/2 connection's buffers (tens of KiB); a proxy holds one to each control-plane
/// service, so this is several thousand proxies per replica, well below the usual file
/// descriptor limit (65 536 in the chart's pods).
pub const MAX_CONNECTIONS: usize = 8192;

/// Most connections established at once from one client (an IPv4 address, an IPv6 /64): a
/// proxy holds one, so this is for the proxies of one node sharing its address through SNAT
/// (110 pods a node by default, a few hundred where max-pods is raised), with margin; 16
/// addresses, not one, are needed to fill `MAX_CONNECTIONS`. The default of
/// `--max-client-connections`.
pub const MAX_CLIENT_CONNECTIONS: usize = 512;

/// What every HTTP/2 client sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A GOAWAY frame: payload length 8, type 7, no flags, stream 0; last stream 0, error
/// PROTOCOL_ERROR (1).
const GOAWAY_PROTOCOL_ERROR: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// The caps and deadlines of one listener; `Default` is the constants above. The servers
/// take the caps from flags of the same names (`--max-connections`, …), checked with
/// [`Limits::check`]; tests shorten the deadlines here.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_client_connections: usize,
    pub max_handshakes: usize,
    pub max_client_handshakes: usize,
    pub client_hello_timeout: Duration,
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            max_client_connections: MAX_CLIENT_CONNECTIONS,
            max_handshakes: MAX_HANDSHAKES,
            max_client_handshakes: MAX_CLIENT_HANDSHAKES,
            client_hello_timeout: CLIENT_HELLO_TIMEOUT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

impl Limits {
    /// Refuses caps that cannot be what was meant: 0 (nothing would ever be served), or a
    /// client's share larger than the listener's (it would not be a share: one client could
    /// take every slot). The messages name the flags the servers read the caps from.
    pub fn check(&self) -> Result<(), LimitsError> {
        let caps = [
            ("max-connections", self.max_connections),
            ("max-client-connections", self.max_client_connections),
            ("max-handshakes", self.max_handshakes),
            ("max-client-handshakes", self.max_client_handshakes),
        ];
        if let Some((flag, _)) = caps.iter().find(|(_, cap)| *cap == 0) {
            return Err(LimitsError::Zero(flag));
        }
        for [(listener, listener_cap), (client, client_cap)] in
            [[caps[0], caps[1]], [caps[2], caps[3]]]
        {
            if client_cap > listener_cap {
                return Err(LimitsError::ClientAboveListener {
                    client,
                    client_cap,
                    listener,
                    listener_cap,
                });
            }
        }
        Ok(())
    }
}

/// Caps that [`Limits::check`] refuses, named as the servers' flags.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("--{0} must be at least 1: with 0, no connection would ever be served")]
    Zero(&'static str),
    #[error(
        "--{client} ({client_cap}) must not be more than --{listener} ({listener_cap}): it is \
         one client's share of the listener's cap"
    )]
    ClientAboveListener {
        client: &'static str,
        client_cap: usize,
        listener: &'static str,
        listener_cap: usize,
    },
}

/// Why a connection was closed before it was served: the `reason` label of the servers'
/// `*_connections_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The listener had `max_connections` established.
    MaxConnections,
    /// The client (its IPv4 address, its IPv6 /64) had `max_client_connections` established.
    MaxClientConnections,
    /// The listener had `max_handshakes` in progress.
    MaxHandshakes,
    /// The client (its IPv4 address, its IPv6 /64) had `max_client_handshakes` in progress.
    MaxClientHandshakes,
    /// No ClientHello within `client_hello_timeout`.
    ClientHelloTimeout,
    /// TLS done (or plaintext), but no HTTP/2 preface within `handshake_timeout`.
    PrefaceTimeout,
    /// Something other than the HTTP/2 preface, or the client closed before sending it.
    NotHttp2,
}

impl Refused {
    pub const ALL: [Refused; 7] = [
        Refused::MaxConnections,
        Refused::MaxClientConnections,
        Refused::MaxHandshakes,
        Refused::MaxClientHandshakes,
        Refused::ClientHelloTimeout,
        Refused::PrefaceTimeout,
        Refused::NotHttp2,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::MaxClientConnections => "max_client_connections",
            Refused::MaxHandshakes => "max_handshakes",
            Refused::MaxClientHandshakes => "max_client_handshakes",
            Refused::ClientHelloTimeout => "client_hello_timeout",
            Refused::PrefaceTimeout => "preface_timeout",
            Refused::NotHttp2 => "not_http2",
        }
    }
}

/// For the log: what happened and, where an operator can act, what to do.
impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::MaxConnections => {
                "the listener has the most connections it serves at once; add replicas or \
                 raise --max-connections if this many clients are real"
            }
            Refused::MaxClientConnections => {
                "this client address (for IPv6, its /64) has the most connections one client \
                 may hold; if many proxies share it (SNAT), spread them over more addresses or \
                 raise --max-client-connections"
            }
            Refused::MaxHandshakes => {
                "the listener has the most handshakes in progress at once; silent clients hold \
                 them (see client_hello_timeout and preface_timeout refusals), or add replicas"
            }
            Refused::MaxClientHandshakes => {
                "this client address (for IPv6, its /64) has the most handshakes in progress \
                 one client may have: it opens connections faster than it completes them"
            }
            Refused::ClientHelloTimeout => {
                "no TLS ClientHello in time after connecting: a silent or very slow client"
            }
            Refused::PrefaceTimeout => {
                "no HTTP/2 preface in time after connecting: not a gRPC client, or a stalled one"
            }
            Refused::NotHttp2 => {
                "the client is not an HTTP/2 (gRPC) client: it sent something else, or closed"
            }
        })
    }
}

/// What tonic puts in each request's extensions.
#[derive(Clone, Debug)]
pub struct TlsConnectInfo {
    pub peer: SocketAddr,
    /// The identity the client's certificate proves (verified); `None` without one.
    pub client_id: Option<IdentityName>,
}

/// The outcome of one connection's admission and handshake, for the server's metrics (the
/// log lines are written here).
#[derive(Debug)]
pub enum Handshake<'a> {
    /// A TLS handshake completed (plaintext connections are not reported); the connection
    /// may still be refused for its preface.
    Done(&'a TlsConnectInfo),
    Failed {
        peer: SocketAddr,
        error: &'a io::Error,
    },
    /// Closed unserved, for `reason`.
    Refused {
        peer: SocketAddr,
        reason: Refused,
    },
    /// `accept` itself failed (out of file descriptors and the like); retried shortly.
    AcceptFailed {
        error: &'a io::Error,
    },
}

/// Called once per accepted connection (and per failed accept).
pub type OnHandshake = Arc<dyn Fn(Handshake<'_>) + Send + Sync>;

/// The stream of the established connections (`TlsConn`, `PlainConn`) of one listener;
/// the accept task ends when it is dropped.
pub struct Incoming<C> {
    rx: mpsc::Receiver<io::Result<C>>,
    task: JoinHandle<()>,
}

impl<C> Drop for Incoming<C> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<C> Stream for Incoming<C> {
    type Item = io::Result<C>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// TLS connections.
pub type TlsIncoming = Incoming<TlsConn>;

impl TlsIncoming {
    /// Accepts on `listener` (on the current tokio runtime) with `acceptor`, under `limits`.
    pub fn new(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        on_handshake: OnHandshake,
        limits: Limits,
    ) -> Self {
        let (tx, rx) = mpsc::channel(128);
        let config = acceptor.config().clone();
        let on = on_handshake.clone();
        let establish = move |tcp: TcpStream, peer: SocketAddr, deadlines: Deadlines| {
            let (config, on) = (config.clone(), on.clone());
            async move {
                let mut tls = deadlines.tls(tcp, config).await?;
                let client_id = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|der| peer_identity(der.as_ref()));
                let info = TlsConnectInfo { peer, client_id };
                // Reported once TLS is done, whatever comes next: a client that completes
                // TLS and is then refused for its preface did prove its identity.
                on(Handshake::Done(&info));
                Deadlines::preface(&mut tls, deadlines.handshake).await?;
                Ok((tls, info))
            }
        };
        let task = tokio::spawn(accept(listener, limits, on_handshake, tx, establish));
        Incoming { rx, task }
    }
}

/// Plaintext TCP connections, under the same caps and deadlines as TLS (the preface within
/// `client_hello_timeout`, since it is the first thing sent).
pub type PlainIncoming = Incoming<PlainConn>;

impl PlainIncoming {
    pub fn new(listener: TcpListener, on_handshake: OnHandshake, limits: Limits) -> Self {
        let (tx, rx) = mpsc::channel(128);
        let establish = |mut tcp: TcpStream, _peer, deadlines: Deadlines| async move {
            Deadlines::preface(&mut tcp, deadlines.client_hello).await?;
            let info = tonic::transport::server::Connected::connect_info(&tcp);
            Ok((tcp, info))
        };
        let task = tokio::spawn(accept(listener, limits, on_handshake, tx, establish));
        Incoming { rx, task }
    }
}

/// Why a connection was not established.
enum NotEstablished {
    Refused(Refused),
    Failed(io::Error),
}

impl From<io::Error> for NotEstablished {
    fn from(e: io::Error) -> Self {
        NotEstablished::Failed(e)
    }
}

/// The deadlines of one connection, from its accept.
#[derive(Clone, Copy)]
struct Deadlines {
    client_hello: Instant,
    handshake: Instant,
}

impl Deadlines {
    fn new(limits: &Limits) -> Self {
        let now = Instant::now();
        let handshake = now + limits.handshake_timeout;
        Deadlines { client_hello: (now + limits.client_hello_timeout).min(handshake), handshake }
    }

    /// The TLS handshake, the ClientHello first within its own deadline.
    async fn tls(
        self,
        tcp: TcpStream,
        config: Arc<rustls::ServerConfig>,
    ) -> Result<TlsStream<TcpStream>, NotEstablished> {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
        let start = timeout_at(self.client_hello, start)
            .await
            .map_err(|_| NotEstablished::Refused(Refused::ClientHelloTimeout))??;
        let tls = timeout_at(self.handshake, start.into_stream(config))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        Ok(tls)
    }

    /// Reads the HTTP/2 preface and nothing after it, refusing at the first byte that
    /// differs (an HTTP/1 request, a probe, a TLS client of a plaintext server) rather than
    /// waiting for 24 bytes.
    async fn preface<T: AsyncRead + AsyncWrite + Unpin>(
        io: &mut T,
        deadline: Instant,
    ) -> Result<(), NotEstablished> {
        enum Read {
            Preface,
            Closed,
            Other,
        }
        let read = async {
            let mut buf = [0u8; PREFACE.len()];
            let mut have = 0;
            while have < PREFACE.len() {
                let n = io.read(&mut buf[have..]).await?;
                if n == 0 {
                    return Ok(Read::Closed);
                }
                if buf[have..have + n] != PREFACE[have..have + n] {
                    return Ok(Read::Other);
                }
                have += n;
            }
            Ok::<_, io::Error>(Read::Preface)
        };
        match timeout_at(deadline, read).await {
            Err(_) => Err(NotEstablished::Refused(Refused::PrefaceTimeout)),
            Ok(Err(e)) => Err(NotEstablished::Failed(e)),
            Ok(Ok(Read::Preface)) => Ok(()),
            Ok(Ok(Read::Closed)) => Err(NotEstablished::Refused(Refused::NotHttp2)),
            Ok(Ok(Read::Other)) => {
                let grace = deadline.min(Instant::now() + GOAWAY_GRACE);
                let _ = timeout_at(grace, goaway(io)).await;
                Err(NotEstablished::Refused(Refused::NotHttp2))
            }
        }
    }
}

/// How long a client that sent something other than the preface gets to read the GOAWAY.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// Answers a client that is not speaking HTTP/2 as the HTTP/2 server would have (RFC 9113
/// §3.4: a connection error, PROTOCOL_ERROR): a TLS client of a plaintext server then reports
/// a corrupt message, which says what is wrong better than a bare close. Then the client's
/// bytes are read until it closes, so that the close is not a reset that could discard the
/// GOAWAY before the client reads it. Best effort: the refusal stands either way.
async fn goaway<T: AsyncRead + AsyncWrite + Unpin>(io: &mut T) {
    if io.write_all(&GOAWAY_PROTOCOL_ERROR).await.is_err() || io.shutdown().await.is_err() {
        return;
    }
    let mut scratch = [0u8; 1024];
    let mut drained = 0;
    while drained < 64 * 1024 {
        match io.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// The accept loop shared by TLS and plaintext: `establish` turns an admitted TCP
/// connection into a stream that has sent the preface, and what tonic will see of it.
async fn accept<T, I, E, F>(
    listener: TcpListener,
    limits: Limits,
    on_handshake: OnHandshake,
    tx: mpsc::Sender<io::Result<Held<T, I>>>,
    establish: E,
) where
    T: Send + 'static,
    I: Send + 'static,
    E: Fn(TcpStream, SocketAddr, Deadlines) -> F,
    F: Future<Output = Result<(T, I), NotEstablished>> + Send + 'static,
{
    let admission = Admission::new(limits);
    let loud = Arc::new(LoudEvery::new(Duration::from_secs(1)));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                on_handshake(Handshake::AcceptFailed { error: &error });
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Closed at once rather than left waiting: the client sees the refusal and retries
        // (another replica, later), and a waiting connection would cost what the cap saves.
        let (conn_slot, handshake_slot) = match admission.admit(peer.ip()) {
            Ok(slots) => slots,
            Err(reason) => {
                refused(&on_handshake, &loud, peer, reason);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let deadlines = Deadlines::new(admission.limits());
        let established = establish(tcp, peer, deadlines);
        let (tx, on_handshake, loud) = (tx.clone(), on_handshake.clone(), loud.clone());
        tokio::spawn(async move {
            let result = established.await;
            drop(handshake_slot);
            match result {
                Ok((inner, info)) => {
                    let conn = Held { inner, info, preface_at: 0, _slot: conn_slot };
                    let _ = tx.send(Ok(conn)).await;
                }
                Err(NotEstablished::Refused(reason)) => refused(&on_handshake, &loud, peer, reason),
                Err(NotEstablished::Failed(error)) => {
                    tracing::debug!(%error, client.addr = %peer, "handshake failed");
                    on_handshake(Handshake::Failed { peer, error: &error });
                }
            }
        });
    }
}

/// Reports a refusal: counted by the server, logged at info at most once a second (a flood
/// must not flood the log) and at debug otherwise.
fn refused(on_handshake: &OnHandshake, loud: &LoudEvery, peer: SocketAddr, reason: Refused) {
    if loud.take() {
        tracing::info!(client.addr = %peer, reason = reason.reason(), "connection refused: {reason}");
    } else {
        tracing::debug!(client.addr = %peer, reason = reason.reason(), "connection refused: {reason}");
    }
    on_handshake(Handshake::Refused { peer, reason });
}

/// A connection as tonic wants it, holding its place under the caps while it lives: `T`
/// is the stream, `I` what tonic puts in each request's extensions. The preface, read
/// before the connection was handed out, is replayed first.
pub struct Held<T, I> {
    inner: T,
    info: I,
    /// How much of `PREFACE` has been replayed.
    preface_at: usize,
    _slot: Slot,
}

/// A TLS connection, with its peer's address and identity.
pub type TlsConn = Held<TlsStream<TcpStream>, TlsConnectInfo>;

/// A plaintext connection.
pub type PlainConn = Held<TcpStream, tonic::transport::server::TcpConnectInfo>;

impl<T, I: Clone + Send + Sync + 'static> tonic::transport::server::Connected for Held<T, I> {
    type ConnectInfo = I;

    fn connect_info(&self) -> I {
        self.info.clone()
    }
}

impl<T: AsyncRead + Unpin, I: Unpin> AsyncRead for Held<T, I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.preface_at < PREFACE.len() && buf.remaining() > 0 {
            let n = (PREFACE.len() - this.preface_at).min(buf.remaining());
            buf.put_slice(&PREFACE[this.preface_at..this.preface_at + n]);
            this.preface_at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin, I: Unpin> AsyncWrite for Held<T, I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
