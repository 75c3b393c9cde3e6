//! The proxy of a pod the chart's injector mutated, run as the kubelet would start it: the
//! real `weft-proxy` with the container's args and env (downward-API fields filled in,
//! `$(VAR)` references expanded), its projected token and trust-anchor files published
//! under a directory of the test's, listeners on loopback, the original destination fixed
//! (no iptables), and the control plane's Service names reached as the test's `ClusterDns`
//! says.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, process::Command, time::Duration};

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::json;

use super::{
    NS,
    cluster::ClusterDns,
    run::{Running, projected_token},
};
use crate::{
    kubeapi::FakeApi,
    netns::proxy_bin,
    support::{Backend, Proxy, admin_request, eventually, load, metric},
};

fn proxy_container(pod: &Pod) -> &Container {
    let spec = pod.spec.as_ref().expect("spec");
    let mut all = spec.init_containers.iter().flatten().chain(&spec.containers);
    all.find(|c| c.name == "weft-proxy").expect("the proxy container")
}

/// The pod's service account: the API server's ServiceAccount admission sets `default`
/// before the webhook sees a pod without one.
pub(super) fn service_account(pod: &Pod) -> String {
    let spec = pod.spec.as_ref().expect("spec");
    spec.service_account_name.clone().unwrap_or_else(|| "default".to_owned())
}

/// Kubernetes' `$(VAR)` expansion of an env value, over the variables defined before it
/// (`$$` is a literal `$`; an undefined reference stays as written).
fn expand(value: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$$") {
            out.push('$');
            rest = r;
        } else if let Some((name, r)) = rest.strip_prefix("$(").and_then(|r| r.split_once(')'))
            && let Some(v) = defined.get(name)
        {
            out.push_str(v);
            rest = r;
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The pod's name once created: what the API server names a pod of a Deployment (its
/// `generateName` and a suffix).
pub(super) fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_else(|| {
        format!("{}x7k2p", pod.metadata.generate_name.as_deref().unwrap_or("pod-"))
    })
}

/// Starts the pod's proxy; its outbound connections all "go to" `orig_dst`.
pub(super) fn start_proxy(
    pod: &Pod,
    root: &Path,
    dns: &ClusterDns<'_>,
    orig_dst: SocketAddr,
) -> Proxy {
    let c = proxy_container(pod);
    let ns = pod.metadata.namespace.clone().expect("a namespace");
    let sa = service_account(pod);
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    let spec = pod.spec.as_ref().expect("spec");

    // The kubelet's volumes: the projected token and the downward-API trust anchors.
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = spec.volumes.iter().flatten().find(|v| v.name == m.name).expect("its volume");
        let files: Vec<(String, String)> = if let Some(p) = &v.projected {
            let sources = p.sources.iter().flatten();
            sources
                .map(|s| {
                    let t = s.service_account_token.as_ref().expect("a projected token");
                    let audience = t.audience.as_deref().expect("an audience");
                    let account = format!("system:serviceaccount:{ns}:{sa}");
                    (t.path.clone(), projected_token(&account, audience))
                })
                .collect()
        } else if let Some(d) = &v.downward_api {
            d.items
                .iter()
                .flatten()
                .map(|item| {
                    let path = &item.field_ref.as_ref().expect("a field").field_path;
                    let key = path
                        .strip_prefix("metadata.annotations['")
                        .and_then(|k| k.strip_suffix("']"))
                        .unwrap_or_else(|| panic!("{path}: only annotations are projected"));
                    (item.path.clone(), annotations.get(key).cloned().unwrap_or_default())
                })
                .collect()
        } else {
            panic!("proxy volume {}: unexpected kind", v.name)
        };
        let dir = root.join(m.mount_path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("mount dir");
        for (name, data) in files {
            std::fs::write(dir.join(name), data).expect("write");
        }
        mounts.push((m.mount_path.clone(), dir));
    }

    let mut env = BTreeMap::new();
    let mut cmd = Command::new(proxy_bin());
    cmd.env_clear().args(c.args.iter().flatten());
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), None) => expand(v, &env),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.namespace") => ns.clone(),
                Some("spec.serviceAccountName") => sa.clone(),
                Some("metadata.name") => pod_name(pod),
                other => panic!("{}: unexpected downward-API field {other:?}", e.name),
            },
            other => panic!("{}: unexpected env source {other:?}", e.name),
        };
        env.insert(e.name.clone(), value.clone());
        let mut value = dns.rewrite(&value);
        for (mount, dir) in &mounts {
            if let Some(file) = value.strip_prefix(&format!("{mount}/")) {
                value = dir.join(file).display().to_string();
            }
        }
        if e.name.ends_with("_LISTEN_ADDR") {
            value = "127.0.0.1:0".into();
        }
        cmd.env(&e.name, value);
    }
    cmd.env("WEFT_PROXY_OUTBOUND_ORIG_DST_ADDR", orig_dst.to_string());
    if let ClusterDns::ResolvConf(conf) = dns {
        cmd.env("WEFT_PROXY_DNS_RESOLV_CONF", conf);
    }
    Proxy::start_cmd(cmd)
}

/// What the injected pod calls: the Service `web` in `prod`, at a ClusterIP nothing
/// listens on, with one endpoint, a real HTTP server on loopback; in the destination
/// service's API, as recorded objects.
pub(super) struct Web {
    backend: Backend,
    cluster_addr: SocketAddr,
}

impl Web {
    pub(super) fn start(api: &FakeApi) -> Web {
        let backend = Backend::start(Duration::ZERO, None);
        let service = fixture("service-web.json");
        let mut slice = fixture("endpointslice-web.json");
        let port_name = service["spec"]["ports"][0]["name"].clone();
        slice["endpoints"] = json!([{"addresses": [backend.addr.ip().to_string()],
                                    "conditions": {"ready": true, "serving": true, "terminating": false}}]);
        slice["ports"] =
            json!([{"name": port_name, "port": backend.addr.port(), "protocol": "TCP"}]);
        let ip = service["spec"]["clusterIP"].as_str().expect("a clusterIP").parse();
        let port = service["spec"]["ports"][0]["port"].as_u64().expect("a port");
        let cluster_addr = SocketAddr::new(ip.expect("an IP"), port as u16);
        api.put("/api/v1/services", service);
        api.put("/apis/discovery.k8s.io/v1/endpointslices", slice);
        Web { backend, cluster_addr }
    }

    /// The pod's proxy calls `web` through discovery, which it gets from `destination` over
    /// TLS to the destination service's identity, presenting its own certificate.
    pub(super) fn discover_through(
        &self,
        pod: &Pod,
        root: &Path,
        dns: &ClusterDns<'_>,
        destination: &Running,
    ) {
        let proxy = start_proxy(pod, root, dns, self.cluster_addr);
        let ready = eventually(Duration::from_secs(20), || {
            admin_request(proxy.admin, "GET", "/ready", "").0 == 200
        });
        assert!(ready, "the pod's proxy never got its certificate:\n{}", proxy.logs());
        // Its app port's inbound policy, from the destination service (the default one:
        // no Server selects it).
        let policy = eventually(Duration::from_secs(20), || {
            let m = proxy.metrics();
            metric(&m, "inbound_policy_updates_total", &[("port", "8080"), ("result", "ok")]) >= 1.0
        });
        assert!(
            policy,
            "no inbound policy for port 8080:\n{}\n{}",
            proxy.logs(),
            destination.logs()
        );
        // The very first request (the target's first lookup) included: it must not fail.
        let mut statuses = load(proxy.outbound, 1, 1);
        statuses.extend(load(proxy.outbound, 2, 20));
        let (ok, hits) = (statuses.iter().all(|&s| s == 200), self.backend.hits());
        assert!(
            ok && hits == 21,
            "{statuses:?}, {hits} at the endpoint: not through discovery\n{}\n{}",
            proxy.logs(),
            destination.logs()
        );
        let m = proxy.metrics();
        assert!(
            metric(&m, "outbound_discovery_lookups_total", &[("result", "balanced")]) >= 1.0,
            "{m}"
        );
        let ns = pod.metadata.namespace.clone().expect("namespace");
        let client =
            format!("{}.{ns}.serviceaccount.identity.{NS}.cluster.local", service_account(pod));
        let (_, dm) = admin_request(destination.serving.addr("admin"), "GET", "/metrics", "");
        assert!(
            metric(&dm, "destination_tls_connections_total", &[("client_id", &client)]) >= 1.0,
            "the destination service saw no mTLS connection from {client}:\n{dm}"
        );
        assert_eq!(destination.serving.fields["tls"], true, "{}", destination.serving.fields);
    }
}

fn fixture(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/fixtures/k8s").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON")
}
