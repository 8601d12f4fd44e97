//! The compiler: a [`RawMapping`] checked against the CSV header and turned
//! into a [`Plan`], step by step — the source options, each stage in
//! pipeline order (customer, field groups, campaign, campaign update, feed),
//! then the mapping as a whole. Every problem is recorded in [`Ctx`] with its
//! TOML key and line, and compiling goes on, so that one `check` lists them
//! all; the plan is returned only when there were none.
//!
//! Each stage's specs take contiguous slots of [`Plan`]'s spec list, in the
//! order they are compiled here: that order is also the order in which a
//! row's problems are reported, so it is kept as the file reads.

use std::ops::Range;
use std::path::Path;

use toml::Spanned;

use super::raw::{self, OrderedMap, RawAddress, RawMapping};
use super::spec::{Kind, Spec};
use super::{
    CampaignPlan, CustomerPlan, FailedCsvColumns, FeedOnMatch, FeedPlan, FieldGroupPlan, Issue,
    Loaded, MappingError, NamedSlot, OnGone, OnMatch, OnMissing, Plan, Policies, Policy,
    StageSlots, UpdatePlan, Upsert,
};
use crate::api::customers::SearchKey;
use crate::api::payload::{AddressKind, AddressPart, CustomerField, RecordField};
use crate::source::SourceOptions;

/// What compiling needs at hand: the mapping text (for line numbers), the
/// header, and the problems found so far.
#[derive(Debug)]
pub struct Ctx<'a> {
    text: &'a str,
    pub(super) header: &'a [String],
    issues: Vec<Issue>,
    /// Whether the specs compiled now may take `update` (customer fields
    /// and field-group values).
    pub(crate) policies: bool,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(text: &'a str, header: &'a [String]) -> Self {
        Ctx {
            text,
            header,
            issues: Vec::new(),
            policies: false,
        }
    }

    pub(super) fn line(&self, span: &Range<usize>) -> usize {
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
    pub(super) fn missing_column(&self, name: &str) -> String {
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

    pub(super) fn finish(self, path: &Path) -> Result<(), MappingError> {
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

pub(super) fn source_options(ctx: &mut Ctx<'_>, raw: &raw::RawSource) -> SourceOptions {
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

/// Compile-time bookkeeping of slots and stages: each stage's specs take
/// the slots from its [`Builder::begin`] to its [`Builder::end`].
#[derive(Default)]
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
///
/// Every step runs, whatever the steps before it found, so that all the
/// problems of a mapping are reported at once; their order (and the order
/// of the slots) is the order of the steps.
pub fn compile(loaded: &Loaded, header: &[String]) -> Result<Plan, MappingError> {
    let raw = &loaded.raw;
    let mut ctx = Ctx::new(&loaded.text, header);
    let mut b = Builder::default();
    source_options(&mut ctx, &raw.source);
    let customer_id = customer_id_column(&mut ctx, &raw.source);
    let (customer, upsert) = match &raw.customer {
        Some(c) => {
            let (customer, upsert) = customer_stage(&mut ctx, &mut b, c);
            (Some(customer), upsert)
        }
        None => (None, None),
    };
    let group_parts = field_group_done_names(raw);
    let field_groups = raw
        .field_group
        .iter()
        .zip(&group_parts)
        .enumerate()
        .map(|(n, (g, done_name))| field_group_stage(&mut ctx, &mut b, n, g.get_ref(), done_name))
        .collect();
    let campaign = raw
        .campaign
        .as_ref()
        .and_then(|c| campaign_stage(&mut ctx, &mut b, c.get_ref()));
    let campaign_update = raw
        .campaign_update
        .as_ref()
        .and_then(|u| campaign_update_stage(&mut ctx, &mut b, u.get_ref()));
    let (feed, feed_on_match) = match &raw.feed {
        Some(f) => feed_stage(&mut ctx, &mut b, f.get_ref()),
        None => (None, FeedOnMatch::Skip),
    };
    let on_gone = raw
        .customer
        .as_ref()
        .map(|c| on_gone(&mut ctx, c.get_ref()))
        .unwrap_or_default();
    let job = job_name(&mut ctx, &raw.source);
    check_full_export(&mut ctx, &raw.source, &on_gone);
    check_customer_id_source(&mut ctx, raw);
    check_some_stage(&mut ctx, raw);
    ctx.finish(&loaded.path)?;
    Ok(Plan {
        trim: raw.source.trim.unwrap_or(true),
        customer_id,
        failed_csv: failed_csv_columns(header),
        specs: b.specs,
        stages: b.stages,
        customer,
        upsert,
        group_parts,
        field_groups,
        campaign,
        campaign_update,
        feed,
        feed_on_match,
        on_gone,
        job,
    })
}

/// A table's default `update` (`<key>.update`), `always` when absent.
fn default_policy(ctx: &mut Ctx<'_>, key: &str, v: &Option<Spanned<String>>) -> Policy {
    let Some(v) = v else {
        return Policy::Always;
    };
    Policy::parse(v.get_ref()).unwrap_or_else(|| {
        ctx.issue(key, v.span(), Policy::EXPECTED.into());
        Policy::Always
    })
}

/// `[customer] on_gone`.
fn on_gone(ctx: &mut Ctx<'_>, c: &raw::RawCustomer) -> OnGone {
    let Some(v) = &c.on_gone else {
        return OnGone::Keep;
    };
    let text = |v: Option<&toml::Value>| match v {
        Some(toml::Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(toml::Value::Integer(i)) => Some(i.to_string()),
        _ => None,
    };
    let parsed = match v.get_ref() {
        toml::Value::String(s) => match s.as_str() {
            "keep" => Some(OnGone::Keep),
            "report" => Some(OnGone::Report),
            "delete" => Some(OnGone::Delete),
            _ => None,
        },
        toml::Value::Table(t) if t.keys().all(|k| k == "custom_field" || k == "value") => {
            match (text(t.get("custom_field")), text(t.get("value"))) {
                (Some(custom_field), Some(value)) => Some(OnGone::Mark {
                    custom_field: custom_field.trim().to_string(),
                    value,
                }),
                _ => None,
            }
        }
        _ => None,
    };
    parsed.unwrap_or_else(|| {
        ctx.issue("customer.on_gone", v.span(), OnGone::EXPECTED.into());
        OnGone::Keep
    })
}

/// `[source] full_export = false` beside an `on_gone` that acts says two
/// things at once: `on_gone` counts a customer missing from a file gone,
/// which only a full export can say.
fn check_full_export(ctx: &mut Ctx<'_>, source: &raw::RawSource, on_gone: &OnGone) {
    if let Some(full) = &source.full_export {
        if !*full.get_ref() && *on_gone != OnGone::Keep {
            ctx.issue(
                "source.full_export",
                full.span(),
                "full_export = false contradicts [customer] on_gone, which reads every file as a full export (a customer missing from it is gone); remove full_export, or set on_gone = \"keep\"".into(),
            );
        }
    }
}

/// Whether the mapping's files are full exports of one job: `[source]
/// full_export = true`, or an `on_gone` that acts. Read without a header
/// (`sync` decides which files to take before opening any); an `on_gone`
/// that does not parse counts as `"keep"` here and is reported when the
/// file's run compiles the mapping.
pub(super) fn full_exports(loaded: &Loaded) -> bool {
    let raw = &loaded.raw;
    if raw
        .source
        .full_export
        .as_ref()
        .is_some_and(|f| *f.get_ref())
    {
        return true;
    }
    let mut ctx = Ctx::new(&loaded.text, &[]);
    raw.customer
        .as_ref()
        .is_some_and(|c| on_gone(&mut ctx, c.get_ref()) != OnGone::Keep)
}

/// `[source] job`: a name, not empty.
fn job_name(ctx: &mut Ctx<'_>, source: &raw::RawSource) -> Option<String> {
    let job = source.job.as_ref()?;
    let name = job.get_ref().trim();
    if name.is_empty() {
        ctx.issue(
            "source.job",
            job.span(),
            "job must name the job (a few words), not be empty".into(),
        );
        return None;
    }
    Some(name.to_string())
}

/// The customer fields whose `update` (their own, or the table's default)
/// is not `always`, by the names an update's payload gives them.
fn customer_policies(specs: &[Spec], plan: &CustomerPlan, default: Policy) -> Policies {
    let of = |slot: usize| specs[slot].update().unwrap_or(default);
    let mut out = Vec::new();
    for (field, slot) in &plan.fields {
        out.push((field.key().to_string(), of(*slot)));
    }
    for (kind, parts) in &plan.addresses {
        for (part, slot) in parts {
            out.push((format!("{}.{}", kind.key(), part.key()), of(*slot)));
        }
    }
    for f in &plan.custom_fields {
        out.push((format!("custom_fields.{}", f.name), of(f.slot)));
    }
    out.retain(|(_, p)| *p != Policy::Always);
    Policies(out)
}

/// The bookkeeping columns of a failed-rows CSV, where the header has them.
fn failed_csv_columns(header: &[String]) -> FailedCsvColumns {
    let find = |name: &str| header.iter().position(|h| h == name);
    FailedCsvColumns {
        customer_id: find("_customer_id"),
        done: find("_done"),
        unknown: find("_unknown"),
    }
}

/// `[source] customer_id`: the column of existing customer ids, and its name.
fn customer_id_column(ctx: &mut Ctx<'_>, source: &raw::RawSource) -> Option<(usize, String)> {
    let col = source.customer_id.as_ref()?;
    let name = col.get_ref().trim();
    match ctx.header.iter().position(|h| h == name) {
        Some(i) => Some((i, name.to_string())),
        None => {
            let msg = ctx.missing_column(col.get_ref());
            ctx.issue("source.customer_id", col.span(), msg);
            None
        }
    }
}

/// A stage's `when` (`<stage>.when`), if it has one.
fn when(ctx: &mut Ctx<'_>, stage: &str, w: &Option<raw::Spec>) -> Option<Spec> {
    w.as_ref()
        .and_then(|w| ctx.spec(&format!("{stage}.when"), w, Kind::Scalar, false))
}

/// `[customer]`: how existing customers are matched, then the customer's
/// fields, addresses and custom fields.
fn customer_stage(
    ctx: &mut Ctx<'_>,
    b: &mut Builder,
    c: &Spanned<raw::RawCustomer>,
) -> ((usize, CustomerPlan), Option<Upsert>) {
    let span = c.span();
    let c = c.get_ref();
    let mut upsert = upsert(ctx, c);
    let default = default_policy(ctx, "customer.update", &c.update);
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
    ctx.policies = true;
    let fields = customer_scalars(ctx, b, c, creates);
    let addresses = customer_addresses(ctx, b, c);
    let custom_fields = ordered(ctx, b, "customer.custom_fields", c.custom_fields.as_ref());
    ctx.policies = false;
    let stage = b.end(
        start,
        when(ctx, "customer", &c.when),
        "customer",
        "customer".into(),
    );
    let plan = CustomerPlan {
        fields,
        addresses,
        custom_fields,
    };
    // Without `match` nothing is updated: the policies have nothing to do.
    if let Some(u) = &mut upsert {
        u.policies = customer_policies(&b.specs, &plan, default);
    }
    ((stage, plan), upsert)
}

/// The customer's scalar fields, in the API's order; `surname` is required
/// of a row when the stage creates customers.
fn customer_scalars(
    ctx: &mut Ctx<'_>,
    b: &mut Builder,
    c: &raw::RawCustomer,
    creates: bool,
) -> Vec<(CustomerField, usize)> {
    let mut fields = Vec::new();
    for (field, spec, kind, list) in customer_fields(c) {
        let key = format!("customer.{}", field.key());
        if let Some(mut s) = spec.and_then(|spec| ctx.spec(&key, spec, kind, list)) {
            if field == CustomerField::Surname && creates {
                s.set_required();
            }
            fields.push((field, b.slot(s)));
        }
    }
    fields
}

/// The customer's addresses that the mapping has, each with its parts.
fn customer_addresses(
    ctx: &mut Ctx<'_>,
    b: &mut Builder,
    c: &raw::RawCustomer,
) -> Vec<(AddressKind, Vec<(AddressPart, usize)>)> {
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
    addresses
}

/// The `n`th `[[field_group]]`: its values, then its `match`.
fn field_group_stage(
    ctx: &mut Ctx<'_>,
    b: &mut Builder,
    n: usize,
    g: &raw::RawFieldGroup,
    done_name: &str,
) -> (usize, FieldGroupPlan) {
    let key = format!("field_group[{n}]");
    let start = b.begin();
    let default = default_policy(ctx, &format!("{key}.update"), &g.update);
    ctx.policies = true;
    let values = group_values(ctx, b, &key, g);
    ctx.policies = false;
    let policies = values
        .iter()
        .map(|(id, slot)| (*id, b.specs[*slot].update().unwrap_or(default)))
        .filter(|(_, p)| *p != Policy::Always)
        .collect();
    let stage = b.end(
        start,
        when(ctx, &key, &g.when),
        "field_group",
        done_name.to_string(),
    );
    let match_ids = item_match(ctx, &key, g);
    let plan = FieldGroupPlan {
        group_id: *g.group_id.get_ref(),
        values,
        match_ids,
        policies,
    };
    (stage, plan)
}

/// `[[field_group]] values`: the numeric field ids of the group, each with
/// its spec; at least one.
fn group_values(
    ctx: &mut Ctx<'_>,
    b: &mut Builder,
    key: &str,
    g: &raw::RawFieldGroup,
) -> Vec<(i64, usize)> {
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
    values
}

/// `[campaign]`: the campaign id (without it a row's campaign stage cannot
/// be sent) and the record's fields.
fn campaign_stage(
    ctx: &mut Ctx<'_>,
    b: &mut Builder,
    c: &raw::RawCampaign,
) -> Option<(usize, CampaignPlan)> {
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
    let fields = record_fields(ctx, b, "campaign", &list);
    let stage = b.end(
        start,
        when(ctx, "campaign", &c.when),
        "campaign",
        "campaign".into(),
    );
    let id = id?;
    b.stages[stage].keys.push((id, "campaign id"));
    Some((stage, CampaignPlan { id, fields }))
}

/// `[campaign_update]`: the campaign id and the record identifier (without
/// either a row's edit cannot be sent), the record's fields and its
/// user-named `record_fields`.
fn campaign_update_stage(
    ctx: &mut Ctx<'_>,
    b: &mut Builder,
    u: &raw::RawCampaignUpdate,
) -> Option<(usize, UpdatePlan)> {
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
    let fields = record_fields(ctx, b, "campaign_update", &list);
    let record_fields = ordered(
        ctx,
        b,
        "campaign_update.record_fields",
        u.record_fields.as_ref(),
    );
    let stage = b.end(
        start,
        when(ctx, "campaign_update", &u.when),
        "campaign_update",
        "campaign_update".into(),
    );
    let (id, identifier) = (id?, identifier?);
    b.stages[stage]
        .keys
        .extend([(id, "campaign id"), (identifier, "record identifier")]);
    let plan = UpdatePlan {
        id,
        identifier,
        fields,
        record_fields,
    };
    Some((stage, plan))
}

/// `[feed]`: the message and its time (both required of a row), author and
/// id, and `on_match`.
fn feed_stage(
    ctx: &mut Ctx<'_>,
    b: &mut Builder,
    f: &raw::RawFeed,
) -> (Option<(usize, FeedPlan)>, FeedOnMatch) {
    let start = b.begin();
    let required = |ctx: &mut Ctx<'_>, b: &mut Builder, key: &str, spec: &raw::Spec, kind: Kind| {
        ctx.spec(key, spec, kind, false).map(|mut s| {
            s.set_required();
            b.slot(s)
        })
    };
    let message = required(ctx, b, "feed.message", &f.message, Kind::Text);
    let time = required(ctx, b, "feed.time", &f.time, Kind::FeedTime);
    let author = f
        .author
        .as_ref()
        .and_then(|a| ctx.spec("feed.author", a, Kind::Text, false))
        .map(|s| b.slot(s));
    let id =
        f.id.as_ref()
            .and_then(|a| ctx.spec("feed.id", a, Kind::Text, false))
            .map(|s| b.slot(s));
    let on_match = feed_on_match(ctx, f.on_match.as_ref());
    let stage = b.end(start, when(ctx, "feed", &f.when), "feed", "feed".into());
    let plan = match (message, time) {
        (Some(message), Some(time)) => Some((
            stage,
            FeedPlan {
                message,
                time,
                author,
                id,
            },
        )),
        _ => None,
    };
    (plan, on_match)
}

/// `[feed] on_match`: `skip` (the default) or `send`.
fn feed_on_match(ctx: &mut Ctx<'_>, v: Option<&Spanned<String>>) -> FeedOnMatch {
    let Some(v) = v else {
        return FeedOnMatch::Skip;
    };
    match v.get_ref().as_str() {
        "skip" => FeedOnMatch::Skip,
        "send" => FeedOnMatch::Send,
        other => {
            ctx.issue(
                "feed.on_match",
                v.span(),
                format!("\"{other}\" is not one of \"skip\" or \"send\""),
            );
            FeedOnMatch::Skip
        }
    }
}

/// The whole mapping: stages that need a customer id have a way to get it.
fn check_customer_id_source(ctx: &mut Ctx<'_>, raw: &RawMapping) {
    let needs_customer =
        !raw.field_group.is_empty() || raw.campaign.is_some() || raw.feed.is_some();
    if needs_customer && raw.customer.is_none() && raw.source.customer_id.is_none() {
        ctx.issues.push(Issue {
            key: "customer".into(),
            line: 1,
            message: "[field_group], [campaign] and [feed] need a customer id: add a [customer] stage to create customers, or [source] customer_id naming a column of existing ids".into(),
        });
    }
}

/// The whole mapping: it has at least one stage.
fn check_some_stage(ctx: &mut Ctx<'_>, raw: &RawMapping) {
    if raw.customer.is_none()
        && raw.field_group.is_empty()
        && raw.campaign.is_none()
        && raw.campaign_update.is_none()
        && raw.feed.is_none()
    {
        ctx.issues.push(Issue { key: "(mapping)".into(), line: 1, message: "the mapping has no stage: add [customer], [[field_group]], [campaign], [campaign_update] or [feed]".into() });
    }
}

/// Compiles `[customer] match` and its companions; `None` without `match`.
fn upsert(ctx: &mut Ctx<'_>, c: &raw::RawCustomer) -> Option<Upsert> {
    let on_match = choice(ctx, "customer.on_match", &c.on_match, ["update", "skip"]);
    let on_missing = choice(
        ctx,
        "customer.on_missing",
        &c.on_missing,
        ["create", "skip"],
    );
    let Some(raw) = &c.match_keys else {
        companions_need_match(ctx, c);
        return None;
    };
    let names = match_key_names(ctx, raw)?;
    let keys = match_keys(ctx, c, raw.span(), names);
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
        policies: Policies::default(),
    })
}

/// One of two words (`on_match`, `on_missing`): `Some(true)` for the first,
/// `Some(false)` for the second, `None` when absent or neither.
fn choice(
    ctx: &mut Ctx<'_>,
    key: &str,
    v: &Option<Spanned<String>>,
    options: [&str; 2],
) -> Option<bool> {
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
}

/// `on_match` and `on_missing` without `match` have nothing to act on.
fn companions_need_match(ctx: &mut Ctx<'_>, c: &raw::RawCustomer) {
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
}

/// `match` as written: one key name, or a non-empty list of them.
fn match_key_names(ctx: &mut Ctx<'_>, raw: &Spanned<toml::Value>) -> Option<Vec<String>> {
    let names = match raw.get_ref() {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| i.as_str().map(str::to_string))
            .collect(),
        _ => None,
    };
    if names.is_none() {
        ctx.issue(
            "customer.match",
            raw.span(),
            "match is a key name or a list of them, such as [\"identifier\", \"email\"]".into(),
        );
    }
    names
}

/// The match keys named, each a known key that the mapping fills, once.
fn match_keys(
    ctx: &mut Ctx<'_>,
    c: &raw::RawCustomer,
    span: Range<usize>,
    names: Vec<String>,
) -> Vec<SearchKey> {
    let mut keys = Vec::new();
    for name in names {
        let Some(key) = SearchKey::parse(name.trim()) else {
            ctx.issue("customer.match", span.clone(), format!("\"{name}\" is not a match key (expected identifier, email, phone_number, nip or custom_fields.<Name>)"));
            continue;
        };
        if !fills(c, &key) {
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
    keys
}

/// Whether `[customer]` maps the field a match key searches by.
fn fills(c: &raw::RawCustomer, key: &SearchKey) -> bool {
    match key {
        SearchKey::Identifier => c.identifier.is_some(),
        SearchKey::Email => c.email.is_some(),
        SearchKey::PhoneNumber => c.phone_number.is_some(),
        SearchKey::Nip => c.nip.is_some(),
        SearchKey::CustomField(n) => c
            .custom_fields
            .as_ref()
            .is_some_and(|f| f.0.iter().any(|(k, _)| k.get_ref() == n)),
    }
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

/// A table of user-named fields (custom fields, record fields), compiled
/// into slots in file order.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(text: &str) -> Loaded {
        super::super::parse(Path::new("m.toml"), text.to_string()).unwrap()
    }

    const CUSTOMER: &str =
        "[customer]\nmatch = \"identifier\"\nidentifier = \"Id\"\nsurname = \"Surname\"\n";

    #[test]
    fn full_exports_are_said_by_on_gone_or_by_source_full_export() {
        assert!(!loaded(CUSTOMER).full_exports());
        assert!(!loaded(&format!("{CUSTOMER}on_gone = \"keep\"\n")).full_exports());
        assert!(loaded(&format!("{CUSTOMER}on_gone = \"delete\"\n")).full_exports());
        assert!(loaded(&format!("{CUSTOMER}on_gone = \"report\"\n")).full_exports());
        assert!(loaded(&format!(
            "{CUSTOMER}on_gone = {{ custom_field = \"Status\", value = \"x\" }}\n"
        ))
        .full_exports());
        assert!(loaded(&format!("[source]\nfull_export = true\n{CUSTOMER}")).full_exports());
        assert!(!loaded(&format!("[source]\nfull_export = false\n{CUSTOMER}")).full_exports());
        // A policy that does not parse is reported by the compile, not here.
        assert!(!loaded(&format!("{CUSTOMER}on_gone = \"erase\"\n")).full_exports());
    }

    #[test]
    fn full_export_false_beside_an_acting_on_gone_is_an_error_naming_the_key() {
        let header = ["Id".to_string(), "Surname".to_string()];
        let bad = loaded(&format!(
            "[source]\nfull_export = false\n{CUSTOMER}on_gone = \"delete\"\n"
        ));
        let e = compile(&bad, &header).unwrap_err().to_string();
        assert!(e.contains("source.full_export"), "{e}");
        let fine = loaded(&format!(
            "[source]\nfull_export = true\n{CUSTOMER}on_gone = \"delete\"\n"
        ));
        assert!(compile(&fine, &header).is_ok());
    }
}
