//! Linkerd's transport header as a peer sends it. Arbitrary bytes, delivered in arbitrary
//! chunks: reading never panics, never takes more than the header, and a header it accepts
//! encodes back to one that reads the same. Any header we encode reads back as itself.
#![no_main]

use std::{
    pin::Pin,
    task::{Context, Poll, Waker},
};

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use weft_proxy::transport_header::{SessionProtocol, TransportHeader};

/// A peer that sends its bytes in the chunk sizes the fuzzer picks.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    chunks: Vec<u8>,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.chunks.pop().map_or(usize::MAX, |c| usize::from(c).max(1));
        let n = n.min(self.data.len() - self.pos).min(buf.remaining());
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Runs a future whose I/O never waits.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("reading from an in-memory peer never waits"),
    }
}

fn read(data: Vec<u8>, chunks: Vec<u8>) -> (Result<TransportHeader, String>, Vec<u8>) {
    let mut io = Chunked { data, pos: 0, chunks };
    let mut buf = BytesMut::new();
    let h = ready(TransportHeader::read(&mut io, &mut buf)).map_err(|e| e.to_string());
    // What the proxy forwards after the header: the buffered rest, then the stream.
    let mut rest = buf.to_vec();
    rest.extend_from_slice(&io.data[io.pos..]);
    (h, rest)
}

#[derive(Arbitrary, Debug)]
struct Input {
    port: u16,
    name: Option<String>,
    protocol: Option<bool>,
    chunks: Vec<u8>,
    raw: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };

    // Arbitrary bytes from a peer.
    let (h, rest) = read(input.raw.clone(), input.chunks.clone());
    if let Ok(h) = h {
        assert!(rest.len() < input.raw.len(), "a header was read from no bytes");
        assert!(input.raw.ends_with(&rest), "bytes after the header were lost or changed");
        let (again, _) = read(h.encode().to_vec(), Vec::new());
        assert_eq!(again, Ok(h));
    }

    // A header we send.
    let h = TransportHeader {
        port: input.port,
        name: input.name.filter(|n| !n.is_empty()),
        protocol: input
            .protocol
            .map(|h2| if h2 { SessionProtocol::Http2 } else { SessionProtocol::Http1 }),
    };
    let mut wire = h.encode().to_vec();
    wire.extend_from_slice(&input.raw);
    let (got, rest) = read(wire, input.chunks);
    if h.port != 0 && h.encode().len() <= 1024 + 27 {
        assert_eq!(got, Ok(h));
        assert_eq!(rest, input.raw);
    }
});
