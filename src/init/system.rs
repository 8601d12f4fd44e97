//! What the system has, for `init --online`: read (the field groups with
//! their fields, the campaigns with their statuses, the agents) and listed
//! as comments after the mapping, with a commented `[[field_group]]`
//! table for each group whose fields are named as columns of the file.

use std::fmt::Write as _;

use super::names::same_name;
use super::profile::Profile;
use super::write::{comment_safe, custom_spec, one_line, Writer};
use crate::api::system::{Agent, FieldGroupDef, Outbound};
use crate::api::{ApiClient, CallError};
use crate::preflight::{Needs, System};

/// How many campaigns have their statuses read.
const CAMPAIGNS_READ: usize = 20;

/// What `init --online` lists: the field groups with their fields, the
/// campaigns with their statuses (the first 20), the agents.
pub async fn read_system(client: &ApiClient) -> Result<System, CallError> {
    let mut needs = Needs {
        field_groups: true,
        campaigns: true,
        agents: true,
        ..Default::default()
    };
    let mut system = System::read(client, &needs).await?;
    needs.campaign_ids = system
        .outbounds
        .iter()
        .flatten()
        .take(CAMPAIGNS_READ)
        .map(|o| o.id.clone())
        .collect();
    if !needs.campaign_ids.is_empty() {
        needs.field_groups = false;
        needs.agents = false;
        let more = System::read(client, &needs).await?;
        system.campaigns = more.campaigns;
        system.requests += more.requests;
    }
    Ok(system)
}

/// The system's field groups, campaigns and agents, as comments.
pub(super) fn list(out: &mut Writer, columns: &[Profile], system: &System) {
    out.line("");
    out.line("# ---- What the system has (read by init --online) ----");
    if let Some(groups) = &system.field_groups {
        field_groups(out, groups);
        for group in groups {
            field_group_table(out, columns, group);
        }
    }
    if let Some(outbounds) = &system.outbounds {
        campaigns(out, outbounds, system);
    }
    if let Some(agents) = &system.agents {
        agent_logins(out, agents);
    }
}

/// Each field group with its fields' ids and names.
fn field_groups(out: &mut Writer, groups: &[FieldGroupDef]) {
    out.line("#");
    out.line("# Field groups: a [[field_group]] table adds an item of the group per row,");
    out.line("# its values keyed by the group's field ids.");
    if groups.is_empty() {
        out.line("#   (none)");
    }
    for group in groups {
        out.line(&format!(
            "#   group {} \"{}\": {}",
            group.group_id,
            comment_safe(&group.name),
            group
                .fields
                .iter()
                .map(|(id, name)| format!("{id} \"{}\"", comment_safe(name)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
}

/// A commented `[[field_group]]` table for `group`, when some of its
/// fields are named as columns of the file.
fn field_group_table(out: &mut Writer, columns: &[Profile], group: &FieldGroupDef) {
    let found: Vec<(i64, &Profile)> = group
        .fields
        .iter()
        .filter_map(|(id, name)| {
            columns
                .iter()
                .find(|c| same_name(&c.name, name))
                .map(|c| (*id, c))
        })
        .collect();
    if found.is_empty() {
        return;
    }
    out.line("#");
    out.commented_code(
        "# [[field_group]]",
        &format!(
            "\"{}\": the fields named as columns of this file",
            comment_safe(&group.name)
        ),
    );
    out.line(&format!("# group_id = {}", group.group_id));
    out.line("# [field_group.values]");
    for (id, column) in found {
        let (spec, comment) = custom_spec(column);
        out.commented_code(&format!("# {id} = {spec}"), &comment);
    }
}

/// Each campaign with its statuses (those read).
fn campaigns(out: &mut Writer, outbounds: &[Outbound], system: &System) {
    out.line("#");
    out.line("# Campaigns: a [campaign] table adds a record per row (id, status_id,");
    out.line("# agent_login, next_call_date); see mappings/README.md.");
    if outbounds.is_empty() {
        out.line("#   (none)");
    }
    for o in outbounds {
        let mut line = format!("#   {} \"{}\"", o.id, comment_safe(&o.name));
        if let Some(facts) = system.campaigns.get(&o.id) {
            let statuses: Vec<String> = facts
                .statuses
                .iter()
                .map(|s| format!("{} \"{}\"", s.status_id, comment_safe(&s.name)))
                .collect();
            if !statuses.is_empty() {
                let _ = write!(line, "; statuses {}", statuses.join(", "));
            }
        }
        out.line(&line);
    }
}

/// The active agents' logins, eight a line.
fn agent_logins(out: &mut Writer, agents: &[Agent]) {
    out.line("#");
    out.line("# Agents (logins for account_manager and agent_login):");
    let logins: Vec<&str> = agents
        .iter()
        .filter(|a| a.active)
        .map(|a| a.login.as_str())
        .collect();
    for chunk in logins.chunks(8) {
        out.line(&format!("#   {}", one_line(&chunk.join(", "))));
    }
}
