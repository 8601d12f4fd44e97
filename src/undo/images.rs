//! Before-images: `<LEDGER>.undo.jsonl`, what `undo` needs to take a run
//! back and the ledger must not hold. Written by `run`, `retry` and `sync`
//! (unless `--no-undo`) before each call it describes, and made durable
//! first: the order is image, then the ledger's intent, then the call.
//!
//! - a customer about to be **updated**: the values the update overwrites,
//!   and only those (the fields whose value differs from Thulium's, as the
//!   index or the lookup read it); a field whose value Thulium's answer did
//!   not carry is listed as unknown (undo cannot put it back, and says so);
//! - an **item** about to be updated: its old values of the fields sent;
//! - a customer about to be **created**: the names of the fields sent and a
//!   signature of their values (hashes, no values), so that `undo` can tell
//!   a person's later edit from what the run wrote;
//! - a customer **deleted** by the tool (for `on_gone = "delete"`): every
//!   field it had ([`Images::deleted`]), from which `undo` creates it again
//!   (under a new id), and which of the job's keys (hashes) the state's
//!   `seen` held for it;
//! - a customer **marked** by the tool (`on_gone = { custom_field, value
//!   }`): the old value of that one field, as an update's image.
//!
//! Each kind also carries a signature of what was sent, for the same
//! check. The ids of what the calls created come from the ledger, which
//! already holds them: one home per fact.
//!
//! This file is customer data (old values in clear): kept 0600 (set on
//! every open), kept
//! beside the ledger, never in the ledger or the sync state.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::aside::{aside_ledger, set_aside};
use crate::api::field_groups::FoundItem;
use crate::api::payload::ItemValue;
use crate::current::{self, Current};

/// One line of the undo file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Image {
    /// A run or retry began writing: whose ledger (its header's
    /// `started_at`, so that a file left by an older ledger at the same
    /// path is never taken for this one's), and the sync state it used.
    Opened {
        ledger_started_at: String,
        at: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
    },
    /// A customer about to be created for `row`.
    Created {
        row: u64,
        /// The fields sent, by [`current::flatten`]'s names.
        fields: Vec<String>,
        /// Their values as sent: a [`signature`].
        sent: String,
    },
    /// A customer about to be updated for `row`.
    Updated {
        row: u64,
        customer_id: i64,
        /// The fields the update changes, with Thulium's value before it.
        before: Map<String, Value>,
        /// Fields sent whose value before is not known.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unknown: Vec<String>,
        /// The values sent of `before`'s and `unknown`'s fields.
        sent: String,
    },
    /// A field-group item about to be updated for `row`.
    Item {
        row: u64,
        /// Which `[[field_group]]` of the mapping.
        group: usize,
        customer_id: i64,
        item_id: i64,
        group_id: i64,
        /// The item's values before, of the fields sent (`null`: none).
        before: Vec<ItemField>,
        sent: String,
    },
    /// A customer deleted by the tool: every field it had.
    Deleted {
        customer_id: i64,
        fields: Map<String, Value>,
        /// What the sync state's `seen` held for it (the job and its keys'
        /// hashes), for `undo` to give back to the customer created again.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen: Option<SeenKeys>,
    },
    /// A customer about to be marked gone (`on_gone = { custom_field,
    /// value }`): the field's value before, as [`Image::Updated`] keeps it.
    Marked {
        customer_id: i64,
        before: Map<String, Value>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unknown: Vec<String>,
        sent: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen: Option<SeenKeys>,
    },
}

/// A gone customer's record in the sync state's `seen` table, as it was
/// before the tool handled it (and forgot it there): ids and hashes only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SeenKeys {
    pub job: String,
    /// Its match keys' hashes, in hex.
    pub keys: Vec<String>,
}

impl SeenKeys {
    pub fn of(job: &str, keys: &[crate::hash::KeyHash]) -> SeenKeys {
        SeenKeys {
            job: job.to_string(),
            keys: keys.iter().map(|k| format!("{k:032x}")).collect(),
        }
    }

    /// The keys' hashes (a key not written by [`SeenKeys::of`] is skipped).
    pub fn hashes(&self) -> Vec<crate::hash::KeyHash> {
        self.keys
            .iter()
            .filter_map(|k| u128::from_str_radix(k, 16).ok())
            .collect()
    }
}

/// One value of an item, before.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ItemField {
    pub field_id: i64,
    pub value: Value,
}

/// An item's field as the signatures name it.
pub fn item_field(field_id: i64) -> String {
    format!("field_id.{field_id}")
}

impl Image {
    /// The image of a customer about to be created.
    pub fn created(row: u64, customer: &impl Serialize) -> Image {
        let sent = current::flatten(&serde_json::to_value(customer).unwrap_or(Value::Null));
        Image::Created {
            row,
            fields: sent.iter().map(|(f, _)| f.clone()).collect(),
            sent: signature(&sent),
        }
    }

    /// The image of a customer about to be updated with `payload`, given
    /// what Thulium holds now (`None`: nothing known, every field unknown).
    pub fn updated(
        row: u64,
        customer_id: i64,
        payload: &impl Serialize,
        now: Option<&Current>,
    ) -> Image {
        let payload = serde_json::to_value(payload).unwrap_or(Value::Null);
        let mut before = Map::new();
        let mut unknown = Vec::new();
        let mut sent = Vec::new();
        for (field, to) in current::flatten(&payload) {
            match now.and_then(|c| c.get(&field)) {
                Some(from) if current::same(&field, &from, &to) => continue,
                Some(from) => {
                    before.insert(field.clone(), from);
                }
                None => unknown.push(field.clone()),
            }
            sent.push((field, to));
        }
        Image::Updated {
            row,
            customer_id,
            before,
            unknown,
            sent: signature(&sent),
        }
    }

    /// The image of a gone customer about to be marked with `payload` (one
    /// custom field), given what Thulium holds now.
    pub fn marked(
        customer_id: i64,
        payload: &impl Serialize,
        now: Option<&Current>,
        seen: Option<SeenKeys>,
    ) -> Image {
        match Image::updated(0, customer_id, payload, now) {
            Image::Updated {
                before,
                unknown,
                sent,
                ..
            } => Image::Marked {
                customer_id,
                before,
                unknown,
                sent,
                seen,
            },
            other => other,
        }
    }

    /// The image of item `old` about to get `values`.
    pub fn item(
        row: u64,
        group: usize,
        customer_id: i64,
        group_id: i64,
        old: &FoundItem,
        values: &[ItemValue],
    ) -> Image {
        let before = values
            .iter()
            .map(|v| ItemField {
                field_id: v.field_id,
                value: old
                    .values
                    .iter()
                    .find(|(id, _)| *id == v.field_id)
                    .map_or(Value::Null, |(_, v)| v.clone()),
            })
            .collect();
        let sent: Vec<(String, Value)> = values
            .iter()
            .map(|v| {
                let value = serde_json::to_value(&v.value).unwrap_or(Value::Null);
                (item_field(v.field_id), value)
            })
            .collect();
        Image::Item {
            row,
            group,
            customer_id,
            item_id: old.item_id,
            group_id,
            before,
            sent: signature(&sent),
        }
    }
}

/// Fields and values as a signature: for each field, 4 bytes of its name's
/// hash and 4 of its value's [`current::canonical`] text's, in hex. Two
/// values read as the same ([`current::same`]) sign alike.
pub fn signature(fields: &[(String, Value)]) -> String {
    let sig = crate::hash::field_signature(&crate::hash::fields_of(&canonical(fields)));
    sig.iter().map(|b| format!("{b:02x}")).collect()
}

/// The fields of `now` whose value is not the one `sent` (a
/// [`signature`]) signs: changed since, by someone else.
pub fn differing(sent: &str, now: &[(String, Value)]) -> Vec<String> {
    let bytes: Vec<u8> = (0..sent.len() / 2)
        .filter_map(|i| u8::from_str_radix(sent.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    let (mut changed, _) =
        crate::hash::changed_fields(&bytes, &crate::hash::fields_of(&canonical(now)));
    changed.sort();
    changed
}

/// `{name: canonical text}`, one level (names already flattened).
fn canonical(fields: &[(String, Value)]) -> Value {
    Value::Object(
        fields
            .iter()
            .map(|(f, v)| {
                let plain = f.rsplit('.').next().unwrap_or(f);
                (f.clone(), Value::from(current::canonical(plain, v)))
            })
            .collect(),
    )
}

#[derive(Debug, thiserror::Error)]
#[error("undo file {path}: {source}")]
pub struct ImagesError {
    pub path: String,
    pub source: std::io::Error,
}

/// The undo file beside a ledger.
pub fn path_for(ledger: &Path) -> PathBuf {
    let mut p = ledger.as_os_str().to_owned();
    p.push(".undo.jsonl");
    p.into()
}

/// The open undo file of a run: appended to, each write made durable
/// before the caller goes on.
#[derive(Debug)]
pub struct Images {
    path: PathBuf,
    file: Mutex<File>,
}

impl Images {
    /// Begins the undo file of a new ledger (whose header has
    /// `started_at`): one left there by an older ledger is kept aside as
    /// `<file>.<time>`.
    pub fn create(
        ledger: &Path,
        started_at: &str,
        state: Option<&str>,
    ) -> Result<Arc<Images>, ImagesError> {
        let path = path_for(ledger);
        if path.exists() {
            // The older ledger's: it follows that ledger aside, and so does
            // its undo ledger, so that `undo` of the older run still works.
            let started = first_opened(&path);
            let old_ledger = started.and_then(|s| aside_ledger(ledger, &s));
            set_aside(&path, old_ledger.as_deref().map(path_for)).map_err(|e| io(&path, e))?;
            let record = super::record::path_for(ledger);
            if record.exists() {
                set_aside(&record, old_ledger.as_deref().map(super::record::path_for))
                    .map_err(|e| io(&record, e))?;
            }
        }
        Images::open(path, started_at, state)
    }

    /// Opens the undo file of a ledger continued by `retry` (created if the
    /// run had none).
    pub fn append(
        ledger: &Path,
        started_at: &str,
        state: Option<&str>,
    ) -> Result<Arc<Images>, ImagesError> {
        Images::open(path_for(ledger), started_at, state)
    }

    fn open(
        path: PathBuf,
        started_at: &str,
        state: Option<&str>,
    ) -> Result<Arc<Images>, ImagesError> {
        let file = super::jsonl::open_private(&path).map_err(|e| io(&path, e))?;
        let images = Images {
            path,
            file: Mutex::new(file),
        };
        images.write(&[Image::Opened {
            ledger_started_at: started_at.into(),
            at: crate::ledger::now(),
            state: state.map(str::to_string),
        }])?;
        Ok(Arc::new(images))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends images and waits until they are on disk.
    pub fn write(&self, images: &[Image]) -> Result<(), ImagesError> {
        super::jsonl::append(&self.file, images).map_err(|e| io(&self.path, e))
    }

    /// [`Images::write`] off the async runtime's threads.
    pub async fn record(self: &Arc<Self>, images: Vec<Image>) -> Result<(), ImagesError> {
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.write(&images)).await {
            Ok(r) => r,
            Err(e) => Err(io(&self.path, std::io::Error::other(e.to_string()))),
        }
    }

    /// Records a customer the tool is about to delete, with every field it
    /// has now (as Thulium answered them), before the `DELETE` is sent.
    pub async fn deleted(
        self: &Arc<Self>,
        customer_id: i64,
        fields: Map<String, Value>,
        seen: Option<SeenKeys>,
    ) -> Result<(), ImagesError> {
        self.record(vec![Image::Deleted {
            customer_id,
            fields,
            seen,
        }])
        .await
    }
}

/// Whose ledger an undo file is: its first line's `ledger_started_at`.
fn first_opened(path: &Path) -> Option<String> {
    let mut first = String::new();
    BufReader::new(File::open(path).ok()?)
        .read_line(&mut first)
        .ok()?;
    match serde_json::from_str::<Image>(&first).ok()? {
        Image::Opened {
            ledger_started_at, ..
        } => Some(ledger_started_at),
        _ => None,
    }
}

fn io(path: &Path, source: std::io::Error) -> ImagesError {
    ImagesError {
        path: path.display().to_string(),
        source,
    }
}

/// Reads an undo file: its images in order; lines that cannot be read (a
/// crash mid-write leaves one) are counted, not fatal.
pub fn read(path: &Path) -> Result<(Vec<Image>, usize), ImagesError> {
    let file = File::open(path).map_err(|e| io(path, e))?;
    let mut images = Vec::new();
    let mut bad = 0;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| io(path, e))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Image>(&line) {
            Ok(image) => images.push(image),
            Err(_) => bad += 1,
        }
    }
    Ok((images, bad))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

    #[test]
    fn the_seen_keys_of_a_gone_customer_round_trip_as_hex() {
        let keys = [0u128, 7, u128::MAX];
        let seen = SeenKeys::of("job", &keys);
        assert_eq!(seen.keys[1].len(), 32);
        assert_eq!(seen.hashes(), keys);
    }

    #[test]
    fn an_update_keeps_only_what_it_overwrites_and_signs_what_it_sends() {
        let written = current::Written::of_names(["surname", "name", "custom_fields.Segment"]);
        let now = written.keep(&crate::api::customers::FoundCustomer {
            customer_id: 7,
            fields: json!({"surname": "Stary", "name": "Jan", "custom_fields": {"Segment": "A"}})
                .as_object()
                .unwrap()
                .clone(),
        });
        let payload = json!({"surname": "Nowy", "name": "Jan", "custom_fields": {"Segment": "A"}, "note": "x"});
        let Image::Updated {
            before,
            unknown,
            sent,
            ..
        } = Image::updated(3, 7, &payload, Some(&now))
        else {
            panic!()
        };
        assert_eq!(Value::Object(before), json!({"surname": "Stary"}));
        assert_eq!(unknown, ["note"]);
        // What the run wrote, read back liberally: no difference; a
        // person's edit: named.
        let back = [
            ("surname".to_string(), json!(" Nowy")),
            ("note".to_string(), json!(["x"])),
        ];
        assert!(differing(&sent, &back).is_empty());
        let edited = [
            ("surname".to_string(), json!("Inny")),
            ("note".to_string(), json!("x")),
        ];
        assert_eq!(differing(&sent, &edited), ["surname"]);
    }

    #[test]
    fn the_file_is_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("l.jsonl");
        let images = Images::create(&ledger, "t0", None).unwrap();
        images
            .write(&[Image::created(1, &json!({"surname": "A"}))])
            .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(images.path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::OpenOptions::new()
            .append(true)
            .open(images.path())
            .unwrap()
            .write_all(b"{\"kind\":\"cre")
            .unwrap();
        let (read, bad) = read(images.path()).unwrap();
        assert_eq!((read.len(), bad), (2, 1));
        // A new ledger at the same path: the old file follows the old
        // ledger aside.
        let aside = dir.path().join("l.jsonl.20260101T000000");
        std::fs::write(
            &aside,
            "{\"kind\":\"header\",\"version\":1,\"source\":\"s\",\"source_sha256\":\"\",\"mapping\":\"m\",\"mapping_sha256\":\"\",\"started_at\":\"t0\",\"tool_version\":\"0\"}\n",
        )
        .unwrap();
        Images::create(&ledger, "t1", None).unwrap();
        assert_eq!(super::read(&path_for(&ledger)).unwrap().0.len(), 1);
        assert_eq!(super::read(&path_for(&aside)).unwrap().0.len(), 2);
    }
}
