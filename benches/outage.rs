//! `--rate auto` after an outage: against a server that lets 40 requests a
//! second through (a sliding window), a 3-second outage (every call 503,
//! `Retry-After: 0`) 20 s into the run; the requests answered per second in
//! the 20 s that start 12 s after the outage ends (issue 21's goal: at least
//! 34 of the 40).
//!
//! `cargo bench --bench outage` (builds the release binary first; about
//! 60 s). Loopback only: the sandbox runs in-process on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark may panic

use std::time::{Duration, Instant};

use thulium_import::sandbox::{FaultKind, Sandbox, SandboxConfig};

#[tokio::main]
async fn main() {
    let status = std::process::Command::new("cargo")
        .args(["build", "--release", "--locked", "-q"])
        .status()
        .unwrap();
    assert!(status.success());
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("rows.csv");
    let mut text = String::from("Nazwisko\n");
    for i in 0..5000 {
        text.push_str(&format!("Nazwisko{i}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let mapping = dir.path().join("m.toml");
    std::fs::write(&mapping, "[customer]\nsurname = \"Nazwisko\"\n").unwrap();
    let sandbox = Sandbox::start(SandboxConfig {
        password: "bench".into(),
        rate_limit: Some(40),
        faults: vec![FaultKind::Unavailable],
        retry_after_secs: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let mut child = std::process::Command::new("target/release/thulium-import")
        .arg("run")
        .arg(&csv)
        .arg("--mapping")
        .arg(&mapping)
        .arg("--ledger")
        .arg(dir.path().join("l.jsonl"))
        .args([
            "--url",
            &sandbox.url(),
            "--user",
            "api_user",
            "--no-progress",
        ])
        .args(["--rate", "auto", "--batch-size", "1", "--no-preflight"])
        .args(["--max-consecutive-failures", "0", "--max-attempts", "30"])
        .env("THULIUM_PASSWORD", "bench")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let at = |s: u64| start + Duration::from_secs(s);
    let answered = |s: &Sandbox| {
        let st = s.stats();
        let ok: u64 = st
            .responses
            .iter()
            .filter(|(k, _)| k.starts_with('2'))
            .map(|(_, v)| *v)
            .sum();
        (st.requests_total, ok)
    };
    tokio::time::sleep_until(at(15).into()).await;
    let before = answered(&sandbox);
    tokio::time::sleep_until(at(20).into()).await;
    let (r0, ok0) = answered(&sandbox);
    sandbox.set_fault_rate(1.0);
    tokio::time::sleep_until(at(23).into()).await;
    sandbox.set_fault_rate(0.0);
    tokio::time::sleep_until(at(35).into()).await;
    let (r1, ok1) = answered(&sandbox);
    tokio::time::sleep_until(at(55).into()).await;
    let (r2, ok2) = answered(&sandbox);
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "before the outage (15-20 s): {:.1} answered 2xx/s, {:.1} requests/s",
        (ok0 - before.1) as f64 / 5.0,
        (r0 - before.0) as f64 / 5.0
    );
    println!(
        "12 s after the outage, over 20 s (35-55 s): {:.1} answered 2xx/s, {:.1} requests/s (goal >= 34 of the 40 allowed)",
        (ok2 - ok1) as f64 / 20.0,
        (r2 - r1) as f64 / 20.0
    );
}
