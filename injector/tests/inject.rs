//! The patch builder through the admission layer, on pods built from committed kubectl
//! fixtures: every patch is applied to the original, the result read strictly as a
//! k8s-openapi Pod, compared with what the injector documents, and injected again to an
//! empty patch.
#![allow(clippy::unwrap_used)]

#[path = "support/review.rs"]
mod review;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use review::{apply_strict, patch_of, pod_from, review as wrap, set_annotation};
use serde_json::{Value, json};
use weft_injector::{InjectorConfig, admission, manifest};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn ns(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Runs `pod` through the webhook's pure path.
fn answer(pod: &Value, ns_annotations: &BTreeMap<String, String>) -> admission::Answer {
    answer_with(pod, ns_annotations, &InjectorConfig::default())
}

fn answer_with(
    pod: &Value,
    ns_annotations: &BTreeMap<String, String>,
    c: &InjectorConfig,
) -> admission::Answer {
    let body = serde_json::to_vec(&wrap("Pod", "pods", pod)).unwrap();
    let req = admission::parse(&body).expect("a pod request");
    let a = admission::decide(&req, Some(ns_annotations), None, c);
    assert_eq!(a.review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(a.review["kind"], "AdmissionReview");
    assert_eq!(a.review["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    a
}

/// Injects, checks the result strictly, checks that injecting again is a no-op.
fn inject(pod: &Value, ns_annotations: &BTreeMap<String, String>) -> (Value, Pod) {
    inject_with(pod, ns_annotations, &InjectorConfig::default())
}

fn inject_with(pod: &Value, nsa: &BTreeMap<String, String>, c: &InjectorConfig) -> (Value, Pod) {
    let a = answer_with(pod, nsa, c);
    assert_eq!(a.outcome, "injected", "{}", a.message);
    assert_eq!(a.review["response"]["allowed"], true);
    let patch = patch_of(&a.review).expect("a patch");
    let (patched, typed) = apply_strict(pod, &patch);
    let again = answer_with(&patched, nsa, c);
    assert_eq!((again.outcome, again.reason), ("skipped", "already-injected"));
    assert!(patch_of(&again.review).is_none(), "injecting again must yield an empty patch");
    (patched, typed)
}

fn skipped(pod: &Value, nsa: &BTreeMap<String, String>) -> &'static str {
    let a = answer(pod, nsa);
    assert_eq!(a.outcome, "skipped", "{}", a.message);
    assert_eq!(
        a.review["response"],
        json!({"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true})
    );
    a.reason
}

fn enabled_pod(fixture: &str) -> Value {
    let mut pod = pod_from(fixture, "prod");
    set_annotation(&mut pod, "weft.dev/inject", "enabled");
    pod
}

fn container<'a>(cs: &'a Option<Vec<Container>>, name: &str) -> &'a Container {
    cs.iter().flatten().find(|c| c.name == name).unwrap_or_else(|| panic!("no container {name}"))
}

fn env_of(c: &Container) -> BTreeMap<String, String> {
    c.env
        .iter()
        .flatten()
        .map(|e| {
            let v = e.value.clone().unwrap_or_else(|| {
                format!(
                    "fieldRef:{}",
                    e.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path
                )
            });
            (e.name.clone(), v)
        })
        .collect()
}

/// The documented defaults: the init container, the native-sidecar proxy, the volumes and
/// the annotations, exactly.
#[test]
fn default_injection_is_exactly_as_documented() {
    let pod = enabled_pod("deployment-web.json");
    let (patched, typed) = inject(&pod, &ns(&[]));
    let image = format!("ghcr.io/weft-mesh/weft-proxy:{VERSION}");
    let spec = &patched["spec"];
    assert_eq!(
        spec["initContainers"][0],
        json!({
            "name": "weft-proxy-init",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "args": ["init", "--inbound-port", "4143", "--outbound-port", "4140", "--proxy-uid", "2102",
                     "--iptables-mode", "auto", "--ipv6", "true"],
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                "privileged": false,
                "readOnlyRootFilesystem": true,
                "runAsNonRoot": false,
                "runAsUser": 0,
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": [{"mountPath": "/run", "name": "weft-proxy-init-xtables"}]
        })
    );
    let probe = |path: &str, extra: Value| {
        let mut p = json!({"httpGet": {"path": path, "port": 4191}, "timeoutSeconds": 1});
        for (k, v) in extra.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let env = |name: &str, value: &str| json!({"name": name, "value": value});
    assert_eq!(
        spec["initContainers"][1],
        json!({
            "name": "weft-proxy",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "restartPolicy": "Always",
            "env": [
                env("WEFT_PROXY_INBOUND_LISTEN_ADDR", "0.0.0.0:4143,[::]:4143"),
                env("WEFT_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:4140,[::1]:4140"),
                env("WEFT_PROXY_ADMIN_LISTEN_ADDR", "0.0.0.0:4191,[::]:4191"),
                env("WEFT_PROXY_LOG", "warn,weft_proxy=info"),
                env("WEFT_PROXY_LOG_FORMAT", "plain"),
                env("WEFT_PROXY_OPAQUE_PORTS", "25,587,3306,4444,5432,6379,9300,11211"),
                env("WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", "30s"),
                env("WEFT_PROXY_INBOUND_DEFAULT_POLICY", "all-unauthenticated"),
                env("WEFT_PROXY_CLUSTER_NETWORKS", "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8"),
                env("WEFT_PROXY_DESTINATION_NETWORKS", "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8"),
                {"name": "WEFT_POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "WEFT_POD_SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                {"name": "WEFT_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                env("WEFT_PROXY_IDENTITY_ADDR", "weft-identity.weft.svc.cluster.local:8080"),
                env("WEFT_PROXY_IDENTITY_NAME", "$(WEFT_POD_SA).$(WEFT_POD_NS).serviceaccount.identity.weft.cluster.local"),
                env("WEFT_PROXY_IDENTITY_SVC_NAME", "identity.weft.serviceaccount.identity.weft.cluster.local"),
                env("WEFT_PROXY_IDENTITY_TOKEN_FILE", "/var/run/secrets/tokens/weft-identity-token"),
                env("WEFT_PROXY_IDENTITY_TRUST_ANCHORS_FILE", "/var/run/weft/identity/trust-roots/ca-bundle.crt"),
                env("WEFT_PROXY_DESTINATION_ADDR", "weft-destination.weft.svc.cluster.local:8086"),
                env("WEFT_PROXY_DESTINATION_SVC_NAME", "weft-destination.weft.serviceaccount.identity.weft.cluster.local"),
                env("WEFT_PROXY_POLICY_ADDR", "weft-destination.weft.svc.cluster.local:8086"),
                env("WEFT_PROXY_POLICY_SVC_NAME", "weft-destination.weft.serviceaccount.identity.weft.cluster.local"),
                env("WEFT_PROXY_POLICY_WORKLOAD", "$(WEFT_POD_NS):$(WEFT_POD_NAME)"),
                env("WEFT_PROXY_INBOUND_PORTS", "8080"),
            ],
            "ports": [
                {"name": "weft-proxy", "containerPort": 4143, "protocol": "TCP"},
                {"name": "weft-admin", "containerPort": 4191, "protocol": "TCP"}
            ],
            "livenessProbe": probe("/live", json!({"initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 3})),
            "readinessProbe": probe("/ready", json!({"initialDelaySeconds": 2, "periodSeconds": 10, "failureThreshold": 3})),
            "startupProbe": probe("/ready", json!({"periodSeconds": 1, "failureThreshold": 120})),
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]},
                "readOnlyRootFilesystem": true,
                "runAsNonRoot": true,
                "runAsUser": 2102,
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": [
                {"mountPath": "/var/run/secrets/tokens", "name": "weft-identity-token", "readOnly": true},
                {"mountPath": "/var/run/weft/identity/trust-roots", "name": "weft-identity-trust-roots", "readOnly": true}
            ]
        })
    );
    assert_eq!(spec["initContainers"].as_array().unwrap().len(), 2);
    assert_eq!(spec["containers"], pod["spec"]["containers"], "the app is untouched");
    assert_eq!(
        spec["volumes"],
        json!([
            {"name": "weft-identity-token", "projected": {"sources": [{"serviceAccountToken":
                {"audience": "identity.weft.dev", "expirationSeconds": 86400, "path": "weft-identity-token"}}]}},
            {"name": "weft-identity-trust-roots", "configMap": {"name": "weft-identity-trust-roots"}},
            {"name": "weft-proxy-init-xtables", "emptyDir": {}}
        ])
    );
    let annotations = typed.metadata.annotations.unwrap();
    assert_eq!(annotations["weft.dev/proxy-version"], VERSION);
    assert_eq!(annotations["weft.dev/injected-by"], format!("weft/{VERSION}"));
    assert_eq!(annotations["kubectl.kubernetes.io/default-container"], "nginx");
    assert_eq!(annotations["weft.dev/inject"], "enabled");
    assert_eq!(typed.metadata.labels.unwrap()["weft.dev/control-plane-ns"], "weft");
}

#[test]
fn pod_annotation_namespace_annotation_and_conflicts() {
    let enabled = ns(&[("weft.dev/inject", "enabled")]);
    let disabled = ns(&[("weft.dev/inject", "disabled")]);

    let a = answer(&enabled_pod("deployment-web.json"), &ns(&[]));
    assert_eq!(a.reason, "enabled-on-pod");
    let plain = pod_from("deployment-web.json", "prod");
    let a = answer(&plain, &enabled);
    assert_eq!(a.reason, "enabled-on-namespace");
    inject(&plain, &enabled);
    assert_eq!(skipped(&plain, &ns(&[])), "not-enabled");
    assert_eq!(skipped(&plain, &disabled), "disabled-on-namespace");

    // Both, conflicting: the pod's value wins either way.
    let mut off = plain.clone();
    set_annotation(&mut off, "weft.dev/inject", "disabled");
    assert_eq!(skipped(&off, &enabled), "disabled-on-pod");
    let on = enabled_pod("deployment-web.json");
    assert_eq!(answer(&on, &disabled).reason, "enabled-on-pod");
    inject(&on, &disabled);
}

#[test]
fn skip_rules() {
    let enabled = ns(&[("weft.dev/inject", "enabled")]);
    let mut host = pod_from("deployment-hostnet.json", "prod");
    host["spec"]["hostNetwork"] = json!(true);
    assert_eq!(skipped(&host, &enabled), "host-network");

    let cp = pod_from("deployment-web.json", "weft");
    assert_eq!(skipped(&cp, &enabled), "control-plane");
    let mut cp = pod_from("deployment-web.json", "prod");
    cp["metadata"]["labels"]["weft.dev/control-plane-component"] = json!("destination");
    assert_eq!(skipped(&cp, &enabled), "control-plane");

    let mut linkerd = pod_from("deployment-web.json", "prod");
    linkerd["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "linkerd-proxy", "image": "x"}));
    assert_eq!(skipped(&linkerd, &enabled), "other-mesh");
    let mut istio = pod_from("deployment-web.json", "prod");
    set_annotation(&mut istio, "sidecar.istio.io/status", "{}");
    assert_eq!(skipped(&istio, &enabled), "other-mesh");

    // Injected by `weft inject --manual` before the pod reached the webhook.
    let (patched, _) = inject(&pod_from("deployment-web.json", "prod"), &enabled);
    let mut stripped = patched.clone();
    stripped["metadata"]["annotations"].as_object_mut().unwrap().remove("weft.dev/proxy-version");
    assert_eq!(skipped(&stripped, &enabled), "already-injected");
    // Already injected, then disabled: still a no-op, never a removal.
    assert_eq!(skipped(&patched, &ns(&[("weft.dev/inject", "disabled")])), "already-injected");
}

#[test]
fn native_sidecar_on_and_off_for_jobs_and_cronjobs() {
    for fixture in ["job-migrate.json", "cronjob-report.json"] {
        let pod = enabled_pod(fixture);
        let (_, typed) = inject(&pod, &ns(&[]));
        let spec = typed.spec.unwrap();
        let inits: Vec<_> =
            spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(inits, ["weft-proxy-init", "weft-proxy"], "{fixture}");
        let proxy = container(&spec.init_containers, "weft-proxy");
        // A native sidecar does not keep a Job's pod from completing.
        assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
        assert!(proxy.startup_probe.is_some());
        assert_eq!(spec.containers.len(), 1);

        let mut pod = pod.clone();
        set_annotation(&mut pod, "config.weft.dev/native-sidecar", "false");
        let (_, typed) = inject(&pod, &ns(&[]));
        let spec = typed.spec.unwrap();
        let inits: Vec<_> =
            spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(inits, ["weft-proxy-init"]);
        assert_eq!(spec.containers[0].name, "weft-proxy", "the proxy comes first");
        assert_eq!(spec.containers[0].restart_policy, None);
        assert_eq!(spec.containers[0].startup_probe, None);
        assert_eq!(spec.containers.len(), 2);
    }
    // The namespace's value is a default the pod can override.
    let pod = enabled_pod("deployment-web.json");
    let (_, typed) = inject(&pod, &ns(&[("config.weft.dev/native-sidecar", "false")]));
    assert_eq!(typed.spec.unwrap().containers[0].name, "weft-proxy");
}

#[test]
fn every_config_annotation_takes_effect() {
    let mut pod = enabled_pod("deployment-web.json");
    pod["spec"]["terminationGracePeriodSeconds"] = json!(60);
    for (k, v) in [
        ("proxy-image", "registry.local/weft/proxy:9.9.9"),
        ("proxy-log-level", "debug,weft_proxy=trace"),
        ("skip-inbound-ports", "22, 8000-8100"),
        ("skip-outbound-ports", "5432"),
        ("skip-subnets", "10.96.0.0/12,fd00::/8"),
        ("opaque-ports", "3306,6379"),
        ("proxy-cpu-request", "100m"),
        ("proxy-cpu-limit", "1500m"),
        ("proxy-memory-request", "20Mi"),
        ("proxy-memory-limit", "250Mi"),
        ("proxy-uid", "3100"),
        ("native-sidecar", "true"),
        ("shutdown-grace-period", "45s"),
        ("default-inbound-policy", "cluster-authenticated"),
    ] {
        set_annotation(&mut pod, &format!("config.weft.dev/{k}"), v);
    }
    let a = answer(&pod, &ns(&[]));
    assert!(a.review["response"]["warnings"].is_null(), "{}", a.review);
    let (_, typed) = inject(&pod, &ns(&[]));
    let spec = typed.spec.unwrap();
    let init = container(&spec.init_containers, "weft-proxy-init");
    let proxy = container(&spec.init_containers, "weft-proxy");
    assert_eq!(proxy.image.as_deref(), Some("registry.local/weft/proxy:9.9.9"));
    assert_eq!(init.image, proxy.image);
    assert_eq!(typed.metadata.annotations.unwrap()["weft.dev/proxy-version"], "9.9.9");
    assert_eq!(
        init.args.as_deref().unwrap()[1..],
        [
            "--inbound-port",
            "4143",
            "--outbound-port",
            "4140",
            "--proxy-uid",
            "3100",
            "--iptables-mode",
            "auto",
            "--ipv6",
            "true",
            "--skip-inbound-ports",
            "22,8000-8100",
            "--skip-outbound-ports",
            "5432",
            "--skip-subnets",
            "10.96.0.0/12,fd00::/8"
        ]
    );
    let env = env_of(proxy);
    assert_eq!(env["WEFT_PROXY_LOG"], "debug,weft_proxy=trace");
    assert_eq!(env["WEFT_PROXY_OPAQUE_PORTS"], "3306,6379");
    assert_eq!(env["WEFT_PROXY_SHUTDOWN_GRACE_PERIOD"], "45s");
    assert_eq!(env["WEFT_PROXY_INBOUND_DEFAULT_POLICY"], "cluster-authenticated");
    assert_eq!(env["WEFT_PROXY_CORES"], "2", "ceil(1.5 cores)");
    assert_eq!(proxy.security_context.as_ref().unwrap().run_as_user, Some(3100));
    let res = serde_json::to_value(proxy.resources.as_ref().unwrap()).unwrap();
    assert_eq!(
        res,
        json!({"requests": {"cpu": "100m", "memory": "20Mi"}, "limits": {"cpu": "1500m", "memory": "250Mi"}})
    );
    assert_eq!(init.resources, proxy.resources);
}

#[test]
fn the_proxys_threads_follow_the_cpu_limit_within_what_it_takes() {
    for (limit, cores) in [("250m", "1"), ("3", "3"), ("5000", "1024")] {
        let mut pod = enabled_pod("deployment-web.json");
        set_annotation(&mut pod, "config.weft.dev/proxy-cpu-limit", limit);
        let (_, typed) = inject(&pod, &ns(&[]));
        let spec = typed.spec.unwrap();
        let proxy = container(&spec.init_containers, "weft-proxy");
        assert_eq!(env_of(proxy)["WEFT_PROXY_CORES"], cores, "limit {limit}");
    }
}

#[test]
fn namespace_config_annotations_are_defaults() {
    let nsa = ns(&[
        ("weft.dev/inject", "enabled"),
        ("config.weft.dev/proxy-log-level", "info"),
        ("config.weft.dev/proxy-uid", "4000"),
    ]);
    let mut pod = pod_from("deployment-web.json", "prod");
    set_annotation(&mut pod, "config.weft.dev/proxy-uid", "5000");
    let (_, typed) = inject(&pod, &nsa);
    let spec = typed.spec.unwrap();
    let proxy = container(&spec.init_containers, "weft-proxy");
    assert_eq!(env_of(proxy)["WEFT_PROXY_LOG"], "info");
    assert_eq!(proxy.security_context.as_ref().unwrap().run_as_user, Some(5000));
}

/// The ports that skip the proxy are written on the pod, wherever they were set, for the
/// destination service, which offers no mTLS to them; a pod without any gets none.
#[test]
fn skipped_inbound_ports_are_written_on_the_pod() {
    let key = "config.weft.dev/skip-inbound-ports";
    let annotation = |v: &Value| v["metadata"]["annotations"][key].as_str().map(str::to_string);
    let pod = pod_from("deployment-web.json", "prod");
    let nsa = ns(&[("weft.dev/inject", "enabled"), (key, "9000-9010, 22")]);
    let (patched, _) = inject(&pod, &nsa);
    assert_eq!(annotation(&patched).as_deref(), Some("9000-9010,22"));
    let config = InjectorConfig { skip_inbound_ports: "4000".into(), ..Default::default() };
    let (patched, _) = inject_with(&pod, &ns(&[("weft.dev/inject", "enabled")]), &config);
    assert_eq!(annotation(&patched).as_deref(), Some("4000"));
    let (patched, _) = inject(&pod, &ns(&[("weft.dev/inject", "enabled")]));
    assert_eq!(annotation(&patched), None);
}

#[test]
fn invalid_values_are_reported_not_guessed() {
    let cases = [
        ("proxy-image", "not an image"),
        ("proxy-log-level", "loud"),
        ("skip-inbound-ports", "22,http"),
        ("skip-outbound-ports", "70000"),
        ("skip-subnets", "10.0.0.1/8"),
        ("opaque-ports", "10-5"),
        ("proxy-cpu-request", "lots"),
        ("proxy-cpu-limit", "-1"),
        ("proxy-memory-request", "64MB"),
        ("proxy-memory-limit", "1Gb"),
        ("proxy-uid", "0"),
        ("native-sidecar", "yes"),
        ("shutdown-grace-period", "1d"),
        ("default-inbound-policy", "allow-all"),
    ];
    for (k, v) in cases {
        let key = format!("config.weft.dev/{k}");
        for on_pod in [true, false] {
            let mut pod = enabled_pod("deployment-web.json");
            let mut nsa = ns(&[]);
            if on_pod {
                set_annotation(&mut pod, &key, v);
            } else {
                nsa.insert(key.clone(), v.to_string());
            }
            let a = answer(&pod, &nsa);
            assert_eq!((a.outcome, a.reason), ("invalid", "invalid-annotation"), "{key}={v}");
            let rsp = &a.review["response"];
            assert_eq!(rsp["allowed"], false);
            assert_eq!(rsp["status"]["code"], 400);
            let msg = rsp["status"]["message"].as_str().unwrap();
            let place = if on_pod { "on the pod" } else { "on the namespace" };
            assert!(msg.contains(&key) && msg.contains(place), "{msg}");
            assert!(rsp["patch"].is_null());
        }
    }
    // All at once: every one is reported.
    let mut pod = enabled_pod("deployment-web.json");
    for (k, v) in cases {
        set_annotation(&mut pod, &format!("config.weft.dev/{k}"), v);
    }
    let a = answer(&pod, &ns(&[]));
    let msg = a.review["response"]["status"]["message"].as_str().unwrap().to_string();
    for (k, _) in cases {
        assert!(msg.contains(&format!("config.weft.dev/{k}=")), "{k} missing from {msg}");
    }
    // A request above its limit, and a bad inject value.
    let mut pod = enabled_pod("deployment-web.json");
    set_annotation(&mut pod, "config.weft.dev/proxy-memory-request", "1Gi");
    set_annotation(&mut pod, "config.weft.dev/proxy-memory-limit", "128Mi");
    assert_eq!(answer(&pod, &ns(&[])).reason, "invalid-annotation");
    let mut pod = pod_from("deployment-web.json", "prod");
    set_annotation(&mut pod, "weft.dev/inject", "true");
    assert_eq!(answer(&pod, &ns(&[])).reason, "invalid-annotation");
    // Unknown config keys and a grace period the pod would cut short are warnings only.
    let mut pod = enabled_pod("deployment-web.json");
    set_annotation(&mut pod, "config.weft.dev/proxy-cpu-limt", "1");
    set_annotation(&mut pod, "config.weft.dev/shutdown-grace-period", "2m");
    let a = answer(&pod, &ns(&[]));
    assert_eq!(a.outcome, "injected");
    assert_eq!(a.review["response"]["warnings"].as_array().unwrap().len(), 2, "{}", a.review);
}

#[test]
fn existing_init_containers_and_several_ports() {
    let mut pod = enabled_pod("deployment-multi.json");
    pod["spec"]["containers"][0]["ports"] = json!([
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 9090, "protocol": "TCP"},
        {"name": "dns", "containerPort": 5353, "protocol": "UDP"}
    ]);
    pod["spec"]["containers"][1]["ports"] = json!([{"name": "metrics", "containerPort": 9100}]);
    pod["spec"]["initContainers"] = json!([
        {"name": "fetch-config", "image": "busybox:1.36", "command": ["wget", "http://config/"]},
        {"name": "migrate", "image": "busybox:1.36", "command": ["true"]}
    ]);
    pod["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let (patched, typed) = inject(&pod, &ns(&[]));
    let spec = typed.spec.unwrap();
    let inits: Vec<_> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
    // The proxy is up before the pod's own init containers, so they have a network.
    assert_eq!(inits, ["weft-proxy-init", "weft-proxy", "fetch-config", "migrate"]);
    assert_eq!(patched["spec"]["containers"], pod["spec"]["containers"]);
    let vols: Vec<_> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(
        vols,
        ["data", "weft-identity-token", "weft-identity-trust-roots", "weft-proxy-init-xtables"]
    );
    assert_eq!(
        typed.metadata.annotations.unwrap()["kubectl.kubernetes.io/default-container"],
        "app"
    );

    let mut off = pod.clone();
    set_annotation(&mut off, "config.weft.dev/native-sidecar", "false");
    let (_, typed) = inject(&off, &ns(&[]));
    let spec = typed.spec.unwrap();
    let inits: Vec<_> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
    // Without a native sidecar, redirection waits until the pod's own init containers ran.
    assert_eq!(inits, ["fetch-config", "migrate", "weft-proxy-init"]);
    let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["weft-proxy", "app", "metrics"]);

    // An app on a port the proxy needs cannot be meshed: refused, with the reason.
    let mut clash = pod.clone();
    clash["spec"]["containers"][1]["ports"] = json!([{"containerPort": 4191}]);
    let a = answer(&clash, &ns(&[]));
    assert_eq!((a.outcome, a.reason), ("invalid", "conflict"));
    assert!(a.message.contains("4191"), "{}", a.message);
}

#[test]
fn a_pod_that_is_not_a_pod_is_refused_with_a_reason() {
    let mut pod = enabled_pod("deployment-web.json");
    pod["spec"]["containers"] = json!("nginx");
    let a = answer(&pod, &ns(&[]));
    assert_eq!((a.outcome, a.reason), ("invalid", "invalid-pod"));
    assert_eq!(a.review["response"]["allowed"], false);
}

#[test]
fn config_changes_the_rendering() {
    let c = InjectorConfig {
        control_plane_namespace: "mesh".into(),
        trust_domain: "example.org".into(),
        cluster_domain: "cluster.example".into(),
        proxy_image: "registry.local/weft-proxy:dev".into(),
        native_sidecar: false,
        iptables_mode: "nft".into(),
        ipv6: false,
        proxy_log_format: "json".into(),
        cluster_networks: "10.244.0.0/16,10.96.0.0/12,fd12:3456::/32".into(),
        ..InjectorConfig::default()
    };
    let (_, typed) = inject_with(&enabled_pod("deployment-web.json"), &ns(&[]), &c);
    let spec = typed.spec.unwrap();
    let proxy = &spec.containers[0];
    let env = env_of(proxy);
    assert_eq!(env["WEFT_PROXY_IDENTITY_ADDR"], "weft-identity.mesh.svc.cluster.example:8080");
    assert_eq!(
        env["WEFT_PROXY_IDENTITY_NAME"],
        "$(WEFT_POD_SA).$(WEFT_POD_NS).serviceaccount.identity.mesh.example.org"
    );
    assert_eq!(
        env["WEFT_PROXY_DESTINATION_SVC_NAME"],
        "weft-destination.mesh.serviceaccount.identity.mesh.example.org"
    );
    assert_eq!(env["WEFT_PROXY_LOG_FORMAT"], "json");
    assert_eq!(env["WEFT_PROXY_CLUSTER_NETWORKS"], "10.244.0.0/16,10.96.0.0/12,fd12:3456::/32");
    assert_eq!(env["WEFT_PROXY_DESTINATION_NETWORKS"], "10.244.0.0/16,10.96.0.0/12,fd12:3456::/32");
    let init = container(&spec.init_containers, "weft-proxy-init");
    let args = init.args.as_deref().unwrap().join(" ");
    assert!(args.contains("--iptables-mode nft --ipv6 false"), "{args}");
}

/// With the trust anchors in its config, the injector makes the pod carry them: an annotation
/// projected by the downward API into the file the proxy reads, so nothing has to exist in
/// the pod's namespace (a ConfigMap volume cannot name another namespace's ConfigMap).
#[test]
fn trust_anchors_travel_with_the_pod() {
    let pem = "-----BEGIN CERTIFICATE-----\nMIIBAjCBqaADAgECAgEBMAoGCCqGSM49BAMCMAAwHhcNMjUwMTAxMDAwMDAwWhcN\n-----END CERTIFICATE-----\n";
    let c = InjectorConfig { trust_anchors_pem: Some(pem.into()), ..InjectorConfig::default() };
    let (patched, typed) = inject_with(&enabled_pod("deployment-web.json"), &ns(&[]), &c);
    assert_eq!(typed.metadata.annotations.unwrap()["weft.dev/identity-trust-anchors"], pem);
    assert_eq!(
        patched["spec"]["volumes"][1],
        json!({"name": "weft-identity-trust-roots", "downwardAPI": {"items": [{
            "path": "ca-bundle.crt",
            "fieldRef": {"fieldPath": "metadata.annotations['weft.dev/identity-trust-anchors']"}
        }]}})
    );
    let proxy = container(&typed.spec.as_ref().unwrap().init_containers, "weft-proxy");
    assert_eq!(
        env_of(proxy)["WEFT_PROXY_IDENTITY_TRUST_ANCHORS_FILE"],
        "/var/run/weft/identity/trust-roots/ca-bundle.crt"
    );
    let mount =
        proxy.volume_mounts.iter().flatten().find(|m| m.name == "weft-identity-trust-roots");
    assert_eq!(mount.unwrap().mount_path, "/var/run/weft/identity/trust-roots");
}

/// `deployment-multi.json` with the probes of a typical app: numeric and named ports, a
/// query string, an HTTPS probe, non-HTTP probes, and a native sidecar with its own probe.
fn probed_pod() -> Value {
    let mut pod = enabled_pod("deployment-multi.json");
    let spec = &mut pod["spec"];
    spec["containers"][0]["ports"] = json!([
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "admin", "containerPort": 9901, "protocol": "TCP"}
    ]);
    spec["containers"][0]["livenessProbe"] =
        json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10});
    spec["containers"][0]["readinessProbe"] =
        json!({"httpGet": {"path": "/ready?verbose=1", "port": "http"}});
    spec["containers"][0]["startupProbe"] = json!({"httpGet": {"port": "admin"}});
    spec["containers"][1]["ports"] = json!([{"name": "metrics", "containerPort": 9100}]);
    spec["containers"][1]["livenessProbe"] =
        json!({"httpGet": {"path": "/secure", "port": 9443, "scheme": "HTTPS"}});
    spec["containers"][1]["readinessProbe"] = json!({"tcpSocket": {"port": "metrics"}});
    spec["containers"][1]["startupProbe"] = json!({"exec": {"command": ["true"]}});
    spec["initContainers"] = json!([
        {"name": "migrate", "image": "busybox:1.36", "command": ["true"]},
        {"name": "log-shipper", "image": "ghcr.io/example/shipper:1.0", "restartPolicy": "Always",
         "ports": [{"name": "shipper", "containerPort": 2020}],
         "readinessProbe": {"httpGet": {"path": "/api/v1/health", "port": "shipper"}}}
    ]);
    pod
}

const PROBE_ROUTES: &str = "2020:/api/v1/health,8080:/healthz,8080:/ready,9901:/";

/// The kubelet's HTTP probes of the app containers and native sidecars become the proxy's
/// probe routes, which it lets through whatever its inbound policy; the proxy's own probes
/// (on its admin port) are not among them, whichever way it is injected.
#[test]
fn the_pods_http_probes_become_the_proxys_probe_routes() {
    let mut pod = probed_pod();
    set_annotation(&mut pod, "config.weft.dev/default-inbound-policy", "deny");
    let (patched, typed) = inject(&pod, &ns(&[]));
    let spec = typed.spec.unwrap();
    let env = env_of(container(&spec.init_containers, "weft-proxy"));
    assert_eq!(env["WEFT_PROXY_INBOUND_PROBE_ROUTES"], PROBE_ROUTES);
    assert_eq!(env["WEFT_PROXY_INBOUND_DEFAULT_POLICY"], "deny");
    assert_eq!(
        patched["spec"]["containers"], pod["spec"]["containers"],
        "the probes are untouched"
    );

    set_annotation(&mut pod, "config.weft.dev/native-sidecar", "false");
    let (_, typed) = inject(&pod, &ns(&[]));
    let spec = typed.spec.unwrap();
    assert_eq!(spec.containers[0].name, "weft-proxy");
    assert_eq!(env_of(&spec.containers[0])["WEFT_PROXY_INBOUND_PROBE_ROUTES"], PROBE_ROUTES);
}

/// No HTTP probe the proxy could match: no probe routes at all, rather than an empty value.
#[test]
fn a_pod_without_http_probes_gets_no_probe_routes() {
    let mut only_others = probed_pod();
    let spec = &mut only_others["spec"];
    spec["initContainers"] = json!([]);
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        spec["containers"][0].as_object_mut().unwrap().remove(probe);
    }
    // An HTTPS probe, a TCP probe, an exec probe, and an HTTP probe on a port name the
    // container does not have.
    spec["containers"][0]["readinessProbe"] = json!({"httpGet": {"path": "/r", "port": "grpc"}});
    for pod in [enabled_pod("deployment-web.json"), enabled_pod("job-migrate.json"), only_others] {
        let (_, typed) = inject(&pod, &ns(&[]));
        let env = env_of(container(&typed.spec.unwrap().init_containers, "weft-proxy"));
        assert!(!env.contains_key("WEFT_PROXY_INBOUND_PROBE_ROUTES"), "{env:?}");
        assert!(env.contains_key("WEFT_PROXY_CLUSTER_NETWORKS"), "{env:?}");
    }
}

/// `weft inject --manual` renders the same proxy from a workload's YAML as the webhook does
/// from the pod the workload makes.
#[test]
fn manual_injection_renders_the_same_probe_routes() {
    let pod = probed_pod();
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "multi", "namespace": "prod"},
        "spec": {"selector": {"matchLabels": {"app": "multi"}},
                 "template": {"metadata": pod["metadata"].clone(), "spec": pod["spec"].clone()}}
    });
    let yaml = serde_yaml_ng::to_string(&deployment).unwrap();
    let out = manifest::inject(&yaml, manifest::Mode::Manual, &InjectorConfig::default());
    assert_eq!(out.errors(), 0, "{:#?}", out.reports);
    let injected: Value = serde_yaml_ng::from_str(&out.output).unwrap();
    let template: Pod = serde_json::from_value(json!({
        "metadata": injected["spec"]["template"]["metadata"].clone(),
        "spec": injected["spec"]["template"]["spec"].clone(),
    }))
    .unwrap();
    let manual = container(&template.spec.as_ref().unwrap().init_containers, "weft-proxy");
    let (_, typed) = inject(&pod, &ns(&[]));
    let webhook = container(&typed.spec.as_ref().unwrap().init_containers, "weft-proxy");
    assert_eq!(env_of(manual)["WEFT_PROXY_INBOUND_PROBE_ROUTES"], PROBE_ROUTES);
    assert_eq!(manual.env, webhook.env);
}

#[test]
fn a_policy_that_refuses_the_kubelet_warns_about_probes_the_proxy_cannot_let_through() {
    let mut pod = enabled_pod("deployment-web.json");
    pod["spec"]["containers"][0]["ports"] = json!([{"name": "https", "containerPort": 8443}]);
    pod["spec"]["containers"][0]["readinessProbe"] =
        json!({"httpGet": {"port": "https", "path": "/ready", "scheme": "HTTPS"}});
    pod["spec"]["containers"][0]["livenessProbe"] = json!({"grpc": {"port": 9090}});
    pod["spec"]["containers"][0]["startupProbe"] = json!({"tcpSocket": {"port": 8443}});
    let warnings = |pod: &Value| -> Vec<String> {
        let a = answer(pod, &ns(&[]));
        assert_eq!(a.outcome, "injected", "{}", a.review);
        let w = a.review["response"]["warnings"].as_array().cloned().unwrap_or_default();
        w.iter().map(|w| w.as_str().unwrap().to_string()).collect()
    };
    // The default policy lets the kubelet in: nothing to say.
    assert!(warnings(&pod).is_empty());
    for policy in ["deny", "all-authenticated", "cluster-authenticated"] {
        set_annotation(&mut pod, "config.weft.dev/default-inbound-policy", policy);
        let w = warnings(&pod);
        assert_eq!(w.len(), 1, "{w:?}");
        let name = pod["spec"]["containers"][0]["name"].as_str().unwrap();
        assert!(w[0].contains(&format!("policy {policy} refuses")), "{w:?}");
        assert!(w[0].contains(&format!("{name} readinessProbe (HTTPS)")), "{w:?}");
        // A gRPC probe's health check is let through on its port; a TCP probe passes (the
        // proxy accepts the connection).
        assert!(!w[0].contains("livenessProbe") && !w[0].contains("startupProbe"), "{w:?}");
    }
    let (_, typed) = inject(&pod, &ns(&[]));
    let proxy = container(&typed.spec.as_ref().unwrap().init_containers, "weft-proxy");
    assert_eq!(env_of(proxy)["WEFT_PROXY_INBOUND_GRPC_PROBE_PORTS"], "9090");
    assert!(!env_of(proxy).contains_key("WEFT_PROXY_INBOUND_PROBE_ROUTES"), "HTTPS only");
    // HTTP GET probes become probe routes: nothing to warn about.
    pod["spec"]["containers"][0]["readinessProbe"] =
        json!({"httpGet": {"port": 8443, "path": "/ready"}});
    pod["spec"]["containers"][0]["livenessProbe"] = json!({"exec": {"command": ["true"]}});
    assert!(warnings(&pod).is_empty());
}
