//! The cluster's Service networking, as the chart's pods need it: `<service>.<ns>.svc.
//! cluster.local:<port>` reaches the server behind the chart's Service. Either stood in for
//! by rewriting those addresses in a pod's args and env (no root needed), or for real: a
//! DNS server of the test's answers the names with a ClusterIP of the Service's own (a
//! loopback address), where the Service's port forwards to the server, as kube-proxy does;
//! each pod's resolv.conf is the one the kubelet writes for its namespace.

use std::{
    collections::BTreeMap,
    io,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
};

use k8s_openapi::api::core::v1::Service;

use super::{NS, Objects};
use crate::control_plane::Dns;

const CLUSTER_DOMAIN: &str = "cluster.local";

/// How a pod reaches the cluster's Services by name.
pub(super) enum ClusterDns<'a> {
    /// Each `name:port` in the pod's args and env is replaced by the address serving it.
    Rewrite(&'a BTreeMap<String, SocketAddr>),
    /// The names resolved for real: this file is the pod's /etc/resolv.conf (given as the
    /// binary's `--dns-resolv-conf`, `WEFT_<COMMAND>_DNS_RESOLV_CONF`).
    ResolvConf(PathBuf),
}

impl ClusterDns<'_> {
    pub(super) fn rewrite(&self, value: &str) -> String {
        match self {
            ClusterDns::Rewrite(services) => services
                .iter()
                .fold(value.to_owned(), |v, (name, addr)| v.replace(name, &addr.to_string())),
            ClusterDns::ResolvConf(_) => value.to_owned(),
        }
    }
}

/// The Services the test has put behind their names so far.
pub(super) struct Services {
    dir: PathBuf,
    /// `name:port` → the server, for `ClusterDns::Rewrite`.
    addrs: BTreeMap<String, SocketAddr>,
    /// With DNS: the server and the ClusterIPs' forwarders.
    dns: Option<Dns>,
    forwarders: Vec<Forwarder>,
}

impl Services {
    /// Addresses rewritten in each pod (no root needed).
    pub(super) fn rewritten(dir: &Path) -> Services {
        Services { dir: dir.to_owned(), addrs: BTreeMap::new(), dns: None, forwarders: Vec::new() }
    }

    /// Names resolved by the test's DNS server (port 53: root).
    pub(super) fn resolved(dir: &Path) -> Services {
        Services { dns: Some(Dns::start()), ..Services::rewritten(dir) }
    }

    /// `service` (a Service the chart renders) now reaches `server`, the address its
    /// targetPort names in the running pod.
    pub(super) fn expose(&mut self, objects: &Objects, service: &str, server: SocketAddr) {
        let svc: Service = objects.get("Service", service);
        let port = svc.spec.and_then(|s| s.ports).expect("ports")[0].port;
        let port = u16::try_from(port).expect("a port");
        let name = format!("{service}.{NS}.svc.{CLUSTER_DOMAIN}");
        self.addrs.insert(format!("{name}:{port}"), server);
        if let Some(dns) = &self.dns {
            let cluster_ip = cluster_ip();
            self.forwarders.push(Forwarder::start((cluster_ip, port).into(), server));
            dns.set(&name, cluster_ip);
        }
    }

    /// How a pod in `namespace` reaches them.
    pub(super) fn for_pod(&self, namespace: &str) -> ClusterDns<'_> {
        let Some(dns) = &self.dns else { return ClusterDns::Rewrite(&self.addrs) };
        let conf = self.dir.join(format!("resolv-{namespace}.conf"));
        let search =
            format!("{namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}");
        let text = format!(
            "nameserver {}\nsearch {search}\noptions ndots:5 timeout:1 attempts:2\n",
            dns.ip
        );
        std::fs::write(&conf, text).expect("resolv.conf");
        ClusterDns::ResolvConf(conf)
    }

    /// The names the DNS server was asked for (none when addresses are rewritten).
    pub(super) fn asked(&self) -> Vec<String> {
        self.dns.as_ref().map(Dns::asked).unwrap_or_default()
    }

    pub(super) fn resolves_names(&self) -> bool {
        self.dns.is_some()
    }
}

/// A ClusterIP of its own per Service: a loopback address no other test uses.
fn cluster_ip() -> Ipv4Addr {
    static N: AtomicU8 = AtomicU8::new(1);
    Ipv4Addr::new(127, 96, (std::process::id() % 250) as u8, N.fetch_add(1, Ordering::Relaxed))
}

/// kube-proxy for one Service port: connections to the ClusterIP go to the server.
struct Forwarder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    fn start(addr: SocketAddr, server: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| {
            panic!("ClusterIP {addr}: {e} (is something listening on 0.0.0.0:{})?", addr.port())
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(server) else { continue };
                for (from, to) in [(&client, &upstream), (&upstream, &client)] {
                    let (mut from, mut to) =
                        (from.try_clone().expect("clone"), to.try_clone().expect("clone"));
                    std::thread::spawn(move || {
                        let _ = io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Forwarder { addr, stop }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}
