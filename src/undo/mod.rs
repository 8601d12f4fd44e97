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
mod targets;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{Map, Value};

use crate::api::customers::{CreateCustomers, UpdateCustomers};
use crate::api::field_groups::UpdateItem;
use crate::api::keys::SearchKey;
use crate::api::payload::{Customer, CustomerUpdate, ItemValue, Scalar};
use crate::api::{ApiClient, CallError, RowFate};
use crate::current::{self, Current, Written};
use crate::ledger::{self, LedgerLock};
use crate::outcomes::Outcomes;
use crate::pipeline::Abort;
use images::{Image, ItemField, SeenKeys};
use record::{Outcome, Record, Summary, TargetEvent, UndoEntry};
use targets::{Layer, Planned, Work};

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

/// Takes back the run of `opts.ledger` (locked for the whole time, as
/// `run` and `retry` lock it), through `client`; `root` names the system
/// (the sync state checks it is its own).
pub async fn undo(opts: &Options, client: Arc<ApiClient>, root: &str) -> anyhow::Result<Undone> {
    let _lock = LedgerLock::acquire(&opts.ledger, "undo")?;
    let outcomes = Outcomes::read(&opts.ledger)?;
    let started_at = outcomes.header.started_at.clone();
    let undo_file = UndoFile::read(&opts.ledger, &started_at)?;
    let mut notes = undo_file.notes();
    let Planned {
        work,
        ended_at,
        run_items,
    } = targets::plan(&opts.ledger, &outcomes, &undo_file.images)?;
    let record_path = record::path_for(&opts.ledger);
    let before = earlier_undos(&record_path, &started_at)?;
    let seen_of = seen_of(&work);
    let pending = pending(&work, before.as_ref());
    let (done_before, todo) = set_settled_aside(work, before.as_ref());
    let record = if opts.dry_run {
        None
    } else {
        Some(Record::open(&opts.ledger, &started_at)?)
    };
    let ctx = Ctx {
        client,
        dry_run: opts.dry_run,
        abort: Arc::new(Abort::default()),
        record: record.as_ref(),
        pending,
        ended_at: local_time(ended_at),
        run_items,
    };
    let events = ctx.take_back_all(todo, opts.concurrency).await;
    let mut aborted = ctx.abort.reason();
    let summary = match &record {
        Some(r) => close(r, &record_path, &mut aborted)?,
        None => dry_summary(before.as_ref(), &events, aborted.is_none()),
    };
    if !opts.dry_run {
        let sha = &outcomes.header.source_sha256;
        let fresh = fresh(&events);
        for state in states_to_tell(opts.state.as_deref(), undo_file.states) {
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

/// The run's undo file (`<LEDGER>.undo.jsonl`), read.
struct UndoFile {
    images: Vec<Image>,
    /// The sync states the run used (as it opened the file).
    states: Vec<String>,
    /// Lines that could not be read.
    unreadable: usize,
}

impl UndoFile {
    /// Reads the undo file beside `ledger`, refusing when there is none
    /// (nothing says what the run overwrote) or when it belongs to another
    /// ledger (not opened by the one started at `started_at`).
    fn read(ledger: &Path, started_at: &str) -> anyhow::Result<UndoFile> {
        let path = images::path_for(ledger);
        if !path.exists() {
            anyhow::bail!(
                "{}: no undo file beside the ledger (the run was made with --no-undo, or by a version without undo): nothing says what the run overwrote, so nothing is taken back",
                path.display()
            );
        }
        let (images, unreadable) = images::read(&path)?;
        let opened_by_us = |i: &&Image| matches!(i, Image::Opened { ledger_started_at, .. } if ledger_started_at == started_at);
        if !images.iter().any(|i| opened_by_us(&i)) {
            anyhow::bail!(
                "{}: the undo file belongs to another ledger (one started at another time at this path)",
                path.display()
            );
        }
        let states = images
            .iter()
            .filter(opened_by_us)
            .filter_map(|i| match i {
                Image::Opened { state, .. } => state.clone(),
                _ => None,
            })
            .collect();
        Ok(UndoFile {
            images,
            states,
            unreadable,
        })
    }

    /// What the summary says about the file itself.
    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.unreadable > 0 {
            notes.push(format!(
                "{} line(s) of the undo file could not be read (a crash mid-write leaves one): their targets are judged without them",
                self.unreadable
            ));
        }
        notes
    }
}

/// When the run ended (the ledger's `finished_at`), on this machine's
/// local clock: `updated_at` is the system's local time, read as this
/// machine's.
fn local_time(ended_at: Option<String>) -> Option<chrono::NaiveDateTime> {
    ended_at
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&chrono::Local).naive_local())
}

/// What earlier `undo`s of this run (the ledger started at `started_at`)
/// recorded, if any.
fn earlier_undos(record_path: &Path, started_at: &str) -> anyhow::Result<Option<Summary>> {
    Ok(record::read(record_path)?
        .filter(|(s, _)| *s == started_at)
        .map(|(_, s)| s))
}

/// Where a target's customer is to be found in the state's `seen`
/// (customers gone from the file), by target.
fn seen_of(work: &[Work]) -> HashMap<String, SeenKeys> {
    work.iter()
        .filter_map(|w| match w {
            Work::Recreate {
                seen: Some(seen), ..
            }
            | Work::Restore {
                seen: Some(seen), ..
            } => Some((w.key(), seen.clone())),
            _ => None,
        })
        .collect()
}

/// The targets whose `POST` an earlier `undo` sent without learning its
/// outcome.
fn pending(work: &[Work], before: Option<&Summary>) -> HashSet<String> {
    work.iter()
        .map(Work::key)
        .filter(|k| before.is_some_and(|s| s.is_pending(k)))
        .collect()
}

/// The targets an earlier `undo` settled (left as they are), and the ones
/// still to do.
fn set_settled_aside(work: Vec<Work>, before: Option<&Summary>) -> (Vec<Work>, Vec<Work>) {
    work.into_iter().partition(|w| {
        before
            .and_then(|s| s.outcome_of(&w.key()))
            .is_some_and(Outcome::settled)
    })
}

/// Ends the undo ledger (a failed write says why the undo stopped, if
/// nothing else did) and reads it back whole, folded.
fn close(
    record: &Record,
    record_path: &Path,
    aborted: &mut Option<String>,
) -> anyhow::Result<Summary> {
    if let Err(e) = record.write(&[UndoEntry::End {
        finished_at: ledger::now(),
        aborted: aborted.clone(),
    }]) {
        aborted.get_or_insert_with(|| e.to_string());
    }
    Ok(record::read(record_path)?
        .map(|(_, s)| s)
        .unwrap_or_default())
}

/// With `--dry-run`: the undo ledger folded with this undo's outcomes as
/// if recorded.
fn dry_summary(before: Option<&Summary>, events: &[TargetEvent], finished: bool) -> Summary {
    Summary::of(
        before
            .iter()
            .flat_map(|s| s.targets().iter().cloned())
            .chain(events.iter().cloned()),
        finished,
    )
}

/// The targets this undo took back: the state note is for a change made
/// now, not one an earlier undo made (said then).
fn fresh(events: &[TargetEvent]) -> HashSet<String> {
    events
        .iter()
        .filter(|e| e.outcome == Some(Outcome::Reversed))
        .map(TargetEvent::key)
        .collect()
}

/// The sync states to tell: the one asked for, or those the run used
/// (each once).
fn states_to_tell(asked: Option<&Path>, used: Vec<String>) -> Vec<String> {
    match asked {
        Some(p) => vec![p.display().to_string()],
        None => {
            let mut s = used;
            s.sort();
            s.dedup();
            s
        }
    }
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
    /// Every target of `todo` taken back, `concurrency` at a time, until
    /// done or stopped (a signal, a wrong password): the targets in hand
    /// are finished and recorded.
    async fn take_back_all(&self, todo: Vec<Work>, concurrency: usize) -> Vec<TargetEvent> {
        let stopper = crate::signals::install();
        {
            let abort = self.abort.clone();
            stopper.while_running(move |name| {
                abort.trip(format!(
                    "interrupted ({name}): targets in hand were finished and recorded"
                ));
            });
        }
        let events = futures::stream::iter(todo)
            .map(|w| self.take_back(w))
            .buffer_unordered(concurrency.max(1))
            .filter_map(|e| async move { e })
            .collect()
            .await;
        stopper.done();
        stopper.stops_by_itself();
        events
    }

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
        // A failed write has stopped the undo; the outcome is still said.
        let _ = self.write_down(UndoEntry::Target(ev.clone()));
        Some(ev)
    }

    /// Writes `entry` to the undo ledger (none with `--dry-run`); one that
    /// cannot be written stops the undo: what is not recorded could be
    /// taken back twice.
    fn write_down(&self, entry: UndoEntry) -> Result<(), record::RecordError> {
        let Some(r) = self.record else {
            return Ok(());
        };
        r.write(&[entry])
            .inspect_err(|e| self.abort.trip(e.to_string()))
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
        if let Some(ev) = self.still_there(work, customer_id).await {
            return ev;
        }
        let (customer, skipped) = Customer::recreating(fields);
        let pending = self.pending.contains(&work.key());
        if let Some(ev) = self.found_again(work, &customer, pending).await {
            return ev;
        }
        let unsent = unsent(&skipped, fields);
        if self.dry_run {
            let mut ev = work.event(Outcome::Reversed);
            ev.message = Some(format!(
                "would be created again from its before-image, under a new id; {LOST}{unsent}"
            ));
            return ev;
        }
        if let Some(ev) = self.intend(work, customer_id) {
            return ev;
        }
        self.create_again(work, &customer, &unsent).await
    }

    /// A customer to create again that is still in Thulium under its old id
    /// (the `DELETE` was not made): reversed, nothing to bring back. `None`
    /// when it is gone.
    async fn still_there(&self, work: &Work, customer_id: i64) -> Option<TargetEvent> {
        match self
            .client
            .get_customer(customer_id, &Written::default())
            .await
            .result
        {
            Ok(Some(_)) => {
                let mut ev = work.event(Outcome::Reversed);
                ev.message = Some("still in Thulium under its id (the DELETE was not made): nothing to bring back".into());
                Some(ev)
            }
            Ok(None) => None,
            Err(e) => Some(self.errored(work, "could not read it", &e)),
        }
    }

    /// A customer to create again looked up by its identifier (or e-mail,
    /// or phone), so that it is never created twice: one found is the
    /// earlier `undo`'s `POST` of unknown outcome (`pending`: reversed) or
    /// someone else's (kept); one with nothing to look it up by whose
    /// `POST` is pending is not undoable. `None`: none found, create it.
    async fn found_again(
        &self,
        work: &Work,
        customer: &Customer,
        pending: bool,
    ) -> Option<TargetEvent> {
        let key = [
            SearchKey::Identifier,
            SearchKey::Email,
            SearchKey::PhoneNumber,
        ]
        .into_iter()
        .find_map(|k| customer.key_values(&k).into_iter().next().map(|v| (k, v)));
        let Some((k, value)) = key else {
            return pending.then(|| {
                let mut ev = work.event(Outcome::NotUndoable);
                ev.message = Some("an earlier undo sent its creation without learning the outcome, and it has no identifier, e-mail or phone to look it up by: look for it in Thulium (not created twice)".into());
                ev
            });
        };
        let found = match self.client.find_customer_ids(&k, &value).await.result {
            Ok(found) => found,
            Err(e) => return Some(self.errored(work, "could not look it up", &e)),
        };
        let by = k.name();
        match (found.as_slice(), pending) {
            ([], _) => None,
            ([one], true) => {
                let mut ev = work.event(Outcome::Reversed);
                ev.new_customer_id = Some(*one);
                ev.message = Some(format!(
                    "back under a NEW id ({one}; found by its {by}: the earlier undo's creation, whose answer was lost); {LOST}"
                ));
                Some(ev)
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
                Some(ev)
            }
        }
    }

    /// The intent to create `customer_id` again, written (durable) to the
    /// undo ledger before its `POST`, which is not idempotent: the next
    /// `undo` looks it up before any second one. `Some`: not written, not
    /// sent (and the undo stops).
    fn intend(&self, work: &Work, customer_id: i64) -> Option<TargetEvent> {
        let intent = UndoEntry::Intent {
            target: work.key(),
            customer_id,
            at: ledger::now(),
        };
        let e = self.write_down(intent).err()?;
        let mut ev = work.event(Outcome::Errored);
        ev.message = Some(format!("not sent: {e}"));
        Some(ev)
    }

    /// The `POST` that creates a customer again (under a new id), judged:
    /// reversed, refused (errored), or of unknown outcome (errored, looked
    /// up by the next `undo`).
    async fn create_again(&self, work: &Work, customer: &Customer, unsent: &str) -> TargetEvent {
        let call = self
            .client
            .send(&CreateCustomers {
                customers: vec![customer],
            })
            .await;
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
                ) => maybe_created(work, format!("POST answered: {message}")),
                None => maybe_created(work, "POST answered nothing for it".into()),
            },
            Err(e) => {
                if let Some(reason) = e.stops_the_run() {
                    self.abort.trip(reason);
                }
                match e {
                    // Sent, and no clear answer: it may exist.
                    CallError::Unknown { .. } => maybe_created(work, format!("POST failed: {e}")),
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

/// What a customer created again has lost, for its message.
const LOST: &str = "its field-group items, campaign records and contact history were deleted with it and are not brought back";

/// What of a customer created again was not sent, for its message: the
/// read-only fields `skipped`, and every e-mail address but the first.
fn unsent(skipped: &[String], fields: &Map<String, Value>) -> String {
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
    unsent
}

/// A `POST` that may have created the customer (sent, no clear answer):
/// errored, of unknown outcome; the next `undo` looks it up first.
fn maybe_created(work: &Work, why: String) -> TargetEvent {
    let mut ev = work.event(Outcome::Errored);
    ev.outcome_unknown = true;
    ev.message = Some(format!(
        "{why}: it may have been created; the next undo looks it up before any second POST"
    ));
    ev
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
