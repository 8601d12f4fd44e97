//! How a file is read: a spreadsheet's sheet, or a CSV's encoding (UTF-8,
//! with or without a byte-order mark, or which of the two Polish 8-bit
//! code pages) and its delimiter (the one that splits the first lines into
//! the header's number of fields), each with the reason `init` writes
//! next to it.

use std::path::Path;

use encoding_rs::Encoding;

use super::error::InitError;
use crate::source::{is_spreadsheet, SourceError, SourceOptions};

/// How much of a CSV is looked at to tell its encoding.
const ENCODING_BYTES: usize = 8 << 20;
/// How much of a CSV is looked at to tell its delimiter.
const DELIMITER_BYTES: usize = 256 << 10;

/// How the file is read, and why.
#[derive(Debug)]
pub(super) struct Sniffed {
    pub(super) options: SourceOptions,
    /// Why this encoding (a byte-order mark, skipped when read, is one).
    pub(super) encoding_why: String,
    /// Why this delimiter.
    pub(super) delimiter_why: String,
}

/// How `path` is read: `sheet` for a spreadsheet; for a CSV, the encoding
/// and the delimiter its first bytes say.
pub(super) fn sniff(path: &Path, sheet: Option<&str>) -> Result<Sniffed, InitError> {
    if is_spreadsheet(path) {
        return Ok(Sniffed {
            options: SourceOptions {
                sheet: sheet.map(str::to_string),
                ..SourceOptions::default()
            },
            encoding_why: String::new(),
            delimiter_why: String::new(),
        });
    }
    let head = read_head(path)?;
    let whole = head.len() < ENCODING_BYTES;
    let bom = head.starts_with(&[0xEF, 0xBB, 0xBF]);
    let body = if bom { &head[3..] } else { &head[..] };
    let (encoding, encoding_why) = sniff_encoding(body, whole, bom);
    let cut = &body[..body.len().min(DELIMITER_BYTES)];
    let text = encoding.decode_without_bom_handling(cut).0;
    let (delimiter, delimiter_why) = sniff_delimiter(&text);
    Ok(Sniffed {
        options: SourceOptions {
            delimiter: Some(delimiter),
            encoding: Some(encoding),
            ..SourceOptions::default()
        },
        encoding_why,
        delimiter_why,
    })
}

/// The first [`ENCODING_BYTES`] of the file (all of it when shorter).
fn read_head(path: &Path) -> Result<Vec<u8>, InitError> {
    let mut head = Vec::new();
    let file = std::fs::File::open(path).map_err(|e| SourceError::Open {
        path: path.into(),
        source: e,
    })?;
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, ENCODING_BYTES as u64),
        &mut head,
    )
    .map_err(|e| InitError::Read {
        path: path.display().to_string(),
        source: e,
    })?;
    Ok(head)
}

/// UTF-8 when the bytes are UTF-8 (or start with its byte-order mark);
/// otherwise one of the two code pages Polish text comes in: windows-1250
/// uses bytes 0x80–0x9F for letters (ś, ź, Ś, Ź...) that ISO-8859-2 keeps
/// for control codes, and they place ą, ś, ź differently.
fn sniff_encoding(bytes: &[u8], whole: bool, bom: bool) -> (&'static Encoding, String) {
    if bom {
        return (
            encoding_rs::UTF_8,
            "a UTF-8 byte-order mark (skipped when read)".into(),
        );
    }
    match std::str::from_utf8(bytes) {
        Ok(_) => return (encoding_rs::UTF_8, "the bytes read are UTF-8".into()),
        // Cut in the middle of a character at the end of what was read.
        Err(e) if e.error_len().is_none() && !whole => {
            return (encoding_rs::UTF_8, "the bytes read are UTF-8".into())
        }
        Err(_) => {}
    }
    let windows_only = bytes.iter().filter(|b| (0x80..=0x9F).contains(*b)).count();
    let iso = bytes
        .iter()
        .filter(|b| matches!(b, 0xA1 | 0xA6 | 0xAC | 0xB1 | 0xB6 | 0xBC))
        .count();
    let windows = bytes.iter().filter(|b| matches!(b, 0xA5 | 0xB9)).count();
    if windows_only == 0 && iso > windows {
        (
            encoding_rs::ISO_8859_2,
            "not UTF-8; the letters read as ISO-8859-2".into(),
        )
    } else {
        (
            encoding_rs::WINDOWS_1250,
            "not UTF-8; Polish letters read as windows-1250".into(),
        )
    }
}

/// The delimiter among `,` `;` tab `|` that splits the first lines into as
/// many fields as the header has, most often, with the most fields.
fn sniff_delimiter(text: &str) -> (u8, String) {
    // Whole lines only.
    let text = match text.rfind('\n') {
        Some(i) if i + 1 < text.len() => &text[..=i],
        _ => text,
    };
    let mut best: Option<(u8, usize, usize, usize)> = None; // (d, width, consistent, lines)
    for d in [b',', b';', b'\t', b'|'] {
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(d)
            .has_headers(false)
            .flexible(true)
            .from_reader(text.as_bytes());
        let mut records = reader.records().take(200).filter_map(Result::ok);
        let Some(first) = records.next() else {
            continue;
        };
        let width = first.len();
        let (mut lines, mut consistent) = (0, 0);
        for r in records {
            lines += 1;
            consistent += usize::from(r.len() == width);
        }
        if width < 2 {
            continue;
        }
        let better = best.is_none_or(|(_, w, c, l)| {
            // Compare consistent/lines fractions, then widths.
            let ours = consistent * l.max(1);
            let theirs = c * lines.max(1);
            ours > theirs || (ours == theirs && width > w)
        });
        if better {
            best = Some((d, width, consistent, lines));
        }
    }
    match best {
        Some((d, width, consistent, lines)) => (
            d,
            format!("{width} columns in the header; {consistent} of the next {lines} lines split into as many"),
        ),
        None => (b',', "one column: no delimiter splits the header".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_are_told_apart() {
        // "Łódź, ąś" in windows-1250 and in ISO-8859-2.
        let (w, _, _) = encoding_rs::WINDOWS_1250.encode("Łódź, ąś źle");
        let (i, _, _) = encoding_rs::ISO_8859_2.encode("Łódź, ąś źle");
        assert_eq!(sniff_encoding(&w, true, false).0, encoding_rs::WINDOWS_1250);
        assert_eq!(sniff_encoding(&i, true, false).0, encoding_rs::ISO_8859_2);
        assert_eq!(
            sniff_encoding("Łódź".as_bytes(), true, false).0,
            encoding_rs::UTF_8
        );
    }

    #[test]
    fn delimiters_are_the_ones_that_split_lines_evenly() {
        let text = "a;b,c;d\n1;2,3;4\n5;6;7\n";
        assert_eq!(sniff_delimiter(text).0, b';');
        assert_eq!(sniff_delimiter("a\tb\n1\t2\n").0, b'\t');
        assert_eq!(sniff_delimiter("\"x,y\";b\n1;2\n").0, b';');
    }
}
