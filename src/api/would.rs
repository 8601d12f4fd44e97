//! What each write endpoint would answer from a system that accepts it:
//! the answer `plan` takes instead of sending the call, so that the
//! pipeline goes on exactly as a run would after a successful write (the
//! same batching, the same later stages) without writing anything.
//!
//! Only writes have a [`Would`]: reads are made for real by a plan, as by
//! a run. An answer says no more than the call itself would be sure of:
//! no item or record ids, and a created customer's id is a placeholder
//! (negative, so that it can never name a real customer; unique, because
//! campaign records are batched by customer id).

use std::sync::atomic::{AtomicI64, Ordering};

use super::campaigns::{AddRecords, Added, UpdateRecord};
use super::customers::{CreateCustomers, Created, UpdateCustomers};
use super::feed::CreateFeedRecord;
use super::field_groups::{CreateItem, ItemCreated, UpdateItem};
use super::{Endpoint, RowFate};

/// A write endpoint's answer from a system that accepts every row of it.
pub trait Would: Endpoint {
    /// The call's method and path, ids left out (`PUT batch/customers`):
    /// what a plan counts.
    const WHAT: &'static str;
    fn would(&self) -> Self::Answer;
}

/// The placeholder ids of customers a plan would create: -1, -2, ...
static PLACEHOLDER: AtomicI64 = AtomicI64::new(0);

/// Whether `id` is a placeholder for a customer a plan would create.
pub fn is_placeholder(id: i64) -> bool {
    id < 0
}

impl Would for CreateCustomers<'_> {
    const WHAT: &'static str = "POST batch/customers";

    fn would(&self) -> Self::Answer {
        self.customers
            .iter()
            .map(|_| {
                RowFate::Done(Created {
                    customer_id: PLACEHOLDER.fetch_sub(1, Ordering::Relaxed) - 1,
                    http_status: Some(201),
                })
            })
            .collect()
    }
}

impl Would for UpdateCustomers<'_> {
    const WHAT: &'static str = "PUT batch/customers";

    fn would(&self) -> Self::Answer {
        self.customers.iter().map(|_| RowFate::Done(())).collect()
    }
}

impl Would for CreateItem<'_> {
    const WHAT: &'static str = "POST customer_field_group_items";

    fn would(&self) -> Self::Answer {
        RowFate::Done(ItemCreated { item_id: None })
    }
}

impl Would for UpdateItem<'_> {
    const WHAT: &'static str = "PUT customer_field_group_items/:id";

    fn would(&self) -> Self::Answer {
        RowFate::Done(())
    }
}

impl Would for AddRecords<'_> {
    const WHAT: &'static str = "POST batch/crm_outbounds/:id/records";

    fn would(&self) -> Self::Answer {
        // Whether a record is there already the run does not read either
        // (`ALREADY_EXISTS` is done): added, as far as a plan can say.
        self.records
            .iter()
            .map(|_| {
                RowFate::Done(Added {
                    record_id: None,
                    http_status: Some(201),
                    already: false,
                })
            })
            .collect()
    }
}

impl Would for UpdateRecord<'_> {
    const WHAT: &'static str = "PUT outbounds/:id/records_by_identifier/:identifier";

    fn would(&self) -> Self::Answer {
        RowFate::Done(())
    }
}

impl Would for CreateFeedRecord<'_> {
    const WHAT: &'static str = "POST customers/:id/feed_records";

    fn would(&self) -> Self::Answer {
        RowFate::Done(())
    }
}
