//! Policy objects from the API server (Server, AuthorizationPolicy, MeshTLSAuthentication,
//! NetworkAuthentication; their `spec` as JSON): converting never panics, and whatever a
//! set of them makes the destination service answer for a pod is a policy the proxy
//! accepts.
#![no_main]

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use libfuzzer_sys::fuzz_target;
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use weft_destination::{
    IndexConfig, PolicyConfig,
    model::{ObjKey, PortSet},
    policy::{
        index::PolicyIndex,
        model::{PodInbound, PolicyKind, PolicyObject},
    },
};
use weft_proxy::policy::server::ServerPolicy;

fuzz_target!(|data: &[u8]| {
    // Objects separated by NUL: a kind byte, then the spec.
    let mut objects = Vec::new();
    for (i, chunk) in data.split(|&b| b == 0).take(8).enumerate() {
        let Some((&kind, spec)) = chunk.split_first() else { continue };
        let kind = PolicyKind::ALL[usize::from(kind) % PolicyKind::ALL.len()];
        let Ok(spec) = serde_json::from_slice::<Value>(spec) else { continue };
        let meta = ObjectMeta {
            name: Some(format!("obj-{i}")),
            namespace: Some("prod".into()),
            ..ObjectMeta::default()
        };
        if let Ok(obj) = PolicyObject::parse(kind, &meta, &spec) {
            assert_eq!(obj.kind(), kind);
            objects.push(obj);
        }
    }
    let ids = IndexConfig {
        cluster_domain: "cluster.local".into(),
        control_plane_namespace: "weft".into(),
        trust_domain: "cluster.local".into(),
        proxy_inbound_port: 4143,
        default_opaque_ports: PortSet::parse("25,3306").0,
    };
    let mut index =
        PolicyIndex::new(PolicyConfig::default(), ids, Counter::default(), Default::default());
    let pod = ObjKey::new("prod", "web-1");
    let inbound = PodInbound {
        labels: BTreeMap::from([("app".to_string(), "web".to_string())]),
        named_ports: BTreeMap::from([("http".to_string(), 8080)]),
        probes: BTreeMap::from([(8080, ["/ready".to_string()].into())]),
        default_policy: None,
    };
    index.set_pods(HashMap::from([(pod.clone(), inbound)]));
    for kind in PolicyKind::ALL {
        index.reset(kind, objects.clone());
    }
    for port in [8080, 80, 9090] {
        if let Some(server) = index.get(&pod, port)
            && let Err(e) = ServerPolicy::from_api(server.clone())
        {
            panic!("the proxy refuses what the destination service sends: {e}\n{server:?}");
        }
    }
});
