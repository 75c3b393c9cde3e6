//! A workload's identity as a running process holds it — the proxy's, and the destination
//! service's own: the names checked, the trust anchors read from their file and re-read when
//! it changes (the kubelet's `..data` swap included), and the certificate obtained and
//! renewed by [`crate::client`] with its key in memory only.

use std::{path::PathBuf, sync::Arc, time::Duration};

use prometheus_client::registry::Registry;
use tracing::{info, warn};

use crate::{
    IdentityName, NameError, SharedTrust, TrustBundle,
    client::{Client, ClientConfig, ClientError, Credentials, IdentityMetrics},
    control::Resolver,
    pki::PkiError,
    reload::FileSet,
};

/// What the `--identity-*` settings of a process say.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// This workload's identity name.
    pub name: String,
    /// The identity service, `host:port`.
    pub addr: String,
    /// The identity the identity service's certificate must prove.
    pub svc_name: String,
    pub token_file: PathBuf,
    pub trust_anchors_file: PathBuf,
    /// Resolves `addr` (and other control-plane names) when it is a DNS name.
    pub resolver: Option<Arc<Resolver>>,
}

/// Why a workload identity cannot start; each names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("{what} {value:?} is not an identity name: {source}")]
    Name { what: &'static str, value: String, source: Box<NameError> },
    #[error("cannot read the trust anchors {path}: {source}")]
    Anchors { path: String, source: std::io::Error },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A started workload identity: the certificate arrives in the background.
#[derive(Clone, Debug)]
pub struct Workload {
    pub local: IdentityName,
    /// The anchors, current after every reload; a rustls verifier for servers and clients.
    pub trust: Arc<SharedTrust>,
    pub credentials: Credentials,
}

impl Workload {
    /// Checks the names, reads the anchors, registers the identity metrics and starts the
    /// certificate client and the anchor watch (on the current tokio runtime). Fails on bad
    /// configuration, never on an unreachable identity service.
    pub fn start(config: WorkloadConfig, registry: &mut Registry) -> Result<Self, WorkloadError> {
        let name = |what, value: &str| {
            value.parse::<IdentityName>().map_err(|source| WorkloadError::Name {
                what,
                value: value.to_owned(),
                source: Box::new(source),
            })
        };
        let local = name("the identity name", &config.name)?;
        let svc = name("the identity service's name", &config.svc_name)?;
        let mut files = FileSet::new(vec![config.trust_anchors_file.clone()]);
        let snapshot = files.read().map_err(|source| WorkloadError::Anchors {
            path: config.trust_anchors_file.display().to_string(),
            source,
        })?;
        let pem = snapshot.contents.first().cloned().unwrap_or_default();
        let what = config.trust_anchors_file.display().to_string();
        let trust = SharedTrust::new(TrustBundle::from_pem(&what, &pem)?)?;
        files.mark_seen(&snapshot);

        let metrics = IdentityMetrics::default();
        metrics.register(registry);
        let mut certify =
            ClientConfig::new(trust.clone(), config.addr, svc, local.clone(), config.token_file);
        certify.resolver = config.resolver;
        let client = Client::new(certify, metrics)?;
        let credentials = client.credentials();
        client.spawn();
        tokio::spawn(watch_anchors(files, trust.clone()));
        info!(identity = %local, "identity configured; waiting for a certificate");
        Ok(Workload { local, trust, credentials })
    }
}

/// Re-reads the anchors when their file changes; a bad new file is logged and the current
/// anchors kept.
async fn watch_anchors(mut files: FileSet, trust: Arc<SharedTrust>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        match files.poll() {
            Ok(Some(snapshot)) => {
                let pem = snapshot.contents.first().cloned().unwrap_or_default();
                let replaced = TrustBundle::from_pem("trust anchors", &pem)
                    .map_err(|e| e.to_string())
                    .and_then(|b| trust.replace(b).map_err(|e| e.to_string()));
                match replaced {
                    Ok(()) => {
                        files.mark_seen(&snapshot);
                        info!("trust anchors reloaded");
                    }
                    Err(error) => {
                        warn!(%error, "ignoring an unusable trust anchor file; keeping the current anchors")
                    }
                }
            }
            Ok(None) => {}
            Err(error) => warn!(%error, "cannot read the trust anchors; keeping the current ones"),
        }
    }
}
