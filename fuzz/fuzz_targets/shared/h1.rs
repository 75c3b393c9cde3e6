//! HTTP/1 request heads as the proxy's server sees them, shared by the fuzz targets that
//! take one (included with `#[path]`: the targets are separate binaries).

use http::{HeaderName, HeaderValue, Method, Request, Uri, Version, header::TRANSFER_ENCODING};

/// HTTP/1 as hyper's server reads it: httparse, then hyper's own framing rules.
pub fn h1_request(data: &[u8]) -> Option<Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    let mut parsed = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(_) = parsed.parse(data).ok()? else { return None };
    let method = Method::from_bytes(parsed.method?.as_bytes()).ok()?;
    let uri: Uri = parsed.path?.parse().ok()?;
    let version = if parsed.version? == 1 { Version::HTTP_11 } else { Version::HTTP_10 };
    let mut req = Request::builder().method(method).uri(uri).version(version).body(()).ok()?;
    let map = req.headers_mut();
    let (mut te, mut te_chunked) = (false, false);
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        if name == TRANSFER_ENCODING {
            // hyper: HTTP/1.0 has no codings; a coding drops the length; the last coding
            // must be chunked.
            if version == Version::HTTP_10 {
                return None;
            }
            te = true;
            map.remove(http::header::CONTENT_LENGTH);
            te_chunked = value
                .to_str()
                .ok()
                .and_then(|v| v.rsplit(',').next())
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        } else if name == http::header::CONTENT_LENGTH && te {
            continue;
        }
        map.append(name, value);
    }
    (!te || te_chunked).then_some(req)
}
