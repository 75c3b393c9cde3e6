//! `weft destination`: the discovery server proxies ask for endpoints, identities and
//! profiles — over TLS when it is given an identity of its own. Flags (each also an env var
//! `WEFT_DESTINATION_*`) are parsed and checked here; the service itself is the
//! `weft-destination` crate.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use tracing::info;
use weft_destination::{
    Config, ConnectionLimits, IndexConfig, LeaseConfig, PolicyConfig, Source,
    policy::model::{DEFAULT_CLUSTER_NETWORKS, DefaultPolicy, parse_networks},
};
use weft_identity::{
    control::{self, ControlAddr, Resolver},
    incoming,
    workload::WorkloadConfig,
};
use weft_proxy::config::{LogFormat, parse_duration};

#[derive(Debug, Clone, Args)]
pub struct DestinationArgs {
    /// Address of the gRPC server (io.linkerd.proxy.destination.Destination).
    #[arg(long, env = "WEFT_DESTINATION_LISTEN_ADDR", default_value = "0.0.0.0:8086")]
    listen_addr: SocketAddr,
    /// Address of the admin server (/metrics, /ready, /live).
    #[arg(long, env = "WEFT_DESTINATION_ADMIN_ADDR", default_value = "0.0.0.0:9996")]
    admin_addr: SocketAddr,
    /// Where endpoints come from: the Kubernetes API (KUBECONFIG or in-cluster) or a YAML file.
    #[arg(long, env = "WEFT_DESTINATION_SOURCE", value_enum, default_value_t = SourceKind::Kubernetes)]
    source: SourceKind,
    /// The YAML file of the static source (format: the weft-destination `static_source` docs).
    #[arg(long, env = "WEFT_DESTINATION_STATIC_FILE")]
    static_file: Option<PathBuf>,
    /// The cluster's DNS domain: services are `name.ns.svc.<cluster-domain>`.
    #[arg(long, env = "WEFT_DESTINATION_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// Namespace of the control plane (part of every identity name).
    #[arg(long, env = "WEFT_DESTINATION_CONTROL_PLANE_NAMESPACE", default_value = "weft")]
    control_plane_namespace: String,
    /// Trust domain of the identities.
    #[arg(long, env = "WEFT_DESTINATION_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// The inbound port of meshed pods' proxies (opaque transport goes there).
    #[arg(long, env = "WEFT_DESTINATION_PROXY_INBOUND_PORT", default_value_t = 4143)]
    proxy_inbound_port: u16,
    /// Ports that are opaque unless a pod, service or namespace annotation
    /// (`config.weft.dev/opaque-ports`) says otherwise: keep it equal to the proxies'
    /// `WEFT_PROXY_OPAQUE_PORTS` default (comma-separated ports and ranges; empty for none).
    #[arg(long, env = "WEFT_DESTINATION_DEFAULT_OPAQUE_PORTS", default_value = weft_destination::index::DEFAULT_OPAQUE_PORTS)]
    default_opaque_ports: String,
    /// The inbound policy of pod ports that no Server selects, when neither the pod nor its
    /// namespace says (`config.weft.dev/default-inbound-policy`): all-unauthenticated,
    /// all-authenticated, cluster-unauthenticated, cluster-authenticated, audit or deny.
    #[arg(long, env = "WEFT_DESTINATION_DEFAULT_INBOUND_POLICY", default_value = "all-unauthenticated", value_parser = parse_policy)]
    default_inbound_policy: DefaultPolicy,
    /// The cluster's pod and node networks (comma-separated CIDRs): where `cluster-*`
    /// policies admit clients from. Keep it equal to the injector's.
    #[arg(long, env = "WEFT_DESTINATION_CLUSTER_NETWORKS", default_value = DEFAULT_CLUSTER_NETWORKS)]
    cluster_networks: String,
    /// This service's own identity name (e.g.
    /// `weft-destination.weft.serviceaccount.identity.weft.cluster.local`, what proxies'
    /// `WEFT_PROXY_DESTINATION_SVC_NAME` says). With it the service obtains a certificate
    /// from the identity service and serves gRPC over TLS 1.3 only (client certificates
    /// asked for and verified, not required); the other `--identity-*` settings are then
    /// required. Without them it serves plaintext.
    #[arg(long, env = "WEFT_DESTINATION_IDENTITY_NAME")]
    identity_name: Option<String>,
    /// The identity service, `host:port` (an IP literal or a DNS name).
    #[arg(long, env = "WEFT_DESTINATION_IDENTITY_ADDR")]
    identity_addr: Option<ControlAddr>,
    /// The identity the identity service's certificate must prove.
    #[arg(long, env = "WEFT_DESTINATION_IDENTITY_SVC_NAME")]
    identity_svc_name: Option<String>,
    /// The token that proves this service's identity (a projected service-account token).
    #[arg(long, env = "WEFT_DESTINATION_IDENTITY_TOKEN_FILE")]
    identity_token_file: Option<PathBuf>,
    /// PEM trust anchors; re-read when the file changes.
    #[arg(long, env = "WEFT_DESTINATION_IDENTITY_TRUST_ANCHORS_FILE")]
    identity_trust_anchors_file: Option<PathBuf>,
    /// Resolver configuration for a DNS name in `--identity-addr`.
    #[arg(long, env = "WEFT_DESTINATION_DNS_RESOLV_CONF", default_value = control::RESOLV_CONF)]
    dns_resolv_conf: PathBuf,
    /// Longest wait for the identity service's addresses.
    #[arg(long, env = "WEFT_DESTINATION_DNS_RESOLVE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    dns_resolve_timeout: std::time::Duration,
    /// Whether to write the status of the routes it serves (HTTPRoutes, GRPCRoutes: whether
    /// each parent accepted them, whether their backends exist), with the Kubernetes source.
    /// With several replicas, the one holding the Lease `weft-destination-route-status` in
    /// the control-plane namespace writes.
    #[arg(long, env = "WEFT_DESTINATION_ROUTE_STATUS", default_value_t = true, action = clap::ArgAction::Set)]
    route_status: bool,
    /// This replica's name in the route status Lease: the pod's name (the chart sets it from
    /// the downward API). Default: `$HOSTNAME` (a pod's name), else a name made up at start.
    #[arg(long, env = "WEFT_DESTINATION_POD_NAME")]
    pod_name: Option<String>,
    /// How long the route status Lease lasts without renewal: another replica takes over
    /// writing statuses this long after the holder stopped renewing (whole seconds).
    #[arg(long, env = "WEFT_DESTINATION_ROUTE_STATUS_LEASE_DURATION", default_value = "30s", value_parser = parse_duration)]
    route_status_lease_duration: std::time::Duration,
    /// How often the Lease is read and renewed; shorter than the lease duration.
    #[arg(long, env = "WEFT_DESTINATION_ROUTE_STATUS_LEASE_RENEW_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    route_status_lease_renew_interval: std::time::Duration,
    /// Most connections the gRPC listener serves at once; more are closed at once
    /// (`destination_connections_refused_total{reason="max_connections"}`).
    #[arg(long, env = "WEFT_DESTINATION_MAX_CONNECTIONS", default_value_t = incoming::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Most connections one client (an IPv4 address, an IPv6 /64) holds at once: its share
    /// of --max-connections. Proxies behind one SNAT address share it.
    #[arg(long, env = "WEFT_DESTINATION_MAX_CLIENT_CONNECTIONS", default_value_t = incoming::MAX_CLIENT_CONNECTIONS)]
    max_client_connections: usize,
    /// Most handshakes (TLS, then the HTTP/2 preface) in progress at once.
    #[arg(long, env = "WEFT_DESTINATION_MAX_HANDSHAKES", default_value_t = incoming::MAX_HANDSHAKES)]
    max_handshakes: usize,
    /// Most handshakes in progress at once from one client: its share of --max-handshakes.
    #[arg(long, env = "WEFT_DESTINATION_MAX_CLIENT_HANDSHAKES", default_value_t = incoming::MAX_CLIENT_HANDSHAKES)]
    max_client_handshakes: usize,
    /// How long a gRPC connection may stay without an open stream: then it gets a GOAWAY
    /// and is closed (`destination_connections_idle_closed_total`); gRPC's MaxConnectionIdle.
    #[arg(long, env = "WEFT_DESTINATION_MAX_CONNECTION_IDLE", default_value = "10m", value_parser = parse_duration)]
    max_connection_idle: std::time::Duration,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "WEFT_DESTINATION_LOG", default_value = "info")]
    log: String,
    /// Log output.
    #[arg(long, env = "WEFT_DESTINATION_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
}

fn parse_policy(s: &str) -> Result<DefaultPolicy, String> {
    s.parse()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SourceKind {
    Kubernetes,
    Static,
}

pub fn run(args: DestinationArgs) -> anyhow::Result<()> {
    let DestinationArgs {
        listen_addr,
        admin_addr,
        source,
        static_file,
        cluster_domain,
        control_plane_namespace,
        trust_domain,
        proxy_inbound_port,
        default_opaque_ports,
        default_inbound_policy,
        cluster_networks,
        identity_name,
        identity_addr,
        identity_svc_name,
        identity_token_file,
        identity_trust_anchors_file,
        dns_resolv_conf,
        dns_resolve_timeout,
        route_status,
        pod_name,
        route_status_lease_duration,
        route_status_lease_renew_interval,
        max_connections,
        max_client_connections,
        max_handshakes,
        max_client_handshakes,
        max_connection_idle,
        log,
        log_format,
    } = args;
    let identity = match (
        identity_name,
        identity_addr,
        identity_svc_name,
        identity_token_file,
        identity_trust_anchors_file,
    ) {
        (None, None, None, None, None) => None,
        (Some(name), Some(addr), Some(svc_name), Some(token_file), Some(trust_anchors_file)) => {
            let resolver = addr
                .is_name()
                .then(|| Resolver::from_resolv_conf(&dns_resolv_conf, dns_resolve_timeout))
                .transpose()
                .context("--identity-addr is a DNS name (WEFT_DESTINATION_DNS_RESOLV_CONF)")?;
            Some(WorkloadConfig {
                name,
                addr: addr.to_string(),
                svc_name,
                token_file,
                trust_anchors_file,
                resolver,
            })
        }
        _ => bail!(
            "identity needs all of --identity-name, --identity-addr, --identity-svc-name, --identity-token-file and --identity-trust-anchors-file (WEFT_DESTINATION_IDENTITY_*), or none of them"
        ),
    };
    let (default_opaque_ports, bad) =
        weft_destination::model::PortSet::parse(&default_opaque_ports);
    if !bad.is_empty() {
        bail!("--default-opaque-ports: {bad:?} are not ports or port ranges");
    }
    let cluster_networks = parse_networks(&cluster_networks)
        .map_err(|e| anyhow::anyhow!("--cluster-networks: {e}"))?;
    if cluster_networks.is_empty() {
        bail!("--cluster-networks must not be empty (WEFT_DESTINATION_CLUSTER_NETWORKS)");
    }
    let source = match (source, static_file) {
        (SourceKind::Static, Some(path)) => Source::Static(path),
        (SourceKind::Static, None) => {
            bail!("--source static needs --static-file (WEFT_DESTINATION_STATIC_FILE)")
        }
        (SourceKind::Kubernetes, Some(_)) => {
            bail!("--static-file is only used with --source static")
        }
        (SourceKind::Kubernetes, None) => Source::Kubernetes,
    };
    for (flag, value) in [
        ("--cluster-domain", &cluster_domain),
        ("--control-plane-namespace", &control_plane_namespace),
        ("--trust-domain", &trust_domain),
    ] {
        let ok = !value.is_empty()
            && value.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !ok {
            bail!("{flag} {value:?} is not a DNS name");
        }
    }
    if route_status_lease_duration < std::time::Duration::from_secs(1)
        || route_status_lease_duration.subsec_nanos() != 0
    {
        bail!("--route-status-lease-duration must be whole seconds, at least 1s");
    }
    if route_status_lease_renew_interval.is_zero()
        || route_status_lease_renew_interval >= route_status_lease_duration
    {
        bail!(
            "--route-status-lease-renew-interval must be more than 0 and less than --route-status-lease-duration"
        );
    }
    let incoming = incoming::Limits {
        max_connections,
        max_client_connections,
        max_handshakes,
        max_client_handshakes,
        ..Default::default()
    };
    incoming.check()?;
    if max_connection_idle.is_zero() {
        bail!("--max-connection-idle must be more than 0");
    }
    let pod_name = pod_name
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or_default();
            format!("weft-destination-{}-{nanos:x}", std::process::id())
        });
    let route_status = (route_status && source == Source::Kubernetes).then(|| LeaseConfig {
        namespace: control_plane_namespace.clone(),
        name: "weft-destination-route-status".into(),
        holder: pod_name,
        duration: route_status_lease_duration,
        renew_interval: route_status_lease_renew_interval,
    });
    weft_proxy::logging::init(&log, log_format)?;
    let config = Config {
        listen_addr,
        admin_addr,
        source,
        index: IndexConfig {
            cluster_domain,
            control_plane_namespace,
            trust_domain,
            proxy_inbound_port,
            default_opaque_ports,
        },
        policy: PolicyConfig { default_policy: default_inbound_policy, cluster_networks },
        identity,
        route_status,
        connections: ConnectionLimits { incoming, max_connection_idle },
    };
    info!(?config, "starting destination service");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(weft_destination::run(config, crate::cli::shutdown_signal()))
}

/// The connection caps' flags (see `cli::connection_flags`).
#[cfg(test)]
mod connection_flags {
    use super::*;
    use crate::cli::connection_flags::{check_env_and_defaults, check_refusals, parse};

    #[test]
    fn env_vars_defaults_and_refusals() {
        check_env_and_defaults::<DestinationArgs>("WEFT_DESTINATION");
        check_refusals(run);
        let a: DestinationArgs =
            parse(&["--max-connections", "100", "--max-client-connections", "100"]);
        assert_eq!((a.max_connections, a.max_client_connections), (100, 100));
        let idle = "WEFT_DESTINATION_MAX_CONNECTION_IDLE";
        let cmd = <DestinationArgs as clap::Args>::augment_args(clap::Command::new("weft"));
        let arg = cmd.get_arguments().find(|a| a.get_id() == "max_connection_idle");
        assert_eq!(arg.and_then(|a| a.get_env()).and_then(|e| e.to_str()), Some(idle));
        let a: DestinationArgs = parse(&[]);
        assert_eq!(a.max_connection_idle, std::time::Duration::from_secs(600));
        let e = run(parse(&["--max-connection-idle", "0s"])).expect_err("refused").to_string();
        assert_eq!(e, "--max-connection-idle must be more than 0");
    }
}
