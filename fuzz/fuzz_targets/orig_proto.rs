//! `l5d-orig-proto`: an inbound proxy downgrades whatever a peer marks. Any request with any
//! marking downgrades without panicking and leaves no marking behind; an HTTP/1 request
//! that upgrades comes back, after a downgrade, with its version, path and host.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use http::{HeaderName, HeaderValue, Request, Uri, Version, header::HOST};
use libfuzzer_sys::fuzz_target;
use weft_proxy::http::orig_proto::{HEADER, downgrade, upgrade};

#[derive(Arbitrary, Debug)]
struct Input {
    http10: bool,
    uri: String,
    host: Option<Vec<u8>>,
    marking: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

fn request(input: &Input, version: Version) -> Option<Request<()>> {
    let uri: Uri = input.uri.parse().ok()?;
    let mut req = Request::builder().version(version).uri(uri).body(()).ok()?;
    for (name, value) in &input.headers {
        if let (Ok(n), Ok(v)) =
            (HeaderName::try_from(name.as_str()), HeaderValue::from_bytes(value))
        {
            req.headers_mut().append(n, v);
        }
    }
    if let Some(host) = input.host.as_deref().and_then(|h| HeaderValue::from_bytes(h).ok()) {
        req.headers_mut().insert(HOST, host);
    }
    Some(req)
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };

    // What a peer may send: an HTTP/2 request with any marking.
    if let Some(mut req) = request(&input, Version::HTTP_2) {
        if let Some(v) = input.marking.as_deref().and_then(|m| HeaderValue::from_bytes(m).ok()) {
            req.headers_mut().insert(HEADER.clone(), v);
        }
        let marked = req.headers().contains_key(&HEADER);
        match downgrade(&mut req) {
            Ok(downgraded) => {
                assert_eq!(downgraded, marked);
                if downgraded {
                    assert!(matches!(req.version(), Version::HTTP_10 | Version::HTTP_11));
                }
            }
            Err(_) => {}
        }
        assert!(!req.headers().contains_key(&HEADER), "the marking reached the app");
    }

    // What our outbound side sends, and the inbound side restores.
    let version = if input.http10 { Version::HTTP_10 } else { Version::HTTP_11 };
    if let Some(mut req) = request(&input, version) {
        req.headers_mut().remove(&HEADER);
        let before = req.clone();
        if upgrade(&mut req).is_ok() {
            assert_eq!(req.version(), Version::HTTP_2);
            assert!(req.headers().get(HOST).is_none());
            assert_eq!(downgrade(&mut req), Ok(true));
            assert_eq!(req.version(), version);
            // An authority-form target (only CONNECT's, which is never upgraded) gains `/`.
            if before.uri().path_and_query().is_some() {
                // Compared as paths: an absolute URI's empty path is `/`.
                assert_eq!(req.uri().path(), before.uri().path());
                assert_eq!(req.uri().query(), before.uri().query());
            }
            if before.uri().authority().is_some() {
                assert_eq!(req.uri().authority(), before.uri().authority());
            }
            assert!(req.headers().get(HOST).is_some(), "the request lost its host");
        }
    }
});
