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
    let rows = pipeline::mapped_rows(source, Arc::new(plan));
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
    };
    let ledger = Ledger::create(&path, header, ledger::Existing::Refuse).unwrap();
    let progress = Arc::new(Progress::default());
    let limits = Limits {
        batch_size: 25,
        concurrency: 4,
        max_consecutive_failures: 1000,
        max_failures: None,
        max_failure_rate: None,
    };
    let end = pipeline::run(
        rows,
        client,
        ledger,
        limits,
        Arc::new(Abort::default()),
        progress.clone(),
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
