//! Service annotations users write (`retry.weft.dev/http`, `retry.weft.dev/limit`,
//! `retry.weft.dev/timeout`, `timeout.weft.dev/request`, opaque ports, CIDR lists): parsing
//! never panics, what parses is within its documented bounds, and status lists re-parse
//! to themselves once formatted.
#![no_main]

use std::{collections::BTreeMap, time::Duration};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use weft_destination::{
    model::PortSet,
    policy::model::{parse_cidr, parse_networks},
    profile::{
        REQUEST_TIMEOUT_ANNOTATION, RETRY_HTTP_ANNOTATION, RETRY_LIMIT_ANNOTATION,
        RETRY_TIMEOUT_ANNOTATION, build, parse_annotations, parse_duration, parse_statuses,
    },
};

#[derive(Arbitrary, Debug)]
struct Input {
    statuses: Option<String>,
    limit: Option<String>,
    try_timeout: Option<String>,
    timeout: Option<String>,
    other: String,
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let s = input.other.as_str();

    if let Ok(ranges) = parse_statuses(s) {
        assert!(!ranges.is_empty());
        assert!(
            ranges.iter().all(|r| 100 <= *r.start() && r.start() <= r.end() && *r.end() <= 599)
        );
        let formatted: Vec<String> =
            ranges.iter().map(|r| format!("{}-{}", r.start(), r.end())).collect();
        assert_eq!(parse_statuses(&formatted.join(",")), Ok(ranges));
    }
    if let Ok(d) = parse_duration(s) {
        assert!(d > Duration::ZERO && d <= Duration::from_secs(86_400), "{d:?}");
    }
    let (ports, bad) = PortSet::parse(s);
    if bad.is_empty() {
        for p in [1u16, 80, 65535] {
            let _ = ports.contains(p);
        }
    }
    if let Ok(net) = parse_cidr(s) {
        assert_eq!(parse_cidr(&net.to_string()), Ok(net));
    }
    if let Ok(nets) = parse_networks(s) {
        let list: Vec<String> = nets.iter().map(ToString::to_string).collect();
        assert_eq!(parse_networks(&list.join(",")), Ok(nets));
    }

    let mut annotations = BTreeMap::new();
    for (key, value) in [
        (RETRY_HTTP_ANNOTATION, input.statuses),
        (RETRY_LIMIT_ANNOTATION, input.limit),
        (RETRY_TIMEOUT_ANNOTATION, input.try_timeout),
        (REQUEST_TIMEOUT_ANNOTATION, input.timeout),
    ] {
        if let Some(v) = value {
            annotations.insert(key.to_string(), v);
        }
    }
    let (policy, errors) = parse_annotations(&annotations);
    assert!(errors.len() <= annotations.len());
    // What the destination service sends for them, the proxy takes whole and as meant.
    let sent = build("web.prod.svc.cluster.local", &policy, None, false, &[], None);
    let (profile, errors) = weft_proxy::profile::from_api(&sent);
    assert!(errors.is_empty(), "the proxy refuses part of the profile: {errors:?}");
    let route = profile.route(&http::Method::GET, "/any");
    match &policy.retry {
        Some(retry) => {
            let route = route.expect("a retry policy makes a route");
            assert!(route.retryable);
            assert_eq!(route.retry_limit, retry.limit);
            // Carried in whole milliseconds (at least one).
            match retry.per_try_timeout {
                Some(t) => {
                    assert!(!route.try_timeout.is_zero());
                    assert!(route.try_timeout.abs_diff(t) < Duration::from_millis(1), "{t:?}");
                }
                None => assert!(route.try_timeout.is_zero()),
            }
            for code in 100..=599u16 {
                let status = http::StatusCode::from_u16(code).expect("a status");
                let listed = retry.statuses.iter().any(|r| r.contains(&code));
                assert_eq!(route.is_failure(status), listed, "status {code}");
            }
        }
        None => assert!(route.is_none_or(|r| !r.retryable)),
    }
    if let Some(timeout) = policy.request_timeout {
        assert_eq!(route.map(|r| r.timeout), Some(timeout));
    }
});
