//! Protocol detection over arbitrary bytes: never panics, a full buffer always decides, and
//! an SNI it reports is a lowercase host name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::detect::{Detect, Protocol, detect};

fuzz_target!(|data: &[u8]| {
    for n in 0..=data.len().min(512) {
        let _ = detect(&data[..n], 8192);
    }
    if !data.is_empty() {
        let found = detect(data, data.len());
        assert_ne!(found, Detect::NeedMore);
        if let Detect::Found(Protocol::Tls { sni: Some(sni) }) = found {
            assert!(!sni.is_empty());
            assert!(
                sni.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
            );
        }
    }
});
