//! `weft inject`: adds the proxy to Kubernetes manifests. By default it annotates pod
//! templates with `weft.dev/inject: enabled` for the webhook; `--manual` renders the whole
//! sidecar with the webhook's own patch builder. YAML goes to stdout, one line per object
//! to stderr.

use std::{
    io::{Read as _, Write as _},
    path::PathBuf,
};

use anyhow::{Context as _, bail};
use clap::Args;
use weft_injector::manifest::{self, Mode, Status};

use crate::injector::ProxyArgs;

#[derive(Debug, Clone, Args)]
pub struct InjectArgs {
    /// YAML or JSON files (Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs,
    /// CronJobs, Pods, Lists, multi-document streams); `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Render the full sidecar (init container, proxy, volumes) instead of the annotation.
    #[arg(long, env = "WEFT_INJECT_MANUAL")]
    manual: bool,
    #[command(flatten)]
    proxy: ProxyArgs,
}

pub fn run(args: InjectArgs) -> anyhow::Result<()> {
    let InjectArgs { files, manual, proxy } = args;
    let config = proxy.into_config()?;
    let mode = if manual { Mode::Manual } else { Mode::Annotate };
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    let mut errors = 0;
    for (i, file) in files.iter().enumerate() {
        let input = if file.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
            s
        } else {
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
        };
        let out = manifest::inject(&input, mode, &config);
        if i > 0 {
            // Files are joined into one stream.
            stdout.write_all(b"---\n")?;
        }
        stdout.write_all(out.output.as_bytes())?;
        if !out.output.is_empty() && !out.output.ends_with('\n') {
            stdout.write_all(b"\n")?;
        }
        let name =
            if file.as_os_str() == "-" { "stdin".to_string() } else { file.display().to_string() };
        for r in &out.reports {
            let mark = match r.status {
                Status::Changed => "injected",
                Status::Unchanged => "skipped",
                Status::Error => "error",
            };
            writeln!(stderr, "{name}: {mark}: {r}")?;
        }
        errors += out.errors();
    }
    stdout.flush()?;
    if errors > 0 {
        bail!("{errors} object(s) could not be injected (left as they were)");
    }
    Ok(())
}
