//! The transport core shared by the inbound and outbound listeners: accept, find the
//! original destination, refuse loops, detect the protocol (opening the upstream
//! speculatively when the client is silent, so server-speaks-first protocols are not
//! stalled), connect, and forward.

use std::{
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{BufMut, BytesMut};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::{sleep_until, timeout, timeout_at},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, info_span};

use crate::{
    config::PortSet,
    detect::{self, Protocol},
    forward,
    metrics::{Direction, DstLabels, Metrics, Peer},
    orig_dst,
};

/// What one listener needs to serve its connections.
#[derive(Debug)]
pub struct Side {
    pub direction: Direction,
    /// Fixed target instead of SO_ORIGINAL_DST.
    pub orig_dst_override: Option<SocketAddr>,
    pub opaque_ports: PortSet,
    pub detect_timeout: Duration,
    pub detect_silent_window: Duration,
    pub detect_max_bytes: usize,
    /// How this side opens upstream connections.
    pub connect: ConnectOpts,
    /// TCP keepalive of accepted connections (inbound: peers across the network).
    pub accept_keepalive: Option<Duration>,
    /// This proxy's own listeners: a connection targeting one of them is a loop.
    pub own_addrs: Vec<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub http: crate::http::Http,
    /// Outbound only, when a destination service is configured.
    pub discovery: Option<Arc<crate::discovery::Discovery>>,
    /// Inbound only: who may reach the app.
    pub policy: Option<Arc<crate::policy::Policy>>,
    /// This proxy's identity, when mTLS is on.
    pub identity: Option<Arc<crate::identity::Identity>>,
    /// Cancelled when the proxy starts draining.
    pub stop: CancellationToken,
}

impl Side {
    pub fn target_label(&self, target: SocketAddr) -> String {
        self.metrics.target_label(&target)
    }
}

/// Accepts connections until `stop` is cancelled; each connection runs on `tracker`
/// so shutdown can wait for it. At most `limit`'s permits are served at once.
pub async fn serve(
    listener: TcpListener,
    side: Arc<Side>,
    limit: Arc<Semaphore>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let errors = side.metrics.errors(side.direction);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let (client, client_addr) = match accepted {
            Ok(c) => c,
            Err(e) => {
                errors.inc("accept_failed");
                crate::throttled!(warn, direction = side.direction.as_str(), error = %e, "accept failed");
                // Out of file descriptors: give closing connections a moment.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            errors.inc("connection_limit");
            debug!(client.addr = %client_addr, "connection limit reached; closing");
            forward::reset_on_drop(&client);
            continue;
        };
        let _ = client.set_nodelay(true);
        if let Some(idle) = side.accept_keepalive {
            set_keepalive(&client, idle);
        }
        let span =
            info_span!("conn", direction = side.direction.as_str(), client.addr = %client_addr);
        let side = side.clone();
        tracker.spawn(
            async move {
                handle(client, client_addr, side).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    debug!(direction = side.direction.as_str(), "listener closed");
}

/// Why a connection ended before or instead of being forwarded. Each maps to an
/// `error` label of `{inbound,outbound}_tcp_errors_total`.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(
        "cannot read the original destination (SO_ORIGINAL_DST): {0}; are the nat rules of `weft-proxy init` installed, or should the orig-dst override be set?"
    )]
    OrigDst(io::Error),
    #[error("original destination {0} is this proxy's own listener; refusing to connect to myself")]
    Loop(SocketAddr),
    #[error("nobody spoke within the detect timeout ({0:?}); closing")]
    Silent(Duration),
    #[error("a TLS ClientHello did not arrive whole within the detect timeout ({0:?}); closing")]
    SlowClientHello(Duration),
    #[error("client error during protocol detection: {0}")]
    DetectIo(io::Error),
    #[error("connection to {0} refused: is anything listening there?")]
    ConnectRefused(SocketAddr),
    #[error(
        "connection to {0} timed out after {1:?}: the host may be down or a network policy may drop it"
    )]
    ConnectTimeout(SocketAddr, Duration),
    #[error("connection to {0} failed: {1}")]
    Connect(SocketAddr, io::Error),
    #[error("no endpoint of {0}'s service can take the connection: {1}")]
    NoEndpoint(SocketAddr, crate::balance::PickError),
    #[error("mTLS to {0} failed: {1}")]
    Tls(SocketAddr, String),
}

impl ConnError {
    pub fn label(&self) -> &'static str {
        match self {
            ConnError::OrigDst(_) => "orig_dst_unavailable",
            ConnError::Loop(_) => "loop",
            ConnError::Silent(_) | ConnError::SlowClientHello(_) => "detect_timeout",
            ConnError::DetectIo(_) => "detect_io",
            ConnError::ConnectRefused(_) => "connect_refused",
            ConnError::ConnectTimeout(..) => "connect_timeout",
            ConnError::Connect(..) => "connect_error",
            ConnError::NoEndpoint(..) => "no_endpoints",
            ConnError::Tls(..) => "tls_handshake",
        }
    }
}

async fn handle(mut client: TcpStream, client_addr: SocketAddr, side: Arc<Side>) {
    let errors = side.metrics.errors(side.direction);
    let detecting = side.metrics.detecting(side.direction);
    let prepared = Box::pin(prepare(&mut client, client_addr.ip(), &side)).await;
    drop(detecting);
    let Prepared { target, protocol, prefix, upstream, dst } = match prepared {
        Ok(p) => p,
        Err(e) => {
            errors.inc(e.label());
            match &e {
                ConnError::Silent(_) | ConnError::DetectIo(_) => debug!(error = %e, "closing"),
                _ => crate::throttled!(warn, error = %e, "closing"),
            }
            forward::reset_on_drop(&client);
            return;
        }
    };
    // TLS for this proxy's own identity: a meshed peer; terminate it.
    if side.direction == Direction::Inbound
        && let Some(id) = &side.identity
        && let Protocol::Tls { sni: Some(sni) } = &protocol
        && sni == id.local.as_str()
    {
        drop(upstream);
        let id = id.clone();
        // Boxed, like the other protocol paths below: a connection's task then holds only
        // the state of the path it takes, which keeps idle opaque connections small.
        let client = crate::mtls::Client { io: client, addr: client_addr };
        Box::pin(crate::mtls::serve_inbound(client, prefix, target, side, id)).await;
        return;
    }
    let tls = side.tls_labels(&protocol);
    let authz = match &side.policy {
        Some(p) => {
            let label = side.metrics.kept_target_label(&target);
            Some(p.authorize(client_addr.ip(), target, label, tls.clone()).await)
        }
        None => None,
    };
    if matches!(protocol, Protocol::Http1 | Protocol::Http2) {
        // The HTTP layer opens (and pools) its own upstream connections; a speculative
        // one from detection is not needed.
        drop(upstream);
        if let Some(authz) = &authz {
            authz.note_http();
        }
        let src = side.metrics.open(side.direction, Peer::Src, &target, &protocol, tls);
        let io = crate::io::MeteredIo::new(client, prefix, src);
        let caller = crate::http::Caller { client_addr, client_id: None, authz, dst };
        Box::pin(crate::http::serve(io, protocol, target, side, caller)).await;
        return;
    }
    if authz.as_ref().is_some_and(|a| !a.admit_tcp()) {
        drop(upstream);
        forward::reset_on_drop(&client);
        return;
    }
    // What a server that spoke first said, read from a meshed upstream (a plaintext one's
    // first bytes were only peeked at).
    let (upstream, said) = match upstream {
        Some(s) => (s.upstream, s.said),
        None => match Box::pin(connect_balanced(target, dst, &side, &protocol)).await {
            Ok(u) => (u, BytesMut::new()),
            Err(e) => {
                errors.inc(e.label());
                crate::throttled!(warn, error = %e, "closing");
                forward::reset_on_drop(&client);
                return;
            }
        },
    };
    let src = side.metrics.open(side.direction, Peer::Src, &target, &protocol, tls.clone());
    debug!(server.addr = %target, protocol = protocol.label(), "forwarding");
    match upstream {
        Upstream::Plain(mut upstream, addr, endpoint) => {
            let dst = side.metrics.open_endpoint(
                side.direction,
                Peer::Dst,
                &addr,
                &protocol,
                tls,
                &endpoint,
            );
            let forward = forward::forward(&mut client, &mut upstream, prefix, &src, &dst);
            let (result, revoked) = match &authz {
                Some(a) => tokio::select! {
                    r = forward => (r, false),
                    () = a.revoked() => (Err(crate::policy::revoked_error()), true),
                },
                None => (forward.await, false),
            };
            let err = result.as_ref().err();
            if let Some(e) = err {
                errors.inc(if revoked { "unauthorized" } else { "forward_io" });
                debug!(error = %e, "connection ended with an error");
                if revoked {
                    forward::reset_on_drop(&client);
                }
            }
            src.close(err);
            dst.close(err);
        }
        // Meshed: the endpoint's proxy is reached over mTLS (its metrics are opened with it).
        Upstream::Tls(mut tls) => {
            let mut client = crate::io::MeteredIo::new(client, prefix, src);
            if !said.is_empty()
                && let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut client, &said).await
            {
                errors.inc("forward_io");
                debug!(error = %e, "connection ended with an error");
                return;
            }
            Box::pin(crate::mtls::splice(&mut client, &mut *tls, errors)).await;
        }
    }
}

/// An upstream connection opened while the client was silent.
struct Speculative {
    upstream: Upstream,
    /// What the server said first over mTLS (read: a TLS stream cannot be peeked at).
    said: BytesMut,
}

impl Speculative {
    /// Waits until the server speaks or closes, consuming nothing of a plaintext stream.
    /// Cancel-safe: a read that has not completed has taken nothing.
    async fn server_spoke(&mut self) -> io::Result<()> {
        match &mut self.upstream {
            Upstream::Plain(up, ..) => up.peek(&mut [0u8; 1]).await.map(drop),
            Upstream::Tls(tls) => {
                tokio::io::AsyncReadExt::read_buf(&mut **tls, &mut self.said).await.map(drop)
            }
        }
    }
}

/// Where an opaque connection goes.
enum Upstream {
    /// To the address connected, with the `dst_*` labels of the endpoint when discovery
    /// picked it (none when the connection goes to its original destination).
    Plain(TcpStream, SocketAddr, DstLabels),
    Tls(Box<tokio_rustls::client::TlsStream<crate::io::MeteredIo>>),
}

impl Side {
    /// The TLS labels of a plaintext connection (or one carrying the app's own TLS).
    pub fn tls_labels(&self, protocol: &Protocol) -> crate::metrics::TlsLabels {
        use crate::metrics::TlsLabels;
        match (&self.identity, protocol) {
            (None, _) => TlsLabels::disabled(),
            (Some(_), Protocol::Tls { .. }) => TlsLabels::plaintext("passthru"),
            (Some(_), _) if self.direction == Direction::Inbound => {
                TlsLabels::plaintext("not_provided_by_remote")
            }
            (Some(_), _) => TlsLabels::plaintext("not_provided_by_service_discovery"),
        }
    }
}

/// What is known of a connection before it is forwarded.
struct Prepared {
    target: SocketAddr,
    protocol: Protocol,
    /// The bytes already read from the client.
    prefix: BytesMut,
    /// The upstream connection, when detection had to open it.
    upstream: Option<Speculative>,
    /// Outbound: what discovery said of the target (`None`: forward to it as it is).
    dst: Option<Arc<crate::discovery::Resolution>>,
}

/// Finds the target, what discovery says of it, and the protocol.
async fn prepare(
    client: &mut TcpStream,
    client_ip: std::net::IpAddr,
    side: &Side,
) -> Result<Prepared, ConnError> {
    let target = match side.orig_dst_override {
        Some(t) => t,
        None => orig_dst::original_dst(client).map_err(ConnError::OrigDst)?,
    };
    let local = client.local_addr().map_err(ConnError::DetectIo)?;
    if is_own_listener(target, local, &side.own_addrs) {
        return Err(ConnError::Loop(target));
    }
    // Discovery comes first, as in Linkerd: a service whose port is marked opaque (its
    // profile's `opaque_protocol`) is not detected, so a server that speaks first is not
    // kept waiting by a client that waits for it.
    let dst = match &side.discovery {
        Some(d) => d.resolve(target).await,
        None => None,
    };
    let opaque_service = dst.as_ref().is_some_and(|r| r.profile().opaque);
    let policy = side.policy.as_ref().map(|p| p.current(target.port()));
    let unread =
        |protocol, dst| Prepared { target, protocol, prefix: BytesMut::new(), upstream: None, dst };
    let detection = if opaque_service {
        Detection::Opaque
    } else {
        side.detection(target.port(), policy.as_deref())
    };
    let (limits, declared) = match detection {
        Detection::Opaque => return Ok(unread(Protocol::Opaque, dst)),
        Detection::Detect(limits) => (limits, None),
        Detection::Declared(http, limits) => {
            // Only TLS (a meshed client's, or the app's own) is told apart, by its first
            // byte, a handshake record; anything else, or silence, is the declared
            // protocol, whose server then bounds the wait for a request.
            let mut first = [0u8; 1];
            let tls = timeout(limits.timeout, client.peek(&mut first)).await;
            if !matches!(tls, Ok(Ok(1)) if detect::is_tls_prefix(&first)) {
                return Ok(unread(http, dst));
            }
            (limits, Some(http))
        }
    };
    // A client the policy would refuse in plaintext gets no speculative connection to the
    // app: a server that speaks first must not talk to it before it is authorized.
    let speculate = policy.as_ref().is_none_or(|p| p.may_admit(client_ip, None));
    let (protocol, prefix, upstream) =
        detect_protocol(client, target, dst.as_ref(), side, limits, speculate).await?;
    // A declared port's TLS that turns out not to be a ClientHello is still its protocol.
    let protocol = match (declared, protocol) {
        (_, p @ Protocol::Tls { .. }) | (None, p) => p,
        (Some(http), _) => http,
    };
    Ok(Prepared { target, protocol, prefix, upstream, dst })
}

/// How connections to a port are taken.
pub(crate) enum Detection {
    /// As opaque TCP, unread.
    Opaque,
    /// Detected within these limits.
    Detect(DetectLimits),
    /// Its server declares this HTTP protocol (Linkerd's `HTTP/1`, `HTTP/2`, `gRPC`): what
    /// is not TLS is served as it, whatever its bytes or silence (as Linkerd does), so that
    /// no client gets past the port's HTTP routes as opaque TCP. TLS is told apart within
    /// the limits.
    Declared(Protocol, DetectLimits),
}

impl Side {
    /// How a connection to `port` is taken, whose policy (with a policy source) is
    /// `policy`: opaque when the port is, by configuration or because the control plane's
    /// Server says so; as the HTTP its Server declares; else detected.
    pub(crate) fn detection(
        &self,
        port: u16,
        policy: Option<&crate::policy::server::ServerPolicy>,
    ) -> Detection {
        use crate::policy::server::ServerProtocol;
        if self.opaque_ports.contains(port) {
            return Detection::Opaque;
        }
        let policy_timeout = policy.and_then(|p| p.detect_timeout);
        let limits =
            DetectLimits::new(policy_timeout, self.detect_timeout, self.detect_silent_window);
        match policy.map(|p| p.protocol) {
            Some(ServerProtocol::Opaque) => Detection::Opaque,
            Some(ServerProtocol::Http1) => Detection::Declared(Protocol::Http1, limits),
            Some(ServerProtocol::Http2 | ServerProtocol::Grpc) => {
                Detection::Declared(Protocol::Http2, limits)
            }
            Some(ServerProtocol::Detect | ServerProtocol::Tls) | None => Detection::Detect(limits),
        }
    }
}

/// How long detection waits on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DetectLimits {
    pub(crate) timeout: Duration,
    pub(crate) silent_window: Duration,
}

impl DetectLimits {
    /// The port's policy's detect timeout when it gives one (the inbound side), else the
    /// side's own. The silent window ends by half the timeout at the latest, so that a
    /// server that speaks first still gets its upstream opened (and time to speak) when
    /// a policy's timeout is shorter than the window.
    fn new(policy_timeout: Option<Duration>, side_timeout: Duration, window: Duration) -> Self {
        let timeout = policy_timeout.unwrap_or(side_timeout);
        DetectLimits { timeout, silent_window: window.min(timeout / 2) }
    }
}

/// Detection with speculative connect: a client silent for the silent window gets its
/// upstream opened; if the server then speaks first, the connection is opaque at once.
async fn detect_protocol(
    client: &mut TcpStream,
    target: SocketAddr,
    dst: Option<&Arc<crate::discovery::Resolution>>,
    side: &Side,
    limits: DetectLimits,
    speculate: bool,
) -> Result<(Protocol, BytesMut, Option<Speculative>), ConnError> {
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let mut upstream = None;
    // `readable()` may wake spuriously (it does at once on a fresh socket); `peek`
    // waits for a byte (or EOF) that is really there.
    let mut one = [0u8; 1];
    if speculate && timeout(limits.silent_window, client.peek(&mut one)).await.is_err() {
        // To an endpoint of a known service, as any opaque connection: over mTLS when it
        // is meshed, so that what a server that speaks first says is never in plaintext
        // between pods.
        let up = Box::pin(connect_balanced(target, dst.cloned(), side, &Protocol::Opaque)).await?;
        let mut s = Speculative { upstream: up, said: BytesMut::new() };
        tokio::select! {
            r = client.peek(&mut one) => { r.map_err(ConnError::DetectIo)?; }
            r = s.server_spoke() => {
                // The server spoke first (or closed): nothing for detection to see.
                r.map_err(ConnError::DetectIo)?;
                debug!("server spoke first; forwarding as opaque");
                return Ok((Protocol::Opaque, BytesMut::new(), Some(s)));
            }
            _ = sleep_until(deadline) => return Err(ConnError::Silent(limits.timeout)),
        }
        debug!("client spoke after the silent window");
        upstream = Some(s);
    }
    let started = Instant::now();
    let max = side.detect_max_bytes;
    let mut buf = BytesMut::with_capacity(max.min(1024));
    loop {
        let room = max - buf.len();
        match timeout_at(deadline, read_some(client, &mut buf, room)).await {
            Ok(Ok(n)) => {
                if let Some(p) = detect::after_read(&buf, max, n == 0) {
                    match &p {
                        Protocol::Tls { sni: Some(sni) } => {
                            debug!(protocol = "tls", sni, "detected")
                        }
                        _ => debug!(
                            protocol = p.label(),
                            bytes = buf.len(),
                            eof = n == 0,
                            "detected"
                        ),
                    }
                    return Ok((p, buf, upstream));
                }
            }
            Ok(Err(e)) => return Err(ConnError::DetectIo(e)),
            Err(_elapsed) if detect::is_tls_prefix(&buf) => {
                // A ClientHello still coming after the timeout is a broken or hostile TLS
                // client; forwarded, it could be one meant for this proxy's own name (to be
                // terminated) and reach the app instead. Closed, as linkerd2-proxy does.
                return Err(ConnError::SlowClientHello(limits.timeout));
            }
            Err(_elapsed) => {
                // Slow or truncated bytes: forward what came, as opaque, rather than lose it.
                side.metrics.errors(side.direction).inc("detect_timeout");
                crate::throttled!(
                    info,
                    bytes = buf.len(),
                    waited_ms = started.elapsed().as_millis() as u64,
                    "protocol detection timed out; forwarding as opaque"
                );
                return Ok((Protocol::Opaque, buf, upstream));
            }
        }
    }
}

/// One read of at most `room` bytes, appended to `buf`; 0 at EOF.
async fn read_some(client: &TcpStream, buf: &mut BytesMut, room: usize) -> io::Result<usize> {
    loop {
        client.readable().await?;
        match client.try_read_buf(&mut (&mut *buf).limit(room)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// How upstream connections are opened.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOpts {
    pub timeout: Duration,
    /// TCP keepalive (outbound: peers across the network); `None`: off.
    pub keepalive: Option<Duration>,
}

/// TCP keepalive: the first probe after `idle` without traffic, then one every `idle`; a
/// peer that answers none of 3 is dropped (after 4 × `idle`), so connections to a vanished
/// host (a node lost without a RST) do not stay open forever.
pub fn set_keepalive(stream: &TcpStream, idle: Duration) {
    let ka = socket2::TcpKeepalive::new().with_time(idle).with_interval(idle).with_retries(3);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        debug!(error = %e, "cannot set TCP keepalive");
    }
}

pub async fn connect(target: SocketAddr, opts: ConnectOpts) -> Result<TcpStream, ConnError> {
    let limit = opts.timeout;
    match timeout(limit, TcpStream::connect(target)).await {
        Err(_) => Err(ConnError::ConnectTimeout(target, limit)),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Err(ConnError::ConnectRefused(target))
        }
        Ok(Err(e)) => Err(ConnError::Connect(target, e)),
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            if let Some(idle) = opts.keepalive {
                set_keepalive(&s, idle);
            }
            Ok(s)
        }
    }
}

/// Connects to an endpoint of the target's service when discovery knows it (balanced per
/// connection; mTLS when the endpoint is meshed and this proxy has an identity), else to
/// the target itself.
async fn connect_balanced(
    target: SocketAddr,
    dst: Option<Arc<crate::discovery::Resolution>>,
    side: &Side,
    protocol: &Protocol,
) -> Result<Upstream, ConnError> {
    let Some(res) = dst else {
        return connect(target, side.connect)
            .await
            .map(|s| Upstream::Plain(s, target, DstLabels::default()));
    };
    // A traffic split: this connection goes to one of the backend services, by weight.
    let backend = match &side.discovery {
        Some(d) => d.split(&res, &res.profile()).await,
        None => None,
    };
    let endpoints = backend.as_deref().unwrap_or(&res);
    let picked = endpoints.balancer.pick().map_err(|e| ConnError::NoEndpoint(target, e))?;
    let endpoint = picked.endpoint.clone();
    let result = match (&side.identity, &endpoint.meta.identity) {
        (Some(id), Some(server_id)) => {
            let t = crate::mtls::TlsTarget {
                addr: endpoint.addr,
                server_id: server_id.clone(),
                alpn: crate::identity::Alpn::None,
                opaque_port: endpoint.meta.opaque_transport_port,
                protocol: None,
                labels: endpoint.meta.labels.clone(),
            };
            crate::mtls::connect(id, &t, &side.metrics, side.direction, side.connect, protocol)
                .await
                .map(|tls| Upstream::Tls(Box::new(tls)))
        }
        _ => connect(endpoint.addr, side.connect)
            .await
            .map(|s| Upstream::Plain(s, endpoint.addr, endpoint.meta.labels.clone())),
    };
    // The connect time feeds the latency estimate; a failed connect, failure accrual.
    picked.complete(result.is_ok());
    result
}

/// Whether `target` is one of this proxy's listeners: same port, and the same IP, or
/// any local IP when the listener is on the unspecified address.
pub(crate) fn is_own_listener(target: SocketAddr, local: SocketAddr, own: &[SocketAddr]) -> bool {
    own.iter().any(|l| {
        l.port() == target.port()
            && (l.ip() == target.ip()
                || (l.ip().is_unspecified()
                    && (target.ip() == local.ip() || target.ip().is_loopback())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[test]
    fn own_listeners_are_loops() {
        let own = [a("0.0.0.0:4143"), a("127.0.0.1:4140"), a("0.0.0.0:4191")];
        let local = a("10.0.0.5:4143");
        assert!(is_own_listener(a("10.0.0.5:4143"), local, &own));
        assert!(is_own_listener(a("127.0.0.1:4140"), local, &own));
        assert!(is_own_listener(a("127.0.0.1:4191"), local, &own));
        assert!(!is_own_listener(a("10.0.0.6:4143"), local, &own));
        assert!(!is_own_listener(a("10.0.0.5:8080"), local, &own));
        assert!(!is_own_listener(a("10.0.0.9:4140"), local, &own));
    }

    #[test]
    fn a_policys_detect_timeout_wins_and_the_silent_window_ends_before_it() {
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        let limits = |policy, flag, window| {
            let l = DetectLimits::new(policy, flag, window);
            (l.timeout, l.silent_window)
        };
        // No policy timeout: the side's own.
        assert_eq!(limits(None, s(10), ms(300)), (s(10), ms(300)));
        // The policy's, longer or shorter than the side's.
        assert_eq!(limits(Some(s(30)), s(10), ms(300)), (s(30), ms(300)));
        assert_eq!(limits(Some(s(1)), s(30), ms(300)), (s(1), ms(300)));
        // A timeout shorter than the window: speculation starts halfway through it, so a
        // server that speaks first is still reached before the connection is given up.
        assert_eq!(limits(Some(ms(200)), s(30), ms(300)), (ms(200), ms(100)));
        assert_eq!(limits(None, ms(100), ms(300)), (ms(100), ms(50)));
    }
}
