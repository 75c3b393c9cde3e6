//! Identity service benchmark: how many certificates the CA issues per second on one core,
//! and how much memory the real `weft identity` needs while doing it.
//!
//! Rows, all in the same run:
//! - baseline: the cryptographic floor of one issuance — verify a CSR's ECDSA P-256 signature
//!   and sign one certificate (x509-parser + rcgen, nothing else);
//! - the CA in-process (`Ca::certify` with static tokens: names, CSR checks, token, signing),
//!   one thread;
//! - the real `weft identity` pinned to one core (`taskset -c 0`), clients on the other core
//!   using the proxy's client module, each request on a fresh TLS 1.3 connection as proxies
//!   renew (handshake included). Reported per wall second and per CPU-second of the server,
//!   with the server's peak RSS.
//!
//! Run: `cargo bench --bench identity`. Knobs: `WEFT_BENCH_SECONDS` (5),
//! `WEFT_BENCH_CONCURRENCY` (32). Prints a Markdown table and writes it to
//! `target/bench-identity.md`.

#[allow(dead_code)]
#[path = "common/env.rs"]
mod env;
#[allow(dead_code)]
#[path = "common/procfs.rs"]
mod procfs;
#[path = "common/served.rs"]
mod served;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::bail;
use weft_identity::{
    IdentityDomain, SharedTrust, TrustBundle,
    ca::{Ca, CaConfig, Issuer, check_csr},
    client::{Client, ClientConfig, IdentityMetrics},
    pki::{PkiParams, build_csr, generate_key, generate_pki},
    token::StaticTokens,
};

use crate::{env::var_or, served::Served};

fn main() -> anyhow::Result<()> {
    let seconds = Duration::from_secs(var_or("WEFT_BENCH_SECONDS", 5));
    let concurrency: usize = var_or("WEFT_BENCH_CONCURRENCY", 32);
    let domain = IdentityDomain::new("weft", "cluster.local")?;
    let web = domain.identity("prod", "web")?;
    let pki = generate_pki(&PkiParams::for_trust_domain("cluster.local"))?;
    let key = generate_key()?;
    let csr = build_csr(&key, &web)?;
    let mut rows = vec![];

    // Baseline: one CSR signature check and one ECDSA signature over a certificate.
    let n = 3000;
    let t = Instant::now();
    for _ in 0..n {
        let checked = check_csr(&csr, &web).map_err(|e| anyhow::anyhow!("{e}"))?;
        std::hint::black_box(checked);
        let params = weft_identity::rcgen::CertificateParams::new(vec![web.to_string()])?;
        std::hint::black_box(params.self_signed(&key)?);
    }
    rows.push((
        "baseline: verify CSR + sign (crypto floor), 1 thread",
        rate(n, t.elapsed()),
        String::new(),
    ));

    // The CA in-process.
    let bundle = TrustBundle::from_pem("ca.crt", pki.anchor_pem.as_bytes())?;
    let issuer = Issuer::from_pem(
        pki.issuer_pem.as_bytes(),
        pki.issuer_key_pem.as_bytes(),
        &bundle,
        SystemTime::now(),
    )?;
    let ca = Ca::new(CaConfig::new(domain.clone()), issuer);
    let tokens = StaticTokens::parse("tokens", b"web-token: prod/web\n", &domain)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let t = Instant::now();
    for _ in 0..n {
        let issued = rt
            .block_on(ca.certify(web.as_str(), b"web-token", &csr, &tokens))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        std::hint::black_box(issued);
    }
    rows.push(("Ca::certify in-process, 1 thread", rate(n, t.elapsed()), String::new()));

    // The real server, over the wire.
    let dir = std::env::temp_dir().join(format!("weft-bench-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let write = |name: &str, data: &str| std::fs::write(dir.join(name), data);
    write("ca.crt", &pki.anchor_pem)?;
    write("issuer.crt", &pki.issuer_pem)?;
    write("issuer.key", &pki.issuer_key_pem)?;
    write("tokens.yaml", "web-token: prod/web\n")?;
    write("web.token", "web-token")?;
    let server = Server::start(&dir)?;
    // `taskset` execs, so the pid is the server's.
    let pid = server.process.pid();
    let idle_rss = procfs::rss_kib(pid);
    let cpu_before = procfs::tick_cpu_seconds(pid);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // Threads inherit the affinity, so pin before the client runtime starts its worker.
    pin_current_process_threads_to(1);
    let client_rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let cfg = ClientConfig::new(
        SharedTrust::new(bundle.clone())?,
        server.grpc.to_string(),
        domain.identity_service_name().clone(),
        web.clone(),
        dir.join("web.token"),
    );
    let client = Arc::new(Client::new(cfg, IdentityMetrics::default())?);
    let started = Instant::now();
    client_rt.block_on(async {
        let mut tasks = vec![];
        for _ in 0..concurrency {
            let (client, ok, failed) = (client.clone(), ok.clone(), failed.clone());
            tasks.push(tokio::spawn(async move {
                while started.elapsed() < seconds {
                    match client.certify_once().await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let wall = started.elapsed();
    let cpu = procfs::tick_cpu_seconds(pid) - cpu_before;
    let issued = ok.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    let peak = procfs::peak_rss_kib(pid);
    if issued == 0 {
        bail!(
            "no certificate issued over the wire ({failed} failures); server log:\n{}",
            server.log()
        );
    }
    rows.push((
        "weft identity, 1 core, fresh TLS connection per request (per wall s)",
        issued as f64 / wall.as_secs_f64(),
        format!("{issued} issued, {failed} failed, {concurrency} concurrent"),
    ));
    rows.push((
        "weft identity, per server CPU-second",
        issued as f64 / cpu.max(1e-9),
        format!("{cpu:.2} CPU-s"),
    ));

    let mut table = String::from("| what | certificates/s | notes |\n|---|---:|---|\n");
    for (what, r, note) in &rows {
        table.push_str(&format!("| {what} | {r:.0} | {note} |\n"));
    }
    table.push_str(&format!(
        "\n`weft identity` RSS: {:.1} MiB idle, {:.1} MiB peak under load (target ≤ 30 MiB)\n",
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0
    ));
    println!("{table}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-identity.md");
    let _ = std::fs::write(out, &table);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

struct Server {
    process: Served,
    grpc: SocketAddr,
    log: Arc<std::sync::Mutex<String>>,
}

impl Server {
    fn start(dir: &Path) -> anyhow::Result<Server> {
        let p = |n: &str| -> PathBuf { dir.join(n) };
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0", env!("CARGO_BIN_EXE_weft"), "identity"])
            .args(["--listen-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
            .arg("--issuer-cert")
            .arg(p("issuer.crt"))
            .arg("--issuer-key")
            .arg(p("issuer.key"))
            .arg("--trust-bundle")
            .arg(p("ca.crt"))
            .args(["--token-validator", "static", "--static-tokens"])
            .arg(p("tokens.yaml"))
            // Per-certificate info logs would measure the terminal; warnings only.
            .env("WEFT_IDENTITY_LOG", "warn,weft=info")
            .env("WEFT_IDENTITY_LOG_FORMAT", "json");
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        let what = "start taskset weft identity (util-linux needed)";
        let process = Served::spawn(&mut cmd, what, move |line, json| {
            if let Some(v) = json
                && v["fields"]["message"] == "serving"
            {
                let _ = tx.send(v["fields"]["grpc"].as_str().and_then(|s| s.parse().ok()));
            }
            sink.lock().unwrap_or_else(|e| e.into_inner()).push_str(&(line + "\n"));
        })?;
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(grpc)) => Ok(Server { process, grpc, log }),
            _ => bail!(
                "weft identity did not start: {}",
                log.lock().unwrap_or_else(|e| e.into_inner())
            ),
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Keeps the clients off the server's core.
fn pin_current_process_threads_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity get
    // valid pointers to it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
