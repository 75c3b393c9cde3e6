//! The access log of a request from any client (HTTP/1 bytes, as hyper parses them): the
//! trace id it takes from `traceparent` or B3 (`x-b3-traceid`, `b3`), and its lines.
//!
//! A trace id is 1 to 32 lowercase hex digits; one that a client propagates in any of the
//! three headers (any case) is the one logged, W3C first. Each line is one line, whatever
//! the request holds: the Apache line is printable ASCII whose escaped URI reads back to the
//! request's; the JSON line is a JSON object whose fields read back to the request's values.
#![no_main]

#[path = "shared/h1.rs"]
mod h1;

use std::{net::SocketAddr, sync::Arc};

use http::{HeaderValue, Request};
use libfuzzer_sys::fuzz_target;
use weft_proxy::http::access_log::fuzzing::{MAX_FIELD_BYTES, lines, trace_id};

const CLIENT: &str = "10.0.0.1:41234";
const CLIENT_ID: &str = "web.prod.serviceaccount.identity.weft.cluster.local";

fuzz_target!(|data: &[u8]| {
    let Some(req) = h1::h1_request(data) else { return };
    let headers = req.headers();

    let id = trace_id(headers);
    if let Some(id) = &id {
        assert!(is_trace_id(id), "{id:?}");
    }
    // A client that propagates a valid id has it logged, W3C's winning over B3's.
    if let Some(id) = &id {
        let span = "00f067aa0ba902b7";
        let padded = format!("{id:0>32}");
        for (name, value, want) in [
            ("x-b3-traceid", id.to_ascii_uppercase(), id),
            ("b3", format!("{id}-{span}-1"), id),
            ("traceparent", format!("00-{}-{span}-01", padded.to_ascii_uppercase()), &padded),
        ] {
            let mut h = headers.clone();
            h.insert(name, HeaderValue::from_str(&value).expect("hex"));
            if name != "traceparent" {
                h.remove("traceparent");
            }
            if name == "b3" {
                h.remove("x-b3-traceid");
            }
            assert_eq!(trace_id(&h).as_deref(), Some(want.as_str()), "{name}: {value}");
        }
    }

    let client: SocketAddr = CLIENT.parse().expect("addr");
    for client_id in [None, Some(Arc::<str>::from(CLIENT_ID))] {
        let [apache, json] = lines(&req, client, client_id.clone(), 503, 17);
        for line in [&apache, &json] {
            assert_eq!(line.find('\n'), Some(line.len() - 1), "one line: {line:?}");
            assert!(!line.contains('\r'), "{line:?}");
        }
        apache_line(&req, &apache, client_id.is_some());
        json_line(&req, &json, id.as_deref());
    }
});

fn is_trace_id(id: &str) -> bool {
    (1..=32).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `client ident - [timestamp] "METHOD uri VERSION" status bytes`
fn apache_line(req: &Request<()>, line: &str, with_id: bool) {
    let line = line.strip_suffix('\n').expect("newline");
    assert!(line.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{line:?}");
    let ident = if with_id { CLIENT_ID } else { "-" };
    let rest = line.strip_prefix(&format!("{CLIENT} {ident} - [")).expect(line);
    let (_, rest) = rest.split_once("] \"").expect(line);
    let rest = rest.strip_prefix(&format!("{} ", req.method())).expect(line);
    let rest = rest.strip_suffix(&format!(" {:?}\" 503 17", req.version())).expect(line);
    let uri = req.uri().to_string();
    assert_eq!(unescape(rest), capped(uri.as_bytes()), "{line:?}");
}

/// Apache's escapes: `\"`, `\\`, `\xHH`; a quote is never bare.
fn unescape(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        assert_ne!(b, b'"', "a bare quote in {s:?}");
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'"') => out.push(b'"'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex = [bytes.next().expect("hex"), bytes.next().expect("hex")];
                let hex = std::str::from_utf8(&hex).expect("hex");
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
            }
            other => panic!("escape {other:?} in {s:?}"),
        }
    }
    out
}

/// A field as logged: cut at the limit, marked.
fn capped(value: &[u8]) -> Vec<u8> {
    match value.len() > MAX_FIELD_BYTES {
        true => [&value[..MAX_FIELD_BYTES], b"..."].concat(),
        false => value.to_vec(),
    }
}

fn json_line(req: &Request<()>, line: &str, id: Option<&str>) {
    let v: serde_json::Value = serde_json::from_str(line).expect(line);
    let s = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} in {line}")).to_string();
    let text = |value: &[u8]| -> String {
        let cut = capped(value);
        match cut.strip_suffix(b"...").filter(|_| value.len() > MAX_FIELD_BYTES) {
            Some(head) => format!("{}...", String::from_utf8_lossy(head)),
            None => String::from_utf8_lossy(&cut).into_owned(),
        }
    };
    let header = |name| req.headers().get(name).map_or(&b""[..], HeaderValue::as_bytes);
    assert_eq!(s("method"), req.method().as_str());
    assert_eq!(s("uri"), text(req.uri().to_string().as_bytes()));
    assert_eq!(s("host"), text(header(http::header::HOST)));
    assert_eq!(s("user_agent"), text(header(http::header::USER_AGENT)));
    assert_eq!(s("trace_id"), id.unwrap_or(""));
    assert_eq!(s("version"), format!("{:?}", req.version()));
    assert_eq!(v["status"], 503);
}
