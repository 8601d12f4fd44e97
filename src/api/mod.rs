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
//! | `GET customers/:id` | [`customers`] | yes | one customer (404: none) |
//! | `DELETE customers/:id` | [`customers`] | yes (a second finds none: 404) | empty |
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
pub mod keys;
pub mod payload;
pub mod system;
pub mod values;
pub mod would;

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
            result: Err(CallError::Stopping {
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
    Stopping { message: String },
}

impl<T> RowFate<T> {
    /// Whether a refusal says that `what` (`customer`, `item`) does not
    /// exist: a 404, or the vendor's words for it ("Customer 13 not
    /// found."), not another thing "not found" (a field, an account
    /// manager) in what was sent.
    pub fn says_missing(&self, what: &str) -> bool {
        match self {
            RowFate::Refused {
                http_status,
                message,
            } => {
                let m = message.to_lowercase();
                *http_status == Some(404) || (m.contains(what) && m.contains("not found"))
            }
            _ => false,
        }
    }

    /// Why a row was not done: the message, and the HTTP status where
    /// there was one. `None` when it was done.
    pub fn why_not(&self) -> Option<(&str, Option<u16>)> {
        match self {
            RowFate::Done(_) => None,
            RowFate::Refused {
                http_status,
                message,
            }
            | RowFate::Retryable {
                http_status,
                message,
            } => Some((message, *http_status)),
            RowFate::Unknown { message } | RowFate::Stopping { message } => Some((message, None)),
        }
    }

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
                    "{message}; the call may have been applied: `retry` looks customers and items up, and leaves what the API cannot list (feed records) unless --include-unknown"
                ),
            },
            CallError::Unauthorized { .. }
            | CallError::Redirected { .. }
            | CallError::Paging { .. }
            | CallError::Unreachable { .. }
            | CallError::GaveUp { .. } => RowFate::Retryable {
                http_status: e.http_status(),
                message,
            },
            CallError::Stopping { .. } => RowFate::Stopping { message },
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

    /// Reads the page's entries with `item`, skipping what it cannot read,
    /// but remembering how many entries the page held and which ones:
    /// paging goes on by what the server sent, not by what was readable.
    fn typed<T>(self, id_keys: &[&str], item: impl Fn(Value) -> Option<T>) -> Paged<T> {
        let held = self.items.len() as u64;
        let fingerprint = fingerprint(&self.items, id_keys);
        Paged {
            count: self.count,
            held,
            fingerprint,
            items: self.items.into_iter().filter_map(item).collect(),
        }
    }
}

/// Which entries a page held, in order, as one number: each entry's id
/// (the first of `id_keys` it has), or its whole text when it has none.
/// Two pages with one fingerprint are the same page.
fn fingerprint(entries: &[Value], id_keys: &[&str]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for e in entries {
        match id_keys.iter().find_map(|k| lenient_text(e.get(*k))) {
            Some(id) => id.hash(&mut h),
            None => e.to_string().hash(&mut h),
        }
        // An entry's end, so that ids "1","23" and "12","3" differ.
        0xffu8.hash(&mut h);
    }
    h.finish()
}

/// One page of a list, read: what [`ApiClient::each_page`] pages by.
#[derive(Debug, Clone, PartialEq)]
pub struct Paged<T> {
    /// How many there are in all (the `count`), when the answer says.
    pub count: Option<u64>,
    /// Entries the page held, readable or not: the next page's offset
    /// moves by this, never by `items.len()` (a malformed entry skipped
    /// must not make the next page start one entry early).
    pub held: u64,
    /// Which entries the page held ([`fingerprint`]): a server that ignores
    /// `offset` answers the same page twice.
    pub fingerprint: u64,
    /// The entries that could be read.
    pub items: Vec<T>,
}

/// Reads a list answer into items with `item`, skipping what it cannot read;
/// `id_keys` name an entry's id, for [`Paged::fingerprint`].
fn list<T>(
    answer: &Answer,
    id_keys: &[&str],
    item: impl Fn(&Value) -> Option<T>,
) -> Result<Paged<T>, CallError> {
    let page = json_of(answer)
        .and_then(Page::read)
        .map_err(|m| unreadable(true, m))?;
    Ok(page.typed(id_keys, |v| item(&v)))
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

/// The page size asked of every list: the most the vendor allows. A server
/// may answer fewer a page whatever it is asked; paging does not care.
pub const PAGE_LIMIT: u32 = 1000;

/// Entries read from one list at most (100 times the 1,000,000 customers a
/// large system holds): past it, a server that never ends its list is an
/// error ([`CallError::Paging`]), never a silent stop.
pub const MAX_LIST_ENTRIES: u64 = 100_000_000;

/// What reading a whole list took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Paging {
    /// Pages read.
    pub pages: u64,
    /// Entries the pages held (readable or not).
    pub entries: u64,
}

/// Where a list stands after one more page: the one set of stop rules of
/// every list, apart from the transport.
#[derive(Debug, Default)]
struct Pager {
    /// The next page's offset: the entries held by the pages so far.
    offset: u64,
    pages: u64,
    last: Option<u64>,
}

impl Pager {
    /// Takes in a page's `held` entries, `count` and fingerprint: `Ok(true)`
    /// when the list is read to its end, `Ok(false)` to ask for the page at
    /// [`Pager::offset`], an error when the server's paging cannot be
    /// trusted.
    fn next(
        &mut self,
        what: &str,
        held: u64,
        count: Option<u64>,
        fingerprint: u64,
    ) -> Result<bool, CallError> {
        self.pages += 1;
        if held == 0 {
            return Ok(true);
        }
        if self.last == Some(fingerprint) {
            return Err(CallError::Paging {
                message: format!(
                    "GET {what}: the page at offset {} held the same {held} entries as the page before: the server ignores `offset`, and the list cannot be read whole",
                    self.offset
                ),
            });
        }
        self.last = Some(fingerprint);
        self.offset += held;
        if count.is_some_and(|c| self.offset >= c) {
            return Ok(true);
        }
        if self.offset > MAX_LIST_ENTRIES {
            return Err(CallError::Paging {
                message: format!(
                    "GET {what}: more than {MAX_LIST_ENTRIES} entries read in {} pages and the list has not ended: the server's paging cannot be trusted",
                    self.pages
                ),
            });
        }
        Ok(false)
    }
}

impl ApiClient {
    /// The one paging routine of every list: asks `page(limit, offset)` for
    /// [`PAGE_LIMIT`] entries a page, hands each page to `visit`, and moves
    /// the offset on by the entries the page *held* — whatever page size the
    /// server answers (a server that caps pages at 200 is read whole). It
    /// stops at an empty page, or once the offset reaches the answer's
    /// `count`. A page that repeats the one before (a server that ignores
    /// `offset`) and a list that never ends are [`CallError::Paging`],
    /// which stops the run; an error of `visit` ends the paging with it.
    pub async fn each_page<E, T>(
        &self,
        page: impl Fn(u32, u64) -> E,
        mut visit: impl FnMut(Paged<T>) -> Result<(), CallError>,
    ) -> Call<Paging>
    where
        E: Endpoint<Answer = Paged<T>>,
    {
        let mut pager = Pager::default();
        let mut attempts = 0;
        let result = loop {
            let endpoint = page(PAGE_LIMIT, pager.offset);
            let call = self.send(&endpoint).await;
            attempts += call.attempts;
            let paged = match call.result {
                Ok(paged) => paged,
                Err(e) => break Err(e),
            };
            // The list's name for a message: the path without its query
            // (which may hold a customer's data).
            let path = endpoint.path();
            let what = path.split('?').next().unwrap_or_default();
            let (held, count, fingerprint) = (paged.held, paged.count, paged.fingerprint);
            if let Err(e) = visit(paged) {
                break Err(e);
            }
            match pager.next(what, held, count, fingerprint) {
                Ok(true) => {
                    break Ok(Paging {
                        pages: pager.pages,
                        entries: pager.offset,
                    })
                }
                Ok(false) => {}
                Err(e) => break Err(e),
            }
        };
        Call { attempts, result }
    }

    /// Every readable entry of a list (for the short lists: a system's
    /// field groups, campaigns, agents, a customer's items).
    pub async fn all_pages<E, T>(&self, page: impl Fn(u32, u64) -> E) -> Call<Vec<T>>
    where
        E: Endpoint<Answer = Paged<T>>,
    {
        let mut out = Vec::new();
        let call = self
            .each_page(page, |p| {
                out.extend(p.items);
                Ok(())
            })
            .await;
        Call {
            attempts: call.attempts,
            result: call.result.map(|_| out),
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
    #[test]
    fn a_refusal_says_what_is_missing_only_when_it_names_it() {
        let refused = |status, message: &str| RowFate::<()>::Refused {
            http_status: Some(status),
            message: message.into(),
        };
        assert!(refused(404, "Not Found").says_missing("item"));
        assert!(refused(400, "Customer 13 not found.").says_missing("customer"));
        assert!(!refused(400, "Customer 13 not found.").says_missing("item"));
        assert!(!refused(400, "Field 12 not found.").says_missing("customer"));
        assert!(!RowFate::<()>::Unknown {
            message: "customer not found".into()
        }
        .says_missing("customer"));
    }

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

    /// Pages of `sizes` entries (ids numbered on) through the pager; how
    /// many pages it asked for, or its error.
    fn page_through(sizes: &[u64], count: Option<u64>) -> Result<(u64, u64), CallError> {
        let mut pager = Pager::default();
        let mut next_id = 0u64;
        for &held in sizes {
            let ids: Vec<Value> = (next_id..next_id + held)
                .map(|i| json!({ "customer_id": i }))
                .collect();
            next_id += held;
            let print = fingerprint(&ids, &["customer_id"]);
            if pager.next("customers", held, count, print)? {
                return Ok((pager.pages, pager.offset));
            }
        }
        panic!("the pager asked for more than {} pages", sizes.len());
    }

    #[test]
    fn paging_goes_on_by_what_a_page_held_whatever_its_size() {
        // A server that caps pages at 200 whatever `limit` asks: 2,500
        // customers are 13 pages, not one short page taken for the end.
        let mut capped = vec![200; 13];
        capped[12] = 100;
        assert_eq!(page_through(&capped, Some(2500)), Ok((13, 2500)));
        // Without a count: on to the first empty page.
        capped.push(0);
        assert_eq!(page_through(&capped, None), Ok((14, 2500)));
        // Pages of varying size (short ones in the middle) do not end it.
        assert_eq!(page_through(&[1000, 3, 997, 0], None), Ok((4, 2000)));
        // An empty page ends the list even if the count promised more.
        assert_eq!(page_through(&[10, 0], Some(50)), Ok((2, 10)));
        assert_eq!(page_through(&[0], Some(0)), Ok((1, 0)));
    }

    #[test]
    fn a_page_counts_the_entries_it_could_not_read() {
        let answer = answer(r#"{"count":4,"result":[{"item_id":1},"junk",{"item_id":3},{}]}"#);
        let page = list(&answer, &["item_id"], |v| lenient_int(v.get("item_id"))).unwrap();
        assert_eq!(page.items, [1, 3]);
        assert_eq!(page.held, 4);
        assert_eq!(page.count, Some(4));
    }

    #[test]
    fn a_server_that_ignores_offset_is_an_error_never_a_loop() {
        let mut pager = Pager::default();
        let ids: Vec<Value> = (0..200).map(|i| json!({ "customer_id": i })).collect();
        let print = fingerprint(&ids, &["customer_id"]);
        assert_eq!(pager.next("customers", 200, Some(2500), print), Ok(false));
        let e = pager.next("customers", 200, Some(2500), print).unwrap_err();
        assert!(matches!(e, CallError::Paging { .. }), "{e:?}");
        assert!(e.to_string().contains("ignores `offset`"), "{e}");
        assert!(e.to_string().contains("GET customers"), "{e}");
        assert!(e.stops_the_run().is_some());
        // Without a count too: the same page again is the same error.
        let mut pager = Pager::default();
        assert_eq!(pager.next("agents", 5, None, 7), Ok(false));
        assert!(matches!(
            pager.next("agents", 5, None, 7),
            Err(CallError::Paging { .. })
        ));
        // Fingerprints tell pages apart by their ids, in order.
        let ids = |v: &[&str]| -> Vec<Value> { v.iter().map(|i| json!({ "id": i })).collect() };
        assert_ne!(
            fingerprint(&ids(&["1", "23"]), &["id"]),
            fingerprint(&ids(&["12", "3"]), &["id"])
        );
        assert_eq!(
            fingerprint(&[json!({"id": 5, "x": 1})], &["id"]),
            fingerprint(&[json!({"id": "5", "x": 2})], &["id"])
        );
    }

    #[test]
    fn a_list_that_never_ends_is_an_error_far_past_a_large_system() {
        // 1,000,000 customers, 1,000 pages of 1,000: read whole.
        let mut pager = Pager::default();
        for page in 0..1000u64 {
            assert_eq!(pager.next("customers", 1000, None, page), Ok(false));
        }
        assert_eq!(pager.offset, 1_000_000);
        // A server that never answers an empty page: an error, not a stop.
        let mut pager = Pager {
            offset: MAX_LIST_ENTRIES - 500,
            ..Pager::default()
        };
        let e = pager.next("customers", 1000, None, 1).unwrap_err();
        assert!(matches!(e, CallError::Paging { .. }), "{e:?}");
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
