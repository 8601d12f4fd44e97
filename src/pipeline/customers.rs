//! The customer stage: find the customer a row is (when the mapping
//! matches, or a creation's outcome was unknown), then create, update or
//! leave it, and hand each row downstream with its customer's id.
//!
//! ```text
//! row ─▶ resolve: state / index / GET customers ─┬─ matched ─▶ update (PUT batch/customers) or leave
//!                                                 ├─ missing ─▶ create (POST batch/customers) or skip
//!                                                 └─ several ─▶ failed, nothing sent
//! create, unknown outcome, with a key ─▶ looked up again before the run ends ─▶ adopted or created
//! ```

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;

use super::{event, fate_event, CustomerState, Downstream, LookupReason, MappedRow, Run};
use crate::api::customers::{CreateCustomers, Created, UpdateCustomers};
use crate::api::payload::CustomerUpdate;
use crate::api::{self, Call, RowFate};
use crate::identity::{Finder, Found, RowKeys};
use crate::ledger::{Action, Entry, Intent, RowEvent, Stage, Status};
use crate::mapping::{ItemMode, OnMatch, OnMissing};
use crate::state::Learnt;
use crate::text::join_ids;
use crate::undo::images::Image;

/// Drops the stages that need the row's customer (it has none), once the
/// row is already being sent (its outcomes counted): the stages dropped
/// are no longer waited for.
fn drop_later_stages(run: &Run, row: &mut MappedRow) {
    let p = &row.payloads;
    let dropped =
        p.field_groups.len() as u32 + u32::from(p.campaign.is_some()) + u32::from(p.feed.is_some());
    drop_customer_stages(row);
    run.no_longer_pending(row.id.row, dropped);
}

/// Drops the stages that need the row's customer (it has none).
fn drop_customer_stages(row: &mut MappedRow) {
    row.payloads.customer = None;
    row.payloads.field_groups.clear();
    row.payloads.campaign = None;
    row.payloads.feed = None;
}

/// The customer's payload as the sync state remembers it (its hash):
/// see [`customer_shape`].
fn update_shape(run: &Run, row: &MappedRow) -> Option<crate::api::payload::Customer> {
    customer_shape(run.matching.upsert.as_ref(), &row.payloads)
}

/// What an update of a matched customer sends, under the mapping's
/// `update` policies.
#[derive(Debug, Clone, PartialEq)]
pub struct Policed {
    /// The fields to send (none: nothing to write).
    pub fields: crate::api::payload::Customer,
    /// `if_empty` fields left out because Thulium's value is not known.
    pub not_known: Vec<String>,
    /// `if_empty` fields left out because Thulium holds a value.
    pub kept: Vec<String>,
}

impl Policed {
    /// Whether the update would write nothing.
    pub fn is_empty(&self) -> bool {
        self.fields == crate::api::payload::Customer::default()
    }

    /// What the ledger says of the fields left out for want of a current
    /// value (the other policies are the mapping's, and say nothing new).
    pub fn note(&self) -> Option<String> {
        (!self.not_known.is_empty()).then(|| {
            format!(
                "not written: {} (update = \"if_empty\", and Thulium's value for this customer is not known)",
                self.not_known.join(", ")
            )
        })
    }
}

/// The customer's payload as the sync state hashes an update of it: with
/// `clear_empty`, the empty cells as empty values; `never` fields left out
/// (a change there alone is no change); `if_empty` fields kept (a new
/// value in the export is worth a look at Thulium's). A mapping without
/// policies hashes as it always did.
pub fn customer_shape(
    upsert: Option<&crate::mapping::Upsert>,
    payloads: &crate::mapping::RowPayloads,
) -> Option<crate::api::payload::Customer> {
    policed(upsert, payloads, None).map(|p| p.fields)
}

/// The customer's payload as an update sends it, given what Thulium holds
/// now (`current`, from the index or the lookup that found it): the one
/// place the `update` policies apply to customers. `never` fields are left
/// out; `if_empty` ones are sent only where `current` shows Thulium's
/// value empty, and not at all where it does not know it.
pub fn customer_update(
    upsert: Option<&crate::mapping::Upsert>,
    payloads: &crate::mapping::RowPayloads,
    current: Option<&crate::current::Current>,
) -> Option<Policed> {
    policed(upsert, payloads, Some(current))
}

/// [`customer_shape`] (`against` `None`) and [`customer_update`].
fn policed(
    upsert: Option<&crate::mapping::Upsert>,
    payloads: &crate::mapping::RowPayloads,
    against: Option<Option<&crate::current::Current>>,
) -> Option<Policed> {
    use crate::mapping::Policy;
    let customer = payloads.customer.as_ref()?;
    let mut fields = if upsert.is_some_and(|u| u.clear_empty) {
        customer.clearing(&payloads.cleared)
    } else {
        customer.clone()
    };
    let mut out = Policed {
        fields: crate::api::payload::Customer::default(),
        not_known: Vec::new(),
        kept: Vec::new(),
    };
    for (field, policy) in upsert.map_or(&[][..], |u| &u.policies.0[..]) {
        match (policy, against) {
            (Policy::Always, _) | (Policy::IfEmpty, None) => {}
            (Policy::Never, _) => {
                fields.drop_field(field);
            }
            (Policy::IfEmpty, Some(current)) => {
                let now = current.and_then(|c| c.get(field));
                if now.as_ref().is_some_and(crate::current::is_empty) {
                    continue;
                }
                if fields.drop_field(field) {
                    match now {
                        None => out.not_known.push(field.clone()),
                        Some(_) => out.kept.push(field.clone()),
                    }
                }
            }
        }
    }
    out.fields = fields;
    Some(out)
}

/// Finds a row's customer before anything is sent for it, and decides:
/// leave it (recorded here), update it, or create it. Returns the row as
/// it goes on (`update_of` set for an update, `customer` taken for a
/// customer already there) and the customer-stage event to record, if any.
///
/// The sync state is a cache: the customer it remembers for the row's keys
/// is used without asking Thulium only when the row would write nothing to
/// it (every part as sent before). Otherwise Thulium decides (the index
/// read this run, or a lookup), and a remembered key that now names
/// another customer, or none, is forgotten.
pub(super) async fn resolve(run: Arc<Run>, mut row: MappedRow) -> (MappedRow, Option<RowEvent>) {
    let Some(reason) = row.lookup.take() else {
        return (row, None);
    };
    let Some(customer) = &row.payloads.customer else {
        return (row, None);
    };
    let keys = match &run.matching.upsert {
        Some(u) => u.keys.clone(),
        None => vec![crate::api::keys::SearchKey::Identifier],
    };
    row.keys = RowKeys::of(customer, &keys);
    if let LookupReason::Confirm(known) = reason {
        return confirm(&run, row, known).await;
    }
    // 1. What earlier runs learnt, as a hint (`--full` asks Thulium for
    // every row, and so repairs the state, forgetting what it does not
    // confirm): enough when nothing is written.
    let remembered = match reason {
        LookupReason::Match => run.matching.finder.remembered(&row.keys),
        _ => None,
    };
    if let Some(id) = remembered.filter(|_| !run.matching.full) {
        if let Some(ev) = unchanged_by_memory(&run, &mut row, id) {
            return (row, Some(ev));
        }
    }
    // 2. Thulium says who the row is; 3. a memory it does not confirm is
    // forgotten; 4. the row is left, updated, created or failed.
    let found = find(&run, &row, reason).await;
    if let Some(id) = remembered {
        forget_unconfirmed(&run, &row, id, &found);
    }
    decide(&run, row, found, reason)
}

/// The customer the state remembers, used without asking when the row
/// would write nothing to it (every part as sent before): recorded
/// `unchanged` (or `skipped_existing`). Without an index, confirming would
/// cost a lookup; with one, Thulium's answer is at hand and is asked.
fn unchanged_by_memory(run: &Run, row: &mut MappedRow, id: i64) -> Option<RowEvent> {
    let on_match = run
        .matching
        .upsert
        .as_ref()
        .map_or(OnMatch::Update, |u| u.on_match);
    if run.matching.finder.index.is_some() || !writes_nothing(run, row, id, on_match) {
        return None;
    }
    let mut ev = event(row.id, Stage::Customer, Status::Ok);
    ev.customer_id = Some(id);
    if on_match == OnMatch::Skip {
        ev.action = Some(Action::SkippedExisting);
        ev.message = Some(SKIPPED_EXISTING.into());
    } else {
        ev.action = Some(Action::Unchanged);
    }
    existing(run, row, id);
    Some(ev)
}

/// Who the row is, as Thulium says: the index read this run or a lookup
/// (after an unknown outcome, only a fresh lookup: not an index read
/// before the creation).
async fn find(run: &Run, row: &MappedRow, reason: LookupReason) -> Found {
    if row.keys.is_empty() {
        return Found::Missing;
    }
    let _permit = run.permits.acquire().await;
    let fresh = Finder::fresh(&run.matching.finder.written);
    let finder = match reason {
        LookupReason::UnknownBefore => &fresh,
        LookupReason::Match | LookupReason::Confirm(_) => &run.matching.finder,
    };
    let (found, attempts) = finder.find(&run.client, &row.keys).await;
    if attempts > 0 {
        run.looked_up(&found);
    }
    found
}

/// A remembered customer Thulium does not confirm — a key moved to another
/// customer (an agent's edit), or the customer is gone (deleted, a
/// restored system) — is forgotten for the row's keys.
fn forget_unconfirmed(run: &Run, row: &MappedRow, id: i64, found: &Found) {
    let confirmed = match found {
        Found::Matched { customer_id, .. } => *customer_id == id,
        // Nothing learnt: the memory stays as it is.
        Found::Failed(_) => true,
        Found::Missing | Found::Ambiguous { .. } => false,
    };
    if !confirmed {
        run.progress.forgotten.fetch_add(1, Ordering::Relaxed);
        for (_, key) in row.keys.hashes() {
            run.learn(Learnt::Forget { key });
        }
        // Nobody holds the row's keys: the remembered customer is gone (or
        // lost every key the row has) and is forgotten whole, so that the
        // state's count of customers stays Thulium's (a restored system
        // is told by it).
        if *found == Found::Missing {
            run.learn(Learnt::ForgetCustomer { customer_id: id });
        }
    }
}

/// What becomes of the row, given who Thulium says it is and why it was
/// looked up: the row as it goes on and the customer-stage event to
/// record, if any.
fn decide(
    run: &Run,
    mut row: MappedRow,
    found: Found,
    reason: LookupReason,
) -> (MappedRow, Option<RowEvent>) {
    let upsert = run.matching.upsert.clone();
    let on_match = upsert.as_ref().map_or(OnMatch::Update, |u| u.on_match);
    let mut ev = event(row.id, Stage::Customer, Status::Ok);
    match (found, reason) {
        // (A confirmation returned above.)
        (
            Found::Matched {
                customer_id,
                key,
                current,
            },
            LookupReason::UnknownBefore | LookupReason::Confirm(_),
        ) => {
            run.progress.reconciled.fetch_add(1, Ordering::Relaxed);
            ev.customer_id = Some(customer_id);
            ev.reconciled = Some(true);
            ev.action = Some(Action::Adopted);
            let hash = row_hash(run, &row);
            let sent_before = hash.is_some_and(|h| {
                run.matching
                    .state
                    .as_ref()
                    .and_then(|s| s.part(customer_id, "customer"))
                    .is_some_and(|(known, _)| known == h)
            });
            if on_match == OnMatch::Update && hash.is_some() && !sent_before {
                // The row may have been corrected since (a fixed failed-rows
                // CSV, `retry --mapping`): the customer gets the row's
                // fields (an idempotent PUT), recorded as adopted.
                row.update_of = Some(customer_id);
                row.current = current;
                row.adopted = true;
                upsert_items(run, &mut row);
                return (row, None);
            }
            ev.message = Some(format!(
                "found by {} after an unknown outcome: adopted, not created again",
                key.name()
            ));
            run.learn_customer(&row, customer_id, hash);
            existing(run, &mut row, customer_id);
            (row, Some(ev))
        }
        (
            Found::Matched {
                customer_id,
                current,
                ..
            },
            LookupReason::Match,
        ) => {
            ev.customer_id = Some(customer_id);
            if on_match == OnMatch::Skip {
                ev.action = Some(Action::SkippedExisting);
                ev.message = Some(SKIPPED_EXISTING.into());
                run.learn_customer(&row, customer_id, None);
                existing(run, &mut row, customer_id);
                return (row, Some(ev));
            }
            let hash = row_hash(run, &row);
            if let (Some(hash), false) = (hash, run.matching.full) {
                if run.unchanged(customer_id, "customer", hash).is_some() {
                    ev.action = Some(Action::Unchanged);
                    // Confirmed: the keys are this customer's.
                    run.learn_customer(&row, customer_id, None);
                    existing(run, &mut row, customer_id);
                    return (row, Some(ev));
                }
            }
            row.current = current;
            // Nothing to write: the policies leave no field (every field
            // that changed is the contact center's now), or Thulium already
            // holds every value the update would send (read with the index
            // or the lookup that found it): nothing is sent.
            if let Some(p) = update_fields(run, &row).filter(|p| writes_nothing_new(p, &row)) {
                ev.action = Some(Action::Unchanged);
                ev.message = p.note().or_else(|| {
                    (!p.is_empty()).then(|| {
                        "Thulium already holds every value of this row: nothing sent".to_string()
                    })
                });
                run.learn_customer(&row, customer_id, hash.filter(|_| p.not_known.is_empty()));
                existing(run, &mut row, customer_id);
                return (row, Some(ev));
            }
            row.update_of = Some(customer_id);
            upsert_items(run, &mut row);
            (row, None)
        }
        (Found::Missing, LookupReason::UnknownBefore | LookupReason::Confirm(_)) => (row, None),
        (Found::Missing, LookupReason::Match) => {
            if upsert
                .as_ref()
                .is_some_and(|u| u.on_missing == OnMissing::Skip)
            {
                skip_missing(&mut ev, &mut row);
                return (row, Some(ev));
            }
            (row, None)
        }
        (Found::Ambiguous { ids, key }, reason) => {
            ambiguous(run, &mut ev, &ids, &key);
            drop_customer_stages(&mut row);
            if reason == LookupReason::Match {
                row.payloads.campaign_update = None;
            }
            (row, Some(ev))
        }
        (Found::Failed(e), reason) => {
            if reason == LookupReason::UnknownBefore {
                ev.status = Some(Status::Unknown);
                ev.message = Some(format!(
                    "could not look the customer up ({e}); still unknown"
                ));
            } else {
                lookup_failed(&mut ev, &e.to_string());
            }
            drop_customer_stages(&mut row);
            (row, Some(ev))
        }
    }
}

/// Whether an update would write nothing Thulium does not hold: no field
/// left under the policies, or every field's value already the current
/// one (none of them unknown).
fn writes_nothing_new(p: &Policed, row: &MappedRow) -> bool {
    if p.is_empty() {
        return true;
    }
    let Some(current) = &row.current else {
        return false;
    };
    let payload = serde_json::to_value(&p.fields).unwrap_or_default();
    let cmp = crate::current::compare(&payload, current);
    cmp.changes.is_empty() && cmp.unknown.is_empty()
}

/// `retry`'s confirmation of the customer the ledger holds for a row whose
/// later stages are still to be sent: `GET customers/:id` (only a 404 says
/// it is gone), and with `match`, the row's keys (another customer may
/// hold them now).
///
/// - still there, and no other customer holds the keys: on as the ledger
///   says, nothing recorded;
/// - another customer holds the keys: the row goes with it (recorded);
/// - gone: found again by the keys, or created again (`on_missing`);
/// - the system could not say: the customer stage stays as the ledger has
///   it, and the later stages are recorded skipped, for the next retry.
async fn confirm(run: &Run, mut row: MappedRow, known: i64) -> (MappedRow, Option<RowEvent>) {
    let mut ev = event(row.id, Stage::Customer, Status::Ok);
    let _permit = run.permits.acquire().await;
    let call = run
        .client
        .get_customer(known, &run.matching.finder.written)
        .await;
    let exists = match call.result {
        Ok(found) => {
            run.breaker_sees(false);
            found.is_some()
        }
        Err(e) => {
            run.looked_up(&Found::Failed(e.clone()));
            return unconfirmed(row, known, &e.to_string());
        }
    };
    let by_keys = if run.matching.upsert.is_some() {
        let (found, attempts) = run.matching.finder.find(&run.client, &row.keys).await;
        if attempts > 0 {
            run.looked_up(&found);
        }
        Some(found)
    } else {
        None
    };
    match (exists, by_keys) {
        (
            _,
            Some(Found::Matched {
                customer_id, key, ..
            }),
        ) if customer_id != known => {
            ev.customer_id = Some(customer_id);
            ev.action = Some(Action::Unchanged);
            ev.message = Some(format!(
                "customer {known}, recorded for this row before, {}; customer {customer_id} has its {}: the row's later stages go to it",
                if exists { "no longer holds its key" } else { "is gone" },
                key.name()
            ));
            run.learn_customer(&row, customer_id, None);
            existing(run, &mut row, customer_id);
            (row, Some(ev))
        }
        (_, Some(Found::Failed(e))) => unconfirmed(row, known, &e.to_string()),
        (true, _) => {
            row.payloads.customer = None;
            row.payloads.existing_customer_id = Some(known);
            (row, None)
        }
        (false, Some(Found::Ambiguous { ids, key })) => {
            ambiguous(run, &mut ev, &ids, &key);
            drop_customer_stages(&mut row);
            (row, Some(ev))
        }
        (false, _) => {
            run.progress.forgotten.fetch_add(1, Ordering::Relaxed);
            run.learn(Learnt::ForgetCustomer { customer_id: known });
            let skip = run
                .matching
                .upsert
                .as_ref()
                .is_some_and(|u| u.on_missing == OnMissing::Skip);
            if skip {
                skip_missing(&mut ev, &mut row);
                return (row, Some(ev));
            }
            // Gone (deleted, a restored system): created again.
            row.gone_from = Some(known);
            (row, None)
        }
    }
}

/// The customer recorded for the row could not be confirmed: nothing is
/// written to it this time; its customer stage stays as the ledger has it
/// and the later stages are recorded skipped (sent by the next retry).
fn unconfirmed(mut row: MappedRow, known: i64, why: &str) -> (MappedRow, Option<RowEvent>) {
    row.payloads.customer = None;
    row.payloads.existing_customer_id = None;
    row.blocked = Some(format!(
        "customer {known} could not be confirmed in Thulium ({why}); retry sends it"
    ));
    (row, None)
}

const SKIPPED_EXISTING: &str = "matched an existing customer: left as it is (on_match = \"skip\")";

/// `on_missing = "skip"`: no customer, and nothing for its later stages.
fn skip_missing(ev: &mut RowEvent, row: &mut MappedRow) {
    ev.action = Some(Action::SkippedMissing);
    ev.message = Some("no customer matched: not created (on_missing = \"skip\")".into());
    drop_customer_stages(row);
}

/// Several customers match: nothing is sent. `retry` looks again (someone
/// may have merged them since).
fn ambiguous(run: &Run, ev: &mut RowEvent, ids: &[i64], key: &crate::api::keys::SearchKey) {
    run.progress.duplicates.fetch_add(1, Ordering::Relaxed);
    ev.status = Some(Status::Failed);
    ev.retryable = Some(true);
    ev.message = Some(Found::ambiguity(ids, key));
}

fn lookup_failed(ev: &mut RowEvent, e: &str) {
    ev.status = Some(Status::Failed);
    ev.retryable = Some(true);
    ev.message = Some(format!("could not look the customer up: {e}"));
}

/// Whether the row would write nothing to customer `id`: its customer
/// fields (unless `on_match = "skip"`), items, campaign record and feed
/// message are what the sync state says was sent to it before.
fn writes_nothing(run: &Run, row: &MappedRow, id: i64, on_match: OnMatch) -> bool {
    use super::parts::{campaign_hash, feed_hash, item_hash};
    let Some(state) = &run.matching.state else {
        return false;
    };
    let same = |part: &str, hash| state.part(id, part).is_some_and(|(h, _)| h == hash);
    let customer =
        on_match == OnMatch::Skip || row_hash(run, row).is_some_and(|h| same("customer", h));
    customer
        && row
            .payloads
            .field_groups
            .iter()
            .all(|i| same(&run.matching.group_part(i.index), item_hash(i)))
        && row
            .payloads
            .campaign
            .as_ref()
            .is_none_or(|c| same("campaign", campaign_hash(c)))
        && row
            .payloads
            .feed
            .as_ref()
            .is_none_or(|f| state.has_feed(id, feed_hash(f)))
}

/// The row's customer exists (matched, adopted or left): no customer call.
fn existing(run: &Run, row: &mut MappedRow, customer_id: i64) {
    row.payloads.customer = None;
    row.payloads.existing_customer_id = Some(customer_id);
    upsert_items(run, row);
}

/// The row's customer existed before: in matching mode its field-group
/// items are looked for before any is created.
fn upsert_items(run: &Run, row: &mut MappedRow) {
    row.existed = true;
    if run.matching.upsert.is_some() {
        for item in &mut row.payloads.field_groups {
            if item.mode == ItemMode::Create {
                item.mode = ItemMode::Upsert;
            }
        }
    }
}

/// Creates (or, for rows with `update_of`, updates) the customers of a
/// chunk of rows on a task of its own, then hands the rows downstream.
pub(super) async fn spawn_customers(
    run: &Arc<Run>,
    tasks: &mut JoinSet<()>,
    rows: Vec<MappedRow>,
    down: &Downstream,
    update: bool,
) {
    let Ok(permit) = run.permits.clone().acquire_owned().await else {
        return;
    };
    let run = run.clone();
    let down = down.clone();
    tasks.spawn(async move {
        let settled = if update {
            update_customers(&run, rows).await
        } else {
            create_customers(&run, rows).await
        };
        drop(permit);
        for (row, state) in settled {
            if down.send((row, state)).await.is_err() {
                break;
            }
        }
    });
}

/// How many times, at most, a creation of unknown outcome is looked up
/// and sent again within one run.
const RECHECK_ROUNDS: usize = 5;

/// Creates customers: an intent, then the calls (bisected on a whole-call
/// 4xx). When the mapping matches customers, a creation of unknown outcome
/// is looked up by its keys before the run ends: adopted if it exists, sent
/// again if it does not.
async fn create_customers(run: &Run, rows: Vec<MappedRow>) -> Vec<(MappedRow, CustomerState)> {
    let mut settled = Vec::with_capacity(rows.len());
    let mut rows = rows;
    for round in 0..=RECHECK_ROUNDS {
        if rows.is_empty() {
            break;
        }
        // The undo file first (what is about to be created), then the
        // intent. An undo file that cannot be written stops the run: no
        // intent, and the bisection records the rows not sent.
        let created = rows
            .iter()
            .filter_map(|r| Some(Image::created(r.id.row, r.payloads.customer.as_ref()?)))
            .collect();
        if run.before_images(created).await {
            let intent = Intent {
                stage: Stage::Customer,
                group: None,
                rows: rows.iter().map(|r| r.id.row).collect(),
            };
            if !run.record(vec![Entry::Intent(intent)]).await {
                return settled;
            }
        }
        let batch = CreateBatch {
            run,
            settled: Mutex::new(Vec::with_capacity(rows.len())),
            recheck: Mutex::new(Vec::new()),
            last_round: round == RECHECK_ROUNDS,
        };
        api::bisect(&batch, rows).await;
        settled.extend(
            batch
                .settled
                .into_inner()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let recheck = batch
            .recheck
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        rows = Vec::new();
        for (mut row, unknown) in recheck {
            if run.abort.is_set() {
                run.record(vec![Entry::Row(unknown)]).await;
                settled.push((
                    row,
                    CustomerState::Unknown("the customer's creation has an unknown outcome".into()),
                ));
                continue;
            }
            let (found, attempts) = Finder::fresh(&run.matching.finder.written)
                .find(&run.client, &row.keys)
                .await;
            if attempts > 0 {
                run.looked_up(&found);
            }
            let mut ev = event(row.id, Stage::Customer, Status::Ok);
            match found {
                Found::Matched {
                    customer_id, key, ..
                } => {
                    run.progress.reconciled.fetch_add(1, Ordering::Relaxed);
                    ev.customer_id = Some(customer_id);
                    ev.reconciled = Some(true);
                    ev.action = Some(Action::Adopted);
                    ev.message = Some(format!(
                        "the creation's outcome was unknown; found by {}: adopted, not created again",
                        key.name()
                    ));
                    run.learn_customer(&row, customer_id, row_hash(run, &row));
                    run.record(vec![Entry::Row(ev)]).await;
                    settled.push((row, CustomerState::Id(customer_id)));
                }
                // Never created: send it again.
                Found::Missing => rows.push(row),
                Found::Ambiguous { ids, key } => {
                    ambiguous(run, &mut ev, &ids, &key);
                    run.record(vec![Entry::Row(ev)]).await;
                    drop_later_stages(run, &mut row);
                    settled.push((
                        row,
                        CustomerState::NotCreated(format!("customers {} match", join_ids(&ids))),
                    ));
                }
                Found::Failed(_) => {
                    run.record(vec![Entry::Row(unknown)]).await;
                    settled.push((
                        row,
                        CustomerState::Unknown(
                            "the customer's creation has an unknown outcome".into(),
                        ),
                    ));
                }
            }
        }
    }
    settled
}

fn row_hash(run: &Run, row: &MappedRow) -> Option<crate::hash::KeyHash> {
    update_shape(run, row).map(|c| crate::hash::payload_hash(&c))
}

/// What the update of `row` sends, given its customer's current values.
fn update_fields(run: &Run, row: &MappedRow) -> Option<Policed> {
    customer_update(
        run.matching.upsert.as_ref(),
        &row.payloads,
        row.current.as_ref(),
    )
}

/// The create calls, bisected on a whole-call 4xx.
struct CreateBatch<'a> {
    run: &'a Run,
    /// Rows settled so far, handed downstream once the permit is released.
    settled: Mutex<Vec<(MappedRow, CustomerState)>>,
    /// Rows of unknown outcome with keys, and the event that says so: looked
    /// up before their outcome is recorded.
    recheck: Mutex<Vec<(MappedRow, RowEvent)>>,
    last_round: bool,
}

impl api::Batch for CreateBatch<'_> {
    type Item = MappedRow;
    type Answer = Vec<RowFate<Created>>;

    async fn send(&self, rows: &[MappedRow]) -> Call<Self::Answer> {
        let customers = rows
            .iter()
            .filter_map(|r| r.payloads.customer.as_ref())
            .collect();
        self.run.write(&CreateCustomers { customers }).await
    }

    async fn settle(&self, rows: Vec<MappedRow>, call: Call<Self::Answer>) {
        let run = self.run;
        run.observe(&call);
        let fates = RowFate::of_rows(&call.result, rows.len());
        let mut entries = Vec::with_capacity(rows.len());
        let mut settled = Vec::with_capacity(rows.len());
        let mut recheck = Vec::new();
        for (row, fate) in rows.into_iter().zip(&fates) {
            let ev = fate_event(
                row.id,
                Stage::Customer,
                None,
                call.attempts,
                fate,
                |ev, c| {
                    ev.http_status = c.http_status;
                    ev.customer_id = Some(c.customer_id);
                    ev.action = Some(Action::Created);
                },
            );
            let mut ev = ev;
            if let (RowFate::Done(_), Some(gone)) = (fate, row.gone_from) {
                ev.message = Some(format!(
                    "customer {gone}, remembered for this row, is gone from Thulium and no other matched: created anew"
                ));
            }
            let state = match fate {
                RowFate::Done(c) => {
                    run.learn_customer(&row, c.customer_id, row_hash(run, &row));
                    CustomerState::Id(c.customer_id)
                }
                RowFate::Unknown { .. }
                    if run.matching.upsert.is_some()
                        && !row.keys.is_empty()
                        && !self.last_round
                        && !run.abort.is_set() =>
                {
                    recheck.push((row, ev));
                    continue;
                }
                RowFate::Unknown { .. } => {
                    CustomerState::Unknown("the customer's creation has an unknown outcome".into())
                }
                _ => CustomerState::NotCreated("the customer was not created".into()),
            };
            entries.push(Entry::Row(ev));
            settled.push((row, state));
        }
        run.record(entries).await;
        self.settled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(settled);
        self.recheck
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(recheck);
    }

    fn stopping(&self) -> Option<String> {
        self.run.abort.stopping()
    }
}

/// Updates matched customers (`PUT batch/customers`, idempotent), bisected
/// on a whole-call 4xx. The customer exists whatever the update's fate, so
/// its row goes on downstream with its id, unless Thulium says it is gone
/// (404, "Customer not found."): then it is forgotten and the row is found
/// again by its keys, in this run, and updated or created.
async fn update_customers(run: &Run, rows: Vec<MappedRow>) -> Vec<(MappedRow, CustomerState)> {
    let mut settled = Vec::with_capacity(rows.len());
    let mut rows = rows;
    // One more round for rows whose customer was gone and that another
    // customer matches now; a second 404 is recorded as it is.
    for round in 0..2 {
        if rows.is_empty() {
            break;
        }
        // What the updates overwrite, durable before they are sent (an
        // undo file that cannot be written stops the run: the rows are
        // then recorded not sent).
        let overwritten = rows
            .iter()
            .filter_map(|r| {
                let fields = update_fields(run, r)?.fields;
                Some(Image::updated(
                    r.id.row,
                    r.update_of?,
                    &fields,
                    r.current.as_ref(),
                ))
            })
            .collect();
        run.before_images(overwritten).await;
        let batch = UpdateBatch {
            run,
            settled: Mutex::new(Vec::with_capacity(rows.len())),
            gone: Mutex::new(Vec::new()),
            last_round: round == 1,
        };
        api::bisect(&batch, rows).await;
        settled.extend(
            batch
                .settled
                .into_inner()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let gone = batch.gone.into_inner().unwrap_or_else(|e| e.into_inner());
        let (again, create) = find_again(run, gone, &mut settled).await;
        rows = again;
        if !create.is_empty() {
            settled.extend(Box::pin(create_customers(run, create)).await);
        }
    }
    settled
}

/// Rows whose remembered customer is gone, found again by their keys in
/// Thulium: those another customer matches (to update), those none matches
/// (to create, under `on_missing = "create"`); the others are recorded.
async fn find_again(
    run: &Run,
    gone: Vec<(MappedRow, RowEvent)>,
    settled: &mut Vec<(MappedRow, CustomerState)>,
) -> (Vec<MappedRow>, Vec<MappedRow>) {
    let mut update = Vec::new();
    let mut create = Vec::new();
    let mut entries = Vec::new();
    for (mut row, mut ev) in gone {
        let Some(gone_id) = row.gone_from else {
            continue;
        };
        run.progress.forgotten.fetch_add(1, Ordering::Relaxed);
        run.learn(Learnt::ForgetCustomer {
            customer_id: gone_id,
        });
        for (_, key) in row.keys.hashes() {
            run.learn(Learnt::Forget { key });
        }
        let found = if row.keys.is_empty() {
            Found::Missing
        } else {
            let (found, attempts) = Finder::fresh(&run.matching.finder.written)
                .find(&run.client, &row.keys)
                .await;
            if attempts > 0 {
                run.looked_up(&found);
            }
            found
        };
        ev.status = Some(Status::Ok);
        ev.http_status = None;
        ev.retryable = None;
        ev.customer_id = None;
        let on_missing = run
            .matching
            .upsert
            .as_ref()
            .map_or(OnMissing::Create, |u| u.on_missing);
        match found {
            Found::Matched {
                customer_id,
                current,
                ..
            } if customer_id != gone_id => {
                row.update_of = Some(customer_id);
                // What it holds, for the undo file's before-image.
                row.current = current;
                update.push(row);
                continue;
            }
            Found::Matched { .. } => {
                ev.status = Some(Status::Failed);
                ev.retryable = Some(true);
                ev.customer_id = Some(gone_id);
                ev.message = Some(format!(
                    "customer {gone_id} answered \"not found\" to an update, yet a lookup still finds it: nothing sent; retry later"
                ));
                drop_later_stages(run, &mut row);
            }
            Found::Missing if on_missing == OnMissing::Create => {
                // A new customer: no items to look for, and its contact
                // history was never sent.
                row.existed = false;
                for item in &mut row.payloads.field_groups {
                    if item.mode == ItemMode::Upsert {
                        item.mode = ItemMode::Create;
                    }
                }
                create.push(row);
                continue;
            }
            Found::Missing => {
                ev.action = Some(Action::SkippedMissing);
                ev.message = Some(format!(
                    "customer {gone_id}, remembered for this row, is gone and no other matched: not created (on_missing = \"skip\")"
                ));
                drop_later_stages(run, &mut row);
            }
            Found::Ambiguous { ids, key } => {
                ambiguous(run, &mut ev, &ids, &key);
                drop_later_stages(run, &mut row);
            }
            Found::Failed(e) => {
                lookup_failed(&mut ev, &e.to_string());
                drop_later_stages(run, &mut row);
            }
        }
        let state = match ev.status {
            Some(Status::Ok) => CustomerState::NotNeeded,
            _ => CustomerState::NotCreated(format!("customer {gone_id} is gone")),
        };
        entries.push(Entry::Row(ev));
        settled.push((row, state));
    }
    run.record(entries).await;
    (update, create)
}

/// What an update with `fields` would change of a customer whose values
/// Thulium gave as `current` (none given: every field unknown).
fn would_change(
    fields: &crate::api::payload::Customer,
    current: Option<&crate::current::Current>,
) -> crate::current::Compared {
    let payload = serde_json::to_value(fields).unwrap_or_default();
    match current {
        Some(current) => crate::current::compare(&payload, current),
        None => crate::current::Compared {
            changes: Vec::new(),
            unknown: crate::current::flatten(&payload)
                .into_iter()
                .map(|(field, _)| field)
                .collect(),
        },
    }
}

struct UpdateBatch<'a> {
    run: &'a Run,
    settled: Mutex<Vec<(MappedRow, CustomerState)>>,
    /// Rows whose customer Thulium says is gone, with their event so far.
    gone: Mutex<Vec<(MappedRow, RowEvent)>>,
    /// A second 404 is recorded, not looked up again.
    last_round: bool,
}

impl api::Batch for UpdateBatch<'_> {
    type Item = MappedRow;
    type Answer = Vec<RowFate<()>>;

    async fn send(&self, rows: &[MappedRow]) -> Call<Self::Answer> {
        let updates: Vec<CustomerUpdate> = rows
            .iter()
            .filter_map(|r| {
                let fields = update_fields(self.run, r)?.fields;
                self.run.note(r.id.row, || {
                    super::Note::Customer(would_change(&fields, r.current.as_ref()))
                });
                Some(CustomerUpdate {
                    customer_id: r.update_of?,
                    fields,
                })
            })
            .collect();
        let customers = updates.iter().collect();
        self.run.write(&UpdateCustomers { customers }).await
    }

    async fn settle(&self, rows: Vec<MappedRow>, call: Call<Self::Answer>) {
        let run = self.run;
        run.observe(&call);
        let fates = RowFate::of_rows(&call.result, rows.len());
        let mut entries = Vec::with_capacity(rows.len());
        let mut settled = Vec::with_capacity(rows.len());
        let mut gone_rows = Vec::new();
        for (mut row, fate) in rows.into_iter().zip(&fates) {
            let customer_id = row.update_of.take().unwrap_or_default();
            let adopted = row.adopted;
            let mut ev = fate_event(
                row.id,
                Stage::Customer,
                None,
                call.attempts,
                fate,
                |ev, _| {
                    ev.action = Some(if adopted {
                        Action::Adopted
                    } else {
                        Action::Updated
                    });
                },
            );
            ev.customer_id = Some(customer_id);
            if let (RowFate::Done(()), Some(note)) =
                (fate, update_fields(run, &row).and_then(|p| p.note()))
            {
                ev.message = Some(note);
            }
            if adopted {
                ev.reconciled = Some(true);
                if matches!(fate, RowFate::Done(())) {
                    run.progress.reconciled.fetch_add(1, Ordering::Relaxed);
                    ev.message = Some(
                        "found after an unknown outcome: adopted, not created again, and updated with the row's fields".into(),
                    );
                }
            }
            let gone = fate.says_missing("customer");
            if gone && !self.last_round && !run.abort.is_set() {
                row.gone_from = Some(customer_id);
                row.adopted = false;
                gone_rows.push((row, ev));
                continue;
            }
            match fate {
                RowFate::Done(()) => {
                    // An `if_empty` field left out for want of Thulium's
                    // value is not proven written: the row's hash is not
                    // learnt, so the next night looks again.
                    let proven = update_fields(run, &row).is_none_or(|p| p.not_known.is_empty());
                    let hash = row_hash(run, &row).filter(|_| proven);
                    run.learn_customer(&row, customer_id, hash)
                }
                _ if gone => {
                    run.learn(Learnt::ForgetCustomer { customer_id });
                    ev.message = Some(format!(
                        "{}: customer {customer_id} is gone; retry looks the row up again",
                        ev.message.unwrap_or_default()
                    ));
                    ev.retryable = Some(true);
                }
                _ => {}
            }
            entries.push(Entry::Row(ev));
            let state = if gone {
                // Its later stages are recorded skipped, with the reason.
                CustomerState::NotCreated(format!("customer {customer_id} is gone"))
            } else {
                existing(run, &mut row, customer_id);
                CustomerState::Id(customer_id)
            };
            settled.push((row, state));
        }
        run.record(entries).await;
        self.settled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(settled);
        self.gone
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(gone_rows);
    }

    fn stopping(&self) -> Option<String> {
        self.run.abort.stopping()
    }
}
