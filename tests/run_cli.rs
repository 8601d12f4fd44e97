//! `run` and `report` end to end: the real binary against the sandbox on
//! 127.0.0.1, real files, the ledger read back.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;
use common::{customers, identifiers, report, run_command};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use thulium_import::check::{self, Input};
use thulium_import::sandbox::{FaultKind, Sandbox, SandboxConfig};

const SAMPLE: &str = "samples/crm_export.csv";
const MAPPING: &str = "mappings/crm_export.toml";
const PASSWORD: &str = "test-secret-9f2c";

struct Done {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    ledger: Vec<Value>,
    ledger_path: PathBuf,
}

fn config() -> SandboxConfig {
    SandboxConfig {
        password: PASSWORD.into(),
        retry_after_secs: 0,
        ..SandboxConfig::default()
    }
}

/// Runs the binary against `sandbox` in a blocking thread.
async fn run(sandbox: &Sandbox, csv: &str, mapping: &str, extra: &[&str]) -> Done {
    run_as(sandbox, csv, mapping, extra, PASSWORD).await
}

async fn run_as(
    sandbox: &Sandbox,
    csv: &str,
    mapping: &str,
    extra: &[&str],
    password: &str,
) -> Done {
    let dir = tempfile::tempdir().unwrap().keep();
    let ledger_path = dir.join("ledger.jsonl");
    let mut cmd = run_command(sandbox, csv, mapping, &ledger_path, password);
    cmd.args(extra);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let ledger = std::fs::read_to_string(&ledger_path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Done {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
        ledger,
        ledger_path,
    }
}

/// What the mapping makes of every valid row: identifier → customer payload.
fn expected_customers(csv: &str, mapping: &str) -> HashMap<String, Value> {
    let mut input = Input::open(Path::new(csv), Path::new(mapping)).unwrap();
    let mut out = HashMap::new();
    check::check(&mut input, |plan, row, ev| {
        let p = plan.assemble(ev, row);
        let c = json!(p.customer.unwrap());
        out.insert(c["identifier"].as_str().unwrap().to_string(), c);
    })
    .unwrap();
    out
}

/// The final status of each (row, stage, group) in a ledger.
fn finals(ledger: &[Value]) -> HashMap<(u64, String, u64), String> {
    let mut out = HashMap::new();
    for e in ledger.iter().filter(|e| e["kind"] == "row") {
        let key = (
            e["row"].as_u64().unwrap(),
            e["stage"].as_str().unwrap().to_string(),
            e["group"].as_u64().unwrap_or(0),
        );
        out.insert(key, e["status"].as_str().unwrap().to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sample_imports_with_exact_counts_and_fields() {
    let sandbox = Sandbox::start(config()).await.unwrap();
    let done = run(&sandbox, SAMPLE, MAPPING, &[]).await;
    assert_eq!(
        done.code,
        Some(1),
        "8 invalid rows make exit 1\n{}\n{}",
        done.stdout,
        done.stderr
    );
    assert!(
        done.stdout.contains(
            "rows: 300 read, 292 done, 0 failed, 8 invalid, 0 unknown, 0 skipped, 0 not sent"
        ),
        "{}",
        done.stdout
    );

    // Every created customer has exactly the fields the mapping produced.
    let state = sandbox.state_json();
    let customers = state["customers"].as_object().unwrap();
    assert_eq!(customers.len(), 292);
    let mut expected = expected_customers(SAMPLE, MAPPING);
    for c in customers.values() {
        let mut c = c.clone();
        let id = c.as_object_mut().unwrap().remove("customer_id").unwrap();
        // The sandbox's own stamp, not a field the mapping produced.
        assert!(c.as_object_mut().unwrap().remove("updated_at").is_some());
        let want = expected
            .remove(c["identifier"].as_str().unwrap())
            .expect("an expected customer, once");
        assert_eq!(c, want, "customer {id}");
    }
    assert!(expected.is_empty());
    assert_eq!(state["field_group_items"].as_array().unwrap().len(), 292);
    assert_eq!(state["feed_records"].as_array().unwrap().len(), 126);
    let records: usize = ["00001", "00002"]
        .iter()
        .map(|c| {
            state["campaigns"][c]["by_customer"]
                .as_object()
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(records, 169);
    assert_eq!(
        state["campaigns"]["00003"]["by_identifier"]
            .as_object()
            .unwrap()
            .len(),
        79
    );

    // The ledger: a header, then ids that agree with the sandbox.
    assert_eq!(done.ledger[0]["kind"], "header");
    assert_eq!(done.ledger[0]["version"], 1);
    assert_eq!(done.ledger[0]["source_sha256"].as_str().unwrap().len(), 64);
    let by_id: HashMap<i64, &Value> = customers
        .values()
        .map(|c| (c["customer_id"].as_i64().unwrap(), c))
        .collect();
    let mut seen = HashSet::new();
    for e in done
        .ledger
        .iter()
        .filter(|e| e["kind"] == "row" && e["stage"] == "customer")
    {
        assert_eq!(e["status"], "ok");
        let id = e["customer_id"].as_i64().unwrap();
        assert!(
            by_id.contains_key(&id) && seen.insert(id),
            "customer {id} once, and in the sandbox"
        );
    }
    assert_eq!(done.ledger.last().unwrap()["kind"], "end");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&done.ledger_path)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
    // `report` folds the ledger into the same numbers.
    let r = report(&done.ledger_path);
    assert_eq!(
        (r["rows"].as_u64(), r["ok"].as_u64(), r["invalid"].as_u64()),
        (Some(300), Some(292), Some(8))
    );
    assert_eq!(r["stages"]["feed"]["ok"], 126);
    assert_eq!(r["stages"]["campaign"]["ok"], 169);
    // The password appears nowhere.
    let ledger_text = std::fs::read_to_string(&done.ledger_path).unwrap();
    for text in [&done.stdout, &done.stderr, &ledger_text] {
        assert!(!text.contains(PASSWORD));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_never_duplicate_a_customer_and_every_row_ends_in_a_final_state() {
    let sandbox = Sandbox::start(SandboxConfig {
        fault_rate: 0.2,
        seed: 42,
        ..config()
    })
    .await
    .unwrap();
    let done = run(
        &sandbox,
        SAMPLE,
        MAPPING,
        &["--batch-size", "20", "--max-consecutive-failures", "0"],
    )
    .await;
    assert!(
        matches!(done.code, Some(1)),
        "{}\n{}",
        done.stdout,
        done.stderr
    );
    let identifiers = identifiers(&sandbox);
    let unique: HashSet<&String> = identifiers.iter().collect();
    assert_eq!(unique.len(), identifiers.len(), "no customer created twice");
    let stats = sandbox.stats();
    assert!(stats.faults_total > 20, "{stats:?}");

    // Every valid row has one final customer status; rows whose customer
    // failed are skipped downstream, not left without a state.
    let finals = finals(&done.ledger);
    let r = report(&done.ledger_path);
    assert_eq!(r["not_sent"], 0, "{r}");
    assert_eq!(r["rows"], 300);
    for row in 1..=300u64 {
        let mapping = finals.get(&(row, "mapping".into(), 0));
        let customer = finals.get(&(row, "customer".into(), 0));
        assert!(
            mapping.is_some() ^ customer.is_some(),
            "row {row}: one of invalid or a customer outcome"
        );
        if let Some(c) = customer {
            assert!(
                ["ok", "failed", "unknown"].contains(&c.as_str()),
                "row {row}: {c}"
            );
            let item = &finals[&(row, "field_group".into(), 0)];
            if c == "ok" {
                assert_ne!(item, "skipped", "row {row}");
            } else {
                assert_eq!(item, "skipped", "row {row}");
            }
        }
    }
    // Unknown customers are exactly those the sandbox may have created:
    // each ambiguous fault on a customer call made its rows unknown.
    let unknown = finals
        .iter()
        .filter(|((_, s, _), v)| s == "customer" && *v == "unknown")
        .count();
    let ambiguous_customer_calls = stats
        .faults_by_endpoint
        .get("POST /api/batch/customers")
        .map_or(0, |f| {
            ["drop_before", "drop_after", "500_after"]
                .iter()
                .map(|k| f.get(*k).copied().unwrap_or(0))
                .sum::<u64>()
        });
    assert!(
        unknown as u64 <= ambiguous_customer_calls * 20,
        "{unknown} unknown vs {ambiguous_customer_calls} ambiguous calls"
    );
    // Customer calls are never resent after an ambiguous fault: attempts
    // are bounded by calls + throttled retries.
    let created = identifiers.len() as u64;
    let ok = finals
        .iter()
        .filter(|((_, s, _), v)| s == "customer" && *v == "ok")
        .count() as u64;
    assert!(created >= ok, "every ok customer exists");
}

/// `report` of a ledger that is not there: exit 2, the reason said once.
#[test]
fn report_of_a_missing_ledger_says_why_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::output_of(
        common::bin(PASSWORD)
            .arg("report")
            .arg(dir.path().join("missing.jsonl")),
    );
    assert_eq!(out.code, Some(2), "{}", out.text());
    assert!(
        out.stderr.contains("missing.jsonl: cannot read the ledger"),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.matches("No such file").count(),
        1,
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_stops_after_a_handful_of_requests_with_exit_3() {
    let sandbox = Sandbox::start(config()).await.unwrap();
    let done = run_as(
        &sandbox,
        SAMPLE,
        MAPPING,
        &["--concurrency", "2"],
        "not-the-password",
    )
    .await;
    assert_eq!(done.code, Some(3), "{}\n{}", done.stdout, done.stderr);
    assert!(sandbox.stats().requests_total <= 4, "{:?}", sandbox.stats());
    assert!(
        done.stderr.contains("Użytkownicy API") || done.stdout.contains("Użytkownicy API"),
        "{}",
        done.stderr
    );
    assert_eq!(sandbox.state_json()["customers"], json!({}));
    assert!(!done.stderr.contains("not-the-password") && !done.stdout.contains("not-the-password"));
    // Found by preflight's first read: stopped before a ledger was begun,
    // so the next run starts afresh.
    assert!(done.stderr.contains("401"), "{}", done.stderr);
    assert!(!done.ledger_path.exists());
}

/// A wrong URL or a system that is down: found by the first read, exit 3
/// at once, nothing sent, no ledger begun.
#[tokio::test(flavor = "multi_thread")]
async fn a_system_that_cannot_be_reached_is_an_aborted_run_found_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let ledger = dir.path().join("l.jsonl");
    // One mapping that preflight has things to read for, one with nothing.
    let plain = dir.path().join("plain.toml");
    std::fs::write(
        &plain,
        "[source]\ndelimiter = \";\"\nencoding = \"windows-1250\"\n[customer]\nsurname = \"Nazwisko\"\n",
    )
    .unwrap();
    for mapping in [MAPPING, plain.to_str().unwrap()] {
        let out = common::output({
            let mut cmd = common::bin(PASSWORD);
            cmd.args(["run", SAMPLE, "--mapping", mapping, "--ledger"])
                .arg(&ledger)
                .args(["--url", &format!("http://{closed}"), "--user", "api_user"])
                .args(["--no-progress", "--rate", "1000"]);
            cmd
        })
        .await;
        assert_eq!(out.code, Some(3), "{}", out.text());
        assert!(out.stderr.contains("cannot be reached"), "{}", out.stderr);
        assert!(!ledger.exists());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_429_storm_is_ridden_out() {
    let sandbox = Sandbox::start(SandboxConfig {
        fault_rate: 0.5,
        faults: vec![FaultKind::TooManyRequests, FaultKind::Unavailable],
        seed: 7,
        ..config()
    })
    .await
    .unwrap();
    let done = run(&sandbox, SAMPLE, MAPPING, &["--max-attempts", "30"]).await;
    assert_eq!(done.code, Some(1), "{}\n{}", done.stdout, done.stderr);
    assert!(done.stdout.contains("292 done"), "{}", done.stdout);
    let stats = sandbox.stats();
    assert!(stats.responses_429 > 50, "{stats:?}");
    assert_eq!(customers(&sandbox), 292);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_refused_as_a_whole_is_split_until_it_goes_through() {
    // The sandbox takes at most 30 customers a call: batches of 100 get 413
    // and are halved until they fit.
    let sandbox = Sandbox::start(SandboxConfig {
        max_batch: 30,
        ..config()
    })
    .await
    .unwrap();
    let done = run(&sandbox, SAMPLE, MAPPING, &[]).await;
    assert!(
        done.stdout.contains("292 done"),
        "{}\n{}",
        done.stdout,
        done.stderr
    );
    assert_eq!(customers(&sandbox), 292);
    assert!(sandbox.stats().responses.get("413").copied().unwrap_or(0) >= 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_row_fails_alone_with_the_reason_and_its_neighbours_go_through() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("m.toml");
    // Field 20 does not belong to group 2: every item is refused (400), the
    // customers are created.
    std::fs::write(&mapping, "[source]\ndelimiter=\";\"\nencoding=\"windows-1250\"\n[customer]\nsurname=\"Nazwisko\"\nidentifier=\"ID klienta\"\n[[field_group]]\ngroup_id=2\n[field_group.values]\n20=\"Segment\"\n").unwrap();
    let sandbox = Sandbox::start(config()).await.unwrap();
    // The server's refusal is the point: no preflight to catch it first.
    let done = run(
        &sandbox,
        SAMPLE,
        mapping.to_str().unwrap(),
        &["--max-consecutive-failures", "0", "--no-preflight"],
    )
    .await;
    assert_eq!(done.code, Some(1));
    let failed: Vec<&Value> = done
        .ledger
        .iter()
        .filter(|e| e["stage"] == "field_group" && e["status"] == "failed")
        .collect();
    assert_eq!(
        failed.len(),
        298,
        "every valid row (the short row and the one without a surname are invalid)"
    );
    assert_eq!(failed[0]["http_status"], 400);
    assert!(
        failed[0]["message"]
            .as_str()
            .unwrap()
            .contains("does not belong to field group 2"),
        "{}",
        failed[0]
    );
    assert!(failed[0]["message"]
        .as_str()
        .unwrap()
        .contains("request_id"));
    assert_eq!(customers(&sandbox), 298);
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_faults_on_customer_calls_leave_rows_unknown_and_are_not_resent() {
    let sandbox = Sandbox::start(SandboxConfig {
        fault_rate: 1.0,
        faults: vec![FaultKind::DropAfter],
        ..config()
    })
    .await
    .unwrap();
    let done = run(
        &sandbox,
        SAMPLE,
        MAPPING,
        &[
            "--batch-size",
            "100",
            "--max-consecutive-failures",
            "0",
            "--max-attempts",
            "2",
        ],
    )
    .await;
    assert_eq!(done.code, Some(1));
    let stats = sandbox.stats();
    // 292 valid rows in 3 batches, each sent exactly once.
    assert_eq!(stats.requests["POST /api/batch/customers"], 3, "{stats:?}");
    assert_eq!(customers(&sandbox), 292, "applied, answer lost");
    let r = report(&done.ledger_path);
    assert_eq!(r["stages"]["customer"]["unknown"], 292, "{r}");
    assert_eq!(r["stages"]["field_group"]["skipped"], 292);
    let unknown = done
        .ledger
        .iter()
        .find(|e| e["kind"] == "row" && e["stage"] == "customer")
        .unwrap();
    assert_eq!(unknown["status"], "unknown");
    // The idempotent PUT was retried (twice each), then failed as retryable.
    assert_eq!(
        stats.requests["PUT /api/outbounds/:id/records_by_identifier/:identifier"],
        79 * 2
    );
    let update = done
        .ledger
        .iter()
        .find(|e| e["kind"] == "row" && e["stage"] == "campaign_update")
        .unwrap();
    assert_eq!(
        (update["status"].as_str(), update["retryable"].as_bool()),
        (Some("failed"), Some(true))
    );
    assert!(
        unknown["message"].as_str().unwrap().contains("retry"),
        "{unknown}"
    );
}

/// A file that is not an export (an archive, a program, a PDF, random
/// bytes) stops `run` with one sentence and exit 2 before anything is
/// asked or written: no request, no ledger.
#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_is_not_an_export_sends_nothing_and_writes_no_ledger() {
    let sandbox = Sandbox::start(config()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (file, what) in common::not_exports(dir.path()) {
        let done = run(&sandbox, file.to_str().unwrap(), MAPPING, &[]).await;
        assert_eq!(done.code, Some(2), "{what}: {}", done.stderr);
        assert_eq!(done.stderr.trim().lines().count(), 1, "{}", done.stderr);
        assert!(
            done.stderr
                .contains(&format!("this is not a CSV file: it looks like {what}")),
            "{}",
            done.stderr
        );
        assert!(!done.ledger_path.exists(), "{what}: a ledger was begun");
    }
    assert!(sandbox.requests().is_empty(), "{:?}", sandbox.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn run_refuses_an_existing_ledger_and_the_sandbox_flag_needs_no_server() {
    let sandbox = Sandbox::start(config()).await.unwrap();
    let done = run(&sandbox, SAMPLE, MAPPING, &[]).await;
    let mut cmd = assert_cmd::Command::cargo_bin("thulium-import").unwrap();
    let out = cmd
        .args([
            "run",
            SAMPLE,
            "--mapping",
            MAPPING,
            "--url",
            &sandbox.url(),
            "--user",
            "api_user",
            "--no-progress",
        ])
        .arg("--ledger")
        .arg(&done.ledger_path)
        .env("THULIUM_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("thulium-import retry"));

    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("l.jsonl");
    let out = assert_cmd::Command::cargo_bin("thulium-import")
        .unwrap()
        .args([
            "run",
            SAMPLE,
            "--mapping",
            MAPPING,
            "--sandbox",
            "--rate",
            "1000",
            "--no-progress",
        ])
        .arg("--ledger")
        .arg(&ledger)
        .env_remove("THULIUM_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("sandbox now holds: 292 customers, 292 field-group items, 169 campaign records, 79 edited phone records, 126 feed records"), "{stdout}");
}

#[test]
fn plain_http_to_a_remote_host_is_refused() {
    let out = assert_cmd::Command::cargo_bin("thulium-import")
        .unwrap()
        .args([
            "run",
            SAMPLE,
            "--mapping",
            MAPPING,
            "--url",
            "http://acme.thulium.com",
            "--user",
            "u",
        ])
        .env("THULIUM_PASSWORD", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unencrypted"));
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_finishes_calls_in_flight_records_them_and_exits_3() {
    stopped_by("-INT", "Ctrl-C").await;
}

/// What systemd, Kubernetes and `timeout` send is handled as Ctrl-C.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_calls_in_flight_records_them_and_exits_3() {
    stopped_by("-TERM", "SIGTERM").await;
}

/// A closed terminal (SIGHUP) too.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn sighup_finishes_calls_in_flight_records_them_and_exits_3() {
    stopped_by("-HUP", "SIGHUP").await;
}

/// Sends `signal` to a run in full flight: calls in flight are finished and
/// recorded, the ledger ends `aborted` naming `name`, exit 3.
#[cfg(unix)]
async fn stopped_by(signal: &str, name: &str) {
    let sandbox = Sandbox::start(SandboxConfig {
        latency: std::time::Duration::from_millis(150),
        ..config()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("l.jsonl");
    let child = run_command(&sandbox, SAMPLE, MAPPING, &ledger, PASSWORD)
        .args(["--batch-size", "10", "--concurrency", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let it get going (its first creations sent: on a busy machine the
    // preparation alone may take longer than any fixed wait), then
    // interrupt it once.
    for _ in 0..600 {
        if sandbox.requests().iter().any(|e| e.method == "POST") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = report(&ledger);
    assert!(r["aborted"].as_str().unwrap().contains(name), "{r}");
    // Calls in flight were finished and recorded: no customer is left unknown,
    // and every customer the sandbox holds is in the ledger as ok.
    assert_eq!(r["stages"]["customer"]["unknown"], 0, "{r}");
    let created = customers(&sandbox) as u64;
    assert_eq!(r["stages"]["customer"]["ok"].as_u64().unwrap(), created);
    assert!(created > 0 && created < 292, "{created}");
    assert!(r["not_sent"].as_u64().unwrap() > 0 || r["rows"].as_u64().unwrap() < 300);
    // No row counts as done while a stage it needed never ran: every row
    // with a customer has a final field-group state.
    let lines: Vec<Value> = std::fs::read_to_string(&ledger)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let finals = finals(&lines);
    for ((row, stage, _), status) in &finals {
        if stage == "customer" && status == "ok" {
            assert!(
                finals.contains_key(&(*row, "field_group".to_string(), 0)),
                "row {row} has no field_group state"
            );
        }
    }
    assert!(
        r["ok"].as_u64().unwrap() < created,
        "rows stopped before every stage are not ok: {r}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_password_appears_nowhere_even_at_trace_level() {
    let sandbox = Sandbox::start(SandboxConfig {
        fault_rate: 0.2,
        seed: 5,
        ..config()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("l.jsonl");
    let wrong = "wrong-secret-31337";
    for (password, format) in [(PASSWORD, "text"), (PASSWORD, "json"), (wrong, "text")] {
        let _ = std::fs::remove_file(&ledger);
        let out = run_command(&sandbox, SAMPLE, MAPPING, &ledger, password)
            .args(["--max-attempts", "2", "--log-format", format])
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        let all = format!(
            "{}{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&ledger).unwrap_or_default()
        );
        // A wrong password stops at the first read: less to say.
        let least = if password == wrong { 200 } else { 1000 };
        assert!(all.len() > least, "trace logging produced output: {all}");
        assert!(!all.contains(password), "the password leaked ({format})");
        // Nor its Basic-auth encoding.
        use base64::Engine;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("api_user:{password}"));
        assert!(
            !all.contains(&token),
            "the Authorization header leaked ({format})"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_campaign_id_is_invalid_at_that_stage_and_the_rest_goes_on() {
    // No `when`: rows without a campaign cannot be added to one. They get
    // an outcome at the campaign stage (invalid, with the reason) instead
    // of the stage vanishing, and their customers are still created.
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("m.toml");
    let text = std::fs::read_to_string(MAPPING)
        .unwrap()
        .replace(
            "when = \"Kampania\"               # only rows with a campaign\n",
            "",
        )
        .replace("when = \"Nr rekordu\"\n", "");
    assert!(!text.contains("when = \"Kampania\"") && !text.contains("when = \"Nr rekordu\""));
    std::fs::write(&mapping, &text).unwrap();
    let sandbox = Sandbox::start(config()).await.unwrap();
    let done = run(&sandbox, SAMPLE, mapping.to_str().unwrap(), &[]).await;
    assert_eq!(done.code, Some(1), "{}{}", done.stdout, done.stderr);
    assert_eq!(customers(&sandbox), 292, "every valid row's customer");
    let finals = finals(&done.ledger);
    let invalid_campaign: Vec<u64> = finals
        .iter()
        .filter(|((_, s, _), v)| s == "campaign" && *v == "invalid")
        .map(|((r, _, _), _)| *r)
        .collect();
    assert_eq!(
        invalid_campaign.len(),
        292 - 169,
        "every row without a campaign"
    );
    let invalid_update = finals
        .iter()
        .filter(|((_, s, _), v)| s == "campaign_update" && *v == "invalid")
        .count();
    assert_eq!(invalid_update, 292 - 79);
    let row = invalid_campaign[0];
    assert_eq!(finals[&(row, "customer".into(), 0)], "ok");
    let ev = done
        .ledger
        .iter()
        .find(|e| e["row"] == row && e["stage"] == "campaign")
        .unwrap();
    assert!(
        ev["message"]
            .as_str()
            .unwrap()
            .contains("column \"Kampania\": the campaign id is empty"),
        "{ev}"
    );
    let r = report(&done.ledger_path);
    assert_eq!(r["stages"]["campaign"]["invalid"], 292 - 169, "{r}");
    assert_eq!(r["not_sent"], 0);
    // `check` lists the same rows.
    let out = assert_cmd::Command::cargo_bin("thulium-import")
        .unwrap()
        .args([
            "check",
            SAMPLE,
            "--mapping",
            mapping.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    let check: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(check["errors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["row"] == row
            && e["reason"]
                .as_str()
                .unwrap()
                .contains("campaign id is empty")));
}
