//! `check` and `run --dry-run` through the real binary, on real files.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;

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

    // Fewer listed than there are: both ways to see the rest are named,
    // and `--all` lists them.
    let listed = |extra: &[&str]| {
        let out = bin()
            .args([
                "check",
                "samples/crm_export.csv",
                "--mapping",
                "mappings/crm_export.toml",
                "--max-errors",
                "3",
            ])
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let text = listed(&[]);
    assert!(
        text.contains(
            "... and 5 more problem(s) (`check --all` lists them, `check --json` gives them all)"
        ),
        "{text}"
    );
    let all = listed(&["--all"]);
    assert!(!all.contains("more problem(s)"), "{all}");
    assert_eq!(all.matches("\nline ").count(), 8, "{all}");
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

/// A gzip, a zip of a CSV, a program, a PDF, random bytes: one sentence
/// saying what the file looks like, exit 2, for `check` and `run
/// --dry-run` alike (they open files through the same source).
#[test]
fn a_file_that_is_not_an_export_is_said_in_one_sentence_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    for (file, what) in common::not_exports(dir.path()) {
        for command in [&["check"][..], &["run", "--dry-run"][..]] {
            let out = bin()
                .args(command)
                .arg(&file)
                .args(["--mapping", "mappings/crm_export.toml"])
                .output()
                .unwrap();
            let stderr = String::from_utf8(out.stderr).unwrap();
            assert_eq!(out.status.code(), Some(2), "{command:?} {what}: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
            assert!(
                stderr.contains(&format!("this is not a CSV file: it looks like {what}")),
                "{stderr}"
            );
            assert!(out.stdout.is_empty(), "{command:?} {what}");
        }
    }
}

/// Every command that runs tells in its `--help` what the README tells:
/// the exit codes, where the password comes from, what `<FILE>` may be.
#[test]
fn help_tells_the_exit_codes_credentials_and_what_a_file_may_be() {
    for command in ["run", "check", "init", "retry", "sync", "report", "plan"] {
        let out = bin().args([command, "--help"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let help = String::from_utf8(out.stdout).unwrap();
        for said in [
            "Exit codes:",
            "0  every row done",
            "1  finished, but some rows are not done",
            "2  unusable input",
            "3  aborted",
            "THULIUM_PASSWORD",
        ] {
            assert!(
                help.contains(said),
                "{command} --help lacks {said:?}:\n{help}"
            );
        }
    }
    // undo's codes speak of what it takes back.
    let out = bin().args(["undo", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for said in [
        "Exit codes:",
        "0  everything reversed",
        "1  something kept",
        "THULIUM_PASSWORD",
    ] {
        assert!(help.contains(said), "undo --help lacks {said:?}:\n{help}");
    }
    for command in ["run", "check", "init", "plan"] {
        let out = bin().args([command, "--help"]).output().unwrap();
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(help.contains("<FILE>"), "{help}");
        assert!(
            help.contains("a CSV or a spreadsheet (.xlsx, .xls, .ods)"),
            "{command}: {help}"
        );
        assert!(help.contains("--sheet <NAME>"), "{command}: {help}");
    }
}

/// `run --dry-run` takes `check`'s `--max-errors`; `run` without
/// `--dry-run` refuses it (exit 2) rather than ignore it.
#[test]
fn dry_run_takes_max_errors() {
    let listed = |extra: &[&str]| {
        let out = bin()
            .args([
                "run",
                "samples/crm_export.csv",
                "--mapping",
                "mappings/crm_export.toml",
                "--dry-run",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stdout = String::from_utf8(out.stdout).unwrap();
        stdout.lines().filter(|l| l.starts_with("line ")).count()
    };
    assert_eq!(listed(&[]), 8);
    assert_eq!(listed(&["--max-errors", "2"]), 2);
    let out = bin()
        .args([
            "run",
            "samples/crm_export.csv",
            "--mapping",
            "mappings/crm_export.toml",
            "--max-errors",
            "2",
            "--sandbox",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
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

/// `check` maps rows on every core from raw batches; the row-by-row path
/// (`run --dry-run`) decodes as it reads. On a file long enough for many
/// batches, with every kind of bad row scattered through it, both must find
/// the same problems in the same rows, in UTF-8 and in windows-1250.
#[test]
fn parallel_check_agrees_with_the_row_by_row_check_on_a_messy_file() {
    use thulium_import::check::{self, Input};

    let dir = tempfile::tempdir().unwrap();
    let mapping = dir.path().join("m.toml");
    for (encoding, bad_byte) in [("utf-8", 0xFFu8), ("windows-1250", 0x98u8)] {
        let mut text = String::from("Nazwisko;Telefon;Urodzony;Notatka\r\n");
        let mut bad = Vec::new();
        let mut bad_bytes_rows = Vec::new();
        for row in 1..=6000u64 {
            let phone = if row % 131 == 0 {
                "12x"
            } else {
                "+48 601 234 567"
            };
            let date = if row % 149 == 0 {
                "31.02.1990"
            } else {
                "05.03.1990"
            };
            let name = match row {
                r if r % 173 == 0 => "Nul\0ek",
                r if r % 211 == 0 => "Bom\u{feff}ski",
                r if r % 229 == 0 => "",
                _ => "Żółć",
            };
            let note = if row % 5 == 0 {
                "\"dwie;\r\nlinie\""
            } else {
                ""
            };
            if row % 97 == 0 {
                text.push_str(&format!("{name};{phone}\r\n"));
            } else {
                text.push_str(&format!("{name};{phone};{date};{note}\r\n"));
            }
            if row % 257 == 0 {
                bad_bytes_rows.push(row);
            }
            if [97, 131, 149, 173, 211, 229, 257]
                .iter()
                .any(|k| row % k == 0)
            {
                bad.push(row);
            }
        }
        text.push_str("Ostatni;601234567;05.03.1990;\"never closed\r\n");
        bad.push(6001);
        let (bytes, _, _) = encoding_rs::Encoding::for_label(encoding.as_bytes())
            .unwrap()
            .encode(&text);
        // An undecodable byte in the name of some rows (after encoding).
        let mut bytes = bytes.into_owned();
        let mut line_starts = vec![0usize];
        let mut in_quote = false;
        for (i, b) in bytes.iter().enumerate() {
            match b {
                b'"' => in_quote = !in_quote,
                b'\n' if !in_quote => line_starts.push(i + 1),
                _ => {}
            }
        }
        for row in &bad_bytes_rows {
            bytes[line_starts[*row as usize]] = bad_byte;
        }
        let csv = dir.path().join(format!("{encoding}.csv"));
        std::fs::write(&csv, &bytes).unwrap();
        std::fs::write(
            &mapping,
            format!(
                "[source]\ndelimiter = \";\"\nencoding = \"{encoding}\"\n[customer]\n\
                 surname = {{ column = \"Nazwisko\", required = true }}\n\
                 phone_number = {{ column = \"Telefon\", split = \",\", transform = [\"phone\"] }}\n\
                 birthdate = {{ column = \"Urodzony\", date = \"%d.%m.%Y\" }}\n"
            ),
        )
        .unwrap();
        let mut input = Input::open(&csv, &mapping).unwrap();
        let one_by_one = check::check(&mut input, |_, _, _| {}).unwrap();
        let mut input = Input::open(&csv, &mapping).unwrap();
        let parallel = check::check_parallel(&mut input).unwrap();

        let mut invalid_rows: Vec<u64> = parallel.errors.iter().map(|e| e.row).collect();
        invalid_rows.dedup();
        assert_eq!(invalid_rows, bad, "{encoding}: the bad rows, and only them");
        assert_eq!(
            (parallel.rows, parallel.valid, parallel.invalid),
            (one_by_one.rows, one_by_one.valid, one_by_one.invalid),
            "{encoding}"
        );
        assert_eq!((parallel.rows, parallel.invalid), (6001, bad.len() as u64));
        assert_eq!(parallel.errors, one_by_one.errors, "{encoding}");
        // Each message names the line its row starts on.
        let nul = parallel.errors.iter().find(|e| e.row == 173).unwrap();
        assert!(nul.reason.contains("NUL"), "{nul:?}");
    }
}
