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
//! | invalid at a sending stage (what the system had: an agent not in the campaign, a status it lacks) | re-mapped and checked again against what preflight read now: sent if it passes, recorded invalid again if not |
//! | customer failed as ambiguous (several customers with one key) | looked up again (with `match`, as every row is; without, by identifier, as after an unknown outcome) |
//! | failed on a refusal (4xx), invalid at `mapping` | send only when the mapping or the source changed; otherwise left: it would fail the same way |
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

use crate::ledger::{Stage, Status};
use crate::mapping::Plan;
pub use crate::needs::{failed_csv_previous, keep_what_is_not_done, Kept, Rules};
use crate::needs::{AMBIGUOUS, CHECKED_STAGES, LEFT_INVALID};
use crate::outcomes::{Outcomes, StageOutcome};
use crate::pipeline::{Incoming, LookupReason, MappedRow};
use crate::source::{RowId, Source, SourceError, SourceOptions};

/// What planning found, for the summary.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Rows read again.
    pub rows_seen: u64,
    /// Rows handed on with something to send (a customer to create, update
    /// or look up, an item, a record, a feed record).
    pub rows_sent: u64,
    /// Among them, rows the ledger has no outcome for: never sent (a
    /// pilot's rest, a run stopped first), so not "sent again".
    pub rows_first: u64,
    /// Rows invalid under the mapping now in use (recorded this time).
    pub invalid: u64,
    /// Rows handed on with a stage recorded invalid this time (at a
    /// sending stage, the rest of the row possibly sent).
    pub invalid_at_stage: u64,
    /// Stages an earlier run found invalid against the system, checked
    /// again: now allowed (sent) and still refused (recorded again).
    pub rechecked_sent: u64,
    pub rechecked_invalid: u64,
    /// Customers an earlier run found more than once, looked up again.
    pub ambiguous_again: u64,
    /// Rows (or stages) left alone, by reason.
    pub left: BTreeMap<String, u64>,
}

impl Summary {
    /// Rows invalid after this retry, among those looked at: at the
    /// mapping stage (recorded now, or left as they were) or at a stage.
    pub fn invalid_rows(&self) -> u64 {
        self.invalid + self.invalid_at_stage + self.left.get(LEFT_INVALID).copied().unwrap_or(0)
    }
}

/// Why a retry cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{path}: row {row} (line {line}) is not the ledger's row {row}: its identifier differs from the one the ledger recorded, so rows were deleted, inserted or moved (or the identifier edited); its later rows would be matched with the wrong customers. Keep every row where it was (fix cells in place, leave rows you do not want to retry as they are)")]
    Moved { path: String, row: u64, line: u64 },
}

/// Checks that an edited copy (`--source`) has the ledger's rows where the
/// ledger has them, by each row's identifier fingerprint; names the first
/// row that moved. One pass over the copy, nothing kept.
fn same_rows(
    outcomes: &Outcomes,
    plan: &Plan,
    path: &Path,
    options: &SourceOptions,
) -> Result<(), RetryError> {
    let mut source = Source::open(path, options)?;
    while let Some(item) = source.next_row() {
        let Ok(row) = item? else { continue };
        let Some(recorded) = outcomes.row(row.id.row).and_then(|r| r.id().fp) else {
            continue;
        };
        if plan.fingerprint(&row) != Some(recorded) {
            return Err(RetryError::Moved {
                path: path.display().to_string(),
                row: row.id.row,
                line: row.id.line,
            });
        }
    }
    Ok(())
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
    /// What preflight read: rows are checked against it.
    system: Option<Arc<crate::preflight::System>>,
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
    ) -> Result<RetryRows, RetryError> {
        if !seekable {
            same_rows(&outcomes, &plan, path, options)?;
        }
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
            system: None,
        })
    }

    /// Checks the rows against what preflight read.
    pub fn with_system(mut self, system: Option<Arc<crate::preflight::System>>) -> RetryRows {
        self.system = system;
        self
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
        let mut row = match item {
            Err(bad) => {
                self.note(|s| s.invalid += 1);
                return Some(Incoming::Invalid(bad.id, vec![bad.error]));
            }
            Ok(row) => row,
        };
        row.id.fp = self.plan.fingerprint(&row);
        let mut payloads = match self.plan.map_row(&row) {
            Ok(mut p) => {
                if let Some(system) = &self.system {
                    system.check_row(&mut p);
                }
                p
            }
            Err(errors) => {
                self.note(|s| s.invalid += 1);
                return Some(Incoming::Invalid(row.id, errors));
            }
        };
        // A customer found more than once is looked up again: with `match`
        // every row is (a retryable failure is sent), without it by its
        // identifier, as after an unknown outcome (never created blindly:
        // one of the customers found may be this row's).
        let upsert = self.plan.upsert().is_some();
        let ambiguous = view.is_some_and(|v| {
            v.stage(Stage::Customer, 0)
                .is_some_and(|o| o.status == Status::Failed)
                && v.message(Stage::Customer, 0)
                    .is_some_and(|m| m.starts_with(AMBIGUOUS))
        });
        let previous = |stage: Stage, group: usize| {
            let last = view.and_then(|v| v.stage(stage, group))?;
            Some(match stage {
                Stage::Customer if ambiguous && upsert => StageOutcome {
                    status: Status::Failed,
                    retryable: Some(true),
                },
                Stage::Customer if ambiguous => StageOutcome {
                    status: Status::Unknown,
                    retryable: None,
                },
                _ => last,
            })
        };
        let invalid_before: Vec<Stage> = CHECKED_STAGES
            .into_iter()
            .filter(|s| previous(*s, 0).is_some_and(|o| o.status == Status::Invalid))
            .collect();
        let kept = keep_what_is_not_done(
            &mut payloads,
            &previous,
            view.and_then(|v| v.customer_id()),
            self.rules,
            &self.plan.lookup_keys(),
        );
        if !kept.left.is_empty() {
            self.note(|s| {
                for (_, _, reason) in kept.left {
                    *s.left.entry(reason).or_default() += 1;
                }
            });
        }
        let lookup = if kept.look_up {
            Some(LookupReason::UnknownBefore)
        } else {
            kept.confirm.map(LookupReason::Confirm)
        };
        // What became of the stages checked again, for an honest summary.
        let still = |s: &Stage| payloads.invalid_stages.iter().any(|(i, _)| i == s);
        let sent = |s: &Stage| match s {
            Stage::Customer => payloads.customer.is_some(),
            Stage::Campaign => payloads.campaign.is_some(),
            _ => payloads.campaign_update.is_some(),
        };
        let (now_sent, now_invalid) = (
            invalid_before.iter().filter(|s| sent(s)).count() as u64,
            invalid_before.iter().filter(|s| still(s)).count() as u64,
        );
        let sends = payloads.outcomes() as usize > payloads.invalid_stages.len();
        self.note(|s| {
            s.rechecked_sent += now_sent;
            s.rechecked_invalid += now_invalid;
            s.ambiguous_again += u64::from(ambiguous && sends);
            s.rows_sent += u64::from(sends);
            s.rows_first += u64::from(sends && view.is_none());
            s.invalid_at_stage += u64::from(!payloads.invalid_stages.is_empty());
        });
        if payloads.is_empty() && !was_invalid {
            return None;
        }
        let mut mapped = MappedRow::new(row.id, payloads);
        mapped.lookup = lookup;
        if was_invalid {
            mapped
                .known_before
                .push(crate::pipeline::event(row.id, Stage::Mapping, Status::Ok));
        }
        Some(Incoming::Mapped(Box::new(mapped)))
    }

    /// Moves the source to row `n` by its byte offset, when it is known.
    fn seek(&mut self, n: u64) -> Result<(), SourceError> {
        // A spreadsheet is read on from where it is.
        if !self.seekable || self.next == n || self.source.is_sheet() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::keys::SearchKey;
    use crate::mapping::RowPayloads;
    use crate::needs::{verdict, Verdict};

    const SAME: Rules = Rules {
        changed: false,
        include_unknown: false,
    };

    fn outcome(status: Status) -> Option<StageOutcome> {
        Some(StageOutcome {
            status,
            retryable: None,
        })
    }

    #[test]
    fn a_stage_invalid_against_the_system_is_planned_again_but_not_one_invalid_at_mapping() {
        // Preflight's verdict may change with the system: checked again.
        for stage in CHECKED_STAGES {
            assert_eq!(
                verdict(outcome(Status::Invalid), stage, SAME),
                Verdict::Send
            );
        }
        // The file and the mapping did not change: it would fail the same way.
        assert!(matches!(
            verdict(outcome(Status::Invalid), Stage::Mapping, SAME),
            Verdict::Leave(_)
        ));
        // A refusal by the server is left as before.
        let refused = Some(StageOutcome {
            status: Status::Failed,
            retryable: Some(false),
        });
        assert!(matches!(
            verdict(refused, Stage::Campaign, SAME),
            Verdict::Leave(_)
        ));
    }

    #[test]
    fn an_ambiguity_is_recognised_by_the_message_the_lookup_writes() {
        let message = crate::identity::Found::ambiguity(&[12, 57], &SearchKey::Identifier);
        assert!(message.starts_with(AMBIGUOUS), "{message}");
    }

    #[test]
    fn a_customer_created_before_keeps_its_id_when_it_is_not_sent_again() {
        // The customer stage was done, and this time the system refuses the
        // customer as mapped (its payload was taken out by the check): the
        // campaign record still goes to the customer created before.
        let mut payloads = RowPayloads {
            campaign: Some(crate::mapping::CampaignPayload {
                campaign_id: "00001".into(),
                record: crate::api::payload::RecordFields::default(),
            }),
            ..RowPayloads::default()
        };
        let previous = |stage: Stage, _| match stage {
            Stage::Customer => outcome(Status::Ok),
            Stage::Campaign => outcome(Status::Invalid),
            _ => None,
        };
        keep_what_is_not_done(&mut payloads, &previous, Some(13), SAME, &[]);
        assert_eq!(payloads.existing_customer_id, Some(13));
        assert!(payloads.campaign.is_some());
    }
}
