//! `weft check`, the real binary, against the fake API server holding what `helm install`
//! of charts/weft leaves in a cluster: the chart's objects as the renderer makes them (PKI
//! from `weft certs generate`, the webhook TLS the chart generates), with the status the
//! controllers would give them, and pods injected by `weft inject --manual` with the chart's
//! proxy settings. A healthy install passes; each breakage fails (or warns) with the object
//! it is about named; the JSON output says the same as the text.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use serde_json::{Value, json};

use crate::{
    chart::{
        chart,
        render::{Release, base64},
    },
    injector::review::pod_from,
    kubeapi::FakeApi,
    support::run,
};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
/// Not the default `weft`, so that `--namespace` (and its env var) is what finds it.
const NS: &str = "weft-cp";
/// The meshed pods: namespace and name.
const MESHED: [(&str, &str); 3] = [
    ("prod", "web-7d9f8c6b5-x4k2p"),
    ("prod", "web-7d9f8c6b5-m8q2z"),
    ("shop", "cart-5c8d7f9b4-t2n6w"),
];

/// Every check of a healthy install, by group, in the order `weft check` runs them.
const HEALTHY: [(&str, &[&str]); 5] = [
    ("kubernetes-api", &["can query the Kubernetes API", "control-plane namespace exists"]),
    (
        "control-plane",
        &[
            "weft-identity deployment is available",
            "weft-destination deployment is available",
            "weft-injector deployment is available",
            "Gateway API HTTPRoute CRD is installed",
            "Gateway API GRPCRoute CRD is installed",
        ],
    ),
    (
        "identity",
        &[
            "trust anchors are valid",
            "trust anchors are within their validity period",
            "trust anchors are valid for at least 60d",
            "issuer certificate is valid",
            "issuer certificate is valid for at least 60d",
        ],
    ),
    (
        "injector",
        &[
            "injector webhook is registered",
            "webhook points at the injector Service",
            "injector certificate is valid",
            "injector certificate is valid for at least 60d",
            "webhook caBundle verifies the injector certificate",
        ],
    ),
    ("data-plane", &["data-plane proxies are ready", "data-plane proxies are up to date"]),
];

/// The operator's PKI: `weft certs generate --write-anchor-key`.
struct Pki {
    ca: String,
    ca_key: String,
    issuer_crt: String,
    issuer_key: String,
}

/// What the chart installs and the meshed pods, made once for all the tests.
struct Install {
    pki: Pki,
    /// The rendered objects, each as the API server stores it.
    objects: Vec<Value>,
    pods: Vec<Value>,
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("weft-e2e-check-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// `weft certs generate` into `dir`, with `extra` flags.
fn certs_generate(dir: &Path, extra: &[&str]) -> (String, String) {
    let (ok, out, err) =
        run(Command::new(WEFT).args(["certs", "generate", "--out-dir"]).arg(dir).args(extra));
    assert!(ok, "weft certs generate {extra:?}: {out}{err}");
    (read(&dir.join("issuer.crt")), read(&dir.join("issuer.key")))
}

fn install() -> &'static Install {
    static INSTALL: OnceLock<Install> = OnceLock::new();
    INSTALL.get_or_init(|| {
        let dir = TempDir::new("install");
        let (issuer_crt, issuer_key) = certs_generate(&dir.0, &["--write-anchor-key"]);
        let pki = Pki {
            ca: read(&dir.0.join("ca.crt")),
            ca_key: read(&dir.0.join("ca.key")),
            issuer_crt,
            issuer_key,
        };
        let objects = render(&pki);
        let config = objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "weft-proxy-config")
            .expect("the chart's proxy settings");
        let mut pods: Vec<Value> =
            MESHED.iter().map(|(ns, name)| injected(&dir.0, config, ns, name)).collect();
        // A pod without the proxy, which the data-plane checks leave alone.
        let fixture =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/fixtures/k8s/pod-web-9hz7m.json");
        pods.push(serde_json::from_str(&read(&fixture)).expect("fixture pod"));
        Install { pki, objects, pods }
    })
}

/// The chart rendered with DESIGN.md's install values (the identity PKI only: the chart
/// generates the webhook's TLS), each object completed with what the controllers write.
fn render(pki: &Pki) -> Vec<Value> {
    let values = json!({"identity": {"trustAnchorsPEM": pki.ca,
        "issuer": {"crtPEM": pki.issuer_crt, "keyPEM": pki.issuer_key}}});
    let rendered = chart()
        .render(&Release { name: "weft", namespace: NS }, &values)
        .expect("the chart renders");
    let mut objects: Vec<Value> = rendered.documents().into_iter().map(|(_, d)| d).collect();
    for o in &mut objects {
        if o["kind"] == "Deployment" {
            let replicas = o["spec"]["replicas"].as_i64().expect("replicas");
            set_available(o, replicas);
        }
    }
    objects
}

/// A Deployment's status as the deployment controller writes it, `available` of its
/// replicas available.
fn set_available(d: &mut Value, available: i64) {
    let replicas = d["spec"]["replicas"].as_i64().expect("replicas");
    let t = "2025-05-12T09:14:03Z";
    let (status, reason, message) = if available >= replicas {
        ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
    } else {
        ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
    };
    d["metadata"]["generation"] = json!(1);
    d["status"] = json!({
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": available,
        "availableReplicas": available,
        "conditions": [
            {"type": "Available", "status": status, "reason": reason, "message": message,
             "lastUpdateTime": t, "lastTransitionTime": t},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": "ReplicaSet has successfully progressed.", "lastUpdateTime": t, "lastTransitionTime": t},
        ],
    });
    let s = d["status"].as_object_mut().expect("status");
    if available == 0 {
        // The controller leaves zero counts out, and counts the missing ones.
        s.remove("readyReplicas");
        s.remove("availableReplicas");
        s.insert("unavailableReplicas".into(), json!(replicas));
    }
}

/// A pod of the web Deployment fixture, injected by `weft inject --manual` with the chart's
/// proxy settings (the env the chart gives the injector), then running as the kubelet
/// reports it: the init container done, the proxy (a native sidecar) and the app ready.
fn injected(dir: &Path, proxy_config: &Value, ns: &str, name: &str) -> Value {
    let mut pod = pod_from("deployment-web.json", ns);
    pod["metadata"]["name"] = json!(name);
    let input = dir.join(format!("{name}.json"));
    std::fs::write(&input, serde_json::to_vec(&pod).expect("json")).expect("write pod");
    let anchors = dir.join("ca.crt");
    let mut cmd = Command::new(WEFT);
    cmd.args(["inject", "--manual"]).arg(&input);
    for (k, v) in proxy_config["data"].as_object().expect("data") {
        cmd.env(k, v.as_str().expect("string"));
    }
    cmd.env("WEFT_INJECTOR_TRUST_ANCHORS_FILE", &anchors);
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "weft inject --manual: {err}");
    let mut pod: Value = serde_yaml_ng::from_str(&out).expect("an injected pod");
    let t = "2025-05-12T09:14:03Z";
    let status = |c: &Value, sidecar: bool| {
        let image = c["image"].clone();
        match sidecar {
            true => {
                json!({"name": c["name"], "state": {"running": {"startedAt": t}}, "lastState": {},
                "ready": true, "restartCount": 0, "image": image, "imageID": "", "started": true})
            }
            false => {
                json!({"name": c["name"], "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                "startedAt": t, "finishedAt": t}}, "lastState": {}, "ready": true, "restartCount": 0,
                "image": image, "imageID": "", "started": false})
            }
        }
    };
    let spec = &pod["spec"];
    let init: Vec<Value> = spec["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .map(|c| status(c, c["restartPolicy"] == "Always"))
        .collect();
    let app: Vec<Value> = spec["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .map(|c| status(c, true))
        .collect();
    let conditions = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ]
    .map(
        |ty| json!({"type": ty, "status": "True", "lastProbeTime": null, "lastTransitionTime": t}),
    );
    pod["status"] = json!({
        "phase": "Running",
        "conditions": conditions,
        "hostIP": "172.18.0.2", "podIP": "10.244.1.17", "startTime": t, "qosClass": "Burstable",
        "initContainerStatuses": init,
        "containerStatuses": app,
    });
    pod
}

/// The API collection an object of `kind` lives in.
fn collection(kind: &str) -> &'static str {
    match kind {
        "Namespace" => "/api/v1/namespaces",
        "Pod" => "/api/v1/pods",
        "Service" => "/api/v1/services",
        "ServiceAccount" => "/api/v1/serviceaccounts",
        "ConfigMap" => "/api/v1/configmaps",
        "Secret" => "/api/v1/secrets",
        "Deployment" => "/apis/apps/v1/deployments",
        "PodDisruptionBudget" => "/apis/policy/v1/poddisruptionbudgets",
        "ClusterRole" => "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        "ClusterRoleBinding" => "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "Role" => "/apis/rbac.authorization.k8s.io/v1/roles",
        "RoleBinding" => "/apis/rbac.authorization.k8s.io/v1/rolebindings",
        "CustomResourceDefinition" => "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "MutatingWebhookConfiguration" => {
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"
        }
        other => panic!("no collection for {other}"),
    }
}

/// A fake API server holding the install (and the namespaces), after `change` had its say.
fn cluster(change: impl FnOnce(&mut Vec<Value>)) -> FakeApi {
    let i = install();
    let mut objects = i.objects.clone();
    objects.extend(i.pods.iter().cloned());
    for ns in [NS, "prod", "shop"] {
        objects.push(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}));
    }
    // The Gateway API's CRDs, installed by the cluster's owner (not the chart).
    objects.push(crate::destination::fixture("crd-httproutes-gateway.json"));
    objects.push(crate::destination::fixture("crd-grpcroutes-gateway.json"));
    change(&mut objects);
    let api = FakeApi::start();
    for o in objects {
        api.put(collection(o["kind"].as_str().expect("kind")), o);
    }
    api
}

fn find<'a>(objects: &'a mut [Value], kind: &str, name: &str) -> &'a mut Value {
    objects
        .iter_mut()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// What one run printed.
struct Checked {
    code: i32,
    out: String,
    err: String,
    took: Duration,
}

impl Checked {
    /// The check lines (✓, ‼, ✗), without headers and the summary.
    fn lines(&self) -> Vec<&str> {
        self.out.lines().filter(|l| l.starts_with(['✓', '‼', '✗'])).collect()
    }

    /// The one line of check `name`.
    fn line(&self, name: &str) -> &str {
        let found: Vec<&str> = self
            .lines()
            .into_iter()
            .filter(|l| {
                // After the mark and a space: the name, then the end, a message or a detail.
                let rest = &l[l.char_indices().nth(2).map_or(0, |(i, _)| i)..];
                rest.strip_prefix(name)
                    .is_some_and(|r| r.is_empty() || r.starts_with(": ") || r.starts_with(" ("))
            })
            .collect();
        assert_eq!(found.len(), 1, "one line for {name:?} in:\n{}", self.out);
        found[0]
    }

    fn json(&self) -> Vec<Value> {
        serde_json::from_str::<Value>(&self.out)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}{}", self.out, self.err))
            .as_array()
            .expect("an array")
            .clone()
    }
}

fn weft_check(kubeconfig: &Path, args: &[&str], env: &[(&str, &str)]) -> Checked {
    let mut cmd = Command::new(WEFT);
    cmd.arg("check").arg("--kubeconfig").arg(kubeconfig).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let out = cmd.output().expect("run weft check");
    Checked {
        code: out.status.code().expect("an exit code"),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
}

fn check(api: &FakeApi, args: &[&str]) -> Checked {
    let mut all = vec!["--namespace", NS];
    all.extend_from_slice(args);
    weft_check(&api.kubeconfig(), &all, &[])
}

/// Runs the check as text and as JSON, and holds them to each other: the same checks in
/// the same order, each text line its JSON object's status mark, name and message.
fn check_both(api: &FakeApi, args: &[&str]) -> (Checked, Vec<Value>) {
    let text = check(api, args);
    let json_run = check(api, &[args, &["--output", "json"]].concat());
    assert_eq!(json_run.code, text.code, "the same verdict:\n{}\n{}", text.out, json_run.out);
    let json = json_run.json();
    let from_json: Vec<String> = json
        .iter()
        .map(|o| {
            let (name, msg) =
                (o["name"].as_str().expect("name"), o["message"].as_str().expect("message"));
            match (o["status"].as_str().expect("status"), msg.is_empty()) {
                ("ok", true) => format!("✓ {name}"),
                ("ok", false) => format!("✓ {name} ({msg})"),
                ("warning", _) => format!("‼ {name}: {msg}"),
                ("error", _) => format!("✗ {name}: {msg}"),
                (other, _) => panic!("unknown status {other}"),
            }
        })
        .collect();
    assert_eq!(text.lines(), from_json, "text and JSON agree");
    (text, json)
}

/// The statuses by check name.
fn statuses(json: &[Value]) -> BTreeMap<String, String> {
    json.iter()
        .map(|o| {
            (
                o["name"].as_str().expect("name").to_owned(),
                o["status"].as_str().expect("status").to_owned(),
            )
        })
        .collect()
}

/// Asserts one ✗ for `name` whose message has every one of `has`, exit 1, and every other
/// check of the healthy list passing.
fn assert_fails(api: &FakeApi, name: &str, has: &[&str]) {
    let (c, json) = check_both(api, &[]);
    assert_eq!(c.code, 1, "a failed check exits 1:\n{}{}", c.out, c.err);
    let line = c.line(name);
    assert!(line.starts_with(&format!("✗ {name}: ")), "{line}");
    for h in has {
        assert!(line.contains(h), "{line:?} should say {h:?}");
    }
    assert!(line.contains(" — "), "what to do: {line}");
    for (other, status) in statuses(&json) {
        if other != name {
            assert_eq!(status, "ok", "{other} passes:\n{}", c.out);
        }
    }
}

#[test]
fn check_passes_on_a_healthy_install() {
    let api = cluster(|_| {});
    let (c, json) = check_both(&api, &[]);
    assert_eq!(c.code, 0, "{}{}", c.out, c.err);
    for (group, names) in HEALTHY {
        assert!(
            c.out.contains(&format!("{group}\n{}\n", "-".repeat(group.len()))),
            "{group}:\n{}",
            c.out
        );
        for name in names {
            assert!(c.line(name).starts_with('✓'), "{}", c.line(name));
        }
    }
    assert!(c.line("can query the Kubernetes API").contains("v1.33.1"));
    assert_eq!(
        c.line("data-plane proxies are ready"),
        "✓ data-plane proxies are ready (3 meshed pods in 2 namespaces)"
    );
    assert!(
        c.out.ends_with("Status check results: 19 passed, 0 warnings, 0 failed\n"),
        "{}",
        c.out
    );
    let expected: Vec<(String, String, String)> = HEALTHY
        .iter()
        .flat_map(|(g, names)| {
            names.iter().map(|n| (g.to_string(), n.to_string(), "ok".to_string()))
        })
        .collect();
    let got: Vec<(String, String, String)> = json
        .iter()
        .map(|o| {
            let s = |k: &str| o[k].as_str().unwrap_or_else(|| panic!("{k} in {o}")).to_owned();
            (s("group"), s("name"), s("status"))
        })
        .collect();
    assert_eq!(got, expected);

    // The env vars are the flags; --proxy-namespace narrows the count.
    let env = weft_check(
        &api.kubeconfig(),
        &[],
        &[
            ("WEFT_CHECK_NAMESPACE", NS),
            ("WEFT_CHECK_OUTPUT", "json"),
            ("WEFT_CHECK_PROXY_NAMESPACE", "shop"),
        ],
    );
    assert_eq!(env.code, 0, "{}{}", env.out, env.err);
    let ready = env
        .json()
        .into_iter()
        .find(|o| o["name"] == "data-plane proxies are ready")
        .expect("ready");
    assert_eq!(ready["message"], "1 meshed pod in 1 namespace");
}

#[test]
fn check_fails_for_a_deployment_without_available_replicas() {
    let api = cluster(|o| set_available(find(o, "Deployment", "weft-destination"), 0));
    assert_fails(
        &api,
        "weft-destination deployment is available",
        &[&format!("deployment {NS}/weft-destination has 0 of 1 replicas available"), "kubectl"],
    );
}

/// An issuer signed by the operator's trust anchor, valid only in the past.
fn expired_issuer(pki: &Pki) -> (String, String) {
    let anchor_key = KeyPair::from_pem(&pki.ca_key).expect("anchor key");
    let anchor = rcgen::Issuer::from_ca_cert_pem(&pki.ca, anchor_key).expect("anchor");
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "identity.cluster.local");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2025, 1, 1);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &anchor).expect("sign the issuer");
    (cert.pem(), key.serialize_pem())
}

fn set_issuer(objects: &mut [Value], (crt, key): (String, String)) {
    let secret = find(objects, "Secret", "weft-identity-issuer");
    secret["data"]["tls.crt"] = json!(base64(crt.as_bytes()));
    secret["data"]["tls.key"] = json!(base64(key.as_bytes()));
}

#[test]
fn check_fails_for_an_expired_issuer() {
    let issuer = expired_issuer(&install().pki);
    let api = cluster(|o| set_issuer(o, issuer));
    let (c, _) = check_both(&api, &[]);
    assert_eq!(c.code, 1, "{}", c.out);
    let line = c.line("issuer certificate is valid");
    assert!(line.starts_with("✗ issuer certificate is valid: "), "{line}");
    for h in [
        &format!("secret {NS}/weft-identity-issuer"),
        "expired at 2025-01-01 00:00:00 UTC",
        "weft certs generate --anchor-cert",
    ] {
        assert!(line.contains(h), "{line:?} should say {h:?}");
    }
    // The anchors are fine; the issuer's expiry warning is not given for what already failed.
    assert!(c.line("trust anchors are within their validity period").starts_with('✓'));
    assert!(!c.out.contains("issuer certificate is valid for at least"), "{}", c.out);
}

#[test]
fn check_fails_for_an_issuer_of_another_trust_anchor() {
    let dir = TempDir::new("other-anchor");
    let issuer = certs_generate(&dir.0, &[]);
    let api = cluster(|o| set_issuer(o, issuer));
    let (c, _) = check_both(&api, &[]);
    assert_eq!(c.code, 1, "{}", c.out);
    let line = c.line("issuer certificate is valid");
    assert!(line.starts_with("✗ "), "{line}");
    for h in [
        &format!("secret {NS}/weft-identity-issuer"),
        "does not chain to any trust anchor",
        "weft-identity-trust-roots",
    ] {
        assert!(line.contains(h), "{line:?} should say {h:?}");
    }
}

#[test]
fn check_warns_for_an_issuer_expiring_within_the_window_and_old_proxies() {
    let dir = TempDir::new("expiring");
    std::fs::write(dir.0.join("ca.crt"), &install().pki.ca).expect("ca");
    std::fs::write(dir.0.join("ca.key"), &install().pki.ca_key).expect("ca key");
    let (ca, key) = (dir.0.join("ca.crt"), dir.0.join("ca.key"));
    let issuer = certs_generate(
        &dir.0.join("new"),
        &[
            "--anchor-cert",
            ca.to_str().expect("utf-8"),
            "--anchor-key",
            key.to_str().expect("utf-8"),
            "--issuer-lifetime",
            // 30½ days: the text and the JSON run, a second apart, both say "in 30 days"
            // (a lifetime of exactly 30 days crossed to 29 between them once).
            "732h",
        ],
    );
    let api = cluster(|o| {
        set_issuer(o, issuer);
        // A pod injected by an older injector.
        let pod = find(o, "Pod", MESHED[2].1);
        pod["metadata"]["annotations"]["weft.dev/proxy-version"] = json!("0.0.9");
    });
    let (c, json) = check_both(&api, &[]);
    assert_eq!(c.code, 0, "warnings are not failures:\n{}", c.out);
    let line = c.line("issuer certificate is valid for at least 60d");
    assert!(line.starts_with("‼ issuer certificate is valid for at least 60d: "), "{line}");
    assert!(
        line.contains(&format!("secret {NS}/weft-identity-issuer"))
            && line.contains("(in 30 days)"),
        "{line}"
    );
    let line = c.line("data-plane proxies are up to date");
    assert!(
        line.starts_with("‼ ")
            && line.contains(&format!("shop/{} (0.0.9)", MESHED[2].1))
            && line.contains("rollout restart"),
        "{line}"
    );
    let warned: Vec<_> = statuses(&json).into_iter().filter(|(_, s)| s != "ok").collect();
    assert_eq!(warned.len(), 2, "{warned:?}");
    assert!(
        c.out.ends_with("Status check results: 17 passed, 2 warnings, 0 failed\n"),
        "{}",
        c.out
    );

    // A shorter window: nothing to warn about the issuer.
    let short = check(&api, &["--expiry-warning", "7d"]);
    assert!(
        short.line("issuer certificate is valid for at least 7d").starts_with('✓'),
        "{}",
        short.out
    );
}

/// Without the Gateway API CRDs the mesh works, only traffic splits and Gateway API routes
/// do not: a warning each that says how to install them; CRDs too old to serve `v1` say to
/// upgrade.
#[test]
fn check_warns_without_the_gateway_api_route_crds() {
    const CHECK: &str = "Gateway API HTTPRoute CRD is installed";
    const GRPC: &str = "Gateway API GRPCRoute CRD is installed";
    let healthy = check(&cluster(|_| {}), &[]);
    assert_eq!(
        healthy.line(CHECK),
        format!("✓ {CHECK} (traffic splits, inbound routes; serves v1, v1beta1)"),
        "{}",
        healthy.out
    );
    assert_eq!(healthy.line(GRPC), format!("✓ {GRPC} (inbound gRPC routes; serves v1)"));
    let api = cluster(|o| o.retain(|o| o["kind"] != "CustomResourceDefinition"));
    let (c, json) = check_both(&api, &[]);
    assert_eq!(c.code, 0, "a warning is not a failure:\n{}", c.out);
    let line = c.line(CHECK);
    assert!(
        line.starts_with(&format!("‼ {CHECK}: no CRD httproutes.gateway.networking.k8s.io"))
            && line.contains("standard-install.yaml"),
        "{line}"
    );
    let line = c.line(GRPC);
    assert!(
        line.starts_with(&format!("‼ {GRPC}: no CRD grpcroutes.gateway.networking.k8s.io")),
        "{line}"
    );
    let warned: Vec<_> = statuses(&json).into_iter().filter(|(_, s)| s != "ok").collect();
    let warning = |c: &str| (c.to_string(), "warning".to_string());
    assert_eq!(warned, [warning(GRPC), warning(CHECK)]);

    let old = cluster(|o| {
        let crd = find(o, "CustomResourceDefinition", "httproutes.gateway.networking.k8s.io");
        crd["spec"]["versions"] = json!([
            {"name": "v1beta1", "served": true, "storage": true},
            {"name": "v1alpha2", "served": true, "storage": false},
        ]);
    });
    let line = check(&old, &[]).line(CHECK).to_string();
    assert!(line.starts_with('‼') && line.contains("v1beta1, v1alpha2 but not v1"), "{line}");
}

#[test]
fn check_fails_when_the_webhook_ca_bundle_does_not_verify_the_injector() {
    // A second render (`helm template` piped to kubectl, say) generates another CA: its
    // webhook registration no longer matches the Secret the injector serves from.
    let other = render(&install().pki);
    let api = cluster(|o| {
        let mwc = find(
            &mut other.clone(),
            "MutatingWebhookConfiguration",
            "weft-proxy-injector-webhook-config",
        )
        .clone();
        *find(o, "MutatingWebhookConfiguration", "weft-proxy-injector-webhook-config") = mwc;
    });
    assert_fails(
        &api,
        "webhook caBundle verifies the injector certificate",
        &[
            "the caBundle of mutatingwebhookconfiguration weft-proxy-injector-webhook-config",
            &format!(
                "does not verify the certificate in secret {NS}/weft-injector-tls for weft-injector.{NS}.svc"
            ),
            "pods start without the proxy",
        ],
    );
}

#[test]
fn check_fails_for_an_injected_pod_whose_proxy_is_not_ready() {
    let (ns, name) = MESHED[1];
    let api = cluster(|o| {
        let pod = find(o, "Pod", name);
        let statuses = pod["status"]["initContainerStatuses"].as_array_mut().expect("statuses");
        let proxy =
            statuses.iter_mut().find(|s| s["name"] == "weft-proxy").expect("the proxy's status");
        proxy["ready"] = json!(false);
        proxy["restartCount"] = json!(5);
        proxy["state"] = json!({"waiting": {"reason": "CrashLoopBackOff",
            "message": "back-off 2m40s restarting failed container=weft-proxy"}});
        for c in pod["status"]["conditions"].as_array_mut().expect("conditions") {
            if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                c["status"] = json!("False");
            }
        }
    });
    assert_fails(
        &api,
        "data-plane proxies are ready",
        &[
            "1 of 3 proxies are not ready",
            &format!("{ns}/{name} (CrashLoopBackOff, 5 restarts)"),
            &format!("kubectl -n {ns} logs {name} -c weft-proxy"),
        ],
    );
}

#[test]
fn check_fails_fast_when_the_api_server_is_unreachable() {
    let dir = TempDir::new("unreachable");
    let kubeconfig = |addr: String| {
        let path = dir.0.join("kubeconfig");
        let config = json!({"apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": format!("http://{addr}")}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "c"});
        std::fs::write(&path, config.to_string()).expect("kubeconfig");
        path
    };
    // Nothing listens: refused at once.
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    // Something listens but never answers: bounded by --timeout.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    for (addr, args) in
        [(closed, vec![]), (silent.local_addr().expect("addr"), vec!["--timeout", "1s"])]
    {
        for output in ["text", "json"] {
            let mut all = args.clone();
            all.extend(["--output", output]);
            let c = weft_check(&kubeconfig(addr.to_string()), &all, &[]);
            assert_eq!(c.code, 1, "{}{}", c.out, c.err);
            assert!(c.took < Duration::from_secs(8), "took {:?}", c.took);
            let server = format!("the API server at http://{addr}/ cannot be reached");
            if output == "json" {
                let json = c.json();
                assert_eq!(json.len(), 1, "nothing else is checked: {json:?}");
                assert_eq!(json[0]["group"], "kubernetes-api");
                assert_eq!(json[0]["status"], "error");
                assert!(
                    json[0]["message"].as_str().expect("message").contains(&server),
                    "{}",
                    json[0]
                );
            } else {
                assert_eq!(c.lines().len(), 1, "{}", c.out);
                let line = c.line("can query the Kubernetes API");
                assert!(
                    line.starts_with("✗ ")
                        && line.contains(&server)
                        && line.contains("kubectl cluster-info"),
                    "{line}"
                );
            }
        }
    }
}

#[test]
fn check_stops_when_the_namespace_is_missing_and_exits_2_on_bad_config() {
    let api = cluster(|o| o.retain(|o| !(o["kind"] == "Namespace" && o["metadata"]["name"] == NS)));
    let c = check(&api, &[]);
    assert_eq!(c.code, 1, "{}", c.out);
    assert_eq!(c.lines().len(), 2, "{}", c.out);
    let line = c.line("control-plane namespace exists");
    assert!(
        line.starts_with("✗ ")
            && line.contains(&format!("namespace {NS} not found"))
            && line.contains("--namespace"),
        "{line}"
    );

    for (args, says) in [
        (vec!["--output", "yaml"], "invalid value 'yaml'"),
        (vec!["--expiry-warning", "soon"], "not a duration"),
    ] {
        let c = weft_check(&api.kubeconfig(), &args, &[]);
        assert_eq!(c.code, 2, "{args:?}: {}{}", c.out, c.err);
        assert!(c.err.contains(says), "{args:?}: {}", c.err);
    }
    let c = weft_check(Path::new("/nonexistent/kubeconfig"), &[], &[]);
    assert_eq!(c.code, 2, "{}{}", c.out, c.err);
    assert!(c.err.contains("/nonexistent/kubeconfig") && c.out.is_empty(), "{}", c.err);
}
