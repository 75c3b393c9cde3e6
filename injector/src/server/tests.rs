//! The webhook server's caps over real sockets and real TLS, lowered so that a test can
//! reach them: the connection cap closes connections past it at once, and a review that
//! finds no slot is answered 503; each counted.

use std::{path::PathBuf, sync::Arc};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;

use super::*;

struct Running {
    webhook: SocketAddr,
    admin: SocketAddr,
    /// The webhook's certificate (DER), for the clients to trust.
    cert: Vec<u8>,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start(tag: &str, limits: Limits) -> Running {
    let dir = std::env::temp_dir().join(format!("weft-injector-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let generated =
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a certificate");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::write(&cert, generated.cert.pem()).expect("write the certificate");
    std::fs::write(&key, generated.signing_key.serialize_pem()).expect("write the key");
    let namespaces = dir.join("namespaces.yaml");
    std::fs::write(&namespaces, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n")
        .expect("write the namespaces");
    let config = ServerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: ([127, 0, 0, 1], 0).into(),
        cert,
        key,
        cert_reload_interval: Duration::from_secs(60),
        max_body_bytes: 1 << 20,
        shutdown_grace: Duration::from_secs(1),
        // Far above the slot wait: a held review is not cut off during the test.
        request_timeout: Duration::from_secs(30),
        injector: InjectorConfig::default(),
    };
    let bound = Bound::bind(config).await.expect("bind").with_limits(limits);
    let (webhook, admin) = (bound.webhook_addr().expect("addr"), bound.admin_addr().expect("addr"));
    let namespaces = Namespaces::from_file(&namespaces).expect("namespaces");
    tokio::spawn(bound.run(namespaces, Registry::default(), std::future::pending()));
    Running { webhook, admin, cert: generated.cert.der().to_vec(), _dir: TempDir(dir) }
}

async fn tls_connect(r: &Running) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(r.cert.clone().into()).expect("a root");
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(r.webhook).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

/// A review of `body` on a fresh connection: the whole answer, as text.
async fn post(r: &Running, body: &str) -> String {
    let mut tls = tls_connect(r).await.expect("a connection");
    let head = format!(
        "POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(format!("{head}{body}").as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer));
    read.await.expect("answered in time").expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// `weft_injector_requests_refused_total{reason}`, from the admin port.
async fn refused(r: &Running, reason: &str) -> f64 {
    let mut s = TcpStream::connect(r.admin).await.expect("connect to the admin port");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: admin\r\n\r\n").await.expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).await.expect("read");
    let series = format!("weft_injector_requests_refused_total{{reason=\"{reason}\"}} ");
    let value = text.lines().find_map(|l| l.strip_prefix(series.as_str()));
    value.map_or(0.0, |v| v.trim().parse().expect("a number"))
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_once_and_counted() {
    crate::tls::install_provider();
    let r = start("conn-cap", Limits { connections: 1, ..Limits::default() }).await;
    let held = tls_connect(&r).await.expect("the first connection");
    // Past the cap: accepted and closed, no handshake.
    let mut over = TcpStream::connect(r.webhook).await.expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "closed at once: {read:?}");
    assert!(tls_connect(&r).await.is_err(), "no handshake past the cap");
    assert_eq!(refused(&r, "connections").await, 2.0);
    // The slot comes back when the held connection goes.
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tls_connect(&r).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = post(&r, "{}").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_review_that_finds_no_slot_is_answered_503_and_counted() {
    crate::tls::install_provider();
    let r = start("review-cap", Limits { reviews_in_flight: 1, ..Limits::default() }).await;
    // One review holds the only slot: its body never finishes.
    let mut held = tls_connect(&r).await.expect("a connection");
    let head = "POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                Content-Length: 1000\r\n\r\n{\"kind\":";
    held.write_all(head.as_bytes()).await.expect("write");
    held.flush().await.expect("flush");
    // Until the held review has its slot, another would be served; wait for a refusal.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let answer = post(&r, "{}").await;
        if answer.starts_with("HTTP/1.1 503") || tokio::time::Instant::now() > deadline {
            break answer;
        }
    };
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("busy (1 reviews in flight)"), "{answer}");
    assert_eq!(refused(&r, "overloaded").await, 1.0);
    // The slot comes back with the held review.
    drop(held);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let answer = post(&r, "{}").await;
        if answer.starts_with("HTTP/1.1 200") || tokio::time::Instant::now() > deadline {
            break answer;
        }
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
