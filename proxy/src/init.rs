//! `weft-proxy init`: installs the nat rules that send a pod's TCP traffic through the proxy.
//!
//! The rules are built as text (`rules`), planned against the table as it is (so re-running
//! changes nothing) and applied with one `iptables-restore --noflush` per IP family, after both
//! families' inputs have been read, built and test-loaded.

mod rules;

use std::{
    fmt,
    io::Write as _,
    process::{Command, Stdio},
};

use anyhow::anyhow;
use clap::{ArgAction, Args, ValueEnum};
use tracing::{debug, info, warn};

use crate::config::{LogFormat, PortSet};

pub use self::rules::{
    ALWAYS_SKIPPED_INBOUND_PORTS, Cidr, CidrError, Family, INBOUND_CHAIN, OUTBOUND_CHAIN,
    RuleConfig, Subnets, count_rules, multiport_groups, plan, rollback_input, rules,
};

/// `weft-proxy init`: run once per pod, before the proxy and the app, with NET_ADMIN and NET_RAW.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Port of the inbound proxy, where inbound TCP is redirected.
    #[arg(long, env = "WEFT_PROXY_INIT_INBOUND_PORT", default_value_t = 4143,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub inbound_port: u16,

    /// Port of the outbound proxy, where outbound TCP is redirected.
    #[arg(long, env = "WEFT_PROXY_INIT_OUTBOUND_PORT", default_value_t = 4140,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub outbound_port: u16,

    /// User id the proxy runs as: its own connections are never redirected.
    #[arg(long, env = "WEFT_PROXY_INIT_PROXY_UID", default_value_t = 2102)]
    pub proxy_uid: u32,

    /// Inbound destination ports that reach the app directly (e.g. `22,8000-8100`);
    /// 4190 and 4191, the proxy's own, are always skipped.
    #[arg(long, env = "WEFT_PROXY_INIT_SKIP_INBOUND_PORTS", default_value = "")]
    pub skip_inbound_ports: PortSet,

    /// Outbound destination ports that bypass the proxy (e.g. `443,5432`).
    #[arg(long, env = "WEFT_PROXY_INIT_SKIP_OUTBOUND_PORTS", default_value = "")]
    pub skip_outbound_ports: PortSet,

    /// Outbound destination subnets that bypass the proxy (comma-separated CIDRs, IPv4 and/or
    /// IPv6, e.g. `10.96.0.0/12,fd00::/8`).
    #[arg(long, env = "WEFT_PROXY_INIT_SKIP_SUBNETS", default_value = "")]
    pub skip_subnets: Subnets,

    /// Which iptables backend to program; `auto` picks legacy only when the node already has
    /// legacy rules and no nft ones.
    #[arg(long, env = "WEFT_PROXY_INIT_IPTABLES_MODE", value_enum, default_value_t = IptablesMode::Auto)]
    pub iptables_mode: IptablesMode,

    /// Also program ip6tables (`true` or `false`).
    #[arg(long, env = "WEFT_PROXY_INIT_IPV6", default_value_t = true, action = ArgAction::Set)]
    pub ipv6: bool,

    /// Print the iptables-restore input for each family and change nothing.
    #[arg(long, env = "WEFT_PROXY_INIT_DRY_RUN", value_parser = clap::builder::FalseyValueParser::new())]
    pub dry_run: bool,

    /// Tracing filter for init's own logs (on stderr).
    #[arg(long, env = "WEFT_PROXY_INIT_LOG", default_value = "warn,weft_proxy=info")]
    pub log: String,

    /// Log output format.
    #[arg(long, env = "WEFT_PROXY_INIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IptablesMode {
    Auto,
    Nft,
    Legacy,
}

/// An iptables backend: which kernel interface the binaries program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Nft,
    Legacy,
}

impl Backend {
    /// The binary of `tool` (`save` or `restore`) for this backend and `family`.
    pub fn binary(self, family: Family, tool: &str) -> String {
        format!("{}-{self}-{tool}", family.command())
    }

    /// `restore` with `options`: legacy serialises on the xtables lock (shared by every network
    /// namespace of the host's mount namespace), so it waits for the lock instead of failing.
    fn restore_args<'a>(self, options: &[&'a str]) -> Vec<&'a str> {
        let wait: &[&str] = match self {
            Backend::Legacy => &["-w", "10"],
            Backend::Nft => &[],
        };
        wait.iter().chain(options).copied().collect()
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        })
    }
}

/// `auto`: the backend that already has the node's rules, like linkerd's and kube-proxy's
/// detection; `None` counts are backends whose save binary did not run.
pub fn choose_backend(legacy_rules: Option<usize>, nft_rules: Option<usize>) -> Backend {
    match (legacy_rules, nft_rules) {
        (Some(_), None) => Backend::Legacy,
        (Some(legacy), Some(0)) if legacy > 0 => Backend::Legacy,
        _ => Backend::Nft,
    }
}

/// Installs the rules (or prints them, with `--dry-run`).
pub fn run(args: &InitArgs) -> anyhow::Result<()> {
    let config = validate(args)?;
    // Init is a process of its own; a caller that already logs keeps its subscriber.
    if !tracing::dispatcher::has_been_set() {
        crate::logging::init(&args.log, args.log_format)?;
    }
    let families = families(args);
    if args.dry_run {
        print!("{}", dry_run(&config, &families));
        return Ok(());
    }
    info!(
        inbound_port = args.inbound_port,
        outbound_port = args.outbound_port,
        proxy_uid = args.proxy_uid,
        skip_inbound_ports = %args.skip_inbound_ports,
        skip_outbound_ports = %args.skip_outbound_ports,
        skip_subnets = %args.skip_subnets,
        iptables_mode = ?args.iptables_mode,
        ipv6 = args.ipv6,
        "installing the interception rules"
    );
    if !args.ipv6 && args.skip_subnets.of(Family::V6).next().is_some() {
        warn!(skip_subnets = %args.skip_subnets, "--ipv6 is false: the IPv6 subnets to skip are ignored");
    }
    apply(args.iptables_mode, &config, &families, &mut System)
}

/// Checks what clap cannot check flag by flag, and gives the view the rules are built from.
fn validate(args: &InitArgs) -> anyhow::Result<RuleConfig> {
    let InitArgs {
        inbound_port,
        outbound_port,
        proxy_uid,
        skip_inbound_ports,
        skip_outbound_ports,
        skip_subnets,
        iptables_mode: _,
        ipv6: _,
        dry_run: _,
        log: _,
        log_format: _,
    } = args;
    if inbound_port == outbound_port {
        return Err(anyhow!(
            "--inbound-port and --outbound-port are both {inbound_port}: the inbound and outbound \
             proxies need ports of their own"
        ));
    }
    Ok(RuleConfig {
        inbound_port: *inbound_port,
        outbound_port: *outbound_port,
        proxy_uid: *proxy_uid,
        skip_inbound_ports: skip_inbound_ports.clone(),
        skip_outbound_ports: skip_outbound_ports.clone(),
        skip_subnets: skip_subnets.clone(),
    })
}

fn families(args: &InitArgs) -> Vec<Family> {
    if args.ipv6 { vec![Family::V4, Family::V6] } else { vec![Family::V4] }
}

/// What `--dry-run` prints: each family's restore input as a first run would apply it.
fn dry_run(config: &RuleConfig, families: &[Family]) -> String {
    let mut out = String::new();
    for &family in families {
        out.push_str(&format!(
            "# {family}: input for `{}-restore --noflush` (the PREROUTING and OUTPUT jumps are \
             added only when missing)\n",
            family.command()
        ));
        out.push_str(&plan(config, family, ""));
    }
    out
}

/// A failed run of an iptables binary.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(
        "`{program}` was not found: install the `iptables` package, which provides the nft and \
         legacy binaries (e.g. `apt-get install iptables`)"
    )]
    NotFound { program: String },
    #[error("could not run `{program}`: {source}")]
    Io { program: String, source: std::io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed { command: String, status: String, stderr: String },
}

/// Runs the iptables binaries; a trait so that tests can script their answers.
trait Runner {
    /// Runs `program` with `args` and `stdin`, returning its stdout when it succeeds.
    fn run(
        &mut self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, CommandError>;
}

/// The real binaries, found in `PATH`.
struct System;

impl Runner for System {
    fn run(
        &mut self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, CommandError> {
        let io = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => CommandError::NotFound { program: program.to_string() },
            _ => CommandError::Io { program: program.to_string(), source },
        };
        debug!(program, ?args, "running");
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // Restore reads all of its input before it answers, and the input is a few KiB:
            // writing it all first cannot deadlock on the output pipes.
            // A program that exits without reading (it failed at once) closes the pipe:
            // its exit status and stderr below say why, not the broken pipe.
            match pipe.write_all(input.as_bytes()) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.map_err(io)?,
            }
        }
        let output = child.wait_with_output().map_err(io)?;
        if output.status.success() {
            return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
        }
        Err(CommandError::Failed {
            command: std::iter::once(program)
                .chain(args.iter().copied())
                .collect::<Vec<_>>()
                .join(" "),
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// One family's input, ready to apply, with the table as it was before.
struct Staged {
    family: Family,
    snapshot: String,
    input: String,
}

/// Chooses the backend, reads, plans and test-loads every family, then applies them; when a
/// family fails after others were applied, those are put back as they were.
fn apply(
    mode: IptablesMode,
    config: &RuleConfig,
    families: &[Family],
    runner: &mut dyn Runner,
) -> anyhow::Result<()> {
    let backend = match mode {
        IptablesMode::Nft => Backend::Nft,
        IptablesMode::Legacy => Backend::Legacy,
        IptablesMode::Auto => detect(runner),
    };
    info!(%backend, ?mode, "using the {backend} iptables backend");

    let mut staged = Vec::with_capacity(families.len());
    for &family in families {
        let save = backend.binary(family, "save");
        let snapshot = runner.run(&save, &["-t", "nat"], None).map_err(|e| {
            let hint = match family {
                Family::V6 => "; if this pod has no IPv6, run with --ipv6 false",
                Family::V4 => "",
            };
            anyhow!("reading the {family} nat table failed, nothing was changed: {e}{hint}")
        })?;
        let input = plan(config, family, &snapshot);
        debug!(%family, %input, "planned");
        staged.push(Staged { family, snapshot, input });
    }

    for Staged { family, input, .. } in &staged {
        let restore = backend.binary(*family, "restore");
        runner
            .run(&restore, &backend.restore_args(&["--noflush", "--test"]), Some(input))
            .map_err(|e| anyhow!("the {family} rules were refused, nothing was changed: {e}"))?;
    }

    for (i, Staged { family, input, .. }) in staged.iter().enumerate() {
        let restore = backend.binary(*family, "restore");
        let Err(e) = runner.run(&restore, &backend.restore_args(&["--noflush"]), Some(input))
        else {
            info!(%family, %backend, "rules installed");
            continue;
        };
        let applied = &staged[..i];
        if applied.is_empty() {
            return Err(anyhow!("applying the {family} rules failed, nothing was changed: {e}"));
        }
        let names = applied.iter().map(|s| s.family.to_string()).collect::<Vec<_>>().join(" and ");
        let mut rollback_errors = Vec::new();
        for done in applied.iter().rev() {
            let restore = backend.binary(done.family, "restore");
            let input = rollback_input(&done.snapshot);
            if let Err(rollback) = runner.run(&restore, &backend.restore_args(&[]), Some(&input)) {
                rollback_errors.push(format!("{}: {rollback}", done.family));
            }
        }
        return Err(if rollback_errors.is_empty() {
            anyhow!(
                "applying the {family} rules failed after the {names} rules were applied; those \
                 were rolled back, so nothing was changed: {e}"
            )
        } else {
            anyhow!(
                "applying the {family} rules failed after the {names} rules were applied, and \
                 rolling those back failed too ({}): the {names} nat table has Weft's rules but \
                 the {family} one does not; fix the cause and run init again: {e}",
                rollback_errors.join("; ")
            )
        });
    }
    Ok(())
}

/// Counts the rules each backend has (IPv4, all tables it lists) and chooses.
fn detect(runner: &mut dyn Runner) -> Backend {
    let mut count = |backend: Backend| {
        let save = backend.binary(Family::V4, "save");
        match runner.run(&save, &[], None) {
            Ok(out) => Some(count_rules(&out)),
            Err(error) => {
                debug!(%error, "cannot read the {backend} tables");
                None
            }
        }
    };
    let legacy = count(Backend::Legacy);
    let nft = count(Backend::Nft);
    let backend = choose_backend(legacy, nft);
    info!(?legacy, ?nft, %backend, "iptables-mode auto: counted the existing rules of each backend");
    backend
}

#[cfg(test)]
mod tests;
