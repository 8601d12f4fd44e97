//! `--metrics-file`: what one run did, in the Prometheus text exposition
//! format, for node_exporter's textfile collector. An unattended night is
//! watched through these few numbers (exit code, rows by status, when it
//! last succeeded), so the file is rewritten whole at the end of every run
//! and swapped in by a rename: the collector never reads half a file.
//!
//! The one fact a run cannot know by itself, when a run last exited 0, is
//! read back from the file this run replaces ([`last_success`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::report::Report;

/// Every metric's name starts so.
const PREFIX: &str = "thulium_import";
/// The metric read back from the previous file.
const LAST_SUCCESS: &str = "thulium_import_last_success_timestamp_seconds";

/// What a run saw, for the metrics: the ledger's counts and the wire's.
/// A run that stopped before its job was prepared has neither.
#[derive(Debug, Clone)]
pub struct Observed {
    /// The ledger folded after the run: the counts `report --json` prints.
    pub rows: Option<Report>,
    /// Requests sent (retries included) and 429 answers among them.
    pub requests: Option<(u64, u64)>,
}

/// One run, as the metrics describe it.
#[derive(Debug, Clone)]
pub struct RunMetrics {
    /// The `source` label: the source file's name (no folder).
    pub source: String,
    pub observed: Observed,
    /// From the command's start to its end, preparation included.
    pub duration: Duration,
    /// The process's exit code.
    pub exit_code: u8,
    /// When the run ended.
    pub finished: SystemTime,
}

/// Why the metrics file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot write the metrics file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The statuses `report --json` counts rows by, in its order.
const STATUSES: [&str; 6] = ["ok", "failed", "invalid", "unknown", "skipped", "not_sent"];

/// Seconds since the Unix epoch (a clock before 1970 reads as 0).
fn seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A label value escaped as the text format asks: a file name may hold a
/// quote or a backslash, and one unescaped would make the whole file
/// unreadable to the collector.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The file's text. `last_success` is the previous file's value, used
/// when this run did not exit 0; a job that never succeeded reads 0, so
/// that an alert on its age fires rather than never seeing the series.
pub fn render(run: &RunMetrics, last_success: Option<f64>) -> String {
    let source = escape(&run.source);
    let mut out = String::new();
    let mut metric =
        |name: &str, kind: &str, help: &str, samples: &[(Option<(&str, &str)>, f64)]| {
            out.push_str(&format!("# HELP {PREFIX}_{name} {help}\n"));
            out.push_str(&format!("# TYPE {PREFIX}_{name} {kind}\n"));
            for (label, value) in samples {
                let extra = label.map_or(String::new(), |(k, v)| format!(",{k}=\"{v}\""));
                out.push_str(&format!(
                    "{PREFIX}_{name}{{source=\"{source}\"{extra}}} {value}\n"
                ));
            }
        };
    if let Some(rows) = &run.observed.rows {
        let counts = [
            rows.ok,
            rows.failed,
            rows.invalid,
            rows.unknown,
            rows.skipped,
            rows.not_sent,
        ];
        let samples: Vec<_> = STATUSES
            .iter()
            .zip(counts)
            .map(|(status, n)| (Some(("status", *status)), n as f64))
            .collect();
        metric(
            "rows",
            "gauge",
            "Rows of the ledger by overall status after the last run, as report --json counts them.",
            &samples,
        );
    }
    if let Some((requests, throttled)) = run.observed.requests {
        metric(
            "requests_total",
            "counter",
            "HTTP requests the last run sent, retries included.",
            &[(None, requests as f64)],
        );
        metric(
            "responses_429_total",
            "counter",
            "Answers 429 (too many requests) the last run got.",
            &[(None, throttled as f64)],
        );
    }
    metric(
        "duration_seconds",
        "gauge",
        "How long the last run took.",
        &[(None, run.duration.as_secs_f64())],
    );
    metric(
        "exit_code",
        "gauge",
        "The last run's exit code: 0 every row done, 1 rows not done, 2 unusable input, 3 aborted.",
        &[(None, f64::from(run.exit_code))],
    );
    let finished = seconds(run.finished);
    metric(
        "last_run_timestamp_seconds",
        "gauge",
        "When the last run ended (Unix time).",
        &[(None, finished)],
    );
    let success = if run.exit_code == 0 {
        finished
    } else {
        last_success.unwrap_or(0.0)
    };
    metric(
        "last_success_timestamp_seconds",
        "gauge",
        "When a run last exited 0 (Unix time; 0 if none has).",
        &[(None, success)],
    );
    out
}

/// The last-success value of a metrics file's text, if it has one. Its
/// labels are not compared: the file at one path is one job's, whatever
/// tonight's source is called.
pub fn last_success(text: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let rest = line.strip_prefix(LAST_SUCCESS)?;
            // The value follows the labels (which may hold spaces, inside
            // quotes) or the name directly.
            let value = match rest.strip_prefix('{') {
                Some(labels) => &labels[labels.rfind('}')? + 1..],
                None if rest.starts_with(char::is_whitespace) => rest,
                None => return None,
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .filter(|v| v.is_finite())
}

/// Writes `run`'s metrics to `path`: the previous file's last success read
/// first, the new text written to a temporary file in the same folder (a
/// rename is atomic only within one file system) and renamed over `path`.
pub fn write(path: &Path, run: &RunMetrics) -> Result<(), MetricsError> {
    let previous = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| last_success(&t));
    let text = render(run, previous);
    let err = |source| MetricsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "metrics".into());
    // Not `*.prom`, so the collector never reads it; the process id keeps
    // two runs writing one path from sharing a temporary file.
    let tmp = folder.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        // Created with the default permissions (not 0600 like the ledger):
        // node_exporter reads it as another user, and it holds counts only.
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(exit_code: u8, at: u64) -> RunMetrics {
        RunMetrics {
            source: "ex\"port\\ 1.csv".into(),
            observed: Observed {
                rows: Some(Report {
                    rows: 3,
                    ok: 2,
                    invalid: 1,
                    ..Report::default()
                }),
                requests: Some((7, 1)),
            },
            duration: Duration::from_millis(1500),
            exit_code,
            finished: UNIX_EPOCH + Duration::from_secs(at),
        }
    }

    #[test]
    fn a_failed_run_keeps_the_previous_success_and_a_new_one_replaces_it() {
        let first = render(&run(0, 1_000), None);
        assert_eq!(last_success(&first), Some(1_000.0));
        let failed = render(&run(3, 2_000), last_success(&first));
        assert_eq!(last_success(&failed), Some(1_000.0));
        assert!(failed.contains("thulium_import_exit_code{source=\"ex\\\"port\\\\ 1.csv\"} 3\n"));
        let never = render(&run(1, 3_000), None);
        assert_eq!(last_success(&never), Some(0.0));
    }

    #[test]
    fn the_reader_takes_labels_with_spaces_and_no_labels() {
        let text = "# HELP x\nthulium_import_last_success_timestamp_seconds_other 5\n\
                    thulium_import_last_success_timestamp_seconds{source=\"a } b\"} 42.5\n";
        assert_eq!(last_success(text), Some(42.5));
        assert_eq!(
            last_success("thulium_import_last_success_timestamp_seconds 7"),
            Some(7.0)
        );
        assert_eq!(last_success("garbage\n"), None);
        assert_eq!(
            last_success("thulium_import_last_success_timestamp_seconds NaN"),
            None
        );
    }

    #[test]
    fn a_run_without_a_job_has_no_row_or_request_metrics() {
        let mut r = run(2, 10);
        r.observed = Observed {
            rows: None,
            requests: None,
        };
        let text = render(&r, Some(5.0));
        assert!(!text.contains("thulium_import_rows"));
        assert!(!text.contains("requests_total"));
        assert!(text.contains("thulium_import_last_success_timestamp_seconds{source="));
        assert_eq!(last_success(&text), Some(5.0));
    }
}
