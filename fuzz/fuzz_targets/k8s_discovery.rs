//! Kubernetes objects as the API server sends them (Namespace, Service, EndpointSlice, Pod,
//! Gateway API HTTPRoute; JSON): converting them never panics, and whatever a set of them
//! makes the destination service answer for a service — endpoints and profile, split
//! included — the proxy takes whole: every endpoint converts, and the profile brings no
//! error the destination service could have avoided.
#![no_main]

use k8s_openapi::api::{
    core::v1::{Namespace as K8sNamespace, Pod as K8sPod, Service as K8sService},
    discovery::v1::EndpointSlice,
};
use libfuzzer_sys::fuzz_target;
use linkerd2_proxy_api::destination::update;
use serde_json::Value;
use weft_destination::{
    IndexConfig,
    index::Index,
    model::{Namespace, ObjKey, Pod, PortSet, Service, Slice},
    resolve::Target,
    server::diff,
    split::SplitRoute,
};

/// Parses `$json` as a `$k8s` and pushes its conversion into the index's `$model` to `$into`.
macro_rules! convert {
    ($json:expr, $k8s:ty, $model:ident, $into:expr) => {
        if let Ok(obj) = serde_json::from_slice::<$k8s>($json)
            && let Ok((model, _problems)) = $model::from_k8s(&obj)
        {
            $into.push(model);
        }
    };
}

#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    services: Vec<Service>,
    slices: Vec<Slice>,
    pods: Vec<Pod>,
    routes: Vec<SplitRoute>,
}

fuzz_target!(|data: &[u8]| {
    // Objects separated by NUL: a kind byte, then the object.
    let mut objects = Objects::default();
    for chunk in data.split(|&b| b == 0).take(12) {
        let Some((&kind, json)) = chunk.split_first() else { continue };
        match kind % 5 {
            0 => convert!(json, K8sNamespace, Namespace, objects.namespaces),
            1 => convert!(json, K8sService, Service, objects.services),
            2 => convert!(json, EndpointSlice, Slice, objects.slices),
            3 => convert!(json, K8sPod, Pod, objects.pods),
            _ => {
                let Ok(route) = serde_json::from_slice::<Value>(json) else { continue };
                let Ok(meta) = serde_json::from_value(route["metadata"].clone()) else { continue };
                if let Ok((r, _problems)) = SplitRoute::from_k8s(&meta, &route["spec"]) {
                    objects.routes.push(r);
                }
            }
        }
    }
    let services: Vec<ObjKey> = objects.services.iter().map(|s| s.key.clone()).collect();
    let mut index = Index::new(IndexConfig {
        cluster_domain: "cluster.local".into(),
        control_plane_namespace: "weft".into(),
        trust_domain: "cluster.local".into(),
        proxy_inbound_port: 4143,
        default_opaque_ports: PortSet::parse("25,3306").0,
    });
    index.reset_namespaces(objects.namespaces);
    index.reset_services(objects.services);
    index.reset_slices(objects.slices);
    index.reset_pods(objects.pods);
    let _ = index.reset_routes(objects.routes);
    for key in services {
        for port in [80, 8080] {
            let res = index.lookup(&Target::Service { key: key.clone(), port });
            for u in diff(None, &res) {
                let Some(update::Update::Add(set)) = u.update else { continue };
                for addr in &set.addrs {
                    assert!(
                        weft_proxy::discovery::endpoint(&set.metric_labels, addr).is_some(),
                        "the proxy drops an endpoint the destination service sends: {addr:?}"
                    );
                }
            }
            let profile = res.profile();
            let (_, errors) = weft_proxy::profile::from_api(&profile);
            assert!(errors.is_empty(), "the proxy refuses parts of the profile: {errors:?}\n{profile:?}");
        }
    }
});

