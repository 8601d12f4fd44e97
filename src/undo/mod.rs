//! `undo`: takes a run back, from its ledger and its before-images.
//!
//! ```text
//! ledger (what was created, updated, added) ─┐
//! <LEDGER>.undo.jsonl (values before, signatures of what was sent) ─┴▶ targets
//!   ─▶ read each one now (GET customers/:id, the customer's items)
//!        still what the run wrote ─▶ DELETE customers/:id, or PUT the values back ─▶ reversed
//!        already as before the run (or gone, for a deletion) ─────────────────────▶ reversed
//!        a person changed it since ─▶ left as it is ───────────────────────────────▶ kept
//!   deleted by the run (on_gone) ─▶ looked up by identifier (e-mail, phone)
//!        found, our own earlier POST (a pending intent) ────────────────────────▶ reversed
//!        found, someone else's ─────────────────────────────────────────────────▶ kept
//!        none ─▶ intent (durable) ─▶ POST batch/customers, a new id ─────────────▶ reversed
//!   ─▶ <LEDGER>.undo-ledger.jsonl (one outcome per target, durable as it ends)
//!   ─▶ the sync state forgets the customers taken back (a customer created
//!      again: its old id forgotten, its job's `seen` keys given its new id)
//! ```
//!
//! A customer the run deleted (`on_gone = "delete"`) comes back from its
//! before-image under a **new id**, with its fields (custom fields and
//! addresses too); its field-group items, campaign records and contact
//! history were deleted with it and are not brought back (said in its
//! message; it still counts as reversed: nothing the tool can do would
//! bring more). Its `POST` is not idempotent: the intent is written first,
//! and an unknown outcome is looked up before any second `POST`. A
//! customer marked gone gets its field's old value back, as an update does.
//!
//! What the API cannot take back is listed, not hidden (`not undoable`):
//! items created on customers that existed, campaign records added, record
//! edits and feed records, unless the customer they hang on is deleted (its
//! dependencies go with it). Customer creations of unknown outcome are not
//! guessed at: `undo` refuses until `retry` has looked them up (one home for
//! reconciling, `retry`'s rules); those `retry` cannot look up (no
//! identifier) are then listed as not undoable.
//!
//! Every check and every write is idempotent: an `undo` stopped halfway
//! and run again skips the targets settled in its ledger, and finds the
//! ones it had sent but not recorded already as before the run (reversed,
//! not mistaken for a person's edit).

mod aside;
pub mod images;
mod jsonl;
pub mod record;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use serde_json::{Map, Value};

use crate::api::customers::{CreateCustomers, UpdateCustomers};
use crate::api::field_groups::UpdateItem;
use crate::api::payload::{Customer, CustomerUpdate, ItemValue, Scalar};
use crate::api::{ApiClient, CallError, RowFate};
use crate::current::{self, Current, Written};
use crate::ledger::{self, Action, Entry, LedgerLock, Stage, Status};
use crate::outcomes::Outcomes;
use crate::pipeline::Abort;
use images::{Image, ItemField, SeenKeys};
use record::{Kind, Outcome, Record, Summary, TargetEvent, UndoEntry};

/// What `undo` is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub ledger: PathBuf,
    /// Read and say, write nothing.
    pub dry_run: bool,
    /// The sync state to update (default: the one(s) the run used, as its
    /// undo file says).
    pub state: Option<PathBuf>,
    /// Targets worked on at once.
    pub concurrency: usize,
}

/// How an `undo` ended.
#[derive(Debug)]
pub struct Undone {
    /// What this `undo` did (or, with `--dry-run`, would do), per target.
    pub events: Vec<TargetEvent>,
    /// The whole undo ledger folded (with `--dry-run`: with this one's
    /// outcomes as if recorded).
    pub summary: Summary,
    /// Targets an earlier `undo` settled, left as they are.
    pub settled_before: usize,
    /// Why it stopped early (a signal, a wrong password).
    pub aborted: Option<String>,
    pub record_path: PathBuf,
    /// What the summary says besides the counts.
    pub notes: Vec<String>,
}

/// What the run wrote to a customer or an item, in layers (a creation,
/// then updates): a field is judged by the last layer that wrote it.
#[derive(Debug, Clone)]
struct Layer {
    fields: Vec<String>,
    sent: String,
}

/// One thing to take back.
#[derive(Debug, Clone)]
enum Work {
    Delete {
        customer_id: i64,
        rows: Vec<u64>,
        layers: Vec<Layer>,
        /// Items the run tried to create on it without learning their
        /// outcome (they may be there, with no id in the ledger).
        unknown_items: usize,
    },
    Restore {
        customer_id: i64,
        rows: Vec<u64>,
        before: Map<String, Value>,
        unknown: Vec<String>,
        layers: Vec<Layer>,
        /// A customer marked gone: its record in the state's `seen`.
        seen: Option<SeenKeys>,
    },
    /// A customer the run deleted, created again from its before-image.
    Recreate {
        customer_id: i64,
        fields: Map<String, Value>,
        seen: Option<SeenKeys>,
    },
    RestoreItem {
        customer_id: i64,
        item_id: i64,
        group_id: i64,
        rows: Vec<u64>,
        before: Vec<ItemField>,
        layers: Vec<Layer>,
    },
    /// Decided from the ledger alone.
    Cannot(TargetEvent),
}

impl Work {
    fn key(&self) -> String {
        self.event(Outcome::Reversed).key()
    }

    /// The target's event with `outcome`, ids and rows filled in.
    fn event(&self, outcome: Outcome) -> TargetEvent {
        let (target, undo, customer_id, item_id, rows) = match self {
            Work::Delete {
                customer_id, rows, ..
            } => (Kind::Customer, "delete", *customer_id, None, rows),
            Work::Restore {
                customer_id, rows, ..
            } => (Kind::Customer, "restore", *customer_id, None, rows),
            Work::RestoreItem {
                customer_id,
                item_id,
                rows,
                ..
            } => (Kind::Item, "restore", *customer_id, Some(*item_id), rows),
            Work::Recreate { customer_id, .. } => {
                const NO_ROWS: &Vec<u64> = &Vec::new();
                (Kind::Customer, "recreate", *customer_id, None, NO_ROWS)
            }
            Work::Cannot(e) => return e.clone(),
        };
        TargetEvent {
            target: Some(target),
            undo: Some(undo.into()),
            customer_id: Some(customer_id),
            item_id,
            rows: rows.clone(),
            outcome: Some(outcome),
            ..TargetEvent::default()
        }
    }
}

/// The latest ok event of a (row, stage, group): what the fold does not
/// keep (item and record ids, the message of an ok outcome).
#[derive(Debug, Clone, Default)]
struct Seen {
    action: Option<Action>,
    customer_id: Option<i64>,
    item_id: Option<i64>,
    record_id: Option<i64>,
    message: Option<String>,
}

/// Takes back the run of `opts.ledger` (locked for the whole time, as
/// `run` and `retry` lock it), through `client`; `root` names the system
/// (the sync state checks it is its own).
pub async fn undo(opts: &Options, client: Arc<ApiClient>, root: &str) -> anyhow::Result<Undone> {
    let _lock = LedgerLock::acquire(&opts.ledger, "undo")?;
    let outcomes = Outcomes::read(&opts.ledger)?;
    let started_at = outcomes.header.started_at.clone();
    let images_path = images::path_for(&opts.ledger);
    if !images_path.exists() {
        anyhow::bail!(
            "{}: no undo file beside the ledger (the run was made with --no-undo, or by a version without undo): nothing says what the run overwrote, so nothing is taken back",
            images_path.display()
        );
    }
    let (all_images, bad_images) = images::read(&images_path)?;
    let states: Vec<String> = all_images
        .iter()
        .filter_map(|i| match i {
            Image::Opened {
                ledger_started_at,
                state,
                ..
            } if *ledger_started_at == started_at => Some(state.clone()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flatten()
        .collect();
    let ours = all_images.iter().any(
        |i| matches!(i, Image::Opened { ledger_started_at, .. } if *ledger_started_at == started_at),
    );
    if !ours {
        anyhow::bail!(
            "{}: the undo file belongs to another ledger (one started at another time at this path)",
            images_path.display()
        );
    }
    let mut notes = Vec::new();
    if bad_images > 0 {
        notes.push(format!(
            "{bad_images} line(s) of the undo file could not be read (a crash mid-write leaves one): their targets are judged without them"
        ));
    }
    let Planned {
        work,
        ended_at,
        run_items,
    } = plan(&opts.ledger, &outcomes, &all_images)?;
    // `updated_at` is the system's local time: read as this machine's.
    let ended_at = ended_at
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&chrono::Local).naive_local());
    let record_path = record::path_for(&opts.ledger);
    let before = record::read(&record_path)?
        .filter(|(s, _)| *s == started_at)
        .map(|(_, s)| s);
    let settled = |key: &str| {
        before
            .as_ref()
            .and_then(|s| s.outcome_of(key))
            .is_some_and(Outcome::settled)
    };
    // Where a target's customer is to be found in the state's `seen`
    // (customers gone from the file), by target.
    let seen_of: HashMap<String, SeenKeys> = work
        .iter()
        .filter_map(|w| match w {
            Work::Recreate {
                seen: Some(seen), ..
            }
            | Work::Restore {
                seen: Some(seen), ..
            } => Some((w.key(), seen.clone())),
            _ => None,
        })
        .collect();
    let pending: HashSet<String> = work
        .iter()
        .map(Work::key)
        .filter(|k| before.as_ref().is_some_and(|s| s.is_pending(k)))
        .collect();
    let (done_before, todo): (Vec<Work>, Vec<Work>) =
        work.into_iter().partition(|w| settled(&w.key()));
    let record = if opts.dry_run {
        None
    } else {
        Some(Record::open(&opts.ledger, &started_at)?)
    };
    let abort = Arc::new(Abort::default());
    let stopper = crate::signals::install();
    {
        let abort = abort.clone();
        stopper.while_running(move |name| {
            abort.trip(format!(
                "interrupted ({name}): targets in hand were finished and recorded"
            ));
        });
    }
    let ctx = Ctx {
        client,
        dry_run: opts.dry_run,
        abort: abort.clone(),
        record: record.as_ref(),
        pending,
        ended_at,
        run_items,
    };
    let events: Vec<TargetEvent> = futures::stream::iter(todo)
        .map(|w| ctx.take_back(w))
        .buffer_unordered(opts.concurrency.max(1))
        .filter_map(|e| async move { e })
        .collect()
        .await;
    stopper.done();
    stopper.stops_by_itself();
    let mut aborted = abort.reason();
    let summary = match &record {
        Some(r) => {
            if let Err(e) = r.write(&[UndoEntry::End {
                finished_at: ledger::now(),
                aborted: aborted.clone(),
            }]) {
                aborted.get_or_insert_with(|| e.to_string());
            }
            record::read(&record_path)?
                .map(|(_, s)| s)
                .unwrap_or_default()
        }
        None => Summary::of(
            before
                .iter()
                .flat_map(|s| s.targets().iter().cloned())
                .chain(events.iter().cloned()),
            aborted.is_none(),
        ),
    };
    if !opts.dry_run {
        let states = match &opts.state {
            Some(p) => vec![p.display().to_string()],
            None => {
                let mut s = states;
                s.sort();
                s.dedup();
                s
            }
        };
        let sha = &outcomes.header.source_sha256;
        // What this undo took back: the state note is for a change made
        // now, not one an earlier undo made (said then).
        let fresh: HashSet<String> = events
            .iter()
            .filter(|e| e.outcome == Some(Outcome::Reversed))
            .map(TargetEvent::key)
            .collect();
        for state in states {
            notes.extend(forget(&state, root, &summary, &seen_of, sha, &fresh));
        }
    }
    Ok(Undone {
        events,
        summary,
        settled_before: done_before.len(),
        aborted,
        record_path,
        notes,
    })
}

/// The sync state forgets every customer taken back (deleted, or given
/// back fields or item values), so that the next night sends their rows
/// again rather than take them as unchanged. Said as a note.
///
/// A customer gone from the file and taken back (created again, or its
/// mark removed) also gets back its record in the job's `seen`, which
/// handling it had removed, under its id now (the new one, for one created
/// again): the next complete file that has it sees it present, one that
/// lacks it counts it gone again, under that id. Its keys are forgotten,
/// not pointed at the new id: the next night finds it by lookup (the state
/// is a hint; Thulium says who a row is).
///
/// Every target reversed so far is forgotten again (idempotent: an undo
/// stopped before this step left them known), but the note counts only
/// those `fresh` (reversed by this undo), and there is none when nothing
/// changed this time.
fn forget(
    path: &str,
    root: &str,
    summary: &Summary,
    seen_of: &HashMap<String, SeenKeys>,
    sha256: &str,
    fresh: &HashSet<String>,
) -> Option<String> {
    if !Path::new(path).exists() {
        return Some(format!("sync state {path} not found: not updated"));
    }
    let state = match crate::state::SyncState::open(Path::new(path), root) {
        Ok(s) => s,
        Err(e) => return Some(format!("sync state not updated: {e}")),
    };
    let ids: HashSet<i64> = summary
        .targets()
        .iter()
        .filter(|t| t.outcome == Some(Outcome::Reversed) && t.undo.is_some())
        .filter_map(|t| t.customer_id)
        .collect();
    for customer_id in &ids {
        state.learn(crate::state::Learnt::ForgetCustomer {
            customer_id: *customer_id,
        });
    }
    if let Err(e) = state.flush() {
        return Some(format!("sync state not updated: {e}"));
    }
    let forgotten = summary
        .targets()
        .iter()
        .filter(|t| fresh.contains(&t.key()) && t.undo.is_some())
        .filter_map(|t| t.customer_id)
        .collect::<HashSet<i64>>()
        .len();
    let mut back = 0;
    for t in summary.targets() {
        let Some(seen) = seen_of.get(&t.key()) else {
            continue;
        };
        let id = match (t.outcome, t.new_customer_id, t.customer_id) {
            (Some(Outcome::Reversed), Some(new), _) => new,
            (Some(Outcome::Reversed), None, Some(id)) if t.undo.as_deref() == Some("restore") => id,
            _ => continue,
        };
        let brought: Vec<(crate::hash::KeyHash, i64)> =
            seen.hashes().into_iter().map(|k| (k, id)).collect();
        if let Err(e) = state.record_seen(&seen.job, sha256, &brought, &[]) {
            return Some(format!("sync state not updated: {e}"));
        }
        if fresh.contains(&t.key()) {
            back += 1;
        }
    }
    if forgotten == 0 && back == 0 {
        return None;
    }
    let seen_note = if back > 0 {
        format!(
            "; {back} customer(s) gone from the file and taken back are counted in their job again (under their id now)"
        )
    } else {
        String::new()
    };
    Some(format!(
        "sync state {path}: {forgotten} customer(s) taken back forgotten (the next run sends their rows again){seen_note}"
    ))
}

/// The targets of a run: from the ledger (what was done, with ids) and the
/// undo file (values before, signatures of what was sent).
fn plan(ledger_path: &Path, outcomes: &Outcomes, all: &[Image]) -> anyhow::Result<Planned> {
    // 1. What the fold does not keep: ids and actions of ok events, and
    // whether a `retry` looked at a customer of unknown outcome since.
    let mut seen: HashMap<(u64, Stage, usize), Seen> = HashMap::new();
    let mut unknown_at: HashMap<u64, u64> = HashMap::new();
    let mut last_attempt = 0u64;
    let mut seq = 0u64;
    // The customers gone from the file the run deleted or marked (ok),
    // and those it tried to and did not.
    let mut deleted: HashSet<i64> = HashSet::new();
    let mut already_gone: HashSet<i64> = HashSet::new();
    let mut marked: HashSet<i64> = HashSet::new();
    let mut not_marked: HashSet<i64> = HashSet::new();
    // When the last attempt on the ledger ended (none: it did not).
    let mut ended_at: Option<String> = None;
    ledger::read(ledger_path, |e| {
        seq += 1;
        match e {
            Entry::Row(ev) => {
                let Some(stage) = ev.stage else { return };
                if stage == Stage::Customer && ev.status == Some(Status::Unknown) {
                    unknown_at.insert(ev.row, seq);
                }
                if ev.status == Some(Status::Ok) {
                    seen.insert(
                        (ev.row, stage, ev.group.unwrap_or(0)),
                        Seen {
                            action: ev.action,
                            customer_id: ev.customer_id,
                            item_id: ev.item_id,
                            record_id: ev.record_id,
                            message: ev.message,
                        },
                    );
                }
            }
            Entry::Intent(i) if i.stage == Stage::Customer => {
                for row in i.rows {
                    unknown_at.insert(row, seq);
                }
            }
            Entry::Attempt(_) => {
                last_attempt = seq;
                ended_at = None;
            }
            Entry::End(end) => ended_at = Some(end.finished_at),
            // A deletion or a mark not recorded ok (unknown, failed, or
            // no line at all: a kill between image and record) is judged
            // from its image, by reading the customer first.
            Entry::Gone(g) => match (g.status, g.action) {
                // Found gone from Thulium already: the run deleted nothing.
                (Some(Status::Ok), Some(Action::Deleted))
                    if g.message
                        .as_deref()
                        .is_some_and(|m| m.contains("already gone from Thulium")) =>
                {
                    already_gone.insert(g.customer_id);
                }
                (Some(Status::Ok), Some(Action::Deleted)) => {
                    deleted.insert(g.customer_id);
                }
                (Some(Status::Ok), Some(Action::Marked)) => {
                    marked.insert(g.customer_id);
                }
                // A PUT refused: the mark was not made.
                (Some(Status::Failed), Some(Action::Marked)) => {
                    not_marked.insert(g.customer_id);
                }
                _ => {}
            },
            _ => {}
        }
    })
    .with_context(|| format!("{}: cannot read the ledger", ledger_path.display()))?;

    // 2. The customers: created (deleted), updated (put back).
    let mut created: HashMap<i64, u64> = HashMap::new();
    let mut adopted: HashMap<i64, u64> = HashMap::new();
    let mut updated: HashMap<i64, Vec<u64>> = HashMap::new();
    let mut unresolved = Vec::new();
    let mut work = Vec::new();
    for row in 1..=outcomes.max_row() {
        let Some(view) = outcomes.row(row) else {
            continue;
        };
        match view.stage(Stage::Customer, 0).map(|o| o.status) {
            Some(Status::Ok) => match (view.action(), view.customer_id()) {
                (Some(Action::Created), Some(c)) => {
                    created.insert(c, row);
                }
                (Some(Action::Adopted), Some(c)) => {
                    adopted.insert(c, row);
                }
                (Some(Action::Updated), Some(c)) => updated.entry(c).or_default().push(row),
                _ => {}
            },
            Some(Status::Unknown) => {
                if unknown_at.get(&row).copied().unwrap_or(0) > last_attempt {
                    unresolved.push(row);
                } else {
                    work.push(Work::Cannot(TargetEvent {
                        target: Some(Kind::Customer),
                        rows: vec![row],
                        outcome: Some(Outcome::NotUndoable),
                        message: Some("its creation's outcome is unknown and `retry` could not look it up (no identifier): look for it in Thulium".into()),
                        ..TargetEvent::default()
                    }));
                }
            }
            _ => {}
        }
    }
    if !unresolved.is_empty() {
        anyhow::bail!(
            "{} customer creation(s) have an unknown outcome (rows {}): they may exist, and undo would miss them. Run `thulium-import retry {}` first: it looks them up and records what became of them; then run undo again",
            unresolved.len(),
            crate::text::join_ids(&unresolved.iter().map(|r| *r as i64).collect::<Vec<_>>()),
            ledger_path.display()
        );
    }

    // 3. The images, by what they describe (in file order).
    let mut created_image: HashMap<u64, Layer> = HashMap::new();
    let mut updates: HashMap<i64, Vec<Overwritten>> = HashMap::new();
    let mut items: HashMap<i64, Vec<(i64, Vec<ItemField>, Layer)>> = HashMap::new();
    let mut deleted_image: HashMap<i64, (Map<String, Value>, Option<SeenKeys>)> = HashMap::new();
    let mut marked_image: HashMap<i64, (Overwritten, Option<SeenKeys>)> = HashMap::new();
    for image in all {
        match image {
            Image::Created { row, fields, sent } => {
                created_image.insert(
                    *row,
                    Layer {
                        fields: fields.clone(),
                        sent: sent.clone(),
                    },
                );
            }
            Image::Updated {
                customer_id,
                before,
                unknown,
                sent,
                ..
            } => {
                let fields = before.keys().chain(unknown).cloned().collect();
                updates.entry(*customer_id).or_default().push((
                    before.clone(),
                    unknown.clone(),
                    Layer {
                        fields,
                        sent: sent.clone(),
                    },
                ));
            }
            Image::Item {
                item_id,
                group_id,
                before,
                sent,
                ..
            } => {
                let fields = before
                    .iter()
                    .map(|f| images::item_field(f.field_id))
                    .collect();
                items.entry(*item_id).or_default().push((
                    *group_id,
                    before.clone(),
                    Layer {
                        fields,
                        sent: sent.clone(),
                    },
                ));
            }
            // The last image of a customer wins (a night continued by
            // `retry` may read it twice).
            Image::Deleted {
                customer_id,
                fields,
                seen,
            } => {
                deleted_image.insert(*customer_id, (fields.clone(), seen.clone()));
            }
            Image::Marked {
                customer_id,
                before,
                unknown,
                sent,
                seen,
            } => {
                let fields = before.keys().chain(unknown).cloned().collect();
                // The first value before is the one to put back.
                marked_image.entry(*customer_id).or_insert((
                    (
                        before.clone(),
                        unknown.clone(),
                        Layer {
                            fields,
                            sent: sent.clone(),
                        },
                    ),
                    seen.clone(),
                ));
            }
            Image::Opened { .. } => {}
        }
    }
    // The customers gone from the file: deleted ones created again (those
    // whose deletion is not in the ledger too, a kill between the image
    // and the record: read first, they may still be there), marked ones
    // given their field back.
    let mut gone_ids: Vec<i64> = deleted_image
        .keys()
        .copied()
        .filter(|id| deleted.contains(id) || !already_gone.contains(id))
        .chain(deleted.iter().copied())
        .collect();
    gone_ids.sort_unstable();
    gone_ids.dedup();
    for customer_id in gone_ids {
        match deleted_image.remove(&customer_id) {
            Some((fields, seen)) => work.push(Work::Recreate {
                customer_id,
                fields,
                seen,
            }),
            None => work.push(Work::Cannot(TargetEvent {
                target: Some(Kind::Customer),
                customer_id: Some(customer_id),
                outcome: Some(Outcome::NotUndoable),
                message: Some("deleted by the run without a before-image (--no-undo): its fields are not known".into()),
                ..TargetEvent::default()
            })),
        }
    }
    let mut marked_ids: Vec<i64> = marked_image
        .keys()
        .copied()
        .filter(|id| marked.contains(id) || !not_marked.contains(id))
        .chain(marked.iter().copied())
        .collect();
    marked_ids.sort_unstable();
    marked_ids.dedup();
    for customer_id in marked_ids {
        match marked_image.remove(&customer_id) {
            Some(((before, unknown, layer), seen)) => work.push(Work::Restore {
                customer_id,
                rows: Vec::new(),
                before,
                unknown,
                layers: vec![layer],
                seen,
            }),
            None => work.push(Work::Cannot(TargetEvent {
                target: Some(Kind::Customer),
                customer_id: Some(customer_id),
                outcome: Some(Outcome::NotUndoable),
                message: Some("marked gone by the run without a before-image (--no-undo): the field's value before is not known".into()),
                ..TargetEvent::default()
            })),
        }
    }
    let cannot = |target, customer_id, item_id, record_id, row, why: &str| {
        Work::Cannot(TargetEvent {
            target: Some(target),
            customer_id,
            item_id,
            record_id,
            rows: vec![row],
            outcome: Some(Outcome::NotUndoable),
            message: Some(why.to_string()),
            ..TargetEvent::default()
        })
    };
    // A customer adopted (found by its keys after a creation of unknown
    // outcome) may have been there before the run: deleted only when the
    // images show it is the run's own POST's (its creation signed before
    // the POST, and no update since found other values in it). One whose
    // update overwrote values gets them back instead, as an update's.
    let mut adopted_ids: Vec<(i64, u64)> = adopted.into_iter().collect();
    adopted_ids.sort_unstable_by_key(|(_, r)| *r);
    for (customer_id, row) in adopted_ids {
        let list = updates.get(&customer_id).map_or(&[][..], Vec::as_slice);
        if list.iter().any(|(b, _, _)| !b.is_empty()) {
            updated.entry(customer_id).or_default().push(row);
        } else if !created_image.contains_key(&row) {
            work.push(cannot(Kind::Customer, Some(customer_id), None, None, row, "adopted (found by its keys after a creation of unknown outcome) without a before-image: nothing shows it is the run's own creation rather than a customer that was there before; left as it is"));
        } else if list.iter().any(|(_, u, _)| !u.is_empty()) {
            work.push(cannot(Kind::Customer, Some(customer_id), None, None, row, "adopted (found by its keys after a creation of unknown outcome) and updated without its values before being known: it may be a customer that was there before the run; left as it is"));
        } else {
            created.insert(customer_id, row);
        }
    }
    let mut created_ids: Vec<(i64, u64)> = created.iter().map(|(c, r)| (*c, *r)).collect();
    created_ids.sort_unstable_by_key(|(_, r)| *r);
    for (customer_id, row) in created_ids {
        let Some(first) = created_image.get(&row) else {
            work.push(cannot(Kind::Customer, Some(customer_id), None, None, row, "created without a before-image (--no-undo): nothing proves nobody changed it since; delete it by hand if it is not wanted"));
            continue;
        };
        let mut layers = vec![first.clone()];
        layers.extend(
            updates
                .get(&customer_id)
                .into_iter()
                .flatten()
                .map(|(_, _, l)| l.clone()),
        );
        // Items of this row with no id in the ledger: of unknown outcome,
        // or created and answered without an id.
        let unknown_items = outcomes.row(row).map_or(0, |view| {
            view.all()
                .filter(|(stage, group, o)| {
                    *stage == Stage::FieldGroup
                        && match o.status {
                            Status::Unknown => true,
                            Status::Ok => {
                                seen.get(&(row, Stage::FieldGroup, *group))
                                    .is_some_and(|s| {
                                        s.action == Some(Action::Created) && s.item_id.is_none()
                                    })
                            }
                            _ => false,
                        }
                })
                .count()
        });
        work.push(Work::Delete {
            customer_id,
            rows: vec![row],
            layers,
            unknown_items,
        });
    }
    let mut updated_ids: Vec<(i64, Vec<u64>)> = updated
        .into_iter()
        .filter(|(c, _)| !created.contains_key(c))
        .collect();
    updated_ids.sort_unstable_by_key(|(_, rows)| rows.first().copied());
    for (customer_id, rows) in updated_ids {
        let Some(list) = updates.get(&customer_id) else {
            let row = rows.first().copied().unwrap_or_default();
            work.push(cannot(
                Kind::Customer,
                Some(customer_id),
                None,
                None,
                row,
                "updated without a before-image (--no-undo): the values it had are not known",
            ));
            continue;
        };
        let (before, unknown) = first_mention(list);
        let mut rows = rows;
        rows.sort_unstable();
        rows.dedup();
        work.push(Work::Restore {
            customer_id,
            rows,
            before,
            unknown,
            layers: list.iter().map(|(_, _, l)| l.clone()).collect(),
            seen: None,
        });
    }

    // 4. What hangs on the customers: items, records, history.
    let run_items: HashSet<i64> = seen
        .iter()
        .filter(|((_, stage, _), _)| *stage == Stage::FieldGroup)
        .filter_map(|(_, s)| s.item_id)
        .collect();
    for row in 1..=outcomes.max_row() {
        let Some(view) = outcomes.row(row) else {
            continue;
        };
        for (stage, group, outcome) in view.all() {
            if stage == Stage::Customer || stage == Stage::Mapping {
                continue;
            }
            let s = seen.get(&(row, stage, group)).cloned().unwrap_or_default();
            let customer_id = s.customer_id.or(view.customer_id());
            let gone_with = customer_id.is_some_and(|c| created.contains_key(&c));
            let nothing_sent = matches!(s.action, Some(Action::Unchanged | Action::Kept));
            match (stage, outcome.status) {
                (Stage::FieldGroup, Status::Ok) if s.action == Some(Action::Updated) => {
                    let (Some(item_id), Some(c)) = (s.item_id, customer_id) else {
                        continue;
                    };
                    if gone_with {
                        continue;
                    }
                    let Some(list) = items.get(&item_id) else {
                        work.push(cannot(Kind::Item, Some(c), Some(item_id), None, row, "updated without a before-image (--no-undo): its values before are not known"));
                        continue;
                    };
                    let mut before: Vec<ItemField> = Vec::new();
                    for (_, b, _) in list {
                        for f in b {
                            if !before.iter().any(|x| x.field_id == f.field_id) {
                                before.push(f.clone());
                            }
                        }
                    }
                    work.push(Work::RestoreItem {
                        customer_id: c,
                        item_id,
                        group_id: list[0].0,
                        rows: vec![row],
                        before,
                        layers: list.iter().map(|(_, _, l)| l.clone()).collect(),
                    });
                }
                (_, Status::Ok) if nothing_sent || gone_with => {}
                (Stage::CampaignUpdate, Status::Ok | Status::Unknown) => {
                    work.push(cannot(Kind::CampaignUpdate, customer_id, None, None, row, "a campaign record edited: the API cannot read what it held before"))
                }
                (_, Status::Unknown) if gone_with => {}
                (Stage::FieldGroup, Status::Ok) => work.push(cannot(Kind::Item, customer_id, s.item_id, None, row, "an item created on a customer that existed: the API cannot delete an item")),
                (Stage::FieldGroup, Status::Unknown) => work.push(cannot(Kind::Item, customer_id, None, None, row, "an item whose creation's outcome is unknown, on a customer that existed: look for it in Thulium")),
                (Stage::Campaign, Status::Ok) => {
                    if s.message.as_deref().is_some_and(|m| m.starts_with("already in the campaign")) {
                        continue;
                    }
                    work.push(cannot(Kind::CampaignRecord, customer_id, None, s.record_id, row, "a campaign record added to a customer that existed: the API cannot remove a record"))
                }
                (Stage::Feed, Status::Ok) => work.push(cannot(Kind::Feed, customer_id, None, None, row, "a contact-history record added to a customer that existed: the API cannot remove one")),
                (Stage::Feed, Status::Unknown) => work.push(cannot(Kind::Feed, customer_id, None, None, row, "a contact-history record of unknown outcome on a customer that existed: the API cannot list or remove one")),
                _ => {}
            }
        }
    }
    Ok(Planned {
        work,
        ended_at,
        run_items,
    })
}

/// The targets of a run, and what `delete` checks a customer against.
struct Planned {
    work: Vec<Work>,
    /// When the ledger's last attempt ended (`finished_at`; none when it
    /// did not end: a crash).
    ended_at: Option<String>,
    /// Every field-group item the run created or updated.
    run_items: HashSet<i64>,
}

/// One update's image: the values before, the fields of unknown value,
/// and what was sent.
type Overwritten = (Map<String, Value>, Vec<String>, Layer);

/// The values to put back from a customer's update images (in file
/// order): each field as the FIRST image that mentions it has it (a value,
/// or unknown). A later image was read after the run's own update: its
/// value is the run's, never the one before the run.
fn first_mention(list: &[Overwritten]) -> (Map<String, Value>, Vec<String>) {
    let mut before = Map::new();
    let mut unknown = Vec::new();
    let mut met = HashSet::new();
    for (b, u, _) in list {
        for (f, v) in b {
            if met.insert(f.clone()) {
                before.insert(f.clone(), v.clone());
            }
        }
        for f in u {
            if met.insert(f.clone()) {
                unknown.push(f.clone());
            }
        }
    }
    unknown.sort();
    (before, unknown)
}

/// What every target's work shares.
struct Ctx<'a> {
    client: Arc<ApiClient>,
    dry_run: bool,
    abort: Arc<Abort>,
    record: Option<&'a Record>,
    /// Targets whose `POST` an earlier `undo` sent without learning its
    /// outcome ([`Summary::is_pending`]).
    pending: HashSet<String>,
    /// When the run ended, on this machine's local clock.
    ended_at: Option<chrono::NaiveDateTime>,
    /// Every item the run created or updated.
    run_items: HashSet<i64>,
}

impl Ctx<'_> {
    /// One target taken back (or, dry, judged), its outcome recorded; `None`
    /// when the undo is stopping and it was not started.
    async fn take_back(&self, work: Work) -> Option<TargetEvent> {
        if self.abort.is_set() {
            return None;
        }
        let ev = match &work {
            Work::Cannot(e) => e.clone(),
            Work::Recreate {
                customer_id,
                fields,
                ..
            } => self.recreate(&work, *customer_id, fields).await,
            Work::Delete {
                customer_id,
                layers,
                unknown_items,
                ..
            } => {
                self.delete(&work, *customer_id, layers, *unknown_items)
                    .await
            }
            Work::Restore {
                customer_id,
                before,
                unknown,
                layers,
                ..
            } => {
                self.restore(&work, *customer_id, before, unknown, layers)
                    .await
            }
            Work::RestoreItem {
                customer_id,
                item_id,
                group_id,
                before,
                layers,
                ..
            } => {
                self.restore_item(&work, *customer_id, *item_id, *group_id, before, layers)
                    .await
            }
        };
        if let Some(r) = self.record {
            if let Err(e) = r.write(&[UndoEntry::Target(ev.clone())]) {
                self.abort.trip(e.to_string());
            }
        }
        Some(ev)
    }

    /// A failed call: `errored` (the next `undo` tries again); one that
    /// stops any run (401, a redirect) stops this one.
    fn errored(&self, work: &Work, what: &str, e: &CallError) -> TargetEvent {
        if let Some(reason) = e.stops_the_run() {
            self.abort.trip(reason);
        }
        let mut ev = work.event(Outcome::Errored);
        ev.message = Some(format!("{what}: {e}"));
        ev
    }

    /// The customer now, in the fields the run wrote, and when it last
    /// changed (`updated_at`, as Thulium gives it): `None` when gone.
    async fn read(
        &self,
        customer_id: i64,
        layers: &[Layer],
    ) -> Result<Option<(Current, Option<String>)>, CallError> {
        let written = Written::of_names(
            layers
                .iter()
                .flat_map(|l| l.fields.iter().map(String::as_str)),
        );
        let call = self.client.get_customer(customer_id, &written).await;
        Ok(call.result?.map(|c| {
            let when = match c.fields.get("updated_at") {
                Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
                _ => None,
            };
            (written.keep(&c), when)
        }))
    }

    /// A customer the run created, deleted when nothing shows a change
    /// since: every field the run wrote still holds its value, it was not
    /// updated after the run ended (`updated_at`, a minute of slack for
    /// the clocks: a later night may have written fields this run did
    /// not), and it holds no field-group item the run did not create.
    async fn delete(
        &self,
        work: &Work,
        customer_id: i64,
        layers: &[Layer],
        unknown_items: usize,
    ) -> TargetEvent {
        let (now, updated_at) = match self.read(customer_id, layers).await {
            Ok(Some(now)) => now,
            Ok(None) => {
                let mut ev = work.event(Outcome::Reversed);
                ev.message = Some("already gone from Thulium".into());
                return ev;
            }
            Err(e) => return self.errored(work, "could not read it", &e),
        };
        let when = last_changed(&updated_at);
        let changed = changed_since(layers, |f| now.get(f));
        if !changed.is_empty() {
            let mut ev = work.event(Outcome::Kept);
            ev.message = Some(format!(
                "changed since the run (by a person or another tool){when}: not deleted"
            ));
            ev.fields = changed;
            return ev;
        }
        if let (Some(end), Some(t)) = (self.ended_at, updated_at.as_deref()) {
            let later = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S")
                .is_ok_and(|at| at > end + chrono::Duration::seconds(CLOCK_SLACK_SECS));
            if later {
                let mut ev = work.event(Outcome::Kept);
                ev.message = Some(format!(
                    "changed after the run (updated_at {t}; the run ended {}): not deleted",
                    end.format("%Y-%m-%d %H:%M:%S")
                ));
                return ev;
            }
        }
        let items = match self.client.find_all_items(customer_id).await.result {
            Ok(items) => items,
            Err(e) => return self.errored(work, "could not list its items", &e),
        };
        let foreign: Vec<i64> = items
            .iter()
            .map(|i| i.item_id)
            .filter(|id| !self.run_items.contains(id))
            .collect();
        if foreign.len() > unknown_items {
            let mut ev = work.event(Outcome::Kept);
            ev.message = Some(format!(
                "holds field-group items the run did not create (item {}): not deleted",
                crate::text::join_ids(&foreign)
            ));
            return ev;
        }
        if self.dry_run {
            let mut ev = work.event(Outcome::Reversed);
            ev.message = Some("would be deleted (with its items, records and history)".into());
            return ev;
        }
        match self.client.delete_customer(customer_id).await.result {
            Ok(deleted) => {
                let mut ev = work.event(Outcome::Reversed);
                ev.message = Some(if deleted {
                    "deleted, with its items, records and history".into()
                } else {
                    "already gone from Thulium".into()
                });
                ev
            }
            Err(e) => self.errored(work, "DELETE failed", &e),
        }
    }

    /// A customer the run deleted, created again from its before-image,
    /// at most once: read under its old id first (a deletion the ledger
    /// does not record may not have been made), then looked up by its
    /// identifier (or e-mail, or phone): found after an earlier `undo`'s
    /// `POST` of unknown outcome, it is that one (reversed); found
    /// otherwise, someone brought it back (kept). Only when none is found
    /// is the intent written, durable, and the `POST` sent.
    async fn recreate(
        &self,
        work: &Work,
        customer_id: i64,
        fields: &Map<String, Value>,
    ) -> TargetEvent {
        const LOST: &str = "its field-group items, campaign records and contact history were deleted with it and are not brought back";
        match self
            .client
            .get_customer(customer_id, &Written::default())
            .await
            .result
        {
            Ok(Some(_)) => {
                let mut ev = work.event(Outcome::Reversed);
                ev.message = Some("still in Thulium under its id (the DELETE was not made): nothing to bring back".into());
                return ev;
            }
            Ok(None) => {}
            Err(e) => return self.errored(work, "could not read it", &e),
        }
        let (customer, skipped) = Customer::recreating(fields);
        let pending = self.pending.contains(&work.key());
        let key = [
            crate::api::keys::SearchKey::Identifier,
            crate::api::keys::SearchKey::Email,
            crate::api::keys::SearchKey::PhoneNumber,
        ]
        .into_iter()
        .find_map(|k| customer.key_values(&k).into_iter().next().map(|v| (k, v)));
        match &key {
            Some((k, value)) => {
                let found = match self.client.find_customer_ids(k, value).await.result {
                    Ok(found) => found,
                    Err(e) => return self.errored(work, "could not look it up", &e),
                };
                let by = k.name();
                match (found.as_slice(), pending) {
                    ([], _) => {}
                    ([one], true) => {
                        let mut ev = work.event(Outcome::Reversed);
                        ev.new_customer_id = Some(*one);
                        ev.message = Some(format!(
                            "back under a NEW id ({one}; found by its {by}: the earlier undo's creation, whose answer was lost); {LOST}"
                        ));
                        return ev;
                    }
                    (many, _) => {
                        let mut ev = work.event(Outcome::Kept);
                        ev.message = Some(format!(
                            "{} with its {by} exist{} again (customer {}){}: not created twice",
                            crate::text::count(many.len() as u64, "customer"),
                            if many.len() == 1 { "s" } else { "" },
                            crate::text::join_ids(many),
                            if pending {
                                ", one of them perhaps the earlier undo's creation"
                            } else {
                                ", brought back by someone since"
                            }
                        ));
                        return ev;
                    }
                }
            }
            None if pending => {
                let mut ev = work.event(Outcome::NotUndoable);
                ev.message = Some("an earlier undo sent its creation without learning the outcome, and it has no identifier, e-mail or phone to look it up by: look for it in Thulium (not created twice)".into());
                return ev;
            }
            None => {}
        }
        let mut unsent = if skipped.is_empty() {
            String::new()
        } else {
            format!("; not sent (read only): {}", skipped.join(", "))
        };
        // `GET customers/:id` shows one e-mail address: whether it had
        // more is not known, and those are not brought back.
        if fields
            .get("email")
            .is_some_and(|e| e.as_str().is_some_and(|e| !e.trim().is_empty()))
        {
            unsent.push_str("; e-mail: the first address only (Thulium's GET shows one)");
        }
        if self.dry_run {
            let mut ev = work.event(Outcome::Reversed);
            ev.message = Some(format!(
                "would be created again from its before-image, under a new id; {LOST}{unsent}"
            ));
            return ev;
        }
        if let Some(r) = self.record {
            let intent = UndoEntry::Intent {
                target: work.key(),
                customer_id,
                at: ledger::now(),
            };
            if let Err(e) = r.write(&[intent]) {
                self.abort.trip(e.to_string());
                let mut ev = work.event(Outcome::Errored);
                ev.message = Some(format!("not sent: {e}"));
                return ev;
            }
        }
        let call = self
            .client
            .send(&CreateCustomers {
                customers: vec![&customer],
            })
            .await;
        let unknown = |why: String| {
            let mut ev = work.event(Outcome::Errored);
            ev.outcome_unknown = true;
            ev.message = Some(format!(
                "{why}: it may have been created; the next undo looks it up before any second POST"
            ));
            ev
        };
        match call.result {
            Ok(fates) => match fates.into_iter().next() {
                Some(RowFate::Done(created)) => {
                    let mut ev = work.event(Outcome::Reversed);
                    ev.new_customer_id = Some(created.customer_id);
                    ev.message = Some(format!(
                        "back under a NEW id ({}), with its fields; {LOST}{unsent}",
                        created.customer_id
                    ));
                    ev
                }
                Some(RowFate::Refused { message, .. }) => {
                    let mut ev = work.event(Outcome::Errored);
                    ev.message = Some(format!("POST refused: {message}"));
                    ev
                }
                Some(
                    RowFate::Retryable { message, .. }
                    | RowFate::Unknown { message }
                    | RowFate::Stopping { message },
                ) => unknown(format!("POST answered: {message}")),
                None => unknown("POST answered nothing for it".into()),
            },
            Err(e) => {
                if let Some(reason) = e.stops_the_run() {
                    self.abort.trip(reason);
                }
                match e {
                    // Sent, and no clear answer: it may exist.
                    CallError::Unknown { .. } => unknown(format!("POST failed: {e}")),
                    // Nothing was applied (refused, never sent, ...).
                    e => self.errored(work, "POST failed", &e),
                }
            }
        }
    }

    async fn restore(
        &self,
        work: &Work,
        customer_id: i64,
        before: &Map<String, Value>,
        unknown: &[String],
        layers: &[Layer],
    ) -> TargetEvent {
        let (now, when) = match self.read(customer_id, layers).await {
            Ok(Some((now, at))) => (now, last_changed(&at)),
            Ok(None) => {
                let mut ev = work.event(Outcome::Kept);
                ev.message =
                    Some("gone from Thulium since the run (deleted): nothing to put back".into());
                return ev;
            }
            Err(e) => return self.errored(work, "could not read it", &e),
        };
        let value = |f: &str| now.get(f).unwrap_or(Value::Null);
        let is_before = |f: &str| {
            before
                .get(f)
                .is_some_and(|b| current::same(f, &value(f), b))
        };
        // Changed since the run and not back to what it was before: a
        // person's edit (a field put back by an earlier `undo` is not).
        let person: Vec<String> = changed_since(layers, |f| now.get(f))
            .into_iter()
            .filter(|f| !is_before(f))
            .collect();
        if !person.is_empty() {
            let mut ev = work.event(Outcome::Kept);
            ev.message = Some(format!(
                "changed since the run (by a person or another tool){when}: left as it is"
            ));
            ev.fields = person;
            return ev;
        }
        let back: Map<String, Value> = before
            .iter()
            .filter(|(f, _)| !is_before(f))
            .map(|(f, v)| (f.clone(), v.clone()))
            .collect();
        let (fields, left) = Customer::restoring(&back);
        let mut not_back: Vec<String> = unknown.iter().chain(&left).cloned().collect();
        not_back.sort();
        // Fields that cannot be put back make the target not (wholly)
        // undoable: said with their names, never counted as reversed.
        let mut ev = work.event(if not_back.is_empty() {
            Outcome::Reversed
        } else {
            Outcome::NotUndoable
        });
        ev.fields = not_back.clone();
        let unsaid = if not_back.is_empty() {
            String::new()
        } else {
            format!(
                "; not put back (its value before the run is not known, or cannot be sent): {}",
                not_back.join(", ")
            )
        };
        if back.len() == left.len() {
            ev.message = Some(format!("already as before the run{unsaid}"));
            return ev;
        }
        if self.dry_run {
            ev.message = Some(format!(
                "{} field(s) would be put back{unsaid}",
                back.len() - left.len()
            ));
            return ev;
        }
        let update = CustomerUpdate {
            customer_id,
            fields,
        };
        let call = self
            .client
            .send(&UpdateCustomers {
                customers: vec![&update],
            })
            .await;
        let fate = match &call.result {
            Ok(f) => f.first().cloned().unwrap_or(RowFate::Done(())),
            Err(e) => return self.errored(work, "PUT failed", e),
        };
        match fate {
            RowFate::Done(()) => {
                ev.message = Some(format!(
                    "{} field(s) put back{unsaid}",
                    back.len() - left.len()
                ));
                ev
            }
            RowFate::Refused { message, .. }
            | RowFate::Retryable { message, .. }
            | RowFate::Unknown { message }
            | RowFate::Stopping { message } => {
                let mut ev = work.event(Outcome::Errored);
                ev.message = Some(format!("PUT refused: {message}"));
                ev
            }
        }
    }

    async fn restore_item(
        &self,
        work: &Work,
        customer_id: i64,
        item_id: i64,
        group_id: i64,
        before: &[ItemField],
        layers: &[Layer],
    ) -> TargetEvent {
        let call = self.client.find_items(customer_id, group_id).await;
        let found = match call.result {
            Ok(found) => found,
            Err(e) => return self.errored(work, "could not list the customer's items", &e),
        };
        let Some(item) = found.into_iter().find(|i| i.item_id == item_id) else {
            let mut ev = work.event(Outcome::Kept);
            ev.message =
                Some("gone from Thulium since the run (deleted): nothing to put back".into());
            return ev;
        };
        let value = |field: &str| -> Option<Value> {
            let id: i64 = field.strip_prefix("field_id.")?.parse().ok()?;
            Some(
                item.values
                    .iter()
                    .find(|(f, _)| *f == id)
                    .map_or(Value::Null, |(_, v)| v.clone()),
            )
        };
        let is_before = |f: &ItemField| {
            current::same(
                "",
                &value(&images::item_field(f.field_id)).unwrap_or(Value::Null),
                &f.value,
            )
        };
        let person: Vec<String> = changed_since(layers, value)
            .into_iter()
            .filter(|name| {
                !before
                    .iter()
                    .any(|b| images::item_field(b.field_id) == *name && is_before(b))
            })
            .collect();
        if !person.is_empty() {
            let mut ev = work.event(Outcome::Kept);
            ev.message =
                Some("changed since the run (by a person or another tool): left as it is".into());
            ev.fields = person;
            return ev;
        }
        let back: Vec<ItemValue> = before
            .iter()
            .filter(|f| !is_before(f))
            .map(|f| ItemValue {
                field_id: f.field_id,
                value: match &f.value {
                    Value::Null => Scalar::Text(String::new()),
                    v => Scalar::from_value(v.clone()),
                },
            })
            .collect();
        let mut ev = work.event(Outcome::Reversed);
        if back.is_empty() {
            ev.message = Some("already as before the run".into());
            return ev;
        }
        if self.dry_run {
            ev.message = Some(format!("{} value(s) would be put back", back.len()));
            return ev;
        }
        let call = self
            .client
            .send(&UpdateItem {
                item_id,
                values: &back,
            })
            .await;
        match call.result {
            Ok(RowFate::Done(())) => {
                ev.message = Some(format!("{} value(s) put back", back.len()));
                ev
            }
            Ok(_) => {
                let mut ev = work.event(Outcome::Errored);
                ev.message = Some("PUT refused".into());
                ev
            }
            Err(e) => self.errored(work, "PUT failed", &e),
        }
    }
}

/// How much later than the run's end a customer's `updated_at` must be to
/// count as changed after it: the two clocks (Thulium's, this machine's)
/// are not the same one.
const CLOCK_SLACK_SECS: i64 = 60;

/// ` (last changed <updated_at>)`, for the message of a target kept.
fn last_changed(updated_at: &Option<String>) -> String {
    updated_at
        .as_deref()
        .map(|t| format!(" (last changed {t})"))
        .unwrap_or_default()
}

/// The fields whose value now (`value`: `None` when the answer lacks the
/// field, taken as empty) is not what the run last wrote, by each field's
/// last layer.
fn changed_since(layers: &[Layer], value: impl Fn(&str) -> Option<Value>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let later = &layers[i + 1..];
        let mine: Vec<(String, Value)> = layer
            .fields
            .iter()
            .filter(|f| !later.iter().any(|l| l.fields.contains(f)))
            .map(|f| (f.clone(), value(f).unwrap_or(Value::Null)))
            .collect();
        out.extend(images::differing(&layer.sent, &mine));
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_field_is_put_back_as_the_first_image_mentioning_it_has_it() {
        let layer = || Layer {
            fields: Vec::new(),
            sent: String::new(),
        };
        let obj = |v: Value| v.as_object().unwrap().clone();
        // The first update did not know `name`; the second, read after the
        // run's own update, knows it (the run's value) and `surname` too.
        let list = vec![
            (
                obj(json!({"surname": "Old"})),
                vec!["name".to_string()],
                layer(),
            ),
            (
                obj(json!({"surname": "Run's", "name": "Run's", "email": "old@x.pl"})),
                vec![],
                layer(),
            ),
        ];
        let (before, unknown) = first_mention(&list);
        assert_eq!(
            Value::Object(before),
            json!({"surname": "Old", "email": "old@x.pl"})
        );
        assert_eq!(unknown, ["name"]);
    }

    #[test]
    fn a_field_is_judged_by_the_last_layer_that_wrote_it() {
        let created = [
            ("surname".to_string(), json!("A")),
            ("name".to_string(), json!("Jan")),
        ];
        let updated = [("surname".to_string(), json!("B"))];
        let layers = vec![
            Layer {
                fields: vec!["surname".into(), "name".into()],
                sent: images::signature(&created),
            },
            Layer {
                fields: vec!["surname".into()],
                sent: images::signature(&updated),
            },
        ];
        let now = |s: &'static str, n: &'static str| {
            move |f: &str| match f {
                "surname" => Some(json!(s)),
                "name" => Some(json!(n)),
                _ => None,
            }
        };
        assert!(changed_since(&layers, now("B", "Jan")).is_empty());
        assert_eq!(changed_since(&layers, now("A", "Jan")), ["surname"]);
        assert_eq!(changed_since(&layers, now("B", "Janek")), ["name"]);
    }
}
