//! `check`: read the whole file offline, map every row, and say which rows
//! would not go through and why. `run --dry-run` shares this path.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::identity::FileKeys;
use crate::ledger::Stage;
use crate::mapping::{self, Evaluated, MappingError, Plan};
use crate::source::{Cells, FieldError, RawRows, Row, Source, SourceError, SourceInfo};

/// A file or mapping that cannot be used at all (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(transparent)]
    Mapping(#[from] MappingError),
    #[error(transparent)]
    Source(#[from] SourceError),
}

pub use crate::source::RowIssue;

/// What `check` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub rows: u64,
    pub valid: u64,
    pub invalid: u64,
    /// Every problem found (a row may have several).
    pub errors: Vec<RowIssue>,
    /// The problems grouped by reason, most rows first (set by
    /// [`CheckReport::grouped`]).
    pub reasons: Vec<crate::reasons::Reason>,
}

impl CheckReport {
    /// The report with its problems grouped by reason.
    pub fn grouped(mut self) -> CheckReport {
        let mut reasons = crate::reasons::Reasons::default();
        for issue in &self.errors {
            let stage = issue.stage.unwrap_or("mapping");
            reasons.add(stage, "invalid", issue.row, issue.line, &issue.to_string());
        }
        self.reasons = reasons.sorted();
        self
    }
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
        Input::open_sheet(csv, mapping_path, None)
    }

    /// As [`Input::open`], reading the spreadsheet's sheet `sheet` (the
    /// command line's `--sheet`) over the mapping's `[source] sheet`.
    pub fn open_sheet(
        csv: &Path,
        mapping_path: &Path,
        sheet: Option<&str>,
    ) -> Result<Input, InputError> {
        let mapping = mapping::load(mapping_path)?.with_sheet(sheet);
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

    /// As [`Input::open`], reading the CSV from `file` (already open at
    /// its start): the job layer surveys the same open file, so that the
    /// bytes hashed are the bytes imported, whatever happens to the path.
    pub fn from_file(
        csv: &Path,
        mapping_path: &Path,
        file: std::fs::File,
        sheet: Option<&str>,
    ) -> Result<Input, InputError> {
        let mapping = mapping::load(mapping_path)?.with_sheet(sheet);
        let options = mapping.source_options()?;
        let source = Source::from_reader(file, csv, &options)?;
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
    check_rows(input, None, |plan, row, ev| {
        on_valid(plan, row, ev);
        Ok(())
    })
}

/// `check --online`: every row, and what the system says of it (a status
/// the row's campaign does not have, an agent not in it, ...): the problems
/// preflight finds per row count as the row's.
pub fn check_online(
    input: &mut Input,
    limit: Option<u64>,
    system: &crate::preflight::System,
) -> Result<CheckReport, InputError> {
    check_rows(input, limit, |plan, row, ev| {
        let mut payloads = plan.assemble(ev, row);
        system.check_row(&mut payloads);
        if payloads.invalid_stages.is_empty() {
            Ok(())
        } else {
            Err(payloads.invalid_stages)
        }
    })
}

/// The first `limit` rows (all without one), one by one: `judge` sees each
/// row that maps and may still find problems with it.
pub fn check_rows(
    input: &mut Input,
    limit: Option<u64>,
    mut judge: impl FnMut(&Plan, &Row, Evaluated) -> Result<(), Vec<(Stage, FieldError)>>,
) -> Result<CheckReport, InputError> {
    let mut report = CheckReport::default();
    let mut file_keys = FileKeys::default();
    while let Some(next) = input.source.next_row() {
        if limit.is_some_and(|l| report.rows >= l) {
            break;
        }
        report.rows += 1;
        match next? {
            Err(bad) => {
                report.invalid += 1;
                report.errors.push(RowIssue::new(bad.id, bad.error));
            }
            Ok(row) => {
                let plan = &input.plan;
                let judged = plan
                    .evaluate(&row)
                    .and_then(Evaluated::checked)
                    .and_then(|ev| {
                        match file_keys.check(row.id, &plan.key_hashes(row.cells.view())) {
                            Some(twice) => Err(vec![twice]),
                            None => Ok(ev),
                        }
                    })
                    .map_err(|errors| errors.into_iter().map(|e| (Stage::Mapping, e)).collect())
                    .and_then(|ev| judge(plan, &row, ev));
                match judged {
                    Ok(()) => report.valid += 1,
                    Err(errors) => {
                        report.invalid += 1;
                        report.errors.extend(errors.into_iter().map(|(stage, e)| {
                            let mut issue = RowIssue::new(row.id, e);
                            issue.stage = (stage != Stage::Mapping).then(|| stage.name());
                            issue
                        }));
                    }
                }
            }
        }
    }
    Ok(report)
}

/// Prints a report for a person: the problems by reason, the first
/// `max_errors` problems row by row, a count of the rest, and the totals.
pub fn print_text(
    out: &mut impl Write,
    report: &CheckReport,
    max_errors: usize,
) -> std::io::Result<()> {
    write!(out, "{}", crate::reasons::render(&report.reasons, 20))?;
    for issue in report.errors.iter().take(max_errors) {
        writeln!(out, "{issue}")?;
    }
    if report.errors.len() > max_errors {
        writeln!(
            out,
            "... and {} more problem(s) (`check --all` lists them, `check --json` gives them all)",
            report.errors.len() - max_errors
        )?;
    }
    if report.rows == 0 {
        writeln!(out, "The file has a header but no data rows.")?;
    } else {
        writeln!(
            out,
            "{} read: {} valid, {} invalid.",
            crate::text::count(report.rows, "row"),
            report.valid,
            report.invalid
        )?;
    }
    Ok(())
}

/// [`check`] on every core: this thread parses the CSV into batches of raw
/// records; workers decode and check them. Batches go back to the reader to
/// be refilled, so no memory is allocated per row, and a row's bytes are
/// read by the worker straight from the batch. The report is the same as
/// [`check`]'s (errors in row order); use it when no row needs to be seen in
/// order (plain `check`).
pub fn check_parallel(input: &mut Input) -> Result<CheckReport, InputError> {
    /// Records per batch, and bytes: large enough that handing a batch over
    /// costs nothing next to checking it, small enough to stay in cache.
    const ROWS: usize = 2048;
    const BYTES: usize = 256 * 1024;
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    if workers == 1 {
        return check(input, |_, _, _| {});
    }
    let Input { source, plan, .. } = input;
    let plan: &Plan = plan;
    let matching = plan.upsert().is_some();
    // Two batches per worker circulate: one being checked, one being filled.
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<RawRows>(workers * 2);
    let (empty_tx, empty_rx) = std::sync::mpsc::sync_channel::<RawRows>(workers * 2);
    for _ in 0..workers * 2 {
        let _ = empty_tx.send(RawRows::default());
    }
    let full_rx = std::sync::Mutex::new(full_rx);
    let decoder = &source.decoder().clone();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (full_rx, empty_tx) = (&full_rx, empty_tx.clone());
                scope.spawn(move || {
                    let mut part = CheckReport::default();
                    let mut keys = Vec::new();
                    let mut scratch = Cells::default();
                    loop {
                        let batch = match full_rx.lock() {
                            Ok(guard) => guard.recv(),
                            Err(_) => break,
                        };
                        let Ok(batch) = batch else { break };
                        for i in 0..batch.len() {
                            let id = batch.id(i);
                            let checked = decoder
                                .decode(&batch, i, &mut scratch)
                                .map_err(|e| vec![e])
                                .and_then(|cells| {
                                    plan.validate_cells(cells).map(|()| {
                                        if matching {
                                            keys.push((id, plan.key_hashes(cells)));
                                        }
                                    })
                                });
                            match checked {
                                Ok(()) => part.valid += 1,
                                Err(errors) => {
                                    part.invalid += 1;
                                    part.errors
                                        .extend(errors.into_iter().map(|e| RowIssue::new(id, e)));
                                }
                            }
                        }
                        // The reader may have stopped; then the batch is dropped.
                        let _ = empty_tx.send(batch);
                    }
                    (part, keys)
                })
            })
            .collect();
        drop(empty_tx);
        let mut report = CheckReport::default();
        let mut failure = None;
        while let Ok(mut batch) = empty_rx.recv() {
            match source.read_rows(&mut batch, ROWS, BYTES) {
                Err(e) => {
                    failure = Some(e);
                    break;
                }
                Ok(0) => break,
                Ok(n) => {
                    report.rows += n as u64;
                    if full_tx.send(batch).is_err() {
                        break;
                    }
                }
            }
        }
        drop(full_tx);
        let mut keys = Vec::new();
        for h in handles {
            if let Ok((part, part_keys)) = h.join() {
                report.valid += part.valid;
                report.invalid += part.invalid;
                report.errors.extend(part.errors);
                keys.extend(part_keys);
            }
        }
        // Two valid rows with one key value: the later one is invalid.
        keys.sort_unstable_by_key(|(id, _)| id.row);
        let mut file_keys = FileKeys::default();
        for (id, hashes) in keys {
            if let Some(twice) = file_keys.check(id, &hashes) {
                report.valid -= 1;
                report.invalid += 1;
                report.errors.push(RowIssue::new(id, twice));
            }
        }
        // Workers finish out of order; a row's own problems stay in order.
        report.errors.sort_by_key(|e| e.row);
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(report),
        }
    })
}
