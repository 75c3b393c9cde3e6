//! The Kubernetes TokenReview validator: the API server says whose projected service-account
//! token this is, and that it was minted for Weft's audience.

use std::sync::Arc;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use tokio::{sync::Semaphore, time::Instant};

use super::{AUDIENCE, ServiceAccount, TokenError, TokenValidator, ValidateFuture};

/// Most TokenReviews in flight at once. Each Certify with a well-formed CSR costs the API
/// server one review, so without a bound a flood of requests (a crash-looping deployment,
/// a hostile client) would be passed on to it whole. Beyond the bound a review waits, within
/// the same time limit as the review itself, and then fails as `Unavailable` (the proxy
/// retries with backoff; counted as `reason="token_unavailable"`).
pub const MAX_REVIEWS_IN_FLIGHT: usize = 64;

/// Validates tokens with `TokenReview` (needs RBAC `create` on `tokenreviews`).
#[derive(Clone)]
pub struct TokenReviewValidator {
    api: Api<TokenReview>,
    audience: String,
    timeout: std::time::Duration,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

impl TokenReviewValidator {
    /// With a client from `KUBECONFIG` or the in-cluster service account.
    pub async fn from_environment(audience: &str) -> Result<Self, kube::Error> {
        Ok(Self::with_audience(kube::Client::try_default().await?, audience))
    }

    pub fn new(client: kube::Client) -> Self {
        Self::with_audience(client, AUDIENCE)
    }

    pub fn with_audience(client: kube::Client, audience: &str) -> Self {
        Self {
            api: Api::all(client),
            audience: audience.to_owned(),
            timeout: std::time::Duration::from_secs(5),
            in_flight: Arc::new(Semaphore::new(MAX_REVIEWS_IN_FLIGHT)),
            max_in_flight: MAX_REVIEWS_IN_FLIGHT,
        }
    }

    /// Sets the most reviews in flight at once (see [`MAX_REVIEWS_IN_FLIGHT`]).
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self.in_flight = Arc::new(Semaphore::new(self.max_in_flight));
        self
    }

    /// Bounds a review, including the kube client's own retries of 429/503 answers, so that
    /// a struggling API server turns into a quick `Unavailable` the proxy retries.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn review(&self, token: &[u8]) -> Result<ServiceAccount, TokenError> {
        let token = std::str::from_utf8(token)
            .map_err(|_| TokenError::Invalid("the token is not UTF-8 text".into()))?
            .trim();
        if token.is_empty() {
            return Err(TokenError::Invalid("the token is empty".into()));
        }
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        // A bad token gets a review that says so; an error here is about us (RBAC, the API
        // server's health, too many reviews at once), not about the caller's token, so the
        // caller may retry.
        let deadline = Instant::now() + self.timeout;
        let _permit = match tokio::time::timeout_at(deadline, self.in_flight.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(TokenError::Unavailable(format!(
                    "{} TokenReviews were in flight for {:?} (the API server is slow, or too \
                     many Certify requests came at once)",
                    self.max_in_flight, self.timeout
                )));
            }
        };
        let review =
            tokio::time::timeout_at(deadline, self.api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| {
                    TokenError::Unavailable(format!(
                        "TokenReview took longer than {:?}",
                        self.timeout
                    ))
                })?
                .map_err(|e| TokenError::Unavailable(format!("TokenReview failed: {e}")))?;
        let status = review.status.unwrap_or_default();
        if let Some(err) = status.error.filter(|e| !e.is_empty()) {
            return Err(TokenError::Invalid(format!("the API server rejected the token: {err}")));
        }
        if status.authenticated != Some(true) {
            return Err(TokenError::Invalid(
                "the API server did not authenticate the token (expired, revoked or unknown)"
                    .into(),
            ));
        }
        // With audiences in the spec, the API server answers with those the token is valid
        // for; an API server that ignores them answers with none, which we do not accept.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.contains(&self.audience) {
            return Err(TokenError::Invalid(format!(
                "the token is not for audience {:?} (it is for {audiences:?}); \
                 mount a projected token with that audience",
                self.audience
            )));
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        ServiceAccount::from_username(&username)
    }
}

impl TokenValidator for TokenReviewValidator {
    fn validate<'a>(&'a self, token: &'a [u8]) -> ValidateFuture<'a> {
        Box::pin(self.review(token))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Through the real kube client against a tiny local HTTP server that answers as the
    //! API server does (the e2e suite has a fuller fake).
    use std::{
        io::{BufRead, BufReader, Read, Write},
        net::TcpListener,
        sync::{Arc, Mutex},
    };

    use super::*;

    /// Serves TokenReview answers from `answer(request_json)` over plain HTTP/1.1.
    fn fake_api(
        answer: impl Fn(serde_json::Value) -> (u16, serde_json::Value) + Send + Sync + 'static,
    ) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(vec![]));
        let seen2 = seen.clone();
        let answer = Arc::new(answer);
        std::thread::spawn(move || {
            // A thread per connection: the client's pool may open several.
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (answer, seen) = (answer.clone(), seen2.clone());
                std::thread::spawn(move || serve_conn(conn, &*answer, &seen));
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn serve_conn(
        mut conn: std::net::TcpStream,
        answer: &dyn Fn(serde_json::Value) -> (u16, serde_json::Value),
        seen: &Mutex<Vec<serde_json::Value>>,
    ) {
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_owned();
            let mut len = 0;
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(path, "/apis/authentication.k8s.io/v1/tokenreviews?");
            seen.lock().unwrap().push(req.clone());
            let (code, resp) = answer(req);
            let resp = resp.to_string();
            write!(
                conn,
                "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{resp}",
                resp.len()
            )
            .unwrap();
        }
    }

    fn validator(url: &str) -> TokenReviewValidator {
        let config = kube::Config::new(url.parse().unwrap());
        TokenReviewValidator::new(kube::Client::try_from(config).unwrap())
    }

    fn answer(req: &serde_json::Value, status: serde_json::Value) -> (u16, serde_json::Value) {
        let mut r = req.clone();
        r["status"] = status;
        (201, r)
    }

    #[tokio::test]
    async fn authenticated_service_account() {
        let (url, seen) = fake_api(|req| {
            let ok = req["spec"]["token"] == "good";
            answer(
                &req,
                if ok {
                    serde_json::json!({
                        "authenticated": true,
                        "audiences": ["identity.weft.dev"],
                        "user": {"username": "system:serviceaccount:prod:web", "uid": "1",
                                 "groups": ["system:serviceaccounts"]}
                    })
                } else {
                    serde_json::json!({"authenticated": false, "error": "invalid bearer token"})
                },
            )
        });
        let v = validator(&url);
        assert_eq!(
            v.validate(b"good\n").await.unwrap(),
            ServiceAccount::new("prod", "web").unwrap()
        );
        let err = v.validate(b"bad").await.unwrap_err();
        assert!(
            matches!(&err, TokenError::Invalid(m) if m.contains("invalid bearer token")),
            "{err}"
        );
        let req = &seen.lock().unwrap()[0];
        assert_eq!(req["kind"], "TokenReview");
        assert_eq!(req["spec"]["audiences"], serde_json::json!(["identity.weft.dev"]));
        assert_eq!(req["spec"]["token"], "good");
    }

    #[tokio::test]
    async fn refusals() {
        let (url, _) = fake_api(|req| {
            let tok = req["spec"]["token"].as_str().unwrap_or("").to_owned();
            match tok.as_str() {
                "other-audience" => answer(
                    &req,
                    serde_json::json!({
                    "authenticated": true, "audiences": ["https://kubernetes.default.svc"],
                    "user": {"username": "system:serviceaccount:prod:web"}}),
                ),
                "no-audiences" => answer(
                    &req,
                    serde_json::json!({
                    "authenticated": true,
                    "user": {"username": "system:serviceaccount:prod:web"}}),
                ),
                "user" => answer(
                    &req,
                    serde_json::json!({
                    "authenticated": true, "audiences": ["identity.weft.dev"],
                    "user": {"username": "alice@example.com"}}),
                ),
                "unauthenticated" => answer(&req, serde_json::json!({"authenticated": false})),
                "forbidden" => (
                    403,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1",
                    "status": "Failure", "message": "tokenreviews.authentication.k8s.io is forbidden",
                    "reason": "Forbidden", "code": 403}),
                ),
                _ => (
                    503,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1",
                    "status": "Failure", "message": "etcd down", "reason": "ServiceUnavailable",
                    "code": 503}),
                ),
            }
        });
        let v = validator(&url);
        for (tok, expect) in [
            ("other-audience", "audience"),
            ("no-audiences", "audience"),
            ("user", "not to a service account"),
            ("unauthenticated", "did not authenticate"),
        ] {
            let err = v.validate(tok.as_bytes()).await.unwrap_err();
            assert!(matches!(&err, TokenError::Invalid(m) if m.contains(expect)), "{tok}: {err}");
        }
        let err = v.validate(b"forbidden").await.unwrap_err();
        assert!(matches!(&err, TokenError::Unavailable(m) if m.contains("forbidden")), "{err}");
        let err = v.validate(b"down").await.unwrap_err();
        assert!(matches!(err, TokenError::Unavailable(_)), "{err}");
        // 503s are retried by the kube client; the review is bounded all the same.
        let v = v.with_timeout(std::time::Duration::from_millis(300));
        let err = v.validate(b"busy").await.unwrap_err();
        assert!(matches!(&err, TokenError::Unavailable(m) if m.contains("longer than")), "{err}");
        assert!(matches!(v.validate(b"  ").await, Err(TokenError::Invalid(_))));
    }

    /// A flood of Certify requests is not passed on whole: beyond the bound, a review waits
    /// within its time limit and then fails as retryable, without reaching the API server.
    #[tokio::test]
    async fn reviews_in_flight_are_bounded() {
        let (url, seen) = fake_api(|req| {
            if req["spec"]["token"] == "slow" {
                std::thread::sleep(std::time::Duration::from_millis(1000));
            }
            answer(
                &req,
                serde_json::json!({
                    "authenticated": true, "audiences": ["identity.weft.dev"],
                    "user": {"username": "system:serviceaccount:prod:web"}}),
            )
        });
        let v = validator(&url).with_max_in_flight(2);
        let slow: Vec<_> = (0..2)
            .map(|_| {
                let v = v.clone();
                tokio::spawn(async move { v.validate(b"slow").await })
            })
            .collect();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while seen.lock().unwrap().len() < 2 {
            assert!(Instant::now() < deadline, "the slow reviews never reached the API server");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Same bound (a clone shares it), shorter limit.
        let quick = v.clone().with_timeout(std::time::Duration::from_millis(300));
        let err = quick.validate(b"good").await.unwrap_err();
        assert!(
            matches!(&err, TokenError::Unavailable(m) if m.contains("2 TokenReviews were in flight")),
            "{err}"
        );
        assert_eq!(seen.lock().unwrap().len(), 2, "the third review reached the API server");
        for s in slow {
            assert!(s.await.unwrap().is_ok());
        }
        assert!(quick.validate(b"good").await.is_ok(), "the bound frees as reviews end");
    }

    #[tokio::test]
    async fn api_server_unreachable_is_unavailable() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let v = validator(&format!("http://127.0.0.1:{port}"));
        assert!(matches!(v.validate(b"x").await, Err(TokenError::Unavailable(_))));
    }
}
