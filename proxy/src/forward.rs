//! Opaque forwarding: copies bytes both ways between two TCP streams, keeping half-close
//! (one side's EOF becomes a write shutdown on the other) and backpressure (a read is
//! not taken until the previous bytes are written). Buffers are taken only while bytes
//! are flowing, so an idle connection holds none.

use std::io;

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
/// client during detection) goes to the upstream first. On an error in either
/// direction both sockets are set to reset when dropped, so the peers see what failed.
pub async fn forward(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    prefix: &[u8],
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
                upstream_w.write_all(prefix).await?;
                dst.write_bytes.inc_by(prefix.len() as u64);
            }
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
        let mut buf = Vec::with_capacity(CHUNK);
        loop {
            buf.clear();
            match from.try_read_buf(&mut buf) {
                Ok(0) => {
                    // The peer already gone is not an error of this direction: the
                    // other direction reports it.
                    let _ = to.shutdown().await;
                    return Ok(());
                }
                Ok(n) => {
                    from_metrics.read_bytes.inc_by(n as u64);
                    to.write_all(&buf).await?;
                    to_metrics.write_bytes.inc_by(n as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Makes the socket send RST instead of FIN when it is closed.
pub fn reset_on_drop(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}
