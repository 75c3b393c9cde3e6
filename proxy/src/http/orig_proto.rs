//! HTTP/1 over HTTP/2 between proxies, as linkerd2-proxy does it: the outbound proxy
//! sends an HTTP/1 request as HTTP/2 marked `l5d-orig-proto: HTTP/1.1` (or `HTTP/1.0`,
//! with `; absolute-form` when the request target was absolute), and the inbound proxy
//! restores the original request for the app.

use http::{
    HeaderName, HeaderValue, Request, Uri, Version,
    header::{COOKIE, HOST},
    uri::Authority,
};

/// (A `HeaderName` made at compile time: a `&str` name is parsed and checked on every use.)
pub static HEADER: HeaderName = HeaderName::from_static("l5d-orig-proto");
const ABSOLUTE_FORM: &str = "; absolute-form";

/// Why a request could not be carried as HTTP/2.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("an HTTP/1 request without a Host header cannot be carried over HTTP/2")]
    NoAuthority,
    #[error("invalid l5d-orig-proto header {0:?}")]
    BadHeader(String),
}

/// Turns an HTTP/1 request into an HTTP/2 one marked with its original version.
pub fn upgrade<B>(req: &mut Request<B>) -> Result<(), Error> {
    let orig = match req.version() {
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let absolute = req.uri().authority().is_some();
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<Authority>().ok())
            .ok_or(Error::NoAuthority)?,
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    let scheme = req.uri().scheme_str().unwrap_or("http").to_string();
    *req.uri_mut() = Uri::builder()
        .scheme(scheme.as_str())
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| Error::NoAuthority)?;
    let value = if absolute { format!("{orig}{ABSOLUTE_FORM}") } else { orig.to_string() };
    req.headers_mut()
        .insert(HEADER.clone(), HeaderValue::from_str(&value).map_err(|_| Error::NoAuthority)?);
    // `:authority` now carries it; HTTP/2 forbids a conflicting Host.
    req.headers_mut().remove(HOST);
    *req.version_mut() = Version::HTTP_2;
    Ok(())
}

/// Restores an HTTP/1 request from one marked by `upgrade`; `Ok(false)` when unmarked.
pub fn downgrade<B>(req: &mut Request<B>) -> Result<bool, Error> {
    let Some(value) = req.headers_mut().remove(&HEADER) else {
        return Ok(false);
    };
    let value = value.to_str().map_err(|_| Error::BadHeader(format!("{value:?}")))?.to_string();
    let (version, absolute) = match value.strip_suffix(ABSOLUTE_FORM) {
        Some(v) => (v, true),
        None => (value.as_str(), false),
    };
    *req.version_mut() = match version {
        "HTTP/1.1" => Version::HTTP_11,
        "HTTP/1.0" => Version::HTTP_10,
        _ => return Err(Error::BadHeader(value)),
    };
    // HTTP/1's Host is `:authority` (RFC 9113 §8.3.1: an intermediary making one must).
    if let Some(authority) = req.uri().authority() {
        let host = HeaderValue::from_str(authority.as_str())
            .map_err(|_| Error::BadHeader(value.clone()))?;
        req.headers_mut().insert(HOST, host);
    }
    // HTTP/2 may split the cookies over several fields; HTTP/1 has one (RFC 9113 §8.2.3).
    let headers = req.headers_mut();
    if headers.get_all(COOKIE).iter().nth(1).is_some() {
        let joined: Vec<u8> = headers.get_all(COOKIE).iter().fold(Vec::new(), |mut all, c| {
            if !all.is_empty() {
                all.extend_from_slice(b"; ");
            }
            all.extend_from_slice(c.as_bytes());
            all
        });
        let joined =
            HeaderValue::from_bytes(&joined).map_err(|_| Error::BadHeader(value.clone()))?;
        headers.insert(COOKIE, joined);
    }
    if !absolute {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
        *req.uri_mut() = path.parse().map_err(|_| Error::BadHeader(value.clone()))?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn origin_form_round_trips() {
        let mut r = req(Version::HTTP_11, "/a/b?c=1", Some("web.prod:8080"));
        upgrade(&mut r).expect("upgrade");
        assert_eq!(r.version(), Version::HTTP_2);
        assert_eq!(r.uri(), "http://web.prod:8080/a/b?c=1");
        assert_eq!(r.headers()[&HEADER], "HTTP/1.1");
        assert!(r.headers().get(HOST).is_none());
        assert_eq!(downgrade(&mut r), Ok(true));
        assert_eq!(r.version(), Version::HTTP_11);
        assert_eq!(r.uri(), "/a/b?c=1");
        assert_eq!(r.headers()[HOST], "web.prod:8080");
        assert!(r.headers().get(&HEADER).is_none());
    }

    #[test]
    fn absolute_form_and_http10_round_trip() {
        let mut r = req(Version::HTTP_10, "http://a.example/x", None);
        upgrade(&mut r).expect("upgrade");
        assert_eq!(r.headers()[&HEADER], "HTTP/1.0; absolute-form");
        assert_eq!(downgrade(&mut r), Ok(true));
        assert_eq!(r.version(), Version::HTTP_10);
        assert_eq!(r.uri(), "http://a.example/x");
        assert_eq!(r.headers()[HOST], "a.example");
    }

    #[test]
    fn the_http1_request_gets_authority_as_host_and_one_cookie_field() {
        let mut r = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://svc.test/a")
            .header(&HEADER, "HTTP/1.1")
            .header(HOST, "admin.internal")
            .header(COOKIE, "a=1")
            .header(COOKIE, "b=2")
            .body(())
            .expect("request");
        assert_eq!(downgrade(&mut r), Ok(true));
        assert_eq!(r.headers()[HOST], "svc.test");
        let cookies: Vec<_> = r.headers().get_all(COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
    }

    #[test]
    fn unmarked_and_bad_headers() {
        let mut r = req(Version::HTTP_2, "http://a/", None);
        assert_eq!(downgrade(&mut r), Ok(false));
        let mut r = req(Version::HTTP_2, "http://a/", None);
        r.headers_mut().insert(HEADER.clone(), HeaderValue::from_static("SPDY/3"));
        assert!(downgrade(&mut r).is_err());
        let mut r = req(Version::HTTP_11, "/", None);
        assert_eq!(upgrade(&mut r), Err(Error::NoAuthority));
    }
}
