//! The stages after the customer: field-group items and feed records per
//! row, campaign records in chunks per campaign, campaign record edits per
//! row. Each needs the row's customer id (but the record edit); with a
//! sync state, a stage whose payload is what was sent before is not sent
//! again (`"action": "unchanged"`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::customers::CustomerState;
use super::{event, fate_event, MappedRow, Run};
use crate::api::campaigns::{AddRecords, Added, UpdateRecord};
use crate::api::feed::CreateFeedRecord;
use crate::api::field_groups::{CreateItem, ItemCreated, UpdateItem};
use crate::api::payload::{CampaignRecord, FeedMessage, FeedRecord, NewItem, RecordFields};
use crate::api::{self, Call, RowFate};
use crate::identity::KeyHash;
use crate::ledger::{Action, Entry, Stage, Status};
use crate::mapping::{CampaignPayload, FeedOnMatch, ItemMode, ItemPayload, UpdatePayload};
use crate::source::RowId;
use crate::state::{payload_hash, Learnt};

/// A row's customer, as the later stages need it.
#[derive(Debug, Clone, Copy)]
struct Customer {
    id: i64,
    /// It existed before this run (matched): the sync state may know what
    /// was sent to it.
    existed: bool,
}

/// The stages after the customer: per-row calls and the campaign batcher.
pub(super) async fn downstream(run: Arc<Run>, mut rx: mpsc::Receiver<(MappedRow, CustomerState)>) {
    let mut tasks = JoinSet::new();
    let mut batcher = CampaignBatcher::default();
    // Outcomes known without a call (skipped, unchanged), written in groups.
    let mut known: Vec<Entry> = Vec::new();
    loop {
        if known.len() >= super::KNOWN_GROUP {
            run.record(std::mem::take(&mut known)).await;
        }
        let next = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        let (row, state) = match next {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(_) => {
                // Quiet for a while: send what the campaign batcher holds,
                // write what is known.
                for chunk in batcher.drain() {
                    spawn_campaign(&run, &mut tasks, chunk).await;
                }
                run.record(std::mem::take(&mut known)).await;
                continue;
            }
        };
        let MappedRow {
            id,
            payloads,
            existed,
            ..
        } = row;
        // Created by this run (not matched, not given by the file or a
        // ledger): nothing was ever sent to it before.
        let created = !existed && payloads.customer.is_some();
        if run.abort.is_set() {
            for item in &payloads.field_groups {
                run.stopped(&[id], Stage::FieldGroup, Some(item.index))
                    .await;
            }
            for (present, stage) in [
                (payloads.campaign.is_some(), Stage::Campaign),
                (payloads.campaign_update.is_some(), Stage::CampaignUpdate),
                (payloads.feed.is_some(), Stage::Feed),
            ] {
                if present {
                    run.stopped(&[id], stage, None).await;
                }
            }
            continue;
        }
        let customer = match &state {
            CustomerState::Id(c) => Ok(Customer { id: *c, existed }),
            CustomerState::NotCreated(reason) | CustomerState::Unknown(reason) => {
                Err(reason.clone())
            }
            CustomerState::NotNeeded => Err("no customer".into()),
        };
        let mut now = Vec::new();
        let skip = |now: &mut Vec<Entry>, stage: Stage, group: Option<usize>, reason: &str| {
            let mut ev = event(id, stage, Status::Skipped);
            ev.group = group;
            ev.message = Some(format!("not sent: {reason}"));
            now.push(Entry::Row(ev));
        };
        for item in payloads.field_groups {
            match &customer {
                Ok(c) => {
                    spawn_row(
                        &run,
                        &mut tasks,
                        field_group_item(run.clone(), id, *c, item),
                    )
                    .await
                }
                Err(r) => skip(&mut now, Stage::FieldGroup, Some(item.index), r),
            }
        }
        if let Some(update) = payloads.campaign_update {
            let customer = customer.as_ref().ok().copied();
            match unchanged_update(&run, id, customer, &update) {
                Some(ev) => now.push(Entry::Row(ev)),
                None => {
                    spawn_row(
                        &run,
                        &mut tasks,
                        campaign_update(run.clone(), id, customer, update),
                    )
                    .await
                }
            }
        }
        if let (Ok(c), true, None) = (&customer, created, &payloads.feed) {
            // The state sees this customer's feed history from its start,
            // even if tonight's row has no message.
            run.learn(Learnt::FeedTracked { customer_id: c.id });
        }
        if let Some(feed) = payloads.feed {
            match &customer {
                Ok(c) => {
                    let hash = feed_hash(&feed);
                    match feed_plan(&run, *c, created, hash) {
                        FeedPlan::Sent => {
                            now.push(Entry::Row(unchanged_event(id, Stage::Feed, None, c.id)))
                        }
                        FeedPlan::Kept => {
                            let mut ev = event(id, Stage::Feed, Status::Ok);
                            ev.customer_id = Some(c.id);
                            ev.action = Some(Action::Kept);
                            ev.message = Some(format!(
                                "not sent: customer {} existed before this run and no state proves this message was not sent to it; [feed] on_match = \"send\" sends it",
                                c.id
                            ));
                            now.push(Entry::Row(ev));
                        }
                        FeedPlan::Send { track } => {
                            let record = FeedRecord::zowie(std::slice::from_ref(&feed));
                            spawn_row(
                                &run,
                                &mut tasks,
                                feed_record(run.clone(), id, c.id, record, hash, track),
                            )
                            .await
                        }
                    }
                }
                Err(r) => skip(&mut now, Stage::Feed, None, r),
            }
        }
        if let Some(campaign) = payloads.campaign {
            match &customer {
                Ok(c) => {
                    let hash = campaign_hash(&campaign);
                    if c.existed && run.unchanged(c.id, "campaign", hash).is_some() {
                        now.push(Entry::Row(unchanged_event(id, Stage::Campaign, None, c.id)));
                    } else {
                        for chunk in batcher.add(id, c.id, campaign, run.limits.batch_size) {
                            spawn_campaign(&run, &mut tasks, chunk).await;
                        }
                    }
                }
                Err(r) => skip(&mut now, Stage::Campaign, None, r),
            }
        }
        known.extend(now);
        while tasks.try_join_next().is_some() {}
    }
    run.record(known).await;
    // Whatever the batcher still holds is sent, or (if the run is stopping)
    // recorded as not sent by the bisection routine.
    for chunk in batcher.drain() {
        spawn_campaign(&run, &mut tasks, chunk).await;
    }
    while tasks.join_next().await.is_some() {}
}

/// The sync state's hash of a field-group item (the block's group and
/// values as sent).
pub(super) fn item_hash(item: &ItemPayload) -> KeyHash {
    payload_hash(&(item.group_id, &item.values))
}

/// The sync state's hash of a campaign record (the campaign and the record's
/// fields).
pub(super) fn campaign_hash(campaign: &CampaignPayload) -> KeyHash {
    payload_hash(&(&campaign.campaign_id, &campaign.record))
}

/// The sync state's hash of a campaign record edit.
pub(super) fn update_hash(update: &UpdatePayload) -> KeyHash {
    payload_hash(&(&update.campaign_id, &update.identifier, &update.body))
}

/// The sync state's hash of a feed message (text, author, time: not its id,
/// which defaults to the row number and moves with the file).
pub(super) fn feed_hash(feed: &FeedMessage) -> KeyHash {
    payload_hash(&(&feed.payload, &feed.author, &feed.time))
}

/// A stage not sent because its payload is what the sync state says was
/// sent before.
fn unchanged_event(
    id: RowId,
    stage: Stage,
    group: Option<usize>,
    customer_id: i64,
) -> crate::ledger::RowEvent {
    let mut ev = event(id, stage, Status::Ok);
    ev.group = group;
    ev.customer_id = Some(customer_id);
    ev.action = Some(Action::Unchanged);
    ev
}

/// A campaign record edit whose body is the one sent before, if it is.
fn unchanged_update(
    run: &Run,
    id: RowId,
    customer: Option<Customer>,
    update: &UpdatePayload,
) -> Option<crate::ledger::RowEvent> {
    let c = customer.filter(|c| c.existed)?;
    let hash = update_hash(update);
    run.unchanged(c.id, "campaign_update", hash)?;
    Some(unchanged_event(id, Stage::CampaignUpdate, None, c.id))
}

pub(super) async fn spawn_row(
    run: &Arc<Run>,
    tasks: &mut JoinSet<()>,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let Ok(permit) = run.permits.clone().acquire_owned().await else {
        return;
    };
    tasks.spawn(async move {
        work.await;
        drop(permit);
    });
}

/// One campaign record waiting for its chunk.
#[derive(Debug, Clone)]
pub struct PendingRecord {
    pub id: RowId,
    pub customer_id: i64,
    pub record: RecordFields,
    /// The hash of the campaign and record, for the sync state.
    pub hash: KeyHash,
}

/// A chunk for one campaign call.
#[derive(Debug, Clone)]
pub struct CampaignChunk {
    pub campaign_id: String,
    pub records: Vec<PendingRecord>,
}

/// Groups campaign records into calls: by campaign id, at most `limit` per
/// call, in arrival order, and never two records for one customer in one call
/// (the answer is keyed by customer id, so they would collide).
#[derive(Debug, Default)]
pub struct CampaignBatcher {
    open: HashMap<String, CampaignChunk>,
    order: Vec<String>,
}

impl CampaignBatcher {
    /// Adds a record; returns the chunks that are now ready.
    pub fn add(
        &mut self,
        id: RowId,
        customer_id: i64,
        payload: CampaignPayload,
        limit: usize,
    ) -> Vec<CampaignChunk> {
        let mut ready = Vec::new();
        let hash = campaign_hash(&payload);
        let CampaignPayload {
            campaign_id,
            record,
        } = payload;
        if let Some(open) = self.open.get(&campaign_id) {
            if open.records.iter().any(|r| r.customer_id == customer_id) {
                ready.extend(self.take(&campaign_id));
            }
        }
        if !self.open.contains_key(&campaign_id) {
            self.order.push(campaign_id.clone());
        }
        let chunk = self
            .open
            .entry(campaign_id.clone())
            .or_insert_with(|| CampaignChunk {
                campaign_id: campaign_id.clone(),
                records: Vec::new(),
            });
        chunk.records.push(PendingRecord {
            id,
            customer_id,
            record,
            hash,
        });
        if chunk.records.len() >= limit.max(1) {
            ready.extend(self.take(&campaign_id));
        }
        ready
    }

    fn take(&mut self, campaign_id: &str) -> Option<CampaignChunk> {
        self.order.retain(|c| c != campaign_id);
        self.open.remove(campaign_id)
    }

    /// Every open chunk, oldest first.
    pub fn drain(&mut self) -> Vec<CampaignChunk> {
        let order = std::mem::take(&mut self.order);
        order
            .into_iter()
            .filter_map(|c| self.open.remove(&c))
            .collect()
    }
}

async fn spawn_campaign(run: &Arc<Run>, tasks: &mut JoinSet<()>, chunk: CampaignChunk) {
    let r = run.clone();
    spawn_row(run, tasks, async move {
        let batch = CampaignBatch {
            run: &r,
            campaign_id: &chunk.campaign_id,
        };
        api::bisect(&batch, chunk.records).await;
    })
    .await;
}

/// The campaign stage's calls for one campaign: add records (idempotent:
/// `ALREADY_EXISTS` is done), bisected on a whole-call 4xx.
struct CampaignBatch<'a> {
    run: &'a Run,
    campaign_id: &'a str,
}

impl api::Batch for CampaignBatch<'_> {
    type Item = PendingRecord;
    type Answer = Vec<RowFate<Added>>;

    async fn send(&self, records: &[PendingRecord]) -> Call<Self::Answer> {
        let records = records
            .iter()
            .map(|r| CampaignRecord {
                customer_id: r.customer_id,
                fields: &r.record,
            })
            .collect();
        let endpoint = AddRecords {
            campaign_id: self.campaign_id,
            records,
        };
        self.run.client.send(&endpoint).await
    }

    async fn settle(&self, records: Vec<PendingRecord>, call: Call<Self::Answer>) {
        self.run.observe(&call);
        let fates = RowFate::of_rows(&call.result, records.len());
        let entries = records
            .iter()
            .zip(&fates)
            .map(|(r, fate)| {
                let mut ev =
                    fate_event(r.id, Stage::Campaign, None, call.attempts, fate, |ev, a| {
                        ev.http_status = a.http_status;
                        ev.record_id = a.record_id;
                        if a.already && r.record != RecordFields::default() {
                            // The row asks for a status, an agent, a date:
                            // the API cannot change a record that is there,
                            // so this is not done, and the state must not
                            // say it was (the next run tries again).
                            ev.action = Some(Action::Kept);
                            ev.message = Some("already in the campaign; status not changed".into());
                            return;
                        }
                        if a.already {
                            ev.message = Some("already in the campaign".into());
                        }
                        self.run.learn_part(r.customer_id, "campaign", r.hash, None);
                    });
                ev.customer_id = Some(r.customer_id);
                Entry::Row(ev)
            })
            .collect();
        self.run.record(entries).await;
    }

    fn stopping(&self) -> Option<String> {
        self.run.abort.stopping()
    }
}

/// A field-group item: not idempotent. One whose creation had an unknown
/// outcome, or whose customer existed before (matching mode), is looked for
/// among the customer's items in its group first.
async fn field_group_item(run: Arc<Run>, id: RowId, customer: Customer, item: ItemPayload) {
    let group = Some(item.index);
    let part = run.sync.group_part(item.index);
    let hash = item_hash(&item);
    let customer_id = customer.id;
    let learn = |run: &Run, item_id: Option<i64>| run.learn_part(customer_id, &part, hash, item_id);
    let mut ev = event(id, Stage::FieldGroup, Status::Ok);
    ev.group = group;
    ev.customer_id = Some(customer_id);
    if run.abort.is_set() {
        return run.stopped(&[id], Stage::FieldGroup, group).await;
    }
    if item.mode == ItemMode::Upsert {
        // What the state knows: the same values, or the item to update.
        if let Some(known) = run
            .sync
            .state
            .as_ref()
            .and_then(|s| s.part(customer_id, &part))
        {
            if known.0 == hash && !run.sync.full {
                ev.item_id = known.1;
                ev.action = Some(Action::Unchanged);
                run.record(vec![Entry::Row(ev)]).await;
                return;
            }
            if let Some(item_id) = known.1 {
                return update_item(&run, ev, item_id, &item, || learn(&run, Some(item_id))).await;
            }
        }
    }
    if item.mode != ItemMode::Create {
        let call = run.client.find_items(customer_id, item.group_id).await;
        run.observe(&call);
        ev.attempts = Some(call.attempts);
        match call.result {
            Ok(items) if items.is_empty() => {}
            Ok(items) => {
                if let Some(found) = items.iter().find(|i| i.holds(&item.values)) {
                    ev.item_id = Some(found.item_id);
                    if item.mode == ItemMode::Reconcile {
                        ev.reconciled = Some(true);
                        ev.message = Some(
                            "found among the customer's items after an unknown outcome: adopted, not created again".into(),
                        );
                    } else {
                        ev.action = Some(Action::Unchanged);
                    }
                    learn(&run, Some(found.item_id));
                } else if item.mode == ItemMode::Upsert {
                    let item_id = items[0].item_id;
                    return update_item(&run, ev, item_id, &item, || learn(&run, Some(item_id)))
                        .await;
                } else {
                    ev.status = Some(Status::Failed);
                    ev.retryable = Some(false);
                    ev.message = Some(format!(
                        "mismatch: after an unknown outcome, customer {customer_id} has {} item(s) in field group {}, none with the values sent; not created again: look at them in Thulium",
                        items.len(),
                        item.group_id
                    ));
                }
                run.record(vec![Entry::Row(ev)]).await;
                return;
            }
            Err(e) => {
                if item.mode == ItemMode::Reconcile {
                    ev.status = Some(Status::Unknown);
                    ev.message = Some(format!("could not look the item up ({e}); still unknown"));
                } else {
                    ev.status = Some(Status::Failed);
                    ev.retryable = Some(true);
                    ev.message = Some(format!("could not look the customer's items up: {e}"));
                }
                run.record(vec![Entry::Row(ev)]).await;
                return;
            }
        }
    }
    let endpoint = CreateItem {
        item: NewItem {
            group_id: item.group_id,
            customer_id,
            values: &item.values,
        },
    };
    run.send_for_row(
        id,
        Stage::FieldGroup,
        group,
        endpoint,
        |ev, created: &ItemCreated| {
            ev.customer_id = Some(customer_id);
            ev.item_id = created.item_id;
            learn(&run, created.item_id);
        },
    )
    .await;
}

/// Replaces an existing item's values (`PUT customer_field_group_items/:id`,
/// idempotent), recorded on `ev` with `"action": "updated"`.
async fn update_item(
    run: &Run,
    ev: crate::ledger::RowEvent,
    item_id: i64,
    item: &ItemPayload,
    learn: impl FnOnce(),
) {
    let call = run
        .client
        .send(&UpdateItem {
            item_id,
            values: &item.values,
        })
        .await;
    run.observe(&call);
    let fate = match &call.result {
        Ok(fate) => fate,
        Err(e) => &RowFate::of_call(e),
    };
    let id = RowId {
        row: ev.row,
        line: ev.line,
        offset: ev.offset,
        fp: ev.fp.as_deref().and_then(crate::ledger::parse_fingerprint),
    };
    let mut out = fate_event(
        id,
        Stage::FieldGroup,
        ev.group,
        call.attempts,
        fate,
        |e, _| {
            e.action = Some(Action::Updated);
            learn();
        },
    );
    out.customer_id = ev.customer_id;
    out.item_id = Some(item_id);
    run.record(vec![Entry::Row(out)]).await;
}

/// A campaign record edit: idempotent, needs no customer.
async fn campaign_update(
    run: Arc<Run>,
    id: RowId,
    customer: Option<Customer>,
    update: UpdatePayload,
) {
    let hash = update_hash(&update);
    let endpoint = UpdateRecord {
        campaign_id: &update.campaign_id,
        identifier: &update.identifier,
        update: &update.body,
    };
    run.send_for_row(id, Stage::CampaignUpdate, None, endpoint, |_, _| {
        if let Some(c) = customer {
            run.learn_part(c.id, "campaign_update", hash, None);
        }
    })
    .await;
}

/// What becomes of a row's feed message. The API cannot list feed records,
/// so what the tool cannot prove unsent it does not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedPlan {
    /// The state says this message was sent to the customer (`--full`
    /// keeps this memory: the message cannot be checked, only repeated).
    Sent,
    /// The customer existed and nothing proves the message unsent.
    Kept,
    /// Send it; `track`: the customer was created by this run.
    Send { track: bool },
}

fn feed_plan(run: &Run, customer: Customer, created: bool, hash: KeyHash) -> FeedPlan {
    let state = run.sync.state.as_deref();
    if state.is_some_and(|s| s.has_feed(customer.id, hash)) {
        return FeedPlan::Sent;
    }
    if !customer.existed {
        return FeedPlan::Send { track: created };
    }
    if state.is_some_and(|s| s.knows_feed_of(customer.id))
        || run.sync.feed_on_match == FeedOnMatch::Send
    {
        return FeedPlan::Send { track: false };
    }
    FeedPlan::Kept
}

/// A contact-history entry: not idempotent, and not listable. With a
/// state, the message is written into it (committed) before the POST, and
/// taken back only when the call certainly created nothing (refused, or
/// not sent): a crash, or an unknown outcome, leaves it remembered as sent,
/// so it is never sent twice.
async fn feed_record(
    run: Arc<Run>,
    id: RowId,
    customer_id: i64,
    record: FeedRecord,
    hash: KeyHash,
    track: bool,
) {
    if run.abort.is_set() {
        return run.stopped(&[id], Stage::Feed, None).await;
    }
    if let Some(state) = run.sync.state.clone() {
        let written =
            tokio::task::spawn_blocking(move || state.will_send_feed(customer_id, hash, track))
                .await;
        let problem = match written {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        if let Some(problem) = problem {
            let mut ev = event(id, Stage::Feed, Status::Failed);
            ev.customer_id = Some(customer_id);
            ev.retryable = Some(true);
            ev.message = Some(format!(
                "not sent: the state could not record it first ({problem})"
            ));
            run.record(vec![Entry::Row(ev)]).await;
            return;
        }
    }
    let endpoint = CreateFeedRecord {
        customer_id,
        record: &record,
    };
    let status = run
        .send_for_row(id, Stage::Feed, None, endpoint, |ev, _| {
            ev.customer_id = Some(customer_id);
        })
        .await;
    // Failed (refused, or never processed) and skipped (not sent) created
    // nothing; ok and unknown may have.
    if matches!(status, None | Some(Status::Failed | Status::Skipped)) {
        if let Some(state) = run.sync.state.clone() {
            let taken =
                tokio::task::spawn_blocking(move || state.feed_not_sent(customer_id, hash)).await;
            if !matches!(taken, Ok(Ok(()))) {
                // The message stays remembered as sent: never sent twice,
                // at worst not sent by the next run (the ledger says failed).
                tracing::warn!(
                    customer_id,
                    "Cannot take a refused feed message back from the state."
                );
            }
        }
    }
}
