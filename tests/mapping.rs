//! The mapping language: every value-spec form and option, every transform,
//! every error kind, and each stage's payload against the vendor's shapes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

use std::path::Path;

use serde_json::{json, Value};
use thulium_import::mapping::{self, MappingError, Plan, RowPayloads};
use thulium_import::source::{Cells, FieldError, Row, RowId};

const HEADER: &[&str] = &[
    "Nazwisko",
    "Imię",
    "E-mail",
    "Telefon",
    "Urodzony",
    "VIP",
    "Ulica",
    "Nr domu",
    "Kampania",
    "Kontakt",
    "Liczba",
    "Notatka",
    "Kiedy",
    "Rekord",
    "Status",
    "Thulium ID",
];

fn header() -> Vec<String> {
    HEADER.iter().map(|s| s.to_string()).collect()
}

fn plan(toml: &str) -> Plan {
    let loaded = mapping::parse(Path::new("m.toml"), toml.to_string()).unwrap();
    mapping::compile(&loaded, &header()).unwrap_or_else(|e| panic!("{e}"))
}

fn compile_err(toml: &str) -> String {
    let loaded = match mapping::parse(Path::new("m.toml"), toml.to_string()) {
        Ok(l) => l,
        Err(e) => return e.to_string(),
    };
    match mapping::compile(&loaded, &header()) {
        Ok(_) => panic!("mapping was accepted:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

/// A row from `column = value` pairs; other cells are empty.
fn row(cells: &[(&str, &str)]) -> Row {
    let values: Vec<&str> = HEADER
        .iter()
        .map(|h| cells.iter().find(|(c, _)| c == h).map_or("", |(_, v)| *v))
        .collect();
    Row {
        id: RowId {
            row: 7,
            line: 8,
            offset: 100,
            fp: None,
        },
        cells: Cells::from_strs(&values),
    }
}

fn map(plan: &Plan, cells: &[(&str, &str)]) -> RowPayloads {
    plan.map_row(&row(cells))
        .unwrap_or_else(|e| panic!("{e:?}"))
}

fn map_err(plan: &Plan, cells: &[(&str, &str)]) -> Vec<FieldError> {
    plan.map_row(&row(cells))
        .expect_err("the row should be invalid")
}

fn customer(plan: &Plan, cells: &[(&str, &str)]) -> Value {
    json!(map(plan, cells).customer.unwrap())
}

const BASE: &str = "[customer]\nsurname = \"Nazwisko\"\n";

#[test]
fn column_name_spec_trims_and_leaves_empty_cells_out() {
    let p = plan(&format!("{BASE}name = \"Imię\""));
    assert_eq!(
        customer(&p, &[("Nazwisko", "  Nowak "), ("Imię", "Jan")]),
        json!({"surname": "Nowak", "name": "Jan"})
    );
    assert_eq!(
        customer(&p, &[("Nazwisko", "Nowak"), ("Imię", "   ")]),
        json!({"surname": "Nowak"})
    );
    // trim = false keeps the spaces.
    let p = plan(&format!("[source]\ntrim = false\n{BASE}name = \"Imię\""));
    assert_eq!(
        customer(&p, &[("Nazwisko", "Nowak"), ("Imię", " Jan ")])["name"],
        " Jan "
    );
}

#[test]
fn value_and_template_specs() {
    let p = plan(&format!("{BASE}type = {{ value = \"Klient\" }}\nvip = {{ value = true }}\ncompany_id = {{ value = 12 }}\n[customer.address]\nstreet = {{ template = \"{{Ulica}} {{Nr domu}}\" }}"));
    let c = customer(
        &p,
        &[("Nazwisko", "N"), ("Ulica", "Długa"), ("Nr domu", "5")],
    );
    assert_eq!(
        c,
        json!({"surname": "N", "company_id": 12, "type": "Klient", "vip": true, "address": {"street": "Długa 5"}})
    );
    // All referenced cells empty: the field (and here the address) is left out.
    assert_eq!(customer(&p, &[("Nazwisko", "N")]).get("address"), None);
    assert_eq!(
        customer(&p, &[("Nazwisko", "N"), ("Nr domu", "5")])["address"]["street"],
        "5"
    );
}

#[test]
fn required_and_default() {
    let p = plan(&format!("{BASE}name = {{ column = \"Imię\", required = true }}\ngroup = {{ column = \"Status\", default = \"Detal\" }}"));
    let errors = map_err(&p, &[("Nazwisko", "N")]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].column.as_deref(), Some("Imię"));
    assert!(errors[0].reason.contains("required"));
    assert_eq!(
        customer(&p, &[("Nazwisko", "N"), ("Imię", "J")])["group"],
        "Detal"
    );
    // Surname is required by the API even without required = true.
    let errors = map_err(&p, &[("Imię", "J")]);
    assert_eq!(errors[0].column.as_deref(), Some("Nazwisko"));
}

#[test]
fn every_transform() {
    let p = plan(&format!(
        "{BASE}name = {{ column = \"Imię\", transform = [\"collapse_spaces\", \"upper\"] }}\n\
         job = {{ column = \"Ulica\", transform = [\"lower\", \"trim\"] }}\n\
         nip = {{ column = \"Nr domu\", transform = [\"digits\"] }}\n\
         phone_number = {{ column = \"Telefon\", transform = [\"phone\"] }}"
    ));
    let c = customer(
        &p,
        &[
            ("Nazwisko", "N"),
            ("Imię", "jan   maria"),
            ("Ulica", " DŁUGA "),
            ("Nr domu", "PL 526-000-12-46"),
            ("Telefon", "+48 (601) 234-567"),
        ],
    );
    assert_eq!(c["name"], "JAN MARIA");
    assert_eq!(c["job"], "długa");
    assert_eq!(c["nip"], "5260001246");
    assert_eq!(c["phone_number"], "48601234567");
    let errors = map_err(&p, &[("Nazwisko", "N"), ("Telefon", "601 234 56x")]);
    assert_eq!(errors[0].column.as_deref(), Some("Telefon"));
    assert_eq!(errors[0].value.as_deref(), Some("601 234 56x"));
    assert!(errors[0].reason.contains("letters"));
    // Without the phone transform, a formatted number is refused with a hint.
    let p = plan(&format!("{BASE}phone_number = \"Telefon\""));
    let errors = map_err(&p, &[("Nazwisko", "N"), ("Telefon", "601 234 567")]);
    assert!(
        errors[0].reason.contains("transform = [\"phone\"]"),
        "{errors:?}"
    );
}

#[test]
fn dates_are_rewritten_for_the_target_field() {
    let p = plan(&format!(
        "{BASE}birthdate = {{ column = \"Urodzony\", date = \"%d.%m.%Y\" }}\n\
         [campaign]\nid = {{ value = \"00001\" }}\nnext_call_date = {{ column = \"Kontakt\", date = \"%d.%m.%Y %H:%M\" }}\n\
         [feed]\nmessage = \"Notatka\"\ntime = {{ column = \"Kiedy\", date = \"%Y/%m/%d %H:%M\" }}"
    ));
    let out = map(
        &p,
        &[
            ("Nazwisko", "N"),
            ("Urodzony", "05.11.1980"),
            ("Kontakt", "24.05.2018 12:24"),
            ("Notatka", "x"),
            ("Kiedy", "2021/02/02 10:10"),
        ],
    );
    assert_eq!(json!(out.customer.unwrap())["birthdate"], "1980-11-05");
    assert_eq!(
        json!(out.campaign.unwrap().record)["next_call_date"],
        "2018-05-24 12:24"
    );
    assert_eq!(json!(out.feed.unwrap())["time"], "2021-02-02T10:10:00");
    let errors = map_err(&p, &[("Nazwisko", "N"), ("Urodzony", "31.02.1990")]);
    assert_eq!(
        (errors[0].column.as_deref(), errors[0].value.as_deref()),
        (Some("Urodzony"), Some("31.02.1990"))
    );
    // A date field without `date` must already be in the API's format.
    let p = plan(&format!("{BASE}birthdate = \"Urodzony\""));
    assert_eq!(
        customer(&p, &[("Nazwisko", "N"), ("Urodzony", "1980-11-05")])["birthdate"],
        "1980-11-05"
    );
    assert!(
        map_err(&p, &[("Nazwisko", "N"), ("Urodzony", "05.11.1980")])[0]
            .reason
            .contains("YYYY-MM-DD")
    );
}

#[test]
fn map_lookup() {
    let p = plan(&format!(
        "{BASE}vip = {{ column = \"VIP\", map = {{ tak = true, nie = false }} }}"
    ));
    assert_eq!(
        customer(&p, &[("Nazwisko", "N"), ("VIP", "tak")])["vip"],
        true
    );
    assert_eq!(
        customer(&p, &[("Nazwisko", "N"), ("VIP", "NIE")])["vip"],
        false
    );
    let errors = map_err(&p, &[("Nazwisko", "N"), ("VIP", "może")]);
    assert!(errors[0].reason.contains("not in the map"), "{errors:?}");
    // A bool field without a map refuses words it does not know.
    let p = plan(&format!("{BASE}vip = \"VIP\""));
    assert!(map_err(&p, &[("Nazwisko", "N"), ("VIP", "może")])[0]
        .reason
        .contains("map ="));
}

#[test]
fn split_makes_lists_for_email_and_phone() {
    let p = plan(&format!("{BASE}email = {{ column = \"E-mail\", split = \",\" }}\nphone_number = {{ column = \"Telefon\", split = \";\", transform = [\"phone\"] }}"));
    let c = customer(
        &p,
        &[
            ("Nazwisko", "N"),
            ("E-mail", "a@x.pl, b@y.pl,"),
            ("Telefon", "+48 601 234 567; 22 123 45 67"),
        ],
    );
    assert_eq!(c["email"], json!(["a@x.pl", "b@y.pl"]));
    assert_eq!(c["phone_number"], json!(["48601234567", "221234567"]));
    let errors = map_err(&p, &[("Nazwisko", "N"), ("E-mail", "a@x.pl, nie-mail")]);
    assert!(errors[0].reason.contains("e-mail"));
}

#[test]
fn type_conversions() {
    let p = plan(&format!(
        "{BASE}\n[[field_group]]\ngroup_id = 2\n[field_group.values]\n8 = {{ column = \"Liczba\", type = \"integer\" }}\n10 = {{ column = \"Status\", type = \"string\" }}\n12 = {{ column = \"VIP\", type = \"bool\" }}"
    ));
    let out = map(
        &p,
        &[
            ("Nazwisko", "N"),
            ("Liczba", "13"),
            ("Status", "7"),
            ("VIP", "tak"),
        ],
    );
    assert_eq!(
        json!(out.field_groups[0].values),
        json!([
            {"field_id": 8, "value": 13},
            {"field_id": 10, "value": "7"},
            {"field_id": 12, "value": true}
        ])
    );
    let errors = map_err(
        &p,
        &[("Nazwisko", "N"), ("Liczba", "dużo"), ("VIP", "chyba")],
    );
    assert_eq!(
        errors.len(),
        2,
        "every problem of the row is reported: {errors:?}"
    );
    assert!(errors[0].reason.contains("integer"));
    assert!(errors[1].reason.contains("boolean"));
    // A field group whose values are all empty sends nothing for the row.
    assert!(map(&p, &[("Nazwisko", "N")]).field_groups.is_empty());
}

#[test]
fn when_and_existing_customer_ids() {
    let p = plan(&format!("[source]\ncustomer_id = \"Thulium ID\"\n{BASE}\n[campaign]\nwhen = \"Kampania\"\nid = \"Kampania\"\nstatus_id = {{ value = 1 }}"));
    let out = map(&p, &[("Nazwisko", "N")]);
    assert!(out.campaign.is_none() && out.customer.is_some());
    let out = map(
        &p,
        &[
            ("Nazwisko", "N"),
            ("Kampania", "00002"),
            ("Thulium ID", "441"),
        ],
    );
    assert_eq!(out.existing_customer_id, Some(441));
    assert!(out.customer.is_none(), "an existing id skips creation");
    assert_eq!(out.campaign.unwrap().campaign_id, "00002");
    let errors = map_err(&p, &[("Nazwisko", "N"), ("Thulium ID", "abc")]);
    assert_eq!(errors[0].column.as_deref(), Some("Thulium ID"));
    let errors = map_err(&p, &[("Nazwisko", "N"), ("Kampania", "0002")]);
    assert!(errors[0].reason.contains("five characters"));
}

/// Which stages run is kept in bits up to 64 stages and in a list beyond:
/// both give every stage, with `when` honoured per stage.
#[test]
fn many_field_groups_each_run_by_their_own_when() {
    for groups in [3usize, 64, 70] {
        let mut toml = BASE.to_string();
        for g in 0..groups {
            let when = if g % 3 == 0 { "Kampania" } else { "Status" };
            toml.push_str(&format!(
                "\n[[field_group]]\ngroup_id = {}\nwhen = \"{when}\"\n[field_group.values]\n8 = \"Liczba\"\n",
                g + 1
            ));
        }
        let p = plan(&toml);
        let out = map(&p, &[("Nazwisko", "N"), ("Kampania", "x"), ("Liczba", "5")]);
        let ids: Vec<i64> = out.field_groups.iter().map(|i| i.group_id).collect();
        let expected: Vec<i64> = (1..=groups as i64).step_by(3).collect();
        assert_eq!(ids, expected, "{groups} groups");
        assert!(p
            .validate(&row(&[("Nazwisko", "N"), ("Status", "y")]))
            .is_ok());
    }
}

#[test]
fn every_stage_matches_the_vendor_shapes() {
    let p = plan(
        "[customer]\nsurname = \"Nazwisko\"\nname = \"Imię\"\n[customer.custom_fields]\n\"Źródło\" = \"Status\"\n\
         [[field_group]]\ngroup_id = 2\n[field_group.values]\n12 = \"Ulica\"\n8 = { column = \"Liczba\", type = \"integer\" }\n\
         [campaign]\nid = { value = \"00001\" }\nstatus_id = { value = 3 }\nagent_login = { value = \"j.doe\" }\n\
         [campaign_update]\nid = { value = \"00003\" }\nidentifier = \"Rekord\"\nstatus_id = \"Status\"\n[campaign_update.record_fields]\n\"Wynik\" = \"Notatka\"\n\
         [feed]\nmessage = \"Notatka\"\ntime = { value = \"2021-02-02T10:10:12\" }\nauthor = { value = \"customer\" }\nid = { value = \"sample-id\" }\n",
    );
    let out = map(
        &p,
        &[
            ("Nazwisko", "Kowalski"),
            ("Imię", "Jan"),
            ("Status", "3"),
            ("Ulica", "phone"),
            ("Liczba", "13"),
            ("Rekord", "1234567890"),
            ("Notatka", "Sample message"),
        ],
    );
    assert_eq!(
        json!(out.customer.unwrap()),
        json!({"name": "Jan", "surname": "Kowalski", "custom_fields": {"Źródło": "3"}})
    );
    let item = &out.field_groups[0];
    assert_eq!(
        (item.group_id, json!(item.values)),
        (
            2,
            json!([{"field_id": 12, "value": "phone"}, {"field_id": 8, "value": 13}])
        )
    );
    let campaign = out.campaign.unwrap();
    assert_eq!(
        (campaign.campaign_id.as_str(), json!(campaign.record)),
        ("00001", json!({"status_id": 3, "agent_login": "j.doe"}))
    );
    let update = out.campaign_update.unwrap();
    assert_eq!(
        (update.campaign_id.as_str(), update.identifier.as_str()),
        ("00003", "1234567890")
    );
    assert_eq!(
        json!(update.body),
        json!({"status_id": 3, "record_fields": {"Wynik": "Sample message"}})
    );
    // The vendor's own feed example, byte for byte.
    assert_eq!(
        json!(thulium_import::api::payload::FeedRecord::zowie(&[out
            .feed
            .unwrap()])),
        json!({"type":"ZOWIE","payload":"[{\"id\":\"sample-id\",\"type\":\"text\",\"payload\":{\"message\":\"Sample message\"},\"author\":\"customer\",\"time\":\"2021-02-02T10:10:12\"}]"})
    );
}

#[test]
fn config_errors_name_key_line_and_closest_columns() {
    let e = compile_err("[customer]\nsurname = \"Nazwisko\"\nname = \"Imie\"\n");
    assert!(
        e.contains(
            "m.toml:3: customer.name: column \"Imie\" is not in the header (closest: \"Imię\""
        ),
        "{e}"
    );
    let e = compile_err("[customer]\nsurname = \"Nazwisko\"\ncolour = \"Imię\"\n");
    assert!(
        e.contains("line 3") && e.contains("unknown field `colour`"),
        "{e}"
    );
    let e = compile_err("[customer]\nsurname = \"Nazwisko\"\nname = 12\n");
    assert!(
        e.contains("m.toml:3: customer.name: a value spec is a column name"),
        "{e}"
    );
    let e = compile_err("[customer]\nsurname = \"Nazwisko\"\nname = { column = \"Imię\", transfrom = [\"upper\"] }\n");
    assert!(e.contains("unknown option \"transfrom\""), "{e}");
    let e = compile_err("[customer]\nsurname = \"Nazwisko\"\nname = { column = \"Imię\", transform = [\"shout\"] }\n");
    assert!(e.contains("unknown transform \"shout\""), "{e}");
    let e = compile_err(
        "[customer]\nsurname = \"Nazwisko\"\nname = { column = \"Imię\", value = \"x\" }\n",
    );
    assert!(
        e.contains("exactly one of column, value or template"),
        "{e}"
    );
    let e = compile_err(
        "[customer]\nsurname = \"Nazwisko\"\nname = { column = \"Imię\", split = \",\" }\n",
    );
    assert!(e.contains("only email and phone_number take lists"), "{e}");
    let e =
        compile_err("[customer]\nsurname = \"Nazwisko\"\n[campaign]\nid = { value = \"0001\" }\n");
    assert!(
        e.contains("m.toml:4: campaign.id: value: a campaign id has exactly five characters"),
        "{e}"
    );
    let e = compile_err("[customer]\nname = \"Imię\"\n");
    assert!(e.contains("surname is required"), "{e}");
    let e = compile_err("[campaign]\nid = { value = \"00001\" }\n");
    assert!(e.contains("need a customer id"), "{e}");
    let e = compile_err("[source]\nencoding = \"klingon\"\n[customer]\nsurname = \"Nazwisko\"\n");
    assert!(e.contains("unknown encoding \"klingon\""), "{e}");
    let e = compile_err("[source]\ndelimiter = \";;\"\n[customer]\nsurname = \"Nazwisko\"\n");
    assert!(e.contains("delimiter must be one ASCII character"), "{e}");
    let e = compile_err(
        "[customer]\nsurname = \"Nazwisko\"\nname = { template = \"{Imię} {Drugie imię}\" }\n",
    );
    assert!(
        e.contains("column \"Drugie imię\" is not in the header"),
        "{e}"
    );
    let e = compile_err("[customer\nsurname = 1");
    assert!(e.contains("TOML parse error at line 1"), "{e}");
    let e = compile_err("");
    assert!(e.contains("no stage"), "{e}");
    // Several problems are reported together.
    let e = compile_err("[customer]\nsurname = \"Nazwiska\"\nname = \"Imie\"\n");
    assert!(e.contains("2 problem(s)"), "{e}");
}

#[test]
fn invalid_mapping_is_an_error_value_not_a_panic() {
    let loaded = mapping::parse(Path::new("m.toml"), "[customer]\nsurname = \"X\"".into()).unwrap();
    assert!(matches!(
        mapping::compile(&loaded, &header()),
        Err(MappingError::Invalid { .. })
    ));
}

#[test]
fn field_group_match_names_the_blocks_own_fields_and_feed_on_match_is_skip_or_send() {
    let base = "[customer]\nsurname = \"Nazwisko\"\n";
    let block = |m: &str| {
        format!("{base}[[field_group]]\ngroup_id = 3\nmatch = {m}\n[field_group.values]\n20 = \"Rekord\"\n22 = \"Liczba\"\n")
    };
    let e = compile_err(&block("[21]"));
    assert!(
        e.contains("field_group[0].match")
            && e.contains("field 21 is not one of this block's values (20, 22)"),
        "{e}"
    );
    let e = compile_err(&block("[\"umowa\"]"));
    assert!(
        e.contains("field_group[0].match") && e.contains("is not a field id"),
        "{e}"
    );
    let e = compile_err(&block("[]"));
    assert!(
        e.contains("field_group[0].match") && e.contains("match is empty"),
        "{e}"
    );
    // One id, or a list; the ids travel with each row's item.
    for m in ["20", "[20]", "[\"20\"]"] {
        let p = plan(&block(m));
        let out = map(
            &p,
            &[("Nazwisko", "Nowak"), ("Rekord", "U-1"), ("Liczba", "5")],
        );
        assert_eq!(out.field_groups[0].match_ids, vec![20], "{m}");
    }
    let feed = |v: &str| {
        format!("{base}[feed]\nmessage = \"Notatka\"\ntime = {{ value = \"2021-02-02T10:10:12\" }}\non_match = \"{v}\"\n")
    };
    let e = compile_err(&feed("always"));
    assert!(
        e.contains("feed.on_match") && e.contains("\"always\" is not one of \"skip\" or \"send\""),
        "{e}"
    );
    assert_eq!(
        plan(&feed("send")).feed_on_match(),
        mapping::FeedOnMatch::Send
    );
    assert_eq!(
        plan(&feed("skip")).feed_on_match(),
        mapping::FeedOnMatch::Skip
    );
}
