//! `plan` against a populated sandbox, then `run`: the plan says, row by
//! row, the action the run then takes, the fields (customer fields, custom
//! fields, field-group items) whose values change from what to what, and
//! the requests the run sends (within 5 %); and it writes nothing: no
//! ledger, no state change, no request but GETs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use thulium_import::ledger::Stage;
use thulium_import::outcomes::Outcomes;
use thulium_import::sandbox::{Sandbox, SandboxConfig};

const PASSWORD: &str = "plan-secret";

async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxConfig {
        password: PASSWORD.into(),
        retry_after_secs: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap()
}

/// Customers matched by identifier: surname, e-mail, a custom field, and a
/// contract (field group 3: 20 its number, the match; 22 its amount).
fn mapping(dir: &Path) -> PathBuf {
    let path = dir.join("m.toml");
    std::fs::write(
        &path,
        r#"[source]
delimiter = ";"

[customer]
match = "identifier"
surname = { column = "Nazwisko", required = true }
identifier = "ID"
email = "Email"

[customer.custom_fields]
"Segment" = "Segment"

[[field_group]]
group_id = 3
match = [20]
[field_group.values]
20 = "Umowa"
22 = { column = "Kwota", type = "integer" }
"#,
    )
    .unwrap();
    path
}

/// A row: identifier, surname, e-mail, segment, contract, amount.
type Row = [String; 6];

fn person(i: usize) -> Row {
    [
        format!("K{i:04}"),
        format!("Nazwisko{i}"),
        format!("osoba{i}@example.pl"),
        "A".into(),
        format!("U-{i}"),
        (1000 + i).to_string(),
    ]
}

fn export(path: &Path, rows: &[Row]) {
    let mut text = String::from("ID;Nazwisko;Email;Segment;Umowa;Kwota\n");
    for r in rows {
        text.push_str(&r.join(";"));
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn plan_command(sandbox: &Sandbox, csv: &Path, mapping: &Path) -> std::process::Command {
    let mut cmd = common::bin(PASSWORD);
    cmd.arg("plan")
        .arg(csv)
        .arg("--mapping")
        .arg(mapping)
        .args([
            "--url",
            &sandbox.url(),
            "--user",
            "api_user",
            "--no-progress",
            "--rate",
            "5000",
        ]);
    cmd
}

/// Every file under `dir` with the SHA-256 of its bytes.
fn files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                thulium_import::ledger::sha256_file(&p).unwrap(),
            )
        })
        .collect()
}

/// The action the run took for each row, read from its ledger the way the
/// plan reads its own outcomes.
fn run_actions(ledger: &Path) -> BTreeMap<u64, String> {
    let outcomes = Outcomes::read(ledger).unwrap();
    (1..=outcomes.rows())
        .filter_map(|n| {
            let row = outcomes.row(n)?;
            let action = thulium_import::plan::action_of(
                row.stage(Stage::Mapping, 0).map(|o| o.status),
                row.stage(Stage::Customer, 0)
                    .map(|o| (o.status, row.action(), row.message(Stage::Customer, 0))),
            );
            Some((n, action))
        })
        .collect()
}

fn plan_actions(plan: &Value) -> BTreeMap<u64, String> {
    plan["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["row"].as_u64().unwrap(),
                r["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn row_of(plan: &Value, row: u64) -> &Value {
    plan["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["row"] == row)
        .unwrap()
}

fn change(row: &Value, field: &str) -> (Value, Value) {
    let c = row["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["field"] == field)
        .unwrap_or_else(|| panic!("no change of {field} in {row}"));
    (c["from"].clone(), c["to"].clone())
}

/// Requests in the journal after `mark`, and whether any is not a GET.
fn since(sandbox: &Sandbox, mark: usize) -> (usize, Vec<String>) {
    let all = sandbox.requests();
    let writes = all[mark..]
        .iter()
        .filter(|e| e.method != "GET")
        .map(|e| format!("{} {}", e.method, e.path))
        .collect();
    (all.len() - mark, writes)
}

fn within_5_percent(planned: u64, sent: usize) {
    eprintln!("requests: planned {planned}, sent {sent}");
    let sent = sent as f64;
    assert!(
        (planned as f64 - sent).abs() <= 0.05 * sent,
        "the plan said {planned} requests, the run sent {sent}"
    );
}

/// Night 1 imports 60 customers with the state. Then, before night 2, a
/// plan of a file where 10 surnames, 10 segments and 5 contract amounts
/// changed, 20 customers are new, one row is invalid and one matches two
/// customers; then the run of that file.
#[tokio::test(flavor = "multi_thread")]
async fn the_run_does_what_the_plan_said() {
    let dir = tempfile::tempdir().unwrap().keep();
    let work = dir.join("work");
    std::fs::create_dir(&work).unwrap();
    let sandbox = sandbox().await;
    let m = mapping(&dir);
    let state = work.join("state.sqlite");
    let csv1 = dir.join("night1.csv");
    export(&csv1, &(1..=60).map(person).collect::<Vec<_>>());
    let mut night1 = common::run_against(&sandbox, PASSWORD, &csv1, &m, &dir.join("1.jsonl"));
    night1.arg("--state").arg(&state);
    let n1 = common::output(night1).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());

    // Two customers that share an identifier, made in Thulium by hand.
    for _ in 0..2 {
        let fields = json!({"surname": "Dwa", "identifier": "DUP-1"});
        sandbox
            .shared()
            .lock_state()
            .add_customer(fields.as_object().unwrap().clone());
    }
    let mut rows: Vec<Row> = (1..=80).map(person).collect();
    for r in &mut rows[0..10] {
        r[1] = r[1].replace("Nazwisko", "Nowak");
    }
    for r in &mut rows[10..20] {
        r[3] = "B".into();
    }
    for r in &mut rows[20..25] {
        r[5] = (r[5].parse::<i64>().unwrap() + 500).to_string();
    }
    rows.push([
        "K0081".into(),
        String::new(),
        "osoba81@example.pl".into(),
        "A".into(),
        "U-81".into(),
        "1081".into(),
    ]);
    rows.push([
        "DUP-1".into(),
        "Dwa".into(),
        String::new(),
        "A".into(),
        "U-D".into(),
        "1".into(),
    ]);
    let csv = work.join("night2.csv");
    export(&csv, &rows);

    // The plan.
    let before = files(&work);
    let mark = sandbox.requests().len();
    let mut cmd = plan_command(&sandbox, &csv, &m);
    cmd.arg("--state").arg(&state).arg("--json");
    let out = common::output(cmd).await;
    assert_eq!(out.code, Some(1), "{}", out.text());
    let plan: Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("{}", out.text()));
    let (_, writes) = since(&sandbox, mark);
    assert!(writes.is_empty(), "the plan wrote: {writes:?}");
    assert_eq!(files(&work), before, "the plan left a file or changed one");

    assert_eq!(
        plan["actions"],
        json!({"created": 20, "updated": 20, "unchanged": 40, "invalid": 1, "ambiguous": 1}),
        "{}",
        out.stdout
    );
    assert_eq!(
        plan["fields"],
        json!({"surname": 10, "custom_fields.Segment": 10, "field_group.3.22": 5})
    );
    assert_eq!(
        change(row_of(&plan, 1), "surname"),
        (json!("Nazwisko1"), json!("Nowak1"))
    );
    assert_eq!(row_of(&plan, 1)["changes"].as_array().unwrap().len(), 1);
    assert_eq!(
        change(row_of(&plan, 11), "custom_fields.Segment"),
        (json!("A"), json!("B"))
    );
    assert_eq!(
        change(row_of(&plan, 21), "field_group.3.22"),
        (json!(1021), json!(1521))
    );
    assert_eq!(row_of(&plan, 21)["action"], "unchanged");
    let customer_21 = row_of(&plan, 21)["customer_id"].as_i64().unwrap();
    assert!(row_of(&plan, 30)["changes"].as_array().unwrap().is_empty());
    assert_eq!(row_of(&plan, 61)["customer_id"], Value::Null);
    assert_eq!(row_of(&plan, 61)["stages"][0]["would"], "create");

    // The run, on the system the plan read.
    let mark = sandbox.requests().len();
    let ledger = dir.join("2.jsonl");
    let mut run = common::run_against(&sandbox, PASSWORD, &csv, &m, &ledger);
    run.arg("--state").arg(&state);
    let ran = common::output(run).await;
    assert_eq!(ran.code, Some(1), "{}", ran.text());
    assert_eq!(run_actions(&ledger), plan_actions(&plan));
    let (sent, _) = since(&sandbox, mark);
    within_5_percent(plan["requests"].as_u64().unwrap(), sent);

    // What the plan said would change did.
    let held = common::by_identifier(&sandbox);
    assert_eq!(held["K0001"]["surname"], "Nowak1");
    assert_eq!(held["K0011"]["custom_fields"]["Segment"], "B");
    let state = sandbox.shared().lock_state();
    let item = state
        .field_group_items
        .iter()
        .find(|i| i.customer_id == customer_21)
        .unwrap();
    assert!(item
        .values
        .iter()
        .any(|v| v["field_id"] == 22 && v["value"] == 1521));
}

/// Without a state and with a lookup per row (`--index never`), on a
/// system holding half the file: the plan's text says the counts and the
/// fields with examples, and the run takes the plan's action for every row
/// and sends the requests the plan said.
#[tokio::test(flavor = "multi_thread")]
async fn lookups_and_the_text_plan() {
    let dir = tempfile::tempdir().unwrap().keep();
    let sandbox = sandbox().await;
    let m = mapping(&dir);
    let csv1 = dir.join("first.csv");
    export(&csv1, &(1..=30).map(person).collect::<Vec<_>>());
    let first = common::run_against(&sandbox, PASSWORD, &csv1, &m, &dir.join("1.jsonl"));
    assert_eq!(common::output(first).await.code, Some(0));

    let mut rows: Vec<Row> = (1..=60).map(person).collect();
    rows[4][1] = "STARY-Nowak".into();
    let csv = dir.join("second.csv");
    export(&csv, &rows);
    let mark = sandbox.requests().len();
    let mut cmd = plan_command(&sandbox, &csv, &m);
    cmd.args(["--index", "never", "--all"]);
    let out = common::output(cmd).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let (planned_reads, writes) = since(&sandbox, mark);
    assert!(writes.is_empty(), "{writes:?}");
    let text = &out.stdout;
    assert!(
        // The 29 rows whose values Thulium already holds are not sent.
        text.contains("plan: 60 row(s): 30 created, 1 updated, 29 unchanged"),
        "{text}"
    );
    assert!(
        text.contains("surname: 1 — e.g. \"Nazwisko5\" → \"STARY-Nowak\""),
        "{text}"
    );
    assert!(!text.contains("change no field"), "{text}");
    assert!(text.contains("time: "), "{text}");
    assert!(text.contains("row 5 (line 6): updated customer"), "{text}");
    let requests: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("requests the run would send: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    // Every lookup is a read the plan made itself.
    assert!(planned_reads >= 60, "{planned_reads}");

    let mut json = plan_command(&sandbox, &csv, &m);
    json.args(["--index", "never", "--json"]);
    let plan: Value = serde_json::from_str(&common::output(json).await.stdout).unwrap();
    assert_eq!(plan["requests"], requests);

    let mark = sandbox.requests().len();
    let ledger = dir.join("2.jsonl");
    let mut run = common::run_against(&sandbox, PASSWORD, &csv, &m, &ledger);
    run.args(["--index", "never"]);
    let ran = common::output(run).await;
    assert_eq!(ran.code, Some(0), "{}", ran.text());
    assert_eq!(run_actions(&ledger), plan_actions(&plan));
    within_5_percent(requests, since(&sandbox, mark).0);
    assert_eq!(
        common::by_identifier(&sandbox)["K0005"]["surname"],
        "STARY-Nowak"
    );
}

/// A mapping matching by identifier whose customers gone from the file
/// are deleted.
fn gone_mapping(dir: &Path) -> PathBuf {
    let path = dir.join("gone.toml");
    std::fs::write(
        &path,
        "[source]\ndelimiter = \";\"\n[customer]\nmatch = \"identifier\"\nidentifier = \"ID\"\nsurname = \"Nazwisko\"\non_gone = \"delete\"\n",
    )
    .unwrap();
    path
}

fn gone_export(path: &Path, ids: impl IntoIterator<Item = usize>, surname: &str) {
    let mut text = String::from("ID;Nazwisko\n");
    for i in ids {
        text.push_str(&format!("G{i:03};{surname}{i}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// With a state and `on_gone = "delete"`: the plan lists the customers
/// gone from the file (text and `--json`'s `gone`), deletes nothing (GETs
/// only, the state untouched), exits 0; the run that follows deletes
/// exactly those.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_lists_the_gone_customers_and_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap().keep();
    let sandbox = sandbox().await;
    let m = gone_mapping(&dir);
    let state = dir.join("state.sqlite");
    let csv = dir.join("night1.csv");
    gone_export(&csv, 1..=40, "Nowak");
    let mut first = common::run_against(&sandbox, PASSWORD, &csv, &m, &dir.join("1.jsonl"));
    first.arg("--state").arg(&state);
    let n1 = common::output(first).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());
    let ids = common::by_identifier(&sandbox);
    let gone: Vec<i64> = (38..=40)
        .map(|i| ids[&format!("G{i:03}")]["customer_id"].as_i64().unwrap())
        .collect();

    let csv2 = dir.join("night2.csv");
    gone_export(&csv2, 1..=37, "Nowak");
    let kept = files(&dir);
    let mark = sandbox.requests().len();
    let mut text = plan_command(&sandbox, &csv2, &m);
    text.arg("--state").arg(&state);
    let out = common::output(text).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let listed = format!("{}, {} and {}", gone[0], gone[1], gone[2]);
    assert!(
        out.stdout
            .contains("note: on_gone: the run would delete 3 customers gone from this file"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(&listed), "{listed}: {}", out.stdout);
    let mut json = plan_command(&sandbox, &csv2, &m);
    json.arg("--state").arg(&state).arg("--json");
    let out = common::output(json).await;
    assert_eq!(out.code, Some(0), "{}", out.text());
    let plan: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        plan["gone"],
        json!({"action": "delete", "customer_ids": gone}),
        "{plan}"
    );
    assert_eq!(plan["writes"]["DELETE customers/:id"], 3, "{plan}");
    let planned = plan["requests"].as_u64().unwrap();
    assert_eq!(plan["actions"]["unchanged"], 37, "{plan}");
    let (_, writes) = since(&sandbox, mark);
    assert!(writes.is_empty(), "a plan deletes nothing: {writes:?}");
    assert_eq!(common::customers(&sandbox), 40);
    assert_eq!(files(&dir), kept, "the state and every file as they were");

    // The run deletes the customers the plan named.
    let mark = sandbox.requests().len();
    let mut run = common::run_against(&sandbox, PASSWORD, &csv2, &m, &dir.join("2.jsonl"));
    run.arg("--state").arg(&state);
    let ran = common::output(run).await;
    assert_eq!(ran.code, Some(0), "{}", ran.text());
    let (sent, writes) = since(&sandbox, mark);
    // The run reads each deleted customer for its before-image (the undo
    // file) before its DELETE: the plan counts those reads too.
    within_5_percent(planned, sent);
    let want: Vec<String> = gone
        .iter()
        .map(|id| format!("DELETE /api/customers/{id}"))
        .collect();
    assert_eq!(writes, want);
}

/// A file that trips `--max-changes`: the plan says the run would stop
/// (exit 2) and still shows what a run allowed to go on would do; it
/// exits 2, as the run would, so that a script gating `run` on `plan`
/// stops too. Nothing is written.
#[tokio::test(flavor = "multi_thread")]
async fn a_plan_over_max_changes_says_the_run_would_stop_and_exits_2() {
    let dir = tempfile::tempdir().unwrap().keep();
    let sandbox = sandbox().await;
    let m = gone_mapping(&dir);
    let state = dir.join("state.sqlite");
    let csv = dir.join("night1.csv");
    gone_export(&csv, 1..=20, "Nowak");
    let mut first = common::run_against(&sandbox, PASSWORD, &csv, &m, &dir.join("1.jsonl"));
    first.arg("--state").arg(&state);
    assert_eq!(common::output(first).await.code, Some(0));

    // Every surname changed: an export bug.
    let csv2 = dir.join("night2.csv");
    gone_export(&csv2, 1..=20, "Imie");
    let mark = sandbox.requests().len();
    for json in [false, true] {
        let mut cmd = plan_command(&sandbox, &csv2, &m);
        cmd.arg("--state").arg(&state);
        if json {
            cmd.arg("--json");
        }
        let out = common::output(cmd).await;
        assert_eq!(out.code, Some(2), "{}", out.text());
        if json {
            let plan: Value = serde_json::from_str(&out.stdout).unwrap();
            assert_eq!(plan["actions"]["updated"], 20, "{plan}");
            let notes = plan["notes"].as_array().unwrap();
            assert!(
                notes.iter().any(|n| n.as_str().unwrap().starts_with(
                    "run would stop here (exit 2): this file would update 20 of the 20"
                )),
                "{plan}"
            );
        } else {
            assert!(
                out.stdout.contains("plan: 20 row(s): 20 updated"),
                "{}",
                out.stdout
            );
            assert!(
                out.stdout.contains("note: run would stop here (exit 2)")
                    && out.stdout.contains("--max-changes 50%"),
                "{}",
                out.stdout
            );
        }
    }
    let (_, writes) = since(&sandbox, mark);
    assert!(writes.is_empty(), "{writes:?}");
    // The run refuses the file as the plan said.
    let mut run = common::run_against(&sandbox, PASSWORD, &csv2, &m, &dir.join("2.jsonl"));
    run.arg("--state").arg(&state);
    let ran = common::output(run).await;
    assert_eq!(ran.code, Some(2), "{}", ran.text());
    assert_eq!(since(&sandbox, mark).1, Vec::<String>::new());
}
