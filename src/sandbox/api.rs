//! The five Thulium endpoints plus `GET /api/customers`, `GET` and `DELETE
//! /api/customers/:id` and the lists preflight reads, as the vendor's pages
//! describe them: request shapes, keyed per-row answers, whole-call errors in
//! the vendor's `{"request_id", "errors": [...]}` form.
//!
//! Where a request is malformed as a whole (not JSON, wrong content type, a
//! field of the wrong JSON type, an unknown field, too many items) the whole
//! call is rejected and nothing is applied. Where one customer or record is
//! wrong in its content (no surname, a phone number with letters, a customer
//! that does not exist) only that entry fails, inside the keyed answer.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Map, Value};

use super::model::{FieldKind, Record, SystemStatus, AGENTS, CUSTOMER_GROUPS, CUSTOMER_TYPES};
use super::Shared;
use crate::validate;

/// Largest request body the sandbox reads (413 past it).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// A whole-call error in the vendor's form.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_response(self.status, &self.message)
    }
}

/// `{"request_id": "...", "errors": [{"message": "...", "code": N}]}`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "request_id": super::request_id(),
        "errors": [{"message": message, "code": status.as_u16()}],
    });
    (status, axum::Json(body)).into_response()
}

type ApiResult = Result<Response, ApiError>;

/// Checks HTTP Basic credentials against the sandbox's user and password.
pub fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let expected = format!("{}:{}", shared.config.user, shared.config.password);
    decoded == expected.as_bytes()
}

/// Reads a JSON object body: 415 for another content type, 413 past the size
/// limit, 400 for malformed JSON or a body that is not an object.
async fn json_object(headers: &HeaderMap, body: Body) -> Result<Map<String, Value>, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let is_json = content_type.is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json.",
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "Request body is too large."))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad("Request body must be a JSON object.")),
        Err(e) => Err(ApiError::bad(format!("Malformed JSON: {e}."))),
    }
}

/// Rejects keys outside `allowed` (a whole-call error: the schema is wrong).
fn only_keys(obj: &Map<String, Value>, allowed: &[&str], at: &str) -> Result<(), ApiError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad(format!("Unknown field \"{at}{k}\"."))),
        None => Ok(()),
    }
}

/// An integer given as a JSON number or as a string of digits (the vendor's
/// own PUT example sends `"status_id":"3"`).
fn int_like(v: &Value) -> Option<i64> {
    crate::api::lenient_int(Some(v))
}

fn int_field(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<i64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => int_like(v)
            .map(Some)
            .ok_or_else(|| ApiError::bad(format!("Field \"{at}{key}\" must be an integer."))),
    }
}

fn str_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<&'a str>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad(format!(
            "Field \"{at}{key}\" must be a string."
        ))),
    }
}

/// A string or a list of strings (`email`, `phone_number`); numbers are taken
/// as their digits, as a lenient service would.
fn one_or_many(v: &Value) -> Option<Vec<String>> {
    let one = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    match v {
        Value::Array(items) => items.iter().map(one).collect(),
        other => one(other).map(|s| vec![s]),
    }
}

/// The one list of a batch body (`{"customers": [...]}`): present, not
/// empty, at most `max` items (413 past it), each an object, and nothing
/// else in the body.
fn batch_list<'a>(
    body: &'a Map<String, Value>,
    key: &str,
    max: usize,
) -> Result<Vec<&'a Map<String, Value>>, ApiError> {
    only_keys(body, &[key], "")?;
    let Some(Value::Array(list)) = body.get(key) else {
        return Err(ApiError::bad(format!(
            "Field \"{key}\" is required and must be a list."
        )));
    };
    if list.is_empty() {
        return Err(ApiError::bad(format!("Field \"{key}\" must not be empty.")));
    }
    if list.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("At most {max} {key} per call."),
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Object(o) => Ok(o),
            _ => Err(ApiError::bad(format!(
                "Field \"{key}[{i}]\" must be an object."
            ))),
        })
        .collect()
}

const CUSTOMER_KEYS: &[&str] = &[
    "name",
    "surname",
    "email",
    "phone_number",
    "company_id",
    "type",
    "group",
    "identifier",
    "gender",
    "homepage",
    "birthdate",
    "nip",
    "note",
    "pesel",
    "job",
    "job_title",
    "account_manager",
    "custom_fields",
    "fill_read_only_custom_fields",
    "vip",
    "address",
    "invoice_address",
    "mail_drop_address",
];
const ADDRESS_KEYS: &[&str] = &["street", "building", "flat", "postcode", "city", "country"];
const TEXT_KEYS: &[&str] = &[
    "name",
    "surname",
    "type",
    "group",
    "identifier",
    "gender",
    "homepage",
    "birthdate",
    "nip",
    "note",
    "pesel",
    "job",
    "job_title",
    "account_manager",
];

/// Schema check of one customer: unknown keys and wrong JSON types reject the
/// whole call.
fn customer_schema(c: &Map<String, Value>, at: &str) -> Result<(), ApiError> {
    only_keys(c, CUSTOMER_KEYS, at)?;
    for key in TEXT_KEYS {
        // Identifiers and NIPs are often numeric in exports; accept numbers.
        match c.get(*key) {
            None | Some(Value::Null | Value::String(_) | Value::Number(_)) => {}
            Some(_) => {
                return Err(ApiError::bad(format!(
                    "Field \"{at}{key}\" must be a string."
                )))
            }
        }
    }
    for key in ["email", "phone_number"] {
        if let Some(v) = c.get(key) {
            if !v.is_null() && one_or_many(v).is_none() {
                return Err(ApiError::bad(format!(
                    "Field \"{at}{key}\" must be a string or a list of strings."
                )));
            }
        }
    }
    int_field(c, "company_id", at)?;
    for key in ["vip", "fill_read_only_custom_fields"] {
        match c.get(key) {
            None | Some(Value::Null | Value::Bool(_)) => {}
            Some(_) => {
                return Err(ApiError::bad(format!(
                    "Field \"{at}{key}\" must be a boolean."
                )))
            }
        }
    }
    for key in ["address", "invoice_address", "mail_drop_address"] {
        match c.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Object(a)) => {
                only_keys(a, ADDRESS_KEYS, &format!("{at}{key}."))?;
                for (k, v) in a {
                    if !(v.is_string() || v.is_number() || v.is_null()) {
                        return Err(ApiError::bad(format!(
                            "Field \"{at}{key}.{k}\" must be a string."
                        )));
                    }
                }
            }
            Some(_) => {
                return Err(ApiError::bad(format!(
                    "Field \"{at}{key}\" must be an object."
                )))
            }
        }
    }
    match c.get("custom_fields") {
        None | Some(Value::Null) => {}
        Some(Value::Object(f)) => {
            if let Some((k, _)) = f.iter().find(|(_, v)| v.is_object() || v.is_array()) {
                return Err(ApiError::bad(format!(
                    "Custom field \"{k}\" must hold a single value."
                )));
            }
        }
        Some(_) => {
            return Err(ApiError::bad(format!(
                "Field \"{at}custom_fields\" must be an object."
            )))
        }
    }
    Ok(())
}

/// Content check of one customer: the answer for this entry alone.
fn customer_content(c: &Map<String, Value>) -> Result<(), String> {
    let text = |k: &str| match c.get(k) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    if text("surname").is_none_or(|s| s.trim().is_empty()) {
        return Err("Surname is required.".into());
    }
    if let Some(phones) = c.get("phone_number").and_then(one_or_many) {
        if phones.iter().any(|p| !validate::is_phone(p)) {
            return Err("Phone number must be numeric.".into());
        }
    }
    if let Some(emails) = c.get("email").and_then(one_or_many) {
        if let Some(bad) = emails.iter().find(|e| !validate::is_email(e)) {
            return Err(format!("Invalid e-mail address \"{bad}\"."));
        }
    }
    if let Some(b) = text("birthdate") {
        if !validate::is_date(&b) {
            return Err("Birthdate must have the format YYYY-MM-DD.".into());
        }
    }
    if let Some(t) = text("type") {
        if !CUSTOMER_TYPES.contains(&t.as_str()) {
            return Err(format!("Customer type \"{t}\" does not exist."));
        }
    }
    if let Some(g) = text("group") {
        if !CUSTOMER_GROUPS.contains(&g.as_str()) {
            return Err(format!("Customer group \"{g}\" does not exist."));
        }
    }
    if let Some(a) = text("account_manager") {
        if !AGENTS.contains(&a.as_str()) {
            return Err(format!("Agent \"{a}\" does not exist."));
        }
    }
    Ok(())
}

/// `POST /api/batch/customers`.
pub async fn batch_customers(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let body = json_object(&headers, body).await?;
    let customers = batch_list(&body, "customers", shared.config.max_batch)?;
    for (i, c) in customers.iter().enumerate() {
        customer_schema(c, &format!("customers[{i}]."))?;
    }
    let mut state = shared.lock_state();
    let mut answer = Map::new();
    for (i, c) in customers.into_iter().enumerate() {
        let entry = match customer_content(c) {
            Ok(()) => {
                let id = state.add_customer(c.clone());
                json!({"http_status": 201, "customer_id": id.to_string()})
            }
            Err(message) => json!({"http_status": 400, "message": message}),
        };
        answer.insert(i.to_string(), entry);
    }
    Ok((StatusCode::OK, axum::Json(Value::Object(answer))).into_response())
}

/// `GET /api/customers`: search by `identifier`, `email`, `phone_number`,
/// `nip` and `custom_fields[Name][]` (or `custom_fields[Name]`), paged by
/// `limit` (default 100, at most 1000) and `offset`. Like a loose search a
/// real server might do, `identifier` matches by prefix, e-mail addresses
/// without case and phone numbers by their digits: the importer must keep
/// only exact matches. An empty value finds the customers that have none.
pub async fn search_customers(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult {
    let get = |name: &str| q.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (limit, offset) = paging(&shared, &get("limit"), &get("offset"))?;
    let mut filters: Vec<(String, String)> = Vec::new();
    for (k, v) in &q {
        match k.as_str() {
            "identifier" | "email" | "phone_number" | "nip" => filters.push((k.clone(), v.clone())),
            "limit"
            | "offset"
            | "include_custom_fields"
            | "include_address"
            | "include_invoice_address"
            | "include_mail_drop_address" => {}
            other => match other
                .strip_prefix("custom_fields[")
                .map(|r| r.trim_end_matches("[]"))
                .and_then(|r| r.strip_suffix(']'))
            {
                Some(name) => filters.push((format!("custom_fields.{name}"), v.clone())),
                None => return Err(ApiError::bad(format!("Unknown parameter \"{other}\"."))),
            },
        }
    }
    let digits = super::model::digits;
    let matches = |c: &Map<String, Value>, key: &str, want: &str| {
        let values: Vec<String> = match key.strip_prefix("custom_fields.") {
            Some(name) => c
                .get("custom_fields")
                .and_then(|f| f.get(name))
                .and_then(one_or_many)
                .unwrap_or_default(),
            None => c.get(key).and_then(one_or_many).unwrap_or_default(),
        };
        let values: Vec<&String> = values.iter().filter(|v| !v.is_empty()).collect();
        if want.is_empty() {
            return values.is_empty();
        }
        values.iter().any(|v| match key {
            "identifier" => v.starts_with(want),
            "email" => v.eq_ignore_ascii_case(want),
            "phone_number" | "nip" => digits(v) == digits(want),
            _ => *v == want,
        })
    };
    let state = shared.lock_state();
    // An indexed filter narrows the customers to read; every filter then
    // decides.
    let narrowed = filters
        .iter()
        .find_map(|(k, v)| state.search.candidates(k, v));
    let all: Box<dyn Iterator<Item = &super::model::Customer>> = match narrowed {
        Some(mut ids) => {
            ids.sort_unstable();
            ids.dedup();
            Box::new(ids.into_iter().filter_map(|id| state.customers.get(&id)))
        }
        None => Box::new(state.customers.values()),
    };
    let mut count = 0;
    let mut result = Vec::new();
    for c in all.filter(|c| filters.iter().all(|(k, v)| matches(&c.fields, k, v))) {
        if count >= offset && result.len() < limit {
            result.push(serde_json::to_value(c).unwrap_or(Value::Null));
        }
        count += 1;
    }
    Ok(axum::Json(json!({"count": count, "result": result})).into_response())
}

/// The documented fields of `GET /api/customers/:id`, `""` when empty.
const ONE_CUSTOMER_KEYS: &[&str] = &[
    "name",
    "surname",
    "phone_number",
    "email",
    "company_id",
    "identifier",
    "type",
    "group",
    "company_flag",
    "account_manager",
];

/// Whether a query flag (`include_custom_fields=true`) is on.
fn flag_on(q: &[(String, String)], name: &str) -> bool {
    q.iter()
        .any(|(k, v)| k == name && matches!(v.as_str(), "true" | "1"))
}

/// A customer id in a path; anything else names no customer (404).
fn customer_id_of(id: &str) -> Result<i64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::not_found(format!("Customer {id} not found.")))
}

/// `GET /api/customers/:id`: one customer as the vendor documents it:
/// `customer_id` a number, the documented fields (`""` when empty; the
/// first e-mail address and phone number, every phone number in
/// `phone_numbers`), any other field stored, `updated_at`; `custom_fields`
/// with `include_custom_fields=true`, the addresses with `include_address`,
/// `include_invoice_address`, `include_mail_drop_address`. 404 in the
/// vendor's error form when there is no such customer.
pub async fn get_customer(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> ApiResult {
    let customer_id = customer_id_of(&id)?;
    let state = shared.lock_state();
    let Some(c) = state.customers.get(&customer_id) else {
        return Err(ApiError::not_found(format!(
            "Customer {customer_id} not found."
        )));
    };
    let first = |k: &str| {
        c.fields
            .get(k)
            .and_then(one_or_many)
            .and_then(|v| v.into_iter().next())
            .map_or(Value::from(""), Value::from)
    };
    let mut out = Map::new();
    out.insert("customer_id".into(), Value::from(customer_id));
    for key in ONE_CUSTOMER_KEYS {
        let v = match *key {
            "phone_number" | "email" => first(key),
            _ => match c.fields.get(*key) {
                None | Some(Value::Null) => Value::from(""),
                Some(v) => v.clone(),
            },
        };
        out.insert((*key).into(), v);
    }
    let phones = c
        .fields
        .get("phone_number")
        .and_then(one_or_many)
        .unwrap_or_default();
    out.insert("phone_numbers".into(), Value::from(phones));
    let hidden = [
        "custom_fields",
        "address",
        "invoice_address",
        "mail_drop_address",
    ];
    for (k, v) in &c.fields {
        if !out.contains_key(k) && !hidden.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
        }
    }
    if flag_on(&q, "include_custom_fields") {
        let custom = c
            .fields
            .get("custom_fields")
            .cloned()
            .unwrap_or_else(|| Value::Object(Map::new()));
        out.insert("custom_fields".into(), custom);
    }
    for address in &hidden[1..] {
        if flag_on(&q, &format!("include_{address}")) {
            let a = c.fields.get(*address).cloned().unwrap_or(Value::Null);
            out.insert((*address).into(), a);
        }
    }
    out.insert("updated_at".into(), Value::from(c.updated_at.clone()));
    Ok(axum::Json(Value::Object(out)).into_response())
}

/// `DELETE /api/customers/:id`: the customer and all its dependencies
/// (field-group items, campaign records, contact history); empty answer,
/// 404 when there is no such customer.
pub async fn delete_customer(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult {
    let customer_id = customer_id_of(&id)?;
    if shared.lock_state().remove_customer(customer_id) {
        Ok(StatusCode::OK.into_response())
    } else {
        Err(ApiError::not_found(format!(
            "Customer {customer_id} not found."
        )))
    }
}

/// `PUT /api/batch/customers`: each entry `customer_id` plus any field of
/// `POST`'s (`surname` optional); the answer is keyed by position like
/// `POST`'s. Fields given replace the stored ones; an empty custom field
/// value clears the field; addresses merge part by part.
pub async fn update_customers(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let body = json_object(&headers, body).await?;
    let customers = batch_list(&body, "customers", shared.config.max_batch)?;
    let mut entries = Vec::with_capacity(customers.len());
    for (i, c) in customers.into_iter().enumerate() {
        let at = format!("customers[{i}].");
        let mut fields = c.clone();
        let customer_id = int_field(c, "customer_id", &at)?
            .ok_or_else(|| ApiError::bad(format!("Field \"{at}customer_id\" is required.")))?;
        fields.remove("customer_id");
        customer_schema(&fields, &at)?;
        entries.push((customer_id, fields));
    }
    let mut state = shared.lock_state();
    let mut answer = Map::new();
    let mut updated = 0;
    for (i, (customer_id, fields)) in entries.into_iter().enumerate() {
        let entry = match state.customers.get(&customer_id) {
            None => json!({"http_status": 404, "message": "Customer not found."}),
            Some(stored) => {
                let mut merged = stored.fields.clone();
                merge_customer(&mut merged, fields);
                match customer_content(&merged) {
                    Ok(()) => {
                        state.replace_customer(customer_id, merged);
                        updated += 1;
                        json!({"http_status": 200, "customer_id": customer_id.to_string()})
                    }
                    Err(message) => json!({"http_status": 400, "message": message}),
                }
            }
        };
        answer.insert(i.to_string(), entry);
    }
    drop(state);
    shared.lock_stats().customers_updated += updated;
    Ok(axum::Json(Value::Object(answer)).into_response())
}

/// Applies an update to a stored customer's fields.
fn merge_customer(stored: &mut Map<String, Value>, update: Map<String, Value>) {
    for (k, v) in update {
        match (k.as_str(), v) {
            ("custom_fields", Value::Object(new)) => {
                let Value::Object(old) = stored
                    .entry("custom_fields")
                    .or_insert_with(|| Value::Object(Map::new()))
                else {
                    continue;
                };
                for (name, value) in new {
                    if value.as_str() == Some("") || value.is_null() {
                        old.remove(&name);
                    } else {
                        old.insert(name, value);
                    }
                }
            }
            ("address" | "invoice_address" | "mail_drop_address", Value::Object(new)) => {
                let entry = stored.entry(k).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(old) = entry {
                    old.extend(new);
                }
            }
            (_, Value::Null) => {}
            (_, v) => {
                stored.insert(k, v);
            }
        }
    }
}

/// `POST /api/customer_field_group_items`: one item per call.
pub async fn field_group_item(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let body = json_object(&headers, body).await?;
    only_keys(&body, &["group_id", "customer_id", "values"], "")?;
    let group_id = int_field(&body, "group_id", "")?
        .ok_or_else(|| ApiError::bad("Field \"group_id\" is required."))?;
    let customer_id = int_field(&body, "customer_id", "")?
        .ok_or_else(|| ApiError::bad("Field \"customer_id\" is required."))?;
    let Some(Value::Array(values)) = body.get("values") else {
        return Err(ApiError::bad(
            "Field \"values\" is required and must be a list.",
        ));
    };
    if values.is_empty() {
        return Err(ApiError::bad("Field \"values\" must not be empty."));
    }
    let mut state = shared.lock_state();
    let Some(group) = state.field_groups.get(&group_id) else {
        return Err(ApiError::not_found(format!(
            "Field group {group_id} does not exist."
        )));
    };
    item_values(group, values)?;
    if !state.customers.contains_key(&customer_id) {
        return Err(ApiError::not_found(format!(
            "Customer {customer_id} not found."
        )));
    }
    let item_id = state.add_item(group_id, customer_id, values.clone());
    Ok((StatusCode::CREATED, axum::Json(json!({"item_id": item_id}))).into_response())
}

/// Checks an item's values against its group's fields: each a field of the
/// group, once, with a value of the field's kind.
fn item_values(group: &super::model::FieldGroup, values: &[Value]) -> Result<(), ApiError> {
    let group_id = group.group_id;
    let mut seen = Vec::new();
    for (i, v) in values.iter().enumerate() {
        let at = format!("values[{i}].");
        let Value::Object(v) = v else {
            return Err(ApiError::bad(format!(
                "Field \"values[{i}]\" must be an object."
            )));
        };
        only_keys(v, &["field_id", "value"], &at)?;
        let field_id = int_field(v, "field_id", &at)?
            .ok_or_else(|| ApiError::bad(format!("Field \"{at}field_id\" is required.")))?;
        let Some((_, name, kind)) = group.fields.iter().find(|(id, _, _)| *id == field_id) else {
            return Err(ApiError::bad(format!(
                "Field {field_id} does not belong to field group {group_id}."
            )));
        };
        if seen.contains(&field_id) {
            return Err(ApiError::bad(format!("Field {field_id} is given twice.")));
        }
        seen.push(field_id);
        let value = v.get("value").unwrap_or(&Value::Null);
        let ok = match (kind, value) {
            (_, Value::Object(_) | Value::Array(_)) => false,
            (FieldKind::Text, _) => true,
            (FieldKind::Number, Value::Number(_)) => true,
            (FieldKind::Number, Value::String(s)) => s.trim().parse::<f64>().is_ok(),
            (FieldKind::Date, Value::String(s)) => validate::is_date(s),
            _ => false,
        };
        if !ok {
            return Err(ApiError::bad(format!(
                "Invalid value {value} for field {field_id} (\"{name}\")."
            )));
        }
    }
    Ok(())
}

/// Query of `GET /api/customer_field_group_items`.
#[derive(Debug, serde::Deserialize)]
pub struct ItemQuery {
    customer_id: Option<String>,
    group_id: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

/// `GET /api/customer_field_group_items`: items filtered by customer and
/// group, paged by `limit` (default 100, at most 1000) and `offset`.
pub async fn list_items(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ItemQuery>,
) -> ApiResult {
    let (limit, offset) = paging(&shared, &q.limit, &q.offset)?;
    let number = |v: &Option<String>, name: &str| -> Result<Option<i64>, ApiError> {
        v.as_deref()
            .map(|s| {
                s.trim()
                    .parse::<i64>()
                    .map_err(|_| ApiError::bad(format!("Parameter \"{name}\" must be a number.")))
            })
            .transpose()
    };
    let customer_id = number(&q.customer_id, "customer_id")?;
    let group_id = number(&q.group_id, "group_id")?;
    let state = shared.lock_state();
    let all: Box<dyn Iterator<Item = &super::model::Item>> = match customer_id {
        Some(c) => Box::new(state.items_of(c)),
        None => Box::new(state.field_group_items.iter()),
    };
    let found: Vec<&super::model::Item> = all
        .filter(|i| customer_id.is_none_or(|c| i.customer_id == c))
        .filter(|i| group_id.is_none_or(|g| i.group_id == g))
        .collect();
    page_of(found.into_iter(), (limit, offset), |i| {
        serde_json::to_value(i).unwrap_or(Value::Null)
    })
}

/// `PUT /api/customer_field_group_items/:id`: replaces the values given;
/// empty answer.
pub async fn update_item(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let item_id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("Item {id} not found.")))?;
    let body = json_object(&headers, body).await?;
    only_keys(&body, &["values"], "")?;
    let Some(Value::Array(values)) = body.get("values") else {
        return Err(ApiError::bad(
            "Field \"values\" is required and must be a list.",
        ));
    };
    let mut guard = shared.lock_state();
    let state = &mut *guard;
    let Some(item) = state
        .field_group_items
        .iter_mut()
        .find(|i| i.item_id == item_id)
    else {
        return Err(ApiError::not_found(format!("Item {item_id} not found.")));
    };
    let Some(group) = state.field_groups.get(&item.group_id) else {
        return Err(ApiError::not_found("Field group not found."));
    };
    item_values(group, values)?;
    for v in values {
        let field_id = int_like(&v["field_id"]);
        item.values
            .retain(|old| int_like(&old["field_id"]) != field_id);
        item.values.push(v.clone());
    }
    drop(guard);
    shared.lock_stats().items_updated += 1;
    Ok(StatusCode::OK.into_response())
}

/// One page of a list as `{"count", "result"}`: `count` all of them,
/// `result` those of the page `(limit, offset)`.
fn page_of<T>(
    items: impl ExactSizeIterator<Item = T>,
    (limit, offset): (usize, usize),
    one: impl Fn(T) -> Value,
) -> ApiResult {
    let count = items.len();
    let result: Vec<Value> = items.skip(offset).take(limit).map(one).collect();
    Ok(axum::Json(json!({"count": count, "result": result})).into_response())
}

/// `limit` (1 to 1000, default 100) and `offset` of a list call, as the
/// sandbox answers them: at most `--page-cap` entries a page whatever
/// `limit` asks, and from the start whatever `offset` asks with
/// `--ignore-offset` (as some real servers do).
fn paging(
    shared: &Shared,
    limit: &Option<String>,
    offset: &Option<String>,
) -> Result<(usize, usize), ApiError> {
    let (limit, offset) = asked_paging(limit, offset)?;
    let limit = shared
        .config
        .page_cap
        .map_or(limit, |cap| limit.min(cap.max(1)));
    let offset = if shared.config.ignore_offset {
        0
    } else {
        offset
    };
    Ok((limit, offset))
}

/// `limit` and `offset` as asked, checked.
fn asked_paging(
    limit: &Option<String>,
    offset: &Option<String>,
) -> Result<(usize, usize), ApiError> {
    let parse = |v: &Option<String>, name: &str, default: usize| match v {
        None => Ok(default),
        Some(s) => s
            .parse::<usize>()
            .map_err(|_| ApiError::bad(format!("Parameter \"{name}\" must be a number."))),
    };
    let limit = parse(limit, "limit", 100)?;
    let offset = parse(offset, "offset", 0)?;
    if limit == 0 || limit > 1000 {
        return Err(ApiError::bad(
            "Parameter \"limit\" must be between 1 and 1000.",
        ));
    }
    Ok((limit, offset))
}

fn campaign_id_checked(id: &str) -> Result<(), ApiError> {
    if validate::is_campaign_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "Campaign id \"{id}\" must have five characters."
        )))
    }
}

/// What a campaign allows in its records.
struct Rules<'a> {
    id: &'a str,
    statuses: &'a std::collections::BTreeMap<i64, super::model::StatusDef>,
    agents: &'a [String],
}

/// Checks status, agent and next-call date against the campaign's statuses,
/// as for a record being added or edited. `Err` is the message for the entry.
fn record_rules(
    campaign: &Rules<'_>,
    status_id: Option<i64>,
    dictionary_status_id: Option<i64>,
    agent_login: Option<&str>,
    next_call_date: Option<&str>,
) -> Result<(), String> {
    if let Some(d) = next_call_date {
        if !validate::is_date_time(d) {
            return Err("Next call date must have the format YYYY-MM-DD hh:mm.".into());
        }
    }
    if let Some(a) = agent_login {
        if !AGENTS.contains(&a) {
            return Err(format!("Agent \"{a}\" does not exist."));
        }
        if !campaign.agents.iter().any(|c| c == a) {
            return Err(format!(
                "Agent \"{a}\" is not an agent of campaign {}.",
                campaign.id
            ));
        }
    }
    if let Some(d) = dictionary_status_id {
        if !campaign
            .statuses
            .values()
            .any(|s| s.dictionary_status_id == Some(d))
        {
            return Err(format!("Dictionary status {d} does not exist."));
        }
    }
    if let Some(s) = status_id {
        match campaign.statuses.get(&s).map(|s| s.kind()) {
            None => return Err(format!("Status {s} does not exist in this campaign.")),
            Some(SystemStatus::MyRecord) if agent_login.is_none() || next_call_date.is_none() => {
                return Err("Status MY_RECORD requires agent_login and next_call_date.".into())
            }
            Some(SystemStatus::CallNoSoonerThan) if next_call_date.is_none() => {
                return Err("Status CALL_NO_SOONER_THAN requires next_call_date.".into())
            }
            Some(_) => {}
        }
    }
    Ok(())
}

const RECORD_KEYS: &[&str] = &[
    "customer_id",
    "status_id",
    "dictionary_status_id",
    "agent_login",
    "next_call_date",
    "order",
];

/// `POST /api/batch/crm_outbounds/:id/records`: answers keyed by customer id.
/// Two records for one customer in one call collide in the answer exactly as
/// a PHP associative array would: the later entry overwrites the earlier one.
pub async fn campaign_records(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    campaign_id_checked(&id)?;
    let body = json_object(&headers, body).await?;
    let records = batch_list(&body, "records", shared.config.max_batch)?;
    struct Parsed<'a> {
        customer_id: i64,
        status_id: Option<i64>,
        dictionary_status_id: Option<i64>,
        agent_login: Option<&'a str>,
        next_call_date: Option<&'a str>,
        order: Option<i64>,
    }
    let mut parsed = Vec::with_capacity(records.len());
    for (i, r) in records.into_iter().enumerate() {
        let at = format!("records[{i}].");
        only_keys(r, RECORD_KEYS, &at)?;
        parsed.push(Parsed {
            customer_id: int_field(r, "customer_id", &at)?
                .ok_or_else(|| ApiError::bad(format!("Field \"{at}customer_id\" is required.")))?,
            status_id: int_field(r, "status_id", &at)?,
            dictionary_status_id: int_field(r, "dictionary_status_id", &at)?,
            agent_login: str_field(r, "agent_login", &at)?,
            next_call_date: str_field(r, "next_call_date", &at)?,
            order: int_field(r, "order", &at)?,
        });
    }
    let mut state = shared.lock_state();
    let state = &mut *state;
    let Some(campaign) = state.campaigns.get_mut(&id) else {
        return Err(ApiError::not_found(format!("Campaign {id} not found.")));
    };
    if !campaign.crm {
        return Err(ApiError::bad(format!(
            "Campaign {id} is not a CRM campaign."
        )));
    }
    let mut answer = Map::new();
    for p in parsed {
        let entry = if !state.customers.contains_key(&p.customer_id) {
            json!({"http_status": 400, "status": "FAILED", "message": "Customer not found."})
        } else if let Some(existing) = campaign.by_customer.get(&p.customer_id) {
            json!({"http_status": 400, "record_id": existing.record_id, "status": "ALREADY_EXISTS"})
        } else {
            let rules = Rules {
                id: campaign.id,
                statuses: &campaign.statuses,
                agents: &campaign.agents,
            };
            match record_rules(
                &rules,
                p.status_id,
                p.dictionary_status_id,
                p.agent_login,
                p.next_call_date,
            ) {
                Err(message) => json!({"http_status": 400, "status": "FAILED", "message": message}),
                Ok(()) => {
                    let record_id = state.next_record_id;
                    state.next_record_id += 1;
                    campaign.by_customer.insert(
                        p.customer_id,
                        Record {
                            record_id,
                            customer_id: Some(p.customer_id),
                            identifier: None,
                            status_id: p.status_id,
                            dictionary_status_id: p.dictionary_status_id,
                            agent_login: p.agent_login.map(str::to_string),
                            next_call_date: p.next_call_date.map(str::to_string),
                            order: p.order,
                            record_fields: Map::new(),
                        },
                    );
                    json!({"http_status": 201, "record_id": record_id, "status": "ADDED"})
                }
            }
        };
        answer.insert(p.customer_id.to_string(), entry);
    }
    Ok(axum::Json(Value::Object(answer)).into_response())
}

/// `PUT /api/outbounds/:id/records_by_identifier/:identifier`: edits a phone
/// campaign's record; empty body on success.
pub async fn update_record(
    State(shared): State<Arc<Shared>>,
    Path((id, identifier)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    campaign_id_checked(&id)?;
    let body = json_object(&headers, body).await?;
    only_keys(
        &body,
        &[
            "status_id",
            "dictionary_status_id",
            "agent_login",
            "record_fields",
            "next_call_date",
        ],
        "",
    )?;
    let status_id = int_field(&body, "status_id", "")?;
    let dictionary_status_id = int_field(&body, "dictionary_status_id", "")?;
    let agent_login = str_field(&body, "agent_login", "")?;
    let next_call_date = str_field(&body, "next_call_date", "")?;
    let record_fields = match body.get("record_fields") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(f)) => f.clone(),
        Some(_) => return Err(ApiError::bad("Field \"record_fields\" must be an object.")),
    };
    let mut state = shared.lock_state();
    let Some(campaign) = state.campaigns.get_mut(&id) else {
        return Err(ApiError::not_found(format!("Campaign {id} not found.")));
    };
    if let Some(k) = record_fields
        .keys()
        .find(|k| !campaign.structure.contains(&k.as_str()))
    {
        return Err(ApiError::bad(format!(
            "Campaign {id} has no field \"{k}\"."
        )));
    }
    let statuses = campaign.statuses.clone();
    let agents = campaign.agents.clone();
    let campaign_id = campaign.id;
    let Some(record) = campaign.record_by_identifier(&identifier) else {
        return Err(ApiError::not_found(format!(
            "Record \"{identifier}\" not found."
        )));
    };
    // The rules apply to the record as it will be after the edit.
    let agent = agent_login
        .map(str::to_string)
        .or_else(|| record.agent_login.clone());
    let date = next_call_date
        .map(str::to_string)
        .or_else(|| record.next_call_date.clone());
    let rules = Rules {
        id: campaign_id,
        statuses: &statuses,
        agents: &agents,
    };
    record_rules(
        &rules,
        status_id,
        dictionary_status_id,
        agent.as_deref(),
        date.as_deref(),
    )
    .map_err(ApiError::bad)?;
    if status_id.is_some() {
        record.status_id = status_id;
    }
    if dictionary_status_id.is_some() {
        record.dictionary_status_id = dictionary_status_id;
    }
    record.agent_login = agent;
    record.next_call_date = date;
    record.record_fields.extend(record_fields);
    Ok(StatusCode::OK.into_response())
}

/// `POST /api/customers/:id/feed_records`: a ZOWIE entry whose `payload` is a
/// JSON text holding a list of messages; empty body on success.
pub async fn feed_record(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let customer_id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("Customer {id} not found.")))?;
    let body = json_object(&headers, body).await?;
    only_keys(&body, &["type", "payload"], "")?;
    match str_field(&body, "type", "")? {
        Some("ZOWIE") => {}
        Some(other) => {
            return Err(ApiError::bad(format!(
                "Unknown feed record type \"{other}\"."
            )))
        }
        None => return Err(ApiError::bad("Field \"type\" is required.")),
    }
    let payload = str_field(&body, "payload", "")?
        .ok_or_else(|| ApiError::bad("Field \"payload\" is required."))?;
    let messages: Vec<Value> = serde_json::from_str(payload).map_err(|e| {
        ApiError::bad(format!(
            "Field \"payload\" must be a JSON list of messages: {e}."
        ))
    })?;
    if messages.is_empty() {
        return Err(ApiError::bad(
            "Field \"payload\" must hold at least one message.",
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(ApiError::bad(format!("Message {i} must be an object.")));
        };
        for key in ["id", "type", "author", "time"] {
            if !m.get(key).is_some_and(Value::is_string) {
                return Err(ApiError::bad(format!(
                    "Message {i}: \"{key}\" is required."
                )));
            }
        }
        let time = m.get("time").and_then(Value::as_str).unwrap_or_default();
        if !validate::is_feed_time(time) {
            return Err(ApiError::bad(format!(
                "Message {i}: \"time\" must have the format YYYY-MM-DDThh:mm:ss."
            )));
        }
        if m.get("type").and_then(Value::as_str) == Some("text")
            && !m
                .get("payload")
                .and_then(|p| p.get("message"))
                .is_some_and(Value::is_string)
        {
            return Err(ApiError::bad(format!(
                "Message {i}: a text needs payload.message."
            )));
        }
    }
    let mut state = shared.lock_state();
    if !state.customers.contains_key(&customer_id) {
        return Err(ApiError::not_found(format!(
            "Customer {customer_id} not found."
        )));
    }
    state.add_feed(customer_id, "ZOWIE".into(), payload.to_string());
    Ok(StatusCode::CREATED.into_response())
}

/// `GET /api/customer_field_groups`: the field groups and their fields.
pub async fn list_field_groups(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ItemQuery>,
) -> ApiResult {
    let page = paging(&shared, &q.limit, &q.offset)?;
    let state = shared.lock_state();
    page_of(state.field_groups.values(), page, |g| {
        json!({
            "group_id": g.group_id,
            "name": g.name,
            "fields": g.fields.iter().map(|(id, name, _)| json!({"field_id": id, "name": name})).collect::<Vec<_>>(),
        })
    })
}

/// `GET /api/outbounds`: the campaigns.
pub async fn list_outbounds(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ItemQuery>,
) -> ApiResult {
    let page = paging(&shared, &q.limit, &q.offset)?;
    let state = shared.lock_state();
    page_of(
        state.campaigns.values(),
        page,
        |c| json!({"id": c.id, "name": c.name, "type": if c.crm { "crm" } else { "phone" }}),
    )
}

/// `GET /api/outbounds/:id/statuses`: a bare list, `status_id` as a string,
/// as the vendor shows it.
pub async fn list_statuses(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult {
    let state = shared.lock_state();
    let Some(c) = state.campaigns.get(&id) else {
        return Err(ApiError::not_found(format!("Campaign {id} not found.")));
    };
    let list: Vec<Value> = c
        .statuses
        .iter()
        .map(|(id, s)| {
            json!({"system_status": s.system_status, "status_id": id.to_string(),
                   "dictionary_status_id": s.dictionary_status_id, "name": s.name})
        })
        .collect();
    Ok(axum::Json(Value::Array(list)).into_response())
}

/// `GET /api/outbounds/:id/agents`: the campaign's agents, a bare list.
pub async fn list_campaign_agents(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> ApiResult {
    let state = shared.lock_state();
    let Some(c) = state.campaigns.get(&id) else {
        return Err(ApiError::not_found(format!("Campaign {id} not found.")));
    };
    let list: Vec<Value> = c
        .agents
        .iter()
        .map(|login| {
            let n = AGENTS.iter().position(|a| a == login).unwrap_or(0) + 1;
            json!({"login": login, "number": format!("31{n:02}"), "active": true,
                   "active_in_outbound": true, "agent_id": n})
        })
        .collect();
    Ok(axum::Json(Value::Array(list)).into_response())
}

/// `GET /api/agents`: every agent of the system.
pub async fn list_agents(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<ItemQuery>,
) -> ApiResult {
    let page = paging(&shared, &q.limit, &q.offset)?;
    page_of(
        AGENTS.iter().enumerate(),
        page,
        |(i, login)| json!({"agent_id": i + 1, "login": login, "active": true}),
    )
}

/// Any other path under `/api/`.
pub async fn not_found() -> Response {
    error_response(StatusCode::NOT_FOUND, "No such resource.")
}
