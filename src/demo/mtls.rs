//! The demo's third part: identity and mTLS. A fresh PKI (`weft certs generate`), the
//! identity service with static tokens, a destination service with a certificate of its
//! own, and two proxies that obtain certificates; discovery is mTLS, HTTP from the client
//! app crosses between the proxies as mTLS, and the server app learns who called. Then an
//! authorization policy, added to the destination's file at run time, narrows who may call.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use tokio::net::TcpStream;
use weft_proxy::BoundProxy;

use super::{
    balancing::{self, wait_ready},
    proxy_args, scrape,
};

const DOMAIN: &str = "serviceaccount.identity.weft.cluster.local";
/// The destination service's identity (service account `weft-destination`).
const DESTINATION: &str = "weft-destination.weft.serviceaccount.identity.weft.cluster.local";

/// A child process killed when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn run() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("weft-demo-pki-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let weft = std::env::current_exe().context("finding the weft binary")?;
    let status = Command::new(&weft)
        .args(["certs", "generate", "--force", "--out-dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "weft certs generate failed");
    std::fs::write(
        dir.join("tokens.yaml"),
        "frontend-token: shop/frontend\ncheckout-token: shop/checkout\nintruder-token: shop/intruder\ndestination-token: weft/weft-destination\n",
    )?;
    for sa in ["frontend", "checkout", "intruder", "destination"] {
        std::fs::write(dir.join(format!("{sa}.token")), format!("{sa}-token"))?;
    }
    let (_identity, identity_addr) = start_identity(&weft, &dir)?;

    // The checkout app echoes who called it.
    let app = spawn_whoami()?;
    let identity = |sa: &str| (format!("{sa}.shop.{DOMAIN}"), dir.join(format!("{sa}.token")));
    let with_identity = |mut args: weft_proxy::config::RunArgs, sa: &str| {
        let (name, token) = identity(sa);
        args.identity_name = Some(name);
        args.identity_addr = Some(identity_addr.into());
        args.identity_svc_name = Some(format!("identity.weft.{DOMAIN}"));
        args.identity_token_file = Some(token);
        args.identity_trust_anchors_file = Some(dir.join("ca.crt"));
        args
    };
    // The checkout proxy's inbound address, known before it starts: the destination's file
    // names it as the endpoint.
    let server_inbound = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let server_admin = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    // The checkout pod admits meshed clients only (`config.weft.dev/default-inbound-policy`);
    // its proxy takes the policies of the app's port and of its admin port from the
    // destination service. The demo scrapes the admin port in plaintext: a Server lets
    // anyone in there (as linkerd-viz's `proxy-admin` does for the kubelet).
    let yaml = format!(
        "services:\n  - name: checkout\n    namespace: shop\n    clusterIPs: [10.96.0.50]\n    ports:\n      - port: 80\n        endpoints:\n          - address: {server_inbound}\n            identity: checkout.shop.{DOMAIN}\n            protocolHint: h2\npods:\n  - name: checkout-1\n    namespace: shop\n    labels: {{app: checkout}}\n    annotations: {{config.weft.dev/default-inbound-policy: all-authenticated}}\n    ports:\n      - {{name: http, containerPort: {}}}\n      - {{name: weft-admin, containerPort: {}}}\npolicies:\n  - apiVersion: policy.weft.dev/v1beta1\n    kind: Server\n    metadata: {{name: checkout-admin, namespace: shop}}\n    spec: {{podSelector: {{matchLabels: {{app: checkout}}}}, port: weft-admin, proxyProtocol: HTTP/1, accessPolicy: all-unauthenticated}}\n",
        app.port(),
        server_admin.port()
    );
    let (dst, dst_admin, dst_file) = balancing::serve_destination(
        &yaml,
        Some(weft_identity::workload::WorkloadConfig {
            name: DESTINATION.into(),
            addr: identity_addr.to_string(),
            svc_name: format!("identity.weft.{DOMAIN}"),
            token_file: dir.join("destination.token"),
            trust_anchors_file: dir.join("ca.crt"),
            resolver: None,
        }),
    )?;
    // Its certificate first: the client proxy's first lookup goes over TLS.
    wait_ready(dst_admin).await?;
    let mut server_args = with_identity(proxy_args(None, Some(app)), "checkout");
    server_args.inbound_listen_addr = vec![server_inbound];
    server_args.admin_listen_addr = vec![server_admin];
    server_args.inbound_default_policy = weft_proxy::policy::DefaultPolicy::AllAuthenticated;
    server_args.policy_addr = Some(dst.into());
    server_args.policy_svc_name = Some(DESTINATION.into());
    server_args.policy_workload = Some("shop:checkout-1".into());
    server_args.inbound_ports = app.port().to_string().parse()?;
    let server = BoundProxy::bind(server_args)?;
    tokio::spawn(server.serve(None, std::future::pending()));
    let client_of = |sa: &str| -> anyhow::Result<(SocketAddr, SocketAddr)> {
        let mut args = with_identity(proxy_args(Some("10.96.0.50:80".parse()?), None), sa);
        args.destination_addr = Some(dst.into());
        args.destination_svc_name = Some(DESTINATION.into());
        args.destination_first_update_timeout = Duration::from_secs(3);
        let client = BoundProxy::bind(args)?;
        let (outbound, admin) = (client.outbound_addrs()[0], client.admin_addrs()[0]);
        tokio::spawn(client.serve(None, std::future::pending()));
        Ok((outbound, admin))
    };
    let (outbound, client_admin) = client_of("frontend")?;
    let (intruder, intruder_admin) = client_of("intruder")?;
    for admin in [client_admin, intruder_admin, server_admin] {
        wait_ready(admin).await?;
    }

    println!(
        "\nidentity and mTLS: a fresh PKI (weft certs generate), the identity service at {identity_addr},"
    );
    println!(
        "proxies for frontend (client) and checkout (server) that obtained one-day certificates:\n"
    );
    let sent = balancing::drive(outbound, 2, 200).await?;
    let (_, seen) = get(outbound).await?;
    // An app outside the mesh calls checkout directly, in plaintext.
    let (unmeshed, _) = get(server_inbound).await?;
    let c = scrape(client_admin).await?;
    let s = scrape(server_admin).await?;
    let d = scrape(dst_admin).await?;
    let value = |text: &str, name: &str, labels: &[(&str, &str)]| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with(name)
                    && labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
            .sum()
    };
    let frontend = format!("frontend.shop.{DOMAIN}");
    let checkout = format!("checkout.shop.{DOMAIN}");
    println!("{:<34} {:>9}  identities", "path", "requests");
    println!(
        "{:<34} {:>9}  client_id={} server_id={}",
        "frontend → checkout (HTTP/1.1)",
        sent,
        if value(&s, "request_total", &[("client_id", &frontend), ("tls", "true")]) > 0.0 {
            &frontend
        } else {
            "?"
        },
        if value(&c, "request_total", &[("server_id", &checkout), ("tls", "true")]) > 0.0 {
            &checkout
        } else {
            "?"
        },
    );
    println!(
        "\nmTLS (TLS 1.3) between the proxies: client side tls=\"true\" on {} requests, server side on {};",
        value(&c, "request_total", &[("tls", "true")]),
        value(&s, "request_total", &[("tls", "true")])
    );
    println!("the checkout app was told the caller in l5d-client-id: {seen}");
    println!(
        "discovery over mTLS too: the destination service ({DESTINATION}) saw {} TLS connection(s) from {frontend}",
        value(&d, "destination_tls_connections_total", &[("client_id", &frontend)])
    );
    let policy = [("srv_name", "all-authenticated")];
    println!(
        "inbound policy all-authenticated on checkout: {} meshed requests allowed, an unmeshed plaintext client got {} ({} in inbound_http_authz_deny_total)",
        value(&s, "inbound_http_authz_allow_total", &policy),
        unmeshed.as_u16(),
        value(&s, "inbound_http_authz_deny_total", &policy)
    );
    println!(
        "certificates obtained: frontend {}, checkout {} (identity_cert_refreshes_total)",
        value(&c, "identity_cert_refreshes_total", &[]),
        value(&s, "identity_cert_refreshes_total", &[])
    );

    // Only frontend may call checkout: a Server and an AuthorizationPolicy, added while
    // everything runs. The destination re-reads its file; checkout's proxy gets the update.
    let (before, _) = get(intruder).await?;
    let mut yaml = std::fs::read_to_string(&dst_file)?;
    yaml.push_str(AUTHORIZATION);
    std::fs::write(&dst_file, yaml)?;
    let app_port = app.port().to_string();
    let updated = async {
        loop {
            let m = scrape(server_admin).await?;
            // The app port's second policy (the admin port's come on their own).
            let port = [("port", app_port.as_str()), ("result", "ok")];
            if value(&m, "inbound_policy_updates_total", &port) >= 2.0 {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), updated)
        .await
        .context("checkout's proxy never got the new policy")??;
    let (frontend_status, _) = get(outbound).await?;
    let (intruder_status, _) = get(intruder).await?;
    let s = scrape(server_admin).await?;
    println!(
        "\nauthorization policy added at run time (Server checkout-http, AuthorizationPolicy requiring the frontend service account):"
    );
    println!(
        "  intruder.shop (meshed) got {} before it and {} after; frontend got {} ({} allowed by authz_name=\"checkout-from-frontend\")",
        before.as_u16(),
        intruder_status.as_u16(),
        frontend_status.as_u16(),
        value(&s, "inbound_http_authz_allow_total", &[("authz_name", "checkout-from-frontend")])
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Policy objects for the destination's file, as they would be applied to a cluster.
/// Items of the file's `policies:` section, which comes last.
const AUTHORIZATION: &str = "  - apiVersion: policy.weft.dev/v1beta1
    kind: Server
    metadata: {name: checkout-http, namespace: shop}
    spec: {podSelector: {matchLabels: {app: checkout}}, port: http, proxyProtocol: HTTP/1}
  - apiVersion: policy.weft.dev/v1beta1
    kind: MeshTLSAuthentication
    metadata: {name: frontend, namespace: shop}
    spec: {identityRefs: [{kind: ServiceAccount, name: frontend}]}
  - apiVersion: policy.weft.dev/v1beta1
    kind: AuthorizationPolicy
    metadata: {name: checkout-from-frontend, namespace: shop}
    spec:
      targetRef: {group: policy.weft.dev, kind: Server, name: checkout-http}
      requiredAuthenticationRefs:
        - {group: policy.weft.dev, kind: MeshTLSAuthentication, name: frontend}
";

fn start_identity(weft: &Path, dir: &Path) -> anyhow::Result<(Guard, SocketAddr)> {
    let d = dir.display();
    let mut child = Command::new(weft)
        .args(["identity", "--listen-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .args([
            "--issuer-cert",
            &format!("{d}/issuer.crt"),
            "--issuer-key",
            &format!("{d}/issuer.key"),
        ])
        .args(["--trust-bundle", &format!("{d}/ca.crt")])
        .args(["--token-validator", "static", "--static-tokens", &format!("{d}/tokens.yaml")])
        .env("WEFT_IDENTITY_LOG_FORMAT", "json")
        .env("WEFT_IDENTITY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting weft identity")?;
    let stderr = child.stderr.take().context("stderr")?;
    let guard = Guard(child);
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
            && v["fields"]["message"] == "serving"
            && let Some(addr) = v["fields"]["grpc"].as_str().and_then(|a| a.parse().ok())
        {
            return Ok((guard, addr));
        }
    }
    anyhow::bail!("weft identity stopped before serving")
}

/// An app that answers with the `l5d-client-id` it was given.
fn spawn_whoami() -> anyhow::Result<SocketAddr> {
    let listener = weft_proxy::listen(([127, 0, 0, 1], 0).into())?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((io, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let who = req
                            .headers()
                            .get("l5d-client-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("(none)")
                            .to_string();
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(who)),
                        ))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                .await;
            });
        }
    });
    Ok(addr)
}

/// `GET /` for checkout through `proxy`: the status and the body.
async fn get(proxy: SocketAddr) -> anyhow::Result<(http::StatusCode, String)> {
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(proxy).await?);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header(http::header::HOST, "checkout.shop.svc.cluster.local")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let rsp = sender.send_request(req).await?;
    let status = rsp.status();
    let body = http_body_util::BodyExt::collect(rsp.into_body()).await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
