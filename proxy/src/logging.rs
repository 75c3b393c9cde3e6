//! Tracing setup: plain or JSON output, and a filter that the admin server can read and
//! replace at runtime. And [`throttled!`](crate::throttled): lines a remote peer can cause
//! in a loop, at most one a second per call site at their level, the rest at debug.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use tracing_subscriber::{
    EnvFilter, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

use crate::config::LogFormat;

/// Reads and replaces the log filter of a running proxy.
#[derive(Clone, Debug)]
pub struct LogLevel(reload::Handle<EnvFilter, Registry>);

impl LogLevel {
    pub fn get(&self) -> String {
        self.0.with_current(|f| f.to_string()).unwrap_or_default()
    }

    pub fn set(&self, filter: &str) -> Result<(), String> {
        let f =
            EnvFilter::try_new(filter.trim()).map_err(|e| format!("invalid log filter: {e}"))?;
        self.0.reload(f).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
impl LogLevel {
    /// A filter not installed as the global subscriber, for tests of what reads and
    /// replaces it; it can be replaced while the returned subscriber lives.
    pub(crate) fn detached(filter: &str) -> (LogLevel, impl tracing::Subscriber) {
        let (layer, handle) = reload::Layer::new(EnvFilter::new(filter));
        (LogLevel(handle), tracing_subscriber::registry().with(layer))
    }
}

/// Installs the global subscriber. Fails on an invalid filter.
pub fn init(filter: &str, format: LogFormat) -> anyhow::Result<LogLevel> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("log filter {filter:?} is not a valid filter: {e}"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (plain, json) = match format {
        LogFormat::Plain => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    tracing_subscriber::registry().with(filter).with(plain).with(json).try_init()?;
    Ok(LogLevel(handle))
}

/// At most one loud line per this many milliseconds per site.
const LOUD_EVERY_MS: u64 = 1_000;

/// A log site that a remote peer can set off in a loop (a failed handshake, a refused or
/// failed request): loud at most once a second, quiet (debug) the rest of the time, so a
/// flood cannot flood the logs too. The metrics still count every event.
#[derive(Debug, Default)]
pub struct Loud {
    /// When the site was last loud, in ms since [`epoch`] plus `LOUD_EVERY_MS` (0: never).
    last: AtomicU64,
    /// Events logged quietly since the last loud one.
    quiet: AtomicU64,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Loud {
    pub const fn new() -> Self {
        Loud { last: AtomicU64::new(0), quiet: AtomicU64::new(0) }
    }

    /// Whether this event is logged loud: `Some(n)` when it is, `n` being how many were
    /// logged quietly since the last loud one; `None`: log it quietly.
    pub fn take(&self) -> Option<u64> {
        self.take_at(epoch().elapsed().as_millis() as u64 + LOUD_EVERY_MS)
    }

    fn take_at(&self, now: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOUD_EVERY_MS
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.quiet.swap(0, Ordering::Relaxed));
        }
        self.quiet.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// `throttled!(warn, ...)` (or `info`): for events a remote peer can cause in a loop. At
/// most one a second per call site at that level (with `quieted` = how many were logged at
/// debug since the last one); the others at debug.
#[macro_export]
macro_rules! throttled {
    ($level:ident, $($arg:tt)+) => {{
        static SITE: $crate::logging::Loud = $crate::logging::Loud::new();
        match SITE.take() {
            Some(0) => tracing::$level!($($arg)+),
            Some(quieted) => tracing::$level!(quieted, $($arg)+),
            None => tracing::debug!($($arg)+),
        }
    }};
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn a_site_is_loud_once_a_second_and_counts_the_quiet_ones() {
        let loud = Loud::new();
        let t0 = 5_000;
        assert_eq!(loud.take_at(t0), Some(0), "the first event");
        assert!(
            (0..1000).all(|i| loud.take_at(t0 + i % 999).is_none()),
            "a flood within the second"
        );
        assert_eq!(loud.take_at(t0 + 1_000), Some(1000), "a second later, with the count");
        assert_eq!(loud.take_at(t0 + 1_001), None);
        assert_eq!(loud.take_at(t0 + 2_000), Some(1));
        // A clock read before another thread's later one: quiet, not an underflow.
        assert_eq!(loud.take_at(t0), None);
    }

    /// What a subscriber printed.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lines").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn failed(i: u32) {
        crate::throttled!(warn, attempt = i, "handshake failed");
    }

    #[test]
    fn a_flood_at_one_site_logs_one_warning_and_the_rest_at_debug() {
        let out = Lines::default();
        let w = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || (0..500).for_each(failed));
        let text = String::from_utf8(out.0.lock().expect("lines").clone()).expect("utf-8");
        let warns = text.lines().filter(|l| l.contains(" WARN ")).count();
        let debugs = text.lines().filter(|l| l.contains("DEBUG")).count();
        // The test runs well within a second of the site's first event (in any case, it
        // cannot be loud more than once per second).
        assert!((1..=2).contains(&warns), "{warns} warnings:\n{text}");
        assert_eq!(warns + debugs, 500, "every event is logged, loud or quiet");
        assert!(text.contains("attempt=0"), "the first is loud:\n{text}");
    }
}
