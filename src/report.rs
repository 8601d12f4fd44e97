//! Folding a ledger into per-row and per-stage counts: what `report` prints
//! and what `run` prints at its end (the same code, so the same numbers).
//!
//! For each row and stage the last event wins; an `intent` with no later
//! event means the call was in flight when the run stopped: `unknown`. A
//! row's overall status is the worst of its stages, by the precedence
//! invalid > failed > unknown > skipped > ok; a row with no event at all was
//! never sent (`not_sent`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;

use crate::ledger::{self, Entry, Header, ReadError, RowEvent, Stage, Status};

const NONE: u8 = 0;

fn code(s: Status) -> u8 {
    match s {
        Status::Ok => 1,
        Status::Skipped => 2,
        Status::Unknown => 3,
        Status::Failed => 4,
        Status::Invalid => 5,
    }
}

fn status(c: u8) -> Option<Status> {
    Some(match c {
        1 => Status::Ok,
        2 => Status::Skipped,
        3 => Status::Unknown,
        4 => Status::Failed,
        5 => Status::Invalid,
        _ => return None,
    })
}

fn slot(stage: Stage) -> usize {
    match stage {
        Stage::Mapping => 0,
        Stage::Customer => 1,
        Stage::FieldGroup => 2,
        Stage::Campaign => 3,
        Stage::CampaignUpdate => 4,
        Stage::Feed => 5,
    }
}

const STAGES: [Stage; 6] = Stage::ALL;

/// Counts per status.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
    pub invalid: u64,
    pub unknown: u64,
    pub skipped: u64,
}

impl Counts {
    fn add(&mut self, s: Status) {
        match s {
            Status::Ok => self.ok += 1,
            Status::Failed => self.failed += 1,
            Status::Invalid => self.invalid += 1,
            Status::Unknown => self.unknown += 1,
            Status::Skipped => self.skipped += 1,
        }
    }
}

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
    /// Why the last run stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// Ledger lines that could not be read (a crash mid-write).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable_lines: Vec<String>,
}

/// The folded state of every row.
#[derive(Debug, Default)]
pub struct Fold {
    /// Row n at index n-1: status code per stage slot.
    rows: Vec<[u8; 6]>,
    /// Field groups after the first: (row, group) → status code.
    groups: HashMap<(u64, usize), u8>,
    rows_read: u64,
    aborted: Option<String>,
    /// Whether the last run or retry wrote its `end` (it did not crash).
    ended: bool,
}

impl Fold {
    fn at(&mut self, row: u64) -> &mut [u8; 6] {
        let i = row.saturating_sub(1) as usize;
        if self.rows.len() <= i {
            self.rows.resize(i + 1, [NONE; 6]);
        }
        &mut self.rows[i]
    }

    fn set(&mut self, row: u64, stage: Stage, group: Option<usize>, s: Status) {
        match group {
            Some(g) if g > 0 && stage == Stage::FieldGroup => {
                self.at(row);
                self.groups.insert((row, g), code(s));
            }
            _ => self.at(row)[slot(stage)] = code(s),
        }
    }

    /// Applies one ledger entry.
    pub fn apply(&mut self, e: &Entry) {
        match e {
            Entry::Row(RowEvent {
                row,
                stage: Some(stage),
                status: Some(s),
                group,
                ..
            }) => self.set(*row, *stage, *group, *s),
            Entry::Intent(i) => {
                for row in &i.rows {
                    self.set(*row, i.stage, i.group, Status::Unknown);
                }
            }
            Entry::End(end) => {
                self.rows_read = self.rows_read.max(end.rows_read);
                self.aborted = end.aborted.clone();
                self.ended = true;
            }
            Entry::Attempt(_) => self.ended = false,
            _ => {}
        }
    }

    /// The status of `row` at `stage` (field groups combined), if any.
    pub fn stage_status(&self, row: u64, stage: Stage) -> Option<Status> {
        let r = self.rows.get(row.checked_sub(1)? as usize)?;
        let mut c = r[slot(stage)];
        if stage == Stage::FieldGroup {
            for ((_, _), g) in self.groups.iter().filter(|((r2, _), _)| *r2 == row) {
                c = c.max(*g);
            }
        }
        status(c)
    }

    /// Whether every stage recorded for `row` is ok (and one is recorded).
    pub fn is_done(&self, row: u64) -> bool {
        let Some(r) = row.checked_sub(1).and_then(|i| self.rows.get(i as usize)) else {
            return false;
        };
        let mut worst = r.iter().copied().max().unwrap_or(NONE);
        if r[2] != NONE || self.groups.keys().any(|(r2, _)| *r2 == row) {
            for ((r2, _), g) in &self.groups {
                if *r2 == row {
                    worst = worst.max(*g);
                }
            }
        }
        worst == code(Status::Ok)
    }

    /// Whether the last run or retry ended (wrote its `end` event). When it
    /// did not (a crash, `kill -9`), a row can look done while stages it
    /// needed were never recorded.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The highest row number with any event.
    pub fn max_row(&self) -> u64 {
        self.rows.len() as u64
    }

    /// Whether `row` has any event.
    pub fn is_recorded(&self, row: u64) -> bool {
        row.checked_sub(1)
            .and_then(|i| self.rows.get(i as usize))
            .is_some_and(|r| r.iter().any(|c| *c != NONE))
    }

    /// The counts.
    pub fn report(&self) -> Report {
        let mut report = Report::default();
        let mut extra: HashMap<u64, u8> = HashMap::new();
        for ((row, _), c) in &self.groups {
            let e = extra.entry(*row).or_default();
            *e = (*e).max(*c);
        }
        let total = self.rows_read.max(self.rows.len() as u64);
        report.rows = total;
        for stage in STAGES {
            report.stages.entry(stage.name()).or_default();
        }
        for n in 0..total {
            let mut r = self.rows.get(n as usize).copied().unwrap_or([NONE; 6]);
            if let Some(g) = extra.get(&(n + 1)) {
                r[2] = r[2].max(*g);
            }
            for (i, c) in r.iter().enumerate() {
                if let Some(s) = status(*c) {
                    report.stages.entry(STAGES[i].name()).or_default().add(s);
                }
            }
            match status(r.iter().copied().max().unwrap_or(NONE)) {
                None => report.not_sent += 1,
                Some(Status::Ok) => report.ok += 1,
                Some(Status::Failed) => report.failed += 1,
                Some(Status::Invalid) => report.invalid += 1,
                Some(Status::Unknown) => report.unknown += 1,
                Some(Status::Skipped) => report.skipped += 1,
            }
        }
        report.aborted = self.aborted.clone();
        report
    }
}

/// Reads and folds a ledger.
pub fn fold(path: &Path) -> Result<(Header, Fold, Vec<String>), ReadError> {
    let mut fold = Fold::default();
    let (header, notes) = ledger::read(path, |e| fold.apply(&e))?;
    Ok((
        header,
        fold,
        notes.bad_lines.into_iter().map(|(_, m)| m).collect(),
    ))
}

/// The final events of rows that are not done, for listing.
pub fn problems(path: &Path, fold: &Fold, limit: usize) -> Result<Vec<RowEvent>, ReadError> {
    let mut last: BTreeMap<(u64, Stage, usize), RowEvent> = BTreeMap::new();
    ledger::read(path, |e| {
        if let Entry::Row(ev) = e {
            if let (Some(stage), Some(s)) = (ev.stage, ev.status) {
                let key = (ev.row, stage, ev.group.unwrap_or(0));
                if s == Status::Ok {
                    last.remove(&key);
                } else if fold.stage_status(ev.row, stage) != Some(Status::Ok)
                    && (last.len() < limit || last.contains_key(&key))
                {
                    last.insert(key, ev);
                }
            }
        }
    })?;
    Ok(last.into_values().collect())
}

/// The summary table, as `run` and `report` print it.
pub fn render(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "stage", "ok", "failed", "invalid", "unknown", "skipped"
    );
    for stage in STAGES {
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
    if let Some(a) = &report.aborted {
        let _ = write!(out, "\naborted: {a}");
    }
    out
}
