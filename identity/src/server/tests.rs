//! The identity server in-process (real sockets, real TLS): the refusals only the server's
//! wiring can show — the decoder's, counted under their reasons, and the connection limits
//! it applies (shortened here through `ConnectionLimits`), counted by reason.
#![allow(clippy::unwrap_used)]

use bytes::{Buf, BufMut};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncReadExt;
use tonic::codec::{DecodeBuf, EncodeBuf};

use super::*;
use crate::{
    IdentityDomain, SharedTrust,
    client::tests::TempDir,
    control::{Connector, ControlAddr, ServiceTls},
    pki::{PkiParams, generate_pki},
    server::metrics::ReasonLabels,
};

struct Served {
    addr: String,
    anchor_pem: String,
    metrics: CaMetrics,
    _dir: TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(limits: ConnectionLimits) -> Served {
    let dir = TempDir::new("server");
    let pki = generate_pki(&PkiParams::for_trust_domain("cluster.local")).unwrap();
    let file = |name: &str, data: &str| {
        std::fs::write(dir.0.join(name), data).unwrap();
        dir.0.join(name)
    };
    let config = Config {
        ca: CaConfig::new(domain()),
        issuer_cert: file("issuer.crt", &pki.issuer_pem),
        issuer_key: file("issuer.key", &pki.issuer_key_pem),
        trust_bundle: file("ca.crt", &pki.anchor_pem),
        tokens: TokenSource::Static(file("tokens.yaml", "web-token: prod/web\n")),
        reload_interval: Duration::from_secs(3600),
    };
    let svc = IdentityService::load(config).unwrap().with_connection_limits(limits);
    let metrics = svc.metrics.clone();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        svc.serve(grpc, admin, std::future::pending()).await.unwrap();
    });
    Served { addr, anchor_pem: pki.anchor_pem, metrics, _dir: dir, server }
}

fn domain() -> IdentityDomain {
    IdentityDomain::new("weft", "cluster.local").unwrap()
}

/// Connects as a proxy does: TLS, the service verified by name and anchor.
fn connector(s: &Served) -> Connector {
    let trust =
        SharedTrust::new(TrustBundle::from_pem("anchors", s.anchor_pem.as_bytes()).unwrap())
            .unwrap();
    let tls = ServiceTls::new(trust, domain().identity_service_name().clone(), None).unwrap();
    let addr: ControlAddr = s.addr.parse().unwrap();
    Connector::new("identity", addr, None, Some(tls), Duration::from_secs(5))
}

/// Sends messages as given, so that requests no client would build can be made.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

fn refusals(m: &CaMetrics, reason: &'static str) -> u64 {
    m.refusals.get_or_create(&ReasonLabels { reason }).get()
}

fn connections_refused(m: &CaMetrics, reason: &'static str) -> u64 {
    m.connections_refused.get_or_create(&ReasonLabels { reason }).get()
}

/// What tonic's decoder refuses never reaches the CA, yet is counted: undecodable requests
/// as `malformed_request`, too large ones as `message_too_large`; a request the CA refuses
/// is counted once, under its own reason; another method is not a Certify.
#[tokio::test]
async fn decoder_refusals_are_counted() {
    let s = serve(ConnectionLimits::default()).await;
    let c = connector(&s);
    let channel = c.endpoint().connect_with_connector(c.clone()).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let certify =
        http::uri::PathAndQuery::from_static("/io.linkerd.proxy.identity.Identity/Certify");
    let mut call = async |path: http::uri::PathAndQuery, body: Vec<u8>| {
        grpc.ready().await.unwrap();
        grpc.unary(tonic::Request::new(body), path, Raw).await.unwrap_err().code()
    };
    let undecodable: [&[u8]; 3] = [
        // identity (field 1, a string) not UTF-8
        &[0x0a, 0x03, 0xff, 0xfe, b'x'],
        // a length that runs past the end
        &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        // field 1 as a varint
        &[0x08, 0x01],
    ];
    for (i, body) in undecodable.into_iter().enumerate() {
        assert_eq!(call(certify.clone(), body.to_vec()).await, tonic::Code::Internal, "{body:?}");
        assert_eq!(refusals(&s.metrics, "malformed_request"), i as u64 + 1, "{body:?}");
    }
    let big = vec![0x0a; MAX_REQUEST_BYTES + 1];
    assert_eq!(call(certify.clone(), big).await, tonic::Code::OutOfRange);
    assert_eq!(refusals(&s.metrics, "message_too_large"), 1);
    // An empty request decodes (every field absent): the CA refuses it, counted once.
    assert_eq!(call(certify.clone(), vec![]).await, tonic::Code::InvalidArgument);
    assert_eq!(refusals(&s.metrics, "missing_field"), 1);
    let other = http::uri::PathAndQuery::from_static("/io.linkerd.proxy.identity.Identity/Other");
    assert_eq!(call(other, vec![]).await, tonic::Code::Unimplemented);
    assert_eq!(refusals(&s.metrics, "malformed_request"), 3, "counted again");
}

/// A connection that completed TLS and the preface, and then holds on, is closed at its
/// maximum age, gracefully: the client sees the connection end, not an error.
#[tokio::test]
async fn connections_end_gracefully_at_their_max_age() {
    let limits =
        ConnectionLimits { max_connection_age: Duration::from_millis(300), ..Default::default() };
    let s = serve(limits).await;
    let io = connector(&s).connect().await.unwrap();
    let (_sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<bytes::Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(io),
    )
    .await
    .unwrap();
    // 10 s: without an age limit the server keeps it for ever (its keepalive pings answered).
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(matches!(ended, Ok(Ok(()))), "not closed gracefully: {ended:?}");
}

/// The server applies the listener's deadlines and counts the refusal under its reason: a
/// client that completes TLS and sends nothing is closed.
#[tokio::test]
async fn idle_tls_connections_are_closed_and_counted() {
    let incoming =
        incoming::Limits { handshake_timeout: Duration::from_millis(300), ..Default::default() };
    let s = serve(ConnectionLimits { incoming, ..Default::default() }).await;
    let mut io = connector(&s).connect().await.unwrap();
    let mut buf = [0u8; 64];
    // 10 s: the deadline is 300 ms. A TLS close_notify, then EOF, or a reset.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    assert!(closed.await.is_ok(), "kept open");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while connections_refused(&s.metrics, "preface_timeout") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "not counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
