//! Column names to customer fields: the fields and the names they go by
//! in Polish and English exports ([`TARGETS`]), a name as compared (case,
//! diacritics, punctuation and filler words such as "klienta" ignored),
//! near misses (one letter off, with `strsim`), address parts after a
//! qualifier ("Billing City"), and the values that can veto a name (an
//! "E-mail" column without addresses).

use super::profile::{Kind, Profile};

/// What a column can become.
#[derive(Debug)]
pub struct Target {
    /// The TOML key within its table.
    pub key: &'static str,
    pub(super) table: Table,
    /// Names, as people write them (normalised when compared).
    names: &'static [&'static str],
    /// Names that say less (`ID`, `Tel`): they score below the others.
    generic: &'static [&'static str],
    want: Want,
}

/// Where a target's key goes in the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Table {
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
pub(super) fn score(column: &Profile, target: &Target) -> u32 {
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
pub(super) fn same_name(column: &str, field: &str) -> bool {
    let (column, _) = names(column);
    let (field, _) = names(field);
    column == field || near(&column, &field)
}

/// Whether a column's values allow the target.
pub(super) fn fits(column: &Profile, target: &Target) -> bool {
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

/// The target of `key` (the first one: `surname` when there is none).
pub(super) fn target_named(key: &str) -> &'static Target {
    TARGETS.iter().find(|t| t.key == key).unwrap_or(&TARGETS[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::profile::profile;

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
}
