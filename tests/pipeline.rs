//! The pipeline's live counters, which the progress bar and its ETA follow:
//! every row read ends "settled" (an outcome at every stage it goes to),
//! whatever the API does, and no row settles before its last outcome.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use thulium_import::check::Input;
use thulium_import::client::{ApiClient, ClientConfig};
use thulium_import::credentials::{Credentials, Password};
use thulium_import::ledger::{self, Header, Ledger, Stage};
use thulium_import::pipeline::{self, Abort, Limits, Progress};
use thulium_import::progress::estimated_rows;
use thulium_import::retry::Policy;
use thulium_import::sandbox::{FaultKind, Sandbox, SandboxConfig};

const SAMPLE: &str = "samples/crm_export.csv";
const MAPPING: &str = "mappings/crm_export.toml";

/// Imports the sample (every stage) into `sandbox`; returns the counters and
/// the number of row outcomes the ledger holds.
async fn import(sandbox: &Sandbox, dir: &Path) -> (Arc<Progress>, usize) {
    let input = Input::open(Path::new(SAMPLE), Path::new(MAPPING)).unwrap();
    let Input { plan, source, .. } = input;
    let rows = pipeline::mapped_rows(source, Arc::new(plan), false, None);
    let client = ApiClient::new(
        &Credentials {
            root: sandbox.url(),
            user: "api_user".into(),
            password: Password::new("api_pass".into()),
        },
        &ClientConfig {
            rate: 0.0,
            timeout: Duration::from_secs(5),
            policy: Policy {
                max_attempts: 3,
                base: Duration::from_millis(5),
                max_backoff: Duration::from_millis(20),
                max_retry_after: Duration::from_secs(1),
            },
            auto_max: None,
            max_unreachable: 20,
        },
    )
    .unwrap();
    let path = dir.join("ledger.jsonl");
    let header = Header {
        version: 1,
        source: SAMPLE.into(),
        source_sha256: String::new(),
        mapping: MAPPING.into(),
        mapping_sha256: String::new(),
        started_at: ledger::now(),
        tool_version: "test".into(),
        sheet: None,
    };
    let ledger = Ledger::create(&path, header, ledger::Existing::Refuse, "test").unwrap();
    let progress = Arc::new(Progress::default());
    let limits = Limits {
        batch_size: 25,
        concurrency: 4,
        max_consecutive_failures: 1000,
        max_failures: None,
        max_failure_rate: None,
        rows: None,
        plan: None,
    };
    let end = pipeline::run(
        rows,
        client,
        ledger,
        limits,
        Arc::new(Abort::default()),
        progress.clone(),
        pipeline::Matching::default(),
    )
    .await;
    assert_eq!(end.rows_read, 300);
    assert!(end.aborted.is_none() && end.read_error.is_none(), "{end:?}");
    let text = std::fs::read_to_string(&path).unwrap();
    let outcomes = text
        .lines()
        .filter(|l| l.contains("\"kind\":\"row\""))
        .count();
    (progress, outcomes)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_row_read_ends_settled_with_or_without_faults() {
    for fault_rate in [0.0, 0.25] {
        let sandbox = Sandbox::start(SandboxConfig {
            fault_rate,
            faults: FaultKind::ALL.to_vec(),
            retry_after_secs: 0,
            seed: 11,
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (progress, outcomes) = import(&sandbox, dir.path()).await;
        let tallies = Stage::SENDING.map(|s| progress.tally(s).unwrap());
        let counted: u64 = tallies.iter().map(|t| t.total()).sum();
        let invalid = progress.invalid.load(Ordering::Relaxed);
        // The counters saw every outcome the ledger holds...
        assert_eq!(
            counted + invalid,
            outcomes as u64,
            "fault rate {fault_rate}"
        );
        // ...and every row settled, the invalid ones included.
        assert_eq!(invalid, 8);
        assert_eq!(
            progress.rows_settled.load(Ordering::Relaxed),
            300,
            "fault rate {fault_rate}"
        );
        if fault_rate > 0.0 {
            let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
            let failed_or_unknown: u64 = tallies
                .iter()
                .map(|t| n(&t.failed) + n(&t.unknown) + n(&t.skipped))
                .sum();
            assert!(failed_or_unknown > 0, "faults left some rows not done");
        }
        sandbox.stop();
    }
}

#[test]
fn the_row_total_is_estimated_from_how_far_reading_got() {
    // 100 rows took the first 5,000 bytes: 200 rows in 10,000.
    assert_eq!(estimated_rows(101, 5_000, 10_000), 200);
    assert_eq!(estimated_rows(0, 0, 10_000), 1);
    assert_eq!(estimated_rows(1, 0, 10_000), 1);
    // Never below what was read, however the offsets fall.
    assert_eq!(estimated_rows(300, 10_000, 9_000), 300);
}

/// A reader that gives `bytes` up to `fail_at`, then an I/O error (a disk
/// or a network mount failing mid-file).
struct FailsMidway {
    bytes: Vec<u8>,
    at: usize,
    fail_at: usize,
}

impl std::io::Read for FailsMidway {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at >= self.fail_at {
            return Err(std::io::Error::other("the disk went away"));
        }
        let n = buf.len().min(self.fail_at - self.at).min(4096);
        buf[..n].copy_from_slice(&self.bytes[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_error_mid_file_is_recorded_reported_and_retry_continues() {
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sample = std::fs::canonicalize(SAMPLE).unwrap();
    let mapping = std::fs::canonicalize(MAPPING).unwrap();
    let bytes = std::fs::read(&sample).unwrap();
    let loaded = thulium_import::mapping::load(&mapping).unwrap();
    let options = loaded.source_options().unwrap();
    let reader = FailsMidway {
        fail_at: bytes.len() / 2,
        bytes,
        at: 0,
    };
    let source = thulium_import::source::Source::from_reader(reader, &sample, &options).unwrap();
    let plan = thulium_import::mapping::compile(&loaded, source.header()).unwrap();
    let rows = pipeline::mapped_rows(source, Arc::new(plan), false, None);
    let path = dir.path().join("ledger.jsonl");
    let header = Header {
        version: 1,
        source: sample.display().to_string(),
        source_sha256: ledger::sha256_file(&sample).unwrap(),
        mapping: mapping.display().to_string(),
        mapping_sha256: ledger::sha256_file(&mapping).unwrap(),
        started_at: ledger::now(),
        tool_version: "test".into(),
        sheet: None,
    };
    let ledger = Ledger::create(&path, header, ledger::Existing::Refuse, "test").unwrap();
    let client = ApiClient::new(
        &Credentials {
            root: sandbox.url(),
            user: "api_user".into(),
            password: Password::new("api_pass".into()),
        },
        &ClientConfig {
            rate: 0.0,
            timeout: Duration::from_secs(5),
            policy: Policy::default(),
            auto_max: None,
            max_unreachable: 20,
        },
    )
    .unwrap();
    let limits = Limits {
        batch_size: 25,
        concurrency: 4,
        max_consecutive_failures: 20,
        max_failures: None,
        max_failure_rate: None,
        rows: None,
        plan: None,
    };
    let end = pipeline::run(
        rows,
        client,
        ledger,
        limits,
        Arc::new(Abort::default()),
        Arc::new(Progress::default()),
        pipeline::Matching::default(),
    )
    .await;
    let read = end.read_error.expect("the read error is reported");
    assert!(read.contains("the disk went away"), "{read}");
    assert!(
        end.rows_read > 50 && end.rows_read < 250,
        "{}",
        end.rows_read
    );
    // The ledger's end event says so, and `report` shows the rows after it
    // were never read: not "all done".
    let text = std::fs::read_to_string(&path).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["kind"], "end");
    assert!(last["read_error"]
        .as_str()
        .unwrap()
        .contains("disk went away"));
    let bin = assert_cmd::cargo::cargo_bin("thulium-import");
    let out = std::process::Command::new(&bin)
        .arg("report")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("the rows after it were never read"),
        "{stdout}"
    );
    // `retry` continues from there: every row ends imported once.
    let out = std::process::Command::new(&bin)
        .arg("retry")
        .arg(&path)
        .args([
            "--url",
            &sandbox.url(),
            "--user",
            "api_user",
            "--no-progress",
            "--rate",
            "2000",
        ])
        .env("THULIUM_PASSWORD", "api_pass")
        .env_remove("THULIUM_URL")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(&bin)
        .arg("report")
        .arg(&path)
        .arg("--json")
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["rows"].as_u64(), r["ok"].as_u64(), r["invalid"].as_u64()),
        (Some(300), Some(292), Some(8)),
        "{r}"
    );
    assert!(r.get("read_error").is_none(), "{r}");
    let state = sandbox.state_json();
    assert_eq!(state["customers"].as_object().unwrap().len(), 292);
}
