//! `check`: read the whole file offline, map every row, and say which rows
//! would not go through and why. `run --dry-run` shares this path.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::mapping::{self, Evaluated, MappingError, Plan};
use crate::source::{FieldError, Row, RowId, Source, SourceError, SourceInfo};

/// A file or mapping that cannot be used at all (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// One problem with one row, as `check --json` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RowIssue {
    pub row: u64,
    pub line: u64,
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

/// What `check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub rows: u64,
    pub valid: u64,
    pub invalid: u64,
    /// Every problem found (a row may have several).
    pub errors: Vec<RowIssue>,
}

/// A mapping and a file, opened and compiled: ready to read rows.
#[derive(Debug)]
pub struct Input {
    pub csv: PathBuf,
    pub mapping: mapping::Loaded,
    pub plan: Plan,
    pub source: Source<std::fs::File>,
}

impl Input {
    /// Loads the mapping, opens the file with its `[source]` options and
    /// compiles the mapping against the header.
    pub fn open(csv: &Path, mapping_path: &Path) -> Result<Input, InputError> {
        let mapping = mapping::load(mapping_path)?;
        let options = mapping.source_options()?;
        let source = Source::open(csv, &options)?;
        let plan = mapping::compile(&mapping, source.header())?;
        Ok(Input {
            csv: csv.into(),
            mapping,
            plan,
            source,
        })
    }

    /// What was sniffed or assumed about the file.
    pub fn info(&self) -> &SourceInfo {
        self.source.info()
    }
}

/// Evaluates every row (every value computed and checked, payloads not
/// assembled); `on_valid` sees each valid row and can assemble its payloads
/// with [`Plan::assemble`].
pub fn check(
    input: &mut Input,
    mut on_valid: impl FnMut(&Plan, &Row, Evaluated),
) -> Result<CheckReport, InputError> {
    let mut report = CheckReport {
        rows: 0,
        valid: 0,
        invalid: 0,
        errors: Vec::new(),
    };
    while let Some(next) = input.source.next_row() {
        report.rows += 1;
        match next? {
            Err(bad) => {
                report.invalid += 1;
                report.errors.push(RowIssue::new(bad.id, bad.error));
            }
            Ok(row) => match input.plan.evaluate(&row) {
                Ok(evaluated) => {
                    report.valid += 1;
                    on_valid(&input.plan, &row, evaluated);
                }
                Err(errors) => {
                    report.invalid += 1;
                    report
                        .errors
                        .extend(errors.into_iter().map(|e| RowIssue::new(row.id, e)));
                }
            },
        }
    }
    Ok(report)
}

/// Prints a report for a person: the first `max_errors` problems, a count of
/// the rest, and the totals.
pub fn print_text(
    out: &mut impl Write,
    report: &CheckReport,
    max_errors: usize,
) -> std::io::Result<()> {
    for issue in report.errors.iter().take(max_errors) {
        writeln!(out, "{issue}")?;
    }
    if report.errors.len() > max_errors {
        writeln!(
            out,
            "... and {} more problem(s) (use --json for all)",
            report.errors.len() - max_errors
        )?;
    }
    if report.rows == 0 {
        writeln!(out, "The file has a header but no data rows.")?;
    } else {
        writeln!(
            out,
            "{} rows read: {} valid, {} invalid.",
            report.rows, report.valid, report.invalid
        )?;
    }
    Ok(())
}
