//! Identity names, SPIFFE IDs and service-account usernames from peers' certificates,
//! CSRs, tokens and flags: a name that parses formats back to itself, its parts rebuild it,
//! and its SPIFFE ID round-trips too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_identity::{IdentityDomain, IdentityName, SpiffeId, token::ServiceAccount};

fuzz_target!(|s: &str| {
    if let Ok(id) = s.parse::<IdentityName>() {
        assert_eq!(id.to_string(), s);
        assert_eq!(id.as_str().parse::<IdentityName>().as_ref(), Ok(&id));
        let domain = IdentityDomain::new(id.control_plane_ns(), id.trust_domain())
            .expect("the domain of a valid name is valid");
        assert_eq!(domain.identity(id.namespace(), id.service_account()).as_ref(), Ok(&id));
        assert_eq!(domain.parse(s).as_ref(), Ok(&id));
        let spiffe = id.spiffe_id();
        assert_eq!(spiffe.to_string().parse::<SpiffeId>().as_ref(), Ok(&spiffe));
    }
    if let Ok(spiffe) = s.parse::<SpiffeId>() {
        assert_eq!(spiffe.to_string(), s);
    }
    if let Ok(sa) = ServiceAccount::from_username(s) {
        assert_eq!(format!("system:serviceaccount:{}:{}", sa.namespace, sa.name), s);
    }
    if let Some((cp, td)) = s.split_once('|')
        && let Ok(domain) = IdentityDomain::new(cp, td)
    {
        let service = domain.identity_service_name();
        assert_eq!(service.control_plane_ns(), cp);
        assert_eq!(service.trust_domain(), td);
    }
});
