//! Config annotation values (`config.weft.dev/*`) as the injector checks them, and the same
//! values as the proxy and its init container parse them from the env the injector
//! renders: what the injector accepts the proxy accepts with the same meaning (else a pod
//! is admitted that then crash-loops), and each normalized value is stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_injector::values;
use weft_proxy::{
    config::{PortSet, parse_duration},
    init::Subnets,
    policy::ProbeRoutes,
};

fuzz_target!(|s: &str| {
    if let Ok(norm) = values::ports(s) {
        assert_eq!(values::ports(&norm).as_deref(), Ok(norm.as_str()));
        let ours: PortSet = s.parse().expect("the proxy takes the ports the injector takes");
        let theirs: PortSet = norm.parse().expect("the proxy takes the normalized ports");
        for p in 0..=u16::MAX {
            assert_eq!(ours.contains(p), theirs.contains(p), "port {p}");
        }
    }
    if let Ok(norm) = values::subnets(s) {
        assert_eq!(values::subnets(&norm).as_deref(), Ok(norm.as_str()));
        let subnets: Subnets = norm.parse().expect("init takes the subnets the injector takes");
        let again: Subnets = subnets.to_string().parse().expect("formatted subnets parse");
        assert_eq!(again, subnets);
    }
    if let Ok(ms) = values::duration_ms(s) {
        let d = parse_duration(s).expect("the proxy takes the durations the injector takes");
        assert_eq!(d.as_millis(), u128::from(ms), "{s:?}");
    }
    if let Ok(q) = values::quantity(s) {
        assert!(q.is_finite() && q >= 0.0, "{s:?} is {q}");
    }
    if let Ok(uid) = values::uid(s) {
        assert!(uid > 0);
    }
    if let Ok(level) = values::log_level(s) {
        assert_eq!(values::log_level(&level).as_deref(), Ok(level.as_str()));
    }
    if let Ok(image) = values::image(s) {
        let _ = values::image_version(&image);
    }
    if let Ok(routes) = s.parse::<ProbeRoutes>() {
        let again: ProbeRoutes = routes.to_string().parse().expect("formatted routes parse");
        assert_eq!(again, routes);
    }
});
