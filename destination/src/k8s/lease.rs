//! Leader election for route status writes: one replica of the destination service writes
//! statuses, the holder of a `coordination.k8s.io/v1` Lease in the control-plane namespace
//! (as Linkerd's policy controller holds one for its status writes). Every replica serves
//! discovery and policy alike; only writes need a single writer, or replicas with slightly
//! different views would undo each other's statuses.
//!
//! Each replica reads the Lease every renew interval. Its holder renews it; another replica
//! takes it over when nobody holds it, or when it has not changed for a whole lease duration
//! as *this* replica's clock measures it (from when it saw the record change, so clocks need
//! not agree, as in client-go). Every write carries the `resourceVersion` it read: of two
//! replicas racing for it one gets 409 and stays a follower. A holder that fails to renew (an
//! error, a conflict, no answer within the renew interval) stops writing at once; otherwise
//! it leads until a lease duration after its last renewal began. At shutdown the holder
//! stops writing and hands the Lease over (clears its holder), so that another replica takes
//! over at its next read instead of a lease duration later (a rolling update).

use std::{future::Future, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

use crate::metrics::{Metrics, ResultLabels};

/// Longest wait for the hand-over at shutdown (which the process waits for).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// The Lease and this replica's name in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// The control-plane namespace.
    pub namespace: String,
    pub name: String,
    /// This replica's pod name.
    pub holder: String,
    /// How long a holder's lease lasts without renewal (whole seconds in the Lease).
    pub duration: Duration,
    /// How often the Lease is read and, by its holder, renewed.
    pub renew_interval: Duration,
}

/// Whether this replica leads: `Some(until)` while it holds the lease.
#[derive(Clone, Debug)]
pub struct Leadership(watch::Receiver<Option<Instant>>);

impl Leadership {
    pub fn is_leading(&self) -> bool {
        matches!(*self.0.borrow(), Some(until) if Instant::now() < until)
    }

    /// Waits until leadership is gained or lost (forever once the elector is gone).
    pub async fn changed(&mut self) {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await
        }
    }
}

/// Starts electing until `stop`: the leadership to follow, and the task to run (which
/// hands the lease over at `stop`, if it holds it, and ends).
pub fn elect(
    client: Client,
    config: LeaseConfig,
    metrics: Metrics,
    stop: impl Future<Output = ()> + Send + 'static,
) -> (Leadership, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = watch::channel(None);
    (Leadership(rx), run(client, config, metrics, tx, stop))
}

/// The other holder's record as last seen, and when it last changed (by our clock).
#[derive(Debug)]
struct Seen {
    record: (Option<String>, Option<String>, Option<String>),
    since: Instant,
}

async fn run(
    client: Client,
    config: LeaseConfig,
    metrics: Metrics,
    leading: watch::Sender<Option<Instant>>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut stop = std::pin::pin!(stop);
    let mut seen: Option<Seen> = None;
    // Whether the last round failed: a failure is a warning once, until a round succeeds (a
    // Lease the RBAC forbids would otherwise warn every round).
    let mut failing = false;
    info!(lease = %config.name, namespace = %config.namespace, holder = %config.holder, "electing the route status writer");
    loop {
        let started = Instant::now();
        let attempt = tokio::time::timeout(config.renew_interval, step(&api, &config, &mut seen));
        let error = match attempt.await {
            Ok(Ok(leads)) => {
                if std::mem::take(&mut failing) {
                    info!(lease = %config.name, "the route status lease can be read and written again");
                }
                Ok(leads)
            }
            Ok(Err(kube::Error::Api(s))) if s.code == 409 => {
                debug!(lease = %config.name, "another replica wrote the lease first");
                Err("conflict")
            }
            Ok(Err(error)) => {
                let error = error.to_string();
                if !std::mem::replace(&mut failing, true) {
                    warn!(lease = %config.name, namespace = %config.namespace, %error, "reading or renewing the route status lease failed; not writing route statuses until it succeeds (retried every renew interval)");
                } else {
                    debug!(lease = %config.name, %error, "the route status lease still fails");
                }
                Err("error")
            }
            Err(_) => {
                if !std::mem::replace(&mut failing, true) {
                    warn!(lease = %config.name, timeout = ?config.renew_interval, "the route status lease request took longer than the renew interval; not writing route statuses until it succeeds");
                }
                Err("error")
            }
        };
        let until = match error {
            Ok(leads) => leads.then(|| started + config.duration),
            Err(result) => {
                metrics.status_lease_errors.get_or_create(&ResultLabels { result }).inc();
                None
            }
        };
        let was = leading.borrow().is_some();
        match (was, until.is_some()) {
            (false, true) => {
                info!(holder = %config.holder, "holding the route status lease: writing route statuses")
            }
            (true, false) => {
                info!(holder = %config.holder, "lost the route status lease: not writing route statuses")
            }
            _ => {}
        }
        metrics.status_leader.set(i64::from(until.is_some()));
        leading.send_if_modified(|l| {
            let changed = l.is_some() != until.is_some();
            *l = until;
            changed
        });
        tokio::select! {
            () = tokio::time::sleep_until(started + config.renew_interval) => {}
            () = &mut stop => break,
        }
    }
    // Stop writing first, then hand over.
    let held = leading.send_replace(None).is_some();
    metrics.status_leader.set(0);
    if held {
        let limit = config.renew_interval.min(RELEASE_TIMEOUT);
        match tokio::time::timeout(limit, release(&api, &config)).await {
            Ok(Ok(())) => info!(lease = %config.name, "handed the route status lease over"),
            Ok(Err(error)) => {
                warn!(lease = %config.name, %error, "could not hand the route status lease over; another replica takes it when it expires")
            }
            Err(_) => {
                warn!(lease = %config.name, "handing the route status lease over took too long; another replica takes it when it expires")
            }
        }
    }
}

/// Clears the holder if it is still this replica (the write carries the version read).
async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else { return Ok(()) };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(config.holder.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    api.replace(&config.name, &PostParams::default(), &lease).await?;
    Ok(())
}

/// One round: whether this replica holds the lease afterwards.
async fn step(
    api: &Api<Lease>,
    config: &LeaseConfig,
    seen: &mut Option<Seen>,
) -> Result<bool, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let seconds = i32::try_from(config.duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.holder.clone()),
                lease_duration_seconds: Some(seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        api.create(&PostParams::default(), &lease).await?;
        return Ok(true);
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    if holder.as_deref() == Some(config.holder.as_str()) {
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(seconds);
        api.replace(&config.name, &PostParams::default(), &lease).await?;
        return Ok(true);
    }
    let record = (
        holder.clone(),
        spec.renew_time.as_ref().map(|t| t.0.to_string()),
        lease.metadata.resource_version.clone(),
    );
    if seen.as_ref().is_none_or(|s| s.record != record) {
        *seen = Some(Seen { record, since: Instant::now() });
    }
    let theirs = spec
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(config.duration, Duration::from_secs);
    let expired = seen.as_ref().is_none_or(|s| s.since.elapsed() >= theirs);
    if holder.is_some() && !expired {
        return Ok(false);
    }
    debug!(previous = ?holder, "taking over the route status lease");
    spec.holder_identity = Some(config.holder.clone());
    spec.lease_duration_seconds = Some(seconds);
    spec.acquire_time = Some(now.clone());
    spec.renew_time = Some(now);
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    api.replace(&config.name, &PostParams::default(), &lease).await?;
    *seen = None;
    Ok(true)
}
