//! The sandbox against a real HTTP client on 127.0.0.1: the vendor's own
//! examples give the vendor's answer shapes, each validation rule gives its
//! error, each fault happens and is counted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers panic on purpose

use serde_json::{json, Value};
use thulium_import::sandbox::{FaultKind, Sandbox, SandboxConfig};

struct Api {
    sandbox: Sandbox,
    http: reqwest::Client,
}

impl Api {
    async fn start(config: SandboxConfig) -> Api {
        let sandbox = Sandbox::start(config).await.unwrap();
        Api {
            sandbox,
            http: reqwest::Client::new(),
        }
    }
    async fn new() -> Api {
        Api::start(SandboxConfig::default()).await
    }
    fn url(&self, path: &str) -> String {
        format!("{}/api/{path}", self.sandbox.url())
    }
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> reqwest::Result<(u16, String)> {
        let resp = self
            .http
            .request(method, self.url(path))
            .basic_auth("api_user", Some("api_pass"))
            .header("Content-Type", "application/json; charset=utf-8")
            .body(body.to_string())
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await?))
    }
    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (status, text) = self.send(reqwest::Method::POST, path, body).await.unwrap();
        (status, parse(&text))
    }
    async fn put(&self, path: &str, body: Value) -> (u16, String) {
        self.send(reqwest::Method::PUT, path, body).await.unwrap()
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(self.url(path))
            .basic_auth("api_user", Some("api_pass"))
            .send()
            .await;
        let resp = resp.unwrap();
        (resp.status().as_u16(), parse(&resp.text().await.unwrap()))
    }
    async fn delete(&self, path: &str) -> (u16, String) {
        let resp = self
            .http
            .delete(self.url(path))
            .basic_auth("api_user", Some("api_pass"))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
    /// A `/_sandbox/` call, with or without the sandbox's credentials.
    async fn control(&self, method: reqwest::Method, path: &str, auth: bool) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/_sandbox/{path}", self.sandbox.url()));
        if auth {
            req = req.basic_auth("api_user", Some("api_pass"));
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), parse(&resp.text().await.unwrap()))
    }
    async fn customers(&self, customers: Value) -> Value {
        let (status, body) = self
            .post("batch/customers", json!({ "customers": customers }))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
    fn state(&self) -> Value {
        self.sandbox.state_json()
    }
}

fn parse(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }
}

/// The vendor's whole-call error form, with the message checked.
fn assert_error(body: &Value, needle: &str) {
    assert!(
        body["request_id"].as_str().is_some_and(|r| r.len() == 13),
        "{body}"
    );
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "expected {needle:?} in {body}");
    assert!(body["errors"][0]["code"].is_u64(), "{body}");
}

#[tokio::test]
async fn batch_customers_vendor_example_gives_keyed_answer_with_string_ids() {
    let api = Api::new().await;
    // The vendor's example request, as published.
    let body = api
        .customers(json!([{"surname":"Kowalski"},{"phone_number":"333444555"}]))
        .await;
    assert_eq!(body["0"], json!({"http_status": 201, "customer_id": "1"}));
    // The vendor's answer says "Phone number must be numeric." for an entry
    // that has a numeric phone and no surname; the missing surname is the
    // real fault, and the shape is the same.
    assert_eq!(body["1"]["http_status"], 400);
    assert_eq!(body["1"]["message"], "Surname is required.");
    assert_eq!(
        body.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["0", "1"]
    );
    assert_eq!(api.state()["customers"].as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn each_customer_rule_gives_its_per_row_error() {
    let api = Api::new().await;
    let cases = [
        (json!({"surname": "  "}), "Surname is required."),
        (
            json!({"surname": "A", "phone_number": "60123x456"}),
            "Phone number must be numeric.",
        ),
        (
            json!({"surname": "A", "phone_number": ["601234567", "+48"]}),
            "must be numeric",
        ),
        (
            json!({"surname": "A", "email": "jan.kowalski"}),
            "Invalid e-mail",
        ),
        (
            json!({"surname": "A", "email": ["a@b.pl", "x"]}),
            "Invalid e-mail",
        ),
        (
            json!({"surname": "A", "birthdate": "12.05.1980"}),
            "YYYY-MM-DD",
        ),
        (
            json!({"surname": "A", "birthdate": "1990-02-31"}),
            "YYYY-MM-DD",
        ),
        (
            json!({"surname": "A", "type": "Nieznany"}),
            "type \"Nieznany\" does not exist",
        ),
        (
            json!({"surname": "A", "group": "Nowa"}),
            "group \"Nowa\" does not exist",
        ),
        (
            json!({"surname": "A", "account_manager": "nobody"}),
            "Agent \"nobody\"",
        ),
    ];
    let list: Vec<Value> = cases.iter().map(|(c, _)| c.clone()).collect();
    let body = api.customers(Value::Array(list)).await;
    for (i, (_, needle)) in cases.iter().enumerate() {
        let entry = &body[i.to_string()];
        assert_eq!(entry["http_status"], 400, "case {i}: {entry}");
        assert!(
            entry["message"].as_str().unwrap().contains(needle),
            "case {i}: {entry}"
        );
    }
    assert_eq!(api.state()["customers"], json!({}));

    // A full, valid customer is stored as sent.
    let full = json!({
        "surname": "Wiśniewska", "name": "Zofia", "email": ["z@example.pl"],
        "phone_number": ["48601234567"], "identifier": "K-1", "birthdate": "1980-05-12",
        "vip": true, "type": "Klient", "group": "VIP", "account_manager": "j.doe",
        "custom_fields": {"Segment": "A"},
        "address": {"street": "Długa", "building": "5", "city": "Gdańsk"},
    });
    let body = api.customers(json!([full])).await;
    assert_eq!(body["0"]["http_status"], 201);
    let mut stored = full.clone();
    stored["customer_id"] = json!(1);
    // Plus when it was created.
    let state = api.state();
    let updated_at = &state["customers"]["1"]["updated_at"];
    assert!(updated_at.as_str().is_some_and(is_vendor_time), "{state}");
    stored["updated_at"] = updated_at.clone();
    assert_eq!(state["customers"]["1"], stored);
}

#[tokio::test]
async fn schema_errors_reject_the_whole_call_and_apply_nothing() {
    let api = Api::new().await;
    for (body, needle) in [
        (
            json!({"customers": [{"surname": "A"}, {"surname": "B", "colour": "red"}]}),
            "colour",
        ),
        (
            json!({"customers": [{"surname": "A"}, {"surname": "B", "vip": "tak"}]}),
            "boolean",
        ),
        (
            json!({"customers": [{"surname": "A"}, "B"]}),
            "must be an object",
        ),
        (json!({"customers": []}), "must not be empty"),
        (json!({"clients": []}), "Unknown field"),
        (
            json!({"customers": [{"surname": "A", "address": {"street": "x", "zip": "1"}}]}),
            "zip",
        ),
    ] {
        let (status, answer) = api.post("batch/customers", body).await;
        assert_eq!(status, 400, "{answer}");
        assert_error(&answer, needle);
    }
    assert_eq!(api.state()["customers"], json!({}));

    // Too many customers in one call: 413.
    let api = Api::start(SandboxConfig {
        max_batch: 2,
        ..Default::default()
    })
    .await;
    let (status, answer) = api
        .post(
            "batch/customers",
            json!({"customers": [{"surname":"A"},{"surname":"B"},{"surname":"C"}]}),
        )
        .await;
    assert_eq!(status, 413);
    assert_error(&answer, "At most 2");
}

#[tokio::test]
async fn auth_content_type_and_malformed_json() {
    let api = Api::new().await;
    let url = api.url("batch/customers");
    let body = r#"{"customers":[{"surname":"A"}]}"#;

    let resp = api
        .http
        .post(&url)
        .basic_auth("api_user", Some("wrong"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_error(&resp.json().await.unwrap(), "Authentication failed");
    let resp = api.http.post(&url).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    let resp = api
        .http
        .post(&url)
        .basic_auth("api_user", Some("api_pass"))
        .header("Content-Type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    assert_error(&resp.json().await.unwrap(), "application/json");

    let resp = api
        .http
        .post(&url)
        .basic_auth("api_user", Some("api_pass"))
        .header("Content-Type", "application/json")
        .body("{\"customers\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_error(&resp.json().await.unwrap(), "Malformed JSON");

    let resp = api
        .http
        .get(api.url("no/such/thing"))
        .basic_auth("api_user", Some("api_pass"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(api.state()["customers"], json!({}));
}

#[tokio::test]
async fn field_group_item_vendor_example_and_rules() {
    let api = Api::new().await;
    // No customer 1 yet: the item is refused.
    let example = json!({ "group_id": 2, "customer_id": 1, "values": [
        { "field_id": 12, "value": "phone" }, { "field_id": 8, "value": 13 },
        { "field_id": 10, "value": "comment" } ] });
    let (status, body) = api
        .post("customer_field_group_items", example.clone())
        .await;
    assert_eq!(status, 404);
    assert_error(&body, "Customer 1 not found");

    api.customers(json!([{"surname": "Kowalski"}])).await;
    let (status, body) = api
        .post("customer_field_group_items", example.clone())
        .await;
    assert_eq!(status, 201);
    assert_eq!(body, json!({"item_id": 1}));
    let (_, body) = api.post("customer_field_group_items", example).await;
    assert_eq!(
        body,
        json!({"item_id": 2}),
        "creating an item is not idempotent"
    );

    for (body, needle) in [
        (
            json!({"group_id": 2, "customer_id": 1, "values": [{"field_id": 20, "value": "x"}]}),
            "does not belong to field group 2",
        ),
        (
            json!({"group_id": 9, "customer_id": 1, "values": [{"field_id": 8, "value": 1}]}),
            "Field group 9 does not exist",
        ),
        (
            json!({"group_id": 2, "customer_id": 1, "values": [{"field_id": 8, "value": "dużo"}]}),
            "Invalid value",
        ),
        (
            json!({"group_id": 3, "customer_id": 1, "values": [{"field_id": 21, "value": "1.1.2020"}]}),
            "Invalid value",
        ),
        (
            json!({"group_id": 2, "customer_id": 1, "values": []}),
            "must not be empty",
        ),
        (
            json!({"group_id": 2, "customer_id": 1, "values": [{"field_id": 8, "value": 1, "x": 1}]}),
            "Unknown field",
        ),
    ] {
        let (status, answer) = api.post("customer_field_group_items", body).await;
        assert!(status == 400 || status == 404, "{status} {answer}");
        assert_error(&answer, needle);
    }
    // A number given as a string is accepted for a number field.
    let (status, _) = api
        .post(
            "customer_field_group_items",
            json!({"group_id": 2, "customer_id": "1", "values": [{"field_id": 8, "value": "13"}]}),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(
        api.state()["field_group_items"].as_array().unwrap().len(),
        3
    );
}

#[tokio::test]
async fn campaign_records_keyed_by_customer_with_already_exists() {
    let api = Api::new().await;
    api.customers(json!([{"surname": "A"}, {"surname": "B"}, {"surname": "C"}]))
        .await;
    let (status, first) = api
        .post(
            "batch/crm_outbounds/00001/records",
            json!({"records": [{"customer_id": 2, "status_id": 1}]}),
        )
        .await;
    assert_eq!(status, 200);
    let existing = first["2"]["record_id"].as_i64().unwrap();
    assert_eq!(first["2"]["status"], "ADDED");

    // The vendor's example shape: added, already there, customer not found.
    let (status, body) = api.post("batch/crm_outbounds/00001/records", json!({"records": [
        {"customer_id": 1, "status_id": 3}, {"customer_id": 2, "status_id": 1}, {"customer_id": 448, "status_id": 1}]})).await;
    assert_eq!(status, 200);
    assert_eq!(body["1"]["http_status"], 201);
    assert_eq!(body["1"]["status"], "ADDED");
    assert!(body["1"]["record_id"].is_i64());
    assert_eq!(
        body["2"],
        json!({"http_status": 400, "record_id": existing, "status": "ALREADY_EXISTS"})
    );
    assert_eq!(
        body["448"],
        json!({"http_status": 400, "status": "FAILED", "message": "Customer not found."})
    );

    // Rules per record.
    let (_, body) = api
        .post(
            "batch/crm_outbounds/00002/records",
            json!({"records": [
        {"customer_id": 1, "status_id": 9, "agent_login": "j.doe"},
        {"customer_id": 2, "status_id": 1, "next_call_date": "2018-05-24T12:24"},
        {"customer_id": 3, "status_id": 77}]}),
        )
        .await;
    assert!(
        body["1"]["message"].as_str().unwrap().contains("MY_RECORD"),
        "{body}"
    );
    assert!(
        body["2"]["message"]
            .as_str()
            .unwrap()
            .contains("YYYY-MM-DD hh:mm"),
        "{body}"
    );
    assert!(
        body["3"]["message"].as_str().unwrap().contains("Status 77"),
        "{body}"
    );
    let (_, body) = api.post("batch/crm_outbounds/00002/records", json!({"records": [
        {"customer_id": 1, "status_id": 10, "next_call_date": "2018-05-24 12:24", "agent_login": "nobody"}]})).await;
    assert!(
        body["1"]["message"].as_str().unwrap().contains("Agent"),
        "{body}"
    );

    // Two records for one customer in one call collide in the answer.
    let (_, body) = api
        .post(
            "batch/crm_outbounds/00002/records",
            json!({"records": [
        {"customer_id": 3, "status_id": 1}, {"customer_id": 3, "status_id": 1}]}),
        )
        .await;
    assert_eq!(body.as_object().unwrap().len(), 1);
    assert_eq!(body["3"]["status"], "ALREADY_EXISTS");

    let (status, body) = api
        .post(
            "batch/crm_outbounds/0001/records",
            json!({"records": [{"customer_id": 1}]}),
        )
        .await;
    assert_eq!(status, 400);
    assert_error(&body, "five characters");
    let (status, body) = api
        .post(
            "batch/crm_outbounds/00009/records",
            json!({"records": [{"customer_id": 1}]}),
        )
        .await;
    assert_eq!(status, 404);
    assert_error(&body, "Campaign 00009 not found");
}

#[tokio::test]
async fn put_record_by_identifier_vendor_example() {
    let api = Api::new().await;
    let (status, body) = api
        .put(
            "outbounds/00003/records_by_identifier/1234567890",
            json!({"status_id":"3"}),
        )
        .await;
    assert_eq!((status, body.as_str()), (200, ""));
    let record = &api.state()["campaigns"]["00003"]["by_identifier"]["1234567890"];
    assert_eq!(record["status_id"], 3);

    let (status, _) = api
        .put(
            "outbounds/00003/records_by_identifier/1234567890",
            json!({"record_fields": {"Wynik": "sukces"}, "next_call_date": "2026-12-01 09:30"}),
        )
        .await;
    assert_eq!(status, 200);
    let record = &api.state()["campaigns"]["00003"]["by_identifier"]["1234567890"];
    assert_eq!(record["record_fields"]["Wynik"], "sukces");
    assert_eq!(
        record["status_id"], 3,
        "an edit keeps what it does not name"
    );

    for (path, body, code, needle) in [
        (
            "outbounds/00003/records_by_identifier/999",
            json!({"status_id": 1}),
            404,
            "not found",
        ),
        (
            "outbounds/00003/records_by_identifier/1234567890",
            json!({"record_fields": {"Kolor": "x"}}),
            400,
            "no field \"Kolor\"",
        ),
        (
            "outbounds/00003/records_by_identifier/1234567890",
            json!({"next_call_date": "jutro"}),
            400,
            "YYYY-MM-DD hh:mm",
        ),
        (
            "outbounds/003/records_by_identifier/1234567890",
            json!({"status_id": 1}),
            400,
            "five characters",
        ),
        (
            "outbounds/00003/records_by_identifier/1234567890",
            json!({"status": 1}),
            400,
            "Unknown field",
        ),
    ] {
        let (status, text) = api.put(path, body).await;
        assert_eq!(status, code, "{path}: {text}");
        assert_error(&parse(&text), needle);
    }
}

#[tokio::test]
async fn feed_record_vendor_example_and_rules() {
    let api = Api::new().await;
    let example = json!({"type":"ZOWIE","payload":"[{\"id\":\"sample-id\",\"type\":\"text\",\"payload\":{\"message\":\"Sample message\"},\"author\":\"customer\",\"time\":\"2021-02-02T10:10:12\"}]"});
    let (status, body) = api.post("customers/1/feed_records", example.clone()).await;
    assert_eq!(status, 404);
    assert_error(&body, "Customer 1 not found");
    api.customers(json!([{"surname": "Kowalski"}])).await;
    let (status, text) = api
        .send(
            reqwest::Method::POST,
            "customers/1/feed_records",
            example.clone(),
        )
        .await
        .unwrap();
    assert_eq!((status, text.as_str()), (201, ""));
    let feed = api.state()["feed_records"].clone();
    assert_eq!(feed[0]["customer_id"], 1);
    assert_eq!(feed[0]["payload"], example["payload"]);

    for (body, needle) in [
        (
            json!({"type": "SMS", "payload": "[]"}),
            "Unknown feed record type",
        ),
        (json!({"type": "ZOWIE", "payload": "not json"}), "JSON list"),
        (
            json!({"type": "ZOWIE", "payload": [{"id": "x"}]}),
            "must be a string",
        ),
        (
            json!({"type": "ZOWIE", "payload": "[{\"id\":\"a\",\"type\":\"text\",\"payload\":{\"message\":\"m\"},\"author\":\"agent\",\"time\":\"2021-02-02 10:10\"}]"}),
            "\"time\"",
        ),
        (
            json!({"type": "ZOWIE", "payload": "[{\"id\":\"a\",\"type\":\"text\",\"payload\":{},\"author\":\"agent\",\"time\":\"2021-02-02T10:10:00\"}]"}),
            "payload.message",
        ),
    ] {
        let (status, answer) = api.post("customers/1/feed_records", body).await;
        assert_eq!(status, 400, "{answer}");
        assert_error(&answer, needle);
    }
    assert_eq!(api.state()["feed_records"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn customer_search_filters_and_pages() {
    let api = Api::new().await;
    let list: Vec<Value> = (0..25)
        .map(|i| json!({"surname": format!("S{i}"), "identifier": format!("K-{}", i % 5), "email": [format!("u{i}@x.pl")], "phone_number": format!("4860000{i:04}")}))
        .collect();
    api.customers(Value::Array(list)).await;
    let (status, body) = api.get("customers?identifier=K-3").await;
    assert_eq!(status, 200);
    assert_eq!(body["count"], 5);
    let ids: Vec<i64> = body["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["customer_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [4, 9, 14, 19, 24]);
    assert_eq!(body["result"][0]["identifier"], "K-3");
    let (_, body) = api.get("customers?email=u7@x.pl").await;
    assert_eq!(body["count"], 1);
    let (_, body) = api.get("customers?phone_number=48600000007").await;
    assert_eq!(body["result"][0]["customer_id"], 8);
    let (_, body) = api.get("customers?limit=10&offset=20").await;
    assert_eq!(
        (
            body["count"].as_i64(),
            body["result"].as_array().unwrap().len()
        ),
        (Some(25), 5)
    );
    let (_, body) = api.get("customers?identifier=nope").await;
    assert_eq!(body, json!({"count": 0, "result": []}));
    let (status, body) = api.get("customers?limit=5000").await;
    assert_eq!(status, 400);
    assert_error(&body, "limit");
}

#[tokio::test]
async fn searches_are_loose_and_updates_merge() {
    let api = Api::new().await;
    api.customers(json!([
        {"surname": "A", "identifier": "K-1", "email": "Ann@X.pl", "custom_fields": {"Karta": "77", "Segment": "A"}},
        {"surname": "B", "identifier": "K-10", "phone_number": "48601000000"},
        {"surname": "C"}
    ]))
    .await;
    // identifier by prefix (the importer keeps exact matches), e-mail
    // without case, phone numbers by digits, custom fields, empty values.
    let count = |body: &Value| body["count"].as_i64().unwrap();
    assert_eq!(count(&api.get("customers?identifier=K-1").await.1), 2);
    assert_eq!(count(&api.get("customers?email=ann@x.pl").await.1), 1);
    assert_eq!(
        count(
            &api.get("customers?phone_number=%2B48%20601-000-000")
                .await
                .1
        ),
        1
    );
    assert_eq!(
        count(&api.get("customers?custom_fields[Karta][]=77").await.1),
        1
    );
    assert_eq!(
        count(&api.get("customers?custom_fields[Karta]=78").await.1),
        0
    );
    assert_eq!(
        count(&api.get("customers?identifier=").await.1),
        1,
        "the one without"
    );
    let (status, body) = api.get("customers?colour=red").await;
    assert_eq!(status, 400);
    assert_error(&body, "colour");

    // PUT batch/customers: keyed by position; fields replace, an empty
    // custom field clears, a missing customer fails alone.
    let (status, text) = api
        .put(
            "batch/customers",
            json!({"customers": [
                {"customer_id": 1, "name": "Anna", "custom_fields": {"Segment": ""}},
                {"customer_id": 99, "name": "X"},
                {"customer_id": 2, "phone_number": "12x"}
            ]}),
        )
        .await;
    assert_eq!(status, 200);
    let answer = parse(&text);
    assert_eq!(answer["0"]["http_status"], 200);
    assert_eq!(answer["1"]["http_status"], 404);
    assert_eq!(answer["2"]["http_status"], 400);
    let state = api.state();
    let one = &state["customers"]["1"];
    assert_eq!(
        (one["name"].as_str(), one["surname"].as_str()),
        (Some("Anna"), Some("A"))
    );
    assert_eq!(one["custom_fields"], json!({"Karta": "77"}));
    assert_eq!(state["customers"]["2"]["phone_number"], "48601000000");
    assert_eq!(api.sandbox.stats().customers_updated, 1);
    // Searches follow the update.
    let (status, _) = api
        .put(
            "batch/customers",
            json!({"customers": [{"customer_id": 1, "identifier": "Z-9"}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(count(&api.get("customers?identifier=K-1").await.1), 1);
    assert_eq!(count(&api.get("customers?identifier=Z-9").await.1), 1);
    let (status, body) = api
        .put("batch/customers", json!({"customers": [{"name": "no id"}]}))
        .await;
    assert_eq!(status, 400, "{body}");

    // Items: listed by customer and group, replaced by PUT.
    let (status, body) = api
        .post(
            "customer_field_group_items",
            json!({"group_id": 2, "customer_id": 1, "values": [{"field_id": 12, "value": "www"}]}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let item = body["item_id"].as_i64().unwrap();
    let (_, list) = api
        .get("customer_field_group_items?customer_id=1&group_id=2")
        .await;
    assert_eq!(list["count"], 1);
    assert_eq!(
        list["result"][0]["values"],
        json!([{"field_id": 12, "value": "www"}])
    );
    assert_eq!(
        count(&api.get("customer_field_group_items?customer_id=2").await.1),
        0
    );
    let (status, _) = api
        .put(
            &format!("customer_field_group_items/{item}"),
            json!({"values": [{"field_id": 12, "value": "tel"}, {"field_id": 8, "value": 3}]}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, list) = api
        .get("customer_field_group_items?customer_id=1&group_id=2")
        .await;
    assert_eq!(
        list["result"][0]["values"],
        json!([{"field_id": 12, "value": "tel"}, {"field_id": 8, "value": 3}])
    );
    let (status, _) = api
        .put(
            &format!("customer_field_group_items/{item}"),
            json!({"values": [{"field_id": 20, "value": "x"}]}),
        )
        .await;
    assert_eq!(status, 400, "a field of another group");
    let (status, _) = api
        .put("customer_field_group_items/999", json!({"values": []}))
        .await;
    assert_eq!(status, 404);
    assert_eq!(api.sandbox.stats().items_updated, 1);
}

fn faulty(kind: FaultKind) -> SandboxConfig {
    SandboxConfig {
        fault_rate: 1.0,
        faults: vec![kind],
        retry_after_secs: 7,
        ..Default::default()
    }
}

#[tokio::test]
async fn faults_before_apply_change_nothing_and_are_counted() {
    for kind in [
        FaultKind::TooManyRequests,
        FaultKind::Unavailable,
        FaultKind::DropBefore,
    ] {
        let api = Api::start(faulty(kind)).await;
        let result = api
            .send(
                reqwest::Method::POST,
                "batch/customers",
                json!({"customers": [{"surname": "A"}]}),
            )
            .await;
        match kind {
            FaultKind::DropBefore => {
                let err = result.expect_err("the connection is dropped");
                assert!(!err.is_status(), "{err}");
            }
            _ => {
                let (status, text) = result.unwrap();
                assert_eq!(
                    status,
                    if kind == FaultKind::TooManyRequests {
                        429
                    } else {
                        503
                    }
                );
                assert_error(&parse(&text), "");
            }
        }
        assert_eq!(
            api.state()["customers"],
            json!({}),
            "{kind:?} applied nothing"
        );
        let stats = api.sandbox.stats();
        assert_eq!(stats.faults.get(kind.name()), Some(&1), "{kind:?}");
        assert_eq!(stats.faults_total, 1);
        assert_eq!(
            stats.ambiguous_non_idempotent,
            u64::from(kind == FaultKind::DropBefore)
        );
    }
    // The Retry-After header comes with 429 and 503.
    let api = Api::start(faulty(FaultKind::Unavailable)).await;
    let resp = api
        .http
        .post(api.url("batch/customers"))
        .basic_auth("api_user", Some("api_pass"))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "7");
}

#[tokio::test]
async fn faults_after_apply_leave_the_change_in_the_state() {
    for kind in [FaultKind::DropAfter, FaultKind::ServerErrorAfter] {
        let api = Api::start(faulty(kind)).await;
        let result = api
            .send(
                reqwest::Method::POST,
                "batch/customers",
                json!({"customers": [{"surname": "A"}, {"surname": "B"}]}),
            )
            .await;
        match kind {
            FaultKind::DropAfter => assert!(result.is_err()),
            _ => assert_eq!(result.unwrap().0, 500),
        }
        let state = api.state();
        assert_eq!(
            state["customers"].as_object().unwrap().len(),
            2,
            "{kind:?}: the change was applied"
        );
        let stats = api.sandbox.stats();
        assert_eq!(stats.faults.get(kind.name()), Some(&1));
        assert_eq!(stats.ambiguous_non_idempotent, 1);
        let by_endpoint = &stats.faults_by_endpoint["POST /api/batch/customers"];
        assert_eq!(by_endpoint.get(kind.name()), Some(&1));
    }
}

#[tokio::test]
async fn fault_draw_is_reproducible_from_the_seed() {
    async fn pattern(seed: u64) -> Vec<u16> {
        let api = Api::start(SandboxConfig {
            fault_rate: 0.5,
            faults: vec![FaultKind::Unavailable],
            seed,
            ..Default::default()
        })
        .await;
        let mut seen = Vec::new();
        for _ in 0..40 {
            seen.push(api.get("customers").await.0);
        }
        seen
    }
    let a = pattern(7).await;
    assert_eq!(a, pattern(7).await);
    assert!(a.contains(&503) && a.contains(&200), "{a:?}");
    assert_ne!(a, pattern(8).await);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let api = Api::start(SandboxConfig {
        rate_limit: Some(3),
        ..Default::default()
    })
    .await;
    let mut codes = Vec::new();
    for _ in 0..10 {
        let resp = api
            .http
            .get(api.url("customers"))
            .basic_auth("api_user", Some("api_pass"))
            .send()
            .await
            .unwrap();
        if resp.status() == 429 {
            assert!(resp.headers().contains_key("retry-after"));
        }
        codes.push(resp.status().as_u16());
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 3, "{codes:?}");
    let stats = api.sandbox.stats();
    assert_eq!(stats.rate_limited, 7);
    assert_eq!(stats.responses_429, 7);
    assert_eq!(stats.requests["GET /api/customers"], 10);
}

#[tokio::test]
async fn state_and_stats_are_served_over_http() {
    let api = Api::new().await;
    api.customers(json!([{"surname": "A"}])).await;
    let state: Value = api
        .http
        .get(format!("{}/_sandbox/state", api.sandbox.url()))
        .basic_auth("api_user", Some("api_pass"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["customers"]["1"]["surname"], "A");
    assert!(state["field_groups"]["2"]["fields"].is_array());
    let stats: Value = api
        .http
        .get(format!("{}/_sandbox/stats", api.sandbox.url()))
        .basic_auth("api_user", Some("api_pass"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"]["POST /api/batch/customers"], 1);
    assert_eq!(stats["responses"]["200"], 1);
}

#[tokio::test]
async fn the_sandbox_endpoints_answer_only_with_its_credentials() {
    let api = Api::new().await;
    api.customers(json!([{"surname": "A", "email": "a@b.pl"}]))
        .await;
    use reqwest::Method;
    for (method, path) in [
        (Method::GET, "state"),
        (Method::GET, "stats"),
        (Method::GET, "requests"),
        (Method::DELETE, "requests"),
        (Method::POST, "restore"),
    ] {
        let (status, body) = api.control(method.clone(), path, false).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(!body.to_string().contains("a@b.pl"), "{body}");
        let resp = api
            .http
            .request(
                method.clone(),
                format!("{}/_sandbox/{path}", api.sandbox.url()),
            )
            .basic_auth("api_user", Some("wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{method} {path}");
    }
    // Nothing was restored or cleared by the refused calls.
    assert_eq!(api.state()["customers"].as_object().unwrap().len(), 1);
    assert_eq!(api.sandbox.requests().len(), 1);
    let (status, journal) = api.control(Method::GET, "requests", true).await;
    assert_eq!(status, 200);
    assert_eq!(journal[0]["body"]["customers"][0]["email"], "a@b.pl");
}

/// `YYYY-MM-DD hh:mm:ss`.
fn is_vendor_time(s: &str) -> bool {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").is_ok()
}

#[tokio::test]
async fn one_customer_is_read_as_the_vendor_documents_it() {
    let api = Api::new().await;
    api.customers(json!([{
        "surname": "Kowalski", "name": "Jan", "phone_number": ["601234567", "48222"],
        "nip": "5260250274", "custom_fields": {"Nr karty": "7"},
        "address": {"city": "Kraków"}
    }]))
    .await;
    let (status, c) = api.get("customers/1").await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["customer_id"], json!(1));
    assert_eq!(c["surname"], "Kowalski");
    assert_eq!(c["phone_number"], "601234567");
    assert_eq!(c["phone_numbers"], json!(["601234567", "48222"]));
    // Empty fields come as "".
    for key in [
        "email",
        "identifier",
        "type",
        "group",
        "company_id",
        "account_manager",
    ] {
        assert_eq!(c[key], "", "{key}: {c}");
    }
    assert_eq!(c["nip"], "5260250274");
    assert!(c["updated_at"].as_str().is_some_and(is_vendor_time), "{c}");
    assert!(c.get("custom_fields").is_none(), "{c}");
    assert!(c.get("address").is_none(), "{c}");
    let (_, c) = api
        .get("customers/1?include_custom_fields=true&include_address=true")
        .await;
    assert_eq!(c["custom_fields"], json!({"Nr karty": "7"}));
    assert_eq!(c["address"], json!({"city": "Kraków"}));
    // Every customer carries updated_at in the list and the state too.
    let (_, list) = api.get("customers").await;
    assert!(list["result"][0]["updated_at"]
        .as_str()
        .is_some_and(is_vendor_time));
    assert!(api.state()["customers"]["1"]["updated_at"]
        .as_str()
        .is_some_and(is_vendor_time));
    for path in ["customers/2", "customers/x"] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, 404, "{path}");
        assert_error(&body, "not found");
    }
    assert_eq!(api.sandbox.stats().requests["GET /api/customers/:id"], 4);
}

#[tokio::test]
async fn an_update_moves_updated_at_on() {
    let api = Api::new().await;
    api.customers(json!([{"surname": "A"}, {"surname": "B"}]))
        .await;
    let (_, before) = api.get("customers/1").await;
    // updated_at counts seconds.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, _) = api
        .put(
            "batch/customers",
            json!({"customers": [{"customer_id": 1, "name": "Ala"}]}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, after) = api.get("customers/1").await;
    let (_, other) = api.get("customers/2").await;
    assert_eq!(after["name"], "Ala");
    let time = |c: &Value| c["updated_at"].as_str().unwrap().to_string();
    assert!(time(&after) > time(&before), "{before} {after}");
    assert_eq!(time(&other), time(&before), "only the updated one moves");
}

#[tokio::test]
async fn deleting_a_customer_takes_its_items_records_and_feed_with_it() {
    let api = Api::new().await;
    api.customers(
        json!([{"surname": "A", "identifier": "ID-1"}, {"surname": "B", "identifier": "ID-2"}]),
    )
    .await;
    let feed = json!({"type": "ZOWIE", "payload": json!([{"id": "m", "type": "text",
        "payload": {"message": "x"}, "author": "customer", "time": "2021-02-02T10:10:12"}]).to_string()});
    for id in [1, 2] {
        let (status, body) = api
            .post(
                "customer_field_group_items",
                json!({"group_id": 2, "customer_id": id, "values": [{"field_id": 10, "value": "x"}]}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = api
            .post(
                "batch/crm_outbounds/00001/records",
                json!({"records": [{"customer_id": id}]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = api
            .post(&format!("customers/{id}/feed_records"), feed.clone())
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = api.delete("customers/1").await;
    assert_eq!((status, body.as_str()), (200, ""));
    let state = api.state();
    assert_eq!(
        state["customers"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["2"]
    );
    let items = state["field_group_items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["customer_id"], 2);
    let records = state["campaigns"]["00001"]["by_customer"]
        .as_object()
        .unwrap();
    assert_eq!(records.keys().collect::<Vec<_>>(), ["2"]);
    let feeds = state["feed_records"].as_array().unwrap();
    assert_eq!(feeds.len(), 1);
    assert_eq!(feeds[0]["customer_id"], 2);
    // The survivor's items are still found by customer; the deleted one is
    // gone from searches and reads.
    let (_, list) = api
        .get("customer_field_group_items?customer_id=2&group_id=2")
        .await;
    assert_eq!(list["count"], 1, "{list}");
    assert_eq!(list["result"][0]["customer_id"], 2);
    let (_, found) = api.get("customers?identifier=ID-1").await;
    assert_eq!(found["count"], 0, "{found}");
    let (status, _) = api.get("customers/1").await;
    assert_eq!(status, 404);
    let (status, body) = api.delete("customers/1").await;
    assert_eq!(status, 404);
    assert_error(&parse(&body), "Customer 1 not found.");
    let (status, _) = api.delete("customers/x").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_restore_empties_the_system_and_reset_ids_gives_old_ids_to_new_customers() {
    let api = Api::new().await;
    api.customers(json!([{"surname": "A"}, {"surname": "B"}]))
        .await;
    api.post(
        "customer_field_group_items",
        json!({"group_id": 2, "customer_id": 1, "values": [{"field_id": 10, "value": "x"}]}),
    )
    .await;
    api.post(
        "batch/crm_outbounds/00001/records",
        json!({"records": [{"customer_id": 1}]}),
    )
    .await;
    let (status, _) = api.control(reqwest::Method::POST, "restore", true).await;
    assert_eq!(status, 204);
    let state = api.state();
    assert!(
        state["customers"].as_object().unwrap().is_empty(),
        "{state}"
    );
    assert!(state["field_group_items"].as_array().unwrap().is_empty());
    assert!(state["campaigns"]["00001"]["by_customer"]
        .as_object()
        .unwrap()
        .is_empty());
    // The configuration stays.
    assert!(state["field_groups"]["2"]["fields"].is_array());
    // Without reset_ids, ids go on.
    let body = api.customers(json!([{"surname": "C"}])).await;
    assert_eq!(body["0"]["customer_id"], "3");
    // With it, an old id names a new, different customer.
    let (status, _) = api
        .control(reqwest::Method::POST, "restore?reset_ids=true", true)
        .await;
    assert_eq!(status, 204);
    let body = api.customers(json!([{"surname": "D"}])).await;
    assert_eq!(body["0"]["customer_id"], "1");
    let (_, c) = api.get("customers/1").await;
    assert_eq!(c["surname"], "D");
    // The same from Rust.
    api.sandbox.restore(false);
    assert!(api.state()["customers"].as_object().unwrap().is_empty());
    assert_eq!(
        api.customers(json!([{"surname": "E"}])).await["0"]["customer_id"],
        "2"
    );
    api.sandbox.restore(true);
    assert_eq!(
        api.customers(json!([{"surname": "F"}])).await["0"]["customer_id"],
        "1"
    );
}

#[tokio::test]
async fn paged_gets_answer_at_most_the_page_cap_with_the_true_count() {
    let api = Api::start(SandboxConfig {
        page_cap: Some(200),
        preload_customers: 450,
        ..SandboxConfig::default()
    })
    .await;
    let ids = |body: &Value| -> Vec<i64> {
        body["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["customer_id"].as_i64().unwrap())
            .collect()
    };
    let (_, page) = api.get("customers?limit=1000&offset=0").await;
    assert_eq!(page["count"], 450);
    assert_eq!(ids(&page), (1..=200).collect::<Vec<_>>());
    let (_, page) = api.get("customers?limit=1000&offset=400").await;
    assert_eq!(ids(&page), (401..=450).collect::<Vec<_>>());
    // A smaller limit than the cap is answered as asked.
    let (_, page) = api.get("customers?limit=10&offset=5").await;
    assert_eq!(ids(&page), (6..=15).collect::<Vec<_>>());
    let api = Api::start(SandboxConfig {
        page_cap: Some(2),
        ..SandboxConfig::default()
    })
    .await;
    for list in [
        "agents?limit=1000",
        "outbounds?limit=1000",
        "customer_field_groups?limit=1000",
    ] {
        let (_, page) = api.get(list).await;
        assert_eq!(
            page["result"].as_array().unwrap().len(),
            2,
            "{list}: {page}"
        );
        assert!(page["count"].as_u64().unwrap() >= 2, "{list}: {page}");
    }
    let (_, agents) = api.get("agents?limit=1000").await;
    assert_eq!(agents["count"], 5);
}

#[tokio::test]
async fn ignore_offset_answers_the_first_page_whatever_offset_asks() {
    let api = Api::start(SandboxConfig {
        ignore_offset: true,
        preload_customers: 30,
        ..SandboxConfig::default()
    })
    .await;
    let (_, first) = api.get("customers?limit=10&offset=0").await;
    let (_, later) = api.get("customers?limit=10&offset=20").await;
    assert_eq!(first["result"], later["result"]);
    assert_eq!(later["count"], 30);
    assert_eq!(later["result"][0]["customer_id"], 1);
    let (_, agents) = api.get("agents?limit=2&offset=4").await;
    assert_eq!(agents["result"][0]["login"], "j.doe");
}
