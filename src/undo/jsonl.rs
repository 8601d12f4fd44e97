//! How the undo file and the undo ledger are written, one way for both:
//! private (0600, a file already there included), appended to, each write
//! on disk before the caller goes on.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// Opens `path` for appending, created if absent, readable by its owner
/// only: both files hold what a run wrote (the undo file old values).
pub(super) fn open_private(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    // The mode above applies only to a file that is created; one that was
    // already there (an earlier run's, copied, restored) keeps its own
    // until it is set.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Appends `lines`, one JSON object a line, and waits until they are on
/// disk (one write: a crash cuts at most the last line).
pub(super) fn append<T: Serialize>(file: &Mutex<File>, lines: &[T]) -> std::io::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::with_capacity(lines.len() * 160);
    for line in lines {
        serde_json::to_writer(&mut buf, line).map_err(std::io::Error::other)?;
        buf.push(b'\n');
    }
    let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
    file.write_all(&buf).and_then(|()| file.sync_data())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_file_already_there_is_made_private_and_appended_to() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("u.jsonl");
        std::fs::write(&path, "{\"a\":1}\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let file = Mutex::new(open_private(&path).unwrap());
        append(&file, &[serde_json::json!({"b": 2})]).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
    }
}
