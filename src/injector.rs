//! `weft injector`: the proxy injector, a mutating admission webhook. Flags (each also an
//! env var `WEFT_INJECTOR_*`) are parsed and checked here; the server is the
//! `weft-injector` crate. The proxy settings are shared with `weft inject --manual`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use clap::{ArgAction, Args, ValueEnum};
use weft_injector::{
    InjectorConfig,
    config::{DEFAULT_CLUSTER_NETWORKS, DEFAULT_IMAGE_REPO},
    namespaces::Namespaces,
    server::{Bound, ServerConfig},
};
use weft_proxy::config::{LogFormat, parse_duration};

#[derive(Debug, Clone, Args)]
pub struct InjectorArgs {
    /// Address of the HTTPS webhook server (`POST /inject`, AdmissionReview v1).
    #[arg(long, env = "WEFT_INJECTOR_LISTEN_ADDR", default_value = "0.0.0.0:8443")]
    listen_addr: SocketAddr,
    /// Address of the admin server (/metrics, /ready, /live), plain HTTP.
    #[arg(long, env = "WEFT_INJECTOR_ADMIN_ADDR", default_value = "0.0.0.0:9995")]
    admin_addr: SocketAddr,
    /// PEM certificate chain of the webhook server; re-read when it changes.
    #[arg(long, env = "WEFT_INJECTOR_TLS_CERT", default_value = "/var/run/weft/tls/tls.crt")]
    tls_cert: PathBuf,
    /// PEM private key of the webhook server; re-read when it changes.
    #[arg(long, env = "WEFT_INJECTOR_TLS_KEY", default_value = "/var/run/weft/tls/tls.key")]
    tls_key: PathBuf,
    /// How often the certificate files are checked for changes.
    #[arg(long, env = "WEFT_INJECTOR_CERT_RELOAD_INTERVAL", default_value = "5s", value_parser = parse_positive_duration)]
    cert_reload_interval: Duration,
    /// Largest AdmissionReview body read; bigger ones are answered with a refusal.
    #[arg(long, env = "WEFT_INJECTOR_MAX_BODY_BYTES", default_value_t = 8 << 20)]
    max_body_bytes: usize,
    /// How long one review may take from its headers to its answer (body read included);
    /// keep it below the webhook's timeoutSeconds (10 s in the chart).
    #[arg(long, env = "WEFT_INJECTOR_REQUEST_TIMEOUT", default_value = "8s", value_parser = parse_positive_duration)]
    request_timeout: Duration,
    /// Where namespace annotations come from: a watch of the Kubernetes API (KUBECONFIG or
    /// in-cluster) or a file of Namespace objects (without a cluster).
    #[arg(long, env = "WEFT_INJECTOR_SOURCE", value_enum, default_value_t = SourceKind::Kubernetes)]
    source: SourceKind,
    /// The YAML file of Namespace objects for `--source static` (`kubectl get ns -o yaml`).
    #[arg(long, env = "WEFT_INJECTOR_STATIC_FILE")]
    static_file: Option<PathBuf>,
    /// How long in-flight reviews may take to finish after SIGTERM.
    #[arg(long, env = "WEFT_INJECTOR_SHUTDOWN_GRACE_PERIOD", default_value = "10s", value_parser = parse_duration)]
    shutdown_grace_period: Duration,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "WEFT_INJECTOR_LOG", default_value = "info")]
    log: String,
    /// Log output.
    #[arg(long, env = "WEFT_INJECTOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
    #[command(flatten)]
    proxy: ProxyArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SourceKind {
    Kubernetes,
    Static,
}

/// What every injected proxy gets unless a `config.weft.dev/*` annotation says otherwise.
#[derive(Debug, Clone, Args)]
pub struct ProxyArgs {
    /// Image of the proxy and of its init container (the same binary), tag included.
    #[arg(long, env = "WEFT_INJECTOR_PROXY_IMAGE", default_value_t = default_image())]
    proxy_image: String,
    /// imagePullPolicy of the injected containers.
    #[arg(long, env = "WEFT_INJECTOR_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
    image_pull_policy: String,
    /// Namespace of the control plane: its pods are never injected, and it names the services
    /// and identities proxies talk to.
    #[arg(long, env = "WEFT_INJECTOR_CONTROL_PLANE_NAMESPACE", default_value = "weft")]
    control_plane_namespace: String,
    /// Trust domain of the identities.
    #[arg(long, env = "WEFT_INJECTOR_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// The cluster's DNS domain.
    #[arg(long, env = "WEFT_INJECTOR_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// User id of the proxy (`config.weft.dev/proxy-uid`).
    #[arg(long, env = "WEFT_INJECTOR_PROXY_UID", default_value_t = 2102)]
    proxy_uid: i64,
    /// The proxy's log filter (`config.weft.dev/proxy-log-level`).
    #[arg(long, env = "WEFT_INJECTOR_PROXY_LOG_LEVEL", default_value = "warn,weft_proxy=info")]
    proxy_log_level: String,
    /// The proxy's log output, `plain` or `json`.
    #[arg(long, env = "WEFT_INJECTOR_PROXY_LOG_FORMAT", default_value = "plain")]
    proxy_log_format: String,
    /// Ports the proxy forwards without protocol detection (`config.weft.dev/opaque-ports`).
    #[arg(
        long,
        env = "WEFT_INJECTOR_OPAQUE_PORTS",
        default_value = "25,587,3306,4444,5432,6379,9300,11211"
    )]
    opaque_ports: String,
    /// Inbound ports not redirected to the proxy (`config.weft.dev/skip-inbound-ports`).
    #[arg(long, env = "WEFT_INJECTOR_SKIP_INBOUND_PORTS", default_value = "")]
    skip_inbound_ports: String,
    /// Outbound ports not redirected to the proxy (`config.weft.dev/skip-outbound-ports`).
    #[arg(long, env = "WEFT_INJECTOR_SKIP_OUTBOUND_PORTS", default_value = "")]
    skip_outbound_ports: String,
    /// Outbound CIDRs not redirected to the proxy (`config.weft.dev/skip-subnets`).
    #[arg(long, env = "WEFT_INJECTOR_SKIP_SUBNETS", default_value = "")]
    skip_subnets: String,
    /// Inject the proxy as a native sidecar (`config.weft.dev/native-sidecar`).
    #[arg(long, env = "WEFT_INJECTOR_NATIVE_SIDECAR", default_value_t = true, action = ArgAction::Set)]
    native_sidecar: bool,
    /// The proxy's drain time on shutdown (`config.weft.dev/shutdown-grace-period`).
    #[arg(long, env = "WEFT_INJECTOR_PROXY_SHUTDOWN_GRACE_PERIOD", default_value = "30s")]
    proxy_shutdown_grace_period: String,
    /// The proxy's default inbound policy (`config.weft.dev/default-inbound-policy`).
    #[arg(
        long,
        env = "WEFT_INJECTOR_DEFAULT_INBOUND_POLICY",
        default_value = "all-unauthenticated"
    )]
    default_inbound_policy: String,
    /// The networks (comma-separated CIDRs) whose clients the proxies' `cluster-*` inbound
    /// policies treat as the cluster's: the pod and node networks. Cluster-wide, no annotation.
    #[arg(long, env = "WEFT_INJECTOR_CLUSTER_NETWORKS", default_value = DEFAULT_CLUSTER_NETWORKS)]
    cluster_networks: String,
    /// The proxy's CPU request, a Kubernetes quantity (`config.weft.dev/proxy-cpu-request`).
    #[arg(long, env = "WEFT_INJECTOR_PROXY_CPU_REQUEST")]
    proxy_cpu_request: Option<String>,
    /// The proxy's CPU limit (`config.weft.dev/proxy-cpu-limit`).
    #[arg(long, env = "WEFT_INJECTOR_PROXY_CPU_LIMIT")]
    proxy_cpu_limit: Option<String>,
    /// The proxy's memory request (`config.weft.dev/proxy-memory-request`).
    #[arg(long, env = "WEFT_INJECTOR_PROXY_MEMORY_REQUEST")]
    proxy_memory_request: Option<String>,
    /// The proxy's memory limit (`config.weft.dev/proxy-memory-limit`).
    #[arg(long, env = "WEFT_INJECTOR_PROXY_MEMORY_LIMIT")]
    proxy_memory_limit: Option<String>,
    /// iptables backend of the init container: `auto`, `nft` or `legacy`.
    #[arg(long, env = "WEFT_INJECTOR_IPTABLES_MODE", default_value = "auto")]
    iptables_mode: String,
    /// Whether the init container also programs ip6tables.
    #[arg(long, env = "WEFT_INJECTOR_IPV6", default_value_t = true, action = ArgAction::Set)]
    ipv6: bool,
    /// PEM trust anchors for the proxies, read at start: each injected pod carries them in its
    /// `weft.dev/identity-trust-anchors` annotation, projected into the proxy's trust-roots
    /// file. Without it, pods mount the `weft-identity-trust-roots` ConfigMap of their own
    /// namespace.
    #[arg(long, env = "WEFT_INJECTOR_TRUST_ANCHORS_FILE")]
    trust_anchors_file: Option<PathBuf>,
}

/// A duration that must be more than zero (a zero interval or timeout is never meant, and
/// a zero timer interval panics).
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than 0"));
    }
    Ok(d)
}

fn default_image() -> String {
    format!("{DEFAULT_IMAGE_REPO}:{}", env!("CARGO_PKG_VERSION"))
}

impl ProxyArgs {
    /// The checked configuration; every bad flag is reported at once.
    pub fn into_config(self) -> anyhow::Result<InjectorConfig> {
        let ProxyArgs {
            proxy_image,
            image_pull_policy,
            control_plane_namespace,
            trust_domain,
            cluster_domain,
            proxy_uid,
            proxy_log_level,
            proxy_log_format,
            opaque_ports,
            skip_inbound_ports,
            skip_outbound_ports,
            skip_subnets,
            native_sidecar,
            proxy_shutdown_grace_period,
            default_inbound_policy,
            cluster_networks,
            proxy_cpu_request,
            proxy_cpu_limit,
            proxy_memory_request,
            proxy_memory_limit,
            iptables_mode,
            ipv6,
            trust_anchors_file,
        } = self;
        let trust_anchors_pem = trust_anchors_file
            .map(|path| {
                std::fs::read_to_string(&path)
                    .with_context(|| format!("--trust-anchors-file {}", path.display()))
            })
            .transpose()?;
        let config = InjectorConfig {
            proxy_image,
            image_pull_policy,
            control_plane_namespace,
            trust_domain,
            cluster_domain,
            proxy_uid,
            proxy_log_level,
            proxy_log_format,
            opaque_ports,
            skip_inbound_ports,
            skip_outbound_ports,
            skip_subnets,
            native_sidecar,
            shutdown_grace_period: proxy_shutdown_grace_period,
            default_inbound_policy,
            cluster_networks,
            proxy_cpu_request,
            proxy_cpu_limit,
            proxy_memory_request,
            proxy_memory_limit,
            iptables_mode,
            ipv6,
            trust_anchors_pem,
        };
        if let Err(errors) = config.validate() {
            bail!("invalid proxy settings:\n  {}", errors.join("\n  "));
        }
        Ok(config)
    }
}

pub fn run(args: InjectorArgs) -> anyhow::Result<()> {
    let InjectorArgs {
        listen_addr,
        admin_addr,
        tls_cert,
        tls_key,
        cert_reload_interval,
        max_body_bytes,
        request_timeout,
        source,
        static_file,
        shutdown_grace_period,
        log,
        log_format,
        proxy,
    } = args;
    let injector = proxy.into_config()?;
    let static_file = match (source, static_file) {
        (SourceKind::Static, Some(path)) => Some(path),
        (SourceKind::Static, None) => {
            bail!("--source static needs --static-file (WEFT_INJECTOR_STATIC_FILE)")
        }
        (SourceKind::Kubernetes, Some(_)) => {
            bail!("--static-file is only used with --source static")
        }
        (SourceKind::Kubernetes, None) => None,
    };
    weft_proxy::logging::init(&log, log_format).with_context(|| format!("--log {log:?}"))?;
    weft_injector::tls::install_provider();
    let config = ServerConfig {
        listen: listen_addr,
        admin_listen: admin_addr,
        cert: tls_cert,
        key: tls_key,
        cert_reload_interval,
        max_body_bytes,
        shutdown_grace: shutdown_grace_period,
        request_timeout,
        injector,
    };
    tracing::info!(?config, source = ?source, "starting the injector");
    // Two workers: reviews are small and CPU-light; fewer threads keep memory low.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let namespaces = match static_file {
            Some(path) => Namespaces::from_file(&path)?,
            None => {
                let (namespaces, watch) = Namespaces::kubernetes().await.context(
                    "no Kubernetes API (KUBECONFIG or in-cluster config); --source static works without one",
                )?;
                tokio::spawn(watch);
                namespaces
            }
        };
        let bound = Bound::bind(config).await?;
        bound.run(namespaces, Default::default(), crate::cli::shutdown_signal()).await?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use weft_injector::config::IDENTITY_SERVICE_ACCOUNT;

    use super::*;

    /// Proxies are told to expect the name that `weft identity` presents: a mismatch would
    /// leave every meshed pod without a certificate.
    #[test]
    fn proxies_expect_the_identity_service_name() {
        let c = InjectorConfig {
            control_plane_namespace: "mesh".into(),
            trust_domain: "example.org".into(),
            ..InjectorConfig::default()
        };
        let domain = weft_identity::IdentityDomain::new("mesh", "example.org").expect("domain");
        assert_eq!(
            c.identity_name(IDENTITY_SERVICE_ACCOUNT, "mesh"),
            domain.identity_service_name().as_str()
        );
    }

    /// A zero reload interval or request timeout is refused when the flags are parsed.
    #[test]
    fn zero_intervals_are_refused_at_parsing() {
        use clap::Parser;
        #[derive(Parser)]
        struct P {
            #[command(flatten)]
            injector: InjectorArgs,
        }
        let parse =
            |args: &[&str]| P::try_parse_from(std::iter::once("weft").chain(args.iter().copied()));
        for flag in ["--cert-reload-interval", "--request-timeout"] {
            for zero in ["0s", "0", "0ms"] {
                let e = parse(&[flag, zero]).err().expect("zero refused").to_string();
                assert!(e.contains(flag) && e.contains("must be more than 0"), "{e}");
            }
            let p = parse(&[flag, "1ms"]).expect("1ms is fine");
            assert!(!p.injector.cert_reload_interval.is_zero());
        }
        assert_eq!(parse_positive_duration("5s"), Ok(Duration::from_secs(5)));
    }

    fn proxy_args(args: &[&str]) -> ProxyArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct P {
            #[command(flatten)]
            proxy: ProxyArgs,
        }
        let argv = std::iter::once("weft").chain(args.iter().copied());
        P::try_parse_from(argv).expect("flags parse").proxy
    }

    /// The flags' defaults are the library's, and `--cluster-networks` reaches the config
    /// checked: a bad network is refused at start, named.
    #[test]
    fn flag_defaults_and_cluster_networks() {
        let config = proxy_args(&[]).into_config().expect("the defaults are valid");
        assert_eq!(config, InjectorConfig::default());
        let config = proxy_args(&["--cluster-networks", "10.244.0.0/16,fd12::/16"])
            .into_config()
            .expect("valid");
        assert_eq!(config.cluster_networks, "10.244.0.0/16,fd12::/16");
        let e = proxy_args(&["--cluster-networks", "10.244.0.1/16"])
            .into_config()
            .expect_err("refused");
        assert!(e.to_string().contains("cluster networks: \"10.244.0.1/16\""), "{e}");
        let e = proxy_args(&["--cluster-networks", ""]).into_config().expect_err("refused");
        assert!(e.to_string().contains("cluster networks must not be empty"), "{e}");
    }
}
