//! Customers gone from the export (`[customer] on_gone`): a nightly full
//! export that no longer has a customer says the CRM deleted (or closed)
//! it. A step of the job layer, in two halves around the run:
//!
//! - before anything is sent ([`Night::prepare`]), from the survey's pass
//!   over the file: the match keys (hashes) of every row, compared with the
//!   customers the sync state saw earlier files of the same job bring. The
//!   customers none of whose keys is in the file are gone; more than
//!   `--max-gone` of them, or an empty file, stop the night (exit 2);
//! - after the run ([`Night::finish`]), once the file is known to have been
//!   read whole: the gone customers are reported, deleted or marked (a
//!   `gone` ledger entry each: they have no row), and the state records
//!   which customers this file brought.
//!
//! Only customers that earlier files of the job brought are ever touched:
//! never one the tool never imported, never one only another job's files
//! bring. A file that is not complete (a read error, a pilot `--limit`, a
//! row whose keys cannot be read, a run that stopped early) counts nobody
//! gone.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use crate::api::customers::{DeleteCustomer, UpdateCustomers};
use crate::api::payload::{Customer, CustomerUpdate, Named, Scalar};
use crate::api::{ApiClient, CallError, RowFate};
use crate::cli::Share;
use crate::hash::KeyHash;
use crate::ledger::{Action, Entry, GoneEvent, Ledger, Status};
use crate::mapping::{OnGone, Plan};
use crate::pipeline::{Abort, RunEnd};
use crate::state::SyncState;

/// Who a file's rows are, as the survey read them: the hashes of their
/// match-key values, no values.
#[derive(Debug, Default)]
pub struct FileKeys {
    pub keys: HashSet<KeyHash>,
    /// Data rows read (bad ones included).
    pub rows: u64,
    /// Rows whose keys could not be read (a row that cannot be decoded, a
    /// key cell that is not a key's value, key cells left empty): their
    /// customers are not known.
    pub unidentified: u64,
    /// The lines of the first of those (a few: what the note names).
    pub unidentified_lines: Vec<u64>,
    /// Whether the file was read to its end.
    pub read_all: bool,
}

/// How many lines of unidentified rows a note names.
const LINES_NAMED: usize = 5;

impl FileKeys {
    /// One row's keys (the row starts on `line`), or `None` when they
    /// cannot be read.
    pub fn add(&mut self, keys: Option<Vec<KeyHash>>, line: u64) {
        self.rows += 1;
        match keys {
            Some(keys) => self.keys.extend(keys),
            None => self.unidentified(line),
        }
    }

    /// A row that could not be decoded (it starts on `line`).
    pub fn add_unreadable(&mut self, line: u64) {
        self.rows += 1;
        self.unidentified(line);
    }

    fn unidentified(&mut self, line: u64) {
        self.unidentified += 1;
        if self.unidentified_lines.len() < LINES_NAMED {
            self.unidentified_lines.push(line);
        }
    }

    /// "1 row whose match keys cannot be read (line 340)".
    fn unidentified_note(&self) -> String {
        let lines: Vec<String> = self.unidentified_lines.iter().map(u64::to_string).collect();
        let more = if self.unidentified > self.unidentified_lines.len() as u64 {
            ", ..."
        } else {
            ""
        };
        format!(
            "{} whose match keys cannot be read ({} {}{more})",
            crate::text::count(self.unidentified, "row"),
            if lines.len() == 1 { "line" } else { "lines" },
            lines.join(", ")
        )
    }
}

/// The job a file belongs to: `[source] job`, or else the mapping file
/// (nightly exports carry dated names, the mapping stays).
pub fn job_name(plan: &Plan, mapping: &Path) -> String {
    match plan.job() {
        Some(job) => job.to_string(),
        // Absolute, as the ledger records paths: the job is the same from
        // any working directory.
        None => format!(
            "mapping {}",
            std::fs::canonicalize(mapping)
                .unwrap_or_else(|_| mapping.to_path_buf())
                .display()
        ),
    }
}

/// The customers earlier files of `job` brought that no key of `file`
/// names (gone, by id), and how many customers the job's files brought.
/// What `plan` lists, and what the guard counts.
pub fn gone_customers(state: &SyncState, job: &str, file: &HashSet<KeyHash>) -> (Vec<i64>, u64) {
    let mut present: HashMap<i64, bool> = HashMap::new();
    for (customer_id, key) in state.seen(job) {
        *present.entry(customer_id).or_default() |= file.contains(&key);
    }
    let known = present.len() as u64;
    let mut gone: Vec<i64> = present
        .into_iter()
        .filter(|(_, here)| !here)
        .map(|(id, _)| id)
        .collect();
    gone.sort_unstable();
    (gone, known)
}

/// How a policy is written, for messages.
fn written(policy: &OnGone) -> String {
    match policy {
        OnGone::Keep => "\"keep\"".into(),
        OnGone::Report => "\"report\"".into(),
        OnGone::Delete => "\"delete\"".into(),
        OnGone::Mark { custom_field, .. } => {
            format!("{{ custom_field = \"{custom_field}\", ... }}")
        }
    }
}

/// One night's gone handling, decided before anything is sent.
#[derive(Debug)]
pub struct Night {
    job: String,
    policy: OnGone,
    state: Arc<SyncState>,
    file: FileKeys,
    sha256: String,
    /// Why gone customers are not handled tonight, as far as the survey
    /// can tell (not read whole, a row's keys not read, a pilot, the match
    /// keys changed); `None`: complete.
    skipped: Option<String>,
    /// The customers to act on once the run has read the file whole.
    gone: Vec<i64>,
    /// The names of the mapping's match keys (sorted): what the hashes in
    /// the job's record are of.
    match_keys: Vec<String>,
    /// The job's record names other match keys than tonight's: replaced
    /// by this file's (when read whole), nobody counted gone.
    reseed: bool,
    /// The undo file (unless `--no-undo`): a customer deleted is written
    /// there whole first.
    images: Option<Arc<crate::undo::images::Images>>,
}

/// What `plan` says of the customers gone from the file: the action a run
/// would take (`report`, `delete`, `mark`) and on whom.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Planned {
    pub action: &'static str,
    pub customer_ids: Vec<i64>,
    /// The same, as the plan's note says it.
    #[serde(skip)]
    pub note: String,
}

impl Planned {
    /// The requests the gone step would send: its reads (with an undo
    /// file, each customer deleted or marked is read whole first for its
    /// before-image: one `GET customers/:id` each) and its writes (one
    /// `DELETE` per customer, one `PUT batch/customers` per batch marked).
    pub fn calls(&self, batch_size: u64, images: bool) -> (u64, Option<(&'static str, u64)>) {
        use crate::api::would::Would;
        let n = self.customer_ids.len() as u64;
        let writes = match self.action {
            "delete" => Some((DeleteCustomer::WHAT, n)),
            "mark" => Some((UpdateCustomers::WHAT, n.div_ceil(batch_size.max(1)))),
            _ => None,
        };
        let reads = if images && writes.is_some() { n } else { 0 };
        (reads, writes)
    }
}

/// The sorted names of a mapping's match keys.
fn match_key_names(plan: &Plan) -> Vec<String> {
    let mut names: Vec<String> = plan
        .upsert()
        .map(|u| u.keys.iter().map(|k| k.name()).collect())
        .unwrap_or_default();
    names.sort_unstable();
    names.dedup();
    names
}

impl Night {
    /// With a sync state: the customers gone from this file, checked
    /// against `--max-gone` (`max`) before anything is sent. An error
    /// (exit 2) stops the night: more gone than allowed, or an empty file
    /// while `on_gone` acts.
    pub fn prepare(
        plan: &Plan,
        mapping: &Path,
        state: Option<&Arc<SyncState>>,
        file: FileKeys,
        sha256: &str,
        pilot: bool,
        max: Share,
    ) -> anyhow::Result<Option<Night>> {
        let policy = plan.on_gone().clone();
        let acting = policy != OnGone::Keep;
        let Some(state) = state else {
            if acting {
                eprintln!("note: [customer] on_gone needs --state (what earlier files brought): no customer is counted gone without it");
            }
            return Ok(None);
        };
        let job = job_name(plan, mapping);
        if acting && file.rows == 0 {
            anyhow::bail!(
                "the file has no rows: refused under [customer] on_gone = {} (an empty export would make every customer of job \"{job}\" gone). Nothing was sent.",
                written(&policy)
            );
        }
        let match_keys = match_key_names(plan);
        // The hashes in the job's record are of the keys' names and
        // values: under other keys, every customer would look gone.
        let before = state.seen_match_keys(&job);
        let reseed = before.as_ref().is_some_and(|b| *b != match_keys);
        let skipped = if pilot {
            Some("a pilot (--limit) reads part of the file".to_string())
        } else if !file.read_all {
            Some("the file cannot be read to its end".to_string())
        } else if file.unidentified > 0 {
            Some(file.unidentified_note())
        } else if reseed {
            Some(format!(
                "the match keys changed ({} → {}): nobody is counted gone tonight; the job's record of who its files bring is seeded again from this file",
                before.unwrap_or_default().join(", "),
                match_keys.join(", ")
            ))
        } else {
            None
        };
        let mut gone = Vec::new();
        if acting {
            match &skipped {
                Some(why) => eprintln!(
                    "note: [customer] on_gone: {why}: no customer is counted gone from this file"
                ),
                None => {
                    let (found, known) = gone_customers(state, &job, &file.keys);
                    if found.len() as u64 > max.of(known) {
                        anyhow::bail!(
                            "this file lacks {} of the {known} customers earlier files of job \"{job}\" brought ({:.0} %), more than --max-gone {max}; [customer] on_gone = {} would act on them. Nothing was sent. Check tonight's export first (a broken or partial export looks just like this); only if these customers really left the CRM, run again with a higher --max-gone: --max-gone 100% lets on_gone act on all of them ({})",
                            found.len(),
                            found.len() as f64 * 100.0 / known.max(1) as f64,
                            written(&policy),
                            match policy {
                                OnGone::Delete => "deletes them all",
                                OnGone::Mark { .. } => "marks them all",
                                _ => "reports them all",
                            }
                        );
                    }
                    gone = found;
                }
            }
        }
        Ok(Some(Night {
            job,
            policy,
            state: state.clone(),
            file,
            sha256: sha256.to_string(),
            skipped,
            gone,
            match_keys,
            reseed,
            images: None,
        }))
    }

    /// Keeps a before-image of every customer deleted in `images`.
    pub fn with_images(mut self, images: Option<Arc<crate::undo::images::Images>>) -> Night {
        self.images = images;
        self
    }

    /// What a run would do with the customers gone from the file, for
    /// `plan` (which sends nothing and leaves the state as it is): `None`
    /// when nobody is gone or the policy is `keep`. A customer another
    /// job's files still bring would only be reported: not counted.
    pub fn planned(&self) -> Option<Planned> {
        let action = match &self.policy {
            OnGone::Keep => return None,
            OnGone::Report => "report",
            OnGone::Delete => "delete",
            OnGone::Mark { .. } => "mark",
        };
        let (others, acted): (Vec<i64>, Vec<i64>) = self
            .gone
            .iter()
            .partition(|id| self.state.seen_by_another_job(&self.job, **id).is_some());
        if acted.is_empty() && others.is_empty() {
            return None;
        }
        let mut note = self.planned_note(&acted);
        if !others.is_empty() {
            note.push_str(&format!(
                "; {} another job's files still bring would only be reported: {}",
                crate::text::count(others.len() as u64, "customer"),
                crate::text::join_ids(&others)
            ));
        }
        Some(Planned {
            action,
            customer_ids: acted,
            note,
        })
    }

    /// [`Night::planned`] as a person reads it.
    fn planned_note(&self, ids: &[i64]) -> String {
        let what = match &self.policy {
            OnGone::Keep | OnGone::Report => "report (leave as they are)".to_string(),
            OnGone::Delete => "delete".to_string(),
            // The field is written by name, and Thulium creates a custom
            // field it does not have: the plan shows which it would write.
            OnGone::Mark {
                custom_field,
                value,
            } => format!("mark ({custom_field} = \"{value}\")"),
        };
        format!(
            "on_gone: the run would {what} {} gone from this file (brought by earlier files of job \"{}\"): {}",
            crate::text::count(ids.len() as u64, "customer"),
            self.job,
            crate::text::join_ids(ids)
        )
    }

    /// After the run: the gone customers handled (when the run read the
    /// whole file and was not stopped), each recorded as a `gone` entry,
    /// then the customers this file brought recorded in the state. An
    /// error: the state could not be written (the run is then aborted).
    ///
    /// `plan` is the run's plan handle: the write gate. A plan sends
    /// nothing and leaves the ledger and the state as they are, so with
    /// one this returns at once (what the run would do is
    /// [`Night::planned`]).
    ///
    /// Who tonight's rows turned out to be decides last: a customer a row
    /// resolved to (the state's keys after the run, and the customer ids
    /// the ledger recorded for this run's rows) is not gone, whatever its
    /// recorded keys said before the run (a row matched by another key).
    /// A customer another job's files still bring is only reported, and
    /// this job lets it go (the other job decides).
    ///
    /// `abort` is the run's: a stop signal during this step (the job layer
    /// keeps it registered) stops it between two calls; the customers not
    /// handled are recorded as not sent, the ledger ends `aborted` again,
    /// and the reason is returned (`Ok(Some(..))`: the night exits 3). They
    /// stay in the state's record of the job, so the next complete file
    /// counts them gone again and handles them.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish(
        self,
        end: &RunEnd,
        client: &ApiClient,
        ledger: &Ledger,
        batch_size: usize,
        abort: &Abort,
        plan: Option<&crate::pipeline::Noted>,
    ) -> Result<Option<String>, String> {
        if plan.is_some() {
            return Ok(None);
        }
        let acting = self.policy != OnGone::Keep;
        let skipped = self.skipped.clone().or_else(|| {
            (end.aborted.is_some()
                || end.read_error.is_some()
                || end.limit.is_some()
                || end.rows_read != self.file.rows)
                .then(|| {
                    format!(
                        "the run did not read every row ({} of {})",
                        end.rows_read, self.file.rows
                    )
                })
        });
        if skipped.is_some() && self.skipped.is_none() && !self.gone.is_empty() {
            eprintln!(
                "note: [customer] on_gone: the run did not read every row ({} of {}): the {} gone customer(s) are left for a complete file",
                end.rows_read,
                self.file.rows,
                self.gone.len()
            );
        }
        // Who this file brought: its keys' customers, as the run left the
        // state (a row that failed has none).
        let brought: Vec<(KeyHash, i64)> = self
            .file
            .keys
            .iter()
            .filter_map(|k| Some((*k, self.state.customer_of(*k)?)))
            .collect();
        let mut handled = Vec::new();
        let mut stopped = None;
        if skipped.is_none() && !self.gone.is_empty() {
            let resolved = resolved_ids(&brought, ledger.path());
            let gone: Vec<i64> = self
                .gone
                .iter()
                .copied()
                .filter(|id| !resolved.contains(id))
                .collect();
            // Another job's files still bring these: reported only.
            let mut acted = Vec::with_capacity(gone.len());
            let mut theirs = Vec::new();
            for id in gone {
                match self.state.seen_by_another_job(&self.job, id) {
                    Some(other) => theirs.push(self.held_by(id, &other)),
                    None => acted.push(id),
                }
            }
            if !theirs.is_empty() {
                ledger
                    .write(&theirs.iter().cloned().map(Entry::Gone).collect::<Vec<_>>())
                    .await
                    .map_err(|e| e.to_string())?;
                handled.extend(theirs.iter().map(|e| e.customer_id));
            }
            // Each outcome is in the ledger as soon as it is known
            // (a DELETE is not idempotent in what it says: a kill between
            // two must not lose the record of one made).
            let events = match &self.policy {
                OnGone::Keep => Vec::new(),
                OnGone::Report => {
                    let events: Vec<GoneEvent> =
                        acted.iter().map(|id| self.reported(*id)).collect();
                    ledger
                        .write(&events.iter().cloned().map(Entry::Gone).collect::<Vec<_>>())
                        .await
                        .map_err(|e| e.to_string())?;
                    events
                }
                OnGone::Delete => {
                    self.delete(&acted, client, ledger, abort, &mut stopped)
                        .await?
                }
                OnGone::Mark {
                    custom_field,
                    value,
                } => {
                    let how = Marking {
                        field: custom_field,
                        value,
                        batch_size,
                    };
                    self.mark(&acted, client, ledger, how, abort, &mut stopped)
                        .await?
                }
            };
            handled.extend(
                events
                    .iter()
                    .filter(|e| {
                        e.status == Some(Status::Ok)
                            && matches!(e.action, Some(Action::Deleted | Action::Marked))
                    })
                    .map(|e| e.customer_id),
            );
            // A customer deleted is forgotten whole (keys, parts): the
            // state caches Thulium, which no longer holds it.
            for e in &events {
                if e.status == Some(Status::Ok) && e.action == Some(Action::Deleted) {
                    self.state.learn(crate::state::Learnt::ForgetCustomer {
                        customer_id: e.customer_id,
                    });
                }
            }
            self.state.flush().map_err(|e| e.to_string())?;
        }
        // The run's end was written before this step: the ledger ends
        // again, aborted (as a run stopped mid-file does), or saying why
        // on_gone was not applied (the summary and `report` say so).
        let not_applied = skipped
            .filter(|_| acting)
            .map(|why| format!("not applied tonight: {why}"));
        if stopped.is_some() || not_applied.is_some() {
            let again = Entry::End(crate::ledger::End {
                rows_read: end.rows_read,
                finished_at: crate::ledger::now(),
                aborted: stopped.clone().or_else(|| end.aborted.clone()),
                read_error: end.read_error.clone(),
                limit: end.limit,
                on_gone: not_applied,
            });
            ledger.write(&[again]).await.map_err(|e| e.to_string())?;
        }
        // A changed set of match keys: the record is replaced only by a
        // file read whole, and the keys' names recorded with it.
        let read_whole = end.aborted.is_none()
            && end.read_error.is_none()
            && end.limit.is_none()
            && end.rows_read == self.file.rows
            && self.file.read_all
            && self.file.unidentified == 0;
        let reseed = self.reseed && read_whole;
        let record = crate::state::SeenRecord {
            match_keys: (!self.reseed || reseed).then_some(self.match_keys.as_slice()),
            reseed,
        };
        self.state
            .record_seen_as(&self.job, &self.sha256, &brought, &handled, record)
            .map_err(|e| e.to_string())?;
        Ok(stopped)
    }

    /// A gone customer that another job's files still bring: only
    /// reported, and this job lets it go (the other job decides).
    fn held_by(&self, customer_id: i64, other: &str) -> GoneEvent {
        self.event(
            customer_id,
            Status::Ok,
            Action::Gone,
            format!(
                "{}: reported, not {}: job \"{other}\" still brings it (its files decide)",
                self.why(),
                match self.policy {
                    OnGone::Mark { .. } => "marked",
                    OnGone::Delete => "deleted",
                    _ => "handled",
                }
            ),
        )
    }

    /// A gone customer not handled because the run is stopping.
    fn not_sent(&self, customer_id: i64, action: Action, why: &str) -> GoneEvent {
        let verb = if action == Action::Marked {
            "marked"
        } else {
            "deleted"
        };
        self.event(
            customer_id,
            Status::Failed,
            action,
            format!(
                "{}: not {verb}: the run stopped ({why}); the next complete file tries again",
                self.why()
            ),
        )
    }

    fn event(
        &self,
        customer_id: i64,
        status: Status,
        action: Action,
        message: String,
    ) -> GoneEvent {
        GoneEvent {
            customer_id,
            status: Some(status),
            action: Some(action),
            message: Some(message),
            ..GoneEvent::default()
        }
    }

    fn why(&self) -> String {
        format!(
            "not in this file (complete); brought by an earlier file of job \"{}\"",
            self.job
        )
    }

    fn reported(&self, customer_id: i64) -> GoneEvent {
        self.event(
            customer_id,
            Status::Ok,
            Action::Gone,
            format!(
                "{}: reported, left as it is (on_gone = \"report\")",
                self.why()
            ),
        )
    }

    /// `DELETE customers/:id`, one by one (the guard keeps them few); a
    /// customer already gone from Thulium (404) counts as deleted.
    /// A stop signal is honoured between two customers: the call in
    /// flight is finished and recorded, the rest are recorded as not sent
    /// (and `stopped` says why).
    async fn delete(
        &self,
        ids: &[i64],
        client: &ApiClient,
        ledger: &Ledger,
        abort: &Abort,
        stopped: &mut Option<String>,
    ) -> Result<Vec<GoneEvent>, String> {
        let mut out = Vec::with_capacity(ids.len());
        let seen = self.seen_of_gone();
        let record = |ev: &GoneEvent| {
            let entry = [Entry::Gone(ev.clone())];
            async move { ledger.write(&entry).await.map_err(|e| e.to_string()) }
        };
        for &customer_id in ids {
            if let Some(why) = stopping(abort) {
                let ev = self.not_sent(customer_id, Action::Deleted, &why);
                record(&ev).await?;
                out.push(ev);
                stopped.get_or_insert(why);
                continue;
            }
            let keys = seen.get(&customer_id).cloned();
            if let Err(why) = before_delete(client, self.images.as_ref(), customer_id, keys).await {
                let ev = self.event(
                    customer_id,
                    Status::Failed,
                    Action::Deleted,
                    format!("{}: not deleted: {why}", self.why()),
                );
                record(&ev).await?;
                out.push(ev);
                continue;
            }
            let call = client.send(&DeleteCustomer { customer_id }).await;
            let mut ev = match &call.result {
                Ok(()) => self.event(
                    customer_id,
                    Status::Ok,
                    Action::Deleted,
                    format!("{}: deleted (on_gone = \"delete\")", self.why()),
                ),
                Err(CallError::Refused { status: 404, .. }) => self.event(
                    customer_id,
                    Status::Ok,
                    Action::Deleted,
                    format!("{}: already gone from Thulium", self.why()),
                ),
                // Sent, and no answer (a timeout, a dropped connection):
                // the customer may be deleted. Unknown, not failed: `undo`
                // creates it again from its before-image if it is gone,
                // and the next complete file finds out (a 404 is deleted).
                Err(e @ CallError::Unknown { .. }) => self.event(
                    customer_id,
                    Status::Unknown,
                    Action::Deleted,
                    format!("customer {customer_id}: the DELETE was sent but its outcome is unknown ({e}); it may be deleted: the next complete file finds out (a customer already gone counts as deleted)"),
                ),
                Err(e) => failed(self.event(
                    customer_id,
                    Status::Failed,
                    Action::Deleted,
                    format!("could not delete customer {customer_id}: {e}; the next complete file tries again"),
                ), e),
            };
            ev.attempts = (call.attempts > 0).then_some(call.attempts);
            let stop = matches!(&call.result, Err(e) if e.stops_the_run().is_some());
            record(&ev).await?;
            out.push(ev);
            if stop {
                break;
            }
        }
        Ok(out)
    }

    /// The gone customers' records in the state's `seen` (what handling
    /// them forgets there): kept in their before-images, for `undo`.
    fn seen_of_gone(&self) -> HashMap<i64, crate::undo::images::SeenKeys> {
        let gone: HashSet<i64> = self.gone.iter().copied().collect();
        let mut keys: HashMap<i64, Vec<KeyHash>> = HashMap::new();
        for (customer_id, key) in self.state.seen(&self.job) {
            if gone.contains(&customer_id) {
                keys.entry(customer_id).or_default().push(key);
            }
        }
        keys.into_iter()
            .map(|(id, mut k)| {
                k.sort_unstable();
                (id, crate::undo::images::SeenKeys::of(&self.job, &k))
            })
            .collect()
    }

    /// Before a chunk is marked: each customer's field read and its old
    /// value written to the undo file (durable) first. The customers whose
    /// value cannot be read come back apart, with why: they are not
    /// marked (a mark without its before-image could not be taken back).
    async fn before_mark(
        &self,
        client: &ApiClient,
        chunk: &[i64],
        field: &str,
        payload: &Customer,
        seen: &HashMap<i64, crate::undo::images::SeenKeys>,
    ) -> Result<Vec<(i64, String)>, String> {
        let Some(images) = &self.images else {
            return Ok(Vec::new());
        };
        let written = crate::current::Written {
            custom: vec![field.to_string()],
            ..crate::current::Written::default()
        };
        let mut out = Vec::new();
        let mut unread = Vec::new();
        for &customer_id in chunk {
            match client.get_customer(customer_id, &written).await.result {
                Ok(Some(c)) => out.push(crate::undo::images::Image::marked(
                    customer_id,
                    payload,
                    Some(&written.keep(&c)),
                    seen.get(&customer_id).cloned(),
                )),
                // Gone already: the PUT says so, nothing to keep.
                Ok(None) => {}
                Err(e) => unread.push((
                    customer_id,
                    format!("could not read it for its before-image: {e}"),
                )),
            }
        }
        images.record(out).await.map_err(|e| e.to_string())?;
        Ok(unread)
    }

    /// One custom field set on each gone customer (`PUT batch/customers`,
    /// idempotent), in batches; each customer's old value of the field
    /// goes to the undo file first.
    async fn mark(
        &self,
        ids: &[i64],
        client: &ApiClient,
        ledger: &Ledger,
        how: Marking<'_>,
        abort: &Abort,
        stopped: &mut Option<String>,
    ) -> Result<Vec<GoneEvent>, String> {
        let Marking {
            field,
            value,
            batch_size,
        } = how;
        let mut out = Vec::with_capacity(ids.len());
        let seen = self.seen_of_gone();
        let payload = Customer {
            custom_fields: Named(vec![(field.to_string(), Scalar::Text(value.to_string()))]),
            ..Customer::default()
        };
        for chunk in ids.chunks(batch_size.max(1)) {
            // Each chunk's outcomes go to the ledger as soon as it settles
            // (a kill later must not lose the record of marks made).
            let settled = out.len();
            let stop = self
                .mark_chunk(
                    chunk, client, field, value, &payload, &seen, abort, stopped, &mut out,
                )
                .await;
            let entries: Vec<Entry> = out[settled..].iter().cloned().map(Entry::Gone).collect();
            ledger.write(&entries).await.map_err(|e| e.to_string())?;
            if stop {
                break;
            }
        }
        Ok(out)
    }

    /// One chunk of [`Night::mark`]: its events pushed to `out`; whether
    /// the step stops (a call that stops the run).
    #[allow(clippy::too_many_arguments)]
    async fn mark_chunk(
        &self,
        chunk: &[i64],
        client: &ApiClient,
        field: &str,
        value: &str,
        payload: &Customer,
        seen: &HashMap<i64, crate::undo::images::SeenKeys>,
        abort: &Abort,
        stopped: &mut Option<String>,
        out: &mut Vec<GoneEvent>,
    ) -> bool {
        if let Some(why) = stopping(abort) {
            out.extend(
                chunk
                    .iter()
                    .map(|&id| self.not_sent(id, Action::Marked, &why)),
            );
            stopped.get_or_insert(why);
            return false;
        }
        let unread = match self.before_mark(client, chunk, field, payload, seen).await {
            Ok(unread) => unread,
            // The undo file cannot be written: nobody in the chunk is
            // marked without it.
            Err(why) => chunk.iter().map(|&id| (id, why.clone())).collect(),
        };
        for (customer_id, why) in &unread {
            out.push(self.event(
                *customer_id,
                Status::Failed,
                Action::Marked,
                format!("{}: not marked: {why}", self.why()),
            ));
        }
        let chunk: Vec<i64> = chunk
            .iter()
            .copied()
            .filter(|id| !unread.iter().any(|(u, _)| u == id))
            .collect();
        if chunk.is_empty() {
            return false;
        }
        let updates: Vec<CustomerUpdate> = chunk
            .iter()
            .map(|&customer_id| CustomerUpdate {
                customer_id,
                fields: payload.clone(),
            })
            .collect();
        let call = client
            .send(&UpdateCustomers {
                customers: updates.iter().collect(),
            })
            .await;
        let fates = RowFate::of_rows(&call.result, chunk.len());
        for (&customer_id, fate) in chunk.iter().zip(&fates) {
            let mut ev = match fate {
                RowFate::Done(()) => self.event(
                    customer_id,
                    Status::Ok,
                    Action::Marked,
                    format!("{}: marked {field} = \"{value}\"", self.why()),
                ),
                f if f.says_missing("customer") => self.event(
                    customer_id,
                    Status::Ok,
                    Action::Deleted,
                    format!("{}: already gone from Thulium, nothing to mark", self.why()),
                ),
                f => {
                    let (message, http_status) = f.why_not().unwrap_or_default();
                    let mut ev = self.event(
                            customer_id,
                            Status::Failed,
                            Action::Marked,
                            format!("could not mark customer {customer_id}: {message}; the next complete file tries again"),
                        );
                    ev.http_status = http_status;
                    ev
                }
            };
            ev.attempts = (call.attempts > 0).then_some(call.attempts);
            out.push(ev);
        }
        matches!(&call.result, Err(e) if e.stops_the_run().is_some())
    }
}

/// How gone customers are marked: the custom field, its value, and how
/// many customers one `PUT batch/customers` carries.
#[derive(Debug, Clone, Copy)]
struct Marking<'a> {
    field: &'a str,
    value: &'a str,
    batch_size: usize,
}

/// The customers tonight's rows resolved to: those the file's keys name
/// in the state after the run, and those the ledger at `ledger` recorded
/// for this run's rows (the proof: a row matched by a key its customer's
/// record did not have yet). None of them is gone.
fn resolved_ids(brought: &[(KeyHash, i64)], ledger: &Path) -> HashSet<i64> {
    let mut ids: HashSet<i64> = brought.iter().map(|(_, id)| *id).collect();
    match crate::outcomes::Outcomes::read(ledger) {
        Ok(outcomes) => {
            for row in 1..=outcomes.max_row() {
                ids.extend(outcomes.row(row).and_then(|r| r.customer_id()));
            }
        }
        // The state's keys still say who the rows were.
        Err(e) => {
            tracing::warn!(ledger = %ledger.display(), error = %e, "Cannot read the ledger back for on_gone.")
        }
    }
    ids
}

/// Why the gone step stops before its next call: the run's abort (a stop
/// signal), once set.
fn stopping(abort: &Abort) -> Option<String> {
    abort.is_set().then(|| {
        abort
            .reason()
            .unwrap_or_else(|| "the run was stopped".into())
    })
}

/// The HTTP status of a failed call, on its event.
fn failed(mut ev: GoneEvent, e: &CallError) -> GoneEvent {
    if let CallError::Refused { status, .. } = e {
        ev.http_status = Some(*status);
    }
    ev
}

/// Just before a gone customer is deleted: the one place where its
/// before-image is kept. Read whole (custom fields and addresses too), it
/// goes to the undo file, durable, before the `DELETE`, with its record in
/// the state's `seen` (`undo` creates it again from there, under a new
/// id: the API cannot create it under its old one). Without an undo file
/// (`--no-undo`) nothing is kept. An `Err` keeps the customer: it is not
/// deleted without its before-image.
pub async fn before_delete(
    client: &ApiClient,
    images: Option<&Arc<crate::undo::images::Images>>,
    customer_id: i64,
    seen: Option<crate::undo::images::SeenKeys>,
) -> Result<(), String> {
    let Some(images) = images else {
        return Ok(());
    };
    // Every field: `include_custom_fields` and the three addresses are
    // asked for (a custom field's or an address's name asks for all).
    let whole = crate::current::Written {
        fields: Vec::new(),
        custom: vec![String::new()],
        addresses: vec!["address".into()],
    };
    match client.get_customer(customer_id, &whole).await.result {
        // Gone already: the DELETE finds none.
        Ok(None) => Ok(()),
        Ok(Some(c)) => images
            .deleted(customer_id, c.fields, seen)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("could not read it for its before-image: {e}")),
    }
}
