//! A destination service's `GetProfile` answer (protobuf bytes): converting it never
//! panics; the retry budget it yields is finite and within its bounds, route limits are
//! bounded, and every route's conditions can be evaluated.
#![no_main]

use std::time::Duration;

use http::{Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use linkerd2_proxy_api::destination::DestinationProfile;
use prost::Message;
use weft_proxy::profile::from_api;

fuzz_target!(|data: &[u8]| {
    let Ok(p) = DestinationProfile::decode(data) else { return };
    let (profile, errors) = from_api(&p);
    assert_eq!(profile.routes.len() + errors.len(), p.routes.len());
    let b = profile.budget;
    assert!(b.ratio.is_finite() && (0.0..=1000.0).contains(&b.ratio), "ratio {}", b.ratio);
    assert!((Duration::from_secs(1)..=Duration::from_secs(60)).contains(&b.ttl));
    for r in &profile.routes {
        assert!(r.retry_limit <= 100);
        let _ = r.condition.matches(&Method::GET, "/a/b");
        for code in [200, 404, 503] {
            let _ = r.is_failure(StatusCode::from_u16(code).expect("a status"));
        }
    }
    let _ = profile.route(&Method::POST, "/");
});
