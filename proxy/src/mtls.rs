//! mTLS on the data path. Inbound: TLS whose SNI is this proxy's identity is terminated
//! (a client certificate from the trust anchors required), and what it carries — a
//! transport header (ALPN `transport.l5d.io/v1`), HTTP/2 (`h2`), HTTP/1 (`http/1.1`), or
//! bytes — is served with the client's identity known. Outbound: connections to meshed
//! endpoints are originated as TLS with SNI = the endpoint's identity, and accepted only
//! if its certificate proves exactly that identity.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::BytesMut;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tracing::debug;

use crate::{
    detect::{self, Protocol},
    identity::{Alpn, Identity, peer_identity},
    io::{Metered, MeteredIo, Prefixed},
    metrics::{Direction, DstLabels, Metrics, Peer, TlsLabels},
    transport::{self, ConnError, Side, is_own_listener},
    transport_header::{self, SessionProtocol, TransportHeader},
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An accepted client connection and its address.
pub struct Client {
    pub io: TcpStream,
    pub addr: SocketAddr,
}

/// Serves an inbound connection whose ClientHello (in `prefix`) names this proxy.
pub async fn serve_inbound(
    client: Client,
    prefix: BytesMut,
    target: SocketAddr,
    side: Arc<Side>,
    id: Arc<Identity>,
) {
    let errors = side.metrics.errors(side.direction);
    let client_addr = client.addr;
    let client_ip = client_addr.ip();
    let io = MeteredIo::deferred(client.io, prefix);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, id.acceptor().accept(io)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            errors.inc("tls_handshake");
            crate::throttled!(warn, error = %e, "mTLS handshake failed (no client certificate, or one from another trust domain?)");
            return;
        }
        Err(_) => {
            errors.inc("tls_handshake");
            debug!("mTLS handshake timed out");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    let client_id: Option<Arc<str>> = peer_identity(conn.peer_certificates()).map(Arc::from);
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let mut tls = tls;
    let mut rest = BytesMut::new();
    let (target, protocol) = if alpn.as_deref() == Some(transport_header::ALPN) {
        let header = match tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            TransportHeader::read(&mut tls, &mut rest),
        )
        .await
        {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                errors.inc("transport_header");
                crate::throttled!(warn, error = %e, "bad transport header");
                return;
            }
            Err(_) => {
                errors.inc("transport_header");
                return;
            }
        };
        let protocol = match header.protocol {
            Some(SessionProtocol::Http1) => Protocol::Http1,
            Some(SessionProtocol::Http2) => Protocol::Http2,
            None => Protocol::Opaque,
        };
        let to = SocketAddr::new(target.ip(), header.port);
        // A peer names the port; never one of this proxy's own listeners. Else a meshed
        // peer reaches the admin port from this host (the localhost-only `/shutdown`), or
        // sends through the outbound listener under this workload's identity. The
        // original destination is an address of this host (the connection came in by
        // it), so it stands for the local address.
        if is_own_listener(to, target, &side.own_addrs) {
            errors.inc("loop");
            crate::throttled!(warn, target = %to, client = %client_addr, "transport header names one of this proxy's own listeners; refused");
            return;
        }
        (to, protocol)
    } else {
        let protocol = match alpn.as_deref() {
            Some(b"h2") => Protocol::Http2,
            Some(b"http/1.1") => Protocol::Http1,
            _ => {
                let detecting = side.metrics.detecting(side.direction);
                let detected = detect_inside(&mut tls, &mut rest, target.port(), &side).await;
                drop(detecting);
                match detected {
                    Ok(p) => p,
                    Err(e) => {
                        errors.inc("detect_io");
                        debug!(error = %e, "mTLS connection failed during detection");
                        return;
                    }
                }
            }
        };
        (target, protocol)
    };
    let tls_labels = TlsLabels::client(client_id.clone());
    let authz = match &side.policy {
        Some(p) => Some(
            p.authorize(
                client_ip,
                target,
                side.metrics.kept_target_label(&target),
                tls_labels.clone(),
            )
            .await,
        ),
        None => None,
    };
    let src = side.metrics.open(side.direction, Peer::Src, &target, &protocol, tls_labels);
    tls.get_mut().0.set_metrics(src);
    debug!(client.id = client_id.as_deref().unwrap_or(""), %target, protocol = protocol.label(), "mTLS accepted");
    // Bytes the client sent right behind the transport header are kept.
    let tls = Prefixed::new(rest, tls);
    match protocol {
        Protocol::Http1 | Protocol::Http2 => {
            if let Some(authz) = &authz {
                authz.note_http();
            }
            let caller = crate::http::Caller { client_addr, client_id, authz, dst: None };
            crate::http::serve(tls, protocol, target, side, caller).await
        }
        _ => {
            if authz.as_ref().is_some_and(|a| !a.admit_tcp()) {
                return;
            }
            let upstream = match transport::connect(target, side.connect).await {
                Ok(u) => u,
                Err(e) => {
                    errors.inc(e.label());
                    crate::throttled!(warn, error = %e, "closing");
                    return;
                }
            };
            let dst = side.metrics.open(
                side.direction,
                Peer::Dst,
                &target,
                &protocol,
                TlsLabels::plaintext("loopback"),
            );
            let mut upstream = MeteredIo::new(upstream, BytesMut::new(), dst);
            let mut tls = tls;
            match &authz {
                Some(a) => tokio::select! {
                    () = splice(&mut tls, &mut upstream, errors) => {}
                    () = a.revoked() => errors.inc("unauthorized"),
                },
                None => splice(&mut tls, &mut upstream, errors).await,
            }
        }
    }
}

/// The protocol inside an mTLS connection whose client named none by ALPN — as
/// linkerd2-proxy sends meshed HTTP, and this proxy HTTP/1 without an `h2` hint —
/// detected on the decrypted bytes (kept in `buf`) as on a plaintext connection, unless the
/// port is opaque. A client silent for the silent window is opaque at once: a meshed
/// client's proxy sends what it has as soon as it connects, so its silence is a server
/// that speaks first (whose client's proxy opened this connection speculatively), not a
/// slow HTTP client. TLS inside is the app's own, and opaque too. A port whose server
/// declares HTTP is served as that, unread.
async fn detect_inside<S: AsyncRead + Unpin>(
    tls: &mut S,
    buf: &mut BytesMut,
    port: u16,
    side: &Side,
) -> std::io::Result<Protocol> {
    let policy = side.policy.as_ref().map(|p| p.current(port));
    let Some(limits) = side.detection(port, policy.as_deref()) else {
        return Ok(Protocol::Opaque);
    };
    if let Some(http) = crate::transport::declared_http(policy.as_deref()) {
        return Ok(http);
    }
    let started = tokio::time::Instant::now();
    let max = side.detect_max_bytes;
    loop {
        let waited = if buf.is_empty() { limits.silent_window } else { limits.timeout };
        let room = (max - buf.len()) as u64;
        let mut limited = (&mut *tls).take(room);
        let protocol = match tokio::time::timeout_at(started + waited, limited.read_buf(buf)).await
        {
            Err(_) if buf.is_empty() => {
                debug!("meshed client silent; forwarding as opaque");
                Protocol::Opaque
            }
            Err(_) => {
                side.metrics.errors(side.direction).inc("detect_timeout");
                debug!(bytes = buf.len(), "detection timed out; forwarding as opaque");
                Protocol::Opaque
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(n)) => match detect::after_read(buf, max, n == 0) {
                Some(p) => p,
                None => continue,
            },
        };
        return Ok(match protocol {
            Protocol::Http1 | Protocol::Http2 => protocol,
            _ => Protocol::Opaque,
        });
    }
}

/// Copies both ways until both sides are done (half-close kept). On an error, counted as
/// `forward_io`, both connections are closed with it and reset, as plain forwarding does.
pub async fn splice<A, B>(a: &mut A, b: &mut B, errors: &crate::metrics::TcpErrors)
where
    A: AsyncRead + AsyncWrite + Unpin + Metered,
    B: AsyncRead + AsyncWrite + Unpin + Metered,
{
    if let Err(e) = tokio::io::copy_bidirectional(a, b).await {
        errors.inc("forward_io");
        debug!(error = %e, "connection ended with an error");
        a.metered().fail(&e);
        b.metered().fail(&e);
    }
}

/// A meshed endpoint to originate mTLS to.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    pub addr: SocketAddr,
    /// The identity its certificate must prove (also the SNI).
    pub server_id: String,
    pub alpn: Alpn,
    /// Reach it at this port of its IP with a transport header naming `addr`'s port.
    pub opaque_port: Option<u16>,
    pub protocol: Option<SessionProtocol>,
    /// Its `dst_*` labels, when discovery picked it for a connection of its own (the
    /// connection's metrics carry them).
    pub labels: DstLabels,
}

/// Opens an mTLS connection to a meshed endpoint.
pub async fn connect(
    id: &Identity,
    t: &TlsTarget,
    metrics: &Metrics,
    direction: Direction,
    connect: transport::ConnectOpts,
    label_protocol: &Protocol,
) -> Result<tokio_rustls::client::TlsStream<MeteredIo>, ConnError> {
    let addr = t.addr;
    let (dial, alpn) = match t.opaque_port {
        Some(port) => (SocketAddr::new(addr.ip(), port), Alpn::Transport),
        None => (addr, t.alpn),
    };
    let stream = transport::connect(dial, connect).await?;
    let labels = TlsLabels::server(Arc::from(t.server_id.as_str()));
    let io = MeteredIo::new(
        stream,
        BytesMut::new(),
        metrics.open_endpoint(direction, &addr, label_protocol, labels, &t.labels),
    );
    let name = ServerName::try_from(t.server_id.clone()).map_err(|e| {
        ConnError::Tls(addr, format!("{:?} is not a valid server name: {e}", t.server_id))
    })?;
    let mut tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, id.connector(alpn).connect(name, io))
        .await
        .map_err(|_| ConnError::Tls(addr, "handshake timed out".into()))?
        .map_err(|e| ConnError::Tls(addr, e.to_string()))?;
    if alpn == Alpn::Transport {
        let header =
            TransportHeader { port: addr.port(), name: None, protocol: t.protocol.clone() };
        tls.write_all(&header.encode()).await.map_err(|e| ConnError::Tls(addr, e.to_string()))?;
    }
    Ok(tls)
}
