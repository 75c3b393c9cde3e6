//! The fake API server's own tests: paths, lists, watches, writes.

use super::*;

#[test]
fn fake_api_paths() {
    let t = |c: &str, ns: Option<&str>, name: Option<&str>| {
        Some(Target {
            collection: c.into(),
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
            subresource: None,
        })
    };
    assert_eq!(parse_path("/api/v1/pods"), t("/api/v1/pods", None, None));
    assert_eq!(parse_path("/api/v1/namespaces/prod/pods"), t("/api/v1/pods", Some("prod"), None));
    assert_eq!(
        parse_path("/api/v1/namespaces/prod/pods/web-1"),
        t("/api/v1/pods", Some("prod"), Some("web-1"))
    );
    assert_eq!(parse_path("/api/v1/namespaces/prod"), t("/api/v1/namespaces", None, Some("prod")));
    assert_eq!(
        parse_path("/apis/discovery.k8s.io/v1/namespaces/prod/endpointslices"),
        t("/apis/discovery.k8s.io/v1/endpointslices", Some("prod"), None)
    );
    assert_eq!(
        parse_path("/apis/gateway.networking.k8s.io/v1/namespaces/prod/httproutes/web/status"),
        Some(Target {
            collection: "/apis/gateway.networking.k8s.io/v1/httproutes".into(),
            namespace: Some("prod".into()),
            name: Some("web".into()),
            subresource: Some("status".into()),
        })
    );
    assert_eq!(parse_path("/healthz"), None);
    assert_eq!(parse_path("/api/v1"), None);
    assert_eq!(list_kind("/api/v1/pods", &[]), "PodList");
    assert_eq!(list_kind("/api/v1/namespaces", &[]), "NamespaceList");
    assert_eq!(list_kind("/apis/discovery.k8s.io/v1/endpointslices", &[]), "EndpointSliceList");
    assert_eq!(decode("a%3Db%2Cc"), "a=b,c");
    let obj = json!({"metadata": {"labels": {"app": "web", "tier": "fe"}}});
    assert!(selector_matches("app=web,tier", &obj));
    assert!(selector_matches("app==web,!missing,tier!=be", &obj));
    assert!(!selector_matches("app=api", &obj));
    assert!(!selector_matches("!app", &obj));
}

/// One request over a fresh connection; reads until `until` appears in the response (or the
/// connection ends) and returns the status and everything read.
fn raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    until: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: fake\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if until.is_some_and(|u| String::from_utf8_lossy(&out).contains(u)) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text)
}

#[test]
fn fake_api_serves_list_watch_get_and_post() {
    let api = FakeApi::start();
    let addr: SocketAddr = api.url().trim_start_matches("http://").parse().expect("addr");
    let pod = |ns: &str, name: &str| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": name}}});
    api.put(
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}),
    );
    api.put("/api/v1/pods", pod("prod", "a"));
    api.put("/api/v1/pods", pod("other", "b"));

    let (code, text) = raw(addr, "GET", "/api/v1/namespaces/prod/pods?limit=500", "", None);
    assert_eq!(code, 200, "{text}");
    let body: Value =
        serde_json::from_str(text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default())
            .expect("json");
    assert_eq!(body["kind"], "PodList");
    assert_eq!(body["items"].as_array().map(Vec::len), Some(1));
    let rv = body["metadata"]["resourceVersion"].as_str().expect("resourceVersion").to_string();
    assert_eq!(rv, "3");
    let (_, text) = raw(addr, "GET", "/api/v1/pods?limit=1", "", None);
    assert!(text.contains("\"continue\":\"1\"") && text.contains("\"name\":\"b\""), "{text}");
    let (_, text) = raw(addr, "GET", "/api/v1/pods?limit=1&continue=1", "", None);
    assert!(!text.contains("\"continue\"") && text.contains("\"name\":\"a\""), "{text}");
    let (_, text) = raw(addr, "GET", "/api/v1/pods?labelSelector=app%3Db", "", None);
    assert!(text.contains("\"b\"") && !text.contains("\"name\":\"a\""), "{text}");

    let (code, text) = raw(addr, "GET", "/api/v1/namespaces/prod", "", None);
    assert_eq!(code, 200);
    assert!(text.contains("\"resourceVersion\":\"1\""), "{text}");
    let (code, text) = raw(addr, "GET", "/api/v1/namespaces/prod/pods/nope", "", None);
    assert_eq!(code, 404);
    assert!(text.contains("\"reason\":\"NotFound\""), "{text}");
    assert_eq!(raw(addr, "DELETE", "/api/v1/namespaces/prod/pods/a", "", None).0, 405);

    api.on_post("/apis/authentication.k8s.io/v1/tokenreviews", |review| {
        let ok = review["spec"]["token"] == "good";
        (201, json!({"kind": "TokenReview", "status": {"authenticated": ok}}))
    });
    let (code, text) = raw(
        addr,
        "POST",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        r#"{"spec":{"token":"good"}}"#,
        None,
    );
    assert_eq!(code, 201);
    assert!(text.contains("\"authenticated\":true"), "{text}");
    assert_eq!(raw(addr, "POST", "/api/v1/pods", "{}", None).0, 404);

    // A watch from the listed version sees later changes, in order, then its own namespace only.
    let watcher = std::thread::spawn(move || {
        raw(
            addr,
            "GET",
            &format!("/api/v1/namespaces/prod/pods?watch=true&resourceVersion={rv}"),
            "",
            Some("DELETED"),
        )
    });
    std::thread::sleep(Duration::from_millis(200));
    api.put("/api/v1/pods", pod("other", "c"));
    api.put("/api/v1/pods", pod("prod", "d"));
    let mut changed = pod("prod", "a");
    changed["metadata"]["labels"]["v"] = json!("2");
    api.put("/api/v1/pods", changed);
    api.delete("/api/v1/pods", "prod", "d");
    let (code, text) = watcher.join().expect("watcher");
    assert_eq!(code, 200);
    assert!(text.to_ascii_lowercase().contains("transfer-encoding: chunked"), "{text}");
    let events: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().into(),
                e["object"]["metadata"]["name"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    let expect = [("ADDED", "d"), ("MODIFIED", "a"), ("DELETED", "d")]
        .map(|(t, n)| (t.to_string(), n.to_string()));
    assert_eq!(events, expect);
    // Everything is kept: a watch from an old version replays what followed it.
    let (_, text) =
        raw(addr, "GET", "/api/v1/pods?watch=1&resourceVersion=3&timeoutSeconds=1", "", None);
    assert_eq!(text.matches("\"type\":").count(), 4, "{text}");
    assert!(
        api.requests().iter().any(|r| r.starts_with("GET /api/v1/namespaces/prod/pods?watch=true"))
    );
}

#[test]
fn fake_api_creates_replaces_and_patches_status_with_preconditions() {
    let api = FakeApi::start();
    let addr: SocketAddr = api.url().trim_start_matches("http://").parse().expect("addr");
    let leases = "/apis/coordination.k8s.io/v1/namespaces/weft/leases";
    let lease = json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}});
    let (code, text) = raw(addr, "POST", leases, &lease.to_string(), None);
    assert_eq!(code, 201, "{text}");
    assert_eq!(raw(addr, "POST", leases, &lease.to_string(), None).0, 409, "exists");
    let stored =
        api.get(leases.replace("/namespaces/weft", "").as_str(), "weft", "l").expect("stored");
    let mut update = stored.clone();
    update["spec"]["holderIdentity"] = json!("b");
    let (code, text) = raw(addr, "PUT", &format!("{leases}/l"), &update.to_string(), None);
    assert_eq!(code, 200, "{text}");
    // The same version again: someone else wrote it meanwhile.
    let (code, text) = raw(addr, "PUT", &format!("{leases}/l"), &update.to_string(), None);
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("\"reason\":\"Conflict\""), "{text}");
    assert_eq!(raw(addr, "PUT", &format!("{leases}/nope"), &update.to_string(), None).0, 404);

    let routes = "/apis/gateway.networking.k8s.io/v1/httproutes";
    api.put(routes, json!({"metadata": {"name": "web", "namespace": "prod"}, "spec": {"a": 1}, "status": {"parents": [{"x": 1}], "other": true}}));
    let path = "/apis/gateway.networking.k8s.io/v1/namespaces/prod/httproutes/web/status";
    let patch = |body: &Value| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let body = body.to_string();
        write!(s, "PATCH {path} HTTP/1.1\r\nHost: fake\r\nContent-Type: application/merge-patch+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).expect("send");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split(' ').nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0)
    };
    let rv = api.get(routes, "prod", "web").expect("route")["metadata"]["resourceVersion"].clone();
    let body = json!({"metadata": {"resourceVersion": rv}, "spec": {"a": 2}, "status": {"parents": [{"y": 2}]}});
    assert_eq!(patch(&body), 200);
    let route = api.get(routes, "prod", "web").expect("route");
    assert_eq!(route["status"], json!({"parents": [{"y": 2}], "other": true}), "merged");
    assert_eq!(route["spec"], json!({"a": 1}), "the status subresource changes the status only");
    assert_ne!(route["metadata"]["resourceVersion"], rv);
    assert_eq!(patch(&body), 409, "an old version");
    assert_eq!(api.requests().iter().filter(|r| r.starts_with("PATCH ")).count(), 2);
}
