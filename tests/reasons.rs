//! Problems grouped by reason: 100 rows failing for three reasons read as
//! three lines in `report`, `check` and at the end of `run`, most rows
//! first, each with its first rows; `--all` lists the rows one by one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use thulium_import::sandbox::{Sandbox, SandboxConfig};

const PASSWORD: &str = "reasons-secret";

fn bin() -> std::process::Command {
    common::bin(PASSWORD)
}

/// 100 rows: every tenth has letters in its phone (invalid); rows ending
/// in 1, 2 or 3 give campaign 00001 an agent who is not in it, rows ending
/// in 4 a status it does not have (both refused by the server when
/// preflight is off); the rest go through.
fn export(dir: &Path) -> std::path::PathBuf {
    let mut text = String::from("Nazwisko;Nr;Telefon;Opiekun;Status\n");
    for i in 1..=100u32 {
        let phone = if i % 10 == 0 {
            format!("60{i}x")
        } else {
            format!("600{i:06}")
        };
        let agent = if (1..=3).contains(&(i % 10)) {
            "a.nowak"
        } else {
            "j.doe"
        };
        let status = if i % 10 == 4 { 99 } else { 1 };
        text.push_str(&format!("Klient {i};K-{i:03};{phone};{agent};{status}\n"));
    }
    let csv = dir.join("rows.csv");
    std::fs::write(&csv, text).unwrap();
    csv
}

fn mapping(dir: &Path) -> std::path::PathBuf {
    let m = dir.join("m.toml");
    std::fs::write(
        &m,
        "[customer]\nsurname = \"Nazwisko\"\nidentifier = \"Nr\"\n\
         phone_number = { column = \"Telefon\", transform = [\"phone\"] }\n\
         [campaign]\nid = { value = \"00001\" }\nstatus_id = \"Status\"\nagent_login = \"Opiekun\"\n",
    )
    .unwrap();
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn three_reasons_read_as_three_lines() {
    let dir = tempfile::tempdir().unwrap().keep();
    let csv = export(&dir);
    let m = mapping(&dir);
    let sandbox = Sandbox::start(SandboxConfig {
        password: PASSWORD.into(),
        campaign_agents: BTreeMap::from([("00001".to_string(), vec!["j.doe".to_string()])]),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let ledger = dir.join("l.jsonl");
    let mut run = common::run_command(
        &sandbox,
        csv.to_str().unwrap(),
        m.to_str().unwrap(),
        &ledger,
        PASSWORD,
    );
    run.args(["--no-preflight", "--max-consecutive-failures", "0"]);
    let out = common::output(run).await;
    let stdout = out.stdout;
    assert_eq!(out.code, Some(1), "{stdout}");
    // The end of the run: the reasons, most rows first.
    assert!(
        stdout.contains("problems by reason, most rows first:"),
        "{stdout}"
    );

    let report = common::report(&ledger);
    let reasons = report["reasons"].as_array().unwrap();
    let summary: Vec<(String, String, u64)> = reasons
        .iter()
        .map(|r| {
            (
                r["stage"].as_str().unwrap().to_string(),
                r["status"].as_str().unwrap().to_string(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("campaign".to_string(), "failed".to_string(), 30),
            ("campaign".to_string(), "failed".to_string(), 10),
            ("mapping".to_string(), "invalid".to_string(), 10),
        ],
        "{report:#}"
    );
    // The first ten rows of each, in row order.
    let rows = |i: usize| -> Vec<u64> {
        reasons[i]["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_u64().unwrap())
            .collect()
    };
    assert_eq!(rows(0), [1, 2, 3, 11, 12, 13, 21, 22, 23, 31]);
    assert_eq!(rows(1), [4, 14, 24, 34, 44, 54, 64, 74, 84, 94]);
    assert_eq!(rows(2), [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
    // Per-row values are out of the reason: no phone, no agent login.
    let phone = reasons[2]["reason"].as_str().unwrap();
    assert_eq!(phone, "column \"Telefon\": letters in a phone number");
    for r in reasons {
        let reason = r["reason"].as_str().unwrap();
        assert!(!reason.contains("line "), "{reason}");
    }

    // `report` in text: the reasons, and no per-row list without --all.
    let out = bin().arg("report").arg(&ledger).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("  ")).collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("  30 rows — campaign: "), "{text}");
    assert!(lines[0].ends_with(" — e.g. lines 2, 3, 4"), "{text}");
    assert_eq!(
        lines[2],
        "  10 rows — mapping: column \"Telefon\": letters in a phone number — e.g. lines 11, 21, 31"
    );
    assert!(!text.contains("row 10 (line 11)"), "{text}");
    let out = bin()
        .arg("report")
        .arg(&ledger)
        .arg("--all")
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&out.stdout).to_string();
    let listed = all.lines().filter(|l| l.starts_with("row ")).count();
    assert_eq!(listed, 50, "{all}");

    // `check` groups the same way, `--json` included.
    let out = bin()
        .arg("check")
        .arg(&csv)
        .arg("--mapping")
        .arg(&m)
        .arg("--json")
        .output()
        .unwrap();
    let check: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(check["reasons"].as_array().unwrap().len(), 1, "{check}");
    assert_eq!(check["reasons"][0]["count"], 10);
    assert_eq!(check["reasons"][0]["reason"], phone);
    // Online, the rows preflight finds join in, by stage.
    let out = bin()
        .arg("check")
        .arg(&csv)
        .arg("--mapping")
        .arg(&m)
        .args([
            "--online",
            "--url",
            &sandbox.url(),
            "--user",
            "api_user",
            "--json",
        ])
        .output()
        .unwrap();
    let check: Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts: Vec<(String, u64)> = check["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["stage"].as_str().unwrap().to_string(),
                r["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("campaign".to_string(), 30),
            ("campaign".to_string(), 10),
            ("mapping".to_string(), 10)
        ],
        "{check:#}"
    );
    let agent = check["reasons"][0]["reason"].as_str().unwrap();
    assert_eq!(
        agent,
        "agent a.nowak is not an agent of campaign 00001; it has j.doe"
    );
}

/// After 10 % faults of every kind, the morning report reads as a handful
/// of reasons: the server's request ids and other per-call ids are taken
/// out, and a call not sent because the run stopped is one reason.
#[tokio::test(flavor = "multi_thread")]
async fn faults_of_five_kinds_read_as_a_handful_of_reasons() {
    let dir = tempfile::tempdir().unwrap().keep();
    let sandbox = Sandbox::start(SandboxConfig {
        password: PASSWORD.into(),
        fault_rate: 0.1,
        seed: 11,
        retry_after_secs: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let ledger = dir.join("faults.jsonl");
    let mut cmd = bin();
    cmd.args([
        "run",
        "samples/crm_export.csv",
        "--mapping",
        "mappings/crm_export.toml",
    ])
    .arg("--ledger")
    .arg(&ledger)
    .args([
        "--url",
        &sandbox.url(),
        "--user",
        "api_user",
        "--no-progress",
    ])
    .args([
        "--rate",
        "5000",
        "--batch-size",
        "10",
        "--max-attempts",
        "2",
    ])
    .args(["--max-consecutive-failures", "0"]);
    let out = common::output(cmd).await;
    assert_ne!(out.code, Some(2), "{}", out.text());
    assert!(sandbox.stats().faults_total > 20, "{:?}", sandbox.stats());
    let report = common::report(&ledger);
    let reasons = report["reasons"].as_array().unwrap();
    let texts: Vec<String> = reasons
        .iter()
        .map(|r| format!("{} {}: {}", r["stage"], r["status"], r["reason"]))
        .collect();
    // The sample's eight bad rows are eight reasons of their own (at
    // `mapping`); the faults add one per stage, outcome and kind of fault,
    // not one per call (34 reasons before request ids were taken out, for
    // some 40 faults here).
    let of_faults = reasons.iter().filter(|r| r["stage"] != "mapping").count();
    assert!(
        of_faults <= 15 && (of_faults as u64) < sandbox.stats().faults_total / 2,
        "{of_faults} reasons from faults:\n{}",
        texts.join("\n")
    );
    assert!(
        texts.iter().all(|t| !t.contains("request_id")),
        "{}",
        texts.join("\n")
    );
}
