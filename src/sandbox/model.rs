//! The sandbox's world: what a fresh Thulium system holds out of the box
//! (agents, customer types and groups, custom-field groups, campaigns) and the
//! in-memory state that the endpoints change.
//!
//! The defaults are documented in `README.md` ("The sandbox"); tests and the
//! sample mapping rely on them.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

/// Agent logins that exist (for `agent_login` and `account_manager`).
pub const AGENTS: &[&str] = &[
    "j.doe",
    "a.nowak",
    "k.wisniewska",
    "m.zielinski",
    "p.lewandowski",
];

/// Customer type names defined in the system (`type`).
pub const CUSTOMER_TYPES: &[&str] = &["Klient", "Partner", "Dostawca", "Prospekt"];

/// Customer group names defined in the system (`group`).
pub const CUSTOMER_GROUPS: &[&str] = &["Detal", "Hurt", "VIP", "Serwis"];

/// Dictionary status ids that exist (`dictionary_status_id`).
pub const DICTIONARY_STATUSES: std::ops::RangeInclusive<i64> = 1..=10;

/// The kind of value a custom-field group field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldKind {
    /// Any text.
    Text,
    /// A number (JSON number or a string of one).
    Number,
    /// A date `YYYY-MM-DD`.
    Date,
}

/// One custom-field group, e.g. group 2 with fields 8, 10 and 12 as in the
/// vendor's example.
#[derive(Debug, Clone, Serialize)]
pub struct FieldGroup {
    pub group_id: i64,
    pub name: &'static str,
    pub fields: Vec<(i64, &'static str, FieldKind)>,
}

/// The system status a campaign status stands for; two of them require more
/// fields in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SystemStatus {
    Plain,
    /// `MY_RECORD`: requires `agent_login` and `next_call_date`.
    MyRecord,
    /// `CALL_NO_SOONER_THAN`: requires `next_call_date`.
    CallNoSoonerThan,
}

/// A campaign record, whether added for a CRM customer or pre-loaded with an
/// identifier (phone campaigns).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Record {
    pub record_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dictionary_status_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_login: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_call_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<i64>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub record_fields: Map<String, Value>,
}

/// A campaign. CRM campaigns take customers (`batch/crm_outbounds`); phone
/// campaigns hold records with identifiers that `records_by_identifier` edits.
#[derive(Debug, Clone, Serialize)]
pub struct Campaign {
    pub id: &'static str,
    pub name: &'static str,
    pub crm: bool,
    /// Status id → what it means to the system.
    pub statuses: BTreeMap<i64, SystemStatus>,
    /// Campaign structure fields (`record_fields` keys), phone campaigns only.
    pub structure: Vec<&'static str>,
    /// Pre-loaded identifiers `first..=last` exist as records without being
    /// listed (a phone campaign loaded elsewhere); edited ones move to
    /// `records`.
    #[serde(skip)]
    pub preloaded: Option<(u64, u64)>,
    /// CRM records keyed by customer id.
    pub by_customer: BTreeMap<i64, Record>,
    /// Phone records that were edited, keyed by identifier.
    pub by_identifier: BTreeMap<String, Record>,
}

/// A stored customer: what was sent, plus the id.
#[derive(Debug, Clone, Serialize)]
pub struct Customer {
    pub customer_id: i64,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// A stored custom-field group item.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub item_id: i64,
    pub group_id: i64,
    pub customer_id: i64,
    pub values: Vec<Value>,
}

/// A stored contact-history entry.
#[derive(Debug, Clone, Serialize)]
pub struct FeedRecord {
    pub feed_record_id: i64,
    pub customer_id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    /// The payload as sent (a JSON text).
    pub payload: String,
}

/// Everything the sandbox holds. One mutex guards it: the sandbox is a test
/// double, and a single lock keeps every call atomic like a database
/// transaction would.
#[derive(Debug, Serialize)]
pub struct State {
    pub customers: BTreeMap<i64, Customer>,
    pub field_groups: BTreeMap<i64, FieldGroup>,
    pub field_group_items: Vec<Item>,
    pub campaigns: BTreeMap<String, Campaign>,
    pub feed_records: Vec<FeedRecord>,
    #[serde(skip)]
    next_customer_id: i64,
    #[serde(skip)]
    next_item_id: i64,
    /// The next campaign record id (a public counter so that a handler can
    /// hold a campaign and the counter at once).
    #[serde(skip)]
    pub next_record_id: i64,
    #[serde(skip)]
    next_feed_id: i64,
}

impl Default for State {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// A fresh system with the documented out-of-the-box configuration.
    pub fn new() -> State {
        use FieldKind::*;
        let field_groups = [
            FieldGroup {
                group_id: 2,
                name: "Marketing",
                fields: vec![
                    (8, "Liczba zamówień", Number),
                    (10, "Komentarz", Text),
                    (12, "Kanał pozyskania", Text),
                ],
            },
            FieldGroup {
                group_id: 3,
                name: "Umowa",
                fields: vec![
                    (20, "Numer umowy", Text),
                    (21, "Data podpisania", Date),
                    (22, "Wartość", Number),
                ],
            },
        ];
        let crm_statuses: BTreeMap<i64, SystemStatus> = (1..=8)
            .map(|id| (id, SystemStatus::Plain))
            .chain([
                (9, SystemStatus::MyRecord),
                (10, SystemStatus::CallNoSoonerThan),
            ])
            .collect();
        let campaign = |id, name, crm, structure: Vec<&'static str>, preloaded| Campaign {
            id,
            name,
            crm,
            statuses: crm_statuses.clone(),
            structure,
            preloaded,
            by_customer: BTreeMap::new(),
            by_identifier: BTreeMap::new(),
        };
        let campaigns = [
            campaign("00001", "Sprzedaż", true, vec![], None),
            campaign("00002", "Windykacja", true, vec![], None),
            campaign(
                "00003",
                "Ankieta",
                false,
                vec!["Wynik", "Produkt", "Uwagi"],
                Some((1_234_500_000, 1_234_599_999)),
            ),
        ];
        State {
            customers: BTreeMap::new(),
            field_groups: field_groups.into_iter().map(|g| (g.group_id, g)).collect(),
            field_group_items: Vec::new(),
            campaigns: campaigns
                .into_iter()
                .map(|c| (c.id.to_string(), c))
                .collect(),
            feed_records: Vec::new(),
            next_customer_id: 1,
            next_item_id: 1,
            // Pre-loaded phone records take ids below this.
            next_record_id: 100_001,
            next_feed_id: 1,
        }
    }

    /// Adds `n` customers as an earlier import would have: identifiers
    /// `PRE-000001` ..., an e-mail address and a phone number each.
    pub fn preload(&mut self, n: usize) {
        for i in 1..=n {
            let mut fields = Map::new();
            fields.insert("name".into(), Value::from("Anna"));
            fields.insert("surname".into(), Value::from(format!("Preloaded {i}")));
            fields.insert("identifier".into(), Value::from(format!("PRE-{i:06}")));
            fields.insert("email".into(), Value::from(format!("pre{i}@example.com")));
            fields.insert("phone_number".into(), Value::from(format!("48500{i:06}")));
            self.add_customer(fields);
        }
    }

    pub fn add_customer(&mut self, fields: Map<String, Value>) -> i64 {
        let customer_id = self.next_customer_id;
        self.next_customer_id += 1;
        self.customers.insert(
            customer_id,
            Customer {
                customer_id,
                fields,
            },
        );
        customer_id
    }

    pub fn add_item(&mut self, group_id: i64, customer_id: i64, values: Vec<Value>) -> i64 {
        let item_id = self.next_item_id;
        self.next_item_id += 1;
        self.field_group_items.push(Item {
            item_id,
            group_id,
            customer_id,
            values,
        });
        item_id
    }

    pub fn add_feed(&mut self, customer_id: i64, kind: String, payload: String) {
        let feed_record_id = self.next_feed_id;
        self.next_feed_id += 1;
        self.feed_records.push(FeedRecord {
            feed_record_id,
            customer_id,
            kind,
            payload,
        });
    }
}

impl Campaign {
    /// The record with this identifier, materialised from the pre-loaded range
    /// on first touch.
    pub fn record_by_identifier(&mut self, identifier: &str) -> Option<&mut Record> {
        if !self.by_identifier.contains_key(identifier) {
            let n: u64 = identifier.parse().ok()?;
            let (first, last) = self.preloaded?;
            if !(first..=last).contains(&n) {
                return None;
            }
            let record = Record {
                record_id: i64::try_from(n - first + 1).ok()?,
                customer_id: None,
                identifier: Some(identifier.to_string()),
                status_id: Some(1),
                dictionary_status_id: None,
                agent_login: None,
                next_call_date: None,
                order: None,
                record_fields: Map::new(),
            };
            self.by_identifier.insert(identifier.to_string(), record);
        }
        self.by_identifier.get_mut(identifier)
    }
}
