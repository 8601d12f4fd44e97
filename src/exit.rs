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

impl Exit {
    /// How a command that ended in an error exits: a call error that stops
    /// any run (authentication refused, a redirect, a list whose paging
    /// cannot be trusted) is an abort (3), even before the ledger exists;
    /// anything else is unusable input (2).
    pub fn of_error(e: &anyhow::Error) -> Exit {
        let stops = e.chain().any(|cause| {
            cause.is::<Stopped>()
                || cause
                    .downcast_ref::<crate::api::CallError>()
                    .is_some_and(|c| c.stops_the_run().is_some())
        });
        if stops {
            Exit::Aborted
        } else {
            Exit::Unusable
        }
    }
}

/// An error as a person reads it: the message, then each cause in the
/// chain that it does not already quote. Many errors here quote their
/// cause (`cannot read the ledger: No such file or directory`), and
/// anyhow's `{:#}` would then say it twice.
pub fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CallError;

    #[test]
    fn a_cause_the_message_quotes_is_said_once_and_one_it_does_not_is_added() {
        #[derive(Debug, thiserror::Error)]
        #[error("l.jsonl: cannot read the ledger: {source}")]
        struct Quoting {
            source: std::io::Error,
        }
        let missing = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let e = anyhow::Error::new(Quoting { source: missing() });
        assert_eq!(message(&e), "l.jsonl: cannot read the ledger: No such file");
        let e = anyhow::Error::new(missing()).context("reading l.jsonl");
        assert_eq!(message(&e), "reading l.jsonl: No such file");
    }

    #[test]
    fn an_error_that_stops_the_run_exits_3_even_with_context() {
        let paging = CallError::Paging {
            message: "the server ignores `offset`".into(),
        };
        let e = anyhow::Error::new(paging.clone());
        assert_eq!(Exit::of_error(&e), Exit::Aborted);
        let e = anyhow::Error::new(paging).context("reading the index");
        assert_eq!(Exit::of_error(&e), Exit::Aborted);
        let gave_up = CallError::GaveUp {
            status: Some(500),
            message: "x".into(),
        };
        assert_eq!(Exit::of_error(&anyhow::Error::new(gave_up)), Exit::Unusable);
        assert_eq!(Exit::of_error(&anyhow::anyhow!("bad flag")), Exit::Unusable);
    }
}
