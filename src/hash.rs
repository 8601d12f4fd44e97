//! The one hash: the first 16 bytes of a SHA-256, as a `u128`. What the
//! tool remembers of a customer's data (match keys in the sync state and
//! the index, payloads sent, feed messages) is held as such a hash, never
//! as the value: compact, and no customer's data kept.

use sha2::Digest;

/// A hash of a value the tool remembers: a match key's normalised value,
/// a payload as sent.
pub type KeyHash = u128;

/// The first 16 bytes of the SHA-256 of `parts`, in order, a zero byte
/// between two (so that `("ab", "c")` and `("a", "bc")` differ). The sync
/// state keeps these: the bytes hashed must not change.
pub fn hash_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> KeyHash {
    let mut h = sha2::Sha256::new();
    for (i, part) in parts.into_iter().enumerate() {
        if i > 0 {
            h.update([0]);
        }
        h.update(part);
    }
    truncated(h)
}

/// The hash of a payload as sent (its JSON text).
pub fn payload_hash(payload: &impl serde::Serialize) -> KeyHash {
    let json = serde_json::to_vec(payload).unwrap_or_default();
    let mut h = sha2::Sha256::new();
    h.update(&json);
    truncated(h)
}

/// A payload's fields, for telling which changed without keeping their
/// values: each field (a JSON object's keys; an object's own keys as
/// `name.key`) with 4 bytes of its value's hash.
pub fn fields_of(payload: &impl serde::Serialize) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(payload) {
        for (name, value) in map {
            match value {
                serde_json::Value::Object(inner) => {
                    for (key, v) in inner {
                        out.push((format!("{name}.{key}"), short(&v)));
                    }
                }
                v => out.push((name, short(&v))),
            }
        }
    }
    out
}

fn short(v: &serde_json::Value) -> u32 {
    (payload_hash(v) >> 96) as u32
}

fn name_hash(name: &str) -> u32 {
    (hash_parts([name.as_bytes()]) >> 96) as u32
}

/// The fields as the sync state keeps them: 4 bytes of each name's hash,
/// 4 of its value's, sorted by name.
pub fn field_signature(fields: &[(String, u32)]) -> Vec<u8> {
    let mut pairs: Vec<(u32, u32)> = fields.iter().map(|(n, v)| (name_hash(n), *v)).collect();
    pairs.sort_unstable();
    pairs
        .iter()
        .flat_map(|(n, v)| n.to_be_bytes().into_iter().chain(v.to_be_bytes()))
        .collect()
}

/// The fields of `now` whose value differs from `before` (a signature),
/// or that `before` did not have; and how many of `before`'s are gone.
pub fn changed_fields(before: &[u8], now: &[(String, u32)]) -> (Vec<String>, usize) {
    let old: std::collections::HashMap<u32, u32> = before
        .chunks_exact(8)
        .map(|c| {
            let n = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            let v = u32::from_be_bytes([c[4], c[5], c[6], c[7]]);
            (n, v)
        })
        .collect();
    let mut seen = 0;
    let mut changed = Vec::new();
    for (name, value) in now {
        match old.get(&name_hash(name)) {
            Some(v) => {
                seen += 1;
                if v != value {
                    changed.push(name.clone());
                }
            }
            None => changed.push(name.clone()),
        }
    }
    (changed, old.len().saturating_sub(seen))
}

fn truncated(h: sha2::Sha256) -> KeyHash {
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_kept_apart_and_payloads_hash_as_their_json() {
        assert_ne!(
            hash_parts([b"ab".as_slice(), b"c"]),
            hash_parts([b"a".as_slice(), b"bc"])
        );
        assert_eq!(payload_hash(&("a", 1)), payload_hash(&("a", 1)));
        assert_ne!(payload_hash(&("a", 1)), payload_hash(&("a", 2)));
    }

    #[test]
    fn changed_fields_are_named_without_keeping_values() {
        let before = fields_of(&serde_json::json!({
            "surname": "Nowak", "name": "Jan", "custom_fields": {"Segment": "A"}
        }));
        let sig = field_signature(&before);
        assert_eq!(sig.len(), 3 * 8);
        let now = fields_of(&serde_json::json!({
            "surname": "Jan", "name": "Jan", "custom_fields": {"Segment": "B", "New": "x"}
        }));
        let (mut changed, gone) = changed_fields(&sig, &now);
        changed.sort();
        assert_eq!(
            changed,
            ["custom_fields.New", "custom_fields.Segment", "surname"]
        );
        assert_eq!(gone, 0);
        let (changed, gone) = changed_fields(&sig, &fields_of(&serde_json::json!({"name": "Jan"})));
        assert!(changed.is_empty());
        assert_eq!(gone, 2);
    }
}
