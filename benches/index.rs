//! The index of a system's customers: memory and time to build it.
//!
//! `cargo bench --bench index -- [CUSTOMERS]` (default 1,000,000) adds that
//! many customers, each with an identifier and an e-mail address (two match
//! keys), to an [`Index`], as reading the system page by page would, and
//! prints the peak resident memory it added (VmHWM, Linux) and the time;
//! then looks every identifier up once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark may panic

use std::time::Instant;

use thulium_import::api::keys::SearchKey;
use thulium_import::identity::Index;

/// Peak resident set size so far, in KiB (Linux).
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let n: i64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let before = peak_kib();
    let started = Instant::now();
    let mut index = Index::with_capacity(2 * n as usize);
    for id in 1..=n {
        let keys = [
            SearchKey::Identifier.hash(&format!("CRM-{id:07}")),
            SearchKey::Email.hash(&format!("customer{id}@example.pl")),
        ];
        index.add(id, keys);
    }
    index.finish();
    let built = started.elapsed().as_secs_f64();
    let after = peak_kib();
    let started = Instant::now();
    let mut found = 0u64;
    for id in (1..=n).step_by(1) {
        let h = SearchKey::Identifier.hash(&format!("CRM-{id:07}"));
        found += u64::from(index.contains(h));
    }
    let looked = started.elapsed().as_secs_f64();
    assert_eq!(found, n as u64);
    println!(
        "index of {n} customers, 2 keys each: peak memory +{:.1} MiB, built in {built:.2} s; {n} lookups in {looked:.2} s",
        (after.saturating_sub(before)) as f64 / 1024.0
    );
}
