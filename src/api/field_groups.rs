//! Custom-field group items: `POST customer_field_group_items` (one item,
//! not idempotent), `GET customer_field_group_items` (a customer's items in
//! a group, paged) and `PUT customer_field_group_items/:id` (replace an
//! item's values, idempotent).

use reqwest::Method;
use serde_json::Value;

use super::payload::{ItemValue, ItemValues, NewItem, Scalar};
use super::{
    json_of, lenient_int, list, query, Answer, ApiClient, Call, CallError, Endpoint, Paged, RowFate,
};

/// What creating an item gave: its id, when the answer carries one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemCreated {
    pub item_id: Option<i64>,
}

/// `POST customer_field_group_items`: `{"group_id", "customer_id",
/// "values": [{"field_id", "value"}]}`; the answer is `{"item_id": 38}`.
#[derive(Debug)]
pub struct CreateItem<'a> {
    pub item: NewItem<'a>,
}

impl Endpoint for CreateItem<'_> {
    type Answer = RowFate<ItemCreated>;
    const METHOD: Method = Method::POST;
    const IDEMPOTENT: bool = false;

    fn path(&self) -> String {
        "customer_field_group_items".into()
    }

    fn body(&self) -> Option<String> {
        serde_json::to_string(&self.item).ok()
    }

    fn parse(&self, answer: &Answer) -> Result<Self::Answer, CallError> {
        // The 2xx status says the item was created; its id is a bonus the
        // answer usually carries.
        let v = json_of(answer).unwrap_or(Value::Null);
        let item_id = lenient_int(v.get("item_id").or_else(|| v.get("id")));
        Ok(RowFate::Done(ItemCreated { item_id }))
    }
}

/// An item as `GET customer_field_group_items` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundItem {
    pub item_id: i64,
    pub group_id: Option<i64>,
    pub customer_id: Option<i64>,
    /// Field id → value, in the answer's order.
    pub values: Vec<(i64, Value)>,
}

/// `GET customer_field_group_items?customer_id=&group_id=&limit=&offset=`.
/// The vendor's example answer shows a group's definition instead of items;
/// items are read as `{"item_id" (or "id"), "group_id", "customer_id",
/// "values"}` with `values` a list of `{"field_id", "value"}` or an object
/// field id → value.
#[derive(Debug, Clone)]
pub struct FindItems {
    pub customer_id: i64,
    /// `None`: the customer's items in every group.
    pub group_id: Option<i64>,
    pub limit: u32,
    pub offset: u64,
}

impl Endpoint for FindItems {
    type Answer = Paged<FoundItem>;
    const METHOD: Method = Method::GET;
    const IDEMPOTENT: bool = true;

    fn path(&self) -> String {
        let mut params = vec![("customer_id", self.customer_id.to_string())];
        if let Some(g) = self.group_id {
            params.push(("group_id", g.to_string()));
        }
        params.push(("limit", self.limit.to_string()));
        params.push(("offset", self.offset.to_string()));
        format!("customer_field_group_items?{}", query(&params))
    }

    fn parse(&self, answer: &Answer) -> Result<Self::Answer, CallError> {
        list(answer, &["item_id", "id"], found_item)
    }
}

fn found_item(v: &Value) -> Option<FoundItem> {
    let item_id = lenient_int(v.get("item_id").or_else(|| v.get("id")))?;
    let values = match v.get("values") {
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|e| {
                let id = lenient_int(e.get("field_id").or_else(|| e.get("id")))?;
                Some((id, e.get("value").cloned().unwrap_or(Value::Null)))
            })
            .collect(),
        Some(Value::Object(map)) => map
            .iter()
            .filter_map(|(k, v)| Some((k.trim().parse().ok()?, v.clone())))
            .collect(),
        _ => Vec::new(),
    };
    Some(FoundItem {
        item_id,
        group_id: lenient_int(v.get("group_id")),
        customer_id: lenient_int(v.get("customer_id")),
        values,
    })
}

/// `PUT customer_field_group_items/:id`: `{"values": [...]}`; empty answer.
#[derive(Debug)]
pub struct UpdateItem<'a> {
    pub item_id: i64,
    pub values: &'a [ItemValue],
}

impl Endpoint for UpdateItem<'_> {
    type Answer = RowFate<()>;
    const METHOD: Method = Method::PUT;
    const IDEMPOTENT: bool = true;

    fn path(&self) -> String {
        format!("customer_field_group_items/{}", self.item_id)
    }

    fn body(&self) -> Option<String> {
        serde_json::to_string(&ItemValues {
            values: self.values,
        })
        .ok()
    }

    fn parse(&self, _: &Answer) -> Result<Self::Answer, CallError> {
        Ok(RowFate::Done(()))
    }
}

impl FoundItem {
    /// Whether the item holds every value of `values` (numbers and their
    /// text compare equal, spaces around text aside).
    pub fn holds(&self, values: &[ItemValue]) -> bool {
        values.iter().all(|want| {
            self.values
                .iter()
                .any(|(id, v)| *id == want.field_id && same_value(&want.value, v))
        })
    }
}

impl FoundItem {
    /// The values of `values` the item does not hold, as (field id, the
    /// item's value now or `null`, the value sent), by the rule of
    /// [`FoundItem::holds`]: what updating the item would change.
    pub fn differs(&self, values: &[ItemValue]) -> Vec<(i64, Value, Value)> {
        values
            .iter()
            .filter_map(|want| {
                let now = self
                    .values
                    .iter()
                    .find(|(id, _)| *id == want.field_id)
                    .map(|(_, v)| v.clone())
                    .unwrap_or(Value::Null);
                let sent = serde_json::to_value(&want.value).unwrap_or(Value::Null);
                (!same_value(&want.value, &now)).then_some((want.field_id, now, sent))
            })
            .collect()
    }
}

impl FoundItem {
    /// How many of `values` the item holds.
    pub fn shares(&self, values: &[ItemValue]) -> usize {
        values
            .iter()
            .filter(|want| {
                self.values
                    .iter()
                    .any(|(id, v)| *id == want.field_id && same_value(&want.value, v))
            })
            .count()
    }
}

/// Which of a customer's items in a group a block's values go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemChoice {
    /// This item holds every value already: nothing to write.
    Holds(i64),
    /// This item is the block's: its values are replaced.
    Update(i64),
    /// None is the block's: a new item.
    Create,
    /// Several could be, and nothing tells them apart: nothing is written.
    Ambiguous(Vec<i64>),
}

/// The item `values` belong to among `items`, leaving out those another
/// block of the row has `taken` (two blocks never share an item).
///
/// With `key` (the block's `match` field ids, of which `values` holds at
/// least one): the one item holding the key's values (none: create; several:
/// ambiguous). Without: an item holding every value; else the one sharing
/// the most values with them, when exactly one does (a lone item counts
/// even if it shares none: a group with one item per customer); else create
/// when nothing is left to choose from, or ambiguous.
pub fn choose_item(
    items: &[FoundItem],
    taken: &[i64],
    values: &[ItemValue],
    key: &[i64],
) -> ItemChoice {
    let free: Vec<&FoundItem> = items
        .iter()
        .filter(|i| !taken.contains(&i.item_id))
        .collect();
    let key_values: Vec<ItemValue> = values
        .iter()
        .filter(|v| key.contains(&v.field_id))
        .cloned()
        .collect();
    if !key_values.is_empty() {
        let by_key: Vec<&&FoundItem> = free.iter().filter(|i| i.holds(&key_values)).collect();
        return match by_key.as_slice() {
            [] => ItemChoice::Create,
            [one] if one.holds(values) => ItemChoice::Holds(one.item_id),
            [one] => ItemChoice::Update(one.item_id),
            many => ItemChoice::Ambiguous(many.iter().map(|i| i.item_id).collect()),
        };
    }
    if let Some(same) = free.iter().find(|i| i.holds(values)) {
        return ItemChoice::Holds(same.item_id);
    }
    let Some(most) = free.iter().map(|i| i.shares(values)).max() else {
        return ItemChoice::Create;
    };
    let best: Vec<i64> = free
        .iter()
        .filter(|i| i.shares(values) == most)
        .map(|i| i.item_id)
        .collect();
    // The one that shares the most values, when exactly one does; the
    // customer's only item (free) is the block's even when every value
    // changed (one record per customer, as most groups are). A group that
    // holds several per customer (contracts) names its key with `match`.
    match best.as_slice() {
        [one] if most > 0 || free.len() == 1 => ItemChoice::Update(*one),
        _ => ItemChoice::Ambiguous(best),
    }
}

fn same_value(sent: &Scalar, found: &Value) -> bool {
    let found = match found {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => return false,
    };
    let sent = sent.text();
    let sent = sent.trim();
    sent == found || matches!((sent.parse::<f64>(), found.parse::<f64>()), (Ok(a), Ok(b)) if a == b)
}

impl ApiClient {
    /// Every item of a customer in a group, page by page (through the one
    /// paging routine, [`ApiClient::all_pages`]).
    pub async fn find_items(&self, customer_id: i64, group_id: i64) -> Call<Vec<FoundItem>> {
        self.items_of(customer_id, Some(group_id)).await
    }

    /// Every item of a customer, in every group (`undo` asks whether a
    /// customer holds items a run did not create).
    pub async fn find_all_items(&self, customer_id: i64) -> Call<Vec<FoundItem>> {
        self.items_of(customer_id, None).await
    }

    async fn items_of(&self, customer_id: i64, group_id: Option<i64>) -> Call<Vec<FoundItem>> {
        let mut call = self
            .all_pages(|limit, offset| FindItems {
                customer_id,
                group_id,
                limit,
                offset,
            })
            .await;
        // Only this customer's items (in this group) count, whatever the
        // filter let through.
        if let Ok(items) = &mut call.result {
            items.retain(|i| {
                i.customer_id.is_none_or(|c| c == customer_id)
                    && group_id.is_none_or(|want| i.group_id.is_none_or(|g| g == want))
            });
        }
        call
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::api::tests::answer;

    #[test]
    fn items_are_read_in_either_value_shape() {
        let f = FindItems {
            customer_id: 5,
            group_id: Some(2),
            limit: 1000,
            offset: 0,
        };
        assert_eq!(
            f.path(),
            "customer_field_group_items?customer_id=5&group_id=2&limit=1000&offset=0"
        );
        let page = f
            .parse(&answer(
                r#"{"count":2,"result":[{"item_id":"38","group_id":2,"customer_id":5,"values":[{"field_id":"12","value":"x"}]},{"id":39,"values":{"8":13}}]}"#,
            ))
            .unwrap();
        assert_eq!(page.items[0].item_id, 38);
        assert_eq!(page.items[0].values, vec![(12, Value::from("x"))]);
        assert_eq!(page.items[1].values, vec![(8, Value::from(13))]);
    }

    fn item(item_id: i64, values: &[(i64, &str)]) -> FoundItem {
        FoundItem {
            item_id,
            group_id: Some(3),
            customer_id: Some(1),
            values: values.iter().map(|(f, v)| (*f, Value::from(*v))).collect(),
        }
    }

    fn want(values: &[(i64, &str)]) -> Vec<ItemValue> {
        values
            .iter()
            .map(|(f, v)| ItemValue {
                field_id: *f,
                value: Scalar::Text((*v).into()),
            })
            .collect()
    }

    #[test]
    fn an_item_is_chosen_by_its_key_or_by_its_values_never_twice() {
        use ItemChoice::*;
        let items = [
            item(1, &[(20, "U-1"), (22, "100")]),
            item(2, &[(20, "U-2"), (22, "200")]),
        ];
        // By key: the contract's number decides, whatever the amount.
        assert_eq!(
            choose_item(&items, &[], &want(&[(20, "U-1"), (22, "150")]), &[20]),
            Update(1)
        );
        assert_eq!(
            choose_item(&items, &[], &want(&[(20, "U-2"), (22, "200")]), &[20]),
            Holds(2)
        );
        assert_eq!(
            choose_item(&items, &[], &want(&[(20, "U-3"), (22, "100")]), &[20]),
            Create
        );
        assert_eq!(
            choose_item(&items, &[1], &want(&[(20, "U-1"), (22, "100")]), &[20]),
            Create
        );
        let twins = [item(1, &[(20, "U-1")]), item(2, &[(20, "U-1")])];
        assert_eq!(
            choose_item(&twins, &[], &want(&[(20, "U-1"), (22, "1")]), &[20]),
            Ambiguous(vec![1, 2])
        );
        // Without a key: all values, then the most shared, then nothing.
        assert_eq!(
            choose_item(&items, &[], &want(&[(20, "U-2"), (22, "200")]), &[]),
            Holds(2)
        );
        assert_eq!(
            choose_item(&items, &[], &want(&[(20, "U-1"), (22, "150")]), &[]),
            Update(1)
        );
        assert_eq!(
            choose_item(&items, &[1], &want(&[(20, "U-1"), (22, "150")]), &[]),
            Update(2)
        );
        assert_eq!(
            choose_item(&items, &[], &want(&[(20, "U-9"), (22, "9")]), &[]),
            Ambiguous(vec![1, 2])
        );
        assert_eq!(
            choose_item(&items, &[1, 2], &want(&[(20, "U-9")]), &[]),
            Create
        );
        // The customer's only item is the block's, whatever changed.
        assert_eq!(
            choose_item(&items[..1], &[], &want(&[(20, "U-9")]), &[]),
            Update(1)
        );
        assert_eq!(choose_item(&[], &[], &want(&[(20, "U-9")]), &[]), Create);
    }

    #[test]
    fn a_created_item_without_an_id_is_still_done() {
        let e = CreateItem {
            item: NewItem {
                group_id: 2,
                customer_id: 1,
                values: &[],
            },
        };
        for body in ["", "{}", "null", r#"{"item_id":"38"}"#] {
            assert!(
                matches!(e.parse(&answer(body)), Ok(RowFate::Done(_))),
                "{body}"
            );
        }
        assert_eq!(
            e.parse(&answer(r#"{"item_id":"38"}"#)).unwrap(),
            RowFate::Done(ItemCreated { item_id: Some(38) })
        );
    }
}
