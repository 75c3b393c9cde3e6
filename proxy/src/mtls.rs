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
    transport::{self, ConnError, Detection, Side, is_own_listener},
    transport_header::{self, SessionProtocol, TransportHeader},
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a meshed client may stay silent after its handshake before the app is
/// connected speculatively; the port's silent window when that is shorter. A meshed
/// client is a proxy that sends what it has at once (what its client said, or the HTTP/2
/// preface); one that is silent is waiting on a silent client of its own, and has waited
/// its silent window for it already. Waiting a whole window again here would make a
/// server that speaks first wait two, one per proxy.
const MESHED_SILENT_WINDOW: Duration = Duration::from_millis(50);

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
    // The app's connection, when detection opened it.
    let mut speculative = None;
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
                let client = (client_ip, client_id.as_deref());
                let detected = detect_inside(&mut tls, &mut rest, target, client, &side).await;
                drop(detecting);
                match detected {
                    Ok((p, up)) => {
                        speculative = up;
                        p
                    }
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
            let connected = match speculative {
                Some(up) => Ok(up),
                None => transport::connect(target, side.connect).await,
            };
            let upstream = match connected {
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
/// port is opaque; with the connection to the app when detection opened it. A client
/// silent for [`MESHED_SILENT_WINDOW`] gets that connection opened, as in plaintext: if the
/// app speaks first, the connection is opaque at once; if the client does, detection goes
/// on, so that a meshed client cannot pass HTTP to the app unread (its own `l5d-client-id`
/// included) by waiting. TLS inside is the app's own, and opaque too. A port whose server
/// declares HTTP is served as that, unread.
async fn detect_inside<S: AsyncRead + Unpin>(
    tls: &mut S,
    buf: &mut BytesMut,
    target: SocketAddr,
    client: (std::net::IpAddr, Option<&str>),
    side: &Side,
) -> std::io::Result<(Protocol, Option<TcpStream>)> {
    let policy = side.policy.as_ref().map(|p| p.current(target.port()));
    let limits = match side.detection(target.port(), policy.as_deref()) {
        Detection::Opaque => return Ok((Protocol::Opaque, None)),
        Detection::Declared(http, _) => return Ok((http, None)),
        Detection::Detect(limits) => limits,
    };
    // No connection to the app for a client the policy would refuse anyway.
    let speculate = policy.as_ref().is_none_or(|p| p.may_admit(client.0, client.1));
    let started = tokio::time::Instant::now();
    let deadline = started + limits.timeout;
    let max = side.detect_max_bytes;
    let mut upstream: Option<TcpStream> = None;
    loop {
        let waited = if buf.is_empty() && upstream.is_none() && speculate {
            started + limits.silent_window.min(MESHED_SILENT_WINDOW)
        } else {
            deadline
        };
        let room = (max - buf.len()) as u64;
        let read = tokio::time::timeout_at(waited, (&mut *tls).take(room).read_buf(buf)).await;
        let n = match read {
            Err(_) if buf.is_empty() && upstream.is_none() && speculate => {
                let up = match transport::connect(target, side.connect).await {
                    Ok(up) => up,
                    // Connected to (and counted) again when the connection is forwarded.
                    Err(_) => return Ok((Protocol::Opaque, None)),
                };
                let mut one = [0u8; 1];
                let mut limited = (&mut *tls).take(room);
                tokio::select! {
                    r = up.peek(&mut one) => {
                        r?;
                        debug!("meshed client silent and the app spoke first; forwarding as opaque");
                        return Ok((Protocol::Opaque, Some(up)));
                    }
                    r = limited.read_buf(buf) => {
                        upstream = Some(up);
                        r?
                    }
                    () = tokio::time::sleep_until(deadline) => return Ok((Protocol::Opaque, Some(up))),
                }
            }
            Err(_) if buf.is_empty() => {
                debug!("meshed client silent; forwarding as opaque");
                return Ok((Protocol::Opaque, upstream));
            }
            Err(_) => {
                side.metrics.errors(side.direction).inc("detect_timeout");
                debug!(bytes = buf.len(), "detection timed out; forwarding as opaque");
                return Ok((Protocol::Opaque, upstream));
            }
            Ok(r) => r?,
        };
        let Some(protocol) = detect::after_read(buf, max, n == 0) else { continue };
        return Ok(match protocol {
            Protocol::Http1 | Protocol::Http2 => (protocol, None),
            _ => (Protocol::Opaque, upstream),
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
        metrics.open_endpoint(direction, Peer::Dst, &addr, label_protocol, labels, &t.labels),
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
