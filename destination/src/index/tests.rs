//! The index with no cluster: objects in, lookups and pushed updates out.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tokio::sync::watch;

use super::*;
use crate::{
    model::{
        Namespace, ObjKey, Pod, PortSet, Service, ServicePort, Slice, SliceEndpoint, TargetPort,
    },
    profile::ProfilePolicy,
    resolve::{Hint, Resolution, Target},
};

const ID_WEB: &str = "web.prod.serviceaccount.identity.weft.cluster.local";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn service(name: &str, cluster_ip: &str, ports: &[(&str, u16, TargetPort)]) -> Service {
    Service {
        key: ObjKey::new("prod", name),
        cluster_ips: vec![ip(cluster_ip)],
        ports: ports
            .iter()
            .map(|(n, p, t)| ServicePort { name: n.to_string(), port: *p, target_port: t.clone() })
            .collect(),
        opaque_ports: None,
        policy: ProfilePolicy::default(),
    }
}

fn web() -> Service {
    service(
        "web",
        "10.96.0.10",
        &[
            ("http", 80, TargetPort::Number(8080)),
            ("admin", 9000, TargetPort::Name("admin".into())),
        ],
    )
}

fn slice(
    name: &str,
    svc: &str,
    ports: &[(&str, u16)],
    eps: &[(&str, bool, Option<&str>)],
) -> Slice {
    Slice {
        key: ObjKey::new("prod", name),
        service: Some(ObjKey::new("prod", svc)),
        ports: ports.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
        endpoints: eps
            .iter()
            .map(|(a, ready, pod)| SliceEndpoint {
                addresses: vec![ip(a)],
                ready: *ready,
                pod: pod.map(|p| ObjKey::new("prod", p)),
            })
            .collect(),
    }
}

fn pod(name: &str, addr: &str, meshed: bool) -> Pod {
    Pod {
        key: ObjKey::new("prod", name),
        ips: vec![ip(addr)],
        service_account: "web".into(),
        owner: Some(("deployment".into(), "web".into())),
        meshed,
        opaque_ports: None,
        skip_inbound_ports: PortSet::default(),
        owns_ip: true,
        inbound: Default::default(),
    }
}

fn by_name(name: &str, port: u16) -> Target {
    Target::Service { key: ObjKey::new("prod", name), port }
}

fn addrs(r: &Resolution) -> Vec<SocketAddr> {
    r.endpoints.keys().copied().collect()
}

/// web: two ready pods (one meshed) and a not-ready one, in two slices.
fn populated() -> Index {
    let mut idx = Index::new(IndexConfig::default());
    idx.apply_service(web());
    idx.apply_pod(pod("web-1", "10.244.0.1", true));
    idx.apply_pod(pod("web-2", "10.244.0.2", false));
    idx.apply_slice(slice(
        "web-a",
        "web",
        &[("http", 8080), ("admin", 9090)],
        &[("10.244.0.1", true, Some("web-1")), ("10.244.0.3", false, Some("web-3"))],
    ));
    idx.apply_slice(slice(
        "web-b",
        "web",
        &[("http", 8080), ("admin", 9091)],
        &[("10.244.0.2", true, Some("web-2"))],
    ));
    idx
}

#[test]
fn lookup_by_name() {
    let idx = populated();
    let r = idx.lookup(&by_name("web", 80));
    assert!(r.exists);
    assert_eq!(addrs(&r), [sa("10.244.0.1:8080"), sa("10.244.0.2:8080")]);
    assert_eq!(
        r.labels,
        BTreeMap::from([("namespace".into(), "prod".into()), ("service".into(), "web".into())])
    );
    assert_eq!(r.profile.fqn, "web.prod.svc.cluster.local");

    let meshed = &r.endpoints[&sa("10.244.0.1:8080")];
    assert_eq!(meshed.identity.as_deref(), Some(ID_WEB));
    assert_eq!(meshed.hint, Hint::H2 { opaque_transport: None });
    assert_eq!(meshed.weight, 10_000);
    let labels: Vec<_> = meshed.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(
        labels,
        ["deployment=web", "namespace=prod", "pod=web-1", "service=web", "serviceaccount=web"]
    );
    let plain = &r.endpoints[&sa("10.244.0.2:8080")];
    assert_eq!((plain.identity.as_ref(), &plain.hint), (None, &Hint::Unknown));
    assert_eq!(plain.labels.get("pod").map(String::as_str), Some("web-2"));

    // A named target port resolves per slice.
    assert_eq!(
        addrs(&idx.lookup(&by_name("web", 9000))),
        [sa("10.244.0.1:9090"), sa("10.244.0.2:9091")]
    );
    // A port the service does not declare is used as the target port.
    assert_eq!(
        addrs(&idx.lookup(&by_name("web", 7000))),
        [sa("10.244.0.1:7000"), sa("10.244.0.2:7000")]
    );
    // Unknown names.
    assert!(!idx.lookup(&by_name("nope", 80)).exists);
    assert!(!idx.lookup(&Target::Service { key: ObjKey::new("other", "web"), port: 80 }).exists);
    assert!(!idx.lookup(&Target::External("example.com:80".into())).exists);
}

#[test]
fn lookup_by_ip() {
    let idx = populated();
    // A ClusterIP: the service's endpoints for that port.
    assert_eq!(idx.lookup(&Target::Addr(sa("10.96.0.10:80"))), idx.lookup(&by_name("web", 80)));
    // A pod IP: that pod alone, on the port asked for.
    let r = idx.lookup(&Target::Addr(sa("10.244.0.1:8080")));
    assert!(r.exists);
    assert_eq!(addrs(&r), [sa("10.244.0.1:8080")]);
    let ep = &r.endpoints[&sa("10.244.0.1:8080")];
    assert_eq!(ep.identity.as_deref(), Some(ID_WEB));
    assert_eq!(ep.labels.get("service"), None);
    assert_eq!(r.profile.endpoint.as_deref(), Some(&**ep));
    // The proxy's admin port of a meshed pod too: a meshed scraper's proxy originates mTLS
    // (HTTP/2) to it, which the admin port terminates.
    let r = idx.lookup(&Target::Addr(sa("10.244.0.1:4191")));
    let ep = &r.endpoints[&sa("10.244.0.1:4191")];
    assert_eq!(ep.identity.as_deref(), Some(ID_WEB));
    assert_eq!(ep.hint, Hint::H2 { opaque_transport: None });
    // A not-ready pod is still that pod; an unknown IP is unknown.
    assert!(idx.lookup(&Target::Addr(sa("10.244.0.2:1"))).exists);
    assert!(!idx.lookup(&Target::Addr(sa("10.1.1.1:80"))).exists);
}

#[test]
fn no_endpoints_but_exists() {
    let mut idx = Index::new(IndexConfig::default());
    idx.apply_service(web());
    let r = idx.lookup(&by_name("web", 80));
    assert!(r.exists && r.endpoints.is_empty());
    // An unready-only slice gives no endpoints either.
    idx.apply_slice(slice("web-a", "web", &[("http", 8080)], &[("10.244.0.1", false, None)]));
    assert!(idx.lookup(&by_name("web", 80)).endpoints.is_empty());
    // A named target port the slice cannot resolve gives no endpoints.
    assert!(idx.lookup(&by_name("web", 9000)).endpoints.is_empty());
}

fn follow(idx: &mut Index, t: Target) -> watch::Receiver<Arc<Resolution>> {
    let mut rx = idx.subscribe(&t).expect("followed");
    rx.borrow_and_update();
    rx
}

fn changed(rx: &mut watch::Receiver<Arc<Resolution>>) -> Option<Arc<Resolution>> {
    rx.has_changed().unwrap().then(|| rx.borrow_and_update().clone())
}

#[test]
fn followers_see_endpoints_come_and_go() {
    let mut idx = populated();
    let mut by_svc = follow(&mut idx, by_name("web", 80));
    let mut by_cip = follow(&mut idx, Target::Addr(sa("10.96.0.10:80")));
    let mut other = follow(&mut idx, by_name("other", 80));

    // An endpoint added.
    idx.apply_slice(slice(
        "web-b",
        "web",
        &[("http", 8080)],
        &[("10.244.0.2", true, Some("web-2")), ("10.244.0.4", true, None)],
    ));
    let r = changed(&mut by_svc).expect("update");
    assert_eq!(addrs(&r), [sa("10.244.0.1:8080"), sa("10.244.0.2:8080"), sa("10.244.0.4:8080")]);
    assert_eq!(changed(&mut by_cip).as_deref(), Some(&*r));
    assert!(changed(&mut other).is_none(), "an unrelated follower is not woken");

    // One removed (became not ready), then a slice deleted.
    idx.apply_slice(slice(
        "web-b",
        "web",
        &[("http", 8080)],
        &[("10.244.0.2", false, Some("web-2")), ("10.244.0.4", true, None)],
    ));
    assert_eq!(
        addrs(&changed(&mut by_svc).unwrap()),
        [sa("10.244.0.1:8080"), sa("10.244.0.4:8080")]
    );
    idx.delete_slice(&ObjKey::new("prod", "web-b"));
    assert_eq!(addrs(&changed(&mut by_svc).unwrap()), [sa("10.244.0.1:8080")]);

    // The same object again changes nothing.
    idx.apply_service(web());
    assert!(changed(&mut by_svc).is_none());

    // The service deleted: does not exist any more, also by ClusterIP.
    idx.delete_service(&ObjKey::new("prod", "web"));
    assert!(!changed(&mut by_svc).unwrap().exists);
    assert!(!changed(&mut by_cip).unwrap().exists);
    // And comes back.
    idx.apply_service(web());
    assert_eq!(addrs(&changed(&mut by_svc).unwrap()), [sa("10.244.0.1:8080")]);
    idx.apply_service(service("other", "10.96.0.11", &[("", 80, TargetPort::Number(80))]));
    assert!(changed(&mut other).unwrap().exists);
}

#[test]
fn pod_becoming_meshed_updates_its_endpoints() {
    let mut idx = populated();
    let mut by_svc = follow(&mut idx, by_name("web", 80));
    let mut by_pod = follow(&mut idx, Target::Addr(sa("10.244.0.2:8080")));
    idx.apply_pod(pod("web-2", "10.244.0.2", true));
    let r = changed(&mut by_svc).expect("update");
    assert_eq!(r.endpoints[&sa("10.244.0.2:8080")].identity.as_deref(), Some(ID_WEB));
    let r = changed(&mut by_pod).expect("update");
    assert_eq!(r.endpoints[&sa("10.244.0.2:8080")].hint, Hint::H2 { opaque_transport: None });
    // The same pod again wakes nobody.
    idx.apply_pod(pod("web-2", "10.244.0.2", true));
    assert!(changed(&mut by_svc).is_none() && changed(&mut by_pod).is_none());
}

#[test]
fn pod_seen_after_its_slice() {
    let mut idx = Index::new(IndexConfig::default());
    idx.apply_service(web());
    idx.apply_slice(slice(
        "web-a",
        "web",
        &[("http", 8080)],
        &[("10.244.0.9", true, Some("late"))],
    ));
    let mut rx = follow(&mut idx, by_name("web", 80));
    let ep = &rx.borrow().endpoints[&sa("10.244.0.9:8080")].clone();
    assert_eq!(ep.labels.get("pod"), None);
    idx.apply_pod(pod("late", "10.244.0.9", true));
    let r = changed(&mut rx).expect("update");
    assert_eq!(
        r.endpoints[&sa("10.244.0.9:8080")].labels.get("pod").map(String::as_str),
        Some("late")
    );
    idx.delete_pod(&ObjKey::new("prod", "late"));
    assert!(changed(&mut rx).expect("update").endpoints[&sa("10.244.0.9:8080")].identity.is_none());
}

#[test]
fn pod_ip_follower_sees_pod_go_and_ip_reused() {
    let mut idx = populated();
    let mut rx = follow(&mut idx, Target::Addr(sa("10.244.0.1:8080")));
    // A new pod takes the IP before the old one's deletion arrives: the new one keeps it.
    idx.apply_pod(pod("web-9", "10.244.0.1", false));
    assert_eq!(changed(&mut rx).unwrap().endpoints[&sa("10.244.0.1:8080")].labels["pod"], "web-9");
    idx.delete_pod(&ObjKey::new("prod", "web-1"));
    assert!(
        changed(&mut rx)
            .is_none_or(|r| r.endpoints[&sa("10.244.0.1:8080")].labels["pod"] == "web-9")
    );
    idx.delete_pod(&ObjKey::new("prod", "web-9"));
    assert!(!changed(&mut rx).unwrap().exists);
}

/// A port the pod's proxy does not intercept is reached as an unmeshed endpoint: no
/// identity (so no mTLS), no hint; its other ports stay meshed.
#[test]
fn a_skipped_inbound_port_is_not_meshed() {
    let mut idx = populated();
    let mut rx = follow(&mut idx, by_name("web", 80));
    let mut p = pod("web-1", "10.244.0.1", true);
    p.skip_inbound_ports = PortSet::parse("8000-8080").0;
    idx.apply_pod(p);
    let r = changed(&mut rx).expect("update");
    let ep = &r.endpoints[&sa("10.244.0.1:8080")];
    assert_eq!((ep.identity.as_deref(), &ep.hint), (None, &Hint::Unknown));
    assert_eq!(ep.labels["pod"], "web-1", "still the pod's endpoint");
    let mut p = pod("web-1", "10.244.0.1", true);
    p.skip_inbound_ports = PortSet::parse("9090").0;
    idx.apply_pod(p);
    let r = changed(&mut rx).expect("update");
    let ep = &r.endpoints[&sa("10.244.0.1:8080")];
    assert!(ep.identity.is_some() && ep.hint != Hint::Unknown, "{ep:?}");
}

#[test]
fn opaque_ports_from_pod_or_namespace() {
    let mut idx = populated();
    let mut rx = follow(&mut idx, by_name("web", 80));
    // The namespace marks 8080 opaque: the meshed endpoint gets opaque transport to 4143.
    let (set, _) = PortSet::parse("8080");
    idx.apply_namespace(Namespace {
        name: "prod".into(),
        opaque_ports: Some(set),
        default_policy: None,
    });
    let r = changed(&mut rx).expect("update");
    assert_eq!(r.endpoints[&sa("10.244.0.1:8080")].hint, Hint::H2 { opaque_transport: Some(4143) });
    assert_eq!(r.endpoints[&sa("10.244.0.2:8080")].hint, Hint::Unknown, "not meshed: no hint");
    // The pod's own annotation wins over the namespace's.
    let mut p = pod("web-1", "10.244.0.1", true);
    p.opaque_ports = Some(PortSet::parse("5432").0);
    idx.apply_pod(p);
    let r = changed(&mut rx).expect("update");
    assert_eq!(r.endpoints[&sa("10.244.0.1:8080")].hint, Hint::H2 { opaque_transport: None });
    // Profiles: a service port is opaque by the service's or the namespace's annotation.
    assert!(!idx.lookup(&by_name("web", 80)).profile.opaque, "service port 80 is not listed");
    let (set, _) = PortSet::parse("80");
    idx.apply_namespace(Namespace {
        name: "prod".into(),
        opaque_ports: Some(set),
        default_policy: None,
    });
    assert!(idx.lookup(&by_name("web", 80)).profile.opaque);
    idx.delete_namespace("prod");
    assert!(!idx.lookup(&by_name("web", 80)).profile.opaque);
}

#[test]
fn the_proxies_default_opaque_ports_apply_where_no_annotation_says() {
    // A meshed PostgreSQL without annotations: its port is one of the proxies' default
    // opaque ports, so its server proxy will not look at the bytes; clients must use the
    // opaque transport, or their mTLS would reach the database undecrypted.
    let pg = || service("pg", "10.96.0.20", &[("pg", 5432, TargetPort::Number(5432))]);
    let pg_slice = slice("pg-a", "pg", &[("pg", 5432)], &[("10.244.0.7", true, Some("pg-0"))]);
    let mut idx = Index::new(IndexConfig::default());
    idx.apply_service(pg());
    idx.apply_pod(pod("pg-0", "10.244.0.7", true));
    idx.apply_slice(pg_slice.clone());
    let r = idx.lookup(&by_name("pg", 5432));
    assert_eq!(r.endpoints[&sa("10.244.0.7:5432")].hint, Hint::H2 { opaque_transport: Some(4143) });
    assert!(r.profile.opaque);
    let r = idx.lookup(&Target::Addr(sa("10.244.0.7:5432")));
    assert_eq!(r.endpoints[&sa("10.244.0.7:5432")].hint, Hint::H2 { opaque_transport: Some(4143) });
    // An annotation that lists no ports says none are opaque.
    idx.apply_namespace(Namespace {
        name: "prod".into(),
        opaque_ports: Some(PortSet::default()),
        default_policy: None,
    });
    let r = idx.lookup(&by_name("pg", 5432));
    assert_eq!(r.endpoints[&sa("10.244.0.7:5432")].hint, Hint::H2 { opaque_transport: None });
    assert!(!r.profile.opaque);
    // So does an empty default list.
    let mut idx =
        Index::new(IndexConfig { default_opaque_ports: PortSet::default(), ..Default::default() });
    idx.apply_service(pg());
    idx.apply_pod(pod("pg-0", "10.244.0.7", true));
    idx.apply_slice(pg_slice);
    let r = idx.lookup(&by_name("pg", 5432));
    assert_eq!(r.endpoints[&sa("10.244.0.7:5432")].hint, Hint::H2 { opaque_transport: None });
}

#[test]
fn resets_remove_what_is_gone() {
    let mut idx = populated();
    let mut rx = follow(&mut idx, by_name("web", 80));
    idx.reset_slices(vec![slice(
        "web-b",
        "web",
        &[("http", 8080)],
        &[("10.244.0.2", true, Some("web-2"))],
    )]);
    assert_eq!(addrs(&changed(&mut rx).unwrap()), [sa("10.244.0.2:8080")]);
    idx.reset_pods(vec![]);
    let r = changed(&mut rx).unwrap();
    assert_eq!(r.endpoints[&sa("10.244.0.2:8080")].labels.get("pod"), None);
    assert!(!idx.lookup(&Target::Addr(sa("10.244.0.2:80"))).exists);
    idx.reset_namespaces(vec![]);
    idx.reset_services(vec![]);
    assert!(!changed(&mut rx).unwrap().exists);
}

#[test]
fn identities_follow_config() {
    let config = IndexConfig {
        cluster_domain: "example.org".into(),
        control_plane_namespace: "mesh".into(),
        trust_domain: "corp.example".into(),
        proxy_inbound_port: 4143,
        ..Default::default()
    };
    assert_eq!(
        config.identity("prod", "web"),
        "web.prod.serviceaccount.identity.mesh.corp.example"
    );
    let mut idx = Index::new(config);
    idx.apply_service(web());
    idx.apply_pod(pod("web-1", "10.244.0.1", true));
    idx.apply_slice(slice(
        "web-a",
        "web",
        &[("http", 8080)],
        &[("10.244.0.1", true, Some("web-1"))],
    ));
    let r = idx.lookup(&by_name("web", 80));
    assert_eq!(r.profile.fqn, "web.prod.svc.example.org");
    assert_eq!(
        r.endpoints[&sa("10.244.0.1:8080")].identity.as_deref(),
        Some("web.prod.serviceaccount.identity.mesh.corp.example")
    );
}

#[test]
fn unfollowed_targets_are_dropped() {
    let mut idx = populated();
    let rx = follow(&mut idx, by_name("web", 80));
    let rx2 = follow(&mut idx, Target::Addr(sa("10.244.0.1:1")));
    assert_eq!(idx.subscriptions(), 2);
    drop((rx, rx2));
    assert_eq!(idx.subscriptions(), 0);
    idx.apply_slice(slice("web-a", "web", &[("http", 8080)], &[]));
    idx.apply_pod(pod("web-1", "10.244.0.1", false));
    assert_eq!(idx.subscriptions(), 0);
}
