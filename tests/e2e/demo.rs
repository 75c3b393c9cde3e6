//! `weft demo`, the newcomer's first command: it must run to the end on a bare machine and
//! show what it promises.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::Duration,
};

#[test]
fn the_demo_runs_a_whole_mesh_and_shows_what_it_promises() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["demo", "--seconds", "1", "--requests", "300", "--connections", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weft demo");
    let Some(status) = crate::support::wait_exit(&mut child, Duration::from_secs(240)) else {
        let _ = child.kill();
        panic!("weft demo did not finish within 240 s");
    };
    let (mut out, mut err) = (String::new(), String::new());
    child.stdout.take().expect("stdout").read_to_string(&mut out).expect("stdout");
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("stderr");
    assert!(status.success(), "{status}\n{out}\n{err}");
    let frontend = "frontend.shop.serviceaccount.identity.weft.cluster.local";
    for want in [
        // Detection and the server-speaks-first banner.
        "a server-speaks-first backend's banner reached a silent client",
        // HTTP through the pair, as the proxies' metrics tell it.
        "web client   outbound",
        // Discovery and balancing.
        "with retries",
        // A canary release through a traffic split.
        "canary release: `api-split` (10.96.0.22:80) split 90/10",
        // mTLS with identities on both sides, and the app told who called.
        &format!("client_id={frontend}"),
        &format!("l5d-client-id: {frontend}"),
        // The inbound policy refusing an unmeshed client.
        "an unmeshed plaintext client got 403 (1 in inbound_http_authz_deny_total)",
        // An AuthorizationPolicy added at run time shuts out another meshed identity.
        "intruder.shop (meshed) got 200 before it and 403 after; frontend got 200 (1 allowed",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");

    // The balancing table: what each endpoint received and what the client saw, without
    // and with retries. The demo's claims, checked on its own numbers: peak-EWMA keeps
    // traffic off the slow endpoint, and retries hide the flaky one (which, without them,
    // the client sees).
    let header = out.lines().find(|l| l.contains("success at client")).expect("the table");
    let columns: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(columns, ["fast", "slow", "flaky", "success", "at", "client"], "{out}");
    let row = |label: &str| -> [f64; 4] {
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} row in:\n{out}"));
        let cells: Vec<f64> = line
            .split_whitespace()
            .map(|c| c.strip_suffix('%').and_then(|c| c.parse().ok()))
            .collect::<Option<_>>()
            .unwrap_or_else(|| panic!("{label:?} row is not four percentages: {line:?}"));
        cells.try_into().unwrap_or_else(|_| panic!("{label:?} row: {line:?}"))
    };
    let (without, with) = (row("no retries "), row("with retries "));
    for (label, [fast, slow, flaky, _]) in [("no retries", without), ("with retries", with)] {
        assert!(
            slow < fast,
            "{label}: the slow endpoint's share {slow} % is not below the fast one's {fast} %\n{out}"
        );
        assert!((fast + slow + flaky - 100.0).abs() < 0.5, "{label}: shares do not add up\n{out}");
    }
    assert_eq!(with[3], 100.0, "with retries, a request failed at the client\n{out}");
    assert!(without[3] < 100.0, "without retries the flaky endpoint's 503s never showed\n{out}");
}
