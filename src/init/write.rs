//! The mapping's text: `[source]`, `[customer]` with `match`, the
//! address, and every other column as a commented `custom_fields` line,
//! each choice with a comment that says why and quotes a few of the
//! column's values.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

use super::choose::{Choice, Chosen};
use super::names::{Table, Target};
use super::profile::{DateGuess, IdNumber, Kind, Profile};
use super::sniff::Sniffed;
use crate::preflight::System;
use crate::source::SheetInfo;

/// Where comments start on a mapping line.
const COMMENT_AT: usize = 44;

/// The mapping's text, line by line.
#[derive(Debug, Default)]
pub(super) struct Writer {
    pub(super) text: String,
}

impl Writer {
    pub(super) fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
    }

    /// `key = value` with a comment at [`COMMENT_AT`].
    fn entry(&mut self, key: &str, value: &str, comment: &str) {
        let code = format!("{key} = {value}");
        self.commented_code(&code, comment);
    }

    pub(super) fn commented_code(&mut self, code: &str, comment: &str) {
        if comment.is_empty() {
            self.line(code);
        } else {
            let width = code.chars().count();
            let pad = COMMENT_AT.saturating_sub(width).max(1);
            self.line(&format!("{code}{}# {comment}", " ".repeat(pad)));
        }
    }

    pub(super) fn preamble(&mut self, path: &Path, sampled: u64) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        self.line(&format!(
            "# Mapping for {} written by `thulium-import init` (version {}) from",
            comment_safe(&name),
            env!("CARGO_PKG_VERSION")
        ));
        self.line(&format!(
            "# its header and its first {sampled} data rows. Each choice is commented with"
        ));
        self.line("# the column's sample values: read them, correct what is wrong, then");
        self.line("# `thulium-import check <FILE> --mapping <THIS FILE>`. The language is in");
        self.line("# mappings/README.md. The comments quote the file's values: keep this file");
        self.line("# as private as the export.");
        self.line("");
    }

    /// `[source]`: the sheet of a spreadsheet, or how a CSV is read.
    pub(super) fn source(&mut self, sniffed: &Sniffed, sheet: Option<&SheetInfo>) {
        match sheet {
            Some(sheet) => self.sheet_source(sheet),
            None => self.csv_source(sniffed),
        }
    }

    fn csv_source(&mut self, sniffed: &Sniffed) {
        self.line("[source]");
        let encoding = sniffed
            .options
            .encoding
            .unwrap_or(encoding_rs::UTF_8)
            .name()
            .to_lowercase();
        self.entry("encoding", &quote(&encoding), &sniffed.encoding_why);
        let delimiter = match sniffed.options.delimiter.unwrap_or(b',') {
            b'\t' => "\"\\t\"".to_string(),
            d => quote(&(d as char).to_string()),
        };
        self.entry("delimiter", &delimiter, &sniffed.delimiter_why);
    }

    fn sheet_source(&mut self, sheet: &SheetInfo) {
        self.line("[source]");
        self.entry(
            "sheet",
            &quote(&sheet.name),
            &format!(
                "{}: {} of {} sheet(s); delimiter and encoding do not apply",
                sheet.format,
                if sheet.named { "named" } else { "the first" },
                sheet.sheets
            ),
        );
    }

    /// `[source] customer_id`: the column of Thulium's customer ids.
    pub(super) fn customer_id(&mut self, column: &Profile) {
        self.entry(
            "customer_id",
            &quote(&column.name),
            &format!(
                "Thulium customer ids: these rows skip creation; {}",
                samples(column)
            ),
        );
    }

    /// `[customer]` with its fields and `match`, `[customer.address]`, and
    /// `[customer.custom_fields]` with the columns left, commented.
    pub(super) fn customer(
        &mut self,
        columns: &[Profile],
        chosen: &Chosen,
        system: Option<&System>,
    ) {
        self.line("");
        self.line("[customer]                                  # POST /api/batch/customers");
        let agents: Option<HashSet<&str>> = system
            .and_then(|s| s.agents.as_ref())
            .map(|a| a.iter().map(|a| a.login.as_str()).collect());
        for choice in chosen
            .fields
            .iter()
            .filter(|c| c.target.table == Table::Customer)
        {
            self.customer_field(choice, &columns[choice.column], agents.as_ref());
        }
        self.match_keys(chosen);
        self.address(columns, chosen);
        self.custom_fields(columns, chosen);
    }

    /// A customer field; `account_manager` commented out when the system's
    /// agents are known and most values are not their logins.
    fn customer_field(
        &mut self,
        choice: &Choice,
        column: &Profile,
        agents: Option<&HashSet<&str>>,
    ) {
        let (spec, comment) = choice_spec(choice, column);
        if choice.target.key == "account_manager" {
            if let Some(agents) = agents {
                let logins = column
                    .values
                    .iter()
                    .filter(|v| agents.contains(v.as_str()))
                    .count();
                if logins * 2 < column.values.len() {
                    self.commented_code(
                        &format!("# account_manager = {spec}"),
                        &format!(
                            "the values are not agent logins of the system ({}): give logins, or leave it out",
                            samples(column)
                        ),
                    );
                    return;
                }
            }
        }
        self.entry(choice.target.key, &spec, &comment);
    }

    /// `match` (or a commented example when no key is unique), why each
    /// key was or was not suggested, and `on_match`.
    fn match_keys(&mut self, chosen: &Chosen) {
        match chosen.match_keys.as_slice() {
            [] => {
                self.line("# match = \"identifier\"                      # no column is a unique key in the rows sampled: every row");
                self.line("#                                            # creates a customer; a key finds the ones that exist");
            }
            [one] => self.entry(
                "match",
                &quote(one),
                "find customers that exist by this key",
            ),
            keys => {
                let list: Vec<String> = keys.iter().map(|k| quote(k)).collect();
                self.entry(
                    "match",
                    &format!("[{}]", list.join(", ")),
                    "find customers that exist by these keys, in order",
                );
            }
        }
        for why in &chosen.match_why {
            self.line(&format!("#   {why}"));
        }
        if !chosen.match_keys.is_empty() {
            self.entry(
                "on_match",
                &quote("update"),
                "a customer found is updated; \"skip\" leaves it as it is",
            );
        }
    }

    /// `[customer.address]`, when a column is part of one.
    fn address(&mut self, columns: &[Profile], chosen: &Chosen) {
        let address: Vec<&Choice> = chosen
            .fields
            .iter()
            .filter(|c| c.target.table == Table::Address)
            .collect();
        if !address.is_empty() {
            self.line("");
            self.line("[customer.address]");
            for choice in address {
                let (spec, comment) = choice_spec(choice, &columns[choice.column]);
                self.entry(choice.target.key, &spec, &comment);
            }
        }
    }

    /// `[customer.custom_fields]`: every column not chosen, commented.
    fn custom_fields(&mut self, columns: &[Profile], chosen: &Chosen) {
        self.line("");
        self.line("[customer.custom_fields]");
        self.line("# The other columns. To send one to a custom field, uncomment its line and");
        self.line("# put the field's name in Thulium on the left.");
        for c in chosen.unused(columns.len()) {
            let column = &columns[c];
            let (spec, comment) = custom_spec(column);
            self.commented_code(&format!("# {} = {spec}", quote(&column.name)), &comment);
        }
    }
}

/// A chosen field's value spec, and its comment led by how the column
/// was chosen when not by its name alone.
fn choice_spec(choice: &Choice, column: &Profile) -> (String, String) {
    let (spec, mut comment) = spec_for(choice.target, column);
    if let Some(how) = &choice.how {
        comment = format!("{how}; {comment}");
    }
    (spec, comment)
}

/// The value spec of a customer field and its comment.
fn spec_for(target: &Target, column: &Profile) -> (String, String) {
    let mut options: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    match target.key {
        "surname" => options.push("required = true".into()),
        "email" => {
            if let Kind::Email(Some(sep)) = column.kind {
                options.push(format!("split = {}", quote(&sep.to_string())));
                notes.push("some cells hold several".into());
            }
        }
        "phone_number" => {
            if let Some(Some(sep)) = column.phone {
                options.push(format!("split = {}", quote(&sep.to_string())));
                notes.push("some cells hold several".into());
            }
            options.push("transform = [\"phone\"]".into());
        }
        "nip" => {
            // The API searches NIPs by their digits; sent as digits too, so
            // that one customer's NIP reads the same whoever typed it.
            if let Some(IdNumber::Nip { separated: true }) = column.id_number {
                options.push("transform = [\"digits\"]".into());
                notes.push("separators taken out".into());
            }
        }
        "birthdate" => {
            if let Kind::Date(date) = &column.kind {
                options.push(format!("date = {}", quote(date.format)));
                notes.push(date_note(date));
            }
        }
        "vip" => {
            let (yes, no) = match column.kind {
                Kind::Bool(yes, no) => (yes, no),
                _ => ("tak", "nie"),
            };
            options.push(format!(
                "map = {{ {} = true, {} = false }}",
                quote(yes),
                quote(no)
            ));
        }
        _ => {}
    }
    let spec = if options.is_empty() {
        quote(&column.name)
    } else {
        format!(
            "{{ column = {}, {} }}",
            quote(&column.name),
            options.join(", ")
        )
    };
    notes.push(samples(column));
    (spec, notes.join("; "))
}

/// A commented custom field's spec and comment: options from the values.
pub(super) fn custom_spec(column: &Profile) -> (String, String) {
    let name = quote(&column.name);
    let samples = samples(column);
    match &column.kind {
        Kind::Integer => (
            format!("{{ column = {name}, type = \"integer\" }}"),
            format!("whole numbers, {samples}"),
        ),
        Kind::Bool(yes, no) => (
            format!(
                "{{ column = {name}, map = {{ {} = true, {} = false }} }}",
                quote(yes),
                quote(no)
            ),
            format!("yes/no, {samples}"),
        ),
        Kind::Date(date) => (name, format!("{}, {samples}", date_note(date))),
        Kind::Email(_) => (name, format!("e-mail addresses, {samples}")),
        _ if column.phone.is_some() => (name, format!("phone numbers?, {samples}")),
        _ => (name, samples),
    }
}

/// "e.g. "a", "b", "c"", the first three different values, shortened.
fn samples(column: &Profile) -> String {
    if column.values.is_empty() {
        return "empty in the rows sampled".into();
    }
    let shown: Vec<String> = column
        .examples()
        .into_iter()
        .map(|v| format!("\"{}\"", comment_safe(v)))
        .collect();
    format!("e.g. {}", shown.join(", "))
}

/// Text on one line: control characters (line breaks) become spaces.
pub(super) fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn date_note(date: &DateGuess) -> String {
    let mut note = format!("dates as {}", date.format);
    if date.ambiguous {
        note.push_str(" (day first assumed: no day in the sample is over 12)");
    }
    if date.misses > 0 {
        let _ = write!(note, " ({} value(s) read otherwise)", date.misses);
    }
    note
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Text for a comment: one line, at most 30 characters.
pub(super) fn comment_safe(s: &str) -> String {
    let one = one_line(s);
    let mut short: String = one.chars().take(30).collect();
    if one.chars().count() > 30 {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(quote("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
