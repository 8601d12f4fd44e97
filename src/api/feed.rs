//! Contact history: `POST customers/:id/feed_records` (not idempotent; the
//! answer is empty).

use reqwest::Method;

use super::payload::FeedRecord;
use super::{Answer, CallError, Endpoint, RowFate};

/// `POST customers/:id/feed_records`: `{"type": "ZOWIE", "payload": "..."}`.
#[derive(Debug)]
pub struct CreateFeedRecord<'a> {
    pub customer_id: i64,
    pub record: &'a FeedRecord,
}

impl Endpoint for CreateFeedRecord<'_> {
    type Answer = RowFate<()>;
    const METHOD: Method = Method::POST;
    const IDEMPOTENT: bool = false;

    fn path(&self) -> String {
        format!("customers/{}/feed_records", self.customer_id)
    }

    fn body(&self) -> Option<String> {
        serde_json::to_string(self.record).ok()
    }

    fn parse(&self, _: &Answer) -> Result<Self::Answer, CallError> {
        Ok(RowFate::Done(()))
    }
}
