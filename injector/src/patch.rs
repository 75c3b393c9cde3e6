//! The pure patch builder: a pod (as JSON), its namespace's annotations and the injector's
//! config in; a JSON patch (RFC 6902) and a report of what was done, or why not, out. The
//! webhook and `weft inject --manual` both use it, so a manifest injected on a laptop and
//! a pod injected by the cluster get the same proxy.

use std::{collections::BTreeMap, fmt};

use json_patch::{AddOperation, Patch, PatchOperation, jsonptr::PointerBuf};
use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use serde_json::Value;

use crate::{
    annotations::{self as ann, Layered, Source},
    config::{ADMIN_PORT, CONTROL_PORT, INBOUND_PORT, InjectorConfig, OUTBOUND_PORT},
    probes::ProbeRoutes,
    spec,
};

/// What the builder decided, with the patch that carries it out (empty unless injected).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub outcome: Outcome,
    pub patch: Patch,
    /// Things the user should fix that did not stop the injection (unknown config keys…).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The proxy was added, because injection was enabled where `Source` says.
    Injected(Source),
    Skipped(Skip),
    /// Injection was asked for but cannot be done as asked: each message says why.
    Invalid {
        reason: InvalidReason,
        messages: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Neither the pod nor its namespace has `weft.dev/inject: enabled`.
    NotEnabled,
    Disabled(Source),
    /// The pod carries the Weft proxy already: injecting again is a no-op.
    AlreadyInjected,
    HostNetwork,
    /// The pod carries another mesh's proxy (named).
    OtherMesh(String),
    ControlPlane,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// An annotation value that cannot be used.
    Annotation,
    /// The pod uses a port or name the proxy needs.
    Conflict,
    /// The object is not a well-formed Pod.
    Pod,
}

impl Outcome {
    /// `(outcome, reason)` labels for metrics and logs: a small, fixed set of values.
    pub fn labels(&self) -> (&'static str, &'static str) {
        match self {
            Outcome::Injected(Source::Pod) => ("injected", "enabled-on-pod"),
            Outcome::Injected(Source::Namespace) => ("injected", "enabled-on-namespace"),
            Outcome::Skipped(s) => ("skipped", s.reason()),
            Outcome::Invalid { reason, .. } => (
                "invalid",
                match reason {
                    InvalidReason::Annotation => "invalid-annotation",
                    InvalidReason::Conflict => "conflict",
                    InvalidReason::Pod => "invalid-pod",
                },
            ),
        }
    }
}

impl Skip {
    pub fn reason(&self) -> &'static str {
        match self {
            Skip::NotEnabled => "not-enabled",
            Skip::Disabled(Source::Pod) => "disabled-on-pod",
            Skip::Disabled(Source::Namespace) => "disabled-on-namespace",
            Skip::AlreadyInjected => "already-injected",
            Skip::HostNetwork => "host-network",
            Skip::OtherMesh(_) => "other-mesh",
            Skip::ControlPlane => "control-plane",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Injected(s) => {
                write!(f, "proxy injected ({} enabled on the {})", ann::INJECT, noun(*s))
            }
            Outcome::Skipped(Skip::NotEnabled) => {
                write!(
                    f,
                    "not injected: {} is not enabled on the pod or its namespace",
                    ann::INJECT
                )
            }
            Outcome::Skipped(Skip::Disabled(s)) => {
                write!(f, "not injected: {}=disabled on the {}", ann::INJECT, noun(*s))
            }
            Outcome::Skipped(Skip::AlreadyInjected) => {
                f.write_str("already injected: nothing to do")
            }
            Outcome::Skipped(Skip::HostNetwork) => f.write_str(
                "not injected: the pod uses the host's network, which the proxy must not redirect",
            ),
            Outcome::Skipped(Skip::OtherMesh(m)) => {
                write!(f, "not injected: the pod already has another mesh's proxy ({m})")
            }
            Outcome::Skipped(Skip::ControlPlane) => {
                f.write_str("not injected: the pod belongs to the Weft control plane")
            }
            Outcome::Invalid { messages, .. } => {
                write!(f, "cannot inject the proxy: {}", messages.join("; "))
            }
        }
    }
}

/// The pod's terminationGracePeriodSeconds (30 when unset, as Kubernetes) in milliseconds;
/// saturating: the field is any i64 the API server accepted.
fn grace_ms(seconds: Option<i64>) -> u64 {
    u64::try_from(seconds.unwrap_or(30)).unwrap_or(0).saturating_mul(1000)
}

fn noun(s: Source) -> &'static str {
    match s {
        Source::Pod => "pod",
        Source::Namespace => "namespace",
    }
}

/// Containers of other meshes' injectors, and the annotations they leave.
const OTHER_MESH_CONTAINERS: [&str; 7] = [
    "linkerd-proxy",
    "linkerd-init",
    "istio-proxy",
    "istio-init",
    "istio-validation",
    "kuma-sidecar",
    "kuma-init",
];
const OTHER_MESH_ANNOTATIONS: [&str; 3] =
    ["linkerd.io/proxy-version", "sidecar.istio.io/status", "kuma.io/sidecar-injected"];

/// Builds the patch that adds the proxy to `pod` (a Pod object as JSON), living in
/// `namespace` whose annotations are `namespace_annotations`.
pub fn build(
    pod: &Value,
    namespace: &str,
    namespace_annotations: &BTreeMap<String, String>,
    config: &InjectorConfig,
) -> Report {
    let skip =
        |s| Report { outcome: Outcome::Skipped(s), patch: Patch(Vec::new()), warnings: Vec::new() };
    let invalid = |reason, messages| Report {
        outcome: Outcome::Invalid { reason, messages },
        patch: Patch(Vec::new()),
        warnings: Vec::new(),
    };
    let typed: Pod = match serde_json::from_value(pod.clone()) {
        Ok(p) => p,
        Err(e) => return invalid(InvalidReason::Pod, vec![format!("not a valid Pod: {e}")]),
    };
    let Some(pod_spec) = typed.spec.as_ref() else {
        return invalid(InvalidReason::Pod, vec!["the Pod has no spec".to_string()]);
    };
    let meta = &typed.metadata;
    let no_map = BTreeMap::new();
    let pod_annotations = meta.annotations.as_ref().unwrap_or(&no_map);
    let labels = meta.labels.as_ref().unwrap_or(&no_map);
    let init_containers = pod_spec.init_containers.as_deref().unwrap_or_default();
    let all_containers = || init_containers.iter().chain(&pod_spec.containers);

    // Already injected comes first, whatever the annotations say now: the patch is
    // idempotent, and the webhook is reinvoked on pods it already patched.
    let ours = [ann::PROXY_CONTAINER, ann::INIT_CONTAINER];
    if pod_annotations.contains_key(ann::PROXY_VERSION)
        || all_containers().any(|c| ours.contains(&c.name.as_str()))
    {
        return skip(Skip::AlreadyInjected);
    }

    let layered = Layered { pod: pod_annotations, namespace: namespace_annotations };
    let enabled_by = match layered.get(ann::INJECT) {
        None => return skip(Skip::NotEnabled),
        Some(("enabled", source)) => source,
        Some(("disabled", source)) => return skip(Skip::Disabled(source)),
        Some((value, source)) => {
            let bad = ann::Invalid {
                key: ann::INJECT.to_string(),
                value: value.to_string(),
                source,
                reason: "must be \"enabled\" or \"disabled\"".to_string(),
            };
            return invalid(InvalidReason::Annotation, vec![bad.to_string()]);
        }
    };

    if namespace == config.control_plane_namespace
        || labels.contains_key(ann::CONTROL_PLANE_COMPONENT)
    {
        return skip(Skip::ControlPlane);
    }
    if pod_spec.host_network == Some(true) {
        return skip(Skip::HostNetwork);
    }
    if let Some(c) = all_containers().find(|c| OTHER_MESH_CONTAINERS.contains(&c.name.as_str())) {
        return skip(Skip::OtherMesh(format!("container {}", c.name)));
    }
    if let Some(a) = OTHER_MESH_ANNOTATIONS.iter().find(|a| pod_annotations.contains_key(**a)) {
        return skip(Skip::OtherMesh(format!("annotation {a}")));
    }

    let opts = match layered.resolve(config) {
        Ok(o) => o,
        Err(errors) => {
            return invalid(
                InvalidReason::Annotation,
                errors.iter().map(ToString::to_string).collect(),
            );
        }
    };
    let conflicts = conflicts(all_containers(), pod_spec.volumes.as_deref().unwrap_or_default());
    if !conflicts.is_empty() {
        return invalid(InvalidReason::Conflict, conflicts);
    }

    let mut warnings = layered.unknown_config_keys();
    let pod_grace_ms = grace_ms(pod_spec.termination_grace_period_seconds);
    if opts.shutdown_grace_ms > pod_grace_ms {
        warnings.push(format!(
            "the proxy's shutdown grace period {} is longer than the pod's terminationGracePeriodSeconds ({}s): the proxy will be killed first",
            opts.shutdown_grace_period,
            pod_grace_ms / 1000
        ));
    }

    // A regular-container proxy keeps running after the app exits: a pod meant to complete
    // (a Job's, a CronJob's: their restartPolicy is Never or OnFailure) never does.
    if !opts.native_sidecar
        && let Some(policy @ ("Never" | "OnFailure")) = pod_spec.restart_policy.as_deref()
    {
        let key = format!("{}native-sidecar", ann::CONFIG_PREFIX);
        let asked = match layered.get(&key) {
            Some((value, source)) => format!("{key}: {value:?} ({source})"),
            None => "the injector's --native-sidecar=false".to_string(),
        };
        warnings.push(format!(
            "{asked} makes the proxy a regular container, which keeps running after the app exits: this pod (restartPolicy: {policy}, as a Job's or CronJob's) will never complete; without it the proxy is a native sidecar, which Kubernetes stops once the app is done"
        ));
    }

    // Policies that refuse the kubelet (it is not meshed) let only the probe routes in.
    if matches!(
        opts.default_inbound_policy.as_str(),
        "deny" | "all-authenticated" | "cluster-authenticated"
    ) {
        let uncovered = ProbeRoutes::uncovered(pod_spec);
        if !uncovered.is_empty() {
            warnings.push(format!(
                "the default inbound policy {} refuses the kubelet's {}: these probes will fail through the proxy; use HTTP GET probes, or skip their ports (config.weft.dev/skip-inbound-ports)",
                opts.default_inbound_policy,
                uncovered.join(", ")
            ));
        }
    }

    let init = spec::init_container(&opts, config);
    // The kubelet's probes reach the app through the proxy: it must let them in even when
    // its policy would not.
    let proxy = spec::proxy_container(
        &opts,
        config,
        &ProbeRoutes::of(pod_spec),
        &spec::inbound_ports(pod_spec),
    );
    let mut ops = Ops::default();

    let mut new_annotations = vec![
        (ann::PROXY_VERSION, crate::values::image_version(&opts.image).to_string()),
        (ann::INJECTED_BY, format!("weft/{}", env!("CARGO_PKG_VERSION"))),
    ];
    if !pod_annotations.contains_key(ann::DEFAULT_CONTAINER)
        && let Some(app) = pod_spec.containers.first()
    {
        new_annotations.push((ann::DEFAULT_CONTAINER, app.name.clone()));
    }
    if let Some(pem) = &config.trust_anchors_pem {
        new_annotations.push((ann::TRUST_ANCHORS, pem.clone()));
    }
    if !opts.skip_inbound_ports.is_empty() {
        new_annotations.push((ann::SKIP_INBOUND_PORTS, opts.skip_inbound_ports.clone()));
    }
    ops.map_entries(pod, &["metadata", "annotations"], new_annotations);
    ops.map_entries(
        pod,
        &["metadata", "labels"],
        vec![(ann::CONTROL_PLANE_NS, config.control_plane_namespace.clone())],
    );
    ops.append(pod, "volumes", spec::volumes(config).iter().map(to_json).collect());
    let has_init = pod.pointer("/spec/initContainers").is_some_and(Value::is_array);
    if opts.native_sidecar {
        // Redirection first, then the proxy (its startup probe holds back what follows), then
        // the pod's own init containers, which so get a working network through the proxy.
        if has_init {
            ops.add(&["spec", "initContainers", "0"], to_json(&proxy));
            ops.add(&["spec", "initContainers", "0"], to_json(&init));
        } else {
            ops.add(
                &["spec", "initContainers"],
                Value::Array(vec![to_json(&init), to_json(&proxy)]),
            );
        }
    } else {
        // Without a native sidecar nothing would proxy the pod's own init containers, so
        // redirection is set up after them, and the proxy is the first regular container.
        if has_init {
            ops.add(&["spec", "initContainers", "-"], to_json(&init));
        } else {
            ops.add(&["spec", "initContainers"], Value::Array(vec![to_json(&init)]));
        }
        if pod.pointer("/spec/containers").is_some_and(Value::is_array) {
            ops.add(&["spec", "containers", "0"], to_json(&proxy));
        } else {
            ops.add(&["spec", "containers"], Value::Array(vec![to_json(&proxy)]));
        }
    }
    Report { outcome: Outcome::Injected(enabled_by), patch: Patch(ops.0), warnings }
}

/// Ports and names of the pod that the proxy needs for itself.
fn conflicts<'a>(
    containers: impl Iterator<Item = &'a Container>,
    volumes: &[Volume],
) -> Vec<String> {
    let reserved = [INBOUND_PORT, OUTBOUND_PORT, ADMIN_PORT, CONTROL_PORT];
    let names = [spec::PROXY_PORT_NAME, spec::ADMIN_PORT_NAME];
    let mut out = Vec::new();
    for c in containers {
        for p in c.ports.as_deref().unwrap_or_default() {
            if u16::try_from(p.container_port).is_ok_and(|n| reserved.contains(&n)) {
                out.push(format!(
                    "container {} uses port {}, which the proxy needs",
                    c.name, p.container_port
                ));
            }
            if let Some(n) = p.name.as_deref().filter(|n| names.contains(n)) {
                out.push(format!(
                    "container {} has a port named {n}, which the proxy needs",
                    c.name
                ));
            }
        }
    }
    let ours = [ann::TOKEN_VOLUME, ann::TRUST_ROOTS_VOLUME, ann::XTABLES_VOLUME];
    for v in volumes.iter().filter(|v| ours.contains(&v.name.as_str())) {
        out.push(format!("the pod already has a volume named {}", v.name));
    }
    out
}

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    // k8s-openapi types always serialize (their maps have string keys).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[derive(Default)]
struct Ops(Vec<PatchOperation>);

impl Ops {
    fn add(&mut self, path: &[&str], value: Value) {
        let path = PointerBuf::from_tokens(path.iter().copied());
        self.0.push(PatchOperation::Add(AddOperation { path, value }));
    }

    /// Sets `entries` in the string map at `path`, creating the map when absent.
    fn map_entries(&mut self, pod: &Value, path: &[&str], entries: Vec<(&str, String)>) {
        let pointer = PointerBuf::from_tokens(path.iter().copied());
        if pod.pointer(pointer.as_str()).is_some_and(Value::is_object) {
            for (k, v) in entries {
                let mut p: Vec<&str> = path.to_vec();
                p.push(k);
                self.add(&p, Value::String(v));
            }
        } else {
            let map = entries.into_iter().map(|(k, v)| (k.to_string(), Value::String(v))).collect();
            self.add(path, Value::Object(map));
        }
    }

    /// Appends `items` to the array `/spec/<field>`, creating it when absent.
    fn append(&mut self, pod: &Value, field: &str, items: Vec<Value>) {
        if pod.pointer(&format!("/spec/{field}")).is_some_and(Value::is_array) {
            for item in items {
                self.add(&["spec", field, "-"], item);
            }
        } else {
            self.add(&["spec", field], Value::Array(items));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The audit: a Job with `native-sidecar: "false"` got a proxy that kept it running
    /// for ever, without a word.
    #[test]
    fn a_pod_meant_to_complete_with_a_regular_proxy_is_warned_about() {
        let pod = |restart: &str, native: Option<&str>| {
            let mut annotations = json!({"weft.dev/inject": "enabled"});
            if let Some(n) = native {
                annotations["config.weft.dev/native-sidecar"] = json!(n);
            }
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"annotations": annotations},
                   "spec": {"restartPolicy": restart, "containers": [{"name": "job", "image": "job"}]}})
        };
        let warnings = |pod: &Value, config: &InjectorConfig| {
            let report = build(pod, "default", &BTreeMap::new(), config);
            assert!(matches!(report.outcome, Outcome::Injected(_)), "{}", report.outcome);
            report.warnings
        };
        let config = InjectorConfig::default();
        for policy in ["Never", "OnFailure"] {
            let w = warnings(&pod(policy, Some("false")), &config);
            assert_eq!(w.len(), 1, "{w:?}");
            for part in
                ["config.weft.dev/native-sidecar: \"false\" (on the pod)", "never complete", policy]
            {
                assert!(w[0].contains(part), "{part}: {w:?}");
            }
            assert_eq!(warnings(&pod(policy, None), &config), Vec::<String>::new());
            assert_eq!(warnings(&pod(policy, Some("true")), &config), Vec::<String>::new());
        }
        assert_eq!(warnings(&pod("Always", Some("false")), &config), Vec::<String>::new());
        let flag = InjectorConfig { native_sidecar: false, ..config };
        let w = warnings(&pod("Never", None), &flag);
        assert!(w.len() == 1 && w[0].contains("--native-sidecar=false"), "{w:?}");
    }

    #[test]
    fn grace_period_in_ms_saturates() {
        assert_eq!(grace_ms(None), 30_000);
        assert_eq!(grace_ms(Some(0)), 0);
        assert_eq!(grace_ms(Some(-5)), 0);
        assert_eq!(grace_ms(Some(45)), 45_000);
        assert_eq!(grace_ms(Some(i64::MAX)), u64::MAX);
        assert_eq!(grace_ms(Some(i64::MIN)), 0);
    }
}
