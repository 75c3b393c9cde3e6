//! A `weft` server under test (identity, injector, destination) that logs JSON to stderr: its
//! log is read on a thread of its own, line by line, for the bench to pick out what it waits
//! for (the `"serving"` line and its addresses); the process is killed when dropped.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
};

use anyhow::Context as _;
use serde_json::Value;

#[derive(Debug)]
pub struct Served {
    child: Child,
}

impl Served {
    /// Starts `cmd` with no stdin or stdout and hands each line it logs, with the line parsed
    /// as JSON (`None` if it is not), to `on_line`, until the log ends. `what` says what
    /// failed to start.
    pub fn spawn(
        cmd: &mut Command,
        what: &'static str,
        mut on_line: impl FnMut(String, Option<Value>) + Send + 'static,
    ) -> anyhow::Result<Served> {
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut served = Served { child: cmd.spawn().context(what)? };
        let stderr = served.child.stderr.take().context("stderr")?;
        // Reading to the end also keeps a server that logs per request from ever blocking.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let json = serde_json::from_str::<Value>(&line).ok();
                on_line(line, json);
            }
        });
        Ok(served)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
