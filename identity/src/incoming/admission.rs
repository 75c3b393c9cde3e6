//! Who may start a handshake: the per-listener caps on connections and handshakes in
//! progress, and the same caps per client IP address, checked when a connection is accepted.
//! The slots handed out give their place back when dropped.

use std::{
    collections::HashMap,
    net::IpAddr,
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
    clients: HashMap<IpAddr, Counts>,
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

/// A place under the caps, for one client, given back when dropped.
#[derive(Debug)]
pub(super) struct Slot {
    admission: Arc<Admission>,
    client: IpAddr,
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
    /// it is ready to serve) for a connection from `client`, or why not. The client's own
    /// caps are checked first, so that a client past its share is named as such.
    pub(super) fn admit(self: &Arc<Self>, client: IpAddr) -> Result<(Slot, Slot), Refused> {
        // An IPv4 client of a dual-stack listener shows as `::ffff:a.b.c.d`: the same client.
        let client = client.to_canonical();
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
}
