//! Writing spreadsheets for the tests: a CSV's rows as an `.xlsx` whose
//! cells are typed as Excel types what a person types (dates, date-times,
//! whole numbers), and a minimal `.ods` from typed cells.

use std::io::Write;
use std::path::Path;

use rust_xlsxwriter::{ExcelDateTime, Format, Formula, Workbook};

/// A cell of a test spreadsheet.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Number(f64),
    /// `(year, month, day)`, with `(hour, minute)` for a date-time.
    Date(u16, u8, u8, Option<(u8, u8)>),
    Bool(bool),
    /// A formula whose cached result is a spreadsheet error (`#N/A`).
    Error(&'static str),
    Empty,
}

/// How Excel types what a person types into a cell: `28.07.1998` is a
/// date, `28.12.2026 11:45` a date-time, `575896778` a number (a leading
/// zero, or more than 15 digits, stays text), anything else text.
pub fn typed(text: &str) -> Cell {
    if text.is_empty() {
        return Cell::Empty;
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(text) && (!text.starts_with('0') || text == "0") && text.len() <= 15 {
        return Cell::Number(text.parse().unwrap());
    }
    let (date, time) = text.split_once(' ').unwrap_or((text, ""));
    let d: Vec<&str> = date.split('.').collect();
    if d.len() == 3 && d.iter().all(|p| digits(p)) && d[2].len() == 4 {
        let (day, month, year): (u8, u8, u16) = (
            d[0].parse().unwrap(),
            d[1].parse().unwrap(),
            d[2].parse().unwrap(),
        );
        let real = chrono::NaiveDate::from_ymd_opt(year.into(), month.into(), day.into()).is_some();
        let t: Vec<&str> = time.split(':').collect();
        if real && time.is_empty() {
            return Cell::Date(year, month, day, None);
        }
        if real && t.len() == 2 && t.iter().all(|p| digits(p)) {
            return Cell::Date(
                year,
                month,
                day,
                Some((t[0].parse().unwrap(), t[1].parse().unwrap())),
            );
        }
    }
    Cell::Text(text.to_string())
}

/// Writes `rows` (the first is the header) as the sheet `sheet` of an
/// `.xlsx`, after the sheets named in `before` (left empty but for a note).
pub fn write_xlsx(path: &Path, sheet: &str, before: &[&str], rows: &[Vec<Cell>]) {
    let mut book = Workbook::new();
    for name in before {
        let ws = book.add_worksheet();
        ws.set_name(*name).unwrap();
        ws.write_string(0, 0, "not this sheet").unwrap();
    }
    let ws = book.add_worksheet();
    ws.set_name(sheet).unwrap();
    let date = Format::new().set_num_format("dd.mm.yyyy");
    let date_time = Format::new().set_num_format("dd.mm.yyyy hh:mm");
    for (r, row) in rows.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let (r, c) = (r as u32, c as u16);
            match cell {
                Cell::Text(s) => {
                    ws.write_string(r, c, s).unwrap();
                }
                Cell::Number(n) => {
                    ws.write_number(r, c, *n).unwrap();
                }
                Cell::Date(y, m, d, None) => {
                    let dt = ExcelDateTime::from_ymd(*y, *m, *d).unwrap();
                    ws.write_datetime_with_format(r, c, &dt, &date).unwrap();
                }
                Cell::Date(y, m, d, Some((h, mi))) => {
                    let dt = ExcelDateTime::from_ymd(*y, *m, *d)
                        .unwrap()
                        .and_hms(u16::from(*h), *mi, 0)
                        .unwrap();
                    ws.write_datetime_with_format(r, c, &dt, &date_time)
                        .unwrap();
                }
                Cell::Bool(b) => {
                    ws.write_boolean(r, c, *b).unwrap();
                }
                Cell::Error(e) => {
                    ws.write_formula(r, c, Formula::new("=NA()").set_result(*e))
                        .unwrap();
                }
                Cell::Empty => {}
            }
        }
    }
    book.save(path).unwrap();
}

/// Writes `rows` as the one sheet `sheet` of a minimal `.ods` (the parts
/// a reader needs: `mimetype` first and stored, the manifest, the content).
pub fn write_ods(path: &Path, sheet: &str, rows: &[Vec<Cell>]) {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let mut content = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0" office:version="1.2"><office:body><office:spreadsheet>"#,
    );
    content.push_str(&format!(r#"<table:table table:name="{}">"#, esc(sheet)));
    for row in rows {
        content.push_str("<table:table-row>");
        for cell in row {
            let c = match cell {
                Cell::Text(s) => format!(
                    r#"<table:table-cell office:value-type="string"><text:p>{}</text:p></table:table-cell>"#,
                    esc(s)
                ),
                Cell::Number(n) => format!(
                    r#"<table:table-cell office:value-type="float" office:value="{n}"><text:p>{n}</text:p></table:table-cell>"#
                ),
                Cell::Date(y, m, d, time) => {
                    let value = match time {
                        None => format!("{y:04}-{m:02}-{d:02}"),
                        Some((h, mi)) => format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:00"),
                    };
                    format!(
                        r#"<table:table-cell office:value-type="date" office:date-value="{value}"><text:p>{value}</text:p></table:table-cell>"#
                    )
                }
                Cell::Bool(b) => format!(
                    r#"<table:table-cell office:value-type="boolean" office:boolean-value="{b}"><text:p>{b}</text:p></table:table-cell>"#
                ),
                Cell::Error(e) => format!(
                    r#"<table:table-cell table:formula="of:=NA()" office:value-type="string" office:string-value="{e}"><text:p>{e}</text:p></table:table-cell>"#
                ),
                Cell::Empty => "<table:table-cell/>".to_string(),
            };
            content.push_str(&c);
        }
        content.push_str("</table:table-row>");
    }
    content.push_str("</table:table></office:spreadsheet></office:body></office:document-content>");
    let manifest = r#"<?xml version="1.0" encoding="UTF-8"?>
<manifest:manifest xmlns:manifest="urn:oasis:names:tc:opendocument:xmlns:manifest:1.0" manifest:version="1.2">
 <manifest:file-entry manifest:full-path="/" manifest:media-type="application/vnd.oasis.opendocument.spreadsheet"/>
 <manifest:file-entry manifest:full-path="content.xml" manifest:media-type="text/xml"/>
</manifest:manifest>"#;
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("mimetype", stored).unwrap();
    zip.write_all(b"application/vnd.oasis.opendocument.spreadsheet")
        .unwrap();
    zip.start_file("META-INF/manifest.xml", stored).unwrap();
    zip.write_all(manifest.as_bytes()).unwrap();
    zip.start_file("content.xml", stored).unwrap();
    zip.write_all(content.as_bytes()).unwrap();
    zip.finish().unwrap();
}

/// The sample export's rows (header first), decoded from windows-1250.
pub fn sample_rows() -> Vec<Vec<String>> {
    let bytes = std::fs::read("samples/crm_export.csv").unwrap();
    let text = encoding_rs::WINDOWS_1250.decode(&bytes).0.into_owned();
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b';')
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_string).collect())
        .collect()
}
