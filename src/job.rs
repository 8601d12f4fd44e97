//! The job layer: the one place that turns a command's arguments into a
//! prepared job — the source opened and surveyed in one pass (its SHA-256,
//! the campaigns its rows name, the rows to look up), the mapping compiled,
//! the sync state opened, preflight read, the index decided, the system's
//! first answer had, and the ledger created (or continued) and locked —
//! then runs it ([`drive`]). `run` and `retry` start here, as ripgrep's
//! `main` hands its `HiArgs` to the search; `commands` only prints.
//!
//! Order matters, so that what cannot work leaves nothing behind: local
//! checks first (the mapping, the ledger's path, the state's system), then
//! a handful of reads (preflight), then what may read the whole system (the
//! index), and the ledger last.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::check::Input;
use crate::cli::{IndexMode, OutputArgs, PaceArgs, RetryArgs, RunArgs, SyncArgs};
use crate::client::{ApiClient, ClientConfig};
use crate::credentials::{self, Credentials, Password};
use crate::identity;
use crate::ledger::{self, Header, Ledger, LedgerLock};
use crate::outcomes::Outcomes;
use crate::pace::RateSpec;
use crate::pipeline::{self, Abort, Incoming, Limits, Progress};
use crate::preflight;
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::state::SyncState;
use crate::{mapping, progress, resume};

/// A job ready to run: everything the pipeline needs, checked.
pub struct Job {
    pub client: Arc<ApiClient>,
    /// The system's root URL and the API user (for the messages).
    pub root: String,
    pub user: String,
    /// The rows to send, read and mapped as the pipeline asks for them.
    pub rows: Box<dyn Iterator<Item = Incoming> + Send>,
    pub ledger: Ledger,
    pub ledger_path: PathBuf,
    pub matching: pipeline::Matching,
    /// The file's size, for the progress bar (0: unknown).
    pub file_bytes: u64,
    /// `--limit`: a pilot.
    pub pilot: Option<u64>,
    /// `run --sandbox`: the in-process sandbox, kept up for the run.
    pub sandbox: Option<Sandbox>,
    /// `retry`: what planning decided, filled in as the rows are read.
    pub planning: Option<Arc<Mutex<resume::Summary>>>,
    /// What the summary says besides the counts (the file's columns
    /// changed, ...).
    pub notes: Vec<String>,
    /// The undo file, unless `--no-undo`.
    pub images: Option<Arc<crate::undo::images::Images>>,
    /// `plan`: the writes the run would send, noted instead.
    pub plan: Option<Arc<pipeline::Noted>>,
    /// `[customer] on_gone` with `--state`: the customers gone from the
    /// file, handled once the run has read it whole.
    pub gone: Option<crate::gone::Night>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("root", &self.root)
            .field("ledger_path", &self.ledger_path)
            .finish_non_exhaustive()
    }
}

/// How a job ran.
#[derive(Debug)]
pub struct Ran {
    pub end: pipeline::RunEnd,
    pub elapsed: Duration,
    pub progress: Arc<Progress>,
    pub client: Arc<ApiClient>,
    pub ledger_path: PathBuf,
    pub sandbox: Option<Sandbox>,
    pub planning: Option<Arc<Mutex<resume::Summary>>>,
    pub notes: Vec<String>,
    pub plan: Option<Arc<pipeline::Noted>>,
    /// `plan`: what the run would do with the customers gone from the file
    /// (`on_gone`), also said in `notes`.
    pub gone: Option<crate::gone::Planned>,
}

/// How a note of `plan` begins when the run it plans would refuse the file
/// before sending anything (`--max-changes`, `--max-gone`, an empty file
/// under `on_gone`): the plan goes on, and exits 2 as the run would.
pub const RUN_WOULD_STOP: &str = "run would stop here (exit 2): ";

/// What one pass over the source tells before anything is sent.
#[derive(Debug, Default)]
pub struct Survey {
    /// The file's SHA-256 (the ledger's header records it).
    pub sha256: String,
    /// The campaigns its rows name (preflight reads those).
    pub named: preflight::Named,
    /// The rows a run without an index would look up (`--index auto`).
    pub lookups: u64,
    /// Rows whose customer the state knows and whose customer fields
    /// differ from what was sent to it: the updates to expect.
    pub updates: u64,
    /// Among those, how many change each field (by name), and how many
    /// no longer send a field they sent.
    pub changed: std::collections::BTreeMap<String, u64>,
    pub dropped_fields: u64,
    /// Who the file's rows are (their match keys' hashes), for `on_gone`.
    pub file: crate::gone::FileKeys,
}

/// What the survey is to count.
#[derive(Debug, Clone, Copy, Default)]
pub struct SurveyFor<'a> {
    /// Scan the rows for the campaigns they name (a column gives the id).
    pub campaigns: bool,
    /// Count the rows to look up (`--index auto` with `match`), against
    /// this state, every row with `full`.
    pub lookups: bool,
    /// Count the updates to expect against this state (`--max-changes`).
    pub changes: bool,
    pub state: Option<&'a SyncState>,
    pub full: bool,
    /// Collect the rows' match keys (with `--state`: which customers the
    /// file has, for `on_gone`).
    pub keys: bool,
}

/// One pass over the source: its SHA-256 as the bytes go by, and, from
/// the rows mapped with `plan`, what `wanted` asks for (`named`: the
/// campaigns the mapping names as constants, to which the rows' are
/// added). A spreadsheet's bytes are hashed apart (its reader opens the
/// file itself). A file that cannot be read to its end is hashed apart
/// too, and the run that follows meets the error where it is (exit 3,
/// recorded); what the survey counted is then a part.
pub fn survey(
    path: &Path,
    options: &crate::source::SourceOptions,
    plan: &mapping::Plan,
    wanted: SurveyFor<'_>,
    named: preflight::Named,
) -> anyhow::Result<Survey> {
    survey_reader(path, None, options, plan, wanted, named)
}

/// [`survey`], reading the CSV from `reader` when given (else the path).
fn survey_reader(
    path: &Path,
    reader: Option<Box<dyn std::io::Read>>,
    options: &crate::source::SourceOptions,
    plan: &mapping::Plan,
    wanted: SurveyFor<'_>,
    named: preflight::Named,
) -> anyhow::Result<Survey> {
    let cannot_read = || format!("{}: cannot read", path.display());
    let mut survey = Survey {
        named,
        ..Survey::default()
    };
    if !wanted.campaigns && !wanted.lookups && !wanted.changes && !wanted.keys {
        survey.sha256 = match reader {
            Some(mut r) => {
                let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
                std::io::copy(&mut r, &mut hasher).with_context(cannot_read)?;
                format!("{:x}", sha2::Digest::finalize(hasher))
            }
            None => ledger::sha256_file(path).with_context(cannot_read)?,
        };
        return Ok(survey);
    }
    if crate::source::is_spreadsheet(path) {
        survey.sha256 = ledger::sha256_file(path).with_context(cannot_read)?;
        let mut source = crate::source::Source::open(path, options)?;
        survey.file.read_all = scan(&mut source, plan, wanted, &mut survey);
        return Ok(survey);
    }
    let hasher = Arc::new(Mutex::new(<sha2::Sha256 as sha2::Digest>::new()));
    let inner: Box<dyn std::io::Read> = match reader {
        Some(r) => r,
        None => Box::new(std::fs::File::open(path).with_context(cannot_read)?),
    };
    let reader = HashingReader {
        inner,
        hasher: hasher.clone(),
    };
    let mut source = crate::source::Source::from_reader(reader, path, options)?;
    survey.file.read_all = scan(&mut source, plan, wanted, &mut survey);
    if survey.file.read_all {
        let digest = std::mem::take(&mut *hasher.lock().unwrap_or_else(|e| e.into_inner()));
        survey.sha256 = format!("{:x}", sha2::Digest::finalize(digest));
    } else {
        survey.named.complete = false;
        survey.sha256 = ledger::sha256_file(path).with_context(cannot_read)?;
    }
    Ok(survey)
}

/// The file and mapping of a run, and (a CSV on Unix) a second handle on
/// the same open file for the survey: the survey reads it by position, so
/// the run reads the very bytes that were hashed even if the path is
/// replaced meanwhile.
fn open_input(
    csv: &Path,
    mapping: &Path,
    sheet: Option<&str>,
) -> anyhow::Result<(Input, Option<std::fs::File>)> {
    if crate::source::is_spreadsheet(csv) || !cfg!(unix) {
        return Ok((Input::open_sheet(csv, mapping, sheet)?, None));
    }
    let file =
        std::fs::File::open(csv).with_context(|| format!("{}: cannot read", csv.display()))?;
    let survey = file.try_clone().ok();
    Ok((Input::from_file(csv, mapping, file, sheet)?, survey))
}

/// [`survey`], through `handle` (the run's own open file) when given.
fn survey_open(
    path: &Path,
    handle: Option<std::fs::File>,
    options: &crate::source::SourceOptions,
    plan: &mapping::Plan,
    wanted: SurveyFor<'_>,
    named: preflight::Named,
) -> anyhow::Result<Survey> {
    #[cfg(unix)]
    if let Some(file) = handle {
        return survey_reader(
            path,
            Some(Box::new(AtReader { file, at: 0 })),
            options,
            plan,
            wanted,
            named,
        );
    }
    let _ = handle;
    survey(path, options, plan, wanted, named)
}

/// Reads an open file by position (`pread`), leaving the offset the run's
/// reader uses where it is.
#[cfg(unix)]
struct AtReader {
    file: std::fs::File,
    at: u64,
}

#[cfg(unix)]
impl std::io::Read for AtReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(&self.file, buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// The rows of a survey: the campaigns named, the rows to look up. Whether
/// the source was read to its end.
fn scan<R: std::io::Read>(
    source: &mut crate::source::Source<R>,
    plan: &mapping::Plan,
    wanted: SurveyFor<'_>,
    survey: &mut Survey,
) -> bool {
    let keys = plan.lookup_keys();
    let upsert = plan.upsert().cloned();
    while let Some(row) = source.next_row() {
        let Ok(row) = row else { return false };
        let row = match row {
            Ok(row) => row,
            Err(bad) => {
                survey.file.add_unreadable(bad.id.line);
                continue;
            }
        };
        if wanted.keys {
            survey
                .file
                .add(plan.file_key_hashes(row.cells.view()), row.id.line);
        } else {
            survey.file.rows += 1;
        }
        let Ok(payloads) = plan.map_row(&row) else {
            continue;
        };
        // Each campaign costs two GETs: past a few hundred, the rest are
        // left to the server (and nothing is refused for all rows).
        if wanted.campaigns && survey.named.complete {
            let named = &mut survey.named;
            named
                .campaign
                .extend(payloads.campaign.as_ref().map(|c| c.campaign_id.clone()));
            named.campaign_update.extend(
                payloads
                    .campaign_update
                    .as_ref()
                    .map(|u| u.campaign_id.clone()),
            );
            if named.campaign.len() + named.campaign_update.len() > 200 {
                named.complete = false;
            }
        }
        if let (true, Some(state), Some(customer)) =
            (wanted.changes, wanted.state, &payloads.customer)
        {
            count_change(
                state,
                plan,
                &keys,
                upsert.as_ref(),
                customer,
                &payloads,
                survey,
            );
        }
        if wanted.lookups {
            if let Some(customer) = &payloads.customer {
                let row_keys = identity::RowKeys::of(customer, &keys);
                // A row whose customer the state remembers with the very
                // fields the row has needs no confirmation (`--full`
                // confirms every row).
                let unchanged = || {
                    let state = wanted.state?;
                    let id = row_keys.hashes().find_map(|(_, h)| state.customer_of(h))?;
                    let hash = crate::hash::payload_hash(&pipeline::customer_shape(
                        upsert.as_ref(),
                        &payloads,
                    )?);
                    Some(state.part(id, "customer")?.0 == hash)
                };
                if !row_keys.is_empty() && (wanted.full || unchanged() != Some(true)) {
                    survey.lookups += 1;
                }
            }
        }
    }
    true
}

/// A row whose customer the state knows and whose fields differ from
/// what was sent to it: counted, field by field.
fn count_change(
    state: &SyncState,
    _plan: &mapping::Plan,
    keys: &[crate::api::keys::SearchKey],
    upsert: Option<&mapping::Upsert>,
    customer: &crate::api::payload::Customer,
    payloads: &mapping::RowPayloads,
    survey: &mut Survey,
) {
    let row_keys = identity::RowKeys::of(customer, keys);
    let Some(id) = row_keys.hashes().find_map(|(_, h)| state.customer_of(h)) else {
        return;
    };
    let Some(update) = pipeline::customer_shape(upsert, payloads) else {
        return;
    };
    let Some((sent, _)) = state.part(id, "customer") else {
        return;
    };
    if sent == crate::hash::payload_hash(&update) {
        return;
    }
    survey.updates += 1;
    if let Some(signature) = state.fields(id) {
        let (changed, dropped) =
            crate::hash::changed_fields(&signature, &crate::hash::fields_of(&update));
        for name in changed {
            *survey.changed.entry(name).or_default() += 1;
        }
        survey.dropped_fields += u64::from(dropped > 0);
    }
}

/// `--max-changes`: with a state from an earlier run, a file that would
/// update more than this share of the customers the state knows is refused
/// before anything is sent (exit 2), naming the fields that changed most.
fn guard_changes(known: u64, survey: &Survey, max: crate::cli::Share) -> anyhow::Result<()> {
    if known == 0 || survey.updates <= max.of(known) {
        return Ok(());
    }
    let mut fields: Vec<(&String, &u64)> = survey.changed.iter().collect();
    fields.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let mut most: Vec<String> = fields
        .iter()
        .take(5)
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    if survey.dropped_fields > 0 {
        most.push(format!("a field no longer sent {}", survey.dropped_fields));
    }
    anyhow::bail!(
        "this file would update {} of the {known} customers the state knows ({:.0} %), more than --max-changes {max}; the fields that change most: {}. Nothing was sent. If tonight's export is broken, fix it; if the change is meant, pass --max-changes 100%",
        survey.updates,
        survey.updates as f64 * 100.0 / known as f64,
        if most.is_empty() { "(not known to this state yet)".to_string() } else { most.join(", ") }
    )
}

/// The file's columns against those the state's last run saw: what was
/// added and dropped, said in the summary (a mapped column missing is
/// refused already).
fn header_notes(state: Option<&SyncState>, header: &[String]) -> Vec<String> {
    let Some(before) = state.and_then(SyncState::header) else {
        return Vec::new();
    };
    let added: Vec<&String> = header.iter().filter(|c| !before.contains(c)).collect();
    let dropped: Vec<&String> = before.iter().filter(|c| !header.contains(c)).collect();
    if added.is_empty() && dropped.is_empty() {
        return Vec::new();
    }
    let list = |v: &[&String]| {
        v.iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    if !added.is_empty() {
        parts.push(format!("added {}", list(&added)));
    }
    if !dropped.is_empty() {
        parts.push(format!("dropped or renamed {}", list(&dropped)));
    }
    vec![format!(
        "the file's columns changed since the last run with this state: {}",
        parts.join("; ")
    )]
}

/// A reader that hashes what goes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Arc<Mutex<sha2::Sha256>>,
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        sha2::Digest::update(
            &mut *self.hasher.lock().unwrap_or_else(|e| e.into_inner()),
            &buf[..n],
        );
        Ok(n)
    }
}

/// `run`: the file and mapping opened, the credentials (or an in-process
/// sandbox), the survey, the state, preflight, the index, the ledger.
pub async fn prepare_run(args: &RunArgs) -> anyhow::Result<Job> {
    prepare(args, None).await
}

/// `plan`: `run`'s preparation, step for step, writing nothing: no ledger
/// file (its lines go to `sink`), the state opened read-only, a
/// `--max-changes` refusal said as a note (the plan shows what a run
/// allowed to go on would do), every write of the job noted instead of
/// sent.
pub async fn prepare_plan(args: &RunArgs, sink: impl ledger::Sink) -> anyhow::Result<Job> {
    prepare(args, Some(Box::new(sink))).await
}

/// [`prepare_run`], or with a `plan` sink [`prepare_plan`].
async fn prepare(args: &RunArgs, plan: Option<Box<dyn ledger::Sink>>) -> anyhow::Result<Job> {
    check_pace(&args.pace)?;
    let (input, handle) = open_input(&args.csv, &args.mapping, args.sheet.as_deref())?;
    check_sync(&args.sync, &input.plan)?;
    let (sandbox, credentials) = credentials_for(args).await?;
    // A rehearsal against the in-process sandbox gets its own default ledger,
    // replaced on every run: the sandbox it describes is gone.
    let ledger_path = args.ledger.clone().unwrap_or_else(|| {
        let mut p = args.csv.clone().into_os_string();
        p.push(if args.sandbox {
            ".sandbox.ledger.jsonl"
        } else {
            ".ledger.jsonl"
        });
        p.into()
    });
    let existing = if args.force_new_ledger {
        ledger::Existing::KeepAside
    } else if args.sandbox && args.ledger.is_none() {
        ledger::Existing::Replace
    } else {
        ledger::Existing::Refuse
    };
    let client = ApiClient::new(&credentials, &client_config(&args.pace))
        .context("cannot set up the HTTP client")?;
    eprintln!("Reading {}: {}", args.csv.display(), input.info());
    // A ledger path in use refuses the run before anything is asked.
    // A plan takes no lock (it writes no file) but says what the run
    // would meet.
    let ledger_note = if plan.is_none() {
        ledger::check_free(&ledger_path, existing)?;
        None
    } else {
        (matches!(existing, ledger::Existing::Refuse) && ledger_path.exists()).then(|| format!(
            "a ledger exists at {}: `run` of this file with the default ledger would stop there (exit 2); continue it with `retry`, or pass --ledger or --force-new-ledger",
            ledger_path.display()
        ))
    };
    // The state is local: one of another system refuses the run before
    // anything is asked. A plan reads it and never writes it.
    let state = match (&args.sync.state, &plan) {
        (Some(path), Some(_)) => SyncState::open_read_only(path, &credentials.root)?,
        _ => open_state(&args.sync, &credentials.root)?,
    };
    // The customers the state knows: the guard's whole (0: a first night).
    let known = state.as_deref().map_or(0, SyncState::customers_known);
    // One pass over the file for everything asked before the run.
    let (named, from_column) = preflight::constant_campaigns(&input.mapping.raw);
    let wanted = SurveyFor {
        campaigns: from_column && !args.no_preflight,
        lookups: input.plan.upsert().is_some() && args.sync.index == IndexMode::Auto,
        changes: known > 0,
        state: state.as_deref(),
        full: args.sync.full,
        keys: state.is_some(),
    };
    let options = input.mapping.source_options()?;
    let mut survey = survey_open(&args.csv, handle, &options, &input.plan, wanted, named)?;
    // Guards for a job nobody watches, before anything is asked or sent.
    let guarded = guard_changes(known, &survey, args.sync.max_changes);
    let mut notes = header_notes(state.as_deref(), input.source.header());
    notes.extend(ledger_note);
    match guarded {
        Err(e) if plan.is_some() => notes.insert(0, format!("{RUN_WOULD_STOP}{e}")),
        guarded => guarded?,
    }
    let gone = crate::gone::Night::prepare(
        &input.plan,
        &args.mapping,
        state.as_ref(),
        std::mem::take(&mut survey.file),
        &survey.sha256,
        args.limit.is_some(),
        args.sync.max_gone,
    );
    let gone = match gone {
        Err(e) if plan.is_some() => {
            notes.insert(0, format!("{RUN_WOULD_STOP}{e}"));
            None
        }
        gone => gone?,
    };
    for note in &notes {
        eprintln!("note: {note}");
    }
    let header = Header {
        version: 1,
        source: absolute(&args.csv),
        source_sha256: survey.sha256.clone(),
        mapping: absolute(&args.mapping),
        mapping_sha256: ledger::sha256_file(&args.mapping)
            .with_context(|| format!("{}: cannot read", args.mapping.display()))?,
        started_at: ledger::now(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        // A CSV has no sheets: only a spreadsheet's is worth recording.
        sheet: args
            .sheet
            .clone()
            .filter(|_| crate::source::is_spreadsheet(&args.csv)),
    };
    // Preflight first: a handful of GETs that may refuse the mapping, before
    // an index that may read the whole system.
    let system = if args.no_preflight {
        None
    } else {
        preflight(&input.mapping, survey.named, &client, false).await?
    };
    let state_for_header = state.clone();
    let matching =
        prepare_matching(&args.sync, &input.plan, &client, state, survey.lookups).await?;
    if !args.no_preflight {
        first_contact(&client).await?;
    }
    if let Some(state) = &state_for_header {
        state.set_header(input.source.header())?;
    }
    // A stop signal during the preparation (`sync` only notes it): no
    // ledger is begun.
    if crate::signals::install().stopped() {
        return Err(
            crate::exit::Stopped("stopped by a signal before anything was sent".into()).into(),
        );
    }
    let started_at = header.started_at.clone();
    let (ledger, noted) = match plan {
        Some(sink) => (
            Ledger::in_memory(sink),
            Some(Arc::new(pipeline::Noted::default())),
        ),
        None => (Ledger::create(&ledger_path, header, existing, "run")?, None),
    };
    // A plan writes nothing: no undo file either.
    let images = match &noted {
        Some(_) => None,
        None => open_images(&args.images, &args.sync, &ledger_path, &started_at, true)?,
    };
    let Input { source, plan, .. } = input;
    let rows = pipeline::mapped_rows(source, Arc::new(plan), args.include_unknown, system);
    Ok(Job {
        root: credentials.root.clone(),
        user: credentials.user.clone(),
        client,
        rows: Box::new(rows),
        ledger,
        ledger_path,
        matching,
        file_bytes: std::fs::metadata(&args.csv).map(|m| m.len()).unwrap_or(0),
        pilot: args.limit,
        sandbox,
        planning: None,
        notes,
        images,
        plan: noted,
        gone,
    })
}

/// The undo file of a ledger whose header has `started_at` (begun for a
/// new ledger, continued by `retry`), unless `--no-undo`.
fn open_images(
    args: &crate::cli::ImagesArgs,
    sync: &SyncArgs,
    ledger_path: &Path,
    started_at: &str,
    new: bool,
) -> anyhow::Result<Option<Arc<crate::undo::images::Images>>> {
    use crate::undo::images::Images;
    if args.no_undo {
        return Ok(None);
    }
    let state = sync.state.as_deref().map(absolute);
    Ok(Some(if new {
        Images::create(ledger_path, started_at, state.as_deref())?
    } else {
        Images::append(ledger_path, started_at, state.as_deref())?
    }))
}

/// The credentials `run` uses: the in-process sandbox's (started here, with
/// a fresh random password: nothing to leak) or the user's.
async fn credentials_for(args: &RunArgs) -> anyhow::Result<(Option<Sandbox>, Credentials)> {
    if !args.sandbox {
        let credentials = credentials::resolve(
            args.connect.url.as_deref(),
            args.connect.user.as_deref(),
            args.connect.password_file.as_deref(),
        )?;
        return Ok((None, credentials));
    }
    let password = format!("{:032x}", rand::random::<u128>());
    let config = SandboxConfig {
        password: password.clone(),
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::start(config)
        .await
        .context("cannot start the sandbox")?;
    eprintln!(
        "Sandbox started on {} (in-process; it ends with this run)",
        sandbox.url()
    );
    let credentials = Credentials {
        root: sandbox.url(),
        user: "api_user".into(),
        password: Password::new(password),
    };
    Ok((Some(sandbox), credentials))
}

/// `retry`: the ledger locked and read, its source and mapping checked, the
/// survey, the state, preflight, the index, an `attempt` appended.
pub async fn prepare_retry(args: &RetryArgs) -> anyhow::Result<Job> {
    check_pace(&args.pace)?;
    // Locked before it is read: a run still writing it would change it.
    let lock = LedgerLock::acquire(&args.ledger, "retry")?;
    let outcomes = Outcomes::read(&args.ledger)?;
    let header = outcomes.header.clone();
    for line in &outcomes.unreadable {
        eprintln!(
            "warning: {}: unreadable {line} (ignored; a crash mid-write leaves one)",
            args.ledger.display()
        );
    }
    // Changed since the mapping the ledger last used (a retry with
    // --mapping records its own), not since the first run's.
    let last_mapping = outcomes
        .last_mapping_sha256
        .clone()
        .unwrap_or_else(|| header.mapping_sha256.clone());
    let (mapping_path, mapping_changed) = match &args.mapping {
        Some(p) => {
            let sha =
                ledger::sha256_file(p).with_context(|| format!("{}: cannot read", p.display()))?;
            (p.clone(), sha != last_mapping)
        }
        None => {
            let p = PathBuf::from(&header.mapping);
            let sha = ledger::sha256_file(&p)
                .with_context(|| format!("{}: cannot read the ledger's mapping", p.display()))?;
            if sha != header.mapping_sha256 {
                anyhow::bail!("{}: the mapping changed since the run; pass it as --mapping <TOML> to re-map the rows with it", p.display());
            }
            (p, false)
        }
    };
    let (source_path, seekable) = match &args.source {
        Some(p) => (p.clone(), false),
        None => (PathBuf::from(&header.source), true),
    };
    // The sheet the run read, if `run --sheet` chose it.
    let loaded = mapping::load(&mapping_path)?.with_sheet(header.sheet.as_deref());
    let options = loaded.source_options()?;
    let changed = || -> anyhow::Error {
        anyhow::anyhow!(
            "{}: the file changed since the run (its SHA-256 differs from the ledger's), so its rows may not be the ledger's rows; if it is an edited copy with the same rows in the same order, pass it as --source <CSV>",
            source_path.display()
        )
    };
    let plan = {
        let probe = crate::source::Source::open(&source_path, &options).with_context(|| {
            if seekable {
                format!("{}: cannot read the ledger's source", source_path.display())
            } else {
                format!("{}: cannot read", source_path.display())
            }
        })?;
        match mapping::compile(&loaded, probe.header()) {
            Ok(plan) => plan,
            // A header the mapping no longer fits: say first whether the
            // file is not the one the ledger's rows came from.
            Err(e) if seekable => {
                let sha = ledger::sha256_file(&source_path).unwrap_or_default();
                if sha != header.source_sha256 {
                    return Err(changed());
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        }
    };
    check_sync(&args.sync, &plan)?;
    // The source's hash and the campaigns its rows name, in one pass.
    let (named, from_column) = preflight::constant_campaigns(&loaded.raw);
    let wanted = SurveyFor {
        campaigns: from_column && !args.no_preflight,
        ..SurveyFor::default()
    };
    let survey = survey(&source_path, &options, &plan, wanted, named)?;
    if seekable && survey.sha256 != header.source_sha256 {
        return Err(changed());
    }
    let credentials = credentials::resolve(
        args.connect.url.as_deref(),
        args.connect.user.as_deref(),
        args.connect.password_file.as_deref(),
    )?;
    let client = ApiClient::new(&credentials, &client_config(&args.pace))
        .context("cannot set up the HTTP client")?;
    let rules = resume::Rules {
        changed: mapping_changed || args.source.is_some(),
        include_unknown: args.include_unknown,
    };
    // Without an index, every row not done may need a lookup.
    let not_done = (1..=outcomes.rows())
        .filter(|n| !outcomes.is_done(*n))
        .count() as u64;
    // An edited copy is checked first: if its rows moved, it is refused
    // before anything is asked or sent.
    let plan = Arc::new(plan);
    let rows = resume::RetryRows::new(
        Arc::new(outcomes),
        plan.clone(),
        &source_path,
        &options,
        seekable,
        rules,
    )?;
    let state = open_state(&args.sync, &credentials.root)?;
    // Preflight before the index, as `run` does: a refusal costs a handful
    // of GETs, never a read of the whole system.
    let system = if args.no_preflight {
        None
    } else {
        preflight(&loaded, survey.named, &client, false).await?
    };
    let matching = prepare_matching(&args.sync, &plan, &client, state, not_done).await?;
    if !args.no_preflight {
        first_contact(&client).await?;
    }
    let rows = rows.with_system(system);
    let planning = rows.summary();
    let ledger = Ledger::append_to(&args.ledger, lock)?;
    let images = open_images(
        &args.images,
        &args.sync,
        &args.ledger,
        &header.started_at,
        false,
    )?;
    let attempt = ledger::Attempt {
        started_at: ledger::now(),
        source: absolute(&source_path),
        source_sha256: survey.sha256,
        mapping: absolute(&mapping_path),
        mapping_sha256: ledger::sha256_file(&mapping_path)?,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        include_unknown: args.include_unknown,
    };
    ledger.write(&[ledger::Entry::Attempt(attempt)]).await?;
    Ok(Job {
        root: credentials.root.clone(),
        user: credentials.user.clone(),
        client,
        rows: Box::new(rows),
        ledger,
        ledger_path: args.ledger.clone(),
        matching,
        file_bytes: 0,
        pilot: None,
        sandbox: None,
        planning: Some(planning),
        notes: Vec::new(),
        images,
        plan: None,
        // Gone customers are a new file's question: a retry continues one
        // already asked.
        gone: None,
    })
}

/// Runs the pipeline over `rows` with Ctrl-C handling and progress display.
pub async fn drive(job: Job, pace: &PaceArgs, output: &OutputArgs) -> Ran {
    let Job {
        client,
        rows,
        ledger,
        ledger_path,
        matching,
        file_bytes,
        pilot,
        sandbox,
        planning,
        notes,
        images,
        plan,
        gone,
        ..
    } = job;
    let gone = gone.map(|n| n.with_images(images.clone()));
    let matching = pipeline::Matching { images, ..matching };
    let gone_ledger = gone.as_ref().map(|_| ledger.clone());
    let abort = Arc::new(Abort::default());
    // Stop signals are listened to from the command's start (see
    // `signals`); from here the first one stops the run cleanly.
    let stopper = crate::signals::install();
    {
        let abort = abort.clone();
        stopper.while_running(move |name| {
            abort.trip(format!(
                "interrupted ({name}): calls in flight were finished and recorded"
            ));
        });
    }
    let progress_state = Arc::new(Progress::default());
    let ticker = progress::start(
        progress_state.clone(),
        client.clone(),
        file_bytes,
        progress::bars_wanted(output.no_progress),
    );
    let limits = Limits {
        batch_size: pace.batch_size as usize,
        concurrency: pace
            .concurrency
            .map_or(pipeline::MAX_IN_FLIGHT, |c| c as usize),
        max_consecutive_failures: pace.max_consecutive_failures,
        max_failures: pace.max_failures,
        max_failure_rate: pace.max_failure_rate,
        rows: pilot,
        plan: plan.clone(),
    };
    let started = Instant::now();
    let batch_size = limits.batch_size;
    let mut end = pipeline::run(
        rows,
        client.clone(),
        ledger,
        limits,
        abort.clone(),
        progress_state.clone(),
        matching,
    )
    .await;
    // Customers gone from the file: once it is known to be read whole
    // (a plan only says what the run would do with them).
    let mut notes = notes;
    let mut gone_planned = None;
    if plan.is_some() {
        gone_planned = gone.as_ref().and_then(|n| n.planned());
        notes.extend(gone_planned.as_ref().map(|p| p.note.clone()));
    }
    if let (Some(night), Some(ledger)) = (gone, gone_ledger) {
        // The stop-signal handler stays registered through this step: a
        // signal stops the deletions between two calls. The plan handle is
        // the write gate: with one, `finish` sends and records nothing.
        match night
            .finish(&end, &client, &ledger, batch_size, &abort, plan.as_deref())
            .await
        {
            Ok(None) => {}
            Ok(Some(why)) => {
                end.aborted
                    .get_or_insert_with(|| format!("customers gone from the file: {why}"));
            }
            // The state would lag what was done (exit 3).
            Err(e) => {
                end.aborted
                    .get_or_insert_with(|| format!("customers gone from the file: {e}"));
            }
        }
    }
    let elapsed = started.elapsed();
    ticker.abort();
    stopper.done();
    // What follows (the summary, the metrics) finishes by itself: a signal
    // now is only noted.
    stopper.stops_by_itself();
    progress::finish();
    Ran {
        end,
        elapsed,
        progress: progress_state,
        client,
        ledger_path,
        sandbox,
        planning,
        notes,
        plan,
        gone: gone_planned,
    }
}

/// A path as the ledger records it: absolute, so that `retry` finds it
/// from any working directory.
pub fn absolute(path: &std::path::Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

pub fn client_config(pace: &PaceArgs) -> ClientConfig {
    let (rate, auto_max) = match pace.rate {
        RateSpec::Fixed(r) => (r, None),
        RateSpec::Auto { max } => (max, Some(max)),
    };
    ClientConfig {
        rate,
        auto_max,
        timeout: Duration::from_secs(pace.timeout.max(1)),
        policy: crate::retry::Policy {
            max_attempts: pace.max_attempts,
            ..Default::default()
        },
        max_unreachable: pace.max_consecutive_failures,
    }
}

pub fn check_pace(pace: &PaceArgs) -> anyhow::Result<()> {
    if let Some(p) = pace.max_failure_rate {
        if !(0.0..=100.0).contains(&p) {
            anyhow::bail!("--max-failure-rate is a percentage from 0 to 100, not {p}");
        }
    }
    Ok(())
}

/// Preflight: reads what the mapping refers to (`named`: the campaigns the
/// file's rows use, from the survey) and refuses, before anything is sent, what cannot
/// work for any row. `None` when the mapping refers to nothing the system
/// configures, or (unless `strict`, as `check --online` is) when the
/// system cannot be read.
pub async fn preflight(
    loaded: &mapping::Loaded,
    named: preflight::Named,
    client: &ApiClient,
    strict: bool,
) -> anyhow::Result<Option<Arc<preflight::System>>> {
    let needs = preflight::Needs::of(&loaded.raw, named);
    if !needs.any() {
        return Ok(None);
    }
    let system = match preflight::System::read(client, &needs).await {
        Ok(system) => system,
        // The system could not say (a method this API user may not call, a
        // server that keeps failing): the import goes on, and the server
        // refuses what it refuses. One that cannot be reached, or refuses
        // the password, is an aborted night, found at once.
        Err(e) if !strict => {
            stop_if_unreachable(&e)?;
            eprintln!("warning: preflight skipped: cannot read what the mapping refers to: {e}");
            return Ok(None);
        }
        // Kept as the call error: a list that cannot be paged stops (exit 3).
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context("preflight: cannot read what the mapping refers to")
            )
        }
    };
    preflight::check_mapping(loaded, &system)?;
    // Only what was read is counted: agents, say, are read only for a
    // mapping that names one.
    let mut read = Vec::new();
    if let Some(groups) = &system.field_groups {
        read.push(crate::text::count(groups.len() as u64, "field group"));
    }
    if !system.campaigns.is_empty() {
        read.push(crate::text::count(
            system.campaigns.len() as u64,
            "campaign",
        ));
    }
    if let Some(agents) = &system.agents {
        read.push(crate::text::count(agents.len() as u64, "agent"));
    }
    eprintln!(
        "Preflight: what the mapping refers to, read in {} request(s): {}",
        system.requests,
        read.join(", ")
    );
    Ok(Some(Arc::new(system)))
}

/// Stops a run before anything is sent (exit 3) when a read shows that the
/// system cannot be worked with: it cannot be reached (connections refused,
/// DNS, TLS), refuses the credentials (401), redirects, or pages wrongly. A
/// 403 (an API user without permission for one method) does not stop it.
fn stop_if_unreachable(e: &crate::api::CallError) -> anyhow::Result<()> {
    use crate::api::CallError;
    match e {
        CallError::Unauthorized { status: 403, .. } => Ok(()),
        _ => match e.stops_the_run() {
            Some(reason) => Err(crate::exit::Stopped(format!("{reason}: nothing was sent")).into()),
            None => Ok(()),
        },
    }
}

/// Opens the sync state (`--state`) of the system at `root`.
fn open_state(args: &SyncArgs, root: &str) -> anyhow::Result<Option<Arc<SyncState>>> {
    Ok(match &args.state {
        Some(path) => Some(SyncState::open(path, root)?),
        None => None,
    })
}

/// Before the ledger is begun (unless `--no-preflight`, which asks for no
/// reads): when nothing has been asked of the system yet (preflight had
/// nothing to read, no index or count was needed), one
/// small read (`GET customers?limit=1`), so that a wrong URL, a system
/// down or a wrong password stops the run (exit 3) before anything is
/// written, not after the first POST.
async fn first_contact(client: &ApiClient) -> anyhow::Result<()> {
    if client
        .stats
        .requests
        .load(std::sync::atomic::Ordering::Relaxed)
        > 0
    {
        return Ok(());
    }
    if let Err(e) = identity::Index::count(client).await.result {
        stop_if_unreachable(&e)?;
    }
    Ok(())
}

/// `--state` and `--full` need the mapping to match customers.
fn check_sync(args: &SyncArgs, plan: &mapping::Plan) -> anyhow::Result<()> {
    if plan.upsert().is_none() && (args.state.is_some() || args.full) {
        anyhow::bail!(
            "--state and --full need [customer] match in the mapping: the keys that tell a row's customer from one run to the next"
        );
    }
    Ok(())
}

/// Opens the sync state and decides how customers are found: an index of
/// the whole system when reading it takes fewer requests than looking the
/// rows up one by one (`--index auto`), `lookups` of them.
async fn prepare_matching(
    args: &SyncArgs,
    plan: &mapping::Plan,
    client: &ApiClient,
    state: Option<Arc<SyncState>>,
    lookups: u64,
) -> anyhow::Result<pipeline::Matching> {
    let Some(upsert) = plan.upsert() else {
        return Ok(pipeline::Matching {
            feed_on_match: plan.feed_on_match(),
            // Without `match` a customer is looked up only by `retry`, for
            // a creation of unknown outcome; the one it adopts gets the
            // row's fields, so the lookup reads their values now: the undo
            // file keeps what that update overwrites (it may be a customer
            // that was there before the run, and `undo` must not take it
            // for the run's own).
            finder: identity::Finder {
                written: plan.written(),
                ..identity::Finder::default()
            },
            ..pipeline::Matching::default()
        });
    };
    // The state is a cache of Thulium: a system holding fewer customers
    // than the state remembers was restored from a backup or emptied, and
    // the state's "unchanged" would send nothing to customers that are not
    // there. One small read tells; then every row is asked of Thulium.
    let known = state.as_deref().map_or(0, SyncState::customers_known);
    let mut full = args.full;
    let mut lookups = lookups;
    // `GET customers?limit=1`'s count, read once for both questions.
    let mut counted: Option<Option<u64>> = None;
    if !full && known > 0 {
        let count = identity::Index::count(client).await.result?;
        counted = Some(count);
        if let Some(count) = count {
            if count < known {
                eprintln!(
                    "warning: the system holds {count} customer(s), fewer than the {known} this state remembers: restored from a backup, or emptied? Every row is asked of Thulium this time (as with --full), and the state repaired"
                );
                full = true;
                lookups = lookups.max(known);
            }
        }
    }
    let use_index = match args.index {
        IndexMode::Never => false,
        IndexMode::Always => true,
        IndexMode::Auto => {
            if lookups == 0 {
                false
            } else {
                let count = match counted {
                    Some(count) => count,
                    None => identity::Index::count(client).await.result?,
                };
                let pages = count.map_or(u64::MAX, |c| c.div_ceil(1000).max(1));
                eprintln!(
                    "Finding customers: {lookups} row(s) to look up; the system holds {} customer(s), {pages} page(s) to read them all: {}",
                    count.map_or("an unknown number of".into(), |c| c.to_string()),
                    if pages < lookups { "reading them all (an index)" } else { "a lookup per row" }
                );
                pages < lookups
            }
        }
    };
    let index = if use_index {
        let index = identity::Index::read(client, &upsert.keys, &plan.written()).await?;
        eprintln!(
            "Index: {} customer(s) read in {} request(s)",
            index.customers, index.pages
        );
        Some(index)
    } else {
        None
    };
    Ok(pipeline::Matching {
        upsert: Some(upsert.clone()),
        finder: identity::Finder {
            index,
            state: state.clone(),
            written: plan.written(),
        },
        state,
        full,
        group_parts: plan.group_parts().to_vec(),
        feed_on_match: plan.feed_on_match(),
        images: None,
    })
}
