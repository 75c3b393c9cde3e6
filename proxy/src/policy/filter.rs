//! The filters of an inbound route rule, as Linkerd's policy API sends them
//! (`io.linkerd.proxy.inbound.HttpRoute.Filter` and `GrpcRoute.Filter`) and linkerd2-proxy
//! applies them to the requests that matched the rule: request header changes before the
//! app sees the request, redirects and injected failures answered by the proxy without
//! calling the app. gRPC routes have the same header changes and failures, the failure
//! being a gRPC status rather than an HTTP one.
//!
//! Everything is checked when the policy arrives (header names and values, statuses,
//! schemes, hosts, paths), so that applying a filter to a request cannot fail on the
//! filter's account; only a redirect of a request that names no host can.

use std::{hash::BuildHasher, sync::Arc};

use http::{
    HeaderMap, HeaderName, HeaderValue, Request, StatusCode,
    uri::{Authority, Scheme},
};
use linkerd2_proxy_api::{grpc_route as grpc_api, http_route as route_api, inbound as api};

/// A rule's filters, applied in order.
#[derive(Debug, Clone)]
pub struct Filters(Box<[Filter]>);

#[derive(Debug, Clone)]
enum Filter {
    RequestHeaders(HeaderModifier),
    Redirect(Redirect),
    Fail(FailureInjector),
}

/// Gateway API's header filter: adds, then sets, then removals, as the API orders them.
#[derive(Debug, Clone, Default)]
struct HeaderModifier {
    add: Vec<(HeaderName, HeaderValue)>,
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

#[derive(Debug, Clone)]
struct Redirect {
    /// `None`: the request's.
    scheme: Option<Scheme>,
    /// `None`: the request's host.
    host: Option<String>,
    /// `None`: the request's port, unless the scheme is replaced (then its well-known port).
    port: Option<u16>,
    path: Option<PathModifier>,
    status: StatusCode,
}

#[derive(Debug, Clone)]
enum PathModifier {
    /// The whole path (and query), replaced.
    Full(String),
    /// The part of the path that the rule's prefix match matched, replaced.
    Prefix(String),
}

#[derive(Debug, Clone)]
struct FailureInjector {
    failure: Failure,
    /// The body (gRPC: `grpc-message`), and `l5d-proxy-error` (checked to be a valid
    /// header value).
    message: Arc<str>,
    /// Out of `denominator` requests, `numerator` fail (`None`: all of them).
    ratio: Option<(u32, u32)>,
}

/// How an injected failure is answered: an HTTP route's with a status, a gRPC route's
/// with a gRPC status code (1-16) in a trailers-only response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Http(StatusCode),
    Grpc(u16),
}

/// What the proxy answers instead of calling the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Redirect {
        status: StatusCode,
        location: HeaderValue,
    },
    Fail {
        failure: Failure,
        message: Arc<str>,
    },
    /// A redirect that cannot be built for this request: it has no host to redirect to.
    NoRedirectHost,
}

impl Filters {
    /// A rule's filters; `None` when it has none (the request then costs nothing more).
    pub fn from_api(filters: Vec<api::http_route::Filter>) -> Result<Option<Self>, String> {
        use api::http_route::filter::Kind;
        Self::convert(filters, |f| match f.kind {
            Some(Kind::RequestHeaderModifier(m)) => Ok(Filter::RequestHeaders(header_modifier(m)?)),
            Some(Kind::Redirect(r)) => Ok(Filter::Redirect(redirect(r)?)),
            Some(Kind::FailureInjector(f)) => Ok(Filter::Fail(failure_injector(f)?)),
            // A kind newer than this proxy: ignoring it would serve the route without it.
            None => Err("a filter of a kind this proxy does not know".to_string()),
        })
    }

    /// A gRPC route rule's filters (header changes and failures only: the API has no gRPC
    /// redirect); `None` when it has none.
    pub fn from_grpc_api(filters: Vec<api::grpc_route::Filter>) -> Result<Option<Self>, String> {
        use api::grpc_route::filter::Kind;
        Self::convert(filters, |f| match f.kind {
            Some(Kind::RequestHeaderModifier(m)) => Ok(Filter::RequestHeaders(header_modifier(m)?)),
            Some(Kind::FailureInjector(f)) => Ok(Filter::Fail(grpc_failure_injector(f)?)),
            None => Err("a gRPC filter of a kind this proxy does not know".to_string()),
        })
    }

    /// Each of a rule's filters converted by `one`; `None` when it has none.
    fn convert<F>(
        filters: Vec<F>,
        one: impl FnMut(F) -> Result<Filter, String>,
    ) -> Result<Option<Self>, String> {
        if filters.is_empty() {
            return Ok(None);
        }
        let converted = filters.into_iter().map(one).collect::<Result<Vec<_>, String>>()?;
        Ok(Some(Filters(converted.into())))
    }

    /// Whether a redirect replaces the matched path prefix: the rule's matches must then
    /// all be prefix matches.
    pub fn replaces_prefix(&self) -> bool {
        self.0.iter().any(|f| {
            matches!(f, Filter::Redirect(Redirect { path: Some(PathModifier::Prefix(_)), .. }))
        })
    }

    /// Applies the filters to a request that matched their rule, in order; `prefix_len`:
    /// how many bytes of the path the rule's prefix match matched (`None`: not a prefix
    /// match). `Err`: the proxy answers instead of the app.
    pub fn apply<B>(&self, req: &mut Request<B>, prefix_len: Option<usize>) -> Result<(), Answer> {
        for filter in &self.0 {
            match filter {
                Filter::RequestHeaders(m) => m.apply(req.headers_mut()),
                Filter::Redirect(r) => return Err(r.answer(req, prefix_len)),
                Filter::Fail(f) => {
                    if f.fires() {
                        let (failure, message) = (f.failure, f.message.clone());
                        return Err(Answer::Fail { failure, message });
                    }
                }
            }
        }
        Ok(())
    }
}

impl HeaderModifier {
    fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.add {
            headers.append(name, value.clone());
        }
        for (name, value) in &self.set {
            headers.insert(name, value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }
}

impl FailureInjector {
    fn fires(&self) -> bool {
        match self.ratio {
            None => true,
            Some((n, d)) => {
                // A fresh hasher per call has fresh keys: a cheap random number, and only
                // for the requests of a rule that fails some of them.
                let r = std::collections::hash_map::RandomState::new().hash_one(());
                r % u64::from(d) < u64::from(n)
            }
        }
    }
}

impl Redirect {
    fn answer<B>(&self, req: &Request<B>, prefix_len: Option<usize>) -> Answer {
        match self.location(req, prefix_len) {
            Some(location) => Answer::Redirect { status: self.status, location },
            None => Answer::NoRedirectHost,
        }
    }

    /// The `Location`: the request's URL with the filter's parts replaced. Ports that are
    /// the scheme's well-known one are left out, as Gateway API says.
    fn location<B>(&self, req: &Request<B>, prefix_len: Option<usize>) -> Option<HeaderValue> {
        let uri = req.uri();
        let scheme = self.scheme.as_ref().or(uri.scheme()).unwrap_or(&Scheme::HTTP);
        let authority: Option<Authority> = match uri.authority() {
            Some(a) => Some(a.clone()),
            None => req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| Authority::try_from(h.as_bytes()).ok()),
        };
        let host = match (&self.host, &authority) {
            (Some(h), _) => h.as_str(),
            (None, Some(a)) => a.host(),
            (None, None) => return None,
        };
        let port = match (self.port, &self.scheme) {
            (Some(p), _) => Some(p),
            (None, Some(_)) => None,
            (None, None) => authority.as_ref().and_then(Authority::port_u16),
        };
        let port = port.filter(|&p| Some(p) != well_known_port(scheme));
        let path = uri.path();
        let path_and_query = match &self.path {
            None => uri.path_and_query().map_or(path, |pq| pq.as_str()).to_string(),
            Some(PathModifier::Full(p)) => p.clone(),
            Some(PathModifier::Prefix(replacement)) => {
                let rest = path.get(prefix_len.unwrap_or(0)..).unwrap_or("");
                let mut p = replace_prefix(replacement, rest);
                if let Some(q) = uri.query() {
                    p.push('?');
                    p.push_str(q);
                }
                p
            }
        };
        let location = match port {
            Some(port) => format!("{scheme}://{host}:{port}{path_and_query}"),
            None => format!("{scheme}://{host}{path_and_query}"),
        };
        HeaderValue::try_from(location).ok()
    }
}

/// The path of a redirect that replaces the matched prefix with `replacement`: `rest` is
/// what follows the prefix (empty, or from a `/`), so whole segments are kept and no `//`
/// appears where they meet (`/foo` → `/` on `/foo/bar` gives `/bar`).
fn replace_prefix(replacement: &str, rest: &str) -> String {
    let mut path = replacement.trim_end_matches('/').to_string();
    if !rest.is_empty() && !rest.starts_with('/') {
        path.push('/');
    }
    path.push_str(rest);
    if path.is_empty() {
        path.push('/');
    }
    path
}

fn well_known_port(scheme: &Scheme) -> Option<u16> {
    if *scheme == Scheme::HTTP {
        Some(80)
    } else if *scheme == Scheme::HTTPS {
        Some(443)
    } else {
        None
    }
}

fn headers(
    what: &str,
    h: Option<linkerd2_proxy_api::http_types::Headers>,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    h.map(|h| h.headers)
        .unwrap_or_default()
        .into_iter()
        .map(|h| {
            let name = header_name(&h.name)?;
            let value = HeaderValue::from_bytes(&h.value).map_err(|_| {
                format!("{what} header {:?}: {:?} is not a header value", h.name, h.value)
            })?;
            Ok((name, value))
        })
        .collect()
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("{name:?} is not a header name"))
}

fn header_modifier(m: route_api::RequestHeaderModifier) -> Result<HeaderModifier, String> {
    let bad = |e: String| format!("request header modifier: {e}");
    Ok(HeaderModifier {
        add: headers("added", m.add).map_err(bad)?,
        set: headers("set", m.set).map_err(bad)?,
        remove: m.remove.iter().map(|n| header_name(n)).collect::<Result<_, _>>().map_err(bad)?,
    })
}

fn redirect(r: route_api::RequestRedirect) -> Result<Redirect, String> {
    let bad = |e: String| format!("redirect: {e}");
    let scheme = match r.scheme {
        None => None,
        Some(s) => Some(Scheme::try_from(s).map_err(|e| bad(format!("bad scheme: {e}")))?),
    };
    let host = match r.host.as_str() {
        "" => None,
        h => {
            // A host name or an IP address, no port, no user: what goes between `//` and `:`.
            let ok = Authority::try_from(h).is_ok_and(|a| a.as_str() == a.host());
            if !ok {
                return Err(bad(format!("{h:?} is not a host name")));
            }
            Some(h.to_string())
        }
    };
    let port = match r.port {
        0 => None,
        p => Some(u16::try_from(p).map_err(|_| bad(format!("port {p} is out of range")))?),
    };
    let path = match r.path.and_then(|p| p.replace) {
        None => None,
        Some(route_api::path_modifier::Replace::Full(p)) => Some(PathModifier::Full(p)),
        Some(route_api::path_modifier::Replace::Prefix(p)) => Some(PathModifier::Prefix(p)),
    };
    if let Some(PathModifier::Full(p) | PathModifier::Prefix(p)) = &path {
        let ok = p.starts_with('/') && http::uri::PathAndQuery::try_from(p.as_str()).is_ok();
        if !ok {
            return Err(bad(format!("path {p:?} is not an absolute path")));
        }
    }
    // The API's default, as linkerd2-proxy reads it; controllers send Gateway API's (302).
    let status = match r.status {
        0 => StatusCode::MOVED_PERMANENTLY,
        s => u16::try_from(s)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .filter(StatusCode::is_redirection)
            .ok_or_else(|| bad(format!("status {s} is not a redirect (3xx)")))?,
    };
    Ok(Redirect { scheme, host, port, path, status })
}

fn failure_injector(f: route_api::HttpFailureInjector) -> Result<FailureInjector, String> {
    let status = u16::try_from(f.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or_else(|| format!("failure injector: status {} is not an HTTP status", f.status))?;
    injector(Failure::Http(status), f.message, f.ratio)
        .map_err(|e| format!("failure injector: {e}"))
}

fn grpc_failure_injector(f: grpc_api::GrpcFailureInjector) -> Result<FailureInjector, String> {
    let bad = |e: String| format!("gRPC failure injector: {e}");
    // 0 is OK, not a failure; past 16 no client knows the code.
    let code = u16::try_from(f.code)
        .ok()
        .filter(|c| (1..=16).contains(c))
        .ok_or_else(|| bad(format!("code {} is not a gRPC error status (1-16)", f.code)))?;
    injector(Failure::Grpc(code), f.message, f.ratio).map_err(bad)
}

/// The parts HTTP and gRPC failure injectors share: the message and the ratio.
fn injector(
    failure: Failure,
    message: String,
    ratio: Option<route_api::Ratio>,
) -> Result<FailureInjector, String> {
    if HeaderValue::from_str(&message).is_err() {
        return Err(format!("message {message:?} cannot be sent in a header"));
    }
    let message = Arc::from(message);
    let ratio = match ratio {
        None => None,
        Some(r) if r.denominator == 0 => return Err("ratio with a zero denominator".into()),
        Some(r) if r.numerator > r.denominator => {
            return Err(format!("ratio {}/{} is over 1", r.numerator, r.denominator));
        }
        Some(r) if r.numerator == r.denominator => None,
        Some(r) => Some((r.numerator, r.denominator)),
    };
    Ok(FailureInjector { failure, message, ratio })
}

#[cfg(test)]
mod tests {
    use linkerd2_proxy_api::http_types::{self, headers::Header};

    use super::*;

    fn filters(kinds: Vec<api::http_route::filter::Kind>) -> Result<Filters, String> {
        let f = kinds.into_iter().map(|k| api::http_route::Filter { kind: Some(k) }).collect();
        Filters::from_api(f).map(|f| f.expect("filters"))
    }

    fn hs(pairs: &[(&str, &str)]) -> Option<http_types::Headers> {
        Some(http_types::Headers {
            headers: pairs
                .iter()
                .map(|(n, v)| Header { name: n.to_string(), value: v.as_bytes().to_vec() })
                .collect(),
        })
    }

    fn redirect_filter(r: route_api::RequestRedirect) -> Filters {
        filters(vec![api::http_route::filter::Kind::Redirect(r)]).expect("valid")
    }

    fn location(f: &Filters, req: Request<()>, prefix_len: Option<usize>) -> (u16, String) {
        let mut req = req;
        match f.apply(&mut req, prefix_len) {
            Err(Answer::Redirect { status, location }) => {
                (status.as_u16(), location.to_str().expect("ascii").to_string())
            }
            other => panic!("not a redirect: {other:?}"),
        }
    }

    fn get(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn request_headers_are_added_then_set_then_removed() {
        use api::http_route::filter::Kind;
        let f = filters(vec![Kind::RequestHeaderModifier(route_api::RequestHeaderModifier {
            add: hs(&[("X-Added", "1"), ("x-multi", "b")]),
            set: hs(&[("x-set", "new"), ("X-Gone", "set but removed")]),
            remove: vec!["x-gone".into(), "x-absent".into()],
        })])
        .expect("valid");
        let mut req = Request::builder()
            .uri("/")
            .header("x-multi", "a")
            .header("x-set", "old1")
            .header("x-set", "old2")
            .header("x-gone", "g")
            .body(())
            .expect("request");
        assert_eq!(f.apply(&mut req, None), Ok(()));
        let h = req.headers();
        assert_eq!(h["x-added"], "1");
        let multi: Vec<_> = h.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"], "add keeps the values there");
        let set: Vec<_> = h.get_all("x-set").iter().collect();
        assert_eq!(set, ["new"], "set replaces every value");
        assert!(!h.contains_key("x-gone"));
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        use api::http_route::filter::Kind;
        let hm = |add, remove: &[&str]| {
            Kind::RequestHeaderModifier(route_api::RequestHeaderModifier {
                add,
                set: None,
                remove: remove.iter().map(|s| s.to_string()).collect(),
            })
        };
        let rd = |r: route_api::RequestRedirect| Kind::Redirect(r);
        let fail = |status, message: &str, ratio| {
            Kind::FailureInjector(route_api::HttpFailureInjector {
                status,
                message: message.into(),
                ratio,
            })
        };
        let path = |p: route_api::path_modifier::Replace| {
            Some(route_api::PathModifier { replace: Some(p) })
        };
        let cases = [
            (hm(hs(&[("bad name", "v")]), &[]), "not a header name"),
            (hm(hs(&[("x-a", "line\nbreak")]), &[]), "not a header value"),
            (hm(None, &["x:y"]), "not a header name"),
            (
                rd(route_api::RequestRedirect { status: 200, ..Default::default() }),
                "not a redirect",
            ),
            (
                rd(route_api::RequestRedirect { status: 70000, ..Default::default() }),
                "not a redirect",
            ),
            (rd(route_api::RequestRedirect { port: 70000, ..Default::default() }), "out of range"),
            (
                rd(route_api::RequestRedirect { host: "a.com:80".into(), ..Default::default() }),
                "not a host name",
            ),
            (
                rd(route_api::RequestRedirect {
                    path: path(route_api::path_modifier::Replace::Full("rel".into())),
                    ..Default::default()
                }),
                "absolute path",
            ),
            (
                rd(route_api::RequestRedirect {
                    path: path(route_api::path_modifier::Replace::Prefix("/a b".into())),
                    ..Default::default()
                }),
                "absolute path",
            ),
            (
                rd(route_api::RequestRedirect {
                    scheme: Some(http_types::Scheme { r#type: None }),
                    ..Default::default()
                }),
                "scheme",
            ),
            (fail(1000, "x", None), "not an HTTP status"),
            (fail(500, "a\nb", None), "cannot be sent"),
            (fail(500, "x", Some(route_api::Ratio { numerator: 1, denominator: 0 })), "zero"),
            (fail(500, "x", Some(route_api::Ratio { numerator: 3, denominator: 2 })), "over 1"),
        ];
        for (kind, why) in cases {
            let e = filters(vec![kind.clone()]).expect_err(why);
            assert!(e.contains(why), "{kind:?}: {e}");
        }
        let unknown = Filters::from_api(vec![api::http_route::Filter { kind: None }]);
        assert!(unknown.expect_err("unknown kind").contains("does not know"));
        assert!(Filters::from_api(Vec::new()).expect("no filters").is_none());
    }

    #[test]
    fn redirects_build_the_location_from_the_request() {
        use route_api::{PathModifier as Pm, RequestRedirect as R, path_modifier::Replace};
        let https = || Some(http_types::Scheme::from("https"));
        // Nothing replaced but the status: the request's own URL, from the Host header.
        let f = redirect_filter(R { status: 302, ..Default::default() });
        assert_eq!(
            location(&f, get("/a/b?x=1", Some("web.prod:8080")), None),
            (302, "http://web.prod:8080/a/b?x=1".into())
        );
        // No status: the API's default, 301. A new scheme drops the request's port.
        let f = redirect_filter(R { scheme: https(), ..Default::default() });
        assert_eq!(
            location(&f, get("/a", Some("web.prod:8080")), None),
            (301, "https://web.prod/a".into())
        );
        // A new host keeps the request's port; the scheme's own port is left out.
        let f = redirect_filter(R { host: "example.com".into(), ..Default::default() });
        assert_eq!(location(&f, get("/a", Some("web:8080")), None).1, "http://example.com:8080/a");
        assert_eq!(location(&f, get("/a", Some("web:80")), None).1, "http://example.com/a");
        assert_eq!(
            location(&f, get("/a", Some("[::1]:8080")), None).1,
            "http://example.com:8080/a"
        );
        let f = redirect_filter(R { port: 8443, scheme: https(), ..Default::default() });
        assert_eq!(location(&f, get("/a", Some("[::1]:8080")), None).1, "https://[::1]:8443/a");
        let f = redirect_filter(R { port: 443, scheme: https(), ..Default::default() });
        assert_eq!(location(&f, get("/a", Some("web:8080")), None).1, "https://web/a");
        // HTTP/2: the authority is in the URI.
        let f = redirect_filter(R { port: 9090, ..Default::default() });
        assert_eq!(location(&f, get("http://web:8080/a", None), None).1, "http://web:9090/a");
        // A full path replaces the path and the query.
        let full = |p: &str| Some(Pm { replace: Some(Replace::Full(p.into())) });
        let f = redirect_filter(R { path: full("/new?q=2"), ..Default::default() });
        assert_eq!(location(&f, get("/old?q=1", Some("web")), None).1, "http://web/new?q=2");
        // No host anywhere: nothing to redirect to.
        let mut req = get("/a", None);
        assert_eq!(f.apply(&mut req, None), Err(Answer::NoRedirectHost));
    }

    #[test]
    fn prefix_redirects_replace_whole_matched_segments() {
        use route_api::{PathModifier as Pm, RequestRedirect as R, path_modifier::Replace};
        let prefix = |p: &str| {
            redirect_filter(R {
                path: Some(Pm { replace: Some(Replace::Prefix(p.into())) }),
                ..Default::default()
            })
        };
        // The rule's prefix match `/foo` matched the path's first 4 bytes.
        let at = |f: &Filters, path: &str| location(f, get(path, Some("web")), Some(4)).1;
        let bar = prefix("/bar");
        assert!(bar.replaces_prefix());
        assert_eq!(at(&bar, "/foo/bar"), "http://web/bar/bar");
        assert_eq!(at(&bar, "/foo"), "http://web/bar");
        assert_eq!(at(&bar, "/foo/"), "http://web/bar/");
        assert_eq!(at(&bar, "/foo/x?q=1"), "http://web/bar/x?q=1", "the query is kept");
        assert_eq!(at(&prefix("/bar/"), "/foo/x"), "http://web/bar/x", "no //");
        assert_eq!(at(&prefix("/"), "/foo/x"), "http://web/x");
        assert_eq!(at(&prefix("/"), "/foo"), "http://web/");
        // A rule without a path match matched the empty prefix.
        assert_eq!(location(&bar, get("/x", Some("web")), Some(0)).1, "http://web/bar/x");
    }

    #[test]
    fn failures_are_injected_at_their_ratio() {
        use api::http_route::filter::Kind;
        let fail = |ratio| {
            filters(vec![Kind::FailureInjector(route_api::HttpFailureInjector {
                status: 503,
                message: "injected".into(),
                ratio,
            })])
            .expect("valid")
        };
        let failed = |f: &Filters| {
            (0..2000)
                .filter(|_| {
                    let mut req = get("/", None);
                    match f.apply(&mut req, None) {
                        Err(Answer::Fail { failure, message }) => {
                            assert_eq!(
                                (failure, message.as_bytes()),
                                (Failure::Http(StatusCode::SERVICE_UNAVAILABLE), &b"injected"[..])
                            );
                            true
                        }
                        Ok(()) => false,
                        Err(other) => panic!("{other:?}"),
                    }
                })
                .count()
        };
        assert_eq!(failed(&fail(None)), 2000);
        assert_eq!(failed(&fail(Some(route_api::Ratio { numerator: 0, denominator: 5 }))), 0);
        let quarter = failed(&fail(Some(route_api::Ratio { numerator: 1, denominator: 4 })));
        assert!((350..650).contains(&quarter), "{quarter} of 2000 at 1/4");
    }

    fn grpc_filters(kinds: Vec<api::grpc_route::filter::Kind>) -> Result<Filters, String> {
        let f = kinds.into_iter().map(|k| api::grpc_route::Filter { kind: Some(k) }).collect();
        Filters::from_grpc_api(f).map(|f| f.expect("filters"))
    }

    fn grpc_fail(
        code: u32,
        message: &str,
        ratio: Option<(u32, u32)>,
    ) -> api::grpc_route::filter::Kind {
        api::grpc_route::filter::Kind::FailureInjector(grpc_api::GrpcFailureInjector {
            code,
            message: message.into(),
            ratio: ratio
                .map(|(numerator, denominator)| route_api::Ratio { numerator, denominator }),
        })
    }

    fn call() -> Request<()> {
        Request::builder()
            .method(http::Method::POST)
            .uri("/weft.Test/Echo")
            .header("content-type", "application/grpc")
            .body(())
            .expect("request")
    }

    #[test]
    fn grpc_rules_change_headers_then_fail_with_a_grpc_status() {
        use api::grpc_route::filter::Kind;
        assert!(Filters::from_grpc_api(Vec::new()).expect("no filters").is_none());
        let headers = Kind::RequestHeaderModifier(route_api::RequestHeaderModifier {
            add: None,
            set: hs(&[("x-tenant", "a")]),
            remove: vec!["x-internal".into()],
        });
        // Headers only: the call goes on, changed.
        let f = grpc_filters(vec![headers.clone()]).expect("valid");
        let mut req = call();
        req.headers_mut().insert("x-internal", HeaderValue::from_static("1"));
        assert_eq!(f.apply(&mut req, None), Ok(()));
        assert_eq!(req.headers()["x-tenant"], "a");
        assert!(!req.headers().contains_key("x-internal"));

        // Every call fails (no ratio, or 1/1), with the code and message as configured.
        for ratio in [None, Some((1, 1)), Some((7, 7))] {
            let f = grpc_filters(vec![headers.clone(), grpc_fail(14, "injected: down", ratio)])
                .expect("valid");
            for _ in 0..100 {
                assert_eq!(
                    f.apply(&mut call(), None),
                    Err(Answer::Fail {
                        failure: Failure::Grpc(14),
                        message: "injected: down".into()
                    }),
                    "{ratio:?}"
                );
            }
        }
        // None does at 0, about half at 1/2.
        let f = grpc_filters(vec![grpc_fail(13, "x", Some((0, 1)))]).expect("valid");
        assert!((0..2000).all(|_| f.apply(&mut call(), None).is_ok()));
        let f = grpc_filters(vec![grpc_fail(13, "x", Some((1, 2)))]).expect("valid");
        let failed = (0..2000).filter(|_| f.apply(&mut call(), None).is_err()).count();
        assert!((800..1200).contains(&failed), "{failed} of 2000 at 1/2");
    }

    #[test]
    fn bad_grpc_filters_are_refused_with_the_reason() {
        use api::grpc_route::filter::Kind;
        let cases = [
            (grpc_fail(0, "x", None), "code 0 is not a gRPC error status"),
            (grpc_fail(17, "x", None), "code 17 is not a gRPC error status"),
            (grpc_fail(u32::MAX, "x", None), "not a gRPC error status"),
            (grpc_fail(14, "a\r\nb", None), "cannot be sent in a header"),
            (grpc_fail(14, "x", Some((1, 0))), "zero denominator"),
            (grpc_fail(14, "x", Some((2, 1))), "over 1"),
            (
                Kind::RequestHeaderModifier(route_api::RequestHeaderModifier {
                    add: hs(&[("bad name", "v")]),
                    set: None,
                    remove: Vec::new(),
                }),
                "not a header name",
            ),
        ];
        for (kind, why) in cases {
            let e = grpc_filters(vec![kind.clone()]).expect_err(why);
            assert!(e.contains(why), "{kind:?}: {e}");
        }
        let unknown = Filters::from_grpc_api(vec![api::grpc_route::Filter { kind: None }]);
        assert!(unknown.expect_err("unknown kind").contains("does not know"));
    }
}
