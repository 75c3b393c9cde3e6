//! The floor the proxies are measured against: the smallest forwarding hop in Rust, a
//! process that accepts a connection, connects to one fixed upstream and copies bytes both
//! ways (`tokio::io::copy_bidirectional`, `TCP_NODELAY` on both sides, one thread). No
//! detection, no HTTP, no metrics, no timeouts: what any userspace proxy pays at least per
//! byte it relays on this machine, measured in the same run as the proxies. With TLS, a
//! pair of them is the bare rustls forwarder pair: A originates TLS 1.3 with a client
//! certificate and checks the server's name, B terminates it and requires a client
//! certificate from the anchors — mTLS and nothing else, one TLS connection per client
//! connection.
//!
//! A bench runs it as a child process of its own binary (so /proc accounts its CPU and
//! memory apart from the load generator's): `pair` re-executes the bench with
//! `WEFT_BENCH_RELAY=LISTEN,UPSTREAM` (and the `WEFT_BENCH_RELAY_TLS*` settings), and the
//! bench's `main` calls `run_if_asked` first.

use std::{net::SocketAddr, path::Path, process::Command, sync::Arc};

use anyhow::{Context as _, bail};
use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::procs::{Pair, Proc, listening_pair};

const VAR: &str = "WEFT_BENCH_RELAY";

/// The TLS side of a relay pair: both relays' certificate chains and keys (PEM files),
/// the trust anchors, and the name A requires of B's certificate.
#[derive(Debug, Clone)]
pub struct Mtls {
    pub a_pem: String,
    pub b_pem: String,
    pub ca: String,
    pub b_name: String,
}

/// A relay pair chained like the proxy pairs: A → B → `backend`; with `mtls`, A → B is
/// mutual TLS 1.3.
pub fn pair(backend: SocketAddr, dir: &Path, mtls: Option<Mtls>) -> anyhow::Result<Pair> {
    let exe = std::env::current_exe().context("finding the bench's own binary")?;
    let tag = if mtls.is_some() { "rustls relay" } else { "relay" };
    listening_pair(backend, |name, listen, to| {
        let mut cmd = Command::new(&exe);
        cmd.env_clear().env(VAR, format!("{listen},{to}"));
        if let Some(m) = &mtls {
            // B is the one whose upstream is the backend.
            let (role, pem) =
                if to == backend { ("server", &m.b_pem) } else { ("client", &m.a_pem) };
            cmd.env("WEFT_BENCH_RELAY_TLS", role)
                .env("WEFT_BENCH_RELAY_PEM", pem)
                .env("WEFT_BENCH_RELAY_CA", &m.ca)
                .env("WEFT_BENCH_RELAY_SERVER_NAME", &m.b_name);
        }
        Proc::spawn(&mut cmd, format!("{tag} {name}"), dir)
    })
}

/// When this process was started as a relay, relays until killed (never returns Ok);
/// otherwise returns at once.
pub fn run_if_asked() -> anyhow::Result<()> {
    let Ok(spec) = std::env::var(VAR) else { return Ok(()) };
    let (listen, upstream) = spec
        .split_once(',')
        .and_then(|(l, u)| Some((l.parse::<SocketAddr>().ok()?, u.parse::<SocketAddr>().ok()?)))
        .with_context(|| {
            format!("{VAR} must be LISTEN,UPSTREAM (two socket addresses): {spec:?}")
        })?;
    let tls = match std::env::var("WEFT_BENCH_RELAY_TLS").ok().as_deref() {
        None => Tls::None,
        Some(role) => tls(role)?,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(relay(listen, upstream, tls))?;
    bail!("the relay on {listen} stopped accepting")
}

enum Tls {
    None,
    /// Originates TLS to the upstream, requiring this name of its certificate.
    Client(TlsConnector, ServerName<'static>),
    /// Terminates TLS from the client.
    Server(TlsAcceptor),
}

fn tls(role: &str) -> anyhow::Result<Tls> {
    let var = |name: &str| std::env::var(name).with_context(|| format!("{name} is not set"));
    let pem = var("WEFT_BENCH_RELAY_PEM")?;
    let chain = CertificateDer::pem_file_iter(&pem)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading the certificates of {pem}"))?;
    let key =
        PrivateKeyDer::from_pem_file(&pem).with_context(|| format!("reading the key of {pem}"))?;
    let mut roots = RootCertStore::empty();
    for anchor in CertificateDer::pem_file_iter(var("WEFT_BENCH_RELAY_CA")?)? {
        roots.add(anchor?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions = &[&rustls::version::TLS13];
    Ok(match role {
        "client" => {
            let config = ClientConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)?
                .with_root_certificates(roots)
                .with_client_auth_cert(chain, key)?;
            let name = ServerName::try_from(var("WEFT_BENCH_RELAY_SERVER_NAME")?)?;
            Tls::Client(TlsConnector::from(Arc::new(config)), name)
        }
        "server" => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()?;
            let config = ServerConfig::builder_with_provider(provider)
                .with_protocol_versions(versions)?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain, key)?;
            Tls::Server(TlsAcceptor::from(Arc::new(config)))
        }
        other => bail!("WEFT_BENCH_RELAY_TLS must be client or server, not {other:?}"),
    })
}

async fn relay(listen: SocketAddr, upstream: SocketAddr, tls: Tls) -> anyhow::Result<()> {
    let tls = Arc::new(tls);
    let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    loop {
        let (client, _) = listener.accept().await.context("accepting")?;
        let tls = tls.clone();
        let _ = client.set_nodelay(true);
        tokio::spawn(async move {
            let connect = || async {
                let server = TcpStream::connect(upstream).await.ok()?;
                let _ = server.set_nodelay(true);
                Some(server)
            };
            match &*tls {
                Tls::None => {
                    if let Some(server) = connect().await {
                        copy(client, server).await;
                    }
                }
                Tls::Client(connector, name) => {
                    let Some(server) = connect().await else { return };
                    if let Ok(server) = connector.connect(name.clone(), server).await {
                        copy(client, server).await;
                    }
                }
                Tls::Server(acceptor) => {
                    let Ok(client) = acceptor.accept(client).await else { return };
                    if let Some(server) = connect().await {
                        copy(client, server).await;
                    }
                }
            }
        });
    }
}

async fn copy(
    mut a: impl AsyncRead + AsyncWrite + Unpin,
    mut b: impl AsyncRead + AsyncWrite + Unpin,
) {
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}
