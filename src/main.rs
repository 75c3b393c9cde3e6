//! The `weft` binary: the control plane's servers and the user CLI, as thin clap dispatch.
//! Subcommands: `demo`, `destination`, `identity`, `certs`, `injector`, `inject`.

mod certs;
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}
