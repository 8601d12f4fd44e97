//! `run`: the import pipeline, top to bottom.
//!
//! ```text
//! reader thread ──rows──▶ customer batcher ──▶ POST batch/customers (chunks)
//!      │ (invalid rows → ledger)        │ rows with an id (created or given)
//!      ▼                                ▼
//!                               downstream dispatcher ──▶ field-group items (per row)
//!                                                    ├──▶ campaign batcher ──▶ POST batch/crm_outbounds
//!                                                    ├──▶ PUT records_by_identifier (per row)
//!                                                    └──▶ feed records (per row)
//! ```
//!
//! Every call takes one of `--concurrency` permits and passes the shared rate
//! limiter in [`ApiClient`]; the channels are bounded, so memory does not
//! grow with the file. A call's permit is released before its rows are
//! handed on, so a full channel never holds a permit (no deadlock).
//!
//! Rows are recorded in the ledger per call: an intent before a call that is
//! not idempotent, the outcomes after. A row that fails a stage is `skipped`
//! at the stages that need its customer id.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinSet;

use crate::client::{ApiClient, Outcome, Reply};
use crate::ledger::{self, Entry, Intent, Ledger, RowEvent, Stage, Status};
use crate::mapping::{CampaignPayload, ItemPayload, RowPayloads, UpdatePayload};
use crate::source::{RowId, Source, SourceError};

/// Limits of one run.
#[derive(Debug, Clone)]
pub struct Limits {
    pub batch_size: usize,
    pub concurrency: usize,
    /// Consecutive failed calls before the circuit breaker stops the run.
    pub max_consecutive_failures: u32,
    pub max_failures: Option<u64>,
    pub max_failure_rate: Option<f64>,
}

/// A mapped row on its way through the stages.
#[derive(Debug, Clone)]
pub struct MappedRow {
    pub id: RowId,
    pub payloads: RowPayloads,
}

/// What the reader hands on.
#[derive(Debug)]
pub enum Read {
    Row(Box<MappedRow>),
    Invalid(RowId, Vec<crate::source::FieldError>),
    Fatal(SourceError),
}

/// Live counters for progress lines and thresholds.
#[derive(Debug, Default)]
pub struct Progress {
    pub rows_read: AtomicU64,
    pub bytes_read: AtomicU64,
    /// Indexed by stage slot, then status: customer, field_group, campaign, campaign_update, feed × ok, failed, unknown, skipped.
    pub counts: [[AtomicU64; 4]; 5],
    pub invalid: AtomicU64,
    /// Rows with at least one failed or unknown outcome.
    pub rows_failed: AtomicU64,
    /// Rows with an outcome recorded at every stage they go to (done,
    /// failed, unknown or invalid): what the progress bar's ETA follows,
    /// since rows are read ahead of the calls.
    pub rows_settled: AtomicU64,
}

fn stage_index(s: Stage) -> Option<usize> {
    Stage::SENDING.iter().position(|x| *x == s)
}

fn status_index(s: Status) -> Option<usize> {
    match s {
        Status::Ok => Some(0),
        Status::Failed => Some(1),
        Status::Unknown => Some(2),
        Status::Skipped => Some(3),
        Status::Invalid => None,
    }
}

/// Why and whether the run is stopping.
#[derive(Debug, Default)]
pub struct Abort {
    flag: AtomicBool,
    reason: Mutex<Option<String>>,
    /// How the process should exit: `true` for auth/breaker/Ctrl-C.
    notify: Notify,
}

impl Abort {
    pub fn trip(&self, reason: String) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            tracing::error!(reason = %reason, "Stopping the run.");
            *r = Some(reason);
        }
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
    pub fn reason(&self) -> Option<String> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Everything the workers share.
#[derive(Debug)]
struct Run {
    client: Arc<ApiClient>,
    ledger: Ledger,
    permits: Arc<Semaphore>,
    abort: Arc<Abort>,
    limits: Limits,
    progress: Arc<Progress>,
    consecutive_failures: AtomicU64,
    /// Outcomes still to come, per row number, for rows being sent.
    outstanding: Mutex<HashMap<u64, u32>>,
}

/// One row's outcome at one stage, ready to be written.
fn event(id: RowId, stage: Stage, status: Status) -> RowEvent {
    RowEvent {
        row: id.row,
        line: id.line,
        offset: id.offset,
        stage: Some(stage),
        status: Some(status),
        ..RowEvent::default()
    }
}

impl Run {
    /// Writes entries; a ledger that cannot be written stops the run (never
    /// send what cannot be written down).
    async fn record(&self, entries: Vec<Entry>) -> bool {
        for e in &entries {
            if let Entry::Row(ev) = e {
                self.count(ev);
            }
        }
        match self.ledger.write(&entries).await {
            Ok(()) => true,
            Err(e) => {
                self.abort.trip(e.to_string());
                false
            }
        }
    }

    fn count(&self, ev: &RowEvent) {
        let (Some(stage), Some(status)) = (ev.stage, ev.status) else {
            return;
        };
        if status == Status::Invalid {
            self.progress.invalid.fetch_add(1, Ordering::Relaxed);
            self.progress.rows_settled.fetch_add(1, Ordering::Relaxed);
            return;
        }
        {
            let mut outstanding = self.outstanding.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(left) = outstanding.get_mut(&ev.row) {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    outstanding.remove(&ev.row);
                    self.progress.rows_settled.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let (Some(s), Some(t)) = (stage_index(stage), status_index(status)) {
            self.progress.counts[s][t].fetch_add(1, Ordering::Relaxed);
        }
        if matches!(status, Status::Failed | Status::Unknown) {
            let failed = self.progress.rows_failed.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(max) = self.limits.max_failures {
                if failed > max {
                    self.abort
                        .trip(format!("more than --max-failures {max} rows failed"));
                }
            }
            if let Some(rate) = self.limits.max_failure_rate {
                let read = self.progress.rows_read.load(Ordering::Relaxed).max(1);
                if read >= 100 && failed as f64 * 100.0 / read as f64 > rate {
                    self.abort.trip(format!(
                        "more than --max-failure-rate {rate}% of rows failed ({failed} of {read})"
                    ));
                }
            }
        }
    }

    /// Records rows as not sent at a stage because the run is stopping, so
    /// that no row looks done when a stage it needed never ran.
    async fn stopped(&self, ids: &[RowId], stage: Stage, group: Option<usize>) {
        let reason = self
            .abort
            .reason()
            .unwrap_or_else(|| "the run was stopped".into());
        let entries = ids
            .iter()
            .map(|id| {
                let mut ev = event(*id, stage, Status::Skipped);
                ev.group = group;
                ev.message = Some(format!("not sent: the run stopped ({reason})"));
                ev.retryable = Some(true);
                Entry::Row(ev)
            })
            .collect();
        self.record(entries).await;
    }

    /// Feeds the circuit breaker with one call's fate.
    fn call_went(&self, ok: bool) {
        if ok {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        } else {
            let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            let max = u64::from(self.limits.max_consecutive_failures);
            if max > 0 && n >= max {
                self.abort.trip(format!(
                    "{n} calls in a row failed (circuit breaker, --max-consecutive-failures {max})"
                ));
            }
        }
    }

    /// Outcome of a whole call that did not answer per row, as row events.
    fn whole_call(
        &self,
        reply: &Reply,
        ids: &[RowId],
        stage: Stage,
        group: Option<usize>,
    ) -> Vec<Entry> {
        let (status, http_status, message, retryable) = match &reply.outcome {
            Outcome::Answered { .. } => return Vec::new(),
            Outcome::Rejected { status, message } => {
                (Status::Failed, Some(*status), message.clone(), false)
            }
            Outcome::Unauthorized { status, message } => {
                self.abort.trip(format!(
                    "HTTP {status}: {message}: the password is wrong, or the API user may not call this method (API users get per-method permissions in Administracja → Użytkownicy → Użytkownicy API)"
                ));
                (Status::Failed, Some(*status), message.clone(), true)
            }
            Outcome::Unknown { message } => (
                Status::Unknown,
                None,
                format!("{message}; the call may have been applied: `retry` reconciles it"),
                false,
            ),
            Outcome::GaveUp {
                http_status,
                message,
            } => (Status::Failed, *http_status, message.clone(), true),
        };
        ids.iter()
            .map(|id| {
                let mut ev = event(*id, stage, status);
                ev.group = group;
                ev.http_status = http_status;
                ev.message = Some(message.clone());
                ev.attempts = Some(reply.attempts);
                ev.retryable = Some(retryable);
                Entry::Row(ev)
            })
            .collect()
    }
}

/// How the run ended.
#[derive(Debug)]
pub struct RunEnd {
    pub rows_read: u64,
    pub aborted: Option<String>,
    pub fatal: Option<String>,
}

/// Reads and maps every row of a file, for [`run`].
pub fn rows_of(
    mut source: Source<std::fs::File>,
    plan: Arc<crate::mapping::Plan>,
) -> impl Iterator<Item = Read> + Send + 'static {
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let item = match source.next_row()? {
            Err(e) => {
                done = true;
                Read::Fatal(e)
            }
            Ok(Err(bad)) => Read::Invalid(bad.id, vec![bad.error]),
            Ok(Ok(row)) => match plan.map_row(&row) {
                Ok(payloads) => Read::Row(Box::new(MappedRow {
                    id: row.id,
                    payloads,
                })),
                Err(errors) => Read::Invalid(row.id, errors),
            },
        };
        Some(item)
    })
}

/// Runs the import of the rows `feed` yields (read and mapped on a thread
/// of their own) into the ledger.
pub async fn run(
    feed: impl Iterator<Item = Read> + Send + 'static,
    client: Arc<ApiClient>,
    ledger: Ledger,
    limits: Limits,
    abort: Arc<Abort>,
    progress: Arc<Progress>,
) -> RunEnd {
    let run = Arc::new(Run {
        client,
        ledger,
        permits: Arc::new(Semaphore::new(limits.concurrency.max(1))),
        abort: abort.clone(),
        limits,
        progress: progress.clone(),
        consecutive_failures: AtomicU64::new(0),
        outstanding: Mutex::new(HashMap::new()),
    });

    // 1. The reader: a blocking thread that maps rows and hands them on.
    let (rows_tx, mut rows_rx) = mpsc::channel::<Read>(512);
    let reader_abort = abort.clone();
    let reader_progress = progress.clone();
    let reader = tokio::task::spawn_blocking(move || {
        for item in feed {
            if reader_abort.is_set() {
                break;
            }
            let fatal = matches!(item, Read::Fatal(_));
            if let Read::Row(r) = &item {
                reader_progress
                    .bytes_read
                    .store(r.id.offset, Ordering::Relaxed);
            }
            if rows_tx.blocking_send(item).is_err() || fatal {
                break;
            }
        }
    });

    // 2. Downstream of the customer stage.
    let (down_tx, down_rx) = mpsc::channel::<(MappedRow, CustomerState)>(1024);
    let downstream = tokio::spawn(downstream(run.clone(), down_rx));

    // 3. The customer batcher.
    let mut tasks = JoinSet::new();
    let mut pending: Vec<MappedRow> = Vec::new();
    let mut fatal = None;
    let mut rows_read = 0u64;
    while let Some(item) = rows_rx.recv().await {
        if abort.is_set() {
            break;
        }
        match item {
            Read::Fatal(e) => {
                fatal = Some(e.to_string());
                break;
            }
            Read::Invalid(id, errors) => {
                rows_read += 1;
                progress.rows_read.store(rows_read, Ordering::Relaxed);
                let mut ev = event(id, Stage::Mapping, Status::Invalid);
                ev.message = Some(
                    errors
                        .iter()
                        .map(|e| crate::check::RowIssue::new(id, e.clone()).to_string())
                        .collect::<Vec<_>>()
                        .join("; "),
                );
                run.record(vec![Entry::Row(ev)]).await;
            }
            Read::Row(row) => {
                rows_read += 1;
                progress.rows_read.store(rows_read, Ordering::Relaxed);
                match row.payloads.outcomes() {
                    0 => {
                        progress.rows_settled.fetch_add(1, Ordering::Relaxed);
                    }
                    n => {
                        run.outstanding
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(row.id.row, n);
                    }
                }
                if row.payloads.customer.is_some() {
                    pending.push(*row);
                    if pending.len() >= run.limits.batch_size {
                        spawn_customers(&run, &mut tasks, std::mem::take(&mut pending), &down_tx)
                            .await;
                    }
                } else {
                    let state = match row.payloads.existing_customer_id {
                        Some(id) => CustomerState::Id(id),
                        None => CustomerState::NotNeeded,
                    };
                    if down_tx.send((*row, state)).await.is_err() {
                        break;
                    }
                }
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    drop(rows_rx);
    if !pending.is_empty() && !abort.is_set() {
        spawn_customers(&run, &mut tasks, pending, &down_tx).await;
    }
    while tasks.join_next().await.is_some() {}
    drop(down_tx);
    let _ = downstream.await;
    let _ = reader.await;
    let aborted = abort.reason();
    let end = ledger::End {
        rows_read,
        finished_at: ledger::now(),
        aborted: aborted.clone(),
    };
    let _ = run.ledger.write(&[Entry::End(end)]).await;
    RunEnd {
        rows_read,
        aborted,
        fatal,
    }
}

/// Where a row stands after the customer stage.
#[derive(Debug, Clone)]
enum CustomerState {
    Id(i64),
    /// Created nothing and has no id: later stages needing one are skipped.
    Failed(String),
    /// The row has no stage that needs a customer.
    NotNeeded,
}

async fn spawn_customers(
    run: &Arc<Run>,
    tasks: &mut JoinSet<()>,
    rows: Vec<MappedRow>,
    down: &mpsc::Sender<(MappedRow, CustomerState)>,
) {
    let Ok(permit) = run.permits.clone().acquire_owned().await else {
        return;
    };
    let run = run.clone();
    let down = down.clone();
    tasks.spawn(async move {
        let results = customers(&run, rows).await;
        drop(permit);
        for (row, state) in results {
            if down.send((row, state)).await.is_err() {
                break;
            }
        }
    });
}

/// `POST batch/customers` for a chunk, split in halves on a whole-call 4xx.
async fn customers(run: &Run, rows: Vec<MappedRow>) -> Vec<(MappedRow, CustomerState)> {
    if run.abort.is_set() {
        return Vec::new();
    }
    let intent = Intent {
        stage: Stage::Customer,
        group: None,
        rows: rows.iter().map(|r| r.id.row).collect(),
    };
    if !run.record(vec![Entry::Intent(intent)]).await {
        return Vec::new();
    }
    let mut done = Vec::with_capacity(rows.len());
    let mut stack = vec![rows];
    while let Some(chunk) = stack.pop() {
        let list: Vec<&Map<String, Value>> = chunk
            .iter()
            .filter_map(|r| r.payloads.customer.as_ref())
            .collect();
        let body = json!({ "customers": list }).to_string();
        let reply = run
            .client
            .call(Method::POST, "batch/customers", Some(body), false)
            .await;
        if let Outcome::Rejected { .. } = reply.outcome {
            if chunk.len() > 1 {
                tracing::info!(
                    rows = chunk.len(),
                    "Batch refused as a whole; splitting it."
                );
                let mut chunk = chunk;
                let second = chunk.split_off(chunk.len() / 2);
                stack.push(second);
                stack.push(chunk);
                continue;
            }
        }
        let ids: Vec<RowId> = chunk.iter().map(|r| r.id).collect();
        let mut entries = run.whole_call(&reply, &ids, Stage::Customer, None);
        let mut states: Vec<CustomerState> = Vec::with_capacity(chunk.len());
        if let Outcome::Answered { body, .. } = &reply.outcome {
            run.call_went(true);
            let answer: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            for (i, row) in chunk.iter().enumerate() {
                // Keyed by position; be liberal: an array answers by index.
                let entry = answer.get(i.to_string()).or_else(|| answer.get(i));
                let (ev, state) = customer_entry(row.id, entry, reply.attempts);
                entries.push(Entry::Row(ev));
                states.push(state);
            }
        } else {
            run.call_went(false);
            let reason = match &reply.outcome {
                Outcome::Unknown { .. } => "the customer's creation has an unknown outcome",
                _ => "the customer was not created",
            };
            states = vec![CustomerState::Failed(reason.into()); chunk.len()];
        }
        run.record(entries).await;
        done.extend(chunk.into_iter().zip(states));
    }
    done
}

/// Reads one per-customer answer: `{"http_status": 201, "customer_id": "13"}`
/// or `{"http_status": 400, "message": "..."}` (numbers accepted as strings
/// and the other way round).
fn customer_entry(id: RowId, entry: Option<&Value>, attempts: u32) -> (RowEvent, CustomerState) {
    let int = crate::client::lenient_int;
    let Some(entry) = entry else {
        let mut ev = event(id, Stage::Customer, Status::Unknown);
        ev.message = Some("the answer has no entry for this customer; it may have been created: `retry` reconciles it".into());
        ev.attempts = Some(attempts);
        return (
            ev,
            CustomerState::Failed("the customer's creation has an unknown outcome".into()),
        );
    };
    let http_status = int(entry.get("http_status")).and_then(|s| u16::try_from(s).ok());
    let customer_id = int(entry.get("customer_id"));
    let message = entry
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut ev = event(id, Stage::Customer, Status::Ok);
    ev.http_status = http_status;
    ev.attempts = Some(attempts);
    match (http_status, customer_id) {
        (Some(200..=299) | None, Some(cid)) => {
            ev.customer_id = Some(cid);
            (ev, CustomerState::Id(cid))
        }
        (Some(200..=299), None) => {
            ev.status = Some(Status::Unknown);
            ev.message =
                Some("created, but the answer has no customer_id: `retry` reconciles it".into());
            (
                ev,
                CustomerState::Failed("the customer id is unknown".into()),
            )
        }
        (_, _) => {
            ev.status = Some(Status::Failed);
            ev.retryable = Some(false);
            ev.message = Some(message.unwrap_or_else(|| "refused without a message".into()));
            (
                ev,
                CustomerState::Failed("the customer was not created".into()),
            )
        }
    }
}

/// The stages after the customer: per-row calls and the campaign batcher.
async fn downstream(run: Arc<Run>, mut rx: mpsc::Receiver<(MappedRow, CustomerState)>) {
    let mut tasks = JoinSet::new();
    let mut batcher = CampaignBatcher::default();
    loop {
        let next = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        let (row, state) = match next {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(_) => {
                // Quiet for a while: send what the campaign batcher holds.
                for chunk in batcher.drain() {
                    spawn_campaign(&run, &mut tasks, chunk).await;
                }
                continue;
            }
        };
        let MappedRow { id, payloads } = row;
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
            CustomerState::Id(c) => Ok(*c),
            CustomerState::Failed(reason) => Err(reason.clone()),
            CustomerState::NotNeeded => Err("no customer".into()),
        };
        let mut skipped = Vec::new();
        let mut skip = |stage: Stage, group: Option<usize>, reason: &str| {
            let mut ev = event(id, stage, Status::Skipped);
            ev.group = group;
            ev.message = Some(format!("not sent: {reason}"));
            skipped.push(Entry::Row(ev));
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
                Err(r) => skip(Stage::FieldGroup, Some(item.index), r),
            }
        }
        if let Some(update) = payloads.campaign_update {
            spawn_row(&run, &mut tasks, campaign_update(run.clone(), id, update)).await;
        }
        if let Some(feed) = payloads.feed {
            match &customer {
                Ok(c) => spawn_row(&run, &mut tasks, feed_record(run.clone(), id, *c, feed)).await,
                Err(r) => skip(Stage::Feed, None, r),
            }
        }
        if let Some(campaign) = payloads.campaign {
            match &customer {
                Ok(c) => {
                    for chunk in batcher.add(id, *c, campaign, run.limits.batch_size) {
                        spawn_campaign(&run, &mut tasks, chunk).await;
                    }
                }
                Err(r) => skip(Stage::Campaign, None, r),
            }
        }
        if !skipped.is_empty() {
            run.record(skipped).await;
        }
        while tasks.try_join_next().is_some() {}
    }
    // Whatever the batcher still holds is sent, or (if the run is stopping)
    // recorded as not sent by the campaign task itself.
    for chunk in batcher.drain() {
        spawn_campaign(&run, &mut tasks, chunk).await;
    }
    while tasks.join_next().await.is_some() {}
}

async fn spawn_row(
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
    pub record: Map<String, Value>,
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
    spawn_row(run, tasks, async move { campaign_records(&r, chunk).await }).await;
}

/// `POST batch/crm_outbounds/:id/records` (idempotent: `ALREADY_EXISTS` is
/// done), split in halves on a whole-call 4xx.
async fn campaign_records(run: &Run, chunk: CampaignChunk) {
    if run.abort.is_set() {
        let ids: Vec<RowId> = chunk.records.iter().map(|r| r.id).collect();
        return run.stopped(&ids, Stage::Campaign, None).await;
    }
    let campaign_id = chunk.campaign_id.clone();
    let mut stack = vec![chunk.records];
    while let Some(records) = stack.pop() {
        let list: Vec<Value> = records
            .iter()
            .map(|r| {
                let mut rec = Map::new();
                rec.insert("customer_id".into(), json!(r.customer_id));
                rec.extend(r.record.clone());
                Value::Object(rec)
            })
            .collect();
        let path = format!(
            "batch/crm_outbounds/{}/records",
            encode_segment(&campaign_id)
        );
        let reply = run
            .client
            .call(
                Method::POST,
                &path,
                Some(json!({ "records": list }).to_string()),
                true,
            )
            .await;
        if matches!(reply.outcome, Outcome::Rejected { .. }) && records.len() > 1 {
            let mut records = records;
            let second = records.split_off(records.len() / 2);
            stack.push(second);
            stack.push(records);
            continue;
        }
        let ids: Vec<RowId> = records.iter().map(|r| r.id).collect();
        let mut entries = run.whole_call(&reply, &ids, Stage::Campaign, None);
        if let Outcome::Answered { body, .. } = &reply.outcome {
            run.call_went(true);
            let answer: Value = serde_json::from_str(body).unwrap_or(Value::Null);
            for r in &records {
                entries.push(Entry::Row(campaign_entry(
                    r,
                    answer.get(r.customer_id.to_string()),
                    reply.attempts,
                )));
            }
        } else {
            run.call_went(false);
        }
        run.record(entries).await;
    }
}

/// Reads one keyed campaign answer: ADDED and ALREADY_EXISTS are done.
fn campaign_entry(r: &PendingRecord, entry: Option<&Value>, attempts: u32) -> RowEvent {
    let mut ev = event(r.id, Stage::Campaign, Status::Ok);
    ev.customer_id = Some(r.customer_id);
    ev.attempts = Some(attempts);
    let Some(entry) = entry else {
        ev.status = Some(Status::Failed);
        ev.retryable = Some(true);
        ev.message = Some(format!(
            "the answer has no entry for customer {}",
            r.customer_id
        ));
        return ev;
    };
    let int = crate::client::lenient_int;
    ev.http_status = int(entry.get("http_status")).and_then(|s| u16::try_from(s).ok());
    ev.record_id = int(entry.get("record_id"));
    let status = entry
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_ascii_uppercase();
    let ok = match status.as_str() {
        "ADDED" | "ALREADY_EXISTS" => true,
        "FAILED" => false,
        _ => matches!(ev.http_status, Some(200..=299)),
    };
    if status == "ALREADY_EXISTS" {
        ev.message = Some("already in the campaign".into());
    }
    if !ok {
        ev.status = Some(Status::Failed);
        ev.retryable = Some(false);
        ev.message = Some(
            entry
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("refused without a message")
                .to_string(),
        );
    }
    ev
}

/// `POST customer_field_group_items`: one item, not idempotent.
async fn field_group_item(run: Arc<Run>, id: RowId, customer_id: i64, item: ItemPayload) {
    let group = Some(item.index);
    if run.abort.is_set() {
        return run.stopped(&[id], Stage::FieldGroup, group).await;
    }
    let intent = Intent {
        stage: Stage::FieldGroup,
        group,
        rows: vec![id.row],
    };
    if !run.record(vec![Entry::Intent(intent)]).await {
        return;
    }
    let body =
        json!({"group_id": item.group_id, "customer_id": customer_id, "values": item.values})
            .to_string();
    let reply = run
        .client
        .call(
            Method::POST,
            "customer_field_group_items",
            Some(body),
            false,
        )
        .await;
    let mut entries = run.whole_call(&reply, &[id], Stage::FieldGroup, group);
    if let Outcome::Answered { body, .. } = &reply.outcome {
        run.call_went(true);
        let mut ev = event(id, Stage::FieldGroup, Status::Ok);
        ev.group = group;
        ev.customer_id = Some(customer_id);
        ev.attempts = Some(reply.attempts);
        let answer: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        ev.item_id = crate::client::lenient_int(answer.get("item_id"));
        entries.push(Entry::Row(ev));
    } else {
        run.call_went(false);
    }
    run.record(entries).await;
}

/// `PUT outbounds/:id/records_by_identifier/:identifier`: idempotent.
async fn campaign_update(run: Arc<Run>, id: RowId, update: UpdatePayload) {
    if run.abort.is_set() {
        return run.stopped(&[id], Stage::CampaignUpdate, None).await;
    }
    let path = format!(
        "outbounds/{}/records_by_identifier/{}",
        encode_segment(&update.campaign_id),
        encode_segment(&update.identifier)
    );
    let reply = run
        .client
        .call(
            Method::PUT,
            &path,
            Some(Value::Object(update.body).to_string()),
            true,
        )
        .await;
    let mut entries = run.whole_call(&reply, &[id], Stage::CampaignUpdate, None);
    if let Outcome::Answered { .. } = reply.outcome {
        run.call_went(true);
        let mut ev = event(id, Stage::CampaignUpdate, Status::Ok);
        ev.attempts = Some(reply.attempts);
        entries.push(Entry::Row(ev));
    } else {
        run.call_went(false);
    }
    run.record(entries).await;
}

/// `POST customers/:id/feed_records`: not idempotent.
async fn feed_record(run: Arc<Run>, id: RowId, customer_id: i64, body: Map<String, Value>) {
    if run.abort.is_set() {
        return run.stopped(&[id], Stage::Feed, None).await;
    }
    let intent = Intent {
        stage: Stage::Feed,
        group: None,
        rows: vec![id.row],
    };
    if !run.record(vec![Entry::Intent(intent)]).await {
        return;
    }
    let path = format!("customers/{customer_id}/feed_records");
    let reply = run
        .client
        .call(
            Method::POST,
            &path,
            Some(Value::Object(body).to_string()),
            false,
        )
        .await;
    let mut entries = run.whole_call(&reply, &[id], Stage::Feed, None);
    if let Outcome::Answered { .. } = reply.outcome {
        run.call_went(true);
        let mut ev = event(id, Stage::Feed, Status::Ok);
        ev.customer_id = Some(customer_id);
        ev.attempts = Some(reply.attempts);
        entries.push(Entry::Row(ev));
    } else {
        run.call_went(false);
    }
    run.record(entries).await;
}

/// Percent-encodes one URL path segment.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
