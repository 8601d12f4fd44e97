//! `init`: a mapping written from a file's header and first rows, for the
//! sample export and for exports whose column names it was not written
//! around (English ones; Polish ones without diacritics, a typo and a tab
//! delimiter in ISO-8859-2; an `.xlsx` with typed cells). Each mapping is
//! used as written: the file is imported into the sandbox and the
//! customers' fields are compared with what the rows say.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::sheets::{write_xlsx, Cell};
use serde_json::Value;
use thulium_import::sandbox::{Sandbox, SandboxConfig};

const PASSWORD: &str = "init-secret";

fn bin() -> std::process::Command {
    common::bin(PASSWORD)
}

use common::{output, output_of, Out};

/// `init FILE -o DIR/<name>.toml`, which must succeed.
fn init(file: &Path, dir: &Path) -> PathBuf {
    let mapping = dir.join(format!(
        "{}.toml",
        file.file_name().unwrap().to_string_lossy()
    ));
    let out = output_of(bin().arg("init").arg(file).arg("--output").arg(&mapping));
    assert_eq!(out.code, Some(0), "init failed: {}", out.stderr);
    mapping
}

/// `check FILE --mapping M`: the exit code (0 all valid, 1 some invalid,
/// 2 the mapping does not work).
fn check(file: &Path, mapping: &Path) -> Out {
    output_of(bin().arg("check").arg(file).arg("--mapping").arg(mapping))
}

async fn sandbox() -> Sandbox {
    Sandbox::start(SandboxConfig {
        password: PASSWORD.into(),
        ..SandboxConfig::default()
    })
    .await
    .unwrap()
}

/// Imports `file` with `mapping` into `sandbox`; returns the exit code.
async fn import(sandbox: &Sandbox, file: &Path, mapping: &Path, dir: &Path) -> Out {
    let ledger = dir.join(format!(
        "{}.{}.ledger",
        file.file_name().unwrap().to_string_lossy(),
        mapping.file_name().unwrap().to_string_lossy()
    ));
    let cmd = common::run_command(
        sandbox,
        file.to_str().unwrap(),
        mapping.to_str().unwrap(),
        &ledger,
        PASSWORD,
    );
    output(cmd).await
}

/// A field as text: a list's items joined with `|`.
fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join("|"),
        other => other.to_string(),
    }
}

/// One customer of a made-up export, and what Thulium should hold.
#[derive(Debug, Clone)]
struct Person {
    id: String,
    first: String,
    last: String,
    email: String,
    /// As written in the export; what Thulium should hold is its digits.
    phones: Vec<String>,
    birth: (u16, u8, u8),
    vip: bool,
    street: String,
    building: String,
    flat: String,
    postcode: String,
    city: String,
    country: String,
    note: String,
    agent: &'static str,
}

impl Person {
    fn expected(&self) -> BTreeMap<&'static str, String> {
        let digits = |p: &String| p.chars().filter(char::is_ascii_digit).collect::<String>();
        BTreeMap::from([
            ("surname", self.last.clone()),
            ("name", self.first.clone()),
            ("email", self.email.clone()),
            (
                "phone_number",
                self.phones.iter().map(digits).collect::<Vec<_>>().join("|"),
            ),
            (
                "birthdate",
                format!(
                    "{:04}-{:02}-{:02}",
                    self.birth.0, self.birth.1, self.birth.2
                ),
            ),
            ("vip", self.vip.to_string()),
            ("note", self.note.clone()),
            ("account_manager", self.agent.to_string()),
            ("address.street", self.street.clone()),
            ("address.building", self.building.clone()),
            ("address.flat", self.flat.clone()),
            ("address.postcode", self.postcode.clone()),
            ("address.city", self.city.clone()),
            ("address.country", self.country.clone()),
        ])
    }
}

/// `n` people; days run past 12 so that a date's order is decidable, and
/// every fifth has two phone numbers.
fn people(n: usize) -> Vec<Person> {
    const FIRST: [&str; 6] = ["Anna", "Jan", "Żaneta", "Łukasz", "Zofia", "Piotr"];
    const LAST: [&str; 6] = [
        "Kowalska",
        "Nowak",
        "Wiśniewska",
        "Wójcik",
        "Kamińska",
        "Lewandowski",
    ];
    const CITIES: [&str; 4] = ["Wrocław", "Łódź", "Kraków", "Gdańsk"];
    const AGENTS: [&str; 3] = ["j.doe", "a.nowak", "m.zielinski"];
    (0..n)
        .map(|i| {
            let mut phones = vec![format!("+48 60{} {:03} {:03}", i % 10, i, 999 - i)];
            if i % 5 == 4 {
                phones.push(format!("22 {:03} 00 {:02}", i, i % 100));
            }
            Person {
                id: format!("K-{:05}", 1000 + i),
                first: FIRST[i % 6].to_string(),
                last: format!("{}{}", LAST[i % 6], i),
                email: format!("osoba{i}@przyklad.pl"),
                phones,
                birth: (
                    1950 + (i % 50) as u16,
                    (i % 12 + 1) as u8,
                    (i * 7 % 28 + 1) as u8,
                ),
                vip: i % 3 == 0,
                street: format!("ul. Długa {}", i % 9),
                building: format!("{}", i % 40 + 1),
                flat: if i % 2 == 0 {
                    format!("{}", i % 12 + 1)
                } else {
                    String::new()
                },
                postcode: format!("{:02}-{:03}", i % 90 + 10, i % 1000),
                city: CITIES[i % 4].to_string(),
                country: "Polska".into(),
                note: format!("Uwaga {i}: dzwonić po 16, \"pilne\""),
                agent: AGENTS[i % 3],
            }
        })
        .collect()
}

/// Every person is a customer whose fields are what the row says, for
/// each field in `fields` (`address.city` for an address part).
fn assert_imported(sandbox: &Sandbox, people: &[Person], fields: &[&str]) {
    let customers = common::by_identifier(sandbox);
    assert_eq!(customers.len(), people.len(), "one customer per row");
    for p in people {
        let c = customers
            .get(&p.id)
            .unwrap_or_else(|| panic!("no customer {}", p.id));
        let expected = p.expected();
        for field in fields {
            let got = match field.split_once('.') {
                Some((table, part)) => text(&c[table][part]),
                None => text(&c[*field]),
            };
            assert_eq!(got, expected[field], "{}: {field} of {c}", p.id);
        }
    }
}

const PERSON_FIELDS: &[&str] = &[
    "surname",
    "name",
    "email",
    "phone_number",
    "birthdate",
    "vip",
    "note",
    "account_manager",
    "address.street",
    "address.building",
    "address.flat",
    "address.postcode",
    "address.city",
    "address.country",
];

/// An English CRM export: UTF-8 with a BOM, commas, month-first dates,
/// Yes/No, two phones in one cell, and columns no field is for.
fn english_rows(people: &[Person]) -> Vec<Vec<String>> {
    let mut rows = vec![[
        "Customer ID",
        "First Name",
        "Last Name",
        "Email Address",
        "Mobile Phone",
        "Date of Birth",
        "VIP Customer",
        "Street Address",
        "House Number",
        "Apt",
        "ZIP Code",
        "City",
        "Country",
        "Notes",
        "Account Owner",
        "Company",
        "Orders",
        "Newsletter",
    ]
    .map(String::from)
    .to_vec()];
    for (i, p) in people.iter().enumerate() {
        rows.push(vec![
            p.id.clone(),
            p.first.clone(),
            p.last.clone(),
            p.email.clone(),
            p.phones.join(", "),
            format!("{:02}/{:02}/{}", p.birth.1, p.birth.2, p.birth.0),
            if p.vip { "Yes" } else { "No" }.into(),
            p.street.clone(),
            p.building.clone(),
            p.flat.clone(),
            p.postcode.clone(),
            p.city.clone(),
            p.country.clone(),
            p.note.clone(),
            p.agent.into(),
            format!("Firma {}", i % 7),
            format!("{}", i * 3 % 17),
            if i % 2 == 0 { "TRUE" } else { "FALSE" }.into(),
        ]);
    }
    rows
}

fn write_csv(
    path: &Path,
    rows: &[Vec<String>],
    delimiter: u8,
    bom: bool,
    encoding: &'static encoding_rs::Encoding,
) {
    let mut w = csv::WriterBuilder::new()
        .delimiter(delimiter)
        .terminator(csv::Terminator::CRLF)
        .from_writer(Vec::new());
    for r in rows {
        w.write_record(r).unwrap();
    }
    let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
    let (bytes, _, unmappable) = encoding.encode(&text);
    assert!(!unmappable);
    let mut out = Vec::new();
    if bom {
        out.extend_from_slice(&[0xEF, 0xBB, 0xBF]);
    }
    out.extend_from_slice(&bytes);
    std::fs::write(path, out).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn init_maps_an_english_export_that_then_imports_field_for_field() {
    let dir = tempfile::tempdir().unwrap();
    let people = people(60);
    let file = dir.path().join("customers.csv");
    write_csv(
        &file,
        &english_rows(&people),
        b',',
        true,
        encoding_rs::UTF_8,
    );
    let mapping = init(&file, dir.path());
    let text = std::fs::read_to_string(&mapping).unwrap();
    // Month first: the sample has days over 12 in the second place.
    assert!(text.contains("date = \"%m/%d/%Y\""), "{text}");
    assert!(text.contains("split = \",\""), "{text}");
    // The columns no field is for are there for a person to decide.
    assert!(
        text.contains("# \"Orders\" = { column = \"Orders\", type = \"integer\" }"),
        "{text}"
    );
    assert!(
        text.contains("# \"Newsletter\" = { column = \"Newsletter\", map = {"),
        "{text}"
    );
    assert!(text.contains("# \"Company\" = \"Company\""), "{text}");
    assert!(
        text.contains("match = [\"identifier\", \"email\"]"),
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&mapping).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the mapping quotes the file's values");
    }
    assert_eq!(check(&file, &mapping).code, Some(0));

    let sandbox = sandbox().await;
    let out = import(&sandbox, &file, &mapping, dir.path()).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_imported(&sandbox, &people, PERSON_FIELDS);

    // The mapping matches by identifier: the same export again changes
    // nothing and creates no one.
    let again = dir.path().join("again.csv");
    std::fs::copy(&file, &again).unwrap();
    let out = import(&sandbox, &again, &mapping, dir.path()).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(common::customers(&sandbox), people.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn init_maps_polish_names_without_diacritics_a_typo_and_iso_8859_2() {
    let dir = tempfile::tempdir().unwrap();
    let people = people(45);
    let mut rows = vec![[
        "Lp.",
        "Numer klienta",
        "Imie",
        "Nazwsko", // one letter off
        "Adres e-mail",
        "Tel. kom.",
        "Data ur.",
        "Klient VIP",
        "Ulica",
        "Nr budynku",
        "Nr mieszkania",
        "Kod",
        "Miejscowosc",
        "Kraj",
        "Uwagi",
        "Opiekun klienta",
        "Zgoda \"RODO\" \\ marketing",
    ]
    .map(String::from)
    .to_vec()];
    for (i, p) in people.iter().enumerate() {
        rows.push(vec![
            (i + 1).to_string(),
            p.id.clone(),
            p.first.clone(),
            p.last.clone(),
            p.email.clone(),
            p.phones.join("; "),
            format!("{:02}.{:02}.{}", p.birth.2, p.birth.1, p.birth.0),
            if p.vip { "T" } else { "N" }.into(),
            p.street.clone(),
            p.building.clone(),
            p.flat.clone(),
            p.postcode.clone(),
            p.city.clone(),
            p.country.clone(),
            p.note.clone(),
            p.agent.into(),
            if i % 2 == 0 { "tak" } else { "nie" }.into(),
        ]);
    }
    let file = dir.path().join("klienci.txt");
    write_csv(&file, &rows, b'\t', false, encoding_rs::ISO_8859_2);
    let mapping = init(&file, dir.path());
    let text = std::fs::read_to_string(&mapping).unwrap();
    assert!(text.contains("encoding = \"iso-8859-2\""), "{text}");
    assert!(text.contains("delimiter = \"\\t\""), "{text}");
    assert!(
        text.contains("surname = { column = \"Nazwsko\", required = true }"),
        "{text}"
    );
    assert!(text.contains("date = \"%d.%m.%Y\""), "{text}");
    // "Lp." counts rows: not the customer's identifier.
    assert!(text.contains("identifier = \"Numer klienta\""), "{text}");
    assert!(
        text.contains("# \"Lp.\" = { column = \"Lp.\", type = \"integer\" }"),
        "{text}"
    );
    assert!(
        text.contains(r#"# "Zgoda \"RODO\" \\ marketing" = { column = "Zgoda \"RODO\" \\ marketing", map = { "tak" = true, "nie" = false } }"#),
        "{text}"
    );
    assert_eq!(check(&file, &mapping).code, Some(0));

    let sandbox = sandbox().await;
    let out = import(&sandbox, &file, &mapping, dir.path()).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_imported(&sandbox, &people, PERSON_FIELDS);
}

#[tokio::test(flavor = "multi_thread")]
async fn init_maps_a_spreadsheet_with_typed_cells() {
    let dir = tempfile::tempdir().unwrap();
    let people = people(30);
    // The English export typed as Excel types it: dates are date cells, a
    // whole number a number, Yes/No booleans.
    let rows: Vec<Vec<Cell>> = english_rows(&people)
        .into_iter()
        .enumerate()
        .map(|(r, row)| {
            row.into_iter()
                .enumerate()
                .map(|(c, cell)| match (r, c) {
                    (0, _) => Cell::Text(cell),
                    (_, 5) => {
                        let p = &people[r - 1];
                        Cell::Date(p.birth.0, p.birth.1, p.birth.2, None)
                    }
                    (_, 6) => Cell::Bool(cell == "Yes"),
                    (_, 8) | (_, 16) => Cell::Number(cell.parse().unwrap()),
                    _ if cell.is_empty() => Cell::Empty,
                    _ => Cell::Text(cell),
                })
                .collect()
        })
        .collect();
    let file = dir.path().join("customers.xlsx");
    write_xlsx(&file, "Customers", &["Summary"], &rows);
    let out = output_of(bin().arg("init").arg(&file).args(["--sheet", "Customers"]));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let text = out.stdout;
    assert!(text.contains("sheet = \"Customers\""), "{text}");
    assert!(!text.contains("encoding ="), "{text}");
    assert!(
        text.contains("map = { \"true\" = true, \"false\" = false }"),
        "{text}"
    );
    let mapping = dir.path().join("m.toml");
    std::fs::write(&mapping, &text).unwrap();
    assert_eq!(check(&file, &mapping).code, Some(0));

    let sandbox = sandbox().await;
    let out = import(&sandbox, &file, &mapping, dir.path()).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_imported(&sandbox, &people, PERSON_FIELDS);
}

/// The sample export: the mapping `init` writes imports the customers the
/// hand-written mapping does, with the same fields.
#[tokio::test(flavor = "multi_thread")]
async fn init_on_the_sample_gives_the_customers_of_the_hand_written_mapping() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/crm_export.csv");
    let generated = init(&sample, dir.path());
    let text = std::fs::read_to_string(&generated).unwrap();
    for line in [
        "encoding = \"windows-1250\"",
        "delimiter = \";\"",
        "customer_id = \"Thulium ID\"",
        "surname = { column = \"Nazwisko\", required = true }",
        "email = { column = \"E-mail\", split = \",\" }",
        "phone_number = { column = \"Telefon\", split = \",\", transform = [\"phone\"] }",
        "birthdate = { column = \"Data urodzenia\", date = \"%d.%m.%Y\" }",
        "vip = { column = \"VIP\", map = { \"tak\" = true, \"nie\" = false } }",
        "match = \"identifier\"",
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
    // `check` accepts it: some rows are invalid (the sample has bad rows),
    // none because of the mapping.
    let checked = check(&sample, &generated);
    assert_eq!(checked.code, Some(1), "{}", checked.stderr);

    let by_hand = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/crm_export.toml");
    let (a, b) = (sandbox().await, sandbox().await);
    let out = import(&a, &sample, &generated, dir.path()).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let out = import(&b, &sample, &by_hand, dir.path()).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let (ours, theirs) = (common::by_identifier(&a), common::by_identifier(&b));
    assert!(theirs.len() > 250, "{}", theirs.len());
    // Every customer of the hand-written mapping, and two more: the rows
    // it finds invalid only for columns init leaves as comments ("Liczba
    // zamówień", "Kampania") are customers here.
    let extra: Vec<&String> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(theirs.keys().all(|k| ours.contains_key(k)));
    assert_eq!(extra, ["CRM-10201", "CRM-10248"]);
    for (id, c) in &theirs {
        for field in [
            "surname",
            "name",
            "email",
            "phone_number",
            "birthdate",
            "vip",
            "address",
        ] {
            assert_eq!(ours[id][field], c[field], "{id}: {field}");
        }
    }
}

/// A valid PESEL for person `i`, born on their birth date (the month
/// plus 20 from 2000 on), so that some start with a zero.
fn pesel(p: &Person, i: usize) -> String {
    let (y, m, d) = (p.birth.0 + 52 * (i % 2) as u16, p.birth.1, p.birth.2);
    let month = if y >= 2000 { m + 20 } else { m };
    let first = format!("{:02}{month:02}{d:02}{:04}", y % 100, 1000 + i * 37 % 9000);
    let sum: u32 = first
        .bytes()
        .zip([1, 3, 7, 9, 1, 3, 7, 9, 1, 3])
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    format!("{first}{}", (10 - sum % 10) % 10)
}

/// A valid NIP for person `i`, as digits.
fn nip(i: usize) -> String {
    (0..)
        .map(|k| format!("{:09}", 526_000_000 + i * 7919 + k))
        .find_map(|first| {
            let sum: u32 = first
                .bytes()
                .zip([6, 5, 7, 2, 3, 4, 5, 6, 7])
                .map(|(b, w)| u32::from(b - b'0') * w)
                .sum();
            (sum % 11 != 10).then(|| format!("{first}{}", sum % 11))
        })
        .unwrap()
}

/// `123-456-78-90`, as an English CRM writes a NIP.
fn dashed(nip: &str) -> String {
    format!("{}-{}-{}-{}", &nip[..3], &nip[3..6], &nip[6..8], &nip[8..])
}

/// The customers hold the PESEL and the NIP (as digits) of their rows.
fn assert_pesel_and_nip(sandbox: &Sandbox, people: &[Person], skip: &[usize]) {
    let customers = common::by_identifier(sandbox);
    assert_eq!(customers.len(), people.len() - skip.len());
    for (i, p) in people.iter().enumerate().filter(|(i, _)| !skip.contains(i)) {
        let c = &customers[&p.id];
        assert_eq!(text(&c["pesel"]), pesel(p, i), "{}: {c}", p.id);
        assert_eq!(text(&c["nip"]), nip(i), "{}: {c}", p.id);
    }
}

/// An English CRM's export whose PESELs are "National ID" and NIPs "Tax
/// no" (with dashes): mapped as pesel and nip by their values. Its e-mail
/// column has one placeholder that is no address in five rows: the key is
/// judged on the addresses, and the note says how many were left out.
#[tokio::test(flavor = "multi_thread")]
async fn init_maps_pesel_and_nip_by_their_values_and_judges_a_key_on_valid_values() {
    let dir = tempfile::tempdir().unwrap();
    let people = people(40);
    let placeholder = [3, 11, 19, 27, 35];
    let mut rows = english_rows(&people);
    rows[0].extend(["National ID".to_string(), "Tax no".to_string()]);
    for (i, p) in people.iter().enumerate() {
        let row = &mut rows[i + 1];
        if placeholder.contains(&i) {
            row[3] = "jan.kowalski(at)example".into();
        }
        row.extend([pesel(p, i), dashed(&nip(i))]);
    }
    let file = dir.path().join("crm.csv");
    write_csv(&file, &rows, b',', false, encoding_rs::UTF_8);
    let mapping = dir.path().join("crm.toml");
    let out = output_of(bin().arg("init").arg(&file).arg("-o").arg(&mapping));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let text = std::fs::read_to_string(&mapping).unwrap();
    let line = |start: &str| {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start}: {text}"))
    };
    assert!(
        line("pesel = \"National ID\" ").contains("# by its values: PESEL numbers"),
        "{text}"
    );
    assert!(
        line("nip = { column = \"Tax no\", transform = [\"digits\"] }")
            .contains("# by its values: NIP numbers"),
        "{text}"
    );
    assert!(!text.contains("# \"National ID\""), "{text}");
    assert!(
        text.contains("match = [\"identifier\", \"email\"]"),
        "{text}"
    );
    assert!(
        out.stderr.contains(
            "e-mail (\"Email Address\"): 5 invalid values (left out of the uniqueness check)"
        ),
        "{}",
        out.stderr
    );
    // The placeholder's rows are invalid (no address), the others go in.
    let sandbox = sandbox().await;
    let out = import(&sandbox, &file, &mapping, dir.path()).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_pesel_and_nip(&sandbox, &people, &placeholder);
}

/// A Polish export in windows-1250 with PESELs as "Nr ewid." and NIPs as
/// "Nr podatnika" (digits): mapped as pesel and nip by their values. An
/// address written in three rows is a repeat: one value, said as one.
#[tokio::test(flavor = "multi_thread")]
async fn init_maps_a_polish_exports_pesel_and_nip_under_other_names() {
    let dir = tempfile::tempdir().unwrap();
    let people = people(30);
    let mut rows = vec![[
        "Numer klienta",
        "Imię",
        "Nazwisko",
        "E-mail",
        "Nr ewid.",
        "Nr podatnika",
        "Miejscowość",
    ]
    .map(String::from)
    .to_vec()];
    for (i, p) in people.iter().enumerate() {
        let email = if [4, 9, 14].contains(&i) {
            "biuro@przyklad.pl".to_string()
        } else {
            p.email.clone()
        };
        rows.push(vec![
            p.id.clone(),
            p.first.clone(),
            p.last.clone(),
            email,
            pesel(p, i),
            nip(i),
            p.city.clone(),
        ]);
    }
    let file = dir.path().join("klienci.csv");
    write_csv(&file, &rows, b';', false, encoding_rs::WINDOWS_1250);
    let mapping = dir.path().join("klienci.toml");
    let out = output_of(bin().arg("init").arg(&file).arg("-o").arg(&mapping));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let text = std::fs::read_to_string(&mapping).unwrap();
    assert!(text.contains("encoding = \"windows-1250\""), "{text}");
    assert!(text.contains("pesel = \"Nr ewid.\""), "{text}");
    assert!(text.contains("nip = \"Nr podatnika\""), "{text}");
    assert!(text.contains("match = \"identifier\""), "{text}");
    assert!(
        text.contains("#   not email (\"E-mail\"): 1 value repeats in the rows sampled"),
        "{text}"
    );
    let sandbox = sandbox().await;
    let out = import(&sandbox, &file, &mapping, dir.path()).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_pesel_and_nip(&sandbox, &people, &[]);
}

/// `init` on a file that is not an export writes no mapping: one
/// sentence, exit 2, nothing on stdout nor at `--output`; a gzip named
/// `.xlsx` is said not to be a spreadsheet.
#[test]
fn init_on_a_file_that_is_not_an_export_writes_nothing_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<(PathBuf, String)> = common::not_exports(dir.path())
        .into_iter()
        .map(|(f, what)| (f, format!("this is not a CSV file: it looks like {what}")))
        .collect();
    let (gzip, _) = &files[0];
    let named_xlsx = dir.path().join("export.xlsx");
    std::fs::copy(gzip, &named_xlsx).unwrap();
    files.push((
        named_xlsx,
        "this is not a spreadsheet: it looks like gzip data".into(),
    ));
    for (file, said) in files {
        let mapping = dir.path().join("m.toml");
        let out = output_of(bin().arg("init").arg(&file).arg("--output").arg(&mapping));
        assert_eq!(out.code, Some(2), "{said}: {}", out.stderr);
        assert!(out.stderr.contains(&said), "{}", out.stderr);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        assert!(!mapping.exists(), "{said}: a mapping was written");
        let out = output_of(bin().arg("init").arg(&file));
        assert_eq!(out.code, Some(2), "{said}");
        assert!(out.stdout.is_empty(), "{said}: {}", out.stdout);
    }
}

#[test]
fn init_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/crm_export.csv");
    let out_path = dir.path().join("m.toml");
    std::fs::write(&out_path, "# mine\n").unwrap();
    let out = output_of(bin().arg("init").arg(&sample).arg("-o").arg(&out_path));
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&out_path).unwrap(), "# mine\n");
    let out = output_of(
        bin()
            .arg("init")
            .arg(&sample)
            .arg("-o")
            .arg(&out_path)
            .arg("--force"),
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(std::fs::read_to_string(&out_path)
        .unwrap()
        .contains("[customer]"));
    // Never over the file it reads, even with --force.
    let copy = dir.path().join("export.csv");
    std::fs::copy(&sample, &copy).unwrap();
    let out = output_of(
        bin()
            .arg("init")
            .arg(&copy)
            .arg("-o")
            .arg(&copy)
            .arg("--force"),
    );
    assert_eq!(out.code, Some(2));
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(&sample).unwrap()
    );
    // A file it cannot read: exit 2, nothing written.
    let missing = dir.path().join("nope.csv");
    let out = output_of(
        bin()
            .arg("init")
            .arg(&missing)
            .arg("-o")
            .arg(dir.path().join("n.toml")),
    );
    assert_eq!(out.code, Some(2));
    assert!(!dir.path().join("n.toml").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn init_online_lists_the_systems_field_groups_campaigns_and_agents() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("samples/crm_export.csv");
    let sandbox = sandbox().await;
    let url = sandbox.url();
    let mut cmd = bin();
    cmd.arg("init")
        .arg(&sample)
        .args(["--online", "--url", &url, "--user", "api_user"]);
    let out = output(cmd).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let text = out.stdout;
    assert!(
        text.contains("#   group 2 \"Marketing\": 8 \"Liczba zamówień\""),
        "{text}"
    );
    // A group's fields named as the file's columns, ready to uncomment.
    assert!(
        text.contains("# group_id = 2\n# [field_group.values]\n"),
        "{text}"
    );
    assert!(text.contains("# 12 = \"Kanał pozyskania\""), "{text}");
    assert!(
        text.contains("#   00001 \"Sprzedaż\"; statuses 1 \"Nowy\""),
        "{text}"
    );
    assert!(text.contains("m.zielinski"), "{text}");
    assert!(!text.contains(PASSWORD) && !out.stderr.contains(PASSWORD));
    // Uncommenting the suggested group gives a mapping that works.
    let uncommented = text
        .replace("# [[field_group]]", "[[field_group]]")
        .replace("# group_id = 2", "group_id = 2")
        .replace("# [field_group.values]", "[field_group.values]")
        .replace("# 12 = \"Kanał", "12 = \"Kanał");
    let mapping = dir.path().join("m.toml");
    std::fs::write(&mapping, uncommented).unwrap();
    assert_eq!(check(&sample, &mapping).code, Some(1));
    // Without credentials: exit 2.
    let out = output_of(
        bin()
            .env_remove("THULIUM_PASSWORD")
            .arg("init")
            .arg(&sample)
            .args(["--online", "--url", &url, "--user", "api_user"]),
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
}

/// A column of a made-up export: its name, its type, what it should become.
type Column = (&'static str, char, &'static str);

/// Exports of other CRMs, their header as they write it, and what a person
/// would map each column to (`-` for a column left as a comment). Column
/// types: `e` e-mail, `p` phone, `d` date, `b` yes/no, `u` unique number,
/// `t` text.
const OTHER_CRMS: &[(&str, &[Column])] = &[
    (
        "salesforce_contacts.csv",
        &[
            ("Contact ID", 'u', "identifier"),
            ("Salutation", 't', "-"),
            ("First Name", 't', "name"),
            ("Last Name", 't', "surname"),
            ("Title", 't', "job_title"),
            ("Account Name", 't', "-"),
            ("Mailing Street", 't', "street"),
            ("Mailing City", 't', "city"),
            ("Mailing State/Province", 't', "-"),
            ("Mailing Zip/Postal Code", 't', "postcode"),
            ("Mailing Country", 't', "country"),
            ("Phone", 'p', "phone_number"),
            ("Mobile", 'p', "-"),
            ("Email", 'e', "email"),
            ("Birthdate", 'd', "birthdate"),
            ("Description", 't', "note"),
            ("Contact Owner", 't', "account_manager"),
            ("Lead Source", 't', "-"),
            ("Email Opt Out", 'b', "-"),
        ],
    ),
    (
        "hubspot_contacts.csv",
        &[
            ("Record ID", 'u', "identifier"),
            ("First Name", 't', "name"),
            ("Last Name", 't', "surname"),
            ("Email", 'e', "email"),
            ("Phone Number", 'p', "phone_number"),
            ("Mobile Phone Number", 'p', "-"),
            ("Street Address", 't', "street"),
            ("City", 't', "city"),
            ("State/Region", 't', "-"),
            ("Postal Code", 't', "postcode"),
            ("Country/Region", 't', "country"),
            ("Company Name", 't', "-"),
            ("Job Title", 't', "job_title"),
            ("Contact owner", 't', "account_manager"),
            ("Lifecycle Stage", 't', "-"),
            ("Create Date", 'd', "-"),
        ],
    ),
    (
        "zoho_contacts.csv",
        &[
            ("Record Id", 'u', "identifier"),
            ("Contact Owner", 't', "account_manager"),
            ("First Name", 't', "name"),
            ("Last Name", 't', "surname"),
            ("Email", 'e', "email"),
            ("Phone", 'p', "phone_number"),
            ("Mobile", 'p', "-"),
            ("Mailing Street", 't', "street"),
            ("Mailing City", 't', "city"),
            ("Mailing Zip", 't', "postcode"),
            ("Mailing Country", 't', "country"),
            ("Date of Birth", 'd', "birthdate"),
            ("Title", 't', "job_title"),
            ("Description", 't', "note"),
            ("Lead Source", 't', "-"),
            ("Account Name", 't', "-"),
        ],
    ),
    (
        "pipedrive_persons.csv",
        &[
            ("Person - ID", 'u', "identifier"),
            ("Person - Name", 't', "-"),
            ("Person - First name", 't', "name"),
            ("Person - Last name", 't', "surname"),
            ("Person - Email - Work", 'e', "email"),
            ("Person - Phone - Mobile", 'p', "phone_number"),
            ("Person - Organization", 't', "-"),
            ("Person - Owner", 't', "account_manager"),
            ("Person - Label", 't', "-"),
        ],
    ),
    (
        "outlook_contacts.csv",
        &[
            ("First Name", 't', "name"),
            ("Middle Name", 't', "-"),
            ("Last Name", 't', "surname"),
            ("Title", 't', "-"),
            ("Suffix", 't', "-"),
            ("E-mail Address", 'e', "email"),
            ("E-mail 2 Address", 'e', "-"),
            ("Home Phone", 'p', "-"),
            ("Business Phone", 'p', "-"),
            ("Mobile Phone", 'p', "phone_number"),
            ("Primary Phone", 'p', "-"),
            ("Business Fax", 'p', "-"),
            ("Job Title", 't', "job_title"),
            ("Department", 't', "-"),
            ("Company", 't', "-"),
            ("Manager's Name", 't', "-"),
            ("Business Street", 't', "-"),
            ("Business City", 't', "-"),
            ("Business Postal Code", 't', "-"),
            ("Business Country/Region", 't', "-"),
            ("Home Street", 't', "street"),
            ("Home City", 't', "city"),
            ("Home Postal Code", 't', "postcode"),
            ("Home Country/Region", 't', "country"),
            ("Personal Web Page", 't', "homepage"),
            ("Birthday", 'd', "birthdate"),
            ("Gender", 't', "gender"),
            ("Notes", 't', "note"),
        ],
    ),
    (
        "google_contacts.csv",
        &[
            ("Name", 't', "-"),
            ("Given Name", 't', "name"),
            ("Additional Name", 't', "-"),
            ("Family Name", 't', "surname"),
            ("Birthday", 'd', "birthdate"),
            ("Gender", 't', "gender"),
            ("Notes", 't', "note"),
            // Debatable: Google's labels ("* myContacts") as the group's name.
            ("Group Membership", 't', "group"),
            ("E-mail 1 - Type", 't', "-"),
            ("E-mail 1 - Value", 'e', "email"),
            ("Phone 1 - Type", 't', "-"),
            ("Phone 1 - Value", 'p', "phone_number"),
            ("Address 1 - Formatted", 't', "-"),
            ("Address 1 - Street", 't', "street"),
            ("Address 1 - City", 't', "city"),
            ("Address 1 - Region", 't', "-"),
            ("Address 1 - Postal Code", 't', "postcode"),
            ("Address 1 - Country", 't', "country"),
            ("Organization 1 - Name", 't', "-"),
            ("Organization 1 - Title", 't', "job_title"),
            ("Website 1 - Value", 't', "homepage"),
        ],
    ),
    (
        "subiekt_kontrahenci.csv",
        &[
            ("Symbol", 'u', "identifier"),
            ("Nazwa", 't', "surname"),
            ("Nazwa pełna", 't', "-"),
            ("NIP", 't', "nip"),
            ("Ulica", 't', "street"),
            ("Nr domu", 't', "building"),
            ("Nr lokalu", 't', "flat"),
            ("Kod pocztowy", 't', "postcode"),
            ("Miejscowość", 't', "city"),
            ("Państwo", 't', "country"),
            ("Telefon", 'p', "phone_number"),
            ("E-mail", 'e', "email"),
            ("Osoba kontaktowa", 't', "-"),
            ("Uwagi", 't', "note"),
            ("Grupa", 't', "group"),
            ("REGON", 'u', "-"),
        ],
    ),
    (
        "sklep_klienci.csv",
        &[
            ("Id klienta", 'u', "identifier"),
            ("Imię i nazwisko", 't', "surname"),
            ("Adres email", 'e', "email"),
            ("Telefon kontaktowy", 'p', "phone_number"),
            ("Adres", 't', "street"),
            ("Kod pocztowy", 't', "postcode"),
            ("Miasto", 't', "city"),
            ("Data rejestracji", 'd', "-"),
            ("Zgoda na newsletter", 'b', "-"),
            ("Liczba zamówień", 'u', "-"),
            ("Wartość zamówień", 't', "-"),
        ],
    ),
];

/// The columns of exports `init` was not written around, mapped as a
/// person would: each named field from the right column, each other column
/// left for a person to decide.
#[test]
fn init_names_the_columns_of_other_crms_exports() {
    let dir = tempfile::tempdir().unwrap();
    let mut wrong = Vec::new();
    let mut columns = 0;
    for (file, spec) in OTHER_CRMS {
        let mut rows = vec![spec.iter().map(|(h, _, _)| h.to_string()).collect()];
        for i in 0..50 {
            rows.push(
                spec.iter()
                    .enumerate()
                    .map(|(c, (_, kind, _))| match kind {
                        'e' => format!("u{i}.c{c}@example.com"),
                        'p' => format!("+48 601 {:03} {:03}", i, c),
                        'd' => format!("{:02}.{:02}.{}", i % 28 + 1, i % 12 + 1, 1960 + i),
                        'b' => if i % 2 == 0 { "Yes" } else { "No" }.into(),
                        'u' => (5000 + i * 7 + c).to_string(),
                        _ => format!("Text {} {}", c, i % 9),
                    })
                    .collect::<Vec<String>>(),
            );
        }
        let path = dir.path().join(file);
        write_csv(&path, &rows, b',', false, encoding_rs::UTF_8);
        let draft =
            thulium_import::init::draft(&path, &thulium_import::init::InitOptions::default(), None)
                .unwrap();
        for (header, _, want) in spec.iter() {
            columns += 1;
            let got = draft
                .mapped
                .iter()
                .find(|(_, column)| column == header)
                .map_or("-", |(key, _)| key.as_str());
            if got != *want {
                wrong.push(format!("{file}: \"{header}\" became {got}, not {want}"));
            }
        }
        let checked = thulium_import::init::verify(&path, &draft.text, 50).unwrap();
        assert_eq!(
            checked.invalid, 0,
            "{file}: {:?}\n{}",
            checked.reasons, draft.text
        );
    }
    assert!(
        wrong.is_empty(),
        "{} of {columns} columns:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}
