//! Helpers shared by the end-to-end tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses a part

use std::path::Path;

use serde_json::Value;
use thulium_import::sandbox::Sandbox;

/// `thulium-import report <LEDGER> --json`, parsed.
pub fn report(ledger: &Path) -> Value {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("thulium-import"))
        .arg("report")
        .arg(ledger)
        .arg("--json")
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// How many customers the sandbox holds.
pub fn customers(sandbox: &Sandbox) -> usize {
    sandbox.state_json()["customers"].as_object().unwrap().len()
}

/// The identifiers of the customers the sandbox holds (one per customer).
pub fn identifiers(sandbox: &Sandbox) -> Vec<String> {
    sandbox.state_json()["customers"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["identifier"].as_str().unwrap().to_string())
        .collect()
}

/// Starts a command with its output discarded (to be killed mid-run).
pub fn spawn_quiet(mut cmd: std::process::Command) -> std::process::Child {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// `thulium-import run CSV --mapping TOML` against `sandbox`, quiet and fast
/// (`--no-progress --rate 2000`), with `password` in `THULIUM_PASSWORD` and
/// no `THULIUM_URL`/`THULIUM_USER` from the environment.
pub fn run_command(
    sandbox: &Sandbox,
    csv: &str,
    mapping: &str,
    ledger: &Path,
    password: &str,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("thulium-import"));
    cmd.args([
        "run",
        csv,
        "--mapping",
        mapping,
        "--url",
        &sandbox.url(),
        "--user",
        "api_user",
    ])
    .args(["--no-progress", "--rate", "2000", "--ledger"])
    .arg(ledger)
    .env("THULIUM_PASSWORD", password)
    .env_remove("THULIUM_URL")
    .env_remove("THULIUM_USER");
    cmd
}
