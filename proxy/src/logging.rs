//! Tracing setup: plain or JSON output, and a filter that the admin server can read and
//! replace at runtime.

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
