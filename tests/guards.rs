//! Guards for a job nobody watches: an export that would change too many of
//! the customers the state knows is refused before anything is sent, naming
//! the fields; a file whose columns changed says so.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;

use std::path::{Path, PathBuf};

use thulium_import::sandbox::{Sandbox, SandboxConfig};

const PASSWORD: &str = "guard-secret";

fn tempdir() -> PathBuf {
    tempfile::tempdir().unwrap().keep()
}

fn mapping(dir: &Path) -> PathBuf {
    let m = dir.join("m.toml");
    std::fs::write(
        &m,
        "[source]\ndelimiter = \";\"\n[customer]\nmatch = \"identifier\"\nsurname = \"Nazwisko\"\nname = \"Imię\"\nidentifier = \"ID\"\n",
    )
    .unwrap();
    m
}

/// `n` rows; with `bug`, every surname column holds the first name.
fn export(path: &Path, n: usize, bug: bool, extra_column: bool) {
    let mut text = String::from(if extra_column {
        "ID;Imię;Nazwisko;Nowa\n"
    } else {
        "ID;Imię;Nazwisko\n"
    });
    for i in 1..=n {
        let (first, last) = (format!("Imie{i}"), format!("Nazwisko{i}"));
        let surname = if bug { &first } else { &last };
        text.push_str(&format!("K{i:04};{first};{surname}"));
        text.push_str(if extra_column { ";x\n" } else { "\n" });
    }
    std::fs::write(path, text).unwrap();
}

async fn night(sandbox: &Sandbox, dir: &Path, csv: &Path, extra: &[&str]) -> common::Out {
    let ledger = dir.join(format!("l{}.jsonl", rand::random::<u64>()));
    let mut cmd = common::run_against(sandbox, PASSWORD, csv, &mapping(dir), &ledger);
    cmd.arg("--state").arg(dir.join("state.sqlite")).args(extra);
    common::output(cmd).await
}

/// Tonight's export has first names in every surname column: 500 of 500
/// customers would be overwritten. Refused (exit 2) before anything is sent,
/// naming the count, the field and the flag; `--max-changes 100%` lets a
/// meant change through.
#[tokio::test(flavor = "multi_thread")]
async fn an_export_bug_that_would_change_every_customer_is_refused() {
    let dir = tempdir();
    let sandbox = Sandbox::start(SandboxConfig {
        password: PASSWORD.into(),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let csv = dir.join("export.csv");
    export(&csv, 500, false, false);
    let n1 = night(&sandbox, &dir, &csv, &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());
    export(&csv, 500, true, false);
    let before = sandbox.requests().len();
    let n2 = night(&sandbox, &dir, &csv, &[]).await;
    assert_eq!(n2.code, Some(2), "{}", n2.text());
    let text = n2.text();
    assert!(
        text.contains("would update 500 of the 500 customers"),
        "{text}"
    );
    assert!(text.contains("surname 500"), "{text}");
    assert!(text.contains("--max-changes 50%"), "{text}");
    assert!(
        sandbox.requests()[before..]
            .iter()
            .all(|e| e.method == "GET"),
        "nothing sent"
    );
    let surnames_kept = common::by_identifier(&sandbox)
        .values()
        .all(|c| c["surname"].as_str().unwrap().starts_with("Nazwisko"));
    assert!(surnames_kept);
    // A change below the share goes through; a meant one with the flag.
    let n3 = night(&sandbox, &dir, &csv, &["--max-changes", "100%"]).await;
    assert_eq!(n3.code, Some(0), "{}", n3.text());
}

/// A column added to the export is said in the summary.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_header_is_said() {
    let dir = tempdir();
    let sandbox = Sandbox::start(SandboxConfig {
        password: PASSWORD.into(),
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let csv = dir.join("export.csv");
    export(&csv, 10, false, false);
    let n1 = night(&sandbox, &dir, &csv, &[]).await;
    assert_eq!(n1.code, Some(0), "{}", n1.text());
    assert!(!n1.text().contains("columns changed"), "{}", n1.text());
    export(&csv, 10, false, true);
    let n2 = night(&sandbox, &dir, &csv, &[]).await;
    assert_eq!(n2.code, Some(0), "{}", n2.text());
    assert!(
        n2.stdout.contains(
            "the file's columns changed since the last run with this state: added \"Nowa\""
        ),
        "{}",
        n2.text()
    );
}
