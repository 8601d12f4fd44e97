//! Nothing created twice, nothing lost: the runs that once broke the
//! promise, each tried as a new user would, end to end against the sandbox
//! with its fault injection.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;
use common::{doubled_customers, doubled_items, make_export, report, utf8_mapping};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use thulium_import::sandbox::{Sandbox, SandboxConfig};

const PASSWORD: &str = "dup-secret";

fn config(fault_rate: f64, seed: u64) -> SandboxConfig {
    SandboxConfig {
        password: PASSWORD.into(),
        retry_after_secs: 0,
        fault_rate,
        seed,
        ..SandboxConfig::default()
    }
}

fn bin() -> std::process::Command {
    common::bin(PASSWORD)
}

fn connect(cmd: &mut std::process::Command, sandbox: &Sandbox) {
    cmd.args([
        "--url",
        &sandbox.url(),
        "--user",
        "api_user",
        "--no-progress",
    ])
    .args(["--rate", "5000"])
    .args(["--max-consecutive-failures", "0", "--max-attempts", "8"]);
}

use common::output;

fn run(sandbox: &Sandbox, csv: &Path, mapping: &Path, ledger: &Path) -> std::process::Command {
    let mut cmd = bin();
    cmd.arg("run")
        .arg(csv)
        .arg("--mapping")
        .arg(mapping)
        .arg("--ledger")
        .arg(ledger);
    connect(&mut cmd, sandbox);
    cmd
}

fn retry(sandbox: &Sandbox, ledger: &Path) -> std::process::Command {
    let mut cmd = bin();
    cmd.arg("retry").arg(ledger);
    connect(&mut cmd, sandbox);
    cmd
}

fn tempdir() -> PathBuf {
    tempfile::tempdir().unwrap().keep()
}

fn lines(ledger: &Path) -> Vec<Value> {
    std::fs::read_to_string(ledger)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_customers_without_an_identifier_are_left_not_duplicated() {
    // 2,000 rows, a quarter without an identifier, 30 % faults of every
    // kind, `run` then `retry`: a row without an identifier whose creation
    // is unknown has nothing to look up, so it is left and listed.
    let dir = tempdir();
    let csv = dir.join("export.csv");
    let rows = make_export(&csv, 7, Some(4));
    assert!(rows >= 2000, "{rows}");
    let mapping = utf8_mapping(&dir);
    let ledger = dir.join("l.jsonl");
    let sandbox = Sandbox::start(config(0.3, 101)).await.unwrap();
    let mut first = run(&sandbox, &csv, &mapping, &ledger);
    first.args(["--batch-size", "25", "--concurrency", "8"]);
    let first = output(first).await;
    assert!(matches!(first.code, Some(1)), "{}", first.text());
    // A retry under the same faults, then one without.
    let second = output(retry(&sandbox, &ledger)).await;
    assert!(matches!(second.code, Some(1)), "{}", second.text());
    assert_eq!(doubled_customers(&sandbox), Vec::<String>::new());
    assert_eq!(doubled_items(&sandbox), Vec::<String>::new());
    sandbox.set_fault_rate(0.0);
    let second = output(retry(&sandbox, &ledger)).await;
    assert!(matches!(second.code, Some(1)), "{}", second.text());
    assert_eq!(doubled_customers(&sandbox), Vec::<String>::new());
    assert_eq!(doubled_items(&sandbox), Vec::<String>::new());
    // What is left unknown at the customer stage is only rows without an
    // identifier, and retry said why.
    let r = report(&ledger);
    let events = lines(&ledger);
    let mut last_customer = std::collections::HashMap::new();
    for e in events
        .iter()
        .filter(|e| e["kind"] == "row" && e["stage"] == "customer")
    {
        last_customer.insert(e["row"].as_u64().unwrap(), e);
    }
    let unknown: Vec<u64> = last_customer
        .iter()
        .filter(|(_, e)| e["status"] == "unknown")
        .map(|(r, _)| *r)
        .collect();
    assert!(
        !unknown.is_empty(),
        "faults left some customers unknown: {r}"
    );
    for row in &unknown {
        assert_eq!(row % 4, 0, "row {row} has an identifier: it was looked up");
    }
    assert!(
        second.text().contains("no identifier to look it up by"),
        "{}",
        second.text()
    );
    assert!(
        second.text().contains("--include-unknown"),
        "{}",
        second.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_failed_rows_csv_round_trip_creates_nothing_twice() {
    // 2,000 rows, 20 % faults, `run`, `report --failed-csv`, then `run
    // failed.csv` with the same mapping, as the README says.
    let dir = tempdir();
    let csv = dir.join("export.csv");
    make_export(&csv, 7, Some(10));
    let mapping = utf8_mapping(&dir);
    let ledger = dir.join("l.jsonl");
    let sandbox = Sandbox::start(config(0.2, 202)).await.unwrap();
    let mut first = run(&sandbox, &csv, &mapping, &ledger);
    first.args(["--batch-size", "25", "--concurrency", "8"]);
    let first = output(first).await;
    assert_eq!(first.code, Some(1), "{}", first.text());
    let failed = dir.join("failed.csv");
    let mut cmd = bin();
    cmd.arg("report")
        .arg(&ledger)
        .arg("--failed-csv")
        .arg(&failed);
    let out = output(cmd).await;
    assert_eq!(out.code, Some(1), "{}", out.text());
    let text = std::fs::read_to_string(&failed).unwrap();
    assert!(text.lines().next().unwrap().ends_with("_done;_unknown"));
    assert!(text.contains("field_group:2"), "per-group names in _done");
    let before_customers = sandbox.state_json()["customers"].as_object().unwrap().len();
    let again = output(run(&sandbox, &failed, &mapping, &dir.join("l2.jsonl"))).await;
    assert!(matches!(again.code, Some(1)), "{}", again.text());
    assert_eq!(doubled_customers(&sandbox), Vec::<String>::new());
    assert_eq!(doubled_items(&sandbox), Vec::<String>::new());
    let after_customers = sandbox.state_json()["customers"].as_object().unwrap().len();
    assert!(after_customers >= before_customers);
    // Unknown customers with an identifier were looked up, not recreated.
    let second = lines(&dir.join("l2.jsonl"));
    assert!(
        second.iter().any(|e| e["reconciled"] == true),
        "some unknown customer or item was found and adopted"
    );
    if second.iter().any(|e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("left out"))
    }) {
        assert!(
            again.text().contains("--include-unknown"),
            "{}",
            again.text()
        );
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_overlapping_a_run_is_refused_at_once_and_sends_nothing() {
    // The cron overlap: `retry` started while the `run` on the same ledger
    // is still going.
    let dir = tempdir();
    let csv = dir.join("export.csv");
    let rows = make_export(&csv, 2, None);
    assert!(rows >= 400);
    let mapping = utf8_mapping(&dir);
    let ledger = dir.join("l.jsonl");
    let sandbox = Sandbox::start(SandboxConfig {
        latency: Duration::from_millis(30),
        ..config(0.0, 0)
    })
    .await
    .unwrap();
    let mut first = run(&sandbox, &csv, &mapping, &ledger);
    first.args(["--concurrency", "2", "--batch-size", "25"]);
    let child = first
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the run has its ledger.
    let started = Instant::now();
    while !ledger.exists() && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = sandbox.requests().len();
    let asked = Instant::now();
    let second = output(retry(&sandbox, &ledger)).await;
    assert_eq!(second.code, Some(2), "{}", second.text());
    assert!(asked.elapsed() < Duration::from_secs(5), "refused at once");
    assert!(
        second.text().contains("in use by process") && second.text().contains("since"),
        "{}",
        second.text()
    );
    // Nor may the failed-rows CSV be written from under it, nor the
    // ledger be set aside.
    let mut report_cmd = bin();
    report_cmd
        .arg("report")
        .arg(&ledger)
        .arg("--failed-csv")
        .arg(dir.join("f.csv"));
    assert_eq!(output(report_cmd).await.code, Some(2));
    let mut aside = run(&sandbox, &csv, &mapping, &ledger);
    aside.arg("--force-new-ledger");
    assert_eq!(output(aside).await.code, Some(2));
    // The retry sent nothing: every request since came from the run, which
    // only ever creates customers by POST.
    let journal = sandbox.requests();
    assert!(
        journal[before..].iter().all(|e| e.method != "GET"),
        "the retry looked nothing up"
    );
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(doubled_customers(&sandbox), Vec::<String>::new());
    let r = report(&ledger);
    assert_eq!(
        r["stages"]["customer"]["ok"].as_u64().unwrap() as usize,
        common::customers(&sandbox),
        "every customer once: {r}"
    );
    // Once the run is over, the retry goes ahead.
    let later = output(retry(&sandbox, &ledger)).await;
    assert_eq!(later.code, Some(1), "{}", later.text());
    assert!(
        !dir.join("l.jsonl.lock").exists(),
        "the lock's note is removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_items_are_found_among_the_customers_items_not_created_twice() {
    // Items whose creation had an unknown outcome (the sandbox applied them
    // and dropped the answer): `retry` adopts the ones that exist.
    let dir = tempdir();
    let mapping = dir.join("m.toml");
    std::fs::write(
        &mapping,
        "[source]\ndelimiter=\";\"\nencoding=\"windows-1250\"\n[customer]\nsurname=\"Nazwisko\"\nidentifier=\"ID klienta\"\n[[field_group]]\ngroup_id=2\n[field_group.values]\n12=\"Kanał pozyskania\"\n[[field_group]]\ngroup_id=3\n[field_group.values]\n20=\"ID klienta\"\n",
    )
    .unwrap();
    let ledger = dir.join("l.jsonl");
    let sandbox = Sandbox::start(SandboxConfig {
        faults: vec![
            thulium_import::sandbox::FaultKind::DropAfter,
            thulium_import::sandbox::FaultKind::ServerErrorAfter,
        ],
        ..config(0.25, 303)
    })
    .await
    .unwrap();
    let first = output(run(
        &sandbox,
        Path::new("samples/crm_export.csv"),
        &mapping,
        &ledger,
    ))
    .await;
    assert_eq!(first.code, Some(1), "{}", first.text());
    let before = report(&ledger);
    assert!(
        before["stages"]["field_group"]["unknown"].as_u64().unwrap() > 0,
        "{before}"
    );
    sandbox.set_fault_rate(0.0);
    let second = output(retry(&sandbox, &ledger)).await;
    assert_eq!(second.code, Some(1), "{}", second.text());
    let after = report(&ledger);
    assert_eq!(after["stages"]["field_group"]["unknown"], 0, "{after}");
    assert_eq!(after["stages"]["customer"]["unknown"], 0, "{after}");
    let ok = after["ok"].as_u64().unwrap();
    assert_eq!(ok + after["invalid"].as_u64().unwrap(), 300, "{after}");
    assert_eq!(doubled_customers(&sandbox), Vec::<String>::new());
    assert_eq!(doubled_items(&sandbox), Vec::<String>::new());
    let items = sandbox.state_json()["field_group_items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(items as u64, 2 * ok, "one item per group per customer");
    assert!(lines(&ledger)
        .iter()
        .any(|e| e["stage"] == "field_group" && e["reconciled"] == true));
    // The lookups asked for exactly one customer's items in one group.
    let gets: Vec<_> = sandbox
        .requests()
        .into_iter()
        .filter(|e| e.path == "/api/customer_field_group_items" && e.method == "GET")
        .collect();
    assert!(!gets.is_empty());
    assert!(gets[0]
        .query
        .as_deref()
        .unwrap()
        .contains("&limit=1000&offset=0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn max_failures_counts_rows_not_outcomes() {
    // Every row's two items are refused: with --max-failures 10, the run
    // stops after the 11th failed row, not the 6th.
    let dir = tempdir();
    let mapping = dir.join("m.toml");
    std::fs::write(
        &mapping,
        "[source]\ndelimiter=\";\"\nencoding=\"windows-1250\"\n[customer]\nsurname=\"Nazwisko\"\nidentifier=\"ID klienta\"\n[[field_group]]\ngroup_id=2\n[field_group.values]\n20=\"Segment\"\n[[field_group]]\ngroup_id=3\n[field_group.values]\n8=\"Segment\"\n",
    )
    .unwrap();
    let ledger = dir.join("l.jsonl");
    let sandbox = Sandbox::start(config(0.0, 0)).await.unwrap();
    let mut cmd = run(
        &sandbox,
        Path::new("samples/crm_export.csv"),
        &mapping,
        &ledger,
    );
    // The server's refusals are the point: no preflight to catch them first.
    cmd.arg("--no-preflight");
    cmd.args([
        "--max-failures",
        "10",
        "--concurrency",
        "1",
        "--batch-size",
        "5",
    ]);
    let out = output(cmd).await;
    assert_eq!(out.code, Some(3), "{}", out.text());
    let failed_rows: std::collections::HashSet<u64> = lines(&ledger)
        .iter()
        .filter(|e| e["stage"] == "field_group" && e["status"] == "failed")
        .map(|e| e["row"].as_u64().unwrap())
        .collect();
    assert!(
        (11..=13).contains(&failed_rows.len()),
        "stopped after {} failed rows",
        failed_rows.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_refuses_an_edited_copy_whose_rows_moved() {
    let dir = tempdir();
    let csv = dir.join("export.csv");
    std::fs::copy("samples/crm_export.csv", &csv).unwrap();
    let mapping = Path::new("mappings/crm_export.toml");
    let ledger = dir.join("l.jsonl");
    let sandbox = Sandbox::start(config(0.0, 0)).await.unwrap();
    assert_eq!(
        output(run(&sandbox, &csv, mapping, &ledger)).await.code,
        Some(1)
    );
    // Every row event carries a fingerprint, never the identifier.
    let events = lines(&ledger);
    let row1 = events.iter().find(|e| e["row"] == 1).unwrap();
    assert_eq!(row1["fp"].as_str().unwrap().len(), 8);
    assert!(!std::fs::read_to_string(&ledger)
        .unwrap()
        .contains("CRM-10001"));
    // A copy with its fifth data record deleted: rows after it moved up.
    let text = encoding_rs::WINDOWS_1250
        .decode(&std::fs::read(&csv).unwrap())
        .0
        .into_owned();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b';')
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let mut w = csv::WriterBuilder::new()
        .delimiter(b';')
        .flexible(true)
        .from_writer(Vec::new());
    w.write_record(&headers).unwrap();
    for (i, r) in reader.records().enumerate() {
        if i != 4 {
            w.write_record(&r.unwrap()).unwrap();
        }
    }
    let edited = dir.join("edited.csv");
    let out_text = String::from_utf8(w.into_inner().unwrap()).unwrap();
    std::fs::write(
        &edited,
        encoding_rs::WINDOWS_1250.encode(&out_text).0.as_ref(),
    )
    .unwrap();
    let before = sandbox.requests().len();
    let mut cmd = retry(&sandbox, &ledger);
    cmd.arg("--source").arg(&edited);
    let refused = output(cmd).await;
    assert_eq!(refused.code, Some(2), "{}", refused.text());
    assert!(
        refused.text().contains("row 5 (line") && refused.text().contains("moved"),
        "{}",
        refused.text()
    );
    assert_eq!(sandbox.requests().len(), before, "nothing sent");
}
