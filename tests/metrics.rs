//! `--metrics-file` end to end: the real binary against the sandbox, the
//! file read back as node_exporter's textfile collector would read it
//! (every line checked against the text exposition format), its counts
//! compared with `report --json`, and the last success kept across a run
//! that fails.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;
use common::{output, report, run_command};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use thulium_import::sandbox::{Sandbox, SandboxConfig};

const PASSWORD: &str = "metrics-secret-51";

fn config() -> SandboxConfig {
    SandboxConfig {
        password: PASSWORD.into(),
        ..SandboxConfig::default()
    }
}

/// A small export and a mapping that takes every row, or (with `bad`) one
/// row whose surname is empty.
fn export(dir: &Path, bad: bool) -> (PathBuf, PathBuf) {
    let csv = dir.join("night export.csv");
    let mut text = String::from("ID;Nazwisko\n");
    for n in 1..=5 {
        let surname = if bad && n == 3 { "" } else { "Kowalski" };
        text.push_str(&format!("M-{n};{surname}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let mapping = dir.join("m.toml");
    std::fs::write(
        &mapping,
        "[source]\ndelimiter = \";\"\nencoding = \"utf-8\"\n[customer]\nsurname = { column = \"Nazwisko\", required = true }\nidentifier = \"ID\"\n",
    )
    .unwrap();
    (csv, mapping)
}

/// One sample: its metric name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Reads `text` as the Prometheus text exposition format, failing the
/// test on any line that is not a `# HELP`/`# TYPE` line or a sample
/// `name{label="value",...} value`; every sample's name must have had its
/// HELP and TYPE lines first, and the TYPE must be a known one.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    let (mut helped, mut typed) = (BTreeSet::new(), BTreeSet::new());
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "the last line ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(is_name(name) && !help.is_empty(), "{line}");
            assert!(helped.insert(name.to_string()), "HELP twice: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(is_name(name), "{line}");
            assert!(
                ["counter", "gauge", "untyped", "summary", "histogram"].contains(&kind),
                "{line}"
            );
            assert!(typed.insert(name.to_string()), "TYPE twice: {line}");
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let (name, rest) = match line.find('{') {
            Some(i) => (&line[..i], &line[i..]),
            None => line.split_at(line.find(' ').unwrap()),
        };
        assert!(is_name(name), "{line}");
        assert!(
            helped.contains(name) && typed.contains(name),
            "no HELP/TYPE before {line}"
        );
        let mut labels = BTreeMap::new();
        let value = match rest.strip_prefix('{') {
            Some(mut inner) => {
                // label="value" pairs, values with \\, \" and \n escapes.
                loop {
                    if let Some(after) = inner.strip_prefix('}') {
                        break after;
                    }
                    let eq = inner.find("=\"").unwrap();
                    let key = &inner[..eq];
                    assert!(is_name(key), "{line}");
                    let mut value = String::new();
                    let mut chars = inner[eq + 2..].char_indices();
                    let end = loop {
                        match chars.next().unwrap() {
                            (_, '\\') => match chars.next().unwrap().1 {
                                '\\' => value.push('\\'),
                                '"' => value.push('"'),
                                'n' => value.push('\n'),
                                c => panic!("bad escape \\{c} in {line}"),
                            },
                            (i, '"') => break eq + 2 + i + 1,
                            (_, c) => value.push(c),
                        }
                    };
                    assert!(labels.insert(key.to_string(), value).is_none(), "{line}");
                    inner = &inner[end..];
                    inner = inner.strip_prefix(',').unwrap_or(inner);
                }
            }
            None => rest,
        };
        let value = value.strip_prefix(' ').expect(line);
        assert!(
            !value.contains(' '),
            "a timestamp or junk after the value: {line}"
        );
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value: value.parse::<f64>().expect(line),
        });
    }
    samples
}

/// The one sample named `name` (with `status` when given).
fn value(samples: &[Sample], name: &str, status: Option<&str>) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && s.labels.get("status").map(String::as_str) == status)
        .collect();
    assert_eq!(found.len(), 1, "{name} {status:?}: {samples:?}");
    found[0].value
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Every row count of the file is `report --json`'s.
fn assert_rows_match_report(samples: &[Sample], ledger: &Path) {
    let r = report(ledger);
    for status in ["ok", "failed", "invalid", "unknown", "skipped", "not_sent"] {
        assert_eq!(
            value(samples, "thulium_import_rows", Some(status)),
            r[status].as_u64().unwrap() as f64,
            "{status}: {r}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_writes_its_metrics_and_a_failed_one_keeps_the_last_success() {
    let sandbox = Sandbox::start(config()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (csv, mapping) = export(dir.path(), false);
    let metrics = dir.path().join("thulium.prom");
    let ledger = dir.path().join("l.jsonl");
    let before = now();
    let mut cmd = run_command(
        &sandbox,
        csv.to_str().unwrap(),
        mapping.to_str().unwrap(),
        &ledger,
        PASSWORD,
    );
    cmd.arg("--metrics-file").arg(&metrics);
    let first = output(cmd).await;
    assert_eq!(first.code, Some(0), "{}", first.text());

    let text = std::fs::read_to_string(&metrics).unwrap();
    let samples = parse_exposition(&text);
    assert!(samples
        .iter()
        .all(|s| s.labels.get("source").map(String::as_str) == Some("night export.csv")));
    let names: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    for name in [
        "thulium_import_rows",
        "thulium_import_requests_total",
        "thulium_import_responses_429_total",
        "thulium_import_duration_seconds",
        "thulium_import_exit_code",
        "thulium_import_last_run_timestamp_seconds",
        "thulium_import_last_success_timestamp_seconds",
    ] {
        assert!(names.contains(name), "{name} missing:\n{text}");
    }
    assert_rows_match_report(&samples, &ledger);
    assert_eq!(value(&samples, "thulium_import_rows", Some("ok")), 5.0);
    assert_eq!(value(&samples, "thulium_import_exit_code", None), 0.0);
    // The run's requests, as the sandbox counted them.
    assert_eq!(
        value(&samples, "thulium_import_requests_total", None),
        sandbox.stats().requests_total as f64
    );
    let last_run = value(&samples, "thulium_import_last_run_timestamp_seconds", None);
    assert!(
        last_run >= before.floor() && last_run <= now(),
        "{last_run}"
    );
    let success = value(
        &samples,
        "thulium_import_last_success_timestamp_seconds",
        None,
    );
    assert_eq!(success, last_run);
    assert!(value(&samples, "thulium_import_duration_seconds", None) > 0.0);
    // Swapped in by a rename: no temporary file is left beside it.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // A wrong password: aborted (3) before a ledger is begun; the file says
    // so and still holds the first run's success.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut cmd = run_command(
        &sandbox,
        csv.to_str().unwrap(),
        mapping.to_str().unwrap(),
        &dir.path().join("second.jsonl"),
        "not-the-password",
    );
    cmd.arg("--metrics-file").arg(&metrics);
    let second = output(cmd).await;
    assert_eq!(second.code, Some(3), "{}", second.text());
    let samples = parse_exposition(&std::fs::read_to_string(&metrics).unwrap());
    assert_eq!(value(&samples, "thulium_import_exit_code", None), 3.0);
    assert_eq!(
        value(
            &samples,
            "thulium_import_last_success_timestamp_seconds",
            None
        ),
        success
    );
    assert!(value(&samples, "thulium_import_last_run_timestamp_seconds", None) > success);
    // No ledger, no rows to count: none are made up.
    assert!(samples.iter().all(|s| s.name != "thulium_import_rows"));

    // `retry` of the first ledger with a wrong password: aborted too, the
    // ledger's rows still counted, the success still the first run's.
    let mut cmd = common::bin("not-the-password");
    cmd.arg("retry")
        .arg(&ledger)
        .args([
            "--url",
            &sandbox.url(),
            "--user",
            "api_user",
            "--no-progress",
        ])
        .arg("--metrics-file")
        .arg(&metrics);
    let third = output(cmd).await;
    assert_eq!(third.code, Some(3), "{}", third.text());
    let samples = parse_exposition(&std::fs::read_to_string(&metrics).unwrap());
    assert_rows_match_report(&samples, &ledger);
    assert_eq!(
        value(
            &samples,
            "thulium_import_last_success_timestamp_seconds",
            None
        ),
        success
    );
    assert!(samples
        .iter()
        .all(|s| s.labels.get("source").map(String::as_str) == Some("night export.csv")));
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_not_done_are_counted_and_an_unwritable_metrics_file_changes_no_exit_code() {
    let sandbox = Sandbox::start(config()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (csv, mapping) = export(dir.path(), true);
    let metrics = dir.path().join("thulium.prom");
    let ledger = dir.path().join("l.jsonl");
    let mut cmd = run_command(
        &sandbox,
        csv.to_str().unwrap(),
        mapping.to_str().unwrap(),
        &ledger,
        PASSWORD,
    );
    cmd.arg("--metrics-file").arg(&metrics);
    let out = output(cmd).await;
    assert_eq!(out.code, Some(1), "{}", out.text());
    let samples = parse_exposition(&std::fs::read_to_string(&metrics).unwrap());
    assert_rows_match_report(&samples, &ledger);
    assert_eq!(value(&samples, "thulium_import_rows", Some("invalid")), 1.0);
    assert_eq!(value(&samples, "thulium_import_exit_code", None), 1.0);
    // Never exited 0: the age alert sees 0, not a missing series.
    assert_eq!(
        value(
            &samples,
            "thulium_import_last_success_timestamp_seconds",
            None
        ),
        0.0
    );

    // The same retry, its metrics file in a folder that does not exist:
    // a warning, and the run's own exit code.
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
        .arg("--metrics-file")
        .arg(dir.path().join("no such folder").join("m.prom"));
    let out = output(cmd).await;
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(
        out.stderr
            .contains("warning: cannot write the metrics file"),
        "{}",
        out.stderr
    );
}
