//! The TOML column mapping: how a CRM export's columns become Thulium
//! payloads.
//!
//! Loading is two steps, as in ripgrep's flags: [`load`] parses the file into
//! the raw serde structs of [`raw`], then [`compile`] checks them against the
//! CSV header and builds a [`Plan`] — columns resolved to indices, converters
//! built, constants checked — before any row is read. A config error names
//! the TOML key, its line in the file and, for a missing column, the closest
//! header names. [`Plan::map_row`] then turns each row into the payloads of
//! every stage, or into the list of what is wrong with it.
//!
//! This file holds what a compiled mapping is (the plan, the payloads of a
//! row) and how a row is mapped; `compiler.rs` holds how a mapping becomes a
//! plan, and `spec.rs` how one value spec is compiled and evaluated.

mod compiler;
pub mod date;
pub mod raw;
pub mod spec;

pub use compiler::{compile, field_group_done_names, Ctx};

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::api::keys::SearchKey;
use crate::api::payload::{
    AddressKind, AddressPart, Cleared, Customer, CustomerField, FeedMessage, FeedRecord, ItemValue,
    Named, RecordField, RecordFields, RecordUpdate, Scalar,
};
use crate::ledger::Stage;
use crate::source::{CellsRef, FieldError, Row, SourceOptions};
use raw::RawMapping;
use spec::Spec;

/// One problem in a mapping file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// The TOML key at fault, e.g. `customer.birthdate`.
    pub key: String,
    /// 1-based line in the mapping file.
    pub line: usize,
    pub message: String,
}

/// Why a mapping cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    #[error("{path}: cannot read the mapping: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: the mapping has {} problem(s):\n{}", .issues.len(), list(.path, .issues))]
    Invalid { path: PathBuf, issues: Vec<Issue> },
}

fn list(path: &Path, issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| format!("  {}:{}: {}: {}", path.display(), i.line, i.key, i.message))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A mapping file, parsed but not yet checked against a header.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub text: String,
    pub raw: RawMapping,
}

/// Reads and parses a mapping file (syntax, unknown keys, value types).
pub fn load(path: &Path) -> Result<Loaded, MappingError> {
    let text = std::fs::read_to_string(path).map_err(|e| MappingError::Read {
        path: path.into(),
        source: e,
    })?;
    parse(path, text)
}

/// Parses mapping text; `path` names it in messages.
pub fn parse(path: &Path, text: String) -> Result<Loaded, MappingError> {
    let raw: RawMapping = toml::from_str(&text).map_err(|e| MappingError::Syntax {
        path: path.into(),
        message: e.to_string().trim_end().to_string(),
    })?;
    Ok(Loaded {
        path: path.into(),
        text,
        raw,
    })
}

impl Loaded {
    /// The mapping with `sheet` (the command line's `--sheet`, or the one
    /// a ledger recorded) as its `[source] sheet`; unchanged for `None`.
    /// The one place the command line overrides the mapping's `[source]`.
    pub fn with_sheet(mut self, sheet: Option<&str>) -> Loaded {
        if let Some(sheet) = sheet {
            self.raw.source.sheet = Some(sheet.to_string());
        }
        self
    }

    /// The 1-based line of a position in the mapping file.
    pub fn line_of(&self, span: &Range<usize>) -> usize {
        Ctx::new(&self.text, &[]).line(span)
    }

    /// Whether every file of this mapping's job is a full export (`[source]
    /// full_export = true`, or `[customer] on_gone` other than `"keep"`):
    /// of several waiting, only the newest says what the CRM holds.
    pub fn full_exports(&self) -> bool {
        compiler::full_exports(self)
    }

    /// The CSV reading options of `[source]` (checked: a bad delimiter or
    /// encoding is an error here, before the file is opened).
    pub fn source_options(&self) -> Result<SourceOptions, MappingError> {
        let mut ctx = Ctx::new(&self.text, &[]);
        let options = compiler::source_options(&mut ctx, &self.raw.source);
        ctx.finish(&self.path).map(|()| options)
    }
}

/// A custom-field group item to create for a row.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemPayload {
    /// Which `[[field_group]]` of the mapping (0-based).
    pub index: usize,
    pub group_id: i64,
    pub values: Vec<ItemValue>,
    /// How it is sent.
    pub mode: ItemMode,
    /// `[[field_group]] match`: the field ids whose values identify the
    /// item among the customer's (empty: the block has no such key).
    pub match_ids: Vec<i64>,
    /// The values whose `update` is not `always` (an item that exists).
    pub policies: Vec<(i64, Policy)>,
}

/// How a field-group item is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ItemMode {
    /// Created (a new customer has no items).
    #[default]
    Create,
    /// Its creation had an unknown outcome: an item among the customer's
    /// with the values sent is adopted; none, it is created; only others,
    /// a mismatch is reported.
    Reconcile,
    /// The customer existed: the item in the group is updated when its
    /// values differ, left when equal, created when there is none.
    Upsert,
}

/// A campaign record to add for a row (the customer id is filled in later).
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignPayload {
    pub campaign_id: String,
    pub record: RecordFields,
}

/// A campaign record edit for a row.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdatePayload {
    pub campaign_id: String,
    pub identifier: String,
    pub body: RecordUpdate,
}

/// Everything one row sends, stage by stage, as the API's typed requests. A
/// stage that is absent from the mapping, or whose `when` is empty for this
/// row, is `None` (or empty).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowPayloads {
    /// An existing customer id from `[source] customer_id`.
    pub existing_customer_id: Option<i64>,
    /// The customer to create (absent when the row has an existing id).
    pub customer: Option<Customer>,
    pub field_groups: Vec<ItemPayload>,
    pub campaign: Option<CampaignPayload>,
    pub campaign_update: Option<UpdatePayload>,
    /// The contact-history message (sent as a ZOWIE feed record).
    pub feed: Option<FeedMessage>,
    /// Stages that run for the row but cannot be sent (an empty campaign
    /// id): recorded `invalid` at their stage.
    pub invalid_stages: Vec<(Stage, FieldError)>,
    /// Stages an earlier run sent with an unknown outcome (a failed-rows
    /// CSV's `_unknown`): looked up before they are sent again.
    pub unknown: Unknowns,
    /// Mapped custom fields whose cells were empty, with `clear_empty`: an
    /// update clears them.
    pub cleared: Vec<Cleared>,
}

/// Stages sent before with an unknown outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unknowns {
    pub customer: bool,
    /// Indices of `[[field_group]]`s.
    pub field_groups: Vec<usize>,
    pub feed: bool,
}

impl Unknowns {
    pub fn any(&self) -> bool {
        self.customer || self.feed || !self.field_groups.is_empty()
    }
}

impl RowPayloads {
    /// Whether any later stage needs the row's customer id.
    pub fn needs_customer(&self) -> bool {
        !self.field_groups.is_empty() || self.campaign.is_some() || self.feed.is_some()
    }

    /// How many outcomes the row will have in the ledger: one per stage it
    /// is sent to (one per field-group item).
    pub fn outcomes(&self) -> u32 {
        let one = |present: bool| u32::from(present);
        one(self.customer.is_some())
            + self.invalid_stages.len() as u32
            + self.field_groups.len() as u32
            + one(self.campaign.is_some())
            + one(self.campaign_update.is_some())
            + one(self.feed.is_some())
    }

    /// Whether nothing is left to send.
    pub fn is_empty(&self) -> bool {
        self.customer.is_none()
            && self.field_groups.is_empty()
            && self.campaign.is_none()
            && self.campaign_update.is_none()
            && self.feed.is_none()
            && self.invalid_stages.is_empty()
    }

    /// The payloads as one JSON object, as `run --dry-run --show-payloads`
    /// prints them.
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        if let Some(id) = self.existing_customer_id {
            out.insert("customer_id".into(), json!(id));
        }
        if let Some(c) = &self.customer {
            out.insert("customer".into(), json!(c));
        }
        if !self.field_groups.is_empty() {
            let items: Vec<Value> = self
                .field_groups
                .iter()
                .map(|i| json!({"group_id": i.group_id, "values": i.values}))
                .collect();
            out.insert("field_group".into(), Value::Array(items));
        }
        if let Some(c) = &self.campaign {
            out.insert(
                "campaign".into(),
                json!({"id": c.campaign_id, "record": c.record}),
            );
        }
        if let Some(u) = &self.campaign_update {
            out.insert(
                "campaign_update".into(),
                json!({"id": u.campaign_id, "identifier": u.identifier, "body": u.body}),
            );
        }
        if let Some(f) = &self.feed {
            out.insert(
                "feed".into(),
                json!(FeedRecord::zowie(std::slice::from_ref(f))),
            );
        }
        Value::Object(out)
    }
}

/// A target field named by the user (a custom field, a campaign structure
/// field) and the slot of its spec in [`Plan::specs`].
#[derive(Debug)]
struct NamedSlot {
    name: String,
    slot: usize,
}

#[derive(Debug)]
struct CustomerPlan {
    fields: Vec<(CustomerField, usize)>,
    addresses: Vec<(AddressKind, Vec<(AddressPart, usize)>)>,
    custom_fields: Vec<NamedSlot>,
}

#[derive(Debug)]
struct FieldGroupPlan {
    group_id: i64,
    values: Vec<(i64, usize)>,
    match_ids: Vec<i64>,
    /// The values whose `update` is not `always`.
    policies: Vec<(i64, Policy)>,
}

#[derive(Debug)]
struct CampaignPlan {
    id: usize,
    fields: Vec<(RecordField, usize)>,
}

#[derive(Debug)]
struct UpdatePlan {
    id: usize,
    identifier: usize,
    fields: Vec<(RecordField, usize)>,
    record_fields: Vec<NamedSlot>,
}
#[derive(Debug)]
struct FeedPlan {
    message: usize,
    time: usize,
    author: Option<usize>,
    id: Option<usize>,
}

/// One stage's `when` and the contiguous slots of its specs: evaluating a
/// row is one loop over the stages that run, and a stage that does not run
/// reports no problems.
#[derive(Debug)]
struct StageSlots {
    when: Option<Spec>,
    slots: Range<usize>,
    /// The ledger's name of the stage (`customer`, `field_group`, ...).
    kind: &'static str,
    /// How a failed-rows CSV's `_done` names it: the ledger's name, or for a
    /// field group `field_group:<group_id>`.
    done_name: String,
    /// Slots the stage cannot be sent without (a campaign id, a record
    /// identifier), with what they are: empty, the stage is `invalid` for
    /// the row while its other stages go on.
    keys: Vec<(usize, &'static str)>,
}

/// What to do with a customer that already exists (`on_match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMatch {
    Update,
    Skip,
}

/// `[feed] on_match`: a feed message for a customer that existed before the
/// run, when no sync state proves it unsent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeedOnMatch {
    /// Not sent (recorded `kept`): the API cannot list feed records, so a
    /// message that may be there already is not risked twice.
    #[default]
    Skip,
    /// Sent anyway: the person accepts a possible second copy.
    Send,
}

/// What to do when no customer matches (`on_missing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnMissing {
    Create,
    Skip,
}

/// `[customer] match`, `on_match`, `on_missing`, `clear_empty`: how rows
/// find the customers that already exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upsert {
    /// Tried in order; a key whose value is empty in a row is skipped.
    pub keys: Vec<SearchKey>,
    pub on_match: OnMatch,
    pub on_missing: OnMissing,
    pub clear_empty: bool,
    /// The fields an update leaves alone, or sends only to an empty value.
    pub policies: Policies,
}

/// `update = ...` of a field: what an update of a customer (or an item)
/// that exists does with it. A created customer gets every field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Sent with every update (the default).
    #[default]
    Always,
    /// Sent only while Thulium's value is empty: the contact center's
    /// value, once there, is never overwritten.
    IfEmpty,
    /// Sent on creation only.
    Never,
}

impl Policy {
    /// The message of a value that is none of them.
    pub const EXPECTED: &'static str =
        "update must be \"always\" (the default), \"if_empty\" or \"never\"";

    pub fn parse(s: &str) -> Option<Policy> {
        Some(match s {
            "always" => Policy::Always,
            "if_empty" => Policy::IfEmpty,
            "never" => Policy::Never,
            _ => return None,
        })
    }

    /// As the mapping writes it.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Always => "always",
            Policy::IfEmpty => "if_empty",
            Policy::Never => "never",
        }
    }
}

/// The customer fields whose `update` is not `always`, by the names
/// [`crate::api::values::flatten`] gives them (`note`, `custom_fields.Segment`,
/// `address.city`). Empty for a mapping without policies: its updates,
/// and the sync state's hashes of them, are what they always were.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies(pub Vec<(String, Policy)>);

impl Policies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `[customer] on_gone`: a customer an earlier file of the job brought
/// that a complete file no longer has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum OnGone {
    /// Left as it is (the default).
    #[default]
    Keep,
    /// Listed in the ledger (`"action": "gone"`), nothing sent.
    Report,
    /// `DELETE customers/:id`.
    Delete,
    /// One custom field set (`PUT batch/customers`), e.g. a status.
    Mark { custom_field: String, value: String },
}

impl OnGone {
    pub const EXPECTED: &'static str = "on_gone must be \"keep\" (the default), \"report\", \"delete\" or { custom_field = \"Name\", value = \"...\" }";
}

/// A mapping compiled against a header: ready to map rows.
///
/// Mapping a row is two steps: [`Plan::evaluate`] computes every value of the
/// stages that run into flat slots (all the checking, nothing else), and
/// [`Plan::assemble`] moves them into the API's payload shapes. `check` only
/// needs the first; `run` does both.
#[derive(Debug)]
pub struct Plan {
    trim: bool,
    customer_id: Option<(usize, String)>,
    /// The bookkeeping columns of a failed-rows CSV, when the file is one.
    failed_csv: FailedCsvColumns,
    specs: Vec<Spec>,
    /// Stage order: customer, each field group, campaign, campaign_update, feed.
    stages: Vec<StageSlots>,
    customer: Option<(usize, CustomerPlan)>,
    /// `[customer] match`: find customers that exist before creating.
    upsert: Option<Upsert>,
    /// How each `[[field_group]]` is named (`field_group:2`).
    group_parts: Vec<String>,
    field_groups: Vec<(usize, FieldGroupPlan)>,
    campaign: Option<(usize, CampaignPlan)>,
    campaign_update: Option<(usize, UpdatePlan)>,
    feed: Option<(usize, FeedPlan)>,
    /// `[feed] on_match`.
    feed_on_match: FeedOnMatch,
    /// `[customer] on_gone`.
    on_gone: OnGone,
    /// `[source] job`, when given.
    job: Option<String>,
}

/// Columns of a failed-rows CSV written by `report --failed-csv`:
/// `_customer_id` (a customer already created), `_done` (stages already
/// done) and `_unknown` (stages sent with an unknown outcome), so that
/// re-importing it never duplicates.
#[derive(Debug, Clone, Copy, Default)]
struct FailedCsvColumns {
    customer_id: Option<usize>,
    done: Option<usize>,
    unknown: Option<usize>,
}

/// Whether a comma-separated list of stage names (`_done`, `_unknown`)
/// names a stage: by its own name, or for field groups by `field_group`
/// alone (every group; written by versions before per-group names).
fn lists(list: &str, s: &StageSlots) -> bool {
    !list.is_empty()
        && list.split(',').any(|d| {
            let d = d.trim();
            d == s.done_name || d == s.kind
        })
}

/// One row's evaluated values: slot → value, and which stages run.
#[derive(Debug, Clone)]
pub struct Evaluated {
    existing_customer_id: Option<i64>,
    slots: Vec<Option<Value>>,
    running: StageSet,
    /// Stages a failed-rows CSV lists in `_unknown`.
    unknown: StageSet,
    /// Stages that run for the row but cannot be sent (an empty campaign
    /// id): each is `invalid` at its stage while the others go on.
    stage_problems: Vec<(usize, FieldError)>,
}

impl Evaluated {
    /// The row with every problem as a row error: what `check` reports.
    pub fn checked(self) -> Result<Evaluated, Vec<FieldError>> {
        if self.stage_problems.is_empty() {
            Ok(self)
        } else {
            Err(self.stage_problems.into_iter().map(|(_, e)| e).collect())
        }
    }
}

/// A set of stages (indices into [`Plan`]'s stage list): bits, without an
/// allocation per row, up to 64 stages (a mapping with more field groups
/// than that gets a list).
#[derive(Debug, Clone)]
enum StageSet {
    Bits(u64),
    Many(Vec<bool>),
}

impl StageSet {
    fn new(stages: usize) -> StageSet {
        if stages <= 64 {
            StageSet::Bits(0)
        } else {
            StageSet::Many(vec![false; stages])
        }
    }
    fn contains(&self, stage: usize) -> bool {
        match self {
            StageSet::Bits(b) => b & (1 << stage) != 0,
            StageSet::Many(v) => v[stage],
        }
    }
    fn insert(&mut self, stage: usize) {
        match self {
            StageSet::Bits(b) => *b |= 1 << stage,
            StageSet::Many(v) => v[stage] = true,
        }
    }
    fn remove(&mut self, stage: usize) {
        match self {
            StageSet::Bits(b) => *b &= !(1 << stage),
            StageSet::Many(v) => v[stage] = false,
        }
    }
}

/// The stages present in a plan, in pipeline order (for summaries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stages {
    pub customer: bool,
    pub field_group: bool,
    pub campaign: bool,
    pub campaign_update: bool,
    pub feed: bool,
}

impl Evaluated {
    fn take(&mut self, slot: usize) -> Option<Value> {
        self.slots.get_mut(slot).and_then(Option::take)
    }
    /// Moves the values of user-named fields into name → value pairs.
    fn named(&mut self, fields: &[NamedSlot]) -> Named {
        Named(
            fields
                .iter()
                .filter_map(|f| Some((f.name.clone(), Scalar::from_value(self.take(f.slot)?))))
                .collect(),
        )
    }
}

impl Plan {
    /// Which stages the mapping has.
    pub fn stages(&self) -> Stages {
        Stages {
            customer: self.customer.is_some() || self.customer_id.is_some(),
            field_group: !self.field_groups.is_empty(),
            campaign: self.campaign.is_some(),
            campaign_update: self.campaign_update.is_some(),
            feed: self.feed.is_some(),
        }
    }

    /// `[customer] match` and its companions, if the mapping matches
    /// customers that exist.
    pub fn upsert(&self) -> Option<&Upsert> {
        self.upsert.as_ref()
    }

    /// `[feed] on_match`: whether a message goes to a customer that existed
    /// before the run when no sync state proves it unsent.
    pub fn feed_on_match(&self) -> FeedOnMatch {
        self.feed_on_match
    }

    /// `[customer] on_gone`.
    pub fn on_gone(&self) -> &OnGone {
        &self.on_gone
    }

    /// `[source] job`, when the mapping names one.
    pub fn job(&self) -> Option<&str> {
        self.job.as_deref()
    }

    /// How the sync state and a failed-rows CSV's `_done` name each
    /// `[[field_group]]`.
    pub fn group_parts(&self) -> &[String] {
        &self.group_parts
    }

    /// What a customer of unknown outcome is looked up by: the `match` keys,
    /// or else the identifier.
    pub fn lookup_keys(&self) -> Vec<SearchKey> {
        match &self.upsert {
            Some(u) => u.keys.clone(),
            None => vec![SearchKey::Identifier],
        }
    }

    /// The customer fields the mapping writes (what is worth keeping of
    /// each customer Thulium lists: [`crate::current`]).
    pub fn written(&self) -> crate::api::values::Written {
        let Some((_, c)) = &self.customer else {
            return crate::api::values::Written::default();
        };
        crate::api::values::Written {
            fields: c.fields.iter().map(|(f, _)| f.key().to_string()).collect(),
            custom: c.custom_fields.iter().map(|n| n.name.clone()).collect(),
            addresses: c
                .addresses
                .iter()
                .map(|(k, _)| k.key().to_string())
                .collect(),
        }
    }

    /// Whether created customers carry an `identifier` (so that a customer
    /// whose creation had an unknown outcome can be looked up).
    pub fn customer_has_identifier(&self) -> bool {
        self.customer.as_ref().is_some_and(|(_, c)| {
            c.fields
                .iter()
                .any(|(f, _)| *f == CustomerField::Identifier)
        })
    }

    /// A short fingerprint of the row's identity: of the customer's
    /// identifier, or else the existing customer id, or else the campaign
    /// record identifier; `None` when the row has none of them.
    pub fn fingerprint(&self, row: &Row) -> Option<u32> {
        let cells = row.cells.view();
        let value = |slot: usize| match self.specs[slot].eval(cells, self.trim) {
            Ok(Some(v)) => Scalar::from_value(v).text().trim().to_string(),
            _ => String::new(),
        };
        let identifier = self.customer.as_ref().and_then(|(_, c)| {
            c.fields
                .iter()
                .find(|(f, _)| *f == CustomerField::Identifier)
                .map(|(_, slot)| *slot)
        });
        let candidates = [
            identifier.map(value),
            self.customer_id
                .as_ref()
                .and_then(|(i, _)| cells.get(*i))
                .map(|c| c.trim().to_string()),
            self.campaign_update
                .as_ref()
                .map(|(_, u)| value(u.identifier)),
        ];
        candidates
            .into_iter()
            .flatten()
            .find(|v| !v.is_empty())
            .map(|v| crate::ledger::fingerprint(&v))
    }

    fn stage_runs(
        &self,
        when: &Option<Spec>,
        cells: CellsRef<'_>,
        errors: &mut Vec<FieldError>,
    ) -> bool {
        match when {
            None => true,
            Some(w) => match w.holds(cells, self.trim) {
                Ok(b) => b,
                Err(e) => {
                    errors.push(e);
                    false
                }
            },
        }
    }

    /// Maps one row: its payloads, or every problem found in it.
    pub fn map_row(&self, row: &Row) -> Result<RowPayloads, Vec<FieldError>> {
        self.evaluate(row).map(|ev| self.assemble(ev, row))
    }

    /// Computes and checks every value of the stages that run for this row.
    pub fn evaluate(&self, row: &Row) -> Result<Evaluated, Vec<FieldError>> {
        self.evaluate_with(row.cells.view(), true)
    }

    /// Checks a row as [`Plan::evaluate`] does, without building its values
    /// (a stage that cannot be sent is an error here): what `check` needs.
    pub fn validate(&self, row: &Row) -> Result<(), Vec<FieldError>> {
        self.validate_cells(row.cells.view())
    }

    /// The hashes of a row's match-key values (`[customer] match`), computed
    /// from its cells without building its payloads; empty without `match`
    /// or when the customer stage does not run for the row.
    pub fn key_hashes(&self, cells: CellsRef<'_>) -> Vec<(SearchKey, crate::hash::KeyHash)> {
        self.match_key_hashes(cells, true).unwrap_or_default()
    }

    /// Who a row is, whatever its `when`: the hashes of its match-key
    /// values (empty without `match`), for telling which customers a file
    /// has (`on_gone`). `None` when a key's cell cannot be read as its
    /// value, or when a row that brings a customer has no key value at all
    /// (an export whose key cells were blanked: the row's customer is then
    /// not known, and must not count as gone).
    pub fn file_key_hashes(&self, cells: CellsRef<'_>) -> Option<Vec<crate::hash::KeyHash>> {
        let keys = self.match_key_hashes(cells, false).ok()?;
        if keys.is_empty() {
            if let (Some(_), Some((stage, _))) = (&self.upsert, &self.customer) {
                // A row whose `when` leaves out its customer brings none.
                if self.stage_runs(&self.stages[*stage].when, cells, &mut Vec::new()) {
                    return None;
                }
            }
        }
        Some(keys.into_iter().map(|(_, h)| h).collect())
    }

    fn match_key_hashes(
        &self,
        cells: CellsRef<'_>,
        when: bool,
    ) -> Result<Vec<(SearchKey, crate::hash::KeyHash)>, ()> {
        let (Some(upsert), Some((stage, c))) = (&self.upsert, &self.customer) else {
            return Ok(Vec::new());
        };
        if when && !self.stage_runs(&self.stages[*stage].when, cells, &mut Vec::new()) {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for key in &upsert.keys {
            let slot = match key {
                SearchKey::CustomField(name) => c
                    .custom_fields
                    .iter()
                    .find(|f| &f.name == name)
                    .map(|f| f.slot),
                other => c
                    .fields
                    .iter()
                    .find(|(f, _)| f.key() == other.name())
                    .map(|(_, s)| *s),
            };
            let value = match slot.map(|s| self.specs[s].eval(cells, self.trim)) {
                Some(Ok(Some(value))) => value,
                // Who the row is must be known for `on_gone`; a lookup
                // goes by the keys it can read.
                Some(Err(_)) if !when => return Err(()),
                _ => continue,
            };
            let values = match value {
                Value::Array(items) => items,
                one => vec![one],
            };
            for v in values {
                let text = Scalar::from_value(v).text().trim().to_string();
                if !text.is_empty() {
                    out.push((key.clone(), key.hash(&text)));
                }
            }
        }
        Ok(out)
    }

    /// [`Plan::validate`] on borrowed cells (a row decoded in place).
    pub fn validate_cells(&self, cells: CellsRef<'_>) -> Result<(), Vec<FieldError>> {
        if self.certainly_valid(cells) {
            return Ok(());
        }
        self.evaluate_with(cells, false)
            .and_then(Evaluated::checked)
            .map(|_| ())
    }

    /// A quick yes for the usual row: every stage's `when` and values
    /// checked in place (`Spec::holds_fast`, `Spec::check_fast`), none of
    /// [`Plan::evaluate_with`]'s bookkeeping. `false`
    /// says only "not certain": [`Plan::evaluate_with`] then decides, and
    /// says what is wrong. Rows of a failed-rows CSV, rows with an existing
    /// customer id, a stage that cannot be sent and a later stage without
    /// its customer all take that path (`tests/properties.rs` holds the two
    /// to the same answers).
    fn certainly_valid(&self, cells: CellsRef<'_>) -> bool {
        if self.customer_id.is_some()
            || self.failed_csv.customer_id.is_some()
            || self.failed_csv.done.is_some()
            || self.stages.len() > 64
        {
            return false;
        }
        let mut running = 0u64;
        for (stage, s) in self.stages.iter().enumerate() {
            let runs = match &s.when {
                None => true,
                Some(w) => match w.holds_fast(cells, self.trim) {
                    Some(runs) => runs,
                    None => return false,
                },
            };
            if !runs {
                continue;
            }
            running |= 1 << stage;
            for slot in s.slots.clone() {
                match self.specs[slot].check_fast(cells, self.trim) {
                    Some(true) => {}
                    // A value left out is fine, unless it is one the stage
                    // cannot be sent without (then the stage is invalid).
                    Some(false) if s.keys.iter().all(|(k, _)| *k != slot) => {}
                    _ => return false,
                }
            }
        }
        let runs = |stage: &usize| running & (1 << stage) != 0;
        let needs_customer = self.field_groups.iter().any(|(s, _)| runs(s))
            || self.campaign.as_ref().is_some_and(|(s, _)| runs(s))
            || self.feed.as_ref().is_some_and(|(s, _)| runs(s));
        !needs_customer || self.customer.as_ref().is_some_and(|(s, _)| runs(s))
    }

    fn evaluate_with(&self, cells: CellsRef<'_>, keep: bool) -> Result<Evaluated, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut ev = Evaluated {
            existing_customer_id: None,
            slots: if keep {
                vec![None; self.specs.len()]
            } else {
                Vec::new()
            },
            running: StageSet::new(self.stages.len()),
            unknown: StageSet::new(self.stages.len()),
            stage_problems: Vec::new(),
        };
        if let Some((i, name)) = &self.customer_id {
            let cell = cells.get(*i).unwrap_or_default().trim();
            if !cell.is_empty() {
                match cell.parse::<i64>() {
                    Ok(id) if id > 0 => ev.existing_customer_id = Some(id),
                    _ => errors.push(FieldError {
                        column: Some(name.clone()),
                        value: Some(crate::source::shorten(cell)),
                        reason: "not a Thulium customer id (a positive whole number)".into(),
                    }),
                }
            }
        }
        if let Some(i) = self.failed_csv.customer_id {
            let cell = cells.get(i).unwrap_or_default().trim();
            if let Ok(id) = cell.parse::<i64>() {
                ev.existing_customer_id = Some(id);
            }
        }
        let column = |i: Option<usize>| i.and_then(|i| cells.get(i)).unwrap_or_default();
        let done = column(self.failed_csv.done);
        let unknown = column(self.failed_csv.unknown);
        for (stage, s) in self.stages.iter().enumerate() {
            let skip_customer = ev.existing_customer_id.is_some()
                && self.customer.as_ref().is_some_and(|(c, _)| *c == stage);
            let already = lists(done, s);
            if lists(unknown, s) {
                ev.unknown.insert(stage);
            }
            if skip_customer || already || !self.stage_runs(&s.when, cells, &mut errors) {
                continue;
            }
            ev.running.insert(stage);
            let mut missing = None;
            for slot in s.slots.clone() {
                let value = if keep {
                    self.specs[slot].eval(cells, self.trim)
                } else {
                    // Checking only: a present value stands as `Null`.
                    self.specs[slot]
                        .check(cells, self.trim)
                        .map(|present| present.then_some(Value::Null))
                };
                match value {
                    Ok(None) if missing.is_none() => {
                        missing = s.keys.iter().find(|(k, _)| *k == slot).map(|(_, what)| {
                            FieldError {
                                column: self.specs[slot].column_label(),
                                value: None,
                                reason: format!(
                                    "the {what} is empty: the row's {} stage cannot be sent (its other stages go on)",
                                    s.kind
                                ),
                            }
                        });
                    }
                    Ok(v) if keep => ev.slots[slot] = v,
                    Ok(_) => {}
                    Err(e) => errors.push(e),
                }
            }
            if let Some(problem) = missing {
                ev.running.remove(stage);
                ev.stage_problems.push((stage, problem));
            }
        }
        let needs_customer = self
            .field_groups
            .iter()
            .any(|(s, _)| ev.running.contains(*s))
            || self
                .campaign
                .as_ref()
                .is_some_and(|(s, _)| ev.running.contains(*s))
            || self
                .feed
                .as_ref()
                .is_some_and(|(s, _)| ev.running.contains(*s));
        let creates = self
            .customer
            .as_ref()
            .is_some_and(|(s, _)| ev.running.contains(*s));
        if errors.is_empty() && needs_customer && !creates && ev.existing_customer_id.is_none() {
            errors.push(FieldError {
                column: self.customer_id.as_ref().map(|(_, n)| n.clone()),
                value: None,
                reason: "no customer id in this row and no [customer] to create one, but a later stage needs it".into(),
            });
        }
        if errors.is_empty() {
            Ok(ev)
        } else {
            Err(errors)
        }
    }

    /// Moves evaluated values into the API's typed requests.
    pub fn assemble(&self, mut ev: Evaluated, row: &Row) -> RowPayloads {
        let unknown = self.unknown_stages(&ev);
        let invalid_stages = self.invalid_stages(&mut ev);
        let (customer, cleared) = self.customer_payload(&mut ev);
        let field_groups = self.field_group_payloads(&mut ev);
        let campaign = self.campaign_payload(&mut ev);
        let campaign_update = self.campaign_update_payload(&mut ev);
        let feed = self.feed_payload(&mut ev, row);
        RowPayloads {
            existing_customer_id: ev.existing_customer_id,
            customer,
            field_groups,
            campaign,
            campaign_update,
            feed,
            invalid_stages,
            unknown,
            cleared,
        }
    }

    /// The stages a failed-rows CSV's `_unknown` lists for the row.
    fn unknown_stages(&self, ev: &Evaluated) -> Unknowns {
        Unknowns {
            customer: self
                .customer
                .as_ref()
                .is_some_and(|(s, _)| ev.unknown.contains(*s)),
            field_groups: self
                .field_groups
                .iter()
                .enumerate()
                .filter(|(_, (stage, _))| ev.unknown.contains(*stage))
                .map(|(index, _)| index)
                .collect(),
            feed: self
                .feed
                .as_ref()
                .is_some_and(|(s, _)| ev.unknown.contains(*s)),
        }
    }

    /// The stages that run for the row but cannot be sent, at their stage
    /// of the ledger (only campaign stages have such keys).
    fn invalid_stages(&self, ev: &mut Evaluated) -> Vec<(Stage, FieldError)> {
        std::mem::take(&mut ev.stage_problems)
            .into_iter()
            .map(|(stage, problem)| {
                let stage = match self.stages[stage].kind {
                    "campaign" => Stage::Campaign,
                    _ => Stage::CampaignUpdate,
                };
                (stage, problem)
            })
            .collect()
    }

    /// The customer to create or update, and with `clear_empty` the mapped
    /// custom fields it clears; nothing when the stage does not run.
    fn customer_payload(&self, ev: &mut Evaluated) -> (Option<Customer>, Vec<Cleared>) {
        let Some((_, c)) = running(ev, &self.customer) else {
            return (None, Vec::new());
        };
        let mut customer = Customer::default();
        for (field, slot) in &c.fields {
            if let Some(v) = ev.take(*slot) {
                customer.set(*field, v);
            }
        }
        for (kind, parts) in &c.addresses {
            for (part, slot) in parts {
                if let Some(v) = ev.take(*slot) {
                    customer.address_mut(*kind).set(*part, v);
                }
            }
        }
        // The vendor documents clearing (an empty value) for custom
        // fields only: other empty cells stay out of an update.
        let mut cleared = Vec::new();
        if self.upsert.as_ref().is_some_and(|u| u.clear_empty) {
            for f in &c.custom_fields {
                if ev.slots.get(f.slot).is_some_and(Option::is_none) {
                    cleared.push(Cleared(f.name.clone()));
                }
            }
        }
        customer.custom_fields = ev.named(&c.custom_fields);
        (Some(customer), cleared)
    }

    /// One item per field group that runs and has a value.
    fn field_group_payloads(&self, ev: &mut Evaluated) -> Vec<ItemPayload> {
        let mut items = Vec::new();
        for (index, (stage, g)) in self.field_groups.iter().enumerate() {
            if !ev.running.contains(*stage) {
                continue;
            }
            let values: Vec<ItemValue> = g
                .values
                .iter()
                .filter_map(|(field_id, slot)| {
                    Some(ItemValue {
                        field_id: *field_id,
                        value: Scalar::from_value(ev.take(*slot)?),
                    })
                })
                .collect();
            if !values.is_empty() {
                items.push(ItemPayload {
                    index,
                    group_id: g.group_id,
                    values,
                    mode: ItemMode::Create,
                    match_ids: g.match_ids.clone(),
                    policies: g.policies.clone(),
                });
            }
        }
        items
    }

    /// The campaign record, when the stage runs.
    fn campaign_payload(&self, ev: &mut Evaluated) -> Option<CampaignPayload> {
        let (_, c) = running(ev, &self.campaign)?;
        let Some(Value::String(campaign_id)) = ev.take(c.id) else {
            return None;
        };
        let mut record = RecordFields::default();
        for (field, slot) in &c.fields {
            if let Some(v) = ev.take(*slot) {
                record.set(*field, v);
            }
        }
        Some(CampaignPayload {
            campaign_id,
            record,
        })
    }

    /// The campaign record edit, when the stage runs.
    fn campaign_update_payload(&self, ev: &mut Evaluated) -> Option<UpdatePayload> {
        let (_, u) = running(ev, &self.campaign_update)?;
        let id = ev.take(u.id);
        let identifier = ev.take(u.identifier);
        let mut body = RecordUpdate::default();
        for (field, slot) in &u.fields {
            if let Some(v) = ev.take(*slot) {
                body.set(*field, v);
            }
        }
        body.record_fields = ev.named(&u.record_fields);
        let (Some(Value::String(campaign_id)), Some(identifier)) = (id, identifier) else {
            return None;
        };
        Some(UpdatePayload {
            campaign_id,
            identifier: Scalar::from_value(identifier).text().into_owned(),
            body,
        })
    }

    /// The feed message, when the stage runs: its id is the mapped one or
    /// the row's own, its author the mapped one or `agent`.
    fn feed_payload(&self, ev: &mut Evaluated, row: &Row) -> Option<FeedMessage> {
        let (_, f) = running(ev, &self.feed)?;
        let id = match f.id.and_then(|s| ev.take(s)) {
            Some(v) => Scalar::from_value(v).text().into_owned(),
            None => format!("thulium-import-{}", row.id.row),
        };
        let author = f
            .author
            .and_then(|s| ev.take(s))
            .map_or(Scalar::Text("agent".into()), Scalar::from_value);
        let message = ev.take(f.message).map(Scalar::from_value)?;
        let time = ev.take(f.time).map(Scalar::from_value)?;
        Some(FeedMessage::text(
            id,
            message,
            author,
            time.text().into_owned(),
        ))
    }
}

/// A stage of the plan, if the row runs it.
fn running<'p, T>(ev: &Evaluated, stage: &'p Option<(usize, T)>) -> Option<&'p (usize, T)> {
    stage.as_ref().filter(|(s, _)| ev.running.contains(*s))
}
