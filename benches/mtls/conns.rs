//! The connection-rate side of the mTLS bench: a server that answers one small request
//! per connection and closes, and a closed-loop client that opens a fresh TCP connection
//! for every request — so each request through the mTLS pair costs one TLS 1.3 handshake
//! originated by A and terminated by B.
//!
//! The client can also be a meshed peer itself (`Dial::Mtls`): TLS 1.3 with a client
//! certificate straight to a proxy's inbound port, session resumption off, and a transport
//! header — so every connection is a full handshake for that proxy to terminate.
//!
//! The server closes first (after its answer), as an HTTP/1.0-style server does, and the
//! client waits for that close before it opens its next connection. So every hop's
//! TIME_WAIT stays on its accepting side, and the connecting sides (the client, A, B)
//! never search through ports still in TIME_WAIT: that kernel work would be charged to
//! the proxies and blur the handshake's cost.

use std::{cell::RefCell, net::SocketAddr, rc::Rc, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use rustls::{HandshakeKind, pki_types::ServerName};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use crate::load::{self, Started, Tally, now_ns};

/// Bytes of the request and of its answer.
pub const FRAME: usize = 64;
/// Longest a single connection (connect, request, answer, close) may take.
const CONN_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the server on its own thread (and current-thread runtime): per connection, it
/// reads one frame, writes it back, closes its sending side and waits for the client's
/// close. Returns its address and the thread's kernel id.
pub fn spawn_close_server() -> anyhow::Result<(SocketAddr, i32)> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    // std's 128 would drop SYNs when the closed loop's connections arrive at once.
    socket.listen(4096)?;
    load::spawn_server("close-server", socket.into(), |mut conn| async move {
        let mut buf = [0u8; FRAME];
        if conn.read_exact(&mut buf).await.is_err() {
            return;
        }
        if conn.write_all(&buf).await.is_err() {
            return;
        }
        let _ = conn.shutdown().await;
        let mut rest = [0u8; 256];
        while let Ok(n) = conn.read(&mut rest).await {
            if n == 0 {
                break;
            }
        }
    })
}

/// How the client opens its connections.
#[derive(Clone)]
pub enum Dial {
    /// Plain TCP.
    Tcp,
    /// mTLS to a proxy's inbound port, as a meshed client would (see the module doc).
    Mtls(Arc<MtlsDial>),
}

/// A meshed client's TLS settings: its connector (client certificate, no resumption,
/// ALPN `transport.l5d.io/v1`), the server identity and the transport header to send.
pub struct MtlsDial {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
    pub header: Vec<u8>,
}

/// What a connection-rate point measured.
#[derive(Debug, Clone, Default)]
pub struct ConnResult {
    /// Connections of the window that went through (answer and close) and their latency,
    /// µs from the start of the connect to the whole answer; those that failed.
    pub tally: Tally,
    /// Connections that went through in all, warm-up and tail included (to check
    /// against the proxies' counters).
    pub made: u64,
    /// `Dial::Mtls`: connections whose handshake was a full one (not resumed), in all.
    pub full_handshakes: u64,
}

/// A request: byte 0 is 0x00 (no protocol detection mistakes it for anything but
/// opaque), bytes 1..9 the sequence number, checked on the answer.
fn request(seq: u64) -> [u8; FRAME] {
    let mut frame = [0u8; FRAME];
    frame[1..9].copy_from_slice(&seq.to_le_bytes());
    frame[9..].fill(0x5a);
    frame
}

/// One connection: connect (and handshake), send a frame, read its echo, read the
/// server's close, close. Returns the µs until the answer was in, and whether the
/// handshake was a full one (`Dial::Mtls`).
async fn one(target: SocketAddr, seq: u64, dial: &Dial) -> Result<(u64, bool), String> {
    let started = now_ns();
    let s = TcpStream::connect(target).await.map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    match dial {
        Dial::Tcp => Ok((exchange(s, &[], seq, started).await?, false)),
        Dial::Mtls(m) => {
            let tls = m
                .connector
                .connect(m.server_name.clone(), s)
                .await
                .map_err(|e| format!("mTLS handshake: {e}"))?;
            let full = tls.get_ref().1.handshake_kind() != Some(HandshakeKind::Resumed);
            Ok((exchange(tls, &m.header, seq, started).await?, full))
        }
    }
}

async fn exchange(
    mut s: impl AsyncRead + AsyncWrite + Unpin,
    prefix: &[u8],
    seq: u64,
    started: u64,
) -> Result<u64, String> {
    let sent = [prefix, &request(seq)[..]].concat();
    s.write_all(&sent).await.map_err(|e| format!("send: {e}"))?;
    let mut rsp = [0u8; FRAME];
    s.read_exact(&mut rsp).await.map_err(|e| format!("answer: {e}"))?;
    let answered = now_ns();
    if rsp != request(seq) {
        return Err("the answer is not the request's echo".into());
    }
    let mut more = [0u8; 16];
    match s.read(&mut more).await {
        Ok(0) => {}
        Ok(n) => return Err(format!("{n} bytes after the answer")),
        Err(e) => return Err(format!("waiting for the close: {e}")),
    }
    // TLS: a close_notify, so the proxy sees a clean end.
    let _ = s.shutdown().await;
    Ok((answered - started) / 1000)
}

/// Starts a closed loop of `concurrency` tasks against `target`, each opening a new
/// connection per request, on a new thread. Returns once it started, with the window to
/// be measured; join the handle for the result.
pub fn start(
    target: SocketAddr,
    dial: Dial,
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Started<ConnResult>> {
    load::start_with(warmup, measure, move |begin| async move {
        let (_, window) = begin.now();
        let stats = Rc::new(RefCell::new(ConnResult::default()));
        let tasks: Vec<_> = (0..concurrency as u64)
            .map(|c| {
                let (stats, dial) = (stats.clone(), dial.clone());
                tokio::task::spawn_local(async move {
                    let mut seq = c << 40;
                    loop {
                        let sent = now_ns();
                        if sent >= window.end_ns {
                            return;
                        }
                        let r = tokio::time::timeout(CONN_TIMEOUT, one(target, seq, &dial)).await;
                        let r = r.unwrap_or_else(|_| {
                            Err(format!("no answer and close within {CONN_TIMEOUT:?}"))
                        });
                        let mut s = stats.borrow_mut();
                        s.made += u64::from(r.is_ok());
                        s.full_handshakes += u64::from(r.as_ref().is_ok_and(|(_, full)| *full));
                        s.tally.record(sent >= window.start_ns, r.map(|(us, _)| us));
                        seq += 1;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.context("connection task")?;
        }
        // The caller samples this thread's CPU time at the window's end: be there.
        let linger = window.end_ns + 100_000_000;
        tokio::time::sleep(Duration::from_nanos(linger.saturating_sub(now_ns()))).await;
        let result = stats.borrow().clone();
        let t = &result.tally;
        if t.completed == 0 && t.errors > 0 {
            bail!("every connection failed, e.g.: {}", t.first_error.as_deref().unwrap_or("?"));
        }
        Ok(result)
    })
}

/// `n` connections one after the other through `target`, to check a path before
/// loading it (and to see what one connection costs on its own).
pub fn check(target: SocketAddr, dial: &Dial, n: usize) -> anyhow::Result<()> {
    let rt = load::runtime()?;
    rt.block_on(async {
        let all = async {
            for seq in 0..n as u64 {
                one(target, seq, dial).await?;
            }
            Ok::<_, String>(())
        };
        match tokio::time::timeout(CONN_TIMEOUT, all).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => bail!("a connection through {target}: {e}"),
            Err(_) => bail!("a connection through {target} timed out"),
        }
    })
}
