//! The HTTP layer's client connections over real sockets, through a whole proxy: idle
//! connections closed, upgrades bounded in time and counted against the connection limit.

use std::time::Instant;

use http_body_util::channel::{Channel, Sender};
use hyper_util::rt::TokioExecutor;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::timeout,
};

use super::*;
use crate::test_proxy;

const IDLE: Duration = Duration::from_millis(300);

/// An HTTP/2 upstream that answers every request with headers at once and a body that
/// goes on until the test drops its sender (sent on the returned channel).
async fn streaming_h2_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Sender<Bytes>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            let tx = tx.clone();
            let svc = service_fn(move |_req| {
                let (sender, body) = Channel::<Bytes>::new(4);
                let _ = tx.send(sender);
                async move { Ok::<_, Infallible>(Response::new(body)) }
            });
            let c = conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), svc);
            tokio::spawn(c);
        }
    });
    (addr, rx)
}

/// Reads until the proxy closes the connection; panics past `limit`.
async fn until_closed(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let read = timeout(limit, s.read_to_end(&mut got)).await.expect("still open");
    if let Err(e) = read {
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "read: {e}");
    }
    got
}

/// A client that sends the HTTP/2 preface and nothing else is disconnected once idle
/// (and once its GOAWAY's ping goes unanswered for the close grace); an HTTP/1 client
/// after its response the same way.
#[tokio::test]
async fn idle_client_connections_are_closed() {
    let (upstream, _bodies) = streaming_h2_upstream().await;
    let proxy = test_proxy::start(upstream, &["--http-idle-timeout=300ms"]);

    let started = Instant::now();
    let mut h2 = TcpStream::connect(proxy.inbound).await.expect("connect");
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.expect("preface");
    let got = until_closed(&mut h2, crate::idle::CLOSE_GRACE + Duration::from_secs(3)).await;
    assert!(!got.is_empty(), "the server's SETTINGS and GOAWAY first");
    assert!(started.elapsed() >= IDLE, "closed before it was idle: {:?}", started.elapsed());

    // HTTP/1: the upstream speaks HTTP/2 only, so the answer is the proxy's 502; then
    // the keep-alive connection is closed once idle.
    let started = Instant::now();
    let mut h1 = TcpStream::connect(proxy.inbound).await.expect("connect");
    h1.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await.expect("request");
    let got = until_closed(&mut h1, Duration::from_secs(5)).await;
    assert!(got.starts_with(b"HTTP/1.1 "), "{}", String::from_utf8_lossy(&got));
    assert!(started.elapsed() >= IDLE, "closed before it was idle: {:?}", started.elapsed());
}

/// The proxy's `/metrics`, from its admin port.
async fn scrape(admin: SocketAddr) -> String {
    let mut s = TcpStream::connect(admin).await.expect("connect to the admin port");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: admin\r\n\r\n").await.expect("request");
    let mut got = Vec::new();
    timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await.expect("scraped").expect("read");
    String::from_utf8_lossy(&got).into_owned()
}

/// `inbound_http_errors_total{error}`'s value (0 when absent).
fn http_errors(metrics: &str, error: &str) -> u64 {
    let series = format!("inbound_http_errors_total{{error=\"{error}\"}} ");
    let line = metrics.lines().find_map(|l| l.strip_prefix(series.as_str()));
    line.map_or(0, |v| v.trim().parse().expect("a count"))
}

/// An HTTP/1 keep-alive connection closed because it sat idle after its response is not
/// an error; a client that sends part of a request head and stalls is a header timeout.
#[tokio::test]
async fn an_idle_http1_keep_alive_close_is_not_a_header_timeout() {
    let (upstream, _bodies) = streaming_h2_upstream().await;
    let proxy = test_proxy::start(upstream, &["--http-idle-timeout=300ms"]);

    for _ in 0..2 {
        let mut idle = TcpStream::connect(proxy.inbound).await.expect("connect");
        idle.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n").await.expect("request");
        let got = until_closed(&mut idle, Duration::from_secs(5)).await;
        assert!(got.starts_with(b"HTTP/1.1 "), "{}", String::from_utf8_lossy(&got));
    }
    let mut stalled = TcpStream::connect(proxy.inbound).await.expect("connect");
    stalled.write_all(b"GET / HTTP/1.1\r\nHost: we").await.expect("part of a request head");
    let got = until_closed(&mut stalled, Duration::from_secs(5)).await;
    assert!(!got.starts_with(b"HTTP/1.1 2"), "{}", String::from_utf8_lossy(&got));

    // The proxy counts after the client saw the close: wait for the stalled one's count.
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let m = scrape(proxy.admin).await;
        if http_errors(&m, "header_timeout") > 0 || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(http_errors(&metrics, "header_timeout"), 1, "the stalled client only\n{metrics}");
}

/// A stream in flight keeps its HTTP/2 connection open, however long it lasts, and the
/// connection takes new streams after it.
#[tokio::test]
async fn an_http2_connection_with_a_stream_open_is_not_idle() {
    let (upstream, mut bodies) = streaming_h2_upstream().await;
    let proxy = test_proxy::start(upstream, &["--http-idle-timeout=300ms"]);
    let io = TcpStream::connect(proxy.inbound).await.expect("connect");
    let (mut client, conn) = h2::client::handshake(io).await.expect("handshake");
    let conn = tokio::spawn(conn);
    let get = || Request::get("http://web/stream").body(()).expect("request");

    let (rsp, _) = client.send_request(get(), true).expect("send");
    let rsp = timeout(Duration::from_secs(5), rsp).await.expect("in time").expect("headers");
    let mut body = rsp.into_body();
    let mut upstream_body = bodies.recv().await.expect("upstream got the request");
    // Several idle timeouts with the stream open and nothing sent either way.
    tokio::time::sleep(IDLE * 5).await;
    assert!(!conn.is_finished(), "connection closed with a stream open");
    upstream_body.send_data(Bytes::from_static(b"still here")).await.expect("send");
    let chunk = timeout(Duration::from_secs(5), body.data()).await.expect("in time");
    assert_eq!(chunk.expect("data").expect("data"), "still here");
    drop(upstream_body);

    // No GOAWAY came: a new stream is taken.
    let mut client = client.ready().await.expect("no GOAWAY");
    let (rsp, _) = client.send_request(get(), true).expect("send");
    let rsp = timeout(Duration::from_secs(5), rsp).await.expect("in time").expect("headers");
    assert_eq!(rsp.status(), StatusCode::OK);
}

/// An upstream's read of a request head, byte by byte (nothing past it); `None` if the
/// connection ends first.
async fn request_head(io: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if io.read(&mut byte).await.unwrap_or(0) == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(head)
}

/// An HTTP/1 upstream that reads a request's headers and then, with `switch`, answers 101
/// and echoes what it gets; without, says nothing and keeps the connection open.
async fn upgrade_upstream(switch: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut io, _)) = listener.accept().await {
            tokio::spawn(async move {
                if request_head(&mut io).await.is_none() {
                    return;
                }
                if !switch {
                    // Holds the connection, silent, until the proxy drops it.
                    let _ = io.read(&mut [0u8; 1]).await;
                    return;
                }
                let switched =
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
                if io.write_all(switched).await.is_ok() {
                    let (mut r, mut w) = io.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                }
            });
        }
    });
    addr
}

const UPGRADE: &[u8] =
    b"GET /chat HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";

/// Reads a response's head (through the blank line).
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        match timeout(Duration::from_secs(5), s.read(&mut byte)).await.expect("in time") {
            Ok(0) | Err(_) => break,
            Ok(_) => head.push(byte[0]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// An upstream that never answers an `Upgrade` gets the client a 504 with
/// `l5d-proxy-error` once the response-header timeout passes, as any request would.
#[tokio::test]
async fn an_unanswered_upgrade_times_out_with_504() {
    let upstream = upgrade_upstream(false).await;
    let proxy = test_proxy::start(upstream, &["--http-response-header-timeout=300ms"]);
    let started = Instant::now();
    let mut client = TcpStream::connect(proxy.inbound).await.expect("connect");
    client.write_all(UPGRADE).await.expect("send");
    let head = read_head(&mut client).await;
    let took = started.elapsed();
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(head.contains("l5d-proxy-error: response timeout"), "{head}");
    assert!(took >= Duration::from_millis(300), "before the timeout: {took:?}");
}

/// A WebSocket tunnel holds its client connection's slot: with `--max-connections 1`, a
/// second client is refused while the tunnel is open, and served once it has closed.
#[tokio::test]
async fn an_open_tunnel_counts_against_the_connection_limit() {
    let upstream = upgrade_upstream(true).await;
    let proxy = test_proxy::start(upstream, &["--max-connections=1"]);
    let mut tunnel = TcpStream::connect(proxy.inbound).await.expect("connect");
    tunnel.write_all(UPGRADE).await.expect("send");
    let head = read_head(&mut tunnel).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tunnel.write_all(b"ping").await.expect("send");
    let mut echo = [0u8; 4];
    timeout(Duration::from_secs(5), tunnel.read_exact(&mut echo))
        .await
        .expect("echo")
        .expect("read");
    assert_eq!(&echo, b"ping");

    // The tunnel is open: a second connection is closed unanswered.
    let mut second = TcpStream::connect(proxy.inbound).await.expect("connect");
    let _ = second.write_all(UPGRADE).await;
    let mut got = Vec::new();
    let read = timeout(Duration::from_secs(5), second.read_to_end(&mut got)).await;
    assert!(read.expect("refused in time").is_err() || got.is_empty(), "served: {got:?}");

    // The tunnel still works, and once it closes the slot is free again.
    tunnel.write_all(b"pong").await.expect("send");
    timeout(Duration::from_secs(5), tunnel.read_exact(&mut echo))
        .await
        .expect("echo")
        .expect("read");
    assert_eq!(&echo, b"pong");
    drop(tunnel);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut next = TcpStream::connect(proxy.inbound).await.expect("connect");
        let _ = next.write_all(UPGRADE).await;
        if read_head(&mut next).await.starts_with("HTTP/1.1 101") {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was not given back after the tunnel closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP/1 upstream on raw sockets that answers each request `200 ok` as soon as it has
/// the head; with `close_after`, it closes the connection that long after its answer
/// (without saying so); otherwise it reads the request's body (`Content-Length`), reports
/// it on the channel and waits for the next request. Counts the connections it accepted.
async fn raw_h1_upstream(
    close_after: Option<Duration>,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut io, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(head) = request_head(&mut io).await {
                    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if io.write_all(ok).await.is_err() {
                        return;
                    }
                    if let Some(after) = close_after {
                        tokio::time::sleep(after).await;
                        return;
                    }
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().expect("a length"));
                    let mut body = vec![0u8; length];
                    if io.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let _ = tx.send(body);
                }
            });
        }
    });
    (addr, accepted, rx)
}

/// One request through the proxy on a connection of its own; the whole response.
async fn get_once(proxy: SocketAddr) -> String {
    let mut s = TcpStream::connect(proxy).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n").await.expect("send");
    String::from_utf8_lossy(&until_closed(&mut s, Duration::from_secs(5)).await).into_owned()
}

/// Nothing drives a pooled HTTP/1 connection while it is idle: one the upstream closed
/// meanwhile (with no `Connection: close`) is found closed before the request is written
/// to it, and the request goes on a new connection rather than failing on the dead one.
#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_while_idle_is_not_used() {
    let (upstream, accepted, _bodies) = raw_h1_upstream(Some(Duration::from_millis(20))).await;
    let proxy = test_proxy::start(upstream, &[]);
    for i in 1..=3 {
        let got = get_once(proxy.inbound).await;
        assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("ok"), "request {i}: {got}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// An upstream that answers before the request's body has all come: the connection goes
/// on carrying the body after the response has ended, and is pooled once it is sent.
#[tokio::test]
async fn a_connection_answered_before_its_request_body_ended_is_pooled_after_it() {
    let (upstream, accepted, mut bodies) = raw_h1_upstream(None).await;
    let proxy = test_proxy::start(upstream, &[]);
    let mut client = TcpStream::connect(proxy.inbound).await.expect("connect");
    let head = b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 10\r\n\r\n12345";
    client.write_all(head).await.expect("send");
    let rsp = read_head(&mut client).await;
    assert!(rsp.starts_with("HTTP/1.1 200"), "{rsp}");
    let mut ok = [0u8; 2];
    timeout(Duration::from_secs(5), client.read_exact(&mut ok)).await.expect("body").expect("read");
    client.write_all(b"67890").await.expect("the rest of the body");
    let body = timeout(Duration::from_secs(5), bodies.recv()).await.expect("the body came");
    assert_eq!(body.as_deref(), Some(&b"1234567890"[..]));

    tokio::time::sleep(Duration::from_millis(100)).await;
    let got = get_once(proxy.inbound).await;
    assert!(got.starts_with("HTTP/1.1 200") && got.ends_with("ok"), "{got}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "the connection was reused");
}

/// What a future's wakers saw while it was polled by hand: wake-ups that came while it was
/// being polled (self-inflicted: the task would be polled again for nothing) and the others.
#[derive(Default)]
struct Wakes {
    polling: std::sync::atomic::AtomicBool,
    during_poll: std::sync::atomic::AtomicUsize,
    between_polls: std::sync::atomic::AtomicUsize,
}

impl std::task::Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        use std::sync::atomic::Ordering::SeqCst;
        match self.polling.load(SeqCst) {
            true => self.during_poll.fetch_add(1, SeqCst),
            false => self.between_polls.fetch_add(1, SeqCst),
        };
    }
}

impl Wakes {
    /// Polls `f` to its end with this waker, each time after a wake-up.
    async fn drive<F: Future>(self: &Arc<Self>, f: F) -> F::Output {
        use std::sync::atomic::Ordering::SeqCst;
        let waker = std::task::Waker::from(self.clone());
        let mut f = std::pin::pin!(f);
        loop {
            let woken = self.between_polls.load(SeqCst) + self.during_poll.load(SeqCst);
            self.polling.store(true, SeqCst);
            let r = f.as_mut().poll(&mut std::task::Context::from_waker(&waker));
            self.polling.store(false, SeqCst);
            if let std::task::Poll::Ready(v) = r {
                return v;
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.between_polls.load(SeqCst) + self.during_poll.load(SeqCst) == woken {
                assert!(Instant::now() < deadline, "never woken");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// A request that drives its upstream HTTP/1 connection (queues itself on it, writes it,
/// reads the response's head and body) is woken only by its sockets: the hand-overs inside
/// the connection (the request's queue, the response's oneshot, the body's channel) do not
/// wake the request's own task while it polls, which would poll the whole task once more
/// for nothing. Three requests, so the pooled connection's second and third count too.
#[tokio::test]
async fn a_request_driving_its_http1_connection_does_not_wake_itself() {
    let (upstream, accepted, _bodies) = raw_h1_upstream(None).await;
    let config = PoolConfig {
        connect: crate::transport::ConnectOpts { timeout: Duration::from_secs(5), keepalive: None },
        idle_timeout: Duration::from_secs(60),
        max_header_bytes: 8192,
    };
    let pool = Pool::new(Direction::Outbound, crate::Metrics::new(10), config, None);
    for i in 1..=3 {
        let wakes = Arc::new(Wakes::default());
        let req = Request::get("/").header("host", "web").body(pool::empty_body()).expect("req");
        let sent = pool.send(pool::Key::plain(upstream), Version::HTTP_11, req);
        let rsp = wakes.drive(sent).await.map_err(|f| f.error).expect("response");
        let body = wakes.drive(rsp.into_body().collect()).await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok", "request {i}");
        use std::sync::atomic::Ordering::SeqCst;
        assert_eq!(wakes.during_poll.load(SeqCst), 0, "request {i}: self-inflicted wake-ups");
        assert!(wakes.between_polls.load(SeqCst) >= 1, "request {i}: woken by its socket");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "the connection was reused");
}
