//! Latency-aware load balancing: power of two choices over peak-EWMA latency (the
//! algorithm of tower's `p2c` + `PeakEwma`, as linkerd2-proxy uses it), with failure
//! accrual: an endpoint that fails N times in a row is taken out for a jittered,
//! doubling backoff, then probed with a single request.
//!
//! Written as concrete types rather than tower services: the balancer is on the
//! per-request hot path, and endpoints come and go from discovery without rebuilding
//! a service stack.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Tunables (Linkerd's defaults).
#[derive(Debug, Clone)]
pub struct BalanceConfig {
    /// The latency assumed for an endpoint before it has answered anything.
    pub default_rtt: Duration,
    /// How fast old latency observations fade.
    pub decay: Duration,
    /// Consecutive failures after which an endpoint is taken out.
    pub max_failures: u32,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            default_rtt: Duration::from_millis(30),
            decay: Duration::from_secs(10),
            max_failures: 7,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// One endpoint and what the balancer knows of it. `T` is what discovery says about it
/// (identity, metric labels, protocol hint).
#[derive(Debug)]
pub struct Endpoint<T> {
    pub addr: SocketAddr,
    pub meta: T,
    pending: AtomicU32,
    ewma: Mutex<Ewma>,
    accrual: Mutex<Accrual>,
}

#[derive(Debug)]
struct Ewma {
    /// Peak-sensitive moving average of the latency, in nanoseconds.
    cost_ns: f64,
    stamp: Instant,
}

#[derive(Debug)]
enum Accrual {
    Ready {
        failures: u32,
    },
    /// Out until `until`; then one probe request may go.
    Ejected {
        until: Instant,
        backoff: Duration,
    },
    /// A probe is in flight; nothing else is sent until it completes.
    Probing {
        backoff: Duration,
    },
}

impl<T> Endpoint<T> {
    pub fn new(addr: SocketAddr, meta: T, config: &BalanceConfig) -> Self {
        Endpoint {
            addr,
            meta,
            pending: AtomicU32::new(0),
            ewma: Mutex::new(Ewma {
                cost_ns: config.default_rtt.as_nanos() as f64,
                stamp: Instant::now(),
            }),
            accrual: Mutex::new(Accrual::Ready { failures: 0 }),
        }
    }

    /// Expected cost of one more request: decayed latency × (requests in flight + 1).
    fn load(&self, now: Instant, decay: Duration) -> f64 {
        let ewma = self.ewma.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(ewma.stamp).as_nanos() as f64;
        let decayed = ewma.cost_ns * (-elapsed / decay.as_nanos().max(1) as f64).exp();
        decayed * f64::from(self.pending.load(Ordering::Relaxed) + 1)
    }

    fn observe(&self, rtt: Duration, now: Instant, decay: Duration) {
        let mut ewma = self.ewma.lock().unwrap_or_else(|e| e.into_inner());
        let rtt = rtt.as_nanos() as f64;
        if rtt > ewma.cost_ns {
            // Peak: a slow response counts at once.
            ewma.cost_ns = rtt;
        } else {
            let elapsed = now.saturating_duration_since(ewma.stamp).as_nanos() as f64;
            let w = (-elapsed / decay.as_nanos().max(1) as f64).exp();
            ewma.cost_ns = ewma.cost_ns * w + rtt * (1.0 - w);
        }
        ewma.stamp = now;
    }

    /// Whether a request may go now; takes the probe slot of an endpoint whose backoff
    /// has run out.
    fn available(&self, now: Instant, take_probe: bool) -> bool {
        let mut accrual = self.accrual.lock().unwrap_or_else(|e| e.into_inner());
        match *accrual {
            Accrual::Ready { .. } => true,
            Accrual::Ejected { until, backoff } if now >= until => {
                if take_probe {
                    *accrual = Accrual::Probing { backoff };
                }
                true
            }
            _ => false,
        }
    }

    pub fn is_ejected(&self) -> bool {
        !matches!(*self.accrual.lock().unwrap_or_else(|e| e.into_inner()), Accrual::Ready { .. })
    }

    fn record(&self, success: bool, now: Instant, config: &BalanceConfig, jitter: f64) {
        let mut accrual = self.accrual.lock().unwrap_or_else(|e| e.into_inner());
        let eject = |backoff: Duration| {
            // Not `clamp`, which panics on min > max (refused at start; never worth a crash).
            let backoff = backoff.max(config.min_backoff).min(config.max_backoff);
            // ±25 % so that ejected endpoints don't all come back at the same moment.
            let jittered = backoff.mul_f64(0.75 + 0.5 * jitter);
            Accrual::Ejected { until: now + jittered, backoff }
        };
        *accrual = match (&*accrual, success) {
            (_, true) => Accrual::Ready { failures: 0 },
            (Accrual::Ready { failures }, false) if failures + 1 >= config.max_failures => {
                eject(config.min_backoff)
            }
            (Accrual::Ready { failures }, false) => Accrual::Ready { failures: failures + 1 },
            (Accrual::Probing { backoff }, false) => eject(backoff.saturating_mul(2)),
            (Accrual::Ejected { until, backoff }, false) => {
                Accrual::Ejected { until: *until, backoff: *backoff }
            }
        };
    }
}

/// A set of endpoints to choose from, replaced as discovery updates arrive; requests in
/// flight keep the endpoint they chose.
#[derive(Debug)]
pub struct Balancer<T> {
    config: BalanceConfig,
    endpoints: RwLock<Arc<Vec<Arc<Endpoint<T>>>>>,
    rng: AtomicU64,
}

/// Why no endpoint could be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PickError {
    #[error("the service has no endpoints")]
    NoEndpoints,
    #[error("every endpoint is failing and taken out of the balancer")]
    AllEjected,
}

impl<T> Balancer<T> {
    pub fn new(config: BalanceConfig) -> Self {
        let seed = Instant::now().elapsed().as_nanos() as u64 ^ 0x9e37_79b9_7f4a_7c15;
        Balancer {
            config,
            endpoints: RwLock::new(Arc::new(Vec::new())),
            rng: AtomicU64::new(seed | 1),
        }
    }

    pub fn config(&self) -> &BalanceConfig {
        &self.config
    }

    /// Replaces the endpoint set; endpoints still present keep their state.
    pub fn update(&self, addrs: Vec<(SocketAddr, T)>) {
        let current = self.endpoints();
        let next: Vec<Arc<Endpoint<T>>> = addrs
            .into_iter()
            .map(|(addr, meta)| match current.iter().find(|e| e.addr == addr) {
                Some(e) => e.clone(),
                None => Arc::new(Endpoint::new(addr, meta, &self.config)),
            })
            .collect();
        *self.endpoints.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
    }

    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint<T>>>> {
        self.endpoints.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn random(&self) -> u64 {
        // xorshift64*; a data race between requests only mixes the sequence more.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Chooses an endpoint: of two picked at random among those available, the one
    /// with the lower load. The returned guard must be completed with the outcome.
    pub fn pick(&self) -> Result<Picked<'_, T>, PickError> {
        self.pick_at(Instant::now())
    }

    fn pick_at(&self, now: Instant) -> Result<Picked<'_, T>, PickError> {
        let endpoints = self.endpoints();
        if endpoints.is_empty() {
            return Err(PickError::NoEndpoints);
        }
        let n = endpoints.len();
        let chosen = if n == 1 {
            let e = &endpoints[0];
            e.available(now, true).then(|| e.clone())
        } else {
            let a = (self.random() % n as u64) as usize;
            let b = (a + 1 + (self.random() % (n as u64 - 1)) as usize) % n;
            let (ea, eb) = (&endpoints[a], &endpoints[b]);
            let (ra, rb) = (ea.available(now, false), eb.available(now, false));
            let first = match (ra, rb) {
                (true, true) => {
                    if ea.load(now, self.config.decay) <= eb.load(now, self.config.decay) {
                        ea
                    } else {
                        eb
                    }
                }
                (true, false) => ea,
                (false, true) => eb,
                // Both out: look for any available endpoint before giving up.
                (false, false) => match endpoints.iter().find(|e| e.available(now, false)) {
                    Some(e) => e,
                    None => return Err(PickError::AllEjected),
                },
            };
            // Take the probe slot if this is an ejected endpoint's probe.
            first.available(now, true).then(|| first.clone())
        };
        let endpoint = chosen.ok_or(PickError::AllEjected)?;
        endpoint.pending.fetch_add(1, Ordering::Relaxed);
        Ok(Picked { balancer: self, endpoint, started: now, done: false })
    }
}

/// A request's hold on the endpoint it was sent to.
#[derive(Debug)]
pub struct Picked<'a, T> {
    balancer: &'a Balancer<T>,
    pub endpoint: Arc<Endpoint<T>>,
    started: Instant,
    done: bool,
}

impl<T> Picked<'_, T> {
    /// Records the outcome: latency feeds the EWMA, success or failure the accrual.
    pub fn complete(mut self, success: bool) {
        self.finish(Some(success), Instant::now());
    }

    fn finish(&mut self, success: Option<bool>, now: Instant) {
        if self.done {
            return;
        }
        self.done = true;
        let e = &self.endpoint;
        e.pending.fetch_sub(1, Ordering::Relaxed);
        let config = &self.balancer.config;
        if let Some(success) = success {
            e.observe(now - self.started, now, config.decay);
            let jitter = (self.balancer.random() % 1000) as f64 / 1000.0;
            e.record(success, now, config, jitter);
        }
    }
}

impl<T> Drop for Picked<'_, T> {
    fn drop(&mut self) {
        // Cancelled: neither a success nor a failure of the endpoint.
        self.finish(None, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], i))
    }

    fn balancer(n: u16) -> Balancer<()> {
        let b = Balancer::new(BalanceConfig::default());
        b.update((1..=n).map(|i| (addr(i), ())).collect());
        b
    }

    /// Feeds `rounds` requests on a simulated clock (one request every 500 µs, each
    /// taking its endpoint's latency); returns the share each endpoint received.
    fn simulate(
        b: &Balancer<()>,
        latency: impl Fn(SocketAddr) -> Duration,
        rounds: usize,
    ) -> Vec<f64> {
        let start = Instant::now();
        let mut counts = vec![0usize; b.endpoints().len()];
        let mut in_flight: Vec<(Instant, Picked<'_, ()>)> = Vec::new();
        for i in 0..rounds {
            let now = start + Duration::from_micros(500) * i as u32;
            // Complete what has finished by now.
            let (done, pending): (Vec<_>, Vec<_>) =
                in_flight.into_iter().partition(|(end, _)| *end <= now);
            in_flight = pending;
            for (end, mut p) in done {
                p.finish(Some(true), end);
            }
            let p = b.pick_at(now).expect("pick");
            let idx = b.endpoints().iter().position(|e| e.addr == p.endpoint.addr).expect("known");
            counts[idx] += 1;
            let end = now + latency(p.endpoint.addr);
            in_flight.push((end, p));
        }
        counts.iter().map(|&c| c as f64 / rounds as f64).collect()
    }

    #[test]
    fn a_slow_endpoint_gets_little_traffic() {
        let b = balancer(3);
        let shares = simulate(
            &b,
            |a| if a == addr(3) { Duration::from_millis(51) } else { Duration::from_millis(1) },
            20_000,
        );
        assert!(shares[2] < 0.10, "slow endpoint share {shares:?}");
        assert!(shares[0] > 0.3 && shares[1] > 0.3, "{shares:?}");
    }

    #[test]
    fn equal_endpoints_share_evenly() {
        let b = balancer(4);
        let shares = simulate(&b, |_| Duration::from_millis(5), 40_000);
        for s in &shares {
            assert!((0.2..0.3).contains(s), "{shares:?}");
        }
    }

    #[test]
    fn pending_requests_count_toward_load() {
        let b = balancer(2);
        // Hold many requests on whichever endpoint comes first: the other must win next.
        let first = b.pick().expect("pick");
        let held: Vec<_> = (0..10)
            .map(|_| {
                let e = first.endpoint.clone();
                e.pending.fetch_add(1, Ordering::Relaxed);
                e
            })
            .collect();
        let next = b.pick().expect("pick");
        assert_ne!(next.endpoint.addr, first.endpoint.addr);
        for e in held {
            e.pending.fetch_sub(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn failure_accrual_ejects_then_probes_then_restores() {
        let b = balancer(2);
        let bad = addr(1);
        // Fail the bad endpoint 7 times in a row.
        let mut failures = 0;
        while failures < 7 {
            let p = b.pick().expect("pick");
            let ok = p.endpoint.addr != bad;
            failures += usize::from(!ok);
            p.complete(ok);
        }
        let ejected = b.endpoints().iter().find(|e| e.addr == bad).expect("bad").clone();
        assert!(ejected.is_ejected());
        for _ in 0..100 {
            let p = b.pick().expect("pick");
            assert_ne!(p.endpoint.addr, bad, "an ejected endpoint got traffic");
            p.complete(true);
        }
        // Backoff over: exactly one probe goes; its success restores the endpoint.
        *ejected.accrual.lock().expect("lock") =
            Accrual::Ejected { until: Instant::now(), backoff: Duration::from_secs(1) };
        let mut probe = None;
        for _ in 0..200 {
            let p = b.pick().expect("pick");
            if p.endpoint.addr == bad {
                probe = Some(p);
                break;
            }
            p.complete(true);
        }
        let probe = probe.expect("a probe went to the ejected endpoint");
        for _ in 0..50 {
            let p = b.pick().expect("pick");
            assert_ne!(p.endpoint.addr, bad, "a second request during the probe");
            p.complete(true);
        }
        probe.complete(true);
        assert!(!ejected.is_ejected());
    }

    #[test]
    fn a_failed_probe_doubles_the_backoff() {
        let config = BalanceConfig { max_failures: 1, ..BalanceConfig::default() };
        let e = Endpoint::new(addr(1), (), &config);
        let now = Instant::now();
        e.record(false, now, &config, 0.5);
        let Accrual::Ejected { backoff, .. } = *e.accrual.lock().expect("lock") else {
            panic!("not ejected")
        };
        assert_eq!(backoff, Duration::from_secs(1));
        *e.accrual.lock().expect("lock") = Accrual::Probing { backoff };
        e.record(false, now, &config, 0.5);
        let Accrual::Ejected { backoff, until } = *e.accrual.lock().expect("lock") else {
            panic!("not ejected")
        };
        assert_eq!(backoff, Duration::from_secs(2));
        assert_eq!(until, now + Duration::from_secs(2));
        // Capped at the maximum.
        *e.accrual.lock().expect("lock") = Accrual::Probing { backoff: Duration::from_secs(50) };
        e.record(false, now, &config, 0.5);
        let Accrual::Ejected { backoff, .. } = *e.accrual.lock().expect("lock") else {
            panic!("not ejected")
        };
        assert_eq!(backoff, Duration::from_secs(60));
    }

    #[test]
    fn all_ejected_fails_fast_and_empty_says_so() {
        let config = BalanceConfig { max_failures: 1, ..BalanceConfig::default() };
        let b = Balancer::new(config);
        assert_eq!(b.pick().err(), Some(PickError::NoEndpoints));
        b.update(vec![(addr(1), ()), (addr(2), ())]);
        for _ in 0..10 {
            if let Ok(p) = b.pick() {
                p.complete(false);
            }
        }
        assert_eq!(b.pick().err(), Some(PickError::AllEjected));
    }

    #[test]
    fn updates_keep_state_of_surviving_endpoints() {
        let b = balancer(3);
        let p = b.pick().expect("pick");
        let kept = p.endpoint.addr;
        b.update(vec![(kept, ()), (addr(9), ())]);
        // The in-flight request still holds its endpoint, which is still in the set.
        assert!(
            b.endpoints().iter().any(|e| e.addr == kept && e.pending.load(Ordering::Relaxed) == 1)
        );
        p.complete(true);
        b.update(vec![(addr(9), ())]);
        assert_eq!(b.endpoints().len(), 1);
    }
}
