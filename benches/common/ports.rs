//! Loopback ports to hand to another process, which binds them later. Shared by the
//! benches and the end-to-end tests.
//!
//! A port the kernel picks for a `bind(0)` comes from its ephemeral range, the range that
//! `connect()` also draws from: between the pick and the other process's bind, any
//! connection opened meanwhile (load generators, control planes and parallel tests open
//! many) can take it, and the process then fails with "address in use". So the ports come
//! from below that range when it leaves room, where only another listener can take them.

use std::{
    collections::hash_map::RandomState,
    hash::BuildHasher as _,
    io,
    net::{Ipv4Addr, TcpListener},
};

/// The lowest port handed out.
const LOWEST: u16 = 20_000;

/// `N` distinct loopback ports, free when picked.
pub fn unused<const N: usize>() -> io::Result<[u16; N]> {
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .filter(|&low| low >= LOWEST + 1_000);
    // Every listener is held until all are picked, so the N ports differ.
    let mut listeners = Vec::with_capacity(N);
    match below {
        Some(low) => {
            // Random, and different in each process and each call.
            let mut x = RandomState::new().hash_one(std::process::id()) | 1;
            for _ in 0..10_000 {
                if listeners.len() == N {
                    break;
                }
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let port = LOWEST + (x % u64::from(low - LOWEST)) as u16;
                if let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                    listeners.push(l);
                }
            }
            if listeners.len() < N {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("no {N} free ports between {LOWEST} and {low}"),
                ));
            }
        }
        None => {
            for _ in 0..N {
                listeners.push(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?);
            }
        }
    }
    let mut ports = [0; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l.local_addr()?.port();
    }
    Ok(ports)
}
