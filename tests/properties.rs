//! Properties of the pure parts: mapping never panics and every row yields
//! payloads or a non-empty list of problems; the CSV source reads back what
//! the `csv` crate wrote, in every supported encoding.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

use std::path::Path;

use proptest::prelude::*;
use thulium_import::mapping;
use thulium_import::source::{Cells, Row, RowId, Source, SourceOptions};

/// Failures are kept in `proptest-regressions/` (committed) and replayed
/// first; `PROPTEST_CASES=N` runs N cases of every property instead.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        // PROPTEST_CASES raises every property's count for a long run.
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "proptest-regressions/properties.txt",
            ),
        )),
        ..ProptestConfig::default()
    }
}

const COLUMNS: &[&str] = &["A", "B", "Ć", "D d", "E;e"];

/// Any text, weighted towards what breaks parsers: quotes, delimiters,
/// newlines, Polish letters, digits and date-like strings.
fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ \"';,\\r\\n\\tąęłóśźżĄĘŁ+()0-9.:/-]{0,20}",
        "[0-9]{1,2}\\.[0-9]{1,2}\\.[0-9]{4}( [0-9]{2}:[0-9]{2})?",
        "(\\+48 )?[0-9]{3} [0-9]{3} [0-9]{3}",
        // What `check`'s in-place checks read byte by byte: phone numbers
        // with their punctuation, e-mail-like text, lists, map words.
        "[ +()0-9.\\-]{0,24}",
        "[a-z. ]{0,3}@?[a-zó@]{0,3}\\.?[a-z.]{0,3}(,[ a-z@.]{0,6})?",
        prop::sample::select(vec!["tak", "nie", "TAK", "1", " 12 ", "x,y", ","])
            .prop_map(str::to_string),
        Just(String::new()),
    ]
}

/// A value spec from the language, referring to the test columns.
fn spec(list_ok: bool) -> impl Strategy<Value = String> {
    let column = prop::sample::select(COLUMNS).prop_map(|c| format!("\"{c}\""));
    let options = (
        prop::sample::select(COLUMNS),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![
            "\"x\"",
            "1",
            "true",
            "\"2020-01-01\"",
            "\"00001\"",
        ])),
        prop::sample::subsequence(
            vec![
                "\"trim\"",
                "\"lower\"",
                "\"upper\"",
                "\"collapse_spaces\"",
                "\"digits\"",
                "\"phone\"",
            ],
            0..4,
        ),
        prop::option::of(prop::sample::select(vec![
            "\"%d.%m.%Y\"",
            "\"%d.%m.%Y %H:%M\"",
            "\"%Y-%m-%d\"",
        ])),
        prop::option::of(Just("{ tak = true, nie = false, \"1\" = 1 }")),
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![
            "\"integer\"",
            "\"string\"",
            "\"bool\"",
        ])),
    )
        .prop_map(
            move |(c, required, default, transforms, date, map, split, ty)| {
                let mut parts = vec![format!("column = \"{c}\"")];
                if required {
                    parts.push("required = true".into());
                }
                if let Some(d) = default {
                    parts.push(format!("default = {d}"));
                }
                if !transforms.is_empty() {
                    parts.push(format!("transform = [{}]", transforms.join(", ")));
                }
                if let Some(d) = date {
                    parts.push(format!("date = {d}"));
                }
                if let Some(m) = map {
                    parts.push(format!("map = {m}"));
                }
                if split && list_ok {
                    parts.push("split = \",\"".into());
                }
                if let Some(t) = ty {
                    parts.push(format!("type = {t}"));
                }
                format!("{{ {} }}", parts.join(", "))
            },
        );
    let template = (prop::sample::select(COLUMNS), prop::sample::select(COLUMNS))
        .prop_map(|(a, b)| format!("{{ template = \"{{{a}}} - {{{b}}}\" }}"));
    let constant = prop::sample::select(vec![
        "{ value = \"Klient\" }",
        "{ value = 3 }",
        "{ value = false }",
        "{ value = \"00002\" }",
    ])
    .prop_map(str::to_string);
    prop_oneof![column, options, template, constant]
}

/// A value spec of one of the shapes `check` judges in place (see
/// `Spec::check_fast`): the target's own column, one of `options` (a
/// transform, a date, a type or a map the target takes), maybe required or
/// defaulted (with a default the target takes), maybe split.
fn usual_spec(
    column: &'static str,
    options: &'static [&'static str],
    default: &'static str,
    list_ok: bool,
) -> impl Strategy<Value = String> {
    (
        prop::sample::select(options),
        prop::sample::select(vec!["", "", "", ", required = true", default]),
        any::<bool>(),
    )
        .prop_map(move |(option, presence, split)| {
            let split = if split && list_ok {
                ", split = \",\""
            } else {
                ""
            };
            format!("{{ column = \"{column}\"{option}{presence}{split} }}")
        })
}

/// The columns of [`usual_mapping_text`], one per target, with values that
/// suit the target whatever its options, and values that suit only some
/// options or nearly do.
const USUAL: &[(&str, &[&str], &[&str])] = &[
    ("surname", &["Nowak", " Nowak ", "Żak"], &["", " "]),
    (
        "email",
        &["a@b.pl", " a@b.pl "],
        &[
            "a@b.pl, c@d.pl",
            "a@b.pl,,",
            "a@b",
            "a b@c.pl",
            "ó@b.pl",
            "@b.pl",
            "a@.pl",
            "a@b.pl.",
        ],
    ),
    (
        "phone",
        &["601234567", " 601234567 "],
        &[
            "+48 601 234 567",
            "(22) 123-45-67, 601234567",
            "12",
            "+",
            "48+601",
            " , ",
            "601 234 56x",
        ],
    ),
    (
        "birth",
        &["1990-02-01", " 1990-02-01 "],
        &["01.02.1990", "31.02.1990", " 1.2.1990 ", "1990-2-1"],
    ),
    ("vip", &["tak", "nie"], &["x", "true", "TAK", "1", "maybe"]),
    (
        "item",
        &["1"],
        &[" 12 ", "tak", "nie", "x", "-3", "1.5", "TAK", "y"],
    ),
    ("runs", &["1"], &["tak", "nie", "x", "0", "TAK", "y"]),
    (
        "campaign",
        &["00001"],
        &["tak", "nie", "0001", " 00001 ", "Nie"],
    ),
    (
        "next",
        &["2020-01-01 10:00"],
        &["01.02.1990 10:00", "01.02.1990", "01.02.1990 25:00"],
    ),
    ("when", &["1"], &["tak", "nie", "x", "0", "y"]),
];

/// A mapping of the usual shapes (see [`usual_spec`]), each target given
/// options it takes, so that most compile: a customer (maybe with a
/// `when`), a custom field, a field-group value and a campaign record that
/// runs by its `when`.
fn usual_mapping_text() -> impl Strategy<Value = String> {
    const PLAIN: &[&str] = &["", "", ""];
    const SCALAR: &[&str] = &[
        "",
        "",
        ", type = \"integer\"",
        ", map = { tak = true, nie = false, \"1\" = 1, x = \"y\" }",
    ];
    (
        (
            usual_spec("surname", PLAIN, ", default = \"x\"", false),
            usual_spec("email", PLAIN, ", default = \"a@b.pl\"", true),
            usual_spec("phone", &["", ", transform = [\"phone\"]"], ", default = \"123\"", true),
            usual_spec("birth", &["", ", date = \"%d.%m.%Y\""], ", default = \"2020-01-01\"", false),
            usual_spec("vip", &["", ", map = { tak = true, nie = false, x = \"y\" }"], ", default = true", false),
            usual_spec("item", SCALAR, ", default = \"x\"", false),
        ),
        (
            usual_spec("runs", SCALAR, ", default = false", false),
            usual_spec("campaign", &["", ", map = { tak = \"00001\", nie = \"1\" }"], ", default = \"00001\"", false),
            usual_spec("next", &["", ", date = \"%d.%m.%Y %H:%M\""], ", default = \"2020-01-01 10:00\"", false),
            prop::option::of(usual_spec("when", SCALAR, ", default = false", false)),
            any::<bool>(),
        ),
    )
        .prop_map(|((surname, email, phone, birthdate, vip, item), (runs, campaign_id, next_call, when, untrimmed))| {
            let when = when.map(|w| format!("when = {w}\n")).unwrap_or_default();
            let source = if untrimmed { "[source]\ntrim = false\n" } else { "" };
            format!(
                "{source}[customer]\n{when}surname = {surname}\nemail = {email}\nphone_number = {phone}\nbirthdate = {birthdate}\nvip = {vip}\n\
                 [customer.custom_fields]\n\"X\" = {item}\n\
                 [[field_group]]\ngroup_id = 2\n[field_group.values]\n8 = {item}\n\
                 [campaign]\nwhen = {runs}\nid = {campaign_id}\nnext_call_date = {next_call}\n"
            )
        })
}

/// A row of [`USUAL`]'s columns: each cell mostly one that suits its
/// target, else one that nearly does, nothing, or any text.
fn usual_row() -> impl Strategy<Value = Vec<String>> {
    USUAL
        .iter()
        .map(|(_, good, bad)| {
            prop_oneof![
                16 => prop::sample::select(good.to_vec()).prop_map(str::to_string),
                4 => prop::sample::select(bad.to_vec()).prop_map(str::to_string),
                1 => Just(String::new()),
                1 => cell(),
            ]
        })
        .collect::<Vec<_>>()
}

fn mapping_text() -> impl Strategy<Value = String> {
    (
        spec(false),
        spec(true),
        spec(true),
        spec(false),
        spec(false),
        spec(false),
        spec(false),
        spec(false),
        spec(false),
        prop::option::of(spec(false)),
        any::<bool>(),
    )
        .prop_map(
            |(
                surname,
                email,
                phone,
                birthdate,
                vip,
                item,
                campaign_id,
                next_call,
                message,
                when,
                untrimmed,
            )| {
                fill_mapping(
                    [
                        surname,
                        email,
                        phone,
                        birthdate,
                        vip,
                        item,
                        campaign_id,
                        next_call,
                        message,
                    ],
                    when,
                    untrimmed,
                )
            },
        )
}

/// A mapping with every kind of target (text, e-mail and phone lists, a
/// date, a boolean, custom and field-group values, a campaign id, dates with
/// a time), given their specs; `when` for the customer and the campaign.
fn fill_mapping(specs: [String; 9], when: Option<String>, untrimmed: bool) -> String {
    let [surname, email, phone, birthdate, vip, item, campaign_id, next_call, message] = specs;
    let when = when.map(|w| format!("when = {w}\n")).unwrap_or_default();
    // Cells as they are (no trimming) take other turns in the checks.
    let source = if untrimmed {
        "[source]\ntrim = false\n"
    } else {
        ""
    };
    format!(
        "{source}[customer]\n{when}surname = {surname}\nemail = {email}\nphone_number = {phone}\nbirthdate = {birthdate}\nvip = {vip}\n\
         [customer.custom_fields]\n\"X\" = {item}\n\
         [[field_group]]\ngroup_id = 2\n[field_group.values]\n8 = {item}\n\
         [campaign]\n{when}id = {campaign_id}\nnext_call_date = {next_call}\n\
         [campaign_update]\nid = {campaign_id}\nidentifier = {message}\n\
         [feed]\nmessage = {message}\ntime = {next_call}\n"
    )
}

proptest! {
    #![proptest_config(config(2000))]

    /// `check`'s in-place checks (`Plan::validate`) answer exactly as
    /// building the values does, on the shapes they cover.
    #[test]
    fn checking_in_place_agrees_with_building(
        text in usual_mapping_text(),
        rows in prop::collection::vec(usual_row(), 1..8),
    ) {
        let header: Vec<String> = USUAL.iter().map(|(c, _, _)| c.to_string()).collect();
        let loaded = mapping::parse(Path::new("p.toml"), text.clone()).unwrap();
        let Ok(plan) = mapping::compile(&loaded, &header) else { return Ok(()) };
        for (i, cells) in rows.iter().enumerate() {
            let row = Row { id: RowId { row: i as u64 + 1, line: i as u64 + 2, offset: 0, fp: None }, cells: Cells::from_strs(cells) };
            prop_assert_eq!(plan.validate(&row), plan.evaluate(&row).and_then(mapping::Evaluated::checked).map(|_| ()));
        }
    }

    #[test]
    fn mapping_never_panics_and_every_row_gets_an_outcome(
        text in mapping_text(),
        rows in prop::collection::vec(prop::collection::vec(cell(), COLUMNS.len()), 1..8),
    ) {
        let header: Vec<String> = COLUMNS.iter().map(|s| s.to_string()).collect();
        let loaded = mapping::parse(Path::new("p.toml"), text.clone()).unwrap();
        // Some generated mappings are rightly refused (a default that is not a
        // date for a date field...): that must be an error value, not a panic.
        let Ok(plan) = mapping::compile(&loaded, &header) else { return Ok(()) };
        for (i, cells) in rows.iter().enumerate() {
            let row = Row { id: RowId { row: i as u64 + 1, line: i as u64 + 2, offset: 0, fp: None }, cells: Cells::from_strs(cells) };
            // check's fast path (values checked, not built) agrees exactly.
            prop_assert_eq!(plan.validate(&row), plan.evaluate(&row).and_then(mapping::Evaluated::checked).map(|_| ()));
            match plan.map_row(&row) {
                Ok(p) => {
                    // Whatever is produced is well-formed JSON for the API.
                    if let Some(f) = &p.feed {
                        let record = thulium_import::api::payload::FeedRecord::zowie(std::slice::from_ref(f));
                        let payload: serde_json::Value = serde_json::from_str(&record.payload).unwrap();
                        prop_assert_eq!(payload[0]["type"].as_str(), Some("text"));
                    }
                    if let Some(c) = &p.campaign {
                        prop_assert_eq!(c.campaign_id.chars().count(), 5);
                    }
                }
                Err(errors) => prop_assert!(!errors.is_empty(), "an invalid row says why"),
            }
        }
    }
}

/// Text each tested encoding can represent: ASCII (with the characters that
/// need quoting) and the Polish letters.
fn representable_cell() -> impl Strategy<Value = String> {
    "[ a-zA-Z0-9\"';,|\\t\\r\\nąćęłńóśźżĄĆĘŁŃÓŚŹŻ.-]{0,16}"
}

proptest! {
    #![proptest_config(config(500))]

    #[test]
    fn csv_written_by_the_csv_crate_reads_back_in_every_encoding(
        records in prop::collection::vec(prop::collection::vec(representable_cell(), 3), 1..20),
        delimiter in prop::sample::select(vec![b',', b';', b'\t', b'|']),
        encoding in prop::sample::select(vec!["utf-8", "windows-1250", "iso-8859-2"]),
        crlf in any::<bool>(),
        sniff in any::<bool>(),
    ) {
        let mut w = csv::WriterBuilder::new()
            .delimiter(delimiter)
            .terminator(if crlf { csv::Terminator::CRLF } else { csv::Terminator::Any(b'\n') })
            .from_writer(Vec::new());
        w.write_record(["h1", "h2", "h3"]).unwrap();
        for r in &records {
            w.write_record(r).unwrap();
        }
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        let enc = encoding_rs::Encoding::for_label(encoding.as_bytes()).unwrap();
        let (bytes, _, unmappable) = enc.encode(&text);
        prop_assert!(!unmappable);
        let options = SourceOptions {
            delimiter: if sniff { None } else { Some(delimiter) },
            encoding: Some(enc),
            quote: b'"',
            sheet: None,
        };
        let mut source = Source::from_reader(&bytes[..], Path::new("p.csv"), &options).unwrap();
        prop_assert_eq!(source.info().delimiter, delimiter);
        let mut read = Vec::new();
        while let Some(next) = source.next_row() {
            let row = next.unwrap().unwrap();
            // The byte offset points at the record's first byte.
            prop_assert!(row.id.offset < bytes.len() as u64);
            read.push(row.cells.iter().map(str::to_string).collect::<Vec<_>>());
        }
        // A record of one empty field is written as an empty line by no one:
        // the csv crate quotes it, so every record comes back.
        prop_assert_eq!(read, records);
    }
}

proptest! {
    #![proptest_config(config(1000))]

    /// The campaign chunker never drops, duplicates or reorders a record,
    /// keeps each call to one campaign, at most `limit` records, and never
    /// two records for one customer (the answer is keyed by customer id).
    #[test]
    fn campaign_chunks_respect_size_campaign_and_one_record_per_customer(
        records in prop::collection::vec((0usize..3, 1i64..12), 0..200),
        limit in 1usize..20,
        flush_every in prop::option::of(1usize..50),
    ) {
        use thulium_import::mapping::CampaignPayload;
        use thulium_import::pipeline::{CampaignBatcher, CampaignChunk};
        let campaigns = ["00001", "00002", "ABCDE"];
        let mut batcher = CampaignBatcher::default();
        let mut chunks: Vec<CampaignChunk> = Vec::new();
        for (i, (c, customer)) in records.iter().enumerate() {
            let id = RowId { row: i as u64 + 1, line: i as u64 + 2, offset: i as u64, fp: None };
            let payload = CampaignPayload { campaign_id: campaigns[*c].to_string(), record: Default::default() };
            chunks.extend(batcher.add(id, *customer, payload, limit));
            if flush_every.is_some_and(|n| i % n == 0) {
                chunks.extend(batcher.drain());
            }
        }
        chunks.extend(batcher.drain());
        let mut seen = Vec::new();
        for chunk in &chunks {
            prop_assert!(!chunk.records.is_empty() && chunk.records.len() <= limit);
            let mut customers = std::collections::HashSet::new();
            for r in &chunk.records {
                prop_assert!(customers.insert(r.customer_id), "two records for customer {} in one call", r.customer_id);
                let (c, customer) = records[(r.id.row - 1) as usize];
                prop_assert_eq!(campaigns[c], chunk.campaign_id.as_str());
                prop_assert_eq!(customer, r.customer_id);
                seen.push(r.id.row);
            }
        }
        // Every record exactly once...
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (1..=records.len() as u64).collect::<Vec<_>>());
        // ...and, within one campaign, in arrival order.
        for c in campaigns {
            let order: Vec<u64> = chunks.iter().filter(|ch| ch.campaign_id == c).flat_map(|ch| ch.records.iter().map(|r| r.id.row)).collect();
            prop_assert!(order.windows(2).all(|w| w[0] < w[1]), "{c}: {order:?}");
        }
    }
}

proptest! {
    #![proptest_config(config(500))]

    /// Reading a damaged ledger never panics: a valid header and any mix of
    /// valid, truncated and garbage lines give entries plus reported bad
    /// lines, and a file without a header is refused.
    #[test]
    fn ledger_reading_survives_any_damage(
        lines in prop::collection::vec(prop_oneof![
            Just(r#"{"kind":"row","row":3,"line":4,"offset":10,"stage":"customer","status":"ok","customer_id":7}"#.to_string()),
            Just(r#"{"kind":"intent","stage":"feed","rows":[1,2]}"#.to_string()),
            Just(r#"{"kind":"end","rows_read":5,"finished_at":"x"}"#.to_string()),
            ".{0,80}",
            any::<String>(),
        ], 0..30),
        with_header in any::<bool>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let header = r#"{"kind":"header","version":1,"source":"a.csv","source_sha256":"x","mapping":"m.toml","mapping_sha256":"y","started_at":"t","tool_version":"0"}"#;
        let mut text = String::new();
        if with_header {
            text.push_str(header);
            text.push('\n');
        }
        for l in &lines {
            text.push_str(l);
            text.push('\n');
        }
        // A crash mid-write: cut the file anywhere.
        let bytes = text.as_bytes();
        let bytes = &bytes[..cut.index(bytes.len() + 1)];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.jsonl");
        std::fs::write(&path, bytes).unwrap();
        let mut n = 0;
        match thulium_import::ledger::read(&path, |_| n += 1) {
            Ok((_, notes)) => prop_assert!(bytes.starts_with(header.as_bytes()) && n + notes.bad_lines.len() <= lines.len()),
            Err(e) => prop_assert!(e.to_string().contains("not a thulium-import ledger"), "{e}"),
        }
        let _ = thulium_import::outcomes::Outcomes::read(&path)
            .map(|o| thulium_import::report::Report::of(&o));
    }
}
