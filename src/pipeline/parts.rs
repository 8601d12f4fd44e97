//! The parts of a customer the sync state remembers a payload hash of: the
//! customer, each field group's item, the campaign record, the record edit,
//! each feed message. One place computes each hash, so that the customer
//! stage (deciding whether a row writes anything) and the later stages
//! (deciding whether to send) agree.

use crate::api::payload::FeedMessage;
use crate::hash::{payload_hash, KeyHash};
use crate::mapping::{CampaignPayload, ItemPayload, UpdatePayload};

/// The sync state's hash of a field-group item (the block's group and
/// values as sent). Values under `update = "never"` are left out, so that
/// a change there alone is no change; a block without policies hashes as
/// it always did.
pub(super) fn item_hash(item: &ItemPayload) -> KeyHash {
    use crate::mapping::Policy;
    if item.policies.iter().all(|(_, p)| *p != Policy::Never) {
        return payload_hash(&(item.group_id, &item.values));
    }
    let never = |id: i64| {
        item.policies
            .iter()
            .any(|(f, p)| *f == id && *p == Policy::Never)
    };
    let values: Vec<_> = item.values.iter().filter(|v| !never(v.field_id)).collect();
    payload_hash(&(item.group_id, &values))
}

/// The sync state's hash of a campaign record (the campaign and the record's
/// fields).
pub(super) fn campaign_hash(campaign: &CampaignPayload) -> KeyHash {
    payload_hash(&(&campaign.campaign_id, &campaign.record))
}

/// The sync state's hash of a campaign record edit.
pub(super) fn update_hash(update: &UpdatePayload) -> KeyHash {
    payload_hash(&(&update.campaign_id, &update.identifier, &update.body))
}

/// The sync state's hash of a feed message (text, author, time: not its id,
/// which defaults to the row number and moves with the file).
pub(super) fn feed_hash(feed: &FeedMessage) -> KeyHash {
    payload_hash(&(&feed.payload, &feed.author, &feed.time))
}
