//! `weft inject` on arbitrary YAML streams: never a panic, and injecting its own output
//! again changes nothing (byte for byte), in both modes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_injector::{
    InjectorConfig,
    manifest::{Mode, Status, inject},
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, text)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(text) else { return };
    let mode = if mode % 2 == 0 { Mode::Manual } else { Mode::Annotate };
    let config = InjectorConfig::default();
    let once = inject(text, mode, &config);
    if !once.reports.iter().any(|r| r.status == Status::Changed) {
        assert_eq!(once.output, text, "nothing changed, yet the output differs");
        return;
    }
    let twice = inject(&once.output, mode, &config);
    let changed: Vec<_> = twice.reports.iter().filter(|r| r.status == Status::Changed).collect();
    assert!(changed.is_empty(), "injected twice: {changed:?}\n{}", once.output);
    assert_eq!(twice.output, once.output);
});
