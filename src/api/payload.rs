//! The typed request bodies of the API, as the vendor's pages define them.
//! The mapping's compiled plan builds these (never free-form JSON maps), the
//! endpoints in this module serialise them, and nothing else decides what
//! goes over the wire.
//!
//! Strict in what we send: a field the mapping left out is absent (never
//! `null`, never `""`), ids are JSON numbers, `email` and `phone_number` are
//! a string or a list of strings, and a feed record's `payload` is a JSON
//! *text* holding a list of messages.

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

/// A single value of a text-like field: text, or a whole number where the
/// mapping asked for one (`type = "integer"`), or a boolean in a custom field.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Int(i64),
    Bool(bool),
}

impl Scalar {
    /// The value a mapping spec produced. Specs only produce strings, whole
    /// numbers and booleans; anything else is kept as its JSON text.
    pub fn from_value(v: Value) -> Scalar {
        match v {
            Value::String(s) => Scalar::Text(s),
            Value::Bool(b) => Scalar::Bool(b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Scalar::Int(i),
                None => Scalar::Text(n.to_string()),
            },
            other => Scalar::Text(other.to_string()),
        }
    }

    /// The value as text (`13`, `true`), for fields the API takes as text.
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Scalar::Text(s) => s.as_str().into(),
            Scalar::Int(i) => i.to_string().into(),
            Scalar::Bool(b) => b.to_string().into(),
        }
    }

    /// Whether the value is empty text (which, sent as a custom field's
    /// value, clears the field).
    pub fn is_empty_text(&self) -> bool {
        matches!(self, Scalar::Text(s) if s.is_empty())
    }
}

/// `email` and `phone_number`: one value, or a list (`split`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn from_value(v: Value) -> OneOrMany {
        match v {
            Value::Array(items) => OneOrMany::Many(
                items
                    .into_iter()
                    .map(|i| Scalar::from_value(i).text().into_owned())
                    .collect(),
            ),
            other => OneOrMany::One(Scalar::from_value(other).text().into_owned()),
        }
    }

    /// Every value, one or many.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        let (one, many) = match self {
            OneOrMany::One(s) => (Some(s.as_str()), &[][..]),
            OneOrMany::Many(v) => (None, v.as_slice()),
        };
        one.into_iter().chain(many.iter().map(String::as_str))
    }
}

/// Name → value pairs kept in the mapping's order, sent as a JSON object
/// (`custom_fields`, a campaign record's `record_fields`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Named(pub Vec<(String, Scalar)>);

impl Named {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Scalar> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

impl Serialize for Named {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// An address (`address`, `invoice_address`, `mail_drop_address`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Address {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub street: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub building: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flat: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postcode: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<Scalar>,
}

/// One part of an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressPart {
    Street,
    Building,
    Flat,
    Postcode,
    City,
    Country,
}

impl AddressPart {
    pub const ALL: [AddressPart; 6] = [
        AddressPart::Street,
        AddressPart::Building,
        AddressPart::Flat,
        AddressPart::Postcode,
        AddressPart::City,
        AddressPart::Country,
    ];

    /// The API's (and the mapping's) name of the part.
    pub fn key(self) -> &'static str {
        match self {
            AddressPart::Street => "street",
            AddressPart::Building => "building",
            AddressPart::Flat => "flat",
            AddressPart::Postcode => "postcode",
            AddressPart::City => "city",
            AddressPart::Country => "country",
        }
    }
}

impl Address {
    pub fn is_empty(&self) -> bool {
        *self == Address::default()
    }
    pub fn set(&mut self, part: AddressPart, value: Value) {
        let v = Some(Scalar::from_value(value));
        match part {
            AddressPart::Street => self.street = v,
            AddressPart::Building => self.building = v,
            AddressPart::Flat => self.flat = v,
            AddressPart::Postcode => self.postcode = v,
            AddressPart::City => self.city = v,
            AddressPart::Country => self.country = v,
        }
    }
}

/// Which of a customer's three addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressKind {
    Address,
    Invoice,
    MailDrop,
}

impl AddressKind {
    pub const ALL: [AddressKind; 3] = [
        AddressKind::Address,
        AddressKind::Invoice,
        AddressKind::MailDrop,
    ];
    pub fn key(self) -> &'static str {
        match self {
            AddressKind::Address => "address",
            AddressKind::Invoice => "invoice_address",
            AddressKind::MailDrop => "mail_drop_address",
        }
    }
}

/// A customer's scalar fields, as `POST batch/customers` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CustomerField {
    Name,
    Surname,
    Email,
    PhoneNumber,
    CompanyId,
    Type,
    Group,
    Identifier,
    Gender,
    Homepage,
    Birthdate,
    Nip,
    Note,
    Pesel,
    Job,
    JobTitle,
    AccountManager,
    Vip,
    FillReadOnlyCustomFields,
}

impl CustomerField {
    /// Every field.
    pub const ALL: [CustomerField; 19] = [
        CustomerField::Name,
        CustomerField::Surname,
        CustomerField::Email,
        CustomerField::PhoneNumber,
        CustomerField::CompanyId,
        CustomerField::Type,
        CustomerField::Group,
        CustomerField::Identifier,
        CustomerField::Gender,
        CustomerField::Homepage,
        CustomerField::Birthdate,
        CustomerField::Nip,
        CustomerField::Note,
        CustomerField::Pesel,
        CustomerField::Job,
        CustomerField::JobTitle,
        CustomerField::AccountManager,
        CustomerField::Vip,
        CustomerField::FillReadOnlyCustomFields,
    ];

    /// The field the API calls `key`.
    pub fn from_key(key: &str) -> Option<CustomerField> {
        CustomerField::ALL.into_iter().find(|f| f.key() == key)
    }
}

impl CustomerField {
    /// The API's (and the mapping's) name of the field.
    pub fn key(self) -> &'static str {
        match self {
            CustomerField::Name => "name",
            CustomerField::Surname => "surname",
            CustomerField::Email => "email",
            CustomerField::PhoneNumber => "phone_number",
            CustomerField::CompanyId => "company_id",
            CustomerField::Type => "type",
            CustomerField::Group => "group",
            CustomerField::Identifier => "identifier",
            CustomerField::Gender => "gender",
            CustomerField::Homepage => "homepage",
            CustomerField::Birthdate => "birthdate",
            CustomerField::Nip => "nip",
            CustomerField::Note => "note",
            CustomerField::Pesel => "pesel",
            CustomerField::Job => "job",
            CustomerField::JobTitle => "job_title",
            CustomerField::AccountManager => "account_manager",
            CustomerField::Vip => "vip",
            CustomerField::FillReadOnlyCustomFields => "fill_read_only_custom_fields",
        }
    }
}

/// One customer for `POST batch/customers` (and, with its id, `PUT
/// batch/customers`). Absent fields are not sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Customer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub surname: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<OneOrMany>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<OneOrMany>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub company_id: Option<i64>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gender: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub homepage: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub birthdate: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nip: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pesel: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_title: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_manager: Option<Scalar>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vip: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fill_read_only_custom_fields: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice_address: Option<Address>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mail_drop_address: Option<Address>,
    #[serde(skip_serializing_if = "Named::is_empty")]
    pub custom_fields: Named,
}

impl Customer {
    /// Sets a scalar field from the value a mapping spec produced.
    pub fn set(&mut self, field: CustomerField, value: Value) {
        let scalar = || Some(Scalar::from_value(value.clone()));
        let boolean = || match &value {
            Value::Bool(b) => Some(*b),
            other => Some(Scalar::from_value(other.clone()).text() == "true"),
        };
        use CustomerField as F;
        match field {
            F::Name => self.name = scalar(),
            F::Surname => self.surname = scalar(),
            F::Email => self.email = Some(OneOrMany::from_value(value)),
            F::PhoneNumber => self.phone_number = Some(OneOrMany::from_value(value)),
            F::CompanyId => {
                self.company_id = match Scalar::from_value(value) {
                    Scalar::Int(i) => Some(i),
                    other => other.text().trim().parse().ok(),
                }
            }
            F::Type => self.type_ = scalar(),
            F::Group => self.group = scalar(),
            F::Identifier => self.identifier = scalar(),
            F::Gender => self.gender = scalar(),
            F::Homepage => self.homepage = scalar(),
            F::Birthdate => self.birthdate = scalar(),
            F::Nip => self.nip = scalar(),
            F::Note => self.note = scalar(),
            F::Pesel => self.pesel = scalar(),
            F::Job => self.job = scalar(),
            F::JobTitle => self.job_title = scalar(),
            F::AccountManager => self.account_manager = scalar(),
            F::Vip => self.vip = boolean(),
            F::FillReadOnlyCustomFields => self.fill_read_only_custom_fields = boolean(),
        }
    }

    /// The address of `kind`, created empty if absent.
    pub fn address_mut(&mut self, kind: AddressKind) -> &mut Address {
        let slot = match kind {
            AddressKind::Address => &mut self.address,
            AddressKind::Invoice => &mut self.invoice_address,
            AddressKind::MailDrop => &mut self.mail_drop_address,
        };
        slot.get_or_insert_with(Address::default)
    }

    /// Drops addresses that ended up empty (every part's cell was empty).
    pub fn drop_empty_addresses(&mut self) {
        for a in [
            &mut self.address,
            &mut self.invoice_address,
            &mut self.mail_drop_address,
        ] {
            if a.as_ref().is_some_and(Address::is_empty) {
                *a = None;
            }
        }
    }

    /// The identifier as text, if the customer has one.
    pub fn identifier_text(&self) -> Option<String> {
        self.identifier
            .as_ref()
            .map(|i| i.text().into_owned())
            .filter(|i| !i.is_empty())
    }
}

/// A mapped custom field whose cell was empty: with `clear_empty`, an
/// update sends it as an empty value, which (as the vendor documents for
/// custom fields) clears it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cleared(pub String);

impl Customer {
    /// This customer with every `cleared` custom field set to an empty
    /// value (an update with `clear_empty`).
    pub fn clearing(&self, cleared: &[Cleared]) -> Customer {
        let mut out = self.clone();
        for Cleared(name) in cleared {
            out.custom_fields
                .0
                .push((name.clone(), Scalar::Text(String::new())));
        }
        out
    }

    /// Leaves out one field, named as [`super::values::flatten`] names
    /// it (`note`, `custom_fields.Segment`, `address.city`): an update
    /// that must not write it. Whether the customer had it.
    pub fn drop_field(&mut self, name: &str) -> bool {
        if let Some(custom) = name.strip_prefix("custom_fields.") {
            let before = self.custom_fields.0.len();
            self.custom_fields.0.retain(|(n, _)| n != custom);
            return self.custom_fields.0.len() != before;
        }
        if let Some((kind, part)) = name.split_once('.') {
            let Some(kind) = AddressKind::ALL.into_iter().find(|k| k.key() == kind) else {
                return false;
            };
            let Some(address) = self.address_mut_if(kind) else {
                return false;
            };
            let slot = match part {
                "street" => &mut address.street,
                "building" => &mut address.building,
                "flat" => &mut address.flat,
                "postcode" => &mut address.postcode,
                "city" => &mut address.city,
                "country" => &mut address.country,
                _ => return false,
            };
            let had = slot.take().is_some();
            self.drop_empty_addresses();
            return had;
        }
        fn take<T>(v: &mut Option<T>) -> bool {
            v.take().is_some()
        }
        match name {
            "name" => take(&mut self.name),
            "surname" => take(&mut self.surname),
            "email" => take(&mut self.email),
            "phone_number" => take(&mut self.phone_number),
            "company_id" => take(&mut self.company_id),
            "type" => take(&mut self.type_),
            "group" => take(&mut self.group),
            "identifier" => take(&mut self.identifier),
            "gender" => take(&mut self.gender),
            "homepage" => take(&mut self.homepage),
            "birthdate" => take(&mut self.birthdate),
            "nip" => take(&mut self.nip),
            "note" => take(&mut self.note),
            "pesel" => take(&mut self.pesel),
            "job" => take(&mut self.job),
            "job_title" => take(&mut self.job_title),
            "account_manager" => take(&mut self.account_manager),
            "vip" => take(&mut self.vip),
            "fill_read_only_custom_fields" => take(&mut self.fill_read_only_custom_fields),
            _ => false,
        }
    }

    /// The address of `kind`, if the customer has one.
    fn address_mut_if(&mut self, kind: AddressKind) -> Option<&mut Address> {
        match kind {
            AddressKind::Address => self.address.as_mut(),
            AddressKind::Invoice => self.invoice_address.as_mut(),
            AddressKind::MailDrop => self.mail_drop_address.as_mut(),
        }
    }

    /// The customer's values of a match key: one identifier, every e-mail
    /// address and phone number, one NIP, one custom field's value.
    pub fn key_values(&self, key: &crate::api::keys::SearchKey) -> Vec<String> {
        use crate::api::keys::SearchKey;
        let one = |v: &Option<Scalar>| v.iter().map(|s| s.text().trim().to_string()).collect();
        let many = |v: &Option<OneOrMany>| {
            v.iter()
                .flat_map(|m| m.values().map(|s| s.trim().to_string()))
                .collect()
        };
        let mut out: Vec<String> = match key {
            SearchKey::Identifier => one(&self.identifier),
            SearchKey::Email => many(&self.email),
            SearchKey::PhoneNumber => many(&self.phone_number),
            SearchKey::Nip => one(&self.nip),
            SearchKey::CustomField(name) => self
                .custom_fields
                .get(name)
                .map(|v| vec![v.text().trim().to_string()])
                .unwrap_or_default(),
        };
        out.retain(|v| !v.is_empty());
        out
    }
}

impl Customer {
    /// The fields of an update that puts back `before` (values as Thulium
    /// answered them, named as [`super::values::flatten`] names them:
    /// `surname`, `custom_fields.Segment`, `address.city`), in the types
    /// the API takes: a flag answered `"1"` is `true`; an empty value is
    /// sent empty (an empty list for `email` and `phone_number`, `""`
    /// otherwise, which clears a custom field). Fields it cannot send
    /// (unknown names, an empty `company_id`) come back apart.
    pub fn restoring(before: &serde_json::Map<String, Value>) -> (Customer, Vec<String>) {
        let mut out = Customer::default();
        let mut left = Vec::new();
        for (name, value) in before {
            let empty = super::values::is_empty(value);
            match name.split_once('.') {
                Some(("custom_fields", key)) => {
                    let v = if empty {
                        Scalar::Text(String::new())
                    } else {
                        Scalar::from_value(value.clone())
                    };
                    out.custom_fields.0.push((key.to_string(), v));
                }
                Some((outer, part)) => {
                    let kind = AddressKind::ALL.into_iter().find(|k| k.key() == outer);
                    let part = AddressPart::ALL.into_iter().find(|p| p.key() == part);
                    match (kind, part) {
                        (Some(kind), Some(part)) => {
                            let v = if empty {
                                Value::from("")
                            } else {
                                value.clone()
                            };
                            out.address_mut(kind).set(part, v);
                        }
                        _ => left.push(name.clone()),
                    }
                }
                None => match CustomerField::from_key(name) {
                    Some(f @ (CustomerField::Vip | CustomerField::FillReadOnlyCustomFields)) => {
                        let on = super::values::canonical("vip", value) == "1";
                        out.set(f, Value::Bool(on));
                    }
                    Some(CustomerField::CompanyId) if empty => left.push(name.clone()),
                    Some(f @ (CustomerField::Email | CustomerField::PhoneNumber)) if empty => {
                        out.set(f, Value::Array(Vec::new()))
                    }
                    Some(f) if empty => out.set(f, Value::from("")),
                    Some(f) => out.set(f, value.clone()),
                    None => left.push(name.clone()),
                },
            }
        }
        (out, left)
    }
}

impl Customer {
    /// A customer to create again from what `GET customers/:id` answered
    /// for it (custom fields and addresses included): every non-empty
    /// field `POST batch/customers` takes, in its types; every phone
    /// number (`phone_numbers`) when it had several. Custom fields are
    /// sent with `fill_read_only_custom_fields`, so that read-only ones
    /// come back too. The names of the fields answered but not sent (read
    /// only: `company_flag`, `updated_at`, ...) come back apart.
    pub fn recreating(answered: &serde_json::Map<String, Value>) -> (Customer, Vec<String>) {
        let mut nonempty = serde_json::Map::new();
        let mut skipped = Vec::new();
        let phones = match answered.get("phone_numbers") {
            Some(Value::Array(list)) if list.len() > 1 => Some(Value::Array(list.clone())),
            _ => None,
        };
        for (name, value) in super::values::flatten(&Value::Object(answered.clone())) {
            if super::values::is_empty(&value) {
                continue;
            }
            match name.as_str() {
                // Bookkeeping, or said by `phone_number` already.
                "updated_at" | "created_at" | "phone_numbers" => {}
                "phone_number" => {
                    nonempty.insert(name, phones.clone().unwrap_or(value));
                }
                _ => {
                    nonempty.insert(name, value);
                }
            }
        }
        let (mut out, left) = Customer::restoring(&nonempty);
        skipped.extend(left);
        if !out.custom_fields.is_empty() {
            out.fill_read_only_custom_fields = Some(true);
        }
        (out, skipped)
    }
}

/// One entry of `PUT batch/customers`: the customer's id and the fields to
/// change (`surname` optional).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerUpdate {
    pub customer_id: i64,
    #[serde(flatten)]
    pub fields: Customer,
}

/// One value of a field-group item.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ItemValue {
    pub field_id: i64,
    pub value: Scalar,
}

/// `POST customer_field_group_items`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewItem<'a> {
    pub group_id: i64,
    pub customer_id: i64,
    pub values: &'a [ItemValue],
}

/// `PUT customer_field_group_items/:id`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemValues<'a> {
    pub values: &'a [ItemValue],
}

/// A campaign record's fields, as the mapping gives them (the customer's id
/// comes later, from the customer stage).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct RecordFields {
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
}

/// One record of `POST batch/crm_outbounds/:id/records`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignRecord<'a> {
    pub customer_id: i64,
    #[serde(flatten)]
    pub fields: &'a RecordFields,
}

/// The body of `PUT outbounds/:id/records_by_identifier/:identifier`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct RecordUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dictionary_status_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_login: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_call_date: Option<String>,
    #[serde(skip_serializing_if = "Named::is_empty")]
    pub record_fields: Named,
}

/// The integer and text fields a campaign record and its edit share, set by
/// name from the mapping's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordField {
    StatusId,
    DictionaryStatusId,
    AgentLogin,
    NextCallDate,
    Order,
}

impl RecordField {
    pub fn key(self) -> &'static str {
        match self {
            RecordField::StatusId => "status_id",
            RecordField::DictionaryStatusId => "dictionary_status_id",
            RecordField::AgentLogin => "agent_login",
            RecordField::NextCallDate => "next_call_date",
            RecordField::Order => "order",
        }
    }
}

fn int_of(v: Value) -> Option<i64> {
    match Scalar::from_value(v) {
        Scalar::Int(i) => Some(i),
        other => other.text().trim().parse().ok(),
    }
}

fn text_of(v: Value) -> Option<String> {
    Some(Scalar::from_value(v).text().into_owned())
}

impl RecordFields {
    pub fn set(&mut self, field: RecordField, value: Value) {
        match field {
            RecordField::StatusId => self.status_id = int_of(value),
            RecordField::DictionaryStatusId => self.dictionary_status_id = int_of(value),
            RecordField::AgentLogin => self.agent_login = text_of(value),
            RecordField::NextCallDate => self.next_call_date = text_of(value),
            RecordField::Order => self.order = int_of(value),
        }
    }
}

impl RecordUpdate {
    /// Sets a field; `order` does not exist in an edit and is ignored.
    pub fn set(&mut self, field: RecordField, value: Value) {
        match field {
            RecordField::StatusId => self.status_id = int_of(value),
            RecordField::DictionaryStatusId => self.dictionary_status_id = int_of(value),
            RecordField::AgentLogin => self.agent_login = text_of(value),
            RecordField::NextCallDate => self.next_call_date = text_of(value),
            RecordField::Order => {}
        }
    }
}

/// One ZOWIE text message of a contact-history entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct FeedMessage {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub payload: FeedText,
    pub author: Scalar,
    pub time: String,
}

/// A text message's `payload`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct FeedText {
    pub message: Scalar,
}

impl FeedMessage {
    /// A text message.
    pub fn text(id: String, message: Scalar, author: Scalar, time: String) -> FeedMessage {
        FeedMessage {
            id,
            kind: "text",
            payload: FeedText { message },
            author,
            time,
        }
    }
}

/// `POST customers/:id/feed_records`: `{"type": "ZOWIE", "payload": "<JSON
/// text of a list of messages>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct FeedRecord {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The messages as a JSON text (the API takes a string here).
    pub payload: String,
}

impl FeedRecord {
    /// A ZOWIE entry holding `messages`.
    pub fn zowie(messages: &[FeedMessage]) -> FeedRecord {
        FeedRecord {
            kind: "ZOWIE",
            payload: serde_json::to_string(messages).unwrap_or_else(|_| "[]".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_customer_created_again_sends_what_post_takes_and_names_the_rest() {
        let answered = json!({
            "customer_id": 7, "surname": "Nowak", "name": "", "email": "a@b.pl",
            "phone_number": "48600000001", "phone_numbers": ["48600000001", "48600000002"],
            "company_id": "", "company_flag": "0", "vip": "1", "updated_at": "2025-01-01 00:00:00",
            "custom_fields": {"Segment": "A", "Empty": null},
            "address": {"city": "Gdańsk", "street": ""}, "invoice_address": null
        });
        let (c, skipped) = Customer::recreating(answered.as_object().unwrap());
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({
                "surname": "Nowak", "email": "a@b.pl",
                "phone_number": ["48600000001", "48600000002"], "vip": true,
                "fill_read_only_custom_fields": true,
                "address": {"city": "Gdańsk"}, "custom_fields": {"Segment": "A"}
            })
        );
        assert_eq!(skipped, ["company_flag"]);
    }

    #[test]
    fn absent_fields_are_not_sent_and_ids_are_numbers() {
        let mut c = Customer::default();
        c.set(CustomerField::Surname, json!("Kowalski"));
        c.set(CustomerField::Email, json!(["a@b.pl", "c@d.pl"]));
        c.set(CustomerField::CompanyId, json!(7));
        c.address_mut(AddressKind::Address)
            .set(AddressPart::City, json!("Łódź"));
        c.address_mut(AddressKind::Invoice);
        c.drop_empty_addresses();
        c.custom_fields.0.push(("Segment".into(), Scalar::Int(3)));
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"surname": "Kowalski", "email": ["a@b.pl", "c@d.pl"], "company_id": 7,
                   "address": {"city": "Łódź"}, "custom_fields": {"Segment": 3}})
        );
        let update = CustomerUpdate {
            customer_id: 13,
            fields: c,
        };
        assert_eq!(serde_json::to_value(&update).unwrap()["customer_id"], 13);
    }

    #[test]
    fn the_vendors_feed_example_byte_for_byte() {
        let m = FeedMessage::text(
            "sample-id".into(),
            Scalar::Text("Sample message".into()),
            Scalar::Text("customer".into()),
            "2021-02-02T10:10:12".into(),
        );
        assert_eq!(
            serde_json::to_string(&FeedRecord::zowie(&[m])).unwrap(),
            r#"{"type":"ZOWIE","payload":"[{\"id\":\"sample-id\",\"type\":\"text\",\"payload\":{\"message\":\"Sample message\"},\"author\":\"customer\",\"time\":\"2021-02-02T10:10:12\"}]"}"#
        );
    }
}
