//! The one fold of a ledger: for every (row, stage, field group), the latest
//! outcome. `report`, `retry`'s planning and `report --failed-csv` all read
//! this, so they cannot disagree about a row.
//!
//! Folding is one pass, linear in the ledger's size, and compact: a row
//! costs a fixed few dozen bytes (its position in the file, its customer
//! id, one small outcome per stage); field groups after the first and the
//! messages of outcomes that are not `ok` are kept aside, keyed by row.
//!
//! Rules: the last event of a (row, stage, group) wins; an `intent` with no
//! later outcome means the call was in flight when the run stopped:
//! `unknown`. A row's overall status is its worst stage's (see
//! [`Status::severity`]); a row with no event at all was never sent.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::ledger::{self, Action, Entry, Header, ReadError, RowEvent, Stage, Status};
use crate::source::RowId;

/// The latest outcome of one row at one stage (one field group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageOutcome {
    pub status: Status,
    /// Whether sending it again unchanged may succeed (for `failed`).
    pub retryable: Option<bool>,
}

/// The message of a call in flight when its run stopped.
const IN_FLIGHT: &str = "the call was in flight when the run stopped";

#[derive(Debug, Clone, Copy, Default)]
struct RowOutcomes {
    line: u64,
    offset: u64,
    /// The customer's id once known (0: none).
    customer_id: i64,
    stages: [Option<StageOutcome>; 6],
    /// The fingerprint of the row's identifier, as recorded.
    fp: Option<u32>,
    /// What became of the customer (the latest customer event's action).
    action: Option<Action>,
    /// Stages (bits by [`Stage::index`]) whose latest outcome was `kept`:
    /// done as far as sending goes, but not what the row asked.
    kept: u8,
    /// One more than the highest field group recorded (kept in
    /// `more_groups` when above 0).
    groups: u16,
}

/// How far past the rows known a row number may be (see
/// [`Outcomes::apply`]'s checks): far above the rows a run has in flight.
pub const ROW_JUMP: u64 = 1_000_000;

/// Everything a ledger says, folded.
#[derive(Debug)]
pub struct Outcomes {
    /// The mapping the last `retry` used (its `attempt`), when one did: what
    /// the next compares with, not the first run's.
    pub last_mapping_sha256: Option<String>,
    pub header: Header,
    /// Row n at index n-1.
    rows: Vec<RowOutcomes>,
    /// Field groups after the first (`group` > 0), by (row, group).
    more_groups: HashMap<(u64, u16), StageOutcome>,
    /// The message of every latest outcome that is not `ok`.
    messages: HashMap<(u64, Stage, usize), String>,
    rows_read: u64,
    aborted: Option<String>,
    read_error: Option<String>,
    limit: Option<u64>,
    ended: bool,
    /// Ledger lines that could not be read (a crash mid-write leaves one).
    pub unreadable: Vec<String>,
    /// Customers in no row (`gone` entries: `on_gone`), the latest per
    /// customer: they are not rows, and count apart.
    gone: BTreeMap<i64, GoneOutcome>,
    /// Why `on_gone` was not applied to the last run's file, if it was not.
    on_gone: Option<String>,
}

/// The latest `gone` entry of one customer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoneOutcome {
    pub status: Status,
    pub action: Option<Action>,
    pub message: Option<String>,
}

/// One row's part of the fold.
#[derive(Debug, Clone, Copy)]
pub struct RowView<'a> {
    outcomes: &'a Outcomes,
    row: u64,
    state: &'a RowOutcomes,
}

impl Outcomes {
    /// Reads and folds a ledger.
    pub fn read(path: &Path) -> Result<Outcomes, ReadError> {
        let mut folded = Outcomes::new(Header::default());
        let (header, notes) = ledger::read(path, |e| folded.apply(e))?;
        folded.header = header;
        // The lines that could not be read, then the entries read but not
        // believed (their row numbers).
        let ignored = std::mem::take(&mut folded.unreadable);
        folded.unreadable = notes.bad_lines.into_iter().map(|(_, m)| m).collect();
        folded.unreadable.extend(ignored);
        Ok(folded)
    }

    /// An empty fold for a ledger with this header.
    pub fn new(header: Header) -> Outcomes {
        Outcomes {
            last_mapping_sha256: None,
            header,
            rows: Vec::new(),
            more_groups: HashMap::new(),
            messages: HashMap::new(),
            rows_read: 0,
            aborted: None,
            read_error: None,
            limit: None,
            ended: false,
            unreadable: Vec::new(),
            gone: BTreeMap::new(),
            on_gone: None,
        }
    }

    /// The rows known so far: the highest folded, or read by a run.
    fn known(&self) -> u64 {
        (self.rows.len() as u64).max(self.rows_read)
    }

    /// Whether `row` can be a row of the file, and not a corrupt number
    /// (`18446744073709551615`): the fold keeps a slot for every row below
    /// the highest, so believing one would allocate that many. Every row a
    /// run reads gets an event, in about the order read (a few thousand in
    /// flight), so a row more than [`ROW_JUMP`] past the rows known is one;
    /// it is noted in `unreadable` and ignored.
    fn believable(&mut self, row: u64, what: &str) -> bool {
        let ok = row <= self.known().saturating_add(ROW_JUMP);
        if !ok {
            self.unreadable.push(format!(
                "{what} for row {row}: more than {ROW_JUMP} rows past the {} known",
                self.known()
            ));
        }
        ok
    }

    fn at(&mut self, row: u64) -> &mut RowOutcomes {
        let i = row.saturating_sub(1) as usize;
        if self.rows.len() <= i {
            self.rows.resize(i + 1, RowOutcomes::default());
        }
        &mut self.rows[i]
    }

    fn set(
        &mut self,
        row: u64,
        stage: Stage,
        group: usize,
        outcome: StageOutcome,
        message: Option<String>,
    ) {
        if row == 0 {
            return;
        }
        let state = self.at(row);
        if stage == Stage::FieldGroup && group > 0 {
            let group = u16::try_from(group).unwrap_or(u16::MAX - 1);
            state.groups = state.groups.max(group + 1);
            self.more_groups.insert((row, group), outcome);
        } else {
            state.stages[stage.index()] = Some(outcome);
        }
        let key = (row, stage, group);
        match message {
            Some(m) => {
                self.messages.insert(key, m);
            }
            _ => {
                self.messages.remove(&key);
            }
        }
    }

    /// Applies one ledger entry.
    pub fn apply(&mut self, e: Entry) {
        match e {
            Entry::Row(RowEvent {
                row,
                line,
                offset,
                stage: Some(stage),
                status: Some(status),
                group,
                message,
                customer_id,
                retryable,
                fp,
                action,
                ..
            }) => {
                if !self.believable(row, "an event") {
                    return;
                }
                let state = self.at(row);
                if stage == Stage::Customer {
                    state.action = action;
                }
                let bit = 1u8 << stage.index();
                if action == Some(Action::Kept) {
                    state.kept |= bit;
                } else {
                    state.kept &= !bit;
                }
                state.line = line;
                state.offset = offset;
                if let Some(fp) = fp.as_deref().and_then(crate::ledger::parse_fingerprint) {
                    state.fp = Some(fp);
                }
                if let (Stage::Customer, Some(id)) = (stage, customer_id) {
                    state.customer_id = id;
                }
                let outcome = StageOutcome { status, retryable };
                // A `kept` outcome is ok, but not done as the row asks: its
                // message is kept, so that it is listed with the problems.
                let message = if status == Status::Ok && action != Some(Action::Kept) {
                    None
                } else {
                    message
                };
                self.set(row, stage, group.unwrap_or(0), outcome, message);
            }
            Entry::Intent(i) => {
                let outcome = StageOutcome {
                    status: Status::Unknown,
                    retryable: None,
                };
                for row in i.rows {
                    if !self.believable(row, "an intent") {
                        continue;
                    }
                    let group = i.group.unwrap_or(0);
                    self.set(row, i.stage, group, outcome, Some(IN_FLIGHT.into()));
                }
            }
            Entry::End(end) => {
                // `rows_read` bounds the loops over rows: believed on the
                // same terms as a row number.
                if self.believable(end.rows_read, "an end") {
                    self.rows_read = self.rows_read.max(end.rows_read);
                }
                self.aborted = end.aborted;
                self.read_error = end.read_error;
                self.limit = end.limit;
                self.on_gone = end.on_gone;
                self.ended = true;
            }
            Entry::Attempt(a) => {
                self.ended = false;
                self.last_mapping_sha256 = Some(a.mapping_sha256);
            }
            Entry::Gone(g) => {
                if let Some(status) = g.status {
                    self.gone.insert(
                        g.customer_id,
                        GoneOutcome {
                            status,
                            action: g.action,
                            message: g.message,
                        },
                    );
                }
            }
            Entry::Row(_) | Entry::Header(_) => {}
        }
    }

    /// The customers gone from the export that the ledger records (no row
    /// of the file is theirs), by id.
    pub fn gone(&self) -> &BTreeMap<i64, GoneOutcome> {
        &self.gone
    }

    /// Whether the last run or retry ended (wrote its `end` event). When it
    /// did not (a crash, `kill -9`), a row can look done while stages it
    /// needed were never recorded.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Why the last run stopped early, if it did.
    pub fn aborted(&self) -> Option<&str> {
        self.aborted.as_deref()
    }

    /// The source error that ended the last run's reading, if one did.
    pub fn read_error(&self) -> Option<&str> {
        self.read_error.as_deref()
    }

    /// A pilot's `--limit`, when the last run was one that stopped before
    /// the end of the file.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Why `[customer] on_gone` was not applied to the last run's file
    /// (it did not say who is in it, ...), if it was not.
    pub fn on_gone_skipped(&self) -> Option<&str> {
        self.on_gone.as_deref()
    }

    /// How many rows the runs read (at least every row recorded).
    pub fn rows(&self) -> u64 {
        self.rows_read.max(self.rows.len() as u64)
    }

    /// The highest row number with any event.
    pub fn max_row(&self) -> u64 {
        self.rows.len() as u64
    }

    /// Row `row`'s part of the fold, if it has any event.
    pub fn row(&self, row: u64) -> Option<RowView<'_>> {
        let state = self.rows.get(row.checked_sub(1)? as usize)?;
        state.stages.iter().any(Option::is_some).then_some(RowView {
            outcomes: self,
            row,
            state,
        })
    }

    /// Whether every stage recorded for `row` is ok (and one is recorded).
    pub fn is_done(&self, row: u64) -> bool {
        self.row(row).is_some_and(|r| r.is_done())
    }

    /// The outcomes that are not `ok`, with their messages, in row order:
    /// what `report` lists.
    pub fn problems(&self, limit: usize) -> Vec<Problem> {
        let mut keys: Vec<&(u64, Stage, usize)> = self.messages.keys().collect();
        keys.sort_unstable();
        keys.into_iter()
            .filter_map(|&(row, stage, group)| {
                let view = self.row(row)?;
                let outcome = view.stage(stage, group)?;
                Some(Problem {
                    row,
                    line: view.state.line,
                    stage,
                    group,
                    status: outcome.status,
                    message: self.messages.get(&(row, stage, group))?.clone(),
                })
            })
            .take(limit)
            .collect()
    }
}

/// One outcome that is not `ok` (or `ok` but `kept`: not done as the row
/// asks), for listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub row: u64,
    pub line: u64,
    pub stage: Stage,
    pub group: usize,
    pub status: Status,
    pub message: String,
}

impl Problem {
    /// `failed`, `invalid`, ...; `kept` for an `ok` not done as asked.
    pub fn status_name(&self) -> &'static str {
        match self.status {
            Status::Ok => "kept",
            s => s.name(),
        }
    }
}

impl<'a> RowView<'a> {
    /// Where the row is in the source.
    pub fn id(&self) -> RowId {
        RowId {
            row: self.row,
            line: self.state.line,
            offset: self.state.offset,
            fp: self.state.fp,
        }
    }

    /// What became of the row's customer, as its latest customer event says.
    pub fn action(&self) -> Option<Action> {
        self.state.action
    }

    /// The created (or adopted) customer's id.
    pub fn customer_id(&self) -> Option<i64> {
        (self.state.customer_id != 0).then_some(self.state.customer_id)
    }

    /// The latest outcome at `stage` (for field groups, the `group`th).
    pub fn stage(&self, stage: Stage, group: usize) -> Option<StageOutcome> {
        if stage == Stage::FieldGroup && group > 0 {
            let group = u16::try_from(group).ok()?;
            self.outcomes.more_groups.get(&(self.row, group)).copied()
        } else {
            self.state.stages[stage.index()]
        }
    }

    /// The message of the latest outcome at `stage`/`group`, when it is not ok.
    pub fn message(&self, stage: Stage, group: usize) -> Option<&'a str> {
        self.outcomes
            .messages
            .get(&(self.row, stage, group))
            .map(String::as_str)
    }

    /// Every outcome recorded for the row, as (stage, group, outcome), in
    /// pipeline order.
    pub fn all(&self) -> impl Iterator<Item = (Stage, usize, StageOutcome)> + 'a {
        let (state, more, row) = (self.state, &self.outcomes.more_groups, self.row);
        Stage::ALL.into_iter().flat_map(move |stage| {
            let first = state.stages[stage.index()].map(|o| (stage, 0, o));
            let groups = if stage == Stage::FieldGroup {
                1..state.groups
            } else {
                0..0
            };
            let more = groups
                .filter_map(move |g| more.get(&(row, g)).map(|o| (stage, usize::from(g), *o)));
            first.into_iter().chain(more)
        })
    }

    /// The worst status of the stage (field groups combined).
    pub fn stage_status(&self, stage: Stage) -> Option<Status> {
        self.all()
            .filter(|(s, _, _)| *s == stage)
            .map(|(_, _, o)| o.status)
            .max_by_key(|s| s.severity())
    }

    /// The row's overall status: its worst stage's.
    pub fn status(&self) -> Option<Status> {
        self.all()
            .map(|(_, _, o)| o.status)
            .max_by_key(|s| s.severity())
    }

    /// Whether every stage recorded for the row is ok.
    pub fn is_done(&self) -> bool {
        self.status() == Some(Status::Ok)
    }
}

/// Counts per status.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq, Eq)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
    pub invalid: u64,
    pub unknown: u64,
    pub skipped: u64,
}

impl Counts {
    pub fn add(&mut self, s: Status) {
        match s {
            Status::Ok => self.ok += 1,
            Status::Failed => self.failed += 1,
            Status::Invalid => self.invalid += 1,
            Status::Unknown => self.unknown += 1,
            Status::Skipped => self.skipped += 1,
        }
    }
}

impl Outcomes {
    /// How many rows' customers were created, updated, ... (every action,
    /// zero included), and how many stages were `kept` (not done as asked,
    /// and not sendable).
    pub fn actions(&self) -> BTreeMap<&'static str, u64> {
        let mut out: BTreeMap<&'static str, u64> =
            Action::ALL.iter().map(|a| (a.name(), 0)).collect();
        for r in &self.rows {
            if let Some(a) = r.action {
                *out.entry(a.name()).or_default() += 1;
            }
            *out.entry(Action::Kept.name()).or_default() += u64::from(r.kept.count_ones());
        }
        // Customers in no row: deleted, marked or reported when done.
        for g in self.gone.values().filter(|g| g.status == Status::Ok) {
            if let Some(a) = g.action {
                *out.entry(a.name()).or_default() += 1;
            }
        }
        out
    }

    /// Counts of rows per overall status, and per stage.
    pub fn counts(&self) -> (Counts, u64, BTreeMap<&'static str, Counts>) {
        let mut rows = Counts::default();
        let mut not_sent = 0;
        let mut stages: BTreeMap<&'static str, Counts> = Stage::ALL
            .iter()
            .map(|s| (s.name(), Counts::default()))
            .collect();
        for n in 1..=self.rows() {
            let Some(view) = self.row(n) else {
                not_sent += 1;
                continue;
            };
            for stage in Stage::ALL {
                if let Some(s) = view.stage_status(stage) {
                    stages.entry(stage.name()).or_default().add(s);
                }
            }
            match view.status() {
                Some(s) => rows.add(s),
                None => not_sent += 1,
            }
        }
        (rows, not_sent, stages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{End, Intent};

    fn header() -> Header {
        Header {
            version: 1,
            source: "a.csv".into(),
            source_sha256: String::new(),
            mapping: "m.toml".into(),
            mapping_sha256: String::new(),
            started_at: String::new(),
            tool_version: String::new(),
            sheet: None,
        }
    }

    fn ev(row: u64, stage: Stage, group: Option<usize>, status: Status) -> Entry {
        Entry::Row(RowEvent {
            row,
            line: row.saturating_add(1),
            offset: row.saturating_mul(10),
            stage: Some(stage),
            status: Some(status),
            group,
            message: (status != Status::Ok).then(|| format!("{} {status:?}", stage.name())),
            customer_id: (stage == Stage::Customer && status == Status::Ok)
                .then_some(row as i64 * 7),
            ..RowEvent::default()
        })
    }

    #[test]
    fn the_latest_outcome_wins_and_a_row_is_its_worst_stage() {
        let mut o = Outcomes::new(header());
        o.apply(Entry::Intent(Intent {
            stage: Stage::Customer,
            group: None,
            rows: vec![1, 2, 3],
        }));
        for e in [
            ev(1, Stage::Customer, None, Status::Ok),
            ev(1, Stage::FieldGroup, Some(0), Status::Ok),
            ev(1, Stage::FieldGroup, Some(1), Status::Failed),
            ev(2, Stage::Customer, None, Status::Ok),
            ev(4, Stage::Mapping, None, Status::Invalid),
        ] {
            o.apply(e);
        }
        o.apply(Entry::End(End {
            rows_read: 5,
            finished_at: String::new(),
            aborted: None,
            read_error: None,
            limit: None,
            on_gone: None,
        }));
        assert!(!o.is_done(1) && o.is_done(2) && !o.is_done(3));
        let r1 = o.row(1).unwrap();
        assert_eq!(r1.customer_id(), Some(7));
        assert_eq!(r1.stage_status(Stage::FieldGroup), Some(Status::Failed));
        assert_eq!(r1.message(Stage::FieldGroup, 1), Some("field_group Failed"));
        assert_eq!(o.row(3).unwrap().status(), Some(Status::Unknown));
        assert_eq!(
            o.row(3).unwrap().message(Stage::Customer, 0),
            Some(IN_FLIGHT)
        );
        // The retry fixes the item: its message goes, the row is done.
        o.apply(ev(1, Stage::FieldGroup, Some(1), Status::Ok));
        assert!(o.is_done(1));
        let (rows, not_sent, stages) = o.counts();
        assert_eq!(
            (rows.ok, rows.unknown, rows.invalid, not_sent),
            (2, 1, 1, 1)
        );
        assert_eq!(stages["customer"].ok, 2);
        let problems = o.problems(10);
        assert_eq!(
            problems
                .iter()
                .map(|p| (p.row, p.stage))
                .collect::<Vec<_>>(),
            [(3, Stage::Customer), (4, Stage::Mapping)]
        );
    }

    #[test]
    fn a_corrupt_row_number_is_noted_and_ignored_not_allocated() {
        let mut o = Outcomes::new(header());
        o.apply(ev(1, Stage::Customer, None, Status::Ok));
        for row in [u64::MAX, 1_000_000_000_000, 1 + ROW_JUMP + 2] {
            o.apply(ev(row, Stage::Customer, None, Status::Failed));
        }
        o.apply(Entry::Intent(Intent {
            stage: Stage::Customer,
            group: None,
            rows: vec![2, u64::MAX],
        }));
        o.apply(Entry::End(End {
            rows_read: u64::MAX,
            finished_at: String::new(),
            aborted: None,
            read_error: None,
            limit: None,
            on_gone: None,
        }));
        // Nothing was sized from the corrupt numbers.
        assert_eq!(o.max_row(), 2);
        assert_eq!(o.rows(), 2);
        assert!(o.rows.capacity() < 1000, "{}", o.rows.capacity());
        assert_eq!(o.unreadable.len(), 5, "{:?}", o.unreadable);
        assert!(
            o.unreadable[0].contains("row 18446744073709551615"),
            "{:?}",
            o.unreadable
        );
        let (rows, not_sent, _) = o.counts();
        assert_eq!((rows.ok, rows.unknown, not_sent), (1, 1, 0));
        // A row within reach of the rows known is believed.
        o.apply(ev(2 + ROW_JUMP, Stage::Customer, None, Status::Ok));
        assert_eq!(o.max_row(), 2 + ROW_JUMP);
    }
}
