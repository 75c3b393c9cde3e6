//! `weft check`: the installation health check (Linkerd's `linkerd check`). Reads the
//! control plane's objects through the Kubernetes API — the Deployments, the Gateway API's
//! HTTPRoute CRD (which traffic splits need; a warning without it), the identity PKI,
//! the injector's webhook registration and TLS, and the meshed pods — and prints one line per
//! check, grouped, with what to do about each problem. Exit code: 0 when nothing failed
//! (warnings allowed), 1 when a check failed, 2 for bad flags or an unusable kubeconfig.
//! The object names are the Helm chart's (charts/weft/templates).

mod pki;

use std::{
    collections::BTreeSet,
    fmt,
    future::Future,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, ContainerStatus, Namespace, Pod},
};
use kube::{
    Api, Client, Config,
    api::ListParams,
    config::{KubeConfigOptions, Kubeconfig},
};
use serde_json::json;
use weft_injector::{annotations as ann, values::image_version};

use crate::identity::parse_duration;

/// The control-plane Deployments of the chart, in the order they matter: without identity
/// no proxy gets a certificate, without destination no discovery, without the injector no
/// new meshed pod.
const DEPLOYMENTS: [&str; 3] = ["weft-identity", "weft-destination", "weft-injector"];
/// The injector's settings (charts/weft/templates/proxy-config.yaml): the proxy image new pods get.
const PROXY_CONFIG: &str = "weft-proxy-config";
const PROXY_IMAGE_KEY: &str = "WEFT_INJECTOR_PROXY_IMAGE";
/// The CRDs of the Gateway API's routes that `weft destination` reads (in the version it
/// watches), the cluster's to install, not the chart's: each check's name, the CRD, what
/// it gives, and what is lost without it.
const GATEWAY_CRDS: [(&str, &str, &str, &str); 2] = [
    (
        "Gateway API HTTPRoute CRD is installed",
        "httproutes.gateway.networking.k8s.io",
        "traffic splits, inbound routes",
        "HTTPRoutes cannot split traffic (canary releases) or route a Server's requests",
    ),
    (
        "Gateway API GRPCRoute CRD is installed",
        "grpcroutes.gateway.networking.k8s.io",
        "inbound gRPC routes",
        "GRPCRoutes cannot route (or authorize) a gRPC Server's calls",
    ),
];
const GATEWAY_VERSION: &str = "v1";
const GATEWAY_API_INSTALL: &str = "kubectl apply -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.3.0/standard-install.yaml";
/// Pods listed per API request.
const PAGE: u32 = 500;
/// Pods named in one line before "and N more".
const NAMED: usize = 5;

#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Namespace of the control plane (where the chart was installed).
    #[arg(long, short = 'n', env = "WEFT_CHECK_NAMESPACE", default_value = "weft")]
    namespace: String,
    /// Kubeconfig file; without it, KUBECONFIG or ~/.kube/config, else the in-cluster
    /// service account (kube's default loading).
    #[arg(long, env = "WEFT_CHECK_KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use instead of the current one.
    #[arg(long, env = "WEFT_CHECK_CONTEXT")]
    context: Option<String>,
    /// Output: one line per check (`text`), or a JSON array of
    /// {group, name, status: ok|warning|error, message} (`json`).
    #[arg(long, short = 'o', env = "WEFT_CHECK_OUTPUT", value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Warn about trust anchors, the issuer and the injector's certificate expiring within
    /// this time (e.g. 60d, 720h).
    #[arg(long, env = "WEFT_CHECK_EXPIRY_WARNING", default_value = "60d", value_parser = parse_duration)]
    expiry_warning: Duration,
    /// Check the proxies of this namespace only; default: all namespaces.
    #[arg(long, env = "WEFT_CHECK_PROXY_NAMESPACE")]
    proxy_namespace: Option<String>,
    /// Longest wait for any one answer of the API server.
    #[arg(long, env = "WEFT_CHECK_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Warning,
    Error,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Error => "error",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone)]
struct Outcome {
    group: &'static str,
    name: String,
    status: Status,
    message: String,
}

/// The results so far, and the group being checked.
#[derive(Debug, Default)]
struct Report {
    group: &'static str,
    outcomes: Vec<Outcome>,
}

impl Report {
    fn group(&mut self, group: &'static str) {
        self.group = group;
    }

    fn push(&mut self, name: &str, status: Status, message: String) {
        self.outcomes.push(Outcome { group: self.group, name: name.to_owned(), status, message });
    }

    fn ok(&mut self, name: &str) {
        self.push(name, Status::Ok, String::new());
    }

    /// A passed check with a fact worth showing (a count, a version).
    fn ok_with(&mut self, name: &str, detail: impl Into<String>) {
        self.push(name, Status::Ok, detail.into());
    }

    fn warn(&mut self, name: &str, what: impl fmt::Display, hint: impl fmt::Display) {
        self.push(name, Status::Warning, format!("{what} — {hint}"));
    }

    fn fail(&mut self, name: &str, what: impl fmt::Display, hint: impl fmt::Display) {
        self.push(name, Status::Error, format!("{what} — {hint}"));
    }

    fn failed(&self) -> bool {
        self.outcomes.iter().any(|o| o.status == Status::Error)
    }

    fn text(&self) -> String {
        let mut out = String::new();
        let mut group = "";
        for o in &self.outcomes {
            if o.group != group {
                if !group.is_empty() {
                    out.push('\n');
                }
                group = o.group;
                out.push_str(&format!("{group}\n{}\n", "-".repeat(group.chars().count())));
            }
            let line = match (o.status, o.message.is_empty()) {
                (Status::Ok, true) => format!("✓ {}", o.name),
                (Status::Ok, false) => format!("✓ {} ({})", o.name, o.message),
                (Status::Warning, _) => format!("‼ {}: {}", o.name, o.message),
                (Status::Error, _) => format!("✗ {}: {}", o.name, o.message),
            };
            out.push_str(&line);
            out.push('\n');
        }
        let count = |s| self.outcomes.iter().filter(|o| o.status == s).count();
        out.push_str(&format!(
            "\nStatus check results: {} passed, {} warnings, {} failed\n",
            count(Status::Ok),
            count(Status::Warning),
            count(Status::Error)
        ));
        out
    }

    fn json(&self) -> String {
        let items: Vec<_> = self
            .outcomes
            .iter()
            .map(|o| {
                json!({"group": o.group, "name": o.name, "status": o.status.as_str(), "message": o.message})
            })
            .collect();
        serde_json::to_string_pretty(&items).unwrap_or_else(|_| "[]".into())
    }
}

pub fn run(args: CheckArgs) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weft check: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let output = args.output;
    let report = match rt.block_on(check(args)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("weft check: {}", one_line(e.chain()));
            return ExitCode::from(2);
        }
    };
    match output {
        Output::Text => print!("{}", report.text()),
        Output::Json => println!("{}", report.json()),
    }
    if report.failed() { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

/// Loads the client configuration (an error here is bad config: exit 2), then runs every
/// check. Only the API server and the namespace gate the rest: without them every other
/// check would fail for the same reason.
async fn check(args: CheckArgs) -> anyhow::Result<Report> {
    let CheckArgs {
        namespace,
        kubeconfig,
        context,
        output: _,
        expiry_warning,
        proxy_namespace,
        timeout,
    } = args;
    let mut config = client_config(kubeconfig, context).await?;
    // A check answers promptly or says it could not: no waiting on a dead server, and no
    // retries that would hide a flaky one.
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    config.default_retry = false;
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    let k = Kube { client, ns: namespace, timeout, server };
    let now = unix_now();
    let mut report = Report::default();

    report.group("kubernetes-api");
    if !kubernetes_api(&k, &mut report).await {
        return Ok(report);
    }
    report.group("control-plane");
    control_plane(&k, &mut report).await;
    gateway_api(&k, &mut report).await;
    report.group("identity");
    pki::identity(&k, &mut report, now, expiry_warning).await;
    report.group("injector");
    pki::injector(&k, &mut report, now, expiry_warning).await;
    report.group("data-plane");
    data_plane(&k, &mut report, proxy_namespace.as_deref()).await;
    Ok(report)
}

async fn client_config(
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
) -> anyhow::Result<Config> {
    let options = KubeConfigOptions { context, ..KubeConfigOptions::default() };
    match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(&path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .with_context(|| format!("using the kubeconfig {}", path.display()))
        }
        None if options.context.is_some() => {
            Config::from_kubeconfig(&options).await.context("loading the kubeconfig")
        }
        None => Config::infer().await.context(
            "no Kubernetes configuration: no kubeconfig (--kubeconfig, KUBECONFIG, ~/.kube/config) and not in a cluster",
        ),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The client, the control-plane namespace, and reads bounded by the timeout.
struct Kube {
    client: Client,
    ns: String,
    timeout: Duration,
    server: String,
}

impl Kube {
    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Waits for `call` no longer than the timeout; errors described for a person.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(describe(&e)),
            Err(_) => Err(format!("no answer within {}", human(self.timeout))),
        }
    }

    /// `kind ns/name` read with `get`: `Ok(None)` when it does not exist.
    async fn get<K>(&self, api: &Api<K>, name: &str) -> Result<Option<K>, String>
    where
        K: Clone + serde::de::DeserializeOwned + fmt::Debug,
    {
        self.call(api.get_opt(name)).await
    }
}

/// A kube error as one line, with its causes (the cause of a failed connection is the part
/// that says what happened).
fn describe(e: &kube::Error) -> String {
    if let kube::Error::Api(s) = e {
        return format!("{} ({} {})", s.message, s.code, s.reason);
    }
    one_line(std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |e| e.source()))
}

/// Errors and their causes joined by ": ", leaving out a cause its parent already printed.
fn one_line<'a>(chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>) -> String {
    let mut out = String::new();
    for e in chain {
        let text = e.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// `60d`, `36h`, `90s`: a duration as the flags take it.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// "1 pod", "2 pods".
fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// "a, b, c and 4 more".
fn list(items: &[String]) -> String {
    let shown = items.iter().take(NAMED).cloned().collect::<Vec<_>>().join(", ");
    match items.len().saturating_sub(NAMED) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

/// Whether the API server answers, and whether the control-plane namespace exists. False
/// when the other checks cannot run.
async fn kubernetes_api(k: &Kube, r: &mut Report) -> bool {
    const QUERY: &str = "can query the Kubernetes API";
    const NAMESPACE: &str = "control-plane namespace exists";
    match k.call(k.client.apiserver_version()).await {
        Ok(info) => r.ok_with(QUERY, format!("Kubernetes {}", info.git_version)),
        Err(e) => {
            r.fail(
                QUERY,
                format!("the API server at {} cannot be reached: {e}", k.server),
                "check the kubeconfig's server, credentials and context, and that the cluster is up (kubectl cluster-info)",
            );
            return false;
        }
    }
    let namespaces: Api<Namespace> = Api::all(k.client.clone());
    match k.get(&namespaces, &k.ns).await {
        Ok(Some(_)) => {
            r.ok(NAMESPACE);
            true
        }
        Ok(None) => {
            r.fail(
                NAMESPACE,
                format!("namespace {} not found", k.ns),
                format!(
                    "install the control plane there (helm install weft charts/weft -n {} --create-namespace …), or name its namespace with --namespace",
                    k.ns
                ),
            );
            false
        }
        Err(e) => {
            r.fail(
                NAMESPACE,
                format!("cannot read namespace {}: {e}", k.ns),
                "the check needs to get namespaces, Deployments, ConfigMaps, Secrets and Services in the control-plane namespace, the MutatingWebhookConfiguration and pods (kubectl auth can-i)",
            );
            false
        }
    }
}

/// Each Deployment of the chart exists and has all its replicas available.
async fn control_plane(k: &Kube, r: &mut Report) {
    let api: Api<Deployment> = k.api();
    for name in DEPLOYMENTS {
        let check = format!("{name} deployment is available");
        let object = format!("deployment {}/{name}", k.ns);
        let d = match k.get(&api, name).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                r.fail(
                    &check,
                    format!("{object} not found"),
                    format!(
                        "install or upgrade the chart into {} (helm upgrade --install weft charts/weft -n {} …)",
                        k.ns, k.ns
                    ),
                );
                continue;
            }
            Err(e) => {
                r.fail(&check, format!("cannot read {object}: {e}"), "check your access to it");
                continue;
            }
        };
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let available = d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0);
        if desired == 0 {
            r.fail(
                &check,
                format!("{object} is scaled to 0 replicas"),
                format!("kubectl -n {} scale deployment {name} --replicas=1", k.ns),
            );
        } else if available < desired {
            r.fail(
                &check,
                format!("{object} has {available} of {desired} replicas available"),
                format!(
                    "see why: kubectl -n {ns} describe deployment {name}; kubectl -n {ns} get pods -l app.kubernetes.io/component={component}; kubectl -n {ns} logs deployment/{name}",
                    ns = k.ns,
                    component = name.trim_start_matches("weft-"),
                ),
            );
        } else {
            r.ok(&check);
        }
    }
}

/// The Gateway API's route CRDs are there, serving the version the destination watches.
/// Only warnings without them: splits and Gateway API routes need them, nothing else does.
async fn gateway_api(k: &Kube, r: &mut Report) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(k.client.clone());
    for (check, crd_name, gives, lost) in GATEWAY_CRDS {
        match k.get(&api, crd_name).await {
            Ok(Some(crd)) => {
                let served: Vec<String> = crd
                    .spec
                    .versions
                    .iter()
                    .filter(|v| v.served)
                    .map(|v| v.name.clone())
                    .collect();
                if served.iter().any(|v| v == GATEWAY_VERSION) {
                    r.ok_with(check, format!("{gives}; serves {}", served.join(", ")));
                } else {
                    r.warn(
                        check,
                        format!(
                            "CRD {crd_name} serves {} but not {GATEWAY_VERSION}, which weft destination reads: {lost}",
                            list(&served)
                        ),
                        format!("upgrade the Gateway API CRDs to v1.1 or later ({GATEWAY_API_INSTALL})"),
                    );
                }
            }
            Ok(None) => r.warn(
                check,
                format!("no CRD {crd_name}: {lost}; the rest of the mesh works without it"),
                format!("for {gives}, install the Gateway API CRDs, v1.1 or later ({GATEWAY_API_INSTALL})"),
            ),
            Err(e) => r.warn(
                check,
                format!("cannot read CRD {crd_name}: {e}"),
                "the check needs to get customresourcedefinitions (kubectl auth can-i get customresourcedefinitions)",
            ),
        }
    }
}

/// The proxy container of a meshed pod, its status, and the proxy version it runs.
struct Proxy {
    pod: String,
    namespace: String,
    ready: bool,
    why: String,
    version: String,
}

fn proxy_of(pod: &Pod) -> Option<Proxy> {
    let spec = pod.spec.as_ref()?;
    // A native sidecar is an init container; the older layout a regular container.
    let container = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == ann::PROXY_CONTAINER)?;
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.clone()).unwrap_or_else(|| "Pending".into());
    if matches!(phase.as_str(), "Succeeded" | "Failed") {
        // A finished pod's proxy has stopped with it, as it should.
        return None;
    }
    let cs: Option<&ContainerStatus> = status.and_then(|s| {
        s.init_container_statuses
            .iter()
            .flatten()
            .chain(s.container_statuses.iter().flatten())
            .find(|c| c.name == ann::PROXY_CONTAINER)
    });
    let ready = cs.is_some_and(|c| c.ready);
    let why = match cs {
        None => format!("{phase}, no status for {} yet", ann::PROXY_CONTAINER),
        Some(c) => {
            let state = c.state.as_ref();
            let waiting = state.and_then(|s| s.waiting.as_ref()).and_then(|w| w.reason.clone());
            let terminated = state.and_then(|s| s.terminated.as_ref()).map(|t| {
                format!("terminated: {} (exit {})", t.reason.as_deref().unwrap_or("?"), t.exit_code)
            });
            let state = waiting.or(terminated).unwrap_or_else(|| "running, not ready".into());
            match c.restart_count {
                0 => state,
                n => format!("{state}, {n} restarts"),
            }
        }
    };
    let meta = &pod.metadata;
    let version = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ann::PROXY_VERSION).cloned())
        .or_else(|| container.image.as_deref().map(|i| image_version(i).to_owned()))
        .unwrap_or_default();
    Some(Proxy {
        pod: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        ready,
        why,
        version,
    })
}

/// Every pod with the proxy (in all namespaces or one): its container is ready, and it runs
/// the version the injector gives new pods.
async fn data_plane(k: &Kube, r: &mut Report, only: Option<&str>) {
    const READY: &str = "data-plane proxies are ready";
    const VERSION: &str = "data-plane proxies are up to date";
    let api: Api<Pod> = match only {
        Some(ns) => Api::namespaced(k.client.clone(), ns),
        None => Api::all(k.client.clone()),
    };
    let scope = only.map_or("all namespaces".to_owned(), |ns| format!("namespace {ns}"));
    let mut proxies = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = match k.call(api.list(&params)).await {
            Ok(p) => p,
            Err(e) => {
                r.fail(
                    READY,
                    format!("cannot list pods in {scope}: {e}"),
                    "the check needs to list pods (kubectl auth can-i list pods -A)",
                );
                return;
            }
        };
        proxies.extend(page.items.iter().filter_map(proxy_of));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = ListParams::default().limit(PAGE).continue_token(&token),
            None => break,
        }
    }
    if proxies.is_empty() {
        r.ok_with(READY, format!("no meshed pods in {scope}"));
        return;
    }
    let namespaces: BTreeSet<&str> = proxies.iter().map(|p| p.namespace.as_str()).collect();
    let not_ready: Vec<&Proxy> = proxies.iter().filter(|p| !p.ready).collect();
    if not_ready.is_empty() {
        r.ok_with(
            READY,
            format!(
                "{} in {}",
                plural(proxies.len(), "meshed pod"),
                plural(namespaces.len(), "namespace")
            ),
        );
    } else {
        let first = not_ready[0];
        let names: Vec<String> =
            not_ready.iter().map(|p| format!("{}/{} ({})", p.namespace, p.pod, p.why)).collect();
        r.fail(
            READY,
            format!(
                "{} of {} proxies are not ready: {}",
                not_ready.len(),
                proxies.len(),
                list(&names)
            ),
            format!(
                "see why: kubectl -n {ns} describe pod {pod}; kubectl -n {ns} logs {pod} -c {c}",
                ns = first.namespace,
                pod = first.pod,
                c = ann::PROXY_CONTAINER
            ),
        );
    }

    let cm: Api<ConfigMap> = k.api();
    let expected = match k.get(&cm, PROXY_CONFIG).await {
        Ok(Some(cm)) => cm.data.and_then(|d| d.get(PROXY_IMAGE_KEY).cloned()),
        Ok(None) | Err(_) => None,
    };
    let Some(image) = expected else {
        r.warn(
            VERSION,
            format!(
                "cannot tell: configmap {}/{PROXY_CONFIG} has no {PROXY_IMAGE_KEY}, the proxy image the injector uses",
                k.ns
            ),
            "upgrade the chart, which writes it",
        );
        return;
    };
    let expected = image_version(&image);
    let old: Vec<String> = proxies
        .iter()
        .filter(|p| p.version != expected)
        .map(|p| format!("{}/{} ({})", p.namespace, p.pod, p.version))
        .collect();
    if old.is_empty() {
        r.ok(VERSION);
    } else {
        r.warn(
            VERSION,
            format!(
                "{} of {} proxies do not run {expected}, the version the injector gives new pods: {}",
                old.len(),
                proxies.len(),
                list(&old)
            ),
            "restart their workloads to inject the current proxy (kubectl -n <namespace> rollout restart deployment/<name>)",
        );
    }
}
