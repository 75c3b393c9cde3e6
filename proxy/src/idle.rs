//! Idle client connections: what a served HTTP connection has in flight and since when it
//! has had nothing, and the watch that closes an idle one gracefully, so that a client that
//! connects and then says nothing cannot hold a connection slot for ever. Shared by the
//! admin port and the proxy's HTTP/2 server connections.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// How long a connection asked to close may then sit with nothing in flight before it is
/// dropped: an HTTP/2 client that never acknowledges the GOAWAY's ping, or never closes.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Requests in flight on one connection, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity { in_flight: AtomicUsize::new(0), last: Mutex::new(Instant::now()) })
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// How long nothing has been in flight (zero while something is).
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.last.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }
}

/// Ends a request's activity when dropped (the request answered, or given up).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Drives a served connection to its end. Once nothing has been in flight for
/// `idle_timeout`, or `stop` is cancelled, asks it to close with `shutdown` (HTTP/2: GOAWAY,
/// the streams in flight finish); if it has not closed and has nothing in flight
/// `CLOSE_GRACE` later, gives up on it: `None` (dropping it closes the socket). One timer
/// per connection, which wakes about once per `idle_timeout`.
pub async fn watch<C: Future>(
    mut conn: Pin<&mut C>,
    shutdown: impl Fn(Pin<&mut C>),
    activity: &Activity,
    idle_timeout: Duration,
    stop: &CancellationToken,
) -> Option<C::Output> {
    let mut closing = false;
    let deadline = sleep_until(Instant::now() + idle_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = conn.as_mut() => return Some(r),
            _ = stop.cancelled(), if !closing => {
                closing = true;
                shutdown(conn.as_mut());
                deadline.as_mut().reset(Instant::now() + CLOSE_GRACE);
            }
            _ = &mut deadline => {
                let idle = activity.idle_for();
                if closing {
                    if !activity.busy() {
                        debug!("connection did not close in time; dropping it");
                        return None;
                    }
                    deadline.as_mut().reset(Instant::now() + CLOSE_GRACE);
                } else if idle >= idle_timeout {
                    debug!(?idle_timeout, "connection idle; closing");
                    closing = true;
                    shutdown(conn.as_mut());
                    deadline.as_mut().reset(Instant::now() + CLOSE_GRACE);
                } else {
                    deadline.as_mut().reset(Instant::now() + (idle_timeout - idle));
                }
            }
        }
    }
}
