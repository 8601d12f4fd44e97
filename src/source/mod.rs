//! The streaming source: a CSV file's bytes (or a spreadsheet's cells, in
//! [`sheet`]) → decoded rows with a stable identity (record number, starting
//! line, byte offset).
//!
//! The file is parsed as bytes by the `csv` crate and each cell is decoded on
//! its own, so that a bad byte costs one row, not the file, and so that the
//! byte offset of every row is exact in the original file (a retry seeks
//! straight to it). This works for every ASCII-compatible encoding (UTF-8,
//! windows-1250, ISO-8859-2, ...), which is every encoding a CSV export
//! realistically uses; UTF-16 is refused with a hint.
//!
//! Memory does not grow with the file: one record buffer is reused and each
//! row is handed on as it is read. For `check`, records can also be read
//! undecoded into reusable batches ([`RawRows`]) and decoded on other
//! threads by a [`Decoder`], borrowing UTF-8 cells in place.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use encoding_rs::Encoding;

mod issue;
mod magic;
pub mod sheet;

pub use issue::RowIssue;
pub use sheet::{is_spreadsheet, SheetInfo};

/// How to read the file, from the mapping's `[source]` table.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// The field delimiter; `None` sniffs it from the header line.
    pub delimiter: Option<u8>,
    /// The encoding; `None` assumes UTF-8.
    pub encoding: Option<&'static Encoding>,
    /// The quote character.
    pub quote: u8,
    /// A spreadsheet's sheet; `None` reads the first.
    pub sheet: Option<String>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            delimiter: None,
            encoding: None,
            quote: b'"',
            sheet: None,
        }
    }
}

/// What was sniffed or assumed; printed at the start of `check` and `run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    pub delimiter: u8,
    pub delimiter_sniffed: bool,
    pub encoding: &'static Encoding,
    pub encoding_assumed: bool,
    pub bom: bool,
    /// A spreadsheet: which sheet (a spreadsheet's rows are UTF-8 text, as
    /// a CSV with commas would be).
    pub sheet: Option<SheetInfo>,
}

impl std::fmt::Display for SourceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(sheet) = &self.sheet {
            write!(
                f,
                "{}, sheet \"{}\" ({} of {})",
                sheet.format,
                sheet.name,
                if sheet.named {
                    "from the mapping"
                } else {
                    "the first"
                },
                crate::text::count(sheet.sheets as u64, "sheet")
            )?;
            if !sheet.ignored.is_empty() {
                write!(
                    f,
                    "; [source] {} do not apply to a spreadsheet: ignored",
                    sheet.ignored.join(" and ")
                )?;
            }
            return Ok(());
        }
        let delimiter = match self.delimiter {
            b'\t' => "tab".to_string(),
            d => format!("'{}'", d as char),
        };
        write!(
            f,
            "delimiter {delimiter} ({}), encoding {} ({}), {}",
            if self.delimiter_sniffed {
                "sniffed from the header"
            } else {
                "from the mapping"
            },
            self.encoding.name(),
            if self.encoding_assumed {
                "assumed"
            } else {
                "from the mapping"
            },
            if self.bom {
                "UTF-8 BOM skipped"
            } else {
                "no BOM"
            },
        )
    }
}

/// Where a data row is in the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowId {
    /// 1-based data record number (the header is not counted).
    pub row: u64,
    /// 1-based line on which the record starts.
    pub line: u64,
    /// Byte offset of the record's first byte in the file.
    pub offset: u64,
    /// A short fingerprint of the row's identifier (a few bytes of a hash,
    /// never the value), set once the mapping has read it: what tells an
    /// edited copy's rows from moved ones.
    pub fp: Option<u32>,
}

/// One decoded data row.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: RowId,
    /// The cells, decoded to UTF-8 and not trimmed.
    pub cells: Cells,
}

/// What is wrong with one row: a cell that does not decode, a wrong number of
/// fields, or (from the mapping) a value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The header name of the column at fault, where one is.
    pub column: Option<String>,
    /// The offending value, where one is (shortened for display).
    pub value: Option<String>,
    /// What is wrong, and where it helps, what to do.
    pub reason: String,
}

/// A row that could not be read.
#[derive(Debug, Clone)]
pub struct RowError {
    pub id: RowId,
    pub error: FieldError,
    /// Its cells, where they could be read (a spreadsheet's row with an
    /// error cell): what the failed-rows CSV shows to fix.
    pub cells: Option<Cells>,
}

/// Why a file cannot be used at all.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: cannot open: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: the file is empty: a header row naming the columns is required")]
    Empty { path: PathBuf },
    #[error("{path}: the file starts with a UTF-16 byte-order mark; save it as UTF-8 (or windows-1250) and try again")]
    Utf16 { path: PathBuf },
    #[error(
        "{path}: line {line}, column {column}: the header name does not decode as {encoding}{hint}"
    )]
    HeaderEncoding {
        path: PathBuf,
        line: u64,
        column: usize,
        encoding: &'static str,
        hint: String,
    },
    #[error("{path}: line {line}: duplicate header name \"{name}\" (columns {first} and {second}); columns are referred to by name, so names must be unique")]
    DuplicateHeader {
        path: PathBuf,
        line: u64,
        name: String,
        first: usize,
        second: usize,
    },
    #[error("{path}: cannot read the CSV: {source}")]
    Csv { path: PathBuf, source: csv::Error },
    #[error("{path}: {message}")]
    Sheet { path: PathBuf, message: String },
    /// A file that is no export at all (an archive, a program, a PDF,
    /// random bytes): one sentence, what it looks like and what to do.
    #[error("{path}: this is not {expected}: it looks like {what} ({hint})")]
    NotAnExport {
        path: PathBuf,
        /// "a CSV file" or "a spreadsheet", as the file was to be read.
        expected: &'static str,
        what: &'static str,
        hint: &'static str,
    },
    #[error("{path}: this is a spreadsheet ({kind}), not a CSV: give it its extension ({extensions}) and it is read as one")]
    SpreadsheetAsCsv {
        path: PathBuf,
        kind: &'static str,
        extensions: &'static str,
    },
}

/// The decoded cells of one row: one string and the end of each cell in it
/// (the layout of `csv::StringRecord`, without its per-row allocations).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cells {
    text: String,
    ends: Vec<usize>,
}

impl Cells {
    /// Cells from a list of strings (tests, failed-rows CSV).
    pub fn from_strs<S: AsRef<str>>(cells: &[S]) -> Cells {
        let mut out = Cells::default();
        for c in cells {
            out.text.push_str(c.as_ref());
            out.ends.push(out.text.len());
        }
        out
    }
    /// The cells, borrowed.
    pub fn view(&self) -> CellsRef<'_> {
        CellsRef {
            text: &self.text,
            ends: &self.ends,
        }
    }
    /// The cell at `i`, untrimmed.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.view().get(i)
    }
    /// How many cells.
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    /// Whether there are no cells.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    /// The cells in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.view().iter()
    }
    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }
}

/// A row's cells, borrowed: from [`Cells`], or straight from the bytes the
/// reader left in a [`RawRows`] batch when those are already UTF-8.
#[derive(Debug, Clone, Copy)]
pub struct CellsRef<'a> {
    text: &'a str,
    /// The end of each cell in `text`.
    ends: &'a [usize],
}

impl<'a> CellsRef<'a> {
    /// The cell at `i`, untrimmed.
    pub fn get(&self, i: usize) -> Option<&'a str> {
        self.text.get(field(self.ends, i)?)
    }
    /// How many cells.
    pub fn len(&self) -> usize {
        self.ends.len()
    }
    /// Whether there are no cells.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
    /// The cells in order.
    pub fn iter(self) -> impl Iterator<Item = &'a str> {
        (0..self.len()).map(move |i| self.get(i).unwrap_or_default())
    }
    /// An owned copy.
    pub fn to_cells(self) -> Cells {
        Cells {
            text: self.text.to_string(),
            ends: self.ends.to_vec(),
        }
    }
}

/// Records as the CSV parser leaves them, not yet decoded: the unescaped
/// bytes of every field back to back, each field's end (relative to its
/// record) and each record's identity. A batch is filled by
/// [`Source::read_rows`], decoded row by row with [`Decoder::decode`]
/// (possibly on another thread), and reused: its buffers only grow.
#[derive(Debug, Default)]
pub struct RawRows {
    /// Field bytes; only `..bytes_used` is meaningful. Kept at its full
    /// length so that the parser can write into it without zeroing it again.
    bytes: Vec<u8>,
    bytes_used: usize,
    /// Field ends, the same way.
    ends: Vec<usize>,
    ends_used: usize,
    rows: Vec<RawRow>,
}

#[derive(Debug, Clone, Copy)]
struct RawRow {
    id: RowId,
    bytes: (usize, usize),
    ends: (usize, usize),
    /// The record ran to the end of the file inside an opened quote.
    unterminated_quote: bool,
    /// A spreadsheet's cell that is not a value: its index and why.
    cell_problem: Option<(usize, sheet::CellProblem)>,
}

impl RawRows {
    /// How many records.
    pub fn len(&self) -> usize {
        self.rows.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
    /// The identity of record `i`.
    pub fn id(&self, i: usize) -> RowId {
        self.rows[i].id
    }
    /// Record `i` as cells, if its bytes are UTF-8.
    fn text_cells(&self, i: usize) -> Option<Cells> {
        let text = std::str::from_utf8(self.bytes_of(i)).ok()?;
        let ends = self.ends_of(i);
        ends.iter()
            .all(|&e| text.is_char_boundary(e))
            .then(|| CellsRef { text, ends }.to_cells())
    }
    /// Appends a spreadsheet's row (already text).
    fn push_sheet_row(&mut self, id: RowId, row: &sheet::SheetRow) {
        let (bytes_start, ends_start) = (self.bytes_used, self.ends_used);
        let text = row.cells.text.as_bytes();
        self.bytes.truncate(bytes_start);
        self.bytes.extend_from_slice(text);
        self.bytes_used = self.bytes.len();
        self.ends.truncate(ends_start);
        self.ends.extend_from_slice(&row.cells.ends);
        self.ends_used = self.ends.len();
        self.rows.push(RawRow {
            id,
            bytes: (bytes_start, self.bytes_used),
            ends: (ends_start, self.ends_used),
            unterminated_quote: false,
            cell_problem: row.problem,
        });
    }
    /// Forgets the records, keeping the buffers.
    pub fn clear(&mut self) {
        self.bytes_used = 0;
        self.ends_used = 0;
        self.rows.clear();
    }
    fn bytes_of(&self, i: usize) -> &[u8] {
        let (a, b) = self.rows[i].bytes;
        &self.bytes[a..b]
    }
    fn ends_of(&self, i: usize) -> &[usize] {
        let (a, b) = self.rows[i].ends;
        &self.ends[a..b]
    }
    /// The fields of record `i`.
    fn fields(&self, i: usize) -> impl Iterator<Item = &[u8]> + '_ {
        let bytes = self.bytes_of(i);
        let ends = self.ends_of(i);
        (0..ends.len()).map(move |j| {
            field(ends, j)
                .and_then(|r| bytes.get(r))
                .unwrap_or_default()
        })
    }
}

/// Where field `i` lies, given each field's end: from the previous end (or
/// 0) to its own. The layout of [`Cells`], [`CellsRef`] and [`RawRows`].
fn field(ends: &[usize], i: usize) -> Option<std::ops::Range<usize>> {
    let end = *ends.get(i)?;
    let start = if i == 0 { 0 } else { ends[i - 1] };
    Some(start..end)
}

/// The byte-exact record reader under [`Source`]: `csv_core` does the
/// parsing, this loop keeps the absolute byte offset and line of every
/// record's first byte (blank lines and the `\n` of a CRLF are skipped before
/// a record starts, so the offset points at its first real byte).
#[derive(Debug)]
struct Engine<R> {
    inner: BufReader<R>,
    core: csv_core::Reader,
    quote: u8,
    delimiter: u8,
    /// Absolute offset of the next unread byte.
    pos: u64,
    /// 1-based line of the next unread byte.
    line: u64,
}

/// Where a record starts, as [`Engine::read`] found it.
struct Start {
    offset: u64,
    line: u64,
}

impl<R: Read> Engine<R> {
    fn new(inner: BufReader<R>, delimiter: u8, quote: u8, pos: u64, line: u64) -> Self {
        let core = csv_core::ReaderBuilder::new()
            .delimiter(delimiter)
            .quote(quote)
            .build();
        Engine {
            inner,
            core,
            quote,
            delimiter,
            pos,
            line,
        }
    }

    /// Appends the next record to `rows` with the record number `row`;
    /// returns `false` at the end of the input.
    fn read(&mut self, rows: &mut RawRows, row: u64) -> std::io::Result<bool> {
        // Skip line ends left over from the previous record and blank lines.
        loop {
            let buf = self.inner.fill_buf()?;
            let n = buf
                .iter()
                .take_while(|b| **b == b'\r' || **b == b'\n')
                .count();
            let lines = memchr::memchr_iter(b'\n', &buf[..n]).count();
            let all = n == buf.len() && n > 0;
            self.inner.consume(n);
            self.pos += n as u64;
            self.line += lines as u64;
            if !all {
                break;
            }
        }
        let start = Start {
            offset: self.pos,
            line: self.line,
        };
        let (bytes_start, ends_start) = (rows.bytes_used, rows.ends_used);
        // Room for a typical record; the parser asks for more if it needs it.
        if rows.bytes.len() < bytes_start + 1024 {
            rows.bytes
                .resize((bytes_start + 1024).max(rows.bytes.len() * 2), 0);
        }
        if rows.ends.len() < ends_start + 64 {
            rows.ends
                .resize((ends_start + 64).max(rows.ends.len() * 2), 0);
        }
        let (mut outlen, mut endlen) = (bytes_start, ends_start);
        // Quote parity over the record's raw bytes, counted only for quotes
        // that open a field, to spot an unbalanced quote at the end of file.
        let mut quotes = 0usize;
        let mut opened_field = false;
        let mut prev: Option<u8> = None;
        loop {
            let input = self.inner.fill_buf()?;
            let at_eof = input.is_empty();
            let (res, nin, nout, nend) =
                self.core
                    .read_record(input, &mut rows.bytes[outlen..], &mut rows.ends[endlen..]);
            let consumed = &input[..nin];
            self.line += memchr::memchr_iter(b'\n', consumed).count() as u64;
            for q in memchr::memchr_iter(self.quote, consumed) {
                quotes += 1;
                let before = if q == 0 { prev } else { Some(consumed[q - 1]) };
                if before.is_none() || before == Some(self.delimiter) {
                    opened_field = true;
                }
            }
            if let Some(&last) = consumed.last() {
                prev = Some(last);
            }
            self.inner.consume(nin);
            self.pos += nin as u64;
            outlen += nout;
            endlen += nend;
            match res {
                csv_core::ReadRecordResult::InputEmpty => continue,
                csv_core::ReadRecordResult::OutputFull => {
                    let len = rows.bytes.len();
                    rows.bytes.resize(len * 2, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    let len = rows.ends.len();
                    rows.ends.resize(len * 2, 0);
                }
                csv_core::ReadRecordResult::Record => {
                    rows.bytes_used = outlen;
                    rows.ends_used = endlen;
                    rows.rows.push(RawRow {
                        id: RowId {
                            row,
                            line: start.line,
                            offset: start.offset,
                            fp: None,
                        },
                        bytes: (bytes_start, outlen),
                        ends: (ends_start, endlen),
                        unterminated_quote: at_eof && opened_field && quotes % 2 == 1,
                        cell_problem: None,
                    });
                    return Ok(true);
                }
                csv_core::ReadRecordResult::End => return Ok(false),
            }
        }
    }
}

/// Turns raw records into decoded cells: the file's encoding and header.
/// Shared by reference, so that rows can be decoded on any thread.
#[derive(Debug, Clone)]
pub struct Decoder {
    header: Vec<String>,
    encoding: &'static Encoding,
}

impl Decoder {
    /// Decodes record `i` of `rows`. UTF-8 that needs no change is borrowed
    /// from `rows`; anything else is decoded into `scratch`. A row that does
    /// not decode, has the wrong number of fields or holds a NUL or a
    /// byte-order mark is an error naming the column.
    pub fn decode<'a>(
        &self,
        rows: &'a RawRows,
        i: usize,
        scratch: &'a mut Cells,
    ) -> Result<CellsRef<'a>, FieldError> {
        let err = |column: Option<String>, value: Option<String>, reason: String| FieldError {
            column,
            value,
            reason,
        };
        let raw = &rows.rows[i];
        let (bytes, ends) = (rows.bytes_of(i), rows.ends_of(i));
        if raw.unterminated_quote {
            return Err(err(
                None,
                None,
                "a quoted field is never closed: the quote runs to the end of the file".into(),
            ));
        }
        if let Some((j, problem)) = raw.cell_problem {
            let value = field(ends, j)
                .and_then(|r| bytes.get(r))
                .map(|b| shorten(&String::from_utf8_lossy(b)));
            return Err(match problem {
                sheet::CellProblem::Error => err(
                    Some(self.column_name(j)),
                    value,
                    "the cell holds a spreadsheet error, not a value: fix the formula or clear the cell".into(),
                ),
                sheet::CellProblem::PastHeader => err(
                    None,
                    value,
                    "a value in a column the header row does not name: name the column or clear the cell".into(),
                ),
            });
        }
        if ends.len() != self.header.len() {
            return Err(err(
                None,
                None,
                format!(
                    "has {} fields, the header has {}",
                    ends.len(),
                    self.header.len()
                ),
            ));
        }
        // UTF-8 fast path: validate the whole record at once and borrow it;
        // an invalid byte, or a cell boundary inside a character, falls
        // through to the per-cell path that names the cell.
        if self.encoding == encoding_rs::UTF_8 {
            if let Ok(text) = std::str::from_utf8(bytes) {
                if ends.iter().all(|&e| text.is_char_boundary(e)) {
                    return self.refuse_nul_or_bom(CellsRef { text, ends });
                }
            }
        }
        scratch.clear();
        scratch.text.reserve(bytes.len());
        for (j, raw) in rows.fields(i).enumerate() {
            match decode(self.encoding, raw) {
                Some(text) if let Some(reason) = self.wrong_encoding(raw, &text) => {
                    return Err(err(Some(self.column_name(j)), Some(shorten(&text)), reason));
                }
                Some(text) => {
                    scratch.text.push_str(&text);
                    scratch.ends.push(scratch.text.len());
                }
                None => {
                    let (value, _) = self.encoding.decode_without_bom_handling(raw);
                    let reason = if self.encoding == encoding_rs::UTF_8 {
                        format!("not valid UTF-8{}", encoding_hint(self.encoding, raw))
                    } else {
                        format!("not valid {}", self.encoding.name())
                    };
                    return Err(err(
                        Some(self.column_name(j)),
                        Some(shorten(&value)),
                        reason,
                    ));
                }
            }
        }
        self.refuse_nul_or_bom(scratch.view())
    }

    fn column_name(&self, i: usize) -> String {
        self.header
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("#{}", i + 1))
    }

    /// Refuses a row with a NUL byte (binary data) or a byte-order mark
    /// inside it (two exports concatenated): neither belongs in a customer
    /// record, and both would reach the API invisibly.
    fn refuse_nul_or_bom<'a>(&self, cells: CellsRef<'a>) -> Result<CellsRef<'a>, FieldError> {
        // One pass for both: a NUL, or 0xEF, the first byte of a BOM's UTF-8
        // (EF BB BF) and of no Polish letter; only a row with one of them is
        // searched for the characters themselves.
        let bytes = cells.text.as_bytes();
        if memchr::memchr2(0, 0xEF, bytes).is_none()
            || (!bytes.contains(&0) && !cells.text.contains('\u{feff}'))
        {
            return Ok(cells);
        }
        let (i, cell) = cells
            .iter()
            .enumerate()
            .find(|(_, c)| c.contains(['\0', '\u{feff}']))
            .unwrap_or((0, ""));
        let reason = if cell.contains('\0') {
            "a NUL byte in the cell: binary data, not text"
        } else {
            "a byte-order mark inside the file: were two exports concatenated? Remove it (and any repeated header line)"
        };
        Err(FieldError {
            column: Some(self.column_name(i)),
            value: Some(shorten(&cell.replace(['\0', '\u{feff}'], ""))),
            reason: reason.into(),
        })
    }

    /// For a single-byte encoding every byte decodes to something, so a file
    /// in the wrong encoding shows otherwise: a cell of non-ASCII bytes that
    /// is valid UTF-8 (the file is UTF-8), or a C1 control character (a byte
    /// the encoding has no letter for).
    fn wrong_encoding(&self, raw: &[u8], text: &str) -> Option<String> {
        if self.encoding == encoding_rs::UTF_8 || raw.is_ascii() {
            return None;
        }
        let name = self.encoding.name();
        // Valid UTF-8 alone is not enough: in windows-1250 "ÓŚ" happens to
        // be valid UTF-8 too. UTF-8 that decodes to Latin letters (U+00C0 to
        // U+017F, where every Polish letter is) is the real sign.
        let latin = |c: char| c.is_ascii() || ('\u{c0}'..='\u{17f}').contains(&c);
        if std::str::from_utf8(raw).is_ok_and(|s| s.chars().all(latin)) {
            return Some(format!(
                "looks like UTF-8, not {name}: set encoding = \"utf-8\" in the mapping's [source]"
            ));
        }
        text.chars()
            .find(|c| ('\u{80}'..='\u{9f}').contains(c))
            .map(|c| {
                format!(
                    "byte 0x{:02X} is not a character in {name}: is the file in another encoding?",
                    c as u32
                )
            })
    }
}

/// A streaming reader of one CSV file or spreadsheet.
#[derive(Debug)]
pub struct Source<R: Read> {
    path: PathBuf,
    records: Records<R>,
    decoder: Decoder,
    info: SourceInfo,
    /// The one-record batch behind [`Source::next_row`].
    record: RawRows,
    scratch: Cells,
    next_row: u64,
}

/// Where records come from: a CSV's bytes or a spreadsheet's rows.
// One per open file: the size difference costs nothing; a box would cost
// an indirection on the CSV's hot path.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Records<R> {
    Csv(Engine<R>),
    Sheet(sheet::SheetReader),
}

impl<R: Read> Records<R> {
    /// Appends the next record to `rows` as record number `row`; `false`
    /// at the end.
    fn read(&mut self, rows: &mut RawRows, row: u64) -> std::io::Result<bool> {
        match self {
            Records::Csv(engine) => engine.read(rows, row),
            Records::Sheet(reader) => {
                let Some(sheet_row) = reader.next()? else {
                    return Ok(false);
                };
                let id = RowId {
                    row,
                    line: sheet_row.line,
                    offset: sheet_row.line,
                    fp: None,
                };
                rows.push_sheet_row(id, &sheet_row);
                Ok(true)
            }
        }
    }
}

/// How much of the file is looked at to sniff the delimiter (and whether
/// it is text at all).
const SNIFF_BYTES: usize = 64 * 1024;
/// How much of a spreadsheet is looked at to tell it from other files.
const SHEET_HEAD_BYTES: usize = 4096;

impl Source<File> {
    /// Opens a file (a CSV, or a spreadsheet by its extension) and reads
    /// its header row.
    pub fn open(path: &Path, options: &SourceOptions) -> Result<Self, SourceError> {
        if is_spreadsheet(path) {
            return Source::open_sheet(path, options);
        }
        let file = File::open(path).map_err(|e| SourceError::Open {
            path: path.into(),
            source: e,
        })?;
        Source::from_reader(file, path, options)
    }

    /// Opens a spreadsheet's sheet; its header is the first row with a
    /// value.
    fn open_sheet(path: &Path, options: &SourceOptions) -> Result<Self, SourceError> {
        let mut head = Vec::with_capacity(SHEET_HEAD_BYTES);
        let read =
            File::open(path).and_then(|f| f.take(SHEET_HEAD_BYTES as u64).read_to_end(&mut head));
        if let Err(e) = read {
            return Err(SourceError::Open {
                path: path.into(),
                source: e,
            });
        }
        // A gzip or a PDF named .xlsx is said as such; a text file named
        // .xls (some CRMs export one) is left to the spreadsheet reader,
        // which says why it cannot read it.
        if let magic::Looks::Other { what, hint } = magic::looks(&head) {
            return Err(SourceError::NotAnExport {
                path: path.into(),
                expected: "a spreadsheet",
                what,
                hint,
            });
        }
        let mut ignored = Vec::new();
        if options.delimiter.is_some() {
            ignored.push("delimiter");
        }
        if options.encoding.is_some() {
            ignored.push("encoding");
        }
        let opened = sheet::open(path, options.sheet.as_deref(), ignored).map_err(|message| {
            SourceError::Sheet {
                path: path.into(),
                message,
            }
        })?;
        if opened.names.is_empty() {
            return Err(SourceError::Empty { path: path.into() });
        }
        check_header(path, opened.line, &opened.names)?;
        let info = SourceInfo {
            delimiter: b',',
            delimiter_sniffed: false,
            encoding: encoding_rs::UTF_8,
            encoding_assumed: false,
            bom: false,
            sheet: Some(opened.info),
        };
        Ok(Source {
            path: path.into(),
            records: Records::Sheet(opened.reader),
            decoder: Decoder {
                header: opened.names,
                encoding: encoding_rs::UTF_8,
            },
            info,
            record: RawRows::default(),
            scratch: Cells::default(),
            next_row: 1,
        })
    }

    /// Whether the rows come from a spreadsheet (which cannot be entered
    /// in the middle: [`Source::open_at`] is for CSV files).
    pub fn is_sheet(&self) -> bool {
        matches!(self.records, Records::Sheet(_))
    }

    /// Opens a file positioned at a data row found earlier (its byte offset,
    /// line and record number), to re-read rows without reading what comes
    /// before. The header is taken from the caller.
    pub fn open_at(
        path: &Path,
        quote: u8,
        info: SourceInfo,
        header: Vec<String>,
        at: RowId,
    ) -> Result<Self, SourceError> {
        let mut file = File::open(path).map_err(|e| SourceError::Open {
            path: path.into(),
            source: e,
        })?;
        file.seek(SeekFrom::Start(at.offset))
            .map_err(|e| SourceError::Read {
                path: path.into(),
                source: e,
            })?;
        let engine = Engine::new(
            BufReader::new(file),
            info.delimiter,
            quote,
            at.offset,
            at.line,
        );
        Ok(Source {
            path: path.into(),
            records: Records::Csv(engine),
            decoder: Decoder {
                header,
                encoding: info.encoding,
            },
            info,
            record: RawRows::default(),
            scratch: Cells::default(),
            next_row: at.row,
        })
    }
}

impl<R: Read> Source<R> {
    /// Reads the header from any reader; `path` names it in messages.
    pub fn from_reader(
        inner: R,
        path: &Path,
        options: &SourceOptions,
    ) -> Result<Self, SourceError> {
        let read_err = |e| SourceError::Read {
            path: path.into(),
            source: e,
        };
        let mut buffered = BufReader::with_capacity(SNIFF_BYTES, inner);
        let head = buffered.fill_buf().map_err(read_err)?;
        if head.is_empty() {
            return Err(SourceError::Empty { path: path.into() });
        }
        if head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]) {
            return Err(SourceError::Utf16 { path: path.into() });
        }
        // Before anything is read as a header: a file that is not text.
        match magic::looks(head) {
            magic::Looks::Text => {}
            magic::Looks::Utf16 => return Err(SourceError::Utf16 { path: path.into() }),
            magic::Looks::Spreadsheet(kind) => {
                return Err(SourceError::SpreadsheetAsCsv {
                    path: path.into(),
                    kind,
                    extensions: ".xlsx, .xls, .ods",
                })
            }
            magic::Looks::Other { what, hint } => {
                return Err(SourceError::NotAnExport {
                    path: path.into(),
                    expected: "a CSV file",
                    what,
                    hint,
                })
            }
        }
        let bom = head.starts_with(&[0xEF, 0xBB, 0xBF]);
        let head = if bom { &head[3..] } else { head };
        let (delimiter, delimiter_sniffed) = match options.delimiter {
            Some(d) => (d, false),
            None => (sniff_delimiter(head, options.quote), true),
        };
        let info = SourceInfo {
            delimiter,
            delimiter_sniffed,
            encoding: options.encoding.unwrap_or(encoding_rs::UTF_8),
            encoding_assumed: options.encoding.is_none(),
            bom,
            sheet: None,
        };
        let base_offset = if bom {
            buffered.consume(3);
            3
        } else {
            0
        };
        let engine = Engine::new(buffered, delimiter, options.quote, base_offset, 1);
        let mut source = Source {
            path: path.into(),
            records: Records::Csv(engine),
            decoder: Decoder {
                header: Vec::new(),
                encoding: info.encoding,
            },
            info,
            record: RawRows::default(),
            scratch: Cells::default(),
            next_row: 1,
        };
        source.read_header()?;
        Ok(source)
    }

    fn read_header(&mut self) -> Result<(), SourceError> {
        self.record.clear();
        let found = self
            .records
            .read(&mut self.record, 0)
            .map_err(|e| SourceError::Read {
                path: self.path.clone(),
                source: e,
            })?;
        if !found {
            return Err(SourceError::Empty {
                path: self.path.clone(),
            });
        }
        let line = self.record.id(0).line;
        let encoding = self.info.encoding;
        let mut header: Vec<String> = Vec::new();
        for (i, raw) in self.record.fields(0).enumerate() {
            let name = decode(encoding, raw).ok_or_else(|| SourceError::HeaderEncoding {
                path: self.path.clone(),
                line,
                column: i + 1,
                encoding: encoding.name(),
                hint: encoding_hint(encoding, raw),
            })?;
            header.push(name.trim().to_string());
        }
        check_header(&self.path, line, &header)?;
        self.decoder.header = header;
        Ok(())
    }

    /// The header names, trimmed, in file order.
    pub fn header(&self) -> &[String] {
        &self.decoder.header
    }

    /// What was sniffed or assumed.
    pub fn info(&self) -> &SourceInfo {
        &self.info
    }

    /// The path the rows come from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The decoder for batches read with [`Source::read_rows`].
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The next data row; `None` at the end of the file. A row that cannot be
    /// decoded or has the wrong number of fields is an inner `Err` for that
    /// row alone; an outer `Err` is an I/O error that ends the stream.
    pub fn next_row(&mut self) -> Option<Result<Result<Row, RowError>, SourceError>> {
        self.record.clear();
        match self.records.read(&mut self.record, self.next_row) {
            Ok(false) => None,
            Err(e) => Some(Err(SourceError::Read {
                path: self.path.clone(),
                source: e,
            })),
            Ok(true) => {
                self.next_row += 1;
                let id = self.record.id(0);
                let decoded = self.decoder.decode(&self.record, 0, &mut self.scratch);
                Some(Ok(match decoded {
                    Ok(cells) => Ok(Row {
                        id,
                        cells: cells.to_cells(),
                    }),
                    Err(error) => Err(RowError {
                        id,
                        error,
                        cells: self.record.rows[0]
                            .cell_problem
                            .is_some()
                            .then(|| self.record.text_cells(0))
                            .flatten(),
                    }),
                }))
            }
        }
    }

    /// Reads the next records, undecoded, into `rows` (cleared first): up to
    /// `max_rows` of them or until about `max_bytes` are held. Returns how
    /// many; 0 at the end of the file.
    pub fn read_rows(
        &mut self,
        rows: &mut RawRows,
        max_rows: usize,
        max_bytes: usize,
    ) -> Result<usize, SourceError> {
        rows.clear();
        while rows.len() < max_rows && rows.bytes_used < max_bytes {
            let more = self
                .records
                .read(rows, self.next_row)
                .map_err(|e| SourceError::Read {
                    path: self.path.clone(),
                    source: e,
                })?;
            if !more {
                break;
            }
            self.next_row += 1;
        }
        Ok(rows.len())
    }
}

/// Refuses a header with a name twice: columns are referred to by name.
fn check_header(path: &Path, line: u64, header: &[String]) -> Result<(), SourceError> {
    for (i, name) in header.iter().enumerate() {
        if name.is_empty() {
            continue;
        }
        if let Some(first) = header[..i].iter().position(|h| h == name) {
            return Err(SourceError::DuplicateHeader {
                path: path.into(),
                line,
                name: name.clone(),
                first: first + 1,
                second: i + 1,
            });
        }
    }
    Ok(())
}

/// Decodes a cell, refusing (not replacing) bytes the encoding does not have.
fn decode<'a>(encoding: &'static Encoding, bytes: &'a [u8]) -> Option<Cow<'a, str>> {
    encoding.decode_without_bom_handling_and_without_replacement(bytes)
}

/// A hint when UTF-8 was expected but the bytes read as windows-1250, the
/// usual reason for an undecodable Polish export.
fn encoding_hint(expected: &'static Encoding, bytes: &[u8]) -> String {
    if expected == encoding_rs::UTF_8 && decode(encoding_rs::WINDOWS_1250, bytes).is_some() {
        "; the file may be windows-1250: set encoding = \"windows-1250\" in the mapping's [source]"
            .into()
    } else {
        String::new()
    }
}

/// Picks the delimiter among `,` `;` tab `|` that occurs most often in the
/// header line outside quotes; `,` when none does.
pub fn sniff_delimiter(head: &[u8], quote: u8) -> u8 {
    const CANDIDATES: [u8; 4] = [b',', b';', b'\t', b'|'];
    let mut counts = [0usize; 4];
    let mut quoted = false;
    for &b in head {
        if b == quote {
            quoted = !quoted;
        } else if !quoted && (b == b'\n' || b == b'\r') {
            break;
        } else if !quoted {
            if let Some(i) = CANDIDATES.iter().position(|&c| c == b) {
                counts[i] += 1;
            }
        }
    }
    let (best, count) = counts
        .iter()
        .enumerate()
        .max_by_key(|(i, c)| (**c, usize::MAX - i))
        .unwrap_or((0, &0));
    if *count == 0 {
        b','
    } else {
        CANDIDATES[best]
    }
}

pub use crate::text::shorten;

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(
        bytes: &[u8],
        options: &SourceOptions,
    ) -> (Vec<String>, Vec<Result<Row, RowError>>) {
        let mut source = Source::from_reader(bytes, Path::new("t.csv"), options).unwrap();
        let header = source.header().to_vec();
        let mut rows = Vec::new();
        while let Some(r) = source.next_row() {
            rows.push(r.unwrap());
        }
        (header, rows)
    }

    #[test]
    fn sniffs_delimiters() {
        assert_eq!(sniff_delimiter(b"a;b;c\n1,2;3", b'"'), b';');
        assert_eq!(sniff_delimiter(b"a\tb\tc", b'"'), b'\t');
        assert_eq!(sniff_delimiter(b"\"a;b\",c", b'"'), b',');
        assert_eq!(sniff_delimiter(b"a|b", b'"'), b'|');
        assert_eq!(sniff_delimiter(b"single", b'"'), b',');
    }

    #[test]
    fn rows_carry_record_line_and_byte_offset() {
        let data = "\u{feff}a;b\r\n1;\"two\r\nlines\"\r\n3;4\r\n";
        let (header, rows) = read_all(data.as_bytes(), &SourceOptions::default());
        assert_eq!(header, ["a", "b"]);
        let ids: Vec<RowId> = rows.iter().map(|r| r.as_ref().unwrap().id).collect();
        assert_eq!(
            ids[0],
            RowId {
                row: 1,
                line: 2,
                offset: 8,
                fp: None
            }
        );
        assert_eq!(ids[1].row, 2);
        assert_eq!(ids[1].line, 4);
        assert_eq!(&data.as_bytes()[ids[1].offset as usize..][..3], b"3;4");
        assert_eq!(rows[0].as_ref().unwrap().cells.get(1), Some("two\r\nlines"));
    }

    #[test]
    fn windows_1250_decodes_and_bad_bytes_fail_one_row() {
        let (bytes, _, _) = encoding_rs::WINDOWS_1250.encode("Imię;Miasto\nŁukasz;Łódź\n");
        let mut bytes = bytes.into_owned();
        bytes.extend_from_slice(b"Jan;\x98\nEwa;Gda\xf1sk\n");
        let options = SourceOptions {
            encoding: Some(encoding_rs::WINDOWS_1250),
            ..Default::default()
        };
        let (header, rows) = read_all(&bytes, &options);
        assert_eq!(header, ["Imię", "Miasto"]);
        assert_eq!(rows[0].as_ref().unwrap().cells.get(1), Some("Łódź"));
        let bad = rows[1].as_ref().unwrap_err();
        assert_eq!(bad.id.line, 3);
        assert_eq!(bad.error.column.as_deref(), Some("Miasto"));
        assert!(bad.error.reason.contains("windows-1250"));
        assert_eq!(rows[2].as_ref().unwrap().cells.get(1), Some("Gdańsk"));
    }

    #[test]
    fn invalid_utf8_names_the_column_and_hints_at_windows_1250() {
        let (rows_bytes, _, _) = encoding_rs::WINDOWS_1250.encode("a,b\n1,Łódź\n2,ok\n");
        let (_, rows) = read_all(&rows_bytes, &SourceOptions::default());
        let bad = rows[0].as_ref().unwrap_err();
        assert_eq!(bad.error.column.as_deref(), Some("b"));
        assert!(
            bad.error.reason.contains("windows-1250"),
            "{}",
            bad.error.reason
        );
        assert!(rows[1].is_ok());
    }

    #[test]
    fn wrong_field_count_and_duplicate_header() {
        let (_, rows) = read_all(b"a,b\n1,2,3\n1\n1,2\n", &SourceOptions::default());
        assert!(rows[0]
            .as_ref()
            .unwrap_err()
            .error
            .reason
            .contains("has 3 fields"));
        assert!(rows[1]
            .as_ref()
            .unwrap_err()
            .error
            .reason
            .contains("has 1 fields"));
        assert!(rows[2].is_ok());
        let err = Source::from_reader(
            &b"a,b,a\n"[..],
            Path::new("t.csv"),
            &SourceOptions::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("duplicate header name \"a\" (columns 1 and 3)"),
            "{err}"
        );
        let err = Source::from_reader(&b""[..], Path::new("t.csv"), &SourceOptions::default())
            .unwrap_err();
        assert!(matches!(err, SourceError::Empty { .. }));
    }
}
