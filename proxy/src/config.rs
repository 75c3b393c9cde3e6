//! The proxy's run-mode configuration: every setting is a flag with a `WEFT_PROXY_*` env var.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use clap::{Args, ValueEnum};
use weft_identity::{control::ControlAddr, workload::WorkloadConfig};

/// Linkerd's default list of ports whose protocols are opaque or server-speaks-first.
pub const DEFAULT_OPAQUE_PORTS: &str = "25,587,3306,4444,5432,6379,9300,11211";

/// `weft-proxy` (run mode).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Where the inbound proxy listens (traffic redirected to this pod); comma-separated.
    /// IPv6 addresses are skipped with a warning on a host without IPv6.
    #[arg(
        long,
        env = "WEFT_PROXY_INBOUND_LISTEN_ADDR",
        value_delimiter = ',',
        default_value = "0.0.0.0:4143,[::]:4143"
    )]
    pub inbound_listen_addr: Vec<SocketAddr>,

    /// Where the outbound proxy listens (traffic this pod's apps send out); comma-separated.
    #[arg(
        long,
        env = "WEFT_PROXY_OUTBOUND_LISTEN_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:4140,[::1]:4140"
    )]
    pub outbound_listen_addr: Vec<SocketAddr>,

    /// Where the admin server (metrics, probes, shutdown, log level) listens; comma-separated.
    #[arg(
        long,
        env = "WEFT_PROXY_ADMIN_LISTEN_ADDR",
        value_delimiter = ',',
        default_value = "0.0.0.0:4191,[::]:4191"
    )]
    pub admin_listen_addr: Vec<SocketAddr>,

    /// Fixed target of every inbound connection, instead of reading SO_ORIGINAL_DST
    /// (for use without iptables: VMs, the demo, tests).
    #[arg(long, env = "WEFT_PROXY_INBOUND_ORIG_DST_ADDR")]
    pub inbound_orig_dst_addr: Option<SocketAddr>,

    /// Fixed target of every outbound connection, instead of reading SO_ORIGINAL_DST.
    #[arg(long, env = "WEFT_PROXY_OUTBOUND_ORIG_DST_ADDR")]
    pub outbound_orig_dst_addr: Option<SocketAddr>,

    /// Target ports that skip protocol detection and are forwarded as opaque TCP
    /// (comma-separated ports and ranges, e.g. `25,3306,8000-8100`; empty for none).
    #[arg(long, env = "WEFT_PROXY_OPAQUE_PORTS", default_value = DEFAULT_OPAQUE_PORTS)]
    pub opaque_ports: PortSet,

    /// Who may reach this pod's app through the inbound proxy when nothing more specific
    /// says so (Linkerd's default inbound policy): `all-unauthenticated`,
    /// `all-authenticated` (meshed clients only), `cluster-unauthenticated` (clients from
    /// the cluster networks), `cluster-authenticated` (both), `audit` (everyone, each
    /// connection logged) or `deny`. HTTP requests that are refused get 403; other
    /// connections are closed. The pod's probe routes are always allowed.
    #[arg(long, env = "WEFT_PROXY_INBOUND_DEFAULT_POLICY", default_value = "all-unauthenticated")]
    pub inbound_default_policy: crate::policy::DefaultPolicy,

    /// The networks the `cluster-*` policies trust as the cluster's (comma-separated CIDRs).
    #[arg(long, env = "WEFT_PROXY_CLUSTER_NETWORKS", default_value = crate::policy::DEFAULT_CLUSTER_NETWORKS)]
    pub cluster_networks: crate::init::Subnets,

    /// The pod's HTTP probes (`PORT:PATH`, comma-separated; the injector fills it in from
    /// the pod spec): `GET` on them is allowed from anywhere whatever the policy, so that
    /// the kubelet can still probe a locked-down pod.
    #[arg(long, env = "WEFT_PROXY_INBOUND_PROBE_ROUTES", default_value = "")]
    pub inbound_probe_routes: crate::policy::ProbeRoutes,

    /// Ports of the pod's gRPC probes (the injector fills them in): the kubelet's
    /// `POST /grpc.health.v1.Health/Check` on them is allowed from anywhere, like the probe
    /// routes.
    #[arg(long, env = "WEFT_PROXY_INBOUND_GRPC_PROBE_PORTS", default_value = "")]
    pub inbound_grpc_probe_ports: PortSet,

    /// The policy service (Linkerd's `InboundServerPolicies` API; `weft destination`
    /// serves it), `host:port`, resolved again at every connect. With it the ports in
    /// `WEFT_PROXY_INBOUND_PORTS` take their policies (Servers and their authorizations)
    /// from the control plane; other ports keep the default policy.
    #[arg(long, env = "WEFT_PROXY_POLICY_ADDR")]
    pub policy_addr: Option<ControlAddr>,

    /// The identity the policy service's certificate must prove (as for the destination
    /// service; required with an identity unless `WEFT_PROXY_POLICY_ADDR` is loopback).
    #[arg(long, env = "WEFT_PROXY_POLICY_SVC_NAME")]
    pub policy_svc_name: Option<String>,

    /// This pod, as the policy service knows it: `NAMESPACE:POD` (the injector sets it).
    #[arg(long, env = "WEFT_PROXY_POLICY_WORKLOAD")]
    pub policy_workload: Option<String>,

    /// The app's ports whose policies are watched (comma-separated; the injector lists the
    /// pod's container ports). At most 256.
    #[arg(long, env = "WEFT_PROXY_INBOUND_PORTS", default_value = "")]
    pub inbound_ports: PortSet,

    /// How long a connection to a watched port waits for the port's first policy; past
    /// it the port refuses clients (probes excepted) until the policy comes.
    #[arg(long, env = "WEFT_PROXY_POLICY_FIRST_UPDATE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub policy_first_update_timeout: Duration,

    /// Longest time protocol detection may wait for the client's first bytes before
    /// the connection is forwarded as opaque TCP (or closed when nobody has spoken). On
    /// the inbound side, a port whose policy gives a detect timeout takes the policy's.
    #[arg(long, env = "WEFT_PROXY_DETECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub detect_timeout: Duration,

    /// When a client stays silent this long, the upstream connection is opened
    /// speculatively so that a server that speaks first is not stalled.
    #[arg(long, env = "WEFT_PROXY_DETECT_SILENT_WINDOW", default_value = "300ms", value_parser = parse_duration)]
    pub detect_silent_window: Duration,

    /// Largest prefix protocol detection buffers before deciding (bytes).
    #[arg(long, env = "WEFT_PROXY_DETECT_MAX_BYTES", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(64..=65536))]
    pub detect_max_bytes: u32,

    /// TCP keepalive of connections the inbound side accepts (from peers across the
    /// network): probes after this long idle, the peer dropped after 4× without an answer;
    /// `0s` turns it off.
    #[arg(long, env = "WEFT_PROXY_INBOUND_ACCEPT_KEEPALIVE", default_value = "10s", value_parser = parse_duration)]
    pub inbound_accept_keepalive: Duration,

    /// TCP keepalive of connections the outbound side opens (to peers across the network),
    /// as for the inbound side's accepted ones; `0s` turns it off.
    #[arg(long, env = "WEFT_PROXY_OUTBOUND_CONNECT_KEEPALIVE", default_value = "10s", value_parser = parse_duration)]
    pub outbound_connect_keepalive: Duration,

    /// Timeout of a TCP connect to an upstream.
    #[arg(long, env = "WEFT_PROXY_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Most connections each of the inbound and outbound listeners holds at once;
    /// beyond it new connections are closed at once and counted.
    #[arg(long, env = "WEFT_PROXY_MAX_CONNECTIONS", default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// On SIGTERM/SIGINT or `POST /shutdown`: how long open connections may take to finish.
    #[arg(long, env = "WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace_period: Duration,

    /// Longest wait for an upstream's HTTP response headers before answering 504
    /// (`0s`: no limit).
    #[arg(long, env = "WEFT_PROXY_HTTP_RESPONSE_HEADER_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub http_response_header_timeout: Duration,

    /// Longest wait for the next part of an upstream's response body once its headers
    /// came: then the response is cut (HTTP/2 clients get a reset stream, HTTP/1 clients a
    /// closed connection) and counted as `error="stream_idle_timeout"`; likewise for the
    /// next part of a client's request body (the upstream sees the request fail). `0s` (the default,
    /// as Linkerd): no limit — a gRPC watch or an event stream may rightly be silent for
    /// hours, and a mesh that cuts them by default (Envoy's 5 min) breaks working apps.
    #[arg(long, env = "WEFT_PROXY_HTTP_STREAM_IDLE_TIMEOUT", default_value = "0s", value_parser = parse_duration)]
    pub http_stream_idle_timeout: Duration,

    /// A client's HTTP connection with no request in flight this long is closed: HTTP/2
    /// gracefully (GOAWAY), HTTP/1 between requests (for HTTP/1 it also bounds the wait for
    /// a request's headers). Not `0s`: an idle client always gives its slot back.
    #[arg(long, env = "WEFT_PROXY_HTTP_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_nonzero_duration)]
    pub http_idle_timeout: Duration,

    /// How long an idle pooled upstream connection is kept: HTTP/1 between requests,
    /// HTTP/2 with no stream in flight.
    #[arg(long, env = "WEFT_PROXY_HTTP_POOL_IDLE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub http_pool_idle_timeout: Duration,

    /// Largest request or response header block (bytes): HTTP/1 read buffer, HTTP/2
    /// header list; bigger ones get 431 (HTTP/1) or a stream reset (HTTP/2).
    #[arg(long, env = "WEFT_PROXY_HTTP_MAX_HEADER_BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(8192..=16_777_216))]
    pub http_max_header_bytes: u32,

    /// Most concurrent streams a client may open on one HTTP/2 connection.
    #[arg(long, env = "WEFT_PROXY_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_concurrent_streams: u32,

    /// Most streams a client may reset before the proxy accepts them (rapid-reset
    /// protection, CVE-2023-44487); past it the connection is closed with GOAWAY.
    #[arg(long, env = "WEFT_PROXY_HTTP2_MAX_PENDING_RESET_STREAMS", default_value_t = 20)]
    pub http2_max_pending_reset_streams: usize,

    /// Most streams the proxy resets for a client's protocol errors before closing the
    /// connection (the MadeYouReset family of floods).
    #[arg(long, env = "WEFT_PROXY_HTTP2_MAX_LOCAL_ERROR_RESET_STREAMS", default_value_t = 1024)]
    pub http2_max_local_error_reset_streams: usize,

    /// Most HTTP requests in flight per direction; past it requests are shed with 503.
    #[arg(long, env = "WEFT_PROXY_HTTP_MAX_IN_FLIGHT", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_max_in_flight: u32,

    /// Outbound targets whose peer is a Weft or Linkerd proxy: HTTP/1 to them travels as
    /// HTTP/2 (`l5d-orig-proto`). `*`, or comma-separated `ip:port`s and ports.
    #[arg(long, env = "WEFT_PROXY_OUTBOUND_HTTP2_UPGRADE_TARGETS", default_value = "")]
    pub outbound_http2_upgrade_targets: crate::http::TargetSet,

    /// The destination service (discovery), `host:port`: an IP literal or a DNS name
    /// (e.g. `weft-destination.weft.svc.cluster.local:8086`), resolved again at every
    /// connect. Without it outbound traffic goes to the original destination as it is.
    #[arg(long, env = "WEFT_PROXY_DESTINATION_ADDR")]
    pub destination_addr: Option<ControlAddr>,

    /// The identity the destination service's certificate must prove. With it and an
    /// identity, discovery runs over TLS 1.3 (mTLS: this proxy's certificate goes along);
    /// without an identity it stays plaintext. With an identity it is required unless
    /// `WEFT_PROXY_DESTINATION_ADDR` is a loopback IP (127.0.0.0/8, `::1`; not a name):
    /// plaintext discovery never leaves the host.
    #[arg(long, env = "WEFT_PROXY_DESTINATION_SVC_NAME")]
    pub destination_svc_name: Option<String>,

    /// The networks whose addresses are looked up in the destination service
    /// (comma-separated CIDRs; empty: every address). Connections to other addresses go to
    /// their original destination without waiting for a lookup, as Linkerd's
    /// `..._DESTINATION_PROFILE_NETWORKS` do; the injector sets the cluster's networks.
    #[arg(long, env = "WEFT_PROXY_DESTINATION_NETWORKS", default_value = "")]
    pub destination_networks: crate::init::Subnets,

    /// Sent with every lookup (Linkerd's context token: namespace, node, ...).
    #[arg(long, env = "WEFT_PROXY_DESTINATION_CONTEXT", default_value = "")]
    pub destination_context: String,

    /// How long a connection to a target seen for the first time waits for discovery
    /// before going to the original destination.
    #[arg(long, env = "WEFT_PROXY_DESTINATION_FIRST_UPDATE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub destination_first_update_timeout: Duration,

    /// A target unused this long is forgotten (its discovery streams closed).
    #[arg(long, env = "WEFT_PROXY_DESTINATION_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub destination_idle_timeout: Duration,

    /// Latency assumed for a new endpoint (peak-EWMA), and how fast observations fade.
    #[arg(long, env = "WEFT_PROXY_BALANCE_DEFAULT_RTT", default_value = "30ms", value_parser = parse_duration)]
    pub balance_default_rtt: Duration,

    #[arg(long, env = "WEFT_PROXY_BALANCE_DECAY", default_value = "10s", value_parser = parse_duration)]
    pub balance_decay: Duration,

    /// Consecutive failures that take an endpoint out of the balancer.
    #[arg(long, env = "WEFT_PROXY_FAILURE_ACCRUAL_CONSECUTIVE_FAILURES", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    pub failure_accrual_consecutive_failures: u32,

    /// First and longest backoff of an endpoint taken out (doubling, jittered).
    #[arg(long, env = "WEFT_PROXY_FAILURE_ACCRUAL_MIN_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    pub failure_accrual_min_backoff: Duration,

    #[arg(long, env = "WEFT_PROXY_FAILURE_ACCRUAL_MAX_BACKOFF", default_value = "60s", value_parser = parse_duration)]
    pub failure_accrual_max_backoff: Duration,

    /// This proxy's identity name (`<sa>.<ns>.serviceaccount.identity.<cp-ns>.<trust-domain>`).
    /// With it, the proxy obtains a certificate and meshed traffic is mTLS; the other
    /// `--identity-*` settings are then required.
    #[arg(long, env = "WEFT_PROXY_IDENTITY_NAME")]
    pub identity_name: Option<String>,

    /// The identity service, `host:port`: an IP literal or a DNS name, resolved again at
    /// every connect.
    #[arg(long, env = "WEFT_PROXY_IDENTITY_ADDR")]
    pub identity_addr: Option<ControlAddr>,

    /// The identity the identity service's certificate must prove.
    #[arg(long, env = "WEFT_PROXY_IDENTITY_SVC_NAME")]
    pub identity_svc_name: Option<String>,

    /// The token that proves this proxy's identity (a projected service-account token).
    #[arg(long, env = "WEFT_PROXY_IDENTITY_TOKEN_FILE")]
    pub identity_token_file: Option<std::path::PathBuf>,

    /// PEM trust anchors; re-read when the file changes.
    #[arg(long, env = "WEFT_PROXY_IDENTITY_TRUST_ANCHORS_FILE")]
    pub identity_trust_anchors_file: Option<std::path::PathBuf>,

    /// Resolver configuration for control-plane names (nameservers, `search` domains,
    /// `options ndots`); names are resolved in the proxy, not through the C library.
    #[arg(long, env = "WEFT_PROXY_DNS_RESOLV_CONF", default_value = weft_identity::control::RESOLV_CONF)]
    pub dns_resolv_conf: std::path::PathBuf,

    /// Longest wait for a control-plane name's addresses; a failure is logged, counted
    /// (`control_plane_resolve_errors_total`) and retried with backoff.
    #[arg(long, env = "WEFT_PROXY_DNS_RESOLVE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub dns_resolve_timeout: Duration,

    /// Most distinct values of an unbounded metric label (such as `target_addr`) kept
    /// apart; the rest are folded into the value `overflow`.
    #[arg(long, env = "WEFT_PROXY_METRICS_MAX_LABEL_VALUES", default_value_t = 5_000)]
    pub metrics_max_label_values: usize,

    /// How long the series of a connection's or a route's label set stay after their last
    /// use: then they leave `/metrics` and their label values leave the caps. Series of
    /// open connections and of routes in use stay however long they are idle.
    #[arg(long, env = "WEFT_PROXY_METRICS_RETAIN_IDLE", default_value = "10m", value_parser = parse_nonzero_duration)]
    pub metrics_retain_idle: Duration,

    /// Tracing filter (e.g. `info`, `warn,weft_proxy=debug`); settable at runtime on the admin port.
    #[arg(long, env = "WEFT_PROXY_LOG", default_value = "warn,weft_proxy=info")]
    pub log: String,

    /// Log output format.
    #[arg(long, env = "WEFT_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// HTTP access log of inbound requests on stdout, one line each: `apache` (Common Log
    /// Format) or `json` (Linkerd's fields). Off when unset.
    #[arg(long, env = "WEFT_PROXY_ACCESS_LOG", value_enum)]
    pub access_log: Option<crate::http::access_log::Format>,

    /// Worker threads (0: one per available CPU). One core runs a single-threaded runtime;
    /// more than the CPUs available are not started (the injector derives this from the
    /// pod's CPU limit, which may exceed the node's).
    #[arg(long, env = "WEFT_PROXY_CORES", default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub cores: u16,
}

impl RunArgs {
    /// Every env var the proxy reads its settings from.
    pub fn env_names() -> Vec<String> {
        use clap::Args as _;
        let cmd = RunArgs::augment_args(clap::Command::new("weft-proxy"));
        cmd.get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect()
    }

    /// Settings that contradict each other, so that the proxy stops at start with a clear
    /// error rather than misbehave later.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.failure_accrual_min_backoff > self.failure_accrual_max_backoff {
            anyhow::bail!(
                "WEFT_PROXY_FAILURE_ACCRUAL_MIN_BACKOFF ({:?}) is longer than WEFT_PROXY_FAILURE_ACCRUAL_MAX_BACKOFF ({:?})",
                self.failure_accrual_min_backoff,
                self.failure_accrual_max_backoff
            );
        }
        self.check_policy()?;
        self.check_control_plane_tls()
    }

    /// With identity on, discovery and policy traffic leaves the host only over TLS: a
    /// destination or policy address that is not loopback needs the service's name, so that
    /// a misconfigured pod stops rather than talk to its control plane in plaintext.
    fn check_control_plane_tls(&self) -> anyhow::Result<()> {
        if self.identity_name.is_none() {
            return Ok(());
        }
        let services = [
            (&self.destination_addr, &self.destination_svc_name, "DESTINATION", "destination"),
            (&self.policy_addr, &self.policy_svc_name, "POLICY", "policy"),
        ];
        for (addr, svc, var, flag) in services {
            if let Some(addr) = addr
                && svc.is_none()
                && !addr.is_loopback()
            {
                anyhow::bail!(
                    "identity is on but WEFT_PROXY_{var}_SVC_NAME (--{flag}-svc-name) is not set, and WEFT_PROXY_{var}_ADDR {addr} is not a loopback address: set it to the {flag} service's identity name (e.g. weft-destination.weft.serviceaccount.identity.weft.cluster.local) so that the connection is TLS; plaintext control-plane connections are for loopback (127.0.0.0/8, ::1) only"
                );
            }
        }
        Ok(())
    }

    /// The inbound policy settings that contradict each other or the rest.
    fn check_policy(&self) -> anyhow::Result<()> {
        use crate::policy::DefaultPolicy::{ClusterAuthenticated, ClusterUnauthenticated};
        let policy = self.inbound_default_policy;
        if matches!(policy, ClusterAuthenticated | ClusterUnauthenticated)
            && self.cluster_networks.is_empty()
        {
            anyhow::bail!(
                "the inbound policy {policy} needs the cluster networks (WEFT_PROXY_CLUSTER_NETWORKS), which are empty"
            );
        }
        match (&self.policy_addr, &self.policy_workload, self.inbound_ports.is_empty()) {
            (Some(_), None, _) => anyhow::bail!(
                "WEFT_PROXY_POLICY_ADDR is set but WEFT_PROXY_POLICY_WORKLOAD (NAMESPACE:POD) is not: the policy service cannot tell which pod asks"
            ),
            (None, _, false) => anyhow::bail!(
                "WEFT_PROXY_INBOUND_PORTS lists ports to watch, but WEFT_PROXY_POLICY_ADDR (the policy service) is not set"
            ),
            _ => {}
        }
        if let Some(w) = &self.policy_workload
            && !w.split_once(':').is_some_and(|(ns, pod)| !ns.is_empty() && !pod.is_empty())
        {
            anyhow::bail!("WEFT_PROXY_POLICY_WORKLOAD {w:?} is not NAMESPACE:POD");
        }
        let ports = self
            .inbound_ports
            .ranges()
            .iter()
            .map(|(lo, hi)| usize::from(hi - lo) + 1)
            .sum::<usize>();
        if ports > crate::policy::discover::MAX_PORTS {
            anyhow::bail!(
                "WEFT_PROXY_INBOUND_PORTS lists {ports} ports; at most {} are watched (list the pod's container ports)",
                crate::policy::discover::MAX_PORTS
            );
        }
        if policy.needs_identity() && self.identity_name.is_none() {
            anyhow::bail!(
                "the inbound policy {policy} lets in only meshed (mTLS) clients, but identity is off: set WEFT_PROXY_IDENTITY_*, or choose another policy"
            );
        }
        Ok(())
    }

    /// The identity settings: all of them, or none (identity off). The resolver is the
    /// caller's to add.
    pub fn identity(&self) -> anyhow::Result<Option<WorkloadConfig>> {
        match (
            &self.identity_name,
            &self.identity_addr,
            &self.identity_svc_name,
            &self.identity_token_file,
            &self.identity_trust_anchors_file,
        ) {
            (None, None, None, None, None) => Ok(None),
            (Some(name), Some(addr), Some(svc), Some(token), Some(anchors)) => {
                Ok(Some(WorkloadConfig {
                    addr: addr.to_string(),
                    svc_name: svc.clone(),
                    name: name.clone(),
                    token_file: token.clone(),
                    trust_anchors_file: anchors.clone(),
                    resolver: None,
                }))
            }
            _ => anyhow::bail!(
                "identity needs all of WEFT_PROXY_IDENTITY_NAME, _ADDR, _SVC_NAME, _TOKEN_FILE and _TRUST_ANCHORS_FILE (or none of them)"
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// A set of TCP ports given as a list of ports and inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet {
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }

    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortSetError {
    #[error("{0:?} is not a port: expected a number from 1 to 65535")]
    BadPort(String),
    #[error("port range {0:?} is backwards: its start is above its end")]
    Backwards(String),
}

impl FromStr for PortSet {
    type Err = PortSetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        fn port(p: &str) -> Result<u16, PortSetError> {
            match p.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(PortSetError::BadPort(p.trim().to_string())),
                Ok(n) => Ok(n),
            }
        }
        let mut ranges = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let range = match item.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (port(lo)?, port(hi)?);
                    if lo > hi {
                        return Err(PortSetError::Backwards(item.to_string()));
                    }
                    (lo, hi)
                }
                None => {
                    let p = port(item)?;
                    (p, p)
                }
            };
            ranges.push(range);
        }
        Ok(PortSet { ranges })
    }
}

impl std::fmt::Display for PortSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// Parses durations such as `250ms`, `10s`, `2m`, `1h`; a bare number is seconds.
/// The longest duration a setting takes: beyond it, deadlines computed from it could
/// overflow the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A duration that must not be zero (a limit that cannot be turned off).
pub fn parse_nonzero_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?} is zero; this limit cannot be turned off")),
        d => Ok(d),
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: expected e.g. 500ms, 10s, 2m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => {
            return Err(format!(
                "{s:?} is not a duration: unknown unit {unit:?} (use ms, s, m or h)"
            ));
        }
    };
    if d > MAX_DURATION {
        return Err(format!("{s:?} is longer than a year, the longest duration a setting takes"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_sets_parse_ports_and_ranges() {
        let p: PortSet = "25, 3306,8000-8100".parse().expect("valid");
        assert!(p.contains(25) && p.contains(3306) && p.contains(8000) && p.contains(8100));
        assert!(!p.contains(24) && !p.contains(8101));
        assert_eq!(p.to_string(), "25,3306,8000-8100");
        assert!("".parse::<PortSet>().expect("empty is valid").is_empty());
        let default: PortSet = DEFAULT_OPAQUE_PORTS.parse().expect("default");
        assert!(default.contains(5432) && !default.contains(80));
    }

    #[test]
    fn port_sets_reject_bad_input() {
        assert_eq!("0".parse::<PortSet>(), Err(PortSetError::BadPort("0".into())));
        assert_eq!("70000".parse::<PortSet>(), Err(PortSetError::BadPort("70000".into())));
        assert_eq!("http".parse::<PortSet>(), Err(PortSetError::BadPort("http".into())));
        assert_eq!("9-1".parse::<PortSet>(), Err(PortSetError::Backwards("9-1".into())));
        assert!("1-".parse::<PortSet>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("10d").is_err());
        assert_eq!(parse_duration("8784h"), Ok(MAX_DURATION));
        let long = parse_duration("8785h").expect_err("over a year");
        assert!(long.contains("longer than a year"), "{long}");
        assert!(parse_duration("18446744073709551615s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn retain_idle(flag: &[&str]) -> Result<Duration, String> {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("weft-proxy").chain(flag.iter().copied()))
            .map(|cli| cli.run.metrics_retain_idle)
            .map_err(|e| e.to_string())
    }

    /// `check()` of the proxy's settings with identity on and `flags`.
    fn check_with_identity(flags: &[&str]) -> Result<(), String> {
        use clap::Parser;
        let identity = [
            "--identity-name=web.prod.serviceaccount.identity.weft.cluster.local",
            "--identity-addr=weft-identity.weft.svc.cluster.local:8080",
            "--identity-svc-name=weft-identity.weft.serviceaccount.identity.weft.cluster.local",
            "--identity-token-file=/var/run/secrets/tokens/weft-identity-token",
            "--identity-trust-anchors-file=/var/run/weft/identity/trust-roots/ca-bundle.crt",
        ];
        let argv = std::iter::once("weft-proxy").chain(identity).chain(flags.iter().copied());
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        cli.run.identity().map_err(|e| e.to_string())?;
        cli.run.check().map_err(|e| e.to_string())
    }

    #[test]
    fn with_identity_only_loopback_control_plane_addresses_may_go_without_a_name() {
        const SVC: &str = "weft-destination.weft.serviceaccount.identity.weft.cluster.local";
        // A name is never loopback, `localhost` included (resolv.conf and /etc/hosts decide).
        let off_host =
            ["10.0.0.1:8086", "[fd00::1]:8086", "weft-destination.weft.svc:8086", "localhost:8086"];
        for addr in off_host {
            let err = check_with_identity(&["--destination-addr", addr]).expect_err(addr);
            assert!(
                err.contains("WEFT_PROXY_DESTINATION_SVC_NAME (--destination-svc-name) is not set")
                    && err.contains(addr),
                "{err}"
            );
            let policy = ["--policy-addr", addr, "--policy-workload=prod:web-1"];
            let err = check_with_identity(&policy).expect_err(addr);
            assert!(
                err.contains("WEFT_PROXY_POLICY_SVC_NAME (--policy-svc-name) is not set"),
                "{err}"
            );
            let named = ["--destination-addr", addr, "--destination-svc-name", SVC];
            assert_eq!(check_with_identity(&named), Ok(()), "{addr}");
            let named = [&policy[..], &["--policy-svc-name", SVC]].concat();
            assert_eq!(check_with_identity(&named), Ok(()), "{addr}");
        }
        // Loopback keeps working without a name (plaintext, with a warning at start).
        for addr in ["127.0.0.1:8086", "127.1.2.3:8086", "[::1]:8086"] {
            assert_eq!(check_with_identity(&["--destination-addr", addr]), Ok(()), "{addr}");
            let policy = ["--policy-addr", addr, "--policy-workload=prod:web-1"];
            assert_eq!(check_with_identity(&policy), Ok(()), "{addr}");
        }
        // Without identity there is no TLS to ask for.
        use clap::Parser;
        let cli = Cli::try_parse_from(["weft-proxy", "--destination-addr", "10.0.0.1:8086"])
            .expect("flags");
        assert!(cli.run.check().is_ok());
    }

    #[test]
    fn metrics_retain_idle_is_ten_minutes_by_default_nonzero_and_at_most_a_year() {
        assert_eq!(retain_idle(&[]), Ok(Duration::from_secs(600)));
        assert_eq!(retain_idle(&["--metrics-retain-idle=90s"]), Ok(Duration::from_secs(90)));
        let zero = retain_idle(&["--metrics-retain-idle=0s"]).expect_err("zero");
        assert!(zero.contains("cannot be turned off"), "{zero}");
        let long = retain_idle(&["--metrics-retain-idle=8785h"]).expect_err("over a year");
        assert!(long.contains("longer than a year"), "{long}");
    }
}
