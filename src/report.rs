//! What `report` and the end of `run` print: the counts of one fold of the
//! ledger ([`Outcomes`]), as a table or as JSON (the same code, so the same
//! numbers).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ledger::{Action, Stage};
use crate::outcomes::{Counts, Outcomes};
use crate::reasons::{Reason, Reasons};

/// What `report --json` prints.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    pub rows: u64,
    pub ok: u64,
    pub failed: u64,
    pub invalid: u64,
    pub unknown: u64,
    pub skipped: u64,
    /// Rows read but never sent (the run stopped first).
    pub not_sent: u64,
    pub stages: BTreeMap<&'static str, Counts>,
    /// What became of the rows' customers: created, updated, unchanged,
    /// adopted, skipped_existing, skipped_missing; `kept` stages; and the
    /// customers gone from the export (in no row): deleted, marked, gone.
    pub actions: BTreeMap<&'static str, u64>,
    /// Customers gone from the export whose deletion or mark failed (they
    /// have no row: not in `rows`; the next complete file tries again).
    #[serde(skip_serializing_if = "is_zero")]
    pub gone_failed: u64,
    /// Why the last run stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// The source failed mid-file: rows after `rows` were never read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_error: Option<String>,
    /// A pilot (`run --limit N`) stopped after N rows: the rest were not
    /// read yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// `[customer] on_gone` was not applied to the file, and why ("not
    /// applied tonight: 1 row whose match keys cannot be read (line 340)").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_gone: Option<String>,
    /// Ledger lines that could not be read (a crash mid-write).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable_lines: Vec<String>,
    /// The outcomes that are not ok, grouped by reason, most rows first.
    pub reasons: Vec<Reason>,
    /// What `undo` did to the run, when it was taken back (its own
    /// ledger, `<LEDGER>.undo-ledger.jsonl`, folded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undo: Option<crate::undo::record::Summary>,
}

impl Report {
    /// The counts of a folded ledger.
    pub fn of(outcomes: &Outcomes) -> Report {
        let (rows, not_sent, stages) = outcomes.counts();
        Report {
            rows: outcomes.rows(),
            ok: rows.ok,
            failed: rows.failed,
            invalid: rows.invalid,
            unknown: rows.unknown,
            skipped: rows.skipped,
            not_sent,
            stages,
            actions: outcomes.actions(),
            gone_failed: outcomes
                .gone()
                .values()
                .filter(|g| g.status != crate::ledger::Status::Ok)
                .count() as u64,
            aborted: outcomes.aborted().map(str::to_string),
            read_error: outcomes.read_error().map(str::to_string),
            limit: outcomes.limit(),
            on_gone: outcomes.on_gone_skipped().map(str::to_string),
            unreadable_lines: outcomes.unreadable.clone(),
            reasons: reasons(outcomes),
            undo: None,
        }
    }

    /// The report of the ledger at `path`, with what `undo` did to it.
    pub fn with_undo(mut self, path: &std::path::Path, outcomes: &Outcomes) -> Report {
        let undo = crate::undo::record::path_for(path);
        self.undo = match crate::undo::record::read(&undo) {
            Ok(Some((started, summary))) if started == outcomes.header.started_at => Some(summary),
            _ => None,
        };
        self
    }

    /// Whether every row is done.
    pub fn all_done(&self) -> bool {
        self.ok == self.rows
            && self.read_error.is_none()
            && self.limit.is_none()
            && self.gone_failed == 0
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The outcomes that are not ok, by reason.
fn reasons(outcomes: &Outcomes) -> Vec<Reason> {
    let mut reasons = Reasons::default();
    for p in outcomes.problems(usize::MAX) {
        reasons.add(p.stage.name(), p.status_name(), p.row, p.line, &p.message);
    }
    // A gone customer has no row: listed as row 0, its message naming it.
    for g in outcomes.gone().values() {
        if let (crate::ledger::Status::Failed | crate::ledger::Status::Unknown, Some(m)) =
            (g.status, &g.message)
        {
            reasons.add("customer", g.status.name(), 0, 0, m);
        }
    }
    reasons.sorted()
}

/// How many reasons the text lists (`--json` has all).
const REASONS_SHOWN: usize = 20;

/// The summary table, as `run` and `report` print it.
pub fn render(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "stage", "ok", "failed", "invalid", "unknown", "skipped"
    );
    for stage in Stage::ALL {
        let c = report.stages.get(stage.name()).cloned().unwrap_or_default();
        if c == Counts::default() {
            continue;
        }
        let _ = writeln!(
            out,
            "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9}",
            stage.name(),
            c.ok,
            c.failed,
            c.invalid,
            c.unknown,
            c.skipped
        );
    }
    let _ = write!(
        out,
        "rows: {} read, {} done, {} failed, {} invalid, {} unknown, {} skipped, {} not sent",
        report.rows,
        report.ok,
        report.failed,
        report.invalid,
        report.unknown,
        report.skipped,
        report.not_sent
    );
    let of_rows = |a: &str| {
        ![Action::Kept, Action::Deleted, Action::Marked, Action::Gone]
            .iter()
            .any(|k| k.name() == a)
    };
    if report.actions.iter().any(|(a, n)| of_rows(a) && *n > 0) {
        let n = |a: Action| report.actions.get(a.name()).copied().unwrap_or(0);
        let _ = write!(
            out,
            "\ncustomers: {} created, {} updated, {} unchanged, {} adopted, {} skipped (existing), {} skipped (missing)",
            n(Action::Created),
            n(Action::Updated),
            n(Action::Unchanged),
            n(Action::Adopted),
            n(Action::SkippedExisting),
            n(Action::SkippedMissing)
        );
    }
    let gone = |a: Action| report.actions.get(a.name()).copied().unwrap_or(0);
    if gone(Action::Deleted) + gone(Action::Marked) + gone(Action::Gone) + report.gone_failed > 0 {
        let _ = write!(
            out,
            "\ngone from the export (on_gone): {} deleted, {} marked, {} reported, {} failed",
            gone(Action::Deleted),
            gone(Action::Marked),
            gone(Action::Gone),
            report.gone_failed
        );
    }
    if let kept @ 1.. = report
        .actions
        .get(Action::Kept.name())
        .copied()
        .unwrap_or(0)
    {
        let _ = write!(
            out,
            "\nkept: {kept} (ok, but not done as the rows ask: the API cannot do it; the ledger's messages say why)"
        );
    }
    if let Some(why) = &report.on_gone {
        let _ = write!(out, "\non_gone: {why}");
    }
    if let Some(a) = &report.aborted {
        let _ = write!(out, "\naborted: {a}");
    }
    if let Some(u) = &report.undo {
        let _ = write!(out, "\n{}", crate::undo::record::render(u));
    }
    if let Some(n) = report.limit {
        let _ = write!(
            out,
            "\npilot: stopped after {} (--limit); `retry` on this ledger sends the rest",
            crate::text::count(n, "row")
        );
    }
    if let Some(e) = &report.read_error {
        let _ = write!(
            out,
            "\nreading stopped after row {}: {e}; the rows after it were never read (`retry` continues from there)",
            report.rows
        );
    }
    let reasons = crate::reasons::render(&report.reasons, REASONS_SHOWN);
    if !reasons.is_empty() {
        let _ = write!(out, "\n{}", reasons.trim_end());
    }
    out
}
