//! The `weft` binary: the control plane's servers and the user CLI, as thin clap dispatch.
//! Subcommands: `demo`, `destination`, `identity`, `certs`, `injector`, `inject`, `check`.

mod certs;
mod check;
mod cli;
mod demo;
mod destination;
mod identity;
mod inject;
mod injector;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "weft", version, about = "Weft: a small, fast service mesh for Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the identity service (the CA)
    Identity(identity::IdentityArgs),
    /// Generate or inspect PKI files
    Certs(certs::CertsArgs),
    /// Run the proxy injector (mutating admission webhook)
    Injector(injector::InjectorArgs),
    /// Add the proxy to Kubernetes manifests
    Inject(inject::InjectArgs),
    /// Run a whole mesh on loopback (no cluster, no root) and print what the proxies saw.
    Demo(demo::DemoArgs),
    /// Run the destination service (discovery for proxies).
    Destination(destination::DestinationArgs),
    /// Check the health of an installation: the API server, the control plane, the identity
    /// PKI, the injector's webhook, and the meshed pods (exit 1 when a check fails).
    Check(check::CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Identity(args) => identity::run(args),
        Command::Certs(args) => certs::run(args),
        Command::Injector(args) => injector::run(args),
        Command::Inject(args) => inject::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Destination(args) => destination::run(args),
        // Its own exit codes: 1 for a failed check, 2 for bad config.
        Command::Check(args) => return check::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}
