//! Destination service benchmark: the real `weft destination` (Kubernetes source) against the
//! fake API server of the e2e tests, loaded with 1 000 Services × 10 ready endpoints (10 000
//! meshed pods, 1 000 EndpointSlices), and 500 gRPC clients, each on its own connection from
//! an address of its own (127.1-2.0.x: as 500 proxies in as many pods).
//!
//! Each client follows two services of its own (so all 1 000 are resolved) and one shared
//! service (so one change fans out to all 500). Figures:
//! - RSS of the server after the initial sync with no client (the baseline) and with the 500
//!   clients subscribed (1 500 streams);
//! - fan-out latency: from the API server's watch event (an EndpointSlice gains an endpoint)
//!   until each of the 500 clients has the `Add`: p50 / max over the clients, worst of
//!   several changes; baseline in the same run: a change of a service with one subscriber.
//!
//! Run: `cargo bench --bench destination`. Prints a Markdown table and writes it to
//! `target/bench-destination.md`. Knobs: `WEFT_BENCH_SERVICES` (1000), `WEFT_BENCH_ENDPOINTS`
//! (10), `WEFT_BENCH_CLIENTS` (500), `WEFT_BENCH_CHANGES` (5).

#[allow(dead_code)]
#[path = "common/env.rs"]
mod env;
#[allow(dead_code)]
#[path = "../tests/e2e/kubeapi.rs"]
mod kubeapi;
#[allow(dead_code)]
#[path = "common/procfs.rs"]
mod procfs;
#[path = "common/served.rs"]
mod served;

use std::{
    net::SocketAddr,
    process::Command,
    sync::mpsc as std_mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use linkerd2_proxy_api::destination::{
    GetDestination, destination_client::DestinationClient, update::Update,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use kubeapi::FakeApi;
use procfs::rss_kib;
use served::Served;

const PODS: &str = "/api/v1/pods";
const SERVICES: &str = "/api/v1/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const NAMESPACES: &str = "/api/v1/namespaces";

fn fixture(name: &str) -> anyhow::Result<Value> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/fixtures/k8s").join(name);
    Ok(serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| path.display().to_string())?,
    )?)
}

fn pod_ip(s: usize, e: usize) -> String {
    // 10.<1xx>.<s / 256>.<...>: unique for up to 25 600 services × 250 endpoints.
    let n = s * 256 + e;
    format!("10.{}.{}.{}", 100 + n / 65_536, (n / 256) % 256, n % 256)
}

fn pod(template: &Value, s: usize, e: usize) -> Value {
    let mut p = template.clone();
    let name = format!("svc-{s}-6d5f8c7b9d-e{e}");
    p["metadata"]["name"] = json!(name);
    p["metadata"]["namespace"] = json!("bench");
    p["metadata"]["uid"] = json!(format!("pod-{s}-{e}"));
    p["metadata"]["labels"] = json!({"app": format!("svc-{s}"), "pod-template-hash": "6d5f8c7b9d"});
    p["metadata"]["ownerReferences"][0]["name"] = json!(format!("svc-{s}-6d5f8c7b9d"));
    p["status"]["podIP"] = json!(pod_ip(s, e));
    p["status"]["podIPs"] = json!([{"ip": pod_ip(s, e)}]);
    p
}

fn service(template: &Value, s: usize) -> Value {
    let mut v = template.clone();
    v["metadata"]["name"] = json!(format!("svc-{s}"));
    v["metadata"]["namespace"] = json!("bench");
    v["metadata"]["uid"] = json!(format!("svc-{s}"));
    let ip = format!("10.96.{}.{}", s / 256, s % 256);
    v["spec"]["clusterIP"] = json!(ip);
    v["spec"]["clusterIPs"] = json!([ip]);
    v
}

fn slice(template: &Value, s: usize, endpoints: usize) -> Value {
    let mut v = template.clone();
    v["metadata"]["name"] = json!(format!("svc-{s}-abcde"));
    v["metadata"]["namespace"] = json!("bench");
    v["metadata"]["labels"]["kubernetes.io/service-name"] = json!(format!("svc-{s}"));
    let eps: Vec<Value> = (0..endpoints)
        .map(|e| {
            json!({
                "addresses": [pod_ip(s, e)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "namespace": "bench", "name": format!("svc-{s}-6d5f8c7b9d-e{e}")},
                "nodeName": "kind-worker",
            })
        })
        .collect();
    v["endpoints"] = json!(eps);
    v
}

struct Server {
    process: Served,
    grpc: SocketAddr,
}

fn start_server(api: &FakeApi) -> anyhow::Result<Server> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.args(["destination", "--source", "kubernetes", "--log-format", "json", "--log", "info"])
        .args(["--listen-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", api.kubeconfig());
    let (tx, rx) = std_mpsc::channel();
    let process = Served::spawn(&mut cmd, "starting weft destination", move |line, json| {
        let Some(v) = json else { return };
        let f = &v["fields"];
        let addr = |k: &str| f[k].as_str().and_then(|s| s.parse::<SocketAddr>().ok());
        if f["message"] == "serving" {
            let _ = tx.send(("serving", addr("grpc")));
        } else if f["message"] == "kubernetes caches synced" {
            let _ = tx.send(("synced", None));
        } else if v["level"] == "WARN" || v["level"] == "ERROR" {
            eprintln!("server: {line}");
        }
    })?;
    let mut grpc = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(("serving", a)) => grpc = a,
            Ok(("synced", _)) => break,
            Ok(_) => {}
            Err(_) => bail!("weft destination did not sync within 120 s"),
        }
    }
    Ok(Server { process, grpc: grpc.context("no serving line")? })
}

fn request(s: usize) -> GetDestination {
    GetDestination {
        scheme: "k8s".into(),
        path: format!("svc-{s}.bench.svc.cluster.local:80"),
        context_token: String::new(),
    }
}

/// Events from the clients: an initial set arrived, or an update of a followed service.
enum Seen {
    Initial,
    Update { service: usize, at: Instant },
}

/// Client `i`'s source address: 500 clients stand for 500 proxies in as many pods, each
/// from an address of its own (the server caps connections per client address).
fn source(i: usize) -> std::net::IpAddr {
    std::net::Ipv4Addr::new(127, 1 + (i / 250) as u8, 0, 1 + (i % 250) as u8).into()
}

async fn client(
    grpc: SocketAddr,
    from: std::net::IpAddr,
    services: Vec<usize>,
    endpoints: usize,
    tx: mpsc::Sender<Seen>,
) -> anyhow::Result<()> {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_local_address(Some(from));
    connector.set_nodelay(true);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))?
        .connect_with_connector(connector)
        .await?;
    let mut c = DestinationClient::new(channel);
    let mut tasks = Vec::new();
    for s in services {
        let mut stream = c.get(request(s)).await?.into_inner();
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut first = true;
            while let Ok(Some(u)) = stream.message().await {
                let at = Instant::now();
                if first {
                    match &u.update {
                        Some(Update::Add(set)) if set.addrs.len() == endpoints => {}
                        other => eprintln!("svc-{s}: unexpected initial update {other:?}"),
                    }
                    first = false;
                    let _ = tx.send(Seen::Initial).await;
                } else {
                    let _ = tx.send(Seen::Update { service: s, at }).await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let n_services: usize = env::var_or("WEFT_BENCH_SERVICES", 1000);
    let n_endpoints: usize = env::var_or("WEFT_BENCH_ENDPOINTS", 10);
    let n_clients = env::var_or::<usize>("WEFT_BENCH_CLIENTS", 500).min(n_services.max(1));
    let n_changes: usize = env::var_or("WEFT_BENCH_CHANGES", 5);
    let shared = 0;

    let t0 = Instant::now();
    let api = FakeApi::start();
    let (pod_t, svc_t, slice_t) = (
        fixture("pod-web-4xk2p-meshed.json")?,
        fixture("service-web.json")?,
        fixture("endpointslice-web.json")?,
    );
    api.put(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}),
    );
    for s in 0..n_services {
        api.put(SERVICES, service(&svc_t, s));
        for e in 0..n_endpoints {
            api.put(PODS, pod(&pod_t, s, e));
        }
        api.put(SLICES, slice(&slice_t, s, n_endpoints));
    }
    eprintln!("fake API loaded in {:.1} s", t0.elapsed().as_secs_f64());

    let t1 = Instant::now();
    let server = start_server(&api)?;
    let sync = t1.elapsed();
    let pid = server.process.pid();
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = rss_kib(pid);
    eprintln!("synced in {:.1} s; RSS {} MiB", sync.as_secs_f64(), rss_idle / 1024);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (tx, mut rx) = mpsc::channel::<Seen>(4096);
    let grpc = server.grpc;
    let mut streams = 0;
    for i in 0..n_clients {
        // Own services i and i + clients (covering all), plus the shared one.
        let mut services: Vec<usize> = (i..n_services).step_by(n_clients).collect();
        if !services.contains(&shared) {
            services.push(shared);
        }
        streams += services.len();
        let tx = tx.clone();
        rt.spawn(async move {
            if let Err(e) = client(grpc, source(i), services, n_endpoints, tx).await {
                eprintln!("client {i}: {e:#}");
            }
        });
    }
    let t2 = Instant::now();
    let initial = rt.block_on(async {
        let mut n = 0;
        while n < streams {
            match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Ok(Some(Seen::Initial)) => n += 1,
                Ok(Some(Seen::Update { .. })) => {}
                _ => break,
            }
        }
        n
    });
    let subscribe = t2.elapsed();
    if initial < streams {
        bail!("only {initial} of {streams} streams got their initial set");
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss_loaded = rss_kib(pid);
    eprintln!(
        "{n_clients} clients, {streams} streams subscribed in {:.2} s; RSS {} MiB",
        subscribe.as_secs_f64(),
        rss_loaded / 1024
    );

    // One change: the service gains an endpoint (pod first, then the slice lists it).
    let change = |s: usize,
                  e: usize,
                  expect: usize,
                  rx: &mut mpsc::Receiver<Seen>|
     -> anyhow::Result<Vec<Duration>> {
        api.put(PODS, pod(&pod_t, s, e));
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        api.put(SLICES, slice(&slice_t, s, e + 1));
        let mut lat = Vec::with_capacity(expect);
        rt.block_on(async {
            while lat.len() < expect {
                match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                    Ok(Some(Seen::Update { service, at })) if service == s => {
                        lat.push(at.duration_since(start))
                    }
                    Ok(Some(_)) => {}
                    _ => break,
                }
            }
        });
        if lat.len() < expect {
            bail!("only {} of {expect} subscribers saw the change of svc-{s}", lat.len());
        }
        lat.sort();
        Ok(lat)
    };
    let mut fan_p50 = Duration::ZERO;
    let mut fan_max = Duration::ZERO;
    let mut one_max = Duration::ZERO;
    let single = n_services - 1;
    for c in 0..n_changes {
        let lat = change(shared, n_endpoints + c, n_clients, &mut rx)?;
        fan_p50 = fan_p50.max(percentile(&lat, 0.5));
        fan_max = fan_max.max(*lat.last().unwrap_or(&Duration::ZERO));
        let lat = change(single, n_endpoints + c, 1, &mut rx)?;
        one_max = one_max.max(lat[0]);
    }
    let rss_after = rss_kib(pid);
    let hwm = procfs::peak_rss_kib(pid);

    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    let md = format!(
        "## weft destination: {n_services} services × {n_endpoints} endpoints, {n_clients} clients ({streams} streams)\n\n\
         | figure | value | target |\n|---|---|---|\n\
         | initial sync ({} pods listed and indexed) | {:.2} s | |\n\
         | RSS after sync, no client (baseline) | {} | |\n\
         | RSS with {n_clients} clients subscribed | {} | < 100 MiB |\n\
         | RSS after {n_changes} fan-outs / peak (VmHWM) | {} / {} | |\n\
         | time for all {streams} streams to get their initial set | {} | |\n\
         | fan-out of one endpoint change to {n_clients} subscribers: p50 (worst of {n_changes}) | {} | |\n\
         | fan-out of one endpoint change to {n_clients} subscribers: max (worst of {n_changes}) | {} | < 1 s |\n\
         | one change to a single subscriber (baseline): worst of {n_changes} | {} | |\n",
        n_services * n_endpoints,
        sync.as_secs_f64(),
        mib(rss_idle),
        mib(rss_loaded),
        mib(rss_after),
        mib(hwm),
        ms(subscribe),
        ms(fan_p50),
        ms(fan_max),
        ms(one_max),
    );
    println!("{md}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-destination.md");
    std::fs::write(&out, &md).with_context(|| out.display().to_string())?;
    eprintln!("written to {}", out.display());
    drop(server);
    Ok(())
}
