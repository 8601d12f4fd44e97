//! What Thulium holds now for a customer, in the fields a mapping writes:
//! read with the index (`GET customers` pages) or a lookup, kept beside
//! the customer's id, and compared field by field with what a row would
//! send. `plan` shows the differences, `undo` keeps the values an update
//! overwrites, and `update = "if_empty"` / `"never"` decide from them.
//!
//! Values are compared the way Thulium answers them, liberally: `null`,
//! `""` and a missing list are all empty; numbers and booleans compare as
//! their text (`"1"` is `1`, `"1"` is `true`); e-mail addresses ignore
//! case and phone numbers compare by their digits; lists compare as sets.
//!
//! These are customers' data: they live in memory for one run and go to
//! stdout (`plan`) or the undo file (before-images), never into the ledger
//! or the sync state.

use serde_json::{Map, Value};

use crate::api::customers::FoundCustomer;
pub use crate::api::values::{canonical, flatten, is_empty, same, Written};

impl Written {
    /// The fields of a listed customer worth keeping, as a [`Current`].
    pub fn keep(&self, customer: &FoundCustomer) -> Current {
        let f = &customer.fields;
        let mut kept = Map::new();
        for name in &self.fields {
            let value = match name.as_str() {
                // `GET customers/:id` gives one number as `phone_number`
                // and every number as `phone_numbers`.
                "phone_number" => match (f.get("phone_numbers"), f.get("phone_number")) {
                    (Some(list @ Value::Array(_)), _) => Some(list.clone()),
                    (_, v) => v.cloned(),
                },
                other => f.get(other).cloned(),
            };
            if let Some(v) = value {
                kept.insert(name.clone(), v);
            }
        }
        if let Some(Value::Object(custom)) = f.get("custom_fields") {
            let mut inner = Map::new();
            for name in &self.custom {
                // Listed with `null` when unset; absent when not asked for.
                if let Some(v) = custom.get(name) {
                    inner.insert(name.clone(), v.clone());
                }
            }
            kept.insert("custom_fields".into(), Value::Object(inner));
        }
        for name in &self.addresses {
            if let Some(v) = f.get(name) {
                kept.insert(name.clone(), v.clone());
            }
        }
        Current(Value::Object(kept).to_string().into_boxed_str())
    }
}

/// A customer's values in the fields a mapping writes, as Thulium listed
/// them: compact JSON text (a few dozen bytes a customer), read back when
/// a row's update is decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current(Box<str>);

impl Current {
    /// The kept fields, by the API's names (custom fields under
    /// `custom_fields`, addresses as objects).
    pub fn fields(&self) -> Map<String, Value> {
        match serde_json::from_str(&self.0) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        }
    }

    /// The value of one field as [`flatten`] names it (`surname`,
    /// `custom_fields.Segment`, `address.city`): `None` when Thulium's
    /// answer did not carry it (not known), as opposed to an empty value.
    pub fn get(&self, field: &str) -> Option<Value> {
        lookup(&self.fields(), field)
    }

    /// The size of the text kept, in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing at all was kept.
    pub fn is_empty(&self) -> bool {
        self.0.len() <= 2
    }
}

fn lookup(fields: &Map<String, Value>, field: &str) -> Option<Value> {
    match field.split_once('.') {
        Some((outer, inner)) => match fields.get(outer)? {
            Value::Object(o) => o.get(inner).cloned(),
            // An address or custom-field object answered as `null`:
            // every part of it is empty.
            Value::Null => Some(Value::Null),
            _ => None,
        },
        None => fields.get(field).cloned(),
    }
}

/// One field whose value in Thulium differs from the row's.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub field: String,
    /// Thulium's value now (`Value::Null` when empty).
    pub from: Value,
    /// The value the row sends.
    pub to: Value,
}

/// What comparing a payload with a customer's current values found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Compared {
    /// Fields whose value differs.
    pub changes: Vec<Change>,
    /// Fields Thulium's answer did not carry: their change is not known.
    pub unknown: Vec<String>,
}

/// The fields of `payload` (a customer as an update sends it) whose
/// value differs from `current`'s.
pub fn compare(payload: &Value, current: &Current) -> Compared {
    let now = current.fields();
    let mut out = Compared::default();
    for (field, to) in flatten(payload) {
        match lookup(&now, &field) {
            None => out.unknown.push(field),
            Some(from) if !same(&field, &from, &to) => out.changes.push(Change { field, from, to }),
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn customer(v: Value) -> FoundCustomer {
        FoundCustomer {
            customer_id: 1,
            fields: v.as_object().unwrap().clone(),
        }
    }

    fn written() -> Written {
        Written {
            fields: vec!["surname".into(), "email".into(), "phone_number".into()],
            custom: vec!["Segment".into(), "Unset".into()],
            addresses: vec![],
        }
    }

    #[test]
    fn only_written_fields_are_kept() {
        let c = written().keep(&customer(json!({
            "customer_id": 1, "name": "Jan", "surname": "Nowak", "email": "",
            "phone_number": "48601", "phone_numbers": ["48601", "48602"],
            "custom_fields": {"Segment": "A", "Other": "x", "Unset": null}
        })));
        let f = c.fields();
        assert_eq!(f.get("name"), None);
        assert_eq!(f.get("surname"), Some(&json!("Nowak")));
        assert_eq!(c.get("phone_number"), Some(json!(["48601", "48602"])));
        assert_eq!(c.get("custom_fields.Segment"), Some(json!("A")));
        assert_eq!(c.get("custom_fields.Unset"), Some(Value::Null));
        assert_eq!(c.get("custom_fields.Other"), None);
    }

    #[test]
    fn differences_are_read_liberally() {
        let c = written().keep(&customer(json!({
            "surname": "STARY-Nowak", "email": "Jan@Example.PL", "phone_number": "+48 601",
            "custom_fields": {"Segment": null}
        })));
        let cmp = compare(
            &json!({"customer_id": 1, "surname": "Nowak", "email": ["jan@example.pl"],
                    "phone_number": "48601", "custom_fields": {"Segment": "", "Missing": "x"},
                    "note": "n"}),
            &c,
        );
        assert_eq!(
            cmp.changes,
            [Change {
                field: "surname".into(),
                from: json!("STARY-Nowak"),
                to: json!("Nowak")
            }]
        );
        assert_eq!(cmp.unknown, ["custom_fields.Missing", "note"]);
        assert!(same("vip", &json!("1"), &json!(true)));
        assert!(!same("vip", &json!("0"), &json!(true)));
        assert!(same("company_id", &json!("12"), &json!(12)));
        assert!(is_empty(&json!([""])) && is_empty(&Value::Null) && !is_empty(&json!(0)));
    }

    #[test]
    fn canonical_texts_agree_with_same() {
        for (field, a, b) in [
            ("email", json!("Jan@Example.PL"), json!(["jan@example.pl"])),
            ("phone_number", json!("+48 601"), json!(["48601"])),
            ("vip", json!("1"), json!(true)),
            ("vip", json!(""), json!(false)),
            ("company_id", json!("12"), json!(12)),
            ("surname", json!(" Nowak "), json!("Nowak")),
            ("note", Value::Null, json!("")),
        ] {
            assert!(same(field, &a, &b), "{field}");
            assert_eq!(canonical(field, &a), canonical(field, &b), "{field}");
        }
        assert_ne!(
            canonical("surname", &json!("A")),
            canonical("surname", &json!("B"))
        );
        assert_ne!(
            canonical("note", &json!("0")),
            canonical("note", &json!(""))
        );
        let w = Written::of_names([
            "surname",
            "custom_fields.Segment",
            "address.city",
            "address.street",
        ]);
        assert_eq!(w.fields, ["surname"]);
        assert_eq!(w.custom, ["Segment"]);
        assert_eq!(w.addresses, ["address"]);
    }
}
