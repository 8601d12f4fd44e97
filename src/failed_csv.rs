//! `report --failed-csv`: the rows that are not done, as a CSV a person can
//! fix in a spreadsheet and import again with the same mapping.
//!
//! The file has the source's own header and cells (re-read from the source,
//! in its delimiter and encoding unless `--utf8`), plus `_row`, `_line`,
//! `_stage`, `_status`, `_error`, `_customer_id` and `_done`. When it is
//! imported, a row with `_customer_id` skips customer creation and the stages
//! listed in `_done` are not sent again, so the round trip never duplicates.

use std::io::Write;
use std::path::Path;

use crate::ledger::{Stage, Status};
use crate::resume::View;
use crate::source::{Source, SourceOptions};

const ORDER: [Stage; 6] = Stage::ALL;

/// Writes the rows of `view` that are not done; returns how many.
pub fn write(view: &View, out_path: &Path, utf8: bool) -> anyhow::Result<u64> {
    use anyhow::Context;
    let header = &view.header;
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
    let file = file_options
        .open(out_path)
        .with_context(|| format!("{}: cannot create", out_path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    let mut out = std::io::BufWriter::new(file);
    let mut builder = csv::WriterBuilder::new();
    builder
        .delimiter(delimiter)
        .terminator(csv::Terminator::CRLF);
    let emit =
        |fields: &[String], out: &mut std::io::BufWriter<std::fs::File>| -> anyhow::Result<()> {
            let mut line = builder.from_writer(Vec::new());
            line.write_record(fields)?;
            let text = String::from_utf8(line.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?;
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
                out.write_all(&encoding.encode(&safe).0)?;
            } else {
                out.write_all(&bytes)?;
            }
            Ok(())
        };
    let mut columns: Vec<String> = source.header().to_vec();
    let width = columns.len();
    columns.extend(
        [
            "_row",
            "_line",
            "_stage",
            "_status",
            "_error",
            "_customer_id",
            "_done",
        ]
        .map(String::from),
    );
    emit(&columns, &mut out)?;
    let mut written = 0;
    while let Some(next) = source.next_row() {
        let (id, cells) = match next? {
            Ok(row) => (
                row.id,
                row.cells.iter().map(str::to_string).collect::<Vec<_>>(),
            ),
            // A row that could not be read is written with empty cells: fix
            // it in the source file.
            Err(bad) => (bad.id, vec![String::new(); width]),
        };
        if view.fold.is_done(id.row) && view.fold.ended() {
            continue;
        }
        let stages = view.stages.get(&id.row);
        let last = |stage: Stage| {
            stages
                .map(|s| {
                    s.iter()
                        .filter(|((st, _), _)| *st == stage)
                        .map(|(_, l)| l)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        let mut first_bad = None;
        let mut done = Vec::new();
        let mut customer_id = String::new();
        for stage in ORDER {
            let lasts = last(stage);
            if lasts.is_empty() {
                continue;
            }
            if let Some(id) = lasts
                .iter()
                .find_map(|l| l.customer_id)
                .filter(|_| stage == Stage::Customer)
            {
                customer_id = id.to_string();
            }
            match lasts.iter().find(|l| l.status != Status::Ok) {
                None if stage != Stage::Mapping => done.push(stage.name()),
                None => {}
                Some(l) if first_bad.is_none() => {
                    first_bad = Some((stage, l.status, l.message.clone().unwrap_or_default()))
                }
                Some(_) => {}
            }
        }
        if first_bad.is_none() && view.fold.is_done(id.row) {
            continue;
        }
        let (stage, status, error) = match first_bad {
            Some((stage, status, message)) => (
                stage.name().to_string(),
                format!("{status:?}").to_lowercase(),
                message,
            ),
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
        ]);
        emit(&fields, &mut out)?;
        written += 1;
    }
    out.flush()?;
    Ok(written)
}
