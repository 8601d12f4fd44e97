//! `run`: the import pipeline, top to bottom. It orchestrates — reading,
//! batching, stages, pacing, the ledger — and leaves every fact about the
//! API to [`crate::api`]: it asks "create these customers" and gets a typed
//! [`RowFate`] per row back.
//!
//! ```text
//! reader thread ──rows──▶ resolve (find existing customers: customers.rs)
//!      │ (invalid rows → ledger)   │
//!      ▼                           ▼
//!                         customer batcher ──▶ create / update customers (chunks, bisected)
//!                                  │ rows with an id (created, matched or given)
//!                                  ▼
//!                         downstream dispatcher (downstream.rs) ──▶ field-group items (per row)
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

mod customers;
mod downstream;
mod parts;
mod would;

pub use customers::{customer_shape, customer_update, Policed};
pub use downstream::{CampaignBatcher, CampaignChunk, PendingRecord};
pub use would::{Note, Noted};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::api::{self, ApiClient, Call, RowFate};
use crate::hash::KeyHash;
use crate::identity::{Finder, RowKeys};
use crate::ledger::{self, Action, Entry, Intent, Ledger, RowEvent, Stage, Status};
use crate::mapping::{RowPayloads, Upsert};
use crate::source::{FieldError, RowId, Source, SourceError};
use crate::state::{Learnt, SyncState};

/// Where a row stands after the customer stage.
#[derive(Debug, Clone)]
pub(crate) enum CustomerState {
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
pub(crate) type Downstream = mpsc::Sender<(MappedRow, CustomerState)>;

/// Calls in flight at most, without `--concurrency`.
pub const MAX_IN_FLIGHT: usize = 32;

/// Limits of one run.
#[derive(Debug, Clone)]
pub struct Limits {
    pub batch_size: usize,
    /// Calls in flight at most; within it, they follow the rate × the
    /// latency measured.
    pub concurrency: usize,
    /// Consecutive failed calls before the circuit breaker stops the run.
    pub max_consecutive_failures: u32,
    pub max_failures: Option<u64>,
    pub max_failure_rate: Option<f64>,
    /// A pilot: read only this many data rows.
    pub rows: Option<u64>,
    /// `plan`: no write is sent; each is counted and noted here instead
    /// ([`Run::write`]).
    pub plan: Option<Arc<Noted>>,
}

/// A mapped row on its way through the stages.
#[derive(Debug, Clone)]
pub struct MappedRow {
    pub id: RowId,
    pub payloads: RowPayloads,
    /// Look the customer up before creating it (set for every row with a
    /// customer when the mapping matches customers).
    pub lookup: Option<LookupReason>,
    /// Outcomes known before anything is sent (a row invalid before that
    /// maps now; stages left as they were), recorded as the row comes in.
    pub known_before: Vec<RowEvent>,
    /// The row's match-key values (once looked up).
    pub keys: RowKeys,
    /// The matched customer to update.
    pub update_of: Option<i64>,
    /// What Thulium held in the fields the mapping writes, for the matched
    /// customer (read with the index or the lookup that found it).
    pub current: Option<crate::current::Current>,
    /// The customer existed before this run (matched or adopted).
    pub existed: bool,
    /// The customer found after an unknown creation, to be updated with
    /// the row's fields (recorded `adopted`).
    pub adopted: bool,
    /// The customer remembered for this row turned out to be gone from
    /// Thulium (404): the row was looked up again.
    pub gone_from: Option<i64>,
    /// Why the row's customer cannot be used this time (its later stages
    /// are recorded skipped with this reason).
    pub blocked: Option<String>,
}

impl MappedRow {
    /// A row read and mapped for the first time.
    pub fn new(id: RowId, payloads: RowPayloads) -> MappedRow {
        MappedRow {
            id,
            payloads,
            lookup: None,
            known_before: Vec::new(),
            keys: RowKeys::default(),
            update_of: None,
            current: None,
            existed: false,
            adopted: false,
            gone_from: None,
            blocked: None,
        }
    }
}

/// Why a row's customer is looked up before anything is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupReason {
    /// Its creation had an unknown outcome: look it up by its keys (its
    /// identifier without `match`) to find out.
    UnknownBefore,
    /// The mapping matches customers (`[customer] match`).
    Match,
    /// `retry`: the ledger says this customer was created or found for the
    /// row before; the row's later stages are about to write to it, so
    /// Thulium confirms it first (the ledger is a memory too). Found
    /// elsewhere, the row goes with that customer; gone, it is created
    /// again.
    Confirm(i64),
}

/// How the run finds and remembers customers that exist: the mapping's
/// `match`, an index of the system, the sync state.
#[derive(Debug, Default)]
pub struct Matching {
    pub upsert: Option<Upsert>,
    pub finder: Finder,
    /// The sync state (`--state`), when given (the finder reads it too).
    pub state: Option<Arc<SyncState>>,
    /// `--full`: payload hashes are ignored for this run.
    pub full: bool,
    /// How the state names each `[[field_group]]`'s part.
    pub group_parts: Vec<String>,
    /// `[feed] on_match`: a message for a customer found, without proof.
    pub feed_on_match: crate::mapping::FeedOnMatch,
    /// The undo file, unless `--no-undo`: what the run's updates
    /// overwrite (the values found with the customers and items), written
    /// before each is sent.
    pub images: Option<Arc<crate::undo::images::Images>>,
}

impl Matching {
    /// The sync state's name of the i-th field group.
    fn group_part(&self, index: usize) -> String {
        self.group_parts
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("field_group#{}", index + 1))
    }
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
    /// Customers the sync state remembered that Thulium no longer confirms
    /// (a key moved, the customer gone): forgotten and looked up again.
    pub forgotten: AtomicU64,
    /// Customer-stage actions, in [`Action::ALL`]'s order, and `kept` at
    /// any stage.
    pub actions: [AtomicU64; Action::ALL.len()],
    /// Calls allowed in flight now.
    pub in_flight: AtomicU64,
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
    matching: Matching,
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
        }
        | RowFate::Retryable {
            http_status,
            message,
        } => {
            ev.status = Some(Status::Failed);
            ev.http_status = *http_status;
            ev.message = Some(message.clone());
            ev.retryable = Some(matches!(fate, RowFate::Retryable { .. }));
        }
        RowFate::Unknown { message } => {
            ev.status = Some(Status::Unknown);
            ev.message = Some(message.clone());
        }
        RowFate::Stopping { message } => {
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
        if entries.is_empty() {
            return true;
        }
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

    /// Writes before-images (`undo`'s) durably, before the calls they
    /// describe are sent; an undo file that cannot be written stops the
    /// run (nothing is sent that could not be taken back). `false` then.
    async fn before_images(&self, images: Vec<crate::undo::images::Image>) -> bool {
        let Some(file) = &self.matching.images else {
            return true;
        };
        if images.is_empty() {
            return true;
        }
        match file.record(images).await {
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
        // Kept is counted wherever it happens (campaign, feed): it is what a
        // person has to look at; the other actions describe customers.
        if let Some(action) = ev
            .action
            .filter(|a| stage == Stage::Customer || *a == Action::Kept)
        {
            if let Some(i) = Action::ALL.iter().position(|a| *a == action) {
                self.progress.actions[i].fetch_add(1, Ordering::Relaxed);
            }
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
        let fate: RowFate<()> = RowFate::Stopping {
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
            Err(api::CallError::Stopping { .. }) => return,
            Err(e) => {
                if let Some(reason) = e.stops_the_run() {
                    self.abort.trip(reason);
                }
                true
            }
        };
        self.breaker_sees(failed);
    }

    /// `n` outcomes a row was counted for will not come (its stages were
    /// dropped after it was counted): it settles when nothing else is due.
    fn no_longer_pending(&self, row: u64, n: u32) {
        if n == 0 {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pending.get_mut(&row) {
            p.left = p.left.saturating_sub(n);
            if p.left == 0 {
                pending.remove(&row);
                self.progress.rows_settled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Feeds the circuit breaker and the abort flag with a lookup's result.
    fn looked_up(&self, found: &crate::identity::Found) {
        match found {
            crate::identity::Found::Failed(e) => {
                if let Some(reason) = e.stops_the_run() {
                    self.abort.trip(reason);
                }
                self.breaker_sees(true);
            }
            _ => self.breaker_sees(false),
        }
    }

    /// The circuit breaker: consecutive failed calls stop the run.
    fn breaker_sees(&self, failed: bool) {
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

    /// Writes something learnt into the sync state, if there is one.
    fn learn(&self, learnt: Learnt) {
        if let Some(state) = &self.matching.state {
            state.learn(learnt);
        }
    }

    /// A part of a customer was sent with this payload hash.
    fn learn_part(&self, customer_id: i64, part: &str, hash: KeyHash, item_id: Option<i64>) {
        if self.matching.state.is_some() {
            self.learn(Learnt::Part {
                customer_id,
                part: part.into(),
                hash,
                item_id,
            });
        }
    }

    /// A row's keys belong to this customer, whose payload (if sent) hashes
    /// as `hash`.
    fn learn_customer(&self, row: &MappedRow, customer_id: i64, hash: Option<KeyHash>) {
        if self.matching.state.is_none() {
            return;
        }
        for (_, key) in row.keys.hashes() {
            self.learn(Learnt::Key { key, customer_id });
        }
        if let Some(hash) = hash {
            self.learn_part(customer_id, "customer", hash, None);
            if let Some(c) = customer_shape(self.matching.upsert.as_ref(), &row.payloads) {
                let signature = crate::hash::field_signature(&crate::hash::fields_of(&c));
                self.learn(Learnt::Fields {
                    customer_id,
                    signature,
                });
            }
        }
    }

    /// With a sync state and without `--full`: `Some(item id)` when a part
    /// of a customer was last sent with this very payload.
    fn unchanged(&self, customer_id: i64, part: &str, hash: KeyHash) -> Option<Option<i64>> {
        if self.matching.full {
            return None;
        }
        let (known, item_id) = self.matching.state.as_ref()?.part(customer_id, part)?;
        (known == hash).then_some(item_id)
    }

    /// One call for one row at one stage: an intent first when the call is
    /// not idempotent, then the outcome. Returns the outcome's status, or
    /// `None` when the call was not made.
    async fn send_for_row<E, T>(
        &self,
        id: RowId,
        stage: Stage,
        group: Option<usize>,
        endpoint: E,
        fill: impl FnOnce(&mut RowEvent, &T),
    ) -> Option<Status>
    where
        E: crate::api::would::Would<Answer = RowFate<T>>,
    {
        if self.abort.is_set() {
            self.stopped(&[id], stage, group).await;
            return None;
        }
        if !E::IDEMPOTENT {
            let intent = Intent {
                stage,
                group,
                rows: vec![id.row],
            };
            if !self.record(vec![Entry::Intent(intent)]).await {
                return None;
            }
        }
        let call = self.write(&endpoint).await;
        self.observe(&call);
        let fate = match &call.result {
            Ok(fate) => fate,
            Err(e) => &RowFate::of_call(e),
        };
        let ev = fate_event(id, stage, group, call.attempts, fate, fill);
        let status = ev.status;
        self.record(vec![Entry::Row(ev)]).await;
        status
    }
}

/// How the run ended.
#[derive(Debug)]
pub struct RunEnd {
    pub rows_read: u64,
    pub aborted: Option<String>,
    /// The source failed mid-file: rows after `rows_read` were never read.
    pub read_error: Option<String>,
    /// A pilot stopped after this many rows, before the end of the file.
    pub limit: Option<u64>,
}

/// Reads and maps every row of a file, for [`run`]. A failed-rows CSV's
/// rows whose earlier outcome was unknown (`_unknown`) are planned as
/// `retry` plans them: looked up first where they can be, left (and
/// recorded unknown) where they cannot unless `include_unknown`.
pub fn mapped_rows<R: std::io::Read + Send + 'static>(
    mut source: Source<R>,
    plan: Arc<crate::mapping::Plan>,
    include_unknown: bool,
    system: Option<Arc<crate::preflight::System>>,
) -> impl Iterator<Item = Incoming> + Send + 'static {
    let mut done = false;
    // Two rows with one key value: the later one is invalid.
    let mut file_keys = crate::identity::FileKeys::default();
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
                // Only valid rows claim their keys.
                let twice = |file_keys: &mut crate::identity::FileKeys| {
                    file_keys.check(row.id, &plan.key_hashes(row.cells.view()))
                };
                match plan.map_row(&row) {
                    Ok(_) if let Some(e) = twice(&mut file_keys) => {
                        Incoming::Invalid(row.id, vec![e])
                    }
                    Ok(mut payloads) => {
                        // What the system says the row cannot do.
                        if let Some(system) = &system {
                            system.check_row(&mut payloads);
                        }
                        let row = if payloads.unknown.any() {
                            after_unknown(row.id, payloads, include_unknown, &plan.lookup_keys())
                        } else {
                            MappedRow::new(row.id, payloads)
                        };
                        Incoming::Mapped(Box::new(row))
                    }
                    Err(errors) => Incoming::Invalid(row.id, errors),
                }
            }
        };
        Some(item)
    })
}

/// A failed-rows CSV's row that an earlier run left unknown at some stage:
/// what it still needs, by `retry`'s rules.
fn after_unknown(
    id: RowId,
    mut payloads: RowPayloads,
    include_unknown: bool,
    keys: &[crate::api::keys::SearchKey],
) -> MappedRow {
    let unknown = std::mem::take(&mut payloads.unknown);
    let rules = crate::needs::Rules {
        // The person edited the file: refused rows are sent again.
        changed: true,
        include_unknown,
    };
    let previous = crate::needs::failed_csv_previous(&unknown);
    let kept = crate::needs::keep_what_is_not_done(&mut payloads, &previous, None, rules, keys);
    let mut row = MappedRow::new(id, payloads);
    row.lookup = kept.look_up.then_some(LookupReason::UnknownBefore);
    for (stage, group, reason) in kept.left {
        let mut ev = event(id, stage, Status::Unknown);
        ev.group = (stage == Stage::FieldGroup).then_some(group);
        ev.message = Some(format!("left out of this import: {reason}"));
        row.known_before.push(ev);
    }
    row
}

/// The ledger message of an invalid row: every problem, with its line,
/// column and value.
pub fn invalid_message(id: RowId, errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| crate::source::RowIssue::new(id, e.clone()).to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs the import of the rows `rows` yields (read and mapped on a thread
/// of their own) into the ledger: the steps below, in order.
pub async fn run(
    rows: impl Iterator<Item = Incoming> + Send + 'static,
    client: Arc<ApiClient>,
    ledger: Ledger,
    limits: Limits,
    abort: Arc<Abort>,
    progress: Arc<Progress>,
    matching: Matching,
) -> RunEnd {
    let run = Arc::new(Run {
        client,
        ledger,
        permits: Arc::new(Semaphore::new(1)),
        abort,
        limits,
        progress,
        consecutive_failures: AtomicU64::new(0),
        pending: Mutex::new(HashMap::new()),
        matching,
    });
    // 0. Calls in flight follow rate × latency, within the limit.
    let in_flight = tokio::spawn(follow_in_flight(run.clone()));
    // 1. The reader: a blocking thread that maps rows and hands them on.
    let (rows_rx, reader) = spawn_reader(&run, rows);
    // 2. Downstream of the customer stage.
    let (down_tx, down_rx) = mpsc::channel::<(MappedRow, CustomerState)>(1024);
    let downstream = tokio::spawn(downstream::downstream(run.clone(), down_rx));
    // 3. Customers looked up first, in file order; 4. then created or
    // updated in chunks, every row handed downstream with its customer.
    let read = send_customers(&run, resolved(&run, rows_rx), down_tx).await;
    let _ = downstream.await;
    let cut = reader.await.unwrap_or(false);
    in_flight.abort();
    // 5. The state written, then the end event.
    finish(&run, read, cut).await
}

/// How far reading got.
struct Read {
    rows_read: u64,
    /// The source failed mid-file.
    read_error: Option<String>,
}

/// The reader: a blocking thread that reads and maps rows and hands them
/// on, stopping when the run stops, after a pilot's rows, or when the
/// source fails. Its result: whether a pilot stopped before the end.
fn spawn_reader(
    run: &Arc<Run>,
    rows: impl Iterator<Item = Incoming> + Send + 'static,
) -> (mpsc::Receiver<Incoming>, tokio::task::JoinHandle<bool>) {
    let (rows_tx, rows_rx) = mpsc::channel::<Incoming>(512);
    let abort = run.abort.clone();
    let progress = run.progress.clone();
    let pilot = run.limits.rows;
    let reader = tokio::task::spawn_blocking(move || {
        let mut read = 0u64;
        for item in rows {
            if abort.is_set() {
                break;
            }
            let failed = matches!(item, Incoming::SourceFailed(_));
            if !failed {
                read += 1;
                if pilot.is_some_and(|n| read > n) {
                    return true;
                }
            }
            if let Incoming::Mapped(r) = &item {
                progress.bytes_read.store(r.id.offset, Ordering::Relaxed);
            }
            if rows_tx.blocking_send(item).is_err() || failed {
                break;
            }
        }
        false
    });
    (rows_rx, reader)
}

/// The rows as they come, each row whose customer is to be found first
/// (the mapping matches, or an earlier creation's outcome was unknown)
/// resolved on a task of its own, so that a lookup in flight never waits
/// for the batcher; in file order, `--concurrency` at a time.
fn resolved(
    run: &Arc<Run>,
    mut rows_rx: mpsc::Receiver<Incoming>,
) -> impl futures::Stream<Item = (Incoming, Option<RowEvent>)> {
    let width = run.limits.concurrency.max(1);
    let run = run.clone();
    futures::stream::poll_fn(move |cx| rows_rx.poll_recv(cx))
        .map(move |item| {
            let run = run.clone();
            async move {
                match item {
                    Incoming::Mapped(mut row)
                        if row.lookup.is_some()
                            || (run.matching.upsert.is_some()
                                && row.payloads.customer.is_some()) =>
                    {
                        row.lookup.get_or_insert(LookupReason::Match);
                        let id = row.id;
                        match tokio::spawn(customers::resolve(run, *row)).await {
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
}

/// The customer batcher: records what is known of each row, batches its
/// customer's creation or update (each chunk sent on a task of its own),
/// and hands rows without a customer call downstream. Returns once every
/// chunk has been sent and every row handed on.
async fn send_customers(
    run: &Arc<Run>,
    lookups: impl futures::Stream<Item = (Incoming, Option<RowEvent>)>,
    down_tx: Downstream,
) -> Read {
    let mut lookups = Box::pin(lookups);
    let mut tasks = JoinSet::new();
    let mut batch: Vec<MappedRow> = Vec::new();
    let mut updates: Vec<MappedRow> = Vec::new();
    let mut read = Read {
        rows_read: 0,
        read_error: None,
    };
    let progress = &run.progress;
    // Outcomes known without a call (invalid rows, unchanged customers, ...)
    // are written in groups: one fsync per row would set the pace of a run
    // that sends little. The rows they belong to go downstream only once
    // they are written, so that the ledger tells each row's story in order.
    let mut known_outcomes = Vec::new();
    let mut rows_waiting: Vec<(MappedRow, CustomerState)> = Vec::new();
    let mut last_flush = std::time::Instant::now();
    while let Some((item, looked_up)) = lookups.next().await {
        let waiting = !known_outcomes.is_empty() || !rows_waiting.is_empty();
        if (known_outcomes.len() >= KNOWN_GROUP
            || rows_waiting.len() >= KNOWN_GROUP
            || (waiting && last_flush.elapsed() >= std::time::Duration::from_secs(1)))
            && !flush_known(run, &mut known_outcomes, &mut rows_waiting, &down_tx).await
        {
            break;
        }
        if known_outcomes.is_empty() && rows_waiting.is_empty() {
            // The age of what waits is measured from its arrival.
            last_flush = std::time::Instant::now();
        }
        if run.abort.is_set() {
            break;
        }
        let mut row = match item {
            Incoming::SourceFailed(e) => {
                read.read_error = Some(e.to_string());
                break;
            }
            Incoming::Invalid(id, errors) => {
                read.rows_read += 1;
                progress.rows_read.store(read.rows_read, Ordering::Relaxed);
                let mut ev = event(id, Stage::Mapping, Status::Invalid);
                ev.message = Some(invalid_message(id, &errors));
                known_outcomes.push(Entry::Row(ev));
                continue;
            }
            Incoming::Mapped(row) => row,
        };
        read.rows_read += 1;
        progress.rows_read.store(read.rows_read, Ordering::Relaxed);
        known_outcomes.extend(known_now(run, &mut row, looked_up));
        if row.payloads.customer.is_some() {
            let update = row.update_of.is_some();
            let chunk = if update { &mut updates } else { &mut batch };
            chunk.push(*row);
            if chunk.len() >= run.limits.batch_size {
                let rows = std::mem::take(chunk);
                customers::spawn_customers(run, &mut tasks, rows, &down_tx, update).await;
            }
        } else {
            let state = match (&row.blocked, row.payloads.existing_customer_id) {
                (Some(why), _) => CustomerState::NotCreated(why.clone()),
                (None, Some(id)) => CustomerState::Id(id),
                (None, None) => CustomerState::NotNeeded,
            };
            rows_waiting.push((*row, state));
        }
        while tasks.try_join_next().is_some() {}
    }
    // Closing the stream closes the reader's channel: it stops reading.
    drop(lookups);
    flush_known(run, &mut known_outcomes, &mut rows_waiting, &down_tx).await;
    for (rows, update) in [(batch, false), (updates, true)] {
        if !rows.is_empty() {
            customers::spawn_customers(run, &mut tasks, rows, &down_tx, update).await;
        }
    }
    while tasks.join_next().await.is_some() {}
    read
}

/// What is known of a row before anything is sent for it (outcomes an
/// earlier run left, its lookup's, its stages invalid against the
/// system), to record; and how many outcomes it still waits for.
fn known_now(run: &Run, row: &mut MappedRow, looked_up: Option<RowEvent>) -> Vec<Entry> {
    let progress = &run.progress;
    if row
        .known_before
        .iter()
        .any(|e| e.status == Some(Status::Unknown))
    {
        progress.left_unknown.fetch_add(1, Ordering::Relaxed);
    }
    let mut now_known: Vec<Entry> = std::mem::take(&mut row.known_before)
        .into_iter()
        .chain(looked_up)
        .map(Entry::Row)
        .collect();
    for (stage, problem) in &row.payloads.invalid_stages {
        let mut ev = event(row.id, *stage, Status::Invalid);
        ev.message = Some(invalid_message(row.id, std::slice::from_ref(problem)));
        now_known.push(Entry::Row(ev));
    }
    let recorded_now = now_known.len() - row.payloads.invalid_stages.len();
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
    now_known
}

/// The end of a run: the state written (a state that lags what the ledger
/// says was sent is an aborted run, said in the end event), then the end
/// event.
async fn finish(run: &Run, read: Read, cut: bool) -> RunEnd {
    let limit = if cut { run.limits.rows } else { None };
    if let Some(state) = &run.matching.state {
        if let Err(e) = state.flush() {
            run.abort.trip(e.to_string());
        }
    }
    let mut aborted = run.abort.reason();
    let end = ledger::End {
        rows_read: read.rows_read,
        finished_at: ledger::now(),
        aborted: aborted.clone(),
        read_error: read.read_error.clone(),
        limit,
        on_gone: None,
    };
    if let Err(e) = run.ledger.write(&[Entry::End(end)]).await {
        // Without its end, the ledger reads as a crashed run: `retry`
        // re-checks every row. The run itself failed (exit 3).
        tracing::error!(error = %e, "Cannot write the ledger's end.");
        aborted.get_or_insert_with(|| format!("the ledger's end could not be written: {e}"));
    }
    RunEnd {
        rows_read: read.rows_read,
        aborted,
        read_error: read.read_error,
        limit,
    }
}

/// Keeps the number of calls in flight at what the rate in force needs at
/// the latency measured ([`crate::pace::in_flight`]), within
/// `--concurrency`: permits are added at once, and taken back as calls
/// finish.
async fn follow_in_flight(run: Arc<Run>) {
    let cap = run.limits.concurrency.max(1);
    let mut issued = 1usize;
    let mut owed = 0usize;
    loop {
        let rate = run.client.rate();
        let target = if rate > 0.0 {
            crate::pace::in_flight(rate, run.client.latency(), cap)
        } else {
            cap
        };
        let in_use = issued - owed;
        if target > in_use {
            let more = target - in_use;
            let repaid = more.min(owed);
            owed -= repaid;
            run.permits.add_permits(more - repaid);
            issued += more - repaid;
        } else if target < in_use {
            owed += in_use - target;
        }
        if owed > 0 {
            let taken = run.permits.forget_permits(owed);
            owed -= taken;
            issued -= taken;
        }
        run.progress
            .in_flight
            .store((issued - owed) as u64, Ordering::Relaxed);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// How many outcomes known without a call are written together.
const KNOWN_GROUP: usize = 512;

/// Writes the outcomes known without a call, then hands the rows held for
/// them downstream. `false` when the ledger cannot be written or the
/// downstream stages are gone.
async fn flush_known(
    run: &Run,
    known_outcomes: &mut Vec<Entry>,
    rows_waiting: &mut Vec<(MappedRow, CustomerState)>,
    down: &Downstream,
) -> bool {
    if !run.record(std::mem::take(known_outcomes)).await {
        return false;
    }
    for item in rows_waiting.drain(..) {
        if down.send(item).await.is_err() {
            return false;
        }
    }
    true
}
