//! `init`: a first mapping for a file, written from its header and its
//! first rows, so that nobody starts from a blank page.
//!
//! - `[source]` from sniffing: the encoding (UTF-8, or which of the two
//!   Polish 8-bit code pages), a byte-order mark, the delimiter (the one
//!   that splits the first lines into the header's number of fields), or a
//!   spreadsheet's sheet.
//! - Columns matched to customer fields by name ([`TARGETS`]): case,
//!   diacritics, punctuation and words such as "klienta" or "customer"
//!   ignored, Polish and English synonyms, then near misses (one letter
//!   off, with `strsim`). Values can veto a name: an "E-mail" column
//!   without addresses is not mapped to `email`.
//! - Options from the values ([`Profile`]): `phone` for phone numbers,
//!   `split` where cells hold several, a `date` format (day first or month
//!   first decided by values over 12), `map` for yes/no columns, `type =
//!   "integer"` for whole numbers.
//! - A column whose values are unique in the sample suggested as `match`.
//! - Every other column as a commented `custom_fields` line, with samples.
//!
//! The mapping is compiled and checked against the sampled rows before it
//! is written: `check` accepts what `init` writes.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

mod error;
mod profile;
mod sniff;

pub use error::InitError;
use profile::{DateGuess, Kind, Profile, Sample};
use sniff::{sniff, Sniffed};

use crate::check::{self, CheckReport, Input};
use crate::preflight::System;
use crate::source::Source;

/// Where comments start on a mapping line.
const COMMENT_AT: usize = 44;

/// What `init` is asked for.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// A spreadsheet's sheet (default: the first).
    pub sheet: Option<String>,
    /// How many data rows are looked at.
    pub sample: u64,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            sheet: None,
            sample: 1000,
        }
    }
}

/// A mapping written by [`draft`].
#[derive(Debug)]
pub struct Draft {
    /// The mapping's text.
    pub text: String,
    /// What a person should know (printed on stderr).
    pub notes: Vec<String>,
    /// Customer fields mapped: (TOML key, column).
    pub mapped: Vec<(String, String)>,
    /// Columns left as comments.
    pub commented: usize,
    /// The keys suggested as `match`.
    pub match_keys: Vec<&'static str>,
    /// The data rows looked at.
    pub sampled: u64,
}

/// Writes a first mapping for `path` from its header and first rows;
/// `system`, when read (`init --online`), adds what the system has as
/// comments.
pub fn draft(
    path: &Path,
    options: &InitOptions,
    system: Option<&System>,
) -> Result<Draft, InitError> {
    let sniffed = sniff(path, options.sheet.as_deref())?;
    let mut source = Source::open(path, &sniffed.options)?;
    let Sample {
        columns,
        rows: sampled,
        unreadable,
    } = profile::sample(&mut source, options.sample)?;
    let sheet = source.info().sheet.clone();
    let mut notes = Vec::new();
    if sheet.is_none() && options.sheet.is_some() {
        notes.push("--sheet applies to a spreadsheet, not to a CSV: ignored".into());
    }
    if unreadable > 0 {
        notes.push(format!(
            "{unreadable} of the first {sampled} rows could not be read; `check` says why"
        ));
    }
    let chosen = choose(&columns, sampled, &mut notes);
    let mut out = Writer::default();
    out.preamble(path, sampled);
    match &sheet {
        Some(sheet) => out.sheet_source(sheet),
        None => out.csv_source(&sniffed),
    }
    if let Some(col) = chosen.customer_id {
        out.entry(
            "customer_id",
            &quote(&columns[col].name),
            &format!(
                "Thulium customer ids: these rows skip creation; {}",
                samples(&columns[col])
            ),
        );
    }
    out.customer(&columns, &chosen, system);
    if let Some(system) = system {
        out.system(&columns, system);
    }
    let draft = Draft {
        text: out.text,
        notes,
        mapped: chosen
            .fields
            .iter()
            .map(|c| (c.target.key.to_string(), columns[c.column].name.clone()))
            .collect(),
        commented: chosen.unused(columns.len()).count(),
        match_keys: chosen.match_keys.clone(),
        sampled,
    };
    Ok(draft)
}

/// Compiles `text` as the mapping of `path` and checks the first `limit`
/// rows with it, as `check --limit` would.
pub fn verify(path: &Path, text: &str, limit: u64) -> Result<CheckReport, InitError> {
    let invalid = |e: &dyn std::fmt::Display| InitError::Invalid(e.to_string());
    let mapping =
        crate::mapping::parse(Path::new("(init)"), text.to_string()).map_err(|e| invalid(&e))?;
    let options = mapping.source_options().map_err(|e| invalid(&e))?;
    let source = Source::open(path, &options)?;
    let plan = crate::mapping::compile(&mapping, source.header()).map_err(|e| invalid(&e))?;
    let mut input = Input {
        csv: path.into(),
        mapping,
        plan,
        source,
    };
    let report =
        check::check_rows(&mut input, Some(limit), |_, _, _| Ok(())).map_err(|e| match e {
            check::InputError::Source(e) => InitError::Source(e),
            check::InputError::Mapping(e) => invalid(&e),
        })?;
    Ok(report.grouped())
}

/// What `init --online` lists: the field groups with their fields, the
/// campaigns with their statuses (the first 20), the agents.
pub async fn read_system(client: &crate::api::ApiClient) -> Result<System, crate::api::CallError> {
    let mut needs = crate::preflight::Needs {
        field_groups: true,
        campaigns: true,
        agents: true,
        ..Default::default()
    };
    let mut system = System::read(client, &needs).await?;
    needs.campaign_ids = system
        .outbounds
        .iter()
        .flatten()
        .take(20)
        .map(|o| o.id.clone())
        .collect();
    if !needs.campaign_ids.is_empty() {
        needs.field_groups = false;
        needs.agents = false;
        let more = System::read(client, &needs).await?;
        system.campaigns = more.campaigns;
        system.requests += more.requests;
    }
    Ok(system)
}

// ---------------------------------------------------------------------------
// Names

/// What a column can become.
#[derive(Debug)]
pub struct Target {
    /// The TOML key within its table.
    pub key: &'static str,
    table: Table,
    /// Names, as people write them (normalised when compared).
    names: &'static [&'static str],
    /// Names that say less (`ID`, `Tel`): they score below the others.
    generic: &'static [&'static str],
    want: Want,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    Customer,
    Address,
    /// `[source] customer_id`.
    Source,
    /// A whole name or a company: `surname` when nothing else is.
    Fallback,
}

/// What a target's values must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    Any,
    Email,
    Phone,
    Date,
    Bool,
    Integer,
}

macro_rules! target {
    ($key:literal, $table:ident, $want:ident, [$($n:literal),* $(,)?] $(, generic [$($g:literal),*])?) => {
        Target {
            key: $key,
            table: Table::$table,
            names: &[$($n),*],
            generic: &[$($($g),*)?],
            want: Want::$want,
        }
    };
}

/// The customer fields and the names columns go by.
#[rustfmt::skip]
pub static TARGETS: &[Target] = &[
    target!("surname", Customer, Any, ["Nazwisko", "Last Name", "Surname", "Family Name", "Lastname"]),
    target!("name", Customer, Any, ["Imię", "First Name", "Given Name", "Forename", "Imiona"]),
    target!("email", Customer, Email, ["E-mail", "Email", "Adres e-mail", "Email Address", "E-mail address",
        "Adres mailowy", "E-maile", "Emails", "Emaile"], generic ["Mail"]),
    target!("phone_number", Customer, Phone, ["Telefon", "Tel. komórkowy", "Telefon komórkowy", "Tel. kom.",
        "Komórka", "Mobile", "Mobile Phone", "Phone", "Phone Number", "Cell", "Cell Phone", "Numer telefonu",
        "Nr telefonu", "Nr tel.", "Telefony", "Phones", "GSM", "Telefon kontaktowy", "Mobile Number"],
        generic ["Tel"]),
    target!("identifier", Customer, Any, ["ID klienta", "Nr klienta", "Numer klienta", "Kod klienta",
        "Customer ID", "Client ID", "Customer Number", "Customer No", "External ID", "CRM ID", "Identyfikator",
        "Identifier", "Account Number", "Contact ID", "Symbol", "Symbol kontrahenta", "Kod kontrahenta",
        "ID kontrahenta", "Nr kontrahenta", "Akronim"], generic ["ID"]),
    target!("note", Customer, Any, ["Notatka", "Notatki", "Uwagi", "Uwaga", "Note", "Notes", "Comment",
        "Comments", "Komentarz", "Opis", "Description", "Remarks"]),
    target!("nip", Customer, Any, ["NIP", "VAT ID", "VAT Number", "Tax ID", "NIP firmy", "VAT"]),
    target!("pesel", Customer, Any, ["PESEL"]),
    target!("birthdate", Customer, Date, ["Data urodzenia", "Urodziny", "Birth Date", "Birthdate",
        "Date of Birth", "DOB", "Birthday", "Data ur."]),
    target!("vip", Customer, Bool, ["VIP", "Klient VIP", "Is VIP", "VIP customer"]),
    target!("account_manager", Customer, Any, ["Opiekun", "Opiekun klienta", "Account Manager",
        "Account Owner", "Owner", "Handlowiec", "Sales Rep", "Doradca", "Przedstawiciel"],
        generic ["Manager"]),
    target!("job_title", Customer, Any, ["Stanowisko", "Job Title", "Position"], generic ["Title"]),
    target!("job", Customer, Any, ["Zawód", "Job", "Occupation", "Profession"]),
    target!("gender", Customer, Any, ["Płeć", "Gender", "Sex"]),
    target!("homepage", Customer, Any, ["Strona WWW", "WWW", "Website", "Homepage", "Strona internetowa",
        "Web", "Web Page"], generic ["URL"]),
    target!("group", Customer, Any, ["Grupa", "Grupa klientów", "Customer Group", "Group"]),
    target!("street", Address, Any, ["Ulica", "Ul.", "Street", "Address", "Address Line 1", "Street Address",
        "Adres", "Address 1"]),
    target!("building", Address, Any, ["Nr domu", "Numer domu", "Nr budynku", "Numer budynku", "Budynek",
        "Dom", "Building", "Building Number", "House Number", "House No", "Nr bud."], generic ["Nr"]),
    target!("flat", Address, Any, ["Nr lokalu", "Numer lokalu", "Nr mieszkania", "Numer mieszkania", "Lokal",
        "Mieszkanie", "Nr lok.", "Nr m.", "Flat", "Flat Number", "Apartment", "Apt", "Suite", "Unit",
        "Apartment Number"]),
    target!("postcode", Address, Any, ["Kod pocztowy", "Postcode", "Postal Code", "Post Code", "ZIP",
        "ZIP Code", "Zipcode", "Kod poczt."], generic ["Kod"]),
    target!("city", Address, Any, ["Miasto", "Miejscowość", "City", "Town", "Locality"]),
    target!("country", Address, Any, ["Kraj", "Country", "Państwo"]),
    target!("customer_id", Source, Integer, ["Thulium ID", "ID Thulium", "Thulium customer ID",
        "Thulium customer", "Customer ID Thulium", "ID w Thulium"]),
    target!("full name", Fallback, Any, ["Klient", "Imię i nazwisko", "Imię nazwisko", "Nazwisko i imię",
        "Full Name", "Customer Name", "Contact Name", "Nazwa klienta", "Dane klienta", "Name", "Kontakt",
        "Kontrahent", "Nazwa kontrahenta"]),
    target!("company", Fallback, Any, ["Firma", "Company", "Company Name", "Nazwa firmy", "Organizacja",
        "Organization", "Account Name", "Nazwa"]),
];

/// Words that say nothing about the field ("Nazwisko klienta", "Customer
/// Email", "Telefon kontaktowy", "Główny e-mail").
#[rustfmt::skip]
const FILLER: &[&str] = &[
    "klienta", "klientow", "customer", "customers", "client", "clients", "contact", "kontaktu",
    "kontaktowy", "kontaktowe", "kontaktowa", "glowny", "glowna", "primary", "main", "the", "of",
    "adres", "address", "osoby", "person",
];

/// A name as compared: lowercase ASCII letters and digits (Polish letters
/// without their marks), and the same without filler words.
fn names(name: &str) -> (String, String) {
    let words = words(name);
    let compact = words.concat();
    let stripped: String = words
        .iter()
        .filter(|w| !FILLER.contains(&w.as_str()))
        .map(String::as_str)
        .collect();
    (compact, stripped)
}

/// A column's name as compared with the names of the targets.
#[derive(Debug)]
struct Name {
    /// Compact name: lowercase ASCII letters and digits.
    compact: String,
    /// The compact name without filler words ("klienta", "customer").
    stripped: String,
    /// The words of `stripped`.
    tail: Vec<String>,
}

impl Name {
    fn new(name: &str) -> Name {
        let (compact, stripped) = names(name);
        let tail = words(name)
            .into_iter()
            .filter(|w| !FILLER.contains(&w.as_str()))
            .collect();
        Name {
            compact,
            stripped,
            tail,
        }
    }
}

fn words(name: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        let c = match c {
            'ą' | 'á' | 'à' | 'â' | 'ä' | 'ã' => 'a',
            'ć' | 'č' | 'ç' => 'c',
            'ę' | 'é' | 'è' | 'ê' | 'ë' | 'ě' => 'e',
            'ł' => 'l',
            'ń' | 'ñ' | 'ň' => 'n',
            'ó' | 'ò' | 'ô' | 'ö' | 'õ' => 'o',
            'ś' | 'š' => 's',
            'ź' | 'ż' | 'ž' => 'z',
            'í' | 'ì' | 'î' | 'ï' => 'i',
            'ú' | 'ù' | 'û' | 'ü' | 'ů' => 'u',
            'ý' => 'y',
            'ř' => 'r',
            'ť' => 't',
            'ď' => 'd',
            c => c,
        };
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else if !word.is_empty() {
            words.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// How well a column's name says `target`: 100 a name it goes by, 95 the
/// same once filler words are out, 80 one letter off (a near miss), 60 a
/// name that starts with one of the target's, 55 one whose last words are
/// one ("Mailing Zip", "Record ID"). Generic names score 10 less and, but
/// for a few ([`GENERIC_TAILS`]), count only whole. An address part after
/// a qualifier ("Home Street", "Billing City") scores as the part alone,
/// less the qualifier's rank, so that one address is taken whole: the
/// home or mailing one first.
fn score(column: &Profile, target: &Target) -> u32 {
    let column = Name::new(&column.name);
    let mut best = 0;
    let all = target
        .names
        .iter()
        .map(|n| (n, 0))
        .chain(target.generic.iter().map(|n| (n, 10)));
    // "Home Street": the part alone, and the rank of its address.
    let part = (target.table == Table::Address)
        .then(|| qualified(&column.tail))
        .flatten()
        .map(|(rank, rest)| (rank, Name::new(&rest.join(" "))));
    for (name, less) in all {
        let (syn, _) = names(name);
        let mut s = name_score(&column, &syn, less);
        if let Some((rank, part)) = &part {
            s = s.max(name_score(part, &syn, less).saturating_sub(5 + rank));
        }
        best = best.max(s);
    }
    best
}

fn name_score(column: &Name, syn: &str, less: u32) -> u32 {
    let s: u32 = if column.compact == syn {
        100
    } else if !column.stripped.is_empty() && column.stripped == syn {
        95
    } else if less == 0 && syn.len() >= 5 && near(&column.stripped, syn) {
        80
    } else if less == 0 && syn.len() >= 5 && column.stripped.starts_with(syn) {
        60
    } else if (less == 0 && syn.len() >= 3 || GENERIC_TAILS.contains(&syn))
        && ends_with_words(&column.tail, syn)
    {
        55
    } else {
        0
    };
    s.saturating_sub(less)
}

/// Generic names that say the field as a name's last word ("Record ID",
/// "Organization 1 - Title", "Nr tel"); not `Nr`, `Kod` or `URL`.
const GENERIC_TAILS: &[&str] = &["id", "title", "tel", "mail", "manager"];

/// Which address a column is of, when its name starts with a qualifier:
/// its rank (0 home or mailing, 2 business or billing, 4 shipping or
/// other) and the words after it.
fn qualified(words: &[String]) -> Option<(u32, Vec<String>)> {
    const RANKS: &[(&str, u32)] = &[
        ("home", 0),
        ("mailing", 0),
        ("domowy", 0),
        ("zamieszkania", 0),
        ("korespondencyjny", 0),
        ("business", 2),
        ("work", 2),
        ("billing", 2),
        ("firmowy", 2),
        ("siedziby", 2),
        ("shipping", 4),
        ("dostawy", 4),
        ("other", 4),
        ("inny", 4),
    ];
    let (first, rest) = words.split_first()?;
    let rank = RANKS.iter().find(|(q, _)| q == first)?.1;
    (!rest.is_empty()).then(|| (rank, rest.to_vec()))
}

/// Whether the last words of a name (filler words out) are `syn`, and
/// there are words before them.
fn ends_with_words(words: &[String], syn: &str) -> bool {
    let mut tail = String::new();
    for (i, w) in words.iter().enumerate().rev() {
        tail.insert_str(0, w);
        if tail.len() >= syn.len() {
            return tail == syn && i > 0;
        }
    }
    false
}

/// One edit apart (a letter missing, extra, wrong or two swapped), or
/// nearly the same for a long name.
fn near(a: &str, b: &str) -> bool {
    a.len() >= 5
        && (strsim::damerau_levenshtein(a, b) == 1
            || (a.len() >= 9 && strsim::normalized_damerau_levenshtein(a, b) >= 0.88))
}

/// Whether a field of the system is named as a column: the same compact
/// name, or one edit apart.
fn same_name(column: &str, field: &str) -> bool {
    let (column, _) = names(column);
    let (field, _) = names(field);
    column == field || near(&column, &field)
}

/// Whether a column's values allow the target.
fn fits(column: &Profile, target: &Target) -> bool {
    if column.filled == 0 {
        // Nothing says otherwise.
        return true;
    }
    match target.want {
        Want::Any => true,
        Want::Email => matches!(column.kind, Kind::Email(_)),
        Want::Phone => column.phone.is_some(),
        Want::Date => matches!(column.kind, Kind::Date(_)),
        Want::Bool => matches!(column.kind, Kind::Bool(..)),
        Want::Integer => column.kind == Kind::Integer,
    }
}

/// A column chosen for a target, and how.
#[derive(Debug)]
struct Choice {
    target: &'static Target,
    column: usize,
    /// Why, when not by its name alone.
    how: Option<String>,
}

#[derive(Debug, Default)]
struct Chosen {
    fields: Vec<Choice>,
    customer_id: Option<usize>,
    match_keys: Vec<&'static str>,
    /// Why each key was or was not suggested.
    match_why: Vec<String>,
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

    fn unused(&self, columns: usize) -> impl Iterator<Item = usize> + '_ {
        (0..columns).filter(|&c| !self.used(c))
    }
}

/// Matches columns to targets, best pairs first.
fn choose(columns: &[Profile], sampled: u64, notes: &mut Vec<String>) -> Chosen {
    let mut pairs = Vec::new();
    for (c, column) in columns.iter().enumerate() {
        for (t, target) in TARGETS.iter().enumerate() {
            let s = score(column, target);
            // A weak name makes an identifier only of unique values.
            let unique_enough = target.key != "identifier" || s >= 95 || column.unique(false);
            if s > 0 && fits(column, target) && unique_enough {
                pairs.push((s, c, t));
            }
        }
    }
    // Best score first; among equals, the column further left.
    pairs.sort_by_key(|&(s, c, t)| (std::cmp::Reverse(s), c, t));
    let mut chosen = Chosen::default();
    let mut fallback: Vec<(usize, usize)> = Vec::new(); // (target, column)
    let (mut taken_c, mut taken_t) = (HashSet::new(), HashSet::new());
    for (s, c, t) in pairs {
        if taken_c.contains(&c) || taken_t.contains(&t) {
            continue;
        }
        let target = &TARGETS[t];
        taken_c.insert(c);
        taken_t.insert(t);
        match target.table {
            Table::Source => chosen.customer_id = Some(c),
            Table::Fallback => fallback.push((t, c)),
            _ => chosen.fields.push(Choice {
                target,
                column: c,
                how: (s <= 80).then(|| "by a name close to it".to_string()),
            }),
        }
    }
    // A whole name, or a company, is the surname when nothing else is.
    if chosen.column_of("surname").is_none() {
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
    // E-mail addresses are recognised by their values too.
    if chosen.column_of("email").is_none() {
        if let Some(c) = (0..columns.len())
            .find(|&c| !chosen.used(c) && matches!(columns[c].kind, Kind::Email(_)))
        {
            chosen.fields.push(Choice {
                target: target_named("email"),
                column: c,
                how: Some("by its values: e-mail addresses".into()),
            });
        }
    }
    if chosen.column_of("surname").is_none() {
        // Thulium needs a surname to create a customer: guess, loudly.
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
    suggest_match(columns, &mut chosen, sampled);
    chosen.fields.sort_by_key(|c| {
        TARGETS
            .iter()
            .position(|t| t.key == c.target.key && t.table == c.target.table)
            .unwrap_or(usize::MAX)
    });
    chosen
}

fn target_named(key: &str) -> &'static Target {
    TARGETS.iter().find(|t| t.key == key).unwrap_or(&TARGETS[0])
}

/// `identifier`, then `email`, as `match` keys when their values are
/// unique in the sample (an e-mail without case).
fn suggest_match(columns: &[Profile], chosen: &mut Chosen, sampled: u64) {
    for key in ["identifier", "email"] {
        let Some(c) = chosen.column_of(key) else {
            continue;
        };
        let column = &columns[c];
        let several = matches!(column.kind, Kind::Email(Some(_)));
        if !several && column.unique(key == "email") {
            chosen.match_keys.push(key);
            chosen.match_why.push(format!(
                "{key} (\"{}\"): unique in the {} rows sampled, {} of them filled",
                column.name, sampled, column.filled
            ));
        } else if column.filled > 0 {
            chosen.match_why.push(format!(
                "not {key} (\"{}\"): {}",
                column.name,
                if several {
                    "cells hold several addresses".to_string()
                } else {
                    format!(
                        "{} values repeat in the rows sampled",
                        column.filled - column.distinct.min(column.filled)
                    )
                }
            ));
        }
    }
}

// ---------------------------------------------------------------------------
// Writing

#[derive(Debug, Default)]
struct Writer {
    text: String,
}

impl Writer {
    fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
    }

    /// `key = value` with a comment at [`COMMENT_AT`].
    fn entry(&mut self, key: &str, value: &str, comment: &str) {
        let code = format!("{key} = {value}");
        self.commented_code(&code, comment);
    }

    fn commented_code(&mut self, code: &str, comment: &str) {
        if comment.is_empty() {
            self.line(code);
        } else {
            let width = code.chars().count();
            let pad = COMMENT_AT.saturating_sub(width).max(1);
            self.line(&format!("{code}{}# {comment}", " ".repeat(pad)));
        }
    }

    fn preamble(&mut self, path: &Path, sampled: u64) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        self.line(&format!(
            "# Mapping for {} written by `thulium-import init` (version {}) from",
            comment_safe(&name),
            env!("CARGO_PKG_VERSION")
        ));
        self.line(&format!(
            "# its header and its first {sampled} data rows. Each choice is commented with"
        ));
        self.line("# the column's sample values: read them, correct what is wrong, then");
        self.line("# `thulium-import check <FILE> --mapping <THIS FILE>`. The language is in");
        self.line("# mappings/README.md. The comments quote the file's values: keep this file");
        self.line("# as private as the export.");
        self.line("");
    }

    fn csv_source(&mut self, sniffed: &Sniffed) {
        self.line("[source]");
        let encoding = sniffed
            .options
            .encoding
            .unwrap_or(encoding_rs::UTF_8)
            .name()
            .to_lowercase();
        self.entry("encoding", &quote(&encoding), &sniffed.encoding_why);
        let delimiter = match sniffed.options.delimiter.unwrap_or(b',') {
            b'\t' => "\"\\t\"".to_string(),
            d => quote(&(d as char).to_string()),
        };
        self.entry("delimiter", &delimiter, &sniffed.delimiter_why);
    }

    fn sheet_source(&mut self, sheet: &crate::source::SheetInfo) {
        self.line("[source]");
        self.entry(
            "sheet",
            &quote(&sheet.name),
            &format!(
                "{}: {} of {} sheet(s); delimiter and encoding do not apply",
                sheet.format,
                if sheet.named { "named" } else { "the first" },
                sheet.sheets
            ),
        );
    }

    fn customer(&mut self, columns: &[Profile], chosen: &Chosen, system: Option<&System>) {
        self.line("");
        self.line("[customer]                                  # POST /api/batch/customers");
        let agents: Option<HashSet<&str>> = system
            .and_then(|s| s.agents.as_ref())
            .map(|a| a.iter().map(|a| a.login.as_str()).collect());
        for choice in chosen
            .fields
            .iter()
            .filter(|c| c.target.table == Table::Customer)
        {
            let column = &columns[choice.column];
            let (spec, mut comment) = spec_for(choice.target, column);
            if let Some(how) = &choice.how {
                comment = format!("{how}; {comment}");
            }
            if choice.target.key == "account_manager" {
                if let Some(agents) = &agents {
                    let logins = column
                        .values
                        .iter()
                        .filter(|v| agents.contains(v.as_str()))
                        .count();
                    if logins * 2 < column.values.len() {
                        self.commented_code(
                            &format!("# account_manager = {spec}"),
                            &format!(
                                "the values are not agent logins of the system ({}): give logins, or leave it out",
                                samples(column)
                            ),
                        );
                        continue;
                    }
                }
            }
            self.entry(choice.target.key, &spec, &comment);
        }
        match chosen.match_keys.as_slice() {
            [] => {
                self.line("# match = \"identifier\"                      # no column is a unique key in the rows sampled: every row");
                self.line("#                                            # creates a customer; a key finds the ones that exist");
            }
            [one] => self.entry(
                "match",
                &quote(one),
                "find customers that exist by this key",
            ),
            keys => {
                let list: Vec<String> = keys.iter().map(|k| quote(k)).collect();
                self.entry(
                    "match",
                    &format!("[{}]", list.join(", ")),
                    "find customers that exist by these keys, in order",
                );
            }
        }
        for why in &chosen.match_why {
            self.line(&format!("#   {why}"));
        }
        if !chosen.match_keys.is_empty() {
            self.entry(
                "on_match",
                &quote("update"),
                "a customer found is updated; \"skip\" leaves it as it is",
            );
        }
        let address: Vec<&Choice> = chosen
            .fields
            .iter()
            .filter(|c| c.target.table == Table::Address)
            .collect();
        if !address.is_empty() {
            self.line("");
            self.line("[customer.address]");
            for choice in address {
                let column = &columns[choice.column];
                let (spec, mut comment) = spec_for(choice.target, column);
                if let Some(how) = &choice.how {
                    comment = format!("{how}; {comment}");
                }
                self.entry(choice.target.key, &spec, &comment);
            }
        }
        self.line("");
        self.line("[customer.custom_fields]");
        self.line("# The other columns. To send one to a custom field, uncomment its line and");
        self.line("# put the field's name in Thulium on the left.");
        for c in chosen.unused(columns.len()) {
            let column = &columns[c];
            let (spec, comment) = custom_spec(column);
            self.commented_code(&format!("# {} = {spec}", quote(&column.name)), &comment);
        }
    }

    /// The system's field groups, campaigns and agents (`init --online`).
    fn system(&mut self, columns: &[Profile], system: &System) {
        self.line("");
        self.line("# ---- What the system has (read by init --online) ----");
        if let Some(groups) = &system.field_groups {
            self.line("#");
            self.line("# Field groups: a [[field_group]] table adds an item of the group per row,");
            self.line("# its values keyed by the group's field ids.");
            if groups.is_empty() {
                self.line("#   (none)");
            }
            for group in groups {
                self.line(&format!(
                    "#   group {} \"{}\": {}",
                    group.group_id,
                    comment_safe(&group.name),
                    group
                        .fields
                        .iter()
                        .map(|(id, name)| format!("{id} \"{}\"", comment_safe(name)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            for group in groups {
                let found: Vec<(i64, &Profile)> = group
                    .fields
                    .iter()
                    .filter_map(|(id, name)| {
                        columns
                            .iter()
                            .find(|c| same_name(&c.name, name))
                            .map(|c| (*id, c))
                    })
                    .collect();
                if found.is_empty() {
                    continue;
                }
                self.line("#");
                self.commented_code(
                    "# [[field_group]]",
                    &format!(
                        "\"{}\": the fields named as columns of this file",
                        comment_safe(&group.name)
                    ),
                );
                self.line(&format!("# group_id = {}", group.group_id));
                self.line("# [field_group.values]");
                for (id, column) in found {
                    let (spec, comment) = custom_spec(column);
                    self.commented_code(&format!("# {id} = {spec}"), &comment);
                }
            }
        }
        if let Some(outbounds) = &system.outbounds {
            self.line("#");
            self.line("# Campaigns: a [campaign] table adds a record per row (id, status_id,");
            self.line("# agent_login, next_call_date); see mappings/README.md.");
            if outbounds.is_empty() {
                self.line("#   (none)");
            }
            for o in outbounds {
                let mut line = format!("#   {} \"{}\"", o.id, comment_safe(&o.name));
                if let Some(facts) = system.campaigns.get(&o.id) {
                    let statuses: Vec<String> = facts
                        .statuses
                        .iter()
                        .map(|s| format!("{} \"{}\"", s.status_id, comment_safe(&s.name)))
                        .collect();
                    if !statuses.is_empty() {
                        let _ = write!(line, "; statuses {}", statuses.join(", "));
                    }
                }
                self.line(&line);
            }
        }
        if let Some(agents) = &system.agents {
            self.line("#");
            self.line("# Agents (logins for account_manager and agent_login):");
            let logins: Vec<&str> = agents
                .iter()
                .filter(|a| a.active)
                .map(|a| a.login.as_str())
                .collect();
            for chunk in logins.chunks(8) {
                self.line(&format!("#   {}", one_line(&chunk.join(", "))));
            }
        }
    }
}

/// The value spec of a customer field and its comment.
fn spec_for(target: &Target, column: &Profile) -> (String, String) {
    let mut options: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    match target.key {
        "surname" => options.push("required = true".into()),
        "email" => {
            if let Kind::Email(Some(sep)) = column.kind {
                options.push(format!("split = {}", quote(&sep.to_string())));
                notes.push("some cells hold several".into());
            }
        }
        "phone_number" => {
            if let Some(Some(sep)) = column.phone {
                options.push(format!("split = {}", quote(&sep.to_string())));
                notes.push("some cells hold several".into());
            }
            options.push("transform = [\"phone\"]".into());
        }
        "birthdate" => {
            if let Kind::Date(date) = &column.kind {
                options.push(format!("date = {}", quote(date.format)));
                notes.push(date_note(date));
            }
        }
        "vip" => {
            let (yes, no) = match column.kind {
                Kind::Bool(yes, no) => (yes, no),
                _ => ("tak", "nie"),
            };
            options.push(format!(
                "map = {{ {} = true, {} = false }}",
                quote(yes),
                quote(no)
            ));
        }
        _ => {}
    }
    let spec = if options.is_empty() {
        quote(&column.name)
    } else {
        format!(
            "{{ column = {}, {} }}",
            quote(&column.name),
            options.join(", ")
        )
    };
    notes.push(samples(column));
    (spec, notes.join("; "))
}

/// A commented custom field's spec and comment: options from the values.
fn custom_spec(column: &Profile) -> (String, String) {
    let name = quote(&column.name);
    let samples = samples(column);
    match &column.kind {
        Kind::Integer => (
            format!("{{ column = {name}, type = \"integer\" }}"),
            format!("whole numbers, {samples}"),
        ),
        Kind::Bool(yes, no) => (
            format!(
                "{{ column = {name}, map = {{ {} = true, {} = false }} }}",
                quote(yes),
                quote(no)
            ),
            format!("yes/no, {samples}"),
        ),
        Kind::Date(date) => (name, format!("{}, {samples}", date_note(date))),
        Kind::Email(_) => (name, format!("e-mail addresses, {samples}")),
        _ if column.phone.is_some() => (name, format!("phone numbers?, {samples}")),
        _ => (name, samples),
    }
}

/// "e.g. "a", "b", "c"", the first three different values, shortened.
fn samples(column: &Profile) -> String {
    if column.values.is_empty() {
        return "empty in the rows sampled".into();
    }
    let shown: Vec<String> = column
        .examples()
        .into_iter()
        .map(|v| format!("\"{}\"", comment_safe(v)))
        .collect();
    format!("e.g. {}", shown.join(", "))
}

/// Text on one line: control characters (line breaks) become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn date_note(date: &DateGuess) -> String {
    let mut note = format!("dates as {}", date.format);
    if date.ambiguous {
        note.push_str(" (day first assumed: no day in the sample is over 12)");
    }
    if date.misses > 0 {
        let _ = write!(note, " ({} value(s) read otherwise)", date.misses);
    }
    note
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text for a comment: one line, at most 30 characters.
fn comment_safe(s: &str) -> String {
    let one = one_line(s);
    let mut short: String = one.chars().take(30).collect();
    if one.chars().count() > 30 {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::profile::profile;
    #[test]
    fn names_ignore_case_marks_punctuation_and_filler() {
        assert_eq!(names("Tel. komórkowy").0, "telkomorkowy");
        assert_eq!(names("Nazwisko klienta").1, "nazwisko");
        assert_eq!(names("E-MAIL").0, "email");
        assert_eq!(names("first_name").0, "firstname");
    }

    #[test]
    fn columns_score_by_name_and_near_misses() {
        let surname = target_named("surname");
        assert_eq!(score(&profile("NAZWISKO", &[]), surname), 100);
        assert_eq!(score(&profile("Nazwisko klienta", &[]), surname), 95);
        assert_eq!(score(&profile("Nazwsko", &[]), surname), 80);
        assert_eq!(score(&profile("Miasto", &[]), surname), 0);
        assert_eq!(score(&profile("ID", &[]), target_named("identifier")), 90);
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
