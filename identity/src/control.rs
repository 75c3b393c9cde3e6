//! Connections to the control plane's services (identity, destination), one path for both:
//! `host:port` addresses whose host is an IP literal or a DNS name; names resolved in Rust
//! with hickory (resolv.conf with its search domains and ndots, as Kubernetes pods need, and
//! /etc/hosts — never glibc NSS, so the static proxy needs nothing from the host), again at
//! every connect so that a moved Service IP is followed; then TCP, then TLS 1.3 verified
//! against the trust anchors for the service's identity name, presenting the workload's own
//! certificate when it has one. [`Connector`] is a tonic connector.

use std::{
    fmt,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    pin::Pin,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use hickory_resolver::{TokioResolver, net::runtime::TokioRuntimeProvider};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tonic::codegen::http::Uri;
use tracing::{debug, info, warn};

use crate::{CertResolver, IdentityName, SharedTrust};

/// Where a pod's resolver configuration lives.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// Longest wait for a name's addresses (all search domains and attempts together).
pub const DEFAULT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A control-plane service's address: `host:port`, the host an IP literal (IPv6 in
/// brackets) or a DNS name such as `weft-destination.weft.svc.cluster.local`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ControlAddr {
    host: Host,
    port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl ControlAddr {
    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address when the host is an IP literal (no resolution needed).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Name(_) => None,
        }
    }

    pub fn is_name(&self) -> bool {
        matches!(self.host, Host::Name(_))
    }

    /// Whether connections to it stay on this host: an IPv4 address in 127/8, `::1` or
    /// `::ffff:127.x.y.z`. A name is never loopback, `localhost` included: what it resolves
    /// to is up to resolv.conf and /etc/hosts, which the proxy does not control. Plaintext
    /// control-plane connections are allowed only to such addresses.
    pub fn is_loopback(&self) -> bool {
        match self.host {
            Host::Ip(ip) => ip.to_canonical().is_loopback(),
            Host::Name(_) => false,
        }
    }
}

impl From<SocketAddr> for ControlAddr {
    fn from(a: SocketAddr) -> Self {
        ControlAddr { host: Host::Ip(a.ip()), port: a.port() }
    }
}

impl fmt::Display for ControlAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            Host::Ip(ip) => write!(f, "{ip}:{}", self.port),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

/// Why a string is not a `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error(
        "{0:?} has no port: expected host:port, e.g. weft-destination.weft.svc.cluster.local:8086"
    )]
    NoPort(String),
    #[error(
        "{0:?} has no host: expected host:port, e.g. weft-identity.weft.svc.cluster.local:8080"
    )]
    EmptyHost(String),
    #[error("{0:?}: {1:?} is not a port (1 to 65535)")]
    BadPort(String, String),
    #[error("{0:?}: {1:?} is neither an IP address nor a DNS name (IPv6 addresses go in brackets)")]
    BadHost(String, String),
}

impl FromStr for ControlAddr {
    type Err = AddrError;

    fn from_str(s: &str) -> Result<Self, AddrError> {
        let s = s.trim();
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(a.into());
        }
        let bad_host = |h: &str| AddrError::BadHost(s.to_owned(), h.to_owned());
        // An IP alone (`10.0.0.1`, `::1`, `[::1]`): the last colon is not a port separator.
        let bracketed = s.starts_with('[') && s.ends_with(']');
        if bracketed || s.parse::<IpAddr>().is_ok() {
            return Err(AddrError::NoPort(s.to_owned()));
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            return Err(AddrError::NoPort(s.to_owned()));
        };
        if host.is_empty() {
            return Err(AddrError::EmptyHost(s.to_owned()));
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(AddrError::BadPort(s.to_owned(), port.to_owned())),
        };
        let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Host::Ip(v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad_host(host))?.into())
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            Host::Ip(ip)
        } else if is_dns_name(host) {
            Host::Name(host.to_ascii_lowercase())
        } else {
            return Err(bad_host(host));
        };
        Ok(ControlAddr { host, port })
    }
}

/// Letters, digits, `-` and `_` in labels of 1 to 63 bytes, at most 253 in all; a final
/// dot (an absolute name, no search domains) is allowed.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: &'static str,
}

/// Why the resolver cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error("cannot read the resolver configuration {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("the resolver configuration {path} is unusable: {reason}")]
    Config { path: String, reason: String },
}

/// Why a name did not resolve.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("DNS lookup of {name} failed: {reason}")]
    Lookup { name: String, reason: String },
    #[error("DNS lookup of {name} took longer than {timeout:?}")]
    Timeout { name: String, timeout: Duration },
    #[error("{name} is a DNS name, and no resolver is configured")]
    NoResolver { name: String },
}

/// The process's DNS resolver for control-plane names, and its error counter
/// `control_plane_resolve_errors_total{service}`.
pub struct Resolver {
    hickory: TokioResolver,
    resolv_conf: PathBuf,
    timeout: Duration,
    errors: Family<ServiceLabels, Counter>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("resolv_conf", &self.resolv_conf)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Reads `path` (resolv.conf syntax: nameservers, `search`, `options ndots:N timeout:N
    /// attempts:N`). Nothing is cached: every connect asks again, so a control-plane
    /// Service that moves is followed at the next reconnect (connects are rare).
    pub fn from_resolv_conf(
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<Arc<Self>, ResolverError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let data = std::fs::read(path)
            .map_err(|source| ResolverError::Read { path: shown.clone(), source })?;
        let (config, mut opts) = hickory_resolver::system_conf::parse_resolv_conf(&data)
            .map_err(|e| ResolverError::Config { path: shown.clone(), reason: e.to_string() })?;
        opts.cache_size = 0;
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        *builder.options_mut() = opts;
        let hickory = builder
            .build()
            .map_err(|e| ResolverError::Config { path: shown, reason: e.to_string() })?;
        Ok(Arc::new(Resolver {
            hickory,
            resolv_conf: path.to_owned(),
            timeout,
            errors: Family::default(),
        }))
    }

    /// Registers `control_plane_resolve_errors_total{service}`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "control_plane_resolve_errors",
            "Failed DNS lookups of a control-plane service's name (each connect attempt resolves again)",
            self.errors.clone(),
        );
    }

    /// How many lookups for `service` failed.
    pub fn errors(&self, service: &'static str) -> u64 {
        self.errors.get_or_create(&ServiceLabels { service }).get()
    }

    pub fn resolv_conf(&self) -> &Path {
        &self.resolv_conf
    }

    /// The addresses of `name`, IPv4 first; counted as an error of `service` when none.
    pub async fn resolve(
        &self,
        service: &'static str,
        name: &str,
    ) -> Result<Vec<IpAddr>, ResolveError> {
        let result = match tokio::time::timeout(self.timeout, self.hickory.lookup_ip(name)).await {
            Ok(Ok(found)) => {
                let ips: Vec<IpAddr> = found.iter().collect();
                if ips.is_empty() {
                    Err(ResolveError::Lookup { name: name.to_owned(), reason: "no address".into() })
                } else {
                    Ok(ips)
                }
            }
            Ok(Err(e)) => {
                Err(ResolveError::Lookup { name: name.to_owned(), reason: e.to_string() })
            }
            Err(_) => Err(ResolveError::Timeout { name: name.to_owned(), timeout: self.timeout }),
        };
        if result.is_err() {
            self.errors.get_or_create(&ServiceLabels { service }).inc();
        }
        result
    }
}

/// TLS to one control-plane service: its identity name (sent as SNI and required in its
/// certificate) and the client configuration.
#[derive(Clone)]
pub struct ServiceTls {
    identity: IdentityName,
    name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
}

impl fmt::Debug for ServiceTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceTls").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl ServiceTls {
    /// TLS 1.3 with ALPN h2; the server's chain verified against `trust` (re-read anchors
    /// included) for exactly `identity`; with `client_cert`, the workload's current
    /// certificate is presented when the server asks for one (mTLS).
    pub fn new(
        trust: Arc<SharedTrust>,
        identity: IdentityName,
        client_cert: Option<Arc<CertResolver>>,
    ) -> Result<Self, rustls::Error> {
        let builder = rustls::ClientConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            // SharedTrust is rustls' WebPKI verifier over the current anchors.
            .with_custom_certificate_verifier(trust);
        let mut config = match client_cert {
            Some(resolver) => builder.with_client_cert_resolver(resolver),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let name = ServerName::try_from(identity.to_string())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(Self { identity, name, config: Arc::new(config) })
    }

    pub fn identity(&self) -> &IdentityName {
        &self.identity
    }
}

/// Why a connection to a control-plane service was not made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot resolve the {service} service's address {addr}: {source}")]
    Resolve {
        service: &'static str,
        addr: ControlAddr,
        #[source]
        source: ResolveError,
    },
    #[error("cannot connect to the {service} service at {addr}: {source}")]
    Connect {
        service: &'static str,
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "TLS with the {service} service at {addr} failed (it must prove the identity {identity}; a plaintext server fails here too): {source}"
    )]
    Tls {
        service: &'static str,
        addr: SocketAddr,
        identity: IdentityName,
        #[source]
        source: io::Error,
    },
}

/// A byte stream to a control-plane service: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Connects to one control-plane service: resolves its name (when it has one) at every
/// connect, tries each address in turn, and speaks TLS when configured. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Connector {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    service: &'static str,
    addr: ControlAddr,
    resolver: Option<Arc<Resolver>>,
    tls: Option<ServiceTls>,
    connect_timeout: Duration,
    /// Set while lookups fail, so the log says it once, and once more when it recovers.
    resolve_failing: AtomicBool,
}

impl Connector {
    /// `service` names it in logs and metrics (`identity`, `destination`); `resolver` is
    /// needed when `addr` is a DNS name, and never used for an IP literal.
    pub fn new(
        service: &'static str,
        addr: ControlAddr,
        resolver: Option<Arc<Resolver>>,
        tls: Option<ServiceTls>,
        connect_timeout: Duration,
    ) -> Self {
        Connector {
            inner: Arc::new(Inner {
                service,
                addr,
                resolver,
                tls,
                connect_timeout,
                resolve_failing: AtomicBool::new(false),
            }),
        }
    }

    pub fn addr(&self) -> &ControlAddr {
        &self.inner.addr
    }

    pub fn tls(&self) -> Option<&ServiceTls> {
        self.inner.tls.as_ref()
    }

    /// A tonic endpoint for this service (`http://host:port`: TLS, when on, is ours).
    pub fn endpoint(&self) -> tonic::transport::Endpoint {
        // A ControlAddr always makes a valid authority.
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.inner.addr))
            .unwrap_or_else(|_| tonic::transport::Endpoint::from_static("http://control-plane"))
    }

    /// The addresses to try now: the literal, or the name's current addresses.
    async fn addrs(&self) -> Result<Vec<SocketAddr>, ConnectError> {
        let i = &*self.inner;
        let name = match &i.addr.host {
            Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, i.addr.port)]),
            Host::Name(name) => name,
        };
        let resolved = match &i.resolver {
            Some(r) => r.resolve(i.service, name).await,
            None => Err(ResolveError::NoResolver { name: name.clone() }),
        };
        match resolved {
            Ok(ips) => {
                if i.resolve_failing.swap(false, Ordering::Relaxed) {
                    info!(service = i.service, addr = %i.addr, ?ips, "control-plane name resolves again");
                } else {
                    debug!(service = i.service, addr = %i.addr, ?ips, "resolved");
                }
                Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, i.addr.port)).collect())
            }
            Err(source) => {
                if !i.resolve_failing.swap(true, Ordering::Relaxed) {
                    warn!(
                        service = i.service, addr = %i.addr, error = %source,
                        "cannot resolve a control-plane service's name; retrying with backoff"
                    );
                } else {
                    debug!(service = i.service, addr = %i.addr, error = %source, "still cannot resolve");
                }
                Err(ConnectError::Resolve { service: i.service, addr: i.addr.clone(), source })
            }
        }
    }

    /// Resolves, connects (each address in turn, each within the connect timeout), and
    /// completes the TLS handshake when TLS is on.
    pub async fn connect(&self) -> Result<Box<dyn Io>, ConnectError> {
        let i = &*self.inner;
        let mut last = None;
        let mut tcp = None;
        for addr in self.addrs().await? {
            let attempt = tokio::time::timeout(i.connect_timeout, TcpStream::connect(addr));
            match attempt.await {
                Ok(Ok(s)) => {
                    tcp = Some((s, addr));
                    break;
                }
                Ok(Err(e)) => last = Some((addr, e)),
                Err(_) => {
                    let e = io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no connection within {:?}", i.connect_timeout),
                    );
                    last = Some((addr, e));
                }
            }
        }
        let Some((tcp, addr)) = tcp else {
            let (addr, source) = last.unwrap_or_else(|| {
                (
                    i.addr.socket_addr().unwrap_or(([0, 0, 0, 0], 0).into()),
                    io::Error::other("no address"),
                )
            });
            let addr =
                if i.addr.is_name() { format!("{} ({addr})", i.addr) } else { addr.to_string() };
            return Err(ConnectError::Connect { service: i.service, addr, source });
        };
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &i.tls else { return Ok(Box::new(tcp)) };
        let tls_err = |source| ConnectError::Tls {
            service: i.service,
            addr,
            identity: tls.identity.clone(),
            source,
        };
        let handshake =
            tokio_rustls::TlsConnector::from(tls.config.clone()).connect(tls.name.clone(), tcp);
        match tokio::time::timeout(i.connect_timeout, handshake).await {
            Ok(Ok(stream)) => Ok(Box::new(stream)),
            Ok(Err(e)) => Err(tls_err(e)),
            Err(_) => Err(tls_err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no handshake within {:?}", i.connect_timeout),
            ))),
        }
    }
}

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<Box<dyn Io>>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

#[cfg(test)]
#[path = "control_tests.rs"]
mod tests;
