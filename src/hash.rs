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
}
