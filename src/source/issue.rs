//! One problem with one row, as a person reads it (`line 24, column
//! "Telefon": value "601 234 56x": letters in a phone number`) and as
//! `check --json` and the ledger's messages carry it.

use serde::Serialize;

use super::{FieldError, RowId};

/// One problem with one row, as `check --json` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RowIssue {
    pub row: u64,
    pub line: u64,
    /// The stage the problem is at, when it is one stage's (what `check
    /// --online` finds); absent for a row that cannot be read or mapped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub reason: String,
}

impl RowIssue {
    pub fn new(id: RowId, e: FieldError) -> RowIssue {
        RowIssue {
            row: id.row,
            line: id.line,
            stage: None,
            column: e.column,
            value: e.value,
            reason: e.reason,
        }
    }
}

impl std::fmt::Display for RowIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(c) = &self.column {
            write!(f, ", column \"{c}\"")?;
        }
        if let Some(v) = &self.value {
            write!(f, ": value \"{v}\"")?;
        }
        write!(f, ": {}", self.reason)
    }
}
