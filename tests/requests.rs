//! The exact request of every endpoint, read back from the sandbox's journal
//! (`/_sandbox/requests`): paths, queries, keys and JSON types — ids are
//! numbers, a feed record's `payload` is a JSON text holding a list, and no
//! empty string or `null` is ever sent as a value.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

mod common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use thulium_import::api::customers::{FindCustomers, SearchKey, UpdateCustomers};
use thulium_import::api::field_groups::{FindItems, UpdateItem};
use thulium_import::api::payload::{Customer, CustomerField, CustomerUpdate, ItemValue, Scalar};
use thulium_import::client::{ApiClient, ClientConfig};
use thulium_import::credentials::{Credentials, Password};
use thulium_import::retry::Policy;
use thulium_import::sandbox::{JournalEntry, Sandbox, SandboxConfig};

const SAMPLE: &str = "samples/crm_export.csv";
const MAPPING: &str = "mappings/crm_export.toml";
const PASSWORD: &str = "journal-secret";

fn config() -> SandboxConfig {
    SandboxConfig {
        password: PASSWORD.into(),
        ..SandboxConfig::default()
    }
}

fn client(sandbox: &Sandbox) -> Arc<ApiClient> {
    ApiClient::new(
        &Credentials {
            root: sandbox.url(),
            user: "api_user".into(),
            password: Password::new(PASSWORD.into()),
        },
        &ClientConfig {
            rate: 0.0,
            timeout: Duration::from_secs(5),
            policy: Policy::default(),
            auto_max: None,
            max_unreachable: 20,
        },
    )
    .unwrap()
}

/// No value in a body we sent is an empty string or `null`.
fn assert_no_empty_values(v: &Value, at: &str) {
    match v {
        Value::String(s) => assert!(!s.is_empty(), "empty string sent at {at}"),
        Value::Null => panic!("null sent at {at}"),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                assert_no_empty_values(item, &format!("{at}[{i}]"));
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                assert_no_empty_values(item, &format!("{at}.{k}"));
            }
        }
        _ => {}
    }
}

fn find<'a>(journal: &'a [JournalEntry], method: &str, path: &str) -> Vec<&'a JournalEntry> {
    journal
        .iter()
        .filter(|e| e.method == method && e.path == path)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_stage_sends_exactly_the_vendors_shapes() {
    let sandbox = Sandbox::start(config()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = common::run_command(
        &sandbox,
        SAMPLE,
        MAPPING,
        &dir.path().join("l.jsonl"),
        PASSWORD,
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let journal = sandbox.requests();
    let state = sandbox.state_json();
    for e in &journal {
        assert!(e.path.starts_with("/api/"), "{e:?}");
        if e.method != "GET" {
            assert_no_empty_values(&e.body, &format!("{} {}", e.method, e.path));
        }
    }

    // Customers: {"customers": [...]}, row 1 first, exactly as mapped.
    let posts = find(&journal, "POST", "/api/batch/customers");
    assert_eq!(posts.len(), 3, "292 valid rows in batches of 100");
    // Batches go out concurrently: the one that starts with row 1, whatever
    // arrived first.
    let first = posts
        .iter()
        .find(|p| p.body["customers"][0]["identifier"] == "CRM-10001")
        .expect("a batch starts with row 1");
    assert_eq!(first.query, None);
    let body = first.body.as_object().unwrap();
    assert_eq!(body.keys().collect::<Vec<_>>(), ["customers"]);
    assert_eq!(
        body["customers"][0],
        json!({
            "name": "Dorota", "surname": "Szczepańska",
            "email": ["d.szczepanska@example.pl"], "phone_number": ["227354684"],
            "type": "Klient", "identifier": "CRM-10001", "birthdate": "1998-07-28",
            "address": {"street": "Świętokrzyska", "building": "78/3", "postcode": "50-613", "city": "Wrocław"},
            "custom_fields": {"Segment": "A"}
        })
    );
    let customer_1 = state["customers"]
        .as_object()
        .unwrap()
        .values()
        .find(|c| c["identifier"] == "CRM-10001")
        .unwrap()["customer_id"]
        .as_i64()
        .unwrap();

    // Field-group items: numbers for every id.
    let items = find(&journal, "POST", "/api/customer_field_group_items");
    assert_eq!(items.len(), 292);
    let item = items
        .iter()
        .find(|e| e.body["customer_id"] == customer_1)
        .unwrap();
    assert_eq!(
        item.body,
        json!({"group_id": 2, "customer_id": customer_1, "values": [
            {"field_id": 12, "value": "e-mail"}, {"field_id": 8, "value": 14}
        ]})
    );
    for e in &items {
        assert!(e.body["group_id"].is_i64() && e.body["customer_id"].is_i64());
        for v in e.body["values"].as_array().unwrap() {
            assert!(v["field_id"].is_i64(), "{v}");
        }
    }

    // Campaign records: grouped by campaign, customer ids as numbers.
    let records: Vec<&Value> = find(&journal, "POST", "/api/batch/crm_outbounds/00001/records")
        .iter()
        .flat_map(|e| e.body["records"].as_array().unwrap())
        .collect();
    let record = records
        .iter()
        .find(|r| r["customer_id"] == customer_1)
        .unwrap();
    assert_eq!(
        **record,
        json!({"customer_id": customer_1, "status_id": 1, "agent_login": "m.zielinski", "next_call_date": "2026-12-28 11:45"})
    );
    assert!(records.iter().all(|r| r["customer_id"].is_i64()));

    // A phone campaign's record edit: the identifier in the path.
    let put = find(
        &journal,
        "PUT",
        "/api/outbounds/00003/records_by_identifier/1234500009",
    );
    assert_eq!(put.len(), 1);
    assert_eq!(
        put[0].body,
        json!({"status_id": 6, "record_fields": {"Wynik": "brak zainteresowania"}})
    );

    // A feed record: "payload" is a JSON text holding a list of messages.
    let feed = find(
        &journal,
        "POST",
        &format!("/api/customers/{customer_1}/feed_records"),
    );
    assert_eq!(feed.len(), 1);
    assert_eq!(feed[0].body["type"], "ZOWIE");
    let payload: Value = serde_json::from_str(feed[0].body["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        payload,
        json!([{"id": "thulium-import-1", "type": "text",
                "payload": {"message": "Nie dzwonić w poniedziałki."},
                "author": "agent", "time": "2026-11-09T08:06:00"}])
    );

    // The journal is served over HTTP too, and can be cleared.
    let http = reqwest::Client::new();
    let served: Vec<Value> = http
        .get(format!("{}/_sandbox/requests", sandbox.url()))
        .basic_auth("api_user", Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served.len(), journal.len());
    // Preflight reads first, and only reads: what the mapping refers to.
    let reads: Vec<(String, Option<String>)> = journal
        .iter()
        .take_while(|e| e.method == "GET")
        .map(|e| (e.path.clone(), e.query.clone()))
        .collect();
    let page = Some("limit=1000&offset=0".to_string());
    assert_eq!(
        reads,
        [
            ("/api/customer_field_groups".to_string(), page.clone()),
            ("/api/outbounds".to_string(), page),
            ("/api/outbounds/00001/statuses".to_string(), None),
            ("/api/outbounds/00001/agents".to_string(), None),
            ("/api/outbounds/00002/statuses".to_string(), None),
            ("/api/outbounds/00002/agents".to_string(), None),
            ("/api/outbounds/00003/statuses".to_string(), None),
            ("/api/outbounds/00003/agents".to_string(), None),
        ]
    );
    assert!(reads.iter().zip(&served).all(|(_, s)| s["body"].is_null()));
    http.delete(format!("{}/_sandbox/requests", sandbox.url()))
        .basic_auth("api_user", Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert!(sandbox.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn lookups_and_updates_send_exact_queries_and_bodies() {
    let sandbox = Sandbox::start(config()).await.unwrap();
    let client = client(&sandbox);

    // GET customers by identifier: encoded value, paging, no body.
    let call = client
        .find_customer_ids(&SearchKey::Identifier, "CRM 7/ż")
        .await;
    assert_eq!(call.result.unwrap(), Vec::<i64>::new());
    let mut find = FindCustomers::by(SearchKey::CustomField("Nr karty".into()), "12");
    find.limit = 1000;
    find.offset = 2000;
    client.send(&find).await.result.unwrap();

    // PUT batch/customers: customer_id a number, only the mapped fields.
    let mut fields = Customer::default();
    fields.set(CustomerField::Email, json!("a@b.pl"));
    let update = CustomerUpdate {
        customer_id: 13,
        fields,
    };
    let _ = client
        .send(&UpdateCustomers {
            customers: vec![&update],
        })
        .await;

    // GET and PUT of field-group items.
    let _ = client
        .send(&FindItems {
            customer_id: 13,
            group_id: Some(2),
            limit: 1000,
            offset: 0,
        })
        .await;
    let values = [ItemValue {
        field_id: 12,
        value: Scalar::Text("phone".into()),
    }];
    let _ = client
        .send(&UpdateItem {
            item_id: 38,
            values: &values,
        })
        .await;

    let journal = sandbox.requests();
    let seen: Vec<(&str, &str, Option<&str>, &Value)> = journal
        .iter()
        .map(|e| {
            (
                e.method.as_str(),
                e.path.as_str(),
                e.query.as_deref(),
                &e.body,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "GET",
                "/api/customers",
                Some("identifier=CRM%207%2F%C5%BC&limit=1000&offset=0"),
                &Value::Null
            ),
            (
                "GET",
                "/api/customers",
                Some("custom_fields[Nr%20karty][]=12&include_custom_fields=true&limit=1000&offset=2000"),
                &Value::Null
            ),
            (
                "PUT",
                "/api/batch/customers",
                None,
                &json!({"customers": [{"customer_id": 13, "email": "a@b.pl"}]})
            ),
            (
                "GET",
                "/api/customer_field_group_items",
                Some("customer_id=13&group_id=2&limit=1000&offset=0"),
                &Value::Null
            ),
            (
                "PUT",
                "/api/customer_field_group_items/38",
                None,
                &json!({"values": [{"field_id": 12, "value": "phone"}]})
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_list_is_read_whole_through_capped_pages_and_an_ignored_offset_is_an_error() {
    use thulium_import::api::system::ListAgents;
    use thulium_import::api::CallError;
    use thulium_import::identity::Index;
    let sandbox = Sandbox::start(SandboxConfig {
        page_cap: Some(2),
        preload_customers: 7,
        ..config()
    })
    .await
    .unwrap();
    let api = client(&sandbox);
    // A system list: 5 agents, 2 a page.
    let agents = api
        .all_pages(|limit, offset| ListAgents { limit, offset })
        .await;
    assert_eq!(agents.result.unwrap().len(), 5);
    // A customer's items: 5 of them, 2 a page.
    for n in 0..5 {
        sandbox.shared().lock_state().add_item(
            2,
            3,
            vec![json!({"field_id": 10, "value": n.to_string()})],
        );
    }
    let items = api.find_items(3, 2).await.result.unwrap();
    assert_eq!(items.len(), 5);
    // The index: 7 customers in 4 pages.
    let index = Index::read(&api, &[SearchKey::Identifier], &Default::default())
        .await
        .unwrap();
    assert_eq!((index.customers, index.pages), (7, 4));
    // A lookup by a loose key reads every page of its search too.
    let ids = api
        .find_customer_ids(&SearchKey::Identifier, "PRE-000003")
        .await;
    assert_eq!(ids.result.unwrap(), [3]);

    let sandbox = Sandbox::start(SandboxConfig {
        page_cap: Some(2),
        ignore_offset: true,
        preload_customers: 7,
        ..config()
    })
    .await
    .unwrap();
    let api = client(&sandbox);
    let agents = api
        .all_pages(|limit, offset| ListAgents { limit, offset })
        .await;
    let e = agents.result.unwrap_err();
    assert!(matches!(e, CallError::Paging { .. }), "{e:?}");
    assert!(e.to_string().contains("GET agents"), "{e}");
    let e = Index::read(&api, &[SearchKey::Identifier], &Default::default())
        .await
        .unwrap_err();
    assert!(e.stops_the_run().is_some(), "{e:?}");
    // Two pages asked each time, never a loop.
    assert_eq!(sandbox.requests().len(), 4);
}
