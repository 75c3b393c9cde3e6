//! Test support: the real `weft-proxy` binary as a child process (its bound addresses read
//! from its own JSON "serving" log line), metric scraping, and small backends (echo,
//! banner, HTTP/1 + HTTP/2 via hyper) served from pre-bound listeners so that they can
//! live in a network namespace.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use crate::netns::proxy_bin;

/// A process of ours that logs JSON to stderr: its log is kept (for failure messages) and
/// `start` waits for its `serving` line, whose fields carry the addresses it bound.
pub struct Serving {
    pub child: Child,
    pub fields: serde_json::Value,
    pub logs: Arc<Mutex<String>>,
}

impl Serving {
    pub fn start(cmd: Command, what: &str, limit: Duration) -> Serving {
        Serving::start_with(cmd, what, limit, Stdio::null())
    }

    /// Like `start`, with the process's stdout going to `stdout`.
    pub fn start_with(mut cmd: Command, what: &str, limit: Duration, stdout: Stdio) -> Serving {
        cmd.stdin(Stdio::null()).stdout(stdout).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let logs = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["fields"]["message"] == "serving"
                {
                    let _ = tx.send(v["fields"].clone());
                }
                let mut l = sink.lock().unwrap_or_else(|e| e.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        match rx.recv_timeout(limit) {
            Ok(fields) => Serving { child, fields, logs },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "{what} did not start; its log:\n{}",
                    logs.lock().unwrap_or_else(|e| e.into_inner())
                );
            }
        }
    }

    /// The address logged under `key`.
    pub fn addr(&self, key: &str) -> SocketAddr {
        self.fields[key]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no {key} address in {}", self.fields))
    }
}

/// A running `weft-proxy`, killed on drop.
pub struct Proxy {
    child: Child,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Proxy {
    /// Starts the proxy on loopback with ephemeral ports and the given extra flags.
    pub fn start(extra: &[&str]) -> Proxy {
        let mut cmd = Command::new(proxy_bin());
        // Through the environment, so that flags in `extra` override them.
        for var in ["INBOUND", "OUTBOUND", "ADMIN"] {
            cmd.env(format!("WEFT_PROXY_{var}_LISTEN_ADDR"), "127.0.0.1:0");
        }
        cmd.args(extra);
        Proxy::start_cmd(cmd)
    }

    /// Starts a prepared command (e.g. `ip netns exec ... setpriv ... weft-proxy ...`);
    /// JSON logs at debug level are added so that the bound addresses can be read.
    pub fn start_cmd(cmd: Command) -> Proxy {
        Proxy::start_cmd_with(cmd, Stdio::null())
    }

    /// Like `start`, with the proxy's stdout (its access log) piped to the test.
    pub fn start_piped(extra: &[&str]) -> (Proxy, std::process::ChildStdout) {
        let mut cmd = Command::new(proxy_bin());
        for var in ["INBOUND", "OUTBOUND", "ADMIN"] {
            cmd.env(format!("WEFT_PROXY_{var}_LISTEN_ADDR"), "127.0.0.1:0");
        }
        cmd.args(extra);
        let mut proxy = Proxy::start_cmd_with(cmd, Stdio::piped());
        let stdout = proxy.child.stdout.take().expect("piped stdout");
        (proxy, stdout)
    }

    fn start_cmd_with(mut cmd: Command, stdout: Stdio) -> Proxy {
        cmd.env("WEFT_PROXY_LOG_FORMAT", "json").env("WEFT_PROXY_LOG", "info,weft_proxy=debug");
        let Serving { child, fields, logs } =
            Serving::start_with(cmd, "weft-proxy", Duration::from_secs(20), stdout);
        // The first address of each listener (they may have several).
        let addr = |k: &str| -> SocketAddr {
            fields[k]
                .as_str()
                .and_then(|s| s.split(',').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no {k} address in {fields}"))
        };
        Proxy {
            inbound: addr("inbound"),
            outbound: addr("outbound"),
            admin: addr("admin"),
            child,
            logs,
        }
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `/metrics` from a proxy reachable from this network namespace.
    pub fn metrics(&self) -> String {
        scrape(self.admin)
    }

    /// Resident memory of the proxy process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes(self.child.id())
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, limit)
    }
}

/// Waits for `child` to exit, up to `limit` (`None`: it still runs).
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pair in front of `backend`: (client-side proxy, server-side proxy).
pub fn pair(backend: SocketAddr, extra: &[&str]) -> (Proxy, Proxy) {
    let target = backend.to_string();
    let mut args = vec!["--inbound-orig-dst-addr", &target];
    args.extend(extra);
    let server = Proxy::start(&args);
    let inbound = server.inbound.to_string();
    let mut args = vec!["--outbound-orig-dst-addr", &inbound];
    args.extend(extra);
    let client = Proxy::start(&args);
    (client, server)
}

pub fn rss_bytes(pid: u32) -> u64 {
    status_bytes(pid, "VmRSS")
}

/// A memory figure of `/proc/PID/status` (`VmRSS`, `VmHWM`, `RssAnon`...), in bytes.
/// Panics when the process is gone or the figure is missing: a memory ceiling must not
/// pass on a figure that was never read.
pub fn status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status:\n{status}"))
}

/// One HTTP/1.0 request to an admin port; returns (status code, body).
pub fn admin_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the admin port");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: admin\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut rsp = String::new();
    s.read_to_string(&mut rsp).expect("read the admin response");
    let code = rsp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = rsp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

pub fn scrape(admin: SocketAddr) -> String {
    let (code, body) = admin_request(admin, "GET", "/metrics", "");
    assert_eq!(code, 200, "GET /metrics: {body}");
    body
}

/// The sum of the samples of `name` whose labels include every `(key, value)` given.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            if n != name {
                return None;
            }
            let ok = labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// Polls `f` until it returns true or `limit` passes (metrics are updated asynchronously
/// to what a client sees, e.g. a close is counted after the client read its EOF).
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A loopback port for another process to bind, free when picked (from below the ephemeral
/// range: `ports::unused`).
pub fn free_port() -> u16 {
    crate::ports::unused::<1>().expect("a free loopback port")[0]
}

/// A loopback listener on an ephemeral port with a deep accept queue (std's 128 drops
/// SYNs when a proxy opens hundreds of upstream connections at once).
pub fn local_listener() -> TcpListener {
    listener(([127, 0, 0, 1], 0).into())
}

pub fn listener(addr: SocketAddr) -> TcpListener {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        Ok(socket.into())
    };
    bind().unwrap_or_else(|e| panic!("bind a test listener on {addr}: {e}"))
}

/// Serves connections on `listener` with `handle`, a thread each.
pub fn serve(
    listener: TcpListener,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) -> SocketAddr {
    let addr = listener.local_addr().expect("addr");
    let handle = Arc::new(handle);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let handle = handle.clone();
            std::thread::spawn(move || handle(conn));
        }
    });
    addr
}

/// Echoes until EOF, then closes its write side.
pub fn echo(mut s: TcpStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
}

/// Writes `banner` before reading anything, then echoes.
pub fn banner(banner: &'static [u8]) -> impl Fn(TcpStream) + Send + Sync + 'static {
    move |mut s: TcpStream| {
        if s.write_all(banner).is_ok() {
            echo(s);
        }
    }
}

/// Reads everything until EOF, then answers how many bytes it got: proves that a
/// client's half-close crossed the proxies while the other direction stayed open.
pub fn count_then_reply(mut s: TcpStream) {
    let mut n = 0usize;
    let mut buf = [0u8; 16 * 1024];
    while let Ok(k) = s.read(&mut buf) {
        if k == 0 {
            break;
        }
        n += k;
    }
    let _ = write!(s, "got {n} bytes");
}

/// An HTTP/1.1 and HTTP/2 (prior knowledge) test app. Routes:
/// `/` → `hello <version>`; `/echo` → the request as the app saw it (version, method,
/// target, headers); `/upload` → `got N bytes` after reading the whole body; `/slow` →
/// headers after 5 s; `/reset` → a partial body, then the stream fails.
pub fn http_server(listener: TcpListener) -> SocketAddr {
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((io, _)) = listener.accept().await else { continue };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), svc)
                    .await;
                });
            }
        });
    });
    addr
}

type AppBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, std::io::Error>;

async fn app(
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<AppBody>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let full = |s: String| {
        http_body_util::Full::new(bytes::Bytes::from(s))
            .map_err(|never| match never {})
            .boxed_unsync()
    };
    if req.method() == hyper::Method::CONNECT {
        // A tunnel: 200, then echo whatever comes through it.
        tokio::spawn(async move {
            if let Ok(upgraded) = hyper::upgrade::on(req).await {
                let mut io = hyper_util::rt::TokioIo::new(upgraded);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        return Ok(hyper::Response::new(full(String::new())));
    }
    let body = match req.uri().path() {
        "/echo" => {
            let mut out = format!("{:?} {} {}\n", req.version(), req.method(), req.uri());
            for (k, v) in req.headers() {
                out.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            full(out)
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut n = 0usize;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len()),
                    Err(e) => {
                        return Ok(hyper::Response::new(full(format!("error after {n}: {e}"))));
                    }
                }
            }
            full(format!("got {n} bytes"))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            full("slow".into())
        }
        "/reset" => {
            // Headers and a first chunk go out; a moment later the body fails.
            let mut rsp = hyper::Response::new(failing_body());
            rsp.headers_mut()
                .insert("content-length", hyper::header::HeaderValue::from_static("1000"));
            return Ok(rsp);
        }
        _ => full(format!("hello {:?}\n", req.version())),
    };
    Ok(hyper::Response::new(body))
}

/// A body that yields `partial`, then after 200 ms an error.
fn failing_body() -> AppBody {
    use http_body_util::BodyExt;
    struct Failing {
        sent: bool,
        sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    }
    impl hyper::body::Body for Failing {
        type Data = bytes::Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>>
        {
            use std::task::Poll;
            if !self.sent {
                self.sent = true;
                return Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
                    b"partial",
                )))));
            }
            match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err(std::io::Error::other("the app fails mid-body"))))
                }
                Poll::Pending => Poll::Pending,
            }
        }
    }
    Failing { sent: false, sleep: Box::pin(tokio::time::sleep(Duration::from_millis(200))) }
        .boxed_unsync()
}

/// Reads one HTTP/1.1 response with a Content-Length body.
pub fn read_response(r: &mut BufReader<TcpStream>) -> u16 {
    let mut len = 0usize;
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    loop {
        line.clear();
        r.read_line(&mut line).expect("response line");
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().expect("length");
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).expect("body");
    status
}

/// A test backend for balancing and retries: answers every request after `delay`, with
/// 503 when `failing` is set or every `fail_every`-th request, else 200; counts requests.
pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<std::sync::atomic::AtomicU64>,
    pub failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Backend {
    pub fn start(delay: Duration, fail_every: Option<u64>) -> Backend {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = local_listener();
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let hits = Arc::new(AtomicU64::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let (h, f) = (hits.clone(), failing.clone());
        std::thread::spawn(move || {
            let rt =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((io, _)) = listener.accept().await else { continue };
                    let (h, f) = (h.clone(), f.clone());
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let (h, f) = (h.clone(), f.clone());
                                async move {
                                    use http_body_util::BodyExt;
                                    let n = h.fetch_add(1, Ordering::SeqCst) + 1;
                                    let _ = req.into_body().collect().await;
                                    if !delay.is_zero() {
                                        tokio::time::sleep(delay).await;
                                    }
                                    let fail = f.load(Ordering::SeqCst)
                                        || fail_every.is_some_and(|k| n % k == 0);
                                    let mut rsp = hyper::Response::new(http_body_util::Full::new(
                                        bytes::Bytes::from(format!("{}\n", addr.port())),
                                    ));
                                    if fail {
                                        *rsp.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                                    }
                                    Ok::<_, std::convert::Infallible>(rsp)
                                }
                            },
                        );
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                        .await;
                    });
                }
            });
        });
        Backend { addr, hits, failing }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `n` GET requests over `connections` keep-alive HTTP/1.1 connections to `addr`;
/// returns the statuses in the order they completed.
pub fn load(addr: SocketAddr, connections: usize, n: usize) -> Vec<u16> {
    let per = n / connections;
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                (0..per)
                    .map(|_| {
                        s.write_all(b"GET / HTTP/1.1\r\nHost: web.prod.svc.cluster.local\r\n\r\n")
                            .expect("write");
                        read_response(&mut r)
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    threads.into_iter().flat_map(|t| t.join().expect("load thread")).collect()
}

/// A self-signed P-256 certificate for `app.test` made by openssl in `dir`, valid a day:
/// (key, cert) paths, for an app's own TLS that the proxies must pass through untouched.
pub fn app_tls_cert(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    self_signed_cert(dir, "app", "app.test", "DNS:app.test")
}

/// A self-signed P-256 certificate made by openssl, valid a day: `{name}.key` and
/// `{name}.crt` in `dir` (returned as key, cert) with the subject's `cn` and `san`
/// (`DNS:…,IP:…`).
pub fn self_signed_cert(
    dir: &std::path::Path,
    name: &str,
    cn: &str,
    san: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).expect("certificate dir");
    let (key, cert) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.crt")));
    let (ok, _, err) = run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
        .args(["-nodes", "-days", "1", "-subj", &format!("/CN={cn}")])
        .args(["-addext", &format!("subjectAltName={san}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    assert!(ok, "openssl req (.ci/run installs openssl): {err}");
    (key, cert)
}

/// Runs a command, returning (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `openssl s_client` to `addr` as a meshed peer: SNI (and the name it verifies) `sni`, the
/// server's chain checked against `ca`, presenting `leaf` with `chain` and its `key`;
/// stdio piped.
pub fn meshed_s_client(
    addr: SocketAddr,
    sni: &str,
    ca: &std::path::Path,
    (leaf, chain, key): (&std::path::Path, &std::path::Path, &std::path::Path),
) -> Command {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string(), "-servername", sni])
        .args(["-verify_hostname", sni, "-verify_return_error", "-ign_eof"])
        .arg("-CAfile")
        .arg(ca)
        .arg("-cert")
        .arg(leaf)
        .arg("-cert_chain")
        .arg(chain)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `client` (an `openssl s_client`), sends `request` after `silent`, and returns
/// everything it printed.
pub fn s_client_exchange(mut client: Command, silent: Duration, request: &[u8]) -> String {
    let mut child = client.spawn().expect("openssl s_client");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::sleep(silent);
    let _ = stdin.write_all(request);
    drop(stdin);
    let out = child.wait_with_output().expect("openssl output");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}
