//! `plan`: what `run` would do, field by field, against the live system,
//! writing nothing. A plan is a run: the same preparation
//! ([`job::prepare_plan`]: the survey, the state, preflight, the index or
//! lookups), the same pipeline deciding every row, its reads made for real;
//! only its writes are counted and noted instead of sent
//! (`pipeline::would`), its ledger goes to memory, its state is read-only.
//! One place decides, so the plan is honest: the run that follows on an
//! unchanged system takes the same action for every row.
//!
//! What it shows comes from two sources: the outcomes the run records
//! (read back from the ledger in memory: each row's action, each stage's
//! fate) and the notes the write sites make (which fields an update would
//! change, from Thulium's values the index or lookup read). It prints
//! values from the system and the file, so it goes to stdout only.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::Value;

use crate::cli::{PlanArgs, RunArgs};
use crate::ledger::{self, Action, Entry, Stage, Status};
use crate::pace::RateSpec;
use crate::pipeline::Note;
use crate::{job, Exit};

/// How many example changes the text shows per field.
const EXAMPLES: usize = 3;

/// The plan of a run: what it would do to each row, and what that costs.
#[derive(Debug, Default, Serialize)]
pub struct Plan {
    /// Rows by the action `run` would take (`created`, `updated`, ...,
    /// `invalid`, `ambiguous`, `lookup_failed`).
    pub actions: BTreeMap<String, u64>,
    /// Fields by how many customers an update would change them for
    /// (`surname`, `custom_fields.Segment`, `address.city`,
    /// `field_group.<group id>.<field id>`).
    pub fields: BTreeMap<String, u64>,
    /// Fields an update would send whose value in Thulium is not known
    /// (its answer did not carry them), by customers: not "no change".
    pub unknown: BTreeMap<String, u64>,
    /// Updates that change no field Thulium showed (still sent: they
    /// write fields whose value its answer did not carry; an update whose
    /// every value Thulium holds is not sent, and is `unchanged`).
    pub updates_changing_nothing: u64,
    /// The later stages, by what would become of them.
    pub stages: BTreeMap<String, BTreeMap<String, u64>>,
    /// The requests the run would send: its reads (made by this plan too)
    /// and its writes (counted by the run's own batching).
    pub requests: u64,
    pub reads: u64,
    pub writes: BTreeMap<String, u64>,
    /// `--rate` (none for `--rate auto`: the time depends on the limit found).
    pub rate: Option<f64>,
    pub seconds_at_rate: Option<f64>,
    pub seconds_at_10: f64,
    /// What the run would say besides (`--max-changes` would stop it, the
    /// file's columns changed, ...).
    pub notes: Vec<String>,
    /// With `--state` and `[customer] on_gone` acting: the customers gone
    /// from the file and what the run would do with them (`report`,
    /// `delete`, `mark`); none when nobody is gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gone: Option<crate::gone::Planned>,
    /// The plan stopped before its end (a signal, a refused password).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub rows: Vec<PlanRow>,
    /// Up to [`EXAMPLES`] changes per field, for the text.
    #[serde(skip)]
    examples: BTreeMap<String, Vec<String>>,
}

/// One row's plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub row: u64,
    pub line: u64,
    pub action: String,
    /// The customer's id in Thulium (none for a customer to be created).
    pub customer_id: Option<i64>,
    /// The fields whose value in Thulium differs from the row's.
    pub changes: Vec<FieldChange>,
    /// Fields sent whose value in Thulium is not known.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
    /// What would become of the row's later stages.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StagePlan>,
    /// Why, for a row not planned as asked (invalid, ambiguous, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One field an update would change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub from: Value,
    pub to: Value,
}

/// What would become of one later stage of a row.
#[derive(Debug, Clone, Serialize)]
pub struct StagePlan {
    pub stage: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    pub would: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// `plan`'s arguments as the `run` it plans (a plan sends nothing, so the
/// ledger flags are left at their defaults).
fn as_run(args: &PlanArgs) -> RunArgs {
    RunArgs {
        csv: args.csv.clone(),
        mapping: args.mapping.clone(),
        ledger: None,
        connect: args.connect.clone(),
        sandbox: args.sandbox,
        pace: args.pace.clone(),
        dry_run: false,
        show_payloads: 0,
        force_new_ledger: false,
        include_unknown: args.include_unknown,
        limit: args.limit,
        sheet: args.sheet.clone(),
        max_errors: 20,
        no_preflight: args.no_preflight,
        sync: args.sync.clone(),
        // A plan writes nothing, before-images neither.
        images: crate::cli::ImagesArgs { no_undo: true },
        output: args.output.clone(),
    }
}

/// The latest outcome of a row at a stage, as the run recorded it.
#[derive(Debug, Clone)]
struct Recorded {
    line: u64,
    status: Status,
    action: Option<Action>,
    message: Option<String>,
    customer_id: Option<i64>,
}

/// The plan's ledger: the run's row events read back as they are written,
/// kept in memory (the latest per row, stage and group), nothing on disk.
#[derive(Debug, Clone, Default)]
struct Memory(Arc<Mutex<Latest>>);

/// The latest outcome by (row, stage, field group).
type Latest = BTreeMap<(u64, Stage, usize), Recorded>;

impl ledger::Sink for Memory {
    fn append(&mut self, lines: &[u8]) -> std::io::Result<()> {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Ok(Entry::Row(ev)) = serde_json::from_slice::<Entry>(line) else {
                continue;
            };
            let (Some(stage), Some(status)) = (ev.stage, ev.status) else {
                continue;
            };
            held.insert(
                (ev.row, stage, ev.group.unwrap_or(0)),
                Recorded {
                    line: ev.line,
                    status,
                    action: ev.action,
                    message: ev.message,
                    customer_id: ev.customer_id,
                },
            );
        }
        Ok(())
    }
}

/// Runs the plan of `args`: prepared and driven as a run, writing nothing.
pub async fn plan(args: &PlanArgs) -> anyhow::Result<Plan> {
    if args.output.metrics_file.is_some() {
        anyhow::bail!("plan writes no file: --metrics-file is for run, retry and sync");
    }
    let run = as_run(args);
    let memory = Memory::default();
    let job = job::prepare_plan(&run, memory.clone()).await?;
    let ran = job::drive(job, &run.pace, &run.output).await;
    let notes = ran
        .plan
        .as_ref()
        .map(|n| n.take_notes())
        .unwrap_or_default();
    let mut writes: BTreeMap<String, u64> = ran
        .plan
        .as_ref()
        .map(|n| n.calls())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    // The gone step's calls, after the pipeline: the run keeps an undo
    // file (a plan has no `--no-undo`), so each customer deleted or marked
    // is read for its before-image first.
    let gone_reads = match &ran.gone {
        Some(gone) => {
            let (reads, calls) = gone.calls(u64::from(args.pace.batch_size), true);
            if let Some((what, n)) = calls {
                *writes.entry(what.to_string()).or_default() += n;
            }
            reads
        }
        None => 0,
    };
    let reads = ran
        .client
        .stats
        .requests
        .load(std::sync::atomic::Ordering::Relaxed)
        + gone_reads;
    let recorded = std::mem::take(&mut *memory.0.lock().unwrap_or_else(|e| e.into_inner()));
    let mut plan = fold(recorded, notes);
    plan.reads = reads;
    plan.requests = reads + writes.values().sum::<u64>();
    plan.writes = writes;
    plan.rate = match args.pace.rate {
        RateSpec::Fixed(r) => Some(r),
        RateSpec::Auto { .. } => None,
    };
    plan.seconds_at_rate = plan.rate.map(|r| seconds(plan.requests, r));
    plan.seconds_at_10 = seconds(plan.requests, 10.0);
    plan.notes = ran.notes.clone();
    plan.gone = ran.gone.clone();
    plan.stopped = ran.end.aborted.clone().or(ran.end.read_error.clone());
    Ok(plan)
}

/// How long `requests` take at `rate` requests/s, as the pacer spaces them
/// (at [`crate::pace::HEADROOM`] of the rate).
fn seconds(requests: u64, rate: f64) -> f64 {
    requests as f64 / (rate * crate::pace::HEADROOM).max(f64::MIN_POSITIVE)
}

/// The action `run` takes for a row, from its recorded outcomes: the
/// customer's action, or why there is none (`invalid`, `ambiguous`,
/// `lookup_failed`, the customer stage's status), or `no_customer` for a
/// row that has no customer stage (a customer id given by the file).
/// Reads a run's ledger the same way (`Outcomes` of a file), for tests.
pub fn action_of(
    mapping: Option<Status>,
    customer: Option<(Status, Option<Action>, Option<&str>)>,
) -> String {
    if mapping == Some(Status::Invalid) {
        return "invalid".into();
    }
    match customer {
        Some((_, Some(action), _)) => action.name().into(),
        Some((Status::Invalid, _, _)) => "invalid".into(),
        Some((_, None, Some(m))) if m.starts_with("ambiguous:") => "ambiguous".into(),
        Some((_, None, Some(m))) if m.starts_with("could not look the customer up") => {
            "lookup_failed".into()
        }
        Some((status, None, _)) => status.name().into(),
        None => "no_customer".into(),
    }
}

/// What a later stage's outcome says the run would do.
fn would(stage: Stage, r: &Recorded, created: bool, note: Option<&Note>) -> &'static str {
    match (r.status, r.action) {
        (Status::Ok, Some(Action::Kept)) => "kept",
        (Status::Ok, Some(Action::Unchanged)) => match stage {
            Stage::Campaign => "already_there",
            Stage::Feed => "already_sent",
            _ => "unchanged",
        },
        (Status::Ok, _) => match (stage, note) {
            (Stage::FieldGroup, Some(Note::Item { created: true, .. })) => "create",
            (Stage::FieldGroup, Some(Note::Item { created: false, .. })) => "update",
            (Stage::FieldGroup, _) => "ok",
            // The run does not read campaign records: `ALREADY_EXISTS`
            // answers a record that is there, and counts as done.
            (Stage::Campaign, _) if created => "add",
            (Stage::Campaign, _) => "add_or_already_there",
            (Stage::CampaignUpdate, _) => "send",
            (Stage::Feed, _) if created => "add",
            // Sent to a customer that existed: the state proves it unsent
            // (or `[feed] on_match = "send"`); Thulium cannot be asked.
            (Stage::Feed, _) => "add_to_existing",
            _ => "ok",
        },
        (Status::Skipped, _) => "skipped",
        (Status::Failed, _) => "failed",
        (Status::Invalid, _) => "invalid",
        (Status::Unknown, _) => "unknown",
    }
}

/// A value as the plan prints it: JSON, `(empty)` for nothing.
fn shown(v: &Value) -> String {
    if crate::current::is_empty(v) {
        "(empty)".into()
    } else {
        v.to_string()
    }
}

/// Folds the run's recorded outcomes and the write sites' notes into the
/// plan, row by row.
fn fold(recorded: Latest, notes: Vec<(u64, Note)>) -> Plan {
    let mut by_row: BTreeMap<u64, Vec<Note>> = BTreeMap::new();
    for (row, note) in notes {
        by_row.entry(row).or_default().push(note);
    }
    let mut rows: BTreeMap<u64, Vec<(Stage, usize, Recorded)>> = BTreeMap::new();
    for ((row, stage, group), r) in recorded {
        rows.entry(row).or_default().push((stage, group, r));
    }
    let mut plan = Plan::default();
    for (row, events) in rows {
        let notes = by_row.remove(&row).unwrap_or_default();
        let find = |stage: Stage| events.iter().find(|(s, g, _)| *s == stage && *g == 0);
        let customer = find(Stage::Customer).map(|(_, _, r)| r);
        let action = action_of(
            find(Stage::Mapping).map(|(_, _, r)| r.status),
            customer.map(|r| (r.status, r.action, r.message.as_deref())),
        );
        let created = action == "created";
        let customer_id = events
            .iter()
            .find_map(|(_, _, r)| r.customer_id)
            .filter(|id| !crate::api::would::is_placeholder(*id));
        let mut out = PlanRow {
            row,
            line: events.first().map_or(0, |(_, _, r)| r.line),
            action: action.clone(),
            customer_id,
            changes: Vec::new(),
            unknown: Vec::new(),
            stages: Vec::new(),
            message: None,
        };
        for note in &notes {
            match note {
                Note::Customer(compared) => {
                    for c in &compared.changes {
                        out.changes.push(FieldChange {
                            field: c.field.clone(),
                            from: c.from.clone(),
                            to: c.to.clone(),
                        });
                    }
                    out.unknown.extend(compared.unknown.iter().cloned());
                }
                // A new customer's items are part of its creation.
                Note::Item {
                    group_id, changes, ..
                } if !created => {
                    for (field, from, to) in changes {
                        out.changes.push(FieldChange {
                            field: format!("field_group.{group_id}.{field}"),
                            from: from.clone(),
                            to: to.clone(),
                        });
                    }
                }
                Note::Item { .. } => {}
            }
        }
        for (stage, group, r) in &events {
            if matches!(stage, Stage::Mapping | Stage::Customer) {
                if r.status != Status::Ok {
                    out.message = out.message.take().or(r.message.clone());
                }
                continue;
            }
            let note = notes.iter().find(|n| match n {
                Note::Item { index, .. } => *stage == Stage::FieldGroup && index == group,
                Note::Customer(_) => false,
            });
            let verdict = would(*stage, r, created, note);
            *plan
                .stages
                .entry(stage.name().to_string())
                .or_default()
                .entry(verdict.to_string())
                .or_default() += 1;
            out.stages.push(StagePlan {
                stage: stage.name(),
                group: (*stage == Stage::FieldGroup).then_some(*group),
                would: verdict,
                message: (r.status != Status::Ok || r.action == Some(Action::Kept))
                    .then(|| r.message.clone())
                    .flatten(),
            });
        }
        *plan.actions.entry(action.clone()).or_default() += 1;
        if matches!(action.as_str(), "updated" | "adopted")
            && out.changes.is_empty()
            && out.unknown.is_empty()
            && notes.iter().any(|n| matches!(n, Note::Customer(_)))
        {
            plan.updates_changing_nothing += 1;
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &out.changes {
            if !seen.insert(c.field.clone()) {
                continue;
            }
            *plan.fields.entry(c.field.clone()).or_default() += 1;
            let examples = plan.examples.entry(c.field.clone()).or_default();
            if examples.len() < EXAMPLES {
                examples.push(format!("{} → {}", shown(&c.from), shown(&c.to)));
            }
        }
        for field in &out.unknown {
            *plan.unknown.entry(field.clone()).or_default() += 1;
        }
        plan.rows.push(out);
    }
    plan
}

/// A duration as a person reads it: `45 s`, `12 min 5 s`, `3 h 20 min`.
fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// The order the actions are listed in: what a run does first.
const ORDER: [&str; 10] = [
    "created",
    "updated",
    "adopted",
    "unchanged",
    "skipped_existing",
    "skipped_missing",
    "invalid",
    "ambiguous",
    "lookup_failed",
    "no_customer",
];

/// The plan as text: counts by action, the fields the updates change
/// (most customers first, with examples), the later stages, what cannot be
/// known, the requests and the time; with `all`, row by row.
pub fn print_text(out: &mut impl Write, plan: &Plan, all: bool) -> std::io::Result<()> {
    let mut actions: Vec<(&String, &u64)> = plan.actions.iter().collect();
    actions.sort_by_key(|(a, _)| ORDER.iter().position(|o| o == a).unwrap_or(ORDER.len()));
    let listed: Vec<String> = actions.iter().map(|(a, n)| format!("{n} {a}")).collect();
    writeln!(
        out,
        "plan: {} row(s): {}",
        plan.rows.len(),
        if listed.is_empty() {
            "none".to_string()
        } else {
            listed.join(", ")
        }
    )?;
    if plan.updates_changing_nothing > 0 {
        writeln!(
            out,
            "  {} update(s) change no field Thulium showed (sent all the same: they write fields whose value Thulium's answer did not carry)",
            plan.updates_changing_nothing
        )?;
    }
    let mut fields: Vec<(&String, &u64)> = plan.fields.iter().collect();
    fields.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    if fields.is_empty() {
        writeln!(out, "fields changed: none")?;
    } else {
        writeln!(out, "fields changed, by customers:")?;
        for (field, n) in fields {
            let examples = plan.examples.get(field).cloned().unwrap_or_default();
            writeln!(out, "  {field}: {n} — e.g. {}", examples.join("; "))?;
        }
    }
    for (stage, verdicts) in &plan.stages {
        let v: Vec<String> = verdicts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        writeln!(out, "{stage}: {}", v.join(", "))?;
    }
    let mut cannot = Vec::new();
    if !plan.unknown.is_empty() {
        let u: Vec<String> = plan
            .unknown
            .iter()
            .map(|(f, n)| format!("{f} ({n})"))
            .collect();
        cannot.push(format!(
            "fields Thulium's answer did not carry (their change is not known, which is not \"no change\"): {}",
            u.join(", ")
        ));
    }
    let count = |stage: &str, verdict: &str| {
        plan.stages
            .get(stage)
            .and_then(|v| v.get(verdict))
            .copied()
            .unwrap_or(0)
    };
    for (n, what) in [
        (
            count("campaign", "add_or_already_there"),
            "campaign record(s) for customers that exist: added, or already there (the run does not read campaign records; ALREADY_EXISTS counts as done)",
        ),
        (
            count("feed", "add_to_existing") + count("feed", "kept"),
            "feed record(s) for customers that exist: whether Thulium has them already cannot be read (the API cannot list feed records); the run sends what the state proves unsent (add_to_existing) and keeps the rest (kept)",
        ),
        (
            plan.actions.get("ambiguous").copied().unwrap_or(0),
            "row(s) whose keys match several customers: nothing would be sent for them",
        ),
        (
            plan.actions.get("lookup_failed").copied().unwrap_or(0),
            "row(s) whose lookup failed: who they are is not known",
        ),
    ] {
        if n > 0 {
            cannot.push(format!("{n} {what}"));
        }
    }
    if !cannot.is_empty() {
        writeln!(out, "not known to the plan:")?;
        for c in cannot {
            writeln!(out, "  {c}")?;
        }
    }
    let writes: Vec<String> = plan
        .writes
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    writeln!(
        out,
        "requests the run would send: {} ({} read(s), made by this plan too; {} write(s){})",
        plan.requests,
        plan.reads,
        plan.writes.values().sum::<u64>(),
        if writes.is_empty() {
            String::new()
        } else {
            format!(": {}", writes.join(", "))
        }
    )?;
    match (plan.rate, plan.seconds_at_rate) {
        (Some(rate), Some(s)) => writeln!(
            out,
            "time: {} at --rate {rate}; {} at 10 requests/s",
            duration(s),
            duration(plan.seconds_at_10)
        )?,
        _ => writeln!(
            out,
            "time: at --rate auto it depends on the limit found; {} at 10 requests/s",
            duration(plan.seconds_at_10)
        )?,
    }
    for note in &plan.notes {
        writeln!(out, "note: {note}")?;
    }
    if let Some(why) = &plan.stopped {
        writeln!(out, "stopped before the end: {why}")?;
    }
    if all {
        writeln!(out, "rows:")?;
        for r in &plan.rows {
            print_row(out, r)?;
        }
    }
    Ok(())
}

fn print_row(out: &mut impl Write, r: &PlanRow) -> std::io::Result<()> {
    let mut parts = vec![match r.customer_id {
        Some(id) => format!("{} customer {id}", r.action),
        None => r.action.clone(),
    }];
    parts.extend(
        r.changes
            .iter()
            .map(|c| format!("{}: {} → {}", c.field, shown(&c.from), shown(&c.to))),
    );
    if !r.unknown.is_empty() {
        parts.push(format!("not known: {}", r.unknown.join(", ")));
    }
    parts.extend(r.stages.iter().map(|s| match s.group {
        Some(g) => format!("{}[{g}] {}", s.stage, s.would),
        None => format!("{} {}", s.stage, s.would),
    }));
    if let Some(m) = &r.message {
        parts.push(m.clone());
    }
    writeln!(
        out,
        "  row {} (line {}): {}",
        r.row,
        r.line,
        parts.join("; ")
    )
}

/// The exit code of a plan, as `run`'s would be: 3 when it stopped before
/// its end, 2 when the run would refuse the file before sending anything
/// (`--max-changes`, `--max-gone`: the plan still shows what a run allowed
/// to go on would do, but a script that gates `run` on `plan` must not
/// read it as a go), 1 when some rows would not be done (invalid,
/// ambiguous, a lookup failed, a stage skipped), 0 otherwise.
pub fn exit_of(plan: &Plan) -> Exit {
    let not_done = |a: &str| matches!(a, "invalid" | "ambiguous" | "lookup_failed" | "failed");
    if plan.stopped.is_some() {
        Exit::Aborted
    } else if plan
        .notes
        .iter()
        .any(|n| n.starts_with(job::RUN_WOULD_STOP))
    {
        Exit::Unusable
    } else if plan.rows.iter().any(|r| {
        not_done(&r.action)
            || r.stages
                .iter()
                .any(|s| matches!(s.would, "invalid" | "failed" | "skipped" | "unknown"))
    }) {
        Exit::RowsNotDone
    } else {
        Exit::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_read_from_the_outcomes_a_run_records() {
        let ambiguous = "ambiguous: customers 1 and 2 have this row's email: nothing sent";
        assert_eq!(action_of(Some(Status::Invalid), None), "invalid");
        assert_eq!(
            action_of(None, Some((Status::Ok, Some(Action::Updated), None))),
            "updated"
        );
        assert_eq!(
            action_of(None, Some((Status::Failed, None, Some(ambiguous)))),
            "ambiguous"
        );
        assert_eq!(
            action_of(
                None,
                Some((
                    Status::Failed,
                    None,
                    Some("could not look the customer up: 500")
                ))
            ),
            "lookup_failed"
        );
        assert_eq!(action_of(None, None), "no_customer");
        assert_eq!(duration(59.4), "59 s");
        assert_eq!(duration(3725.0), "1 h 2 min");
        assert!((seconds(980, 10.0) - 100.0).abs() < 1e-9);
    }
}
