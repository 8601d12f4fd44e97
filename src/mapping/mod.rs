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

pub mod date;
pub mod raw;
pub mod spec;

use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::api::customers::SearchKey;
use crate::api::payload::{
    AddressKind, AddressPart, Cleared, Customer, CustomerField, FeedMessage, FeedRecord, ItemValue,
    Named, RecordField, RecordFields, RecordUpdate, Scalar,
};
use crate::ledger::Stage;
use crate::source::{CellsRef, FieldError, Row, SourceOptions};
use raw::{OrderedMap, RawAddress, RawMapping};
use spec::{Kind, Spec};

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
    /// The 1-based line of a position in the mapping file.
    pub fn line_of(&self, span: &Range<usize>) -> usize {
        Ctx::new(&self.text, &[]).line(span)
    }

    /// The CSV reading options of `[source]` (checked: a bad delimiter or
    /// encoding is an error here, before the file is opened).
    pub fn source_options(&self) -> Result<SourceOptions, MappingError> {
        let mut ctx = Ctx::new(&self.text, &[]);
        let options = source_options(&mut ctx, &self.raw.source);
        ctx.finish(&self.path).map(|()| options)
    }
}

/// What compiling needs at hand: the mapping text (for line numbers), the
/// header, and the problems found so far.
#[derive(Debug)]
pub struct Ctx<'a> {
    text: &'a str,
    header: &'a [String],
    issues: Vec<Issue>,
}

impl<'a> Ctx<'a> {
    fn new(text: &'a str, header: &'a [String]) -> Self {
        Ctx {
            text,
            header,
            issues: Vec::new(),
        }
    }

    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }

    /// Records a problem with `key` at `span`.
    pub fn issue(&mut self, key: &str, span: Range<usize>, message: String) {
        let line = self.line(&span);
        self.issues.push(Issue {
            key: key.to_string(),
            line,
            message,
        });
    }

    /// The message for a column that is not in the header.
    fn missing_column(&self, name: &str) -> String {
        let wanted = name.trim().to_lowercase();
        let mut scored: Vec<(f64, &String)> = self
            .header
            .iter()
            .filter(|h| !h.is_empty())
            .map(|h| {
                (
                    strsim::normalized_damerau_levenshtein(&wanted, &h.to_lowercase()),
                    h,
                )
            })
            .filter(|(score, _)| *score >= 0.5)
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let closest: Vec<String> = scored
            .iter()
            .take(3)
            .map(|(_, h)| format!("\"{h}\""))
            .collect();
        if closest.is_empty() {
            let all: Vec<String> = self
                .header
                .iter()
                .take(12)
                .map(|h| format!("\"{h}\""))
                .collect();
            format!(
                "column \"{name}\" is not in the header (the header has: {})",
                all.join(", ")
            )
        } else {
            format!(
                "column \"{name}\" is not in the header (closest: {})",
                closest.join(", ")
            )
        }
    }

    fn finish(self, path: &Path) -> Result<(), MappingError> {
        if self.issues.is_empty() {
            Ok(())
        } else {
            Err(MappingError::Invalid {
                path: path.into(),
                issues: self.issues,
            })
        }
    }

    fn spec(&mut self, key: &str, raw: &raw::Spec, kind: Kind, list: bool) -> Option<Spec> {
        Spec::compile(self, key, raw, kind, list)
    }
}

fn source_options(ctx: &mut Ctx<'_>, raw: &raw::RawSource) -> SourceOptions {
    let mut options = SourceOptions {
        sheet: raw.sheet.clone(),
        ..SourceOptions::default()
    };
    let single_byte = |s: &str| -> Option<u8> {
        match s {
            "\\t" | "tab" => Some(b'\t'),
            s if s.len() == 1 && s.is_ascii() => Some(s.as_bytes()[0]),
            _ => None,
        }
    };
    if let Some(d) = &raw.delimiter {
        if d.get_ref() != "auto" {
            match single_byte(d.get_ref()) {
                Some(b) if b != b'\n' && b != b'\r' => options.delimiter = Some(b),
                _ => ctx.issue(
                    "source.delimiter",
                    d.span(),
                    format!(
                        "delimiter must be one ASCII character or \"auto\", not \"{}\"",
                        d.get_ref()
                    ),
                ),
            }
        }
    }
    if let Some(q) = &raw.quote {
        match single_byte(q.get_ref()) {
            Some(b) => options.quote = b,
            None => ctx.issue(
                "source.quote",
                q.span(),
                format!("quote must be one ASCII character, not \"{}\"", q.get_ref()),
            ),
        }
    }
    if let Some(e) = &raw.encoding {
        match encoding_rs::Encoding::for_label(e.get_ref().trim().as_bytes()) {
            Some(enc) if enc.is_ascii_compatible() && enc != encoding_rs::REPLACEMENT => options.encoding = Some(enc),
            Some(enc) => ctx.issue("source.encoding", e.span(), format!("encoding {} is not supported: convert the file to UTF-8", enc.name())),
            None => ctx.issue("source.encoding", e.span(), format!("unknown encoding \"{}\" (use a WHATWG label such as utf-8, windows-1250, iso-8859-2)", e.get_ref())),
        }
    }
    options
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
}

/// Compiles `[customer] match` and its companions; `None` without `match`.
fn upsert(ctx: &mut Ctx<'_>, c: &raw::RawCustomer) -> Option<Upsert> {
    let choice =
        |ctx: &mut Ctx<'_>, key: &str, v: &Option<toml::Spanned<String>>, options: [&str; 2]| {
            let v = v.as_ref()?;
            if options.contains(&v.get_ref().as_str()) {
                Some(v.get_ref() == options[0])
            } else {
                ctx.issue(
                    key,
                    v.span(),
                    format!(
                        "\"{}\" is not one of \"{}\" or \"{}\"",
                        v.get_ref(),
                        options[0],
                        options[1]
                    ),
                );
                None
            }
        };
    let on_match = choice(ctx, "customer.on_match", &c.on_match, ["update", "skip"]);
    let on_missing = choice(
        ctx,
        "customer.on_missing",
        &c.on_missing,
        ["create", "skip"],
    );
    let Some(raw) = &c.match_keys else {
        for (key, given) in [
            ("customer.on_match", c.on_match.as_ref().map(|v| v.span())),
            (
                "customer.on_missing",
                c.on_missing.as_ref().map(|v| v.span()),
            ),
        ] {
            if let Some(span) = given {
                ctx.issue(
                    key,
                    span,
                    "needs customer.match: the keys that find existing customers".into(),
                );
            }
        }
        return None;
    };
    let span = raw.span();
    let names: Vec<String> = match raw.get_ref() {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Array(items) if !items.is_empty() => {
            let names: Option<Vec<String>> = items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect();
            match names {
                Some(n) => n,
                None => {
                    ctx.issue("customer.match", span, "match is a key name or a list of them, such as [\"identifier\", \"email\"]".into());
                    return None;
                }
            }
        }
        _ => {
            ctx.issue(
                "customer.match",
                span,
                "match is a key name or a list of them, such as [\"identifier\", \"email\"]".into(),
            );
            return None;
        }
    };
    let mut keys = Vec::new();
    for name in names {
        let Some(key) = SearchKey::parse(name.trim()) else {
            ctx.issue("customer.match", span.clone(), format!("\"{name}\" is not a match key (expected identifier, email, phone_number, nip or custom_fields.<Name>)"));
            continue;
        };
        let mapped = match &key {
            SearchKey::Identifier => c.identifier.is_some(),
            SearchKey::Email => c.email.is_some(),
            SearchKey::PhoneNumber => c.phone_number.is_some(),
            SearchKey::Nip => c.nip.is_some(),
            SearchKey::CustomField(n) => c
                .custom_fields
                .as_ref()
                .is_some_and(|f| f.0.iter().any(|(k, _)| k.get_ref() == n)),
        };
        if !mapped {
            ctx.issue(
                "customer.match",
                span.clone(),
                format!(
                    "{name} is a match key but the mapping does not fill it: map customer.{name}"
                ),
            );
            continue;
        }
        if keys.contains(&key) {
            ctx.issue(
                "customer.match",
                span.clone(),
                format!("{name} is listed twice"),
            );
            continue;
        }
        keys.push(key);
    }
    Some(Upsert {
        keys,
        on_match: if on_match == Some(false) {
            OnMatch::Skip
        } else {
            OnMatch::Update
        },
        on_missing: if on_missing == Some(false) {
            OnMissing::Skip
        } else {
            OnMissing::Create
        },
        clear_empty: c.clear_empty.unwrap_or(false),
    })
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

/// Compile-time bookkeeping of slots and stages.
struct Builder {
    specs: Vec<Spec>,
    stages: Vec<StageSlots>,
}

impl Builder {
    fn slot(&mut self, spec: Spec) -> usize {
        self.specs.push(spec);
        self.specs.len() - 1
    }
    fn begin(&self) -> usize {
        self.specs.len()
    }
    fn end(
        &mut self,
        start: usize,
        when: Option<Spec>,
        kind: &'static str,
        done_name: String,
    ) -> usize {
        self.stages.push(StageSlots {
            when,
            slots: start..self.specs.len(),
            kind,
            done_name,
            keys: Vec::new(),
        });
        self.stages.len() - 1
    }
}

/// Checks a loaded mapping against the CSV header and builds the plan.
pub fn compile(loaded: &Loaded, header: &[String]) -> Result<Plan, MappingError> {
    let raw = &loaded.raw;
    let mut ctx = Ctx::new(&loaded.text, header);
    source_options(&mut ctx, &raw.source);
    let mut b = Builder {
        specs: Vec::new(),
        stages: Vec::new(),
    };
    let mut plan = Plan {
        trim: raw.source.trim.unwrap_or(true),
        customer_id: None,
        failed_csv: FailedCsvColumns {
            customer_id: header.iter().position(|h| h == "_customer_id"),
            done: header.iter().position(|h| h == "_done"),
            unknown: header.iter().position(|h| h == "_unknown"),
        },
        specs: Vec::new(),
        stages: Vec::new(),
        customer: None,
        upsert: None,
        group_parts: field_group_done_names(raw),
        field_groups: Vec::new(),
        campaign: None,
        campaign_update: None,
        feed: None,
        feed_on_match: FeedOnMatch::Skip,
    };
    if let Some(col) = &raw.source.customer_id {
        match header.iter().position(|h| h == col.get_ref().trim()) {
            Some(i) => plan.customer_id = Some((i, col.get_ref().trim().to_string())),
            None => {
                let msg = ctx.missing_column(col.get_ref());
                ctx.issue("source.customer_id", col.span(), msg);
            }
        }
    }
    let when = |ctx: &mut Ctx<'_>, stage: &str, w: &Option<raw::Spec>| {
        w.as_ref()
            .and_then(|w| ctx.spec(&format!("{stage}.when"), w, Kind::Scalar, false))
    };
    if let Some(c) = &raw.customer {
        let span = c.span();
        let c = c.get_ref();
        let upsert = upsert(&mut ctx, c);
        let creates = upsert
            .as_ref()
            .is_none_or(|u| u.on_missing == OnMissing::Create);
        if c.surname.is_none() && creates {
            ctx.issue(
                "customer",
                span,
                "customer.surname is required by the API to create customers: map it to a column (or set on_missing = \"skip\")".into(),
            );
        }
        let start = b.begin();
        let mut scalar = Vec::new();
        for (field, spec, kind, list) in customer_fields(c) {
            let key = format!("customer.{}", field.key());
            if let Some(mut s) = spec.and_then(|spec| ctx.spec(&key, spec, kind, list)) {
                if field == CustomerField::Surname && creates {
                    s.set_required();
                }
                scalar.push((field, b.slot(s)));
            }
        }
        let mut addresses = Vec::new();
        for (kind, address) in [
            (AddressKind::Address, &c.address),
            (AddressKind::Invoice, &c.invoice_address),
            (AddressKind::MailDrop, &c.mail_drop_address),
        ] {
            if let Some(a) = address {
                let mut parts = Vec::new();
                for (part, spec) in address_fields(a) {
                    let key = format!("customer.{}.{}", kind.key(), part.key());
                    if let Some(s) = spec.and_then(|spec| ctx.spec(&key, spec, Kind::Text, false)) {
                        parts.push((part, b.slot(s)));
                    }
                }
                addresses.push((kind, parts));
            }
        }
        let custom_fields = ordered(
            &mut ctx,
            &mut b,
            "customer.custom_fields",
            c.custom_fields.as_ref(),
        );
        let stage = b.end(
            start,
            when(&mut ctx, "customer", &c.when),
            "customer",
            "customer".into(),
        );
        plan.customer = Some((
            stage,
            CustomerPlan {
                fields: scalar,
                addresses,
                custom_fields,
            },
        ));
        plan.upsert = upsert;
    }
    let group_names = field_group_done_names(raw);
    for (n, g) in raw.field_group.iter().enumerate() {
        let key = format!("field_group[{n}]");
        let g = g.get_ref();
        let start = b.begin();
        let mut values = Vec::new();
        for (field, spec) in &g.values.0 {
            let Ok(field_id) = field.get_ref().trim().parse::<i64>() else {
                ctx.issue(&format!("{key}.values"), field.span(), format!("\"{}\" is not a field id: keys of values are the numeric field ids of group {}", field.get_ref(), g.group_id.get_ref()));
                continue;
            };
            if let Some(s) = ctx.spec(
                &format!("{key}.values.{field_id}"),
                spec,
                Kind::Scalar,
                false,
            ) {
                values.push((field_id, b.slot(s)));
            }
        }
        if g.values.0.is_empty() {
            ctx.issue(
                &format!("{key}.values"),
                g.group_id.span(),
                "a field group needs at least one value".into(),
            );
        }
        let stage = b.end(
            start,
            when(&mut ctx, &key, &g.when),
            "field_group",
            group_names[n].clone(),
        );
        let match_ids = item_match(&mut ctx, &key, g);
        plan.field_groups.push((
            stage,
            FieldGroupPlan {
                group_id: *g.group_id.get_ref(),
                values,
                match_ids,
            },
        ));
    }
    if let Some(c) = &raw.campaign {
        let c = c.get_ref();
        let start = b.begin();
        let id = ctx
            .spec("campaign.id", &c.id, Kind::CampaignId, false)
            .map(|s| b.slot(s));
        let list = [
            (RecordField::StatusId, c.status_id.as_ref()),
            (
                RecordField::DictionaryStatusId,
                c.dictionary_status_id.as_ref(),
            ),
            (RecordField::AgentLogin, c.agent_login.as_ref()),
            (RecordField::NextCallDate, c.next_call_date.as_ref()),
            (RecordField::Order, c.order.as_ref()),
        ];
        let record = record_fields(&mut ctx, &mut b, "campaign", &list);
        let stage = b.end(
            start,
            when(&mut ctx, "campaign", &c.when),
            "campaign",
            "campaign".into(),
        );
        if let Some(id) = id {
            b.stages[stage].keys.push((id, "campaign id"));
            plan.campaign = Some((stage, CampaignPlan { id, fields: record }));
        }
    }
    if let Some(u) = &raw.campaign_update {
        let u = u.get_ref();
        let start = b.begin();
        let id = ctx
            .spec("campaign_update.id", &u.id, Kind::CampaignId, false)
            .map(|s| b.slot(s));
        let identifier = ctx
            .spec(
                "campaign_update.identifier",
                &u.identifier,
                Kind::Text,
                false,
            )
            .map(|s| b.slot(s));
        let list = [
            (RecordField::StatusId, u.status_id.as_ref()),
            (
                RecordField::DictionaryStatusId,
                u.dictionary_status_id.as_ref(),
            ),
            (RecordField::AgentLogin, u.agent_login.as_ref()),
            (RecordField::NextCallDate, u.next_call_date.as_ref()),
        ];
        let body = record_fields(&mut ctx, &mut b, "campaign_update", &list);
        let record_fields = ordered(
            &mut ctx,
            &mut b,
            "campaign_update.record_fields",
            u.record_fields.as_ref(),
        );
        let stage = b.end(
            start,
            when(&mut ctx, "campaign_update", &u.when),
            "campaign_update",
            "campaign_update".into(),
        );
        if let (Some(id), Some(identifier)) = (id, identifier) {
            b.stages[stage]
                .keys
                .extend([(id, "campaign id"), (identifier, "record identifier")]);
            plan.campaign_update = Some((
                stage,
                UpdatePlan {
                    id,
                    identifier,
                    fields: body,
                    record_fields,
                },
            ));
        }
    }
    if let Some(f) = &raw.feed {
        let f = f.get_ref();
        let start = b.begin();
        let required =
            |ctx: &mut Ctx<'_>, b: &mut Builder, key: &str, spec: &raw::Spec, kind: Kind| {
                ctx.spec(key, spec, kind, false).map(|mut s| {
                    s.set_required();
                    b.slot(s)
                })
            };
        let message = required(&mut ctx, &mut b, "feed.message", &f.message, Kind::Text);
        let time = required(&mut ctx, &mut b, "feed.time", &f.time, Kind::FeedTime);
        let author = f
            .author
            .as_ref()
            .and_then(|a| ctx.spec("feed.author", a, Kind::Text, false))
            .map(|s| b.slot(s));
        let id =
            f.id.as_ref()
                .and_then(|a| ctx.spec("feed.id", a, Kind::Text, false))
                .map(|s| b.slot(s));
        if let Some(v) = &f.on_match {
            match v.get_ref().as_str() {
                "skip" => plan.feed_on_match = FeedOnMatch::Skip,
                "send" => plan.feed_on_match = FeedOnMatch::Send,
                other => ctx.issue(
                    "feed.on_match",
                    v.span(),
                    format!("\"{other}\" is not one of \"skip\" or \"send\""),
                ),
            }
        }
        let stage = b.end(
            start,
            when(&mut ctx, "feed", &f.when),
            "feed",
            "feed".into(),
        );
        if let (Some(message), Some(time)) = (message, time) {
            plan.feed = Some((
                stage,
                FeedPlan {
                    message,
                    time,
                    author,
                    id,
                },
            ));
        }
    }
    let needs_customer =
        !raw.field_group.is_empty() || raw.campaign.is_some() || raw.feed.is_some();
    if needs_customer && raw.customer.is_none() && raw.source.customer_id.is_none() {
        ctx.issues.push(Issue {
            key: "customer".into(),
            line: 1,
            message: "[field_group], [campaign] and [feed] need a customer id: add a [customer] stage to create customers, or [source] customer_id naming a column of existing ids".into(),
        });
    }
    if raw.customer.is_none()
        && raw.field_group.is_empty()
        && raw.campaign.is_none()
        && raw.campaign_update.is_none()
        && raw.feed.is_none()
    {
        ctx.issues.push(Issue { key: "(mapping)".into(), line: 1, message: "the mapping has no stage: add [customer], [[field_group]], [campaign], [campaign_update] or [feed]".into() });
    }
    plan.specs = b.specs;
    plan.stages = b.stages;
    ctx.finish(&loaded.path).map(|()| plan)
}

/// `[[field_group]] match`: field ids (one, or a list; numbers or their
/// text), each one of the block's own `values`.
fn item_match(ctx: &mut Ctx<'_>, key: &str, g: &raw::RawFieldGroup) -> Vec<i64> {
    let Some(m) = &g.match_fields else {
        return Vec::new();
    };
    let key = format!("{key}.match");
    let own: Vec<i64> = g
        .values
        .0
        .iter()
        .filter_map(|(k, _)| k.get_ref().trim().parse().ok())
        .collect();
    let list = match m.get_ref() {
        toml::Value::Array(a) => a.clone(),
        one => vec![one.clone()],
    };
    let mut ids = Vec::new();
    for v in &list {
        let id = match v {
            toml::Value::Integer(i) => Some(*i),
            toml::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        match id {
            Some(id) if own.contains(&id) => {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            Some(id) => ctx.issue(
                &key,
                m.span(),
                format!(
                    "field {id} is not one of this block's values ({}): match names the fields, among those the block fills, that identify an item",
                    own.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
                ),
            ),
            None => ctx.issue(
                &key,
                m.span(),
                format!("{v} is not a field id: match lists field ids of the block's values"),
            ),
        }
    }
    if list.is_empty() {
        ctx.issue(
            &key,
            m.span(),
            "match is empty: name at least one field id, or leave match out".into(),
        );
    }
    ids
}

/// The fields of a campaign record or its edit, compiled into slots.
fn record_fields(
    ctx: &mut Ctx<'_>,
    b: &mut Builder,
    stage: &str,
    list: &[(RecordField, Option<&raw::Spec>)],
) -> Vec<(RecordField, usize)> {
    list.iter()
        .filter_map(|(field, spec)| {
            let kind = match field {
                RecordField::AgentLogin => Kind::Text,
                RecordField::NextCallDate => Kind::DateTime,
                _ => Kind::Int,
            };
            let s = ctx.spec(&format!("{stage}.{}", field.key()), (*spec)?, kind, false)?;
            Some((*field, b.slot(s)))
        })
        .collect()
}

/// A table of user-named fields (custom fields, record fields), compiled
/// into slots in file order.
/// How a failed-rows CSV's `_done` names each `[[field_group]]` of a
/// mapping: `field_group:<group_id>`, and for a group id the mapping uses
/// again, `field_group:<group_id>.2`, `.3`, ...
pub fn field_group_done_names(raw: &RawMapping) -> Vec<String> {
    let mut seen: Vec<i64> = Vec::new();
    raw.field_group
        .iter()
        .map(|g| {
            let id = *g.get_ref().group_id.get_ref();
            let n = seen.iter().filter(|s| **s == id).count();
            seen.push(id);
            if n == 0 {
                format!("field_group:{id}")
            } else {
                format!("field_group:{id}.{}", n + 1)
            }
        })
        .collect()
}

fn ordered(
    ctx: &mut Ctx<'_>,
    b: &mut Builder,
    key: &str,
    map: Option<&OrderedMap<raw::Spec>>,
) -> Vec<NamedSlot> {
    let Some(map) = map else { return Vec::new() };
    map.0
        .iter()
        .filter_map(|(name, spec)| {
            let s = ctx.spec(
                &format!("{key}.\"{}\"", name.get_ref()),
                spec,
                Kind::Scalar,
                false,
            )?;
            Some(NamedSlot {
                name: name.get_ref().clone(),
                slot: b.slot(s),
            })
        })
        .collect()
}

/// The customer's scalar fields with their kinds, in the API's order.
fn customer_fields(c: &raw::RawCustomer) -> Vec<(CustomerField, Option<&raw::Spec>, Kind, bool)> {
    use CustomerField as F;
    vec![
        (F::Name, c.name.as_ref(), Kind::Text, false),
        (F::Surname, c.surname.as_ref(), Kind::Text, false),
        (F::Email, c.email.as_ref(), Kind::Email, true),
        (F::PhoneNumber, c.phone_number.as_ref(), Kind::Phone, true),
        (F::CompanyId, c.company_id.as_ref(), Kind::Int, false),
        (F::Type, c.type_.as_ref(), Kind::Text, false),
        (F::Group, c.group.as_ref(), Kind::Text, false),
        (F::Identifier, c.identifier.as_ref(), Kind::Text, false),
        (F::Gender, c.gender.as_ref(), Kind::Text, false),
        (F::Homepage, c.homepage.as_ref(), Kind::Text, false),
        (F::Birthdate, c.birthdate.as_ref(), Kind::Date, false),
        (F::Nip, c.nip.as_ref(), Kind::Text, false),
        (F::Note, c.note.as_ref(), Kind::Text, false),
        (F::Pesel, c.pesel.as_ref(), Kind::Text, false),
        (F::Job, c.job.as_ref(), Kind::Text, false),
        (F::JobTitle, c.job_title.as_ref(), Kind::Text, false),
        (
            F::AccountManager,
            c.account_manager.as_ref(),
            Kind::Text,
            false,
        ),
        (F::Vip, c.vip.as_ref(), Kind::Bool, false),
        (
            F::FillReadOnlyCustomFields,
            c.fill_read_only_custom_fields.as_ref(),
            Kind::Bool,
            false,
        ),
    ]
}

fn address_fields(a: &RawAddress) -> [(AddressPart, Option<&raw::Spec>); 6] {
    [
        (AddressPart::Street, a.street.as_ref()),
        (AddressPart::Building, a.building.as_ref()),
        (AddressPart::Flat, a.flat.as_ref()),
        (AddressPart::Postcode, a.postcode.as_ref()),
        (AddressPart::City, a.city.as_ref()),
        (AddressPart::Country, a.country.as_ref()),
    ]
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
    pub fn key_hashes(&self, cells: CellsRef<'_>) -> Vec<(SearchKey, crate::identity::KeyHash)> {
        let (Some(upsert), Some((stage, c))) = (&self.upsert, &self.customer) else {
            return Vec::new();
        };
        if !self.stage_runs(&self.stages[*stage].when, cells, &mut Vec::new()) {
            return Vec::new();
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
            let Some(Ok(Some(value))) = slot.map(|s| self.specs[s].eval(cells, self.trim)) else {
                continue;
            };
            let values = match value {
                Value::Array(items) => items,
                one => vec![one],
            };
            for v in values {
                let text = Scalar::from_value(v).text().trim().to_string();
                if !text.is_empty() {
                    out.push((key.clone(), crate::identity::key_hash(key, &text)));
                }
            }
        }
        out
    }

    /// [`Plan::validate`] on borrowed cells (a row decoded in place).
    pub fn validate_cells(&self, cells: CellsRef<'_>) -> Result<(), Vec<FieldError>> {
        self.evaluate_with(cells, false)
            .and_then(Evaluated::checked)
            .map(|_| ())
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
                match self.specs[slot].eval_with(cells, self.trim, keep) {
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
        let mut out = RowPayloads {
            existing_customer_id: ev.existing_customer_id,
            ..RowPayloads::default()
        };
        if let Some((stage, _)) = &self.customer {
            out.unknown.customer = ev.unknown.contains(*stage);
        }
        for (index, (stage, _)) in self.field_groups.iter().enumerate() {
            if ev.unknown.contains(*stage) {
                out.unknown.field_groups.push(index);
            }
        }
        if let Some((stage, _)) = &self.feed {
            out.unknown.feed = ev.unknown.contains(*stage);
        }
        for (stage, problem) in std::mem::take(&mut ev.stage_problems) {
            let stage = match self.stages[stage].kind {
                "campaign" => Stage::Campaign,
                _ => Stage::CampaignUpdate,
            };
            out.invalid_stages.push((stage, problem));
        }
        if let Some((stage, c)) = &self.customer {
            if ev.running.contains(*stage) {
                let clear = self.upsert.as_ref().is_some_and(|u| u.clear_empty);
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
                if clear {
                    for f in &c.custom_fields {
                        if ev.slots.get(f.slot).is_some_and(Option::is_none) {
                            out.cleared.push(Cleared(f.name.clone()));
                        }
                    }
                }
                customer.custom_fields = ev.named(&c.custom_fields);
                out.customer = Some(customer);
            }
        }
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
                out.field_groups.push(ItemPayload {
                    index,
                    group_id: g.group_id,
                    values,
                    mode: ItemMode::Create,
                    match_ids: g.match_ids.clone(),
                });
            }
        }
        if let Some((stage, c)) = &self.campaign {
            if ev.running.contains(*stage) {
                if let Some(Value::String(campaign_id)) = ev.take(c.id) {
                    let mut record = RecordFields::default();
                    for (field, slot) in &c.fields {
                        if let Some(v) = ev.take(*slot) {
                            record.set(*field, v);
                        }
                    }
                    out.campaign = Some(CampaignPayload {
                        campaign_id,
                        record,
                    });
                }
            }
        }
        if let Some((stage, u)) = &self.campaign_update {
            if ev.running.contains(*stage) {
                let id = ev.take(u.id);
                let identifier = ev.take(u.identifier);
                let mut body = RecordUpdate::default();
                for (field, slot) in &u.fields {
                    if let Some(v) = ev.take(*slot) {
                        body.set(*field, v);
                    }
                }
                body.record_fields = ev.named(&u.record_fields);
                if let (Some(Value::String(campaign_id)), Some(identifier)) = (id, identifier) {
                    out.campaign_update = Some(UpdatePayload {
                        campaign_id,
                        identifier: Scalar::from_value(identifier).text().into_owned(),
                        body,
                    });
                }
            }
        }
        if let Some((stage, f)) = &self.feed {
            if ev.running.contains(*stage) {
                let id = match f.id.and_then(|s| ev.take(s)) {
                    Some(v) => Scalar::from_value(v).text().into_owned(),
                    None => format!("thulium-import-{}", row.id.row),
                };
                let author = f
                    .author
                    .and_then(|s| ev.take(s))
                    .map_or(Scalar::Text("agent".into()), Scalar::from_value);
                let message = ev.take(f.message).map(Scalar::from_value);
                let time = ev.take(f.time).map(Scalar::from_value);
                if let (Some(message), Some(time)) = (message, time) {
                    out.feed = Some(FeedMessage::text(
                        id,
                        message,
                        author,
                        time.text().into_owned(),
                    ));
                }
            }
        }
        out
    }
}
