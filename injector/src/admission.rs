//! AdmissionReview v1 in, AdmissionReview v1 out, with no I/O: the webhook server parses a
//! request with [`parse`], looks up the namespace, and answers with [`decide`]. Every input,
//! however broken, gets an AdmissionReview that says what happened; none gets a 500.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{
    config::InjectorConfig,
    patch::{self, Outcome},
};

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// A request worth deciding on: a Pod being created.
#[derive(Debug)]
pub struct PodRequest {
    pub uid: String,
    pub namespace: String,
    /// `metadata.name`, or `generateName` for pods a controller creates.
    pub name: String,
    pub dry_run: bool,
    pub object: Value,
}

/// What the server sends back, and the labels under which it is counted.
#[derive(Debug)]
pub struct Answer {
    pub review: Value,
    pub outcome: &'static str,
    pub reason: &'static str,
    /// The human explanation, for the log.
    pub message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: Gvk,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    operation: String,
    #[serde(default)]
    object: Option<Value>,
    #[serde(default)]
    dry_run: Option<bool>,
}

#[derive(Deserialize)]
struct Gvk {
    #[serde(default)]
    group: String,
    kind: String,
}

/// Parses a request body; anything that is not a Pod being created is answered here.
pub fn parse(body: &[u8]) -> Result<PodRequest, Box<Answer>> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        Box::new(reject("", "malformed", 400, format!("the body is not JSON: {e}")))
    })?;
    // The uid, when there is one, even if the rest is broken: the API server matches
    // answers to requests by it.
    let uid = value.pointer("/request/uid").and_then(Value::as_str).unwrap_or_default().to_string();
    let review: Review = serde_json::from_value(value).map_err(|e| {
        Box::new(reject(&uid, "malformed", 400, format!("not an AdmissionReview: {e}")))
    })?;
    if review.kind.as_deref() != Some("AdmissionReview")
        || review.api_version.as_deref() != Some(API_VERSION)
    {
        let message = format!(
            "expected kind AdmissionReview, apiVersion {API_VERSION}; got kind {:?}, apiVersion {:?}",
            review.kind.unwrap_or_default(),
            review.api_version.unwrap_or_default()
        );
        return Err(Box::new(reject(&uid, "malformed", 400, message)));
    }
    let Some(req) = review.request else {
        return Err(Box::new(reject(
            &uid,
            "malformed",
            400,
            "the AdmissionReview has no request".into(),
        )));
    };
    if !req.kind.group.is_empty() || req.kind.kind != "Pod" {
        let what = if req.kind.group.is_empty() {
            req.kind.kind
        } else {
            format!("{}/{}", req.kind.group, req.kind.kind)
        };
        return Err(Box::new(allow(
            &req.uid,
            "not-a-pod",
            format!("{what} is not a Pod: allowed unchanged"),
        )));
    }
    if let Some(sub) = req.sub_resource.filter(|s| !s.is_empty()) {
        return Err(Box::new(allow(
            &req.uid,
            "subresource",
            format!("pods/{sub} is not injected: allowed unchanged"),
        )));
    }
    if req.operation != "CREATE" {
        return Err(Box::new(allow(
            &req.uid,
            "not-create",
            format!("{} of a Pod: allowed unchanged", req.operation),
        )));
    }
    let Some(object) = req.object.filter(Value::is_object) else {
        return Err(Box::new(reject(
            &req.uid,
            "malformed",
            400,
            "the request has no object".into(),
        )));
    };
    let namespace = req
        .namespace
        .filter(|n| !n.is_empty())
        .or_else(|| object.pointer("/metadata/namespace").and_then(Value::as_str).map(String::from))
        .unwrap_or_else(|| "default".to_string());
    let name = req
        .name
        .filter(|n| !n.is_empty())
        .or_else(|| object.pointer("/metadata/name").and_then(Value::as_str).map(String::from))
        .or_else(|| {
            object.pointer("/metadata/generateName").and_then(Value::as_str).map(String::from)
        })
        .unwrap_or_default();
    Ok(PodRequest { uid: req.uid, namespace, name, dry_run: req.dry_run.unwrap_or(false), object })
}

/// Decides on a Pod with its namespace's annotations (`None`: the namespace is unknown,
/// which `warning` explains).
pub fn decide(
    req: &PodRequest,
    namespace_annotations: Option<&BTreeMap<String, String>>,
    warning: Option<String>,
    config: &InjectorConfig,
) -> Answer {
    let empty = BTreeMap::new();
    let report =
        patch::build(&req.object, &req.namespace, namespace_annotations.unwrap_or(&empty), config);
    let (outcome, reason) = report.outcome.labels();
    let message = report.outcome.to_string();
    let mut warnings = report.warnings;
    warnings.extend(warning);
    let mut response = json!({ "uid": req.uid, "allowed": true });
    match &report.outcome {
        Outcome::Injected(_) => {
            // A patch always serializes: it is made of strings and JSON values.
            let patch = serde_json::to_vec(&report.patch).unwrap_or_default();
            response["patchType"] = json!("JSONPatch");
            response["patch"] = serde_json::to_value(ByteString(patch)).unwrap_or_default();
        }
        Outcome::Skipped(_) => {}
        Outcome::Invalid { .. } => {
            // The pod asked for the mesh and cannot get it as asked: refuse, saying why,
            // rather than start it unmeshed or with settings it did not ask for.
            response["allowed"] = json!(false);
            response["status"] = json!({ "code": 400, "reason": "BadRequest", "message": message });
        }
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    Answer { review: wrap(response), outcome, reason, message }
}

/// Allowed unchanged.
pub fn allow(uid: &str, reason: &'static str, message: String) -> Answer {
    Answer {
        review: wrap(json!({ "uid": uid, "allowed": true })),
        outcome: "allowed",
        reason,
        message,
    }
}

/// Refused with `code` and a message saying why.
pub fn reject(uid: &str, reason: &'static str, code: u16, message: String) -> Answer {
    let response = json!({
        "uid": uid,
        "allowed": false,
        "status": { "code": code, "reason": if code == 413 { "RequestEntityTooLarge" } else { "BadRequest" }, "message": message },
    });
    Answer { review: wrap(response), outcome: "rejected", reason, message }
}

fn wrap(response: Value) -> Value {
    json!({ "apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn review(kind: &str, op: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": API_VERSION, "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "kind": {"group": "", "version": "v1", "kind": kind},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "prod", "operation": op, "userInfo": {}, "object": object, "dryRun": true
            }
        }))
        .unwrap()
    }

    #[test]
    fn broken_input_gets_a_review_that_says_why() {
        for (body, uid) in [
            (&b"{not json"[..], ""),
            (br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#, ""),
            (br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1","request":{"uid":"x"}}"#, "x"),
            (br#"[1,2]"#, ""),
        ] {
            let a = parse(body).unwrap_err();
            assert_eq!(a.review["response"]["allowed"], false);
            assert_eq!(a.review["response"]["uid"], uid);
            assert!(!a.review["response"]["status"]["message"].as_str().unwrap().is_empty());
        }
    }

    #[test]
    fn non_pods_and_non_creates_are_allowed_unchanged() {
        let a = parse(&review("Service", "CREATE", json!({}))).unwrap_err();
        assert_eq!((a.outcome, a.reason), ("allowed", "not-a-pod"));
        assert_eq!(a.review["response"], json!({"uid": "u-1", "allowed": true}));
        let a = parse(&review("Pod", "UPDATE", json!({}))).unwrap_err();
        assert_eq!(a.reason, "not-create");
    }

    #[test]
    fn dry_run_is_answered_the_same() {
        let pod = json!({"metadata": {"annotations": {"weft.dev/inject": "enabled"}},
                         "spec": {"containers": [{"name": "app", "image": "app"}]}});
        let req = parse(&review("Pod", "CREATE", pod)).unwrap();
        assert!(req.dry_run);
        let a = decide(&req, None, None, &InjectorConfig::default());
        assert_eq!(a.outcome, "injected");
        assert_eq!(a.review["response"]["patchType"], "JSONPatch");
        assert!(a.review["response"]["patch"].is_string());
    }
}
