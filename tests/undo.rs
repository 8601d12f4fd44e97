//! `undo`: a run taken back, end to end — the real binary against a
//! populated sandbox: customers the run created deleted, the fields and
//! items it overwrote put back from the before-images, what an agent
//! changed since kept and listed; a dry run that sends and writes
//! nothing; an undo killed halfway and run again; an undo after faults;
//! a `sync` night taken back with its state.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use thulium_import::sandbox::{FaultKind, Sandbox, SandboxConfig};

const PASSWORD: &str = "undo-secret";

fn config() -> SandboxConfig {
    SandboxConfig {
        password: PASSWORD.into(),
        retry_after_secs: 0,
        preload_customers: 5,
        ..SandboxConfig::default()
    }
}

fn tempdir() -> PathBuf {
    tempfile::tempdir().unwrap().keep()
}

/// Customers matched by identifier; a custom field, an address part and a
/// field-group item with two values.
const MAPPING: &str = r#"[source]
delimiter = ";"
encoding = "utf-8"

[customer]
match = "identifier"
surname = { column = "Surname", required = true }
name = "Name"
identifier = "Id"
email = "Email"

[customer.address]
city = "City"

[customer.custom_fields]
"Segment" = "Segment"

[[field_group]]
group_id = 2
[field_group.values]
12 = "Channel"
8 = { column = "Orders", type = "integer" }
"#;

/// The same, creating only (no match): what a first import does.
fn plain_mapping() -> String {
    MAPPING.replace("match = \"identifier\"\n", "")
}

/// `P-1`..`P-n` as the system holds them before (`version` "old") or as
/// the export has them now; `N-1`..`N-m` only in the export.
fn rows(existing: usize, new: usize, version: &str) -> String {
    let mut text = String::from("Id;Surname;Name;Email;City;Segment;Channel;Orders\n");
    for i in 1..=existing {
        text += &format!(
            "P-{i};Nowak-{version}-{i};Anna;p{i}@example.pl;City-{version};Seg-{version};ch-{version};{}\n",
            if version == "old" { i } else { 100 + i }
        );
    }
    for i in 1..=new {
        text += &format!("N-{i};Kowal-{i};Jan;n{i}@example.pl;Gdańsk;B;www;{i}\n");
    }
    text
}

/// The sandbox's customers (without `updated_at`) and items (values as a
/// map: the order of an item's values is not what undo restores).
#[derive(Debug, PartialEq)]
struct Held {
    customers: BTreeMap<String, Value>,
    items: BTreeMap<String, (Value, Value, BTreeMap<String, Value>)>,
}

fn held(sandbox: &Sandbox) -> Held {
    let state = sandbox.state_json();
    let customers = state["customers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(id, c)| {
            let mut c = c.clone();
            c.as_object_mut().unwrap().remove("updated_at");
            (id.clone(), c)
        })
        .collect();
    let items = state["field_group_items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let values = i["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| (v["field_id"].to_string(), v["value"].clone()))
                .collect();
            (
                i["item_id"].to_string(),
                (i["customer_id"].clone(), i["group_id"].clone(), values),
            )
        })
        .collect();
    Held { customers, items }
}

/// The id of the customer with `identifier`.
fn id_of(sandbox: &Sandbox, identifier: &str) -> i64 {
    common::by_identifier(sandbox)[identifier]["customer_id"]
        .as_i64()
        .unwrap()
}

struct Setup {
    dir: PathBuf,
    sandbox: Sandbox,
    mapping: PathBuf,
    csv: PathBuf,
    ledger: PathBuf,
}

/// A sandbox holding 5 unrelated customers and `existing` old versions
/// of the export's `P-` customers (with their items); the export written.
async fn setup(existing: usize, new: usize, sandbox: SandboxConfig) -> Setup {
    let dir = tempdir();
    let mapping = dir.join("m.toml");
    std::fs::write(&mapping, MAPPING).unwrap();
    let old = dir.join("old.csv");
    std::fs::write(&old, rows(existing, 0, "old")).unwrap();
    let sandbox = Sandbox::start(sandbox).await.unwrap();
    if existing > 0 {
        let (c, i) = sandbox.preload(&old, &mapping).unwrap();
        assert_eq!((c, i), (existing, existing));
    }
    let csv = dir.join("export.csv");
    std::fs::write(&csv, rows(existing, new, "new")).unwrap();
    let ledger = dir.join("export.ledger.jsonl");
    Setup {
        dir,
        sandbox,
        mapping,
        csv,
        ledger,
    }
}

async fn run(s: &Setup, extra: &[&str]) -> common::Out {
    let mut cmd = common::run_against(&s.sandbox, PASSWORD, &s.csv, &s.mapping, &s.ledger);
    cmd.args(["--max-consecutive-failures", "0"]).args(extra);
    common::output(cmd).await
}

fn undo_cmd(sandbox: &Sandbox, ledger: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = common::bin(PASSWORD);
    cmd.arg("undo")
        .arg(ledger)
        .args(["--url", &sandbox.url(), "--user", "api_user"])
        .args(["--max-consecutive-failures", "0"])
        .args(extra);
    if !extra.contains(&"--rate") {
        cmd.args(["--rate", "5000"]);
    }
    cmd
}

async fn undo(sandbox: &Sandbox, ledger: &Path, extra: &[&str]) -> common::Out {
    common::output(undo_cmd(sandbox, ledger, extra)).await
}

fn undo_ledger(ledger: &Path) -> PathBuf {
    PathBuf::from(format!("{}.undo-ledger.jsonl", ledger.display()))
}

fn undo_file(ledger: &Path) -> PathBuf {
    PathBuf::from(format!("{}.undo.jsonl", ledger.display()))
}

/// An agent's edit through the API, as the panel would make it.
async fn agent(sandbox: &Sandbox, method: reqwest::Method, path: &str, body: Value) {
    let status = reqwest::Client::new()
        .request(method, format!("{}/api/{path}", sandbox.url()))
        .basic_auth("api_user", Some(PASSWORD))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success(), "{path}: {status}");
}

/// The id of the (one) item of `customer_id` in group 2.
fn item_of(sandbox: &Sandbox, customer_id: i64) -> i64 {
    sandbox.state_json()["field_group_items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["customer_id"] == customer_id)
        .unwrap()["item_id"]
        .as_i64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn undo_takes_back_creates_and_updates_and_keeps_what_an_agent_changed() {
    let s = setup(20, 10, config()).await;
    let before = held(&s.sandbox);
    let out = run(&s, &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let r = common::report(&s.ledger);
    assert_eq!(r["actions"]["updated"], 20, "{r}");
    assert_eq!(r["actions"]["created"], 10, "{r}");
    // The before-images: beside the ledger, private, holding old values.
    let images = std::fs::read_to_string(undo_file(&s.ledger)).unwrap();
    assert!(images.contains("Nowak-old-1") && images.contains("ch-old"));
    assert!(
        !images.contains("Kowal-1"),
        "a creation is signed, not kept"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(undo_file(&s.ledger))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let ledger_text = std::fs::read_to_string(&s.ledger).unwrap();
    assert!(
        !ledger_text.contains("Nowak-old"),
        "no old value in the ledger"
    );

    // An agent edits three things the run wrote.
    let (p1, p2, n1) = (
        id_of(&s.sandbox, "P-1"),
        id_of(&s.sandbox, "P-2"),
        id_of(&s.sandbox, "N-1"),
    );
    let p2_item = item_of(&s.sandbox, p2);
    agent(
        &s.sandbox,
        reqwest::Method::PUT,
        "batch/customers",
        json!({"customers": [{"customer_id": p1, "surname": "Zmieniona"}, {"customer_id": n1, "custom_fields": {"Segment": "VIP"}}]}),
    )
    .await;
    agent(
        &s.sandbox,
        reqwest::Method::PUT,
        &format!("customer_field_group_items/{p2_item}"),
        json!({"values": [{"field_id": 12, "value": "telefon"}]}),
    )
    .await;
    let after_edits = held(&s.sandbox);

    // A dry run: reads only, writes nothing, says what it would do.
    let _ = reqwest::Client::new()
        .delete(format!("{}/_sandbox/requests", s.sandbox.url()))
        .basic_auth("api_user", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    let dry = undo(&s.sandbox, &s.ledger, &["--dry-run", "--json"]).await;
    assert_eq!(dry.code, Some(1), "{}", dry.text());
    let json: Value = serde_json::from_str(&dry.stdout).unwrap();
    assert_eq!(json["counts"]["kept"], 3, "{json}");
    assert_eq!(json["counts"]["reversed"], 19 + 9 + 19, "{json}");
    assert_eq!(json["counts"]["errored"], 0, "{json}");
    let journal = s.sandbox.requests();
    assert!(!journal.is_empty());
    assert!(journal.iter().all(|e| e.method == "GET"), "{journal:?}");
    assert!(!undo_ledger(&s.ledger).exists());
    assert_eq!(held(&s.sandbox), after_edits);

    // The undo itself.
    let out = undo(&s.sandbox, &s.ledger, &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(
        out.stdout.contains("undo: 47 reversed, 3 kept"),
        "{}",
        out.stdout
    );
    let now = held(&s.sandbox);
    // Created: gone, but the one the agent edited.
    let ids = common::by_identifier(&s.sandbox);
    for i in 2..=10 {
        assert!(!ids.contains_key(&format!("N-{i}")), "N-{i} deleted");
    }
    assert_eq!(ids["N-1"]["custom_fields"]["Segment"], "VIP");
    // Updated: back as before, but P-1 (the agent's surname, and the
    // run's other fields, left together).
    for (id, c) in &before.customers {
        if *id == p1.to_string() {
            assert_eq!(now.customers[id]["surname"], "Zmieniona");
            assert_eq!(now.customers[id]["custom_fields"]["Segment"], "Seg-new");
        } else {
            assert_eq!(&now.customers[id], c, "customer {id}");
        }
    }
    assert_eq!(now.customers.len(), before.customers.len() + 1);
    // Items: back, but P-2's the agent edited; the new customers' gone.
    for (id, item) in &before.items {
        if *id == p2_item.to_string() {
            assert_eq!(now.items[id].2["12"], "telefon");
        } else {
            assert_eq!(&now.items[id], item, "item {id}");
        }
    }
    // The report says exactly which ones were kept, and why.
    let r = common::report(&s.ledger);
    let u = &r["undo"];
    assert_eq!(u["counts"]["kept"], 3, "{r}");
    let kept: Vec<&Value> = u["not_reversed"].as_array().unwrap().iter().collect();
    let find = |f: &dyn Fn(&Value) -> bool| kept.iter().find(|t| f(t)).copied().cloned();
    let k = find(&|t| t["customer_id"] == p1 && t["target"] == "customer").unwrap();
    assert_eq!(k["fields"], json!(["surname"]), "{k}");
    let k = find(&|t| t["customer_id"] == n1).unwrap();
    assert_eq!(k["fields"], json!(["custom_fields.Segment"]), "{k}");
    assert_eq!(k["undo"], "delete");
    let k = find(&|t| t["item_id"] == p2_item).unwrap();
    assert_eq!(k["fields"], json!(["field_id.12"]), "{k}");
    // Run again: nothing more is sent but the reads of nothing; same exit.
    let journal_before = s.sandbox.requests().len();
    let again = undo(&s.sandbox, &s.ledger, &[]).await;
    assert_eq!(again.code, Some(1), "{}", again.text());
    assert_eq!(s.sandbox.requests().len(), journal_before);
    assert_eq!(held(&s.sandbox), now);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_run_and_its_undo_leave_the_system_as_it_was() {
    let s = setup(12, 8, config()).await;
    let before = held(&s.sandbox);
    let out = run(&s, &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert_ne!(held(&s.sandbox), before);
    let out = undo(&s.sandbox, &s.ledger, &["--json"]).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let json: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(json["counts"]["reversed"], 12 + 8 + 12, "{json}");
    assert_eq!(held(&s.sandbox), before);
    let r = common::report(&s.ledger);
    assert_eq!(r["undo"]["counts"]["reversed"], 32, "{r}");
    assert_eq!(r["undo"]["finished"], true, "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_undo_writes_no_undo_file_and_undo_refuses() {
    let s = setup(3, 3, config()).await;
    let out = run(&s, &["--no-undo"]).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(!undo_file(&s.ledger).exists());
    let after = held(&s.sandbox);
    let out = undo(&s.sandbox, &s.ledger, &[]).await;
    assert_eq!(out.code, Some(2), "{}", out.text());
    assert!(out.stderr.contains("--no-undo"), "{}", out.stderr);
    assert_eq!(held(&s.sandbox), after);
}

/// `undo` killed (SIGKILL) after some of its writes, then run again:
/// every customer deleted or put back once, nothing taken for a person's
/// edit, the system as it was.
#[tokio::test(flavor = "multi_thread")]
async fn undo_killed_halfway_then_run_again_does_no_harm() {
    let s = setup(30, 30, config()).await;
    let before = held(&s.sandbox);
    let out = run(&s, &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let journal_start = s.sandbox.requests().len();
    let writes = |s: &Setup| {
        s.sandbox.requests()[journal_start..]
            .iter()
            .filter(|e| e.method != "GET")
            .count()
    };
    let mut child = common::spawn_quiet(undo_cmd(
        &s.sandbox,
        &s.ledger,
        &["--rate", "40", "--concurrency", "2"],
    ));
    let waited = std::time::Instant::now();
    while writes(&s) < 45 && waited.elapsed() < std::time::Duration::from_secs(60) {
        assert!(child.try_wait().unwrap().is_none(), "undo ended early");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    let _ = child.wait();
    let half = writes(&s);
    // Past the deletions (planned first), among the updates put back.
    assert!((45..90).contains(&half), "killed after {half} writes");
    let again = undo(&s.sandbox, &s.ledger, &[]).await;
    assert_eq!(again.code, Some(0), "{}", again.text());
    assert_eq!(held(&s.sandbox), before);
    // Each customer deleted or updated once, each item once.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for e in &s.sandbox.requests()[journal_start..] {
        match e.method.as_str() {
            "DELETE" => *seen.entry(e.path.clone()).or_default() += 1,
            "PUT" if e.path == "/api/batch/customers" => {
                for c in e.body["customers"].as_array().unwrap() {
                    *seen.entry(format!("put {}", c["customer_id"])).or_default() += 1;
                }
            }
            "PUT" => *seen.entry(e.path.clone()).or_default() += 1,
            _ => {}
        }
    }
    assert_eq!(seen.len(), 90, "{seen:?}");
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    let r = common::report(&s.ledger);
    assert_eq!(r["undo"]["counts"]["reversed"], 90, "{r}");
    assert_eq!(r["undo"]["counts"]["kept"], 0, "{r}");

    // The worst crash: every call made, no outcome recorded (the undo
    // ledger lost). Run again: each target found as before the run (or
    // gone), nothing sent, nothing taken for a person's edit.
    std::fs::remove_file(undo_ledger(&s.ledger)).unwrap();
    let journal_now = s.sandbox.requests().len();
    let again = undo(&s.sandbox, &s.ledger, &[]).await;
    assert_eq!(again.code, Some(0), "{}", again.text());
    assert!(s.sandbox.requests()[journal_now..]
        .iter()
        .all(|e| e.method == "GET"));
    let r = common::report(&s.ledger);
    assert_eq!(r["undo"]["counts"]["reversed"], 90, "{r}");
    assert_eq!(held(&s.sandbox), before);
}

/// A first import under faults leaves creations of unknown outcome: undo
/// refuses until `retry` has looked them up, then takes everything back,
/// itself under faults (run again until it says all reversed).
#[tokio::test(flavor = "multi_thread")]
async fn undo_after_faults_waits_for_retry_then_takes_everything_back() {
    let mut config = config();
    config.faults = vec![FaultKind::DropAfter, FaultKind::ServerErrorAfter];
    config.seed = 7;
    let s = setup(0, 40, config).await;
    std::fs::write(&s.mapping, plain_mapping()).unwrap();
    let before = held(&s.sandbox);
    s.sandbox.set_fault_rate(0.3);
    let out = run(&s, &["--batch-size", "5"]).await;
    assert_eq!(out.code, Some(1), "{}", out.text());
    let r = common::report(&s.ledger);
    assert!(
        r["stages"]["customer"]["unknown"].as_u64().unwrap() > 0,
        "{r}"
    );
    s.sandbox.set_fault_rate(0.0);
    let refused = undo(&s.sandbox, &s.ledger, &[]).await;
    assert_eq!(refused.code, Some(2), "{}", refused.text());
    assert!(refused.stderr.contains("retry"), "{}", refused.stderr);
    assert!(!undo_ledger(&s.ledger).exists());

    let mut retry = common::bin(PASSWORD);
    retry
        .arg("retry")
        .arg(&s.ledger)
        .args(["--url", &s.sandbox.url(), "--user", "api_user"])
        .args(["--no-progress", "--rate", "5000"]);
    let out = common::output(retry).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert_eq!(common::customers(&s.sandbox), 5 + 40);

    s.sandbox.set_fault_rate(0.2);
    let mut last = None;
    for _ in 0..6 {
        let out = undo(&s.sandbox, &s.ledger, &[]).await;
        if out.code == Some(0) {
            last = Some(out);
            break;
        }
        assert_eq!(out.code, Some(1), "{}", out.text());
    }
    let last = last.expect("undo ends with everything reversed");
    s.sandbox.set_fault_rate(0.0);
    assert!(
        last.stdout.contains("undo: 40 reversed, 0 kept"),
        "{}",
        last.stdout
    );
    assert_eq!(held(&s.sandbox), before);
}

/// A `sync` night taken back: its customers deleted, and the state told,
/// so that the next night (a new export of the same people, looked up
/// one by one) creates them again rather than take them as unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_night_taken_back_is_sent_again_the_next_night() {
    let s = setup(0, 0, config()).await;
    let drop = s.dir.join("drop");
    std::fs::create_dir(&drop).unwrap();
    let state = s.dir.join("state.sqlite");
    let before = held(&s.sandbox);
    let night = |file: &str, text: String| {
        std::fs::write(drop.join(file), text).unwrap();
        let mut cmd = common::bin(PASSWORD);
        cmd.arg("sync")
            .arg(&drop)
            .arg("--mapping")
            .arg(&s.mapping)
            .arg("--state")
            .arg(&state)
            .args(["--url", &s.sandbox.url(), "--user", "api_user"])
            .args(["--no-progress", "--rate", "5000", "--settle", "0"])
            .args(["--index", "never"]);
        cmd
    };
    let out = common::output(night("mon.csv", rows(0, 6, "new"))).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert_eq!(common::customers(&s.sandbox), 5 + 6);
    let ledger = drop.join(".thulium-import").join("mon.csv.ledger.jsonl");
    // A dry run speaks in the conditional: nothing was done.
    let dry = undo(&s.sandbox, &ledger, &["--dry-run"]).await;
    assert_eq!(dry.code, Some(0), "{}", dry.text());
    assert!(
        dry.stdout
            .contains("undo (dry run): would reverse 6, would keep 0"),
        "{}",
        dry.stdout
    );
    let out = undo(&s.sandbox, &ledger, &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(
        out.stdout
            .contains("6 customer(s) taken back forgotten (the next run sends their rows again)"),
        "{}",
        out.stdout
    );
    assert_eq!(held(&s.sandbox), before);
    // Run again: nothing to do, the state not changed, and not said to be.
    let again = undo(&s.sandbox, &ledger, &[]).await;
    assert_eq!(again.code, Some(0), "{}", again.text());
    assert!(!again.stdout.contains("sync state"), "{}", again.stdout);
    // The next night's export holds the same six people, and one more.
    std::fs::remove_file(drop.join("mon.csv")).unwrap();
    let out = common::output(night("tue.csv", rows(0, 7, "new"))).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let ids = common::by_identifier(&s.sandbox);
    for i in 1..=7 {
        assert!(ids.contains_key(&format!("N-{i}")), "N-{i} sent again");
    }
}

/// No `match`: the run creates without looking anyone up. A creation
/// whose answer is lost (the connection dropped before the request was
/// applied) is looked up by `retry`, which finds the customer that was
/// already there with the row's identifier, adopts it and writes the
/// row's fields onto it. `undo` must not delete that customer: it gets
/// its old values back; the customers the run really created are deleted.
#[tokio::test(flavor = "multi_thread")]
async fn undo_puts_back_a_customer_retry_adopted_and_never_deletes_it() {
    let mut config = config();
    config.faults = vec![FaultKind::DropBefore];
    config.seed = 11;
    let s = setup(20, 0, config).await;
    std::fs::write(
        &s.mapping,
        "[source]\ndelimiter = \";\"\nencoding = \"utf-8\"\n\n[customer]\nsurname = { column = \"Surname\", required = true }\nname = \"Name\"\nidentifier = \"Id\"\nemail = \"Email\"\n",
    )
    .unwrap();
    let before = held(&s.sandbox);
    let old_ids: Vec<i64> = (1..=20)
        .map(|i| id_of(&s.sandbox, &format!("P-{i}")))
        .collect();
    s.sandbox.set_fault_rate(0.3);
    let out = run(&s, &["--batch-size", "1"]).await;
    s.sandbox.set_fault_rate(0.0);
    assert_eq!(out.code, Some(1), "{}", out.text());
    let unknown = common::report(&s.ledger)["stages"]["customer"]["unknown"]
        .as_u64()
        .unwrap();
    assert!(unknown > 0, "{}", out.text());

    let mut retry = common::bin(PASSWORD);
    retry
        .arg("retry")
        .arg(&s.ledger)
        .args(["--url", &s.sandbox.url(), "--user", "api_user"])
        .args(["--no-progress", "--rate", "5000"]);
    let out = common::output(retry).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let r = common::report(&s.ledger);
    let adopted = r["actions"]["adopted"].as_u64().unwrap();
    assert_eq!(adopted, unknown, "{r}");
    // The adopted ones now hold the row's fields (the retry's PUT).
    let adopted_ids: Vec<i64> = old_ids
        .iter()
        .copied()
        .filter(|id| {
            s.sandbox.state_json()["customers"][id.to_string()]["surname"]
                .as_str()
                .unwrap()
                .starts_with("Nowak-new")
        })
        .collect();
    assert_eq!(adopted_ids.len() as u64, adopted);

    let out = undo(&s.sandbox, &s.ledger, &["--json"]).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let j: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["counts"]["reversed"], 20, "{j}");
    for t in j["targets"].as_array().unwrap() {
        let id = t["customer_id"].as_i64().unwrap();
        let want = if adopted_ids.contains(&id) {
            "restore"
        } else {
            "delete"
        };
        assert_eq!(t["undo"], want, "{t}");
    }
    // Every customer that was there before is there, as it was; the
    // duplicates the run created are gone.
    assert_eq!(held(&s.sandbox), before);
}

/// A customer the run created that a later night changed is kept: one
/// got a field this run never wrote (seen by `updated_at`, the system's
/// clock a day on), one got a field-group item in another group; the
/// others are deleted.
#[tokio::test(flavor = "multi_thread")]
async fn undo_keeps_created_customers_a_later_night_changed() {
    let s = setup(0, 4, config()).await;
    std::fs::write(&s.mapping, plain_mapping()).unwrap();
    let out = run(&s, &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let ids: Vec<i64> = (1..=4)
        .map(|i| id_of(&s.sandbox, &format!("N-{i}")))
        .collect();

    // The next night, another export, another ledger.
    s.sandbox.advance_clock(24 * 3600);
    let night = |name: &str, mapping: &str, csv: &str| {
        let m = s.dir.join(format!("{name}.toml"));
        std::fs::write(&m, mapping).unwrap();
        let c = s.dir.join(format!("{name}.csv"));
        std::fs::write(&c, csv).unwrap();
        let l = s.dir.join(format!("{name}.ledger.jsonl"));
        common::run_against(&s.sandbox, PASSWORD, &c, &m, &l)
    };
    let head = "[source]\ndelimiter = \";\"\nencoding = \"utf-8\"\n\n[customer]\nmatch = \"identifier\"\nsurname = { column = \"Surname\", required = true }\nidentifier = \"Id\"\n";
    let phone = night(
        "phone",
        &format!("{head}phone_number = \"Phone\"\n"),
        "Id;Surname;Phone\nN-1;Kowal-1;48600100200\n",
    );
    let out = common::output(phone).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let contract = night(
        "contract",
        &format!(
            "{head}\n[[field_group]]\ngroup_id = 3\n[field_group.values]\n20 = \"Contract\"\n"
        ),
        "Id;Surname;Contract\nN-2;Kowal-2;U-1\n",
    );
    let out = common::output(contract).await;
    assert_eq!(out.code, Some(0), "{}", out.text());

    let out = undo(&s.sandbox, &s.ledger, &["--json"]).await;
    assert_eq!(out.code, Some(1), "{}", out.text());
    let j: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(j["counts"]["kept"], 2, "{j}");
    assert_eq!(j["counts"]["reversed"], 2, "{j}");
    let message = |id: i64| {
        j["not_reversed"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["customer_id"] == id)
            .unwrap()["message"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        message(ids[0]).contains("changed after the run (updated_at"),
        "{j}"
    );
    assert!(
        message(ids[1]).contains("items the run did not create"),
        "{j}"
    );
    let now = common::by_identifier(&s.sandbox);
    assert!(now.contains_key("N-1") && now.contains_key("N-2"));
    assert!(!now.contains_key("N-3") && !now.contains_key("N-4"));
}
