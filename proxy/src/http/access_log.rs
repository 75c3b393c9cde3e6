//! The HTTP access log (`--access-log apache|json`, set by the injector from the
//! `config.weft.dev/access-log` annotation, as Linkerd's `config.linkerd.io/access-log`):
//! one line per inbound HTTP request, on stdout, apart from the proxy's own log on stderr.
//!
//! Lines are written by a thread of their own, so a log reader that falls behind never
//! stalls a request. The backlog is bounded in bytes: past it a line is dropped and
//! counted (`access_log_lines_total{result="dropped"}`), never buffered without bound.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use clap::ValueEnum;
use http::{HeaderMap, HeaderValue, Method, Request, Uri, Version, header};
use http_body::{Body, Frame, SizeHint};
use prometheus_client::{
    encoding::EncodeLabelSet, metrics::counter::Counter, metrics::family::Family,
    registry::Registry,
};

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The Common Log Format, with the client's identity in the `ident` field.
    Apache,
    /// One JSON object per line, with the fields of Linkerd's JSON access log.
    Json,
}

/// Lines waiting for the writer, in bytes, past which new lines are dropped: a reader
/// that stops reading costs at most this much memory.
const MAX_BACKLOG_BYTES: usize = 1 << 20;
/// Longest value of a field taken from the request (URI, host, user agent); the rest is
/// cut and marked, so one request cannot make a line of the header limit's size.
const MAX_FIELD_BYTES: usize = 2048;
/// How long the proxy waits at exit for the writer to write what is queued.
const EXIT_FLUSH: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// `access_log_lines_total{result="written"|"dropped"}`.
#[derive(Debug, Clone, Default)]
pub struct AccessLogMetrics {
    lines: Family<ResultLabels, Counter>,
}

impl AccessLogMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = AccessLogMetrics::default();
        registry.register(
            "access_log_lines",
            "HTTP access log lines, written or dropped (the writer fell behind, or stdout failed)",
            m.lines.clone(),
        );
        m
    }

    fn count(&self, result: &'static str) {
        self.lines.get_or_create(&ResultLabels { result }).inc();
    }
}

/// The access log of the inbound side: hands lines to the writer thread.
#[derive(Debug)]
pub struct AccessLog {
    format: Format,
    tx: Option<mpsc::Sender<String>>,
    backlog: Arc<AtomicUsize>,
    metrics: AccessLogMetrics,
    /// Told by the writer when it has written everything and exited (in a mutex only
    /// to be `Sync`: it is read once, on drop).
    finished: Mutex<mpsc::Receiver<()>>,
}

impl AccessLog {
    /// Starts the writer thread, which writes to stdout.
    pub fn start(format: Format, metrics: AccessLogMetrics) -> std::io::Result<Arc<Self>> {
        AccessLog::start_with(format, metrics, std::io::stdout())
    }

    fn start_with(
        format: Format,
        metrics: AccessLogMetrics,
        out: impl std::io::Write + Send + 'static,
    ) -> std::io::Result<Arc<Self>> {
        let (tx, rx) = mpsc::channel::<String>();
        let (done_tx, finished) = mpsc::channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let writer = Writer { out: std::io::BufWriter::new(out), backlog: backlog.clone() };
        let m = metrics.clone();
        std::thread::Builder::new().name("access-log".into()).spawn(move || {
            writer.run(rx, &m);
            let _ = done_tx.send(());
        })?;
        let finished = Mutex::new(finished);
        Ok(Arc::new(AccessLog { format, tx: Some(tx), backlog, metrics, finished }))
    }

    /// Starts the entry of a request as it arrives.
    pub fn begin<B>(
        self: &Arc<Self>,
        req: &Request<B>,
        client: SocketAddr,
        client_id: Option<Arc<str>>,
    ) -> Box<Entry> {
        let headers = req.headers();
        Box::new(Entry {
            log: self.clone(),
            timestamp: SystemTime::now(),
            started: Instant::now(),
            client,
            client_id,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            host: headers.get(header::HOST).cloned(),
            user_agent: headers.get(header::USER_AGENT).cloned(),
            trace_id: trace_id(headers),
            request_bytes: Arc::new(AtomicU64::new(0)),
            processing: None,
        })
    }

    fn send(&self, line: String) {
        let len = line.len();
        if self.backlog.fetch_add(len, Ordering::Relaxed) + len > MAX_BACKLOG_BYTES {
            self.backlog.fetch_sub(len, Ordering::Relaxed);
            self.metrics.count("dropped");
            return;
        }
        match &self.tx {
            Some(tx) if tx.send(line).is_ok() => {}
            _ => {
                self.backlog.fetch_sub(len, Ordering::Relaxed);
                self.metrics.count("dropped");
            }
        }
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        // The writer drains what is queued once the channel closes; wait for it, but
        // never long: a stdout nobody reads must not hold the proxy's exit.
        drop(self.tx.take());
        let finished = self.finished.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = finished.recv_timeout(EXIT_FLUSH);
    }
}

struct Writer<W: std::io::Write> {
    out: std::io::BufWriter<W>,
    backlog: Arc<AtomicUsize>,
}

impl<W: std::io::Write> Writer<W> {
    fn run(mut self, rx: mpsc::Receiver<String>, metrics: &AccessLogMetrics) {
        let failed_once = AtomicBool::new(false);
        // Write what is there, then flush once the queue is empty: one write(2) per
        // burst, and no line waits in the buffer while the proxy is idle.
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(line) = next {
                let ok = self.out.write_all(line.as_bytes()).is_ok();
                self.backlog.fetch_sub(line.len(), Ordering::Relaxed);
                self.outcome(ok, metrics, &failed_once);
                next = rx.try_recv().ok();
            }
            if self.out.flush().is_err() {
                self.outcome(false, metrics, &failed_once);
            }
        }
        let _ = self.out.flush();
    }

    fn outcome(&self, ok: bool, metrics: &AccessLogMetrics, failed_once: &AtomicBool) {
        if ok {
            metrics.count("written");
        } else {
            metrics.count("dropped");
            if !failed_once.swap(true, Ordering::Relaxed) {
                tracing::warn!("cannot write the access log to stdout; dropping its lines");
            }
        }
    }
}

/// What the log knows of one request until its response ends.
#[derive(Debug)]
pub struct Entry {
    log: Arc<AccessLog>,
    timestamp: SystemTime,
    started: Instant,
    client: SocketAddr,
    client_id: Option<Arc<str>>,
    method: Method,
    uri: Uri,
    version: Version,
    host: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    trace_id: Option<String>,
    request_bytes: Arc<AtomicU64>,
    /// The proxy's own time: from arrival until the request went to the upstream.
    processing: Option<Duration>,
}

impl Entry {
    /// Notes that the request now leaves for the upstream: what came before is the
    /// proxy's processing time.
    pub fn forwarding(&mut self) {
        self.processing = Some(self.started.elapsed());
    }

    /// The request body, counted into this entry's `request_bytes`.
    pub fn count_request<B>(&self, body: B) -> Counted<B> {
        Counted { inner: body, bytes: self.request_bytes.clone() }
    }

    /// Writes the line: the response has ended (or was dropped: `status` as sent).
    pub fn finish(self, status: u16, response_bytes: u64) {
        let total = self.started.elapsed();
        let line = match self.log.format {
            Format::Apache => self.apache(status, response_bytes),
            Format::Json => self.json(status, response_bytes, total),
        };
        self.log.send(line);
    }

    fn apache(&self, status: u16, response_bytes: u64) -> String {
        let mut l = String::with_capacity(160);
        let _ = write!(l, "{} ", self.client);
        match &self.client_id {
            Some(id) => apache_escape(&mut l, id.as_bytes()),
            None => l.push('-'),
        }
        l.push_str(" - [");
        rfc3339(&mut l, self.timestamp);
        let _ = write!(l, "] \"{} ", self.method);
        apache_escape(&mut l, self.uri.to_string().as_bytes());
        let _ = write!(l, " {:?}\" {status} ", self.version);
        // Common Log Format: `-` for a response without a body.
        match response_bytes {
            0 => l.push('-'),
            n => {
                let _ = write!(l, "{n}");
            }
        }
        l.push('\n');
        l
    }

    fn json(&self, status: u16, response_bytes: u64, total: Duration) -> String {
        let mut l = String::with_capacity(384);
        let field = |l: &mut String, name: &str, value: &[u8]| {
            let _ = write!(l, "\"{name}\":");
            json_string(l, value);
            l.push(',');
        };
        l.push('{');
        field(&mut l, "client.addr", self.client.to_string().as_bytes());
        field(&mut l, "client.id", self.client_id.as_deref().unwrap_or("-").as_bytes());
        field(&mut l, "host", self.host.as_ref().map_or(b"", |h| h.as_bytes()));
        field(&mut l, "method", self.method.as_str().as_bytes());
        let processing = self.processing.unwrap_or(total).as_nanos().to_string();
        field(&mut l, "processing_ns", processing.as_bytes());
        let req_bytes = self.request_bytes.load(Ordering::Relaxed).to_string();
        field(&mut l, "request_bytes", req_bytes.as_bytes());
        field(&mut l, "response_bytes", response_bytes.to_string().as_bytes());
        let _ = write!(l, "\"status\":{status},");
        let mut ts = String::with_capacity(32);
        rfc3339(&mut ts, self.timestamp);
        field(&mut l, "timestamp", ts.as_bytes());
        field(&mut l, "total_ns", total.as_nanos().to_string().as_bytes());
        field(&mut l, "trace_id", self.trace_id.as_deref().unwrap_or("").as_bytes());
        field(&mut l, "uri", self.uri.to_string().as_bytes());
        field(&mut l, "user_agent", self.user_agent.as_ref().map_or(b"", |h| h.as_bytes()));
        let _ = write!(l, "\"version\":\"{:?}\"}}", self.version);
        l.push('\n');
        l
    }
}

/// The trace id the client propagated: W3C `traceparent`, else B3.
fn trace_id(headers: &HeaderMap) -> Option<String> {
    let hex = |s: &str| !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    // traceparent: version "-" trace-id (32 hex) "-" parent-id "-" flags
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok())
        && let Some(id) = tp.split('-').nth(1)
        && id.len() == 32
        && hex(id)
    {
        return Some(id.to_ascii_lowercase());
    }
    let b3 = headers.get("x-b3-traceid").and_then(|v| v.to_str().ok());
    // The single-header form: trace-id "-" span-id ...
    let b3 = b3.or_else(|| headers.get("b3")?.to_str().ok()?.split('-').next());
    b3.filter(|id| hex(id)).map(str::to_ascii_lowercase)
}

/// What the log takes from a request, for the fuzz targets (`fuzz/`): not an API.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    pub const MAX_FIELD_BYTES: usize = super::MAX_FIELD_BYTES;

    pub fn trace_id(headers: &HeaderMap) -> Option<String> {
        super::trace_id(headers)
    }

    /// The Apache and the JSON line of `req`, as written when its response ends, without
    /// a writer thread.
    pub fn lines<B>(
        req: &Request<B>,
        client: SocketAddr,
        client_id: Option<Arc<str>>,
        status: u16,
        response_bytes: u64,
    ) -> [String; 2] {
        let (_, finished) = mpsc::channel();
        let log = Arc::new(AccessLog {
            format: Format::Json,
            tx: None,
            backlog: Arc::default(),
            metrics: AccessLogMetrics::default(),
            finished: Mutex::new(finished),
        });
        let entry = log.begin(req, client, client_id);
        [entry.apache(status, response_bytes), entry.json(status, response_bytes, Duration::ZERO)]
    }
}

/// A request body that counts its bytes for the access log.
pub struct Counted<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for Counted<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r
            && let Some(data) = frame.data_ref()
        {
            this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Appends `value` with what would break the line or the quoted field escaped as
/// Apache does (`\"`, `\\`, `\xHH` for bytes outside printable ASCII), cut at
/// `MAX_FIELD_BYTES`.
fn apache_escape(out: &mut String, value: &[u8]) {
    let (value, cut) = cap(value);
    for &b in value {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    if cut {
        out.push_str("...");
    }
}

/// Appends `value` as a JSON string; bytes that are not UTF-8 become U+FFFD.
fn json_string(out: &mut String, value: &[u8]) {
    let (value, cut) = cap(value);
    out.push('"');
    for c in String::from_utf8_lossy(value).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    if cut {
        out.push_str("...");
    }
    out.push('"');
}

fn cap(value: &[u8]) -> (&[u8], bool) {
    match value.len() > MAX_FIELD_BYTES {
        true => (&value[..MAX_FIELD_BYTES], true),
        false => (value, false),
    }
}

/// Appends `t` as RFC 3339 in UTC with nanoseconds: `2026-11-29T10:41:07.123456789Z`.
fn rfc3339(out: &mut String, t: SystemTime) {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_nanos()
    );
}

/// The proleptic Gregorian date of a count of days since 1970-01-01, by eras of 400
/// years (146 097 days), each starting on March 1st so that the leap day comes last.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, [0, 11]
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_gregorian_in_utc() {
        let at = |secs: u64, nanos: u32| {
            let mut s = String::new();
            rfc3339(&mut s, SystemTime::UNIX_EPOCH + Duration::new(secs, nanos));
            s
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        // `date -u -d @951782400`: the leap day of a year divisible by 400.
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(at(1_661_286_500, 71_809_491), "2022-08-23T20:28:20.071809491Z");
        // 2100 is not a leap year: February 28th is followed by March 1st.
        assert_eq!(at(4_107_542_399, 0), "2100-02-28T23:59:59.000000000Z");
        assert_eq!(at(4_107_542_400, 0), "2100-03-01T00:00:00.000000000Z");
        assert_eq!(at(1_798_761_599, 999_999_999), "2026-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn fields_cannot_break_a_line_or_a_quote() {
        let mut a = String::new();
        apache_escape(&mut a, b"/x\"y\\z\n\x01\xff ok");
        assert_eq!(a, r#"/x\"y\\z\x0a\x01\xff ok"#);
        let mut j = String::new();
        json_string(&mut j, b"a\"b\\c\nd\x01\xff");
        assert_eq!(j, "\"a\\\"b\\\\c\\nd\\u0001\u{fffd}\"");
        let mut long = String::new();
        apache_escape(&mut long, &[b'a'; MAX_FIELD_BYTES + 10]);
        assert_eq!(long.len(), MAX_FIELD_BYTES + 3);
        assert!(long.ends_with("a..."));
    }

    #[test]
    fn trace_ids_come_from_w3c_or_b3_headers() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, HeaderValue::from_static(v));
            }
            trace_id(&m)
        };
        let w3c = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        assert_eq!(h(&[("traceparent", w3c)]).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(h(&[("x-b3-traceid", "80f198ee56343ba8")]).as_deref(), Some("80f198ee56343ba8"));
        assert_eq!(
            h(&[("b3", "80f198ee56343ba8-e457b5a2e4d86bd1-1")]).as_deref(),
            Some("80f198ee56343ba8")
        );
        assert_eq!(h(&[("traceparent", "00-zz-00-01")]), None);
        assert_eq!(h(&[("x-b3-traceid", "not hex")]), None);
        assert_eq!(h(&[]), None);
    }

    /// A sink that takes nothing: every write blocks until the test ends.
    struct Stuck(mpsc::Receiver<()>);
    impl std::io::Write for Stuck {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_reader_that_stops_costs_a_bounded_backlog_and_counted_drops() {
        let metrics = AccessLogMetrics::default();
        let (release, stuck) = mpsc::channel();
        let log =
            AccessLog::start_with(Format::Json, metrics.clone(), Stuck(stuck)).expect("test value");
        let req = Request::get("http://web:8080/x").body(()).expect("test value");
        let lines = 2 * MAX_BACKLOG_BYTES / 200;
        for _ in 0..lines {
            let mut e = log.begin(&req, "10.0.0.1:1234".parse().expect("test value"), None);
            e.forwarding();
            e.finish(200, 10);
        }
        assert!(log.backlog.load(Ordering::Relaxed) <= MAX_BACKLOG_BYTES);
        let dropped = metrics.lines.get_or_create(&ResultLabels { result: "dropped" }).get();
        assert!(dropped > 0 && dropped < lines as u64, "dropped {dropped} of {lines}");
        drop(release);
    }

    #[test]
    fn lines_have_linkerds_fields() {
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        struct Sink(mpsc::Sender<Vec<u8>>);
        impl std::io::Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.send(b.to_vec());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        for (format, want) in [
            (
                Format::Apache,
                "10.0.0.1:1234 web.prod.serviceaccount.identity.weft.cluster.local - [",
            ),
            (Format::Json, "{\"client.addr\":\"10.0.0.1:1234\",\"client.id\":\"web.prod"),
        ] {
            let log = AccessLog::start_with(format, AccessLogMetrics::default(), Sink(tx.clone()))
                .expect("test value");
            let req = Request::post("/books?id=1")
                .header("host", "books:8080")
                .header("user-agent", "curl/8")
                .body(())
                .expect("test value");
            let id: Arc<str> = "web.prod.serviceaccount.identity.weft.cluster.local".into();
            let e = log.begin(&req, "10.0.0.1:1234".parse().expect("test value"), Some(id));
            e.request_bytes.store(33, Ordering::Relaxed);
            e.finish(303, 0);
            drop(log);
            let line = String::from_utf8(rx.recv_timeout(EXIT_FLUSH).expect("test value"))
                .expect("test value");
            assert!(line.starts_with(want), "{line}");
            assert!(line.ends_with('\n'));
            match format {
                Format::Apache => {
                    assert!(line.ends_with("] \"POST /books?id=1 HTTP/1.1\" 303 -\n"), "{line}")
                }
                Format::Json => {
                    for f in [
                        "\"host\":\"books:8080\"",
                        "\"method\":\"POST\"",
                        "\"request_bytes\":\"33\"",
                        "\"response_bytes\":\"0\"",
                        "\"status\":303,",
                        "\"uri\":\"/books?id=1\"",
                        "\"user_agent\":\"curl/8\"",
                        "\"version\":\"HTTP/1.1\"}",
                    ] {
                        assert!(line.contains(f), "{f} in {line}");
                    }
                }
            }
        }
    }
}
