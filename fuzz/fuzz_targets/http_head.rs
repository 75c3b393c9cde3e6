//! A request head from any client, checked before the proxy reads it: HTTP/1 bytes as hyper
//! parses them (httparse), or an HTTP/2 header list as h2 decodes it. Input starting with
//! `2` is the HTTP/2 list, one `name:value` field a line (pseudo-headers first, as on the
//! wire); anything else is HTTP/1 bytes.
//!
//! The checks never panic. A refusal is a 400 (a 501 for a transfer coding). A head they
//! pass is consistent: it names an authority, without user information, that routing sees
//! and the app gets (HTTP/1.1: one valid Host, an absolute target's; HTTP/2: `:authority`
//! and no Host); it carries no hop-by-hop header but an upgrade's `Upgrade` and
//! `Connection: upgrade` and gRPC's `te: trailers`; no HTTP/1 request carries
//! `l5d-orig-proto`; no HTTP/2 field value is padded; `*` is for OPTIONS. Checking it
//! again passes and changes nothing.
#![no_main]

#[path = "shared/h1.rs"]
mod h1;

use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version,
    header::{CONNECTION, HOST, TE, TRANSFER_ENCODING, UPGRADE},
    uri,
};
use libfuzzer_sys::fuzz_target;
use weft_proxy::http::{
    fuzzing::{authority, check_head, h1_host, h2_authority, host_syntax, is_upgrade},
    orig_proto,
};

fuzz_target!(|data: &[u8]| {
    let req = match data.split_first() {
        Some((b'2', list)) => h2_request(list),
        _ => h1::h1_request(data),
    };
    let Some(req) = req else { return };

    // The parts, each on a copy of what arrived.
    if req.version() == Version::HTTP_2 {
        let mut r = req.clone();
        if h2_authority(&mut r).is_ok() {
            assert!(r.uri().authority().is_some() && r.headers().get(HOST).is_none(), "{r:?}");
        }
    } else {
        // User information is refused before (`check_head`): it is no host.
        let mut r = req.clone();
        let user_info = r.uri().authority().is_some_and(|a| a.as_str().contains('@'));
        if h1_host(&mut r).is_ok() && !user_info {
            let hosts: Vec<_> = r.headers().get_all(HOST).iter().collect();
            assert!(hosts.len() <= 1, "{r:?}");
            assert!(hosts.iter().all(|h| host_syntax(h.as_bytes())), "{r:?}");
        }
    }
    for h in req.headers().get_all(HOST) {
        if host_syntax(h.as_bytes()) {
            assert!(h.to_str().is_ok_and(|s| !s.is_empty()), "{h:?}");
        }
    }

    let before = req.clone();
    let mut req = req;
    match check_head(&mut req) {
        Err((status, message)) => {
            assert!(
                status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_IMPLEMENTED,
                "{status} {message}"
            );
            assert!(!message.is_empty());
        }
        Ok(()) => {
            passed(&before, &req);
            let mut again = req.clone();
            assert_eq!(check_head(&mut again), Ok(()), "checked once: {req:?}");
            assert_eq!(
                (again.method(), again.uri(), again.version(), again.headers()),
                (req.method(), req.uri(), req.version(), req.headers()),
                "checked twice"
            );
        }
    }
});

/// What a head that passed holds.
fn passed(before: &Request<()>, req: &Request<()>) {
    let h = req.headers();
    let seen = authority(req);
    assert!(!seen.contains('@'), "user information reaches the app: {req:?}");
    assert!(req.uri().path() != "*" || req.method() == Method::OPTIONS, "{req:?}");
    assert_eq!(req.version(), before.version());
    assert_eq!(req.method(), before.method());

    if req.version() == Version::HTTP_2 {
        assert!(req.uri().authority().is_some(), "no :authority: {req:?}");
        assert!(h.get(HOST).is_none(), "Host beside :authority: {req:?}");
        let padded = |v: &[u8]| {
            [v.first(), v.last()].into_iter().flatten().any(|&c| c == b' ' || c == b'\t')
        };
        assert!(h.values().all(|v| !padded(v.as_bytes())), "{req:?}");
        // The path is kept (a request with Host alone gets that as its `:authority`).
        if let Some(path) = before.uri().path_and_query() {
            let after = req.uri().path_and_query().map(|p| p.as_str());
            assert_eq!(after, Some(path.as_str()), "{req:?}");
        }
    } else {
        let hosts: Vec<&HeaderValue> = h.get_all(HOST).iter().collect();
        assert!(hosts.len() <= 1, "{req:?}");
        if req.version() == Version::HTTP_11 {
            assert_eq!(hosts.len(), 1, "HTTP/1.1 without a Host: {req:?}");
        }
        if let Some(host) = hosts.first() {
            assert!(host_syntax(host.as_bytes()), "{host:?}");
            // What routing sees is what the app gets (CONNECT's target is its own).
            if req.method() != Method::CONNECT {
                assert_eq!(host.to_str().ok(), Some(seen), "{req:?}");
            }
        }
        assert!(h.get(&orig_proto::HEADER).is_none(), "a client passed as a peer proxy");
        assert_eq!(req.uri(), before.uri());
    }
    if req.version() != Version::HTTP_10 {
        assert!(!seen.is_empty(), "no authority: {req:?}");
    }

    // Hop-by-hop headers.
    for name in [TRANSFER_ENCODING, http::header::PROXY_AUTHENTICATE] {
        assert!(h.get(&name).is_none(), "{name}: {req:?}");
    }
    for name in ["keep-alive", "proxy-connection"] {
        assert!(h.get(name).is_none(), "{name}: {req:?}");
    }
    assert!(h.get_all(TE).iter().all(|v| v == "trailers") && h.get_all(TE).iter().count() <= 1);
    match h.get(UPGRADE) {
        Some(_) => {
            // Kept only for what goes on as an upgrade.
            assert!(is_upgrade(req), "Upgrade kept on no upgrade: {before:?} -> {req:?}");
            assert!(h.get_all(CONNECTION).iter().eq([&HeaderValue::from_static("upgrade")]));
            let mut protocols =
                h.get_all(UPGRADE).iter().flat_map(|v| v.to_str().unwrap_or("").split(','));
            assert!(protocols.all(|p| !p.trim().eq_ignore_ascii_case("h2c")), "{req:?}");
            assert!(before.headers().get_all(CONNECTION).iter().any(|v| {
                v.to_str()
                    .unwrap_or("")
                    .split(',')
                    .any(|n| n.trim().eq_ignore_ascii_case("upgrade"))
            }));
        }
        None => assert!(h.get(CONNECTION).is_none(), "{req:?}"),
    }
    // Nothing but hop-by-hop headers (and those `Connection` named) went; HTTP/2 only gave
    // Host to `:authority`.
    for (name, value) in before.headers() {
        let kept = h.get_all(name).iter().any(|v| v == value);
        let hop = [CONNECTION, TRANSFER_ENCODING, UPGRADE, TE, http::header::PROXY_AUTHENTICATE]
            .contains(name)
            || name == "keep-alive"
            || name == "proxy-connection"
            || name == http::header::CONTENT_LENGTH
            || name == HOST
            || name == orig_proto::HEADER;
        let named = before.headers().get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|n| n.trim().eq_ignore_ascii_case(name.as_str()))
        });
        assert!(kept || hop || named, "{name}: {value:?} went: {before:?} -> {req:?}");
    }
}

/// HTTP/2 as h2 decodes a header block and hyper builds the request.
fn h2_request(list: &[u8]) -> Option<Request<()>> {
    let (mut method, mut scheme, mut authority, mut path, mut protocol) =
        (None, None, None, None, None);
    let mut fields = HeaderMap::new();
    for line in list.split(|&b| b == b'\n') {
        let colon = line.iter().skip(1).position(|&b| b == b':')? + 1;
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let Some(pseudo) = name.strip_prefix(b":") {
            // Pseudo-headers come first, once each, and are text.
            if !fields.is_empty() {
                return None;
            }
            let text = std::str::from_utf8(value).ok()?.to_string();
            let slot = match pseudo {
                b"method" => {
                    if method.is_some() {
                        return None;
                    }
                    method = Some(Method::from_bytes(value).ok()?);
                    continue;
                }
                b"scheme" => &mut scheme,
                b"authority" => &mut authority,
                b"path" => &mut path,
                b"protocol" => &mut protocol,
                _ => return None,
            };
            if slot.replace(text).is_some() {
                return None;
            }
            continue;
        }
        let name = HeaderName::from_lowercase(name).ok()?;
        let value = HeaderValue::from_bytes(value).ok()?;
        // Connection-specific fields make the message malformed (RFC 9113 §8.2.2).
        if [CONNECTION, TRANSFER_ENCODING, UPGRADE].contains(&name)
            || name == "keep-alive"
            || name == "proxy-connection"
            || (name == TE && value != "trailers")
        {
            return None;
        }
        fields.append(name, value);
    }
    let method = method?;
    let connect = method == Method::CONNECT;
    let extended = protocol.is_some();
    if extended && !connect {
        return None;
    }
    let mut parts = uri::Parts::default();
    if let Some(a) = authority {
        parts.authority = Some(uri::Authority::try_from(a).ok()?);
    }
    match scheme {
        Some(s) if !connect || extended => {
            let s: uri::Scheme = s.parse().ok()?;
            if parts.authority.is_some() {
                parts.scheme = Some(s);
            }
        }
        Some(_) => return None,
        None if !connect || extended => return None,
        None => {}
    }
    match path {
        Some(p) if !connect || extended => {
            if p.is_empty() {
                return None;
            }
            parts.path_and_query = Some(uri::PathAndQuery::try_from(p).ok()?);
        }
        Some(_) => return None,
        None if connect && extended => return None,
        None => {}
    }
    let mut req =
        Request::builder().version(Version::HTTP_2).method(method).uri(parts).body(()).ok()?;
    *req.headers_mut() = fields;
    Some(req)
}
