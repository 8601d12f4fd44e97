//! Helpers shared by the end-to-end tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test file uses a part

use std::path::Path;

pub mod sheets;

use serde_json::Value;
use thulium_import::sandbox::Sandbox;

/// The binary, with `password` in `THULIUM_PASSWORD` and no
/// `THULIUM_URL`/`THULIUM_USER` from the environment.
pub fn bin(password: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("thulium-import"));
    cmd.env("THULIUM_PASSWORD", password)
        .env_remove("THULIUM_URL")
        .env_remove("THULIUM_USER");
    cmd
}

/// `thulium-import run <csv> --mapping <mapping> --ledger <ledger>` against
/// `sandbox` as `api_user`, without progress bars, at a rate that does not
/// slow a test; each test adds its own flags.
pub fn run_against(
    sandbox: &Sandbox,
    password: &str,
    csv: &Path,
    mapping: &Path,
    ledger: &Path,
) -> std::process::Command {
    let mut cmd = bin(password);
    cmd.arg("run")
        .arg(csv)
        .arg("--mapping")
        .arg(mapping)
        .arg("--ledger")
        .arg(ledger)
        .args([
            "--url",
            &sandbox.url(),
            "--user",
            "api_user",
            "--no-progress",
        ])
        .args(["--rate", "5000"]);
    cmd
}

/// How a command ended: its exit code and what it printed (UTF-8, as the
/// tool always writes).
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// stdout then stderr, for searching and for failure messages.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` to its end.
pub fn output_of(cmd: &mut std::process::Command) -> Out {
    let out = cmd.output().unwrap();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// [`output_of`] off the async runtime's threads (the sandbox runs on them).
pub async fn output(mut cmd: std::process::Command) -> Out {
    tokio::task::spawn_blocking(move || output_of(&mut cmd))
        .await
        .unwrap()
}

/// `thulium-import report <LEDGER> --json`, parsed.
pub fn report(ledger: &Path) -> Value {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("thulium-import"))
        .arg("report")
        .arg(ledger)
        .arg("--json")
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The customers the sandbox holds, by identifier (those without one left
/// out).
pub fn by_identifier(sandbox: &Sandbox) -> std::collections::BTreeMap<String, Value> {
    sandbox.state_json()["customers"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|c| Some((c["identifier"].as_str()?.to_string(), c.clone())))
        .collect()
}

/// How many customers the sandbox holds.
pub fn customers(sandbox: &Sandbox) -> usize {
    sandbox.state_json()["customers"].as_object().unwrap().len()
}

/// The identifiers of the customers the sandbox holds (one per customer).
pub fn identifiers(sandbox: &Sandbox) -> Vec<String> {
    sandbox.state_json()["customers"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["identifier"].as_str().unwrap().to_string())
        .collect()
}

/// Starts a command with its output discarded (to be killed mid-run).
pub fn spawn_quiet(mut cmd: std::process::Command) -> std::process::Child {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// `thulium-import run CSV --mapping TOML` against `sandbox`, quiet and fast
/// (`--no-progress --rate 2000`), with `password` in `THULIUM_PASSWORD` and
/// no `THULIUM_URL`/`THULIUM_USER` from the environment.
pub fn run_command(
    sandbox: &Sandbox,
    csv: &str,
    mapping: &str,
    ledger: &Path,
    password: &str,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("thulium-import"));
    cmd.args([
        "run",
        csv,
        "--mapping",
        mapping,
        "--url",
        &sandbox.url(),
        "--user",
        "api_user",
    ])
    .args(["--no-progress", "--rate", "2000", "--ledger"])
    .arg(ledger)
    .env("THULIUM_PASSWORD", password)
    .env_remove("THULIUM_URL")
    .env_remove("THULIUM_USER");
    cmd
}

/// Writes a UTF-8, `;`-separated export: the sample's valid rows repeated
/// `copies` times with unique identifiers (`CRM-10001-<copy>`) and unique
/// e-mail addresses (`r<n>@example.pl`, one per row, so that customers
/// without an identifier can be told apart too); every `blank_every`-th row (if any)
/// has an empty identifier cell. Returns the number of rows.
pub fn make_export(path: &Path, copies: usize, blank_every: Option<usize>) -> usize {
    let bytes = std::fs::read("samples/crm_export.csv").unwrap();
    let text = encoding_rs::WINDOWS_1250.decode(&bytes).0.into_owned();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b';')
        .flexible(true)
        .from_reader(text.as_bytes());
    let headers = reader.headers().unwrap().clone();
    let rows: Vec<csv::StringRecord> = reader
        .records()
        .map(Result::unwrap)
        .filter(|r| r.len() == headers.len())
        .collect();
    let mut w = csv::WriterBuilder::new()
        .delimiter(b';')
        .from_path(path)
        .unwrap();
    w.write_record(&headers).unwrap();
    let id = headers.iter().position(|h| h == "ID klienta").unwrap();
    let email = headers.iter().position(|h| h == "E-mail").unwrap();
    let mut n = 0;
    for k in 0..copies {
        for r in &rows {
            let mut r: Vec<String> = r.iter().map(str::to_string).collect();
            n += 1;
            r[id] = match blank_every {
                Some(b) if n % b == 0 => String::new(),
                _ => format!("{}-{k}", r[id]),
            };
            r[email] = format!("r{n}@example.pl");
            w.write_record(&r).unwrap();
        }
    }
    w.flush().unwrap();
    n
}

/// The sample mapping reading a UTF-8 copy, written to `dir`.
pub fn utf8_mapping(dir: &Path) -> std::path::PathBuf {
    let mapping = dir.join("m.toml");
    let text = std::fs::read_to_string("mappings/crm_export.toml")
        .unwrap()
        .replace("encoding = \"windows-1250\"", "encoding = \"utf-8\"");
    std::fs::write(&mapping, text).unwrap();
    mapping
}

/// Customers the sandbox holds more than once: by identifier where they
/// have one, by e-mail address otherwise. Empty when nothing is doubled.
pub fn doubled_customers(sandbox: &Sandbox) -> Vec<String> {
    let state = sandbox.state_json();
    let mut seen = std::collections::HashMap::new();
    for c in state["customers"].as_object().unwrap().values() {
        let key = match c["identifier"].as_str() {
            Some(i) if !i.is_empty() => format!("identifier {i}"),
            _ => format!("email {}", c["email"]),
        };
        *seen.entry(key).or_insert(0) += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect()
}

/// Field-group items the sandbox holds more than once for one (customer,
/// group).
pub fn doubled_items(sandbox: &Sandbox) -> Vec<String> {
    let state = sandbox.state_json();
    let mut seen = std::collections::HashMap::new();
    for i in state["field_group_items"].as_array().unwrap() {
        *seen
            .entry((i["customer_id"].as_i64(), i["group_id"].as_i64()))
            .or_insert(0) += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, n)| format!("{k:?} ×{n}"))
        .collect()
}

/// Files that are not exports, written to `dir` under a CSV's name, each
/// with what the tool should say it looks like: a real gzip of a CSV, a
/// zip holding a CSV (not a spreadsheet), an ELF program's header, a PDF's
/// start, and random bytes.
pub fn not_exports(dir: &Path) -> Vec<(std::path::PathBuf, &'static str)> {
    let csv = b"Nazwisko;E-mail\nKowalski;jan@example.pl\n";
    let gzip = {
        // One stored deflate block, then the CRC-32 and length gzip ends with.
        let mut g = vec![0x1F, 0x8B, 0x08, 0, 0, 0, 0, 0, 0, 0xFF, 0x01];
        let len = csv.len() as u16;
        g.extend_from_slice(&len.to_le_bytes());
        g.extend_from_slice(&(!len).to_le_bytes());
        g.extend_from_slice(csv);
        g.extend_from_slice(&crc32(csv).to_le_bytes());
        g.extend_from_slice(&(csv.len() as u32).to_le_bytes());
        g
    };
    let zip = {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("export.csv", stored).unwrap();
        std::io::Write::write_all(&mut zip, csv).unwrap();
        zip.finish().unwrap().into_inner()
    };
    let mut elf = b"\x7FELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0\x3E\0\x01\0\0\0".to_vec();
    elf.resize(4096, 0);
    let pdf = b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n";
    // A fixed pseudo-random sequence (xorshift): a corrupt download.
    let mut x: u32 = 0x2545_F491;
    let random: Vec<u8> = (0..8192)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect();
    let files: [(&str, Vec<u8>, &str); 5] = [
        ("export.csv.gz.csv", gzip, "gzip data"),
        ("export.zip.csv", zip, "a zip archive"),
        ("program.csv", elf, "an ELF program"),
        ("document.csv", pdf.to_vec(), "a PDF document"),
        ("random.csv", random, "binary data"),
    ];
    files
        .into_iter()
        .map(|(name, bytes, what)| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            (path, what)
        })
        .collect()
}

/// CRC-32 (IEEE), bit by bit: enough for a test's few bytes.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
