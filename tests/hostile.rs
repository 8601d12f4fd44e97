//! Hostile and broken input through the real binary: each case gives a
//! clear message and a documented exit code, never a panic (exit 101), and
//! no row is lost (every row is counted valid or invalid).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

use std::path::Path;

use serde_json::Value;

const MAPPING: &str = "[source]\ndelimiter = \";\"\n[customer]\nsurname = { column = \"Nazwisko\", required = true }\nname = \"Imię\"\n[campaign]\nwhen = \"Kampania\"\nid = \"Kampania\"\n";

struct Case {
    name: &'static str,
    csv: Vec<u8>,
    code: i32,
    /// Expected text in the output (stdout and stderr together).
    says: &'static str,
    /// Rows and invalid rows expected (for usable files).
    counts: Option<(u64, u64)>,
}

fn check(dir: &Path, case: &Case, mapping: &str) -> (i32, String, Option<Value>) {
    let csv = dir.join(format!("{}.csv", case.name.replace(' ', "_")));
    std::fs::write(&csv, &case.csv).unwrap();
    let toml = dir.join("m.toml");
    std::fs::write(&toml, mapping).unwrap();
    let run = |json: bool| {
        let mut cmd = assert_cmd::Command::cargo_bin("thulium-import").unwrap();
        cmd.arg("check").arg(&csv).arg("--mapping").arg(&toml);
        if json {
            cmd.arg("--json");
        }
        cmd.output().unwrap()
    };
    let text = run(false);
    let json = run(true);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&text.stdout),
        String::from_utf8_lossy(&text.stderr)
    );
    (
        text.status.code().unwrap_or(-1),
        all,
        serde_json::from_slice(&json.stdout).ok(),
    )
}

#[test]
fn hostile_files_get_clear_messages_and_exit_codes() {
    let header = "Nazwisko;Imię;Kampania\n";
    let big = "x".repeat(10 * 1024 * 1024);
    let cases = vec![
        Case {
            name: "empty file",
            csv: vec![],
            code: 2,
            says: "the file is empty",
            counts: None,
        },
        Case {
            name: "header only",
            csv: header.into(),
            code: 0,
            says: "no data rows",
            counts: Some((0, 0)),
        },
        Case {
            name: "BOM in the middle",
            csv: format!("\u{feff}{header}Nowak;Jan;\n\u{feff}{header}Kowalski;Ewa;\n").into(),
            code: 1,
            says: "byte-order mark inside the file",
            counts: Some((3, 1)),
        },
        Case {
            name: "NUL bytes",
            csv: format!("{header}Now\0ak;Jan;\nKowalski;Ewa;\n").into(),
            code: 1,
            says: "NUL byte",
            counts: Some((2, 1)),
        },
        Case {
            name: "a 10 MB field",
            csv: format!("{header}{big};Jan;\nKowalski;Ewa;\n").into(),
            code: 0,
            says: "2 rows read: 2 valid",
            counts: Some((2, 0)),
        },
        Case {
            name: "unbalanced quote at the end",
            csv: format!("{header}Nowak;Jan;\n\"Kowalski;Ewa;\n").into(),
            code: 1,
            says: "quoted field is never closed",
            counts: Some((2, 1)),
        },
        Case {
            name: "more and fewer fields",
            csv: format!("{header}Nowak;Jan;;x\nKowalski\nWójcik;Ola;\n").into(),
            code: 1,
            says: "has 4 fields, the header has 3",
            counts: Some((3, 2)),
        },
        Case {
            name: "invalid UTF-8",
            csv: [header.as_bytes(), b"Now\xffak;Jan;\nKowalski;Ewa;\n"].concat(),
            code: 1,
            says: "not valid UTF-8",
            counts: Some((2, 1)),
        },
        Case {
            name: "windows-1250 read as UTF-8",
            csv: encoding_rs::WINDOWS_1250
                .encode(&format!("{header}Wiśniewska;Łucja;\nNowak;Jan;\n"))
                .0
                .into_owned(),
            code: 2,
            says: "encoding = \"windows-1250\"",
            counts: None,
        },
        Case {
            name: "duplicate header names",
            csv: "Nazwisko;Imię;Nazwisko\nA;B;C\n".into(),
            code: 2,
            says: "duplicate header name \"Nazwisko\"",
            counts: None,
        },
        Case {
            name: "campaign id of the wrong length",
            csv: format!("{header}Nowak;Jan;0001\nKowalski;Ewa;00001\n").into(),
            code: 1,
            says: "five characters",
            counts: Some((2, 1)),
        },
    ];
    let dir = tempfile::tempdir().unwrap();
    for case in &cases {
        let (code, all, json) = check(dir.path(), case, MAPPING);
        assert_ne!(code, 101, "{}: panicked\n{all}", case.name);
        assert_eq!(
            code,
            case.code,
            "{}: exit code\n{}",
            case.name,
            &all[..all.len().min(2000)]
        );
        assert!(
            all.contains(case.says),
            "{}: expected {:?} in\n{}",
            case.name,
            case.says,
            &all[..all.len().min(2000)]
        );
        assert!(
            all.len() < 100_000,
            "{}: the 10 MB value is not echoed",
            case.name
        );
        if let Some((rows, invalid)) = case.counts {
            let json = json.unwrap_or_else(|| panic!("{}: --json output", case.name));
            assert_eq!(
                (json["rows"].as_u64(), json["invalid"].as_u64()),
                (Some(rows), Some(invalid)),
                "{}: {json}",
                case.name
            );
            assert_eq!(
                json["valid"].as_u64().unwrap() + json["invalid"].as_u64().unwrap(),
                rows,
                "{}: no row lost",
                case.name
            );
        }
    }
}

#[test]
fn hostile_mappings_are_refused_before_reading_rows() {
    let dir = tempfile::tempdir().unwrap();
    let case = Case {
        name: "ok",
        csv: "Nazwisko;Imię;Kampania\nNowak;Jan;\n".into(),
        code: 2,
        says: "",
        counts: None,
    };
    for (mapping, says) in [
        (
            "[customer]\nsurname = \"Nazwiskoo\"\n",
            "closest: \"Nazwisko\"",
        ),
        (
            "[customer\nsurname = \"Nazwisko\"\n",
            "TOML parse error at line 1",
        ),
        (
            "[customer]\nsurname = \"Nazwisko\"\n[campaign]\nid = { value = \"0001\" }\n",
            "five characters",
        ),
        (
            "[customer]\nsurname = \"Nazwisko\"\nnickname = \"Imię\"\n",
            "unknown field `nickname`",
        ),
    ] {
        let (code, all, _) = check(dir.path(), &case, mapping);
        assert_eq!(code, 2, "{mapping}\n{all}");
        assert!(all.contains(says), "{says:?} in\n{all}");
    }
}
