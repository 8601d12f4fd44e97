//! Which column becomes which customer field: the pairs of column and
//! field best named first (a column of PESEL or NIP numbers pairs with its
//! field by its values, above a weak name), then a whole name or a company
//! as the surname when no column is one, e-mail addresses found by their
//! values, a surname guessed (loudly) when nothing else will do, and the
//! columns whose valid values are unique suggested as `match` keys.

use std::collections::HashSet;

use super::names::{fits, score, target_named, Table, Target, TARGETS};
use super::profile::{IdNumber, Kind, Profile};
use crate::validate::is_email;

/// A column chosen for a target, and how.
#[derive(Debug)]
pub(super) struct Choice {
    pub(super) target: &'static Target,
    /// The column's index in the header.
    pub(super) column: usize,
    /// Why, when not by its name alone.
    pub(super) how: Option<String>,
}

/// The columns chosen, and the `match` keys suggested.
#[derive(Debug, Default)]
pub(super) struct Chosen {
    /// Customer and address fields, in the order of [`TARGETS`].
    pub(super) fields: Vec<Choice>,
    /// The column of Thulium's customer ids (`[source] customer_id`).
    pub(super) customer_id: Option<usize>,
    pub(super) match_keys: Vec<&'static str>,
    /// Why each key was or was not suggested.
    pub(super) match_why: Vec<String>,
}

impl Chosen {
    fn column_of(&self, key: &str) -> Option<usize> {
        self.fields
            .iter()
            .find(|c| c.target.key == key && c.target.table != Table::Address)
            .map(|c| c.column)
    }

    fn used(&self, column: usize) -> bool {
        self.customer_id == Some(column) || self.fields.iter().any(|c| c.column == column)
    }

    /// The columns not chosen for anything.
    pub(super) fn unused(&self, columns: usize) -> impl Iterator<Item = usize> + '_ {
        (0..columns).filter(|&c| !self.used(c))
    }
}

/// Matches columns to targets: by name, best pairs first; then the
/// fallbacks for a surname and an e-mail; then the `match` keys.
pub(super) fn choose(columns: &[Profile], sampled: u64, notes: &mut Vec<String>) -> Chosen {
    let mut chosen = Chosen::default();
    let fallback = by_name(columns, &mut chosen);
    if chosen.column_of("surname").is_none() {
        surname_from_fallback(&mut chosen, &fallback);
    }
    if chosen.column_of("email").is_none() {
        email_by_values(columns, &mut chosen);
    }
    if chosen.column_of("surname").is_none() {
        guess_surname(columns, &mut chosen, notes);
    }
    suggest_match(columns, &mut chosen, sampled, notes);
    chosen.fields.sort_by_key(|c| {
        TARGETS
            .iter()
            .position(|t| t.key == c.target.key && t.table == c.target.table)
            .unwrap_or(usize::MAX)
    });
    chosen
}

/// Every pair of column and target the name allows and the values do
/// not veto, as (score, column, target): best score first; among equals,
/// the column further left.
fn pairs(columns: &[Profile]) -> Vec<(u32, usize, usize)> {
    let mut pairs = Vec::new();
    for (c, column) in columns.iter().enumerate() {
        for (t, target) in TARGETS.iter().enumerate() {
            let s = score(column, target).max(by_values(column, target).0);
            // A weak name makes an identifier only of unique values.
            let unique_enough = target.key != "identifier" || s >= 95 || column.unique(false);
            if s > 0 && fits(column, target) && unique_enough {
                pairs.push((s, c, t));
            }
        }
    }
    pairs.sort_by_key(|&(s, c, t)| (std::cmp::Reverse(s), c, t));
    pairs
}

/// How well a column's values say `target`, whatever its name: 70 (above
/// a name that only starts or ends with the field's, below a near miss)
/// for PESEL and NIP numbers, whose checksums few other numbers pass;
/// with the reason `init` writes.
fn by_values(column: &Profile, target: &Target) -> (u32, &'static str) {
    match (target.key, column.id_number) {
        ("pesel", Some(IdNumber::Pesel)) => (70, "by its values: PESEL numbers (checksums valid)"),
        ("nip", Some(IdNumber::Nip { .. })) => (70, "by its values: NIP numbers (checksums valid)"),
        _ => (0, ""),
    }
}

/// Takes the best pairs, each column and each target once, into
/// `chosen`; returns the whole names and companies found, as (target,
/// column), for a surname when no column is one.
fn by_name(columns: &[Profile], chosen: &mut Chosen) -> Vec<(usize, usize)> {
    let mut fallback: Vec<(usize, usize)> = Vec::new(); // (target, column)
    let (mut taken_c, mut taken_t) = (HashSet::new(), HashSet::new());
    for (s, c, t) in pairs(columns) {
        if taken_c.contains(&c) || taken_t.contains(&t) {
            continue;
        }
        let target = &TARGETS[t];
        taken_c.insert(c);
        taken_t.insert(t);
        match target.table {
            Table::Source => chosen.customer_id = Some(c),
            Table::Fallback => fallback.push((t, c)),
            _ => {
                let (by_values, why) = by_values(&columns[c], target);
                let how = if by_values == s && score(&columns[c], target) < s {
                    Some(why.to_string())
                } else {
                    (s <= 80).then(|| "by a name close to it".to_string())
                };
                chosen.fields.push(Choice {
                    target,
                    column: c,
                    how,
                })
            }
        }
    }
    fallback
}

/// A whole name, or a company, is the surname when nothing else is.
fn surname_from_fallback(chosen: &mut Chosen, fallback: &[(usize, usize)]) {
    let surname = target_named("surname");
    if let Some(&(t, c)) = fallback.first() {
        chosen.fields.push(Choice {
            target: surname,
            column: c,
            how: Some(format!(
                "the {} (no separate surname column): Thulium requires a surname",
                TARGETS[t].key
            )),
        });
    }
}

/// E-mail addresses are recognised by their values too.
fn email_by_values(columns: &[Profile], chosen: &mut Chosen) {
    if let Some(c) =
        (0..columns.len()).find(|&c| !chosen.used(c) && matches!(columns[c].kind, Kind::Email(_)))
    {
        chosen.fields.push(Choice {
            target: target_named("email"),
            column: c,
            how: Some("by its values: e-mail addresses".into()),
        });
    }
}

/// Thulium needs a surname to create a customer: guess, loudly (the text
/// column with the most different values, else the first column left).
fn guess_surname(columns: &[Profile], chosen: &mut Chosen, notes: &mut Vec<String>) {
    let guess = (0..columns.len())
        .filter(|&c| !chosen.used(c) && columns[c].kind == Kind::Text)
        .max_by_key(|&c| (columns[c].distinct, std::cmp::Reverse(c)))
        .or_else(|| (0..columns.len()).find(|&c| !chosen.used(c)));
    if let Some(c) = guess {
        notes.push(format!(
            "no column looks like a surname: customer.surname is a guess (\"{}\"); Thulium requires one — correct it",
            columns[c].name
        ));
        chosen.fields.push(Choice {
            target: target_named("surname"),
            column: c,
            how: Some("A GUESS: no column looks like a surname; Thulium requires one".into()),
        });
    }
}

/// `identifier`, then `email`, as `match` keys when their valid values
/// are unique in the sample (an e-mail without case; a value that is not
/// an address, such as a placeholder many rows share, is left out of the
/// comparison and said in a note).
fn suggest_match(columns: &[Profile], chosen: &mut Chosen, sampled: u64, notes: &mut Vec<String>) {
    for key in ["identifier", "email"] {
        let Some(c) = chosen.column_of(key) else {
            continue;
        };
        let column = &columns[c];
        let several = matches!(column.kind, Kind::Email(Some(_)));
        let email = key == "email";
        let unique = column.uniqueness(email, |v| !email || is_email(v));
        let invalid = (unique.invalid > 0).then(|| {
            format!(
                "{} (left out of the uniqueness check)",
                crate::text::count(unique.invalid as u64, "invalid value")
            )
        });
        if !several && unique.valid > 0 && unique.repeated == 0 {
            chosen.match_keys.push(key);
            let mut why = format!(
                "{key} (\"{}\"): unique in the {} rows sampled, {} of them filled",
                column.name, sampled, column.filled
            );
            if let Some(invalid) = &invalid {
                why.push_str(&format!("; {invalid}"));
                notes.push(format!("e-mail (\"{}\"): {invalid}", column.name));
            }
            chosen.match_why.push(why);
        } else if column.filled > 0 {
            let why = if several {
                "cells hold several addresses".to_string()
            } else if unique.valid == 0 {
                "no valid value in the rows sampled".to_string()
            } else {
                let mut why = format!(
                    "{} in the rows sampled",
                    match unique.repeated {
                        1 => "1 value repeats".to_string(),
                        n => format!("{n} values repeat"),
                    }
                );
                if let Some(invalid) = &invalid {
                    why.push_str(&format!("; {invalid}"));
                }
                why
            };
            chosen
                .match_why
                .push(format!("not {key} (\"{}\"): {why}", column.name));
        }
    }
}
