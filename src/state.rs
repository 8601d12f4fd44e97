//! The sync state (`--state PATH`): what earlier runs sent to one Thulium
//! system, so that the next run of the same full export sends only what
//! changed. An embedded SQLite database (no server to install), created with
//! mode 0600, holding only ids and hashes:
//!
//! - `keys`: a match key's hash (of the key's name and normalised value,
//!   never the value) → the customer's id;
//! - `parts`: per customer and part (`customer`, `field_group:2`,
//!   `campaign`, `campaign_update`) the hash of the payload last sent, and
//!   for a field group the item's id;
//! - `feed`: hashes of the feed messages (text, author, time) sent to a
//!   customer, each written and committed *before* its POST (and taken back
//!   only when the call was refused), so that the state never lags the
//!   ledger on what was sent;
//! - `feed_customers`: the customers whose whole feed history this state
//!   has seen (created by a run that kept it), with how many messages it
//!   holds for them: only for those can it prove a message unsent (the API
//!   cannot list feed records), and only while that count matches its rows;
//! - `seen`: per job (`[source] job`, by default the mapping file) the
//!   match keys (hashes) of the customers its files brought, with the
//!   customer's id and the file (its SHA-256) and time that last brought
//!   each: what `on_gone` compares a complete file with (version 2);
//! - `meta`: the system's URL (a state belongs to one system), the
//!   format's version, and per job the names of the match keys its `seen`
//!   hashes are of (a change of keys is not read as customers gone).
//!
//! The state is a cache derived from the ledger; Thulium is the truth. It is
//! written after the ledger records an outcome, so a crash between the two
//! costs one row sent again (as an idempotent update); deleting it costs
//! the next run its lookups, never correctness. Feed messages, which cannot
//! be sent again harmlessly nor looked up, are the exception: written
//! before they are sent.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use crate::hash::KeyHash;

/// Why the state cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("state {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("state {path}: format version {found}, but this tool reads version {VERSION}: use the tool that wrote it, or start a new state (deleting it costs the next run its lookups, never a duplicate)")]
    Version { path: String, found: String },
    #[error("state {path}: cannot write: {message}")]
    Write { path: String, message: String },
    #[error("state {path} belongs to {recorded}, not {given}: one state file per Thulium system (pass another --state)")]
    OtherSystem {
        path: String,
        recorded: String,
        given: String,
    },
}

/// One thing learnt, to write down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learnt {
    /// A key value belongs to this customer.
    Key { key: KeyHash, customer_id: i64 },
    /// The key value's customer is gone (the state was stale).
    Forget { key: KeyHash },
    /// The customer is gone from Thulium (deleted, or the system restored
    /// from a backup): every key and part remembered for it is forgotten.
    /// What was sent to its contact history is kept: it is proof of a
    /// sending, and ids are not reused by one system.
    ForgetCustomer { customer_id: i64 },
    /// A part of a customer was sent with this payload hash.
    Part {
        customer_id: i64,
        part: String,
        hash: KeyHash,
        item_id: Option<i64>,
    },
    /// A feed message was sent to a customer.
    Feed { customer_id: i64, hash: KeyHash },
    /// The customer's fields as last sent, each a hash of its name and of
    /// its value ([`crate::hash::field_signature`]): what `--max-changes`
    /// names when an export would change too many customers.
    Fields {
        customer_id: i64,
        signature: Vec<u8>,
    },
    /// A customer created by this run: the state sees its feed history from
    /// its start.
    FeedTracked { customer_id: i64 },
    /// A field group's part of a customer is gone (its item was deleted in
    /// Thulium): forget the item and the hash.
    ForgetPart { customer_id: i64, part: String },
}

enum Job {
    Write(Learnt),
    Flush(mpsc::Sender<()>),
}

/// An open sync state.
#[derive(Debug)]
pub struct SyncState {
    path: PathBuf,
    read: Mutex<Connection>,
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The first write that failed, if any: the run ends with an error.
    failed: Arc<Mutex<Option<String>>>,
    /// Opened for `plan`: read as a run reads it, never written (what is
    /// learnt is dropped, what must be written first is answered as the
    /// write would answer).
    read_only: bool,
}

/// Refuses a state recorded for another system, or of a version this one
/// cannot read (newer; an older one is accepted: the caller brings it up
/// to date, or reads it as it is).
fn refuse_other(conn: &Connection, display: &str, system: &str) -> Result<(), StateError> {
    let meta = |name: &str| -> Result<Option<String>, StateError> {
        conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|source| StateError::Sqlite {
            path: display.to_string(),
            source,
        })
    };
    if let Some(recorded) = meta("system")? {
        if system_id(&recorded) != system_id(system) {
            return Err(StateError::OtherSystem {
                path: display.to_string(),
                recorded,
                given: system.into(),
            });
        }
    }
    if let Some(found) = meta("version")?.filter(|v| v != VERSION && !OLDER.contains(&v.as_str())) {
        return Err(StateError::Version {
            path: display.to_string(),
            found,
        });
    }
    Ok(())
}

/// The state's format version: 2 added `seen` (a version 1 state is
/// brought up to it when opened: the table is created, nothing else
/// changes).
pub const VERSION: &str = "2";

/// The versions this tool opens, and brings up to [`VERSION`].
const OLDER: &[&str] = &["1"];

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    key BLOB PRIMARY KEY, customer_id INTEGER NOT NULL, synced_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keys_by_customer ON keys (customer_id);
CREATE TABLE IF NOT EXISTS parts (
    customer_id INTEGER NOT NULL, part TEXT NOT NULL, hash BLOB NOT NULL,
    item_id INTEGER, synced_at TEXT NOT NULL, PRIMARY KEY (customer_id, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS feed (
    customer_id INTEGER NOT NULL, hash BLOB NOT NULL, synced_at TEXT NOT NULL,
    PRIMARY KEY (customer_id, hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS fields (
    customer_id INTEGER PRIMARY KEY, signature BLOB NOT NULL, synced_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feed_customers (
    customer_id INTEGER PRIMARY KEY, sent INTEGER NOT NULL, synced_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    job TEXT NOT NULL, key BLOB NOT NULL, customer_id INTEGER NOT NULL,
    file_sha256 TEXT NOT NULL, seen_at TEXT NOT NULL, PRIMARY KEY (job, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_customer ON seen (job, customer_id);
";

/// Records a feed message as sent (and, for a tracked customer, counts it).
/// Whether the message was new to the state.
fn insert_feed(
    c: &Connection,
    customer_id: i64,
    hash: KeyHash,
    at: &str,
) -> rusqlite::Result<bool> {
    let added = c
        .prepare_cached(
            "INSERT OR IGNORE INTO feed (customer_id, hash, synced_at) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![customer_id, blob(hash), at])?;
    if added > 0 {
        c.prepare_cached(
            "UPDATE feed_customers SET sent = sent + 1, synced_at = ?2 WHERE customer_id = ?1",
        )?
        .execute(params![customer_id, at])?;
    }
    Ok(added > 0)
}

/// A customer created by this run: its feed history starts here. What the
/// state remembers for its id was another customer's (a system restored
/// from a backup gives old ids to new customers), and is forgotten.
fn track_feed(c: &Connection, customer_id: i64, at: &str) -> rusqlite::Result<()> {
    c.prepare_cached("DELETE FROM feed WHERE customer_id = ?1")?
        .execute(params![customer_id])?;
    c.prepare_cached(
        "INSERT INTO feed_customers (customer_id, sent, synced_at) VALUES (?1, 0, ?2) ON CONFLICT(customer_id) DO UPDATE SET sent = 0, synced_at = excluded.synced_at",
    )?
    .execute(params![customer_id, at])?;
    Ok(())
}

fn blob(h: KeyHash) -> [u8; 16] {
    h.to_be_bytes()
}

/// The `meta` row holding a job's match-key names (names only).
fn match_keys_name(job: &str) -> String {
    format!("seen_match_keys:{job}")
}

/// How [`SyncState::record_seen`] treats the job's record besides the
/// customers brought and handled.
#[derive(Debug, Clone, Copy, Default)]
pub struct SeenRecord<'a> {
    /// The names of the match keys the hashes are of (sorted), recorded
    /// with the job.
    pub match_keys: Option<&'a [String]>,
    /// Replace the job's whole record by this file's.
    pub reseed: bool,
}

/// Which Thulium system a root URL names, as one string: scheme and host
/// lower-cased, a default port dropped, a trailing slash dropped, and the
/// loopback names (`localhost`, `127.0.0.1`, `[::1]`) one name. A URL
/// that does not parse is its own (trimmed) text.
pub fn system_id(url: &str) -> String {
    let Ok(parsed) = reqwest::Url::parse(url.trim()) else {
        return url.trim().trim_end_matches('/').to_string();
    };
    let host = parsed.host_str().unwrap_or_default().to_ascii_lowercase();
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || ip
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let host = if loopback { "localhost" } else { host.as_str() };
    let port = parsed.port().map_or(String::new(), |p| format!(":{p}"));
    format!(
        "{}://{host}{port}{}",
        parsed.scheme(),
        parsed.path().trim_end_matches('/')
    )
}

impl SyncState {
    /// Opens (or creates, mode 0600) the state at `path` for the system at
    /// `system` (its root URL); refuses a state of another system.
    pub fn open(path: &Path, system: &str) -> Result<Arc<SyncState>, StateError> {
        let display = path.display().to_string();
        let sql = |source| StateError::Sqlite {
            path: display.clone(),
            source,
        };
        if !path.exists() {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            options.open(path).map_err(|source| StateError::Io {
                path: display.clone(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        // A state of another system, or of a newer version, is refused
        // before anything is written to it (the schema below adds tables).
        let has_meta = conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |_| Ok(()),
            )
            .optional()
            .map_err(sql)?
            .is_some();
        if has_meta {
            refuse_other(&conn, &display, system)?;
        }
        conn.execute_batch(SCHEMA).map_err(sql)?;
        // This connection also makes the writes that must be on disk before
        // a call (feed messages): they wait for the disk.
        conn.execute_batch("PRAGMA synchronous = FULL;")
            .map_err(sql)?;
        let recorded: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE name = 'system'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql)?;
        // Compared as systems, not as strings: `http://localhost:8080/`
        // and `http://127.0.0.1:8080` are one system, and a state refused
        // for the way its URL was typed would cost every lookup again.
        match recorded {
            Some(r) if system_id(&r) != system_id(system) => {
                return Err(StateError::OtherSystem {
                    path: display,
                    recorded: r,
                    given: system.into(),
                })
            }
            Some(_) => {
                let version: Option<String> = conn
                    .query_row("SELECT value FROM meta WHERE name = 'version'", [], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(sql)?;
                match version {
                    Some(v) if OLDER.contains(&v.as_str()) => {
                        // The schema above created what is new.
                        conn.execute(
                            "UPDATE meta SET value = ?1 WHERE name = 'version'",
                            params![VERSION],
                        )
                        .map_err(sql)?;
                    }
                    Some(found) if found != VERSION => {
                        return Err(StateError::Version {
                            path: display,
                            found,
                        });
                    }
                    _ => {}
                }
            }
            None => {
                conn.execute(
                    "INSERT INTO meta (name, value) VALUES ('system', ?1), ('version', ?2)",
                    params![system_id(system), VERSION],
                )
                .map_err(sql)?;
            }
        }
        let write = Connection::open(path).map_err(sql)?;
        write.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let failed = Arc::new(Mutex::new(None));
        let writer_failed = failed.clone();
        let writer = std::thread::spawn(move || writer(write, rx, writer_failed));
        Ok(Arc::new(SyncState {
            path: path.into(),
            read: Mutex::new(conn),
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            failed,
            read_only: false,
        }))
    }

    /// Opens the state at `path` for reading only (`plan`): the same
    /// checks of its system and version, no file created, nothing ever
    /// written. `None` when there is no state there yet (a run would begin
    /// an empty one: it knows nothing).
    pub fn open_read_only(path: &Path, system: &str) -> Result<Option<Arc<SyncState>>, StateError> {
        let display = path.display().to_string();
        if !path.exists() {
            return Ok(None);
        }
        let sql = |source| StateError::Sqlite {
            path: display.clone(),
            source,
        };
        use rusqlite::OpenFlags;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        // A state no run has open (no `-wal` beside it) is read as an
        // immutable file: SQLite then creates no `-wal`/`-shm` beside it,
        // so the plan leaves the folder as it found it. One a run is
        // writing is read through the files that run keeps.
        let conn = if Path::new(&wal).exists() {
            Connection::open_with_flags(path, flags)
        } else {
            let escaped = path
                .to_string_lossy()
                .replace('%', "%25")
                .replace('?', "%3f")
                .replace('#', "%23");
            Connection::open_with_flags(
                format!("file:{escaped}?immutable=1"),
                flags | OpenFlags::SQLITE_OPEN_URI,
            )
        }
        .map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        // An older version reads as it is (what is new in this one, the
        // `seen` table, reads as empty): a run brings it up to date.
        refuse_other(&conn, &display, system)?;
        Ok(Some(Arc::new(SyncState {
            path: path.into(),
            read: Mutex::new(conn),
            tx: Mutex::new(None),
            writer: Mutex::new(None),
            failed: Arc::new(Mutex::new(None)),
            read_only: true,
        })))
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn query<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<Option<T>>) -> Option<T> {
        let conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        match f(&conn) {
            Ok(v) => v,
            Err(e) => {
                // A state that cannot be read is a cache miss: the customer
                // is looked up in Thulium instead.
                tracing::warn!(state = %self.path.display(), error = %e, "Cannot read the state.");
                None
            }
        }
    }

    /// The customer a key value belongs to, as far as earlier runs know.
    pub fn customer_of(&self, key: KeyHash) -> Option<i64> {
        self.query(|c| {
            c.prepare_cached("SELECT customer_id FROM keys WHERE key = ?1")?
                .query_row(params![blob(key)], |r| r.get(0))
                .optional()
        })
    }

    /// The hash of the payload last sent for a part of a customer, and the
    /// item's id for a field group.
    pub fn part(&self, customer_id: i64, part: &str) -> Option<(KeyHash, Option<i64>)> {
        self.query(|c| {
            c.prepare_cached(
                "SELECT hash, item_id FROM parts WHERE customer_id = ?1 AND part = ?2",
            )?
            .query_row(params![customer_id, part], |r| {
                let h: Vec<u8> = r.get(0)?;
                let mut b = [0u8; 16];
                if h.len() == 16 {
                    b.copy_from_slice(&h);
                }
                Ok((u128::from_be_bytes(b), r.get(1)?))
            })
            .optional()
        })
    }

    /// The customer's fields as last sent ([`Learnt::Fields`]).
    pub fn fields(&self, customer_id: i64) -> Option<Vec<u8>> {
        self.query(|c| {
            c.prepare_cached("SELECT signature FROM fields WHERE customer_id = ?1")?
                .query_row(params![customer_id], |r| r.get(0))
                .optional()
        })
    }

    /// How many customers the state knows (has sent a customer payload to).
    pub fn customers_known(&self) -> u64 {
        self.query(|c| {
            c.prepare_cached("SELECT COUNT(*) FROM parts WHERE part = 'customer'")?
                .query_row([], |r| r.get::<_, i64>(0))
                .map(Some)
        })
        .map_or(0, |n| u64::try_from(n).unwrap_or(0))
    }

    /// The file's columns the last run of this state saw.
    pub fn header(&self) -> Option<Vec<String>> {
        let text: String = self.query(|c| {
            c.prepare_cached("SELECT value FROM meta WHERE name = 'header'")?
                .query_row([], |r| r.get(0))
                .optional()
        })?;
        serde_json::from_str(&text).ok()
    }

    /// Records the file's columns (names only: no customer data).
    pub fn set_header(&self, header: &[String]) -> Result<(), StateError> {
        if self.read_only {
            return Ok(());
        }
        let text = serde_json::to_string(header).unwrap_or_default();
        self.write_now(|c, _| {
            c.prepare_cached("INSERT INTO meta (name, value) VALUES ('header', ?1) ON CONFLICT(name) DO UPDATE SET value = excluded.value")?
                .execute(params![text])?;
            Ok(())
        })
    }

    /// The customers earlier files of `job` brought: each match key's hash
    /// with its customer's id.
    pub fn seen(&self, job: &str) -> Vec<(i64, KeyHash)> {
        self.query(|c| {
            let mut stmt = c.prepare_cached("SELECT customer_id, key FROM seen WHERE job = ?1")?;
            let rows = stmt.query_map(params![job], |r| {
                let h: Vec<u8> = r.get(1)?;
                let mut b = [0u8; 16];
                if h.len() == 16 {
                    b.copy_from_slice(&h);
                }
                Ok((r.get::<_, i64>(0)?, u128::from_be_bytes(b)))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map(Some)
        })
        .unwrap_or_default()
    }

    /// Records that a file of `job` (its SHA-256) brought these customers
    /// (key hash → id), and forgets the customers `gone` names (deleted,
    /// marked, or left to another job: handled) first, so that a key this
    /// file brought is never forgotten with them. `reseed`: the job's
    /// whole record is replaced by this file's (its match keys changed:
    /// the hashes recorded before name other keys). `match_keys`: the
    /// names of the keys the hashes are of, recorded with the job. One
    /// transaction, on disk when it returns.
    pub fn record_seen_as(
        &self,
        job: &str,
        file_sha256: &str,
        brought: &[(KeyHash, i64)],
        gone: &[i64],
        seen: SeenRecord<'_>,
    ) -> Result<(), StateError> {
        self.write_now(|c, at| {
            if seen.reseed {
                c.prepare_cached("DELETE FROM seen WHERE job = ?1")?
                    .execute(params![job])?;
            }
            let mut forget =
                c.prepare_cached("DELETE FROM seen WHERE job = ?1 AND customer_id = ?2")?;
            for customer_id in gone {
                forget.execute(params![job, customer_id])?;
            }
            let mut insert = c.prepare_cached("INSERT INTO seen (job, key, customer_id, file_sha256, seen_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(job, key) DO UPDATE SET customer_id = excluded.customer_id, file_sha256 = excluded.file_sha256, seen_at = excluded.seen_at")?;
            for (key, customer_id) in brought {
                insert.execute(params![job, blob(*key), customer_id, file_sha256, at])?;
            }
            if let Some(names) = seen.match_keys {
                let text = serde_json::to_string(names).unwrap_or_default();
                c.prepare_cached("INSERT INTO meta (name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = excluded.value")?
                    .execute(params![match_keys_name(job), text])?;
            }
            Ok(())
        })
    }

    /// [`SyncState::record_seen_as`] with the job's match keys and record
    /// left as they are.
    pub fn record_seen(
        &self,
        job: &str,
        file_sha256: &str,
        brought: &[(KeyHash, i64)],
        gone: &[i64],
    ) -> Result<(), StateError> {
        self.record_seen_as(job, file_sha256, brought, gone, SeenRecord::default())
    }

    /// The names of the match keys `job`'s record in `seen` is of (sorted),
    /// as [`SyncState::record_seen`] last wrote them; `None` for a job not
    /// recorded yet (or recorded before the names were kept).
    pub fn seen_match_keys(&self, job: &str) -> Option<Vec<String>> {
        let text: String = self.query(|c| {
            c.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
                .query_row(params![match_keys_name(job)], |r| r.get(0))
                .optional()
        })?;
        serde_json::from_str(&text).ok()
    }

    /// Another job than `job` whose record in `seen` still holds the
    /// customer (its files still bring it), if any: the first by name.
    pub fn seen_by_another_job(&self, job: &str, customer_id: i64) -> Option<String> {
        self.query(|c| {
            c.prepare_cached(
                "SELECT job FROM seen WHERE customer_id = ?1 AND job <> ?2 ORDER BY job LIMIT 1",
            )?
            .query_row(params![customer_id, job], |r| r.get(0))
            .optional()
        })
    }

    /// Whether this feed message was sent to the customer before.
    pub fn has_feed(&self, customer_id: i64, hash: KeyHash) -> bool {
        self.query(|c| {
            c.prepare_cached("SELECT 1 FROM feed WHERE customer_id = ?1 AND hash = ?2")?
                .query_row(params![customer_id, blob(hash)], |_| Ok(()))
                .optional()
        })
        .is_some()
    }

    /// Whether this state proves that no message was sent to the customer
    /// but those it holds: it has seen the customer's feed history from its
    /// creation, and still holds every message it counted (a state that
    /// lost rows, or an older copy of the customer's rows, proves nothing).
    pub fn knows_feed_of(&self, customer_id: i64) -> bool {
        self.query(|c| {
            c.prepare_cached(
                "SELECT 1 FROM feed_customers f WHERE f.customer_id = ?1 AND f.sent = (SELECT COUNT(*) FROM feed WHERE feed.customer_id = ?1)",
            )?
            .query_row(params![customer_id], |_| Ok(()))
            .optional()
        })
        .is_some()
    }

    /// Writes, and commits durably, that a feed message is about to be
    /// sent, before it is: a crash after the POST then never sends it again.
    /// `track`: the customer was created by this run (its feed history
    /// starts here). An error means the message must not be sent; `false`
    /// that the state holds it already (another row of the run sent it to
    /// the same customer): it must not be sent either.
    pub fn will_send_feed(
        &self,
        customer_id: i64,
        hash: KeyHash,
        track: bool,
    ) -> Result<bool, StateError> {
        if self.read_only {
            // What the write would answer: new unless the state holds it.
            return Ok(track || !self.has_feed(customer_id, hash));
        }
        self.write_now(|c, at| {
            if track {
                track_feed(c, customer_id, at)?;
            }
            insert_feed(c, customer_id, hash, at)
        })
    }

    /// Takes back [`SyncState::will_send_feed`]: the call was refused, so
    /// nothing was created.
    pub fn feed_not_sent(&self, customer_id: i64, hash: KeyHash) -> Result<(), StateError> {
        if self.read_only {
            return Ok(());
        }
        self.write_now(|c, at| {
            let gone = c
                .prepare_cached("DELETE FROM feed WHERE customer_id = ?1 AND hash = ?2")?
                .execute(params![customer_id, blob(hash)])?;
            if gone > 0 {
                c.prepare_cached("UPDATE feed_customers SET sent = sent - 1, synced_at = ?2 WHERE customer_id = ?1")?
                    .execute(params![customer_id, at])?;
            }
            Ok(())
        })
    }

    /// One transaction on the reading connection, committed before it
    /// returns (with `synchronous = FULL` there, so it outlives a power cut
    /// too), for what must be on disk before a call is made.
    fn write_now<T>(
        &self,
        f: impl FnOnce(&Connection, &str) -> rusqlite::Result<T>,
    ) -> Result<T, StateError> {
        let mut conn = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let at = crate::ledger::now();
        (|| {
            let tx = conn.transaction()?;
            let out = f(&tx, &at)?;
            tx.commit()?;
            Ok(out)
        })()
        .map_err(|source| StateError::Sqlite {
            path: self.path.display().to_string(),
            source,
        })
    }

    /// Writes something learnt down (in the background, in batches).
    pub fn learn(&self, learnt: Learnt) {
        if let Some(tx) = &*self.tx.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(Job::Write(learnt));
        }
    }

    /// Waits until everything learnt so far is written; an error if any
    /// write failed (the state would lag what the ledger says was sent).
    pub fn flush(&self) -> Result<(), StateError> {
        let (done, wait) = mpsc::channel();
        if let Some(tx) = &*self.tx.lock().unwrap_or_else(|e| e.into_inner()) {
            if tx.send(Job::Flush(done)).is_ok() {
                let _ = wait.recv();
            }
        }
        match &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(message) => Err(StateError::Write {
                path: self.path.display().to_string(),
                message: message.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Writes what is left and stops the writer.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = w.join();
        }
    }
}

impl Drop for SyncState {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: whatever is queued goes in one transaction.
fn writer(mut conn: Connection, rx: mpsc::Receiver<Job>, failed: Arc<Mutex<Option<String>>>) {
    let now = crate::ledger::now;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while let Ok(more) = rx.try_recv() {
            jobs.push(more);
            if jobs.len() >= 10_000 {
                break;
            }
        }
        let at = now();
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for job in &jobs {
                let Job::Write(l) = job else { continue };
                match l {
                    Learnt::Key { key, customer_id } => {
                        tx.prepare_cached("INSERT INTO keys (key, customer_id, synced_at) VALUES (?1, ?2, ?3) ON CONFLICT(key) DO UPDATE SET customer_id = excluded.customer_id, synced_at = excluded.synced_at")?
                            .execute(params![blob(*key), customer_id, at])?;
                    }
                    Learnt::Forget { key } => {
                        tx.prepare_cached("DELETE FROM keys WHERE key = ?1")?
                            .execute(params![blob(*key)])?;
                    }
                    Learnt::ForgetCustomer { customer_id } => {
                        tx.prepare_cached("DELETE FROM keys WHERE customer_id = ?1")?
                            .execute(params![customer_id])?;
                        tx.prepare_cached("DELETE FROM parts WHERE customer_id = ?1")?
                            .execute(params![customer_id])?;
                        tx.prepare_cached("DELETE FROM fields WHERE customer_id = ?1")?
                            .execute(params![customer_id])?;
                    }
                    Learnt::Part {
                        customer_id,
                        part,
                        hash,
                        item_id,
                    } => {
                        tx.prepare_cached("INSERT INTO parts (customer_id, part, hash, item_id, synced_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(customer_id, part) DO UPDATE SET hash = excluded.hash, item_id = COALESCE(excluded.item_id, parts.item_id), synced_at = excluded.synced_at")?
                            .execute(params![customer_id, part, blob(*hash), item_id, at])?;
                    }
                    Learnt::Feed { customer_id, hash } => {
                        insert_feed(&tx, *customer_id, *hash, &at)?;
                    }
                    Learnt::FeedTracked { customer_id } => {
                        track_feed(&tx, *customer_id, &at)?;
                    }
                    Learnt::Fields {
                        customer_id,
                        signature,
                    } => {
                        tx.prepare_cached("INSERT INTO fields (customer_id, signature, synced_at) VALUES (?1, ?2, ?3) ON CONFLICT(customer_id) DO UPDATE SET signature = excluded.signature, synced_at = excluded.synced_at")?
                            .execute(params![customer_id, signature, at])?;
                    }
                    Learnt::ForgetPart { customer_id, part } => {
                        tx.prepare_cached(
                            "DELETE FROM parts WHERE customer_id = ?1 AND part = ?2",
                        )?
                        .execute(params![customer_id, part])?;
                    }
                }
            }
            tx.commit()
        })();
        if let Err(e) = result {
            // What was sent but not written down could be sent again by
            // the next run: the run ends with an error (exit 3).
            tracing::error!(error = %e, "Cannot write the state.");
            failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| e.to_string());
        }
        for job in jobs {
            if let Job::Flush(done) = job {
                let _ = done.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_system_however_its_url_is_written() {
        let same = [
            "http://localhost:8080",
            "http://127.0.0.1:8080/",
            "HTTP://LocalHost:8080",
            "http://[::1]:8080",
        ];
        for url in same {
            assert_eq!(system_id(url), "http://localhost:8080", "{url}");
        }
        assert_eq!(
            system_id("https://Acme.Thulium.com/"),
            system_id("https://acme.thulium.com:443")
        );
        // Other systems stay other: another port, host, scheme or path.
        for other in [
            "http://localhost:8081",
            "https://localhost:8080",
            "http://10.0.0.1:8080",
            "http://localhost:8080/other",
        ] {
            assert_ne!(system_id(other), system_id(same[0]), "{other}");
        }
        assert_ne!(
            system_id("https://a.thulium.com"),
            system_id("https://b.thulium.com")
        );

        // A state recorded under one spelling (as older states were, the URL
        // as given) opens under another; a new state records the normal form.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        drop(SyncState::open(&path, "http://127.0.0.1:8080/").unwrap());
        let conn = Connection::open(&path).unwrap();
        let recorded: String = conn
            .query_row("SELECT value FROM meta WHERE name = 'system'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(recorded, "http://localhost:8080");
        conn.execute(
            "UPDATE meta SET value = 'HTTP://[::1]:8080/' WHERE name = 'system'",
            [],
        )
        .unwrap();
        drop(conn);
        assert!(SyncState::open(&path, "http://localhost:8080").is_ok());
        assert!(matches!(
            SyncState::open(&path, "http://localhost:9090"),
            Err(StateError::OtherSystem { .. })
        ));
    }

    #[test]
    fn keys_parts_and_feeds_round_trip_and_one_system_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let s = SyncState::open(&path, "https://a.thulium.com").unwrap();
        s.learn(Learnt::Key {
            key: 7,
            customer_id: 13,
        });
        s.learn(Learnt::Part {
            customer_id: 13,
            part: "field_group:2".into(),
            hash: 99,
            item_id: Some(38),
        });
        s.learn(Learnt::Part {
            customer_id: 13,
            part: "field_group:2".into(),
            hash: 100,
            item_id: None,
        });
        s.learn(Learnt::Feed {
            customer_id: 13,
            hash: 5,
        });
        s.flush().unwrap();
        assert_eq!(s.customer_of(7), Some(13));
        assert_eq!(s.customer_of(8), None);
        assert_eq!(s.part(13, "field_group:2"), Some((100, Some(38))));
        assert!(s.has_feed(13, 5) && !s.has_feed(13, 6));
        s.learn(Learnt::Forget { key: 7 });
        s.flush().unwrap();
        assert_eq!(s.customer_of(7), None);
        drop(s);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let e = SyncState::open(&path, "https://b.thulium.com").unwrap_err();
        assert!(
            e.to_string().contains("belongs to https://a.thulium.com"),
            "{e}"
        );
    }

    #[test]
    fn a_version_1_state_is_brought_up_to_version_2_and_keeps_what_it_knew() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let s = SyncState::open(&path, "https://a.thulium.com").unwrap();
        s.learn(Learnt::Key {
            key: 7,
            customer_id: 13,
        });
        s.flush().unwrap();
        drop(s);
        // As version 1 left it: no `seen`, version "1".
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("DROP TABLE seen; UPDATE meta SET value = '1' WHERE name = 'version';")
            .unwrap();
        drop(conn);
        // `plan` reads it as it is (no `seen` yet: nobody seen), writing
        // nothing.
        let before = std::fs::read(&path).unwrap();
        let r = SyncState::open_read_only(&path, "https://a.thulium.com")
            .unwrap()
            .unwrap();
        assert_eq!(r.customer_of(7), Some(13));
        assert!(r.seen("job").is_empty());
        drop(r);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let s = SyncState::open(&path, "https://a.thulium.com").unwrap();
        assert_eq!(s.customer_of(7), Some(13));
        assert!(s.seen("job").is_empty());
        s.record_seen("job", "sha", &[(7, 13), (8, 14)], &[])
            .unwrap();
        s.record_seen("job", "sha2", &[], &[14]).unwrap();
        assert_eq!(s.seen("job"), vec![(13, 7)]);
        assert!(s.seen("other").is_empty());
        // A customer handled and brought again by the same file keeps the
        // keys the file brought.
        s.record_seen("job", "sha3", &[(9, 13)], &[13]).unwrap();
        assert_eq!(s.seen("job"), vec![(13, 9)]);
        // Another job holding the customer, and the match keys recorded.
        assert_eq!(s.seen_by_another_job("job", 13), None);
        let keys = vec!["email".to_string(), "identifier".to_string()];
        s.record_seen_as(
            "other",
            "sha",
            &[(10, 13)],
            &[],
            SeenRecord {
                match_keys: Some(&keys),
                reseed: false,
            },
        )
        .unwrap();
        assert_eq!(s.seen_by_another_job("job", 13).as_deref(), Some("other"));
        assert_eq!(s.seen_by_another_job("other", 13).as_deref(), Some("job"));
        assert_eq!(s.seen_match_keys("other"), Some(keys));
        assert_eq!(s.seen_match_keys("job"), None);
        // A reseed replaces the job's record by the file's.
        s.record_seen_as(
            "job",
            "sha4",
            &[(11, 15)],
            &[],
            SeenRecord {
                match_keys: None,
                reseed: true,
            },
        )
        .unwrap();
        assert_eq!(s.seen("job"), vec![(15, 11)]);
        assert_eq!(s.seen("other"), vec![(13, 10)]);
        drop(s);
        let conn = Connection::open(&path).unwrap();
        let version: String = conn
            .query_row("SELECT value FROM meta WHERE name = 'version'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(version, VERSION);
        // A newer format is still refused.
        conn.execute("UPDATE meta SET value = '9' WHERE name = 'version'", [])
            .unwrap();
        drop(conn);
        let before = std::fs::read(&path).unwrap();
        assert!(matches!(
            SyncState::open(&path, "https://a.thulium.com"),
            Err(StateError::Version { .. })
        ));
        // Refused before anything is written to it.
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
