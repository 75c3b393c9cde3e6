//! The injector's webhook on an arbitrary AdmissionReview body: every body gets a review
//! that answers it (the request's uid, a status message when refused), never a panic; a
//! patch it returns applies to the pod, the result is a valid Pod, and injecting that
//! again changes nothing.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use weft_injector::{
    InjectorConfig, Outcome,
    admission::{self, API_VERSION},
    patch::build,
};

fuzz_target!(|data: &[u8]| {
    let config = InjectorConfig::default();
    let answer = match admission::parse(data) {
        Err(answer) => *answer,
        Ok(req) => {
            // The namespace's annotations: a few from the pod's own, to reach both layers.
            let ns: BTreeMap<String, String> = req
                .object
                .pointer("/metadata/labels")
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default();
            let answer = admission::decide(&req, Some(&ns), None, &config);
            if let Some(patch) = answer.review.pointer("/response/patch") {
                let patch: Vec<u8> =
                    serde_json::from_value::<k8s_openapi::ByteString>(patch.clone())
                        .expect("the patch is base64")
                        .0;
                let patch: json_patch::Patch =
                    serde_json::from_slice(&patch).expect("the patch is a JSON patch");
                let mut pod = req.object.clone();
                json_patch::patch(&mut pod, &patch).expect("the patch applies to the pod");
                serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(pod.clone())
                    .expect("the patched pod is a Pod");
                let again = build(&pod, &req.namespace, &ns, &config);
                assert!(
                    matches!(again.outcome, Outcome::Skipped(_)) && again.patch.0.is_empty(),
                    "injecting an injected pod again: {:?}",
                    again.outcome
                );
            }
            answer
        }
    };
    let review = &answer.review;
    assert_eq!(review["apiVersion"], API_VERSION);
    assert_eq!(review["kind"], "AdmissionReview");
    let response = &review["response"];
    assert!(response["uid"].is_string());
    match response["allowed"] {
        Value::Bool(true) => {}
        Value::Bool(false) => {
            assert!(!response["status"]["message"].as_str().unwrap_or_default().is_empty());
        }
        ref other => panic!("allowed is {other:?}"),
    }
});
