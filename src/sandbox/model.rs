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

/// A campaign status: what `GET outbounds/:id/statuses` lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusDef {
    pub system_status: &'static str,
    pub name: &'static str,
    pub dictionary_status_id: Option<i64>,
}

impl StatusDef {
    /// What the system status asks of a record.
    pub fn kind(&self) -> SystemStatus {
        match self.system_status {
            "MY_RECORD" => SystemStatus::MyRecord,
            "CALL_NO_SOONER_THAN" => SystemStatus::CallNoSoonerThan,
            _ => SystemStatus::Plain,
        }
    }
}

/// Every campaign's statuses: id, system status, name.
const STATUSES: [(i64, &str, &str); 10] = [
    (1, "TO_CALL", "Nowy"),
    (2, "IN_PROGRESS", "W trakcie"),
    (3, "CALL", "Do kontaktu"),
    (4, "NO_CALL", "Nie dzwonić"),
    (5, "ABANDONED_AFTER_N_TRIES", "Porzucony"),
    (6, "CALL", "Zainteresowany"),
    (7, "NO_CALL", "Odmowa"),
    (8, "CALL_PROGRESSIVE", "Progresywny"),
    (9, "MY_RECORD", "Mój rekord"),
    (10, "CALL_NO_SOONER_THAN", "Nie wcześniej niż"),
];

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
    pub statuses: BTreeMap<i64, StatusDef>,
    /// The agents' logins assigned to the campaign (`agent_login` must be
    /// one of them).
    pub agents: Vec<String>,
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

/// A stored customer: what was sent, plus the id and when it last changed.
#[derive(Debug, Clone, Serialize)]
pub struct Customer {
    pub customer_id: i64,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
    /// When it was created or last updated, as the vendor gives it:
    /// `YYYY-MM-DD hh:mm:ss`, the system's local time.
    pub updated_at: String,
}

/// Now, as `updated_at` gives it, on a clock `offset_secs` ahead of this
/// machine's (see [`State::clock_offset_secs`]).
pub fn now(offset_secs: i64) -> String {
    (chrono::Local::now() + chrono::Duration::seconds(offset_secs))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
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
    /// Customers by their searchable values, so that a search does not read
    /// every customer (a system of 1,000,000 customers stays quick).
    #[serde(skip)]
    pub search: SearchIndex,
    /// Positions in `field_group_items`, by customer.
    #[serde(skip)]
    items_by_customer: std::collections::HashMap<i64, Vec<usize>>,
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
    /// How far the system's clock is ahead of this machine's, in seconds:
    /// a test moves it on to stand for a later night (`updated_at` is all
    /// that reads it).
    #[serde(skip)]
    pub clock_offset_secs: i64,
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
        let crm_statuses: BTreeMap<i64, StatusDef> = STATUSES
            .iter()
            .map(|(id, system_status, name)| {
                (
                    *id,
                    StatusDef {
                        system_status,
                        name,
                        dictionary_status_id: Some(*id),
                    },
                )
            })
            .collect();
        let campaign = |id, name, crm, structure: Vec<&'static str>, preloaded| Campaign {
            id,
            name,
            crm,
            statuses: crm_statuses.clone(),
            agents: AGENTS.iter().map(|a| a.to_string()).collect(),
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
            search: SearchIndex::default(),
            items_by_customer: std::collections::HashMap::new(),
            next_customer_id: 1,
            next_item_id: 1,
            // Pre-loaded phone records take ids below this.
            next_record_id: 100_001,
            next_feed_id: 1,
            clock_offset_secs: 0,
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
        self.search.add(customer_id, &fields);
        self.customers.insert(
            customer_id,
            Customer {
                customer_id,
                fields,
                updated_at: now(self.clock_offset_secs),
            },
        );
        customer_id
    }

    /// Deletes a customer and everything that hangs on it (its field-group
    /// items, campaign records and contact history), as `DELETE
    /// customers/:id` does; whether there was one.
    pub fn remove_customer(&mut self, customer_id: i64) -> bool {
        let Some(c) = self.customers.remove(&customer_id) else {
            return false;
        };
        self.search.remove(customer_id, &c.fields);
        if self.items_by_customer.remove(&customer_id).is_some() {
            self.field_group_items
                .retain(|i| i.customer_id != customer_id);
            self.reindex_items();
        }
        for campaign in self.campaigns.values_mut() {
            campaign.by_customer.remove(&customer_id);
        }
        self.feed_records.retain(|f| f.customer_id != customer_id);
        true
    }

    /// Empties what imports fill (customers, their items, campaign records,
    /// contact history, edited phone records), as a system restored from an
    /// empty backup; the configuration (field groups, campaigns, agents)
    /// stays. With `reset_ids` the id counters start again from the
    /// beginning, so an old id may name a new, different customer.
    pub fn restore(&mut self, reset_ids: bool) {
        self.customers.clear();
        self.search = SearchIndex::default();
        self.field_group_items.clear();
        self.items_by_customer.clear();
        for campaign in self.campaigns.values_mut() {
            campaign.by_customer.clear();
            campaign.by_identifier.clear();
        }
        self.feed_records.clear();
        if reset_ids {
            let fresh = State::new();
            self.next_customer_id = fresh.next_customer_id;
            self.next_item_id = fresh.next_item_id;
            self.next_record_id = fresh.next_record_id;
            self.next_feed_id = fresh.next_feed_id;
        }
    }

    /// Rebuilds the positions of items by customer (after items went).
    fn reindex_items(&mut self) {
        self.items_by_customer.clear();
        for (i, item) in self.field_group_items.iter().enumerate() {
            self.items_by_customer
                .entry(item.customer_id)
                .or_default()
                .push(i);
        }
    }

    /// Replaces a customer's fields (an update), keeping the search index.
    pub fn replace_customer(&mut self, customer_id: i64, fields: Map<String, Value>) {
        if let Some(c) = self.customers.get_mut(&customer_id) {
            self.search.remove(customer_id, &c.fields);
            self.search.add(customer_id, &fields);
            c.fields = fields;
            c.updated_at = now(self.clock_offset_secs);
        }
    }

    /// The items of one customer, in the order they were added.
    pub fn items_of(&self, customer_id: i64) -> impl Iterator<Item = &Item> {
        self.items_by_customer
            .get(&customer_id)
            .into_iter()
            .flatten()
            .filter_map(|i| self.field_group_items.get(*i))
    }

    pub fn add_item(&mut self, group_id: i64, customer_id: i64, values: Vec<Value>) -> i64 {
        let item_id = self.next_item_id;
        self.next_item_id += 1;
        self.items_by_customer
            .entry(customer_id)
            .or_default()
            .push(self.field_group_items.len());
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

/// Customers by identifier (ordered, for a prefix search), e-mail address
/// (without case), phone number and NIP (by digits).
#[derive(Debug, Default)]
pub struct SearchIndex {
    pub identifier: BTreeMap<String, std::collections::BTreeSet<i64>>,
    pub email: std::collections::HashMap<String, std::collections::BTreeSet<i64>>,
    pub phone_number: std::collections::HashMap<String, std::collections::BTreeSet<i64>>,
    pub nip: std::collections::HashMap<String, std::collections::BTreeSet<i64>>,
}

/// A field's values: one, or a list.
fn texts(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items.iter().flat_map(|i| texts(Some(i))).collect(),
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Number(n)) => vec![n.to_string()],
        _ => Vec::new(),
    }
}

/// Digits only (how phone numbers and NIPs are searched).
pub fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

impl SearchIndex {
    fn entries(fields: &Map<String, Value>) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        out.extend(texts(fields.get("identifier")).into_iter().map(|v| (0, v)));
        out.extend(
            texts(fields.get("email"))
                .into_iter()
                .map(|v| (1, v.to_lowercase())),
        );
        out.extend(
            texts(fields.get("phone_number"))
                .into_iter()
                .map(|v| (2, digits(&v))),
        );
        out.extend(
            texts(fields.get("nip"))
                .into_iter()
                .map(|v| (3, digits(&v))),
        );
        out
    }

    fn add(&mut self, id: i64, fields: &Map<String, Value>) {
        for (k, v) in Self::entries(fields) {
            let set = match k {
                0 => self.identifier.entry(v).or_default(),
                1 => self.email.entry(v).or_default(),
                2 => self.phone_number.entry(v).or_default(),
                _ => self.nip.entry(v).or_default(),
            };
            set.insert(id);
        }
    }

    fn remove(&mut self, id: i64, fields: &Map<String, Value>) {
        for (k, v) in Self::entries(fields) {
            let set = match k {
                0 => self.identifier.get_mut(&v),
                1 => self.email.get_mut(&v),
                2 => self.phone_number.get_mut(&v),
                _ => self.nip.get_mut(&v),
            };
            if let Some(set) = set {
                set.remove(&id);
            }
        }
    }

    /// The customers a search by `key = value` can match (a superset, to be
    /// filtered), or `None` when the key is not indexed.
    pub fn candidates(&self, key: &str, value: &str) -> Option<Vec<i64>> {
        if value.is_empty() {
            return None;
        }
        let ids: Vec<i64> = match key {
            "identifier" => self
                .identifier
                .range(value.to_string()..)
                .take_while(|(k, _)| k.starts_with(value))
                .flat_map(|(_, ids)| ids.iter().copied())
                .collect(),
            "email" => self
                .email
                .get(&value.to_lowercase())
                .into_iter()
                .flatten()
                .copied()
                .collect(),
            "phone_number" => self
                .phone_number
                .get(&digits(value))
                .into_iter()
                .flatten()
                .copied()
                .collect(),
            "nip" => self
                .nip
                .get(&digits(value))
                .into_iter()
                .flatten()
                .copied()
                .collect(),
            _ => return None,
        };
        Some(ids)
    }
}
