//! What a file is, from its first bytes, before it is read as rows: an
//! export (text, or a spreadsheet's zip or OLE container), or something
//! else given by mistake — a gzip or zip archive, a program, a PDF,
//! random bytes. Every command opens its file through [`super::Source`],
//! which asks here once, so `check`, `run`, `init`, `retry` and `sync`
//! all say the same one sentence about a file that is not an export
//! instead of reading garbage as a header.
//!
//! Text is told from binary by control bytes, not by the encoding: a
//! windows-1250 or ISO-8859-2 export uses every byte from 0x80 up for
//! letters, and neither has a reason for C0 control bytes (but tab, line
//! breaks, form feed, a vertical tab from a cell's line break, or a DOS
//! end-of-file mark), beyond a stray one in a cell. Random bytes have one
//! in ten of them; a program's header, most.

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Looks {
    /// Text: read it as a CSV.
    Text,
    /// A spreadsheet's container (`.xlsx`/`.ods` zip, `.xls` OLE), named.
    Spreadsheet(&'static str),
    /// Not an export: what it looks like, and what to do about it.
    Other {
        what: &'static str,
        hint: &'static str,
    },
    /// UTF-16 text without a byte-order mark.
    Utf16,
}

/// An archive: what is inside may be the export.
const UNPACK: &str = "unpack it and give the export inside";
/// Anything else: the wrong file.
const WRONG_FILE: &str = "give the export itself, a CSV or a spreadsheet: .xlsx, .xls, .ods";

/// Signatures of the files people give by mistake, as (prefix, what, hint).
const SIGNATURES: &[(&[u8], &str, &str)] = &[
    (&[0x1F, 0x8B], "gzip data", UNPACK),
    (&[0xFD, b'7', b'z', b'X', b'Z', 0x00], "xz data", UNPACK),
    (
        &[b'7', b'z', 0xBC, 0xAF, 0x27, 0x1C],
        "a 7-Zip archive",
        UNPACK,
    ),
    (b"Rar!\x1A\x07", "a RAR archive", UNPACK),
    (&[0x7F, b'E', b'L', b'F'], "an ELF program", WRONG_FILE),
    (b"%PDF-", "a PDF document", WRONG_FILE),
    (&[0x89, b'P', b'N', b'G'], "a PNG image", WRONG_FILE),
    (&[0xFF, 0xD8, 0xFF], "a JPEG image", WRONG_FILE),
    (b"SQLite format 3\0", "an SQLite database", WRONG_FILE),
];

/// What `head`, a file's first bytes (a few KiB at least when the file
/// has them), says the file is.
pub(super) fn looks(head: &[u8]) -> Looks {
    if let Some(&(_, what, hint)) = SIGNATURES.iter().find(|(sig, _, _)| head.starts_with(sig)) {
        return Looks::Other { what, hint };
    }
    // "BZh", the block size, then a block's magic (π's digits in BCD):
    // "BZh" alone could start a column's name.
    if head.starts_with(b"BZh")
        && head.get(3).is_some_and(|b| (b'1'..=b'9').contains(b))
        && head.get(4..10) == Some(&[0x31, 0x41, 0x59, 0x26, 0x53, 0x59][..])
    {
        return Looks::Other {
            what: "bzip2 data",
            hint: UNPACK,
        };
    }
    if head.starts_with(b"PK\x03\x04") {
        return zip(head);
    }
    if head.starts_with(&[0xD0, 0xCF, 0x11, 0xE0]) {
        return Looks::Spreadsheet("an OLE file: .xls");
    }
    if utf16_without_bom(head) {
        return Looks::Utf16;
    }
    if binary(head) {
        return Looks::Other {
            what: "binary data, not text",
            hint: WRONG_FILE,
        };
    }
    Looks::Text
}

/// A zip is a spreadsheet when the names of its first entries are an
/// `.xlsx`'s (`xl/...`, `[Content_Types].xml` without a Word or
/// PowerPoint part) or an `.ods`'s (its `mimetype` entry says so).
fn zip(head: &[u8]) -> Looks {
    let has = |needle: &[u8]| head.windows(needle.len()).any(|w| w == needle);
    if has(b"opendocument.spreadsheet") {
        return Looks::Spreadsheet("a zip file: .ods");
    }
    if has(b"xl/") || (has(b"[Content_Types].xml") && !has(b"word/") && !has(b"ppt/")) {
        return Looks::Spreadsheet("a zip file: .xlsx");
    }
    Looks::Other {
        what: "a zip archive",
        hint: UNPACK,
    }
}

/// UTF-16 without a byte-order mark: ASCII text with a NUL at every other
/// byte.
fn utf16_without_bom(head: &[u8]) -> bool {
    let pairs = head.len().min(256) / 2;
    if pairs < 4 {
        return false;
    }
    let nul_at = |parity: usize| {
        (0..pairs)
            .filter(|i| head[2 * i + parity] == 0 && head[2 * i + 1 - parity] != 0)
            .count()
    };
    nul_at(0).max(nul_at(1)) * 10 >= pairs * 9
}

/// Binary: more than one byte in a hundred a C0 control no text uses (NUL
/// among them), and a few of them. Not any one such byte: a stray NUL in a
/// cell, even of a three-line file, costs that row (`check` names it), not
/// the file.
fn binary(head: &[u8]) -> bool {
    let controls = head
        .iter()
        .filter(|&&b| b < 0x20 && !matches!(b, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | 0x1A))
        .count();
    controls >= 4 && controls * 100 > head.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_programs_and_documents_are_named() {
        let what = |head: &[u8]| match looks(head) {
            Looks::Other { what, .. } => what,
            other => panic!("{other:?}"),
        };
        assert_eq!(what(&[0x1F, 0x8B, 0x08, 0x00, 1, 2, 3]), "gzip data");
        assert_eq!(what(b"\x7FELF\x02\x01\x01\0\0\0"), "an ELF program");
        assert_eq!(what(b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n"), "a PDF document");
        assert_eq!(what(b"BZh91AY&SY\x01\x02"), "bzip2 data");
        assert_eq!(looks(b"BZhandel;Miasto\n1;2\n"), Looks::Text);
        assert_eq!(what(b"PK\x03\x04\x14\0\0\0notes.txt"), "a zip archive");
        assert_eq!(
            looks(b"PK\x03\x04\x14\0\0\0[Content_Types].xml"),
            Looks::Spreadsheet("a zip file: .xlsx")
        );
    }

    #[test]
    fn random_bytes_are_binary_and_polish_8_bit_text_is_not() {
        // A fixed pseudo-random sequence (xorshift), the way a corrupt
        // download or a mistaken file reads.
        let mut x: u32 = 0x9E37_79B9;
        let random: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 24) as u8
            })
            .collect();
        assert!(matches!(looks(&random), Looks::Other { what, .. } if what.starts_with("binary")));
        // Polish letters are high bytes in both code pages, never controls.
        let text = "Nazwisko;Miasto;Uwagi\r\nŻółć;Łódź;\"ąęśźćń ĄĘŚŹĆŃ\"\r\n".repeat(50);
        for encoding in [encoding_rs::WINDOWS_1250, encoding_rs::ISO_8859_2] {
            let (bytes, _, unmappable) = encoding.encode(&text);
            assert!(!unmappable);
            assert_eq!(looks(&bytes), Looks::Text, "{}", encoding.name());
        }
        assert_eq!(looks(text.as_bytes()), Looks::Text);
        // A vertical tab from a cell's line break is text; so is a stray
        // NUL in one cell of many rows (that row is invalid, not the file).
        assert_eq!(looks(b"a,b\n1,\"x\x0By\"\n"), Looks::Text);
        let mut rows = "Nazwisko;Telefon\r\n".to_string() + &"Kowalski;601234567\r\n".repeat(20);
        rows.push_str("Nul\0ek;601234567\r\n");
        assert_eq!(looks(rows.as_bytes()), Looks::Text);
        assert_eq!(looks(b"a;b\nN\0w;1\n"), Looks::Text);
        let utf16: Vec<u8> = "a;b\r\n1;2\r\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        assert_eq!(looks(&utf16), Looks::Utf16);
    }
}
