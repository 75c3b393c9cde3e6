//! The admin port's connections: a bounded number at once; each one's first bytes are
//! looked at (bounded time and buffer) to tell a TLS ClientHello from plaintext HTTP. TLS
//! whose SNI is this proxy's identity is terminated (what a meshed scraper's outbound proxy
//! sends, since discovery says the pod is meshed); TLS for any other name is refused,
//! as linkerd2-proxy's admin server does. HTTP/1 and HTTP/2 are served over either.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::{BufMut, BytesMut};
use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::{Instant, timeout, timeout_at},
};
use tracing::{Instrument, debug, info_span};

use super::{Admin, Caller};
use crate::{
    detect::{self, Detect, Protocol},
    identity::peer_identity,
    idle,
    io::Prefixed,
    metrics::TlsLabels,
};

/// Most admin connections open at once: the kubelet and a scraper or two need a handful;
/// beyond this a connection can only be a probe (below).
pub const MAX_CONNECTIONS: usize = 256;

/// Connections taken beyond `MAX_CONNECTIONS`, for the kubelet's probes only: plaintext
/// HTTP/1, one request, `GET /live` or `GET /ready`, within `PROBE_TIMEOUT`; anything else
/// is answered 503 (or, not HTTP/1, closed). So clients holding every slot cannot make a
/// pod fail its probes and be restarted. Beyond these too, new connections are closed at
/// once. Each refusal counts `admin_tcp_errors_total{error="connection_limit"}`.
pub const PROBE_RESERVE: usize = 32;

/// The whole life of a connection in the probe reserve: the kubelet's default probe
/// timeout.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest TLS handshake on the admin port.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a request's headers (HTTP/1).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams an HTTP/2 client may open at once on one admin connection.
const MAX_STREAMS: u32 = 16;

/// An admin connection with no request in flight for this long is closed (gracefully), so
/// that idle connections cannot hold the `MAX_CONNECTIONS` slots the kubelet's probes
/// need. Longer than Prometheus's usual scrape intervals, which then keep their connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How the admin port accepts connections; one per proxy, shared by its addresses.
#[derive(Debug, Clone)]
pub struct AdminListener {
    /// How long the client has to send enough to tell TLS from plaintext.
    pub detect_timeout: Duration,
    /// Most bytes buffered for that.
    pub detect_max_bytes: usize,
    /// Open connections, at most `MAX_CONNECTIONS`.
    pub limit: Arc<Semaphore>,
    /// Probe-only connections beyond that, at most `PROBE_RESERVE`.
    pub probe_reserve: Arc<Semaphore>,
    /// See [`IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
}

impl AdminListener {
    pub fn new(detect_timeout: Duration, detect_max_bytes: usize) -> Self {
        AdminListener {
            detect_timeout,
            detect_max_bytes,
            limit: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            probe_reserve: Arc::new(Semaphore::new(PROBE_RESERVE)),
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

pub async fn serve(listener: TcpListener, admin: Arc<Admin>, conf: AdminListener) {
    loop {
        let (io, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let (admin, conf) = (admin.clone(), conf.clone());
        let span = info_span!("admin", client.addr = %peer);
        if let Ok(permit) = conf.limit.clone().try_acquire_owned() {
            tokio::spawn(
                async move {
                    handle(io, peer, admin, &conf).await;
                    drop(permit);
                }
                .instrument(span),
            );
        } else if let Ok(permit) = conf.probe_reserve.clone().try_acquire_owned() {
            tokio::spawn(
                async move {
                    if timeout(PROBE_TIMEOUT, probe_only(io, peer, &admin)).await.is_err() {
                        admin.metrics.admin_errors.inc("connection_limit");
                        debug!("admin probe-only connection took too long; closed");
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        } else {
            admin.metrics.admin_errors.inc("connection_limit");
            debug!(client.addr = %peer, "admin connection limit reached; closing");
            crate::forward::reset_on_drop(&io);
        }
    }
}

/// What becomes of an admin connection, by what its first bytes are.
#[derive(Debug, PartialEq, Eq)]
enum Admission<'a> {
    /// Plaintext (HTTP, or bytes the HTTP server will refuse).
    Plain,
    /// TLS for this proxy's identity: terminated here.
    Terminate,
    /// TLS for another name (or none, or with identity off): closed.
    Refuse(Option<&'a str>),
}

fn admission<'a>(protocol: &'a Protocol, local_id: Option<&str>) -> Admission<'a> {
    match protocol {
        Protocol::Tls { sni } => match (sni.as_deref(), local_id) {
            (Some(sni), Some(id)) if sni == id => Admission::Terminate,
            (sni, _) => Admission::Refuse(sni),
        },
        Protocol::Http1 | Protocol::Http2 | Protocol::Opaque => Admission::Plain,
    }
}

/// Why a connection ended in detection; each is an `admin_tcp_errors_total` label.
#[derive(Debug, thiserror::Error)]
enum DetectError {
    #[error("the client sent nothing within {0:?}")]
    Silent(Duration),
    #[error("the client closed without sending anything")]
    Closed,
    #[error("reading the client's first bytes failed: {0}")]
    Io(std::io::Error),
}

impl DetectError {
    fn label(&self) -> Option<&'static str> {
        match self {
            DetectError::Silent(_) => Some("detect_timeout"),
            // A TCP check that connects and closes: nothing went wrong.
            DetectError::Closed => None,
            DetectError::Io(_) => Some("detect_io"),
        }
    }
}

/// Reads until the first bytes tell the protocol, `max` bytes are buffered, the client
/// stops sending, or `limit` passes; returns the protocol and the bytes read.
async fn read_prefix<R: AsyncRead + Unpin>(
    io: &mut R,
    limit: Duration,
    max: usize,
) -> Result<(Protocol, BytesMut), DetectError> {
    let deadline = Instant::now() + limit;
    let mut buf = BytesMut::with_capacity(max.min(1024));
    loop {
        let room = max - buf.len();
        let read = timeout_at(deadline, io.read_buf(&mut (&mut buf).limit(room))).await;
        let ended = match read {
            Ok(Ok(0)) | Err(_) => true,
            Ok(Ok(_)) => false,
            Ok(Err(e)) => return Err(DetectError::Io(e)),
        };
        if ended {
            if buf.is_empty() {
                return Err(match read {
                    Err(_) => DetectError::Silent(limit),
                    _ => DetectError::Closed,
                });
            }
            // No more bytes are coming in time: decide on what came.
            let protocol = match detect::detect(&buf, buf.len()) {
                Detect::Found(p) => p,
                Detect::NeedMore => Protocol::Opaque,
            };
            return Ok((protocol, buf));
        }
        if let Detect::Found(p) = detect::detect(&buf, max) {
            return Ok((p, buf));
        }
    }
}

async fn handle(mut io: TcpStream, peer: SocketAddr, admin: Arc<Admin>, conf: &AdminListener) {
    let errors = &admin.metrics.admin_errors;
    let Ok(local) = io.local_addr() else { return };
    let (protocol, prefix) =
        match read_prefix(&mut io, conf.detect_timeout, conf.detect_max_bytes).await {
            Ok(d) => d,
            Err(e) => {
                if let Some(label) = e.label() {
                    errors.inc(label);
                }
                debug!(error = %e, "admin connection closed");
                return;
            }
        };
    let local_id = admin.identity.as_ref().map(|i| i.local.as_str());
    match admission(&protocol, local_id) {
        Admission::Plain => {
            let tls = match &admin.identity {
                Some(_) => TlsLabels::plaintext("not_provided_by_remote"),
                None => TlsLabels::disabled(),
            };
            let caller = Caller::new(peer, local, tls);
            serve_http(Prefixed::new(prefix, io), admin, caller, conf.idle_timeout).await;
        }
        Admission::Refuse(sni) => {
            errors.inc("unexpected_sni");
            debug!(
                sni = sni.unwrap_or(""),
                "TLS for a name other than this proxy's identity on the admin port; closing"
            );
            crate::forward::reset_on_drop(&io);
        }
        Admission::Terminate => {
            let Some(id) = admin.identity.clone() else { return };
            let accept = id.admin_acceptor().accept(Prefixed::new(prefix, io));
            let tls = match timeout(HANDSHAKE_TIMEOUT, accept).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    errors.inc("tls_handshake");
                    debug!(error = %e, "admin TLS handshake failed");
                    return;
                }
                Err(_) => {
                    errors.inc("tls_handshake");
                    debug!("admin TLS handshake timed out");
                    return;
                }
            };
            let client_id: Option<Arc<str>> =
                peer_identity(tls.get_ref().1.peer_certificates()).map(Arc::from);
            debug!(client.id = client_id.as_deref().unwrap_or(""), "admin TLS accepted");
            let caller = Caller::new(peer, local, TlsLabels::client(client_id));
            serve_http(tls, admin, caller, conf.idle_timeout).await;
        }
    }
}

/// A connection beyond `MAX_CONNECTIONS`: one plaintext HTTP/1 request, answered only if
/// it is a probe (see [`PROBE_RESERVE`]).
async fn probe_only(mut io: TcpStream, peer: SocketAddr, admin: &Arc<Admin>) {
    let errors = &admin.metrics.admin_errors;
    let Ok(local) = io.local_addr() else { return };
    let prefix = match read_prefix(&mut io, PROBE_TIMEOUT, 1024).await {
        Ok((Protocol::Http1, prefix)) => prefix,
        Ok((protocol, _)) => {
            errors.inc("connection_limit");
            debug!(?protocol, "admin connection limit reached and not an HTTP/1 probe; closing");
            crate::forward::reset_on_drop(&io);
            return;
        }
        Err(e) => {
            if let Some(label) = e.label() {
                errors.inc(label);
            }
            return;
        }
    };
    let tls = match &admin.identity {
        Some(_) => TlsLabels::plaintext("not_provided_by_remote"),
        None => TlsLabels::disabled(),
    };
    let caller = Arc::new(Caller::new(peer, local, tls));
    let admin = admin.clone();
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let (admin, caller) = (admin.clone(), caller.clone());
        async move {
            if super::is_probe(req.method(), req.uri().path()) {
                return Ok::<_, Infallible>(admin.authorized(req, &caller).await);
            }
            admin.metrics.admin_errors.inc("connection_limit");
            debug!(
                path = req.uri().path(),
                "admin connection limit reached: only probes are answered"
            );
            let why = "the admin port is at its connection limit; only probes are answered\n";
            Ok(super::text(http::StatusCode::SERVICE_UNAVAILABLE, why))
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(Prefixed::new(prefix, io)), svc);
    if let Err(e) = conn.await {
        debug!(error = %e, "admin probe-only connection failed");
    }
}

/// Serves the admin routes over HTTP/1 or HTTP/2 (told apart by the connection preface),
/// until the client closes or the connection has been idle for `idle_timeout`.
async fn serve_http<I>(io: I, admin: Arc<Admin>, caller: Caller, idle_timeout: Duration)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let caller = Arc::new(caller);
    let activity = idle::Activity::new();
    let act = activity.clone();
    let svc = service_fn(move |req| {
        let (admin, caller, in_flight) = (admin.clone(), caller.clone(), act.begin());
        async move {
            let rsp = admin.authorized(req, &caller).await;
            drop(in_flight);
            Ok::<_, Infallible>(rsp)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(16 * 1024)
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .timer(TokioTimer::new());
    builder.http2().max_concurrent_streams(MAX_STREAMS).timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // Never stopped from outside: the admin port outlives the drain.
    let never = tokio_util::sync::CancellationToken::new();
    let watched =
        idle::watch(conn.as_mut(), |c| c.graceful_shutdown(), &activity, idle_timeout, &never);
    let Some(result) = watched.await else {
        return;
    };
    if let Err(e) = result {
        debug!(error = %e, "admin connection failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const ME: &str = "web.prod.serviceaccount.identity.weft.cluster.local";

    fn tls(sni: Option<&str>) -> Protocol {
        Protocol::Tls { sni: sni.map(String::from) }
    }

    #[test]
    fn only_tls_for_this_proxys_identity_is_terminated() {
        assert_eq!(admission(&tls(Some(ME)), Some(ME)), Admission::Terminate);
        let other = "db.prod.serviceaccount.identity.weft.cluster.local";
        assert_eq!(admission(&tls(Some(other)), Some(ME)), Admission::Refuse(Some(other)));
        assert_eq!(admission(&tls(None), Some(ME)), Admission::Refuse(None));
        // Identity off: no TLS is taken at all.
        assert_eq!(admission(&tls(Some(ME)), None), Admission::Refuse(Some(ME)));
        for p in [Protocol::Http1, Protocol::Http2, Protocol::Opaque] {
            assert_eq!(admission(&p, Some(ME)), Admission::Plain, "{p:?}");
            assert_eq!(admission(&p, None), Admission::Plain, "{p:?}");
        }
    }

    /// A ClientHello as rustls sends it, for `sni`.
    fn client_hello(sni: &str) -> Vec<u8> {
        use rustls::pki_types::ServerName;
        let config = rustls::ClientConfig::builder_with_provider(weft_identity::provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let name = ServerName::try_from(sni.to_string()).expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).expect("hello");
        hello
    }

    #[tokio::test]
    async fn detection_reads_a_whole_client_hello_and_keeps_every_byte() {
        let hello = client_hello(ME);
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        // In two pieces: detection waits for the rest of the record.
        let (a, b) = hello.split_at(20);
        client.write_all(a).await.expect("write");
        let b = b.to_vec();
        let reader =
            tokio::spawn(
                async move { read_prefix(&mut server, Duration::from_secs(5), 8192).await },
            );
        tokio::task::yield_now().await;
        client.write_all(&b).await.expect("write");
        let (protocol, prefix) = reader.await.expect("join").expect("detected");
        assert_eq!(protocol, tls(Some(ME)));
        assert_eq!(&prefix[..], &hello[..]);
    }

    #[tokio::test(start_paused = true)]
    async fn detection_is_bounded_in_time_and_bytes() {
        // Silent: an error after the limit.
        let (_client, mut server) = tokio::io::duplex(1024);
        let e = read_prefix(&mut server, Duration::from_secs(1), 8192).await.expect_err("silent");
        assert_eq!(e.label(), Some("detect_timeout"));
        // A closed connection is no error worth counting.
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        let e = read_prefix(&mut server, Duration::from_secs(1), 8192).await.expect_err("closed");
        assert_eq!(e.label(), None);
        // A slow request line: what came is served as plaintext after the limit.
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET /metr").await.expect("write");
        let (p, prefix) = read_prefix(&mut server, Duration::from_secs(1), 8192).await.expect("p");
        assert_eq!((p, &prefix[..]), (Protocol::Opaque, &b"GET /metr"[..]));
        // A ClientHello bigger than the buffer: TLS, name unknown (refused); no more read.
        let hello = client_hello(ME);
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&hello).await.expect("write");
        let (p, prefix) = read_prefix(&mut server, Duration::from_secs(1), 64).await.expect("p");
        assert_eq!(p, tls(None));
        assert_eq!(prefix.len(), 64);
        assert_eq!(admission(&p, Some(ME)), Admission::Refuse(None));
    }

    #[tokio::test]
    async fn plaintext_http_is_detected_at_once() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
        let (p, _) = read_prefix(&mut server, Duration::from_secs(5), 8192).await.expect("p");
        assert_eq!(p, Protocol::Http1);
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("write");
        let (p, _) = read_prefix(&mut server, Duration::from_secs(5), 8192).await.expect("p");
        assert_eq!(p, Protocol::Http2);
    }
}
