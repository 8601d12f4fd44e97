//! What a row still needs, given the outcomes an earlier run recorded for
//! it: the one set of rules for `retry` (which reads them from the ledger)
//! and for importing a failed-rows CSV (which reads them from its
//! `_unknown` column). The table of verdicts is in [`crate::resume`]'s
//! header.

use crate::api::keys::SearchKey;
use crate::ledger::{Stage, Status};
use crate::mapping::{RowPayloads, Unknowns};
use crate::outcomes::StageOutcome;

/// A stage's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Done,
    Send,
    LookUpFirst,
    Leave(String),
}

/// How a retry treats rows.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// The mapping or the source changed since the ledger's run.
    pub changed: bool,
    pub include_unknown: bool,
}

/// How a customer-stage failure that found several customers for one key
/// begins (`identity::Found::ambiguity`): merging them in Thulium is the
/// fix, so it is looked up again rather than left.
pub(crate) const AMBIGUOUS: &str = "ambiguous:";

/// The stages preflight can find invalid for one row.
pub(crate) const CHECKED_STAGES: [Stage; 3] =
    [Stage::Customer, Stage::Campaign, Stage::CampaignUpdate];

pub(crate) const LEFT_INVALID: &str =
    "invalid, and neither the mapping nor the source changed: fix them and pass --mapping or --source";
pub(crate) const LEFT_REFUSED: &str = "refused, and neither the mapping nor the source changed: it would fail the same way (fix the data and pass --source, or the mapping and pass --mapping)";

pub(crate) fn verdict(last: Option<StageOutcome>, stage: Stage, rules: Rules) -> Verdict {
    let Some(last) = last else {
        return Verdict::Send;
    };
    match last.status {
        Status::Ok => Verdict::Done,
        Status::Skipped => Verdict::Send,
        Status::Failed if last.retryable != Some(false) => Verdict::Send,
        // Invalid at a sending stage: what the system had (preflight) said
        // no, and the system may have changed. The row was mapped again and
        // checked against what it has now: what is still invalid is in
        // `invalid_stages` (and recorded again), what passes is sent.
        Status::Invalid if stage != Stage::Mapping => Verdict::Send,
        Status::Failed | Status::Invalid => {
            if rules.changed {
                Verdict::Send
            } else {
                Verdict::Leave(LEFT_REFUSED.into())
            }
        }
        // Sending these twice does no harm.
        Status::Unknown if matches!(stage, Stage::Campaign | Stage::CampaignUpdate) => {
            Verdict::Send
        }
        // An item can be found among the customer's items.
        Status::Unknown if stage == Stage::FieldGroup => Verdict::LookUpFirst,
        Status::Unknown if rules.include_unknown => Verdict::Send,
        Status::Unknown if stage == Stage::Customer => Verdict::Leave(
            "customer outcome unknown, and the row has no identifier to look it up by: not resent without --include-unknown (it may be created twice)".into(),
        ),
        Status::Unknown => Verdict::Leave(format!(
            "{} outcome unknown: it may have been applied, and the API cannot look it up; not resent without --include-unknown",
            stage.name()
        )),
    }
}

/// What a row still needs, once its earlier outcomes are known.
#[derive(Debug, Default)]
pub struct Kept {
    /// Look the customer up first (its creation had an unknown outcome).
    pub look_up: bool,
    /// The customer recorded for the row, to be confirmed by Thulium
    /// before the row's later stages write to it (the customer payload is
    /// kept for that, and for creating it again if it is gone).
    pub confirm: Option<i64>,
    /// Stages left as they were (stage, field group, why).
    pub left: Vec<(Stage, usize, String)>,
}

/// Keeps only what a row still needs, given each stage's earlier outcome
/// (`previous(stage, group)`) and the customer's id if one is known: the
/// one set of rules for `retry` and for importing a failed-rows CSV. `keys`
/// are what a customer can be looked up by (the mapping's `match`, or the
/// identifier).
pub fn keep_what_is_not_done(
    payloads: &mut RowPayloads,
    previous: &dyn Fn(Stage, usize) -> Option<StageOutcome>,
    known_customer: Option<i64>,
    rules: Rules,
    keys: &[SearchKey],
) -> Kept {
    let mut kept = Kept::default();
    let mut leave = |stage: Stage, group: usize, v: &Verdict| {
        if let Verdict::Leave(reason) = v {
            kept.left.push((stage, group, reason.clone()));
        }
    };
    // The customer.
    let mut customer_blocked = false;
    let mut look_up = false;
    // A customer done before: confirmed by Thulium before it is written to.
    let mut done_customer = None;
    if payloads.customer.is_none()
        && previous(Stage::Customer, 0).is_some_and(|l| l.status == Status::Ok)
    {
        // Created before, and not to be sent now (the system no longer
        // takes it as it is): later stages still have its id.
        payloads.existing_customer_id = known_customer.or(payloads.existing_customer_id);
    }
    if let Some(customer) = &payloads.customer {
        let last = previous(Stage::Customer, 0);
        let has_key = !crate::identity::RowKeys::of(customer, keys).is_empty();
        let unknown = last.is_some_and(|l| l.status == Status::Unknown);
        let v = match verdict(last, Stage::Customer, rules) {
            // Unknown, and a key to look it up by: find out first, even
            // with --include-unknown.
            Verdict::Send | Verdict::Leave(_) if unknown && has_key => Verdict::LookUpFirst,
            v => v,
        };
        match &v {
            Verdict::Done => {
                payloads.existing_customer_id = known_customer.or(payloads.existing_customer_id);
                done_customer = payloads.customer.take().zip(known_customer);
                payloads.customer = None;
            }
            Verdict::LookUpFirst => look_up = true,
            Verdict::Leave(_) => customer_blocked = true,
            Verdict::Send => {}
        }
        leave(Stage::Customer, 0, &v);
    }
    // Whether a stage is sent (and if so, looked up first).
    let mut needed = |stage: Stage, group: usize| -> Option<bool> {
        let v = verdict(previous(stage, group), stage, rules);
        leave(stage, group, &v);
        match v {
            Verdict::Send => Some(false),
            Verdict::LookUpFirst => Some(true),
            Verdict::Done | Verdict::Leave(_) => None,
        }
    };
    payloads.field_groups.retain_mut(|item| {
        if customer_blocked {
            return false;
        }
        match needed(Stage::FieldGroup, item.index) {
            Some(look_first) => {
                if look_first {
                    item.mode = crate::mapping::ItemMode::Reconcile;
                }
                true
            }
            None => false,
        }
    });
    if payloads.campaign.is_some() && (customer_blocked || needed(Stage::Campaign, 0).is_none()) {
        payloads.campaign = None;
    }
    if payloads.feed.is_some() && (customer_blocked || needed(Stage::Feed, 0).is_none()) {
        payloads.feed = None;
    }
    if payloads.campaign_update.is_some() && needed(Stage::CampaignUpdate, 0).is_none() {
        payloads.campaign_update = None;
    }
    payloads
        .invalid_stages
        .retain(|(stage, _)| needed(*stage, 0).is_some());
    if customer_blocked {
        payloads.customer = None;
    }
    // Later stages will write to the customer done before: Thulium confirms
    // it first.
    let writes =
        !payloads.field_groups.is_empty() || payloads.campaign.is_some() || payloads.feed.is_some();
    if let (Some((customer, id)), true) = (done_customer, writes) {
        payloads.customer = Some(customer);
        payloads.existing_customer_id = None;
        kept.confirm = Some(id);
    }
    kept.look_up = look_up;
    kept
}

/// What an earlier run left unknown, as a failed-rows CSV's `_unknown`
/// says (every other stage in the file is still to be sent).
pub fn failed_csv_previous(
    unknown: &Unknowns,
) -> impl Fn(Stage, usize) -> Option<StageOutcome> + '_ {
    let outcome = StageOutcome {
        status: Status::Unknown,
        retryable: None,
    };
    move |stage, group| {
        let is = match stage {
            Stage::Customer => unknown.customer,
            Stage::FieldGroup => unknown.field_groups.contains(&group),
            Stage::Feed => unknown.feed,
            _ => false,
        };
        is.then_some(outcome)
    }
}
