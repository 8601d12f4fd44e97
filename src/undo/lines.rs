//! The undo files' lines: the undo file (`<LEDGER>.undo.jsonl`) and the
//! undo ledger (`<LEDGER>.undo-ledger.jsonl`) are both JSON lines,
//! appended and on disk before the call they vouch for goes on.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// Opens the file at `path` to append to, created if need be, readable by
/// its owner only (0600: the undo file holds customers' old values).
pub(super) fn open(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Appends `entries` to `file`, one JSON line each, and waits until they
/// are on disk (`sync_data`): a crash after it returns loses none.
pub(super) fn append<T: Serialize>(file: &Mutex<File>, entries: &[T]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(entries.len() * 160);
    for e in entries {
        serde_json::to_writer(&mut buf, e).map_err(std::io::Error::other)?;
        buf.push(b'\n');
    }
    let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
    file.write_all(&buf).and_then(|()| file.sync_data())
}
