//! The customer fields `GET customers` searches by, which a mapping's
//! `match` names: how a value of each is compared (normalised) and hashed.

use crate::hash::{hash_parts, KeyHash};

/// A customer field `GET customers` can search by (and a mapping can match
/// customers on).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SearchKey {
    Identifier,
    Email,
    PhoneNumber,
    Nip,
    /// `custom_fields[Name][]=value`.
    CustomField(String),
}

impl SearchKey {
    /// The key as a mapping writes it (`identifier`, `custom_fields.Name`).
    pub fn name(&self) -> String {
        match self {
            SearchKey::Identifier => "identifier".into(),
            SearchKey::Email => "email".into(),
            SearchKey::PhoneNumber => "phone_number".into(),
            SearchKey::Nip => "nip".into(),
            SearchKey::CustomField(n) => format!("custom_fields.{n}"),
        }
    }

    /// Reads a key as a mapping writes it.
    pub fn parse(s: &str) -> Option<SearchKey> {
        Some(match s {
            "identifier" => SearchKey::Identifier,
            "email" => SearchKey::Email,
            "phone_number" => SearchKey::PhoneNumber,
            "nip" => SearchKey::Nip,
            _ => {
                let name = s.strip_prefix("custom_fields.")?;
                if name.is_empty() {
                    return None;
                }
                SearchKey::CustomField(name.to_string())
            }
        })
    }

    /// A value as it is compared: e-mail addresses without case, phone
    /// numbers and NIPs by their digits, identifiers and custom fields
    /// exactly (spaces around them aside).
    pub fn normalise(&self, value: &str) -> String {
        let value = value.trim();
        match self {
            SearchKey::Email => value.to_lowercase(),
            SearchKey::PhoneNumber | SearchKey::Nip => {
                value.chars().filter(char::is_ascii_digit).collect()
            }
            SearchKey::Identifier | SearchKey::CustomField(_) => value.to_string(),
        }
    }

    /// The hash of `value` as a value of this key (of the key's name and
    /// the normalised value): what the index and the sync state hold.
    pub fn hash(&self, value: &str) -> KeyHash {
        hash_parts([self.name().as_bytes(), self.normalise(value).as_bytes()])
    }

    /// The query parameter's name, as the vendor documents it.
    pub(super) fn parameter(&self) -> String {
        match self {
            SearchKey::CustomField(n) => format!("custom_fields[{}][]", super::encode(n)),
            other => other.name(),
        }
    }
}
