//! Shared by the injector's tests and the e2e webhook test: pods from the committed kubectl
//! fixtures, wrapped as AdmissionReview v1 requests the way an API server sends them, and
//! the checks applied to what comes back.
#![allow(dead_code)]

use std::path::PathBuf;

use serde_json::{Value, json};

pub fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let path = if path.exists() {
        path
    } else {
        // From the workspace root's tests (tests/e2e), CARGO_MANIFEST_DIR is the root.
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("injector/tests/fixtures").join(name)
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

/// The pod a controller would create from a workload fixture's template, with the fields
/// the API server defaults before calling mutating webhooks.
pub fn pod_from(workload: &str, namespace: &str) -> Value {
    let w = fixture(workload);
    let template = w
        .pointer("/spec/template")
        .or_else(|| w.pointer("/spec/jobTemplate/spec/template"))
        .expect("a pod template")
        .clone();
    let name = w["metadata"]["name"].as_str().expect("name");
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template["metadata"].clone(),
        "spec": template["spec"].clone(),
    });
    pod["metadata"]["generateName"] = json!(format!("{name}-7d9f8c6b5-"));
    pod["metadata"]["namespace"] = json!(namespace);
    if let Some(m) = pod["metadata"].as_object_mut() {
        m.remove("creationTimestamp");
    }
    let spec = &mut pod["spec"];
    spec["serviceAccountName"] = json!("default");
    spec["terminationGracePeriodSeconds"] = json!(30);
    spec["dnsPolicy"] = json!("ClusterFirst");
    if spec["restartPolicy"].is_null() {
        spec["restartPolicy"] = json!("Always");
    }
    pod
}

pub fn set_annotation(pod: &mut Value, key: &str, value: &str) {
    if !pod["metadata"]["annotations"].is_object() {
        pod["metadata"]["annotations"] = json!({});
    }
    pod["metadata"]["annotations"][key] = json!(value);
}

/// An AdmissionReview v1 request for creating `object` of `kind` (core group).
pub fn review(kind: &str, resource: &str, object: &Value) -> Value {
    let namespace = object.pointer("/metadata/namespace").cloned().unwrap_or(json!("default"));
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": resource},
            "requestKind": {"group": "", "version": "v1", "kind": kind},
            "requestResource": {"group": "", "version": "v1", "resource": resource},
            "name": "",
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "4b8a6f8e-0c5b-4b1e-9a50-6b7f3f1b9c1d",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// Decodes the base64 JSONPatch of an AdmissionReview response, if any.
pub fn patch_of(answer: &Value) -> Option<json_patch::Patch> {
    let b64 = answer.pointer("/response/patch")?;
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let bytes: k8s_openapi::ByteString = serde_json::from_value(b64.clone()).expect("base64 patch");
    Some(serde_json::from_slice(&bytes.0).expect("a JSON patch"))
}

/// Applies `patch` to `pod` and checks that the result is a Pod with nothing
/// k8s-openapi does not know: it deserializes, and serializes back to the same JSON.
pub fn apply_strict(
    pod: &Value,
    patch: &json_patch::Patch,
) -> (Value, k8s_openapi::api::core::v1::Pod) {
    let mut out = pod.clone();
    json_patch::patch(&mut out, patch).expect("the patch applies to the original");
    let typed: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(out.clone()).expect("the patched object is a Pod");
    let mut back = serde_json::to_value(&typed).expect("serialize");
    let mut orig = out.clone();
    strip_nulls(&mut back);
    strip_nulls(&mut orig);
    assert_eq!(back, orig, "the patched pod has fields k8s-openapi does not know");
    (out, typed)
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
