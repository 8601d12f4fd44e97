//! `check` throughput against a bare `csv` read of the same file.
//!
//! `cargo bench --bench check -- [ROWS]` (default 1,000,000) generates a
//! UTF-8, `;`-separated export of ROWS valid customer rows under
//! `target/bench-data/` (once), then times, in seven interleaved rounds:
//! 1. a bare read with the `csv` crate into a `ByteRecord` (no UTF-8
//!    check): the floor issue 20 measures against;
//! 2. the same into a `StringRecord` (UTF-8 checked), the floor used before;
//! 3. thulium-import's `check` path in-process (read, decode and check
//!    every value of every stage, on every core);
//! 4. thulium-import's source alone, one thread (read and decode each row).
//!
//! It prints rows/s and the ratio of `check` to each floor, best to best and
//! per round. Peak memory is measured on the binary by `benches/run.sh`.
//!
//! `THULIUM_BENCH_ONLY=check` (or `bytes`, `strings`, `source`) runs that
//! one part once and nothing else: for a profiler, e.g.
//! `THULIUM_BENCH_ONLY=check valgrind --tool=callgrind <bench binary> 200000`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark may panic

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use thulium_import::check::{self, Input};

const HEADER: &str = "ID klienta;Imię;Nazwisko;E-mail;Telefon;Data urodzenia;VIP;Ulica;Nr domu;Miasto;Segment;Kanał pozyskania;Liczba zamówień;Kampania;Opiekun;Następny kontakt;Notatka;Data notatki";

/// Writes `rows` realistic rows (deterministic) to `path`.
pub fn generate(path: &Path, rows: usize) {
    let first = ["Anna", "Piotr", "Małgorzata", "Łukasz", "Żaneta", "Jędrzej"];
    let last = [
        "Nowak",
        "Wiśniewska",
        "Dąbrowski",
        "Kozłowska",
        "Woźniak",
        "Zając",
    ];
    let cities = ["Warszawa", "Kraków", "Łódź", "Wrocław", "Gdańsk"];
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "{HEADER}").unwrap();
    for i in 0..rows {
        let (f, l) = (first[i % 6], last[(i / 6) % 6]);
        let note = if i % 5 == 0 {
            "\"Prosi o kontakt;\r\npo 16:00\""
        } else {
            ""
        };
        let note_date = if i % 5 == 0 { "09.11.2026 08:06" } else { "" };
        let campaign = if i % 3 == 0 { "00001" } else { "" };
        let (agent, next) = if i % 3 == 0 {
            ("j.doe", "28.12.2026 11:45")
        } else {
            ("", "")
        };
        write!(
            out,
            "CRM-{i};{f};{l};k{i}@example.pl;+48 601 {:03} {:03};{:02}.{:02}.{};{};Długa;{};{};A;www;{};{campaign};{agent};{next};{note};{note_date}\r\n",
            i % 1000,
            (i / 1000) % 1000,
            i % 28 + 1,
            i % 12 + 1,
            1950 + i % 50,
            if i % 2 == 0 { "tak" } else { "nie" },
            i % 120 + 1,
            cities[i % 5],
            i % 40,
        )
        .unwrap();
    }
    out.flush().unwrap();
}

const MAPPING: &str = r#"
[source]
delimiter = ";"
[customer]
surname = { column = "Nazwisko", required = true }
name = "Imię"
identifier = "ID klienta"
email = { column = "E-mail", split = "," }
phone_number = { column = "Telefon", split = ",", transform = ["phone"] }
birthdate = { column = "Data urodzenia", date = "%d.%m.%Y" }
vip = { column = "VIP", map = { tak = true, nie = false } }
type = { value = "Klient" }
[customer.address]
street = "Ulica"
building = "Nr domu"
city = "Miasto"
[customer.custom_fields]
"Segment" = "Segment"
[[field_group]]
group_id = 2
[field_group.values]
12 = "Kanał pozyskania"
8 = { column = "Liczba zamówień", type = "integer" }
[campaign]
when = "Kampania"
id = "Kampania"
status_id = { value = 1 }
agent_login = "Opiekun"
next_call_date = { column = "Następny kontakt", date = "%d.%m.%Y %H:%M" }
[feed]
when = "Notatka"
message = "Notatka"
time = { column = "Data notatki", date = "%d.%m.%Y %H:%M" }
"#;

/// Seconds taken by `f`.
fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

fn main() {
    let rows: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let csv_path = dir.join(format!("export-{rows}.csv"));
    if !csv_path.exists() {
        generate(&csv_path, rows);
    }
    let mapping_path = dir.join("bench-mapping.toml");
    std::fs::write(&mapping_path, MAPPING).unwrap();
    let size = std::fs::metadata(&csv_path).unwrap().len();
    println!(
        "file: {} ({rows} rows, {:.1} MiB)",
        csv_path.display(),
        size as f64 / 1048576.0
    );

    let bare_bytes = || {
        let mut r = csv::ReaderBuilder::new()
            .delimiter(b';')
            .from_path(&csv_path)
            .unwrap();
        let mut rec = csv::ByteRecord::new();
        let mut n = 0usize;
        while r.read_byte_record(&mut rec).unwrap() {
            n += 1;
        }
        assert_eq!(n, rows);
    };
    let bare_strings = || {
        let mut r = csv::ReaderBuilder::new()
            .delimiter(b';')
            .from_path(&csv_path)
            .unwrap();
        let mut rec = csv::StringRecord::new();
        let mut n = 0usize;
        while r.read_record(&mut rec).unwrap() {
            n += 1;
        }
        assert_eq!(n, rows);
    };
    let check = || {
        let mut input = Input::open(&csv_path, &mapping_path).unwrap();
        let report = check::check_parallel(&mut input).unwrap();
        assert_eq!(
            (report.rows as usize, report.invalid),
            (rows, 0),
            "{:?}",
            report.errors.first()
        );
    };
    let source_only = || {
        let options = thulium_import::source::SourceOptions {
            delimiter: Some(b';'),
            ..Default::default()
        };
        let mut source = thulium_import::source::Source::open(&csv_path, &options).unwrap();
        while let Some(r) = source.next_row() {
            r.unwrap().unwrap();
        }
    };
    if let Ok(only) = std::env::var("THULIUM_BENCH_ONLY") {
        match only.as_str() {
            "check" => check(),
            "bytes" => bare_bytes(),
            "strings" => bare_strings(),
            "source" => source_only(),
            other => panic!("THULIUM_BENCH_ONLY={other}: expected check, bytes, strings or source"),
        }
        return;
    }
    // Interleaved rounds: the machine's speed drifts (the bare read alone
    // varies by half between runs), and each round's ratio compares runs
    // made seconds apart.
    const ROUNDS: usize = 7;
    let (mut bytes, mut strings, mut ours, mut source) = (vec![], vec![], vec![], vec![]);
    let (mut bytes_ratios, mut strings_ratios) = (vec![], vec![]);
    for _ in 0..ROUNDS {
        let b = timed(bare_bytes);
        let s = timed(bare_strings);
        let c = timed(check);
        source.push(timed(source_only));
        bytes_ratios.push(c / b);
        strings_ratios.push(c / s);
        bytes.push(b);
        strings.push(s);
        ours.push(c);
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    let worst = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let line = |what: &str, v: &[f64]| {
        println!(
            "{what:<14} best {:.3} s ({:.0} rows/s), worst {:.3} s",
            best(v),
            rows as f64 / best(v),
            worst(v)
        );
    };
    line("ByteRecord:", &bytes);
    line("StringRecord:", &strings);
    line("source only:", &source);
    line("check:", &ours);
    let ratio = |what: &str, floor: &[f64], ratios: &mut Vec<f64>| {
        ratios.sort_by(f64::total_cmp);
        println!(
            "ratio check / {what}: {:.2}x best to best; per round median {:.2}x ({:.2}x to {:.2}x)",
            best(&ours) / best(floor),
            ratios[ROUNDS / 2],
            ratios[0],
            ratios[ROUNDS - 1]
        );
    };
    ratio("ByteRecord read", &bytes, &mut bytes_ratios);
    ratio("StringRecord read", &strings, &mut strings_ratios);
}
