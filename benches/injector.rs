//! Injector benchmark: the real `weft injector` (release build, `--source static`) answering
//! AdmissionReviews over HTTPS at a constant arrival rate, against two baselines in the same
//! run — a non-Pod review (TLS, HTTP and JSON parsing, no patch) over the same connections,
//! and the pure decision (`admission::parse` + `decide`) in-process with no network — plus a
//! point with a new TLS connection per review (the worst case: an API server that does not
//! reuse connections).
//!
//! Run: `cargo bench --bench injector`. It prints a Markdown table and writes it to
//! `target/bench-injector.md`. Target (issue 6): p99 ≤ 5 ms at 200 reviews/s, RSS ≤ 30 MiB;
//! shown next to the figures, not asserted.
//!
//! Open loop: every review has an intended send time (rate R); latency is measured from that
//! time to the end of the response, so queueing is not hidden. Reviews go over a pool of 8
//! keep-alive HTTP/1.1 connections (what the API server keeps to a webhook).
//!
//! Env knobs: `WEFT_BENCH_SECS` (default 10, measured seconds per point), `WEFT_BENCH_RATES`
//! (default `200,1000`), `WEFT_BENCH_WARMUP_MS` (default 500).

#[allow(dead_code)]
#[path = "common/env.rs"]
mod env;
#[allow(dead_code)]
#[path = "common/procfs.rs"]
mod procfs;
#[path = "common/served.rs"]
mod served;

use std::{
    net::{AddrParseError, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_rustls::TlsConnector;

use crate::{env::var_or, served::Served};

fn main() -> anyhow::Result<()> {
    let secs: u64 = var_or("WEFT_BENCH_SECS", 10);
    let warmup = Duration::from_millis(var_or("WEFT_BENCH_WARMUP_MS", 500));
    let rates: Vec<u32> = std::env::var("WEFT_BENCH_RATES")
        .unwrap_or_else(|_| "200,1000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let dir = std::env::temp_dir().join(format!("weft-bench-injector-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (cert, key) = make_cert(&dir)?;
    let ns = dir.join("namespaces.yaml");
    std::fs::write(
        &ns,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n  annotations:\n    weft.dev/inject: enabled\n",
    )?;
    let injector = Injector::start(&cert, &key, &ns)?;
    let idle_rss = procfs::rss_kib(injector.process.pid());

    let pod_review = serde_json::to_vec(&review("Pod", "pods", &pod()))?;
    let svc_review = serde_json::to_vec(&review(
        "Service",
        "services",
        &json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "prod"}, "spec": {"ports": [{"port": 80}]}}),
    ))?;

    // In-process baseline: the decision alone.
    let config = weft_injector::InjectorConfig::default();
    let annotations = [("weft.dev/inject".to_string(), "enabled".to_string())].into();
    let mut pure = Histogram::<u64>::new(3)?;
    let n = 20_000;
    let t0 = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let req =
            weft_injector::admission::parse(&pod_review).map_err(|a| anyhow::anyhow!(a.message))?;
        let answer = weft_injector::admission::decide(&req, Some(&annotations), None, &config);
        std::hint::black_box(serde_json::to_vec(&answer.review)?);
        pure.record(t.elapsed().as_nanos() as u64)?;
    }
    let per_review = t0.elapsed() / n;

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let tls = client_tls(&cert)?;
    let mut rows = Vec::new();
    for &rate in &rates {
        for (name, body, fresh) in [
            ("non-Pod review (baseline)", &svc_review, false),
            ("Pod review, injected", &pod_review, false),
            ("Pod review, new TLS connection each", &pod_review, true),
        ] {
            if fresh && rate > 200 {
                continue;
            }
            let h = rt.block_on(open_loop(
                injector.webhook,
                tls.clone(),
                body.clone(),
                rate,
                warmup,
                secs,
                fresh,
            ))?;
            rows.push(format!(
                "| {name} | {rate} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                h.len(),
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.value_at_quantile(0.999) as f64 / 1000.0,
                h.max() as f64 / 1000.0
            ));
        }
    }
    let rss = procfs::rss_kib(injector.process.pid());
    let hwm = procfs::peak_rss_kib(injector.process.pid());
    drop(injector);

    let mut out = String::new();
    out.push_str("## weft injector: AdmissionReview latency over HTTPS (open loop)\n\n");
    out.push_str("| scenario | reviews/s | reviews | p50 ms | p99 ms | p99.9 ms | max ms |\n|---|---|---|---|---|---|---|\n");
    for r in &rows {
        out.push_str(r);
        out.push('\n');
    }
    out.push_str(&format!(
        "\nIn-process decision (parse + patch + serialize, no network): mean {:.1} µs, p99 {:.1} µs over {n} reviews.\n",
        per_review.as_nanos() as f64 / 1000.0,
        pure.value_at_quantile(0.99) as f64 / 1000.0
    ));
    out.push_str(&format!(
        "\nInjector RSS: idle {:.1} MiB, after the load {:.1} MiB, peak {:.1} MiB (target ≤ 30 MiB). Latency target: p99 ≤ 5 ms at 200 reviews/s.\n",
        idle_rss as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    ));
    println!("{out}");
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-injector.md");
    let _ = std::fs::write(target, &out);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Sends `body` at `rate`/s for `secs` after `warmup`; returns latencies in µs from each
/// review's intended send time.
async fn open_loop(
    addr: SocketAddr,
    tls: TlsConnector,
    body: Vec<u8>,
    rate: u32,
    warmup: Duration,
    secs: u64,
    fresh: bool,
) -> anyhow::Result<Histogram<u64>> {
    let body = Bytes::from(body);
    let (pool_tx, pool_rx) = tokio::sync::mpsc::unbounded_channel();
    let pool_rx = Arc::new(tokio::sync::Mutex::new(pool_rx));
    if !fresh {
        for _ in 0..8 {
            pool_tx.send(connect(addr, &tls).await?)?;
        }
    }
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + warmup;
    let total = ((warmup + Duration::from_secs(secs)).as_secs_f64() * f64::from(rate)) as u32;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let intended = start + interval * i;
        tokio::time::sleep_until(intended.into()).await;
        let (body, tls, hist, errors) = (body.clone(), tls.clone(), hist.clone(), errors.clone());
        let (pool_tx, pool_rx) = (pool_tx.clone(), pool_rx.clone());
        tasks.spawn(async move {
            let mut sender = if fresh {
                match connect(addr, &tls).await {
                    Ok(s) => s,
                    Err(_) => return errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                }
            } else {
                match pool_rx.lock().await.recv().await {
                    Some(s) => s,
                    None => return 0,
                }
            };
            let ok = send(&mut sender, body).await.is_ok();
            let done = Instant::now();
            if !fresh {
                let _ = pool_tx.send(sender);
            }
            if !ok {
                return errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if intended >= measure_from {
                let us = done.saturating_duration_since(intended).as_micros() as u64;
                let _ = hist.lock().unwrap_or_else(|e| e.into_inner()).record(us.max(1));
            }
            0
        });
    }
    while tasks.join_next().await.is_some() {}
    let errors = errors.load(std::sync::atomic::Ordering::Relaxed);
    if errors > 0 {
        bail!("{errors} reviews failed at {rate}/s");
    }
    let h = hist.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(h)
}

async fn connect(addr: SocketAddr, tls: &TlsConnector) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let stream = tls.connect(name, tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(sender: &mut SendRequest<Full<Bytes>>, body: Bytes) -> anyhow::Result<()> {
    sender.ready().await?;
    let req = hyper::Request::post("/inject")
        .header("host", "weft-injector.weft.svc")
        .header("content-type", "application/json")
        .body(Full::new(body))?;
    let rsp = sender.send_request(req).await?;
    if rsp.status() != 200 {
        bail!("status {}", rsp.status());
    }
    let body = rsp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&body)?;
    if v["response"]["allowed"] != true {
        bail!("not allowed: {v}");
    }
    Ok(())
}

fn client_tls(ca: &Path) -> anyhow::Result<TlsConnector> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

struct Injector {
    process: Served,
    webhook: SocketAddr,
}

impl Injector {
    fn start(cert: &Path, key: &Path, ns: &Path) -> anyhow::Result<Injector> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
        cmd.args(["injector", "--listen-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .args([
                "--source",
                "static",
                "--log-format",
                "json",
                "--log",
                "warn,weft_injector::server=info",
            ])
            .arg("--static-file")
            .arg(ns)
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key);
        let (tx, rx) = mpsc::channel::<Result<SocketAddr, AddrParseError>>();
        // Its per-review log lines are read (and discarded) too, so that it never blocks.
        let process = Served::spawn(&mut cmd, "start weft injector", move |_, json| {
            if let Some(v) = json
                && v["fields"]["message"] == "serving"
            {
                let _ = tx.send(v["fields"]["webhook"].as_str().unwrap_or_default().parse());
            }
        })?;
        let Ok(webhook) = rx.recv() else { bail!("weft injector exited before serving") };
        Ok(Injector { process, webhook: webhook? })
    }
}

fn make_cert(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=weft-injector",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .context("openssl")?;
    if !status.success() {
        bail!("openssl failed");
    }
    Ok((cert, key))
}

/// A Deployment's pod as the API server sends it (from `kubectl create deployment web
/// --image=nginx:1.27 --port=8080`, defaulted), with a realistic metadata load.
fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-7d9f8c6b5-", "namespace": "prod",
                     "labels": {"app": "web", "pod-template-hash": "7d9f8c6b5"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8c6b5",
                                          "uid": "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {
            "containers": [{"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                            "resources": {}, "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent",
                            "volumeMounts": [{"name": "kube-api-access-abcde", "readOnly": true,
                                              "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]}],
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "serviceAccount": "default", "securityContext": {},
            "schedulerName": "default-scheduler", "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        }
    })
}

fn review(kind: &str, resource: &str, object: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": kind},
            "resource": {"group": "", "version": "v1", "resource": resource},
            "namespace": "prod", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object, "oldObject": null, "dryRun": false
        }
    })
}
