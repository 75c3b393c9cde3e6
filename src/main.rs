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

#[cfg(test)]
mod tests {
    use clap::{ArgAction, Command, CommandFactory as _};

    use super::Cli;

    /// DESIGN.md: every flag is also an env var, `WEFT_<SUBCOMMAND>_<FLAG>` (a nested
    /// subcommand's flags take its top-level subcommand's prefix: `WEFT_CERTS_FORCE`). The
    /// proxy settings that `weft inject` shares with `weft injector` keep the injector's
    /// names, so that one set of env vars configures both.
    #[test]
    fn every_flag_is_also_an_env_var() {
        fn check(cmd: &Command, prefixes: &[String], problems: &mut Vec<String>) {
            let mut seen = std::collections::HashSet::new();
            for arg in cmd.get_arguments() {
                let builtin = matches!(
                    arg.get_action(),
                    ArgAction::Help
                        | ArgAction::HelpShort
                        | ArgAction::HelpLong
                        | ArgAction::Version
                );
                if arg.is_positional() || builtin {
                    continue;
                }
                let flag = arg.get_long().expect("every flag has a long name");
                let name = flag.to_ascii_uppercase().replace('-', "_");
                let want = prefixes.iter().map(|p| format!("{p}{name}")).collect::<Vec<_>>();
                match arg.get_env().and_then(|e| e.to_str()) {
                    None => problems.push(format!("{}: --{flag} has no env var", cmd.get_name())),
                    Some(env) if !want.iter().any(|w| w == env) => problems.push(format!(
                        "{}: --{flag} has env var {env}, not one of {want:?}",
                        cmd.get_name()
                    )),
                    Some(env) if !seen.insert(env.to_string()) => {
                        problems.push(format!("{}: {env} is used twice", cmd.get_name()));
                    }
                    Some(_) => {}
                }
            }
            for sub in cmd.get_subcommands() {
                check(sub, prefixes, problems);
            }
        }

        let mut cli = Cli::command();
        cli.build();
        let mut problems = Vec::new();
        let mut flags = 0;
        for sub in cli.get_subcommands() {
            let mut prefixes = vec![format!("WEFT_{}_", sub.get_name().to_ascii_uppercase())];
            if sub.get_name() == "inject" {
                prefixes.push("WEFT_INJECTOR_".to_string());
            }
            check(sub, &prefixes, &mut problems);
            flags += sub.get_arguments().filter(|a| a.get_env().is_some()).count();
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        assert!(flags > 50, "the walk saw the subcommands' flags ({flags})");
        // The subcommands that have flags; a new one is walked the same way.
        let names: Vec<&str> = cli.get_subcommands().map(Command::get_name).collect();
        for name in ["identity", "certs", "injector", "inject", "demo", "destination", "check"] {
            assert!(names.contains(&name), "{name}");
        }
    }
}
