//! A destination service's `Get` update (protobuf bytes): every endpoint of an `Add`
//! converts without panicking, keeps the address it was sent with, and gets at most
//! `MAX_DST_LABELS` labels, each once, each a valid Prometheus label name prefixed `dst_`
//! (so that no update can make `/metrics` unparsable); an update whose labels needed no
//! change keeps them all.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkerd2_proxy_api::destination::{Update, update};
use prost::Message;
use weft_proxy::discovery::{MAX_DST_LABELS, endpoint};

fuzz_target!(|data: &[u8]| {
    let Ok(Update { update: Some(update::Update::Add(set)) }) = Update::decode(data) else {
        return;
    };
    for addr in &set.addrs {
        let Some((sa, meta, fixed)) = endpoint(&set.metric_labels, addr) else { continue };
        let sent = addr.addr.as_ref().expect("an endpoint has an address");
        assert_eq!(u32::from(sa.port()), sent.port);
        let labels = &meta.labels.0;
        assert!(labels.windows(2).all(|w| w[0].0 < w[1].0), "labels sorted and unique");
        assert!(labels.len() <= MAX_DST_LABELS);
        for (k, _) in labels.iter() {
            let name = k.strip_prefix("dst_").expect("prefixed");
            assert!(!name.is_empty());
            assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{k}");
        }
        if !fixed {
            let keys: std::collections::BTreeSet<&String> =
                set.metric_labels.keys().chain(addr.metric_labels.keys()).collect();
            assert_eq!(labels.len(), keys.len());
        }
    }
});
