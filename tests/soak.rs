//! The fault soak: 20,000 rows through a sandbox that injects every fault
//! kind on 10 % of requests, then `retry` until nothing retryable is left.
//! Bounded: loopback only, at most 8 retries, a few minutes at most.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;
use common::report;

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use thulium_import::check::{self, Input};
use thulium_import::sandbox::{Sandbox, SandboxConfig};

const PASSWORD: &str = "soak-secret";

fn bin(args: &[&str], url: &str) -> std::process::Output {
    std::process::Command::new(assert_cmd::cargo::cargo_bin("thulium-import"))
        .args(args)
        .args([
            "--url",
            url,
            "--user",
            "api_user",
            "--no-progress",
            "--rate",
            "5000",
            "--concurrency",
            "8",
            "--max-consecutive-failures",
            "0",
            "--max-attempts",
            "8",
        ])
        .env("THULIUM_PASSWORD", PASSWORD)
        .env_remove("THULIUM_URL")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_thousand_rows_through_every_fault_then_retry() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("soak.csv");
    let rows = common::make_export(&csv, 70, None);
    assert!(rows >= 20_000, "{rows}");
    // The sample mapping, reading the UTF-8 copy.
    let mapping = common::utf8_mapping(dir.path());
    let ledger = dir.path().join("soak.ledger.jsonl");

    let sandbox = Sandbox::start(SandboxConfig {
        fault_rate: 0.1,
        seed: 2026,
        password: PASSWORD.into(),
        retry_after_secs: 0,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let url = sandbox.url();
    let (csv_s, mapping_s, ledger_s) = (
        csv.to_str().unwrap().to_string(),
        mapping.to_str().unwrap().to_string(),
        ledger.to_str().unwrap().to_string(),
    );
    let u = url.clone();
    let first = tokio::task::spawn_blocking(move || {
        bin(
            &[
                "run",
                &csv_s,
                "--mapping",
                &mapping_s,
                "--ledger",
                &ledger_s,
                "--batch-size",
                "50",
            ],
            &u,
        )
    })
    .await
    .unwrap();
    assert_eq!(
        first.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // Retry until a retry changes nothing: nothing retryable is left.
    let mut last = report(&ledger);
    let mut retries = 0;
    for _ in 0..8 {
        let (l, u) = (ledger.clone(), url.clone());
        let out = tokio::task::spawn_blocking(move || bin(&["retry", l.to_str().unwrap()], &u))
            .await
            .unwrap();
        assert!(
            matches!(out.status.code(), Some(0 | 1)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        retries += 1;
        let now = report(&ledger);
        if now == last {
            break;
        }
        last = now;
    }
    assert!(retries < 8, "retry kept changing things: {last}");
    let stats = sandbox.stats();
    eprintln!("soak: {rows} rows, {retries} retries; final report {last}; sandbox faults {:?}, ambiguous on creating calls {}", stats.faults, stats.ambiguous_non_idempotent);
    assert!(
        stats.faults.len() == 5,
        "every fault kind happened: {:?}",
        stats.faults
    );

    // Zero duplicates of anything.
    let state = sandbox.state_json();
    let customers = state["customers"].as_object().unwrap();
    let identifiers: HashSet<String> = common::identifiers(&sandbox).into_iter().collect();
    assert_eq!(
        identifiers.len(),
        customers.len(),
        "a customer created twice"
    );
    let items = state["field_group_items"].as_array().unwrap();
    let item_customers: HashSet<i64> = items
        .iter()
        .map(|i| i["customer_id"].as_i64().unwrap())
        .collect();
    assert_eq!(item_customers.len(), items.len(), "an item created twice");
    let feeds = state["feed_records"].as_array().unwrap();
    let feed_payloads: HashSet<&str> = feeds
        .iter()
        .map(|f| f["payload"].as_str().unwrap())
        .collect();
    assert_eq!(
        feed_payloads.len(),
        feeds.len(),
        "a feed record created twice"
    );

    // With identifiers, every customer row is done (unknowns reconciled).
    let mut input = Input::open(&csv, &mapping).unwrap();
    let valid = check::check(&mut input, |_, _, _| {}).unwrap().valid;
    assert_eq!(last["invalid"].as_u64(), Some(rows as u64 - valid));
    assert_eq!(
        last["stages"]["customer"]["ok"].as_u64(),
        Some(valid),
        "{last}"
    );
    assert_eq!(customers.len() as u64, valid);
    // Every other row done except those reported unknown, and those are at
    // most the ambiguous faults on calls that create something.
    assert_eq!(
        (
            last["failed"].as_u64(),
            last["not_sent"].as_u64(),
            last["skipped"].as_u64()
        ),
        (Some(0), Some(0), Some(0)),
        "{last}"
    );
    let unknown = last["unknown"].as_u64().unwrap();
    assert_eq!(last["ok"].as_u64().unwrap() + unknown, valid, "{last}");
    assert!(
        unknown <= stats.ambiguous_non_idempotent,
        "{unknown} unknown rows vs {} ambiguous faults",
        stats.ambiguous_non_idempotent
    );

    // The ledger and the sandbox agree row by row on every id.
    let mut expected: HashMap<u64, String> = HashMap::new();
    let mut input = Input::open(&csv, &mapping).unwrap();
    check::check(&mut input, |plan, row, ev| {
        let p = plan.assemble(ev, row);
        expected.insert(row.id.row, p.customer.unwrap().identifier_text().unwrap());
    })
    .unwrap();
    let item_ids: HashMap<i64, i64> = items
        .iter()
        .map(|i| {
            (
                i["item_id"].as_i64().unwrap(),
                i["customer_id"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut last_customer: HashMap<u64, i64> = HashMap::new();
    for line in std::fs::read_to_string(&ledger).unwrap().lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        if e["kind"] != "row" || e["status"] != "ok" {
            continue;
        }
        let row = e["row"].as_u64().unwrap();
        match e["stage"].as_str().unwrap() {
            "customer" => {
                let id = e["customer_id"].as_i64().unwrap();
                assert_eq!(
                    customers[&id.to_string()]["identifier"].as_str().unwrap(),
                    expected[&row],
                    "row {row}"
                );
                last_customer.insert(row, id);
            }
            "field_group" => {
                let item = e["item_id"].as_i64().unwrap();
                assert_eq!(
                    Some(&item_ids[&item]),
                    last_customer.get(&row),
                    "row {row}: item {item}"
                );
            }
            _ => {}
        }
    }
    assert_eq!(last_customer.len() as u64, valid);
}
