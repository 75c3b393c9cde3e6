//! Linkerd's transport header, sent by an outbound proxy at the start of an opaque
//! connection to a meshed peer's inbound port (inside mTLS, ALPN `transport.l5d.io/v1`):
//! it names the target port (and optionally a name and the session protocol), so the
//! connection does not depend on the peer's iptables rules.
//!
//! Wire format: the preface `transport.l5d.io/v1\r\n\r\n`, a 4-byte big-endian length,
//! then a protobuf `transport.l5d.io.Header { int32 port = 1; string name = 2;
//! SessionProtocol session_protocol = 3; }`.

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The ALPN protocol that announces a transport header.
pub const ALPN: &[u8] = b"transport.l5d.io/v1";
const PREFACE: &[u8] = b"transport.l5d.io/v1\r\n\r\n";
/// A header is a port, a DNS name and a tag or two: anything larger is not one.
const MAX_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionProtocol {
    Http1,
    Http2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportHeader {
    pub port: u16,
    pub name: Option<String>,
    pub protocol: Option<SessionProtocol>,
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("the connection does not start with a transport header")]
    NoPreface,
    #[error("transport header of {0} bytes is over the {MAX_LEN}-byte limit")]
    TooLong(usize),
    #[error("transport header is not valid protobuf: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("transport header port {0} is out of range")]
    Port(i32),
    #[error("reading the transport header: {0}")]
    Io(#[from] std::io::Error),
}

mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Header {
        #[prost(int32, tag = "1")]
        pub port: i32,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, optional, tag = "3")]
        pub session_protocol: Option<SessionProtocol>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SessionProtocol {
        #[prost(oneof = "Kind", tags = "1, 2")]
        pub kind: Option<Kind>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Http1(Empty),
        #[prost(message, tag = "2")]
        Http2(Empty),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Empty {}
}

impl TransportHeader {
    pub fn encode(&self) -> BytesMut {
        let msg = proto::Header {
            port: i32::from(self.port),
            name: self.name.clone().unwrap_or_default(),
            session_protocol: self.protocol.as_ref().map(|p| proto::SessionProtocol {
                kind: Some(match p {
                    SessionProtocol::Http1 => proto::Kind::Http1(proto::Empty {}),
                    SessionProtocol::Http2 => proto::Kind::Http2(proto::Empty {}),
                }),
            }),
        };
        let len = msg.encoded_len();
        let mut buf = BytesMut::with_capacity(PREFACE.len() + 4 + len);
        buf.put_slice(PREFACE);
        buf.put_u32(len as u32);
        // Encoding into a buffer with enough capacity cannot fail.
        let _ = msg.encode(&mut buf);
        buf
    }

    fn decode(mut msg: &[u8]) -> Result<Self, HeaderError> {
        let h = proto::Header::decode(&mut msg)?;
        let port =
            u16::try_from(h.port).ok().filter(|p| *p != 0).ok_or(HeaderError::Port(h.port))?;
        Ok(TransportHeader {
            port,
            name: (!h.name.is_empty()).then_some(h.name),
            protocol: h.session_protocol.and_then(|p| p.kind).map(|k| match k {
                proto::Kind::Http1(_) => SessionProtocol::Http1,
                proto::Kind::Http2(_) => SessionProtocol::Http2,
            }),
        })
    }

    /// Reads a header from the start of `io`; bytes after it stay in `buf`.
    pub async fn read(
        io: &mut (impl AsyncRead + Unpin),
        buf: &mut BytesMut,
    ) -> Result<Self, HeaderError> {
        while buf.len() < PREFACE.len() + 4 {
            if !PREFACE.starts_with(&buf[..buf.len().min(PREFACE.len())]) {
                return Err(HeaderError::NoPreface);
            }
            if io.read_buf(buf).await? == 0 {
                return Err(HeaderError::NoPreface);
            }
        }
        if &buf[..PREFACE.len()] != PREFACE {
            return Err(HeaderError::NoPreface);
        }
        let len = u32::from_be_bytes([
            buf[PREFACE.len()],
            buf[PREFACE.len() + 1],
            buf[PREFACE.len() + 2],
            buf[PREFACE.len() + 3],
        ]) as usize;
        if len > MAX_LEN {
            return Err(HeaderError::TooLong(len));
        }
        buf.advance(PREFACE.len() + 4);
        while buf.len() < len {
            if io.read_buf(buf).await? == 0 {
                return Err(HeaderError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        let msg = buf.split_to(len);
        Self::decode(&msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_with_the_rest_of_the_stream_kept() {
        let h = TransportHeader {
            port: 5432,
            name: Some("db.prod.svc.cluster.local".into()),
            protocol: Some(SessionProtocol::Http2),
        };
        let mut wire = h.encode().to_vec();
        wire.extend_from_slice(b"after");
        // One byte at a time, as a slow peer would send it.
        let mut io = tokio_test_reader(wire);
        let mut buf = BytesMut::new();
        assert_eq!(TransportHeader::read(&mut io, &mut buf).await.expect("header"), h);
        let mut rest = buf.to_vec();
        io.read_to_end(&mut rest).await.expect("rest");
        assert_eq!(rest, b"after");
    }

    #[test]
    fn matches_linkerds_encoding() {
        // Port 4040, no name, HTTP/2: fields 1 (varint) and 3 (message holding field 2).
        let h = TransportHeader { port: 4040, name: None, protocol: Some(SessionProtocol::Http2) };
        let mut want = PREFACE.to_vec();
        let msg = [0x08, 0xc8, 0x1f, 0x1a, 0x02, 0x12, 0x00];
        want.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        want.extend_from_slice(&msg);
        assert_eq!(h.encode().to_vec(), want);
    }

    #[tokio::test]
    async fn refuses_bad_headers() {
        type Check = fn(&HeaderError) -> bool;
        let cases: [(Vec<u8>, &str, Check); 5] = [
            (b"GET / HTTP/1.1\r\n\r\n".to_vec(), "no preface", |e| {
                matches!(e, HeaderError::NoPreface)
            }),
            // The length alone is refused: nothing after it is waited for.
            ([PREFACE, &[0, 0, 0x10, 0]].concat(), "too long", |e| {
                matches!(e, HeaderError::TooLong(4096))
            }),
            ([PREFACE, &[0, 0, 0, 2], &[0x08, 0x00]].concat(), "port 0", |e| {
                matches!(e, HeaderError::Port(0))
            }),
            ([PREFACE, &[0, 0, 0, 3], &[0x0a, 0x05, 0x00]].concat(), "truncated protobuf", |e| {
                matches!(e, HeaderError::Decode(_))
            }),
            (
                [PREFACE, &[0, 0, 0, 9]].concat(),
                "eof",
                |e| matches!(e, HeaderError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof),
            ),
        ];
        for (bytes, what, expected) in cases {
            let mut io = std::io::Cursor::new(bytes);
            let mut buf = BytesMut::new();
            match TransportHeader::read(&mut io, &mut buf).await {
                Err(e) => assert!(expected(&e), "{what}: wrong error {e:?}"),
                Ok(h) => panic!("{what}: accepted as {h:?}"),
            }
        }
    }

    /// A reader that yields one byte per read.
    fn tokio_test_reader(bytes: Vec<u8>) -> impl AsyncRead + Unpin {
        struct OneByte(std::collections::VecDeque<u8>);
        impl AsyncRead for OneByte {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                if let Some(b) = self.0.pop_front() {
                    buf.put_slice(&[b]);
                }
                std::task::Poll::Ready(Ok(()))
            }
        }
        OneByte(bytes.into())
    }
}
