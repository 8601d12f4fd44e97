//! `thulium-import sync`: the nightly drop-folder job as one command, on any
//! OS (what `contrib/nightly.sh` did in bash, which is now a wrapper around
//! it). One process per folder, held by a lock in the work folder; every
//! export in the folder, oldest first, except one still being written (and,
//! when the mapping says its files are full exports, only the newest: the
//! older ones are superseded); per
//! file one ledger in the work folder, continued while the file and the
//! mapping are the ones it recorded, begun anew for new contents, and its
//! `report --json` beside it; a settled file moved to `--archive`; the
//! night's exit code is the worst of its files'.
//!
//! Each file is prepared and driven by the job layer exactly as `run` or
//! `retry` would do it, from a `RunArgs` or `RetryArgs` built here: this
//! file decides *which* of the two a file needs, never how they work. It is
//! a room of `commands` (a child module), so that it can print a file's
//! summary as `run` does without `commands` and itself importing each other.

use std::path::{Path, PathBuf};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;

use crate::cli::{NightlyArgs, RetryArgs, RunArgs};
use crate::ledger::{self, Entry};
use crate::outcomes::Outcomes;
use crate::report::Report;
use crate::{job, Exit};

/// The files a drop folder's exports come as (any case).
const EXTENSIONS: [&str; 4] = ["csv", "xlsx", "xls", "ods"];

/// Why a night cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{dir}: another `thulium-import sync` works on this drop folder: {holder}; one process per folder (wait for it to end, or stop it)")]
    Busy { dir: String, holder: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SyncError + '_ {
    move |source| SyncError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The folder's lock: the kernel's lock on `<work>/sync.lock` (a crash
/// releases it), and who holds it written beside it in
/// `<work>/sync.lock.holder` for the message a second process prints — as
/// [`ledger::LedgerLock`] does for a ledger, and apart from the locked file
/// because Windows does not let another process read a locked one.
#[derive(Debug)]
struct DropLock {
    _file: std::fs::File,
    holder: PathBuf,
}

impl DropLock {
    fn acquire(_work: &Path, drop_dir: &Path) -> Result<DropLock, SyncError> {
        // Kept in the drop folder itself, whatever the work folder: two
        // syncs of one folder with different --work-dir must not both run.
        let path = drop_dir.join(".thulium-import.sync.lock");
        let holder = drop_dir.join(".thulium-import.sync.lock.holder");
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(io_error(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&holder)
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "another process".into());
                return Err(SyncError::Busy {
                    dir: drop_dir.display().to_string(),
                    holder,
                });
            }
            // A file system without locks (some network mounts): go on,
            // saying so, as the ledger's lock does.
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(lock = %path.display(), error = %e, "Cannot lock the drop folder; make sure no other sync works on it.");
            }
        }
        let text = format!(
            "process {} (`thulium-import sync`) since {}\n",
            std::process::id(),
            ledger::now()
        );
        // The holder's note is for a message only: the lock holds without it.
        let _ = super::write_private(&holder, text.as_bytes());
        Ok(DropLock {
            _file: file,
            holder,
        })
    }
}

impl Drop for DropLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.holder);
    }
}

/// An export found in the drop folder.
#[derive(Debug, Clone)]
struct Candidate {
    path: PathBuf,
    name: String,
    len: u64,
    modified: Option<SystemTime>,
}

impl Candidate {
    fn marker(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".done");
        p.into()
    }
}

fn is_export(name: &str) -> bool {
    Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The exports in `dir`, oldest first (by modification time, then name),
/// and whether any `<export>.done` marker is there. Hidden files and
/// Excel's own lock files (`~$name.xlsx`) are not exports.
fn candidates(dir: &Path) -> Result<(Vec<Candidate>, bool), SyncError> {
    let mut files = Vec::new();
    let mut markers = false;
    for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(marked) = name.strip_suffix(".done") {
            markers |= is_export(marked);
            continue;
        }
        if name.starts_with('.') || name.starts_with("~$") || !is_export(&name) {
            continue;
        }
        let path = entry.path();
        // Followed, so that a symlinked export counts as the file it names.
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_file() {
            files.push(Candidate {
                path,
                name,
                len: meta.len(),
                modified: meta.modified().ok(),
            });
        }
    }
    files.sort_by(|a, b| {
        a.modified
            .cmp(&b.modified)
            .then_with(|| a.name.cmp(&b.name))
    });
    Ok((files, markers))
}

/// What the night did with one file.
#[derive(Debug)]
struct Done {
    name: String,
    /// What was done, as the summary says it.
    what: String,
    /// Rows ok and not done, from the file's ledger.
    rows: Option<(u64, u64)>,
    exit: Option<Exit>,
    archived: Option<PathBuf>,
}

impl Done {
    fn left(c: &Candidate, why: String) -> Done {
        eprintln!("sync: {}: {why}: left for the next night", c.name);
        Done {
            name: c.name.clone(),
            what: format!("left ({why})"),
            rows: None,
            exit: None,
            archived: None,
        }
    }
}

/// How a file is taken, from its ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// No ledger yet: `run`.
    Import,
    /// New contents under the same name: `run`, the old ledger kept aside.
    NewExport,
    /// The same file, an edited mapping, and a state: a new ledger under the
    /// new mapping (`run`, the old one kept aside), so that every row is
    /// mapped again and the state sends what the edit changed.
    Remap,
    /// The same file: `retry`; `remapped` when the mapping changed and no
    /// state tells what the edit touches (`retry --mapping`: the rows not
    /// done are mapped again).
    Continue { remapped: bool },
}

impl How {
    fn says(self) -> &'static str {
        match self {
            How::Import => "imported",
            How::NewExport => "imported (new contents: a new ledger, the old one kept aside)",
            How::Remap => "re-mapped (the mapping changed: a new ledger, the old one kept aside; the state sent what the change touches; --max-changes not applied)",
            How::Continue { remapped: false } => "continued",
            How::Continue { remapped: true } => "continued, re-mapped (the mapping changed; without --state only the rows not done are sent)",
        }
    }
}

/// Decides how `file` is taken given its ledger: by the SHA-256 of the
/// file against the ledger's header, and of the mapping against the one
/// the ledger last used (a `retry --mapping` records it in its `attempt`).
fn how(
    file: &Path,
    ledger_path: &Path,
    mapping: &Path,
    mapping_sha: &str,
    state: bool,
) -> anyhow::Result<How> {
    if !ledger_path.exists() {
        return Ok(How::Import);
    }
    let (header, last_mapping) = last_mapping(ledger_path)?;
    let sha =
        ledger::sha256_file(file).with_context(|| format!("{}: cannot read", file.display()))?;
    Ok(if sha != header.source_sha256 {
        How::NewExport
    } else if last_mapping == mapping_sha {
        How::Continue { remapped: false }
    } else if state && safe_to_restart(file, ledger_path, mapping) {
        How::Remap
    } else {
        How::Continue { remapped: true }
    })
}

/// The ledger's header and the SHA-256 of the mapping it last used (a
/// `retry --mapping` records it in its `attempt`).
fn last_mapping(ledger_path: &Path) -> anyhow::Result<(ledger::Header, String)> {
    let mut last = None;
    let (header, _) = ledger::read(ledger_path, |e| {
        if let Entry::Attempt(a) = e {
            last = Some(a.mapping_sha256);
        }
    })?;
    let last = last.unwrap_or_else(|| header.mapping_sha256.clone());
    Ok((header, last))
}

/// Whether a file whose mapping was edited can start a new ledger (every
/// row re-mapped, the state sending what the edit touches) without
/// creating anything twice: every row has a match-key value to be found
/// by, and the old ledger has no outcome left unknown (a new ledger would
/// not know to look it up first). Otherwise the old ledger is continued
/// with the edited mapping, as `retry --mapping` does.
fn safe_to_restart(file: &Path, ledger_path: &Path, mapping: &Path) -> bool {
    let Ok(outcomes) = crate::outcomes::Outcomes::read(ledger_path) else {
        return false;
    };
    let unknown = (1..=outcomes.rows()).any(|n| {
        outcomes.row(n).is_some_and(|r| {
            crate::ledger::Stage::ALL.iter().any(|s| {
                r.stage(*s, 0)
                    .is_some_and(|o| o.status == crate::ledger::Status::Unknown)
            })
        })
    });
    if unknown {
        return false;
    }
    let Ok(mut input) = crate::check::Input::open(file, mapping) else {
        return false;
    };
    let keys = input.plan.lookup_keys();
    while let Some(row) = input.source.next_row() {
        let Ok(Ok(row)) = row else { continue };
        let Ok(payloads) = input.plan.map_row(&row) else {
            continue;
        };
        if let Some(customer) = &payloads.customer {
            if crate::identity::RowKeys::of(customer, &keys).is_empty() {
                return false;
            }
        }
    }
    true
}

/// `thulium-import sync`: the night, file by file, then the summary; exit
/// code the highest of the files' (README, "Nightly syncs").
pub(super) async fn sync_command(args: NightlyArgs) -> anyhow::Result<Exit> {
    let drop_dir = &args.drop_dir;
    if !drop_dir.is_dir() {
        anyhow::bail!("{}: not a folder", drop_dir.display());
    }
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| drop_dir.join(".thulium-import"));
    if !work.is_dir() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        // Ledgers quote cells of invalid rows; reports count them.
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(&work)
            .with_context(|| format!("{}: cannot create the work folder", work.display()))?;
    }
    let _lock = DropLock::acquire(&work, drop_dir)?;
    let mapping_sha = ledger::sha256_file(&args.mapping)
        .with_context(|| format!("{}: cannot read", args.mapping.display()))?;
    let stop = listen_for_stop();
    let (files, markers) = candidates(drop_dir)?;
    let (taken, mut done) = settle(files, markers, args.settle, &stop).await;
    // Full exports of one job: only the newest file taken tonight says what
    // the CRM holds; an older one imported first would bring back, for a
    // few minutes and under new ids, customers the newer one lacks.
    let newest = full_exports(&args.mapping)
        .then(|| taken.last().map(|f| f.name.clone()))
        .flatten();
    // Whether a superseded file's ledger used another mapping: the edit
    // then reaches Thulium through the newest file, which would otherwise
    // have been the older file's re-map (README: an edited mapping is
    // simply used, its changes not held to --max-changes).
    let mut edit_meant = false;
    for file in taken {
        if let Some(newest) = newest.as_ref().filter(|n| **n != file.name) {
            let ledger_path = work.join(format!("{}.ledger.jsonl", file.name));
            edit_meant |= ledger_path.exists()
                && last_mapping(&ledger_path).is_ok_and(|(_, m)| m != mapping_sha);
            done.push(superseded(&args, &work, &file, newest));
            continue;
        }
        if stop.stopped() {
            done.push(Done::left(
                &file,
                "not started: a stop signal ended the night".into(),
            ));
            continue;
        }
        done.push(take(&args, &work, &mapping_sha, &file, edit_meant).await);
    }
    let worst = done
        .iter()
        .filter_map(|d| d.exit)
        .chain(stop.stopped().then_some(Exit::Aborted))
        .max_by_key(|e| e.code())
        .unwrap_or(Exit::Ok);
    print_night(drop_dir, &work, &done, worst);
    Ok(worst)
}

/// Whether the mapping says its files are full exports of one job
/// (README, "Nightly syncs"). A mapping that cannot be read says no here:
/// each file's run then reports why, as without full exports.
fn full_exports(mapping: &Path) -> bool {
    crate::mapping::load(mapping).is_ok_and(|m| m.full_exports())
}

/// A full export with a newer one of the same job waiting: not imported,
/// nor its ledger continued or begun anew (the newer file covers every row
/// it has, and what it lacks is gone). With `--archive` it is archived at
/// once: left in the folder, it would be the newest the night after the
/// newer one is archived, and be imported then.
fn superseded(args: &NightlyArgs, work: &Path, file: &Candidate, newer: &str) -> Done {
    let mut what = format!("superseded by {newer}: not imported");
    // A ledger a crash (or a stop) left unfinished is not continued either:
    // its rows not done are in the newer export, or gone from the CRM.
    let ledger_path = work.join(format!("{}.ledger.jsonl", file.name));
    if ledger_path.exists() {
        match Outcomes::read(&ledger_path) {
            Ok(o) if !o.ended() => what.push_str(
                " (its ledger is unfinished: its last run did not end, a crash or a kill; not continued: the newer full export covers its rows)",
            ),
            Ok(o) => {
                let report = Report::of(&o);
                if !report.all_done() {
                    what.push_str(&format!(
                        " (its ledger is unfinished: {} not done; not continued: the newer full export covers them)",
                        crate::text::count(report.rows.saturating_sub(report.ok), "row")
                    ));
                }
            }
            Err(e) => what.push_str(&format!(
                " (its ledger cannot be read: {e:#}; not continued)"
            )),
        }
    }
    println!("sync: {}: {what}", file.path.display());
    let archived = match &args.archive {
        Some(dir) => match archive(file, dir) {
            Ok(to) => Some(to),
            Err(e) => {
                eprintln!("sync: {}: cannot archive: {e:#}", file.name);
                None
            }
        },
        None => None,
    };
    Done {
        name: file.name.clone(),
        what,
        rows: None,
        exit: None,
        archived,
    }
}

/// Splits the exports into those taken tonight and those left (`Done`):
/// with markers, the marked ones; without, those whose size and time stay
/// the same for `secs` seconds (all of them when `secs` is 0). The files
/// taken keep their order, oldest first.
async fn settle(
    files: Vec<Candidate>,
    markers: bool,
    secs: u64,
    stop: &crate::signals::Stopper,
) -> (Vec<Candidate>, Vec<Done>) {
    let mut left = Vec::new();
    if markers {
        let (taken, unmarked): (Vec<_>, Vec<_>) =
            files.into_iter().partition(|f| f.marker().exists());
        for f in &unmarked {
            left.push(Done::left(f, format!("no {}.done marker yet", f.name)));
        }
        return (taken, left);
    }
    if secs == 0 || files.is_empty() {
        return (files, left);
    }
    // In small steps, so that a stop signal does not wait out the settling.
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < until && !stop.stopped() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut taken = Vec::new();
    for f in files {
        let now = std::fs::metadata(&f.path).ok();
        let same = now
            .as_ref()
            .is_some_and(|m| m.len() == f.len && m.modified().ok() == f.modified);
        if same {
            taken.push(f);
        } else {
            let why = format!(
                "still being written (its size or modification time changed within {secs} s)"
            );
            left.push(Done::left(&f, why));
        }
    }
    (taken, left)
}

/// Stop signals for the whole night: a run in flight stops cleanly (the
/// job layer registers it); the night ends after it, and, between files,
/// before the next. A second signal exits at once, as during a run.
fn listen_for_stop() -> Arc<crate::signals::Stopper> {
    let stopper = crate::signals::install();
    stopper.stops_by_itself();
    stopper
}

/// One file's night: run or retry through the job layer, its report
/// written, moved to the archive when settled. An error is this file's (its
/// exit code remembers it); the night goes on with the next.
///
/// `edit_meant`: an older file superseded by this one recorded another
/// mapping, so this file carries the mapping's edit (not held to
/// `--max-changes`, as a re-map is not).
async fn take(
    args: &NightlyArgs,
    work: &Path,
    mapping_sha: &str,
    file: &Candidate,
    edit_meant: bool,
) -> Done {
    let ledger_path = work.join(format!("{}.ledger.jsonl", file.name));
    let report_path = work.join(format!("{}.report.json", file.name));
    println!("sync: {}", file.path.display());
    let how = match how(
        &file.path,
        &ledger_path,
        &args.mapping,
        mapping_sha,
        args.sync.state.is_some(),
    ) {
        Ok(how) => how,
        Err(e) => return failed(file, &e),
    };
    let ran = match how {
        How::Import | How::NewExport | How::Remap => {
            let run = RunArgs {
                csv: file.path.clone(),
                mapping: args.mapping.clone(),
                ledger: Some(ledger_path.clone()),
                connect: args.connect.clone(),
                sandbox: false,
                pace: args.pace.clone(),
                dry_run: false,
                show_payloads: 0,
                max_errors: 20,
                // Each file's sheet is its mapping's.
                sheet: None,
                force_new_ledger: how != How::Import,
                include_unknown: false,
                limit: None,
                no_preflight: args.no_preflight,
                sync: crate::cli::SyncArgs {
                    // The operator edited the mapping: the changes it makes
                    // are meant, not an export bug.
                    max_changes: if how == How::Remap || edit_meant {
                        crate::cli::Share::Percent(100.0)
                    } else {
                        args.sync.max_changes
                    },
                    ..args.sync.clone()
                },
                images: args.images.clone(),
                output: output_for(&args.output, file),
            };
            super::run_command(run).await.map(|exit| (exit, None))
        }
        How::Continue { .. } => {
            let retry = RetryArgs {
                ledger: ledger_path.clone(),
                connect: args.connect.clone(),
                include_unknown: false,
                source: None,
                // Always passed: the ledger's own when unchanged (then the
                // job layer sees no change), the edited one otherwise.
                mapping: Some(args.mapping.clone()),
                no_preflight: args.no_preflight,
                sync: args.sync.clone(),
                images: args.images.clone(),
                pace: args.pace.clone(),
                output: output_for(&args.output, file),
            };
            continue_ledger(retry, file.name.clone())
                .await
                .map(|(exit, sent)| (exit, Some(sent)))
        }
    };
    let (exit, retried_sent) = match ran {
        Ok(ran) => ran,
        Err(e) => {
            // A file refused before its ledger was begun has no report; one
            // refused after (a ledger in use) keeps last night's.
            return failed(file, &e);
        }
    };
    let report = match write_report(&ledger_path, &report_path) {
        Ok(report) => report,
        Err(e) => return failed(file, &e),
    };
    // Settled: every row done, or a retry found nothing it could send (what
    // is left needs a person: a fixed file, or a fixed mapping).
    // And only the very file the ledger's rows came from (an exporter may
    // have rewritten it during the night): anything else is left.
    let unchanged = || {
        let now = ledger::sha256_file(&file.path).ok();
        let read = ledger::read(&ledger_path, |_| {})
            .ok()
            .map(|(h, _)| h.source_sha256);
        now.is_some() && now == read
    };
    let settled = exit != Exit::Aborted
        && (report.all_done() || retried_sent == Some(0))
        && (args.archive.is_none() || unchanged());
    let archived = match (&args.archive, settled) {
        (Some(dir), true) => match archive(file, dir) {
            Ok(to) => Some(to),
            Err(e) => {
                eprintln!("sync: {}: cannot archive: {e:#}", file.name);
                None
            }
        },
        _ => None,
    };
    let mut what = how.says().to_string();
    if edit_meant && how != How::Remap && !matches!(how, How::Continue { .. }) {
        what.push_str(
            " (the mapping changed since the older files' ledgers: --max-changes not applied)",
        );
    }
    Done {
        name: file.name.clone(),
        what,
        rows: Some((report.ok, report.rows.saturating_sub(report.ok))),
        exit: Some(exit),
        archived,
    }
}

/// A file refused or failed: never archived, so it stays in the drop
/// folder and the next night takes it again (a guard's refusal, such as
/// `--max-gone`, holds until the export is fixed or the flag raised).
fn failed(file: &Candidate, e: &anyhow::Error) -> Done {
    eprintln!("error: {}: {e:#}", file.name);
    Done {
        name: file.name.clone(),
        what: "not imported (the error above; left in the folder: the next night takes it again)"
            .into(),
        rows: None,
        exit: Some(Exit::of_error(e)),
        archived: None,
    }
}

/// The output flags for one file's run: with `--metrics-file DIR/NAME.prom`,
/// each file writes `DIR/NAME-<file>.prom` (node_exporter's textfile
/// collector reads every `.prom` of the folder; a night's files would
/// otherwise overwrite each other's figures).
fn output_for(output: &crate::cli::OutputArgs, file: &Candidate) -> crate::cli::OutputArgs {
    let mut output = output.clone();
    if let Some(path) = &output.metrics_file {
        let stem = path.file_stem().map_or_else(
            || "thulium-import".into(),
            |s| s.to_string_lossy().into_owned(),
        );
        let name: String = file
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        output.metrics_file = Some(path.with_file_name(format!("{stem}-{name}.prom")));
    }
    output
}

/// `retry` through the job layer, with the rows it sent again: none means
/// the file is settled.
async fn continue_ledger(args: RetryArgs, source: String) -> anyhow::Result<(Exit, u64)> {
    let started = std::time::Instant::now();
    let mut seen = None;
    let result = continue_job(&args, &mut seen).await;
    // The exit code the file's error gives, for the metrics.
    let exit = Ok(match &result {
        Ok((exit, _)) => *exit,
        Err(e) => Exit::of_error(e),
    });
    super::write_metrics(&args.output, source, started, &exit, seen);
    result
}

async fn continue_job(
    args: &RetryArgs,
    seen: &mut Option<super::Seen>,
) -> anyhow::Result<(Exit, u64)> {
    let job = job::prepare_retry(args).await?;
    eprintln!("Continuing {} against {}", args.ledger.display(), job.root);
    let ran = job::drive(job, &args.pace, &args.output).await;
    let summary = super::print_summary(&ran, seen)?;
    let planning = ran
        .planning
        .as_ref()
        .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .unwrap_or_default();
    println!(
        "retry: {} row(s) looked at, {} sent again",
        planning.rows_seen, planning.rows_sent
    );
    for (reason, n) in &planning.left {
        println!("  left {n}: {reason}");
    }
    Ok((super::exit_for(&ran.end, &summary), planning.rows_sent))
}

/// The file's `report --json`, written beside its ledger (0600: it counts
/// the rows, and its reasons can quote a cell).
fn write_report(ledger_path: &Path, report_path: &Path) -> anyhow::Result<Report> {
    let report = Report::of(&Outcomes::read(ledger_path)?);
    let mut json = serde_json::to_vec(&report)?;
    json.push(b'\n');
    super::write_private(report_path, &json)
        .with_context(|| format!("{}: cannot write", report_path.display()))?;
    Ok(report)
}

/// Moves the file and its `.done` marker into `dir` (created if need be);
/// a name already archived gets the time appended. The ledger and report
/// stay in the work folder: the same name dropped again finds them.
fn archive(file: &Candidate, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let mut to = dir.join(&file.name);
    if to.exists() {
        to = dir.join(format!(
            "{}.{}",
            file.name,
            chrono::Utc::now().format("%Y%m%dT%H%M%S")
        ));
    }
    move_file(&file.path, &to)?;
    let marker = file.marker();
    if marker.exists() {
        let mut marked = to.clone().into_os_string();
        marked.push(".done");
        move_file(&marker, Path::new(&marked))?;
    }
    Ok(to)
}

/// A rename, or across file systems (an archive on another disk) a copy
/// then the original removed.
fn move_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
    std::fs::remove_file(from).with_context(|| format!("{}: cannot remove", from.display()))
}

/// The night's summary: every file, what was done, its rows and exit code.
fn print_night(drop_dir: &Path, work: &Path, done: &[Done], worst: Exit) {
    println!(
        "sync: {} file(s) in {} (ledgers and reports in {}):",
        done.len(),
        drop_dir.display(),
        work.display()
    );
    for d in done {
        let mut line = format!("  {}: {}", d.name, d.what);
        if let Some((ok, not_done)) = d.rows {
            line.push_str(&format!(" — {ok} row(s) ok, {not_done} not done"));
        }
        if let Some(exit) = d.exit {
            line.push_str(&format!(" — exit {}", exit.code()));
        }
        if let Some(to) = &d.archived {
            line.push_str(&format!(" — archived to {}", to.display()));
        }
        println!("{line}");
    }
    println!("sync: exit {} (the night's worst)", worst.code());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_told_by_their_extension_in_any_case() {
        assert!(is_export("crm.csv"));
        assert!(is_export("CRM.XLSX"));
        assert!(is_export("a.b.ods"));
        assert!(is_export("old.xls"));
        assert!(!is_export("crm.csv.done"));
        assert!(!is_export("crm.csv.ledger.jsonl"));
        assert!(!is_export("csv"));
    }
}
