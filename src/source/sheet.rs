//! Spreadsheets (`.xlsx`, `.xlsm`, `.xlsb`, `.xls`, `.ods`) as a source of
//! rows, read with calamine: the first sheet, or the one `[source] sheet`
//! names.
//!
//! Cells keep their types until they become text here, in one place, the
//! way a person reads them in the spreadsheet: a whole number without `.0`
//! (a phone number stored as a number keeps every digit), a date cell as an
//! ISO date (`2024-03-15`, or `2024-03-15 10:30` with a time), which every
//! `date` option of the mapping accepts besides its own format, `TRUE` and
//! `FALSE` for booleans. A cell holding a spreadsheet error (`#N/A`) makes
//! its row invalid, naming the column.
//!
//! A row's identity is as for a CSV: `row` is its number among the data rows,
//! `line` its row number in the sheet (what Excel shows at the left), and
//! `offset` the same row number (a retry re-reads the sheet from the start:
//! there are no byte offsets to seek to).
//!
//! `.xlsx` is streamed cell by cell, so memory does not grow with the sheet;
//! the other formats are loaded whole by calamine (they cannot be streamed).
//! Either way the work happens on a thread of its own and rows arrive in
//! batches over a bounded channel, the way the CSV engine hands them on.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use calamine::{Data, Reader};

use super::Cells;

/// The extensions read as spreadsheets.
pub const EXTENSIONS: [&str; 5] = ["xlsx", "xlsm", "xlsb", "xls", "ods"];

/// Whether `path` names a spreadsheet (by its extension).
pub fn is_spreadsheet(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Which sheet was read and what of the mapping's `[source]` did not apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SheetInfo {
    /// The sheet's name.
    pub name: String,
    /// How many sheets the file has.
    pub sheets: usize,
    /// Whether the mapping named it (`[source] sheet`).
    pub named: bool,
    /// The file's format: `xlsx`, `xls`, `ods`...
    pub format: String,
    /// `[source]` keys set in the mapping that do not apply to a spreadsheet.
    pub ignored: Vec<&'static str>,
}

/// One data row of the sheet, its cells as text.
#[derive(Debug)]
pub(super) struct SheetRow {
    /// The row's number in the sheet, 1-based.
    pub line: u64,
    pub cells: Cells,
    /// A problem with one cell: its index and what is wrong.
    pub problem: Option<(usize, CellProblem)>,
}

/// What makes a sheet's row unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellProblem {
    /// The cell holds a spreadsheet error (`#N/A`, `#DIV/0!`...).
    Error,
    /// A value in a column the header row does not name.
    PastHeader,
}

enum Message {
    Header {
        info: SheetInfo,
        line: u64,
        names: Vec<String>,
    },
    Rows(Vec<SheetRow>),
    Failed(String),
    /// The last row was sent: only this ends the sheet. A channel that
    /// closes without it is a reader that died (a panic in the workbook
    /// parser), and the rows it did not send are not an end of file.
    End,
}

/// Rows of one sheet, read on a thread of their own.
#[derive(Debug)]
pub(super) struct SheetReader {
    rx: Receiver<MessageBox>,
    pending: std::vec::IntoIter<SheetRow>,
    finished: bool,
}

/// The channel's item (a newtype so that `Message` need not be `Debug`).
struct MessageBox(Message);

impl std::fmt::Debug for MessageBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Message")
    }
}

/// An opened sheet: its reader and header row.
#[derive(Debug)]
pub(super) struct Opened {
    pub reader: SheetReader,
    pub info: SheetInfo,
    /// The header row's number in the sheet.
    pub line: u64,
    pub names: Vec<String>,
}

/// How many rows go over the channel at once, and how many batches wait.
const BATCH: usize = 256;
const QUEUED: usize = 8;

/// Opens the sheet `sheet` (or the first) of the spreadsheet at `path` and
/// reads its header row; the data rows follow from the reader.
pub(super) fn open(
    path: &Path,
    sheet: Option<&str>,
    ignored: Vec<&'static str>,
) -> Result<Opened, String> {
    let (tx, rx) = sync_channel(QUEUED);
    let path: PathBuf = path.into();
    let sheet = sheet.map(str::to_string);
    std::thread::Builder::new()
        .name("sheet-reader".into())
        .spawn(move || {
            if let Err(e) = read(&path, sheet.as_deref(), ignored, &tx) {
                let _ = tx.send(MessageBox(Message::Failed(e)));
            }
        })
        .map_err(|e| format!("cannot start the spreadsheet reader: {e}"))?;
    match rx.recv() {
        Ok(MessageBox(Message::Header { info, line, names })) => Ok(Opened {
            reader: SheetReader {
                rx,
                pending: Vec::new().into_iter(),
                finished: false,
            },
            info,
            line,
            names,
        }),
        Ok(MessageBox(Message::Failed(e))) => Err(e),
        Ok(MessageBox(Message::Rows(_) | Message::End)) | Err(_) => {
            Err("the spreadsheet reader stopped before the header row".into())
        }
    }
}

impl SheetReader {
    /// The next data row; `Ok(None)` at the end of the sheet.
    pub fn next(&mut self) -> std::io::Result<Option<SheetRow>> {
        loop {
            if let Some(row) = self.pending.next() {
                return Ok(Some(row));
            }
            if self.finished {
                return Ok(None);
            }
            match self.rx.recv() {
                Ok(MessageBox(Message::Rows(rows))) => self.pending = rows.into_iter(),
                Ok(MessageBox(Message::Failed(e))) => {
                    self.finished = true;
                    return Err(std::io::Error::other(e));
                }
                Ok(MessageBox(Message::Header { .. })) => {}
                Ok(MessageBox(Message::End)) => self.finished = true,
                // The thread went without saying the sheet ended.
                Err(_) => {
                    self.finished = true;
                    return Err(std::io::Error::other(
                        "the spreadsheet reader stopped before the end of the sheet (it failed while reading); the rows after this point were not read",
                    ));
                }
            }
        }
    }
}

/// The reading thread: opens the workbook, sends the header, then the rows.
fn read(
    path: &Path,
    sheet: Option<&str>,
    ignored: Vec<&'static str>,
    tx: &SyncSender<MessageBox>,
) -> Result<(), String> {
    let mut workbook = calamine::open_workbook_auto(path)
        .map_err(|e| format!("cannot read the spreadsheet: {e}"))?;
    let names = workbook.sheet_names();
    let list = || {
        names
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let name = match sheet {
        Some(wanted) => names
            .iter()
            .find(|n| *n == wanted)
            .or_else(|| names.iter().find(|n| n.eq_ignore_ascii_case(wanted)))
            .cloned()
            .ok_or_else(|| {
                format!(
                    "[source] sheet = \"{wanted}\": the file has no such sheet; it has {}",
                    list()
                )
            })?,
        None => names
            .first()
            .cloned()
            .ok_or("the spreadsheet has no sheets")?,
    };
    let format = match &workbook {
        calamine::Sheets::Xls(_) => "xls",
        calamine::Sheets::Xlsx(_) => "xlsx",
        calamine::Sheets::Xlsb(_) => "xlsb",
        calamine::Sheets::Ods(_) => "ods",
    };
    let info = SheetInfo {
        name: name.clone(),
        sheets: names.len(),
        named: sheet.is_some(),
        format: format.into(),
        ignored,
    };
    let mut rows = Rows::new(info, tx);
    let cannot = |e: &dyn std::fmt::Display| format!("cannot read sheet \"{name}\": {e}");
    if let calamine::Sheets::Xlsx(xlsx) = &mut workbook {
        let mut cells = xlsx.worksheet_cells_reader(&name).map_err(|e| cannot(&e))?;
        while let Some(cell) = cells.next_cell().map_err(|e| cannot(&e))? {
            let (row, col) = cell.get_position();
            if !rows.cell(row, col, Data::from(cell.get_value().clone())) {
                return Ok(());
            }
        }
    } else {
        let range = workbook.worksheet_range(&name).map_err(|e| cannot(&e))?;
        let (top, left) = range.start().unwrap_or((0, 0));
        for (i, cells) in range.rows().enumerate() {
            for (j, value) in cells.iter().enumerate() {
                if !rows.cell(top + i as u32, left + j as u32, value.clone()) {
                    return Ok(());
                }
            }
        }
    }
    rows.finish();
    Ok(())
}

/// Gathers cells, in row order, into rows and sends them in batches.
struct Rows<'a> {
    tx: &'a SyncSender<MessageBox>,
    /// Until the header row is sent.
    info: Option<SheetInfo>,
    /// The header's first column and width.
    first_col: u32,
    width: usize,
    /// The row being gathered: its index and its non-empty cells.
    row: Option<u32>,
    cells: Vec<(u32, String, bool)>,
    batch: Vec<SheetRow>,
    /// The receiver is gone: stop reading.
    closed: bool,
}

impl<'a> Rows<'a> {
    fn new(info: SheetInfo, tx: &'a SyncSender<MessageBox>) -> Self {
        Rows {
            tx,
            info: Some(info),
            first_col: 0,
            width: 0,
            row: None,
            cells: Vec::new(),
            batch: Vec::with_capacity(BATCH),
            closed: false,
        }
    }

    /// Takes one cell; `false` once nobody reads the rows any more.
    fn cell(&mut self, row: u32, col: u32, value: Data) -> bool {
        if self.row != Some(row) {
            self.end_row();
            self.row = Some(row);
        }
        if let Some((text, error)) = render(&value) {
            self.cells.push((col, text, error));
        }
        !self.closed
    }

    /// Ends the row gathered so far: the header, or a data row. Rows with
    /// no value at all are skipped, as blank lines are in a CSV.
    fn end_row(&mut self) {
        let Some(row) = self.row.take() else { return };
        if self.cells.is_empty() {
            return;
        }
        let mut cells = std::mem::take(&mut self.cells);
        cells.sort_by_key(|c| c.0);
        if let Some(info) = self.info.take() {
            let first = cells[0].0;
            let last = cells[cells.len() - 1].0;
            let mut names = vec![String::new(); (last - first) as usize + 1];
            for (col, text, _) in cells {
                names[(col - first) as usize] = text.trim().to_string();
            }
            self.first_col = first;
            self.width = names.len();
            self.send(Message::Header {
                info,
                line: u64::from(row) + 1,
                names,
            });
            return;
        }
        let mut texts = vec![""; self.width];
        let mut problem = None;
        for (col, text, error) in &cells {
            let inside = *col >= self.first_col && ((col - self.first_col) as usize) < self.width;
            if !inside {
                // Kept past the header's width, so the message can show it.
                problem.get_or_insert((self.width, CellProblem::PastHeader));
                continue;
            }
            let i = (col - self.first_col) as usize;
            texts[i] = text;
            if *error {
                problem.get_or_insert((i, CellProblem::Error));
            }
        }
        let mut row_cells = Cells::from_strs(&texts);
        if let Some((_, CellProblem::PastHeader)) = problem {
            let outside = cells
                .iter()
                .find(|(col, ..)| {
                    *col < self.first_col || ((col - self.first_col) as usize) >= self.width
                })
                .map(|(col, text, _)| format!("{}: {text}", column_letters(*col)))
                .unwrap_or_default();
            row_cells.text.push_str(&outside);
            row_cells.ends.push(row_cells.text.len());
        }
        self.batch.push(SheetRow {
            line: u64::from(row) + 1,
            cells: row_cells,
            problem,
        });
        if self.batch.len() >= BATCH {
            let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
            self.send(Message::Rows(batch));
        }
    }

    fn send(&mut self, message: Message) {
        if self.tx.send(MessageBox(message)).is_err() {
            self.closed = true;
        }
    }

    fn finish(mut self) {
        self.end_row();
        if let Some(info) = self.info.take() {
            // A sheet without a single value: an empty header, no rows.
            self.send(Message::Header {
                info,
                line: 0,
                names: Vec::new(),
            });
        }
        if !self.batch.is_empty() {
            let batch = std::mem::take(&mut self.batch);
            self.send(Message::Rows(batch));
        }
        self.send(Message::End);
    }
}

/// A cell as text, as a person reads it in the spreadsheet; `None` for an
/// empty cell. The flag marks a spreadsheet error.
fn render(value: &Data) -> Option<(String, bool)> {
    let text = match value {
        Data::Empty => return None,
        Data::String(s) if s.is_empty() => return None,
        Data::String(s) => s.clone(),
        Data::Int(i) => i.to_string(),
        Data::Float(f) => number(*f),
        Data::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        Data::DateTime(d) if d.is_duration() => number(d.as_f64()),
        Data::DateTime(d) => {
            // Excel keeps milliseconds; no API field takes them.
            let (y, mo, day, h, mi, s, _ms) = d.to_ymd_hms_milli();
            stamp(d.as_f64() < 1.0, (y, mo, day), (h, mi, s))
        }
        Data::DateTimeIso(s) => iso(s),
        Data::DurationIso(s) => s.clone(),
        Data::Error(e) => return Some((e.to_string(), true)),
    };
    Some((text, false))
}

/// A number as Excel shows it in a General cell: whole numbers without a
/// fraction (all 15 significant digits Excel keeps), others in full.
pub fn number(f: f64) -> String {
    // Below 2^53 every whole f64 is exact.
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

/// A date cell as text: `YYYY-MM-DD`, with ` hh:mm` (and `:ss` when not
/// zero) when it has a time; a time alone as `hh:mm[:ss]`.
fn stamp(time_only: bool, (y, mo, d): (u16, u8, u8), (h, mi, s): (u8, u8, u8)) -> String {
    let time = if s == 0 {
        format!("{h:02}:{mi:02}")
    } else {
        format!("{h:02}:{mi:02}:{s:02}")
    };
    if time_only {
        time
    } else if (h, mi, s) == (0, 0, 0) {
        format!("{y:04}-{mo:02}-{d:02}")
    } else {
        format!("{y:04}-{mo:02}-{d:02} {time}")
    }
}

/// An ODS date (`2024-03-15`, `2024-03-15T10:30:00`, maybe with a fraction
/// of a second) written as an xlsx date cell is.
fn iso(s: &str) -> String {
    let (date, time) = s.split_once('T').unwrap_or((s, ""));
    let time = time.split('.').next().unwrap_or_default();
    let parts: Vec<u8> = time.split(':').filter_map(|p| p.parse().ok()).collect();
    match parts[..] {
        [h, mi, sec] if date.len() == 10 => {
            let ymd: Vec<u16> = date.split('-').filter_map(|p| p.parse().ok()).collect();
            match ymd[..] {
                [y, mo, d] => stamp(false, (y, mo as u8, d as u8), (h, mi, sec)),
                _ => s.to_string(),
            }
        }
        _ if time.is_empty() => date.to_string(),
        _ => s.replace('T', " "),
    }
}

/// A 0-based column index as Excel names it: A, B, ..., Z, AA, AB...
pub fn column_letters(col: u32) -> String {
    let mut n = col + 1;
    let mut out = Vec::new();
    while n > 0 {
        let r = (n - 1) % 26;
        out.push(b'A' + r as u8);
        n = (n - 1) / 26;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader_of(messages: Vec<Message>) -> SheetReader {
        let (tx, rx) = sync_channel(messages.len().max(1));
        for m in messages {
            tx.send(MessageBox(m)).unwrap();
        }
        // The sending side goes, as when the reading thread ends or dies.
        drop(tx);
        SheetReader {
            rx,
            pending: Vec::new().into_iter(),
            finished: false,
        }
    }

    fn row(line: u64) -> SheetRow {
        SheetRow {
            line,
            cells: Cells::default(),
            problem: None,
        }
    }

    #[test]
    fn a_reader_that_dies_mid_sheet_is_a_read_error_not_an_end() {
        let mut reader = reader_of(vec![Message::Rows(vec![row(2), row(3)])]);
        assert_eq!(reader.next().unwrap().unwrap().line, 2);
        assert_eq!(reader.next().unwrap().unwrap().line, 3);
        let e = reader.next().unwrap_err();
        assert!(e.to_string().contains("before the end of the sheet"), "{e}");
        // Only the sheet's end says it ended.
        let mut reader = reader_of(vec![Message::Rows(vec![row(2)]), Message::End]);
        assert_eq!(reader.next().unwrap().unwrap().line, 2);
        assert!(reader.next().unwrap().is_none());
        assert!(reader.next().unwrap().is_none());
    }

    #[test]
    fn a_panicking_reader_thread_is_a_read_error() {
        let (tx, rx) = sync_channel(QUEUED);
        let thread = std::thread::spawn(move || {
            let _ = tx.send(MessageBox(Message::Rows(vec![row(2)])));
            panic!("a corrupt workbook");
        });
        assert!(thread.join().is_err());
        let mut reader = SheetReader {
            rx,
            pending: Vec::new().into_iter(),
            finished: false,
        };
        assert!(reader.next().unwrap().is_some());
        assert!(reader.next().is_err());
    }

    #[test]
    fn numbers_print_as_a_person_reads_them() {
        assert_eq!(number(48_601_234_567.0), "48601234567");
        assert_eq!(number(90_010_112_345.0), "90010112345");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(-2.0), "-2");
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(0.1), "0.1");
    }

    #[test]
    fn dates_print_as_iso() {
        assert_eq!(stamp(false, (2024, 3, 5), (0, 0, 0)), "2024-03-05");
        assert_eq!(stamp(false, (2024, 3, 5), (9, 30, 0)), "2024-03-05 09:30");
        assert_eq!(
            stamp(false, (2024, 3, 5), (9, 30, 15)),
            "2024-03-05 09:30:15"
        );
        assert_eq!(stamp(true, (1899, 12, 31), (9, 30, 0)), "09:30");
        assert_eq!(iso("2024-03-15"), "2024-03-15");
        assert_eq!(iso("2024-03-15T10:30:00"), "2024-03-15 10:30");
        assert_eq!(iso("2024-03-15T00:00:00"), "2024-03-15");
        assert_eq!(iso("2024-03-15T10:30:05.250"), "2024-03-15 10:30:05");
    }

    #[test]
    fn columns_are_lettered_as_excel_does() {
        assert_eq!(column_letters(0), "A");
        assert_eq!(column_letters(25), "Z");
        assert_eq!(column_letters(26), "AA");
        assert_eq!(column_letters(701), "ZZ");
        assert_eq!(column_letters(702), "AAA");
    }

    #[test]
    fn extensions() {
        assert!(is_spreadsheet(Path::new("a/Klienci.XLSX")));
        assert!(is_spreadsheet(Path::new("x.ods")));
        assert!(!is_spreadsheet(Path::new("x.csv")));
        assert!(!is_spreadsheet(Path::new("xlsx")));
    }
}
