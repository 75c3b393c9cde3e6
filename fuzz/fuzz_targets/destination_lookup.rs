//! What any proxy asks the destination service for: the `path` of `Destination/Get` and
//! `GetProfile` (`name.ns.svc.<cluster-domain>:port`, `ip:port`, any other `host:port`) and
//! the workload of `InboundServerPolicies/WatchPort` (`ns:pod` or
//! `{"ns":"..","pod":".."}`). Parsing never panics; an address re-parses to itself; a
//! service reads the same from its short and full names, in any case, with or without the
//! root dot; another name stays what it was; a workload reads the same from both forms.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use weft_destination::{
    policy::server::Workload,
    resolve::{Target, parse_path},
};

/// Cluster domains as an operator may write them (`--cluster-domain`).
const DOMAINS: [&str; 3] = ["cluster.local", "cluster.local.", "Example.ORG"];

fuzz_target!(|data: &[u8]| {
    // Protobuf strings: prost refuses what is not UTF-8 before the service sees it.
    let Ok(s) = std::str::from_utf8(data) else { return };
    for domain in DOMAINS {
        path(s, domain);
    }
    workload(s);
});

fn path(s: &str, domain: &str) {
    let domain_lc = domain.trim_matches('.').to_ascii_lowercase();
    match parse_path(s, domain) {
        Err(e) => assert_eq!(e.0, s, "the error names the path"),
        Ok(Target::Addr(addr)) => {
            let read = s
                .parse::<SocketAddr>()
                .ok()
                .or_else(|| s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 80)));
            assert_eq!(read, Some(addr), "{s:?}: only an IP literal is an address");
            assert_eq!(parse_path(&addr.to_string(), domain), Ok(Target::Addr(addr)));
        }
        Ok(Target::Service { key, port }) => {
            assert_ne!(port, 0, "{s:?}");
            for part in [&key.name, &key.namespace] {
                assert!(
                    !part.is_empty()
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                    "{s:?}: {part:?} is not a DNS label"
                );
            }
            let (name, ns) = (&key.name, &key.namespace);
            let mut forms = vec![
                format!("{name}.{ns}.svc:{port}"),
                format!("{name}.{ns}.svc.{domain_lc}:{port}"),
                format!("{name}.{ns}.svc.{domain_lc}.:{port}"),
                format!("{name}.{ns}.svc.{domain_lc}:{port}").to_ascii_uppercase(),
            ];
            if port == 80 {
                forms.push(format!("{name}.{ns}.svc.{domain_lc}"));
            }
            let want = Target::Service { key: key.clone(), port };
            for form in forms {
                assert_eq!(parse_path(&form, domain).as_ref(), Ok(&want), "{s:?} as {form:?}");
            }
        }
        Ok(Target::External(name)) => {
            let (host, port) = name.rsplit_once(':').expect("host:port");
            let port: u16 = port.parse().expect("a port");
            assert_ne!(port, 0, "{s:?}");
            assert!(!host.is_empty() && !host.ends_with('.'), "{s:?}: {name:?}");
            assert_eq!(name, name.to_ascii_lowercase(), "{s:?}");
            match parse_path(&name, domain) {
                Ok(Target::External(again)) => assert_eq!(again, name, "{s:?}"),
                // `1.2.3.4.` is a name (never resolvable here), which reads, without its
                // root dot, as the address.
                Ok(Target::Addr(addr)) => {
                    let ip = host.parse::<IpAddr>().ok();
                    assert_eq!(ip.map(|ip| SocketAddr::new(ip, port)), Some(addr), "{s:?}");
                }
                other => panic!("{s:?} gave {name:?}, which reads as {other:?}"),
            }
        }
    }
}

fn workload(s: &str) {
    let Ok(Workload(key)) = s.parse::<Workload>() else { return };
    let (ns, pod) = (&key.namespace, &key.name);
    for part in [ns, pod] {
        assert!(!part.is_empty() && !part.contains([':', '/']), "{s:?}: {part:?}");
    }
    let json = serde_json::json!({"ns": ns, "pod": pod}).to_string();
    assert_eq!(json.parse::<Workload>().map(|w| w.0).as_ref(), Ok(&key), "{s:?} as {json}");
    // The short form, unless the namespace (which only the JSON form can give so) makes it
    // read as JSON; no Kubernetes namespace starts with `{`.
    let short = format!("{ns}:{pod}");
    if !short.trim_start().starts_with('{') {
        assert_eq!(short.parse::<Workload>().map(|w| w.0).as_ref(), Ok(&key), "{s:?} as {short:?}");
    }
}
