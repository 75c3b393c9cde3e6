//! The inbound policy the control plane sends (`io.linkerd.proxy.inbound.Server`, as
//! protobuf bytes): converting it never panics, and the policy it yields decides arbitrary
//! requests and clients without panicking, within the routes it was given, and its route
//! filters apply to them without panicking.
#![no_main]

use std::net::IpAddr;

use arbitrary::{Arbitrary, Unstructured};
use http::{HeaderName, HeaderValue, Method, Request};
use libfuzzer_sys::fuzz_target;
use linkerd2_proxy_api::inbound as api;
use prost::Message;
use weft_proxy::policy::server::ServerPolicy;

#[derive(Arbitrary, Debug)]
struct Probe {
    ip: IpAddr,
    client_id: Option<String>,
    method: String,
    uri: String,
    headers: Vec<(String, Vec<u8>)>,
}

fn request(p: &Probe) -> Option<Request<()>> {
    let method = Method::from_bytes(p.method.as_bytes()).ok()?;
    let mut req = Request::builder().method(method).uri(p.uri.as_str()).body(()).ok()?;
    for (name, value) in &p.headers {
        if let (Ok(n), Ok(v)) =
            (HeaderName::try_from(name.as_str()), HeaderValue::from_bytes(value))
        {
            req.headers_mut().append(n, v);
        }
    }
    Some(req)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(len) = u.arbitrary_len::<u8>() else { return };
    let Ok(proto) = u.bytes(len) else { return };
    let Ok(server) = api::Server::decode(proto) else { return };
    let routes_sent = match server.protocol.as_ref().and_then(|p| p.kind.as_ref()) {
        Some(api::proxy_protocol::Kind::Detect(d)) => d.http_routes.len(),
        Some(api::proxy_protocol::Kind::Http1(h)) => h.routes.len(),
        Some(api::proxy_protocol::Kind::Http2(h)) => h.routes.len(),
        Some(api::proxy_protocol::Kind::Grpc(g)) => g.routes.len(),
        _ => 0,
    };
    let authorizations_sent = server.authorizations.len();
    let Ok(policy) = ServerPolicy::from_api(server) else { return };
    assert!(policy.routes.len() <= routes_sent);
    assert!(policy.authorizations.len() <= authorizations_sent);

    let Ok(probes) = Vec::<Probe>::arbitrary_take_rest(u) else { return };
    for p in probes.iter().take(16) {
        let client_id = p.client_id.as_deref();
        if let Some(a) = policy.authorize_tcp(p.ip, client_id) {
            assert!(policy.may_admit(p.ip, client_id));
            assert!(a.allows(p.ip, client_id));
        }
        if let Some(mut req) = request(p)
            && let Some(selected) = policy.select(&req)
        {
            for a in &selected.route.authorizations {
                if a.allows(p.ip, client_id) {
                    assert!(policy.may_admit(p.ip, client_id) || policy.routes.is_empty());
                }
            }
            // The rule's filters (a redirect builds its Location from the request's URI and
            // Host) apply to any request without panicking.
            if let Some(filters) = selected.filters.cloned() {
                let _ = filters.apply(&mut req, selected.prefix_len);
            }
        }
    }
});
