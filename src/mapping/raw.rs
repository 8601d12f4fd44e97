//! The mapping as written: plain serde structs that mirror the TOML file,
//! with `deny_unknown_fields` everywhere so that a misspelt key is an error
//! with its line, not a silently ignored setting. Value specs stay as
//! spanned TOML values here; [`super::compile`] checks their shape.
//!
//! These structs are the reference of the mapping language; `mappings/README.md`
//! explains it with examples.

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A value spec as written: a column name, or an inline table
/// (`{ column = ..., ... }`, `{ value = ... }`, `{ template = ... }`).
pub type Spec = Spanned<toml::Value>;

/// A TOML table kept in file order with the position of every key, for
/// tables whose keys are the user's (custom fields, field ids).
#[derive(Debug, Clone, Default)]
pub struct OrderedMap<V>(pub Vec<(Spanned<String>, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V_<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V_<V> {
            type Value = OrderedMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry()? {
                    out.push((k, v));
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(V_(std::marker::PhantomData))
    }
}

/// The whole mapping file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMapping {
    #[serde(default)]
    pub source: RawSource,
    pub customer: Option<Spanned<RawCustomer>>,
    #[serde(default)]
    pub field_group: Vec<Spanned<RawFieldGroup>>,
    pub campaign: Option<Spanned<RawCampaign>>,
    pub campaign_update: Option<Spanned<RawCampaignUpdate>>,
    pub feed: Option<Spanned<RawFeed>>,
}

/// `[source]`: how to read the CSV.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// One character, or `"auto"` (the default) to sniff `,` `;` tab `|`.
    pub delimiter: Option<Spanned<String>>,
    /// A WHATWG encoding label; default `utf-8`.
    pub encoding: Option<Spanned<String>>,
    /// The quote character; default `"`.
    pub quote: Option<Spanned<String>>,
    /// A spreadsheet's sheet by name; default the first.
    pub sheet: Option<String>,
    /// Trim spaces around every cell; default true.
    pub trim: Option<bool>,
    /// A column holding an existing Thulium customer id: rows with a value
    /// there skip customer creation and use that id.
    pub customer_id: Option<Spanned<String>>,
    /// The job this file belongs to, for `on_gone`: the files whose
    /// customers a later file of the same job is compared with. Default:
    /// the mapping file (nightly exports carry dated names).
    pub job: Option<Spanned<String>>,
    /// Every file of the job is a full export (the whole CRM, not the day's
    /// changes), so that `sync` imports only the newest of several waiting
    /// in the drop folder. Implied by `[customer] on_gone` other than
    /// `"keep"`; default false.
    pub full_export: Option<Spanned<bool>>,
}

/// `[customer]`: `POST /api/batch/customers`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCustomer {
    pub when: Option<Spec>,
    /// Match keys, tried in order: one name or a list (`identifier`,
    /// `email`, `phone_number`, `nip`, `custom_fields.<Name>`). Without it,
    /// every row creates a customer.
    #[serde(rename = "match")]
    pub match_keys: Option<Spanned<toml::Value>>,
    /// A matched customer: `"update"` (the default) or `"skip"`.
    pub on_match: Option<Spanned<String>>,
    /// No customer matched: `"create"` (the default) or `"skip"`.
    pub on_missing: Option<Spanned<String>>,
    /// In an update, send the empty cells of custom fields as empty values
    /// (which clears them, as the vendor documents) instead of leaving them
    /// out; default false. Other fields are never cleared.
    pub clear_empty: Option<bool>,
    /// The default `update` of every field of the table: `"always"` (the
    /// default), `"if_empty"` (written only while Thulium's value is
    /// empty) or `"never"` (written when the customer is created only).
    pub update: Option<Spanned<String>>,
    /// A customer an earlier file of the job brought and a complete file
    /// no longer has (with `--state`): `"keep"` (the default), `"report"`,
    /// `"delete"`, or `{ custom_field = "Name", value = "..." }` to mark it.
    pub on_gone: Option<Spanned<toml::Value>>,
    pub name: Option<Spec>,
    pub surname: Option<Spec>,
    pub email: Option<Spec>,
    pub phone_number: Option<Spec>,
    pub company_id: Option<Spec>,
    #[serde(rename = "type")]
    pub type_: Option<Spec>,
    pub group: Option<Spec>,
    pub identifier: Option<Spec>,
    pub gender: Option<Spec>,
    pub homepage: Option<Spec>,
    pub birthdate: Option<Spec>,
    pub nip: Option<Spec>,
    pub note: Option<Spec>,
    pub pesel: Option<Spec>,
    pub job: Option<Spec>,
    pub job_title: Option<Spec>,
    pub account_manager: Option<Spec>,
    pub vip: Option<Spec>,
    pub fill_read_only_custom_fields: Option<Spec>,
    pub address: Option<RawAddress>,
    pub invoice_address: Option<RawAddress>,
    pub mail_drop_address: Option<RawAddress>,
    /// Custom field name → value spec.
    pub custom_fields: Option<OrderedMap<Spec>>,
}

/// An address table (`[customer.address]` and the other two).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAddress {
    pub street: Option<Spec>,
    pub building: Option<Spec>,
    pub flat: Option<Spec>,
    pub postcode: Option<Spec>,
    pub city: Option<Spec>,
    pub country: Option<Spec>,
}

/// `[[field_group]]`: `POST /api/customer_field_group_items`, one per row.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFieldGroup {
    pub when: Option<Spec>,
    pub group_id: Spanned<i64>,
    /// The field ids (a list, or one) whose values identify an item (a
    /// contract's number): each must be one of this block's `values`.
    #[serde(rename = "match")]
    pub match_fields: Option<Spanned<toml::Value>>,
    /// The default `update` of the block's values (see `[customer] update`).
    pub update: Option<Spanned<String>>,
    /// Field id → value spec.
    pub values: OrderedMap<Spec>,
}

/// `[campaign]`: `POST /api/batch/crm_outbounds/:id/records`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCampaign {
    pub when: Option<Spec>,
    pub id: Spec,
    pub status_id: Option<Spec>,
    pub dictionary_status_id: Option<Spec>,
    pub agent_login: Option<Spec>,
    pub next_call_date: Option<Spec>,
    pub order: Option<Spec>,
}

/// `[campaign_update]`: `PUT /api/outbounds/:id/records_by_identifier/:identifier`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCampaignUpdate {
    pub when: Option<Spec>,
    pub id: Spec,
    pub identifier: Spec,
    pub status_id: Option<Spec>,
    pub dictionary_status_id: Option<Spec>,
    pub agent_login: Option<Spec>,
    pub next_call_date: Option<Spec>,
    /// Campaign structure field → value spec.
    pub record_fields: Option<OrderedMap<Spec>>,
}

/// `[feed]`: `POST /api/customers/:id/feed_records`, one ZOWIE text message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFeed {
    pub when: Option<Spec>,
    pub message: Spec,
    pub time: Spec,
    pub author: Option<Spec>,
    /// The message id; default `thulium-import-<row>`.
    pub id: Option<Spec>,
    /// A customer that existed before the run, when no sync state proves
    /// this message was not sent to it (the API cannot list feed records):
    /// `"skip"` (the default) leaves it, recorded `kept`; `"send"` sends it.
    pub on_match: Option<Spanned<String>>,
}
