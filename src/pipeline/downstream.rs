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

use super::parts::{campaign_hash, feed_hash, item_hash, update_hash};
use super::CustomerState;
use super::{event, fate_event, MappedRow, Run};
use crate::api::campaigns::{AddRecords, Added, UpdateRecord};
use crate::api::feed::CreateFeedRecord;
use crate::api::field_groups::{choose_item, CreateItem, ItemChoice, ItemCreated, UpdateItem};
use crate::api::payload::{CampaignRecord, FeedRecord, NewItem, RecordFields};
use crate::api::{self, Call, RowFate};
use crate::hash::KeyHash;
use crate::ledger::{Action, Entry, Stage, Status};
use crate::mapping::{CampaignPayload, FeedOnMatch, ItemMode, ItemPayload, UpdatePayload};
use crate::source::RowId;
use crate::state::Learnt;

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
    let mut d = Dispatch {
        run,
        tasks: JoinSet::new(),
        batcher: CampaignBatcher::default(),
        known: Vec::new(),
    };
    loop {
        if d.known.len() >= super::KNOWN_GROUP {
            d.write_known().await;
        }
        let next = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        let (row, state) = match next {
            Ok(Some(item)) => item,
            Ok(None) => break,
            // Quiet for a while: send what the campaign batcher holds,
            // write what is known.
            Err(_) => {
                d.send_held_campaigns().await;
                d.write_known().await;
                continue;
            }
        };
        d.row(row, state).await;
        while d.tasks.try_join_next().is_some() {}
    }
    d.write_known().await;
    // Whatever the batcher still holds is sent, or (if the run is stopping)
    // recorded as not sent by the bisection routine.
    d.send_held_campaigns().await;
    while d.tasks.join_next().await.is_some() {}
}

/// The later stages' dispatcher: per-row calls on tasks, campaign records
/// batched, outcomes known without a call gathered to be written together.
struct Dispatch {
    run: Arc<Run>,
    tasks: JoinSet<()>,
    batcher: CampaignBatcher,
    /// Outcomes known without a call (skipped, unchanged, kept).
    known: Vec<Entry>,
}

impl Dispatch {
    async fn write_known(&mut self) {
        self.run.record(std::mem::take(&mut self.known)).await;
    }

    async fn send_held_campaigns(&mut self) {
        for chunk in self.batcher.drain() {
            spawn_campaign(&self.run, &mut self.tasks, chunk).await;
        }
    }

    /// One row's later stages, in order: items, record edit, feed,
    /// campaign record.
    async fn row(&mut self, row: MappedRow, state: CustomerState) {
        let MappedRow {
            id,
            payloads,
            existed,
            ..
        } = row;
        if self.run.abort.is_set() {
            return self.stopped(id, &payloads).await;
        }
        // Created by this run (not matched, not given by the file or a
        // ledger): nothing was ever sent to it before.
        let created = !existed && payloads.customer.is_some();
        let customer = match &state {
            CustomerState::Id(c) => Ok(Customer { id: *c, existed }),
            CustomerState::NotCreated(reason) | CustomerState::Unknown(reason) => {
                Err(reason.as_str())
            }
            CustomerState::NotNeeded => Err("no customer"),
        };
        self.items(id, customer, payloads.field_groups).await;
        if let Some(update) = payloads.campaign_update {
            self.record_edit(id, customer.ok(), update).await;
        }
        if let (Ok(c), true, None) = (&customer, created, &payloads.feed) {
            // The state sees this customer's feed history from its start,
            // even if tonight's row has no message.
            self.run.learn(Learnt::FeedTracked { customer_id: c.id });
        }
        if let Some(feed) = payloads.feed {
            self.feed(id, customer, created, feed).await;
        }
        if let Some(campaign) = payloads.campaign {
            self.campaign(id, customer, campaign).await;
        }
    }

    /// The run is stopping: every stage the row still had is recorded as
    /// not sent.
    async fn stopped(&self, id: RowId, payloads: &crate::mapping::RowPayloads) {
        for item in &payloads.field_groups {
            self.run
                .stopped(&[id], Stage::FieldGroup, Some(item.index))
                .await;
        }
        for (present, stage) in [
            (payloads.campaign.is_some(), Stage::Campaign),
            (payloads.campaign_update.is_some(), Stage::CampaignUpdate),
            (payloads.feed.is_some(), Stage::Feed),
        ] {
            if present {
                self.run.stopped(&[id], stage, None).await;
            }
        }
    }

    /// A stage that needs a customer the row has not: skipped, with why.
    fn skip(&mut self, id: RowId, stage: Stage, group: Option<usize>, reason: &str) {
        let mut ev = event(id, stage, Status::Skipped);
        ev.group = group;
        ev.message = Some(format!("not sent: {reason}"));
        self.known.push(Entry::Row(ev));
    }

    /// The row's field-group items: one task per group, whose blocks are
    /// placed together.
    async fn items(
        &mut self,
        id: RowId,
        customer: Result<Customer, &str>,
        items: Vec<ItemPayload>,
    ) {
        let c = match customer {
            Ok(c) => c,
            Err(reason) => {
                for item in items {
                    self.skip(id, Stage::FieldGroup, Some(item.index), reason);
                }
                return;
            }
        };
        let mut groups: Vec<Vec<ItemPayload>> = Vec::new();
        for item in items {
            match groups.iter_mut().find(|g| g[0].group_id == item.group_id) {
                Some(g) => g.push(item),
                None => groups.push(vec![item]),
            }
        }
        for items in groups {
            let work = field_group_items(self.run.clone(), id, c, items);
            spawn_row(&self.run, &mut self.tasks, work).await;
        }
    }

    /// The campaign record edit (needs no customer).
    async fn record_edit(&mut self, id: RowId, customer: Option<Customer>, update: UpdatePayload) {
        match unchanged_update(&self.run, id, customer, &update) {
            Some(ev) => self.known.push(Entry::Row(ev)),
            None => {
                let work = campaign_update(self.run.clone(), id, customer, update);
                spawn_row(&self.run, &mut self.tasks, work).await
            }
        }
    }

    /// The contact-history message: sent once per customer and message,
    /// proven ([`feed_plan`]).
    async fn feed(
        &mut self,
        id: RowId,
        customer: Result<Customer, &str>,
        created: bool,
        feed: crate::api::payload::FeedMessage,
    ) {
        let c = match customer {
            Ok(c) => c,
            Err(reason) => return self.skip(id, Stage::Feed, None, reason),
        };
        let hash = feed_hash(&feed);
        match feed_plan(&self.run, c, created, hash) {
            FeedPlan::Sent => {
                self.known
                    .push(Entry::Row(unchanged_event(id, Stage::Feed, None, c.id)))
            }
            FeedPlan::Kept => {
                let mut ev = event(id, Stage::Feed, Status::Ok);
                ev.customer_id = Some(c.id);
                ev.action = Some(Action::Kept);
                ev.message = Some(format!(
                    "not sent: customer {} existed before this run and no state proves this message was not sent to it; [feed] on_match = \"send\" sends it",
                    c.id
                ));
                self.known.push(Entry::Row(ev));
            }
            FeedPlan::Send { track } => {
                let record = FeedRecord::zowie(std::slice::from_ref(&feed));
                let work = feed_record(self.run.clone(), id, c.id, record, hash, track);
                spawn_row(&self.run, &mut self.tasks, work).await
            }
        }
    }

    /// The campaign record: batched per campaign, unless the state says
    /// the same record was added before.
    async fn campaign(
        &mut self,
        id: RowId,
        customer: Result<Customer, &str>,
        campaign: CampaignPayload,
    ) {
        let c = match customer {
            Ok(c) => c,
            Err(reason) => return self.skip(id, Stage::Campaign, None, reason),
        };
        let hash = campaign_hash(&campaign);
        if c.existed && self.run.unchanged(c.id, "campaign", hash).is_some() {
            self.known
                .push(Entry::Row(unchanged_event(id, Stage::Campaign, None, c.id)));
            return;
        }
        let size = self.run.limits.batch_size;
        for chunk in self.batcher.add(id, c.id, campaign, size) {
            spawn_campaign(&self.run, &mut self.tasks, chunk).await;
        }
    }
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
        self.run.write(&endpoint).await
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
                        // Sent with these very fields before (the state
                        // says so): the record holds them, unless a person
                        // changed it since, which the API cannot tell.
                        let sent_before = self
                            .run
                            .matching
                            .state
                            .as_ref()
                            .and_then(|s| s.part(r.customer_id, "campaign"))
                            .is_some_and(|(h, _)| h == r.hash);
                        if a.already && r.record != RecordFields::default() && !sent_before {
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

/// The field-group items of one row in one group, decided together: two
/// blocks of a row (two contracts) never land on one item. Created for a new
/// customer. For a customer that existed: the item the state remembers for
/// the block (unchanged when its hash is the same; updated otherwise, and
/// looked for again if Thulium says it is gone), else one of the customer's
/// items, chosen by [`choose_item`] among those no other block took. After
/// an unknown outcome: an item holding the values sent is adopted.
async fn field_group_items(run: Arc<Run>, id: RowId, customer: Customer, items: Vec<ItemPayload>) {
    let customer_id = customer.id;
    // 1. Blocks decided without a lookup: created, or as the state says.
    let mut blocks = sort_blocks(&run, id, customer_id, items).await;
    if blocks.to_find.is_empty() {
        return;
    }
    // 2. The customer's items in the group: one lookup for every block.
    let group_id = blocks.to_find[0].group_id;
    let call = run.client.find_items(customer_id, group_id).await;
    run.observe(&call);
    let found = match call.result {
        Ok(found) => found,
        Err(e) => {
            return items_not_listed(&run, id, customer_id, &blocks.to_find, call.attempts, &e)
                .await
        }
    };
    // 3. Each block's item, never one item for two blocks.
    let choices = choose_items(&run, customer_id, &mut blocks, &found);
    // 4. Each block written (or recorded) as its choice says.
    for (item, choice) in blocks.to_find.iter().zip(choices) {
        if run.abort.is_set() {
            run.stopped(&[id], Stage::FieldGroup, Some(item.index))
                .await;
            continue;
        }
        place_item(&run, id, customer_id, item, choice, &found, call.attempts).await;
    }
}

/// A row's blocks in one group, sorted before the customer's items are
/// read.
#[derive(Debug, Default)]
struct Blocks {
    /// To place among the customer's items.
    to_find: Vec<ItemPayload>,
    /// The item the state remembers for some of them (by block index).
    remembered: Vec<(usize, i64)>,
    /// Items already the row's other blocks'.
    taken: Vec<i64>,
}

/// Creates the blocks to create, records those the state says are as sent
/// before, and keeps the others (with the item the state remembers, a
/// preference only) to be placed among the customer's items.
async fn sort_blocks(run: &Run, id: RowId, customer_id: i64, items: Vec<ItemPayload>) -> Blocks {
    let mut blocks = Blocks::default();
    for item in items {
        if run.abort.is_set() {
            run.stopped(&[id], Stage::FieldGroup, Some(item.index))
                .await;
            continue;
        }
        match item.mode {
            ItemMode::Create => create_item(run, id, customer_id, &item).await,
            ItemMode::Reconcile => blocks.to_find.push(item),
            ItemMode::Upsert => {
                let part = run.matching.group_part(item.index);
                let known = run
                    .matching
                    .state
                    .as_ref()
                    .and_then(|s| s.part(customer_id, &part));
                let Some((known_hash, known_item)) = known else {
                    blocks.to_find.push(item);
                    continue;
                };
                if known_hash == item_hash(&item) && !run.matching.full {
                    let mut ev =
                        unchanged_event(id, Stage::FieldGroup, Some(item.index), customer_id);
                    ev.item_id = known_item;
                    blocks.taken.extend(known_item);
                    run.record(vec![Entry::Row(ev)]).await;
                    continue;
                }
                // With `match`, the key decides which item is the block's,
                // not what the state last wrote (the key may have moved).
                // The item the state remembers is only a preference: it is
                // written to once Thulium lists it among this customer's
                // items in the group (an id of a restored system may name
                // another customer's item now).
                if let Some(item_id) = known_item.filter(|_| item.match_ids.is_empty()) {
                    blocks.remembered.push((item.index, item_id));
                }
                blocks.to_find.push(item);
            }
        }
    }
    blocks
}

/// The customer's items could not be listed: each block waiting for them
/// is recorded (unknown after an unknown outcome, failed and retryable
/// otherwise).
async fn items_not_listed(
    run: &Run,
    id: RowId,
    customer_id: i64,
    to_find: &[ItemPayload],
    attempts: u32,
    e: &crate::api::CallError,
) {
    let entries = to_find
        .iter()
        .map(|item| {
            let mut ev = item_event(id, item, customer_id);
            ev.attempts = Some(attempts);
            if item.mode == ItemMode::Reconcile {
                ev.status = Some(Status::Unknown);
                ev.message = Some(format!("could not look the item up ({e}); still unknown"));
            } else {
                ev.status = Some(Status::Failed);
                ev.retryable = Some(true);
                ev.message = Some(format!("could not look the customer's items up: {e}"));
            }
            Entry::Row(ev)
        })
        .collect();
    run.record(entries).await;
}

/// Each block's item among `found`: a remembered item Thulium lists for
/// this customer first (one it does not list is gone, and forgotten), then
/// items holding every value of a block (so that a block choosing by the
/// most values shared never takes another's), then [`choose_item`].
fn choose_items(
    run: &Run,
    customer_id: i64,
    blocks: &mut Blocks,
    found: &[crate::api::field_groups::FoundItem],
) -> Vec<ItemChoice> {
    let Blocks {
        to_find,
        remembered,
        taken,
    } = blocks;
    let mut choices: Vec<Option<ItemChoice>> = to_find
        .iter()
        .map(|item| {
            let (_, item_id) = *remembered.iter().find(|(i, _)| *i == item.index)?;
            match found.iter().find(|f| f.item_id == item_id) {
                Some(f) if !taken.contains(&item_id) => {
                    taken.push(item_id);
                    Some(if f.holds(&item.values) {
                        ItemChoice::Holds(item_id)
                    } else {
                        ItemChoice::Update(item_id)
                    })
                }
                Some(_) => None,
                None => {
                    run.learn(Learnt::ForgetPart {
                        customer_id,
                        part: run.matching.group_part(item.index),
                    });
                    None
                }
            }
        })
        .collect();
    for (item, choice) in to_find.iter().zip(&mut choices) {
        if choice.is_some() {
            continue;
        }
        if let Some(same) = found
            .iter()
            .find(|f| !taken.contains(&f.item_id) && f.holds(&item.values))
        {
            taken.push(same.item_id);
            *choice = Some(ItemChoice::Holds(same.item_id));
        }
    }
    to_find
        .iter()
        .zip(choices)
        .map(|(item, choice)| {
            choice.unwrap_or_else(|| {
                let c = choose_item(found, taken, &item.values, &item.match_ids);
                if let ItemChoice::Update(i) | ItemChoice::Holds(i) = c {
                    taken.push(i);
                }
                c
            })
        })
        .collect()
}

/// One block placed: recorded as holding its values, created, updated, or
/// failed (a mismatch after an unknown outcome, an ambiguous item).
async fn place_item(
    run: &Run,
    id: RowId,
    customer_id: i64,
    item: &ItemPayload,
    choice: ItemChoice,
    found: &[crate::api::field_groups::FoundItem],
    attempts: u32,
) {
    let mut ev = item_event(id, item, customer_id);
    ev.attempts = Some(attempts);
    match (choice, item.mode) {
        (ItemChoice::Holds(item_id), mode) => {
            ev.item_id = Some(item_id);
            if mode == ItemMode::Reconcile {
                ev.reconciled = Some(true);
                ev.message = Some(
                    "found among the customer's items after an unknown outcome: adopted, not created again".into(),
                );
            } else {
                ev.action = Some(Action::Unchanged);
            }
            let part = run.matching.group_part(item.index);
            run.learn_part(customer_id, &part, item_hash(item), Some(item_id));
        }
        (ItemChoice::Create, _) | (ItemChoice::Update(_), ItemMode::Create) => {
            // (A block to create is never placed: created all the same.)
            return create_item(run, id, customer_id, item).await;
        }
        (ItemChoice::Update(item_id), ItemMode::Upsert) => {
            let now = found.iter().find(|f| f.item_id == item_id);
            run.note(id.row, || super::Note::Item {
                index: item.index,
                group_id: item.group_id,
                created: false,
                // What the update sends, under the block's update policies.
                changes: now
                    .map(|f| f.differs(&item_update(item, Some(f))))
                    .unwrap_or_default(),
            });
            return update_item(run, ev, item_id, item, now).await;
        }
        (ItemChoice::Update(_) | ItemChoice::Ambiguous(_), ItemMode::Reconcile) => {
            ev.status = Some(Status::Failed);
            ev.retryable = Some(false);
            ev.message = Some(format!(
                "mismatch: after an unknown outcome, customer {customer_id} has {} item(s) in field group {}, none with the values sent; not created again: look at them in Thulium",
                found.len(),
                item.group_id
            ));
        }
        (ItemChoice::Ambiguous(ids), _) => {
            ev.status = Some(Status::Failed);
            ev.retryable = Some(false);
            let why = if !item.match_ids.is_empty() {
                "they hold the same values of the match fields"
            } else if found.iter().all(|f| f.shares(&item.values) == 0) {
                "none shares a value with it"
            } else {
                "none holds all its values, and they share as many of them"
            };
            ev.message = Some(format!(
                "ambiguous item: items {} of customer {customer_id} in field group {} could each be this block's ({why}); nothing written: add `match` to the [[field_group]] or tidy the items in Thulium",
                crate::text::join_ids(&ids),
                item.group_id,
            ));
        }
    }
    run.record(vec![Entry::Row(ev)]).await;
}

/// A field-group event of one block, `ok` until said otherwise.
fn item_event(id: RowId, item: &ItemPayload, customer_id: i64) -> crate::ledger::RowEvent {
    let mut ev = event(id, Stage::FieldGroup, Status::Ok);
    ev.group = Some(item.index);
    ev.customer_id = Some(customer_id);
    ev
}

/// Creates an item (`POST customer_field_group_items`, not idempotent:
/// an intent first), remembered in the state with its id.
async fn create_item(run: &Run, id: RowId, customer_id: i64, item: &ItemPayload) {
    run.note(id.row, || super::Note::Item {
        index: item.index,
        group_id: item.group_id,
        created: true,
        changes: crate::api::field_groups::FoundItem {
            item_id: 0,
            group_id: None,
            customer_id: None,
            values: Vec::new(),
        }
        .differs(&item.values),
    });
    let part = run.matching.group_part(item.index);
    let hash = item_hash(item);
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
        Some(item.index),
        endpoint,
        |ev, created: &ItemCreated| {
            ev.customer_id = Some(customer_id);
            ev.item_id = created.item_id;
            run.learn_part(customer_id, &part, hash, created.item_id);
        },
    )
    .await;
}

/// Replaces an existing item's values (`PUT customer_field_group_items/:id`,
/// idempotent), recorded on `ev` with `"action": "updated"`. The item was
/// listed for the customer just before; one deleted since (404) is
/// forgotten, and `retry` places the block again.
async fn update_item(
    run: &Run,
    mut ev: crate::ledger::RowEvent,
    item_id: i64,
    item: &ItemPayload,
    now: Option<&crate::api::field_groups::FoundItem>,
) {
    let values = item_update(item, now);
    if values.is_empty() {
        // Every value that differs is the contact center's now.
        ev.action = Some(Action::Unchanged);
        ev.item_id = Some(item_id);
        let part = run.matching.group_part(item.index);
        let customer_id = ev.customer_id.unwrap_or_default();
        run.learn_part(customer_id, &part, item_hash(item), Some(item_id));
        run.record(vec![Entry::Row(ev)]).await;
        return;
    }
    // Its values before, durable before the update is sent.
    let image = now.map(|old| {
        crate::undo::images::Image::item(
            ev.row,
            item.index,
            ev.customer_id.unwrap_or_default(),
            item.group_id,
            old,
            &values,
        )
    });
    let id = RowId {
        row: ev.row,
        line: ev.line,
        offset: ev.offset,
        fp: ev.fp.as_deref().and_then(crate::ledger::parse_fingerprint),
    };
    if !run.before_images(image.into_iter().collect()).await {
        return run
            .stopped(&[id], Stage::FieldGroup, Some(item.index))
            .await;
    }
    let call = run
        .write(&UpdateItem {
            item_id,
            values: &values,
        })
        .await;
    run.observe(&call);
    let fate = match &call.result {
        Ok(fate) => fate,
        Err(e) => &RowFate::of_call(e),
    };
    let part = run.matching.group_part(item.index);
    let hash = item_hash(item);
    let customer_id = ev.customer_id.unwrap_or_default();
    let mut out = fate_event(
        id,
        Stage::FieldGroup,
        ev.group,
        call.attempts,
        fate,
        |e, _| {
            e.action = Some(Action::Updated);
            run.learn_part(customer_id, &part, hash, Some(item_id));
        },
    );
    if fate.says_missing("item") {
        run.learn(Learnt::ForgetPart { customer_id, part });
        out.retryable = Some(true);
        out.message = Some(format!(
            "item {item_id} is gone (deleted since it was listed): retry places the block again"
        ));
    }
    out.customer_id = ev.customer_id;
    out.item_id = Some(item_id);
    run.record(vec![Entry::Row(out)]).await;
}

/// The values an update of an item that exists sends, given its values
/// now (`now`, as the customer's items were listed): the one place the
/// `update` policies apply to items. `never` values are left out;
/// `if_empty` ones are sent only where the item's value is empty (a
/// value the listing does not show is empty: the item was read whole).
fn item_update(
    item: &ItemPayload,
    now: Option<&crate::api::field_groups::FoundItem>,
) -> Vec<crate::api::payload::ItemValue> {
    use crate::mapping::Policy;
    let policy = |id: i64| {
        item.policies
            .iter()
            .find(|(f, _)| *f == id)
            .map_or(Policy::Always, |(_, p)| *p)
    };
    item.values
        .iter()
        .filter(|v| match policy(v.field_id) {
            Policy::Always => true,
            Policy::Never => false,
            Policy::IfEmpty => now.is_some_and(|n| {
                n.values
                    .iter()
                    .filter(|(id, _)| *id == v.field_id)
                    .all(|(_, value)| crate::current::is_empty(value))
            }),
        })
        .cloned()
        .collect()
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
    let state = run.matching.state.as_deref();
    // A customer created by this run has no history yet, whatever the state
    // remembers for its id (another customer's, before a restore).
    if created {
        return FeedPlan::Send { track: true };
    }
    if state.is_some_and(|s| s.has_feed(customer.id, hash)) {
        return FeedPlan::Sent;
    }
    if !customer.existed {
        return FeedPlan::Send { track: false };
    }
    if state.is_some_and(|s| s.knows_feed_of(customer.id))
        || run.matching.feed_on_match == FeedOnMatch::Send
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
    if let Some(state) = run.matching.state.clone() {
        let written =
            tokio::task::spawn_blocking(move || state.will_send_feed(customer_id, hash, track))
                .await;
        let problem = match written {
            Ok(Ok(true)) => None,
            Ok(Ok(false)) => {
                // Another row of this run sent it to the same customer.
                let ev = unchanged_event(id, Stage::Feed, None, customer_id);
                run.record(vec![Entry::Row(ev)]).await;
                return;
            }
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
        if let Some(state) = run.matching.state.clone() {
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
