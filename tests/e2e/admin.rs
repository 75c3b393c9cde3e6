//! The proxy's admin port in the mTLS mesh of [`crate::mtls`]: TLS for the proxy's own
//! identity terminated there (curl and openssl with certificates from the mesh's issuer),
//! other names refused, plaintext still served, the admin port's policy from the
//! destination's static file deciding who scrapes (the probes always pass), and a meshed
//! scraper's outbound proxy reaching another proxy's admin port over mTLS through discovery.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    mtls::{DST_SVC_NAME, Web2, id, identity_args, start_proxy, web2_under},
    support::{Proxy, admin_request, eventually, meshed_s_client, metric, run, s_client_exchange},
};

/// web2's admin port: a Server that admits only `client`'s identity (its access policy,
/// deny, refuses the rest), through the port's name on the pod, as the injector names it.
const ADMIN_ONLY_FOR_CLIENT: &str = "  - apiVersion: policy.weft.dev/v1beta1
    kind: Server
    metadata: {name: web2-admin, namespace: prod}
    spec: {podSelector: {matchLabels: {app: web2}}, port: weft-admin, proxyProtocol: HTTP/1, accessPolicy: deny}
  - apiVersion: policy.weft.dev/v1beta1
    kind: MeshTLSAuthentication
    metadata: {name: scrapers, namespace: prod}
    spec: {identityRefs: [{kind: ServiceAccount, name: client}]}
  - apiVersion: policy.weft.dev/v1beta1
    kind: AuthorizationPolicy
    metadata: {name: web2-admin-scrapers, namespace: prod}
    spec:
      targetRef: {group: policy.weft.dev, kind: Server, name: web2-admin}
      requiredAuthenticationRefs: [{group: policy.weft.dev, kind: MeshTLSAuthentication, name: scrapers}]
";

/// A certificate for `sa`'s identity from the mesh's issuer, made by openssl (an
/// independent client: not the proxy's own certificate code). Returns the chain (leaf,
/// issuer), the leaf alone, and the key.
pub(crate) fn issue(dir: &Path, sa: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (key, csr, leaf, chain, ext) = (
        dir.join(format!("{sa}-admin.key")),
        dir.join(format!("{sa}-admin.csr")),
        dir.join(format!("{sa}-admin-leaf.pem")),
        dir.join(format!("{sa}-admin-chain.pem")),
        dir.join(format!("{sa}-admin.ext")),
    );
    let name = id(sa);
    let (ok, _, err) = run(Command::new("openssl")
        .args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-subj", &format!("/CN={name}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr));
    assert!(ok, "openssl req: {err}");
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=DNS:{name}\nextendedKeyUsage=clientAuth,serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n"
        ),
    )
    .expect("extensions");
    let (ok, _, err) = run(Command::new("openssl")
        .args(["x509", "-req", "-days", "1", "-set_serial", "4191", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(dir.join("issuer.crt"))
        .arg("-CAkey")
        .arg(dir.join("issuer.key"))
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&leaf));
    assert!(ok, "openssl x509: {err}");
    let pem = [
        std::fs::read(&leaf).expect("leaf"),
        std::fs::read(dir.join("issuer.crt")).expect("issuer"),
    ]
    .concat();
    std::fs::write(&chain, pem).expect("chain");
    (chain, leaf, key)
}

/// `curl` over TLS to `admin` with SNI (and the name checked) = the proxy's identity
/// `server_id`; `cert`: the client's chain and key, if it presents one. Returns the
/// status line and headers, and the body.
fn curl_tls(
    dir: &Path,
    admin: SocketAddr,
    server_id: &str,
    cert: Option<&(PathBuf, PathBuf, PathBuf)>,
    path: &str,
) -> (String, String) {
    let resolve = format!("{server_id}:{}:{}", admin.port(), admin.ip());
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-i", "--max-time", "10", "--resolve", &resolve, "--cacert"])
        .arg(dir.join("ca.crt"));
    if let Some((chain, _, key)) = cert {
        cmd.arg("--cert").arg(chain).arg("--key").arg(key);
    }
    let (ok, out, err) = run(cmd.arg(format!("https://{server_id}:{}{path}", admin.port())));
    assert!(ok, "curl over TLS to the admin port: {err}");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (head.to_string(), body.to_string())
}

fn status(head: &str) -> &str {
    head.split_whitespace().nth(1).unwrap_or("")
}

/// `openssl s_client` to `admin` with `sni`, sending one HTTP/1.1 request (no ALPN);
/// everything it prints.
fn s_client(
    dir: &Path,
    admin: SocketAddr,
    sni: &str,
    cert: &(PathBuf, PathBuf, PathBuf),
) -> String {
    let (_, leaf, key) = cert;
    let chain = dir.join("issuer.crt");
    let mut client = meshed_s_client(admin, sni, &dir.join("ca.crt"), (leaf, &chain, key));
    client.arg("-showcerts");
    let request = b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n";
    s_client_exchange(client, Duration::ZERO, request)
}

#[test]
fn admin_port_takes_mtls_for_its_identity_and_its_policy_decides_who_scrapes() {
    let Web2 { mesh, web2, .. } = web2_under(ADMIN_ONLY_FOR_CLIENT);
    let dir = mesh.dir.clone();
    let (client, tcp) = (issue(&dir, "client"), issue(&dir, "tcp"));
    let web = id("web");

    // curl (HTTP/2 by ALPN) with `client`'s certificate: the metrics, over mTLS, once the
    // Server is there (until the pod is known to the destination, the port has no policy
    // and refuses everyone but the probes).
    let scraped = eventually(Duration::from_secs(20), || {
        status(&curl_tls(&dir, web2.admin, &web, Some(&client), "/metrics").0) == "200"
    });
    assert!(scraped, "never scraped over mTLS\n{}", web2.logs());
    let (head, body) = curl_tls(&dir, web2.admin, &web, Some(&client), "/metrics");
    assert!(head.starts_with("HTTP/2 200"), "{head}");
    assert!(body.contains("inbound_http_authz_allow_total"), "{body}");

    // A plaintext scrape is refused; the kubelet's probes still pass, in plaintext.
    let (code, body) = admin_request(web2.admin, "GET", "/metrics", "");
    assert_eq!(code, 403, "{body}\n{}", web2.logs());
    assert!(body.contains("unauthorized"), "{body}");
    for probe in ["/live", "/ready"] {
        assert_eq!(admin_request(web2.admin, "GET", probe, "").0, 200, "{probe}");
    }

    // Another meshed identity, and TLS without a certificate (accepted, as linkerd2-proxy's
    // admin server does, but unauthenticated): refused by the policy.
    let (head, _) = curl_tls(&dir, web2.admin, &web, Some(&tcp), "/metrics");
    assert_eq!(status(&head), "403", "{head}");
    let (head, _) = curl_tls(&dir, web2.admin, &web, None, "/metrics");
    assert_eq!(status(&head), "403", "{head}");
    let (head, _) = curl_tls(&dir, web2.admin, &web, None, "/ready");
    assert_eq!(status(&head), "200", "probes pass over TLS too: {head}");

    // openssl (HTTP/1, no ALPN): the certificate the admin port presents proves the
    // proxy's identity, chained to the anchors.
    let text = s_client(&dir, web2.admin, &web, &client);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    assert!(text.contains("HTTP/1.1 200"), "{text}");
    let leaf = text
        .split("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .and_then(|c| c.split("-----END CERTIFICATE-----").next())
        .expect("the server's certificate");
    let leaf_file = dir.join("web2-admin-server.pem");
    std::fs::write(
        &leaf_file,
        format!("-----BEGIN CERTIFICATE-----{leaf}-----END CERTIFICATE-----\n"),
    )
    .expect("leaf");
    let (ok, san, err) = run(Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(&leaf_file));
    assert!(ok && san.contains(&format!("DNS:{web}")), "{san}{err}");

    // TLS for another name is closed before any handshake.
    let other = s_client(&dir, web2.admin, &id("db"), &client);
    assert!(other.contains("no peer certificate available"), "{other}");
    assert!(!other.contains("HTTP/1.1"), "{other}");

    // Counted: the refusals under the admin port's Server, the allowed scrapes under
    // their authorization, and the refused name.
    let (_, m) = curl_tls(&dir, web2.admin, &web, Some(&client), "/metrics");
    let target = web2.admin.to_string();
    let server = [("srv_kind", "server"), ("srv_name", "web2-admin"), ("target_addr", &target)];
    assert_eq!(metric(&m, "inbound_http_authz_deny_total", &server), 3.0, "{m}");
    let (client_id, tcp_id) = (id("client"), id("tcp"));
    let denied_tcp = [&server[..], &[("client_id", tcp_id.as_str())]].concat();
    assert_eq!(metric(&m, "inbound_http_authz_deny_total", &denied_tcp), 1.0, "{m}");
    let plaintext = [&server[..], &[("tls", "no_identity")]].concat();
    assert_eq!(metric(&m, "inbound_http_authz_deny_total", &plaintext), 1.0, "{m}");
    let allowed =
        [&server[..], &[("authz_name", "web2-admin-scrapers"), ("client_id", client_id.as_str())]]
            .concat();
    assert!(metric(&m, "inbound_http_authz_allow_total", &allowed) >= 3.0, "{m}");
    assert_eq!(metric(&m, "admin_tcp_errors_total", &[("error", "unexpected_sni")]), 1.0, "{m}");
}

#[test]
fn a_meshed_scrapers_proxy_reaches_another_proxys_admin_port_over_mtls() {
    let Web2 { mesh, web2, .. } = web2_under(ADMIN_ONLY_FOR_CLIENT);
    // Scrapers whose apps send plaintext to web2's admin address (a pod's IP:4191 in a
    // cluster): their outbound proxies find it meshed through discovery.
    let scraper = |sa: &str, token: &str| -> Proxy {
        start_proxy(
            [
                vec![
                    "--outbound-orig-dst-addr".to_string(),
                    web2.admin.to_string(),
                    "--destination-addr".to_string(),
                    mesh.destination.to_string(),
                    "--destination-svc-name".to_string(),
                    DST_SVC_NAME.to_string(),
                ],
                identity_args(&mesh.dir, &id(sa), token, &mesh.identity_addr.to_string()),
            ]
            .concat(),
        )
    };
    let (allowed, other) = (scraper("client", "client.token"), scraper("tcp", "tcp.token"));
    let get = |p: &Proxy| {
        let url = format!("http://{}/metrics", p.outbound);
        let (ok, out, err) =
            run(Command::new("curl").args(["-sS", "-i", "--http1.1", "--max-time", "10", &url]));
        assert!(ok, "{err}\n{}", p.logs());
        out
    };
    // Until the destination re-reads its file, the address is unknown (plaintext: 403).
    let scraped = eventually(Duration::from_secs(20), || get(&allowed).starts_with("HTTP/1.1 200"));
    assert!(scraped, "{}\n{}\n{}", get(&allowed), allowed.logs(), web2.logs());
    let out = get(&allowed);
    assert!(out.contains("inbound_http_authz_allow_total"), "{out}");
    // The other identity is refused by web2's admin policy, over the same kind of mTLS.
    let out = get(&other);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}\n{}", other.logs());

    let web = id("web");
    let m = allowed.metrics();
    let mtls = [("direction", "outbound"), ("tls", "true"), ("server_id", web.as_str())];
    assert!(metric(&m, "request_total", &mtls) >= 1.0, "{m}");
    let (code, m) = {
        let (chain, leaf, key) = issue(&mesh.dir, "client");
        let (head, body) =
            curl_tls(&mesh.dir, web2.admin, &web, Some(&(chain, leaf, key)), "/metrics");
        (status(&head).to_string(), body)
    };
    assert_eq!(code, "200");
    let client_id = id("client");
    let allowed_labels =
        [("srv_name", "web2-admin"), ("client_id", client_id.as_str()), ("tls", "true")];
    assert!(metric(&m, "inbound_http_authz_allow_total", &allowed_labels) >= 2.0, "{m}");
}
