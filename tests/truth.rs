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
            "--force-new-ledger",
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
