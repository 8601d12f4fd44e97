//! Campaigns: `POST batch/crm_outbounds/:id/records` (add customers to a
//! CRM campaign; idempotent, since a record already there answers
//! `ALREADY_EXISTS`) and `PUT outbounds/:id/records_by_identifier/:identifier`
//! (edit a phone campaign's record; idempotent).

use reqwest::Method;
use serde_json::{json, Value};

use super::payload::{CampaignRecord, RecordUpdate};
use super::{
    encode, json_of, lenient_int, lenient_status, lenient_text, unreadable, Answer, CallError,
    Endpoint, RowFate,
};

/// What adding a record gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Added {
    pub record_id: Option<i64>,
    pub http_status: Option<u16>,
    /// `ALREADY_EXISTS`: the customer was in the campaign already.
    pub already: bool,
}

/// `POST batch/crm_outbounds/:id/records`: `{"records": [{"customer_id",
/// ...}]}`; the answer is keyed by customer id, so one call never holds two
/// records of one customer.
#[derive(Debug)]
pub struct AddRecords<'a> {
    pub campaign_id: &'a str,
    pub records: Vec<CampaignRecord<'a>>,
}

impl Endpoint for AddRecords<'_> {
    type Answer = Vec<RowFate<Added>>;
    const METHOD: Method = Method::POST;
    const IDEMPOTENT: bool = true;

    fn path(&self) -> String {
        format!("batch/crm_outbounds/{}/records", encode(self.campaign_id))
    }

    fn body(&self) -> Option<String> {
        Some(json!({ "records": self.records }).to_string())
    }

    fn parse(&self, answer: &Answer) -> Result<Self::Answer, CallError> {
        let v = json_of(answer).map_err(|m| unreadable(true, m))?;
        Ok(self
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                // Keyed by customer id; be liberal: a list answers by position.
                let entry = match &v {
                    Value::Array(list) => list.get(i),
                    other => other.get(r.customer_id.to_string()),
                };
                added(entry, r.customer_id)
            })
            .collect())
    }
}

/// One record's entry: `ADDED` and `ALREADY_EXISTS` are done, `FAILED` is
/// refused; without a status, the entry's `http_status` decides.
fn added(entry: Option<&Value>, customer_id: i64) -> RowFate<Added> {
    let Some(entry) = entry.filter(|e| e.is_object()) else {
        return RowFate::Retryable {
            http_status: None,
            message: format!("the answer has no entry for customer {customer_id}"),
        };
    };
    let http_status = lenient_status(entry.get("http_status"));
    let record_id = lenient_int(entry.get("record_id"));
    let status = lenient_text(entry.get("status"))
        .unwrap_or_default()
        .to_ascii_uppercase();
    let refused = |http_status| RowFate::Refused {
        http_status,
        message: lenient_text(entry.get("message"))
            .unwrap_or_else(|| "refused without a message".into()),
    };
    let done = |already| {
        RowFate::Done(Added {
            record_id,
            http_status,
            already,
        })
    };
    match status.as_str() {
        "ADDED" => done(false),
        "ALREADY_EXISTS" => done(true),
        "FAILED" => refused(http_status),
        _ => match http_status {
            Some(200..=299) => done(false),
            Some(s @ 400..=499) => refused(Some(s)),
            s => RowFate::Retryable {
                http_status: s,
                message: format!(
                    "the answer's entry for customer {customer_id} says neither ADDED nor FAILED"
                ),
            },
        },
    }
}

/// `PUT outbounds/:id/records_by_identifier/:identifier`: the fields to
/// change; the answer is empty.
#[derive(Debug)]
pub struct UpdateRecord<'a> {
    pub campaign_id: &'a str,
    pub identifier: &'a str,
    pub update: &'a RecordUpdate,
}

impl Endpoint for UpdateRecord<'_> {
    type Answer = RowFate<()>;
    const METHOD: Method = Method::PUT;
    const IDEMPOTENT: bool = true;

    fn path(&self) -> String {
        format!(
            "outbounds/{}/records_by_identifier/{}",
            encode(self.campaign_id),
            encode(self.identifier)
        )
    }

    fn body(&self) -> Option<String> {
        serde_json::to_string(self.update).ok()
    }

    fn parse(&self, _: &Answer) -> Result<Self::Answer, CallError> {
        Ok(RowFate::Done(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::payload::RecordFields;

    #[test]
    fn the_vendors_example_answer() {
        let fields = RecordFields::default();
        let e = AddRecords {
            campaign_id: "00001",
            records: [441, 445, 448, 450]
                .into_iter()
                .map(|customer_id| CampaignRecord {
                    customer_id,
                    fields: &fields,
                })
                .collect(),
        };
        assert_eq!(e.path(), "batch/crm_outbounds/00001/records");
        let fates = e
            .parse(&Answer {
                status: 200,
                body: r#"{"441":{"http_status":201,"record_id":111,"status":"ADDED"},"445":{"http_status":400,"record_id":100,"status":"ALREADY_EXISTS"},"448":{"http_status":400,"status":"FAILED","message":"Customer not found."}}"#.into(),
            })
            .unwrap();
        assert_eq!(
            fates[0],
            RowFate::Done(Added {
                record_id: Some(111),
                http_status: Some(201),
                already: false
            })
        );
        assert!(matches!(
            fates[1],
            RowFate::Done(Added {
                record_id: Some(100),
                already: true,
                ..
            })
        ));
        assert_eq!(
            fates[2],
            RowFate::Refused {
                http_status: Some(400),
                message: "Customer not found.".into()
            }
        );
        assert!(matches!(fates[3], RowFate::Retryable { .. }));
    }
}
