//! Files kept aside with their ledger: when a ledger is set aside
//! (`--force-new-ledger`, a new export under the same name), its undo file
//! and undo ledger go with it, under the same time.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

/// Moves `path` to `to`, or (none given) to `<path>.<time>`.
pub(super) fn set_aside(path: &Path, to: Option<PathBuf>) -> std::io::Result<()> {
    let to = to.unwrap_or_else(|| {
        PathBuf::from(format!(
            "{}.{}",
            path.display(),
            chrono::Utc::now().format("%Y%m%dT%H%M%S")
        ))
    });
    std::fs::rename(path, to)
}

/// The ledger kept aside from `ledger`'s path (`<ledger>.<time>`, by
/// `--force-new-ledger` or a new export under the same name) whose header
/// has `started_at`, if it is there.
pub(super) fn aside_ledger(ledger: &Path, started_at: &str) -> Option<PathBuf> {
    let name = ledger.file_name()?.to_string_lossy().into_owned();
    let dir = match ledger.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::read_dir(&dir).ok()?.find_map(|e| {
        let e = e.ok()?;
        let n = e.file_name().to_string_lossy().into_owned();
        let time = n.strip_prefix(&name)?.strip_prefix('.')?;
        if time.contains('.') {
            return None;
        }
        let mut first = String::new();
        BufReader::new(File::open(e.path()).ok()?)
            .read_line(&mut first)
            .ok()?;
        match serde_json::from_str::<crate::ledger::Entry>(&first).ok()? {
            crate::ledger::Entry::Header(h) if h.started_at == started_at => Some(e.path()),
            _ => None,
        }
    })
}
