//! The MutatingWebhookConfiguration manifest has what the issue asks of it, and nothing
//! that k8s-openapi does not know.
#![allow(clippy::unwrap_used)]

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use serde_json::Value;

#[test]
fn webhook_configuration_is_complete() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/webhook.yaml");
    let text = std::fs::read_to_string(path).expect("manifests/webhook.yaml");
    let raw: Value = serde_yaml_ng::from_str(&text).expect("YAML");
    let config: MutatingWebhookConfiguration =
        serde_json::from_value(raw.clone()).expect("a webhook configuration");
    let back = serde_json::to_value(&config).expect("serialize");
    assert_eq!(back, raw, "fields k8s-openapi does not know");

    let hooks = config.webhooks.expect("webhooks");
    assert_eq!(hooks.len(), 1);
    let h = &hooks[0];
    assert_eq!(h.side_effects, "None");
    assert_eq!(h.admission_review_versions, ["v1"]);
    assert!(h.timeout_seconds.is_some_and(|t| t <= 10));
    assert_eq!(h.reinvocation_policy.as_deref(), Some("IfNeeded"));
    let svc = h.client_config.service.as_ref().expect("service");
    assert_eq!(
        (svc.name.as_str(), svc.namespace.as_str(), svc.path.as_deref()),
        ("weft-injector", "weft", Some("/inject"))
    );
    let rules = h.rules.as_ref().expect("rules");
    assert_eq!(rules[0].operations.as_deref(), Some(&["CREATE".to_string()][..]));
    assert_eq!(rules[0].resources.as_deref(), Some(&["pods".to_string()][..]));

    let ns = h
        .namespace_selector
        .as_ref()
        .and_then(|s| s.match_expressions.as_ref())
        .expect("namespaceSelector");
    let excluded = ns
        .iter()
        .find(|e| e.key == "kubernetes.io/metadata.name" && e.operator == "NotIn")
        .and_then(|e| e.values.clone())
        .expect("namespaces excluded by name");
    assert!(
        excluded.contains(&"kube-system".to_string()) && excluded.contains(&"weft".to_string())
    );
    let obj = h
        .object_selector
        .as_ref()
        .and_then(|s| s.match_expressions.as_ref())
        .expect("objectSelector");
    assert!(
        obj.iter()
            .any(|e| e.key == "weft.dev/control-plane-component" && e.operator == "DoesNotExist")
    );
}
