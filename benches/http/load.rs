//! The load side of the HTTP bench: the backend (hyper, HTTP/1.1 and HTTP/2 prior
//! knowledge on one port, a fixed response: 64 bytes, or the size the mTLS bench asks
//! for; it reads a request's whole body and says how many bytes it got) and the
//! hyper-based generators (GETs, or POSTs of a fixed body) —
//! open loop (constant arrival rate, latency from the intended send time) and closed
//! loop (max throughput) — over the transport bench's thread, window, open-loop schedule,
//! timerfd pacing and result.
//!
//! HTTP/1.1 open loop: a request is never pipelined (proxies do not take that
//! reliably). Due requests go into one queue that `H1_CONNS` keep-alive connections
//! drain, each taking the next request once its previous response is in; when all are
//! busy a request waits, and that wait counts in its latency since the clock starts at
//! its due time. HTTP/2 open loop: each request is a new stream, sent at its due time on
//! connection `j % H2_CONNS`, never waiting for another.

use std::{cell::RefCell, convert::Infallible, net::SocketAddr, rc::Rc, time::Duration};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version, header::HOST};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Body as _;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    net::TcpStream,
    sync::{Mutex, Notify, mpsc as tmpsc},
};

use crate::load::{
    self, Kind, LoadResult, Pacer, Schedule, Started, Tally, Window, latency_histogram, now_ns,
};

/// Bytes of the backend's response body (unless a size is given).
pub const BODY: usize = 64;
/// HTTP/1.1 connections of the open and the closed loop.
pub const H1_CONNS: usize = 16;
/// HTTP/2 connections of the open and the closed loop.
pub const H2_CONNS: usize = 4;
/// HTTP/2 closed loop: concurrent streams per connection.
pub const H2_STREAMS: usize = 16;
/// The `Host` / `:authority` of every request.
const AUTHORITY: &str = "backend.bench.weft";
/// The backend's answer to a request with a body: how many bytes of it arrived.
const REQUEST_BYTES: &str = "x-request-bytes";
/// How long the open loop waits for the last responses after the last send.
const DRAIN: Duration = Duration::from_secs(5);

static RESPONSE: [u8; BODY] = [b'w'; BODY];

/// The client's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 with keep-alive.
    H1,
    /// HTTP/2 with prior knowledge (h2c).
    H2,
}

impl Proto {
    pub fn label(self) -> &'static str {
        match self {
            Proto::H1 => "HTTP/1.1",
            Proto::H2 => "HTTP/2",
        }
    }
}

/// What every request of a load sends and what its response must carry.
#[derive(Debug, Clone, Copy)]
pub struct Bodies {
    /// Bytes of the request body: 0 for a GET without one, else a POST of that many.
    pub request: usize,
    /// Bytes of the response body, as the backend answers them.
    pub response: usize,
}

impl Bodies {
    /// The HTTP bench's exchange unless told otherwise: a GET, a 64-byte response.
    pub const GET: Bodies = Bodies { request: 0, response: BODY };

    /// What the reports say a request is.
    pub fn describe(self) -> String {
        match self.request {
            0 => format!("GET with a {}-byte response", self.response),
            n => format!("POST of {n} bytes with a {}-byte response", self.response),
        }
    }
}

/// Starts the backend on its own thread (and current-thread runtime), answering
/// `response` bytes. Returns its address and the thread's kernel id. A request went
/// through when its response is a 200 with the whole body and, if it sent a body, the
/// backend's count of that body's bytes.
pub fn spawn_backend(response: usize) -> anyhow::Result<(SocketAddr, i32)> {
    // Static, as the 64-byte one: a response costs the backend the same whatever its size.
    let response: &'static [u8] = if response == BODY {
        &RESPONSE
    } else {
        Box::leak(vec![b'w'; response].into_boxed_slice())
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the backend")?;
    let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    load::spawn_server("backend", listener, move |conn| {
        let server = server.clone();
        async move {
            let svc =
                hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let mut rsp = Response::new(Full::new(Bytes::from_static(response)));
                    if !req.body().is_end_stream() {
                        // Counted as it comes, not gathered.
                        let (mut body, mut n) = (req.into_body(), 0);
                        while let Some(frame) = body.frame().await {
                            match frame {
                                Ok(f) => n += f.data_ref().map_or(0, Bytes::len),
                                Err(_) => {
                                    *rsp.status_mut() = StatusCode::BAD_REQUEST;
                                    break;
                                }
                            }
                        }
                        rsp.headers_mut().insert(REQUEST_BYTES, HeaderValue::from(n));
                    }
                    Ok::<_, Infallible>(rsp)
                });
            let _ = server.serve_connection(TokioIo::new(conn), svc).await;
        }
    })
}

/// One client connection's request handle, what it sends and what it expects back.
#[derive(Debug, Clone)]
struct Sender {
    conn: Conn,
    /// The request body (shared, not copied, per request).
    request: Bytes,
    /// Bytes of the response body.
    response: usize,
}

#[derive(Debug, Clone)]
enum Conn {
    H1(Rc<RefCell<Option<http1::SendRequest<Full<Bytes>>>>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

async fn connect(target: SocketAddr, proto: Proto, bodies: Bodies) -> anyhow::Result<Sender> {
    let tcp =
        TcpStream::connect(target).await.with_context(|| format!("connecting to {target}"))?;
    tcp.set_nodelay(true)?;
    let io = TokioIo::new(tcp);
    let conn = match proto {
        Proto::H1 => {
            let (send, conn) = http1::handshake(io).await.context("HTTP/1.1 handshake")?;
            tokio::task::spawn_local(conn);
            Conn::H1(Rc::new(RefCell::new(Some(send))))
        }
        Proto::H2 => {
            let (send, conn) =
                http2::handshake(TokioExecutor::new(), io).await.context("HTTP/2 handshake")?;
            tokio::task::spawn_local(conn);
            Conn::H2(send)
        }
    };
    let request = Bytes::from(vec![b'u'; bodies.request]);
    Ok(Sender { conn, request, response: bodies.response })
}

impl Sender {
    fn bodies(&self) -> Bodies {
        Bodies { request: self.request.len(), response: self.response }
    }

    fn is_closed(&self) -> bool {
        match &self.conn {
            Conn::H1(s) => s.borrow().as_ref().is_none_or(|s| s.is_closed()),
            Conn::H2(s) => s.is_closed(),
        }
    }

    /// One request and its whole response; `Err` says why it failed.
    async fn roundtrip(&mut self) -> Result<(), String> {
        // A GET, or a POST of the request body.
        let body = &self.request;
        let request = |uri: &str, version| {
            let req = if body.is_empty() { Request::get(uri) } else { Request::post(uri) };
            let req = req.version(version);
            let req = if version == Version::HTTP_2 { req } else { req.header(HOST, AUTHORITY) };
            req.body(Full::new(body.clone())).map_err(|e| e.to_string())
        };
        let rsp = match &mut self.conn {
            Conn::H1(cell) => {
                // Taken out for the request: one request at a time per connection.
                let mut s = cell.borrow_mut().take().ok_or("connection busy")?;
                let req = request("/", Version::HTTP_11)?;
                let rsp = async {
                    s.ready().await?;
                    let rsp = s.send_request(req).await?;
                    let (parts, body) = rsp.into_parts();
                    let body = body.collect().await?.to_bytes();
                    Ok::<_, hyper::Error>((parts, body))
                }
                .await;
                *cell.borrow_mut() = Some(s);
                rsp
            }
            Conn::H2(s) => {
                let req = request(&format!("http://{AUTHORITY}/"), Version::HTTP_2)?;
                async {
                    s.ready().await?;
                    let rsp = s.send_request(req).await?;
                    let (parts, body) = rsp.into_parts();
                    let body = body.collect().await?.to_bytes();
                    Ok::<_, hyper::Error>((parts, body))
                }
                .await
            }
        };
        let sent = |parts: &http::response::Parts| {
            self.request.is_empty()
                || parts.headers.get(REQUEST_BYTES).and_then(|v| v.to_str().ok()?.parse().ok())
                    == Some(self.request.len())
        };
        match rsp {
            Ok((parts, body))
                if parts.status == StatusCode::OK
                    && body.len() == self.response
                    && sent(&parts) =>
            {
                Ok(())
            }
            Ok((parts, body)) => {
                // Who answered, and why, when a proxy says: a wrong answer names its source.
                let header = |name: &str| {
                    parts
                        .headers
                        .get(name)
                        .map(|v| format!(", {name}: {}", v.to_str().unwrap_or("?")))
                };
                Err(format!(
                    "status {}, {} body bytes{}{}{}",
                    parts.status,
                    body.len(),
                    header(REQUEST_BYTES).unwrap_or_default(),
                    header("server").unwrap_or_default(),
                    header("l5d-proxy-error").unwrap_or_default()
                ))
            }
            Err(e) => Err(format!("{e} ({e:?})")),
        }
    }
}

/// Counts of a load point, shared by its tasks (one thread).
#[derive(Debug)]
struct Stats {
    window: Window,
    tally: Tally,
}

impl Stats {
    fn new(window: Window) -> Rc<RefCell<Stats>> {
        Rc::new(RefCell::new(Stats { window, tally: Tally::default() }))
    }

    /// Records a request that counts from `start_ns`, if that is in the window.
    fn record(&mut self, start_ns: u64, result: Result<(), String>) {
        let in_window = start_ns >= self.window.start_ns && start_ns < self.window.end_ns;
        let latency = result.map(|()| now_ns().saturating_sub(start_ns) / 1000);
        self.tally.record(in_window, latency);
    }
}

/// Starts a load point against `target` on a new thread, its requests and responses as
/// `bodies` says. Returns once the connections are up, with the window to be measured;
/// join the handle for the result.
pub fn start(
    target: SocketAddr,
    proto: Proto,
    bodies: Bodies,
    kind: Kind,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Started<LoadResult>> {
    load::start_with(warmup, measure, move |begin| async move {
        let n = match proto {
            Proto::H1 => H1_CONNS,
            Proto::H2 => H2_CONNS,
        };
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let mut c = connect(target, proto, bodies).await?;
            // One request each first, so the whole path is up before the clock starts.
            c.roundtrip().await.map_err(|e| anyhow::anyhow!("a first request: {e}"))?;
            conns.push(c);
        }
        let (t0, window) = begin.now();
        match kind {
            Kind::Open { rate } => open_loop(target, proto, conns, rate, t0, window).await,
            Kind::Closed => closed_loop(target, proto, conns, window).await,
        }
    })
}

async fn open_loop(
    target: SocketAddr,
    proto: Proto,
    mut conns: Vec<Sender>,
    rate: u64,
    t0: u64,
    window: Window,
) -> anyhow::Result<LoadResult> {
    let sched = Schedule::new(rate, t0, window);
    let stats = Stats::new(window);
    let mut lateness = latency_histogram();
    let mut pacer = Pacer::new(&sched)?;
    let deadline = tokio::time::Instant::now()
        + Duration::from_nanos(window.end_ns.saturating_sub(now_ns()))
        + DRAIN;
    match proto {
        Proto::H1 => {
            let (tx, rx) = tmpsc::unbounded_channel::<u64>();
            let rx = Rc::new(Mutex::new(rx));
            let workers: Vec<_> = conns
                .into_iter()
                .map(|conn| {
                    let (rx, stats) = (rx.clone(), stats.clone());
                    tokio::task::spawn_local(async move {
                        let mut conn = conn;
                        loop {
                            let Some(start) = rx.lock().await.recv().await else { break };
                            let r = conn.roundtrip().await;
                            let failed = r.is_err();
                            stats.borrow_mut().record(start, r);
                            if failed && conn.is_closed() {
                                conn = connect(target, proto, conn.bodies()).await?;
                            }
                        }
                        Ok::<_, anyhow::Error>(())
                    })
                })
                .collect();
            while let Some(range) = pacer.due().await? {
                for j in range {
                    sched.note_lateness(j, &mut lateness);
                    tx.send(sched.due(j)).context("the HTTP/1.1 workers are gone")?;
                }
            }
            drop(tx);
            let _ = tokio::time::timeout_at(deadline, async {
                for w in workers {
                    if let Ok(Err(e)) = w.await {
                        let mut stats = stats.borrow_mut();
                        stats.tally.first_error.get_or_insert(format!("reconnect: {e:#}"));
                    }
                }
            })
            .await;
        }
        Proto::H2 => {
            let outstanding = Rc::new(RefCell::new(0u64));
            let idle = Rc::new(Notify::new());
            while let Some(range) = pacer.due().await? {
                for j in range {
                    let c = (j % conns.len() as u64) as usize;
                    if conns[c].is_closed() {
                        conns[c] = connect(target, proto, conns[c].bodies()).await?;
                    }
                    sched.note_lateness(j, &mut lateness);
                    let mut conn = conns[c].clone();
                    let (stats, outstanding, idle) =
                        (stats.clone(), outstanding.clone(), idle.clone());
                    *outstanding.borrow_mut() += 1;
                    tokio::task::spawn_local(async move {
                        let r = conn.roundtrip().await;
                        stats.borrow_mut().record(sched.due(j), r);
                        *outstanding.borrow_mut() -= 1;
                        if *outstanding.borrow() == 0 {
                            idle.notify_one();
                        }
                    });
                }
            }
            let _ = tokio::time::timeout_at(deadline, async {
                while *outstanding.borrow() > 0 {
                    idle.notified().await;
                }
            })
            .await;
        }
    }
    let scheduled = (0..sched.total).filter(|&j| sched.in_window(j)).count() as u64;
    let tally = stats.borrow().tally.clone();
    let missing = scheduled.saturating_sub(tally.completed + tally.errors);
    Ok(LoadResult { tally, missing, send_lateness: lateness })
}

async fn closed_loop(
    target: SocketAddr,
    proto: Proto,
    conns: Vec<Sender>,
    window: Window,
) -> anyhow::Result<LoadResult> {
    let stats = Stats::new(window);
    let per_conn = match proto {
        Proto::H1 => 1,
        Proto::H2 => H2_STREAMS,
    };
    let workers: Vec<_> = conns
        .iter()
        .flat_map(|c| std::iter::repeat_n(c, per_conn))
        .map(|conn| {
            let (mut conn, stats) = (conn.clone(), stats.clone());
            tokio::task::spawn_local(async move {
                loop {
                    let sent = now_ns();
                    if sent >= window.end_ns {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let r = conn.roundtrip().await;
                    let failed = r.is_err();
                    stats.borrow_mut().record(sent, r);
                    if failed && conn.is_closed() {
                        conn = connect(target, proto, conn.bodies()).await?;
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.context("closed-loop task")??;
    }
    let tally = stats.borrow().tally.clone();
    if tally.completed == 0 && tally.errors > 0 {
        bail!("every request failed, e.g.: {}", tally.first_error.as_deref().unwrap_or("?"));
    }
    Ok(LoadResult { tally, missing: 0, send_lateness: latency_histogram() })
}

/// One HTTP request through `target`, to check a path before loading it.
pub fn check(target: SocketAddr, proto: Proto, bodies: Bodies) -> anyhow::Result<()> {
    let rt = load::runtime()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let mut c = tokio::time::timeout(Duration::from_secs(5), connect(target, proto, bodies))
            .await
            .context("connect timed out")??;
        match tokio::time::timeout(Duration::from_secs(5), c.roundtrip()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => bail!("{} request to {target}: {e}", proto.label()),
            Err(_) => bail!("{} request to {target} timed out", proto.label()),
        }
    })
}
