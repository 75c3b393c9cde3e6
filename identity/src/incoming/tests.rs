//! The accept path against real sockets and real TLS: caps per listener and per client
//! address, refusals at once rather than queueing, the ClientHello and preface deadlines
//! (shortened through `Limits`), and the preface replayed to the server.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpSocket,
};
use tokio_rustls::TlsConnector;
use tonic::codegen::tokio_stream::StreamExt;

use super::*;

/// A ClientHello for `localhost`, as rustls sends it.
fn client_hello() -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    hello
}

/// A server for `localhost` and a client that trusts it.
fn tls() -> (TlsAcceptor, TlsConnector) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![key.cert.der().clone()], der)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(key.cert.der().clone()).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (TlsAcceptor::from(Arc::new(server)), TlsConnector::from(Arc::new(client)))
}

/// A TCP connection to `addr` from the loopback address `from` (any of 127/8 on Linux),
/// so that one test can play several clients.
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

const ONE: [u8; 4] = [127, 0, 0, 1];
const TWO: [u8; 4] = [127, 0, 0, 2];

/// TLS done, from `from`.
async fn tls_from(
    from: [u8; 4],
    addr: SocketAddr,
    connector: &TlsConnector,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = connect_from(from, addr).await;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// Reads until the server closes; an error (a reset) counts as closed too.
async fn closed_within<S: AsyncRead + Unpin>(mut c: S, d: Duration) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(d, c.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// Whether the server answers a ClientHello (with a ServerHello) within 5 s.
async fn answered(mut client: TcpStream) -> bool {
    client.write_all(&client_hello()).await.unwrap();
    let mut buf = [0u8; 5];
    let read = tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf));
    matches!(read.await, Ok(Ok(_))) && buf[0] == 22
}

/// The refusals reported, in order, and the peers of the TLS connections reported done.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Refused>>>, Arc<Mutex<Vec<SocketAddr>>>);

impl Seen {
    fn on_handshake(&self) -> OnHandshake {
        let (seen, done) = (self.0.clone(), self.1.clone());
        Arc::new(move |h| match h {
            Handshake::Refused { reason, .. } => seen.lock().unwrap().push(reason),
            Handshake::Done(info) => done.lock().unwrap().push(info.peer),
            _ => {}
        })
    }

    fn done(&self) -> Vec<SocketAddr> {
        std::mem::take(&mut *self.1.lock().unwrap())
    }

    /// The refusals reported since the last call, once there are `n` (a connection may be
    /// closed just before its refusal is reported), or after 5 s whatever there are.
    async fn take(&self, n: usize) -> Vec<Refused> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.0.lock().unwrap().len() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Limits for tests: deadlines long enough never to fire unless the test shortens them.
fn limits() -> Limits {
    Limits {
        client_hello_timeout: Duration::from_secs(600),
        handshake_timeout: Duration::from_secs(600),
        ..Limits::default()
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, SocketAddr::from((ONE, port)))
}

/// With every connection slot held (here by a client still in its handshake), a new
/// connection is closed at once and reported; once the slot is free, one is served.
#[tokio::test]
async fn tls_connections_are_capped() {
    let (listener, addr) = listener().await;
    let seen = Seen::default();
    let (acceptor, _) = tls();
    let limits = Limits { max_connections: 1, ..limits() };
    let _incoming = TlsIncoming::new(listener, acceptor, seen.on_handshake(), limits);

    let holder = TcpStream::connect(addr).await.unwrap();
    let mut refused_conn = TcpStream::connect(addr).await.unwrap();
    let _ = refused_conn.write_all(&client_hello()).await;
    assert!(closed_within(refused_conn, Duration::from_secs(5)).await, "not closed");
    assert_eq!(seen.take(1).await, [Refused::MaxConnections]);

    drop(holder);
    // The slot comes back when the holder's handshake ends (at its EOF).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !answered(TcpStream::connect(addr).await.unwrap()).await {
        assert!(tokio::time::Instant::now() < deadline, "the slot never came back");
    }
}

/// Plaintext: a connection is handed out once it has sent the preface, which it replays;
/// the permit is held by the connection handed out, and one beyond the cap is closed and
/// reported until that one is dropped.
#[tokio::test]
async fn plaintext_connections_are_capped() {
    let (listener, addr) = listener().await;
    let seen = Seen::default();
    let limits = Limits { max_connections: 1, ..limits() };
    let mut incoming = PlainIncoming::new(listener, seen.on_handshake(), limits);
    let mut c1 = TcpStream::connect(addr).await.unwrap();
    c1.write_all(PREFACE).await.unwrap();
    c1.write_all(b"settings").await.unwrap();
    let mut first = incoming.next().await.unwrap().unwrap();
    let mut replayed = [0u8; PREFACE.len() + 8];
    first.read_exact(&mut replayed).await.unwrap();
    assert_eq!(&replayed[..PREFACE.len()], PREFACE);
    assert_eq!(&replayed[PREFACE.len()..], b"settings");

    let c2 = TcpStream::connect(addr).await.unwrap();
    assert!(closed_within(c2, Duration::from_secs(5)).await, "not closed");
    assert_eq!(seen.take(1).await, [Refused::MaxConnections]);
    drop(first);
    let mut c3 = TcpStream::connect(addr).await.unwrap();
    c3.write_all(PREFACE).await.unwrap();
    let third = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
    assert!(matches!(third, Ok(Some(Ok(_)))), "not served once the slot was free");
}

/// With every handshake slot held by a silent client, a new client is refused at once
/// (it retries) instead of waiting in the listen backlog behind it; once the silent one
/// leaves, a client is answered.
#[tokio::test]
async fn beyond_the_handshake_cap_clients_are_refused_not_queued() {
    let (listener, addr) = listener().await;
    let seen = Seen::default();
    let (acceptor, _) = tls();
    let limits = Limits { max_handshakes: 1, ..limits() };
    let _incoming = TlsIncoming::new(listener, acceptor, seen.on_handshake(), limits);

    let silent = connect_from(TWO, addr).await;
    let mut client = connect_from(ONE, addr).await;
    let _ = client.write_all(&client_hello()).await;
    assert!(closed_within(client, Duration::from_secs(5)).await, "left waiting, not refused");
    assert_eq!(seen.take(1).await, [Refused::MaxHandshakes]);
    drop(silent);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !answered(connect_from(ONE, addr).await).await {
        assert!(tokio::time::Instant::now() < deadline, "the slot never came back");
    }
}

/// One address with silent sockets takes its share of the handshake slots, not all: its
/// next socket is refused, and another client is still answered.
#[tokio::test]
async fn one_client_cannot_take_every_handshake_slot() {
    let (listener, addr) = listener().await;
    let seen = Seen::default();
    let (acceptor, _) = tls();
    let limits = Limits { max_handshakes: 3, max_client_handshakes: 2, ..limits() };
    let _incoming = TlsIncoming::new(listener, acceptor, seen.on_handshake(), limits);

    let _silent = [connect_from(TWO, addr).await, connect_from(TWO, addr).await];
    let third = connect_from(TWO, addr).await;
    assert!(closed_within(third, Duration::from_secs(5)).await, "not refused");
    assert_eq!(seen.take(1).await, [Refused::MaxClientHandshakes]);
    assert!(answered(connect_from(ONE, addr).await).await, "another client was not answered");
}

/// One address holding established connections takes its share, not the listener's cap.
#[tokio::test]
async fn one_client_cannot_take_every_connection() {
    let (listener, addr) = listener().await;
    let seen = Seen::default();
    let (acceptor, connector) = tls();
    let limits = Limits { max_connections: 3, max_client_connections: 1, ..limits() };
    let mut incoming = TlsIncoming::new(listener, acceptor, seen.on_handshake(), limits);

    let mut held = tls_from(TWO, addr, &connector).await;
    held.write_all(PREFACE).await.unwrap();
    let _served = incoming.next().await.unwrap().unwrap();
    let second = connect_from(TWO, addr).await;
    assert!(closed_within(second, Duration::from_secs(5)).await, "not refused");
    assert_eq!(seen.take(1).await, [Refused::MaxClientConnections]);
    let mut other = tls_from(ONE, addr, &connector).await;
    other.write_all(PREFACE).await.unwrap();
    let served = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
    assert!(matches!(served, Ok(Some(Ok(_)))), "another client was not served");
}

/// A silent socket, and one that sends part of a ClientHello and stops, give their slot
/// back at the (short) ClientHello deadline, long before the handshake deadline.
#[tokio::test]
async fn the_client_hello_must_come_soon() {
    let (listener, addr) = listener().await;
    let seen = Seen::default();
    let (acceptor, _) = tls();
    let limits = Limits { client_hello_timeout: Duration::from_millis(200), ..limits() };
    let _incoming = TlsIncoming::new(listener, acceptor, seen.on_handshake(), limits);

    let silent = TcpStream::connect(addr).await.unwrap();
    let mut dripped = TcpStream::connect(addr).await.unwrap();
    dripped.write_all(&client_hello()[..10]).await.unwrap();
    // 10 s: the handshake deadline is 600 s, so only the ClientHello one can close them.
    assert!(closed_within(silent, Duration::from_secs(10)).await, "silent socket kept");
    assert!(closed_within(dripped, Duration::from_secs(10)).await, "dripping socket kept");
    assert_eq!(seen.take(2).await, [Refused::ClientHelloTimeout, Refused::ClientHelloTimeout]);
}

/// After TLS, the HTTP/2 preface must come before the handshake deadline, or the
/// connection is closed without reaching the server; something else is refused at once;
/// the preface and what follows it reach the server intact.
#[tokio::test]
async fn tls_clients_must_send_the_preface() {
    let (listener, addr) = listener().await;
    let seen = Seen::default();
    let (acceptor, connector) = tls();
    let limits = Limits { handshake_timeout: Duration::from_millis(500), ..limits() };
    let mut incoming = TlsIncoming::new(listener, acceptor, seen.on_handshake(), limits);

    let idle = tls_from(ONE, addr, &connector).await;
    let idle_addr = idle.get_ref().0.local_addr().unwrap();
    assert!(closed_within(idle, Duration::from_secs(10)).await, "idle TLS connection kept");
    assert_eq!(seen.take(1).await, [Refused::PrefaceTimeout]);
    // Its TLS handshake was reported done: it proved whatever identity it had.
    assert_eq!(seen.done(), [idle_addr]);

    let mut http1 = tls_from(ONE, addr, &connector).await;
    http1.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert!(closed_within(http1, Duration::from_secs(10)).await, "HTTP/1 connection kept");
    assert_eq!(seen.take(1).await, [Refused::NotHttp2]);
    assert!(incoming.rx.try_recv().is_err(), "a refused connection reached the server");
    assert_eq!(seen.done().len(), 1);

    let mut h2 = tls_from(ONE, addr, &connector).await;
    // In two writes, the second with what follows the preface.
    h2.write_all(&PREFACE[..10]).await.unwrap();
    h2.flush().await.unwrap();
    h2.write_all(&[&PREFACE[10..], b"settings".as_slice()].concat()).await.unwrap();
    h2.flush().await.unwrap();
    let h2_addr = h2.get_ref().0.local_addr().unwrap();
    let mut served = incoming.next().await.unwrap().unwrap();
    // Reported (the destination service counts TLS connections by client identity).
    assert_eq!(seen.done(), [h2_addr]);
    assert_eq!(tonic::transport::server::Connected::connect_info(&served).peer, h2_addr);
    let mut replayed = [0u8; PREFACE.len() + 8];
    // In small reads, as a server may read.
    for chunk in replayed.chunks_mut(7) {
        served.read_exact(chunk).await.unwrap();
    }
    assert_eq!(&replayed[..PREFACE.len()], PREFACE);
    assert_eq!(&replayed[PREFACE.len()..], b"settings");
    assert!(seen.take(0).await.is_empty());
}

/// Plaintext: a silent connection is closed at the (short) first-bytes deadline, since the
/// preface is what a plaintext client sends first; one sending something else at once,
/// with a GOAWAY.
#[tokio::test]
async fn plaintext_clients_must_send_the_preface_soon() {
    let (listener, addr) = listener().await;
    let seen = Seen::default();
    let limits = Limits { client_hello_timeout: Duration::from_millis(200), ..limits() };
    let mut incoming = PlainIncoming::new(listener, seen.on_handshake(), limits);
    let silent = TcpStream::connect(addr).await.unwrap();
    // 10 s: the handshake deadline is 600 s, so only the first-bytes one can close it.
    assert!(closed_within(silent, Duration::from_secs(10)).await, "silent socket kept");
    assert_eq!(seen.take(1).await, [Refused::PrefaceTimeout]);
    // A TLS client of this plaintext server (a proxy expecting TLS) gets a GOAWAY, which it
    // reports as a corrupt TLS message, then the close.
    let mut tls_client = TcpStream::connect(addr).await.unwrap();
    tls_client.write_all(&client_hello()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls_client.read_to_end(&mut answer));
    assert!(read.await.is_ok(), "kept open");
    assert_eq!(answer, GOAWAY_PROTOCOL_ERROR);
    assert_eq!(seen.take(1).await, [Refused::NotHttp2]);
    assert!(incoming.rx.try_recv().is_err(), "a refused connection reached the server");
}

/// On a dual-stack listener IPv4 clients show as `::ffff:a.b.c.d`, all in one IPv6 /64:
/// each is still its own client (its IPv4 address), and one address's sockets still count
/// together.
#[tokio::test]
async fn ipv4_clients_of_a_dual_stack_listener_are_not_one_64() {
    let listener = TcpListener::bind("[::]:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let addr = SocketAddr::from((ONE, port));
    let seen = Seen::default();
    let (acceptor, _) = tls();
    let limits = Limits { max_client_handshakes: 1, ..limits() };
    let _incoming = TlsIncoming::new(listener, acceptor, seen.on_handshake(), limits);

    let _silent = connect_from(TWO, addr).await;
    let again = connect_from(TWO, addr).await;
    assert!(closed_within(again, Duration::from_secs(5)).await, "not refused");
    assert_eq!(seen.take(1).await, [Refused::MaxClientHandshakes]);
    assert!(
        answered(connect_from([127, 0, 0, 3], addr).await).await,
        "another IPv4 client refused"
    );
    assert!(seen.take(0).await.is_empty());
}

#[test]
fn limits_are_checked() {
    assert_eq!(Limits::default().check(), Ok(()));
    let equal = Limits { max_client_connections: 8192, max_client_handshakes: 512, ..limits() };
    assert_eq!(equal.check(), Ok(()));
    let zero = |l: Limits| l.check().unwrap_err().to_string();
    for (limits, flag) in [
        (Limits { max_connections: 0, ..limits() }, "--max-connections "),
        (Limits { max_client_connections: 0, ..limits() }, "--max-client-connections "),
        (Limits { max_handshakes: 0, ..limits() }, "--max-handshakes "),
        (Limits { max_client_handshakes: 0, ..limits() }, "--max-client-handshakes "),
    ] {
        let e = zero(limits);
        assert!(e.starts_with(flag) && e.contains("at least 1"), "{e}");
    }
    let e = Limits { max_client_connections: 8193, ..limits() }.check().unwrap_err();
    assert_eq!(
        e.to_string(),
        "--max-client-connections (8193) must not be more than --max-connections (8192): it is \
         one client's share of the listener's cap"
    );
    let e = Limits { max_handshakes: 64, ..limits() }.check().unwrap_err();
    assert!(
        e.to_string().starts_with(
            "--max-client-handshakes (128) must not be more than --max-handshakes (64)"
        ),
        "{e}"
    );
}
