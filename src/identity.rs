//! Identity: which customer in Thulium a row is. A mapping's `match` keys
//! (`identifier`, `email`, ...) are looked up in order; a key whose value is
//! empty in a row is skipped. Customers are found, cheapest first, in the
//! sync state (what earlier runs learnt), in an index of the whole system
//! read once by paging `GET customers`, or by a `GET customers?key=value`
//! per row.
//!
//! Keys are compared normalised ([`SearchKey::normalise`]) and held as
//! 128-bit hashes of the key's name and normalised value: compact (an
//! index of 1,000,000 customers with two keys takes about 46 MiB; see
//! `benches/index.rs`), and no customer's data is kept.

use std::collections::HashMap;

use crate::api::customers::FindCustomers;
use crate::api::keys::SearchKey;
use crate::api::payload::Customer;
use crate::api::{ApiClient, Call, CallError};
use crate::current::{Current, Written};
use crate::hash::KeyHash;
use crate::source::{FieldError, RowId};

/// A row's match-key values, in the mapping's key order (keys with no
/// value left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RowKeys(pub Vec<(SearchKey, Vec<String>)>);

impl RowKeys {
    /// The values of `keys` in a customer payload.
    pub fn of(customer: &Customer, keys: &[SearchKey]) -> RowKeys {
        RowKeys(
            keys.iter()
                .map(|k| (k.clone(), customer.key_values(k)))
                .filter(|(_, v)| !v.is_empty())
                .collect(),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every (key, value) hash.
    pub fn hashes(&self) -> impl Iterator<Item = (&SearchKey, KeyHash)> + '_ {
        self.0
            .iter()
            .flat_map(|(k, values)| values.iter().map(move |v| (k, k.hash(v))))
    }
}

/// Rows of one file that share a key value: the later one is invalid
/// ("never two creates for one key in one run").
#[derive(Debug, Default)]
pub struct FileKeys {
    seen: HashMap<KeyHash, (u64, u64)>,
}

impl FileKeys {
    /// Records a row's key values (hashed, as [`crate::mapping::Plan::key_hashes`]
    /// gives them); the problem, if an earlier row has one of them.
    pub fn check(&mut self, id: RowId, keys: &[(SearchKey, KeyHash)]) -> Option<FieldError> {
        for (key, hash) in keys {
            if let Some((row, line)) = self.seen.get(hash) {
                if *row != id.row {
                    return Some(FieldError {
                        column: None,
                        value: None,
                        reason: format!(
                            "same {} as row {row} (line {line}): one customer, two rows; only the first is sent",
                            key.name()
                        ),
                    });
                }
            }
        }
        for (_, hash) in keys {
            self.seen.entry(*hash).or_insert((id.row, id.line));
        }
        None
    }
}

/// Every customer of a system, read once by paging `GET customers`: key
/// hashes → customer ids, as one sorted list (24 bytes a key value, no
/// table's slack), searched by halving.
#[derive(Debug, Default)]
pub struct Index {
    /// (key hash, customer id), sorted once every customer is in.
    entries: Vec<([u64; 2], i64)>,
    sorted: bool,
    /// Each customer's values in the fields the mapping writes, by id
    /// (sorted once every customer is in).
    current: Vec<(i64, Current)>,
    /// Customers read.
    pub customers: u64,
    /// Requests it took.
    pub pages: u64,
}

fn halves(h: KeyHash) -> [u64; 2] {
    [(h >> 64) as u64, h as u64]
}

impl Index {
    /// An empty index with room for `values` key values.
    pub fn with_capacity(values: usize) -> Index {
        Index {
            entries: Vec::with_capacity(values),
            ..Index::default()
        }
    }

    /// Adds a customer's values of every key.
    pub fn add(&mut self, customer_id: i64, values: impl IntoIterator<Item = KeyHash>) {
        self.customers += 1;
        self.sorted = false;
        self.entries
            .extend(values.into_iter().map(|h| (halves(h), customer_id)));
    }

    /// Sorts the list for searching (once all customers are in).
    pub fn finish(&mut self) {
        if !self.sorted {
            self.entries.sort_unstable();
            self.entries.dedup();
            self.current.sort_unstable_by_key(|(id, _)| *id);
            self.current.dedup_by_key(|(id, _)| *id);
            self.sorted = true;
        }
    }

    /// What the customer held, when read, in the fields the mapping
    /// writes (the index must be finished).
    pub fn current(&self, customer_id: i64) -> Option<&Current> {
        let i = self
            .current
            .binary_search_by_key(&customer_id, |(id, _)| *id)
            .ok()?;
        Some(&self.current[i].1)
    }

    /// Whether any customer has this key value.
    pub fn contains(&self, h: KeyHash) -> bool {
        !self.get(h).is_empty()
    }

    /// The ids with this key value (the index must be finished).
    fn get(&self, h: KeyHash) -> Vec<i64> {
        let key = halves(h);
        let start = self.entries.partition_point(|(k, _)| *k < key);
        self.entries[start..]
            .iter()
            .take_while(|(k, _)| *k == key)
            .map(|(_, id)| *id)
            .collect()
    }

    /// Reads the whole system, page by page through the one paging routine
    /// ([`ApiClient::each_page`]): whatever page size the server answers;
    /// each customer's key values (hashed) and its values in the `written`
    /// fields (kept for comparing, see [`crate::current`]).
    pub async fn read(
        client: &ApiClient,
        keys: &[SearchKey],
        written: &Written,
    ) -> Result<Index, CallError> {
        let custom = keys.iter().any(|k| matches!(k, SearchKey::CustomField(_)));
        let mut index = Index::default();
        let mut sized = false;
        let call = client
            .each_page(
                |limit, offset| {
                    FindCustomers {
                        filter: None,
                        limit,
                        offset,
                        custom_fields: custom,
                        addresses: false,
                    }
                    .reading(written)
                },
                |page| {
                    if !sized {
                        // Room for every key value at once: no growth (and
                        // no second table while growing) on the way.
                        // A count the server gets wrong only costs the reserve.
                        let values = usize::try_from(page.count.unwrap_or(0))
                            .unwrap_or(usize::MAX)
                            .saturating_mul(keys.len());
                        index.entries.reserve(values.min(50_000_000));
                        sized = true;
                    }
                    for c in &page.items {
                        let hashes: Vec<KeyHash> = keys
                            .iter()
                            .flat_map(|k| c.values(k).into_iter().map(move |v| k.hash(&v)))
                            .collect();
                        index.add(c.customer_id, hashes);
                        if !written.is_empty() {
                            index.current.push((c.customer_id, written.keep(c)));
                        }
                    }
                    Ok(())
                },
            )
            .await;
        index.pages = call.result?.pages;
        index.finish();
        Ok(index)
    }

    /// How many customers the system holds, from one small page's `count`
    /// (what deciding between an index and per-row lookups costs).
    pub async fn count(client: &ApiClient) -> Call<Option<u64>> {
        let call = client
            .send(&FindCustomers {
                filter: None,
                limit: 1,
                offset: 0,
                custom_fields: false,
                addresses: false,
            })
            .await;
        Call {
            attempts: call.attempts,
            result: call.result.map(|p| p.count),
        }
    }
}

/// What looking a row's customer up found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Exactly one customer, by this key; with its values in the fields
    /// the mapping writes, as the index or the lookup read them.
    Matched {
        customer_id: i64,
        key: SearchKey,
        current: Option<Current>,
    },
    /// No key found anyone.
    Missing,
    /// A key found several customers.
    Ambiguous { ids: Vec<i64>, key: SearchKey },
    /// The lookup could not be made.
    Failed(CallError),
}

impl Found {
    /// "ambiguous: customers 12 and 57 have this row's identifier". The
    /// key's value is left out: the message goes into the ledger, which
    /// holds no customer data.
    pub fn ambiguity(ids: &[i64], key: &SearchKey) -> String {
        format!(
            "ambiguous: customers {} have this row's {}: nothing sent for this row; merge them in Thulium, then retry",
            crate::text::join_ids(ids),
            key.name(),
        )
    }
}

/// Where customers are found in Thulium: an index read this run, or a
/// lookup per row. The sync state beside it is a memory of earlier runs,
/// asked only for a hint ([`Finder::remembered`]): Thulium decides who a
/// row is.
#[derive(Debug, Default)]
pub struct Finder {
    pub index: Option<Index>,
    pub state: Option<std::sync::Arc<crate::state::SyncState>>,
    /// The fields the mapping writes: lookups ask for them too, so that a
    /// match comes with the customer's current values.
    pub written: Written,
}

impl Finder {
    /// A finder that asks Thulium only (no index read earlier, no state):
    /// for a creation whose outcome was unknown, and for a customer that
    /// turned out to be gone.
    pub fn fresh(written: &Written) -> Finder {
        Finder {
            written: written.clone(),
            ..Finder::default()
        }
    }

    /// The customer earlier runs learnt for the row's keys (the first key,
    /// in the mapping's order, the state knows): a hint to confirm before
    /// anything is written on its strength.
    pub fn remembered(&self, keys: &RowKeys) -> Option<i64> {
        let state = self.state.as_ref()?;
        keys.hashes().find_map(|(_, h)| state.customer_of(h))
    }

    /// Finds the customer of a row in Thulium (the index read this run, or
    /// lookups): keys in order, each value of a key (several e-mail
    /// addresses) looked up; one customer matches, several are ambiguous,
    /// none goes on to the next key. The sync state is not asked.
    pub async fn find(&self, client: &ApiClient, keys: &RowKeys) -> (Found, u32) {
        let mut attempts = 0;
        for (key, values) in &keys.0 {
            let mut ids: Vec<i64> = Vec::new();
            let mut current: Option<Current> = None;
            for v in values {
                let found: Vec<(i64, Option<Current>)> = match &self.index {
                    Some(index) => index
                        .get(key.hash(v))
                        .into_iter()
                        .map(|id| (id, index.current(id).cloned()))
                        .collect(),
                    None => {
                        let call = client.find_customers(key, v, &self.written).await;
                        attempts += call.attempts;
                        match call.result {
                            Ok(found) => found
                                .iter()
                                .map(|c| (c.customer_id, Some(self.written.keep(c))))
                                .collect(),
                            Err(e) => return (Found::Failed(e), attempts),
                        }
                    }
                };
                for (id, now) in found {
                    if !ids.contains(&id) {
                        ids.push(id);
                        current = now;
                    }
                }
            }
            match ids.len() {
                0 => continue,
                1 => {
                    return (
                        Found::Matched {
                            customer_id: ids[0],
                            key: key.clone(),
                            current: current.filter(|_| !self.written.is_empty()),
                        },
                        attempts,
                    )
                }
                _ => {
                    ids.sort_unstable();
                    return (
                        Found::Ambiguous {
                            ids,
                            key: key.clone(),
                        },
                        attempts,
                    );
                }
            }
        }
        (Found::Missing, attempts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_normalised() {
        assert_eq!(
            SearchKey::Email.hash(" Jan@Example.PL "),
            SearchKey::Email.hash("jan@example.pl")
        );
        assert_eq!(
            SearchKey::PhoneNumber.hash("+48 601-234-567"),
            SearchKey::PhoneNumber.hash("48601234567")
        );
        assert_ne!(
            SearchKey::Identifier.hash("A1"),
            SearchKey::Identifier.hash("a1")
        );
        assert_ne!(SearchKey::Identifier.hash("7"), SearchKey::Nip.hash("7"));
    }

    #[test]
    fn the_index_tells_one_from_many() {
        let mut index = Index::default();
        let h = SearchKey::Email.hash("a@b.pl");
        index.add(1, [h]);
        index.add(1, [h]);
        index.finish();
        assert_eq!(index.get(h), [1]);
        index.add(3, [h]);
        index.add(2, [h]);
        index.finish();
        assert_eq!(index.get(h), [1, 2, 3]);
        assert!(index.get(0).is_empty());
    }

    #[test]
    fn the_later_of_two_rows_with_one_key_value_is_invalid() {
        let mut seen = FileKeys::default();
        let keys = |v: &str| vec![(SearchKey::Email, SearchKey::Email.hash(v))];
        let id = |row| RowId {
            row,
            line: row + 1,
            offset: 0,
            fp: None,
        };
        assert!(seen.check(id(17), &keys("a@b.pl")).is_none());
        assert!(seen.check(id(18), &keys("c@d.pl")).is_none());
        let e = seen.check(id(30), &keys("A@B.pl")).unwrap();
        assert!(
            e.reason.starts_with("same email as row 17 (line 18)"),
            "{}",
            e.reason
        );
    }
}
