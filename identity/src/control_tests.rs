//! Address parsing, and the resolver and connector without a network: RFC 6761 names that
//! hickory answers itself, refused connections, and IP literals that never touch DNS.
#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn addresses_parse_ips_and_names() {
    let ok = |s: &str| s.parse::<ControlAddr>().unwrap();
    let a = ok("weft-destination.weft.svc.cluster.local:8086");
    assert_eq!(a.host(), &Host::Name("weft-destination.weft.svc.cluster.local".into()));
    assert_eq!(a.port(), 8086);
    assert!(a.is_name() && a.socket_addr().is_none());
    assert_eq!(a.to_string(), "weft-destination.weft.svc.cluster.local:8086");
    assert_eq!(ok("10.0.0.1:8080").socket_addr(), Some(([10, 0, 0, 1], 8080).into()));
    assert_eq!(ok("[::1]:8080").to_string(), "[::1]:8080");
    assert_eq!(ok("localhost:1").host(), &Host::Name("localhost".into()));
    assert_eq!(ok("Weft-Identity.weft.svc.:8080").to_string(), "weft-identity.weft.svc.:8080");
    assert_eq!(ok(" identity:8080 ").port(), 8080);
}

#[test]
fn only_loopback_ip_literals_are_loopback() {
    let ok = |s: &str| s.parse::<ControlAddr>().unwrap();
    for s in ["127.0.0.1:8086", "127.0.0.2:8086", "127.255.255.254:1", "[::1]:8086"] {
        assert!(ok(s).is_loopback(), "{s}");
    }
    assert!(ok("[::ffff:127.0.0.1]:8086").is_loopback());
    for s in [
        "10.0.0.1:8086",
        "192.168.1.1:8086",
        "0.0.0.0:8086",
        "128.0.0.1:8086",
        "126.255.255.255:8086",
        "[::]:8086",
        "[::2]:8086",
        "[fd00::1]:8086",
        "[::ffff:10.0.0.1]:8086",
        // The IPv4-compatible form (deprecated) is not loopback on Linux.
        "[::127.0.0.1]:8086",
        "localhost:8086",
        "localhost.:8086",
        "weft-destination.weft.svc.cluster.local:8086",
        "127.0.0.1.nip.io:8086",
    ] {
        assert!(!ok(s).is_loopback(), "{s}");
    }
}

#[test]
fn bad_addresses_say_what_is_wrong() {
    let err = |s: &str| s.parse::<ControlAddr>().unwrap_err();
    for s in ["weft-destination.weft.svc.cluster.local", "10.0.0.1", "::1", "[::1]", ""] {
        assert!(matches!(err(s), AddrError::NoPort(_)), "{s}: {:?}", err(s));
    }
    assert!(matches!(err(":8086"), AddrError::EmptyHost(_)));
    for s in ["name:", "name:http", "name:0", "name:65536", "10.0.0.1:99999"] {
        assert!(matches!(err(s), AddrError::BadPort(..)), "{s}: {:?}", err(s));
    }
    for s in ["a b:80", "-x.y:80", "x..y:80", "[10.0.0.1]:80", "fe80::1:x:80", "é.example:80"] {
        assert!(matches!(err(s), AddrError::BadHost(..)), "{s}: {:?}", err(s));
    }
    assert!(err("weft-destination").to_string().contains("has no port: expected host:port"));
}

fn conf(tag: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("weft-resolv-{tag}-{}.conf", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn resolver_configuration_errors_name_the_file() {
    let e = Resolver::from_resolv_conf("/nonexistent/resolv.conf", DEFAULT_RESOLVE_TIMEOUT)
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/resolv.conf"), "{e}");
    let p = conf("empty", "search weft.svc.cluster.local\n");
    let e = Resolver::from_resolv_conf(&p, DEFAULT_RESOLVE_TIMEOUT).unwrap_err();
    assert!(matches!(e, ResolverError::Config { .. }), "{e}");
    let _ = std::fs::remove_file(p);
}

#[tokio::test]
async fn special_names_resolve_without_a_network_and_failures_are_counted() {
    // Nothing listens on this nameserver: only names hickory answers itself can resolve.
    let p = conf("special", "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n");
    let r = Resolver::from_resolv_conf(&p, Duration::from_secs(3)).unwrap();
    let ips = r.resolve("destination", "localhost").await.unwrap();
    assert!(ips.contains(&IpAddr::from([127, 0, 0, 1])), "{ips:?}");
    assert_eq!(r.errors("destination"), 0);
    let e = r.resolve("destination", "weft-destination.invalid").await.unwrap_err();
    assert!(e.to_string().contains("weft-destination.invalid"), "{e}");
    assert_eq!(r.errors("destination"), 1);
    assert_eq!(r.errors("identity"), 0);
    let mut reg = Registry::default();
    r.register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(
        text.contains("control_plane_resolve_errors_total{service=\"destination\"} 1"),
        "{text}"
    );
    let _ = std::fs::remove_file(p);
}

#[tokio::test]
async fn ip_literals_need_no_resolver_and_names_do() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let c = Connector::new("destination", addr.into(), None, None, Duration::from_secs(1));
    assert!(c.connect().await.is_ok());
    let name: ControlAddr = format!("localhost:{}", addr.port()).parse().unwrap();
    let c = Connector::new("destination", name.clone(), None, None, Duration::from_secs(1));
    let e = c.connect().await.err().unwrap();
    assert!(matches!(e, ConnectError::Resolve { source: ResolveError::NoResolver { .. }, .. }));
    let p = conf("literal", "nameserver 127.0.0.1\n");
    let r = Resolver::from_resolv_conf(&p, Duration::from_secs(3)).unwrap();
    let c = Connector::new("destination", name, Some(r), None, Duration::from_secs(1));
    assert!(c.connect().await.is_ok());
    // A refused connection names the service and the address.
    drop(listener);
    let e = c.connect().await.err().unwrap();
    assert!(
        e.to_string().contains("cannot connect to the destination service at localhost:"),
        "{e}"
    );
    let _ = std::fs::remove_file(p);
}
