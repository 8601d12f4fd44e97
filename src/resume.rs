//! `retry`: which rows of a ledger to send again, and what each still needs.
//!
//! The ledger's one fold ([`Outcomes`]) says where every row stands; this
//! module reads the source again — seeking straight to the rows that are
//! not done when the file is unchanged — maps each such row, keeps only the
//! stages it still needs, and hands it to the pipeline as it goes: rows are
//! streamed, never all held at once. Per stage:
//!
//! | latest outcome | verdict |
//! |---|---|
//! | ok | done (a created customer's id is reused) |
//! | never sent, skipped, failed for a retryable cause | send |
//! | failed on a refusal (4xx), invalid | send only when the mapping or the source changed; otherwise left: it would fail the same way |
//! | customer unknown, and the row has an identifier | looked up first (one match: adopted; none: sent; several: left as duplicates) |
//! | customer unknown, no identifier in the row | left unless `--include-unknown` (nothing to look it up by) |
//! | item or feed record unknown | left unless `--include-unknown` |
//!
//! After a crash (no `end` event after the last run or retry) every row is
//! looked at again, since a row can look done while a stage it needed was
//! never recorded; a row's needs come from mapping it again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::api::customers::SearchKey;
use crate::ledger::{Stage, Status};
use crate::mapping::{Plan, RowPayloads};
use crate::outcomes::{Outcomes, RowView, StageOutcome};
use crate::pipeline::{CustomerLookup, Incoming, MappedRow};
use crate::source::{RowId, Source, SourceError, SourceOptions};

/// A stage's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Done,
    Send,
    LookUpFirst,
    Leave(String),
}

/// How a retry treats rows.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// The mapping or the source changed since the ledger's run.
    pub changed: bool,
    pub include_unknown: bool,
}

/// What planning found, for the summary.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Rows read again.
    pub rows_seen: u64,
    /// Rows invalid under the mapping now in use.
    pub invalid: u64,
    /// Rows (or stages) left alone, by reason.
    pub left: BTreeMap<String, u64>,
}

const LEFT_INVALID: &str =
    "invalid, and neither the mapping nor the source changed: fix them and pass --mapping or --source";
const LEFT_REFUSED: &str = "refused, and neither the mapping nor the source changed: it would fail the same way (fix the data and pass --source, or the mapping and pass --mapping)";

fn verdict(last: Option<StageOutcome>, stage: Stage, rules: Rules) -> Verdict {
    let Some(last) = last else {
        return Verdict::Send;
    };
    match last.status {
        Status::Ok => Verdict::Done,
        Status::Skipped => Verdict::Send,
        Status::Failed if last.retryable != Some(false) => Verdict::Send,
        Status::Failed | Status::Invalid => {
            if rules.changed {
                Verdict::Send
            } else {
                Verdict::Leave(LEFT_REFUSED.into())
            }
        }
        Status::Unknown if rules.include_unknown => Verdict::Send,
        Status::Unknown => Verdict::Leave(format!(
            "{} outcome unknown: it may have been applied; not resent without --include-unknown{}",
            stage.name(),
            if stage == Stage::Customer {
                " (the row has no identifier to look the customer up by)"
            } else {
                ""
            }
        )),
    }
}

/// Keeps only what a row still needs; returns the customer's verdict.
fn keep_what_is_not_done(
    payloads: &mut RowPayloads,
    row: Option<RowView<'_>>,
    rules: Rules,
    left: &mut BTreeMap<String, u64>,
) -> Option<Verdict> {
    let last = |stage: Stage, group: usize| row.and_then(|r| r.stage(stage, group));
    let mut leave = |v: &Verdict| {
        if let Verdict::Leave(reason) = v {
            *left.entry(reason.clone()).or_default() += 1;
        }
    };
    // The customer.
    let customer = if payloads.customer.is_some() || payloads.existing_customer_id.is_some() {
        let previous = last(Stage::Customer, 0);
        let unknown = previous.is_some_and(|p| p.status == Status::Unknown);
        let has_key = payloads
            .customer
            .as_ref()
            .and_then(|c| c.identifier_text())
            .is_some();
        let v = if payloads.customer.is_none() {
            Verdict::Done
        } else if unknown && has_key {
            // Unknown, and a key to look it up by: find out first.
            Verdict::LookUpFirst
        } else {
            verdict(previous, Stage::Customer, rules)
        };
        if v == Verdict::Done {
            if let Some(id) = row.and_then(|r| r.customer_id()) {
                payloads.existing_customer_id = Some(id);
            }
            payloads.customer = None;
        }
        leave(&v);
        Some(v)
    } else {
        None
    };
    let customer_blocked = matches!(customer, Some(Verdict::Leave(_)));
    let mut needed = |stage: Stage, group: usize| {
        let v = verdict(last(stage, group), stage, rules);
        leave(&v);
        v == Verdict::Send
    };
    payloads
        .field_groups
        .retain(|item| !customer_blocked && needed(Stage::FieldGroup, item.index));
    if payloads.campaign.is_some() && (customer_blocked || !needed(Stage::Campaign, 0)) {
        payloads.campaign = None;
    }
    if payloads.feed.is_some() && (customer_blocked || !needed(Stage::Feed, 0)) {
        payloads.feed = None;
    }
    if payloads.campaign_update.is_some() && !needed(Stage::CampaignUpdate, 0) {
        payloads.campaign_update = None;
    }
    if customer_blocked {
        payloads.customer = None;
    }
    customer
}

/// The rows a retry sends, read from the source as the pipeline asks for
/// them (an iterator for the pipeline's reader thread).
#[derive(Debug)]
pub struct RetryRows {
    outcomes: Arc<Outcomes>,
    plan: Arc<Plan>,
    path: PathBuf,
    options: SourceOptions,
    seekable: bool,
    rules: Rules,
    source: Source<std::fs::File>,
    /// The row the open source reads next.
    next: u64,
    /// The next row that may be needed.
    wanted: u64,
    failed: bool,
    summary: Arc<Mutex<Summary>>,
}

impl RetryRows {
    /// Opens the source for a retry of `outcomes` with `plan`. `seekable`:
    /// the source is the ledger's own, unchanged, so rows can be found by
    /// their byte offsets.
    pub fn new(
        outcomes: Arc<Outcomes>,
        plan: Arc<Plan>,
        path: &Path,
        options: &SourceOptions,
        seekable: bool,
        rules: Rules,
    ) -> Result<RetryRows, SourceError> {
        let source = Source::open(path, options)?;
        Ok(RetryRows {
            outcomes,
            plan,
            path: path.into(),
            options: options.clone(),
            seekable,
            rules,
            source,
            next: 1,
            wanted: 1,
            failed: false,
            summary: Arc::new(Mutex::new(Summary::default())),
        })
    }

    /// What planning found so far (complete once the rows are consumed).
    pub fn summary(&self) -> Arc<Mutex<Summary>> {
        self.summary.clone()
    }

    fn needed(&self, n: u64) -> bool {
        !self.outcomes.ended() || n > self.outcomes.max_row() || !self.outcomes.is_done(n)
    }

    fn note(&self, f: impl FnOnce(&mut Summary)) {
        f(&mut self.summary.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Maps one row read again and keeps what it still needs; `None` when
    /// nothing is left to send.
    fn plan_row(
        &self,
        item: Result<crate::source::Row, crate::source::RowError>,
    ) -> Option<Incoming> {
        let id = match &item {
            Ok(row) => row.id,
            Err(bad) => bad.id,
        };
        let view = self.outcomes.row(id.row);
        let was_invalid = view
            .and_then(|v| v.stage(Stage::Mapping, 0))
            .is_some_and(|o| o.status == Status::Invalid);
        self.note(|s| s.rows_seen += 1);
        if was_invalid && !self.rules.changed {
            self.note(|s| *s.left.entry(LEFT_INVALID.into()).or_default() += 1);
            return None;
        }
        let row = match item {
            Err(bad) => {
                self.note(|s| s.invalid += 1);
                return Some(Incoming::Invalid(bad.id, vec![bad.error]));
            }
            Ok(row) => row,
        };
        let mut payloads = match self.plan.map_row(&row) {
            Ok(p) => p,
            Err(errors) => {
                self.note(|s| s.invalid += 1);
                return Some(Incoming::Invalid(row.id, errors));
            }
        };
        let mut left = BTreeMap::new();
        let customer = keep_what_is_not_done(&mut payloads, view, self.rules, &mut left);
        if !left.is_empty() {
            self.note(|s| {
                for (reason, n) in left {
                    *s.left.entry(reason).or_default() += n;
                }
            });
        }
        let lookup = (customer == Some(Verdict::LookUpFirst))
            .then(|| payloads.customer.as_ref().and_then(|c| c.identifier_text()))
            .flatten()
            .map(|identifier| CustomerLookup {
                key: SearchKey::Identifier,
                value: identifier,
            });
        if payloads.is_empty() && !was_invalid {
            return None;
        }
        Some(Incoming::Mapped(Box::new(MappedRow {
            id: row.id,
            payloads,
            lookup,
            now_valid: was_invalid,
        })))
    }

    /// Moves the source to row `n` by its byte offset, when it is known.
    fn seek(&mut self, n: u64) -> Result<(), SourceError> {
        if !self.seekable || self.next == n {
            return Ok(());
        }
        let Some(at) = self.outcomes.row(n).map(|r| r.id()) else {
            return Ok(());
        };
        if at.offset == 0 {
            return Ok(());
        }
        let info = self.source.info().clone();
        let header = self.source.header().to_vec();
        self.source = Source::open_at(&self.path, self.options.quote, info, header, at)?;
        self.next = n;
        Ok(())
    }
}

impl Iterator for RetryRows {
    type Item = Incoming;

    fn next(&mut self) -> Option<Incoming> {
        loop {
            if self.failed {
                return None;
            }
            // Skip rows that are done; seek when the next needed row is
            // known and not where the source stands.
            let max_row = self.outcomes.max_row();
            while self.wanted <= max_row && !self.needed(self.wanted) {
                self.wanted += 1;
            }
            if let Err(e) = self.seek(self.wanted) {
                self.failed = true;
                return Some(Incoming::SourceFailed(e));
            }
            let item = match self.source.next_row()? {
                Ok(item) => item,
                Err(e) => {
                    self.failed = true;
                    return Some(Incoming::SourceFailed(e));
                }
            };
            let id: RowId = match &item {
                Ok(row) => row.id,
                Err(bad) => bad.id,
            };
            self.next = id.row + 1;
            if id.row < self.wanted || !self.needed(id.row) {
                continue;
            }
            self.wanted = id.row + 1;
            if let Some(incoming) = self.plan_row(item) {
                return Some(incoming);
            }
        }
    }
}
