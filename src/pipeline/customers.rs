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

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{event, fate_event, join_ids, LookupReason, MappedRow, Run};
use crate::api::customers::{CreateCustomers, Created, UpdateCustomers};
use crate::api::payload::CustomerUpdate;
use crate::api::{self, Call, RowFate};
use crate::identity::{Finder, Found, RowKeys};
use crate::ledger::{Action, Entry, Intent, RowEvent, Stage, Status};
use crate::mapping::{ItemMode, OnMatch, OnMissing};
use crate::state::Learnt;

/// Where a row stands after the customer stage.
#[derive(Debug, Clone)]
pub(super) enum CustomerState {
    Id(i64),
    /// No customer was created (refused, failed, or not sent): later stages
    /// needing one are skipped with this reason.
    NotCreated(String),
    /// The creation's outcome is unknown: later stages are skipped until
    /// `retry` finds out.
    Unknown(String),
    /// The row has no stage that needs a customer.
    NotNeeded,
}

/// Rows handed downstream, with where their customer stands.
pub(super) type Downstream = mpsc::Sender<(MappedRow, CustomerState)>;

/// Drops the stages that need the row's customer (it has none).
fn drop_customer_stages(row: &mut MappedRow) {
    row.payloads.customer = None;
    row.payloads.field_groups.clear();
    row.payloads.campaign = None;
    row.payloads.feed = None;
}

/// The customer's payload as an update sends it (with `clear_empty`, the
/// empty cells as empty values), and its hash for the sync state.
fn update_fields(run: &Run, row: &MappedRow) -> Option<crate::api::payload::Customer> {
    let customer = row.payloads.customer.as_ref()?;
    let clear = run.sync.upsert.as_ref().is_some_and(|u| u.clear_empty);
    Some(if clear {
        customer.clearing(&row.payloads.cleared)
    } else {
        customer.clone()
    })
}

/// Finds a row's customer before anything is sent for it, and decides:
/// leave it (recorded here), update it, or create it. Returns the row as
/// it goes on (`update_of` set for an update, `customer` taken for a
/// customer already there) and the customer-stage event to record, if any.
pub(super) async fn resolve(run: Arc<Run>, mut row: MappedRow) -> (MappedRow, Option<RowEvent>) {
    let Some(reason) = row.lookup.take() else {
        return (row, None);
    };
    let Some(customer) = &row.payloads.customer else {
        return (row, None);
    };
    let keys = match &run.sync.upsert {
        Some(u) => u.keys.clone(),
        None => vec![crate::api::customers::SearchKey::Identifier],
    };
    row.keys = RowKeys::of(customer, &keys);
    let found = if row.keys.is_empty() {
        Found::Missing
    } else {
        let _permit = run.permits.acquire().await;
        // After an unknown outcome, only Thulium knows: not the state, not
        // an index read before the run.
        let fresh = Finder {
            index: None,
            state: None,
        };
        let finder = match reason {
            LookupReason::UnknownBefore => &fresh,
            LookupReason::Match => &run.sync.finder,
        };
        let (found, attempts) = finder.find(&run.client, &row.keys).await;
        if attempts > 0 {
            run.breaker_sees(matches!(found, Found::Failed(_)));
        }
        found
    };
    let mut ev = event(row.id, Stage::Customer, Status::Ok);
    let upsert = run.sync.upsert.clone();
    match (found, reason) {
        (Found::Matched { customer_id, key }, LookupReason::UnknownBefore) => {
            run.progress.reconciled.fetch_add(1, Ordering::Relaxed);
            ev.customer_id = Some(customer_id);
            ev.reconciled = Some(true);
            ev.action = Some(Action::Adopted);
            ev.message = Some(format!(
                "found by {} after an unknown outcome: adopted, not created again",
                key.name()
            ));
            run.learn_customer(&row, customer_id, row_hash(&run, &row));
            existing(&run, &mut row, customer_id);
            (row, Some(ev))
        }
        (Found::Matched { customer_id, .. }, LookupReason::Match) => {
            ev.customer_id = Some(customer_id);
            let on_match = upsert.as_ref().map_or(OnMatch::Update, |u| u.on_match);
            if on_match == OnMatch::Skip {
                ev.action = Some(Action::SkippedExisting);
                ev.message = Some(
                    "matched an existing customer: left as it is (on_match = \"skip\")".into(),
                );
                run.learn_customer(&row, customer_id, None);
                existing(&run, &mut row, customer_id);
                return (row, Some(ev));
            }
            let hash = update_fields(&run, &row).map(|c| crate::state::payload_hash(&c));
            if let (Some(hash), false) = (hash, run.sync.full) {
                if run.unchanged(customer_id, "customer", hash).is_some() {
                    ev.action = Some(Action::Unchanged);
                    existing(&run, &mut row, customer_id);
                    return (row, Some(ev));
                }
            }
            row.update_of = Some(customer_id);
            upsert_items(&run, &mut row);
            (row, None)
        }
        (Found::Missing, LookupReason::UnknownBefore) => (row, None),
        (Found::Missing, LookupReason::Match) => {
            if upsert
                .as_ref()
                .is_some_and(|u| u.on_missing == OnMissing::Skip)
            {
                ev.action = Some(Action::SkippedMissing);
                ev.message =
                    Some("no customer matched: not created (on_missing = \"skip\")".into());
                drop_customer_stages(&mut row);
                return (row, Some(ev));
            }
            (row, None)
        }
        (Found::Ambiguous { ids, key, value }, reason) => {
            run.progress.duplicates.fetch_add(1, Ordering::Relaxed);
            ev.status = Some(Status::Failed);
            ev.retryable = Some(false);
            ev.message = Some(Found::ambiguity(&ids, &key, &value));
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
                ev.status = Some(Status::Failed);
                ev.retryable = Some(true);
                ev.message = Some(format!("could not look the customer up: {e}"));
            }
            drop_customer_stages(&mut row);
            (row, Some(ev))
        }
    }
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
    if run.sync.upsert.is_some() {
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
        let intent = Intent {
            stage: Stage::Customer,
            group: None,
            rows: rows.iter().map(|r| r.id.row).collect(),
        };
        if !run.record(vec![Entry::Intent(intent)]).await {
            return settled;
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
            let fresh = Finder {
                index: None,
                state: None,
            };
            let (found, _) = fresh.find(&run.client, &row.keys).await;
            let mut ev = event(row.id, Stage::Customer, Status::Ok);
            match found {
                Found::Matched { customer_id, key } => {
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
                Found::Ambiguous { ids, key, value } => {
                    ev.status = Some(Status::Failed);
                    ev.retryable = Some(false);
                    ev.message = Some(Found::ambiguity(&ids, &key, &value));
                    run.record(vec![Entry::Row(ev)]).await;
                    drop_customer_stages(&mut row);
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

fn row_hash(run: &Run, row: &MappedRow) -> Option<crate::identity::KeyHash> {
    update_fields(run, row).map(|c| crate::state::payload_hash(&c))
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
        self.run.client.send(&CreateCustomers { customers }).await
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
            let state = match fate {
                RowFate::Done(c) => {
                    run.learn_customer(&row, c.customer_id, row_hash(run, &row));
                    CustomerState::Id(c.customer_id)
                }
                RowFate::Unknown { .. }
                    if run.sync.upsert.is_some()
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
/// its row goes on downstream with its id.
async fn update_customers(run: &Run, rows: Vec<MappedRow>) -> Vec<(MappedRow, CustomerState)> {
    let batch = UpdateBatch {
        run,
        settled: Mutex::new(Vec::with_capacity(rows.len())),
    };
    api::bisect(&batch, rows).await;
    batch
        .settled
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
}

struct UpdateBatch<'a> {
    run: &'a Run,
    settled: Mutex<Vec<(MappedRow, CustomerState)>>,
}

impl api::Batch for UpdateBatch<'_> {
    type Item = MappedRow;
    type Answer = Vec<RowFate<()>>;

    async fn send(&self, rows: &[MappedRow]) -> Call<Self::Answer> {
        let updates: Vec<CustomerUpdate> = rows
            .iter()
            .filter_map(|r| {
                Some(CustomerUpdate {
                    customer_id: r.update_of?,
                    fields: update_fields(self.run, r)?,
                })
            })
            .collect();
        let customers = updates.iter().collect();
        self.run.client.send(&UpdateCustomers { customers }).await
    }

    async fn settle(&self, rows: Vec<MappedRow>, call: Call<Self::Answer>) {
        let run = self.run;
        run.observe(&call);
        let fates = RowFate::of_rows(&call.result, rows.len());
        let mut entries = Vec::with_capacity(rows.len());
        let mut settled = Vec::with_capacity(rows.len());
        for (mut row, fate) in rows.into_iter().zip(&fates) {
            let customer_id = row.update_of.take().unwrap_or_default();
            let mut ev = fate_event(
                row.id,
                Stage::Customer,
                None,
                call.attempts,
                fate,
                |ev, _| {
                    ev.action = Some(Action::Updated);
                },
            );
            ev.customer_id = Some(customer_id);
            let gone = matches!(
                fate,
                RowFate::Refused {
                    http_status: Some(404),
                    ..
                }
            );
            match fate {
                RowFate::Done(()) => run.learn_customer(&row, customer_id, row_hash(run, &row)),
                _ if gone => {
                    // The customer the key named is gone: forget it, so
                    // that the next run looks the key up again.
                    for (_, key) in row.keys.hashes() {
                        run.learn(Learnt::Forget { key });
                    }
                    ev.message = Some(format!(
                        "{}: customer {customer_id} is gone; the next run looks the row up again",
                        ev.message.unwrap_or_default()
                    ));
                    ev.retryable = Some(true);
                }
                _ => {}
            }
            entries.push(Entry::Row(ev));
            let state = if gone {
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
    }

    fn stopping(&self) -> Option<String> {
        self.run.abort.stopping()
    }
}
