//! Throttled loud logging: what a client can trigger at will (refused requests, refused
//! connections) is logged loudly at most once a period and at debug otherwise, so that a
//! flood shows in the log without filling it. Counting is the metrics' job, not the log's.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// Lets one event a period through to a loud log level (as the proxy's inbound policy does
/// for its refusals).
#[derive(Debug)]
pub struct LoudEvery {
    started: Instant,
    every_ms: u64,
    last: AtomicU64,
}

impl LoudEvery {
    pub fn new(every: Duration) -> Self {
        let every_ms = every.as_millis().max(1) as u64;
        LoudEvery { started: Instant::now(), every_ms, last: 0.into() }
    }

    /// Whether this event may be loud: the first in each period is.
    pub fn take(&self) -> bool {
        // Offset by one period so that the very first event is loud.
        let now = self.started.elapsed().as_millis() as u64 + self.every_ms;
        let last = self.last.load(Ordering::Relaxed);
        now - last >= self.every_ms
            && self.last.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_is_loud_then_quiet_within_the_period() {
        let loud = LoudEvery::new(Duration::from_secs(3600));
        assert!(loud.take());
        assert!(!loud.take());
        assert!(!loud.take());
    }
}
