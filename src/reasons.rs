//! Problems grouped by reason: what `report`, `check` and the end of `run`
//! list first, most rows first — "412 rows — customer: Phone number must be
//! numeric — e.g. lines 17, 45, 98" — so that 4,000 failed rows read as the
//! three reasons they fail for.
//!
//! Rows group when their messages are the same once what differs per row is
//! taken out ([`generalize`]): the row's own line, the cell's value (`value
//! "…"`, and the value again where the reason repeats it), and long numbers
//! (ids). Column names, formats and the system's lists stay: they are the
//! reason.

use std::collections::HashMap;

use serde::Serialize;

/// How many rows a reason lists in JSON, and how many lines in text.
pub const ROWS_LISTED: usize = 10;
const LINES_SHOWN: usize = 3;

/// One reason and the rows that have it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Reason {
    /// The stage (`customer`, `field_group`, ...; `mapping` for a row that
    /// could not be read or mapped).
    pub stage: String,
    /// The outcome: `invalid`, `failed`, `unknown`, `skipped`.
    pub status: String,
    pub reason: String,
    /// How many rows.
    pub count: u64,
    /// The first rows (by row number), at most [`ROWS_LISTED`].
    pub rows: Vec<u64>,
    /// Their lines in the file, in the same order.
    pub lines: Vec<u64>,
}

/// Gathers problems into reasons.
#[derive(Debug, Default)]
pub struct Reasons {
    by_key: HashMap<(String, String, String), Reason>,
}

impl Reasons {
    /// Adds one row's problem at `stage`. A message listing several
    /// problems (`line 3, ...; line 3, ...`) counts under each.
    pub fn add(&mut self, stage: &str, status: &str, row: u64, line: u64, message: &str) {
        for part in parts(message) {
            let reason = generalize(part);
            let entry = self
                .by_key
                .entry((stage.to_string(), status.to_string(), reason.clone()))
                .or_insert_with(|| Reason {
                    stage: stage.to_string(),
                    status: status.to_string(),
                    reason,
                    count: 0,
                    rows: Vec::new(),
                    lines: Vec::new(),
                });
            // A row counts once per reason, however often it has it.
            if entry.rows.last() == Some(&row) {
                continue;
            }
            entry.count += 1;
            if entry.rows.len() < ROWS_LISTED {
                entry.rows.push(row);
                entry.lines.push(line);
            }
        }
    }

    /// The reasons, most rows first (then by stage, then by first row).
    pub fn sorted(self) -> Vec<Reason> {
        let mut all: Vec<Reason> = self.by_key.into_values().collect();
        for r in &mut all {
            // Rows arrive in row order from every caller but one (a
            // parallel check); keep the first ones either way.
            let mut pairs: Vec<(u64, u64)> = r
                .rows
                .iter()
                .copied()
                .zip(r.lines.iter().copied())
                .collect();
            pairs.sort_unstable();
            (r.rows, r.lines) = pairs.into_iter().unzip();
        }
        all.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.rows.first().cmp(&b.rows.first()))
                .then_with(|| a.reason.cmp(&b.reason))
        });
        all
    }
}

/// A reason as a line for a person.
pub fn line(r: &Reason) -> String {
    let rows = if r.count == 1 { "row" } else { "rows" };
    let lines: Vec<String> = r
        .lines
        .iter()
        .take(LINES_SHOWN)
        .map(u64::to_string)
        .collect();
    let example = match lines.len() {
        0 => String::new(),
        1 if r.count == 1 => format!(" — line {}", lines[0]),
        _ => format!(" — e.g. lines {}", lines.join(", ")),
    };
    let status = if r.status == "invalid" || r.status == "failed" {
        String::new()
    } else {
        format!(" ({})", r.status)
    };
    format!(
        "{} {rows} — {}{status}: {}{example}",
        r.count, r.stage, r.reason
    )
}

/// The reasons as text: a heading, then one line each, at most `limit`.
pub fn render(reasons: &[Reason], limit: usize) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if reasons.is_empty() {
        return out;
    }
    let _ = writeln!(out, "problems by reason, most rows first:");
    for r in reasons.iter().take(limit) {
        let _ = writeln!(out, "  {}", line(r));
    }
    if reasons.len() > limit {
        let _ = writeln!(
            out,
            "  ... and {} more reason(s) (--json lists all)",
            reasons.len() - limit
        );
    }
    out
}

/// The problems one message holds: a row's invalid message joins each of
/// its problems (`line N, ...`) with `; `.
fn parts(message: &str) -> impl Iterator<Item = &str> {
    let mut rest = message;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        // The next part starts at "; line <digit>".
        let mut from = 0;
        let cut = loop {
            match rest[from..].find("; line ") {
                Some(i) => {
                    let at = from + i;
                    if rest[at + 7..].starts_with(|c: char| c.is_ascii_digit()) {
                        break Some(at);
                    }
                    from = at + 7;
                }
                None => break None,
            }
        };
        let (part, next) = match cut {
            Some(at) => (&rest[..at], &rest[at + 2..]),
            None => (rest, ""),
        };
        rest = next;
        Some(part)
    })
}

/// A problem's message without what differs from row to row, so that rows
/// with the same problem group: the leading `line N, ` (or `line N: `),
/// `value "…"` (and the value where the reason repeats it as a word), or in
/// a message without a value (the system's), numbers of four digits or more
/// that stand alone (ids).
pub fn generalize(message: &str) -> String {
    let owned_text = without_row_references(message.trim());
    let mut text = owned_text.as_str();
    // "line 24, column ..." / "line 340: has 10 fields ..."
    if let Some(rest) = text.strip_prefix("line ") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            let after = &rest[digits..];
            if let Some(r) = after
                .strip_prefix(", ")
                .or_else(|| after.strip_prefix(": "))
            {
                text = r;
            }
        }
    }
    // `: value "v"` up to the `": ` that ends it (a value may hold quotes).
    let mut value = None;
    let mut owned = text.to_string();
    if let Some(start) = owned.find("value \"") {
        let from = start + "value \"".len();
        if let Some(len) = owned[from..].find("\": ") {
            value = Some(owned[from..from + len].to_string());
            // `…: value "v": reason` loses `: value "v"`; `value "v":
            // reason` at the start loses `value "v": `.
            let cut = if owned[..start].ends_with(": ") {
                start - 2..from + len + 1
            } else {
                start..from + len + 3
            };
            owned.replace_range(cut, "");
        }
    }
    match value {
        // A row's own problem: its value was the part that differs.
        Some(v) if v.chars().count() >= 2 => replace_word(&owned, &v, "…"),
        Some(_) => owned,
        // The system's words about a row: ids differ (a call's request id
        // is one per call, a record's or a customer's one per row).
        None => long_numbers(&without_request_ids(&owned)),
    }
}

/// `text` with another row named (`as row 17 (line 18)`) as "an earlier
/// row": which one differs from row to row.
fn without_row_references(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("row ") {
        let after = &rest[i + 4..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let tail = &after[digits..];
        let starts_word = i == 0 || !rest[..i].ends_with(|c: char| c.is_alphanumeric());
        if digits > 0 && starts_word {
            if let Some(close) = tail
                .strip_prefix(" (line ")
                .and_then(|t| t.find(')').map(|j| (t, j)))
                .filter(|(t, j)| t[..*j].bytes().all(|b| b.is_ascii_digit()))
            {
                out.push_str(&rest[..i]);
                out.push_str("an earlier row");
                rest = &close.0[close.1 + 1..];
                continue;
            }
        }
        out.push_str(&rest[..i + 4]);
        rest = &rest[i + 4..];
    }
    out.push_str(rest);
    out
}

/// `text` without the server's per-call ids: ` (request_id 5367…)`,
/// `request_id: …`, `X-Request-Id: …`, and hexadecimal tokens of eight
/// characters or more that hold a digit (what such ids look like).
fn without_request_ids(text: &str) -> String {
    let mut out = text.to_string();
    for marker in [" (request_id ", " (X-Request-Id "] {
        while let Some(start) = out.find(marker) {
            match out[start..].find(')') {
                Some(len) => out.replace_range(start..start + len + 1, ""),
                None => out.truncate(start),
            }
        }
    }
    out.split(' ')
        .map(|word| {
            let token = word.trim_matches(|c: char| !c.is_ascii_alphanumeric());
            let hex = token.len() >= 8
                && token.bytes().all(|b| b.is_ascii_hexdigit())
                && token.bytes().any(|b| b.is_ascii_digit())
                && token.bytes().any(|b| b.is_ascii_alphabetic());
            if hex {
                word.replace(token, "ID")
            } else {
                word.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `text` with every occurrence of `word` that stands alone (not inside a
/// longer word or number) replaced.
fn replace_word(text: &str, word: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let inner = |c: char| c.is_alphanumeric() || c == '_';
    while let Some(i) = rest.find(word) {
        let before = rest[..i].chars().next_back();
        let after = rest[i + word.len()..].chars().next();
        out.push_str(&rest[..i]);
        if before.is_some_and(inner) || after.is_some_and(inner) {
            out.push_str(word);
        } else {
            out.push_str(with);
        }
        rest = &rest[i + word.len()..];
    }
    out.push_str(rest);
    out
}

/// Runs of four or more digits that stand alone become `N`, but for
/// zero-padded ones: `00001` is a code (a campaign), not an id.
fn long_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() && (i == 0 || !is_word(chars[i - 1])) {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let alone = i == chars.len() || !is_word(chars[i]);
            if alone && i - start >= 4 && chars[start] != '0' {
                out.push('N');
            } else {
                out.extend(&chars[start..i]);
            }
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '-'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_call_ids_are_taken_out_so_calls_group() {
        for (a, b) in [
            (
                "HTTP 500: Internal error. (request_id 53678450401cf)",
                "HTTP 500: Internal error. (request_id 9a0b1c2d3e4f5)",
            ),
            (
                "gave up after 6 attempts: HTTP 503 (X-Request-Id 7f3e9c21-aa01)",
                "gave up after 6 attempts: HTTP 503 (X-Request-Id 0b5d4e66-ff02)",
            ),
            (
                "record 100231 of customer 4411 failed: 5f0c9a7e2b",
                "record 100977 of customer 5012 failed: a1b2c3d4e5",
            ),
        ] {
            assert_eq!(generalize(a), generalize(b), "{a}");
        }
        assert_eq!(
            generalize("HTTP 500: Internal error. (request_id 53678450401cf)"),
            "HTTP 500: Internal error."
        );
        // Words are not ids.
        assert_eq!(generalize("deadbeef cafe facade"), "deadbeef cafe facade");
        // Another row named: which one differs.
        assert_eq!(
            generalize(
                "same email as row 6 (line 9): one customer, two rows; only the first is sent"
            ),
            generalize(
                "same email as row 170 (line 181): one customer, two rows; only the first is sent"
            ),
        );
        assert_eq!(
            generalize("same email as row 6 (line 9): one customer"),
            "same email as an earlier row: one customer"
        );
    }

    #[test]
    fn per_row_values_are_taken_out() {
        assert_eq!(
            generalize(
                "line 24, column \"Telefon\": value \"601 234 56x\": letters in a phone number"
            ),
            "column \"Telefon\": letters in a phone number"
        );
        assert_eq!(
            generalize("line 340: has 10 fields, the header has 23"),
            "has 10 fields, the header has 23"
        );
        // A value without a column (preflight's words on a constant field).
        assert_eq!(
            generalize(
                "line 2: value \"jdoe\": account_manager jdoe is not an agent of this system"
            ),
            "account_manager … is not an agent of this system"
        );
        // The value repeated in the reason, as a word.
        assert_eq!(
            generalize("line 3, column \"Opiekun\": value \"ghost\": account_manager ghost is not an agent of this system; it has j.doe"),
            "column \"Opiekun\": account_manager … is not an agent of this system; it has j.doe"
        );
        // A value holding quotes.
        assert_eq!(
            generalize("line 9, column \"N\": value \"a \"b\" c\": not an e-mail address"),
            "column \"N\": not an e-mail address"
        );
        // Ids, not small counts or names with digits.
        assert_eq!(
            generalize(
                "customer 123456 does not exist in campaign 00001 (HTTP 404, windows-1250, UTF-8)"
            ),
            "customer N does not exist in campaign 00001 (HTTP 404, windows-1250, UTF-8)"
        );
    }

    #[test]
    fn rows_group_by_reason_most_rows_first() {
        let mut r = Reasons::default();
        for row in 1..=30u64 {
            let message = if row % 10 == 0 {
                format!(
                    "line {}, column \"E-mail\": value \"x{row}\": not an e-mail address",
                    row + 1
                )
            } else {
                format!(
                    "line {}, column \"Telefon\": value \"60{row}x\": letters in a phone number",
                    row + 1
                )
            };
            r.add("mapping", "invalid", row, row + 1, &message);
        }
        r.add("customer", "failed", 31, 32, "Phone number must be numeric");
        // Two problems in one row: counted under each.
        r.add(
            "mapping",
            "invalid",
            32,
            33,
            "line 33, column \"E-mail\": value \"y\": not an e-mail address; line 33, column \"Telefon\": value \"z\": letters in a phone number",
        );
        let all = r.sorted();
        assert_eq!(all.len(), 3);
        assert_eq!(
            (all[0].count, all[0].reason.as_str()),
            (28, "column \"Telefon\": letters in a phone number")
        );
        assert_eq!(all[0].rows, [1, 2, 3, 4, 5, 6, 7, 8, 9, 11]);
        assert_eq!(
            (all[1].count, all[1].rows.clone()),
            (4, vec![10, 20, 30, 32])
        );
        assert_eq!(
            line(&all[0]),
            "28 rows — mapping: column \"Telefon\": letters in a phone number — e.g. lines 2, 3, 4"
        );
        assert_eq!(
            line(&all[2]),
            "1 row — customer: Phone number must be numeric — line 32"
        );
    }

    #[test]
    fn a_reason_with_a_semicolon_is_one_part() {
        let m = "line 5, column \"S\": value \"99\": status_id 99 is not a status of campaign 00001; it has 1 Nowy (TO_CALL)";
        assert_eq!(parts(m).count(), 1);
        assert_eq!(
            generalize(m),
            "column \"S\": status_id … is not a status of campaign 00001; it has 1 Nowy (TO_CALL)"
        );
    }
}
