//! `weft-proxy`: the Weft sidecar. This crate owns the data plane — transparent
//! interception (`init`), protocol detection, forwarding, metrics and the admin server.
//! It has no Kubernetes client.

pub mod admin;
pub mod balance;
pub mod config;
pub mod detect;
pub mod discovery;
pub mod forward;
pub mod http;
pub mod identity;
pub mod idle;
pub mod init;
pub mod io;
pub mod logging;
pub mod metrics;
pub mod mtls;
pub mod orig_dst;
pub mod policy;
pub mod profile;
pub mod transport;
pub mod transport_header;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};
use weft_identity::{
    IdentityName,
    control::{Connector, ControlAddr, Resolver},
};

use crate::{
    config::RunArgs,
    logging::LogLevel,
    metrics::{Direction, Metrics},
    transport::Side,
};

/// A proxy whose listeners are bound (so their addresses are known) but not yet serving.
#[derive(Debug)]
pub struct BoundProxy {
    args: RunArgs,
    inbound: Vec<TcpListener>,
    outbound: Vec<TcpListener>,
    admin: Vec<TcpListener>,
    metrics: Arc<Metrics>,
    identity: Option<Arc<identity::Identity>>,
    /// The destination service, when discovery is on.
    destination: Option<Connector>,
    /// The policy service, when inbound policies are watched.
    policy: Option<Connector>,
}

/// Connect (TCP and TLS handshake) timeout per address of the destination service.
const DESTINATION_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Accept queue of each listener (the kernel caps it at `net.core.somaxconn`). The
/// standard library's 128 drops SYNs under a burst of new connections, which clients
/// see as a one-second connect stall.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listener with a deep accept queue. IPv6 listeners are IPv6-only so that a
/// v4 and a v6 listener can share a port.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Binds every address of one listener; an IPv6 address on a host without IPv6 is
/// skipped with a warning as long as another address is bound.
fn listen_all(addrs: &[SocketAddr], what: &'static str) -> anyhow::Result<Vec<TcpListener>> {
    let mut bound = Vec::with_capacity(addrs.len());
    let mut skipped = Vec::new();
    for &addr in addrs {
        match listen(addr) {
            Ok(l) => bound.push(l),
            Err(e)
                if addr.is_ipv6()
                    && matches!(
                        e.raw_os_error(),
                        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
                    ) =>
            {
                skipped.push((addr, e));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot listen on {addr} ({what} listener)"));
            }
        }
    }
    if bound.is_empty() {
        anyhow::bail!("no address of the {what} listener could be bound: {skipped:?}");
    }
    for (addr, e) in skipped {
        warn!(%addr, error = %e, "no IPv6 here; {what} listener skips this address");
    }
    Ok(bound)
}

fn addrs(listeners: &[TcpListener]) -> Vec<SocketAddr> {
    listeners.iter().filter_map(|l| l.local_addr().ok()).collect()
}

fn join(addrs: &[SocketAddr]) -> String {
    addrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

impl BoundProxy {
    pub fn bind(args: RunArgs) -> anyhow::Result<Self> {
        // Contradictory settings are refused before anything is bound.
        let identity_config = args.identity()?;
        args.check()?;
        let inbound = listen_all(&args.inbound_listen_addr, "inbound")?;
        let outbound = listen_all(&args.outbound_listen_addr, "outbound")?;
        let admin = listen_all(&args.admin_listen_addr, "admin")?;
        let destination_svc = args
            .destination_svc_name
            .as_deref()
            .map(|s| {
                s.parse::<IdentityName>().with_context(|| {
                    format!("WEFT_PROXY_DESTINATION_SVC_NAME {s:?} is not an identity name")
                })
            })
            .transpose()?;
        // Control-plane names are resolved here, in Rust; IP literals need no resolver.
        let names = [&args.destination_addr, &args.identity_addr, &args.policy_addr]
            .into_iter()
            .any(|a| a.as_ref().is_some_and(ControlAddr::is_name));
        let resolver = names
            .then(|| Resolver::from_resolv_conf(&args.dns_resolv_conf, args.dns_resolve_timeout))
            .transpose()
            .context("control-plane addresses are DNS names (WEFT_PROXY_DNS_RESOLV_CONF)")?;
        let (metrics, identity) = Metrics::with(args.metrics_max_label_values, |registry| {
            if let Some(r) = &resolver {
                r.register(registry);
            }
            identity_config
                .map(|mut c| {
                    c.resolver = resolver.clone();
                    identity::Identity::start(c, registry)
                })
                .transpose()
                .context("identity (WEFT_PROXY_IDENTITY_*)")
        })?;
        // Ends with the metrics (the proxy's life; an embedded proxy's, in tests).
        tokio::spawn(Metrics::retain_idle(Arc::downgrade(&metrics), args.metrics_retain_idle));
        let policy_svc = args
            .policy_svc_name
            .as_deref()
            .map(|s| {
                s.parse::<IdentityName>().with_context(|| {
                    format!("WEFT_PROXY_POLICY_SVC_NAME {s:?} is not an identity name")
                })
            })
            .transpose()?;
        let control = |what: &'static str,
                       addr: &Option<ControlAddr>,
                       svc: Option<IdentityName>| {
            let Some(addr) = addr else { return Ok::<_, anyhow::Error>(None) };
            let tls = match (&identity, svc) {
                (Some(id), Some(svc)) => Some(id.control_plane_tls(svc)?),
                (None, Some(_)) => {
                    warn!(
                        service = what,
                        "the service's name is set but identity is off: its connection is plaintext"
                    );
                    None
                }
                // `check` refused this off loopback: the plaintext stays on the host.
                (Some(_), None) => {
                    warn!(
                        service = what,
                        %addr,
                        "identity is on but the service's name (WEFT_PROXY_*_SVC_NAME) is not set: its connection, on loopback, is plaintext"
                    );
                    None
                }
                (None, None) => None,
            };
            let connector = Connector::new(
                what,
                addr.clone(),
                resolver.clone(),
                tls,
                DESTINATION_CONNECT_TIMEOUT,
            );
            Ok(Some(connector))
        };
        let destination = control("destination", &args.destination_addr, destination_svc)?;
        let policy = control("policy", &args.policy_addr, policy_svc)?;
        Ok(BoundProxy { args, inbound, outbound, admin, metrics, identity, destination, policy })
    }

    /// The bound inbound addresses (the first is the primary one).
    pub fn inbound_addrs(&self) -> Vec<SocketAddr> {
        addrs(&self.inbound)
    }

    pub fn outbound_addrs(&self) -> Vec<SocketAddr> {
        addrs(&self.outbound)
    }

    pub fn admin_addrs(&self) -> Vec<SocketAddr> {
        addrs(&self.admin)
    }

    /// Serves until `shutdown` completes or `POST /shutdown` arrives, then drains: the
    /// listeners close at once and open connections get the grace period to finish.
    pub async fn serve(
        self,
        log_level: Option<LogLevel>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let (inbound_addrs, outbound_addrs, admin_addrs) =
            (self.inbound_addrs(), self.outbound_addrs(), self.admin_addrs());
        let own_addrs: Vec<SocketAddr> = [&inbound_addrs, &outbound_addrs, &admin_addrs]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let BoundProxy { args, inbound, outbound, admin, metrics, identity, destination, policy } =
            self;
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let ready = Arc::new(AtomicBool::new(false));

        let discovery = match destination {
            Some(connector) => Some(discovery::Discovery::new(
                connector,
                discovery::DiscoveryConfig {
                    first_update_timeout: args.destination_first_update_timeout,
                    idle_timeout: args.destination_idle_timeout,
                    context_token: args.destination_context.clone(),
                    networks: args.destination_networks.clone(),
                    balance: balance::BalanceConfig {
                        default_rtt: args.balance_default_rtt,
                        decay: args.balance_decay,
                        max_failures: args.failure_accrual_consecutive_failures,
                        min_backoff: args.failure_accrual_min_backoff,
                        max_backoff: args.failure_accrual_max_backoff,
                    },
                },
                metrics.discovery.clone(),
            )?),
            None => None,
        };
        let policy_watched = policy.is_some() && args.policy_workload.is_some();
        let inbound_policy = Arc::new({
            let default = policy::Policy::new(
                args.inbound_default_policy,
                args.cluster_networks.clone(),
                policy::Probes {
                    routes: args.inbound_probe_routes.clone(),
                    grpc_ports: args.inbound_grpc_probe_ports.clone(),
                },
                metrics.authz.clone(),
            );
            match (policy, &args.policy_workload) {
                (Some(connector), Some(workload)) => {
                    let mut ports: Vec<u16> =
                        args.inbound_ports.ranges().iter().flat_map(|&(lo, hi)| lo..=hi).collect();
                    // The admin port's policy too (as linkerd2-proxy's admin server asks
                    // for it): who may scrape the proxy's metrics.
                    ports.extend(admin_addrs.iter().map(SocketAddr::port));
                    ports.sort_unstable();
                    ports.dedup();
                    let ports = policy::discover::start(
                        connector,
                        workload.clone(),
                        ports,
                        metrics.policy.clone(),
                    );
                    default.with_discovered(ports, args.policy_first_update_timeout)
                }
                _ => default,
            }
        });
        let access_log = match args.access_log {
            Some(format) => Some(
                http::access_log::AccessLog::start(format, metrics.access_log.clone())
                    .context("starting the access log writer")?,
            ),
            None => None,
        };
        let keepalive = |d: std::time::Duration| (!d.is_zero()).then_some(d);
        let side = |direction, orig_dst_override| {
            // Keepalive where the peer is across the network: the inbound side's clients
            // and the outbound side's upstreams (the app is on loopback).
            let connect = transport::ConnectOpts {
                timeout: args.connect_timeout,
                keepalive: match direction {
                    Direction::Outbound => keepalive(args.outbound_connect_keepalive),
                    Direction::Inbound => None,
                },
            };
            Arc::new(Side {
                direction,
                orig_dst_override,
                opaque_ports: args.opaque_ports.clone(),
                detect_timeout: args.detect_timeout,
                detect_silent_window: args.detect_silent_window,
                detect_max_bytes: args.detect_max_bytes as usize,
                connect,
                accept_keepalive: match direction {
                    Direction::Inbound => keepalive(args.inbound_accept_keepalive),
                    Direction::Outbound => None,
                },
                own_addrs: own_addrs.clone(),
                metrics: metrics.clone(),
                http: http::Http {
                    config: http::HttpConfig {
                        response_header_timeout: args.http_response_header_timeout,
                        stream_idle_timeout: args.http_stream_idle_timeout,
                        idle_timeout: args.http_idle_timeout,
                        max_header_bytes: args.http_max_header_bytes as usize,
                        h2_max_concurrent_streams: args.http2_max_concurrent_streams,
                        h2_max_pending_reset_streams: args.http2_max_pending_reset_streams,
                        h2_max_local_error_reset_streams: args.http2_max_local_error_reset_streams,
                        h2_upgrade: match direction {
                            Direction::Outbound => args.outbound_http2_upgrade_targets.clone(),
                            Direction::Inbound => http::TargetSet::default(),
                        },
                    },
                    pool: http::Pool::new(
                        direction,
                        metrics.clone(),
                        http::PoolConfig {
                            connect,
                            idle_timeout: args.http_pool_idle_timeout,
                            max_header_bytes: args.http_max_header_bytes as usize,
                        },
                        identity.clone(),
                    ),
                    in_flight: Arc::new(Semaphore::new(args.http_max_in_flight as usize)),
                    access_log: match direction {
                        Direction::Inbound => access_log.clone(),
                        Direction::Outbound => None,
                    },
                },
                discovery: match direction {
                    Direction::Outbound => discovery.clone(),
                    Direction::Inbound => None,
                },
                policy: (direction == Direction::Inbound).then(|| inbound_policy.clone()),
                identity: identity.clone(),
                stop: stop.clone(),
            })
        };
        let mut listeners = Vec::new();
        for (direction, orig_dst, bound) in [
            (Direction::Inbound, args.inbound_orig_dst_addr, inbound),
            (Direction::Outbound, args.outbound_orig_dst_addr, outbound),
        ] {
            // One connection limit per direction, shared by its addresses.
            let limit = Arc::new(Semaphore::new(args.max_connections as usize));
            let side = side(direction, orig_dst);
            for l in bound {
                let serve =
                    transport::serve(l, side.clone(), limit.clone(), stop.clone(), tracker.clone());
                listeners.push(tokio::spawn(serve));
            }
        }
        let admin_state = Arc::new(admin::Admin {
            metrics,
            ready: ready.clone(),
            shutdown: stop.clone(),
            log_level,
            identity: identity.clone(),
            // Only with a policy source: without one the admin port stays open to all.
            policy: policy_watched.then(|| inbound_policy.clone()),
        });
        let admin_listener =
            admin::AdminListener::new(args.detect_timeout, args.detect_max_bytes as usize);
        let admin_tasks: Vec<_> = admin
            .into_iter()
            .map(|l| tokio::spawn(admin::serve(l, admin_state.clone(), admin_listener.clone())))
            .collect();
        ready.store(true, Ordering::Release);
        info!(
            inbound = %join(&inbound_addrs), outbound = %join(&outbound_addrs), admin = %join(&admin_addrs),
            "serving"
        );

        tokio::select! {
            _ = shutdown => {},
            _ = stop.cancelled() => {},
        }
        ready.store(false, Ordering::Release);
        stop.cancel();
        for l in listeners {
            let _ = l.await;
        }
        tracker.close();
        info!(
            open = tracker.len(),
            grace_ms = args.shutdown_grace_period.as_millis() as u64,
            "draining: listeners closed, waiting for open connections"
        );
        if tokio::time::timeout(args.shutdown_grace_period, tracker.wait()).await.is_err() {
            warn!(open = tracker.len(), "grace period over; closing the remaining connections");
        }
        for t in admin_tasks {
            t.abort();
        }
        info!("shut down");
        Ok(())
    }
}

/// A whole proxy on loopback for unit tests over real sockets: every listener on an
/// ephemeral port, both sides' original destination fixed to `target`.
#[cfg(test)]
pub(crate) mod test_proxy {
    use std::net::SocketAddr;

    use clap::{Args, FromArgMatches};

    use super::{BoundProxy, RunArgs};

    /// The running proxy's inbound and admin addresses; it stops with the test's runtime.
    pub struct Running {
        pub inbound: SocketAddr,
        pub admin: SocketAddr,
    }

    pub fn start(target: SocketAddr, extra: &[&str]) -> Running {
        let target = target.to_string();
        let mut argv = vec![
            "weft-proxy",
            "--inbound-listen-addr=127.0.0.1:0",
            "--outbound-listen-addr=127.0.0.1:0",
            "--admin-listen-addr=127.0.0.1:0",
            "--inbound-orig-dst-addr",
            &target,
            "--outbound-orig-dst-addr",
            &target,
        ];
        argv.extend_from_slice(extra);
        let cmd = RunArgs::augment_args(clap::Command::new("weft-proxy"));
        let matches = cmd.try_get_matches_from(argv).expect("test proxy flags");
        let args = RunArgs::from_arg_matches(&matches).expect("test proxy flags");
        let proxy = BoundProxy::bind(args).expect("bind");
        let running = Running { inbound: proxy.inbound_addrs()[0], admin: proxy.admin_addrs()[0] };
        tokio::spawn(proxy.serve(None, std::future::pending()));
        running
    }
}
