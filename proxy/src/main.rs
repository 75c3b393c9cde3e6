//! The `weft-proxy` binary: `weft-proxy` runs the proxy, `weft-proxy init` installs the
//! nat rules that redirect a pod's traffic through it.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft_proxy::{BoundProxy, config::RunArgs, init::InitArgs};

/// `--version`: the version, and what the binary was built from (as `proxy_build_info`).
static LONG_VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| weft_proxy::metrics::BUILD_INFO.long_version());

#[derive(Debug, Parser)]
#[command(
    name = "weft-proxy",
    version = LONG_VERSION.as_str(),
    about = "The Weft sidecar proxy",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the nat rules that redirect the pod's TCP traffic through the proxy
    /// (run once, in the init container, with NET_ADMIN and NET_RAW).
    Init(InitArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Init(args)) => weft_proxy::init::run(&args),
        None => run(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let log_level = weft_proxy::logging::init(&args.log, args.log_format)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = match usize::from(args.cores) {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                b.worker_threads(n.min(cpus));
            }
            b.enable_all().build()?
        }
    };
    tracing::info!(config = ?args, "starting");
    warn_unknown_settings();
    runtime.block_on(async move {
        let proxy = BoundProxy::bind(args)?;
        proxy.serve(Some(log_level), shutdown_signal()).await
    })
}

/// A `WEFT_PROXY_*` variable that no setting reads is most likely a typo, or a setting of
/// another version: say so rather than ignore it silently.
fn warn_unknown_settings() {
    let known = RunArgs::env_names();
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("WEFT_PROXY_") && !known.iter().any(|k| *k == name) {
            tracing::warn!(%name, "unknown setting ignored: no WEFT_PROXY_* setting has this name (see weft-proxy --help)");
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; the proxy only stops on POST /shutdown");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// mimalloc rather than glibc's malloc: a proxied HTTP/2 request makes about a dozen small
/// allocations, freed on the same thread soon after, which is mimalloc's best case. On the
/// benchmark rig it cut the CPU per request at HTTP/2 maximum throughput by about 13 %.
/// Built without transparent huge pages (`no_thp`): with them an idle proxy's heap rounds up
/// to 2 MiB pages and its RSS doubles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
