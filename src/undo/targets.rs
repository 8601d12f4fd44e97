//! What `undo` takes back: a run's targets, gathered from its ledger (what
//! was done, with ids) and its undo file (values before, signatures of what
//! was sent), one step per kind of target.
//!
//! ```text
//! ledger ─▶ LedgerFacts (ids, gone customers, end) ─┐
//! fold   ─▶ Customers (created, adopted, updated) ──┼▶ creations of unknown outcome (not undoable)
//! undo file ─▶ BeforeImages ────────────────────────┘   customers deleted by the run (created again)
//!                                                       customers marked gone (field put back)
//!                                                       customers adopted (deleted, put back or left)
//!                                                       customers created (deleted)
//!                                                       customers updated (values put back)
//!                                                       what hangs on them (items; the rest listed)
//! ```

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::Context;
use serde_json::{Map, Value};

use super::images::{self, Image, ItemField, SeenKeys};
use super::record::{Kind, Outcome, TargetEvent};
use crate::ledger::{self, Action, Entry, GoneEvent, Stage, Status};
use crate::outcomes::Outcomes;

/// What the run wrote to a customer or an item, in layers (a creation,
/// then updates): a field is judged by the last layer that wrote it.
#[derive(Debug, Clone)]
pub(super) struct Layer {
    pub(super) fields: Vec<String>,
    pub(super) sent: String,
}

/// One thing to take back.
#[derive(Debug, Clone)]
pub(super) enum Work {
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
    /// The target's key in the undo ledger.
    pub(super) fn key(&self) -> String {
        self.event(Outcome::Reversed).key()
    }

    /// The target's event with `outcome`, ids and rows filled in.
    pub(super) fn event(&self, outcome: Outcome) -> TargetEvent {
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

/// A target the API cannot take back, with why; the caller adds its ids
/// and rows.
fn cannot(target: Kind, why: &str) -> TargetEvent {
    TargetEvent {
        target: Some(target),
        outcome: Some(Outcome::NotUndoable),
        message: Some(why.to_string()),
        ..TargetEvent::default()
    }
}

/// A customer the API cannot take back (`why`), of `row`.
fn cannot_customer(customer_id: i64, row: u64, why: &str) -> Work {
    Work::Cannot(TargetEvent {
        customer_id: Some(customer_id),
        rows: vec![row],
        ..cannot(Kind::Customer, why)
    })
}

/// The targets of a run, and what `delete` checks a customer against.
pub(super) struct Planned {
    pub(super) work: Vec<Work>,
    /// When the ledger's last attempt ended (`finished_at`; none when it
    /// did not end: a crash).
    pub(super) ended_at: Option<String>,
    /// Every field-group item the run created or updated.
    pub(super) run_items: HashSet<i64>,
}

/// The targets of a run, in the order they are taken back: from the
/// ledger (what was done, with ids) and the undo file (values before,
/// signatures of what was sent). Refuses while customer creations of
/// unknown outcome wait for `retry` to look them up.
pub(super) fn plan(
    ledger_path: &Path,
    outcomes: &Outcomes,
    all: &[Image],
) -> anyhow::Result<Planned> {
    let facts = LedgerFacts::read(ledger_path)?;
    let mut customers = Customers::of(outcomes, &facts);
    refuse_unresolved(&customers.unresolved, ledger_path)?;
    let images = BeforeImages::gather(all);
    let mut work = std::mem::take(&mut customers.not_looked_up);
    work.extend(deleted_customers(&facts, images.deleted));
    work.extend(marked_customers(&facts, images.marked));
    work.extend(customers.adopt(&images.created, &images.updates));
    work.extend(created_customers(
        outcomes,
        &facts.seen,
        &customers.created,
        &images.created,
        &images.updates,
    ));
    work.extend(updated_customers(
        customers.updated,
        &customers.created,
        &images.updates,
    ));
    work.extend(dependents(
        outcomes,
        &facts.seen,
        &customers.created,
        &images.items,
    ));
    Ok(Planned {
        work,
        run_items: facts.run_items(),
        ended_at: facts.ended_at,
    })
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

/// What the ledger says that the fold does not keep: ids and actions of ok
/// events, whether a `retry` looked at a customer of unknown outcome since,
/// the customers gone from the file, and when the last attempt ended.
#[derive(Default)]
struct LedgerFacts {
    seen: HashMap<(u64, Stage, usize), Seen>,
    /// The ledger line at which each row's customer last became of
    /// unknown outcome (an error, or an intent).
    unknown_at: HashMap<u64, u64>,
    /// The ledger line of the last attempt's start.
    last_attempt: u64,
    /// The customers gone from the file the run deleted (ok).
    deleted: HashSet<i64>,
    /// The customers gone from the file found gone from Thulium already:
    /// the run deleted nothing.
    already_gone: HashSet<i64>,
    /// The customers gone from the file the run marked (ok).
    marked: HashSet<i64>,
    /// The customers gone from the file whose mark was refused.
    not_marked: HashSet<i64>,
    /// When the last attempt on the ledger ended (none: it did not).
    ended_at: Option<String>,
}

impl LedgerFacts {
    /// Reads the ledger at `path` line by line.
    fn read(path: &Path) -> anyhow::Result<LedgerFacts> {
        let mut facts = LedgerFacts::default();
        let mut seq = 0u64;
        ledger::read(path, |e| {
            seq += 1;
            facts.note(e, seq);
        })
        .with_context(|| format!("{}: cannot read the ledger", path.display()))?;
        Ok(facts)
    }

    /// Takes in the ledger's entry at line `seq`.
    fn note(&mut self, e: Entry, seq: u64) {
        match e {
            Entry::Row(ev) => {
                let Some(stage) = ev.stage else { return };
                if stage == Stage::Customer && ev.status == Some(Status::Unknown) {
                    self.unknown_at.insert(ev.row, seq);
                }
                if ev.status == Some(Status::Ok) {
                    self.seen.insert(
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
                    self.unknown_at.insert(row, seq);
                }
            }
            Entry::Attempt(_) => {
                self.last_attempt = seq;
                self.ended_at = None;
            }
            Entry::End(end) => self.ended_at = Some(end.finished_at),
            Entry::Gone(g) => self.note_gone(&g),
            _ => {}
        }
    }

    /// Takes in what became of a customer gone from the file. A deletion
    /// or a mark not recorded ok (unknown, failed, or no line at all: a
    /// kill between image and record) is judged from its image, by reading
    /// the customer first.
    fn note_gone(&mut self, g: &GoneEvent) {
        match (g.status, g.action) {
            // Found gone from Thulium already: the run deleted nothing.
            (Some(Status::Ok), Some(Action::Deleted))
                if g.message
                    .as_deref()
                    .is_some_and(|m| m.contains("already gone from Thulium")) =>
            {
                self.already_gone.insert(g.customer_id);
            }
            (Some(Status::Ok), Some(Action::Deleted)) => {
                self.deleted.insert(g.customer_id);
            }
            (Some(Status::Ok), Some(Action::Marked)) => {
                self.marked.insert(g.customer_id);
            }
            // A PUT refused: the mark was not made.
            (Some(Status::Failed), Some(Action::Marked)) => {
                self.not_marked.insert(g.customer_id);
            }
            _ => {}
        }
    }

    /// Whether `row`'s customer is of unknown outcome and no `retry` has
    /// looked it up since.
    fn waits_for_retry(&self, row: u64) -> bool {
        self.unknown_at.get(&row).copied().unwrap_or(0) > self.last_attempt
    }

    /// Every field-group item the run created or updated.
    fn run_items(&self) -> HashSet<i64> {
        self.seen
            .iter()
            .filter(|((_, stage, _), _)| *stage == Stage::FieldGroup)
            .filter_map(|(_, s)| s.item_id)
            .collect()
    }
}

/// The run's customers, from the fold.
#[derive(Default)]
struct Customers {
    /// Created (and, once judged, adopted ones the run's own): id → row.
    created: HashMap<i64, u64>,
    /// Adopted (found by its keys after a creation of unknown outcome):
    /// id → row.
    adopted: HashMap<i64, u64>,
    /// Updated: id → rows.
    updated: HashMap<i64, Vec<u64>>,
    /// Rows whose creation is of unknown outcome, not yet looked up.
    unresolved: Vec<u64>,
    /// Creations of unknown outcome `retry` could not look up.
    not_looked_up: Vec<Work>,
}

impl Customers {
    /// Each row's customer stage, sorted by what became of it.
    fn of(outcomes: &Outcomes, facts: &LedgerFacts) -> Customers {
        let mut customers = Customers::default();
        for row in 1..=outcomes.max_row() {
            let Some(view) = outcomes.row(row) else {
                continue;
            };
            match view.stage(Stage::Customer, 0).map(|o| o.status) {
                Some(Status::Ok) => match (view.action(), view.customer_id()) {
                    (Some(Action::Created), Some(c)) => {
                        customers.created.insert(c, row);
                    }
                    (Some(Action::Adopted), Some(c)) => {
                        customers.adopted.insert(c, row);
                    }
                    (Some(Action::Updated), Some(c)) => {
                        customers.updated.entry(c).or_default().push(row);
                    }
                    _ => {}
                },
                Some(Status::Unknown) if facts.waits_for_retry(row) => {
                    customers.unresolved.push(row);
                }
                Some(Status::Unknown) => customers.not_looked_up.push(Work::Cannot(TargetEvent {
                    rows: vec![row],
                    ..cannot(Kind::Customer, "its creation's outcome is unknown and `retry` could not look it up (no identifier): look for it in Thulium")
                })),
                _ => {}
            }
        }
        customers
    }

    /// Each customer adopted (found by its keys after a creation of
    /// unknown outcome) may have been there before the run: taken as
    /// created (deleted) only when the images show it is the run's own
    /// POST's (its creation signed before the POST, and no update since
    /// found other values in it). One whose update overwrote values gets
    /// them back instead, as an update's; the rest are left as they are.
    fn adopt(
        &mut self,
        created: &HashMap<u64, Layer>,
        updates: &HashMap<i64, Vec<Overwritten>>,
    ) -> Vec<Work> {
        let mut adopted_ids: Vec<(i64, u64)> = self.adopted.drain().collect();
        adopted_ids.sort_unstable_by_key(|(_, r)| *r);
        let mut work = Vec::new();
        for (customer_id, row) in adopted_ids {
            let list = updates.get(&customer_id).map_or(&[][..], Vec::as_slice);
            if list.iter().any(|(b, _, _)| !b.is_empty()) {
                self.updated.entry(customer_id).or_default().push(row);
            } else if !created.contains_key(&row) {
                work.push(cannot_customer(customer_id, row, "adopted (found by its keys after a creation of unknown outcome) without a before-image: nothing shows it is the run's own creation rather than a customer that was there before; left as it is"));
            } else if list.iter().any(|(_, u, _)| !u.is_empty()) {
                work.push(cannot_customer(customer_id, row, "adopted (found by its keys after a creation of unknown outcome) and updated without its values before being known: it may be a customer that was there before the run; left as it is"));
            } else {
                self.created.insert(customer_id, row);
            }
        }
        work
    }
}

/// Refuses to go on while customer creations of unknown outcome (`rows`)
/// may exist: undo would miss them; `retry` looks them up.
fn refuse_unresolved(rows: &[u64], ledger_path: &Path) -> anyhow::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{} customer creation(s) have an unknown outcome (rows {}): they may exist, and undo would miss them. Run `thulium-import retry {}` first: it looks them up and records what became of them; then run undo again",
        rows.len(),
        crate::text::join_ids(&rows.iter().map(|r| *r as i64).collect::<Vec<_>>()),
        ledger_path.display()
    )
}

/// One update's image: the values before, the fields of unknown value,
/// and what was sent.
pub(super) type Overwritten = (Map<String, Value>, Vec<String>, Layer);

/// One item's image: its field group, its values before, what was sent.
type ItemImage = (i64, Vec<ItemField>, Layer);

/// The undo file's images, by what they describe (in file order).
#[derive(Default)]
struct BeforeImages {
    /// Customers created, by row.
    created: HashMap<u64, Layer>,
    /// Customers updated, by id.
    updates: HashMap<i64, Vec<Overwritten>>,
    /// Items updated, by item id.
    items: HashMap<i64, Vec<ItemImage>>,
    /// Customers deleted (gone from the file): every field, and their
    /// record in the state's `seen`.
    deleted: HashMap<i64, (Map<String, Value>, Option<SeenKeys>)>,
    /// Customers marked gone: the field's value before.
    marked: HashMap<i64, (Overwritten, Option<SeenKeys>)>,
}

impl BeforeImages {
    /// Every image of the undo file, in file order.
    fn gather(all: &[Image]) -> BeforeImages {
        let mut images = BeforeImages::default();
        for image in all {
            images.note(image);
        }
        images
    }

    /// Takes in one image.
    fn note(&mut self, image: &Image) {
        match image {
            Image::Created { row, fields, sent } => {
                self.created.insert(
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
                self.updates.entry(*customer_id).or_default().push((
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
                self.items.entry(*item_id).or_default().push((
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
                self.deleted
                    .insert(*customer_id, (fields.clone(), seen.clone()));
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
                self.marked.entry(*customer_id).or_insert((
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
}

/// The customers gone from the file the run deleted, created again from
/// their before-images (those whose deletion is not in the ledger too, a
/// kill between the image and the record: read first, they may still be
/// there).
fn deleted_customers(
    facts: &LedgerFacts,
    images: HashMap<i64, (Map<String, Value>, Option<SeenKeys>)>,
) -> Vec<Work> {
    let ids: Vec<i64> = images
        .keys()
        .copied()
        .filter(|id| facts.deleted.contains(id) || !facts.already_gone.contains(id))
        .chain(facts.deleted.iter().copied())
        .collect();
    by_id(
        ids,
        images,
        "deleted by the run without a before-image (--no-undo): its fields are not known",
        |customer_id, (fields, seen)| Work::Recreate {
            customer_id,
            fields,
            seen,
        },
    )
}

/// The customers the run marked gone, given their field's value back
/// (those whose mark is not in the ledger too, unless it was refused).
fn marked_customers(
    facts: &LedgerFacts,
    images: HashMap<i64, (Overwritten, Option<SeenKeys>)>,
) -> Vec<Work> {
    let ids: Vec<i64> = images
        .keys()
        .copied()
        .filter(|id| facts.marked.contains(id) || !facts.not_marked.contains(id))
        .chain(facts.marked.iter().copied())
        .collect();
    by_id(
        ids,
        images,
        "marked gone by the run without a before-image (--no-undo): the field's value before is not known",
        |customer_id, ((before, unknown, layer), seen)| Work::Restore {
            customer_id,
            rows: Vec::new(),
            before,
            unknown,
            layers: vec![layer],
            seen,
        },
    )
}

/// Customers gone from the file, by id (each once): each one's work from
/// its before-image, or, without one, not undoable (`why`).
fn by_id<T>(
    mut ids: Vec<i64>,
    mut images: HashMap<i64, T>,
    why: &str,
    work: impl Fn(i64, T) -> Work,
) -> Vec<Work> {
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .map(|customer_id| match images.remove(&customer_id) {
            Some(image) => work(customer_id, image),
            None => Work::Cannot(TargetEvent {
                customer_id: Some(customer_id),
                ..cannot(Kind::Customer, why)
            }),
        })
        .collect()
}

/// The customers the run created, deleted if nobody changed them since:
/// judged by their creation and every update the run made after it.
fn created_customers(
    outcomes: &Outcomes,
    seen: &HashMap<(u64, Stage, usize), Seen>,
    created: &HashMap<i64, u64>,
    images: &HashMap<u64, Layer>,
    updates: &HashMap<i64, Vec<Overwritten>>,
) -> Vec<Work> {
    let mut created_ids: Vec<(i64, u64)> = created.iter().map(|(c, r)| (*c, *r)).collect();
    created_ids.sort_unstable_by_key(|(_, r)| *r);
    created_ids
        .into_iter()
        .map(|(customer_id, row)| {
            let Some(first) = images.get(&row) else {
                return cannot_customer(customer_id, row, "created without a before-image (--no-undo): nothing proves nobody changed it since; delete it by hand if it is not wanted");
            };
            let mut layers = vec![first.clone()];
            layers.extend(
                updates
                    .get(&customer_id)
                    .into_iter()
                    .flatten()
                    .map(|(_, _, l)| l.clone()),
            );
            Work::Delete {
                customer_id,
                rows: vec![row],
                layers,
                unknown_items: unknown_items(outcomes, seen, row),
            }
        })
        .collect()
}

/// Items of `row` with no id in the ledger: of unknown outcome, or
/// created and answered without an id.
fn unknown_items(
    outcomes: &Outcomes,
    seen: &HashMap<(u64, Stage, usize), Seen>,
    row: u64,
) -> usize {
    outcomes.row(row).map_or(0, |view| {
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
    })
}

/// The customers the run updated (and did not create), given their values
/// before back.
fn updated_customers(
    updated: HashMap<i64, Vec<u64>>,
    created: &HashMap<i64, u64>,
    updates: &HashMap<i64, Vec<Overwritten>>,
) -> Vec<Work> {
    let mut updated_ids: Vec<(i64, Vec<u64>)> = updated
        .into_iter()
        .filter(|(c, _)| !created.contains_key(c))
        .collect();
    updated_ids.sort_unstable_by_key(|(_, rows)| rows.first().copied());
    updated_ids
        .into_iter()
        .map(|(customer_id, mut rows)| {
            let Some(list) = updates.get(&customer_id) else {
                let row = rows.first().copied().unwrap_or_default();
                return cannot_customer(
                    customer_id,
                    row,
                    "updated without a before-image (--no-undo): the values it had are not known",
                );
            };
            let (before, unknown) = first_mention(list);
            rows.sort_unstable();
            rows.dedup();
            Work::Restore {
                customer_id,
                rows,
                before,
                unknown,
                layers: list.iter().map(|(_, _, l)| l.clone()).collect(),
                seen: None,
            }
        })
        .collect()
}

/// The values to put back from a customer's update images (in file
/// order): each field as the FIRST image that mentions it has it (a value,
/// or unknown). A later image was read after the run's own update: its
/// value is the run's, never the one before the run.
pub(super) fn first_mention(list: &[Overwritten]) -> (Map<String, Value>, Vec<String>) {
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

/// What hangs on the customers (items, campaign records, contact
/// history): items updated are given their values back; what the API
/// cannot take back is listed, unless it went with a customer deleted.
fn dependents(
    outcomes: &Outcomes,
    seen: &HashMap<(u64, Stage, usize), Seen>,
    created: &HashMap<i64, u64>,
    items: &HashMap<i64, Vec<ItemImage>>,
) -> Vec<Work> {
    let mut work = Vec::new();
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
            let dependent = Dependent {
                row,
                stage,
                status: outcome.status,
                gone_with: customer_id.is_some_and(|c| created.contains_key(&c)),
                customer_id,
                seen: s,
            };
            work.extend(dependent.target(items));
        }
    }
    work
}

/// One row's stage that hangs on a customer (not the customer's own).
struct Dependent {
    row: u64,
    stage: Stage,
    status: Status,
    customer_id: Option<i64>,
    /// Its customer is one the run created: deleting it takes this along.
    gone_with: bool,
    seen: Seen,
}

impl Dependent {
    /// What there is to take back of it, if anything.
    fn target(&self, items: &HashMap<i64, Vec<ItemImage>>) -> Option<Work> {
        let s = &self.seen;
        let nothing_sent = matches!(s.action, Some(Action::Unchanged | Action::Kept));
        match (self.stage, self.status) {
            (Stage::FieldGroup, Status::Ok) if s.action == Some(Action::Updated) => {
                let (Some(item_id), Some(c)) = (s.item_id, self.customer_id) else {
                    return None;
                };
                if self.gone_with {
                    return None;
                }
                Some(self.restore_item(c, item_id, items))
            }
            (_, Status::Ok) if nothing_sent || self.gone_with => None,
            (Stage::CampaignUpdate, Status::Ok | Status::Unknown) => Some(self.cannot(
                Kind::CampaignUpdate,
                None,
                None,
                "a campaign record edited: the API cannot read what it held before",
            )),
            (_, Status::Unknown) if self.gone_with => None,
            (Stage::FieldGroup, Status::Ok) => Some(self.cannot(
                Kind::Item,
                s.item_id,
                None,
                "an item created on a customer that existed: the API cannot delete an item",
            )),
            (Stage::FieldGroup, Status::Unknown) => Some(self.cannot(Kind::Item, None, None, "an item whose creation's outcome is unknown, on a customer that existed: look for it in Thulium")),
            (Stage::Campaign, Status::Ok) => {
                if s.message
                    .as_deref()
                    .is_some_and(|m| m.starts_with("already in the campaign"))
                {
                    return None;
                }
                Some(self.cannot(Kind::CampaignRecord, None, s.record_id, "a campaign record added to a customer that existed: the API cannot remove a record"))
            }
            (Stage::Feed, Status::Ok) => Some(self.cannot(Kind::Feed, None, None, "a contact-history record added to a customer that existed: the API cannot remove one")),
            (Stage::Feed, Status::Unknown) => Some(self.cannot(Kind::Feed, None, None, "a contact-history record of unknown outcome on a customer that existed: the API cannot list or remove one")),
            _ => None,
        }
    }

    /// An item the run updated, given its values before back (the first
    /// value seen before the run is the one to put back).
    fn restore_item(
        &self,
        customer_id: i64,
        item_id: i64,
        items: &HashMap<i64, Vec<ItemImage>>,
    ) -> Work {
        let Some(list) = items.get(&item_id) else {
            return self.cannot(
                Kind::Item,
                Some(item_id),
                None,
                "updated without a before-image (--no-undo): its values before are not known",
            );
        };
        let mut before: Vec<ItemField> = Vec::new();
        for (_, b, _) in list {
            for f in b {
                if !before.iter().any(|x| x.field_id == f.field_id) {
                    before.push(f.clone());
                }
            }
        }
        Work::RestoreItem {
            customer_id,
            item_id,
            group_id: list[0].0,
            rows: vec![self.row],
            before,
            layers: list.iter().map(|(_, _, l)| l.clone()).collect(),
        }
    }

    /// It, listed as not undoable with why.
    fn cannot(
        &self,
        target: Kind,
        item_id: Option<i64>,
        record_id: Option<i64>,
        why: &str,
    ) -> Work {
        Work::Cannot(TargetEvent {
            customer_id: self.customer_id,
            item_id,
            record_id,
            rows: vec![self.row],
            ..cannot(target, why)
        })
    }
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
}
