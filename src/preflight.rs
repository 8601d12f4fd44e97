//! Preflight: what `check` cannot know offline, the system tells in a
//! handful of GET requests before anything is written. `check --online` and
//! the start of every `run` and `retry` (but `--no-preflight`) read what the
//! mapping refers to — field groups and their fields, campaigns with their
//! statuses and agents, the system's agents — and then:
//!
//! - what cannot work for any row is refused before anything is sent (exit
//!   2), naming the TOML key, the value and what the system has: a field
//!   group or field id that does not exist, a campaign id that does not
//!   exist, a constant status, dictionary status, agent or account manager
//!   the campaign or the system does not have. With the campaign id taken
//!   from a column, "the campaign" is every campaign the file's rows name:
//!   a column that names no existing campaign, or a constant that none of
//!   the existing ones has, is refused too (every row would be invalid);
//! - what cannot work for one row makes that row `invalid` at that stage
//!   (its other stages go on): a status the row's campaign does not have, an
//!   `agent_login` that is not an agent of the campaign, an
//!   `account_manager` that is not an agent, a `MY_RECORD` status without
//!   `agent_login` and `next_call_date`, a `CALL_NO_SOONER_THAN` status
//!   without `next_call_date`.

use std::collections::{BTreeMap, BTreeSet};

use crate::api::system::{
    Agent, FieldGroupDef, ListAgents, ListCampaignAgents, ListFieldGroups, ListOutbounds,
    ListStatuses, Outbound, Status,
};
use crate::api::{ApiClient, CallError};
use crate::ledger::Stage;
use crate::mapping::raw::{RawFieldGroup, RawMapping, Spec};
use crate::mapping::{Issue, Loaded, MappingError, RowPayloads};
use crate::source::{shorten, FieldError};

/// The campaigns each stage's rows name: its constant id, or the values its
/// column holds in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub campaign: BTreeSet<String>,
    pub campaign_update: BTreeSet<String>,
    /// Whether the sets hold every campaign the rows name. A file naming
    /// more than a few hundred is not read to its end, and then a constant
    /// that no campaign read has may still fit a campaign not read.
    pub complete: bool,
}

impl Default for Named {
    fn default() -> Named {
        Named {
            campaign: BTreeSet::new(),
            campaign_update: BTreeSet::new(),
            complete: true,
        }
    }
}

impl Named {
    /// Every campaign named, by either stage.
    pub fn all(&self) -> BTreeSet<String> {
        self.campaign
            .union(&self.campaign_update)
            .cloned()
            .collect()
    }

    /// The campaigns `stage` (`campaign` or `campaign_update`) names.
    fn of(&self, stage: &str) -> &BTreeSet<String> {
        if stage == "campaign" {
            &self.campaign
        } else {
            &self.campaign_update
        }
    }
}

/// What the mapping refers to, and so what preflight reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    pub field_groups: bool,
    pub campaigns: bool,
    /// Campaigns whose statuses and agents are read.
    pub campaign_ids: BTreeSet<String>,
    pub agents: bool,
    /// Which stage names which campaigns, for refusing a constant that none
    /// of them has.
    pub named: Named,
}

impl Needs {
    /// What `raw` refers to; `named` are the campaigns the rows use (a
    /// constant id, or the values a column holds).
    pub fn of(raw: &RawMapping, named: Named) -> Needs {
        Needs {
            field_groups: !raw.field_group.is_empty(),
            campaigns: raw.campaign.is_some() || raw.campaign_update.is_some(),
            campaign_ids: named.all(),
            agents: raw
                .customer
                .as_ref()
                .is_some_and(|c| c.get_ref().account_manager.is_some()),
            named,
        }
    }

    /// Whether anything is to be read at all.
    pub fn any(&self) -> bool {
        self.field_groups || self.campaigns || self.agents
    }
}

/// One campaign's statuses and agents.
#[derive(Debug, Clone, Default)]
pub struct CampaignFacts {
    pub statuses: Vec<Status>,
    pub agents: Vec<Agent>,
}

/// What the system has, as far as the mapping needs to know.
#[derive(Debug, Clone, Default)]
pub struct System {
    pub field_groups: Option<Vec<FieldGroupDef>>,
    pub outbounds: Option<Vec<Outbound>>,
    pub campaigns: BTreeMap<String, CampaignFacts>,
    pub agents: Option<Vec<Agent>>,
    /// The campaigns the rows name, by stage (as [`Needs`] said).
    pub named: Named,
    /// Requests it took.
    pub requests: u32,
}

impl System {
    /// Reads what `needs` names.
    pub async fn read(client: &ApiClient, needs: &Needs) -> Result<System, CallError> {
        let mut system = System {
            named: needs.named.clone(),
            ..System::default()
        };
        if needs.field_groups {
            let call = client
                .all_pages(|limit, offset| ListFieldGroups { limit, offset })
                .await;
            system.requests += call.attempts;
            system.field_groups = Some(call.result?);
        }
        if needs.campaigns {
            let call = client
                .all_pages(|limit, offset| ListOutbounds { limit, offset })
                .await;
            system.requests += call.attempts;
            let outbounds = call.result?;
            for id in &needs.campaign_ids {
                if !outbounds.iter().any(|o| &o.id == id) {
                    continue;
                }
                let statuses = client.send(&ListStatuses { campaign_id: id }).await;
                system.requests += statuses.attempts;
                let agents = client.send(&ListCampaignAgents { campaign_id: id }).await;
                system.requests += agents.attempts;
                system.campaigns.insert(
                    id.clone(),
                    CampaignFacts {
                        statuses: statuses.result?,
                        agents: agents.result?,
                    },
                );
            }
            system.outbounds = Some(outbounds);
        }
        if needs.agents {
            let call = client
                .all_pages(|limit, offset| ListAgents { limit, offset })
                .await;
            system.requests += call.attempts;
            system.agents = Some(call.result?);
        }
        Ok(system)
    }

    fn outbound_list(&self) -> String {
        list(self.outbounds.iter().flatten(), |o| {
            format!("{} {}", o.id, o.name)
        })
    }

    /// A campaign's facts (`None` when they were not read), or why there
    /// are none: the campaign does not exist.
    fn campaign(&self, id: &str) -> Result<Option<&CampaignFacts>, String> {
        let Some(outbounds) = &self.outbounds else {
            return Ok(None);
        };
        if !outbounds.iter().any(|o| o.id == id) {
            return Err(format!(
                "campaign {id} does not exist; the system has {}",
                self.outbound_list()
            ));
        }
        Ok(self.campaigns.get(id))
    }
}

/// `a, b, c, … (N in all)`: at most twelve.
fn list<T>(items: impl Iterator<Item = T>, show: impl Fn(T) -> String) -> String {
    let all: Vec<String> = items.map(show).collect();
    if all.is_empty() {
        return "none".into();
    }
    if all.len() <= 12 {
        all.join(", ")
    } else {
        format!("{}, … ({} in all)", all[..12].join(", "), all.len())
    }
}

fn statuses(facts: &CampaignFacts) -> String {
    list(facts.statuses.iter(), |s| {
        format!("{} {} ({})", s.status_id, s.name, s.system_status)
    })
}

/// Why a status cannot be used in campaign `id`, if it cannot. With
/// `new_record`, the system status's needs count (`MY_RECORD`: an agent and
/// a next call date; `CALL_NO_SOONER_THAN`: a next call date); an edit
/// keeps what the record has.
fn status_problem(
    id: &str,
    facts: &CampaignFacts,
    status_id: i64,
    has_agent: bool,
    has_date: bool,
    new_record: bool,
) -> Option<String> {
    let Some(status) = facts.statuses.iter().find(|x| x.status_id == status_id) else {
        return Some(format!(
            "status_id {status_id} is not a status of campaign {id}; it has {}",
            statuses(facts)
        ));
    };
    match status.system_status.as_str() {
        "MY_RECORD" if new_record && !(has_agent && has_date) => Some(format!(
            "status {status_id} ({}) of campaign {id} is MY_RECORD, which needs agent_login and next_call_date",
            status.name
        )),
        "CALL_NO_SOONER_THAN" if new_record && !has_date => Some(format!(
            "status {status_id} ({}) of campaign {id} is CALL_NO_SOONER_THAN, which needs next_call_date",
            status.name
        )),
        _ => None,
    }
}

fn dictionary_problem(id: &str, facts: &CampaignFacts, d: i64) -> Option<String> {
    if facts
        .statuses
        .iter()
        .any(|x| x.dictionary_status_id == Some(d))
    {
        return None;
    }
    let have: BTreeSet<i64> = facts
        .statuses
        .iter()
        .filter_map(|x| x.dictionary_status_id)
        .collect();
    Some(format!(
        "dictionary_status_id {d} is not a dictionary status of campaign {id}; it has {}",
        list(have.iter(), i64::to_string)
    ))
}

fn agent_problem(id: &str, facts: &CampaignFacts, login: &str) -> Option<String> {
    let working = |x: &&Agent| x.active && x.active_in_outbound;
    if facts
        .agents
        .iter()
        .filter(working)
        .any(|x| x.login == login)
    {
        return None;
    }
    Some(format!(
        "agent {login} is not an agent of campaign {id}; it has {}",
        list(facts.agents.iter().filter(working), |x| x.login.clone())
    ))
}

impl System {
    /// Why `login` cannot be a customer's account manager (not an active
    /// agent of the system), when the agents were read.
    fn account_manager_problem(&self, login: &str) -> Option<String> {
        let agents = self.agents.as_ref()?;
        if agents.iter().any(|x| x.login == login && x.active) {
            return None;
        }
        Some(format!(
            "account_manager {login} is not an agent of this system; it has {}",
            list(agents.iter().filter(|x| x.active), |x| x.login.clone())
        ))
    }

    /// Makes a row's stages that cannot work `invalid` (recorded at their
    /// stage, not sent): the problems found.
    pub fn check_row(&self, p: &mut RowPayloads) {
        let problem = |value: &str, reason: String| FieldError {
            column: None,
            value: Some(shorten(value)),
            reason,
        };
        if let Some(a) = p.customer.as_ref().and_then(|c| c.account_manager.as_ref()) {
            let login = a.text();
            if let Some(reason) = self.account_manager_problem(&login) {
                let e = problem(&login, reason);
                p.customer = None;
                p.invalid_stages.push((Stage::Customer, e));
            }
        }
        if let Some(c) = &p.campaign {
            let r = &c.record;
            if let Some(e) = self.record_problem(
                &c.campaign_id,
                r.status_id,
                r.dictionary_status_id,
                r.agent_login.as_deref(),
                r.next_call_date.as_deref(),
                true,
            ) {
                p.campaign = None;
                p.invalid_stages.push((Stage::Campaign, e));
            }
        }
        if let Some(u) = &p.campaign_update {
            let b = &u.body;
            if let Some(e) = self.record_problem(
                &u.campaign_id,
                b.status_id,
                b.dictionary_status_id,
                b.agent_login.as_deref(),
                b.next_call_date.as_deref(),
                false,
            ) {
                p.campaign_update = None;
                p.invalid_stages.push((Stage::CampaignUpdate, e));
            }
        }
    }

    /// Why a record with these values cannot go into campaign `id` (or
    /// why there is no such campaign), if it cannot. The reason names the
    /// value at fault (a status, an agent).
    fn record_problem(
        &self,
        id: &str,
        status_id: Option<i64>,
        dictionary_status_id: Option<i64>,
        agent_login: Option<&str>,
        next_call_date: Option<&str>,
        new_record: bool,
    ) -> Option<FieldError> {
        let reason = match self.campaign(id) {
            Ok(None) => None,
            Err(e) => Some(e),
            Ok(Some(facts)) => status_id
                .and_then(|s| {
                    status_problem(
                        id,
                        facts,
                        s,
                        agent_login.is_some(),
                        next_call_date.is_some(),
                        new_record,
                    )
                })
                .or_else(|| dictionary_status_id.and_then(|d| dictionary_problem(id, facts, d)))
                .or_else(|| agent_login.and_then(|a| agent_problem(id, facts, a))),
        }?;
        Some(FieldError {
            column: None,
            value: None,
            reason,
        })
    }
}

/// The campaign ids the mapping gives as constants, by stage, and whether
/// another comes from a column (then the file says which).
pub fn constant_campaigns(raw: &RawMapping) -> (Named, bool) {
    let mut named = Named::default();
    let mut from_column = false;
    for (id, ids) in [
        (
            raw.campaign.as_ref().map(|c| &c.get_ref().id),
            &mut named.campaign,
        ),
        (
            raw.campaign_update.as_ref().map(|u| &u.get_ref().id),
            &mut named.campaign_update,
        ),
    ] {
        let Some(id) = id else { continue };
        match constant(id) {
            Some(c) => {
                ids.insert(c);
            }
            None => from_column = true,
        }
    }
    (named, from_column)
}

/// The one problem every campaign in `existing` has with a constant
/// (`what`: `status_id 99`), if each has one: then no row can use it.
/// `None` as soon as one campaign takes it.
fn fits_none(
    what: &str,
    existing: &[(&str, &CampaignFacts)],
    problem: impl Fn(&str, &CampaignFacts) -> Option<String>,
) -> Option<String> {
    let problems = existing
        .iter()
        .map(|(id, facts)| problem(id, facts))
        .collect::<Option<Vec<String>>>()?;
    if problems.len() <= 1 {
        return problems.into_iter().next();
    }
    // Each problem says what its campaign has; three are enough to see why.
    let shown = problems.iter().take(3).cloned().collect::<Vec<_>>();
    let more = if problems.len() > shown.len() {
        format!(" | … ({} campaigns in all)", problems.len())
    } else {
        String::new()
    };
    Some(format!(
        "{what} fits none of the {} campaigns the rows name ({}): {}{more}",
        problems.len(),
        list(existing.iter(), |(id, _)| id.to_string()),
        shown.join(" | ")
    ))
}

/// A constant in the mapping (`{ value = ... }`), as text.
fn constant(spec: &Spec) -> Option<String> {
    let toml::Value::Table(t) = spec.get_ref() else {
        return None;
    };
    match t.get("value")? {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Refuses what cannot work for any row: every problem, by TOML key.
pub fn check_mapping(loaded: &Loaded, system: &System) -> Result<(), MappingError> {
    let raw = &loaded.raw;
    let mut issues = Issues {
        loaded,
        found: Vec::new(),
    };
    check_field_groups(raw, system, &mut issues);
    for stage in CampaignStage::all(raw) {
        check_campaign_stage(&stage, system, &mut issues);
    }
    check_account_manager(raw, system, &mut issues);
    issues.into_result()
}

/// The problems found in a mapping so far, each at its TOML key and line.
struct Issues<'a> {
    loaded: &'a Loaded,
    found: Vec<Issue>,
}

impl Issues<'_> {
    fn add(&mut self, key: String, span: std::ops::Range<usize>, message: String) {
        self.found.push(Issue {
            key,
            line: self.loaded.line_of(&span),
            message,
        });
    }

    /// The mapping refused with every problem, when there is one.
    fn into_result(self) -> Result<(), MappingError> {
        if self.found.is_empty() {
            Ok(())
        } else {
            Err(MappingError::Invalid {
                path: self.loaded.path.clone(),
                issues: self.found,
            })
        }
    }
}

/// Each `[[field_group]]`'s group and fields must exist, when the field
/// groups were read.
fn check_field_groups(raw: &RawMapping, system: &System, issues: &mut Issues) {
    let Some(groups) = &system.field_groups else {
        return;
    };
    for (n, g) in raw.field_group.iter().enumerate() {
        check_field_group(n, g.get_ref(), groups, issues);
    }
}

/// The `n`th field group's group id must be one of `groups`, and each
/// field it maps a field of that group.
fn check_field_group(n: usize, g: &RawFieldGroup, groups: &[FieldGroupDef], issues: &mut Issues) {
    let id = *g.group_id.get_ref();
    let Some(def) = groups.iter().find(|d| d.group_id == id) else {
        issues.add(
            format!("field_group[{n}].group_id"),
            g.group_id.span(),
            format!(
                "field group {id} does not exist; the system has {}",
                list(groups.iter(), |d| format!("{} {}", d.group_id, d.name))
            ),
        );
        return;
    };
    for (field, _) in &g.values.0 {
        let Ok(fid) = field.get_ref().trim().parse::<i64>() else {
            continue;
        };
        if !def.fields.iter().any(|(f, _)| *f == fid) {
            issues.add(
                format!("field_group[{n}].values.{fid}"),
                field.span(),
                format!(
                    "field {fid} is not a field of group {id} ({}); it has {}",
                    def.name,
                    list(def.fields.iter(), |(f, name)| format!("{f} {name}"))
                ),
            );
        }
    }
}

/// What `[campaign]` or `[campaign_update]` maps, as far as preflight
/// checks it.
struct CampaignStage<'a> {
    /// The TOML table: `campaign` or `campaign_update`.
    name: &'static str,
    id: &'a Spec,
    status: Option<&'a Spec>,
    dictionary: Option<&'a Spec>,
    agent: Option<&'a Spec>,
    /// Whether `next_call_date` is mapped.
    has_date: bool,
    /// Whether the stage adds a record (`campaign`) rather than edits one.
    new_record: bool,
}

impl<'a> CampaignStage<'a> {
    /// The campaign stages the mapping has, in pipeline order.
    fn all(raw: &'a RawMapping) -> impl Iterator<Item = CampaignStage<'a>> {
        let campaign = raw.campaign.as_ref().map(|c| {
            let c = c.get_ref();
            CampaignStage {
                name: "campaign",
                id: &c.id,
                status: c.status_id.as_ref(),
                dictionary: c.dictionary_status_id.as_ref(),
                agent: c.agent_login.as_ref(),
                has_date: c.next_call_date.is_some(),
                new_record: true,
            }
        });
        let campaign_update = raw.campaign_update.as_ref().map(|u| {
            let u = u.get_ref();
            CampaignStage {
                name: "campaign_update",
                id: &u.id,
                status: u.status_id.as_ref(),
                dictionary: u.dictionary_status_id.as_ref(),
                agent: u.agent_login.as_ref(),
                has_date: u.next_call_date.is_some(),
                new_record: false,
            }
        });
        [campaign, campaign_update].into_iter().flatten()
    }
}

/// A campaign stage must name a campaign that exists, and each constant it
/// gives (status, dictionary status, agent) must fit one of those it names.
fn check_campaign_stage(stage: &CampaignStage, system: &System, issues: &mut Issues) {
    let constant_id = constant(stage.id);
    let Some(ids) = campaigns_named(stage, constant_id.as_deref(), system) else {
        return;
    };
    let Some(found) = look_up(&ids, system) else {
        return;
    };
    if found.existing.is_empty() {
        // Every row would be invalid at this stage.
        refuse_missing(stage, constant_id.is_some(), &found.missing, system, issues);
        return;
    }
    check_constants(stage, &found.existing, issues);
}

/// The campaigns the stage's rows go to: the constant, or what the column
/// holds (only when every value is known: a campaign not read might take
/// what the others do not).
fn campaigns_named(
    stage: &CampaignStage,
    constant_id: Option<&str>,
    system: &System,
) -> Option<BTreeSet<String>> {
    match constant_id {
        Some(c) => Some(BTreeSet::from([c.to_string()])),
        None if system.named.complete => Some(system.named.of(stage.name).clone()),
        None => None,
    }
}

/// The campaigns a stage names, split by whether they exist.
struct LookedUp<'s> {
    /// Those that exist, with their facts.
    existing: Vec<(&'s str, &'s CampaignFacts)>,
    /// Those that do not, with why.
    missing: Vec<(&'s str, String)>,
}

/// The campaigns of `ids`, looked up; `None` when one's facts were not
/// read: then the system cannot say.
fn look_up<'s>(ids: &'s BTreeSet<String>, system: &'s System) -> Option<LookedUp<'s>> {
    let mut found = LookedUp {
        existing: Vec::new(),
        missing: Vec::new(),
    };
    for campaign_id in ids {
        match system.campaign(campaign_id) {
            Ok(Some(f)) => found.existing.push((campaign_id.as_str(), f)),
            Ok(None) => return None,
            Err(e) => found.missing.push((campaign_id.as_str(), e)),
        }
    }
    Some(found)
}

/// Refuses the stage's `id` when none of the campaigns it names exists: a
/// constant by the system's own reason, a column by the campaigns it names.
fn refuse_missing(
    stage: &CampaignStage,
    id_is_constant: bool,
    missing: &[(&str, String)],
    system: &System,
    issues: &mut Issues,
) {
    let key = format!("{}.id", stage.name);
    match (id_is_constant, missing) {
        (_, []) => {}
        (true, [(_, e), ..]) => issues.add(key, stage.id.span(), e.clone()),
        (false, _) => issues.add(
            key,
            stage.id.span(),
            format!(
                "the rows name campaign(s) {}, and none exists; the system has {}",
                list(missing.iter(), |(c, _)| c.to_string()),
                system.outbound_list()
            ),
        ),
    }
}

/// Refuses each constant the stage gives (status, dictionary status,
/// agent) that fits none of the `existing` campaigns it names.
fn check_constants(
    stage: &CampaignStage,
    existing: &[(&str, &CampaignFacts)],
    issues: &mut Issues,
) {
    let int = |spec: &Spec| constant(spec).and_then(|v| v.parse::<i64>().ok());
    if let Some(spec) = stage.status {
        if let Some(p) = int(spec).and_then(|s| {
            fits_none(&format!("status_id {s}"), existing, |cid, facts| {
                status_problem(
                    cid,
                    facts,
                    s,
                    stage.agent.is_some(),
                    stage.has_date,
                    stage.new_record,
                )
            })
        }) {
            issues.add(format!("{}.status_id", stage.name), spec.span(), p);
        }
    }
    if let Some(spec) = stage.dictionary {
        if let Some(p) = int(spec).and_then(|d| {
            fits_none(
                &format!("dictionary_status_id {d}"),
                existing,
                |cid, facts| dictionary_problem(cid, facts, d),
            )
        }) {
            issues.add(
                format!("{}.dictionary_status_id", stage.name),
                spec.span(),
                p,
            );
        }
    }
    if let Some(spec) = stage.agent {
        if let Some(p) = constant(spec).and_then(|a| {
            fits_none(&format!("agent_login {a}"), existing, |cid, facts| {
                agent_problem(cid, facts, &a)
            })
        }) {
            issues.add(format!("{}.agent_login", stage.name), spec.span(), p);
        }
    }
}

/// A constant `customer.account_manager` must be an active agent of the
/// system, when the agents were read.
fn check_account_manager(raw: &RawMapping, system: &System, issues: &mut Issues) {
    if let Some(spec) = raw
        .customer
        .as_ref()
        .and_then(|c| c.get_ref().account_manager.as_ref())
    {
        if let Some(reason) =
            constant(spec).and_then(|login| system.account_manager_problem(&login))
        {
            issues.add("customer.account_manager".into(), spec.span(), reason);
        }
    }
}
