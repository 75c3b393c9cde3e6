//! `weft inject` on YAML: finds the pod templates of workloads in a (multi-document) stream
//! and either annotates them for the webhook or renders the full sidecar with the same patch
//! builder. Documents that do not change are written back byte for byte.

use std::{collections::BTreeMap, fmt};

use serde_json::{Value, json};

use crate::{
    InjectorConfig,
    annotations::INJECT,
    patch::{self, Outcome, Skip},
    yaml,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Add `weft.dev/inject: enabled` to pod templates: the webhook injects at creation.
    Annotate,
    /// Render the init container, proxy, volumes and annotations into the manifest.
    Manual,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Changed,
    Unchanged,
    Error,
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectReport {
    /// `deployment/web`, `document 3` when the document has no kind or name.
    pub object: String,
    pub status: Status,
    pub message: String,
}

impl fmt::Display for ObjectReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.message)
    }
}

#[derive(Debug, Default)]
pub struct Injected {
    pub output: String,
    pub reports: Vec<ObjectReport>,
}

impl Injected {
    pub fn errors(&self) -> usize {
        self.reports.iter().filter(|r| r.status == Status::Error).count()
    }
}

/// Injects every workload of `input`, a YAML stream.
pub fn inject(input: &str, mode: Mode, config: &InjectorConfig) -> Injected {
    let mut out = Injected::default();
    for (i, (separator, body)) in split_documents(input).into_iter().enumerate() {
        out.output.push_str(separator);
        let meaningful = body.lines().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && t != "..."
        });
        if !meaningful {
            out.output.push_str(body);
            continue;
        }
        let label = format!("document {}", i + 1);
        let mut value: Value = match serde_yaml_ng::from_str(body) {
            Ok(v) => v,
            Err(e) => {
                out.reports.push(ObjectReport {
                    object: label,
                    status: Status::Error,
                    message: format!("not YAML, left as it is: {e}"),
                });
                out.output.push_str(body);
                continue;
            }
        };
        let before = out.reports.len();
        visit(&mut value, mode, config, &label, &mut out.reports);
        if out.reports[before..].iter().any(|r| r.status == Status::Changed) {
            // Not serde_yaml_ng's writer: it leaves `on`, `no`, `0x10` … plain, which
            // kubectl reads as booleans and numbers (see `yaml`).
            out.output.push_str(&yaml::to_string(&value));
        } else {
            out.output.push_str(body);
        }
    }
    out
}

/// Splits a YAML stream at its `---` lines into (separator line, body) pairs, both verbatim,
/// so that unchanged documents can be written back exactly.
fn split_documents(input: &str) -> Vec<(&str, &str)> {
    let mut docs = Vec::new();
    let (mut sep, mut start, mut pos) = ("", 0, 0);
    for line in input.split_inclusive('\n') {
        let rest = line.strip_prefix("---");
        // `--- # comment` and a bare `---` separate; `--- {a: 1}` starts a document inline.
        let bare = rest.is_some_and(|r| r.trim().is_empty() || r.trim_start().starts_with('#'));
        let inline = rest.is_some_and(|r| r.starts_with([' ', '\t']) && !bare);
        if bare || inline {
            if pos > 0 || !sep.is_empty() {
                docs.push((sep, &input[start..pos]));
            }
            if bare {
                sep = line;
                start = pos + line.len();
            } else {
                sep = "";
                start = pos;
            }
        }
        pos += line.len();
    }
    docs.push((sep, &input[start..]));
    docs
}

/// Handles one object, or each item of a List.
fn visit(
    v: &mut Value,
    mode: Mode,
    config: &InjectorConfig,
    label: &str,
    reports: &mut Vec<ObjectReport>,
) {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    if kind == "List" || (kind.ends_with("List") && v.get("items").is_some()) {
        if let Some(items) = v.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                visit(item, mode, config, label, reports);
            }
        }
        return;
    }
    let name = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let object =
        if kind.is_empty() { label.to_string() } else { format!("{}/{name}", kind.to_lowercase()) };
    let namespace =
        v.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default").to_string();
    let template_path = match kind.as_str() {
        "Pod" => "",
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => "/spec/template",
        "CronJob" => "/spec/jobTemplate/spec/template",
        _ => {
            reports.push(ObjectReport {
                object,
                status: Status::Unchanged,
                message: "no pods in it, unchanged".into(),
            });
            return;
        }
    };
    let Some(template) = v.pointer_mut(template_path).filter(|t| t.is_object()) else {
        let message = "has no pod template, left as it is".to_string();
        reports.push(ObjectReport { object, status: Status::Error, message });
        return;
    };
    let report = inject_template(template, &kind, &namespace, mode, config);
    reports.push(ObjectReport { object, status: report.0, message: report.1 });
}

/// Injects a Pod or a pod template in place.
fn inject_template(
    template: &mut Value,
    kind: &str,
    namespace: &str,
    mode: Mode,
    config: &InjectorConfig,
) -> (Status, String) {
    let pod = if kind == "Pod" {
        template.clone()
    } else {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": template.get("metadata").cloned().unwrap_or(json!({})),
               "spec": template.get("spec").cloned().unwrap_or(Value::Null)})
    };
    // Asked for on the command line: as if the namespace were enabled, so that the pod's
    // own `disabled` still wins.
    let enabled: BTreeMap<String, String> = [(INJECT.to_string(), "enabled".to_string())].into();
    let report = patch::build(&pod, namespace, &enabled, config);
    let mut warnings = String::new();
    for w in &report.warnings {
        warnings.push_str(&format!(" (warning: {w})"));
    }
    match (&report.outcome, mode) {
        (Outcome::Skipped(Skip::AlreadyInjected), _) => {
            (Status::Unchanged, "already injected, unchanged".into())
        }
        (Outcome::Skipped(_) | Outcome::Invalid { .. }, _) => {
            let status = if matches!(report.outcome, Outcome::Invalid { .. }) {
                Status::Error
            } else {
                Status::Unchanged
            };
            (status, format!("{}, left as it is", report.outcome))
        }
        (Outcome::Injected(_), Mode::Annotate) => {
            let had = pod
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(INJECT))
                .and_then(Value::as_str);
            if had == Some("enabled") {
                return (
                    Status::Unchanged,
                    format!("already has {INJECT}: enabled, unchanged{warnings}"),
                );
            }
            let meta =
                template.as_object_mut().map(|t| t.entry("metadata").or_insert_with(|| json!({})));
            let Some(meta) = meta.and_then(Value::as_object_mut) else {
                return (Status::Error, "its metadata is not a map, left as it is".into());
            };
            let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
            if annotations.is_null() {
                *annotations = json!({});
            }
            match annotations.as_object_mut() {
                Some(a) => {
                    a.insert(INJECT.to_string(), json!("enabled"));
                    (Status::Changed, format!("annotated with {INJECT}: enabled{warnings}"))
                }
                None => (Status::Error, "its annotations are not a map, left as it is".into()),
            }
        }
        (Outcome::Injected(_), Mode::Manual) => {
            let mut pod = pod;
            if let Err(e) = json_patch::patch(&mut pod, &report.patch) {
                return (Status::Error, format!("the patch does not apply ({e}), left as it is"));
            }
            if kind == "Pod" {
                *template = pod;
            } else {
                template["metadata"] = pod["metadata"].take();
                template["spec"] = pod["spec"].take();
            }
            (Status::Changed, format!("proxy injected{warnings}"))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn splits_and_keeps_every_byte() {
        for input in [
            "",
            "a: 1\n",
            "---\na: 1\n---\nb: 2",
            "# header\n---\na: 1\n--- # two\nb: 2\n---\n",
            "--- {a: 1}\n---\nb: 2\n",
            "a: |\n  text\n  ---not a separator\n",
        ] {
            let joined: String =
                split_documents(input).iter().map(|(s, b)| format!("{s}{b}")).collect();
            assert_eq!(joined, input);
        }
        assert_eq!(split_documents("---\na: 1\n---\nb: 2\n").len(), 2);
        assert_eq!(split_documents("a: 1\n---\nb: 2\n").len(), 2);
        assert_eq!(split_documents("--- {a: 1}\n--- {b: 2}\n").len(), 2);
    }

    #[test]
    fn every_workload_kind_gets_its_template_annotated() {
        let template = "  template:\n    spec:\n      containers: [{name: app, image: app}]\n";
        let mut input = String::new();
        for kind in ["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"] {
            input.push_str(&format!("---\nkind: {kind}\nmetadata: {{name: x}}\nspec:\n{template}"));
        }
        input.push_str(
            "---\nkind: CronJob\nmetadata: {name: x}\nspec:\n  jobTemplate:\n    spec:\n",
        );
        input.push_str(&template.lines().map(|l| format!("    {l}\n")).collect::<String>());
        input.push_str(
            "---\nkind: Pod\nmetadata: {name: x}\nspec: {containers: [{name: app, image: app}]}\n",
        );
        input.push_str("---\nkind: DeploymentList\nitems:\n- kind: Deployment\n  metadata: {name: y}\n  spec:\n");
        input.push_str(&template.lines().map(|l| format!("  {l}\n")).collect::<String>());
        let out = inject(&input, Mode::Annotate, &InjectorConfig::default());
        assert_eq!(out.reports.len(), 8, "{:#?}", out.reports);
        assert!(out.reports.iter().all(|r| r.status == Status::Changed), "{:#?}", out.reports);
        assert_eq!(out.output.matches("weft.dev/inject: enabled").count(), 8, "{}", out.output);

        // Injecting the output again changes nothing, in either mode's output.
        let again = inject(&out.output, Mode::Annotate, &InjectorConfig::default());
        assert_eq!(again.output, out.output);
        let manual = inject(&input, Mode::Manual, &InjectorConfig::default());
        // The proxy container and its inbound port are both named weft-proxy.
        assert_eq!(manual.output.matches("name: weft-proxy\n").count(), 16, "{}", manual.output);
        let again = inject(&manual.output, Mode::Manual, &InjectorConfig::default());
        assert_eq!(again.output, manual.output);
        assert!(again.reports.iter().all(|r| r.message.contains("already injected")));
    }

    /// The audit: a Deployment written back with `value: on` and `value: no` plain, which
    /// kubectl reads as booleans (and the API server refuses), in both modes.
    #[test]
    fn values_yaml_1_1_reads_otherwise_are_written_back_quoted() {
        let input = "kind: Deployment\nmetadata: {name: web, labels: {\"on\": \"yes\"}}\nspec:\n  template:\n    metadata: {annotations: {a: \"0x10\", b: \"1:20\"}}\n    spec:\n      containers:\n      - name: app\n        image: app\n        args: [\"012\", \"1e3\", \"~\", \"y\"]\n        env:\n        - {name: A, value: \"on\"}\n        - {name: B, value: \"no\"}\n        - {name: C, value: \"1_000\"}\n        - {name: D, value: \".inf\"}\n        - {name: E, value: \"line\\nline\\n\"}\n";
        let before: Value = serde_yaml_ng::from_str(input).unwrap();
        for mode in [Mode::Annotate, Mode::Manual] {
            let out = inject(input, mode, &InjectorConfig::default());
            assert_eq!(out.errors(), 0, "{:#?}", out.reports);
            for quoted in [
                "\"on\": \"yes\"",
                "a: \"0x10\"",
                "b: \"1:20\"",
                "- \"012\"",
                "- \"1e3\"",
                "- \"~\"",
                "- \"y\"",
                "value: \"on\"",
                "value: \"no\"",
                "value: \"1_000\"",
                "value: \".inf\"",
            ] {
                assert!(out.output.contains(quoted), "{mode:?}: {quoted}:\n{}", out.output);
            }
            let after: Value = serde_yaml_ng::from_str(&out.output).unwrap();
            let pointer = "/spec/template/spec/containers";
            let containers = after.pointer(pointer).unwrap().as_array().unwrap();
            let app = containers.iter().find(|c| c["name"] == "app").unwrap();
            assert_eq!(app, &before.pointer(pointer).unwrap()[0], "{mode:?}");
            assert_eq!(after["metadata"], before["metadata"], "{mode:?}");
        }
    }

    #[test]
    fn broken_documents_are_reported_and_kept() {
        let input = "kind: Deployment\nmetadata: {name: x}\nspec: {template: {spec: {containers: 7}}}\n---\n: : :\n";
        let out = inject(input, Mode::Manual, &InjectorConfig::default());
        assert_eq!(out.output, input);
        assert_eq!(out.errors(), 2, "{:#?}", out.reports);
    }
}
