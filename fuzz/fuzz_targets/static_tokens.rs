//! The identity service's static token file (YAML a user writes): parsing never panics, and
//! every token of a file that loads proves exactly the service account its entry names.
#![no_main]

use std::{
    collections::HashMap,
    pin::pin,
    task::{Context, Poll, Waker},
};

use libfuzzer_sys::fuzz_target;
use weft_identity::{
    IdentityDomain,
    token::{ServiceAccount, StaticTokens, TokenValidator},
};

fuzz_target!(|text: &[u8]| {
    let domain = IdentityDomain::new("weft", "cluster.local").expect("domain");
    let Ok(tokens) = StaticTokens::parse("fuzz", text, &domain) else { return };
    let entries: HashMap<String, String> =
        serde_yaml_ng::from_slice(text).expect("a file that loads is a map of strings");
    assert!(tokens.len() <= entries.len());
    for (token, who) in &entries {
        let mut validate = pin!(tokens.validate(token.as_bytes()));
        let Poll::Ready(found) = validate.as_mut().poll(&mut Context::from_waker(Waker::noop()))
        else {
            panic!("validating a static token never waits");
        };
        let sa: ServiceAccount = found.expect("every token in the file is valid");
        let expected = match who.split_once('/') {
            Some((ns, name)) => (ns.to_string(), name.to_string()),
            None => {
                let id = domain.parse(who).expect("an entry that loads names an identity");
                (id.namespace().to_string(), id.service_account().to_string())
            }
        };
        assert_eq!((sa.namespace, sa.name), expected, "token {token:?}");
    }
});
