//! `weft destination`: the discovery server proxies ask for endpoints, identities and
//! profiles. Flags (each also an env var `WEFT_DESTINATION_*`) are parsed and checked here;
//! the service itself is the `weft-destination` crate.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::bail;
use clap::{Args, ValueEnum};
use tracing::info;
use weft_destination::{Config, IndexConfig, Source};
use weft_proxy::config::LogFormat;

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
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "WEFT_DESTINATION_LOG", default_value = "info")]
    log: String,
    /// Log output.
    #[arg(long, env = "WEFT_DESTINATION_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
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
        log,
        log_format,
    } = args;
    let (default_opaque_ports, bad) =
        weft_destination::model::PortSet::parse(&default_opaque_ports);
    if !bad.is_empty() {
        bail!("--default-opaque-ports: {bad:?} are not ports or port ranges");
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
    };
    info!(?config, "starting destination service");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(weft_destination::run(config, crate::cli::shutdown_signal()))
}
