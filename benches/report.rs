//! Folding a ledger: `report`'s cost at 20,000, 200,000 and 1,000,000 rows.
//!
//! `cargo bench --bench report -- [ROWS...]` writes (once, under
//! `target/bench-data/`) a ledger like a real run's: a customer stage with
//! intents per batch of 100, two field groups per row of which 10 % of the
//! second failed with a message, a campaign record for a third of the rows,
//! and the `end` event. Then it times, best of three, the one fold
//! ([`Outcomes::read`]) followed by everything `report` prints (the counts,
//! the problem list, the failed-rows view of every row), and prints time
//! per row so that growth can be read at a glance: linear means the same
//! ns/row at every size.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark may panic

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use thulium_import::ledger::Stage;
use thulium_import::outcomes::Outcomes;
use thulium_import::report::Report;

fn generate(path: &Path, rows: u64) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, r#"{{"kind":"header","version":1,"source":"/tmp/x.csv","source_sha256":"0","mapping":"/tmp/m.toml","mapping_sha256":"0","started_at":"2026-11-23T00:00:00Z","tool_version":"0.1.0"}}"#).unwrap();
    for batch in (1..=rows).step_by(100) {
        let last = (batch + 99).min(rows);
        let list: Vec<String> = (batch..=last).map(|r| r.to_string()).collect();
        writeln!(
            out,
            r#"{{"kind":"intent","stage":"customer","rows":[{}]}}"#,
            list.join(",")
        )
        .unwrap();
        for r in batch..=last {
            let (line, offset) = (r + 1, r * 120);
            let cid = 1000 + r;
            writeln!(out, r#"{{"kind":"row","row":{r},"line":{line},"offset":{offset},"stage":"customer","status":"ok","http_status":201,"customer_id":{cid},"attempts":1}}"#).unwrap();
            for group in 0..2 {
                writeln!(
                    out,
                    r#"{{"kind":"intent","stage":"field_group","group":{group},"rows":[{r}]}}"#
                )
                .unwrap();
                if group == 1 && r % 10 == 0 {
                    writeln!(out, r#"{{"kind":"row","row":{r},"line":{line},"offset":{offset},"stage":"field_group","status":"failed","group":1,"http_status":400,"message":"Invalid value \"dużo\" for field 8 (\"Liczba zamówień\"). (request_id 0123456789abc)","customer_id":{cid},"attempts":1,"retryable":false}}"#).unwrap();
                } else {
                    writeln!(out, r#"{{"kind":"row","row":{r},"line":{line},"offset":{offset},"stage":"field_group","status":"ok","group":{group},"customer_id":{cid},"item_id":{},"attempts":1}}"#, r * 2 + group).unwrap();
                }
            }
            if r % 3 == 0 {
                writeln!(out, r#"{{"kind":"row","row":{r},"line":{line},"offset":{offset},"stage":"campaign","status":"ok","http_status":201,"customer_id":{cid},"record_id":{},"attempts":1}}"#, 100_000 + r).unwrap();
            }
        }
    }
    writeln!(
        out,
        r#"{{"kind":"end","rows_read":{rows},"finished_at":"2026-11-23T00:10:00Z"}}"#
    )
    .unwrap();
}

fn main() {
    let sizes: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![20_000, 200_000, 1_000_000]
    } else {
        sizes
    };
    let dir = PathBuf::from("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    println!("| rows | ledger | fold + report, best of 3 | per row |");
    println!("|---|---|---|---|");
    for rows in sizes {
        let path = dir.join(format!("ledger-{rows}.jsonl"));
        if !path.exists() {
            generate(&path, rows);
        }
        let bytes = std::fs::metadata(&path).unwrap().len();
        let mut best = f64::MAX;
        for _ in 0..3 {
            let started = Instant::now();
            let outcomes = Outcomes::read(&path).unwrap();
            let report = Report::of(&outcomes);
            let problems = outcomes.problems(50);
            // What the failed-rows CSV and retry's planning ask of each row.
            let mut not_done = 0u64;
            for r in 1..=outcomes.rows() {
                if let Some(view) = outcomes.row(r) {
                    if !view.is_done() {
                        not_done += 1;
                        let _ = view.message(Stage::FieldGroup, 1);
                    }
                }
            }
            let took = started.elapsed().as_secs_f64();
            best = best.min(took);
            assert_eq!(report.rows, rows);
            assert_eq!(not_done, rows / 10);
            assert_eq!(problems.len() as u64, (rows / 10).min(50));
        }
        println!(
            "| {rows} | {:.0} MiB | {:.3} s | {:.0} ns |",
            bytes as f64 / (1024.0 * 1024.0),
            best,
            best * 1e9 / rows as f64
        );
    }
}
