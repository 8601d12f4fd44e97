//! "Thulium is the truth": what the tool cannot prove undone it does not
//! do again, and what a call did not do is not reported as done. Feed
//! records sent once per customer and message whatever happened to the
//! state; field-group items kept apart by identity (two contracts per
//! customer); campaign records already there whose status the API cannot
//! change recorded `kept`. Each test drives the real binary against the
//! in-process sandbox and reads the ledger, the sandbox's model and its
//! request journal.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;
use common::report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thulium_import::sandbox::{Sandbox, SandboxConfig};

const PASSWORD: &str = "truth-secret";

async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxConfig {
        password: PASSWORD.into(),
        retry_after_secs: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap()
}

fn tempdir() -> PathBuf {
    tempfile::tempdir().unwrap().keep()
}

/// A `;`-separated UTF-8 file: the header, then the rows.
fn write_csv(path: &Path, header: &[&str], rows: &[Vec<String>]) {
    let mut w = csv::WriterBuilder::new()
        .delimiter(b';')
        .from_path(path)
        .unwrap();
    w.write_record(header).unwrap();
    for r in rows {
        w.write_record(r).unwrap();
    }
    w.flush().unwrap();
}

struct Out {
    code: Option<i32>,
    text: String,
    ledger: Vec<Value>,
}

impl Out {
    /// The row events of one stage.
    fn events(&self, stage: &str) -> Vec<&Value> {
        self.ledger
            .iter()
            .filter(|e| e["kind"] == "row" && e["stage"] == stage)
            .collect()
    }
}

async fn run(sandbox: &Sandbox, csv: &Path, mapping: &Path, ledger: &Path, extra: &[&str]) -> Out {
    let mut cmd = common::run_against(sandbox, PASSWORD, csv, mapping, ledger);
    cmd.args(["--force-new-ledger", "--max-consecutive-failures", "0"])
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

/// The journal's requests after the first `mark` of one method whose path
/// starts with `prefix`.
fn sent_since(
    sandbox: &Sandbox,
    mark: usize,
    method: &str,
    prefix: &str,
) -> Vec<thulium_import::sandbox::JournalEntry> {
    sandbox
        .requests()
        .into_iter()
        .skip(mark)
        .filter(|e| e.method == method && e.path.starts_with(prefix))
        .collect()
}

// ---------------------------------------------------------------------
// Campaign records already there: `kept`.
// ---------------------------------------------------------------------

const CAMPAIGN_MAPPING: &str = "[source]\ndelimiter = \";\"\n\n\
    [customer]\nmatch = \"identifier\"\nsurname = \"Nazwisko\"\nidentifier = \"ID\"\n\n\
    [campaign]\nid = { value = \"00001\" }\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_record_already_in_the_campaign_with_another_status_is_kept_not_ok() {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let header = ["ID", "Nazwisko", "Status"];
    let rows = |changed: usize| -> Vec<Vec<String>> {
        (0..20)
            .map(|n| {
                let status = if n < changed { "2" } else { "1" };
                vec![format!("C-{n}"), format!("Nowak {n}"), status.to_string()]
            })
            .collect()
    };
    let with_status = dir.join("status.toml");
    std::fs::write(
        &with_status,
        format!("{CAMPAIGN_MAPPING}status_id = {{ column = \"Status\", type = \"integer\" }}\n"),
    )
    .unwrap();
    let plain = dir.join("plain.toml");
    std::fs::write(&plain, CAMPAIGN_MAPPING).unwrap();
    let state = dir.join("state.sqlite");
    let state = state.to_str().unwrap();

    // Night 1: twenty customers into the campaign with status 1.
    let csv1 = dir.join("n1.csv");
    write_csv(&csv1, &header, &rows(0));
    let n1 = run(
        &sandbox,
        &csv1,
        &with_status,
        &dir.join("1.jsonl"),
        &["--state", state],
    )
    .await;
    assert_eq!(n1.code, Some(0), "{}", n1.text);
    assert_eq!(report(&dir.join("1.jsonl"))["actions"]["kept"], 0);

    // Night 2: five of them ask for status 2. The API cannot change a record
    // that is there: those five are kept (ok, with the reason), the fifteen
    // others are unchanged by the state and not even sent.
    let csv2 = dir.join("n2.csv");
    write_csv(&csv2, &header, &rows(5));
    let n2 = run(
        &sandbox,
        &csv2,
        &with_status,
        &dir.join("2.jsonl"),
        &["--state", state],
    )
    .await;
    assert_eq!(n2.code, Some(0), "{}", n2.text);
    let kept: Vec<&Value> = n2
        .events("campaign")
        .into_iter()
        .filter(|e| e["action"] == "kept")
        .collect();
    assert_eq!(kept.len(), 5, "{:?}", n2.events("campaign"));
    for e in &kept {
        assert_eq!(e["status"], "ok");
        assert_eq!(e["message"], "already in the campaign; status not changed");
        assert!(e["row"].as_u64().unwrap() <= 5, "{e}");
    }
    let r = report(&dir.join("2.jsonl"));
    assert_eq!(r["actions"]["kept"], 5, "{r}");
    assert!(n2.text.contains("kept: 5"), "{}", n2.text);
    // The sandbox still has status 1 for everyone: nothing changed it.
    let statuses: Vec<Value> = sandbox.state_json()["campaigns"]["00001"]["by_customer"]
        .as_object()
        .map(|m| m.values().map(|r| r["status_id"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(statuses.len(), 20, "{}", sandbox.state_json()["campaigns"]);
    assert!(statuses.iter().all(|s| s == 1), "{statuses:?}");

    // Night 3, the same file: the kept rows' new hash was not remembered, so
    // they are tried (and kept) again; the others stay unchanged.
    let mark = sandbox.requests().len();
    let n3 = run(
        &sandbox,
        &csv2,
        &with_status,
        &dir.join("3.jsonl"),
        &["--state", state],
    )
    .await;
    assert_eq!(n3.code, Some(0), "{}", n3.text);
    let records: usize = sent_since(&sandbox, mark, "POST", "/api/batch/crm_outbounds/")
        .iter()
        .map(|e| e.body["records"].as_array().unwrap().len())
        .sum();
    assert_eq!(records, 5);
    assert_eq!(report(&dir.join("3.jsonl"))["actions"]["kept"], 5);
    let r3 = report(&dir.join("3.jsonl"));
    assert_eq!(r3["actions"]["unchanged"], 20, "{r3}");

    // A row that asks nothing beyond the customer: "already in the
    // campaign" is what it asked, plain ok.
    let n4 = run(&sandbox, &csv2, &plain, &dir.join("4.jsonl"), &[]).await;
    assert_eq!(n4.code, Some(0), "{}", n4.text);
    let campaign = n4.events("campaign");
    assert_eq!(campaign.len(), 20);
    for e in campaign {
        assert_eq!(e["status"], "ok");
        assert!(e["action"].is_null(), "{e}");
        assert_eq!(e["message"], "already in the campaign");
    }
    assert_eq!(report(&dir.join("4.jsonl"))["actions"]["kept"], 0);
}

// ---------------------------------------------------------------------
// Feed records: once per customer and message.
// ---------------------------------------------------------------------

const FEED_MAPPING: &str = "[source]\ndelimiter = \";\"\n\n\
    [customer]\nmatch = \"identifier\"\nsurname = \"Nazwisko\"\nidentifier = \"ID\"\n\n\
    [feed]\nmessage = \"Notatka\"\ntime = { column = \"Kiedy\", date = \"%d.%m.%Y %H:%M\" }\n";

const FEED_HEADER: [&str; 4] = ["ID", "Nazwisko", "Notatka", "Kiedy"];

/// `n` customers with one note each; the first `changed` have a second note
/// instead.
fn feed_rows(n: usize, changed: usize) -> Vec<Vec<String>> {
    (0..n)
        .map(|k| {
            let note = if k < changed {
                format!("Druga notatka {k}")
            } else {
                format!("Notatka {k}")
            };
            vec![
                format!("F-{k:04}"),
                format!("Kowalska {k}"),
                note,
                "09.11.2026 08:06".into(),
            ]
        })
        .collect()
}

/// The sandbox's feed records: how many per (customer, message), and
/// whether any is there twice.
fn feed_records(sandbox: &Sandbox) -> (usize, Vec<String>) {
    let state = sandbox.state_json();
    let mut seen: std::collections::HashMap<(i64, String), usize> = Default::default();
    for f in state["feed_records"].as_array().unwrap() {
        let payload: Value = serde_json::from_str(f["payload"].as_str().unwrap()).unwrap();
        let message = payload[0]["payload"]["message"]
            .as_str()
            .unwrap()
            .to_string();
        *seen
            .entry((f["customer_id"].as_i64().unwrap(), message))
            .or_default() += 1;
    }
    let twice = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, n)| format!("{k:?} ×{n}"))
        .collect();
    (seen.values().sum(), twice)
}

fn feed_actions(out: &Out, action: &str) -> usize {
    out.events("feed")
        .iter()
        .filter(|e| e["status"] == "ok" && e["action"] == action)
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_feed_record_is_sent_once_per_customer_and_message_whatever_becomes_of_the_state() {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let mapping = dir.join("m.toml");
    std::fs::write(&mapping, FEED_MAPPING).unwrap();
    let state = dir.join("state.sqlite");
    let state_arg = state.to_str().unwrap();
    let posts = |mark: usize| {
        sent_since(&sandbox, mark, "POST", "/api/customers/")
            .iter()
            .filter(|e| e.path.ends_with("/feed_records"))
            .count()
    };

    // Night 1, with a state: 300 customers created, 300 messages.
    let csv1 = dir.join("n1.csv");
    write_csv(&csv1, &FEED_HEADER, &feed_rows(300, 0));
    let n1 = run(
        &sandbox,
        &csv1,
        &mapping,
        &dir.join("1.jsonl"),
        &["--state", state_arg],
    )
    .await;
    assert_eq!(n1.code, Some(0), "{}", n1.text);
    assert_eq!(feed_records(&sandbox), (300, vec![]));

    // Night 2, --full, twenty customers with a new note: the state saw
    // these customers' whole history, so it proves the twenty new notes
    // unsent (sent) and the 280 others sent (not sent again: --full keeps
    // the memory of what cannot be checked).
    let csv2 = dir.join("n2.csv");
    write_csv(&csv2, &FEED_HEADER, &feed_rows(300, 20));
    let mark = sandbox.requests().len();
    let n2 = run(
        &sandbox,
        &csv2,
        &mapping,
        &dir.join("2.jsonl"),
        &["--state", state_arg, "--full"],
    )
    .await;
    assert_eq!(n2.code, Some(0), "{}", n2.text);
    assert_eq!(posts(mark), 20);
    assert_eq!(feed_actions(&n2, "unchanged"), 280);
    assert_eq!(feed_records(&sandbox), (320, vec![]));

    // Night 3, the state deleted: nothing proves any message unsent to
    // customers that exist, so none is sent, each recorded ok and kept,
    // with what to do about it.
    std::fs::remove_file(&state).unwrap();
    let mark = sandbox.requests().len();
    let n3 = run(
        &sandbox,
        &csv2,
        &mapping,
        &dir.join("3.jsonl"),
        &["--state", state_arg],
    )
    .await;
    assert_eq!(n3.code, Some(0), "{}", n3.text);
    assert_eq!(posts(mark), 0);
    assert_eq!(feed_actions(&n3, "kept"), 300);
    let kept = n3.events("feed")[0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        kept.starts_with("not sent: customer ")
            && kept.ends_with("existed before this run and no state proves this message was not sent to it; [feed] on_match = \"send\" sends it"),
        "{kept}"
    );
    assert_eq!(report(&dir.join("3.jsonl"))["actions"]["kept"], 300);

    // Night 4, without a state: the same.
    let mark = sandbox.requests().len();
    let n4 = run(&sandbox, &csv2, &mapping, &dir.join("4.jsonl"), &[]).await;
    assert_eq!(n4.code, Some(0), "{}", n4.text);
    assert_eq!(posts(mark), 0);
    assert_eq!(feed_actions(&n4, "kept"), 300);

    // Exactly one record per customer and message after all four.
    assert_eq!(feed_records(&sandbox), (320, vec![]));
    assert_eq!(common::customers(&sandbox), 300);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_that_lost_feed_rows_proves_nothing_and_on_match_send_opts_in() {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let mapping = dir.join("m.toml");
    std::fs::write(&mapping, FEED_MAPPING).unwrap();
    let state = dir.join("state.sqlite");
    let state_arg = state.to_str().unwrap();
    let posts = |mark: usize| -> Vec<String> {
        sent_since(&sandbox, mark, "POST", "/api/customers/")
            .iter()
            .filter(|e| e.path.ends_with("/feed_records"))
            .map(|e| e.path.clone())
            .collect()
    };
    let csv = dir.join("n.csv");
    write_csv(&csv, &FEED_HEADER, &feed_rows(50, 0));
    let n1 = run(
        &sandbox,
        &csv,
        &mapping,
        &dir.join("1.jsonl"),
        &["--state", state_arg],
    )
    .await;
    assert_eq!(n1.code, Some(0), "{}", n1.text);
    assert_eq!(feed_records(&sandbox), (50, vec![]));
    // Every message sent is in the state.
    let conn = rusqlite::Connection::open(&state).unwrap();
    let count = |conn: &rusqlite::Connection| -> i64 {
        conn.query_row("SELECT COUNT(*) FROM feed", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&conn), 50);

    // The state loses its last ten feed writes (as if they never reached
    // the disk). Their customers' messages are not "unsent" for that: the
    // state's count of what it sent them no longer matches, so it proves
    // nothing about them, and the messages are kept, not sent again.
    conn.execute(
        "DELETE FROM feed WHERE customer_id IN (SELECT customer_id FROM feed ORDER BY customer_id DESC LIMIT 10)",
        [],
    )
    .unwrap();
    assert_eq!(count(&conn), 40);
    drop(conn);
    let mark = sandbox.requests().len();
    let n2 = run(
        &sandbox,
        &csv,
        &mapping,
        &dir.join("2.jsonl"),
        &["--state", state_arg],
    )
    .await;
    assert_eq!(n2.code, Some(0), "{}", n2.text);
    assert_eq!(posts(mark), Vec::<String>::new());
    assert_eq!(feed_actions(&n2, "kept"), 10);
    assert_eq!(feed_actions(&n2, "unchanged"), 40);
    assert_eq!(feed_records(&sandbox), (50, vec![]));

    // A customer that was in Thulium before any run, with a note: kept by
    // default; on_match = "send" sends it (once: the state remembers it,
    // written before the POST).
    let mut fields = serde_json::Map::new();
    fields.insert("surname".into(), "Stara".into());
    fields.insert("identifier".into(), "OLD-1".into());
    let old = sandbox.shared().lock_state().add_customer(fields);
    let csv_old = dir.join("old.csv");
    write_csv(
        &csv_old,
        &FEED_HEADER,
        &[vec![
            "OLD-1".into(),
            "Stara".into(),
            "Stara notatka".into(),
            "01.02.2026 10:00".into(),
        ]],
    );
    let kept = run(
        &sandbox,
        &csv_old,
        &mapping,
        &dir.join("3.jsonl"),
        &["--state", state_arg],
    )
    .await;
    assert_eq!(kept.code, Some(0), "{}", kept.text);
    assert_eq!(feed_actions(&kept, "kept"), 1);
    let send = dir.join("send.toml");
    std::fs::write(&send, format!("{FEED_MAPPING}on_match = \"send\"\n")).unwrap();
    let mark = sandbox.requests().len();
    let sent = run(
        &sandbox,
        &csv_old,
        &send,
        &dir.join("4.jsonl"),
        &["--state", state_arg],
    )
    .await;
    assert_eq!(sent.code, Some(0), "{}", sent.text);
    assert_eq!(
        posts(mark),
        vec![format!("/api/customers/{old}/feed_records")]
    );
    let mark = sandbox.requests().len();
    let again = run(
        &sandbox,
        &csv_old,
        &send,
        &dir.join("5.jsonl"),
        &["--state", state_arg],
    )
    .await;
    assert_eq!(again.code, Some(0), "{}", again.text);
    assert_eq!(posts(mark), Vec::<String>::new());
    assert_eq!(feed_actions(&again, "unchanged"), 1);
    assert_eq!(feed_records(&sandbox), (51, vec![]));

    // A refused message is taken back from the state: nothing was created,
    // so nothing is remembered as sent (a row naming a customer id that
    // Thulium does not have: 404).
    let given = dir.join("given.toml");
    std::fs::write(
        &given,
        FEED_MAPPING.replace(
            "delimiter = \";\"\n",
            "delimiter = \";\"\ncustomer_id = \"TID\"\n",
        ),
    )
    .unwrap();
    let csv_given = dir.join("given.csv");
    let mut header = FEED_HEADER.to_vec();
    header.push("TID");
    write_csv(
        &csv_given,
        &header,
        &[vec![
            "GONE-1".into(),
            "Nikt".into(),
            "Do nikogo".into(),
            "01.02.2026 10:00".into(),
            "987654".into(),
        ]],
    );
    let refused = run(
        &sandbox,
        &csv_given,
        &given,
        &dir.join("6.jsonl"),
        &["--state", state_arg],
    )
    .await;
    assert_eq!(refused.code, Some(1), "{}", refused.text);
    assert_eq!(
        refused.events("feed")[0]["status"],
        "failed",
        "{:?}",
        refused.events("feed")
    );
    assert_eq!(refused.events("feed")[0]["http_status"], 404);
    let conn = rusqlite::Connection::open(&state).unwrap();
    let held: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM feed WHERE customer_id = 987654",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(held, 0, "a refused message is not remembered as sent");
    assert_eq!(count(&conn), 41);
}

// ---------------------------------------------------------------------
// Field-group items have identity: two contracts per customer.
// ---------------------------------------------------------------------

const ITEM_HEADER: [&str; 6] = ["ID", "Nazwisko", "Umowa1", "Kwota1", "Umowa2", "Kwota2"];

/// Two `[[field_group]]` blocks on group 3 ("Umowa": 20 the contract's
/// number, 22 its amount), with or without `match = [20]`.
fn item_mapping(dir: &Path, with_match: bool) -> PathBuf {
    let m = if with_match { "match = [20]\n" } else { "" };
    let text = format!(
        "[source]\ndelimiter = \";\"\n\n\
         [customer]\nmatch = \"identifier\"\nsurname = \"Nazwisko\"\nidentifier = \"ID\"\n\n\
         [[field_group]]\ngroup_id = 3\n{m}[field_group.values]\n20 = \"Umowa1\"\n22 = {{ column = \"Kwota1\", type = \"integer\" }}\n\n\
         [[field_group]]\ngroup_id = 3\n{m}[field_group.values]\n20 = \"Umowa2\"\n22 = {{ column = \"Kwota2\", type = \"integer\" }}\n"
    );
    let path = dir.join(format!("items-{with_match}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// 50 customers with two contracts each; `first` and `second` are added to
/// the amounts (1000+k and 5000+k).
fn item_rows(first: i64, second: i64) -> Vec<Vec<String>> {
    (0..50i64)
        .map(|k| {
            vec![
                format!("I-{k:03}"),
                format!("Wiśniewski {k}"),
                format!("U-{k}-A"),
                (1000 + k + first).to_string(),
                format!("U-{k}-B"),
                (5000 + k + second).to_string(),
            ]
        })
        .collect()
}

/// Per customer identifier, its items in group 3 as contract → amount.
fn contracts(sandbox: &Sandbox) -> BTreeMap<String, BTreeMap<String, String>> {
    let ids: BTreeMap<i64, String> = common::by_identifier(sandbox)
        .into_iter()
        .map(|(i, c)| (c["customer_id"].as_i64().unwrap(), i))
        .collect();
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let state = sandbox.shared().lock_state();
    for item in state.field_group_items.iter().filter(|i| i.group_id == 3) {
        let Some(who) = ids.get(&item.customer_id) else {
            continue;
        };
        let value = |f: i64| {
            item.values
                .iter()
                .find(|v| v["field_id"].as_i64() == Some(f))
                .map(|v| v["value"].to_string().trim_matches('"').to_string())
                .unwrap_or_default()
        };
        let contracts = out.entry(who.clone()).or_default();
        assert!(
            contracts.insert(value(20), value(22)).is_none(),
            "{who} has contract {} twice",
            value(20)
        );
    }
    out
}

fn expect_contracts(sandbox: &Sandbox, first: i64, second: i64) {
    let all = contracts(sandbox);
    assert_eq!(all.len(), 50);
    for (k, (who, items)) in all.iter().enumerate() {
        let k = k as i64;
        let want: BTreeMap<String, String> = [
            (format!("U-{k}-A"), (1000 + k + first).to_string()),
            (format!("U-{k}-B"), (5000 + k + second).to_string()),
        ]
        .into();
        assert_eq!(items, &want, "{who}");
    }
}

async fn two_contracts_per_customer_stay_two(with_match: bool) {
    let dir = tempdir();
    let sandbox = sandbox().await;
    let mapping = item_mapping(&dir, with_match);
    let state = dir.join("state.sqlite");
    let state_arg = state.to_str().unwrap();
    let csv = |name: &str, first: i64, second: i64| {
        let path = dir.join(name);
        write_csv(&path, &ITEM_HEADER, &item_rows(first, second));
        path
    };
    let calls = |mark: usize| {
        (
            sent_since(&sandbox, mark, "POST", "/api/customer_field_group_items").len(),
            sent_since(&sandbox, mark, "PUT", "/api/customer_field_group_items/").len(),
        )
    };

    // Night 1: two items per customer.
    let n1 = run(
        &sandbox,
        &csv("1.csv", 0, 0),
        &mapping,
        &dir.join("1.jsonl"),
        &["--state", state_arg],
    )
    .await;
    assert_eq!(n1.code, Some(0), "{}", n1.text);
    expect_contracts(&sandbox, 0, 0);

    // Night 2, without the state, the first contract's amount changed: the
    // first contract is updated, the second untouched, nothing created.
    let mark = sandbox.requests().len();
    let n2 = run(
        &sandbox,
        &csv("2.csv", 7, 0),
        &mapping,
        &dir.join("2.jsonl"),
        &[],
    )
    .await;
    assert_eq!(n2.code, Some(0), "{}", n2.text);
    assert_eq!(calls(mark), (0, 50));
    expect_contracts(&sandbox, 7, 0);
    let unchanged = n2
        .events("field_group")
        .iter()
        .filter(|e| e["group"] == 1 && e["action"] == "unchanged")
        .count();
    assert_eq!(unchanged, 50);

    // And the second contract's amount, still without the state: the item
    // listed first (the first contract) is not the one that changes.
    let mark = sandbox.requests().len();
    let n2b = run(
        &sandbox,
        &csv("2b.csv", 7, 2),
        &mapping,
        &dir.join("2b.jsonl"),
        &[],
    )
    .await;
    assert_eq!(n2b.code, Some(0), "{}", n2b.text);
    assert_eq!(calls(mark), (0, 50));
    expect_contracts(&sandbox, 7, 2);

    // Night 3, with the state (which remembers night 1) and --full: the
    // same, through the items the state remembers.
    let mark = sandbox.requests().len();
    let n3 = run(
        &sandbox,
        &csv("3.csv", 9, 2),
        &mapping,
        &dir.join("3.jsonl"),
        &["--state", state_arg, "--full"],
    )
    .await;
    assert_eq!(n3.code, Some(0), "{}", n3.text);
    assert_eq!(calls(mark).0, 0);
    expect_contracts(&sandbox, 9, 2);

    // Five customers' second contracts are deleted in Thulium; night 4 (with
    // the state, second amounts changed): the remembered item answers 404,
    // is forgotten and the contract created again, in the same run.
    let gone: Vec<i64> = {
        let mut s = sandbox.shared().lock_state();
        let mut gone = Vec::new();
        for item in s
            .field_group_items
            .iter_mut()
            .filter(|i| {
                i.group_id == 3
                    && i.values
                        .iter()
                        .any(|v| v["value"].as_str().is_some_and(|c| c.ends_with("-B")))
            })
            .take(5)
        {
            // Out of the API's sight: no customer lists it, no id finds it.
            gone.push(item.item_id);
            item.customer_id = 0;
            item.item_id = -item.item_id;
        }
        gone
    };
    assert_eq!(gone.len(), 5);
    let mark = sandbox.requests().len();
    let n4 = run(
        &sandbox,
        &csv("4.csv", 9, 3),
        &mapping,
        &dir.join("4.jsonl"),
        &["--state", state_arg],
    )
    .await;
    assert_eq!(n4.code, Some(0), "{}", n4.text);
    let (posts, puts) = calls(mark);
    assert_eq!(posts, 5);
    if !with_match {
        // The 45 others; the five remembered items Thulium no longer lists
        // are never PUT (an id the state remembers is confirmed first).
        assert_eq!(puts, 45);
    }
    expect_contracts(&sandbox, 9, 3);
    assert!(n4.events("field_group").iter().all(|e| e["status"] == "ok"));

    // Night 5, the state deleted, the same file: nothing to write.
    std::fs::remove_file(&state).unwrap();
    let mark = sandbox.requests().len();
    let n5 = run(
        &sandbox,
        &csv("5.csv", 9, 3),
        &mapping,
        &dir.join("5.jsonl"),
        &["--state", state_arg],
    )
    .await;
    assert_eq!(n5.code, Some(0), "{}", n5.text);
    assert_eq!(calls(mark), (0, 0));
    expect_contracts(&sandbox, 9, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_contracts_per_customer_stay_two_by_their_values() {
    two_contracts_per_customer_stay_two(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_contracts_per_customer_stay_two_by_their_number() {
    two_contracts_per_customer_stay_two(true).await;
}
