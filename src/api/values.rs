//! How Thulium's values read: the same value in the forms Thulium answers
//! it (`null`, `""` and `[]` all empty; numbers and booleans as their
//! text; e-mail addresses without case, phone numbers by their digits;
//! lists as sets), a payload's fields by name, and which customer fields
//! a mapping writes (what the reads must ask for: `include_*`).
//! [`crate::current`] builds on it; the API's own types use it to read
//! answers liberally.

use serde_json::Value;

use super::keys::SearchKey;

/// The customer fields a mapping writes: what is worth keeping of each
/// customer Thulium lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// Scalar fields by the API's name (`surname`, `email`, ...).
    pub fields: Vec<String>,
    /// Custom fields by name.
    pub custom: Vec<String>,
    /// Addresses (`address`, `invoice_address`, `mail_drop_address`).
    pub addresses: Vec<String>,
}

impl Written {
    /// Whether nothing is written to customers.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.custom.is_empty() && self.addresses.is_empty()
    }

    /// The fields [`flatten`] names (`surname`, `custom_fields.Segment`,
    /// `address.city`), as what to read of a customer.
    pub fn of_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Written {
        let mut w = Written::default();
        for name in names {
            let (list, key) = match name.split_once('.') {
                Some(("custom_fields", key)) => (&mut w.custom, key),
                Some((outer, _)) => (&mut w.addresses, outer),
                None => (&mut w.fields, name),
            };
            if !list.iter().any(|k| k == key) {
                list.push(key.to_string());
            }
        }
        w
    }

    /// Whether the custom fields must be asked for (`include_custom_fields`).
    pub fn custom_fields(&self) -> bool {
        !self.custom.is_empty()
    }
}

/// A payload's fields as `(name, value)`, one level of objects flattened
/// (`custom_fields.Segment`, `address.city`), bookkeeping fields left out
/// (`customer_id`, `fill_read_only_custom_fields`).
pub fn flatten(payload: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    if let Value::Object(map) = payload {
        for (name, value) in map {
            if matches!(
                name.as_str(),
                "customer_id" | "fill_read_only_custom_fields"
            ) {
                continue;
            }
            match value {
                Value::Object(inner) => {
                    for (key, v) in inner {
                        out.push((format!("{name}.{key}"), v.clone()));
                    }
                }
                v => out.push((name.clone(), v.clone())),
            }
        }
    }
    out
}

/// Whether Thulium's value `a` and the row's `b` of `field` are the same
/// value, read liberally (see the module's notes).
pub fn same(field: &str, a: &Value, b: &Value) -> bool {
    let norm = |v: &str| -> String {
        match field {
            "email" => SearchKey::Email.normalise(v),
            "phone_number" | "phone_numbers" => SearchKey::PhoneNumber.normalise(v),
            _ => v.trim().to_string(),
        }
    };
    let mut x: Vec<String> = texts(a).iter().map(|t| norm(t)).collect();
    let mut y: Vec<String> = texts(b).iter().map(|t| norm(t)).collect();
    x.retain(|t| !t.is_empty());
    y.retain(|t| !t.is_empty());
    x.sort();
    x.dedup();
    y.sort();
    y.dedup();
    if x == y {
        return true;
    }
    // A flag answered as 1/0 against a boolean sent.
    let flag = |v: &[String]| match v {
        [t] if t == "1" || t == "true" => Some(true),
        [t] if t == "0" || t == "false" => Some(false),
        [] => Some(false),
        _ => None,
    };
    matches!((a, b), (_, Value::Bool(_)) | (Value::Bool(_), _))
        && flag(&x).is_some()
        && flag(&x) == flag(&y)
}

/// A value's canonical text for `field`, such that two values [`same`]
/// reads as equal have one canonical text (normalised texts, empty ones
/// left out, sorted, deduplicated; a flag as `1` or nothing): what the
/// undo file hashes, so that a later edit can be told from what a run
/// wrote without keeping the value.
pub fn canonical(field: &str, v: &Value) -> String {
    let flag = field == "vip" || matches!(v, Value::Bool(_));
    let mut x: Vec<String> = texts(v)
        .iter()
        .map(|t| match field {
            "email" => SearchKey::Email.normalise(t),
            "phone_number" | "phone_numbers" => SearchKey::PhoneNumber.normalise(t),
            _ => t.trim().to_string(),
        })
        .filter_map(|t| match t.as_str() {
            "true" | "1" if flag => Some("1".to_string()),
            "false" | "0" if flag => None,
            _ => Some(t),
        })
        .filter(|t| !t.is_empty())
        .collect();
    x.sort();
    x.dedup();
    x.join("\u{1f}")
}

/// Whether a value is empty as Thulium shows it (`null`, `""`, `[]`).
pub fn is_empty(v: &Value) -> bool {
    texts(v).iter().all(|t| t.trim().is_empty())
}

/// A value as its texts: one for a scalar, each item's for a list, none
/// for `null`.
fn texts(v: &Value) -> Vec<String> {
    match v {
        Value::Null => Vec::new(),
        Value::String(s) => vec![s.clone()],
        Value::Number(n) => vec![n.to_string()],
        Value::Bool(b) => vec![b.to_string()],
        Value::Array(items) => items.iter().flat_map(texts).collect(),
        Value::Object(o) => o.values().flat_map(texts).collect(),
    }
}
