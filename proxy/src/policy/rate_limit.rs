//! A server's local HTTP rate limit (Linkerd's `HTTPLocalRateLimitPolicy`, sent as the
//! `local_rate_limit` of the server's HTTP protocol): a rate for all requests together
//! (`total`), a rate for each client identity (`identity`; unmeshed clients share one),
//! and rates for named identities that replace the per-identity one (`overrides`, one
//! shared rate per entry). A request must pass the total and its client's rate; a
//! refused one gets 429 from the proxy.
//!
//! Each rate is a GCRA (the "virtual scheduling" form of a token bucket): a burst of up
//! to one second's worth of requests, then one request per `1 / rate`. The state is one
//! timestamp per rate, so a limit costs an atomic update per request.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use linkerd2_proxy_api::inbound as api;

use super::server::{Invalid, Meta};

/// Client identities tracked for the per-identity rate; past this, rates that are back
/// at their full burst are forgotten (they are the same as new ones), then all of them.
const MAX_CLIENTS: usize = 10_000;

/// Which of a limit's rates refused a request (`ratelimit_scope` in metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Total,
    Identity,
    Override,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Total => "total",
            Scope::Identity => "identity",
            Scope::Override => "override",
        }
    }
}

#[derive(Debug)]
pub struct RateLimit {
    pub meta: Meta,
    total: Option<Gcra>,
    /// Each identity's rate: its requests per second, the unmeshed clients' shared rate,
    /// and the identities' rates in use.
    identity: Option<PerClient>,
    overrides: Vec<Override>,
    /// The time base of every rate's timestamp.
    epoch: Instant,
}

#[derive(Debug)]
struct PerClient {
    rps: u32,
    unmeshed: Gcra,
    /// Looked up by `&str`: a request allocates only for an identity not seen yet.
    meshed: Mutex<HashMap<Arc<str>, Gcra>>,
}

#[derive(Debug)]
struct Override {
    identities: Vec<String>,
    rate: Gcra,
}

impl RateLimit {
    /// The limit the control plane sent; `None` when it sets no rate at all.
    pub fn from_api(r: api::HttpLocalRateLimit) -> Result<Option<Self>, Invalid> {
        let rps = |l: Option<api::http_local_rate_limit::Limit>| l.map(|l| l.requests_per_second);
        let total = rps(r.total);
        let identity = rps(r.identity);
        let mut overrides = Vec::new();
        for o in r.overrides {
            let Some(rate) = rps(o.limit) else {
                return Err(Invalid("a rate limit override has no rate".into()));
            };
            let identities: Vec<String> =
                o.clients.into_iter().flat_map(|c| c.identities).map(|i| i.name).collect();
            if identities.is_empty() || identities.iter().any(String::is_empty) {
                return Err(Invalid("a rate limit override names no client identity".into()));
            }
            overrides.push(Override { identities, rate: Gcra::new(rate) });
        }
        if total.is_none() && identity.is_none() && overrides.is_empty() {
            return Ok(None);
        }
        let meta = match r.metadata {
            Some(m) => Meta::from_metadata(m),
            None => Meta::new("default", "ratelimit"),
        };
        Ok(Some(RateLimit {
            meta,
            total: total.map(Gcra::new),
            identity: identity.map(|rps| PerClient {
                rps,
                unmeshed: Gcra::new(rps),
                meshed: Mutex::default(),
            }),
            overrides,
            epoch: Instant::now(),
        }))
    }

    /// Takes one request of `client_id` (`None`: unmeshed) from the rates, or says which
    /// one is exhausted.
    pub fn check(&self, client_id: Option<&str>, now: Instant) -> Result<(), Scope> {
        let t = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        if let Some(total) = &self.total
            && !total.take(t)
        {
            return Err(Scope::Total);
        }
        if let Some(id) = client_id
            && let Some(o) = self.overrides.iter().find(|o| o.identities.iter().any(|i| i == id))
        {
            return if o.rate.take(t) { Ok(()) } else { Err(Scope::Override) };
        }
        let Some(per) = &self.identity else { return Ok(()) };
        let taken = match client_id {
            None => per.unmeshed.take(t),
            Some(id) => {
                let mut meshed = per.meshed.lock().unwrap_or_else(|e| e.into_inner());
                match meshed.get(id) {
                    Some(rate) => rate.take(t),
                    None => {
                        if meshed.len() >= MAX_CLIENTS {
                            meshed.retain(|_, rate| rate.busy(t));
                            if meshed.len() >= MAX_CLIENTS {
                                meshed.clear();
                            }
                        }
                        let rate = Gcra::new(per.rps);
                        let taken = rate.take(t);
                        meshed.insert(id.into(), rate);
                        taken
                    }
                }
            }
        };
        if taken { Ok(()) } else { Err(Scope::Identity) }
    }
}

/// One rate: `tat` is when the rate would be back at its full burst (the "theoretical
/// arrival time"), in nanoseconds since the limit's epoch.
#[derive(Debug)]
struct Gcra {
    tat: AtomicU64,
    /// Nanoseconds between requests at the rate (`u64::MAX`: a rate of zero).
    interval: u64,
    /// How far ahead of now `tat` may run: the burst.
    tolerance: u64,
}

impl Gcra {
    fn new(requests_per_second: u32) -> Self {
        let (interval, tolerance) = match requests_per_second {
            0 => (u64::MAX, 0),
            n => (1_000_000_000 / u64::from(n), 1_000_000_000),
        };
        Gcra { tat: AtomicU64::new(0), interval, tolerance }
    }

    fn take(&self, now: u64) -> bool {
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now).saturating_add(self.interval);
            if next - now > self.tolerance {
                return false;
            }
            match self.tat.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(current) => tat = current,
            }
        }
    }

    /// Whether the rate is below its full burst at `now` (forgetting it would not be the
    /// same as keeping it).
    fn busy(&self, now: u64) -> bool {
        self.tat.load(Ordering::Relaxed) > now
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use api::http_local_rate_limit::{
        Limit, Override as ApiOverride, r#override::ClientIdentities,
    };
    use linkerd2_proxy_api::meta::{Metadata, Resource, metadata};

    use super::*;

    fn limit(total: Option<u32>, identity: Option<u32>, overrides: &[(u32, &[&str])]) -> RateLimit {
        let lim = |rps| Limit { requests_per_second: rps };
        let r = api::HttpLocalRateLimit {
            metadata: Some(Metadata {
                kind: Some(metadata::Kind::Resource(Resource {
                    group: "policy.weft.dev".into(),
                    kind: "HTTPLocalRateLimitPolicy".into(),
                    name: "web-rl".into(),
                    ..Default::default()
                })),
            }),
            total: total.map(lim),
            identity: identity.map(lim),
            overrides: overrides
                .iter()
                .map(|(rps, ids)| ApiOverride {
                    limit: Some(lim(*rps)),
                    clients: Some(ClientIdentities {
                        identities: ids
                            .iter()
                            .map(|n| api::Identity { name: n.to_string() })
                            .collect(),
                    }),
                })
                .collect(),
        };
        RateLimit::from_api(r).expect("valid").expect("some limit")
    }

    /// How many of `n` requests of `client` pass at `at`.
    fn passed(l: &RateLimit, client: Option<&str>, at: Instant, n: usize) -> usize {
        (0..n).filter(|_| l.check(client, at).is_ok()).count()
    }

    #[test]
    fn a_rate_allows_a_seconds_burst_then_its_pace() {
        let l = limit(Some(10), None, &[]);
        let t0 = l.epoch + Duration::from_secs(5);
        assert_eq!(passed(&l, None, t0, 50), 10);
        assert_eq!(l.check(Some("a"), t0), Err(Scope::Total));
        // 100 ms later, one more; a second later, a full burst again.
        assert_eq!(passed(&l, None, t0 + Duration::from_millis(100), 5), 1);
        assert_eq!(passed(&l, None, t0 + Duration::from_millis(2100), 50), 10);
        assert_eq!(l.meta, Meta::new("httplocalratelimitpolicy", "web-rl"));
    }

    #[test]
    fn each_identity_has_its_rate_and_overrides_replace_it() {
        let l = limit(Some(100), Some(3), &[(20, &["prom.monitoring"])]);
        let t = l.epoch + Duration::from_secs(1);
        assert_eq!(passed(&l, Some("a"), t, 10), 3);
        assert_eq!(l.check(Some("a"), t), Err(Scope::Identity));
        assert_eq!(passed(&l, Some("b"), t, 10), 3);
        // Unmeshed clients share one rate.
        assert_eq!(passed(&l, None, t, 10), 3);
        assert_eq!(passed(&l, Some("prom.monitoring"), t, 30), 20);
        assert_eq!(l.check(Some("prom.monitoring"), t), Err(Scope::Override));
        // The total (100) is not spent yet: refused requests took from it too.
        assert_eq!(passed(&l, Some("c"), t, 3), 3);
    }

    #[test]
    fn the_total_binds_everyone() {
        let l = limit(Some(5), Some(4), &[]);
        let t = l.epoch + Duration::from_secs(1);
        assert_eq!(passed(&l, Some("a"), t, 4), 4);
        assert_eq!(passed(&l, Some("b"), t, 4), 1);
        assert_eq!(l.check(Some("c"), t), Err(Scope::Total));
    }

    #[test]
    fn zero_refuses_all_and_no_rate_is_no_limit() {
        let l = limit(Some(0), None, &[]);
        assert_eq!(l.check(None, l.epoch + Duration::from_secs(9)), Err(Scope::Total));
        assert!(RateLimit::from_api(api::HttpLocalRateLimit::default()).expect("valid").is_none());
        let bad = api::HttpLocalRateLimit {
            overrides: vec![ApiOverride {
                limit: Some(Limit { requests_per_second: 1 }),
                clients: None,
            }],
            ..Default::default()
        };
        assert!(RateLimit::from_api(bad).is_err());
    }

    #[test]
    fn tracked_identities_stay_bounded() {
        let l = limit(None, Some(1), &[]);
        let t = l.epoch + Duration::from_secs(1);
        for i in 0..MAX_CLIENTS + 10 {
            assert!(l.check(Some(&format!("client-{i}")), t).is_ok());
        }
        let per = l.identity.as_ref().expect("identity rate");
        assert!(per.meshed.lock().expect("lock").len() <= MAX_CLIENTS);
    }
}
