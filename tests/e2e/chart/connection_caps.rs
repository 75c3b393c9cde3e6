//! The control-plane listeners' caps in the chart (`identity.max*`, `destination.max*`):
//! by default exactly the servers' own defaults and every `--max-*` flag they have (read
//! from their `--help`, so a cap added to a server shows up here); given values reach the
//! flags (strings of digits too, as `--set-string` gives them); and a value the servers cannot take is rendered as given — the chart checks no
//! number or duration, the servers do — and stops its server at start with a message naming
//! the flag.

use std::{
    collections::BTreeMap,
    io::Read as _,
    process::{Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::{Value, json};

use super::{Dir, Objects, WEFT, chart, pki, release, required_values, run::the_container, with};

/// The Deployments whose server has the caps.
const SERVERS: [&str; 2] = ["weft-identity", "weft-destination"];

/// The container's `weft` subcommand, and its `--max-*` flags (flag → value).
fn cap_flags(objects: &Objects, deployment: &str) -> (String, BTreeMap<String, String>) {
    let d: Deployment = objects.get("Deployment", deployment);
    let args = the_container(&d).args.clone().unwrap_or_default();
    let subcommand = args.first().cloned().expect("a subcommand");
    let flags = args
        .iter()
        .filter(|a| a.starts_with("--max-"))
        .map(|a| {
            let (flag, value) = a.split_once('=').unwrap_or_else(|| panic!("{a}: flag=value"));
            (flag.to_owned(), value.to_owned())
        })
        .collect();
    (subcommand, flags)
}

/// Every `--max-*` flag of `weft <subcommand>` with its default, from `--help`.
fn server_defaults(subcommand: &str) -> BTreeMap<String, String> {
    let out = Command::new(WEFT).env_clear().args([subcommand, "--help"]).output().expect("weft");
    assert!(out.status.success(), "weft {subcommand} --help");
    let help = String::from_utf8(out.stdout).expect("utf-8");
    let mut defaults = BTreeMap::new();
    let mut flag: Option<&str> = None;
    for line in help.lines().map(str::trim) {
        if line.starts_with('-') {
            flag = line.split_whitespace().find(|w| w.starts_with("--max-"));
        }
        if let (Some(f), Some((_, rest))) = (flag, line.split_once("[default: ")) {
            let value = rest.split_once(']').expect("[default: …]").0;
            defaults.insert(f.to_owned(), value.to_owned());
            flag = None;
        }
    }
    defaults
}

#[test]
fn chart_connection_caps_default_to_the_servers_own() {
    let dir = Dir::new("caps-defaults");
    let rendered = chart().render(&release(), &required_values(&pki(&dir.0))).expect("renders");
    let objects = Objects::new(&rendered);
    for deployment in SERVERS {
        let (subcommand, flags) = cap_flags(&objects, deployment);
        let defaults = server_defaults(&subcommand);
        assert_eq!(flags, defaults, "{deployment}: every --max-* flag, at the server's default");
    }
    let (_, identity) = cap_flags(&objects, "weft-identity");
    assert_eq!(
        identity.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "--max-client-connections",
            "--max-client-handshakes",
            "--max-connections",
            "--max-handshakes"
        ],
        "the listener's four caps"
    );
    let (_, destination) = cap_flags(&objects, "weft-destination");
    assert_eq!(destination["--max-connection-idle"], "10m");
    assert_eq!(
        (&destination["--max-connections"], &destination["--max-client-connections"]),
        (&"8192".to_owned(), &"512".to_owned()),
        "the documented defaults"
    );
}

#[test]
fn chart_connection_caps_given_reach_the_flags() {
    let dir = Dir::new("caps-given");
    let values = with(
        required_values(&pki(&dir.0)),
        json!({
            "identity": {"maxConnections": 1_000_000, "maxClientConnections": "2048",
                         "maxHandshakes": 1024, "maxClientHandshakes": 256},
            "destination": {"maxConnections": 20000, "maxClientConnections": 1000,
                            "maxHandshakes": 64, "maxClientHandshakes": 64,
                            "maxConnectionIdle": "1h"},
        }),
    );
    let objects = Objects::new(&chart().render(&release(), &values).expect("renders"));
    let flags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(f, v)| (format!("--{f}"), (*v).to_owned())).collect()
    };
    assert_eq!(
        cap_flags(&objects, "weft-identity").1,
        flags(&[
            ("max-connections", "1000000"),
            ("max-client-connections", "2048"),
            ("max-handshakes", "1024"),
            ("max-client-handshakes", "256"),
        ])
    );
    assert_eq!(
        cap_flags(&objects, "weft-destination").1,
        flags(&[
            ("max-connections", "20000"),
            ("max-client-connections", "1000"),
            ("max-handshakes", "64"),
            ("max-client-handshakes", "64"),
            ("max-connection-idle", "1h"),
        ])
    );
}

/// `weft <args>` as the Deployment gives them (listeners moved to loopback, nothing else of
/// the pod: the refusals come before any file, the API server or a listener is used): its
/// exit status and stderr.
fn start_from(objects: &Objects, deployment: &str) -> (bool, String) {
    let d: Deployment = objects.get("Deployment", deployment);
    let args = the_container(&d).args.clone().unwrap_or_default().into_iter().map(|a| {
        match a.split_once("=0.0.0.0:") {
            Some((flag, _)) => format!("{flag}=127.0.0.1:0"),
            None => a,
        }
    });
    let mut child = Command::new(WEFT)
        .env_clear()
        .env("KUBECONFIG", "/dev/null")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weft");
    let Some(status) = crate::support::wait_exit(&mut child, Duration::from_secs(20)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{deployment} from the chart kept running: the value was not refused");
    };
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("stderr");
    (status.success(), err)
}

#[test]
fn chart_connection_caps_the_servers_refuse_stop_them_naming_the_flag() {
    let dir = Dir::new("caps-refused");
    let pki = pki(&dir.0);
    let cases: [(&str, Value, &str); 7] = [
        (
            "weft-identity",
            json!({"identity": {"maxConnections": 0}}),
            "--max-connections must be at least 1",
        ),
        (
            "weft-identity",
            json!({"identity": {"maxClientConnections": 9000}}),
            "--max-client-connections (9000) must not be more than --max-connections (8192)",
        ),
        (
            "weft-destination",
            json!({"destination": {"maxHandshakes": 100}}),
            "--max-client-handshakes (128) must not be more than --max-handshakes (100)",
        ),
        // Not a number: sprig's `int` makes it 0, which the server refuses.
        (
            "weft-destination",
            json!({"destination": {"maxClientHandshakes": "lots"}}),
            "--max-client-handshakes must be at least 1",
        ),
        (
            "weft-destination",
            json!({"destination": {"maxConnections": -1}}),
            "invalid value '-1' for '--max-connections <MAX_CONNECTIONS>'",
        ),
        (
            "weft-destination",
            json!({"destination": {"maxConnectionIdle": "0s"}}),
            "--max-connection-idle must be more than 0",
        ),
        (
            "weft-destination",
            json!({"destination": {"maxConnectionIdle": "soon"}}),
            "invalid value 'soon' for '--max-connection-idle <MAX_CONNECTION_IDLE>'",
        ),
    ];
    for (deployment, extra, message) in cases {
        let values = with(required_values(&pki), extra.clone());
        let rendered = chart().render(&release(), &values);
        let objects = Objects::new(&rendered.unwrap_or_else(|e| panic!("{extra}: {e}")));
        let (ok, err) = start_from(&objects, deployment);
        assert!(!ok, "{deployment} started with {extra}");
        assert!(err.contains(message), "{extra}: {message:?} not in {err:?}");
    }
}
