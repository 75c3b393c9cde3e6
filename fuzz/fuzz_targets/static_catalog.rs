//! The destination service's static file (YAML a user writes): parsing never panics, and
//! every inbound policy it makes the destination service answer for its pods is one the
//! proxy accepts (else the proxy would refuse the update and keep failing closed).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use prometheus_client::metrics::counter::Counter;
use serde_yaml_ng::Value;
use weft_destination::{
    IndexConfig,
    model::{ObjKey, PortSet},
    policy::index::{PolicyConfig, SharedPolicyIndex},
    static_source::{Catalog, StaticIndex},
};
use weft_proxy::policy::server::ServerPolicy;

fuzz_target!(|text: &str| {
    let Ok((catalog, _warnings)) = Catalog::parse(Path::new("fuzz.yaml"), text) else { return };
    // The pods and ports to ask for, read back from the text.
    let Ok(doc) = serde_yaml_ng::from_str::<Value>(text) else { return };
    let str_of = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let pods: Vec<ObjKey> = doc
        .get("pods")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|p| Some(ObjKey::new(str_of(p, "namespace")?, str_of(p, "name")?)))
        .take(8)
        .collect();
    let mut ports = vec![80u16, 8080];
    for p in doc.get("policies").and_then(Value::as_sequence).into_iter().flatten().take(8) {
        if let Some(port) = p.get("spec").and_then(|s| s.get("port")).and_then(Value::as_u64) {
            ports.extend(u16::try_from(port).ok());
        }
    }
    let ids = IndexConfig {
        cluster_domain: "cluster.local".into(),
        control_plane_namespace: "weft".into(),
        trust_domain: "cluster.local".into(),
        proxy_inbound_port: 4143,
        default_opaque_ports: PortSet::parse("25,3306").0,
    };
    let policy = SharedPolicyIndex::new(
        PolicyConfig::default(),
        ids,
        Counter::default(),
        Default::default(),
    );
    let _index = StaticIndex::new(catalog, "cluster.local", policy.clone());
    let index = policy.lock();
    for pod in &pods {
        for &port in &ports {
            if let Some(server) = index.get(pod, port) {
                if let Err(e) = ServerPolicy::from_api(server.clone()) {
                    panic!("the proxy refuses what the destination service sends: {e}\n{server:?}");
                }
            }
        }
    }
});
