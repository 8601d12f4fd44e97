//! `report --failed-csv`: the rows that are not done, as a CSV a person can
//! fix in a spreadsheet and import again with the same mapping.
//!
//! The file has the source's own header and cells (re-read from the source,
//! in its delimiter and encoding unless `--utf8`), plus `_row`, `_line`,
//! `_stage`, `_status`, `_error`, `_customer_id`, `_done` and `_unknown`.
//! When it is imported with the same mapping, a row with `_customer_id`
//! skips customer creation, the stages listed in `_done` (each field group
//! by its own name, `field_group:2`) are not sent again, and those in
//! `_unknown` (sent, outcome unknown) are looked up first — a customer by
//! its identifier, an item among the customer's items — or, where nothing
//! can be looked up, left out unless `--include-unknown`: the round trip
//! never creates anything twice.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ledger::{Stage, Status};
use crate::outcomes::Outcomes;
use crate::source::{Source, SourceError, SourceOptions};

/// Why the failed-rows CSV could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FailedCsvError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The bookkeeping columns added after the source's own.
pub const COLUMNS: [&str; 8] = [
    "_row",
    "_line",
    "_stage",
    "_status",
    "_error",
    "_customer_id",
    "_done",
    "_unknown",
];

/// Writes the rows of `outcomes` that are not done; returns how many.
/// `field_group_names[i]` is how `_done` names the mapping's i-th field
/// group ([`crate::mapping::field_group_done_names`]).
pub fn write(
    outcomes: &Outcomes,
    out_path: &Path,
    utf8: bool,
    field_group_names: &[String],
) -> Result<u64, FailedCsvError> {
    let io = |source| FailedCsvError::Write {
        path: out_path.into(),
        source,
    };
    let header = &outcomes.header;
    let source_path = Path::new(&header.source);
    // The mapping's [source] says how the file is read; without it, sniff.
    let options: SourceOptions = crate::mapping::load(Path::new(&header.mapping))
        .and_then(|m| m.source_options())
        .unwrap_or_default();
    let mut source = Source::open(source_path, &options)?;
    let info = source.info().clone();
    let (delimiter, encoding) = if utf8 {
        (b',', encoding_rs::UTF_8)
    } else {
        (info.delimiter, info.encoding)
    };
    let mut file_options = std::fs::OpenOptions::new();
    file_options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut file_options, 0o600);
    let file = file_options.open(out_path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    let mut out = std::io::BufWriter::new(file);
    let mut builder = csv::WriterBuilder::new();
    builder
        .delimiter(delimiter)
        .terminator(csv::Terminator::CRLF);
    let emit = |fields: &[String], out: &mut std::io::BufWriter<std::fs::File>| {
        let mut line = builder.from_writer(Vec::new());
        line.write_record(fields)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let bytes = line
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let text = String::from_utf8_lossy(&bytes);
        let (bytes, _, unmappable) = encoding.encode(&text);
        if unmappable {
            // Characters the encoding lacks become '?', not HTML escapes.
            let safe: String = text
                .chars()
                .map(|c| {
                    if encoding.encode(&c.to_string()).2 {
                        '?'
                    } else {
                        c
                    }
                })
                .collect();
            out.write_all(&encoding.encode(&safe).0)
        } else {
            out.write_all(&bytes)
        }
    };
    let mut columns: Vec<String> = source.header().to_vec();
    let width = columns.len();
    columns.extend(COLUMNS.map(String::from));
    emit(&columns, &mut out).map_err(io)?;
    let mut written = 0;
    while let Some(next) = source.next_row() {
        let (id, cells) = match next? {
            Ok(row) => (
                row.id,
                row.cells.iter().map(str::to_string).collect::<Vec<_>>(),
            ),
            // A row that could not be read is written with the cells that
            // could (a spreadsheet's, but for its error cell), or empty
            // cells: fix it in the source file.
            Err(bad) => (
                bad.id,
                bad.cells
                    .map(|c| c.iter().map(str::to_string).collect())
                    .unwrap_or_else(|| vec![String::new(); width]),
            ),
        };
        let view = outcomes.row(id.row);
        if outcomes.ended() && view.is_some_and(|v| v.is_done()) {
            continue;
        }
        let mut first_bad = None;
        let mut done: Vec<String> = Vec::new();
        let mut unknown: Vec<String> = Vec::new();
        let mut customer_id = String::new();
        if let Some(view) = view {
            if let Some(id) = view.customer_id() {
                customer_id = id.to_string();
            }
            for (stage, group, outcome) in view.all() {
                let name = || match stage {
                    Stage::FieldGroup => field_group_names
                        .get(group)
                        .cloned()
                        .unwrap_or_else(|| format!("field_group#{}", group + 1)),
                    other => other.name().into(),
                };
                if outcome.status == Status::Unknown {
                    unknown.push(name());
                }
                if outcome.status == Status::Ok {
                    if stage != Stage::Mapping {
                        done.push(name());
                    }
                } else if first_bad.is_none() {
                    first_bad = Some((
                        stage,
                        outcome.status,
                        view.message(stage, group).unwrap_or_default().to_string(),
                    ));
                }
            }
            if first_bad.is_none() && view.is_done() {
                continue;
            }
        }
        let (stage, status, error) = match first_bad {
            Some((stage, status, message)) => {
                (stage.name().to_string(), status.name().to_string(), message)
            }
            None => (
                String::new(),
                "not_sent".to_string(),
                "never sent: the run stopped first".to_string(),
            ),
        };
        let mut fields = cells;
        fields.resize(width, String::new());
        fields.extend([
            id.row.to_string(),
            id.line.to_string(),
            stage,
            status,
            error,
            customer_id,
            done.join(","),
            unknown.join(","),
        ]);
        emit(&fields, &mut out).map_err(io)?;
        written += 1;
    }
    out.flush().map_err(io)?;
    Ok(written)
}
