//! `check` throughput against a bare `csv` read of the same file.
//!
//! `cargo bench --bench check -- [ROWS]` (default 1,000,000) generates a
//! UTF-8, `;`-separated export of ROWS valid customer rows under
//! `target/bench-data/` (once), then times, in seven interleaved rounds:
//! 1. a bare read with the `csv` crate (`StringRecord`, UTF-8 checked);
//! 2. thulium-import's `check` path in-process (read, decode and check
//!    every value of every stage, on every core);
//! 3. thulium-import's source alone, one thread (read and decode each row).
//!
//! It prints rows/s and the ratio, best to best and per round. Peak memory is measured on the binary by
//! `benches/run.sh`.

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

    let bare_read = || {
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
    // Interleaved rounds: the machine's speed drifts (the bare read alone
    // varies by half between runs), and each round's ratio compares two
    // runs made seconds apart.
    const ROUNDS: usize = 7;
    let (mut bare, mut ours, mut source, mut ratios) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        let b = timed(bare_read);
        let c = timed(check);
        source.push(timed(source_only));
        ratios.push(c / b);
        bare.push(b);
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
    line("bare csv read:", &bare);
    line("source only:", &source);
    line("check:", &ours);
    ratios.sort_by(f64::total_cmp);
    println!(
        "ratio check / bare read: {:.2}x best to best; per round median {:.2}x ({:.2}x to {:.2}x)",
        best(&ours) / best(&bare),
        ratios[ROUNDS / 2],
        ratios[0],
        ratios[ROUNDS - 1]
    );
}
