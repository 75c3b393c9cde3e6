//! The load side of the transport bench: the echo server, the open-loop generator
//! (constant arrival rate, latency measured from the intended send time) and the
//! closed-loop one, and a holder of idle connections.
//!
//! The generator runs on a current-thread runtime on its own thread. Its send schedule is
//! paced by a `timerfd` registered with that runtime rather than by tokio's timer, whose
//! 1 ms granularity would add up to a millisecond of generator lateness to every
//! latency measured from the intended send time.
//!
//! The HTTP and mTLS benches reuse the thread, the window, the pacing and the counts
//! (`start_with`, `Pacer`, `Tally`) with their own clients, and `spawn_server` for their
//! servers.

use std::{
    future::Future,
    io::{self, Read as _, Write as _},
    net::SocketAddr,
    ops::Range,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::mpsc,
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    io::{Interest, unix::AsyncFd},
    net::{TcpListener, TcpStream, tcp::OwnedWriteHalf},
    task::LocalSet,
};

/// Bytes of one request and of its response.
pub const FRAME: usize = 64;
/// Connections of the open and the closed loop.
pub const CONNS: usize = 16;
/// How long the open loop waits for the last responses after the last send.
const DRAIN: Duration = Duration::from_secs(5);

/// Nanoseconds of CLOCK_MONOTONIC: the one time base of schedules, samples and windows.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write to; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps the calling OS thread until `deadline_ns` (CLOCK_MONOTONIC).
pub fn sleep_until_ns(deadline_ns: u64) {
    let now = now_ns();
    if deadline_ns > now {
        std::thread::sleep(Duration::from_nanos(deadline_ns - now));
    }
}

/// Kernel thread id of the calling thread (for per-thread CPU time in /proc).
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

pub fn latency_histogram() -> Histogram<u64> {
    // Microseconds, 1 µs to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
}

pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// Serves `listener` on a thread of its own named `name`, with a current-thread runtime:
/// each connection it accepts gets `TCP_NODELAY` and a task running `serve`. Returns the
/// listening address and the thread's kernel id.
pub fn spawn_server<F, Fut>(
    name: &str,
    listener: std::net::TcpListener,
    serve: F,
) -> anyhow::Result<(SocketAddr, i32)>
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let rt = runtime()?;
    // Registered with the runtime here, so that a failure is this call's error.
    let listener = {
        let _runtime = rt.enter();
        TcpListener::from_std(listener).with_context(|| format!("registering the {name}"))?
    };
    let (tid_tx, tid_rx) = mpsc::channel();
    std::thread::Builder::new().name(name.into()).spawn(move || {
        let _ = tid_tx.send(gettid());
        rt.block_on(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    // Out of descriptors: let some close.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = conn.set_nodelay(true);
                tokio::spawn(serve(conn));
            }
        });
    })?;
    Ok((addr, tid_rx.recv().with_context(|| format!("{name} thread died at start"))?))
}

/// Starts the echo server: every byte received is written back, so a 64-byte request gets
/// its 64-byte response. Returns the listening address and the thread's kernel id.
pub fn spawn_echo() -> anyhow::Result<(SocketAddr, i32)> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding the echo server")?;
    spawn_server("echo", listener, |mut conn| async move {
        let mut buf = [0u8; 4096];
        loop {
            let n = match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if conn.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    })
}

/// A request: its first byte is 0x00, which protocol detection rules out as TLS, HTTP/2
/// and HTTP/1 at once (so detection decides "opaque" on the first read); bytes 1..9
/// carry the request's sequence number, checked on the echoed response.
fn request(seq: u64) -> [u8; FRAME] {
    let mut frame = [0u8; FRAME];
    frame[1..9].copy_from_slice(&seq.to_le_bytes());
    frame[9..].fill(0xa5);
    frame
}

fn seq_of(frame: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&frame[1..9]);
    u64::from_le_bytes(b)
}

/// What a load point is.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// Constant arrival rate (requests per second over all connections).
    Open { rate: u64 },
    /// Each connection sends its next request when the previous response is in.
    Closed,
}

/// The measured interval, on the `now_ns` clock, and the generator thread's kernel id.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: u64,
    pub tid: i32,
}

/// What a load point measured inside its window.
#[derive(Debug)]
pub struct LoadResult {
    /// Latency from the intended send time (open loop) or the send (closed loop).
    pub tally: Tally,
    /// Requests of the window whose response never came (open loop).
    pub missing: u64,
    /// Open loop: how late the generator queued or sent, in µs (its own error, part of the
    /// latency).
    pub send_lateness: Histogram<u64>,
}

/// The counts of a window: what went through in it and its latency, what failed.
#[derive(Debug, Clone)]
pub struct Tally {
    /// µs, of what went through in the window.
    pub latency: Histogram<u64>,
    /// Requests (or connections) of the window that went through.
    pub completed: u64,
    /// Those of the window that failed: an error status, a broken connection.
    pub errors: u64,
    /// The first failure, in the window or not.
    pub first_error: Option<String>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally { latency: latency_histogram(), completed: 0, errors: 0, first_error: None }
    }
}

impl Tally {
    /// Records a request (or connection) that went through after `Ok(µs)` or failed, and
    /// counts it if it belongs to the window.
    pub fn record(&mut self, in_window: bool, result: Result<u64, String>) {
        match result {
            Ok(us) if in_window => {
                self.latency.saturating_record(us);
                self.completed += 1;
            }
            Ok(_) => {}
            Err(e) => {
                self.errors += u64::from(in_window);
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// Adds the counts of `other` (another connection's, say).
    pub fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.latency.add(&other.latency).context("merging histograms")?;
        self.completed += other.completed;
        self.errors += other.errors;
        if let Some(e) = other.first_error {
            self.first_error.get_or_insert(e);
        }
        Ok(())
    }
}

/// A load started by `start_with`: the window to be measured, and the thread to join for
/// the result.
pub type Started<T> = (Window, Running<T>);

/// A load thread. Done with its load, it waits to be joined, so that its CPU time can be
/// read after the window however soon the load ended.
#[derive(Debug)]
pub struct Running<T> {
    handle: JoinHandle<anyhow::Result<T>>,
    release: mpsc::Sender<()>,
}

/// The result of a load thread started by `start_with`.
pub fn join<T>(load: Running<T>) -> anyhow::Result<T> {
    drop(load.release);
    match load.handle.join() {
        Ok(r) => r,
        Err(_) => bail!("the load thread panicked"),
    }
}

/// Starts a load point against `target` on a new thread. Returns once the connections
/// are up, with the window to be measured; join the handle for the result.
pub fn start(
    target: SocketAddr,
    kind: Kind,
    warmup: Duration,
    measure: Duration,
) -> anyhow::Result<Started<LoadResult>> {
    start_with(warmup, measure, move |begin| async move {
        let streams = connect_all(target).await?;
        let (t0, window) = begin.now();
        match kind {
            Kind::Open { rate } => open_loop(streams, rate, t0, window).await,
            Kind::Closed => closed_loop(streams, window).await,
        }
    })
}

/// Fixes a load's schedule once its connections are up, and tells the caller.
#[derive(Debug)]
pub struct Begin {
    tx: mpsc::Sender<Window>,
    warmup: Duration,
    measure: Duration,
}

impl Begin {
    /// Returns `t0`, when the (unrecorded) warm-up starts, and the measured window after it.
    pub fn now(self) -> (u64, Window) {
        let t0 = now_ns() + 20_000_000;
        let start_ns = t0 + self.warmup.as_nanos() as u64;
        let window =
            Window { start_ns, end_ns: start_ns + self.measure.as_nanos() as u64, tid: gettid() };
        let _ = self.tx.send(window);
        (t0, window)
    }
}

/// Runs `load` on a new thread with a current-thread runtime and a `LocalSet`. `load`
/// connects, calls `Begin::now`, and generates; this returns once it has called `now`.
pub fn start_with<F, Fut, T>(
    warmup: Duration,
    measure: Duration,
    load: F,
) -> anyhow::Result<Started<T>>
where
    F: FnOnce(Begin) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>> + 'static,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    let rt = runtime()?;
    let handle = std::thread::Builder::new().name("load".into()).spawn(move || {
        let local = LocalSet::new();
        let result = local.block_on(&rt, load(Begin { tx, warmup, measure }));
        // Until `join`: only the sender's drop ends this wait.
        let _ = released.recv();
        result
    })?;
    match rx.recv() {
        Ok(window) => Ok((window, Running { handle, release })),
        Err(_) => {
            drop(release);
            match handle.join() {
                Ok(Err(e)) => Err(e),
                _ => bail!("load thread died before starting"),
            }
        }
    }
}

async fn connect_all(target: SocketAddr) -> anyhow::Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let s =
            TcpStream::connect(target).await.with_context(|| format!("connecting to {target}"))?;
        s.set_nodelay(true)?;
        streams.push(s);
    }
    Ok(streams)
}

/// The open-loop schedule: request `j` is due at `t0 + j * interval`. Here it goes on
/// connection `j % CONNS`, so the connections' schedules interleave.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub t0: u64,
    pub interval: u64,
    /// Requests in all: every one due before the window ends.
    pub total: u64,
    pub window: Window,
}

impl Schedule {
    /// `rate` requests a second from `t0` (the warm-up's start) to the window's end.
    pub fn new(rate: u64, t0: u64, window: Window) -> Schedule {
        let interval = 1_000_000_000 / rate.max(1);
        Schedule { t0, interval, total: (window.end_ns - t0).div_ceil(interval), window }
    }

    pub fn due(&self, j: u64) -> u64 {
        self.t0 + j * self.interval
    }

    pub fn in_window(&self, j: u64) -> bool {
        let t = self.due(j);
        t >= self.window.start_ns && t < self.window.end_ns
    }

    /// Records how late request `j` is being sent, in µs, if it is one of the window's.
    pub fn note_lateness(&self, j: u64, lateness: &mut Histogram<u64>) {
        if self.in_window(j) {
            lateness.saturating_record(now_ns().saturating_sub(self.due(j)) / 1000);
        }
    }
}

async fn open_loop(
    streams: Vec<TcpStream>,
    rate: u64,
    t0: u64,
    window: Window,
) -> anyhow::Result<LoadResult> {
    let sched = Schedule::new(rate, t0, window);
    let mut writers = Vec::with_capacity(CONNS);
    let mut readers = Vec::with_capacity(CONNS);
    for (c, s) in streams.into_iter().enumerate() {
        let (r, w) = s.into_split();
        writers.push(w);
        readers.push(tokio::task::spawn_local(read_responses(r, c as u64, sched)));
    }
    let send_lateness = pace(writers, sched).await?;
    let mut result = LoadResult { tally: Tally::default(), missing: 0, send_lateness };
    for r in readers {
        let (tally, missing) = r.await.context("reader task")??;
        result.tally.merge(tally)?;
        result.missing += missing;
    }
    Ok(result)
}

/// Sends every request at its due time (or as soon after as the process gets to run),
/// never waiting for responses. Returns how late the window's requests were sent.
async fn pace(mut writers: Vec<OwnedWriteHalf>, sched: Schedule) -> anyhow::Result<Histogram<u64>> {
    let mut pacer = Pacer::new(&sched)?;
    let mut lateness = latency_histogram();
    while let Some(due) = pacer.due().await? {
        for j in due {
            sched.note_lateness(j, &mut lateness);
            let w = &mut writers[(j % CONNS as u64) as usize];
            w.write_all(&request(j)).await.context("sending a request")?;
        }
    }
    Ok(lateness)
}

/// An open-loop schedule's sending, woken by a timerfd: hands out each request `j` (below
/// `total`) once it is due.
#[derive(Debug)]
pub struct Pacer {
    timer: AsyncFd<OwnedFd>,
    t0: u64,
    interval: u64,
    total: u64,
    next: u64,
}

impl Pacer {
    pub fn new(sched: &Schedule) -> anyhow::Result<Pacer> {
        let Schedule { t0, interval, total, .. } = *sched;
        // SAFETY: an OwnedFd stays open and keeps its descriptor for as long as it is owned.
        let timer =
            unsafe { AsyncFd::register_with_interest(timerfd(t0, interval)?, Interest::READABLE) }
                .map_err(|e| anyhow::anyhow!("registering the timerfd: {e}"))?;
        Ok(Pacer { timer, t0, interval, total, next: 0 })
    }

    /// Waits until at least one more request is due and returns those now due (several
    /// when this thread ran late); `None` once all `total` have been handed out.
    pub async fn due(&mut self) -> anyhow::Result<Option<Range<u64>>> {
        while self.next < self.total {
            let mut guard = self.timer.readable().await?;
            let mut expirations = [0u8; 8];
            let read = guard.try_io(|fd| {
                // SAFETY: reading 8 bytes into an 8-byte buffer from a timerfd we own.
                let n = unsafe { libc::read(fd.as_raw_fd(), expirations.as_mut_ptr().cast(), 8) };
                if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
            });
            match read {
                Ok(r) => r.context("reading the timerfd")?,
                Err(_would_block) => continue,
            }
            let due = (now_ns().saturating_sub(self.t0) / self.interval + 1).min(self.total);
            if due > self.next {
                let range = self.next..due;
                self.next = due;
                return Ok(Some(range));
            }
        }
        Ok(None)
    }
}

/// A periodic CLOCK_MONOTONIC timerfd: first expiry at `first_ns`, then every `interval_ns`.
fn timerfd(first_ns: u64, interval_ns: u64) -> io::Result<OwnedFd> {
    let ts = |ns: u64| libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: plain syscalls; the returned descriptor is checked and then owned.
    unsafe {
        let fd =
            libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let spec = libc::itimerspec { it_interval: ts(interval_ns), it_value: ts(first_ns) };
        if libc::timerfd_settime(
            fd.as_raw_fd(),
            libc::TFD_TIMER_ABSTIME,
            &spec,
            std::ptr::null_mut(),
        ) < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// Reads connection `c`'s responses in order; the k-th is the answer to request
/// `k * CONNS + c`, whose latency counts from its due time. Returns the window's
/// counts and its missing count.
async fn read_responses(
    mut r: tokio::net::tcp::OwnedReadHalf,
    c: u64,
    sched: Schedule,
) -> anyhow::Result<(Tally, u64)> {
    let expected = if c < sched.total { (sched.total - c).div_ceil(CONNS as u64) } else { 0 };
    let deadline = tokio::time::Instant::now()
        + Duration::from_nanos(sched.window.end_ns.saturating_sub(now_ns()))
        + DRAIN;
    let mut tally = Tally::default();
    let mut buf = [0u8; FRAME * 64];
    let (mut filled, mut k) = (0, 0u64);
    while k < expected {
        let n = match tokio::time::timeout_at(deadline, r.read(&mut buf[filled..])).await {
            Err(_) => break,
            Ok(Ok(0)) => bail!("connection {c} closed after {k} of {expected} responses"),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e).context("reading responses"),
        };
        let now = now_ns();
        filled += n;
        let frames = filled / FRAME;
        for frame in buf[..frames * FRAME].chunks_exact(FRAME) {
            let j = k * CONNS as u64 + c;
            if seq_of(frame) != j {
                bail!(
                    "connection {c}: response {k} carries sequence {} instead of {j}",
                    seq_of(frame)
                );
            }
            tally.record(sched.in_window(j), Ok(now.saturating_sub(sched.due(j)) / 1000));
            k += 1;
        }
        buf.copy_within(frames * FRAME..filled, 0);
        filled -= frames * FRAME;
    }
    let missing = (k..expected).filter(|&k| sched.in_window(k * CONNS as u64 + c)).count() as u64;
    Ok((tally, missing))
}

async fn closed_loop(streams: Vec<TcpStream>, window: Window) -> anyhow::Result<LoadResult> {
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(c, s)| tokio::task::spawn_local(ping_pong(s, c as u64, window)))
        .collect();
    let mut result =
        LoadResult { tally: Tally::default(), missing: 0, send_lateness: latency_histogram() };
    for t in tasks {
        result.tally.merge(t.await.context("closed-loop task")??)?;
    }
    Ok(result)
}

/// One closed-loop connection: send, wait for the whole response, repeat until the
/// window ends. Counts the requests sent inside the window.
async fn ping_pong(mut s: TcpStream, c: u64, window: Window) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let mut rsp = [0u8; FRAME];
    let mut seq = c << 32;
    loop {
        let sent = now_ns();
        if sent >= window.end_ns {
            return Ok(tally);
        }
        s.write_all(&request(seq)).await.context("sending a request")?;
        s.read_exact(&mut rsp).await.context("reading a response")?;
        if seq_of(&rsp) != seq {
            bail!("connection {c}: response carries sequence {} instead of {seq}", seq_of(&rsp));
        }
        tally.record(sent >= window.start_ns, Ok((now_ns() - sent) / 1000));
        seq += 1;
    }
}

/// Opens `n` connections to `target`, does one request/response on each (so each is
/// established end to end, past protocol detection), and keeps them open and idle.
pub fn hold_idle(target: SocketAddr, n: usize) -> anyhow::Result<Vec<std::net::TcpStream>> {
    let mut conns = Vec::with_capacity(n);
    let mut rsp = [0u8; FRAME];
    for i in 0..n {
        let mut s = std::net::TcpStream::connect(target)
            .with_context(|| format!("opening idle connection {i} to {target}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_nodelay(true)?;
        s.write_all(&request(i as u64))?;
        s.read_exact(&mut rsp).with_context(|| format!("echo on idle connection {i}"))?;
        conns.push(s);
    }
    Ok(conns)
}
