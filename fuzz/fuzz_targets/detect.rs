//! Protocol detection over arbitrary bytes: never panics, and a full buffer always decides.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::detect::{Detect, detect};

fuzz_target!(|data: &[u8]| {
    for n in 0..=data.len().min(512) {
        let _ = detect(&data[..n], 8192);
    }
    if !data.is_empty() {
        assert_ne!(detect(data, data.len()), Detect::NeedMore);
    }
});
