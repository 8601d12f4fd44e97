//! Spreadsheets as sources: `.xlsx`, `.ods` and `.xls` with date, number and text
//! cells give the payloads the CSV of the same data gives; rows keep the
//! sheet's row numbers; a spreadsheet error in a cell makes its row invalid;
//! the failed-rows CSV of a spreadsheet imports again; `retry` reads a sheet.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::sheets::{sample_rows, typed, write_ods, write_xlsx, Cell};
use serde_json::Value;
use thulium_import::sandbox::{Sandbox, SandboxConfig};

const PASSWORD: &str = "sheets-secret";

fn bin() -> std::process::Command {
    common::bin(PASSWORD)
}

struct DryRun {
    code: Option<i32>,
    /// Row number → (line, payloads).
    payloads: BTreeMap<u64, (u64, Value)>,
    /// The row errors and the summary.
    stdout: String,
    stderr: String,
}

/// `run FILE --mapping M --dry-run --show-payloads 100000`.
fn dry_run(file: &Path, mapping: &Path) -> DryRun {
    let out = bin()
        .arg("run")
        .arg(file)
        .arg("--mapping")
        .arg(mapping)
        .args(["--dry-run", "--show-payloads", "100000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let payloads = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| {
            (
                v["row"].as_u64().unwrap(),
                (v["line"].as_u64().unwrap(), v["payloads"].clone()),
            )
        })
        .collect();
    DryRun {
        code: out.status.code(),
        payloads,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// The sample export as an `.xlsx`, typed as Excel types what is typed
/// into it; its one row with too few fields (line 340) gets a `#N/A` in
/// "Kod pocztowy" instead, so that it is invalid too.
fn sample_as_cells() -> Vec<Vec<Cell>> {
    let rows = sample_rows();
    let width = rows[0].len();
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let mut cells: Vec<Cell> = row
                .iter()
                .map(|c| {
                    if i == 0 {
                        Cell::Text(c.clone())
                    } else {
                        typed(c)
                    }
                })
                .collect();
            if cells.len() < width {
                cells.push(Cell::Error("#N/A"));
            }
            cells
        })
        .collect()
}

/// Writes `samples/crm_export.xlsx` from the CSV sample: run with
/// `cargo test --test spreadsheets -- --ignored` after changing either.
#[test]
#[ignore]
fn write_the_xlsx_sample() {
    write_xlsx(
        Path::new("samples/crm_export.xlsx"),
        "Klienci",
        &[],
        &sample_as_cells(),
    );
}

#[test]
fn the_xlsx_sample_gives_the_payloads_of_the_csv_sample() {
    let mapping = Path::new("mappings/crm_export.toml");
    let csv = dry_run(Path::new("samples/crm_export.csv"), mapping);
    let xlsx = dry_run(Path::new("samples/crm_export.xlsx"), mapping);
    assert_eq!((csv.code, xlsx.code), (Some(1), Some(1)), "{}", xlsx.stderr);
    assert_eq!(csv.payloads.len(), 292);
    // Dates typed as dates, phones and counts as numbers, text as text:
    // the same payloads, row by row.
    for (row, (_, payloads)) in &csv.payloads {
        let (line, sheet) = &xlsx.payloads[row];
        assert_eq!(sheet, payloads, "row {row}");
        // The line is the sheet's row number: the header is row 1.
        assert_eq!(*line, row + 1);
    }
    assert_eq!(xlsx.payloads.len(), 292);
    // The same rows are invalid, for the same reasons, on the sheet's rows.
    for reason in [
        "column \"Telefon\": value \"601 234 56x\": letters in a phone number",
        "column \"Data urodzenia\": value \"31.02.1990\": not a date",
        "column \"Liczba zamówień\": value \"dużo\": not an integer",
        "column \"Kod pocztowy\": value \"#N/A\": the cell holds a spreadsheet error",
    ] {
        assert!(xlsx.stdout.contains(reason), "{reason}\n{}", xlsx.stdout);
    }
    assert!(
        xlsx.stdout.contains("300 rows read: 292 valid, 8 invalid"),
        "{}",
        xlsx.stdout
    );
    // The CSV's [source] delimiter and encoding are named as not applying.
    assert!(
        xlsx.stderr.contains("xlsx, sheet \"Klienci\" (the first of 1 sheet); [source] delimiter and encoding do not apply to a spreadsheet: ignored"),
        "{}",
        xlsx.stderr
    );
}

/// Date, date-time, whole numbers (a phone, a PESEL-length number), a
/// decimal, a boolean and text.
fn typed_rows() -> Vec<Vec<Cell>> {
    let t = |s: &str| Cell::Text(s.into());
    vec![
        [
            "Nazwisko",
            "Imię",
            "Telefon",
            "Urodzony",
            "Zamówień",
            "Kontakt",
            "VIP",
            "Nr",
            "Kwota",
        ]
        .map(t)
        .to_vec(),
        vec![
            t("Nowak"),
            t("Anna"),
            Cell::Number(48_601_234_567.0),
            Cell::Date(1985, 3, 15, None),
            Cell::Number(12.0),
            Cell::Date(2026, 12, 28, Some((11, 45))),
            Cell::Bool(true),
            Cell::Number(90_010_112_345.0),
            Cell::Number(1234.5),
        ],
        vec![
            t("Zając"),
            Cell::Empty,
            t("601 234 567"),
            t("02.01.1970"),
            Cell::Number(0.0),
            t("01.02.2027 08:00"),
            Cell::Bool(false),
            t("00123"),
            Cell::Number(-3.0),
        ],
    ]
}

/// The CSV a person would export from the same sheet.
const TYPED_CSV: &str = "Nazwisko;Imię;Telefon;Urodzony;Zamówień;Kontakt;VIP;Nr;Kwota\n\
    Nowak;Anna;48601234567;15.03.1985;12;28.12.2026 11:45;tak;90010112345;1234.5\n\
    Zając;;601 234 567;02.01.1970;0;01.02.2027 08:00;nie;00123;-3\n";

fn typed_mapping(dir: &Path) -> PathBuf {
    let m = dir.join("typed.toml");
    std::fs::write(
        &m,
        "[customer]\nsurname = \"Nazwisko\"\nname = \"Imię\"\n\
         phone_number = { column = \"Telefon\", transform = [\"phone\"] }\n\
         birthdate = { column = \"Urodzony\", date = \"%d.%m.%Y\" }\n\
         vip = { column = \"VIP\", map = { tak = true, nie = false, TRUE = true, FALSE = false } }\n\
         identifier = \"Nr\"\n\
         [customer.custom_fields]\n\"Kwota\" = \"Kwota\"\n\
         [[field_group]]\ngroup_id = 2\n[field_group.values]\n8 = { column = \"Zamówień\", type = \"integer\" }\n\
         [campaign]\nid = { value = \"00001\" }\nstatus_id = { value = 1 }\n\
         next_call_date = { column = \"Kontakt\", date = \"%d.%m.%Y %H:%M\" }\n",
    )
    .unwrap();
    m
}

#[test]
fn xlsx_ods_and_xls_cells_give_the_payloads_of_the_same_csv() {
    let dir = tempfile::tempdir().unwrap();
    let m = typed_mapping(dir.path());
    let csv = dir.path().join("typed.csv");
    std::fs::write(&csv, TYPED_CSV).unwrap();
    let xlsx = dir.path().join("typed.xlsx");
    write_xlsx(&xlsx, "Arkusz1", &[], &typed_rows());
    let ods = dir.path().join("typed.ods");
    write_ods(&ods, "Arkusz1", &typed_rows());
    // The same cells as an Excel 97-2003 workbook, which no crate here
    // writes: tests/fixtures/make_typed_xls.py made it.
    let xls = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/typed.xls");
    let from_csv = dry_run(&csv, &m);
    assert_eq!(from_csv.code, Some(0), "{}", from_csv.stderr);
    assert_eq!(from_csv.payloads.len(), 2);
    let customer = &from_csv.payloads[&1].1["customer"];
    // What the CSV gives, to be sure the comparison compares something.
    assert_eq!(customer["phone_number"], "48601234567");
    assert_eq!(customer["birthdate"], "1985-03-15");
    assert_eq!(customer["identifier"], "90010112345");
    assert_eq!(customer["custom_fields"]["Kwota"], "1234.5");
    for file in [&xlsx, &ods, &xls] {
        let sheet = dry_run(file, &m);
        assert_eq!(sheet.code, Some(0), "{}: {}", file.display(), sheet.stderr);
        for row in [1, 2] {
            assert_eq!(
                sheet.payloads[&row].1,
                from_csv.payloads[&row].1,
                "{} row {row}",
                file.display()
            );
        }
    }
}

#[test]
fn the_sheet_is_chosen_by_name_and_a_wrong_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let xlsx = dir.path().join("book.xlsx");
    write_xlsx(&xlsx, "Klienci", &["Opis", "Notatki"], &typed_rows());
    let m = typed_mapping(dir.path());
    // The first sheet has no "Nazwisko": the mapping names what is missing.
    let first = dry_run(&xlsx, &m);
    assert_eq!(first.code, Some(2), "{}", first.stderr);
    assert!(first.stderr.contains("Nazwisko"), "{}", first.stderr);
    let text = std::fs::read_to_string(&m).unwrap();
    let named = dir.path().join("named.toml");
    std::fs::write(&named, format!("[source]\nsheet = \"Klienci\"\n{text}")).unwrap();
    let chosen = dry_run(&xlsx, &named);
    assert_eq!(chosen.code, Some(0), "{}", chosen.stderr);
    assert_eq!(chosen.payloads.len(), 2);
    assert!(
        chosen
            .stderr
            .contains("sheet \"Klienci\" (from the mapping of 3 sheets)"),
        "{}",
        chosen.stderr
    );
    let wrong = dir.path().join("wrong.toml");
    std::fs::write(&wrong, format!("[source]\nsheet = \"Kontakty\"\n{text}")).unwrap();
    let out = dry_run(&xlsx, &wrong);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr.contains("[source] sheet = \"Kontakty\": the file has no such sheet; it has \"Opis\", \"Notatki\", \"Klienci\""),
        "{}",
        out.stderr
    );
    // A spreadsheet under a CSV's name is named for what it is.
    let disguised = dir.path().join("book.csv");
    std::fs::copy(&xlsx, &disguised).unwrap();
    let out = dry_run(&disguised, &m);
    assert_eq!(out.code, Some(2));
    assert!(
        out.stderr
            .contains("this is a spreadsheet (a zip file: .xlsx), not a CSV"),
        "{}",
        out.stderr
    );
}

/// `--sheet` on `check` and `run` as on `init`: the sheet named on the
/// command line over the mapping's (which names none here); `run` records
/// it in the ledger, so that `retry` reads the rest of the same sheet.
#[tokio::test(flavor = "multi_thread")]
async fn sheet_on_the_command_line_is_read_by_check_run_and_the_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let xlsx = dir.path().join("book.xlsx");
    write_xlsx(&xlsx, "Klienci", &["Opis", "Notatki"], &typed_rows());
    let m = typed_mapping(dir.path());
    let check = |sheet: &[&str]| {
        common::output_of(
            bin()
                .arg("check")
                .arg(&xlsx)
                .arg("--mapping")
                .arg(&m)
                .args(sheet),
        )
    };
    assert_eq!(
        check(&[]).code,
        Some(2),
        "the first sheet has no \"Nazwisko\""
    );
    let out = check(&["--sheet", "Klienci"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stderr.contains("sheet \"Klienci\""), "{}", out.stderr);

    let sandbox = Sandbox::start(SandboxConfig {
        password: PASSWORD.into(),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let ledger = dir.path().join("l.jsonl");
    let mut pilot = common::run_command(
        &sandbox,
        xlsx.to_str().unwrap(),
        m.to_str().unwrap(),
        &ledger,
        PASSWORD,
    );
    pilot.args(["--sheet", "Klienci", "--limit", "1"]);
    let out = common::output(pilot).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(common::customers(&sandbox), 1);
    assert_eq!(lines(&ledger)[0]["sheet"], "Klienci");
    let mut retry = bin();
    retry.arg("retry").arg(&ledger).args([
        "--url",
        &sandbox.url(),
        "--user",
        "api_user",
        "--no-progress",
    ]);
    let out = common::output(retry).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(common::customers(&sandbox), 2, "the rest of the same sheet");
}

fn lines(ledger: &Path) -> Vec<Value> {
    std::fs::read_to_string(ledger)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sheet_imports_and_its_failed_rows_csv_imports_again() {
    let dir = tempfile::tempdir().unwrap().keep();
    // Twenty customers; a blank row after the fifth (skipped, as a blank
    // line is in a CSV); a #N/A in the phone of the tenth.
    let mut rows = vec![["Nazwisko", "Nr", "Telefon", "Urodzony"]
        .map(|s| Cell::Text(s.into()))
        .to_vec()];
    for i in 1..=20u32 {
        if i == 6 {
            rows.push(vec![Cell::Empty; 4]);
        }
        let phone = if i == 10 {
            Cell::Error("#N/A")
        } else {
            Cell::Number(600_000_000.0 + f64::from(i))
        };
        rows.push(vec![
            Cell::Text(format!("Klient {i}")),
            Cell::Text(format!("K-{i:03}")),
            phone,
            Cell::Date(1980, 1, (i % 28 + 1) as u8, None),
        ]);
    }
    let xlsx = dir.join("klienci.xlsx");
    write_xlsx(&xlsx, "Klienci", &[], &rows);
    let m = dir.join("m.toml");
    std::fs::write(
        &m,
        "[customer]\nsurname = \"Nazwisko\"\nidentifier = \"Nr\"\n\
         phone_number = { column = \"Telefon\", transform = [\"phone\"] }\n\
         birthdate = { column = \"Urodzony\", date = \"%d.%m.%Y\" }\n",
    )
    .unwrap();
    let sandbox = Sandbox::start(SandboxConfig {
        password: PASSWORD.into(),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let ledger = dir.join("l.jsonl");
    // A pilot of 4 rows, then `retry` reads the sheet for the rest.
    let mut pilot = common::run_command(
        &sandbox,
        xlsx.to_str().unwrap(),
        m.to_str().unwrap(),
        &ledger,
        PASSWORD,
    );
    pilot.args(["--limit", "4"]);
    let out = common::output(pilot).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(common::customers(&sandbox), 4);
    let mut retry = bin();
    retry.arg("retry").arg(&ledger).args([
        "--url",
        &sandbox.url(),
        "--user",
        "api_user",
        "--no-progress",
        "--rate",
        "2000",
    ]);
    let out = common::output(retry).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert_eq!(common::customers(&sandbox), 19, "every valid row once");
    let customer = sandbox.state_json()["customers"]
        .as_object()
        .unwrap()
        .values()
        .find(|c| c["identifier"] == "K-007")
        .cloned()
        .unwrap();
    assert_eq!(customer["phone_number"], "600000007");
    assert_eq!(customer["birthdate"], "1980-01-08");
    // Row 10 is on the sheet's row 12 (the header, then a blank row).
    let events = lines(&ledger);
    let bad: Vec<&Value> = events.iter().filter(|e| e["status"] == "invalid").collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(
        (bad[0]["row"].as_u64(), bad[0]["line"].as_u64()),
        (Some(10), Some(12))
    );
    let message = bad[0]["message"].as_str().unwrap();
    assert!(
        message.contains("line 12, column \"Telefon\": value \"#N/A\""),
        "{message}"
    );

    // The failed-rows CSV: UTF-8, the sheet's columns; fixed and imported
    // with the same mapping, its dates (ISO, as the sheet had them) read.
    let failed = dir.join("failed.csv");
    let out = bin()
        .arg("report")
        .arg(&ledger)
        .arg("--failed-csv")
        .arg(&failed)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&failed).unwrap();
    let mut lines_of_csv = text.lines();
    assert!(lines_of_csv
        .next()
        .unwrap()
        .starts_with("Nazwisko,Nr,Telefon,Urodzony,_row,_line"));
    let row = lines_of_csv.next().unwrap();
    assert!(
        row.starts_with("Klient 10,K-010,#N/A,1980-01-11,10,12,mapping,invalid"),
        "{row}"
    );
    assert_eq!(lines_of_csv.next(), None);
    std::fs::write(&failed, text.replace("#N/A", "600000010")).unwrap();
    let again = common::run_command(
        &sandbox,
        failed.to_str().unwrap(),
        m.to_str().unwrap(),
        &dir.join("again.jsonl"),
        PASSWORD,
    );
    let out = common::output(again).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(common::customers(&sandbox), 20);
}
