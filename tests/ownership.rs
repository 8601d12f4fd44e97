//! Nightly syncs that know who owns what: customers gone from the export
//! (`[customer] on_gone`, guarded by `--max-gone`, only over what earlier
//! files of the same job brought) and fields the contact center edits
//! after the first import (`update = "if_empty"` / `"never"`). The real
//! binary against the sandbox, with a real state.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use thulium_import::sandbox::{Sandbox, SandboxConfig};

const PASSWORD: &str = "own-secret";

fn tempdir() -> PathBuf {
    tempfile::tempdir().unwrap().keep()
}

async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxConfig {
        password: PASSWORD.into(),
        ..SandboxConfig::default()
    })
    .await
    .unwrap()
}

/// A mapping matching by identifier, with `extra` appended to `[customer]`.
fn mapping(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let m = dir.join(name);
    std::fs::write(
        &m,
        format!("[source]\ndelimiter = \";\"\n[customer]\nmatch = \"identifier\"\nidentifier = \"ID\"\nsurname = \"Nazwisko\"\nname = \"Imię\"\n{extra}\n"),
    )
    .unwrap();
    m
}

/// An export of customers `K0001..` numbered by `ids`.
fn export(path: &Path, ids: impl IntoIterator<Item = usize>) {
    let mut text = String::from("ID;Imię;Nazwisko\n");
    for i in ids {
        text.push_str(&format!("K{i:04};Imie{i};Nazwisko{i}\n"));
    }
    std::fs::write(path, text).unwrap();
}

async fn night(
    sandbox: &Sandbox,
    dir: &Path,
    csv: &Path,
    mapping: &Path,
    extra: &[&str],
) -> (common::Out, PathBuf) {
    let ledger = dir.join(format!("l{}.jsonl", rand::random::<u64>()));
    let mut cmd = common::run_against(sandbox, PASSWORD, csv, mapping, &ledger);
    cmd.arg("--state").arg(dir.join("state.sqlite")).args(extra);
    (common::output(cmd).await, ledger)
}

/// Five customers the system had before the tool ever ran (an agent's),
/// by id with their fields.
fn system_customers(sandbox: &Sandbox) -> BTreeMap<i64, Value> {
    let mut state = sandbox.shared().lock_state();
    (1..=5)
        .map(|i| {
            let fields = json!({"surname": format!("Agent{i}"), "identifier": format!("S{i}")});
            let id = state.add_customer(fields.as_object().unwrap().clone());
            (id, Value::Null)
        })
        .collect()
}

/// The customers the sandbox holds now, by id.
fn customers_by_id(sandbox: &Sandbox) -> BTreeMap<i64, Value> {
    sandbox.state_json()["customers"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| (c["customer_id"].as_i64().unwrap(), c.clone()))
        .collect()
}

/// Every write request (not a GET) the sandbox had from `from` on.
fn writes_since(sandbox: &Sandbox, from: usize) -> Vec<thulium_import::sandbox::JournalEntry> {
    sandbox.requests()[from..]
        .iter()
        .filter(|e| e.method != "GET")
        .cloned()
        .collect()
}

/// Three nights for each policy: 200 customers imported; 20 of them gone
/// from the second file (10 %, the default --max-gone) are deleted, marked
/// or reported; the third night (the same file) deletes and marks nobody
/// again, and reports the 20 again. The five customers the system had
/// before the tool are never written to.
#[tokio::test(flavor = "multi_thread")]
async fn three_nights_twenty_gone_deleted_marked_reported_and_the_systems_own_untouched() {
    for policy in [
        "on_gone = \"delete\"",
        "on_gone = { custom_field = \"Status\", value = \"usunięty w CRM\" }",
        "on_gone = \"report\"",
    ] {
        let dir = tempdir();
        let sandbox = sandbox().await;
        let own = system_customers(&sandbox);
        let own_before: BTreeMap<i64, Value> = customers_by_id(&sandbox)
            .into_iter()
            .filter(|(id, _)| own.contains_key(id))
            .collect();
        let m = mapping(&dir, "crm.toml", policy);
        // Nightly exports carry dated names: one job, the mapping's.
        let day1 = dir.join("export-1.csv");
        export(&day1, 1..=200);
        let (n1, _) = night(&sandbox, &dir, &day1, &m, &[]).await;
        assert_eq!(n1.code, Some(0), "{policy}: {}", n1.text());
        let ids: BTreeMap<String, i64> = common::by_identifier(&sandbox)
            .into_iter()
            .map(|(k, c)| (k, c["customer_id"].as_i64().unwrap()))
            .collect();
        let gone_ids: Vec<i64> = (181..=200).map(|i| ids[&format!("K{i:04}")]).collect();

        let day2 = dir.join("export-2.csv");
        export(&day2, 1..=180);
        let before = sandbox.requests().len();
        let (n2, ledger2) = night(&sandbox, &dir, &day2, &m, &[]).await;
        assert_eq!(n2.code, Some(0), "{policy}: {}", n2.text());
        let writes = writes_since(&sandbox, before);
        let r2 = common::report(&ledger2);
        let now = customers_by_id(&sandbox);
        if policy.contains("delete") {
            assert_eq!(r2["actions"]["deleted"], 20, "{r2}");
            assert!(gone_ids.iter().all(|id| !now.contains_key(id)));
            assert_eq!(now.len(), 180 + 5);
            assert_eq!(
                writes.iter().filter(|w| w.method == "DELETE").count(),
                20,
                "one DELETE per gone customer"
            );
            // Each kept whole in the undo file first (`undo` lists them).
            let images =
                std::fs::read_to_string(format!("{}.undo.jsonl", ledger2.display())).unwrap();
            let deleted: Vec<Value> = images
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .filter(|i| i["kind"] == "deleted")
                .collect();
            assert_eq!(deleted.len(), 20);
            assert!(deleted
                .iter()
                .all(|d| gone_ids.contains(&d["customer_id"].as_i64().unwrap())
                    && d["fields"]["surname"].is_string()));
        } else if policy.contains("Status") {
            assert_eq!(r2["actions"]["marked"], 20, "{r2}");
            for id in &gone_ids {
                assert_eq!(now[id]["custom_fields"]["Status"], "usunięty w CRM");
            }
            assert_eq!(now.len(), 200 + 5);
        } else {
            assert_eq!(r2["actions"]["gone"], 20, "{r2}");
            assert_eq!(now.len(), 200 + 5);
            assert!(writes.is_empty(), "a report sends nothing: {writes:?}");
        }
        // The ledger names each gone customer by id, with no row.
        let gone_lines: Vec<Value> = std::fs::read_to_string(&ledger2)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["kind"] == "gone")
            .collect();
        let mut named: Vec<i64> = gone_lines
            .iter()
            .map(|l| l["customer_id"].as_i64().unwrap())
            .collect();
        named.sort_unstable();
        assert_eq!(named, gone_ids, "{policy}");
        assert!(n2.stdout.contains("gone from the export"), "{}", n2.text());

        // Night 3: the same export again.
        let day3 = dir.join("export-3.csv");
        export(&day3, 1..=180);
        let before = sandbox.requests().len();
        let (n3, ledger3) = night(&sandbox, &dir, &day3, &m, &[]).await;
        assert_eq!(n3.code, Some(0), "{policy}: {}", n3.text());
        let r3 = common::report(&ledger3);
        let writes = writes_since(&sandbox, before);
        assert!(writes.is_empty(), "{policy}: night 3 writes {writes:?}");
        let reported = if policy.contains("report") { 20 } else { 0 };
        assert_eq!(r3["actions"]["gone"], reported, "{r3}");
        assert_eq!(r3["actions"]["deleted"], 0, "{r3}");
        assert_eq!(r3["actions"]["marked"], 0, "{r3}");

        // The system's own customers: as they were, and never written to.
        let now = customers_by_id(&sandbox);
        for (id, before) in &own_before {
            assert_eq!(&now[id], before, "{policy}: customer {id} changed");
        }
        for w in sandbox.requests().iter().filter(|e| e.method != "GET") {
            for id in own.keys() {
                assert!(
                    !w.path.ends_with(&format!("/customers/{id}")),
                    "{policy}: {} {}",
                    w.method,
                    w.path
                );
                assert!(
                    !w.body
                        .to_string()
                        .contains(&format!("\"customer_id\":{id},")),
                    "{policy}: {} {} {}",
                    w.method,
                    w.path,
                    w.body
                );
            }
        }
    }
}

/// 80 % of the customers gone: a broken export. Refused before anything
/// is sent (exit 2), naming the count and the flag; nobody is deleted.
/// `--max-gone 100%` lets it through.
#[tokio::test(flavor = "multi_thread")]
async fn eighty_percent_gone_is_refused_before_anything_is_sent() {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let m = mapping(&dir, "crm.toml", "on_gone = \"delete\"");
    let csv = dir.join("export.csv");
    export(&csv, 1..=100);
    let (n1, _) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());
    export(&csv, 1..=20);
    let before = sandbox.requests().len();
    let (n2, _) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n2.code, Some(2), "{}", n2.text());
    let text = n2.text();
    assert!(text.contains("lacks 80 of the 100 customers"), "{text}");
    assert!(text.contains("--max-gone 10%"), "{text}");
    assert!(text.contains("Nothing was sent"), "{text}");
    assert!(writes_since(&sandbox, before).is_empty(), "nothing sent");
    assert_eq!(common::customers(&sandbox), 100);
    let (n3, ledger) = night(&sandbox, &dir, &csv, &m, &["--max-gone", "100%"]).await;
    assert_eq!(n3.code, Some(0), "{}", n3.text());
    assert_eq!(common::report(&ledger)["actions"]["deleted"], 80);
    assert_eq!(common::customers(&sandbox), 20);
}

/// An empty export (its header only) is always refused under on_gone,
/// whatever --max-gone says.
#[tokio::test(flavor = "multi_thread")]
async fn an_empty_file_is_refused() {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let m = mapping(&dir, "crm.toml", "on_gone = \"delete\"");
    let csv = dir.join("export.csv");
    export(&csv, 1..=30);
    let (n1, _) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());
    export(&csv, []);
    let before = sandbox.requests().len();
    let (n2, _) = night(&sandbox, &dir, &csv, &m, &["--max-gone", "100%"]).await;
    assert_eq!(n2.code, Some(2), "{}", n2.text());
    assert!(n2.text().contains("the file has no rows"), "{}", n2.text());
    assert!(writes_since(&sandbox, before).is_empty());
    assert_eq!(common::customers(&sandbox), 30);
}

/// Files that are not complete count nobody gone: a pilot (`--limit`), a
/// file with a row that cannot be read (its customer is not known), and a
/// file of another job (a customer seen only by another job's files).
#[tokio::test(flavor = "multi_thread")]
async fn a_pilot_a_read_error_and_another_job_never_count_as_complete() {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let m = mapping(&dir, "crm.toml", "on_gone = \"delete\"");
    let csv = dir.join("export.csv");
    export(&csv, 1..=100);
    let (n1, _) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());

    // A pilot of a file lacking 5: nothing deleted.
    export(&csv, 1..=95);
    let (pilot, _) = night(&sandbox, &dir, &csv, &m, &["--limit", "10"]).await;
    assert_eq!(pilot.code, Some(1), "rows left for retry: {}", pilot.text());
    assert!(
        pilot.text().contains("a pilot (--limit)"),
        "{}",
        pilot.text()
    );
    assert_eq!(common::customers(&sandbox), 100);

    // A row that cannot be decoded (bytes that are not UTF-8): the file
    // does not say who is in it.
    let mut bytes = std::fs::read(&csv).unwrap();
    bytes.extend_from_slice(b"K0200;\xff\xfe;Nazwisko\xff\n");
    std::fs::write(&csv, bytes).unwrap();
    let (broken, ledger) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(broken.code, Some(1), "{}", broken.text());
    assert!(
        broken.text().contains("whose match keys cannot be read"),
        "{}",
        broken.text()
    );
    assert_eq!(common::report(&ledger)["actions"]["deleted"], 0);
    assert_eq!(common::customers(&sandbox), 100);

    // Another job over the same state: it never saw these customers.
    let other = mapping(&dir, "other.toml", "on_gone = \"delete\"");
    let text = std::fs::read_to_string(&other)
        .unwrap()
        .replace("[source]\n", "[source]\njob = \"other\"\n");
    std::fs::write(&other, text).unwrap();
    export(&csv, 1..=95);
    let (n, ledger) = night(&sandbox, &dir, &csv, &other, &[]).await;
    assert_eq!(n.code, Some(0), "{}", n.text());
    assert_eq!(common::report(&ledger)["actions"]["deleted"], 0);
    assert_eq!(common::customers(&sandbox), 100);

    // The job's own complete file: the 5 go.
    let (n, ledger) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n.code, Some(0), "{}", n.text());
    assert_eq!(common::report(&ledger)["actions"]["deleted"], 5);
    assert_eq!(common::customers(&sandbox), 95);
}

/// A mapping matching by identifier, then e-mail (`match` with two keys).
fn two_key_mapping(dir: &Path, extra: &str) -> PathBuf {
    let m = dir.join("two.toml");
    std::fs::write(
        &m,
        format!("[source]\ndelimiter = \";\"\n[customer]\nmatch = [\"identifier\", \"email\"]\nidentifier = \"ID\"\nemail = \"Mail\"\nsurname = \"Nazwisko\"\n{extra}\n"),
    )
    .unwrap();
    m
}

/// Rows `(identifier, e-mail)`, surnames by position.
fn two_key_export(path: &Path, rows: &[(String, String)]) {
    let mut text = String::from("ID;Mail;Nazwisko\n");
    for (i, (id, mail)) in rows.iter().enumerate() {
        text.push_str(&format!("{id};{mail};Nazwisko{i}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// Customer A was brought with an identifier only; an agent gave it an
/// e-mail. Tonight's file brings A under a new identifier with that
/// e-mail: the row matches A by e-mail and updates it. A is not gone (the
/// run's rows resolved to it), so it is not deleted, and the next night
/// (the same file) counts nobody gone either: A's new keys were recorded.
#[tokio::test(flavor = "multi_thread")]
async fn a_customer_tonights_row_matched_by_another_key_is_not_deleted() {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let m = two_key_mapping(&dir, "on_gone = \"delete\"");
    let csv = dir.join("export.csv");
    let mut rows: Vec<(String, String)> = (1..=20)
        .map(|i| (format!("K{i:04}"), format!("k{i}@example.com")))
        .collect();
    rows[0].1 = String::new();
    two_key_export(&csv, &rows);
    let (n1, _) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());
    let a = common::by_identifier(&sandbox)["K0001"]["customer_id"]
        .as_i64()
        .unwrap();
    // An agent's day: A gets an e-mail in Thulium.
    {
        let mut state = sandbox.shared().lock_state();
        let mut fields = state.customers[&a].fields.clone();
        fields.insert("email".into(), json!("a@example.com"));
        state.replace_customer(a, fields);
    }
    // The CRM gives A a new identifier, with that e-mail.
    rows[0] = ("K9001".into(), "a@example.com".into());
    two_key_export(&csv, &rows);
    let (n2, ledger2) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n2.code, Some(0), "{}", n2.text());
    let r2 = common::report(&ledger2);
    assert_eq!(r2["actions"]["deleted"], 0, "{r2}");
    assert_eq!(r2["actions"]["updated"], 1, "{r2}");
    let now = customers_by_id(&sandbox);
    assert_eq!(now[&a]["identifier"], "K9001", "A updated, not deleted");
    assert_eq!(common::customers(&sandbox), 20);

    let (n3, ledger3) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n3.code, Some(0), "{}", n3.text());
    let r3 = common::report(&ledger3);
    assert_eq!(r3["actions"]["deleted"], 0, "{r3}");
    assert_eq!(r3["actions"]["gone"], 0, "{r3}");
    assert_eq!(common::customers(&sandbox), 20);
}

/// Two jobs over one state, two nights each, sharing customers 21..=40.
/// Job x's second file drops 39 and 40; job y still brings them: x only
/// reports them (naming job y) and deletes nothing. When y's own file
/// drops them too, y deletes them (x let them go: no deadlock).
#[tokio::test(flavor = "multi_thread")]
async fn a_customer_another_job_still_brings_is_only_reported() {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let job = |name: &str| {
        let m = mapping(&dir, &format!("{name}.toml"), "on_gone = \"delete\"");
        let text = std::fs::read_to_string(&m)
            .unwrap()
            .replace("[source]\n", &format!("[source]\njob = \"{name}\"\n"));
        std::fs::write(&m, text).unwrap();
        m
    };
    let (x, y) = (job("x"), job("y"));
    let (x_csv, y_csv) = (dir.join("x.csv"), dir.join("y.csv"));
    export(&x_csv, 1..=40);
    export(&y_csv, 21..=60);
    for (m, csv) in [(&x, &x_csv), (&y, &y_csv)] {
        let (n, _) = night(&sandbox, &dir, csv, m, &[]).await;
        assert_eq!(n.code, Some(0), "{}", n.text());
    }
    assert_eq!(common::customers(&sandbox), 60);
    let ids = common::by_identifier(&sandbox);
    let shared: Vec<i64> = [39, 40]
        .iter()
        .map(|i| ids[&format!("K{i:04}")]["customer_id"].as_i64().unwrap())
        .collect();

    // Night 2: x drops 39 and 40, y still brings them.
    export(&x_csv, 1..=38);
    let (n, ledger) = night(&sandbox, &dir, &x_csv, &x, &[]).await;
    assert_eq!(n.code, Some(0), "{}", n.text());
    let r = common::report(&ledger);
    assert_eq!(r["actions"]["deleted"], 0, "{r}");
    assert_eq!(r["actions"]["gone"], 2, "{r}");
    let messages: Vec<Value> = std::fs::read_to_string(&ledger)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["kind"] == "gone")
        .collect();
    assert!(
        messages.iter().all(|g| g["message"]
            .as_str()
            .unwrap()
            .contains("job \"y\" still brings it")),
        "{messages:?}"
    );
    let (n, ledger) = night(&sandbox, &dir, &y_csv, &y, &[]).await;
    assert_eq!(n.code, Some(0), "{}", n.text());
    assert_eq!(common::report(&ledger)["actions"]["deleted"], 0);
    let now = customers_by_id(&sandbox);
    assert!(shared.iter().all(|id| now.contains_key(id)), "still there");
    assert_eq!(now.len(), 60);

    // Night 3: y drops them too: its own, now, and deleted.
    export(&y_csv, (21..=38).chain(41..=60));
    let (n, ledger) = night(&sandbox, &dir, &y_csv, &y, &[]).await;
    assert_eq!(n.code, Some(0), "{}", n.text());
    assert_eq!(common::report(&ledger)["actions"]["deleted"], 2);
    let now = customers_by_id(&sandbox);
    assert!(shared.iter().all(|id| !now.contains_key(id)));
    // And x's next night does not count them again.
    let (n, ledger) = night(&sandbox, &dir, &x_csv, &x, &[]).await;
    assert_eq!(n.code, Some(0), "{}", n.text());
    let r = common::report(&ledger);
    assert_eq!(r["actions"]["gone"], 0, "{r}");
    assert_eq!(r["actions"]["deleted"], 0, "{r}");
}

/// An export whose identifier was blanked on one row: that row's customer
/// is not known, so the file does not say who is gone. Nobody is deleted,
/// and the run's summary and `report` say why (with the row's line), night
/// after night while the row stays broken.
#[tokio::test(flavor = "multi_thread")]
async fn a_blank_key_cell_makes_the_file_incomplete_and_the_summary_says_so() {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let m = mapping(&dir, "crm.toml", "on_gone = \"delete\"");
    let csv = dir.join("export.csv");
    export(&csv, 1..=30);
    let (n1, _) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());
    // Row 7 (line 8) loses its identifier.
    let text = std::fs::read_to_string(&csv)
        .unwrap()
        .replace("K0007;", ";");
    std::fs::write(&csv, text).unwrap();
    for _night in 0..2 {
        let (n, ledger) = night(&sandbox, &dir, &csv, &m, &[]).await;
        let r = common::report(&ledger);
        assert_eq!(r["actions"]["deleted"], 0, "{r}");
        let why = "on_gone: not applied tonight: 1 row whose match keys cannot be read (line 8)";
        assert!(n.stdout.contains(why), "the summary: {}", n.text());
        assert_eq!(
            r["on_gone"], "not applied tonight: 1 row whose match keys cannot be read (line 8)",
            "{r}"
        );
        let text = std::process::Command::new(assert_cmd::cargo::cargo_bin("thulium-import"))
            .arg("report")
            .arg(&ledger)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&text.stdout).contains(why),
            "{}",
            String::from_utf8_lossy(&text.stdout)
        );
        let ids = common::by_identifier(&sandbox);
        assert!(ids.contains_key("K0007"), "K0007 kept");
    }
}

/// The job's match keys change (identifier → identifier and e-mail): the
/// hashes recorded before are of other keys, so nobody is counted gone
/// (not even the customer the file lacks); the record is seeded again and
/// the run says so. The next night compares with the new record.
#[tokio::test(flavor = "multi_thread")]
async fn changed_match_keys_count_nobody_gone_and_reseed_the_record() {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let m = two_key_mapping(&dir, "on_gone = \"delete\"");
    let both = std::fs::read_to_string(&m).unwrap();
    let one = both.replace(
        "match = [\"identifier\", \"email\"]",
        "match = \"identifier\"",
    );
    std::fs::write(&m, &one).unwrap();
    let csv = dir.join("export.csv");
    let rows: Vec<(String, String)> = (1..=30)
        .map(|i| (format!("K{i:04}"), format!("k{i}@example.com")))
        .collect();
    two_key_export(&csv, &rows);
    let (n1, _) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());
    std::fs::write(&m, &both).unwrap();
    two_key_export(&csv, &rows[..29]);
    let (n2, ledger2) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n2.code, Some(0), "{}", n2.text());
    let r2 = common::report(&ledger2);
    assert_eq!(r2["actions"]["deleted"], 0, "{r2}");
    assert!(
        r2["on_gone"]
            .as_str()
            .is_some_and(|s| s.contains("the match keys changed (identifier → email, identifier)")),
        "{r2}"
    );
    assert!(n2.stdout.contains("seeded again"), "{}", n2.text());
    assert_eq!(common::customers(&sandbox), 30);
    // Night 3: one more gone from the reseeded record is deleted.
    two_key_export(&csv, &rows[..28]);
    let (n3, ledger3) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n3.code, Some(0), "{}", n3.text());
    let r3 = common::report(&ledger3);
    assert_eq!(r3["actions"]["deleted"], 1, "{r3}");
    assert!(r3.get("on_gone").is_none(), "{r3}");
    assert_eq!(common::customers(&sandbox), 29);
}

fn policy_mapping(dir: &Path) -> PathBuf {
    let m = dir.join("p.toml");
    std::fs::write(
        &m,
        r#"[source]
delimiter = ";"
[customer]
match = "identifier"
identifier = "ID"
surname = "Nazwisko"
note = { column = "Notatka", update = "if_empty" }
account_manager = { column = "Opiekun", update = "never" }
[customer.custom_fields]
Segment = { column = "Segment", update = "if_empty" }
"#,
    )
    .unwrap();
    m
}

/// Ten customers; `surname(i)` and `manager(i)` per row.
fn policy_export(
    path: &Path,
    surname: impl Fn(usize) -> String,
    manager: impl Fn(usize) -> String,
) {
    let mut text = String::from("ID;Nazwisko;Notatka;Opiekun;Segment\n");
    for i in 1..=10 {
        text.push_str(&format!(
            "P{i:02};{};CRM note {i};{};A\n",
            surname(i),
            manager(i)
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// Agents' edits survive a night that updates their customers: a note and
/// a segment (`if_empty`) they rewrote, an account manager (`never`) they
/// changed; values they emptied are filled again (`if_empty`). The
/// `never` field is set on creation. A row whose only change is its
/// `never` field is `unchanged`: nothing sent.
#[tokio::test(flavor = "multi_thread")]
async fn agents_edits_are_kept_under_if_empty_and_never() {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let m = policy_mapping(&dir);
    let csv = dir.join("crm.csv");
    policy_export(&csv, |i| format!("Nowak{i}"), |_| "j.doe".into());
    let (n1, _) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());
    let c = common::by_identifier(&sandbox);
    assert_eq!(
        c["P01"]["account_manager"], "j.doe",
        "never: set on creation"
    );
    assert_eq!(c["P01"]["note"], "CRM note 1");
    assert_eq!(c["P01"]["custom_fields"]["Segment"], "A");

    // The agents' day.
    {
        let id = |k: &str| c[k]["customer_id"].as_i64().unwrap();
        let mut state = sandbox.shared().lock_state();
        let mut edit = |k: &str, field: &str, v: Value| {
            let fields = &mut state.customers.get_mut(&id(k)).unwrap().fields;
            match field.strip_prefix("custom_fields.") {
                Some(name) => {
                    fields["custom_fields"][name] = v;
                }
                None => {
                    fields.insert(field.into(), v);
                }
            }
        };
        edit("P01", "note", json!("agent's note"));
        edit("P02", "note", json!(""));
        edit("P03", "account_manager", json!("k.wisniewska"));
        edit("P04", "custom_fields.Segment", json!("B"));
        edit("P05", "custom_fields.Segment", Value::Null);
    }
    // The CRM's night: new surnames for 1..=5, a new manager for 6 only.
    policy_export(
        &csv,
        |i| {
            if i <= 5 {
                format!("Kowalska{i}")
            } else {
                format!("Nowak{i}")
            }
        },
        |i| {
            if i == 6 {
                "a.nowak".into()
            } else {
                "j.doe".into()
            }
        },
    );
    let before = sandbox.requests().len();
    let (n2, ledger) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n2.code, Some(0), "{}", n2.text());
    let c = common::by_identifier(&sandbox);
    for i in 1..=5 {
        assert_eq!(c[&format!("P{i:02}")]["surname"], format!("Kowalska{i}"));
    }
    assert_eq!(c["P01"]["note"], "agent's note", "if_empty: kept");
    assert_eq!(c["P02"]["note"], "CRM note 2", "if_empty: filled again");
    assert_eq!(c["P03"]["account_manager"], "k.wisniewska", "never: kept");
    assert_eq!(c["P04"]["custom_fields"]["Segment"], "B", "if_empty: kept");
    assert_eq!(
        c["P05"]["custom_fields"]["Segment"], "A",
        "if_empty: filled again"
    );
    assert_eq!(c["P06"]["account_manager"], "j.doe", "never: not sent");
    let r = common::report(&ledger);
    assert_eq!(r["actions"]["updated"], 5, "{r}");
    assert_eq!(r["actions"]["unchanged"], 5, "{r}");
    // Only the five changed customers were written to, and no update
    // carries a never field or a kept value.
    let puts: Vec<Value> = writes_since(&sandbox, before)
        .into_iter()
        .map(|w| w.body)
        .collect();
    let sent: Vec<&Value> = puts
        .iter()
        .flat_map(|b| b["customers"].as_array().unwrap())
        .collect();
    assert_eq!(sent.len(), 5, "{puts:?}");
    for s in &sent {
        assert!(s.get("account_manager").is_none(), "{s}");
    }
    let p6 = c["P06"]["customer_id"].as_i64().unwrap();
    assert!(sent.iter().all(|s| s["customer_id"] != p6));
}

/// A mapping without policies hashes its updates as before policies
/// existed (the payload itself): states written by earlier versions stay
/// valid, and their rows `unchanged`.
#[test]
fn a_policy_free_mapping_hashes_as_before() {
    let dir = tempdir();
    let m = mapping(&dir, "crm.toml", "clear_empty = true\nnote = \"Imię\"");
    let csv = dir.join("e.csv");
    export(&csv, 1..=20);
    let mut input = thulium_import::check::Input::open(&csv, &m).unwrap();
    let upsert = input.plan.upsert().cloned();
    assert!(upsert.as_ref().unwrap().policies.is_empty());
    let mut n = 0;
    while let Some(row) = input.source.next_row() {
        let row = row.unwrap().unwrap();
        let p = input.plan.map_row(&row).unwrap();
        let shape = thulium_import::pipeline::customer_shape(upsert.as_ref(), &p).unwrap();
        // What earlier versions hashed: the customer, cleared cells added.
        let before = p.customer.as_ref().unwrap().clearing(&p.cleared);
        assert_eq!(
            thulium_import::hash::payload_hash(&shape),
            thulium_import::hash::payload_hash(&before)
        );
        // And an update sends it whole, current values or not.
        let sent = thulium_import::pipeline::customer_update(upsert.as_ref(), &p, None).unwrap();
        assert_eq!(sent.fields, before);
        assert!(sent.not_known.is_empty());
        n += 1;
    }
    assert_eq!(n, 20);
}

/// `update` is checked: a value that is none of the three names its key;
/// it is refused where an update cannot leave a field alone.
#[test]
fn a_wrong_update_names_its_key() {
    let dir = tempdir();
    let csv = dir.join("e.csv");
    export(&csv, 1..=2);
    for (extra, key, says) in [
        (
            "note = { column = \"Imię\", update = \"sometimes\" }",
            "customer.note",
            "update must be",
        ),
        ("update = \"nie\"", "customer.update", "update must be"),
        ("on_gone = \"burn\"", "customer.on_gone", "on_gone must be"),
    ] {
        let m = mapping(&dir, "bad.toml", extra);
        let e = thulium_import::check::Input::open(&csv, &m)
            .unwrap_err()
            .to_string();
        assert!(e.contains(key) && e.contains(says), "{extra}: {e}");
    }
    let m = dir.join("feed.toml");
    std::fs::write(
        &m,
        "[source]\ndelimiter = \";\"\n[customer]\nsurname = \"Nazwisko\"\n[feed]\nmessage = { column = \"Imię\", update = \"never\" }\ntime = { value = \"2024-01-01T10:00:00\" }\n",
    )
    .unwrap();
    let e = thulium_import::check::Input::open(&csv, &m)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("feed.message") && e.contains("update applies to"),
        "{e}"
    );
}

/// A mapping with a field-group block: channel (field 12) `never`,
/// comment (10) `if_empty`, orders (8) `always`.
fn group_mapping(dir: &Path) -> PathBuf {
    let m = dir.join("g.toml");
    std::fs::write(
        &m,
        r#"[source]
delimiter = ";"
[customer]
match = "identifier"
identifier = "ID"
surname = "Nazwisko"

[[field_group]]
group_id = 2
[field_group.values]
12 = { column = "Kanal", update = "never" }
10 = { column = "Komentarz", update = "if_empty" }
8 = { column = "Zamowienia", type = "integer" }
"#,
    )
    .unwrap();
    m
}

/// Six customers; night `n` gives each its own channel, comment and
/// orders.
fn group_export(path: &Path, n: usize) {
    let mut text = String::from("ID;Nazwisko;Kanal;Komentarz;Zamowienia\n");
    for i in 1..=6 {
        text.push_str(&format!(
            "F{i:02};Nowak{i};CRM{n} channel {i};CRM{n} comment {i};{}\n",
            n * 100 + i
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// The values of the customer's only item in field group 2, by field id.
fn item_of(sandbox: &Sandbox, customer_id: i64) -> (i64, BTreeMap<i64, Value>) {
    let state = sandbox.shared().lock_state();
    let items: Vec<_> = state
        .field_group_items
        .iter()
        .filter(|i| i.customer_id == customer_id && i.group_id == 2)
        .collect();
    assert_eq!(items.len(), 1, "one item per customer: {items:?}");
    let values = items[0]
        .values
        .iter()
        .map(|v| (v["field_id"].as_i64().unwrap(), v["value"].clone()))
        .collect();
    (items[0].item_id, values)
}

/// What an agent does in the panel, through the API: `PUT
/// customer_field_group_items/:id` with the values given.
async fn agent_edits(sandbox: &Sandbox, item_id: i64, values: Value) {
    let answer = reqwest::Client::new()
        .put(format!(
            "{}/api/customer_field_group_items/{item_id}",
            sandbox.url()
        ))
        .basic_auth("api_user", Some(PASSWORD))
        .json(&json!({ "values": values }))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
}

/// Field-group values under `never` and `if_empty`, end to end: night 1
/// creates each item with every value; agents edit both values of one
/// customer's item and empty the `if_empty` value of another's (through
/// the API); night 2 brings new values for all three fields. The agents'
/// values stay, the emptied `if_empty` value is filled again, the
/// `always` value is updated everywhere, and no update carries the
/// `never` field.
#[tokio::test(flavor = "multi_thread")]
async fn field_group_values_keep_agents_edits_under_never_and_if_empty() {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let m = group_mapping(&dir);
    let csv = dir.join("crm.csv");
    group_export(&csv, 1);
    let (n1, _) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());
    let ids: BTreeMap<String, i64> = common::by_identifier(&sandbox)
        .into_iter()
        .map(|(k, c)| (k, c["customer_id"].as_i64().unwrap()))
        .collect();
    let (_, created) = item_of(&sandbox, ids["F01"]);
    assert_eq!(created[&12], "CRM1 channel 1", "never: set on creation");
    assert_eq!(created[&10], "CRM1 comment 1", "if_empty: set on creation");
    assert_eq!(created[&8], 101);

    // The agents' day, in the panel.
    let (item1, _) = item_of(&sandbox, ids["F01"]);
    agent_edits(
        &sandbox,
        item1,
        json!([{"field_id": 12, "value": "agent's channel"}, {"field_id": 10, "value": "agent's comment"}]),
    )
    .await;
    let (item2, _) = item_of(&sandbox, ids["F02"]);
    agent_edits(&sandbox, item2, json!([{"field_id": 10, "value": ""}])).await;
    let (item3, _) = item_of(&sandbox, ids["F03"]);
    agent_edits(&sandbox, item3, json!([{"field_id": 12, "value": ""}])).await;

    group_export(&csv, 2);
    let before = sandbox.requests().len();
    let (n2, ledger) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n2.code, Some(0), "{}", n2.text());
    let r = common::report(&ledger);
    assert_eq!(r["stages"]["field_group"]["ok"], 6, "{r}");

    let (_, f1) = item_of(&sandbox, ids["F01"]);
    assert_eq!(f1[&12], "agent's channel", "never: the agent's value stays");
    assert_eq!(
        f1[&10], "agent's comment",
        "if_empty: the agent's value stays"
    );
    assert_eq!(f1[&8], 201, "always: updated");
    let (_, f2) = item_of(&sandbox, ids["F02"]);
    assert_eq!(f2[&10], "CRM2 comment 2", "if_empty: emptied, filled again");
    assert_eq!(f2[&12], "CRM1 channel 2", "never: night 1's value");
    let (_, f3) = item_of(&sandbox, ids["F03"]);
    assert_eq!(f3[&12], "", "never: emptied by an agent, left empty");
    assert_eq!(f3[&10], "CRM1 comment 3", "if_empty: not empty, kept");
    for k in ["F04", "F05", "F06"] {
        let (_, v) = item_of(&sandbox, ids[k]);
        assert!(v[&10].as_str().unwrap().starts_with("CRM1 comment"), "{k}");
        assert!(v[&12].as_str().unwrap().starts_with("CRM1 channel"), "{k}");
        assert!(v[&8].as_i64().unwrap() > 200, "{k}");
    }

    // What night 2 sent: one item update per customer, none carrying the
    // never field, the if_empty field only to the item an agent emptied.
    let puts: Vec<_> = writes_since(&sandbox, before)
        .into_iter()
        .filter(|w| w.path.starts_with("/api/customer_field_group_items/"))
        .collect();
    assert_eq!(puts.len(), 6, "{puts:?}");
    for p in &puts {
        let fields: Vec<i64> = p.body["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["field_id"].as_i64().unwrap())
            .collect();
        assert!(!fields.contains(&12), "never sent: {p:?}");
        let to_emptied = p.path.ends_with(&format!("/{item2}"));
        assert_eq!(fields.contains(&10), to_emptied, "{p:?}");
    }
}

/// A stop signal (SIGTERM) while the gone customers are being deleted:
/// the DELETE in flight is finished and recorded, no other is sent, the
/// ones not deleted are recorded as such, the ledger ends `aborted`, exit
/// 3. The next complete file deletes the rest, each customer once.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_the_deletions_stops_between_two_and_the_next_file_does_the_rest() {
    let dir = tempdir();
    // Every call takes 200 ms: the 20 deletions take four seconds.
    let sandbox = Sandbox::start(SandboxConfig {
        password: PASSWORD.into(),
        latency: std::time::Duration::from_millis(200),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let m = mapping(&dir, "crm.toml", "on_gone = \"delete\"");
    let csv = dir.join("export-1.csv");
    export(&csv, 1..=40);
    let (n1, _) = night(&sandbox, &dir, &csv, &m, &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());

    let day2 = dir.join("export-2.csv");
    export(&day2, 1..=20);
    let ledger = dir.join("night2.jsonl");
    let before = sandbox.requests().len();
    let mut cmd = common::run_against(&sandbox, PASSWORD, &day2, &m, &ledger);
    cmd.arg("--state")
        .arg(dir.join("state.sqlite"))
        .args(["--max-gone", "100%"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    // The first DELETE has reached the sandbox: stop the night.
    let deletes = |from: usize| {
        writes_since(&sandbox, from)
            .iter()
            .filter(|w| w.method == "DELETE")
            .count()
    };
    for _ in 0..600 {
        if deletes(before) > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(deletes(before) > 0, "the deletions began");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(3), "{text}");
    let sent = deletes(before);
    assert!(sent < 20, "stopped before the end: {sent} DELETEs");
    let r = common::report(&ledger);
    assert!(r["aborted"].as_str().unwrap().contains("SIGTERM"), "{r}");
    assert_eq!(
        r["actions"]["deleted"], sent,
        "each DELETE sent is recorded: {r}"
    );
    assert_eq!(
        r["gone_failed"],
        20 - sent as u64,
        "the rest, not sent: {r}"
    );
    assert_eq!(common::customers(&sandbox), 40 - sent);

    // The next night's complete file: the rest go, none twice.
    let day3 = dir.join("export-3.csv");
    export(&day3, 1..=20);
    let before = sandbox.requests().len();
    let (n3, ledger3) = night(&sandbox, &dir, &day3, &m, &["--max-gone", "100%"]).await;
    assert_eq!(n3.code, Some(0), "{}", n3.text());
    assert_eq!(
        common::report(&ledger3)["actions"]["deleted"],
        20 - sent as u64
    );
    assert_eq!(deletes(before), 20 - sent);
    assert_eq!(common::customers(&sandbox), 20);
}

/// Customers with e-mail, phone, an address part and a custom field, for
/// `undo` of a night's gone handling: `on_gone` given.
fn full_mapping(dir: &Path, on_gone: &str) -> PathBuf {
    let m = dir.join("full.toml");
    std::fs::write(
        &m,
        format!(
            "[source]\ndelimiter = \";\"\n[customer]\nmatch = \"identifier\"\nidentifier = \"ID\"\nsurname = \"Nazwisko\"\nname = \"Imię\"\nemail = \"Email\"\nphone_number = \"Tel\"\n{on_gone}\n[customer.address]\ncity = \"Miasto\"\n[customer.custom_fields]\n\"Segment\" = \"Segment\"\n\"Status\" = \"Status\"\n"
        ),
    )
    .unwrap();
    m
}

fn full_export(path: &Path, ids: impl IntoIterator<Item = usize>) {
    let mut text = String::from("ID;Imię;Nazwisko;Email;Tel;Miasto;Segment;Status\n");
    for i in ids {
        text.push_str(&format!(
            "K{i:04};Imie{i};Nazwisko{i};k{i}@example.pl;48600{i:06};Miasto{i};Seg{};aktywny\n",
            i % 3
        ));
    }
    std::fs::write(path, text).unwrap();
}

/// `undo <LEDGER>` against the sandbox (the state: the one the night used).
async fn undo(sandbox: &Sandbox, ledger: &Path, extra: &[&str]) -> common::Out {
    let mut cmd = common::bin(PASSWORD);
    cmd.arg("undo")
        .arg(ledger)
        .args(["--url", &sandbox.url(), "--user", "api_user"])
        .args(["--rate", "5000", "--max-consecutive-failures", "0"])
        .args(extra);
    common::output(cmd).await
}

/// A customer as the sandbox holds it, without what is not its data (its
/// id, `updated_at`, the flag that lets read-only custom fields be
/// written again).
fn data_of(c: &Value) -> Value {
    let mut c = c.clone();
    for k in ["customer_id", "updated_at", "fill_read_only_custom_fields"] {
        c.as_object_mut().unwrap().remove(k);
    }
    c
}

/// How many customers hold each identifier (never two, after an undo).
fn per_identifier(sandbox: &Sandbox) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for c in sandbox.state_json()["customers"]
        .as_object()
        .unwrap()
        .values()
    {
        if let Some(i) = c["identifier"].as_str() {
            *n.entry(i.to_string()).or_default() += 1;
        }
    }
    n
}

/// The ids the gone lines of a ledger name.
fn gone_named(ledger: &Path) -> Vec<i64> {
    let mut ids: Vec<i64> = std::fs::read_to_string(ledger)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["kind"] == "gone")
        .map(|l| l["customer_id"].as_i64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

/// Night 1 imports 40; night 2 lacks 5, deleted under `on_gone =
/// "delete"`. `undo --dry-run` of night 2 sends nothing; `undo` creates
/// the 5 again from their before-images (every field as before, a new
/// id), exit 0, and run again sends nothing. Night 3 has them again:
/// present (nobody gone, nobody created twice); night 4 lacks them again:
/// gone again, deleted under their new ids.
#[tokio::test(flavor = "multi_thread")]
async fn undo_of_a_night_brings_the_deleted_back_under_new_ids_and_the_next_nights_follow() {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let m = full_mapping(&dir, "on_gone = \"delete\"");
    let day1 = dir.join("export-1.csv");
    full_export(&day1, 1..=40);
    let (n1, _) = night(&sandbox, &dir, &day1, &m, &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());
    let gone: Vec<String> = (36..=40).map(|i| format!("K{i:04}")).collect();
    let before = common::by_identifier(&sandbox);
    let old_ids: Vec<i64> = gone
        .iter()
        .map(|k| before[k]["customer_id"].as_i64().unwrap())
        .collect();

    let day2 = dir.join("export-2.csv");
    full_export(&day2, 1..=35);
    let (n2, ledger2) = night(&sandbox, &dir, &day2, &m, &["--max-gone", "20%"]).await;
    assert_eq!(n2.code, Some(0), "{}", n2.text());
    assert_eq!(common::report(&ledger2)["actions"]["deleted"], 5);
    assert_eq!(common::customers(&sandbox), 35);

    // A dry run: says what it would do, sends and writes nothing.
    let from = sandbox.requests().len();
    let dry = undo(&sandbox, &ledger2, &["--dry-run"]).await;
    assert_eq!(dry.code, Some(0), "{}", dry.text());
    assert!(
        dry.stdout.contains("undo (dry run): would reverse 5"),
        "{}",
        dry.stdout
    );
    assert!(writes_since(&sandbox, from).is_empty());
    assert!(!PathBuf::from(format!("{}.undo-ledger.jsonl", ledger2.display())).exists());

    let from = sandbox.requests().len();
    let out = undo(&sandbox, &ledger2, &["--json"]).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let writes = writes_since(&sandbox, from);
    assert_eq!(writes.len(), 5, "one POST each: {writes:?}");
    assert!(writes
        .iter()
        .all(|w| w.method == "POST" && w.path.ends_with("batch/customers")));
    let j: Value = serde_json::from_str(&out.stdout).unwrap();
    let targets = j["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 5, "{j}");
    for t in targets {
        assert_eq!(t["undo"], "recreate", "{t}");
        assert_eq!(t["outcome"], "reversed", "{t}");
        assert!(old_ids.contains(&t["customer_id"].as_i64().unwrap()));
        let m = t["message"].as_str().unwrap();
        assert!(
            m.contains("NEW id") && m.contains("not brought back"),
            "{m}"
        );
    }
    // Back with every field, under new ids.
    let now = common::by_identifier(&sandbox);
    assert_eq!(common::customers(&sandbox), 40);
    for (k, old) in gone.iter().zip(&old_ids) {
        let c = &now[k];
        let new = c["customer_id"].as_i64().unwrap();
        assert_ne!(new, *old, "{k}: a new id");
        assert!(
            targets.iter().any(|t| t["new_customer_id"] == new),
            "{k}: its new id said"
        );
        assert_eq!(data_of(c), data_of(&before[k]), "{k}");
    }
    // Run again: settled, nothing sent twice.
    let from = sandbox.requests().len();
    let again = undo(&sandbox, &ledger2, &[]).await;
    assert_eq!(again.code, Some(0), "{}", again.text());
    assert!(writes_since(&sandbox, from).is_empty());
    assert_eq!(common::report(&ledger2)["undo"]["counts"]["reversed"], 5);

    // Night 3: they are in the export again: present, none created twice.
    let day3 = dir.join("export-3.csv");
    full_export(&day3, 1..=40);
    let from = sandbox.requests().len();
    let (n3, ledger3) = night(&sandbox, &dir, &day3, &m, &[]).await;
    assert_eq!(n3.code, Some(0), "{}", n3.text());
    let r3 = common::report(&ledger3);
    assert_eq!(r3["actions"]["deleted"], 0, "{r3}");
    assert_eq!(r3["actions"]["created"], 0, "{r3}");
    assert!(writes_since(&sandbox, from)
        .iter()
        .all(|w| w.method != "DELETE" && w.method != "POST"));
    assert!(per_identifier(&sandbox).values().all(|n| *n == 1));
    let new_ids: Vec<i64> = gone
        .iter()
        .map(|k| {
            common::by_identifier(&sandbox)[k]["customer_id"]
                .as_i64()
                .unwrap()
        })
        .collect();

    // Night 4: they are gone again, under their new ids.
    let day4 = dir.join("export-4.csv");
    full_export(&day4, 1..=35);
    let (n4, ledger4) = night(&sandbox, &dir, &day4, &m, &["--max-gone", "20%"]).await;
    assert_eq!(n4.code, Some(0), "{}", n4.text());
    assert_eq!(common::report(&ledger4)["actions"]["deleted"], 5);
    let mut expected = new_ids.clone();
    expected.sort_unstable();
    assert_eq!(gone_named(&ledger4), expected);
    assert_eq!(common::customers(&sandbox), 35);
}

/// The POSTs of an undo under faults that leave their outcome unknown
/// (the customer created, the answer lost): the next undo looks each up
/// before any second POST and takes the one it finds as its own. Run
/// until everything is reversed: one customer per identifier throughout.
/// The next night, still without them, counts them gone again (new ids).
#[tokio::test(flavor = "multi_thread")]
async fn an_undo_whose_creations_outcome_is_lost_never_makes_two_customers() {
    let dir = tempdir();
    let sandbox = Sandbox::start(SandboxConfig {
        password: PASSWORD.into(),
        retry_after_secs: 0,
        faults: vec![thulium_import::sandbox::FaultKind::DropAfter],
        seed: 3,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let m = full_mapping(&dir, "on_gone = \"delete\"");
    let day1 = dir.join("export-1.csv");
    full_export(&day1, 1..=40);
    let (n1, _) = night(&sandbox, &dir, &day1, &m, &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());
    let before = common::by_identifier(&sandbox);
    let day2 = dir.join("export-2.csv");
    full_export(&day2, 1..=35);
    let (n2, ledger2) = night(&sandbox, &dir, &day2, &m, &["--max-gone", "20%"]).await;
    assert_eq!(n2.code, Some(0), "{}", n2.text());

    sandbox.set_fault_rate(0.5);
    let mut done = false;
    for _ in 0..10 {
        let out = undo(&sandbox, &ledger2, &[]).await;
        assert!(per_identifier(&sandbox).values().all(|n| *n == 1));
        assert!(common::customers(&sandbox) <= 40);
        if out.code == Some(0) {
            done = true;
            break;
        }
        assert_eq!(out.code, Some(1), "{}", out.text());
    }
    sandbox.set_fault_rate(0.0);
    assert!(done, "undo ends with everything reversed");
    let stats = sandbox.stats();
    assert!(
        stats.faults_by_endpoint["POST /api/batch/customers"]["drop_after"] > 0,
        "a creation's answer was lost: {:?}",
        stats.faults_by_endpoint
    );
    let undo_ledger =
        std::fs::read_to_string(format!("{}.undo-ledger.jsonl", ledger2.display())).unwrap();
    assert!(
        undo_ledger.contains("the earlier undo's creation"),
        "a lost answer found by lookup: {undo_ledger}"
    );
    assert_eq!(common::customers(&sandbox), 40);
    let now = common::by_identifier(&sandbox);
    let mut new_ids = Vec::new();
    for i in 36..=40 {
        let k = format!("K{i:04}");
        assert_eq!(data_of(&now[&k]), data_of(&before[&k]), "{k}");
        new_ids.push(now[&k]["customer_id"].as_i64().unwrap());
    }
    // The next night still lacks them: the undo gave them back to the
    // job's record under their new ids, so they are gone again.
    let day3 = dir.join("export-3.csv");
    full_export(&day3, 1..=35);
    let (n3, ledger3) = night(&sandbox, &dir, &day3, &m, &["--max-gone", "20%"]).await;
    assert_eq!(n3.code, Some(0), "{}", n3.text());
    new_ids.sort_unstable();
    assert_eq!(gone_named(&ledger3), new_ids);
    assert_eq!(common::customers(&sandbox), 35);
}

/// `on_gone` marking: each gone customer's old value of the field goes to
/// the undo file before the PUT, and `undo` puts it back; one an agent
/// changed since the mark is kept (exit 1). Night 3, with them in the
/// export again, counts nobody gone.
#[tokio::test(flavor = "multi_thread")]
async fn undo_of_a_mark_puts_the_field_back_and_keeps_an_agents_change() {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let m = full_mapping(
        &dir,
        "on_gone = { custom_field = \"Status\", value = \"usunięty w CRM\" }",
    );
    let day1 = dir.join("export-1.csv");
    full_export(&day1, 1..=40);
    let (n1, _) = night(&sandbox, &dir, &day1, &m, &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());
    let day2 = dir.join("export-2.csv");
    full_export(&day2, 1..=35);
    let (n2, ledger2) = night(&sandbox, &dir, &day2, &m, &["--max-gone", "20%"]).await;
    assert_eq!(n2.code, Some(0), "{}", n2.text());
    assert_eq!(common::report(&ledger2)["actions"]["marked"], 5);
    let images = std::fs::read_to_string(format!("{}.undo.jsonl", ledger2.display())).unwrap();
    let marked: Vec<Value> = images
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|i| i["kind"] == "marked")
        .collect();
    assert_eq!(marked.len(), 5);
    assert!(marked
        .iter()
        .all(|i| i["before"]["custom_fields.Status"] == "aktywny"));
    // An agent sets one marked customer's Status by hand.
    let ids = common::by_identifier(&sandbox);
    let edited = ids["K0040"]["customer_id"].as_i64().unwrap();
    let answer = reqwest::Client::new()
        .put(format!("{}/api/batch/customers", sandbox.url()))
        .basic_auth("api_user", Some(PASSWORD))
        .json(&json!({"customers": [{"customer_id": edited, "custom_fields": {"Status": "zamknięty"}}]}))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());

    let out = undo(&sandbox, &ledger2, &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(
        out.stdout.contains("undo: 4 reversed, 1 kept"),
        "{}",
        out.stdout
    );
    let now = common::by_identifier(&sandbox);
    for i in 36..=39 {
        assert_eq!(
            now[&format!("K{i:04}")]["custom_fields"]["Status"],
            "aktywny"
        );
    }
    assert_eq!(now["K0040"]["custom_fields"]["Status"], "zamknięty");

    // Night 3: all back in the export; nobody gone, nobody marked.
    let day3 = dir.join("export-3.csv");
    full_export(&day3, 1..=40);
    let (n3, ledger3) = night(&sandbox, &dir, &day3, &m, &[]).await;
    assert_eq!(n3.code, Some(0), "{}", n3.text());
    let r3 = common::report(&ledger3);
    assert_eq!(r3["actions"]["marked"], 0, "{r3}");
    assert_eq!(r3["actions"]["gone"], 0, "{r3}");
}

/// A deleted customer someone created again before the undo (found by its
/// identifier) is `kept`, not created twice; the others come back.
#[tokio::test(flavor = "multi_thread")]
async fn undo_keeps_a_deleted_customer_someone_created_again() {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let m = full_mapping(&dir, "on_gone = \"delete\"");
    let day1 = dir.join("export-1.csv");
    full_export(&day1, 1..=40);
    let (n1, _) = night(&sandbox, &dir, &day1, &m, &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());
    let day2 = dir.join("export-2.csv");
    full_export(&day2, 1..=35);
    let (n2, ledger2) = night(&sandbox, &dir, &day2, &m, &["--max-gone", "20%"]).await;
    assert_eq!(n2.code, Some(0), "{}", n2.text());
    // An agent creates K0036 again by hand, with only its surname.
    let answer = reqwest::Client::new()
        .post(format!("{}/api/batch/customers", sandbox.url()))
        .basic_auth("api_user", Some(PASSWORD))
        .json(&json!({"customers": [{"identifier": "K0036", "surname": "Ręcznie"}]}))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());

    let out = undo(&sandbox, &ledger2, &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(
        out.stdout.contains("undo: 4 reversed, 1 kept"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("not created twice"), "{}", out.stdout);
    assert!(per_identifier(&sandbox).values().all(|n| *n == 1));
    assert_eq!(common::customers(&sandbox), 40);
    assert_eq!(
        common::by_identifier(&sandbox)["K0036"]["surname"],
        "Ręcznie"
    );
}
