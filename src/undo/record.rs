//! The undo ledger, `<LEDGER>.undo-ledger.jsonl`: what `undo` did to each
//! thing a run created or changed, one outcome per target, appended and
//! made durable as each target ends, so that an `undo` stopped (a signal,
//! a crash) and run again takes up what is left and never acts twice on a
//! target already settled. Its own file, beside the run's ledger, so that
//! the run's ledger stays the run's story (`retry` reads it unchanged).
//!
//! Outcomes: `reversed` (deleted, put back, or already as before the run),
//! `kept` (a person changed it since: left, with the fields that differ),
//! `errored` (the call failed: the next `undo` tries again) and
//! `not_undoable` (the API cannot take it back: listed with its ids). The
//! last outcome of a target wins; [`Summary`] is the one fold `undo` and
//! `report` print.
//!
//! A customer created again (one the run deleted) is the one target whose
//! call is not idempotent: an `intent` line goes first, durable, and a
//! target whose intent has no known outcome after it is *pending*: the
//! next `undo` looks the customer up before any second `POST`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// What became of one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Reversed,
    Kept,
    Errored,
    NotUndoable,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Reversed => "reversed",
            Outcome::Kept => "kept",
            Outcome::Errored => "errored",
            Outcome::NotUndoable => "not undoable",
        }
    }

    /// Whether a later `undo` leaves it as it is.
    pub fn settled(self) -> bool {
        self != Outcome::Errored
    }
}

/// What a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A customer the run created (deleted) or updated (put back).
    Customer,
    /// A field-group item the run updated (put back) or created on a
    /// customer that existed (not undoable).
    Item,
    /// A campaign record the run added.
    CampaignRecord,
    /// A campaign record the run edited.
    CampaignUpdate,
    /// A contact-history record the run added.
    Feed,
}

/// One target's outcome: ids, rows and statuses, the names of the fields
/// that differ, never a value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetEvent {
    pub target: Option<Kind>,
    /// `delete`, `restore`, `recreate`, or nothing (not undoable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_id: Option<i64>,
    /// The ledger's rows the target came from.
    pub rows: Vec<u64>,
    pub outcome: Option<Outcome>,
    /// `kept`: the fields a person changed; `reversed`: fields that could
    /// not be put back (their value before was not known).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `recreate`: the id of the customer created again (`customer_id`
    /// is the one deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_customer_id: Option<i64>,
    /// The call's outcome is not known (a `POST` sent, no clear answer):
    /// the target's intent stays pending.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outcome_unknown: bool,
}

impl TargetEvent {
    /// What identifies the target across `undo` runs.
    pub fn key(&self) -> String {
        let kind = self.target.map_or("?", |k| match k {
            Kind::Customer => "customer",
            Kind::Item => "item",
            Kind::CampaignRecord => "campaign_record",
            Kind::CampaignUpdate => "campaign_update",
            Kind::Feed => "feed",
        });
        let id = self
            .item_id
            .or(self.record_id)
            .or(self.customer_id)
            .map(|i| i.to_string())
            .unwrap_or_default();
        let row = self.rows.first().copied().unwrap_or_default();
        match self.target {
            Some(Kind::Customer | Kind::Item) if !id.is_empty() => format!("{kind}:{id}"),
            _ => format!("{kind}:{id}:row{row}"),
        }
    }
}

/// One line of the undo ledger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UndoEntry {
    /// The first line: whose ledger (its header's `started_at`).
    Header {
        ledger: String,
        ledger_started_at: String,
        started_at: String,
        tool_version: String,
    },
    /// A later `undo` on the same ledger.
    Attempt {
        started_at: String,
    },
    Target(TargetEvent),
    /// A `POST` about to be sent for the target `target` (its
    /// [`TargetEvent::key`]): pending until an outcome follows.
    Intent {
        target: String,
        customer_id: i64,
        at: String,
    },
    /// The end of one `undo`; `aborted` if it stopped early.
    End {
        finished_at: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        aborted: Option<String>,
    },
}

/// The undo ledger beside a ledger.
pub fn path_for(ledger: &Path) -> PathBuf {
    let mut p = ledger.as_os_str().to_owned();
    p.push(".undo-ledger.jsonl");
    p.into()
}

/// The undo ledger, folded: the latest outcome of every target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Targets by outcome.
    pub counts: BTreeMap<&'static str, u64>,
    /// Whether the last `undo` ended (not stopped, not crashed).
    pub finished: bool,
    /// Every target not reversed, in the order first met.
    pub not_reversed: Vec<TargetEvent>,
    #[serde(skip)]
    latest: Vec<TargetEvent>,
    /// Targets whose last intent has no known outcome after it.
    #[serde(skip)]
    pending: std::collections::BTreeSet<String>,
}

impl Summary {
    /// The latest outcome of the target `key`, if any.
    pub fn outcome_of(&self, key: &str) -> Option<Outcome> {
        self.latest
            .iter()
            .find(|t| t.key() == key)
            .and_then(|t| t.outcome)
    }

    /// Whether a `POST` of the target `key` was sent (or about to be) and
    /// its outcome is not known.
    pub fn is_pending(&self, key: &str) -> bool {
        self.pending.contains(key)
    }

    /// Every target's latest event.
    pub fn targets(&self) -> &[TargetEvent] {
        &self.latest
    }

    /// Folds events (the last per target wins).
    pub fn of(events: impl IntoIterator<Item = TargetEvent>, finished: bool) -> Summary {
        let mut order: Vec<String> = Vec::new();
        let mut latest: BTreeMap<String, TargetEvent> = BTreeMap::new();
        for e in events {
            let key = e.key();
            if !latest.contains_key(&key) {
                order.push(key.clone());
            }
            latest.insert(key, e);
        }
        let latest: Vec<TargetEvent> = order.iter().filter_map(|k| latest.remove(k)).collect();
        let mut counts = BTreeMap::new();
        for o in [
            Outcome::Reversed,
            Outcome::Kept,
            Outcome::Errored,
            Outcome::NotUndoable,
        ] {
            let n = latest.iter().filter(|t| t.outcome == Some(o)).count() as u64;
            counts.insert(
                match o {
                    Outcome::NotUndoable => "not_undoable",
                    other => other.name(),
                },
                n,
            );
        }
        Summary {
            counts,
            finished,
            not_reversed: latest
                .iter()
                .filter(|t| t.outcome != Some(Outcome::Reversed))
                .cloned()
                .collect(),
            latest,
            pending: Default::default(),
        }
    }

    /// How many targets ended so.
    pub fn count(&self, o: Outcome) -> u64 {
        self.latest.iter().filter(|t| t.outcome == Some(o)).count() as u64
    }
}

/// The undo line of a report: the counts, then every target not
/// reversed with its ids, rows and the fields that differ.
pub fn render(s: &Summary) -> String {
    let n = |o| s.count(o);
    let counts = format!(
        "undo: {} reversed, {} kept (changed since), {} errored, {} not undoable{}",
        n(Outcome::Reversed),
        n(Outcome::Kept),
        n(Outcome::Errored),
        n(Outcome::NotUndoable),
        if s.finished {
            ""
        } else {
            " (not finished: run undo again)"
        }
    );
    with_targets(counts, s)
}

/// [`render`] of an `undo --dry-run`: what it would do, in the
/// conditional (nothing was done).
pub fn render_dry_run(s: &Summary) -> String {
    let n = |o| s.count(o);
    let counts = format!(
        "undo (dry run): would reverse {}, would keep {} (changed since), {} could not be judged (errored), {} not undoable",
        n(Outcome::Reversed),
        n(Outcome::Kept),
        n(Outcome::Errored),
        n(Outcome::NotUndoable),
    );
    with_targets(counts, s)
}

/// The counts line, then every target not reversed.
fn with_targets(counts: String, s: &Summary) -> String {
    let mut out = counts;
    for t in &s.not_reversed {
        out.push_str("\n  ");
        out.push_str(&describe(t));
    }
    out
}

/// One target as a line: what, which ids and rows, its outcome and why.
pub fn describe(t: &TargetEvent) -> String {
    let what = match t.target {
        Some(Kind::Customer) => "customer",
        Some(Kind::Item) => "item",
        Some(Kind::CampaignRecord) => "campaign record",
        Some(Kind::CampaignUpdate) => "campaign record edit",
        Some(Kind::Feed) => "contact-history record",
        None => "?",
    };
    let mut ids = Vec::new();
    if let Some(i) = t.item_id {
        ids.push(format!("item {i}"));
    }
    if let Some(r) = t.record_id {
        ids.push(format!("record {r}"));
    }
    if let Some(c) = t.customer_id {
        ids.push(format!("customer {c}"));
    }
    let rows = t
        .rows
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut line = format!(
        "{what} ({}; row {rows}): {}",
        if ids.is_empty() {
            "no id".to_string()
        } else {
            ids.join(", ")
        },
        t.outcome.map_or("?", Outcome::name)
    );
    if let Some(m) = &t.message {
        line.push_str(": ");
        line.push_str(m);
    }
    if let Some(n) = t.new_customer_id {
        line.push_str(&format!(" (now customer {n})"));
    }
    if !t.fields.is_empty() && t.outcome == Some(Outcome::Kept) {
        line.push_str(": ");
        line.push_str(&t.fields.join(", "));
    }
    line
}

#[derive(Debug, thiserror::Error)]
#[error("undo ledger {path}: {source}")]
pub struct RecordError {
    pub path: String,
    pub source: std::io::Error,
}

/// Reads an undo ledger: its header's `ledger_started_at` and the fold.
/// `None` when there is none.
pub fn read(path: &Path) -> Result<Option<(String, Summary)>, RecordError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, e)),
    };
    let mut started = None;
    let mut events = Vec::new();
    let mut pending = std::collections::BTreeSet::new();
    let mut finished = false;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| io(path, e))?;
        // A line cut by a crash: skipped (its target is done again).
        let Ok(entry) = serde_json::from_slice::<UndoEntry>(&line) else {
            continue;
        };
        match entry {
            UndoEntry::Header {
                ledger_started_at, ..
            } => started = Some(ledger_started_at),
            UndoEntry::Attempt { .. } => finished = false,
            UndoEntry::Target(t) => {
                if !t.outcome_unknown {
                    pending.remove(&t.key());
                }
                events.push(t)
            }
            UndoEntry::Intent { target, .. } => {
                pending.insert(target);
            }
            UndoEntry::End { aborted, .. } => finished = aborted.is_none(),
        }
    }
    Ok(started.map(|s| {
        let mut summary = Summary::of(events, finished);
        summary.pending = pending;
        (s, summary)
    }))
}

/// The writing side of an undo ledger.
#[derive(Debug)]
pub struct Record {
    path: PathBuf,
    file: Mutex<File>,
}

impl Record {
    /// Opens the undo ledger of the ledger at `ledger` (whose header has
    /// `started_at`): continued when it is this ledger's, begun otherwise
    /// (0600 either way); one left by an older ledger at the same path is
    /// kept aside as `<file>.<time>`.
    pub fn open(ledger: &Path, started_at: &str) -> Result<Record, RecordError> {
        let path = path_for(ledger);
        let existing = read(&path)?;
        let continued = matches!(&existing, Some((s, _)) if s == started_at);
        if let (Some((older, _)), false) = (&existing, continued) {
            let to = super::aside::aside_ledger(ledger, older).map(|l| path_for(&l));
            super::aside::set_aside(&path, to).map_err(|e| io(&path, e))?;
        }
        let file = super::jsonl::open_private(&path).map_err(|e| io(&path, e))?;
        let record = Record {
            path,
            file: Mutex::new(file),
        };
        let first = if continued {
            UndoEntry::Attempt {
                started_at: crate::ledger::now(),
            }
        } else {
            UndoEntry::Header {
                ledger: ledger.display().to_string(),
                ledger_started_at: started_at.into(),
                started_at: crate::ledger::now(),
                tool_version: env!("CARGO_PKG_VERSION").into(),
            }
        };
        record.write(&[first])?;
        Ok(record)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends entries and waits until they are on disk.
    pub fn write(&self, entries: &[UndoEntry]) -> Result<(), RecordError> {
        super::jsonl::append(&self.file, entries).map_err(|e| io(&self.path, e))
    }
}

fn io(path: &Path, source: std::io::Error) -> RecordError {
    RecordError {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn target(id: i64, outcome: Outcome) -> TargetEvent {
        TargetEvent {
            target: Some(Kind::Customer),
            customer_id: Some(id),
            rows: vec![1],
            outcome: Some(outcome),
            ..TargetEvent::default()
        }
    }

    #[test]
    fn the_last_outcome_of_a_target_wins_and_a_cut_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("l.jsonl");
        let r = Record::open(&ledger, "t0").unwrap();
        r.write(&[
            UndoEntry::Target(target(1, Outcome::Errored)),
            UndoEntry::Target(target(2, Outcome::Kept)),
            UndoEntry::Target(target(1, Outcome::Reversed)),
        ])
        .unwrap();
        drop(r);
        std::fs::OpenOptions::new()
            .append(true)
            .open(path_for(&ledger))
            .unwrap()
            .write_all(b"{\"kind\":\"tar")
            .unwrap();
        let (started, s) = read(&path_for(&ledger)).unwrap().unwrap();
        assert_eq!(started, "t0");
        assert_eq!(s.outcome_of("customer:1"), Some(Outcome::Reversed));
        assert_eq!(s.count(Outcome::Kept), 1);
        assert_eq!(s.not_reversed.len(), 1);
        assert!(!s.finished);
        // Continued by the same ledger; set aside for another.
        Record::open(&ledger, "t0").unwrap();
        assert!(
            read(&path_for(&ledger))
                .unwrap()
                .unwrap()
                .1
                .count(Outcome::Kept)
                == 1
        );
        Record::open(&ledger, "t1").unwrap();
        assert_eq!(
            read(&path_for(&ledger)).unwrap().unwrap().1.targets().len(),
            0
        );
    }
}
