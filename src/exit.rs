//! The documented exit codes. Scripts and cron jobs branch on these, so they
//! are a public contract (see `README.md`, "Exit codes").

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every row done (`check`: every row valid).
    Ok = 0,
    /// Finished, but some rows are not done (`check`: some rows invalid).
    RowsNotDone = 1,
    /// Unusable input: the mapping, the file or the flags; nothing was sent.
    Unusable = 2,
    /// Aborted: authentication refused, circuit breaker, failure threshold,
    /// or Ctrl-C. The ledger is consistent.
    Aborted = 3,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

/// A command that stopped before sending anything because the system cannot
/// be worked with (it cannot be reached, or refuses the credentials): exit
/// code 3, an aborted night, not 2 (the input is fine).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Stopped(pub String);
