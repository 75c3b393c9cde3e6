//! A destination service's `Get` update (protobuf bytes): every endpoint of an `Add`
//! converts without panicking, keeps the address it was sent with, and gets each of its
//! labels exactly once, prefixed `dst_`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linkerd2_proxy_api::destination::{Update, update};
use prost::Message;
use weft_proxy::discovery::endpoint;

fuzz_target!(|data: &[u8]| {
    let Ok(Update { update: Some(update::Update::Add(set)) }) = Update::decode(data) else {
        return;
    };
    for addr in &set.addrs {
        let Some((sa, meta)) = endpoint(&set.metric_labels, addr) else { continue };
        let sent = addr.addr.as_ref().expect("an endpoint has an address");
        assert_eq!(u32::from(sa.port()), sent.port);
        let labels = &meta.labels.0;
        assert!(labels.windows(2).all(|w| w[0].0 < w[1].0), "labels sorted and unique");
        assert!(labels.iter().all(|(k, _)| k.starts_with("dst_")));
        let keys: std::collections::BTreeSet<&String> =
            set.metric_labels.keys().chain(addr.metric_labels.keys()).collect();
        assert_eq!(labels.len(), keys.len());
    }
});
