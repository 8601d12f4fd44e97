//! Plan mode: the run, up to its writes. The pipeline decides every row
//! exactly as a run does — its reads (the index, lookups, the items of a
//! customer) made for real — and each write site asks [`Run::write`]
//! whether to send: in plan mode the call is counted, not sent, and
//! answered as a system that accepts it would answer ([`Would`]), so the
//! row goes on to its later stages as after a successful write. Beside the
//! answer, the write sites note what the write would change in Thulium
//! (a customer's fields, an item's values), for `plan` to show.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::Run;
use crate::api::would::Would;
use crate::api::Call;
use crate::current::Compared;

/// What a plan's run would have written: the calls, by endpoint, and what
/// each would change, by row.
#[derive(Debug, Default)]
pub struct Noted {
    calls: Mutex<BTreeMap<&'static str, u64>>,
    notes: Mutex<Vec<(u64, Note)>>,
}

/// What one write of a row would change in Thulium.
#[derive(Debug, Clone, PartialEq)]
pub enum Note {
    /// A matched customer's update: the fields whose value in Thulium
    /// differs from the row's, and those Thulium's answer did not carry.
    Customer(Compared),
    /// A field-group block of a customer that exists: a new item (every
    /// value from nothing), or an item's values replaced.
    Item {
        /// The `[[field_group]]`'s place in the mapping.
        index: usize,
        group_id: i64,
        created: bool,
        /// (field id, Thulium's value now, the row's).
        changes: Vec<(i64, serde_json::Value, serde_json::Value)>,
    },
}

impl Noted {
    /// The calls that would have been sent, by endpoint.
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every note, by row, in the order noted.
    pub fn take_notes(&self) -> Vec<(u64, Note)> {
        std::mem::take(&mut *self.notes.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Run {
    /// The one place a write is sent, or (plan mode) counted and answered
    /// as accepted without being sent.
    pub(super) async fn write<E: Would>(&self, endpoint: &E) -> Call<E::Answer> {
        let Some(noted) = &self.limits.plan else {
            return self.client.send(endpoint).await;
        };
        *noted
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(E::WHAT)
            .or_default() += 1;
        Call {
            attempts: 1,
            result: Ok(endpoint.would()),
        }
    }

    /// In plan mode, notes what a write of row `row` would change (`note`
    /// is not even made otherwise: a run keeps no customer data).
    pub(super) fn note(&self, row: u64, note: impl FnOnce() -> Note) {
        if let Some(noted) = &self.limits.plan {
            let note = note();
            noted
                .notes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((row, note));
        }
    }
}
