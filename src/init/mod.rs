//! `init`: a first mapping for a file, written from its header and its
//! first rows, so that nobody starts from a blank page.
//!
//! - `[source]` from sniffing: the encoding (UTF-8, or which of the two
//!   Polish 8-bit code pages), a byte-order mark, the delimiter (the one
//!   that splits the first lines into the header's number of fields), or a
//!   spreadsheet's sheet.
//! - Columns matched to customer fields by name ([`TARGETS`]): case,
//!   diacritics, punctuation and words such as "klienta" or "customer"
//!   ignored, Polish and English synonyms, then near misses (one letter
//!   off, with `strsim`). Values can veto a name: an "E-mail" column
//!   without addresses is not mapped to `email`.
//! - Options from the values ([`Profile`]): `phone` for phone numbers,
//!   `split` where cells hold several, a `date` format (day first or month
//!   first decided by values over 12), `map` for yes/no columns, `type =
//!   "integer"` for whole numbers.
//! - A column whose values are unique in the sample suggested as `match`.
//! - Every other column as a commented `custom_fields` line, with samples.
//!
//! The mapping is compiled and checked against the sampled rows before it
//! is written: `check` accepts what `init` writes.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

mod choose;
mod error;
mod names;
mod profile;
mod sniff;

use choose::{choose, Choice, Chosen};
pub use error::InitError;
use names::{same_name, Table};
pub use names::{Target, TARGETS};
use profile::{DateGuess, Kind, Profile, Sample};
use sniff::{sniff, Sniffed};

use crate::check::{self, CheckReport, Input};
use crate::preflight::System;
use crate::source::Source;

/// Where comments start on a mapping line.
const COMMENT_AT: usize = 44;

/// What `init` is asked for.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// A spreadsheet's sheet (default: the first).
    pub sheet: Option<String>,
    /// How many data rows are looked at.
    pub sample: u64,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            sheet: None,
            sample: 1000,
        }
    }
}

/// A mapping written by [`draft`].
#[derive(Debug)]
pub struct Draft {
    /// The mapping's text.
    pub text: String,
    /// What a person should know (printed on stderr).
    pub notes: Vec<String>,
    /// Customer fields mapped: (TOML key, column).
    pub mapped: Vec<(String, String)>,
    /// Columns left as comments.
    pub commented: usize,
    /// The keys suggested as `match`.
    pub match_keys: Vec<&'static str>,
    /// The data rows looked at.
    pub sampled: u64,
}

/// Writes a first mapping for `path` from its header and first rows;
/// `system`, when read (`init --online`), adds what the system has as
/// comments.
pub fn draft(
    path: &Path,
    options: &InitOptions,
    system: Option<&System>,
) -> Result<Draft, InitError> {
    let sniffed = sniff(path, options.sheet.as_deref())?;
    let mut source = Source::open(path, &sniffed.options)?;
    let Sample {
        columns,
        rows: sampled,
        unreadable,
    } = profile::sample(&mut source, options.sample)?;
    let sheet = source.info().sheet.clone();
    let mut notes = Vec::new();
    if sheet.is_none() && options.sheet.is_some() {
        notes.push("--sheet applies to a spreadsheet, not to a CSV: ignored".into());
    }
    if unreadable > 0 {
        notes.push(format!(
            "{unreadable} of the first {sampled} rows could not be read; `check` says why"
        ));
    }
    let chosen = choose(&columns, sampled, &mut notes);
    let mut out = Writer::default();
    out.preamble(path, sampled);
    match &sheet {
        Some(sheet) => out.sheet_source(sheet),
        None => out.csv_source(&sniffed),
    }
    if let Some(col) = chosen.customer_id {
        out.entry(
            "customer_id",
            &quote(&columns[col].name),
            &format!(
                "Thulium customer ids: these rows skip creation; {}",
                samples(&columns[col])
            ),
        );
    }
    out.customer(&columns, &chosen, system);
    if let Some(system) = system {
        out.system(&columns, system);
    }
    let draft = Draft {
        text: out.text,
        notes,
        mapped: chosen
            .fields
            .iter()
            .map(|c| (c.target.key.to_string(), columns[c.column].name.clone()))
            .collect(),
        commented: chosen.unused(columns.len()).count(),
        match_keys: chosen.match_keys.clone(),
        sampled,
    };
    Ok(draft)
}

/// Compiles `text` as the mapping of `path` and checks the first `limit`
/// rows with it, as `check --limit` would.
pub fn verify(path: &Path, text: &str, limit: u64) -> Result<CheckReport, InitError> {
    let invalid = |e: &dyn std::fmt::Display| InitError::Invalid(e.to_string());
    let mapping =
        crate::mapping::parse(Path::new("(init)"), text.to_string()).map_err(|e| invalid(&e))?;
    let options = mapping.source_options().map_err(|e| invalid(&e))?;
    let source = Source::open(path, &options)?;
    let plan = crate::mapping::compile(&mapping, source.header()).map_err(|e| invalid(&e))?;
    let mut input = Input {
        csv: path.into(),
        mapping,
        plan,
        source,
    };
    let report =
        check::check_rows(&mut input, Some(limit), |_, _, _| Ok(())).map_err(|e| match e {
            check::InputError::Source(e) => InitError::Source(e),
            check::InputError::Mapping(e) => invalid(&e),
        })?;
    Ok(report.grouped())
}

/// What `init --online` lists: the field groups with their fields, the
/// campaigns with their statuses (the first 20), the agents.
pub async fn read_system(client: &crate::api::ApiClient) -> Result<System, crate::api::CallError> {
    let mut needs = crate::preflight::Needs {
        field_groups: true,
        campaigns: true,
        agents: true,
        ..Default::default()
    };
    let mut system = System::read(client, &needs).await?;
    needs.campaign_ids = system
        .outbounds
        .iter()
        .flatten()
        .take(20)
        .map(|o| o.id.clone())
        .collect();
    if !needs.campaign_ids.is_empty() {
        needs.field_groups = false;
        needs.agents = false;
        let more = System::read(client, &needs).await?;
        system.campaigns = more.campaigns;
        system.requests += more.requests;
    }
    Ok(system)
}

// ---------------------------------------------------------------------------
// Writing

#[derive(Debug, Default)]
struct Writer {
    text: String,
}

impl Writer {
    fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
    }

    /// `key = value` with a comment at [`COMMENT_AT`].
    fn entry(&mut self, key: &str, value: &str, comment: &str) {
        let code = format!("{key} = {value}");
        self.commented_code(&code, comment);
    }

    fn commented_code(&mut self, code: &str, comment: &str) {
        if comment.is_empty() {
            self.line(code);
        } else {
            let width = code.chars().count();
            let pad = COMMENT_AT.saturating_sub(width).max(1);
            self.line(&format!("{code}{}# {comment}", " ".repeat(pad)));
        }
    }

    fn preamble(&mut self, path: &Path, sampled: u64) {
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

    fn sheet_source(&mut self, sheet: &crate::source::SheetInfo) {
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

    fn customer(&mut self, columns: &[Profile], chosen: &Chosen, system: Option<&System>) {
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
            let column = &columns[choice.column];
            let (spec, mut comment) = spec_for(choice.target, column);
            if let Some(how) = &choice.how {
                comment = format!("{how}; {comment}");
            }
            if choice.target.key == "account_manager" {
                if let Some(agents) = &agents {
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
                        continue;
                    }
                }
            }
            self.entry(choice.target.key, &spec, &comment);
        }
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
        let address: Vec<&Choice> = chosen
            .fields
            .iter()
            .filter(|c| c.target.table == Table::Address)
            .collect();
        if !address.is_empty() {
            self.line("");
            self.line("[customer.address]");
            for choice in address {
                let column = &columns[choice.column];
                let (spec, mut comment) = spec_for(choice.target, column);
                if let Some(how) = &choice.how {
                    comment = format!("{how}; {comment}");
                }
                self.entry(choice.target.key, &spec, &comment);
            }
        }
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

    /// The system's field groups, campaigns and agents (`init --online`).
    fn system(&mut self, columns: &[Profile], system: &System) {
        self.line("");
        self.line("# ---- What the system has (read by init --online) ----");
        if let Some(groups) = &system.field_groups {
            self.line("#");
            self.line("# Field groups: a [[field_group]] table adds an item of the group per row,");
            self.line("# its values keyed by the group's field ids.");
            if groups.is_empty() {
                self.line("#   (none)");
            }
            for group in groups {
                self.line(&format!(
                    "#   group {} \"{}\": {}",
                    group.group_id,
                    comment_safe(&group.name),
                    group
                        .fields
                        .iter()
                        .map(|(id, name)| format!("{id} \"{}\"", comment_safe(name)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            for group in groups {
                let found: Vec<(i64, &Profile)> = group
                    .fields
                    .iter()
                    .filter_map(|(id, name)| {
                        columns
                            .iter()
                            .find(|c| same_name(&c.name, name))
                            .map(|c| (*id, c))
                    })
                    .collect();
                if found.is_empty() {
                    continue;
                }
                self.line("#");
                self.commented_code(
                    "# [[field_group]]",
                    &format!(
                        "\"{}\": the fields named as columns of this file",
                        comment_safe(&group.name)
                    ),
                );
                self.line(&format!("# group_id = {}", group.group_id));
                self.line("# [field_group.values]");
                for (id, column) in found {
                    let (spec, comment) = custom_spec(column);
                    self.commented_code(&format!("# {id} = {spec}"), &comment);
                }
            }
        }
        if let Some(outbounds) = &system.outbounds {
            self.line("#");
            self.line("# Campaigns: a [campaign] table adds a record per row (id, status_id,");
            self.line("# agent_login, next_call_date); see mappings/README.md.");
            if outbounds.is_empty() {
                self.line("#   (none)");
            }
            for o in outbounds {
                let mut line = format!("#   {} \"{}\"", o.id, comment_safe(&o.name));
                if let Some(facts) = system.campaigns.get(&o.id) {
                    let statuses: Vec<String> = facts
                        .statuses
                        .iter()
                        .map(|s| format!("{} \"{}\"", s.status_id, comment_safe(&s.name)))
                        .collect();
                    if !statuses.is_empty() {
                        let _ = write!(line, "; statuses {}", statuses.join(", "));
                    }
                }
                self.line(&line);
            }
        }
        if let Some(agents) = &system.agents {
            self.line("#");
            self.line("# Agents (logins for account_manager and agent_login):");
            let logins: Vec<&str> = agents
                .iter()
                .filter(|a| a.active)
                .map(|a| a.login.as_str())
                .collect();
            for chunk in logins.chunks(8) {
                self.line(&format!("#   {}", one_line(&chunk.join(", "))));
            }
        }
    }
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
fn custom_spec(column: &Profile) -> (String, String) {
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
fn one_line(s: &str) -> String {
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
fn comment_safe(s: &str) -> String {
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
