//! Who may start a handshake: the per-listener caps on connections and handshakes in
//! progress, and the same caps per client (an IPv4 address, an IPv6 /64), checked when a
//! connection is accepted. The slots handed out give their place back when dropped.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex, MutexGuard},
};

use super::{Limits, Refused};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    handshakes: usize,
    connections: usize,
}

#[derive(Debug, Default)]
struct State {
    total: Counts,
    /// Only clients holding a slot: at most `max_handshakes + max_connections` entries.
    clients: HashMap<Client, Counts>,
}

/// The counts of one listener.
#[derive(Debug)]
pub(super) struct Admission {
    limits: Limits,
    state: Mutex<State>,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Handshake,
    Connection,
}

/// Who the per-client caps count: an IPv4 address, or the /64 of an IPv6 address. An
/// IPv6 host (a pod, a VM, an attacker) routinely holds a whole /64 — SLAAC, privacy
/// addresses and prefix delegation all hand one out — and picks any address in it at will,
/// so a cap per IPv6 address would be no cap at all; /64 is the smallest prefix one host is
/// assigned (RFC 7421), the granularity rate limiters such as Envoy's and nginx's group
/// IPv6 clients by. An IPv4 client of a dual-stack listener (`::ffff:a.b.c.d`) is its IPv4
/// address, not the /64 that every IPv4 address would share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Client(IpAddr);

impl Client {
    /// The length of the IPv6 prefix one client is taken to hold.
    pub(super) const IPV6_PREFIX_LEN: u32 = 64;

    pub(super) fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Client(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let mask = u128::MAX << (128 - Self::IPV6_PREFIX_LEN);
                Client(IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & mask)))
            }
        }
    }
}

/// A place under the caps, for one client, given back when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    admission: Arc<Admission>,
    client: Client,
    kind: Kind,
}

impl Admission {
    pub(super) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Admission { limits, state: Mutex::default() })
    }

    pub(super) fn limits(&self) -> &Limits {
        &self.limits
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The counts stay consistent under a panic elsewhere: each update is a few additions.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection slot (held for the connection's life) and a handshake slot (held until
    /// it is ready to serve) for a connection from `peer`, or why not. The client's own
    /// caps are checked first, so that a client past its share is named as such.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<(Slot, Slot), Refused> {
        let client = Client::of(peer);
        let l = &self.limits;
        let mut s = self.lock();
        let mine = s.clients.get(&client).copied().unwrap_or_default();
        let refused = if mine.connections >= l.max_client_connections.max(1) {
            Some(Refused::MaxClientConnections)
        } else if s.total.connections >= l.max_connections.max(1) {
            Some(Refused::MaxConnections)
        } else if mine.handshakes >= l.max_client_handshakes.max(1) {
            Some(Refused::MaxClientHandshakes)
        } else if s.total.handshakes >= l.max_handshakes.max(1) {
            Some(Refused::MaxHandshakes)
        } else {
            None
        };
        if let Some(r) = refused {
            return Err(r);
        }
        s.total.connections += 1;
        s.total.handshakes += 1;
        let mine = s.clients.entry(client).or_default();
        mine.connections += 1;
        mine.handshakes += 1;
        drop(s);
        let slot = |kind| Slot { admission: self.clone(), client, kind };
        Ok((slot(Kind::Connection), slot(Kind::Handshake)))
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize) {
        let s = self.lock();
        (s.total.connections, s.total.handshakes, s.clients.len())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.admission.lock();
        let State { total, clients } = &mut *s;
        fn field(c: &mut Counts, kind: Kind) -> &mut usize {
            match kind {
                Kind::Handshake => &mut c.handshakes,
                Kind::Connection => &mut c.connections,
            }
        }
        let total = field(total, self.kind);
        *total = total.saturating_sub(1);
        if let Some(mine) = clients.get_mut(&self.client) {
            let n = field(mine, self.kind);
            *n = n.saturating_sub(1);
            if *mine == Counts::default() {
                clients.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn v6(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limits() -> Limits {
        Limits {
            max_connections: 4,
            max_client_connections: 2,
            max_handshakes: 3,
            max_client_handshakes: 2,
            ..Limits::default()
        }
    }

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
    const C: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));

    #[test]
    fn each_cap_refuses_under_its_own_name() {
        let adm = Admission::new(limits());
        let (a1, a1_handshake) = adm.admit(A).unwrap();
        let (a2, a2_handshake) = adm.admit(A).unwrap();
        assert_eq!(adm.admit(A).unwrap_err(), Refused::MaxClientConnections);
        // Their handshakes done, A's two connections still hold A at its cap.
        drop((a1_handshake, a2_handshake));
        assert_eq!(adm.admit(A).unwrap_err(), Refused::MaxClientConnections);
        let b1 = adm.admit(B).unwrap();
        let c1 = adm.admit(C).unwrap();
        // 4 connections in all: A's 2, B's and C's.
        assert_eq!(adm.admit(B).unwrap_err(), Refused::MaxConnections);
        drop(a1);
        let b2 = adm.admit(B).unwrap();
        assert_eq!(adm.admit(C).unwrap_err(), Refused::MaxConnections);
        drop((a2, b1, b2, c1));
        assert_eq!(adm.counts(), (0, 0, 0), "every slot given back, no client left behind");
    }

    #[test]
    fn handshakes_are_capped_per_client_and_in_all() {
        let limits = Limits { max_connections: 100, max_client_connections: 100, ..limits() };
        let adm = Admission::new(limits);
        let _a = [adm.admit(A).unwrap(), adm.admit(A).unwrap()];
        assert_eq!(adm.admit(A).unwrap_err(), Refused::MaxClientHandshakes);
        let _b = adm.admit(B).unwrap();
        assert_eq!(adm.admit(C).unwrap_err(), Refused::MaxHandshakes);
    }

    #[test]
    fn ipv4_mapped_addresses_are_the_same_client() {
        let adm = Admission::new(limits());
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        let _held = [adm.admit(A).unwrap(), adm.admit(mapped).unwrap()];
        assert_eq!(adm.admit(mapped).unwrap_err(), Refused::MaxClientConnections);
    }

    /// Addresses of one IPv6 /64 are one client: another address of the same host (or of
    /// an attacker holding the prefix) does not get another share.
    #[test]
    fn an_ipv6_64_is_one_client() {
        let adm = Admission::new(limits());
        // Connection slots only: their handshakes done.
        let conn = |ip| adm.admit(v6(ip)).map(|(conn, _handshake)| conn);
        let _held =
            [conn("2001:db8:1:2::1").unwrap(), conn("2001:db8:1:2:ffff:ffff:ffff:ffff").unwrap()];
        assert_eq!(conn("2001:db8:1:2:a:b:c:d").unwrap_err(), Refused::MaxClientConnections);
        assert_eq!(adm.counts(), (2, 0, 1), "one client, not two");
        // The neighbouring /64s are other clients.
        let _others =
            [conn("2001:db8:1:3::1").unwrap(), conn("2001:db8:1:1:ffff:ffff:ffff:ffff").unwrap()];
        assert_eq!(adm.counts(), (4, 0, 3));
    }

    #[test]
    fn ipv6_handshakes_are_capped_per_64() {
        let limits = Limits { max_connections: 100, max_client_connections: 100, ..limits() };
        let adm = Admission::new(limits);
        let _held = [adm.admit(v6("fd00::1")).unwrap(), adm.admit(v6("fd00::2")).unwrap()];
        assert_eq!(adm.admit(v6("fd00::3")).unwrap_err(), Refused::MaxClientHandshakes);
        let _other = adm.admit(v6("fd00:0:0:1::3")).unwrap();
    }

    /// Every IPv4-mapped address lies in `::/64` (`::ffff:0:0/96`); each is still its own
    /// IPv4 client, not one share for all IPv4 clients of a dual-stack listener.
    #[test]
    fn ipv4_mapped_addresses_are_not_grouped_by_64() {
        let adm = Admission::new(limits());
        let mapped = |o| IpAddr::V6(Ipv4Addr::new(10, 0, 0, o).to_ipv6_mapped());
        let conn = |ip| adm.admit(ip).map(|(conn, _handshake)| conn);
        let _a = [conn(mapped(1)).unwrap(), conn(mapped(1)).unwrap()];
        let _b = conn(mapped(2)).unwrap();
        assert_eq!(adm.counts(), (3, 0, 2));
        // Nor are IPv4 addresses grouped by any prefix.
        let _c = conn(C).unwrap();
        assert_eq!(adm.counts(), (4, 0, 3));
    }

    #[test]
    fn clients() {
        let c = |s: &str| Client::of(s.parse().unwrap()).0;
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(c("10.1.2.3"), v4);
        assert_eq!(c("::ffff:10.1.2.3"), v4);
        assert_eq!(c("2001:db8:aa:bb:cc:dd:ee:ff"), v6("2001:db8:aa:bb::"));
        assert_eq!(c("::1"), v6("::"));
        // IPv4-compatible (deprecated, `::a.b.c.d`) is not mapped: an IPv6 address like any.
        assert_eq!(c("::10.1.2.3"), v6("::"));
        assert_eq!(c("fe80::1"), v6("fe80::"));
    }
}
