//! Tests of init's flags and of how it drives the iptables binaries (scripted, no root needed).

use std::collections::HashMap;

use clap::Parser;

use super::*;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    init: InitArgs,
}

fn parse(args: &[&str]) -> Result<InitArgs, String> {
    Cli::try_parse_from(std::iter::once("init").chain(args.iter().copied()))
        .map(|cli| cli.init)
        .map_err(|e| e.to_string())
}

fn args(extra: &[&str]) -> InitArgs {
    parse(extra).expect("valid flags")
}

#[test]
fn defaults() {
    let a = args(&[]);
    assert_eq!((a.inbound_port, a.outbound_port, a.proxy_uid), (4143, 4140, 2102));
    assert!(a.skip_inbound_ports.is_empty() && a.skip_outbound_ports.is_empty());
    assert!(a.skip_subnets.is_empty());
    assert_eq!(a.iptables_mode, IptablesMode::Auto);
    assert!(a.ipv6 && !a.dry_run);
    assert_eq!(families(&a), [Family::V4, Family::V6]);
}

#[test]
fn flags() {
    let a = args(&[
        "--inbound-port=5143",
        "--outbound-port=5140",
        "--proxy-uid=1000",
        "--skip-inbound-ports=22,8000-8100",
        "--skip-outbound-ports=443",
        "--skip-subnets=10.96.0.0/12,fd00::/8",
        "--iptables-mode=legacy",
        "--ipv6=false",
        "--dry-run",
    ]);
    assert_eq!((a.inbound_port, a.outbound_port, a.proxy_uid), (5143, 5140, 1000));
    assert_eq!(a.skip_inbound_ports.to_string(), "22,8000-8100");
    assert_eq!(a.skip_outbound_ports.to_string(), "443");
    assert_eq!(a.skip_subnets.to_string(), "10.96.0.0/12,fd00::/8");
    assert_eq!(a.iptables_mode, IptablesMode::Legacy);
    assert!(!a.ipv6 && a.dry_run);
    assert_eq!(families(&a), [Family::V4]);
    assert!(args(&["--ipv6", "true"]).ipv6);
    assert_eq!(args(&["--iptables-mode", "nft"]).iptables_mode, IptablesMode::Nft);
}

#[test]
fn bad_flags_are_refused_with_the_reason() {
    let cases: [(&[&str], &str); 9] = [
        (&["--inbound-port", "0"], "0 is not in 1..=65535"),
        (&["--outbound-port", "65536"], "65536 is not in 1..=65535"),
        (&["--proxy-uid=-1"], "invalid value '-1' for '--proxy-uid"),
        (&["--skip-inbound-ports", "8000-70"], "\"8000-70\" is backwards"),
        (&["--skip-outbound-ports", "0"], "\"0\" is not a port"),
        (&["--skip-subnets", "10.0.0.0"], "expected an address and a prefix length"),
        (&["--skip-subnets", "10.0.0.1/8"], "did you mean 10.0.0.0/8?"),
        (&["--iptables-mode", "iptables"], "[possible values: auto, nft, legacy]"),
        (&["--ipv6", "yes"], "--ipv6"),
    ];
    for (flags, message) in cases {
        let err = parse(flags).expect_err("refused");
        assert!(err.contains(message), "{flags:?}: {err}");
    }
}

#[test]
fn the_two_proxy_ports_must_differ() {
    let err = validate(&args(&["--inbound-port=4140"])).expect_err("same ports");
    assert!(err.to_string().contains("--inbound-port and --outbound-port are both 4140"), "{err}");
    let config = validate(&args(&["--skip-subnets=fd00::/8", "--ipv6=false"])).expect("valid");
    assert_eq!(config.skip_subnets.to_string(), "fd00::/8");
}

#[test]
fn dry_run_prints_each_family_as_a_first_run_would_apply_it() {
    let a = args(&["--skip-subnets=10.0.0.0/8,fd00::/8"]);
    let config = validate(&a).expect("valid");
    let out = dry_run(&config, &families(&a));
    let v4 = plan(&config, Family::V4, "");
    let v6 = plan(&config, Family::V6, "");
    assert!(out.contains(&v4) && out.contains(&v6), "{out}");
    assert!(out.find("# IPv4").expect("v4 header") < out.find("# IPv6").expect("v6 header"));
    assert_eq!(out.matches("*nat").count(), 2);
    assert_eq!(dry_run(&config, &[Family::V4]).matches("*nat").count(), 1);
}

#[test]
fn choosing_a_backend() {
    use Backend::*;
    let cases = [
        (None, None, Nft),
        (Some(0), Some(0), Nft),
        (Some(5), Some(0), Legacy),
        (Some(5), Some(1), Nft),
        (Some(0), Some(3), Nft),
        (Some(0), None, Legacy),
        (Some(4), None, Legacy),
        (None, Some(0), Nft),
    ];
    for (legacy, nft, expected) in cases {
        assert_eq!(choose_backend(legacy, nft), expected, "legacy {legacy:?}, nft {nft:?}");
    }
    assert_eq!(Nft.binary(Family::V4, "save"), "iptables-nft-save");
    assert_eq!(Legacy.binary(Family::V6, "restore"), "ip6tables-legacy-restore");
}

/// Records every call and answers from a script keyed by program name, with a suffix for
/// ` --test` and ` rollback` restores and ` all` saves (those of every table, for `auto`);
/// unscripted calls succeed with no output.
#[derive(Default)]
struct Fake {
    calls: Vec<(String, Vec<String>, Option<String>)>,
    answers: HashMap<String, Result<String, String>>,
}

impl Fake {
    fn answer(mut self, key: &str, result: Result<&str, &str>) -> Self {
        self.answers.insert(key.to_string(), result.map(str::to_string).map_err(str::to_string));
        self
    }

    fn programs(&self) -> Vec<String> {
        self.calls
            .iter()
            .map(|(p, a, _)| format!("{p} {}", a.join(" ")).trim().to_string())
            .collect()
    }
}

impl Runner for Fake {
    fn run(
        &mut self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, CommandError> {
        self.calls.push((
            program.to_string(),
            args.iter().map(ToString::to_string).collect(),
            stdin.map(str::to_string),
        ));
        let key = if program.ends_with("-restore") {
            match (args.contains(&"--test"), args.contains(&"--noflush")) {
                (true, _) => format!("{program} --test"),
                (false, false) => format!("{program} rollback"),
                (false, true) => program.to_string(),
            }
        } else if args.is_empty() {
            format!("{program} all")
        } else {
            program.to_string()
        };
        match self.answers.get(&key) {
            None => Ok(String::new()),
            Some(Ok(out)) => Ok(out.clone()),
            Some(Err(stderr)) if stderr == "missing" => {
                Err(CommandError::NotFound { program: program.to_string() })
            }
            Some(Err(stderr)) => Err(CommandError::Failed {
                command: program.to_string(),
                status: "exit status: 1".to_string(),
                stderr: stderr.clone(),
            }),
        }
    }
}

const V4_SAVE: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j KUBE\nCOMMIT\n";
const V6_SAVE: &str = "*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n";

fn fake() -> Fake {
    Fake::default()
        .answer("iptables-nft-save", Ok(V4_SAVE))
        .answer("ip6tables-nft-save", Ok(V6_SAVE))
}

fn config() -> RuleConfig {
    validate(&args(&["--skip-subnets=10.0.0.0/8,fd00::/8"])).expect("valid")
}

#[test]
fn both_families_are_read_and_test_loaded_before_either_is_applied() {
    let mut runner = fake();
    apply(IptablesMode::Nft, &config(), &[Family::V4, Family::V6], &mut runner).expect("applied");
    assert_eq!(
        runner.programs(),
        [
            "iptables-nft-save -t nat",
            "ip6tables-nft-save -t nat",
            "iptables-nft-restore --noflush --test",
            "ip6tables-nft-restore --noflush --test",
            "iptables-nft-restore --noflush",
            "ip6tables-nft-restore --noflush",
        ]
    );
    let inputs: Vec<&str> =
        runner.calls.iter().filter_map(|(_, _, stdin)| stdin.as_deref()).collect();
    let v4 = plan(&config(), Family::V4, V4_SAVE);
    let v6 = plan(&config(), Family::V6, V6_SAVE);
    assert_eq!(inputs, [&v4, &v6, &v4, &v6]);
    assert!(v4.contains("-d 10.0.0.0/8") && v6.contains("-d fd00::/8"));
}

#[test]
fn ipv4_only() {
    let mut runner = fake();
    apply(IptablesMode::Legacy, &config(), &[Family::V4], &mut runner).expect("applied");
    assert_eq!(
        runner.programs(),
        [
            "iptables-legacy-save -t nat",
            "iptables-legacy-restore -w 10 --noflush --test",
            "iptables-legacy-restore -w 10 --noflush",
        ]
    );
}

#[test]
fn jumps_already_in_place_are_not_added_again() {
    let saved = "*nat\n-A PREROUTING -m comment --comment \"weft/inbound\" -j WEFT_INBOUND\n\
        -A OUTPUT -m comment --comment \"weft/outbound\" -j WEFT_OUTBOUND\nCOMMIT\n";
    let mut runner = Fake::default().answer("iptables-nft-save", Ok(saved));
    apply(IptablesMode::Nft, &config(), &[Family::V4], &mut runner).expect("applied");
    let input = runner.calls[2].2.as_deref().expect("restore input");
    assert!(!input.contains("-A PREROUTING") && !input.contains("-A OUTPUT"), "{input}");
    assert!(input.contains(":WEFT_INBOUND - [0:0]"), "{input}");
}

#[test]
fn auto_uses_the_backend_that_has_the_rules() {
    let legacy_rules = "*filter\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n";
    let mut runner = fake().answer("iptables-legacy-save all", Ok(legacy_rules));
    apply(IptablesMode::Auto, &config(), &[Family::V4], &mut runner).expect("applied");
    assert_eq!(
        runner.programs(),
        [
            "iptables-legacy-save",
            "iptables-nft-save",
            "iptables-legacy-save -t nat",
            "iptables-legacy-restore -w 10 --noflush --test",
            "iptables-legacy-restore -w 10 --noflush",
        ]
    );

    // The nft backend has rules too (our own, from an earlier run): nft.
    let mut runner = fake()
        .answer("iptables-legacy-save all", Ok(legacy_rules))
        .answer("iptables-nft-save all", Ok(V4_SAVE));
    apply(IptablesMode::Auto, &config(), &[Family::V4], &mut runner).expect("applied");
    assert_eq!(runner.programs()[2], "iptables-nft-save -t nat");

    // Neither has rules: nft.
    let mut runner = fake();
    apply(IptablesMode::Auto, &config(), &[Family::V4], &mut runner).expect("applied");
    assert_eq!(runner.programs()[2], "iptables-nft-save -t nat");

    // No legacy binary at all: nft.
    let mut runner = fake().answer("iptables-legacy-save all", Err("missing"));
    apply(IptablesMode::Auto, &config(), &[Family::V4], &mut runner).expect("applied");
    assert_eq!(runner.programs()[2], "iptables-nft-save -t nat");
}

#[test]
fn a_missing_binary_names_the_package() {
    let mut runner = Fake::default().answer("iptables-nft-save", Err("missing"));
    let err = apply(IptablesMode::Nft, &config(), &[Family::V4], &mut runner).expect_err("missing");
    let err = err.to_string();
    assert!(
        err.contains("`iptables-nft-save` was not found: install the `iptables` package"),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
}

#[test]
fn an_unreadable_ipv6_table_changes_nothing_and_suggests_ipv6_false() {
    let mut runner =
        fake().answer("ip6tables-nft-save", Err("can't initialize ip6tables table `nat'"));
    let err = apply(IptablesMode::Nft, &config(), &[Family::V4, Family::V6], &mut runner)
        .expect_err("fails");
    let err = err.to_string();
    assert!(err.contains("reading the IPv6 nat table failed, nothing was changed"), "{err}");
    assert!(
        err.contains("can't initialize ip6tables table") && err.ends_with("--ipv6 false"),
        "{err}"
    );
    assert!(runner.programs().iter().all(|p| !p.contains("restore")));
}

#[test]
fn input_refused_by_a_test_load_changes_nothing() {
    let mut runner = fake().answer("ip6tables-nft-restore --test", Err("line 5 failed"));
    let err = apply(IptablesMode::Nft, &config(), &[Family::V4, Family::V6], &mut runner)
        .expect_err("fails");
    assert!(err.to_string().contains("the IPv6 rules were refused, nothing was changed"), "{err}");
    assert!(err.to_string().contains("line 5 failed"), "{err}");
    assert!(runner.programs().iter().all(|p| !p.ends_with("--noflush")), "{:?}", runner.programs());
}

#[test]
fn a_failing_ipv4_apply_stops_before_ipv6() {
    let mut runner = fake().answer("iptables-nft-restore", Err("resource busy"));
    let err = apply(IptablesMode::Nft, &config(), &[Family::V4, Family::V6], &mut runner)
        .expect_err("fails");
    let err = err.to_string();
    assert!(err.starts_with("applying the IPv4 rules failed, nothing was changed"), "{err}");
    assert!(err.contains("resource busy"), "{err}");
    assert_eq!(
        runner.programs().last().map(String::as_str),
        Some("iptables-nft-restore --noflush")
    );
}

#[test]
fn a_failing_ipv6_apply_rolls_ipv4_back() {
    let mut runner = fake().answer("ip6tables-nft-restore", Err("no nat table"));
    let err = apply(IptablesMode::Nft, &config(), &[Family::V4, Family::V6], &mut runner)
        .expect_err("fails");
    let err = err.to_string();
    assert!(
        err.starts_with(
            "applying the IPv6 rules failed after the IPv4 rules were applied; those were rolled \
             back, so nothing was changed"
        ),
        "{err}"
    );
    assert!(err.contains("no nat table"), "{err}");
    let (program, args, stdin) = runner.calls.last().expect("rollback call");
    assert_eq!((program.as_str(), args.len()), ("iptables-nft-restore", 0));
    assert_eq!(stdin.as_deref(), Some(rollback_input(V4_SAVE).as_str()));
    assert_eq!(
        stdin.as_deref(),
        Some("*nat\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -j KUBE\nCOMMIT\n")
    );
}

#[test]
fn a_failed_rollback_says_what_state_is_left() {
    let mut runner = fake()
        .answer("ip6tables-nft-restore", Err("no nat table"))
        .answer("iptables-nft-restore rollback", Err("table busy"));
    let err = apply(IptablesMode::Nft, &config(), &[Family::V4, Family::V6], &mut runner)
        .expect_err("fails");
    let err = err.to_string();
    assert!(err.contains("rolling those back failed too (IPv4: "), "{err}");
    assert!(err.contains("table busy"), "{err}");
    assert!(err.contains("the IPv4 nat table has Weft's rules but the IPv6 one does not"), "{err}");
    assert!(err.ends_with("no nat table"), "{err}");
}

#[test]
fn the_system_runner_reports_what_happened() {
    let out = System.run("cat", &[], Some("*nat\nCOMMIT\n")).expect("cat runs");
    assert_eq!(out, "*nat\nCOMMIT\n");
    let err = System.run("weft-no-such-iptables-save", &["-t", "nat"], None).expect_err("missing");
    assert!(matches!(err, CommandError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("install the `iptables` package"), "{err}");
    let err = System.run("sh", &["-c", "echo bad input >&2; exit 2"], None).expect_err("fails");
    assert_eq!(
        err.to_string(),
        "`sh -c echo bad input >&2; exit 2` failed (exit status: 2): bad input"
    );
}
