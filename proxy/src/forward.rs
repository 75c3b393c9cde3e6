//! Opaque forwarding: copies bytes both ways between two TCP streams, keeping half-close
//! (one side's EOF becomes a write shutdown on the other) and backpressure (a read is
//! not taken until the previous bytes are written). Bytes pass through one buffer per
//! thread that is lent only for a non-blocking read and write: only what the peer could
//! not take at once is copied to the heap, so neither an idle nor a busy connection
//! holds a buffer between reads.

use std::{cell::RefCell, io};

use bytes::BytesMut;
use tokio::{
    io::AsyncWriteExt,
    net::{
        TcpStream,
        tcp::{ReadHalf, WriteHalf},
    },
};

use crate::metrics::ConnMetrics;

/// Largest read taken from one side before it is written to the other.
const CHUNK: usize = 16 * 1024;

/// Forwards until both directions have finished; `prefix` (bytes already read from the
/// client during detection) goes to the upstream first and is freed once written. On an
/// error in either direction both sockets are set to reset when dropped, so the peers
/// see what failed.
pub async fn forward(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    prefix: BytesMut,
    src: &ConnMetrics,
    dst: &ConnMetrics,
) -> io::Result<()> {
    let result = {
        let (client_r, mut client_w) = client.split();
        let (upstream_r, mut upstream_w) = upstream.split();
        let to_upstream = async {
            if !prefix.is_empty() {
                // Read from the client during detection, counted here once forwarded.
                src.read_bytes.inc_by(prefix.len() as u64);
                upstream_w.write_all(&prefix).await?;
                dst.write_bytes.inc_by(prefix.len() as u64);
            }
            drop(prefix);
            copy(&client_r, &mut upstream_w, src, dst).await
        };
        let to_client = copy(&upstream_r, &mut client_w, dst, src);
        tokio::try_join!(to_upstream, to_client).map(|_| ())
    };
    if result.is_err() {
        reset_on_drop(client);
        reset_on_drop(upstream);
    }
    result
}

/// What one non-blocking read-and-write step left to do.
enum Step {
    /// Everything read was written; read again.
    Done,
    /// Nothing to read now.
    WouldBlock,
    /// The peer finished sending.
    Eof,
    /// The writer could not take all of it: the rest, to write with backpressure.
    Rest(Vec<u8>),
}

/// One direction: `from` is read and counted as `read_bytes` of its peer's metrics,
/// what is written to `to` as `write_bytes` of the other's.
async fn copy(
    from: &ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    from_metrics: &ConnMetrics,
    to_metrics: &ConnMetrics,
) -> io::Result<()> {
    loop {
        from.readable().await?;
        loop {
            match step(from, to, from_metrics, to_metrics)? {
                Step::Done => {}
                Step::WouldBlock => break,
                Step::Eof => {
                    // The peer already gone is not an error of this direction: the
                    // other direction reports it.
                    let _ = to.shutdown().await;
                    return Ok(());
                }
                Step::Rest(rest) => {
                    to.write_all(&rest).await?;
                    to_metrics.write_bytes.inc_by(rest.len() as u64);
                }
            }
        }
    }
}

thread_local! {
    /// The thread's read buffer, lent to one step at a time: a step never awaits, so no
    /// connection holds it, and it is not zeroed again for every read as a fresh stack
    /// buffer would be.
    static BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; CHUNK].into_boxed_slice());
}

/// Reads what is there into the thread's buffer and writes as much as the peer takes,
/// without waiting.
fn step(
    from: &ReadHalf<'_>,
    to: &WriteHalf<'_>,
    from_metrics: &ConnMetrics,
    to_metrics: &ConnMetrics,
) -> io::Result<Step> {
    BUF.with_borrow_mut(|buf| step_with(buf, from, to, from_metrics, to_metrics))
}

fn step_with(
    buf: &mut [u8],
    from: &ReadHalf<'_>,
    to: &WriteHalf<'_>,
    from_metrics: &ConnMetrics,
    to_metrics: &ConnMetrics,
) -> io::Result<Step> {
    let n = match read_draining(from.as_ref(), buf) {
        Ok(0) => return Ok(Step::Eof),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::WouldBlock),
        Err(e) => return Err(e),
    };
    from_metrics.read_bytes.inc_by(n as u64);
    let written = match to.try_write(&buf[..n]) {
        Ok(w) => w,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    to_metrics.write_bytes.inc_by(written as u64);
    Ok(if written == n { Step::Done } else { Step::Rest(buf[written..n].to_vec()) })
}

/// A non-blocking read that, when it comes back short of `buf`, takes the socket as
/// drained and clears its readiness (as tokio's own `poll_read` does): the next read then
/// waits for the next event instead of costing a system call that only says "empty".
/// Bytes arriving meanwhile raise a new event, which the clearing does not lose.
fn read_draining(stream: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read as _;
    let mut got = None;
    let r = stream.try_io(tokio::io::Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(stream)).read(buf)?;
        got = Some(n);
        if n > 0 && n < buf.len() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (r, got) {
        (Ok(n), _) => Ok(n),
        (Err(_), Some(n)) => Ok(n),
        (Err(e), None) => Err(e),
    }
}

/// Makes the socket send RST instead of FIN when it is closed.
pub fn reset_on_drop(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}
