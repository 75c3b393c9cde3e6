//! `weft-proxy`: the Weft sidecar. This crate owns the data plane — transparent
//! interception (`init`), protocol detection, forwarding, metrics and the admin server.
//! It has no Kubernetes client.

pub mod admin;
pub mod config;
pub mod detect;
pub mod forward;
pub mod init;
pub mod logging;
pub mod metrics;
pub mod orig_dst;
pub mod transport;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{info, warn};

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
    inbound: TcpListener,
    outbound: TcpListener,
    admin: TcpListener,
    metrics: Arc<Metrics>,
}

/// Accept queue of each listener (the kernel caps it at `net.core.somaxconn`). The
/// standard library's 128 drops SYNs under a burst of new connections, which clients
/// see as a one-second connect stall.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listener with a deep accept queue; `[::]` also accepts IPv4.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

impl BoundProxy {
    pub fn bind(args: RunArgs) -> anyhow::Result<Self> {
        let bind = |addr: SocketAddr, what: &'static str| {
            listen(addr).with_context(|| format!("cannot listen on {addr} ({what} listener)"))
        };
        let inbound = bind(args.inbound_listen_addr, "inbound")?;
        let outbound = bind(args.outbound_listen_addr, "outbound")?;
        let admin = bind(args.admin_listen_addr, "admin")?;
        let metrics = Metrics::new(args.metrics_max_label_values);
        Ok(BoundProxy {
            args,
            inbound,
            outbound,
            admin,
            metrics,
        })
    }

    pub fn inbound_addr(&self) -> SocketAddr {
        self.inbound
            .local_addr()
            .unwrap_or(self.args.inbound_listen_addr)
    }

    pub fn outbound_addr(&self) -> SocketAddr {
        self.outbound
            .local_addr()
            .unwrap_or(self.args.outbound_listen_addr)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.args.admin_listen_addr)
    }

    /// Serves until `shutdown` completes or `POST /shutdown` arrives, then drains: the
    /// listeners close at once and open connections get the grace period to finish.
    pub async fn serve(
        self,
        log_level: Option<LogLevel>,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let own_addrs = vec![self.inbound_addr(), self.outbound_addr(), self.admin_addr()];
        let BoundProxy {
            args,
            inbound,
            outbound,
            admin,
            metrics,
        } = self;
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let ready = Arc::new(AtomicBool::new(false));

        let side = |direction, orig_dst_override| {
            Arc::new(Side {
                direction,
                orig_dst_override,
                opaque_ports: args.opaque_ports.clone(),
                detect_timeout: args.detect_timeout,
                detect_silent_window: args.detect_silent_window,
                detect_max_bytes: args.detect_max_bytes as usize,
                connect_timeout: args.connect_timeout,
                own_addrs: own_addrs.clone(),
                metrics: metrics.clone(),
            })
        };
        let max = args.max_connections as usize;
        let inbound_side = side(Direction::Inbound, args.inbound_orig_dst_addr);
        let outbound_side = side(Direction::Outbound, args.outbound_orig_dst_addr);
        let listeners = [
            tokio::spawn(transport::serve(
                inbound,
                inbound_side,
                max,
                stop.clone(),
                tracker.clone(),
            )),
            tokio::spawn(transport::serve(
                outbound,
                outbound_side,
                max,
                stop.clone(),
                tracker.clone(),
            )),
        ];
        let admin_state = admin::Admin {
            metrics,
            ready: ready.clone(),
            shutdown: stop.clone(),
            log_level,
        };
        let admin_task = tokio::spawn(admin::serve(admin, admin_state));
        ready.store(true, Ordering::Release);
        info!(
            inbound = %own_addrs[0], outbound = %own_addrs[1], admin = %own_addrs[2],
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
        if tokio::time::timeout(args.shutdown_grace_period, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                open = tracker.len(),
                "grace period over; closing the remaining connections"
            );
        }
        admin_task.abort();
        info!("shut down");
        Ok(())
    }
}
