//! The real `weft injector` over HTTPS, with curl as an independent client: good reviews,
//! broken ones, a non-Pod, a 1 MiB pod, a body over the limit, a certificate swapped on disk,
//! namespace annotations through the watched cache (the fake API server); and `weft inject`
//! on a multi-document stream.

#[path = "../../injector/tests/support/review.rs"]
pub(crate) mod review;

use crate::support::Serving;
use std::{
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use review::{apply_strict, fixture, patch_of, pod_from, review as wrap, set_annotation};
use serde_json::{Value, json};

use crate::{
    kubeapi::FakeApi,
    support::{admin_request, eventually, metric, run, self_signed_cert},
};

fn weft() -> &'static str {
    env!("CARGO_BIN_EXE_weft")
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weft-e2e-injector-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A self-signed P-256 certificate for 127.0.0.1 and localhost, made by openssl.
fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (key, cert) =
        self_signed_cert(dir, name, &format!("weft-injector-{name}"), "DNS:localhost,IP:127.0.0.1");
    (cert, key)
}

/// A running `weft injector`, killed on drop.
struct Injector {
    child: Child,
    webhook: SocketAddr,
    admin: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Injector {
    fn start(cert: &Path, key: &Path, extra: &[&str], env: &[(&str, &Path)]) -> Injector {
        let mut cmd = Command::new(weft());
        cmd.args(["injector", "--listen-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .args(["--log-format", "json", "--cert-reload-interval", "200ms"])
            .args(extra)
            .env_remove("KUBECONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let serving = Serving::start(cmd, "weft injector", Duration::from_secs(20));
        let (webhook, admin) = (serving.addr("webhook"), serving.addr("admin"));
        let Serving { child, logs, .. } = serving;
        Injector { child, webhook, admin, logs }
    }

    /// POSTs `body` to /inject with curl, trusting `ca`; returns (HTTP status, JSON body).
    fn post(&self, ca: &Path, body: &[u8], extra: &[&str]) -> (u16, Value) {
        let dir = temp_dir(&format!("post-{}", self.webhook.port()));
        let file = dir.join("body.json");
        std::fs::write(&file, body).expect("write body");
        let (ok, out, err) = run(Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "20",
                "-H",
                "Content-Type: application/json",
                "-w",
                "\n%{http_code}",
            ])
            .arg("--cacert")
            .arg(ca)
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .args(extra)
            .arg(format!("https://127.0.0.1:{}/inject", self.webhook.port())));
        assert!(ok, "curl failed: {err}\nlog:\n{}", self.logs());
        let (json, code) = out.rsplit_once('\n').expect("status line");
        let value = serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
        (code.trim().parse().expect("status"), value)
    }

    fn metrics(&self) -> String {
        let (code, body) = admin_request(self.admin, "GET", "/metrics", "");
        assert_eq!(code, 200);
        body
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Injector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn static_namespaces(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("namespaces.yaml");
    std::fs::write(&path, yaml).expect("write namespaces");
    path
}

fn body(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("json")
}

fn injections(text: &str, outcome: &str, reason: &str) -> f64 {
    metric(text, "weft_injector_injections_total", &[("outcome", outcome), ("reason", reason)])
}

#[test]
fn injector_answers_every_review_over_https_and_keeps_serving() {
    let dir = temp_dir("https");
    let (cert, key) = make_cert(&dir, "a");
    let ns = static_namespaces(
        &dir,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n  annotations:\n    weft.dev/inject: enabled\n",
    );
    let inj = Injector::start(
        &cert,
        &key,
        &[
            "--source",
            "static",
            "--static-file",
            ns.to_str().expect("utf-8"),
            "--max-body-bytes",
            "4194304",
        ],
        &[],
    );
    assert_eq!(admin_request(inj.admin, "GET", "/ready", "").0, 200);
    assert_eq!(admin_request(inj.admin, "GET", "/live", "").0, 200);

    // A good review: a Deployment's pod in an enabled namespace, over HTTP/1.1 and HTTP/2.
    let pod = pod_from("deployment-web.json", "prod");
    let good = wrap("Pod", "pods", &pod);
    for http in ["--http1.1", "--http2"] {
        let (code, answer) = inj.post(&cert, &body(&good), &[http]);
        assert_eq!(code, 200);
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], good["request"]["uid"]);
        assert_eq!(answer["response"]["allowed"], true);
        let patch = patch_of(&answer).expect("a base64 JSONPatch");
        let (_, typed) = apply_strict(&pod, &patch);
        let inits: Vec<_> = typed
            .spec
            .expect("spec")
            .init_containers
            .into_iter()
            .flatten()
            .map(|c| c.name)
            .collect();
        assert_eq!(inits, ["weft-proxy-init", "weft-proxy"]);
    }

    // Malformed JSON: a refusal that says why, with a 200 (never a 500).
    let (code, answer) =
        inj.post(&cert, b"{\"apiVersion\": \"admission.k8s.io/v1\", \"kind\": ", &[]);
    assert_eq!(code, 200);
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["status"]["code"], 400);
    assert!(
        answer["response"]["status"]["message"].as_str().expect("message").contains("not JSON")
    );

    // A review of a Service: allowed unchanged.
    let svc = fixture("service-web.json");
    let svc_review = wrap("Service", "services", &svc);
    let (code, answer) = inj.post(&cert, &body(&svc_review), &[]);
    assert_eq!(code, 200);
    assert_eq!(answer["response"], json!({"uid": svc_review["request"]["uid"], "allowed": true}));

    // A huge pod (1 MiB of annotations) is reviewed like any other.
    let mut huge = pod_from("deployment-web.json", "prod");
    for i in 0..16 {
        set_annotation(&mut huge, &format!("example.com/blob-{i}"), &"x".repeat(64 * 1024));
    }
    let huge_review = wrap("Pod", "pods", &huge);
    let (code, answer) = inj.post(&cert, &body(&huge_review), &[]);
    assert_eq!(code, 200);
    let patch = patch_of(&answer).expect("the huge pod is injected");
    apply_strict(&huge, &patch);

    // Over the body limit: refused with 413 in the AdmissionResponse.
    let mut too_big = pod_from("deployment-web.json", "prod");
    set_annotation(&mut too_big, "example.com/blob", &"x".repeat(5 << 20));
    let (code, answer) = inj.post(&cert, &body(&wrap("Pod", "pods", &too_big)), &[]);
    assert_eq!(code, 200);
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["status"]["code"], 413);

    // dryRun: the same answer, not counted as an injection.
    let mut dry = good.clone();
    dry["request"]["dryRun"] = json!(true);
    let (_, answer) = inj.post(&cert, &body(&dry), &[]);
    assert!(patch_of(&answer).is_some());

    // Still serving, and the outcomes are counted.
    let (code, answer) = inj.post(&cert, &body(&good), &[]);
    assert_eq!((code, answer["response"]["allowed"].clone()), (200, json!(true)));
    let m = inj.metrics();
    assert_eq!(injections(&m, "injected", "enabled-on-namespace"), 4.0, "{m}");
    assert_eq!(injections(&m, "rejected", "malformed"), 1.0);
    assert_eq!(injections(&m, "allowed", "not-a-pod"), 1.0);
    assert_eq!(injections(&m, "rejected", "too-large"), 1.0);
    assert_eq!(metric(&m, "weft_injector_request_duration_seconds_count", &[]), 8.0);
}

#[test]
fn injector_reloads_its_certificate_when_the_files_change() {
    let dir = temp_dir("reload");
    let (cert_a, key_a) = make_cert(&dir, "a");
    let (cert_b, key_b) = make_cert(&dir, "b");
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    std::fs::copy(&cert_a, &cert).expect("copy");
    std::fs::copy(&key_a, &key).expect("copy");
    let ns = static_namespaces(&dir, "");
    let inj = Injector::start(
        &cert,
        &key,
        &["--source", "static", "--static-file", ns.to_str().expect("utf-8")],
        &[],
    );
    let review = body(&wrap("Pod", "pods", &pod_from("deployment-web.json", "prod")));
    assert_eq!(inj.post(&cert_a, &review, &[]).0, 200);

    // A broken pair is rejected and the old certificate kept.
    std::fs::write(&key, "not a key").expect("write");
    assert!(eventually(Duration::from_secs(10), || {
        metric(&inj.metrics(), "weft_injector_certificate_reloads_total", &[("result", "rejected")])
            >= 1.0
    }));
    assert_eq!(inj.post(&cert_a, &review, &[]).0, 200);

    // Renamed into place, as a Secret volume update does.
    std::fs::copy(&cert_b, dir.join("new.crt")).expect("copy");
    std::fs::copy(&key_b, dir.join("new.key")).expect("copy");
    std::fs::rename(dir.join("new.key"), &key).expect("rename");
    std::fs::rename(dir.join("new.crt"), &cert).expect("rename");
    let curl_ok = |ca: &Path| {
        run(Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "--max-time", "5", "--cacert"])
            .arg(ca)
            .arg(format!("https://127.0.0.1:{}/inject", inj.webhook.port())))
        .0
    };
    assert!(eventually(Duration::from_secs(10), || curl_ok(&cert_b)), "{}", inj.logs());
    assert!(!curl_ok(&cert_a), "the old certificate is no longer served");
}

/// Namespace annotations through the kube reflector, against the fake API server.
#[test]
fn injector_reads_namespace_annotations_from_its_watch_cache() {
    let dir = temp_dir("cache");
    let (cert, key) = make_cert(&dir, "a");
    let api = FakeApi::start();
    let namespace = |name: &str, inject: &str| {
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "annotations": {"weft.dev/inject": inject}}})
    };
    api.put("/api/v1/namespaces", namespace("prod", "enabled"));
    let kubeconfig = api.kubeconfig();
    let inj = Injector::start(&cert, &key, &[], &[("KUBECONFIG", &kubeconfig)]);
    assert!(
        eventually(Duration::from_secs(10), || admin_request(inj.admin, "GET", "/ready", "").0
            == 200),
        "never ready: {}",
        inj.logs()
    );
    let review_in = |ns: &str| body(&wrap("Pod", "pods", &pod_from("deployment-web.json", ns)));
    let reason = |ns: &str| {
        let (_, answer) = inj.post(&cert, &review_in(ns), &[]);
        if patch_of(&answer).is_some() { "injected" } else { "not injected" }
    };
    assert_eq!(reason("prod"), "injected");
    assert_eq!(reason("prod"), "injected");
    let gets = |name: &str| {
        api.requests()
            .iter()
            .filter(|r| r.starts_with(&format!("GET /api/v1/namespaces/{name}")))
            .count()
    };
    assert_eq!(gets("prod"), 0, "pods must be decided from the cache: {:?}", api.requests());

    // The annotation changes: the watch brings it to the next pods.
    api.put("/api/v1/namespaces", namespace("prod", "disabled"));
    assert!(eventually(Duration::from_secs(10), || reason("prod") == "not injected"));
    api.put("/api/v1/namespaces", namespace("fresh", "enabled"));
    assert!(eventually(Duration::from_secs(10), || reason("fresh") == "injected"));
    // A namespace nobody knows: decided on the pod alone, with a warning.
    let (_, answer) = inj.post(&cert, &review_in("nowhere"), &[]);
    assert_eq!(answer["response"]["allowed"], true);
    assert!(
        answer["response"]["warnings"][0].as_str().unwrap_or_default().contains("nowhere"),
        "{answer}"
    );
}

const STREAM: &str = "# A stream as people write them: comments, odd spacing, several kinds.
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings   # trailing comment
data:
  mode:    fast
  script: |
    echo one
    ---not a separator
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: prod
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.27
--- # a list
apiVersion: v1
kind: List
items:
- apiVersion: batch/v1
  kind: Job
  metadata: {name: migrate}
  spec:
    template:
      spec:
        restartPolicy: Never
        containers: [{name: migrate, image: busybox:1.36}]
- apiVersion: v1
  kind: Service
  metadata: {name: web}
  spec: {ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: node-agent
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata:
      labels: {app: agent}
    spec:
      hostNetwork: true
      containers: [{name: agent, image: agent:1}]
";

/// `weft inject ARGS -` with `input` on stdin; it must succeed: (stdout, stderr).
fn weft_inject(args: &[&str], input: &str) -> (String, String) {
    let mut child = Command::new(weft())
        .arg("inject")
        .args(args)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weft inject");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8(out.stdout).expect("utf-8"), String::from_utf8(out.stderr).expect("utf-8"))
}

#[test]
fn weft_inject_round_trips_untouched_documents() {
    let inject = |args: &[&str]| weft_inject(args, STREAM);
    let docs = |s: &str| -> Vec<String> {
        let mut docs = vec![String::new()];
        for line in s.split_inclusive('\n') {
            if line.starts_with("---") {
                docs.push(String::new());
            }
            docs.last_mut().expect("doc").push_str(line);
        }
        docs
    };
    let (out, err) = inject(&[]);
    let (before, after) = (docs(STREAM), docs(&out));
    assert_eq!(before.len(), after.len());
    // Header, ConfigMap and the hostNetwork DaemonSet: byte for byte.
    for i in [0, 1, 4] {
        assert_eq!(before[i], after[i], "document {i} changed");
    }
    // A document without its `---` line.
    let yaml = |s: &str| -> Value {
        let body = if s.starts_with("---") { s.split_once('\n').map_or("", |(_, b)| b) } else { s };
        serde_yaml_ng::from_str(body).expect("YAML")
    };
    let web = yaml(&after[2]);
    assert_eq!(web["spec"]["template"]["metadata"]["annotations"]["weft.dev/inject"], "enabled");
    let mut expected = yaml(&before[2]);
    expected["spec"]["template"]["metadata"]["annotations"] = json!({"weft.dev/inject": "enabled"});
    assert_eq!(web, expected, "nothing else changes");
    assert!(after[3].starts_with("--- # a list\n"));
    let list = yaml(&after[3]);
    assert_eq!(
        list["items"][0]["spec"]["template"]["metadata"]["annotations"]["weft.dev/inject"],
        "enabled"
    );
    assert_eq!(list["items"][1], yaml(&before[3])["items"][1]);
    for expect in [
        "deployment/web: annotated",
        "job/migrate: annotated",
        "service/web: no pods",
        "daemonset/node-agent",
    ] {
        assert!(err.contains(expect), "{expect:?} not in:\n{err}");
    }

    // --manual renders the sidecar with the webhook's builder; the same untouched documents.
    let (out, err) = inject(&["--manual"]);
    let after = docs(&out);
    for i in [0, 1, 4] {
        assert_eq!(before[i], after[i], "document {i} changed");
    }
    let web = yaml(&after[2]);
    let inits = &web["spec"]["template"]["spec"]["initContainers"];
    assert_eq!(inits[0]["name"], "weft-proxy-init");
    assert_eq!(inits[1]["name"], "weft-proxy");
    assert!(err.contains("deployment/web: proxy injected"), "{err}");
    // The manifest, injected by hand, is left alone by the webhook later.
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": web["spec"]["template"]["metadata"].clone(),
                         "spec": web["spec"]["template"]["spec"].clone()});
    pod["metadata"]["namespace"] = json!("prod");
    let report = weft_injector::build(&pod, "prod", &Default::default(), &Default::default());
    assert_eq!(
        report.outcome,
        weft_injector::Outcome::Skipped(weft_injector::Skip::AlreadyInjected)
    );
    assert!(report.patch.0.is_empty());
}

/// Every setting the injector gives the proxy must be one the proxy reads: a name that
/// drifts on either side would be ignored silently (a policy the proxy never enforced).
#[test]
fn every_proxy_setting_the_injector_writes_is_one_the_proxy_reads() {
    const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: prod}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations:
        weft.dev/inject: enabled
        config.weft.dev/proxy-cpu-limit: "2"
        config.weft.dev/default-inbound-policy: deny
        config.weft.dev/access-log: json
    spec:
      containers:
        - name: web
          image: nginx
          ports: [{name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {port: http, path: /ready}}
          livenessProbe: {grpc: {port: 9090}}
"#;
    let (out, _) = weft_inject(&["--manual"], DEPLOYMENT);
    let doc: Value = serde_yaml_ng::from_str(&out).expect("YAML");
    let spec = &doc["spec"]["template"]["spec"];
    let containers = [&spec["initContainers"], &spec["containers"]];
    let proxy = containers
        .iter()
        .filter_map(|list| list.as_array())
        .flatten()
        .find(|c| c["name"] == "weft-proxy")
        .unwrap_or_else(|| panic!("no weft-proxy container in {doc}"));
    let names: Vec<&str> = proxy["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .filter(|n| n.starts_with("WEFT_PROXY_"))
        .collect();
    let known = weft_proxy::config::RunArgs::env_names();
    for name in &names {
        assert!(known.iter().any(|k| k == name), "the proxy has no setting {name}");
    }
    for must in [
        "WEFT_PROXY_INBOUND_DEFAULT_POLICY",
        "WEFT_PROXY_INBOUND_PROBE_ROUTES",
        "WEFT_PROXY_INBOUND_GRPC_PROBE_PORTS",
        "WEFT_PROXY_CORES",
        "WEFT_PROXY_IDENTITY_NAME",
        "WEFT_PROXY_ACCESS_LOG",
    ] {
        assert!(names.contains(&must), "{must} missing from {names:?}");
    }
}

/// Accepts exactly one certificate: the injector's self-signed one, which WebPKI refuses
/// as an end entity because openssl marks it a CA.
#[derive(Debug)]
struct Pinned(Vec<u8>, Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.0.as_slice() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.1.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = &self.1.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.1.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection to the injector, accepting exactly its certificate `cert`.
async fn tls_connect(
    cert: &Path,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let pem = std::fs::read(cert).expect("read cert");
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).expect("pem");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned(pem.contents, provider)))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.expect("tls")
}

/// A client that sends a review's headers and then stalls its body is answered 408 and cut
/// off within the request timeout, counted; the injector keeps serving others.
#[test]
fn injector_cuts_off_a_review_whose_body_stalls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = temp_dir("stall");
    let (cert, key) = make_cert(&dir, "a");
    let ns = static_namespaces(&dir, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n");
    let args = ["--source", "static", "--static-file", ns.to_str().expect("utf-8")];
    let inj =
        Injector::start(&cert, &key, &[&args[..], &["--request-timeout", "1s"]].concat(), &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let (answer, elapsed) = rt.block_on(async {
        let mut tls = tls_connect(&cert, inj.webhook).await;
        let head = "POST /inject HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
                    Content-Length: 100000\r\n\r\n{\"kind\":";
        tls.write_all(head.as_bytes()).await.expect("write");
        tls.flush().await.expect("flush");
        let start = std::time::Instant::now();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer));
        let _ = read.await.expect("the stalled review was not cut off");
        (String::from_utf8_lossy(&answer).into_owned(), start.elapsed())
    });
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request timeout"), "{answer}");
    assert!(elapsed < Duration::from_secs(5), "cut off after {elapsed:?}");
    let m = inj.metrics();
    assert_eq!(
        metric(&m, "weft_injector_requests_refused_total", &[("reason", "deadline")]),
        1.0,
        "{m}"
    );
    let good = wrap("Pod", "pods", &pod_from("deployment-web.json", "prod"));
    let (code, _) = inj.post(&cert, &body(&good), &[]);
    assert_eq!(code, 200);
}

/// A client that does not trust the webhook's certificate (as an API server with a stale
/// caBundle) fails its handshake, and the failure is counted.
#[test]
fn injector_counts_failed_tls_handshakes() {
    let dir = temp_dir("handshakes");
    let (cert, key) = make_cert(&dir, "a");
    let (other_ca, _) = make_cert(&dir, "other");
    let ns = static_namespaces(&dir, "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n");
    let args = ["--source", "static", "--static-file", ns.to_str().expect("utf-8")];
    let inj = Injector::start(&cert, &key, &args, &[]);
    let m = inj.metrics();
    assert_eq!(metric(&m, "weft_injector_tls_handshake_errors_total", &[]), 0.0, "{m}");
    let file = dir.join("review.json");
    std::fs::write(&file, b"{}").expect("write");
    let (ok, _, err) = run(Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&other_ca)
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("https://127.0.0.1:{}/inject", inj.webhook.port())));
    assert!(!ok, "curl trusted the wrong CA");
    assert!(err.contains("certificate") || err.contains("SSL"), "{err}");
    let counted = eventually(Duration::from_secs(10), || {
        metric(&inj.metrics(), "weft_injector_tls_handshake_errors_total", &[]) == 1.0
    });
    assert!(counted, "{}", inj.metrics());
}
