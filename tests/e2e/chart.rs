//! The Helm chart `charts/weft`, rendered without helm (see `render`: Go's text/template by
//! the `gtmpl` crate) and held to the code it deploys: every object decodes as its
//! k8s-openapi type with no unknown field; each Deployment's args, env and mounted
//! Secret/ConfigMap files start the real `weft` server (against the fake API server), whose
//! probes, metrics port, Service ports and webhook registration are then used for real; the
//! RBAC rules are exactly the API requests each server made; the destination service gets
//! its certificate from the running identity service; a pod injected by the running
//! injector gets one too, and its real proxy discovers through the destination service over
//! mTLS, with the Services' names (rewritten, or resolved by a DNS server: `cluster`); and
//! kubectl, with Go's decoders, reads the same objects.

mod certs;
mod cluster;
mod connection_caps;
mod mesh;
pub(crate) mod render;
mod run;
mod webhook_tls;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::Deployment,
    core::v1::{ConfigMap, Secret, Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use serde::{Deserialize as _, de::DeserializeOwned};
use serde_json::{Value, json};
use weft_identity::{
    IdentityName, SharedTrust, TrustBundle,
    client::{Client, ClientConfig, IdentityMetrics},
    pki::CertSummary,
};

use crate::{
    injector::review,
    kubeapi::FakeApi,
    support::{eventually, run},
};
use cluster::Services;
use render::{Chart, Release, Rendered};
use run::{Running, check_rbac, pod_spec, the_container};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const RELEASE: &str = "weft";
/// Not the documented `weft`, so that a name the chart forgot to template shows up.
const NS: &str = "mesh";
/// `clusterNetworks` other than the default, to see it reach the injected proxies.
const CLUSTER_NETWORKS: &str = "10.244.0.0/16,10.96.0.0/12,fd00:10:244::/56";

pub(crate) fn chart() -> Chart {
    Chart::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/weft"))
}

fn release() -> Release<'static> {
    Release { name: RELEASE, namespace: NS }
}

/// A temporary directory, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("weft-e2e-chart-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// The files an operator passes with `--set-file`: the PKI from `weft certs generate`.
struct Pki {
    ca: String,
    issuer_crt: String,
    issuer_key: String,
}

fn pki(dir: &Path) -> Pki {
    let (ok, out, err) =
        run(Command::new(WEFT).args(["certs", "generate", "--out-dir"]).arg(dir.join("pki")));
    assert!(ok, "weft certs generate: {out}{err}");
    Pki {
        ca: read(&dir.join("pki/ca.crt")),
        issuer_crt: read(&dir.join("pki/issuer.crt")),
        issuer_key: read(&dir.join("pki/issuer.key")),
    }
}

/// What DESIGN.md's `helm install … --set-file` gives: the identity PKI and nothing else.
fn required_values(p: &Pki) -> Value {
    json!({
        "identity": {"trustAnchorsPEM": p.ca, "issuer": {"crtPEM": p.issuer_crt, "keyPEM": p.issuer_key}},
    })
}

fn with(mut base: Value, extra: Value) -> Value {
    fn merge(b: &mut Value, o: Value) {
        match (b, o) {
            (Value::Object(b), Value::Object(o)) => {
                for (k, v) in o {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
            (b, o) => *b = o,
        }
    }
    merge(&mut base, extra);
    base
}

/// The rendered objects, decoded, by kind and name.
struct Objects {
    docs: Vec<Value>,
}

impl Objects {
    fn new(rendered: &Rendered) -> Objects {
        let docs: Vec<Value> = rendered.documents().into_iter().map(|(_, d)| d).collect();
        docs.iter().for_each(check_typed);
        Objects { docs }
    }

    fn all<T: DeserializeOwned>(&self, kind: &str) -> Vec<T> {
        self.docs
            .iter()
            .filter(|d| d["kind"] == kind)
            .map(|d| serde_json::from_value(d.clone()).expect("checked already"))
            .collect()
    }

    fn get<T: DeserializeOwned>(&self, kind: &str, name: &str) -> T {
        let doc = self
            .docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the chart renders no {kind} {name}"));
        serde_json::from_value(doc.clone()).expect("checked already")
    }

    fn names(&self, kind: &str) -> BTreeSet<String> {
        self.docs
            .iter()
            .filter(|d| d["kind"] == kind)
            .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
            .collect()
    }
}

/// A document is one of the kinds the chart is meant to hold, decodes as that k8s-openapi
/// type, and has no field the type does not know (it serializes back to the same JSON).
fn check_typed(doc: &Value) {
    fn back<T: DeserializeOwned + serde::Serialize>(doc: &Value) -> Value {
        let typed: T = serde_json::from_value(doc.clone())
            .unwrap_or_else(|e| panic!("not a valid {}: {e}\n{doc:#}", doc["kind"]));
        serde_json::to_value(typed).expect("serialize")
    }
    let name = format!("{} {}", doc["kind"], doc["metadata"]["name"]);
    let api = (doc["apiVersion"].as_str().unwrap_or(""), doc["kind"].as_str().unwrap_or(""));
    let mut back = match api {
        ("apps/v1", "Deployment") => back::<Deployment>(doc),
        ("v1", "Service") => back::<Service>(doc),
        ("v1", "ServiceAccount") => back::<ServiceAccount>(doc),
        ("v1", "ConfigMap") => back::<ConfigMap>(doc),
        ("v1", "Secret") => back::<Secret>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => back::<ClusterRole>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => back::<ClusterRoleBinding>(doc),
        ("rbac.authorization.k8s.io/v1", "Role") => back::<Role>(doc),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => back::<RoleBinding>(doc),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            back::<MutatingWebhookConfiguration>(doc)
        }
        ("policy/v1", "PodDisruptionBudget") => back::<PodDisruptionBudget>(doc),
        other => panic!("{name}: unexpected kind {other:?}"),
    };
    let mut orig = doc.clone();
    strip_nulls(&mut orig);
    strip_nulls(&mut back);
    assert_eq!(back, orig, "{name} has fields k8s-openapi does not know");
    let ns = doc["metadata"]["namespace"].as_str();
    let cluster_scoped = matches!(api.1, "ClusterRole" | "ClusterRoleBinding")
        || api.1 == "MutatingWebhookConfiguration";
    assert_eq!(ns, (!cluster_scoped).then_some(NS), "{name}: namespace");
    assert_eq!(doc["metadata"]["labels"]["app.kubernetes.io/instance"], RELEASE, "{name}");
}

fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// The big one: everything the chart deploys, run from what it rendered; the control
/// plane's Service names stood in for by rewriting them in each pod.
#[test]
fn chart_renders_objects_that_run_the_real_servers() {
    let dir = Dir::new("run");
    run_the_chart(&dir.0, Services::rewritten(&dir.0));
}

/// The same, with the Service names resolved as in a cluster: each pod's resolv.conf names
/// the test's DNS server, which answers with a ClusterIP forwarding the Service's port.
#[test]
#[ignore = "needs root: the test's DNS server listens on port 53 (resolv.conf has no port)"]
fn chart_control_plane_names_resolve_through_the_pods_dns() {
    let dir = Dir::new("dns");
    run_the_chart(&dir.0, Services::resolved(&dir.0));
}

fn run_the_chart(dir: &Path, mut services: Services) {
    let pki = pki(dir);
    let values = with(
        required_values(&pki),
        json!({"logFormat": "json", "injector": {"replicas": 3},
               "clusterNetworks": CLUSTER_NETWORKS,
               // Caps other than the servers' defaults, checked in the configuration each
               // server logs at start.
               "identity": {"replicas": 2, "maxConnections": 16384, "maxClientHandshakes": 64},
               "destination": {"maxClientConnections": 1024, "maxConnectionIdle": "30m"},
               "proxy": {"image": {"tag": "test"}, "logLevel": "debug", "resources": {"cpu": {"limit": "2"}}}}),
    );
    let rendered = chart().render(&release(), &values).expect("the chart renders");
    let objects = Objects::new(&rendered);
    assert_eq!(
        objects.names("Deployment"),
        ["weft-destination", "weft-identity", "weft-injector"].map(String::from).into(),
    );
    assert_eq!(
        objects.names("PodDisruptionBudget"),
        ["weft-identity", "weft-injector"].map(String::from).into(),
        "a PodDisruptionBudget where replicas > 1"
    );

    // identity: TokenReview against the fake API server, for projected tokens.
    let identity_api = FakeApi::start();
    run::review_tokens(&identity_api);
    let identity = Running::start(
        "weft-identity",
        &objects,
        &dir.join("identity"),
        &identity_api,
        &services.for_pod(NS),
    );
    identity.check_pod_plumbing(&objects, "weft-identity", "grpc");
    for cap in ["max_connections: 16384", "max_client_handshakes: 64"] {
        assert!(identity.logs().contains(cap), "{cap} not in\n{}", identity.logs());
    }
    services.expose(&objects, "weft-identity", identity.serving.addr("grpc"));

    // destination: serves over TLS with a certificate from the identity service, which it
    // reaches by the Service name the chart gives it; ready only once it has it.
    let destination_api = FakeApi::start();
    let web = mesh::Web::start(&destination_api);
    // A route of each kind whose status it writes (their Server does not exist: each is
    // told so), so that the RBAC for those writes is exercised too.
    let policy_route = "/apis/policy.weft.dev/v1beta3/httproutes";
    destination_api.put(policy_route, crate::destination::fixture("httproute-web-metrics.json"));
    destination_api.put(crate::split::HTTPROUTES, {
        let mut r = crate::destination::fixture("httproute-web-metrics.json");
        r["apiVersion"] = json!("gateway.networking.k8s.io/v1");
        r
    });
    destination_api.put(
        crate::policy_grpc_routes::GRPC_ROUTES,
        crate::destination::fixture("grpcroute-web-echo.json"),
    );
    let destination = Running::start(
        "weft-destination",
        &objects,
        &dir.join("destination"),
        &destination_api,
        &services.for_pod(NS),
    );
    destination.check_pod_plumbing(&objects, "weft-destination", "grpc");
    for cap in ["max_client_connections: 1024", "max_connection_idle: 1800s"] {
        assert!(destination.logs().contains(cap), "{cap} not in\n{}", destination.logs());
    }
    services.expose(&objects, "weft-destination", destination.serving.addr("grpc"));

    let injector_api = FakeApi::start();
    injector_api.put(
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "prod", "annotations": {"weft.dev/inject": "enabled"}}}),
    );
    let injector = Running::start(
        "weft-injector",
        &objects,
        &dir.join("injector"),
        &injector_api,
        &services.for_pod(NS),
    );
    injector.check_pod_plumbing(&objects, "weft-injector", "webhook");

    // The API server's call: the registered Service, port and path, TLS verified with the
    // registered caBundle for the Service's DNS name. Nothing about the webhook's TLS was
    // given: the chart generated the CA and the certificate the injector serves.
    let tls = webhook_tls::generated(&objects);
    let mwc: MutatingWebhookConfiguration =
        objects.get("MutatingWebhookConfiguration", "weft-proxy-injector-webhook-config");
    let hook = &mwc.webhooks.as_ref().expect("webhooks")[0];
    assert_eq!(
        hook.client_config.ca_bundle.as_ref().expect("caBundle").0,
        tls.ca.as_bytes(),
        "the webhook is registered with the CA that signed the injector's certificate"
    );
    let svc_ref = hook.client_config.service.as_ref().expect("a Service reference");
    assert_eq!(svc_ref.namespace, NS);
    let svc: Service = objects.get("Service", &svc_ref.name);
    let svc_port = svc.spec.and_then(|s| s.ports).expect("ports")[0].port;
    assert_eq!(Some(svc_port), svc_ref.port, "the webhook calls the Service's port");
    let webhook_addr = injector.serving.addr("webhook");
    let post = |pod: &Value| -> Value {
        let ca = dir.join("cabundle.pem");
        std::fs::write(&ca, &hook.client_config.ca_bundle.as_ref().expect("caBundle").0)
            .expect("ca");
        let body = dir.join("review.json");
        let review = review::review("Pod", "pods", pod);
        std::fs::write(&body, serde_json::to_vec(&review).expect("json")).expect("body");
        let host = format!("{}.{}.svc", svc_ref.name, svc_ref.namespace);
        let url = format!(
            "https://{host}:{}{}",
            webhook_addr.port(),
            svc_ref.path.as_deref().unwrap_or("/")
        );
        let (ok, out, err) = run(Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "20", "-H", "Content-Type: application/json"])
            .arg("--resolve")
            .arg(format!("{host}:{}:127.0.0.1", webhook_addr.port()))
            .arg("--cacert")
            .arg(&ca)
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg(url));
        assert!(ok, "curl to the webhook as the API server calls it: {err}\n{}", injector.logs());
        serde_json::from_str(&out).expect("an AdmissionReview")
    };
    let mut pod = review::pod_from("deployment-web.json", "prod");
    // A probe, so that the pod's real proxy below also starts with probe routes.
    pod["spec"]["containers"][0]["readinessProbe"] =
        json!({"httpGet": {"path": "/ready?full=1", "port": 8080}});
    let answer = post(&pod);
    assert_eq!(answer["response"]["allowed"], true, "{answer:#}");
    let patch = review::patch_of(&answer).expect("the pod is injected");
    let (_, injected) = review::apply_strict(&pod, &patch);
    // A namespace the injector's cache has not seen: fetched once (RBAC `get`).
    let mut fresh = review::pod_from("deployment-web.json", "fresh");
    review::set_annotation(&mut fresh, "weft.dev/inject", "enabled");
    assert!(review::patch_of(&post(&fresh)).is_some(), "injected on the pod's own annotation");

    check_injected_pod(&injected, &objects, &pki);
    certify_as_the_injected_proxy(&injected, &identity, &objects, dir);
    // The injected pod's proxy, as the kubelet starts it: its certificate from the identity
    // service, discovery from the destination service over mTLS, both by Service name.
    // The pod as the API server stores it once created: the destination serves its policies.
    let mut stored = serde_json::to_value(&injected).expect("pod JSON");
    stored["metadata"]["name"] = json!(mesh::pod_name(&injected));
    stored["status"] = json!({"phase": "Running", "podIP": "10.244.1.23"});
    destination_api.put("/api/v1/pods", stored);
    web.discover_through(&injected, &dir.join("pod"), &services.for_pod("prod"), &destination);
    if services.resolves_names() {
        let asked = services.asked();
        for name in ["weft-identity", "weft-destination"] {
            let fqdn = format!("{name}.{NS}.svc.cluster.local");
            assert!(asked.contains(&fqdn), "{fqdn} was never resolved: {asked:?}");
        }
    }

    // The route statuses written, and the lease renewed (every 10 s) as well as created.
    let status_writes = || {
        let requests = destination_api.requests();
        let patched = |kind: &str| {
            requests.iter().filter(|r| r.starts_with("PATCH ") && r.contains(kind)).count()
        };
        let renewed = requests.iter().any(|r| r.starts_with("PUT ") && r.contains("/leases/"));
        patched("/apis/policy.weft.dev/") == 1
            && patched("/httproutes/") == 2
            && patched("/grpcroutes/") == 1
            && renewed
    };
    let written = eventually(std::time::Duration::from_secs(20), status_writes);
    assert!(
        written,
        "{:?}
{}",
        destination_api.requests(),
        destination.logs()
    );
    check_rbac(&objects, "weft-identity", &identity_api);
    check_rbac(&objects, "weft-destination", &destination_api);
    check_rbac(&objects, "weft-injector", &injector_api);
}

fn proxy_env(pod: &k8s_openapi::api::core::v1::Pod) -> BTreeMap<String, String> {
    let spec = pod.spec.as_ref().expect("spec");
    let proxy = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == "weft-proxy")
        .expect("the proxy container");
    proxy.env.iter().flatten().filter_map(|e| Some((e.name.clone(), e.value.clone()?))).collect()
}

/// The injected pod got the proxy configuration the chart's values asked for, and
/// addresses that are the chart's Services.
fn check_injected_pod(pod: &k8s_openapi::api::core::v1::Pod, objects: &Objects, pki: &Pki) {
    let spec = pod.spec.as_ref().expect("spec");
    let proxy = spec.init_containers.iter().flatten().find(|c| c.name == "weft-proxy");
    let proxy = proxy.expect("a native-sidecar proxy (proxy.nativeSidecar: true)");
    assert_eq!(proxy.image.as_deref(), Some("ghcr.io/weft-mesh/weft-proxy:test"));
    let limits = proxy.resources.as_ref().and_then(|r| r.limits.clone()).unwrap_or_default();
    assert_eq!(limits["cpu"].0, "2", "proxy.resources.cpu.limit");
    let env = proxy_env(pod);
    assert_eq!(env["WEFT_PROXY_LOG"], "debug", "proxy.logLevel");
    assert_eq!(env["WEFT_PROXY_CLUSTER_NETWORKS"], CLUSTER_NETWORKS, "clusterNetworks");
    assert_eq!(env["WEFT_PROXY_DESTINATION_NETWORKS"], CLUSTER_NETWORKS, "clusterNetworks");
    assert_eq!(env["WEFT_PROXY_INBOUND_PROBE_ROUTES"], "8080:/ready", "the pod's probe");
    for (var, service) in [
        ("WEFT_PROXY_IDENTITY_ADDR", "weft-identity"),
        ("WEFT_PROXY_DESTINATION_ADDR", "weft-destination"),
    ] {
        let svc: Service = objects.get("Service", service);
        let port = svc.spec.and_then(|s| s.ports).expect("ports")[0].port;
        assert_eq!(env[var], format!("{service}.{NS}.svc.cluster.local:{port}"), "{var}");
    }
    // Each control-plane server runs as the account whose identity proxies expect of it.
    for (var, deployment) in [
        ("WEFT_PROXY_IDENTITY_SVC_NAME", "weft-identity"),
        ("WEFT_PROXY_DESTINATION_SVC_NAME", "weft-destination"),
    ] {
        let d: Deployment = objects.get("Deployment", deployment);
        let sa = pod_spec(&d).service_account_name.clone().expect("a service account");
        let name = format!("{sa}.{NS}.serviceaccount.identity.{NS}.cluster.local");
        assert_eq!(env[var], name, "{deployment} runs as the identity proxies expect");
    }
    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations["weft.dev/identity-trust-anchors"], pki.ca, "the chart's trust anchors");
    let trust_roots: ConfigMap = objects.get("ConfigMap", "weft-identity-trust-roots");
    assert_eq!(
        trust_roots.data.unwrap_or_default()["ca-bundle.crt"].trim(),
        pki.ca.trim(),
        "the trust-roots ConfigMap holds the trust anchors"
    );
    let token = spec
        .volumes
        .iter()
        .flatten()
        .find_map(|v| {
            v.projected.as_ref()?.sources.as_ref()?.first()?.service_account_token.clone()
        })
        .expect("a projected token");
    let identity: Deployment = objects.get("Deployment", "weft-identity");
    let args = the_container(&identity).args.clone().unwrap_or_default();
    assert!(
        args.contains(&format!("--token-audience={}", token.audience.as_deref().unwrap_or(""))),
        "the identity service expects the audience of the injected token: {args:?}"
    );
}

/// What an injected proxy does at start, with what the injector gave it: ask the chart's
/// identity service for a certificate, trusting the anchors from the pod's annotation and
/// expecting the identity-service name from its env.
fn certify_as_the_injected_proxy(
    pod: &k8s_openapi::api::core::v1::Pod,
    identity: &Running,
    objects: &Objects,
    dir: &Path,
) {
    let env = proxy_env(pod);
    let expand = |v: &str| v.replace("$(WEFT_POD_SA)", "web").replace("$(WEFT_POD_NS)", "prod");
    let anchors =
        pod.metadata.annotations.clone().unwrap_or_default()["weft.dev/identity-trust-anchors"]
            .clone();
    let svc_name: IdentityName = env["WEFT_PROXY_IDENTITY_SVC_NAME"].parse().expect("a name");
    assert_eq!(
        identity.serving.fields["name"],
        svc_name.as_str(),
        "proxies expect the name the identity service presents"
    );
    let ours: IdentityName = expand(&env["WEFT_PROXY_IDENTITY_NAME"]).parse().expect("a name");
    let token = dir.join("projected-token");
    std::fs::write(
        &token,
        run::projected_token("system:serviceaccount:prod:web", weft_injector::spec::TOKEN_AUDIENCE),
    )
    .expect("token");
    let bundle = TrustBundle::from_pem("annotation", anchors.as_bytes()).expect("trust anchors");
    let config = ClientConfig::new(
        SharedTrust::new(bundle).expect("trust"),
        identity.serving.addr("grpc").to_string(),
        svc_name,
        ours.clone(),
        token,
    );
    let client = Client::new(config, IdentityMetrics::default()).expect("client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    rt.block_on(client.certify_once())
        .unwrap_or_else(|e| panic!("certify: {e}\n{}", identity.logs()));
    let creds = client.credentials();
    let leaf = creds.current().expect("a certificate");
    let summary = CertSummary::parse(&leaf.cert[0]).expect("leaf");
    assert_eq!(summary.dns_names, vec![ours.to_string()]);
    let issuer: Secret = objects.get("Secret", "weft-identity-issuer");
    assert_eq!(issuer.type_.as_deref(), Some("kubernetes.io/tls"));
}

/// The identity PKI is all that is required (the webhook's TLS is optional: see
/// `webhook_tls`); each missing file fails with a message saying how to give it.
#[test]
fn chart_required_values_fail_with_their_message() {
    let dir = Dir::new("required");
    let pki = pki(&dir.0);
    let chart = chart();
    assert!(chart.render(&release(), &required_values(&pki)).is_ok());
    for (path, message) in [
        ("/identity/trustAnchorsPEM", "identity.trustAnchorsPEM is required"),
        ("/identity/issuer/crtPEM", "identity.issuer.crtPEM is required"),
        ("/identity/issuer/keyPEM", "identity.issuer.keyPEM is required"),
    ] {
        let mut values = required_values(&pki);
        *values.pointer_mut(path).expect("a required value") = json!("");
        let e = chart.render(&release(), &values).err();
        let e = e.unwrap_or_else(|| panic!("renders without {path}"));
        assert!(e.contains(message), "{path}: {e}");
        assert!(e.contains("--set-file") || e.contains("README"), "says how to give it: {e}");
    }
    let e = chart.render(&release(), &json!({})).err().expect("nothing given");
    assert!(e.contains("is required"), "{e}");
}

#[test]
fn chart_route_status_can_be_switched_off_with_its_rbac() {
    let dir = Dir::new("route-status");
    let pki = pki(&dir.0);
    let status_rules = |objects: &Objects| {
        let granted = run::granted(objects, "weft-destination");
        let writes: BTreeSet<_> =
            granted.into_iter().filter(|(verb, ..)| verb != "list" && verb != "watch").collect();
        let args = the_container(&objects.get::<Deployment>("Deployment", "weft-destination"))
            .args
            .clone()
            .unwrap_or_default();
        (writes, args.into_iter().find(|a| a.starts_with("--route-status=")))
    };
    let on = Objects::new(&chart().render(&release(), &required_values(&pki)).expect("renders"));
    let rule = |verb: &str, group: &str, resource: &str| {
        (verb.to_owned(), group.to_owned(), resource.to_owned())
    };
    let expected: BTreeSet<_> = [
        rule("patch", "gateway.networking.k8s.io", "httproutes/status"),
        rule("patch", "gateway.networking.k8s.io", "grpcroutes/status"),
        rule("patch", "policy.weft.dev", "httproutes/status"),
        rule("get", "coordination.k8s.io", "leases"),
        rule("create", "coordination.k8s.io", "leases"),
        rule("update", "coordination.k8s.io", "leases"),
    ]
    .into();
    assert_eq!(status_rules(&on), (expected, Some("--route-status=true".to_owned())));
    let off = with(required_values(&pki), json!({"destination": {"routeStatus": false}}));
    let off = Objects::new(&chart().render(&release(), &off).expect("renders"));
    assert_eq!(status_rules(&off), (BTreeSet::new(), Some("--route-status=false".to_owned())));
    assert!(off.names("Role").is_empty() && off.names("RoleBinding").is_empty());
}

/// The defaults alone: hardened pods, one replica each (so no PodDisruptionBudget), images
/// from appVersion, and the webhook registered as injector/manifests/webhook.yaml says.
#[test]
fn chart_defaults_are_hardened_and_match_the_webhook_manifest() {
    let dir = Dir::new("defaults");
    let pki = pki(&dir.0);
    let chart = chart();
    let rendered = chart.render(&release(), &required_values(&pki)).expect("renders");
    let objects = Objects::new(&rendered);
    assert!(objects.names("PodDisruptionBudget").is_empty(), "no PDB for one replica");
    let app_version = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/weft/Chart.yaml"));
    assert!(app_version.contains(&format!("appVersion: \"{}\"", env!("CARGO_PKG_VERSION"))));
    for d in objects.all::<Deployment>("Deployment") {
        let name = d.metadata.name.clone().unwrap_or_default();
        assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(1), "{name}");
        let spec = pod_spec(&d);
        let c = the_container(&d);
        let image = format!("ghcr.io/weft-mesh/weft:{}", env!("CARGO_PKG_VERSION"));
        assert_eq!(c.image.as_deref(), Some(image.as_str()), "{name}");
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"), "{name}");
        let psc = spec.security_context.clone().expect("pod securityContext");
        assert_eq!(psc.run_as_non_root, Some(true), "{name}");
        let sc = c.security_context.clone().expect("securityContext");
        assert_eq!(sc.run_as_non_root, Some(true), "{name}");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
        assert_eq!(sc.privileged, Some(false), "{name}");
        let caps = sc.capabilities.clone().expect("capabilities");
        assert_eq!((caps.drop, caps.add), (Some(vec!["ALL".to_owned()]), None), "{name}");
        assert_eq!(sc.seccomp_profile.map(|p| p.type_), Some("RuntimeDefault".into()), "{name}");
        let resources = c.resources.clone().expect("resources");
        assert!(resources.requests.is_some_and(|r| r.contains_key("memory")), "{name}");
        let labels =
            d.spec.as_ref().and_then(|s| s.template.metadata.clone()).and_then(|m| m.labels);
        assert!(
            labels.is_some_and(|l| l.contains_key("weft.dev/control-plane-component")),
            "{name}: control-plane pods are never injected"
        );
    }
    let proxy_config = objects.get::<ConfigMap>("ConfigMap", "weft-proxy-config").data;
    let proxy_config = proxy_config.unwrap_or_default();
    let image = format!("ghcr.io/weft-mesh/weft-proxy:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(proxy_config["WEFT_INJECTOR_PROXY_IMAGE"], image);
    // The chart's default is the binaries' default, and discovery and the proxies agree.
    let default = &proxy_config["WEFT_INJECTOR_OPAQUE_PORTS"];
    assert_eq!(default, &weft_injector::InjectorConfig::default().opaque_ports);
    assert_eq!(default, weft_destination::index::DEFAULT_OPAQUE_PORTS);
    let destination: Deployment = objects.get("Deployment", "weft-destination");
    let opaque = format!("--default-opaque-ports={}", proxy_config["WEFT_INJECTOR_OPAQUE_PORTS"]);
    assert!(the_container(&destination).args.iter().flatten().any(|a| *a == opaque), "{opaque}");
    let default = &proxy_config["WEFT_INJECTOR_CLUSTER_NETWORKS"];
    assert_eq!(default, &weft_injector::InjectorConfig::default().cluster_networks);
    assert_eq!(default, weft_proxy::policy::DEFAULT_CLUSTER_NETWORKS);
    assert_eq!(default, weft_destination::policy::model::DEFAULT_CLUSTER_NETWORKS);
    // The destination service computes default policies from the same values the injector
    // gives the proxies.
    let args = the_container(&destination).args.clone().unwrap_or_default();
    let networks = format!("--cluster-networks={default}");
    let policy = format!(
        "--default-inbound-policy={}",
        proxy_config["WEFT_INJECTOR_DEFAULT_INBOUND_POLICY"]
    );
    for want in [networks, policy] {
        assert!(args.contains(&want), "{want} not in {args:?}");
    }

    // The same registration as the reviewed manifest, with the namespace and CA templated.
    let manifest: Value = serde_yaml_ng::from_str(&read(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("injector/manifests/webhook.yaml"),
    ))
    .expect("webhook.yaml");
    let mut expected = manifest["webhooks"].clone();
    let ca = render::base64(webhook_tls::generated(&objects).ca.as_bytes());
    expected[0]["clientConfig"]["caBundle"] = json!(ca);
    expected[0]["clientConfig"]["service"]["namespace"] = json!(NS);
    expected[0]["namespaceSelector"]["matchExpressions"][0]["values"] = json!(["kube-system", NS]);
    let mwc = rendered.documents().into_iter().map(|(_, d)| d);
    let mwc = mwc.filter(|d| d["kind"] == "MutatingWebhookConfiguration").collect::<Vec<_>>();
    assert_eq!(mwc.len(), 1);
    assert_eq!(mwc[0]["webhooks"], expected, "the chart's webhook and manifests/webhook.yaml");

    assert!(
        rendered.notes.contains("kubectl annotate namespace NAMESPACE weft.dev/inject=enabled"),
        "NOTES.txt says what to do next:\n{}",
        rendered.notes
    );
    assert!(rendered.notes.contains(&format!("-n {NS}")), "{}", rendered.notes);
}

/// kubectl, offline, as an independent reader: its YAML decoder (YAML 1.1, Go) sees the same
/// objects as ours, and its typed decoders (Go's API types) accept each object; a Deployment
/// comes back from them with every field we wrote. `kubectl apply/create --dry-run=client`
/// are not used: they need a server for discovery.
#[test]
fn chart_objects_decode_with_kubectl() {
    let dir = Dir::new("kubectl");
    let pki = pki(&dir.0);
    let values = with(required_values(&pki), json!({"identity": {"replicas": 2}}));
    let rendered = chart().render(&release(), &values).expect("renders");
    let docs: Vec<Value> = rendered.documents().into_iter().map(|(_, d)| d).collect();
    let kubectl = |args: &[&str], input: &str| -> (bool, String, String) {
        let mut child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", "/dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl is needed for this test (the machine image has it)");
        use std::io::Write as _;
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
        let out = child.wait_with_output().expect("kubectl");
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), s(&out.stdout), s(&out.stderr))
    };
    let stream: String = rendered.files.iter().map(|(_, t)| format!("---\n{t}\n")).collect();
    let (ok, out, err) = kubectl(
        &["patch", "--local", "--type=merge", "-p", "{}", "-f", "-", "-o", "json"],
        &stream,
    );
    assert!(ok, "kubectl patch --local: {err}");
    let theirs: Vec<Value> = serde_json::Deserializer::from_str(&out)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("kubectl's JSON");
    assert_eq!(theirs, docs, "kubectl's YAML decoder reads other values than ours");

    for doc in &docs {
        let kind = doc["kind"].as_str().expect("kind");
        let text = serde_json::to_string(doc).expect("json");
        let (ok, out, err) = kubectl(
            &["set", "env", "--local", "-f", "-", "WEFT_CHART_TEST=1", "-o", "json"],
            &text,
        );
        assert!(!err.contains("unable to decode"), "{kind}: Go's types refuse it: {err}");
        if kind == "Deployment" {
            assert!(ok, "kubectl set env: {err}");
            let back: Value = serde_json::from_str(&out).expect("json");
            assert_subset(doc, &back, kind);
        } else {
            assert!(err.contains(&format!("*v1.{kind}")), "{kind}: not decoded as its type: {err}");
        }
    }
}

/// Every leaf of `ours` is in `theirs` with the same value (theirs may add defaults).
fn assert_subset(ours: &Value, theirs: &Value, at: &str) {
    match (ours, theirs) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let t = b.get(k).unwrap_or_else(|| panic!("{at}.{k} dropped by Go's types"));
                assert_subset(v, t, &format!("{at}.{k}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert!(b.len() >= a.len(), "{at}: items dropped");
            for (i, v) in a.iter().enumerate() {
                assert_subset(v, &b[i], &format!("{at}[{i}]"));
            }
        }
        (a, b) => assert_eq!(a, b, "{at}"),
    }
}

/// The CRDs of `crds/` (which helm installs as they are, untemplated) define exactly the
/// policy kinds the destination service watches, where it watches them, with the spec
/// fields it reads; the destination's ClusterRole may list and watch each (the running
/// chart test holds RBAC to the requests made).
#[test]
fn chart_crds_are_the_policy_kinds_the_destination_watches() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use weft_destination::policy::model::{GROUP, PolicyKind};

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/weft/crds");
    let mut crds = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("charts/weft/crds") {
        let text = read(&entry.expect("entry").path());
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).expect("YAML");
            let mut typed = serde_json::to_value(
                serde_json::from_value::<CustomResourceDefinition>(v.clone())
                    .unwrap_or_else(|e| panic!("not a CRD: {e}\n{v:#}")),
            )
            .expect("serialize");
            let mut orig = v.clone();
            strip_nulls(&mut orig);
            strip_nulls(&mut typed);
            assert_eq!(
                typed, orig,
                "{} has fields k8s-openapi does not know",
                v["metadata"]["name"]
            );
            let crd: CustomResourceDefinition = serde_json::from_value(v).expect("checked");
            crds.insert(crd.spec.names.kind.clone(), crd);
        }
    }
    let kinds: BTreeSet<&str> = PolicyKind::ALL.iter().map(|k| k.kind()).collect();
    assert_eq!(crds.keys().map(String::as_str).collect::<BTreeSet<_>>(), kinds);
    for kind in PolicyKind::ALL {
        let crd = &crds[kind.kind()];
        let name = format!("{}.{GROUP}", kind.plural());
        assert_eq!(crd.metadata.name.as_deref(), Some(name.as_str()));
        assert_eq!((crd.spec.group.as_str(), crd.spec.scope.as_str()), (GROUP, "Namespaced"));
        assert_eq!(crd.spec.names.plural, kind.plural());
        let [version] = crd.spec.versions.as_slice() else { panic!("{name}: one version") };
        assert_eq!(
            (version.name.as_str(), version.served, version.storage),
            (kind.version(), true, true)
        );
        let schema = version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref());
        let spec = schema.and_then(|s| s.properties.as_ref()?.get("spec")).expect("a spec schema");
        let fields: BTreeSet<&str> =
            spec.properties.iter().flatten().map(|(k, _)| k.as_str()).collect();
        let want: &[&str] = match kind {
            PolicyKind::Server => &["podSelector", "port", "proxyProtocol", "accessPolicy"],
            PolicyKind::AuthorizationPolicy => &["targetRef", "requiredAuthenticationRefs"],
            PolicyKind::MeshTls => &["identities", "identityRefs"],
            PolicyKind::Network => &["networks"],
            PolicyKind::HttpRoute => &["parentRefs", "hostnames", "rules"],
            PolicyKind::RateLimit => &["targetRef", "total", "identity", "overrides"],
        };
        assert_eq!(fields, want.iter().copied().collect(), "{name}: spec fields");
    }
    // The values that proxyProtocol and accessPolicy may take are the ones the code parses.
    let server = &crds["Server"].spec.versions[0];
    let spec = (server.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref()?.properties.as_ref()?.get("spec"))
        .and_then(|s| s.properties.clone())
        .expect("the Server spec schema");
    let values = |field: &str| -> Vec<Value> {
        spec[field].enum_.iter().flatten().map(|v| v.0.clone()).collect()
    };
    let meta = serde_json::from_value(json!({"name": "s", "namespace": "prod"})).expect("meta");
    let (protocols, policies) = (values("proxyProtocol"), values("accessPolicy"));
    assert_eq!((protocols.len(), policies.len()), (6, 6));
    for (field, value) in protocols
        .iter()
        .map(|v| ("proxyProtocol", v))
        .chain(policies.iter().map(|v| ("accessPolicy", v)))
    {
        let s = json!({"podSelector": {}, "port": 80, field: value});
        weft_destination::policy::model::PolicyObject::parse(PolicyKind::Server, &meta, &s)
            .unwrap_or_else(|e| panic!("{field} {value} is in the CRD but refused: {e}"));
    }

    let tmp = Dir::new("crds");
    let rendered = chart().render(&release(), &required_values(&pki(&tmp.0))).expect("renders");
    let objects = Objects::new(&rendered);
    let granted = run::granted(&objects, "weft-destination");
    for kind in PolicyKind::ALL {
        for verb in ["list", "watch"] {
            let want = (verb.to_owned(), GROUP.to_owned(), kind.plural().to_owned());
            assert!(granted.contains(&want), "the destination may not {verb} {}", kind.plural());
        }
    }
}

/// values.yaml is documented line by line: every key has a comment right above it, except
/// inside the Kubernetes objects passed through as they are (resources, security contexts,
/// scheduling), whose fields are Kubernetes' own.
#[test]
fn chart_values_are_documented() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/weft/values.yaml");
    let text = read(&path);
    let passthrough = [
        "resources",
        "podSecurityContext",
        "containerSecurityContext",
        "nodeSelector",
        "tolerations",
        "affinity",
        "podLabels",
        "podAnnotations",
        "excludedNamespaces",
    ];
    let mut inside: Option<usize> = None;
    let mut previous = "";
    let mut undocumented = Vec::new();
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let body = line.trim();
        if body.is_empty() || body.starts_with('#') {
            previous = body;
            continue;
        }
        if inside.is_some_and(|i| indent > i) {
            previous = body;
            continue;
        }
        inside = None;
        if let Some((key, _)) = body.split_once(':').filter(|_| !body.starts_with('-')) {
            if !previous.starts_with('#') {
                undocumented.push(key.to_owned());
            }
            if passthrough.contains(&key) {
                inside = Some(indent);
            }
        }
        previous = body;
    }
    assert!(undocumented.is_empty(), "values.yaml keys without a comment: {undocumented:?}");
}
