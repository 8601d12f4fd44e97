//! Thulium is the truth: the sync state is a cache, and whatever it
//! remembers is confirmed by the system before anything is written on its
//! strength. Each test changes the system between two nights the way a
//! real one changes outside the tool (an agent's edit, a restore from a
//! backup) and checks that no customer is overwritten with another
//! person's data and nothing is created twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use thulium_import::sandbox::{Sandbox, SandboxConfig};

const PASSWORD: &str = "truth-secret";

fn config() -> SandboxConfig {
    SandboxConfig {
        password: PASSWORD.into(),
        retry_after_secs: 0,
        ..SandboxConfig::default()
    }
}

/// A small mapping: identifier, surname, e-mail, a custom field; matched
/// by `keys`.
fn mapping(dir: &Path, keys: &str) -> PathBuf {
    let path = dir.join("m.toml");
    std::fs::write(
        &path,
        format!(
            r#"[source]
delimiter = ";"

[customer]
match = {keys}
surname = {{ column = "Nazwisko", required = true }}
identifier = "ID"
email = "Email"

[customer.custom_fields]
"Segment" = "Segment"
"#
        ),
    )
    .unwrap();
    path
}

/// A file of rows (identifier, surname, e-mail, segment).
fn export(path: &Path, rows: &[(String, String, String, String)]) {
    let mut text = String::from("ID;Nazwisko;Email;Segment\n");
    for (id, surname, email, segment) in rows {
        text.push_str(&format!("{id};{surname};{email};{segment}\n"));
    }
    std::fs::write(path, text).unwrap();
}

fn people(n: usize) -> Vec<(String, String, String, String)> {
    (1..=n)
        .map(|i| {
            (
                format!("K{i:04}"),
                format!("Nazwisko{i}"),
                format!("osoba{i}@example.pl"),
                "A".to_string(),
            )
        })
        .collect()
}

struct Night {
    code: Option<i32>,
    text: String,
    report: Value,
}

async fn night(
    sandbox: &Sandbox,
    dir: &Path,
    csv: &Path,
    mapping: &Path,
    state: Option<&Path>,
    extra: &[&str],
) -> Night {
    let ledger = dir.join(format!("l{}.jsonl", rand::random::<u64>()));
    let mut cmd = common::run_against(sandbox, PASSWORD, csv, mapping, &ledger);
    cmd.args(["--no-preflight"]).args(extra);
    if let Some(state) = state {
        cmd.arg("--state").arg(state);
    }
    let out = common::output(cmd).await;
    Night {
        code: out.code,
        text: out.text(),
        report: common::report(&ledger),
    }
}

/// The customers the sandbox holds: (identifier, surname, e-mail).
fn held(sandbox: &Sandbox) -> Vec<(String, String, String)> {
    let state = sandbox.state_json();
    let mut v: Vec<(String, String, String)> = state["customers"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("identifier"), s("surname"), s("email"))
        })
        .collect();
    v.sort();
    v
}

fn tempdir() -> PathBuf {
    tempfile::tempdir().unwrap().keep()
}

/// `match = ["identifier", "email"]`. Night 1: A has e@x.pl. Night 2: A's
/// e-mail becomes e2@x.pl. Night 3: a new person B (a new identifier) has
/// e@x.pl. B must be created; A must keep its identifier and surname.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_moved_to_another_person_is_not_trusted() {
    let dir = tempdir();
    let sandbox = Sandbox::start(config()).await.unwrap();
    let m = mapping(&dir, r#"["identifier", "email"]"#);
    let state = dir.join("state.sqlite");
    let csv = dir.join("export.csv");
    let mut rows = people(20);
    rows[0] = ("A-1".into(), "Adamska".into(), "e@x.pl".into(), "A".into());
    export(&csv, &rows);
    let n1 = night(&sandbox, &dir, &csv, &m, Some(&state), &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text);
    assert_eq!(n1.report["actions"]["created"], 20);

    rows[0].2 = "e2@x.pl".into();
    export(&csv, &rows);
    let n2 = night(&sandbox, &dir, &csv, &m, Some(&state), &[]).await;
    assert_eq!(n2.code, Some(0), "{}", n2.text);
    assert_eq!(n2.report["actions"]["updated"], 1, "{}", n2.report);
    assert_eq!(n2.report["actions"]["unchanged"], 19, "{}", n2.report);

    rows.push(("B-2".into(), "Bednarek".into(), "e@x.pl".into(), "B".into()));
    export(&csv, &rows);
    let n3 = night(&sandbox, &dir, &csv, &m, Some(&state), &[]).await;
    assert_eq!(n3.code, Some(0), "{}", n3.text);
    assert_eq!(n3.report["actions"]["created"], 1, "{}", n3.report);
    let customers = held(&sandbox);
    assert_eq!(customers.len(), 21, "{customers:?}");
    assert!(customers.contains(&("A-1".into(), "Adamska".into(), "e2@x.pl".into())));
    assert!(customers.contains(&("B-2".into(), "Bednarek".into(), "e@x.pl".into())));
}

/// An agent moves a person's e-mail onto another customer in Thulium;
/// the state still remembers the e-mail for the first one. The row's
/// change goes to the customer Thulium says holds the key.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_moved_by_an_agent_is_forgotten_and_found_again() {
    let dir = tempdir();
    let sandbox = Sandbox::start(config()).await.unwrap();
    let m = mapping(&dir, r#"["email"]"#);
    let state = dir.join("state.sqlite");
    let csv = dir.join("export.csv");
    let mut rows = people(10);
    export(&csv, &rows);
    let n1 = night(&sandbox, &dir, &csv, &m, Some(&state), &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text);
    // The agent: customer 1's e-mail is now customer 2's, and customer 1
    // gets another.
    {
        let mut s = sandbox.shared().lock_state();
        let mut set = |id: i64, email: &str| {
            let mut f: Map<String, Value> = s.customers[&id].fields.clone();
            f.insert("email".into(), Value::from(email));
            s.replace_customer(id, f);
        };
        set(1, "nowy1@example.pl");
        set(2, "osoba1@example.pl");
    }
    rows[0].3 = "B".into();
    export(&csv, &rows);
    let n2 = night(&sandbox, &dir, &csv, &m, Some(&state), &[]).await;
    assert_eq!(n2.code, Some(0), "{}", n2.text);
    let json = sandbox.state_json();
    let segment = |id: &str| json["customers"][id]["custom_fields"]["Segment"].clone();
    // Customer 2 holds the e-mail now: it got the row's change.
    assert_eq!(segment("2"), "B", "{}", json["customers"]);
    assert_eq!(segment("1"), "A", "{}", json["customers"]);
    assert_eq!(json["customers"]["1"]["surname"], "Nazwisko1");
}

/// Night 1 with a state; the system restored empty from a backup (its ids
/// start again from 1); night 2 with 5 changed rows: the system holds
/// fewer customers than the state remembers, so every row is asked of
/// Thulium (as with `--full`, said in a warning): all 40 created, none PUT
/// to a remembered id (id 1 is someone else's now); then `--full` finds
/// them all as they are, and the next night sends nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_restored_system_comes_back_without_overwrites() {
    let dir = tempdir();
    let sandbox = Sandbox::start(config()).await.unwrap();
    let m = mapping(&dir, r#"["identifier"]"#);
    let state = dir.join("state.sqlite");
    let csv = dir.join("export.csv");
    let mut rows = people(40);
    export(&csv, &rows);
    let n1 = night(&sandbox, &dir, &csv, &m, Some(&state), &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text);

    *sandbox.shared().lock_state() = thulium_import::sandbox::model::State::new();
    // Someone else's customer takes id 1 in the restored system.
    {
        let mut f = Map::new();
        f.insert("surname".into(), Value::from("Obcy"));
        f.insert("identifier".into(), Value::from("OBCY-1"));
        sandbox.shared().lock_state().add_customer(f);
    }
    for r in rows.iter_mut().take(5) {
        r.3 = "Zmieniony".into();
    }
    export(&csv, &rows);
    let n2 = night(
        &sandbox,
        &dir,
        &csv,
        &m,
        Some(&state),
        &["--index", "never"],
    )
    .await;
    assert_eq!(n2.code, Some(0), "{}", n2.text);
    assert!(
        n2.text.contains("fewer than the 40 this state remembers"),
        "{}",
        n2.text
    );
    assert_eq!(n2.report["actions"]["created"], 40, "{}", n2.report);
    let customers = held(&sandbox);
    assert_eq!(customers.len(), 41, "{customers:?}");
    assert!(customers.contains(&("OBCY-1".into(), "Obcy".into(), String::new())));
    let ids: std::collections::BTreeSet<_> = customers.iter().map(|c| &c.0).collect();
    assert_eq!(ids.len(), 41, "every identifier once");
    let puts = sandbox
        .requests()
        .iter()
        .filter(|e| e.method == "PUT")
        .count();
    assert_eq!(puts, 0, "nothing is PUT to a remembered id");

    let n3 = night(&sandbox, &dir, &csv, &m, Some(&state), &["--full"]).await;
    assert_eq!(n3.code, Some(0), "{}", n3.text);
    assert_eq!(n3.report["actions"]["created"], 0, "{}", n3.report);
    assert_eq!(held(&sandbox).len(), 41);

    // The state is repaired: the next night sends nothing.
    let before = sandbox.requests().len();
    let n4 = night(&sandbox, &dir, &csv, &m, Some(&state), &[]).await;
    assert_eq!(n4.code, Some(0), "{}", n4.text);
    assert_eq!(n4.report["actions"]["unchanged"], 40, "{}", n4.report);
    let sent: Vec<_> = sandbox.requests()[before..]
        .iter()
        .filter(|e| e.method != "GET")
        .map(|e| format!("{} {}", e.method, e.path))
        .collect();
    assert_eq!(sent, Vec::<String>::new());
}

/// A customer the state remembers was deleted in Thulium; the row changed.
/// With an index read this run the memory is not trusted either: the row
/// is created again, never PUT to the deleted id.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_customer_is_created_again_with_an_index() {
    let dir = tempdir();
    let sandbox = Sandbox::start(config()).await.unwrap();
    let m = mapping(&dir, r#"["identifier"]"#);
    let state = dir.join("state.sqlite");
    let csv = dir.join("export.csv");
    let mut rows = people(10);
    export(&csv, &rows);
    let n1 = night(&sandbox, &dir, &csv, &m, Some(&state), &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text);
    {
        assert!(sandbox.shared().lock_state().remove_customer(3));
    }
    for r in &mut rows {
        r.3 = "C".into();
    }
    export(&csv, &rows);
    let n2 = night(
        &sandbox,
        &dir,
        &csv,
        &m,
        Some(&state),
        // Every row changed on purpose: past the default guard.
        &["--index", "always", "--max-changes", "100%"],
    )
    .await;
    assert_eq!(n2.code, Some(0), "{}", n2.text);
    assert_eq!(n2.report["actions"]["created"], 1, "{}", n2.report);
    assert_eq!(n2.report["actions"]["updated"], 9, "{}", n2.report);
    assert_eq!(held(&sandbox).len(), 10);
}

/// `retry` does not trust the ledger's customer id either: a row whose
/// campaign record is still to be sent, whose customer was deleted in
/// Thulium since the run, is created again and its record goes to the new
/// customer (before: "Customer not found." for ever). With `match` and
/// without it.
#[tokio::test(flavor = "multi_thread")]
async fn retry_confirms_the_ledgers_customer_before_writing_to_it() {
    for keys in ["match = \"identifier\"\n", ""] {
        let dir = tempdir();
        let csv = dir.join("agents.csv");
        std::fs::write(
            &csv,
            "Nazwisko;ID;Opiekun\nNowak;R-1;j.doe\nZając;R-2;a.nowak\nWójcik;R-3;a.nowak\n",
        )
        .unwrap();
        let m = dir.join("m.toml");
        std::fs::write(
            &m,
            format!(
                "[source]\ndelimiter = \";\"\n[customer]\n{keys}surname = \"Nazwisko\"\nidentifier = \"ID\"\n\
                 [campaign]\nid = {{ value = \"00001\" }}\nstatus_id = {{ value = 1 }}\nagent_login = \"Opiekun\"\n"
            ),
        )
        .unwrap();
        let sandbox = Sandbox::start(config()).await.unwrap();
        sandbox
            .shared()
            .lock_state()
            .campaigns
            .get_mut("00001")
            .unwrap()
            .agents = vec!["j.doe".into()];
        let ledger = dir.join("l.jsonl");
        let cmd = common::run_against(&sandbox, PASSWORD, &csv, &m, &ledger);
        let out = common::output(cmd).await;
        assert_eq!(out.code, Some(1), "{}", out.text());
        let r = common::report(&ledger);
        assert_eq!(r["stages"]["campaign"]["invalid"], 2, "{r}");
        // R-2's customer is deleted in Thulium; an agent edits R-3's
        // identifier (the customer is still there: not to be created
        // again); a.nowak joins the campaign.
        let r2 = common::by_identifier(&sandbox)["R-2"]["customer_id"]
            .as_i64()
            .unwrap();
        let r3 = common::by_identifier(&sandbox)["R-3"]["customer_id"]
            .as_i64()
            .unwrap();
        {
            let mut s = sandbox.shared().lock_state();
            assert!(s.remove_customer(r2));
            let mut f: Map<String, Value> = s.customers[&r3].fields.clone();
            f.insert("identifier".into(), Value::from("R-3-edited"));
            s.replace_customer(r3, f);
            s.campaigns
                .get_mut("00001")
                .unwrap()
                .agents
                .push("a.nowak".into());
        }
        let mut cmd = common::bin(PASSWORD);
        cmd.arg("retry")
            .arg(&ledger)
            .args([
                "--url",
                &sandbox.url(),
                "--user",
                "api_user",
                "--no-progress",
            ])
            .args(["--rate", "5000"]);
        let out = common::output(cmd).await;
        assert_eq!(out.code, Some(0), "{keys}{}", out.text());
        let held = common::by_identifier(&sandbox);
        assert_eq!(held.len(), 3, "{held:?}");
        let new_r2 = held["R-2"]["customer_id"].as_i64().unwrap();
        assert_ne!(new_r2, r2);
        assert_eq!(held["R-3-edited"]["customer_id"], r3, "{held:?}");
        assert!(!held.contains_key("R-3"), "R-3 not created again");
        let json = sandbox.state_json();
        let records = json["campaigns"]["00001"]["by_customer"]
            .as_object()
            .unwrap();
        assert_eq!(records.len(), 3, "{records:?}");
        assert!(records.contains_key(&new_r2.to_string()), "{records:?}");
        let r = common::report(&ledger);
        assert_eq!(r["ok"], 3, "{r}");
    }
}

/// A system restored empty whose ids start again from 1: the customers
/// created anew get their contact history again, though the state
/// remembers messages sent to those ids (to other customers, before).
#[tokio::test(flavor = "multi_thread")]
async fn customers_created_anew_after_a_restore_get_their_feed_again() {
    let dir = tempdir();
    let sandbox = Sandbox::start(config()).await.unwrap();
    let m = dir.join("feed.toml");
    std::fs::write(
        &m,
        "[source]\ndelimiter = \";\"\n[customer]\nmatch = \"identifier\"\nsurname = \"Nazwisko\"\nidentifier = \"ID\"\n\
         [feed]\nmessage = \"Segment\"\nauthor = { value = \"agent\" }\ntime = { value = \"2026-11-20T10:00:00\" }\n",
    )
    .unwrap();
    let state = dir.join("state.sqlite");
    let csv = dir.join("export.csv");
    export(&csv, &people(12));
    let n1 = night(&sandbox, &dir, &csv, &m, Some(&state), &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text);
    let feeds = |s: &Sandbox| s.state_json()["feed_records"].as_array().unwrap().len();
    assert_eq!(feeds(&sandbox), 12);
    sandbox.restore(true);
    let n2 = night(&sandbox, &dir, &csv, &m, Some(&state), &["--full"]).await;
    assert_eq!(n2.code, Some(0), "{}", n2.text);
    assert_eq!(n2.report["actions"]["created"], 12, "{}", n2.report);
    assert_eq!(feeds(&sandbox), 12, "every customer's note again, once");
    // And never twice.
    let n3 = night(&sandbox, &dir, &csv, &m, Some(&state), &["--full"]).await;
    assert_eq!(n3.code, Some(0), "{}", n3.text);
    assert_eq!(feeds(&sandbox), 12);
}
