//! `thulium-import sync`: the nightly drop-folder job, end to end — the real
//! binary over a real folder against the in-process sandbox, night after
//! night, with what each night sent read from the sandbox's journal.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;
use common::sheets::{write_xlsx, Cell};
use common::{by_identifier, customers, Out};

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use thulium_import::sandbox::{JournalEntry, Sandbox, SandboxConfig};

const PASSWORD: &str = "sync-secret";

fn config() -> SandboxConfig {
    SandboxConfig {
        password: PASSWORD.into(),
        retry_after_secs: 0,
        ..SandboxConfig::default()
    }
}

fn tempdir() -> PathBuf {
    tempfile::tempdir().unwrap().keep()
}

/// A mapping that matches customers by identifier (what `--state` needs).
const MAPPING: &str = r#"[source]
delimiter = ","

[customer]
match = "identifier"
surname = { column = "Surname", required = true }
name = "Name"
identifier = "Id"
email = "Email"
"#;

/// The same mapping, edited: the segment column is sent as a custom field.
const MAPPING_WITH_SEGMENT: &str = r#"
[customer.custom_fields]
"Segment" = "Segment"
"#;

const HEADER: [&str; 5] = ["Id", "Surname", "Name", "Email", "Segment"];

/// Rows `(id, surname, segment)`; the name and e-mail follow from the id.
fn row(id: &str, surname: &str, segment: &str) -> [String; 5] {
    [
        id.into(),
        surname.into(),
        "Anna".into(),
        format!("{}@example.pl", id.to_lowercase()),
        segment.into(),
    ]
}

fn write_csv(path: &Path, rows: &[[String; 5]]) {
    let mut text = HEADER.join(",") + "\n";
    for r in rows {
        text += &(r.join(",") + "\n");
    }
    std::fs::write(path, text).unwrap();
}

fn write_sheet(path: &Path, rows: &[[String; 5]]) {
    let mut cells = vec![HEADER.iter().map(|h| Cell::Text((*h).into())).collect()];
    for r in rows {
        cells.push(
            r.iter()
                .map(|c| {
                    if c.is_empty() {
                        Cell::Empty
                    } else {
                        Cell::Text(c.clone())
                    }
                })
                .collect(),
        );
    }
    write_xlsx(path, "Export", &[], &cells);
}

/// `thulium-import sync DROP --mapping M` against `sandbox`, fast and quiet,
/// files taken at once (`--settle 0`) unless `extra` says otherwise.
fn sync_cmd(
    sandbox: &Sandbox,
    drop: &Path,
    mapping: &Path,
    extra: &[&str],
) -> std::process::Command {
    let mut cmd = common::bin(PASSWORD);
    cmd.arg("sync")
        .arg(drop)
        .arg("--mapping")
        .arg(mapping)
        .args(["--url", &sandbox.url(), "--user", "api_user"])
        .args(["--no-progress", "--rate", "5000"])
        .args(extra);
    if !extra.contains(&"--settle") {
        cmd.args(["--settle", "0"]);
    }
    cmd
}

async fn sync(sandbox: &Sandbox, drop: &Path, mapping: &Path, extra: &[&str]) -> Out {
    common::output(sync_cmd(sandbox, drop, mapping, extra)).await
}

/// The requests that change something (every method but GET).
fn writes(journal: &[JournalEntry]) -> Vec<&JournalEntry> {
    journal.iter().filter(|e| e.method != "GET").collect()
}

/// The identifiers of the customers a batch call carries.
fn identifiers_sent(e: &JournalEntry) -> Vec<String> {
    e.body["customers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["identifier"].as_str().unwrap().to_string())
        .collect()
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ledger_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The names in `dir` that start with `prefix`.
fn named(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nights_import_then_continue_then_a_mapping_edit_sends_only_what_it_changed() {
    let dir = tempdir();
    let drop = dir.join("drop");
    std::fs::create_dir(&drop).unwrap();
    let mapping = dir.join("crm.toml");
    std::fs::write(&mapping, MAPPING).unwrap();
    let state = dir.join("acme.sqlite");
    let state_arg = ["--state", state.to_str().unwrap()];
    let work = drop.join(".thulium-import");
    let sandbox = Sandbox::start(config()).await.unwrap();

    // Night 1: a CSV export, imported.
    let csv = drop.join("crm.csv");
    write_csv(
        &csv,
        &[
            row("C-1", "Kowalska", "VIP"),
            row("C-2", "Nowak", "Hurt"),
            row("C-3", "Wiśniewska", ""),
            row("C-4", "Zieliński", "Detal"),
            row("C-5", "Lewandowski", ""),
        ],
    );
    let out = sync(&sandbox, &drop, &mapping, &state_arg).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert_eq!(customers(&sandbox), 5);
    assert!(
        out.stdout
            .contains("crm.csv: imported — 5 row(s) ok, 0 not done — exit 0"),
        "{}",
        out.stdout
    );
    let report = read_json(&work.join("crm.csv.report.json"));
    assert_eq!(
        (report["rows"].as_u64(), report["ok"].as_u64()),
        (Some(5), Some(5)),
        "{report}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&work).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "the work folder is private");
    }

    // Night 2: the same CSV again, and a spreadsheet beside it. The CSV's
    // ledger is continued (nothing left to send: reads only); the
    // spreadsheet is imported.
    std::thread::sleep(Duration::from_millis(20)); // a later modification time
    let xlsx = drop.join("partners.xlsx");
    write_sheet(
        &xlsx,
        &[
            row("X-1", "Dąbrowski", ""),
            row("X-2", "Kamińska", "VIP"),
            row("X-3", "Wójcik", ""),
        ],
    );
    let before = sandbox.requests().len();
    let out = sync(&sandbox, &drop, &mapping, &state_arg).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let journal = sandbox.requests()[before..].to_vec();
    let sent = writes(&journal);
    assert!(
        sent.iter()
            .all(|e| e.method == "POST" && e.path == "/api/batch/customers"),
        "{sent:?}"
    );
    let created: Vec<String> = sent.iter().flat_map(|e| identifiers_sent(e)).collect();
    assert_eq!(
        created,
        ["X-1", "X-2", "X-3"],
        "only the spreadsheet's customers"
    );
    assert!(
        journal.len() > sent.len(),
        "the CSV's retry read the system"
    );
    assert_eq!(customers(&sandbox), 8);
    assert!(
        out.stdout.contains("crm.csv: continued — 5 row(s) ok"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("partners.xlsx: imported — 3 row(s) ok"),
        "{}",
        out.stdout
    );
    let ledger = ledger_lines(&work.join("crm.csv.ledger.jsonl"));
    let attempt = ledger.iter().position(|e| e["kind"] == "attempt").unwrap();
    assert!(
        ledger[attempt..].iter().all(|e| e["kind"] != "row"),
        "the continued ledger records nothing sent"
    );

    // Night 3: the mapping edited (the segment becomes a custom field), the
    // exports unchanged. Not refused: every row mapped again, and only the
    // customers whose payload changed (those with a segment) updated.
    std::fs::write(&mapping, format!("{MAPPING}{MAPPING_WITH_SEGMENT}")).unwrap();
    let before = sandbox.requests().len();
    let out = sync(&sandbox, &drop, &mapping, &state_arg).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let journal = sandbox.requests()[before..].to_vec();
    let sent = writes(&journal);
    assert!(
        sent.iter()
            .all(|e| e.method == "PUT" && e.path == "/api/batch/customers"),
        "updates only: {sent:?}"
    );
    let mut updated: Vec<String> = sent.iter().flat_map(|e| identifiers_sent(e)).collect();
    updated.sort();
    assert_eq!(updated, ["C-1", "C-2", "C-4", "X-2"]);
    assert_eq!(customers(&sandbox), 8);
    let held = by_identifier(&sandbox);
    assert_eq!(
        held["C-1"]["custom_fields"]["Segment"], "VIP",
        "{}",
        held["C-1"]
    );
    assert_eq!(
        held["X-2"]["custom_fields"]["Segment"], "VIP",
        "{}",
        held["X-2"]
    );
    assert!(out.stdout.contains("crm.csv: re-mapped"), "{}", out.stdout);
    // (Each kept aside with its undo file, `<ledger>.<time>.undo.jsonl`.)
    let ledgers = |prefix: &str| {
        let all = named(&work, prefix);
        let undo = all.iter().filter(|n| n.ends_with(".undo.jsonl")).count();
        (all.len() - undo, undo)
    };
    assert_eq!(
        ledgers("crm.csv.ledger.jsonl."),
        (1, 2),
        "last ledger kept aside, with its undo file"
    );
    assert_eq!(ledgers("partners.xlsx.ledger.jsonl.").0, 1);

    // Night 4: nothing changed: the new ledgers are continued, nothing sent.
    let before = sandbox.requests().len();
    let out = sync(&sandbox, &drop, &mapping, &state_arg).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(writes(&sandbox.requests()[before..]).is_empty());
    assert!(
        out.stdout.contains("partners.xlsx: continued"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_done_markers_only_marked_files_are_taken() {
    let dir = tempdir();
    let drop = dir.join("drop");
    std::fs::create_dir(&drop).unwrap();
    let mapping = dir.join("crm.toml");
    std::fs::write(&mapping, MAPPING).unwrap();
    write_csv(&drop.join("a.csv"), &[row("A-1", "Nowak", "")]);
    std::fs::write(drop.join("a.csv.done"), "").unwrap();
    write_csv(&drop.join("b.csv"), &[row("B-1", "Nowak", "")]);
    let sandbox = Sandbox::start(config()).await.unwrap();
    let out = sync(&sandbox, &drop, &mapping, &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(
        out.stdout
            .contains("b.csv: left (no b.csv.done marker yet)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("a.csv: imported"), "{}", out.stdout);
    assert_eq!(by_identifier(&sandbox).keys().collect::<Vec<_>>(), ["A-1"]);
    let work = drop.join(".thulium-import");
    assert!(!work.join("b.csv.ledger.jsonl").exists());

    // Its marker written, the next night takes it.
    std::fs::write(drop.join("b.csv.done"), "").unwrap();
    let out = sync(&sandbox, &drop, &mapping, &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(out.stdout.contains("b.csv: imported"), "{}", out.stdout);
    assert_eq!(customers(&sandbox), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_still_growing_is_left_and_the_others_are_taken() {
    let dir = tempdir();
    let drop = dir.join("drop");
    std::fs::create_dir(&drop).unwrap();
    let mapping = dir.join("crm.toml");
    std::fs::write(&mapping, MAPPING).unwrap();
    write_csv(&drop.join("steady.csv"), &[row("S-1", "Nowak", "")]);
    let growing = drop.join("growing.csv");
    write_csv(&growing, &[row("G-0", "Nowak", "")]);
    let writer = {
        let growing = growing.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            for i in 1..60 {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&growing)
                    .unwrap();
                writeln!(f, "G-{i},Nowak,Anna,g{i}@example.pl,").unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let sandbox = Sandbox::start(config()).await.unwrap();
    let out = sync(&sandbox, &drop, &mapping, &["--settle", "1"]).await;
    writer.join().unwrap();
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(
        out.stderr.contains("growing.csv: still being written"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout
            .contains("growing.csv: left (still being written"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("steady.csv: imported"),
        "{}",
        out.stdout
    );
    assert_eq!(by_identifier(&sandbox).keys().collect::<Vec<_>>(), ["S-1"]);
    assert!(!drop
        .join(".thulium-import/growing.csv.ledger.jsonl")
        .exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sync_on_the_same_folder_exits_2_naming_the_first() {
    let dir = tempdir();
    let drop = dir.join("drop");
    std::fs::create_dir(&drop).unwrap();
    let mapping = dir.join("crm.toml");
    std::fs::write(&mapping, MAPPING).unwrap();
    write_csv(&drop.join("a.csv"), &[row("A-1", "Nowak", "")]);
    let sandbox = Sandbox::start(config()).await.unwrap();
    // The first waits four seconds for the file to settle, holding the lock.
    let mut first = sync_cmd(&sandbox, &drop, &mapping, &["--settle", "4"]);
    first
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let first = first.spawn().unwrap();
    let holder = drop.join(".thulium-import.sync.lock.holder");
    for _ in 0..100 {
        if holder.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(holder.exists(), "the first sync holds the lock");
    let second = sync(&sandbox, &drop, &mapping, &[]).await;
    assert_eq!(second.code, Some(2), "{}", second.text());
    assert!(
        second.stderr.contains(&format!("process {}", first.id())),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("another `thulium-import sync`"),
        "{}",
        second.stderr
    );
    assert_eq!(customers(&sandbox), 0, "the second sent nothing");
    let first = tokio::task::spawn_blocking(move || first.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(customers(&sandbox), 1);
    assert!(!holder.exists(), "the lock's note goes with the process");
}

#[tokio::test(flavor = "multi_thread")]
async fn archive_moves_a_settled_file_and_its_marker() {
    let dir = tempdir();
    let drop = dir.join("drop");
    std::fs::create_dir(&drop).unwrap();
    let mapping = dir.join("crm.toml");
    std::fs::write(&mapping, MAPPING).unwrap();
    let archive = dir.join("archive");
    let archive_arg = ["--archive", archive.to_str().unwrap()];
    write_csv(
        &drop.join("good.csv"),
        &[row("G-1", "Nowak", ""), row("G-2", "Kowalska", "")],
    );
    // A row without a surname (required) is invalid: not done, and no
    // retry sends it unless the file or the mapping is fixed.
    write_csv(
        &drop.join("bad.csv"),
        &[row("B-1", "Nowak", ""), row("B-2", "", "")],
    );
    for name in ["good.csv.done", "bad.csv.done"] {
        std::fs::write(drop.join(name), "").unwrap();
    }
    let sandbox = Sandbox::start(config()).await.unwrap();
    let out = sync(&sandbox, &drop, &mapping, &archive_arg).await;
    assert_eq!(
        out.code,
        Some(1),
        "the bad file's rows not done: {}",
        out.text()
    );
    assert!(!drop.join("good.csv").exists() && !drop.join("good.csv.done").exists());
    assert!(archive.join("good.csv").exists() && archive.join("good.csv.done").exists());
    assert!(
        out.stdout.contains(&format!(
            "good.csv: imported — 2 row(s) ok, 0 not done — exit 0 — archived to {}",
            archive.join("good.csv").display()
        )),
        "{}",
        out.stdout
    );
    let work = drop.join(".thulium-import");
    assert!(
        work.join("good.csv.ledger.jsonl").exists(),
        "the ledger stays in the work folder"
    );
    // Its first night, the bad file may still have something to send.
    assert!(drop.join("bad.csv").exists());
    assert!(
        out.stdout
            .contains("bad.csv: imported — 1 row(s) ok, 1 not done — exit 1"),
        "{}",
        out.stdout
    );

    // The next night its retry finds nothing to send: settled, archived,
    // and the night still says rows are not done.
    let out = sync(&sandbox, &drop, &mapping, &archive_arg).await;
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(archive.join("bad.csv").exists() && !drop.join("bad.csv").exists());
    assert!(
        out.stdout
            .contains("bad.csv: continued — 1 row(s) ok, 1 not done — exit 1 — archived"),
        "{}",
        out.stdout
    );
    assert_eq!(customers(&sandbox), 3);

    // An empty folder: a quiet night.
    let out = sync(&sandbox, &drop, &mapping, &archive_arg).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(out.stdout.contains("sync: 0 file(s)"), "{}", out.stdout);
}

/// `[customer] on_gone = "delete"` over three nights of dated exports
/// dropped in turn: night 2's lacks 5 customers, who are deleted, with one
/// `gone` line each in that night's ledger in the work folder, counted by
/// `report --json` and the report beside it; night 3's lacks 80 %: exit
/// 2, nothing sent, the file neither archived nor given a ledger, said in
/// the summary; the next night takes it again (and refuses it again),
/// and once the export is fixed it is imported and archived.
#[tokio::test(flavor = "multi_thread")]
async fn on_gone_delete_over_dated_exports_and_a_broken_one_left_for_the_next_night() {
    let dir = tempdir();
    let drop = dir.join("drop");
    std::fs::create_dir(&drop).unwrap();
    let mapping = dir.join("crm.toml");
    std::fs::write(&mapping, format!("{MAPPING}on_gone = \"delete\"\n")).unwrap();
    let state = dir.join("acme.sqlite");
    let archive = dir.join("done");
    let args = [
        "--state",
        state.to_str().unwrap(),
        "--archive",
        archive.to_str().unwrap(),
    ];
    let work = drop.join(".thulium-import");
    let sandbox = Sandbox::start(config()).await.unwrap();
    let people = |ids: std::ops::RangeInclusive<usize>| -> Vec<[String; 5]> {
        ids.map(|i| row(&format!("C-{i:03}"), &format!("Nowak{i}"), ""))
            .collect()
    };

    // Night 1: 100 customers.
    write_csv(&drop.join("crm-2024-05-01.csv"), &people(1..=100));
    let out = sync(&sandbox, &drop, &mapping, &args).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert_eq!(customers(&sandbox), 100);
    assert!(archive.join("crm-2024-05-01.csv").exists());
    let ids: std::collections::BTreeMap<String, i64> = by_identifier(&sandbox)
        .into_iter()
        .map(|(k, c)| (k, c["customer_id"].as_i64().unwrap()))
        .collect();

    // Night 2: five customers left the CRM.
    write_csv(&drop.join("crm-2024-05-02.csv"), &people(1..=95));
    let before = sandbox.requests().len();
    let out = sync(&sandbox, &drop, &mapping, &args).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let journal = sandbox.requests()[before..].to_vec();
    let deleted: Vec<String> = writes(&journal)
        .iter()
        .filter(|e| e.method == "DELETE")
        .map(|e| e.path.clone())
        .collect();
    let gone: Vec<i64> = (96..=100).map(|i| ids[&format!("C-{i:03}")]).collect();
    let want: Vec<String> = gone
        .iter()
        .map(|id| format!("/api/customers/{id}"))
        .collect();
    assert_eq!(deleted, want);
    assert_eq!(customers(&sandbox), 95);
    assert!(
        out.stdout.contains("gone from the export"),
        "{}",
        out.stdout
    );
    let ledger = work.join("crm-2024-05-02.csv.ledger.jsonl");
    let mut named: Vec<i64> = ledger_lines(&ledger)
        .iter()
        .filter(|l| l["kind"] == "gone" && l["action"] == "deleted" && l["status"] == "ok")
        .map(|l| l["customer_id"].as_i64().unwrap())
        .collect();
    named.sort_unstable();
    assert_eq!(named, gone);
    assert_eq!(common::report(&ledger)["actions"]["deleted"], 5);
    let beside = read_json(&work.join("crm-2024-05-02.csv.report.json"));
    assert_eq!(beside["actions"]["deleted"], 5, "{beside}");
    assert!(archive.join("crm-2024-05-02.csv").exists());

    // Night 3: a broken export, 19 of the 95 (80 % gone).
    let broken = drop.join("crm-2024-05-03.csv");
    write_csv(&broken, &people(1..=19));
    for night in 0..2 {
        let before = sandbox.requests().len();
        let out = sync(&sandbox, &drop, &mapping, &args).await;
        assert_eq!(out.code, Some(2), "night {night}: {}", out.text());
        assert!(
            out.stderr.contains("lacks 76 of the 95 customers")
                && out.stderr.contains("--max-gone 10%"),
            "{}",
            out.stderr
        );
        assert!(
            out.stdout.contains(
                "crm-2024-05-03.csv: not imported (the error above; left in the folder: the next night takes it again) — exit 2"
            ),
            "{}",
            out.stdout
        );
        assert!(
            writes(&sandbox.requests()[before..]).is_empty(),
            "nothing sent"
        );
        assert_eq!(customers(&sandbox), 95);
        assert!(broken.exists(), "not archived");
        assert!(!archive.join("crm-2024-05-03.csv").exists());
        assert!(!work.join("crm-2024-05-03.csv.ledger.jsonl").exists());
    }

    // The CRM re-exports it whole: imported, nobody gone, archived.
    write_csv(&broken, &people(1..=95));
    let before = sandbox.requests().len();
    let out = sync(&sandbox, &drop, &mapping, &args).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(
        writes(&sandbox.requests()[before..]).is_empty(),
        "nothing changed"
    );
    assert!(archive.join("crm-2024-05-03.csv").exists());
    assert_eq!(customers(&sandbox), 95);
}

/// Two dated full exports of one job waiting in the drop folder, the mapping
/// (with a campaign record per customer) given `on_gone`, `full_export` or
/// neither; night 1 imported the older alone. Returns the folder, the
/// mapping, the state, the work folder and the customers' ids after night 1.
struct TwoExports {
    drop: PathBuf,
    mapping: PathBuf,
    state: PathBuf,
    work: PathBuf,
    archive: PathBuf,
    older: PathBuf,
    ids: std::collections::BTreeMap<String, i64>,
}

fn people(ids: std::ops::RangeInclusive<usize>) -> Vec<[String; 5]> {
    ids.map(|i| row(&format!("C-{i:03}"), &format!("Nowak{i}"), "VIP"))
        .collect()
}

async fn night_one(sandbox: &Sandbox, extra: &str) -> TwoExports {
    let dir = tempdir();
    let drop = dir.join("drop");
    std::fs::create_dir(&drop).unwrap();
    let mapping = dir.join("crm.toml");
    std::fs::write(
        &mapping,
        format!("{MAPPING}{extra}\n[campaign]\nid = {{ value = \"00001\" }}\n"),
    )
    .unwrap();
    let state = dir.join("acme.sqlite");
    let older = drop.join("export_2026-11-01.csv");
    write_csv(&older, &people(1..=100));
    let out = sync(
        sandbox,
        &drop,
        &mapping,
        &["--state", state.to_str().unwrap()],
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert_eq!(customers(sandbox), 100);
    let ids = by_identifier(sandbox)
        .into_iter()
        .map(|(k, c)| (k, c["customer_id"].as_i64().unwrap()))
        .collect();
    TwoExports {
        work: drop.join(".thulium-import"),
        archive: dir.join("done"),
        drop,
        mapping,
        state,
        older,
        ids,
    }
}

/// The customer ids the campaign records of `journal` name.
fn record_customers(journal: &[JournalEntry]) -> Vec<i64> {
    journal
        .iter()
        .filter(|e| e.method == "POST" && e.path.ends_with("/records"))
        .flat_map(|e| e.body["records"].as_array().unwrap().clone())
        .map(|r| r["customer_id"].as_i64().unwrap())
        .collect()
}

/// The cold user's night: the newer export (lacking 9 customers) dropped
/// beside the older, already imported one, and the mapping edited the same
/// day (which would have re-mapped the older file first). Under `on_gone =
/// "delete"` the older is superseded: not re-mapped, its ledger untouched;
/// the 9 are deleted once and never created again (no customer, no
/// campaign record for a dialer to pick up); then, with `--archive`, the
/// superseded file is archived with the settled one.
#[tokio::test(flavor = "multi_thread")]
async fn under_on_gone_an_older_full_export_waiting_beside_a_newer_one_is_superseded() {
    let sandbox = Sandbox::start(config()).await.unwrap();
    let t = night_one(&sandbox, "on_gone = \"delete\"").await;
    let older_ledger = t.work.join("export_2026-11-01.csv.ledger.jsonl");
    // A crash at the end of night 1: the ledger lost its `end` line, so the
    // older file's ledger is unfinished.
    let text = std::fs::read_to_string(&older_ledger).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let last: Value = serde_json::from_str(lines.pop().unwrap()).unwrap();
    assert_eq!(last["kind"], "end", "{last}");
    let crashed = lines.join("\n") + "\n";
    std::fs::write(&older_ledger, &crashed).unwrap();

    std::thread::sleep(Duration::from_millis(20)); // a later modification time
    let newer = t.drop.join("export_2026-11-02.csv");
    write_csv(&newer, &people(1..=91));
    let state_arg = ["--state", t.state.to_str().unwrap()];
    let before = sandbox.requests().len();
    let out = sync(&sandbox, &t.drop, &t.mapping, &state_arg).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let journal = sandbox.requests()[before..].to_vec();
    assert!(
        out.stdout.contains(
            "export_2026-11-01.csv: superseded by export_2026-11-02.csv: not imported (its ledger is unfinished: its last run did not end"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("export_2026-11-02.csv: imported"),
        "{}",
        out.stdout
    );
    // Nobody created, no campaign record added: the 9 are not brought back.
    assert!(
        !journal
            .iter()
            .any(|e| e.method == "POST" && e.path == "/api/batch/customers"),
        "no customer created"
    );
    let known: std::collections::HashSet<i64> = t.ids.values().copied().collect();
    assert!(record_customers(&journal)
        .iter()
        .all(|id| known.contains(id)));
    // Exactly the 9 the newer export lacks are deleted, once.
    let mut deleted: Vec<String> = writes(&journal)
        .iter()
        .filter(|e| e.method == "DELETE")
        .map(|e| e.path.clone())
        .collect();
    deleted.sort();
    let mut want: Vec<String> = (92..=100)
        .map(|i| format!("/api/customers/{}", t.ids[&format!("C-{i:03}")]))
        .collect();
    want.sort();
    assert_eq!(deleted, want);
    let held = by_identifier(&sandbox);
    assert_eq!(held.len(), 91);
    for i in 1..=91 {
        let id = format!("C-{i:03}");
        assert_eq!(held[&id]["customer_id"].as_i64(), Some(t.ids[&id]), "{id}");
    }
    // The older file's ledger is neither continued nor kept aside (only
    // night 1's undo file is beside it).
    assert_eq!(std::fs::read_to_string(&older_ledger).unwrap(), crashed);
    assert!(
        named(&t.work, "export_2026-11-01.csv.ledger.jsonl.")
            == ["export_2026-11-01.csv.ledger.jsonl.undo.jsonl"]
    );

    // Night 3: the mapping edited, which re-maps a file whose ledger used
    // the old one. The older is still superseded (before, its re-map
    // created the 9 again, with campaign records, and the newer's deleted
    // them again); the newer is re-mapped: updates only.
    std::fs::write(
        &t.mapping,
        format!(
            "{}{MAPPING_WITH_SEGMENT}",
            std::fs::read_to_string(&t.mapping).unwrap()
        ),
    )
    .unwrap();
    let before = sandbox.requests().len();
    let out = sync(&sandbox, &t.drop, &t.mapping, &state_arg).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(
        out.stdout
            .contains("export_2026-11-01.csv: superseded by export_2026-11-02.csv: not imported"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("export_2026-11-02.csv: re-mapped"),
        "{}",
        out.stdout
    );
    let journal = sandbox.requests()[before..].to_vec();
    let sent_now = writes(&journal);
    assert!(
        sent_now
            .iter()
            .all(|e| e.method == "PUT" && e.path == "/api/batch/customers"),
        "updates only: {sent_now:?}"
    );
    let mut updated: Vec<String> = sent_now.iter().flat_map(|e| identifiers_sent(e)).collect();
    updated.sort();
    let want: Vec<String> = (1..=91).map(|i| format!("C-{i:03}")).collect();
    assert_eq!(updated, want);
    assert_eq!(customers(&sandbox), 91);
    assert_eq!(std::fs::read_to_string(&older_ledger).unwrap(), crashed);

    // The next night, with --archive: the older still superseded (nothing
    // created, nobody deleted again), and archived with the settled newer
    // one, so that no later night takes it alone.
    let archive_arg = [
        "--state",
        t.state.to_str().unwrap(),
        "--archive",
        t.archive.to_str().unwrap(),
    ];
    let before = sandbox.requests().len();
    let out = sync(&sandbox, &t.drop, &t.mapping, &archive_arg).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let journal = sandbox.requests()[before..].to_vec();
    assert!(
        writes(&journal).is_empty(),
        "nothing to send: {:?}",
        writes(&journal)
    );
    assert!(
        out.stdout.contains(&format!(
            "export_2026-11-01.csv: superseded by export_2026-11-02.csv: not imported (its ledger is unfinished: its last run did not end, a crash or a kill; not continued: the newer full export covers its rows) — archived to {}",
            t.archive.join("export_2026-11-01.csv").display()
        )),
        "{}",
        out.stdout
    );
    assert!(!t.older.exists() && !newer.exists());
    assert!(t.archive.join("export_2026-11-02.csv").exists());
    assert_eq!(customers(&sandbox), 91);
}

/// `[source] full_export = true` says the same without `on_gone`; and the
/// same folder with neither is taken as today: both files, oldest first.
#[tokio::test(flavor = "multi_thread")]
async fn without_full_exports_both_files_are_imported_in_order_as_before() {
    for (extra, full) in [("", false), ("[source]\nfull_export = true\n", true)] {
        let sandbox = Sandbox::start(config()).await.unwrap();
        // `[source]` already opens MAPPING: the key goes into that table.
        let t = night_one(&sandbox, "").await;
        if full {
            let text = std::fs::read_to_string(&t.mapping).unwrap();
            let text = text.replacen("[source]\n", extra, 1);
            std::fs::write(&t.mapping, text).unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        write_csv(&t.drop.join("export_2026-11-02.csv"), &people(1..=91));
        // The mapping edited: the older file re-mapped, as before.
        std::fs::write(
            &t.mapping,
            format!(
                "{}{MAPPING_WITH_SEGMENT}",
                std::fs::read_to_string(&t.mapping).unwrap()
            ),
        )
        .unwrap();
        let out = sync(
            &sandbox,
            &t.drop,
            &t.mapping,
            &["--state", t.state.to_str().unwrap()],
        )
        .await;
        assert_eq!(out.code, Some(0), "{}", out.text());
        let older = out.stdout.find("export_2026-11-01.csv: ");
        let newer = out.stdout.find("export_2026-11-02.csv: imported");
        assert!(newer.is_some(), "{}", out.stdout);
        if full {
            assert!(
                out.stdout.contains(
                    "export_2026-11-01.csv: superseded by export_2026-11-02.csv: not imported\n"
                ),
                "{}",
                out.stdout
            );
            // The edit the older file's re-map would have sent comes with
            // the newer file, held to --max-changes no more than a re-map.
            assert!(
                out.stdout.contains(
                    "export_2026-11-02.csv: imported (the mapping changed since the older files' ledgers: --max-changes not applied)"
                ),
                "{}",
                out.stdout
            );
            assert_eq!(
                by_identifier(&sandbox)["C-001"]["custom_fields"]["Segment"],
                "VIP"
            );
            assert!(
                named(&t.work, "export_2026-11-01.csv.ledger.jsonl.")
                    == ["export_2026-11-01.csv.ledger.jsonl.undo.jsonl"]
            );
        } else {
            assert!(
                out.stdout.contains("export_2026-11-01.csv: re-mapped"),
                "{}",
                out.stdout
            );
            assert!(older < newer, "oldest first: {}", out.stdout);
        }
        // No on_gone: nobody deleted either way.
        assert_eq!(customers(&sandbox), 100);
    }
}
