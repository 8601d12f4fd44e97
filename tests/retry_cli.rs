//! `retry` end to end: the real binary, killed or faulted against the
//! sandbox, then retried; the sandbox's state is compared with what the
//! sample should produce, exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;
use common::{customers, identifiers, report, spawn_quiet};

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use thulium_import::sandbox::{FaultKind, Sandbox, SandboxConfig};

const SAMPLE: &str = "samples/crm_export.csv";
const MAPPING: &str = "mappings/crm_export.toml";
const PASSWORD: &str = "retry-secret-77";

fn config() -> SandboxConfig {
    SandboxConfig {
        password: PASSWORD.into(),
        retry_after_secs: 0,
        ..SandboxConfig::default()
    }
}

fn bin() -> std::process::Command {
    common::bin(PASSWORD)
}

use common::output;

fn run_cmd(
    sandbox: &Sandbox,
    csv: &str,
    mapping: &str,
    ledger: &Path,
    extra: &[&str],
) -> std::process::Command {
    let mut cmd = common::run_command(sandbox, csv, mapping, ledger, PASSWORD);
    // Faults are the point here: the circuit breaker must not end the run.
    cmd.args(["--max-consecutive-failures", "0"]).args(extra);
    cmd
}

fn retry_cmd(sandbox: &Sandbox, ledger: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = bin();
    cmd.arg("retry")
        .arg(ledger)
        .args([
            "--url",
            &sandbox.url(),
            "--user",
            "api_user",
            "--no-progress",
            "--rate",
            "2000",
        ])
        .args(extra);
    cmd
}

fn tempdir() -> PathBuf {
    tempfile::tempdir().unwrap().keep()
}

#[tokio::test(flavor = "multi_thread")]
async fn after_apply_faults_are_reconciled_by_identifier_without_duplicates() {
    let sandbox = Sandbox::start(SandboxConfig {
        fault_rate: 0.3,
        faults: vec![FaultKind::DropAfter, FaultKind::ServerErrorAfter],
        seed: 3,
        ..config()
    })
    .await
    .unwrap();
    let ledger = tempdir().join("l.jsonl");
    // Only customer calls fault here: the other stages need no faults to
    // show the point, and their own retry rules are tested elsewhere.
    let first = output(run_cmd(
        &sandbox,
        SAMPLE,
        MAPPING,
        &ledger,
        &["--batch-size", "10", "--max-attempts", "2"],
    ))
    .await;
    assert_eq!(first.code, Some(1), "{}{}", first.stdout, first.stderr);
    let before = report(&ledger);
    assert!(
        before["stages"]["customer"]["unknown"].as_u64().unwrap() > 0,
        "{before}"
    );
    let created_before = customers(&sandbox);
    assert!(
        created_before > before["stages"]["customer"]["ok"].as_u64().unwrap() as usize,
        "some unknowns were really created"
    );

    sandbox.set_fault_rate(0.0);
    let second = output(retry_cmd(&sandbox, &ledger, &[])).await;
    assert_eq!(
        second.code,
        Some(1),
        "only the 8 invalid rows remain\n{}{}",
        second.stdout,
        second.stderr
    );
    assert!(
        second.stdout.contains("reconciled by identifier"),
        "{}",
        second.stdout
    );
    let after = report(&ledger);
    // Every customer is now known, created exactly once.
    assert_eq!(
        (
            after["stages"]["customer"]["ok"].as_u64(),
            after["stages"]["customer"]["unknown"].as_u64()
        ),
        (Some(292), Some(0)),
        "{after}"
    );
    let state = sandbox.state_json();
    let identifiers = identifiers(&sandbox);
    assert_eq!(
        (
            identifiers.len(),
            identifiers.iter().collect::<HashSet<_>>().len()
        ),
        (292, 292)
    );
    // Items whose creation was ambiguous were looked up among the
    // customer's items; only feed records, which the API cannot list, may
    // stay unknown, listed and not resent.
    assert_eq!(after["stages"]["field_group"]["unknown"], 0, "{after}");
    let left_unknown = after["stages"]["feed"]["unknown"].as_u64().unwrap();
    assert_eq!(after["unknown"].as_u64().unwrap(), left_unknown, "{after}");
    if left_unknown > 0 {
        assert!(
            second.stdout.contains("--include-unknown"),
            "{}",
            second.stdout
        );
    }
    let items: Vec<i64> = state["field_group_items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["customer_id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        items.iter().collect::<HashSet<_>>().len(),
        items.len(),
        "no item twice"
    );
    let feed: Vec<&str> = state["feed_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["payload"].as_str().unwrap())
        .collect();
    assert_eq!(
        feed.iter().collect::<HashSet<_>>().len(),
        feed.len(),
        "no feed record twice"
    );
    assert_eq!(
        after["ok"].as_u64().unwrap() + after["unknown"].as_u64().unwrap() + 8,
        300,
        "{after}"
    );
    // The ledger tells the whole story: an attempt event, reconciled rows.
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert!(text.contains("\"kind\":\"attempt\""));
    assert!(text.contains("\"reconciled\":true"));
    assert!(
        !text.contains(PASSWORD)
            && !second.stdout.contains(PASSWORD)
            && !second.stderr.contains(PASSWORD)
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_several_points_then_retry_completes_every_row_exactly_once() {
    // Customers (with identifiers), campaign records and record updates:
    // with identifiers every unknown customer can be looked up, and the
    // other two calls are idempotent, so nothing may be left unknown.
    let dir = tempdir();
    let mapping = idempotent_downstream_mapping(&dir);
    // The reference: the same import, uninterrupted.
    let reference = Sandbox::start(config()).await.unwrap();
    let clean = output(run_cmd(
        &reference,
        SAMPLE,
        mapping.to_str().unwrap(),
        &dir.join("clean.jsonl"),
        &[],
    ))
    .await;
    assert_eq!(clean.code, Some(1));
    let want = report(&dir.join("clean.jsonl"));
    let counts = |state: &Value| {
        let records: usize = ["00001", "00002"]
            .iter()
            .map(|c| {
                state["campaigns"][c]["by_customer"]
                    .as_object()
                    .unwrap()
                    .len()
            })
            .sum();
        (
            state["customers"].as_object().unwrap().len(),
            records,
            state["campaigns"]["00003"]["by_identifier"]
                .as_object()
                .unwrap()
                .len(),
        )
    };
    let want_counts = counts(&reference.state_json());
    for delay_ms in [0u64, 120, 300, 700, 1500] {
        let sandbox = Sandbox::start(SandboxConfig {
            latency: Duration::from_millis(40),
            ..config()
        })
        .await
        .unwrap();
        let ledger = dir.join(format!("kill-{delay_ms}.jsonl"));
        let mut child = spawn_quiet(run_cmd(
            &sandbox,
            SAMPLE,
            mapping.to_str().unwrap(),
            &ledger,
            &["--batch-size", "10", "--concurrency", "3"],
        ));
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        // Killed before it even wrote the ledger: nothing was sent, and the
        // way on is to run again.
        let second = if ledger.exists() {
            output(retry_cmd(&sandbox, &ledger, &[])).await
        } else {
            assert!(
                sandbox.requests().iter().all(|r| r.method == "GET"),
                "kill after {delay_ms} ms: nothing but preflight's reads"
            );
            output(run_cmd(
                &sandbox,
                SAMPLE,
                mapping.to_str().unwrap(),
                &ledger,
                &[],
            ))
            .await
        };
        assert_eq!(
            second.code,
            Some(1),
            "kill after {delay_ms} ms\n{}{}",
            second.stdout,
            second.stderr
        );
        let r = report(&ledger);
        assert_eq!(
            (&r["ok"], &r["invalid"], &r["unknown"], &r["not_sent"]),
            (
                &want["ok"],
                &want["invalid"],
                &Value::from(0),
                &Value::from(0)
            ),
            "kill after {delay_ms} ms: {r}"
        );
        let state = sandbox.state_json();
        let identifiers = identifiers(&sandbox);
        assert_eq!(
            identifiers.iter().collect::<HashSet<_>>().len(),
            identifiers.len(),
            "kill after {delay_ms} ms: a customer twice"
        );
        assert_eq!(counts(&state), want_counts, "kill after {delay_ms} ms");
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_without_identifiers_never_duplicates_and_lists_the_unknowns() {
    let dir = tempdir();
    let mapping = dir.join("m.toml");
    let text = std::fs::read_to_string(MAPPING)
        .unwrap()
        .replace("identifier = \"ID klienta\"", "");
    std::fs::write(&mapping, text).unwrap();
    let sandbox = Sandbox::start(SandboxConfig {
        latency: Duration::from_millis(40),
        ..config()
    })
    .await
    .unwrap();
    let ledger = dir.join("l.jsonl");
    let mut child = spawn_quiet(run_cmd(
        &sandbox,
        SAMPLE,
        mapping.to_str().unwrap(),
        &ledger,
        &["--batch-size", "10", "--concurrency", "3"],
    ));
    tokio::time::sleep(Duration::from_millis(700)).await;
    child.kill().unwrap();
    let _ = child.wait();
    let second = output(retry_cmd(&sandbox, &ledger, &[])).await;
    let r = report(&ledger);
    let unknown = r["unknown"].as_u64().unwrap();
    assert_eq!(r["not_sent"], 0, "{r}");
    assert_eq!(
        r["ok"].as_u64().unwrap() + unknown + 8,
        300,
        "nothing missing but the reported unknowns: {r}"
    );
    if unknown > 0 {
        assert!(
            second.stdout.contains("--include-unknown"),
            "the unknowns are listed with the way out: {}",
            second.stdout
        );
    }
    // No customer twice: created = ok customers + at most the unknown ones.
    let created = customers(&sandbox) as u64;
    let ok_customers = r["stages"]["customer"]["ok"].as_u64().unwrap();
    let unknown_customers = r["stages"]["customer"]["unknown"].as_u64().unwrap();
    assert!(
        created >= ok_customers && created <= ok_customers + unknown_customers,
        "{created} created, {r}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_refuses_a_changed_source_and_takes_an_edited_copy_with_source() {
    let dir = tempdir();
    let csv = dir.join("export.csv");
    std::fs::copy(SAMPLE, &csv).unwrap();
    let sandbox = Sandbox::start(config()).await.unwrap();
    let ledger = dir.join("l.jsonl");
    let first = output(run_cmd(
        &sandbox,
        csv.to_str().unwrap(),
        MAPPING,
        &ledger,
        &[],
    ))
    .await;
    assert_eq!(first.code, Some(1));

    // Retrying with nothing changed: the invalid rows are left, nothing sent
    // (preflight only reads).
    let writes = |s: &Sandbox| s.requests().iter().filter(|r| r.method != "GET").count();
    let requests = writes(&sandbox);
    let same = output(retry_cmd(&sandbox, &ledger, &[])).await;
    assert_eq!(same.code, Some(1));
    assert!(
        same.stdout
            .contains("left 8: invalid, and neither the mapping nor the source changed"),
        "{}",
        same.stdout
    );
    // The summary line's figure agrees with the rows it lists as left.
    assert!(
        same.stdout.contains(
            "retry: 8 row(s) looked at, 0 customer(s) reconciled by identifier, 0 row(s) sent (0 again, 0 not sent before), 0 left as duplicates, 8 invalid"
        ),
        "{}",
        same.stdout
    );
    assert_eq!(writes(&sandbox), requests, "nothing was sent");

    // Fix row 17's phone number in place: the source changed.
    let bytes = std::fs::read(&csv).unwrap();
    let fixed = String::from_utf8_lossy(&bytes).replace("601 234 56x", "601 234 567");
    let (fixed, _, _) = encoding_rs::WINDOWS_1250.encode(&fixed);
    // Re-encode only the changed cell: write the windows-1250 bytes back.
    let edited = dir.join("edited.csv");
    let original = encoding_rs::WINDOWS_1250
        .decode(&bytes)
        .0
        .replace("601 234 56x", "601 234 567");
    std::fs::write(
        &edited,
        encoding_rs::WINDOWS_1250.encode(&original).0.as_ref(),
    )
    .unwrap();
    std::fs::write(&csv, fixed.as_ref()).unwrap();
    let refused = output(retry_cmd(&sandbox, &ledger, &[])).await;
    assert_eq!(refused.code, Some(2));
    assert!(
        refused.stderr.contains("changed since the run") && refused.stderr.contains("--source"),
        "{}",
        refused.stderr
    );

    let ok = output(retry_cmd(
        &sandbox,
        &ledger,
        &["--source", edited.to_str().unwrap()],
    ))
    .await;
    assert_eq!(ok.code, Some(1), "{}{}", ok.stdout, ok.stderr);
    let r = report(&ledger);
    assert_eq!(
        (r["ok"].as_u64(), r["invalid"].as_u64()),
        (Some(293), Some(7)),
        "{r}"
    );
    assert_eq!(customers(&sandbox), 293, "the fixed row only, no duplicate");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_truncated_mid_line_is_read_and_the_partial_line_reported() {
    let sandbox = Sandbox::start(config()).await.unwrap();
    let dir = tempdir();
    let ledger = dir.join("l.jsonl");
    let first = output(run_cmd(&sandbox, SAMPLE, MAPPING, &ledger, &[])).await;
    assert_eq!(first.code, Some(1));
    // A crash during a write leaves half a line.
    let mut text = std::fs::read_to_string(&ledger).unwrap();
    text.push_str("{\"kind\":\"row\",\"row\":5,\"line\":6,\"off");
    std::fs::write(&ledger, text).unwrap();
    let out = bin().arg("report").arg(&ledger).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("292 done"), "{stdout}");
    assert!(stdout.contains("unreadable ledger line"), "{stdout}");
    let again = output(retry_cmd(&sandbox, &ledger, &[])).await;
    assert!(again.stderr.contains("unreadable line"), "{}", again.stderr);
    assert_eq!(customers(&sandbox), 292);

    // Not a ledger at all: exit 2 with a clear message.
    let bogus = dir.join("bogus.jsonl");
    std::fs::write(&bogus, "hello\n").unwrap();
    let out = output(retry_cmd(&sandbox, &bogus, &[])).await;
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("not a thulium-import ledger"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_rows_csv_round_trip_fixes_rows_without_duplicates() {
    let dir = tempdir();
    // Without `type = "integer"`, "dużo" reaches the API, which refuses the
    // item (400) after the customer was created: a row failed mid-way.
    let mapping = dir.join("m.toml");
    let text = std::fs::read_to_string(MAPPING).unwrap().replace(
        "8 = { column = \"Liczba zamówień\", type = \"integer\" }",
        "8 = \"Liczba zamówień\"",
    );
    std::fs::write(&mapping, text).unwrap();
    let mapping = mapping.to_str().unwrap();
    let sandbox = Sandbox::start(config()).await.unwrap();
    let ledger = dir.join("l.jsonl");
    let first = output(run_cmd(&sandbox, SAMPLE, mapping, &ledger, &[])).await;
    assert_eq!(first.code, Some(1));
    assert_eq!(customers(&sandbox), 293);

    let failed = dir.join("failed.csv");
    let out = bin()
        .arg("report")
        .arg(&ledger)
        .arg("--failed-csv")
        .arg(&failed)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&failed).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // A spreadsheet-style edit: read it (windows-1250, ';' like the source),
    // fix two cells, write it back the same way.
    let bytes = std::fs::read(&failed).unwrap();
    let text = encoding_rs::WINDOWS_1250.decode(&bytes).0.into_owned();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b';')
        .from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let mut rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    assert_eq!(
        rows.len(),
        8,
        "7 invalid rows and the one whose item was refused"
    );
    let row201 = rows.iter_mut().find(|r| r[col("_row")] == "201").unwrap();
    assert_eq!(
        (
            row201[col("_stage")].as_str(),
            row201[col("_status")].as_str()
        ),
        ("field_group", "failed")
    );
    assert!(
        row201[col("_error")].contains("Invalid value"),
        "{:?}",
        row201
    );
    assert!(!row201[col("_customer_id")].is_empty());
    assert!(row201[col("_done")].contains("customer"));
    row201[col("Liczba zamówień")] = "12".into();
    let customer_201: i64 = row201[col("_customer_id")].parse().unwrap();
    let row17 = rows.iter_mut().find(|r| r[col("_row")] == "17").unwrap();
    assert_eq!(
        (
            row17[col("_stage")].as_str(),
            row17[col("_status")].as_str()
        ),
        ("mapping", "invalid")
    );
    assert_eq!(row17[col("Telefon")], "601 234 56x");
    row17[col("Telefon")] = "601 234 567".into();
    let mut w = csv::WriterBuilder::new()
        .delimiter(b';')
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    w.write_record(&headers).unwrap();
    for r in &rows {
        w.write_record(r).unwrap();
    }
    let edited = String::from_utf8(w.into_inner().unwrap()).unwrap();
    let fixed = dir.join("fixed.csv");
    std::fs::write(&fixed, encoding_rs::WINDOWS_1250.encode(&edited).0.as_ref()).unwrap();

    // Re-import with the same mapping.
    let items_before = sandbox.state_json()["field_group_items"]
        .as_array()
        .unwrap()
        .len();
    let again = output(run_cmd(
        &sandbox,
        fixed.to_str().unwrap(),
        mapping,
        &dir.join("l2.jsonl"),
        &[],
    ))
    .await;
    assert_eq!(
        again.code,
        Some(1),
        "6 rows are still invalid\n{}{}",
        again.stdout,
        again.stderr
    );
    assert!(again.stdout.contains("2 done"), "{}", again.stdout);
    let state = sandbox.state_json();
    assert_eq!(
        state["customers"].as_object().unwrap().len(),
        294,
        "row 17's customer only: no duplicate"
    );
    let items = state["field_group_items"].as_array().unwrap();
    assert_eq!(items.len(), items_before + 2, "row 201's item and row 17's");
    assert_eq!(
        items
            .iter()
            .filter(|i| i["customer_id"] == customer_201)
            .count(),
        1
    );
}

/// `--failed-csv --utf8` of a windows-1250, `;` export: the file is UTF-8
/// with commas, which the export's mapping cannot read (exit 2); the copy
/// of the mapping written beside it can, and the fixed rows go in once.
#[tokio::test(flavor = "multi_thread")]
async fn a_utf8_failed_rows_csv_imports_with_the_mapping_copy_written_beside_it() {
    let dir = tempdir();
    let mapping = dir.join("m.toml");
    let text = std::fs::read_to_string(MAPPING).unwrap().replace(
        "8 = { column = \"Liczba zamówień\", type = \"integer\" }",
        "8 = \"Liczba zamówień\"",
    );
    std::fs::write(&mapping, text).unwrap();
    let mapping = mapping.to_str().unwrap();
    let sandbox = Sandbox::start(config()).await.unwrap();
    let ledger = dir.join("l.jsonl");
    let first = output(run_cmd(&sandbox, SAMPLE, mapping, &ledger, &[])).await;
    assert_eq!(first.code, Some(1));
    assert_eq!(customers(&sandbox), 293);

    let failed = dir.join("failed.csv");
    let out = common::output_of(
        bin()
            .arg("report")
            .arg(&ledger)
            .arg("--failed-csv")
            .arg(&failed)
            .arg("--utf8"),
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let copy = dir.join("failed.mapping.toml");
    assert!(
        out.stderr
            .contains(&format!("import it with {}", copy.display())),
        "{}",
        out.stderr
    );
    let copy_text = std::fs::read_to_string(&copy).unwrap();
    assert!(copy_text.contains("delimiter = \",\""), "{copy_text}");
    assert!(copy_text.contains("encoding = \"utf-8\""), "{copy_text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&copy).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Fixed as a person would in a spreadsheet saving UTF-8 CSV.
    let mut reader = csv::Reader::from_path(&failed).unwrap();
    let headers = reader.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let mut rows: Vec<Vec<String>> = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect();
    assert_eq!(rows.len(), 8, "{rows:?}");
    let row201 = rows.iter_mut().find(|r| r[col("_row")] == "201").unwrap();
    row201[col("Liczba zamówień")] = "12".into();
    let row17 = rows.iter_mut().find(|r| r[col("_row")] == "17").unwrap();
    row17[col("Telefon")] = "601 234 567".into();
    let fixed = dir.join("fixed.csv");
    let mut w = csv::Writer::from_path(&fixed).unwrap();
    w.write_record(&headers).unwrap();
    for r in &rows {
        w.write_record(r).unwrap();
    }
    w.flush().unwrap();
    let fixed = fixed.to_str().unwrap();

    // The export's own mapping reads it as one column: refused.
    let wrong = output(run_cmd(
        &sandbox,
        fixed,
        mapping,
        &dir.join("l1.jsonl"),
        &[],
    ))
    .await;
    assert_eq!(wrong.code, Some(2), "{}", wrong.stderr);
    let again = output(run_cmd(
        &sandbox,
        fixed,
        copy.to_str().unwrap(),
        &dir.join("l2.jsonl"),
        &[],
    ))
    .await;
    assert_eq!(
        again.code,
        Some(1),
        "6 rows are still invalid\n{}",
        again.stderr
    );
    assert!(again.stdout.contains("2 done"), "{}", again.stdout);
    assert_eq!(customers(&sandbox), 294, "row 17's customer only");
}

/// The sample mapping without the stages that are not idempotent after the
/// customer (items, feed records): a crash can then leave nothing unknown.
fn idempotent_downstream_mapping(dir: &Path) -> PathBuf {
    let mapping = dir.join("m.toml");
    let text = std::fs::read_to_string(MAPPING).unwrap();
    let cut = text.find("[[field_group]]").unwrap();
    let tail = &text[text.find("[campaign]").unwrap()..text.find("[feed]").unwrap()];
    std::fs::write(&mapping, format!("{}{}", &text[..cut], tail)).unwrap();
    mapping
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn nightly_job_completes_a_crashed_file_and_a_new_one_without_duplicates() {
    let dir = tempdir();
    let drop = dir.join("drop");
    std::fs::create_dir(&drop).unwrap();
    let mapping = idempotent_downstream_mapping(&dir);
    // Two nightly files with different customers.
    let a = drop.join("2026-11-21.csv");
    let b = drop.join("2026-11-22.csv");
    std::fs::copy(SAMPLE, &a).unwrap();
    let sample = std::fs::read(SAMPLE).unwrap();
    let text = encoding_rs::WINDOWS_1250
        .decode(&sample)
        .0
        .replace("CRM-1", "CRM-9");
    std::fs::write(&b, encoding_rs::WINDOWS_1250.encode(&text).0.as_ref()).unwrap();
    let sandbox = Sandbox::start(SandboxConfig {
        latency: Duration::from_millis(30),
        ..config()
    })
    .await
    .unwrap();

    // Night 1: the first file's import is killed half-way; the job dies.
    let mut child = spawn_quiet(run_cmd(
        &sandbox,
        a.to_str().unwrap(),
        mapping.to_str().unwrap(),
        &drop.join("2026-11-21.csv.ledger.jsonl"),
        &["--batch-size", "10", "--concurrency", "2"],
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill().unwrap();
    let _ = child.wait();
    let half = customers(&sandbox);
    assert!(half < 293, "killed half-way ({half})");

    // Night 2: the job as documented.
    let mut job = std::process::Command::new("bash");
    job.arg("contrib/nightly.sh")
        .arg(&drop)
        .arg(&mapping)
        .env(
            "THULIUM_IMPORT",
            assert_cmd::cargo::cargo_bin("thulium-import"),
        )
        .env("THULIUM_URL", sandbox.url())
        .env("THULIUM_USER", "api_user")
        .env("THULIUM_PASSWORD", PASSWORD)
        .env("NIGHTLY_SETTLE_SECONDS", "0")
        .env("NIGHTLY_ARGS", "--rate 2000");
    let out = output(job).await;
    assert_eq!(
        out.code,
        Some(1),
        "invalid rows remain in both files\n{}{}",
        out.stdout,
        out.stderr
    );
    let identifiers = identifiers(&sandbox);
    assert_eq!(identifiers.len(), 2 * 293, "both files complete");
    assert_eq!(
        identifiers.iter().collect::<HashSet<_>>().len(),
        identifiers.len(),
        "no duplicates"
    );
    for file in [&a, &b] {
        let report: Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{}.report.json", file.display())).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (
                report["ok"].as_u64(),
                report["invalid"].as_u64(),
                report["unknown"].as_u64()
            ),
            (Some(293), Some(7), Some(0)),
            "{}: {report}",
            file.display()
        );
    }
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_that_cannot_be_written_stops_the_run_before_sending_more() {
    // A file-size limit stands in for a full disk: past 12 KiB every ledger
    // write fails (EFBIG; SIGXFSZ is ignored so the write returns an error).
    // No undo file (which would meet the limit first): the ledger's case.
    let sandbox = Sandbox::start(config()).await.unwrap();
    let dir = tempdir();
    let ledger = dir.join("l.jsonl");
    let script = format!(
        "trap '' XFSZ; ulimit -f 12; exec '{}' run {SAMPLE} --mapping {MAPPING} --url {} --user api_user --no-progress --rate 2000 --batch-size 20 --no-undo --ledger '{}'",
        assert_cmd::cargo::cargo_bin("thulium-import").display(),
        sandbox.url(),
        ledger.display()
    );
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-c", &script]).env("THULIUM_PASSWORD", PASSWORD);
    let out = output(cmd).await;
    assert_eq!(out.code, Some(3), "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("ledger"), "{}", out.stderr);
    // Nothing was sent that the ledger does not know about: every customer
    // in the sandbox belongs to a row whose intent was recorded.
    let text = std::fs::read_to_string(&ledger).unwrap();
    let mut intended = HashSet::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if e["kind"] == "intent" && e["stage"] == "customer" {
            intended.extend(
                e["rows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_u64().unwrap()),
            );
        }
    }
    let created = customers(&sandbox);
    assert!(
        created <= intended.len(),
        "{created} customers created, {} rows intended",
        intended.len()
    );
    // It sent, then stopped: the customers' later stages (one item each)
    // were not all sent once the ledger could not record them. (Whether
    // every customer call went out before the first write failed depends
    // on timing: their intents are small and written first.)
    let items = sandbox.state_json()["field_group_items"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        created > 0 && items < created,
        "the run sent, then stopped early ({created} customers, {items} items): {}{}",
        out.stdout,
        out.stderr
    );
}
