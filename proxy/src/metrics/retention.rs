//! Idle series retention: the label sets of connections and routes that nothing has used
//! for a while are forgotten, so that `/metrics` and the label caps follow the endpoints
//! that exist now rather than every one the proxy has seen.
//!
//! Every series whose labels carry per-endpoint values is updated only through a holder
//! (a connection's `ConnMetrics`, a route's `RouteMetrics`) that holds the [`Lease`] of its
//! label set, and a holder takes its lease from the [`Index`] *before* it gets any metric
//! handle. A sweep evicts a label set only while no holder has its lease, under the index's
//! lock: no handle can then outlive its series, and a later holder of the same labels
//! registers them again. Leases are taken per connection or per route, never per request.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The label sets of one kind (a connection's, a route's) that have series.
#[derive(Debug)]
pub struct Index<K> {
    slots: Mutex<HashMap<K, Slot>>,
}

#[derive(Debug)]
struct Slot {
    lease: Arc<Lease>,
    /// The first sweep that found no holder since the last use.
    idle_since: Option<Instant>,
}

/// Held by whatever holds handles to a label set's series; what it records is what a
/// sweep needs to find those series again.
#[derive(Debug, Default)]
pub struct Lease {
    /// Status codes of a route's response series (none for a connection).
    statuses: Mutex<Vec<u16>>,
}

impl Lease {
    /// Records that series with this status code exist for the label set.
    pub fn note_status(&self, status_code: u16) {
        let mut statuses = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        if !statuses.contains(&status_code) {
            statuses.push(status_code);
        }
    }

    pub fn statuses(&self) -> Vec<u16> {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Index { slots: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone> Index<K> {
    /// The lease of `key`'s series, to hold for as long as handles to them are held; taken
    /// before those handles are.
    pub fn lease(&self, key: &K) -> Arc<Lease> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(key) {
            slot.idle_since = None;
            return slot.lease.clone();
        }
        let lease = Arc::<Lease>::default();
        slots.insert(key.clone(), Slot { lease: lease.clone(), idle_since: None });
        lease
    }

    /// Forgets the label sets that nothing has held since a sweep at least `retain`
    /// before `now`, calling `evict` on each (under the index's lock, so that no holder
    /// can take its lease meanwhile). Returns how many were evicted.
    pub fn sweep(&self, now: Instant, retain: Duration, mut evict: impl FnMut(&K, &Lease)) -> u64 {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut evicted = 0;
        slots.retain(|key, slot| {
            // Unique: no holder, and (with get_mut's acquire) whatever the last one
            // recorded is visible here.
            let Some(lease) = Arc::get_mut(&mut slot.lease) else {
                slot.idle_since = None;
                return true;
            };
            let since = *slot.idle_since.get_or_insert(now);
            if now.saturating_duration_since(since) < retain {
                return true;
            }
            evict(key, lease);
            evicted += 1;
            false
        });
        evicted
    }

    /// Calls `f` on every label set that has series.
    pub fn for_each(&self, mut f: impl FnMut(&K)) {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).keys().for_each(&mut f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETAIN: Duration = Duration::from_secs(600);

    fn keys(index: &Index<&'static str>) -> Vec<&'static str> {
        let mut keys = Vec::new();
        index.for_each(|k| keys.push(*k));
        keys.sort_unstable();
        keys
    }

    #[test]
    fn a_label_set_is_evicted_after_a_retention_period_without_a_holder() {
        let index = Index::default();
        let t0 = Instant::now();
        drop(index.lease(&"idle"));
        let held = index.lease(&"held");
        let mut evicted = Vec::new();
        for minutes in [0, 5, 9] {
            let now = t0 + Duration::from_secs(minutes * 60);
            assert_eq!(index.sweep(now, RETAIN, |k, _| evicted.push(*k)), 0);
        }
        // Used again between two sweeps: idle from the next sweep on.
        drop(index.lease(&"idle"));
        let now = t0 + Duration::from_secs(11 * 60);
        assert_eq!(index.sweep(now, RETAIN, |k, _| evicted.push(*k)), 0);
        let now = t0 + Duration::from_secs(21 * 60);
        assert_eq!(index.sweep(now, RETAIN, |k, _| evicted.push(*k)), 1);
        assert_eq!(evicted, ["idle"]);
        assert_eq!(keys(&index), ["held"]);
        // However long it is held.
        let now = t0 + Duration::from_secs(24 * 3600);
        assert_eq!(index.sweep(now, RETAIN, |_, _| ()), 0);
        drop(held);
        assert_eq!(index.sweep(now, RETAIN, |_, _| ()), 0);
        assert_eq!(index.sweep(now + RETAIN, RETAIN, |_, _| ()), 1);
        assert!(keys(&index).is_empty());
    }

    #[test]
    fn a_lease_records_status_codes_once() {
        let index = Index::default();
        let lease = index.lease(&"route");
        for s in [200, 503, 200] {
            index.lease(&"route").note_status(s);
        }
        assert_eq!(lease.statuses(), [200, 503]);
    }
}
