//! `weft identity`: the identity service (the CA). Flags (each also an env var
//! `WEFT_IDENTITY_*`) are parsed and checked here; the service is the `weft-identity` crate.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use tracing::info;
use weft_identity::{
    IdentityDomain,
    ca::CaConfig,
    incoming,
    server::{Config, ConnectionLimits, IdentityService, TokenSource},
    token::{AUDIENCE, kubernetes::TokenReviewValidator},
};
use weft_proxy::config::LogFormat;

#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// Address of the gRPC server (io.linkerd.proxy.identity.Identity, TLS).
    #[arg(long, env = "WEFT_IDENTITY_LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    listen_addr: SocketAddr,
    /// Address of the admin server (/metrics, /ready, /live).
    #[arg(long, env = "WEFT_IDENTITY_ADMIN_ADDR", default_value = "0.0.0.0:9990")]
    admin_addr: SocketAddr,
    /// Trust domain of the identities.
    #[arg(long, env = "WEFT_IDENTITY_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Namespace of the control plane (part of every identity name).
    #[arg(long, env = "WEFT_IDENTITY_CONTROL_PLANE_NAMESPACE", default_value = "weft")]
    control_plane_namespace: String,
    /// The issuer certificate (PEM; the issuer first, then any intermediates). Re-read when
    /// it changes, including through a Secret's `..data` symlink swap.
    #[arg(
        long,
        env = "WEFT_IDENTITY_ISSUER_CERT",
        default_value = "/var/run/weft/identity/issuer/tls.crt"
    )]
    issuer_cert: PathBuf,
    /// The issuer's private key (PEM).
    #[arg(
        long,
        env = "WEFT_IDENTITY_ISSUER_KEY",
        default_value = "/var/run/weft/identity/issuer/tls.key"
    )]
    issuer_key: PathBuf,
    /// The trust anchors (PEM bundle) the issuer must chain to.
    #[arg(
        long,
        env = "WEFT_IDENTITY_TRUST_BUNDLE",
        default_value = "/var/run/weft/identity/trust-roots/ca-bundle.crt"
    )]
    trust_bundle: PathBuf,
    /// Lifetime of issued certificates (e.g. `24h`, `90m`, `15s`).
    #[arg(long, env = "WEFT_IDENTITY_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    lifetime: Duration,
    /// How far back a certificate's validity starts, for clocks that run behind.
    #[arg(long, env = "WEFT_IDENTITY_CLOCK_SKEW", default_value = "20s", value_parser = parse_duration)]
    clock_skew: Duration,
    /// How tokens are checked: Kubernetes TokenReview (KUBECONFIG or in-cluster) or a file.
    #[arg(long, env = "WEFT_IDENTITY_TOKEN_VALIDATOR", value_enum, default_value_t = Validator::Kubernetes)]
    token_validator: Validator,
    /// The static token file: a YAML map of token to `namespace/serviceaccount`.
    #[arg(long, env = "WEFT_IDENTITY_STATIC_TOKENS")]
    static_tokens: Option<PathBuf>,
    /// The audience projected tokens must carry (TokenReview).
    #[arg(long, env = "WEFT_IDENTITY_TOKEN_AUDIENCE", default_value = AUDIENCE)]
    token_audience: String,
    /// How often the issuer, bundle and token files are checked for changes.
    #[arg(long, env = "WEFT_IDENTITY_RELOAD_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    reload_interval: Duration,
    /// Most connections the gRPC listener serves at once; more are closed at once
    /// (`identity_connections_refused_total{reason="max_connections"}`).
    #[arg(long, env = "WEFT_IDENTITY_MAX_CONNECTIONS", default_value_t = incoming::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Most connections one client (an IPv4 address, an IPv6 /64) holds at once: its share
    /// of --max-connections. Proxies behind one SNAT address share it.
    #[arg(long, env = "WEFT_IDENTITY_MAX_CLIENT_CONNECTIONS", default_value_t = incoming::MAX_CLIENT_CONNECTIONS)]
    max_client_connections: usize,
    /// Most TLS handshakes in progress at once (until the HTTP/2 preface).
    #[arg(long, env = "WEFT_IDENTITY_MAX_HANDSHAKES", default_value_t = incoming::MAX_HANDSHAKES)]
    max_handshakes: usize,
    /// Most TLS handshakes in progress at once from one client: its share of
    /// --max-handshakes.
    #[arg(long, env = "WEFT_IDENTITY_MAX_CLIENT_HANDSHAKES", default_value_t = incoming::MAX_CLIENT_HANDSHAKES)]
    max_client_handshakes: usize,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "WEFT_IDENTITY_LOG", default_value = "info")]
    log: String,
    /// Log output.
    #[arg(long, env = "WEFT_IDENTITY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Validator {
    Kubernetes,
    Static,
}

/// `500ms`, `15s`, `90m`, `24h`, `7d`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?} is not a duration like 15s, 90m or 24h"))?;
    let secs = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)")),
    };
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

pub fn run(args: IdentityArgs) -> anyhow::Result<()> {
    let IdentityArgs {
        listen_addr,
        admin_addr,
        trust_domain,
        control_plane_namespace,
        issuer_cert,
        issuer_key,
        trust_bundle,
        lifetime,
        clock_skew,
        token_validator,
        static_tokens,
        token_audience,
        reload_interval,
        max_connections,
        max_client_connections,
        max_handshakes,
        max_client_handshakes,
        log,
        log_format,
    } = args;
    let domain = IdentityDomain::new(&control_plane_namespace, &trust_domain)
        .context("--control-plane-namespace / --trust-domain")?;
    if lifetime < Duration::from_secs(1) {
        bail!("--lifetime must be at least 1s");
    }
    if reload_interval.is_zero() {
        bail!("--reload-interval must be more than 0");
    }
    let connections = incoming::Limits {
        max_connections,
        max_client_connections,
        max_handshakes,
        max_client_handshakes,
        ..Default::default()
    };
    connections.check()?;
    match (token_validator, &static_tokens) {
        (Validator::Static, None) => {
            bail!("--token-validator static needs --static-tokens (WEFT_IDENTITY_STATIC_TOKENS)")
        }
        (Validator::Kubernetes, Some(_)) => {
            bail!("--static-tokens is only used with --token-validator static")
        }
        _ => {}
    }
    weft_proxy::logging::init(&log, log_format)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let tokens = match static_tokens {
            Some(path) => TokenSource::Static(path),
            None => TokenSource::Validator(Arc::new(
                TokenReviewValidator::from_environment(&token_audience)
                    .await
                    .context("Kubernetes client for TokenReview (KUBECONFIG or in-cluster)")?,
            )),
        };
        let mut ca = CaConfig::new(domain);
        ca.lifetime = lifetime;
        ca.clock_skew = clock_skew;
        let config = Config { ca, issuer_cert, issuer_key, trust_bundle, tokens, reload_interval };
        info!(
            issuer_cert = %config.issuer_cert.display(),
            issuer_key = %config.issuer_key.display(),
            trust_bundle = %config.trust_bundle.display(),
            ?lifetime,
            ?clock_skew,
            validator = ?token_validator,
            ?connections,
            "starting identity service"
        );
        let svc = IdentityService::load(config)?.with_connection_limits(ConnectionLimits {
            incoming: connections,
            ..Default::default()
        });
        let grpc = tokio::net::TcpListener::bind(listen_addr)
            .await
            .with_context(|| format!("binding the gRPC listener on {listen_addr}"))?;
        let admin = tokio::net::TcpListener::bind(admin_addr)
            .await
            .with_context(|| format!("binding the admin listener on {admin_addr}"))?;
        let issuer = svc.ca().issuer();
        info!(
            grpc = %grpc.local_addr()?,
            admin = %admin.local_addr()?,
            name = %svc.service_name(),
            issuer.subject = issuer.subject(),
            issuer.not_after = issuer.not_after(),
            "serving"
        );
        svc.serve(grpc, admin, crate::cli::shutdown_signal()).await?;
        info!("stopped");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        for bad in ["", "s", "1.5h", "10y", "-1s", "1 h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}

/// The connection caps' flags (see `cli::connection_flags`).
#[cfg(test)]
mod connection_flags {
    use super::*;
    use crate::cli::connection_flags::{check_env_and_defaults, check_refusals, parse};

    #[test]
    fn env_vars_defaults_and_refusals() {
        check_env_and_defaults::<IdentityArgs>("WEFT_IDENTITY");
        check_refusals(run);
        let a: IdentityArgs =
            parse(&["--max-connections", "100", "--max-client-connections", "100"]);
        assert_eq!((a.max_connections, a.max_client_connections), (100, 100));
    }
}
