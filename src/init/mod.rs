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
//! - Options from the values ([`Profile`](profile::Profile)): `phone`
//!   for phone numbers, `split` where cells hold several, a `date` format
//!   (day first or month first decided by values over 12), `map` for
//!   yes/no columns, `type = "integer"` for whole numbers.
//! - A column whose values are unique in the sample suggested as `match`.
//! - Every other column as a commented `custom_fields` line, with samples.
//!
//! The mapping is compiled and checked against the sampled rows before it
//! is written: `check` accepts what `init` writes.
//!
//! [`draft`] runs the stages in order, one room each: `sniff` (how the
//! file is read), `profile` (what the sampled values are), `names` (how
//! well a column's name says a field), `choose` (which column becomes which
//! field, and the `match` keys), `write` (the TOML text and its comments)
//! and `system` (what `--online` reads and lists). Each room imports only
//! the ones listed before it (`error` sits below them all); this one ties
//! them together.

use std::path::Path;

mod choose;
mod error;
mod names;
mod profile;
mod sniff;
mod system;
mod write;

use choose::{choose, Chosen};
pub use error::InitError;
pub use names::{Target, TARGETS};
use profile::Sample;
use sniff::{sniff, Sniffed};
pub use system::read_system;
use write::Writer;

use crate::check::{self, CheckReport, Input};
use crate::preflight::System;
use crate::source::{SheetInfo, Source};

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
    let sample = profile::sample(&mut source, options.sample)?;
    let sheet = source.info().sheet.clone();
    let mut notes = reading_notes(options, sheet.is_some(), &sample);
    let chosen = choose(&sample.columns, sample.rows, &mut notes);
    let text = write_mapping(path, &sniffed, sheet.as_ref(), &sample, &chosen, system);
    let columns = &sample.columns;
    Ok(Draft {
        text,
        notes,
        mapped: chosen
            .fields
            .iter()
            .map(|c| (c.target.key.to_string(), columns[c.column].name.clone()))
            .collect(),
        commented: chosen.unused(columns.len()).count(),
        match_keys: chosen.match_keys.clone(),
        sampled: sample.rows,
    })
}

/// What a person should know about how the file was read: `--sheet` given
/// for a CSV, rows of the sample that could not be read.
fn reading_notes(options: &InitOptions, spreadsheet: bool, sample: &Sample) -> Vec<String> {
    let mut notes = Vec::new();
    if !spreadsheet && options.sheet.is_some() {
        notes.push("--sheet applies to a spreadsheet, not to a CSV: ignored".into());
    }
    if sample.unreadable > 0 {
        notes.push(format!(
            "{} of the first {} rows could not be read; `check` says why",
            sample.unreadable, sample.rows
        ));
    }
    notes
}

/// The mapping's text: the preamble, `[source]`, `[customer]` and, with
/// `--online`, what the system has.
fn write_mapping(
    path: &Path,
    sniffed: &Sniffed,
    sheet: Option<&SheetInfo>,
    sample: &Sample,
    chosen: &Chosen,
    system: Option<&System>,
) -> String {
    let columns = &sample.columns;
    let mut out = Writer::default();
    out.preamble(path, sample.rows);
    out.source(sniffed, sheet);
    if let Some(column) = chosen.customer_id {
        out.customer_id(&columns[column]);
    }
    out.customer(columns, chosen, system);
    if let Some(system) = system {
        system::list(&mut out, columns, system);
    }
    out.text
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
