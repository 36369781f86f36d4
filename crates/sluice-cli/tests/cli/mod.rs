//! Running the `sluice` binary in tests.

#![allow(dead_code)] // each test binary uses a different part

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

/// Runs `sluice args...` against `broker` (`SLUICE_BROKERS`), with `stdin` piped in.
pub fn sluice(broker: &str, args: &[&str], stdin: &str) -> Output {
    sluice_env(args, &[("SLUICE_BROKERS", broker)], stdin)
}

/// Runs `sluice args...` with these environment variables and none of the caller's other
/// `SLUICE_*` ones (nor its `RUST_LOG`), with `stdin` piped in.
pub fn sluice_env(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    for (var, _) in std::env::vars().filter(|(var, _)| var.starts_with("SLUICE_") || var == "RUST_LOG") {
        command.env_remove(var);
    }
    let mut child = command
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// The stdout of a command that must have succeeded (else its stderr in the panic).
pub fn ok(output: &Output) -> String {
    assert!(output.status.success(), "failed: {}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The lines of `text`.
pub fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}
