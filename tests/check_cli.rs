//! `check` and `run --dry-run` through the real binary, on real files.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

use assert_cmd::Command;
use serde_json::Value;

fn bin() -> Command {
    Command::cargo_bin("thulium-import").unwrap()
}

#[test]
fn check_reports_the_sample_bad_rows_with_line_column_value_reason() {
    let out = bin()
        .args([
            "check",
            "samples/crm_export.csv",
            "--mapping",
            "mappings/crm_export.toml",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            report["rows"].as_u64(),
            report["valid"].as_u64(),
            report["invalid"].as_u64()
        ),
        (Some(300), Some(292), Some(8))
    );
    let errors = report["errors"].as_array().unwrap();
    let lines: Vec<u64> = errors.iter().map(|e| e["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, [24, 52, 95, 150, 182, 242, 303, 340]);
    let phone = &errors[0];
    assert_eq!(
        (
            phone["row"].as_u64(),
            phone["column"].as_str(),
            phone["value"].as_str()
        ),
        (Some(17), Some("Telefon"), Some("601 234 56x"))
    );
    assert!(phone["reason"].as_str().unwrap().contains("letters"));
    // Polish letters in the windows-1250 header and cells arrive as UTF-8.
    assert_eq!(errors[5]["column"], "Liczba zamówień");
    assert_eq!(errors[5]["value"], "dużo");

    let out = bin()
        .args([
            "check",
            "samples/crm_export.csv",
            "--mapping",
            "mappings/crm_export.toml",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(
            "line 24, column \"Telefon\": value \"601 234 56x\": letters in a phone number"
        ),
        "{text}"
    );
    assert!(
        text.contains("300 rows read: 292 valid, 8 invalid."),
        "{text}"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("delimiter ';' (from the mapping), encoding windows-1250"),
        "{stderr}"
    );
}

#[test]
fn dry_run_shows_utf8_payloads_from_a_windows_1250_file() {
    let out = bin()
        .args([
            "run",
            "samples/crm_export.csv",
            "--mapping",
            "mappings/crm_export.toml",
            "--dry-run",
            "--show-payloads",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let customer = &first["payloads"]["customer"];
    assert_eq!(customer["surname"], "Szczepańska");
    assert_eq!(customer["address"]["street"], "Świętokrzyska");
    assert_eq!(customer["address"]["city"], "Wrocław");
    assert_eq!(customer["birthdate"], "1998-07-28");
    assert_eq!(customer["phone_number"], serde_json::json!(["227354684"]));
    assert!(text.contains("Dry run: nothing was sent."));
}

#[test]
fn unusable_mapping_or_file_exits_2_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("m.toml");
    std::fs::write(&mapping, "[source]\ndelimiter = \";\"\nencoding = \"windows-1250\"\n[customer]\nsurname = \"Nazwisk\"\n").unwrap();
    let out = bin()
        .args(["check", "samples/crm_export.csv", "--mapping"])
        .arg(&mapping)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("m.toml:5: customer.surname: column \"Nazwisk\" is not in the header (closest: \"Nazwisko\""), "{stderr}");

    let out = bin()
        .args([
            "check",
            "no/such.csv",
            "--mapping",
            "mappings/crm_export.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("no/such.csv: cannot open"));

    let csv = dir.path().join("dup.csv");
    std::fs::write(&csv, "Nazwisko;Nazwisko\nA;B\n").unwrap();
    let out = bin()
        .args(["check"])
        .arg(&csv)
        .args(["--mapping", "mappings/crm_export.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("duplicate header name \"Nazwisko\""));
}

#[test]
fn a_utf8_file_that_is_really_windows_1250_names_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("x.csv");
    let (bytes, _, _) =
        encoding_rs::WINDOWS_1250.encode("Nazwisko,Miasto\nNowak,Łódź\nKowalski,Radom\n");
    std::fs::write(&csv, &bytes).unwrap();
    let mapping = dir.path().join("m.toml");
    std::fs::write(
        &mapping,
        "[customer]\nsurname = \"Nazwisko\"\n[customer.address]\ncity = \"Miasto\"\n",
    )
    .unwrap();
    let out = bin()
        .arg("check")
        .arg(&csv)
        .arg("--mapping")
        .arg(&mapping)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("line 2, column \"Miasto\""), "{text}");
    assert!(text.contains("encoding = \"windows-1250\""), "{text}");
    assert!(text.contains("2 rows read: 1 valid, 1 invalid."), "{text}");
}
