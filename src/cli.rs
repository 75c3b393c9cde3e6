//! What every long-running `weft` server shares.

/// Completes on SIGTERM (Kubernetes stopping the pod) or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Tests of the connection caps' flags that `weft identity` and `weft destination` share
/// (their listener is `weft_identity::incoming`): env vars, defaults, and the caps that
/// cannot be meant.
#[cfg(test)]
pub mod connection_flags {
    use clap::{Args, CommandFactory as _, Parser};
    use weft_identity::incoming;

    #[derive(Parser)]
    struct Cmd<A: Args> {
        #[command(flatten)]
        args: A,
    }

    pub fn parse<A: Args>(flags: &[&str]) -> A {
        Cmd::<A>::try_parse_from([&["weft"], flags].concat()).expect("flags").args
    }

    /// Each cap's env var is `{prefix}_MAX_...` and its default the listener's constant.
    pub fn check_env_and_defaults<A: Args>(prefix: &str) {
        let cmd = Cmd::<A>::command();
        for (id, default) in [
            ("max_connections", incoming::MAX_CONNECTIONS),
            ("max_client_connections", incoming::MAX_CLIENT_CONNECTIONS),
            ("max_handshakes", incoming::MAX_HANDSHAKES),
            ("max_client_handshakes", incoming::MAX_CLIENT_HANDSHAKES),
        ] {
            let arg = cmd.get_arguments().find(|a| a.get_id() == id).expect(id);
            let env = format!("{prefix}_{}", id.to_ascii_uppercase());
            assert_eq!(arg.get_env().and_then(|e| e.to_str()), Some(env.as_str()), "{id}");
            assert_eq!(arg.get_default_values(), [default.to_string()], "{id}");
        }
        assert_eq!(
            [incoming::MAX_CONNECTIONS, incoming::MAX_CLIENT_CONNECTIONS],
            [8192, 512],
            "the documented defaults"
        );
        assert_eq!([incoming::MAX_HANDSHAKES, incoming::MAX_CLIENT_HANDSHAKES], [512, 128]);
    }

    /// Caps that cannot be meant stop `run` before it starts anything (logging, a runtime,
    /// a listener), with an error naming the flag; equal caps are fine.
    pub fn check_refusals<A: Args>(run: impl Fn(A) -> anyhow::Result<()>) {
        for (flags, error) in [
            (["--max-connections", "0"], "--max-connections must be at least 1"),
            (["--max-client-connections", "0"], "--max-client-connections must be at least 1"),
            (["--max-handshakes", "0"], "--max-handshakes must be at least 1"),
            (["--max-client-handshakes", "0"], "--max-client-handshakes must be at least 1"),
            (
                ["--max-client-connections", "9000"],
                "--max-client-connections (9000) must not be more than --max-connections (8192)",
            ),
            (
                ["--max-handshakes", "100"],
                "--max-client-handshakes (128) must not be more than --max-handshakes (100)",
            ),
        ] {
            let e = run(parse(&flags)).expect_err("refused").to_string();
            assert!(e.starts_with(error), "{flags:?}: {e}");
        }
    }
}
