//! The proxy's metrics: one registry, transport families with Linkerd's names and labels,
//! bounded label cardinality, idle series retention, process metrics read from /proc on
//! each scrape, and what the proxy was built from (`proxy_build_info`).

use std::{
    collections::{HashMap, HashSet},
    io,
    sync::{Arc, Mutex, RwLock, Weak},
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

use crate::detect::Protocol;

pub mod retention;

use retention::{Index, Lease};

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What this proxy was built from: Linkerd's `proxy_build_info` labels (constant 1), and
/// `weft-proxy --version`. The commit and the date are the builder's to give, as
/// linkerd2-proxy's are (`WEFT_BUILD_GIT_SHA`, `WEFT_BUILD_DATE` at build time;
/// the release build and the benches set them): a plain `cargo build` says `unknown`
/// rather than recompile the proxy at every commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BuildInfo {
    pub date: &'static str,
    pub git_sha: &'static str,
    pub profile: &'static str,
    pub vendor: &'static str,
    pub version: &'static str,
}

pub const BUILD_INFO: BuildInfo = BuildInfo {
    date: match option_env!("WEFT_BUILD_DATE") {
        Some(d) => d,
        None => "unknown",
    },
    git_sha: match option_env!("WEFT_BUILD_GIT_SHA") {
        Some(s) => s,
        None => "unknown",
    },
    profile: if cfg!(debug_assertions) { "debug" } else { "release" },
    vendor: "weft",
    version: env!("CARGO_PKG_VERSION"),
};

/// `PGO` when the optimizer was guided by a profile (the shipped binary),
/// `PGO-instrumented` for a build that records one, empty otherwise (`build.rs`).
const PGO: &str = env!("WEFT_BUILD_PGO");

impl BuildInfo {
    /// `--version`'s text after the name.
    pub fn long_version(&self) -> String {
        let BuildInfo { date, git_sha, profile, version, .. } = self;
        let built = match *date {
            "unknown" => String::new(),
            date => format!(", built {date}"),
        };
        let pgo = if PGO.is_empty() { String::new() } else { format!(", {PGO}") };
        format!("{version} (git {git_sha}{built}, {profile}{pgo})")
    }
}

/// Which side of the pod a connection serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Which peer of the proxy a transport metric describes: the client that connected to
/// the proxy (`src`) or the upstream the proxy connected to (`dst`), as in Linkerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    Src,
    Dst,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: &'static str,
    pub peer: &'static str,
    pub target_addr: String,
    pub protocol: &'static str,
    #[prometheus(flatten)]
    pub tls: TlsLabels,
    /// The `dst_*` labels of the discovered endpoint a `peer="dst"` connection went to;
    /// none on any other connection.
    #[prometheus(flatten)]
    pub dst: DstLabels,
}

/// Linkerd's TLS labels: `tls="true"` with the peer's `client_id` (inbound) or
/// `server_id` (outbound), or `tls="no_identity"` with a `no_tls_reason`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TlsLabels {
    pub tls: &'static str,
    pub no_tls_reason: &'static str,
    pub client_id: Option<Arc<str>>,
    pub server_id: Option<Arc<str>>,
}

impl TlsLabels {
    /// Identity is off in this proxy.
    pub fn disabled() -> Self {
        TlsLabels { tls: "no_identity", no_tls_reason: "disabled", ..Default::default() }
    }

    /// Plaintext (or someone else's TLS) while identity is on.
    pub fn plaintext(reason: &'static str) -> Self {
        TlsLabels { tls: "no_identity", no_tls_reason: reason, ..Default::default() }
    }

    pub fn client(id: Option<Arc<str>>) -> Self {
        TlsLabels { tls: "true", client_id: id, ..Default::default() }
    }

    pub fn server(id: Arc<str>) -> Self {
        TlsLabels { tls: "true", server_id: Some(id), ..Default::default() }
    }
}

impl prometheus_client::encoding::EncodeLabelSet for TlsLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let mut labels: Vec<(&str, &str)> = vec![("tls", self.tls)];
        if !self.no_tls_reason.is_empty() {
            labels.push(("no_tls_reason", self.no_tls_reason));
        }
        if let Some(id) = &self.client_id {
            labels.push(("client_id", id));
        }
        if let Some(id) = &self.server_id {
            labels.push(("server_id", id));
        }
        labels.as_slice().encode(encoder)
    }
}

/// The `dst_*` labels of a discovered endpoint: its set's and its own `metric_labels` as
/// the destination service sent them, each key prefixed `dst_` (see
/// `discovery::endpoint`), sorted. Made once per endpoint and shared (an `Arc`) by the
/// series of its routes and its connections, on which they are the same labels in the same
/// order. Their number follows the endpoints discovery holds, not the clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DstLabels(pub Arc<Vec<(String, String)>>);

impl Default for DstLabels {
    /// None: one empty list shared by every connection and route without any, so that
    /// opening a connection's metrics allocates none.
    fn default() -> Self {
        static NONE: std::sync::LazyLock<Arc<Vec<(String, String)>>> =
            std::sync::LazyLock::new(|| Arc::new(Vec::new()));
        DstLabels(NONE.clone())
    }
}

impl EncodeLabelSet for DstLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        self.0.as_slice().encode(encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CloseLabels {
    #[prometheus(flatten)]
    pub tcp: TcpLabels,
    pub errno: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

/// Caps the values of a label that clients control (target addresses, authorities): past
/// `max` distinct values, new ones are folded into `overflow`, and values longer than
/// `MAX_VALUE_BYTES` (or that the caller found invalid) into `invalid`, so a client cannot
/// grow the proxy's memory (or its `/metrics`) by varying them. Both are counted in
/// `metrics_label_values_folded_total{label,reason}`. Values whose series are all evicted
/// leave the cap again (`release_unused`), unless admitted as `admit_kept`.
#[derive(Debug)]
pub struct LabelCap {
    label: &'static str,
    max: usize,
    /// Values kept apart, each with whether it is kept for good (used by series that are
    /// never evicted).
    seen: RwLock<HashMap<String, bool>>,
    /// Values no evictable series used at the last sweep.
    unused: Mutex<HashSet<String>>,
    folded: Family<FoldLabels, Counter>,
}

pub const OVERFLOW: &str = "overflow";

/// The value of a label whose client-given value was not a valid one.
pub const INVALID: &str = "invalid";

/// Longest label value kept: room for the longest valid authority (a 253-byte name, `:`
/// and a port), so a capped label holds at most `max` × this many bytes.
pub const MAX_VALUE_BYTES: usize = 320;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FoldLabels {
    pub label: &'static str,
    /// `overflow` (past the cap) or `invalid`.
    pub reason: &'static str,
}

impl LabelCap {
    /// `folded`: where folded values are counted (`metrics_label_values_folded_total`).
    pub fn new(label: &'static str, max: usize, folded: Family<FoldLabels, Counter>) -> Self {
        LabelCap { label, max, seen: RwLock::new(HashMap::new()), unused: Mutex::default(), folded }
    }

    /// `admit` for a borrowed value (the common case: one already admitted).
    pub fn admit_str(&self, value: &str) -> String {
        if value.len() > MAX_VALUE_BYTES {
            return self.invalid();
        }
        if self.seen.read().unwrap_or_else(|e| e.into_inner()).contains_key(value) {
            return value.to_string();
        }
        self.admit(value.to_string())
    }

    /// The label value of `value`: itself while the cap has room (or it already has it).
    pub fn admit(&self, value: String) -> String {
        self.admit_with(value, false)
    }

    /// `admit` for a value of series that are never evicted: it never leaves the cap, so
    /// the cap still bounds those series.
    pub fn admit_kept(&self, value: String) -> String {
        self.admit_with(value, true)
    }

    fn admit_with(&self, value: String, keep: bool) -> String {
        if value.len() > MAX_VALUE_BYTES {
            return self.invalid();
        }
        if let Some(&kept) = self.seen.read().unwrap_or_else(|e| e.into_inner()).get(&value)
            && (kept || !keep)
        {
            return value;
        }
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = seen.get_mut(&value) {
            *kept |= keep;
            value
        } else if seen.len() < self.max {
            seen.insert(value.clone(), keep);
            value
        } else {
            drop(seen);
            self.fold(OVERFLOW);
            OVERFLOW.to_string()
        }
    }

    /// Gives back the room of values that no series uses (`in_use` says which are),
    /// at a sweep's end: a value leaves when it was unused at the previous sweep too, so
    /// that one admitted just before a sweep, whose series is not registered yet, stays.
    pub fn release_unused(&self, in_use: impl Fn(&str) -> bool) {
        let mut unused = self.unused.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = self.seen.write().unwrap_or_else(|e| e.into_inner());
        let mut now_unused = HashSet::new();
        seen.retain(|value, kept| {
            if *kept || in_use(value) {
                return true;
            }
            if unused.contains(value) {
                return false;
            }
            now_unused.insert(value.clone());
            true
        });
        *unused = now_unused;
    }

    /// The value of a client-given value that is not a valid one (counted).
    pub fn invalid(&self) -> String {
        self.fold(INVALID);
        INVALID.to_string()
    }

    fn fold(&self, reason: &'static str) {
        self.folded.get_or_create(&FoldLabels { label: self.label, reason }).inc();
    }

    /// Bytes of the values kept apart.
    #[cfg(test)]
    pub fn stored_bytes(&self) -> usize {
        self.seen.read().unwrap_or_else(|e| e.into_inner()).keys().map(String::len).sum()
    }
}

/// Transport metric families, shared by the inbound and outbound sides.
#[derive(Debug, Clone, Default)]
pub struct TcpMetrics {
    open_total: Family<TcpLabels, Counter>,
    open_connections: Family<TcpLabels, Gauge>,
    read_bytes: Family<TcpLabels, Counter>,
    write_bytes: Family<TcpLabels, Counter>,
    close_total: Family<CloseLabels, Counter>,
}

impl TcpMetrics {
    /// Removes a connection label set's series from every transport family.
    fn remove(&self, labels: &TcpLabels) {
        self.open_total.remove(labels);
        self.open_connections.remove(labels);
        self.read_bytes.remove(labels);
        self.write_bytes.remove(labels);
        for errno in errnos() {
            self.close_total.remove(&CloseLabels { tcp: labels.clone(), errno });
        }
    }
}

/// A connection's view of the transport metrics: counters resolved once at open so
/// that the byte-copy loop only touches atomics.
#[derive(Debug)]
pub struct ConnMetrics {
    labels: TcpLabels,
    pub read_bytes: Counter,
    pub write_bytes: Counter,
    open: Gauge,
    close_total: Family<CloseLabels, Counter>,
    closed: bool,
    /// Keeps the label set's series while the handles above are held.
    _lease: Arc<Lease>,
}

impl ConnMetrics {
    /// Records the close, with the error that ended the connection if any.
    pub fn close(mut self, err: Option<&io::Error>) {
        self.record_close(err.map_or("", errno));
    }

    fn record_close(&mut self, errno: &'static str) {
        if !self.closed {
            self.closed = true;
            self.open.dec();
            let labels = CloseLabels { tcp: self.labels.clone(), errno };
            self.close_total.get_or_create(&labels).inc();
        }
    }
}

impl Drop for ConnMetrics {
    fn drop(&mut self) {
        // A connection dropped without an explicit close (a task cancelled at shutdown).
        self.record_close("");
    }
}

/// Per-direction error counters: `{inbound,outbound}_tcp_errors_total{error}`.
#[derive(Debug, Clone, Default)]
pub struct TcpErrors(Family<ErrorLabels, Counter>);

impl TcpErrors {
    pub fn inc(&self, error: &'static str) {
        self.0.get_or_create(&ErrorLabels { error }).inc();
    }

    pub fn get(&self, error: &'static str) -> u64 {
        self.0.get_or_create(&ErrorLabels { error }).get()
    }
}

/// Everything the proxy measures, and the registry that renders it.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tcp: TcpMetrics,
    pub inbound_errors: TcpErrors,
    pub outbound_errors: TcpErrors,
    /// `admin_tcp_errors_total{error}`: admin-port connections refused or failed.
    pub admin_errors: TcpErrors,
    detecting: Family<DirectionLabels, Gauge>,
    pub http: crate::http::metrics::HttpMetrics,
    pub discovery: crate::discovery::DiscoveryMetrics,
    pub authz: crate::policy::AuthzMetrics,
    pub policy: crate::policy::discover::PolicyMetrics,
    pub access_log: crate::http::access_log::AccessLogMetrics,
    target_addrs: LabelCap,
    /// The label sets of connections, for retention.
    connections: Index<TcpLabels>,
    /// `metrics_series_evicted_total`.
    evicted: Counter,
}

/// Counts a connection as detecting while it lives.
#[derive(Debug)]
pub struct Detecting(Gauge);

impl Drop for Detecting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn new(max_label_values: usize) -> Arc<Self> {
        Self::with(max_label_values, |_| Ok(())).map(|(m, ())| m).unwrap_or_else(
            |_: anyhow::Error| unreachable!("registering nothing extra cannot fail"),
        )
    }

    /// Like `new`, letting `extra` register components' own families (identity, ...).
    pub fn with<T>(
        max_label_values: usize,
        extra: impl FnOnce(&mut Registry) -> anyhow::Result<T>,
    ) -> anyhow::Result<(Arc<Self>, T)> {
        let mut registry = Registry::default();
        let extra = extra(&mut registry)?;
        let tcp = TcpMetrics::default();
        registry.register("tcp_open", "Connections opened", tcp.open_total.clone());
        registry.register(
            "tcp_open_connections",
            "Connections currently open",
            tcp.open_connections.clone(),
        );
        registry.register("tcp_read_bytes", "Bytes read from the peer", tcp.read_bytes.clone());
        registry.register("tcp_write_bytes", "Bytes written to the peer", tcp.write_bytes.clone());
        registry.register("tcp_close", "Connections closed", tcp.close_total.clone());
        let inbound_errors = TcpErrors::default();
        let outbound_errors = TcpErrors::default();
        registry.register(
            "inbound_tcp_errors",
            "Inbound connections that failed, by reason",
            inbound_errors.0.clone(),
        );
        registry.register(
            "outbound_tcp_errors",
            "Outbound connections that failed, by reason",
            outbound_errors.0.clone(),
        );
        let admin_errors = TcpErrors::default();
        registry.register(
            "admin_tcp_errors",
            "Admin-port connections that were refused or failed, by reason",
            admin_errors.0.clone(),
        );
        let detecting = Family::<DirectionLabels, Gauge>::default();
        registry.register(
            "tcp_detecting_connections",
            "Accepted connections whose protocol is not known yet (silent or slow clients)",
            detecting.clone(),
        );
        let folded = Family::<FoldLabels, Counter>::default();
        registry.register(
            "metrics_label_values_folded",
            "Client-given label values not kept apart: past the label's cap (`overflow`) or not a valid value (`invalid`)",
            folded.clone(),
        );
        let evicted = Counter::default();
        registry.register(
            "metrics_series_evicted",
            "Label sets of connections and routes whose series were removed after going unused for the retention period",
            evicted.clone(),
        );
        let http =
            crate::http::metrics::HttpMetrics::register(&mut registry, max_label_values, &folded);
        let discovery = crate::discovery::DiscoveryMetrics::register(&mut registry);
        let authz = crate::policy::AuthzMetrics::register(&mut registry);
        let policy = crate::policy::discover::PolicyMetrics::register(&mut registry);
        let access_log = crate::http::access_log::AccessLogMetrics::register(&mut registry);
        registry.register_collector(Box::new(ProcessCollector));
        let build = Family::<BuildInfo, Gauge>::default();
        build.get_or_create(&BUILD_INFO).set(1);
        registry.register("proxy_build_info", "Proxy build info", build);
        let metrics = Arc::new(Metrics {
            registry,
            tcp,
            inbound_errors,
            outbound_errors,
            admin_errors,
            detecting,
            http,
            discovery,
            authz,
            policy,
            access_log,
            target_addrs: LabelCap::new("target_addr", max_label_values, folded),
            connections: Index::default(),
            evicted,
        });
        Ok((metrics, extra))
    }

    pub fn errors(&self, direction: Direction) -> &TcpErrors {
        match direction {
            Direction::Inbound => &self.inbound_errors,
            Direction::Outbound => &self.outbound_errors,
        }
    }

    /// The `target_addr` label value of a target (capped).
    pub fn target_label(&self, target: &std::net::SocketAddr) -> String {
        self.target_addrs.admit(target.to_string())
    }

    /// `target_label` for series that are never evicted (the authorization counters).
    pub fn kept_target_label(&self, target: &std::net::SocketAddr) -> String {
        self.target_addrs.admit_kept(target.to_string())
    }

    /// Marks a connection as in protocol detection until the guard is dropped.
    pub fn detecting(&self, direction: Direction) -> Detecting {
        let g = self
            .detecting
            .get_or_create(&DirectionLabels { direction: direction.as_str() })
            .clone();
        g.inc();
        Detecting(g)
    }

    /// Opens the metrics of one side of a proxied connection.
    pub fn open(
        &self,
        direction: Direction,
        peer: Peer,
        target_addr: &std::net::SocketAddr,
        protocol: &Protocol,
        tls: TlsLabels,
    ) -> ConnMetrics {
        self.open_endpoint(direction, peer, target_addr, protocol, tls, &DstLabels::default())
    }

    /// `open` for a connection to a discovered endpoint (the upstream side, `Peer::Dst`,
    /// of one the balancer sent there): its series carry the endpoint's `dst_*` labels
    /// too, as its routes' do.
    pub fn open_endpoint(
        &self,
        direction: Direction,
        peer: Peer,
        target_addr: &std::net::SocketAddr,
        protocol: &Protocol,
        tls: TlsLabels,
        dst: &DstLabels,
    ) -> ConnMetrics {
        let labels = TcpLabels {
            direction: direction.as_str(),
            peer: match peer {
                Peer::Src => "src",
                Peer::Dst => "dst",
            },
            target_addr: self.target_label(target_addr),
            protocol: protocol.label(),
            tls,
            dst: dst.clone(),
        };
        // Before any handle: see `retention`.
        let lease = self.connections.lease(&labels);
        self.tcp.open_total.get_or_create(&labels).inc();
        let open = self.tcp.open_connections.get_or_create(&labels).clone();
        open.inc();
        ConnMetrics {
            read_bytes: self.tcp.read_bytes.get_or_create(&labels).clone(),
            write_bytes: self.tcp.write_bytes.get_or_create(&labels).clone(),
            open,
            close_total: self.tcp.close_total.clone(),
            labels,
            closed: false,
            _lease: lease,
        }
    }

    /// Removes the series of connection and route label sets unused for `retain`
    /// (see `retention`), counts them, and gives their label values' room back to the
    /// caps.
    pub fn sweep(&self, now: Instant, retain: Duration) {
        let tcp = &self.tcp;
        let evicted = self.connections.sweep(now, retain, |labels, _| tcp.remove(labels))
            + self.http.sweep(now, retain);
        self.evicted.inc_by(evicted);
        let mut target_addrs = HashSet::new();
        self.connections.for_each(|l| {
            target_addrs.insert(l.target_addr.clone());
        });
        let authorities = self.http.label_values(&mut target_addrs);
        self.target_addrs.release_unused(|v| target_addrs.contains(v));
        self.http.release_unused(|v| authorities.contains(v));
    }

    /// Sweeps every `retain / 4` (at most a minute) while the metrics live.
    pub async fn retain_idle(metrics: Weak<Self>, retain: Duration) {
        let period = (retain / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(metrics) = metrics.upgrade() else { return };
            metrics.sweep(tokio::time::Instant::now().into_std(), retain);
        }
    }

    /// Renders every metric in the Prometheus text format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = self.render_into(&mut out);
        out
    }

    /// Encodes the page into `out` as it goes, with no copy of the whole page in between
    /// (a proxy with thousands of label sets has megabytes of it).
    pub fn render_into(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        prometheus_client::encoding::prometheus_text::encode(out, &self.registry)
    }
}

/// The errors with an `errno` label value of their own; any other is `other`, and a close
/// without an error `""`.
const NAMED_ERRNOS: [(i32, &str); 7] = [
    (libc::ECONNRESET, "ECONNRESET"),
    (libc::EPIPE, "EPIPE"),
    (libc::ETIMEDOUT, "ETIMEDOUT"),
    (libc::ECONNREFUSED, "ECONNREFUSED"),
    (libc::EHOSTUNREACH, "EHOSTUNREACH"),
    (libc::ENETUNREACH, "ENETUNREACH"),
    (libc::ECONNABORTED, "ECONNABORTED"),
];

/// Every `errno` label value.
fn errnos() -> impl Iterator<Item = &'static str> {
    std::iter::once("").chain(NAMED_ERRNOS.iter().map(|(_, name)| *name)).chain(["other"])
}

#[cfg(test)]
impl Metrics {
    /// Sweeps at `t0`, a retention period later and once more: an idle label set's series
    /// go at the second, its label values leave the cap at the third. Returns the last.
    pub fn sweep_past_retention(&self, t0: Instant, retain: Duration) -> Instant {
        self.sweep(t0, retain);
        self.sweep(t0 + retain, retain);
        let end = t0 + retain + retain / 4;
        self.sweep(end, retain);
        end
    }
}

/// A short, stable name for the error that closed a connection (Linkerd's `errno` label);
/// one of `errnos()`.
fn errno(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(code) => NAMED_ERRNOS.iter().find(|(c, _)| *c == code).map_or("other", |(_, n)| n),
        None => match err.kind() {
            io::ErrorKind::TimedOut => "ETIMEDOUT",
            io::ErrorKind::ConnectionReset => "ECONNRESET",
            io::ErrorKind::BrokenPipe => "EPIPE",
            _ => "other",
        },
    }
}

/// `process_*` metrics, read from /proc on each scrape.
#[derive(Debug)]
struct ProcessCollector;

/// What /proc says about this process.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: i64,
    pub virtual_bytes: i64,
    pub start_time_seconds: f64,
    pub open_fds: i64,
    pub max_fds: i64,
}

impl ProcessStats {
    /// Reads this process's stats; `None` on a system without a Linux /proc.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is parenthesised and may hold spaces.
        let after = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        // Field numbers in proc(5) start at 1 with pid; `after` starts at field 3.
        let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        // SAFETY: sysconf has no memory-safety preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1);
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<u64>().ok()))?;
        let open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as i64).unwrap_or(0);
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `lim` is a valid, writable rlimit.
        let max_fds = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            i64::try_from(lim.rlim_cur).unwrap_or(i64::MAX)
        } else {
            0
        };
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            virtual_bytes: field(23)? as i64,
            resident_bytes: field(24)? as i64 * page,
            start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
            open_fds,
            max_fds,
        })
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(p.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges: [(&str, &str, f64); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                p.virtual_bytes as f64,
            ),
            ("process_open_fds", "Number of open file descriptors", p.open_fds as f64),
            ("process_max_fds", "Maximum number of open file descriptors", p.max_fds as f64),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                p.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_cap_folds_values_past_the_limit() {
        let folded = Family::<FoldLabels, Counter>::default();
        let cap = LabelCap::new("authority", 2, folded.clone());
        assert_eq!(cap.admit("a".into()), "a");
        assert_eq!(cap.admit("b".into()), "b");
        assert_eq!(cap.admit("c".into()), OVERFLOW);
        assert_eq!(cap.admit("a".into()), "a");
        let overflow = FoldLabels { label: "authority", reason: OVERFLOW };
        assert_eq!(folded.get_or_create(&overflow).get(), 1);
    }

    /// Many long values cost at most the cap's count × `MAX_VALUE_BYTES`.
    #[test]
    fn label_cap_memory_is_bounded_in_count_and_length() {
        let folded = Family::<FoldLabels, Counter>::default();
        let cap = LabelCap::new("authority", 100, folded.clone());
        for i in 0..2_000 {
            let long = format!("{i}{}", "a".repeat(60 * 1024));
            assert_eq!(cap.admit_str(&long), INVALID);
            let short = format!("{i}.{}", "b".repeat(MAX_VALUE_BYTES - 10));
            let _ = cap.admit(short);
        }
        assert!(cap.stored_bytes() <= 100 * MAX_VALUE_BYTES, "{}", cap.stored_bytes());
        let invalid = FoldLabels { label: "authority", reason: INVALID };
        assert_eq!(folded.get_or_create(&invalid).get(), 2_000);
        let overflow = FoldLabels { label: "authority", reason: OVERFLOW };
        assert_eq!(folded.get_or_create(&overflow).get(), 1_900);
    }

    #[test]
    fn renders_linkerd_names_and_process_metrics() {
        let m = Metrics::new(10);
        let addr = "10.0.0.1:80".parse().expect("addr");
        let c =
            m.open(Direction::Inbound, Peer::Src, &addr, &Protocol::Http1, TlsLabels::disabled());
        c.read_bytes.inc_by(5);
        c.close(Some(&io::Error::from_raw_os_error(libc::ECONNRESET)));
        m.errors(Direction::Outbound).inc("connect_refused");
        let text = m.render();
        for want in [
            "tcp_open_total{direction=\"inbound\",peer=\"src\",target_addr=\"10.0.0.1:80\",protocol=\"http/1\"",
            "tcp_read_bytes_total{direction=\"inbound\"",
            "tcp_open_connections{direction=\"inbound\"",
            "errno=\"ECONNRESET\"} 1",
            "outbound_tcp_errors_total{error=\"connect_refused\"} 1",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_start_time_seconds ",
            "process_open_fds ",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        // Linkerd's build info, with this build's values.
        let BuildInfo { date, git_sha, profile, version, .. } = BUILD_INFO;
        let build = format!(
            "proxy_build_info{{date=\"{date}\",git_sha=\"{git_sha}\",profile=\"{profile}\",vendor=\"weft\",version=\"{version}\"}} 1\n"
        );
        assert!(text.contains(&build), "missing {build:?} in:\n{text}");
        assert_eq!(version, env!("CARGO_PKG_VERSION"));
        assert!(text.contains("} 5\n"), "{text}");
    }

    #[test]
    fn dropping_an_open_connection_counts_a_close_once() {
        let m = Metrics::new(10);
        let addr = "10.0.0.1:80".parse().expect("addr");
        drop(m.open(
            Direction::Outbound,
            Peer::Dst,
            &addr,
            &Protocol::Opaque,
            TlsLabels::disabled(),
        ));
        let text = m.render();
        assert!(text.contains("errno=\"\"} 1"), "{text}");
        assert!(text.contains("tcp_open_connections{direction=\"outbound\",peer=\"dst\",target_addr=\"10.0.0.1:80\",protocol=\"opaque\",tls=\"no_identity\",no_tls_reason=\"disabled\"} 0"), "{text}");
    }

    fn dst_labels(pairs: &[(&str, &str)]) -> DstLabels {
        DstLabels(Arc::new(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()))
    }

    /// The labels of the first `name` series, between the braces.
    fn series_labels<'a>(text: &'a str, name: &str) -> &'a str {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        &line[name.len() + 1..line.rfind('}').expect("closing brace")]
    }

    /// A connection to a discovered endpoint carries its `dst_*` labels after the TLS
    /// ones, on every transport family (the close's `errno` last).
    #[test]
    fn an_endpoints_connection_carries_its_dst_labels() {
        let m = Metrics::new(10);
        let addr = "10.0.0.7:5432".parse().expect("addr");
        let dst =
            dst_labels(&[("dst_namespace", "prod"), ("dst_pod", "db-0"), ("dst_service", "db")]);
        let tls =
            TlsLabels::server(Arc::from("db.prod.serviceaccount.identity.weft.cluster.local"));
        let c =
            m.open_endpoint(Direction::Outbound, Peer::Dst, &addr, &Protocol::Opaque, tls, &dst);
        c.read_bytes.inc_by(3);
        c.write_bytes.inc_by(4);
        c.close(Some(&io::Error::from_raw_os_error(libc::ECONNRESET)));
        let text = m.render();
        let labels = "direction=\"outbound\",peer=\"dst\",target_addr=\"10.0.0.7:5432\",protocol=\"opaque\",tls=\"true\",server_id=\"db.prod.serviceaccount.identity.weft.cluster.local\",dst_namespace=\"prod\",dst_pod=\"db-0\",dst_service=\"db\"";
        for want in [
            format!("tcp_open_total{{{labels}}} 1\n"),
            format!("tcp_open_connections{{{labels}}} 0\n"),
            format!("tcp_read_bytes_total{{{labels}}} 3\n"),
            format!("tcp_write_bytes_total{{{labels}}} 4\n"),
            format!("tcp_close_total{{{labels},errno=\"ECONNRESET\"}} 1\n"),
        ] {
            assert!(text.contains(&want), "missing {want:?} in:\n{text}");
        }
    }

    /// Without discovery's labels, a connection's series are what they always were: no
    /// `dst_*` label, no stray separator.
    #[test]
    fn a_connection_without_dst_labels_keeps_its_labels() {
        let m = Metrics::new(10);
        let addr = "10.0.0.1:80".parse().expect("addr");
        let tls = TlsLabels::disabled;
        m.open_endpoint(
            Direction::Outbound,
            Peer::Dst,
            &addr,
            &Protocol::Opaque,
            tls(),
            &DstLabels::default(),
        )
        .close(None);
        let text = m.render();
        let want = "tcp_open_total{direction=\"outbound\",peer=\"dst\",target_addr=\"10.0.0.1:80\",protocol=\"opaque\",tls=\"no_identity\",no_tls_reason=\"disabled\"} 1\n";
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
        m.open(Direction::Outbound, Peer::Dst, &addr, &Protocol::Opaque, tls()).close(None);
        let text = m.render();
        assert!(text.contains(&want.replace("} 1\n", "} 2\n")), "one series:\n{text}");
        assert!(text.contains("errno=\"\"} 2\n"), "{text}");
        assert!(!text.contains("dst_"), "{text}");
    }

    /// The `dst_*` labels of an endpoint read the same on its connections as on its
    /// routes: same names, same order, values escaped by the same encoder.
    #[test]
    fn dst_labels_encode_as_on_http_routes() {
        let m = Metrics::new(10);
        let addr = "10.0.0.7:80".parse().expect("addr");
        let dst = dst_labels(&[
            ("dst_deployment", "web"),
            ("dst_namespace", "prod"),
            ("dst_pod", "web-\"0\"\\x\ny"),
            ("dst_service", "web"),
        ]);
        let tls = || TlsLabels::plaintext("not_provided_by_service_discovery");
        m.open_endpoint(Direction::Outbound, Peer::Dst, &addr, &Protocol::Opaque, tls(), &dst)
            .close(None);
        let route = m.http.route(Direction::Outbound, "web:80", "10.0.0.7:80".into(), dst, tls());
        m.http.request(&route);
        let text = m.render();
        let tcp = series_labels(&text, "tcp_open_total");
        let http = series_labels(&text, "request_total");
        let suffix = ",no_tls_reason=\"not_provided_by_service_discovery\",dst_deployment=\"web\",dst_namespace=\"prod\",dst_pod=\"web-\\\"0\\\"\\\\x\\ny\",dst_service=\"web\"";
        assert!(tcp.ends_with(suffix), "{tcp}");
        assert!(http.ends_with(suffix), "{http}");
    }

    /// Each endpoint of a target has series of its own, evicted once idle like any other
    /// connection's; the endpoints' labels are not counted against the `target_addr` cap.
    #[test]
    fn endpoint_connection_series_are_evicted_when_idle() {
        let m = Metrics::new(1);
        let addr = "10.96.0.41:5432".parse().expect("addr");
        for pod in ["db-0", "db-1"] {
            let dst = dst_labels(&[("dst_pod", pod)]);
            let tls = TlsLabels::disabled();
            m.open_endpoint(Direction::Outbound, Peer::Dst, &addr, &Protocol::Opaque, tls, &dst)
                .close(None);
        }
        let text = m.render();
        for pod in ["db-0", "db-1"] {
            let want = format!(
                "target_addr=\"10.96.0.41:5432\",protocol=\"opaque\",tls=\"no_identity\",no_tls_reason=\"disabled\",dst_pod=\"{pod}\"}} 1\n"
            );
            assert!(text.contains(&want), "missing {want:?} in:\n{text}");
        }
        evict_idle(&m, "dst_pod=", 2);
        // The target's value left the cap: another target has room again.
        conn(&m, "10.0.0.9:80").close(None);
        let text = m.render();
        assert!(text.contains("target_addr=\"10.0.0.9:80\""), "{text}");
    }

    const RETAIN: Duration = Duration::from_secs(600);

    fn conn(m: &Metrics, addr: &str) -> ConnMetrics {
        let addr = addr.parse().expect("addr");
        m.open(Direction::Outbound, Peer::Dst, &addr, &Protocol::Opaque, TlsLabels::disabled())
    }

    fn sweep_past_retention(m: &Metrics, t0: Instant) -> Instant {
        m.sweep_past_retention(t0, RETAIN)
    }

    /// Sweeps past the retention period: no series with `gone` is left, and `evicted` label
    /// sets were counted as evicted.
    fn evict_idle(m: &Metrics, gone: &str, evicted: u64) {
        sweep_past_retention(m, Instant::now());
        let text = m.render();
        assert!(!text.contains(gone), "every series with {gone} is gone:\n{text}");
        assert!(text.contains(&format!("metrics_series_evicted_total {evicted}\n")), "{text}");
    }

    #[test]
    fn label_cap_gives_back_values_unused_at_two_sweeps_but_not_kept_ones() {
        let folded = Family::<FoldLabels, Counter>::default();
        let cap = LabelCap::new("target_addr", 2, folded.clone());
        assert_eq!(cap.admit("a".into()), "a");
        assert_eq!(cap.admit_kept("k".into()), "k");
        assert_eq!(cap.admit("b".into()), OVERFLOW);
        cap.release_unused(|_| false);
        assert_eq!(cap.admit("b".into()), OVERFLOW, "unused at one sweep only");
        cap.release_unused(|_| false);
        assert_eq!(cap.admit("b".into()), "b");
        assert_eq!(cap.admit("c".into()), OVERFLOW, "the kept value stays");
        cap.release_unused(|v| v == "b");
        cap.release_unused(|v| v == "b");
        assert_eq!(cap.admit("c".into()), OVERFLOW, "a used value stays");
    }

    #[test]
    fn idle_connection_series_are_evicted_and_their_values_leave_the_cap() {
        let m = Metrics::new(2);
        for addr in ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"] {
            conn(&m, addr).close(Some(&io::Error::from_raw_os_error(libc::ECONNRESET)));
        }
        let text = m.render();
        assert!(text.contains("target_addr=\"overflow\""), "{text}");
        evict_idle(&m, "target_addr=", 3);
        // A new endpoint gets its own series again.
        conn(&m, "10.0.0.4:80").close(None);
        let text = m.render();
        assert!(
            text.contains(
                "tcp_open_total{direction=\"outbound\",peer=\"dst\",target_addr=\"10.0.0.4:80\""
            ),
            "{text}"
        );
        assert!(!text.contains("target_addr=\"overflow\""), "{text}");
        assert!(
            text.contains(
                "metrics_label_values_folded_total{label=\"target_addr\",reason=\"overflow\"} 1\n"
            ),
            "{text}"
        );
    }

    /// An open connection holds handles to its series: they stay however long it is idle,
    /// and what it counts after that shows.
    #[test]
    fn an_open_connection_keeps_its_series_however_long_it_is_idle() {
        let m = Metrics::new(10);
        let c = conn(&m, "10.0.0.1:80");
        c.read_bytes.inc_by(5);
        let t0 = Instant::now();
        for hours in [0, 1, 24, 24 * 30] {
            m.sweep(t0 + Duration::from_secs(hours * 3600), RETAIN);
        }
        let text = m.render();
        assert!(text.contains("tcp_open_connections{direction=\"outbound\",peer=\"dst\",target_addr=\"10.0.0.1:80\",protocol=\"opaque\",tls=\"no_identity\",no_tls_reason=\"disabled\"} 1\n"), "{text}");
        c.read_bytes.inc_by(7);
        c.close(None);
        let text = m.render();
        assert!(text.contains("tcp_read_bytes_total{direction=\"outbound\",peer=\"dst\",target_addr=\"10.0.0.1:80\",protocol=\"opaque\",tls=\"no_identity\",no_tls_reason=\"disabled\"} 12\n"), "{text}");
        assert!(text.contains("errno=\"\"} 1\n"), "{text}");
        assert!(text.contains("metrics_series_evicted_total 0\n"), "{text}");
    }

    /// Connections that come and go between sweeps keep their label set's series.
    #[test]
    fn a_label_set_in_use_between_sweeps_is_kept() {
        let m = Metrics::new(10);
        let t0 = Instant::now();
        for i in 0..12 {
            conn(&m, "10.0.0.1:80").close(None);
            m.sweep(t0 + RETAIN / 4 * i, RETAIN);
        }
        let text = m.render();
        assert!(text.contains("tcp_open_total{direction=\"outbound\",peer=\"dst\",target_addr=\"10.0.0.1:80\",protocol=\"opaque\",tls=\"no_identity\",no_tls_reason=\"disabled\"} 12\n"), "{text}");
        assert!(text.contains("metrics_series_evicted_total 0\n"), "{text}");
    }

    /// A label set evicted and used again starts over from what is counted after; the
    /// authorization counters' `target_addr` values are never given back.
    #[test]
    fn a_label_set_used_again_after_eviction_counts_from_zero() {
        let m = Metrics::new(10);
        let c = conn(&m, "10.0.0.1:80");
        c.read_bytes.inc_by(5);
        c.close(None);
        let t = sweep_past_retention(&m, Instant::now());
        let c = conn(&m, "10.0.0.1:80");
        c.read_bytes.inc_by(7);
        let kept = m.kept_target_label(&"10.0.0.9:80".parse().expect("addr"));
        sweep_past_retention(&m, t);
        c.close(None);
        let text = m.render();
        for want in [
            "tcp_open_total{direction=\"outbound\",peer=\"dst\",target_addr=\"10.0.0.1:80\",protocol=\"opaque\",tls=\"no_identity\",no_tls_reason=\"disabled\"} 1\n",
            "tcp_read_bytes_total{direction=\"outbound\",peer=\"dst\",target_addr=\"10.0.0.1:80\",protocol=\"opaque\",tls=\"no_identity\",no_tls_reason=\"disabled\"} 7\n",
            "metrics_series_evicted_total 1\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(m.target_addrs.seen.read().expect("lock").contains_key(&kept));
    }

    /// The proxy's sweeper evicts on its own (paused time), and ends with the metrics.
    #[tokio::test(start_paused = true)]
    async fn the_sweeper_evicts_idle_series_and_ends_with_the_metrics() {
        let m = Metrics::new(10);
        conn(&m, "10.0.0.1:80").close(None);
        let sweeper = tokio::spawn(Metrics::retain_idle(Arc::downgrade(&m), RETAIN));
        // Sweeps every minute from 0 s: the first to find it unused is at 0 s.
        tokio::time::sleep(RETAIN - Duration::from_secs(30)).await;
        assert!(m.render().contains("target_addr=\"10.0.0.1:80\""), "kept until idle for RETAIN");
        tokio::time::sleep(Duration::from_secs(60)).await;
        let text = m.render();
        assert!(!text.contains("target_addr="), "{text}");
        assert!(text.contains("metrics_series_evicted_total 1\n"), "{text}");
        drop(m);
        tokio::time::timeout(RETAIN, sweeper).await.expect("ended").expect("no panic");
    }
}
