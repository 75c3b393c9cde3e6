//! The admin server: `/metrics`, `/live`, `/ready`, `POST /shutdown` (from localhost
//! only) and `/proxy-log-level` (GET reads the filter, PUT from localhost replaces it).
//! Connections (plaintext, or mTLS for this proxy's identity) are accepted in `conn`; with
//! a policy source the admin port's inbound policy decides every request but the probes.

mod conn;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tracing::{debug, info};

use crate::{
    logging::LogLevel,
    metrics::{Metrics, TlsLabels},
    policy::ConnAuthz,
};

pub use conn::{AdminListener, serve};

/// State the admin endpoints read and act on.
#[derive(Debug, Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Set once the proxy can serve; cleared when it starts draining.
    pub ready: Arc<AtomicBool>,
    /// Cancelled by `POST /shutdown`.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub log_level: Option<LogLevel>,
    /// With identity on, ready only once a certificate is installed (and the admin port
    /// takes mTLS for this identity).
    pub identity: Option<Arc<crate::identity::Identity>>,
    /// With a policy source: the inbound policy, which has the admin port's too.
    pub policy: Option<Arc<crate::policy::Policy>>,
}

/// Largest request body the admin server reads (a log filter).
const MAX_BODY: usize = 4 * 1024;

/// Who sent a request: the connection's client, and its authorization once a request
/// needed it (probes never wait for the port's first policy).
#[derive(Debug)]
struct Caller {
    addr: SocketAddr,
    /// The admin listener's address the client reached.
    local: SocketAddr,
    tls: TlsLabels,
    authz: tokio::sync::OnceCell<ConnAuthz>,
}

impl Caller {
    fn new(addr: SocketAddr, local: SocketAddr, tls: TlsLabels) -> Self {
        Caller { addr, local, tls, authz: tokio::sync::OnceCell::new() }
    }
}

/// The kubelet's probes of the proxy: allowed whatever the policy, as Linkerd's probe
/// routes are, so that a locked-down pod still becomes ready.
fn is_probe(method: &Method, path: &str) -> bool {
    method == Method::GET && matches!(path, "/live" | "/ready")
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut rsp = Response::new(Full::new(body.into()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    rsp
}

/// Whether an `Accept-Encoding` field takes gzip (RFC 9110 §12.5.3): `gzip` (or its alias
/// `x-gzip`) or else `*`, with a weight above zero; `gzip;q=0` refuses it whatever `*` says,
/// and a weight that is not a number takes nothing.
fn accepts_gzip(headers: &http::HeaderMap) -> bool {
    let (mut gzip, mut any) = (None, None);
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut params = item.split(';');
            let coding = params.next().unwrap_or_default().trim();
            let weight = params.find_map(|p| {
                let (name, value) = p.split_once('=')?;
                name.trim().eq_ignore_ascii_case("q").then_some(value.trim())
            });
            let takes = weight.is_none_or(|q| q.parse::<f32>().is_ok_and(|q| q > 0.0));
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
                gzip = Some(takes);
            } else if coding == "*" {
                any = Some(takes);
            }
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// The metrics page gzipped at the fastest level (Prometheus text shrinks some thirtyfold
/// even so), compressed as it is encoded: the plain page, megabytes with thousands of label
/// sets, is never held whole. `None` if the compressor failed, which in memory it does not.
fn gzipped(metrics: &Metrics) -> Option<Vec<u8>> {
    struct Gzip(flate2::write::GzEncoder<Vec<u8>>);
    impl std::fmt::Write for Gzip {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            std::io::Write::write_all(&mut self.0, s.as_bytes()).map_err(|_| std::fmt::Error)
        }
    }
    let mut gz = Gzip(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    metrics.render_into(&mut gz).ok()?;
    gz.0.finish().ok()
}

impl Admin {
    /// `/metrics`: the page, gzipped when the scraper takes it. Rendered (and compressed)
    /// on a blocking thread, not on the runtime: with many series that takes milliseconds,
    /// which the proxy's data-path thread (one, by default) would spend with every
    /// connection waiting on it.
    async fn metrics_page(&self, gzip: bool) -> Response<Full<Bytes>> {
        let metrics = self.metrics.clone();
        let page =
            tokio::task::spawn_blocking(move || match gzip.then(|| gzipped(&metrics)).flatten() {
                Some(compressed) => (compressed, true),
                None => (metrics.render().into_bytes(), false),
            });
        let Ok((page, compressed)) = page.await else {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "rendering the metrics failed\n");
        };
        let mut rsp = text(StatusCode::OK, page);
        let headers = rsp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        );
        headers.insert(header::VARY, header::HeaderValue::from_static("accept-encoding"));
        if compressed {
            headers.insert(header::CONTENT_ENCODING, header::HeaderValue::from_static("gzip"));
        }
        rsp
    }

    /// Answers a request after the admin port's policy (if any) let it through.
    async fn authorized(&self, req: Request<Incoming>, caller: &Caller) -> Response<Full<Bytes>> {
        if let Some(policy) = &self.policy
            && !is_probe(req.method(), req.uri().path())
            && let Err(refusal) = caller
                .authz
                .get_or_init(|| async {
                    let label = self.metrics.kept_target_label(&caller.local);
                    let authz =
                        policy.authorize(caller.addr.ip(), caller.local, label, caller.tls.clone());
                    let authz = authz.await;
                    authz.note_http();
                    authz
                })
                .await
                .check_request(&req)
        {
            debug!(method = %req.method(), path = req.uri().path(), ?refusal, "admin request refused by the inbound policy");
            let mut rsp = text(refusal.status(), format!("{}\n", refusal.why()));
            rsp.headers_mut()
                .insert(crate::http::PROXY_ERROR, header::HeaderValue::from_static(refusal.why()));
            return rsp;
        }
        self.route(req, caller.addr).await
    }

    async fn route(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        // An IPv4-mapped loopback (a dual-stack listener's) is this host too.
        let local = peer.ip().to_canonical().is_loopback();
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => self.metrics_page(accepts_gzip(req.headers())).await,
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => {
                let certified = self.identity.as_ref().is_none_or(|i| i.is_ready());
                if self.ready.load(Ordering::Acquire) && certified {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
            (&Method::POST, "/shutdown") if local => {
                info!("shutdown requested on the admin port");
                self.shutdown.cancel();
                text(StatusCode::OK, "shutdown\n")
            }
            (_, "/shutdown") if !local => {
                text(StatusCode::FORBIDDEN, "shutdown is only accepted from localhost\n")
            }
            (&Method::GET, "/proxy-log-level") => match &self.log_level {
                Some(l) => text(StatusCode::OK, format!("{}\n", l.get())),
                None => text(StatusCode::NOT_FOUND, "logging is not managed by this proxy\n"),
            },
            (&Method::PUT, "/proxy-log-level") if local => {
                let Some(level) = &self.log_level else {
                    return text(StatusCode::NOT_FOUND, "logging is not managed by this proxy\n");
                };
                let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                    Ok(b) => b.to_bytes(),
                    Err(e) => return text(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")),
                };
                let Ok(filter) = std::str::from_utf8(&body) else {
                    return text(StatusCode::BAD_REQUEST, "log filter must be UTF-8\n");
                };
                match level.set(filter) {
                    Ok(()) => {
                        info!(filter = filter.trim(), "log level changed");
                        text(StatusCode::OK, format!("{}\n", level.get()))
                    }
                    Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
                }
            }
            (&Method::PUT, "/proxy-log-level") => {
                text(StatusCode::FORBIDDEN, "the log level is only set from localhost\n")
            }
            (_, "/metrics" | "/live" | "/ready" | "/shutdown" | "/proxy-log-level") => {
                text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
            }
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A ready proxy's admin state, without identity or policy.
    fn ready_admin() -> Arc<Admin> {
        Arc::new(Admin {
            metrics: Metrics::new(100),
            ready: Arc::new(AtomicBool::new(true)),
            shutdown: tokio_util::sync::CancellationToken::new(),
            log_level: None,
            identity: None,
            policy: None,
        })
    }

    /// One HTTP/1.0 request over a real connection: the status (empty when the server
    /// closed or reset the connection unanswered) and how long it took.
    async fn get(addr: SocketAddr, path: &str) -> (String, Duration) {
        let started = Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").as_bytes())
            .await
            .expect("send");
        let mut rsp = String::new();
        if let Err(e) = s.read_to_string(&mut rsp).await {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "read: {e}");
        }
        (rsp.get(9..12).unwrap_or("").to_string(), started.elapsed())
    }

    #[tokio::test]
    async fn probes_never_wait_for_the_admin_ports_first_policy_and_the_rest_fail_closed() {
        let listener = crate::listen(([127, 0, 0, 1], 0).into()).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let metrics = Metrics::new(100);
        // The admin port's policy is watched, and the control plane never answers.
        let (_tx, rx) = tokio::sync::watch::channel(None);
        let wait = Duration::from_millis(500);
        let policy = crate::policy::Policy::new(
            crate::policy::DefaultPolicy::AllUnauthenticated,
            crate::policy::DEFAULT_CLUSTER_NETWORKS.parse().expect("networks"),
            crate::policy::Probes::default(),
            metrics.authz.clone(),
        )
        .with_discovered([(addr.port(), rx)].into(), wait);
        let admin = Arc::new(Admin {
            metrics,
            ready: Arc::new(AtomicBool::new(true)),
            shutdown: tokio_util::sync::CancellationToken::new(),
            log_level: None,
            identity: None,
            policy: Some(Arc::new(policy)),
        });
        let conf = AdminListener::new(Duration::from_secs(5), 8192);
        tokio::spawn(serve(listener, admin.clone(), conf));

        for probe in ["/live", "/ready"] {
            let (status, took) = get(addr, probe).await;
            assert_eq!(status, "200", "{probe}");
            assert!(took < wait, "{probe} waited for the policy: {took:?}");
        }
        let (status, took) = get(addr, "/metrics").await;
        assert_eq!(status, "403", "no policy yet: refused (fail closed)");
        assert!(took >= wait, "answered before the first policy could come: {took:?}");
        let m = admin.metrics.render();
        assert!(m.contains("srv_name=\"unavailable\""), "{m}");
    }

    /// Idle connections give their slot back: an HTTP/1.1 keep-alive connection after its
    /// request, and an HTTP/2 one that never sends a request.
    #[tokio::test]
    async fn idle_connections_are_closed() {
        let listener = crate::listen(([127, 0, 0, 1], 0).into()).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let admin = ready_admin();
        let mut conf = AdminListener::new(Duration::from_secs(5), 8192);
        conf.idle_timeout = Duration::from_millis(300);
        tokio::spawn(serve(listener, admin, conf.clone()));

        let keep_alive = b"GET /live HTTP/1.1\r\nHost: admin\r\n\r\n".as_slice();
        let h2_preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".as_slice();
        for first in [keep_alive, h2_preface] {
            let started = Instant::now();
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(first).await.expect("send");
            // Whatever the server says (a response, its SETTINGS), then its close: at once
            // for HTTP/1; for this HTTP/2 client, which never acknowledges the GOAWAY's ping,
            // after the 5 s close grace. Under the 10 s header-read timeout either way.
            let mut got = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut got));
            read.await.expect("closed while idle").expect("read");
            assert!(!got.is_empty(), "answered first");
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(300), "closed before it was idle: {took:?}");
        }
        // Both slots are free again.
        let deadline = Instant::now() + Duration::from_secs(5);
        while conf.limit.available_permits() < conn::MAX_CONNECTIONS {
            assert!(Instant::now() < deadline, "slots still held");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// With every slot held, the kubelet's probes are still answered (from the probe
    /// reserve) and nothing else is; with the reserve held too, connections are closed.
    #[tokio::test]
    async fn probes_are_answered_beyond_the_connection_limit() {
        let listener = crate::listen(([127, 0, 0, 1], 0).into()).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let admin = ready_admin();
        let mut conf = AdminListener::new(Duration::from_secs(5), 8192);
        conf.limit = Arc::new(tokio::sync::Semaphore::new(1));
        conf.probe_reserve = Arc::new(tokio::sync::Semaphore::new(1));
        tokio::spawn(serve(listener, admin.clone(), conf.clone()));
        let limited = || {
            let m = admin.metrics.render();
            let line = m.lines().find(|l| l.contains("error=\"connection_limit\""));
            line.and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).unwrap_or(0)
        };

        // A scraper holds the one slot: a keep-alive connection after its request.
        let mut held = tokio::net::TcpStream::connect(addr).await.expect("connect");
        held.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n").await.expect("send");
        let mut first = [0u8; 12];
        held.read_exact(&mut first).await.expect("answered");
        assert_eq!(&first[9..12], b"200");
        assert_eq!(conf.limit.available_permits(), 0);

        for probe in ["/live", "/ready"] {
            assert_eq!(get(addr, probe).await.0, "200", "{probe} beyond the limit");
        }
        assert_eq!(limited(), 0, "a probe is no refusal");
        assert_eq!(get(addr, "/metrics").await.0, "503", "only probes beyond the limit");
        assert_eq!(limited(), 1);
        // The reserve frees its slot after each probe.
        assert_eq!(get(addr, "/ready").await.0, "200");

        // A silent client in the reserve: the next connection is closed unanswered, and the
        // silent one is dropped within the probe timeout, which frees the reserve again.
        let _silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let deadline = Instant::now() + Duration::from_secs(5);
        while conf.probe_reserve.available_permits() > 0 {
            assert!(Instant::now() < deadline, "the silent client never took the reserve");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(get(addr, "/ready").await.0, "", "closed: no slot at all");
        assert_eq!(limited(), 2);
        let deadline = Instant::now() + Duration::from_secs(5);
        while conf.probe_reserve.available_permits() == 0 {
            assert!(Instant::now() < deadline, "the silent client kept its reserve slot");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(get(addr, "/ready").await.0, "200");
    }

    /// One HTTP/1.0 request to the admin routes as if `peer` had sent it (over an
    /// in-memory connection: the peer address is what the accepted socket would report):
    /// the status and the body.
    async fn request_from(
        admin: &Arc<Admin>,
        peer: SocketAddr,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, String) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let admin = admin.clone();
        let svc = hyper::service::service_fn(move |req| {
            let admin = admin.clone();
            async move { Ok::<_, std::convert::Infallible>(admin.route(req, peer).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(server), svc);
        tokio::spawn(conn);
        let len = body.len();
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: admin\r\nContent-Length: {len}\r\n\r\n{body}"
        );
        client.write_all(req.as_bytes()).await.expect("send");
        let mut rsp = String::new();
        client.read_to_string(&mut rsp).await.expect("read");
        let status = rsp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, rsp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    }

    /// `POST /shutdown` and `PUT /proxy-log-level` from anywhere but this host are refused
    /// and change nothing; from loopback (IPv4, IPv6, IPv4-mapped) they act.
    #[tokio::test]
    async fn shutdown_and_log_level_changes_are_taken_from_localhost_only() {
        let (log_level, _subscriber) = LogLevel::detached("info");
        let admin = Arc::new(Admin { log_level: Some(log_level), ..(*ready_admin()).clone() });
        let level = || admin.log_level.as_ref().expect("managed").get();
        let remote = ["192.0.2.7:40000", "[2001:db8::7]:40000", "[::ffff:192.0.2.7]:40000"];
        for peer in remote.map(|p| p.parse::<SocketAddr>().expect("peer")) {
            let (status, body) = request_from(&admin, peer, "POST", "/shutdown", "").await;
            assert_eq!(
                (status, body.as_str()),
                (403, "shutdown is only accepted from localhost\n"),
                "{peer}"
            );
            assert!(!admin.shutdown.is_cancelled(), "{peer} shut the proxy down");
            let (status, body) =
                request_from(&admin, peer, "PUT", "/proxy-log-level", "trace").await;
            assert_eq!(
                (status, body.as_str()),
                (403, "the log level is only set from localhost\n"),
                "{peer}"
            );
            assert_eq!(level(), "info", "{peer} changed the log level");
            // Reading the level is no change: anyone the port lets in may.
            assert_eq!(
                request_from(&admin, peer, "GET", "/proxy-log-level", "").await,
                (200, "info\n".into())
            );
            assert!(admin.ready.load(Ordering::Acquire), "{peer}: still ready");
        }

        // The same requests from this host take effect.
        let local = ["127.0.0.1:40000", "[::1]:40000", "[::ffff:127.0.0.1]:40000"];
        for (peer, filter) in local
            .map(|p| p.parse::<SocketAddr>().expect("peer"))
            .into_iter()
            .zip(["debug", "warn", "trace"])
        {
            let (status, body) =
                request_from(&admin, peer, "PUT", "/proxy-log-level", filter).await;
            assert_eq!((status, body.trim()), (200, filter), "{peer}");
            assert_eq!(level(), filter, "{peer}");
        }
        let peer = "[::1]:40000".parse().expect("peer");
        assert_eq!(request_from(&admin, peer, "POST", "/shutdown", "").await.0, 200);
        assert!(admin.shutdown.is_cancelled(), "a local POST /shutdown did not shut down");
    }

    #[test]
    fn gzip_is_taken_as_rfc_9110_weighs_it() {
        let takes = |values: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for v in values {
                headers.append(header::ACCEPT_ENCODING, v.parse().expect("value"));
            }
            accepts_gzip(&headers)
        };
        for yes in [&["gzip"][..], &["x-gzip"], &["GZIP"], &["br, gzip;q=0.5"], &["*"]] {
            assert!(takes(yes), "{yes:?}");
        }
        assert!(takes(&["deflate", "gzip ; Q=1"]), "over two fields");
        for no in [&[][..], &["identity"], &["gzip;q=0"], &["gzip;q=0.000"], &["*;q=0"]] {
            assert!(!takes(no), "{no:?}");
        }
        assert!(!takes(&["*, gzip;q=0"]), "gzip refused by name, whatever * says");
        assert!(takes(&["gzip, *;q=0"]), "gzip taken by name, whatever * says");
        assert!(!takes(&["gzip;q=high"]), "a weight that is no number");
        let metrics = Metrics::new(100);
        let page = gzipped(&metrics).expect("gzip");
        let mut plain = String::new();
        let mut gunzip = flate2::read::GzDecoder::new(page.as_slice());
        std::io::Read::read_to_string(&mut gunzip, &mut plain).expect("gunzip");
        // The process's own figures move between two renderings; the rest is the same.
        let steady = |page: &str| {
            page.lines().filter(|l| !l.starts_with("process_")).collect::<Vec<_>>().join("\n")
        };
        assert_eq!(steady(&plain), steady(&metrics.render()));
        assert!(plain.contains("\nprocess_open_fds "), "{plain}");
    }

    #[test]
    fn only_get_on_live_and_ready_is_a_probe() {
        assert!(is_probe(&Method::GET, "/live"));
        assert!(is_probe(&Method::GET, "/ready"));
        assert!(!is_probe(&Method::POST, "/ready"));
        assert!(!is_probe(&Method::GET, "/metrics"));
        assert!(!is_probe(&Method::GET, "/ready/x"));
        assert!(!is_probe(&Method::GET, "/shutdown"));
    }
}
