//! What a column's sampled values are, whatever its name says: e-mail
//! addresses (one or several a cell), dates (which format, day or month
//! first), yes/no words, whole numbers, phone numbers, PESEL and NIP
//! numbers (by their checksums), and whether every valid value is
//! different (a `match` key). The names of the columns are the
//! business of `names`; this room looks only at the values.

use std::collections::HashSet;
use std::io::Read;

use crate::mapping::date::DateFormat;
use crate::source::{Source, SourceError};
use crate::validate::{is_email, is_nip, is_pesel};

/// The first rows of a file, column by column.
#[derive(Debug)]
pub(super) struct Sample {
    /// One profile per column of the header, in its order.
    pub(super) columns: Vec<Profile>,
    /// The data rows looked at.
    pub(super) rows: u64,
    /// Rows among them that could not be read.
    pub(super) unreadable: u64,
}

/// Reads up to `limit` data rows of `source` and profiles each column.
pub(super) fn sample(source: &mut Source<impl Read>, limit: u64) -> Result<Sample, SourceError> {
    let mut columns: Vec<Profile> = source.header().iter().map(|h| Profile::new(h)).collect();
    let (mut rows, mut unreadable) = (0u64, 0u64);
    while let Some(next) = source.next_row() {
        if rows >= limit {
            break;
        }
        rows += 1;
        match next? {
            Ok(row) => {
                for (profile, cell) in columns.iter_mut().zip(row.cells.iter()) {
                    profile.add(cell);
                }
            }
            Err(_) => unreadable += 1,
        }
    }
    for column in &mut columns {
        column.finish();
    }
    Ok(Sample {
        columns,
        rows,
        unreadable,
    })
}

/// One column's sampled values and what they look like.
#[derive(Debug)]
pub(super) struct Profile {
    /// The column's name in the header.
    pub(super) name: String,
    /// The values that are not blank, trimmed.
    pub(super) values: Vec<String>,
    /// How many cells are not blank.
    pub(super) filled: usize,
    /// How many different values there are.
    pub(super) distinct: usize,
    pub(super) kind: Kind,
    /// Phone numbers (most values), and the separator of cells with several.
    pub(super) phone: Option<Option<char>>,
    /// PESEL or NIP numbers (most values, their checksums valid).
    pub(super) id_number: Option<IdNumber>,
}

/// A Polish identity number a column holds, told by its checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IdNumber {
    Pesel,
    /// NIPs; `separated` when some are written with spaces, dashes or a
    /// `PL` prefix (`123-456-78-90`), which `transform = ["digits"]` takes
    /// out.
    Nip {
        separated: bool,
    },
}

/// What a column's values are.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Kind {
    Empty,
    /// E-mail addresses; `Some(sep)` when some cells hold several.
    Email(Option<char>),
    Date(DateGuess),
    /// Yes/no: the words for true and false.
    Bool(&'static str, &'static str),
    Integer,
    Text,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct DateGuess {
    pub(super) format: &'static str,
    /// Values that do not read as the format.
    pub(super) misses: usize,
    /// Day and month order not settled by the sample (no value over 12).
    pub(super) ambiguous: bool,
}

/// The words a yes/no column uses, `true` word first.
const BOOLS: &[(&str, &str)] = &[
    ("tak", "nie"),
    ("t", "n"),
    ("yes", "no"),
    ("y", "n"),
    ("true", "false"),
    ("prawda", "fałsz"),
    ("1", "0"),
];

/// Date formats tried, day-first before month-first; within one, the
/// date alone before the date and time.
const DATE_FORMATS: &[&str] = &[
    "%Y-%m-%d",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d %H:%M:%S",
    "%d.%m.%Y",
    "%d.%m.%Y %H:%M",
    "%d.%m.%Y %H:%M:%S",
    "%d/%m/%Y",
    "%d/%m/%Y %H:%M",
    "%d/%m/%Y %H:%M:%S",
    "%m/%d/%Y",
    "%m/%d/%Y %H:%M",
    "%m/%d/%Y %H:%M:%S",
    "%d-%m-%Y",
    "%d-%m-%Y %H:%M",
    "%Y.%m.%d",
    "%Y/%m/%d",
    "%d.%m.%y",
];

impl Profile {
    fn new(name: &str) -> Profile {
        Profile {
            name: name.to_string(),
            values: Vec::new(),
            filled: 0,
            distinct: 0,
            kind: Kind::Empty,
            phone: None,
            id_number: None,
        }
    }

    fn add(&mut self, cell: &str) {
        let cell = cell.trim();
        if !cell.is_empty() {
            self.filled += 1;
            self.values.push(cell.to_string());
        }
    }

    fn finish(&mut self) {
        self.distinct = self.values.iter().collect::<HashSet<_>>().len();
        self.kind = kind(&self.values);
        self.phone = most(&self.values, |v| list_of(v, looks_like_phone));
        self.id_number = id_number(&self.values);
    }

    /// Whether every value is different (and there is one).
    pub(super) fn unique(&self, fold: bool) -> bool {
        self.uniqueness(fold, |_| true).repeated == 0 && self.filled > 0
    }

    /// How unique the values `valid` accepts are (an e-mail key: the
    /// addresses; a placeholder such as `jan.kowalski(at)example` written
    /// in many rows is not a customer, and is no reason to refuse the
    /// key), compared without case when `fold`.
    pub(super) fn uniqueness(&self, fold: bool, valid: impl Fn(&str) -> bool) -> Uniqueness {
        let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        let mut invalid = 0;
        for v in &self.values {
            if !valid(v) {
                invalid += 1;
                continue;
            }
            let key = if fold { v.to_lowercase() } else { v.clone() };
            *seen.entry(key).or_default() += 1;
        }
        Uniqueness {
            valid: self.values.len() - invalid,
            invalid,
            repeated: seen.values().filter(|&&n| n > 1).count(),
        }
    }

    /// The first three different values.
    pub(super) fn examples(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.values
            .iter()
            .map(String::as_str)
            .filter(|v| seen.insert(*v))
            .take(3)
            .collect()
    }
}

/// How unique a column's valid values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Uniqueness {
    /// Values counted.
    pub(super) valid: usize,
    /// Values left out as invalid.
    pub(super) invalid: usize,
    /// Different values found in more than one row.
    pub(super) repeated: usize,
}

/// PESEL when most values (four in five) are PESELs; otherwise NIP when
/// most are NIPs, as digits or with the usual separators. A checksum
/// passes for one number in ten or eleven at random, so most values of a
/// column of other numbers (phones, ids) never do.
fn id_number(values: &[String]) -> Option<IdNumber> {
    if most(values, |v| is_pesel(v).then_some(None)).is_some() {
        return Some(IdNumber::Pesel);
    }
    let separated = most(values, |v| {
        let digits = nip_digits(v)?;
        is_nip(&digits).then_some((digits.len() != v.len()).then_some('-'))
    })?;
    Some(IdNumber::Nip {
        separated: separated.is_some(),
    })
}

/// A NIP as people write one (`PL 123-456-78-90`, `123 45 67 890`): its
/// digits, when only spaces and dashes (and a `PL` in front) are around them.
fn nip_digits(v: &str) -> Option<String> {
    let v = v.trim();
    let v = match v.get(..2) {
        Some(pl) if pl.eq_ignore_ascii_case("pl") => v[2..].trim_start(),
        _ => v,
    };
    v.chars()
        .all(|c| c.is_ascii_digit() || c == '-' || c == ' ')
        .then(|| v.chars().filter(char::is_ascii_digit).collect())
}

/// What most values (four in five) are; `Some(sep)` when some needed
/// splitting on `sep`.
fn most(values: &[String], each: impl Fn(&str) -> Option<Option<char>>) -> Option<Option<char>> {
    if values.is_empty() {
        return None;
    }
    let mut hits = 0;
    let mut sep = None;
    for v in values {
        if let Some(s) = each(v) {
            hits += 1;
            sep = sep.or(s);
        }
    }
    (hits * 5 >= values.len() * 4).then_some(sep)
}

/// `Some(None)` when `v` is one item, `Some(Some(sep))` when it is several
/// separated by `,` or `;`.
fn list_of(v: &str, item: impl Fn(&str) -> bool) -> Option<Option<char>> {
    if item(v) {
        return Some(None);
    }
    for sep in [',', ';'] {
        let parts: Vec<&str> = v.split(sep).map(str::trim).collect();
        if parts.len() > 1 && parts.iter().all(|p| p.is_empty() || item(p)) {
            return Some(Some(sep));
        }
    }
    None
}

/// A phone number as people write one: 6 to 15 digits, maybe a leading
/// `+`, spaces, dashes, dots and parentheses, no letters.
fn looks_like_phone(v: &str) -> bool {
    let v = v.trim();
    let v = v.strip_prefix('+').unwrap_or(v);
    let digits = v.chars().filter(char::is_ascii_digit).count();
    (6..=15).contains(&digits)
        && v.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')' | '/'))
}

fn kind(values: &[String]) -> Kind {
    if values.is_empty() {
        return Kind::Empty;
    }
    if let Some(sep) = most(values, |v| list_of(v, is_email)) {
        return Kind::Email(sep);
    }
    if let Some(date) = date_guess(values) {
        return Kind::Date(date);
    }
    if let Some((yes, no)) = yes_no(values) {
        return Kind::Bool(yes, no);
    }
    let whole = |v: &String| {
        let d = v.strip_prefix('-').unwrap_or(v);
        (1..=15).contains(&d.len())
            && d.bytes().all(|b| b.is_ascii_digit())
            && (d == "0" || !d.starts_with('0'))
    };
    if values.iter().all(whole) {
        return Kind::Integer;
    }
    Kind::Text
}

/// The yes/no words most values (four in five) are, both of them seen;
/// 1 and 0 only when every value is one of them (a count is as likely).
fn yes_no(values: &[String]) -> Option<(&'static str, &'static str)> {
    let lower: Vec<String> = values.iter().map(|v| v.to_lowercase()).collect();
    BOOLS.iter().copied().find(|&(yes, no)| {
        let hits = lower.iter().filter(|v| *v == yes || *v == no).count();
        let both = lower.iter().any(|v| v == yes) && lower.iter().any(|v| v == no);
        if yes == "1" {
            both && hits == lower.len()
        } else {
            hits > 0 && hits * 5 >= lower.len() * 4
        }
    })
}

/// The date format most values read as (four in five at least).
fn date_guess(values: &[String]) -> Option<DateGuess> {
    let mut best: Option<(&'static str, usize)> = None;
    let mut hits_of = Vec::new();
    for &f in DATE_FORMATS {
        let Ok(format) = DateFormat::new(f) else {
            continue;
        };
        let hits = values.iter().filter(|v| format.parse(v).is_ok()).count();
        hits_of.push((f, hits));
        if best.is_none_or(|(_, h)| hits > h) {
            best = Some((f, hits));
        }
    }
    let (format, hits) = best?;
    if hits == 0 || hits * 5 < values.len() * 4 {
        return None;
    }
    // Day first and month first both read every value: nothing over 12.
    let other = format
        .split_once("%d/%m")
        .map(|(a, b)| format!("{a}%m/%d{b}"));
    let ambiguous = other.is_some_and(|o| hits_of.iter().any(|(f, h)| *f == o && *h == hits));
    Some(DateGuess {
        format,
        misses: values.len() - hits,
        ambiguous,
    })
}

/// A column profiled from `values`, as [`sample`] would.
#[cfg(test)]
pub(super) fn profile(name: &str, values: &[&str]) -> Profile {
    let mut p = Profile::new(name);
    for v in values {
        p.add(v);
    }
    p.finish();
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_say_what_a_column_holds() {
        let p = profile("x", &["a@b.pl", "c@d.pl, e@f.pl"]);
        assert_eq!(p.kind, Kind::Email(Some(',')));
        let p = profile("x", &["13/01/2020", "02/03/2021"]);
        assert!(matches!(&p.kind, Kind::Date(d) if d.format == "%d/%m/%Y" && !d.ambiguous));
        let p = profile("x", &["01/13/2020", "02/03/2021"]);
        assert!(matches!(&p.kind, Kind::Date(d) if d.format == "%m/%d/%Y"));
        let p = profile("x", &["01/02/2020"]);
        assert!(matches!(&p.kind, Kind::Date(d) if d.ambiguous));
        assert_eq!(profile("x", &["Tak", "nie"]).kind, Kind::Bool("tak", "nie"));
        assert_eq!(profile("x", &["T", "N", "T"]).kind, Kind::Bool("t", "n"));
        assert_eq!(profile("x", &["1", "1"]).kind, Kind::Integer);
        let mostly = ["tak", "nie", "tak", "nie", "może"];
        assert_eq!(profile("x", &mostly).kind, Kind::Bool("tak", "nie"));
        assert_eq!(profile("x", &["14", "8", "0"]).kind, Kind::Integer);
        assert_eq!(profile("x", &["007"]).kind, Kind::Text);
        let p = profile("x", &["+48 601 234 567", "601234567, 22 735 46 84"]);
        assert_eq!(p.phone, Some(Some(',')));
    }

    #[test]
    fn pesel_and_nip_columns_are_told_by_their_checksums() {
        let p = profile("x", &["44051401359", "02270803624", "02070803628"]);
        assert_eq!(p.id_number, Some(IdNumber::Pesel));
        let p = profile("x", &["5260001246", "1234563218"]);
        assert_eq!(p.id_number, Some(IdNumber::Nip { separated: false }));
        let p = profile("x", &["526-000-12-46", "PL 123-456-32-18"]);
        assert_eq!(p.id_number, Some(IdNumber::Nip { separated: true }));
        // Phone numbers of 11 and 10 digits are not.
        let phones = ["48601234567", "48601234568", "48601234569", "6012345678"];
        assert_eq!(profile("x", &phones).id_number, None);
        assert_eq!(profile("x", &["526-000-12-47"]).id_number, None);
    }

    #[test]
    fn uniqueness_counts_repeated_values_once_and_can_leave_out_invalid_ones() {
        let mut values = vec!["a@b.pl", "c@d.pl", "C@D.pl", "e@f.pl", "e@f.pl"];
        values.extend(["x(at)y"; 7]);
        let p = profile("x", &values);
        let all = p.uniqueness(true, |_| true);
        assert_eq!((all.invalid, all.repeated), (0, 3));
        let valid = p.uniqueness(true, is_email);
        assert_eq!((valid.valid, valid.invalid, valid.repeated), (5, 7, 2));
    }
}
