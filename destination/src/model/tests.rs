//! Conversions from Kubernetes objects, written as the API server returns them.

use serde_json::json;

use super::*;

fn pod(v: serde_json::Value) -> Result<(Pod, Vec<Problem>), Problem> {
    Pod::from_k8s(&serde_json::from_value(v).expect("a Pod"))
}

fn service(v: serde_json::Value) -> Result<(Service, Vec<Problem>), Problem> {
    Service::from_k8s(&serde_json::from_value(v).expect("a Service"))
}

fn slice(v: serde_json::Value) -> Result<(Slice, Vec<Problem>), Problem> {
    Slice::from_k8s(&serde_json::from_value(v).expect("an EndpointSlice"))
}

#[test]
fn port_sets() {
    let (set, bad) = PortSet::parse("3306, 5432,8000-8010");
    assert!(bad.is_empty());
    for p in [3306, 5432, 8000, 8005, 8010] {
        assert!(set.contains(p), "{p}");
    }
    for p in [80, 7999, 8011] {
        assert!(!set.contains(p), "{p}");
    }
    let (set, bad) = PortSet::parse("25,x,0,90-80,70000,,443");
    assert_eq!(bad, ["x", "0", "90-80", "70000"]);
    assert!(set.contains(25) && set.contains(443));
    assert_eq!(PortSet::parse(""), (PortSet::default(), vec![]));
}

#[test]
fn deployment_pod() {
    let (p, problems) = pod(json!({
        "metadata": {
            "name": "web-7d4b9c8f5-x2x9q", "namespace": "prod",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c8f5"},
            "annotations": {"config.weft.dev/opaque-ports": "5432"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9c8f5",
                "uid": "3c1b", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "serviceAccountName": "web",
            "initContainers": [{"name": "weft-init", "image": "weft-proxy"},
                               {"name": "weft-proxy", "image": "weft-proxy", "restartPolicy": "Always"}],
            "containers": [{"name": "app", "image": "nginx"}]
        },
        "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00::5"}]}
    }))
    .expect("converts");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(p.key, ObjKey::new("prod", "web-7d4b9c8f5-x2x9q"));
    assert_eq!(p.ips, ["10.244.1.5".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
    assert_eq!(p.service_account, "web");
    assert_eq!(p.owner, Some(("deployment".into(), "web".into())));
    assert!(p.meshed);
    assert!(p.owns_ip);
    assert!(p.opaque_ports.as_ref().is_some_and(|s| s.contains(5432)));
}

#[test]
fn owners() {
    let owned = |kind: &str, name: &str, hash: Option<&str>| {
        let mut labels = serde_json::Map::new();
        if let Some(h) = hash {
            labels.insert("pod-template-hash".into(), h.into());
        }
        pod(json!({
            "metadata": {"name": "p", "namespace": "n", "labels": labels,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "app"}]}
        }))
        .expect("converts")
        .0
        .owner
    };
    let o = |k: &str, n: &str| Some((k.to_string(), n.to_string()));
    assert_eq!(owned("ReplicaSet", "api-5f6d", Some("5f6d")), o("deployment", "api"));
    // A bare ReplicaSet (no matching hash) stays a replicaset.
    assert_eq!(owned("ReplicaSet", "api-5f6d", None), o("replicaset", "api-5f6d"));
    assert_eq!(owned("ReplicaSet", "api-5f6d", Some("zzzz")), o("replicaset", "api-5f6d"));
    assert_eq!(owned("ReplicaSet", "5f6d", Some("5f6d")), o("replicaset", "5f6d"));
    assert_eq!(owned("StatefulSet", "db", None), o("statefulset", "db"));
    assert_eq!(owned("DaemonSet", "agent", None), o("daemonset", "agent"));
    assert_eq!(owned("Job", "migrate-28391", None), o("job", "migrate-28391"));
    assert_eq!(owned("ReplicationController", "old", None), o("replicationcontroller", "old"));

    // No owner; and the controller reference wins over the first one.
    let (p, _) = pod(json!({"metadata": {"name": "p", "namespace": "n"}})).expect("converts");
    assert_eq!(p.owner, None);
    assert_eq!(p.service_account, "default");
    assert!(!p.meshed);
    assert!(p.ips.is_empty());
    let (p, _) = pod(json!({"metadata": {"name": "p", "namespace": "n", "ownerReferences": [
        {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "a"},
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "b", "controller": true}]}}))
    .expect("converts");
    assert_eq!(p.owner, o("statefulset", "db"));
}

#[test]
fn meshed_by_container_or_annotation() {
    let containers = json!({"metadata": {"name": "p", "namespace": "n"},
        "spec": {"containers": [{"name": "app"}, {"name": "weft-proxy"}]}});
    assert!(pod(containers).unwrap().0.meshed);
    let annotated = json!({"metadata": {"name": "p", "namespace": "n",
        "annotations": {"weft.dev/proxy-version": "0.1.0"}}});
    assert!(pod(annotated).unwrap().0.meshed);
    let other_proxy = json!({"metadata": {"name": "p", "namespace": "n"},
        "spec": {"containers": [{"name": "linkerd-proxy"}]}});
    assert!(!pod(other_proxy).unwrap().0.meshed);
}

#[test]
fn pods_that_do_not_own_their_ip() {
    let done = json!({"metadata": {"name": "p", "namespace": "n"}, "status": {"phase": "Succeeded", "podIP": "10.0.0.9"}});
    assert!(!pod(done).unwrap().0.owns_ip);
    let host = json!({"metadata": {"name": "p", "namespace": "n"}, "spec": {"containers": [], "hostNetwork": true},
        "status": {"phase": "Running", "podIP": "192.168.1.10"}});
    assert!(!pod(host).unwrap().0.owns_ip);
}

#[test]
fn bad_pods() {
    assert_eq!(pod(json!({"metadata": {"name": "p"}})).unwrap_err().reason, "missing_name");
    assert_eq!(pod(json!({"metadata": {"namespace": "n"}})).unwrap_err().reason, "missing_name");
    let (p, problems) = pod(json!({"metadata": {"name": "p", "namespace": "n",
            "annotations": {"config.weft.dev/opaque-ports": "many",
                "config.weft.dev/skip-inbound-ports": "9000-9010,x"}},
        "status": {"podIP": "10.0.0.300", "podIPs": [{"ip": "10.0.0.3"}]}}))
    .expect("still usable");
    assert_eq!(p.ips, ["10.0.0.3".parse::<IpAddr>().unwrap()]);
    assert!(p.skip_inbound_ports.contains(9005) && !p.skip_inbound_ports.contains(8080));
    let reasons: Vec<_> = problems.iter().map(|p| p.reason).collect();
    assert_eq!(reasons, ["invalid_ip", "invalid_annotation", "invalid_annotation"]);
}

#[test]
fn services() {
    let (s, problems) = service(json!({
        "metadata": {"name": "web", "namespace": "prod", "annotations": {
            "retry.weft.dev/http": "5xx", "timeout.weft.dev/request": "2s",
            "config.weft.dev/opaque-ports": "6379"}},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00:10::10"],
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
                {"name": "admin", "port": 9000, "protocol": "TCP", "targetPort": "admin-http"},
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                {"name": "plain", "port": 81}]}
    }))
    .expect("converts");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(s.cluster_ips.len(), 2);
    assert_eq!(s.ports.len(), 3, "the UDP port is dropped");
    assert_eq!(s.port(80).map(|p| &p.target_port), Some(&TargetPort::Number(8080)));
    assert_eq!(s.port(9000).map(|p| &p.target_port), Some(&TargetPort::Name("admin-http".into())));
    assert_eq!(s.port(81).map(|p| &p.target_port), Some(&TargetPort::Number(81)));
    assert!(s.policy.retry.is_some());
    assert!(s.opaque_ports.as_ref().is_some_and(|p| p.contains(6379)));

    let (headless, _) = service(json!({"metadata": {"name": "db", "namespace": "prod"},
        "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 5432}]}}))
    .expect("converts");
    assert!(headless.cluster_ips.is_empty());

    let (s, problems) = service(json!({"metadata": {"name": "x", "namespace": "n",
            "annotations": {"retry.weft.dev/http": "sometimes"}},
        "spec": {"clusterIP": "10.96.0.999", "ports": [{"port": 0}, {"port": 70000}, {"port": 80, "targetPort": -1}, {"port": 81}]}}))
    .expect("converts");
    let reasons: Vec<_> = problems.iter().map(|p| p.reason).collect();
    assert_eq!(
        reasons,
        ["invalid_ip", "invalid_port", "invalid_port", "invalid_port", "invalid_annotation"]
    );
    assert_eq!(s.ports.len(), 1);
    assert!(s.policy.retry.is_none());
}

#[test]
fn slices() {
    let (s, problems) = slice(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc12", "namespace": "prod", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": ["10.244.1.5"], "conditions": {"ready": true, "serving": true, "terminating": false},
             "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "prod", "uid": "u1"}},
            {"addresses": ["10.244.2.6"], "conditions": {"ready": false},
             "targetRef": {"kind": "Pod", "name": "web-2", "namespace": "prod", "uid": "u2"}},
            {"addresses": ["10.244.3.7", "bogus"], "conditions": {}},
        ],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]
    }))
    .expect("converts");
    assert_eq!(s.service, Some(ObjKey::new("prod", "web")));
    assert_eq!(s.ports, BTreeMap::from([("http".to_string(), 8080)]));
    assert_eq!(s.endpoints.len(), 3);
    assert!(s.endpoints[0].ready && !s.endpoints[1].ready && s.endpoints[2].ready);
    assert_eq!(s.endpoints[0].pod, Some(ObjKey::new("prod", "web-1")));
    assert_eq!(s.endpoints[2].pod, None);
    assert_eq!(s.endpoints[2].addresses.len(), 1);
    assert_eq!(problems.iter().map(|p| p.reason).collect::<Vec<_>>(), ["invalid_ip"]);

    let fqdn = slice(
        json!({"metadata": {"name": "x", "namespace": "n"}, "addressType": "FQDN", "endpoints": []}),
    );
    assert_eq!(fqdn.unwrap_err().reason, "unsupported_address_type");
    let (orphan, _) =
        slice(json!({"metadata": {"name": "x", "namespace": "n"}, "addressType": "IPv6",
        "endpoints": [{"addresses": ["fd00::1"]}]}))
        .expect("converts");
    assert_eq!(orphan.service, None);
    assert!(orphan.ports.is_empty());
}

#[test]
fn namespaces() {
    let ns: core::Namespace = serde_json::from_value(json!({"metadata": {"name": "prod",
        "annotations": {"config.weft.dev/opaque-ports": "3306,x"}}}))
    .unwrap();
    let (n, problems) = Namespace::from_k8s(&ns).expect("converts");
    assert!(n.opaque_ports.is_some_and(|p| p.contains(3306)));
    assert_eq!(problems.len(), 1);
    let unnamed: core::Namespace = serde_json::from_value(json!({"metadata": {}})).unwrap();
    assert!(Namespace::from_k8s(&unnamed).is_err());
}
