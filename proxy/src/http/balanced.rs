//! Requests to a discovered service: each try goes to an endpoint the balancer picks,
//! failures feed failure accrual, and what the profile allows is retried within the
//! retry budget — on another endpoint when there is one. Bodies up to 64 KiB with a
//! known length are buffered for replay, within a deadline (a client that announces a body
//! and stalls gets 408, it does not hold an in-flight slot); larger (or unknown-length)
//! bodies are sent once and not retried, except when the connection failed before the
//! request left.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Response, StatusCode, header::CONTENT_LENGTH};
use http_body_util::{BodyExt, Full, Limited};
use tracing::debug;

use super::{Reply, RspBody, error_response, pool, send, with_timeout};
use crate::{
    balance::{PickError, Picked},
    discovery::{EndpointMeta, Resolution},
    metrics::Direction,
    profile::Route,
};

/// Largest request body kept for replay.
pub const MAX_REPLAY_BYTES: usize = 64 * 1024;

/// Longest wait for a body to replay when the response-header timeout is off (`0s`).
const MAX_BUFFER_WAIT: Duration = Duration::from_secs(60);

pub struct Request<'a> {
    pub parts: http::request::Parts,
    pub body: pool::ReqBody,
    pub authority: String,
    pub target: SocketAddr,
    /// The client connection's TLS labels.
    pub tls: crate::metrics::TlsLabels,
    /// The client connection's routes.
    pub routes: &'a super::metrics::RouteCache,
}

pub async fn forward(
    req: Request<'_>,
    res: &Arc<Resolution>,
    mut reply: Reply<'_>,
) -> Response<RspBody> {
    let side = reply.side;
    let profile = res.profile();
    // Borrowed from the profile, which outlives the request's tries: no copy per request.
    let route = profile.route(&req.parts.method, req.parts.uri.path());
    // A named route counts its requests in the route metrics too.
    reply.rt = route.and_then(|r| {
        r.route_metrics(
            &side.metrics.http.profile_routes,
            side.direction,
            &profile.name,
            req.target,
        )
    });
    if let Some(rt) = &reply.rt {
        rt.request();
    }
    let total = route.map_or(Duration::ZERO, |r| r.timeout);
    let target = req.target;
    let tls = req.tls.clone();
    // A traffic split sends the request to one of the backend services, by weight; the
    // target's routes, timeouts and retry budget still apply.
    let backend = match &side.discovery {
        Some(d) => d.split(res, &profile).await,
        None => None,
    };
    let endpoints = backend.as_deref().unwrap_or(res);
    match with_timeout(total, tries(req, res, endpoints, route, &reply)).await {
        Ok(rsp) => rsp,
        Err(()) => {
            side.metrics.http.error(side.direction, "request_timeout");
            let route = side.metrics.http.route(
                side.direction,
                "",
                side.target_label(target),
                Default::default(),
                tls.clone(),
            );
            let why = format!("request timeout: no response within the route's {total:?}");
            let rsp = error_response(StatusCode::GATEWAY_TIMEOUT, &why);
            reply.finish(route, rsp)
        }
    }
}

/// `res`: the target's resolution (its retry budget); `endpoints`: where tries go (the
/// target's, or the split backend's).
async fn tries(
    req: Request<'_>,
    res: &Arc<Resolution>,
    endpoints: &Resolution,
    route: Option<&Route>,
    reply: &Reply<'_>,
) -> Response<RspBody> {
    let side = reply.side;
    let metrics = &side.metrics.http;
    let direction = side.direction;
    let Request { parts, body, authority, target, tls, routes } = req;
    let retryable = route.is_some_and(|r| r.retryable);
    let limit = route.map_or(0, |r| if r.retryable { r.retry_limit } else { 0 });
    let try_timeout = match route.map(|r| r.try_timeout) {
        Some(t) if !t.is_zero() => t,
        _ => side.http.config.response_header_timeout,
    };
    res.budget.deposit();

    // The body for every try: kept when small enough to replay, else sent once.
    let (replay, mut once) = if retryable {
        // The client's body comes within the response-header timeout (the route's whole
        // timeout, when shorter, answers first: 504).
        let wait = match side.http.config.response_header_timeout {
            t if t.is_zero() => MAX_BUFFER_WAIT,
            t => t,
        };
        match buffer(&parts, body, wait).await {
            Ok(Buffered::Replay(b)) => (Some(b), None),
            Ok(Buffered::Stream(b)) => (None, Some(b)),
            Err(e) => {
                metrics.error(direction, e.label());
                let route = metrics.route(
                    direction,
                    &authority,
                    side.target_label(target),
                    Default::default(),
                    tls.clone(),
                );
                let rsp = error_response(e.status(), &e.to_string());
                return reply.finish(route, rsp);
            }
        }
    } else {
        (None, Some(body))
    };

    let mut attempt = 0u32;
    let mut avoid: Option<SocketAddr> = None;
    let mut counted = false;
    loop {
        let picked = match pick(endpoints, avoid) {
            Ok(p) => p,
            Err(e) => {
                let label = match e {
                    PickError::NoEndpoints => "no_endpoints",
                    PickError::AllEjected => "all_endpoints_failing",
                };
                metrics.error(direction, label);
                let route = metrics.route(
                    direction,
                    &authority,
                    side.target_label(target),
                    Default::default(),
                    tls.clone(),
                );
                if !counted {
                    metrics.request(&route);
                }
                let rsp = error_response(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
                return reply.finish(route, rsp);
            }
        };
        let endpoint = picked.endpoint.clone();
        // Meshed endpoints are reached over mTLS when this proxy has an identity.
        let server_id: Option<Arc<str>> =
            side.identity.as_ref().and(endpoint.meta.identity.as_deref()).map(Arc::from);
        let tls = match &server_id {
            Some(id) => crate::metrics::TlsLabels::server(id.clone()),
            None => tls.clone(),
        };
        let key =
            pool::Key { addr: endpoint.addr, server_id, labels: endpoint.meta.labels.clone() };
        let labels = routes.get(
            &authority,
            Some(endpoint.addr),
            |l| Arc::ptr_eq(&l.dst.0, &endpoint.meta.labels.0) && l.tls == tls,
            || {
                let target_addr = side.target_label(target);
                metrics.route(
                    direction,
                    &authority,
                    target_addr,
                    endpoint.meta.labels.clone(),
                    tls.clone(),
                )
            },
        );
        if !counted {
            metrics.request(&labels);
            counted = true;
        }
        let body = match (&replay, once.take()) {
            (Some(b), _) => Full::new(b.clone()).map_err(|never| match never {}).boxed_unsync(),
            (None, Some(b)) => b,
            // Unreachable: without a replayable body only an unsent request is retried,
            // and it gives its body back.
            (None, None) => Full::new(Bytes::new()).map_err(|never| match never {}).boxed_unsync(),
        };
        let h2 = endpoint.meta.h2
            || (direction == Direction::Outbound
                && side.http.config.h2_upgrade.contains(endpoint.addr));
        let result = with_timeout(try_timeout, send(side, key, parts.clone(), body, h2)).await;
        match result {
            Ok(Ok(rsp)) => {
                let failure =
                    route.map_or(rsp.status().is_server_error(), |r| r.is_failure(rsp.status()));
                picked.complete(!failure);
                if failure
                    && replay.is_some()
                    && attempt < limit
                    && retry(res, &endpoint.meta, reply)
                {
                    debug!(endpoint = %endpoint.addr, status = %rsp.status(), "retrying");
                    attempt += 1;
                    avoid = Some(endpoint.addr);
                    continue;
                }
                return reply.respond(labels, Ok(Ok(rsp)), endpoint.addr);
            }
            Ok(Err(failed)) => {
                picked.complete(false);
                // A request that never left (the connection failed first) may go
                // elsewhere once even on a route without retries, streaming body and all.
                let may_retry = match failed.unsent {
                    Some(req) => {
                        once = Some(req.into_body());
                        attempt < limit.max(1)
                    }
                    None => replay.is_some() && attempt < limit,
                };
                if may_retry && retry(res, &endpoint.meta, reply) {
                    debug!(endpoint = %endpoint.addr, error = %failed.error, "retrying after a failed try");
                    attempt += 1;
                    avoid = Some(endpoint.addr);
                    continue;
                }
                return reply.respond(labels, Ok(Err(failed.error)), endpoint.addr);
            }
            Err(()) => {
                picked.complete(false);
                if replay.is_some() && attempt < limit && retry(res, &endpoint.meta, reply) {
                    attempt += 1;
                    avoid = Some(endpoint.addr);
                    continue;
                }
                return reply.respond(labels, Err(()), endpoint.addr);
            }
        }
    }
}

/// Takes a retry from the budget, counting the outcome per service.
fn retry(res: &Resolution, meta: &EndpointMeta, reply: &Reply<'_>) -> bool {
    let taken = res.budget.withdraw();
    reply.side.metrics.http.retry(&meta.labels, taken);
    taken
}

/// An endpoint, preferring one other than `avoid` (the one that just failed).
fn pick(
    res: &Resolution,
    avoid: Option<SocketAddr>,
) -> Result<Picked<'_, EndpointMeta>, PickError> {
    let mut p = res.balancer.pick()?;
    for _ in 0..3 {
        if Some(p.endpoint.addr) != avoid {
            break;
        }
        p = res.balancer.pick()?;
    }
    Ok(p)
}

enum Buffered {
    Replay(Bytes),
    Stream(pool::ReqBody),
}

/// Why a body to replay could not be read.
#[derive(Debug, thiserror::Error)]
enum BufferError {
    #[error("request body timeout: the client did not send its body within {0:?}")]
    Timeout(Duration),
    #[error("reading the request body: {0}")]
    Body(String),
}

impl BufferError {
    fn status(&self) -> StatusCode {
        match self {
            BufferError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            BufferError::Body(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The `{inbound,outbound}_http_errors_total` label.
    fn label(&self) -> &'static str {
        match self {
            BufferError::Timeout(_) => "request_body_timeout",
            BufferError::Body(_) => "bad_request",
        }
    }
}

/// Reads a body of known length up to `MAX_REPLAY_BYTES` into memory, within `wait`;
/// anything else streams.
async fn buffer(
    parts: &http::request::Parts,
    body: pool::ReqBody,
    wait: Duration,
) -> Result<Buffered, BufferError> {
    if http_body::Body::is_end_stream(&body) {
        return Ok(Buffered::Replay(Bytes::new()));
    }
    let len = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match len {
        Some(n) if n <= MAX_REPLAY_BYTES => {
            let collect = Limited::new(body, MAX_REPLAY_BYTES).collect();
            let collected = tokio::time::timeout(wait, collect)
                .await
                .map_err(|_| BufferError::Timeout(wait))?
                .map_err(|e| BufferError::Body(e.to_string()))?;
            Ok(Buffered::Replay(collected.to_bytes()))
        }
        _ => Ok(Buffered::Stream(body)),
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::channel::Channel;

    use super::*;

    fn parts(content_length: usize) -> http::request::Parts {
        let req = http::Request::post("http://web/").header(CONTENT_LENGTH, content_length);
        req.body(()).expect("request").into_parts().0
    }

    /// A client that announces a body and sends only part of it gets 408 once the wait is
    /// over, instead of holding its request (and in-flight slot) for ever.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_to_replay_times_out_with_408() {
        let (mut tx, body) = Channel::<Bytes, pool::BodyError>::new(1);
        tx.send_data(Bytes::from_static(b"half")).await.expect("send");
        let wait = Duration::from_secs(60);
        let started = tokio::time::Instant::now();
        let head = parts(8);
        let buffered = buffer(&head, body.boxed_unsync(), wait);
        let err = match tokio::time::timeout(wait * 2, buffered).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => panic!("a stalled body was buffered"),
            Err(_) => panic!("still waiting for the body"),
        };
        assert_eq!(started.elapsed(), wait);
        assert_eq!(err.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(err.label(), "request_body_timeout");
        assert!(err.to_string().starts_with("request body timeout"), "{err}");
        drop(tx);

        // A body that comes in time is kept for replay.
        let (mut tx, body) = Channel::<Bytes, pool::BodyError>::new(2);
        tx.send_data(Bytes::from_static(b"half")).await.expect("send");
        tx.send_data(Bytes::from_static(b"done")).await.expect("send");
        drop(tx);
        match buffer(&parts(8), body.boxed_unsync(), wait).await {
            Ok(Buffered::Replay(b)) => assert_eq!(b, "halfdone"),
            _ => panic!("not buffered"),
        }
    }
}
