//! The Thulium API, in one place: every endpoint the tool calls, each with
//! its method and path, its typed request, whether it is idempotent, and the
//! parser of its answer into typed per-row outcomes (after Vector's request
//! builder and response parser per sink). Outside this module and the
//! sandbox, no code names an endpoint path: the pipeline asks "create these
//! customers" and gets a [`RowFate`] per customer back.
//!
//! | endpoint | file | idempotent | answer read as |
//! |---|---|---|---|
//! | `POST batch/customers` | [`customers`] | no | keyed by position |
//! | `PUT batch/customers` | [`customers`] | yes | keyed by position, or empty: all applied |
//! | `GET customers` | [`customers`] | yes | a page of customers |
//! | `POST customer_field_group_items` | [`field_groups`] | no | `{"item_id"}` |
//! | `GET customer_field_group_items` | [`field_groups`] | yes | a page of items |
//! | `PUT customer_field_group_items/:id` | [`field_groups`] | yes | empty |
//! | `POST batch/crm_outbounds/:id/records` | [`campaigns`] | yes (`ALREADY_EXISTS` is done) | keyed by customer id |
//! | `PUT outbounds/:id/records_by_identifier/:identifier` | [`campaigns`] | yes | empty |
//! | `POST customers/:id/feed_records` | [`feed`] | no | empty |
//!
//! Liberal in what we accept: ids as numbers or strings, `http_status`
//! missing, 200 or 201, an empty body, `{}` or `null` where the vendor shows
//! an empty answer, extra keys, a list as `{"count", "result"}` or a bare
//! array. Where an answer leaves a row's fate open after a call that is not
//! idempotent, the row is [`RowFate::Unknown`], never "failed": a failed row
//! is sent again, an unknown one is looked up first.

pub mod campaigns;
pub mod customers;
pub mod feed;
pub mod field_groups;
pub mod payload;
pub mod system;

use std::future::Future;

use reqwest::Method;
use serde_json::Value;

pub use crate::client::{Answer, ApiClient, CallError};

/// One endpoint call: everything about it but the transport.
pub trait Endpoint {
    /// What a 2xx answer is read into.
    type Answer;
    const METHOD: Method;
    /// Whether sending it twice does no more than sending it once; calls that
    /// are not are never resent after an ambiguous failure.
    const IDEMPOTENT: bool;
    /// The path under `/api/`, with its query for a GET.
    fn path(&self) -> String;
    /// The JSON body, if the call has one (a GET has none).
    fn body(&self) -> Option<String> {
        None
    }
    /// Reads a 2xx answer. An answer that cannot be read at all is an error
    /// of the kind the call's idempotence allows.
    fn parse(&self, answer: &Answer) -> Result<Self::Answer, CallError>;
}

/// How one call ended: its answer, read, or why there is none.
#[derive(Debug, Clone)]
pub struct Call<A> {
    pub attempts: u32,
    pub result: Result<A, CallError>,
}

impl<A> Call<A> {
    /// A call that was never sent.
    pub fn not_sent(reason: impl Into<String>) -> Call<A> {
        Call {
            attempts: 0,
            result: Err(CallError::NotSent {
                reason: reason.into(),
            }),
        }
    }
}

impl ApiClient {
    /// Sends one endpoint call (retried by the transport's rules) and reads
    /// its answer.
    pub async fn send<E: Endpoint>(&self, endpoint: &E) -> Call<E::Answer> {
        let reply = self
            .call(E::METHOD, &endpoint.path(), endpoint.body(), E::IDEMPOTENT)
            .await;
        Call {
            attempts: reply.attempts,
            result: reply.result.and_then(|answer| endpoint.parse(&answer)),
        }
    }
}

/// How one row fared in one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowFate<T> {
    /// Applied; what the answer said about it.
    Done(T),
    /// Refused for this row (a 4xx, `FAILED`): sent again unchanged, it would
    /// fail the same way.
    Refused {
        http_status: Option<u16>,
        message: String,
    },
    /// May or may not have been applied (a call that is not idempotent).
    Unknown { message: String },
    /// Not applied, or applied by an idempotent call: sending it again may
    /// succeed and does no harm.
    Retryable {
        http_status: Option<u16>,
        message: String,
    },
    /// Never sent: the run was stopping.
    NotSent { message: String },
}

impl<T> RowFate<T> {
    /// What a whole-call error means for each of its rows.
    pub fn of_call(e: &CallError) -> RowFate<T> {
        let message = e.to_string();
        match e {
            CallError::Refused { status, .. } => RowFate::Refused {
                http_status: Some(*status),
                message,
            },
            CallError::Unknown { .. } => RowFate::Unknown {
                message: format!(
                    "{message}; the call may have been applied: `retry` reconciles it"
                ),
            },
            CallError::Unauthorized { .. }
            | CallError::Redirected { .. }
            | CallError::GaveUp { .. } => RowFate::Retryable {
                http_status: e.http_status(),
                message,
            },
            CallError::NotSent { .. } => RowFate::NotSent { message },
        }
    }

    /// The fates of `n` rows sent in one call.
    pub fn of_rows(call: &Result<Vec<RowFate<T>>, CallError>, n: usize) -> Vec<RowFate<T>>
    where
        T: Clone,
    {
        match call {
            Ok(fates) => fates.clone(),
            Err(e) => (0..n).map(|_| RowFate::of_call(e)).collect(),
        }
    }
}

/// A batch endpoint as the pipeline drives it, for [`bisect`].
pub trait Batch: Sync {
    type Item: Send;
    type Answer: Send;
    /// Sends one call for `items`.
    fn send(&self, items: &[Self::Item]) -> impl Future<Output = Call<Self::Answer>> + Send;
    /// Records how a call for `items` ended (sent, or not sent because the
    /// run is stopping).
    fn settle(
        &self,
        items: Vec<Self::Item>,
        call: Call<Self::Answer>,
    ) -> impl Future<Output = ()> + Send;
    /// Why no more calls should be sent, once the run is stopping.
    fn stopping(&self) -> Option<String>;
}

/// Sends `items` in one call; a call refused as a whole (a 4xx: nothing was
/// applied) is split in halves and each half sent again, recursively, so
/// that only the rows really at fault end refused. Halves are not sent once
/// the run is stopping (a 401 seen by another call): they are settled as not
/// sent. The one bisection routine of every batch endpoint.
pub async fn bisect<B: Batch>(batch: &B, items: Vec<B::Item>) {
    let mut stack = vec![items];
    while let Some(chunk) = stack.pop() {
        if let Some(reason) = batch.stopping() {
            batch.settle(chunk, Call::not_sent(reason)).await;
            continue;
        }
        let call = batch.send(&chunk).await;
        if matches!(call.result, Err(CallError::Refused { .. })) && chunk.len() > 1 {
            tracing::info!(
                rows = chunk.len(),
                "Batch refused as a whole; splitting it."
            );
            let mut first = chunk;
            let second = first.split_off(first.len() / 2);
            stack.push(second);
            stack.push(first);
            continue;
        }
        batch.settle(chunk, call).await;
    }
}

/// An integer from an answer, given as a number or as a string of one
/// (`customer_id` comes back as `"13"` from one endpoint and `13` from the
/// others).
pub fn lenient_int(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An HTTP status given in an answer (`"http_status": 201` or `"201"`).
fn lenient_status(v: Option<&Value>) -> Option<u16> {
    lenient_int(v).and_then(|s| u16::try_from(s).ok())
}

/// A text from an answer: a string, or a number as its digits.
fn lenient_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The answer's JSON; an empty body (or only spaces) reads as `null`.
fn json_of(answer: &Answer) -> Result<Value, String> {
    if answer.body.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&answer.body).map_err(|e| {
        format!(
            "the answer ({}) is not JSON ({e}): {}",
            answer.status,
            crate::source::shorten(answer.body.trim())
        )
    })
}

/// A list answer: `{"count": N, "result": [...]}` or a bare array; `null`
/// or `{}` is an empty list.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// How many there are in all (the `count`), when the answer says.
    pub count: Option<u64>,
    pub items: Vec<Value>,
}

impl Page {
    fn read(v: Value) -> Result<Page, String> {
        match v {
            Value::Array(items) => Ok(Page { count: None, items }),
            Value::Null => Ok(Page {
                count: None,
                items: Vec::new(),
            }),
            Value::Object(mut o) => {
                let count = lenient_int(o.get("count")).and_then(|c| u64::try_from(c).ok());
                match o.remove("result") {
                    Some(Value::Array(items)) => Ok(Page { count, items }),
                    None | Some(Value::Null) if o.is_empty() || count == Some(0) => Ok(Page {
                        count,
                        items: Vec::new(),
                    }),
                    _ => Err("the answer is not a list (no \"result\" array)".into()),
                }
            }
            _ => Err("the answer is not a list".into()),
        }
    }
}

/// Reads a list answer into items with `item`, skipping what it cannot read.
fn list<T>(
    answer: &Answer,
    item: impl Fn(&Value) -> Option<T>,
) -> Result<(Option<u64>, Vec<T>), CallError> {
    let page = json_of(answer)
        .and_then(Page::read)
        .map_err(|m| unreadable(true, m))?;
    Ok((page.count, page.items.iter().filter_map(item).collect()))
}

/// An answer that cannot be read, as the error the call's idempotence
/// allows: a non-idempotent call's outcome is then unknown.
fn unreadable(idempotent: bool, message: String) -> CallError {
    if idempotent {
        CallError::GaveUp {
            status: None,
            message,
        }
    } else {
        CallError::Unknown { message }
    }
}

impl ApiClient {
    /// Every page of a list endpoint whose calls `page(limit, offset)`
    /// makes (at most 100 pages of 1,000).
    pub async fn all_pages<E, T>(&self, page: impl Fn(u32, u64) -> E) -> Call<Vec<T>>
    where
        E: Endpoint<Answer = (Option<u64>, Vec<T>)>,
    {
        const LIMIT: u32 = 1000;
        let mut out = Vec::new();
        let mut attempts = 0;
        for n in 0..100u64 {
            let call = self.send(&page(LIMIT, n * u64::from(LIMIT))).await;
            attempts += call.attempts;
            match call.result {
                Ok((count, items)) => {
                    let got = items.len() as u64;
                    out.extend(items);
                    if got < u64::from(LIMIT) || count.is_some_and(|c| out.len() as u64 >= c) {
                        break;
                    }
                }
                Err(e) => {
                    return Call {
                        attempts,
                        result: Err(e),
                    }
                }
            }
        }
        Call {
            attempts,
            result: Ok(out),
        }
    }
}

/// Percent-encodes one URL path segment or query value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string from pairs, each value encoded.
fn query(pairs: &[(&str, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A 200 answer with `body`, for the endpoints' parsers.
    pub(crate) fn answer(body: &str) -> Answer {
        Answer {
            status: 200,
            body: body.into(),
        }
    }

    #[test]
    fn pages_are_read_liberally() {
        let read = |v: Value| Page::read(v).map(|p| (p.count, p.items.len()));
        assert_eq!(
            read(json!({"count": "3", "result": [1, 2]})),
            Ok((Some(3), 2))
        );
        assert_eq!(read(json!([1, 2, 3])), Ok((None, 3)));
        assert_eq!(read(Value::Null), Ok((None, 0)));
        assert_eq!(read(json!({})), Ok((None, 0)));
        assert_eq!(read(json!({"count": 0, "result": null})), Ok((Some(0), 0)));
        assert!(read(json!({"count": 5})).is_err());
        assert!(read(json!("x")).is_err());
    }

    #[test]
    fn encoding_keeps_only_unreserved_bytes() {
        assert_eq!(encode("CRM-1 ż/&?"), "CRM-1%20%C5%BC%2F%26%3F");
        assert_eq!(
            query(&[("identifier", "a b".into()), ("limit", "10".into())]),
            "identifier=a%20b&limit=10"
        );
    }
}
