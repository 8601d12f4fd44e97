//! `run`: the import pipeline, top to bottom. It orchestrates — reading,
//! batching, stages, pacing, the ledger — and leaves every fact about the
//! API to [`crate::api`]: it asks "create these customers" and gets a typed
//! [`RowFate`] per row back.
//!
//! ```text
//! reader thread ──rows──▶ customer batcher ──▶ create customers (chunks, bisected)
//!      │ (invalid rows → ledger)        │ rows with an id (created or given)
//!      ▼                                ▼
//!                               downstream dispatcher ──▶ field-group items (per row)
//!                                                    ├──▶ campaign batcher ──▶ add campaign records (chunks, bisected)
//!                                                    ├──▶ edit campaign records (per row)
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

use futures::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::api::campaigns::{AddRecords, Added, UpdateRecord};
use crate::api::customers::{CreateCustomers, Created, SearchKey};
use crate::api::feed::CreateFeedRecord;
use crate::api::field_groups::{CreateItem, ItemCreated};
use crate::api::payload::{CampaignRecord, FeedRecord, NewItem, RecordFields};
use crate::api::{self, ApiClient, Call, Endpoint, RowFate};
use crate::ledger::{self, Entry, Intent, Ledger, RowEvent, Stage, Status};
use crate::mapping::{CampaignPayload, ItemPayload, RowPayloads, UpdatePayload};
use crate::source::{FieldError, RowId, Source, SourceError};

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
    /// Look the customer up before creating it.
    pub lookup: Option<CustomerLookup>,
    /// Outcomes known before anything is sent (a row invalid before that
    /// maps now; stages left as they were), recorded as the row comes in.
    pub first: Vec<RowEvent>,
}

impl MappedRow {
    /// A row read and mapped for the first time.
    pub fn new(id: RowId, payloads: RowPayloads) -> MappedRow {
        MappedRow {
            id,
            payloads,
            lookup: None,
            first: Vec::new(),
        }
    }
}

/// A customer to find before creating it: after an unknown outcome, by its
/// identifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerLookup {
    pub key: SearchKey,
    pub value: String,
}

/// What the reader hands on: a row ready to send, a row that cannot be
/// sent, or the end of reading because the source failed.
#[derive(Debug)]
pub enum Incoming {
    Mapped(Box<MappedRow>),
    Invalid(RowId, Vec<FieldError>),
    SourceFailed(SourceError),
}

/// Outcomes counted at one stage.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub unknown: AtomicU64,
    pub skipped: AtomicU64,
}

impl Tally {
    fn add(&self, status: Status) {
        let counter = match status {
            Status::Ok => &self.ok,
            Status::Failed => &self.failed,
            Status::Unknown => &self.unknown,
            Status::Skipped => &self.skipped,
            Status::Invalid => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every outcome counted.
    pub fn total(&self) -> u64 {
        [&self.ok, &self.failed, &self.unknown, &self.skipped]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Live counters for progress lines and thresholds.
#[derive(Debug, Default)]
pub struct Progress {
    pub rows_read: AtomicU64,
    pub bytes_read: AtomicU64,
    pub customer: Tally,
    pub field_group: Tally,
    pub campaign: Tally,
    pub campaign_update: Tally,
    pub feed: Tally,
    pub invalid: AtomicU64,
    /// Rows with at least one failed or unknown outcome.
    pub rows_failed: AtomicU64,
    /// Customers of unknown outcome found by a lookup and adopted.
    pub reconciled: AtomicU64,
    /// Customers a lookup found more than once (left alone).
    pub duplicates: AtomicU64,
    /// Rows of a failed-rows CSV left out: a stage's earlier outcome is
    /// unknown and cannot be looked up (`--include-unknown` sends them).
    pub left_unknown: AtomicU64,
    /// Rows with an outcome recorded at every stage they go to (done,
    /// failed, unknown or invalid): what the progress bar's ETA follows,
    /// since rows are read ahead of the calls.
    pub rows_settled: AtomicU64,
}

impl Progress {
    /// The counters of a sending stage.
    pub fn tally(&self, stage: Stage) -> Option<&Tally> {
        Some(match stage {
            Stage::Customer => &self.customer,
            Stage::FieldGroup => &self.field_group,
            Stage::Campaign => &self.campaign,
            Stage::CampaignUpdate => &self.campaign_update,
            Stage::Feed => &self.feed,
            Stage::Mapping => return None,
        })
    }
}

/// Why and whether the run is stopping.
#[derive(Debug, Default)]
pub struct Abort {
    flag: AtomicBool,
    reason: Mutex<Option<String>>,
}

impl Abort {
    /// Stops the run; the first reason given is the one reported.
    pub fn trip(&self, reason: String) {
        let mut r = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none() {
            tracing::error!(reason = %reason, "Stopping the run.");
            *r = Some(reason);
        }
        self.flag.store(true, Ordering::SeqCst);
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
    /// The reason, once the run is stopping.
    fn stopping(&self) -> Option<String> {
        self.is_set().then(|| {
            self.reason()
                .unwrap_or_else(|| "the run was stopped".into())
        })
    }
}

/// A row's outcomes still to come, and whether it already counts as failed
/// (`--max-failures` counts rows, not outcomes).
#[derive(Debug, Clone, Copy)]
struct Pending {
    left: u32,
    failed: bool,
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
    /// Rows being sent, by row number.
    pending: Mutex<HashMap<u64, Pending>>,
}

/// One row's outcome at one stage, ready to be written.
pub fn event(id: RowId, stage: Stage, status: Status) -> RowEvent {
    RowEvent {
        row: id.row,
        line: id.line,
        offset: id.offset,
        stage: Some(stage),
        status: Some(status),
        fp: id.fp.map(ledger::format_fingerprint),
        ..RowEvent::default()
    }
}

/// The event that records how a row fared in a call; for a row that was
/// done, `fill` adds what the answer said (ids).
pub fn fate_event<T>(
    id: RowId,
    stage: Stage,
    group: Option<usize>,
    attempts: u32,
    fate: &RowFate<T>,
    fill: impl FnOnce(&mut RowEvent, &T),
) -> RowEvent {
    let mut ev = event(id, stage, Status::Ok);
    ev.group = group;
    ev.attempts = (attempts > 0).then_some(attempts);
    match fate {
        RowFate::Done(t) => fill(&mut ev, t),
        RowFate::Refused {
            http_status,
            message,
        } => {
            ev.status = Some(Status::Failed);
            ev.http_status = *http_status;
            ev.message = Some(message.clone());
            ev.retryable = Some(false);
        }
        RowFate::Unknown { message } => {
            ev.status = Some(Status::Unknown);
            ev.message = Some(message.clone());
        }
        RowFate::Retryable {
            http_status,
            message,
        } => {
            ev.status = Some(Status::Failed);
            ev.http_status = *http_status;
            ev.message = Some(message.clone());
            ev.retryable = Some(true);
        }
        RowFate::NotSent { message } => {
            ev.status = Some(Status::Skipped);
            ev.message = Some(message.clone());
            ev.retryable = Some(true);
        }
    }
    ev
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
        }
        let failed = matches!(status, Status::Failed | Status::Unknown);
        let newly_failed = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get_mut(&ev.row) {
                Some(p) => {
                    let newly = failed && !p.failed;
                    p.failed |= failed;
                    p.left = p.left.saturating_sub(1);
                    if p.left == 0 {
                        pending.remove(&ev.row);
                        self.progress.rows_settled.fetch_add(1, Ordering::Relaxed);
                    }
                    newly
                }
                // A row invalid as a whole is never pending: it settles here.
                None if status == Status::Invalid => {
                    self.progress.rows_settled.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                None => failed,
            }
        };
        if status == Status::Invalid {
            return;
        }
        if let Some(tally) = self.progress.tally(stage) {
            tally.add(status);
        }
        if newly_failed {
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
            .stopping()
            .unwrap_or_else(|| "the run was stopped".into());
        let fate: RowFate<()> = RowFate::NotSent {
            message: format!("not sent: the run stopped ({reason})"),
        };
        let entries = ids
            .iter()
            .map(|id| Entry::Row(fate_event(*id, stage, group, 0, &fate, |_, _| {})))
            .collect();
        self.record(entries).await;
    }

    /// Feeds the circuit breaker and the abort flag with one call's fate.
    fn observe<A>(&self, call: &Call<A>) {
        let failed = match &call.result {
            Ok(_) => false,
            Err(api::CallError::NotSent { .. }) => return,
            Err(e) => {
                if let Some(reason) = e.stops_the_run() {
                    self.abort.trip(reason);
                }
                true
            }
        };
        if !failed {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            return;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let max = u64::from(self.limits.max_consecutive_failures);
        if max > 0 && n >= max {
            self.abort.trip(format!(
                "{n} calls in a row failed (circuit breaker, --max-consecutive-failures {max})"
            ));
        }
    }

    /// One call for one row at one stage: an intent first when the call is
    /// not idempotent, then the outcome.
    async fn send_for_row<E, T>(
        &self,
        id: RowId,
        stage: Stage,
        group: Option<usize>,
        endpoint: E,
        fill: impl FnOnce(&mut RowEvent, &T),
    ) where
        E: Endpoint<Answer = RowFate<T>>,
    {
        if self.abort.is_set() {
            return self.stopped(&[id], stage, group).await;
        }
        if !E::IDEMPOTENT {
            let intent = Intent {
                stage,
                group,
                rows: vec![id.row],
            };
            if !self.record(vec![Entry::Intent(intent)]).await {
                return;
            }
        }
        let call = self.client.send(&endpoint).await;
        self.observe(&call);
        let fate = match &call.result {
            Ok(fate) => fate,
            Err(e) => &RowFate::of_call(e),
        };
        let ev = fate_event(id, stage, group, call.attempts, fate, fill);
        self.record(vec![Entry::Row(ev)]).await;
    }
}

/// How the run ended.
#[derive(Debug)]
pub struct RunEnd {
    pub rows_read: u64,
    pub aborted: Option<String>,
    /// The source failed mid-file: rows after `rows_read` were never read.
    pub read_error: Option<String>,
}

/// Reads and maps every row of a file, for [`run`]. A failed-rows CSV's
/// rows whose earlier outcome was unknown (`_unknown`) are planned as
/// `retry` plans them: looked up first where they can be, left (and
/// recorded unknown) where they cannot unless `include_unknown`.
pub fn mapped_rows<R: std::io::Read + Send + 'static>(
    mut source: Source<R>,
    plan: Arc<crate::mapping::Plan>,
    include_unknown: bool,
) -> impl Iterator<Item = Incoming> + Send + 'static {
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let item = match source.next_row()? {
            Err(e) => {
                done = true;
                Incoming::SourceFailed(e)
            }
            Ok(Err(bad)) => Incoming::Invalid(bad.id, vec![bad.error]),
            Ok(Ok(mut row)) => {
                row.id.fp = plan.fingerprint(&row);
                match plan.map_row(&row) {
                    Ok(payloads) if payloads.unknown.any() => {
                        Incoming::Mapped(Box::new(after_unknown(row.id, payloads, include_unknown)))
                    }
                    Ok(payloads) => Incoming::Mapped(Box::new(MappedRow::new(row.id, payloads))),
                    Err(errors) => Incoming::Invalid(row.id, errors),
                }
            }
        };
        Some(item)
    })
}

/// A failed-rows CSV's row that an earlier run left unknown at some stage:
/// what it still needs, by `retry`'s rules.
fn after_unknown(id: RowId, mut payloads: RowPayloads, include_unknown: bool) -> MappedRow {
    let unknown = std::mem::take(&mut payloads.unknown);
    let rules = crate::resume::Rules {
        // The person edited the file: refused rows are sent again.
        changed: true,
        include_unknown,
    };
    let previous = crate::resume::failed_csv_previous(&unknown);
    let kept = crate::resume::keep_what_is_not_done(&mut payloads, &previous, None, rules);
    let mut row = MappedRow::new(id, payloads);
    row.lookup = kept.lookup;
    for (stage, group, reason) in kept.left {
        let mut ev = event(id, stage, Status::Unknown);
        ev.group = (stage == Stage::FieldGroup).then_some(group);
        ev.message = Some(format!("left out of this import: {reason}"));
        row.first.push(ev);
    }
    row
}

/// The ledger message of an invalid row: every problem, with its line,
/// column and value.
pub fn invalid_message(id: RowId, errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| crate::check::RowIssue::new(id, e.clone()).to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs the import of the rows `rows` yields (read and mapped on a thread
/// of their own) into the ledger.
pub async fn run(
    rows: impl Iterator<Item = Incoming> + Send + 'static,
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
        pending: Mutex::new(HashMap::new()),
    });

    // 1. The reader: a blocking thread that maps rows and hands them on.
    let (rows_tx, mut rows_rx) = mpsc::channel::<Incoming>(512);
    let reader_abort = abort.clone();
    let reader_progress = progress.clone();
    let reader = tokio::task::spawn_blocking(move || {
        for item in rows {
            if reader_abort.is_set() {
                break;
            }
            let failed = matches!(item, Incoming::SourceFailed(_));
            if let Incoming::Mapped(r) = &item {
                reader_progress
                    .bytes_read
                    .store(r.id.offset, Ordering::Relaxed);
            }
            if rows_tx.blocking_send(item).is_err() || failed {
                break;
            }
        }
    });

    // 2. Downstream of the customer stage.
    let (down_tx, down_rx) = mpsc::channel::<(MappedRow, CustomerState)>(1024);
    let downstream = tokio::spawn(downstream(run.clone(), down_rx));

    // 3. Customers to look up first (each on a task of its own, so that a
    // lookup in flight never waits for this loop), in file order.
    let width = run.limits.concurrency.max(1);
    let lookups = {
        let run = run.clone();
        futures::stream::poll_fn(move |cx| rows_rx.poll_recv(cx))
            .map(move |item| {
                let run = run.clone();
                async move {
                    match item {
                        Incoming::Mapped(row) if row.lookup.is_some() => {
                            let id = row.id;
                            match tokio::spawn(look_up(run, *row)).await {
                                Ok((row, ev)) => (Incoming::Mapped(Box::new(row)), ev),
                                Err(e) => {
                                    let mut ev = event(id, Stage::Customer, Status::Unknown);
                                    ev.message =
                                        Some(format!("the lookup stopped ({e}); still unknown"));
                                    (
                                        Incoming::Mapped(Box::new(MappedRow::new(
                                            id,
                                            RowPayloads::default(),
                                        ))),
                                        Some(ev),
                                    )
                                }
                            }
                        }
                        other => (other, None),
                    }
                }
            })
            .buffered(width)
    };
    let mut lookups = Box::pin(lookups);

    // 4. The customer batcher.
    let mut tasks = JoinSet::new();
    let mut batch: Vec<MappedRow> = Vec::new();
    let mut read_error = None;
    let mut rows_read = 0u64;
    while let Some((item, looked_up)) = lookups.next().await {
        if abort.is_set() {
            break;
        }
        match item {
            Incoming::SourceFailed(e) => {
                read_error = Some(e.to_string());
                break;
            }
            Incoming::Invalid(id, errors) => {
                rows_read += 1;
                progress.rows_read.store(rows_read, Ordering::Relaxed);
                let mut ev = event(id, Stage::Mapping, Status::Invalid);
                ev.message = Some(invalid_message(id, &errors));
                run.record(vec![Entry::Row(ev)]).await;
            }
            Incoming::Mapped(mut row) => {
                rows_read += 1;
                progress.rows_read.store(rows_read, Ordering::Relaxed);
                if row.first.iter().any(|e| e.status == Some(Status::Unknown)) {
                    progress.left_unknown.fetch_add(1, Ordering::Relaxed);
                }
                let mut first: Vec<Entry> = std::mem::take(&mut row.first)
                    .into_iter()
                    .chain(looked_up)
                    .map(Entry::Row)
                    .collect();
                for (stage, problem) in &row.payloads.invalid_stages {
                    let mut ev = event(row.id, *stage, Status::Invalid);
                    ev.message = Some(invalid_message(row.id, std::slice::from_ref(problem)));
                    first.push(Entry::Row(ev));
                }
                let recorded_now = first.len() - row.payloads.invalid_stages.len();
                match row.payloads.outcomes() + recorded_now as u32 {
                    0 => {
                        progress.rows_settled.fetch_add(1, Ordering::Relaxed);
                    }
                    left => {
                        run.pending
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(
                                row.id.row,
                                Pending {
                                    left,
                                    failed: false,
                                },
                            );
                    }
                }
                if !first.is_empty() && !run.record(first).await {
                    break;
                }
                if row.payloads.customer.is_some() {
                    batch.push(*row);
                    if batch.len() >= run.limits.batch_size {
                        spawn_customers(&run, &mut tasks, std::mem::take(&mut batch), &down_tx)
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
    // Closing the stream closes the reader's channel: it stops reading.
    drop(lookups);
    if !batch.is_empty() {
        spawn_customers(&run, &mut tasks, batch, &down_tx).await;
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
        read_error: read_error.clone(),
    };
    let _ = run.ledger.write(&[Entry::End(end)]).await;
    RunEnd {
        rows_read,
        aborted,
        read_error,
    }
}

/// Where a row stands after the customer stage.
#[derive(Debug, Clone)]
enum CustomerState {
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
        let intent = Intent {
            stage: Stage::Customer,
            group: None,
            rows: rows.iter().map(|r| r.id.row).collect(),
        };
        if !run.record(vec![Entry::Intent(intent)]).await {
            return;
        }
        let batch = CustomerBatch {
            run: &run,
            settled: Mutex::new(Vec::with_capacity(rows.len())),
        };
        api::bisect(&batch, rows).await;
        let settled = batch
            .settled
            .into_inner()
            .unwrap_or_else(|e| e.into_inner());
        drop(permit);
        for (row, state) in settled {
            if down.send((row, state)).await.is_err() {
                break;
            }
        }
    });
}

/// The customer stage's calls: create, bisected on a whole-call 4xx.
struct CustomerBatch<'a> {
    run: &'a Run,
    /// Rows settled so far, handed downstream once the permit is released.
    settled: Mutex<Vec<(MappedRow, CustomerState)>>,
}

impl api::Batch for CustomerBatch<'_> {
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
        self.run.observe(&call);
        let fates = RowFate::of_rows(&call.result, rows.len());
        let mut entries = Vec::with_capacity(rows.len());
        let mut states = Vec::with_capacity(rows.len());
        for (row, fate) in rows.iter().zip(&fates) {
            let ev = fate_event(
                row.id,
                Stage::Customer,
                None,
                call.attempts,
                fate,
                |ev, c| {
                    ev.http_status = c.http_status;
                    ev.customer_id = Some(c.customer_id);
                },
            );
            entries.push(Entry::Row(ev));
            states.push(match fate {
                RowFate::Done(c) => CustomerState::Id(c.customer_id),
                RowFate::Unknown { .. } => {
                    CustomerState::Unknown("the customer's creation has an unknown outcome".into())
                }
                _ => CustomerState::NotCreated("the customer was not created".into()),
            });
        }
        self.run.record(entries).await;
        self.settled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(rows.into_iter().zip(states));
    }

    fn stopping(&self) -> Option<String> {
        self.run.abort.stopping()
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
        let MappedRow { id, payloads, .. } = row;
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
            CustomerState::NotCreated(reason) | CustomerState::Unknown(reason) => {
                Err(reason.clone())
            }
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
                Ok(c) => {
                    let record = FeedRecord::zowie(std::slice::from_ref(&feed));
                    spawn_row(&run, &mut tasks, feed_record(run.clone(), id, *c, record)).await
                }
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
    // recorded as not sent by the bisection routine.
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
    pub record: RecordFields,
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
                        if a.already {
                            ev.message = Some("already in the campaign".into());
                        }
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

/// Looks a row's customer up before creating it (its creation had an
/// unknown outcome): one match is adopted (`ok`, `"reconciled": true`), none
/// means it was never created, so it goes on to be created; several are
/// left alone as duplicates, and a lookup that fails leaves it unknown. In
/// the last two cases the stages that need the customer are dropped for
/// this run. Returns the row as it goes on, and the customer-stage event to
/// record, if any.
async fn look_up(run: Arc<Run>, mut row: MappedRow) -> (MappedRow, Option<RowEvent>) {
    let Some(lookup) = row.lookup.take() else {
        return (row, None);
    };
    let found = {
        let _permit = run.permits.acquire().await;
        let call = run
            .client
            .find_customer_ids(&lookup.key, &lookup.value)
            .await;
        run.observe(&call);
        call.result
    };
    let mut ev = event(row.id, Stage::Customer, Status::Ok);
    let key = lookup.key.name();
    match found.as_deref() {
        Ok([]) => return (row, None),
        Ok([customer_id]) => {
            run.progress.reconciled.fetch_add(1, Ordering::Relaxed);
            ev.customer_id = Some(*customer_id);
            ev.reconciled = Some(true);
            ev.message = Some(format!(
                "found by {key} after an unknown outcome: adopted, not created again"
            ));
            row.payloads.customer = None;
            row.payloads.existing_customer_id = Some(*customer_id);
            return (row, Some(ev));
        }
        Ok(ids) => {
            run.progress.duplicates.fetch_add(1, Ordering::Relaxed);
            ev.status = Some(Status::Failed);
            ev.retryable = Some(false);
            ev.message = Some(format!(
                "ambiguous: customers {} have {key} {}: duplicates, not touched; merge them in Thulium",
                join_ids(ids),
                crate::source::shorten(&lookup.value)
            ));
        }
        Err(e) => {
            ev.status = Some(Status::Unknown);
            ev.message = Some(format!(
                "could not look the customer up ({e}); still unknown"
            ));
        }
    }
    // Only the campaign record edit, which needs no customer, goes on.
    row.payloads.customer = None;
    row.payloads.field_groups.clear();
    row.payloads.campaign = None;
    row.payloads.feed = None;
    (row, Some(ev))
}

/// `12, 57 and 90`.
pub fn join_ids(ids: &[i64]) -> String {
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    match ids.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => ids.join(""),
    }
}

/// A field-group item: not idempotent. One whose creation had an unknown
/// outcome is looked for among the customer's items in its group first: an
/// item holding the values sent is adopted (`ok`, `"reconciled": true`),
/// none means it is created, and items that all differ are a mismatch,
/// reported and left.
async fn field_group_item(run: Arc<Run>, id: RowId, customer_id: i64, item: ItemPayload) {
    let group = Some(item.index);
    if item.reconcile && !run.abort.is_set() {
        let call = run.client.find_items(customer_id, item.group_id).await;
        run.observe(&call);
        let mut ev = event(id, Stage::FieldGroup, Status::Ok);
        ev.group = group;
        ev.customer_id = Some(customer_id);
        ev.attempts = Some(call.attempts);
        match call.result {
            Ok(items) if items.is_empty() => {}
            Ok(items) => {
                match items.iter().find(|i| i.holds(&item.values)) {
                    Some(found) => {
                        ev.item_id = Some(found.item_id);
                        ev.reconciled = Some(true);
                        ev.message = Some(
                            "found among the customer's items after an unknown outcome: adopted, not created again".into(),
                        );
                    }
                    None => {
                        ev.status = Some(Status::Failed);
                        ev.retryable = Some(false);
                        ev.message = Some(format!(
                            "mismatch: after an unknown outcome, customer {customer_id} has {} item(s) in field group {}, none with the values sent; not created again: look at them in Thulium",
                            items.len(),
                            item.group_id
                        ));
                    }
                }
                run.record(vec![Entry::Row(ev)]).await;
                return;
            }
            Err(e) => {
                ev.status = Some(Status::Unknown);
                ev.message = Some(format!("could not look the item up ({e}); still unknown"));
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
        },
    )
    .await;
}

/// A campaign record edit: idempotent, needs no customer.
async fn campaign_update(run: Arc<Run>, id: RowId, update: UpdatePayload) {
    let endpoint = UpdateRecord {
        campaign_id: &update.campaign_id,
        identifier: &update.identifier,
        update: &update.body,
    };
    run.send_for_row(id, Stage::CampaignUpdate, None, endpoint, |_, _| {})
        .await;
}

/// A contact-history entry: not idempotent.
async fn feed_record(run: Arc<Run>, id: RowId, customer_id: i64, record: FeedRecord) {
    let endpoint = CreateFeedRecord {
        customer_id,
        record: &record,
    };
    run.send_for_row(id, Stage::Feed, None, endpoint, |ev, _| {
        ev.customer_id = Some(customer_id);
    })
    .await;
}
