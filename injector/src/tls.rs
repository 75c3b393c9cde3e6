//! The webhook's serving certificate, re-read when its files change (cert-manager and
//! Secret volume updates replace them in place): each handshake takes the current one, a
//! bad new pair is logged and the old one kept.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("cannot read the private key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the certificate {cert} and the key {key} do not go together: {reason}")]
    Pair { cert: String, key: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The ring provider: one crypto provider for the whole workspace.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process-wide default provider (the kube client's TLS uses the default).
/// Idempotent: a second call finds it installed.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads a PEM certificate chain and private key into a checked pair.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let c = || cert.display().to_string();
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert { path: c(), reason: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::Cert { path: c(), reason: "no certificate in the file".into() });
    }
    let der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key { path: key.display().to_string(), reason: e.to_string() })?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| TlsError::Pair {
        cert: c(),
        key: key.display().to_string(),
        reason: e.to_string(),
    })
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64)>, Option<(SystemTime, u64)>);

fn stamp(cert: &Path, key: &Path) -> Stamp {
    let one =
        |p: &Path| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
    Stamp(one(cert), one(key))
}

/// A certificate resolver whose pair is swapped when the files change.
pub struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    seen: RwLock<Stamp>,
}

impl fmt::Debug for Reloading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloading").field("cert", &self.cert).field("key", &self.key).finish()
    }
}

impl Reloading {
    /// Loads the pair now: a server that cannot serve TLS should not start.
    pub fn new(cert: PathBuf, key: PathBuf) -> Result<Arc<Reloading>, TlsError> {
        let seen = stamp(&cert, &key);
        let pair = load(&cert, &key)?;
        Ok(Arc::new(Reloading {
            cert,
            key,
            current: RwLock::new(Arc::new(pair)),
            seen: RwLock::new(seen),
        }))
    }

    /// Re-reads the files if they changed. `Ok(true)`: a new pair is in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.cert, &self.key);
        if *self.seen.read().unwrap_or_else(|e| e.into_inner()) == now {
            return Ok(false);
        }
        // Recorded first: a broken pair is reported once, not on every poll.
        *self.seen.write().unwrap_or_else(|e| e.into_inner()) = now;
        let pair = load(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(pair);
        Ok(true)
    }

    /// Polls the files every `interval`, forever.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        on_reload: impl Fn(bool) + Send + 'static,
    ) {
        // A zero interval would panic; the flag refuses it, and a library caller gets 1 ms.
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.reload_if_changed() {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                    on_reload(true);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "new serving certificate rejected; keeping the old one");
                    on_reload(false);
                }
            }
        }
    }

    /// A server config that asks this resolver on every handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}
