//! What a system is configured with, read before an import (preflight):
//! `GET customer_field_groups`, `GET outbounds`, `GET
//! outbounds/:id/statuses`, `GET outbounds/:id/agents` and `GET agents`.
//! All idempotent; lists read as `{"count", "result"}` or a bare array, ids
//! as numbers or strings, `dictionary_status_id` possibly `null`.

use reqwest::Method;
use serde_json::Value;

use super::{encode, lenient_int, lenient_text, list, query, Answer, CallError, Endpoint, Paged};

/// A custom-field group and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldGroupDef {
    pub group_id: i64,
    pub name: String,
    /// (field id, name)
    pub fields: Vec<(i64, String)>,
}

/// A campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The five-character id (`00001`).
    pub id: String,
    pub name: String,
}

/// A status of a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub status_id: i64,
    pub dictionary_status_id: Option<i64>,
    pub system_status: String,
    pub name: String,
}

/// An agent (of the system, or of a campaign).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub login: String,
    /// `active` (false: a disabled account).
    pub active: bool,
    /// `active_in_outbound`, for a campaign's agents.
    pub active_in_outbound: bool,
}

/// A list's path with its page: `base?limit=&offset=`.
fn paged(base: &str, limit: u32, offset: u64) -> String {
    format!(
        "{base}?{}",
        query(&[("limit", limit.to_string()), ("offset", offset.to_string())])
    )
}

fn text(v: &Value, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| lenient_text(v.get(*k)))
}

fn flag(v: &Value, key: &str) -> bool {
    match v.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_i64() != Some(0),
        Some(Value::String(s)) => matches!(s.trim(), "1" | "true" | "yes"),
        // Not said: taken as active.
        _ => true,
    }
}

/// A campaign id as the API gives it: `"00001"`, or a number (`1`).
fn campaign_id(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => n.as_u64().map(|n| format!("{n:05}")),
        _ => None,
    }
}

/// `GET customer_field_groups?limit=&offset=`.
#[derive(Debug, Clone)]
pub struct ListFieldGroups {
    pub limit: u32,
    pub offset: u64,
}

impl Endpoint for ListFieldGroups {
    type Answer = Paged<FieldGroupDef>;
    const METHOD: Method = Method::GET;
    const IDEMPOTENT: bool = true;

    fn path(&self) -> String {
        paged("customer_field_groups", self.limit, self.offset)
    }

    fn parse(&self, answer: &Answer) -> Result<Self::Answer, CallError> {
        list(answer, &["group_id", "id"], |g| {
            let fields = match g.get("fields") {
                Some(Value::Array(fields)) => fields
                    .iter()
                    .filter_map(|f| {
                        Some((
                            lenient_int(f.get("field_id").or_else(|| f.get("id")))?,
                            text(f, &["name"]).unwrap_or_default(),
                        ))
                    })
                    .collect(),
                _ => Vec::new(),
            };
            Some(FieldGroupDef {
                group_id: lenient_int(g.get("group_id").or_else(|| g.get("id")))?,
                name: text(g, &["name"]).unwrap_or_default(),
                fields,
            })
        })
    }
}

/// `GET outbounds?limit=&offset=`.
#[derive(Debug, Clone)]
pub struct ListOutbounds {
    pub limit: u32,
    pub offset: u64,
}

impl Endpoint for ListOutbounds {
    type Answer = Paged<Outbound>;
    const METHOD: Method = Method::GET;
    const IDEMPOTENT: bool = true;

    fn path(&self) -> String {
        paged("outbounds", self.limit, self.offset)
    }

    fn parse(&self, answer: &Answer) -> Result<Self::Answer, CallError> {
        list(answer, &["outbound_id", "id", "campaign_id"], |o| {
            Some(Outbound {
                id: campaign_id(
                    o.get("outbound_id")
                        .or_else(|| o.get("id"))
                        .or_else(|| o.get("campaign_id")),
                )?,
                name: text(o, &["name"]).unwrap_or_default(),
            })
        })
    }
}

/// `GET outbounds/:id/statuses`.
#[derive(Debug, Clone)]
pub struct ListStatuses<'a> {
    pub campaign_id: &'a str,
}

impl Endpoint for ListStatuses<'_> {
    type Answer = Vec<Status>;
    const METHOD: Method = Method::GET;
    const IDEMPOTENT: bool = true;

    fn path(&self) -> String {
        format!("outbounds/{}/statuses", encode(self.campaign_id))
    }

    fn parse(&self, answer: &Answer) -> Result<Self::Answer, CallError> {
        list(answer, &["status_id", "id"], |s| {
            Some(Status {
                status_id: lenient_int(s.get("status_id").or_else(|| s.get("id")))?,
                dictionary_status_id: lenient_int(s.get("dictionary_status_id")),
                system_status: text(s, &["system_status"]).unwrap_or_default(),
                name: text(s, &["name"]).unwrap_or_default(),
            })
        })
        .map(|p| p.items)
    }
}

/// `GET outbounds/:id/agents`.
#[derive(Debug, Clone)]
pub struct ListCampaignAgents<'a> {
    pub campaign_id: &'a str,
}

/// What names an agent in a list.
const AGENT_IDS: &[&str] = &["login", "agent_login", "agent_id"];

fn agent(a: &Value) -> Option<Agent> {
    Some(Agent {
        login: text(a, &["login", "agent_login"])?,
        active: flag(a, "active"),
        active_in_outbound: flag(a, "active_in_outbound"),
    })
}

impl Endpoint for ListCampaignAgents<'_> {
    type Answer = Vec<Agent>;
    const METHOD: Method = Method::GET;
    const IDEMPOTENT: bool = true;

    fn path(&self) -> String {
        format!("outbounds/{}/agents", encode(self.campaign_id))
    }

    fn parse(&self, answer: &Answer) -> Result<Self::Answer, CallError> {
        list(answer, AGENT_IDS, agent).map(|p| p.items)
    }
}

/// `GET agents?limit=&offset=`.
#[derive(Debug, Clone)]
pub struct ListAgents {
    pub limit: u32,
    pub offset: u64,
}

impl Endpoint for ListAgents {
    type Answer = Paged<Agent>;
    const METHOD: Method = Method::GET;
    const IDEMPOTENT: bool = true;

    fn path(&self) -> String {
        paged("agents", self.limit, self.offset)
    }

    fn parse(&self, answer: &Answer) -> Result<Self::Answer, CallError> {
        list(answer, AGENT_IDS, agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::api::tests::answer;

    #[test]
    fn the_vendors_shapes_read_liberally() {
        let s = ListStatuses {
            campaign_id: "00001",
        };
        assert_eq!(s.path(), "outbounds/00001/statuses");
        // The vendor's example ends with } instead of ]: the real thing is a list.
        let statuses = s
            .parse(&answer(r#"[{"system_status":"CALL","status_id":"3","dictionary_status_id":2,"name":"Contact needed"},{"system_status":"TO_CALL","status_id":1,"dictionary_status_id":null,"name":"New"}]"#))
            .unwrap();
        assert_eq!(statuses[0].status_id, 3);
        assert_eq!(statuses[0].dictionary_status_id, Some(2));
        assert_eq!(statuses[1].dictionary_status_id, None);
        let agents = ListCampaignAgents { campaign_id: "00001" }
            .parse(&answer(r#"{"count":1,"result":[{"login":"jkowalski","number":"3113","active":true,"active_in_outbound":false,"agent_id":12}]}"#))
            .unwrap();
        assert_eq!(agents[0].login, "jkowalski");
        assert!(agents[0].active && !agents[0].active_in_outbound);
        let groups = ListFieldGroups { limit: 1000, offset: 0 }
            .parse(&answer(r#"{"count":1,"result":[{"group_id":"2","name":"Marketing","fields":[{"field_id":12,"name":"Kanał"}]}]}"#))
            .unwrap();
        assert_eq!(groups.items[0].fields, vec![(12, "Kanał".to_string())]);
        let outbounds = ListOutbounds {
            limit: 1000,
            offset: 0,
        }
        .parse(&answer(
            r#"[{"outbound_id":1,"name":"Sprzedaż"},{"id":"00003","name":"Ankieta"}]"#,
        ))
        .unwrap();
        assert_eq!(outbounds.items[0].id, "00001");
        assert_eq!(outbounds.items[1].id, "00003");
    }
}
