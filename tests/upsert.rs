//! Customers that already exist: match keys, updates, the sync state, end
//! to end against a sandbox that starts populated.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;
use common::{doubled_customers, doubled_items, make_export, report};

use std::path::{Path, PathBuf};

use serde_json::Value;
use thulium_import::sandbox::{FaultKind, Sandbox, SandboxConfig};

const PASSWORD: &str = "upsert-secret";

fn config() -> SandboxConfig {
    SandboxConfig {
        password: PASSWORD.into(),
        retry_after_secs: 0,
        ..SandboxConfig::default()
    }
}

/// The sample mapping (UTF-8 copy) with `lines` added to `[customer]`.
fn mapping(dir: &Path, lines: &str) -> PathBuf {
    let path = dir.join(format!("m{}.toml", rand_suffix()));
    let text = std::fs::read_to_string("mappings/crm_export.toml")
        .unwrap()
        .replace("encoding = \"windows-1250\"", "encoding = \"utf-8\"")
        .replace(
            "[customer]                      # POST /api/batch/customers\n",
            &format!("[customer]\n{lines}\n"),
        );
    assert!(text.contains(lines));
    std::fs::write(&path, text).unwrap();
    path
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

struct Out {
    code: Option<i32>,
    text: String,
    ledger: Vec<Value>,
}

async fn run(sandbox: &Sandbox, csv: &Path, mapping: &Path, ledger: &Path, extra: &[&str]) -> Out {
    let mut cmd = common::bin(PASSWORD);
    cmd.arg("run")
        .arg(csv)
        .arg("--mapping")
        .arg(mapping)
        .arg("--ledger")
        .arg(ledger)
        .args([
            "--url",
            &sandbox.url(),
            "--user",
            "api_user",
            "--no-progress",
        ])
        .args(["--rate", "5000", "--max-consecutive-failures", "0"])
        .args(extra);
    let out = common::output(cmd).await;
    let ledger = std::fs::read_to_string(ledger)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Out {
        code: out.code,
        text: out.text(),
        ledger,
    }
}

/// Whether a request is one of preflight's reads (what the mapping refers
/// to), which every run makes first.
fn preflight(e: &thulium_import::sandbox::JournalEntry) -> bool {
    e.method == "GET"
        && [
            "/api/customer_field_groups",
            "/api/outbounds",
            "/api/agents",
        ]
        .iter()
        .any(|p| e.path.starts_with(p))
}

fn tempdir() -> PathBuf {
    tempfile::tempdir().unwrap().keep()
}

/// The first `n` data rows of `csv` in a new file, with every surname
/// suffixed (an older version of the same customers).
fn older_copy(csv: &Path, n: usize, to: &Path) {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b';')
        .from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let surname = headers.iter().position(|h| h == "Nazwisko").unwrap();
    let channel = headers
        .iter()
        .position(|h| h == "Kanał pozyskania")
        .unwrap();
    let mut w = csv::WriterBuilder::new()
        .delimiter(b';')
        .from_path(to)
        .unwrap();
    w.write_record(&headers).unwrap();
    for r in reader.records().take(n) {
        let mut r: Vec<String> = r.unwrap().iter().map(str::to_string).collect();
        r[surname] = format!("{} (old)", r[surname]);
        r[channel] = "old channel".into();
        w.write_record(&r).unwrap();
    }
    w.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_populated_system_gets_updates_not_duplicates() {
    let dir = tempdir();
    let csv = dir.join("export.csv");
    make_export(&csv, 1, None);
    let old = dir.join("old.csv");
    older_copy(&csv, 100, &old);
    let sandbox = Sandbox::start(config()).await.unwrap();
    let m = mapping(&dir, "match = \"identifier\"");
    let (preloaded, items) = sandbox.preload(&old, &m).unwrap();
    assert!(preloaded > 90 && items > 90, "{preloaded} {items}");
    let out = run(&sandbox, &csv, &m, &dir.join("l.jsonl"), &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.text);
    assert_eq!(doubled_customers(&sandbox), Vec::<String>::new());
    assert_eq!(doubled_items(&sandbox), Vec::<String>::new());
    // The old values were updated, customer and item alike.
    let customers = common::by_identifier(&sandbox);
    assert!(customers
        .values()
        .all(|c| !c["surname"].as_str().unwrap().ends_with("(old)")));
    let items = sandbox.state_json()["field_group_items"].clone();
    assert!(!items.to_string().contains("old channel"), "items updated");
    let r = report(&dir.join("l.jsonl"));
    assert_eq!(
        r["actions"]["updated"].as_u64().unwrap(),
        preloaded as u64,
        "{r}"
    );
    assert_eq!(
        r["actions"]["created"].as_u64().unwrap() + preloaded as u64,
        r["stages"]["customer"]["ok"].as_u64().unwrap()
    );
    assert!(out.text.contains("customers: "), "{}", out.text);
    let stats = sandbox.stats();
    assert!(
        stats.customers_updated >= preloaded as u64 && stats.items_updated > 0,
        "{stats:?}"
    );
    // The update's body: customer_id and the mapped fields only.
    let put = sandbox
        .requests()
        .into_iter()
        .find(|e| e.method == "PUT" && e.path == "/api/batch/customers")
        .unwrap();
    let first = &put.body["customers"][0];
    assert!(first["customer_id"].is_i64(), "{first}");
    assert!(first.to_string().contains("\"identifier\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_file_twice_sends_only_the_changed_rows() {
    let dir = tempdir();
    let csv = dir.join("export.csv");
    let rows = make_export(&csv, 7, None);
    let m = mapping(&dir, "match = [\"identifier\", \"email\"]");
    let state = dir.join("state.sqlite");
    let state_arg = state.to_str().unwrap();
    let sandbox = Sandbox::start(config()).await.unwrap();
    let night1 = run(
        &sandbox,
        &csv,
        &m,
        &dir.join("n1.jsonl"),
        &["--state", state_arg],
    )
    .await;
    assert_eq!(night1.code, Some(1), "{}", night1.text);
    let created = common::customers(&sandbox);
    // Night 2: 1 % of the rows have a new name.
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b';')
        .from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let name = headers.iter().position(|h| h == "Imię").unwrap();
    let mut w = csv::WriterBuilder::new()
        .delimiter(b';')
        .from_path(&csv)
        .unwrap();
    w.write_record(&headers).unwrap();
    let mut changed = 0;
    for (i, r) in reader.records().enumerate() {
        let mut r: Vec<String> = r.unwrap().iter().map(str::to_string).collect();
        if i % 100 == 7 {
            r[name] = format!("Renamed {i}");
            changed += 1;
        }
        w.write_record(&r).unwrap();
    }
    w.flush().unwrap();
    assert_eq!(changed, rows / 100 + usize::from(rows % 100 > 7));
    let before = sandbox.requests().len();
    let night2 = run(
        &sandbox,
        &csv,
        &m,
        &dir.join("n2.jsonl"),
        &["--state", state_arg],
    )
    .await;
    assert_eq!(night2.code, Some(1), "{}", night2.text);
    let journal = sandbox.requests();
    let (lookups, sent): (Vec<_>, Vec<_>) = journal[before..]
        .iter()
        .filter(|e| !preflight(e))
        .partition(|e| e.method == "GET" && e.path == "/api/customers");
    // Only updates of the changed customers (minus rows invalid either
    // way), each confirmed by one lookup first (the state is a cache),
    // nothing else: no index, no item, record or feed.
    assert!(
        sent.iter()
            .all(|e| e.method == "PUT" && e.path == "/api/batch/customers"),
        "{:?}",
        sent.iter()
            .map(|e| (&e.method, &e.path))
            .collect::<Vec<_>>()
    );
    let updated: usize = sent
        .iter()
        .map(|e| e.body["customers"].as_array().unwrap().len())
        .sum();
    assert!(updated > 0 && updated <= changed, "{updated} of {changed}");
    // Every customer updated was confirmed first: by one lookup each, or
    // by an index (read whole, when that costs fewer requests); unchanged
    // rows by neither.
    let per_row = lookups
        .iter()
        .filter(|e| {
            e.query
                .as_deref()
                .is_some_and(|q| q.contains("identifier="))
        })
        .count();
    let pages = lookups.len() - per_row;
    assert!(
        (per_row == updated && pages <= 1) || (per_row == 0 && pages > 1),
        "{per_row} lookups and {pages} pages for {updated} updates"
    );
    let r = report(&dir.join("n2.jsonl"));
    assert_eq!(
        r["actions"]["updated"].as_u64().unwrap() as usize,
        updated,
        "{r}"
    );
    assert_eq!(
        r["actions"]["unchanged"].as_u64().unwrap() as usize + updated,
        r["stages"]["customer"]["ok"].as_u64().unwrap() as usize
    );
    assert_eq!(
        common::customers(&sandbox),
        created,
        "nothing created twice"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&state).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The state holds ids and hashes, no customer's data.
    let bytes = std::fs::read(&state).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("CRM-10001") && !text.contains("@example.pl"));

    // --full asks Thulium for every row: each already holds the row's
    // values, so nothing is PUT (unchanged, said so); nothing doubled.
    let puts_before = sandbox
        .requests()
        .iter()
        .filter(|e| e.method == "PUT" && e.path == "/api/batch/customers")
        .count();
    let full = run(
        &sandbox,
        &csv,
        &m,
        &dir.join("n3.jsonl"),
        &["--state", state_arg, "--full"],
    )
    .await;
    assert_eq!(full.code, Some(1), "{}", full.text);
    let r = report(&dir.join("n3.jsonl"));
    assert_eq!(r["actions"]["updated"], 0, "{r}");
    assert_eq!(
        r["actions"]["unchanged"], r["stages"]["customer"]["ok"],
        "{r}"
    );
    let puts_after = sandbox
        .requests()
        .iter()
        .filter(|e| e.method == "PUT" && e.path == "/api/batch/customers")
        .count();
    assert_eq!(puts_after, puts_before, "nothing PUT: Thulium holds it all");
    assert_eq!(common::customers(&sandbox), created);
    assert_eq!(doubled_items(&sandbox), Vec::<String>::new());

    // A state belongs to one system.
    let other = Sandbox::start(config()).await.unwrap();
    let refused = run(
        &other,
        &csv,
        &m,
        &dir.join("n4.jsonl"),
        &["--state", state_arg],
    )
    .await;
    assert_eq!(refused.code, Some(2), "{}", refused.text);
    assert!(refused.text.contains("belongs to"), "{}", refused.text);
    assert!(other.requests().is_empty(), "nothing sent");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_state_costs_lookups_never_duplicates() {
    let dir = tempdir();
    let csv = dir.join("export.csv");
    make_export(&csv, 2, None);
    let m = mapping(&dir, "match = \"identifier\"");
    let state = dir.join("state.sqlite");
    let sandbox = Sandbox::start(config()).await.unwrap();
    let first = run(
        &sandbox,
        &csv,
        &m,
        &dir.join("1.jsonl"),
        &["--state", state.to_str().unwrap()],
    )
    .await;
    assert_eq!(first.code, Some(1), "{}", first.text);
    let (customers, items) = (
        common::customers(&sandbox),
        sandbox.state_json()["field_group_items"]
            .as_array()
            .unwrap()
            .len(),
    );
    std::fs::remove_file(&state).unwrap();
    let second = run(
        &sandbox,
        &csv,
        &m,
        &dir.join("2.jsonl"),
        &["--state", state.to_str().unwrap()],
    )
    .await;
    assert_eq!(second.code, Some(1), "{}", second.text);
    assert_eq!(common::customers(&sandbox), customers);
    assert_eq!(
        sandbox.state_json()["field_group_items"]
            .as_array()
            .unwrap()
            .len(),
        items
    );
    assert_eq!(doubled_customers(&sandbox), Vec::<String>::new());
    let r = report(&dir.join("2.jsonl"));
    assert_eq!(r["actions"]["created"], 0, "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ambiguous_match_fails_the_row_and_sends_nothing_for_it() {
    let dir = tempdir();
    let sandbox = Sandbox::start(config()).await.unwrap();
    // Two customers with identifier CRM-10001 already.
    for _ in 0..2 {
        let mut fields = serde_json::Map::new();
        fields.insert("surname".into(), "Twin".into());
        fields.insert("identifier".into(), "CRM-10001".into());
        sandbox.shared().lock_state().add_customer(fields);
    }
    let m = dir.join("m.toml");
    let text = std::fs::read_to_string("mappings/crm_export.toml")
        .unwrap()
        .replace(
            "[customer]                      # POST /api/batch/customers\n",
            "[customer]\nmatch = \"identifier\"\n",
        );
    std::fs::write(&m, text).unwrap();
    let out = run(
        &sandbox,
        Path::new("samples/crm_export.csv"),
        &m,
        &dir.join("l.jsonl"),
        &["--index", "never"],
    )
    .await;
    assert_eq!(out.code, Some(1), "{}", out.text);
    let row1: Vec<&Value> = out
        .ledger
        .iter()
        .filter(|e| e["row"] == 1 && e["kind"] == "row")
        .collect();
    assert_eq!(row1.len(), 1, "{row1:?}");
    assert_eq!(row1[0]["status"], "failed");
    assert!(
        row1[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("ambiguous: customers 1 and 2 have this row's identifier"),
        "{}",
        row1[0]
    );
    let journal = sandbox.requests();
    assert!(journal
        .iter()
        .filter(|e| e.method != "GET")
        .all(|e| !e.body.to_string().contains("CRM-10001")));
    // Per-row lookups (--index never): one GET per row with an identifier,
    // asking for the custom fields the mapping writes (their current values).
    assert!(journal.iter().any(|e| e.method == "GET"
        && e.query
            .as_deref()
            .is_some_and(|q| q.starts_with("identifier=CRM-10001&")
                && q.contains("include_custom_fields=true")
                && q.ends_with("&limit=1000&offset=0"))));
}

#[tokio::test(flavor = "multi_thread")]
async fn two_rows_with_one_key_are_the_later_one_invalid() {
    let dir = tempdir();
    let csv = dir.join("export.csv");
    make_export(&csv, 1, None);
    // Row 3 repeats row 1's identifier.
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let id1 = lines[1].split(';').nth(1).unwrap().to_string();
    let id3 = lines[3].split(';').nth(1).unwrap().to_string();
    lines[3] = lines[3].replacen(&id3, &id1, 1);
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    let m = mapping(&dir, "match = \"identifier\"");
    let check = std::process::Command::new(assert_cmd::cargo::cargo_bin("thulium-import"))
        .args([
            "check",
            csv.to_str().unwrap(),
            "--mapping",
            m.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1));
    let report_json: Value = serde_json::from_slice(&check.stdout).unwrap();
    let twice: Vec<&Value> = report_json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .unwrap()
                .starts_with("same identifier as row 1 (line 2)")
        })
        .collect();
    assert_eq!(twice.len(), 1, "{report_json}");
    assert_eq!(twice[0]["row"], 3);
    let sandbox = Sandbox::start(config()).await.unwrap();
    let out = run(&sandbox, &csv, &m, &dir.join("l.jsonl"), &[]).await;
    assert_eq!(out.code, Some(1));
    let row3 = out.ledger.iter().find(|e| e["row"] == 3).unwrap();
    assert_eq!(row3["status"], "invalid");
    assert_eq!(doubled_customers(&sandbox), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn upsert_under_every_fault_leaves_no_duplicate_and_no_unknown_customer() {
    let dir = tempdir();
    let csv = dir.join("export.csv");
    make_export(&csv, 4, None);
    let old = dir.join("old.csv");
    older_copy(&csv, 300, &old);
    let m = mapping(&dir, "match = [\"identifier\", \"email\"]");
    let sandbox = Sandbox::start(SandboxConfig {
        fault_rate: 0.2,
        faults: FaultKind::ALL.to_vec(),
        seed: 404,
        ..config()
    })
    .await
    .unwrap();
    sandbox.preload(&old, &m).unwrap();
    let ledger = dir.join("l.jsonl");
    let out = run(
        &sandbox,
        &csv,
        &m,
        &ledger,
        &["--max-attempts", "10", "--batch-size", "10"],
    )
    .await;
    assert!(matches!(out.code, Some(1)), "{}", out.text);
    assert!(
        sandbox.stats().faults.len() == 5,
        "{:?}",
        sandbox.stats().faults
    );
    assert_eq!(doubled_customers(&sandbox), Vec::<String>::new());
    assert_eq!(doubled_items(&sandbox), Vec::<String>::new());
    let r = report(&ledger);
    assert_eq!(r["stages"]["customer"]["unknown"], 0, "{r}");
    // Creations applied but unanswered were found, not made again.
    let stats = sandbox.stats();
    let applied_unanswered = stats
        .faults_by_endpoint
        .get("POST /api/batch/customers")
        .map_or(0, |f| {
            f.get("drop_after").unwrap_or(&0) + f.get("500_after").unwrap_or(&0)
        });
    assert!(
        applied_unanswered > 0,
        "the faults hit creations: {stats:?}"
    );
    assert!(r["actions"]["adopted"].as_u64().unwrap() > 0, "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn on_match_skip_and_on_missing_skip() {
    let dir = tempdir();
    let csv = dir.join("export.csv");
    make_export(&csv, 1, None);
    let old = dir.join("old.csv");
    older_copy(&csv, 50, &old);

    // on_match = "skip": the existing customers are left as they are; the
    // rest are created; later stages still go to both.
    let sandbox = Sandbox::start(config()).await.unwrap();
    let m = mapping(&dir, "match = \"identifier\"\non_match = \"skip\"");
    let (preloaded, _) = sandbox.preload(&old, &m).unwrap();
    let out = run(&sandbox, &csv, &m, &dir.join("a.jsonl"), &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.text);
    let old_names = common::by_identifier(&sandbox)
        .values()
        .filter(|c| c["surname"].as_str().unwrap().ends_with("(old)"))
        .count();
    assert_eq!(old_names, preloaded);
    let r = report(&dir.join("a.jsonl"));
    assert_eq!(
        r["actions"]["skipped_existing"].as_u64().unwrap() as usize,
        preloaded,
        "{r}"
    );
    assert!(r["actions"]["created"].as_u64().unwrap() > 0);
    assert_eq!(sandbox.stats().customers_updated, 0);

    // on_missing = "skip": only the existing customers are touched.
    let sandbox = Sandbox::start(config()).await.unwrap();
    let m = mapping(&dir, "match = \"identifier\"\non_missing = \"skip\"");
    sandbox.preload(&old, &m).unwrap();
    let out = run(&sandbox, &csv, &m, &dir.join("b.jsonl"), &[]).await;
    assert!(matches!(out.code, Some(0 | 1)), "{}", out.text);
    assert_eq!(common::customers(&sandbox), preloaded, "nothing created");
    let r = report(&dir.join("b.jsonl"));
    assert_eq!(
        r["actions"]["updated"].as_u64().unwrap() as usize,
        preloaded,
        "{r}"
    );
    assert!(r["actions"]["skipped_missing"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(
        r["stages"]["field_group"]["skipped"], 0,
        "no stage waits for a customer that will not be: {r}"
    );

    // A mapping error names the key.
    let bad = mapping(&dir, "match = \"pesel\"");
    let out = run(&sandbox, &csv, &bad, &dir.join("c.jsonl"), &[]).await;
    assert_eq!(out.code, Some(2));
    assert!(
        out.text
            .contains("customer.match: \"pesel\" is not a match key"),
        "{}",
        out.text
    );
    let bad = mapping(&dir, "match = \"nip\"");
    let out = run(&sandbox, &csv, &bad, &dir.join("d.jsonl"), &[]).await;
    assert!(
        out.text
            .contains("nip is a match key but the mapping does not fill it"),
        "{}",
        out.text
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_cells_never_clear_data_unless_clear_empty() {
    let dir = tempdir();
    let csv = dir.join("export.csv");
    make_export(&csv, 1, None);
    let sandbox = Sandbox::start(config()).await.unwrap();
    let m = mapping(&dir, "match = \"identifier\"");
    sandbox.preload(&csv, &m).unwrap();
    // The same rows with the Segment column emptied.
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b';')
        .from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let segment = headers.iter().position(|h| h == "Segment").unwrap();
    let emptied = dir.join("emptied.csv");
    let mut w = csv::WriterBuilder::new()
        .delimiter(b';')
        .from_path(&emptied)
        .unwrap();
    w.write_record(&headers).unwrap();
    for r in reader.records() {
        let mut r: Vec<String> = r.unwrap().iter().map(str::to_string).collect();
        r[segment].clear();
        w.write_record(&r).unwrap();
    }
    w.flush().unwrap();
    let segments = |s: &Sandbox| {
        s.state_json()["customers"]
            .as_object()
            .unwrap()
            .values()
            .filter(|c| c["custom_fields"]["Segment"].is_string())
            .count()
    };
    let before = segments(&sandbox);
    assert!(before > 0);
    let out = run(&sandbox, &emptied, &m, &dir.join("a.jsonl"), &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.text);
    assert_eq!(
        segments(&sandbox),
        before,
        "empty cells are left out of updates"
    );
    let clearing = mapping(&dir, "match = \"identifier\"\nclear_empty = true");
    let out = run(&sandbox, &emptied, &clearing, &dir.join("b.jsonl"), &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.text);
    assert_eq!(segments(&sandbox), 0, "clear_empty = true clears them");
    let r = report(&dir.join("b.jsonl"));
    assert_eq!(r["stages"]["customer"]["failed"], 0, "{r}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn the_nightly_full_export_sends_only_what_changed_and_waits_for_files_being_written() {
    let dir = tempdir();
    let drop = dir.join("drop");
    std::fs::create_dir(&drop).unwrap();
    let csv = drop.join("crm-full.csv");
    make_export(&csv, 2, None);
    let m = mapping(&dir, "match = [\"identifier\", \"email\"]");
    let state = dir.join("acme.sqlite");
    let sandbox = Sandbox::start(config()).await.unwrap();
    let job = |settle: &str| {
        let mut job = std::process::Command::new("bash");
        job.arg("contrib/nightly.sh")
            .arg(&drop)
            .arg(&m)
            .arg(&state)
            .env(
                "THULIUM_IMPORT",
                assert_cmd::cargo::cargo_bin("thulium-import"),
            )
            .env("THULIUM_URL", sandbox.url())
            .env("THULIUM_USER", "api_user")
            .env("THULIUM_PASSWORD", PASSWORD)
            .env("NIGHTLY_SETTLE_SECONDS", settle)
            .env("NIGHTLY_ARGS", "--rate 5000");
        job
    };
    let night = |mut job: std::process::Command| async move {
        tokio::task::spawn_blocking(move || job.output().unwrap())
            .await
            .unwrap()
    };
    // Night 1: everything is created.
    let out = night(job("0")).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created = common::customers(&sandbox);
    let night1: Value = serde_json::from_str(
        &std::fs::read_to_string(drop.join("crm-full.csv.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        night1["actions"]["created"].as_u64().unwrap() as usize,
        created
    );

    // Night 2: the same full export with two names changed lands over it,
    // while another file is still being written.
    let text = std::fs::read_to_string(&csv)
        .unwrap()
        .replacen(";Dorota;", ";Dorothy;", 1)
        .replacen(";Zofia;", ";Sophie;", 1);
    std::fs::write(&csv, text).unwrap();
    let growing = drop.join("partial.csv");
    std::fs::write(&growing, "ID klienta;Nazwisko\n").unwrap();
    let writer = {
        let growing = growing.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            for i in 0..30 {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&growing)
                    .unwrap();
                writeln!(f, "P-{i};Nowak").unwrap();
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let before = sandbox.requests().len();
    let out = night(job("1")).await;
    writer.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("partial.csv: still being written"),
        "{stderr}"
    );
    assert!(!drop.join("partial.csv.ledger.jsonl").exists());
    let journal = sandbox.requests();
    // Each changed row confirmed by a lookup (the state is a cache), then
    // updated.
    let sent: Vec<_> = journal[before..]
        .iter()
        .filter(|e| !(preflight(e) || (e.method == "GET" && e.path == "/api/customers")))
        .collect();
    assert!(sent
        .iter()
        .all(|e| e.method == "PUT" && e.path == "/api/batch/customers"));
    let updated: usize = sent
        .iter()
        .map(|e| e.body["customers"].as_array().unwrap().len())
        .sum();
    assert_eq!(updated, 2, "only the two changed customers");
    assert_eq!(common::customers(&sandbox), created);
    // Last night's ledger is kept aside (its undo file beside it).
    let aside = std::fs::read_dir(&drop)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.starts_with("crm-full.csv.ledger.jsonl.") && !name.ends_with(".undo.jsonl")
        })
        .count();
    assert_eq!(aside, 1);

    // With `.done` markers, only marked files are taken.
    std::fs::write(drop.join("crm-full.csv.done"), "").unwrap();
    let out = night(job("0")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("partial.csv: no"), "{stderr}");
    assert!(!drop.join("partial.csv.ledger.jsonl").exists());
}

/// A file of `rows` customers with identifiers `PRE-000001`… (what
/// `preload_customers` gives the first ones) and a mapping matching them by
/// identifier.
fn pre_file(dir: &Path, rows: usize) -> (PathBuf, PathBuf) {
    let csv = dir.join("pre.csv");
    let mut text = String::from("surname,identifier\n");
    for i in 1..=rows {
        text.push_str(&format!("Row {i},PRE-{i:06}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let m = dir.join("pre.toml");
    std::fs::write(
        &m,
        "[source]\ndelimiter = \",\"\nencoding = \"utf-8\"\n\n[customer]\nmatch = [\"identifier\"]\nsurname = { column = \"surname\", required = true }\nidentifier = \"identifier\"\n",
    )
    .unwrap();
    (csv, m)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_index_read_from_a_server_that_caps_pages_at_200_is_whole() {
    let dir = tempdir();
    let (csv, m) = pre_file(&dir, 3000);
    let sandbox = Sandbox::start(SandboxConfig {
        page_cap: Some(200),
        preload_customers: 2500,
        ..config()
    })
    .await
    .unwrap();
    let ledger = dir.join("l.jsonl");
    let out = run(&sandbox, &csv, &m, &ledger, &["--index", "always"]).await;
    assert_eq!(out.code, Some(0), "{}", out.text);
    assert!(
        out.text
            .contains("Index: 2500 customer(s) read in 13 request(s)"),
        "{}",
        out.text
    );
    // 2,500 found and updated, 500 created, none twice.
    assert_eq!(common::customers(&sandbox), 3000);
    assert_eq!(doubled_customers(&sandbox), Vec::<String>::new());
    let r = report(&ledger);
    assert_eq!(r["actions"]["created"], 500, "{r}");
    assert_eq!(r["actions"]["updated"], 2500, "{r}");
    // The index paged on by what each page held, not by the limit asked.
    let offsets: Vec<String> = sandbox
        .requests()
        .iter()
        .filter(|e| e.method == "GET" && e.path == "/api/customers")
        .filter_map(|e| e.query.clone())
        .collect();
    let want: Vec<String> = (0..13)
        .map(|p| format!("limit=1000&offset={}", p * 200))
        .collect();
    assert_eq!(offsets, want);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_ignores_offset_stops_the_run_before_anything_is_sent() {
    let dir = tempdir();
    let (csv, m) = pre_file(&dir, 3000);
    let sandbox = Sandbox::start(SandboxConfig {
        ignore_offset: true,
        preload_customers: 2500,
        ..config()
    })
    .await
    .unwrap();
    let ledger = dir.join("l.jsonl");
    let out = run(&sandbox, &csv, &m, &ledger, &["--index", "always"]).await;
    assert_eq!(out.code, Some(3), "{}", out.text);
    assert!(
        out.text.contains("the server ignores `offset`"),
        "{}",
        out.text
    );
    assert!(out.text.contains("GET customers"), "{}", out.text);
    // Two pages read, the second the same as the first: then nothing.
    let journal = sandbox.requests();
    assert_eq!(journal.len(), 2, "{journal:?}");
    assert!(journal.iter().all(|e| e.method == "GET"));
    assert_eq!(common::customers(&sandbox), 2500);
    assert_eq!(sandbox.stats().customers_updated, 0);
}
