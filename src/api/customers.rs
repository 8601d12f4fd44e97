//! Customers: `POST batch/customers` (create, not idempotent), `PUT
//! batch/customers` (update, idempotent), `GET customers` (search and
//! page through them), `GET customers/:id` (one) and `DELETE
//! customers/:id` (one, with its items, records and history: `undo`).

use reqwest::Method;
use serde_json::{json, Map, Value};

pub use super::keys::SearchKey;
use super::payload::{Customer, CustomerUpdate};
use super::{
    json_of, lenient_int, lenient_status, lenient_text, query, unreadable, Answer, CallError,
    Endpoint, Page, Paged, RowFate,
};

/// What creating a customer gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Created {
    pub customer_id: i64,
    pub http_status: Option<u16>,
}

/// `POST batch/customers`: `{"customers": [...]}`; the answer is keyed by
/// each customer's position in the list (`"0"`, `"1"`, ...).
#[derive(Debug)]
pub struct CreateCustomers<'a> {
    pub customers: Vec<&'a Customer>,
}

impl Endpoint for CreateCustomers<'_> {
    type Answer = Vec<RowFate<Created>>;
    const METHOD: Method = Method::POST;
    const IDEMPOTENT: bool = false;

    fn path(&self) -> String {
        "batch/customers".into()
    }

    fn body(&self) -> Option<String> {
        Some(json!({ "customers": self.customers }).to_string())
    }

    fn parse(&self, answer: &Answer) -> Result<Self::Answer, CallError> {
        let v = json_of(answer).map_err(|m| unreadable(false, m))?;
        Ok((0..self.customers.len())
            .map(|i| created(by_position(&v, i)))
            .collect())
    }
}

/// The entry for position `i` of a keyed answer: `{"0": ...}`, or `[...]`.
fn by_position(v: &Value, i: usize) -> Option<&Value> {
    v.get(i.to_string()).or_else(|| v.get(i))
}

/// One customer's entry: `{"http_status": 201, "customer_id": "13"}` or
/// `{"http_status": 400, "message": "..."}`.
fn created(entry: Option<&Value>) -> RowFate<Created> {
    let unknown = |why: String| RowFate::Unknown {
        message: format!("{why}; it may have been created: `retry` looks it up"),
    };
    let Some(Value::Object(e)) = entry else {
        return unknown("the answer has no entry for this customer".into());
    };
    let http_status = lenient_status(e.get("http_status"));
    let customer_id = lenient_int(e.get("customer_id").or_else(|| e.get("id"))).filter(|i| *i > 0);
    let message = lenient_text(e.get("message"));
    match (http_status, customer_id) {
        (Some(s @ 400..=499), _) => RowFate::Refused {
            http_status: Some(s),
            message: message.unwrap_or_else(|| "refused without a message".into()),
        },
        (Some(200..=299) | None, Some(customer_id)) => RowFate::Done(Created {
            customer_id,
            http_status,
        }),
        (Some(s @ 200..=299), None) => unknown(format!(
            "HTTP {s} for this customer, but the answer has no customer_id"
        )),
        (Some(s), _) => unknown(format!(
            "HTTP {s} for this customer{}",
            message.map(|m| format!(": {m}")).unwrap_or_default()
        )),
        (None, None) => unknown(format!(
            "the answer's entry has neither a customer_id nor a status{}",
            message.map(|m| format!(" ({m})")).unwrap_or_default()
        )),
    }
}

/// `PUT batch/customers`: `{"customers": [{"customer_id": 13, ...}]}`.
/// The vendor shows no answer: one keyed by position like `POST`'s is read
/// per row; an empty answer means every update was applied.
#[derive(Debug)]
pub struct UpdateCustomers<'a> {
    pub customers: Vec<&'a CustomerUpdate>,
}

impl Endpoint for UpdateCustomers<'_> {
    type Answer = Vec<RowFate<()>>;
    const METHOD: Method = Method::PUT;
    const IDEMPOTENT: bool = true;

    fn path(&self) -> String {
        "batch/customers".into()
    }

    fn body(&self) -> Option<String> {
        Some(json!({ "customers": self.customers }).to_string())
    }

    fn parse(&self, answer: &Answer) -> Result<Self::Answer, CallError> {
        let v = json_of(answer).map_err(|m| unreadable(true, m))?;
        let keyed = match &v {
            Value::Object(o) => !o.is_empty(),
            Value::Array(a) => !a.is_empty(),
            _ => false,
        };
        Ok((0..self.customers.len())
            .map(|i| {
                if keyed {
                    updated(by_position(&v, i))
                } else {
                    RowFate::Done(())
                }
            })
            .collect())
    }
}

fn updated(entry: Option<&Value>) -> RowFate<()> {
    let Some(entry) = entry.filter(|e| !e.is_null()) else {
        return RowFate::Retryable {
            http_status: None,
            message: "the answer has no entry for this customer (an update: sent again)".into(),
        };
    };
    let http_status = lenient_status(entry.get("http_status"));
    let message = lenient_text(entry.get("message"));
    match http_status {
        Some(s @ 400..=499) => RowFate::Refused {
            http_status: Some(s),
            message: message.unwrap_or_else(|| "refused without a message".into()),
        },
        Some(s @ 500..) => RowFate::Retryable {
            http_status: Some(s),
            message: message.unwrap_or_else(|| format!("HTTP {s} for this customer")),
        },
        _ => RowFate::Done(()),
    }
}

/// `DELETE customers/:id`: the customer and all that hangs on it (its
/// field-group items, campaign records and contact history). Idempotent:
/// a second one finds no customer (404), which the caller reads as done.
#[derive(Debug, Clone)]
pub struct DeleteCustomer {
    pub customer_id: i64,
}

impl Endpoint for DeleteCustomer {
    type Answer = ();
    const METHOD: Method = Method::DELETE;
    const IDEMPOTENT: bool = true;

    fn path(&self) -> String {
        format!("customers/{}", self.customer_id)
    }

    fn parse(&self, _answer: &Answer) -> Result<(), CallError> {
        // The vendor shows no answer: a 2xx is the deletion.
        Ok(())
    }
}

/// A customer as `GET customers` lists it: its id and its fields as given.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundCustomer {
    pub customer_id: i64,
    pub fields: Map<String, Value>,
}

impl FoundCustomer {
    /// Whether the answer carries the field of `key` at all.
    pub fn has(&self, key: &SearchKey) -> bool {
        match key {
            SearchKey::Identifier => self.fields.contains_key("identifier"),
            SearchKey::Email => self.fields.contains_key("email"),
            SearchKey::PhoneNumber => {
                self.fields.contains_key("phone_number")
                    || self.fields.contains_key("phone_numbers")
            }
            SearchKey::Nip => self.fields.contains_key("nip"),
            SearchKey::CustomField(name) => self
                .fields
                .get("custom_fields")
                .and_then(|c| c.get(name))
                .is_some(),
        }
    }

    /// The customer's values of `key`: one identifier, every e-mail address,
    /// every phone number (`phone_number` and `phone_numbers`), one NIP, or a
    /// custom field's value.
    pub fn values(&self, key: &SearchKey) -> Vec<String> {
        let mut out = Vec::new();
        let mut add = |v: Option<&Value>| match v {
            Some(Value::Array(items)) => {
                out.extend(items.iter().filter_map(|i| lenient_text(Some(i))));
            }
            other => out.extend(lenient_text(other)),
        };
        match key {
            SearchKey::Identifier => add(self.fields.get("identifier")),
            SearchKey::Email => add(self.fields.get("email")),
            SearchKey::PhoneNumber => {
                add(self.fields.get("phone_number"));
                add(self.fields.get("phone_numbers"));
            }
            SearchKey::Nip => add(self.fields.get("nip")),
            SearchKey::CustomField(name) => {
                add(self.fields.get("custom_fields").and_then(|c| c.get(name)))
            }
        }
        out.retain(|v| !v.trim().is_empty());
        out
    }
}

/// One page of customers.
pub type CustomerPage = Paged<FoundCustomer>;

/// `GET customers?[key=value&]limit=&offset=`: `{"count", "result"}` or a
/// bare array; `customer_id` as a number or a string.
#[derive(Debug, Clone)]
pub struct FindCustomers {
    pub filter: Option<(SearchKey, String)>,
    /// 1 to 1000.
    pub limit: u32,
    pub offset: u64,
    /// Ask for the custom fields too (`include_custom_fields=true`).
    pub custom_fields: bool,
    /// Ask for the three addresses too (`include_address=true`, ...).
    pub addresses: bool,
}

/// The `include_*` flags of `GET customers` and `GET customers/:id` a
/// reader of `written` fields needs.
fn include(custom_fields: bool, addresses: bool) -> Vec<(&'static str, String)> {
    let mut pairs = Vec::new();
    if custom_fields {
        pairs.push(("include_custom_fields", "true".to_string()));
    }
    if addresses {
        for a in [
            "include_address",
            "include_invoice_address",
            "include_mail_drop_address",
        ] {
            pairs.push((a, "true".to_string()));
        }
    }
    pairs
}

impl FindCustomers {
    /// The first page of customers whose `key` is `value`.
    pub fn by(key: SearchKey, value: impl Into<String>) -> FindCustomers {
        let custom_fields = matches!(key, SearchKey::CustomField(_));
        FindCustomers {
            filter: Some((key, value.into())),
            limit: 100,
            offset: 0,
            custom_fields,
            addresses: false,
        }
    }

    /// Asks for what a mapping writes, too (custom fields, addresses), so
    /// that the customers listed carry their current values.
    pub fn reading(mut self, written: &super::values::Written) -> FindCustomers {
        self.custom_fields |= written.custom_fields();
        self.addresses |= !written.addresses.is_empty();
        self
    }
}

impl Endpoint for FindCustomers {
    type Answer = CustomerPage;
    const METHOD: Method = Method::GET;
    const IDEMPOTENT: bool = true;

    fn path(&self) -> String {
        let mut pairs = Vec::new();
        let mut filter = String::new();
        if let Some((key, value)) = &self.filter {
            // The parameter name is encoded already (brackets stay literal).
            filter = format!("{}={}&", key.parameter(), super::encode(value));
        }
        pairs.extend(include(self.custom_fields, self.addresses));
        pairs.push(("limit", self.limit.to_string()));
        pairs.push(("offset", self.offset.to_string()));
        format!("customers?{filter}{}", query(&pairs))
    }

    fn parse(&self, answer: &Answer) -> Result<CustomerPage, CallError> {
        let page = json_of(answer)
            .and_then(Page::read)
            .map_err(|m| unreadable(true, m))?;
        Ok(page.typed(&["customer_id", "id"], |item| match item {
            Value::Object(fields) => {
                let customer_id =
                    lenient_int(fields.get("customer_id").or_else(|| fields.get("id")))?;
                Some(FoundCustomer {
                    customer_id,
                    fields,
                })
            }
            _ => None,
        }))
    }
}

/// `GET customers/:id`: one customer, or a 404 when there is none.
#[derive(Debug, Clone)]
pub struct GetCustomer {
    pub customer_id: i64,
    /// `include_custom_fields=true`.
    pub custom_fields: bool,
    /// `include_address=true` and the other two addresses.
    pub addresses: bool,
}

impl Endpoint for GetCustomer {
    type Answer = FoundCustomer;
    const METHOD: Method = Method::GET;
    const IDEMPOTENT: bool = true;

    fn path(&self) -> String {
        let pairs = include(self.custom_fields, self.addresses);
        if pairs.is_empty() {
            format!("customers/{}", self.customer_id)
        } else {
            format!("customers/{}?{}", self.customer_id, query(&pairs))
        }
    }

    fn parse(&self, answer: &Answer) -> Result<FoundCustomer, CallError> {
        let v = json_of(answer).map_err(|m| unreadable(true, m))?;
        // The customer itself, or (liberally) wrapped in `result`.
        let fields = match v {
            Value::Object(mut o) => match o.remove("result") {
                Some(Value::Object(inner)) => inner,
                Some(other) => {
                    o.insert("result".into(), other);
                    o
                }
                None => o,
            },
            _ => return Err(unreadable(true, "not a customer".into())),
        };
        let customer_id = lenient_int(fields.get("customer_id").or_else(|| fields.get("id")))
            .unwrap_or(self.customer_id);
        Ok(FoundCustomer {
            customer_id,
            fields,
        })
    }
}

impl super::ApiClient {
    /// One customer by its id, with the fields of `written` (custom
    /// fields, addresses): `None` when Thulium answers 404 (there is no
    /// such customer: deleted, or a system restored from a backup).
    pub async fn get_customer(
        &self,
        customer_id: i64,
        written: &super::values::Written,
    ) -> super::Call<Option<FoundCustomer>> {
        let call = self
            .send(&GetCustomer {
                customer_id,
                custom_fields: written.custom_fields(),
                addresses: !written.addresses.is_empty(),
            })
            .await;
        super::Call {
            attempts: call.attempts,
            result: match call.result {
                Ok(c) => Ok(Some(c)),
                Err(CallError::Refused { status: 404, .. }) => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// Deletes one customer and its dependencies: `true` when this call
    /// deleted it, `false` when Thulium answers 404 (already gone).
    pub async fn delete_customer(&self, customer_id: i64) -> super::Call<bool> {
        let call = self.send(&DeleteCustomer { customer_id }).await;
        super::Call {
            attempts: call.attempts,
            result: match call.result {
                Ok(()) => Ok(true),
                Err(CallError::Refused { status: 404, .. }) => Ok(false),
                Err(e) => Err(e),
            },
        }
    }

    /// The ids of the customers whose `key` is `value`, compared normalised
    /// (the search may match more loosely, e.g. by prefix: only equal
    /// values count), reading every page of the search: one id, none, or
    /// several.
    pub async fn find_customer_ids(&self, key: &SearchKey, value: &str) -> super::Call<Vec<i64>> {
        let call = self
            .find_customers(key, value, &super::values::Written::default())
            .await;
        super::Call {
            attempts: call.attempts,
            result: call
                .result
                .map(|found| found.into_iter().map(|c| c.customer_id).collect()),
        }
    }

    /// The customers whose `key` is `value` (as [`Self::find_customer_ids`]
    /// finds them), listed with the fields of `written`, one each.
    pub async fn find_customers(
        &self,
        key: &SearchKey,
        value: &str,
        written: &super::values::Written,
    ) -> super::Call<Vec<FoundCustomer>> {
        /// Customers a search may list at most: a key that loose is not a
        /// key.
        const MAX_FOUND: u64 = 10_000;
        let wanted = key.normalise(value);
        let find = FindCustomers::by(key.clone(), value).reading(written);
        let mut found: Vec<FoundCustomer> = Vec::new();
        let mut listed = 0u64;
        let call = self
            .each_page(
                |limit, offset| FindCustomers {
                    limit,
                    offset,
                    ..find.clone()
                },
                |page| {
                    listed += page.held;
                    if listed > MAX_FOUND {
                        return Err(CallError::GaveUp {
                            status: None,
                            message: format!(
                                "more than {MAX_FOUND} customers match {} {}: too loose to tell",
                                key.name(),
                                crate::source::shorten(value)
                            ),
                        });
                    }
                    found.extend(
                        page.items
                            .iter()
                            // A customer listed without the field at all is
                            // taken on the search's word.
                            .filter(|c| {
                                !c.has(key)
                                    || c.values(key).iter().any(|v| key.normalise(v) == wanted)
                            })
                            .cloned(),
                    );
                    Ok(())
                },
            )
            .await;
        found.sort_by_key(|c| c.customer_id);
        found.dedup_by_key(|c| c.customer_id);
        super::Call {
            attempts: call.attempts,
            result: call.result.map(|_| found),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::api::tests::answer;

    fn create(n: usize, body: &str) -> Vec<RowFate<Created>> {
        let c = Customer::default();
        let e = CreateCustomers {
            customers: vec![&c; n],
        };
        e.parse(&answer(body)).unwrap()
    }

    #[test]
    fn the_vendors_example_and_liberal_variants() {
        let fates = create(
            2,
            r#"{"0":{"http_status":201,"customer_id":"13"},"1":{"http_status":400,"message":"Phone number must be numeric."}}"#,
        );
        assert_eq!(
            fates[0],
            RowFate::Done(Created {
                customer_id: 13,
                http_status: Some(201)
            })
        );
        assert_eq!(
            fates[1],
            RowFate::Refused {
                http_status: Some(400),
                message: "Phone number must be numeric.".into()
            }
        );
        // Numbers as strings, status missing, extra keys, an array answer.
        let fates = create(
            2,
            r#"[{"customer_id":7,"x":1},{"http_status":"200","customer_id":"8"}]"#,
        );
        assert!(matches!(
            fates[0],
            RowFate::Done(Created {
                customer_id: 7,
                http_status: None
            })
        ));
        assert!(matches!(
            fates[1],
            RowFate::Done(Created {
                customer_id: 8,
                http_status: Some(200)
            })
        ));
    }

    #[test]
    fn a_missing_or_empty_entry_is_unknown_never_failed() {
        for body in [
            "",
            "{}",
            "null",
            r#"{"0":null}"#,
            r#"{"0":{}}"#,
            r#"{"0":{"http_status":201}}"#,
            r#"{"0":{"http_status":500}}"#,
        ] {
            let fates = create(1, body);
            assert!(
                matches!(fates[0], RowFate::Unknown { .. }),
                "{body}: {:?}",
                fates[0]
            );
        }
        let c = Customer::default();
        let e = CreateCustomers {
            customers: vec![&c],
        };
        assert!(matches!(
            e.parse(&answer("<html>")),
            Err(CallError::Unknown { .. })
        ));
    }

    #[test]
    fn updates_read_keyed_or_empty_answers() {
        let u = CustomerUpdate {
            customer_id: 1,
            fields: Customer::default(),
        };
        let e = UpdateCustomers {
            customers: vec![&u, &u],
        };
        for body in ["", "{}", "null", "[]"] {
            assert_eq!(
                e.parse(&answer(body)).unwrap(),
                vec![RowFate::Done(()); 2],
                "{body}"
            );
        }
        let fates = e
            .parse(&answer(
                r#"{"0":{"http_status":200},"1":{"http_status":400,"message":"No."}}"#,
            ))
            .unwrap();
        assert_eq!(fates[0], RowFate::Done(()));
        assert!(matches!(fates[1], RowFate::Refused { .. }));
        let fates = e.parse(&answer(r#"{"0":{"http_status":200}}"#)).unwrap();
        assert!(matches!(fates[1], RowFate::Retryable { .. }));
    }

    #[test]
    fn search_paths_and_pages() {
        let f = FindCustomers::by(SearchKey::Identifier, "CRM 1&2");
        assert_eq!(
            f.path(),
            "customers?identifier=CRM%201%262&limit=100&offset=0"
        );
        let f = FindCustomers::by(SearchKey::CustomField("Nr karty".into()), "7");
        assert_eq!(
            f.path(),
            "customers?custom_fields[Nr%20karty][]=7&include_custom_fields=true&limit=100&offset=0"
        );
        let page = f
            .parse(&answer(r#"{"count":"2","result":[{"customer_id":"5","phone_number":"1","phone_numbers":["1","22"]},{"id":6}]}"#))
            .unwrap();
        assert_eq!(page.count, Some(2));
        assert_eq!(page.items[0].customer_id, 5);
        assert_eq!(
            page.items[0].values(&SearchKey::PhoneNumber),
            ["1", "1", "22"]
        );
        assert_eq!(page.items[1].customer_id, 6);
        // A malformed entry is skipped, but the page held it.
        let page = f
            .parse(&answer(
                r#"{"count":3,"result":[{"customer_id":5},{"x":1},7]}"#,
            ))
            .unwrap();
        assert_eq!((page.held, page.items.len()), (3, 1));
        assert!(matches!(
            f.parse(&answer("{\"x\":1}")),
            Err(CallError::GaveUp { .. })
        ));
    }
}
