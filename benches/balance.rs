//! The balancer's own cost per request: `pick` (power of two choices over peak-EWMA) and
//! `complete`, with 1 and with 10 endpoints, against a baseline that does neither, in the
//! same run. Run: `cargo bench --bench balance`.
//!
//! This measures the balancer in isolation, in nanoseconds; the figure (p50 added
//! through the proxy pair with 10 endpoints vs 1, ≤ 10 µs) is bounded by it, since the
//! rest of the request path is the same for both.

use std::{hint::black_box, net::SocketAddr, time::Instant};

use weft_proxy::balance::{BalanceConfig, Balancer};

const ROUNDS: u32 = 2_000_000;

fn main() {
    let runs = 5;
    let mut rows = Vec::new();
    for (name, n) in [("baseline (no balancer)", 0usize), ("1 endpoint", 1), ("10 endpoints", 10)] {
        let mut samples = Vec::new();
        for _ in 0..runs {
            samples.push(measure(n));
        }
        samples.sort_by(f64::total_cmp);
        rows.push((name, samples[runs / 2]));
    }
    let base = rows[0].1;
    println!("| balancer | ns per request (median of {runs}) | added vs baseline |");
    println!("|---|--:|--:|");
    for (name, ns) in &rows {
        println!("| {name} | {ns:.0} | {:.0} ns |", ns - base);
    }
    let one = rows[1].1;
    let ten = rows[2].1;
    println!(
        "\n10 endpoints vs 1: +{:.0} ns per request (target: ≤ 10 µs through the pair)",
        ten - one
    );
}

fn measure(n: usize) -> f64 {
    let b: Balancer<()> = Balancer::new(BalanceConfig::default());
    b.update((0..n).map(|i| (SocketAddr::from(([10, 0, 0, 1], 1000 + i as u16)), ())).collect());
    let start = Instant::now();
    for _ in 0..ROUNDS {
        if n == 0 {
            black_box(&b);
            continue;
        }
        let p = b.pick().expect("an endpoint");
        black_box(p.endpoint.addr);
        p.complete(true);
    }
    start.elapsed().as_nanos() as f64 / f64::from(ROUNDS)
}
