//! `retry`: what to send again from a ledger, and how.
//!
//! The ledger is read twice: a compact fold says which rows are done; a
//! second pass keeps, for the rows that are not, the last event of every
//! stage (and where every recorded row starts in the file). Then each row
//! gets a verdict per stage:
//!
//! | last state | verdict |
//! |---|---|
//! | ok | done (a created customer's id is reused) |
//! | never sent, skipped, failed for a retryable cause | send |
//! | failed on a refusal (4xx), invalid | send only when the mapping or the source changed; otherwise left: it would fail the same way |
//! | customer unknown | looked up by `identifier` when the mapping has one (one match: adopted; none: sent; several: left as duplicates); otherwise left unless `--include-unknown` |
//! | item or feed record unknown | left unless `--include-unknown` (no lookup exists) |
//!
//! After a crash (no `end` event after the last run or retry) every row is
//! looked at again, since a row can look done while a stage it needed was
//! never recorded; a row's needs come from mapping it again.
//!
//! Rows are re-read by seeking to their byte offsets when the source is
//! unchanged; from an edited copy (`--source`) they are picked by record
//! number while reading it through.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::ledger::{self, Entry, Header, ReadError, RowEvent, Stage, Status};
use crate::mapping::{Plan, RowPayloads};
use crate::pipeline::MappedRow;
use crate::report::Fold;
use crate::source::{FieldError, RowId, Source, SourceError, SourceOptions};

/// The last event of one stage of one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Last {
    pub status: Status,
    pub retryable: Option<bool>,
    pub customer_id: Option<i64>,
    pub message: Option<String>,
}

/// What the ledger says, for planning a retry.
#[derive(Debug)]
pub struct View {
    pub header: Header,
    pub fold: Fold,
    /// Where each recorded row starts (index row-1).
    pub positions: Vec<Option<RowId>>,
    /// Rows not done: (stage, group) → last event.
    pub stages: HashMap<u64, HashMap<(Stage, usize), Last>>,
    /// Rows read by the last run that ended (0 if it did not end).
    pub rows_read: u64,
    pub unreadable: Vec<String>,
}

/// Reads a ledger for `retry`.
pub fn view(path: &Path) -> Result<View, ReadError> {
    let (header, fold, unreadable) = crate::report::fold(path)?;
    // After a crash every recorded row is looked at again: one whose
    // customer was created may not have reached its later stages.
    let crashed = !fold.ended();
    let keep = |row: u64| crashed || !fold.is_done(row);
    let mut positions: Vec<Option<RowId>> = Vec::new();
    let mut stages: HashMap<u64, HashMap<(Stage, usize), Last>> = HashMap::new();
    let mut rows_read = 0;
    ledger::read(path, |e| match e {
        Entry::Row(RowEvent {
            row,
            line,
            offset,
            stage: Some(stage),
            status: Some(status),
            group,
            retryable,
            customer_id,
            message,
            ..
        }) => {
            let i = row.saturating_sub(1) as usize;
            if positions.len() <= i {
                positions.resize(i + 1, None);
            }
            positions[i] = Some(RowId { row, line, offset });
            if keep(row) {
                stages.entry(row).or_default().insert(
                    (stage, group.unwrap_or(0)),
                    Last {
                        status,
                        retryable,
                        customer_id,
                        message,
                    },
                );
            }
        }
        Entry::Intent(intent) => {
            for row in intent.rows {
                if keep(row) {
                    let last = Last {
                        status: Status::Unknown,
                        retryable: None,
                        customer_id: None,
                        message: Some("the call was in flight when the run stopped".into()),
                    };
                    stages
                        .entry(row)
                        .or_default()
                        .insert((intent.stage, intent.group.unwrap_or(0)), last);
                }
            }
        }
        Entry::End(end) => rows_read = rows_read.max(end.rows_read),
        _ => {}
    })?;
    Ok(View {
        header,
        fold,
        positions,
        stages,
        rows_read,
        unreadable,
    })
}

/// A stage's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Done,
    Send,
    Reconcile,
    Leave(String),
}

/// How a retry treats rows.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// The mapping or the source changed since the ledger's run.
    pub changed: bool,
    pub include_unknown: bool,
    /// The mapping gives customers an identifier to look them up by.
    pub can_reconcile: bool,
}

fn verdict(last: Option<&Last>, stage: Stage, rules: Rules) -> Verdict {
    let Some(last) = last else {
        return Verdict::Send;
    };
    match last.status {
        Status::Ok => Verdict::Done,
        Status::Skipped => Verdict::Send,
        Status::Failed if last.retryable != Some(false) => Verdict::Send,
        Status::Failed | Status::Invalid => {
            if rules.changed {
                Verdict::Send
            } else {
                Verdict::Leave("refused, and neither the mapping nor the source changed: it would fail the same way (fix the data and pass --source, or the mapping and pass --mapping)".into())
            }
        }
        Status::Unknown if stage == Stage::Customer && rules.can_reconcile => Verdict::Reconcile,
        Status::Unknown if rules.include_unknown => Verdict::Send,
        Status::Unknown => Verdict::Leave(format!(
            "{} outcome unknown: it may have been applied; not resent without --include-unknown{}",
            stage.name(),
            if stage == Stage::Customer {
                " (map an identifier so that retry can look customers up)"
            } else {
                ""
            }
        )),
    }
}

/// One row to send again.
#[derive(Debug, Clone)]
pub struct Work {
    pub row: MappedRow,
    /// Look the customer up by this identifier before sending it.
    pub reconcile: Option<String>,
    /// The row had been invalid and now maps: record it as such.
    pub now_valid: bool,
}

/// What planning found.
#[derive(Debug, Default)]
pub struct Planned {
    pub work: Vec<Work>,
    /// Rows invalid under the mapping now in use (events to record).
    pub invalid: Vec<(RowId, Vec<FieldError>)>,
    /// Rows (or stages) left alone, by reason.
    pub left: BTreeMap<String, u64>,
    pub rows_seen: u64,
}

/// Keeps only what a row still needs, per the verdicts.
fn prune(
    payloads: &mut RowPayloads,
    stages: Option<&HashMap<(Stage, usize), Last>>,
    rules: Rules,
    left: &mut BTreeMap<String, u64>,
) -> Option<Verdict> {
    let get = |stage: Stage, group: usize| stages.and_then(|s| s.get(&(stage, group)));
    let mut leave = |v: &Verdict| {
        if let Verdict::Leave(reason) = v {
            *left.entry(reason.clone()).or_default() += 1;
        }
    };
    // The customer.
    let customer = if payloads.customer.is_some() || payloads.existing_customer_id.is_some() {
        let last = get(Stage::Customer, 0);
        let v = if payloads.existing_customer_id.is_some() && payloads.customer.is_none() {
            Verdict::Done
        } else {
            verdict(last, Stage::Customer, rules)
        };
        if v == Verdict::Done {
            if let Some(id) = last.and_then(|l| l.customer_id) {
                payloads.existing_customer_id = Some(id);
            }
            payloads.customer = None;
        }
        leave(&v);
        Some(v)
    } else {
        None
    };
    let customer_blocked = matches!(customer, Some(Verdict::Leave(_)));
    let keep = |stage: Stage, group: usize, leave: &mut dyn FnMut(&Verdict)| {
        let v = verdict(get(stage, group), stage, rules);
        leave(&v);
        v == Verdict::Send
    };
    payloads
        .field_groups
        .retain(|item| !customer_blocked && keep(Stage::FieldGroup, item.index, &mut leave));
    if payloads.campaign.is_some() && (customer_blocked || !keep(Stage::Campaign, 0, &mut leave)) {
        payloads.campaign = None;
    }
    if payloads.feed.is_some() && (customer_blocked || !keep(Stage::Feed, 0, &mut leave)) {
        payloads.feed = None;
    }
    if payloads.campaign_update.is_some() && !keep(Stage::CampaignUpdate, 0, &mut leave) {
        payloads.campaign_update = None;
    }
    if customer_blocked {
        payloads.customer = None;
    }
    customer
}

/// Reads the rows that are not done and plans what each still needs.
pub fn plan(
    view: &View,
    plan: &Plan,
    path: &Path,
    options: &SourceOptions,
    seekable: bool,
    rules: Rules,
) -> Result<Planned, SourceError> {
    let mut planned = Planned::default();
    let mut source = Source::open(path, options)?;
    let (info, header) = (source.info().clone(), source.header().to_vec());
    let max_row = view.fold.max_row();
    let crashed = !view.fold.ended();
    let needed = |n: u64| crashed || n > max_row || !view.fold.is_done(n);
    // The row the open source reads next.
    let mut next: u64 = 1;
    let mut n: u64 = 1;
    loop {
        // Skip rows that are done; seek when the next needed row is known
        // and not where the source stands.
        while n <= max_row && !needed(n) {
            n += 1;
        }
        if seekable && next != n {
            if let Some(Some(at)) = view.positions.get(n.saturating_sub(1) as usize) {
                source = Source::open_at(path, options.quote, info.clone(), header.clone(), *at)?;
            }
        }
        let Some(item) = source.next_row() else { break };
        let item = item?;
        let id = match &item {
            Ok(row) => row.id,
            Err(bad) => bad.id,
        };
        next = id.row + 1;
        if id.row < n || !needed(id.row) {
            continue;
        }
        n = id.row + 1;
        planned.rows_seen += 1;
        let stages = view.stages.get(&id.row);
        let was_invalid = stages
            .and_then(|s| s.get(&(Stage::Mapping, 0)))
            .is_some_and(|l| l.status == Status::Invalid);
        if was_invalid && !rules.changed {
            *planned.left.entry("invalid, and neither the mapping nor the source changed: fix them and pass --mapping or --source".into()).or_default() += 1;
            continue;
        }
        let row = match item {
            Err(bad) => {
                planned.invalid.push((bad.id, vec![bad.error]));
                continue;
            }
            Ok(row) => row,
        };
        let mut payloads = match plan.map_row(&row) {
            Ok(p) => p,
            Err(errors) => {
                planned.invalid.push((row.id, errors));
                continue;
            }
        };
        let customer = prune(&mut payloads, stages, rules, &mut planned.left);
        let reconcile = if customer == Some(Verdict::Reconcile) {
            payloads
                .customer
                .as_ref()
                .and_then(|c| c.get("identifier"))
                .map(|v| v.as_str().map_or(v.to_string(), str::to_string))
        } else {
            None
        };
        let empty = payloads.customer.is_none()
            && payloads.field_groups.is_empty()
            && payloads.campaign.is_none()
            && payloads.campaign_update.is_none()
            && payloads.feed.is_none();
        if empty && !was_invalid {
            continue;
        }
        planned.work.push(Work {
            row: MappedRow {
                id: row.id,
                payloads,
            },
            reconcile,
            now_valid: was_invalid,
        });
    }
    Ok(planned)
}

/// Looks up, by identifier, every customer whose creation had an unknown
/// outcome: one match is adopted (recorded `ok`, `"reconciled": true`), none
/// means it is sent, several are left as duplicates (recorded `failed` with
/// the ids). Returns the rows to send, and the reconciled and duplicate
/// counts.
pub async fn reconcile(
    client: &crate::client::ApiClient,
    ledger: &ledger::Ledger,
    work: Vec<Work>,
    concurrency: usize,
) -> Result<(Vec<MappedRow>, u64, u64), ledger::LedgerError> {
    use futures::StreamExt;
    let results: Vec<(Work, Lookup)> = futures::stream::iter(work)
        .map(|w| async move {
            let lookup = match &w.reconcile {
                Some(identifier) => lookup(client, identifier).await,
                None => Lookup::NotAsked,
            };
            (w, lookup)
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    let (mut reconciled, mut duplicates) = (0, 0);
    let mut out = Vec::with_capacity(results.len());
    let mut entries = Vec::new();
    for (w, found) in results {
        let Work { mut row, .. } = w;
        let id = row.id;
        let mut ev = RowEvent {
            row: id.row,
            line: id.line,
            offset: id.offset,
            stage: Some(Stage::Customer),
            ..Default::default()
        };
        match found {
            Lookup::NotAsked | Lookup::None => out.push(row),
            Lookup::One(customer_id) => {
                reconciled += 1;
                ev.status = Some(Status::Ok);
                ev.customer_id = Some(customer_id);
                ev.reconciled = Some(true);
                ev.message = Some(
                    "found by identifier after an unknown outcome: adopted, not created again"
                        .into(),
                );
                entries.push(Entry::Row(ev));
                row.payloads.customer = None;
                row.payloads.existing_customer_id = Some(customer_id);
                out.push(row);
            }
            Lookup::Many(ids) => {
                duplicates += 1;
                ev.status = Some(Status::Failed);
                ev.retryable = Some(false);
                let list: Vec<String> = ids.iter().map(i64::to_string).collect();
                ev.message = Some(format!("{} customers already have this identifier (ids {}): duplicates, not touched; merge them in Thulium", ids.len(), list.join(", ")));
                entries.push(Entry::Row(ev));
                // Only the update, which does not need the customer, goes on.
                row.payloads.customer = None;
                row.payloads.field_groups.clear();
                row.payloads.campaign = None;
                row.payloads.feed = None;
                if row.payloads.campaign_update.is_some() {
                    out.push(row);
                }
            }
            Lookup::Failed(message) => {
                ev.status = Some(Status::Unknown);
                ev.message = Some(format!(
                    "could not look the customer up ({message}); still unknown"
                ));
                entries.push(Entry::Row(ev));
            }
        }
    }
    ledger.write(&entries).await?;
    Ok((out, reconciled, duplicates))
}

#[derive(Debug)]
enum Lookup {
    NotAsked,
    None,
    One(i64),
    Many(Vec<i64>),
    Failed(String),
}

/// `GET /api/customers?identifier=...`: `{"count", "result": [...]}` or a
/// bare array; ids as numbers or strings.
async fn lookup(client: &crate::client::ApiClient, identifier: &str) -> Lookup {
    let path = format!(
        "customers?identifier={}&limit=100",
        crate::pipeline::encode_segment(identifier)
    );
    let reply = client.call(reqwest::Method::GET, &path, None, true).await;
    let crate::client::Outcome::Answered { body, .. } = reply.outcome else {
        return Lookup::Failed(format!("{:?}", reply.outcome));
    };
    let v: serde_json::Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => return Lookup::Failed(format!("the answer is not JSON: {e}")),
    };
    let list = v
        .get("result")
        .and_then(|r| r.as_array())
        .or_else(|| v.as_array());
    let Some(list) = list else {
        return Lookup::Failed("the answer has no result list".into());
    };
    let ids: Vec<i64> = list
        .iter()
        // Only exact identifier matches count, whatever the search matched.
        .filter(|c| {
            c.get("identifier")
                .is_none_or(|i| i.as_str().map_or(i.to_string(), str::to_string) == identifier)
        })
        .filter_map(|c| crate::client::lenient_int(c.get("customer_id").or_else(|| c.get("id"))))
        .collect();
    match ids.len() {
        0 => Lookup::None,
        1 => Lookup::One(ids[0]),
        _ => Lookup::Many(ids),
    }
}
