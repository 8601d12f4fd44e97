//! Preflight and pilot runs, end to end: what the system would refuse is
//! caught before the first POST — the whole mapping (exit 2, nothing sent)
//! or one row's stage (`invalid`, its other stages done) — and a pilot of N
//! rows followed by `retry` imports every row once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thulium_import::sandbox::{Sandbox, SandboxConfig};

const PASSWORD: &str = "preflight-secret";

fn config() -> SandboxConfig {
    SandboxConfig {
        password: PASSWORD.into(),
        // Campaign 00001 has two agents only.
        campaign_agents: BTreeMap::from([(
            "00001".to_string(),
            vec!["j.doe".to_string(), "m.zielinski".to_string()],
        )]),
        ..SandboxConfig::default()
    }
}

fn bin() -> std::process::Command {
    common::bin(PASSWORD)
}

use common::output;

fn run(sandbox: &Sandbox, csv: &Path, mapping: &Path, ledger: &Path) -> std::process::Command {
    let mut cmd = bin();
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
        .args(["--rate", "2000", "--max-consecutive-failures", "0"]);
    cmd
}

fn lines(ledger: &Path) -> Vec<Value> {
    std::fs::read_to_string(ledger)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A small UTF-8 export: one row per rule of a row that cannot work.
fn export(dir: &Path) -> PathBuf {
    let csv = dir.join("rows.csv");
    std::fs::write(
        &csv,
        "Nazwisko;ID;Opiekun;Kampania;Status;Termin\n\
         Nowak;R-1;j.doe;00001;1;\n\
         Zając;R-2;ghost;00001;1;\n\
         Wójcik;R-3;j.doe;00001;99;\n\
         Kamińska;R-4;m.zielinski;00001;9;\n\
         Lewandowski;R-5;j.doe;00001;10;\n\
         Dąbrowska;R-6;a.nowak;00002;1;\n\
         Mazur;R-7;a.nowak;00001;1;\n",
    )
    .unwrap();
    csv
}

/// Customers (with an account manager), an item, a campaign record.
fn mapping(dir: &Path, extra: &str) -> PathBuf {
    let m = dir.join(format!("m{}.toml", extra.len()));
    std::fs::write(
        &m,
        format!(
            "[source]\ndelimiter = \";\"\n[customer]\nsurname = \"Nazwisko\"\nidentifier = \"ID\"\naccount_manager = \"Opiekun\"\n\
             [[field_group]]\ngroup_id = 2\n[field_group.values]\n12 = \"ID\"\n\
             [campaign]\nid = \"Kampania\"\nstatus_id = \"Status\"\nagent_login = \"Opiekun\"\nnext_call_date = {{ column = \"Termin\", date = \"%d.%m.%Y %H:%M\" }}\n{extra}"
        ),
    )
    .unwrap();
    m
}

#[tokio::test(flavor = "multi_thread")]
async fn what_cannot_work_for_any_row_is_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap().keep();
    let csv = export(&dir);
    let cases: [(&str, &str, &str); 7] = [
        (
            "[[field_group]]\ngroup_id = 9\n[field_group.values]\n1 = \"ID\"\n",
            "field_group[1].group_id: field group 9 does not exist; the system has 2 Marketing, 3 Umowa",
            "",
        ),
        (
            "[[field_group]]\ngroup_id = 2\n[field_group.values]\n20 = \"ID\"\n",
            "field_group[1].values.20: field 20 is not a field of group 2 (Marketing); it has 8 Liczba zamówień, 10 Komentarz, 12 Kanał pozyskania",
            "",
        ),
        (
            "[campaign_update]\nid = { value = \"00009\" }\nidentifier = \"ID\"\n",
            "campaign_update.id: campaign 00009 does not exist; the system has 00001 Sprzedaż, 00002 Windykacja, 00003 Ankieta",
            "",
        ),
        (
            "[campaign_update]\nid = { value = \"00003\" }\nidentifier = \"ID\"\nstatus_id = { value = 99 }\n",
            "campaign_update.status_id: status_id 99 is not a status of campaign 00003; it has 1 Nowy (TO_CALL), 2 W trakcie (IN_PROGRESS),",
            "",
        ),
        (
            "[campaign_update]\nid = { value = \"00003\" }\nidentifier = \"ID\"\ndictionary_status_id = { value = 42 }\n",
            "campaign_update.dictionary_status_id: dictionary_status_id 42 is not a dictionary status of campaign 00003",
            "",
        ),
        (
            "[campaign_update]\nid = { value = \"00001\" }\nidentifier = \"ID\"\nagent_login = { value = \"a.nowak\" }\n",
            "campaign_update.agent_login: agent a.nowak is not an agent of campaign 00001; it has j.doe, m.zielinski",
            "",
        ),
        (
            "",
            "customer.account_manager: account_manager x.nobody is not an agent of this system",
            "x.nobody",
        ),
    ];
    for (extra, message, manager) in cases {
        let sandbox = Sandbox::start(config()).await.unwrap();
        let mut m = mapping(&dir, extra);
        if !manager.is_empty() {
            let text = std::fs::read_to_string(&m).unwrap().replace(
                "account_manager = \"Opiekun\"",
                &format!("account_manager = {{ value = \"{manager}\" }}"),
            );
            m = dir.join("manager.toml");
            std::fs::write(&m, text).unwrap();
        }
        let ledger = dir.join(format!("l{}.jsonl", extra.len()));
        let out = output(run(&sandbox, &csv, &m, &ledger)).await;
        assert_eq!(out.code, Some(2), "{message}\n{}", out.stderr);
        assert!(out.stderr.contains(message), "{message}\n{}", out.stderr);
        assert!(
            sandbox.requests().iter().all(|r| r.method == "GET"),
            "{message}: only reads"
        );
        assert!(!ledger.exists(), "nothing to record");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_that_cannot_work_is_invalid_at_that_stage_and_its_other_stages_go_on() {
    let dir = tempfile::tempdir().unwrap().keep();
    let csv = export(&dir);
    let m = mapping(&dir, "");
    let sandbox = Sandbox::start(config()).await.unwrap();
    let ledger = dir.join("l.jsonl");
    let out = output(run(&sandbox, &csv, &m, &ledger)).await;
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let events = lines(&ledger);
    let at = |row: u64, stage: &str| -> Value {
        events
            .iter()
            .rev()
            .find(|e| e["row"] == row && e["stage"] == stage)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let message = |row, stage| at(row, stage)["message"].as_str().unwrap_or("").to_string();
    // Row 1 goes through.
    assert_eq!(at(1, "campaign")["status"], "ok");
    // Row 2: an account manager who is not an agent: its customer is
    // invalid (the stages that need one cannot go).
    assert_eq!(at(2, "customer")["status"], "invalid");
    assert!(
        message(2, "customer").contains(
            "account_manager ghost is not an agent of this system; it has j.doe, a.nowak"
        ),
        "{}",
        message(2, "customer")
    );
    // Rows 3 to 7: the campaign stage is invalid, the customer and the item
    // are done.
    for (row, reason) in [
        (3, "status_id 99 is not a status of campaign 00001; it has 1 Nowy (TO_CALL)"),
        (4, "status 9 (Mój rekord) of campaign 00001 is MY_RECORD, which needs agent_login and next_call_date"),
        (5, "status 10 (Nie wcześniej niż) of campaign 00001 is CALL_NO_SOONER_THAN, which needs next_call_date"),
        (7, "agent a.nowak is not an agent of campaign 00001; it has j.doe, m.zielinski"),
    ] {
        assert_eq!(at(row, "campaign")["status"], "invalid", "row {row}");
        assert!(message(row, "campaign").contains(reason), "row {row}: {}", message(row, "campaign"));
        assert_eq!(at(row, "customer")["status"], "ok", "row {row}");
        assert_eq!(at(row, "field_group")["status"], "ok", "row {row}");
    }
    // Row 6: a.nowak is an agent of 00002 (every agent is): it goes through.
    assert_eq!(at(6, "campaign")["status"], "ok");
    // Nothing the server refused: preflight caught it all first.
    let failed = events.iter().filter(|e| e["status"] == "failed").count();
    assert_eq!(failed, 0, "{}", out.stdout);
    let records = sandbox.state_json()["campaigns"]["00001"]["by_customer"]
        .as_object()
        .unwrap()
        .len();
    assert_eq!(records, 1, "row 1's record only");

    // `check --online` lists the same rows, and `--json` too.
    let mut check = bin();
    check
        .args([
            "check",
            csv.to_str().unwrap(),
            "--mapping",
            m.to_str().unwrap(),
        ])
        .args([
            "--online",
            "--url",
            &sandbox.url(),
            "--user",
            "api_user",
            "--json",
        ]);
    let out = output(check).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        (report["rows"].as_u64(), report["invalid"].as_u64()),
        (Some(7), Some(5)),
        "{report}"
    );
    let rows: Vec<u64> = report["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["row"].as_u64().unwrap())
        .collect();
    // Row 2 twice: its account manager and its campaign's agent.
    assert_eq!(rows, [2, 2, 3, 4, 5, 7]);
    // Offline, the same file is fine: only the system knows.
    let mut offline = bin();
    offline.args([
        "check",
        csv.to_str().unwrap(),
        "--mapping",
        m.to_str().unwrap(),
    ]);
    assert_eq!(output(offline).await.code, Some(0));
    // A mapping the system refuses: exit 2 online.
    let bad = mapping(
        &dir,
        "[campaign_update]\nid = { value = \"00009\" }\nidentifier = \"ID\"\n",
    );
    let mut check = bin();
    check
        .args([
            "check",
            csv.to_str().unwrap(),
            "--mapping",
            bad.to_str().unwrap(),
        ])
        .args(["--online", "--url", &sandbox.url(), "--user", "api_user"]);
    let out = output(check).await;
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("campaign 00009 does not exist"),
        "{}",
        out.stderr
    );
    // A wrong password: exit 3, with the hint `run` gives.
    let mut check = common::bin("not-the-password");
    check
        .args(["check", csv.to_str().unwrap(), "--mapping"])
        .arg(&m)
        .args(["--online", "--url", &sandbox.url(), "--user", "api_user"]);
    let out = output(check).await;
    assert_eq!(out.code, Some(3), "{}", out.text());
    assert!(out.stderr.contains("HTTP 401"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Administracja → Użytkownicy → Użytkownicy API"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_preflight_the_server_refuses_the_same_rows() {
    let dir = tempfile::tempdir().unwrap().keep();
    let csv = export(&dir);
    let m = mapping(&dir, "");
    let sandbox = Sandbox::start(config()).await.unwrap();
    let ledger = dir.join("l.jsonl");
    let mut cmd = run(&sandbox, &csv, &m, &ledger);
    cmd.arg("--no-preflight");
    let out = output(cmd).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        sandbox.requests().iter().all(|r| r.method != "GET"),
        "no reads"
    );
    let events = lines(&ledger);
    let failed: Vec<(u64, String)> = events
        .iter()
        .filter(|e| e["status"] == "failed")
        .map(|e| {
            (
                e["row"].as_u64().unwrap(),
                e["stage"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // The customer of row 2 and the records of rows 3, 4, 5 and 7: created
    // customers first, refused records after.
    assert_eq!(
        failed,
        [
            (2, "customer".to_string()),
            (3, "campaign".to_string()),
            (4, "campaign".to_string()),
            (5, "campaign".to_string()),
            (7, "campaign".to_string())
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pilot_then_retry_imports_every_row_once() {
    let dir = tempfile::tempdir().unwrap().keep();
    let sandbox = Sandbox::start(config()).await.unwrap();
    let ledger = dir.join("l.jsonl");
    // The sample mapping: campaign 00001's agents are j.doe and m.zielinski
    // here, so some rows' campaign stage is invalid; that is not the point.
    let mut pilot = run(
        &sandbox,
        Path::new("samples/crm_export.csv"),
        Path::new("mappings/crm_export.toml"),
        &ledger,
    );
    pilot.args(["--limit", "100"]);
    let out = output(pilot).await;
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("pilot: stopped after 100 rows (--limit)"),
        "{}",
        out.stdout
    );
    let r = common::report(&ledger);
    assert_eq!(
        (r["rows"].as_u64(), r["limit"].as_u64()),
        (Some(100), Some(100)),
        "{r}"
    );
    let after_pilot = common::customers(&sandbox);
    assert!(after_pilot > 90 && after_pilot <= 100, "{after_pilot}");
    // `check --limit` looks at the same rows.
    let mut check = bin();
    check
        .args([
            "check",
            "samples/crm_export.csv",
            "--mapping",
            "mappings/crm_export.toml",
        ])
        .args(["--limit", "100", "--json"]);
    let checked: Value = serde_json::from_str(&output(check).await.stdout).unwrap();
    assert_eq!(checked["rows"], 100);

    let mut retry = bin();
    retry.arg("retry").arg(&ledger).args([
        "--url",
        &sandbox.url(),
        "--user",
        "api_user",
        "--no-progress",
        "--rate",
        "2000",
    ]);
    let out = output(retry).await;
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    // The rows past the pilot were never sent: the summary says so, and
    // does not call them sent again.
    let not_sent_before = out
        .stdout
        .split_once(" again, ")
        .and_then(|(_, rest)| rest.split_once(" not sent before)"))
        .map(|(n, _)| n.parse::<usize>().unwrap());
    assert_eq!(not_sent_before, Some(292 - after_pilot), "{}", out.stdout);
    let r = common::report(&ledger);
    assert_eq!(r["rows"], 300, "{r}");
    assert!(r.get("limit").is_none(), "{r}");
    assert_eq!(r["not_sent"], 0);
    assert_eq!(
        common::customers(&sandbox),
        292,
        "every valid row's customer, once"
    );
    let ids = common::identifiers(&sandbox);
    assert_eq!(
        ids.iter().collect::<std::collections::HashSet<_>>().len(),
        ids.len()
    );
}

/// A run and a retry whose mapping preflight refuses stop after the
/// preflight GETs: an index of a populated system (`--index always`) is
/// read only once the mapping is known to be usable.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_mapping_never_reads_the_index() {
    let dir = tempfile::tempdir().unwrap().keep();
    let csv = export(&dir);
    let sandbox = Sandbox::start(SandboxConfig {
        preload_customers: 2500,
        ..config()
    })
    .await
    .unwrap();
    let matching = |extra: &str| {
        let m = dir.join(format!("match{}.toml", extra.len()));
        std::fs::write(
            &m,
            format!(
                "[source]\ndelimiter = \";\"\n[customer]\nsurname = \"Nazwisko\"\nidentifier = \"ID\"\nmatch = [\"identifier\"]\n{extra}"
            ),
        )
        .unwrap();
        m
    };
    let index_reads = |s: &Sandbox, from: usize| {
        s.requests()[from..]
            .iter()
            .filter(|r| r.method == "GET" && r.path == "/api/customers")
            .count()
    };
    let refused = matching("[campaign_update]\nid = { value = \"00009\" }\nidentifier = \"ID\"\n");
    let ledger = dir.join("refused.jsonl");
    let mut cmd = run(&sandbox, &csv, &refused, &ledger);
    cmd.args(["--index", "always"]);
    let out = output(cmd).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("campaign 00009 does not exist"),
        "{}",
        out.stderr
    );
    assert_eq!(index_reads(&sandbox, 0), 0, "no customer was read");
    assert!(
        sandbox.requests().iter().all(|r| r.method == "GET"),
        "only reads"
    );
    assert!(!ledger.exists());

    // The same mapping fixed: the index is read (the test would pass for
    // the wrong reason if `--index always` read nothing).
    let fine = matching("");
    let ledger = dir.join("fine.jsonl");
    let mut cmd = run(&sandbox, &csv, &fine, &ledger);
    cmd.args(["--index", "always"]);
    let out = output(cmd).await;
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(index_reads(&sandbox, 0) >= 3, "2,500 customers, 3 pages");

    // `retry` with the refused mapping: the same.
    let before = sandbox.requests().len();
    let mut retry = bin();
    retry
        .arg("retry")
        .arg(&ledger)
        .arg("--mapping")
        .arg(&refused)
        .args([
            "--url",
            &sandbox.url(),
            "--user",
            "api_user",
            "--no-progress",
        ])
        .args(["--index", "always"]);
    let out = output(retry).await;
    assert_eq!(out.code, Some(2), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("campaign 00009 does not exist"),
        "{}",
        out.stderr
    );
    assert_eq!(index_reads(&sandbox, before), 0, "no customer was read");
    assert!(sandbox.requests()[before..]
        .iter()
        .all(|r| r.method == "GET"));
}

/// A campaign record mapping whose campaign id comes from a column, with a
/// constant `extra` (`status_id = { value = 99 }`).
fn column_campaign(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let m = dir.join(name);
    std::fs::write(
        &m,
        format!(
            "[source]\ndelimiter = \";\"\n[customer]\nsurname = \"Nazwisko\"\nidentifier = \"ID\"\n\
             [campaign]\nid = \"Kampania\"\n{extra}"
        ),
    )
    .unwrap();
    m
}

/// With the campaign id taken from a column, a constant that none of the
/// campaigns the rows name has, or a column naming no campaign that exists,
/// cannot work for any row: refused before anything is sent, naming the key,
/// the value and what the campaigns have. A constant that some of them have
/// leaves the rows naming the others invalid, one by one, as before.
#[tokio::test(flavor = "multi_thread")]
async fn a_constant_no_named_campaign_has_is_refused_when_the_id_is_a_column() {
    let dir = tempfile::tempdir().unwrap().keep();
    // Rows name 00001 (agents j.doe and m.zielinski only) and 00002.
    let csv = export(&dir);
    let nowhere = dir.join("nowhere.csv");
    std::fs::write(
        &nowhere,
        "Nazwisko;ID;Kampania\nNowak;R-1;00008\nZając;R-2;00009\nWójcik;R-3;00008\n",
    )
    .unwrap();
    let cases = [
        (
            &csv,
            "status_id = { value = 99 }\n",
            "campaign.status_id: status_id 99 fits none of the 2 campaigns the rows name (00001, 00002): status_id 99 is not a status of campaign 00001; it has 1 Nowy (TO_CALL)",
        ),
        (
            &csv,
            "dictionary_status_id = { value = 42 }\n",
            "campaign.dictionary_status_id: dictionary_status_id 42 fits none of the 2 campaigns the rows name (00001, 00002)",
        ),
        (
            &csv,
            "agent_login = { value = \"ghost\" }\n",
            "campaign.agent_login: agent_login ghost fits none of the 2 campaigns the rows name (00001, 00002): agent ghost is not an agent of campaign 00001; it has j.doe, m.zielinski | agent ghost is not an agent of campaign 00002",
        ),
        (
            &nowhere,
            "",
            "campaign.id: the rows name campaign(s) 00008, 00009, and none exists; the system has 00001 Sprzedaż, 00002 Windykacja, 00003 Ankieta",
        ),
    ];
    for (n, (file, extra, message)) in cases.into_iter().enumerate() {
        let sandbox = Sandbox::start(config()).await.unwrap();
        let m = column_campaign(&dir, &format!("c{n}.toml"), extra);
        let ledger = dir.join(format!("c{n}.jsonl"));
        let out = output(run(&sandbox, file, &m, &ledger)).await;
        assert_eq!(out.code, Some(2), "{message}\n{}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(message), "{message}\n{}", out.stderr);
        assert!(
            sandbox.requests().iter().all(|r| r.method == "GET"),
            "{message}: only reads"
        );
        assert_eq!(common::customers(&sandbox), 0, "{message}");
        assert!(!ledger.exists(), "nothing to record");
    }

    // a.nowak is an agent of 00002 (every agent is), not of 00001: the
    // mapping works for row 6, and the rows naming 00001 are invalid at
    // the campaign stage, their customers created.
    let sandbox = Sandbox::start(config()).await.unwrap();
    let m = column_campaign(&dir, "some.toml", "agent_login = { value = \"a.nowak\" }\n");
    let ledger = dir.join("some.jsonl");
    let out = output(run(&sandbox, &csv, &m, &ledger)).await;
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let r = common::report(&ledger);
    assert_eq!(r["stages"]["customer"]["ok"], 7, "{r}");
    assert_eq!(r["stages"]["campaign"]["ok"], 1, "{r}");
    assert_eq!(r["stages"]["campaign"]["invalid"], 6, "{r}");
    let state = sandbox.state_json();
    assert_eq!(
        state["campaigns"]["00002"]["by_customer"]
            .as_object()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        state["campaigns"]["00001"]["by_customer"]
            .as_object()
            .unwrap()
            .len(),
        0
    );
}

fn retry(sandbox: &Sandbox, ledger: &Path) -> std::process::Command {
    let mut cmd = bin();
    cmd.arg("retry").arg(ledger).args([
        "--url",
        &sandbox.url(),
        "--user",
        "api_user",
        "--no-progress",
        "--rate",
        "2000",
    ]);
    cmd
}

/// Rows whose campaign record preflight found invalid (an agent not in the
/// campaign) are sent by `retry` once the system allows them, with the same
/// file and mapping; until then `retry` records them invalid again and
/// says so, sending nothing.
#[tokio::test(flavor = "multi_thread")]
async fn retry_sends_the_rows_the_system_refused_once_it_allows_them() {
    let dir = tempfile::tempdir().unwrap().keep();
    let csv = dir.join("agents.csv");
    std::fs::write(
        &csv,
        "Nazwisko;ID;Opiekun;Kampania\n\
         Nowak;R-1;j.doe;00001\n\
         Zając;R-2;a.nowak;00001\n\
         Wójcik;R-3;a.nowak;00001\n",
    )
    .unwrap();
    let m = column_campaign(
        &dir,
        "agents.toml",
        "status_id = { value = 1 }\nagent_login = \"Opiekun\"\n",
    );
    let sandbox = Sandbox::start(config()).await.unwrap();
    let ledger = dir.join("agents.jsonl");
    let out = output(run(&sandbox, &csv, &m, &ledger)).await;
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let r = common::report(&ledger);
    assert_eq!(r["stages"]["campaign"]["invalid"], 2, "{r}");
    assert_eq!(r["stages"]["customer"]["ok"], 3, "{r}");
    let records = |s: &Sandbox| {
        s.state_json()["campaigns"]["00001"]["by_customer"]
            .as_object()
            .unwrap()
            .len()
    };
    assert_eq!(records(&sandbox), 1);

    // Nothing changed: checked again, still invalid, nothing written.
    let writes = |s: &Sandbox| s.requests().iter().filter(|r| r.method != "GET").count();
    let before = writes(&sandbox);
    let out = output(retry(&sandbox, &ledger)).await;
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("retry: 2 row(s) looked at, 0 customer(s) reconciled by identifier, 0 row(s) sent (0 again, 0 not sent before), 0 left as duplicates, 2 invalid"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(
            "mapped and checked again against the system: 0 stage(s) sent, 2 still invalid"
        ),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("  left "), "{}", out.stdout);
    assert_eq!(writes(&sandbox), before, "nothing sent");
    assert_eq!(common::report(&ledger)["stages"]["campaign"]["invalid"], 2);

    // a.nowak joins campaign 00001 in Thulium: the same retry sends the two
    // records, for the customers created before (none created again).
    sandbox
        .shared()
        .lock_state()
        .campaigns
        .get_mut("00001")
        .unwrap()
        .agents
        .push("a.nowak".into());
    let out = output(retry(&sandbox, &ledger)).await;
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(
            "2 row(s) sent (2 again, 0 not sent before), 0 left as duplicates, 0 invalid"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("2 stage(s) sent, 0 still invalid"),
        "{}",
        out.stdout
    );
    let r = common::report(&ledger);
    assert_eq!(r["stages"]["campaign"]["ok"], 3, "{r}");
    assert_eq!(r["stages"]["campaign"]["invalid"], 0, "{r}");
    assert_eq!(records(&sandbox), 3);
    assert_eq!(common::customers(&sandbox), 3, "no customer created twice");
    let posted = sandbox
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/api/batch/customers")
        .count();
    assert_eq!(posted, 1, "customers were created by the run only");
}

/// A customer found twice by its identifier fails as ambiguous; once one
/// of the two is gone from Thulium (merged), `retry` looks it up again and
/// updates the one left.
#[tokio::test(flavor = "multi_thread")]
async fn retry_looks_up_again_a_customer_found_twice_once_merged() {
    let dir = tempfile::tempdir().unwrap().keep();
    let csv = dir.join("twice.csv");
    std::fs::write(&csv, "Nazwisko;ID\nNowak;R-1\nZając;R-2\n").unwrap();
    let m = dir.join("twice.toml");
    std::fs::write(
        &m,
        "[source]\ndelimiter = \";\"\n[customer]\nsurname = \"Nazwisko\"\nidentifier = \"ID\"\nmatch = [\"identifier\"]\n",
    )
    .unwrap();
    let sandbox = Sandbox::start(config()).await.unwrap();
    let (first, second) = {
        let mut state = sandbox.shared().lock_state();
        let mut old = |surname: &str| {
            let mut fields = serde_json::Map::new();
            fields.insert("surname".into(), surname.into());
            fields.insert("identifier".into(), "R-1".into());
            state.add_customer(fields)
        };
        (old("Stary"), old("Dubel"))
    };
    let ledger = dir.join("twice.jsonl");
    let out = output(run(&sandbox, &csv, &m, &ledger)).await;
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    let events = lines(&ledger);
    let failed = events
        .iter()
        .find(|e| e["row"] == 1 && e["stage"] == "customer")
        .unwrap();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .starts_with("ambiguous:"),
        "{failed}"
    );

    // Merged in Thulium: the duplicate is gone.
    sandbox.shared().lock_state().customers.remove(&second);
    let out = output(retry(&sandbox, &ledger)).await;
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("looked up again: 1 customer(s) found more than once before"),
        "{}",
        out.stdout
    );
    let r = common::report(&ledger);
    assert_eq!(r["stages"]["customer"]["ok"], 2, "{r}");
    let state = sandbox.state_json();
    assert_eq!(
        state["customers"][first.to_string()]["surname"],
        "Nowak",
        "the customer left was updated"
    );
    assert_eq!(common::customers(&sandbox), 2, "R-1 updated, R-2 created");
    let last = lines(&ledger)
        .into_iter()
        .rev()
        .find(|e| e["row"] == 1 && e["stage"] == "customer")
        .unwrap();
    assert_eq!(last["customer_id"], first, "{last}");
    assert_eq!(last["action"], "updated", "{last}");
}
