//! The ledger: an append-only JSON Lines file that records every row's
//! outcome per stage, so that the run can be reported, resumed and retried
//! without duplicates.
//!
//! Line 1 is a header (source and mapping with their SHA-256, tool version);
//! then `row` events (one row, one stage, one status), `intent` events (rows
//! about to be sent in a call that is not idempotent) and a final `end`
//! event, after which `gone` events may follow (customers in no row of a
//! complete file: `[customer] on_gone`). Writes go through one thread that batches whatever is queued into
//! one write and one `fsync` (group commit), and a caller waits for its
//! entries to be durable before it sends anything that depends on them.
//!
//! The ledger holds ids, statuses and messages; it is created with mode 0600
//! because messages can quote a cell of the row.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// A pipeline stage, as the ledger names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Mapping,
    Customer,
    FieldGroup,
    Campaign,
    CampaignUpdate,
    Feed,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 6] = [
        Stage::Mapping,
        Stage::Customer,
        Stage::FieldGroup,
        Stage::Campaign,
        Stage::CampaignUpdate,
        Stage::Feed,
    ];

    /// The stages that send something, in pipeline order.
    pub const SENDING: [Stage; 5] = [
        Stage::Customer,
        Stage::FieldGroup,
        Stage::Campaign,
        Stage::CampaignUpdate,
        Stage::Feed,
    ];

    /// The stage's place in [`Stage::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Stage::Mapping => "mapping",
            Stage::Customer => "customer",
            Stage::FieldGroup => "field_group",
            Stage::Campaign => "campaign",
            Stage::CampaignUpdate => "campaign_update",
            Stage::Feed => "feed",
        }
    }
}

/// A row's status at one stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Failed,
    Invalid,
    Unknown,
    Skipped,
}

impl Status {
    /// How bad the status is: a row's overall status is its worst stage's,
    /// by the precedence invalid > failed > unknown > skipped > ok.
    pub fn severity(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Skipped => 1,
            Status::Unknown => 2,
            Status::Failed => 3,
            Status::Invalid => 4,
        }
    }

    /// The name the ledger and the reports use.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Invalid => "invalid",
            Status::Unknown => "unknown",
            Status::Skipped => "skipped",
        }
    }
}

/// What became of a row's customer (on `customer` events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Created by this run.
    Created,
    /// Matched, and changed by an update.
    Updated,
    /// Matched, and what would be sent is what was sent before (`--state`):
    /// nothing sent. Other stages carry it too when they send nothing.
    Unchanged,
    /// Found after a creation of unknown outcome: it was created after all.
    Adopted,
    /// Matched, and left as it is (`on_match = "skip"`).
    SkippedExisting,
    /// Not found, and not created (`on_missing = "skip"`).
    SkippedMissing,
    /// On a later stage, not a customer's: what the row asked for was not
    /// done and cannot be done (or proven undone) through the API, so it is
    /// left as Thulium has it: a campaign record already there whose status
    /// the API cannot change, a feed message that no state proves unsent.
    /// `ok`, because sending again would not help; the message says why.
    Kept,
    /// On a `gone` entry: a customer an earlier file of the job brought,
    /// missing from a complete file, deleted (`on_gone = "delete"`).
    Deleted,
    /// On a `gone` entry: such a customer marked (`on_gone = { custom_field
    /// = ..., value = ... }`).
    Marked,
    /// On a `gone` entry: such a customer listed, nothing sent
    /// (`on_gone = "report"`).
    Gone,
}

impl Action {
    pub const ALL: [Action; 10] = [
        Action::Created,
        Action::Updated,
        Action::Unchanged,
        Action::Adopted,
        Action::SkippedExisting,
        Action::SkippedMissing,
        Action::Kept,
        Action::Deleted,
        Action::Marked,
        Action::Gone,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Updated => "updated",
            Action::Unchanged => "unchanged",
            Action::Adopted => "adopted",
            Action::SkippedExisting => "skipped_existing",
            Action::SkippedMissing => "skipped_missing",
            Action::Kept => "kept",
            Action::Deleted => "deleted",
            Action::Marked => "marked",
            Action::Gone => "gone",
        }
    }
}

/// First line of a ledger.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Header {
    pub version: u32,
    pub source: String,
    pub source_sha256: String,
    pub mapping: String,
    pub mapping_sha256: String,
    pub started_at: String,
    pub tool_version: String,
    /// The sheet `run --sheet` read, over the mapping's `[source] sheet`:
    /// `retry` and the failed-rows CSV read the same rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sheet: Option<String>,
}

/// One row's outcome at one stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RowEvent {
    pub row: u64,
    pub line: u64,
    pub offset: u64,
    pub stage: Option<Stage>,
    pub status: Option<Status>,
    /// For `field_group`: which `[[field_group]]` of the mapping (0-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Whether the failure may succeed if sent again unchanged (429s, 5xx on
    /// idempotent calls, connection errors), as opposed to a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconciled: Option<bool>,
    /// What became of the customer (or, `unchanged`, that nothing was sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// A short fingerprint of the row's identifier (8 hex digits of a hash,
    /// never the value): `retry --source` refuses a copy whose rows moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp: Option<String>,
}

/// Rows about to be sent in a call that is not idempotent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Intent {
    pub stage: Stage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<usize>,
    pub rows: Vec<u64>,
}

/// The last line of a finished (or aborted) run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct End {
    pub rows_read: u64,
    pub finished_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// The source failed after `rows_read` rows (an I/O error): the rows
    /// after them were never read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_error: Option<String>,
    /// A pilot (`run --limit N`) stopped after N rows; the rows after them
    /// were not read (`retry` sends them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// `[customer] on_gone` was not applied to this file, and why (a row
    /// whose match keys cannot be read, a pilot, the match keys changed):
    /// written with a second `end` after the run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_gone: Option<String>,
}

/// The start of a `retry` on an existing ledger.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub started_at: String,
    pub source: String,
    pub source_sha256: String,
    pub mapping: String,
    pub mapping_sha256: String,
    pub tool_version: String,
    #[serde(default)]
    pub include_unknown: bool,
}

/// What became of a customer that is in no row: one an earlier file of
/// the job brought and this complete file lacks (`[customer] on_gone`).
/// Written after the run's `end`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GoneEvent {
    pub customer_id: i64,
    pub status: Option<Status>,
    /// `deleted`, `marked` or `gone` (reported) when `ok`; what was tried
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

/// One ledger line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    Header(Header),
    Attempt(Attempt),
    Row(RowEvent),
    Intent(Intent),
    End(End),
    /// A customer gone from the export (no row: see [`GoneEvent`]).
    Gone(GoneEvent),
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("{path}: a ledger already exists here; use `thulium-import retry {path}` to continue that import, or --force-new-ledger to start over (the old ledger is kept as {path}.<time>)")]
    Exists { path: String },
    #[error("ledger {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "ledger {path}: the ledger writer stopped after an earlier error; nothing more is sent"
    )]
    Closed { path: String },
    #[error("{path}: the ledger is in use by {holder}; one process at a time works on a ledger (wait for it to end, or stop it)")]
    Busy { path: String, holder: String },
}

/// Whether a new ledger can be created at `path` as `existing` says: not
/// over a ledger without `--force-new-ledger`, not from under a process
/// still using one. Checked before anything is asked of the system.
pub fn check_free(path: &Path, existing: Existing) -> Result<(), LedgerError> {
    if !path.exists() {
        return Ok(());
    }
    match existing {
        Existing::Refuse => Err(LedgerError::Exists {
            path: path.display().to_string(),
        }),
        Existing::KeepAside | Existing::Replace => LedgerLock::acquire(path, "run").map(drop),
    }
}

/// An exclusive advisory lock on a ledger, held by `run`, `retry` and
/// `report --failed-csv` for their whole run, so that two processes never
/// work on one ledger (a cron job overlapping the night before's). Who holds
/// it, and since when, is written beside it in `<ledger>.lock` for the
/// message a second process prints; the lock itself is the kernel's, so a
/// crash releases it.
#[derive(Debug)]
pub struct LedgerLock {
    _file: File,
    info: PathBuf,
}

impl LedgerLock {
    /// Takes the lock on the ledger at `path` (which must exist) for
    /// `command`, or says who holds it.
    pub fn acquire(path: &Path, command: &str) -> Result<LedgerLock, LedgerError> {
        let io = |e| LedgerError::Io {
            path: path.display().to_string(),
            source: e,
        };
        let file = File::open(path).map_err(io)?;
        let info = lock_info_path(path);
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&info)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "another process".into());
                return Err(LedgerError::Busy {
                    path: path.display().to_string(),
                    holder,
                });
            }
            // A file system without locks (some network mounts): go on,
            // saying so.
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(ledger = %path.display(), error = %e, "Cannot lock the ledger; make sure no other process uses it.");
            }
        }
        let text = format!(
            "process {} (`thulium-import {command}`) since {}\n",
            std::process::id(),
            now()
        );
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        if let Ok(mut f) = options.open(&info) {
            let _ = f.write_all(text.as_bytes());
        }
        Ok(LedgerLock { _file: file, info })
    }
}

impl Drop for LedgerLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.info);
    }
}

fn lock_info_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    p.into()
}

/// What to do with a ledger already at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Refuse to start (the default: use `retry` to continue).
    Refuse,
    /// Rename it to `<path>.<time>` (`--force-new-ledger`).
    KeepAside,
    /// Remove it (a rehearsal against the in-process sandbox).
    Replace,
}

type Job = (Vec<u8>, oneshot::Sender<Result<(), String>>);

/// Where a ledger's lines go: its file (written, then synced), or for
/// `plan` a reader in memory that keeps what it needs and writes nothing.
pub trait Sink: Send + 'static {
    /// Appends whole lines; on return they are as durable as the sink makes
    /// them.
    fn append(&mut self, lines: &[u8]) -> std::io::Result<()>;
}

impl Sink for File {
    fn append(&mut self, lines: &[u8]) -> std::io::Result<()> {
        self.write_all(lines)?;
        self.sync_data()
    }
}

/// The writing side of a ledger, holding its lock (a ledger in memory has
/// none).
#[derive(Debug, Clone)]
pub struct Ledger {
    path: PathBuf,
    tx: std::sync::mpsc::Sender<Job>,
    _lock: Option<std::sync::Arc<LedgerLock>>,
}

impl Ledger {
    /// Creates a new ledger (never overwrites one) with mode 0600, locks it
    /// for `command` and writes the header durably.
    pub fn create(
        path: &Path,
        header: Header,
        existing: Existing,
        command: &str,
    ) -> Result<Ledger, LedgerError> {
        let io = |e| LedgerError::Io {
            path: path.display().to_string(),
            source: e,
        };
        if path.exists() {
            match existing {
                Existing::Refuse => {
                    return Err(LedgerError::Exists {
                        path: path.display().to_string(),
                    })
                }
                Existing::KeepAside => {
                    // Not from under a process still writing it.
                    let _busy = LedgerLock::acquire(path, command)?;
                    let aside = format!(
                        "{}.{}",
                        path.display(),
                        chrono::Utc::now().format("%Y%m%dT%H%M%S")
                    );
                    std::fs::rename(path, aside).map_err(io)?;
                }
                Existing::Replace => {
                    let _busy = LedgerLock::acquire(path, command)?;
                    std::fs::remove_file(path).map_err(io)?
                }
            }
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        let lock = LedgerLock::acquire(path, command)?;
        let mut line = serde_json::to_vec(&Entry::Header(header)).unwrap_or_default();
        line.push(b'\n');
        file.write_all(&line).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Ledger::spawn(path, Box::new(file), Some(lock)))
    }

    /// A ledger whose lines go to `sink` and to no file (`plan`: the run's
    /// outcomes are read back as they come, nothing is kept on disk).
    pub fn in_memory(sink: Box<dyn Sink>) -> Ledger {
        Ledger::spawn(Path::new("(in memory)"), sink, None)
    }

    /// Opens an existing ledger for appending (retry), under its lock.
    pub fn append_to(path: &Path, lock: LedgerLock) -> Result<Ledger, LedgerError> {
        let io = |e| LedgerError::Io {
            path: path.display().to_string(),
            source: e,
        };
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(io)?;
        Ok(Ledger::spawn(path, Box::new(file), Some(lock)))
    }

    fn spawn(path: &Path, file: Box<dyn Sink>, lock: Option<LedgerLock>) -> Ledger {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let display = path.display().to_string();
        std::thread::spawn(move || writer(file, rx, display));
        Ledger {
            path: path.into(),
            tx,
            _lock: lock.map(std::sync::Arc::new),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends entries and waits until they are on disk.
    pub async fn write(&self, entries: &[Entry]) -> Result<(), LedgerError> {
        let mut buf = Vec::with_capacity(entries.len() * 128);
        for e in entries {
            serde_json::to_writer(&mut buf, e).map_err(|e| LedgerError::Io {
                path: self.path.display().to_string(),
                source: std::io::Error::other(e),
            })?;
            buf.push(b'\n');
        }
        let (done, wait) = oneshot::channel();
        let closed = || LedgerError::Closed {
            path: self.path.display().to_string(),
        };
        self.tx.send((buf, done)).map_err(|_| closed())?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(LedgerError::Io {
                path: self.path.display().to_string(),
                source: std::io::Error::other(message),
            }),
            Err(_) => Err(closed()),
        }
    }
}

/// The writer thread: drains what is queued, writes it, syncs once, acks
/// all. After an error every later job fails: nothing is sent that cannot
/// be recorded.
fn writer(mut file: Box<dyn Sink>, rx: std::sync::mpsc::Receiver<Job>, path: String) {
    let mut failed: Option<String> = None;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(more) = rx.try_recv() {
            jobs.push(more);
        }
        if failed.is_none() {
            let mut buf = Vec::new();
            for (bytes, _) in &jobs {
                buf.extend_from_slice(bytes);
            }
            if let Err(e) = file.append(&buf) {
                tracing::error!(ledger = %path, error = %e, "Cannot write the ledger.");
                failed = Some(e.to_string());
            }
        }
        for (_, done) in jobs {
            let _ = done.send(match &failed {
                None => Ok(()),
                Some(m) => Err(m.clone()),
            });
        }
    }
}

/// What reading a ledger found besides its entries.
#[derive(Debug, Default)]
pub struct ReadNotes {
    /// Lines that could not be parsed (a crash mid-write leaves one last).
    pub bad_lines: Vec<(u64, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: cannot read the ledger: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a thulium-import ledger (the first line is not a ledger header)")]
    NotALedger { path: String },
}

/// Reads a ledger, calling `f` for every entry after the header; unreadable
/// lines are skipped and reported in the notes.
pub fn read(path: &Path, mut f: impl FnMut(Entry)) -> Result<(Header, ReadNotes), ReadError> {
    let io = |e| ReadError::Io {
        path: path.display().to_string(),
        source: e,
    };
    let file = File::open(path).map_err(io)?;
    let mut lines = BufReader::new(file);
    let mut buf = Vec::new();
    let mut notes = ReadNotes::default();
    let mut header = None;
    let mut n = 0u64;
    loop {
        buf.clear();
        if lines.read_until(b'\n', &mut buf).map_err(io)? == 0 {
            break;
        }
        n += 1;
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<Entry>(text) {
            Ok(Entry::Header(h)) if header.is_none() => header = Some(h),
            Ok(_) if header.is_none() => {
                return Err(ReadError::NotALedger {
                    path: path.display().to_string(),
                })
            }
            Ok(e) => f(e),
            Err(_) if header.is_none() => {
                return Err(ReadError::NotALedger {
                    path: path.display().to_string(),
                })
            }
            Err(e) => notes.bad_lines.push((n, format!("line {n}: {e}"))),
        }
    }
    let header = header.ok_or_else(|| ReadError::NotALedger {
        path: path.display().to_string(),
    })?;
    Ok((header, notes))
}

/// The fingerprint of an identifier: the first four bytes of its SHA-256.
pub fn fingerprint(identifier: &str) -> u32 {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(identifier.as_bytes());
    u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]])
}

/// A fingerprint as the ledger writes it.
pub fn format_fingerprint(fp: u32) -> String {
    format!("{fp:08x}")
}

/// A fingerprint as the ledger wrote it.
pub fn parse_fingerprint(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 16).ok()
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let mut file = File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Now, as the ledger writes times (RFC 3339, UTC).
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
