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
//!
//! With `--utf8` the file is UTF-8 with commas, which the mapping's
//! `[source]` may not say: a copy of the mapping that does
//! ([`write_utf8_mapping`], `<failed>.mapping.toml`) is written beside it,
//! so the round trip needs no hand edit.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use encoding_rs::Encoding;

use crate::ledger::{Stage, Status};
use crate::outcomes::{Outcomes, RowView};
use crate::source::{Row, RowError, RowId, Source, SourceError, SourceInfo, SourceOptions};

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
    let mut source = open_source(outcomes)?;
    let format = LineFormat::new(source.info(), utf8);
    let mut out = create_private(out_path).map_err(io)?;
    let width = source.header().len();
    format
        .write(&header_fields(source.header()), &mut out)
        .map_err(io)?;
    let mut written = 0;
    while let Some(next) = source.next_row() {
        let (id, cells) = id_and_cells(next?, width);
        let Some(bookkeeping) = Bookkeeping::of(outcomes, id.row, field_group_names) else {
            continue;
        };
        format
            .write(&bookkeeping.after(cells, width, id), &mut out)
            .map_err(io)?;
        written += 1;
    }
    out.flush().map_err(io)?;
    Ok(written)
}

/// Opens the source the ledger was written from, as the run read it.
fn open_source(outcomes: &Outcomes) -> Result<Source<File>, SourceError> {
    let header = &outcomes.header;
    // The mapping's [source] says how the file is read; without it, sniff.
    let mut options: SourceOptions = crate::mapping::load(Path::new(&header.mapping))
        .and_then(|m| m.source_options())
        .unwrap_or_default();
    // The sheet the run read, if `run --sheet` chose it.
    if let Some(sheet) = &header.sheet {
        options.sheet = Some(sheet.clone());
    }
    Source::open(Path::new(&header.source), &options)
}

/// Creates (or empties) the file at `path`, readable by its owner only:
/// the rows hold customers' data.
fn create_private(path: &Path) -> std::io::Result<BufWriter<File>> {
    let mut file_options = std::fs::OpenOptions::new();
    file_options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut file_options, 0o600);
    let file = file_options.open(path)?;
    // The mode above applies only to a file that is created; one that
    // already existed keeps its own until it is set.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(BufWriter::new(file))
}

/// The source's header followed by the bookkeeping [`COLUMNS`].
fn header_fields(source_header: &[String]) -> Vec<String> {
    let mut columns = source_header.to_vec();
    columns.extend(COLUMNS.map(String::from));
    columns
}

/// Where a row is and its cells as text.
fn id_and_cells(row: Result<Row, RowError>, width: usize) -> (RowId, Vec<String>) {
    match row {
        Ok(row) => (row.id, row.cells.iter().map(str::to_string).collect()),
        // A row that could not be read is written with the cells that
        // could (a spreadsheet's, but for its error cell), or empty
        // cells: fix it in the source file.
        Err(bad) => (
            bad.id,
            bad.cells
                .map(|c| c.iter().map(str::to_string).collect())
                .unwrap_or_else(|| vec![String::new(); width]),
        ),
    }
}

/// How each line of the file is written: the source's delimiter and
/// encoding (or a comma and UTF-8), CRLF at the end.
struct LineFormat {
    builder: csv::WriterBuilder,
    encoding: &'static Encoding,
}

impl LineFormat {
    fn new(info: &SourceInfo, utf8: bool) -> LineFormat {
        let (delimiter, encoding) = if utf8 {
            (b',', encoding_rs::UTF_8)
        } else {
            (info.delimiter, info.encoding)
        };
        let mut builder = csv::WriterBuilder::new();
        builder
            .delimiter(delimiter)
            .terminator(csv::Terminator::CRLF);
        LineFormat { builder, encoding }
    }

    /// Writes `fields` as one line.
    fn write(&self, fields: &[String], out: &mut impl Write) -> std::io::Result<()> {
        let text = self.csv_line(fields)?;
        out.write_all(&encode_lossy(self.encoding, &text))
    }

    /// `fields` quoted and delimited, as UTF-8 text.
    fn csv_line(&self, fields: &[String]) -> std::io::Result<String> {
        let mut line = self.builder.from_writer(Vec::new());
        line.write_record(fields)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let bytes = line
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// `text` in `encoding`, with `?` for what the encoding lacks.
fn encode_lossy<'t>(encoding: &'static Encoding, text: &'t str) -> Cow<'t, [u8]> {
    let (bytes, _, unmappable) = encoding.encode(text);
    if !unmappable {
        return bytes;
    }
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
    Cow::Owned(encoding.encode(&safe).0.into_owned())
}

/// What the bookkeeping columns say of one row that is not done.
#[derive(Default)]
struct Bookkeeping {
    /// The first stage that is not ok: its status and message.
    first_bad: Option<(Stage, Status, String)>,
    customer_id: String,
    done: Vec<String>,
    unknown: Vec<String>,
}

impl Bookkeeping {
    /// What the ledger says of row `row`; `None` when the row is done and
    /// so not written.
    fn of(outcomes: &Outcomes, row: u64, field_group_names: &[String]) -> Option<Bookkeeping> {
        let view = outcomes.row(row);
        if outcomes.ended() && view.is_some_and(|v| v.is_done()) {
            return None;
        }
        // A row the ledger has nothing of was never sent.
        let Some(view) = view else {
            return Some(Bookkeeping::default());
        };
        let bookkeeping = Bookkeeping::read(&view, field_group_names);
        if bookkeeping.first_bad.is_none() && view.is_done() {
            return None;
        }
        Some(bookkeeping)
    }

    /// The row's customer id, its stages done and unknown (by name, in
    /// pipeline order) and the first that is not ok.
    fn read(view: &RowView<'_>, field_group_names: &[String]) -> Bookkeeping {
        let mut bookkeeping = Bookkeeping::default();
        if let Some(id) = view.customer_id() {
            bookkeeping.customer_id = id.to_string();
        }
        for (stage, group, outcome) in view.all() {
            let name = || stage_name(stage, group, field_group_names);
            if outcome.status == Status::Unknown {
                bookkeeping.unknown.push(name());
            }
            if outcome.status == Status::Ok {
                if stage != Stage::Mapping {
                    bookkeeping.done.push(name());
                }
            } else if bookkeeping.first_bad.is_none() {
                bookkeeping.first_bad = Some((
                    stage,
                    outcome.status,
                    view.message(stage, group).unwrap_or_default().to_string(),
                ));
            }
        }
        bookkeeping
    }

    /// The row's line: its `cells` (as many as the header has) and then
    /// the bookkeeping [`COLUMNS`].
    fn after(self, cells: Vec<String>, width: usize, id: RowId) -> Vec<String> {
        let (stage, status, error) = match self.first_bad {
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
            self.customer_id,
            self.done.join(","),
            self.unknown.join(","),
        ]);
        fields
    }
}

/// How `_done` and `_unknown` name a stage: a field group by its own name.
fn stage_name(stage: Stage, group: usize, field_group_names: &[String]) -> String {
    match stage {
        Stage::FieldGroup => field_group_names
            .get(group)
            .cloned()
            .unwrap_or_else(|| format!("field_group#{}", group + 1)),
        other => other.name().into(),
    }
}

/// Where the mapping for a `--utf8` failed-rows CSV goes: beside it,
/// `failed.csv` → `failed.mapping.toml`.
pub fn utf8_mapping_path(failed: &Path) -> PathBuf {
    failed.with_extension("mapping.toml")
}

/// Writes a copy of the mapping at `mapping` to
/// [`utf8_mapping_path`]`(failed)` whose `[source]` reads a `--utf8`
/// failed-rows CSV (`delimiter = ","`, `encoding = "utf-8"`), everything
/// else as it was; returns its path. Created 0600, as the mapping's
/// comments may quote the export's values.
pub fn write_utf8_mapping(mapping: &Path, failed: &Path) -> Result<PathBuf, FailedCsvError> {
    let out = utf8_mapping_path(failed);
    let refuse = |why: String| FailedCsvError::Write {
        path: out.clone(),
        source: std::io::Error::other(why),
    };
    if out == mapping || out == failed {
        return Err(refuse("it is the mapping or the failed-rows CSV".into()));
    }
    let text = std::fs::read_to_string(mapping).map_err(|e| refuse(e.to_string()))?;
    let copy = utf8_source(&text, mapping, failed);
    // The edit is by lines: make sure it says what it must (a mapping
    // written in a way the edit does not foresee is refused, not copied
    // wrong).
    let options = crate::mapping::parse(&out, copy.clone())
        .and_then(|m| m.source_options())
        .map_err(|e| refuse(e.to_string()))?;
    if options.delimiter != Some(b',') || options.encoding != Some(encoding_rs::UTF_8) {
        return Err(refuse(
            "its [source] could not be set to delimiter \",\" and encoding \"utf-8\"".into(),
        ));
    }
    let mut file = create_private(&out).map_err(|e| refuse(e.to_string()))?;
    file.write_all(copy.as_bytes())
        .and_then(|()| file.flush())
        .map_err(|e| refuse(e.to_string()))?;
    Ok(out)
}

/// The mapping `text` with `[source]` reading UTF-8 with commas: the
/// table's own `delimiter` and `encoding` lines commented out and the new
/// ones put first in it (a `[source]` table added when there is none: a
/// mapping has no keys outside tables).
fn utf8_source(text: &str, mapping: &Path, failed: &Path) -> String {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut out = format!(
        "# A copy of {} for {}, written by `report --failed-csv --utf8`:\n# that file is UTF-8 with commas, whatever the export was.\n",
        name(mapping),
        name(failed)
    );
    let utf8 = "delimiter = \",\"                             # the failed-rows CSV, written with --utf8\nencoding = \"utf-8\"\n";
    let is_table = |line: &str| line.trim_start().starts_with('[');
    let is_source = |line: &str| {
        let t = line.trim();
        t.strip_prefix("[source]")
            .is_some_and(|rest| rest.trim_start().is_empty() || rest.trim_start().starts_with('#'))
    };
    let key_of = |line: &str| {
        let key = line.split('=').next().unwrap_or_default().trim();
        key.trim_matches('"').to_string()
    };
    if !text.lines().any(is_source) {
        out.push_str("[source]\n");
        out.push_str(utf8);
        out.push('\n');
        out.push_str(text);
        return out;
    }
    let mut in_source = false;
    for line in text.lines() {
        if is_table(line) {
            in_source = is_source(line);
            out.push_str(line);
            out.push('\n');
            if in_source {
                out.push_str(utf8);
            }
            continue;
        }
        if in_source
            && line.contains('=')
            && matches!(key_of(line).as_str(), "delimiter" | "encoding")
        {
            out.push_str("# (the export's) ");
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(text: &str) -> SourceOptions {
        crate::mapping::parse(Path::new("m.toml"), text.to_string())
            .unwrap()
            .source_options()
            .unwrap()
    }

    #[test]
    fn the_utf8_copy_of_a_mapping_reads_commas_and_utf8_and_keeps_the_rest() {
        let (m, f) = (Path::new("m.toml"), Path::new("failed.csv"));
        let text = "[source]   # how\ndelimiter = \";\"\nencoding = \"windows-1250\"\ntrim = true\n\n[customer]\nsurname = \"Nazwisko\"\n";
        let copy = utf8_source(text, m, f);
        let o = options(&copy);
        assert_eq!(o.delimiter, Some(b','));
        assert_eq!(o.encoding, Some(encoding_rs::UTF_8));
        assert!(
            copy.contains("# (the export's) delimiter = \";\""),
            "{copy}"
        );
        assert!(copy.contains("surname = \"Nazwisko\""), "{copy}");
        // No [source] at all: one is added.
        let copy = utf8_source("[customer]\nsurname = \"N\"\n", m, f);
        assert_eq!(options(&copy).delimiter, Some(b','));
        assert_eq!(utf8_mapping_path(f), Path::new("failed.mapping.toml"));
    }
}
